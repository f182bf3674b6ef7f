//! What a trace says about where the time went: the critical path, per-phase durations (a phase
//! is a stable span name) and their percentiles across many traces.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::handoff::FlatSpan;

/// The span ids on the critical path: from each root, the child that ended last, then the child
/// that ended last before that one started, and so on down the tree (as Jaeger computes it).
pub fn critical_path(spans: &[FlatSpan]) -> HashSet<String> {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<&FlatSpan>> = HashMap::new();
    let mut roots = Vec::new();
    for s in spans {
        if ids.contains(s.parent_span_id.as_str()) && s.parent_span_id != s.span_id {
            children.entry(s.parent_span_id.as_str()).or_default().push(s);
        } else {
            roots.push(s);
        }
    }
    let mut on = HashSet::new();
    fn walk<'a>(s: &'a FlatSpan, children: &HashMap<&str, Vec<&'a FlatSpan>>, on: &mut HashSet<String>) {
        if !on.insert(s.span_id.clone()) {
            return;
        }
        let Some(kids) = children.get(s.span_id.as_str()) else { return };
        let mut kids = kids.clone();
        kids.sort_by_key(|k| std::cmp::Reverse(k.end_unix_nanos));
        let mut cursor = None;
        for k in kids {
            // the last child to end leads (even one that outlives its parent); before it, the
            // child that ended last before the one on the path started, and so on
            if cursor.is_none_or(|c| k.end_unix_nanos <= c) {
                walk(k, children, on);
                cursor = Some(k.start_unix_nanos);
            }
        }
    }
    for r in roots {
        walk(r, &children, &mut on);
    }
    on
}

/// The time spent in each phase of one trace: durations of spans with the same name summed.
pub fn phases(spans: &[FlatSpan]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for s in spans {
        *out.entry(s.name.clone()).or_insert(0) += s.duration_nanos();
    }
    out
}

/// Percentiles of one phase across traces.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PhaseStats {
    pub phase: String,
    pub count: usize,
    pub p50_nanos: u64,
    pub p95_nanos: u64,
    pub p99_nanos: u64,
    pub max_nanos: u64,
}

/// The nearest-rank percentile `p` (0 to 100) of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Per-phase statistics over many traces (each a list of spans), ordered by phase name.
pub fn phase_stats<'a>(traces: impl IntoIterator<Item = &'a [FlatSpan]>) -> Vec<PhaseStats> {
    let mut by_phase: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for t in traces {
        for (name, d) in phases(t) {
            by_phase.entry(name).or_default().push(d);
        }
    }
    by_phase
        .into_iter()
        .map(|(phase, mut v)| {
            v.sort_unstable();
            PhaseStats {
                count: v.len(),
                p50_nanos: percentile(&v, 50.0),
                p95_nanos: percentile(&v, 95.0),
                p99_nanos: percentile(&v, 99.0),
                max_nanos: *v.last().unwrap_or(&0),
                phase,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: &str, name: &str, start: u64, end: u64) -> FlatSpan {
        FlatSpan::for_test(id, parent, name, start, end)
    }

    #[test]
    fn critical_path_follows_the_last_finishing_children() {
        // root 0..100: a 0..30, b 10..60 (overlaps a, ends later), c 60..95; c has c1 60..70, c2 70..90
        let spans = vec![
            span("r", "", "root", 0, 100),
            span("a", "r", "a", 0, 30),
            span("b", "r", "b", 10, 60),
            span("c", "r", "c", 60, 95),
            span("c1", "c", "c1", 60, 70),
            span("c2", "c", "c2", 70, 90),
        ];
        let on = critical_path(&spans);
        let mut on: Vec<&str> = on.iter().map(String::as_str).collect();
        on.sort();
        assert_eq!(on, ["b", "c", "c1", "c2", "r"]);
    }

    #[test]
    fn stats_take_nearest_rank_percentiles_per_phase() {
        let traces: Vec<Vec<FlatSpan>> = (1..=100)
            .map(|i| vec![span("x", "", "runtime.create", 0, i * 1000), span("y", "x", "runtime.rootfs", 0, 5)])
            .collect();
        let stats = phase_stats(traces.iter().map(Vec::as_slice));
        let create = stats.iter().find(|s| s.phase == "runtime.create").unwrap();
        assert_eq!(
            (create.count, create.p50_nanos, create.p95_nanos, create.p99_nanos, create.max_nanos),
            (100, 50_000, 95_000, 99_000, 100_000)
        );
        assert_eq!(stats.iter().find(|s| s.phase == "runtime.rootfs").unwrap().p99_nanos, 5);
    }
}
