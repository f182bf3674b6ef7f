//! `make demo`: one container start through every hop that exists so far — a client span,
//! engine-lifecycled, engine-shim, engine-runtime and engine-init — recorded as one trace in
//! the span file `scripts/demo` then shows with `engine trace`.
//!
//!   demo BIN_DIR BUNDLE OUT_DIR

use std::path::PathBuf;
use std::process::{Command, Stdio};

use engine_api::v1::containers_client::ContainersClient;
use engine_api::v1::tasks_client::TasksClient;
use engine_api::v1::*;
use engine_api::with_traceparent;
use engine_telemetry::Recorder;
use tonic::Request;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [bin, bundle, out] = &args[..] else { anyhow::bail!("usage: demo BIN_DIR BUNDLE OUT_DIR") };
    let sock = out.join("lifecycled.sock");
    let spans = out.join("spans.jsonl");
    /// Stops lifecycled however the demo ends.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let lifecycled = Command::new(bin.join("engine-lifecycled"))
        .arg("--address").arg(&sock)
        .arg("--root").arg(out.join("root"))
        .arg("--state").arg(out.join("state"))
        .arg("--runtime").arg(bin.join("engine-runtime"))
        .arg("--shim").arg(bin.join("engine-shim"))
        .env("ENGINE_SPAN_SINK", &spans)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(out.join("lifecycled.log"))?)
        .spawn()?;
    let stop = Stop(lifecycled);
    for _ in 0..500 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let channel = engine_api::unix_channel(&sock);
    let (mut containers, mut tasks) = (ContainersClient::new(channel.clone()), TasksClient::new(channel));

    // the client's root span: everything below nests under it
    let sink = std::fs::OpenOptions::new().create(true).append(true).open(&spans)?;
    let mut rec = Recorder::for_request("engine-demo", Some(&sink), None);
    let root = rec.start("demo.run", None);
    rec.set_attr(root, "container.id", "demo");
    let tp = rec.context(root).map(|c| c.traceparent());
    let tp = tp.as_deref();
    let req = || TaskRequest { container_id: "demo".into(), exec_id: String::new() };

    let result = async {
        let create = CreateContainerRequest { id: "demo".into(), bundle: bundle.display().to_string(), labels: Default::default() };
        containers.create(with_traceparent(Request::new(create), tp)).await?;
        let create = CreateTaskRequest { container_id: "demo".into(), ..Default::default() };
        let pid = tasks.create(with_traceparent(Request::new(create), tp)).await?.into_inner().pid;
        tasks.start(with_traceparent(Request::new(req()), tp)).await?;
        let exit = tasks.wait(with_traceparent(Request::new(req()), tp)).await?.into_inner();
        let mut logs = tasks.logs(LogsRequest { container_id: "demo".into(), follow: false, tail: 0 }).await?.into_inner();
        while let Some(entry) = logs.message().await? {
            print!("[{}] {}", entry.stream, String::from_utf8_lossy(&entry.line));
        }
        tasks.delete(with_traceparent(Request::new(req()), tp)).await?;
        containers.delete(with_traceparent(Request::new(ContainerId { id: "demo".into() }), tp)).await?;
        println!("container demo (pid {pid}) exited with {}", exit.exit_status);
        Ok::<_, tonic::Status>(())
    }
    .await;
    rec.finish(root, result.as_ref().map_err(|s| s.message().to_string())).ok();
    rec.flush();
    drop(stop);
    if let Some(trace) = rec.context(root) {
        println!("trace {}", trace.trace_id);
    }
    result.map_err(|s| anyhow::anyhow!("{}", s.message()))
}
