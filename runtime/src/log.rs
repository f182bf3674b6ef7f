//! The runtime's log, as runc writes it: `--log FILE` in `--log-format text|json`. Without a log
//! file, errors go to stderr. With one, they go only there: a caller such as a shim hands the
//! runtime the container's own stdio, which must not receive the runtime's messages.

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
                serde_json::json!({"level": level, "msg": msg, "time": engine_util::time::now_rfc3339_nanos()})
                    .to_string()
            }
            LogFormat::Text => format!("time=\"{}\" level={level} msg={msg:?}", engine_util::time::now_rfc3339_nanos()),
        };
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Logs an error to the log file, or to stderr when there is none.
    pub fn error(&self, msg: &str) {
        match &self.file {
            Some(_) => self.write("error", msg),
            // "error" in the line, as runc and youki print it, where tools look for it
            None => eprintln!("engine-runtime: error: {msg}"),
        }
    }

    /// Logs a debug line when `--debug` is on.
    pub fn debug(&self, msg: &str) {
        if self.debug {
            self.write("debug", msg);
        }
    }
}
