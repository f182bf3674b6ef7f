//! Loading and checking a bundle's `config.json` before anything is created.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// Why a bundle cannot be run. Every message names the offending field or file.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config.json: {0}")]
    Invalid(String),
    #[error("rootfs {0} does not exist or is not a directory")]
    MissingRootfs(PathBuf),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
}

/// A loaded, checked spec with its resolved paths.
#[derive(Debug)]
pub struct Bundle {
    /// Absolute bundle directory.
    pub dir: PathBuf,
    /// Absolute rootfs directory.
    pub rootfs: PathBuf,
    pub spec: Spec,
}

/// Reads `<bundle>/config.json` and checks it.
pub fn load(bundle: &Path) -> Result<Bundle, SpecError> {
    load_checked(bundle, true)
}

/// Reads and checks a bundle that is created now and run later: the namespaces it joins by
/// path need not exist yet (a network namespace made just before the start).
pub fn load_for_later(bundle: &Path) -> Result<Bundle, SpecError> {
    load_checked(bundle, false)
}

fn load_checked(bundle: &Path, paths_exist: bool) -> Result<Bundle, SpecError> {
    let dir = std::path::absolute(bundle).map_err(|source| SpecError::Read { path: bundle.into(), source })?;
    let path = dir.join("config.json");
    let bytes = std::fs::read(&path).map_err(|source| SpecError::Read { path: path.clone(), source })?;
    let spec: Spec =
        serde_json::from_slice(&bytes).map_err(|e| SpecError::Parse { path: path.clone(), message: e.to_string() })?;
    let root = spec.root().as_ref().ok_or_else(|| SpecError::Invalid("root is missing".into()))?;
    let rootfs = if root.path().is_absolute() { root.path().clone() } else { dir.join(root.path()) };
    if !rootfs.is_dir() {
        return Err(SpecError::MissingRootfs(rootfs));
    }
    validate(&spec, paths_exist)?;
    Ok(Bundle { dir, rootfs, spec })
}

/// Sysctls that belong to a namespace, and which one.
fn sysctl_namespace(key: &str) -> Option<LinuxNamespaceType> {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        Some(LinuxNamespaceType::Ipc)
    } else if key.starts_with("net.") {
        Some(LinuxNamespaceType::Network)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        Some(LinuxNamespaceType::Uts)
    } else {
        None
    }
}

fn validate(spec: &Spec, paths_exist: bool) -> Result<(), SpecError> {
    let invalid = |m: String| Err(SpecError::Invalid(m));
    let version = spec.version();
    if !version.starts_with("1.") {
        return invalid(format!("ociVersion {version:?} is not supported (want 1.x)"));
    }
    let process = spec.process().as_ref().ok_or_else(|| SpecError::Invalid("process is missing".into()))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return invalid("process.args must name the program to run".into());
    }
    if !process.cwd().is_absolute() {
        return invalid(format!("process.cwd {:?} must be an absolute path", process.cwd()));
    }
    let linux = spec.linux().as_ref().ok_or_else(|| SpecError::Invalid("linux is missing".into()))?;
    let mut seen = HashSet::new();
    let namespaces = linux.namespaces().as_deref().unwrap_or_default();
    for ns in namespaces {
        if !seen.insert(ns.typ()) {
            return invalid(format!("linux.namespaces: {} appears twice", ns.typ()));
        }
        if let Some(p) = ns.path() {
            if !p.is_absolute() {
                return invalid(format!("linux.namespaces: path {p:?} of {} must be absolute", ns.typ()));
            }
            if paths_exist && !p.exists() {
                return invalid(format!("linux.namespaces: {} path {} does not exist", ns.typ(), p.display()));
            }
        }
    }
    let has = |t: LinuxNamespaceType| namespaces.iter().any(|n| n.typ() == t);
    // Without a mount namespace the container shares the host's mounts (as runc allows); it
    // cannot then hide or protect paths.
    if !has(LinuxNamespaceType::Mount)
        && (linux.masked_paths().as_ref().is_some_and(|p| !p.is_empty())
            || linux.readonly_paths().as_ref().is_some_and(|p| !p.is_empty()))
    {
        return invalid("maskedPaths and readonlyPaths need a mount namespace".into());
    }
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts) {
        return invalid("hostname needs a uts namespace".into());
    }
    if spec.domainname().as_ref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts) {
        return invalid("domainname needs a uts namespace".into());
    }
    let user_ns = has(LinuxNamespaceType::User);
    if !user_ns
        && (linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
            || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty()))
    {
        return invalid("uidMappings/gidMappings need a user namespace".into());
    }
    if user_ns
        && namespaces.iter().any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none())
        && (linux.uid_mappings().as_ref().is_none_or(|m| m.is_empty())
            || linux.gid_mappings().as_ref().is_none_or(|m| m.is_empty()))
    {
        return invalid("a new user namespace needs uidMappings and gidMappings".into());
    }
    for key in linux.sysctl().iter().flat_map(|m| m.keys()) {
        match sysctl_namespace(key) {
            Some(ns) if has(ns) => {}
            Some(ns) => return invalid(format!("linux.sysctl {key:?} needs a {ns} namespace")),
            None => return invalid(format!("linux.sysctl {key:?} is not namespaced; it would change the host")),
        }
    }
    if linux.time_offsets().as_ref().is_some_and(|o| !o.is_empty())
        && !namespaces.iter().any(|n| n.typ() == LinuxNamespaceType::Time && n.path().is_none())
    {
        return invalid("linux.timeOffsets need a new time namespace".into());
    }
    if let Some(sc) = linux.seccomp() {
        if crate::seccomp::uses_notify(sc) && sc.listener_path().is_none() {
            return invalid("linux.seccomp: SCMP_ACT_NOTIFY needs a listenerPath".into());
        }
        if let Some(p) = sc.listener_path().as_ref().filter(|p| !p.is_absolute()) {
            return invalid(format!("linux.seccomp.listenerPath {p:?} must be absolute"));
        }
    }
    if let Some(prop) = linux.rootfs_propagation() {
        if !matches!(
            prop.as_str(),
            "" | "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" | "unbindable" | "runbindable"
        ) {
            return invalid(format!("linux.rootfsPropagation {prop:?} is not a propagation type"));
        }
    }
    for m in spec.mounts().iter().flatten() {
        if !m.destination().is_absolute() {
            return invalid(format!("mounts: destination {:?} must be absolute", m.destination()));
        }
    }
    if let Some(path) = linux.cgroups_path() {
        if path.components().any(|c| c == std::path::Component::ParentDir) {
            return invalid(format!("linux.cgroupsPath {path:?} must not contain \"..\""));
        }
    }
    if let Some(r) = linux.resources() {
        crate::cgroups::validate(r)?;
    }
    for r in process.rlimits().iter().flatten() {
        if r.soft() > r.hard() {
            return invalid(format!(
                "process.rlimits: {:?} soft limit {} is above its hard limit {}",
                r.typ(),
                r.soft(),
                r.hard()
            ));
        }
    }
    if let Some(adj) = process.oom_score_adj() {
        if !(-1000..=1000).contains(&adj) {
            return invalid(format!("process.oomScoreAdj {adj} is out of range -1000..1000"));
        }
    }
    Ok(())
}
