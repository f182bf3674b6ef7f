//! OCI hooks (config.json `hooks`): each runs with the container's state JSON on stdin, its own
//! args and env, and an optional timeout. Where and when each kind runs is decided by the
//! lifecycle (create, start, delete); this module only runs a list of them in order.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

/// A hook that failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{kind} hook {path}: {source}")]
    Spawn { kind: &'static str, path: String, source: std::io::Error },
    #[error("{kind} hook {path} failed: {status}{stderr}")]
    Failed { kind: &'static str, path: String, status: String, stderr: String },
    #[error("{kind} hook {path} timed out after {secs}s")]
    Timeout { kind: &'static str, path: String, secs: i64 },
}

/// Runs `hooks` of kind `kind` one after another, each fed `state` on stdin; stops at the first
/// that fails.
pub fn run_all(kind: &'static str, hooks: &[Hook], state: &serde_json::Value) -> Result<(), HookError> {
    let input = state.to_string();
    for hook in hooks {
        run_one(kind, hook, &input)?;
    }
    Ok(())
}

/// Runs every hook of `hooks` even when some fail (poststart, poststop: a failure is only a
/// warning and the remaining hooks still run); returns the failures.
pub fn run_all_warning(kind: &'static str, hooks: &[Hook], state: &serde_json::Value) -> Vec<HookError> {
    let input = state.to_string();
    hooks.iter().filter_map(|h| run_one(kind, h, &input).err()).collect()
}

fn run_one(kind: &'static str, hook: &Hook, input: &str) -> Result<(), HookError> {
    let path = hook.path().display().to_string();
    let mut cmd = Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some((arg0, rest)) = args.split_first() {
            std::os::unix::process::CommandExt::arg0(&mut cmd, arg0);
            cmd.args(rest);
        }
    }
    // A hook with an `env` gets exactly it; one without inherits ours, as runc's do (for a
    // startContainer hook, ours is the container process's: see `setup`).
    if let Some(env) = hook.env() {
        cmd.env_clear();
        for e in env {
            if let Some((k, v)) = e.split_once('=') {
                cmd.env(k, v);
            }
        }
    }
    let stderr_file = tempfile_for_stderr();
    cmd.stdin(Stdio::piped()).stdout(Stdio::null());
    match &stderr_file {
        Some(f) => cmd.stderr(f.try_clone().map(Stdio::from).unwrap_or_else(|_| Stdio::null())),
        None => cmd.stderr(Stdio::null()),
    };
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn { kind, path: path.clone(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        // a hook that does not read its stdin is fine
        let _ = stdin.write_all(input.as_bytes());
    }
    let deadline = hook.timeout().filter(|t| *t > 0).map(|t| (t, Instant::now() + Duration::from_secs(t as u64)));
    // without a timeout, one blocking wait (the trace then shows the runtime waiting for its
    // hook, not a thousand naps a second)
    let status = loop {
        if deadline.is_none() {
            break child.wait().map_err(|source| HookError::Spawn { kind, path: path.clone(), source })?;
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => return Err(HookError::Spawn { kind, path, source }),
        }
        if let Some((secs, at)) = deadline {
            if Instant::now() >= at {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HookError::Timeout { kind, path, secs });
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    if status.success() {
        return Ok(());
    }
    let stderr = stderr_file.map(read_back).unwrap_or_default();
    let stderr = stderr.lines().next().map(|l| format!(": {l}")).unwrap_or_default();
    Err(HookError::Failed { kind, path, status: status.to_string(), stderr })
}

/// An anonymous file for the hook's stderr, so the first line can go into the error.
fn tempfile_for_stderr() -> Option<std::fs::File> {
    let fd = nix::sys::memfd::memfd_create(c"hook-stderr", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).ok()?;
    Some(std::fs::File::from(fd))
}

fn read_back(mut f: std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut s = String::new();
    let _ = f.seek(std::io::SeekFrom::Start(0));
    let _ = Read::take(&mut f, 4096).read_to_string(&mut s);
    s
}

/// The state document a hook gets on stdin (runtime spec "State").
pub fn state_json(
    spec: &oci_spec::runtime::Spec,
    id: &str,
    status: crate::state::Status,
    pid: i32,
    bundle: &std::path::Path,
) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": spec.version(),
        "id": id,
        "status": status,
        "pid": pid,
        "bundle": bundle,
        "annotations": spec.annotations().clone().unwrap_or_default(),
    })
}
