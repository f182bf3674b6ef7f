//! lifecycled driven through its gRPC API with real bundles: run, logs, exec, pids, stats,
//! pause/resume, kill, wait, delete, events; a terminal; an OOM kill.

mod common;
use common::*;
use engine_api::v1::*;

fn req(id: &str) -> TaskRequest {
    TaskRequest { container_id: id.into(), exec_id: String::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_exec_pause_kill_wait_delete() {
    let l = Lifecycled::start();
    let events = collect_events(&l, 1, "c1");
    let pid = l.run("c1", &["sh", "-c", "echo hello; echo oops >&2; exec sleep 1000"]).await;
    let mut tasks = l.tasks();

    // logs, with their streams
    let logs = |follow: bool| {
        let mut t = l.tasks();
        async move {
            let mut s = t.logs(LogsRequest { container_id: "c1".into(), follow, tail: 0 }).await.unwrap().into_inner();
            let mut out = Vec::new();
            while let Ok(Some(e)) = s.message().await {
                out.push((e.stream, String::from_utf8_lossy(&e.line).into_owned()));
            }
            out
        }
    };
    eventually("both log lines", || async { logs(false).await.len() >= 2 }).await;
    let got = logs(false).await;
    assert!(got.contains(&("stdout".into(), "hello\n".into())), "{got:?}");
    assert!(got.contains(&("stderr".into(), "oops\n".into())), "{got:?}");

    // exec with its output and exit code
    let bundle_spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(l.dir.path().join("bundles/c1/config.json")).unwrap()).unwrap();
    let mut process = bundle_spec["process"].clone();
    process["args"] = serde_json::json!(["sh", "-c", "echo exec-out; echo exec-err >&2; exit 3"]);
    tasks
        .exec(ExecRequest {
            container_id: "c1".into(),
            exec_id: "e1".into(),
            process_json: process.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    let out =
        tasks.exec_wait(TaskRequest { container_id: "c1".into(), exec_id: "e1".into() }).await.unwrap().into_inner();
    assert_eq!(out.status.unwrap().exit_status, 3);
    assert_eq!(out.stdout, b"exec-out\n");
    assert_eq!(out.stderr, b"exec-err\n");

    // pids and stats
    let pids = tasks.pids(req("c1")).await.unwrap().into_inner().pids;
    assert!(pids.contains(&pid), "{pids:?} lacks {pid}");
    let stats: serde_json::Value =
        serde_json::from_str(&tasks.stats(req("c1")).await.unwrap().into_inner().stats_json).unwrap();
    assert!(stats["data"]["pids"]["current"].as_u64().unwrap() >= 1, "{stats}");

    // pause and resume
    tasks.pause(req("c1")).await.unwrap();
    assert_eq!(tasks.state(req("c1")).await.unwrap().into_inner().status, "paused");
    tasks.resume(req("c1")).await.unwrap();
    assert_eq!(tasks.state(req("c1")).await.unwrap().into_inner().status, "running");

    // a running task cannot be deleted; kill, wait, delete
    let err = tasks.delete(req("c1")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    tasks.kill(KillRequest { container_id: "c1".into(), exec_id: String::new(), signal: 9, all: false }).await.unwrap();
    let st = tasks.wait(req("c1")).await.unwrap().into_inner();
    assert_eq!(st.exit_status, 137);
    assert_eq!(st.pid, pid);
    let st = tasks.delete(req("c1")).await.unwrap().into_inner();
    assert_eq!(st.exit_status, 137);
    l.assert_task_gone("c1", pid);
    // the log outlives the task
    assert!(logs(false).await.contains(&("stdout".into(), "hello\n".into())));
    l.containers().delete(ContainerId { id: "c1".into() }).await.unwrap();

    eventually("the delete events", || async { topics(&events).contains(&"/containers/delete".to_string()) }).await;
    let t = topics(&events);
    let want = [
        "/containers/create",
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
        "/containers/delete",
    ];
    assert_eq!(t, want);
    let exit = events.lock().unwrap().iter().find(|e| e.topic == "/tasks/exit").cloned().unwrap();
    assert_eq!((exit.exit_status, exit.pid), (137, pid));

    // every hop left spans in the one sink: lifecycled's, the shim's and the runtime's
    let (spans, _) =
        engine_telemetry::read_spans(std::io::BufReader::new(std::fs::File::open(l.spans()).unwrap())).unwrap();
    for name in ["lifecycle.Tasks/Create", "shim.create", "runtime.create", "runtime.namespaces"] {
        assert!(spans.iter().any(|s| s.name == name), "no span {name}");
    }
    let lc = spans.iter().find(|s| s.name == "lifecycle.Tasks/Create").unwrap();
    let shim = spans.iter().find(|s| s.name == "shim.create").unwrap();
    let rt = spans.iter().find(|s| s.name == "runtime.create").unwrap();
    assert_eq!(shim.parent_span_id, lc.span_id, "shim.create under lifecycle.Tasks/Create");
    assert_eq!(rt.parent_span_id, shim.span_id, "runtime.create under shim.create");
    assert!(lc.trace_id == shim.trace_id && shim.trace_id == rt.trace_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_and_oom() {
    let l = Lifecycled::start();
    let bundle = l.bundle("t1", &["sh", "-c", "tty; stty size"]);
    l.edit_spec(&bundle, |s| s["process"]["terminal"] = serde_json::json!(true));
    l.containers()
        .create(CreateContainerRequest {
            id: "t1".into(),
            bundle: bundle.display().to_string(),
            labels: Default::default(),
        })
        .await
        .unwrap();
    let mut tasks = l.tasks();
    let pid = tasks
        .create(CreateTaskRequest { container_id: "t1".into(), terminal: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .pid;
    tasks
        .resize_pty(ResizePtyRequest { container_id: "t1".into(), width: 91, height: 33, ..Default::default() })
        .await
        .unwrap();
    tasks.start(req("t1")).await.unwrap();
    assert_eq!(tasks.wait(req("t1")).await.unwrap().into_inner().exit_status, 0);
    let mut s =
        tasks.logs(LogsRequest { container_id: "t1".into(), follow: false, tail: 0 }).await.unwrap().into_inner();
    let mut text = String::new();
    while let Ok(Some(e)) = s.message().await {
        text.push_str(&String::from_utf8_lossy(&e.line));
    }
    assert_eq!(text.replace("\r\n", "\n"), "/dev/pts/0\n33 91\n");
    tasks.delete(req("t1")).await.unwrap();
    l.assert_task_gone("t1", pid);

    // 32 MiB limit, no swap, a 64 MiB buffer: OOM-killed, and said so
    let events = collect_events(&l, 1, "o1");
    let bundle = l.bundle("o1", &["sh", "-c", "exec dd if=/dev/zero of=/dev/null bs=64M count=1"]);
    l.edit_spec(&bundle, |s| {
        s["linux"]["resources"]["memory"] = serde_json::json!({"limit": 33554432, "swap": 33554432})
    });
    l.containers()
        .create(CreateContainerRequest {
            id: "o1".into(),
            bundle: bundle.display().to_string(),
            labels: Default::default(),
        })
        .await
        .unwrap();
    tasks.create(CreateTaskRequest { container_id: "o1".into(), ..Default::default() }).await.unwrap();
    tasks.start(req("o1")).await.unwrap();
    let st = tasks.wait(req("o1")).await.unwrap().into_inner();
    assert_eq!((st.exit_status, st.reason.as_str()), (137, "OOMKilled"));
    eventually("the oom event", || async { topics(&events).contains(&"/tasks/oom".to_string()) }).await;
    tasks.delete(req("o1")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_changes_nothing() {
    let l = Lifecycled::start();
    let mut containers = l.containers();
    let mut tasks = l.tasks();

    let err = tasks.create(CreateTaskRequest { container_id: "nope".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("container nope does not exist"), "{err:?}");
    let err = tasks.start(req("nope")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // an invalid spec: refused with the runtime's reason, no record made
    let bundle = l.bundle("bad", &["true"]);
    l.edit_spec(&bundle, |s| s["linux"]["namespaces"] = serde_json::json!([{"type": "bogus"}]));
    let err = containers
        .create(CreateContainerRequest {
            id: "bad".into(),
            bundle: bundle.display().to_string(),
            labels: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("bogus"), "{err:?}");
    assert!(containers.get(ContainerId { id: "bad".into() }).await.is_err());
    let err = containers
        .create(CreateContainerRequest {
            id: "../x".into(),
            bundle: bundle.display().to_string(),
            labels: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // duplicates
    l.run("d1", &["sleep", "1000"]).await;
    let b = l.bundle("d1b", &["true"]);
    let err = containers
        .create(CreateContainerRequest { id: "d1".into(), bundle: b.display().to_string(), labels: Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let err = tasks.create(CreateTaskRequest { container_id: "d1".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let err = containers.delete(ContainerId { id: "d1".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // exec in a stopped task
    tasks.kill(KillRequest { container_id: "d1".into(), exec_id: String::new(), signal: 9, all: false }).await.unwrap();
    tasks.wait(req("d1")).await.unwrap();
    let err = tasks
        .exec(ExecRequest {
            container_id: "d1".into(),
            exec_id: "x".into(),
            process_json: r#"{"args":["true"],"cwd":"/"}"#.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("not running"), "{err:?}");
    tasks.delete(req("d1")).await.unwrap();

    // a task whose runtime create fails leaves nothing behind
    let b = l.bundle("f1", &["no-such-program"]);
    containers
        .create(CreateContainerRequest { id: "f1".into(), bundle: b.display().to_string(), labels: Default::default() })
        .await
        .unwrap();
    let err = tasks.create(CreateTaskRequest { container_id: "f1".into(), ..Default::default() }).await.unwrap_err();
    assert!(err.message().contains("no-such-program"), "{err:?}");
    assert!(!l.task_dir("f1").exists());
    for d in l.cgroup_dirs("f1") {
        assert!(!d.exists(), "{}", d.display());
    }
}
