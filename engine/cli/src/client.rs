//! The daemon's API over its unix socket: requests with the command's `traceparent`,
//! Docker's error bodies turned into one-line errors, streamed and hijacked responses.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub type Body = BoxBody<Bytes, std::io::Error>;
/// A hijacked connection: the raw stream after the daemon's `101 Switching Protocols`.
pub type Upgraded = NoSigPipe;

/// API version the CLI speaks (the daemon's minimum).
pub const API: &str = "v1.41";

#[derive(Clone)]
pub struct Client {
    pub host: String,
    sock: PathBuf,
    pub traceparent: Option<String>,
}

pub fn empty_body() -> Body {
    Full::new(Bytes::new()).map_err(|never| match never {}).boxed()
}

pub fn json_body(v: &Value) -> Body {
    Full::new(Bytes::from(serde_json::to_vec(v).unwrap_or_default())).map_err(|never| match never {}).boxed()
}

/// A body of bytes already in memory (a small tar).
pub fn bytes_body(b: Vec<u8>) -> Body {
    Full::new(Bytes::from(b)).map_err(|never| match never {}).boxed()
}

/// A body streamed from a blocking reader (a file or stdin), reporting bytes sent.
pub fn reader_body(mut r: impl std::io::Read + Send + 'static, mut sent: impl FnMut(u64) + Send + 'static) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(8);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            match r.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    total += n as u64;
                    sent(total);
                    if tx.blocking_send(Ok(Frame::data(Bytes::copy_from_slice(&buf[..n])))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    BodyExt::boxed(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

impl Client {
    pub fn new(host: &str, traceparent: Option<String>) -> Result<Self> {
        let sock = match host.strip_prefix("unix://") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => bail!("invalid host {host:?}: want unix://PATH"),
        };
        Ok(Client { host: host.to_string(), sock, traceparent })
    }

    /// The daemon's socket on this host.
    pub fn socket(&self) -> &std::path::Path {
        &self.sock
    }

    /// The daemon address, as given (`unix://PATH`).
    pub fn host(&self) -> &str {
        &self.host
    }

    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<Body>> {
        let stream = tokio::net::UnixStream::connect(&self.sock)
            .await
            .map_err(|_| anyhow!("Cannot connect to the engine daemon at {}. Is engined running?", self.host))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(NoSigPipe(stream)))
            .await
            .context("talking to the daemon")?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    fn build(&self, method: Method, path: &str, body: Body, content_type: Option<&str>) -> Result<Request<Body>> {
        let mut b = Request::builder().method(method).uri(format!("/{API}{path}")).header("Host", "engine");
        if let Some(tp) = &self.traceparent {
            b = b.header("traceparent", tp);
        }
        if let Some(ct) = content_type {
            b = b.header("Content-Type", ct);
        }
        Ok(b.body(body)?)
    }

    /// Sends a request; a non-2xx answer becomes Docker's "Error response from daemon: …".
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body,
        content_type: Option<&str>,
    ) -> Result<Response<Incoming>> {
        let mut sender = self.connect().await?;
        let resp = sender
            .send_request(self.build(method, path, body, content_type)?)
            .await
            .context("talking to the daemon")?;
        check(resp).await
    }

    /// [`Client::send`] with extra headers (`X-Registry-Config` of a build).
    pub async fn send_with_headers<'h>(
        &self,
        method: Method,
        path: &str,
        body: Body,
        content_type: Option<&str>,
        headers: impl IntoIterator<Item = (&'static str, &'h str)>,
    ) -> Result<Response<Incoming>> {
        let mut sender = self.connect().await?;
        let mut req = self.build(method, path, body, content_type)?;
        for (name, value) in headers {
            req.headers_mut().insert(name, value.parse().with_context(|| format!("{name} is not a valid header"))?);
        }
        let resp = sender.send_request(req).await.context("talking to the daemon")?;
        check(resp).await
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        let r = self.send(Method::GET, path, empty_body(), None).await?;
        read_json(r).await
    }

    pub async fn post(&self, path: &str, body: Option<&Value>) -> Result<Response<Incoming>> {
        match body {
            Some(v) => self.send(Method::POST, path, json_body(v), Some("application/json")).await,
            None => self.send(Method::POST, path, empty_body(), None).await,
        }
    }

    /// A POST with Docker's `X-Registry-Auth` header (pull, push).
    pub async fn post_with_auth(&self, path: &str, auth: Option<&str>) -> Result<Response<Incoming>> {
        self.send_with_headers(Method::POST, path, empty_body(), None, auth.map(|a| ("X-Registry-Auth", a))).await
    }

    pub async fn delete(&self, path: &str) -> Result<Response<Incoming>> {
        self.send(Method::DELETE, path, empty_body(), None).await
    }

    /// A hijacked connection (attach, exec start): the request is written by hand and the
    /// headers of the answer read byte by byte, so nothing past them is consumed and the
    /// socket is the raw stream from then on.
    pub async fn hijack(&self, path: &str, body: Option<&Value>) -> Result<Upgraded> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = NoSigPipe(
            tokio::net::UnixStream::connect(&self.sock)
                .await
                .map_err(|_| anyhow!("Cannot connect to the engine daemon at {}. Is engined running?", self.host))?,
        );
        let body = body.map(serde_json::to_vec).transpose()?.unwrap_or_default();
        let mut head = format!("POST /{API}{path} HTTP/1.1\r\nHost: engine\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: {}\r\n", body.len());
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(tp) = &self.traceparent {
            head.push_str(&format!("traceparent: {tp}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.context("talking to the daemon")?;
        stream.write_all(&body).await.context("talking to the daemon")?;
        let mut headers = Vec::new();
        let mut byte = [0u8; 1];
        while !headers.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.context("reading the daemon's answer")? == 0 || headers.len() > 64 * 1024 {
                bail!("the daemon closed the connection for {path}");
            }
            headers.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&headers).into_owned();
        let status: u16 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if status == 101 || status == 200 {
            return Ok(stream);
        }
        // An error answer: its body is Content-Length bytes (the connection may stay open).
        let len: usize = text
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
            })
            .unwrap_or(0)
            .min(1 << 20);
        let mut rest = vec![0u8; len];
        let _ = stream.read_exact(&mut rest).await;
        let message = serde_json::from_slice::<Value>(&rest)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| format!("HTTP {status}"));
        Err(DaemonError { status, message }.into())
    }
}

