//! The files `engine trace` writes of one trace: a flame graph (`--flame`, SVG drawn by inferno),
//! a pprof profile (`--pprof`, see [`crate::pprof`]) and one self-contained HTML page
//! (`--html`: the waterfall with its kernel rows, where the time went, the flame graph, and the
//! spans as JSON for scripts). All of them start from the spans; none asks the daemon anything.

use anyhow::{bail, Context, Result};
use engine_telemetry::{waterfall, FlatSpan};

const NO_SPLIT: &str = "no span of this trace has the probes' CPU split (are the eBPF probes running? `engine info`)";

fn trace_id(spans: &[FlatSpan]) -> &str {
    spans.first().map(|s| s.trace_id.as_str()).unwrap_or_default()
}

/// The flame graph of the spans' time (on-CPU, runqueue, blocked with its kernel stacks).
pub fn flame_svg(spans: &[FlatSpan]) -> Result<Vec<u8>> {
    let lines = engine_telemetry::why::folded(spans);
    if lines.is_empty() {
        bail!("{NO_SPLIT}");
    }
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = format!("trace {}: where the time went", trace_id(spans));
    opts.subtitle = Some("spans (green), on-CPU (aqua), blocked and runqueue (red), kernel stacks (orange)".into());
    opts.count_name = "µs".into();
    opts.colors = inferno::flamegraph::Palette::Multi(inferno::flamegraph::color::MultiPalette::Java);
    opts.deterministic = true;
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut svg)
        .context("drawing the flame graph")?;
    Ok(svg)
}

/// The pprof profile of the same, gzipped.
pub fn pprof_gz(spans: &[FlatSpan]) -> Result<Vec<u8>> {
    let lines = engine_telemetry::why::folded(spans);
    if lines.is_empty() {
        bail!("{NO_SPLIT}");
    }
    let start = spans.iter().map(|s| s.start_unix_nanos).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_unix_nanos).max().unwrap_or(start);
    let profile = crate::pprof::profile(&lines, trace_id(spans), start, end.saturating_sub(start));
    crate::pprof::encode_gzip(&profile).context("compressing the profile")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The spans as JSON, for the page's scripts and whoever reads it (`</` kept out of the text,
/// so it cannot end its `<script>` element).
fn spans_json(spans: &[FlatSpan]) -> String {
    let kv = |a: &[(String, String)]| -> serde_json::Map<String, serde_json::Value> {
        a.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect()
    };
    let list: Vec<serde_json::Value> = spans
        .iter()
        .map(|s| {
            serde_json::json!({
                "traceId": s.trace_id,
                "spanId": s.span_id,
                "parentSpanId": s.parent_span_id,
                "name": s.name,
                "service": s.service,
                "startUnixNanos": s.start_unix_nanos,
                "endUnixNanos": s.end_unix_nanos,
                "attributes": kv(&s.attributes),
                "error": s.error,
                "events": s.events.iter().map(|(t, n, a)| serde_json::json!({"timeUnixNanos": t, "name": n, "attributes": kv(a)})).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string().replace("</", "<\\/")
}

/// One HTML page of the trace, with nothing to fetch.
pub fn html_page(spans: &[FlatSpan]) -> Result<Vec<u8>> {
    if spans.is_empty() {
        bail!("the trace has no spans");
    }
    let id = trace_id(spans);
    let opts = waterfall::Options { width: Some(200), ..Default::default() };
    let rows = waterfall::render(spans, &opts);
    let why = engine_telemetry::why::render(spans);
    // the SVG goes inline: its XML declaration and doctype are the standalone file's
    let flame = match flame_svg(spans) {
        Ok(svg) => {
            let svg = String::from_utf8_lossy(&svg).into_owned();
            match svg.find("<svg") {
                Some(at) => svg[at..].to_string(),
                None => svg,
            }
        }
        Err(e) => format!("<p>{}</p>", escape(&e.to_string())),
    };
    let start = spans.iter().map(|s| s.start_unix_nanos).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_unix_nanos).max().unwrap_or(start);
    let mut services: Vec<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    services.sort_unstable();
    services.dedup();
    let page = format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>engine trace {id}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
pre {{ font: 12px/1.35 monospace; overflow-x: auto; background: #f7f7f7; padding: .8em; }}
h2 {{ margin-top: 1.6em; }}
#flame svg {{ width: 100%; height: auto; }}
</style>
</head>
<body>
<h1>engine trace <code>{id}</code></h1>
<p id="summary">{n} spans from {services}, {ms:.3} ms.</p>
<h2>Waterfall</h2>
<pre id="waterfall">{rows}</pre>
<h2>Where the time went</h2>
<pre id="why">{why}</pre>
<h2>Flame graph</h2>
<div id="flame">{flame}</div>
<script type="application/json" id="spans">{json}</script>
<h2>Slowest spans</h2>
<ol id="slowest"></ol>
<script>
// the slowest spans, read from the page's own data (nanoseconds as numbers: exact to ~1 µs)
(function () {{
  var spans = JSON.parse(document.getElementById("spans").textContent);
  var took = function (s) {{ return s.endUnixNanos - s.startUnixNanos; }};
  spans.sort(function (a, b) {{ return took(b) - took(a); }});
  var list = document.getElementById("slowest");
  spans.slice(0, 10).forEach(function (s) {{
    var item = document.createElement("li");
    item.textContent = s.name + " (" + s.service + ") " + (took(s) / 1e6).toFixed(3) + " ms";
    list.appendChild(item);
  }});
}})();
</script>
</body>
</html>
"#,
        n = spans.len(),
        services = escape(&services.join(", ")),
        ms = end.saturating_sub(start) as f64 / 1e6,
        rows = escape(&rows),
        why = escape(&why),
        json = spans_json(spans),
    );
    Ok(page.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: &str, name: &str, start: u64, end: u64, attrs: &[(&str, &str)]) -> FlatSpan {
        FlatSpan {
            trace_id: "t1".into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            name: name.into(),
            service: "engine-runtime".into(),
            start_unix_nanos: start,
            end_unix_nanos: end,
            attributes: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            error: None,
            events: vec![],
        }
    }

    #[test]
    fn the_page_holds_the_waterfall_the_flame_graph_and_the_spans() {
        let spans = vec![
            span("a", "", "engine.run", 0, 10_000_000, &[]),
            span(
                "b",
                "a",
                "runtime.create",
                1_000_000,
                9_000_000,
                &[
                    ("engine.cpu.on_ns", "2000000"),
                    ("engine.cpu.off_ns", "6000000"),
                    ("engine.cpu.runq_ns", "0"),
                    ("x", "</script><b>"),
                ],
            ),
        ];
        let page = String::from_utf8(html_page(&spans).unwrap()).unwrap();
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<pre id=\"waterfall\">") && page.contains("runtime.create"));
        assert!(page.contains("<div id=\"flame\"><svg") && !page.contains("<?xml"));
        // the spans' JSON reads back, and no attribute can close its element
        let json = page.split("<script type=\"application/json\" id=\"spans\">").nth(1).unwrap();
        let json = json.split("</script>").next().unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v[1]["attributes"]["x"], "</script><b>");
        assert_eq!(v[1]["attributes"]["engine.cpu.off_ns"], "6000000");
        // without the probes' split: the page, and the reason in place of the graph
        let page = String::from_utf8(html_page(&spans[..1]).unwrap()).unwrap();
        assert!(page.contains("are the eBPF probes running?"));
        assert!(flame_svg(&spans[..1]).is_err() && pprof_gz(&spans[..1]).is_err());
    }
}
