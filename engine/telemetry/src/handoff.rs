//! Reading the span hand-off: OTLP JSON lines (one `ExportTraceServiceRequest` per line, the format
//! of the OpenTelemetry Collector's file exporter) as written by [`crate::Recorder`].

use std::io::BufRead;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};

use crate::context::hex;

/// One span with its resource's service name, flattened for display and checks.
#[derive(Clone, Debug, PartialEq)]
pub struct FlatSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub service: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(String, String)>,
    /// The status message when the span failed.
    pub error: Option<String>,
    /// Point events in the span (the probes' kernel events): time, name, attributes.
    pub events: Vec<(u64, String, Vec<(String, String)>)>,
}

impl FlatSpan {
    /// Duration in nanoseconds.
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nanos.saturating_sub(self.start_unix_nanos)
    }

    /// A span of service `engine-test` for unit tests.
    #[cfg(test)]
    pub(crate) fn for_test(id: &str, parent: &str, name: &str, start: u64, end: u64) -> FlatSpan {
        FlatSpan {
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            name: name.into(),
            service: "engine-test".into(),
            start_unix_nanos: start,
            end_unix_nanos: end,
            attributes: vec![],
            error: None,
            events: vec![],
        }
    }

    /// The value of attribute `key`, if set.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn value_text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> Vec<(String, String)> {
    kvs.iter().map(|kv| (kv.key.clone(), value_text(&kv.value))).collect()
}

/// Flattens one export request.
pub fn flatten(request: &ExportTraceServiceRequest) -> Vec<FlatSpan> {
    let mut out = Vec::new();
    for rs in &request.resource_spans {
        let resource = rs.resource.as_ref().map(|r| attrs(&r.attributes)).unwrap_or_default();
        let service = resource
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "unknown_service".into());
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                let error = s
                    .status
                    .as_ref()
                    .filter(|st| st.code == opentelemetry_proto::tonic::trace::v1::status::StatusCode::Error as i32)
                    .map(|st| st.message.clone());
                out.push(FlatSpan {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name.clone(),
                    service: service.clone(),
                    start_unix_nanos: s.start_time_unix_nano,
                    end_unix_nanos: s.end_time_unix_nano,
                    attributes: attrs(&s.attributes),
                    error,
                    events: s.events.iter().map(|e| (e.time_unix_nano, e.name.clone(), attrs(&e.attributes))).collect(),
                });
            }
        }
    }
    out
}

/// Reads every span from OTLP JSON lines. Lines that do not parse (a writer killed mid-line) are
/// skipped and counted in the second value.
pub fn read_spans(reader: impl BufRead) -> std::io::Result<(Vec<FlatSpan>, usize)> {
    let mut spans = Vec::new();
    let mut skipped = 0;
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<ExportTraceServiceRequest>(&line) {
            Ok(req) => spans.extend(flatten(&req)),
            Err(_) => skipped += 1,
        }
    }
    Ok((spans, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Recorder, TraceContext};

    #[test]
    fn recorder_output_reads_back_with_parents() {
        let dir = std::env::temp_dir().join(format!("handoff-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("spans.jsonl");
        let parent = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None).unwrap();
        {
            let sink = std::fs::File::create(&path).unwrap();
            let mut rec = Recorder::with_sink("engine-runtime", crate::Sink::file(sink), Some(parent.clone()));
            let root = rec.start("runtime.create", None);
            rec.set_attr(root, "container.id", "abc");
            let child = rec.start("runtime.cgroup", Some(root));
            rec.fail(child, "no such controller");
            rec.end(root);
        }
        // a torn line from a crashed writer is skipped, not fatal
        std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"resourceSp").unwrap();
        let (spans, skipped) = read_spans(std::io::BufReader::new(std::fs::File::open(&path).unwrap())).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(spans.len(), 2);
        let root = spans.iter().find(|s| s.name == "runtime.create").unwrap();
        let child = spans.iter().find(|s| s.name == "runtime.cgroup").unwrap();
        assert_eq!(root.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(root.parent_span_id, "00f067aa0ba902b7");
        assert_eq!(child.parent_span_id, root.span_id);
        assert_eq!(root.service, "engine-runtime");
        assert_eq!(root.attr("container.id"), Some("abc"));
        assert_eq!(child.error.as_deref(), Some("no such controller"));
        assert!(child.start_unix_nanos >= root.start_unix_nanos);
        assert!(child.end_unix_nanos <= root.end_unix_nanos);
    }
}
