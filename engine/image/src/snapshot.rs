//! Snapshots: one root filesystem per container, made by one of two storage drivers, as
//! Docker's of the same names:
//! - `overlay2` (the default): an overlayfs mount whose lower layers are the image's unpacked
//!   layers and whose upper and work directories are the container's own;
//! - `vfs`: a plain directory the layers are copied into, whiteouts applied (no mount: for
//!   filesystems overlayfs cannot sit on, and for tests that run without root).
//!
//! ```text
//! <root>/snapshots/<key>/snapshot.json   driver, image id and layer diff ids (keeps them from GC)
//! <root>/snapshots/<key>/upper, work     the container's writable layer (overlay2)
//! <root>/snapshots/<key>/rootfs          the overlay mount or the copy the runtime pivots into
//! ```
//!
//! The record is written before the mount or copy, so garbage collection never removes a layer
//! a snapshot uses; removal unmounts first and deletes the directory last.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::store::{io_at, ImageError, ImageStore};

/// The classic mount(2) data is one page; longer layer lists go through fsconfig(2).
const MOUNT_DATA_MAX: usize = 4000;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("overlayfs is not available on this kernel (no \"overlay\" in /proc/filesystems); container root filesystems need it (try: modprobe overlay)")]
    OverlayUnavailable,
    #[error("snapshot {0} already exists")]
    Exists(String),
    #[error("invalid snapshot key {0:?}: use letters, digits, '_', '.' and '-' (at most 128)")]
    InvalidKey(String),
    #[error("mounting overlay at {target}: {source}")]
    Mount { target: PathBuf, source: io::Error },
    #[error("unmounting {target}: {source}")]
    Unmount { target: PathBuf, source: io::Error },
    #[error("{0}")]
    Unsupported(String),
}

/// How a snapshot's root filesystem is made (Docker's `--storage-driver`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageDriver {
    #[default]
    #[serde(rename = "overlay2")]
    Overlay2,
    #[serde(rename = "vfs")]
    Vfs,
}

impl StorageDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageDriver::Overlay2 => "overlay2",
            StorageDriver::Vfs => "vfs",
        }
    }
}

impl std::str::FromStr for StorageDriver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "overlay2" | "overlay" => Ok(StorageDriver::Overlay2),
            "vfs" => Ok(StorageDriver::Vfs),
            other => Err(format!("unknown storage driver {other:?}: overlay2 or vfs")),
        }
    }
}

/// What the store remembers of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The driver that made it (records written before there was a choice are overlay2).
    #[serde(default)]
    pub driver: StorageDriver,
    pub key: String,
    pub image: Digest,
    /// Diff ids of the lower layers, lowest first.
    pub layers: Vec<Digest>,
}

/// A prepared snapshot: `rootfs` is mounted (or copied) and ready for the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub driver: StorageDriver,
    pub key: String,
    pub image: Digest,
    pub rootfs: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
}

