//! Turning an image configuration plus run options into an OCI runtime spec, with Docker's
//! defaults (namespaces, mounts, capabilities, masked and read-only paths, device rules) and
//! Docker's rules for entrypoint, cmd, env, workdir and user. The user is looked up in the
//! image's own `/etc/passwd` and `/etc/group`, opened with `RESOLVE_IN_ROOT` so that symlinks in
//! the image cannot point the lookup at the host's files.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::FromRawFd;
use std::path::Path;

use oci_spec::runtime::Spec;
use serde_json::json;

use crate::manifest::ImageConfig;

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no command specified")]
    NoCommand,
    #[error("the working directory {0:?} is invalid, it needs to be an absolute path")]
    RelativeWorkdir(String),
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    #[error("invalid user {0:?}")]
    InvalidUser(String),
    #[error("reading {path} in the image: {source}")]
    Read { path: String, source: io::Error },
    #[error("building the runtime spec: {0}")]
    Build(String),
}

/// What `docker run` may override or add.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// `--entrypoint`: replaces the image's, and drops its CMD unless `cmd` is given too.
    /// `Some(vec![])` clears it.
    pub entrypoint: Option<Vec<String>>,
    /// Arguments after the image name.
    pub cmd: Option<Vec<String>>,
    /// `-e`: `KEY=VALUE` (or `KEY` alone to drop it).
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: String,
    /// The NIS domain name (`--domainname`); empty: none.
    pub domainname: String,
    pub tty: bool,
    pub open_stdin: bool,
    pub read_only: bool,
    pub labels: BTreeMap<String, String>,
}

/// A spec and what the daemon keeps beside it.
#[derive(Debug)]
pub struct ContainerSpec {
    pub spec: Spec,
    /// Image labels overlaid with the run's.
    pub labels: BTreeMap<String, String>,
    /// `80/tcp`-style ports the image exposes.
    pub exposed_ports: Vec<String>,
    pub user: ResolvedUser,
    /// The container's `Config.Entrypoint` and `Config.Cmd`, as [`command`] resolves them.
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
}

/// Docker's entrypoint/cmd rule, the one place it is written: `--entrypoint` replaces the
/// image's ENTRYPOINT and drops its CMD unless arguments are given; arguments replace CMD.
/// Returns the container's `(Entrypoint, Cmd)`; the process runs their concatenation.
pub fn command(
    image: &crate::manifest::ContainerConfig,
    opts: &RunOptions,
) -> (Option<Vec<String>>, Option<Vec<String>>) {
    let entrypoint = opts.entrypoint.clone().or_else(|| image.entrypoint.clone());
    let cmd = match (&opts.cmd, &opts.entrypoint) {
        (Some(c), _) => Some(c.clone()),
        (None, Some(_)) => None,
        (None, None) => image.cmd.clone(),
    };
    (entrypoint, cmd)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

/// Builds the spec for a container of `image` whose root filesystem is at `rootfs`.
pub fn build(image: &ImageConfig, opts: &RunOptions, rootfs: &Path) -> Result<ContainerSpec, SpecError> {
    let cfg = image.config.clone().unwrap_or_default();
    let (entrypoint, cmd) = command(&cfg, opts);
    let args: Vec<String> = entrypoint.iter().flatten().chain(cmd.iter().flatten()).cloned().collect();
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    let cwd = opts.workdir.clone().or(cfg.working_dir.clone()).filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(SpecError::RelativeWorkdir(cwd));
    }
    let user_spec = opts.user.clone().or(cfg.user.clone()).unwrap_or_default();
    let user = resolve_user(rootfs, &user_spec)?;

    let mut env = vec![DEFAULT_PATH.to_string(), format!("HOSTNAME={}", opts.hostname)];
    if opts.tty {
        env.push("TERM=xterm".into());
    }
    for e in cfg.env.iter().flatten().chain(&opts.env) {
        set_env(&mut env, e);
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }

    let caps = DEFAULT_CAPABILITIES;
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": opts.tty,
            "user": { "uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids },
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": { "bounding": caps, "effective": caps, "permitted": caps },
            "noNewPrivileges": false
        },
        "root": { "path": rootfs, "readonly": opts.read_only },
        "hostname": opts.hostname,
        "domainname": Some(&opts.domainname).filter(|d| !d.is_empty()),
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "noexec", "nodev"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] }
        ],
        "linux": {
            "namespaces": [ { "type": "mount" }, { "type": "network" }, { "type": "uts" }, { "type": "pid" }, { "type": "ipc" } ],
            "resources": {
                "devices": [
                    { "allow": false, "access": "rwm" },
                    { "allow": true, "type": "c", "access": "m" },
                    { "allow": true, "type": "b", "access": "m" },
                    { "allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm" },
                    { "allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm" },
                    { "allow": true, "type": "c", "major": 1, "minor": 7, "access": "rwm" },
                    { "allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm" },
                    { "allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm" },
                    { "allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm" },
                    { "allow": true, "type": "c", "major": 5, "minor": 1, "access": "rwm" },
                    { "allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm" },
                    { "allow": true, "type": "c", "major": 136, "access": "rwm" },
                    { "allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm" }
                ]
            },
            "maskedPaths": [
                "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"
            ],
            "readonlyPaths": [ "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger" ]
        }
    });
    let spec: Spec = serde_json::from_value(spec).map_err(|e| SpecError::Build(e.to_string()))?;
    let mut labels = cfg.labels.clone().unwrap_or_default();
    labels.extend(opts.labels.clone());
    let exposed_ports = cfg.exposed_ports.iter().flat_map(|p| p.keys().cloned()).collect();
    Ok(ContainerSpec { spec, labels, exposed_ports, user, entrypoint, cmd })
}

