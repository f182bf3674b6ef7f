//! engine-runtime: an OCI runtime (runtime-spec 1.x, Linux) with runc's command line.
//!
//! Owns: turning a bundle into a running container and back: spec checks, container state on
//! disk, cgroups (v1, v2, hybrid), namespaces, the root filesystem, the process's identity and
//! limits, and the lifecycle operations (create, start, state, kill, delete, run). Each phase of
//! a create is a span handed to the caller through `ENGINE_SPAN_SINK` (never exported over the
//! network from here).
//!
//! Must never: leave anything behind after a failed operation (cgroup, mount, process, state
//! directory), run more than one thread (the container's first process is forked from this one),
//! or talk to a daemon: it is driven by a CLI, like runc.

pub mod cgroups;
pub mod cli;
pub mod container;
pub mod control;
pub mod error;
pub mod exec;
pub mod hooks;
pub mod log;
pub mod namespaces;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod state;

mod setup;
mod sync;
pub mod terminal;

pub use error::{Error, Result};
