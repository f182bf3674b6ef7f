//! Unpacking one layer's tar stream into a directory in overlayfs form: whiteouts become
//! 0/0 character devices, opaque directories get `trusted.overlay.opaque=y`. Ownership,
//! modes, times, xattrs, hard links and symlinks are kept.
//!
//! The destination is always a private staging directory that nothing else writes, and every
//! member is checked before it is written: a path through a symlink, a hard link or symlink
//! that leaves the layer, a device node (unless allowed) or an xattr that would steer overlayfs
//! is refused. On an error the caller removes the staging directory, so a refused layer leaves
//! nothing behind.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::tarstream::{self, EntryKind, TarEntry, TarError};

const WHITEOUT_PREFIX: &str = ".wh.";
/// Bounds on what unpacking keeps in memory per layer.
const MAX_KNOWN_DIRS: usize = 65_536;
const MAX_DIR_TIMES_BYTES: usize = 64 << 20;
pub const MAX_ENTRIES: u64 = 4_000_000;
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    Tar(#[from] TarError),
    #[error("unpacking {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl UnpackError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
        move |source| UnpackError::Io { path: path.to_path_buf(), source }
    }
}

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

#[derive(Clone, Debug, Default)]
pub struct UnpackOptions {
    /// Create character and block devices found in the layer (refused otherwise).
    pub allow_devices: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub file_bytes: u64,
}

/// Unpacks the (decompressed) tar stream `r` into the existing, empty directory `dest`.
/// `on_file_bytes` is called with the running total of file bytes written, for progress.
pub fn unpack_layer<R: Read>(
    r: R,
    dest: &Path,
    opts: &UnpackOptions,
    mut on_file_bytes: impl FnMut(u64),
) -> Result<UnpackStats, UnpackError> {
    let mut u = Unpacker {
        root: dest,
        opts,
        known_dirs: HashSet::new(),
        dir_times: BTreeMap::new(),
        dir_times_bytes: 0,
        stats: UnpackStats::default(),
    };
    tarstream::for_each_entry(r, |entry: &TarEntry, content: &mut dyn Read| {
        u.entry(entry, content)?;
        on_file_bytes(u.stats.file_bytes);
        Ok::<(), UnpackError>(())
    })?;
    // Directory times last: creating their children changed them. Each path is checked to
    // still be a directory reached without symlinks (a later member may have replaced a parent).
    for (rel, mtime) in u.dir_times.iter().rev() {
        if u.is_real_dir(rel) {
            let path = u.root.join(rel);
            set_mtime(&path, *mtime).map_err(UnpackError::io(&path))?;
        }
    }
    Ok(u.stats)
}

struct Unpacker<'a> {
    root: &'a Path,
    opts: &'a UnpackOptions,
    /// Parent directories (relative, full paths only) already checked in this layer: a cache,
    /// dropped when it grows past `MAX_KNOWN_DIRS`.
    known_dirs: HashSet<PathBuf>,
    /// Directory members' mtimes by relative path, applied at the end.
    dir_times: BTreeMap<PathBuf, i64>,
    dir_times_bytes: usize,
    stats: UnpackStats,
}

