//! `exec`: a further process in a running container. It joins every namespace the container's
//! first process is in (those that differ from ours), enters the container's cgroup, and takes
//! on the process's user, capabilities, rlimits and terminal before it execs.
//!
//! Like `create`, the work between clone and exec happens in a forked copy of this
//! single-threaded runtime that never returns.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use engine_telemetry::Recorder;
use nix::sched::CloneFlags;
use oci_spec::runtime::{Capabilities, Capability, Process, Spec};

use crate::cgroups::CgroupManager;
use crate::container::{clone3, console_for, ConsoleSocket, Created, CONFIG_COPY};
use crate::error::{sys, Error, Result};
use crate::state::{StateDir, Status};
use crate::{process, sync};

/// Options of `exec`.
#[derive(Clone, Debug, Default)]
pub struct ExecOptions {
    pub id: String,
    pub process: Process,
    pub pid_file: Option<PathBuf>,
    pub console: Option<ConsoleSocket>,
    pub preserve_fds: i32,
    /// Exec even when the container is paused (the process starts frozen).
    pub ignore_paused: bool,
}

/// What `exec --process` leaves out or the command line overrides, on top of the container's
/// own process (as runc does: env is added to, the rest replaced).
#[derive(Clone, Debug, Default)]
pub struct ProcessOverrides {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub user: Option<(u32, Option<u32>)>,
    pub additional_gids: Vec<u32>,
    pub caps: Vec<String>,
    pub no_new_privs: bool,
    pub tty: bool,
}

/// The container's process as config.json had it at create.
pub fn container_process(dir: &StateDir, id: &str) -> Result<Process> {
    dir.load(id)?;
    let path = dir.dir(id).join(CONFIG_COPY);
    let spec = Spec::load(&path).map_err(|e| Error::Other(format!("read {}: {e}", path.display())))?;
    spec.process().clone().ok_or_else(|| Error::Other(format!("{}: process is missing", path.display())))
}

/// The container's process with the command line's overrides applied.
pub fn process_from_args(base: Process, o: &ProcessOverrides) -> Result<Process> {
    let mut p = base;
    if o.args.is_empty() {
        return Err(Error::Other("exec needs a command (or --process)".into()));
    }
    p.set_args(Some(o.args.clone()));
    p.set_terminal(Some(o.tty));
    p.set_console_size(None);
    let mut env = p.env().clone().unwrap_or_default();
    for e in &o.env {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        env.retain(|old| old.split_once('=').map_or(old.as_str(), |(k, _)| k) != key);
        env.push(e.clone());
    }
    p.set_env(Some(env));
    if let Some(cwd) = &o.cwd {
        p.set_cwd(cwd.clone());
    }
    let mut user = p.user().clone();
    if let Some((uid, gid)) = o.user {
        user.set_uid(uid);
        user.set_gid(gid.unwrap_or(0));
    }
    if !o.additional_gids.is_empty() {
        user.set_additional_gids(Some(o.additional_gids.clone()));
    }
    p.set_user(user);
    if !o.caps.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for name in &o.caps {
            // parsed as config.json spells them ("CAP_SYS_TIME")
            let cap: Capability = serde_json::from_value(serde_json::Value::String(name.clone()))
                .map_err(|_| Error::Other(format!("unknown capability {name}")))?;
            let add = |set: &Option<Capabilities>| {
                let mut s = set.clone().unwrap_or_default();
                s.insert(cap);
                Some(s)
            };
            // As runc: bounding, effective and permitted; never inheritable, so ambient only
            // when the process has inheritable capabilities already (ambient needs them).
            let (b, e, pm) = (add(caps.bounding()), add(caps.effective()), add(caps.permitted()));
            caps.set_bounding(b).set_effective(e).set_permitted(pm);
            if caps.inheritable().is_some() {
                let a = add(caps.ambient());
                caps.set_ambient(a);
            }
        }
        p.set_capabilities(Some(caps));
    }
    if o.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    Ok(p)
}

