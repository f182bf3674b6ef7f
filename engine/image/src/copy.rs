//! Copying into and out of a container's root filesystem (`docker cp`): container paths resolved
//! inside a root as the container sees them (symlinks followed within it, `..` never above it),
//! a path's stat as dockerd reports it, a path as a tar stream, and a tar stream extracted into a
//! directory of the root.
//!
//! Owns: path resolution in a root and the copy in and out. It must never write outside the
//! root it is given nor follow a link of the container's out of it: every member of an archive
//! is placed by resolving its directory in the root first, and created without following a link
//! at its own name.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::changes::{write_tree, TreeForm};
use crate::tarstream::{self, EntryKind, TarEntry, TarError};

/// Symlinks followed in one resolution before it is refused, as Linux's limit.
const MAX_LINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("Could not find the file {0} in container")]
    NotFound(String),
    #[error("extraction point is not a directory: {0}")]
    NotADirectory(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Tar(#[from] TarError),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> CopyError + '_ {
    move |source| CopyError::Io { path: path.display().to_string(), source }
}

/// The host path of container path `path` in `root`: every symlink on the way (and the last
/// component's too when `follow_last`) is read as the container would read it, absolute links
/// starting again at `root`, `..` stopping at it. Components that do not exist are kept as
/// they are.
pub fn resolve_in_root(root: &Path, path: &Path, follow_last: bool) -> io::Result<PathBuf> {
    let parts = |p: &Path| -> VecDeque<OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect()
    };
    let mut pending = parts(path);
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&c);
        let follow = !pending.is_empty() || follow_last;
        match fs::symlink_metadata(root.join(&candidate)) {
            Ok(m) if m.file_type().is_symlink() && follow => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = fs::read_link(root.join(&candidate))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                let mut next = parts(&target);
                next.extend(pending);
                pending = next;
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// A path's stat as `X-Docker-Container-Path-Stat` carries it (Go's `os.FileMode` bits).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathStat {
    pub name: String,
    pub size: i64,
    pub mode: u32,
    pub mtime: String,
    /// For a symlink: where it leads, as an absolute container path.
    #[serde(rename = "linkTarget")]
    pub link_target: String,
}

/// Go's `os.FileMode` of a file: permission bits, Go's set-id and sticky bits, its type.
fn go_file_mode(meta: &fs::Metadata) -> u32 {
    let mode = meta.mode();
    let mut m = mode & 0o777;
    for (unix, go) in [(0o4000, 1 << 23), (0o2000, 1 << 22), (0o1000, 1 << 20)] {
        if mode & unix != 0 {
            m |= go;
        }
    }
    let ft = meta.file_type();
    m | if ft.is_dir() {
        1 << 31
    } else if ft.is_symlink() {
        1 << 27
    } else if ft.is_fifo() {
        1 << 25
    } else if ft.is_socket() {
        1 << 24
    } else if ft.is_block_device() {
        1 << 26
    } else if ft.is_char_device() {
        (1 << 26) | (1 << 21)
    } else {
        0
    }
}

/// dockerd's stat of container path `path` in `root` (the last component not followed) and
/// its host path.
pub fn stat(root: &Path, path: &Path) -> Result<(PathBuf, PathStat), CopyError> {
    let not_found = || CopyError::NotFound(path.display().to_string());
    let host = resolve_in_root(root, path, false).map_err(|_| not_found())?;
    let meta = fs::symlink_metadata(&host).map_err(|_| not_found())?;
    let link_target = if meta.file_type().is_symlink() {
        let end = resolve_in_root(root, path, true).map_err(|_| not_found())?;
        Path::new("/").join(end.strip_prefix(root).unwrap_or(&end)).display().to_string()
    } else {
        String::new()
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into());
    let mtime = engine_util::time::rfc3339_seconds(meta.modified().unwrap_or(std::time::UNIX_EPOCH));
    Ok((host, PathStat { name, size: meta.size() as i64, mode: go_file_mode(&meta), mtime, link_target }))
}

