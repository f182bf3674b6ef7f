//! The message channel between `create` and the container's first process: a SOCK_SEQPACKET
//! socketpair, so every message arrives whole and a dead peer reads as end of file.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};

/// One end of the channel.
pub(crate) struct SyncSocket(OwnedFd);

/// A new connected pair (parent end, child end), both close-on-exec.
pub(crate) fn pair() -> nix::Result<(SyncSocket, SyncSocket)> {
    let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
    Ok((SyncSocket(a), SyncSocket(b)))
}

impl SyncSocket {
    pub fn send(&self, msg: &[u8]) -> nix::Result<()> {
        send(self.0.as_raw_fd(), msg, MsgFlags::MSG_NOSIGNAL).map(|_| ())
    }

    /// The next message; an empty one means the peer is gone.
    pub fn recv(&self) -> nix::Result<Vec<u8>> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match recv(self.0.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