/// Namespaces in the order a joining process enters them: the user namespace first (it decides
/// what the others allow), the mount namespace last but one (it changes what paths mean), and
/// pid and time, which apply to children only, entered by the parent before the clone.
const JOIN_ORDER: [(&str, CloneFlags); 6] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Opens the namespace of `pid` named `name` if it differs from ours.
fn other_ns(pid: i32, name: &str) -> Result<Option<OwnedFd>> {
    let theirs = format!("/proc/{pid}/ns/{name}");
    let Ok(their_meta) = std::fs::metadata(&theirs) else { return Ok(None) };
    let ours = std::fs::metadata(format!("/proc/self/ns/{name}")).map(|m| m.ino()).ok();
    if ours == Some(their_meta.ino()) {
        return Ok(None);
    }
    let fd = nix::fcntl::open(
        theirs.as_str(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys(format!("open {theirs}")))?;
    Ok(Some(fd))
}

/// Starts `opts.process` in running container `opts.id`. The new process is a child of ours.
pub fn exec(dir: &StateDir, opts: &ExecOptions, rec: &mut Recorder) -> Result<Created> {
    let h = rec.start(engine_telemetry::names::RUNTIME_EXEC, None);
    rec.set_attr(h, "container.id", opts.id.as_str());
    let result = exec_inner(dir, opts);
    if let Ok(c) = &result {
        rec.set_attr(h, "process.pid", c.pid);
    }
    rec.finish(h, result)
}

fn exec_inner(dir: &StateDir, opts: &ExecOptions) -> Result<Created> {
    let st = dir.load(&opts.id)?;
    match st.status(dir) {
        Status::Running => {}
        Status::Paused if opts.ignore_paused => {}
        status => return Err(Error::WrongStatus { id: opts.id.clone(), op: "exec in", status }),
    }
    let p = &opts.process;
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::Other("process.args must not be empty".into()));
    }
    let caps = process::CapMasks::from_spec(p.capabilities().as_ref()).map_err(|e| Error::Other(e.to_string()))?;
    let console = console_for(p.terminal().unwrap_or(false), &opts.console)?;
    // exec'd processes get the container's seccomp filter too
    let config = dir.dir(&opts.id).join(CONFIG_COPY);
    let spec = Spec::load(&config).map_err(|e| Error::Other(format!("read {}: {e}", config.display())))?;
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let listener = crate::container::seccomp_listener(seccomp.as_ref())?;
    let seccomp_state = st.to_spec_json(Status::Running);
    let console_size = p.console_size().as_ref().map(|b| (b.height() as u16, b.width() as u16));

    // pid and time namespaces apply to children: enter them here, before the clone
    for (name, flag) in
        [("pid", CloneFlags::CLONE_NEWPID), ("time_for_children", CloneFlags::from_bits_retain(libc::CLONE_NEWTIME))]
    {
        if let Some(fd) = other_ns(st.pid, name)? {
            nix::sched::setns(fd, flag).map_err(sys(format!("setns {name}")))?;
        }
    }
    let mut joins = Vec::new();
    for (name, flag) in JOIN_ORDER {
        if let Some(fd) = other_ns(st.pid, name)? {
            joins.push((flag, fd));
        }
    }
    // the pid may have been reused while we looked: make sure it is still the container's
    if !st.alive() {
        return Err(Error::WrongStatus { id: opts.id.clone(), op: "exec in", status: Status::Stopped });
    }

    let cgroup = CgroupManager::from_paths(st.cgroup.clone());
    let cgroup_fd = match cgroup.unified_path() {
        Some(path) => Some(
            nix::fcntl::open(
                path,
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(sys(format!("open {}", path.display())))?,
        ),
        None => None,
    };
    let (parent_sock, child_sock) = sync::pair().map_err(sys("socketpair"))?;
    let (pid, pidfd) = clone3(CloneFlags::empty(), cgroup_fd.as_ref().map(|f| f.as_raw_fd())).map_err(sys("clone3"))?;
    if pid == 0 {
        drop(parent_sock);
        let filter = seccomp.as_ref().map(|s| (s, listener.as_ref(), &seccomp_state));
        let err = child(p, &joins, &caps, console.as_ref(), console_size, filter, opts.preserve_fds, &child_sock);
        let _ = child_sock.send(format!("error:{err}").as_bytes());
        // SAFETY: _exit ends the forked copy without running the parent's destructors.
        unsafe { libc::_exit(1) };
    }
    drop(child_sock);
    drop(console);
    drop(listener);
    let pidfd = pidfd.ok_or_else(|| Error::Other("clone3 returned no pidfd".into()))?;
    let abort = |e: Error| {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        e
    };
    cgroup.add_pid(pid, cgroup_fd.is_some()).map_err(|e| abort(e.into()))?;
    parent_sock
        .send(format!("go {pid}").as_bytes())
        .map_err(|e| abort(Error::Sys { op: "signal the exec process".into(), errno: e }))?;
    // The socket is close-on-exec: end of file means the program is running; a message is why not.
    let reply =
        parent_sock.recv().map_err(|e| abort(Error::Sys { op: "wait for the exec process".into(), errno: e }))?;
    if !reply.is_empty() {
        let why = String::from_utf8_lossy(reply.strip_prefix(b"error:").unwrap_or(&reply)).into_owned();
        return Err(abort(Error::Setup(why)));
    }
    if let Some(path) = &opts.pid_file {
        crate::state::write_pid_file(path, pid)
            .map_err(|e| Error::Other(format!("write pid file {}: {e}", path.display())))?;
    }
    Ok(Created { pid, pidfd })
}