/// Writes container path `path` of `root` as a tar stream named after its last component (a
/// directory with everything in it). The last component is followed when `path` ends in `/`
/// or `/.`, as dockerd does.
pub fn copy_out<W: Write>(root: &Path, path: &str, w: W) -> Result<W, CopyError> {
    let follow = path.ends_with('/') || path.ends_with("/.");
    let p = Path::new(path);
    let (host, st) = stat(root, p)?;
    let host = if follow { resolve_in_root(root, p, true).map_err(io_at(p))? } else { host };
    let name = if path.ends_with("/.") { "." } else { st.name.as_str() };
    write_tree(&host, Path::new(name), TreeForm::Plain, &Default::default(), w).map_err(io_at(&host))
}

/// How an archive is extracted into a container.
#[derive(Clone, Debug, Default)]
pub struct CopyInOptions {
    /// Refuse to replace a directory by a non-directory or the other way round.
    pub no_overwrite_dir_non_dir: bool,
    /// Owner of everything extracted (the container's user, `docker cp -a`); else the archive's.
    pub owner: Option<(u32, u32)>,
    /// Permissions of everything extracted (a build's `COPY --chmod`); else the archive's.
    pub mode: Option<u32>,
}

/// Extracts the tar stream `r` into directory `dir` (a container path) of `root`.
pub fn copy_in(root: &Path, dir: &str, r: impl Read, opts: &CopyInOptions) -> Result<(), CopyError> {
    let dir = Path::new(dir);
    let dest = resolve_in_root(root, dir, true).map_err(io_at(dir))?;
    match fs::metadata(&dest) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(CopyError::NotADirectory(dir.display().to_string())),
        Err(_) => return Err(CopyError::NotFound(dir.display().to_string())),
    }
    let mut dir_times = Vec::new();
    tarstream::for_each_entry(r, |e: &TarEntry, content: &mut dyn Read| -> Result<(), CopyError> {
        let Some(file_name) = e.path.file_name() else { return Ok(()) };
        // the member's directory, resolved in the root as the container would: a symlink of
        // the container's on the way leads where it leads there, never out of the root
        let parent_in_container = dir.join(e.path.parent().unwrap_or(Path::new("")));
        let parent = resolve_in_root(root, &parent_in_container, true).map_err(io_at(&parent_in_container))?;
        match fs::symlink_metadata(&parent) {
            Ok(m) if m.is_dir() => {}
            // a member whose directories the archive does not hold: they are made (0755), as
            // Docker's untar makes them; never through a link, which resolution has followed
            Err(e) if e.kind() == io::ErrorKind::NotFound && parent.starts_with(root) => {
                fs::DirBuilder::new().recursive(true).mode(0o755).create(&parent).map_err(io_at(&parent))?
            }
            _ => return Err(CopyError::NotFound(parent_in_container.display().to_string())),
        }
        let target = parent.join(file_name);
        let shown = parent_in_container.join(file_name);
        if let Ok(existing) = fs::symlink_metadata(&target) {
            let is_dir = e.kind == EntryKind::Dir;
            if is_dir && existing.is_dir() {
                apply_metadata(&target, e, opts)?;
                dir_times.push((target, e.mtime));
                return Ok(());
            }
            if opts.no_overwrite_dir_non_dir && existing.is_dir() != is_dir {
                return Err(CopyError::Refused(if existing.is_dir() {
                    format!("cannot overwrite directory {:?} with non-directory", shown.display().to_string())
                } else {
                    format!("cannot overwrite non-directory {:?} with directory", shown.display().to_string())
                }));
            }
            if existing.is_dir() { fs::remove_dir_all(&target) } else { fs::remove_file(&target) }
                .map_err(io_at(&target))?;
        }
        let mode = nix::sys::stat::Mode::from_bits_truncate(e.mode & 0o7777);
        match e.kind {
            EntryKind::Dir => fs::DirBuilder::new().mode(0o700).create(&target).map_err(io_at(&target))?,
            EntryKind::File => {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(io_at(&target))?;
                io::copy(content, &mut f).map_err(io_at(&target))?;
            }
            EntryKind::Symlink => {
                let link = std::ffi::OsStr::from_bytes(e.link.as_deref().unwrap_or_default());
                std::os::unix::fs::symlink(link, &target).map_err(io_at(&target))?;
            }
            EntryKind::HardLink => {
                let stored = tarstream::normalize(e.link.as_deref().unwrap_or_default())?;
                let source = resolve_in_root(root, &dir.join(&stored), false).map_err(io_at(&stored))?;
                if !fs::symlink_metadata(&source).is_ok_and(|m| m.is_file()) {
                    return Err(CopyError::Refused(format!(
                        "hard link {} to {}: not a file",
                        shown.display(),
                        stored.display()
                    )));
                }
                fs::hard_link(&source, &target).map_err(io_at(&target))?;
            }
            EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo => {
                let kind = match e.kind {
                    EntryKind::CharDevice => nix::sys::stat::SFlag::S_IFCHR,
                    EntryKind::BlockDevice => nix::sys::stat::SFlag::S_IFBLK,
                    _ => nix::sys::stat::SFlag::S_IFIFO,
                };
                let dev = nix::sys::stat::makedev(e.device.0.into(), e.device.1.into());
                nix::sys::stat::mknod(&target, kind, mode, dev).map_err(|e| io_at(&target)(e.into()))?;
            }
        }
        if e.kind != EntryKind::HardLink {
            apply_metadata(&target, e, opts)?;
        }
        if e.kind == EntryKind::Dir {
            dir_times.push((target, e.mtime));
        }
        Ok(())
    })?;
    // directories last: what was made in them moved their times
    for (path, mtime) in dir_times.iter().rev() {
        set_mtime(path, *mtime)?;
    }
    Ok(())
}

