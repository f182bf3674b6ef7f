//! What the container's first process does inside its new namespaces, between clone and exec:
//! join namespaces given by path, enter the cgroup namespace, prepare the rootfs and pivot into
//! it, set hostname, sysctls and limits, take on the process's user and capabilities, report
//! "ready" to `create`, wait on the exec fifo for `start`, and exec the user's program.
//!
//! This code runs in a forked copy of the single-threaded runtime; it never returns: it execs
//! or `_exit`s, so no destructor of the parent's state runs here.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use engine_telemetry::{Recorder, SpanHandle};
use nix::sched::CloneFlags;
use oci_spec::runtime::Spec;

use crate::cgroups::CgroupPaths;
use crate::process;
use crate::rootfs::{self, RootfsConfig};
use crate::sync::SyncSocket;

/// Everything the container's first process needs, prepared by `create` before the clone.
pub(crate) struct SetupArgs<'a> {
    pub id: &'a str,
    /// Our pid as the host sees it, once `create` has told us.
    pub host_pid: std::cell::Cell<i32>,
    pub spec: &'a Spec,
    pub bundle: &'a std::path::Path,
    pub rootfs: &'a std::path::Path,
    pub cgroup: &'a CgroupPaths,
    /// Namespaces to join, opened by `create`, in the order to join them.
    pub join: Vec<(CloneFlags, OwnedFd)>,
    /// The container gets a new cgroup namespace (entered after joining the cgroup).
    pub new_cgroup_ns: bool,
    /// The container gets a new time namespace, with `linux.timeOffsets`.
    pub new_time_ns: bool,
    pub user_ns: bool,
    pub net_ns: bool,
    /// The container has its own mount namespace (new or joined).
    pub mount_ns: bool,
    /// The exec fifo, opened `O_PATH` by the parent.
    pub exec_fifo: &'a OwnedFd,
    pub no_pivot: bool,
    pub preserve_fds: i32,
    /// The console socket, when `process.terminal` is true, and the console size (rows, columns).
    pub console: Option<&'a OwnedFd>,
    /// A connected socket to `linux.seccomp.listenerPath`, when the filter notifies.
    pub seccomp_listener: Option<&'a OwnedFd>,
    pub console_size: Option<(u16, u16)>,
    /// On a traced start: hand over to engine-init, which records the exec (see [`InitHandoff`]).
    pub init: Option<&'a InitHandoff>,
    /// The container's cgroup v2 id (the process is born in it), for its spans.
    pub cgroup_id: Option<u64>,
}

/// How a traced container's first process hands over to engine-init: `start` writes its span's
/// `traceparent` to `trace_file` before releasing the process, which then execs `binary` (opened
/// before the pivot, so it need not exist in the container) with the user's program to exec.
pub struct InitHandoff {
    pub binary: PathBuf,
    pub trace_file: PathBuf,
}

/// The hand-over's descriptors, opened before the pivot while the host paths are in reach.
struct HandoffFds {
    binary: OwnedFd,
    trace_file: OwnedFd,
}

/// What the setup leaves for after `start`.
struct Ready {
    exec: process::Exec,
    fifo: OwnedFd,
    init: Option<HandoffFds>,
}

