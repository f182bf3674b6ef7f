//! The container's root filesystem, prepared inside its new mount namespace: propagation, the
//! rootfs bind, the spec's mounts, device nodes and /dev symlinks, pivot_root (or move+chroot), and
//! after the pivot the masked, read-only paths and a read-only root.
//!
//! Every destination is resolved inside the rootfs with symlinks followed *within* it, so an image
//! cannot point a mount outside its root.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, chroot, fchdir, pivot_root};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount};

use crate::cgroups::CgroupPaths;

/// Errors while preparing the root filesystem. Each names the path and the operation.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mount {what} on {target}: {errno}")]
    Mount { what: String, target: PathBuf, errno: nix::Error },
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("{op}: {errno}")]
    Sys { op: String, errno: nix::Error },
    #[error("mount destination {0} resolves through too many symlinks")]
    SymlinkLoop(PathBuf),
    #[error("mount option {0:?} is not supported")]
    BadOption(String),
    #[error("filesystem {fs:?} must be mounted on ordinary directory: {target} is not one")]
    NotADirectory { fs: String, target: PathBuf },
}

type Result<T> = std::result::Result<T, RootfsError>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io { op, path: path.to_path_buf(), source }
}

fn sys(op: impl Into<String>) -> impl FnOnce(nix::Error) -> RootfsError {
    let op = op.into();
    move |errno| RootfsError::Sys { op, errno }
}

fn do_mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    mount(source, target, fstype, flags, data).map_err(|errno| RootfsError::Mount {
        what: match (fstype, source) {
            (Some(t), _) if !flags.contains(MsFlags::MS_BIND) => t.to_string(),
            (_, Some(s)) => s.display().to_string(),
            _ => format!("{flags:?}"),
        },
        target: target.to_path_buf(),
        errno,
    })
}

/// Mount options split into flags, propagation changes and filesystem data.
#[derive(Debug, PartialEq)]
pub struct MountOptions {
    pub flags: MsFlags,
    pub propagation: Vec<MsFlags>,
    pub data: Vec<String>,
    pub bind: bool,
    /// Attributes set and cleared on the mount and every mount below it (`rro`, `rnosuid`, …),
    /// with `mount_setattr(AT_RECURSIVE)` once it is made.
    pub recursive: Option<MountAttr>,
}

/// `mount_setattr`'s attributes to set and to clear.
#[derive(Debug, Default, PartialEq, Clone, Copy)]
pub struct MountAttr {
    pub set: u64,
    pub clear: u64,
}

/// The recursive options as runc takes them: (clears the attribute, attribute).
fn recursive_option(opt: &str) -> Option<(bool, u64)> {
    Some(match opt {
        "rro" => (false, libc::MOUNT_ATTR_RDONLY),
        "rrw" => (true, libc::MOUNT_ATTR_RDONLY),
        "rnosuid" => (false, libc::MOUNT_ATTR_NOSUID),
        "rsuid" => (true, libc::MOUNT_ATTR_NOSUID),
        "rnodev" => (false, libc::MOUNT_ATTR_NODEV),
        "rdev" => (true, libc::MOUNT_ATTR_NODEV),
        "rnoexec" => (false, libc::MOUNT_ATTR_NOEXEC),
        "rexec" => (true, libc::MOUNT_ATTR_NOEXEC),
        "rnodiratime" => (false, libc::MOUNT_ATTR_NODIRATIME),
        "rdiratime" => (true, libc::MOUNT_ATTR_NODIRATIME),
        "rrelatime" => (false, libc::MOUNT_ATTR_RELATIME),
        "rnorelatime" => (true, libc::MOUNT_ATTR_RELATIME),
        "rnoatime" => (false, libc::MOUNT_ATTR_NOATIME),
        "ratime" => (true, libc::MOUNT_ATTR_NOATIME),
        "rstrictatime" => (false, libc::MOUNT_ATTR_STRICTATIME),
        "rnostrictatime" => (true, libc::MOUNT_ATTR_STRICTATIME),
        "rnosymfollow" => (false, libc::MOUNT_ATTR_NOSYMFOLLOW),
        "rsymfollow" => (true, libc::MOUNT_ATTR_NOSYMFOLLOW),
        _ => return None,
    })
}

