//! Bad input: each case gives a one-line error naming the problem, a non-zero exit, and leaves
//! no state directory, cgroup, mount or process behind.

mod common;
use common::*;
use serde_json::json;

/// Runs `create` on a broken bundle and checks the error and that nothing is left.
fn refused(env: &Env, b: &Bundle, id: &str, expect: &str) {
    let before = processes_with_cwd_under(&b.path);
    let out = env.rt(&["create", "--bundle", b.p(), id]);
    assert!(!out.status.success(), "{id}: create succeeded");
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{id}: error is not one line: {err}");
    assert!(err.contains(expect), "{id}: error {err:?} does not mention {expect:?}");
    // tools (youki's contest among them) look for "error" in it, as runc and youki write it
    assert!(err.starts_with("engine-runtime: error: "), "{id}: {err:?}");
    env.assert_no_leaks(id, &b.path);
    assert!(!env.rt(&["state", id]).status.success(), "{id}: state exists");
    assert_eq!(processes_with_cwd_under(&b.path), before, "{id}: a process was left behind");
}

/// Processes whose root or cwd is inside `dir` (a leaked container init would be).
fn processes_with_cwd_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter(|e| {
            ["root", "cwd"].iter().any(|l| std::fs::read_link(e.path().join(l)).is_ok_and(|p| p.starts_with(dir)))
        })
        .count()
}

#[test]
fn malformed_json() {
    let env = Env::new();
    let b = env.bundle("m1", &["true"]);
    std::fs::write(b.config(), "{ \"ociVersion\": \"1.0.2\", ").unwrap();
    refused(&env, &b, "m1", "config.json");
}

#[test]
fn invalid_config() {
    let env = Env::new();
    let mut b = env.bundle("m2", &["true"]);
    b.spec.as_object_mut().unwrap().remove("process");
    b.save();
    refused(&env, &b, "m2", "process is missing");

    let mut b = env.bundle("m3", &["true"]);
    b.spec["process"]["args"] = json!([]);
    b.save();
    refused(&env, &b, "m3", "process.args");

    let mut b = env.bundle("m4", &["true"]);
    b.spec["process"]["cwd"] = json!("relative/dir");
    b.save();
    refused(&env, &b, "m4", "process.cwd");

    let mut b = env.bundle("m5", &["true"]);
    b.spec["ociVersion"] = json!("2.0.0");
    b.save();
    refused(&env, &b, "m5", "ociVersion");

    let mut b = env.bundle("m6", &["true"]);
    b.spec["linux"]["sysctl"] = json!({"vm.swappiness": "10"});
    b.save();
    refused(&env, &b, "m6", "vm.swappiness");
}

#[test]
fn missing_rootfs() {
    let env = Env::new();
    let mut b = env.bundle("r1", &["true"]);
    b.spec["root"]["path"] = json!("no-such-rootfs");
    b.save();
    refused(&env, &b, "r1", "no-such-rootfs");
}

#[test]
fn unknown_namespace_type() {
    let env = Env::new();
    let mut b = env.bundle("n1", &["true"]);
    b.spec["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "bogus"}));
    b.save();
    refused(&env, &b, "n1", "bogus");

    let mut b = env.bundle("n2", &["true"]);
    let namespaces = b.spec["linux"]["namespaces"].as_array_mut().unwrap();
    namespaces.retain(|ns| ns["type"] != "network");
    namespaces.push(json!({"type": "network", "path": "/proc/nonexistent/ns/net"}));
    b.save();
    refused(&env, &b, "n2", "/proc/nonexistent/ns/net");
}

#[test]
fn out_of_range_cgroup_values() {
    let env = Env::new();
    for (id, resources, expect) in [
        ("g1", json!({"cpu": {"shares": 1}}), "cpu.shares"),
        ("g2", json!({"memory": {"limit": -5}}), "memory.limit"),
        ("g3", json!({"cpu": {"period": 10}}), "cpu.period"),
        ("g4", json!({"memory": {"limit": 100000000, "swap": 1000}}), "memory.swap"),
        ("g5", json!({"cpu": {"cpus": "0-x"}}), "cpu.cpus"),
        ("g6", json!({"blockIO": {"weight": 5000}}), "blockIO.weight"),
    ] {
        let mut b = env.bundle(id, &["true"]);
        b.spec["linux"]["resources"] = resources;
        b.save();
        refused(&env, &b, id, expect);
    }
}

#[test]
fn value_the_kernel_rejects_is_rolled_back() {
    // passes the runtime's checks, fails in the kernel after the cgroup exists
    let env = Env::new();
    let mut b = env.bundle("k1", &["true"]);
    b.spec["linux"]["resources"]["cpu"] = json!({"cpus": "1000-1001"});
    b.save();
    refused(&env, &b, "k1", "cpuset.cpus");
}

#[test]
fn failure_inside_the_container_is_rolled_back() {
    let env = Env::new();
    let b = env.bundle("x1", &["no-such-program"]);
    refused(&env, &b, "x1", "no-such-program");

    let mut b = env.bundle("x2", &["true"]);
    b.spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/data", "type": "bind", "source": "/no/such/dir", "options": ["bind"]}));
    b.save();
    refused(&env, &b, "x2", "/no/such/dir");

    let mut b = env.bundle("x3", &["true"]);
    b.spec["process"]["rlimits"] =
        json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 20}, {"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]);
    b.save();
    refused(&env, &b, "x3", "RLIMIT_BOGUS");
}

#[test]
fn bad_ids_and_signals() {
    let env = Env::new();
    let b = env.bundle("ok", &["sleep", "100"]);
    let out = env.rt(&["create", "--bundle", b.p(), "../escape"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("invalid container id"), "{}", stderr(&out));
    assert!(!env.root.parent().unwrap().join("escape").exists());

    // the state rules as the spec has them: no kill or delete of what does not exist
    for args in [&["kill", "nosuch", "9"][..], &["kill", "", "9"], &["delete", "nosuch"], &["state", "nosuch"]] {
        let out = env.rt(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).starts_with("engine-runtime: error: "), "{args:?}: {}", stderr(&out));
    }
    env.ok(&["create", "--bundle", b.p(), "ok"]);
    let out = env.rt(&["kill", "ok", "SIGNOPE"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("invalid signal"), "{}", stderr(&out));
    assert_eq!(env.status("ok"), "created");
    env.ok(&["delete", "ok"]);
    env.assert_no_leaks("ok", &b.path);
}
