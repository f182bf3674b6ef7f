//! Real engines drive engine-runtime: Debian's dockerd (with its containerd and
//! containerd-shim-runc-v2) started on private sockets and directories with
//! `--add-runtime engine=<engine-runtime>`, running a busybox image with `--runtime engine`.

mod common;
use common::*;
use engine_test_support::dockerd::Dockerd;
use std::process::Command;

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
    let d = Dockerd::start(&["--add-runtime".into(), format!("engine={RUNTIME}")]);
    import_busybox(&d);
    let run = ["run", "--runtime", "engine", "--network", "none"];

    // detached, with logs and exec
    let id = d.ok(&[
        &run[..],
        &["-d", "--name", "d1", "engine-busybox:test", "sh", "-c", "echo hello-from-engine; sleep 1000"],
    ]
    .concat());
    let id = id.trim();
    assert_eq!(d.ok(&["inspect", "-f", "{{.HostConfig.Runtime}}", "d1"]).trim(), "engine");
    // the state is engine-runtime's (runc's has no pid_start_time)
    let state = std::fs::read_to_string(d.runtime_root().join(id).join("state.json")).unwrap();
    assert!(state.contains("pid_start_time"), "{state}");
    wait_for("the log line", || stdout(&d.docker(&["logs", "d1"])).contains("hello-from-engine"));
    assert_eq!(
        d.ok(&["exec", "d1", "sh", "-c", "echo exec-ok; cat /proc/1/cmdline | tr '\\0' ' '"]),
        "exec-ok\nsleep 1000 ",
        "busybox sh execs its last command"
    );
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
    d.ok(&[
        &run[..],
        &[
            "-d",
            "--name",
            "d2",
            "engine-busybox:test",
            "sh",
            "-c",
            "trap 'exit 42' USR1; touch /tmp/ready; while :; do sleep 0.1; done",
        ],
    ]
    .concat());
    wait_for("d2's trap to be set", || d.docker(&["exec", "d2", "test", "-e", "/tmp/ready"]).status.success());
    d.ok(&["kill", "-s", "USR1", "d2"]);
    wait_for("d2 to exit", || state_of(&d, "d2") == "exited");
    assert_eq!(exit_code(&d, "d2"), "42");

    // foreground: exit codes, and a terminal with -t
    assert_eq!(
        d.docker(&[&run[..], &["--rm", "engine-busybox:test", "sh", "-c", "exit 3"]].concat()).status.code(),
        Some(3)
    );
    let out = d.ok(&[&run[..], &["--rm", "-t", "engine-busybox:test", "sh", "-c", "tty; stty size"]].concat());
    assert!(out.starts_with("/dev/pts/0"), "{out:?}");
    let out =
        d.ok(&[&run[..], &["--rm", "--memory", "64m", "engine-busybox:test", "cat", "/proc/self/status"]].concat());
    assert!(out.contains("Seccomp:\t2"), "docker's default seccomp profile is loaded: {out}");

    d.ok(&["rm", "-f", "d1", "d2"]);
    let left: Vec<_> = std::fs::read_dir(d.runtime_root()).map(|r| r.flatten().collect()).unwrap_or_default();
    assert!(left.is_empty(), "runtime state left: {left:?}");
}
