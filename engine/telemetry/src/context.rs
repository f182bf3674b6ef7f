//! W3C trace context (`traceparent` / `tracestate`) and the identifiers it carries.

use std::fmt;

/// A 16-byte trace id; never all zeroes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id; never all zeroes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A trace id from its 32 lowercase hex digits (as `traceparent` and OTLP JSON write it);
    /// `None` for anything else, or the invalid all-zero id.
    pub fn from_hex(s: &str) -> Option<Self> {
        unhex(s).filter(|b| *b != [0u8; 16]).map(TraceId)
    }

    /// A new random trace id.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        fill_random(&mut b);
        TraceId(b)
    }
}

impl SpanId {
    /// A new random span id.
    pub fn random() -> Self {
        let mut b = [0u8; 8];
        fill_random(&mut b);
        SpanId(b)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// Fills `buf` from the kernel's random pool; never all zeroes (ids must not be invalid). Where
/// getrandom is refused (a seccomp profile inside a container), ids come from the clock, the pid
/// and a counter instead: they need to be unique, not secret, and recording must never hang.
fn fill_random(buf: &mut [u8]) {
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            // SAFETY: the pointer and length describe the unfilled tail of `buf`.
            let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
            if n > 0 {
                filled += n as usize;
            } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                fill_fallback(&mut buf[filled..]);
                filled = buf.len();
            }
        }
        if buf.iter().any(|&b| b != 0) {
            return;
        }
    }
}

fn fill_fallback(buf: &mut [u8]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let mut x =
        nanos ^ (u64::from(std::process::id()) << 32) ^ COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    for chunk in buf.chunks_mut(8) {
        // splitmix64
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub(crate) fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        // traceparent is lowercase hex only
        if chunk.iter().any(|c| c.is_ascii_uppercase()) {
            return None;
        }
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// The position of a span in a trace: what a child needs to know about its parent.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TraceContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// W3C trace flags; bit 0 is "sampled".
    pub flags: u8,
    /// The opaque `tracestate` header, passed along unchanged.
    pub state: Option<String>,
}

/// Why a `traceparent` value was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid traceparent {0:?}: want 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>")]
pub struct ParseTraceparentError(pub String);

impl TraceContext {
    /// Parses a W3C `traceparent` value (version 00; later versions are read the same way, as the
    /// recommendation requires).
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Result<Self, ParseTraceparentError> {
        let err = || ParseTraceparentError(traceparent.to_string());
        let mut parts = traceparent.trim().split('-');
        let version = parts.next().ok_or_else(err)?;
        let trace = parts.next().ok_or_else(err)?;
        let span = parts.next().ok_or_else(err)?;
        let flags = parts.next().ok_or_else(err)?;
        let version: [u8; 1] = unhex(version).ok_or_else(err)?;
        if version[0] == 0xff || (version[0] == 0 && parts.next().is_some()) {
            return Err(err());
        }
        let trace_id = TraceId(unhex(trace).ok_or_else(err)?);
        let span_id = SpanId(unhex(span).ok_or_else(err)?);
        let flags: [u8; 1] = unhex(flags).ok_or_else(err)?;
        if trace_id.0 == [0; 16] || span_id.0 == [0; 8] {
            return Err(err());
        }
        Ok(TraceContext {
            trace_id,
            span_id,
            flags: flags[0],
            state: tracestate.filter(|s| !s.is_empty()).map(str::to_string),
        })
    }

    /// The context found in `TRACEPARENT`/`TRACESTATE`, if any and valid.
    pub fn from_env() -> Option<Self> {
        let parent = std::env::var(crate::ENV_TRACEPARENT).ok()?;
        let state = std::env::var(crate::ENV_TRACESTATE).ok();
        Self::parse(&parent, state.as_deref()).ok()
    }

    /// The `traceparent` value for this context.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }

    /// Environment variables that carry this context into a spawned process.
    pub fn env_pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![(crate::ENV_TRACEPARENT, self.traceparent())];
        if let Some(state) = &self.state {
            v.push((crate::ENV_TRACESTATE, state.clone()));
        }
        v
    }

    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::parse(tp, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(ctx.traceparent(), tp);
        assert!(ctx.sampled());
        assert_eq!(ctx.state.as_deref(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn traceparent_rejects_bad_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad, None).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn random_ids_differ_and_are_valid() {
        let a = TraceId::random();
        let b = TraceId::random();
        assert_ne!(a, b);
        assert_ne!(a.0, [0; 16]);
        assert_ne!(SpanId::random().0, [0; 8]);
    }
}
