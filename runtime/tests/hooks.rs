//! OCI hooks: each kind at its point of the lifecycle, in the namespaces the spec says, with the
//! state on stdin; failures stop the container (or warn, for poststart and poststop).

mod common;
use common::*;
use serde_json::{json, Value};

/// A host hook script that appends "<kind> <state json>" to `log`.
fn logging_hook(env: &Env, log: &std::path::Path, kind: &str) -> Value {
    let script = env.dir.path().join("hook.sh");
    if !script.exists() {
        std::fs::write(&script, "#!/bin/sh\nprintf '%s %s\\n' \"$1\" \"$(cat)\" >> \"$HOOK_LOG\"\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    json!({"path": script, "args": ["hook.sh", kind], "env": [format!("HOOK_LOG={}", log.display())]})
}

fn entries(log: &std::path::Path) -> Vec<(String, Value)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_string(), serde_json::from_str(v).unwrap())
        })
        .collect()
}

#[test]
fn every_kind_in_order_with_the_state() {
    let env = Env::new();
    let log = env.dir.path().join("hooks.log");
    let out_dir = env.dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut b = env.bundle("h1", &["sleep", "1000"]);
    b.spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/out", "type": "bind", "source": out_dir, "options": ["rbind", "rw"]}));
    b.spec["process"]["env"].as_array_mut().unwrap().push(json!("HOOK_SEES=process-env"));
    b.spec["hooks"] = json!({
        "prestart": [logging_hook(&env, &log, "prestart")],
        "createRuntime": [logging_hook(&env, &log, "createRuntime")],
        "createContainer": [logging_hook(&env, &log, "createContainer")],
        // runs inside the container, after pivot_root: its path is the container's /bin/sh
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /out/start.json; echo $HOOK_SEES > /out/start.env; hostname > /out/start.tmp; mv /out/start.tmp /out/start.host"]}],
        "poststart": [logging_hook(&env, &log, "poststart")],
        "poststop": [logging_hook(&env, &log, "poststop")],
    });
    b.spec["annotations"] = json!({"org.example/key": "value"});
    b.save();
    env.ok(&["create", "--bundle", b.p(), "h1"]);
    let pid = serde_json::from_str::<Value>(&env.ok(&["state", "h1"])).unwrap()["pid"].as_i64().unwrap();
    let kinds: Vec<String> = entries(&log).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["prestart", "createRuntime", "createContainer"]);
    env.ok(&["start", "h1"]);
    wait_for("startContainer", || out_dir.join("start.host").exists());
    assert_eq!(
        std::fs::read_to_string(out_dir.join("start.host")).unwrap(),
        "engine\n",
        "in the container's uts namespace"
    );
    // with no env of its own, the container process's
    assert_eq!(std::fs::read_to_string(out_dir.join("start.env")).unwrap(), "process-env\n");
    let start: Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("start.json")).unwrap()).unwrap();
    env.ok(&["delete", "--force", "h1"]);
    env.assert_no_leaks("h1", &b.path);

    let all = entries(&log);
    let kinds: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["prestart", "createRuntime", "createContainer", "poststart", "poststop"]);
    let statuses: Vec<&str> = all.iter().map(|(_, s)| s["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["creating", "creating", "creating", "running", "stopped"]);
    assert_eq!(start["status"], "created");
    for (_, s) in all.iter().chain([("startContainer".to_string(), start.clone())].iter()) {
        assert_eq!(s["id"], "h1");
        assert_eq!(s["pid"], pid);
        assert_eq!(s["bundle"], b.p());
        assert_eq!(s["annotations"]["org.example/key"], "value");
    }
}

#[test]
fn a_failing_create_hook_stops_the_container() {
    let env = Env::new();
    let mut b = env.bundle("h2", &["sleep", "1000"]);
    b.spec["hooks"] =
        json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo no network for you >&2; exit 3"]}]});
    b.save();
    let out = env.rt(&["create", "--bundle", b.p(), "h2"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("createRuntime hook /bin/sh failed") && err.contains("no network for you"), "{err}");
    env.assert_no_leaks("h2", &b.path);

    b.spec["hooks"] = json!({"prestart": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]});
    b.save();
    let out = env.rt(&["create", "--bundle", b.p(), "h2"]);
    assert!(stderr(&out).contains("prestart hook /bin/sleep timed out after 1s"), "{}", stderr(&out));
    env.assert_no_leaks("h2", &b.path);

    b.spec["hooks"] = json!({"createContainer": [{"path": "/nonexistent/hook"}]});
    b.save();
    let out = env.rt(&["create", "--bundle", b.p(), "h2"]);
    assert!(stderr(&out).contains("createContainer hook /nonexistent/hook"), "{}", stderr(&out));
    env.assert_no_leaks("h2", &b.path);
}

#[test]
fn failing_poststart_and_poststop_only_warn() {
    let env = Env::new();
    let mut b = env.bundle("h3", &["true"]);
    let log = env.dir.path().join("after-failure.log");
    let fail = |kind: &str| json!([{"path": "/bin/false", "args": ["false"]}, logging_hook(&env, &log, kind)]);
    b.spec["hooks"] = json!({"poststart": fail("poststart"), "poststop": fail("poststop")});
    b.save();
    let out = env.rt(&["run", "--bundle", b.p(), "h3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // the hooks after a failed one still run
    let kinds: Vec<String> = entries(&log).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["poststart", "poststop"]);
    assert!(stderr(&out).contains("warning: poststart hook /bin/false failed"), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning: poststop hook /bin/false failed"), "{}", stderr(&out));
    env.assert_no_leaks("h3", &b.path);
}
