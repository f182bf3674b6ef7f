//! The embedded DNS server of a container on user networks, at 127.0.0.11:53 inside its
//! network namespace as Docker's: the names of its networks' containers (name, aliases, short
//! id, `<name>.<network>`; several containers with one alias answer in turn), PTR for their
//! addresses, and every other name forwarded to the upstream resolvers.
//!
//! The server's sockets are made in the container's namespace (a thread enters it, binds UDP
//! and TCP at 127.0.0.11:53 and leaves) and served from engined's runtime: no firewall rule, no
//! process in the container, and nothing left when engined dies (the sockets die with it; the
//! next engined binds again for the containers still running). Upstreams are asked from
//! engined's own namespace, so a resolver on the host's loopback works, as Docker 26's
//! host-loopback forwarding does.
//!
//! Names are read from the network records at each query, so a container started, stopped,
//! connected or disconnected a moment ago answers (or stops answering) at once.
//!
//! Must never answer a name of a network the asking container is not on, never forward a
//! query of a container whose networks are all `--internal`, and never send anything but the
//! container's own queries, to the upstreams it was given.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use crate::Networks;

/// Where a container finds its DNS server, as Docker's.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
/// The time to live of the answers about containers (Docker's is 600 s; containers come and
/// go, so resolvers that cache should ask again soon).
const TTL: u32 = 600;
/// Queries and TCP connections one container's server works on at once; more are dropped (a
/// client retries), so a container cannot make engined hold unbounded work.
const MAX_IN_FLIGHT: usize = 256;
/// How long an upstream has to answer before the next one is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// One query answered, for the observer (metrics, spans).
#[derive(Clone, Debug)]
pub struct Answered {
    pub container: String,
    /// The network the name was found on, else the container's first user network.
    pub network: String,
    pub name: String,
    /// `A`, `AAAA`, `PTR`, …
    pub qtype: String,
    /// NOERROR, NXDOMAIN, SERVFAIL, REFUSED, … or TIMEOUT when no upstream answered in time.
    pub result: String,
    pub answers: usize,
    /// The upstream that answered (or was last tried); `None` when answered from the networks.
    pub upstream: Option<SocketAddr>,
    /// `udp` or `tcp`.
    pub transport: &'static str,
    pub start_unix_nanos: u64,
    pub duration: Duration,
}

/// Told of every query a server answers.
pub trait Observer: Send + Sync {
    fn answered(&self, a: &Answered);
}

/// What a container's server answers from.
pub struct Scope {
    pub container: String,
    /// Its `--link` aliases: alias → the linked container's id (answered with its addresses on
    /// the networks both are on).
    pub links: std::collections::BTreeMap<String, String>,
    pub networks: Arc<Networks>,
    /// The resolvers other names go to, in order (port 53 unless given).
    pub upstreams: Vec<SocketAddr>,
    pub observer: Arc<dyn Observer>,
}

/// A running server; dropping it stops it and closes its sockets.
pub struct Server {
    task: tokio::task::JoinHandle<()>,
    resolver: Arc<Resolver>,
}

