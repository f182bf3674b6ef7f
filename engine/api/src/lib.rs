//! The contracts between engined, engine-lifecycled and engine-shim: the gRPC API (generated
//! message and service types, connecting over a unix socket, trace context in metadata) and the
//! shim's task directory ([`task`]: its files, the exit record, the log format, fd passing).
//!
//! Owns: the wire and on-disk contracts. It must never hold behaviour: no container logic lives
//! here, and it links neither the shim nor the runtime, so both sides depend on the contract
//! alone.

use std::path::{Path, PathBuf};

pub mod task;

/// Generated types of `engine.v1`.
pub mod v1 {
    tonic::include_proto!("engine.v1");
}

/// A channel to a gRPC server listening on the unix socket `path`. The connection is made
/// lazily, so this never blocks; errors show up on the first call.
pub fn unix_channel(path: impl AsRef<Path>) -> tonic::transport::Channel {
    let path: PathBuf = path.as_ref().to_path_buf();
    // the URI is required by the builder and ignored by the connector
    tonic::transport::Endpoint::from_static("http://[::1]:1").connect_with_connector_lazy(tower::service_fn(
        move |_| {
            let path = path.clone();
            async move {
                let (short, _dir) = short_socket_path(&path)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(short).await?))
            }
        },
    ))
}

/// The longest unix socket path the kernel takes is 107 bytes; task directories named by
/// 64-hex container ids under a deep state directory pass that. For a longer path this returns
/// `/proc/self/fd/<dir fd>/<name>` and the directory fd, which must stay open until the bind
/// or connect is done. Shorter paths are returned as they are.
pub fn short_socket_path(path: &Path) -> std::io::Result<(PathBuf, Option<std::fs::File>)> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    if path.as_os_str().len() < 100 {
        return Ok((path.to_path_buf(), None));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("socket path {} has no directory", path.display()),
        ));
    };
    let fd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())).join(name);
    Ok((short, Some(fd)))
}

/// Binds a listening unix socket at `path`, however long the path.
pub fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    let (short, _dir) = short_socket_path(path)?;
    tokio::net::UnixListener::bind(short)
}

/// Metadata key of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Puts `traceparent` (if any) into a request's metadata.
pub fn with_traceparent<T>(mut req: tonic::Request<T>, traceparent: Option<&str>) -> tonic::Request<T> {
    if let Some(tp) = traceparent.and_then(|t| t.parse().ok()) {
        req.metadata_mut().insert(TRACEPARENT, tp);
    }
    req
}

/// The `traceparent` of an incoming request, if it carries one.
pub fn traceparent_of<T>(req: &tonic::Request<T>) -> Option<String> {
    req.metadata().get(TRACEPARENT).and_then(|v| v.to_str().ok()).map(str::to_string)
}
