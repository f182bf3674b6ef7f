//! Published ports: `-p [ip:][hostPort:]containerPort[/tcp|udp]` as Docker's API carries them,
//! and the engine-proxy process that serves each one (as docker-proxy does): engined spawns
//! it, it binds the host port and says so on fd 3 (`0 <port>` or `1 <error>`), then forwards
//! to the container until it is told to stop. Its counters are in a small file engined reads.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("invalid port specification {0:?}")]
    Invalid(String),
    #[error("starting engine-proxy: {0}")]
    Spawn(std::io::Error),
    #[error("driver failed programming external connectivity on endpoint {container}: Bind for {addr}: {reason}")]
    Bind { container: String, addr: String, reason: String },
}

/// How long engine-proxy may take to say whether it bound its port, in milliseconds.
const ANSWER_TIMEOUT_MS: u16 = 10_000;

/// A port to publish: where on the host, to which container port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Published {
    pub container_port: u16,
    /// tcp or udp.
    pub proto: String,
    pub host_ip: IpAddr,
    /// 0: any free port.
    pub host_port: u16,
}

/// A running proxy of a published port (kept in the container's record).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proxy {
    pub port: Published,
    pub pid: u32,
    pub stats: PathBuf,
    /// A port published on `0.0.0.0` that the proxy bound on `[::]`, for both families.
    #[serde(default)]
    pub dual_stack: bool,
}

/// `80/tcp` → (80, "tcp"); the protocol defaults to tcp.
pub fn parse_port_proto(s: &str) -> Result<(u16, String), PortError> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp") {
        return Err(PortError::Invalid(s.to_string()));
    }
    let port: u16 = port.parse().map_err(|_| PortError::Invalid(s.to_string()))?;
    if port == 0 {
        return Err(PortError::Invalid(s.to_string()));
    }
    Ok((port, proto))
}

/// One binding of Docker's `PortBindings` (`"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]`).
/// A host port range (`8000-8010`) takes its first port.
pub fn binding(key: &str, host_ip: &str, host_port: &str) -> Result<Published, PortError> {
    let (container_port, proto) = parse_port_proto(key)?;
    let host_ip: IpAddr = if host_ip.is_empty() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        host_ip
            .trim_matches(['[', ']'])
            .parse()
            .map_err(|_| PortError::Invalid(format!("{host_ip}:{host_port}:{key}")))?
    };
    let first = host_port.split('-').next().unwrap_or("");
    let host_port = if first.is_empty() {
        0
    } else {
        first.parse().map_err(|_| PortError::Invalid(format!("{host_port}:{key}")))?
    };
    Ok(Published { container_port, proto, host_ip, host_port })
}

/// Starts engine-proxy for `port` towards `container_ip`, and waits until it has bound the
/// host port (the port it got, when any was asked for) or failed to.
pub fn spawn(
    bin: &Path,
    container: &str,
    port: &Published,
    container_ip: Ipv4Addr,
    stats: &Path,
) -> Result<Proxy, PortError> {
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| PortError::Spawn(e.into()))?;
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("--proto")
        .arg(&port.proto)
        .arg("--host-ip")
        .arg(port.host_ip.to_string())
        .arg("--host-port")
        .arg(port.host_port.to_string())
        .arg("--container-ip")
        .arg(container_ip.to_string())
        .arg("--container-port")
        .arg(port.container_port.to_string())
        .arg("--stats")
        .arg(stats)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    let wfd = wr.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec (dup2, setsid).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if wfd == 3 {
                // already in place: only its close-on-exec flag goes
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(wfd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // its own session: a signal to engined's process group is not one to the proxy
            libc::setsid();
            Ok(())
        });
    }
    // A tokio child: dropped, it is reaped in the background when it exits (needs the runtime).
    let mut child = tokio::process::Command::from(cmd).kill_on_drop(false).spawn().map_err(PortError::Spawn)?;
    drop(wr);
    // It answers at once; one that does not within ANSWER_TIMEOUT_MS is not an engine-proxy that works.
    let mut answer = String::new();
    let mut pfd = [nix::poll::PollFd::new(rd.as_fd(), nix::poll::PollFlags::POLLIN)];
    if matches!(nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ANSWER_TIMEOUT_MS)), Ok(n) if n > 0) {
        let _ = std::fs::File::from(rd).read_to_string(&mut answer);
    }
    let addr = match port.host_ip {
        IpAddr::V6(ip) => format!("[{ip}]:{}", port.host_port),
        ip => format!("{ip}:{}", port.host_port),
    };
    match answer.trim().split_once(' ') {
        Some(("0", got)) => {
            let mut got = got.split_whitespace();
            let host_port = got.next().and_then(|p| p.parse().ok()).unwrap_or(port.host_port);
            let dual_stack = port.host_ip.is_unspecified() && got.next() == Some("::");
            let pid = child.id().unwrap_or(0);
            drop(child);
            Ok(Proxy { port: Published { host_port, ..port.clone() }, pid, stats: stats.to_path_buf(), dual_stack })
        }
        other => {
            let _ = child.start_kill();
            drop(child);
            let reason = match other {
                Some(("1", why)) => why.to_string(),
                _ => format!("engine-proxy exited without binding ({})", answer.trim()),
            };
            Err(PortError::Bind { container: container.to_string(), addr, reason })
        }
    }
}

