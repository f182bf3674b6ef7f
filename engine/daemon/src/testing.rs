//! What the daemon's unit tests share: a fake lifecycled served on a unix socket (the real
//! gRPC contract, in memory) and container records to put in a store.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use engine_api::v1::tasks_server::{Tasks, TasksServer};
use engine_api::v1::*;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use crate::records::{ContainerRecord, ContainerStore, Entry};

/// A fake lifecycled's Tasks service. An exec whose program is `missing` fails as runc's does;
/// any other runs at once with pid 4242 and ends (`ExecWait` answers) with `exec_exit` once the
/// test adds a permit to `exec_exits`.
#[derive(Clone)]
pub struct FakeTasks {
    pub execs: Arc<Mutex<Vec<ExecRequest>>>,
    pub resizes: Arc<Mutex<Vec<ResizePtyRequest>>>,
    pub exec_exits: Arc<tokio::sync::Semaphore>,
    pub exec_exit: u32,
}

impl Default for FakeTasks {
    fn default() -> Self {
        FakeTasks {
            execs: Arc::default(),
            resizes: Arc::default(),
            exec_exits: Arc::new(tokio::sync::Semaphore::new(0)),
            exec_exit: 3,
        }
    }
}

impl FakeTasks {
    /// Serves it on `<dir>/lifecycled.sock` (in the calling runtime) and returns the socket.
    pub fn serve(&self, dir: &Path) -> PathBuf {
        serve_lifecycled(dir, Routes::new(TasksServer::new(self.clone())))
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
    async fn create(&self, _: Request<CreateTaskRequest>) -> Result<Response<CreateTaskResponse>, Status> {
        unimplemented("Create")
    }
    async fn start(&self, _: Request<TaskRequest>) -> Result<Response<Empty>, Status> {
        unimplemented("Start")
    }
    async fn kill(&self, _: Request<KillRequest>) -> Result<Response<Empty>, Status> {
        unimplemented("Kill")
    }
    async fn delete(&self, _: Request<TaskRequest>) -> Result<Response<ExitStatus>, Status> {
        unimplemented("Delete")
    }
    async fn wait(&self, _: Request<TaskRequest>) -> Result<Response<ExitStatus>, Status> {
        unimplemented("Wait")
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
    async fn state(&self, _: Request<TaskRequest>) -> Result<Response<TaskState>, Status> {
        unimplemented("State")
    }
    async fn pids(&self, _: Request<TaskRequest>) -> Result<Response<PidsResponse>, Status> {
        unimplemented("Pids")
    }
    async fn pause(&self, _: Request<TaskRequest>) -> Result<Response<Empty>, Status> {
        unimplemented("Pause")
    }
    async fn resume(&self, _: Request<TaskRequest>) -> Result<Response<Empty>, Status> {
        unimplemented("Resume")
    }
    async fn stats(&self, _: Request<TaskRequest>) -> Result<Response<StatsResponse>, Status> {
        unimplemented("Stats")
    }
    async fn logs(&self, _: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        unimplemented("Logs")
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
