//! End-to-end tests of the whole engine (see `tests/`): each starts a private engined with its
//! own socket, data-root, exec-root and cgroup parent, and drives it only as a user would,
//! through the engine CLI or the Docker CLI. This library is empty on purpose.
