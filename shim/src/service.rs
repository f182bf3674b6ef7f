//! The shim's gRPC service over its unix socket, and the one container it keeps.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use engine_api::task::{self, ExitRecord};
use engine_api::v1::shim_server::{Shim, ShimServer};
use engine_api::v1::*;
use engine_telemetry::{Recorder, SpanHandle};
use engine_util::fs::write_atomic;
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch};
use tonic::{Request, Response, Status};

use crate::log::JsonLog;
use crate::reaper::Reaper;
use crate::runtime::{RuntimeCli, Stdio3};

/// Command line of `engine-shim` (lifecycled starts it).
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "engine-shim", version, about = "Keeps one container: its stdio, log and exit status")]
pub struct Config {
    /// Container id.
    #[arg(long)]
    pub id: String,
    /// OCI bundle directory.
    #[arg(long)]
    pub bundle: PathBuf,
    /// This container's directory for the shim's socket, log, exit file and pid files.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// The OCI runtime binary.
    #[arg(long, default_value = "engine-runtime")]
    pub runtime: PathBuf,
    /// The runtime's --root.
    #[arg(long)]
    pub runtime_root: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    New,
    Created,
    Running,
    Paused,
    Stopped,
    Deleted,
}

struct ExecProcess {
    pid: i32,
    exit: watch::Receiver<Option<ExitStatus>>,
    output: Arc<Mutex<(Vec<u8>, Vec<u8>)>>,
    drained: watch::Receiver<bool>,
    io: Arc<Mutex<ExecIo>>,
    stdin: Option<File>,
    master: Option<Arc<OwnedFd>>,
}

/// An exec's output as it comes: kept (up to `MAX_EXEC_OUTPUT`) for late readers and
/// `ExecWait`, and sent on to every `ExecIO` stream.
#[derive(Default)]
struct ExecIo {
    chunks: Vec<IoChunk>,
    kept: usize,
    readers: Vec<tokio::sync::mpsc::UnboundedSender<Result<IoChunk, Status>>>,
    done: bool,
}

const MAX_EXEC_OUTPUT: usize = 1 << 20;

impl ExecIo {
    fn push(&mut self, stream: &str, data: &[u8]) {
        let chunk = IoChunk { stream: stream.to_string(), data: data.to_vec() };
        self.readers.retain(|r| r.send(Ok(chunk.clone())).is_ok());
        if self.kept < MAX_EXEC_OUTPUT {
            self.kept += data.len();
            self.chunks.push(chunk);
        }
    }
}

