//! `engine trace --why`: beside each span of a trace's critical path, where its time went (on a
//! CPU, blocked, waiting for a CPU: the `engine.cpu.*` attributes the probes' off-CPU intervals
//! give) and the kernel stacks it blocked in longest (its own `kernel.blocked` events and those of
//! the spans under it in the same process).

use std::collections::HashMap;
use std::fmt::Write;

use crate::handoff::FlatSpan;
use crate::names::{
    ATTR_CPU_OFF_NS, ATTR_CPU_ON_NS, ATTR_CPU_RUNQ_NS, ATTR_KERNEL_STACK, ATTR_PERF_SAMPLES, KERNEL_BLOCKED,
    KERNEL_ON_CPU,
};

/// Stacks shown under a span at most.
const STACKS: usize = 3;

/// A span's time: running, blocked, runnable waiting for a CPU (nanoseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuSplit {
    pub on: u64,
    pub off: u64,
    pub runq: u64,
}

/// The split the probes gave `span`, if they followed its process.
pub fn cpu_split(span: &FlatSpan) -> Option<CpuSplit> {
    let n = |k: &str| span.attr(k).and_then(|v| v.parse::<u64>().ok());
    Some(CpuSplit { on: n(ATTR_CPU_ON_NS)?, off: n(ATTR_CPU_OFF_NS)?, runq: n(ATTR_CPU_RUNQ_NS)? })
}

/// The stack and blocked time a `kernel.blocked` event's attributes name.
pub fn blocked_in(attrs: &[(String, String)]) -> Option<(&str, u64)> {
    let get = |k: &str| attrs.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    Some((get(ATTR_KERNEL_STACK)?, get(ATTR_CPU_OFF_NS)?.parse().ok()?))
}

/// The `kernel.blocked` events of `span`: (stack line, blocked ns).
fn blocked_events(span: &FlatSpan) -> impl Iterator<Item = (&str, u64)> {
    span.events.iter().filter(|(_, n, _)| n == KERNEL_BLOCKED).filter_map(|(_, _, a)| blocked_in(a))
}

/// The stack and sample count a `kernel.on_cpu` event's attributes name.
pub fn sampled_in(attrs: &[(String, String)]) -> Option<(&str, u64)> {
    let get = |k: &str| attrs.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    Some((get(ATTR_KERNEL_STACK)?, get(ATTR_PERF_SAMPLES)?.parse().ok()?))
}

/// The `kernel.on_cpu` events of `span`: (stack line, samples).
fn sampled_events(span: &FlatSpan) -> impl Iterator<Item = (&str, u64)> {
    span.events.iter().filter(|(_, n, _)| n == KERNEL_ON_CPU).filter_map(|(_, _, a)| sampled_in(a))
}

/// The spans but the kernel's, by parent (`None`: the roots), each list in start order.
type Tree<'a> = HashMap<Option<&'a str>, Vec<&'a FlatSpan>>;

fn tree(spans: &[FlatSpan]) -> Tree<'_> {
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: Tree<'_> = HashMap::new();
    for s in spans.iter().filter(|s| !s.name.starts_with("kernel.")) {
        let parent = Some(s.parent_span_id.as_str()).filter(|p| ids.contains(p) && *p != s.span_id);
        children.entry(parent).or_default().push(s);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| (s.start_unix_nanos, std::cmp::Reverse(s.end_unix_nanos)));
    }
    children
}

/// The stacks `span` and the spans under it in its process blocked in, longest first:
/// (blocked ns, stack line).
pub fn blocked_stacks(spans: &[FlatSpan], span: &FlatSpan) -> Vec<(u64, String)> {
    stacks_under(&tree(spans), span, |s| blocked_events(s).collect())
}

/// The stacks `span`, the spans under it in its process and what they started were sampled in
/// on a CPU, most first: (samples, stack line).
pub fn sampled_stacks(spans: &[FlatSpan], span: &FlatSpan) -> Vec<(u64, String)> {
    stacks_under(&tree(spans), span, |s| sampled_events(s).collect())
}

/// The stack lines of `span` and the spans under it in its process, summed over what `of`
/// gives each, largest first.
fn stacks_under<'a>(
    tree: &Tree<'a>,
    span: &'a FlatSpan,
    of: impl Fn(&'a FlatSpan) -> Vec<(&'a str, u64)>,
) -> Vec<(u64, String)> {
    let pid = |s: &FlatSpan| s.attr("process.pid").map(str::to_string);
    let mut sums: HashMap<&str, u64> = HashMap::new();
    let mut stack = vec![span];
    while let Some(s) = stack.pop() {
        for (line, ns) in of(s) {
            *sums.entry(line).or_default() += ns;
        }
        for k in tree.get(&Some(s.span_id.as_str())).into_iter().flatten() {
            // the same process: a child span without a pid of its own is its parent's
            if k.service == span.service && pid(k).is_none_or(|p| Some(p) == pid(span)) {
                stack.push(k);
            }
        }
    }
    let mut out: Vec<(u64, String)> = sums.into_iter().map(|(l, ns)| (ns, l.to_string())).collect();
    out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    out
}

