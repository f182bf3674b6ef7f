//! The protocol against a small registry served by the test on loopback. Uploads: a chunk whose
//! connection breaks halfway is resumed at the offset the registry reports, not started over;
//! an upload the registry loses starts over; a blob no larger than a chunk goes in one `PUT`.
//! Downloads: a blob redirected to another host (as registries send them to object storage)
//! is fetched there without the registry's credentials, resumed with `Range` when cut.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use engine_image::manifest::Descriptor;
use engine_image::Digest;
use engine_registry::{Client, RegistryConfig};

/// What the registry saw and holds.
#[derive(Default)]
struct State {
    /// Basic credentials the registry asks for (`user:password`), none: anonymous.
    basic: Option<String>,
    /// Where `GET /v2/r/blobs/…` redirects (a storage host's base URL), none: not found.
    redirect_blobs_to: Option<String>,
    /// The bytes of the open upload.
    held: Vec<u8>,
    /// Blobs completed by a `PUT` with their digest.
    blobs: Vec<Vec<u8>>,
    /// Each request's method, path and `Content-Range`.
    requests: Vec<String>,
    /// Body bytes received over all requests.
    received: usize,
    /// Break the connection of this PATCH (counted from 1), after half its body.
    break_patch: usize,
    /// Answer this PATCH (counted from 1) with 404 BLOB_UPLOAD_UNKNOWN and forget the upload.
    lose_patch: usize,
    patches: usize,
    uploads: usize,
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Some(Request { method, target, headers })
}

fn answer(w: &mut TcpStream, status: &str, headers: &[(&str, String)]) {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = w.write_all(out.as_bytes());
}

fn range(held: usize) -> String {
    format!("0-{}", held.saturating_sub(1))
}

/// Serves `/v2/`, and uploads to the repository `r` as the distribution spec has them.
fn serve(state: Arc<Mutex<State>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let state = state.clone();
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                while let Some(req) = read_request(&mut r) {
                    let len: usize = req.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                    let path = req.target.split('?').next().unwrap_or("").to_string();
                    let mut st = state.lock().unwrap();
                    st.requests.push(format!("{} {path} {}", req.method, req.header("content-range").unwrap_or("-")));
                    let upload = format!("/v2/r/blobs/uploads/u{}", st.uploads);
                    if let Some(basic) = &st.basic {
                        use base64::Engine as _;
                        let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(basic));
                        if req.header("authorization") != Some(want.as_str()) {
                            let mut body = vec![0; len];
                            let _ = r.read_exact(&mut body);
                            answer(&mut w, "401 Unauthorized", &[("WWW-Authenticate", "Basic realm=\"test\"".into())]);
                            continue;
                        }
                    }
                    match (req.method.as_str(), path.as_str()) {
                        ("GET", "/v2/") => answer(&mut w, "200 OK", &[]),
                        ("GET", p) if p.starts_with("/v2/r/blobs/sha256:") && st.redirect_blobs_to.is_some() => {
                            let to = format!("{}/storage/{}", st.redirect_blobs_to.as_deref().unwrap_or(""), &p[19..]);
                            answer(&mut w, "307 Temporary Redirect", &[("Location", to)]);
                        }
                        ("POST", "/v2/r/blobs/uploads/") => {
                            st.uploads += 1;
                            st.held.clear();
                            let loc = format!("/v2/r/blobs/uploads/u{}", st.uploads);
                            answer(&mut w, "202 Accepted", &[("Location", loc), ("Range", range(0))]);
                        }
                        ("PATCH", p) if p == upload => {
                            st.patches += 1;
                            let start: usize = req
                                .header("content-range")
                                .and_then(|v| v.split('-').next())
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(0);
                            if start != st.held.len() {
                                let mut body = vec![0; len];
                                let _ = r.read_exact(&mut body);
                                answer(&mut w, "416 Range Not Satisfiable", &[("Range", range(st.held.len()))]);
                                continue;
                            }
                            let n = st.patches;
                            let take = if n == st.break_patch { len / 2 } else { len };
                            let mut body = vec![0; take];
                            if r.read_exact(&mut body).is_err() {
                                return;
                            }
                            st.received += take;
                            if n == st.lose_patch {
                                st.held.clear();
                                st.uploads += 1;
                                answer(&mut w, "404 Not Found", &[("Content-Type", "application/json".into())]);
                                continue;
                            }
                            st.held.extend_from_slice(&body);
                            if n == st.break_patch {
                                // The connection breaks: what came is kept, as a registry that
                                // resumes keeps it.
                                let _ = w.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            answer(&mut w, "202 Accepted", &[("Location", upload), ("Range", range(st.held.len()))]);
                        }
                        ("GET", p) if p == upload => {
                            answer(&mut w, "204 No Content", &[("Location", upload), ("Range", range(st.held.len()))]);
                        }
                        ("PUT", p) if p == upload => {
                            let mut body = vec![0; len];
                            if r.read_exact(&mut body).is_err() {
                                return;
                            }
                            st.received += len;
                            st.held.extend_from_slice(&body);
                            let digest = req.target.split("digest=").nth(1).unwrap_or("").replace("%3A", ":");
                            if Digest::of(&st.held).to_string() == digest {
                                let blob = std::mem::take(&mut st.held);
                                st.blobs.push(blob);
                                answer(&mut w, "201 Created", &[]);
                            } else {
                                answer(&mut w, "400 Bad Request", &[]);
                            }
                        }
                        _ => {
                            let mut body = vec![0; len];
                            let _ = r.read_exact(&mut body);
                            answer(&mut w, "404 Not Found", &[]);
                        }
                    }
                }
            });
        }
    });
    addr
}