async fn check(resp: Response<Incoming>) -> Result<Response<Incoming>> {
    if resp.status().is_success()
        || resp.status() == StatusCode::SWITCHING_PROTOCOLS
        || resp.status() == StatusCode::NOT_MODIFIED
    {
        return Ok(resp);
    }
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let msg = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_else(|| format!("{status}"));
    Err(DaemonError { status: status.as_u16(), message: msg }.into())
}

/// An error answer of the daemon.
#[derive(Debug)]
pub struct DaemonError {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Error response from daemon: {}", self.message)
    }
}

impl std::error::Error for DaemonError {}

pub async fn read_json(r: Response<Incoming>) -> Result<Value> {
    let bytes = r.into_body().collect().await.context("reading the daemon's answer")?.to_bytes();
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).context("the daemon's answer is not JSON")
}

/// Calls `f` with each chunk of a streamed body.
pub async fn for_each_chunk(r: Response<Incoming>, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let mut body = r.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.context("reading the daemon's answer")?.into_data() {
            f(&data)?;
        }
    }
    Ok(())
}

/// Calls `f` with each JSON value of a JSON-lines answer (pull, push, load, events) as it
/// arrives; lines that are not JSON are skipped.
pub async fn for_each_json_line(r: Response<Incoming>, mut f: impl FnMut(serde_json::Value)) -> Result<()> {
    let mut pending = Vec::new();
    for_each_chunk(r, |chunk| {
        pending.extend_from_slice(chunk);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            if let Ok(v) = serde_json::from_slice(&line) {
                f(v);
            }
        }
        Ok(())
    })
    .await
}

/// Splits Docker's multiplexed stream into (stream, payload) frames as bytes arrive.
#[derive(Default)]
pub struct Demux(Vec<u8>);

impl Demux {
    pub fn push(&mut self, data: &[u8], mut out: impl FnMut(u8, &[u8])) {
        self.0.extend_from_slice(data);
        loop {
            if self.0.len() < 8 {
                return;
            }
            let len = u32::from_be_bytes([self.0[4], self.0[5], self.0[6], self.0[7]]) as usize;
            if self.0.len() < 8 + len {
                return;
            }
            out(self.0[0], &self.0[8..8 + len]);
            self.0.drain(..8 + len);
        }
    }
}

/// A connection to engined, whose writes never raise SIGPIPE (`send` with `MSG_NOSIGNAL`):
/// the CLI keeps SIGPIPE's default for its output, but a daemon that answers an upload
/// before reading all of it (an error) and closes, or an attached container's stream that
/// ends while stdin is still being sent, must give an error to handle, not kill the CLI.
pub struct NoSigPipe(tokio::net::UnixStream);

impl tokio::io::AsyncRead for NoSigPipe {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for NoSigPipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::os::fd::AsRawFd;
        let stream = &self.get_mut().0;
        loop {
            std::task::ready!(stream.poll_write_ready(cx))?;
            let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
                nix::sys::socket::send(stream.as_raw_fd(), buf, nix::sys::socket::MsgFlags::MSG_NOSIGNAL)
                    .map_err(std::io::Error::from)
            });
            match sent {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return std::task::Poll::Ready(r),
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