impl Server {
    /// The container's links now (alias → container), as a connect or disconnect left them:
    /// answered from the next query on.
    pub fn set_links(&self, links: std::collections::BTreeMap<String, String>) {
        *self.resolver.links.write().unwrap_or_else(|e| e.into_inner()) = links;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds UDP and TCP at 127.0.0.11:53 in the network namespace `ns` (its loopback up).
pub fn bind_in(ns: &File) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    crate::netns::run_in(ns, || {
        let udp = std::net::UdpSocket::bind((ADDRESS, 53))?;
        let tcp = std::net::TcpListener::bind((ADDRESS, 53))?;
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        Ok((udp, tcp))
    })
}

/// Serves `scope` on sockets of [`bind_in`], on the current tokio runtime.
pub fn serve(scope: Scope, sockets: (std::net::UdpSocket, std::net::TcpListener)) -> io::Result<Server> {
    let udp = UdpSocket::from_std(sockets.0)?;
    let tcp = TcpListener::from_std(sockets.1)?;
    let mut scope = scope;
    let links = std::sync::RwLock::new(std::mem::take(&mut scope.links));
    let resolver = Arc::new(Resolver { scope, links, turn: AtomicUsize::new(0) });
    Ok(Server { task: tokio::spawn(run(resolver.clone(), udp, tcp)), resolver })
}

async fn run(r: Arc<Resolver>, udp: UdpSocket, tcp: TcpListener) {
    let udp = Arc::new(udp);
    // the work of each query and connection: dropped (aborted) with this task
    let mut work = JoinSet::new();
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            got = udp.recv_from(&mut buf) => {
                let Ok((n, peer)) = got else { continue };
                if work.len() >= MAX_IN_FLIGHT {
                    continue;
                }
                let (r, udp, q) = (r.clone(), udp.clone(), buf[..n].to_vec());
                work.spawn(async move {
                    if let Some(resp) = r.answer(&q, "udp").await {
                        let _ = udp.send_to(&resp, peer).await;
                    }
                });
            }
            got = tcp.accept() => {
                match got {
                    Ok((conn, _)) if work.len() < MAX_IN_FLIGHT => { work.spawn(serve_tcp(r.clone(), conn)); }
                    Ok(_) => {}
                    // out of descriptors: give the ones in use a moment to close
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            Some(_) = work.join_next(), if !work.is_empty() => {}
        }
    }
}

/// Queries over one TCP connection, each a 2-byte length and a message (RFC 1035 4.2.2).
async fn serve_tcp(r: Arc<Resolver>, mut conn: TcpStream) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, conn.read_u16()).await else { return };
        let mut q = vec![0u8; len as usize];
        if !matches!(tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut q)).await, Ok(Ok(_))) {
            return;
        }
        let Some(resp) = r.answer(&q, "tcp").await else { return };
        let Ok(n) = u16::try_from(resp.len()) else { return };
        let mut out = Vec::with_capacity(resp.len() + 2);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&resp);
        if conn.write_all(&out).await.is_err() {
            return;
        }
    }
}

struct Resolver {
    scope: Scope,
    /// The scope's links, as they change while the server runs.
    links: std::sync::RwLock<std::collections::BTreeMap<String, String>>,
    /// Rotates the order of a name's addresses, so clients that take the first go round.
    turn: AtomicUsize,
}

/// What the networks know of a question.
enum Local {
    /// The name is a container's (or the address one's): the answer's records.
    Known { network: String, records: Vec<Record> },
    /// Not a name of the container's networks.
    Unknown,
}

