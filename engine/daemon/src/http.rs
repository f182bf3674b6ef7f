//! HTTP plumbing of the API: responses and Docker's error bodies, query strings, request
//! bodies (JSON, or a blocking reader for archives), streamed response bodies.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{self, Read};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Response, StatusCode};
use tokio::sync::mpsc;

use engine_image::ImageError;

pub type Body = BoxBody<Bytes, io::Error>;
pub type Resp = Response<Body>;

/// Largest JSON body accepted.
const MAX_JSON_BODY: usize = 4 << 20;

/// An API error: a status and Docker's `{"message": ...}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, m)
    }
    pub fn not_modified() -> Self {
        Self::new(StatusCode::NOT_MODIFIED, "")
    }
    pub fn no_such_container(id: &str) -> Self {
        Self::not_found(format!("No such container: {id}"))
    }

    pub fn into_response(self) -> Resp {
        if self.status == StatusCode::NOT_MODIFIED {
            return empty(self.status);
        }
        json(self.status, &engine_docker_api::ErrorBody { message: self.message.as_str().into() })
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        let status = match &e {
            ImageError::NotFound(_) => StatusCode::NOT_FOUND,
            ImageError::Conflict(_) => StatusCode::CONFLICT,
            ImageError::Io { .. } | ImageError::Corrupt { .. } | ImageError::Snapshot(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<engine_image::copy::CopyError> for ApiError {
    fn from(e: engine_image::copy::CopyError) -> Self {
        use engine_image::copy::CopyError as E;
        let status = match &e {
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::NotADirectory(_) | E::Refused(_) | E::Tar(_) => StatusCode::BAD_REQUEST,
            E::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<engine_image::reference::ReferenceError> for ApiError {
    fn from(e: engine_image::reference::ReferenceError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

impl From<crate::records::StoreError> for ApiError {
    fn from(e: crate::records::StoreError) -> Self {
        use crate::records::StoreError as E;
        let status = match &e {
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::Ambiguous(_) | E::InvalidName(..) => StatusCode::BAD_REQUEST,
            E::NameInUse { .. } | E::NameReserved(_) => StatusCode::CONFLICT,
            E::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        let status = match s.code() {
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::AlreadyExists | tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
            tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, s.message().to_string())
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed()
}

pub fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = status;
    r
}

pub fn json<T: serde::Serialize + ?Sized>(status: StatusCode, v: &T) -> Resp {
    let mut bytes = serde_json::to_vec(v)
        .unwrap_or_else(|e| format!("{{\"message\":\"encoding the response: {e}\"}}").into_bytes());
    bytes.push(b'\n');
    let mut r = Response::new(full(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

/// A blocking writer into a [`channel_body`]: a tar or an archive written off the async threads
/// goes out as it is made. A client that went away makes the next write fail (broken pipe).
pub struct ChannelWriter(pub mpsc::Sender<Bytes>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Bytes::copy_from_slice(buf))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether a request's client is still there, for an answer that streams a long time (a build,
/// which dockerd cancels once its client goes; Go's server reads in the background to know,
/// hyper does not). It holds a duplicate of the connection's socket (close-on-exec), made while
/// the connection is served, so it is never another connection's however long a handler keeps
/// it; the connection puts it in the request's extensions for the handlers that watch.
#[derive(Clone, Debug, Default)]
pub struct ClientWatch(Option<std::sync::Arc<std::os::fd::OwnedFd>>);

impl ClientWatch {
    /// A watch of the connection's socket `stream` (none if it cannot be duplicated: a client
    /// that never goes).
    pub fn socket(stream: std::os::fd::BorrowedFd<'_>) -> ClientWatch {
        ClientWatch(stream.try_clone_to_owned().ok().map(std::sync::Arc::new))
    }

    /// The watch the connection put in request `req`; without one (a request served some other
    /// way), a client that never goes.
    pub fn of<B>(req: &hyper::Request<B>) -> ClientWatch {
        req.extensions().get::<ClientWatch>().cloned().unwrap_or_default()
    }

    /// Whether the client closed the connection: both directions shut (POLLHUP on a Unix
    /// socket, which poll reports unasked). A client that only ended its sending side (a
    /// half-close, which engined serves) is still there.
    pub fn gone(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let Some(fd) = &self.0 else { return false };
        let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(fd.as_ref()), PollFlags::empty())];
        poll(&mut fds, PollTimeout::ZERO).is_ok() && fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLHUP))
    }
}

/// A response body fed through a channel: the sender writes chunks as they come.
pub fn channel_body(capacity: usize) -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(capacity);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let stream = tokio_stream::StreamExt::map(stream, |b| Ok::<_, io::Error>(Frame::data(b)));
    (tx, BodyExt::boxed(StreamBody::new(stream)))
}

/// The query string, percent-decoded, with repeated keys kept.
#[derive(Debug, Default)]
pub struct Query(HashMap<String, Vec<String>>);

impl Query {
    pub fn parse(q: Option<&str>) -> Self {
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            m.entry(decode(k)).or_default().push(decode(v));
        }
        Query(m)
    }

    /// The first value of `k`, as Go's `FormValue` (docker-py sends a Dockerfile's name and
    /// then its text as two `dockerfile` values).
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).and_then(|v| v.first()).map(String::as_str)
    }

    pub fn all(&self, k: &str) -> Vec<String> {
        self.0.get(k).cloned().unwrap_or_default()
    }

    /// Docker's booleans: `1`, `true`, `True` (and an empty value counts as false).
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("1") | Some("true") | Some("True") | Some("TRUE"))
    }

    pub fn int(&self, k: &str) -> Result<Option<i64>, ApiError> {
        match self.get(k).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| ApiError::bad_request(format!("invalid value for {k}: {v:?}"))),
        }
    }
}

