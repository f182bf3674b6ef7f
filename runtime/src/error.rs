//! The runtime's top-level error: one line that names the problem.

use crate::state::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error(transparent)]
    Terminal(#[from] crate::terminal::TerminalError),
    #[error("{0}")]
    Hook(String),
    #[error("container init: {0}")]
    Setup(String),
    #[error("{op}: {errno}")]
    Sys { op: String, errno: nix::Error },
    #[error("cannot {op} container {id}: it is {status}")]
    WrongStatus { id: String, op: &'static str, status: Status },
    #[error("invalid signal {0:?}")]
    BadSignal(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn sys(op: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
    let op = op.into();
    move |errno| Error::Sys { op, errno }
}
