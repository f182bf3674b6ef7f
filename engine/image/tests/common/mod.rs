//! Building images the way their makers do (GNU tar for layers, `docker save`'s layout) and
//! comparing trees and stores.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

pub use engine_image::{Digest, ImageStore};
pub use engine_test_support::*;

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
    stdout(&out)
}

/// A GNU tar (POSIX format, with xattrs) of the directory `dir`, as image builders write layers.
pub fn tar_dir(dir: &Path, out: &Path) {
    run(Command::new("tar")
        .args(["--format=posix", "--xattrs", "--xattrs-include=user.*", "--numeric-owner", "--sort=name"])
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg("."));
}

pub fn sha256_file(p: &Path) -> Digest {
    Digest::of(&std::fs::read(p).unwrap())
}

/// The busybox base layer: busybox-static, its applet links, /etc, and /tmp/old.
pub fn base_layer(dir: &Path) {
    make_busybox_rootfs(dir);
    std::fs::write(dir.join("tmp/old"), "lower").unwrap();
    std::fs::create_dir_all(dir.join("var/keep")).unwrap();
    std::fs::write(dir.join("var/keep/file"), "kept").unwrap();
}

/// A second layer with every kind of member: whiteout, opaque directory, hard link, symlink,
/// set-uid file, owned file, xattr, fifo, a path longer than ustar allows.
pub fn top_layer(dir: &Path) {
    let d = |p: &str| {
        let p = dir.join(p);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    std::fs::write(d("etc").join(".wh.group"), "").unwrap();
    std::fs::write(d("tmp").join(".wh..wh..opq"), "").unwrap();
    std::fs::write(dir.join("tmp/new"), "upper").unwrap();
    let data = d("data");
    let big: Vec<u8> = (0..1_048_576u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(data.join("big.bin"), &big).unwrap();
    std::fs::hard_link(data.join("big.bin"), data.join("hard")).unwrap();
    std::os::unix::fs::symlink("../bin/busybox", data.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", data.join("abs-link")).unwrap();
    std::fs::write(data.join("suid"), "s").unwrap();
    std::fs::set_permissions(data.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::write(data.join("owned"), "o").unwrap();
    std::os::unix::fs::chown(data.join("owned"), Some(1000), Some(1000)).unwrap();
    std::fs::write(data.join("x"), "x").unwrap();
    set_xattr(&data.join("x"), "user.test", b"hello");
    nix::unistd::mkfifo(&data.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    let long = d(&format!("data/{}/{}", "d".repeat(90), "e".repeat(90)));
    std::fs::write(long.join("deep"), "deep").unwrap();
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = CString::new(name).unwrap();
    // SAFETY: NUL-terminated strings and a valid slice.
    let rc = unsafe { libc::lsetxattr(cp.as_ptr(), cn.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(rc, 0, "setxattr {}: {}", p.display(), std::io::Error::last_os_error());
}

pub fn xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    // SAFETY: buffer and length describe valid memory.
    let n = unsafe { libc::llistxattr(cp.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in names[..n as usize].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 4096];
        // SAFETY: as above.
        let m = unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        v.truncate(m.max(0) as usize);
        out.push((String::from_utf8_lossy(name).into_owned(), v));
    }
    out.sort();
    out
}

/// Every entry under `root` described by type, mode, owner, size, content digest, link
/// target, device, xattrs and (for non-directories) mtime, plus which entries share an inode.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let ft = m.file_type();
        let mut desc = format!("{:o} {}:{}", m.mode(), m.uid(), m.gid());
        if ft.is_dir() {
            let mut children: Vec<PathBuf> = std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()).collect();
            children.sort();
            stack.extend(children);
            desc = format!("dir {desc}");
        } else if ft.is_symlink() {
            desc = format!("link {desc} -> {}", std::fs::read_link(&p).unwrap().display());
        } else if ft.is_file() {
            desc = format!("file {desc} {} {} mtime={}", m.len(), sha256_file(&p), m.mtime());
            if m.nlink() > 1 {
                let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone();
                desc.push_str(&format!(" inode-of={first}"));
            }
        } else {
            desc = format!("special {desc} rdev={} mtime={}", m.rdev(), m.mtime());
        }
        for (k, v) in xattrs(&p) {
            desc.push_str(&format!(" xattr {k}={}", String::from_utf8_lossy(&v)));
        }
        out.insert(rel, desc);
    }
    out
}

/// Everything under a store root, for "the store is exactly as it was" comparisons.
pub fn store_listing(root: &Path) -> BTreeMap<String, String> {
    let mut t = tree(root);
    // the lock file's and directories' own times are not state
    t.retain(|k, _| k != "lock");
    t
}

pub struct TestImage {
    pub archive: PathBuf,
    pub base_dir: PathBuf,
    pub top_dir: PathBuf,
}

/// A `docker save` archive (the 20.10 layout: `<id>/layer.tar`, `<id>.json`, manifest.json)
/// of a two-layer busybox image tagged `test/busybox:1`; the top layer gzip-compressed.
pub fn docker_save_archive(work: &Path) -> TestImage {
    let base_dir = work.join("base");
    let top_dir = work.join("top");
    base_layer(&base_dir);
    top_layer(&top_dir);
    let out = work.join("save");
    std::fs::create_dir_all(out.join("l1")).unwrap();
    std::fs::create_dir_all(out.join("l2")).unwrap();
    tar_dir(&base_dir, &out.join("l1/layer.tar"));
    tar_dir(&top_dir, &out.join("l2/layer.tar"));
    let diff_ids = [sha256_file(&out.join("l1/layer.tar")), sha256_file(&out.join("l2/layer.tar"))];
    run(Command::new("gzip").arg("-n").arg(out.join("l2/layer.tar")));
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-01-02T03:04:05Z",
        "config": { "Cmd": ["sh"], "Env": ["PATH=/bin"], "WorkingDir": "/data", "Labels": { "maker": "test" }, "ExposedPorts": { "80/tcp": {} } },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": [ { "created": "2026-01-02T03:04:05Z", "created_by": "base" }, { "created": "2026-01-02T03:04:05Z", "created_by": "top" } ]
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", Digest::of(&config_bytes).hex());
    std::fs::write(out.join(&config_name), &config_bytes).unwrap();
    let manifest = serde_json::json!([{ "Config": config_name, "RepoTags": ["test/busybox:1"], "Layers": ["l1/layer.tar", "l2/layer.tar.gz"] }]);
    std::fs::write(out.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let archive = work.join("image.tar");
    run(Command::new("tar").arg("-C").arg(&out).arg("-cf").arg(&archive).arg("."));
    TestImage { archive, base_dir, top_dir }
}

/// Mount points under `dir` (to check that nothing is left mounted).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(dir.to_str().unwrap()))
        .map(str::to_string)
        .collect()
}

/// Raw tar members, written without the `tar` crate's own path checks.
#[derive(Default)]
pub struct RawTar(pub Vec<u8>);

impl RawTar {
    pub fn member(&mut self, name: &[u8], kind: tar::EntryType, data: &[u8], link: &[u8]) -> &mut Self {
        self.member_sized(name, kind, data, data.len() as u64, link, None)
    }

    pub fn member_sized(
        &mut self,
        name: &[u8],
        kind: tar::EntryType,
        data: &[u8],
        size: u64,
        link: &[u8],
        dev: Option<(u32, u32)>,
    ) -> &mut Self {
        let mut h = tar::Header::new_ustar();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        if let Some((ma, mi)) = dev {
            h.set_device_major(ma).unwrap();
            h.set_device_minor(mi).unwrap();
        }
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }

    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = format!(" {k}=").len() + v.len() + 1;
            let mut len = rest + 1;
            while len.to_string().len() + rest != len {
                len += 1;
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        self.member(b"PaxHeaders/x", tar::EntryType::XHeader, &body, b"")
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.member(name.as_bytes(), tar::EntryType::Regular, data, b"")
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.0);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}
