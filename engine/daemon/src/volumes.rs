//! Named volumes (the `local` driver): a directory per volume under `<data-root>/volumes`,
//! with its metadata written atomically beside it; created on demand by `-v name:/path`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::daemon::Daemon;
use crate::hostconfig::valid_volume_name;
use crate::http::{empty, json, ApiError, Resp};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Volume {
    pub name: String,
    pub driver: String,
    pub mountpoint: PathBuf,
    pub created_at: String,
    pub labels: BTreeMap<String, String>,
    pub scope: String,
    pub options: BTreeMap<String, String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateBody {
    pub name: String,
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    pub driver_opts: BTreeMap<String, String>,
}

fn meta_path(d: &Daemon, name: &str) -> PathBuf {
    d.volumes_dir().join(name).join("volume.json")
}

fn read(d: &Daemon, name: &str) -> Option<Volume> {
    serde_json::from_slice(&std::fs::read(meta_path(d, name)).ok()?).ok()
}

/// The volume `name`, created (empty) if it does not exist.
pub fn ensure(d: &Daemon, name: &str, labels: BTreeMap<String, String>) -> Result<Volume, ApiError> {
    if !valid_volume_name(name) {
        return Err(ApiError::bad_request(format!("create {name}: \"{name}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed")));
    }
    if let Some(v) = read(d, name) {
        return Ok(v);
    }
    let data = d.volumes_dir().join(name).join("_data");
    std::fs::create_dir_all(&data).map_err(|e| ApiError::internal(format!("creating volume {name}: {e}")))?;
    let v = Volume {
        name: name.to_string(),
        driver: "local".into(),
        mountpoint: data,
        created_at: engine_util::time::now_rfc3339_nanos(),
        labels,
        scope: "local".into(),
        options: BTreeMap::new(),
    };
    let bytes = serde_json::to_vec_pretty(&v).map_err(|e| ApiError::internal(e.to_string()))?;
    engine_util::fs::write_atomic(&meta_path(d, name), &bytes).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(v)
}

pub fn list_all(d: &Daemon) -> Vec<Volume> {
    let mut out: Vec<Volume> = std::fs::read_dir(d.volumes_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| read(d, &e.file_name().to_string_lossy()))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Containers whose mounts name the volume.
fn users(d: &Daemon, name: &str) -> Vec<String> {
    d.containers
        .all()
        .iter()
        .map(|e| e.snapshot())
        .filter(|r| {
            r.host_config.binds.iter().flatten().any(|b| b.split(':').next() == Some(name))
                || r.host_config.mounts.iter().flatten().any(|m| m.typ == "volume" && m.source == name)
        })
        .map(|r| r.id)
        .collect()
}

pub fn create(d: &Daemon, body: CreateBody) -> Result<Resp, ApiError> {
    if !body.driver.is_empty() && body.driver != "local" {
        return Err(ApiError::not_found(format!("plugin \"{}\" not found", body.driver)));
    }
    if !body.driver_opts.is_empty() {
        return Err(ApiError::bad_request("volume driver options are not supported by the local driver here"));
    }
    let name = if body.name.is_empty() { crate::daemon::random_id()? } else { body.name };
    let v = ensure(d, &name, body.labels)?;
    Ok(json(StatusCode::CREATED, &v))
}

pub fn list(d: &Daemon) -> Resp {
    json(StatusCode::OK, &json!({ "Volumes": list_all(d), "Warnings": [] }))
}

pub fn inspect(d: &Daemon, name: &str) -> Result<Resp, ApiError> {
    if !valid_volume_name(name) {
        return Err(ApiError::not_found(format!("get {name}: no such volume")));
    }
    read(d, name)
        .map(|v| json(StatusCode::OK, &v))
        .ok_or_else(|| ApiError::not_found(format!("get {name}: no such volume")))
}

pub fn remove(d: &Daemon, name: &str, force: bool) -> Result<Resp, ApiError> {
    if !valid_volume_name(name) || read(d, name).is_none() {
        return if force {
            Ok(empty(StatusCode::NO_CONTENT))
        } else {
            Err(ApiError::not_found(format!("get {name}: no such volume")))
        };
    }
    let users = users(d, name);
    if !users.is_empty() {
        return Err(ApiError::conflict(format!("remove {name}: volume is in use - [{}]", users.join(", "))));
    }
    let dir = d.volumes_dir().join(name);
    std::fs::remove_dir_all(&dir).map_err(|e| ApiError::internal(format!("remove {}: {e}", dir.display())))?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub fn prune(d: &Daemon) -> Result<Resp, ApiError> {
    let mut deleted = Vec::new();
    let mut reclaimed = 0u64;
    for v in list_all(d) {
        if users(d, &v.name).is_empty() {
            reclaimed += dir_size(&v.mountpoint);
            let dir = d.volumes_dir().join(&v.name);
            std::fs::remove_dir_all(&dir).map_err(|e| ApiError::internal(format!("remove {}: {e}", dir.display())))?;
            deleted.push(v.name);
        }
    }
    Ok(json(StatusCode::OK, &json!({ "VolumesDeleted": deleted, "SpaceReclaimed": reclaimed })))
}

pub fn dir_size(p: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if m.is_dir() {
            stack.extend(std::fs::read_dir(&p).into_iter().flatten().flatten().map(|e| e.path()));
        } else {
            total += m.len();
        }
    }
    total
}
