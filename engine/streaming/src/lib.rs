//! The streaming server of a CRI runtime: the CRI's `Exec`, `Attach` and `PortForward` calls
//! answer with a one-time URL ([`Server::url`]), and the client (the kubelet on kubectl's
//! behalf, crictl, critest) connects to it, upgrades the connection to SPDY/3.1 and speaks
//! Kubernetes' remotecommand or port-forward protocol on it, as with containerd's or the
//! kubelet's own streaming server.
//!
//! Owns: the URLs (a token per request, used once, gone after a minute), the HTTP upgrade and
//! protocol negotiation, SPDY sessions ([`spdy`]), and the two protocols
//! ([`remotecommand`], [`portforward`]). What a request does in a container is the
//! [`Runtime`]'s: this crate must never know containers, namespaces or the daemon; it serves
//! only loopback or whatever address its owner binds.

pub mod client;
pub mod portforward;
pub mod remotecommand;
pub mod spdy;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub use remotecommand::{Outcome, Wanted};

/// How long a URL can be used (the kubelet's).
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// URLs given out and not used yet, at most (the kubelet's).
pub const MAX_IN_FLIGHT: usize = 1000;

const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
const SPDY: &str = "SPDY/3.1";

/// A terminal's size, as the client's resize stream tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermSize {
    pub width: u16,
    pub height: u16,
}

/// A command's streams as the client opened them. Each output channel ends the client's
/// stream when dropped; sends fail once the client is gone (a runtime stops then).
pub struct Io {
    /// What the client types; the channel ends at its end of input.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    /// Absent with a terminal: all output is on stdout.
    pub stderr: Option<mpsc::Sender<Bytes>>,
    /// The terminal's sizes, with one.
    pub resize: Option<mpsc::Receiver<TermSize>>,
}

/// What the requests do in a container: implemented by the CRI runtime.
pub trait Runtime: Send + Sync + 'static {
    /// Runs `cmd` in the running container with the client's streams: its exit code once it
    /// ended and its output was sent (the output channels dropped), or why it could not run.
    fn exec(
        &self,
        container_id: String,
        cmd: Vec<String>,
        tty: bool,
        io: Io,
    ) -> impl Future<Output = Result<i32, String>> + Send;

    /// Connects the client's streams to the container's own process until it exits or the
    /// client goes.
    fn attach(&self, container_id: String, tty: bool, io: Io) -> impl Future<Output = Result<(), String>> + Send;

    /// A connection to `port` on the pod's loopback, inside its network namespace.
    fn port_forward(&self, sandbox_id: String, port: u16) -> impl Future<Output = Result<TcpStream, String>> + Send;
}

/// What a URL is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Exec { container_id: String, cmd: Vec<String>, wanted: Wanted },
    Attach { container_id: String, wanted: Wanted },
    PortForward { sandbox_id: String },
}

