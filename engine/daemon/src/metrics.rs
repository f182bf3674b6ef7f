//! `GET /metrics` (on the API socket, and on `--metrics-addr` as dockerd has it) in the
//! OpenMetrics text format, with prometheus-client:
//! - `engine_phase_duration_seconds{phase,service}`: every span engined stores, by its stable
//!   name (the start's phases: `daemon.start`, `runtime.create`, `init.exec`, `kernel.clone3`,
//!   …), with the trace id as exemplar, so a slow bucket leads to its trace;
//! - `engine_phase_cpu_seconds_total{phase,service,state}`: where those spans' time went, from
//!   the probes (`on` a CPU, `off` it blocked, `runq` waiting for one; a span's sums include its
//!   children's in the same process);
//! - `engine_api_request_duration_seconds{method,route,code}`;
//! - at each scrape: containers by state, lifecycled restarts, shims and their memory, probe
//!   events, the trace store, published-port proxies, and each running container's CPU, memory
//!   and pids (from its cgroup, through lifecycled).

use std::sync::Arc;

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::http::{self, ApiError, Resp};

type Labels = Vec<(String, String)>;
type PhaseHistogram = Family<Labels, HistogramWithExemplars<Labels>, fn() -> HistogramWithExemplars<Labels>>;
type ApiHistogram = Family<Labels, Histogram, fn() -> Histogram>;

/// The metrics engined keeps between scrapes (the rest is read at each scrape).
pub struct Metrics {
    phases: PhaseHistogram,
    phase_cpu: Family<Labels, Counter<f64, std::sync::atomic::AtomicU64>>,
    api: ApiHistogram,
    build_steps: ApiHistogram,
    dns_queries: Family<Labels, Counter>,
    dns_durations: ApiHistogram,
    cri: ApiHistogram,
}

fn phase_histogram() -> HistogramWithExemplars<Labels> {
    // 10 µs … ~9 s
    HistogramWithExemplars::new(exponential_buckets(0.00001, 2.5, 16))
}

fn api_histogram() -> Histogram {
    // 100 µs … ~13 s
    Histogram::new(exponential_buckets(0.0001, 2.2, 16))
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            phases: Family::new_with_constructor(phase_histogram),
            phase_cpu: Family::default(),
            api: Family::new_with_constructor(api_histogram),
            build_steps: Family::new_with_constructor(api_histogram),
            dns_queries: Family::default(),
            dns_durations: Family::new_with_constructor(api_histogram),
            cri: Family::new_with_constructor(api_histogram),
        }
    }
}

impl Metrics {
    /// Every finished span of a request the store takes, by name and service.
    pub fn observe_spans(&self, req: &ExportTraceServiceRequest) {
        for rs in &req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(v) => Some(v.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for sp in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                if sp.end_time_unix_nano <= sp.start_time_unix_nano || not_found(sp) {
                    continue;
                }
                let secs = (sp.end_time_unix_nano - sp.start_time_unix_nano) as f64 / 1e9;
                let trace_id = engine_telemetry::context::hex(&sp.trace_id);
                let span_id = engine_telemetry::context::hex(&sp.span_id);
                self.phases.get_or_create(&l(&[("phase", &sp.name), ("service", &service)])).observe(
                    secs,
                    Some(l(&[("trace_id", &trace_id), ("span_id", &span_id)])),
                    None,
                );
                for (key, state) in [
                    (engine_telemetry::names::ATTR_CPU_ON_NS, "on"),
                    (engine_telemetry::names::ATTR_CPU_OFF_NS, "off"),
                    (engine_telemetry::names::ATTR_CPU_RUNQ_NS, "runq"),
                ] {
                    let ns = sp.attributes.iter().find(|a| a.key == key).and_then(|a| match a.value.as_ref()?.value {
                        Some(any_value::Value::IntValue(v)) => Some(v),
                        _ => None,
                    });
                    if let Some(ns) = ns.filter(|ns| *ns > 0) {
                        self.phase_cpu
                            .get_or_create(&l(&[("phase", &sp.name), ("service", &service), ("state", state)]))
                            .inc_by(ns as f64 / 1e9);
                    }
                }
            }
        }
    }

    /// One build step: its instruction (`RUN`, `COPY`…) and whether the cache had it.
    pub fn observe_build_step(&self, instruction: &str, cache_hit: bool, secs: f64) {
        let cache = if cache_hit { "hit" } else { "miss" };
        self.build_steps.get_or_create(&l(&[("instruction", instruction), ("cache", cache)])).observe(secs);
    }

    /// One query a container's embedded DNS server answered: the network, the query type and
    /// the result (`NOERROR`, `NXDOMAIN`, `SERVFAIL`, `REFUSED`, `TIMEOUT` of the upstreams).
    pub fn observe_dns(&self, network: &str, qtype: &str, result: &str, secs: f64) {
        self.dns_queries.get_or_create(&l(&[("network", network), ("type", qtype), ("result", result)])).inc();
        self.dns_durations.get_or_create(&l(&[("network", network), ("result", result)])).observe(secs);
    }

    /// One CRI call: its service (`runtime.v1.RuntimeService`), method and gRPC status code.
    pub fn observe_cri(&self, service: &str, method: &str, code: tonic::Code, secs: f64) {
        let code = format!("{code:?}");
        self.cri.get_or_create(&l(&[("service", service), ("method", method), ("code", &code)])).observe(secs);
    }

    /// One API request (`route` is the route template, or "(unmatched)": see `api::route_name`).
    pub fn observe_request(&self, method: &str, route: &str, code: u16, secs: f64) {
        self.api.get_or_create(&l(&[("method", method), ("route", route), ("code", &code.to_string())])).observe(secs);
    }
}

