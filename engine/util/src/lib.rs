//! Small helpers every engine crate shares, each written once: atomic file writes
//! ([`fs::write_atomic`]), random ids ([`id::random_hex`]), the
//! names of containers, networks and volumes ([`name::check_name`]), a process's state
//! ([`process::state`]), RFC 3339 times ([`time`]) and byte
//! sizes as Docker and runc accept them ([`size`]).
//!
//! Owns: nothing but these functions. It must never depend on another engine crate, hold state,
//! or grow container logic: it is linked into every binary, the shim and the runtime included,
//! so it stays small and free of heavy dependencies.

pub mod fs;
pub mod id;
pub mod name;
pub mod process;
pub mod size;
pub mod time;
