//! engined's trace endpoints and receivers: the store is opened under `<data-root>/traces`, an
//! OTLP gRPC receiver listens on `<exec-root>/otlp.sock` (lifecycled and the shims export to it;
//! the shims forward the runtime's and init's hand-off), `POST /v1/traces` takes OTLP/HTTP (the
//! CLI's spans), and the `/engine/v1/...traces` routes read the store.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use engine_telemetry::otlp::{ExportConfig, OtlpExporter, Protocol, Receiver};
use engine_telemetry::Sink;
use http_body_util::BodyExt;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::json;

use crate::config::Config;
use crate::http::{self, json, ApiError, Query, Resp};
use crate::tailsample::TailSampler;
use crate::tracestore::{Retention, TraceStore, TraceSummary};

/// The external export configured by the daemon's flags or config file, else by OpenTelemetry's
/// environment variables.
fn export_config(cfg: &Config) -> anyhow::Result<Option<ExportConfig>> {
    let protocol = cfg.otlp_protocol.as_deref().map(Protocol::parse).transpose()?;
    match &cfg.otlp_endpoint {
        Some(e) => Ok(Some(ExportConfig::new(e, protocol.unwrap_or(Protocol::Grpc))?)),
        None => {
            let mut c = ExportConfig::from_env()?;
            if let (Some(c), Some(p)) = (c.as_mut(), protocol) {
                c.protocol = p;
            }
            Ok(c)
        }
    }
}

/// Where every span engined gets goes: a worker thread places the probes' kernel events of its
/// process in it first (when the probes run), then stores (and forwards) it. The receivers only
/// queue: a shim's or the CLI's export never waits for that work.
pub struct SpanIntake {
    tx: std::sync::Mutex<std::sync::mpsc::SyncSender<ExportTraceServiceRequest>>,
    /// Requests dropped because the worker was this far behind.
    pub dropped: std::sync::atomic::AtomicU64,
}

/// Requests waiting for the intake worker at most.
const INTAKE_QUEUE: usize = 8192;