impl Resolver {
    /// The response to one message, or `None` for something that is not a DNS query at all.
    async fn answer(&self, q: &[u8], transport: &'static str) -> Option<Vec<u8>> {
        let (t0, started) = (now_unix_nanos(), Instant::now());
        let msg = match Message::from_vec(q) {
            Ok(m) => m,
            Err(_) if q.len() >= 12 => {
                let id = u16::from_be_bytes([q[0], q[1]]);
                return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr).to_vec().ok();
            }
            Err(_) => return None,
        };
        if msg.message_type() != MessageType::Query {
            return None;
        }
        let (scope_networks, forward) = self.scope.networks.dns_scope(&self.scope.container).unwrap_or_default();
        let mut seen = Answered {
            container: self.scope.container.clone(),
            network: scope_networks.first().cloned().unwrap_or_default(),
            name: String::new(),
            qtype: String::new(),
            result: String::new(),
            answers: 0,
            upstream: None,
            transport,
            start_unix_nanos: t0,
            duration: Duration::ZERO,
        };
        let resp = if msg.op_code() != OpCode::Query || msg.queries().len() != 1 {
            seen.result = "NOTIMP".into();
            Message::error_msg(msg.id(), msg.op_code(), ResponseCode::NotImp).to_vec().ok()
        } else {
            let query = &msg.queries()[0];
            seen.name = query.name().to_ascii().trim_end_matches('.').to_string();
            seen.qtype = query.query_type().to_string();
            match self.local(query.name(), query.query_type()) {
                Local::Known { network, records } => {
                    let mut resp = reply(&msg, ResponseCode::NoError);
                    seen.answers = records.len();
                    for rec in records {
                        resp.add_answer(rec);
                    }
                    seen.network = network;
                    seen.result = "NOERROR".into();
                    fit(&msg, &resp, transport)
                }
                Local::Unknown if !forward || self.scope.upstreams.is_empty() => {
                    // Docker's answer where nothing may be asked outside
                    seen.result = "REFUSED".into();
                    reply(&msg, ResponseCode::Refused).to_vec().ok()
                }
                Local::Unknown => {
                    let (resp, upstream, timed_out) = self.forward(q, transport).await;
                    seen.upstream = upstream;
                    match resp.as_deref().map(Message::from_vec) {
                        Some(Ok(m)) => {
                            seen.result = rcode_name(m.response_code());
                            seen.answers = m.answers().len();
                            resp
                        }
                        _ => {
                            seen.result = if timed_out { "TIMEOUT" } else { "SERVFAIL" }.into();
                            reply(&msg, ResponseCode::ServFail).to_vec().ok()
                        }
                    }
                }
            }
        };
        seen.duration = started.elapsed();
        self.scope.observer.answered(&seen);
        resp
    }

    fn local(&self, name: &Name, qtype: RecordType) -> Local {
        let nets = &self.scope.networks;
        let container = &self.scope.container;
        if qtype == RecordType::PTR {
            let whole = |n: &ipnet::IpNet| n.prefix_len() == n.max_prefix_len();
            let Some(ip) = name.parse_arpa_name().ok().filter(whole).map(|n| n.addr()) else { return Local::Unknown };
            return match nets.reverse(container, ip) {
                Some((target, network)) => {
                    let target = Name::from_ascii(format!("{target}.")).ok();
                    let records = target
                        .map(|t| vec![Record::from_rdata(name.clone(), TTL, RData::PTR(PTR(t)))])
                        .unwrap_or_default();
                    Local::Known { network, records }
                }
                None => Local::Unknown,
            };
        }
        let ascii = name.to_ascii();
        let bare = ascii.trim_end_matches('.').to_ascii_lowercase();
        let target = self.links.read().unwrap_or_else(|e| e.into_inner()).get(&bare).cloned();
        let by_link = target.and_then(|target| nets.shared_addresses(container, &target));
        let Some((network, ips)) = by_link.or_else(|| nets.resolve(container, &ascii)) else { return Local::Unknown };
        // the addresses of the family asked for; none (not an error) for another type, or for
        // AAAA on a network without IPv6
        let mut records: Vec<Record> = ips
            .into_iter()
            .filter_map(|ip| match (ip, qtype) {
                (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(v4))),
                (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(v6))),
                _ => None,
            })
            .map(|rdata| Record::from_rdata(name.clone(), TTL, rdata))
            .collect();
        let n = records.len();
        records.rotate_left(self.turn.fetch_add(1, Ordering::Relaxed) % n.max(1));
        Local::Known { network, records }
    }

    /// Asks the upstreams in order, over the transport the query came on: the first answer,
    /// the upstream last asked, and whether the last one timed out.
    async fn forward(&self, q: &[u8], transport: &str) -> (Option<Vec<u8>>, Option<SocketAddr>, bool) {
        let mut last = (None, false);
        for up in &self.scope.upstreams {
            let asked = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
                if transport == "tcp" {
                    ask_tcp(*up, q).await
                } else {
                    ask_udp(*up, q).await
                }
            })
            .await;
            match asked {
                Ok(Ok(resp)) => return (Some(resp), Some(*up), false),
                Ok(Err(_)) => last = (Some(*up), false),
                Err(_) => last = (Some(*up), true),
            }
        }
        (None, last.0, last.1)
    }
}

/// The mnemonic of a response code, as dig prints it (NOERROR, NXDOMAIN, …).
fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

