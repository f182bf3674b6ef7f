//! Writing the container's log: the json-file lines of the task-directory contract
//! (`engine_api::task::log`, which also reads them), rotated by size into `log.json.1` …
//! `log.json.N`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes log lines and rotates the file.
pub struct JsonLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
}

impl JsonLog {
    /// Opens (appending) the log at `path`. `max_size` bytes per file (0: 10 MiB), `max_files`
    /// files in all (0: 3).
    pub fn open(path: &Path, max_size: u64, max_files: u32) -> std::io::Result<JsonLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(JsonLog {
            path: path.to_path_buf(),
            file,
            size,
            max_size: if max_size == 0 { 10 << 20 } else { max_size },
            max_files: if max_files == 0 { 3 } else { max_files },
        })
    }

    /// Appends one entry. `line` keeps its trailing newline, as Docker's does.
    pub fn write(&mut self, stream: &str, line: &[u8], unix_nanos: i64) -> std::io::Result<()> {
        let text = engine_api::task::log::encode(stream, line, unix_nanos);
        if self.size > 0 && self.size + text.len() as u64 > self.max_size {
            self.rotate()?;
        }
        if let Err(e) = self.file.write_all(text.as_bytes()) {
            // A full disk may take part of the line: cut it off, so the next entry written
            // once there is room again starts on a line of its own.
            let _ = self.file.set_len(self.size);
            return Err(e);
        }
        self.size += text.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let name = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        if self.max_files <= 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(name(self.max_files - 1));
        for i in (1..self.max_files - 1).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        std::fs::rename(&self.path, name(1))?;
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_api::task::log::read_all;

    #[test]
    fn rotates_and_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        let mut log = JsonLog::open(&path, 200, 3).unwrap();
        for i in 0..20 {
            log.write("stdout", format!("line {i}\n").as_bytes(), i).unwrap();
        }
        assert!(path.with_file_name("log.json.1").exists());
        assert!(path.with_file_name("log.json.2").exists());
        assert!(!path.with_file_name("log.json.3").exists());
        let entries = read_all(&path, 3);
        let nums: Vec<i64> = entries.iter().map(|e| e.unix_nanos).collect();
        assert!(nums.windows(2).all(|w| w[0] < w[1]), "{nums:?}");
        assert_eq!(entries.last().unwrap().line, b"line 19\n");
    }

    /// A full disk loses the lines that do not fit, whole: none is torn, and the lines written
    /// once there is room again read back (needs root, for a one-page tmpfs).
    #[test]
    fn a_full_disk_loses_whole_lines_and_writing_resumes_when_freed() {
        let disk = engine_test_support::Tmpfs::mount("4k");
        let path = disk.path().join("log.json");
        let mut log = JsonLog::open(&path, 0, 1).unwrap();
        let mut written = 0;
        let full = loop {
            match log.write("stdout", format!("line {written} of a container's output\n").as_bytes(), written) {
                Ok(()) => written += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.last(), Some(&b'\n'), "the line that did not fit is torn");
        assert_eq!(read_all(&path, 1).len() as i64, written);

        disk.resize("64k");
        log.write("stdout", b"after\n", written + 1).unwrap();
        let entries = read_all(&path, 1);
        assert_eq!(entries.len() as i64, written + 1);
        assert_eq!(entries.last().unwrap().line, b"after\n");
    }
}