/// A request span answered 404: its name holds a path a client made up (unbounded as a label).
fn not_found(sp: &opentelemetry_proto::tonic::trace::v1::Span) -> bool {
    sp.attributes.iter().any(|a| {
        a.key == "http.response.status_code"
            && matches!(a.value.as_ref().and_then(|v| v.value.as_ref()), Some(any_value::Value::IntValue(404)))
    })
}

fn gauge_family() -> Family<Labels, Gauge> {
    Family::default()
}

fn fgauge_family() -> Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> {
    Family::default()
}

fn counter_family() -> Family<Labels, Counter> {
    Family::default()
}

/// What `GET /metrics` reads: the recorded metrics and the state it samples at each scrape
/// (containers, lifecycled's supervisor and client, probes, trace store, transfers). It only
/// reads them.
pub struct MetricsService {
    pub metrics: Arc<Metrics>,
    pub containers: Arc<crate::records::ContainerStore>,
    pub supervisor: crate::supervisor::Supervisor,
    pub cfg: Arc<crate::config::Config>,
    pub probes: crate::kernel::ProbeState,
    pub traces: Arc<crate::tracestore::TraceStore>,
    pub distribution: Arc<crate::distribution::Distribution>,
    pub lifecycle: crate::lifecycle::Lifecycle,
}

/// Every metric of `GET /metrics`: its name as registered (counters gain `_total` in the
/// exposition), its type and its help. `docs/metrics.md` is generated from it and a test
/// checks that /metrics serves nothing it does not list.
pub const CATALOGUE: &[(&str, &str, &str)] = &[
    ("engine_phase_duration_seconds", "histogram", "Duration of each span of the engine's traces, by stable span name (the phases of a start); exemplars name the trace"),
    ("engine_phase_cpu_seconds", "counter", "Where the time of each span went, from the eBPF probes: on a CPU, off it (blocked) or runnable waiting for one (runq), by span name; a span's sums include its children's in the same process"),
    ("engine_api_request_duration_seconds", "histogram", "Duration of Docker Engine API requests, by route and status code"),
    ("engine_build_step_duration_seconds", "histogram", "Duration of each Dockerfile instruction of a build, by instruction and cache hit or miss"),
    ("engine_dns_queries", "counter", "Queries the embedded DNS servers answered, by network, query type and result"),
    ("engine_cri_request_duration_seconds", "histogram", "Duration of Kubernetes CRI calls, by service, method and gRPC status code"),
    ("engine_dns_query_duration_seconds", "histogram", "Time the embedded DNS servers took to answer, by network and result (upstream time included)"),
    ("engine_containers", "gauge", "Containers by state"),
    ("engine_lifecycled_restarts", "counter", "Times engined restarted engine-lifecycled"),
    ("engine_shims", "gauge", "Running engine-shim processes"),
    ("engine_shim_memory_bytes", "gauge", "Resident memory of all engine-shim processes"),
    ("engine_probes_running", "gauge", "Whether the eBPF probes are attached (1) or not (0)"),
    ("engine_probe_events", "counter", "Kernel events the probes saw, sent to engined, or dropped (ring buffer full), by kind: system calls and other point events (syscall), off-CPU intervals (off_cpu; stack_lost: kept without their kernel stack), on-CPU samples (on_cpu)"),
    ("engine_trace_export_decisions", "counter", "Traces the tail sampler (--trace-keep-ratio below 1) exported or dropped, by reason: error, restart, slow, ratio, dropped"),
    ("engine_trace_store_bytes", "gauge", "Bytes of the embedded trace store"),
    ("engine_trace_store_traces", "gauge", "Traces in the embedded trace store"),
    ("engine_registry_blobs", "counter", "Blobs fetched from (pull) or sent to (push) registries"),
    ("engine_registry_bytes", "counter", "Bytes of blobs fetched from (pull) or sent to (push) registries"),
    ("engine_proxy_connections", "counter", "TCP connections or UDP flows engine-proxy forwarded"),
    ("engine_proxy_connections_active", "gauge", "TCP connections or UDP flows engine-proxy holds open"),
    ("engine_proxy_bytes", "counter", "Bytes engine-proxy forwarded, to the container (in) or from it (out)"),
    ("engine_container_cpu_seconds", "counter", "CPU time of a container's cgroup"),
    ("engine_container_memory_bytes", "gauge", "Memory in use by a container's cgroup"),
    ("engine_container_memory_limit_bytes", "gauge", "Memory limit of a container's cgroup"),
    ("engine_container_pids", "gauge", "Processes in a container's cgroup"),
];

