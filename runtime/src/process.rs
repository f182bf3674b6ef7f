//! The container process's identity and limits, applied just before exec: rlimits, user and
//! groups, capabilities (all five sets), no_new_privs, umask, cwd, environment, and the lookup of
//! the program in the container's PATH.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capabilities, LinuxCapabilities, PosixRlimit, Process};

/// Errors while preparing the process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{op}: {errno}")]
    Sys { op: String, errno: nix::Error },
    #[error("unknown capability {0}")]
    UnknownCapability(String),
    #[error("unknown rlimit {0}")]
    UnknownRlimit(String),
    /// In runc's words (Go's LookPath): the Docker CLI reads its exit code 127 from them.
    #[error("exec: {0:?}: executable file not found in $PATH")]
    NotFound(String),
    /// A program named by path that is missing or cannot be run, in runc's words (lower case:
    /// the Docker CLI reads 127 or 126 from "no such file or directory" / "permission denied").
    #[error("exec: {0:?}: {1}")]
    NotRunnable(String, &'static str),
    #[error("cwd {0}: {1}")]
    Cwd(PathBuf, nix::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("argument or environment contains a NUL byte: {0:?}")]
    Nul(String),
}

type Result<T> = std::result::Result<T, ProcessError>;

fn errno_result(ret: libc::c_int, op: &str) -> Result<()> {
    if ret < 0 {
        Err(ProcessError::Sys { op: op.into(), errno: nix::Error::last() })
    } else {
        Ok(())
    }
}

/// The libc resource number of an rlimit as the spec names it ("RLIMIT_NOFILE").
pub fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        _ => return None,
    })
}

fn spec_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// Applies the process's rlimits to the calling process.
pub fn apply_rlimits(rlimits: &[PosixRlimit]) -> Result<()> {
    for r in rlimits {
        let name = spec_name(&r.typ());
        let resource = rlimit_resource(&name).ok_or_else(|| ProcessError::UnknownRlimit(name.clone()))?;
        let lim = libc::rlimit { rlim_cur: r.soft(), rlim_max: r.hard() };
        // SAFETY: `lim` is a valid rlimit for the duration of the call.
        errno_result(
            unsafe { libc::setrlimit(resource, &lim) },
            &format!("setrlimit {name} soft={} hard={}", r.soft(), r.hard()),
        )?;
    }
    Ok(())
}

/// Capability numbers of a spec capability set, skipping those this kernel does not know.
fn cap_mask(set: &Option<Capabilities>, last_cap: u32) -> Result<u64> {
    let mut mask = 0u64;
    for c in set.iter().flatten() {
        let name = spec_name(c);
        let cap: caps::Capability = name.parse().map_err(|_| ProcessError::UnknownCapability(name.clone()))?;
        let bit = u32::from(cap.index());
        if bit <= last_cap {
            mask |= 1 << bit;
        }
    }
    Ok(mask)
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The capability masks to apply, computed before the pivot (while the host's /proc is visible).
#[derive(Clone, Copy, Debug, Default)]
pub struct CapMasks {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
    pub last_cap: u32,
}

impl CapMasks {
    pub fn from_spec(c: Option<&LinuxCapabilities>) -> Result<CapMasks> {
        let last = last_cap();
        let Some(c) = c else { return Ok(CapMasks { last_cap: last, ..Default::default() }) };
        Ok(CapMasks {
            bounding: cap_mask(c.bounding(), last)?,
            effective: cap_mask(c.effective(), last)?,
            permitted: cap_mask(c.permitted(), last)?,
            inheritable: cap_mask(c.inheritable(), last)?,
            ambient: cap_mask(c.ambient(), last)?,
            last_cap: last,
        })
    }
}

/// Drops every capability outside the bounding set. Needs CAP_SETPCAP, so it runs before the
/// user switch.
pub fn drop_bounding(m: &CapMasks) -> Result<()> {
    for bit in 0..=m.last_cap {
        if m.bounding & (1 << bit) == 0 {
            // SAFETY: prctl with integer arguments only.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, bit as libc::c_ulong, 0, 0, 0) };
            if r < 0 && nix::Error::last() != nix::Error::EINVAL {
                return Err(ProcessError::Sys {
                    op: format!("drop capability {bit} from the bounding set"),
                    errno: nix::Error::last(),
                });
            }
        }
    }
    Ok(())
}

/// Switches to the process's user and groups, keeping the permitted capabilities across the
/// switch so that [`set_capabilities`] can apply the spec's sets afterwards.
pub fn switch_user(p: &Process) -> Result<()> {
    let u = p.user();
    let groups: Vec<libc::gid_t> = u.additional_gids().clone().unwrap_or_default();
    // SAFETY: prctl with integer arguments only.
    errno_result(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) }, "prctl(PR_SET_KEEPCAPS)")?;
    // setgroups is denied in a user namespace whose setgroups file says "deny"; that is only an
    // error when groups were asked for.
    // SAFETY: the pointer and length describe `groups`.
    let r = unsafe { libc::setgroups(groups.len(), groups.as_ptr()) };
    if r < 0 && (!groups.is_empty() || nix::Error::last() != nix::Error::EPERM) {
        return Err(ProcessError::Sys { op: "setgroups".into(), errno: nix::Error::last() });
    }
    // Raw syscalls: glibc's wrappers would signal every thread, and this process has one.
    // SAFETY: integer arguments only.
    errno_result(
        unsafe { libc::syscall(libc::SYS_setresgid, u.gid(), u.gid(), u.gid()) } as libc::c_int,
        &format!("setresgid {}", u.gid()),
    )?;
    // SAFETY: integer arguments only.
    errno_result(
        unsafe { libc::syscall(libc::SYS_setresuid, u.uid(), u.uid(), u.uid()) } as libc::c_int,
        &format!("setresuid {}", u.uid()),
    )?;
    // SAFETY: prctl with integer arguments only.
    errno_result(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) }, "prctl(PR_SET_KEEPCAPS)")?;
    Ok(())
}

