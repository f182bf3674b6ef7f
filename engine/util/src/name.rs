//! Names users give containers, networks and volumes: Docker's characters, within a length bound.

/// The longest name of a container, network or volume, in bytes: `NAME_MAX`, as a volume's name
/// is a directory's name and every name is written in records, `/etc/hosts` files and
/// labels. Docker has no bound of its own and fails such names only where a file system refuses
/// them, after part of the work is done; this engine refuses them up front.
pub const MAX_NAME_LEN: usize = 255;

/// Why a name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// Longer than [`MAX_NAME_LEN`]; the length in bytes.
    TooLong(usize),
    /// Shorter than the kind of object allows, or a character outside Docker's set.
    Characters,
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameError::TooLong(n) => write!(f, "the name is {n} bytes long, at most {MAX_NAME_LEN} are allowed"),
            NameError::Characters => f.write_str("only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"),
        }
    }
}

impl std::error::Error for NameError {}

/// Checks `n` against Docker's rule, `[a-zA-Z0-9][a-zA-Z0-9_.-]*` with at least `min_len`
/// characters (2 for containers and volumes, whose pattern ends in `+`; 1 for networks), and at
/// most [`MAX_NAME_LEN`] bytes.
pub fn check_name(n: &str, min_len: usize) -> Result<(), NameError> {
    let b = n.as_bytes();
    if b.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(b.len()));
    }
    let chars_ok = b.len() >= min_len.max(1)
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if chars_ok {
        Ok(())
    } else {
        Err(NameError::Characters)
    }
}

/// `n` shortened for an error message: a refused name can be any length, the message stays one
/// short line.
pub fn shown(n: &str) -> String {
    const SHOWN: usize = 64;
    match n.char_indices().nth(SHOWN) {
        Some((i, _)) => format!("{}…", &n[..i]),
        None => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_characters_within_the_bound() {
        assert_eq!(check_name("web-1.a_b", 2), Ok(()));
        assert_eq!(check_name("a", 1), Ok(()));
        assert_eq!(check_name("a", 2), Err(NameError::Characters));
        assert_eq!(check_name("", 1), Err(NameError::Characters));
        assert_eq!(check_name("-x", 2), Err(NameError::Characters));
        assert_eq!(check_name("a/b", 2), Err(NameError::Characters));
        assert_eq!(check_name("a b", 2), Err(NameError::Characters));
        assert_eq!(check_name(&"x".repeat(MAX_NAME_LEN), 2), Ok(()));
        assert_eq!(check_name(&"x".repeat(MAX_NAME_LEN + 1), 2), Err(NameError::TooLong(MAX_NAME_LEN + 1)));
        assert_eq!(check_name(&"x".repeat(10_000), 1), Err(NameError::TooLong(10_000)));
    }

    #[test]
    fn shown_names_are_short() {
        assert_eq!(shown("web"), "web");
        let long = shown(&"é".repeat(1000));
        assert_eq!(long.chars().count(), 65);
        assert!(long.ends_with('…'));
    }
}
