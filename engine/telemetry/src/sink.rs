//! Where finished spans go: a [`Sink`] takes one OTLP `ExportTraceServiceRequest` at a time.
//!
//! Short-lived processes (runtime, init) write to a file sink (an inherited descriptor the parent
//! reads, or a path); long-lived ones (lifecycled, the shims) hand theirs to an OTLP exporter
//! ([`crate::otlp`]) that sends them to engined's receiver; engined's own spans go straight to its
//! trace store. Exporting never blocks the caller and never fails it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

/// Something that accepts finished spans.
pub trait SpanExporter: Send + Sync + 'static {
    /// Takes the spans; must not block on the network and must not fail the caller.
    fn export(&self, request: ExportTraceServiceRequest);

    /// The descriptor behind this exporter, when it is a plain file or socket a child process can
    /// inherit and write to itself.
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }

    /// The count of spans taken but not yet sent on, for an exporter that sends them later
    /// (`None`: every span is out when `export` returns).
    #[cfg(feature = "otlp")]
    fn unsent(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// A shared handle on a [`SpanExporter`].
#[derive(Clone)]
pub struct Sink(Arc<dyn SpanExporter>);

impl Sink {
    pub fn new(exporter: impl SpanExporter) -> Self {
        Sink(Arc::new(exporter))
    }

    /// A sink writing OTLP JSON lines to `file` (a file opened for append, or a socket).
    pub fn file(file: File) -> Self {
        Sink::new(FileSink(Mutex::new(file)))
    }

    pub fn export(&self, request: ExportTraceServiceRequest) {
        self.0.export(request)
    }

    pub fn raw_fd(&self) -> Option<RawFd> {
        self.0.raw_fd()
    }

    /// Waits (at most `limit`) until every span taken so far is sent on: what a process does
    /// before it exits, so its last spans are not lost with it.
    #[cfg(feature = "otlp")]
    pub async fn drain(&self, limit: std::time::Duration) {
        if let Some(mut unsent) = self.0.unsent() {
            let _ = tokio::time::timeout(limit, unsent.wait_for(|n| *n == 0)).await;
        }
    }
}

/// OTLP JSON lines (the Collector's file-exporter format), one request per line, each written
/// with a single `write` so lines from concurrent writers stay whole (`O_APPEND` for files, one
/// datagram per line for the sequenced-packet sockets the shim hands out).
struct FileSink(Mutex<File>);

impl SpanExporter for FileSink {
    fn export(&self, request: ExportTraceServiceRequest) {
        if let Ok(mut line) = serde_json::to_vec(&request) {
            line.push(b'\n');
            let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let _ = f.write_all(&line);
        }
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.0.lock().unwrap_or_else(|e| e.into_inner()).as_raw_fd())
    }
}

/// Opens the sink `spec` names: a path (opened for append) or `fd:N` for an inherited descriptor
/// (taken over and made close-on-exec, so the user's program never sees it).
pub fn open_file_sink(spec: &str) -> Option<File> {
    if let Some(fd) = spec.strip_prefix("fd:") {
        let fd: i32 = fd.parse().ok()?;
        // SAFETY: F_GETFD only inspects the descriptor; we take ownership only if it is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return None;
        }
        // SAFETY: the descriptor is open and was handed to this process for this purpose by its
        // parent through ENGINE_SPAN_SINK; nothing else in the process uses it.
        let file = unsafe { File::from_raw_fd(fd) };
        // SAFETY: sets close-on-exec on a descriptor we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        return Some(file);
    }
    OpenOptions::new().append(true).create(true).mode(0o600).custom_flags(libc::O_CLOEXEC).open(spec).ok()
}

/// The file sink `ENGINE_SPAN_SINK` names, if set and usable.
pub fn file_sink_from_env() -> Option<Sink> {
    std::env::var(crate::ENV_SPAN_SINK).ok().and_then(|s| open_file_sink(&s)).map(Sink::file)
}

/// A sink that keeps what it is given, for a process that sends its spans itself when done
/// (the CLI posts them to engined).
#[derive(Clone, Default)]
pub struct MemorySink(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

impl MemorySink {
    /// Everything exported so far, merged into one request; empties the sink.
    pub fn take(&self) -> Option<ExportTraceServiceRequest> {
        let list = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        if list.is_empty() {
            return None;
        }
        Some(ExportTraceServiceRequest { resource_spans: list.into_iter().flat_map(|r| r.resource_spans).collect() })
    }
}

impl SpanExporter for MemorySink {
    fn export(&self, request: ExportTraceServiceRequest) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(request);
    }
}
