//! The shim is a child subreaper: the container's first process, exec'd processes and runtime
//! invocations all end up as its children. One reaper collects every exit (waitpid(-1)) and hands
//! each to whoever waits for that pid, so no exit is ever lost or reaped twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// Exit code as a shell reports it: the code, or 128+signal.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

#[derive(Default)]
struct Inner {
    waiting: HashMap<i32, oneshot::Sender<i32>>,
    /// exits nobody asked for yet (a process may exit before its waiter registers)
    unclaimed: HashMap<i32, i32>,
}

/// Collects exits of all children.
#[derive(Clone, Default)]
pub struct Reaper {
    inner: Arc<Mutex<Inner>>,
}

impl Reaper {
    /// Makes this process a child subreaper and starts reaping.
    pub fn start() -> std::io::Result<Reaper> {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let reaper = Reaper::default();
        let mut sigchld = signal(SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(reaper)
    }

    fn reap(&self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => {
                    let (Some(pid), Some(code)) = (status.pid(), exit_code(status)) else { continue };
                    let pid = pid.as_raw();
                    let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                    match inner.waiting.remove(&pid) {
                        Some(tx) => {
                            let _ = tx.send(code);
                        }
                        None => {
                            inner.unclaimed.insert(pid, code);
                        }
                    }
                }
            }
        }
    }

    /// The exit code of child `pid`, when it exits (at once if it already has).
    pub fn wait_for(&self, pid: i32) -> oneshot::Receiver<i32> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.unclaimed.remove(&pid) {
            Some(code) => {
                let _ = tx.send(code);
            }
            None => {
                inner.waiting.insert(pid, tx);
            }
        }
        rx
    }
}