/// Applies `attr` to the mount at `target` and every mount below it.
fn set_recursive(target: &Path, attr: MountAttr) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(target.as_os_str().as_bytes()).map_err(|_| RootfsError::Sys {
        op: format!("mount_setattr {}", target.display()),
        errno: nix::Error::EINVAL,
    })?;
    let mut a = libc::mount_attr { attr_set: attr.set, attr_clr: attr.clear, propagation: 0, userns_fd: 0 };
    // SAFETY: the path is NUL-terminated and `a` outlives the call, which reads size_of bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &mut a as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        return Err(RootfsError::Sys { op: format!("mount_setattr {}", target.display()), errno: nix::Error::last() });
    }
    Ok(())
}

/// Parses a spec mount's `options` as mount(8) reads them.
pub fn parse_options(options: &[String]) -> Result<MountOptions> {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        propagation: Vec::new(),
        data: Vec::new(),
        bind: false,
        recursive: None,
    };
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => {
                o.bind = true;
                (MsFlags::MS_BIND, MsFlags::empty())
            }
            "rbind" => {
                o.bind = true;
                (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
            }
            "private" => {
                o.propagation.push(MsFlags::MS_PRIVATE);
                continue;
            }
            "rprivate" => {
                o.propagation.push(MsFlags::MS_PRIVATE | MsFlags::MS_REC);
                continue;
            }
            "shared" => {
                o.propagation.push(MsFlags::MS_SHARED);
                continue;
            }
            "rshared" => {
                o.propagation.push(MsFlags::MS_SHARED | MsFlags::MS_REC);
                continue;
            }
            "slave" => {
                o.propagation.push(MsFlags::MS_SLAVE);
                continue;
            }
            "rslave" => {
                o.propagation.push(MsFlags::MS_SLAVE | MsFlags::MS_REC);
                continue;
            }
            "unbindable" => {
                o.propagation.push(MsFlags::MS_UNBINDABLE);
                continue;
            }
            "runbindable" => {
                o.propagation.push(MsFlags::MS_UNBINDABLE | MsFlags::MS_REC);
                continue;
            }
            // runc's own options that are not for the kernel
            s if s.starts_with("x-") => continue,
            "nosymfollow" => (MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW), MsFlags::empty()),
            "symfollow" => (MsFlags::empty(), MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW)),
            r if recursive_option(r).is_some() => {
                if let Some((clear, attr)) = recursive_option(r) {
                    let rec = o.recursive.get_or_insert_with(MountAttr::default);
                    if clear {
                        rec.clear |= attr;
                        rec.set &= !attr;
                    } else {
                        rec.set |= attr;
                        rec.clear &= !attr;
                        // An access-time setting replaces the others (mount_setattr(2)).
                        if attr & libc::MOUNT_ATTR__ATIME == attr {
                            rec.clear |= libc::MOUNT_ATTR__ATIME;
                        }
                    }
                }
                continue;
            }
            "tmpcopyup" | "idmap" | "ridmap" => return Err(RootfsError::BadOption(opt.clone())),
            data => {
                o.data.push(data.to_string());
                continue;
            }
        };
        o.flags.insert(set);
        o.flags.remove(clear);
    }
    Ok(o)
}

/// Resolves `path` inside `root` the way the container would see it: `..` stops at the root and
/// symlinks are followed relative to the root. Missing components are kept as they are.
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    let mut resolved = PathBuf::new(); // relative to root
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == OsStr::new("..") {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        match fs::symlink_metadata(root.join(&candidate)) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(RootfsError::SymlinkLoop(path.to_path_buf()));
                }
                let target =
                    fs::read_link(root.join(&candidate)).map_err(io_err("readlink", &root.join(&candidate)))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(p) => pending.push(p.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// Creates `path` (inside the rootfs, already resolved) as a directory, or as an empty file when
/// `file` is set, with missing parents.
fn create_target(path: &Path, file: bool) -> Result<()> {
    if file {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err("mkdir", parent))?;
        }
        if fs::symlink_metadata(path).is_err() {
            fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .map_err(io_err("create", path))?;
        }
        Ok(())
    } else {
        fs::create_dir_all(path).map_err(io_err("mkdir", path))
    }
}

/// What `prepare` needs besides the spec.
pub struct RootfsConfig<'a> {
    pub rootfs: &'a Path,
    pub bundle: &'a Path,
    pub mounts: &'a [Mount],
    pub devices: &'a [LinuxDevice],
    pub propagation: Option<&'a str>,
    pub cgroup: &'a CgroupPaths,
    /// The container has its own cgroup namespace (mount cgroupfs rather than bind the host's).
    pub cgroup_ns: bool,
    /// The container has its own user namespace (device nodes are bind-mounted, not created).
    pub user_ns: bool,
    /// The container has its own network namespace (sysfs can be mounted fresh).
    pub net_ns: bool,
    /// The container has its own mount namespace. Without one, its mounts are made in the
    /// host's (under the rootfs only; delete takes them away) and it is jailed with chroot.
    pub mount_ns: bool,
}

