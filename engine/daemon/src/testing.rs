//! What the daemon's unit tests share: a fake lifecycled served on a unix socket (the real
//! gRPC contract, in memory), a whole daemon over it that needs no root, and container records
//! to put in a store.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::Parser;
use engine_api::v1::containers_server::{Containers, ContainersServer};
use engine_api::v1::tasks_server::{Tasks, TasksServer};
use engine_api::v1::*;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::daemon::Daemon;
use crate::records::{ContainerRecord, ContainerStore, Entry};

/// A fake lifecycled: its Tasks and Containers services over tables in memory.
///
/// Tasks behave as the shim's do: created, running, paused, stopped; SIGTERM and SIGKILL end a
/// running task (exit 128 + signal), and a paused one only once it is resumed (as under the v1
/// freezer); [`FakeTasks::exit`] ends one as its program would. A task of a container in
/// `refuse_start` fails to start as runc does for a missing program.
///
/// An exec whose program is `missing` fails as runc's does; any other runs at once with pid
/// 4242 and ends (`ExecWait` answers) with `exec_exit` once the test adds a permit to
/// `exec_exits`.
#[derive(Clone)]
pub struct FakeTasks {
    pub execs: Arc<Mutex<Vec<ExecRequest>>>,
    pub resizes: Arc<Mutex<Vec<ResizePtyRequest>>>,
    pub exec_exits: Arc<tokio::sync::Semaphore>,
    pub exec_exit: u32,
    /// Every call that changes something, in order: `"Create c1"`, `"Kill c1 15"`, ...
    pub calls: Arc<Mutex<Vec<String>>>,
    pub tasks: Arc<Mutex<HashMap<String, FakeTask>>>,
    /// lifecycled's containers (bundles), by id.
    pub containers: Arc<Mutex<HashMap<String, String>>>,
    pub refuse_start: Arc<Mutex<HashSet<String>>>,
    /// Updates of these containers' tasks fail.
    pub refuse_update: Arc<Mutex<HashSet<String>>>,
    /// Pauses and resumes of these containers' tasks are done, but answered with an error (as
    /// when lifecycled dies before it answers).
    pub lose_answers: Arc<Mutex<HashSet<String>>>,
}

/// One task of the fake lifecycled.
pub struct FakeTask {
    pub status: &'static str,
    pub pid: u32,
    exit: watch::Sender<Option<u32>>,
    /// A deadly signal sent while it was paused: delivered when it is resumed.
    pending: Option<u32>,
}

impl FakeTask {
    fn end(&mut self, code: u32) {
        self.status = "stopped";
        self.exit.send_replace(Some(code));
    }
}

impl Default for FakeTasks {
    fn default() -> Self {
        FakeTasks {
            execs: Arc::default(),
            resizes: Arc::default(),
            exec_exits: Arc::new(tokio::sync::Semaphore::new(0)),
            exec_exit: 3,
            calls: Arc::default(),
            tasks: Arc::default(),
            containers: Arc::default(),
            refuse_start: Arc::default(),
            refuse_update: Arc::default(),
            lose_answers: Arc::default(),
        }
    }
}

impl FakeTasks {
    /// Serves its Tasks and Containers on `<dir>/lifecycled.sock` (in the calling runtime) and
    /// returns the socket.
    pub fn serve(&self, dir: &Path) -> PathBuf {
        let routes = Routes::new(TasksServer::new(self.clone())).add_service(ContainersServer::new(self.clone()));
        serve_lifecycled(dir, routes)
    }

    /// The running task of container `id` ends as its program would, with `code`.
    pub fn exit(&self, id: &str, code: u32) {
        if let Some(t) = self.tasks.lock().unwrap().get_mut(id) {
            t.end(code);
        }
    }

    /// The status of container `id`'s task, if it has one.
    pub fn status(&self, id: &str) -> Option<&'static str> {
        self.tasks.lock().unwrap().get(id).map(|t| t.status)
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn call(&self, what: String) {
        self.calls.lock().unwrap().push(what);
    }

    fn with_task<T>(&self, id: &str, f: impl FnOnce(&mut FakeTask) -> Result<T, Status>) -> Result<T, Status> {
        let mut tasks = self.tasks.lock().unwrap();
        let t = tasks.get_mut(id).ok_or_else(|| Status::not_found(format!("task {id} does not exist")))?;
        f(t)
    }
}