/// Receives the pty master a runtime process sends over the console socket.
async fn receive_console(listener: tokio::net::UnixListener) -> std::io::Result<OwnedFd> {
    let (conn, _) = listener.accept().await?;
    loop {
        conn.readable().await?;
        let got = conn.try_io(tokio::io::Interest::READABLE, || engine_api::task::receive_fd(conn.as_fd()));
        match got {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

struct Inner {
    phase: Phase,
    pid: i32,
    terminal: bool,
    master: Option<Arc<OwnedFd>>,
    stdin: Option<File>,
    execs: HashMap<String, ExecProcess>,
}

/// The gRPC service of one shim.
pub struct ShimService {
    cfg: Config,
    rt: RuntimeCli,
    inner: Arc<Mutex<Inner>>,
    exit_tx: Arc<watch::Sender<Option<ExitStatus>>>,
    sink: Option<engine_telemetry::Sink>,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
}

fn now_nanos() -> i64 {
    engine_telemetry::recorder::now_unix_nanos() as i64
}

/// Sets the window size (rows, columns) of the terminal `fd`.
fn set_window_size(fd: std::os::fd::BorrowedFd<'_>, rows: u16, cols: u16) -> std::io::Result<()> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// How long a stream may stay quiet after output that ends without a newline before that output
/// goes to the log as a partial line: a prompt, or `echo -n`, reaches an attached client and
/// `logs -f` now, not with the next newline.
const PARTIAL_LINE_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// Reads `fd` until end of file (or EIO, a pty whose other side closed), calling `each` with
/// every chunk; with `quiet`, also with an empty chunk once `fd` stayed quiet that long after one.
async fn pump(fd: OwnedFd, quiet: Option<std::time::Duration>, mut each: impl FnMut(&[u8])) {
    // SAFETY: F_SETFL on a descriptor we own.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) | libc::O_NONBLOCK)
    };
    // SAFETY: `fd` is an open descriptor owned by the AsyncFd for its whole life; OwnedFd
    // always returns that same descriptor.
    let Ok(afd) = (unsafe { AsyncFd::register(fd) }) else { return };
    let mut buf = vec![0u8; 32 * 1024];
    let mut since_chunk = false;
    loop {
        let readable = match quiet.filter(|_| since_chunk) {
            Some(d) => match tokio::time::timeout(d, afd.readable()).await {
                Ok(r) => r,
                Err(_) => {
                    since_chunk = false;
                    each(&[]);
                    continue;
                }
            },
            None => afd.readable().await,
        };
        let Ok(mut guard) = readable else { return };
        match guard.try_io(|inner| nix::unistd::read(inner.get_ref(), &mut buf).map_err(std::io::Error::from)) {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => {
                since_chunk = true;
                each(&buf[..n])
            }
            Err(_would_block) => continue,
        }
    }
}

/// Splits a stream into lines for the log (Docker splits lines longer than 16 KiB too).
struct LineSplitter {
    stream: &'static str,
    partial: Vec<u8>,
    log: Arc<Mutex<JsonLog>>,
}

impl LineSplitter {
    /// Logs the complete lines of `data`; an empty `data` (the stream went quiet) logs what is
    /// left of a line as it is.
    fn feed(&mut self, data: &[u8]) {
        if data.is_empty() {
            return self.finish();
        }
        self.partial.extend_from_slice(data);
        while let Some(i) =
            self.partial.iter().position(|&b| b == b'\n').or((self.partial.len() >= 16 * 1024).then_some(16 * 1024 - 1))
        {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            let _ = self.log.lock().unwrap_or_else(|e| e.into_inner()).write(self.stream, &line, now_nanos());
        }
    }

    fn finish(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            let _ = self.log.lock().unwrap_or_else(|e| e.into_inner()).write(self.stream, &line, now_nanos());
        }
    }
}

fn runtime_status(e: crate::runtime::RuntimeError) -> Status {
    Status::internal(e.to_string())
}

impl ShimService {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn recorder<T>(&self, req: &Request<T>) -> Recorder {
        Recorder::for_request("engine-shim", self.sink.as_ref(), engine_api::traceparent_of(req).as_deref())
    }

    fn id_arg(&self) -> OsString {
        OsString::from(&self.cfg.id)
    }

    /// Runs one operation as a span named `name`, handing its trace context to the runtime.
    async fn traced<T, F, Fut>(&self, rec: &mut Recorder, name: &str, f: F) -> Result<T, Status>
    where
        F: FnOnce(Option<String>, SpanHandle) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let h = rec.start(name, None);
        rec.set_kind(h, engine_telemetry::Kind::Server);
        rec.set_attr(h, "container.id", self.cfg.id.as_str());
        rec.set_attr(h, "rpc.system", "grpc");
        rec.set_attr(h, "rpc.service", "engine.v1.Shim");
        let method = name.strip_prefix("shim.").unwrap_or(name);
        let mut m = method.chars();
        rec.set_attr(
            h,
            "rpc.method",
            m.next().map(|c| c.to_ascii_uppercase().to_string() + m.as_str()).unwrap_or_default(),
        );
        rec.set_attr(h, "process.pid", std::process::id());
        let tp = rec.context(h).map(|c| c.traceparent());
        let r = f(tp, h).await;
        let r = rec.finish(h, r.map_err(TracedStatus)).map_err(|t| t.0);
        rec.flush();
        r
    }

    async fn wait_exit(&self) -> ExitStatus {
        let mut rx = self.exit_tx.subscribe();
        loop {
            if let Some(st) = rx.borrow_and_update().clone() {
                return st;
            }
            if rx.changed().await.is_err() {
                return ExitStatus { exit_status: 255, reason: "shim is shutting down".into(), ..Default::default() };
            }
        }
    }

    async fn do_create(&self, req: &ShimCreateRequest, tp: Option<String>) -> Result<u32, Status> {
        {
            let inner = self.lock();
            if inner.phase != Phase::New {
                return Err(Status::already_exists(format!("task {} already exists", self.cfg.id)));
            }
        }
        let state = &self.cfg.state_dir;
        let log = Arc::new(Mutex::new(
            JsonLog::open(&state.join(task::LOG_FILE), req.log_max_size, req.log_max_files)
                .map_err(|e| Status::internal(format!("open log: {e}")))?,
        ));
        let pid_file = state.join("init.pid");
        let mut args: Vec<OsString> = vec![
            "create".into(),
            "--bundle".into(),
            self.cfg.bundle.clone().into(),
            "--pid-file".into(),
            pid_file.clone().into(),
        ];
        let io_err = |e: std::io::Error| Status::internal(format!("container stdio: {e}"));
        let mut readers: Vec<(&'static str, OwnedFd)> = Vec::new();
        let mut stdin_writer = None;
        let console = if req.terminal {
            let path = state.join("console.sock");
            let _ = std::fs::remove_file(&path);
            let listener = engine_api::bind_unix(&path).map_err(io_err)?;
            args.push("--console-socket".into());
            args.push(path.into());
            Some(listener)
        } else {
            None
        };
        let stdio = if req.terminal {
            Stdio3 { stdin: Stdio::null(), stdout: Stdio::null(), stderr: Stdio::null() }
        } else {
            let (out_r, out_w) = pipe().map_err(io_err)?;
            let (err_r, err_w) = pipe().map_err(io_err)?;
            readers.push(("stdout", out_r));
            readers.push(("stderr", err_r));
            let stdin = if req.stdin {
                let (in_r, in_w) = pipe().map_err(io_err)?;
                stdin_writer = Some(File::from(in_w));
                Stdio::from(in_r)
            } else {
                Stdio::null()
            };
            Stdio3 { stdin, stdout: Stdio::from(out_w), stderr: Stdio::from(err_w) }
        };
        args.push(self.id_arg());
        let rt = self.rt.clone();
        let run = rt.run(&args, Some(stdio), tp.as_deref());
        // with a terminal, the container's first process sends the pty master while create runs
        let master = match console {
            Some(listener) => {
                let accept = receive_console(listener);
                let (ran, master) = tokio::join!(run, accept);
                if let (Err(e), Err(m)) = (&ran, &master) {
                    return Err(Status::internal(format!("{e} (console socket: {m})")));
                }
                ran.map_err(runtime_status)?;
                Some(master.map_err(|e| Status::internal(format!("receive the container's terminal: {e}")))?)
            }
            None => {
                run.await.map_err(runtime_status)?;
                None
            }
        };
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| Status::internal("the runtime wrote no pid file"))?;

        // stdio to the log; the exit is reported once the streams are drained
        let master = master.map(Arc::new);
        if let Some(m) = &master {
            let dup = m.try_clone().map_err(io_err)?;
            readers.push(("stdout", dup));
        }
        let (drained_tx, drained_rx) = watch::channel(0usize);
        let streams = readers.len();
        let drained_tx = Arc::new(drained_tx);
        for (stream, fd) in readers {
            let mut split = LineSplitter { stream, partial: Vec::new(), log: log.clone() };
            let done = drained_tx.clone();
            tokio::spawn(async move {
                pump(fd, Some(PARTIAL_LINE_AFTER), |chunk| split.feed(chunk)).await;
                split.finish();
                done.send_modify(|n| *n += 1);
            });
        }
        let exited = self.rt.reaper.wait_for(pid);
        let exit_tx = self.exit_tx.clone();
        let inner = self.inner.clone();
        let task_dir = state.clone();
        // found while the process lives: its memory cgroup says at exit whether it was OOM-killed
        let oom_counter = crate::oom::OomCounter::of_pid(pid);
        tokio::spawn(async move {
            let code = exited.await.unwrap_or(255);
            let mut drained = drained_rx;
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drained.wait_for(|n| *n >= streams)).await;
            let oom = oom_counter.is_some_and(|c| c.kills() > 0);
            let record = ExitRecord {
                exit_status: code as u32,
                exited_unix_nanos: now_nanos(),
                reason: if oom { "OOMKilled".into() } else { String::new() },
                pid: pid as u32,
            };
            let _ = record.write(&task_dir);
            let status = ExitStatus::from(record);
            {
                let mut i = inner.lock().unwrap_or_else(|e| e.into_inner());
                if i.phase != Phase::Deleted {
                    i.phase = Phase::Stopped;
                }
                i.master = None;
            }
            // send_replace: the value must be kept even while nobody is waiting
            exit_tx.send_replace(Some(status));
        });

        let mut inner = self.lock();
        inner.phase = Phase::Created;
        inner.pid = pid;
        inner.terminal = req.terminal;
        inner.master = master;
        inner.stdin = stdin_writer;
        Ok(pid as u32)
    }

    async fn do_exec(&self, req: &ExecRequest, tp: Option<String>) -> Result<u32, Status> {
        if req.exec_id.is_empty() {
            return Err(Status::invalid_argument("exec_id must not be empty"));
        }
        let process: serde_json::Value = serde_json::from_str(&req.process_json)
            .map_err(|e| Status::invalid_argument(format!("invalid process JSON: {e}")))?;
        let terminal = process["terminal"] == serde_json::Value::Bool(true);
        {
            let inner = self.lock();
            if inner.phase != Phase::Running {
                return Err(Status::failed_precondition(format!(
                    "cannot exec in task {}: it is not running",
                    self.cfg.id
                )));
            }
            if inner.execs.contains_key(&req.exec_id) {
                return Err(Status::already_exists(format!("exec {} already exists", req.exec_id)));
            }
        }
        let safe: String = req
            .exec_id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
            .collect();
        let process_file = self.cfg.state_dir.join(format!("exec-{safe}.json"));
        let pid_file = self.cfg.state_dir.join(format!("exec-{safe}.pid"));
        std::fs::write(&process_file, &req.process_json)
            .map_err(|e| Status::internal(format!("write process: {e}")))?;
        let io_err = |e: std::io::Error| Status::internal(format!("exec stdio: {e}"));
        let mut args: Vec<OsString> = vec![
            "exec".into(),
            "--detach".into(),
            "--pid-file".into(),
            pid_file.clone().into(),
            "--process".into(),
            process_file.clone().into(),
        ];
        let mut readers: Vec<(&'static str, OwnedFd)> = Vec::new();
        let mut stdin_writer = None;
        let (stdio, console) = if terminal {
            let path = self.cfg.state_dir.join(format!("exec-{safe}.console.sock"));
            let _ = std::fs::remove_file(&path);
            let listener = engine_api::bind_unix(&path).map_err(io_err)?;
            args.push("--console-socket".into());
            args.push(path.into());
            (Stdio3 { stdin: Stdio::null(), stdout: Stdio::null(), stderr: Stdio::null() }, Some(listener))
        } else {
            let (out_r, out_w) = pipe().map_err(io_err)?;
            let (err_r, err_w) = pipe().map_err(io_err)?;
            readers.push(("stdout", out_r));
            readers.push(("stderr", err_r));
            let stdin = if req.stdin {
                let (in_r, in_w) = pipe().map_err(io_err)?;
                stdin_writer = Some(File::from(in_w));
                Stdio::from(in_r)
            } else {
                Stdio::null()
            };
            (Stdio3 { stdin, stdout: Stdio::from(out_w), stderr: Stdio::from(err_w) }, None)
        };
        args.push(self.id_arg());
        let run = self.rt.run(&args, Some(stdio), tp.as_deref());
        let (ran, master) = match console {
            Some(listener) => {
                let (ran, master) = tokio::join!(run, receive_console(listener));
                (ran, Some(master))
            }
            None => (run.await, None),
        };
        let _ = std::fs::remove_file(&process_file);
        let _ = std::fs::remove_file(self.cfg.state_dir.join(format!("exec-{safe}.console.sock")));
        ran.map_err(runtime_status)?;
        let master = match master {
            Some(m) => Some(Arc::new(m.map_err(|e| Status::internal(format!("exec console: {e}")))?)),
            None => None,
        };
        if let Some(m) = &master {
            readers.push(("stdout", m.try_clone().map_err(io_err)?));
        }
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| Status::internal("the runtime wrote no exec pid file"))?;
        let _ = std::fs::remove_file(&pid_file);

        let output = Arc::new(Mutex::new((Vec::new(), Vec::new())));
        let io = Arc::new(Mutex::new(ExecIo::default()));
        let (drained_tx, drained_rx) = watch::channel(false);
        let pumps: Vec<_> = readers
            .into_iter()
            .map(|(stream, fd)| {
                let (output, io) = (output.clone(), io.clone());
                // each stream on its own task: a full stderr pipe must not wait on stdout's end
                tokio::spawn(pump(fd, None, move |c| {
                    let mut o = output.lock().unwrap_or_else(|e| e.into_inner());
                    let buf = if stream == "stdout" { &mut o.0 } else { &mut o.1 };
                    let room = MAX_EXEC_OUTPUT.saturating_sub(buf.len());
                    buf.extend_from_slice(&c[..c.len().min(room)]);
                    io.lock().unwrap_or_else(|e| e.into_inner()).push(stream, c);
                }))
            })
            .collect();
        let io_done = io.clone();
        tokio::spawn(async move {
            for p in pumps {
                let _ = p.await;
            }
            let mut io = io_done.lock().unwrap_or_else(|e| e.into_inner());
            io.done = true;
            io.readers.clear(); // ends every ExecIO stream
            drop(io);
            let _ = drained_tx.send(true);
        });
        let (exit_tx, exit_rx) = watch::channel(None);
        let exited = self.rt.reaper.wait_for(pid);
        tokio::spawn(async move {
            let code = exited.await.unwrap_or(255);
            exit_tx.send_replace(Some(ExitStatus {
                exit_status: code as u32,
                exited_unix_nanos: now_nanos(),
                reason: String::new(),
                pid: pid as u32,
            }));
        });
        let process = ExecProcess { pid, exit: exit_rx, output, drained: drained_rx, io, stdin: stdin_writer, master };
        self.lock().execs.insert(req.exec_id.clone(), process);
        Ok(pid as u32)
    }

    async fn exec_exit(
        &self,
        exec_id: &str,
    ) -> Result<(ExitStatus, watch::Receiver<bool>, Arc<Mutex<(Vec<u8>, Vec<u8>)>>), Status> {
        let (mut rx, drained, output) = {
            let inner = self.lock();
            let e =
                inner.execs.get(exec_id).ok_or_else(|| Status::not_found(format!("exec {exec_id} does not exist")))?;
            (e.exit.clone(), e.drained.clone(), e.output.clone())
        };
        let st = rx.wait_for(|s| s.is_some()).await.map_err(|_| Status::internal("exec watcher went away"))?.clone();
        Ok((st.unwrap_or_default(), drained, output))
    }

    fn phase_name(p: Phase) -> &'static str {
        match p {
            Phase::New => "unknown",
            Phase::Created => "created",
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Stopped | Phase::Deleted => "stopped",
        }
    }
}

