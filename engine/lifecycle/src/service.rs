//! The gRPC services of lifecycled: Containers, Tasks, Events.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use engine_api::v1::containers_server::{Containers, ContainersServer};
use engine_api::v1::events_server::{Events, EventsServer};
use engine_api::v1::shim_client::ShimClient;
use engine_api::v1::tasks_server::{Tasks, TasksServer};
use engine_api::v1::*;
use engine_telemetry::Recorder;
use tokio_stream::Stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::events::{matches, Journal};
use crate::store::{ContainerStore, StoreError};
use crate::tasks::TaskManager;
use crate::Config;

/// What every service shares.
pub struct Lifecycle {
    pub cfg: Arc<Config>,
    pub store: ContainerStore,
    pub tasks: Arc<TaskManager>,
    pub journal: Arc<Journal>,
    sink: Option<engine_telemetry::Sink>,
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Exists(_) => Status::already_exists(e.to_string()),
        StoreError::NotFound(_) => Status::not_found(e.to_string()),
        StoreError::Io { .. } => Status::internal(e.to_string()),
    }
}

/// The codes that mark a gRPC server span failed (OpenTelemetry's semantic conventions).
fn server_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(code, Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss)
}

/// A Status shown by its message (span errors).
struct Msg(Status);
impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.message())
    }
}

impl Lifecycle {
    /// Runs `f` as span `name` under the request's trace; `f` gets the traceparent to pass on.
    async fn traced<T, R, F, Fut>(&self, req: &Request<R>, name: &str, container_id: &str, f: F) -> Result<T, Status>
    where
        F: FnOnce(Option<String>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut rec =
            Recorder::for_request("engine-lifecycled", self.sink.as_ref(), engine_api::traceparent_of(req).as_deref());
        let h = rec.start(name, None);
        rec.set_kind(h, engine_telemetry::Kind::Server);
        rec.set_attr(h, "rpc.system", "grpc");
        if let Some((service, method)) = name.strip_prefix("lifecycle.").and_then(|n| n.split_once('/')) {
            rec.set_attr(h, "rpc.service", format!("engine.v1.{service}"));
            rec.set_attr(h, "rpc.method", method);
        }
        rec.set_attr(h, "process.pid", std::process::id());
        if !container_id.is_empty() {
            rec.set_attr(h, "container.id", container_id);
        }
        let tp = rec.context(h).map(|c| c.traceparent());
        // To lifecycled's clients, Unavailable means lifecycled itself is down (they ask again
        // until it is back); lifecycled never says it of itself. A shim that does not answer
        // is a fact about its task, not a reason to ask again.
        let outcome = f(tp).await.map_err(|s| match s.code() {
            tonic::Code::Unavailable => Status::failed_precondition(format!(
                "the shim of container {container_id} does not answer: {}",
                s.message()
            )),
            _ => s,
        });
        rec.set_attr(h, "rpc.grpc.status_code", outcome.as_ref().map_or_else(|s| s.code() as i64, |_| 0));
        // as OpenTelemetry's gRPC conventions have it, a server span fails only on the server's
        // own errors: a delete of what is gone (NotFound) or a refused request is an answer
        let r = match outcome {
            Err(s) if !server_error(s.code()) => {
                rec.end(h);
                Err(s)
            }
            outcome => rec.finish(h, outcome.map_err(Msg)).map_err(|m| m.0),
        };
        rec.flush();
        r
    }

