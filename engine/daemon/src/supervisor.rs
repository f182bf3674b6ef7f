//! Supervision of engine-lifecycled: engined starts it, and when it dies, logs why and starts
//! it again with exponential backoff (reset after it has stayed up). Its shims, and so the
//! containers, live on across its restarts; lifecycled finds them again itself.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::config::Config;
use crate::log;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// A handle on the supervised lifecycled.
#[derive(Clone)]
pub struct Supervisor {
    /// Number of restarts so far (for /info and metrics).
    pub restarts: Arc<AtomicU64>,
    /// The current lifecycled pid (0 while it is down).
    pub pid: watch::Receiver<u32>,
    /// Set when engined stops it on purpose: no restart then.
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl Supervisor {
    /// A handle on no lifecycled: the daemon's unit tests serve a fake one themselves.
    #[cfg(test)]
    pub fn unsupervised() -> Supervisor {
        Supervisor {
            restarts: Arc::default(),
            pid: watch::channel(0).1,
            stopping: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }
}

/// The pid file is replaced whole, so a reader never sees it empty.
fn write_pid(path: &std::path::Path, pid: u32) {
    let _ = engine_util::fs::write_atomic(path, pid.to_string().as_bytes());
}

fn spawn(cfg: &Config) -> anyhow::Result<Child> {
    let sock = cfg.lifecycled_socket();
    let _ = std::fs::remove_file(&sock);
    let log_path = cfg.exec_root.join("lifecycled.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let mut cmd = Command::new(cfg.lifecycled_bin());
    cmd.arg("--address")
        .arg(&sock)
        .arg("--root")
        .arg(cfg.data_root.join("lifecycle"))
        .arg("--state")
        .arg(cfg.exec_root.join("lifecycle"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // lifecycled outlives a kill -9 of engined: its own process group, no parent-death signal.
        .process_group(0)
        .kill_on_drop(false);
    // lifecycled and the shims it starts send their spans (and the runtime's) to our receiver
    cmd.env(engine_telemetry::otlp::ENV_ENGINE_OTLP, format!("unix://{}", cfg.otlp_receiver_socket().display()));
    cmd.env_remove(engine_telemetry::ENV_SPAN_SINK);
    if let Some((soft, hard)) = crate::starting_nofile_limit() {
        // SAFETY: setrlimit is a plain system call, safe between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)
                    .map_err(std::io::Error::from)
            });
        }
    }
    Ok(cmd.spawn()?)
}

/// Adopts a lifecycled left running by a previous engined (its pid file), or starts one, then
/// keeps it running.
pub async fn start(cfg: Arc<Config>) -> anyhow::Result<Supervisor> {
    let pid_file = cfg.exec_root.join("lifecycled.pid");
    let restarts = Arc::new(AtomicU64::new(0));
    let (tx, rx) = watch::channel(0u32);
    let adopted = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|pid| is_lifecycled(*pid));
    let mut child = None;
    match adopted {
        Some(pid) if cfg.lifecycled_socket().exists() => {
            log!(cfg, "info", "adopting engine-lifecycled pid {pid}");
            tx.send_replace(pid as u32);
        }
        _ => {
            let c = spawn(&cfg)?;
            let pid = c.id().unwrap_or(0);
            write_pid(&pid_file, pid);
            tx.send_replace(pid);
            child = Some(c);
        }
    }
    let restarts2 = restarts.clone();
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping2 = stopping.clone();
    tokio::spawn(async move {
        let mut backoff = BACKOFF_START;
        loop {
            let started = Instant::now();
            let status = match child.take() {
                Some(mut c) => c.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                None => {
                    // Adopted: not our child, so poll for its end.
                    let pid = *tx.borrow() as i32;
                    while is_lifecycled(pid) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    "exited".to_string()
                }
            };
            tx.send_replace(0);
            if stopping2.load(Ordering::SeqCst) {
                return;
            }
            if started.elapsed() > STABLE_AFTER {
                backoff = BACKOFF_START;
            }
            let n = restarts2.fetch_add(1, Ordering::SeqCst) + 1;
            log!(cfg, "warn", "engine-lifecycled {status}; restart {n} in {} ms", backoff.as_millis());
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            match spawn(&cfg) {
                Ok(c) => {
                    let pid = c.id().unwrap_or(0);
                    write_pid(&pid_file, pid);
                    tx.send_replace(pid);
                    child = Some(c);
                }
                Err(e) => log!(cfg, "error", "starting engine-lifecycled: {e}"),
            }
        }
    });
    Ok(Supervisor { restarts, pid: rx, stopping })
}

/// Whether `pid` is a running (not zombie) engine-lifecycled.
fn is_lifecycled(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let comm_ok = stat.contains("(engine-lifecyc"); // comm is cut at 15 characters
    let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
    comm_ok && state != Some('Z')
}

impl Supervisor {
    /// engined stops with live-restore: lifecycled stays running, for the next engined to
    /// adopt by its pid file; it is not restarted from here any more.
    pub fn release(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

/// Stops lifecycled (SIGTERM, then SIGKILL after 10 s) when engined shuts down.
pub async fn stop(cfg: &Config, s: &Supervisor) {
    s.stopping.store(true, Ordering::SeqCst);
    let pid = *s.pid.borrow() as i32;
    if pid <= 0 || !is_lifecycled(pid) {
        return;
    }
    // SAFETY: signals the lifecycled we started or adopted, by pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_lifecycled(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if is_lifecycled(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = std::fs::remove_file(cfg.exec_root.join("lifecycled.pid"));
}
