//! OTLP transport for the long-lived processes: an exporter that sends spans to an OTLP endpoint
//! (gRPC, HTTP/protobuf or HTTP/JSON, over TCP or a unix socket) from a background task with a
//! bounded queue and retries, and a receiver (the OTLP `TraceService`) that hands what it gets to
//! a [`Sink`].
//!
//! Configuration follows OpenTelemetry's exporter variables (`OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`,
//! `_PROTOCOL`, `_HEADERS`, `_TIMEOUT`). Only plain-text endpoints are supported: an `https://`
//! endpoint is refused with a clear error rather than sent in the clear.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use tokio::sync::mpsc;

use crate::sink::{Sink, SpanExporter};

/// Environment variable naming engined's own OTLP receiver (`unix:///path/to/otlp.sock`), which
/// engine-lifecycled and the shims export to. Distinct from `OTEL_EXPORTER_OTLP_ENDPOINT`, which
/// configures engined's export to the outside and is never acted on by the processes below it.
pub const ENV_ENGINE_OTLP: &str = "ENGINE_OTLP_ENDPOINT";

/// The wire format of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

/// Why an exporter setting was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("OTLP endpoint {0:?}: want http://host:port or unix:///path")]
    Endpoint(String),
    #[error(
        "OTLP endpoint {0:?}: https needs TLS, which this engine does not include; send to a local collector over http"
    )]
    Tls(String),
    #[error("unknown OTLP protocol {0:?} (want grpc, http/protobuf or http/json)")]
    Protocol(String),
    #[error("OTEL_EXPORTER_OTLP_HEADERS entry {0:?} is not key=value")]
    Header(String),
}

/// Where and how to export.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportConfig {
    /// `http://host:port[/path]` or `unix:///path`.
    pub endpoint: String,
    pub protocol: Protocol,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

impl Protocol {
    pub fn parse(s: &str) -> Result<Protocol, ConfigError> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => Ok(Protocol::HttpJson),
            other => Err(ConfigError::Protocol(other.into())),
        }
    }
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

/// Parses a `key=value,key=value` list (values percent-decoded).
pub fn parse_pairs(list: &str) -> Result<Vec<(String, String)>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                let decode = |s: &str| percent_encoding::percent_decode_str(s.trim()).decode_utf8_lossy().into_owned();
                Ok((decode(k), decode(v)))
            }
            _ => Err(ConfigError::Header(p.into())),
        })
        .collect()
}

impl ExportConfig {
    /// A configuration for `endpoint` with the given protocol and defaults otherwise.
    pub fn new(endpoint: &str, protocol: Protocol) -> Result<ExportConfig, ConfigError> {
        let endpoint = endpoint.trim().trim_end_matches('/').to_string();
        if endpoint.starts_with("https://") {
            return Err(ConfigError::Tls(endpoint));
        }
        if !(endpoint.starts_with("http://") || endpoint.starts_with("unix:///")) {
            return Err(ConfigError::Endpoint(endpoint));
        }
        Ok(ExportConfig { endpoint, protocol, headers: Vec::new(), timeout: Duration::from_secs(10) })
    }

