//! Real engines drive engine-runtime: Debian's dockerd (with its containerd and
//! containerd-shim-runc-v2) started on private sockets and directories with
//! `--add-runtime engine=<engine-runtime>`, running a busybox image with `--runtime engine`.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

/// A private dockerd: own socket, data-root, exec-root, pidfile and cgroup parent; no bridge,
/// no iptables. Stopped and cleaned up on drop.
struct Dockerd {
    child: Child,
    dir: tempfile::TempDir,
    sock: PathBuf,
    cgroup_parent: String,
}

fn docker_cli() -> PathBuf {
    // Debian's client matches its daemon; any client negotiates the API version
    ["/usr/bin/docker", "/usr/local/bin/docker"].iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or_else(|| which("docker"))
}

impl Dockerd {
    fn start() -> Dockerd {
        let dockerd = which("dockerd");
        let dir = tempfile::Builder::new().prefix("engine-dockerd").tempdir().unwrap();
        let sock = dir.path().join("docker.sock");
        std::fs::write(dir.path().join("daemon.json"), "{}").unwrap();
        let cgroup_parent = format!("/engine-docker-test-{}", std::process::id());
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let child = Command::new(dockerd)
            .arg("-H").arg(format!("unix://{}", sock.display()))
            .arg("--data-root").arg(dir.path().join("data"))
            .arg("--exec-root").arg(dir.path().join("exec"))
            .arg("--pidfile").arg(dir.path().join("docker.pid"))
            .arg("--config-file").arg(dir.path().join("daemon.json"))
            .args(["--bridge", "none", "--iptables=false", "--ip-masq=false", "--ip-forward=false", "--userland-proxy=false"])
            .args(["--storage-driver", "overlay2", "--exec-opt", "native.cgroupdriver=cgroupfs", "--log-level", "warn"])
            .arg("--cgroup-parent").arg(&cgroup_parent)
            .arg("--add-runtime").arg(format!("engine={RUNTIME}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let d = Dockerd { child, dir, sock, cgroup_parent };
        wait_for("dockerd to answer", || d.sock.exists() && d.docker(&["version"]).status.success());
        d
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new(docker_cli())
            .arg("-H").arg(format!("unix://{}", self.sock.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(out.status.success(), "docker {args:?}: {}\n{}", stderr(&out), self.log_tail());
        stdout(&out)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!("dockerd log:\n{}", lines[lines.len().saturating_sub(15)..].join("\n"))
    }

    /// Where containerd-shim-runc-v2 has the runtime keep its state (`--root`); dockerd 20.10
    /// names it after runc whichever runtime runs.
    fn runtime_root(&self) -> PathBuf {
        self.dir.path().join("exec/runtime-runc/moby")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]);
        for id in stdout(&ids).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        // SAFETY: SIGTERM to the dockerd we started, by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // whatever dockerd left mounted under its directories (it unmounts on a clean stop)
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = info.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(self.dir.path().to_str().unwrap())).collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
        for m in cgroup_mounts() {
            let _ = std::fs::remove_dir(m.join(self.cgroup_parent.trim_start_matches('/')));
        }
    }
}

/// A busybox image made from busybox-static with `docker import`.
fn import_busybox(d: &Dockerd) {
    let rootfs = d.dir.path().join("image-rootfs");
    make_busybox_rootfs(&rootfs);
    let tar = d.dir.path().join("busybox.tar");
    let st = Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg(".").status().unwrap();
    assert!(st.success());
    d.ok(&["import", tar.to_str().unwrap(), "engine-busybox:test"]);
}

fn exit_code(d: &Dockerd, name: &str) -> String {
    d.ok(&["inspect", "-f", "{{.State.ExitCode}}", name]).trim().to_string()
}

fn state_of(d: &Dockerd, name: &str) -> String {
    d.ok(&["inspect", "-f", "{{.State.Status}}", name]).trim().to_string()
}

#[test]
fn dockerd_runs_busybox_with_engine_runtime() {
    let d = Dockerd::start();
    import_busybox(&d);
    let run = ["run", "--runtime", "engine", "--network", "none"];

    // detached, with logs and exec
    let id = d.ok(&[&run[..], &["-d", "--name", "d1", "engine-busybox:test", "sh", "-c", "echo hello-from-engine; sleep 1000"]].concat());
    let id = id.trim();
    assert_eq!(d.ok(&["inspect", "-f", "{{.HostConfig.Runtime}}", "d1"]).trim(), "engine");
    // the state is engine-runtime's (runc's has no pid_start_time)
    let state = std::fs::read_to_string(d.runtime_root().join(id).join("state.json")).unwrap();
    assert!(state.contains("pid_start_time"), "{state}");
    wait_for("the log line", || stdout(&d.docker(&["logs", "d1"])).contains("hello-from-engine"));
    assert_eq!(d.ok(&["exec", "d1", "sh", "-c", "echo exec-ok; cat /proc/1/cmdline | tr '\\0' ' '"]), "exec-ok\nsleep 1000 ", "busybox sh execs its last command");
    assert_eq!(d.docker(&["exec", "d1", "sh", "-c", "exit 5"]).status.code(), Some(5));
    assert_eq!(d.ok(&["exec", "-t", "d1", "tty"]).trim(), "/dev/pts/0");

    // pause and unpause
    d.ok(&["pause", "d1"]);
    assert_eq!(state_of(&d, "d1"), "paused");
    d.ok(&["unpause", "d1"]);
    assert_eq!(state_of(&d, "d1"), "running");

    // stop: sleep as PID 1 ignores SIGTERM, so docker kills it after the timeout
    d.ok(&["stop", "-t", "1", "d1"]);
    assert_eq!(state_of(&d, "d1"), "exited");
    assert_eq!(exit_code(&d, "d1"), "137");
    assert!(!d.runtime_root().join(id).exists(), "the runtime's state is deleted with the task");

    // kill with a signal
    d.ok(&[&run[..], &["-d", "--name", "d2", "engine-busybox:test", "sh", "-c", "trap 'exit 42' USR1; touch /tmp/ready; while :; do sleep 0.1; done"]].concat());
    wait_for("d2's trap to be set", || d.docker(&["exec", "d2", "test", "-e", "/tmp/ready"]).status.success());
    d.ok(&["kill", "-s", "USR1", "d2"]);
    wait_for("d2 to exit", || state_of(&d, "d2") == "exited");
    assert_eq!(exit_code(&d, "d2"), "42");

    // foreground: exit codes, and a terminal with -t
    assert_eq!(d.docker(&[&run[..], &["--rm", "engine-busybox:test", "sh", "-c", "exit 3"]].concat()).status.code(), Some(3));
    let out = d.ok(&[&run[..], &["--rm", "-t", "engine-busybox:test", "sh", "-c", "tty; stty size"]].concat());
    assert!(out.starts_with("/dev/pts/0"), "{out:?}");
    let out = d.ok(&[&run[..], &["--rm", "--memory", "64m", "engine-busybox:test", "cat", "/proc/self/status"]].concat());
    assert!(out.contains("Seccomp:\t2"), "docker's default seccomp profile is loaded: {out}");

    d.ok(&["rm", "-f", "d1", "d2"]);
    let left: Vec<_> = std::fs::read_dir(d.runtime_root()).map(|r| r.flatten().collect()).unwrap_or_default();
    assert!(left.is_empty(), "runtime state left: {left:?}");
}
