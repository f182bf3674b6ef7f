//! A private engined for end-to-end tests: own socket, data-root, exec-root, pidfile and
//! cgroup parent. On drop it removes every container, stops engined (which stops its
//! lifecycled), and takes away whatever is left mounted or in the cgroup tree.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct Engined {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub cgroup_parent: String,
    /// Extra environment for engined (OTEL_* settings).
    pub env: Vec<(String, String)>,
    /// Extra arguments for engined.
    pub args: Vec<String>,
    /// The default network's Linux bridge (own per instance).
    pub bridge: String,
    /// This instance's address pool: 10.A.B.0/21, eight /24 subnets.
    pub pool: (u8, u8),
}

impl Engined {
    pub fn start() -> Engined {
        Self::start_with_env(&[])
    }

    /// An engined with extra environment variables.
    pub fn start_with_env(env: &[(&str, &str)]) -> Engined {
        Self::start_with(env, &[])
    }

    /// An engined with extra environment variables and arguments.
    pub fn start_with(env: &[(&str, &str)], args: &[&str]) -> Engined {
        let mut e = Self::prepare(env, args);
        e.restart();
        e
    }

    /// An engined whose data-root and exec-root are each a tmpfs of `size` (`48m`): disks that
    /// fill up. They are unmounted with the instance.
    pub fn start_on_small_disks(size: &str) -> Engined {
        let mut e = Self::prepare(&[], &[]);
        for dir in [e.data_root(), e.exec_root()] {
            std::fs::create_dir_all(&dir).unwrap();
            let options = format!("size={size},mode=0711");
            nix::mount::mount(Some("tmpfs"), &dir, Some("tmpfs"), nix::mount::MsFlags::empty(), Some(options.as_str()))
                .unwrap();
        }
        e.restart();
        e
    }

