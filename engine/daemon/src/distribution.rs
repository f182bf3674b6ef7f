//! Distribution: pulling images from registries into the image store and pushing them back,
//! with Docker's JSON progress messages and one span per phase.
//!
//! It takes only what it needs: the image store, the registry client and its limits. A pull
//! resolves the manifest first (so a missing image or refused credentials is an ordinary error
//! response), then streams: each layer downloads (at most `max-concurrent-downloads` at once)
//! and is unpacked as soon as it has arrived, and the image is recorded last, through
//! [`engine_image::Ingest`]. Two pulls needing the same blob fetch it once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

use engine_image::ingest::{parse_config, IngestedImage};
use engine_image::manifest::{Descriptor, Platform};
use engine_image::{Digest, ImageError, ImageStore, Ingest, ProgressEvent, Reference};
use engine_registry::{AuthConfig, Client, RegistryConfig, RegistryError, Repository};
use engine_telemetry::names;
use engine_util::size::human_with_precision;

use crate::trace::Trace;

#[derive(Debug, thiserror::Error)]
pub enum DistributionError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{0}")]
    Invalid(String),
}

/// A progress message as Docker streams them (`status`, `id`, `progressDetail`).
pub type Messages = mpsc::Sender<Value>;

pub struct Distribution {
    images: Arc<ImageStore>,
    /// Replaced whole when SIGHUP changes the registry options ([`Distribution::reconfigure`]).
    client: std::sync::RwLock<Arc<Client>>,
    downloads: std::sync::atomic::AtomicUsize,
    uploads: std::sync::atomic::AtomicUsize,
    /// Blobs being fetched now, so a second pull waits for the first instead of fetching again.
    inflight: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// What went over the wire, for `/metrics`.
    pub transferred: Arc<Transferred>,
}

/// Blobs and their bytes fetched from and sent to registries since engined started.
#[derive(Debug, Default)]
pub struct Transferred {
    pub pulled_blobs: AtomicU64,
    pub pulled_bytes: AtomicU64,
    pub pushed_blobs: AtomicU64,
    pub pushed_bytes: AtomicU64,
}

impl Transferred {
    fn pulled(&self, bytes: u64) {
        self.pulled_blobs.fetch_add(1, Ordering::Relaxed);
        self.pulled_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn pushed(&self, bytes: u64) {
        self.pushed_blobs.fetch_add(1, Ordering::Relaxed);
        self.pushed_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub id: Digest,
    /// The digest the reference resolved to (an index or a manifest).
    pub digest: Digest,
    /// Whether the store had the image already.
    pub up_to_date: bool,
}

/// The host's platform, as images name it.
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    Platform { architecture: architecture.into(), os: "linux".into(), variant: None }
}

/// `os/arch[/variant]`, as `--platform` has it.
pub fn parse_platform(s: &str) -> Result<Platform, DistributionError> {
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        }),
        _ => Err(DistributionError::Invalid(format!("invalid platform {s:?}: want os/arch[/variant]"))),
    }
}

fn short(d: &Digest) -> String {
    d.hex()[..12].to_string()
}

async fn send(out: &Messages, v: Value) {
    let _ = out.send(v).await;
}

/// What a reference names in its repository: its digest, else its tag (`latest` by default).
fn tag_or_digest(reference: &Reference) -> String {
    match (reference.digest(), reference.tag()) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_string(),
        (None, None) => "latest".to_string(),
    }
}

/// Docker's `progress` text: `[=====>      ]  1.2MB/2.5MB`.
fn bar(current: u64, total: u64) -> String {
    let width = 50u64;
    let filled = (current.min(total) * width).checked_div(total).unwrap_or(0) as usize;
    let mut b = "=".repeat(filled);
    if filled < width as usize {
        b.push('>');
    }
    format!("[{b:<50}] {:>8}/{}", human_with_precision(current, 4), human_with_precision(total, 4))
}

impl Distribution {
    pub fn new(images: Arc<ImageStore>, cfg: RegistryConfig, downloads: usize, uploads: usize) -> Self {
        Distribution {
            images,
            client: std::sync::RwLock::new(Arc::new(Client::new(cfg))),
            downloads: downloads.into(),
            uploads: uploads.into(),
            inflight: Mutex::new(HashMap::new()),
            transferred: Arc::default(),
        }
    }

