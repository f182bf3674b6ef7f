//! A private engine-lifecycled per test: its own socket, root, state, runtime root and cgroup
//! parent; stopped, and everything it started cleaned up, when dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use engine_api::v1::containers_client::ContainersClient;
use engine_api::v1::events_client::EventsClient;
use engine_api::v1::tasks_client::TasksClient;
use engine_api::v1::*;
pub use engine_test_support::*;
use tonic::transport::Channel;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct Lifecycled {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub cgroup_parent: String,
    /// The OCI runtime it runs (engine-runtime unless a test wraps it).
    pub runtime: PathBuf,
}

impl Lifecycled {
    pub fn start() -> Lifecycled {
        Lifecycled::with_runtime(|_| bin("engine-runtime"))
    }

    /// One running the runtime `runtime(its directory)` returns: a wrapper a test writes there.
    pub fn with_runtime(runtime: impl FnOnce(&Path) -> PathBuf) -> Lifecycled {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = tempfile::Builder::new().prefix("engine-lc-test").tempdir().unwrap();
        let sock = dir.path().join("lifecycled.sock");
        let runtime = runtime(dir.path());
        let mut l = Lifecycled {
            child: None,
            dir,
            sock,
            cgroup_parent: format!("/engine-lc-test-{}-{n}", std::process::id()),
            runtime,
        };
        l.restart();
        l
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn spans(&self) -> PathBuf {
        self.dir.path().join("spans.jsonl")
    }

    /// Starts (again) a lifecycled on the same directories.
    pub fn restart(&mut self) {
        let _ = std::fs::remove_file(&self.sock);
        let log = std::fs::File::create(self.dir.path().join("lifecycled.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_engine-lifecycled"))
            .arg("--address")
            .arg(&self.sock)
            .arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--state")
            .arg(self.state())
            .arg("--runtime")
            .arg(&self.runtime)
            .arg("--shim")
            .arg(bin("engine-shim"))
            .env("ENGINE_SPAN_SINK", self.spans())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start engine-lifecycled");
        self.child = Some(child);
        wait_for("lifecycled's socket", || self.sock.exists());
    }

    /// kill -9 of lifecycled (its shims and containers stay).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn channel(&self) -> Channel {
        engine_api::unix_channel(&self.sock)
    }

    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel())
    }

    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel())
    }

    pub fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel())
    }

    /// A busybox bundle running `args` in this instance's cgroup parent.
    pub fn bundle(&self, name: &str, args: &[&str]) -> PathBuf {
        let path = self.dir.path().join("bundles").join(name);
        make_busybox_rootfs(&path.join("rootfs"));
        let out = Command::new(bin("engine-runtime")).args(["spec", "--bundle"]).arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        self.edit_spec(&path, |spec| {
            spec["process"]["args"] = serde_json::json!(args);
            spec["linux"]["cgroupsPath"] = serde_json::json!(format!("{}/{name}", self.cgroup_parent));
        });
        path
    }

    pub fn edit_spec(&self, bundle: &Path, f: impl FnOnce(&mut serde_json::Value)) {
        let config = bundle.join("config.json");
        let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        f(&mut spec);
        std::fs::write(&config, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    }

    /// Creates container `id` from a new bundle and its task; returns the task's pid.
    pub async fn run(&self, id: &str, args: &[&str]) -> u32 {
        let bundle = self.bundle(id, args);
        self.containers()
            .create(CreateContainerRequest {
                id: id.into(),
                bundle: bundle.display().to_string(),
                labels: Default::default(),
            })
            .await
            .unwrap();
        let pid = self
            .tasks()
            .create(CreateTaskRequest { container_id: id.into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .pid;
        self.tasks().start(TaskRequest { container_id: id.into(), exec_id: String::new() }).await.unwrap();
        pid
    }

    pub fn task_dir(&self, id: &str) -> PathBuf {
        self.state().join("tasks").join(id)
    }

    pub fn shim_pid(&self, id: &str) -> i32 {
        std::fs::read_to_string(self.task_dir(id).join("shim.pid")).unwrap().trim().parse().unwrap()
    }

    /// The cgroup directories container `id` would have.
    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        cgroup_mounts().into_iter().map(|m| m.join(self.cgroup_parent.trim_start_matches('/')).join(id)).collect()
    }

    /// Nothing of container `id`'s task is left: task directory, cgroups, mounts, processes.
    pub fn assert_task_gone(&self, id: &str, pid: u32) {
        assert!(!self.task_dir(id).exists(), "task directory of {id} left");
        for d in self.cgroup_dirs(id) {
            assert!(!d.exists(), "cgroup {} left", d.display());
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(self.dir.path().to_str().unwrap()),
            "a mount under {} is left",
            self.dir.path().display()
        );
        assert!(!process_running(pid as i32), "process {pid} of {id} still runs");
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn process_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
}

impl Drop for Lifecycled {
    fn drop(&mut self) {
        self.kill9();
        // shims we caused to be started, then whatever containers the runtime still has
        for entry in std::fs::read_dir(self.state().join("tasks")).into_iter().flatten().flatten() {
            if let Some(pid) =
                std::fs::read_to_string(entry.path().join("shim.pid")).ok().and_then(|s| s.trim().parse::<i32>().ok())
            {
                if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "engine-shim") {
                    // SAFETY: SIGKILL to a shim this test's lifecycled started, by pid.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let root = self.state().join("runtime");
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let _ = Command::new(bin("engine-runtime"))
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force"])
                .arg(entry.file_name())
                .output();
        }
        for m in cgroup_mounts() {
            let _ = std::fs::remove_dir(m.join(self.cgroup_parent.trim_start_matches('/')));
        }
    }
}

/// Collects events from a subscription in the background.
pub fn collect_events(l: &Lifecycled, since: u64, container_id: &str) -> std::sync::Arc<std::sync::Mutex<Vec<Event>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = seen.clone();
    let mut client = l.events();
    let req = SubscribeRequest { topics: vec![], container_id: container_id.into(), since };
    tokio::spawn(async move {
        let Ok(stream) = client.subscribe(req).await else { return };
        let mut stream = stream.into_inner();
        while let Ok(Some(e)) = stream.message().await {
            out.lock().unwrap().push(e);
        }
    });
    seen
}

pub fn topics(events: &std::sync::Mutex<Vec<Event>>) -> Vec<String> {
    events.lock().unwrap().iter().map(|e| e.topic.clone()).collect()
}

/// Polls an async condition with a deadline.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !f().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
