//! A trace as a waterfall in the terminal: the span tree with start offsets, durations and bars,
//! the critical path drawn solid and the rest shaded.

use std::collections::HashMap;
use std::fmt::Write;

use crate::handoff::FlatSpan;

/// Options for [`render`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Width of the bar column in characters.
    pub bar_width: usize,
    /// Print each span's attributes under it.
    pub attributes: bool,
    /// Show the kernel's rows: `kernel.*` spans and the span events the probes added.
    pub kernel: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { bar_width: 40, attributes: false, kernel: true }
    }
}

/// The one attribute that says most about a kernel row.
fn kernel_detail(attrs: &[(String, String)]) -> String {
    for key in [
        "linux.namespaces",
        "mount.target",
        "pivot_root.new_root",
        "process.executable.path",
        "linux.cgroup.path",
        "process.child.pid",
    ] {
        if let Some((_, v)) = attrs.iter().find(|(k, _)| k == key).filter(|(_, v)| !v.is_empty()) {
            // long paths keep their end, which names the thing
            let n = v.chars().count();
            return if n > 48 && v.contains('/') {
                format!(" …{}", v.chars().skip(n - 47).collect::<String>())
            } else {
                format!(" {v}")
            };
        }
    }
    String::new()
}

fn ms(nanos: u64) -> String {
    format!("{:.3}", nanos as f64 / 1e6)
}

/// Renders the spans of one trace as a tree. Spans whose parent is not among `spans` are roots.
pub fn render(spans: &[FlatSpan], opts: &Options) -> String {
    let kept: Vec<FlatSpan>;
    let spans = if opts.kernel {
        spans
    } else {
        kept = spans
            .iter()
            .filter(|s| !s.name.starts_with("kernel."))
            .cloned()
            .map(|mut s| {
                s.events.clear();
                s
            })
            .collect();
        &kept
    };
    let mut out = String::new();
    if spans.is_empty() {
        return out;
    }
    let ids: HashMap<&str, usize> = spans.iter().enumerate().map(|(i, s)| (s.span_id.as_str(), i)).collect();
    let mut children: HashMap<Option<usize>, Vec<usize>> = HashMap::new();
    for (i, s) in spans.iter().enumerate() {
        let parent = ids.get(s.parent_span_id.as_str()).copied().filter(|&p| p != i);
        children.entry(parent).or_default().push(i);
    }
    for list in children.values_mut() {
        list.sort_by_key(|&i| (spans[i].start_unix_nanos, spans[i].end_unix_nanos));
    }
    let t0 = spans.iter().map(|s| s.start_unix_nanos).min().unwrap_or(0);
    let t1 = spans.iter().map(|s| s.end_unix_nanos).max().unwrap_or(t0).max(t0 + 1);
    let total = (t1 - t0) as f64;
    let critical = crate::analysis::critical_path(spans);

    // rows: (label, span index, event index within the span for a point event)
    let mut rows: Vec<(String, usize, Option<usize>)> = Vec::new();
    fn walk(
        node: Option<usize>,
        prefix: &str,
        children: &HashMap<Option<usize>, Vec<usize>>,
        spans: &[FlatSpan],
        rows: &mut Vec<(String, usize, Option<usize>)>,
    ) {
        let Some(kids) = children.get(&node) else { return };
        for (n, &k) in kids.iter().enumerate() {
            let last = n + 1 == kids.len();
            let (branch, cont) = match node {
                None => ("", ""),
                Some(_) if last => ("└─ ", "   "),
                Some(_) => ("├─ ", "│  "),
            };
            let detail =
                if spans[k].name.starts_with("kernel.") { kernel_detail(&spans[k].attributes) } else { String::new() };
            rows.push((format!("{prefix}{branch}{}{detail}", spans[k].name), k, None));
            for (n, (_, name, attrs)) in spans[k].events.iter().enumerate() {
                rows.push((format!("{prefix}{cont}· {name}{}", kernel_detail(attrs)), k, Some(n)));
            }
            walk(Some(k), &format!("{prefix}{cont}"), children, spans, rows);
        }
    }
    walk(None, "", &children, spans, &mut rows);

    let label_width = rows.iter().map(|(l, ..)| l.chars().count()).max().unwrap_or(0).max(4);
    let service_width = spans.iter().map(|s| s.service.len()).max().unwrap_or(0).max(7);
    let _ = writeln!(
        out,
        "trace {}  total {} ms  spans {}  (█ critical path)",
        spans[0].trace_id,
        ms(t1 - t0),
        spans.len()
    );
    let _ = writeln!(
        out,
        "{:label_width$}  {:service_width$}  {:>10}  {:>10}  timeline",
        "span", "service", "start ms", "dur ms"
    );
    for (label, i, event) in &rows {
        let s = &spans[*i];
        if let Some(n) = event {
            let at = s.events[*n].0.saturating_sub(t0);
            let col =
                (((at as f64 / total) * opts.bar_width as f64).floor() as usize).min(opts.bar_width.saturating_sub(1));
            let bar: String = " ".repeat(col) + "◆" + &" ".repeat(opts.bar_width - col - 1);
            let pad = label_width - label.chars().count();
            let _ =
                writeln!(out, "{label}{:pad$}  {:service_width$}  {:>10}  {:>10}  |{bar}|", "", "kernel", ms(at), "");
            continue;
        }
        let start = s.start_unix_nanos.saturating_sub(t0);
        let from = ((start as f64 / total) * opts.bar_width as f64).floor() as usize;
        let len = ((s.duration_nanos() as f64 / total) * opts.bar_width as f64).ceil().max(1.0) as usize;
        let from = from.min(opts.bar_width.saturating_sub(1));
        let len = len.min(opts.bar_width - from);
        let glyph = if critical.contains(&s.span_id) { "█" } else { "░" };
        let bar: String = " ".repeat(from) + &glyph.repeat(len) + &" ".repeat(opts.bar_width - from - len);
        let pad = label_width - label.chars().count();
        let mark = if s.error.is_some() { " ✗" } else { "" };
        let _ = writeln!(
            out,
            "{label}{:pad$}  {:service_width$}  {:>10}  {:>10}  |{bar}|{mark}",
            "",
            s.service,
            ms(start),
            ms(s.duration_nanos()),
        );
        if opts.attributes {
            for (k, v) in &s.attributes {
                let _ = writeln!(out, "{:label_width$}      {k}={v}", "");
            }
            if let Some(e) = &s.error {
                let _ = writeln!(out, "{:label_width$}      error={e}", "");
            }
        }
    }
    // time of a root no span under it explains, when it is more than a twentieth of it
    for &r in children.get(&None).into_iter().flatten() {
        let kids: Vec<&FlatSpan> = children.get(&Some(r)).into_iter().flatten().map(|&k| &spans[k]).collect();
        let gap = unexplained(&spans[r], &kids);
        if !kids.is_empty() && gap * 20 > spans[r].duration_nanos() {
            let share = gap as f64 * 100.0 / spans[r].duration_nanos().max(1) as f64;
            let _ = writeln!(out, "{}: {} ms ({share:.0}%) with no span under it", spans[r].name, ms(gap));
        }
    }
    out
}