/// `KEY=VALUE` replaces an earlier `KEY`; a bare `KEY` removes it.
fn set_env(env: &mut Vec<String>, entry: &str) {
    let key = entry.split_once('=').map_or(entry, |(k, _)| k);
    env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
    if entry.contains('=') {
        env.push(entry.to_string());
    }
}

/// Resolves `user[:group]` (names or numbers) against the image's passwd and group files.
pub fn resolve_user(rootfs: &Path, spec: &str) -> Result<ResolvedUser, SpecError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if group.is_some_and(str::is_empty) || (user.is_empty() && group.is_some()) {
        return Err(SpecError::InvalidUser(spec.into()));
    }
    let passwd = read_in_root(rootfs, "etc/passwd")?;
    let groups = read_in_root(rootfs, "etc/group")?;
    let entries: Vec<Vec<&str>> =
        passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).filter(|f| f.len() >= 7).collect();
    let group_entries: Vec<Vec<&str>> =
        groups.lines().map(|l| l.split(':').collect::<Vec<_>>()).filter(|f| f.len() >= 4).collect();

    let (uid, mut gid, name, home) = if user.is_empty() {
        (0, 0, Some("root".to_string()), "/root".to_string())
    } else if let Ok(uid) = user.parse::<u32>() {
        match entries.iter().find(|f| f[2].parse() == Ok(uid)) {
            Some(f) => (uid, f[3].parse().unwrap_or(0), Some(f[0].to_string()), f[5].to_string()),
            None => (uid, 0, None, "/".to_string()),
        }
    } else {
        let f = entries.iter().find(|f| f[0] == user).ok_or_else(|| SpecError::UnknownUser(user.into()))?;
        let uid = f[2].parse().map_err(|_| SpecError::UnknownUser(user.into()))?;
        (uid, f[3].parse().unwrap_or(0), Some(user.to_string()), f[5].to_string())
    };
    if let Some(g) = group {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| SpecError::UnknownGroup(g.into()))?,
        };
    }
    // As dockerd: the primary group, then (for a group not given explicitly) every group of the
    // image's /etc/group that lists the user.
    let mut additional_gids = vec![gid];
    if let (Some(n), None) = (&name, group) {
        let member_of = group_entries.iter().filter(|f| f[3].split(',').any(|m| m == n));
        for g in member_of.filter_map(|f| f[2].parse::<u32>().ok()) {
            if !additional_gids.contains(&g) {
                additional_gids.push(g);
            }
        }
    }
    let home = if home.is_empty() { "/".to_string() } else { home };
    Ok(ResolvedUser { uid, gid, additional_gids, home })
}

/// The id of `group` (a name of the image's /etc/group, or a number), as `--group-add` names it.
pub fn group_id(rootfs: &Path, group: &str) -> Result<u32, SpecError> {
    if let Ok(n) = group.parse::<u32>() {
        return Ok(n);
    }
    let groups = read_in_root(rootfs, "etc/group")?;
    groups
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && f[0] == group)
        .and_then(|f| f[2].parse().ok())
        .ok_or_else(|| SpecError::UnknownGroup(group.into()))
}

