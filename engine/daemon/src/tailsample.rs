//! Tail sampling of what engined exports: every span reaches engined, so it can decide per trace
//! once the trace is over, not at its root's start as a head sampler must. A trace is kept when
//! it failed (a span with an error), when its operation spanned a restart of lifecycled, when its
//! root took longer than `--trace-keep-slower-than` (default: the running p99 of that root's
//! operation, once 20 of them have been seen), or else by `--trace-keep-ratio` (by trace id, as
//! OpenTelemetry's TraceIdRatioBased: the same trace gets the same answer everywhere).
//!
//! A trace is decided once its root (a span without a parent) has ended and nothing more of it
//! came for [`SETTLE`], or after [`QUIET`] without spans when no root comes (a trace continued
//! from a caller's context), or at [`MAX_AGE`]. Spans of a decided trace that come later follow
//! the decision. Only the export to the OTLP endpoint is sampled: the embedded store keeps every
//! trace (within its retention), and the metrics count every span.
//!
//! Must never: block the span intake (a bounded buffer; past it the oldest traces are decided
//! early), or export a span of a trace it dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use engine_telemetry::{Sink, SpanExporter};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans};

/// Quiet time after the root's end before a trace is decided.
pub const SETTLE: Duration = Duration::from_secs(1);
/// Quiet time before a trace whose root never came is decided.
pub const QUIET: Duration = Duration::from_secs(5);
/// Longest a trace waits.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// Traces waiting at most; past it the oldest are decided early.
const PENDING: usize = 4096;
/// Decisions remembered (for spans that come late), and root durations kept per operation.
const DECIDED: usize = 65536;
const DURATIONS: usize = 1000;
const OPERATIONS: usize = 256;
/// Root durations of an operation needed before its running p99 is the default threshold.
const MIN_FOR_P99: usize = 20;

/// What to keep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Share of the traces no rule keeps that are kept anyway, 0..=1.
    pub keep_ratio: f64,
    /// Traces whose root took longer are kept; `None`: the running p99 of the root's operation.
    pub keep_slower_than: Option<Duration>,
}

impl Policy {
    /// Whether anything is ever dropped (else the sampler is not needed).
    pub fn samples(&self) -> bool {
        self.keep_ratio < 1.0
    }
}

/// Why a trace was kept or dropped (the metric's `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Error,
    Restart,
    Slow,
    Ratio,
    Dropped,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Error => "error",
            Reason::Restart => "restart",
            Reason::Slow => "slow",
            Reason::Ratio => "ratio",
            Reason::Dropped => "dropped",
        }
    }

    pub const ALL: [Reason; 5] = [Reason::Error, Reason::Restart, Reason::Slow, Reason::Ratio, Reason::Dropped];
}

struct Pending {
    requests: Vec<ExportTraceServiceRequest>,
    first: Instant,
    last: Instant,
    /// The root's name and duration, once it has come.
    root: Option<(String, u64)>,
    error: bool,
    /// Wall-clock span of the trace's spans.
    start_ns: u64,
    end_ns: u64,
}

#[derive(Default)]
struct State {
    pending: HashMap<String, Pending>,
    decided: HashMap<String, bool>,
    decided_order: VecDeque<String>,
    durations: HashMap<String, VecDeque<u64>>,
    /// Wall-clock times of lifecycled's restarts (the last few).
    restarts: VecDeque<u64>,
}

struct Shared {
    policy: Policy,
    sink: Sink,
    state: Mutex<State>,
    counts: [AtomicU64; 5],
}

/// The sampler: an exporter in front of the OTLP one.
#[derive(Clone)]
pub struct TailSampler(Arc<Shared>);

/// The request's spans, one request per trace (resources and scopes kept).
fn split_by_trace(req: ExportTraceServiceRequest) -> HashMap<String, ExportTraceServiceRequest> {
    let mut out: HashMap<String, ExportTraceServiceRequest> = HashMap::new();
    for rs in req.resource_spans {
        for ss in rs.scope_spans {
            let mut by_trace: HashMap<String, Vec<_>> = HashMap::new();
            for sp in ss.spans {
                by_trace.entry(engine_telemetry::context::hex(&sp.trace_id)).or_default().push(sp);
            }
            for (id, spans) in by_trace {
                let r = out.entry(id).or_default();
                r.resource_spans.push(ResourceSpans {
                    resource: rs.resource.clone(),
                    scope_spans: vec![ScopeSpans { scope: ss.scope.clone(), spans, schema_url: ss.schema_url.clone() }],
                    schema_url: rs.schema_url.clone(),
                });
            }
        }
    }
    out
}

/// `ratio` of trace ids, by the id's low 8 bytes (as TraceIdRatioBased).
fn by_ratio(trace_id: &str, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let low = trace_id.get(trace_id.len().saturating_sub(16)..).and_then(|h| u64::from_str_radix(h, 16).ok());
    low.is_some_and(|v| (v >> 1) < (ratio * (1u64 << 63) as f64) as u64)
}

