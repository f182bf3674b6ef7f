//! The container lifecycle as the runtime spec defines it: create, start, kill, delete, state,
//! plus `run` (create + start + wait + delete). `create` is the container-start hot path; it
//! reads top to bottom: spec, state directory, cgroup, namespaces (clone3), wait for the child's
//! setup, save state.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use engine_telemetry::Recorder;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use oci_spec::runtime::LinuxIdMapping;

use crate::cgroups::{CgroupManager, Layout};
use crate::error::{sys, Error, Result};
use crate::namespaces::{self, Plan};
use crate::setup::{self, SetupArgs};
use crate::state::{self, ContainerState, StateDir, Status};
use crate::{spec, sync};

/// Name of the fifo the container's first process blocks on until `start`.
pub const EXEC_FIFO: &str = "exec.fifo";
/// The container's config.json as it was at create, kept in its state directory.
pub const CONFIG_COPY: &str = "config.json";

/// Options of `create` (and `run`).
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub no_pivot: bool,
    pub preserve_fds: i32,
    /// Where the pty master goes when `process.terminal` is true.
    pub console: Option<ConsoleSocket>,
}

/// The console socket of `create`: a path the caller listens on (`--console-socket`), or a
/// connected socket `run` keeps the other end of.
#[derive(Clone, Debug)]
pub enum ConsoleSocket {
    Path(PathBuf),
    Connected(std::sync::Arc<OwnedFd>),
}

/// A created container, as `create` leaves it.
#[derive(Debug)]
pub struct Created {
    pub pid: i32,
    /// A pidfd for the container's first process (a child of the calling process).
    pub pidfd: OwnedFd,
}

/// Undoes a partial create unless disarmed: kills the child, removes the cgroup and the state dir.
struct Rollback<'a> {
    dir: &'a StateDir,
    id: &'a str,
    cgroup: Option<CgroupManager>,
    child: Option<i32>,
    /// Set when the container shares the host's mount namespace: its mounts under the rootfs
    /// are in the host's and must go too.
    host_mounts_under: Option<PathBuf>,
    armed: bool,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.child {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        if let Some(cg) = &self.cgroup {
            let _ = cg.destroy();
        }
        if let Some(rootfs) = &self.host_mounts_under {
            let _ = crate::rootfs::unmount_under(rootfs);
        }
        let _ = self.dir.remove(self.id);
    }
}

/// The connected console socket a process with `terminal` gets, checking the two agree.
pub(crate) fn console_for(terminal: bool, console: &Option<ConsoleSocket>) -> Result<Option<OwnedFd>> {
    Ok(match (terminal, console) {
        (false, None) => None,
        (true, None) => return Err(Error::Other("process.terminal is true: --console-socket is required".into())),
        (false, Some(_)) => return Err(Error::Other("--console-socket given but process.terminal is false".into())),
        (true, Some(ConsoleSocket::Path(p))) => Some(crate::terminal::connect(p)?),
        (true, Some(ConsoleSocket::Connected(fd))) => {
            Some(fd.try_clone().map_err(|e| Error::Other(format!("console socket: {e}")))?)
        }
    })
}

/// A connected socket to the seccomp agent, when the filter notifies.
pub(crate) fn seccomp_listener(sc: Option<&oci_spec::runtime::LinuxSeccomp>) -> Result<Option<OwnedFd>> {
    let Some(path) = sc.filter(|s| crate::seccomp::uses_notify(s)).and_then(|s| s.listener_path().as_ref()) else {
        return Ok(None);
    };
    let stream = crate::terminal::connect_unix(path)
        .map_err(|e| Error::Other(format!("connect seccomp listener {}: {e}", path.display())))?;
    Ok(Some(stream.into()))
}

#[repr(C)]
#[derive(Default)]
pub(crate) struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// clone3 without a new stack: like fork, with namespace flags. Returns 0 in the child, and the
/// child's pid and a pidfd in the parent.
pub(crate) fn clone3(flags: CloneFlags, cgroup: Option<RawFd>) -> nix::Result<(i32, Option<OwnedFd>)> {
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: flags.bits() as u32 as u64 | CLONE_PIDFD,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd as u64;
    }
    // SAFETY: `args` is a valid clone_args of the size passed; with no stack the child continues
    // on a copy of this stack, as after fork. This process is single-threaded, so the child may
    // run arbitrary code until it execs or exits.
    let r = unsafe { libc::syscall(libc::SYS_clone3, &mut args as *mut CloneArgs, std::mem::size_of::<CloneArgs>()) };
    match r {
        -1 => Err(nix::Error::last()),
        0 => Ok((0, None)),
        // SAFETY: the kernel stored a new pidfd for the child, owned by us from now on.
        pid => Ok((pid as i32, Some(unsafe { OwnedFd::from_raw_fd(pidfd) }))),
    }
}

