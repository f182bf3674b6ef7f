//! A container's resource usage read from its cgroup, in the shape of runc's `events --stats`
//! (`cpu`, `memory`, `pids`, `blkio`), from v1 or v2 files.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use super::CgroupManager;

/// "key value" lines (memory.stat, cpu.stat, io.stat-like flat files) as a map.
fn flat_keyed(path: &Path) -> BTreeMap<String, u64> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// A single-number file; "max" reads as u64::MAX, as runc reports it.
fn number(path: &Path) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    let t = text.trim();
    if t == "max" {
        return Some(u64::MAX);
    }
    t.parse().ok()
}

impl CgroupManager {
    /// Current usage, as runc's stats object.
    pub fn stats(&self) -> Value {
        if self.paths.v2 {
            let Some(dir) = self.path("unified") else { return json!({}) };
            let cpu = flat_keyed(&dir.join("cpu.stat"));
            let mem = flat_keyed(&dir.join("memory.stat"));
            let events = flat_keyed(&dir.join("memory.events"));
            json!({
                "cpu": {
                    "usage": {
                        "total": cpu.get("usage_usec").map(|u| u * 1000),
                        "user": cpu.get("user_usec").map(|u| u * 1000),
                        "kernel": cpu.get("system_usec").map(|u| u * 1000),
                    },
                    "throttling": {
                        "periods": cpu.get("nr_periods"),
                        "throttledPeriods": cpu.get("nr_throttled"),
                        "throttledTime": cpu.get("throttled_usec").map(|u| u * 1000),
                    },
                },
                "memory": {
                    "usage": {
                        "usage": number(&dir.join("memory.current")),
                        "limit": number(&dir.join("memory.max")),
                        "max": number(&dir.join("memory.peak")),
                        "failcnt": events.get("max"),
                    },
                    "swap": { "usage": number(&dir.join("memory.swap.current")), "limit": number(&dir.join("memory.swap.max")) },
                    "cache": mem.get("file"),
                    "raw": mem,
                },
                "pids": { "current": number(&dir.join("pids.current")), "limit": number(&dir.join("pids.max")) },
            })
        } else {
            let p = |c: &str, f: &str| self.controller_path(c).map(|d| d.join(f));
            let read = |c: &str, f: &str| p(c, f).and_then(|path| number(&path));
            let mem = p("memory", "memory.stat").map(|path| flat_keyed(&path)).unwrap_or_default();
            let cpu = p("cpu", "cpu.stat").map(|path| flat_keyed(&path)).unwrap_or_default();
            let cpuacct = p("cpuacct", "cpuacct.stat").map(|path| flat_keyed(&path)).unwrap_or_default();
            // cpuacct.stat counts USER_HZ ticks
            // SAFETY: sysconf has no memory effects.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
            let ticks = |k: &str| cpuacct.get(k).map(|t| t * 1_000_000_000 / hz);
            let percpu: Option<Vec<u64>> = p("cpuacct", "cpuacct.usage_percpu")
                .and_then(|path| fs::read_to_string(path).ok())
                .map(|t| t.split_whitespace().filter_map(|n| n.parse().ok()).collect());
            json!({
                "cpu": {
                    "usage": { "total": read("cpuacct", "cpuacct.usage"), "percpu": percpu, "user": ticks("user"), "kernel": ticks("system") },
                    "throttling": {
                        "periods": cpu.get("nr_periods"),
                        "throttledPeriods": cpu.get("nr_throttled"),
                        "throttledTime": cpu.get("throttled_time"),
                    },
                },
                "memory": {
                    "usage": {
                        "usage": read("memory", "memory.usage_in_bytes"),
                        "limit": read("memory", "memory.limit_in_bytes"),
                        "max": read("memory", "memory.max_usage_in_bytes"),
                        "failcnt": read("memory", "memory.failcnt"),
                    },
                    "swap": { "usage": read("memory", "memory.memsw.usage_in_bytes"), "limit": read("memory", "memory.memsw.limit_in_bytes") },
                    "cache": mem.get("total_cache").or(mem.get("cache")),
                    "raw": mem,
                },
                "pids": { "current": read("pids", "pids.current"), "limit": read("pids", "pids.max") },
            })
        }
    }
}
