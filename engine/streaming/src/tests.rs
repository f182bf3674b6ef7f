//! The server driven as a client drives it: an HTTP upgrade on a real TCP connection, then
//! SPDY frames, against a runtime that echoes.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::client::Client;

/// Exec: prints its command, then what it reads, upper-cased, and `err` on stderr; exits with
/// the number of bytes read. Attach: says `attached`. Port forward: connects to `echo`.
struct Echo {
    echo: SocketAddr,
}

impl Runtime for Echo {
    async fn exec(&self, _: String, cmd: Vec<String>, _tty: bool, mut io: Io) -> Result<i32, String> {
        if cmd[0] == "missing" {
            return Err("exec: \"missing\": executable file not found in $PATH".into());
        }
        let out = io.stdout.take().unwrap();
        out.send(Bytes::from(cmd.join(" "))).await.map_err(|e| e.to_string())?;
        let mut read = 0;
        if let Some(mut stdin) = io.stdin.take() {
            while let Some(b) = stdin.recv().await {
                read += b.len();
                out.send(Bytes::from(b.to_ascii_uppercase())).await.map_err(|e| e.to_string())?;
            }
        }
        if let Some(err) = io.stderr.take() {
            err.send(Bytes::from_static(b"err")).await.map_err(|e| e.to_string())?;
        }
        Ok(read as i32)
    }

    async fn attach(&self, _: String, _: bool, io: Io) -> Result<(), String> {
        io.stdout.unwrap().send(Bytes::from_static(b"attached")).await.map_err(|e| e.to_string())
    }

    async fn port_forward(&self, _: String, port: u16) -> Result<TcpStream, String> {
        if port != 80 {
            return Err(format!("connection refused on port {port}"));
        }
        TcpStream::connect(self.echo).await.map_err(|e| e.to_string())
    }
}

/// A server over [`Echo`], with a TCP echo server behind its port 80.
async fn server() -> Arc<Server<Echo>> {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = c.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Server::bind("127.0.0.1:0".parse().unwrap(), Arc::new(Echo { echo: addr })).await.unwrap()
}

/// Upgrades `url` with `upgrade` and `protocols` by hand: the answer's head.
async fn upgrade(url: &str, upgrade: &str, protocols: &[&str]) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut c = TcpStream::connect(host).await.unwrap();
    let mut head = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\nConnection: close\r\n"
    );
    for p in protocols {
        head.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    head.push_str("Content-Length: 0\r\n\r\n");
    c.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer).await;
    String::from_utf8(answer).unwrap()
}

fn wanted(stdin: bool, stderr: bool, tty: bool) -> Wanted {
    Wanted { stdin, stdout: true, stderr, tty }
}

#[tokio::test]
async fn an_exec_streams_both_ways_and_ends_with_its_exit_code() {
    let s = server().await;
    let cmd = vec!["cat".to_string()];
    let url = s.url(Request::Exec { container_id: "c".into(), cmd, wanted: wanted(true, true, false) }).unwrap();
    let offered = ["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io"];
    let mut c = Client::connect(&url, &offered).await.unwrap();
    assert_eq!(c.protocol, "v4.channel.k8s.io");
    let error = c.open(&[("streamtype", "error")]).await.unwrap();
    let stdin = c.open(&[("streamtype", "stdin")]).await.unwrap();
    let stdout = c.open(&[("streamtype", "stdout")]).await.unwrap();
    let stderr = c.open(&[("streamtype", "stderr")]).await.unwrap();
    c.send(stdin, b"hello", true).await.unwrap();
    let got = c.read_to_end().await.unwrap();
    assert_eq!(got[&stdout], (b"catHELLO".to_vec(), true));
    assert_eq!(got[&stderr], (b"err".to_vec(), true));
    let status: serde_json::Value = serde_json::from_slice(&got[&error].0).unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "5");
    assert!(got[&error].1);
    // the URL was for one use
    let head = upgrade(&url, "SPDY/3.1", &["v4.channel.k8s.io"]).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

