//! Running the OCI runtime binary for the shim's container, as containerd-shim runs runc: with
//! `--root`, a JSON `--log` whose last error explains a failure, and the trace context of the
//! operation in `TRACEPARENT`. Exits are collected by the shim's reaper, never by `wait`.

use std::ffi::OsString;
use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::reaper::Reaper;

/// A failed runtime invocation.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("run {binary}: {source}")]
    Spawn { binary: String, source: std::io::Error },
    #[error("{0}")]
    Failed(String),
}

/// The runtime command line of one container.
#[derive(Clone)]
pub struct RuntimeCli {
    pub binary: PathBuf,
    pub root: PathBuf,
    pub log: PathBuf,
    pub reaper: Reaper,
    /// The write end of the span hand-off ([`span_handoff`]) every invocation inherits.
    pub span_handoff: Option<Arc<OwnedFd>>,
}

/// The runtime's and init's span hand-off: a sequenced-packet socket whose write end they inherit
/// (`ENGINE_SPAN_SINK=fd:N`; one OTLP JSON line per packet, so concurrent writers never tear each
/// other's lines), read by a thread that sends each request on to `sink`. Returns the write end.
pub fn span_handoff(sink: engine_telemetry::Sink) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (read, write) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(std::io::Error::from)?;
    std::thread::Builder::new().name("span-handoff".into()).spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match nix::sys::socket::recv(read.as_raw_fd(), &mut buf, nix::sys::socket::MsgFlags::empty()) {
                Ok(0) => return,
                Ok(n) => {
                    if let Ok(req) = serde_json::from_slice(buf[..n].trim_ascii_end()) {
                        sink.export(req);
                    }
                }
                Err(nix::Error::EINTR) => continue,
                Err(_) => return,
            }
        }
    })?;
    Ok(write)
}

/// Standard streams for an invocation (the container inherits them for create and exec).
pub struct Stdio3 {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

fn memfd(name: &std::ffi::CStr) -> std::io::Result<std::fs::File> {
    let fd =
        nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC).map_err(std::io::Error::from)?;
    Ok(std::fs::File::from(fd))
}

impl RuntimeCli {
    /// Runs the runtime with `args`; returns its stdout (unless `stdio` takes stdout elsewhere).
    pub async fn run(
        &self,
        args: &[OsString],
        stdio: Option<Stdio3>,
        traceparent: Option<&str>,
    ) -> Result<Vec<u8>, RuntimeError> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root).arg("--log").arg(&self.log).args(["--log-format", "json"]).args(args);
        die_with_this_thread(&mut cmd);
        match traceparent {
            Some(tp) => cmd.env(engine_telemetry::ENV_TRACEPARENT, tp),
            None => cmd.env_remove(engine_telemetry::ENV_TRACEPARENT),
        };
        match &self.span_handoff {
            Some(fd) => {
                let raw = fd.as_raw_fd();
                cmd.env(engine_telemetry::ENV_SPAN_SINK, format!("fd:{raw}"));
                // SAFETY: between fork and exec only fcntl runs, on a descriptor we own.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
            None => {
                cmd.env_remove(engine_telemetry::ENV_SPAN_SINK);
            }
        }
        let captured = match stdio {
            Some(s) => {
                cmd.stdin(s.stdin).stdout(s.stdout).stderr(s.stderr);
                None
            }
            None => {
                let out = memfd(c"runtime-stdout").map_err(|source| self.spawn_error(source))?;
                cmd.stdin(Stdio::null())
                    .stdout(out.try_clone().map_err(|source| self.spawn_error(source))?)
                    .stderr(Stdio::null());
                Some(out)
            }
        };
        let child = cmd.spawn().map_err(|source| self.spawn_error(source))?;
        let exited = self.reaper.wait_for(child.id() as i32);
        // the reaper collects the exit; dropping Child never waits
        drop(child);
        let code = exited.await.unwrap_or(-1);
        drop(cmd);
        if code != 0 {
            return Err(RuntimeError::Failed(
                self.last_error().unwrap_or_else(|| format!("{} exited with {code}", self.binary.display())),
            ));
        }
        let mut out = Vec::new();
        if let Some(mut f) = captured {
            let _ = f.seek(std::io::SeekFrom::Start(0));
            let _ = f.read_to_end(&mut out);
        }
        Ok(out)
    }

    fn spawn_error(&self, source: std::io::Error) -> RuntimeError {
        RuntimeError::Spawn { binary: self.binary.display().to_string(), source }
    }

    /// The message of the last error in the runtime's log.
    fn last_error(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        text.lines().rev().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["level"] == "error").then(|| v["msg"].as_str().map(str::to_string)).flatten()
        })
    }
}

/// The runtime dies with the shim (containerd's shim runs runc with `Pdeathsig: SIGKILL`): a
/// `create` the shim's death cut short must not go on to make a container nobody knows of,
/// whose state would refuse the next create of the same id. The signal follows the thread that
/// forked, which is the shim's only one (a current-thread runtime). A shim that died before the
/// `prctl` is seen by its successor's pid, and the runtime does not start.
fn die_with_this_thread(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: between fork and exec only prctl and getppid run (async-signal-safe syscalls).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("the shim is gone"));
            }
            Ok(())
        });
    }
}

/// `runtime --root ROOT delete --force ID`, synchronously: cleans up after a container whose
/// shim is gone (kills what is left, removes its cgroup and state). Idempotent.
pub fn force_delete(runtime: &std::path::Path, root: &std::path::Path, id: &str) -> std::io::Result<()> {
    let status = Command::new(runtime)
        .arg("--root")
        .arg(root)
        .args(["delete", "--force", id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("{} delete --force {id}: {status}", runtime.display())))
    }
}