fn write_id_map(pid: i32, file: &str, maps: &[LinuxIdMapping]) -> Result<()> {
    let text: String = maps.iter().map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size())).collect();
    let path = format!("/proc/{pid}/{file}");
    std::fs::write(&path, &text).map_err(|e| Error::Other(format!("write {path}: {e}")))
}

/// Creates container `opts.id` from its bundle: everything up to (not including) the exec of the
/// user's program, which waits for `start`.
pub fn create(dir: &StateDir, opts: &CreateOptions, rec: &mut Recorder) -> Result<Created> {
    let create_span = rec.start(engine_telemetry::names::RUNTIME_CREATE, None);
    rec.set_attr(create_span, "container.id", opts.id.as_str());
    rec.set_attr(create_span, "process.pid", std::process::id());
    let result = create_inner(dir, opts, rec, create_span);
    if let Ok(c) = &result {
        rec.set_attr(create_span, "container.process.pid", c.pid);
    }
    rec.finish(create_span, result)
}

fn create_inner(
    dir: &StateDir,
    opts: &CreateOptions,
    rec: &mut Recorder,
    parent: engine_telemetry::SpanHandle,
) -> Result<Created> {
    let h = rec.start(engine_telemetry::names::RUNTIME_SPEC, Some(parent));
    let bundle = rec.finish(h, spec::load(&opts.bundle))?;
    let linux = bundle.spec.linux().as_ref().ok_or_else(|| Error::Other("linux is missing".into()))?;
    let plan = Plan::from_spec(linux.namespaces().as_deref().unwrap_or_default());
    let process = bundle.spec.process().as_ref().ok_or_else(|| Error::Other("process is missing".into()))?;
    let console = console_for(process.terminal().unwrap_or(false), &opts.console)?;
    let seccomp_listener = seccomp_listener(linux.seccomp().as_ref())?;
    let console_size = process.console_size().as_ref().map(|b| (b.height() as u16, b.width() as u16));

    let state_dir = dir.claim(&opts.id)?;
    let mut rollback = Rollback {
        dir,
        id: &opts.id,
        cgroup: None,
        child: None,
        host_mounts_under: (!plan.own_mount_ns()).then(|| bundle.rootfs.clone()),
        armed: true,
    };

    let h = rec.start(engine_telemetry::names::RUNTIME_CGROUP, Some(parent));
    let cgroups_path = linux.cgroups_path().clone().unwrap_or_else(|| PathBuf::from("/").join(&opts.id));
    let cgroup = rec.finish(
        h,
        (|| {
            let layout = Layout::detect()?;
            let mut cg = CgroupManager::plan(&layout, &cgroups_path)?;
            // what create is about to make (every directory, before any is made), for a delete
            // after a kill; once `state.json` is saved it says the same and this goes
            let creating = crate::state::CreatingState {
                cgroup: cg.planned(),
                rootfs: bundle.rootfs.clone(),
                own_mount_ns: plan.own_mount_ns(),
            };
            dir.save_creating(&opts.id, &creating)?;
            cg.create(linux.resources().as_ref())?;
            Ok::<_, Error>(cg)
        })(),
    )?;
    let cgroup = rollback.cgroup.insert(cgroup);

    let fifo = state_dir.join(EXEC_FIFO);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622)).map_err(sys("mkfifo exec.fifo"))?;
    // Writable by the container's user whatever the umask was: it opens the fifo after
    // switching to its uid, possibly inside a user namespace.
    std::fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
        .map_err(|e| Error::Other(format!("chmod exec.fifo: {e}")))?;
    // Opened here, as the caller: the child may be a mapped user of a new user namespace that
    // cannot reach the state directory (0700) by path; it reopens this through /proc/self/fd.
    let fifo = nix::fcntl::open(
        &fifo,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys("open exec.fifo"))?;

    // Traced: the process hands over to engine-init after `start`, which passes its span here.
    let init = if rec.enabled() { init_handoff(&state_dir)? } else { None };

    let h = rec.start(engine_telemetry::names::RUNTIME_NAMESPACES, Some(parent));
    rec.set_attr(h, "namespaces.clone_flags", format!("{:#x}", plan.clone_flags.bits()));
    let (pid_ns, join) = namespaces::open_joins(&plan.join).map_err(Error::Setup)?;
    if let Some(fd) = &pid_ns {
        nix::sched::setns(fd, CloneFlags::CLONE_NEWPID).map_err(sys("setns pid namespace"))?;
    }
    let (parent_sock, child_sock) = sync::pair().map_err(sys("socketpair"))?;
    // The child starts life in its v2 cgroup (pure v2, or the v2 tree of a hybrid host);
    // v1 hierarchies are joined below.
    let cgroup_fd = match cgroup.unified_path() {
        Some(p) => Some(
            nix::fcntl::open(
                p,
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(sys(format!("open {}", p.display())))?,
        ),
        None => None,
    };
    // the container's cgroup (v2) id, which the kernel reports with the child's events
    let cgroup_id = cgroup_fd.as_ref().and_then(|f| nix::sys::stat::fstat(f).ok()).map(|st| st.st_ino);
    let (pid, pidfd) = clone3(plan.clone_flags, cgroup_fd.as_ref().map(|f| f.as_raw_fd())).map_err(sys("clone3"))?;
    if pid == 0 {
        drop(parent_sock);
        let args = SetupArgs {
            id: &opts.id,
            host_pid: std::cell::Cell::new(0),
            spec: &bundle.spec,
            bundle: &bundle.dir,
            rootfs: &bundle.rootfs,
            cgroup: cgroup.paths(),
            join,
            new_cgroup_ns: plan.new_cgroup,
            new_time_ns: plan.new_time,
            user_ns: plan.new_user || plan.join.iter().any(|(f, _)| *f == CloneFlags::CLONE_NEWUSER),
            net_ns: plan.has_net_ns(),
            mount_ns: plan.own_mount_ns(),
            exec_fifo: &fifo,
            no_pivot: opts.no_pivot,
            preserve_fds: opts.preserve_fds,
            console: console.as_ref(),
            console_size,
            seccomp_listener: seccomp_listener.as_ref(),
            init: init.as_ref(),
            cgroup_id,
        };
        setup::run(args, child_sock, rec, parent);
    }
    let pidfd = pidfd.ok_or_else(|| Error::Other("clone3 returned no pidfd".into()))?;
    rollback.child = Some(pid);
    drop(child_sock);
    drop(console);
    drop(seccomp_listener);
    rec.set_attr(h, "container.process.pid", pid);

    let attach = rec.start(engine_telemetry::names::RUNTIME_CGROUP_ATTACH, Some(h));
    rec.finish(attach, cgroup.add_pid(pid, cgroup_fd.is_some()))?;
    if plan.new_user {
        write_id_map(pid, "uid_map", linux.uid_mappings().as_deref().unwrap_or_default())?;
        write_id_map(pid, "gid_map", linux.gid_mappings().as_deref().unwrap_or_default())?;
    }
    parent_sock.send(format!("go {pid}").as_bytes()).map_err(sys("signal container init"))?;
    rec.end(h);

    // The child now prepares the rootfs and process; it answers "ready" or "error:<why>", and
    // before its pivot_root asks for the hooks that run in the runtime's namespaces.
    let mut reply = parent_sock.recv().map_err(sys("wait for container init"))?;
    if reply == b"hooks" {
        let hooks = bundle.spec.hooks().clone().unwrap_or_default();
        let state = crate::hooks::state_json(&bundle.spec, &opts.id, Status::Creating, pid, &bundle.dir);
        let h = rec.start(engine_telemetry::names::RUNTIME_HOOKS_CREATE_RUNTIME, Some(parent));
        let ran =
            crate::hooks::run_all("prestart", hooks.prestart().as_deref().unwrap_or_default(), &state).and_then(|_| {
                crate::hooks::run_all("createRuntime", hooks.create_runtime().as_deref().unwrap_or_default(), &state)
            });
        rec.finish(h, ran.map_err(|e| Error::Hook(e.to_string())))?;
        parent_sock.send(b"hooks-done").map_err(sys("signal container init"))?;
        reply = parent_sock.recv().map_err(sys("wait for container init"))?;
    }
    if reply != b"ready" {
        let why = match reply.strip_prefix(b"error:") {
            Some(msg) => String::from_utf8_lossy(msg).into_owned(),
            None => "exited during setup".to_string(),
        };
        return Err(Error::Setup(why));
    }

    let start_time = state::process_start_time(pid).ok_or_else(|| Error::Setup("exited during setup".into()))?;
    let st = ContainerState {
        id: opts.id.clone(),
        oci_version: bundle.spec.version().clone(),
        pid,
        pid_start_time: start_time,
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        created: engine_util::time::now_rfc3339_nanos(),
        annotations: bundle.spec.annotations().clone().unwrap_or_default().into_iter().collect(),
        cgroup: cgroup.paths().clone(),
        own_pid_ns: plan.own_pid_ns(),
        own_mount_ns: plan.own_mount_ns(),
        hooks: bundle.spec.hooks().clone(),
    };
    // exec takes the container's process defaults from this copy, not from a bundle that may change
    std::fs::copy(bundle.dir.join("config.json"), state_dir.join(CONFIG_COPY))
        .map_err(|e| Error::Other(format!("copy config.json into the state: {e}")))?;
    dir.save(&st)?;
    if let Some(p) = &opts.pid_file {
        state::write_pid_file(p, pid).map_err(|e| Error::Other(format!("write pid file {}: {e}", p.display())))?;
    }
    rollback.armed = false;
    Ok(Created { pid, pidfd })
}

