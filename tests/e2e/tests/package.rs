//! The Debian package (`make deb`, scripts/deb) built from this build, installed on this machine
//! with dpkg as a user installs it: every file where it belongs, the packaged engined with the
//! packaged daemon.json, an upgrade while a container runs (the container stays and is
//! adopted, the locally changed conffile is kept), then a purge that leaves nothing of the
//! package and no container process; the data root goes only when asked.
//!
//! It installs into this machine's /usr, /etc, /run and /var/lib, so it refuses to run where an
//! engine is installed already (a developer's machine), and purges what it installed even when
//! it fails.

use std::path::Path;
use std::process::{Command, Output};

use engine_test_support::engined::pid_alive;
use engine_test_support::*;

const BINARIES: [&str; 7] =
    ["engine", "engined", "engine-lifecycled", "engine-shim", "engine-runtime", "engine-init", "engine-proxy"];

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?}: {}{}", stdout(&out), stderr(&out));
    stdout(&out)
}

/// `engine` of the package against the packaged engined's socket.
fn engine(args: &[&str]) -> String {
    ok(Command::new("/usr/bin/engine").arg("-H").arg("unix:///run/engine/engine.sock").args(args))
}

/// Whether the package is installed (not merely known to dpkg, with only its conffiles left).
fn installed() -> bool {
    stdout(&run(Command::new("dpkg-query").args(["-W", "-f", "${Status}", "engine"]))).ends_with("ok installed")
}

/// On the way out, pass or fail: the package purged with its data root.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if installed() {
            let _ = Command::new("dpkg").args(["--purge", "engine"]).env("ENGINE_PURGE_DATA_ROOT", "yes").status();
        }
    }
}

/// The packaged engined, started by hand as the unit would start it (no systemd here).
struct Engined(std::process::Child);

impl Engined {
    fn start(log: &Path) -> Engined {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new("/usr/bin/engined")
            .envs(OFFLINE_ENV)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for("the packaged engined to answer", || {
            Command::new("/usr/bin/engine")
                .args(["-H", "unix:///run/engine/engine.sock", "version"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        Engined(child)
    }

    /// SIGTERM, as `systemctl stop` (or an upgrade) sends it.
    fn stop(mut self) {
        // SAFETY: SIGTERM to the engined this test started, by pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let status = self.0.wait().unwrap();
        assert!(status.success(), "engined exited with {status}");
    }
}

/// Every process whose program is one of the package's binaries (still there or deleted).
fn engine_processes() -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else { continue };
        let exe = exe.display().to_string();
        if BINARIES.iter().any(|b| exe == format!("/usr/bin/{b}") || exe == format!("/usr/bin/{b} (deleted)")) {
            found.push((pid, exe));
        }
    }
    found
}

#[test]
fn the_package_installs_upgrades_under_a_running_container_and_purges() {
    let taken: Vec<&str> = ["/usr/bin/engined", "/etc/engine", "/run/engine", "/var/lib/engine"]
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .collect();
    assert!(
        !installed() && taken.is_empty(),
        "an engine is installed on this machine ({taken:?}): this test installs its own package"
    );
    let dir = tempfile::tempdir().unwrap();
    let debs = dir.path().join("debs");
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/deb");
    let mut built = Vec::new();
    for version in ["0.1.0-1", "0.1.0-2"] {
        let out =
            ok(Command::new("bash").arg(&scripts).env("PROFILE", "dev").env("DEB_VERSION", version).env("OUT", &debs));
        let line = out.lines().find(|l| l.starts_with("deb: ")).unwrap_or_else(|| panic!("{out}"));
        let path = line["deb: ".len()..].split(" (").next().unwrap().to_string();
        built.push(path);
    }
    let _purge = Purge;

    ok(Command::new("dpkg").arg("-i").arg(&built[0]));
    let version = || ok(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "engine"]));
    assert_eq!(version(), "0.1.0-1");
    // every file where it belongs
    let mut expected: Vec<String> = BINARIES.iter().map(|b| format!("/usr/bin/{b}")).collect();
    expected.extend(
        [
            "/lib/systemd/system/engine.service",
            "/lib/systemd/system/engine.socket",
            "/etc/engine/daemon.json",
            "/usr/share/man/man1/engine.1.gz",
            "/usr/share/man/man1/engine-run.1.gz",
            "/usr/share/man/man8/engined.8.gz",
            "/usr/share/man/man8/engine-init.8.gz",
            "/usr/share/bash-completion/completions/engine",
            "/usr/share/zsh/vendor-completions/_engine",
            "/usr/share/fish/vendor_completions.d/engine.fish",
            "/usr/share/engine/dashboards/start-latency.json",
            "/usr/share/engine/dashboards/provisioning/datasources/engine.yaml",
            "/usr/share/doc/engine/copyright",
            "/usr/share/doc/engine/README.md",
        ]
        .map(String::from),
    );
    for f in &expected {
        assert!(Path::new(f).exists(), "{f} is not installed");
    }
    let conffiles = ok(Command::new("dpkg-query").args(["-W", "-f", "${Conffiles}", "engine"]));
    assert!(conffiles.contains("/etc/engine/daemon.json"), "{conffiles}");
    let copyright = std::fs::read_to_string("/usr/share/doc/engine/copyright").unwrap();
    assert!(copyright.contains("Files: rust-crate/tokio-") && copyright.contains("License: Apache-2.0"), "{copyright}");
    let listed = ok(Command::new("dpkg").args(["-L", "engine"]));
    let packaged: Vec<String> = listed.lines().filter(|f| Path::new(f).is_file()).map(String::from).collect::<Vec<_>>();