/// The `filters` query parameter: `{"key": ["v", ...]}`, or the older `{"key": {"v": true}}`.
#[derive(Debug, Default)]
pub struct Filters(HashMap<String, Vec<String>>);

impl Filters {
    pub fn parse(q: &Query) -> Result<Self, ApiError> {
        let Some(f) = q.get("filters").filter(|f| !f.is_empty()) else { return Ok(Filters::default()) };
        let raw: HashMap<String, serde_json::Value> =
            serde_json::from_str(f).map_err(|e| ApiError::bad_request(format!("invalid filters: {e}")))?;
        let values = |v: serde_json::Value| match v {
            serde_json::Value::Array(a) => a.into_iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
            serde_json::Value::Object(o) => o.into_iter().map(|(k, _)| k).collect(),
            _ => Vec::new(),
        };
        Ok(Filters(raw.into_iter().map(|(k, v)| (k, values(v))).collect()))
    }

    /// The values given for `key` (empty when it is not filtered on).
    pub fn get(&self, key: &str) -> Vec<String> {
        self.0.get(key).cloned().unwrap_or_default()
    }

    /// Refuses keys outside `known`, as dockerd does.
    pub fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(ApiError::bad_request(format!("invalid filter '{k}'"))),
            None => Ok(()),
        }
    }
}