fn ms(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{}%", (part as f64 * 100.0 / whole as f64).round() as u64)
}

/// The `--why` report of one trace, in the tree's order: every span the probes split (the
/// shim's, the runtime's, init's: the processes of one container) and every span of the critical
/// path (`█`), each with its top blocking stacks; spans of processes the probes do not follow
/// (the CLI, engined, lifecycled: they serve every container) show their duration alone.
pub fn render(spans: &[FlatSpan]) -> String {
    let critical = crate::analysis::critical_path(spans);
    let children = tree(spans);
    let mut rows: Vec<&FlatSpan> = Vec::new();
    let mut stack: Vec<&FlatSpan> = children.get(&None).into_iter().flatten().rev().copied().collect();
    while let Some(s) = stack.pop() {
        if critical.contains(&s.span_id) || cpu_split(s).is_some() {
            rows.push(s);
        }
        stack.extend(children.get(&Some(s.span_id.as_str())).into_iter().flatten().rev());
    }
    let mut out = String::new();
    if rows.is_empty() {
        return out;
    }
    let name_w = rows.iter().map(|s| s.name.chars().count()).max().unwrap_or(4).max(4);
    let _ = writeln!(
        out,
        "  {:name_w$}  {:>10}  {:>16}  {:>16}  {:>16}",
        "SPAN", "ms", "on-CPU ms", "blocked ms", "runqueue ms"
    );
    let mut followed = false;
    for s in rows {
        let d = s.duration_nanos();
        let mark = if critical.contains(&s.span_id) { "█" } else { " " };
        match cpu_split(s) {
            Some(c) => {
                followed = true;
                let col = |v: u64| format!("{} {:>4}", ms(v), share(v, d));
                let _ = writeln!(
                    out,
                    "{mark} {:name_w$}  {:>10}  {:>16}  {:>16}  {:>16}",
                    s.name,
                    ms(d),
                    col(c.on),
                    col(c.off),
                    col(c.runq)
                );
                for (ns, line) in stacks_under(&children, s, |s| blocked_events(s).collect()).into_iter().take(STACKS) {
                    let _ = writeln!(out, "  {:name_w$}    blocked {} ms in {line}", "", ms(ns));
                }
                let sampled = stacks_under(&children, s, |s| sampled_events(s).collect());
                for (n, line) in sampled.into_iter().take(STACKS) {
                    let _ = writeln!(out, "  {:name_w$}    on-CPU  {n} samples in {line}", "");
                }
            }
            None => {
                let _ = writeln!(out, "{mark} {:name_w$}  {:>10}  {:>16}", s.name, ms(d), "-");
            }
        }
    }
    if !followed {
        out.push_str("(no span of this trace has the probes' CPU split: are the eBPF probes running? `engine info`)\n");
    }
    out
}