    /// The export OpenTelemetry's variables configure, if an endpoint is set. The generic
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` gets `/v1/traces` appended for HTTP; the traces-specific one
    /// is used as it is. gRPC is the default protocol.
    pub fn from_env() -> Result<Option<ExportConfig>, ConfigError> {
        let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
        let protocol = protocol.map(|p| Protocol::parse(&p)).transpose()?.unwrap_or(Protocol::Grpc);
        let endpoint = match (env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), env("OTEL_EXPORTER_OTLP_ENDPOINT")) {
            (Some(e), _) => e,
            (None, Some(e)) if protocol != Protocol::Grpc => format!("{}/v1/traces", e.trim_end_matches('/')),
            (None, Some(e)) => e,
            (None, None) => return Ok(None),
        };
        let mut cfg = ExportConfig::new(&endpoint, protocol)?;
        if let Some(h) = env("OTEL_EXPORTER_OTLP_TRACES_HEADERS").or_else(|| env("OTEL_EXPORTER_OTLP_HEADERS")) {
            cfg.headers = parse_pairs(&h)?;
        }
        if let Some(ms) = env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .or_else(|| env("OTEL_EXPORTER_OTLP_TIMEOUT"))
            .and_then(|t| t.trim().parse::<u64>().ok())
        {
            cfg.timeout = Duration::from_millis(ms.max(1));
        }
        Ok(Some(cfg))
    }
}

/// Counters of an exporter, in spans.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub exported: AtomicU64,
    /// Dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Given up on after retries.
    pub failed: AtomicU64,
}

/// Requests waiting to be sent; past this, new spans are dropped (and counted).
const QUEUE: usize = 4096;
/// How long one batch is retried while the endpoint is unreachable (engined restarting).
const RETRY_FOR: Duration = Duration::from_secs(30);

/// Sends spans to one OTLP endpoint from a background task.
pub struct OtlpExporter {
    tx: mpsc::Sender<ExportTraceServiceRequest>,
    stats: Arc<ExportStats>,
    /// Spans queued or being sent.
    unsent: Arc<tokio::sync::watch::Sender<u64>>,
}

fn span_count(r: &ExportTraceServiceRequest) -> u64 {
    r.resource_spans.iter().flat_map(|rs| &rs.scope_spans).map(|ss| ss.spans.len() as u64).sum()
}

impl OtlpExporter {
    /// Starts the exporter's task on the current tokio runtime.
    pub fn start(cfg: ExportConfig) -> OtlpExporter {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(ExportStats::default());
        let unsent = Arc::new(tokio::sync::watch::Sender::new(0));
        tokio::spawn(run(cfg, rx, stats.clone(), unsent.clone()));
        OtlpExporter { tx, stats, unsent }
    }

    /// The exporter for engined's receiver named by `ENGINE_OTLP_ENDPOINT`, as a sink; `None`
    /// when unset. Must be called inside a tokio runtime.
    pub fn engine_sink_from_env() -> Option<Sink> {
        let endpoint = env(ENV_ENGINE_OTLP)?;
        ExportConfig::new(&endpoint, Protocol::Grpc).ok().map(|cfg| Sink::new(OtlpExporter::start(cfg)))
    }

    pub fn stats(&self) -> Arc<ExportStats> {
        self.stats.clone()
    }
}

impl SpanExporter for OtlpExporter {
    fn export(&self, request: ExportTraceServiceRequest) {
        let n = span_count(&request);
        // counted before it can be sent, so the count never goes below what is in flight
        self.unsent.send_modify(|u| *u += n);
        if self.tx.try_send(request).is_err() {
            self.unsent.send_modify(|u| *u = u.saturating_sub(n));
            self.stats.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn unsent(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.unsent.subscribe())
    }
}

enum Client {
    Grpc(TraceServiceClient<tonic::transport::Channel>),
    Http { authority: String, path: String, json: bool },
}

fn grpc_channel(endpoint: &str) -> Result<tonic::transport::Channel, ConfigError> {
    if let Some(path) = endpoint.strip_prefix("unix://") {
        return Ok(engine_api::unix_channel(path));
    }
    tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map(|e| e.connect_lazy())
        .map_err(|_| ConfigError::Endpoint(endpoint.into()))
}

fn client(cfg: &ExportConfig) -> Result<Client, ConfigError> {
    match cfg.protocol {
        Protocol::Grpc => Ok(Client::Grpc(TraceServiceClient::new(grpc_channel(&cfg.endpoint)?))),
        Protocol::HttpProtobuf | Protocol::HttpJson => {
            let rest =
                cfg.endpoint.strip_prefix("http://").ok_or_else(|| ConfigError::Endpoint(cfg.endpoint.clone()))?;
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/v1/traces"),
            };
            Ok(Client::Http {
                authority: authority.into(),
                path: path.into(),
                json: cfg.protocol == Protocol::HttpJson,
            })
        }
    }
}

/// A failed send: `retry` when the endpoint may take it later (unreachable, overloaded, timed
/// out), not when it refused the request itself.
struct SendError {
    message: String,
    retry: bool,
}

impl From<String> for SendError {
    fn from(message: String) -> Self {
        // transport errors (connection refused, reset) are worth retrying
        SendError { message, retry: true }
    }
}

async fn send(client: &mut Client, cfg: &ExportConfig, req: &ExportTraceServiceRequest) -> Result<(), SendError> {
    match client {
        Client::Grpc(c) => {
            let mut r = tonic::Request::new(req.clone());
            r.set_timeout(cfg.timeout);
            for (k, v) in &cfg.headers {
                if let (Ok(k), Ok(v)) = (k.to_ascii_lowercase().parse::<tonic::metadata::MetadataKey<_>>(), v.parse()) {
                    r.metadata_mut().insert(k, v);
                }
            }
            c.export(r).await.map(|_| ()).map_err(|s| SendError {
                message: format!("{}: {}", s.code(), s.message()),
                retry: matches!(
                    s.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Aborted
                        | tonic::Code::Unknown
                ),
            })
        }
        Client::Http { authority, path, json } => {
            let body = if *json {
                serde_json::to_vec(req).map_err(|e| SendError { message: e.to_string(), retry: false })?
            } else {
                req.encode_to_vec()
            };
            let fut = async {
                let tcp = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(|e| SendError::from(e.to_string()))?;
                let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .map_err(|e| SendError::from(e.to_string()))?;
                tokio::spawn(conn);
                let mut b = hyper::Request::post(path.as_str()).header(hyper::header::HOST, authority.as_str()).header(
                    hyper::header::CONTENT_TYPE,
                    if *json { "application/json" } else { "application/x-protobuf" },
                );
                for (k, v) in &cfg.headers {
                    b = b.header(k.as_str(), v.as_str());
                }
                let request = b
                    .body(Full::new(Bytes::from(body)))
                    .map_err(|e| SendError { message: e.to_string(), retry: false })?;
                let resp = sender.send_request(request).await.map_err(|e| SendError::from(e.to_string()))?;
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                if status.is_success() {
                    Ok(())
                } else {
                    // as the OTLP/HTTP spec says: 429, 502, 503 and 504 may be retried
                    Err(SendError {
                        message: format!("HTTP {status}"),
                        retry: matches!(status.as_u16(), 429 | 502 | 503 | 504),
                    })
                }
            };
            tokio::time::timeout(cfg.timeout, fut).await.map_err(|_| SendError::from("timed out".to_string()))?
        }
    }
}

/// Sends one request now and waits for the answer (for a command-line tool that exits after).
pub async fn send_once(cfg: &ExportConfig, req: &ExportTraceServiceRequest) -> Result<(), String> {
    let mut c = client(cfg).map_err(|e| e.to_string())?;
    send(&mut c, cfg, req).await.map_err(|e| e.message)
}

/// Most requests batched into one send, and the most bytes (receivers take 4 MiB by default).
const BATCH: usize = 256;
const BATCH_BYTES: usize = 2 << 20;

async fn run(
    cfg: ExportConfig,
    mut rx: mpsc::Receiver<ExportTraceServiceRequest>,
    stats: Arc<ExportStats>,
    unsent: Arc<tokio::sync::watch::Sender<u64>>,
) {
    let done = |n: u64| unsent.send_modify(|u| *u = u.saturating_sub(n));
    let mut client = match client(&cfg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("otlp export disabled: {e}");
            while let Some(r) = rx.recv().await {
                stats.failed.fetch_add(span_count(&r), Ordering::Relaxed);
                done(span_count(&r));
            }
            return;
        }
    };
    let mut carried: Option<ExportTraceServiceRequest> = None;
    loop {
        let first = match carried.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => return,
            },
        };
        // send as soon as there is something; batch only what queued up meanwhile
        let mut batch = first;
        let mut bytes = batch.encoded_len();
        let mut next = None;
        for _ in 1..BATCH {
            if bytes >= BATCH_BYTES {
                break;
            }
            match rx.try_recv() {
                Ok(more) if bytes + more.encoded_len() > BATCH_BYTES => {
                    next = Some(more);
                    break;
                }
                Ok(more) => {
                    bytes += more.encoded_len();
                    batch.resource_spans.extend(more.resource_spans);
                }
                Err(_) => break,
            }
        }
        carried = next;
        let n = span_count(&batch);
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        let mut backoff = Duration::from_millis(50);
        loop {
            match send(&mut client, &cfg, &batch).await {
                Ok(()) => {
                    stats.exported.fetch_add(n, Ordering::Relaxed);
                    done(n);
                    break;
                }
                Err(e) if e.retry && tokio::time::Instant::now() + backoff < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    eprintln!("otlp export to {}: {}; {n} spans dropped", cfg.endpoint, e.message);
                    stats.failed.fetch_add(n, Ordering::Relaxed);
                    done(n);
                    break;
                }
            }
        }
    }
}

/// The OTLP trace receiver: every request it gets goes to `sink`.
pub struct Receiver {
    sink: Sink,
}

impl Receiver {
    pub fn service(sink: Sink) -> TraceServiceServer<Receiver> {
        TraceServiceServer::new(Receiver { sink })
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.sink.export(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_lists_parse_as_the_spec_says() {
        assert!(matches!(ExportConfig::new("https://tempo:4317", Protocol::Grpc), Err(ConfigError::Tls(_))));
        assert!(matches!(ExportConfig::new("tempo:4317", Protocol::Grpc), Err(ConfigError::Endpoint(_))));
        assert_eq!(
            ExportConfig::new("http://127.0.0.1:4317/", Protocol::Grpc).unwrap().endpoint,
            "http://127.0.0.1:4317"
        );
        assert_eq!(
            parse_pairs("api-key=a%20b, x=1").unwrap(),
            vec![("api-key".to_string(), "a b".to_string()), ("x".to_string(), "1".to_string())]
        );
        assert!(parse_pairs("novalue").is_err());
        let Client::Http { authority, path, json } =
            client(&ExportConfig::new("http://127.0.0.1:4318/v1/traces", Protocol::HttpJson).unwrap()).unwrap()
        else {
            panic!("not http")
        };
        assert_eq!((authority.as_str(), path.as_str(), json), ("127.0.0.1:4318", "/v1/traces", true));
    }

    /// Counts the spans a receiver gets.
    struct Collect(Arc<std::sync::Mutex<u64>>);
    impl SpanExporter for Collect {
        fn export(&self, request: ExportTraceServiceRequest) {
            *self.0.lock().unwrap() += span_count(&request);
        }
    }

    #[tokio::test]
    async fn a_drained_sink_has_sent_every_span_it_took() {
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collected = Arc::new(std::sync::Mutex::new(0));
        let receiver = Receiver::service(Sink::new(Collect(collected.clone())));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(receiver)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let cfg = ExportConfig::new(&format!("http://{addr}"), Protocol::Grpc).unwrap();
        let sink = Sink::new(OtlpExporter::start(cfg));
        let spans = ScopeSpans { spans: vec![Span::default(); 3], ..Default::default() };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans { scope_spans: vec![spans], ..Default::default() }],
        };
        for _ in 0..4 {
            sink.export(request.clone());
        }
        sink.drain(Duration::from_secs(20)).await;
        assert_eq!(*collected.lock().unwrap(), 12, "every span is at the receiver once drained");
        // nothing to send: at once; an endpoint that does not answer: no longer than asked
        // (a drain that waited on would hang the test)
        sink.drain(Duration::from_secs(3600)).await;
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let cfg = ExportConfig::new(&format!("http://{gone}"), Protocol::Grpc).unwrap();
        let stuck = Sink::new(OtlpExporter::start(cfg));
        stuck.export(request);
        stuck.drain(Duration::from_millis(300)).await;
    }
}