/// Percent-decoding (and `+` as space) of a query component.
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request's body as the handlers read it: the client's, which fails when the client sends
/// nothing for `idle` while it is being read (a stalled upload cannot hold a connection, and
/// its place among `--max-api-connections`, forever). Not read, it never times out: a request
/// whose answer takes long (`wait`, `events`, an attach) is not cut.
pub struct RequestBody {
    inner: Incoming,
    idle: Option<std::time::Duration>,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

/// The client sent none of its request body for the idle time allowed.
#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing of its request body for {} s", .0.as_secs())]
pub struct BodyTimeout(std::time::Duration);

impl RequestBody {
    /// `idle`: how long the client may send nothing while the body is read (`None`: forever).
    pub fn new(inner: Incoming, idle: Option<std::time::Duration>) -> RequestBody {
        RequestBody { inner, idle, timer: None }
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let Some(idle) = this.idle else { return Poll::Pending };
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(idle))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a JSON request body; an empty body is `T::default()`.
pub async fn read_json<T: serde::de::DeserializeOwned + Default>(body: RequestBody) -> Result<T, ApiError> {
    let limited = http_body_util::Limited::new(body, MAX_JSON_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON in the request body: {e}")))
}

/// A blocking reader over a request body, for the synchronous image code (run it in
/// `spawn_blocking`). The body is pumped by a task on the runtime. A reader dropped before the
/// end (the load failed) leaves the rest to be read and discarded: a connection closed with
/// unread data is reset, and the client, still sending, would lose the error it was answered.
pub struct BodyReader {
    rx: mpsc::Receiver<Result<Bytes, io::Error>>,
    current: Bytes,
}

impl BodyReader {
    pub fn new(mut body: RequestBody) -> Self {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(frame) = body.frame().await {
                let item = match frame {
                    Ok(f) => match f.into_data() {
                        Ok(d) => Ok(d),
                        Err(_) => continue, // trailers
                    },
                    Err(e) => Err(io::Error::other(e)),
                };
                let failed = item.is_err();
                if failed {
                    let _ = tx.send(item).await;
                    return;
                }
                if tx.send(item).await.is_err() {
                    while let Some(Ok(_)) = body.frame().await {}
                    return;
                }
            }
        });
        BodyReader { rx, current: Bytes::new() }
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Docker's multiplexed stream frame: stream type (1 stdout, 2 stderr), three zero bytes,
/// the payload length (big-endian u32), the payload.
pub fn frame(stream: u8, payload: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(8 + payload.len());
    v.extend_from_slice(&[stream, 0, 0, 0]);
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    Bytes::from(v)
}

/// A new 64-hex-digit id (containers, execs, anonymous volumes); no randomness is a 500.
pub fn new_id() -> Result<String, ApiError> {
    engine_util::id::new_id().map_err(|e| ApiError::internal(format!("no random id: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_gone_once_its_connection_is_closed_not_half_closed() {
        use std::os::fd::AsFd;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let req = |w: Option<ClientWatch>| {
            let mut r = hyper::Request::new(());
            if let Some(w) = w {
                r.extensions_mut().insert(w);
            }
            r
        };
        let watch = ClientWatch::of(&req(Some(ClientWatch::socket(ours.as_fd()))));
        assert!(!watch.gone());
        theirs.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(!watch.gone(), "a half-close is still a client");
        drop(theirs);
        assert!(watch.gone());
        // the watch's socket is its own: the connection's closing does not change it
        drop(ours);
        assert!(watch.gone());
        assert!(!ClientWatch::of(&req(None)).gone());
    }

    #[test]
    fn a_repeated_parameter_reads_as_its_first_value_as_gos_formvalue() {
        let q = Query::parse(Some("dockerfile=.dockerfile.1&dockerfile=FROM+busybox&t=a"));
        assert_eq!(q.get("dockerfile"), Some(".dockerfile.1"));
        assert_eq!(q.all("dockerfile"), [".dockerfile.1", "FROM busybox"]);
    }

    #[test]
    fn decodes_queries() {
        let q = Query::parse(Some("filters=%7B%22name%22%3A%5B%22a%22%5D%7D&all=1&names=a&names=b%3A1&t=x+y"));
        assert_eq!(q.get("filters"), Some("{\"name\":[\"a\"]}"));
        assert!(q.flag("all"));
        assert_eq!(q.all("names"), ["a", "b:1"]);
        assert_eq!(q.get("t"), Some("x y"));
        assert_eq!(decode("100%"), "100%");
    }

    #[test]
    fn frames_streams() {
        assert_eq!(&frame(2, b"hi")[..], &[2, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']);
    }
}
