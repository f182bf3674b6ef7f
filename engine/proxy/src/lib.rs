//! engine-proxy: the userland forwarder of one published port, as docker-proxy. engined
//! starts one per published port; it binds the host address, answers on fd 3 (`0 <port>` once
//! bound, `1 <error>` if not), then forwards TCP connections or UDP datagrams to the container
//! until SIGTERM. Its counters (connections, bytes each way) go to a small file engined reads
//! for its metrics.
//!
//! Must stay small and must never reach any address but the container's it was given.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

#[derive(Parser, Debug)]
#[command(name = "engine-proxy", about = "Forwards a host port to a container port")]
pub struct Args {
    /// tcp or udp.
    #[arg(long, default_value = "tcp")]
    pub proto: String,
    #[arg(long, default_value = "0.0.0.0")]
    pub host_ip: IpAddr,
    /// 0: any free port (the one bound is reported on fd 3).
    #[arg(long)]
    pub host_port: u16,
    #[arg(long)]
    pub container_ip: IpAddr,
    #[arg(long)]
    pub container_port: u16,
    /// Where to keep the counters.
    #[arg(long)]
    pub stats: Option<PathBuf>,
}

/// How long a UDP flow lives without traffic (Docker's proxy keeps 90 s, as conntrack).
const UDP_IDLE: Duration = Duration::from_secs(90);

#[derive(Default)]
pub struct Counters {
    pub connections_total: AtomicU64,
    pub connections_active: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    changes: AtomicU64,
}

impl Counters {
    fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "{} {} {} {}\n",
            g(&self.connections_total),
            g(&self.connections_active),
            g(&self.bytes_in),
            g(&self.bytes_out)
        )
    }
    fn touch(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
    }
}

/// fd 3, where engined waits for the answer, if we were given one.
fn status_pipe() -> Option<std::fs::File> {
    // SAFETY: fcntl on a descriptor number only asks whether it is open.
    if unsafe { libc::fcntl(3, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: fd 3 is open and was handed to this process for this answer only; we own it now.
    Some(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(3) })
}

fn answer(pipe: Option<std::fs::File>, line: &str) {
    match pipe {
        Some(mut f) => {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
        None => eprintln!("{line}"),
    }
}

pub fn main() -> i32 {
    let pipe = status_pipe();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            answer(pipe, &format!("1 {}", e.to_string().lines().next().unwrap_or("bad arguments")));
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            answer(pipe, &format!("1 {e}"));
            return 1;
        }
    };
    rt.block_on(run(args, pipe))
}

/// The addresses to try to bind, in order: a port published on every IPv4 address
/// (`0.0.0.0`) is bound on `[::]` first, one socket for both families (as dockerd publishes on
/// `0.0.0.0` and `[::]`), and on `0.0.0.0` where the host has no IPv6.
fn bind_addresses(host_ip: IpAddr, port: u16) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    if host_ip == IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED) {
        out.push(SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port));
    }
    out.push(SocketAddr::new(host_ip, port));
    out
}

/// The answer of a bound socket: `0 <port> <address>`.
fn bound(local: std::io::Result<SocketAddr>, asked: u16) -> String {
    match local {
        Ok(a) => format!("0 {} {}", a.port(), a.ip()),
        Err(_) => format!("0 {asked}"),
    }
}

async fn run(args: Args, pipe: Option<std::fs::File>) -> i32 {
    let counters = Arc::new(Counters::default());
    let host = bind_addresses(args.host_ip, args.host_port);
    let upstream = SocketAddr::new(args.container_ip, args.container_port);
    let served = match args.proto.as_str() {
        "tcp" => match TcpListener::bind(&host[..]).await {
            Ok(l) => {
                answer(pipe, &bound(l.local_addr(), args.host_port));
                tokio::spawn(serve_tcp(l, upstream, counters.clone()))
            }
            Err(e) => {
                answer(pipe, &format!("1 {}", bind_error(&e)));
                return 1;
            }
        },
        "udp" => match UdpSocket::bind(&host[..]).await {
            Ok(s) => {
                answer(pipe, &bound(s.local_addr(), args.host_port));
                tokio::spawn(serve_udp(Arc::new(s), upstream, counters.clone()))
            }
            Err(e) => {
                answer(pipe, &format!("1 {}", bind_error(&e)));
                return 1;
            }
        },
        p => {
            answer(pipe, &format!("1 unsupported protocol {p}"));
            return 2;
        }
    };
    if let Some(path) = args.stats.clone() {
        tokio::spawn(write_stats(path, counters.clone()));
    }
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return 1,
    };
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    tokio::select! {
        _ = term.recv() => {}
        _ = async { match int.as_mut() { Some(i) => { i.recv().await; } None => std::future::pending().await } } => {}
        _ = served => {}
    }
    0
}

