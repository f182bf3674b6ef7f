//! Container records: one JSON file per container under `<root>/containers/`, written
//! atomically (temp file, fsync, rename), so a crash leaves either the old or the new record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use engine_api::v1::Container;

/// Errors of the container store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
}

/// The container records on disk.
pub struct ContainerStore {
    dir: PathBuf,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { op, path: path.to_path_buf(), source }
}

impl ContainerStore {
    pub fn open(root: &Path) -> Result<ContainerStore, StoreError> {
        let dir = root.join("containers");
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        Ok(ContainerStore { dir })
    }

    fn record(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Where a container keeps what outlives its task (its log, once the task is deleted).
    pub fn data_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn write(&self, c: &Container) -> Result<(), StoreError> {
        let path = self.record(&c.id);
        let body = serde_json::json!({
            "id": c.id, "bundle": c.bundle, "labels": c.labels, "created_unix_nanos": c.created_unix_nanos,
        });
        engine_util::fs::write_atomic(&path, body.to_string().as_bytes()).map_err(io("write", &path))
    }

    pub fn create(&self, c: &Container) -> Result<(), StoreError> {
        if self.record(&c.id).exists() {
            return Err(StoreError::Exists(c.id.clone()));
        }
        self.write(c)
    }

    pub fn get(&self, id: &str) -> Result<Container, StoreError> {
        let path = self.record(id);
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound(id.to_string()),
            _ => StoreError::Io { op: "read", path: path.clone(), source: e },
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| StoreError::Io {
            op: "parse",
            path: path.clone(),
            source: e.into(),
        })?;
        let labels: HashMap<String, String> = serde_json::from_value(v["labels"].clone()).unwrap_or_default();
        Ok(Container {
            id: v["id"].as_str().unwrap_or(id).to_string(),
            bundle: v["bundle"].as_str().unwrap_or_default().to_string(),
            labels,
            created_unix_nanos: v["created_unix_nanos"].as_i64().unwrap_or_default(),
        })
    }

    pub fn list(&self) -> Vec<Container> {
        let mut out: Vec<Container> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(str::to_string))
            .filter_map(|id| self.get(&id).ok())
            .collect();
        out.sort_by_key(|c| c.created_unix_nanos);
        out
    }

    pub fn update(&self, c: &Container) -> Result<(), StoreError> {
        self.get(&c.id)?;
        self.write(c)
    }

    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        let path = self.record(id);
        std::fs::remove_file(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound(id.to_string()),
            _ => StoreError::Io { op: "remove", path: path.clone(), source: e },
        })?;
        let _ = std::fs::remove_dir_all(self.data_dir(id));
        Ok(())
    }
}