/// Sets the effective, permitted and inheritable sets in one capset call, then the ambient set.
pub fn set_capabilities(m: &CapMasks) -> Result<()> {
    let mut hdr = CapHeader { version: 0x2008_0522, pid: 0 };
    let data = [
        CapData { effective: m.effective as u32, permitted: m.permitted as u32, inheritable: m.inheritable as u32 },
        CapData {
            effective: (m.effective >> 32) as u32,
            permitted: (m.permitted >> 32) as u32,
            inheritable: (m.inheritable >> 32) as u32,
        },
    ];
    // SAFETY: header and two data structs laid out as capset(2) version 3 expects.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    errno_result(r as libc::c_int, "capset")?;
    // SAFETY: prctl with integer arguments only.
    errno_result(
        unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) },
        "clear ambient capabilities",
    )?;
    for bit in 0..=m.last_cap {
        if m.ambient & (1 << bit) != 0 {
            // SAFETY: prctl with integer arguments only.
            let r =
                unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, bit as libc::c_ulong, 0, 0) };
            // a capability outside permitted or inheritable cannot be ambient: the spec lets it go
            if r < 0 && nix::Error::last() != nix::Error::EPERM {
                return Err(ProcessError::Sys {
                    op: format!("raise ambient capability {bit}"),
                    errno: nix::Error::last(),
                });
            }
        }
    }
    Ok(())
}

/// Sets no_new_privs.
pub fn set_no_new_privs() -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    errno_result(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }, "prctl(PR_SET_NO_NEW_PRIVS)")
}

/// The program and its arguments and environment, ready for execve.
pub struct Exec {
    pub path: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn cstring(s: impl Into<Vec<u8>>) -> Result<CString> {
    let v = s.into();
    CString::new(v.clone()).map_err(|_| ProcessError::Nul(String::from_utf8_lossy(&v).into_owned()))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Home directory of `uid` from the container's /etc/passwd, if listed.
fn home_of(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[2].parse() == Ok(uid)).then(|| f[5].to_string())
    })
}

/// Finds the program in the container (after the pivot) and builds argv and envp. HOME is set
/// from /etc/passwd (or "/") when the spec does not set it, as runc does.
pub fn prepare_exec(p: &Process) -> Result<Exec> {
    let args = p.args().clone().unwrap_or_default();
    let mut env = p.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home_of(p.user().uid()).unwrap_or_else(|| "/".into())));
    }
    let prog = args.first().cloned().unwrap_or_default();
    let path = if prog.contains('/') {
        // refused here, before the start, as runc does
        match std::fs::metadata(&prog) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ProcessError::NotRunnable(prog, "no such file or directory"));
            }
            Ok(m) if m.is_dir() => return Err(ProcessError::NotRunnable(prog, "is a directory")),
            Ok(m) if m.permissions().mode() & 0o111 == 0 => {
                return Err(ProcessError::NotRunnable(prog, "permission denied"));
            }
            _ => PathBuf::from(&prog),
        }
    } else {
        let search = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
        search
            .split(':')
            .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(&prog))
            .find(|c| is_executable(c))
            .ok_or_else(|| ProcessError::NotFound(prog.clone()))?
    };
    Ok(Exec {
        path: cstring(path.as_os_str().as_bytes())?,
        argv: args.into_iter().map(cstring).collect::<Result<_>>()?,
        envp: env.into_iter().map(cstring).collect::<Result<_>>()?,
    })
}

/// Makes the process's cwd if the root filesystem lacks it (0755, owned by root), as runc does.
/// Called after the pivot: inside the new root, a `..` or a symlink cannot leave it.
pub fn make_cwd(p: &Process) -> Result<()> {
    let cwd = p.cwd();
    if cwd.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(cwd)
        .map_err(|e| ProcessError::Cwd(cwd.clone(), nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))
}

/// Changes into the process's cwd (as the final user, so permissions are the user's).
pub fn enter_cwd(p: &Process) -> Result<()> {
    nix::unistd::chdir(p.cwd()).map_err(|e| ProcessError::Cwd(p.cwd().clone(), e))
}