impl SpanIntake {
    pub fn start(
        store: Arc<TraceStore>,
        probes: Option<Arc<engine_probes::Probes>>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> std::io::Result<SpanIntake> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<ExportTraceServiceRequest>(INTAKE_QUEUE);
        std::thread::Builder::new().name("span-intake".into()).spawn(move || {
            // drain the probes' ring now and then even when no span comes, so it never fills
            loop {
                match rx.recv_timeout(std::time::Duration::from_millis(200)) {
                    Ok(mut request) => {
                        if let Some(p) = &probes {
                            crate::kernel::annotate(&mut request, p);
                        }
                        metrics.observe_spans(&request);
                        store.ingest(request);
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        if let Some(p) = &probes {
                            p.drain();
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        })?;
        Ok(SpanIntake { tx: std::sync::Mutex::new(tx), dropped: Default::default() })
    }
}

impl engine_telemetry::SpanExporter for SpanIntake {
    fn export(&self, request: ExportTraceServiceRequest) {
        // never wait for the worker: a receiver (a shim's export) must not stall
        if self.tx.lock().unwrap_or_else(|e| e.into_inner()).try_send(request).is_err() {
            self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Opens the trace store (with the export, when one is configured) and starts the OTLP receiver;
/// returns the store and the sink every span goes to. Must run inside the tokio runtime.
pub fn start(
    cfg: &Config,
    probes: Option<Arc<engine_probes::Probes>>,
    metrics: Arc<crate::metrics::Metrics>,
) -> anyhow::Result<(Arc<TraceStore>, Sink)> {
    if let Some(e) = engine_telemetry::sampling::env_sampler_error() {
        crate::log!(cfg, "warn", "{e}; sampling every trace");
    }
    let export = export_config(cfg)?;
    if let Some(e) = &export {
        crate::log!(cfg, "info", "exporting spans to {} ({:?})", e.endpoint, e.protocol);
    }
    let resource = match std::env::var("OTEL_RESOURCE_ATTRIBUTES") {
        Ok(list) => {
            engine_telemetry::otlp::parse_pairs(&list).map_err(|e| anyhow::anyhow!("OTEL_RESOURCE_ATTRIBUTES: {e}"))?
        }
        Err(_) => Vec::new(),
    };
    let max_bytes = cfg.trace_max_mb << 20;
    let retention = Retention {
        max_traces: cfg.trace_max_traces,
        max_bytes,
        segment_bytes: Retention::default().segment_bytes.min((max_bytes / 4).max(64 << 10)),
    };
    let dir = cfg.data_root.join("traces");
    let policy = cfg.tail_sampling()?;
    let (export, sampler) = match export {
        None => (None, None),
        Some(e) if policy.samples() => {
            let sampler = TailSampler::start(policy, Sink::new(OtlpExporter::start(e)))
                .map_err(|e| anyhow::anyhow!("starting the tail sampler: {e}"))?;
            crate::log!(
                cfg,
                "info",
                "tail sampling the export: keeping failed, slow ({}) and restart-spanning traces, and {} of the rest",
                policy.keep_slower_than.map(|d| format!("over {d:?}")).unwrap_or_else(|| "over the running p99".into()),
                policy.keep_ratio
            );
            (Some(Sink::new(sampler.clone())), Some(sampler))
        }
        Some(e) => (Some(Sink::new(OtlpExporter::start(e))), None),
    };
    let store = TraceStore::open(&dir, retention, export, resource)
        .map_err(|e| anyhow::anyhow!("opening the trace store {}: {e}", dir.display()))?
        .with_sampler(sampler);
    let store = Arc::new(store);

    let sock = cfg.otlp_receiver_socket();
    let _ = std::fs::remove_file(&sock);
    let listener = engine_api::bind_unix(&sock).map_err(|e| anyhow::anyhow!("listening on {}: {e}", sock.display()))?;
    let intake = Sink::new(
        SpanIntake::start(store.clone(), probes, metrics)
            .map_err(|e| anyhow::anyhow!("starting the span intake: {e}"))?,
    );
    let service = Receiver::service(intake.clone());
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await;
    });
    Ok((store, intake))
}

/// What the trace routes use: the trace store, engined's sink into it, the probes' state and
/// the container store (to name a container's traces). Nothing else of engined.
pub struct TraceService {
    pub traces: Arc<crate::tracestore::TraceStore>,
    pub sink: Option<engine_telemetry::Sink>,
    pub probes: crate::kernel::ProbeState,
    pub containers: Arc<crate::records::ContainerStore>,
}

/// `POST /v1/traces`: OTLP/HTTP, protobuf or JSON, into the store.
pub async fn receive(
    d: &TraceService,
    content_type: Option<&str>,
    body: crate::http::RequestBody,
) -> Result<Resp, ApiError> {
    let bytes: Bytes =
        body.collect().await.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?.to_bytes();
    let json_body = content_type.is_some_and(|c| c.starts_with("application/json"));
    let req = if json_body {
        serde_json::from_slice::<ExportTraceServiceRequest>(&bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid OTLP JSON: {e}")))?
    } else {
        ExportTraceServiceRequest::decode(bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid OTLP protobuf: {e}")))?
    };
    if let Some(sink) = &d.sink {
        sink.export(req);
    }
    let mut r = Resp::new(http::full(if json_body { "{}" } else { "" }));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(if json_body { "application/json" } else { "application/x-protobuf" }),
    );
    Ok(r)
}

fn summary_json(t: &TraceSummary) -> serde_json::Value {
    json!({
        "TraceID": t.trace_id,
        "Start": t.start,
        "DurationNanos": t.end.saturating_sub(t.start),
        "Operation": t.root,
        "Ops": t.ops,
        "Spans": t.spans,
        "Services": t.services,
        "Containers": t.containers,
        "Error": t.error,
        "Images": t.images,
    })
}

/// `GET /engine/v1/containers/{id}/traces`: the traces of a container's operations, oldest
/// first. A removed container's traces are found by its name or full id; a CRI pod's (its
/// sandbox's and its containers') by the pod's name.
pub fn container_traces(d: &TraceService, name: &str) -> Result<Resp, ApiError> {
    let list = match d.containers.find(name) {
        Ok(e) => {
            let r = e.snapshot();
            d.traces.container_traces(&r.id, Some(&r.name))
        }
        Err(err) => {
            let pod = pod_members(d, name);
            let list = if pod.is_empty() {
                d.traces.container_traces(name, Some(name))
            } else {
                let mut seen = std::collections::BTreeSet::new();
                let mut list: Vec<_> = pod
                    .iter()
                    .flat_map(|id| d.traces.container_traces(id, None))
                    .filter(|t| seen.insert(t.trace_id.clone()))
                    .collect();
                list.sort_by_key(|t| t.start);
                list
            };
            if list.is_empty() {
                return Err(err.into());
            }
            list
        }
    };
    Ok(json(StatusCode::OK, &list.iter().map(summary_json).collect::<Vec<_>>()))
}

/// The ids of the CRI pod named `pod`, its sandboxes' and their containers'.
fn pod_members(d: &TraceService, pod: &str) -> Vec<String> {
    let recs: Vec<_> = d.containers.all().iter().map(|e| e.snapshot()).collect();
    crate::podlabels::pod_members(&recs, pod)
}

/// `GET /engine/v1/traces?op=start&image=NAME&limit=N`: the most recent traces, oldest first;
/// with `image`, those whose pulls or pushes name that image (any tag of it when `NAME` names
/// none).
pub fn recent(d: &TraceService, q: &Query) -> Result<Resp, ApiError> {
    let limit = q.int("limit")?.unwrap_or(100).clamp(1, 10_000) as usize;
    let op = q.get("op").filter(|o| !o.is_empty());
    let list = match q.get("image").filter(|i| !i.is_empty()) {
        None => d.traces.recent(op, limit),
        Some(image) => {
            let wanted = engine_image::Reference::parse(image)?;
            let exact = image.contains('@') || image.rsplit('/').next().is_some_and(|last| last.contains(':'));
            d.traces.recent_where(op, limit, |t| {
                t.images.iter().filter_map(|r| engine_image::Reference::parse(r).ok()).any(|r| {
                    if exact {
                        r.to_string() == wanted.to_string()
                    } else {
                        r.name() == wanted.name()
                    }
                })
            })
        }
    };
    Ok(json(StatusCode::OK, &list.iter().map(summary_json).collect::<Vec<_>>()))
}

/// `GET /engine/v1/traces/stats?op=start&limit=N`: per-phase count and percentiles over the
/// last N (at most 1000) traces of an operation (default: the last 100 starts).
pub async fn stats(d: &TraceService, q: &Query) -> Result<Resp, ApiError> {
    let limit = q.int("limit")?.unwrap_or(100).clamp(1, 1000) as usize;
    let op = q.get("op").unwrap_or("start").to_string();
    let store = d.traces.clone();
    let o = op.clone();
    // reading segments is file I/O: off the async workers
    let (count, stats) = tokio::task::spawn_blocking(move || {
        let ids: HashSet<String> = store.recent(Some(&o), limit).into_iter().map(|t| t.trace_id).collect();
        let spans = store.spans(&ids);
        (spans.len(), engine_telemetry::analysis::phase_stats(spans.values().map(Vec::as_slice)))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(json(StatusCode::OK, &json!({ "Operation": op, "Traces": count, "Phases": stats })))
}

/// `GET /engine/v1/traces/{trace_id}`: the trace as one OTLP JSON document.
pub async fn trace(d: &TraceService, trace_id: &str) -> Result<Resp, ApiError> {
    if engine_telemetry::TraceId::from_hex(trace_id).is_none() {
        return Err(ApiError::bad_request(format!("invalid trace id {trace_id:?}: want 32 lowercase hex digits")));
    }
    let ids: HashSet<String> = [trace_id.to_string()].into();
    let store = d.traces.clone();
    let mut found = tokio::task::spawn_blocking(move || store.requests(&ids))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let reqs = found.remove(trace_id).unwrap_or_default();
    if reqs.is_empty() {
        return Err(ApiError::not_found(format!("no trace {trace_id}")));
    }
    let doc = ExportTraceServiceRequest { resource_spans: reqs.into_iter().flat_map(|r| r.resource_spans).collect() };
    Ok(json(StatusCode::OK, &doc))
}

/// `GET /engine/v1/probes`: whether the eBPF probes run (or why not) and their counters.
pub fn probes(d: &TraceService) -> Result<Resp, ApiError> {
    Ok(json(StatusCode::OK, &probe_status(d)))
}

pub fn probe_status(d: &TraceService) -> serde_json::Value {
    match &d.probes {
        crate::kernel::ProbeState::Running(p) => {
            let c = p.counters();
            json!({
                "Running": true, "Reason": "", "EventsSeen": c.seen, "EventsSent": c.sent, "EventsDropped": c.dropped,
                "Profiles": p.profiles(), "OffCpuSent": c.off_cpu_sent, "OffCpuDropped": c.off_cpu_dropped,
                "StacksLost": c.stacks_lost, "OnCpuSampling": p.sampling().unwrap_or(false),
                "OnCpuReason": p.sampling().err().unwrap_or_default(),
                "OnCpuHz": engine_probes::ON_CPU_HZ, "OnCpuSent": c.on_cpu_sent, "OnCpuDropped": c.on_cpu_dropped,
            })
        }
        crate::kernel::ProbeState::Disabled(why) => {
            json!({ "Running": false, "Reason": why, "EventsSeen": 0, "EventsSent": 0, "EventsDropped": 0, "Profiles": false })
        }
    }
}
