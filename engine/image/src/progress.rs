//! Progress of loads and unpacks, reported as events so a CLI can draw bars and an API can
//! stream Docker's JSON progress messages.

use std::io::{self, Read};

use crate::digest::Digest;
use crate::reference::Reference;

#[derive(Debug)]
pub enum ProgressEvent<'a> {
    /// Bytes of the archive read so far (its total is not known in advance).
    Reading { bytes: u64 },
    /// A layer is about to be unpacked; `size` is its blob's size.
    LayerStart { diff_id: &'a Digest, size: u64 },
    /// Bytes of that layer's blob processed so far.
    LayerProgress { diff_id: &'a Digest, done: u64, total: u64 },
    /// The layer is unpacked; `reused` when the store already had it.
    LayerDone { diff_id: &'a Digest, reused: bool },
    /// An image is in the store.
    Loaded { id: &'a Digest, name: Option<&'a Reference> },
}

/// Receives progress events; `()` ignores them.
pub trait Progress: Sync {
    fn event(&self, event: ProgressEvent<'_>);
}

impl Progress for () {
    fn event(&self, _: ProgressEvent<'_>) {}
}

impl<F: Fn(ProgressEvent<'_>) + Sync> Progress for F {
    fn event(&self, event: ProgressEvent<'_>) {
        self(event)
    }
}

/// Counts bytes read through it and reports the total every `step` bytes.
pub(crate) struct CountingReader<R, F: FnMut(u64)> {
    inner: R,
    done: u64,
    next_report: u64,
    step: u64,
    report: F,
}

impl<R: Read, F: FnMut(u64)> CountingReader<R, F> {
    pub(crate) fn new(inner: R, step: u64, report: F) -> Self {
        CountingReader { inner, done: 0, next_report: step, step, report }
    }
}

impl<R: Read, F: FnMut(u64)> Read for CountingReader<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.done >= self.next_report || (n == 0 && !buf.is_empty()) {
            (self.report)(self.done);
            self.next_report = self.done + self.step;
        }
        Ok(n)
    }
}