/// The help of the catalogued metric `name`.
fn help(name: &str) -> &'static str {
    CATALOGUE.iter().find(|(n, _, _)| *n == name).map(|(_, _, h)| *h).unwrap_or_default()
}

/// The exposition text of every metric now.
pub async fn render(d: &MetricsService) -> Result<String, ApiError> {
    let mut reg = Registry::default();
    reg.register("engine_phase_duration_seconds", help("engine_phase_duration_seconds"), d.metrics.phases.clone());
    reg.register("engine_phase_cpu_seconds", help("engine_phase_cpu_seconds"), d.metrics.phase_cpu.clone());
    reg.register(
        "engine_api_request_duration_seconds",
        help("engine_api_request_duration_seconds"),
        d.metrics.api.clone(),
    );
    reg.register(
        "engine_build_step_duration_seconds",
        help("engine_build_step_duration_seconds"),
        d.metrics.build_steps.clone(),
    );
    reg.register("engine_dns_queries", help("engine_dns_queries"), d.metrics.dns_queries.clone());
    reg.register(
        "engine_cri_request_duration_seconds",
        help("engine_cri_request_duration_seconds"),
        d.metrics.cri.clone(),
    );
    reg.register(
        "engine_dns_query_duration_seconds",
        help("engine_dns_query_duration_seconds"),
        d.metrics.dns_durations.clone(),
    );

    let containers = gauge_family();
    let all: Vec<_> = d.containers.all().iter().map(|e| e.snapshot()).collect();
    for state in crate::state::Status::ALL {
        let n = all.iter().filter(|r| r.state.status() == state).count();
        containers.get_or_create(&l(&[("state", state.as_str())])).set(n as i64);
    }
    reg.register("engine_containers", help("engine_containers"), containers);

    let restarts = Counter::<u64>::default();
    restarts.inc_by(d.supervisor.restarts.load(std::sync::atomic::Ordering::Relaxed));
    reg.register("engine_lifecycled_restarts", help("engine_lifecycled_restarts"), restarts);

    let (shims, shim_rss) = (Gauge::<i64>::default(), Gauge::<i64>::default());
    let pids = crate::kernel::shim_pids(&d.cfg.exec_root.join("lifecycle"));
    let mut rss = 0i64;
    let mut alive = 0i64;
    for pid in pids {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            alive += 1;
            rss += status
                .lines()
                .find_map(|x| x.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
                .unwrap_or(0)
                * 1024;
        }
    }
    shims.set(alive);
    shim_rss.set(rss);
    reg.register("engine_shims", help("engine_shims"), shims);
    reg.register("engine_shim_memory_bytes", help("engine_shim_memory_bytes"), shim_rss);

    let probe_events = counter_family();
    let probes_up = Gauge::<i64>::default();
    if let crate::kernel::ProbeState::Running(p) = &d.probes {
        let c = p.counters();
        probes_up.set(1);
        for (kind, outcome, v) in [
            ("syscall", "seen", c.seen),
            ("syscall", "sent", c.sent),
            ("syscall", "dropped", c.dropped),
            ("off_cpu", "sent", c.off_cpu_sent),
            ("off_cpu", "dropped", c.off_cpu_dropped),
            ("off_cpu", "stack_lost", c.stacks_lost),
            ("on_cpu", "sent", c.on_cpu_sent),
            ("on_cpu", "dropped", c.on_cpu_dropped),
        ] {
            probe_events.get_or_create(&l(&[("kind", kind), ("outcome", outcome)])).inc_by(v);
        }
    }
    reg.register("engine_probes_running", help("engine_probes_running"), probes_up);
    reg.register("engine_probe_events", help("engine_probe_events"), probe_events);

    let decisions = counter_family();
    if let Some(sampler) = d.traces.sampler() {
        for (reason, n) in sampler.counts() {
            let decision = if reason == crate::tailsample::Reason::Dropped { "dropped" } else { "kept" };
            decisions.get_or_create(&l(&[("decision", decision), ("reason", reason.as_str())])).inc_by(n);
        }
    }
    reg.register("engine_trace_export_decisions", help("engine_trace_export_decisions"), decisions);

    let (bytes, count) = d.traces.usage();
    let (tb, tc) = (Gauge::<i64>::default(), Gauge::<i64>::default());
    tb.set(bytes as i64);
    tc.set(count as i64);
    reg.register("engine_trace_store_bytes", help("engine_trace_store_bytes"), tb);
    reg.register("engine_trace_store_traces", help("engine_trace_store_traces"), tc);

    // published-port proxies, from the counters each engine-proxy keeps
    let (total, active, moved) = (counter_family(), gauge_family(), counter_family());
    for r in &all {
        for p in &r.ports {
            let Some(s) = engine_network::ports::ProxyStats::read(&p.stats) else { continue };
            let (hip, hport, cport) =
                (p.port.host_ip.to_string(), p.port.host_port.to_string(), p.port.container_port.to_string());
            let base = [
                ("container_id", r.id.as_str()),
                ("container_name", r.name.as_str()),
                ("protocol", p.port.proto.as_str()),
                ("host_ip", hip.as_str()),
                ("host_port", hport.as_str()),
                ("container_port", cport.as_str()),
            ];
            total.get_or_create(&l(&base)).inc_by(s.connections_total);
            active.get_or_create(&l(&base)).set(s.connections_active as i64);
            for (dir, v) in [("in", s.bytes_in), ("out", s.bytes_out)] {
                let mut lb = l(&base);
                lb.push(("direction".into(), dir.into()));
                moved.get_or_create(&lb).inc_by(v);
            }
        }
    }
    let (blobs, bytes) = (counter_family(), counter_family());
    let t = &d.distribution.transferred;
    for (direction, n, b) in [("pull", &t.pulled_blobs, &t.pulled_bytes), ("push", &t.pushed_blobs, &t.pushed_bytes)] {
        blobs.get_or_create(&l(&[("direction", direction)])).inc_by(n.load(std::sync::atomic::Ordering::Relaxed));
        bytes.get_or_create(&l(&[("direction", direction)])).inc_by(b.load(std::sync::atomic::Ordering::Relaxed));
    }
    reg.register("engine_registry_blobs", help("engine_registry_blobs"), blobs);
    reg.register("engine_registry_bytes", help("engine_registry_bytes"), bytes);

    reg.register("engine_proxy_connections", help("engine_proxy_connections"), total);
    reg.register("engine_proxy_connections_active", help("engine_proxy_connections_active"), active);
    reg.register("engine_proxy_bytes", help("engine_proxy_bytes"), moved);

    // each running container's cgroup, through lifecycled (one request each, at once)
    let (cpu, mem, npids) =
        (Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default(), gauge_family(), gauge_family());
    let mem_limit = fgauge_family();
    let running: Vec<_> = all.iter().filter(|r| r.state.running()).cloned().collect();
    let mut asks = Vec::new();
    for r in running {
        let lifecycle = d.lifecycle.clone();
        asks.push(async move {
            let stats =
                tokio::time::timeout(std::time::Duration::from_secs(2), lifecycle.stats(crate::lifecycle::task(&r.id)))
                    .await;
            (r, stats)
        });
    }
    for (r, stats) in futures_util::future::join_all(asks).await {
        let Ok(Ok(s)) = stats else { continue };
        let v: serde_json::Value = serde_json::from_str(&s.stats_json).unwrap_or_default();
        let data = &v["data"];
        let lb = l(&[("container_id", &r.id), ("container_name", &r.name)]);
        cpu.get_or_create(&lb).inc_by(data["cpu"]["usage"]["total"].as_u64().unwrap_or(0) as f64 / 1e9);
        mem.get_or_create(&lb).set(data["memory"]["usage"]["usage"].as_i64().unwrap_or(0));
        if let Some(limit) = data["memory"]["usage"]["limit"].as_u64().filter(|l| *l > 0 && *l < 1 << 60) {
            mem_limit.get_or_create(&lb).set(limit as f64);
        }
        npids.get_or_create(&lb).set(data["pids"]["current"].as_i64().unwrap_or(0));
    }
    reg.register("engine_container_cpu_seconds", help("engine_container_cpu_seconds"), cpu);
    reg.register("engine_container_memory_bytes", help("engine_container_memory_bytes"), mem);
    reg.register("engine_container_memory_limit_bytes", help("engine_container_memory_limit_bytes"), mem_limit);
    reg.register("engine_container_pids", help("engine_container_pids"), npids);

    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)
        .map_err(|e| ApiError::internal(format!("metrics: {e}")))?;
    Ok(out)
}

pub const CONTENT_TYPE_OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn scrape(d: &MetricsService) -> Result<Resp, ApiError> {
    let mut r = Resp::new(http::full(render(d).await?));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS));
    Ok(r)
}
