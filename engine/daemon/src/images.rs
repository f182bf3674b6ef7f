//! Image routes: list, inspect, history, load, save, import, tag, remove. The image store is
//! synchronous; its calls run on the blocking pool.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::StatusCode;
use serde_json::{json, Value};

use engine_image::{ImageError, ImportOptions, ProgressEvent, Reference};

use crate::daemon::Daemon;
use crate::http::{self, json, ApiError, BodyReader, Query, Resp};

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(e.to_string()))?.map_err(ApiError::from)
}

fn created_unix(config: &engine_image::manifest::ImageConfig) -> i64 {
    config.created.as_deref().map(engine_util::time::unix_seconds_of).unwrap_or(0)
}

fn repo_tags(i: &engine_image::Image) -> Vec<String> {
    i.names.iter().filter(|n| n.tag().is_some()).map(Reference::familiar).collect()
}

pub fn list(d: &Daemon, q: &Query) -> Result<Vec<Value>, ApiError> {
    let images = d.images.list()?;
    let filters = crate::http::Filters::parse(q)?;
    let references = filters.get("reference");
    let dangling = filters.get("dangling").first().map(|v| v == "true" || v == "1");
    let mut out = Vec::new();
    for i in images {
        let tags = repo_tags(&i);
        if let Some(want) = dangling {
            if want != tags.is_empty() {
                continue;
            }
        }
        if !references.is_empty()
            && !references.iter().any(|r| {
                tags.iter().any(|t| {
                    t == r
                        || t.split(':').next() == Some(r.as_str())
                        || Reference::parse(r).map(|p| p.familiar() == *t).unwrap_or(false)
                })
            })
        {
            continue;
        }
        let size = i.record.size();
        out.push(json!({
            "Id": i.id().to_string(),
            "ParentId": "",
            "RepoTags": if tags.is_empty() { json!(["<none>:<none>"]) } else { json!(tags) },
            "RepoDigests": [],
            "Created": created_unix(&i.config),
            "Size": size,
            "VirtualSize": size,
            "SharedSize": -1,
            "Labels": i.config.config.as_ref().and_then(|c| c.labels.clone()),
            "Containers": -1,
        }));
    }
    Ok(out)
}

pub fn inspect(d: &Daemon, name: &str) -> Result<Resp, ApiError> {
    let i = d.images.resolve(name)?;
    let c = &i.config;
    Ok(json(
        StatusCode::OK,
        &json!({
            "Id": i.id().to_string(),
            "RepoTags": repo_tags(&i),
            "RepoDigests": [],
            "Parent": "",
            "Comment": c.history.last().and_then(|h| h.comment.clone()).unwrap_or_default(),
            "Created": c.created.clone().unwrap_or_default(),
            "Container": "",
            "DockerVersion": "",
            "Author": c.author.clone().unwrap_or_default(),
            "Config": c.config,
            "Architecture": c.architecture,
            "Os": c.os,
            "Size": i.record.size(),
            "VirtualSize": i.record.size(),
            "GraphDriver": { "Name": "overlay2", "Data": { "LowerDir": d.images.layer_dirs(i.id())?.iter().rev().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":") } },
            "RootFS": { "Type": "layers", "Layers": c.rootfs.diff_ids },
            "Metadata": { "LastTagTime": i.record.loaded },
        }),
    ))
}

pub fn history(d: &Daemon, name: &str) -> Result<Resp, ApiError> {
    let i = d.images.resolve(name)?;
    let mut layers = i.record.layers.iter().rev();
    let n = i.config.history.len();
    let mut out = Vec::new();
    for (k, h) in i.config.history.iter().enumerate().rev() {
        let size = if h.empty_layer { 0 } else { layers.next().map(|l| l.unpacked_size).unwrap_or(0) };
        out.push(json!({
            "Id": if k + 1 == n { i.id().to_string() } else { "<missing>".into() },
            "Created": h.created.as_deref().map(engine_util::time::unix_seconds_of).unwrap_or(0),
            "CreatedBy": h.created_by.clone().unwrap_or_default(),
            "Tags": if k + 1 == n { json!(repo_tags(&i)) } else { json!(null) },
            "Size": size,
            "Comment": h.comment.clone().unwrap_or_default(),
        }));
    }
    Ok(json(StatusCode::OK, &out))
}

pub fn tag(d: &Daemon, name: &str, q: &Query) -> Result<Resp, ApiError> {
    let repo = q.get("repo").unwrap_or("");
    let tag = q.get("tag").filter(|t| !t.is_empty()).unwrap_or("latest");
    let target = Reference::parse_name(repo)?;
    if target.tag().is_some() || target.digest().is_some() {
        return Err(ApiError::bad_request(format!("invalid repository name: {repo}")));
    }
    let target = target.with_tag(tag)?;
    d.images.tag(name, &target)?;
    Ok(http::empty(StatusCode::CREATED))
}

