//! Shared helpers for the runtime's end-to-end tests: busybox bundles, a private state root and
//! cgroup parent per test, and leak checks. Every test drives the `engine-runtime` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};

pub use engine_test_support::*;

pub const RUNTIME: &str = env!("CARGO_BIN_EXE_engine-runtime");

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A private runtime instance: its own state root, cgroup parent and bundles.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    /// Absolute cgroup parent for this test's containers ("/engine-test-PID-N").
    pub cgroup_parent: String,
}

impl Env {
    pub fn new() -> Env {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = tempfile::Builder::new().prefix("engine-rt-test").tempdir().expect("tempdir");
        let root = dir.path().join("state");
        Env { root, cgroup_parent: format!("/engine-test-{}-{n}", std::process::id()), dir }
    }

    /// A busybox bundle named `name` running `args`.
    pub fn bundle(&self, name: &str, args: &[&str]) -> Bundle {
        let path = self.dir.path().join(name);
        make_busybox_rootfs(&path.join("rootfs"));
        let out = Command::new(RUNTIME).args(["spec", "--bundle"]).arg(&path).output().expect("run spec");
        assert!(out.status.success(), "spec: {}", String::from_utf8_lossy(&out.stderr));
        let mut b = Bundle { path, spec: Value::Null };
        b.spec = serde_json::from_slice(&std::fs::read(b.config()).unwrap()).unwrap();
        b.spec["process"]["args"] = json!(args);
        b.spec["root"]["readonly"] = json!(false);
        b.spec["linux"]["cgroupsPath"] = json!(format!("{}/{name}", self.cgroup_parent));
        b.save();
        b
    }

    /// Runs `engine-runtime --root <root> ARGS`.
    ///
    /// Output goes to files, not pipes: a detached container inherits the runtime's stdio (as
    /// with runc), and a pipe would stay open until the container exits.
    pub fn rt(&self, args: &[&str]) -> Output {
        let out = tempfile::tempfile_in(self.dir.path()).expect("stdout file");
        let err = tempfile::tempfile_in(self.dir.path()).expect("stderr file");
        let status = Command::new(RUNTIME)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(err.try_clone().unwrap())
            .status()
            .expect("run engine-runtime");
        Output { status, stdout: read_all(out), stderr: read_all(err) }
    }

    /// Like [`Env::rt`] but requires success and returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.rt(args);
        assert!(out.status.success(), "engine-runtime {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The status of container `id` per `state`.
    pub fn status(&self, id: &str) -> String {
        let v: Value = serde_json::from_str(&self.ok(&["state", id])).unwrap();
        v["status"].as_str().unwrap().to_string()
    }

    /// Waits (with a deadline) until `id` reaches `status`.
    pub fn wait_status(&self, id: &str, status: &str) {
        wait_for(&format!("{id} to be {status}"), || self.status(id) == status);
    }

    /// The cgroup directories a container `name` of this env would have, in every hierarchy.
    pub fn cgroup_dirs(&self, name: &str) -> Vec<PathBuf> {
        cgroup_mounts().into_iter().map(|m| m.join(self.cgroup_parent.trim_start_matches('/')).join(name)).collect()
    }

    /// Asserts nothing of container `name` is left: state, cgroups, mounts.
    pub fn assert_no_leaks(&self, name: &str, bundle: &Path) {
        assert!(!self.root.join(name).exists(), "state dir of {name} left behind");
        for d in self.cgroup_dirs(name) {
            assert!(!d.exists(), "cgroup {} left behind", d.display());
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(bundle.to_str().unwrap()), "a mount under {} is left", bundle.display());
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // force-delete whatever a failed test left, then the cgroup parents
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.rt(&["delete", "--force", &id]);
            }
        }
        for m in cgroup_mounts() {
            let _ = std::fs::remove_dir(m.join(self.cgroup_parent.trim_start_matches('/')));
        }
    }
}

pub struct Bundle {
    pub path: PathBuf,
    pub spec: Value,
}

impl Bundle {
    pub fn config(&self) -> PathBuf {
        self.path.join("config.json")
    }
    pub fn save(&self) {
        std::fs::write(self.config(), serde_json::to_vec_pretty(&self.spec).unwrap()).unwrap();
    }
    pub fn p(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

fn read_all(mut f: std::fs::File) -> Vec<u8> {
    use std::io::{Read, Seek};
    let mut buf = Vec::new();
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut buf).unwrap();
    buf
}
