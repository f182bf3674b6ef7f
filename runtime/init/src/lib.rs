//! engine-init: a minimal PID 1 for containers, in the manner of tini.
//!
//! Owns: starting the user's program as its only child, forwarding every catchable signal to it
//! (or to its process group with `-g`), reaping every zombie that is reparented to it, and exiting
//! with the child's exit code, or 128+signal when the child was killed. Its one span, `init.exec`,
//! ends when the user's program is exec'd.
//!
//! It also serves the runtime on a traced start ([`handoff`]): the container's first process, set
//! up and released by `start`, execs engine-init, which records `init.exec` under the `start`
//! span and execs the user's program in its place (same pid, nothing left running).
//!
//! Must never: start an async runtime or threads, allocate on the signal path, keep descriptors
//! open in the user's program, or exit before its child has.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStringExt;

use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{execvp, fork, getpid, setpgid, ForkResult, Pid};

/// First argument of the runtime's hand-over:
/// `engine-init --handoff TRACEPARENT SINK_FD START_UNIX_NANOS HOST_PID PATH ARGV...`.
pub const HANDOFF_FLAG: &str = "--handoff";

/// The runtime's hand-over: records `init.exec` (from `START_UNIX_NANOS`, when the runtime
/// handed over, so engine-init's own exec is in it) under `TRACEPARENT` into the inherited
/// `SINK_FD` (with `HOST_PID`, this process as the host sees it, as its `process.pid`), and execs `PATH` with `ARGV` and this process's environment (the user's). Returns
/// only when the exec failed, with the exit code to end with (127 not found, 126 otherwise).
pub fn handoff(args: &[OsString]) -> i32 {
    let [traceparent, fd, start, host_pid, path, argv @ ..] = args else {
        eprintln!("engine-init: {HANDOFF_FLAG} needs TRACEPARENT SINK_FD START_UNIX_NANOS HOST_PID PATH ARGV...");
        return 126;
    };
    let parent = engine_telemetry::TraceContext::parse(&traceparent.to_string_lossy(), None).ok();
    let sink = engine_telemetry::sink::open_file_sink(&format!("fd:{}", fd.to_string_lossy()))
        .map(engine_telemetry::Sink::file);
    let mut rec = match (sink, parent) {
        (Some(sink), Some(parent)) => engine_telemetry::Recorder::following("engine-init", sink, parent),
        _ => engine_telemetry::Recorder::disabled("engine-init"),
    };
    let started =
        start.to_str().and_then(|s| s.parse().ok()).unwrap_or_else(engine_telemetry::recorder::now_unix_nanos);
    let span = rec.start_at(engine_telemetry::names::INIT_EXEC, None, started);
    let pid = host_pid.to_str().and_then(|p| p.parse::<i64>().ok()).unwrap_or_else(|| getpid().as_raw().into());
    rec.set_attr(span, "process.pid", pid);
    rec.set_attr(span, "process.executable.path", path.to_string_lossy().into_owned());
    let to_c = |s: &OsString| CString::new(s.clone().into_vec()).ok();
    let (Some(cpath), Some(cargv)) = (to_c(path), argv.iter().map(to_c).collect::<Option<Vec<_>>>()) else {
        rec.fail(span, "argument contains a NUL byte");
        return 126;
    };
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            CString::new(kv).ok()
        })
        .collect();
    // the span ends here; its descriptor is close-on-exec, so the program never sees it
    rec.end(span);
    rec.flush();
    let err = nix::unistd::execve(&cpath, &cargv, &env).err().unwrap_or(nix::Error::UnknownErrno);
    eprintln!("engine-init: exec {:?}: {err}", path);
    if err == nix::Error::ENOENT {
        127
    } else {
        126
    }
}

/// Options from the command line.
#[derive(Debug, Default, PartialEq)]
pub struct Options {
    /// Signal the child's whole process group instead of the child alone.
    pub group: bool,
    /// Register as a child subreaper (when not running as PID 1).
    pub subreaper: bool,
    /// The program and its arguments.
    pub command: Vec<OsString>,
}

