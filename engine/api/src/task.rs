//! The task directory: the on-disk half of the contract between lifecycled and one engine-shim.
//!
//! lifecycled makes one directory per task and starts `engine-shim --state-dir <dir>` in it; the
//! shim serves its gRPC API on [`socket_path`], writes the container's output to [`LOG_FILE`]
//! (Docker's json-file format, [`log`]) and, when the container's process exits, the durable
//! [`ExitRecord`] to [`EXIT_FILE`]. Either side may be killed at any moment: lifecycled reads the
//! exit record and the log of a shim that is gone, so both are written so that a reader sees a
//! whole record or none. A console's pty master comes to the shim over the OCI console socket
//! ([`receive_fd`]).

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The shim's gRPC socket, in the task directory.
pub const SOCKET_FILE: &str = "shim.sock";
/// The durable exit record, in the task directory.
pub const EXIT_FILE: &str = "exit.json";
/// The container's json-file log, in the task directory (rotated into `log.json.1` …).
pub const LOG_FILE: &str = "log.json";
/// The shim's own stderr, in the task directory: why it did not start, when it did not.
pub const SHIM_LOG_FILE: &str = "shim.log";

/// Where the shim of the task directory `dir` listens.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_FILE)
}

/// A container id as the runtime takes it: 1 to 1024 of `[A-Za-z0-9_+.-]`, not `.` or `..`
/// (it names directories of lifecycled, the shim and the runtime).
pub fn check_id(id: &str) -> Result<(), String> {
    if engine_util::id::valid_container_id(id) {
        Ok(())
    } else {
        Err(format!("invalid container id {id:?}: want 1 to 1024 of [A-Za-z0-9_+.-]"))
    }
}

/// How a task's process ended, as the shim records it once in [`EXIT_FILE`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit code, or 128 + the signal that killed it.
    pub exit_status: u32,
    #[serde(default)]
    pub exited_unix_nanos: i64,
    /// Empty, or why it ended beyond its status (`OOMKilled`).
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub pid: u32,
}

impl ExitRecord {
    /// Writes the record into the task directory `dir`, atomically and durably.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        engine_util::fs::write_atomic(&dir.join(EXIT_FILE), &bytes)
    }

    /// The record of the task directory `dir`, if one was written.
    pub fn read(dir: &Path) -> Option<ExitRecord> {
        serde_json::from_slice(&std::fs::read(dir.join(EXIT_FILE)).ok()?).ok()
    }
}

impl From<ExitRecord> for crate::v1::ExitStatus {
    fn from(r: ExitRecord) -> Self {
        crate::v1::ExitStatus {
            exit_status: r.exit_status,
            exited_unix_nanos: r.exited_unix_nanos,
            reason: r.reason,
            pid: r.pid,
        }
    }
}

impl From<&crate::v1::ExitStatus> for ExitRecord {
    fn from(s: &crate::v1::ExitStatus) -> Self {
        ExitRecord {
            exit_status: s.exit_status,
            exited_unix_nanos: s.exited_unix_nanos,
            reason: s.reason.clone(),
            pid: s.pid,
        }
    }
}

/// The container's log in Docker's json-file format: one JSON object a line with `log` (the
/// line with its newline), `stream` (`stdout` or `stderr`) and `time` (RFC 3339, nanoseconds).
pub mod log {
    use std::path::Path;

    use serde::{Deserialize, Serialize};

