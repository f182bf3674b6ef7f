//! Image routes: list, inspect, history, load, save, import, tag, remove. The image store is
//! synchronous; its calls run on the blocking pool.

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::StatusCode;
use serde_json::{json, Value};

use engine_image::{ImageError, ImportOptions, ProgressEvent, Reference};

use crate::distribution::Distribution;
use crate::events::Events;
use crate::http::{self, json, ApiError, BodyReader, Query, Resp};

/// What the image routes use: the image store, pulls and pushes, and the event stream they
/// report to. Nothing else of engined.
pub struct ImageService {
    pub images: Arc<engine_image::ImageStore>,
    pub distribution: Arc<Distribution>,
    pub events: Arc<Events>,
}

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

fn repo_digests(i: &engine_image::Image) -> Vec<String> {
    i.digests.iter().map(Reference::familiar).collect()
}

/// The `reference` filter of `docker images`: a name matches every tag of it (`busybox`,
/// `127.0.0.1:5000/team/app`), a name with a tag that tag only.
fn reference_matches(name: &Reference, filter: &str) -> bool {
    let Ok(want) = Reference::parse_name(filter) else { return false };
    if name.tag().is_none() || name.name() != want.name() {
        return false;
    }
    match (want.tag(), want.digest()) {
        (None, None) => true,
        (tag, None) => name.tag() == tag,
        (_, Some(_)) => false,
    }
}