    /// Forwards a call about one task to its shim as it came (with this call's trace context),
    /// in a server span named `name`; once the shim did it, `topic` (if any) is published.
    async fn to_shim<R, F, Fut>(
        &self,
        request: &Request<R>,
        name: &str,
        container_id: &str,
        topic: Option<&str>,
        call: F,
    ) -> Result<Response<Empty>, Status>
    where
        R: Clone,
        F: FnOnce(ShimClient<Channel>, Request<R>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Empty>, Status>>,
    {
        let req = request.get_ref().clone();
        self.traced(request, name, container_id, |tp| async move {
            let client = self.tasks.get(container_id)?.client.clone();
            call(client, engine_api::with_traceparent(Request::new(req), tp.as_deref())).await?;
            if let Some(topic) = topic {
                self.publish(topic, container_id);
            }
            Ok(())
        })
        .await?;
        Ok(Response::new(Empty {}))
    }

    fn publish(&self, topic: &str, id: &str) {
        self.journal.publish(Event { topic: topic.into(), container_id: id.into(), ..Default::default() });
    }
}

#[derive(Clone)]
pub struct Svc(pub Arc<Lifecycle>);

/// The absolute path of the OCI bundle `dir` if its `config.json` is a runtime spec (typed, so an
/// unknown namespace or a malformed field is refused) whose root filesystem is a directory.
fn check_bundle(dir: &Path) -> Result<std::path::PathBuf, String> {
    let dir = std::path::absolute(dir).map_err(|e| format!("bundle {}: {e}", dir.display()))?;
    let path = dir.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let spec: oci_spec::runtime::Spec =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: invalid runtime spec: {e}", path.display()))?;
    let root = spec.root().as_ref().ok_or_else(|| format!("{}: root is missing", path.display()))?;
    let rootfs = if root.path().is_absolute() { root.path().clone() } else { dir.join(root.path()) };
    if !rootfs.is_dir() {
        return Err(format!("root filesystem {} is not a directory", rootfs.display()));
    }
    Ok(dir)
}

#[tonic::async_trait]
impl Containers for Svc {
    async fn create(&self, request: Request<CreateContainerRequest>) -> Result<Response<Container>, Status> {
        let l = &self.0;
        let req = request.get_ref().clone();
        let c = l
            .traced(&request, engine_telemetry::names::LIFECYCLE_CONTAINERS_CREATE, &req.id, |_| async {
                engine_api::task::check_id(&req.id).map_err(Status::invalid_argument)?;
                // a bundle that is no OCI bundle is refused here, with nothing made; the runtime
                // checks the rest when the task is created
                let bundle = check_bundle(Path::new(&req.bundle)).map_err(Status::invalid_argument)?;
                let c = Container {
                    id: req.id.clone(),
                    bundle: bundle.display().to_string(),
                    labels: req.labels.clone(),
                    created_unix_nanos: engine_telemetry::recorder::now_unix_nanos() as i64,
                };
                l.store.create(&c).map_err(store_status)?;
                l.publish("/containers/create", &c.id);
                Ok(c)
            })
            .await?;
        Ok(Response::new(c))
    }

    async fn get(&self, request: Request<ContainerId>) -> Result<Response<Container>, Status> {
        Ok(Response::new(self.0.store.get(&request.get_ref().id).map_err(store_status)?))
    }

    async fn list(&self, request: Request<ListContainersRequest>) -> Result<Response<ListContainersResponse>, Status> {
        let want = &request.get_ref().labels;
        let containers =
            self.0.store.list().into_iter().filter(|c| want.iter().all(|(k, v)| c.labels.get(k) == Some(v))).collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }

    async fn update(&self, request: Request<UpdateContainerRequest>) -> Result<Response<Container>, Status> {
        let req = request.into_inner();
        let mut c = self.0.store.get(&req.id).map_err(store_status)?;
        for (k, v) in req.labels {
            if v.is_empty() {
                c.labels.remove(&k);
            } else {
                c.labels.insert(k, v);
            }
        }
        self.0.store.update(&c).map_err(store_status)?;
        Ok(Response::new(c))
    }

    async fn delete(&self, request: Request<ContainerId>) -> Result<Response<Empty>, Status> {
        let l = &self.0;
        let id = request.get_ref().id.clone();
        l.traced(&request, engine_telemetry::names::LIFECYCLE_CONTAINERS_DELETE, &id, |_| async {
            if l.tasks.exists(&id) {
                return Err(Status::failed_precondition(format!("container {id} has a task; delete it first")));
            }
            l.store.delete(&id).map_err(store_status)?;
            l.publish("/containers/delete", &id);
            Ok(())
        })
        .await?;
        Ok(Response::new(Empty {}))
    }
}

/// Runs an operation to its end in a task of its own, so that a caller that goes away (engined
/// killed in the middle of a create or start) does not cancel it halfway: a half-made task
/// would be neither recorded nor undone. The caller, if still there, gets its result.
async fn detached<T: Send + 'static>(
    op: impl std::future::Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(op).await.map_err(|e| Status::internal(format!("task operation failed: {e}")))?
}

