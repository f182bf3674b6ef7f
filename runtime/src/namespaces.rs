//! Namespaces from the spec: which to create with clone3, which to join by path, and in which
//! order.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

/// The clone flag of a namespace type.
pub fn flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        // CLONE_NEWTIME shares its value with CSIGNAL; nix has no constant for it
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// The namespace plan of a container.
#[derive(Debug)]
pub struct Plan {
    /// Created by clone3 (the cgroup namespace is left out: it is unshared after the cgroup join).
    pub clone_flags: CloneFlags,
    pub new_cgroup: bool,
    /// A new time namespace: unshared by the child, which sets its offsets before entering it
    /// (offsets cannot change once a process is inside).
    pub new_time: bool,
    pub new_user: bool,
    pub new_pid: bool,
    pub new_net: bool,
    /// Joined by path, user namespace first (it decides what the others may do).
    pub join: Vec<(CloneFlags, PathBuf)>,
}

impl Plan {
    pub fn from_spec(namespaces: &[LinuxNamespace]) -> Plan {
        let mut p = Plan {
            clone_flags: CloneFlags::empty(),
            new_cgroup: false,
            new_time: false,
            new_user: false,
            new_pid: false,
            new_net: false,
            join: Vec::new(),
        };
        for ns in namespaces {
            let f = flag(ns.typ());
            match ns.path() {
                Some(path) => p.join.push((f, path.clone())),
                None if ns.typ() == LinuxNamespaceType::Cgroup => p.new_cgroup = true,
                None if ns.typ() == LinuxNamespaceType::Time => p.new_time = true,
                None => p.clone_flags |= f,
            }
        }
        p.new_user = p.clone_flags.contains(CloneFlags::CLONE_NEWUSER);
        p.new_pid = p.clone_flags.contains(CloneFlags::CLONE_NEWPID);
        p.new_net = p.clone_flags.contains(CloneFlags::CLONE_NEWNET);
        p.join.sort_by_key(|(f, _)| if *f == CloneFlags::CLONE_NEWUSER { 0 } else { 1 });
        p
    }

    /// Whether the container ends up in its own pid namespace (new or joined).
    pub fn own_pid_ns(&self) -> bool {
        self.new_pid || self.join.iter().any(|(f, _)| *f == CloneFlags::CLONE_NEWPID)
    }

    /// Whether the container has a mount namespace of its own (new or joined).
    pub fn own_mount_ns(&self) -> bool {
        self.clone_flags.contains(CloneFlags::CLONE_NEWNS)
            || self.join.iter().any(|(f, _)| *f == CloneFlags::CLONE_NEWNS)
    }

    /// Whether the container has a network namespace other than the host's.
    pub fn has_net_ns(&self) -> bool {
        self.new_net || self.join.iter().any(|(f, _)| *f == CloneFlags::CLONE_NEWNET)
    }
}

/// Opens the namespace files to join. The pid namespace is returned separately: it has to be
/// entered by `create` before the clone (it applies to children only).
pub fn open_joins(join: &[(CloneFlags, PathBuf)]) -> Result<(Option<OwnedFd>, Vec<(CloneFlags, OwnedFd)>), String> {
    let mut pid = None;
    let mut rest = Vec::new();
    for (f, path) in join {
        let fd = nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| format!("open namespace {}: {e}", path.display()))?;
        if *f == CloneFlags::CLONE_NEWPID {
            pid = Some(fd);
        } else {
            rest.push((*f, fd));
        }
    }
    Ok((pid, rest))
}
