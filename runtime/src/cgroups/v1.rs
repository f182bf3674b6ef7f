//! cgroup v1: one directory per hierarchy, one interface file per setting.

use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};

use super::{read_file, write_file, CgroupError, CgroupManager, Result};

/// A new v1 cpuset cgroup starts with no cpus and no memory nodes; copy the parent's. A parent
/// another runtime has just made may not have its own yet: it is filled first, from its parent
/// (the same values, so two runtimes doing it at once agree).
pub(super) fn init_cpuset(dir: &Path) -> Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        fill_cpuset(dir, file, 0)?;
    }
    Ok(())
}

fn fill_cpuset(dir: &Path, file: &str, depth: usize) -> Result<String> {
    let current = read_file(&dir.join(file))?.trim().to_string();
    if !current.is_empty() {
        return Ok(current);
    }
    let parent = dir
        .parent()
        .filter(|_| depth < 32)
        .ok_or_else(|| CgroupError::Invalid(format!("{} has no {file} up its tree", dir.display())))?;
    let value = fill_cpuset(parent, file, depth + 1)?;
    write_file(&dir.join(file), &value)?;
    Ok(value)
}

fn need<'a>(m: &'a CgroupManager, controller: &str, what: &str) -> Result<&'a Path> {
    m.controller_path(controller)
        .ok_or_else(|| CgroupError::Unsupported(format!("{what} (the {controller} controller is not mounted)")))
}

fn limit_value(v: i64) -> String {
    // -1 means unlimited in both the spec and v1 files
    if v < 0 {
        "-1".into()
    } else {
        v.to_string()
    }
}

fn device_rule(d: &LinuxDeviceCgroup) -> String {
    let typ = match d.typ() {
        Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => "c",
        Some(LinuxDeviceType::B) => "b",
        Some(LinuxDeviceType::P) => "p",
        Some(LinuxDeviceType::A) | None => "a",
    };
    let num = |n: Option<i64>| n.filter(|&n| n >= 0).map(|n| n.to_string()).unwrap_or_else(|| "*".into());
    let access = d.access().clone().unwrap_or_else(|| "rwm".into());
    format!("{typ} {}:{} {access}", num(d.major()), num(d.minor()))
}

/// Devices every container may use (as runc allows them): null, zero, full, random, urandom,
/// tty, console, ptmx and the pty slaves.
pub(crate) const DEFAULT_ALLOWED_DEVICES: &[&str] = &[
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c *:* m",
    "b *:* m",
];

