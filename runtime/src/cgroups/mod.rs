//! Control groups: detection of the host's layout (v1, v2, or hybrid), creation of a container's
//! cgroup, resource limits, membership, and removal.
//!
//! The layout is read from `/proc/self/mountinfo`, never assumed. On a hybrid host (v1 controllers
//! plus a v2 tree without controllers) the container also gets a cgroup in the v2 tree, so that its
//! processes have their own v2 cgroup id (what eBPF's `bpf_get_current_cgroup_id` reports).

pub mod devices_bpf;
mod stats;
mod v1;
mod v2;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

/// Errors from cgroup operations.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroups: cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cgroups: cannot write {value:?} to {path}: {source}")]
    Write { path: PathBuf, value: String, source: io::Error },
    #[error("cgroups: cannot create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cgroups: cannot remove {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("cgroups: no cgroup filesystem is mounted")]
    NotMounted,
    #[error("cgroups: invalid cgroupsPath {0:?}: it must not contain \"..\"")]
    BadPath(String),
    #[error("cgroups: {0}")]
    Invalid(String),
    #[error("cgroups: {0} is not supported on this host")]
    Unsupported(String),
}

type Result<T> = std::result::Result<T, CgroupError>;

/// How cgroups are mounted on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Pure v2: one unified hierarchy.
    V2 { root: PathBuf },
    /// v1 controllers, each hierarchy at its mount point (keyed by its controller list, e.g.
    /// "memory", "cpu,cpuacct", "name=systemd"), plus the v2 tree of a hybrid host when mounted.
    V1 { hierarchies: BTreeMap<String, PathBuf>, unified: Option<PathBuf> },
}

impl Layout {
    /// Reads the layout from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Layout> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(path).map_err(|source| CgroupError::Read { path: path.into(), source })?;
        Self::parse_mountinfo(&text)
    }

    fn parse_mountinfo(text: &str) -> Result<Layout> {
        let mut hierarchies = BTreeMap::new();
        let mut unified = None;
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else { continue };
            let mount_point = left.split(' ').nth(4).unwrap_or_default();
            let mut r = right.split(' ');
            let fstype = r.next().unwrap_or_default();
            let _source = r.next();
            let super_opts = r.next().unwrap_or_default();
            match fstype {
                "cgroup2" => {
                    unified.get_or_insert_with(|| PathBuf::from(unescape_mountinfo(mount_point)));
                }
                "cgroup" => {
                    let controllers: Vec<&str> = super_opts
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && (!o.contains('=') || o.starts_with("name=")))
                        .filter(|o| {
                            !matches!(
                                *o,
                                "relatime"
                                    | "noexec"
                                    | "nosuid"
                                    | "nodev"
                                    | "clone_children"
                                    | "xattr"
                                    | "noprefix"
                                    | "cpuset_v2_mode"
                            )
                        })
                        .collect();
                    if !controllers.is_empty() {
                        hierarchies
                            .entry(controllers.join(","))
                            .or_insert_with(|| PathBuf::from(unescape_mountinfo(mount_point)));
                    }
                }
                _ => {}
            }
        }
        if hierarchies.is_empty() {
            return match unified {
                Some(root) => Ok(Layout::V2 { root }),
                None => Err(CgroupError::NotMounted),
            };
        }
        Ok(Layout::V1 { hierarchies, unified })
    }

    /// Whether this is a pure v2 host.
    pub fn is_v2(&self) -> bool {
        matches!(self, Layout::V2 { .. })
    }
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Where a container's cgroup lives in every hierarchy, and which directories the runtime created
/// (so that removal takes away exactly those and nothing shared).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CgroupPaths {
    /// Hierarchy key ("unified" for v2) → absolute directory of the container's cgroup.
    pub paths: BTreeMap<String, PathBuf>,
    /// Directories created by the runtime, parents before children.
    pub created: Vec<PathBuf>,
    /// Whether `paths["unified"]` is a v2 cgroup that carries the controllers (pure v2).
    pub v2: bool,
}