    /// The registry client as configured now.
    fn client(&self) -> Arc<Client> {
        self.client.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// New registry options (a SIGHUP): pulls and pushes from now on use them (ones under way
    /// finish with the old); cached tokens go with the old client.
    pub fn reconfigure(&self, cfg: RegistryConfig, downloads: usize, uploads: usize) {
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Client::new(cfg));
        self.downloads.store(downloads.max(1), std::sync::atomic::Ordering::Relaxed);
        self.uploads.store(uploads.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// The registry options in use, for `info`.
    pub fn registry_config(&self) -> RegistryConfig {
        self.client().config().clone()
    }

    /// `POST /auth`: checks credentials with the registry.
    pub async fn login(&self, creds: &AuthConfig) -> Result<(), DistributionError> {
        let server = creds.serveraddress.trim();
        let domain = registry_domain(server);
        self.client().login(&domain, creds).await?;
        Ok(())
    }

    /// Opens `reference`'s repository for reading and runs `f` on it (with the traceparent to
    /// send and the span), all inside one `registry.resolve` span.
    async fn in_resolve_span<T, F, Fut>(
        &self,
        trace: &Trace,
        reference: &Reference,
        creds: Option<AuthConfig>,
        f: F,
    ) -> Result<T, DistributionError>
    where
        F: FnOnce(Repository, Option<String>, engine_telemetry::SpanHandle) -> Fut,
        Fut: std::future::Future<Output = Result<T, DistributionError>>,
    {
        let span = trace.start(names::REGISTRY_RESOLVE);
        trace.attr(span, "server.address", reference.domain().to_string());
        trace.attr(span, "oci.reference", reference.to_string());
        let tp = trace.traceparent(span);
        let result = async {
            let repo =
                self.client().repository(reference.domain(), reference.path(), creds, false, tp.as_deref()).await?;
            f(repo, tp, span).await
        }
        .await;
        trace.finish(span, result)
    }

    /// `GET /distribution/{name}/json`: what the registry holds for `reference` (the manifest or
    /// index it names) and the platforms it serves, without pulling anything.
    pub async fn inspect(
        &self,
        trace: &Trace,
        reference: &Reference,
        creds: Option<AuthConfig>,
    ) -> Result<(Descriptor, Vec<Platform>), DistributionError> {
        self.in_resolve_span(trace, reference, creds, |mut repo, tp, _| async move {
            let (descriptor, bytes) = repo.fetch_manifest(&tag_or_digest(reference), tp.as_deref()).await?;
            let platforms = if engine_image::manifest::is_index(&descriptor.media_type) {
                let index: engine_image::manifest::Index = serde_json::from_slice(&bytes)
                    .map_err(|e| DistributionError::Invalid(format!("index {}: {e}", descriptor.digest)))?;
                index.manifests.into_iter().filter_map(|m| m.platform).collect()
            } else {
                // A single manifest: its platform is its config's.
                let manifest: engine_image::manifest::Manifest = serde_json::from_slice(&bytes)
                    .map_err(|e| DistributionError::Invalid(format!("manifest {}: {e}", descriptor.digest)))?;
                let config = parse_config(&manifest, &repo.fetch_config(&manifest.config, tp.as_deref()).await?)?;
                vec![Platform { architecture: config.architecture, os: config.os, variant: config.variant }]
            };
            Ok((descriptor, platforms))
        })
        .await
    }

    /// The tags the registry holds for `reference`'s repository (`pull --all-tags`), sorted.
    pub async fn tags(
        &self,
        trace: &Trace,
        reference: &Reference,
        creds: Option<AuthConfig>,
    ) -> Result<Vec<String>, DistributionError> {
        self.in_resolve_span(trace, reference, creds, |mut repo, tp, _| async move {
            let mut tags = repo.list_tags(tp.as_deref()).await?;
            tags.sort();
            Ok(tags)
        })
        .await
    }

    /// Resolves `reference` for `platform`; the first, fallible step of a pull, done before the
    /// response starts so that errors are plain HTTP errors.
    pub async fn resolve(
        &self,
        trace: &Trace,
        reference: &Reference,
        platform: &Platform,
        creds: Option<AuthConfig>,
    ) -> Result<(Repository, engine_registry::Resolved), DistributionError> {
        self.in_resolve_span(trace, reference, creds, |mut repo, tp, span| async move {
            let resolved = repo.resolve(&tag_or_digest(reference), platform, tp.as_deref()).await?;
            trace.attr(span, "oci.manifest.digest", resolved.descriptor.digest.to_string());
            Ok((repo, resolved))
        })
        .await
    }

    /// Brings the resolved image into the store, streaming Docker's progress messages.
    pub async fn pull(
        self: &Arc<Self>,
        trace: &Arc<Trace>,
        reference: &Reference,
        repo: Repository,
        resolved: engine_registry::Resolved,
        out: &Messages,
    ) -> Result<Pulled, DistributionError> {
        let m = &resolved.manifest;
        let tp = trace.traceparent(trace.current());
        let mut repo = repo;
        let config_bytes = repo.fetch_config(&m.config, tp.as_deref()).await?;
        self.transferred.pulled(config_bytes.len() as u64);
        let config = parse_config(m, &config_bytes)?;
        let id = m.config.digest.clone();
        let mut names = Vec::new();
        if reference.digest().is_none() {
            names.push(reference.with_tag(reference.tag().unwrap_or("latest")).map_err(ImageError::from)?);
        }
        names.push(
            Reference::parse(&format!("{}@{}", reference.name(), resolved.target.digest)).map_err(ImageError::from)?,
        );
        // Already here: only the names change.
        if let Ok(existing) = self.images.resolve(&id.to_string()) {
            if existing.id() == &id && existing.names.iter().any(|n| names.contains(n)) {
                return Ok(Pulled { id, digest: resolved.target.digest.clone(), up_to_date: true });
            }
        }
        let images = self.images.clone();
        let ingest = Arc::new(tokio::task::spawn_blocking(move || Ingest::begin(images)).await.map_err(join_error)??);
        let limit = Arc::new(Semaphore::new(self.downloads.load(std::sync::atomic::Ordering::Relaxed)));
        let mut tasks = tokio::task::JoinSet::new();
        for (layer, diff_id) in m.layers.iter().cloned().zip(config.rootfs.diff_ids.iter().cloned()) {
            let (this, ingest, repo, out, limit, trace) =
                (self.clone(), ingest.clone(), repo.clone(), out.clone(), limit.clone(), trace.clone());
            let parent = trace.current();
            tasks.spawn(
                async move { this.pull_layer(&trace, parent, &ingest, repo, &layer, &diff_id, &limit, &out).await },
            );
        }
        let mut first_error = None;
        while let Some(r) = tasks.join_next().await {
            match r.map_err(join_error).and_then(|r| r) {
                Ok(()) => {}
                Err(e) => {
                    // One failed layer ends the pull; the others stop where they are.
                    tasks.abort_all();
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let ingest =
            Arc::try_unwrap(ingest).map_err(|_| DistributionError::Invalid("pull still in progress".into()))?;
        let image = IngestedImage {
            manifest: resolved.descriptor.clone(),
            manifest_bytes: resolved.bytes.clone(),
            config_bytes,
            names,
        };
        let loaded = tokio::task::spawn_blocking(move || ingest.commit(image, &())).await.map_err(join_error)??;
        Ok(Pulled { id: loaded.id, digest: resolved.target.digest.clone(), up_to_date: false })
    }

    #[allow(clippy::too_many_arguments)]
    async fn pull_layer(
        &self,
        trace: &Trace,
        parent: engine_telemetry::SpanHandle,
        ingest: &Arc<Ingest>,
        mut repo: Repository,
        layer: &Descriptor,
        diff_id: &Digest,
        limit: &Semaphore,
        out: &Messages,
    ) -> Result<(), DistributionError> {
        let id = short(&layer.digest);
        if ingest.has_blob(&layer.digest) && ingest.has_layer(diff_id) {
            send(out, json!({ "status": "Already exists", "progressDetail": {}, "id": id })).await;
            return Ok(());
        }
        send(out, json!({ "status": "Pulling fs layer", "progressDetail": {}, "id": id })).await;
        let _permit = limit.acquire().await.map_err(|e| DistributionError::Invalid(e.to_string()))?;
        let gate =
            self.inflight.lock().unwrap_or_else(|p| p.into_inner()).entry(layer.digest.clone()).or_default().clone();
        let _fetching = gate.lock().await;
        if !ingest.has_blob(&layer.digest) {
            let span = trace.start_under(names::REGISTRY_BLOB, parent);
            trace.set_kind(span, engine_telemetry::Kind::Client);
            trace.attr(span, "http.request.method", "GET");
            trace.attr(span, "server.address", repo.domain().to_string());
            trace.attr(span, "url.path", format!("/v2/{}/blobs/{}", repo.path(), layer.digest));
            trace.attr(span, "oci.blob.digest", layer.digest.to_string());
            trace.attr(span, "oci.blob.size", layer.size as i64);
            let tp = trace.traceparent(span);
            let result = async {
                let mut w = ingest.blob_writer(layer, None)?;
                let total = layer.size;
                let (tx, id2) = (out.clone(), id.clone());
                let mut next = 0u64;
                let mut progress = move |current: u64| {
                    if current >= next || current == total {
                        next = current + (total / 50).max(256 * 1024);
                        let _ = tx.try_send(json!({
                            "status": "Downloading",
                            "progressDetail": { "current": current, "total": total },
                            "progress": bar(current, total),
                            "id": id2,
                        }));
                    }
                };
                repo.fetch_blob(layer, &mut w, &mut progress, tp.as_deref()).await?;
                self.transferred.pulled(layer.size);
                send(out, json!({ "status": "Verifying Checksum", "progressDetail": {}, "id": id })).await;
                tokio::task::spawn_blocking(move || w.commit()).await.map_err(join_error)??;
                Ok::<_, DistributionError>(())
            }
            .await;
            trace.attr(span, "http.response.body.size", layer.size as i64);
            trace.finish(span, result)?;
            send(out, json!({ "status": "Download complete", "progressDetail": {}, "id": id })).await;
        }
        drop(_fetching);
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&layer.digest);
        let span = trace.start_under(names::IMAGE_UNPACK, parent);
        trace.attr(span, "oci.layer.diff_id", diff_id.to_string());
        let (ingest, layer2, diff2, tx, id2) =
            (ingest.clone(), layer.clone(), diff_id.clone(), out.clone(), id.clone());
        let result = tokio::task::spawn_blocking(move || {
            let progress = |e: ProgressEvent<'_>| {
                if let ProgressEvent::LayerProgress { done, total, .. } = e {
                    let _ = tx.blocking_send(json!({
                        "status": "Extracting",
                        "progressDetail": { "current": done, "total": total },
                        "progress": bar(done, total),
                        "id": id2,
                    }));
                }
            };
            ingest.unpack_layer(&layer2, &diff2, &progress)
        })
        .await
        .map_err(join_error)
        .and_then(|r| r.map_err(DistributionError::from));
        let size = trace.finish(span, result)?;
        trace.attr(span, "oci.layer.unpacked_size", size as i64);
        send(out, json!({ "status": "Pull complete", "progressDetail": {}, "id": id })).await;
        Ok(())
    }

    /// Pushes the image `reference` names (a tag) to its registry: blobs the registry lacks,
    /// then the manifest. Returns the manifest's digest and size.
    pub async fn push(
        &self,
        trace: &Trace,
        reference: &Reference,
        creds: Option<AuthConfig>,
        out: &Messages,
    ) -> Result<(Digest, u64), DistributionError> {
        let image = {
            let images = self.images.clone();
            let r = reference.to_string();
            tokio::task::spawn_blocking(move || images.resolve(&r)).await.map_err(join_error)??
        };
        let tag = reference.tag().unwrap_or("latest").to_string();
        let tp = trace.traceparent(trace.current());
        let mut repo =
            self.client().repository(reference.domain(), reference.path(), creds, true, tp.as_deref()).await?;
        let manifest_bytes = self.images.read_blob(&image.record.manifest.digest)?;
        let config_desc = Descriptor {
            media_type: engine_image::manifest::MEDIA_OCI_CONFIG.into(),
            digest: image.id().clone(),
            size: std::fs::metadata(self.images.blob_path(image.id())).map(|m| m.len()).unwrap_or(0),
            platform: None,
            annotations: Default::default(),
        };
        // A repository of the same registry the image was pulled from holds its blobs: the
        // registry can mount them instead of taking an upload, as dockerd asks.
        let mount_from: Option<String> = image
            .digests
            .iter()
            .find(|r| r.domain() == reference.domain() && r.path() != reference.path())
            .map(|r| r.path().to_string());
        let limit = Arc::new(Semaphore::new(self.uploads.load(std::sync::atomic::Ordering::Relaxed)));
        let mut tasks = tokio::task::JoinSet::new();
        let blobs: Vec<(Descriptor, bool)> =
            image.record.layers.iter().rev().map(|l| (l.blob.clone(), true)).chain([(config_desc, false)]).collect();
        for (desc, is_layer) in blobs {
            let (mut repo, out, limit, path) =
                (repo.clone(), out.clone(), limit.clone(), self.images.blob_path(&desc.digest));
            let parent = trace.current();
            let span = trace.start_under(names::REGISTRY_UPLOAD, parent);
            trace.set_kind(span, engine_telemetry::Kind::Client);
            trace.attr(span, "oci.blob.digest", desc.digest.to_string());
            trace.attr(span, "oci.blob.size", desc.size as i64);
            trace.attr(span, "server.address", reference.domain().to_string());
            let tp = trace.traceparent(span);
            let transferred = self.transferred.clone();
            let mount_from = mount_from.clone();
            tasks.spawn(async move {
                let id = short(&desc.digest);
                if is_layer {
                    send(&out, json!({ "status": "Preparing", "progressDetail": {}, "id": id })).await;
                }
                let _permit = limit.acquire().await.map_err(|e| DistributionError::Invalid(e.to_string()))?;
                if repo.has_blob(&desc.digest, tp.as_deref()).await? {
                    if is_layer {
                        send(&out, json!({ "status": "Layer already exists", "progressDetail": {}, "id": id })).await;
                    }
                    return Ok::<_, DistributionError>(span);
                }
                if let Some(from) = &mount_from {
                    if repo.mount_blob(&desc.digest, from, tp.as_deref()).await? {
                        if is_layer {
                            send(
                                &out,
                                json!({ "status": format!("Mounted from {from}"), "progressDetail": {}, "id": id }),
                            )
                            .await;
                        }
                        return Ok(span);
                    }
                }
                let total = desc.size;
                let (tx, id2) = (out.clone(), id.clone());
                let progress: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(move |current| {
                    if is_layer {
                        let _ = tx.try_send(json!({
                            "status": "Pushing",
                            "progressDetail": { "current": current, "total": total },
                            "progress": bar(current, total),
                            "id": id2,
                        }));
                    }
                });
                repo.upload_blob(&desc, &path, progress, tp.as_deref()).await?;
                transferred.pushed(desc.size);
                if is_layer {
                    send(&out, json!({ "status": "Pushed", "progressDetail": {}, "id": id })).await;
                }
                Ok(span)
            });
        }
        let mut first_error = None;
        while let Some(r) = tasks.join_next().await {
            match r.map_err(join_error).and_then(|r| r) {
                Ok(span) => trace.finish(span, Ok::<(), String>(())).unwrap_or(()),
                Err(e) => {
                    tasks.abort_all();
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let span = trace.start(names::REGISTRY_MANIFEST);
        trace.attr(span, "oci.reference", reference.to_string());
        let tp = trace.traceparent(span);
        let media_type = image.record.manifest.media_type.clone();
        let result = repo.put_manifest(&tag, &media_type, &manifest_bytes, tp.as_deref()).await;
        let digest = trace.finish(span, result)?;
        // The pushed name@digest becomes one of the image's RepoDigests, as dockerd records it.
        let pushed = Reference::parse(&format!("{}@{digest}", reference.name())).map_err(ImageError::from)?;
        let (images, id) = (self.images.clone(), image.id().clone());
        match tokio::task::spawn_blocking(move || images.add_repo_digest(&id, &pushed)).await.map_err(join_error)? {
            // Removed while it was pushed: the push itself stands.
            Ok(()) | Err(ImageError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        // Two messages, as dockerd sends them: clients show the status and take the aux apart
        // (the Docker CLI shows nothing of a message that carries an aux).
        let size = manifest_bytes.len();
        send(out, json!({ "status": format!("{tag}: digest: {digest} size: {size}") })).await;
        send(out, json!({ "progressDetail": {}, "aux": { "Tag": tag, "Digest": digest.to_string(), "Size": size } }))
            .await;
        Ok((digest, manifest_bytes.len() as u64))
    }
}

fn join_error(e: tokio::task::JoinError) -> DistributionError {
    DistributionError::Invalid(format!("pull task failed: {e}"))
}

/// The registry a `docker login` server address names (`https://index.docker.io/v1/` and an
/// empty one are Docker Hub).
pub fn registry_domain(server: &str) -> String {
    let s = server.trim().trim_start_matches("https://").trim_start_matches("http://");
    let host = s.split('/').next().unwrap_or("");
    match host {
        "" | "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".into(),
        h => h.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_and_servers_parse() {
        let p = parse_platform("linux/arm64/v8").unwrap();
        assert_eq!((p.os.as_str(), p.architecture.as_str(), p.variant.as_deref()), ("linux", "arm64", Some("v8")));
        assert!(parse_platform("linux").is_err());
        assert_eq!(host_platform().os, "linux");
        assert_eq!(registry_domain("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_domain("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(registry_domain("http://localhost:5000/v2/"), "localhost:5000");
    }

    #[test]
    fn progress_bars_look_like_dockers() {
        assert!(bar(0, 100).starts_with("[>"));
        assert!(bar(100, 100).starts_with(&format!("[{}]", "=".repeat(50))));
        assert!(bar(1_982_286, 2_500_000).ends_with("1.982MB/2.5MB"), "{}", bar(1_982_286, 2_500_000));
    }
}
