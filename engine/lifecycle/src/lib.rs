//! engine-lifecycled: containerd's role. Serves Containers (metadata on disk), Tasks (one
//! engine-shim per running container) and Events (a durable journal) over gRPC on a unix socket.
//!
//! Owns: container records, task directories, the event journal. It must never hold anything
//! per container that it cannot rebuild from disk: it may be killed at any time, and the
//! containers and their shims keep running without it.

pub mod events;
pub mod service;
pub mod store;
pub mod tasks;

use std::path::PathBuf;

/// Command line of `engine-lifecycled`.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "engine-lifecycled", version, about = "Containers, tasks and events over gRPC")]
pub struct Config {
    /// The gRPC socket.
    #[arg(long, default_value = "/run/engine/lifecycled.sock")]
    pub address: PathBuf,
    /// Persistent state: container records and kept logs.
    #[arg(long, default_value = "/var/lib/engine/lifecycle")]
    pub root: PathBuf,
    /// Runtime state: task directories, shim sockets, the runtime's root, the event journal.
    #[arg(long, default_value = "/run/engine/lifecycle")]
    pub state: PathBuf,
    /// The OCI runtime (default: engine-runtime beside this binary).
    #[arg(long, default_value_os_t = sibling("engine-runtime"))]
    pub runtime: PathBuf,
    /// The shim (default: engine-shim beside this binary).
    #[arg(long, default_value_os_t = sibling("engine-shim"))]
    pub shim: PathBuf,
}

/// `name` in the directory of the running binary (or on PATH when that is unknown).
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

pub use service::serve;