/// Runs the setup in the cloned child and never returns.
pub(crate) fn run(args: SetupArgs<'_>, sync: SyncSocket, rec: &mut Recorder, parent_span: SpanHandle) -> ! {
    rec.forked(parent_span);
    // its process.pid (the host's, as on every span) is set once `create` has told it
    let span = rec.start(engine_telemetry::names::RUNTIME_INIT, None);
    match setup(&args, &sync, rec, span) {
        Ok(Ready { exec, fifo, init }) => {
            rec.end(span);
            rec.flush();
            if sync.send(b"ready").is_err() {
                exit(1);
            }
            drop(sync);
            // Block until `start` opens the fifo for reading, then tell it we are going.
            let path = format!("/proc/self/fd/{}", fifo.as_raw_fd());
            match std::fs::OpenOptions::new().write(true).open(&path) {
                Ok(mut f) => {
                    let _ = f.write_all(b"0");
                }
                Err(e) => {
                    eprintln!("engine-runtime: open exec fifo: {e}");
                    exit(1);
                }
            }
            drop(fifo);
            if let Some(mut list) =
                args.spec.hooks().as_ref().and_then(|h| h.start_container().clone()).filter(|h| !h.is_empty())
            {
                // Run in the container, they inherit the container process's environment
                // unless they name their own, as with runc.
                let process_env = args.spec.process().as_ref().and_then(|p| p.env().clone()).unwrap_or_default();
                for h in &mut list {
                    if h.env().is_none() {
                        h.set_env(Some(process_env.clone()));
                    }
                }
                let state = crate::hooks::state_json(
                    args.spec,
                    args.id,
                    crate::state::Status::Created,
                    args.host_pid.get(),
                    args.bundle,
                );
                if let Err(e) = crate::hooks::run_all("startContainer", &list, &state) {
                    eprintln!("engine-runtime: {e}");
                    exit(1);
                }
            }
            if let Some(init) = init {
                exec_init(&init, &exec, rec, args.host_pid.get());
            }
            let err = process::exec(&exec);
            eprintln!("engine-runtime: exec {:?}: {err}", exec.path);
            // as a shell (and engine-init): 127 for a program that is not there, 126 otherwise
            exit(if err == nix::Error::ENOENT { 127 } else { 126 });
        }
        Err(e) => {
            rec.fail(span, &e);
            rec.flush();
            let _ = sync.send(format!("error:{e}").as_bytes());
            exit(1);
        }
    }
}

/// Opens `path` through a detached read-only bind mount of it (`open_tree` + `mount_setattr`), so
/// that while it runs as the container's process, `/proc/<pid>/exe` cannot be reopened to write
/// the host's binary (the CVE-2019-5736 pattern). `None` where the kernel refuses: the start is
/// then not handed over.
fn open_read_only_mount(path: &std::path::Path) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    /// `struct mount_attr` of <linux/mount.h>.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const MOUNT_ATTR_NODEV: u64 = 0x4;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: open_tree with a NUL-terminated path and flags; it returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: open_tree just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV, attr_clr: 0, propagation: 0, userns_fd: 0 };
    // SAFETY: mount_setattr on our detached mount with a valid struct and its size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    (r == 0).then_some(fd)
}

/// Execs engine-init with the `traceparent` `start` left and the program to run, passing it the
/// span sink. Returns when that is not possible (no context, exec refused), and the caller execs
/// the program itself: the hand-over is telemetry and never keeps a container from starting.
fn exec_init(init: &HandoffFds, exec: &process::Exec, rec: &Recorder, host_pid: i32) {
    let mut buf = [0u8; 256];
    let n = nix::sys::uio::pread(&init.trace_file, &mut buf, 0).unwrap_or(0);
    let tp = String::from_utf8_lossy(&buf[..n]).trim().to_string();
    let (Ok(_), Some(sink)) = (engine_telemetry::TraceContext::parse(&tp, None), rec.sink_fd()) else { return };
    let Ok(tp) = std::ffi::CString::new(tp) else { return };
    let Ok(fd) = std::ffi::CString::new(sink.to_string()) else { return };
    let Ok(start) = std::ffi::CString::new(engine_telemetry::recorder::now_unix_nanos().to_string()) else { return };
    let Ok(pid) = std::ffi::CString::new(host_pid.to_string()) else { return };
    let mut argv =
        vec![c"engine-init".to_owned(), std::ffi::CString::from(c"--handoff"), tp, fd, start, pid, exec.path.clone()];
    argv.extend(exec.argv.iter().cloned());
    // SAFETY: F_SETFD on our own sink descriptor: engine-init inherits it (and closes it on exec).
    unsafe { libc::fcntl(sink, libc::F_SETFD, 0) };
    let _ = nix::unistd::execveat(&init.binary, c"", &argv, &exec.envp, nix::fcntl::AtFlags::AT_EMPTY_PATH);
    // SAFETY: as above, back to close-on-exec for the direct exec.
    unsafe { libc::fcntl(sink, libc::F_SETFD, libc::FD_CLOEXEC) };
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit ends the process without running the parent's destructors or atexit handlers.
    unsafe { libc::_exit(code) }
}

