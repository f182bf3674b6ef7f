//! The embedded trace store: every span engined receives (its own, and those of lifecycled, the
//! shims, the runtime and init through its OTLP receiver, and the CLI's through `POST /v1/traces`)
//! is appended as OTLP JSON lines to segment files under `<data-root>/traces/`, indexed in memory
//! by trace and by container, and forwarded to the external OTLP endpoint when one is configured.
//!
//! Retention is bounded by trace count and bytes, at segment granularity: when either bound is
//! passed, the oldest segments go. A sealed segment's index is written beside it, so a restart
//! reads only the open segment's spans.
//!
//! Must never: fail or slow an operation because telemetry failed (every error here is counted
//! and logged, never returned to a container operation).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(test)]
use std::sync::Arc;
use std::sync::Mutex;

use engine_telemetry::handoff::flatten;
#[cfg(test)]
use engine_telemetry::SpanExporter;
use engine_telemetry::{FlatSpan, Sink};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use serde::{Deserialize, Serialize};

/// Retention bounds.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub max_traces: usize,
    pub max_bytes: u64,
    /// A segment is sealed (and becomes the unit of removal) past this size.
    pub segment_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { max_traces: 5000, max_bytes: 256 << 20, segment_bytes: 8 << 20 }
    }
}

/// What the index knows of one trace.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TraceSummary {
    pub trace_id: String,
    pub start: u64,
    pub end: u64,
    pub spans: usize,
    /// The name of the span without a parent in the trace (the CLI's, or engined's request).
    pub root: Option<String>,
    #[serde(default)]
    root_start: u64,
    #[serde(default)]
    root_is_true: bool,
    /// The daemon operations in the trace (`create`, `start`, `exec` …, from `daemon.*` spans).
    pub ops: BTreeSet<String>,
    pub containers: BTreeSet<String>,
    pub container_names: BTreeSet<String>,
    /// The image references the trace's pulls and pushes name (`oci.reference`, in full).
    #[serde(default)]
    pub images: BTreeSet<String>,
    pub services: BTreeSet<String>,
    /// The segments holding the trace's spans, with how many spans each holds.
    pub segments: BTreeMap<u64, usize>,
    /// Whether any span failed.
    pub error: bool,
}

#[derive(Default, Serialize, Deserialize)]
struct SegmentIndex {
    bytes: u64,
    traces: Vec<TraceSummary>,
}

struct Segment {
    seq: u64,
    file: std::fs::File,
    bytes: u64,
    /// Traces with spans in this segment.
    traces: usize,
}

struct Inner {
    open: Option<Segment>,
    /// Bytes of each segment, oldest first.
    segments: BTreeMap<u64, u64>,
    traces: HashMap<String, TraceSummary>,
}

/// Counters, in spans.
#[derive(Default)]
pub struct StoreStats {
    pub received: AtomicU64,
    pub write_errors: AtomicU64,
}

pub struct TraceStore {
    dir: PathBuf,
    retention: Retention,
    inner: Mutex<Inner>,
    export: Option<Sink>,
    /// The tail sampler in front of `export`, when it samples (for its counts).
    sampler: Option<crate::tailsample::TailSampler>,
    /// Resource attributes from `OTEL_RESOURCE_ATTRIBUTES`, added to every resource that lacks them.
    resource: Vec<(String, String)>,
    pub stats: StoreStats,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("seg-{seq:08}.jsonl"))
}

fn index_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("seg-{seq:08}.index.json"))
}

/// The container operation a span stands for: engined's request spans (`POST /containers/{id}/start`
/// is `start`, `DELETE /containers/{id}` is `rm`) and its `daemon.*` phases.
fn operation(span: &str) -> Option<&str> {
    if let Some(op) = span.strip_prefix("daemon.") {
        return (!op.contains('.')).then_some(op);
    }
    let (method, route) = span.split_once(' ')?;
    match (method, route) {
        ("POST", "/containers/create") => Some("create"),
        ("DELETE", "/containers/{id}") => Some("rm"),
        ("POST", "/exec/{id}/start") => Some("exec"),
        ("POST", r) => r.strip_prefix("/containers/{id}/").filter(|op| !op.contains('/')),
        _ => None,
    }
}