pub async fn remove(d: &Arc<Daemon>, name: &str, force: bool) -> Result<Resp, ApiError> {
    // An image a container was created from is in use by its snapshot: the store refuses.
    let images = d.images.clone();
    let n = name.to_string();
    let removed = blocking(move || images.remove(&n, force)).await?;
    let mut out: Vec<Value> = removed.untagged.iter().map(|r| json!({ "Untagged": r.familiar() })).collect();
    out.extend(removed.deleted.iter().map(|id| json!({ "Deleted": id.to_string() })));
    Ok(json(StatusCode::OK, &out))
}

/// A response body of JSON lines (Docker's progress messages), fed from blocking code.
fn json_lines() -> (impl Fn(Value) + Send + 'static, http::Body) {
    let (tx, body) = http::channel_body(64);
    (move |v: Value| drop(tx.blocking_send(Bytes::from(format!("{v}\n")))), body)
}

pub async fn load(d: &Arc<Daemon>, body: Incoming, quiet: bool) -> Result<Resp, ApiError> {
    let reader = BodyReader::new(body);
    let (send, resp_body) = json_lines();
    let images = d.images.clone();
    tokio::task::spawn_blocking(move || {
        let progress = |e: ProgressEvent<'_>| {
            if quiet {
                return;
            }
            match e {
                ProgressEvent::LayerProgress { diff_id, done, total } => send(json!({
                    "status": "Loading layer", "id": &diff_id.hex()[..12],
                    "progressDetail": { "current": done, "total": total }
                })),
                ProgressEvent::LayerDone { diff_id, reused } => send(
                    json!({ "status": if reused { "Already exists" } else { "Loaded" }, "id": &diff_id.hex()[..12], "progressDetail": {} }),
                ),
                _ => {}
            }
        };
        match images.load(reader, &progress) {
            Ok(loaded) => {
                for l in loaded {
                    if l.names.is_empty() {
                        send(json!({ "stream": format!("Loaded image ID: {}\n", l.id) }));
                    }
                    for n in l.names {
                        send(json!({ "stream": format!("Loaded image: {}\n", n.familiar()) }));
                    }
                }
            }
            Err(e) => send(json!({ "errorDetail": { "message": e.to_string() }, "error": e.to_string() })),
        }
    });
    let mut r = Resp::new(resp_body);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

pub async fn save(d: &Arc<Daemon>, names: Vec<String>) -> Result<Resp, ApiError> {
    if names.is_empty() {
        return Err(ApiError::bad_request("no images given"));
    }
    for n in &names {
        d.images.resolve(n)?;
    }
    let (tx, body) = http::channel_body(16);
    let images = d.images.clone();
    tokio::task::spawn_blocking(move || {
        struct ChannelWriter(tokio::sync::mpsc::Sender<Bytes>);
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
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let w = std::io::BufWriter::with_capacity(256 * 1024, ChannelWriter(tx));
        // An error mid-stream can only cut the archive short; the client sees a truncated tar.
        let _ = images.save(&refs, w);
    });
    let mut r = Resp::new(body);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    Ok(r)
}

/// `POST /images/create`: `fromSrc=-` imports the body; `fromImage` would pull, which needs a
/// registry this engine does not reach yet.
pub async fn create(d: &Arc<Daemon>, q: &Query, body: Incoming) -> Result<Resp, ApiError> {
    if let Some(image) = q.get("fromImage").filter(|s| !s.is_empty()) {
        return Err(ApiError::not_found(format!("pull access denied for {image}: pulling from registries is not supported yet; use `engine load` or `engine import`")));
    }
    match q.get("fromSrc") {
        Some("-") => {}
        Some(src) => {
            return Err(ApiError::bad_request(format!(
                "import from {src:?} is not supported: send the tarball in the request body (fromSrc=-)"
            )))
        }
        None => return Err(ApiError::bad_request("fromImage or fromSrc is required")),
    }
    let reference = match q.get("repo").filter(|r| !r.is_empty()) {
        None => None,
        Some(repo) => {
            let r = Reference::parse_name(repo)?;
            Some(match (r.tag(), q.get("tag").filter(|t| !t.is_empty())) {
                (Some(_), _) => r,
                (None, Some(t)) => r.with_tag(t)?,
                (None, None) => r.with_tag("latest")?,
            })
        }
    };
    let opts = ImportOptions {
        reference,
        changes: q.all("changes"),
        message: q.get("message").filter(|m| !m.is_empty()).map(str::to_string),
    };
    let reader = BodyReader::new(body);
    let (send, resp_body) = json_lines();
    let images = d.images.clone();
    tokio::task::spawn_blocking(move || match images.import(reader, &opts, &()) {
        Ok(id) => send(json!({ "status": id.to_string() })),
        Err(e) => send(json!({ "errorDetail": { "message": e.to_string() }, "error": e.to_string() })),
    });
    let mut r = Resp::new(resp_body);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}
