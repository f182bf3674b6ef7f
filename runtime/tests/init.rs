//! engine-init as PID 1 of a container: reaps orphaned zombies, forwards signals, and exits with
//! the child's code or 128+signal.

mod common;
use common::*;
use serde_json::json;

/// engine-init, built beside engine-runtime by `cargo build --workspace` (make test does it).
fn init_bin() -> String {
    bin("engine-init").to_string_lossy().into_owned()
}

fn with_init(env: &Env, name: &str, args: &[&str]) -> Bundle {
    let mut b = env.bundle(name, args);
    let mut argv = vec![json!("/sbin/engine-init"), json!("--")];
    argv.extend(args.iter().map(|a| json!(a)));
    b.spec["process"]["args"] = json!(argv);
    b.spec["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/sbin/engine-init", "type": "bind", "source": init_bin(), "options": ["bind", "ro"]
    }));
    b.save();
    b
}

#[test]
fn reaps_orphaned_zombies() {
    let env = Env::new();
    // the inner sh exits at once, orphaning `sleep`, which is reparented to init (PID 1)
    let b = with_init(
        &env,
        "z1",
        &[
            "sh",
            "-c",
            "sh -c 'sleep 0.2 & echo $! > /tmp/orphan'; o=$(cat /tmp/orphan); \
         test \"$(cut -d' ' -f4 /proc/$o/stat)\" = 1 && echo reparented; \
         i=0; while [ -e /proc/$o ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; \
         [ -e /proc/$o ] && echo leaked || echo reaped",
        ],
    );
    let out = env.rt(&["run", "--bundle", b.p(), "z1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "reparented\nreaped\n");
    env.assert_no_leaks("z1", &b.path);
}

#[test]
fn forwards_sigterm_and_returns_the_exit_code() {
    let env = Env::new();
    let out_dir = env.dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut b =
        with_init(&env, "t1", &["sh", "-c", "trap 'exit 7' TERM; touch /out/ready; while :; do sleep 0.05; done"]);
    b.spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/out", "type": "bind", "source": out_dir, "options": ["rbind"]}));
    b.save();
    env.ok(&["run", "--detach", "--bundle", b.p(), "t1"]);
    wait_for("the trap", || out_dir.join("ready").exists());
    // SIGTERM to PID 1 of the container, as `docker stop` sends it
    env.ok(&["kill", "t1", "TERM"]);
    env.wait_status("t1", "stopped");
    env.ok(&["delete", "t1"]);
    env.assert_no_leaks("t1", &b.path);
}

#[test]
fn exit_status_of_the_child() {
    let env = Env::new();
    let b = with_init(&env, "x1", &["sh", "-c", "exit 5"]);
    assert_eq!(env.rt(&["run", "--bundle", b.p(), "x1"]).status.code(), Some(5));
    let b = with_init(&env, "x2", &["sh", "-c", "kill -TERM $$; sleep 1"]);
    assert_eq!(env.rt(&["run", "--bundle", b.p(), "x2"]).status.code(), Some(128 + 15));
    let b = with_init(&env, "x3", &["no-such-program"]);
    assert_eq!(env.rt(&["run", "--bundle", b.p(), "x3"]).status.code(), Some(127));
}

#[test]
fn outside_a_container_as_subreaper() {
    // engine-init also works as a plain process: -s makes it reap its grandchildren
    let out = std::process::Command::new(init_bin())
        .args(["-s", "--", "sh", "-c", "sh -c 'sleep 0.1 &'; exit 9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(9));
    let usage = std::process::Command::new(init_bin()).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("usage"));
}