/// Name of the file through which `start` tells a traced container's process its span.
pub const START_TRACE: &str = "start.trace";

/// engine-init beside this binary, and the file `start` will write its span's context to; `None`
/// when engine-init is not installed (the start is then recorded without its last step).
fn init_handoff(state_dir: &std::path::Path) -> Result<Option<crate::setup::InitHandoff>> {
    let Some(binary) = std::env::current_exe().ok().map(|p| p.with_file_name("engine-init")).filter(|p| p.is_file())
    else {
        return Ok(None);
    };
    let trace_file = state_dir.join(START_TRACE);
    // readable by the container's user, who reads it through a descriptor opened as root
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&trace_file)
        .map_err(|e| Error::Other(format!("create {}: {e}", trace_file.display())))?;
    Ok(Some(crate::setup::InitHandoff { binary, trace_file }))
}

/// Lets a created container's process exec its program. Traced, it passes its span to the
/// process (for engine-init's `init.exec`) and ends when the user's program has been exec'd.
pub fn start(dir: &StateDir, id: &str, rec: &mut Recorder) -> Result<()> {
    let h = rec.start(engine_telemetry::names::RUNTIME_START, None);
    rec.set_attr(h, "container.id", id);
    rec.set_attr(h, "process.pid", std::process::id());
    let traceparent = rec.context(h).filter(|c| c.sampled()).map(|c| c.traceparent());
    let r = start_inner(dir, id, traceparent.as_deref()).map(|pid| rec.set_attr(h, "container.process.pid", pid));
    rec.finish(h, r)
}

