//! linux.seccomp: actions with errno returns, argument conditions, exec'd processes filtered
//! too, the notify listener, and bad profiles refused.

mod common;
use common::*;
use serde_json::json;

fn run_out(env: &Env, b: &Bundle, id: &str) -> String {
    let out = env.rt(&["run", "--bundle", b.p(), id]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.assert_no_leaks(id, &b.path);
    stdout(&out)
}

#[test]
fn errno_rules_and_argument_conditions() {
    let env = Env::new();
    let mut b = env.bundle("s1", &["sh", "-c",
        "mkdir /tmp/x 2>/dev/null; echo mkdir=$?; kill -USR1 $$ 2>/dev/null; echo usr1=$?; kill -0 $$; echo zero=$?"]);
    b.spec["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat", "no_such_syscall_anywhere"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 1, "value": 10, "op": "SCMP_CMP_EQ"}]},
            {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}
        ]
    });
    b.save();
    // busybox's trap handler is not set, so a delivered SIGUSR1 would kill the shell: the
    // filter must refuse that kill and let kill -0 through
    assert_eq!(run_out(&env, &b, "s1"), "mkdir=1\nusr1=1\nzero=0\n");

    // the errno is the one asked for; exec'd processes get the filter too
    b.spec["process"]["args"] = json!(["sleep", "1000"]);
    b.save();
    env.ok(&["run", "--detach", "--bundle", b.p(), "s2"]);
    let out = env.rt(&["exec", "s2", "mkdir", "/tmp/y"]);
    assert!(stderr(&out).contains("Function not implemented"), "{}", stderr(&out));
    env.ok(&["delete", "--force", "s2"]);
    env.assert_no_leaks("s2", &b.path);
}

#[test]
fn notify_sends_the_listener_fd_and_state() {
    use libseccomp::{ScmpNotifReq, ScmpNotifResp, ScmpNotifRespFlags};
    use std::os::fd::AsRawFd;
    let env = Env::new();
    let sock = env.dir.path().join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut b = env.bundle("n1", &["sh", "-c", "mkdir /tmp/z; echo rc=$?"]);
    b.spec["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": sock, "listenerMetadata": "agent-meta",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
    });
    b.save();
    let agent = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 8192];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = nix::sys::socket::recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            nix::sys::socket::MsgFlags::empty(),
        )
        .unwrap();
        let mut fd = -1;
        for c in msg.cmsgs().unwrap() {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                fd = fds[0];
            }
        }
        let n = msg.bytes;
        let state: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
        // answer the container's mkdir with EACCES
        let req = ScmpNotifReq::receive(fd).unwrap();
        ScmpNotifResp::new_error(req.id, -libc::EACCES, ScmpNotifRespFlags::empty()).respond(fd).unwrap();
        state
    });
    let out = run_out(&env, &b, "n1");
    let state = agent.join().unwrap();
    assert_eq!(out, "rc=1\n");
    assert_eq!(state["fds"], json!(["seccompFd"]));
    assert_eq!(state["metadata"], "agent-meta");
    assert_eq!(state["state"]["id"], "n1");
    assert!(state["pid"].as_i64().unwrap() > 0);
}

#[test]
fn bad_profiles_are_refused() {
    let env = Env::new();
    for (id, seccomp, expect) in [
        ("b1", json!({"defaultAction": "SCMP_ACT_BOGUS"}), "SCMP_ACT_BOGUS"),
        (
            "b2",
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}),
            "listenerPath",
        ),
        (
            "b3",
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]}),
            "argument index 9",
        ),
    ] {
        let mut b = env.bundle(id, &["true"]);
        b.spec["linux"]["seccomp"] = seccomp;
        b.save();
        let out = env.rt(&["create", "--bundle", b.p(), id]);
        assert!(!out.status.success(), "{id}");
        assert_eq!(stderr(&out).trim().lines().count(), 1, "{id}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{id}: {}", stderr(&out));
        env.assert_no_leaks(id, &b.path);
    }
}
