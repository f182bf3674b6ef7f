//! Reading tar streams from untrusted sources. Extension headers (PAX, GNU long names) are
//! combined here rather than by the `tar` crate, so their sizes are bounded before anything is
//! read into memory, and every path is normalised to components below the archive root, as
//! dockerd and containerd clean them: a leading `/` or `./` is dropped (umoci writes the root as
//! `/`), `..` is resolved lexically, and a path that leaves the root after cleaning is refused.

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

/// Largest PAX or GNU long-name header accepted. Real archives use a few hundred bytes; the
/// bound is what stops a hostile header from asking for gigabytes of memory.
pub const MAX_EXTENSION_BYTES: u64 = 1 << 20;
/// Longest path (and link target) accepted, as the kernel's PATH_MAX.
pub const MAX_PATH_BYTES: usize = 4096;
const MAX_NAME_BYTES: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("reading archive: {0}")]
    Io(#[from] io::Error),
    #[error("refused {path:?}: {reason}")]
    Refused { path: String, reason: String },
    #[error("malformed archive: {0}")]
    Malformed(String),
}

impl TarError {
    pub(crate) fn refused(path: impl AsRef<[u8]>, reason: impl Into<String>) -> Self {
        TarError::Refused { path: String::from_utf8_lossy(path.as_ref()).into_owned(), reason: reason.into() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    HardLink,
    CharDevice,
    BlockDevice,
    Fifo,
}

/// One member of an archive, with its extensions applied.
#[derive(Debug)]
pub struct TarEntry {
    /// Normalised path below the archive root; empty for the root itself.
    pub path: PathBuf,
    /// The path as it appeared in the archive, for messages.
    pub raw_path: Vec<u8>,
    pub kind: EntryKind,
    /// Symlink target (as stored) or hard-link target (as stored).
    pub link: Option<Vec<u8>>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub size: u64,
    pub device: (u32, u32),
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Normalises a member path: a leading `/`, `.` and empty components dropped, `..` taken
/// lexically; a NUL byte or a path that climbs above the root is refused.
pub fn normalize(raw: &[u8]) -> Result<PathBuf, TarError> {
    if raw.contains(&0) {
        return Err(TarError::refused(raw, "path contains a NUL byte"));
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(TarError::refused(&raw[..64], format!("path longer than {MAX_PATH_BYTES} bytes")));
    }
    let mut out = PathBuf::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if !out.pop() {
                    return Err(TarError::refused(raw, "path leaves the archive root (..)"));
                }
            }
            name if name.len() > MAX_NAME_BYTES => {
                return Err(TarError::refused(raw, "path component longer than 255 bytes"))
            }
            name => out.push(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name)),
        }
    }
    Ok(out)
}

/// Resolves a relative symlink target against the link's directory without touching the
/// filesystem; `None` when it climbs above the root.
pub fn resolve_lexically(link_dir: &Path, target: &Path) -> Option<PathBuf> {
    let mut out: Vec<Component> = link_dir.components().collect();
    for c in target.components() {
        match c {
            Component::ParentDir => {
                out.pop()?;
            }
            Component::Normal(_) => out.push(c),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Some(PathBuf::from("/")),
        }
    }
    Some(out.iter().collect())
}

#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

fn read_extension<R: Read>(entry: &mut tar::Entry<'_, R>, what: &str) -> Result<Vec<u8>, TarError> {
    let size = entry.header().entry_size()?;
    if size > MAX_EXTENSION_BYTES {
        return Err(TarError::refused(
            entry.path_bytes(),
            format!("{what} header of {size} bytes (limit {MAX_EXTENSION_BYTES})"),
        ));
    }
    let mut v = Vec::with_capacity(size as usize);
    entry.take(size).read_to_end(&mut v)?;
    while v.last() == Some(&0) {
        v.pop();
    }
    Ok(v)
}

/// The archive's reader, taking an end right after a member's content as the end of the
/// archive, as Go's `archive/tar` (and so dockerd and containerd) does: some writers (umoci 0.4's
/// `insert`) leave out the last member's padding and the two zero blocks. The missing zeros are
/// supplied; a stream that ends anywhere else (inside a member's content or header) still ends
/// there and is refused as truncated.
struct LenientEnd<R> {
    inner: R,
    pos: u64,
    /// Where the current member's content ends, as the loop below learns it.
    content_end: std::rc::Rc<std::cell::Cell<u64>>,
    /// Zeros still to supply once the stream has ended at a member's end.
    zeros: Option<u64>,
}