/// Replaces the process image. Returns only on failure.
pub fn exec(e: &Exec) -> nix::Error {
    match nix::unistd::execve(&e.path, &e.argv, &e.envp) {
        Err(err) => err,
        Ok(never) => match never {},
    }
}

/// Sets the umask (0022 unless the spec says otherwise).
pub fn set_umask(p: &Process) {
    let mask = p.user().umask().unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
}

/// Sets the I/O priority (`process.ioPriority`, ioprio_set for this process).
pub fn set_io_priority(p: &oci_spec::runtime::LinuxIOPriority) -> Result<()> {
    use oci_spec::runtime::IOPriorityClass;
    let class: i64 = match p.class() {
        IOPriorityClass::IoprioClassRt => 1,
        IOPriorityClass::IoprioClassBe => 2,
        IOPriorityClass::IoprioClassIdle => 3,
    };
    let prio = p.priority();
    if !(0..=7).contains(&prio) {
        return Err(ProcessError::Invalid(format!("process.ioPriority.priority {prio} is out of range 0-7")));
    }
    const IOPRIO_WHO_PROCESS: i64 = 1;
    // SAFETY: ioprio_set takes integers only.
    let r = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, (class << 13) | prio) };
    errno_result(r as libc::c_int, "ioprio_set")
}

/// `struct sched_attr` of sched_setattr(2).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// Sets the scheduling policy and its attributes (`process.scheduler`, sched_setattr).
pub fn set_scheduler(s: &oci_spec::runtime::Scheduler) -> Result<()> {
    use oci_spec::runtime::{LinuxSchedulerFlag as F, LinuxSchedulerPolicy as P};
    let policy = match s.policy() {
        P::SchedOther => 0,
        P::SchedFifo => 1,
        P::SchedRr => 2,
        P::SchedBatch => 3,
        P::SchedIso => {
            return Err(ProcessError::Invalid("process.scheduler.policy SCHED_ISO is not supported by Linux".into()))
        }
        P::SchedIdle => 5,
        P::SchedDeadline => 6,
    };
    let nice = s.nice().unwrap_or(0);
    if !(-20..=19).contains(&nice) {
        return Err(ProcessError::Invalid(format!("process.scheduler.nice {nice} is out of range -20..19")));
    }
    let mut flags = 0u64;
    for f in s.flags().iter().flatten() {
        flags |= match f {
            F::SchedResetOnFork => 0x01,
            F::SchedFlagReclaim => 0x02,
            F::SchedFlagDLOverrun => 0x04,
            F::SchedFlagKeepPolicy => 0x08,
            F::SchedFlagKeepParams => 0x10,
            F::SchedFlagUtilClampMin => 0x20,
            F::SchedFlagUtilClampMax => 0x40,
        };
    }
    let mut attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy,
        flags,
        nice,
        priority: s.priority().unwrap_or(0).max(0) as u32,
        runtime: s.runtime().unwrap_or(0),
        deadline: s.deadline().unwrap_or(0),
        period: s.period().unwrap_or(0),
        ..Default::default()
    };
    // SAFETY: attr is a valid sched_attr whose size field says how large it is.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &mut attr as *mut SchedAttr, 0) };
    errno_result(r as libc::c_int, "sched_setattr")
}

/// Sets the execution domain (`linux.personality`).
pub fn set_personality(p: &oci_spec::runtime::LinuxPersonality) -> Result<()> {
    use oci_spec::runtime::LinuxPersonalityDomain;
    let domain: libc::c_ulong = match p.domain() {
        LinuxPersonalityDomain::PerLinux => 0x0000,
        LinuxPersonalityDomain::PerLinux32 => 0x0008,
    };
    if let Some(flag) = p.flags().iter().flatten().next() {
        return Err(ProcessError::Invalid(format!("linux.personality.flags {flag:?} is not supported")));
    }
    // SAFETY: personality takes an integer.
    let r = unsafe { libc::personality(domain) };
    errno_result(r, "personality")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(args: &[&str]) -> Process {
        let mut p = Process::default();
        p.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
        p.set_env(Some(vec!["PATH=/usr/bin:/bin".into()]));
        p
    }

    /// The reasons a program cannot run are worded as runc's, so the Docker CLI exits 127/126.
    #[test]
    fn programs_that_cannot_run_are_refused_in_runcs_words() {
        let err = |args: &[&str]| prepare_exec(&process(args)).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            err(&["no-such-program-here"]),
            "exec: \"no-such-program-here\": executable file not found in $PATH"
        );
        assert_eq!(err(&["/no/such/program"]), "exec: \"/no/such/program\": no such file or directory");
        assert_eq!(err(&["/etc/passwd"]), "exec: \"/etc/passwd\": permission denied");
        assert_eq!(err(&["/"]), "exec: \"/\": is a directory");
        assert!(prepare_exec(&process(&["sh", "-c", "true"])).is_ok());
        assert!(prepare_exec(&process(&["/bin/sh"])).is_ok());
    }
}
