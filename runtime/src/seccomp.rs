//! The OCI seccomp object, compiled with libseccomp and loaded into the container's process:
//! default action and errno, architectures, filter flags, syscall rules with actions, errno
//! returns and argument conditions, and the user-notification listener (`listenerPath`).
//!
//! Like runc, rules whose action equals the default are skipped (libseccomp refuses them) and
//! syscall names this libseccomp does not know are ignored, so one profile serves many kernels.

use std::collections::HashSet;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator};

/// Errors building or loading a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: {0}")]
    Invalid(String),
    #[error("seccomp: {op}: {source}")]
    Lib { op: String, source: libseccomp::error::SeccompError },
    #[error("seccomp: send the notify descriptor to {path}: {errno}")]
    Notify { path: String, errno: nix::Error },
}

type Result<T> = std::result::Result<T, SeccompError>;

fn lib(op: impl Into<String>) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    let op = op.into();
    move |source| SeccompError::Lib { op, source }
}

/// The name serde gives an enum value of the spec ("SCMP_ACT_ERRNO").
fn spec_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction> {
    let errno = errno.unwrap_or(libc::EPERM as u32) as i32;
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => ScmpAction::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno as u16),
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
        #[allow(unreachable_patterns)]
        other => return Err(SeccompError::Invalid(format!("unknown action {}", spec_name(&other)))),
    })
}

fn compare(op: LinuxSeccompOperator, value: u64, value_two: Option<u64>) -> (ScmpCompareOp, u64) {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, value),
        LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, value),
        LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, value),
        LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, value),
        LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, value),
        LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, value),
        // the spec's value is the mask, valueTwo the datum
        LinuxSeccompOperator::ScmpCmpMaskedEq => (ScmpCompareOp::MaskedEqual(value), value_two.unwrap_or(0)),
    }
}

/// Checks what can be checked before anything is created: actions, architectures, operators.
pub fn validate(s: &LinuxSeccomp) -> Result<()> {
    build(s).map(|_| ())
}

/// Whether the filter sends notifications (and so needs `listenerPath`).
pub fn uses_notify(s: &LinuxSeccomp) -> bool {
    s.default_action() == LinuxSeccompAction::ScmpActNotify
        || s.syscalls().iter().flatten().any(|r| r.action() == LinuxSeccompAction::ScmpActNotify)
}

/// Builds the filter (not loaded yet).
pub fn build(s: &LinuxSeccomp) -> Result<ScmpFilterContext> {
    let default = action(s.default_action(), s.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(lib("create filter"))?;
    // no_new_privs is the process's setting (process.noNewPrivileges), not the filter's
    ctx.set_ctl_nnp(false).map_err(lib("clear no_new_privs"))?;
    for arch in s.architectures().iter().flatten() {
        let name = spec_name(arch);
        let a: ScmpArch = name.parse().map_err(|_| SeccompError::Invalid(format!("unknown architecture {name}")))?;
        ctx.add_arch(a).map_err(lib(format!("add architecture {name}")))?;
    }
    for flag in s.flags().iter().flatten() {
        match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => ctx.set_ctl_log(true).map_err(lib("flag LOG"))?,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                ctx.set_ctl_ssb(true).map_err(lib("flag SPEC_ALLOW"))?
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => ctx.set_ctl_tsync(true).map_err(lib("flag TSYNC"))?,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                ctx.set_ctl_waitkill(true).map_err(lib("flag WAIT_KILLABLE_RECV"))?
            }
        };
    }
    for rule in s.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        let conds: Vec<ScmpArgCompare> = rule
            .args()
            .iter()
            .flatten()
            .map(|a| {
                if a.index() > 5 {
                    return Err(SeccompError::Invalid(format!("argument index {} is out of range 0..5", a.index())));
                }
                let (op, datum) = compare(a.op(), a.value(), a.value_two());
                Ok(ScmpArgCompare::new(a.index() as u32, op, datum))
            })
            .collect::<Result<_>>()?;
        // conditions on distinct arguments must all hold; several on one argument are
        // alternatives (libseccomp cannot AND them), so each gets its own rule
        let mut seen = HashSet::new();
        let alternatives = rule.args().iter().flatten().any(|a| !seen.insert(a.index()));
        for name in rule.names() {
            let Ok(sc) = ScmpSyscall::from_name(name) else { continue };
            if conds.is_empty() {
                ctx.add_rule(act, sc).map_err(lib(format!("rule for {name}")))?;
            } else if alternatives {
                for c in &conds {
                    ctx.add_rule_conditional(act, sc, &[*c]).map_err(lib(format!("rule for {name}")))?;
                }
            } else {
                ctx.add_rule_conditional(act, sc, &conds).map_err(lib(format!("rule for {name}")))?;
            }
        }
    }
    Ok(ctx)
}

/// Loads `s` into this process. With a listener, the notify descriptor goes to `listener` (a
/// connected socket to `listenerPath`) together with the container's process state, as runc
/// sends it.
pub fn load(s: &LinuxSeccomp, listener: Option<(&OwnedFd, serde_json::Value)>) -> Result<()> {
    let ctx = build(s)?;
    ctx.load().map_err(lib("load filter"))?;
    if let Some((sock, state)) = listener {
        let fd = ctx.get_notify_fd().map_err(lib("get notify descriptor"))?;
        let msg = state.to_string();
        let path = s.listener_path().as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(msg.as_bytes())],
            &[ControlMessage::ScmRights(&[fd])],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|errno| SeccompError::Notify { path, errno })?;
        // SAFETY: fd is the notify descriptor libseccomp created for us; it has been passed on.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// The containerProcessState document a seccomp agent receives with the notify descriptor.
pub fn process_state(s: &LinuxSeccomp, pid: i32, state: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.2.0",
        "fds": ["seccompFd"],
        "pid": pid,
        "metadata": s.listener_metadata().clone().unwrap_or_default(),
        "state": state,
    })
}
