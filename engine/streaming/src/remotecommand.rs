//! Kubernetes' remotecommand protocol (exec and attach) on a SPDY session: the streams a
//! client opens (`streamtype` error, stdin, stdout, stderr, resize), the versions
//! `v4.channel.k8s.io` (the end as a JSON `Status` with the exit code), `v3` (resize) and `v2`
//! (the end as text), and the order of the end: all output, then the status, then the session.

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::spdy::{header, Session, Stream, StreamWriter};
use crate::{Io, TermSize};

pub const V4: &str = "v4.channel.k8s.io";
pub const V3: &str = "v3.channel.k8s.io";
pub const V2: &str = "v2.channel.k8s.io";
/// What this server speaks, preferred first.
pub const PROTOCOLS: [&str; 3] = [V4, V3, V2];

/// How long a client has to open its streams (the kubelet's default).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The streams one exec or attach asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// How a command ended, as the error stream says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    /// It could not run, or the runtime failed: the reason.
    Failed(String),
}

/// The client's streams, by kind.
#[derive(Default)]
struct Streams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

impl Streams {
    fn complete(&self, w: Wanted, protocol: &str) -> bool {
        self.error.is_some()
            && (!w.stdin || self.stdin.is_some())
            && (!w.stdout || self.stdout.is_some())
            && (!w.stderr || w.tty || self.stderr.is_some())
            && (!w.tty || protocol == V2 || self.resize.is_some())
    }
}

/// Waits for the client's streams; `None` if they are not all there in time or the session ends.
async fn wait_for_streams(incoming: &mut mpsc::Receiver<Stream>, w: Wanted, protocol: &str) -> Option<Streams> {
    let mut s = Streams::default();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while !s.complete(w, protocol) {
        let stream = tokio::time::timeout_at(deadline, incoming.recv()).await.ok()??;
        let slot = match header(&stream.headers, "streamtype") {
            Some("error") => &mut s.error,
            Some("stdin") => &mut s.stdin,
            Some("stdout") => &mut s.stdout,
            Some("stderr") => &mut s.stderr,
            Some("resize") => &mut s.resize,
            _ => {
                stream.writer.reset().await;
                continue;
            }
        };
        *slot = Some(stream);
    }
    Some(s)
}

/// Sends what comes out of the runtime's channel on `writer`, then ends the stream.
fn pump_out(writer: StreamWriter) -> (mpsc::Sender<Bytes>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                chunk = rx.recv() => match chunk {
                    Some(c) => if writer.send(&c).await.is_err() { return },
                    None => break,
                },
                // the client is gone: the runtime's sends fail from here on
                _ = writer.ended() => return,
            }
        }
        writer.close().await;
    });
    (tx, task)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Size {
    width: u16,
    height: u16,
}

/// The terminal sizes the client sends on its resize stream (a sequence of JSON objects).
fn sizes(mut data: mpsc::Receiver<Bytes>) -> mpsc::Receiver<TermSize> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(chunk) = data.recv().await {
            buf.extend_from_slice(&chunk);
            let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<Size>();
            let mut used = 0;
            loop {
                match it.next() {
                    Some(Ok(s)) => {
                        used = it.byte_offset();
                        if tx.send(TermSize { width: s.width, height: s.height }).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    // not a size: the rest of the stream is not read as one
                    Some(Err(_)) => return,
                    None => break,
                }
            }
            buf.drain(..used);
        }
    });
    rx
}

/// The error stream's last message for `outcome` in `protocol`; `None` when it says nothing.
pub fn status(protocol: &str, outcome: &Outcome) -> Option<Vec<u8>> {
    let v4 = protocol == V4;
    match outcome {
        Outcome::Exited(0) if v4 => Some(br#"{"metadata":{},"status":"Success"}"#.to_vec()),
        Outcome::Exited(0) => None,
        Outcome::Exited(code) if v4 => {
            let status = serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": { "causes": [{ "reason": "ExitCode", "message": code.to_string() }] },
            });
            Some(status.to_string().into_bytes())
        }
        Outcome::Exited(code) => {
            Some(format!("command terminated with non-zero exit code: exit status {code}").into_bytes())
        }
        Outcome::Failed(reason) if v4 => {
            let status = serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": reason,
                "reason": "InternalError",
                "details": { "causes": [{ "message": reason }] },
            });
            Some(status.to_string().into_bytes())
        }
        Outcome::Failed(reason) => Some(reason.clone().into_bytes()),
    }
}

/// Serves one exec or attach on `session`: waits for the client's streams, runs `run` with them
/// as [`Io`], and ends the session with the outcome on the error stream.
pub async fn serve<F, Fut>(
    session: Session,
    mut incoming: mpsc::Receiver<Stream>,
    protocol: &str,
    wanted: Wanted,
    run: F,
) where
    F: FnOnce(Io) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let Some(streams) = wait_for_streams(&mut incoming, wanted, protocol).await else {
        session.close().await;
        return;
    };
    // streams opened later are not read
    tokio::spawn(async move {
        while let Some(s) = incoming.recv().await {
            s.writer.reset().await;
        }
    });
    let mut pumps = Vec::new();
    let mut out = |s: Option<Stream>| {
        s.map(|s| {
            let (tx, task) = pump_out(s.writer);
            pumps.push(task);
            tx
        })
    };
    let (stdout, stderr) = (out(streams.stdout), out(streams.stderr));
    let io = Io { stdin: streams.stdin.map(|s| s.data), stdout, stderr, resize: streams.resize.map(|s| sizes(s.data)) };
    let outcome = run(io).await;
    for p in pumps {
        let _ = p.await;
    }
    if let Some(error) = streams.error {
        if let Some(message) = status(protocol, &outcome) {
            let _ = error.writer.send(&message).await;
        }
        error.writer.close().await;
    }
    session.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_in_each_version() {
        let ok = status(V4, &Outcome::Exited(0)).unwrap();
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&ok).unwrap()["status"], "Success");
        let failed: serde_json::Value = serde_json::from_slice(&status(V4, &Outcome::Exited(3)).unwrap()).unwrap();
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        assert_eq!(status(V3, &Outcome::Exited(0)), None);
        assert_eq!(status(V2, &Outcome::Failed("no such file".into())).unwrap(), b"no such file");
    }

    #[tokio::test]
    async fn resize_messages_come_out_as_they_are_complete() {
        let (tx, rx) = mpsc::channel(4);
        let mut sizes = sizes(rx);
        tx.send(Bytes::from_static(br#"{"Width":80,"Height":24}{"Width":1"#)).await.unwrap();
        assert_eq!(sizes.recv().await, Some(TermSize { width: 80, height: 24 }));
        tx.send(Bytes::from_static(br#"00,"Height":40}"#)).await.unwrap();
        assert_eq!(sizes.recv().await, Some(TermSize { width: 100, height: 40 }));
        drop(tx);
        assert_eq!(sizes.recv().await, None);
    }
}