/// Parses `engine-init [-g] [-s] [--] PROGRAM [ARGS...]`.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Options, String> {
    let mut o = Options::default();
    let mut args = args.into_iter().skip(1).peekable();
    while let Some(a) = args.peek() {
        match a.to_str() {
            Some("-g") => o.group = true,
            Some("-s") => o.subreaper = true,
            Some("--") => {
                args.next();
                break;
            }
            Some("-h") | Some("--help") => return Err(usage()),
            Some(s) if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option {s}\n{}", usage())),
            _ => break,
        }
        args.next();
    }
    o.command = args.collect();
    if o.command.is_empty() {
        return Err(usage());
    }
    Ok(o)
}

fn usage() -> String {
    "usage: engine-init [-g] [-s] [--] PROGRAM [ARGS...]\n  -g  send signals to the child's process group\n  -s  register as a child subreaper".into()
}

/// The signals init forwards: every catchable one except those about its own children and
/// terminal stops, which it handles itself.
fn forwarded() -> SigSet {
    let mut set = SigSet::all();
    for s in [Signal::SIGCHLD, Signal::SIGKILL, Signal::SIGSTOP, Signal::SIGTTIN, Signal::SIGTTOU, Signal::SIGTSTP] {
        set.remove(s);
    }
    set
}

/// Runs the program under init and returns the exit code init should end with.
pub fn run(opts: &Options) -> Result<i32, String> {
    let mut rec = engine_telemetry::Recorder::from_env("engine-init");
    let span = rec.start(engine_telemetry::names::INIT_EXEC, None);
    rec.set_attr(span, "process.pid", getpid().as_raw());
    rec.set_attr(span, "process.command", opts.command[0].to_string_lossy().into_owned());

    if opts.subreaper {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
            return Err(format!("register as subreaper: {}", nix::Error::last()));
        }
    }
    // Block every signal we handle before forking, so none is lost between fork and the wait loop.
    let mut all = forwarded();
    all.add(Signal::SIGCHLD);
    let mut old = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), Some(&mut old)).map_err(|e| format!("sigprocmask: {e}"))?;

    let argv: Vec<CString> = opts
        .command
        .iter()
        .map(|a| CString::new(a.clone().into_vec()).map_err(|_| "argument contains a NUL byte".to_string()))
        .collect::<Result<_, _>>()?;

    // The span ends at the exec; the child writes it (the sink is close-on-exec) just before.
    // SAFETY: this process is single-threaded; the child only calls async-signal-safe functions
    // and functions that are safe in a single-threaded child before exec.
    let child = match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            rec.end(span);
            rec.flush();
            // the user's program must not inherit the hand-off (its descriptor is close-on-exec)
            std::env::remove_var(engine_telemetry::ENV_SPAN_SINK);
            let err = execvp(&argv[0], &argv).err().unwrap_or(nix::Error::UnknownErrno);
            eprintln!("engine-init: exec {:?}: {err}", opts.command[0]);
            // SAFETY: _exit ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(if err == nix::Error::ENOENT { 127 } else { 126 }) };
        }
        ForkResult::Parent { child } => child,
    };
    // The parent's copy of the span belongs to the child now.
    rec.forked(span);
    drop(rec);

    loop {
        let sig = all.wait().map_err(|e| format!("sigwait: {e}"))?;
        if sig != Signal::SIGCHLD {
            let target = if opts.group { Pid::from_raw(-child.as_raw()) } else { child };
            let _ = kill(target, sig);
            continue;
        }
        // Reap everything that has exited; stop when our child is among them.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => return Ok(code),
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == child => return Ok(128 + s as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_flags_and_command() {
        let o = parse_args(args(&["engine-init", "-g", "-s", "--", "sh", "-c", "true"])).unwrap();
        assert!(o.group && o.subreaper);
        assert_eq!(o.command, args(&["sh", "-c", "true"]));
        let o = parse_args(args(&["engine-init", "sleep", "-g"])).unwrap();
        assert!(!o.group);
        assert_eq!(o.command, args(&["sleep", "-g"]));
        assert!(parse_args(args(&["engine-init"])).is_err());
        assert!(parse_args(args(&["engine-init", "-x", "sh"])).is_err());
    }
}