fn now_unix_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A local answer to `msg` as sent: over UDP, one larger than the client takes (512 bytes, or
/// its EDNS size) goes without its records and truncated, for the client to ask over TCP.
fn fit(msg: &Message, resp: &Message, transport: &str) -> Option<Vec<u8>> {
    let bytes = resp.to_vec().ok()?;
    let limit = msg.extensions().as_ref().map_or(512, |e| e.max_payload().max(512));
    if transport == "udp" && bytes.len() > usize::from(limit) {
        return reply(msg, resp.response_code()).set_truncated(true).to_vec().ok();
    }
    Some(bytes)
}

/// A response to `msg` with its id, question and flags.
fn reply(msg: &Message, code: ResponseCode) -> Message {
    let mut resp = Message::new();
    resp.set_id(msg.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(msg.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    for q in msg.queries() {
        resp.add_query(q.clone());
    }
    resp
}

async fn ask_udp(up: SocketAddr, q: &[u8]) -> io::Result<Vec<u8>> {
    let local: SocketAddr =
        if up.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { "[::]:0".parse().map_err(io::Error::other)? };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(up).await?;
    sock.send(q).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // only the answer to this query (same id) counts
        if n >= 2 && q.len() >= 2 && buf[..2] == q[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn ask_tcp(up: SocketAddr, q: &[u8]) -> io::Result<Vec<u8>> {
    let mut conn = TcpStream::connect(up).await?;
    let len = u16::try_from(q.len()).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(q.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(q);
    conn.write_all(&out).await?;
    let n = conn.read_u16().await?;
    let mut resp = vec![0u8; n as usize];
    conn.read_exact(&mut resp).await?;
    Ok(resp)
}

/// The upstreams for a container: `--dns` given to it, else the daemon's, else the host's
/// resolv.conf nameservers but loopback ones that are its own stub (127.0.0.53, 127.0.0.11):
/// each `IP` or `IP:PORT`, port 53 by default. Unparsable ones are skipped.
pub fn upstreams(given: &[String], host_resolv_conf: &str) -> Vec<SocketAddr> {
    let parse = |s: &str| -> Option<SocketAddr> {
        s.parse::<SocketAddr>().ok().or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
    };
    if !given.is_empty() {
        return given.iter().filter_map(|s| parse(s)).filter(|a| a.ip() != IpAddr::V4(ADDRESS)).collect();
    }
    host_resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| parse(a.trim()))
        .filter(|a| ![IpAddr::V4(ADDRESS), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53))].contains(&a.ip()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_are_the_given_ones_else_the_hosts() {
        let host = "search lan\nnameserver 127.0.0.53\nnameserver 10.1.1.1\nnameserver ::1\n";
        assert_eq!(
            upstreams(&[], host),
            vec!["10.1.1.1:53".parse::<SocketAddr>().unwrap(), "[::1]:53".parse().unwrap()]
        );
        assert_eq!(
            upstreams(&["127.9.0.1".into(), "127.9.0.2:5353".into(), "bogus".into(), "127.0.0.11".into()], host),
            vec!["127.9.0.1:53".parse::<SocketAddr>().unwrap(), "127.9.0.2:5353".parse().unwrap()]
        );
    }

    #[test]
    fn results_are_named_as_dig_names_them() {
        assert_eq!(rcode_name(ResponseCode::NXDomain), "NXDOMAIN");
        assert_eq!(rcode_name(ResponseCode::NoError), "NOERROR");
        assert_eq!(rcode_name(ResponseCode::BADCOOKIE), "RCODE23");
    }

    #[test]
    fn a_local_answer_too_big_for_udp_is_truncated() {
        let mut q = Message::new();
        q.set_id(9);
        let name = Name::from_ascii("pool.").unwrap();
        q.add_query(hickory_proto::op::Query::query(name.clone(), RecordType::A));
        let mut resp = reply(&q, ResponseCode::NoError);
        for i in 0..60u8 {
            resp.add_answer(Record::from_rdata(name.clone(), TTL, RData::A(A(Ipv4Addr::new(10, 0, 0, i)))));
        }
        let over_udp = Message::from_vec(&fit(&q, &resp, "udp").unwrap()).unwrap();
        assert!(over_udp.truncated() && over_udp.answers().is_empty() && over_udp.id() == 9);
        let over_tcp = Message::from_vec(&fit(&q, &resp, "tcp").unwrap()).unwrap();
        assert_eq!((over_tcp.truncated(), over_tcp.answers().len()), (false, 60));
        // a client that takes more (EDNS) gets it whole over UDP
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(4096);
        q.set_edns(edns);
        assert_eq!(Message::from_vec(&fit(&q, &resp, "udp").unwrap()).unwrap().answers().len(), 60);
    }

    #[test]
    fn a_reply_keeps_the_id_and_question() {
        let mut q = Message::new();
        q.set_id(4242).set_recursion_desired(true);
        q.add_query(hickory_proto::op::Query::query(Name::from_ascii("web.").unwrap(), RecordType::A));
        let r = reply(&q, ResponseCode::NXDomain);
        let back = Message::from_vec(&r.to_vec().unwrap()).unwrap();
        assert_eq!(back.id(), 4242);
        assert_eq!(back.message_type(), MessageType::Response);
        assert_eq!(back.response_code(), ResponseCode::NXDomain);
        assert_eq!(back.queries()[0].name().to_ascii(), "web.");
        assert!(back.recursion_available());
    }
}