/// Manages one container's cgroup across the hierarchies of the host.
#[derive(Debug)]
pub struct CgroupManager {
    paths: CgroupPaths,
}

/// Splits and checks a `cgroupsPath`: no `..`, no empty result.
fn clean_relative(cgroups_path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in cgroups_path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(CgroupError::BadPath(cgroups_path.display().to_string()))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(CgroupError::BadPath(cgroups_path.display().to_string()));
    }
    Ok(out)
}

/// This process's own cgroup in each hierarchy, from `/proc/self/cgroup` (key "" for v2).
fn own_cgroups() -> Result<BTreeMap<String, PathBuf>> {
    let path = Path::new("/proc/self/cgroup");
    let text = fs::read_to_string(path).map_err(|source| CgroupError::Read { path: path.into(), source })?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_id, controllers, p) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        out.insert(controllers.to_string(), PathBuf::from(p.trim_start_matches('/')));
    }
    Ok(out)
}

impl CgroupManager {
    /// Computes the paths for `cgroups_path` (absolute: from each hierarchy's root; relative: under
    /// this process's own cgroup in each hierarchy). Nothing is created yet.
    pub fn plan(layout: &Layout, cgroups_path: &Path) -> Result<CgroupManager> {
        let rel = clean_relative(cgroups_path)?;
        let own = if cgroups_path.is_absolute() { BTreeMap::new() } else { own_cgroups()? };
        let base = |key: &str| own.get(key).cloned().unwrap_or_default();
        let mut paths = BTreeMap::new();
        let v2 = match layout {
            Layout::V2 { root } => {
                paths.insert("unified".to_string(), root.join(base("")).join(&rel));
                true
            }
            Layout::V1 { hierarchies, unified } => {
                for (key, mount) in hierarchies {
                    paths.insert(key.clone(), mount.join(base(key)).join(&rel));
                }
                if let Some(u) = unified {
                    paths.insert("unified".to_string(), u.join(base("")).join(&rel));
                }
                false
            }
        };
        Ok(CgroupManager { paths: CgroupPaths { paths, created: Vec::new(), v2 } })
    }

    /// A manager for an existing container's cgroup.
    pub fn from_paths(paths: CgroupPaths) -> CgroupManager {
        CgroupManager { paths }
    }

    /// The paths, for the container's state.
    pub fn paths(&self) -> &CgroupPaths {
        &self.paths
    }

    /// The directory of hierarchy `key` ("memory", "unified", ...), if present.
    pub fn path(&self, key: &str) -> Option<&Path> {
        self.paths.paths.get(key).map(PathBuf::as_path)
    }

    /// The directory of the hierarchy that has controller `controller` (v1), or the unified one.
    pub fn controller_path(&self, controller: &str) -> Option<&Path> {
        if self.paths.v2 {
            return self.path("unified");
        }
        self.paths.paths.iter().find(|(k, _)| k.split(',').any(|c| c == controller)).map(|(_, p)| p.as_path())
    }

    /// The v2 directory (pure v2 or the hybrid tree), if any: what `CLONE_INTO_CGROUP` takes.
    pub fn unified_path(&self) -> Option<&Path> {
        self.path("unified")
    }

    /// The paths with, as created, every directory `create` would make now (the missing ones,
    /// parents first): what a record written before `create` must name so that a create killed
    /// halfway can be undone.
    pub fn planned(&self) -> CgroupPaths {
        let mut planned = self.paths.clone();
        for path in self.paths.paths.values() {
            let mut missing: Vec<PathBuf> =
                path.ancestors().take_while(|p| !p.exists()).map(Path::to_path_buf).collect();
            missing.reverse();
            for dir in missing {
                if !planned.created.contains(&dir) {
                    planned.created.push(dir);
                }
            }
        }
        planned
    }