fn step<T, E: std::fmt::Display>(
    rec: &mut Recorder,
    name: &str,
    parent: SpanHandle,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, String> {
    let h = rec.start(name, Some(parent));
    rec.finish(h, f()).map_err(|e| e.to_string())
}

fn setup(a: &SetupArgs<'_>, sync: &SyncSocket, rec: &mut Recorder, span: SpanHandle) -> Result<Ready, String> {
    let spec = a.spec;
    let linux = spec.linux().as_ref().ok_or("linux is missing")?;
    let proc_ = spec.process().as_ref().ok_or("process is missing")?;

    // If `create` dies before we are done, die too.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };

    // Wait until `create` has put us in the cgroup and written id maps.
    // "go <our pid as the host sees it>" (hooks report it)
    let host_pid: i32 = match sync.recv() {
        Ok(m) if m.starts_with(b"go ") => {
            String::from_utf8_lossy(&m[3..]).parse().map_err(|_| "bad go message from create")?
        }
        Ok(m) => return Err(format!("unexpected message from create: {:?}", String::from_utf8_lossy(&m))),
        Err(e) => return Err(format!("waiting for create: {e}")),
    };
    a.host_pid.set(host_pid);
    rec.set_attr(span, "process.pid", host_pid);
    if let Some(id) = a.cgroup_id {
        rec.set_attr(span, "linux.cgroup.id", id as i64);
    }
    if a.user_ns {
        // become root of the new user namespace
        // SAFETY: integer arguments only.
        if unsafe { libc::syscall(libc::SYS_setresuid, 0, 0, 0) } < 0
            || unsafe { libc::syscall(libc::SYS_setresgid, 0, 0, 0) } < 0
        {
            return Err(format!("setresuid 0 in the user namespace: {}", nix::Error::last()));
        }
    }

    if a.new_time_ns {
        enter_new_time_ns(linux.time_offsets().as_ref())?;
    }
    if !a.join.is_empty() {
        step(rec, engine_telemetry::names::RUNTIME_SETNS, span, || {
            for (kind, fd) in &a.join {
                nix::sched::setns(fd, *kind).map_err(|e| format!("setns {kind:?}: {e}"))?;
            }
            Ok::<_, String>(())
        })?;
    }
    if a.new_cgroup_ns {
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP).map_err(|e| format!("unshare cgroup namespace: {e}"))?;
    }
    if let Some(adj) = proc_.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| format!("set oom_score_adj {adj}: {e}"))?;
    }
    // SAFETY: setsid has no memory effects.
    unsafe { libc::setsid() };

    // Our own handle on the exec fifo (the parent opened it: its path may be out of our reach).
    let fifo = a.exec_fifo.try_clone().map_err(|e| format!("dup exec fifo: {e}"))?;
    // The hand-over's files, likewise; a missing engine-init only means an untraced exec.
    let init = a.init.and_then(|h| {
        let trace_file = nix::fcntl::open(
            &h.trace_file,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()?;
        Some(HandoffFds { binary: open_read_only_mount(&h.binary)?, trace_file })
    });

    let mounts = spec.mounts().clone().unwrap_or_default();
    let devices = linux.devices().clone().unwrap_or_default();
    let cfg = RootfsConfig {
        rootfs: a.rootfs,
        bundle: a.bundle,
        mounts: &mounts,
        devices: &devices,
        propagation: linux.rootfs_propagation().as_deref().filter(|s| !s.is_empty()),
        cgroup: a.cgroup,
        cgroup_ns: a.new_cgroup_ns,
        user_ns: a.user_ns,
        net_ns: a.net_ns,
        mount_ns: a.mount_ns,
    };
    step(rec, engine_telemetry::names::RUNTIME_ROOTFS, span, || rootfs::prepare(&cfg))?;
    if let Some(hooks) = spec.hooks() {
        // prestart and createRuntime run in the runtime's namespaces: `create` runs them now
        if hooks.prestart().as_ref().is_some_and(|h| !h.is_empty())
            || hooks.create_runtime().as_ref().is_some_and(|h| !h.is_empty())
        {
            sync.send(b"hooks").map_err(|e| format!("ask create to run hooks: {e}"))?;
            match sync.recv() {
                Ok(m) if m == b"hooks-done" => {}
                Ok(_) | Err(_) => return Err("create hooks failed".into()),
            }
        }
        if let Some(list) = hooks.create_container().as_ref().filter(|h| !h.is_empty()) {
            let state = crate::hooks::state_json(spec, a.id, crate::state::Status::Creating, host_pid, a.bundle);
            step(rec, engine_telemetry::names::RUNTIME_HOOKS_CREATE_CONTAINER, span, || {
                crate::hooks::run_all("createContainer", list, &state)
            })?;
        }
    }
    // Capabilities are read from /proc while the host's view is still there.
    let caps = process::CapMasks::from_spec(proc_.capabilities().as_ref()).map_err(|e| e.to_string())?;
    step(rec, engine_telemetry::names::RUNTIME_PIVOT_ROOT, span, || rootfs::pivot(a.rootfs, a.no_pivot, a.mount_ns))?;
    if a.mount_ns {
        rootfs::apply_root_propagation(linux.rootfs_propagation().as_deref()).map_err(|e| e.to_string())?;
    }
    process::make_cwd(proc_).map_err(|e| e.to_string())?;

    let h = rec.start(engine_telemetry::names::RUNTIME_PROCESS, Some(span));
    let result = (|| -> Result<process::Exec, String> {
        if let Some(socket) = a.console {
            crate::terminal::setup_in_container(socket, a.console_size).map_err(|e| e.to_string())?;
        }
        if let Some(name) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
            nix::unistd::sethostname(name).map_err(|e| format!("sethostname {name:?}: {e}"))?;
        }
        if let Some(name) = spec.domainname().as_deref().filter(|h| !h.is_empty()) {
            // SAFETY: the pointer and length describe `name`.
            if unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) } < 0 {
                return Err(format!("setdomainname {name:?}: {}", nix::Error::last()));
            }
        }
        for (key, value) in linux.sysctl().iter().flatten() {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            std::fs::write(&path, value).map_err(|e| format!("sysctl {key}={value}: {e}"))?;
        }
        rootfs::finalize(
            linux.masked_paths().as_deref().unwrap_or_default(),
            linux.readonly_paths().as_deref().unwrap_or_default(),
            spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false),
        )
        .map_err(|e| e.to_string())?;
        if let Some(p) = linux.personality() {
            process::set_personality(p).map_err(|e| e.to_string())?;
        }
        let load_seccomp = || -> Result<(), String> {
            let Some(sc) = linux.seccomp() else { return Ok(()) };
            let listener = a.seccomp_listener.map(|sock| {
                let state =
                    crate::hooks::state_json(spec, a.id, crate::state::Status::Creating, a.host_pid.get(), a.bundle);
                (sock, crate::seccomp::process_state(sc, a.host_pid.get(), state))
            });
            crate::seccomp::load(sc, listener).map_err(|e| e.to_string())
        };
        let exec = take_on_process(proc_, &caps, load_seccomp, a.preserve_fds)?;
        // SAFETY: prctl with integer arguments only; `create` is about to exit on purpose.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
        Ok(exec)
    })();
    rec.finish(h, result.as_ref().map(|_| ()).map_err(|e| e.clone()))?;
    Ok(Ready { exec: result?, fifo, init })
}