fn overlay_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        fs::read_to_string("/proc/filesystems")
            .map(|s| s.lines().any(|l| l.split_whitespace().last() == Some("overlay")))
            .unwrap_or(false)
    })
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 128
        && !key.starts_with('.')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl ImageStore {
    fn snapshot_dir(&self, key: &str) -> PathBuf {
        self.root().join("snapshots").join(key)
    }

    /// Creates and mounts the snapshot `key` for the image `image`.
    pub fn prepare_snapshot(&self, key: &str, image: &Digest) -> Result<Snapshot, ImageError> {
        if !valid_key(key) {
            return Err(SnapshotError::InvalidKey(key.into()).into());
        }
        let driver = self.driver();
        if driver == StorageDriver::Overlay2 && !overlay_available() {
            return Err(SnapshotError::OverlayUnavailable.into());
        }
        let dir = self.snapshot_dir(key);
        let snapshot = Snapshot {
            driver,
            key: key.into(),
            image: image.clone(),
            rootfs: dir.join("rootfs"),
            upper: dir.join("upper"),
            work: dir.join("work"),
        };
        let layers = {
            let _lock = self.locked()?;
            let record = self.images_by_id()?.remove(image).ok_or_else(|| ImageError::NotFound(image.to_string()))?;
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(SnapshotError::Exists(key.into()).into())
                }
                Err(e) => return Err(io_at(&dir)(e)),
            }
            let layers: Vec<Digest> = record.layers.iter().map(|l| l.diff_id.clone()).collect();
            let rec = SnapshotRecord { driver, key: key.into(), image: image.clone(), layers: layers.clone() };
            let result = (|| {
                for d in [&snapshot.rootfs, &snapshot.upper, &snapshot.work] {
                    fs::create_dir(d).map_err(io_at(d))?;
                }
                // No fsync: a snapshot's contents do not survive a power loss either, and
                // this write is on every container start.
                let path = dir.join("snapshot.json");
                fs::write(&path, serde_json::to_vec(&rec).map_err(|e| ImageError::Format(e.to_string()))?)
                    .map_err(io_at(&path))
            })();
            if let Err(e) = result {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
            layers
        };
        let made = match driver {
            StorageDriver::Overlay2 => self.mount_overlay(&snapshot, &layers),
            StorageDriver::Vfs => self.copy_layers(&snapshot, &layers),
        };
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(snapshot)
    }

    /// vfs: copies the layers into the rootfs, lowest first, each applying its whiteouts.
    fn copy_layers(&self, s: &Snapshot, layers: &[Digest]) -> Result<(), ImageError> {
        for d in layers {
            let layer = self.layer_path(d);
            if !layer.is_dir() {
                return Err(ImageError::Corrupt { path: layer, message: "layer directory is missing".into() });
            }
            apply_layer(&layer, &s.rootfs, &mut HashMap::new())?;
        }
        Ok(())
    }

    fn mount_overlay(&self, s: &Snapshot, layers: &[Digest]) -> Result<(), ImageError> {
        // overlayfs wants at least one lower directory; an image with no layers gets an empty one.
        // A layer an image repeats (the empty layer often is) is mounted once, at its topmost
        // place: overlayfs refuses a lower directory twice (ELOOP), and the lower copy adds
        // nothing the upper one does not already show.
        let mut lowers: Vec<PathBuf> = Vec::new();
        for d in layers.iter().rev() {
            let p = self.layer_path(d);
            if !lowers.contains(&p) {
                lowers.push(p);
            }
        }
        if lowers.is_empty() {
            let empty = self.snapshot_dir(&s.key).join("empty");
            fs::create_dir_all(&empty).map_err(io_at(&empty))?;
            lowers.push(empty);
        }
        for l in &lowers {
            if !l.is_dir() {
                return Err(ImageError::Corrupt { path: l.clone(), message: "layer directory is missing".into() });
            }
        }
        let joined: Vec<String> = lowers.iter().map(|p| escape_overlay_path(p)).collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            joined.join(":"),
            escape_overlay_path(&s.upper),
            escape_overlay_path(&s.work)
        );
        let mount_err = |source: io::Error| ImageError::from(SnapshotError::Mount { target: s.rootfs.clone(), source });
        if data.len() <= MOUNT_DATA_MAX {
            nix::mount::mount(Some("overlay"), &s.rootfs, Some("overlay"), MsFlags::empty(), Some(data.as_str()))
                .map_err(|e| mount_err(io::Error::from_raw_os_error(e as i32)))
        } else {
            mount_overlay_fsconfig(&lowers, &s.upper, &s.work, &s.rootfs).map_err(mount_err)
        }
    }

    /// Mounts the snapshot `key` again if its rootfs is not mounted (after a reboot, say);
    /// a mounted one is left as it is.
    pub fn mount_snapshot(&self, key: &str) -> Result<(), ImageError> {
        use std::os::unix::fs::MetadataExt;
        if !valid_key(key) {
            return Err(SnapshotError::InvalidKey(key.into()).into());
        }
        let dir = self.snapshot_dir(key);
        let path = dir.join("snapshot.json");
        let rec: SnapshotRecord = serde_json::from_slice(&fs::read(&path).map_err(io_at(&path))?)
            .map_err(|e| ImageError::Corrupt { path: path.clone(), message: e.to_string() })?;
        let snapshot = Snapshot {
            driver: rec.driver,
            key: rec.key.clone(),
            image: rec.image.clone(),
            rootfs: dir.join("rootfs"),
            upper: dir.join("upper"),
            work: dir.join("work"),
        };
        if rec.driver == StorageDriver::Vfs {
            return Ok(()); // a directory: nothing to mount
        }
        let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).map_err(io_at(p));
        if dev(&snapshot.rootfs)? != dev(&dir)? {
            return Ok(()); // a filesystem of its own: mounted
        }
        self.mount_overlay(&snapshot, &rec.layers)
    }

    /// Unmounts and deletes the snapshot `key`; a snapshot that is already gone is not an error.
    pub fn remove_snapshot(&self, key: &str) -> Result<(), ImageError> {
        if !valid_key(key) {
            return Err(SnapshotError::InvalidKey(key.into()).into());
        }
        let dir = self.snapshot_dir(key);
        if !dir.exists() {
            return Ok(());
        }
        // a vfs snapshot is not mounted (an unreadable record may be of an overlay mount)
        if !matches!(self.snapshot(key), Ok(Some(s)) if s.driver == StorageDriver::Vfs) {
            unmount_all(&dir.join("rootfs"))?;
        }
        fs::remove_dir_all(&dir).map_err(io_at(&dir))
    }

    /// The snapshot `key`, if it exists.
    pub fn snapshot(&self, key: &str) -> Result<Option<Snapshot>, ImageError> {
        if !valid_key(key) {
            return Err(SnapshotError::InvalidKey(key.into()).into());
        }
        let dir = self.snapshot_dir(key);
        let path = dir.join("snapshot.json");
        let rec: SnapshotRecord = match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| ImageError::Corrupt { path: path.clone(), message: e.to_string() })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at(&path)(e)),
        };
        Ok(Some(Snapshot {
            driver: rec.driver,
            key: rec.key,
            image: rec.image,
            rootfs: dir.join("rootfs"),
            upper: dir.join("upper"),
            work: dir.join("work"),
        }))
    }

    /// Every snapshot the store has a readable record of.
    pub fn snapshot_records(&self) -> Result<Vec<SnapshotRecord>, ImageError> {
        Ok(self.snapshot_records_checked()?.0)
    }

    /// The readable records, and whether some snapshot directory has none that can be read
    /// (a crash while it was written): then its layers are unknown.
    pub(crate) fn snapshot_records_checked(&self) -> Result<(Vec<SnapshotRecord>, bool), ImageError> {
        let dir = self.root().join("snapshots");
        let mut out = Vec::new();
        let mut unreadable = false;
        for e in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let path = e.map_err(io_at(&dir))?.path().join("snapshot.json");
            match fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
                Some(rec) => out.push(rec),
                None => unreadable = true,
            }
        }
        Ok((out, unreadable))
    }

    /// Images that some snapshot is built on.
    pub(crate) fn snapshot_users(&self) -> Result<std::collections::HashSet<Digest>, ImageError> {
        Ok(self.snapshot_records()?.into_iter().map(|s| s.image).collect())
    }
}