impl<R: Read> Read for LenientEnd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(left) = &mut self.zeros {
            let n = (*left).min(buf.len() as u64) as usize;
            buf[..n].fill(0);
            *left -= n as u64;
            return Ok(n);
        }
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && self.pos == self.content_end.get() && !self.pos.is_multiple_of(512) {
            self.zeros = Some(512 - self.pos % 512 + 1024);
            return self.read(buf);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Calls `f` for every member of the tar stream `r`, with a reader for its content.
pub fn for_each_entry<R, E, F>(r: R, mut f: F) -> Result<(), E>
where
    R: Read,
    E: From<TarError>,
    F: FnMut(&TarEntry, &mut dyn Read) -> Result<(), E>,
{
    let content_end = std::rc::Rc::new(std::cell::Cell::new(0));
    let r = LenientEnd { inner: r, pos: 0, content_end: content_end.clone(), zeros: None };
    let mut archive = tar::Archive::new(r);
    let entries = archive.entries().map_err(TarError::from)?.raw(true);
    let mut pending = Pending::default();
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            // The tar crate quotes the offending header; keep the message to one short line.
            let msg: String = e
                .to_string()
                .split(" when ")
                .next()
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_control())
                .take(80)
                .collect();
            TarError::Malformed(format!("not a valid tar stream ({msg})"))
        })?;
        let header = entry.header();
        content_end.set(entry.raw_file_position() + header.entry_size().unwrap_or(0));
        let ty = header.entry_type();
        match ty {
            EntryType::GNULongName => {
                pending.long_name = Some(read_extension(&mut entry, "GNU long name")?);
                continue;
            }
            EntryType::GNULongLink => {
                pending.long_link = Some(read_extension(&mut entry, "GNU long link")?);
                continue;
            }
            EntryType::XHeader => {
                pending.pax = Some(read_extension(&mut entry, "PAX")?);
                continue;
            }
            EntryType::XGlobalHeader => {
                read_extension(&mut entry, "PAX global")?;
                continue;
            }
            _ => {}
        }
        let ext = std::mem::take(&mut pending);
        let tar_entry = describe(&entry, ext)?;
        f(&tar_entry, &mut entry)?;
    }
    if pending.long_name.is_some() || pending.long_link.is_some() || pending.pax.is_some() {
        return Err(TarError::Malformed("extension header with no member after it".into()).into());
    }
    Ok(())
}