fn p99(d: &VecDeque<u64>) -> Option<u64> {
    if d.len() < MIN_FOR_P99 {
        return None;
    }
    let mut v: Vec<u64> = d.iter().copied().collect();
    v.sort_unstable();
    Some(v[((v.len() * 99).div_ceil(100)).saturating_sub(1)])
}

impl TailSampler {
    /// A sampler forwarding what it keeps to `sink`, deciding on a thread of its own that lives
    /// as long as the sampler.
    pub fn start(policy: Policy, sink: Sink) -> std::io::Result<TailSampler> {
        let shared = Arc::new(Shared { policy, sink, state: Mutex::default(), counts: Default::default() });
        let weak: Weak<Shared> = Arc::downgrade(&shared);
        std::thread::Builder::new().name("tail-sampler".into()).spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            match weak.upgrade() {
                Some(s) => TailSampler(s).tick(Instant::now()),
                None => return,
            }
        })?;
        Ok(TailSampler(shared))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// lifecycled restarted now: traces running at the time are kept.
    pub fn note_restart(&self) {
        let mut st = self.lock();
        if st.restarts.len() == 16 {
            st.restarts.pop_front();
        }
        st.restarts.push_back(engine_telemetry::recorder::now_unix_nanos());
    }

    /// Traces kept or dropped so far, by reason.
    pub fn counts(&self) -> Vec<(Reason, u64)> {
        Reason::ALL.iter().enumerate().map(|(i, r)| (*r, self.0.counts[i].load(Ordering::Relaxed))).collect()
    }

    fn offer(&self, req: ExportTraceServiceRequest, at: Instant) {
        let mut forward = Vec::new();
        {
            let mut st = self.lock();
            for (id, part) in split_by_trace(req) {
                if let Some(keep) = st.decided.get(&id) {
                    if *keep {
                        forward.push(part);
                    }
                    continue;
                }
                if !st.pending.contains_key(&id) && st.pending.len() >= PENDING {
                    // full: the oldest trace is decided now
                    if let Some(oldest) = st.pending.iter().min_by_key(|(_, p)| p.first).map(|(k, _)| k.clone()) {
                        forward.extend(self.decide(&mut st, &oldest));
                    }
                }
                let p = st.pending.entry(id).or_insert_with(|| Pending {
                    requests: Vec::new(),
                    first: at,
                    last: at,
                    root: None,
                    error: false,
                    start_ns: u64::MAX,
                    end_ns: 0,
                });
                p.last = at;
                for sp in part.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
                    p.start_ns = p.start_ns.min(sp.start_time_unix_nano);
                    p.end_ns = p.end_ns.max(sp.end_time_unix_nano);
                    p.error |= sp.status.as_ref().is_some_and(|s| s.code == status::StatusCode::Error as i32);
                    if sp.parent_span_id.is_empty() {
                        let d = sp.end_time_unix_nano.saturating_sub(sp.start_time_unix_nano);
                        p.root = Some((sp.name.clone(), d));
                    }
                }
                p.requests.push(part);
            }
        }
        for r in forward {
            self.0.sink.export(r);
        }
    }

    /// Decides the traces that are due at `now`.
    pub fn tick(&self, now: Instant) {
        let mut forward = Vec::new();
        {
            let mut st = self.lock();
            let due: Vec<String> = st
                .pending
                .iter()
                .filter(|(_, p)| {
                    let quiet = now.saturating_duration_since(p.last);
                    (p.root.is_some() && quiet >= SETTLE)
                        || quiet >= QUIET
                        || now.saturating_duration_since(p.first) >= MAX_AGE
                })
                .map(|(k, _)| k.clone())
                .collect();
            for id in due {
                forward.extend(self.decide(&mut st, &id));
            }
        }
        for r in forward {
            self.0.sink.export(r);
        }
    }

    /// Decides trace `id`: what to forward (all of it, or nothing).
    fn decide(&self, st: &mut State, id: &str) -> Vec<ExportTraceServiceRequest> {
        let Some(p) = st.pending.remove(id) else { return Vec::new() };
        let policy = self.0.policy;
        let reason = if p.error {
            Reason::Error
        } else if st.restarts.iter().any(|&r| p.start_ns <= r && r <= p.end_ns) {
            Reason::Restart
        } else {
            let slow = p.root.as_ref().is_some_and(|(name, d)| {
                let threshold = policy
                    .keep_slower_than
                    .map(|t| t.as_nanos() as u64)
                    .or_else(|| st.durations.get(name).and_then(p99));
                threshold.is_some_and(|t| *d > t)
            });
            if slow {
                Reason::Slow
            } else if by_ratio(id, policy.keep_ratio) {
                Reason::Ratio
            } else {
                Reason::Dropped
            }
        };
        // root names come from clients too: a bounded number of operations is remembered
        if let Some((name, d)) =
            p.root.as_ref().filter(|(n, _)| st.durations.len() < OPERATIONS || st.durations.contains_key(n))
        {
            let ds = st.durations.entry(name.clone()).or_default();
            if ds.len() == DURATIONS {
                ds.pop_front();
            }
            ds.push_back(*d);
        }
        let keep = reason != Reason::Dropped;
        if st.decided_order.len() == DECIDED {
            if let Some(old) = st.decided_order.pop_front() {
                st.decided.remove(&old);
            }
        }
        st.decided.insert(id.to_string(), keep);
        st.decided_order.push_back(id.to_string());
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        if keep {
            p.requests
        } else {
            Vec::new()
        }
    }
}

