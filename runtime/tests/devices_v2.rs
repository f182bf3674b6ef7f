//! The cgroup v2 device filter (an eBPF program on the cgroup), checked in the kernel: a
//! process in a v2 cgroup with the filter may open the default devices and nothing the rules
//! deny. Runs on pure v2 and on the v2 tree of a hybrid host.

mod common;
use common::*;
use engine_runtime::cgroups::devices_bpf::{attach, rules_for};
use std::os::unix::process::CommandExt;

fn v2_root() -> std::path::PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find(|l| l.split_once(" - ").is_some_and(|(_, r)| r.starts_with("cgroup2 ")))
        .map(|l| std::path::PathBuf::from(l.split(' ').nth(4).unwrap()))
        .expect("a cgroup2 mount")
}

/// Opens DEV for reading from a shell inside `cgroup`; whether that worked.
fn can_read(cgroup: &std::path::Path, dev: &str) -> bool {
    let procs = cgroup.join("cgroup.procs");
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", &format!(": < {dev}")]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    // SAFETY: only a write(2) to a file in the forked child before exec.
    unsafe {
        cmd.pre_exec(move || std::fs::write(&procs, "0"));
    }
    cmd.status().unwrap().success()
}

#[test]
fn filter_allows_defaults_and_denies_the_rest() {
    let dir = v2_root().join(format!("engine-test-devices-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    assert!(can_read(&dir, "/dev/kmsg"), "root reads /dev/kmsg without a filter");

    // deny everything, then allow /dev/full read-only
    let spec: Vec<oci_spec::runtime::LinuxDeviceCgroup> = serde_json::from_value(serde_json::json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 7, "access": "r"}
    ]))
    .unwrap();
    let fd = std::fs::File::open(&dir).unwrap();
    attach(std::os::fd::AsFd::as_fd(&fd), &rules_for(&spec)).unwrap();
    assert!(!can_read(&dir, "/dev/kmsg"), "denied by the filter");
    assert!(can_read(&dir, "/dev/zero"), "a default device");
    assert!(can_read(&dir, "/dev/null"), "a default device");

    // the processes ran and left; the cgroup can go
    wait_for("the cgroup to empty", || std::fs::read_to_string(dir.join("cgroup.procs")).unwrap().trim().is_empty());
}
