//! The OTLP exporter against real receivers on loopback: OTLP/HTTP with protobuf and JSON bodies
//! (a hyper server decoding what arrives), OTLP/gRPC (the crate's own receiver, the generated
//! `TraceService`), and an endpoint that comes up only after spans were exported (engined
//! restarting): they are delivered once it is there.
#![cfg(feature = "otlp")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use engine_telemetry::handoff::flatten;
use engine_telemetry::otlp::{ExportConfig, OtlpExporter, Protocol, Receiver};
use engine_telemetry::{MemorySink, Recorder, Sink};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

fn spans_from(sink: Sink, name: &str) {
    let mut rec = Recorder::with_sink("engine-test", sink, None);
    let h = rec.start(name, None);
    rec.set_attr(h, "container.id", "abc");
    rec.end(h);
    rec.flush();
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

type Got = Arc<Mutex<Vec<(String, String, Bytes)>>>;

/// An OTLP/HTTP receiver: records (path, content type, body) of every POST.
async fn http_receiver() -> (String, Got) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Got = Default::default();
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let g = g.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let g = g.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let ct =
                            req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        g.lock().unwrap().push((path, ct, body));
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_and_json_reach_a_receiver() {
    let (base, got) = http_receiver().await;
    let proto = Sink::new(OtlpExporter::start(
        ExportConfig::new(&format!("{base}/v1/traces"), Protocol::HttpProtobuf).unwrap(),
    ));
    spans_from(proto, "over.protobuf");
    let json =
        Sink::new(OtlpExporter::start(ExportConfig::new(&format!("{base}/v1/traces"), Protocol::HttpJson).unwrap()));
    spans_from(json, "over.json");
    eventually("two posts", || got.lock().unwrap().len() == 2).await;
    let mut names = Vec::new();
    for (path, ct, body) in got.lock().unwrap().iter() {
        assert_eq!(path, "/v1/traces");
        let req = match ct.as_str() {
            "application/x-protobuf" => ExportTraceServiceRequest::decode(body.clone()).unwrap(),
            "application/json" => serde_json::from_slice(body).unwrap(),
            other => panic!("content type {other}"),
        };
        let spans = flatten(&req);
        assert_eq!(spans[0].service, "engine-test");
        assert_eq!(spans[0].attr("container.id"), Some("abc"));
        names.push(spans[0].name.clone());
    }
    names.sort();
    assert_eq!(names, ["over.json", "over.protobuf"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_spans_wait_for_a_receiver_that_comes_up_late() {
    // a free port, not yet served
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let exporter = OtlpExporter::start(ExportConfig::new(&format!("http://127.0.0.1:{port}"), Protocol::Grpc).unwrap());
    let stats = exporter.stats();
    spans_from(Sink::new(exporter), "sent.early");
    // the receiver starts after the export was attempted
    let received = MemorySink::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let svc = Receiver::service(Sink::new(received.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut all = Vec::new();
    eventually("the late receiver to get the span", || {
        if let Some(r) = received.take() {
            all.extend(flatten(&r));
        }
        !all.is_empty()
    })
    .await;
    assert_eq!(all[0].name, "sent.early");
    eventually("the exporter to count the span sent", || {
        stats.exported.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(stats.failed.load(std::sync::atomic::Ordering::Relaxed), 0);
}