#[tokio::test]
async fn a_command_that_cannot_run_says_why_on_the_error_stream() {
    let s = server().await;
    let cmd = vec!["missing".to_string()];
    let url = s.url(Request::Exec { container_id: "c".into(), cmd, wanted: wanted(false, false, true) }).unwrap();
    let mut c = Client::connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    let error = c.open(&[("streamtype", "error")]).await.unwrap();
    c.open(&[("streamtype", "stdout")]).await.unwrap();
    c.open(&[("streamtype", "resize")]).await.unwrap();
    let got = c.read_to_end().await.unwrap();
    let status: serde_json::Value = serde_json::from_slice(&got[&error].0).unwrap();
    assert_eq!(status["status"], "Failure");
    assert!(status["message"].as_str().unwrap().contains("executable file not found"), "{status}");
}

#[tokio::test]
async fn attach_in_v2_ends_without_a_status() {
    let s = server().await;
    let url = s.url(Request::Attach { container_id: "c".into(), wanted: wanted(false, false, false) }).unwrap();
    let mut c = Client::connect(&url, &["v2.channel.k8s.io"]).await.unwrap();
    assert_eq!(c.protocol, "v2.channel.k8s.io");
    let error = c.open(&[("streamtype", "error")]).await.unwrap();
    let stdout = c.open(&[("streamtype", "stdout")]).await.unwrap();
    let got = c.read_to_end().await.unwrap();
    assert_eq!(got[&stdout].0, b"attached");
    assert_eq!(got[&error], (Vec::new(), true));
}

#[tokio::test]
async fn bad_requests_and_upgrades_are_refused() {
    let s = server().await;
    let none = Wanted { stdin: false, stdout: false, stderr: false, tty: false };
    let r = s.url(Request::Attach { container_id: "c".into(), wanted: none });
    assert_eq!(r, Err(StreamingError::Invalid("one of stdin, stdout, or stderr must be set".into())));
    let r = s.url(Request::Exec { container_id: "c".into(), cmd: vec![], wanted: wanted(false, false, false) });
    assert!(matches!(r, Err(StreamingError::Invalid(_))));
    let r =
        s.url(Request::Exec { container_id: "c".into(), cmd: vec!["sh".into()], wanted: wanted(false, true, true) });
    assert_eq!(r, Err(StreamingError::Invalid("tty and stderr cannot both be true".into())));

    let req =
        || Request::Exec { container_id: "c".into(), cmd: vec!["sh".into()], wanted: wanted(false, false, false) };
    let head = upgrade(&s.url(req()).unwrap(), "websocket", &["v4.channel.k8s.io"]).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let head = upgrade(&s.url(req()).unwrap(), "SPDY/3.1", &["v1.channel.k8s.io"]).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let url = s.url(req()).unwrap().replace("/exec/", "/attach/");
    let head = upgrade(&url, "SPDY/3.1", &["v4.channel.k8s.io"]).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

#[tokio::test]
async fn port_forward_carries_each_connection_on_its_pair_of_streams() {
    let s = server().await;
    let url = s.url(Request::PortForward { sandbox_id: "p".into() }).unwrap();
    let mut c = Client::connect(&url, &["portforward.k8s.io"]).await.unwrap();
    assert_eq!(c.protocol, "portforward.k8s.io");
    // two connections at once, to the echo server and to a closed port
    let e0 = c.open(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")]).await.unwrap();
    let e1 = c.open(&[("streamtype", "error"), ("port", "81"), ("requestid", "1")]).await.unwrap();
    let d0 = c.open(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")]).await.unwrap();
    let d1 = c.open(&[("streamtype", "data"), ("port", "81"), ("requestid", "1")]).await.unwrap();
    c.send(d0, b"ping", true).await.unwrap();
    let mut got = HashMap::new();
    let all_ended = |g: &crate::client::Received| [e0, e1, d0, d1].iter().all(|s| g.get(s).is_some_and(|e| e.1));
    assert!(c.read_until(&mut got, all_ended).await.unwrap(), "the session ended early: {got:?}");
    assert_eq!(got[&d0].0, b"ping", "echoed back, then the pod's end");
    assert_eq!(got[&e0].0, b"");
    let err = String::from_utf8(got[&e1].0.clone()).unwrap();
    assert!(err.contains("error forwarding port 81") && err.contains("connection refused"), "{err}");
}
