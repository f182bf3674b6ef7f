//! `GET /metrics` in Prometheus' text exposition format: for now the published-port proxies'
//! counters (read from the files each engine-proxy keeps), one series per container port.
//! Start latency, API, container and probe metrics join them with the metrics work.

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::StatusCode;
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::daemon::Daemon;
use crate::http::{self, ApiError, Resp};

const LABELS: &[&str] = &["container_id", "container_name", "protocol", "host_ip", "host_port", "container_port"];

fn metric_err(e: prometheus::Error) -> ApiError {
    ApiError::internal(format!("metrics: {e}"))
}

/// The exposition text of every metric now.
pub fn render(d: &Daemon) -> Result<String, ApiError> {
    let reg = Registry::new();
    let total = IntCounterVec::new(Opts::new("engine_proxy_connections_total", "TCP connections or UDP flows engine-proxy forwarded"), LABELS).map_err(metric_err)?;
    let active = IntGaugeVec::new(Opts::new("engine_proxy_connections_active", "TCP connections or UDP flows engine-proxy holds open"), LABELS).map_err(metric_err)?;
    let mut with_dir = LABELS.to_vec();
    with_dir.push("direction");
    let bytes = IntCounterVec::new(Opts::new("engine_proxy_bytes_total", "Bytes engine-proxy forwarded, to the container (in) or from it (out)"), &with_dir).map_err(metric_err)?;
    for c in [Box::new(total.clone()) as Box<dyn prometheus::core::Collector>, Box::new(active.clone()), Box::new(bytes.clone())] {
        reg.register(c).map_err(metric_err)?;
    }
    for e in d.all() {
        let rec = e.snapshot();
        for p in &rec.ports {
            let Some(s) = engine_network::ports::ProxyStats::read(&p.stats) else { continue };
            let (hip, hport, cport) = (p.port.host_ip.to_string(), p.port.host_port.to_string(), p.port.container_port.to_string());
            let l = [rec.id.as_str(), rec.name.as_str(), p.port.proto.as_str(), hip.as_str(), hport.as_str(), cport.as_str()];
            total.with_label_values(&l).inc_by(s.connections_total);
            active.with_label_values(&l).set(s.connections_active as i64);
            let mut li = l.to_vec();
            li.push("in");
            bytes.with_label_values(&li).inc_by(s.bytes_in);
            li.pop();
            li.push("out");
            bytes.with_label_values(&li).inc_by(s.bytes_out);
        }
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&reg.gather(), &mut out).map_err(metric_err)?;
    String::from_utf8(out).map_err(|e| ApiError::internal(e.to_string()))
}

pub fn scrape(d: &Daemon) -> Result<Resp, ApiError> {
    let mut r = Resp::new(http::full(render(d)?));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(r)
}
