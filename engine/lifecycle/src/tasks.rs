//! Tasks: the running side of containers. One engine-shim per task, started detached; its
//! exit is watched over the shim's Wait call and published once. After a restart, tasks are
//! found again from their directories under `<state>/tasks/`; a shim that died is cleaned up
//! after (the runtime deletes what it left) and its task reported exited with a reason.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine_api::task::{self, ExitRecord};
use engine_api::v1::shim_client::ShimClient;
use engine_api::v1::*;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::Status;

use crate::events::Journal;
use crate::Config;

/// One task: its shim and what is known of its exit.
pub struct TaskHandle {
    pub id: String,
    pub dir: PathBuf,
    pub client: ShimClient<Channel>,
    pub shim_pid: i32,
    pub pid: AtomicU32,
    pub exit: watch::Sender<Option<ExitStatus>>,
}

impl TaskHandle {
    /// The exit status once the task has exited.
    pub async fn wait(&self) -> ExitStatus {
        let mut rx = self.exit.subscribe();
        let status = rx.wait_for(|e| e.is_some()).await.map(|st| st.clone().unwrap_or_default());
        status.unwrap_or_else(|_| ExitStatus {
            exit_status: 255,
            reason: "lifecycled is shutting down".into(),
            ..Default::default()
        })
    }

    pub fn exited(&self) -> Option<ExitStatus> {
        self.exit.borrow().clone()
    }
}

/// All tasks of this lifecycled.
pub struct TaskManager {
    cfg: Arc<Config>,
    journal: Arc<Journal>,
    tasks: Mutex<HashMap<String, Arc<TaskHandle>>>,
    /// Containers whose task is being created right now (their directory exists already).
    creating: Mutex<std::collections::HashSet<String>>,
}

/// Whether `pid` is a live engine-shim.
pub fn shim_alive(pid: i32) -> bool {
    pid > 0
        && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "engine-shim")
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
}

fn read_exit(dir: &Path) -> Option<ExitStatus> {
    ExitRecord::read(dir).map(ExitStatus::from)
}

fn event(topic: &str, id: &str) -> Event {
    Event { topic: topic.into(), container_id: id.into(), ..Default::default() }
}

impl TaskManager {
    pub fn new(cfg: Arc<Config>, journal: Arc<Journal>) -> TaskManager {
        TaskManager { cfg, journal, tasks: Mutex::new(HashMap::new()), creating: Mutex::new(Default::default()) }
    }

    fn tasks_dir(&self) -> PathBuf {
        self.cfg.state.join("tasks")
    }

    fn runtime_root(&self) -> PathBuf {
        self.cfg.state.join("runtime")
    }

