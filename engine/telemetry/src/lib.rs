//! Telemetry shared by every process of the engine.
//!
//! Owns: the W3C trace context ([`TraceContext`]), its carriers (HTTP headers, gRPC metadata and the
//! `TRACEPARENT`/`TRACESTATE` environment variables of OpenTelemetry's environment carrier), span
//! recording ([`Recorder`]) into a [`Sink`] (a file or inherited descriptor for short-lived
//! processes, read back by [`handoff::read_spans`]; with the `otlp` feature, an OTLP exporter and
//! receiver for the long-lived ones), the sampling decision ([`sampling`]), and the terminal
//! waterfall that renders a trace ([`waterfall`]).
//!
//! Must never: export over the network from a short-lived process, block the container-start path on
//! telemetry, or fail an operation because telemetry failed (recording errors are swallowed and
//! counted, never propagated to the caller's result).

pub mod analysis;
pub mod context;
pub mod handoff;
pub mod names;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod recorder;
pub mod sampling;
pub mod sink;
pub mod waterfall;
pub mod why;

pub use context::{SpanId, TraceContext, TraceId};
pub use handoff::{read_spans, FlatSpan};
pub use recorder::{Kind, Recorder, SpanHandle};
pub use sink::{file_sink_from_env, MemorySink, Sink, SpanExporter};

/// Environment variable of OpenTelemetry's environment carrier holding the W3C `traceparent`.
pub const ENV_TRACEPARENT: &str = "TRACEPARENT";
/// Environment variable of OpenTelemetry's environment carrier holding the W3C `tracestate`.
pub const ENV_TRACESTATE: &str = "TRACESTATE";
/// Where a short-lived process appends its finished spans: a file path (opened for append) or
/// `fd:N` for an inherited descriptor. Unset means spans are not recorded at all.
pub const ENV_SPAN_SINK: &str = "ENGINE_SPAN_SINK";