/// Whether `pid` is still the proxy of `p` (a pid read back after a restart may be reused).
pub fn is_running(p: &Proxy) -> bool {
    serves(p.pid, &p.stats)
}

/// Whether process `pid` is the proxy that keeps its counters in `stats`: that path is under
/// engined's exec-root and names the container and port, so only this proxy has it on its
/// command line (whatever the binary is called).
fn serves(pid: u32, stats: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    args.windows(2).any(|w| w[0] == "--stats" && Path::new(&w[1]) == stats)
}

/// The live proxy that keeps its counters in `stats`, found among all processes: for a proxy
/// no record names any more (its container's record was lost), whose pid is not known.
pub fn find_by_stats(stats: &Path) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| serves(*pid, stats) && !is_zombie(*pid))
}

/// Stops a proxy (SIGTERM: it closes its listener and exits) and removes its counters. Waits
/// (2 s at most) until it is gone, so a start right after can bind the same port.
pub fn stop(p: &Proxy) {
    stop_serving(Some(p.pid), &p.stats);
}

/// [`stop`] for a proxy known only by its counters file (see [`find_by_stats`]); a proxy that
/// is not running any more only has its file removed.
pub fn stop_by_stats(stats: &Path) {
    stop_serving(find_by_stats(stats), stats);
}

fn stop_serving(pid: Option<u32>, stats: &Path) {
    if let Some(pid) = pid.filter(|pid| serves(*pid, stats)) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while serves(pid, stats) && !is_zombie(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    let _ = std::fs::remove_file(stats);
}

/// An exited process not reaped yet (it holds no socket any more).
fn is_zombie(pid: u32) -> bool {
    engine_util::process::state(pid).is_none_or(|s| s == 'Z')
}

/// A proxy's counters, as it writes them: `connections_total connections_active bytes_in bytes_out`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProxyStats {
    pub connections_total: u64,
    pub connections_active: u64,
    /// From clients to the container.
    pub bytes_in: u64,
    /// From the container to clients.
    pub bytes_out: u64,
}

impl ProxyStats {
    pub fn render(&self) -> String {
        format!("{} {} {} {}\n", self.connections_total, self.connections_active, self.bytes_in, self.bytes_out)
    }
    pub fn parse(s: &str) -> Option<ProxyStats> {
        let v: Vec<u64> = s.split_whitespace().map(|x| x.parse().ok()).collect::<Option<_>>()?;
        match v.as_slice() {
            [a, b, c, d] => {
                Some(ProxyStats { connections_total: *a, connections_active: *b, bytes_in: *c, bytes_out: *d })
            }
            _ => None,
        }
    }
    pub fn read(path: &Path) -> Option<ProxyStats> {
        Self::parse(&std::fs::read_to_string(path).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_parse() {
        assert_eq!(
            binding("80/tcp", "127.0.0.1", "8080").unwrap(),
            Published {
                container_port: 80,
                proto: "tcp".into(),
                host_ip: "127.0.0.1".parse().unwrap(),
                host_port: 8080
            }
        );
        assert_eq!(binding("53/udp", "", "").unwrap().host_port, 0);
        assert_eq!(binding("53/udp", "", "").unwrap().host_ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        for (k, ip, p) in [("80/sctp", "", "1"), ("0", "", "1"), ("80", "nope", "1"), ("80", "", "x")] {
            assert!(binding(k, ip, p).is_err(), "{k} {ip} {p}");
        }
        let s = ProxyStats { connections_total: 3, connections_active: 1, bytes_in: 10, bytes_out: 20 };
        assert_eq!(ProxyStats::parse(&s.render()), Some(s));
    }
}