fn blob(dir: &std::path::Path, size: usize) -> (std::path::PathBuf, Vec<u8>, Descriptor) {
    let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let path = dir.join("blob");
    std::fs::write(&path, &bytes).unwrap();
    let desc = Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        digest: Digest::of(&bytes),
        size: size as u64,
        platform: None,
        annotations: Default::default(),
    };
    (path, bytes, desc)
}

async fn push(addr: &str, chunk: u64, path: &std::path::Path, desc: &Descriptor) -> Result<u64, String> {
    let client = Client::new(RegistryConfig { upload_chunk_size: chunk, ..Default::default() });
    let mut repo = client.repository(addr, "r", None, true, None).await.map_err(|e| e.to_string())?;
    let last = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = last.clone();
    let progress: Arc<dyn Fn(u64) + Send + Sync> =
        Arc::new(move |n| seen.store(n, std::sync::atomic::Ordering::SeqCst));
    repo.upload_blob(desc, path, progress, None).await.map_err(|e| e.to_string())?;
    Ok(last.load(std::sync::atomic::Ordering::SeqCst))
}

#[tokio::test]
async fn a_broken_chunk_resumes_where_the_registry_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes, desc) = blob(dir.path(), 1_000_000);
    let state = Arc::new(Mutex::new(State { break_patch: 2, ..Default::default() }));
    let addr = serve(state.clone());
    let progress = push(&addr, 300_000, &path, &desc).await.unwrap();
    let st = state.lock().unwrap();
    assert_eq!(st.blobs, vec![bytes], "the registry holds another blob");
    assert_eq!(progress, 1_000_000);
    assert_eq!(st.uploads, 1, "the upload started over: {:?}", st.requests);
    // The broken chunk's first half was kept: the upload resumed at 450000, after asking.
    assert!(st.requests.iter().any(|r| r == "PATCH /v2/r/blobs/uploads/u1 450000-749999"), "{:?}", st.requests);
    assert!(st.requests.iter().any(|r| r.starts_with("GET /v2/r/blobs/uploads/u1")), "{:?}", st.requests);
    assert_eq!(st.received, 1_000_000, "bytes sent twice: {:?}", st.requests);
}