impl Svc {
    async fn create_task(&self, request: Request<CreateTaskRequest>) -> Result<Response<CreateTaskResponse>, Status> {
        let l = &self.0;
        let req = request.get_ref().clone();
        let pid = l
            .traced(
                &request,
                engine_telemetry::names::LIFECYCLE_TASKS_CREATE,
                &req.container_id.clone(),
                |tp| async move {
                    let c = l.store.get(&req.container_id).map_err(store_status)?;
                    l.tasks.create(&c.id, &c.bundle, &req, tp.as_deref()).await
                },
            )
            .await?;
        Ok(Response::new(CreateTaskResponse { pid }))
    }

    async fn start_task(&self, request: Request<TaskRequest>) -> Result<Response<Empty>, Status> {
        let l = &self.0;
        let req = request.get_ref().clone();
        l.traced(
            &request,
            engine_telemetry::names::LIFECYCLE_TASKS_START,
            &req.container_id.clone(),
            |tp| async move {
                let t = l.tasks.get(&req.container_id)?;
                t.client.clone().start(engine_api::with_traceparent(Request::new(req.clone()), tp.as_deref())).await?;
                let mut e = Event {
                    topic: "/tasks/start".into(),
                    container_id: req.container_id.clone(),
                    ..Default::default()
                };
                e.pid = t.pid.load(std::sync::atomic::Ordering::SeqCst);
                l.journal.publish(e);
                Ok(())
            },
        )
        .await?;
        Ok(Response::new(Empty {}))
    }

    async fn delete_task(&self, request: Request<TaskRequest>) -> Result<Response<ExitStatus>, Status> {
        let l = &self.0;
        let req = request.get_ref().clone();
        let st = l
            .traced(
                &request,
                engine_telemetry::names::LIFECYCLE_TASKS_DELETE,
                &req.container_id.clone(),
                |tp| async move {
                    if !req.exec_id.is_empty() {
                        let t = l.tasks.get(&req.container_id)?;
                        return Ok(t
                            .client
                            .clone()
                            .delete(engine_api::with_traceparent(Request::new(req.clone()), tp.as_deref()))
                            .await?
                            .into_inner());
                    }
                    l.tasks.delete(&req.container_id, &l.store.data_dir(&req.container_id), tp.as_deref()).await
                },
            )
            .await?;
        Ok(Response::new(st))
    }
}