/// A Status that displays as its message (for span errors).
struct TracedStatus(Status);

impl std::fmt::Display for TracedStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.message())
    }
}

#[tonic::async_trait]
impl Shim for ShimService {
    async fn create(&self, request: Request<ShimCreateRequest>) -> Result<Response<CreateTaskResponse>, Status> {
        let mut rec = self.recorder(&request);
        let req = request.into_inner();
        let pid = self.traced(&mut rec, engine_telemetry::names::SHIM_CREATE, |tp, _| self.do_create(&req, tp)).await?;
        Ok(Response::new(CreateTaskResponse { pid }))
    }

    async fn start(&self, request: Request<TaskRequest>) -> Result<Response<Empty>, Status> {
        let mut rec = self.recorder(&request);
        self.traced(&mut rec, engine_telemetry::names::SHIM_START, |tp, _| async move {
            if self.lock().phase != Phase::Created {
                return Err(Status::failed_precondition(format!(
                    "cannot start task {}: it is {}",
                    self.cfg.id,
                    Self::phase_name(self.lock().phase)
                )));
            }
            self.rt.run(&["start".into(), self.id_arg()], None, tp.as_deref()).await.map_err(runtime_status)?;
            let mut inner = self.lock();
            if inner.phase == Phase::Created {
                inner.phase = Phase::Running;
            }
            Ok(())
        })
        .await?;
        Ok(Response::new(Empty {}))
    }

