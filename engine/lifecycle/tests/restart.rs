//! Failures: kill -9 of lifecycled leaves shims and containers running and a new lifecycled
//! finds them; exits that happened while it was down are delivered exactly once; kill -9 of a
//! shim reports its task exited with a reason and leaves nothing behind.

mod common;
use common::*;
use engine_api::v1::*;

fn req(id: &str) -> TaskRequest {
    TaskRequest { container_id: id.into(), exec_id: String::new() }
}

fn exits(events: &[Event], id: &str) -> usize {
    events.iter().filter(|e| e.topic == "/tasks/exit" && e.container_id == id).count()
}

async fn journal(l: &Lifecycled) -> Vec<Event> {
    // replay the whole journal (since = 1); stop reading once the replay is through
    let mut s = l
        .events()
        .subscribe(SubscribeRequest { topics: vec![], container_id: String::new(), since: 1 })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Ok(Ok(Some(e))) = tokio::time::timeout(std::time::Duration::from_millis(300), s.message()).await {
        out.push(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycled_restarts_and_finds_its_tasks() {
    let mut l = Lifecycled::start();
    let pid_a = l.run("a", &["sleep", "1000"]).await;
    let pid_b = l.run("b", &["sleep", "1000"]).await;
    let shim_a = l.shim_pid("a");

    l.kill9();
    assert!(process_running(pid_a as i32) && process_running(shim_a), "the container and its shim outlive lifecycled");
    // b exits while nobody is listening
    // SAFETY: SIGKILL to a container process this test started.
    unsafe { libc::kill(pid_b as i32, libc::SIGKILL) };
    wait_for("b to die", || !process_running(pid_b as i32));

    l.restart();
    let mut tasks = l.tasks();
    assert_eq!(tasks.state(req("a")).await.unwrap().into_inner().status, "running");
    assert_eq!(tasks.wait(req("b")).await.unwrap().into_inner().exit_status, 137);
    // sleep as PID 1 ignores SIGTERM: SIGKILL
    tasks.kill(KillRequest { container_id: "a".into(), exec_id: String::new(), signal: 9, all: false }).await.unwrap();
    assert_eq!(tasks.wait(req("a")).await.unwrap().into_inner().exit_status, 137);

    // once more: nothing is delivered twice
    l.kill9();
    l.restart();
    eventually("the journal to hold both exits", || async {
        let j = journal(&l).await;
        exits(&j, "a") == 1 && exits(&j, "b") == 1
    })
    .await;
    let j = journal(&l).await;
    assert_eq!((exits(&j, "a"), exits(&j, "b")), (1, 1), "{j:?}");
    let mut tasks = l.tasks();
    for (id, pid) in [("a", pid_a), ("b", pid_b)] {
        tasks.delete(req(id)).await.unwrap();
        l.assert_task_gone(id, pid);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shim_is_reported_and_cleaned_up() {
    let l = Lifecycled::start();
    let pid = l.run("s", &["sleep", "1000"]).await;
    let shim = l.shim_pid("s");
    let fds_before = std::fs::read_dir("/proc/self/fd").unwrap().count();
    // SAFETY: SIGKILL to the shim this test's lifecycled started.
    unsafe { libc::kill(shim, libc::SIGKILL) };
    let mut tasks = l.tasks();
    let st = tasks.wait(req("s")).await.unwrap().into_inner();
    assert_eq!(st.exit_status, 137);
    assert!(st.reason.contains("shim died"), "{st:?}");
    assert!(!process_running(pid as i32), "the container was killed");
    for d in l.cgroup_dirs("s") {
        assert!(!d.exists(), "cgroup {} left", d.display());
    }
    assert!(!l.task_dir("s").join("shim.sock").exists(), "the shim's socket is removed");
    assert_eq!(tasks.state(req("s")).await.unwrap().into_inner().status, "stopped");
    tasks.delete(req("s")).await.unwrap();
    l.assert_task_gone("s", pid);
    let lc_pid = l.child.as_ref().unwrap().id();
    let lc_fds = std::fs::read_dir(format!("/proc/{lc_pid}/fd")).unwrap().count();
    assert!(lc_fds < 64, "lifecycled holds {lc_fds} descriptors");
    let _ = fds_before;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_cut_short_by_its_shims_death_leaves_no_container_behind() {
    // The first `create` waits for a go-ahead before it runs the real runtime; the shim is
    // killed while it waits. A runtime that outlived its shim would go on to make a container
    // nobody knows of once given the go-ahead, and the next create of that id would be refused.
    // (The gate also lets it through when the test ends, so a failed run leaves no process.)
    let mut gate = None;
    let l = Lifecycled::with_runtime(|dir| {
        let wrapper = dir.join("runtime");
        let g = Gate::new(dir.join("gate"));
        let script = format!(
            "#!/bin/sh\ncase \" $* \" in *\" create \"*)\n  if [ ! -e {d}/create.pid ]; then\n    echo $$ > {d}/create.pid.new && mv {d}/create.pid.new {d}/create.pid\n    read _ < {gate}\n  fi;;\nesac\nexec {rt} \"$@\"\n",
            d = dir.display(),
            gate = g.path.display(),
            rt = bin("engine-runtime").display()
        );
        gate = Some(g);
        std::fs::write(&wrapper, script).unwrap();
        std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        wrapper
    });
    let bundle = l.bundle("cut", &["sleep", "1000"]);
    l.containers()
        .create(CreateContainerRequest {
            id: "cut".into(),
            bundle: bundle.display().to_string(),
            labels: Default::default(),
        })
        .await
        .unwrap();
    let mut tasks = l.tasks();
    let first = tokio::spawn(async move {
        tasks.create(CreateTaskRequest { container_id: "cut".into(), ..Default::default() }).await
    });
    let pid_file = l.dir.path().join("create.pid");
    eventually("the runtime's create", || async { pid_file.exists() }).await;
    let runtime_pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    // SAFETY: SIGKILL to the shim this test's lifecycled started.
    unsafe { libc::kill(l.shim_pid("cut"), libc::SIGKILL) };
    first.await.unwrap().expect_err("a create whose shim died");
    eventually("the runtime to die with its shim", || async { !process_running(runtime_pid) }).await;
    gate.expect("the wrapper's gate").open();

    // the same container is created and run again, and removed without a trace
    let mut tasks = l.tasks();
    let pid = tasks
        .create(CreateTaskRequest { container_id: "cut".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .pid;
    tasks.start(req("cut")).await.unwrap();
    assert!(process_running(pid as i32));
    tasks
        .kill(KillRequest { container_id: "cut".into(), exec_id: String::new(), signal: 9, all: false })
        .await
        .unwrap();
    tasks.wait(req("cut")).await.unwrap();
    tasks.delete(req("cut")).await.unwrap();
    l.assert_task_gone("cut", pid);
}
