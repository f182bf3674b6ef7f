//! Spans of one API request: an HTTP server span under the caller's `traceparent` (or a new
//! trace), `daemon.*` phase spans under it, and the context handed on to lifecycled.

use std::sync::Mutex;

use engine_telemetry::{Kind, Recorder, Sink, SpanHandle};

pub struct Trace {
    rec: Mutex<Recorder>,
    pub root: SpanHandle,
    /// The span new phase spans go under (the request span unless a phase is entered).
    current: Mutex<SpanHandle>,
    /// `Some` while a [`TraceHold`] keeps the request span open, with the status to close it
    /// with once the handler has returned.
    held: Mutex<Option<Option<u16>>>,
}

/// Keeps a request's span open while its response streams; see [`Trace::hold`].
pub struct TraceHold(std::sync::Arc<Trace>);

impl TraceHold {
    pub fn trace(&self) -> &std::sync::Arc<Trace> {
        &self.0
    }
}

impl Drop for TraceHold {
    fn drop(&mut self) {
        let status = self.0.held.lock().unwrap_or_else(|p| p.into_inner()).take().flatten();
        if let Some(status) = status {
            self.0.close_now(status);
        }
    }
}

impl Trace {
    pub fn new(sink: Option<&Sink>, traceparent: Option<&str>, name: &str) -> Self {
        let mut rec = Recorder::for_request("engined", sink, traceparent);
        let root = rec.start(name, None);
        rec.set_kind(root, Kind::Server);
        rec.set_attr(root, "process.pid", std::process::id());
        Trace { rec: Mutex::new(rec), root, current: Mutex::new(root), held: Mutex::new(None) }
    }

    /// The trace of work engined does on its own, outside any request (a container's exit and
    /// what follows it, a restart policy's start): a root span `name` of its own trace.
    pub fn background(sink: Option<&Sink>, name: &str) -> Self {
        let t = Trace::new(sink, None, name);
        t.rec().set_kind(t.root, Kind::Internal);
        t
    }

    fn rec(&self) -> std::sync::MutexGuard<'_, Recorder> {
        // A panic while holding it loses at most this request's spans.
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a phase span under the current span.
    pub fn start(&self, name: &str) -> SpanHandle {
        let parent = self.current();
        self.rec().start(name, Some(parent))
    }

    /// Starts a span under `parent` (work running side by side under one phase).
    pub fn start_under(&self, name: &str, parent: SpanHandle) -> SpanHandle {
        self.rec().start(name, Some(parent))
    }

    /// Starts a span under `parent` that began at `start` (a time taken elsewhere), no earlier
    /// than `parent` did.
    pub fn start_under_at(&self, name: &str, parent: SpanHandle, start: u64) -> SpanHandle {
        let mut rec = self.rec();
        let start = start.max(rec.start_of(parent).unwrap_or(start)).min(engine_telemetry::recorder::now_unix_nanos());
        rec.start_at(name, Some(parent), start)
    }

    /// Records a span that ran from `start` to `end` (times taken elsewhere) under `parent`,
    /// starting no earlier than `parent` did.
    pub fn record(&self, name: &str, parent: SpanHandle, start: u64, end: u64) -> SpanHandle {
        let mut rec = self.rec();
        let start = start.max(rec.start_of(parent).unwrap_or(start));
        let h = rec.start_at(name, Some(parent), start);
        rec.end_at(h, end.max(start));
        h
    }

    pub fn set_kind(&self, h: SpanHandle, kind: Kind) {
        self.rec().set_kind(h, kind);
    }

    /// Keeps the request span open after the handler returns, for a response whose work goes
    /// on while its body streams (a pull): the span ends when the returned guard is dropped.
    pub fn hold(self: &std::sync::Arc<Self>) -> TraceHold {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(None);
        TraceHold(self.clone())
    }

    /// The span phases go under now.
    pub fn current(&self) -> SpanHandle {
        *self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `h` the parent of the phases started from now on; returns the previous one, to
    /// enter again when `h` is done.
    pub fn enter(&self, h: SpanHandle) -> SpanHandle {
        std::mem::replace(&mut *self.current.lock().unwrap_or_else(|p| p.into_inner()), h)
    }

    pub fn attr(&self, h: SpanHandle, key: &str, value: impl Into<engine_telemetry::recorder::AttrValue>) {
        self.rec().set_attr(h, key, value);
    }

    /// Ends `h`, marking it failed when `result` is an error; returns `result`.
    pub fn finish<T, E: std::fmt::Display>(&self, h: SpanHandle, result: Result<T, E>) -> Result<T, E> {
        self.rec().finish(h, result)
    }

    /// The `traceparent` to send on for work done under `h`.
    pub fn traceparent(&self, h: SpanHandle) -> Option<String> {
        self.rec().context(h).map(|c| c.traceparent())
    }

    /// Ends a [`Trace::background`] root (failed with `error`, if any) and hands every span to the
    /// sink.
    pub fn end(&self, error: Option<&str>) {
        let mut rec = self.rec();
        let root = self.root;
        match error {
            Some(e) => rec.fail(root, e),
            None => rec.end(root),
        }
        rec.flush();
    }

    /// Ends the request span with its HTTP status and hands every span to the sink (when the
    /// span is held, the guard does so when it is dropped).
    pub fn close(&self, status: u16) {
        if let Some(pending) = self.held.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            *pending = Some(status);
            return;
        }
        self.close_now(status);
    }

    fn close_now(&self, status: u16) {
        let mut rec = self.rec();
        let root = self.root;
        rec.set_attr(root, "http.response.status_code", status as i64);
        if status >= 500 {
            rec.fail(root, &format!("HTTP {status}"));
        } else {
            rec.end(root);
        }
        rec.flush();
    }
}

tokio::task_local! {
    /// The trace of the operation the current task serves (set around each API request).
    static CURRENT: std::sync::Arc<Trace>;
}

impl Trace {
    /// Runs `f` as part of this trace's operation: calls to lifecycled made inside it carry the
    /// context of the span current at each call ([`current_traceparent`]).
    pub async fn scope<F: std::future::Future>(self: &std::sync::Arc<Self>, f: F) -> F::Output {
        CURRENT.scope(self.clone(), f).await
    }
}

/// The trace of the operation the current task serves, if any.
pub fn current() -> Option<std::sync::Arc<Trace>> {
    CURRENT.try_with(|t| t.clone()).ok()
}

/// The `traceparent` for work done now on behalf of the current task's operation: the current
/// span of its trace, or `None` outside of any operation (background work).
pub fn current_traceparent() -> Option<String> {
    CURRENT.try_with(|t| t.traceparent(t.current())).ok().flatten()
}

/// Spawns `f` as part of the current task's operation (if any), so its lifecycled calls stay in
/// that operation's trace.
pub fn spawn_in_operation<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match CURRENT.try_with(|t| t.clone()) {
        Ok(t) => tokio::spawn(CURRENT.scope(t, f)),
        Err(_) => tokio::spawn(f),
    }
}