    // the packaged daemon.json, changed here as an administrator would: this machine runs no
    // systemd and the test keeps off the host's networks and probes
    let conf = std::fs::read_to_string("/etc/engine/daemon.json").unwrap();
    let mut local = conf.clone();
    for (commented, set) in [
        ("  // \"bridge-name\": \"engine0\",", "  \"bridge-name\": \"none\","),
        ("  // \"iptables\": true,", "  \"iptables\": false,"),
        ("  // \"no-probes\": false,", "  \"no-probes\": true,"),
        ("  // \"cgroup-parent\": \"/engine\",", "  \"cgroup-parent\": \"/engine-e2e-package\","),
    ] {
        assert!(local.contains(commented), "{commented} not in the packaged daemon.json:\n{conf}");
        local = local.replace(commented, set);
    }
    std::fs::write("/etc/engine/daemon.json", &local).unwrap();

    let logs = dir.path().join("engined.log");
    let daemon = Engined::start(&logs);
    let rootfs = dir.path().join("rootfs");
    make_busybox_rootfs(&rootfs);
    let tar = dir.path().join("rootfs.tar");
    tar_dir(&rootfs, &tar);
    engine(&["import", "--change", "CMD [\"sh\"]", tar.to_str().unwrap(), "busybox"]);
    engine(&["run", "-d", "--name", "kept", "--network", "none", "busybox", "sleep", "1000"]);
    let pid: i32 = engine(&["inspect", "-f", "{{.State.Pid}}", "kept"]).trim().parse().unwrap();

    // the upgrade: engined stopped (the container stays: live-restore), the newer package,
    // engined started again
    daemon.stop();
    assert!(pid_alive(pid), "the container stopped with engined");
    ok(Command::new("dpkg").arg("-i").arg(&built[1]));
    assert_eq!(version(), "0.1.0-2");
    assert_eq!(std::fs::read_to_string("/etc/engine/daemon.json").unwrap(), local, "the changed conffile was replaced");
    let daemon = Engined::start(&logs);
    assert_eq!(engine(&["inspect", "-f", "{{.State.Status}} {{.State.Pid}}", "kept"]).trim(), format!("running {pid}"));
    assert_eq!(engine(&["exec", "kept", "echo", "adopted"]).trim(), "adopted");
    // left running, as `apt remove` finds it
    std::mem::forget(daemon);

    // the purge: engined and the container stop, nothing of the package stays but the data
    // root, kept unless asked
    let out = ok(Command::new("dpkg").args(["--purge", "engine"]));
    assert!(!installed());
    assert!(out.contains("/var/lib/engine (images, containers, volumes) is kept"), "{out}");
    assert!(!pid_alive(pid), "the container outlived the package");
    assert_eq!(engine_processes(), [], "processes of the package outlived it");
    for f in packaged.iter().chain(&expected) {
        assert!(!Path::new(f).exists(), "{f} outlived the purge");
    }
    for d in ["/etc/engine", "/run/engine"] {
        assert!(!Path::new(d).exists(), "{d} outlived the purge");
    }
    assert!(Path::new("/var/lib/engine/containers").exists(), "the data root went unasked");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(" /var/lib/engine/") && !mounts.contains(" /run/engine/"), "{mounts}");
    for m in cgroup_mounts() {
        assert!(!m.join("engine-e2e-package").exists(), "the cgroup parent stayed under {}", m.display());
    }

    // asked: the data root goes too
    ok(Command::new("dpkg").arg("-i").arg(&built[1]));
    ok(Command::new("dpkg").args(["--purge", "engine"]).env("ENGINE_PURGE_DATA_ROOT", "yes"));
    assert!(!Path::new("/var/lib/engine").exists(), "the data root stayed when asked to go");
    assert_eq!(engine_processes(), []);
}