pub fn list(d: &ImageService, q: &Query) -> Result<Vec<Value>, ApiError> {
    let images = d.images.list()?;
    let filters = crate::http::Filters::parse(q)?;
    let references = filters.get("reference");
    let dangling = filters.get("dangling").first().map(|v| v == "true" || v == "1");
    // an untagged image another was made from is an intermediate one: only with `all`
    let parents: std::collections::HashSet<engine_image::Digest> =
        images.iter().filter_map(|i| i.record.parent.clone()).collect();
    let all = q.flag("all");
    let mut out = Vec::new();
    for i in images {
        let tags = repo_tags(&i);
        if tags.is_empty() && parents.contains(i.id()) && (!all || dangling == Some(true)) {
            continue;
        }
        if let Some(want) = dangling {
            if want != tags.is_empty() {
                continue;
            }
        }
        // As dockerd: with a reference filter, only the names that match are listed.
        let tags = if references.is_empty() {
            tags
        } else {
            let matching: Vec<String> = i
                .names
                .iter()
                .filter(|n| references.iter().any(|r| reference_matches(n, r)))
                .map(Reference::familiar)
                .collect();
            if matching.is_empty() {
                continue;
            }
            matching
        };
        let size = i.record.size();
        out.push(json!({
            "Id": i.id().to_string(),
            "ParentId": i.record.parent.as_ref().map(|p| p.to_string()).unwrap_or_default(),
            "RepoTags": if tags.is_empty() { json!(["<none>:<none>"]) } else { json!(tags) },
            "RepoDigests": repo_digests(&i),
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

/// An image's `Config` as dockerd shows it: every key present (null or empty when unset), the
/// ones the engine does not type as the image has them.
fn run_config_json(c: &engine_image::manifest::ContainerConfig) -> Value {
    let mut v = json!({
        "Hostname": "", "Domainname": "", "User": c.user.clone().unwrap_or_default(),
        "AttachStdin": false, "AttachStdout": false, "AttachStderr": false,
        "ExposedPorts": c.exposed_ports, "Tty": false, "OpenStdin": false, "StdinOnce": false,
        "Env": c.env, "Cmd": c.cmd, "Image": "", "Volumes": c.volumes,
        "WorkingDir": c.working_dir.clone().unwrap_or_default(), "Entrypoint": c.entrypoint,
        "OnBuild": Value::Null, "Labels": c.labels,
    });
    if let Some(sig) = &c.stop_signal {
        v["StopSignal"] = json!(sig);
    }
    for (k, val) in &c.other {
        v[k] = val.clone();
    }
    v
}

pub fn inspect(d: &ImageService, name: &str) -> Result<Resp, ApiError> {
    let i = d.images.resolve(name)?;
    let c = &i.config;
    Ok(json(
        StatusCode::OK,
        &json!({
            "Id": i.id().to_string(),
            "RepoTags": repo_tags(&i),
            "RepoDigests": repo_digests(&i),
            "Parent": i.record.parent.as_ref().map(|p| p.to_string()).unwrap_or_default(),
            "Comment": c.history.last().and_then(|h| h.comment.clone()).unwrap_or_default(),
            "Created": c.created.clone().unwrap_or_default(),
            "Container": "",
            "DockerVersion": "",
            "Author": c.author.clone().unwrap_or_default(),
            "Config": c.config.as_ref().map(run_config_json),
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

/// `GET /images/{name}/history`: the history entries newest first; as dockerd, the image and
/// then its parents (a build's steps, a commit's image) give the entries their ids and tags one
/// by one, and the entries past the last local parent are `<missing>`.
pub fn history(d: &ImageService, name: &str) -> Result<Resp, ApiError> {
    let i = d.images.resolve(name)?;
    let mut layers = i.record.layers.iter().rev();
    let mut out = Vec::new();
    let mut chain = Some(i.clone());
    for h in i.config.history.iter().rev() {
        let size = if h.empty_layer { 0 } else { layers.next().map(|l| l.unpacked_size).unwrap_or(0) };
        let here = chain.take();
        out.push(json!({
            "Id": here.as_ref().map_or("<missing>".to_string(), |c| c.id().to_string()),
            "Created": h.created.as_deref().map(engine_util::time::unix_seconds_of).unwrap_or(0),
            "CreatedBy": h.created_by.clone().unwrap_or_default(),
            "Tags": here.as_ref().map(repo_tags).filter(|t| !t.is_empty()),
            "Size": size,
            "Comment": h.comment.clone().unwrap_or_default(),
        }));
        chain = here.and_then(|c| c.record.parent.clone()).and_then(|p| d.images.resolve(&p.to_string()).ok());
    }
    Ok(json(StatusCode::OK, &out))
}

pub fn tag(d: &ImageService, name: &str, q: &Query) -> Result<Resp, ApiError> {
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

pub async fn remove(d: &Arc<ImageService>, name: &str, force: bool) -> Result<Resp, ApiError> {
    // An image a container was created from is in use by its snapshot: the store refuses.
    let images = d.images.clone();
    let n = name.to_string();
    let removed = blocking(move || images.remove(&n, force)).await?;
    let mut out: Vec<Value> = removed.untagged.iter().map(|r| json!({ "Untagged": r.familiar() })).collect();
    out.extend(removed.deleted.iter().map(|id| json!({ "Deleted": id.to_string() })));
    Ok(json(StatusCode::OK, &out))
}

/// `POST /images/prune`: removes the images no container uses that `pick` picks, only those
/// without a name unless `all` (the `dangling=false` filter); the bytes reclaimed are what the
/// store's blobs and layers no longer hold.
pub async fn prune(
    d: &Arc<ImageService>,
    all: bool,
    pick: impl Fn(&engine_image::Image) -> bool,
) -> Result<Resp, ApiError> {
    let images = d.images.list()?;
    // intermediate images go with their last child, not by themselves
    let parents: std::collections::HashSet<engine_image::Digest> =
        images.iter().filter_map(|i| i.record.parent.clone()).collect();
    let candidates: Vec<engine_image::Image> =
        images.into_iter().filter(|i| (all || i.names.is_empty()) && !parents.contains(i.id()) && pick(i)).collect();
    let images = d.images.clone();
    let (out, reclaimed) = blocking(move || {
        let usage = |i: &engine_image::ImageStore| i.disk_usage().map(|(blobs, layers)| blobs + layers);
        let before = usage(&images)?;
        let mut out: Vec<Value> = Vec::new();
        // by each of its names, never forced (as dockerd): a name given meanwhile keeps it
        let refs: Vec<String> = candidates
            .iter()
            .flat_map(|i| match i.names.is_empty() {
                true => vec![i.id().to_string()],
                false => i.names.iter().map(|n| n.to_string()).collect(),
            })
            .collect();
        for r in refs {
            match images.remove(&r, false) {
                Ok(removed) => {
                    out.extend(removed.untagged.iter().map(|r| json!({ "Untagged": r.familiar() })));
                    out.extend(removed.deleted.iter().map(|id| json!({ "Deleted": id.to_string() })));
                }
                // used by a container, or gone meanwhile
                Err(ImageError::Conflict(_) | ImageError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((out, before.saturating_sub(usage(&images)?)))
    })
    .await?;
    let deleted = if out.is_empty() { Value::Null } else { Value::Array(out) };
    Ok(json(StatusCode::OK, &json!({ "ImagesDeleted": deleted, "SpaceReclaimed": reclaimed })))
}

/// A response body of JSON lines (Docker's progress messages), fed from blocking code.
fn json_lines() -> (impl Fn(Value) + Send + 'static, http::Body) {
    let (tx, body) = http::channel_body(64);
    (move |v: Value| drop(tx.blocking_send(Bytes::from(format!("{v}\n")))), body)
}

pub async fn load(d: &Arc<ImageService>, body: http::RequestBody, quiet: bool) -> Result<Resp, ApiError> {
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

pub async fn save(d: &Arc<ImageService>, names: Vec<String>) -> Result<Resp, ApiError> {
    if names.is_empty() {
        return Err(ApiError::bad_request("no images given"));
    }
    for n in &names {
        d.images.resolve(n)?;
    }
    let (tx, body) = http::channel_body(16);
    let images = d.images.clone();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let w = std::io::BufWriter::with_capacity(256 * 1024, http::ChannelWriter(tx));
        // An error mid-stream can only cut the archive short; the client sees a truncated tar.
        let _ = images.save(&refs, w);
    });
    let mut r = Resp::new(body);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    Ok(r)
}

/// `POST /images/create?fromSrc=-`: imports the body (a pull, `fromImage`, is [`pull`]).
pub async fn create(d: &Arc<ImageService>, q: &Query, body: http::RequestBody) -> Result<Resp, ApiError> {
    match q.get("fromSrc") {
        Some("-") => {}
        Some(src) => {
            return Err(ApiError::bad_request(format!(
                "import from {src:?} is not supported: send the tarball in the request body (fromSrc=-)"
            )))
        }
        None => return Err(ApiError::bad_request("fromImage or fromSrc is required")),
    }
    let opts = ImportOptions {
        reference: repo_tag(q)?,
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

/// The name an import or a commit gives its image: `repo` (which may carry a tag) and `tag`
/// (`latest` when neither has one); none without `repo`.
pub(crate) fn repo_tag(q: &Query) -> Result<Option<Reference>, ApiError> {
    let Some(repo) = q.get("repo").filter(|r| !r.is_empty()) else { return Ok(None) };
    let r = Reference::parse_name(repo)?;
    Ok(Some(match (r.tag(), q.get("tag").filter(|t| !t.is_empty())) {
        (Some(_), _) => r,
        (None, Some(t)) => r.with_tag(t)?,
        (None, None) => r.with_tag("latest")?,
    }))
}

impl From<crate::distribution::DistributionError> for ApiError {
    fn from(e: crate::distribution::DistributionError) -> Self {
        use crate::distribution::DistributionError as D;
        use engine_registry::RegistryError as R;
        match e {
            D::Image(e) => e.into(),
            D::Invalid(m) => ApiError::bad_request(m),
            D::Registry(R::Image(e)) => e.into(),
            D::Registry(e @ R::NotFound(_)) => ApiError::not_found(e.to_string()),
            D::Registry(e @ R::Unauthorized(_)) => ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()),
            D::Registry(e @ (R::Unsupported(_) | R::Config(_))) => ApiError::bad_request(e.to_string()),
            D::Registry(e @ (R::Protocol(_) | R::Transport(_))) => ApiError::internal(e.to_string()),
        }
    }
}

fn registry_auth(header: Option<&str>) -> Result<Option<engine_registry::AuthConfig>, ApiError> {
    match header {
        None => Ok(None),
        Some(h) => engine_registry::AuthConfig::from_header(h).map_err(ApiError::bad_request),
    }
}

/// JSON lines fed from async code, with the sender Distribution reports through.
fn message_stream() -> (crate::distribution::Messages, tokio::task::JoinHandle<()>, http::Body) {
    let (tx, body) = http::channel_body(64);
    let (vtx, mut vrx) = tokio::sync::mpsc::channel::<Value>(256);
    let forward = tokio::spawn(async move {
        while let Some(v) = vrx.recv().await {
            if tx.send(Bytes::from(format!("{v}\n"))).await.is_err() {
                break;
            }
        }
    });
    (vtx, forward, body)
}

fn error_line(e: &ApiError) -> Value {
    json!({ "errorDetail": { "message": e.message }, "error": e.message })
}

/// Answers at once with a JSON-lines body that `work` fills after the head has gone, as
/// dockerd's pull and push do: an error ends the stream as Docker's `errorDetail` message. `span`
/// (entered, `previous` was current before it) closes when `work` ends, and the request's trace
/// is held open until then.
fn stream_in_span<F, Fut>(
    trace: &Arc<crate::trace::Trace>,
    span: engine_telemetry::SpanHandle,
    previous: engine_telemetry::SpanHandle,
    work: F,
) -> Resp
where
    F: FnOnce(crate::distribution::Messages, Arc<crate::trace::Trace>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), crate::distribution::DistributionError>> + Send + 'static,
{
    let hold = trace.hold();
    let (out, forward, body) = message_stream();
    let trace = trace.clone();
    tokio::spawn(async move {
        let result = work(out.clone(), trace.clone()).await.map_err(ApiError::from);
        if let Err(e) = &result {
            let _ = out.send(error_line(e)).await;
        }
        let _ = trace.finish(span, result);
        trace.enter(previous);
        drop(out);
        let _ = forward.await;
        drop(hold);
    });
    let mut r = Resp::new(body);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `POST /images/create?fromImage=&tag=&platform=`: a pull. The manifest is resolved first, so a
/// missing image or refused credentials is a plain error response; then layers stream Docker's
/// progress messages and the image is recorded last. Without a tag in either parameter every
/// tag of the repository is pulled, as dockerd does (`docker pull --all-tags`).
pub async fn pull(d: &Arc<ImageService>, q: &Query, auth: Option<&str>) -> Result<Resp, ApiError> {
    let from = q.get("fromImage").unwrap_or("");
    let mut reference = Reference::parse_name(from)?;
    let tag = q.get("tag").filter(|t| !t.is_empty());
    let all_tags = tag.is_none() && reference.tag().is_none() && reference.digest().is_none();
    match tag {
        Some(t) if t.starts_with("sha256:") => reference = Reference::parse(&format!("{}@{t}", reference.name()))?,
        Some(t) if reference.digest().is_none() => reference = reference.with_tag(t)?,
        _ => {}
    }
    let platform = match q.get("platform").filter(|p| !p.is_empty()) {
        Some(p) => crate::distribution::parse_platform(p)?,
        None => crate::distribution::host_platform(),
    };
    let creds = registry_auth(auth)?;
    let anonymous = creds.is_none();
    let trace = crate::trace::current().ok_or_else(|| ApiError::internal("pull outside of a request"))?;
    let span = trace.start(engine_telemetry::names::DAEMON_PULL);
    trace.attr(span, "oci.reference", reference.to_string());
    let previous = trace.enter(span);
    // The first step that can fail, before the answer starts: the tag list, or the manifest.
    let first = if all_tags {
        d.distribution.tags(&trace, &reference, creds.clone()).await.map(FirstStep::Tags)
    } else {
        d.distribution.resolve(&trace, &reference, &platform, creds.clone()).await.map(|r| FirstStep::One(Box::new(r)))
    };
    let first = match first {
        Ok(f) => f,
        Err(e) => {
            trace.enter(previous);
            return trace.finish(span, Err(pull_error(e, &reference, anonymous)));
        }
    };
    let d = d.clone();
    Ok(stream_in_span(&trace, span, previous, move |out, trace| async move {
        let up_to_date = match first {
            FirstStep::One(one) => {
                let (repo, resolved) = *one;
                pull_one(&d, &trace, &reference, repo, resolved, &out).await?
            }
            FirstStep::Tags(tags) => {
                let mut all_up_to_date = true;
                for t in tags {
                    let tagged = reference
                        .with_tag(&t)
                        .map_err(|e| crate::distribution::DistributionError::Invalid(e.to_string()))?;
                    let (repo, resolved) = d.distribution.resolve(&trace, &tagged, &platform, creds.clone()).await?;
                    all_up_to_date &= pull_one(&d, &trace, &tagged, repo, resolved, &out).await?;
                }
                all_up_to_date
            }
        };
        let status = if up_to_date { "Image is up to date for" } else { "Downloaded newer image for" };
        let named = if all_tags { reference.familiar_name() } else { reference.familiar() };
        let _ = out.send(json!({ "status": format!("Status: {status} {named}") })).await;
        Ok(())
    }))
}

/// A pull's failure as dockerd words it: a registry refusing an anonymous client is "pull
/// access denied" (404), as for a repository that does not exist.
fn pull_error(e: crate::distribution::DistributionError, reference: &Reference, anonymous: bool) -> ApiError {
    match e {
        crate::distribution::DistributionError::Registry(engine_registry::RegistryError::Unauthorized(_))
            if anonymous =>
        {
            ApiError::not_found(format!(
                "pull access denied for {}, repository does not exist or may require 'docker login': denied: requested access to the resource is denied",
                reference.familiar_name()
            ))
        }
        e => ApiError::from(e),
    }
}

/// Pulls `reference` for `platform` as a step of a larger operation (a build's base image):
/// its `Pulling from`, progress, `Digest:` and `Status:` lines go to `out`, in a `daemon.pull`
/// span of its own.
pub async fn pull_into(
    d: &ImageService,
    trace: &Arc<crate::trace::Trace>,
    reference: &Reference,
    platform: &engine_image::manifest::Platform,
    creds: Option<engine_registry::AuthConfig>,
    out: &crate::distribution::Messages,
) -> Result<(), ApiError> {
    let anonymous = creds.is_none();
    let span = trace.start(engine_telemetry::names::DAEMON_PULL);
    trace.attr(span, "oci.reference", reference.to_string());
    let previous = trace.enter(span);
    let result = async {
        let (repo, resolved) = d.distribution.resolve(trace, reference, platform, creds).await?;
        let up_to_date = pull_one(d, trace, reference, repo, resolved, out).await?;
        let status = if up_to_date { "Image is up to date for" } else { "Downloaded newer image for" };
        let _ = out.send(json!({ "status": format!("Status: {status} {}", reference.familiar()) })).await;
        Ok(())
    }
    .await
    .map_err(|e| pull_error(e, reference, anonymous));
    trace.enter(previous);
    trace.finish(span, result)
}

/// What a pull found before its answer started.
enum FirstStep {
    One(Box<(engine_registry::Repository, engine_registry::Resolved)>),
    Tags(Vec<String>),
}

/// Pulls one resolved tag or digest with its `Pulling from` and `Digest:` lines; whether the
/// store had it already.
async fn pull_one(
    d: &ImageService,
    trace: &Arc<crate::trace::Trace>,
    reference: &Reference,
    repo: engine_registry::Repository,
    resolved: engine_registry::Resolved,
    out: &crate::distribution::Messages,
) -> Result<bool, crate::distribution::DistributionError> {
    let label = reference.digest().map(|g| g.to_string()).or(reference.tag().map(str::to_string)).unwrap_or_default();
    // Docker names the repository without its registry (`library/busybox`).
    let _ = out.send(json!({ "status": format!("Pulling from {}", reference.path()), "id": label })).await;
    let p = d.distribution.pull(trace, reference, repo, resolved, out).await?;
    let _ = out.send(json!({ "status": format!("Digest: {}", p.digest) })).await;
    d.events.publish(crate::events::Event::image("pull", &reference.familiar()));
    Ok(p.up_to_date)
}

/// `POST /images/{name}/push?tag=`: blobs the registry lacks, then the manifest. Without a tag
/// in either, every local tag of the repository is pushed, as dockerd does (`docker push
/// --all-tags`, docker-py's `images.push(repo)`).
pub async fn push(d: &Arc<ImageService>, name: &str, q: &Query, auth: Option<&str>) -> Result<Resp, ApiError> {
    let reference = Reference::parse_name(name)?;
    let targets = match (q.get("tag").filter(|t| !t.is_empty()), reference.tag()) {
        (Some(t), _) => vec![reference.with_tag(t)?],
        (None, Some(_)) => vec![reference.clone()],
        (None, None) => {
            let images = d.images.clone();
            let mut tagged: Vec<Reference> = blocking(move || images.list())
                .await?
                .into_iter()
                .flat_map(|i| i.names)
                .filter(|n| n.name() == reference.name() && n.tag().is_some())
                .collect();
            tagged.sort_by_key(Reference::to_string);
            tagged
        }
    };
    let missing =
        || ApiError::not_found(format!("An image does not exist locally with the tag: {}", reference.familiar_name()));
    if targets.is_empty() || targets.iter().any(|t| d.images.resolve(&t.to_string()).is_err()) {
        return Err(missing());
    }
    let creds = registry_auth(auth)?;
    let trace = crate::trace::current().ok_or_else(|| ApiError::internal("push outside of a request"))?;
    let span = trace.start(engine_telemetry::names::DAEMON_PUSH);
    trace.attr(span, "oci.reference", targets[0].to_string());
    let previous = trace.enter(span);
    let d = d.clone();
    Ok(stream_in_span(&trace, span, previous, move |out, trace| async move {
        let _ = out.send(json!({ "status": format!("The push refers to repository [{}]", reference.name()) })).await;
        for target in targets {
            d.distribution.push(&trace, &target, creds.clone(), &out).await?;
            d.events.publish(crate::events::Event::image("push", &target.familiar()));
        }
        Ok(())
    }))
}

/// `GET /distribution/{name}/json`: the registry's descriptor of an image and its platforms, as
/// `docker manifest inspect` and `docker buildx imagetools` ask (no pull).
pub async fn distribution_inspect(d: &Arc<ImageService>, name: &str, auth: Option<&str>) -> Result<Resp, ApiError> {
    let mut reference = Reference::parse(name)?;
    if reference.tag().is_none() && reference.digest().is_none() {
        reference = reference.with_tag("latest")?;
    }
    let creds = registry_auth(auth)?;
    let trace = crate::trace::current().ok_or_else(|| ApiError::internal("inspect outside of a request"))?;
    let (descriptor, platforms) = d.distribution.inspect(&trace, &reference, creds).await?;
    Ok(json(
        StatusCode::OK,
        &json!({
            "Descriptor": { "mediaType": descriptor.media_type, "digest": descriptor.digest.to_string(), "size": descriptor.size },
            "Platforms": platforms,
        }),
    ))
}

/// `POST /auth`: checks credentials with the registry, as `docker login` asks.
pub async fn login(d: &Arc<ImageService>, creds: engine_registry::AuthConfig) -> Result<Resp, ApiError> {
    d.distribution.login(&creds).await?;
    Ok(json(StatusCode::OK, &json!({ "Status": "Login Succeeded", "IdentityToken": "" })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_filter_matches_names_and_tags() {
        let n = |s: &str| Reference::parse(s).unwrap();
        assert!(reference_matches(&n("busybox:1"), "busybox"));
        assert!(reference_matches(&n("busybox:1"), "docker.io/library/busybox:1"));
        assert!(!reference_matches(&n("busybox:1"), "busybox:2"));
        assert!(reference_matches(&n("127.0.0.1:5000/team/app:a"), "127.0.0.1:5000/team/app"));
        assert!(!reference_matches(&n("127.0.0.1:5000/team/app:a"), "127.0.0.1"));
        assert!(!reference_matches(&n("team/app:a"), "team"));
    }
}