    /// The instance's directories and names, nothing started.
    fn prepare(env: &[(&str, &str)], args: &[&str]) -> Engined {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = tempfile::Builder::new().prefix("engine-e2e").tempdir().unwrap();
        let sock = dir.path().join("engine.sock");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        // Networks of their own: side-by-side instances never share a bridge, chains or subnets.
        let pid = std::process::id();
        let bridge = format!("et{}x{n}", pid % 10_000_000);
        let pool = (100 + (pid % 150) as u8, ((n % 32) * 8) as u8);
        if !args.iter().any(|a| a == "--bridge-name") {
            args.extend(["--bridge-name".to_string(), bridge.clone()]);
        }
        if !args.iter().any(|a| a == "--default-address-pool") {
            args.extend(["--default-address-pool".to_string(), format!("base=10.{}.{}.0/21,size=24", pool.0, pool.1)]);
        }
        // the host's CNI configuration is not the test's: pods stay on the instance's bridge
        if !args.iter().any(|a| a == "--cni-conf-dir") {
            args.extend(["--cni-conf-dir".to_string(), dir.path().join("net.d").display().to_string()]);
        }
        Engined { child: None, dir, sock, cgroup_parent: format!("/engine-e2e-{pid}-{n}"), env, args, bridge, pool }
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    pub fn data_root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn exec_root(&self) -> PathBuf {
        self.dir.path().join("exec")
    }

    /// Starts engined (again) on the same directories and waits until it answers.
    pub fn restart(&mut self) {
        let child = self.command(&[], &self.host()).spawn().expect("start engined");
        self.child = Some(child);
        crate::wait_for("engined to answer", || self.sock.exists() && self.engine(&["version"]).status.success());
    }

    /// An engined started by systemd's socket activation, as `engine.socket` starts it:
    /// `systemd-socket-activate` listens on the instance's socket and, at the first connection,
    /// becomes `engined -H fd://` with the socket handed over.
    pub fn start_activated(env: &[(&str, &str)]) -> Engined {
        let mut e = Self::prepare(env, &[]);
        let sock = e.sock.display().to_string();
        let activate = crate::which("systemd-socket-activate");
        let wrapper = [activate.to_str().unwrap(), "-l", sock.as_str()];
        let child = e.command(&wrapper, "fd://").spawn().expect("start systemd-socket-activate");
        e.child = Some(child);
        crate::wait_for("the activated engined to answer", || {
            e.sock.exists() && e.engine(&["version"]).status.success()
        });
        e
    }

    /// engined on this instance's directories with `-H host`, run through `wrapper` (a
    /// command that runs the rest of its arguments).
    fn command(&self, wrapper: &[&str], host: &str) -> Command {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("engined.log")).unwrap();
        let engined = crate::bin("engined");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&engined);
                c
            }
            None => Command::new(&engined),
        };
        cmd.arg("-H")
            .arg(host)
            .arg("--data-root")
            .arg(self.data_root())
            .arg("--exec-root")
            .arg(self.exec_root())
            .arg("--pidfile")
            .arg(self.dir.path().join("engined.pid"))
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent);
        // debug logs, unless the test sets the level (a flag would win over its config file's)
        if !self.args.iter().any(|a| a == "--log-level" || a == "--config-file") {
            cmd.args(["--log-level", "debug"]);
        }
        cmd.args(&self.args)
            .env_remove("ENGINE_SPAN_SINK")
            .envs(crate::OFFLINE_ENV)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        cmd
    }

    /// kill -9 of engined: containers, shims and lifecycled stay.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The pid of the lifecycled engined supervises.
    pub fn lifecycled_pid(&self) -> i32 {
        let mut pid = 0;
        crate::wait_for("lifecycled's pid file", || {
            pid = std::fs::read_to_string(self.exec_root().join("lifecycled.pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            pid > 0
        });
        pid
    }

    pub fn engine(&self, args: &[&str]) -> Output {
        Command::new(crate::bin("engine"))
            .arg("-H")
            .arg(self.host())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run engine")
    }

    /// A file of container `id`'s own cgroup (`memory.max`, `freezer.state`), trimmed, from
    /// whichever hierarchy has it.
    pub fn cgroup_file(&self, id: &str, file: &str) -> Option<String> {
        crate::cgroup_mounts()
            .iter()
            .map(|m| m.join(self.cgroup_parent.trim_start_matches('/')).join(id).join(file))
            .find(|p| p.exists())
            .map(|p| std::fs::read_to_string(p).unwrap_or_default().trim().to_string())
    }

    /// The actions of the events since `since` (Unix seconds) until now, through `engine events`
    /// with the `filters` (`container=web`, `event=pause`).
    pub fn event_actions(&self, since: u64, filters: &[&str]) -> Vec<String> {
        let (since, until) = (since.to_string(), (crate::unix_secs() + 1).to_string());
        let mut args = vec!["events", "--since", &since, "--until", &until, "--format", "{{.Action}}"];
        for f in filters {
            args.extend(["--filter", f]);
        }
        self.ok(&args).split_whitespace().map(str::to_string).collect()
    }

    /// Runs `engine args`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.engine(args);
        assert!(
            out.status.success(),
            "engine {args:?} failed ({}): {}{}\n{}",
            out.status,
            crate::stdout(&out),
            crate::stderr(&out),
            self.log_tail()
        );
        crate::stdout(&out)
    }

    /// Runs `engine args`, asserting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.engine(args);
        assert!(!out.status.success(), "engine {args:?} should have failed: {}", crate::stdout(&out));
        crate::stderr(&out)
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new(crate::dockerd::docker_cli())
            .arg("-H")
            .arg(self.host())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed ({}): {}{}\n{}",
            out.status,
            crate::stdout(&out),
            crate::stderr(&out),
            self.log_tail()
        );
        crate::stdout(&out)
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("engined.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let lc = std::fs::read_to_string(self.exec_root().join("lifecycled.log")).unwrap_or_default();
        let lc_lines: Vec<&str> = lc.lines().collect();
        format!(
            "engined log:\n{}\nlifecycled log:\n{}",
            lines[lines.len().saturating_sub(20)..].join("\n"),
            lc_lines[lc_lines.len().saturating_sub(30)..].join("\n")
        )
    }

    /// A busybox image (busybox-static) imported as `name`.
    pub fn import_busybox(&self, name: &str) {
        let rootfs = self.dir.path().join(format!("rootfs-{}", name.replace(['/', ':'], "_")));
        crate::make_busybox_rootfs(&rootfs);
        std::fs::create_dir_all(rootfs.join("home/user")).unwrap();
        std::os::unix::fs::chown(rootfs.join("home/user"), Some(1000), Some(1000)).unwrap();
        let tar = rootfs.with_extension("tar");
        let st = Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg(".").status().unwrap();
        assert!(st.success());
        self.ok(&["import", "--change", "CMD [\"sh\"]", tar.to_str().unwrap(), name]);
    }

    /// One API request with a JSON body over the socket, as a client library sends it; the
    /// status and the body (chunked bodies left as they came).
    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.host().trim_start_matches("unix://")).unwrap();
        // a request that hangs fails the test instead of hanging it
        s.set_read_timeout(Some(std::time::Duration::from_secs(120))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        if let Err(e) = s.read_to_string(&mut resp) {
            panic!("{method} {path}: no whole answer within 120 s ({e}): {resp}");
        }
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, body.to_string())
    }

    /// A tar of a busybox root filesystem, for `docker import`, in this instance's directory.
    pub fn busybox_tar(&self) -> PathBuf {
        let rootfs = self.dir.path().join("rootfs");
        crate::make_busybox_rootfs(&rootfs);
        let tar = self.dir.path().join("rootfs.tar");
        crate::tar_dir(&rootfs, &tar);
        tar
    }

    /// Mount points under this instance's directory (but its data-root and exec-root: the
    /// small disks of [`Engined::start_on_small_disks`]).
    pub fn mounts(&self) -> Vec<String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = self.dir.path().to_str().unwrap().to_string();
        let roots = [self.data_root(), self.exec_root()];
        info.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix) && !roots.iter().any(|r| Path::new(p) == r))
            .map(str::to_string)
            .collect()
    }

    /// Cgroup directories of containers under this instance's parent.
    pub fn cgroups(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for m in crate::cgroup_mounts() {
            let parent = m.join(self.cgroup_parent.trim_start_matches('/'));
            if let Ok(rd) = std::fs::read_dir(&parent) {
                out.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
        out
    }

    /// The n-th /24 of this instance's pool (the last ones are free for `--subnet`).
    pub fn subnet(&self, n: u8) -> String {
        format!("10.{}.{}.0/24", self.pool.0, self.pool.1 + n)
    }

    /// The host's network links (names).
    pub fn links() -> Vec<String> {
        std::fs::read_dir("/sys/class/net")
            .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    /// `inspect -f field name`, trimmed.
    pub fn inspect(&self, name: &str, field: &str) -> String {
        self.ok(&["inspect", "-f", field, name]).trim().to_string()
    }

    /// The container's `State.Status`.
    pub fn state(&self, name: &str) -> String {
        self.inspect(name, "{{.State.Status}}")
    }

    /// No container, snapshot, mount or container cgroup of this instance is left.
    pub fn assert_clean(&self) {
        assert_eq!(self.ok(&["ps", "-aq"]).trim(), "", "containers left");
        assert_eq!(self.snapshots(), 0, "snapshots left");
        let mounts = self.mounts();
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        crate::wait_for("container cgroups to go", || self.cgroups().is_empty());
    }

    /// Network namespace files under the exec-root (one per container with a namespace).
    pub fn netns_files(&self) -> usize {
        std::fs::read_dir(self.exec_root().join("netns")).map(|r| r.count()).unwrap_or(0)
    }

    /// The interfaces attached to this instance's default bridge (the host ends of veths).
    pub fn bridge_ports(&self) -> Vec<String> {
        std::fs::read_dir(format!("/sys/class/net/{}/brif", self.bridge))
            .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    /// The engine-proxy processes of this instance (their counters live under its exec-root).
    pub fn proxies(&self) -> Vec<i32> {
        self.processes_of("engine-proxy", &self.exec_root().join("proxy"))
    }

    /// The engine-shim processes of this instance (their state directories live under its
    /// exec-root).
    pub fn shims(&self) -> Vec<i32> {
        self.processes_of("engine-shim", &self.exec_root().join("lifecycle"))
    }

    /// Live processes whose command line names `program` and a path under `marker`.
    fn processes_of(&self, program: &str, marker: &Path) -> Vec<i32> {
        let marker = marker.to_string_lossy();
        let mut out = Vec::new();
        for ent in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = ent.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(program) && cmdline.contains(marker.as_ref()) && pid_alive(pid) {
                out.push(pid);
            }
        }
        out
    }

    /// lifecycled's task directories (one per container with a task).
    pub fn task_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.exec_root().join("lifecycle/tasks"))
            .map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// This instance's nftables table (with `--firewall-backend nftables`).
    pub fn nft_table(&self) -> String {
        engine_network::firewall::nft_table(&self.bridge)
    }

    /// Firewall rules (iptables-save lines) that name this instance's chains or `bridges`.
    pub fn firewall_rules(&self, bridges: &[&str]) -> Vec<String> {
        self.rules_of("iptables-save", bridges)
    }

    /// [`Engined::firewall_rules`] of IPv6 (ip6tables).
    pub fn firewall6_rules(&self, bridges: &[&str]) -> Vec<String> {
        self.rules_of("ip6tables-save", bridges)
    }

    fn rules_of(&self, save: &str, bridges: &[&str]) -> Vec<String> {
        let Ok(out) = Command::new(save).output() else { return Vec::new() };
        let chain = format!("{}-", engine_network::firewall::chain_prefix(&self.bridge));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&chain) || bridges.iter().any(|b| l.split_whitespace().any(|w| w == *b)))
            .map(str::to_string)
            .collect()
    }

    /// Container snapshots on disk.
    pub fn snapshots(&self) -> usize {
        std::fs::read_dir(self.data_root().join("image/snapshots")).map(|r| r.count()).unwrap_or(0)
    }
}