fn propagation_flag(name: &str) -> MsFlags {
    match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => MsFlags::MS_SLAVE | MsFlags::MS_REC,
    }
}

/// Sets up the rootfs up to (not including) the pivot. Runs in the container's mount namespace.
pub fn prepare(cfg: &RootfsConfig<'_>) -> Result<()> {
    if cfg.mount_ns {
        // The host's mounts as the root's propagation asks (a slave of the host's by default).
        // A shared root keeps its peers with the host, so a shared bind's mounts reach it (as
        // runc does); an unbindable one is made so after the pivot.
        let prop = match cfg.propagation.unwrap_or("rslave") {
            "unbindable" | "runbindable" => MsFlags::MS_SLAVE,
            other => propagation_flag(other),
        };
        do_mount(None, Path::new("/"), None, prop | MsFlags::MS_REC, None)?;
        // The mount the rootfs is (or is on) must not be shared: pivot_root refuses it, and the
        // rootfs' own bind below would reach the host through it.
        let own = if prop.contains(MsFlags::MS_SLAVE) { MsFlags::MS_SLAVE } else { MsFlags::MS_PRIVATE };
        unshare_mount_of(cfg.rootfs, own)?;
    }
    // pivot_root needs the new root to be a mount point whose parent is not shared.
    do_mount(Some(cfg.rootfs), cfg.rootfs, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
    if cfg.mount_ns {
        make_parent_private(cfg.rootfs)?;
    } else {
        // our own bind mount of the rootfs, in the host's namespace: keep it to ourselves
        do_mount(None, cfg.rootfs, None, MsFlags::MS_PRIVATE | MsFlags::MS_REC, None)?;
    }

    let mut dev_is_bind = false;
    for m in cfg.mounts {
        let opts = parse_options(m.options().as_deref().unwrap_or_default())?;
        let typ = m.typ().as_deref().unwrap_or(if opts.bind { "bind" } else { "" });
        if typ == "proc" || typ == "sysfs" {
            // Never through a symlink or onto a file (an old escape): the destination itself,
            // unresolved, must be a directory if it exists, as runc checks it.
            let lexical = cfg.rootfs.join(m.destination().strip_prefix("/").unwrap_or(m.destination()));
            if fs::symlink_metadata(&lexical).is_ok_and(|md| !md.is_dir()) {
                return Err(RootfsError::NotADirectory { fs: typ.to_string(), target: m.destination().clone() });
            }
        }
        let target = resolve_in_root(cfg.rootfs, m.destination())?;
        if m.destination() == Path::new("/dev") && (opts.bind || typ == "bind") {
            dev_is_bind = true;
        }
        mount_one(cfg, m, &target, typ, &opts)?;
    }

    let dev = resolve_in_root(cfg.rootfs, Path::new("/dev"))?;
    fs::create_dir_all(&dev).map_err(io_err("mkdir", &dev))?;
    if !dev_is_bind {
        create_devices(cfg, &dev)?;
    }
    dev_symlinks(&dev)?;
    Ok(())
}

/// Sets the propagation of the mount at `path`, or of the nearest mount point above it, to
/// `flag` (not recursively).
fn unshare_mount_of(path: &Path, flag: MsFlags) -> Result<()> {
    let mut at = path;
    loop {
        match nix::mount::mount(None::<&str>, at, None::<&str>, flag, None::<&str>) {
            Ok(()) => return Ok(()),
            // not a mount point: the one it is on
            Err(nix::Error::EINVAL) if at != Path::new("/") => at = at.parent().unwrap_or(Path::new("/")),
            Err(errno) => return Err(RootfsError::Mount { what: "propagation".into(), target: at.into(), errno }),
        }
    }
}

fn make_parent_private(rootfs: &Path) -> Result<()> {
    // Find the mount containing rootfs' parent and make it private if it is shared.
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(io_err("read", Path::new("/proc/self/mountinfo")))?;
    let parent = rootfs.parent().unwrap_or(Path::new("/"));
    let mut best: Option<(&str, bool)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(mp) = fields.get(4) else { continue };
        if parent.starts_with(mp) && best.is_none_or(|(b, _)| mp.len() >= b.len()) {
            let shared = fields.iter().skip(6).take_while(|f| **f != "-").any(|f| f.starts_with("shared:"));
            best = Some((mp, shared));
        }
    }
    if let Some((mp, true)) = best {
        do_mount(None, Path::new(mp), None, MsFlags::MS_PRIVATE, None)?;
    }
    Ok(())
}