    async fn kill(&self, request: Request<KillRequest>) -> Result<Response<Empty>, Status> {
        let mut rec = self.recorder(&request);
        let req = request.into_inner();
        self.traced(&mut rec, engine_telemetry::names::SHIM_KILL, |tp, _| async move {
            if !req.exec_id.is_empty() {
                let pid = self
                    .lock()
                    .execs
                    .get(&req.exec_id)
                    .map(|e| e.pid)
                    .ok_or_else(|| Status::not_found(format!("exec {} does not exist", req.exec_id)))?;
                // SAFETY: kill has no memory effects; the pid is our child (reaped only by us).
                unsafe { libc::kill(pid, req.signal as i32) };
                return Ok(());
            }
            let phase = self.lock().phase;
            if matches!(phase, Phase::Stopped | Phase::Deleted | Phase::New) {
                return Err(Status::not_found(format!("task {} is not running", self.cfg.id)));
            }
            let mut args: Vec<OsString> = vec!["kill".into()];
            if req.all {
                args.push("--all".into());
            }
            args.push(self.id_arg());
            args.push(req.signal.to_string().into());
            self.rt.run(&args, None, tp.as_deref()).await.map_err(runtime_status)?;
            Ok(())
        })
        .await?;
        Ok(Response::new(Empty {}))
    }