/// Takes every mount off `rootfs` (stacked mounts too; a busy one is detached).
fn unmount_all(rootfs: &Path) -> Result<(), ImageError> {
    loop {
        match nix::mount::umount2(rootfs, MntFlags::empty()) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) => {
                nix::mount::umount2(rootfs, MntFlags::MNT_DETACH).map_err(|e| SnapshotError::Unmount {
                    target: rootfs.to_path_buf(),
                    source: io::Error::from_raw_os_error(e as i32),
                })?;
            }
            Err(e) => {
                return Err(SnapshotError::Unmount {
                    target: rootfs.to_path_buf(),
                    source: io::Error::from_raw_os_error(e as i32),
                }
                .into())
            }
        }
    }
}

/// Applies the unpacked layer `src` (overlayfs form) onto the directory `dst`: a whiteout (a 0/0
/// character device) removes its path, an opaque directory hides what was below it, anything
/// else replaces what is there, with its mode, owner, times and xattrs. Files the layer links
/// together stay linked (`linked`: the copy of each inode seen so far).
fn apply_layer(src: &Path, dst: &Path, linked: &mut HashMap<(u64, u64), PathBuf>) -> Result<(), ImageError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for entry in fs::read_dir(src).map_err(io_at(src))? {
        let from = entry.map_err(io_at(src))?.path();
        let Some(name) = from.file_name() else { continue };
        let to = dst.join(name);
        let meta = fs::symlink_metadata(&from).map_err(io_at(&from))?;
        let ft = meta.file_type();
        let existing = fs::symlink_metadata(&to).ok();
        if ft.is_char_device() && meta.rdev() == 0 {
            remove_path(&to, existing.as_ref())?;
            continue;
        }
        if ft.is_dir() {
            let opaque = xattr::get(&from, crate::unpack::OPAQUE_XATTR).ok().flatten().is_some_and(|v| v == b"y");
            match existing {
                Some(m) if m.is_dir() && !opaque => {}
                other => {
                    remove_path(&to, other.as_ref())?;
                    fs::create_dir(&to).map_err(io_at(&to))?;
                }
            }
            apply_layer(&from, &to, linked)?;
        } else {
            remove_path(&to, existing.as_ref())?;
            if ft.is_symlink() {
                let target = fs::read_link(&from).map_err(io_at(&from))?;
                std::os::unix::fs::symlink(target, &to).map_err(io_at(&to))?;
            } else if ft.is_file() && meta.nlink() > 1 && linked.contains_key(&(meta.dev(), meta.ino())) {
                fs::hard_link(&linked[&(meta.dev(), meta.ino())], &to).map_err(io_at(&to))?;
                continue; // its metadata is the first copy's
            } else if ft.is_file() {
                fs::copy(&from, &to).map_err(io_at(&to))?;
                if meta.nlink() > 1 {
                    linked.insert((meta.dev(), meta.ino()), to.clone());
                }
            } else {
                let kind = nix::sys::stat::SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
                let perm = nix::sys::stat::Mode::from_bits_truncate(meta.mode());
                nix::sys::stat::mknod(&to, kind, perm, meta.rdev())
                    .map_err(|e| io_at(&to)(io::Error::from_raw_os_error(e as i32)))?;
            }
        }
        copy_metadata(&from, &to, &meta)?;
    }
    Ok(())
}