/// Serves a fake lifecycled's `routes` on `<dir>/lifecycled.sock` (in the calling runtime) and
/// returns the socket.
pub fn serve_lifecycled(dir: &Path, routes: Routes) -> PathBuf {
    let sock = dir.join("lifecycled.sock");
    let listener = engine_api::bind_unix(&sock).expect("binding the fake lifecycled");
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await
    });
    sock
}

fn unimplemented<T>(rpc: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!("the fake lifecycled has no {rpc}")))
}

#[tonic::async_trait]
impl Tasks for FakeTasks {
    type ExecIOStream = tokio_stream::wrappers::ReceiverStream<Result<IoChunk, Status>>;
    type LogsStream = tokio_stream::wrappers::ReceiverStream<Result<LogEntry, Status>>;

    async fn exec(&self, r: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        let r = r.into_inner();
        let process: serde_json::Value =
            serde_json::from_str(&r.process_json).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.execs.lock().unwrap().push(r);
        if process["args"][0] == "missing" {
            return Err(Status::internal("exec failed: exec: \"missing\": executable file not found in $PATH"));
        }
        Ok(Response::new(ExecResponse { pid: 4242 }))
    }
    async fn exec_wait(&self, _: Request<TaskRequest>) -> Result<Response<ExecOutput>, Status> {
        let permit = self.exec_exits.acquire().await.map_err(|_| Status::aborted("closed"))?;
        permit.forget();
        let status = ExitStatus { exit_status: self.exec_exit, ..Default::default() };
        Ok(Response::new(ExecOutput { status: Some(status), ..Default::default() }))
    }
    async fn resize_pty(&self, r: Request<ResizePtyRequest>) -> Result<Response<Empty>, Status> {
        self.resizes.lock().unwrap().push(r.into_inner());
        Ok(Response::new(Empty {}))
    }
    async fn create(&self, r: Request<CreateTaskRequest>) -> Result<Response<CreateTaskResponse>, Status> {
        let id = r.into_inner().container_id;
        self.call(format!("Create {id}"));
        if !self.containers.lock().unwrap().contains_key(&id) {
            return Err(Status::not_found(format!("container {id} does not exist")));
        }
        let mut tasks = self.tasks.lock().unwrap();
        if tasks.get(&id).is_some_and(|t| t.status != "stopped") {
            return Err(Status::already_exists(format!("task {id} already exists")));
        }
        let pid = 1000 + self.calls.lock().unwrap().len() as u32;
        let (exit, _) = watch::channel(None);
        tasks.insert(id, FakeTask { status: "created", pid, exit, pending: None });
        Ok(Response::new(CreateTaskResponse { pid }))
    }
    async fn start(&self, r: Request<TaskRequest>) -> Result<Response<Empty>, Status> {
        let id = r.into_inner().container_id;
        self.call(format!("Start {id}"));
        let refused = self.refuse_start.lock().unwrap().contains(&id);
        self.with_task(&id, |t| {
            if refused {
                t.end(127);
                return Err(Status::internal("exec: \"nope\": executable file not found in $PATH"));
            }
            t.status = "running";
            Ok(Response::new(Empty {}))
        })
    }
    async fn kill(&self, r: Request<KillRequest>) -> Result<Response<Empty>, Status> {
        let r = r.into_inner();
        if !r.exec_id.is_empty() {
            self.call(format!("Kill {} {} {}", r.container_id, r.exec_id, r.signal));
            return Ok(Response::new(Empty {}));
        }
        self.call(format!("Kill {} {}", r.container_id, r.signal));
        self.with_task(&r.container_id, |t| {
            let deadly = matches!(r.signal, 9 | 15);
            match t.status {
                "running" if deadly => t.end(128 + r.signal),
                "paused" if deadly => t.pending = Some(r.signal),
                "stopped" => return Err(Status::failed_precondition("container not running")),
                _ => {}
            }
            Ok(Response::new(Empty {}))
        })
    }
    async fn delete(&self, r: Request<TaskRequest>) -> Result<Response<ExitStatus>, Status> {
        let r = r.into_inner();
        if !r.exec_id.is_empty() {
            self.call(format!("Delete {} {}", r.container_id, r.exec_id));
            return Ok(Response::new(ExitStatus::default()));
        }
        let id = r.container_id;
        self.call(format!("Delete {id}"));
        let mut tasks = self.tasks.lock().unwrap();
        let t = tasks.get(&id).ok_or_else(|| Status::not_found(format!("task {id} does not exist")))?;
        if matches!(t.status, "running" | "paused") {
            return Err(Status::failed_precondition(format!("cannot delete task {id}: it is {}", t.status)));
        }
        let code = t.exit.borrow().unwrap_or(0);
        tasks.remove(&id);
        Ok(Response::new(ExitStatus { exit_status: code, ..Default::default() }))
    }
    async fn wait(&self, r: Request<TaskRequest>) -> Result<Response<ExitStatus>, Status> {
        let id = r.into_inner().container_id;
        let (mut exit, pid) = self.with_task(&id, |t| Ok((t.exit.subscribe(), t.pid)))?;
        let code = exit.wait_for(Option::is_some).await.map_err(|_| Status::aborted("task deleted"))?.unwrap_or(0);
        Ok(Response::new(ExitStatus { exit_status: code, pid, ..Default::default() }))
    }
    async fn exec_io(&self, _: Request<TaskRequest>) -> Result<Response<Self::ExecIOStream>, Status> {
        unimplemented("ExecIO")
    }
    async fn write(&self, _: Request<WriteRequest>) -> Result<Response<Empty>, Status> {
        unimplemented("Write")
    }
    async fn close_io(&self, _: Request<TaskRequest>) -> Result<Response<Empty>, Status> {
        unimplemented("CloseIO")
    }
    async fn state(&self, r: Request<TaskRequest>) -> Result<Response<TaskState>, Status> {
        let id = r.into_inner().container_id;
        self.with_task(&id, |t| {
            let exit = t.exit.borrow().map(|code| ExitStatus { exit_status: code, pid: t.pid, ..Default::default() });
            Ok(Response::new(TaskState {
                container_id: id.clone(),
                status: t.status.into(),
                pid: t.pid,
                exit,
                terminal: false,
            }))
        })
    }
    async fn pids(&self, _: Request<TaskRequest>) -> Result<Response<PidsResponse>, Status> {
        unimplemented("Pids")
    }
    async fn pause(&self, r: Request<TaskRequest>) -> Result<Response<Empty>, Status> {
        let id = r.into_inner().container_id;
        self.call(format!("Pause {id}"));
        let lost = self.lose_answers.lock().unwrap().contains(&id);
        self.with_task(&id, |t| match t.status {
            "running" => {
                t.status = "paused";
                if lost {
                    return Err(Status::internal("the answer was lost"));
                }
                Ok(Response::new(Empty {}))
            }
            other => Err(Status::failed_precondition(format!("cannot pause task {id}: it is {other}"))),
        })
    }
    async fn resume(&self, r: Request<TaskRequest>) -> Result<Response<Empty>, Status> {
        let id = r.into_inner().container_id;
        self.call(format!("Resume {id}"));
        self.with_task(&id, |t| match t.status {
            "paused" => {
                t.status = "running";
                if let Some(signal) = t.pending.take() {
                    t.end(128 + signal);
                }
                Ok(Response::new(Empty {}))
            }
            other => Err(Status::failed_precondition(format!("cannot resume task {id}: it is {other}"))),
        })
    }
    async fn update(&self, r: Request<UpdateTaskRequest>) -> Result<Response<Empty>, Status> {
        let r = r.into_inner();
        self.call(format!("Update {} {}", r.container_id, r.resources_json));
        if self.refuse_update.lock().unwrap().contains(&r.container_id) {
            return Err(Status::internal("runtime update: cannot set the memory limit"));
        }
        self.with_task(&r.container_id, |t| match t.status {
            "created" | "running" | "paused" => Ok(Response::new(Empty {})),
            other => Err(Status::failed_precondition(format!("cannot update task {}: it is {other}", r.container_id))),
        })
    }
    async fn stats(&self, _: Request<TaskRequest>) -> Result<Response<StatsResponse>, Status> {
        unimplemented("Stats")
    }
    async fn logs(&self, _: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        unimplemented("Logs")
    }
}