type Stream2<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Tasks for Svc {
    async fn create(&self, request: Request<CreateTaskRequest>) -> Result<Response<CreateTaskResponse>, Status> {
        let svc = self.clone();
        detached(async move { svc.create_task(request).await }).await
    }

    async fn start(&self, request: Request<TaskRequest>) -> Result<Response<Empty>, Status> {
        let svc = self.clone();
        detached(async move { svc.start_task(request).await }).await
    }

    async fn delete(&self, request: Request<TaskRequest>) -> Result<Response<ExitStatus>, Status> {
        let svc = self.clone();
        detached(async move { svc.delete_task(request).await }).await
    }

    async fn kill(&self, request: Request<KillRequest>) -> Result<Response<Empty>, Status> {
        let l = &self.0;
        let req = request.get_ref().clone();
        l.traced(&request, engine_telemetry::names::LIFECYCLE_TASKS_KILL, &req.container_id.clone(), |tp| async move {
            let t = l.tasks.get(&req.container_id)?;
            t.client.clone().kill(engine_api::with_traceparent(Request::new(req.clone()), tp.as_deref())).await?;
            Ok(())
        })
        .await?;
        Ok(Response::new(Empty {}))
    }

    async fn wait(&self, request: Request<TaskRequest>) -> Result<Response<ExitStatus>, Status> {
        let req = request.into_inner();
        let t = self.0.tasks.get(&req.container_id)?;
        if !req.exec_id.is_empty() {
            return Ok(Response::new(t.client.clone().wait(req).await?.into_inner()));
        }
        Ok(Response::new(t.wait().await))
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        let l = &self.0;
        let req = request.get_ref().clone();
        let pid = l
            .traced(
                &request,
                engine_telemetry::names::LIFECYCLE_TASKS_EXEC,
                &req.container_id.clone(),
                |tp| async move {
                    let t = l.tasks.get(&req.container_id)?;
                    let pid = t
                        .client
                        .clone()
                        .exec(engine_api::with_traceparent(Request::new(req.clone()), tp.as_deref()))
                        .await?
                        .into_inner()
                        .pid;
                    let e = Event {
                        topic: "/tasks/exec-added".into(),
                        container_id: req.container_id.clone(),
                        exec_id: req.exec_id.clone(),
                        pid,
                        ..Default::default()
                    };
                    l.journal.publish(e);
                    Ok(pid)
                },
            )
            .await?;
        Ok(Response::new(ExecResponse { pid }))
    }

    async fn exec_wait(&self, request: Request<TaskRequest>) -> Result<Response<ExecOutput>, Status> {
        let req = request.into_inner();
        let t = self.0.tasks.get(&req.container_id)?;
        Ok(Response::new(t.client.clone().exec_wait(req).await?.into_inner()))
    }

    type ExecIOStream = Stream2<IoChunk>;

    async fn exec_io(&self, request: Request<TaskRequest>) -> Result<Response<Self::ExecIOStream>, Status> {
        let req = request.into_inner();
        let t = self.0.tasks.get(&req.container_id)?;
        let stream = t.client.clone().exec_io(req).await?.into_inner();
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resize_pty(&self, request: Request<ResizePtyRequest>) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        Ok(Response::new(self.0.tasks.get(&req.container_id)?.client.clone().resize_pty(req).await?.into_inner()))
    }

    async fn write(&self, request: Request<WriteRequest>) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        Ok(Response::new(self.0.tasks.get(&req.container_id)?.client.clone().write(req).await?.into_inner()))
    }

    async fn close_io(&self, request: Request<TaskRequest>) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        Ok(Response::new(self.0.tasks.get(&req.container_id)?.client.clone().close_io(req).await?.into_inner()))
    }

    async fn state(&self, request: Request<TaskRequest>) -> Result<Response<TaskState>, Status> {
        let req = request.into_inner();
        let t = self.0.tasks.get(&req.container_id)?;
        if let Some(exit) = t.exited() {
            // the shim may be gone (it died); what we know is the exit
            return Ok(Response::new(TaskState {
                container_id: req.container_id,
                status: "stopped".into(),
                pid: exit.pid,
                exit: Some(exit),
                terminal: false,
            }));
        }
        Ok(Response::new(t.client.clone().state(req).await?.into_inner()))
    }

    async fn pids(&self, request: Request<TaskRequest>) -> Result<Response<PidsResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(self.0.tasks.get(&req.container_id)?.client.clone().pids(req).await?.into_inner()))
    }

    async fn pause(&self, request: Request<TaskRequest>) -> Result<Response<Empty>, Status> {
        let id = request.get_ref().container_id.clone();
        self.0
            .to_shim(
                &request,
                engine_telemetry::names::LIFECYCLE_TASKS_PAUSE,
                &id,
                Some("/tasks/paused"),
                |mut c, r| async move { c.pause(r).await },
            )
            .await
    }

    async fn resume(&self, request: Request<TaskRequest>) -> Result<Response<Empty>, Status> {
        let id = request.get_ref().container_id.clone();
        self.0
            .to_shim(
                &request,
                engine_telemetry::names::LIFECYCLE_TASKS_RESUME,
                &id,
                Some("/tasks/resumed"),
                |mut c, r| async move { c.resume(r).await },
            )
            .await
    }

    async fn update(&self, request: Request<UpdateTaskRequest>) -> Result<Response<Empty>, Status> {
        let id = request.get_ref().container_id.clone();
        self.0
            .to_shim(&request, engine_telemetry::names::LIFECYCLE_TASKS_UPDATE, &id, None, |mut c, r| async move {
                c.update(r).await
            })
            .await
    }

    async fn stats(&self, request: Request<TaskRequest>) -> Result<Response<StatsResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(self.0.tasks.get(&req.container_id)?.client.clone().stats(req).await?.into_inner()))
    }

    type LogsStream = Stream2<LogEntry>;

    async fn logs(&self, request: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let req = request.into_inner();
        let l = self.0.clone();
        l.store.get(&req.container_id).map_err(store_status)?;
        let task = l.tasks.get(&req.container_id).ok();
        // A deleted task's log is moved (renamed, so offsets stay valid) to the data dir; a
        // read that races the move finds it there.
        let kept = l.store.data_dir(&req.container_id).join(engine_api::task::LOG_FILE);
        let mut path = match &task {
            Some(t) => t.dir.join(engine_api::task::LOG_FILE),
            None => kept.clone(),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let (mut entries, mut offset) = engine_api::task::log::read_all_to_offset(&path, 100);
            if !path.exists() && path != kept {
                path = kept.clone();
                (entries, offset) = engine_api::task::log::read_all_to_offset(&path, 100);
            }
            let skip = if req.tail > 0 { entries.len().saturating_sub(req.tail as usize) } else { 0 };
            for e in entries.into_iter().skip(skip) {
                if tx
                    .send(Ok(LogEntry { stream: e.stream, line: e.line, time_unix_nanos: e.unix_nanos }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let Some(task) = task.filter(|_| req.follow) else { return };
            // follow the live file from where the read stopped until the task has exited and
            // nothing more arrives (the shim reports an exit once its output is in the file, so
            // the read after the exit is the last); woken by the exit, not only by the poll
            let mut exit = task.exit.subscribe();
            loop {
                let done = task.exited().is_some();
                if !path.exists() {
                    path = kept.clone(); // the task was deleted meanwhile: same file, moved
                }
                if let Ok(text) = std::fs::read(&path) {
                    if (text.len() as u64) < offset {
                        offset = 0; // rotated
                    }
                    let new = &text[offset as usize..];
                    if let Some(end) = new.iter().rposition(|&b| b == b'\n') {
                        for line in String::from_utf8_lossy(&new[..=end]).lines() {
                            if let Some(e) = engine_api::task::log::parse_line(line) {
                                let entry = LogEntry { stream: e.stream, line: e.line, time_unix_nanos: e.unix_nanos };
                                if tx.send(Ok(entry)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        offset += end as u64 + 1;
                    }
                }
                if done {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = exit.wait_for(|e| e.is_some()) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl Events for Svc {
    type SubscribeStream = Stream2<Event>;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let req = request.into_inner();
        let journal = self.0.journal.clone();
        // live first, so nothing falls between the replay and the live stream
        let mut live = journal.subscribe();
        let replay = if req.since > 0 { journal.replay(req.since) } else { Vec::new() };
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let mut last = 0;
            for e in replay {
                last = e.sequence;
                if matches(&e, &req.topics, &req.container_id) && tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            loop {
                match live.recv().await {
                    Ok(e) if e.sequence > last => {
                        if matches(&e, &req.topics, &req.container_id) && tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx.send(Err(Status::data_loss(format!("subscriber fell {n} events behind")))).await;
                        return;
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// Runs lifecycled until SIGTERM or SIGINT: recovers tasks, then serves on `cfg.address`.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    for dir in [&cfg.root, &cfg.state] {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    if let Some(parent) = cfg.address.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    let cfg = Arc::new(cfg);
    let journal = Arc::new(Journal::open(&cfg.state).context("open the event journal")?);
    let tasks = Arc::new(TaskManager::new(cfg.clone(), journal.clone()));
    tasks.recover().await;
    let store = ContainerStore::open(&cfg.root).context("open the container store")?;
    let lifecycle = Arc::new(Lifecycle {
        cfg: cfg.clone(),
        store,
        tasks,
        journal,
        sink: engine_telemetry::otlp::OtlpExporter::engine_sink_from_env()
            .or_else(engine_telemetry::file_sink_from_env),
    });
    let _ = std::fs::remove_file(&cfg.address);
    let listener = engine_api::bind_unix(&cfg.address).with_context(|| format!("bind {}", cfg.address.display()))?;
    let svc = Svc(lifecycle);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tonic::transport::Server::builder()
        .add_service(ContainersServer::new(svc.clone()))
        .add_service(TasksServer::new(svc.clone()))
        .add_service(EventsServer::new(svc))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await
        .context("serve")?;
    let _ = std::fs::remove_file(&cfg.address);
    Ok(())
}