fn summarize(into: &mut TraceSummary, s: &FlatSpan, seq: u64) {
    let first = into.spans == 0;
    // the root: the span without a parent (the earliest, if several); failing that (a trace
    // continued from a caller's context), the earliest span
    let is_root = s.parent_span_id.is_empty();
    let earlier = s.start_unix_nanos < into.root_start;
    if first || (is_root && !into.root_is_true) || (earlier && (is_root || !into.root_is_true)) {
        into.root = Some(s.name.clone());
        into.root_start = s.start_unix_nanos;
        into.root_is_true = is_root;
    }
    if first || s.start_unix_nanos < into.start {
        into.start = s.start_unix_nanos;
    }
    into.end = into.end.max(s.end_unix_nanos);
    into.spans += 1;
    into.trace_id.clone_from(&s.trace_id);
    *into.segments.entry(seq).or_insert(0) += 1;
    into.services.insert(s.service.clone());
    into.error |= s.error.is_some();
    if let Some(op) = operation(&s.name) {
        into.ops.insert(op.to_string());
    }
    if let Some(id) = s.attr("container.id") {
        into.containers.insert(id.to_string());
    }
    if let Some(name) = s.attr("container.name") {
        into.container_names.insert(name.trim_start_matches('/').to_string());
    }
    if let Some(reference) = s.attr("oci.reference") {
        into.images.insert(reference.to_string());
    }
}