#[tonic::async_trait]
impl Containers for FakeTasks {
    async fn create(&self, r: Request<CreateContainerRequest>) -> Result<Response<Container>, Status> {
        let r = r.into_inner();
        self.call(format!("CreateContainer {}", r.id));
        let mut containers = self.containers.lock().unwrap();
        if containers.contains_key(&r.id) {
            return Err(Status::already_exists(format!("container {} already exists", r.id)));
        }
        containers.insert(r.id.clone(), r.bundle.clone());
        Ok(Response::new(Container { id: r.id, bundle: r.bundle, labels: r.labels, created_unix_nanos: 0 }))
    }
    async fn get(&self, _: Request<ContainerId>) -> Result<Response<Container>, Status> {
        unimplemented("Containers.Get")
    }
    async fn list(&self, _: Request<ListContainersRequest>) -> Result<Response<ListContainersResponse>, Status> {
        let containers = self.containers.lock().unwrap();
        let containers = containers
            .iter()
            .map(|(id, bundle)| Container { id: id.clone(), bundle: bundle.clone(), ..Default::default() })
            .collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }
    async fn update(&self, _: Request<UpdateContainerRequest>) -> Result<Response<Container>, Status> {
        unimplemented("Containers.Update")
    }
    async fn delete(&self, r: Request<ContainerId>) -> Result<Response<Empty>, Status> {
        let id = r.into_inner().id;
        self.call(format!("DeleteContainer {id}"));
        if self.tasks.lock().unwrap().contains_key(&id) {
            return Err(Status::failed_precondition(format!("container {id} has a task: delete it first")));
        }
        match self.containers.lock().unwrap().remove(&id) {
            Some(_) => Ok(Response::new(Empty {})),
            None => Err(Status::not_found(format!("container {id} does not exist"))),
        }
    }
}

