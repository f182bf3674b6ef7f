//! A process's scheduler state, as `/proc/<pid>/stat` gives it.

/// The state letter of process `pid` (`R`, `S`, `D`, `Z` for a zombie, …); `None` when there is
/// no such process. The command in parentheses may hold any byte, so the state is read after
/// its last `)`.
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

/// Whether process `pid` exists and has not exited (a zombie, or a dead one, has).
pub fn running(pid: u32) -> bool {
    state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_and_a_missing_one_does_not() {
        assert!(running(std::process::id()));
        assert!(matches!(state(std::process::id()), Some('R' | 'S')));
        assert_eq!(state(u32::MAX), None);
        assert!(!running(u32::MAX));
    }
}