impl SpanExporter for TailSampler {
    fn export(&self, request: ExportTraceServiceRequest) {
        self.offer(request, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{Span, Status};

    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<String>>>);

    impl SpanExporter for Collect {
        fn export(&self, request: ExportTraceServiceRequest) {
            for sp in request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
                self.0.lock().unwrap().push(format!("{}:{}", engine_telemetry::context::hex(&sp.trace_id), sp.name));
            }
        }
    }

    fn span(trace: u8, name: &str, root: bool, ms: u64, error: bool) -> ExportTraceServiceRequest {
        let sp = Span {
            trace_id: vec![trace; 16],
            span_id: vec![trace, name.len() as u8, 1, 1, 1, 1, 1, 1],
            parent_span_id: if root { vec![] } else { vec![9; 8] },
            name: name.into(),
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 1_000 + ms * 1_000_000,
            status: error.then(|| Status { code: status::StatusCode::Error as i32, message: "x".into() }),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans: vec![sp], ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    fn sampler(policy: Policy) -> (TailSampler, Collect) {
        let c = Collect::default();
        let shared = Arc::new(Shared {
            policy,
            sink: Sink::new(c.clone()),
            state: Mutex::default(),
            counts: Default::default(),
        });
        (TailSampler(shared), c)
    }

    #[test]
    fn slow_and_failed_traces_are_kept_and_the_rest_by_ratio() {
        let (s, got) = sampler(Policy { keep_ratio: 0.0, keep_slower_than: Some(Duration::from_millis(100)) });
        let t0 = Instant::now();
        s.offer(span(1, "runtime.create", false, 5, false), t0);
        s.offer(span(1, "engine.run", true, 50, false), t0); // fast
        s.offer(span(2, "engine.run", true, 500, false), t0); // slow
        s.offer(span(3, "runtime.start", false, 1, true), t0); // failed
        s.offer(span(3, "engine.run", true, 20, false), t0);
        s.offer(span(4, "daemon.start", false, 1, false), t0); // no root yet
                                                               // nothing leaves before the traces settle
        s.tick(t0 + Duration::from_millis(500));
        assert!(got.0.lock().unwrap().is_empty());
        s.tick(t0 + SETTLE);
        let mut out = got.0.lock().unwrap().clone();
        out.sort();
        let two = "02".repeat(16);
        let three = "03".repeat(16);
        assert_eq!(out, [format!("{two}:engine.run"), format!("{three}:engine.run"), format!("{three}:runtime.start")]);
        // a late span follows its trace's decision
        s.offer(span(1, "shim.delete", false, 1, false), t0 + SETTLE);
        s.offer(span(2, "shim.delete", false, 1, false), t0 + SETTLE);
        assert_eq!(got.0.lock().unwrap().len(), 4);
        // a trace without a root is decided once quiet
        s.tick(t0 + QUIET);
        assert_eq!(got.0.lock().unwrap().len(), 4);
        let counts: HashMap<Reason, u64> = s.counts().into_iter().collect();
        assert_eq!((counts[&Reason::Slow], counts[&Reason::Error], counts[&Reason::Dropped]), (1, 1, 2));
    }

    #[test]
    fn the_default_threshold_is_the_running_p99_and_a_restart_keeps_what_it_spans() {
        let (s, got) = sampler(Policy { keep_ratio: 0.0, keep_slower_than: None });
        let t0 = Instant::now();
        for n in 0..30u8 {
            s.offer(span(10 + n, "engine.run", true, 10, false), t0);
        }
        s.tick(t0 + SETTLE);
        assert!(got.0.lock().unwrap().is_empty(), "no p99 yet, then all within it");
        s.offer(span(100, "engine.run", true, 80, false), t0 + SETTLE);
        s.tick(t0 + SETTLE * 2);
        assert_eq!(got.0.lock().unwrap().len(), 1);
        // a span whose time holds a restart of lifecycled
        s.lock().restarts.push_back(1_000 + 1_000_000);
        s.offer(span(101, "engine.run", true, 5, false), t0 + SETTLE * 2);
        s.tick(t0 + SETTLE * 3);
        assert_eq!(got.0.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_ratio_keeps_about_its_share_the_same_way_each_time() {
        let ids: Vec<String> =
            (0..10_000u32).map(|n| format!("{:032x}", (n as u128) * 0x9e37_79b9_7f4a_7c15)).collect();
        let kept = ids.iter().filter(|id| by_ratio(id, 0.25)).count();
        assert!((2000..3000).contains(&kept), "{kept}");
        assert!(ids.iter().all(|id| by_ratio(id, 0.25) == by_ratio(id, 0.25)));
        assert!(!by_ratio(&ids[1], 0.0) && by_ratio(&ids[1], 1.0));
    }
}