fn bind_error(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        "address already in use".into()
    } else {
        e.to_string()
    }
}

/// The counters file, rewritten (whole, by rename) at most once a second when they changed.
async fn write_stats(path: PathBuf, c: Arc<Counters>) {
    let tmp = path.with_extension("tmp");
    let mut seen = u64::MAX;
    loop {
        let now = c.changes.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            if std::fs::write(&tmp, c.render()).and_then(|_| std::fs::rename(&tmp, &path)).is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn serve_tcp(l: TcpListener, upstream: SocketAddr, c: Arc<Counters>) {
    loop {
        let Ok((mut client, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await; // out of descriptors: let some close
            continue;
        };
        let c = c.clone();
        tokio::spawn(async move {
            let Ok(mut backend) = TcpStream::connect(upstream).await else { return };
            let _ = client.set_nodelay(true);
            let _ = backend.set_nodelay(true);
            c.connections_total.fetch_add(1, Ordering::Relaxed);
            c.connections_active.fetch_add(1, Ordering::Relaxed);
            c.touch();
            let (cr, cw) = client.split();
            let (br, bw) = backend.split();
            // bytes are counted as they pass (a long connection shows its traffic before it ends)
            let _ = tokio::join!(pump(cr, bw, &c.bytes_in, &c), pump(br, cw, &c.bytes_out, &c));
            c.connections_active.fetch_sub(1, Ordering::Relaxed);
            c.touch();
        });
    }
}

/// Copies one direction until EOF or an error, counting into `bytes`; then shuts the other
/// side's write half, so a half-close passes through.
async fn pump<R: tokio::io::AsyncRead + Unpin, W: tokio::io::AsyncWrite + Unpin>(
    mut from: R,
    mut to: W,
    bytes: &AtomicU64,
    c: &Counters,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                bytes.fetch_add(n as u64, Ordering::Relaxed);
                c.touch();
            }
        }
    }
    let _ = to.shutdown().await;
}

/// UDP flows held at most: a new client past this is dropped until one goes idle (spoofed
/// sources must not exhaust the proxy's descriptors).
const MAX_UDP_FLOWS: usize = 4096;

/// Each client address gets its own socket towards the container (so replies find their way
/// back); a flow idle for [`UDP_IDLE`] is closed.
async fn serve_udp(front: Arc<UdpSocket>, upstream: SocketAddr, c: Arc<Counters>) {
    let flows: Arc<tokio::sync::Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Default::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = front.recv_from(&mut buf).await else { continue };
        let existing = flows.lock().await.get(&from).cloned();
        let back = match existing {
            Some(b) => b,
            None if flows.lock().await.len() >= MAX_UDP_FLOWS => continue,
            None => {
                let local = if upstream.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                let Ok(b) = UdpSocket::bind(local).await else { continue };
                if b.connect(upstream).await.is_err() {
                    continue;
                }
                let b = Arc::new(b);
                flows.lock().await.insert(from, b.clone());
                c.connections_total.fetch_add(1, Ordering::Relaxed);
                c.connections_active.fetch_add(1, Ordering::Relaxed);
                c.touch();
                let (front, flows, c, b2) = (front.clone(), flows.clone(), c.clone(), b.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, b2.recv(&mut buf)).await {
                        if front.send_to(&buf[..n], from).await.is_ok() {
                            c.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                            c.touch();
                        }
                    }
                    flows.lock().await.remove(&from);
                    c.connections_active.fetch_sub(1, Ordering::Relaxed);
                    c.touch();
                });
                b
            }
        };
        if back.send(&buf[..n]).await.is_ok() {
            c.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            c.touch();
        }
    }
}
