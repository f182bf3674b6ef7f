//! `process.terminal`: the pty master goes to the console socket (SCM_RIGHTS, as with runc), the
//! slave is the program's stdio and controlling terminal, sized as consoleSize says.

mod common;
use common::*;
use serde_json::json;
use std::io::Read;
use std::os::unix::net::UnixListener;

fn tty_bundle(env: &Env, name: &str) -> Bundle {
    let mut b =
        env.bundle(name, &["sh", "-c", "tty; stty size; test -t 0 && echo stdin-is-tty; readlink /proc/self/fd/2"]);
    b.spec["process"]["terminal"] = json!(true);
    b.spec["process"]["consoleSize"] = json!({"height": 30, "width": 100});
    b.save();
    b
}

/// Reads a pty master until the slave side is gone (EIO).
fn read_master(master: std::os::fd::OwnedFd) -> String {
    let mut f = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).replace("\r\n", "\n")
}

#[test]
fn console_socket_receives_the_pty_master() {
    let env = Env::new();
    let b = tty_bundle(&env, "t1");
    let sock = env.dir.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let receiver = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        engine_runtime::terminal::receive_master(std::os::fd::AsFd::as_fd(&conn)).unwrap()
    });
    env.ok(&["create", "--console-socket", sock.to_str().unwrap(), "--bundle", b.p(), "t1"]);
    let master = receiver.join().unwrap();
    env.ok(&["start", "t1"]);
    let out = read_master(master);
    assert_eq!(out, "/dev/pts/0\n30 100\nstdin-is-tty\n/dev/pts/0\n");
    env.wait_status("t1", "stopped");
    env.ok(&["delete", "t1"]);
    env.assert_no_leaks("t1", &b.path);
}

#[test]
fn foreground_run_relays_the_terminal() {
    let env = Env::new();
    let b = tty_bundle(&env, "t2");
    let out = env.rt(&["run", "--bundle", b.p(), "t2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).replace("\r\n", "\n"), "/dev/pts/0\n30 100\nstdin-is-tty\n/dev/pts/0\n");
    env.assert_no_leaks("t2", &b.path);
}

#[test]
fn terminal_needs_a_console_socket_and_vice_versa() {
    let env = Env::new();
    let b = tty_bundle(&env, "t3");
    let out = env.rt(&["create", "--bundle", b.p(), "t3"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--console-socket is required"), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim().lines().count(), 1);
    env.assert_no_leaks("t3", &b.path);

    let plain = env.bundle("t4", &["true"]);
    let out = env.rt(&["create", "--console-socket", "/nonexistent.sock", "--bundle", plain.p(), "t4"]);
    assert!(stderr(&out).contains("process.terminal is false"), "{}", stderr(&out));
    env.assert_no_leaks("t4", &plain.path);

    let out = env.rt(&["create", "--console-socket", "/nonexistent.sock", "--bundle", b.p(), "t3"]);
    assert!(stderr(&out).contains("connect console socket /nonexistent.sock"), "{}", stderr(&out));
    env.assert_no_leaks("t3", &b.path);
}