    async fn delete(&self, request: Request<TaskRequest>) -> Result<Response<ExitStatus>, Status> {
        let mut rec = self.recorder(&request);
        let req = request.into_inner();
        let st = self
            .traced(&mut rec, engine_telemetry::names::SHIM_DELETE, |tp, _| async move {
                if !req.exec_id.is_empty() {
                    let (st, _, _) = self.exec_exit(&req.exec_id).await?;
                    self.lock().execs.remove(&req.exec_id);
                    return Ok(st);
                }
                let phase = self.lock().phase;
                match phase {
                    Phase::Running | Phase::Paused => {
                        return Err(Status::failed_precondition(format!(
                            "cannot delete task {}: it is {}; kill it first",
                            self.cfg.id,
                            Self::phase_name(phase)
                        )))
                    }
                    Phase::New | Phase::Deleted => {
                        return Err(Status::not_found(format!("task {} does not exist", self.cfg.id)))
                    }
                    Phase::Created | Phase::Stopped => {}
                }
                self.rt
                    .run(&["delete".into(), "--force".into(), self.id_arg()], None, tp.as_deref())
                    .await
                    .map_err(runtime_status)?;
                let st = self.wait_exit().await;
                self.lock().phase = Phase::Deleted;
                Ok(st)
            })
            .await?;
        Ok(Response::new(st))
    }

