//! A trace as a waterfall in the terminal: the span tree with start offsets, durations and bars,
//! the critical path drawn solid and the rest shaded.

use std::collections::HashMap;
use std::fmt::Write;

use crate::handoff::FlatSpan;
use crate::names;

/// Options for [`render`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Width of the bar column in characters (at most: a `width` may narrow it).
    pub bar_width: usize,
    /// Print each span's attributes under it.
    pub attributes: bool,
    /// Show the kernel's rows: `kernel.*` spans and the span events the probes added.
    pub kernel: bool,
    /// Fold runs of three or more alike kernel rows under one span into one row with their
    /// count and total (`kernel.mount ×40`); off shows each.
    pub fold: bool,
    /// The terminal's width: names, columns and bars are fitted to it.
    pub width: Option<usize>,
    /// Colour the bars and failures (ANSI), for a terminal.
    pub colour: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { bar_width: 40, attributes: false, kernel: true, fold: true, width: None, colour: false }
    }
}

/// Runs shorter than this are shown row by row even when folding.
const FOLD_AT: usize = 3;

/// The one attribute that says most about a kernel row.
fn kernel_detail(attrs: &[(String, String)]) -> String {
    // where a span blocked: how long, and the stack's innermost functions (its start names it)
    let cut = |stack: &str| {
        if stack.chars().count() > 72 {
            format!("{}…", stack.chars().take(71).collect::<String>())
        } else {
            stack.to_string()
        }
    };
    if let Some((stack, ns)) = crate::why::blocked_in(attrs) {
        return format!(" {} ms in {}", ms(ns), cut(stack));
    }
    // where a span (or what it started) ran when sampled: how often, and the stack
    if let Some((stack, n)) = crate::why::sampled_in(attrs) {
        return format!(" {n} samples in {}", cut(stack));
    }
    for key in [
        "linux.namespaces",
        "mount.target",
        "pivot_root.new_root",
        "process.executable.path",
        "linux.cgroup.path",
        "process.child.pid",
    ] {
        if let Some((_, v)) = attrs.iter().find(|(k, _)| k == key).filter(|(_, v)| !v.is_empty()) {
            let v = readable_path(v);
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

/// A path as a person reads it: a mount under a container's root filesystem relative to it
/// (`/sys/fs/cgroup/memory`, `rootfs` for the root itself), and container ids cut to 12
/// characters, as `engine ps` shows them.
fn readable_path(v: &str) -> String {
    let v = match v.split_once("/rootfs") {
        Some((_, "")) => return "rootfs".into(),
        Some((_, rest)) if rest.starts_with('/') => rest,
        _ => v,
    };
    v.split('/')
        .map(|c| {
            let id = c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit());
            if id {
                &c[..12]
            } else {
                c
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// One row of the waterfall.
enum Row {
    /// A span.
    Span(usize),
    /// A point event of a span (its index in the span's events).
    Event(usize, usize),
    /// A run of alike kernel spans under one parent, shown as one.
    Spans(Vec<usize>),
    /// A run of alike events of one span.
    Events(usize, Vec<usize>),
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

    // rows, each with its label
    let mut rows: Vec<(String, Row)> = Vec::new();
    fn walk(
        node: Option<usize>,
        prefix: &str,
        children: &HashMap<Option<usize>, Vec<usize>>,
        spans: &[FlatSpan],
        fold: bool,
        compact: bool,
        rows: &mut Vec<(String, Row)>,
    ) {
        let Some(kids) = children.get(&node) else { return };
        // a kernel span with nothing under it may fold with the alike ones after it
        let leaf = |k: usize| {
            spans[k].name.starts_with("kernel.") && spans[k].events.is_empty() && !children.contains_key(&Some(k))
        };
        let mut n = 0;
        while n < kids.len() {
            let k = kids[n];
            let alike = if fold && leaf(k) {
                kids[n..].iter().take_while(|&&o| leaf(o) && spans[o].name == spans[k].name).count()
            } else {
                1
            };
            let run = if alike >= FOLD_AT { alike } else { 1 };
            let last = n + run == kids.len();
            let (branch, cont) = match node {
                None => ("", ""),
                Some(_) if compact && last => ("└ ", "  "),
                Some(_) if compact => ("├ ", "│ "),
                Some(_) if last => ("└─ ", "   "),
                Some(_) => ("├─ ", "│  "),
            };
            if run >= FOLD_AT {
                let label = format!("{prefix}{branch}{} ×{run}", spans[k].name);
                rows.push((label, Row::Spans(kids[n..n + run].to_vec())));
                n += run;
                continue;
            }
            let detail =
                if spans[k].name.starts_with("kernel.") { kernel_detail(&spans[k].attributes) } else { String::new() };
            rows.push((format!("{prefix}{branch}{}{detail}", spans[k].name), Row::Span(k)));
            let events = &spans[k].events;
            let mut e = 0;
            while e < events.len() {
                let same = events[e..].iter().take_while(|o| o.1 == events[e].1).count();
                // the stacks a span blocked or ran in are summaries already (three at most)
                let summary = matches!(events[e].1.as_str(), names::KERNEL_BLOCKED | names::KERNEL_ON_CPU);
                if fold && same >= FOLD_AT && !summary {
                    rows.push((
                        format!("{prefix}{cont}· {} ×{same}", events[e].1),
                        Row::Events(k, (e..e + same).collect()),
                    ));
                    e += same;
                } else {
                    rows.push((
                        format!("{prefix}{cont}· {}{}", events[e].1, kernel_detail(&events[e].2)),
                        Row::Event(k, e),
                    ));
                    e += 1;
                }
            }
            walk(Some(k), &format!("{prefix}{cont}"), children, spans, fold, compact, rows);
            n += run;
        }
    }
    // a narrow terminal: two columns per level, shorter services and numbers
    let compact = opts.width.is_some_and(|w| w < 120);
    walk(None, "", &children, spans, opts.fold, compact, &mut rows);
    let service = |s: &str| -> String {
        if compact {
            s.strip_prefix("engine-").unwrap_or(s).to_string()
        } else {
            s.to_string()
        }
    };
    let nw = if compact { 8 } else { 10 };

    let mut label_width = rows.iter().map(|(l, _)| l.chars().count()).max().unwrap_or(0).max(4);
    let service_width = spans.iter().map(|s| service(&s.service).len()).max().unwrap_or(0).max(7);
    let mut bar_width = opts.bar_width.max(1);
    if let Some(width) = opts.width {
        // the columns but the label and the bar: two spaces, service, two, 10, two, 10, two, |, |, mark
        let fixed = service_width + 2 * nw + 10;
        // the bar gives way first (to 10), then long labels are cut
        bar_width = bar_width.min(width.saturating_sub(fixed + label_width).max(10));
        label_width = label_width.min(width.saturating_sub(fixed + bar_width).max(16));
    }
    let fit = |label: &str| -> String {
        if label.chars().count() <= label_width {
            return label.to_string();
        }
        let mut cut: String = label.chars().take(label_width.saturating_sub(1)).collect();
        cut.push('…');
        cut
    };
    let (solid, shaded, red, reset) =
        if opts.colour { ("\x1b[36m", "\x1b[2m", "\x1b[31m", "\x1b[0m") } else { ("", "", "", "") };
    let column = |at: u64| -> usize {
        (((at as f64 / total) * bar_width as f64).floor() as usize).min(bar_width.saturating_sub(1))
    };
    let bar = |from: u64, dur: u64, critical: bool| -> String {
        let from_col = column(from);
        let len = ((dur as f64 / total) * bar_width as f64).ceil().max(1.0) as usize;
        let len = len.min(bar_width - from_col);
        let (glyph, paint) = if critical { ("█", solid) } else { ("░", shaded) };
        format!("{}{paint}{}{reset}{}", " ".repeat(from_col), glyph.repeat(len), " ".repeat(bar_width - from_col - len))
    };
    let marks = |ats: &[u64]| -> String {
        let mut cols = vec![' '; bar_width];
        for &at in ats {
            cols[column(at)] = '◆';
        }
        cols.into_iter().collect()
    };
    let _ = writeln!(
        out,
        "trace {}  total {} ms  spans {}  (█ critical path)",
        spans[0].trace_id,
        ms(t1 - t0),
        spans.len()
    );
    let _ = writeln!(
        out,
        "{:label_width$}  {:service_width$}  {:>nw$}  {:>nw$}  timeline",
        "span", "service", "start ms", "dur ms"
    );
    for (label, row) in &rows {
        let label = fit(label);
        let pad = label_width - label.chars().count();
        match row {
            Row::Event(i, n) => {
                let at = spans[*i].events[*n].0.saturating_sub(t0);
                let bar = marks(&[at]);
                let _ = writeln!(
                    out,
                    "{label}{:pad$}  {:service_width$}  {:>nw$}  {:>nw$}  |{bar}|",
                    "",
                    "kernel",
                    ms(at),
                    ""
                );
            }
            Row::Events(i, ns) => {
                let ats: Vec<u64> = ns.iter().map(|&n| spans[*i].events[n].0.saturating_sub(t0)).collect();
                let first = ats.iter().copied().min().unwrap_or(0);
                let bar = marks(&ats);
                let _ = writeln!(
                    out,
                    "{label}{:pad$}  {:service_width$}  {:>nw$}  {:>nw$}  |{bar}|",
                    "",
                    "kernel",
                    ms(first),
                    ""
                );
            }
            Row::Spans(run) => {
                let start = run.iter().map(|&k| spans[k].start_unix_nanos).min().unwrap_or(t0);
                let end = run.iter().map(|&k| spans[k].end_unix_nanos).max().unwrap_or(start);
                // the time they took together (they may overlap, or leave gaps between them)
                let sum: u64 = run.iter().map(|&k| spans[k].duration_nanos()).sum();
                let critical = run.iter().any(|&k| critical.contains(&spans[k].span_id));
                let failed = run.iter().filter(|&&k| spans[k].error.is_some()).count();
                let bar = bar(start.saturating_sub(t0), end.saturating_sub(start), critical);
                let mark = if failed > 0 { format!(" {red}✗ {failed}{reset}") } else { String::new() };
                let _ = writeln!(
                    out,
                    "{label}{:pad$}  {:service_width$}  {:>nw$}  {:>nw$}  |{bar}|{mark}",
                    "",
                    service(&spans[run[0]].service),
                    ms(start.saturating_sub(t0)),
                    ms(sum),
                );
            }
            Row::Span(i) => {
                let s = &spans[*i];
                let start = s.start_unix_nanos.saturating_sub(t0);
                let bar = bar(start, s.duration_nanos(), critical.contains(&s.span_id));
                let mark = if s.error.is_some() { format!(" {red}✗{reset}") } else { String::new() };
                let _ = writeln!(
                    out,
                    "{label}{:pad$}  {:service_width$}  {:>nw$}  {:>nw$}  |{bar}|{mark}",
                    "",
                    service(&s.service),
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

    fn with_attr(mut s: FlatSpan, k: &str, v: &str) -> FlatSpan {
        s.attributes.push((k.into(), v.into()));
        s
    }

    #[test]
    fn alike_kernel_rows_fold_into_one_with_their_count_and_total() {
        let id = "7645c389756db7491fe436e5205df29aee11cb4f2921ef4aaaaaaaaaaaaaaaaa";
        let root = format!("/var/lib/engine/image/snapshots/{id}/rootfs");
        let mut spans = vec![span("r", "", "runtime.rootfs", 0, 10_000_000)];
        for (n, target) in ["", "/proc", "/sys/fs/cgroup/memory", "/dev"].iter().enumerate() {
            let at = 1_000_000 + n as u64 * 1_000_000;
            let m = span(&format!("m{n}"), "r", "kernel.mount", at, at + 250_000);
            spans.push(with_attr(m, "mount.target", &format!("{root}{target}")));
        }
        let mut parent = span("p", "r", "runtime.cgroup", 6_000_000, 7_000_000);
        for n in 0..5 {
            let attrs = vec![("linux.cgroup.path".to_string(), format!("/engine/{id}"))];
            parent.events.push((6_000_000 + n * 100_000, "kernel.cgroup_mkdir".into(), attrs));
        }
        spans.push(parent);
        let folded = render(&spans, &Options::default());
        assert!(folded.contains("├─ kernel.mount ×4"), "{folded}");
        let row = folded.lines().find(|l| l.contains("kernel.mount ×4")).unwrap();
        assert!(row.contains(" 1.000 ") && row.contains(" 1.000  |"), "from the first, their total: {row}");
        assert!(folded.contains("· kernel.cgroup_mkdir ×5"), "{folded}");
        assert_eq!(folded.lines().filter(|l| l.contains(" |")).count(), 4, "four rows: {folded}");
        // -v: each row, mount targets relative to the rootfs, ids cut to 12
        let each = render(&spans, &Options { fold: false, ..Default::default() });
        for want in [" rootfs", " /proc", " /sys/fs/cgroup/memory", " /dev", "kernel.cgroup_mkdir /engine/7645c389756d"]
        {
            assert!(each.contains(want), "no {want:?} in\n{each}");
        }
        assert!(!each.contains(id), "{each}");
    }

    #[test]
    fn a_narrow_terminal_gets_every_line_within_its_width() {
        let spans = vec![
            span("a", "", "engine.run", 0, 100_000_000),
            span("b", "a", "POST /containers/{id}/start", 1_000_000, 60_000_000),
            span("c", "b", "daemon.start", 1_000_000, 60_000_000),
            span("d", "c", "lifecycle.Tasks/Create", 2_000_000, 50_000_000),
            span("e", "d", "shim.create", 3_000_000, 49_000_000),
            span("f", "e", "runtime.create", 4_000_000, 48_000_000),
            span("g", "f", "runtime.namespaces", 5_000_000, 20_000_000),
            span("h", "g", "runtime.cgroup.attach", 6_000_000, 19_000_000),
        ];
        for width in [80, 100, 160] {
            let text = render(&spans, &Options { width: Some(width), ..Default::default() });
            for line in text.lines().skip(1) {
                assert!(line.chars().count() <= width, "{width}: {line:?} is {} wide", line.chars().count());
            }
            assert!(text.contains("runtime.cgroup.attach"), "the deepest name is whole at {width}:\n{text}");
        }
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
