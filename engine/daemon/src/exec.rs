//! `docker exec`: exec instances (create, start attached or detached, inspect). The process
//! is the container's own process object (capabilities, rlimits, no-new-privileges) with the
//! exec's args, env, working directory, user and terminal; lifecycled runs it in the
//! container through the shim.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use engine_api::v1::*;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::upgrade::OnUpgrade;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use oci_spec::runtime::{LinuxCapabilitiesBuilder, Process, Spec};

use crate::http::{self, empty, ApiError, Resp};
use crate::lifecycle::Lifecycle;
use crate::records::{ContainerStore, Entry};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ExecConfig {
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub tty: bool,
    pub env: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub working_dir: String,
    pub user: String,
    pub privileged: bool,
    /// Go's JSON reads field names in any case: docker-py sends `detachKeys`.
    #[serde(alias = "detachKeys")]
    pub detach_keys: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct StartConfig {
    pub detach: bool,
    pub tty: bool,
}

/// What a command run to its end gave ([`ExecService::run_captured`]).
#[derive(Clone, Debug)]
pub struct Captured {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Why a command of [`ExecService::run_captured`] has no exit code.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RunError {
    #[error("the command did not end in time")]
    TimedOut,
    #[error("{0}")]
    Failed(String),
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> ApiError {
        match e {
            RunError::TimedOut => ApiError { status: StatusCode::GATEWAY_TIMEOUT, message: e.to_string() },
            RunError::Failed(m) => ApiError::internal(m),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ExecInstance {
    pub id: String,
    pub container_id: String,
    pub config: ExecConfig,
    pub running: bool,
    pub started: bool,
    pub exit_code: Option<i64>,
    pub pid: u32,
}

/// The exec instances of running containers and what runs them: the container store (to
/// find a container and its spec) and lifecycled. It knows nothing else of engined.
pub struct ExecService {
    table: Mutex<HashMap<String, ExecInstance>>,
    containers: Arc<ContainerStore>,
    lifecycle: Lifecycle,
}

impl ExecService {
    pub fn new(containers: Arc<ContainerStore>, lifecycle: Lifecycle) -> Arc<ExecService> {
        Arc::new(ExecService { table: Mutex::default(), containers, lifecycle })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, ExecInstance>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str) -> Result<ExecInstance, ApiError> {
        self.table().get(id).cloned().ok_or_else(|| ApiError::not_found(format!("No such exec instance: {id}")))
    }

    /// Drops the exec instances of a removed container.
    pub fn forget_container(&self, container_id: &str) {
        self.table().retain(|_, e| e.container_id != container_id);
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut ExecInstance)) {
        if let Some(e) = self.table().get_mut(id) {
            f(e);
        }
    }

    /// `POST /containers/{id}/exec`: a new exec instance of running container `e`; its id.
    pub fn create(&self, e: &Entry, config: ExecConfig) -> Result<String, ApiError> {
        let rec = e.snapshot();
        if !rec.state.running() {
            return Err(ApiError::conflict(format!("Container {} is not running", rec.id)));
        }
        if rec.state.paused() {
            return Err(ApiError::conflict(format!(
                "Container {} is paused, unpause the container before exec",
                rec.id
            )));
        }
        if config.cmd.as_ref().is_none_or(|c| c.is_empty()) {
            return Err(ApiError::bad_request("No exec command specified"));
        }
        let id = crate::http::new_id()?;
        let inst = ExecInstance {
            id: id.clone(),
            container_id: rec.id,
            config,
            running: false,
            started: false,
            exit_code: None,
            pid: 0,
        };
        self.table().insert(id.clone(), inst);
        Ok(id)
    }

    /// Runs `cmd` in running container `e` to its end with no client attached (a health
    /// check, the CRI's ExecSync: `kind` starts its exec id), within `timeout`: its exit code
    /// and output. One that
    /// overruns (or whose start is not answered in time) is killed; the exec's record in the
    /// shim goes either way.
    pub async fn run_captured(
        &self,
        e: &Entry,
        kind: &str,
        cmd: Vec<String>,
        timeout: std::time::Duration,
    ) -> Result<Captured, RunError> {
        let config = ExecConfig { cmd: Some(cmd), ..Default::default() };
        let (req, task) = self.unattended(e, kind, &config)?;
        // the start and the wait share the timeout (a container frozen meanwhile never answers)
        let deadline = tokio::time::Instant::now() + timeout;
        let result = match tokio::time::timeout_at(deadline, self.lifecycle.exec(req)).await {
            Ok(Ok(_)) => match tokio::time::timeout_at(deadline, self.lifecycle.exec_wait(task.clone())).await {
                Ok(Ok(out)) => Ok(Captured {
                    exit_code: out.status.map_or(-1, |s| s.exit_status as i32),
                    stdout: out.stdout,
                    stderr: out.stderr,
                }),
                Ok(Err(s)) if s.code() == tonic::Code::DeadlineExceeded => Err(RunError::TimedOut),
                Ok(Err(s)) => Err(RunError::Failed(s.message().to_string())),
                Err(_) => Err(RunError::TimedOut),
            },
            Ok(Err(s)) => Err(RunError::Failed(s.message().to_string())),
            Err(_) => Err(RunError::TimedOut),
        };
        self.forget_unattended(task, result.is_err()).await;
        result
    }

    /// The exec and task requests of an exec with no exec instance (`kind` starts its id).
    fn unattended(&self, e: &Entry, kind: &str, config: &ExecConfig) -> Result<(ExecRequest, TaskRequest), RunError> {
        let rec = e.snapshot();
        let process = self
            .process(e, config)
            .and_then(|p| serde_json::to_string(&p).map_err(|err| ApiError::internal(err.to_string())))
            .map_err(|err| RunError::Failed(err.message))?;
        let exec_id =
            http::new_id().map(|id| format!("{kind}-{}", &id[..16])).map_err(|err| RunError::Failed(err.message))?;
        let task = TaskRequest { container_id: rec.id.clone(), exec_id: exec_id.clone() };
        let req = ExecRequest { container_id: rec.id, exec_id, process_json: process, stdin: config.attach_stdin };
        Ok((req, task))
    }

    /// Removes an exec of [`ExecService::unattended`] from the shim; one that `failed` (or was
    /// abandoned) is killed first: whatever is left of it goes (a start that was not answered
    /// may have run it), and is gone when this returns.
    async fn forget_unattended(&self, task: TaskRequest, failed: bool) {
        let five = std::time::Duration::from_secs(5);
        if failed {
            let kill = KillRequest {
                container_id: task.container_id.clone(),
                exec_id: task.exec_id.clone(),
                signal: 9,
                all: false,
            };
            if let Ok(Ok(_)) = tokio::time::timeout(five, self.lifecycle.kill(kill)).await {
                let _ = tokio::time::timeout(five, self.lifecycle.exec_wait(task.clone())).await;
            }
        }
        let _ = tokio::time::timeout(five, self.lifecycle.delete_task(task)).await;
    }

    /// Runs `cmd` in running container `e` with a client's streams (the CRI's streamed Exec;
    /// `kind` starts its exec id): its output to them as it comes (all on stdout with a
    /// terminal), their input to its stdin (closed at the input's end), the client's terminal
    /// sizes to its terminal; its exit code once it ended and its output was handed over. A
    /// client that goes away first takes the process with it (SIGKILL), as containerd does.
    pub async fn run_streamed(
        &self,
        e: &Entry,
        kind: &str,
        cmd: Vec<String>,
        tty: bool,
        mut io: engine_streaming::Io,
    ) -> Result<i32, RunError> {
        let rec = e.snapshot();
        if !rec.state.running() {
            return Err(RunError::Failed(format!("container {} is not running", rec.id)));
        }
        let stdin = io.stdin.take();
        let config = ExecConfig { cmd: Some(cmd), tty, attach_stdin: stdin.is_some(), ..Default::default() };
        let (req, task) = self.unattended(e, kind, &config)?;
        let ran = self.stream_exec(req, task.clone(), tty, stdin, &mut io).await;
        // failed, or the client went first: whatever runs of it goes
        self.forget_unattended(task, !matches!(ran, Ok(Some(_)))).await;
        match ran {
            Ok(Some(code)) => Ok(code),
            Ok(None) => Err(RunError::Failed("the client went away".into())),
            Err(s) => Err(RunError::Failed(s.message().to_string())),
        }
    }

    /// [`ExecService::run_streamed`]'s exec from its start to its exit code; `None` if the client
    /// went away first.
    async fn stream_exec(
        &self,
        req: ExecRequest,
        task: TaskRequest,
        tty: bool,
        stdin: Option<tokio::sync::mpsc::Receiver<Bytes>>,
        io: &mut engine_streaming::Io,
    ) -> Result<Option<i32>, tonic::Status> {
        self.lifecycle.exec(req).await?;
        let mut output = self.lifecycle.exec_io(task.clone()).await?;
        let (stdout, stderr, sizes) = (io.stdout.as_ref(), io.stderr.as_ref(), io.resize.as_mut());
        let out = async {
            while let Ok(Some(chunk)) = output.message().await {
                let to = if chunk.stream == "stderr" && !tty { stderr } else { stdout };
                if let Some(to) = to {
                    if !chunk.data.is_empty() && to.send(Bytes::from(chunk.data)).await.is_err() {
                        return false;
                    }
                }
            }
            true
        };
        let input = async {
            if let Some(mut stdin) = stdin {
                while let Some(data) = stdin.recv().await {
                    let w = WriteRequest {
                        container_id: task.container_id.clone(),
                        data: data.to_vec(),
                        exec_id: task.exec_id.clone(),
                    };
                    let _ = self.lifecycle.write(w).await;
                }
                let _ = self.lifecycle.close_io(task.clone()).await;
            }
            std::future::pending::<()>().await
        };
        let resize = async {
            if let Some(sizes) = sizes {
                while let Some(s) = sizes.recv().await {
                    let r = ResizePtyRequest {
                        container_id: task.container_id.clone(),
                        width: u32::from(s.width),
                        height: u32::from(s.height),
                        exec_id: task.exec_id.clone(),
                    };
                    let _ = self.lifecycle.resize_pty(r).await;
                }
            }
            std::future::pending::<()>().await
        };
        let drained = tokio::select! {
            d = out => d,
            _ = input => false,
            _ = resize => false,
        };
        if !drained {
            return Ok(None);
        }
        let status = self.lifecycle.exec_wait(task).await?.status;
        Ok(Some(status.map_or(-1, |s| s.exit_status as i32)))
    }

    /// `GET /exec/{id}/json`, in Docker's shape.
    pub fn inspect(&self, id: &str) -> Result<Value, ApiError> {
        let i = self.get(id)?;
        Ok(json!({
            "ID": i.id,
            "ContainerID": i.container_id,
            "Running": i.running,
            "ExitCode": i.exit_code,
            "Pid": i.pid,
            "OpenStdin": i.config.attach_stdin,
            "OpenStdout": i.config.attach_stdout,
            "OpenStderr": i.config.attach_stderr,
            "CanRemove": false,
            "DetachKeys": "",
            "ProcessConfig": {
                "tty": i.config.tty,
                "entrypoint": i.config.cmd.as_ref().and_then(|c| c.first()),
                "arguments": i.config.cmd.as_ref().map(|c| c[1..].to_vec()).unwrap_or_default(),
                "privileged": i.config.privileged,
                "user": i.config.user,
            },
        }))
    }

    /// The OCI process of an exec in container `e`: the container's own (capabilities, rlimits,
    /// no-new-privileges, ...) with the exec's args, terminal, env, working directory and user;
    /// `--privileged` gives it every capability the container may hold.
    pub fn process(&self, e: &Entry, c: &ExecConfig) -> Result<Process, ApiError> {
        let rec = e.snapshot();
        let spec_path = self.containers.dir(&rec.id).join("config.json");
        let spec = Spec::load(&spec_path)
            .map_err(|err| ApiError::internal(format!("reading {}: {err}", spec_path.display())))?;
        let mut p = spec.process().clone().ok_or_else(|| ApiError::internal("the container's spec has no process"))?;
        p.set_args(Some(c.cmd.clone().unwrap_or_default()));
        p.set_terminal(Some(c.tty));
        let mut env = p.env().clone().unwrap_or_default();
        for kv in c.env.iter().flatten() {
            let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            env.retain(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) != key);
            if kv.contains('=') {
                env.push(kv.clone());
            }
        }
        p.set_env(Some(env));
        if !c.working_dir.is_empty() {
            if !c.working_dir.starts_with('/') {
                return Err(ApiError::bad_request(format!(
                    "the working directory {:?} is invalid, it needs to be an absolute path",
                    c.working_dir
                )));
            }
            p.set_cwd(c.working_dir.clone().into());
        }
        if !c.user.is_empty() {
            let u = engine_image::spec::resolve_user(&rec.rootfs, &c.user)
                .map_err(|err| ApiError::bad_request(err.to_string()))?;
            let user = p.user_mut();
            user.set_uid(u.uid);
            user.set_gid(u.gid);
            user.set_additional_gids(Some(u.additional_gids));
        }
        if c.privileged {
            let all = p.capabilities().as_ref().and_then(|caps| caps.bounding().clone()).unwrap_or_default();
            let caps = LinuxCapabilitiesBuilder::default()
                .bounding(all.clone())
                .effective(all.clone())
                .permitted(all)
                .build()
                .map_err(|err| ApiError::internal(err.to_string()))?;
            p.set_capabilities(Some(caps));
        }
        Ok(p)
    }

    /// `POST /exec/{id}/start`: detached, it returns once the process runs; attached, the
    /// connection is hijacked: the process's output streams to it as it comes (raw with a
    /// terminal, multiplexed without), what the client writes goes to its stdin, and the stream
    /// ends once the exit code is known (the CLI asks for it next).
    ///
    /// `upgrade` is the connection when the client asked to hijack it.
    pub async fn start(
        self: &Arc<Self>,
        id: &str,
        start: StartConfig,
        upgrade: Option<OnUpgrade>,
    ) -> Result<Resp, ApiError> {
        let inst = self.get(id)?;
        if inst.started {
            return Err(ApiError::conflict(format!("Error: Exec command {id} has already run")));
        }
        let e = self.containers.find(&inst.container_id)?;
        if !e.snapshot().state.running() {
            return Err(ApiError::conflict(format!("Container {} is not running", inst.container_id)));
        }
        // As dockerd: the process has a terminal if the exec was created with one; the stream is raw
        // if the start asks for a terminal, multiplexed (8-byte headers) otherwise.
        let config = inst.config.clone();
        let mut escape = crate::detach::Escape::new(crate::detach::parse(&config.detach_keys)?);
        let raw = start.tty;
        let stdin = config.attach_stdin && !start.detach;
        let process_json =
            serde_json::to_string(&self.process(&e, &config)?).map_err(|err| ApiError::internal(err.to_string()))?;
        let lifecycle = self.lifecycle.clone();
        let exec_req =
            ExecRequest { container_id: inst.container_id.clone(), exec_id: id.to_string(), process_json, stdin };
        let task_req = TaskRequest { container_id: inst.container_id.clone(), exec_id: id.to_string() };
        self.update(id, |i| i.started = true); // one start only, from here on
                                               // Runs the process; one that cannot start gets dockerd's exit code (127 not found, else 126).
        let run = {
            let (this, id, lifecycle) = (self.clone(), id.to_string(), lifecycle.clone());
            async move {
                match lifecycle.exec(exec_req).await {
                    Ok(r) => {
                        this.update(&id, |i| {
                            i.running = true;
                            i.pid = r.pid;
                        });
                        Ok(())
                    }
                    Err(s) => {
                        // dockerd's code for an exec that cannot start, whatever the reason
                        let code = 126;
                        this.update(&id, |i| i.exit_code = Some(code));
                        Err(ApiError::from(s))
                    }
                }
            }
        };
        // Records the exit code once the exec ends.
        let finish = {
            let this = self.clone();
            let id = id.to_string();
            let lifecycle = lifecycle.clone();
            let task_req = task_req.clone();
            async move {
                let code = lifecycle
                    .exec_wait(task_req)
                    .await
                    .ok()
                    .and_then(|o| o.status)
                    .map(|s| s.exit_status as i64)
                    .unwrap_or(126);
                this.update(&id, |i| {
                    i.running = false;
                    i.exit_code = Some(code);
                });
            }
        };
        if start.detach {
            run.await?;
            tokio::spawn(finish);
            return Ok(empty(StatusCode::OK));
        }
        let (want_out, want_err) = (config.attach_stdout, config.attach_stderr);
        let encode = move |c: IoChunk| -> Option<Bytes> {
            let is_err = c.stream == "stderr";
            if (is_err && !want_err) || (!is_err && !want_out) || c.data.is_empty() {
                return None;
            }
            Some(if raw { Bytes::from(c.data) } else { http::frame(if is_err { 2 } else { 1 }, &c.data) })
        };
        let ct = if raw { "application/vnd.docker.raw-stream" } else { "application/vnd.docker.multiplexed-stream" };
        let Some(upgrade) = upgrade else {
            // Not hijacked: the process runs first (a failure is still an answer); its output is the
            // response body.
            run.await?;
            let mut output = lifecycle.exec_io(task_req).await?;
            let (tx, body) = http::channel_body(16);
            tokio::spawn(async move {
                while let Ok(Some(chunk)) = output.message().await {
                    if let Some(b) = encode(chunk) {
                        if tx.send(b).await.is_err() {
                            break;
                        }
                    }
                }
                finish.await;
            });
            let mut r = Resp::new(body);
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            return Ok(r);
        };
        crate::trace::spawn_in_operation(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
            // The answer's head is out; only now the process runs (dockerd's order). Output sent
            // right behind the head is lost to a client that reads the head through a buffer and the
            // rest from the socket, as docker-py does: a short exec's output came back empty.
            if let Err(err) = run.await {
                // as dockerd: the reason on the stream, as stdout, then the end
                let reason = IoChunk {
                    stream: "stdout".into(),
                    data: format!("{}\r\n", exec_failure(&err.message)).into_bytes(),
                };
                if let Some(b) = encode(reason) {
                    let _ = wr.write_all(&b).await;
                }
                let _ = wr.shutdown().await;
                return;
            }
            let mut output = match lifecycle.exec_io(task_req.clone()).await {
                Ok(o) => o,
                Err(_) => {
                    finish.await;
                    let _ = wr.shutdown().await;
                    return;
                }
            };
            let out = async {
                while let Ok(Some(chunk)) = output.message().await {
                    if let Some(b) = encode(chunk) {
                        if wr.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                }
                finish.await;
                let _ = wr.shutdown().await;
            };
            let input = async {
                if !stdin {
                    return std::future::pending::<()>().await;
                }
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match tokio::io::AsyncReadExt::read(&mut rd, &mut buf).await {
                        Ok(0) | Err(_) => {
                            let _ = lifecycle.close_io(task_req.clone()).await;
                            return std::future::pending::<()>().await;
                        }
                        Ok(n) => {
                            // the detach keys end the attach to a process with a terminal
                            let (data, detach) = match escape.feed(&buf[..n]) {
                                crate::detach::Fed::Forward(data) if config.tty => (data, false),
                                crate::detach::Fed::Detach(data) if config.tty => (data, true),
                                _ => (buf[..n].to_vec(), false),
                            };
                            if !data.is_empty() {
                                let w = WriteRequest {
                                    container_id: task_req.container_id.clone(),
                                    data,
                                    exec_id: task_req.exec_id.clone(),
                                };
                                let _ = lifecycle.write(w).await;
                            }
                            if detach {
                                return;
                            }
                        }
                    }
                }
            };
            tokio::select! {
                _ = out => {}
                _ = input => {}
            }
        });
        let mut r = empty(StatusCode::SWITCHING_PROTOCOLS);
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        r.headers_mut().insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        r.headers_mut().insert(UPGRADE, HeaderValue::from_static("tcp"));
        Ok(r)
    }

    /// `POST /exec/{id}/resize`.
    pub async fn resize(&self, id: &str, h: i64, w: i64) -> Result<Resp, ApiError> {
        let inst = self.get(id)?;
        let req = ResizePtyRequest {
            container_id: inst.container_id,
            width: w as u32,
            height: h as u32,
            exec_id: id.to_string(),
        };
        self.lifecycle.resize_pty(req).await?;
        Ok(empty(StatusCode::OK))
    }
}

/// The words dockerd puts on an exec's stream when its process could not be started: the OCI
/// runtime's reason, as runc words a failed exec (`exec failed: unable to start container
/// process: exec: "x": executable file not found in $PATH`), in dockerd's frame.
fn exec_failure(reason: &str) -> String {
    match reason.strip_prefix("container init: ") {
        Some(why) => format!("OCI runtime exec failed: exec failed: unable to start container process: {why}: unknown"),
        None => format!("OCI runtime exec failed: {reason}: unknown"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failed_exec_is_told_in_dockerds_words() {
        assert_eq!(
            super::exec_failure("container init: exec: \"x\": executable file not found in $PATH"),
            "OCI runtime exec failed: exec failed: unable to start container process: exec: \"x\": executable file not found in $PATH: unknown"
        );
        assert_eq!(super::exec_failure("no such process"), "OCI runtime exec failed: no such process: unknown");
    }

    use std::path::Path;
    use std::time::Duration;

    use oci_spec::runtime::Capability;

    use super::*;
    use crate::testing::{self, FakeTasks};

    struct Setup {
        _dir: tempfile::TempDir,
        fake: FakeTasks,
        execs: Arc<ExecService>,
        running: Arc<Entry>,
        stopped: Arc<Entry>,
    }

    /// An exec service over a store with a running and a stopped container, and a fake lifecycled.
    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\nweb:x:1000:1001::/:/bin/sh\n").unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\nweb:x:1001:\nwheel:x:10:web\n").unwrap();
        let (store, _) = ContainerStore::open(dir.path().join("containers")).unwrap();
        let store = Arc::new(store);
        let mut spec = Spec::default();
        let mut process = spec.process().clone().unwrap();
        process.set_env(Some(vec!["PATH=/bin".into(), "KEEP=1".into(), "DROP=1".into(), "SET=old".into()]));
        spec.set_process(Some(process));
        let mut rec = testing::record("c1", "web", &rootfs);
        rec.state.start(77, "2026-01-01T00:00:01Z".into());
        let running = testing::insert(&store, rec, &spec);
        let stopped = testing::insert(&store, testing::record("c2", "db", &rootfs), &spec);
        let fake = FakeTasks::default();
        let sock = fake.serve(dir.path());
        let execs = ExecService::new(store, Lifecycle::new(&sock));
        Setup { _dir: dir, fake, execs, running, stopped }
    }

    fn config(cmd: &[&str]) -> ExecConfig {
        ExecConfig { cmd: Some(cmd.iter().map(|s| s.to_string()).collect()), ..Default::default() }
    }

    /// Polls `inspect` until `done` holds of it (5 s at most).
    async fn inspect_until(execs: &ExecService, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let v = execs.inspect(id).unwrap();
            if done(&v) || tokio::time::Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_detached_exec_runs_the_containers_process_with_its_overrides_and_records_its_exit() {
        let s = setup();
        let c = ExecConfig {
            env: Some(vec!["SET=new".into(), "DROP".into(), "ADD=1".into()]),
            working_dir: "/tmp".into(),
            user: "web".into(),
            privileged: true,
            tty: true,
            ..config(&["sh", "-c", "exit 3"])
        };
        let id = s.execs.create(&s.running, c).unwrap();
        let before = s.execs.inspect(&id).unwrap();
        assert_eq!(before["Running"], false);
        assert_eq!(before["ExitCode"], Value::Null);
        assert_eq!(before["ProcessConfig"]["entrypoint"], "sh");
        assert_eq!(before["ProcessConfig"]["arguments"], json!(["-c", "exit 3"]));

        let r = s.execs.start(&id, StartConfig { detach: true, tty: false }, None).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let running = s.execs.inspect(&id).unwrap();
        assert_eq!((running["Running"].clone(), running["Pid"].clone()), (json!(true), json!(4242)));

        // what lifecycled was asked to run: the container's process with the exec's overrides
        let sent = s.fake.execs.lock().unwrap().clone();
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].container_id.as_str(), sent[0].exec_id.as_str()), ("c1", id.as_str()));
        assert!(!sent[0].stdin, "a detached exec has no stdin");
        let p: Process = serde_json::from_str(&sent[0].process_json).unwrap();
        assert_eq!(p.args().clone().unwrap(), ["sh", "-c", "exit 3"]);
        assert_eq!(p.terminal(), Some(true));
        assert_eq!(p.env().clone().unwrap(), ["PATH=/bin", "KEEP=1", "SET=new", "ADD=1"]);
        assert_eq!(p.cwd(), Path::new("/tmp"));
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1001));
        assert_eq!(p.user().additional_gids().clone().unwrap(), [1001, 10]);
        let caps = p.capabilities().clone().unwrap();
        let bounding = caps.bounding().clone().unwrap();
        assert!(bounding.contains(&Capability::Kill));
        assert_eq!(caps.effective().clone().unwrap(), bounding);
        assert_eq!(caps.permitted().clone().unwrap(), bounding);

        // it ends: the exit code is recorded and it runs no more
        s.fake.exec_exits.add_permits(1);
        let done = inspect_until(&s.execs, &id, |v| v["Running"] == false).await;
        assert_eq!(done["Running"], false, "{done}");
        assert_eq!(done["ExitCode"], 3);

        // one start only
        let again = s.execs.start(&id, StartConfig { detach: true, tty: false }, None).await.unwrap_err();
        assert_eq!(again.status, StatusCode::CONFLICT);
        assert_eq!(s.fake.execs.lock().unwrap().len(), 1);

        // resize goes to lifecycled with the exec's id; the container's execs go with it
        s.execs.resize(&id, 24, 80).await.unwrap();
        let resized = s.fake.resizes.lock().unwrap().clone();
        assert_eq!((resized[0].exec_id.as_str(), resized[0].height, resized[0].width), (id.as_str(), 24, 80));
        s.execs.forget_container("c1");
        assert_eq!(s.execs.inspect(&id).unwrap_err().status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn bad_execs_are_refused_before_lifecycled_is_asked() {
        let s = setup();
        let err = |r: Result<String, ApiError>| r.unwrap_err().status;
        assert_eq!(err(s.execs.create(&s.stopped, config(&["true"]))), StatusCode::CONFLICT);
        assert_eq!(err(s.execs.create(&s.running, config(&[]))), StatusCode::BAD_REQUEST);
        assert_eq!(err(s.execs.create(&s.running, ExecConfig::default())), StatusCode::BAD_REQUEST);

        let start = |id: String| {
            let execs = s.execs.clone();
            async move { execs.start(&id, StartConfig { detach: true, tty: false }, None).await.unwrap_err() }
        };
        assert_eq!(start("nope".into()).await.status, StatusCode::NOT_FOUND);
        let relative = ExecConfig { working_dir: "tmp".into(), ..config(&["true"]) };
        let id = s.execs.create(&s.running, relative).unwrap();
        let e = start(id).await;
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.message);
        assert!(e.message.contains("absolute path"), "{}", e.message);
        let id = s.execs.create(&s.running, ExecConfig { user: "nobody".into(), ..config(&["true"]) }).unwrap();
        assert_eq!(start(id).await.status, StatusCode::BAD_REQUEST);
        assert!(s.fake.execs.lock().unwrap().is_empty(), "lifecycled was asked to run a bad exec");

        // a program that is not there: the start fails and the exec gets dockerd's 126 (20.10's
        // for any exec that cannot start)
        let id = s.execs.create(&s.running, config(&["missing"])).unwrap();
        let e = start(id.clone()).await;
        assert!(e.message.contains("executable file not found"), "{}", e.message);
        let v = s.execs.inspect(&id).unwrap();
        assert_eq!((v["ExitCode"].clone(), v["Running"].clone()), (json!(126), json!(false)));
    }
}