    /// The task of container `id`.
    pub fn get(&self, id: &str) -> Result<Arc<TaskHandle>, Status> {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("container {id} has no task")))
    }

    pub fn exists(&self, id: &str) -> bool {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).contains_key(id)
    }

    /// Starts a shim for container `id` with `bundle` and creates the task in it.
    pub async fn create(
        self: &Arc<Self>,
        id: &str,
        bundle: &str,
        req: &CreateTaskRequest,
        traceparent: Option<&str>,
    ) -> Result<u32, Status> {
        let dir = self.tasks_dir().join(id);
        let stale = {
            let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            let mut creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
            // A task whose shim is gone and whose exit is recorded, or a directory no task
            // owns (a create a crash cut short), is a leftover: it goes, and this create runs.
            let stale = match tasks.get(id) {
                Some(h) => h.exited().is_some() && !shim_alive(h.shim_pid),
                None => !creating.contains(id) && dir.exists(),
            };
            if creating.contains(id) || (tasks.contains_key(id) && !stale) {
                return Err(Status::already_exists(format!("container {id} already has a task")));
            }
            creating.insert(id.to_string());
            stale
        };
        if stale {
            self.remove_leftover(id, &dir).await;
        }
        let result = match std::fs::create_dir_all(&dir) {
            Ok(()) => self.spawn_and_create(id, bundle, &dir, req, traceparent).await,
            Err(e) => Err(Status::internal(format!("create {}: {e}", dir.display()))),
        };
        if result.is_err() {
            // nothing of a failed create stays behind
            self.force_delete(id).await;
            let _ = std::fs::remove_dir_all(&dir);
            self.tasks.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        }
        self.creating.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        result
    }

    /// Removes what an interrupted create or a dead shim left of container `id`'s task: the
    /// shim if it still runs, the container (runtime delete --force), the directory.
    async fn remove_leftover(&self, id: &str, dir: &Path) {
        let shim_pid: i32 =
            std::fs::read_to_string(dir.join("shim.pid")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        if shim_alive(shim_pid) {
            // SAFETY: SIGKILL to the engine-shim of this task, checked by its name just now.
            unsafe { libc::kill(shim_pid, libc::SIGKILL) };
        }
        self.force_delete(id).await;
        let _ = std::fs::remove_dir_all(dir);
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    async fn spawn_and_create(
        self: &Arc<Self>,
        id: &str,
        bundle: &str,
        dir: &Path,
        req: &CreateTaskRequest,
        traceparent: Option<&str>,
    ) -> Result<u32, Status> {
        let shim_log = std::fs::File::create(dir.join(task::SHIM_LOG_FILE))
            .map_err(|e| Status::internal(format!("shim log: {e}")))?;
        let mut cmd = tokio::process::Command::new(&self.cfg.shim);
        cmd.arg("--id").arg(id).arg("--bundle").arg(bundle).arg("--state-dir").arg(dir);
        cmd.arg("--runtime").arg(&self.cfg.runtime).arg("--runtime-root").arg(self.runtime_root());
        cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(shim_log);
        cmd.env_remove(engine_telemetry::ENV_TRACEPARENT);
        // SAFETY: setsid in the forked child before exec: the shim leads its own session, so
        // signals to our process group never reach it.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| Status::internal(format!("start {}: {e}", self.cfg.shim.display())))?;
        let shim_pid = child.id().unwrap_or(0) as i32;
        let stdout = child.stdout.take().ok_or_else(|| Status::internal("shim stdout"))?;
        // reap the shim whenever it exits while we run
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let mut line = String::new();
        let ready =
            tokio::time::timeout(Duration::from_secs(10), tokio::io::BufReader::new(stdout).read_line(&mut line)).await;
        if !matches!(ready, Ok(Ok(_))) || line.trim() != "ready" {
            let log = std::fs::read_to_string(dir.join(task::SHIM_LOG_FILE)).unwrap_or_default();
            // The reason, not a backtrace's last frame: what the shim said on stdout (it may
            // have had no room for its log), its error, a panic's message, or the last line.
            let reason = if let Some(e) = line.trim().strip_prefix("error: ") {
                e.to_string()
            } else if let Some(e) = log.lines().find(|l| l.starts_with("Error: ")) {
                e.trim_start_matches("Error: ").to_string()
            } else if let Some(i) = log.lines().position(|l| l.contains("panicked at")) {
                log.lines().skip(i).take(2).collect::<Vec<_>>().join(": ")
            } else {
                log.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("no output").to_string()
            };
            return Err(Status::internal(format!("engine-shim did not start: {reason}")));
        }
        let client = ShimClient::new(engine_api::unix_channel(task::socket_path(dir)));
        let (exit, _) = watch::channel(None);
        let handle = Arc::new(TaskHandle {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            client,
            shim_pid,
            pid: AtomicU32::new(0),
            exit,
        });
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), handle.clone());
        let shim_req = ShimCreateRequest {
            terminal: req.terminal,
            stdin: req.stdin,
            log_max_size: req.log_max_size,
            log_max_files: req.log_max_files,
        };
        let created = handle
            .client
            .clone()
            .create(engine_api::with_traceparent(tonic::Request::new(shim_req), traceparent))
            .await;
        let pid = match created {
            Ok(r) => r.into_inner().pid,
            Err(status) => {
                let _ = handle.client.clone().shutdown(Empty {}).await;
                return Err(status);
            }
        };
        handle.pid.store(pid, Ordering::SeqCst);
        self.monitor(handle);
        let mut e = event("/tasks/create", id);
        e.pid = pid;
        self.journal.publish(e);
        Ok(pid)
    }

    /// `runtime delete --force ID` off the async threads: kills what is left of a container
    /// whose shim is gone and removes its cgroup and state (idempotent).
    async fn force_delete(&self, id: &str) {
        let (runtime, root, id) = (self.cfg.runtime.clone(), self.runtime_root(), id.to_string());
        let _ = tokio::task::spawn_blocking(move || {
            std::process::Command::new(&runtime)
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &id])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
        })
        .await;
    }

    /// Watches a task until it exits, then publishes the exit (once).
    fn monitor(self: &Arc<Self>, h: Arc<TaskHandle>) {
        let this = self.clone();
        tokio::spawn(async move {
            let status = loop {
                let req = TaskRequest { container_id: h.id.clone(), exec_id: String::new() };
                match h.client.clone().wait(req).await {
                    Ok(r) => break r.into_inner(),
                    Err(_) if shim_alive(h.shim_pid) => tokio::time::sleep(Duration::from_millis(100)).await,
                    Err(_) => break this.after_shim_death(&h).await,
                }
            };
            if status.reason == "OOMKilled" {
                let mut e = event("/tasks/oom", &h.id);
                e.pid = status.pid;
                this.journal.publish(e);
            }
            let mut e = event("/tasks/exit", &h.id);
            e.pid = status.pid;
            e.exit_status = status.exit_status;
            e.reason = status.reason.clone();
            e.time_unix_nanos = status.exited_unix_nanos;
            this.journal.publish(e);
            // send_replace: the value must be kept even while nobody is waiting
            h.exit.send_replace(Some(status));
        });
    }

    /// The shim is gone: use the exit it recorded, or else clean up after it (the runtime
    /// kills and deletes the container) and report the task exited because its shim died.
    async fn after_shim_death(&self, h: &TaskHandle) -> ExitStatus {
        self.force_delete(&h.id).await;
        if let Some(st) = read_exit(&h.dir) {
            return st;
        }
        let _ = std::fs::remove_file(task::socket_path(&h.dir));
        let st = ExitStatus {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_unix_nanos: engine_telemetry::recorder::now_unix_nanos() as i64,
            reason: "shim died; the container was killed".into(),
            pid: h.pid.load(Ordering::SeqCst),
        };
        let _ = ExitRecord::from(&st).write(&h.dir);
        st
    }

    /// Deletes a stopped (or never started) task: the shim deletes the container and exits;
    /// the log moves to `keep_log_in`, the task directory goes.
    pub async fn delete(&self, id: &str, keep_log_in: &Path, traceparent: Option<&str>) -> Result<ExitStatus, Status> {
        let h = self.get(id)?;
        let status = if shim_alive(h.shim_pid) {
            let req = TaskRequest { container_id: id.to_string(), exec_id: String::new() };
            let st = match h
                .client
                .clone()
                .delete(engine_api::with_traceparent(tonic::Request::new(req), traceparent))
                .await
            {
                Ok(st) => st.into_inner(),
                // The shim deleted its container, then the lifecycled that asked died before
                // the shim's shutdown: only the cleanup below is left to do.
                Err(s) if s.code() == tonic::Code::NotFound => h.wait().await,
                Err(s) => return Err(s),
            };
            let _ = h.client.clone().shutdown(Empty {}).await;
            for _ in 0..500 {
                if !shim_alive(h.shim_pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            st
        } else {
            self.force_delete(id).await;
            match h.exited() {
                Some(st) => st,
                None => h.wait().await,
            }
        };
        let _ = std::fs::create_dir_all(keep_log_in);
        for entry in std::fs::read_dir(&h.dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(task::LOG_FILE) {
                let _ = std::fs::rename(entry.path(), keep_log_in.join(&name));
            }
        }
        std::fs::remove_dir_all(&h.dir).map_err(|e| Status::internal(format!("remove {}: {e}", h.dir.display())))?;
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        let mut e = event("/tasks/delete", id);
        e.pid = status.pid;
        e.exit_status = status.exit_status;
        self.journal.publish(e);
        Ok(status)
    }

    /// Finds the tasks a previous lifecycled left: reconnects to live shims and collects the
    /// exits of dead ones.
    pub async fn recover(self: &Arc<Self>) {
        let Ok(entries) = std::fs::read_dir(self.tasks_dir()) else { return };
        for entry in entries.flatten() {
            let dir = entry.path();
            let Some(id) = entry.file_name().to_str().map(str::to_string) else { continue };
            let shim_pid: i32 =
                std::fs::read_to_string(dir.join("shim.pid")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
            let client = ShimClient::new(engine_api::unix_channel(task::socket_path(&dir)));
            let pid = if shim_alive(shim_pid) {
                client
                    .clone()
                    .state(TaskRequest { container_id: id.clone(), exec_id: String::new() })
                    .await
                    .map(|s| s.into_inner().pid)
                    .unwrap_or(0)
            } else {
                std::fs::read_to_string(dir.join("init.pid")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
            };
            if pid == 0 && shim_alive(shim_pid) {
                // A shim whose container was never created (the last lifecycled died between
                // starting it and its create): nothing to recover, nobody to answer; it goes.
                self.remove_leftover(&id, &dir).await;
                continue;
            }
            let (exit, _) = watch::channel(None);
            let handle = Arc::new(TaskHandle { id: id.clone(), dir, client, shim_pid, pid: AtomicU32::new(pid), exit });
            self.tasks.lock().unwrap_or_else(|e| e.into_inner()).insert(id, handle.clone());
            self.monitor(handle);
        }
    }
}
