//! A private Debian dockerd for tests that check compatibility with Docker.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

/// A private dockerd: own socket, data-root, exec-root, pidfile and cgroup parent; no bridge,
/// no iptables. Stopped and cleaned up on drop.
pub struct Dockerd {
    child: Child,
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub cgroup_parent: String,
}

pub fn docker_cli() -> PathBuf {
    // Debian's client matches its daemon; any client negotiates the API version
    ["/usr/bin/docker", "/usr/local/bin/docker"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| crate::which("docker"))
}

impl Dockerd {
    /// Starts dockerd with `extra` arguments added (e.g. `--add-runtime engine=…`).
    pub fn start(extra: &[String]) -> Dockerd {
        let dockerd = crate::which("dockerd");
        let dir = tempfile::Builder::new().prefix("engine-dockerd").tempdir().unwrap();
        let sock = dir.path().join("docker.sock");
        std::fs::write(dir.path().join("daemon.json"), "{}").unwrap();
        let cgroup_parent = format!("/engine-docker-test-{}", std::process::id());
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let child = Command::new(dockerd)
            .envs(crate::OFFLINE_ENV)
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("docker.pid"))
            .arg("--config-file")
            .arg(dir.path().join("daemon.json"))
            .args([
                "--bridge",
                "none",
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
                "--userland-proxy=false",
            ])
            .args(["--storage-driver", "overlay2", "--exec-opt", "native.cgroupdriver=cgroupfs", "--log-level", "warn"])
            .arg("--cgroup-parent")
            .arg(&cgroup_parent)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let d = Dockerd { child, dir, sock, cgroup_parent };
        crate::wait_for("dockerd to answer", || d.sock.exists() && d.docker(&["version"]).status.success());
        d
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new(docker_cli())
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(out.status.success(), "docker {args:?}: {}\n{}", crate::stderr(&out), self.log_tail());
        crate::stdout(&out)
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!("dockerd log:\n{}", lines[lines.len().saturating_sub(15)..].join("\n"))
    }

    /// Where containerd-shim-runc-v2 has the runtime keep its state (`--root`); dockerd 20.10
    /// names it after runc whichever runtime runs.
    pub fn runtime_root(&self) -> PathBuf {
        self.dir.path().join("exec/runtime-runc/moby")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]);
        for id in crate::stdout(&ids).split_whitespace() {
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
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(self.dir.path().to_str().unwrap()))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
        for m in crate::cgroup_mounts() {
            let _ = std::fs::remove_dir(m.join(self.cgroup_parent.trim_start_matches('/')));
        }
    }
}
