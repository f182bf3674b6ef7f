//! Container state on disk: one directory per container under the runtime's root, holding
//! `state.json` (written atomically) and, between create and start, the `exec.fifo`.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroups::CgroupPaths;

/// Errors about stored state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("invalid container id {0:?}: use letters, digits, '_', '+', '-' and '.' only")]
    BadId(String),
    #[error("state of container {id}: {source}")]
    Io { id: String, source: std::io::Error },
    #[error("state of container {id} is unreadable: {source}")]
    Corrupt { id: String, source: serde_json::Error },
}

/// The status of a container, as the runtime spec names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What the runtime keeps about a container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub oci_version: String,
    pub pid: i32,
    /// Start time of `pid` in clock ticks since boot (from /proc/PID/stat), to detect pid reuse.
    pub pid_start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339 creation time.
    pub created: String,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    pub cgroup: CgroupPaths,
    /// Whether the container has its own pid namespace (killing its init then ends everything).
    pub own_pid_ns: bool,
    /// Whether the container has its own mount namespace; without one, its mounts live in the
    /// host's under the rootfs until delete.
    #[serde(default = "yes")]
    pub own_mount_ns: bool,
    /// The spec's hooks: start runs poststart, delete runs poststop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<oci_spec::runtime::Hooks>,
}

/// What a `create` has made so far, before its `state.json` exists: enough for `delete --force` to
/// undo a create that was killed halfway (its cgroup and the processes in it, host mounts under
/// the rootfs). Written atomically but not durably: it only matters while the machine is up, as
/// the cgroups and mounts it names do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreatingState {
    pub cgroup: CgroupPaths,
    pub rootfs: PathBuf,
    pub own_mount_ns: bool,
}

const CREATING_FILE: &str = "creating.json";

/// The directory that holds every container's state.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

/// Checks a container id the way runc does.
pub fn check_id(id: &str) -> Result<(), StateError> {
    if engine_util::id::valid_container_id(id) {
        Ok(())
    } else {
        Err(StateError::BadId(id.to_string()))
    }
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of container `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Claims `id` by creating its directory; fails if it exists.
    pub fn claim(&self, id: &str) -> Result<PathBuf, StateError> {
        check_id(id)?;
        let io = |source| StateError::Io { id: id.to_string(), source };
        fs::DirBuilder::new().recursive(true).mode(0o711).create(&self.root).map_err(io)?;
        let dir = self.dir(id);
        match fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(StateError::Exists(id.to_string())),
            Err(e) => Err(io(e)),
        }
    }

    /// Writes `state.json` atomically (temp file, fsync, rename).
    pub fn save(&self, state: &ContainerState) -> Result<(), StateError> {
        let io = |source| StateError::Io { id: state.id.clone(), source };
        let dir = self.dir(&state.id);
        let bytes = serde_json::to_vec(state).expect("state serializes: plain data, string keys");
        engine_util::fs::write_atomic_mode(&dir.join("state.json"), &bytes, 0o600).map_err(io)?;
        // the state now says all a delete needs
        let _ = fs::remove_file(dir.join(CREATING_FILE));
        Ok(())
    }

    /// Records what a create of `id` is about to make (see [`CreatingState`]).
    pub fn save_creating(&self, id: &str, creating: &CreatingState) -> Result<(), StateError> {
        let io = |source| StateError::Io { id: id.to_string(), source };
        let path = self.dir(id).join(CREATING_FILE);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(creating).expect("creating state serializes: plain data, string keys");
        fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, &path)).map_err(io)
    }

    /// What an unfinished create of `id` recorded, if anything.
    pub fn load_creating(&self, id: &str) -> Option<CreatingState> {
        serde_json::from_slice(&fs::read(self.dir(id).join(CREATING_FILE)).ok()?).ok()
    }

    /// Reads the state of `id`.
    pub fn load(&self, id: &str) -> Result<ContainerState, StateError> {
        check_id(id)?;
        let path = self.dir(id).join("state.json");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StateError::NotFound(id.to_string())),
            Err(source) => return Err(StateError::Io { id: id.to_string(), source }),
        };
        serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { id: id.to_string(), source })
    }

    /// Ids of every container with a saved state.
    pub fn list(&self) -> Result<Vec<String>, StateError> {
        let mut ids = Vec::new();
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(source) => return Err(StateError::Io { id: String::new(), source }),
        };
        for e in entries.flatten() {
            if e.path().join("state.json").exists() {
                ids.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Removes the directory of `id` and everything in it.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        match fs::remove_dir_all(self.dir(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io { id: id.to_string(), source }),
        }
    }
}

/// Start time (field 22 of /proc/PID/stat) of `pid`, if it exists and is not a zombie.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: fields start after the last ')'
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state); starttime is field 22
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl ContainerState {
    /// Whether the container's init process still exists (and is the same process).
    pub fn alive(&self) -> bool {
        self.pid > 0 && process_start_time(self.pid) == Some(self.pid_start_time)
    }

    /// The current status, derived from the process and the exec fifo.
    pub fn status(&self, dir: &StateDir) -> Status {
        if !self.alive() {
            return Status::Stopped;
        }
        if dir.dir(&self.id).join(crate::container::EXEC_FIFO).exists() {
            return Status::Created;
        }
        if self.frozen() {
            return Status::Paused;
        }
        Status::Running
    }

    fn frozen(&self) -> bool {
        let v2 = self.cgroup.v2;
        if v2 {
            if let Some(p) = self.cgroup.paths.get("unified") {
                return fs::read_to_string(p.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1");
            }
        } else if let Some(p) = self.cgroup.paths.get("freezer") {
            return fs::read_to_string(p.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN");
        }
        false
    }

    /// The state document the runtime spec defines (plus runc's `rootfs`, `created`, `owner`).
    pub fn to_spec_json(&self, status: Status) -> serde_json::Value {
        serde_json::json!({
            "ociVersion": self.oci_version,
            "id": self.id,
            "status": status,
            "pid": if status == Status::Stopped { 0 } else { self.pid },
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": "",
            "annotations": self.annotations,
        })
    }
}

/// Writes `pid` to `path` atomically, as runc's --pid-file does.
pub fn write_pid_file(path: &Path, pid: i32) -> std::io::Result<()> {
    let path = std::path::absolute(path)?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    fs::write(&tmp, pid.to_string())?;
    fs::rename(&tmp, &path)
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id("abc-1.2_x+y").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "a\0"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(process_start_time(std::process::id() as i32).is_some());
    }

    #[test]
    fn rfc3339_shape() {
        let t = engine_util::time::now_rfc3339_nanos();
        assert_eq!(t.len(), 30, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}
