//! A container's files as dockerd serves them: its changes (`GET /containers/{id}/changes`),
//! its root filesystem as a tar (`GET /containers/{id}/export`), a new image of it
//! (`POST /commit`), and copies out of and into it (`HEAD/GET/PUT /containers/{id}/archive`).
//!
//! Owns: Docker's rules for these (which paths are the container's mount points and so not its
//! changes, how a commit's configuration is merged from the caller's and the container's, which
//! mount a copied path is in). It writes into a container only through `PUT …/archive`, and
//! there only through engine-image's copy, which keeps every write inside the root.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::StatusCode;

use engine_docker_api::ContainerConfig;
use engine_image::changes::CommitOptions;

use crate::events::{Event, Events};
use crate::http::{self, ApiError, Query, Resp};
use crate::records::{ContainerRecord, ContainerStore, Entry};

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, engine_image::ImageError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(e.to_string()))?.map_err(ApiError::from)
}

/// What these routes need of the daemon: the image store (snapshots), the container records
/// (their bundles) and the event bus.
pub struct Files<'a> {
    pub images: &'a Arc<engine_image::ImageStore>,
    pub containers: &'a ContainerStore,
    pub events: &'a Events,
}

impl Files<'_> {
    /// The container's mount points (`/proc`, `/etc/hosts`, its volumes…): made for its mounts,
    /// not by it, so neither its changes nor a commit show them, as dockerd's init layer hides
    /// them.
    fn mount_points(&self, id: &str) -> HashSet<PathBuf> {
        self.spec_mounts(id).iter().map(|m| m.destination().clone()).filter(|p| p != Path::new("/")).collect()
    }

    fn spec_mounts(&self, id: &str) -> Vec<oci_spec::runtime::Mount> {
        let spec = oci_spec::runtime::Spec::load(self.containers.dir(id).join("config.json"));
        spec.ok().and_then(|s| s.mounts().clone()).unwrap_or_default()
    }

    fn event(&self, rec: &ContainerRecord, action: &str) {
        let labels = rec.config.labels.clone().unwrap_or_default();
        self.events.publish(Event::container(&rec.id, &rec.name, &rec.image, &labels, action, &[]));
    }
}

/// `GET /containers/{id}/changes`.
pub async fn changes(f: &Files<'_>, e: &Arc<Entry>) -> Result<Resp, ApiError> {
    let id = e.snapshot().id;
    let skip = f.mount_points(&id);
    let images = f.images.clone();
    let changes = blocking(move || images.snapshot_changes(&id, &skip)).await?;
    Ok(http::json(StatusCode::OK, &changes))
}

/// `GET /containers/{id}/export`: the root filesystem as a tar stream.
pub async fn export(f: &Files<'_>, e: &Arc<Entry>) -> Result<Resp, ApiError> {
    let rec = e.snapshot();
    if f.images.snapshot(&rec.id)?.is_none() {
        return Err(ApiError::internal(format!("container {} has no root filesystem", rec.id)));
    }
    let (tx, body) = http::channel_body(16);
    let images = f.images.clone();
    let id = rec.id.clone();
    tokio::task::spawn_blocking(move || {
        let w = std::io::BufWriter::with_capacity(256 * 1024, http::ChannelWriter(tx));
        // An error mid-stream can only cut the tar short; the client sees it truncated.
        let _ = images.export_snapshot(&id, w);
    });
    let mut r = Resp::new(body);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    f.event(&rec, "export");
    Ok(r)
}

/// What `POST /commit?container=…&repo=…&tag=…&comment=…&author=…&changes=…` with the caller's
/// Config as the body makes of container `rec`: the caller's Config (the container's when none
/// came) with the changes applied, merged over the container's as dockerd merges it.
pub fn commit_options(
    rec: &ContainerRecord,
    q: &Query,
    body: Option<ContainerConfig>,
) -> Result<CommitOptions, ApiError> {
    let mut config = crate::runconfig::run_config(body.as_ref().unwrap_or(&rec.config));
    for change in q.all("changes") {
        engine_image::archive::apply_change(&mut config, &change)?;
    }
    crate::runconfig::merge(&mut config, &crate::runconfig::run_config(&rec.config));
    Ok(CommitOptions {
        reference: crate::images::repo_tag(q)?,
        config,
        author: q.get("author").map(str::to_string),
        comment: q.get("comment").map(str::to_string),
        created_by: Some(created_by(rec)),
    })
}

impl Files<'_> {
    /// A new image of container `rec`'s changes (its mount points left out).
    pub async fn commit_image(
        &self,
        rec: &ContainerRecord,
        opts: CommitOptions,
    ) -> Result<engine_image::Digest, ApiError> {
        let images = self.images.clone();
        let (key, skip) = (rec.id.clone(), self.mount_points(&rec.id));
        blocking(move || images.commit_snapshot(&key, &skip, &opts, &())).await
    }
}