/// Reads `rel` inside `rootfs` with every symlink resolved as if `rootfs` were `/`.
/// A missing file reads as empty (busybox images may have no /etc/group).
fn read_in_root(rootfs: &Path, rel: &str) -> Result<String, SpecError> {
    let err = |source| SpecError::Read { path: format!("/{rel}"), source };
    let root = File::open(rootfs).map_err(err)?;
    let path = CString::new(rel).map_err(|_| err(io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: open_how is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    // O_NONBLOCK: a fifo planted at /etc/passwd must not block the daemon (checked below).
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 with a valid dirfd, a NUL-terminated path and a properly sized open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            std::os::fd::AsRawFd::as_raw_fd(&root),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::NotFound { Ok(String::new()) } else { Err(err(e)) };
    }
    // SAFETY: openat2 returned a fresh fd that we now own.
    let mut f = unsafe { File::from_raw_fd(fd as i32) };
    if !f.metadata().map_err(err)?.is_file() {
        return Err(err(io::Error::new(io::ErrorKind::InvalidData, "not a regular file")));
    }
    let mut s = String::new();
    f.by_ref().take(4 << 20).read_to_string(&mut s).map_err(err)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ContainerConfig;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\napp:x:1000:\nwheel:x:10:app\nstaff:x:50:\n").unwrap();
        d
    }

    #[test]
    fn resolves_users_inside_the_image() {
        let r = rootfs();
        let u = resolve_user(r.path(), "app").unwrap();
        // dockerd's supplementary groups: the primary one, then the groups that list the user
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.as_slice(), u.home.as_str()),
            (1000, 1000, &[1000, 10][..], "/home/app")
        );
        let staff = resolve_user(r.path(), "app:staff").unwrap();
        assert_eq!((staff.gid, staff.additional_gids.as_slice()), (50, &[50][..]), "an explicit group: no lookup");
        assert_eq!(
            resolve_user(r.path(), "4242").unwrap(),
            ResolvedUser { uid: 4242, gid: 0, additional_gids: vec![0], home: "/".into() }
        );
        assert_eq!(resolve_user(r.path(), "1000:1000").unwrap().additional_gids, [1000]);
        assert_eq!(resolve_user(r.path(), "").unwrap().additional_gids, [0]);
        assert_eq!(group_id(r.path(), "wheel").unwrap(), 10);
        assert_eq!(group_id(r.path(), "77").unwrap(), 77);
        assert!(matches!(group_id(r.path(), "nogroup"), Err(SpecError::UnknownGroup(_))));
        assert_eq!(resolve_user(r.path(), "").unwrap().uid, 0);
        assert!(matches!(resolve_user(r.path(), "nobody"), Err(SpecError::UnknownUser(_))));
        assert!(matches!(resolve_user(r.path(), "app:nogroup"), Err(SpecError::UnknownGroup(_))));
    }

    #[test]
    fn passwd_symlink_stays_in_the_image() {
        let r = rootfs();
        std::fs::remove_file(r.path().join("etc/passwd")).unwrap();
        // Points at the host's /etc/passwd if followed outside the root; inside it is missing.
        std::os::unix::fs::symlink("/../../../../etc/shadow-does-not-exist", r.path().join("etc/passwd")).unwrap();
        assert!(matches!(resolve_user(r.path(), "root"), Err(SpecError::UnknownUser(_))));
    }

    #[test]
    fn a_fifo_for_passwd_is_refused_not_waited_on() {
        let r = rootfs();
        std::fs::remove_file(r.path().join("etc/group")).unwrap();
        nix::unistd::mkfifo(&r.path().join("etc/group"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert!(matches!(resolve_user(r.path(), "app"), Err(SpecError::Read { .. })));
    }

    #[test]
    fn docker_rules_for_command_and_env() {
        let r = rootfs();
        let image = ImageConfig {
            config: Some(ContainerConfig {
                entrypoint: Some(vec!["/entry".into()]),
                cmd: Some(vec!["serve".into()]),
                env: Some(vec!["A=1".into(), "PATH=/opt/bin".into()]),
                working_dir: Some("/srv".into()),
                user: Some("app".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = RunOptions { hostname: "abc".into(), env: vec!["A=2".into(), "B=3".into()], ..Default::default() };
        let c = build(&image, &opts, r.path()).unwrap();
        let p = c.spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["/entry", "serve"]);
        assert_eq!(p.env().as_ref().unwrap(), &["HOSTNAME=abc", "PATH=/opt/bin", "A=2", "B=3", "HOME=/home/app"]);
        assert_eq!(p.cwd(), Path::new("/srv"));
        assert_eq!(p.user().uid(), 1000);

        let opts = RunOptions { entrypoint: Some(vec!["sh".into()]), ..Default::default() };
        assert_eq!(
            build(&image, &opts, r.path()).unwrap().spec.process().as_ref().unwrap().args().as_ref().unwrap(),
            &["sh"]
        );
        let opts = RunOptions { entrypoint: Some(vec!["sh".into()]), ..Default::default() };
        let c = build(&image, &opts, r.path()).unwrap();
        assert_eq!((c.entrypoint, c.cmd), (Some(vec!["sh".into()]), None), "--entrypoint drops the image's CMD");
        let opts = RunOptions { cmd: Some(vec!["run".into()]), ..Default::default() };
        let c = build(&image, &opts, r.path()).unwrap();
        assert_eq!((c.entrypoint, c.cmd), (Some(vec!["/entry".into()]), Some(vec!["run".into()])));
        let opts = RunOptions { entrypoint: Some(vec![]), ..Default::default() };
        assert!(matches!(build(&image, &opts, r.path()), Err(SpecError::NoCommand)));
        let opts = RunOptions { workdir: Some("rel".into()), ..Default::default() };
        assert!(matches!(build(&image, &opts, r.path()), Err(SpecError::RelativeWorkdir(_))));
    }
}
