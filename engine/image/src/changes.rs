//! What a container changed, and trees as tar streams: the changes of a snapshot's upper
//! directory over its image's layers (`docker diff`), the layer tar of them (`docker commit`,
//! with overlayfs whiteouts turned into Docker's `.wh.` files), and the tar of a whole tree
//! (`docker export`).
//!
//! Owns: reading upper directories and layers, and writing tar streams of them. It must never
//! write to a snapshot or a layer: everything here only reads.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use std::fs::File;
use std::time::SystemTime;

use crate::archive;
use crate::digest::{Digest, DigestWriter};
use crate::manifest::History;
use crate::progress::Progress;
use crate::snapshot::{Snapshot, StorageDriver};
use crate::store::{io_at, ImageError, ImageStore, StagedBlob};
use crate::unpack::OPAQUE_XATTR;

/// How a path changed, with Docker's numbers (`Kind` of `GET /containers/{id}/changes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Modified = 0,
    Added = 1,
    Deleted = 2,
}

impl ChangeKind {
    /// The letter `docker diff` prints.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Modified => 'C',
            ChangeKind::Added => 'A',
            ChangeKind::Deleted => 'D',
        }
    }
}

impl Serialize for ChangeKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(*self as u8)
    }
}

/// One changed path, as `GET /containers/{id}/changes` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Change {
    /// Absolute in the container ("/etc/passwd").
    pub path: String,
    pub kind: ChangeKind,
}

/// Whether `meta` is an overlayfs whiteout: a 0/0 character device.
fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    matches!(xattr::get(dir, OPAQUE_XATTR), Ok(Some(v)) if v == b"y")
}

/// The entries of `dir`, sorted by name (tar streams and change lists come out the same every
/// time).
fn sorted_entries(dir: &Path) -> io::Result<Vec<std::fs::DirEntry>> {
    let mut entries = std::fs::read_dir(dir)?.collect::<io::Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

/// Whether `rel` (relative, no leading `/`) exists in the image the lower layers make
/// (`lowers` highest first): the highest layer that has it, or hides it by a whiteout or an
/// opaque directory above it, decides.
fn in_lowers(lowers: &[PathBuf], rel: &Path) -> Option<std::fs::Metadata> {
    for layer in lowers {
        if let Ok(meta) = std::fs::symlink_metadata(layer.join(rel)) {
            return (!is_whiteout(&meta)).then_some(meta);
        }
        // an opaque directory on the way hides everything below it in lower layers
        let mut dir = rel.parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            if is_opaque(&layer.join(d)) {
                return None;
            }
            dir = d.parent();
        }
    }
    None
}

/// The changes of `upper` (a snapshot's upper directory) over `lowers` (its image's layer
/// directories, highest first), as dockerd's overlay driver reports them: a whiteout is a
/// deletion, a path the image has is a modification (a directory only when its mode or owner
/// differ), any other an addition, and the directory holding an addition or deletion is
/// modified. Paths in `skip` (the container's mount points) and below them are left out.
pub fn changes(upper: &Path, lowers: &[PathBuf], skip: &HashSet<PathBuf>) -> io::Result<Vec<Change>> {
    let mut list = ChangeList::default();
    // (relative directory, whether an opaque directory above makes everything in it new)
    let mut stack = vec![(PathBuf::new(), false)];
    while let Some((dir, all_new)) = stack.pop() {
        for entry in sorted_entries(&upper.join(&dir))? {
            let rel = dir.join(entry.file_name());
            if skip.contains(&Path::new("/").join(&rel)) {
                continue;
            }
            let meta = entry.metadata()?;
            let kind = if is_whiteout(&meta) {
                Some(ChangeKind::Deleted)
            } else if all_new {
                Some(ChangeKind::Added)
            } else {
                match in_lowers(lowers, &rel) {
                    None => Some(ChangeKind::Added),
                    Some(low)
                        if low.is_dir()
                            && meta.is_dir()
                            && (low.mode(), low.uid(), low.gid()) == (meta.mode(), meta.uid(), meta.gid()) =>
                    {
                        None
                    }
                    Some(_) => Some(ChangeKind::Modified),
                }
            };
            if let Some(kind) = kind {
                list.note(Path::new("/").join(&rel), kind, meta.is_dir());
            }
            if meta.is_dir() {
                let opaque = all_new || kind == Some(ChangeKind::Added) || is_opaque(&entry.path());
                stack.push((rel, opaque));
            }
        }
    }
    Ok(list.sorted())
}

