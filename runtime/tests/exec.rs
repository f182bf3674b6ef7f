//! `exec`: a further process joins the running container's namespaces and cgroup and takes on
//! the process settings it is given.

mod common;
use common::*;
use serde_json::{json, Value};

fn running(env: &Env, name: &str) -> (Bundle, i64) {
    let b = env.bundle(name, &["sleep", "1000"]);
    env.ok(&["run", "--detach", "--bundle", b.p(), name]);
    let st: Value = serde_json::from_str(&env.ok(&["state", name])).unwrap();
    (b, st["pid"].as_i64().unwrap())
}

fn cleanup(env: &Env, name: &str, b: &Bundle) {
    env.ok(&["delete", "--force", name]);
    env.assert_no_leaks(name, &b.path);
}

#[test]
fn joins_every_namespace_and_propagates_the_exit_code() {
    let env = Env::new();
    let (b, pid) = running(&env, "x1");
    let names = ["pid", "net", "mnt", "uts", "ipc", "cgroup"];
    let script = names.iter().map(|n| format!("readlink /proc/self/ns/{n}")).collect::<Vec<_>>().join("; ");
    let out = env.ok(&["exec", "x1", "sh", "-c", &script]);
    let want: Vec<String> = names
        .iter()
        .map(|n| std::fs::read_link(format!("/proc/{pid}/ns/{n}")).unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
    assert_eq!(env.ok(&["exec", "x1", "hostname"]), "engine\n");
    assert_eq!(env.rt(&["exec", "x1", "sh", "-c", "exit 7"]).status.code(), Some(7));
    cleanup(&env, "x1", &b);
}

#[test]
fn env_cwd_user_and_capabilities() {
    let env = Env::new();
    let (b, _) = running(&env, "x2");
    let out = env.ok(&[
        "exec",
        "-e",
        "FOO=bar",
        "-e",
        "PATH=/bin",
        "--cwd",
        "/tmp",
        "-u",
        "1000:1000",
        "-g",
        "5",
        "x2",
        "sh",
        "-c",
        "echo $FOO $PATH; pwd; id -u; id -g; id -G",
    ]);
    assert_eq!(out, "bar /bin\n/tmp\n1000\n1000\n1000 5\n");
    let out = env.ok(&["exec", "--cap", "CAP_SYS_TIME", "x2", "grep", "^Cap", "/proc/self/status"]);
    let set = |name: &str| {
        let line = out.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {out}"));
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    // As runc: bounding, effective and permitted get it; inheritable does not.
    for name in ["CapBnd", "CapEff", "CapPrm"] {
        assert!(set(name) & (1 << 25) != 0, "CAP_SYS_TIME not in {name}: {out}");
    }
    assert!(set("CapInh") & (1 << 25) == 0, "CAP_SYS_TIME in the inheritable set: {out}");
    cleanup(&env, "x2", &b);
}

#[test]
fn process_json_and_detach_with_pid_file() {
    let env = Env::new();
    let (b, _) = running(&env, "x3");
    let mut process = b.spec["process"].clone();
    process["args"] = json!(["sleep", "1000"]);
    process["env"] = json!(["PATH=/bin", "MARK=exec-json"]);
    let pfile = env.dir.path().join("process.json");
    std::fs::write(&pfile, process.to_string()).unwrap();
    let pid_file = env.dir.path().join("exec.pid");
    env.ok(&["exec", "--process", pfile.to_str().unwrap(), "--detach", "--pid-file", pid_file.to_str().unwrap(), "x3"]);
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(String::from_utf8_lossy(&environ).contains("MARK=exec-json"));
    // it is in the container's cgroup, so `ps` lists it beside the first process
    let pids: Vec<i32> = serde_json::from_str(&env.ok(&["ps", "--format", "json", "x3"])).unwrap();
    assert!(pids.contains(&pid), "{pids:?} lacks {pid}");
    cleanup(&env, "x3", &b);
    wait_for("the exec'd process to be gone", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z"))
    });
}

#[test]
fn tty_in_the_foreground() {
    let env = Env::new();
    let (b, _) = running(&env, "x4");
    let out = env.ok(&["exec", "-t", "x4", "sh", "-c", "tty; test -t 1 && echo is-tty"]);
    let out = out.replace("\r\n", "\n");
    assert!(out.starts_with("/dev/pts/") && out.ends_with("\nis-tty\n"), "{out:?}");
    cleanup(&env, "x4", &b);
}

#[test]
fn refused_where_it_cannot_run() {
    let env = Env::new();
    let b = env.bundle("x5", &["sleep", "1000"]);
    env.ok(&["create", "--bundle", b.p(), "x5"]);
    let out = env.rt(&["exec", "x5", "true"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("it is created"), "{}", stderr(&out));

    env.ok(&["start", "x5"]);
    let out = env.rt(&["exec", "x5", "no-such-program"]);
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("no-such-program"), "{}", stderr(&out));
    assert!(!out.status.success());
    let pids: Vec<i32> = serde_json::from_str(&env.ok(&["ps", "--format", "json", "x5"])).unwrap();
    assert_eq!(pids.len(), 1, "a failed exec leaves nothing in the container: {pids:?}");

    assert!(stderr(&env.rt(&["exec", "nope", "true"])).contains("does not exist"));
    assert!(stderr(&env.rt(&["exec", "-u", "x:y", "x5", "true"])).contains("invalid --user"));
    env.ok(&["kill", "x5", "KILL"]);
    env.wait_status("x5", "stopped");
    let out = env.rt(&["exec", "x5", "true"]);
    assert!(stderr(&out).contains("it is stopped"), "{}", stderr(&out));
    env.ok(&["delete", "x5"]);
    env.assert_no_leaks("x5", &b.path);
}
