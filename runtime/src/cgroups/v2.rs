//! cgroup v2: one unified hierarchy; controllers are enabled from the root down.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use super::{read_file, write_file, CgroupError, Result};

/// Enables every available controller in the `cgroup.subtree_control` of each ancestor of `leaf`,
/// from the root down, so the leaf can use them.
pub(super) fn enable_controllers(leaf: &Path) -> Result<()> {
    let ancestors: Vec<&Path> = leaf.ancestors().skip(1).collect();
    for dir in ancestors.into_iter().rev() {
        let controllers = dir.join("cgroup.controllers");
        if !controllers.exists() {
            continue; // above the cgroup2 mount
        }
        let available = read_file(&controllers)?;
        let wanted: Vec<String> = available
            .split_whitespace()
            .filter(|c| matches!(*c, "cpu" | "cpuset" | "io" | "memory" | "pids" | "hugetlb" | "misc"))
            .map(|c| format!("+{c}"))
            .collect();
        if !wanted.is_empty() {
            write_file(&dir.join("cgroup.subtree_control"), &wanted.join(" "))?;
        }
    }
    Ok(())
}

/// cpu.shares (2..262144) to cpu.weight (1..10000), the conversion runc and crun use.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.saturating_sub(2) * 9999) / 262_142
}

/// blkio weight (10..1000) to io.weight (1..10000).
pub fn blkio_weight_to_io(weight: u16) -> u64 {
    1 + (u64::from(weight).saturating_sub(10) * 9999) / 990
}

fn max_or(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

pub(super) fn apply(dir: &Path, r: &LinuxResources) -> Result<()> {
    let file = |name: &str| dir.join(name);
    if let Some(mem) = r.memory() {
        // zero means "not set" (docker sends zeros), as runc treats it
        if let Some(v) = mem.limit().filter(|&v| v != 0) {
            write_file(&file("memory.max"), &max_or(v))?;
        }
        if let Some(v) = mem.reservation().filter(|&v| v != 0) {
            write_file(&file("memory.low"), &max_or(v))?;
        }
        if let Some(swap) = mem.swap().filter(|&v| v != 0) {
            // the spec's swap is memory+swap; v2's memory.swap.max is swap alone
            let value = match (swap, mem.limit()) {
                (s, _) if s < 0 => "max".to_string(),
                (s, Some(l)) if l > 0 => (s - l).max(0).to_string(),
                (s, _) => s.to_string(),
            };
            write_file(&file("memory.swap.max"), &value)?;
        }
        if mem.swappiness().is_some_and(|s| s != 0) {
            return Err(CgroupError::Unsupported("linux.resources.memory.swappiness on cgroup v2".into()));
        }
        if mem.disable_oom_killer() == Some(true) {
            return Err(CgroupError::Unsupported("linux.resources.memory.disableOOMKiller on cgroup v2".into()));
        }
    }
    if let Some(cpu) = r.cpu() {
        if let Some(s) = cpu.shares().filter(|&s| s != 0) {
            write_file(&file("cpu.weight"), &shares_to_weight(s).to_string())?;
        }
        if cpu.quota().is_some() || cpu.period().is_some() {
            let quota = cpu.quota().filter(|&q| q > 0).map(|q| q.to_string()).unwrap_or_else(|| "max".into());
            let period = cpu.period().filter(|&p| p > 0).unwrap_or(100_000);
            write_file(&file("cpu.max"), &format!("{quota} {period}"))?;
        }
        if let Some(b) = cpu.burst() {
            write_file(&file("cpu.max.burst"), &b.to_string())?;
        }
        if let Some(i) = cpu.idle() {
            write_file(&file("cpu.idle"), &i.to_string())?;
        }
        if cpu.realtime_runtime().is_some_and(|v| v != 0) || cpu.realtime_period().is_some_and(|v| v != 0) {
            return Err(CgroupError::Unsupported("linux.resources.cpu realtime settings on cgroup v2".into()));
        }
        if let Some(v) = cpu.cpus().as_ref().filter(|s| !s.is_empty()) {
            write_file(&file("cpuset.cpus"), v)?;
        }
        if let Some(v) = cpu.mems().as_ref().filter(|s| !s.is_empty()) {
            write_file(&file("cpuset.mems"), v)?;
        }
    }
    if let Some(p) = r.pids().as_ref().filter(|p| p.limit() != 0) {
        let v = if p.limit() > 0 { p.limit().to_string() } else { "max".into() };
        write_file(&file("pids.max"), &v)?;
    }
    if let Some(b) = r.block_io() {
        if let Some(w) = b.weight().filter(|&w| w != 0) {
            write_file(&file("io.weight"), &format!("default {}", blkio_weight_to_io(w)))?;
        }
        for d in b.weight_device().iter().flatten() {
            if let Some(w) = d.weight() {
                write_file(&file("io.weight"), &format!("{}:{} {}", d.major(), d.minor(), blkio_weight_to_io(w)))?;
            }
        }
        for (key, devices) in [
            ("rbps", b.throttle_read_bps_device()),
            ("wbps", b.throttle_write_bps_device()),
            ("riops", b.throttle_read_iops_device()),
            ("wiops", b.throttle_write_iops_device()),
        ] {
            for d in devices.iter().flatten() {
                write_file(&file("io.max"), &format!("{}:{} {key}={}", d.major(), d.minor(), d.rate()))?;
            }
        }
    }
    for h in r.hugepage_limits().iter().flatten() {
        write_file(&file(&format!("hugetlb.{}.max", h.page_size())), &h.limit().to_string())?;
    }
    if r.network().is_some() {
        return Err(CgroupError::Unsupported("linux.resources.network on cgroup v2".into()));
    }
    if let Some(devices) = r.devices().as_ref().filter(|d| !d.is_empty()) {
        // v2 has no devices controller: the rules are an eBPF program on the cgroup. Programs
        // attached later (update) add to it: every one must allow a device.
        let fd = nix::fcntl::open(
            dir,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| CgroupError::Read { path: dir.into(), source: e.into() })?;
        super::devices_bpf::attach(std::os::fd::AsFd::as_fd(&fd), &super::devices_bpf::rules_for(devices))?;
    }
    if let Some(u) = r.unified() {
        for (key, value) in u {
            write_file(&file(key), value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_match_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(blkio_weight_to_io(10), 1);
        assert_eq!(blkio_weight_to_io(1000), 10_000);
    }
}