/// A container record `id` named `name` whose rootfs is `rootfs` (not running).
pub fn record(id: &str, name: &str, rootfs: &Path) -> ContainerRecord {
    serde_json::from_value(serde_json::json!({
        "id": id, "name": name, "created": "2026-01-01T00:00:00Z", "path": "sh", "args": [],
        "config": {}, "host_config": {}, "image": "busybox",
        "image_id": format!("sha256:{}", "a".repeat(64)), "state": {}, "restart_count": 0,
        "manually_stopped": false, "rootfs": rootfs, "upper": "/u", "work": "/w", "lower": [],
    }))
    .expect("a record")
}

/// Puts `rec` in `store` with its directory and `spec` as its bundle's config.json.
pub fn insert(store: &ContainerStore, rec: ContainerRecord, spec: &oci_spec::runtime::Spec) -> Arc<Entry> {
    let dir = store.make_dir(&rec.id).expect("the container's directory");
    spec.save(dir.join("config.json")).expect("writing config.json");
    let name = store.reserve(&rec.name).expect("a free name");
    store.insert(rec, name).expect("inserting the record")
}

/// A daemon over a fake lifecycled, in a directory of its own, that needs no root: no default
/// bridge (its containers use the host's network), vfs snapshots (copies, no mounts), no
/// firewall, no probes. It has one image, `tiny` (a file `/bin/tiny`).
pub struct TestDaemon {
    pub daemon: Arc<Daemon>,
    pub fake: FakeTasks,
    /// Holds the daemon's directories (removed when the test ends).
    _dir: tempfile::TempDir,
}

pub async fn daemon() -> TestDaemon {
    let dir = tempfile::tempdir().expect("a directory");
    let path = |p: &str| dir.path().join(p).display().to_string();
    let cfg = Config::parse_from([
        "engined",
        "--host",
        &format!("unix://{}", path("engine.sock")),
        "--data-root",
        &path("data"),
        "--exec-root",
        &path("exec"),
        "--bridge-name",
        "none",
        "--storage-driver",
        "vfs",
        "--iptables",
        "false",
        "--no-probes",
        "--cgroup-parent",
        "/engine-unit-test",
        "--orphan-collection-interval",
        "0",
    ])
    .resolve()
    .expect("the configuration");
    std::fs::create_dir_all(&cfg.exec_root).expect("the exec-root");
    let fake = FakeTasks::default();
    fake.serve(&cfg.exec_root);
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let traces = crate::traces::start(&cfg, None, metrics.clone()).expect("the trace store");
    let probes = crate::kernel::ProbeState::Disabled("a unit test".into());
    let supervisor = crate::supervisor::Supervisor::unsupervised();
    let daemon = Daemon::open(Arc::new(cfg), supervisor, traces, probes, metrics).await.expect("the daemon");
    let mut layer = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(4);
    header.set_mode(0o755);
    header.set_uid(nix::unistd::getuid().as_raw() as u64);
    header.set_gid(nix::unistd::getgid().as_raw() as u64);
    layer.append_data(&mut header, "bin/tiny", &b"tiny"[..]).expect("a layer");
    let layer = layer.into_inner().expect("a layer");
    let opts = engine_image::ImportOptions {
        reference: Some(engine_image::Reference::parse("tiny").expect("a name")),
        changes: vec!["CMD [\"/bin/tiny\"]".into()],
        message: None,
    };
    daemon.images.import(&layer[..], &opts, &()).expect("importing tiny");
    TestDaemon { daemon, fake, _dir: dir }
}
