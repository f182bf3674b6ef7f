//! What the CRI's streaming URLs do in engined (the [`engine_streaming::Runtime`] of the CRI
//! service): a streamed exec runs through the exec service, an attach follows the container's
//! output from lifecycled and writes to its stdin, a port-forward connects to the port on the
//! pod's loopback from inside the sandbox's network namespace.

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use engine_api::v1::{LogsRequest, ResizePtyRequest, WriteRequest};
use engine_streaming::Io;
use tokio::net::TcpStream;

use crate::exec::ExecService;
use crate::lifecycle::{task, Lifecycle};
use crate::podlabels::KIND_LABEL;
use crate::records::{ContainerStore, Entry};

/// How long a port-forward's connection in the pod may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// It takes the container store (to find a container and its state), the exec service and
/// lifecycled (for a container's output and input); nothing else of engined.
pub struct CriStreams {
    containers: Arc<ContainerStore>,
    execs: Arc<ExecService>,
    lifecycle: Lifecycle,
}

impl CriStreams {
    pub fn new(containers: Arc<ContainerStore>, execs: Arc<ExecService>, lifecycle: Lifecycle) -> CriStreams {
        CriStreams { containers, execs, lifecycle }
    }

    /// The running CRI object `id` of `kind` (`container` or `sandbox`).
    fn running(&self, id: &str, kind: &str) -> Result<Arc<Entry>, String> {
        let e = self.containers.find(id).map_err(|_| format!("{kind} {id:?} not found"))?;
        let rec = e.snapshot();
        if rec.config.labels.as_ref().and_then(|l| l.get(KIND_LABEL)).is_none_or(|k| k != kind) {
            return Err(format!("{kind} {id:?} not found"));
        }
        if !rec.state.running() {
            return Err(format!("{kind} {id:?} is not running"));
        }
        Ok(e)
    }
}

impl engine_streaming::Runtime for CriStreams {
    async fn exec(&self, container_id: String, cmd: Vec<String>, tty: bool, io: Io) -> Result<i32, String> {
        let e = self.running(&container_id, "container")?;
        self.execs.run_streamed(&e, "criexec", cmd, tty, io).await.map_err(|e| e.to_string())
    }

    async fn attach(&self, container_id: String, tty: bool, mut io: Io) -> Result<(), String> {
        let e = self.running(&container_id, "container")?;
        let rec = e.snapshot();
        let lifecycle = &self.lifecycle;
        let from = SystemTime::now().duration_since(UNIX_EPOCH).map(|t| t.as_nanos() as i64).unwrap_or(0);
        let req = LogsRequest { container_id: rec.id.clone(), follow: true, tail: 0 };
        let mut output = lifecycle.logs(req).await.map_err(|s| s.message().to_string())?;
        let (stdout, stderr, sizes, stdin) = (io.stdout.take(), io.stderr.take(), io.resize.as_mut(), io.stdin.take());
        // output from the attach on, until the container exits or the client goes
        let out = async {
            while let Ok(Some(entry)) = output.message().await {
                if entry.time_unix_nanos < from || entry.line.is_empty() {
                    continue;
                }
                let to = if entry.stream == "stderr" && !tty { stderr.as_ref() } else { stdout.as_ref() };
                if let Some(to) = to {
                    if to.send(Bytes::from(entry.line)).await.is_err() {
                        return;
                    }
                }
            }
        };
        let input = async {
            if let Some(mut stdin) = stdin {
                while let Some(data) = stdin.recv().await {
                    let w = WriteRequest { container_id: rec.id.clone(), data: data.to_vec(), exec_id: String::new() };
                    let _ = lifecycle.write(w).await;
                }
                // the client's end of input is the container's only if it takes stdin once
                if rec.config.stdin_once {
                    let _ = lifecycle.close_io(task(&rec.id)).await;
                }
            }
            std::future::pending::<()>().await
        };
        let resize = async {
            if let Some(sizes) = sizes {
                while let Some(s) = sizes.recv().await {
                    let r = ResizePtyRequest {
                        container_id: rec.id.clone(),
                        width: u32::from(s.width),
                        height: u32::from(s.height),
                        exec_id: String::new(),
                    };
                    let _ = lifecycle.resize_pty(r).await;
                }
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = out => {}
            _ = input => {}
            _ = resize => {}
        }
        Ok(())
    }

    async fn port_forward(&self, sandbox_id: String, port: u16) -> Result<TcpStream, String> {
        let e = self.running(&sandbox_id, "sandbox")?;
        let pid = e.snapshot().state.pid();
        let ns = File::open(format!("/proc/{pid}/ns/net")).map_err(|e| format!("the pod's network namespace: {e}"))?;
        let conn = tokio::task::spawn_blocking(move || {
            engine_network::netns::run_in(&ns, || {
                let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
                let c = std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT)
                    .or_else(|e4| std::net::TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| e4))?;
                c.set_nonblocking(true)?;
                Ok(c)
            })
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        TcpStream::from_std(conn).map_err(|e| e.to_string())
    }
}