/// Changes as they are found, each directory holding an addition or a deletion noted as
/// modified once.
#[derive(Default)]
struct ChangeList {
    out: Vec<Change>,
    changed_dirs: HashSet<PathBuf>,
}

impl ChangeList {
    fn note(&mut self, path: PathBuf, kind: ChangeKind, is_dir: bool) {
        self.out.push(Change { path: path.display().to_string(), kind });
        if is_dir {
            self.changed_dirs.insert(path.clone());
        }
        if kind != ChangeKind::Modified {
            let parent = path.parent().unwrap_or(Path::new("/")).to_path_buf();
            if parent != Path::new("/") && self.changed_dirs.insert(parent.clone()) {
                self.out.push(Change { path: parent.display().to_string(), kind: ChangeKind::Modified });
            }
        }
    }

    fn sorted(mut self) -> Vec<Change> {
        self.out.sort_by(|a, b| a.path.cmp(&b.path));
        self.out.dedup_by(|a, b| a.path == b.path);
        self.out
    }
}

/// Whether `new` (in a full copy of the image's files) is what `old` (the image's) was, as
/// dockerd's naive diff compares them: a directory by its mode and owner (its size and times
/// are no measure of change), anything else also by its times, size and device number.
fn unchanged(old: &std::fs::Metadata, new: &std::fs::Metadata) -> bool {
    let same = (old.mode(), old.uid(), old.gid(), old.rdev()) == (new.mode(), new.uid(), new.gid(), new.rdev());
    if new.is_dir() {
        return same;
    }
    same && old.size() == new.size() && (old.mtime(), old.mtime_nsec()) == (new.mtime(), new.mtime_nsec())
}

