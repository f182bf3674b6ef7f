//! Whether the kernel's OOM killer ended a container: the `oom_kill` count of the memory cgroup
//! its first process was in, found from `/proc/<pid>/cgroup` while the process lives (as
//! containerd's shim does), so the shim needs nothing of the runtime's own state.

use std::path::{Path, PathBuf};

/// The file that counts OOM kills in one memory cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomCounter(PathBuf);

impl OomCounter {
    /// The counter of the memory cgroup of `pid`, if it has one (cgroup v2's `memory.events`,
    /// v1's `memory.oom_control`).
    pub fn of_pid(pid: i32) -> Option<OomCounter> {
        let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        Self::from_cgroup_table(&table, Path::new("/sys/fs/cgroup"))
    }

    /// The counter named by a `/proc/<pid>/cgroup` table under the cgroup mount `root`: the v1
    /// memory hierarchy where there is one (hybrid machines keep memory on v1), else v2.
    fn from_cgroup_table(table: &str, root: &Path) -> Option<OomCounter> {
        let mut v2 = None;
        for line in table.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let rel = path.trim_start_matches('/');
            if controllers.split(',').any(|c| c == "memory") {
                return Some(OomCounter(root.join("memory").join(rel).join("memory.oom_control")));
            }
            if controllers.is_empty() {
                v2 = Some(rel.to_string());
            }
        }
        let rel = v2?;
        let unified = if root.join("unified").is_dir() { root.join("unified") } else { root.to_path_buf() };
        Some(OomCounter(unified.join(rel).join("memory.events")))
    }

    /// How many processes the OOM killer has ended in the cgroup (0 when it cannot be read: the
    /// cgroup is gone or has no memory controller).
    pub fn kills(&self) -> u64 {
        let text = std::fs::read_to_string(&self.0).unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_memory_cgroup_on_v1_hybrid_and_v2() {
        let root = tempfile::tempdir().unwrap();
        let v1 = "12:pids:/engine/c1\n5:cpu,cpuacct:/engine/c1\n4:memory:/engine/c1\n0::/\n";
        assert_eq!(
            OomCounter::from_cgroup_table(v1, root.path()),
            Some(OomCounter(root.path().join("memory/engine/c1/memory.oom_control")))
        );
        let v2 = "0::/engine/c1\n";
        assert_eq!(
            OomCounter::from_cgroup_table(v2, root.path()),
            Some(OomCounter(root.path().join("engine/c1/memory.events")))
        );
        std::fs::create_dir_all(root.path().join("unified")).unwrap();
        let counter = OomCounter::from_cgroup_table(v2, root.path()).unwrap();
        assert_eq!(counter, OomCounter(root.path().join("unified/engine/c1/memory.events")));
        assert_eq!(counter.kills(), 0);
        std::fs::create_dir_all(root.path().join("unified/engine/c1")).unwrap();
        std::fs::write(&counter.0, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n").unwrap();
        assert_eq!(counter.kills(), 2);
    }

    #[test]
    fn a_live_process_has_a_counter() {
        assert!(OomCounter::of_pid(std::process::id() as i32).is_some());
    }
}
