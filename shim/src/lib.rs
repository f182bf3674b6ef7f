//! engine-shim: one per container. It runs the OCI runtime for the container's operations,
//! becomes the container's parent once the runtime has exited (child subreaper), holds the
//! container's stdio (pipes or a pty) and writes it to a rotated JSON log, reaps the container
//! and records its exit status durably, and serves a small gRPC API on its own socket.
//!
//! Owns: one container's processes, stdio, log and exit file. It must never hold more than one
//! container, keep unbounded buffers, or depend on lifecycled being alive: the container outlives
//! every daemon above it.

pub mod log;
pub mod oom;
pub mod reaper;
pub mod runtime;
pub mod service;

pub use service::{serve, Config};
