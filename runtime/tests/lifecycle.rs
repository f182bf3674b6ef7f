//! Lifecycle transitions through the CLI: create, start, state, kill, delete, run, list, ps, and
//! the errors the runtime spec requires for operations in the wrong state.

mod common;
use common::*;
use serde_json::Value;

#[test]
fn create_start_kill_delete() {
    let env = Env::new();
    let b = env.bundle("c1", &["sleep", "1000"]);
    let pid_file = env.dir.path().join("c1.pid");
    env.ok(&["create", "--bundle", b.p(), "--pid-file", pid_file.to_str().unwrap(), "c1"]);

    let state: Value = serde_json::from_str(&env.ok(&["state", "c1"])).unwrap();
    assert_eq!(state["status"], "created");
    assert_eq!(state["id"], "c1");
    assert_eq!(state["ociVersion"].as_str().unwrap().chars().next(), Some('1'));
    assert_eq!(state["bundle"], b.p());
    let pid = state["pid"].as_i64().unwrap();
    assert!(pid > 0);
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), pid.to_string());
    // the program has not run yet: the process is still the runtime waiting on the fifo
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(exe.to_string_lossy().contains("engine-runtime"), "{exe:?}");

    env.ok(&["start", "c1"]);
    assert_eq!(env.status("c1"), "running");
    wait_for("sleep to be exec'd", || {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.to_string_lossy().contains("busybox"))
    });

    // start on a running container fails and changes nothing
    let again = env.rt(&["start", "c1"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("running"), "{}", stderr(&again));
    // delete without --force on a running container fails
    let del = env.rt(&["delete", "c1"]);
    assert!(!del.status.success());
    assert!(stderr(&del).contains("running"), "{}", stderr(&del));
    assert_eq!(env.status("c1"), "running");

    env.ok(&["kill", "c1", "KILL"]);
    env.wait_status("c1", "stopped");
    let killed = env.rt(&["kill", "c1", "TERM"]);
    assert!(!killed.status.success(), "kill on a stopped container must fail");

    env.ok(&["delete", "c1"]);
    let gone = env.rt(&["state", "c1"]);
    assert!(!gone.status.success());
    assert!(stderr(&gone).contains("does not exist"), "{}", stderr(&gone));
    env.assert_no_leaks("c1", &b.path);
}