/// In the forked child: join, take on the process, exec. Returns only the reason it could not.
fn child(
    p: &Process,
    joins: &[(CloneFlags, OwnedFd)],
    caps: &process::CapMasks,
    console: Option<&OwnedFd>,
    console_size: Option<(u16, u16)>,
    seccomp: Option<(&oci_spec::runtime::LinuxSeccomp, Option<&OwnedFd>, &serde_json::Value)>,
    preserve_fds: i32,
    sync: &sync::SyncSocket,
) -> String {
    // SAFETY: prctl with integer arguments only; if exec's caller dies first, so do we.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let host_pid: i32 = match sync.recv() {
        Ok(m) if m.starts_with(b"go ") => String::from_utf8_lossy(&m[3..]).parse().unwrap_or(0),
        _ => return "exec caller went away".into(),
    };
    for (flag, fd) in joins {
        if let Err(e) = nix::sched::setns(fd, *flag) {
            return format!("setns {flag:?}: {e}");
        }
    }
    // SAFETY: setsid has no memory effects.
    unsafe { libc::setsid() };
    let run = || -> std::result::Result<process::Exec, String> {
        if let Some(socket) = console {
            crate::terminal::setup_in_container(socket, console_size).map_err(|e| e.to_string())?;
        }
        if let Some(adj) = p.oom_score_adj() {
            std::fs::write("/proc/self/oom_score_adj", adj.to_string())
                .map_err(|e| format!("set oom_score_adj {adj}: {e}"))?;
        }
        let load_seccomp = || -> std::result::Result<(), String> {
            let Some((sc, listener, state)) = seccomp else { return Ok(()) };
            let listener = listener.map(|sock| (sock, crate::seccomp::process_state(sc, host_pid, state.clone())));
            crate::seccomp::load(sc, listener).map_err(|e| e.to_string())
        };
        crate::setup::take_on_process(p, caps, load_seccomp, preserve_fds)
    };
    let exec = match run() {
        Ok(exec) => exec,
        Err(e) => return e,
    };
    // SAFETY: prctl with integer arguments only; the caller may exit once we run (--detach).
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
    let err = process::exec(&exec);
    format!("exec {:?}: {err}", exec.path)
}
