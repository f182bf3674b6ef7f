//! The one client of engine-lifecycled: one lazily connected channel for the whole daemon, every
//! unary call retried while lifecycled is down (the supervisor is restarting it), and the trace
//! context of the operation in progress put into every call's metadata by an interceptor, so no
//! call can leave its operation's trace.
//!
//! Owns: the connection to lifecycled. It must never hold container state or decide policy: it
//! only carries calls.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use engine_api::v1::containers_client::ContainersClient;
use engine_api::v1::tasks_client::TasksClient;
use engine_api::v1::*;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// Puts the `traceparent` of the operation the calling task serves (see
/// [`crate::trace::current_traceparent`]) into each request's metadata.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContext;

impl tonic::service::Interceptor for TraceContext {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        Ok(engine_api::with_traceparent(req, crate::trace::current_traceparent().as_deref()))
    }
}

/// The channel every client of lifecycled goes through.
pub type LifecycleChannel = InterceptedService<Channel, TraceContext>;

/// How long a call keeps being retried while lifecycled does not answer at all.
const UNAVAILABLE_FOR: Duration = Duration::from_secs(30);

/// The daemon's client of lifecycled (cheap to clone: one shared channel).
#[derive(Clone)]
pub struct Lifecycle {
    channel: LifecycleChannel,
}