/// The names directory `dir` (relative) holds in the image the lower layers make (`lowers`
/// highest first): the union of the layers' entries down to the first layer that hides the
/// ones below (an opaque directory, a file or a whiteout in its place), whiteouts applied.
fn names_in_lowers(lowers: &[PathBuf], dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    let mut seen = HashSet::new();
    let mut names = Vec::new();
    for layer in lowers {
        let here = layer.join(dir);
        match std::fs::symlink_metadata(&here) {
            Ok(meta) if meta.is_dir() => {
                for entry in sorted_entries(&here)? {
                    let name = entry.file_name();
                    if seen.insert(name.clone()) && !is_whiteout(&entry.metadata()?) {
                        names.push(name);
                    }
                }
                if is_opaque(&here) {
                    break;
                }
            }
            // a file or a whiteout in its place hides the directory of the layers below
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut up = dir.parent();
                while let Some(d) = up.filter(|d| !d.as_os_str().is_empty()) {
                    if is_opaque(&layer.join(d)) {
                        return Ok(names);
                    }
                    up = d.parent();
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(names)
}

/// The changes of `rootfs` (a vfs snapshot: a full copy of the image's files, changed in place)
/// over `lowers` (the image's layer directories, highest first), as dockerd's vfs driver
/// reports them (its naive diff): a path the image lacks is an addition, one whose type, mode,
/// owner, size or times differ a modification (a directory only when its mode or owner
/// differ), a path of the image the copy lacks a deletion (not its children), and the
/// directory holding an addition or deletion is modified. Paths in `skip` (the container's
/// mount points) and below them are left out.
pub fn changes_of_copy(rootfs: &Path, lowers: &[PathBuf], skip: &HashSet<PathBuf>) -> io::Result<Vec<Change>> {
    let mut list = ChangeList::default();
    // (relative directory, whether the image has it as a directory)
    let mut stack = vec![(PathBuf::new(), true)];
    while let Some((dir, in_image)) = stack.pop() {
        let mut here = HashSet::new();
        for entry in sorted_entries(&rootfs.join(&dir))? {
            here.insert(entry.file_name());
            let rel = dir.join(entry.file_name());
            let path = Path::new("/").join(&rel);
            if skip.contains(&path) {
                continue;
            }
            let meta = entry.metadata()?;
            let old = if in_image { in_lowers(lowers, &rel) } else { None };
            match &old {
                None => list.note(path, ChangeKind::Added, meta.is_dir()),
                Some(old) if unchanged(old, &meta) => {}
                Some(_) => list.note(path, ChangeKind::Modified, meta.is_dir()),
            }
            if meta.is_dir() {
                stack.push((rel, old.is_some_and(|o| o.is_dir())));
            }
        }
        if in_image {
            for name in names_in_lowers(lowers, &dir)? {
                let path = Path::new("/").join(&dir).join(&name);
                if !here.contains(&name) && !skip.contains(&path) {
                    list.note(path, ChangeKind::Deleted, false);
                }
            }
        }
    }
    Ok(list.sorted())
}

/// Writes the layer of `changes` (of a full copy at `rootfs`, from [`changes_of_copy`]) as a tar
/// stream: each added or modified path as it is in the copy (a directory without its
/// children: those that changed are listed themselves), each deleted one as Docker's `.wh.`
/// file.
pub fn write_changes<W: Write>(rootfs: &Path, changes: &[Change], w: W) -> io::Result<W> {
    let mut tar = tar::Builder::new(w);
    tar.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for c in changes {
        let rel = Path::new(c.path.trim_start_matches('/'));
        match c.kind {
            ChangeKind::Deleted => {
                let mut wh = std::ffi::OsString::from(".wh.");
                wh.push(rel.file_name().unwrap_or_default());
                append_empty(&mut tar, &rel.with_file_name(wh))?;
            }
            ChangeKind::Added | ChangeKind::Modified => {
                let path = rootfs.join(rel);
                let meta = std::fs::symlink_metadata(&path)?;
                append(&mut tar, &path, rel, &meta, TreeForm::Plain, &mut links)?;
            }
        }
    }
    tar.into_inner()
}

/// How a tree is written: a layer (from an upper directory, whiteouts as Docker's `.wh.` files)
/// or as it is (a rootfs, a directory of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeForm {
    Layer,
    Plain,
}

/// Writes the tree at `root` as a tar stream to `w`: every entry under it with its mode, owner,
/// times, xattrs (but overlayfs' own), hard links as links, in name order. Members are named
/// `prefix/…` (no prefix: relative to `root`, and `root` itself is not a member). Paths in
/// `skip` (absolute, as under `/` = `root`) and below them are left out.
pub fn write_tree<W: Write>(
    root: &Path,
    prefix: &Path,
    form: TreeForm,
    skip: &HashSet<PathBuf>,
    w: W,
) -> io::Result<W> {
    let mut tar = tar::Builder::new(w);
    tar.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    if !prefix.as_os_str().is_empty() {
        let meta = std::fs::symlink_metadata(root)?;
        append(&mut tar, root, prefix, &meta, form, &mut links)?;
        if !meta.is_dir() {
            return tar.into_inner();
        }
    }
    // depth first in name order, as a walk of the tree: children are pushed in reverse
    let children = |dir: &Path| -> io::Result<Vec<PathBuf>> {
        Ok(sorted_entries(&root.join(dir))?.into_iter().rev().map(|e| dir.join(e.file_name())).collect())
    };
    let mut stack = children(Path::new(""))?;
    while let Some(rel) = stack.pop() {
        if skip.contains(&Path::new("/").join(&rel)) {
            continue;
        }
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path)?;
        append(&mut tar, &path, &prefix.join(&rel), &meta, form, &mut links)?;
        if meta.is_dir() {
            stack.extend(children(&rel)?);
        }
    }
    tar.into_inner()
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
    meta: &std::fs::Metadata,
    form: TreeForm,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    if form == TreeForm::Layer && is_whiteout(meta) {
        let hidden = name.file_name().map(|n| n.as_bytes()).unwrap_or_default();
        let mut wh = std::ffi::OsString::from(".wh.");
        wh.push(std::ffi::OsStr::from_bytes(hidden));
        return append_empty(tar, &name.with_file_name(wh));
    }
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    // the names of the owners are not the image's business: numbers only, as dockerd's
    let xattrs: Vec<(String, Vec<u8>)> = xattr::list(path)?
        .filter_map(|n| {
            let n = n.to_string_lossy().into_owned();
            (!n.starts_with("trusted.overlay.")).then_some(n)
        })
        .filter_map(|n| xattr::get(path, &n).ok().flatten().map(|v| (format!("SCHILY.xattr.{n}"), v)))
        .collect();
    if !xattrs.is_empty() {
        tar.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    }
    let ft = meta.file_type();
    if ft.is_file() && meta.nlink() > 1 {
        if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
            header.set_entry_type(tar::EntryType::Link);
            header.set_size(0);
            return tar.append_link(&mut header, name, first);
        }
        links.insert((meta.dev(), meta.ino()), name.to_path_buf());
    }
    if ft.is_symlink() {
        let target = std::fs::read_link(path)?;
        header.set_size(0);
        tar.append_link(&mut header, name, target)?;
    } else if ft.is_file() {
        let f = std::fs::File::open(path)?;
        tar.append_data(&mut header, name, f)?;
    } else {
        header.set_size(0);
        tar.append_data(&mut header, name, io::empty())?;
    }
    if form == TreeForm::Layer && ft.is_dir() && is_opaque(path) {
        append_empty(tar, &name.join(".wh..wh..opq"))?;
    }
    Ok(())
}