/// Whether `pid` is a live process (not a zombie).
pub fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z'))
}

impl Drop for Engined {
    fn drop(&mut self) {
        if self.child.is_none() && self.sock.exists() {
            // killed by the test: bring it back once so it can clean up
            self.restart();
        }
        if self.child.is_some() {
            // the CRI's pods and containers too (a Docker listing shows them only when asked)
            let mut ids = crate::stdout(&self.engine(&["ps", "-aq", "--filter", "label=io.engine.cri=container"]));
            ids += &crate::stdout(&self.engine(&["ps", "-aq", "--filter", "label=io.engine.cri=sandbox"]));
            ids += &crate::stdout(&self.engine(&["ps", "-aq"]));
            for id in ids.split_whitespace() {
                let _ = self.engine(&["rm", "-f", id]);
            }
            let lifecycled = std::fs::read_to_string(self.exec_root().join("lifecycled.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            if let Some(c) = self.child.as_mut() {
                // SAFETY: SIGTERM to the engined this harness started, by pid.
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                while c.try_wait().ok().flatten().is_none() {
                    if std::time::Instant::now() > deadline {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
            if let Some(pid) = lifecycled.filter(|p| pid_alive(*p)) {
                // SAFETY: the lifecycled this instance's engined started, by pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            // engined did not get to its own clean-up (it removes its bridge when it stops)
            let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
        }
        for pid in self.proxies() {
            // SAFETY: a proxy of this instance (its counters are under this instance's exec-root), by pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // a test that failed halfway may leave a shim (and the container's processes) that no
        // lifecycled of this instance will delete any more
        for pid in self.shims() {
            // SAFETY: a shim of this instance (its state is under this instance's exec-root), by pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for cg in self.cgroups() {
            let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: a process in a container cgroup of this instance, by pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let mut points = self.mounts();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for root in [self.data_root(), self.exec_root()] {
            // the small disks, if any (anything else fails with EINVAL)
            let _ = nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH);
        }
        for cg in self.cgroups() {
            // (the processes killed above may take a moment to leave it)
            crate::wait_until(std::time::Duration::from_secs(5), || std::fs::remove_dir(&cg).is_ok() || !cg.exists());
        }
        for m in crate::cgroup_mounts() {
            let _ = std::fs::remove_dir(m.join(self.cgroup_parent.trim_start_matches('/')));
        }
    }
}
