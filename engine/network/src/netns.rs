//! Work inside another network namespace without moving the caller: what a socket is bound to
//! is its namespace at its creation, so a thread that joins the namespace, makes the sockets
//! and ends is enough.

use std::fs::File;
use std::io;

/// Runs `f` on a thread of its own that joined the network namespace `ns` and ends right
/// after: the sockets `f` makes are in `ns`, and no thread of the caller ever is.
pub fn run_in<T: Send>(ns: &File, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the thread in the network namespace panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_made_inside_is_in_the_namespace_and_the_caller_is_not_moved() {
        let ns = File::open("/proc/self/ns/net").unwrap();
        let before = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let inside = run_in(&ns, || std::fs::read_link("/proc/thread-self/ns/net")).unwrap();
        assert_eq!(inside, before);
        assert_eq!(std::fs::read_link("/proc/thread-self/ns/net").unwrap(), before);
        let err = run_in(&File::open("/proc/self/ns/uts").unwrap(), || Ok(())).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "not a network namespace");
    }
}