fn describe<R: Read>(entry: &tar::Entry<'_, R>, ext: Pending) -> Result<TarEntry, TarError> {
    let header = entry.header();
    let mut raw_path = ext.long_name.unwrap_or_else(|| entry.path_bytes().into_owned());
    let mut link = ext.long_link.or_else(|| entry.link_name_bytes().map(|l| l.into_owned()));
    let bad = |m: &str| TarError::Malformed(format!("{}: {m}", String::from_utf8_lossy(&entry.path_bytes())));
    let mut uid = header.uid().map_err(|_| bad("bad uid"))?;
    let mut gid = header.gid().map_err(|_| bad("bad gid"))?;
    let mut mtime = header.mtime().map_err(|_| bad("bad mtime"))? as i64;
    let size = header.entry_size().map_err(|_| bad("bad size"))?;
    let mut xattrs = Vec::new();
    if let Some(pax) = &ext.pax {
        for rec in tar::PaxExtensions::new(pax) {
            let rec = rec.map_err(|_| bad("malformed PAX record"))?;
            let key = rec.key_bytes();
            let value = rec.value_bytes();
            let num = || std::str::from_utf8(value).ok().and_then(|v| v.split('.').next()?.parse::<i64>().ok());
            match key {
                b"path" => raw_path = value.to_vec(),
                b"linkpath" => link = Some(value.to_vec()),
                b"uid" => uid = num().filter(|v| *v >= 0).ok_or_else(|| bad("bad PAX uid"))? as u64,
                b"gid" => gid = num().filter(|v| *v >= 0).ok_or_else(|| bad("bad PAX gid"))? as u64,
                b"mtime" => mtime = num().ok_or_else(|| bad("bad PAX mtime"))?,
                b"size" if num() != Some(size as i64) => {
                    return Err(TarError::refused(&raw_path, "PAX size differs from the header's (unsupported)"));
                }
                k if k.starts_with(b"GNU.sparse.") => {
                    return Err(TarError::refused(&raw_path, "sparse files are not supported"))
                }
                k if k.starts_with(b"SCHILY.xattr.") => {
                    xattrs.push((k[b"SCHILY.xattr.".len()..].to_vec(), value.to_vec()))
                }
                _ => {}
            }
        }
    }
    let kind = match header.entry_type() {
        EntryType::Regular | EntryType::Continuous => EntryKind::File,
        EntryType::Directory => EntryKind::Dir,
        EntryType::Symlink => EntryKind::Symlink,
        EntryType::Link => EntryKind::HardLink,
        EntryType::Char => EntryKind::CharDevice,
        EntryType::Block => EntryKind::BlockDevice,
        EntryType::Fifo => EntryKind::Fifo,
        EntryType::GNUSparse => return Err(TarError::refused(&raw_path, "sparse files are not supported")),
        other => {
            return Err(TarError::refused(&raw_path, format!("unsupported entry type {:?}", other.as_byte() as char)))
        }
    };
    if matches!(kind, EntryKind::Symlink | EntryKind::HardLink) {
        match &link {
            Some(l) if !l.is_empty() && l.len() <= MAX_PATH_BYTES && !l.contains(&0) => {}
            _ => return Err(TarError::refused(&raw_path, "link with an empty, overlong or NUL-containing target")),
        }
    }
    let path = normalize(&raw_path)?;
    let device = match kind {
        EntryKind::CharDevice | EntryKind::BlockDevice => {
            (header.device_major().ok().flatten().unwrap_or(0), header.device_minor().ok().flatten().unwrap_or(0))
        }
        _ => (0, 0),
    };
    let mode = header.mode().map_err(|_| bad("bad mode"))? & 0o7777;
    Ok(TarEntry { path, raw_path, kind, link, mode, uid, gid, mtime, size, device, xattrs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_member_paths() {
        assert_eq!(normalize(b"./a//b/./c/").unwrap(), PathBuf::from("a/b/c"));
        assert_eq!(normalize(b"./").unwrap(), PathBuf::new());
        // umoci's and other tools' spellings of the same members.
        assert_eq!(normalize(b"/").unwrap(), PathBuf::new());
        assert_eq!(normalize(b"/etc/passwd").unwrap(), PathBuf::from("etc/passwd"));
        assert_eq!(normalize(b"a/../b").unwrap(), PathBuf::from("b"));
        for bad in [&b"a/../../b"[..], b"..", b"/../etc", b"a\0b"] {
            assert!(normalize(bad).is_err(), "{bad:?}");
        }
    }

    fn member(name: &str, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(EntryType::Regular);
        h.set_cksum();
        let mut v = h.as_bytes().to_vec();
        v.extend_from_slice(data);
        v
    }

    fn names(archive: &[u8]) -> Result<Vec<(PathBuf, Vec<u8>)>, TarError> {
        let mut out = Vec::new();
        for_each_entry(archive, |e: &TarEntry, r: &mut dyn Read| {
            let mut v = Vec::new();
            r.read_to_end(&mut v)?;
            out.push((e.path.clone(), v));
            Ok::<_, TarError>(())
        })?;
        Ok(out)
    }

    #[test]
    fn an_end_right_after_the_last_members_content_is_the_archives_end() {
        // As umoci 0.4's `insert` writes: no padding, no zero blocks.
        let mut a = member("a", b"first");
        a.resize(1024, 0);
        a.extend(member("greeting", b"hi\n"));
        let got = names(&a).unwrap();
        assert_eq!(got, vec![(PathBuf::from("a"), b"first".to_vec()), (PathBuf::from("greeting"), b"hi\n".to_vec())]);
        // Cut inside the content, the member is truncated: refused.
        let cut = &a[..a.len() - 1];
        assert!(names(cut).is_err());
        // Cut inside a header: refused.
        assert!(names(&a[..700]).is_err());
    }

    #[test]
    fn resolves_links_lexically() {
        assert_eq!(resolve_lexically(Path::new("usr/lib"), Path::new("../../lib/x")), Some(PathBuf::from("lib/x")));
        assert_eq!(resolve_lexically(Path::new("usr"), Path::new("../../etc")), None);
        assert_eq!(resolve_lexically(Path::new(""), Path::new("..")), None);
    }
}