fn mount_one(cfg: &RootfsConfig<'_>, m: &Mount, target: &Path, typ: &str, opts: &MountOptions) -> Result<()> {
    let data = (!opts.data.is_empty()).then(|| opts.data.join(","));
    let flags = opts.flags;
    if opts.bind || typ == "bind" {
        let src = m.source().as_ref().map(|s| if s.is_absolute() { s.clone() } else { cfg.bundle.join(s) });
        let src = src.ok_or_else(|| RootfsError::Mount {
            what: "bind".into(),
            target: target.into(),
            errno: nix::Error::EINVAL,
        })?;
        let meta = fs::metadata(&src).map_err(io_err("stat", &src))?;
        create_target(target, !meta.is_dir())?;
        let rec = flags & MsFlags::MS_REC;
        do_mount(Some(&src), target, None, MsFlags::MS_BIND | rec, None)?;
        let extra = flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            remount_bind(target, extra)?;
        }
    } else if typ == "cgroup" {
        mount_cgroup(cfg, target, flags)?;
    } else {
        create_target(target, false)?;
        let source = m.source().as_ref().map(PathBuf::as_path).or(Some(Path::new(typ)));
        let result = do_mount(source, target, Some(typ), flags, data.as_deref());
        match result {
            // sysfs cannot be mounted without a network namespace of our own: bind the host's
            Err(RootfsError::Mount { errno: nix::Error::EPERM, .. }) if typ == "sysfs" && !cfg.net_ns => {
                do_mount(Some(Path::new("/sys")), target, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
                remount_bind(target, flags | MsFlags::MS_RDONLY)?;
            }
            // mqueue needs an ipc namespace of our own; bind the host's as runc does
            Err(RootfsError::Mount { errno: nix::Error::EPERM, .. }) if typ == "mqueue" => {
                do_mount(Some(Path::new("/dev/mqueue")), target, None, MsFlags::MS_BIND, None)?;
            }
            other => other?,
        }
    }
    for p in &opts.propagation {
        do_mount(None, target, None, *p, None)?;
    }
    if let Some(attr) = opts.recursive {
        set_recursive(target, attr)?;
    }
    Ok(())
}

/// Changes the flags of a bind mount, keeping the flags the kernel locks (nosuid, nodev, noexec,
/// atime) so that the remount is allowed inside a user namespace.
fn remount_bind(target: &Path, flags: MsFlags) -> Result<()> {
    let locked = nix::sys::statvfs::statvfs(target).map(|s| {
        use nix::sys::statvfs::FsFlags;
        let f = s.flags();
        let mut m = MsFlags::empty();
        for (ff, mf) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if f.contains(ff) {
                m |= mf;
            }
        }
        m
    });
    let keep = locked.unwrap_or(MsFlags::empty());
    let base = MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    match do_mount(None, target, None, base | flags | keep, None) {
        Err(RootfsError::Mount { errno: nix::Error::EPERM, .. }) => do_mount(None, target, None, base | flags, None),
        r => r,
    }
}

