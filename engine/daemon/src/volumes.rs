//! Named volumes (the `local` driver): a directory per volume under `<data-root>/volumes`,
//! with its metadata written atomically beside it; created on demand by `-v name:/path`.
//! [`VolumeStore`] owns them; the handlers below answer the API.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::http::{empty, json, ApiError, Resp};
use crate::records::ContainerStore;

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

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("create {0}: \"{0}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed")]
    InvalidName(String),
    #[error("create {0}: {1}")]
    NameTooLong(String, engine_util::name::NameError),
    #[error("get {0}: no such volume")]
    NotFound(String),
    #[error("remove {name}: volume is in use - [{}]", users.join(", "))]
    InUse { name: String, users: Vec<String> },
    #[error("volume {name}: {source}")]
    Io { name: String, source: std::io::Error },
}

/// `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, as Docker names local volumes, within the engine's length bound
/// (a volume's name is its directory's name).
pub fn check_volume_name(n: &str) -> Result<(), VolumeError> {
    use engine_util::name::{check_name, shown, NameError};
    match check_name(n, 2) {
        Ok(()) => Ok(()),
        Err(NameError::Characters) => Err(VolumeError::InvalidName(n.to_string())),
        Err(why) => Err(VolumeError::NameTooLong(shown(n), why)),
    }
}

/// The `local` driver's volumes: a directory per volume under its root, with its metadata
/// (`volume.json`, written atomically) beside the data (`_data`).
///
/// Owns: volume directories. It must never decide whether a volume is used (the caller names
/// its users) or know HTTP.
pub struct VolumeStore {
    dir: PathBuf,
}

impl VolumeStore {
    pub fn new(dir: PathBuf) -> VolumeStore {
        VolumeStore { dir }
    }

    fn meta_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("volume.json")
    }

    /// Where volume `name`'s data is.
    pub fn data_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("_data")
    }

    /// The volume `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Volume> {
        check_volume_name(name).ok()?;
        serde_json::from_slice(&std::fs::read(self.meta_path(name)).ok()?).ok()
    }

    /// The volume `name`, created (empty) if it does not exist.
    pub fn ensure(&self, name: &str, labels: BTreeMap<String, String>) -> Result<Volume, VolumeError> {
        check_volume_name(name)?;
        if let Some(v) = self.get(name) {
            return Ok(v);
        }
        let io = |source| VolumeError::Io { name: name.to_string(), source };
        let data = self.data_path(name);
        std::fs::create_dir_all(&data).map_err(io)?;
        let v = Volume {
            name: name.to_string(),
            driver: "local".into(),
            mountpoint: data,
            created_at: engine_util::time::now_rfc3339_nanos(),
            labels,
            scope: "local".into(),
            options: BTreeMap::new(),
        };
        let bytes = serde_json::to_vec_pretty(&v).map_err(|e| io(std::io::Error::other(e)))?;
        engine_util::fs::write_atomic(&self.meta_path(name), &bytes).map_err(io)?;
        Ok(v)
    }

    /// Every volume, by name.
    pub fn list(&self) -> Vec<Volume> {
        let mut out: Vec<Volume> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| self.get(&e.file_name().to_string_lossy()))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Removes volume `name` and its data; refused while `users` (container ids) use it.
    pub fn remove(&self, name: &str, users: Vec<String>) -> Result<(), VolumeError> {
        if self.get(name).is_none() {
            return Err(VolumeError::NotFound(name.to_string()));
        }
        if !users.is_empty() {
            return Err(VolumeError::InUse { name: name.to_string(), users });
        }
        std::fs::remove_dir_all(self.dir.join(name))
            .map_err(|source| VolumeError::Io { name: name.to_string(), source })
    }
}

/// Containers whose mounts name the volume.
pub fn users(containers: &ContainerStore, name: &str) -> Vec<String> {
    containers
        .all()
        .iter()
        .map(|e| e.snapshot())
        .filter(|r| {
            r.host_config.binds.iter().flatten().any(|b| b.split(':').next() == Some(name))
                || r.host_config.mounts.iter().flatten().any(|m| m.typ == "volume" && m.source == name)
                || r.anonymous_volumes.iter().any(|(v, _)| v == name)
        })
        .map(|r| r.id)
        .collect()
}

// ---- the API's handlers ---------------------------------------------------------------------

pub fn create(volumes: &VolumeStore, body: CreateBody) -> Result<Resp, ApiError> {
    if !body.driver.is_empty() && body.driver != "local" {
        return Err(ApiError::not_found(format!("plugin \"{}\" not found", body.driver)));
    }
    if !body.driver_opts.is_empty() {
        return Err(ApiError::bad_request("volume driver options are not supported by the local driver here"));
    }
    let name = if body.name.is_empty() { crate::http::new_id()? } else { body.name };
    let v = volumes.ensure(&name, body.labels)?;
    Ok(json(StatusCode::CREATED, &v))
}