/// Removes whatever is at `path` (`existing` is its metadata, if anything is there).
fn remove_path(path: &Path, existing: Option<&fs::Metadata>) -> Result<(), ImageError> {
    match existing {
        None => Ok(()),
        Some(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_at(path)),
        Some(_) => fs::remove_file(path).map_err(io_at(path)),
    }
}

/// Owner, mode, xattrs (overlayfs' own aside) and times of `from`, onto `to` (not followed).
fn copy_metadata(from: &Path, to: &Path, meta: &fs::Metadata) -> Result<(), ImageError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid())).map_err(io_at(to))?;
    if !meta.file_type().is_symlink() {
        // after chown, which clears set-id bits
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(io_at(to))?;
    }
    if let Ok(names) = xattr::list(from) {
        for name in names.filter(|n| !n.as_encoded_bytes().starts_with(b"trusted.overlay.")) {
            if let Ok(Some(value)) = xattr::get(from, &name) {
                xattr::set(to, &name, &value).map_err(io_at(to))?;
            }
        }
    }
    let time = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
    let (atime, mtime) = (time(meta.atime(), meta.atime_nsec()), time(meta.mtime(), meta.mtime_nsec()));
    nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, to, &atime, &mtime, nix::sys::stat::UtimensatFlags::NoFollowSymlink)
        .map_err(|e| io_at(to)(io::Error::from_raw_os_error(e as i32)))
}

/// overlayfs option values escape ',' ':' and '\\' with a backslash.
fn escape_overlay_path(p: &Path) -> String {
    let s = p.to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Mounts overlayfs through the new mount API, adding one lower directory per `lowerdir+`
/// call (Linux 6.8+), which lifts the one-page limit on the option string.
fn mount_overlay_fsconfig(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    let cstr = |s: &[u8]| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let check = |rc: libc::c_long| if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) };
    let fstype = cstr(b"overlay")?;
    // SAFETY: fsopen with a NUL-terminated name; the returned fd is owned below.
    let fs_fd = check(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: fs_fd is a fresh fd we own.
    let fs_fd = unsafe { OwnedFd::from_raw_fd(fs_fd as i32) };
    let set = |key: &str, value: &Path| -> io::Result<()> {
        let k = cstr(key.as_bytes())?;
        let v = cstr(std::os::unix::ffi::OsStrExt::as_bytes(value.as_os_str()))?;
        // SAFETY: fd is open; key and value are NUL-terminated strings that outlive the call.
        check(unsafe {
            libc::syscall(libc::SYS_fsconfig, fs_fd.as_raw_fd(), FSCONFIG_SET_STRING, k.as_ptr(), v.as_ptr(), 0)
        })
        .map(drop)
    };
    for l in lowers {
        set("lowerdir+", l)?;
    }
    set("upperdir", upper)?;
    set("workdir", work)?;
    // SAFETY: plain fsconfig command on our fd.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs_fd.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<u8>(),
            std::ptr::null::<u8>(),
            0,
        )
    })?;
    // SAFETY: fsmount on our configured fs fd; the mount fd is owned below.
    let mnt = check(unsafe { libc::syscall(libc::SYS_fsmount, fs_fd.as_raw_fd(), FSMOUNT_CLOEXEC, 0) })?;
    // SAFETY: fresh fd we own.
    let mnt = unsafe { OwnedFd::from_raw_fd(mnt as i32) };
    let empty = cstr(b"")?;
    let to = cstr(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str()))?;
    // SAFETY: move_mount of our detached mount onto `target`; strings are NUL-terminated.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })?;
    Ok(())
}