fn apply_metadata(path: &Path, e: &TarEntry, opts: &CopyInOptions) -> Result<(), CopyError> {
    let (uid, gid) = opts.owner.unwrap_or((e.uid as u32, e.gid as u32));
    match std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
        // a user who is not root (a local copy out of a container) keeps what it may
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && !nix::unistd::geteuid().is_root() => {}
        r => r.map_err(io_at(path))?,
    }
    if e.kind != EntryKind::Symlink {
        let mode = opts.mode.unwrap_or(e.mode) & 0o7777;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_at(path))?;
    }
    set_mtime(path, e.mtime)
}

fn set_mtime(path: &Path, mtime: i64) -> Result<(), CopyError> {
    let t = nix::sys::time::TimeSpec::new(mtime, 0);
    nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, path, &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink)
        .map_err(|e| io_at(path)(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// root: /etc/real (a file), /abs -> /etc, /rel -> ../../etc, /loop -> /loop
    fn root() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("etc")).unwrap();
        fs::write(t.path().join("etc/real"), "inside").unwrap();
        std::os::unix::fs::symlink("/etc", t.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../etc", t.path().join("rel")).unwrap();
        std::os::unix::fs::symlink("/loop", t.path().join("loop")).unwrap();
        t
    }

    #[test]
    fn paths_resolve_inside_the_root_whatever_the_links_say() {
        let t = root();
        let r = t.path();
        assert_eq!(resolve_in_root(r, Path::new("/abs/real"), true).unwrap(), r.join("etc/real"));
        assert_eq!(resolve_in_root(r, Path::new("/rel/real"), true).unwrap(), r.join("etc/real"));
        assert_eq!(resolve_in_root(r, Path::new("/../../etc/real"), true).unwrap(), r.join("etc/real"));
        assert_eq!(resolve_in_root(r, Path::new("/abs"), false).unwrap(), r.join("abs"));
        assert_eq!(resolve_in_root(r, Path::new("/abs/missing/x"), true).unwrap(), r.join("etc/missing/x"));
        assert!(resolve_in_root(r, Path::new("/loop/x"), true).is_err());
    }

    #[test]
    fn a_stat_is_dockerds() {
        let t = root();
        let (_, st) = stat(t.path(), Path::new("/abs")).unwrap();
        assert_eq!((st.name.as_str(), st.mode & (1 << 27) != 0, st.link_target.as_str()), ("abs", true, "/etc"));
        let (_, st) = stat(t.path(), Path::new("/etc")).unwrap();
        assert_eq!(st.mode & (1 << 31), 1 << 31);
        assert!(matches!(stat(t.path(), Path::new("/nope")), Err(CopyError::NotFound(_))));
    }

    fn archive(members: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, ty, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*ty);
            h.set_mode(0o640);
            h.set_uid(1000);
            h.set_gid(1000);
            h.set_mtime(1_000_000);
            match ty {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    h.set_size(0);
                    b.append_link(&mut h, name, data).unwrap();
                }
                _ => {
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, name, data.as_bytes()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn an_archive_lands_in_the_root_through_the_containers_links_and_never_out_of_it() {
        let t = root();
        let outside = tempfile::tempdir().unwrap();
        // a link of the container's that points at a host path names a path in the root
        std::os::unix::fs::symlink(outside.path(), t.path().join("escape")).unwrap();
        let tar = archive(&[
            ("d", tar::EntryType::Directory, ""),
            ("d/f", tar::EntryType::Regular, "data"),
            ("d/h", tar::EntryType::Link, "d/f"),
            ("d/s", tar::EntryType::Symlink, "/etc/real"),
        ]);
        copy_in(t.path(), "/abs", tar.as_slice(), &CopyInOptions::default()).unwrap();
        let r = t.path();
        let escape = archive(&[("escape/x", tar::EntryType::Regular, "no")]);
        copy_in(r, "/", escape.as_slice(), &CopyInOptions::default()).unwrap();
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0, "a file was written outside the root");
        // the link's target read in the root: made there, as the container would see it
        let inside = r.join(outside.path().strip_prefix("/").unwrap()).join("x");
        assert_eq!(fs::read_to_string(inside).unwrap(), "no");
        assert_eq!(fs::read_to_string(r.join("etc/d/f")).unwrap(), "data");
        assert_eq!(fs::metadata(r.join("etc/d/h")).unwrap().ino(), fs::metadata(r.join("etc/d/f")).unwrap().ino());
        assert_eq!(fs::read_link(r.join("etc/d/s")).unwrap(), Path::new("/etc/real"));
        let m = fs::metadata(r.join("etc/d/f")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.mtime()), (0o640, 1000, 1_000_000));

        // into a file: refused; a directory replaced by a file: refused when asked
        let err = copy_in(r, "/etc/real", archive(&[]).as_slice(), &CopyInOptions::default()).unwrap_err();
        assert!(matches!(err, CopyError::NotADirectory(_)), "{err}");
        let opts = CopyInOptions { no_overwrite_dir_non_dir: true, owner: Some((0, 0)), mode: None };
        let err = copy_in(r, "/etc", archive(&[("d", tar::EntryType::Regular, "x")]).as_slice(), &opts).unwrap_err();
        assert!(err.to_string().contains("cannot overwrite directory"), "{err}");
        assert!(r.join("etc/d/f").exists());
    }

    #[test]
    fn a_path_goes_out_named_after_its_last_component() {
        let t = root();
        let bytes = copy_out(t.path(), "/abs/", Vec::new()).unwrap();
        let names: Vec<String> = tar::Archive::new(bytes.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["abs", "abs/real"]);
        let bytes = copy_out(t.path(), "/abs", Vec::new()).unwrap();
        let mut ar = tar::Archive::new(bytes.as_slice());
        let e = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(e.header().entry_type(), tar::EntryType::Symlink);
    }
}
