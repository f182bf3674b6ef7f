//! The runtime's log, as runc writes it: `--log FILE` in `--log-format text|json`. Errors also
//! go to stderr, where a caller that did not ask for a log file sees them.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Where log lines go.
#[derive(Clone, Debug, Default)]
pub struct Logger {
    pub file: Option<PathBuf>,
    pub format: LogFormat,
    pub debug: bool,
}

impl Logger {
    fn write(&self, level: &str, msg: &str) {
        let Some(path) = &self.file else { return };
        let line = match self.format {
            LogFormat::Json => {
                serde_json::json!({"level": level, "msg": msg, "time": crate::state::now_rfc3339()}).to_string()
            }
            LogFormat::Text => format!("time=\"{}\" level={level} msg={msg:?}", crate::state::now_rfc3339()),
        };
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Logs an error to the log file and to stderr.
    pub fn error(&self, msg: &str) {
        self.write("error", msg);
        eprintln!("engine-runtime: {msg}");
    }

    /// Logs a debug line when `--debug` is on.
    pub fn debug(&self, msg: &str) {
        if self.debug {
            self.write("debug", msg);
        }
    }
}