    /// Creates the cgroup in every hierarchy and applies `resources`. On error, whatever was
    /// created is removed again.
    pub fn create(&mut self, resources: Option<&LinuxResources>) -> Result<()> {
        let result = self.create_inner(resources);
        if result.is_err() {
            let _ = self.destroy();
        }
        result
    }

    fn create_inner(&mut self, resources: Option<&LinuxResources>) -> Result<()> {
        let entries: Vec<(String, PathBuf)> = self.paths.paths.iter().map(|(k, p)| (k.clone(), p.clone())).collect();
        for (key, path) in &entries {
            let created = mkdir_all(path, &mut |dir| {
                if !self.paths.v2 && key.split(',').any(|c| c == "cpuset") {
                    v1::init_cpuset(dir)?;
                }
                Ok(())
            })?;
            self.paths.created.extend(created);
        }
        if self.paths.v2 {
            v2::enable_controllers(self.path("unified").expect("v2 manager has a unified path; set in plan"))?;
        }
        if let Some(r) = resources {
            self.apply(r)?;
        }
        Ok(())
    }

    /// Applies resource limits to the existing cgroup.
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        if self.paths.v2 {
            v2::apply(self.path("unified").expect("v2 manager has a unified path; set in plan"), r)
        } else {
            if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
                return Err(CgroupError::Unsupported("linux.resources.unified (needs cgroup v2)".into()));
            }
            v1::apply(self, r)
        }
    }

    /// Moves process `pid` into the cgroup in every hierarchy; `except_unified` when it was
    /// born there (`CLONE_INTO_CGROUP`).
    ///
    /// On v1 the first attach waits for an RCU grace period in the kernel (about 10 ms here,
    /// the largest cost of a start on a v1 host); the following ones ride on it. Writing the
    /// hierarchies concurrently measured no faster, so they are written in turn.
    pub fn add_pid(&self, pid: i32, except_unified: bool) -> Result<()> {
        let value = pid.to_string();
        for (key, path) in &self.paths.paths {
            if !(except_unified && key == "unified") {
                write_file(&path.join("cgroup.procs"), &value)?;
            }
        }
        Ok(())
    }

    /// The processes in the cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let path = self
            .controller_path("pids")
            .or_else(|| self.paths.paths.values().next().map(PathBuf::as_path))
            .ok_or(CgroupError::NotMounted)?
            .join("cgroup.procs");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(CgroupError::Read { path, source }),
        };
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Sends `signal` to every process in the cgroup.
    pub fn signal_all(&self, signal: i32) -> Result<()> {
        for pid in self.pids()? {
            // SAFETY: kill has no memory effects; a vanished pid gives ESRCH, which is fine.
            unsafe { libc::kill(pid, signal) };
        }
        Ok(())
    }

    /// Freezes (pause) or thaws (resume) every process in the cgroup, and waits until the kernel
    /// says it is done: v1 `freezer.state`, v2 `cgroup.freeze` and `cgroup.events`.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (file, value, done_file, done): (PathBuf, &str, PathBuf, &str) = if self.paths.v2 {
            let dir = self.path("unified").ok_or(CgroupError::NotMounted)?;
            (
                dir.join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
                dir.join("cgroup.events"),
                if frozen { "frozen 1" } else { "frozen 0" },
            )
        } else {
            let dir = self
                .controller_path("freezer")
                .ok_or_else(|| CgroupError::Unsupported("the freezer controller".into()))?;
            let v = if frozen { "FROZEN" } else { "THAWED" };
            (dir.join("freezer.state"), v, dir.join("freezer.state"), v)
        };
        loop {
            // v1 may report FREEZING for a while; writing again nudges tasks that were forking
            write_file(&file, value)?;
            if read_file(&done_file)?.lines().any(|l| l.trim() == done) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = write_file(&file, if self.paths.v2 { "0" } else { "THAWED" });
                return Err(CgroupError::Invalid(format!("{} did not reach {done:?}", done_file.display())));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Removes the cgroup directories the runtime created (leaf first), waiting up to `deadline`
    /// for them to become empty. Directories that were there before are left alone.
    pub fn destroy(&self) -> Result<()> {
        let wait_until = Instant::now() + Duration::from_secs(5);
        // leaves first: every container path, then created parents in reverse
        let mut dirs: Vec<&PathBuf> = self.paths.paths.values().filter(|p| self.paths.created.contains(p)).collect();
        dirs.extend(self.paths.created.iter().rev().filter(|p| !self.paths.paths.values().any(|q| q == *p)));
        let mut first_error = None;
        for dir in dirs {
            let leaf = self.paths.paths.values().any(|q| q == dir);
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    // a shared parent still in use by another container stays
                    Err(_) if !leaf => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < wait_until => {
                        // processes are still exiting; the kernel empties the cgroup shortly
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(source) => {
                        first_error.get_or_insert(CgroupError::Remove { path: dir.clone(), source });
                        break;
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Creates `path` and missing parents; `init` runs on each directory created. Returns the created
/// directories, parents first.
fn mkdir_all(path: &Path, init: &mut dyn FnMut(&Path) -> Result<()>) -> Result<Vec<PathBuf>> {
    // A parent another runtime made may be removed by it (when its container goes) while this
    // one creates a child in it: then the whole path is made again.
    let mut attempts = 0;
    loop {
        match mkdir_all_once(path, init) {
            Err(CgroupError::Create { source, .. }) if source.kind() == io::ErrorKind::NotFound && attempts < 5 => {
                attempts += 1
            }
            r => return r,
        }
    }
}

fn mkdir_all_once(path: &Path, init: &mut dyn FnMut(&Path) -> Result<()>) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut p = path;
    while !p.exists() {
        missing.push(p.to_path_buf());
        p = match p.parent() {
            Some(parent) => parent,
            None => break,
        };
    }
    let mut created = Vec::new();
    for dir in missing.into_iter().rev() {
        match fs::create_dir(&dir) {
            Ok(()) => {
                created.push(dir.clone());
                if let Err(e) = init(&dir) {
                    for d in created.iter().rev() {
                        let _ = fs::remove_dir(d);
                    }
                    return Err(e);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                // undo what we made
                for d in created.iter().rev() {
                    let _ = fs::remove_dir(d);
                }
                return Err(CgroupError::Create { path: dir, source });
            }
        }
    }
    Ok(created)
}

pub(crate) fn write_file(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|source| CgroupError::Write { path: path.into(), value: value.into(), source })
}

pub(crate) fn read_file(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read { path: path.into(), source })
}

/// Checks resource values that the kernel would reject or misread, so that bad input fails
/// before anything is created.
pub fn validate(r: &LinuxResources) -> Result<()> {
    let bad = |what: &str, why: &str| Err(CgroupError::Invalid(format!("linux.resources.{what}: {why}")));
    if let Some(m) = r.memory() {
        for (name, v) in
            [("memory.limit", m.limit()), ("memory.reservation", m.reservation()), ("memory.swap", m.swap())]
        {
            if let Some(v) = v {
                if v < -1 {
                    return bad(name, &format!("{v} is out of range (want a byte count, or -1 for unlimited)"));
                }
            }
        }
        if let (Some(limit), Some(swap)) = (m.limit(), m.swap()) {
            if limit > 0 && swap > 0 && swap < limit {
                return bad("memory.swap", &format!("{swap} is below memory.limit {limit} (swap is memory plus swap)"));
            }
        }
        if let Some(s) = m.swappiness() {
            if s > 100 {
                return bad("memory.swappiness", &format!("{s} is out of range 0-100"));
            }
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(s) = c.shares() {
            if s != 0 && !(2..=262_144).contains(&s) {
                return bad("cpu.shares", &format!("{s} is out of range 2-262144"));
            }
        }
        if let Some(p) = c.period() {
            if p != 0 && !(1_000..=1_000_000).contains(&p) {
                return bad("cpu.period", &format!("{p} is out of range 1000-1000000"));
            }
        }
        if let Some(q) = c.quota() {
            if q != -1 && q != 0 && q < 1_000 {
                return bad("cpu.quota", &format!("{q} is out of range (at least 1000, or -1 for unlimited)"));
            }
        }
        for (name, set) in [("cpu.cpus", c.cpus()), ("cpu.mems", c.mems())] {
            if let Some(s) = set {
                if !s.is_empty()
                    && !s.split(',').all(|part| {
                        let mut ends = part.splitn(2, '-');
                        let a = ends.next().and_then(|x| x.trim().parse::<u32>().ok());
                        match (a, ends.next()) {
                            (Some(_), None) => true,
                            (Some(a), Some(b)) => b.trim().parse::<u32>().is_ok_and(|b| b >= a),
                            _ => false,
                        }
                    })
                {
                    return bad(name, &format!("{s:?} is not a list of numbers and ranges like \"0-2,4\""));
                }
            }
        }
    }
    if let Some(p) = r.pids() {
        if p.limit() < -1 {
            return bad("pids.limit", &format!("{} is out of range (want a count, or -1/0 for unlimited)", p.limit()));
        }
    }
    if let Some(b) = r.block_io() {
        if let Some(w) = b.weight().filter(|&w| w != 0) {
            if !(10..=1000).contains(&w) {
                return bad("blockIO.weight", &format!("{w} is out of range 10-1000"));
            }
        }
    }
    if let Some(u) = r.unified() {
        for key in u.keys() {
            if key.contains('/') || key.starts_with('.') || !key.contains('.') {
                return bad("unified", &format!("{key:?} is not a cgroup interface file name"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
28 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpu,cpuacct
29 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
";

    #[test]
    fn detects_hybrid() {
        let l = Layout::parse_mountinfo(HYBRID).unwrap();
        let Layout::V1 { hierarchies, unified } = l else { panic!("not v1") };
        assert_eq!(unified, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(hierarchies.get("cpu,cpuacct"), Some(&PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")));
        assert_eq!(hierarchies.get("name=systemd"), Some(&PathBuf::from("/sys/fs/cgroup/systemd")));
        assert_eq!(hierarchies.get("memory"), Some(&PathBuf::from("/sys/fs/cgroup/memory")));
    }

    #[test]
    fn detects_v2() {
        let l = Layout::parse_mountinfo(
            "30 1 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n",
        )
        .unwrap();
        assert_eq!(l, Layout::V2 { root: PathBuf::from("/sys/fs/cgroup") });
    }

    #[test]
    fn rejects_parent_components() {
        assert!(clean_relative(Path::new("/a/../../etc")).is_err());
        assert!(clean_relative(Path::new("/")).is_err());
        assert_eq!(clean_relative(Path::new("/a/b")).unwrap(), PathBuf::from("a/b"));
    }

    #[test]
    fn a_plan_names_every_directory_create_would_make() {
        let t = tempfile::tempdir().unwrap();
        let (shared, leaf) = (t.path().join("parent"), t.path().join("parent/child/leaf"));
        let paths = CgroupPaths {
            paths: [("cpu".to_string(), leaf.clone()), ("memory".to_string(), t.path().join("parent/child/other"))]
                .into(),
            created: Vec::new(),
            v2: false,
        };
        let planned = CgroupManager::from_paths(paths.clone()).planned();
        assert_eq!(
            planned.created,
            [shared.clone(), shared.join("child"), leaf.clone(), shared.join("child/other")],
            "parents first, each once"
        );
        // what exists already is not the container's to remove
        std::fs::create_dir_all(shared.join("child")).unwrap();
        let planned = CgroupManager::from_paths(paths).planned();
        assert_eq!(planned.created, [leaf, shared.join("child/other")]);
    }
}