fn mount_cgroup(cfg: &RootfsConfig<'_>, target: &Path, flags: MsFlags) -> Result<()> {
    create_target(target, false)?;
    let inner = flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME);
    if cfg.cgroup.v2 {
        let src = cfg.cgroup.paths.get("unified").cloned().unwrap_or_default();
        if cfg.cgroup_ns {
            do_mount(Some(Path::new("cgroup2")), target, Some("cgroup2"), flags, None)?;
        } else {
            do_mount(Some(&src), target, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
            remount_bind(target, flags)?;
        }
        return Ok(());
    }
    // v1: a tmpfs with one directory per hierarchy, named as on the host
    do_mount(Some(Path::new("tmpfs")), target, Some("tmpfs"), inner, Some("mode=755"))?;
    for (key, path) in &cfg.cgroup.paths {
        let name = if key == "unified" {
            "unified".to_string()
        } else if let Some(n) = key.strip_prefix("name=") {
            n.to_string()
        } else {
            key.clone()
        };
        let dir = target.join(&name);
        create_target(&dir, false)?;
        if cfg.cgroup_ns {
            if key == "unified" {
                do_mount(Some(Path::new("cgroup2")), &dir, Some("cgroup2"), flags, None)?;
            } else {
                let opts = if key.starts_with("name=") { format!("none,{key}") } else { key.clone() };
                do_mount(Some(Path::new("cgroup")), &dir, Some("cgroup"), flags, Some(&opts))?;
            }
        } else {
            do_mount(Some(path), &dir, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
            remount_bind(&dir, flags)?;
        }
        // co-mounted controllers get a symlink per controller, as on the host (cpu -> cpu,cpuacct)
        if key.contains(',') && !key.starts_with("name=") {
            for c in key.split(',') {
                let _ = symlink(&name, target.join(c));
            }
        }
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        do_mount(None, target, None, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | inner, Some("mode=755"))?;
    }
    Ok(())
}

/// The devices every container gets (as runc creates them).
fn default_devices() -> Vec<(&'static str, u64, u64)> {
    vec![("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)]
}

fn create_devices(cfg: &RootfsConfig<'_>, dev: &Path) -> Result<()> {
    let old = nix::sys::stat::umask(Mode::empty());
    let result = (|| {
        for (name, major, minor) in default_devices() {
            if cfg.devices.iter().any(|d| d.path() == &Path::new("/dev").join(name)) {
                continue;
            }
            make_device(cfg, &dev.join(name), SFlag::S_IFCHR, major, minor, 0o666, 0, 0)?;
        }
        for d in cfg.devices {
            let path = resolve_in_root(cfg.rootfs, d.path())?;
            let kind = match d.typ() {
                LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
                LinuxDeviceType::B => SFlag::S_IFBLK,
                LinuxDeviceType::P => SFlag::S_IFIFO,
                LinuxDeviceType::A => continue,
            };
            let mode = d.file_mode().unwrap_or(0o666);
            make_device(
                cfg,
                &path,
                kind,
                d.major() as u64,
                d.minor() as u64,
                mode,
                d.uid().unwrap_or(0),
                d.gid().unwrap_or(0),
            )?;
        }
        Ok(())
    })();
    nix::sys::stat::umask(old);
    result
}

#[allow(clippy::too_many_arguments)]
fn make_device(
    cfg: &RootfsConfig<'_>,
    path: &Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err("mkdir", parent))?;
    }
    let _ = fs::remove_file(path);
    if cfg.user_ns {
        // mknod is not allowed in a user namespace: bind the host's node
        let host = Path::new("/").join(path.strip_prefix(cfg.rootfs).unwrap_or(path));
        create_target(path, true)?;
        return do_mount(Some(&host), path, None, MsFlags::MS_BIND, None);
    }
    mknod(path, kind, Mode::from_bits_truncate(mode & 0o7777), makedev(major, minor))
        .map_err(|errno| RootfsError::Sys { op: format!("mknod {}", path.display()), errno })?;
    nix::unistd::chown(path, Some(uid.into()), Some(gid.into())).map_err(sys(format!("chown {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777)).map_err(io_err("chmod", path))?;
    Ok(())
}

fn dev_symlinks(dev: &Path) -> Result<()> {
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        let path = dev.join(name);
        match symlink(target, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(RootfsError::Io { op: "symlink", path, source }),
        }
    }
    // /dev/ptmx always points at the container's devpts instance
    let ptmx = dev.join("ptmx");
    if dev.join("pts").is_dir() {
        let _ = fs::remove_file(&ptmx);
        symlink("pts/ptmx", &ptmx).map_err(io_err("symlink", &ptmx))?;
    }
    Ok(())
}

/// Makes `rootfs` the root: pivot_root and detach the old root, or with `no_pivot`, move the
/// rootfs over / and chroot into it.
pub fn pivot(rootfs: &Path, no_pivot: bool, mount_ns: bool) -> Result<()> {
    if !mount_ns {
        // the host's mounts are ours too: no pivot_root, no unmounting the old root
        chdir(rootfs).map_err(sys(format!("chdir {}", rootfs.display())))?;
        chroot(".").map_err(sys("chroot"))?;
        return chdir("/").map_err(sys("chdir /"));
    }
    if no_pivot {
        chdir(rootfs).map_err(sys(format!("chdir {}", rootfs.display())))?;
        do_mount(Some(rootfs), Path::new("/"), None, MsFlags::MS_MOVE, None)?;
        chroot(".").map_err(sys("chroot"))?;
        return chdir("/").map_err(sys("chdir /"));
    }
    let old = nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("open /"))?;
    let new = nix::fcntl::open(
        rootfs,
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys(format!("open {}", rootfs.display())))?;
    fchdir(&new).map_err(sys("fchdir rootfs"))?;
    pivot_root(".", ".").map_err(sys("pivot_root"))?;
    // the old root is now stacked on "."; detach it without letting the unmount propagate
    fchdir(&old).map_err(sys("fchdir old root"))?;
    do_mount(None, Path::new("."), None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("umount old root"))?;
    chdir("/").map_err(sys("chdir /"))
}

/// After the pivot: the root's propagation when it must be shared or unbindable (which
/// pivot_root does not allow before).
pub fn apply_root_propagation(propagation: Option<&str>) -> Result<()> {
    match propagation {
        Some(p @ ("shared" | "rshared" | "unbindable" | "runbindable")) => {
            do_mount(None, Path::new("/"), None, propagation_flag(p), None)
        }
        _ => Ok(()),
    }
}

/// Unmounts (lazily) every mount at or below `rootfs`: what a container without its own mount
/// namespace left in the host's.
pub fn unmount_under(rootfs: &Path) -> Result<()> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(io_err("read", Path::new("/proc/self/mountinfo")))?;
    let mut points: Vec<PathBuf> =
        info.lines().filter_map(|l| l.split(' ').nth(4)).map(PathBuf::from).filter(|p| p.starts_with(rootfs)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    for p in points {
        let _ = umount2(&p, MntFlags::MNT_DETACH);
    }
    Ok(())
}

/// After the pivot: mask paths, make paths read-only, and make the root read-only if asked.
pub fn finalize(masked: &[String], readonly: &[String], readonly_root: bool) -> Result<()> {
    for p in readonly {
        let path = Path::new(p);
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(RootfsError::Io { op: "stat", path: path.into(), source }),
            Ok(_) => {}
        }
        do_mount(Some(path), path, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
        remount_bind(path, MsFlags::MS_RDONLY | MsFlags::MS_REC)?;
    }
    for p in masked {
        let path = Path::new(p);
        match fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(RootfsError::Io { op: "stat", path: path.into(), source }),
            Ok(m) if m.is_dir() => do_mount(Some(Path::new("tmpfs")), path, Some("tmpfs"), MsFlags::MS_RDONLY, None)?,
            Ok(_) => do_mount(Some(Path::new("/dev/null")), path, None, MsFlags::MS_BIND, None)?,
        }
    }
    if readonly_root {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = parse_options(&["nosuid".into(), "rbind".into(), "ro".into(), "rprivate".into(), "mode=755".into()])
            .unwrap();
        assert!(o.bind);
        assert!(o.flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
        assert_eq!(o.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        assert_eq!(o.data, vec!["mode=755".to_string()]);
        let o = parse_options(&["ro".into(), "rw".into()]).unwrap();
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(o.recursive, None);
    }

    #[test]
    fn recursive_options_as_runc_reads_them() {
        let opts = |o: &[&str]| parse_options(&o.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let o = opts(&["rbind", "rro", "rnosuid", "rnoatime", "rsymfollow"]);
        let attr = o.recursive.unwrap();
        assert_eq!(attr.set, libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOATIME, "{attr:?}");
        assert_eq!(attr.clear, libc::MOUNT_ATTR__ATIME | libc::MOUNT_ATTR_NOSYMFOLLOW, "{attr:?}");
        // the last word on an attribute wins
        let attr = opts(&["rro", "rrw"]).recursive.unwrap();
        assert_eq!((attr.set, attr.clear), (0, libc::MOUNT_ATTR_RDONLY));
        assert!(opts(&["nosymfollow"]).flags.contains(MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW)));
        assert!(matches!(parse_options(&["tmpcopyup".into()]), Err(RootfsError::BadOption(_))));
    }

    #[test]
    fn resolve_stays_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        symlink("/etc", root.join("a/abs")).unwrap();
        symlink("../../../../etc", root.join("a/rel")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(resolve_in_root(root, Path::new("/a/abs/passwd")).unwrap(), root.join("etc/passwd"));
        assert_eq!(resolve_in_root(root, Path::new("/a/rel")).unwrap(), root.join("etc"));
        assert_eq!(resolve_in_root(root, Path::new("/../../x")).unwrap(), root.join("x"));
        assert_eq!(resolve_in_root(root, Path::new("/a/b/../b/c")).unwrap(), root.join("a/b/c"));
        assert!(matches!(resolve_in_root(root, Path::new("/loop")), Err(RootfsError::SymlinkLoop(_))));
    }
}
