//! Kubernetes' port-forward protocol (`portforward.k8s.io`) on a SPDY session: the client opens a
//! pair of streams per connection (`streamtype` error and data, with the same `port` and
//! `requestid`); each pair is one connection to that port in the pod, its bytes on the data
//! stream, a failure told on the error stream. The session lasts as long as the client keeps it.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::spdy::{header, Session, Stream};

pub const PROTOCOL: &str = "portforward.k8s.io";

/// How long the second stream of a pair may keep the client waiting.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// One connection being set up: the streams of a request id.
#[derive(Default)]
struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
    since: Option<tokio::time::Instant>,
}

/// The request id of a stream: its `requestid` header; an old client without one pairs streams by
/// id, the data stream right after its error stream.
fn request_id(s: &Stream) -> String {
    match header(&s.headers, "requestid") {
        Some(id) => id.to_string(),
        None if header(&s.headers, "streamtype") == Some("data") => format!("#{}", s.id.saturating_sub(2)),
        None => format!("#{}", s.id),
    }
}

/// Serves port forwarding on `session` until the client ends it; `connect(port)` makes a
/// connection to `port` in the pod, or says why it cannot.
pub async fn serve<C, Fut>(session: Session, mut incoming: mpsc::Receiver<Stream>, connect: C)
where
    C: Fn(u16) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<TcpStream, String>> + Send + 'static,
{
    let mut pending: HashMap<String, Pair> = HashMap::new();
    let mut sweep = tokio::time::interval(PAIR_TIMEOUT / 2);
    loop {
        let stream = tokio::select! {
            s = incoming.recv() => match s { Some(s) => s, None => break },
            _ = sweep.tick() => {
                // pairs never completed are given up
                let now = tokio::time::Instant::now();
                let stale: Vec<String> = pending
                    .iter()
                    .filter(|(_, p)| p.since.is_some_and(|t| now.duration_since(t) > PAIR_TIMEOUT))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in stale {
                    if let Some(p) = pending.remove(&k) {
                        for s in [p.error, p.data].into_iter().flatten() {
                            s.writer.reset().await;
                        }
                    }
                }
                continue;
            }
        };
        let id = request_id(&stream);
        let pair = pending.entry(id.clone()).or_default();
        pair.since.get_or_insert_with(tokio::time::Instant::now);
        match header(&stream.headers, "streamtype") {
            Some("error") => pair.error = Some(stream),
            Some("data") => pair.data = Some(stream),
            _ => {
                stream.writer.reset().await;
                continue;
            }
        }
        if pair.error.is_some() && pair.data.is_some() {
            let Some(Pair { error: Some(error), data: Some(data), .. }) = pending.remove(&id) else { continue };
            tokio::spawn(forward(error, data, connect.clone()));
        }
    }
    session.close().await;
}

/// One connection: the data stream's bytes to the port and back; a failure on the error stream.
async fn forward<C, Fut>(error: Stream, data: Stream, connect: C)
where
    C: Fn(u16) -> Fut,
    Fut: Future<Output = Result<TcpStream, String>>,
{
    let port = header(&data.headers, "port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p != 0);
    let conn = match port {
        Some(port) => connect(port).await.map_err(|e| format!("error forwarding port {port} to pod: {e}")),
        None => Err(format!("invalid port {:?}", header(&data.headers, "port").unwrap_or(""))),
    };
    let conn = match conn {
        Ok(c) => c,
        Err(message) => {
            let _ = error.writer.send(message.as_bytes()).await;
            error.writer.close().await;
            data.writer.close().await;
            return;
        }
    };
    let (mut rd, mut wr) = conn.into_split();
    let Stream { data: mut incoming, writer, .. } = data;
    let to_pod = async {
        while let Some(chunk) = incoming.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        // the client's end: the pod's side reads its end too
        let _ = wr.shutdown().await;
    };
    let from_pod = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                },
                // the client is gone
                _ = writer.ended() => return,
            };
            if writer.send(&buf[..n]).await.is_err() {
                return;
            }
        }
        writer.close().await;
    };
    tokio::join!(to_pod, from_pod);
    error.writer.close().await;
}
