//! The container's terminal (`process.terminal: true`), as runc does it: the container's first
//! process allocates a pty from the container's own devpts, sends the master to whoever listens
//! on the console socket (SCM_RIGHTS), and makes the slave its stdio, its controlling terminal
//! and /dev/console. `run` without `--detach` listens itself and relays the pty to its own stdio.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Errors of terminal set-up and relaying.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    #[error("{op}: {errno}")]
    Sys { op: &'static str, errno: nix::Error },
    #[error("connect console socket {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("console socket: no terminal descriptor received")]
    NoFd,
}

fn sys(op: &'static str) -> impl FnOnce(nix::Error) -> TerminalError {
    move |errno| TerminalError::Sys { op, errno }
}

/// Connects to a unix socket however long its path: past the kernel's 107 bytes, through
/// `/proc/self/fd/<fd of its directory>/<name>`.
pub(crate) fn connect_unix(path: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    if path.as_os_str().len() < 100 {
        return std::os::unix::net::UnixStream::connect(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return std::os::unix::net::UnixStream::connect(path);
    };
    let fd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?;
    std::os::unix::net::UnixStream::connect(
        std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())).join(name),
    )
}

/// Connects to the console socket the caller of `create` listens on.
pub fn connect(path: &Path) -> Result<OwnedFd, TerminalError> {
    let stream = crate::terminal::connect_unix(path)
        .map_err(|source| TerminalError::Connect { path: path.display().to_string(), source })?;
    Ok(stream.into())
}

/// Inside the container, after pivot_root: allocates the pty, sends its master over `socket`,
/// and makes the slave stdin, stdout, stderr, the controlling terminal and /dev/console.
pub(crate) fn setup_in_container(socket: &OwnedFd, size: Option<(u16, u16)>) -> Result<(), TerminalError> {
    let master =
        nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).map_err(sys("open /dev/ptmx"))?;
    nix::pty::grantpt(&master).map_err(sys("grantpt"))?;
    nix::pty::unlockpt(&master).map_err(sys("unlockpt"))?;
    let slave_path = nix::pty::ptsname_r(&master).map_err(sys("ptsname"))?;
    if let Some((height, width)) = size {
        set_size(master.as_fd(), height, width)?;
    }
    let slave = nix::fcntl::open(
        slave_path.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys("open pty slave"))?;

    // /dev/console is the terminal too (a bind mount of the slave, on a file created for it)
    let console = Path::new("/dev/console");
    if std::fs::symlink_metadata(console).is_err() {
        nix::fcntl::open(
            console,
            OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
        )
        .map_err(sys("create /dev/console"))?;
    }
    nix::mount::mount(Some(slave_path.as_str()), console, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
        .map_err(sys("bind the pty on /dev/console"))?;

    let name = slave_path.as_bytes();
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(name)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(sys("send the pty master over the console socket"))?;
    drop(master);

    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors; `slave` stays open until the end.
        if unsafe { libc::dup2(slave.as_raw_fd(), fd) } < 0 {
            return Err(TerminalError::Sys { op: "dup2 pty slave", errno: nix::Error::last() });
        }
    }
    // SAFETY: TIOCSCTTY takes an int argument; this process leads its own session (setsid).
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(TerminalError::Sys { op: "make the pty the controlling terminal", errno: nix::Error::last() });
    }
    Ok(())
}

/// Receives the pty master a container sent over the console socket.
pub fn receive_master(socket: BorrowedFd<'_>) -> Result<OwnedFd, TerminalError> {
    let mut name = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(sys("receive the pty master"))?;
    for c in msg.cmsgs().map_err(sys("read control message"))? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel installed this descriptor for us; nobody else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(TerminalError::NoFd)
}

/// Sets a terminal's window size (rows, columns).
pub fn set_size(fd: BorrowedFd<'_>, height: u16, width: u16) -> Result<(), TerminalError> {
    let ws = libc::winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(TerminalError::Sys { op: "set terminal size", errno: nix::Error::last() });
    }
    Ok(())
}

/// Copies the window size of `from` (our own terminal) to `to`, if `from` is a terminal.
pub fn copy_size(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes a winsize to the pointer, which is valid for the call.
    if unsafe { libc::ioctl(from.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
        let _ = set_size(to, ws.ws_row, ws.ws_col);
    }
}

/// Puts our own stdin in raw mode while relaying, and restores it when dropped.
pub struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    pub fn enter() -> RawMode {
        let stdin = std::io::stdin();
        let Ok(saved) = nix::sys::termios::tcgetattr(&stdin) else { return RawMode(None) };
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        let _ = nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &raw);
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, saved);
        }
    }
}

/// Copies what is readable on `from` to `to`; false at end of file or on an error.
pub(crate) fn pump(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 16 * 1024];
    match nix::unistd::read(from, &mut buf) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                match nix::unistd::write(to, rest) {
                    Ok(w) => rest = &rest[w..],
                    Err(nix::Error::EINTR) => {}
                    Err(_) => return false,
                }
            }
            true
        }
    }
}
