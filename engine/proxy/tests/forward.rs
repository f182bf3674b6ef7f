//! engine-proxy as engined runs it: started with fd 3 for its answer, forwarding TCP and UDP
//! on loopback to a local "container" server, counting connections and bytes, refusing a
//! taken port with a clear answer, and leaving on SIGTERM.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts the proxy; returns it and its answer on fd 3.
fn proxy(args: &[&str]) -> (Child, String) {
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let wfd = wr.as_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_engine-proxy"));
    cmd.args(args).stdin(Stdio::null());
    // SAFETY: dup2 only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || if libc::dup2(wfd, 3) < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
    }
    let child = cmd.spawn().unwrap();
    drop(wr);
    let mut answer = String::new();
    std::fs::File::from(rd).read_to_string(&mut answer).unwrap();
    (child, answer.trim().to_string())
}

/// The port of an answer `0 <port> <address bound>`, checking the address.
fn bound(answer: &str, address: &str) -> u16 {
    let (port, at) = answer.strip_prefix("0 ").expect(answer).split_once(' ').expect(answer);
    assert_eq!(at, address, "{answer}");
    port.parse().unwrap()
}

fn stop(mut c: Child) -> i32 {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    c.wait().unwrap().code().unwrap_or(-1)
}

/// A "container" server on loopback that answers 5 bytes with them and `-pong`; its port.
fn tcp_backend() -> String {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = backend.local_addr().unwrap().port().to_string();
    std::thread::spawn(move || {
        for s in backend.incoming() {
            let mut s = s.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&[&buf[..], b"-pong"].concat()).unwrap();
        }
    });
    port
}

#[test]
fn tcp_is_forwarded_and_counted() {
    let bport = tcp_backend();
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats");
    let (child, answer) = proxy(&[
        "--proto",
        "tcp",
        "--host-ip",
        "127.0.0.1",
        "--host-port",
        "0",
        "--container-ip",
        "127.0.0.1",
        "--container-port",
        &bport,
        "--stats",
        stats.to_str().unwrap(),
    ]);
    let port = bound(&answer, "127.0.0.1");
    for _ in 0..2 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"hello").unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello-pong");
    }
    wait_for("the counters", || std::fs::read_to_string(&stats).is_ok_and(|s| s == "2 0 10 20\n"));

    // the same port again: refused with the reason, and the proxy exits
    let (mut second, answer) = proxy(&[
        "--proto",
        "tcp",
        "--host-ip",
        "127.0.0.1",
        "--host-port",
        &port.to_string(),
        "--container-ip",
        "127.0.0.1",
        "--container-port",
        &bport,
    ]);
    assert_eq!(answer, "1 address already in use");
    assert_eq!(second.wait().unwrap().code(), Some(1));
    assert_eq!(stop(child), 0);
    assert!(TcpListener::bind(("127.0.0.1", port)).is_ok(), "the port was not released");
}

#[test]
fn udp_is_forwarded_per_client() {
    let backend = UdpSocket::bind("127.0.0.1:0").unwrap();
    let bport = backend.local_addr().unwrap().port().to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 100];
        loop {
            let (n, from) = backend.recv_from(&mut buf).unwrap();
            backend.send_to(&[b"echo:", &buf[..n]].concat(), from).unwrap();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats");
    let (child, answer) = proxy(&[
        "--proto",
        "udp",
        "--host-ip",
        "127.0.0.1",
        "--host-port",
        "0",
        "--container-ip",
        "127.0.0.1",
        "--container-port",
        &bport,
        "--stats",
        stats.to_str().unwrap(),
    ]);
    let port = bound(&answer, "127.0.0.1");
    for who in ["a", "b"] {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.send_to(who.as_bytes(), ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 100];
        let n = c.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], format!("echo:{who}").as_bytes());
    }
    // two clients, two flows (still open), 2 bytes in, 12 out
    wait_for("the counters", || std::fs::read_to_string(&stats).is_ok_and(|s| s == "2 2 2 12\n"));
    assert_eq!(stop(child), 0);
}

#[test]
fn bad_arguments_are_answered() {
    let (mut c, answer) =
        proxy(&["--proto", "sctp", "--host-port", "0", "--container-ip", "127.0.0.1", "--container-port", "1"]);
    assert!(answer.starts_with("1 ") && answer.contains("sctp"), "{answer}");
    assert_ne!(c.wait().unwrap().code(), Some(0));
}

/// A port published on every IPv4 address is bound on `[::]` too, one socket serving both
/// families, as dockerd publishes on `0.0.0.0` and `[::]`.
#[test]
fn a_port_on_every_address_answers_on_both_families() {
    let bport = tcp_backend();
    let (child, answer) = proxy(&[
        "--proto",
        "tcp",
        "--host-ip",
        "0.0.0.0",
        "--host-port",
        "0",
        "--container-ip",
        "127.0.0.1",
        "--container-port",
        &bport,
    ]);
    let port = bound(&answer, "::");
    for addr in ["127.0.0.1", "::1"] {
        let mut c = TcpStream::connect((addr, port)).unwrap();
        c.write_all(b"hello").unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello-pong", "over {addr}");
    }
    assert_eq!(stop(child), 0);
}
