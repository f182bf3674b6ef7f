//! `docker exec`: exec instances (create, start attached or detached, inspect). The process
//! is the container's own process object (capabilities, rlimits, no-new-privileges) with the
//! exec's args, env, working directory, user and terminal; lifecycled runs it in the
//! container through the shim.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use engine_api::v1::*;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::daemon::{Daemon, Entry};
use crate::http::{self, empty, json, ApiError, Resp};

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
    pub detach_keys: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct StartConfig {
    pub detach: bool,
    pub tty: bool,
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

#[derive(Default)]
pub struct Execs(Mutex<HashMap<String, ExecInstance>>);

impl Execs {
    fn get(&self, id: &str) -> Result<ExecInstance, ApiError> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("No such exec instance: {id}")))
    }
    /// Drops the exec instances of a removed container.
    pub fn forget_container(&self, container_id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, e| e.container_id != container_id);
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut ExecInstance)) {
        if let Some(e) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get_mut(id) {
            f(e);
        }
    }
}

pub fn create(d: &Daemon, e: &Arc<Entry>, config: ExecConfig) -> Result<Resp, ApiError> {
    let rec = e.snapshot();
    if !rec.state.running() {
        return Err(ApiError::conflict(format!("Container {} is not running", rec.id)));
    }
    if rec.state.paused() {
        return Err(ApiError::conflict(format!("Container {} is paused, unpause the container before exec", rec.id)));
    }
    if config.cmd.as_ref().is_none_or(|c| c.is_empty()) {
        return Err(ApiError::bad_request("No exec command specified"));
    }
    let id = crate::daemon::random_id()?;
    let inst = ExecInstance {
        id: id.clone(),
        container_id: rec.id,
        config,
        running: false,
        started: false,
        exit_code: None,
        pid: 0,
    };
    d.execs.0.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), inst);
    Ok(json(StatusCode::CREATED, &json!({ "Id": id })))
}

pub fn inspect(d: &Daemon, id: &str) -> Result<Resp, ApiError> {
    let i = d.execs.get(id)?;
    Ok(json(
        StatusCode::OK,
        &json!({
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
        }),
    ))
}

/// The OCI process of the exec: the container's, with the exec's overrides.
fn process_json(d: &Daemon, e: &Entry, c: &ExecConfig) -> Result<String, ApiError> {
    let rec = e.snapshot();
    let spec_path = d.container_dir(&rec.id).join("config.json");
    let spec: Value = serde_json::from_slice(
        &std::fs::read(&spec_path)
            .map_err(|err| ApiError::internal(format!("reading {}: {err}", spec_path.display())))?,
    )
    .map_err(|err| ApiError::internal(err.to_string()))?;
    let mut p = spec["process"].clone();
    p["args"] = json!(c.cmd.clone().unwrap_or_default());
    p["terminal"] = json!(c.tty);
    let mut env: Vec<String> = p["env"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    for kv in c.env.iter().flatten() {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        env.retain(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) != key);
        if kv.contains('=') {
            env.push(kv.clone());
        }
    }
    p["env"] = json!(env);
    if !c.working_dir.is_empty() {
        if !c.working_dir.starts_with('/') {
            return Err(ApiError::bad_request(format!(
                "the working directory {:?} is invalid, it needs to be an absolute path",
                c.working_dir
            )));
        }
        p["cwd"] = json!(c.working_dir);
    }
    if !c.user.is_empty() {
        let u = engine_image::spec::resolve_user(&rec.rootfs, &c.user)
            .map_err(|err| ApiError::bad_request(err.to_string()))?;
        p["user"] = json!({ "uid": u.uid, "gid": u.gid, "additionalGids": u.additional_gids });
    }
    if c.privileged {
        let all = spec["process"]["capabilities"]["bounding"].clone();
        p["capabilities"] = json!({ "bounding": all, "effective": all, "permitted": all });
    }
    serde_json::to_string(&p).map_err(|err| ApiError::internal(err.to_string()))
}

/// `POST /exec/{id}/start`: detached, it returns once the process runs; attached, the
/// connection is hijacked: the process's output streams to it as it comes (raw with a
/// terminal, multiplexed without), what the client writes goes to its stdin, and the stream
/// ends once the exit code is known (the CLI asks for it next).
pub async fn start(d: &Arc<Daemon>, id: &str, mut req: Request<http::RequestBody>) -> Result<Resp, ApiError> {
    let inst = d.execs.get(id)?;
    if inst.started {
        return Err(ApiError::conflict(format!("Error: Exec command {id} has already run")));
    }
    let upgrade = req.headers().get(UPGRADE).is_some().then(|| hyper::upgrade::on(&mut req));
    let start: StartConfig = http::read_json(req.into_body()).await?;
    let e = d.containers.find(&inst.container_id)?;
    if !e.snapshot().state.running() {
        return Err(ApiError::conflict(format!("Container {} is not running", inst.container_id)));
    }
    // As dockerd: the process has a terminal if the exec was created with one; the stream is raw
    // if the start asks for a terminal, multiplexed (8-byte headers) otherwise.
    let config = inst.config.clone();
    let raw = start.tty;
    let stdin = config.attach_stdin && !start.detach;
    let process_json = process_json(d, &e, &config)?;
    let lifecycle = d.lifecycle.clone();
    let exec_req =
        ExecRequest { container_id: inst.container_id.clone(), exec_id: id.to_string(), process_json, stdin };
    let task_req = TaskRequest { container_id: inst.container_id.clone(), exec_id: id.to_string() };
    d.execs.update(id, |i| i.started = true); // one start only, from here on
                                              // Runs the process; one that cannot start gets dockerd's exit code (127 not found, else 126).
    let run = {
        let (d, id, lifecycle) = (d.clone(), id.to_string(), lifecycle.clone());
        async move {
            match lifecycle.exec(exec_req).await {
                Ok(r) => {
                    d.execs.update(&id, |i| {
                        i.running = true;
                        i.pid = r.pid;
                    });
                    Ok(())
                }
                Err(s) => {
                    let code = crate::daemon::start_failure_code(s.message()).unwrap_or(126);
                    d.execs.update(&id, |i| i.exit_code = Some(code));
                    Err(ApiError::from(s))
                }
            }
        }
    };
    // Records the exit code once the exec ends.
    let finish = {
        let d = d.clone();
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
            d.execs.update(&id, |i| {
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
            let reason = IoChunk { stream: "stdout".into(), data: format!("{}\r\n", err.message).into_bytes() };
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
                        let w = WriteRequest {
                            container_id: task_req.container_id.clone(),
                            data: buf[..n].to_vec(),
                            exec_id: task_req.exec_id.clone(),
                        };
                        let _ = lifecycle.write(w).await;
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
pub async fn resize(d: &Arc<Daemon>, id: &str, h: i64, w: i64) -> Result<Resp, ApiError> {
    let inst = d.execs.get(id)?;
    let req = ResizePtyRequest {
        container_id: inst.container_id,
        width: w as u32,
        height: h as u32,
        exec_id: id.to_string(),
    };
    d.lifecycle.resize_pty(req).await?;
    Ok(empty(StatusCode::OK))
}