/// Releases the process; returns its pid.
fn start_inner(dir: &StateDir, id: &str, traceparent: Option<&str>) -> Result<i32> {
    let st = dir.load(id)?;
    let status = st.status(dir);
    if status != Status::Created {
        return Err(Error::WrongStatus { id: id.into(), op: "start", status });
    }
    let fifo_path = dir.dir(id).join(EXEC_FIFO);
    // before the release: the process reads it once the fifo opens
    let handed_over = match traceparent {
        Some(tp) => std::fs::OpenOptions::new()
            .write(true)
            .open(dir.dir(id).join(START_TRACE))
            .and_then(|mut f| f.write_all(tp.as_bytes()))
            .is_ok(),
        None => false,
    };
    let fifo = nix::fcntl::open(
        &fifo_path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys("open exec fifo"))?;
    loop {
        let mut fds = [nix::poll::PollFd::new(fifo.as_fd(), nix::poll::PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)) {
            Ok(n) if n > 0 => {
                let mut b = [0u8; 1];
                match nix::unistd::read(&fifo, &mut b) {
                    Ok(1) => break,
                    Ok(_) | Err(nix::Error::EAGAIN) => {}
                    Err(e) => return Err(Error::Sys { op: "read exec fifo".into(), errno: e }),
                }
            }
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(Error::Sys { op: "poll exec fifo".into(), errno: e }),
        }
        if !st.alive() {
            return Err(Error::WrongStatus { id: id.into(), op: "start", status: Status::Stopped });
        }
        if !fifo_path.exists() {
            return Err(Error::WrongStatus { id: id.into(), op: "start", status: Status::Running });
        }
    }
    let _ = std::fs::remove_file(&fifo_path);
    if handed_over {
        wait_exec(st.pid);
    }
    // poststart: after the user's program runs; a failure is a warning, the container runs on
    if let Some(list) = st.hooks.as_ref().and_then(|h| h.poststart().clone()).filter(|l| !l.is_empty()) {
        if !handed_over {
            wait_exec(st.pid);
        }
        for e in crate::hooks::run_all_warning("poststart", &list, &st.to_spec_json(Status::Running)) {
            eprintln!("engine-runtime: warning: {e}");
        }
    }
    Ok(st.pid)
}

