//! engined run by systemd, as dockerd is: readiness, status and stopping told on
//! `$NOTIFY_SOCKET` (sd_notify's protocol: one datagram of `KEY=VALUE` lines), the watchdog
//! kept fed when the unit asks for it (`$WATCHDOG_USEC`), and the listening socket handed over
//! by socket activation (`-H fd://`, `$LISTEN_PID`/`$LISTEN_FDS`, fds from 3).
//!
//! Without those variables nothing here does anything. Never fails an operation for systemd's
//! sake: a notification that cannot be sent is dropped.

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::time::Duration;

/// The first descriptor systemd hands over (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Sends `state` (`READY=1`, `STATUS=…`, `STOPPING=1`, `WATCHDOG=1`) to the service manager,
/// if engined runs under one that listens.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = UnixDatagram::unbound() else { return };
    let path = path.to_string_lossy().into_owned();
    let _ = match path.strip_prefix('@') {
        // an abstract socket
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
        }
        None => sock.send_to(state.as_bytes(), &path),
    };
}

/// How often to send `WATCHDOG=1`: half the unit's `WatchdogSec`, when it is meant for this
/// process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Feeds the watchdog from now on, if the unit asks for it.
pub fn spawn_watchdog() {
    if let Some(every) = watchdog_interval() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                notify("WATCHDOG=1");
            }
        });
    }
}

/// The listening socket systemd handed over for `-H fd://` (the first one) or `fd://N`.
pub fn activated_listener(which: Option<RawFd>) -> anyhow::Result<UnixListener> {
    let pid: u32 = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse().ok()).unwrap_or(0);
    let count: RawFd = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    if pid != std::process::id() || count < 1 {
        anyhow::bail!("-H fd://: no socket was handed over (LISTEN_PID/LISTEN_FDS not set for this process)");
    }
    let fd = which.unwrap_or(LISTEN_FDS_START);
    if !(LISTEN_FDS_START..LISTEN_FDS_START + count).contains(&fd) {
        anyhow::bail!("-H fd://{fd}: systemd handed over fds {LISTEN_FDS_START} to {}", LISTEN_FDS_START + count - 1);
    }
    for n in LISTEN_FDS_START..LISTEN_FDS_START + count {
        // handed over without close-on-exec: lifecycled, shims and containers must not keep them
        nix::fcntl::fcntl(
            // SAFETY: the descriptors systemd handed over are this process's, open until closed
            unsafe { std::os::fd::BorrowedFd::borrow_raw(n) },
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| anyhow::anyhow!("fd {n} handed over: {e}"))?;
    }
    // SAFETY: a descriptor systemd handed over, open until closed
    let handed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let kind = nix::sys::socket::getsockopt(&handed, nix::sys::socket::sockopt::SockType)
        .map_err(|e| anyhow::anyhow!("fd {fd} handed over is no socket: {e}"))?;
    let listening = nix::sys::socket::getsockopt(&handed, nix::sys::socket::sockopt::AcceptConn).unwrap_or(false);
    if kind != nix::sys::socket::SockType::Stream || !listening {
        anyhow::bail!("fd {fd} handed over is not a listening stream socket");
    }
    // SAFETY: a listening socket of this process that nothing else owns
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        // no other test of this crate reads or sets the variable
        std::env::set_var("NOTIFY_SOCKET", &path);
        notify("READY=1\nSTATUS=up");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");
        // without the variable nothing is sent, nothing fails
        notify("READY=1");
    }
}
