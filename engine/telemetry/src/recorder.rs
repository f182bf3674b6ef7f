//! Span recording: a process's spans (or one request's, in a long-lived process) are kept in
//! memory and handed to a [`Sink`] as one OTLP request when done — for short-lived processes the
//! sink named by `ENGINE_SPAN_SINK`, written once at exit.
//!
//! A recorder without a sink, or for a trace that is not sampled, records nothing and costs a
//! branch per call, so an untraced start pays nothing for telemetry.

use std::os::fd::RawFd;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span, Status};

use crate::context::{SpanId, TraceContext, TraceId};
use crate::sink::{file_sink_from_env, Sink};

/// What a span describes, as OpenTelemetry's span kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Internal,
    Server,
    Client,
}

/// A span started by [`Recorder::start`]; valid only with the recorder that returned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanHandle(usize);

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        AttrValue::Str(v.to_string())
    }
}
impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(v)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<i32> for AttrValue {
    fn from(v: i32) -> Self {
        AttrValue::Int(v.into())
    }
}
impl From<u32> for AttrValue {
    fn from(v: u32) -> Self {
        AttrValue::Int(v.into())
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

struct Recorded {
    id: SpanId,
    parent: Option<SpanId>,
    name: String,
    start: u64,
    end: Option<u64>,
    attributes: Vec<KeyValue>,
    kind: Kind,
    error: Option<String>,
    /// False for spans inherited across fork: the parent process writes those.
    owned: bool,
}

struct Active {
    sink: Sink,
    trace_id: TraceId,
    /// The span this process was started under (from `TRACEPARENT`), if any.
    remote_parent: Option<SpanId>,
    flags: u8,
    state: Option<String>,
    spans: Vec<Recorded>,
}

/// Records this process's spans and hands them to the sink.
pub struct Recorder {
    service: &'static str,
    active: Option<Active>,
    /// For a trace that is not sampled: the context passed on unchanged (sampled flag clear), so
    /// the processes below do not record it either.
    unsampled: Option<TraceContext>,
}

/// Nanoseconds since the Unix epoch, from the realtime clock.
pub fn now_unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn kv(key: &str, value: AttrValue) -> KeyValue {
    let value = match value {
        AttrValue::Str(s) => any_value::Value::StringValue(s),
        AttrValue::Int(i) => any_value::Value::IntValue(i),
        AttrValue::Bool(b) => any_value::Value::BoolValue(b),
    };
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

impl Recorder {
    /// A recorder that records nothing.
    pub fn disabled(service: &'static str) -> Self {
        Recorder { service, active: None, unsampled: None }
    }

    /// A recorder configured from `ENGINE_SPAN_SINK`, `TRACEPARENT` and `TRACESTATE`. Without a sink
    /// (or when it cannot be opened) it is disabled. Without a parent context it starts a new trace.
    pub fn from_env(service: &'static str) -> Self {
        let Some(sink) = file_sink_from_env() else {
            return Self::disabled(service);
        };
        Self::with_sink(service, sink, TraceContext::from_env())
    }

    /// A recorder handing its spans to `sink`, under `parent` (or a new trace when `None`). Whether
    /// anything is recorded is the sampler's decision ([`crate::sampling`]): a parent's sampled
    /// flag is followed, a new trace is decided by the environment's sampler.
    pub fn with_sink(service: &'static str, sink: Sink, parent: Option<TraceContext>) -> Self {
        let (trace_id, remote_parent, flags, state) = match parent {
            Some(p) => (p.trace_id, Some(p.span_id), p.flags, p.state),
            None => (TraceId::random(), None, 1, None),
        };
        let parent_sampled = remote_parent.map(|_| flags & 1 == 1);
        if !crate::sampling::env_sampler().should_sample(&trace_id, parent_sampled) {
            let span_id = remote_parent.unwrap_or_else(SpanId::random);
            return Recorder {
                service,
                active: None,
                unsampled: Some(TraceContext { trace_id, span_id, flags: flags & !1, state }),
            };
        }
        let flags = flags | 1;
        Recorder {
            service,
            active: Some(Active { sink, trace_id, remote_parent, flags, state, spans: Vec::new() }),
            unsampled: None,
        }
    }

    /// A recorder for a process that must record exactly when its parent does (engine-init on
    /// the runtime's hand-over): the parent's sampled flag decides, never this process's
    /// environment (which is the container's).
    pub fn following(service: &'static str, sink: Sink, parent: TraceContext) -> Self {
        if !parent.sampled() {
            return Recorder { service, active: None, unsampled: Some(parent) };
        }
        Recorder {
            service,
            active: Some(Active {
                sink,
                trace_id: parent.trace_id,
                remote_parent: Some(parent.span_id),
                flags: parent.flags,
                state: parent.state,
                spans: Vec::new(),
            }),
            unsampled: None,
        }
    }

    /// A recorder for one request of a long-lived process (a shim, a daemon): its spans go to
    /// `sink` under the request's `traceparent`, or start a new trace without one.
    pub fn for_request(service: &'static str, sink: Option<&Sink>, traceparent: Option<&str>) -> Self {
        let Some(sink) = sink else { return Self::disabled(service) };
        let parent = traceparent.and_then(|tp| TraceContext::parse(tp, None).ok());
        Self::with_sink(service, sink.clone(), parent)
    }

    /// The descriptor spans are written to, when the sink is one a child process can inherit.
    pub fn sink_fd(&self) -> Option<RawFd> {
        self.active.as_ref().and_then(|a| a.sink.raw_fd())
    }

    /// Whether spans are being recorded.
    pub fn enabled(&self) -> bool {
        self.active.is_some()
    }

    /// Starts a span named `name` under `parent`, or under the process's incoming context when
    /// `parent` is `None`.
    pub fn start(&mut self, name: &str, parent: Option<SpanHandle>) -> SpanHandle {
        self.start_at(name, parent, now_unix_nanos())
    }

    /// Starts a span that began at `start_unix_nanos` (a time another process took for it).
    pub fn start_at(&mut self, name: &str, parent: Option<SpanHandle>, start_unix_nanos: u64) -> SpanHandle {
        let Some(a) = self.active.as_mut() else { return SpanHandle(usize::MAX) };
        let parent = match parent {
            Some(h) => a.spans.get(h.0).map(|s| s.id),
            None => a.remote_parent,
        };
        a.spans.push(Recorded {
            id: SpanId::random(),
            parent,
            name: name.to_string(),
            start: start_unix_nanos,
            end: None,
            attributes: Vec::new(),
            kind: Kind::Internal,
            error: None,
            owned: true,
        });
        SpanHandle(a.spans.len() - 1)
    }

    /// When span `h` started (`None` when nothing is recorded).
    pub fn start_of(&self, h: SpanHandle) -> Option<u64> {
        self.active.as_ref()?.spans.get(h.0).map(|s| s.start)
    }

    /// Sets an attribute on a span.
    pub fn set_attr(&mut self, h: SpanHandle, key: &str, value: impl Into<AttrValue>) {
        if let Some(s) = self.active.as_mut().and_then(|a| a.spans.get_mut(h.0)) {
            s.attributes.push(kv(key, value.into()));
        }
    }

    /// Sets what kind of span `h` is (internal unless set).
    pub fn set_kind(&mut self, h: SpanHandle, kind: Kind) {
        if let Some(s) = self.active.as_mut().and_then(|a| a.spans.get_mut(h.0)) {
            s.kind = kind;
        }
    }

    /// Ends a span (the first end wins).
    pub fn end(&mut self, h: SpanHandle) {
        if let Some(s) = self.active.as_mut().and_then(|a| a.spans.get_mut(h.0)) {
            s.end.get_or_insert_with(now_unix_nanos);
        }
    }

    /// Ends a span at `end_unix_nanos` (a time taken when its work ended, recorded later).
    pub fn end_at(&mut self, h: SpanHandle, end_unix_nanos: u64) {
        if let Some(s) = self.active.as_mut().and_then(|a| a.spans.get_mut(h.0)) {
            s.end = Some(end_unix_nanos);
        }
    }

    /// Marks a span failed with `message` and ends it.
    pub fn fail(&mut self, h: SpanHandle, message: &str) {
        if let Some(s) = self.active.as_mut().and_then(|a| a.spans.get_mut(h.0)) {
            s.error.get_or_insert_with(|| message.to_string());
        }
        self.end(h);
    }

    /// Ends the span with the outcome of `result`, and passes the result on.
    pub fn finish<T, E: std::fmt::Display>(&mut self, h: SpanHandle, result: Result<T, E>) -> Result<T, E> {
        match &result {
            Ok(_) => self.end(h),
            Err(e) => self.fail(h, &e.to_string()),
        }
        result
    }

    /// The context to hand to a child process so that its spans nest under `h`.
    pub fn context(&self, h: SpanHandle) -> Option<TraceContext> {
        let Some(a) = self.active.as_ref() else { return self.unsampled.clone() };
        let s = a.spans.get(h.0)?;
        Some(TraceContext { trace_id: a.trace_id, span_id: s.id, flags: a.flags, state: a.state.clone() })
    }

    /// For a child created by fork/clone: forget the spans the parent owns (the parent writes them),
    /// keep the sink and the trace, and let the child's new spans nest under the parent's `h`.
    pub fn forked(&mut self, under: SpanHandle) {
        if let Some(a) = self.active.as_mut() {
            a.remote_parent = a.spans.get(under.0).map(|s| s.id).or(a.remote_parent);
            // Handles stay valid (indices are kept) but inherited spans are never written here.
            for s in a.spans.iter_mut() {
                s.owned = false;
            }
        }
    }

    /// Writes every span not yet written as one OTLP JSON line. Spans still open are written as
    /// ending now. Errors are ignored: telemetry never fails the operation it describes.
    pub fn flush(&mut self) {
        let service = self.service;
        let Some(a) = self.active.as_mut() else { return };
        if !a.spans.iter().any(|s| s.owned) {
            return;
        }
        let now = now_unix_nanos();
        let spans: Vec<Span> = a
            .spans
            .iter_mut()
            .filter_map(|s| std::mem::replace(&mut s.owned, false).then_some(s))
            .map(|s| Span {
                trace_id: a.trace_id.0.to_vec(),
                span_id: s.id.0.to_vec(),
                trace_state: a.state.clone().unwrap_or_default(),
                parent_span_id: s.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
                flags: u32::from(a.flags),
                name: std::mem::take(&mut s.name),
                kind: match s.kind {
                    Kind::Internal => span::SpanKind::Internal,
                    Kind::Server => span::SpanKind::Server,
                    Kind::Client => span::SpanKind::Client,
                } as i32,
                start_time_unix_nano: s.start,
                end_time_unix_nano: s.end.unwrap_or(now),
                attributes: std::mem::take(&mut s.attributes),
                status: Some(match s.error.take() {
                    Some(message) => Status { message, code: status::StatusCode::Error as i32 },
                    None => Status { message: String::new(), code: status::StatusCode::Unset as i32 },
                }),
                ..Default::default()
            })
            .collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", service.into()),
                        kv("process.pid", AttrValue::Int(std::process::id().into())),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "engine-telemetry".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        a.sink.export(request);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}