    async fn wait(&self, request: Request<TaskRequest>) -> Result<Response<ExitStatus>, Status> {
        let req = request.into_inner();
        if !req.exec_id.is_empty() {
            return Ok(Response::new(self.exec_exit(&req.exec_id).await?.0));
        }
        if self.lock().phase == Phase::New {
            return Err(Status::not_found(format!("task {} does not exist", self.cfg.id)));
        }
        Ok(Response::new(self.wait_exit().await))
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        let mut rec = self.recorder(&request);
        let req = request.into_inner();
        let pid = self.traced(&mut rec, engine_telemetry::names::SHIM_EXEC, |tp, _| self.do_exec(&req, tp)).await?;
        Ok(Response::new(ExecResponse { pid }))
    }

    async fn exec_wait(&self, request: Request<TaskRequest>) -> Result<Response<ExecOutput>, Status> {
        let req = request.into_inner();
        let (st, mut drained, output) = self.exec_exit(&req.exec_id).await?;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drained.wait_for(|d| *d)).await;
        let (stdout, stderr) = output.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(Response::new(ExecOutput { status: Some(st), stdout, stderr }))
    }

    type ExecIOStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<IoChunk, Status>> + Send + 'static>>;

    async fn exec_io(&self, request: Request<TaskRequest>) -> Result<Response<Self::ExecIOStream>, Status> {
        let req = request.into_inner();
        let io = self
            .lock()
            .execs
            .get(&req.exec_id)
            .map(|e| e.io.clone())
            .ok_or_else(|| Status::not_found(format!("exec {} does not exist", req.exec_id)))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        {
            let mut io = io.lock().unwrap_or_else(|e| e.into_inner());
            for c in &io.chunks {
                let _ = tx.send(Ok(c.clone()));
            }
            if !io.done {
                io.readers.push(tx);
            }
        }
        Ok(Response::new(Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))))
    }

    async fn resize_pty(&self, request: Request<ResizePtyRequest>) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        let master = if req.exec_id.is_empty() {
            self.lock().master.clone()
        } else {
            self.lock().execs.get(&req.exec_id).and_then(|e| e.master.clone())
        };
        let master = master.ok_or_else(|| Status::failed_precondition("the process has no terminal"))?;
        set_window_size(master.as_fd(), req.height as u16, req.width as u16)
            .map_err(|e| Status::internal(format!("resize the terminal: {e}")))?;
        Ok(Response::new(Empty {}))
    }

    async fn write(&self, request: Request<WriteRequest>) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        let mut inner = self.lock();
        if !req.exec_id.is_empty() {
            let e = inner
                .execs
                .get_mut(&req.exec_id)
                .ok_or_else(|| Status::not_found(format!("exec {} does not exist", req.exec_id)))?;
            if let Some(master) = e.master.clone() {
                nix::unistd::write(master.as_fd(), &req.data)
                    .map_err(|e| Status::internal(format!("write to the terminal: {e}")))?;
                return Ok(Response::new(Empty {}));
            }
            let stdin = e.stdin.as_mut().ok_or_else(|| Status::failed_precondition("the exec has no open stdin"))?;
            stdin.write_all(&req.data).map_err(|e| Status::internal(format!("write to stdin: {e}")))?;
            return Ok(Response::new(Empty {}));
        }
        if let Some(master) = inner.master.clone() {
            nix::unistd::write(master.as_fd(), &req.data)
                .map_err(|e| Status::internal(format!("write to the terminal: {e}")))?;
            return Ok(Response::new(Empty {}));
        }
        let stdin = inner.stdin.as_mut().ok_or_else(|| Status::failed_precondition("the task has no open stdin"))?;
        stdin.write_all(&req.data).map_err(|e| Status::internal(format!("write to stdin: {e}")))?;
        Ok(Response::new(Empty {}))
    }

    async fn close_io(&self, request: Request<TaskRequest>) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        let mut inner = self.lock();
        if req.exec_id.is_empty() {
            inner.stdin = None;
        } else if let Some(e) = inner.execs.get_mut(&req.exec_id) {
            e.stdin = None;
        }
        Ok(Response::new(Empty {}))
    }

    async fn state(&self, _request: Request<TaskRequest>) -> Result<Response<TaskState>, Status> {
        let (phase, pid, terminal) = {
            let i = self.lock();
            (i.phase, i.pid, i.terminal)
        };
        if phase == Phase::New {
            return Err(Status::not_found(format!("task {} does not exist", self.cfg.id)));
        }
        let exit = self.exit_tx.borrow().clone();
        Ok(Response::new(TaskState {
            container_id: self.cfg.id.clone(),
            status: Self::phase_name(phase).into(),
            pid: pid as u32,
            exit,
            terminal,
        }))
    }

    async fn pids(&self, request: Request<TaskRequest>) -> Result<Response<PidsResponse>, Status> {
        let tp = engine_api::traceparent_of(&request);
        let out = self
            .rt
            .run(&["ps".into(), "--format".into(), "json".into(), self.id_arg()], None, tp.as_deref())
            .await
            .map_err(runtime_status)?;
        let pids: Vec<u32> = serde_json::from_slice(&out).map_err(|e| Status::internal(format!("runtime ps: {e}")))?;
        Ok(Response::new(PidsResponse { pids }))
    }

    async fn pause(&self, request: Request<TaskRequest>) -> Result<Response<Empty>, Status> {
        let mut rec = self.recorder(&request);
        self.traced(&mut rec, engine_telemetry::names::SHIM_PAUSE, |tp, _| async move {
            let phase = self.lock().phase;
            if phase != Phase::Running {
                return Err(Status::failed_precondition(format!(
                    "cannot pause task {}: it is {}",
                    self.cfg.id,
                    Self::phase_name(phase)
                )));
            }
            self.rt.run(&["pause".into(), self.id_arg()], None, tp.as_deref()).await.map_err(runtime_status)?;
            // its exit may have been seen meanwhile: that stays
            let mut inner = self.lock();
            if inner.phase == Phase::Running {
                inner.phase = Phase::Paused;
            }
            Ok(())
        })
        .await?;
        Ok(Response::new(Empty {}))
    }

    async fn resume(&self, request: Request<TaskRequest>) -> Result<Response<Empty>, Status> {
        let mut rec = self.recorder(&request);
        self.traced(&mut rec, engine_telemetry::names::SHIM_RESUME, |tp, _| async move {
            self.rt.run(&["resume".into(), self.id_arg()], None, tp.as_deref()).await.map_err(runtime_status)?;
            // a thawed process may die at once (of a signal sent while it was frozen): its exit,
            // if already seen, stays
            let mut inner = self.lock();
            if inner.phase == Phase::Paused {
                inner.phase = Phase::Running;
            }
            Ok(())
        })
        .await?;
        Ok(Response::new(Empty {}))
    }

    async fn update(&self, request: Request<UpdateTaskRequest>) -> Result<Response<Empty>, Status> {
        let mut rec = self.recorder(&request);
        let resources = request.into_inner().resources_json;
        self.traced(&mut rec, engine_telemetry::names::SHIM_UPDATE, |tp, _| async move {
            let phase = self.lock().phase;
            if !matches!(phase, Phase::Created | Phase::Running | Phase::Paused) {
                return Err(Status::failed_precondition(format!(
                    "cannot update task {}: it is {}",
                    self.cfg.id,
                    Self::phase_name(phase)
                )));
            }
            // the runtime reads the resources from a file, as runc's `update --resources`
            let file = self.cfg.state_dir.join("update-resources.json");
            std::fs::write(&file, resources.as_bytes())
                .map_err(|e| Status::internal(format!("writing {}: {e}", file.display())))?;
            let args = ["update".into(), "--resources".into(), file.clone().into_os_string(), self.id_arg()];
            let r = self.rt.run(&args, None, tp.as_deref()).await.map_err(runtime_status);
            let _ = std::fs::remove_file(&file);
            r.map(drop)
        })
        .await?;
        Ok(Response::new(Empty {}))
    }

    async fn stats(&self, request: Request<TaskRequest>) -> Result<Response<StatsResponse>, Status> {
        let tp = engine_api::traceparent_of(&request);
        let out = self
            .rt
            .run(&["events".into(), "--stats".into(), self.id_arg()], None, tp.as_deref())
            .await
            .map_err(runtime_status)?;
        Ok(Response::new(StatsResponse { stats_json: String::from_utf8_lossy(&out).trim().to_string() }))
    }

    async fn shutdown(&self, _request: Request<Empty>) -> Result<Response<Empty>, Status> {
        let phase = self.lock().phase;
        if !matches!(phase, Phase::New | Phase::Deleted) {
            return Err(Status::failed_precondition(format!(
                "cannot shut down: task {} is {}; delete it first",
                self.cfg.id,
                Self::phase_name(phase)
            )));
        }
        if let Some(tx) = self.shutdown.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(());
        }
        Ok(Response::new(Empty {}))
    }
}

