//! pause/resume (the cgroup freezer), update of limits, and `events --stats`.

mod common;
use common::*;
use serde_json::Value;

fn counting(env: &Env, name: &str) -> (Bundle, std::path::PathBuf) {
    let out_dir = env.dir.path().join(format!("out-{name}"));
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut b = env.bundle(name, &["sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /out/count; sleep 0.01; done"]);
    b.spec["mounts"].as_array_mut().unwrap().push(serde_json::json!({
        "destination": "/out", "type": "bind", "source": out_dir, "options": ["rbind", "rw"]
    }));
    b.save();
    env.ok(&["run", "--detach", "--bundle", b.p(), name]);
    let count = out_dir.join("count");
    wait_for("the counter", || count.exists());
    (b, count)
}

fn read_count(p: &std::path::Path) -> u64 {
    std::fs::read_to_string(p).unwrap_or_default().trim().parse().unwrap_or(0)
}

#[test]
fn pause_freezes_and_resume_thaws() {
    let env = Env::new();
    let (b, count) = counting(&env, "p1");
    env.ok(&["pause", "p1"]);
    assert_eq!(env.status("p1"), "paused");
    let frozen_at = read_count(&count);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(read_count(&count), frozen_at, "a paused container does not run");
    let out = env.rt(&["exec", "p1", "true"]);
    assert!(stderr(&out).contains("it is paused"), "{}", stderr(&out));
    assert!(stderr(&env.rt(&["pause", "p1"])).contains("cannot pause container p1: it is paused"));

    env.ok(&["resume", "p1"]);
    assert_eq!(env.status("p1"), "running");
    wait_for("the counter to move again", || read_count(&count) > frozen_at);
    assert!(stderr(&env.rt(&["resume", "p1"])).contains("it is running"));

    // a paused container can be force-deleted
    env.ok(&["pause", "p1"]);
    env.ok(&["delete", "--force", "p1"]);
    env.assert_no_leaks("p1", &b.path);
}

#[test]
fn update_changes_limits_and_refuses_bad_values() {
    let env = Env::new();
    let b = env.bundle("u1", &["sleep", "1000"]);
    env.ok(&["run", "--detach", "--bundle", b.p(), "u1"]);
    let (mem, pids) = if pure_v2() {
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/pids.max")
    } else {
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/pids/pids.max")
    };
    let read = || env.ok(&["exec", "u1", "cat", mem, pids]);
    env.ok(&["update", "--memory", "64m", "--pids-limit", "20", "u1"]);
    assert_eq!(read(), "67108864\n20\n");

    let res = env.dir.path().join("res.json");
    std::fs::write(&res, r#"{"pids": {"limit": 33}}"#).unwrap();
    env.ok(&["update", "--resources", res.to_str().unwrap(), "u1"]);
    assert_eq!(read(), "67108864\n33\n");

    let out = env.rt(&["update", "--cpu-share", "1", "u1"]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("cpu.shares"), "{}", stderr(&out));
    assert!(stderr(&env.rt(&["update", "--memory", "lots", "u1"])).contains("invalid size"));
    assert_eq!(read(), "67108864\n33\n", "a refused update changes nothing");
    env.ok(&["delete", "--force", "u1"]);
    env.assert_no_leaks("u1", &b.path);
}

#[test]
fn events_stats_reads_the_cgroup() {
    let env = Env::new();
    let mut b = env.bundle("e1", &["sleep", "1000"]);
    b.spec["linux"]["resources"]["memory"] = serde_json::json!({"limit": 100663296});
    b.spec["linux"]["resources"]["pids"] = serde_json::json!({"limit": 50});
    b.save();
    env.ok(&["run", "--detach", "--bundle", b.p(), "e1"]);
    let ev: Value = serde_json::from_str(&env.ok(&["events", "--stats", "e1"])).unwrap();
    assert_eq!(ev["type"], "stats");
    assert_eq!(ev["id"], "e1");
    let d = &ev["data"];
    assert!(d["memory"]["usage"]["usage"].as_u64().unwrap() > 0, "{d}");
    assert_eq!(d["memory"]["usage"]["limit"], 100663296);
    assert_eq!(d["pids"]["current"], 1);
    assert_eq!(d["pids"]["limit"], 50);
    assert!(d["cpu"]["usage"]["total"].as_u64().unwrap() > 0, "{d}");
    env.ok(&["delete", "--force", "e1"]);
    assert!(stderr(&env.rt(&["events", "--stats", "e1"])).contains("does not exist"));
    env.assert_no_leaks("e1", &b.path);
}