fn append_empty<W: Write>(tar: &mut tar::Builder<W>, name: &Path) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    h.set_mode(0o600);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    tar.append_data(&mut h, name, io::empty())
}

/// What `commit` records besides the container's files.
#[derive(Clone, Debug, Default)]
pub struct CommitOptions {
    pub reference: Option<crate::Reference>,
    /// The new image's run defaults (the container's, with the caller's changes applied).
    pub config: crate::manifest::ContainerConfig,
    pub author: Option<String>,
    pub comment: Option<String>,
    /// What the history entry says made the layer (dockerd: the container's command).
    pub created_by: Option<String>,
}

impl ImageStore {
    fn snapshot_parts(&self, key: &str) -> Result<(Snapshot, Vec<PathBuf>), ImageError> {
        let snapshot = self.snapshot(key)?.ok_or_else(|| ImageError::NotFound(format!("snapshot {key}")))?;
        let image = self
            .images_by_id()?
            .remove(&snapshot.image)
            .ok_or_else(|| ImageError::NotFound(format!("{} (the image of snapshot {key})", snapshot.image)))?;
        let lowers = image.layers.iter().rev().map(|l| self.layer_path(&l.diff_id)).collect();
        Ok((snapshot, lowers))
    }

    /// The changes of snapshot `key` over its image (`docker diff`), leaving out `skip` (the
    /// container's mount points).
    pub fn snapshot_changes(&self, key: &str, skip: &HashSet<PathBuf>) -> Result<Vec<Change>, ImageError> {
        let (snapshot, lowers) = self.snapshot_parts(key)?;
        match snapshot.driver {
            StorageDriver::Overlay2 => changes(&snapshot.upper, &lowers, skip).map_err(io_at(&snapshot.upper)),
            StorageDriver::Vfs => changes_of_copy(&snapshot.rootfs, &lowers, skip).map_err(io_at(&snapshot.rootfs)),
        }
    }

    /// Whether `path` (absolute, no links followed) exists in image `image`'s layers.
    pub fn image_has_path(&self, image: &Digest, path: &Path) -> Result<bool, ImageError> {
        let record = self.images_by_id()?.remove(image).ok_or_else(|| ImageError::NotFound(image.to_string()))?;
        let lowers: Vec<PathBuf> = record.layers.iter().rev().map(|l| self.layer_path(&l.diff_id)).collect();
        let rel = path.strip_prefix("/").unwrap_or(path);
        Ok(rel.as_os_str().is_empty() || in_lowers(&lowers, rel).is_some())
    }

    /// Writes the root filesystem of snapshot `key` as a tar stream (`docker export`).
    pub fn export_snapshot<W: Write>(&self, key: &str, w: W) -> Result<W, ImageError> {
        let snapshot = self.snapshot(key)?.ok_or_else(|| ImageError::NotFound(format!("snapshot {key}")))?;
        self.mount_snapshot(key)?;
        write_tree(&snapshot.rootfs, Path::new(""), TreeForm::Plain, &HashSet::new(), w)
            .map_err(io_at(&snapshot.rootfs))
    }