/// The last steps of every container process (the first one and exec'd ones): limits and
/// scheduling while we are still privileged, the seccomp filter, the user and capabilities,
/// umask and cwd, and the program to exec with only the descriptors it should keep.
pub(crate) fn take_on_process(
    p: &oci_spec::runtime::Process,
    caps: &process::CapMasks,
    load_seccomp: impl Fn() -> Result<(), String>,
    preserve_fds: i32,
) -> Result<process::Exec, String> {
    process::apply_rlimits(p.rlimits().as_deref().unwrap_or_default()).map_err(|e| e.to_string())?;
    // while we still have CAP_SYS_NICE and CAP_SYS_ADMIN
    if let Some(s) = p.scheduler() {
        process::set_scheduler(s).map_err(|e| e.to_string())?;
    }
    if let Some(io) = p.io_priority() {
        process::set_io_priority(io).map_err(|e| e.to_string())?;
    }
    let nnp = p.no_new_privileges() == Some(true);
    // Without no_new_privs the filter needs CAP_SYS_ADMIN: load it while we have it. With it,
    // load it as late as possible, so that fewer of our own syscalls must pass it.
    if !nnp {
        load_seccomp()?;
    }
    process::drop_bounding(caps).map_err(|e| e.to_string())?;
    process::switch_user(p).map_err(|e| e.to_string())?;
    process::set_capabilities(caps).map_err(|e| e.to_string())?;
    if nnp {
        process::set_no_new_privs().map_err(|e| e.to_string())?;
        load_seccomp()?;
    }
    process::set_umask(p);
    process::enter_cwd(p).map_err(|e| e.to_string())?;
    let exec = process::prepare_exec(p).map_err(|e| e.to_string())?;
    close_extra_fds(3 + preserve_fds).map_err(|e| format!("close inherited descriptors: {e}"))?;
    Ok(exec)
}

