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