    /// The empty image a Dockerfile's `FROM scratch` starts from: no layers, no config; the same
    /// image every time (made once, then found).
    pub fn scratch_image(&self) -> Result<Digest, ImageError> {
        let config = crate::manifest::ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            config: Some(Default::default()),
            rootfs: crate::manifest::RootFs { typ: "layers".into(), diff_ids: Vec::new() },
            ..Default::default()
        };
        let bytes = serde_json::to_vec(&config).map_err(|e| ImageError::Format(e.to_string()))?;
        let id = Digest::of(&bytes);
        if self.images_by_id()?.contains_key(&id) {
            return Ok(id);
        }
        let staging = self.staging()?;
        let config_blob = archive::stage_bytes(&staging.0, "config", &bytes)?;
        let image = archive::plan_manifest(&staging.0, config_blob, Vec::new(), Vec::new(), Vec::new())?;
        let loaded = self.commit(vec![image], &staging.0, &())?;
        loaded.into_iter().next().map(|l| l.id).ok_or_else(|| ImageError::Format("no image made".into()))
    }

    /// A new image of `parent`'s layers with `config` as its run defaults, `author` (a
    /// builder's MAINTAINER; not the parent's) and one history entry that made no layer (a
    /// builder's ENV, CMD, LABEL…).
    pub fn derive_image(
        &self,
        parent: &Digest,
        config: crate::manifest::ContainerConfig,
        author: Option<String>,
        created_by: &str,
    ) -> Result<Digest, ImageError> {
        let parent = self.resolve(&parent.to_string())?;
        let staging = self.staging()?;
        let now = engine_util::time::rfc3339_seconds(SystemTime::now());
        let mut image_config = parent.config.clone();
        image_config.created = Some(now.clone());
        image_config.config = Some(config);
        image_config.author = author.filter(|a| !a.is_empty());
        image_config.history.push(History {
            created: Some(now),
            created_by: Some(created_by.to_string()),
            author: image_config.author.clone(),
            empty_layer: true,
            ..Default::default()
        });
        let config_blob = archive::stage_bytes(
            &staging.0,
            "config",
            &serde_json::to_vec(&image_config).map_err(|e| ImageError::Format(e.to_string()))?,
        )?;
        let layer_blobs = self.stored_blobs(&parent.record.layers);
        let mut image =
            archive::plan_manifest(&staging.0, config_blob, layer_blobs, parent.record.layers.clone(), Vec::new())?;
        image.parent = Some(parent.id().clone());
        let loaded = self.commit(vec![image], &staging.0, &())?;
        loaded.into_iter().next().map(|l| l.id).ok_or_else(|| ImageError::Format("no image made".into()))
    }

    fn stored_blobs(&self, layers: &[crate::store::LayerRecord]) -> Vec<StagedBlob> {
        layers
            .iter()
            .map(|l| StagedBlob {
                path: self.blob_path(&l.blob.digest),
                digest: l.blob.digest.clone(),
                size: l.blob.size,
            })
            .collect()
    }

    /// Makes a new image of snapshot `key`: its image's layers and one more holding the
    /// snapshot's changes (without `skip`), with `opts.config` as its run defaults. The layer is
    /// staged and checked like any load's, so a failed commit leaves the store as it was.
    pub fn commit_snapshot(
        &self,
        key: &str,
        skip: &HashSet<PathBuf>,
        opts: &CommitOptions,
        progress: &dyn Progress,
    ) -> Result<Digest, ImageError> {
        let (snapshot, lowers) = self.snapshot_parts(key)?;
        let parent = self.resolve(&snapshot.image.to_string())?;
        let staging = self.staging()?;
        let blob_path = staging.0.join("files/layer");
        let blob = {
            let f = File::create(&blob_path).map_err(io_at(&blob_path))?;
            let out = DigestWriter::new(io::BufWriter::new(f));
            let w = match snapshot.driver {
                StorageDriver::Overlay2 => write_tree(&snapshot.upper, Path::new(""), TreeForm::Layer, skip, out)
                    .map_err(io_at(&snapshot.upper))?,
                StorageDriver::Vfs => changes_of_copy(&snapshot.rootfs, &lowers, skip)
                    .and_then(|changes| write_changes(&snapshot.rootfs, &changes, out))
                    .map_err(io_at(&snapshot.rootfs))?,
            };
            let (digest, size, w) = w.finish();
            w.into_inner().map_err(|e| io_at(&blob_path)(e.into_error()))?.sync_all().map_err(io_at(&blob_path))?;
            StagedBlob { path: blob_path.clone(), digest, size }
        };
        // uncompressed: the blob's digest is the diff id
        let (diff_id, unpacked_size) = self.unpack_blob(&blob, Some(&blob.digest.clone()), &staging.0, progress)?;
        let now = engine_util::time::rfc3339_seconds(SystemTime::now());
        let mut config = parent.config.clone();
        config.created = Some(now.clone());
        config.author = opts.author.clone().filter(|a| !a.is_empty());
        config.config = Some(opts.config.clone());
        config.rootfs.diff_ids.push(diff_id.clone());
        config.history.push(History {
            created: Some(now),
            created_by: opts.created_by.clone(),
            author: config.author.clone(),
            comment: opts.comment.clone().filter(|c| !c.is_empty()),
            empty_layer: false,
        });
        let config_blob = archive::stage_bytes(
            &staging.0,
            "config",
            &serde_json::to_vec(&config).map_err(|e| ImageError::Format(e.to_string()))?,
        )?;
        let mut layer_blobs = self.stored_blobs(&parent.record.layers);
        layer_blobs.push(blob.clone());
        let mut layers = parent.record.layers.clone();
        layers.push(blob.layer_record(crate::compression::Compression::None, diff_id, unpacked_size));
        let mut image = archive::plan_manifest(
            &staging.0,
            config_blob,
            layer_blobs,
            layers,
            opts.reference.iter().cloned().collect(),
        )?;
        image.parent = Some(parent.id().clone());
        let loaded = self.commit(vec![image], &staging.0, progress)?;
        loaded.into_iter().next().map(|l| l.id).ok_or_else(|| ImageError::Format("commit produced no image".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whiteout(path: &Path) {
        nix::sys::stat::mknod(path, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0).unwrap();
    }

    fn names(tar_bytes: &[u8]) -> Vec<String> {
        tar::Archive::new(tar_bytes)
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect()
    }

    /// lower: /etc/passwd, /etc/group, /bin/sh, /gone/x; upper: /etc/passwd rewritten, /etc/group
    /// deleted, /new added, /gone re-made opaque with /gone/y, /proc a mount point.
    fn fixture() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let (lower, upper) = (t.path().join("lower"), t.path().join("upper"));
        for d in ["etc", "bin", "gone"] {
            std::fs::create_dir_all(lower.join(d)).unwrap();
        }
        for f in ["etc/passwd", "etc/group", "bin/sh", "gone/x"] {
            std::fs::write(lower.join(f), "old").unwrap();
        }
        for d in ["etc", "gone", "proc"] {
            std::fs::create_dir_all(upper.join(d)).unwrap();
        }
        std::fs::write(upper.join("etc/passwd"), "new").unwrap();
        whiteout(&upper.join("etc/group"));
        std::fs::write(upper.join("new"), "added").unwrap();
        std::fs::write(upper.join("gone/y"), "y").unwrap();
        xattr::set(upper.join("gone"), OPAQUE_XATTR, b"y").unwrap();
        (t, lower, upper)
    }

    #[test]
    fn changes_are_dockerds() {
        let (_t, lower, upper) = fixture();
        let skip: HashSet<PathBuf> = [PathBuf::from("/proc")].into();
        let got: Vec<String> = changes(&upper, &[lower], &skip)
            .unwrap()
            .iter()
            .map(|c| format!("{} {}", c.kind.letter(), c.path))
            .collect();
        assert_eq!(got, ["C /etc", "D /etc/group", "C /etc/passwd", "C /gone", "A /gone/y", "A /new"]);
    }

    /// vfs: the copy of two layers (the top one deleting /bin/sh), then changed in place as
    /// the overlay fixture's upper is.
    #[test]
    fn changes_of_a_copy_are_dockerds_naive_diff_and_make_a_layer() {
        let (t, lower, _upper) = fixture();
        let top = t.path().join("top");
        std::fs::create_dir_all(top.join("bin")).unwrap();
        whiteout(&top.join("bin/sh"));
        let rootfs = t.path().join("rootfs");
        assert!(std::process::Command::new("cp").arg("-a").arg(&lower).arg(&rootfs).status().unwrap().success());
        std::fs::remove_file(rootfs.join("bin/sh")).unwrap();
        let lowers = [top, lower];
        let skip: HashSet<PathBuf> = [PathBuf::from("/proc")].into();
        assert_eq!(changes_of_copy(&rootfs, &lowers, &skip).unwrap(), [], "an unchanged copy");

        std::fs::write(rootfs.join("etc/passwd"), "new").unwrap();
        std::fs::remove_file(rootfs.join("etc/group")).unwrap();
        std::fs::write(rootfs.join("new"), "added").unwrap();
        std::fs::remove_file(rootfs.join("gone/x")).unwrap();
        std::fs::write(rootfs.join("gone/y"), "y").unwrap();
        std::fs::create_dir(rootfs.join("proc")).unwrap();
        std::fs::create_dir_all(rootfs.join("made/deep")).unwrap();
        let got = changes_of_copy(&rootfs, &lowers, &skip).unwrap();
        let listed: Vec<String> = got.iter().map(|c| format!("{} {}", c.kind.letter(), c.path)).collect();
        assert_eq!(
            listed,
            [
                "C /etc",
                "D /etc/group",
                "C /etc/passwd",
                "C /gone",
                "D /gone/x",
                "A /gone/y",
                "A /made",
                "A /made/deep",
                "A /new"
            ]
        );
        let bytes = write_changes(&rootfs, &got, Vec::new()).unwrap();
        assert_eq!(
            names(&bytes),
            ["etc", "etc/.wh.group", "etc/passwd", "gone", "gone/.wh.x", "gone/y", "made", "made/deep", "new"]
        );
    }

    #[test]
    fn a_layer_tar_carries_whiteouts_and_opaque_directories_as_docker_writes_them() {
        let (_t, _lower, upper) = fixture();
        let skip: HashSet<PathBuf> = [PathBuf::from("/proc")].into();
        let bytes = write_tree(&upper, Path::new(""), TreeForm::Layer, &skip, Vec::new()).unwrap();
        assert_eq!(names(&bytes), ["etc", "etc/.wh.group", "etc/passwd", "gone", "gone/.wh..wh..opq", "gone/y", "new"]);
        // and it unpacks back into the same overlay form
        let back = tempfile::tempdir().unwrap();
        crate::unpack::unpack_layer(&mut bytes.as_slice(), back.path(), &Default::default(), |_| {}).unwrap();
        assert!(is_whiteout(&std::fs::symlink_metadata(back.path().join("etc/group")).unwrap()));
        assert!(is_opaque(&back.path().join("gone")));
        assert_eq!(std::fs::read_to_string(back.path().join("etc/passwd")).unwrap(), "new");
    }

    #[test]
    fn a_plain_tree_keeps_hard_links_symlinks_and_owners_under_its_prefix() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("d");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a"), "x").unwrap();
        std::fs::hard_link(root.join("a"), root.join("b")).unwrap();
        std::os::unix::fs::symlink("a", root.join("l")).unwrap();
        std::os::unix::fs::chown(root.join("a"), Some(1234), Some(5678)).unwrap();
        let bytes = write_tree(&root, Path::new("d"), TreeForm::Plain, &HashSet::new(), Vec::new()).unwrap();
        let mut ar = tar::Archive::new(bytes.as_slice());
        let got: Vec<(String, tar::EntryType, Option<String>, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                    e.link_name().unwrap().map(|l| l.display().to_string()),
                    e.header().uid().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("d".into(), tar::EntryType::Directory, None, 0),
                ("d/a".into(), tar::EntryType::Regular, None, 1234),
                ("d/b".into(), tar::EntryType::Link, Some("d/a".into()), 1234),
                ("d/l".into(), tar::EntryType::Symlink, Some("a".into()), 0),
            ]
        );
    }
}
