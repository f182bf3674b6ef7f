//! The spans of every component, kept under the data-root by default: engined, lifecycled,
//! the shims, the runtime and init hand theirs to one OTLP JSON lines file (`ENGINE_SPAN_SINK`,
//! inherited), bounded by rotation; the API finds a container's traces in it.

use std::io::BufRead;
use std::path::PathBuf;

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::StatusCode;
use serde_json::json;

use crate::config::Config;
use crate::daemon::Daemon;
use crate::http::{self, json, ApiError, Resp};

/// The file is rotated to `.1` (the previous `.1` dropped) past this size at start.
const MAX_SPAN_FILE: u64 = 64 << 20;

pub fn span_file(cfg: &Config) -> PathBuf {
    cfg.data_root.join("traces").join("spans.jsonl")
}

/// Unless `ENGINE_SPAN_SINK` names another sink, spans go to `<data-root>/traces/spans.jsonl`.
/// Call before any thread starts (it sets the environment every child inherits).
pub fn default_sink(cfg: &Config) -> anyhow::Result<()> {
    if std::env::var_os(engine_telemetry::ENV_SPAN_SINK).is_some() {
        return Ok(());
    }
    let path = span_file(cfg);
    crate::config::ensure_dir(path.parent().unwrap_or(&cfg.data_root))?;
    if std::fs::metadata(&path).map(|m| m.len() > MAX_SPAN_FILE).unwrap_or(false) {
        std::fs::rename(&path, path.with_extension("jsonl.1"))?;
    }
    // SAFETY (edition 2021 API): called from main before the runtime or any thread exists.
    std::env::set_var(engine_telemetry::ENV_SPAN_SINK, &path);
    Ok(())
}

fn sink_path() -> Option<PathBuf> {
    std::env::var_os(engine_telemetry::ENV_SPAN_SINK).map(PathBuf::from).filter(|p| !p.to_string_lossy().starts_with("fd:"))
}

fn spans() -> Vec<engine_telemetry::FlatSpan> {
    let Some(path) = sink_path() else { return Vec::new() };
    let mut out = Vec::new();
    for p in [path.with_extension("jsonl.1"), path] {
        if let Ok(f) = std::fs::File::open(&p) {
            if let Ok((s, _)) = engine_telemetry::read_spans(std::io::BufReader::new(f)) {
                out.extend(s);
            }
        }
    }
    out
}

/// `GET /engine/v1/containers/{id}/traces`: the traces of a container's operations, oldest
/// first, each with its root operation and span count.
pub fn container_traces(d: &Daemon, name: &str) -> Result<Resp, ApiError> {
    let id = d.find(name)?.snapshot().id;
    let all = spans();
    let mut ids: Vec<String> = all.iter().filter(|s| s.attr("container.id") == Some(id.as_str())).map(|s| s.trace_id.clone()).collect();
    ids.sort();
    ids.dedup();
    let mut out: Vec<serde_json::Value> = ids
        .iter()
        .map(|t| {
            let in_trace: Vec<_> = all.iter().filter(|s| &s.trace_id == t).collect();
            let start = in_trace.iter().map(|s| s.start_unix_nanos).min().unwrap_or(0);
            let end = in_trace.iter().map(|s| s.end_unix_nanos).max().unwrap_or(0);
            let ids: std::collections::HashSet<&str> = in_trace.iter().map(|s| s.span_id.as_str()).collect();
            let mut roots: Vec<_> = in_trace.iter().filter(|s| !ids.contains(s.parent_span_id.as_str())).collect();
            roots.sort_by_key(|s| s.start_unix_nanos);
            json!({ "TraceID": t, "Start": start, "DurationNanos": end.saturating_sub(start), "Operation": roots.first().map(|s| s.name.clone()), "Spans": in_trace.len() })
        })
        .collect();
    out.sort_by_key(|v| v["Start"].as_u64().unwrap_or(0));
    Ok(json(StatusCode::OK, &out))
}

/// `GET /engine/v1/traces/{trace_id}`: the trace's spans as OTLP JSON lines.
pub fn trace(trace_id: &str) -> Result<Resp, ApiError> {
    if trace_id.len() != 32 || !trace_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(format!("invalid trace id {trace_id:?}")));
    }
    let path = sink_path().ok_or_else(|| ApiError::not_found("spans are not kept by this engined"))?;
    let mut lines = String::new();
    for p in [path.with_extension("jsonl.1"), path] {
        if let Ok(f) = std::fs::File::open(&p) {
            for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
                if line.contains(trace_id) {
                    lines.push_str(&line);
                    lines.push('\n');
                }
            }
        }
    }
    if lines.is_empty() {
        return Err(ApiError::not_found(format!("no trace {trace_id}")));
    }
    let mut r = Resp::new(http::full(lines));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(r)
}