impl Request {
    fn path(&self) -> &'static str {
        match self {
            Request::Exec { .. } => "exec",
            Request::Attach { .. } => "attach",
            Request::PortForward { .. } => "portforward",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamingError {
    /// The request cannot be served as asked (the CRI's InvalidArgument).
    #[error("{0}")]
    Invalid(String),
    /// Too many URLs given out and not used yet (the CRI's ResourceExhausted).
    #[error("maximum number of in-flight streaming requests ({MAX_IN_FLIGHT}) exceeded")]
    TooMany,
    #[error("no random token: {0}")]
    Token(String),
}

/// The streaming server of one runtime.
pub struct Server<R> {
    base: String,
    pending: Mutex<HashMap<String, (Instant, Request)>>,
    runtime: Arc<R>,
}

impl<R: Runtime> Server<R> {
    /// Listens on `addr` (port 0 for any) and serves until the process ends.
    pub async fn bind(addr: SocketAddr, runtime: Arc<R>) -> std::io::Result<Arc<Server<R>>> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let server = Arc::new(Server { base: format!("http://{local}"), pending: Mutex::default(), runtime });
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else { continue };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.handle(req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(conn), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(server)
    }

    /// Where it listens: `http://<address>:<port>`.
    pub fn address(&self) -> &str {
        &self.base
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Request)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The one-time URL that serves `req`.
    pub fn url(&self, req: Request) -> Result<String, StreamingError> {
        let wanted = match &req {
            Request::Exec { cmd, wanted, .. } => {
                if cmd.is_empty() {
                    return Err(StreamingError::Invalid("cmd must not be empty".into()));
                }
                Some(wanted)
            }
            Request::Attach { wanted, .. } => Some(wanted),
            Request::PortForward { .. } => None,
        };
        if let Some(w) = wanted {
            if !(w.stdin || w.stdout || w.stderr) {
                return Err(StreamingError::Invalid("one of stdin, stdout, or stderr must be set".into()));
            }
            if w.tty && w.stderr {
                return Err(StreamingError::Invalid("tty and stderr cannot both be true".into()));
            }
        }
        let token = engine_util::id::new_id().map_err(|e| StreamingError::Token(e.to_string()))?[..32].to_string();
        let path = req.path();
        let mut pending = self.pending();
        let now = Instant::now();
        pending.retain(|_, (at, _)| now.duration_since(*at) < TOKEN_TTL);
        if pending.len() >= MAX_IN_FLIGHT {
            return Err(StreamingError::TooMany);
        }
        pending.insert(token.clone(), (now, req));
        Ok(format!("{}/{path}/{token}", self.base))
    }

    /// The request of `token`, once: a token is gone after its first use or its minute.
    fn take(&self, token: &str) -> Option<Request> {
        let (at, req) = self.pending().remove(token)?;
        (at.elapsed() < TOKEN_TTL).then_some(req)
    }

    fn handle(self: Arc<Self>, mut req: hyper::Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().trim_start_matches('/');
        let Some((kind, token)) = path.split_once('/') else { return answer(StatusCode::NOT_FOUND, "not found") };
        let Some(request) = self.take(token) else {
            return answer(StatusCode::NOT_FOUND, "the streaming URL is unknown, used or expired");
        };
        if request.path() != kind {
            return answer(StatusCode::NOT_FOUND, "the streaming URL is for another request");
        }
        let upgrade = req.headers().get(UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !upgrade.eq_ignore_ascii_case(SPDY) {
            return answer(
                StatusCode::BAD_REQUEST,
                "unable to upgrade: this streaming server speaks SPDY/3.1 (Upgrade: SPDY/3.1)",
            );
        }
        let offered: Vec<String> = req
            .headers()
            .get_all(PROTOCOL_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
            .filter(|p| !p.is_empty())
            .collect();
        let supported: &[&str] = match request {
            Request::PortForward { .. } => &[portforward::PROTOCOL],
            _ => &remotecommand::PROTOCOLS,
        };
        let chosen = offered.iter().find(|p| supported.contains(&p.as_str())).cloned();
        let protocol = match (chosen, &request) {
            (Some(p), _) => p,
            // a port-forward client too old to name its protocol speaks the only one there is
            (None, Request::PortForward { .. }) if offered.is_empty() => portforward::PROTOCOL.to_string(),
            (None, _) => {
                return answer(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {supported:?}"
                    ),
                )
            }
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let runtime = self.runtime.clone();
        let chosen = protocol.clone();
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else { return };
            let (session, incoming) = spdy::Session::serve(TokioIo::new(upgraded));
            match request {
                Request::Exec { container_id, cmd, wanted } => {
                    remotecommand::serve(session, incoming, &chosen, wanted, |io| async move {
                        match runtime.exec(container_id, cmd, wanted.tty, io).await {
                            Ok(code) => Outcome::Exited(code),
                            Err(e) => Outcome::Failed(e),
                        }
                    })
                    .await
                }
                Request::Attach { container_id, wanted } => {
                    remotecommand::serve(session, incoming, &chosen, wanted, |io| async move {
                        match runtime.attach(container_id, wanted.tty, io).await {
                            Ok(()) => Outcome::Exited(0),
                            Err(e) => Outcome::Failed(e),
                        }
                    })
                    .await
                }
                Request::PortForward { sandbox_id } => {
                    let connect = move |port: u16| {
                        let (runtime, sandbox_id) = (runtime.clone(), sandbox_id.clone());
                        async move { runtime.port_forward(sandbox_id, port).await }
                    };
                    portforward::serve(session, incoming, connect).await
                }
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        r.headers_mut().insert(UPGRADE, HeaderValue::from_static(SPDY));
        if let Ok(v) = HeaderValue::from_str(&protocol) {
            r.headers_mut().insert(PROTOCOL_HEADER, v);
        }
        r
    }
}

fn answer(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests;