/// The trace's time as folded stacks (`frame;frame;… weight`, Brendan Gregg's format, weights
/// in microseconds) for a flame graph: the spans the probes split, each under its ancestors,
/// with its own (children's taken out) time on a CPU (`[on-CPU]_[i]`), waiting for one
/// (`[runqueue]`) and blocked (`[blocked]`, followed by the kernel stack where one was named,
/// outermost first, kernel frames marked `_[k]`).
pub fn folded(spans: &[FlatSpan]) -> Vec<String> {
    let by_id: HashMap<&str, &FlatSpan> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let children = tree(spans);
    let frame = |name: &str| name.replace([';', ' '], "_");
    let mut out = Vec::new();
    for s in spans {
        let Some(split) = cpu_split(s) else { continue };
        let mut chain = vec![frame(&s.name)];
        let mut cur = s;
        for _ in 0..64 {
            match by_id.get(cur.parent_span_id.as_str()) {
                Some(p) if p.span_id != cur.span_id => {
                    chain.push(frame(&p.name));
                    cur = p;
                }
                _ => break,
            }
        }
        chain.reverse();
        let chain = chain.join(";");
        // the children the probes split are this span's process's (its sums include theirs)
        let mut own = split;
        for k in children.get(&Some(s.span_id.as_str())).into_iter().flatten() {
            if let Some(c) = cpu_split(k).filter(|_| k.service == s.service) {
                own.on = own.on.saturating_sub(c.on);
                own.off = own.off.saturating_sub(c.off);
                own.runq = own.runq.saturating_sub(c.runq);
            }
        }
        let us = |ns: u64| ns / 1000;
        let mut named = 0;
        for (line, ns) in blocked_events(s) {
            named += ns;
            let mut frames: Vec<String> =
                line.split(" ← ").filter(|f| *f != "…").map(|f| format!("{}_[k]", frame(f))).collect();
            frames.reverse();
            if us(ns) > 0 {
                out.push(format!("{chain};[blocked];{} {}", frames.join(";"), us(ns)));
            }
        }
        for (part, ns) in
            [("[on-CPU]_[i]", own.on), ("[runqueue]", own.runq), ("[blocked]", own.off.saturating_sub(named))]
        {
            if us(ns) > 0 {
                out.push(format!("{chain};{part} {}", us(ns)));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(mut s: FlatSpan, attrs: &[(&str, &str)]) -> FlatSpan {
        s.attributes = attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        s
    }

    fn blocked(s: &mut FlatSpan, ns: u64, stack: &str) {
        s.events.push((
            s.start_unix_nanos,
            KERNEL_BLOCKED.into(),
            vec![(ATTR_KERNEL_STACK.into(), stack.into()), (ATTR_CPU_OFF_NS.into(), ns.to_string())],
        ));
    }

    #[test]
    fn the_critical_path_shows_its_split_and_where_it_blocked() {
        let root = FlatSpan::for_test("a", "", "engine.run", 0, 20_000_000);
        let cpu = [(ATTR_CPU_ON_NS, "2000000"), (ATTR_CPU_OFF_NS, "15000000"), (ATTR_CPU_RUNQ_NS, "1000000")];
        let mut create = with(FlatSpan::for_test("b", "a", "runtime.create", 1_000_000, 19_000_000), &cpu);
        create.attributes.push(("process.pid".into(), "10".into()));
        let mut attach = with(
            FlatSpan::for_test("c", "b", "runtime.cgroup.attach", 2_000_000, 12_000_000),
            &[(ATTR_CPU_ON_NS, "100000"), (ATTR_CPU_OFF_NS, "9900000"), (ATTR_CPU_RUNQ_NS, "0")],
        );
        blocked(&mut attach, 9_400_000, "__wait_rcu_gp ← synchronize_rcu ← cgroup_attach_task");
        blocked(&mut create, 3_000_000, "do_wait ← kernel_wait4");
        create.events.push((
            create.start_unix_nanos,
            KERNEL_ON_CPU.into(),
            vec![(ATTR_KERNEL_STACK.into(), "[user] sh".into()), (ATTR_PERF_SAMPLES.into(), "7".into())],
        ));
        let spans = vec![root, create, attach];
        let out = render(&spans);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("  SPAN"), "{out}");
        assert!(lines[1].starts_with("█ engine.run") && lines[1].trim_end().ends_with('-'), "{out}");
        assert!(lines[2].starts_with("█ runtime.create") && lines[2].contains("15.000  83%"), "{out}");
        // the parent names its children's stacks too, longest first
        assert!(lines[3].contains("blocked 9.400 ms in __wait_rcu_gp ← synchronize_rcu"), "{out}");
        assert!(lines[4].contains("blocked 3.000 ms in do_wait"), "{out}");
        // and where it, or what it started, ran when sampled
        assert!(lines[5].contains("on-CPU  7 samples in [user] sh"), "{out}");
        assert!(lines[6].starts_with("█ runtime.cgroup.attach") && lines[6].contains("9.900  99%"), "{out}");
        assert_eq!(sampled_stacks(&spans, &spans[1]), [(7, "[user] sh".to_string())]);
        assert_eq!(blocked_stacks(&spans, &spans[2]).len(), 1);
    }

    #[test]
    fn folded_stacks_give_each_span_its_own_time_under_its_ancestors() {
        let root = FlatSpan::for_test("a", "", "engine.run", 0, 20_000_000);
        let mut create = with(
            FlatSpan::for_test("b", "a", "runtime.create", 1_000_000, 19_000_000),
            &[(ATTR_CPU_ON_NS, "2000000"), (ATTR_CPU_OFF_NS, "15000000"), (ATTR_CPU_RUNQ_NS, "1000000")],
        );
        create.service = "engine-runtime".into();
        let mut attach = with(
            FlatSpan::for_test("c", "b", "runtime.cgroup.attach", 2_000_000, 12_000_000),
            &[(ATTR_CPU_ON_NS, "100000"), (ATTR_CPU_OFF_NS, "9900000"), (ATTR_CPU_RUNQ_NS, "0")],
        );
        attach.service = "engine-runtime".into();
        blocked(&mut attach, 9_400_000, "synchronize_rcu_normal ← rcu_sync_enter ← …");
        let lines = folded(&[root, create, attach]);
        assert_eq!(
            lines,
            [
                "engine.run;runtime.create;[blocked] 5100",
                "engine.run;runtime.create;[on-CPU]_[i] 1900",
                "engine.run;runtime.create;[runqueue] 1000",
                "engine.run;runtime.create;runtime.cgroup.attach;[blocked] 500",
                "engine.run;runtime.create;runtime.cgroup.attach;[blocked];rcu_sync_enter_[k];synchronize_rcu_normal_[k] 9400",
                "engine.run;runtime.create;runtime.cgroup.attach;[on-CPU]_[i] 100",
            ]
        );
    }

    #[test]
    fn a_trace_without_the_probes_says_so() {
        let spans = vec![FlatSpan::for_test("a", "", "engine.run", 0, 1_000_000)];
        assert!(render(&spans).contains("are the eBPF probes running?"));
    }
}