/// The root a container path is in and the path within it: the source of a bind mount (a
/// volume, a bind, `/etc/hosts`) when the path is at or below its destination, else the
/// container's root filesystem (mounted first: after a reboot it may not be). Whether the
/// root is read-only for the container comes with it.
fn locate(f: &Files<'_>, rec: &ContainerRecord, path: &str) -> Result<(PathBuf, String, bool), ApiError> {
    let wanted = std::path::Path::new("/").join(path);
    let binds = f.spec_mounts(&rec.id);
    let bind = binds
        .iter()
        .filter(|m| m.options().iter().flatten().any(|o| o == "bind" || o == "rbind"))
        .filter(|m| wanted.starts_with(m.destination()))
        .max_by_key(|m| m.destination().components().count());
    if let Some(m) = bind {
        let source = m.source().clone().unwrap_or_default();
        let read_only = m.options().iter().flatten().any(|o| o == "ro");
        let rest = wanted.strip_prefix(m.destination()).unwrap_or(std::path::Path::new(""));
        if rest.as_os_str().is_empty() && !source.is_dir() {
            // a file mounted on its own: its directory is the root, its name the path
            let name = source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            return Ok((
                source.parent().unwrap_or(std::path::Path::new("/")).to_path_buf(),
                format!("/{name}"),
                read_only,
            ));
        }
        let trailing = if path.ends_with("/.") {
            "/."
        } else if path.ends_with('/') {
            "/"
        } else {
            ""
        };
        return Ok((source, format!("/{}{trailing}", rest.display()), read_only));
    }
    f.images.mount_snapshot(&rec.id)?;
    let snapshot = f
        .images
        .snapshot(&rec.id)?
        .ok_or_else(|| ApiError::internal(format!("container {} has no root filesystem", rec.id)))?;
    Ok((snapshot.rootfs, path.to_string(), rec.host_config.readonly_rootfs))
}

fn path_param(q: &Query) -> Result<String, ApiError> {
    match q.get("path") {
        Some(p) if !p.is_empty() => Ok(p.to_string()),
        _ => Err(ApiError::bad_request("path is required")),
    }
}

/// `HEAD /containers/{id}/archive?path=…` (`stat_only`) and `GET`: the path's stat in
/// `X-Docker-Container-Path-Stat`, and for GET the path as a tar stream.
pub async fn archive_get(f: &Files<'_>, e: &Arc<Entry>, q: &Query, stat_only: bool) -> Result<Resp, ApiError> {
    use base64::Engine as _;
    let rec = e.snapshot();
    let path = path_param(q)?;
    let (root, inner, _) = locate(f, &rec, &path)?;
    let (root2, inner2) = (root.clone(), inner.clone());
    let (_, st) = tokio::task::spawn_blocking(move || engine_image::copy::stat(&root2, std::path::Path::new(&inner2)))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|err| match err {
            engine_image::copy::CopyError::NotFound(_) => ApiError::not_found(format!(
                "Could not find the file {path} in container {}",
                rec.name.trim_start_matches('/')
            )),
            other => other.into(),
        })?;
    let header = base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&st).unwrap_or_default());
    let mut r = if stat_only {
        http::empty(StatusCode::OK)
    } else {
        let (tx, body) = http::channel_body(16);
        tokio::task::spawn_blocking(move || {
            let w = std::io::BufWriter::with_capacity(256 * 1024, http::ChannelWriter(tx));
            // An error mid-stream can only cut the tar short; the client sees it truncated.
            let _ = engine_image::copy::copy_out(&root, &inner, w);
        });
        let mut r = Resp::new(body);
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
        r
    };
    if let Ok(v) = HeaderValue::from_str(&header) {
        r.headers_mut().insert("X-Docker-Container-Path-Stat", v);
    }
    Ok(r)
}

/// `PUT /containers/{id}/archive?path=DIR&noOverwriteDirNonDir=…&copyUIDGID=…`: extracts the
/// tar body into DIR, which must exist; `copyUIDGID` gives everything to the container's user.
pub async fn archive_put(f: &Files<'_>, e: &Arc<Entry>, q: &Query, body: http::RequestBody) -> Result<Resp, ApiError> {
    let rec = e.snapshot();
    let path = path_param(q)?;
    let (root, inner, read_only) = locate(f, &rec, &path)?;
    if read_only {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "container rootfs is marked read-only"));
    }
    let owner = if q.flag("copyUIDGID") {
        let rootfs = f.images.snapshot(&rec.id)?.map(|s| s.rootfs).unwrap_or_default();
        let u = engine_image::spec::resolve_user(&rootfs, &rec.config.user)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Some((u.uid, u.gid))
    } else {
        None
    };
    let opts = engine_image::copy::CopyInOptions {
        no_overwrite_dir_non_dir: q.flag("noOverwriteDirNonDir"),
        owner,
        mode: None,
    };
    let reader = http::BodyReader::new(body);
    tokio::task::spawn_blocking(move || engine_image::copy::copy_in(&root, &inner, reader, &opts))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(http::empty(StatusCode::OK))
}

/// What dockerd's history says made a committed layer: the container's command.
fn created_by(rec: &ContainerRecord) -> String {
    std::iter::once(rec.path.as_str()).chain(rec.args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
}
