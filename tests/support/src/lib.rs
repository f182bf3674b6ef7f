//! Helpers shared by the end-to-end tests of every crate: a busybox root filesystem, the
//! workspace's binaries, polling a condition with a deadline, the host's cgroup mounts, a small
//! disk that fills up.
//!
//! Tests never assert wall-clock times: they wait for conditions, with a deadline.

pub mod buildah;
pub mod dockerd;
pub mod engined;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A binary of this workspace, built beside the running test (`cargo build --workspace`, which
/// `make test` runs first): tests live in target/<triple>/<profile>/deps/.
/// The environment every daemon a test starts gets, so that no test can reach a public
/// registry: a pull of an image the test did not put in a loopback registry (`run nosuch` pulls
/// `docker.io/library/nosuch`) goes to a proxy on a loopback port where nothing listens, and
/// fails at once without resolving the name. Loopback registries are reached directly.
pub const OFFLINE_ENV: [(&str, &str); 6] = [
    ("HTTPS_PROXY", "http://127.0.0.1:9"),
    ("https_proxy", "http://127.0.0.1:9"),
    ("HTTP_PROXY", "http://127.0.0.1:9"),
    ("http_proxy", "http://127.0.0.1:9"),
    ("NO_PROXY", "localhost,127.0.0.0/8,::1"),
    ("no_proxy", "localhost,127.0.0.0/8,::1"),
];

pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --workspace` first", p.display());
    p
}

/// A block device of this host (`vda`: its name under /dev and /sys/block) for the block I/O
/// throttle tests: the disk under the root filesystem, else the first that is not a loop or
/// RAM disk.
pub fn block_device() -> String {
    let root = nix::sys::stat::stat("/").expect("stat /");
    let (major, minor) = (nix::sys::stat::major(root.st_dev), nix::sys::stat::minor(root.st_dev));
    if let Ok(node) = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")) {
        // a partition's directory sits in its disk's
        let disk = match node.parent() {
            Some(parent) if parent.join("dev").exists() => parent.to_path_buf(),
            _ => node,
        };
        if let Some(name) = disk.file_name().map(|n| n.to_string_lossy().to_string()) {
            if Path::new(&format!("/dev/{name}")).exists() {
                return name;
            }
        }
    }
    std::fs::read_dir("/sys/block")
        .expect("/sys/block")
        .flatten()
        .map(|b| b.file_name().to_string_lossy().to_string())
        .find(|b| {
            !b.starts_with("loop")
                && !b.starts_with("zram")
                && !b.starts_with("ram")
                && Path::new(&format!("/dev/{b}")).exists()
        })
        .expect("a block device under /sys/block with its node in /dev")
}

/// Mount points of every cgroup hierarchy on the host.
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fs = right.split(' ').next()?;
            (fs == "cgroup" || fs == "cgroup2").then(|| PathBuf::from(left.split(' ').nth(4).unwrap()))
        })
        .collect()
}

/// Whether the host is pure cgroup v2.
pub fn pure_v2() -> bool {
    let m = cgroup_mounts();
    m.len() == 1 && m[0] == Path::new("/sys/fs/cgroup")
}

/// A rootfs with busybox-static and a link per applet, /etc/passwd and /etc/group.
pub fn make_busybox_rootfs(rootfs: &Path) {
    let busybox = which("busybox");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["proc", "sys", "dev", "tmp", "etc", "out"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(&busybox, bin.join("busybox")).unwrap();
    let list = Command::new(&busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
}

/// `tar -C dir -cf tar .`
pub fn tar_dir(dir: &Path, tar: &Path) {
    assert!(std::process::Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(tar)
        .arg(".")
        .status()
        .unwrap()
        .success());
}

pub fn which(prog: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/bin"), PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{prog} not found: install busybox-static (make test does)"))
}

/// Polls `cond` until it holds; panics after 20 s.
pub fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    assert!(wait_until(Duration::from_secs(20), cond), "timed out waiting for {what}");
}

/// Polls `cond` until it holds or `limit` has passed; whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Pids of processes whose command line is exactly `args`.
pub fn processes_running(args: &[&str]) -> Vec<u32> {
    let want = args.join("\0") + "\0";
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want.as_bytes()))
        .collect()
}

/// Seconds since the Unix epoch (what `events --since` and `--until` take).
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A small tmpfs on a directory of its own: a disk that fills up (needs root). Unmounted when
/// dropped, also when the test fails.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// A tmpfs of `size` (`4k`, `48m`).
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let options = format!("size={size}");
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .unwrap();
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Gives the disk a new size (room again, after it was full).
    pub fn resize(&self, size: &str) {
        let options = format!("size={size}");
        nix::mount::mount(
            None::<&str>,
            self.dir.path(),
            None::<&str>,
            nix::mount::MsFlags::MS_REMOUNT,
            Some(options.as_str()),
        )
        .unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A gate a test's helper processes wait at without polling: a FIFO this test holds open.
/// `read _ < PATH` in a shell blocks until [`Gate::open`] lets one through, or until the gate
/// is dropped (the test ended, passed or not), so a waiting process never outlives its test.
pub struct Gate {
    pub path: PathBuf,
    file: std::fs::File,
}

impl Gate {
    pub fn new(path: PathBuf) -> Gate {
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("the gate's fifo");
        // read and write: opening does not wait for a reader, and readers see no end while held
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("opening the gate");
        Gate { path, file }
    }

    /// Lets one waiting reader through.
    pub fn open(&self) {
        use std::io::Write;
        (&self.file).write_all(b"go\n").expect("opening the gate");
    }
}