macro_rules! unary {
    ($($(#[$doc:meta])* $name:ident: $client:ident.$rpc:ident($req:ty) -> $resp:ty;)*) => {$(
        $(#[$doc])*
        pub async fn $name(&self, req: $req) -> Result<$resp, Status> {
            self.retry(|| {
                let mut c = self.$client();
                let r = req.clone();
                async move { c.$rpc(r).await.map(tonic::Response::into_inner) }
            })
            .await
        }
    )*};
}

impl Lifecycle {
    /// A client of the lifecycled listening on `socket` (connected at the first call).
    pub fn new(socket: &Path) -> Lifecycle {
        Lifecycle { channel: InterceptedService::new(engine_api::unix_channel(socket), TraceContext) }
    }

    pub fn tasks(&self) -> TasksClient<LifecycleChannel> {
        TasksClient::new(self.channel.clone())
    }

    pub fn containers(&self) -> ContainersClient<LifecycleChannel> {
        ContainersClient::new(self.channel.clone())
    }

    /// Runs `call` until it gets an answer: an `Unavailable` (lifecycled down, or restarting)
    /// is retried every 100 ms until lifecycled has been unreachable for [`UNAVAILABLE_FOR`].
    pub async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut unavailable_since = None;
        loop {
            match call().await {
                Err(s) if s.code() == Code::Unavailable => {
                    let since = *unavailable_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= UNAVAILABLE_FOR {
                        return Err(s);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                r => return r,
            }
        }
    }

    unary! {
        create_container: containers.create(CreateContainerRequest) -> Container;
        delete_container: containers.delete(ContainerId) -> Empty;
        list_containers: containers.list(ListContainersRequest) -> ListContainersResponse;
        create_task: tasks.create(CreateTaskRequest) -> CreateTaskResponse;
        start_task: tasks.start(TaskRequest) -> Empty;
        kill: tasks.kill(KillRequest) -> Empty;
        delete_task: tasks.delete(TaskRequest) -> ExitStatus;
        /// Waits for the task's (or exec's) exit: as long as the process runs.
        wait: tasks.wait(TaskRequest) -> ExitStatus;
        state: tasks.state(TaskRequest) -> TaskState;
        exec: tasks.exec(ExecRequest) -> ExecResponse;
        /// Waits for an exec's exit, with the output it kept.
        exec_wait: tasks.exec_wait(TaskRequest) -> ExecOutput;
        resize_pty: tasks.resize_pty(ResizePtyRequest) -> Empty;
        write: tasks.write(WriteRequest) -> Empty;
        close_io: tasks.close_io(TaskRequest) -> Empty;
        pids: tasks.pids(TaskRequest) -> PidsResponse;
        pause: tasks.pause(TaskRequest) -> Empty;
        resume: tasks.resume(TaskRequest) -> Empty;
        update: tasks.update(UpdateTaskRequest) -> Empty;
        stats: tasks.stats(TaskRequest) -> StatsResponse;
    }

    /// The container's log entries (followed while it runs, if asked).
    pub async fn logs(&self, req: LogsRequest) -> Result<Streaming<LogEntry>, Status> {
        self.retry(|| {
            let mut c = self.tasks();
            let r = req.clone();
            async move { c.logs(r).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// An exec's output from its start until it is drained.
    pub async fn exec_io(&self, req: TaskRequest) -> Result<Streaming<IoChunk>, Status> {
        self.retry(|| {
            let mut c = self.tasks();
            let r = req.clone();
            async move { c.exec_io(r).await.map(tonic::Response::into_inner) }
        })
        .await
    }
}

/// The request naming the container's own task (not an exec).
pub fn task(container_id: &str) -> TaskRequest {
    TaskRequest { container_id: container_id.to_string(), exec_id: String::new() }
}

/// SIGKILL to every process of container `id`.
pub fn kill_all(id: &str) -> KillRequest {
    KillRequest { container_id: id.to_string(), exec_id: String::new(), signal: libc::SIGKILL as u32, all: true }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use engine_api::v1::containers_server::{Containers, ContainersServer};
    use tonic::{Request, Response};

    use super::*;
    use crate::trace::Trace;

    /// A fake lifecycled: its Containers service records the `traceparent` of every create.
    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<Vec<Option<String>>>>);

    #[tonic::async_trait]
    impl Containers for Fake {
        async fn create(&self, r: Request<CreateContainerRequest>) -> Result<Response<Container>, Status> {
            self.0.lock().unwrap().push(engine_api::traceparent_of(&r));
            Ok(Response::new(Container { id: r.into_inner().id, ..Default::default() }))
        }
        async fn get(&self, _: Request<ContainerId>) -> Result<Response<Container>, Status> {
            Err(Status::not_found("no such container"))
        }
        async fn list(&self, _: Request<ListContainersRequest>) -> Result<Response<ListContainersResponse>, Status> {
            Ok(Response::new(ListContainersResponse::default()))
        }
        async fn update(&self, _: Request<UpdateContainerRequest>) -> Result<Response<Container>, Status> {
            Err(Status::unimplemented("update"))
        }
        async fn delete(&self, _: Request<ContainerId>) -> Result<Response<Empty>, Status> {
            Err(Status::failed_precondition("it has a task"))
        }
    }

    fn serve(dir: &Path) -> (Fake, std::path::PathBuf) {
        let fake = Fake::default();
        let sock =
            crate::testing::serve_lifecycled(dir, tonic::service::Routes::new(ContainersServer::new(fake.clone())));
        (fake, sock)
    }

    fn create(id: &str) -> CreateContainerRequest {
        CreateContainerRequest { id: id.into(), ..Default::default() }
    }

    #[tokio::test]
    async fn every_call_carries_the_trace_context_of_its_operation() {
        let dir = tempfile::tempdir().unwrap();
        let (fake, sock) = serve(dir.path());
        let lifecycle = Lifecycle::new(&sock);
        let spans = engine_telemetry::MemorySink::default();
        let trace = Arc::new(Trace::new(Some(&engine_telemetry::Sink::new(spans)), None, "POST /containers/{id}/kill"));
        let phase = trace.start("daemon.kill");
        trace.enter(phase);
        let expected = trace.traceparent(phase).unwrap();

        // in the operation's task, and in a task it spawns: the current span's context
        trace.scope(async { lifecycle.create_container(create("a")).await.unwrap() }).await;
        let spawned = lifecycle.clone();
        trace
            .scope(async {
                let task = crate::trace::spawn_in_operation(async move { spawned.create_container(create("b")).await });
                task.await.unwrap().unwrap()
            })
            .await;
        // outside any operation: none (lifecycled then starts no trace of its own either way)
        lifecycle.create_container(create("c")).await.unwrap();
        let seen = fake.0.lock().unwrap().clone();
        assert_eq!(seen, vec![Some(expected.clone()), Some(expected), None]);

        // answers other than "unavailable" come back at once, with their code
        let err = lifecycle.delete_container(ContainerId { id: "a".into() }).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_is_retried_until_it_has_lasted_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let lifecycle = Lifecycle::new(&dir.path().join("lifecycled.sock"));
        // lifecycled comes back after a few refused attempts: the call succeeds
        let mut attempts = 0;
        let r = lifecycle
            .retry(|| {
                attempts += 1;
                let n = attempts;
                async move {
                    if n < 5 {
                        Err(Status::unavailable("restarting"))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(r.unwrap(), 5);
        // never back: the call gives up once it has been unavailable for the whole limit
        let started = tokio::time::Instant::now();
        let err = lifecycle.retry(|| async { Err::<(), _>(Status::unavailable("gone")) }).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(started.elapsed() >= UNAVAILABLE_FOR);
        // a real socket nobody listens on is unavailable too, and gives up the same way
        let err = lifecycle.create_container(create("x")).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
    }
}