#[tokio::test]
async fn an_upload_the_registry_lost_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes, desc) = blob(dir.path(), 1_000_000);
    let state = Arc::new(Mutex::new(State { lose_patch: 2, ..Default::default() }));
    let addr = serve(state.clone());
    push(&addr, 300_000, &path, &desc).await.unwrap();
    let st = state.lock().unwrap();
    assert_eq!(st.blobs, vec![bytes]);
    assert_eq!(st.uploads, 3, "a new upload after the lost one: {:?}", st.requests);
}

#[tokio::test]
async fn a_blob_no_larger_than_a_chunk_goes_in_one_put() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes, desc) = blob(dir.path(), 200_000);
    let state = Arc::new(Mutex::new(State::default()));
    let addr = serve(state.clone());
    push(&addr, 300_000, &path, &desc).await.unwrap();
    push(&addr, 0, &path, &desc).await.unwrap();
    let st = state.lock().unwrap();
    assert_eq!(st.blobs, vec![bytes.clone(), bytes]);
    assert!(!st.requests.iter().any(|r| r.starts_with("PATCH")), "{:?}", st.requests);
}

/// What the storage host saw: each request's `Authorization` and `Range` headers.
#[derive(Default)]
struct Storage {
    requests: Vec<(Option<String>, Option<String>)>,
}

/// A storage host serving `bytes` under `/storage/…`; its first answer is cut halfway.
fn serve_storage(bytes: Vec<u8>, seen: Arc<Mutex<Storage>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let mut w = conn.try_clone().unwrap();
            let mut r = BufReader::new(conn);
            let Some(req) = read_request(&mut r) else { continue };
            let range = req.header("range").map(str::to_string);
            let first = {
                let mut s = seen.lock().unwrap();
                s.requests.push((req.header("authorization").map(str::to_string), range.clone()));
                s.requests.len() == 1
            };
            let from: usize = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse().ok())
                .unwrap_or(0);
            let status = if from > 0 { "206 Partial Content" } else { "200 OK" };
            let body = &bytes[from..];
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n", body.len());
            let _ = w.write_all(head.as_bytes());
            let send = if first { body.len() / 2 } else { body.len() };
            let _ = w.write_all(&body[..send]);
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
    });
    base
}

#[tokio::test]
async fn a_redirected_blob_is_fetched_without_the_registrys_credentials_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes, desc) = blob(dir.path(), 600_000);
    let seen = Arc::new(Mutex::new(Storage::default()));
    let storage = serve_storage(bytes.clone(), seen.clone());
    let state = Arc::new(Mutex::new(State {
        basic: Some("alice:s3cret".into()),
        redirect_blobs_to: Some(storage),
        ..Default::default()
    }));
    let addr = serve(state.clone());
    let creds =
        engine_registry::AuthConfig { username: "alice".into(), password: "s3cret".into(), ..Default::default() };
    let client = Client::new(RegistryConfig::default());
    let mut repo = client.repository(&addr, "r", Some(creds), false, None).await.unwrap();

    let store = Arc::new(engine_image::ImageStore::open(dir.path().join("store")).unwrap());
    let ingest = engine_image::ingest::Ingest::begin(store.clone()).unwrap();
    let mut sink = ingest.blob_writer(&desc, None).unwrap();
    let mut progress = |_| {};
    repo.fetch_blob(&desc, &mut sink, &mut progress, None).await.unwrap();
    sink.commit().unwrap();
    assert_eq!(std::fs::read(store.blob_path(&desc.digest)).unwrap(), bytes);

    let seen = seen.lock().unwrap();
    assert_eq!(seen.requests.len(), 2, "{:?}", seen.requests);
    assert!(seen.requests.iter().all(|(auth, _)| auth.is_none()), "credentials went to the storage host");
    assert_eq!(seen.requests[1].1.as_deref(), Some("bytes=300000-"), "{:?}", seen.requests);
}