    /// One line of the log.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Entry {
        pub stream: String,
        pub line: Vec<u8>,
        pub unix_nanos: i64,
    }

    #[derive(Serialize, Deserialize)]
    struct Wire<'a> {
        log: std::borrow::Cow<'a, str>,
        stream: std::borrow::Cow<'a, str>,
        time: String,
    }

    /// The log line (with its newline) for `line` of `stream` at `unix_nanos`.
    pub fn encode(stream: &str, line: &[u8], unix_nanos: i64) -> String {
        let wire = Wire {
            log: String::from_utf8_lossy(line),
            stream: stream.into(),
            time: engine_util::time::rfc3339_from_unix_nanos(unix_nanos),
        };
        // plain strings: serialising them cannot fail
        let mut text = serde_json::to_string(&wire).unwrap_or_default();
        text.push('\n');
        text
    }

    /// One log line, or `None` for a line that is not one (a torn last line).
    pub fn parse_line(l: &str) -> Option<Entry> {
        let w: Wire = serde_json::from_str(l).ok()?;
        Some(Entry {
            stream: w.stream.into_owned(),
            line: w.log.into_owned().into_bytes(),
            unix_nanos: engine_util::time::parse_rfc3339_unix_nanos(&w.time).unwrap_or(0),
        })
    }

    /// Every entry of the log at `path` (the oldest of up to `max_files` rotated files first).
    pub fn read_all(path: &Path, max_files: u32) -> Vec<Entry> {
        read_all_to_offset(path, max_files).0
    }

    /// [`read_all`], and the offset in the current file up to which it read (whole lines only):
    /// following the file from that offset neither misses nor repeats a line.
    pub fn read_all_to_offset(path: &Path, max_files: u32) -> (Vec<Entry>, u64) {
        let mut out = Vec::new();
        for i in (1..max_files.max(1)).rev() {
            let Ok(text) = std::fs::read_to_string(format!("{}.{i}", path.display())) else { continue };
            out.extend(text.lines().filter_map(parse_line));
        }
        let bytes = std::fs::read(path).unwrap_or_default();
        let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        out.extend(String::from_utf8_lossy(&bytes[..end]).lines().filter_map(parse_line));
        (out, end as u64)
    }
}

/// Receives one descriptor sent with `SCM_RIGHTS` on the connected unix socket `socket` (the OCI
/// console socket: the runtime sends the pty master it made). `WouldBlock` on a non-blocking
/// socket with nothing to read yet.
pub fn receive_fd(socket: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut name = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut received = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel installed this descriptor for us; nobody else owns it.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                received.get_or_insert(fd);
            }
        }
    }
    received.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no descriptor in the message"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_record_round_trips_through_the_task_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ExitRecord::read(dir.path()), None);
        let r = ExitRecord { exit_status: 137, exited_unix_nanos: 5, reason: "OOMKilled".into(), pid: 42 };
        r.write(dir.path()).unwrap();
        assert_eq!(ExitRecord::read(dir.path()), Some(r.clone()));
        let status: crate::v1::ExitStatus = r.clone().into();
        assert_eq!(ExitRecord::from(&status), r);
        // what older shims wrote (the same keys) still reads
        std::fs::write(dir.path().join(EXIT_FILE), r#"{"exit_status":1,"exited_unix_nanos":2,"reason":"","pid":3}"#)
            .unwrap();
        assert_eq!(ExitRecord::read(dir.path()).unwrap().pid, 3);
    }

    #[test]
    fn log_lines_round_trip_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let mut text = String::new();
        text.push_str(&log::encode("stdout", b"hello \"x\"\n", 1_700_000_000_123_456_789));
        text.push_str(&log::encode("stderr", b"\xffbad\n", 1));
        text.push_str("{\"log\":\"torn");
        std::fs::write(&path, &text).unwrap();
        let (entries, offset) = log::read_all_to_offset(&path, 3);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].line, b"hello \"x\"\n");
        assert_eq!(entries[0].unix_nanos, 1_700_000_000_123_456_789);
        assert_eq!(entries[1].stream, "stderr");
        assert_eq!(offset as usize, text.len() - "{\"log\":\"torn".len());
        assert!(log::encode("stdout", b"x\n", 0).contains("\"time\":\"1970-01-01T00:00:00.000000000Z\""));
    }

    #[test]
    fn ids() {
        assert!(check_id("abc-1.2_3+x").is_ok());
        for bad in ["", ".", "..", "../x", "a/b", "a b"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        assert!(check_id(&"a".repeat(1025)).is_err());
    }

    #[test]
    fn a_descriptor_passes_over_a_socket() {
        use nix::sys::socket::{sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};
        use std::io::{Read, Write};
        use std::os::fd::AsFd;
        let (a, b) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let fds = [w.as_raw_fd()];
        sendmsg::<()>(
            a.as_raw_fd(),
            &[std::io::IoSlice::new(b"pty")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(w);
        let got = receive_fd(b.as_fd()).unwrap();
        std::fs::File::from(got).write_all(b"through").unwrap();
        let mut s = String::new();
        std::fs::File::from(r).read_to_string(&mut s).unwrap();
        assert_eq!(s, "through");
    }
}