impl TraceStore {
    /// Opens (or creates) the store in `dir`, reading the indexes of sealed segments and the
    /// spans of the open one.
    pub fn open(
        dir: &Path,
        retention: Retention,
        export: Option<Sink>,
        resource: Vec<(String, String)>,
    ) -> std::io::Result<TraceStore> {
        std::fs::create_dir_all(dir)?;
        // the single file of earlier versions becomes the first segment
        let legacy = dir.join("spans.jsonl");
        if legacy.exists() && !segment_path(dir, 0).exists() {
            std::fs::rename(&legacy, segment_path(dir, 0))?;
        }
        let _ = std::fs::remove_file(dir.join("spans.jsonl.1"));
        let mut seqs: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name().to_str().and_then(|n| n.strip_prefix("seg-")?.strip_suffix(".jsonl")?.parse().ok())
            })
            .collect();
        seqs.sort_unstable();
        let mut inner = Inner { open: None, segments: BTreeMap::new(), traces: HashMap::new() };
        let last = seqs.last().copied();
        for seq in seqs {
            let index = (Some(seq) != last)
                .then(|| {
                    std::fs::read(index_path(dir, seq))
                        .ok()
                        .and_then(|b| serde_json::from_slice::<SegmentIndex>(&b).ok())
                })
                .flatten();
            match index {
                Some(ix) => {
                    inner.segments.insert(seq, ix.bytes);
                    for t in ix.traces {
                        merge(&mut inner.traces, t);
                    }
                }
                None => {
                    let path = segment_path(dir, seq);
                    if Some(seq) == last {
                        // a line torn by a crash would swallow the next append: cut it off
                        truncate_to_last_line(&path);
                    }
                    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    inner.segments.insert(seq, bytes);
                    // an unreadable segment costs its traces, never the daemon's start
                    for req in read_requests(&path) {
                        for s in flatten(&req) {
                            summarize(inner.traces.entry(s.trace_id.clone()).or_default(), &s, seq);
                        }
                    }
                }
            }
        }
        let store = TraceStore {
            dir: dir.to_path_buf(),
            retention,
            inner: Mutex::new(inner),
            export,
            sampler: None,
            resource,
            stats: StoreStats::default(),
        };
        {
            let mut inner = store.lock();
            let seq = last.unwrap_or(0);
            store.open_segment(&mut inner, seq)?;
        }
        Ok(store)
    }

    /// Names the tail sampler the export goes through (`export` is the sampler's sink).
    pub fn with_sampler(mut self, sampler: Option<crate::tailsample::TailSampler>) -> Self {
        self.sampler = sampler;
        self
    }

    /// The tail sampler of the export, when it samples.
    pub fn sampler(&self) -> Option<&crate::tailsample::TailSampler> {
        self.sampler.as_ref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding it leaves the index as it was before that request: still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open_segment(&self, inner: &mut Inner, seq: u64) -> std::io::Result<()> {
        let path = segment_path(&self.dir, seq);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let bytes = file.metadata()?.len();
        inner.segments.insert(seq, bytes);
        // a segment reopened after a restart already holds some
        let traces = inner.traces.values().filter(|t| t.segments.contains_key(&seq)).count();
        inner.open = Some(Segment { seq, file, bytes, traces });
        Ok(())
    }

    /// Stores one request (and forwards it when exporting).
    pub fn ingest(&self, mut req: ExportTraceServiceRequest) {
        for rs in &mut req.resource_spans {
            let resource = rs.resource.get_or_insert_with(Default::default);
            for (k, v) in &self.resource {
                if k != "service.name" && !resource.attributes.iter().any(|a| &a.key == k) {
                    resource.attributes.push(KeyValue {
                        key: k.clone(),
                        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.clone())) }),
                        ..Default::default()
                    });
                }
            }
        }
        let spans = flatten(&req);
        if spans.is_empty() {
            return;
        }
        self.stats.received.fetch_add(spans.len() as u64, Ordering::Relaxed);
        let line = match serde_json::to_vec(&req) {
            Ok(mut l) => {
                l.push(b'\n');
                l
            }
            Err(_) => return,
        };
        if let Some(export) = &self.export {
            export.export(req);
        }
        let mut inner = self.lock();
        let Some(seg) = inner.open.as_mut() else { return };
        if seg.file.write_all(&line).is_err() {
            // a full disk may have taken part of the line: cut it off, so the next one starts
            // on a line of its own once there is room again
            let _ = seg.file.set_len(seg.bytes);
            self.stats.write_errors.fetch_add(spans.len() as u64, Ordering::Relaxed);
            return;
        }
        seg.bytes += line.len() as u64;
        let (seq, bytes) = (seg.seq, seg.bytes);
        inner.segments.insert(seq, bytes);
        let mut new_here = 0;
        for s in &spans {
            let t = inner.traces.entry(s.trace_id.clone()).or_default();
            new_here += usize::from(!t.segments.contains_key(&seq));
            summarize(t, s, seq);
        }
        let open_traces = inner.open.as_mut().map(|o| {
            o.traces += new_here;
            o.traces
        });
        // a segment is sealed by size, or once it holds a quarter of the traces to keep (so the
        // count bound is met at segment granularity too)
        if bytes >= self.retention.segment_bytes || open_traces.unwrap_or(0) > (self.retention.max_traces / 4).max(1) {
            self.seal(&mut inner, seq);
        }
        self.enforce_retention(&mut inner);
    }

    /// Writes the open segment's index and starts the next segment.
    fn seal(&self, inner: &mut Inner, seq: u64) {
        let index = SegmentIndex {
            bytes: inner.segments.get(&seq).copied().unwrap_or(0),
            traces: inner
                .traces
                .values()
                .filter_map(|t| {
                    let here = *t.segments.get(&seq)?;
                    let mut t = t.clone();
                    // the index tells only this segment's part of the trace
                    t.segments = [(seq, here)].into();
                    t.spans = here;
                    Some(t)
                })
                .collect(),
        };
        if let Ok(b) = serde_json::to_vec(&index) {
            let tmp = index_path(&self.dir, seq).with_extension("tmp");
            if std::fs::write(&tmp, b).and_then(|_| std::fs::rename(&tmp, index_path(&self.dir, seq))).is_err() {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.open_segment(inner, seq + 1).is_err() {
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn enforce_retention(&self, inner: &mut Inner) {
        loop {
            let bytes: u64 = inner.segments.values().sum();
            if inner.segments.len() <= 1
                || (bytes <= self.retention.max_bytes && inner.traces.len() <= self.retention.max_traces)
            {
                return;
            }
            let Some((&oldest, _)) = inner.segments.iter().next() else { return };
            if inner.open.as_ref().is_some_and(|s| s.seq == oldest) {
                return;
            }
            inner.segments.remove(&oldest);
            let _ = std::fs::remove_file(segment_path(&self.dir, oldest));
            let _ = std::fs::remove_file(index_path(&self.dir, oldest));
            // a trace that lost part of its spans is dropped whole
            inner.traces.retain(|_, t| !t.segments.contains_key(&oldest));
        }
    }

    /// Traces that involve container `id` (or, for a removed container, one named `name`),
    /// oldest first.
    pub fn container_traces(&self, id: &str, name: Option<&str>) -> Vec<TraceSummary> {
        let inner = self.lock();
        let mut out: Vec<TraceSummary> = inner
            .traces
            .values()
            .filter(|t| {
                t.containers.contains(id) || name.is_some_and(|n| t.container_names.contains(n.trim_start_matches('/')))
            })
            .cloned()
            .collect();
        out.sort_by_key(|t| t.start);
        out
    }

    /// The `limit` most recent traces that contain operation `op` (any when `None`), oldest first.
    pub fn recent(&self, op: Option<&str>, limit: usize) -> Vec<TraceSummary> {
        self.recent_where(op, limit, |_| true)
    }

    /// [`TraceStore::recent`], of the traces `keep` accepts.
    pub fn recent_where(
        &self,
        op: Option<&str>,
        limit: usize,
        keep: impl Fn(&TraceSummary) -> bool,
    ) -> Vec<TraceSummary> {
        let inner = self.lock();
        let mut out: Vec<TraceSummary> =
            inner.traces.values().filter(|t| op.is_none_or(|o| t.ops.contains(o)) && keep(t)).cloned().collect();
        out.sort_by_key(|t| std::cmp::Reverse(t.start));
        out.truncate(limit);
        out.reverse();
        out
    }

    pub fn summary(&self, trace_id: &str) -> Option<TraceSummary> {
        self.lock().traces.get(trace_id).cloned()
    }

    /// The stored requests of the given traces, each cut down to that trace's spans.
    pub fn requests(&self, trace_ids: &HashSet<String>) -> HashMap<String, Vec<ExportTraceServiceRequest>> {
        let segments: BTreeSet<u64> = {
            let inner = self.lock();
            trace_ids.iter().filter_map(|t| inner.traces.get(t)).flat_map(|t| t.segments.keys().copied()).collect()
        };
        let mut out: HashMap<String, Vec<ExportTraceServiceRequest>> = HashMap::new();
        for seq in segments {
            // a segment removed meanwhile by retention is simply gone
            let Ok(f) = std::fs::File::open(segment_path(&self.dir, seq)) else { continue };
            for line in std::io::BufReader::new(f).split(b'\n').map_while(Result::ok) {
                let wanted: BTreeSet<&str> = trace_ids_in(&line).filter(|t| trace_ids.contains(*t)).collect();
                if wanted.is_empty() {
                    continue;
                }
                let Ok(req) = serde_json::from_slice::<ExportTraceServiceRequest>(&line) else { continue };
                for t in wanted {
                    let Some(id) = engine_telemetry::TraceId::from_hex(t) else { continue };
                    let bytes = id.0.to_vec();
                    let mut r = req.clone();
                    for rs in &mut r.resource_spans {
                        for ss in &mut rs.scope_spans {
                            ss.spans.retain(|s| s.trace_id == bytes);
                        }
                        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
                    }
                    r.resource_spans.retain(|rs| !rs.scope_spans.is_empty());
                    if !r.resource_spans.is_empty() {
                        out.entry(t.to_string()).or_default().push(r);
                    }
                }
            }
        }
        out
    }

    /// The spans of the given traces, flattened.
    pub fn spans(&self, trace_ids: &HashSet<String>) -> HashMap<String, Vec<FlatSpan>> {
        self.requests(trace_ids).into_iter().map(|(t, reqs)| (t, reqs.iter().flat_map(flatten).collect())).collect()
    }

    /// Total bytes on disk and traces indexed.
    pub fn usage(&self) -> (u64, usize) {
        let inner = self.lock();
        (inner.segments.values().sum(), inner.traces.len())
    }
}

/// Every request stored in a segment; lines that do not parse (torn, or not UTF-8) are skipped.
fn read_requests(path: &Path) -> impl Iterator<Item = ExportTraceServiceRequest> {
    let lines = std::fs::File::open(path).ok().map(|f| std::io::BufReader::new(f).split(b'\n').map_while(Result::ok));
    lines.into_iter().flatten().filter_map(|l| serde_json::from_slice(&l).ok())
}

fn truncate_to_last_line(path: &Path) {
    let Ok(bytes) = std::fs::read(path) else { return };
    let keep = bytes.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
    if keep < bytes.len() {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
            let _ = f.set_len(keep as u64);
        }
    }
}

/// The trace ids named in one stored line, without parsing it (`"traceId":"<32 hex>"`).
fn trace_ids_in(line: &[u8]) -> impl Iterator<Item = &str> {
    const KEY: &[u8] = b"\"traceId\":\"";
    let mut at = 0;
    std::iter::from_fn(move || {
        let i = line[at..].windows(KEY.len()).position(|w| w == KEY)? + at + KEY.len();
        at = i;
        line.get(i..i + 32).and_then(|id| std::str::from_utf8(id).ok())
    })
}

fn merge(traces: &mut HashMap<String, TraceSummary>, t: TraceSummary) {
    match traces.get_mut(&t.trace_id) {
        None => {
            traces.insert(t.trace_id.clone(), t);
        }
        Some(have) => {
            have.start = have.start.min(t.start);
            have.end = have.end.max(t.end);
            if have.root.is_none() || (!have.root_is_true && t.root_is_true) {
                have.root = t.root;
                have.root_start = t.root_start;
                have.root_is_true = t.root_is_true;
            }
            have.ops.extend(t.ops);
            have.containers.extend(t.containers);
            have.container_names.extend(t.container_names);
            have.services.extend(t.services);
            have.segments.extend(t.segments);
            have.spans = have.segments.values().sum();
            have.error |= t.error;
        }
    }
}

/// The store as a span sink, for tests (engined's sink also places kernel events).
#[cfg(test)]
pub struct StoreSink(pub Arc<TraceStore>);

#[cfg(test)]
impl SpanExporter for StoreSink {
    fn export(&self, request: ExportTraceServiceRequest) {
        self.0.ingest(request);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_telemetry::{Recorder, TraceContext};

    /// One trace of `spans` spans for container `id`, as a process would hand it over.
    fn trace(store: &Arc<TraceStore>, id: &str, spans: usize) -> String {
        let sink = Sink::new(StoreSink(store.clone()));
        let mut rec = Recorder::with_sink("engined", sink, None);
        let root = rec.start("POST /containers/{id}/start", None);
        let tp = rec.context(root).unwrap();
        for _ in 1..spans {
            let h = rec.start("daemon.start", Some(root));
            rec.set_attr(h, "container.id", id);
            rec.end(h);
        }
        rec.end(root);
        rec.flush();
        tp.trace_id.to_string()
    }

    #[test]
    fn retention_drops_oldest_segments_and_a_restart_finds_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention { max_traces: 10, max_bytes: 1 << 30, segment_bytes: 4096 };
        let store = Arc::new(
            TraceStore::open(dir.path(), retention, None, vec![("deployment.environment".into(), "test".into())])
                .unwrap(),
        );
        let first = trace(&store, "c1", 3);
        assert_eq!(store.container_traces("c1", None).len(), 1);
        let s = store.summary(&first).unwrap();
        assert_eq!(
            (s.spans, s.root.as_deref(), s.ops.iter().next().map(String::as_str)),
            (3, Some("POST /containers/{id}/start"), Some("start"))
        );
        let mut ids = vec![first.clone()];
        for _ in 0..40 {
            ids.push(trace(&store, "c2", 3));
        }
        let (bytes, traces) = store.usage();
        assert!(traces <= 10 + 4096 / 300, "{traces} traces kept");
        assert!(store.summary(&first).is_none(), "the oldest trace went");
        assert!(!dir.path().join("seg-00000000.jsonl").exists());
        // the newest trace reads back whole, with the resource attribute added
        let last = ids.last().unwrap().clone();
        let reqs = store.requests(&[last.clone()].into()).remove(&last).unwrap();
        let spans: Vec<FlatSpan> = reqs.iter().flat_map(flatten).collect();
        assert_eq!(spans.len(), 3);
        assert!(reqs[0].resource_spans[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .any(|kv| kv.key == "deployment.environment"));
        drop(store);
        // a restart reads sealed segments from their index and the open one from its spans
        let again = TraceStore::open(dir.path(), retention, None, vec![]).unwrap();
        assert_eq!(again.usage(), (bytes, traces));
        assert_eq!(again.summary(&last).map(|s| s.spans), Some(3));
        assert!(again.container_traces("c2", None).iter().any(|t| t.trace_id == last));
        // a trace continued from a caller's context: its earliest span stands for the root
        let arc = Arc::new(again);
        let mut rec = Recorder::with_sink(
            "engined",
            Sink::new(StoreSink(arc.clone())),
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None).ok(),
        );
        let h = rec.start("POST /containers/create", None);
        rec.end(h);
        rec.flush();
        assert_eq!(
            arc.summary("4bf92f3577b34da6a3ce929d0e0e4736").unwrap().root.as_deref(),
            Some("POST /containers/create")
        );
    }

    /// A full disk loses the requests that do not fit, whole: those written once there is room
    /// again read back after a restart (needs root, for a small tmpfs).
    #[test]
    fn a_full_disk_loses_whole_requests_and_storing_resumes_when_freed() {
        let disk = engine_test_support::Tmpfs::mount("8k");
        let dir = disk.path();
        let retention = Retention { max_traces: 1000, max_bytes: 1 << 30, segment_bytes: 1 << 20 };
        let store = Arc::new(TraceStore::open(dir, retention, None, vec![]).unwrap());
        let mut stored = Vec::new();
        while store.stats.write_errors.load(Ordering::Relaxed) == 0 {
            stored.push(trace(&store, "c1", 3));
        }
        stored.pop(); // the one that did not fit
        disk.resize("1m");
        stored.push(trace(&store, "c1", 3));
        drop(store);
        let again = TraceStore::open(dir, retention, None, vec![]).unwrap();
        assert!(stored.len() > 2);
        for id in &stored {
            assert_eq!(again.summary(id).map(|s| s.spans), Some(3), "trace {id} of {}", stored.len());
        }
    }

    #[test]
    fn a_trace_across_a_seal_and_a_torn_line_read_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention { max_traces: 1000, max_bytes: 1 << 30, segment_bytes: 2048 };
        let store = Arc::new(TraceStore::open(dir.path(), retention, None, vec![]).unwrap());
        // one trace handed over in many requests (one per process), across several seals
        let ctx = TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None).ok();
        for _ in 0..30 {
            let mut rec = Recorder::with_sink("engine-shim", Sink::new(StoreSink(store.clone())), ctx.clone());
            let h = rec.start("shim.start", None);
            rec.set_attr(h, "container.id", "c3");
            rec.end(h);
        }
        let id = "0af7651916cd43dd8448eb211c80319c";
        let summary = store.summary(id).unwrap();
        assert!(summary.segments.len() > 2, "the trace spans {} segments", summary.segments.len());
        assert_eq!(summary.spans, 30);
        drop(store);
        // a crash tore the open segment's last line
        let open = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .max()
            .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&open)
            .unwrap()
            .write_all(b"{\"resourceSpans\":[{\"res\xff")
            .unwrap();
        let again = Arc::new(TraceStore::open(dir.path(), retention, None, vec![]).unwrap());
        assert_eq!(again.summary(id).map(|s| s.spans), Some(30), "no span counted twice, none lost");
        assert_eq!(again.spans(&[id.to_string()].into())[id].len(), 30);
        // the next append starts on a line of its own
        let mut rec = Recorder::with_sink("engine-shim", Sink::new(StoreSink(again.clone())), ctx);
        let h = rec.start("shim.delete", None);
        rec.end(h);
        drop(rec);
        drop(again);
        let third = TraceStore::open(dir.path(), retention, None, vec![]).unwrap();
        assert_eq!(third.summary(id).map(|s| s.spans), Some(31));
    }
}