pub(super) fn apply(m: &CgroupManager, r: &LinuxResources) -> Result<()> {
    if let Some(mem) = r.memory() {
        let dir = need(m, "memory", "linux.resources.memory")?;
        if let Some(v) = mem.limit().filter(|&v| v != 0) {
            write_file(&dir.join("memory.limit_in_bytes"), &limit_value(v))?;
        }
        if let Some(v) = mem.swap().filter(|&v| v != 0) {
            let file = dir.join("memory.memsw.limit_in_bytes");
            if file.exists() {
                write_file(&file, &limit_value(v))?;
            } else if v > 0 {
                return Err(CgroupError::Unsupported("linux.resources.memory.swap (swap accounting is off)".into()));
            }
        }
        if let Some(v) = mem.reservation().filter(|&v| v != 0) {
            write_file(&dir.join("memory.soft_limit_in_bytes"), &limit_value(v))?;
        }
        if let Some(v) = mem.swappiness() {
            write_file(&dir.join("memory.swappiness"), &v.to_string())?;
        }
        if mem.disable_oom_killer() == Some(true) {
            write_file(&dir.join("memory.oom_control"), "1")?;
        }
        if let Some(v) = mem.kernel_tcp().filter(|&v| v != 0) {
            write_file(&dir.join("memory.kmem.tcp.limit_in_bytes"), &limit_value(v))?;
        }
        // memory.kernel is deprecated by the spec and ignored, as runc does.
    }
    if let Some(cpu) = r.cpu() {
        let dir = need(m, "cpu", "linux.resources.cpu")?;
        if let Some(v) = cpu.shares().filter(|&v| v != 0) {
            write_file(&dir.join("cpu.shares"), &v.to_string())?;
        }
        if let Some(v) = cpu.period().filter(|&v| v != 0) {
            write_file(&dir.join("cpu.cfs_period_us"), &v.to_string())?;
        }
        if let Some(v) = cpu.quota().filter(|&v| v != 0) {
            write_file(&dir.join("cpu.cfs_quota_us"), &limit_value(v))?;
        }
        if let Some(v) = cpu.burst() {
            write_file(&dir.join("cpu.cfs_burst_us"), &v.to_string())?;
        }
        if let Some(v) = cpu.realtime_period().filter(|&v| v != 0) {
            write_file(&dir.join("cpu.rt_period_us"), &v.to_string())?;
        }
        if let Some(v) = cpu.realtime_runtime().filter(|&v| v != 0) {
            write_file(&dir.join("cpu.rt_runtime_us"), &v.to_string())?;
        }
        if let Some(v) = cpu.idle() {
            write_file(&dir.join("cpu.idle"), &v.to_string())?;
        }
        let cpus = cpu.cpus().as_ref().filter(|s| !s.is_empty());
        let mems = cpu.mems().as_ref().filter(|s| !s.is_empty());
        if cpus.is_some() || mems.is_some() {
            let dir = need(m, "cpuset", "linux.resources.cpu.cpus/mems")?;
            if let Some(v) = cpus {
                write_file(&dir.join("cpuset.cpus"), v)?;
            }
            if let Some(v) = mems {
                write_file(&dir.join("cpuset.mems"), v)?;
            }
        }
    }
    if let Some(p) = r.pids().as_ref().filter(|p| p.limit() != 0) {
        let dir = need(m, "pids", "linux.resources.pids")?;
        let v = if p.limit() > 0 { p.limit().to_string() } else { "max".into() };
        write_file(&dir.join("pids.max"), &v)?;
    }
    if let Some(b) = r.block_io() {
        let dir = need(m, "blkio", "linux.resources.blockIO")?;
        for (file, weight) in [("blkio.weight", b.weight()), ("blkio.leaf_weight", b.leaf_weight())] {
            if let Some(w) = weight.filter(|&w| w != 0) {
                if !dir.join(file).exists() {
                    return Err(CgroupError::Unsupported(format!(
                        "linux.resources.blockIO weights ({file} is absent)"
                    )));
                }
                write_file(&dir.join(file), &w.to_string())?;
            }
        }
        if b.weight_device().as_ref().is_some_and(|v| !v.is_empty()) && !dir.join("blkio.weight_device").exists() {
            return Err(CgroupError::Unsupported(
                "linux.resources.blockIO.weightDevice (blkio.weight_device is absent)".into(),
            ));
        }
        for (file, devices) in [
            ("blkio.throttle.read_bps_device", b.throttle_read_bps_device()),
            ("blkio.throttle.write_bps_device", b.throttle_write_bps_device()),
            ("blkio.throttle.read_iops_device", b.throttle_read_iops_device()),
            ("blkio.throttle.write_iops_device", b.throttle_write_iops_device()),
        ] {
            for d in devices.iter().flatten() {
                write_file(&dir.join(file), &format!("{}:{} {}", d.major(), d.minor(), d.rate()))?;
            }
        }
    }
    for h in r.hugepage_limits().iter().flatten() {
        let dir = need(m, "hugetlb", "linux.resources.hugepageLimits")?;
        write_file(&dir.join(format!("hugetlb.{}.limit_in_bytes", h.page_size())), &h.limit().to_string())?;
    }
    if let Some(n) = r.network() {
        if let Some(id) = n.class_id() {
            let dir = need(m, "net_cls", "linux.resources.network.classID")?;
            write_file(&dir.join("net_cls.classid"), &id.to_string())?;
        }
        for p in n.priorities().iter().flatten() {
            let dir = need(m, "net_prio", "linux.resources.network.priorities")?;
            write_file(&dir.join("net_prio.ifpriomap"), &format!("{} {}", p.name(), p.priority()))?;
        }
    }
    if let Some(dir) = m.controller_path("devices") {
        apply_devices(dir, r.devices().as_deref().unwrap_or_default())?;
    }
    Ok(())
}

fn apply_devices(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    // Start from nothing, then the spec's rules in order, then the devices every container has.
    write_file(&dir.join("devices.deny"), "a")?;
    for rule in rules {
        let file = if rule.allow() { "devices.allow" } else { "devices.deny" };
        let text = device_rule(rule);
        if text.starts_with("a ") {
            // "a" with any numbers means everything in v1
            write_file(&dir.join(file), "a")?;
        } else {
            write_file(&dir.join(file), &text)?;
        }
    }
    for rule in DEFAULT_ALLOWED_DEVICES {
        write_file(&dir.join("devices.allow"), rule)?;
    }
    Ok(())
}

#[cfg(test)]
mod cpuset_tests {
    use super::*;

    #[test]
    fn an_empty_parent_is_filled_before_its_child() {
        // root has its cpus; a parent another runtime just made does not yet; the child takes
        // the root's through it
        let root = tempfile::tempdir().unwrap();
        let (parent, child) = (root.path().join("engine"), root.path().join("engine/c1"));
        std::fs::create_dir_all(&child).unwrap();
        for (dir, cpus, mems) in [(root.path(), "0-1", "0"), (parent.as_path(), "", ""), (child.as_path(), "", "")] {
            std::fs::write(dir.join("cpuset.cpus"), cpus).unwrap();
            std::fs::write(dir.join("cpuset.mems"), mems).unwrap();
        }
        init_cpuset(&child).unwrap();
        for dir in [&parent, &child] {
            assert_eq!(std::fs::read_to_string(dir.join("cpuset.cpus")).unwrap(), "0-1");
            assert_eq!(std::fs::read_to_string(dir.join("cpuset.mems")).unwrap(), "0");
        }
    }
}
