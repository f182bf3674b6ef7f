//! Operations on a container that are not lifecycle transitions: pause and resume (the cgroup
//! freezer), update of resource limits, and usage statistics (`events`).

use std::time::Duration;

use engine_telemetry::Recorder;
use oci_spec::runtime::LinuxResources;
use serde_json::{json, Value};

use crate::cgroups::{self, CgroupManager};
use crate::error::{Error, Result};
use crate::state::{StateDir, Status};

/// Freezes every process of a running container.
pub fn pause(dir: &StateDir, id: &str, rec: &mut Recorder) -> Result<()> {
    let h = rec.start(engine_telemetry::names::RUNTIME_PAUSE, None);
    rec.set_attr(h, "process.pid", std::process::id());
    rec.set_attr(h, "container.id", id);
    let r = (|| {
        let st = dir.load(id)?;
        let status = st.status(dir);
        if status != Status::Running {
            return Err(Error::WrongStatus { id: id.into(), op: "pause", status });
        }
        Ok(CgroupManager::from_paths(st.cgroup.clone()).freeze(true)?)
    })();
    rec.finish(h, r)
}

/// Thaws a paused container.
pub fn resume(dir: &StateDir, id: &str, rec: &mut Recorder) -> Result<()> {
    let h = rec.start(engine_telemetry::names::RUNTIME_RESUME, None);
    rec.set_attr(h, "process.pid", std::process::id());
    rec.set_attr(h, "container.id", id);
    let r = (|| {
        let st = dir.load(id)?;
        let status = st.status(dir);
        if status != Status::Paused {
            return Err(Error::WrongStatus { id: id.into(), op: "resume", status });
        }
        Ok(CgroupManager::from_paths(st.cgroup.clone()).freeze(false)?)
    })();
    rec.finish(h, r)
}

/// Applies new resource limits to a created, running or paused container. Values are checked
/// before anything is written.
pub fn update(dir: &StateDir, id: &str, resources: &LinuxResources, rec: &mut Recorder) -> Result<()> {
    let h = rec.start(engine_telemetry::names::RUNTIME_UPDATE, None);
    rec.set_attr(h, "process.pid", std::process::id());
    rec.set_attr(h, "container.id", id);
    let r = (|| {
        let st = dir.load(id)?;
        let status = st.status(dir);
        if status == Status::Stopped {
            return Err(Error::WrongStatus { id: id.into(), op: "update", status });
        }
        cgroups::validate(resources)?;
        Ok(CgroupManager::from_paths(st.cgroup.clone()).apply(resources)?)
    })();
    rec.finish(h, r)
}

/// One `stats` event of container `id`, as runc's `events --stats` prints it.
pub fn stats(dir: &StateDir, id: &str) -> Result<Value> {
    let st = dir.load(id)?;
    let status = st.status(dir);
    if status == Status::Stopped {
        return Err(Error::WrongStatus { id: id.into(), op: "read stats of", status });
    }
    Ok(json!({"type": "stats", "id": id, "data": CgroupManager::from_paths(st.cgroup.clone()).stats()}))
}

/// Parses an interval as runc does ("5s", "500ms", "1m"); a bare number is seconds.
pub fn parse_interval(s: &str) -> Result<Duration> {
    let bad = || Error::Other(format!("invalid interval {s:?}: want e.g. 5s, 500ms, 1m"));
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Counts OOM kills so far (v2 `memory.events` oom_kill, v1 `memory.oom_control` oom_kill).
pub fn oom_kills(dir: &StateDir, id: &str) -> Result<u64> {
    let st = dir.load(id)?;
    let cg = CgroupManager::from_paths(st.cgroup.clone());
    let file = if st.cgroup.v2 { "memory.events" } else { "memory.oom_control" };
    let Some(path) = cg.controller_path("memory").map(|d| d.join(file)) else { return Ok(0) };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    Ok(text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_interval("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_interval("2").unwrap(), Duration::from_secs(2));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("5x").is_err());
    }
}