/// `GET /volumes`, filters `name` (substring), `driver`, `label` (`key` or `key=value`) and
/// `dangling` (used by no container), as dockerd's.
pub fn list(volumes: &VolumeStore, containers: &ContainerStore, q: &crate::http::Query) -> Result<Resp, ApiError> {
    let f = crate::http::Filters::parse(q)?;
    f.only(&["name", "driver", "label", "dangling"])?;
    let out: Vec<Volume> = volumes
        .list()
        .into_iter()
        .filter(|v| {
            f.get("name").iter().all(|x| v.name.contains(x.as_str()))
                && f.get("driver").iter().all(|x| v.driver == *x)
                && f.get("label").iter().all(|l| match l.split_once('=') {
                    Some((k, val)) => v.labels.get(k).map(String::as_str) == Some(val),
                    None => v.labels.contains_key(l),
                })
                && f.get("dangling").iter().all(|x| (x == "true" || x == "1") == users(containers, &v.name).is_empty())
        })
        .collect();
    Ok(json(StatusCode::OK, &json!({ "Volumes": out, "Warnings": [] })))
}

pub fn inspect(volumes: &VolumeStore, name: &str) -> Result<Resp, ApiError> {
    let v = volumes.get(name).ok_or_else(|| VolumeError::NotFound(name.to_string()))?;
    Ok(json(StatusCode::OK, &v))
}

pub fn remove(volumes: &VolumeStore, containers: &ContainerStore, name: &str, force: bool) -> Result<Resp, ApiError> {
    match volumes.remove(name, users(containers, name)) {
        Ok(()) => Ok(empty(StatusCode::NO_CONTENT)),
        Err(VolumeError::NotFound(_)) if force => Ok(empty(StatusCode::NO_CONTENT)),
        Err(e) => Err(e.into()),
    }
}

pub fn prune(volumes: &VolumeStore, containers: &ContainerStore) -> Result<Resp, ApiError> {
    let mut deleted = Vec::new();
    let mut reclaimed = 0u64;
    for v in volumes.list() {
        let size = engine_util::fs::dir_size(&v.mountpoint);
        match volumes.remove(&v.name, users(containers, &v.name)) {
            Ok(()) => {
                reclaimed += size;
                deleted.push(v.name);
            }
            Err(VolumeError::InUse { .. } | VolumeError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(json(StatusCode::OK, &json!({ "VolumesDeleted": deleted, "SpaceReclaimed": reclaimed })))
}

impl From<VolumeError> for ApiError {
    fn from(e: VolumeError) -> Self {
        let status = match &e {
            VolumeError::InvalidName(_) | VolumeError::NameTooLong(..) => StatusCode::BAD_REQUEST,
            VolumeError::NotFound(_) => StatusCode::NOT_FOUND,
            VolumeError::InUse { .. } => StatusCode::CONFLICT,
            VolumeError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_made_listed_kept_while_used_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let vols = VolumeStore::new(dir.path().join("volumes"));
        assert!(vols.list().is_empty());
        let labels = BTreeMap::from([("team".to_string(), "a".to_string())]);
        let v = vols.ensure("data", labels.clone()).unwrap();
        assert_eq!((v.driver.as_str(), v.mountpoint.clone()), ("local", dir.path().join("volumes/data/_data")));
        assert!(v.mountpoint.is_dir());
        std::fs::write(v.mountpoint.join("f"), "x").unwrap();
        // ensuring it again keeps it as it was
        let again = vols.ensure("data", BTreeMap::new()).unwrap();
        assert_eq!((again.labels, again.created_at), (labels, v.created_at));
        assert!(matches!(vols.ensure("../x", BTreeMap::new()), Err(VolumeError::InvalidName(_))));
        assert!(vols.get("../x").is_none());
        vols.ensure("b2", BTreeMap::new()).unwrap();
        assert_eq!(vols.list().iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["b2", "data"]);
        let err = vols.remove("data", vec!["c1".into()]).unwrap_err();
        assert_eq!(err.to_string(), "remove data: volume is in use - [c1]");
        assert!(v.mountpoint.join("f").exists(), "a used volume keeps its data");
        vols.remove("data", Vec::new()).unwrap();
        assert!(!dir.path().join("volumes/data").exists());
        assert!(matches!(vols.remove("data", Vec::new()), Err(VolumeError::NotFound(_))));
    }
}