/// Marks every descriptor from `first` up close-on-exec, so the program inherits only stdio and
/// the descriptors the caller asked to preserve.
pub(crate) fn close_extra_fds(first: RawFd) -> std::io::Result<()> {
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(fd) = entry?.file_name().to_string_lossy().parse::<RawFd>() else { continue };
        if fd >= first {
            // SAFETY: F_SETFD on a descriptor number; a closed one gives EBADF, which is harmless.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    Ok(())
}

/// Unshares a time namespace, writes its offsets, and moves this process into it.
fn enter_new_time_ns(
    offsets: Option<&std::collections::HashMap<String, oci_spec::runtime::LinuxTimeOffset>>,
) -> Result<(), String> {
    nix::sched::unshare(CloneFlags::from_bits_retain(libc::CLONE_NEWTIME))
        .map_err(|e| format!("unshare time namespace: {e}"))?;
    let mut text = String::new();
    for (clock, off) in offsets.into_iter().flatten() {
        if clock != "monotonic" && clock != "boottime" {
            return Err(format!("linux.timeOffsets: unknown clock {clock:?} (want monotonic or boottime)"));
        }
        text.push_str(&format!("{clock} {} {}\n", off.secs().unwrap_or(0), off.nanosecs().unwrap_or(0)));
    }
    if !text.is_empty() {
        std::fs::write("/proc/self/timens_offsets", &text).map_err(|e| format!("write timens_offsets: {e}"))?;
    }
    let ns = std::fs::File::open("/proc/self/ns/time_for_children").map_err(|e| format!("open time namespace: {e}"))?;
    nix::sched::setns(ns, CloneFlags::from_bits_retain(libc::CLONE_NEWTIME))
        .map_err(|e| format!("enter time namespace: {e}"))
}