#[test]
fn delete_force_running_and_delete_created() {
    let env = Env::new();
    let b = env.bundle("f1", &["sleep", "1000"]);
    env.ok(&["run", "--detach", "--bundle", b.p(), "f1"]);
    assert_eq!(env.status("f1"), "running");
    env.ok(&["delete", "--force", "f1"]);
    env.assert_no_leaks("f1", &b.path);

    let b2 = env.bundle("f2", &["sleep", "1000"]);
    env.ok(&["create", "--bundle", b2.p(), "f2"]);
    let pid: Value = serde_json::from_str(&env.ok(&["state", "f2"])).unwrap();
    env.ok(&["delete", "f2"]);
    env.assert_no_leaks("f2", &b2.path);
    // killed: gone, or a zombie until whoever inherited it reaps it
    let stat = format!("/proc/{}/stat", pid["pid"]);
    wait_for("the created process to die", || {
        std::fs::read_to_string(&stat)
            .map_or(true, |s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
    });
    // deleting what does not exist: an error, unless forced
    assert!(!env.rt(&["delete", "f2"]).status.success());
    env.ok(&["delete", "--force", "f2"]);
}

#[test]
fn a_create_killed_halfway_is_undone_by_delete_force() {
    let env = Env::new();
    let mut b = env.bundle("half", &["sleep", "1000"]);
    // the createRuntime hook holds create with the cgroup made and the first process in it
    let (hooked, gate) = (env.dir.path().join("hooked"), Gate::new(env.dir.path().join("gate")));
    let wait = format!("touch {}; read _ < {}", hooked.display(), gate.path.display());
    b.spec["hooks"] = serde_json::json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", wait]}]});
    b.save();
    let mut create = std::process::Command::new(RUNTIME)
        .arg("--root")
        .arg(&env.root)
        .args(["create", "--bundle", b.p(), "half"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the createRuntime hook", || hooked.exists());
    let cgroups = env.cgroup_dirs("half");
    let procs = std::fs::read_to_string(cgroups[0].join("cgroup.procs")).unwrap();
    let first: i32 = procs.lines().next().expect("the first process is in the cgroup").parse().unwrap();
    create.kill().unwrap();
    create.wait().unwrap();
    gate.open();
    assert!(!env.rt(&["state", "half"]).status.success(), "a killed create made no container");

    env.ok(&["delete", "--force", "half"]);
    env.assert_no_leaks("half", &b.path);
    wait_for("the first process to die", || {
        std::fs::read_to_string(format!("/proc/{first}/stat"))
            .map_or(true, |s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
    });
    // the id is free again
    b.spec["hooks"] = serde_json::json!({});
    b.save();
    env.ok(&["run", "--detach", "--bundle", b.p(), "half"]);
    assert_eq!(env.status("half"), "running");
    env.ok(&["delete", "--force", "half"]);
    env.assert_no_leaks("half", &b.path);
}

#[test]
fn duplicate_id_is_refused() {
    let env = Env::new();
    let b = env.bundle("d1", &["sleep", "1000"]);
    env.ok(&["create", "--bundle", b.p(), "d1"]);
    let dup = env.rt(&["create", "--bundle", b.p(), "d1"]);
    assert!(!dup.status.success());
    assert!(stderr(&dup).contains("already exists"), "{}", stderr(&dup));
    assert_eq!(env.status("d1"), "created");
    env.ok(&["delete", "--force", "d1"]);
}

#[test]
fn run_propagates_exit_codes() {
    let env = Env::new();
    let b = env.bundle("e1", &["sh", "-c", "exit 3"]);
    let out = env.rt(&["run", "--bundle", b.p(), "e1"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    env.assert_no_leaks("e1", &b.path);

    // PID 1 of a pid namespace ignores SIGKILL from inside it: share the host's pid namespace
    let mut b = env.bundle("e2", &["sh", "-c", "kill -9 $$"]);
    b.spec["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "pid");
    b.save();
    let out = env.rt(&["run", "--bundle", b.p(), "e2"]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    env.assert_no_leaks("e2", &b.path);
}

#[test]
fn run_forwards_signals() {
    let env = Env::new();
    let out_dir = env.dir.path().join("out-sig");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut b = env.bundle("s1", &["sh", "-c", "trap 'exit 42' TERM; touch /out/ready; while :; do sleep 0.05; done"]);
    b.spec["mounts"].as_array_mut().unwrap().push(serde_json::json!({
        "destination": "/out", "type": "bind", "source": out_dir, "options": ["rbind", "rw"]
    }));
    b.save();
    let mut child = std::process::Command::new(RUNTIME)
        .arg("--root")
        .arg(&env.root)
        .args(["run", "--bundle", b.p(), "s1"])
        .spawn()
        .unwrap();
    wait_for("the trap to be set", || out_dir.join("ready").exists());
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(42));
    env.assert_no_leaks("s1", &b.path);
}

#[test]
fn list_ps_and_kill_all() {
    let env = Env::new();
    let b = env.bundle("l1", &["sh", "-c", "sleep 1000 & sleep 1000"]);
    env.ok(&["run", "--detach", "--bundle", b.p(), "l1"]);
    let list = env.ok(&["list"]);
    assert!(list.lines().next().unwrap().starts_with("ID"), "{list}");
    assert!(list.lines().any(|l| l.starts_with("l1") && l.contains("running")), "{list}");
    let q = env.ok(&["list", "-q"]);
    assert_eq!(q.trim(), "l1");
    let json: Value = serde_json::from_str(&env.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(json[0]["id"], "l1");

    // busybox sh execs its last command: the two sleeps
    wait_for("two processes", || {
        serde_json::from_str::<Vec<i32>>(&env.ok(&["ps", "--format", "json", "l1"])).unwrap().len() >= 2
    });
    let table = env.ok(&["ps", "l1"]);
    assert!(table.contains("sleep 1000"), "{table}");

    env.ok(&["kill", "--all", "l1", "9"]);
    env.wait_status("l1", "stopped");
    env.ok(&["delete", "l1"]);
    env.assert_no_leaks("l1", &b.path);
}

#[test]
fn no_pivot_and_relative_bundle() {
    let env = Env::new();
    let b = env.bundle("np", &["sh", "-c", "test -x /bin/busybox && echo ok"]);
    let out = std::process::Command::new(RUNTIME)
        .current_dir(&b.path)
        .arg("--root")
        .arg(&env.root)
        .args(["run", "--no-pivot", "np"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "ok");
    env.assert_no_leaks("np", &b.path);
}

#[test]
fn features_and_spec() {
    let env = Env::new();
    let f: Value = serde_json::from_str(&env.ok(&["features"])).unwrap();
    assert_eq!(f["ociVersionMin"], "1.0.0");
    assert!(f["linux"]["namespaces"].as_array().unwrap().iter().any(|n| n == "pid"));
    assert!(f["linux"]["capabilities"].as_array().unwrap().iter().any(|n| n == "CAP_SYS_ADMIN"));
    // spec refuses to overwrite
    let b = env.bundle("sp", &["true"]);
    let again = std::process::Command::new(RUNTIME).args(["spec", "--bundle", b.p()]).output().unwrap();
    assert!(!again.status.success());
}

#[test]
fn log_file_in_json() {
    let env = Env::new();
    let log = env.dir.path().join("rt.log");
    let out = std::process::Command::new(RUNTIME)
        .arg("--root")
        .arg(&env.root)
        .arg("--log")
        .arg(&log)
        .args(["--log-format", "json", "start", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let line: Value = serde_json::from_str(std::fs::read_to_string(&log).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(line["level"], "error");
    assert!(line["msg"].as_str().unwrap().contains("nope does not exist"), "{line}");
}

#[test]
fn preserve_fds_passes_extra_descriptors() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    let b = env.bundle("pf", &["sh", "-c", "echo through-fd-3 >&3 && echo wrote || echo no-fd-3"]);
    let extra_path = env.dir.path().join("extra");
    let run = |preserve: &str, id: &str| {
        let extra = std::fs::File::create(&extra_path).unwrap();
        let fd = extra.as_raw_fd();
        let mut cmd = std::process::Command::new(RUNTIME);
        cmd.arg("--root").arg(&env.root).args(["run", "--preserve-fds", preserve, "--bundle", b.p(), id]);
        // SAFETY: dup2 and fcntl on valid descriptors in the forked child, before exec. The file
        // may already be fd 3, where dup2 does nothing: clear close-on-exec explicitly.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        (stdout(&out), std::fs::read_to_string(&extra_path).unwrap())
    };
    assert_eq!(run("1", "pf"), ("wrote\n".to_string(), "through-fd-3\n".to_string()));
    assert_eq!(run("0", "pf").0, "no-fd-3\n");
    env.assert_no_leaks("pf", &b.path);
}
