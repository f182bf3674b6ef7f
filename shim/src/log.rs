//! The container's log in Docker's json-file format: one JSON object per line with `log`,
//! `stream` and `time`, rotated by size into `log.json.1` … `log.json.N`.

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

/// RFC 3339 with nanoseconds, UTC, from Unix nanoseconds.
pub fn rfc3339_nanos(unix_nanos: i64) -> String {
    let secs = unix_nanos.div_euclid(1_000_000_000);
    let nanos = unix_nanos.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil from days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z", rem / 3600, rem % 3600 / 60, rem % 60)
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
        let entry = serde_json::json!({
            "log": String::from_utf8_lossy(line),
            "stream": stream,
            "time": rfc3339_nanos(unix_nanos),
        });
        let mut text = entry.to_string();
        text.push('\n');
        if self.size > 0 && self.size + text.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(text.as_bytes())?;
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

/// Reads the entries of a log (oldest rotated file first) as (stream, line, unix nanos).
pub fn read_all(path: &Path, max_files: u32) -> Vec<(String, Vec<u8>, i64)> {
    read_all_to_offset(path, max_files).0
}

/// [`read_all`], and the offset in the current file up to which it read (whole lines only):
/// following the file from that offset neither misses nor repeats a line.
pub fn read_all_to_offset(path: &Path, max_files: u32) -> (Vec<(String, Vec<u8>, i64)>, u64) {
    let mut out = Vec::new();
    for i in (1..max_files.max(1)).rev() {
        let Ok(text) = std::fs::read_to_string(format!("{}.{i}", path.display())) else { continue };
        out.extend(text.lines().filter_map(parse_line));
    }
    let bytes = std::fs::read(path).unwrap_or_default();
    let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    out.extend(String::from_utf8_lossy(&bytes[..end]).lines().filter_map(parse_line));
    (out, end as u64)
}

/// One json-file line as (stream, line, unix nanos).
pub fn parse_line(l: &str) -> Option<(String, Vec<u8>, i64)> {
    let v: serde_json::Value = serde_json::from_str(l).ok()?;
    let time = v["time"].as_str().and_then(parse_rfc3339_nanos).unwrap_or(0);
    Some((v["stream"].as_str()?.to_string(), v["log"].as_str()?.as_bytes().to_vec(), time))
}

/// The inverse of [`rfc3339_nanos`] for what it writes.
pub fn parse_rfc3339_nanos(s: &str) -> Option<i64> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    let nanos: i64 = format!("{frac:0<9}")[..9].parse().ok()?;
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + se) * 1_000_000_000) + nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips() {
        for t in [0i64, 1_700_000_000_123_456_789, 951_782_400_000_000_001] {
            assert_eq!(parse_rfc3339_nanos(&rfc3339_nanos(t)), Some(t));
        }
        assert_eq!(rfc3339_nanos(1_700_000_000_000_000_000), "2023-11-14T22:13:20.000000000Z");
    }

    #[test]
    fn rotates_and_reads_back_in_order() {
        let dir = tempfile_dir();
        let path = dir.join("log.json");
        let mut log = JsonLog::open(&path, 200, 3).unwrap();
        for i in 0..20 {
            log.write("stdout", format!("line {i}\n").as_bytes(), i).unwrap();
        }
        assert!(path.with_file_name("log.json.1").exists());
        assert!(path.with_file_name("log.json.2").exists());
        assert!(!path.with_file_name("log.json.3").exists());
        let entries = read_all(&path, 3);
        let nums: Vec<i64> = entries.iter().map(|e| e.2).collect();
        assert!(nums.windows(2).all(|w| w[0] < w[1]), "{nums:?}");
        assert_eq!(entries.last().unwrap().1, b"line 19\n");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("engine-shim-log-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