/// Runs the shim: binds its socket, says "ready" on stdout, and serves until Shutdown. A shim
/// that cannot start says `error: <why>` on stdout instead: that pipe reaches whoever started
/// it even when its log cannot be written (a full exec-root).
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let (service, listener, socket, shutdown_rx) = match prepare(cfg).await {
        Ok(prepared) => prepared,
        Err(e) => {
            // (lifecycled may have stopped waiting: a closed pipe is no reason to panic)
            let _ = writeln!(std::io::stdout(), "error: {e:#}");
            return Err(e);
        }
    };
    let sink = service.sink.clone();
    // tell whoever started us that the socket is there, then let go of its pipe
    println!("ready");
    std::io::stdout().flush().ok();
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto our own stdout.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
    tonic::transport::Server::builder()
        .add_service(ShimServer::new(service))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), async {
            let _ = shutdown_rx.await;
        })
        .await
        .context("serve")?;
    let _ = std::fs::remove_file(&socket);
    // the spans of its last calls (its delete's) go out before it does
    if let Some(sink) = sink {
        sink.drain(std::time::Duration::from_secs(2)).await;
    }
    Ok(())
}

/// Everything before the shim can serve: its state directory, socket and pid file, the span
/// hand-off; the service, its listener and socket path, and the signal to shut it down.
async fn prepare(
    cfg: Config,
) -> anyhow::Result<(ShimService, tokio::net::UnixListener, std::path::PathBuf, oneshot::Receiver<()>)> {
    std::fs::create_dir_all(&cfg.state_dir).with_context(|| format!("create {}", cfg.state_dir.display()))?;
    let reaper = Reaper::start().context("become a child subreaper")?;
    let socket = task::socket_path(&cfg.state_dir);
    let _ = std::fs::remove_file(&socket);
    let listener = engine_api::bind_unix(&socket).with_context(|| format!("bind {}", socket.display()))?;
    write_atomic(&cfg.state_dir.join("shim.pid"), std::process::id().to_string().as_bytes())
        .context("write shim.pid")?;
    // Spans go to engined's OTLP receiver (or a file sink in tests); the runtime and init hand
    // theirs to us over a socket and we send them on.
    let sink =
        engine_telemetry::otlp::OtlpExporter::engine_sink_from_env().or_else(engine_telemetry::file_sink_from_env);
    let span_handoff = match &sink {
        Some(s) => Some(crate::runtime::span_handoff(s.clone()).context("set up the runtime's span hand-off")?),
        None => None,
    };
    let rt = RuntimeCli {
        binary: cfg.runtime.clone(),
        root: cfg.runtime_root.clone(),
        log: cfg.state_dir.join("runtime.log"),
        reaper,
        span_handoff: span_handoff.map(Arc::new),
    };
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let (exit_tx, _) = watch::channel(None);
    let service = ShimService {
        cfg: cfg.clone(),
        rt,
        inner: Arc::new(Mutex::new(Inner {
            phase: Phase::New,
            pid: 0,
            terminal: false,
            master: None,
            stdin: None,
            execs: HashMap::new(),
        })),
        exit_tx: Arc::new(exit_tx),
        sink,
        shutdown: Mutex::new(Some(shutdown_tx)),
    };
    Ok((service, listener, socket, shutdown_rx))
}