impl Unpacker<'_> {
    fn entry(&mut self, e: &TarEntry, content: &mut dyn Read) -> Result<(), UnpackError> {
        self.stats.entries += 1;
        if self.stats.entries > MAX_ENTRIES {
            return Err(TarError::refused(&e.raw_path, format!("layer has more than {MAX_ENTRIES} members")).into());
        }
        for (name, _) in &e.xattrs {
            if name.starts_with(b"trusted.overlay.") || name.starts_with(b"system.") {
                return Err(TarError::refused(
                    &e.raw_path,
                    format!("xattr {} is not allowed in a layer", String::from_utf8_lossy(name)),
                )
                .into());
            }
        }
        let Some(name) = e.path.file_name() else {
            // The layer root itself ("./"): its mode and owner become the rootfs's.
            if e.kind != EntryKind::Dir {
                return Err(TarError::refused(&e.raw_path, "the archive root must be a directory").into());
            }
            return self.metadata(self.root.to_path_buf(), e, false);
        };
        let parent = e.path.parent().unwrap_or(Path::new("")).to_path_buf();
        let name_str = name.as_bytes();

        if name_str.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            let dir = self.ensure_dir(&parent, e)?;
            if name_str == WHITEOUT_OPAQUE.as_bytes() {
                return set_xattr(&dir, OPAQUE_XATTR.as_bytes(), b"y").map_err(UnpackError::io(&dir));
            }
            if name_str.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
                return Ok(()); // aufs bookkeeping (.wh..wh.plnk and the like): nothing to apply
            }
            let hidden = &name_str[WHITEOUT_PREFIX.len()..];
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(TarError::refused(&e.raw_path, "malformed whiteout").into());
            }
            let target = dir.join(OsStr::from_bytes(hidden));
            self.clear(&parent.join(OsStr::from_bytes(hidden)), &target, false)?;
            nix::sys::stat::mknod(&target, SFlag::S_IFCHR, Mode::empty(), 0)
                .map_err(|e| UnpackError::io(&target)(nix_io(e)))?;
            return Ok(());
        }

        let dir = self.ensure_dir(&parent, e)?;
        let target = dir.join(name);
        self.clear(&e.path, &target, e.kind == EntryKind::Dir)?;
        self.create(e, &parent, &target, content)?;
        if e.kind == EntryKind::HardLink {
            // A hard link shares its inode: the first member's metadata stands.
            return Ok(());
        }
        self.metadata(target, e, e.kind == EntryKind::Symlink)
    }

    fn create(
        &mut self,
        e: &TarEntry,
        parent: &Path,
        target: &Path,
        content: &mut dyn Read,
    ) -> Result<(), UnpackError> {
        let io_err = UnpackError::io(target);
        match e.kind {
            EntryKind::File => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(target)
                    .map_err(UnpackError::io(target))?;
                let n = io::copy(&mut content.take(e.size), &mut f).map_err(UnpackError::io(target))?;
                if n != e.size {
                    return Err(TarError::Malformed(format!(
                        "{}: truncated ({n} of {} bytes)",
                        e.path.display(),
                        e.size
                    ))
                    .into());
                }
                self.stats.file_bytes += n;
                drop(f);
            }
            EntryKind::Dir => {
                if !target.is_dir() {
                    fs::DirBuilder::new().mode(0o700).create(target).map_err(io_err)?;
                }
            }
            EntryKind::Symlink => {
                let link = OsStr::from_bytes(e.link.as_deref().unwrap_or_default());
                if tarstream::resolve_lexically(parent, Path::new(link)).is_none() {
                    return Err(TarError::refused(&e.raw_path, format!("symlink to {link:?} leaves the layer")).into());
                }
                std::os::unix::fs::symlink(link, target).map_err(io_err)?;
            }
            EntryKind::HardLink => {
                let raw = e.link.as_deref().unwrap_or_default();
                let rel = tarstream::normalize(raw).map_err(|_| {
                    TarError::refused(
                        &e.raw_path,
                        format!("hard link to {:?} leaves the layer", String::from_utf8_lossy(raw)),
                    )
                })?;
                let source = self.existing_below_root(&rel, e)?;
                fs::hard_link(&source, target).map_err(io_err)?;
            }
            EntryKind::CharDevice | EntryKind::BlockDevice => {
                if !self.opts.allow_devices {
                    return Err(TarError::refused(&e.raw_path, "device nodes are not allowed").into());
                }
                let kind = if e.kind == EntryKind::CharDevice { SFlag::S_IFCHR } else { SFlag::S_IFBLK };
                let dev = nix::sys::stat::makedev(e.device.0.into(), e.device.1.into());
                nix::sys::stat::mknod(target, kind, Mode::from_bits_truncate(0o600), dev)
                    .map_err(|x| io_err(nix_io(x)))?;
            }
            EntryKind::Fifo => {
                nix::sys::stat::mknod(target, SFlag::S_IFIFO, Mode::from_bits_truncate(0o600), 0)
                    .map_err(|x| io_err(nix_io(x)))?;
            }
        }
        Ok(())
    }

    fn metadata(&mut self, target: PathBuf, e: &TarEntry, symlink: bool) -> Result<(), UnpackError> {
        let io_err = UnpackError::io(&target);
        let (uid, gid) = match (u32::try_from(e.uid), u32::try_from(e.gid)) {
            (Ok(u), Ok(g)) if u != u32::MAX && g != u32::MAX => (u, g),
            _ => return Err(TarError::refused(&e.raw_path, "uid or gid out of range").into()),
        };
        std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).map_err(io_err)?;
        if !symlink {
            // After chown, which clears set-id bits.
            fs::set_permissions(&target, fs::Permissions::from_mode(e.mode)).map_err(UnpackError::io(&target))?;
        }
        for (name, value) in &e.xattrs {
            match set_xattr(&target, name, value) {
                Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) && !name.starts_with(b"security.") => {}
                r => r.map_err(UnpackError::io(&target))?,
            }
        }
        if e.kind == EntryKind::Dir {
            let rel = target.strip_prefix(self.root).map(Path::to_path_buf).unwrap_or_default();
            self.dir_times_bytes += rel.as_os_str().len();
            if self.dir_times_bytes > MAX_DIR_TIMES_BYTES {
                return Err(TarError::refused(&e.raw_path, "too many directory members").into());
            }
            self.dir_times.insert(rel, e.mtime);
        } else {
            set_mtime(&target, e.mtime).map_err(UnpackError::io(&target))?;
        }
        Ok(())
    }

    /// Makes sure every component of `rel` is a real directory (created 0755 where missing),
    /// refusing a path that goes through a symlink or a non-directory.
    fn ensure_dir(&mut self, rel: &Path, e: &TarEntry) -> Result<PathBuf, UnpackError> {
        if !self.known_dirs.contains(rel) {
            let mut cur = PathBuf::new();
            for c in rel.components() {
                cur.push(c);
                let abs = self.root.join(&cur);
                match fs::symlink_metadata(&abs) {
                    Ok(m) if m.is_dir() => {}
                    Ok(m) if m.file_type().is_symlink() => {
                        return Err(TarError::refused(
                            &e.raw_path,
                            format!("path goes through the symlink {}", cur.display()),
                        )
                        .into())
                    }
                    Ok(_) => {
                        return Err(
                            TarError::refused(&e.raw_path, format!("{} is not a directory", cur.display())).into()
                        )
                    }
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {
                        fs::DirBuilder::new().mode(0o755).create(&abs).map_err(UnpackError::io(&abs))?;
                    }
                    Err(err) => return Err(UnpackError::Io { path: abs, source: err }),
                }
            }
            if self.known_dirs.len() >= MAX_KNOWN_DIRS {
                self.known_dirs.clear();
            }
            self.known_dirs.insert(rel.to_path_buf());
        }
        Ok(self.root.join(rel))
    }

    /// Whether every component of `rel` is a directory (no symlink on the way).
    fn is_real_dir(&self, rel: &Path) -> bool {
        let mut cur = self.root.to_path_buf();
        for c in rel.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                _ => return false,
            }
        }
        true
    }

    /// The absolute path of an existing non-directory member `rel`, reached without symlinks.
    fn existing_below_root(&mut self, rel: &Path, e: &TarEntry) -> Result<PathBuf, UnpackError> {
        let escape =
            || TarError::refused(&e.raw_path, format!("hard link to {} that is not in the layer", rel.display()));
        let parent = rel.parent().ok_or_else(escape)?;
        if !self.is_real_dir(parent) {
            return Err(escape().into());
        }
        let abs = self.root.join(rel);
        match fs::symlink_metadata(&abs) {
            Ok(m) if m.file_type().is_symlink() => {
                // A hard link to a symlink is a second symlink with the same target, read from
                // the new link's directory: it must not leave the layer from there either.
                let target = fs::read_link(&abs).map_err(UnpackError::io(&abs))?;
                let link_dir = e.path.parent().unwrap_or(Path::new(""));
                if tarstream::resolve_lexically(link_dir, &target).is_none() {
                    return Err(TarError::refused(
                        &e.raw_path,
                        format!("hard link to a symlink whose target {} leaves the layer from here", target.display()),
                    )
                    .into());
                }
                Ok(abs)
            }
            Ok(m) if !m.is_dir() && !is_whiteout(&m) => Ok(abs),
            _ => Err(escape().into()),
        }
    }

    /// Removes whatever is at `target` unless both it and the new member are directories.
    fn clear(&mut self, rel: &Path, target: &Path, new_is_dir: bool) -> Result<(), UnpackError> {
        match fs::symlink_metadata(target) {
            Ok(m) if m.is_dir() && new_is_dir => Ok(()),
            Ok(m) => {
                if m.is_dir() {
                    fs::remove_dir_all(target).map_err(UnpackError::io(target))?;
                    self.known_dirs.retain(|d| !d.starts_with(rel));
                    let gone: Vec<PathBuf> = self
                        .dir_times
                        .range(rel.to_path_buf()..)
                        .take_while(|(k, _)| k.starts_with(rel))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in gone {
                        self.dir_times.remove(&k);
                    }
                } else {
                    fs::remove_file(target).map_err(UnpackError::io(target))?;
                }
                Ok(())
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(UnpackError::Io { path: target.to_path_buf(), source: err }),
        }
    }
}

fn is_whiteout(m: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    m.file_type().is_char_device() && m.rdev() == 0
}

fn set_mtime(path: &Path, mtime: i64) -> io::Result<()> {
    let t = TimeSpec::new(mtime, 0);
    nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, path, &t, &t, UtimensatFlags::NoFollowSymlink).map_err(nix_io)
}

pub(crate) fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: both strings are NUL-terminated and live across the call; value/len describe a valid slice.
    let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
