//! The format of the data root: `<data-root>/format.json` records which layout of records the
//! files under it follow (`format`) and which engined wrote it last. An engined reads a data
//! root of its format or an older one (migrating it forward, then recording its own), and
//! refuses a newer one with a clear error before it changes anything: a downgrade across a
//! format change is never silently misread.
//!
//! Format history:
//! 1. the layout of ARCHITECTURE.md's "On disk" (a data root without the file is this one: it
//!    predates the file).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The format this engined writes.
pub const CURRENT: u32 = 1;

const FILE: &str = "format.json";

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Format {
    pub format: u32,
    /// The engine version that wrote the data root last.
    pub written_by: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "the data root {root} is in format {found}, written by engine {by}; this engined ({ours}) reads formats up to {CURRENT}: run that engine or a newer one, or use another --data-root"
    )]
    Newer { root: String, found: u32, by: String, ours: &'static str },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} does not read: {source}")]
    Unreadable { path: String, source: serde_json::Error },
}

/// Checks the data root's format and brings it to [`CURRENT`]: the format it was in.
pub fn check(root: &Path) -> Result<u32, FormatError> {
    let path = root.join(FILE);
    let io = |source| FormatError::Io { path: path.display().to_string(), source };
    let found = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Format>(&bytes)
            .map_err(|source| FormatError::Unreadable { path: path.display().to_string(), source })?,
        // a new data root, or one from before the file: format 1
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Format { format: 1, written_by: String::new() },
        Err(e) => return Err(io(e)),
    };
    if found.format > CURRENT {
        return Err(FormatError::Newer {
            root: root.display().to_string(),
            found: found.format,
            by: found.written_by,
            ours: env!("CARGO_PKG_VERSION"),
        });
    }
    // migrations from older formats go here, one step each, before the new format is recorded
    let ours = Format { format: CURRENT, written_by: env!("CARGO_PKG_VERSION").to_string() };
    if found != ours {
        let bytes = serde_json::to_vec_pretty(&ours).map_err(|e| io(std::io::Error::other(e)))?;
        engine_util::fs::write_atomic(&path, &bytes).map_err(io)?;
    }
    Ok(found.format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_is_recorded_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check(dir.path()).unwrap(), 1);
        let written: Format = serde_json::from_slice(&std::fs::read(dir.path().join(FILE)).unwrap()).unwrap();
        assert_eq!(written, Format { format: CURRENT, written_by: env!("CARGO_PKG_VERSION").into() });
        assert_eq!(check(dir.path()).unwrap(), CURRENT);
        let newer = r#"{"format": 99, "written_by": "9.0.0"}"#;
        std::fs::write(dir.path().join(FILE), newer).unwrap();
        let err = check(dir.path()).unwrap_err().to_string();
        assert!(err.contains("format 99, written by engine 9.0.0") && err.contains("reads formats up to 1"), "{err}");
        assert_eq!(std::fs::read_to_string(dir.path().join(FILE)).unwrap(), newer, "a refused root was changed");
        std::fs::write(dir.path().join(FILE), "{").unwrap();
        assert!(check(dir.path()).unwrap_err().to_string().contains("does not read"));
    }
}