/// Waits (up to a second) until the container's first process has replaced the runtime's
/// image (and engine-init's, on a traced start) with the user's program, or has exited.
fn wait_exec(pid: i32) {
    use std::os::unix::fs::MetadataExt;
    // by inode: engine-init runs from a detached mount, whose path /proc shows differently
    let id = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let ours = std::fs::read_link("/proc/self/exe").ok();
    let runtime = ours.as_deref().and_then(id);
    let init = ours.map(|p| p.with_file_name("engine-init")).and_then(|p| id(&p));
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        // the file first, then the arguments: arguments read before an exec with the file read
        // after it would pair engine-init with the runtime's own arguments (not a hand-over)
        let running = id(&exe);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if exec_done(running, &cmdline, runtime, init) {
            return;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Whether a container's first process, running the file `exe` (its device and inode; `None`
/// once gone) with `cmdline`, runs the user's program: it is neither the runtime nor
/// engine-init handing the span over (`engine-init --handoff …`). engine-init as the
/// container's own program (`--init`, PID 1 for good) is the user's program.
fn exec_done(exe: Option<(u64, u64)>, cmdline: &[u8], runtime: Option<(u64, u64)>, init: Option<(u64, u64)>) -> bool {
    match exe {
        None => true,
        Some(running) if Some(running) == runtime => false,
        Some(running) if Some(running) == init => {
            // mid-exec the new image's arguments are not yet mapped: /proc shows an empty cmdline
            let mut args = cmdline.split(|b| *b == 0);
            args.next().is_some_and(|a| !a.is_empty()) && args.next() != Some(b"--handoff".as_slice())
        }
        Some(_) => true,
    }
}

/// The state document of container `id`.
pub fn state(dir: &StateDir, id: &str) -> Result<serde_json::Value> {
    let st = dir.load(id)?;
    Ok(st.to_spec_json(st.status(dir)))
}

/// Parses a signal as runc does: a name with or without "SIG", or a number.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) { Ok(n) } else { Err(Error::BadSignal(s.into())) };
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<Signal>().map(|sig| sig as i32).map_err(|_| Error::BadSignal(s.into()))
}

/// Sends `signal` to the container's first process, or with `all` to every process in it.
pub fn kill(dir: &StateDir, id: &str, signal: i32, all: bool, rec: &mut Recorder) -> Result<()> {
    let h = rec.start(engine_telemetry::names::RUNTIME_KILL, None);
    rec.set_attr(h, "process.pid", std::process::id());
    rec.set_attr(h, "container.id", id);
    rec.set_attr(h, "signal", signal);
    let r = (|| {
        let st = dir.load(id)?;
        let status = st.status(dir);
        if status == Status::Stopped {
            return Err(Error::WrongStatus { id: id.into(), op: "kill", status });
        }
        if all {
            CgroupManager::from_paths(st.cgroup.clone()).signal_all(signal)?;
        } else {
            // SAFETY: kill has no memory effects.
            if unsafe { libc::kill(st.pid, signal) } < 0 {
                return Err(Error::Sys { op: format!("kill {}", st.pid), errno: nix::Error::last() });
            }
        }
        Ok(())
    })();
    rec.finish(h, r)
}

/// Deletes container `id`: a stopped or created one always; a running one only with `force`.
pub fn delete(dir: &StateDir, id: &str, force: bool, rec: &mut Recorder) -> Result<()> {
    let h = rec.start(engine_telemetry::names::RUNTIME_DELETE, None);
    rec.set_attr(h, "process.pid", std::process::id());
    rec.set_attr(h, "container.id", id);
    let r = (|| {
        let st = match dir.load(id) {
            Ok(st) => st,
            Err(crate::state::StateError::NotFound(_)) => {
                // a create killed halfway left a directory without state.json, and perhaps a
                // cgroup with its first process
                crate::state::check_id(id)?;
                if let Some(creating) = dir.load_creating(id) {
                    undo_create(&creating)?;
                }
                dir.remove(id)?;
                return if force { Ok(()) } else { Err(crate::state::StateError::NotFound(id.into()).into()) };
            }
            Err(e) => return Err(e.into()),
        };
        let status = st.status(dir);
        if matches!(status, Status::Running | Status::Paused) && !force {
            return Err(Error::WrongStatus { id: id.into(), op: "delete", status });
        }
        destroy(dir, &st)
    })();
    rec.finish(h, r)
}

/// Undoes what a killed create made: kills the processes in its cgroup (its first process, if it
/// got that far), waits for them, and removes its host mounts and cgroup.
fn undo_create(creating: &crate::state::CreatingState) -> Result<()> {
    let cg = CgroupManager::from_paths(creating.cgroup.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cg.pids().unwrap_or_default().is_empty() && Instant::now() < deadline {
        let _ = cg.signal_all(libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(2));
    }
    if !creating.own_mount_ns {
        crate::rootfs::unmount_under(&creating.rootfs).map_err(|e| Error::Other(e.to_string()))?;
    }
    cg.destroy()?;
    Ok(())
}

/// Kills whatever is left of the container, waits for it, removes its cgroup and state.
fn destroy(dir: &StateDir, st: &ContainerState) -> Result<()> {
    let cg = CgroupManager::from_paths(st.cgroup.clone());
    if st.alive() {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(st.pid, libc::SIGKILL) };
    }
    if !st.own_pid_ns {
        // without its own pid namespace, the container's other processes outlive its first one
        let _ = cg.signal_all(libc::SIGKILL);
    }
    if let Some(freezer) = st.cgroup.paths.get("freezer") {
        // frozen processes cannot die
        let _ = std::fs::write(freezer.join("freezer.state"), "THAWED");
    }
    if let Some(unified) = st.cgroup.paths.get("unified").filter(|_| st.cgroup.v2) {
        let _ = std::fs::write(unified.join("cgroup.freeze"), "0");
    }
    wait_gone(st, Duration::from_secs(10));
    if !st.own_mount_ns {
        crate::rootfs::unmount_under(&st.rootfs).map_err(|e| Error::Other(e.to_string()))?;
    }
    cg.destroy()?;
    dir.remove(&st.id)?;
    // poststop: a failure is a warning; the container is gone either way
    if let Some(list) = st.hooks.as_ref().and_then(|h| h.poststop().clone()).filter(|l| !l.is_empty()) {
        let mut state = st.to_spec_json(Status::Stopped);
        state["pid"] = serde_json::json!(st.pid);
        for e in crate::hooks::run_all_warning("poststop", &list, &state) {
            eprintln!("engine-runtime: warning: {e}");
        }
    }
    Ok(())
}

/// Waits until the container's first process has exited (as a zombie or reaped).
fn wait_gone(st: &ContainerState, limit: Duration) {
    let deadline = Instant::now() + limit;
    // SAFETY: pidfd_open takes integers; a returned fd is owned by us.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, st.pid, 0) };
    let pidfd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    while st.alive() && Instant::now() < deadline {
        match &pidfd {
            Some(fd) => {
                let mut fds = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(50u16));
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Ids, statuses and details of every container, for `list`.
pub fn list(dir: &StateDir) -> Result<Vec<(ContainerState, Status)>> {
    let mut out = Vec::new();
    for id in dir.list()? {
        if let Ok(st) = dir.load(&id) {
            let status = st.status(dir);
            out.push((st, status));
        }
    }
    Ok(out)
}

/// The processes of container `id`.
pub fn pids(dir: &StateDir, id: &str) -> Result<Vec<i32>> {
    let st = dir.load(id)?;
    Ok(CgroupManager::from_paths(st.cgroup).pids()?)
}

/// Blocks the signals a foreground `run` forwards, so that one arriving before
/// [`wait_forwarding`] waits is kept for it instead of ending us (call it before the start: the
/// container's process exists already and keeps its own mask; processes we spawn get an empty
/// one). Returns the set.
pub fn block_forwarded_signals() -> Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::{SigSet, SigmaskHow};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(sys("sigprocmask"))?;
    Ok(set)
}

/// Waits for the container's first process (a child of ours) while forwarding the signals a
/// foreground `run` receives, and, given the pty master `tty`, relays it to our stdio (our
/// window size follows). Returns the exit code (128+signal when killed).
pub fn wait_forwarding(created: &Created, tty: Option<&OwnedFd>) -> Result<i32> {
    use nix::poll::{PollFd, PollFlags};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let set = block_forwarded_signals()?;
    let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC).map_err(sys("signalfd"))?;
    let pid = nix::unistd::Pid::from_raw(created.pid);
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    // with a terminal: our stdin raw and relayed to the pty, the pty relayed to our stdout
    let _raw = tty.map(|_| crate::terminal::RawMode::enter());
    if let Some(master) = tty {
        crate::terminal::copy_size(stdin.as_fd(), master.as_fd());
    }
    let mut stdin_open = tty.is_some();
    loop {
        let mut fds =
            vec![PollFd::new(created.pidfd.as_fd(), PollFlags::POLLIN), PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if let Some(master) = tty {
            fds.push(PollFd::new(master.as_fd(), PollFlags::POLLIN));
            if stdin_open {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
        }
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(Error::Sys { op: "poll".into(), errno: e }),
        }
        let ready = |i: usize| fds.get(i).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty());
        let (exited, signalled, tty_out, tty_in) = (ready(0), ready(1), ready(2), ready(3));
        drop(fds);
        if signalled {
            if let Ok(Some(info)) = sfd.read_signal() {
                match (info.ssi_signo as i32, tty) {
                    (libc::SIGWINCH, Some(master)) => crate::terminal::copy_size(stdin.as_fd(), master.as_fd()),
                    // SAFETY: kill has no memory effects.
                    (signo, _) => unsafe {
                        libc::kill(created.pid, signo);
                    },
                }
            }
        }
        if let Some(master) = tty {
            if tty_out && !exited {
                crate::terminal::pump(master.as_fd(), stdout.as_fd());
            }
            if tty_in && !crate::terminal::pump(stdin.as_fd(), master.as_fd()) {
                stdin_open = false;
            }
        }
        if exited {
            if let Some(master) = tty {
                // what the program wrote just before it exited is still in the pty
                let _ = nix::fcntl::fcntl(master, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
                while crate::terminal::pump(master.as_fd(), stdout.as_fd()) {}
            }
            use nix::sys::wait::{waitpid, WaitStatus};
            return match waitpid(pid, None).map_err(sys("waitpid"))? {
                WaitStatus::Exited(_, code) => Ok(code),
                WaitStatus::Signaled(_, sig, _) => Ok(128 + sig as i32),
                _ => continue,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::exec_done;

    #[test]
    fn a_start_waits_for_the_users_program_not_for_an_init_that_stays() {
        let (runtime, init, user) = (Some((1, 10)), Some((1, 11)), Some((1, 12)));
        assert!(!exec_done(runtime, b"engine-runtime\0init\0", runtime, init), "still the runtime");
        assert!(!exec_done(init, b"engine-init\0--handoff\0tp\0", runtime, init), "engine-init handing over");
        assert!(!exec_done(init, b"", runtime, init), "engine-init mid-exec: its arguments not yet in /proc");
        assert!(exec_done(init, b"/sbin/docker-init\0--\0sleep\0", runtime, init), "--init: PID 1 stays engine-init");
        assert!(exec_done(user, b"sleep\0inf\0", runtime, init));
        assert!(exec_done(None, b"", runtime, init), "gone");
    }
}