/// How much of `root`'s time none of its `children` covers.
fn unexplained(root: &FlatSpan, children: &[&FlatSpan]) -> u64 {
    let mut spans: Vec<(u64, u64)> = children
        .iter()
        .map(|c| (c.start_unix_nanos.max(root.start_unix_nanos), c.end_unix_nanos.min(root.end_unix_nanos)))
        .filter(|(a, b)| a < b)
        .collect();
    spans.sort_unstable();
    let (mut covered, mut reach) = (0, root.start_unix_nanos);
    for (a, b) in spans {
        let a = a.max(reach);
        if b > a {
            covered += b - a;
            reach = b;
        }
    }
    root.duration_nanos().saturating_sub(covered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: &str, name: &str, start: u64, end: u64) -> FlatSpan {
        FlatSpan::for_test(id, parent, name, start, end)
    }

    #[test]
    fn renders_tree_in_start_order() {
        let spans = vec![
            span("b", "a", "runtime.rootfs", 2_000_000, 5_000_000),
            span("a", "", "runtime.create", 1_000_000, 9_000_000),
            span("c", "a", "runtime.cgroup", 1_500_000, 2_000_000),
        ];
        let text = render(&spans, &Options::default());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[2].starts_with("runtime.create"), "{text}");
        assert!(lines[3].starts_with("├─ runtime.cgroup"), "{text}");
        assert!(lines[4].starts_with("└─ runtime.rootfs"), "{text}");
        assert!(lines[2].contains("8.000"), "{text}");
        assert!(lines[5].starts_with("runtime.create: 4.500 ms (56%) with no span under it"), "{text}");
    }

    #[test]
    fn says_how_much_of_a_root_no_span_explains() {
        let spans = vec![
            span("a", "", "engine.run", 0, 100_000_000),
            span("b", "a", "POST /containers/create", 1_000_000, 20_000_000),
            span("c", "a", "POST /containers/{id}/start", 10_000_000, 40_000_000),
        ];
        let text = render(&spans, &Options::default());
        assert!(text.contains("engine.run: 61.000 ms (61%) with no span under it"), "{text}");
        let whole = vec![span("a", "", "engine.run", 0, 100_000_000), span("b", "a", "POST /x", 1_000_000, 99_000_000)];
        assert!(!render(&whole, &Options::default()).contains("no span under it"));
    }
}
