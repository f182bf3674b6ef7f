//! `HostConfig` (the run options of `docker run`) checked, then applied to the OCI spec that
//! engine-image built from the image: resources, capabilities, privileges, read-only root,
//! tmpfs, binds and volumes, network mode, `--init`, and the per-container /etc files.
//! Checking happens before anything is created, so bad values change nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDevice, LinuxDeviceBuilder,
    LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceType, LinuxPidsBuilder, LinuxResources, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscallBuilder, LinuxThrottleDevice, LinuxThrottleDeviceBuilder,
    Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, Spec,
};

use crate::http::ApiError;
use engine_docker_api::HostConfig;

/// Docker's floor for `--memory`.
const MIN_MEMORY: i64 = 6 * 1024 * 1024;
/// Docker's /dev/shm when `--shm-size` is not given.
pub const DEFAULT_SHM_SIZE: i64 = 64 * 1024 * 1024;
/// What a container with the `none` log driver keeps of its output (for attach only).
const NONE_LOG_SIZE: u64 = 64 * 1024;

/// What this host's cgroups can do for a container's limits, read once.
#[derive(Clone, Debug)]
pub struct Host {
    /// The memory controller is v1's (swappiness and the OOM killer switch exist there only).
    pub memory_v1: bool,
    /// Swap is accounted, so memory+swap can be limited.
    pub swap_limit: bool,
    /// The CPUs and memory nodes containers may be given (`0-1`).
    pub cpus: String,
    pub mems: String,
    /// The cgroup namespace mode of a container that names none (Docker's: `host` on v1,
    /// `private` on v2).
    pub default_cgroupns: &'static str,
    /// Block I/O can be throttled per device (v1's blkio.throttle files, v2's io controller).
    pub blkio_throttle: bool,
}

impl Host {
    pub fn get() -> &'static Host {
        static HOST: std::sync::OnceLock<Host> = std::sync::OnceLock::new();
        HOST.get_or_init(|| {
            let root = Path::new("/sys/fs/cgroup");
            let v2 = root.join("cgroup.controllers").exists();
            let read = |p: &Path| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
            let memory_v1 = root.join("memory/memory.limit_in_bytes").exists();
            let swap_limit = if memory_v1 {
                root.join("memory/memory.memsw.limit_in_bytes").exists()
            } else {
                // v2: swap.max exists in every non-root cgroup when swap is accounted
                std::fs::read_dir(root)
                    .map(|d| d.flatten().any(|e| e.path().join("memory.swap.max").exists()))
                    .unwrap_or(false)
            };
            let (cpus, mems) = if v2 {
                (read(&root.join("cpuset.cpus.effective")), read(&root.join("cpuset.mems.effective")))
            } else {
                (read(&root.join("cpuset/cpuset.cpus")), read(&root.join("cpuset/cpuset.mems")))
            };
            let online = |f: &str| read(Path::new(f));
            let blkio_throttle = if v2 {
                read(&root.join("cgroup.controllers")).split_whitespace().any(|c| c == "io")
            } else {
                root.join("blkio/blkio.throttle.read_bps_device").exists()
            };
            Host {
                blkio_throttle,
                memory_v1,
                swap_limit,
                cpus: if cpus.is_empty() { online("/sys/devices/system/cpu/online") } else { cpus },
                mems: if mems.is_empty() { online("/sys/devices/system/node/online") } else { mems },
                default_cgroupns: if v2 { "private" } else { "host" },
            }
        })
    }
}

/// The numbers of a cpuset list (`0-2,4`); `None` when it is not one.
pub fn cpuset_list(s: &str) -> Option<std::collections::BTreeSet<u32>> {
    let mut out = std::collections::BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?);
                if a > b {
                    return None;
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(part.trim().parse::<u32>().ok()?);
            }
        }
    }
    Some(out)
}

/// What dockerd records of a create beyond what was asked: the defaults it applies, shown by
/// inspect (the `runc` runtime, the cgroup namespace mode, a 64 MiB /dev/shm, memory+swap of
/// twice the memory where swap is accounted).
pub fn fill_defaults(hc: &mut HostConfig) {
    let host = Host::get();
    if hc.runtime.is_empty() {
        hc.runtime = DEFAULT_RUNTIME.into();
    }
    if hc.cgroupns_mode.is_empty() {
        hc.cgroupns_mode = host.default_cgroupns.into();
    }
    if hc.shm_size == 0 {
        hc.shm_size = DEFAULT_SHM_SIZE;
    }
    let r = &mut hc.resources;
    if r.memory > 0 && r.memory_swap == 0 && host.swap_limit {
        r.memory_swap = r.memory * 2;
    }
    if r.memory_swappiness == Some(-1) {
        r.memory_swappiness = None;
    }
}

/// The name engined's runtime answers to (dockerd's default runtime's name, which clients
/// send and check).
pub const DEFAULT_RUNTIME: &str = "runc";
pub const INIT_PATH: &str = "/sbin/docker-init";

/// A bind or volume mount, parsed from `-v` or `--mount`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Host(PathBuf),
    Volume(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSpec {
    pub source: Source,
    pub target: String,
    pub read_only: bool,
    /// A volume that must not take the image's files at its path (`nocopy`).
    pub no_copy: bool,
    /// A bind's propagation (`rprivate` when none is given): `rshared`, `rslave`, …
    pub propagation: Option<&'static str>,
    /// The bind alone, not the mounts below its source (`BindOptions.NonRecursive`).
    pub non_recursive: bool,
}

/// Everything in a HostConfig that can be wrong, checked up front.
pub fn check(hc: &HostConfig) -> Result<Vec<MountSpec>, ApiError> {
    check_limits(hc)?;
    check_rest(hc)
}

/// The restart policy and the resource limits (what an update may change), checked.
pub fn check_limits(hc: &HostConfig) -> Result<(), ApiError> {
    let bad = |m: String| Err(ApiError::bad_request(m));
    match hc.restart_policy.name.as_str() {
        "" | "no" | "always" | "unless-stopped" => {
            if hc.restart_policy.maximum_retry_count != 0 {
                return bad("maximum retry count cannot be used with restart policy other than on-failure".into());
            }
        }
        "on-failure" if hc.restart_policy.maximum_retry_count < 0 => {
            return bad("maximum retry count cannot be negative".into())
        }
        "on-failure" => {}
        other => return bad(format!("invalid restart policy '{other}'")),
    }
    if hc.auto_remove && !matches!(hc.restart_policy.name.as_str(), "" | "no") {
        return bad("can't create 'AutoRemove' container with restart policy".into());
    }
    if hc.resources.memory != 0 && hc.resources.memory < MIN_MEMORY {
        return bad("Minimum memory limit allowed is 6MB".into());
    }
    if hc.resources.nano_cpus < 0 {
        return bad("invalid CPU value: must be positive".into());
    }
    let ncpu = std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1);
    if hc.resources.nano_cpus > ncpu * 1_000_000_000 {
        return bad(format!("Range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available"));
    }
    if hc.resources.nano_cpus > 0 && (hc.resources.cpu_quota > 0 || hc.resources.cpu_period > 0) {
        return bad("Conflicting options: Nano CPUs and CPU Period/Quota cannot both be set".into());
    }
    check_memory(&hc.resources)?;
    check_cpuset(&hc.resources)?;
    check_unsupported(&hc.resources)
}

/// Memory reservation, memory+swap and swappiness, with Docker's words.
fn check_memory(r: &engine_docker_api::Resources) -> Result<(), ApiError> {
    let bad = |m: &str| Err(ApiError::bad_request(m));
    let host = Host::get();
    if r.memory_reservation < 0 || (r.memory_reservation != 0 && r.memory_reservation < MIN_MEMORY) {
        return bad("Minimum memory reservation allowed is 6MB");
    }
    if r.memory > 0 && r.memory_reservation > r.memory {
        return bad("Minimum memory limit can not be less than memory reservation limit, see usage");
    }
    if r.memory_swap != 0 && r.memory_swap != -1 {
        if r.memory == 0 {
            return bad("You should always set the Memory limit when using Memoryswap limit, see usage");
        }
        if r.memory_swap < r.memory {
            return bad("Minimum memoryswap limit should be larger than memory limit, see usage");
        }
    }
    // (without swap accounting neither Docker's default of twice the memory nor the CRI's
    // memory+swap equal to the memory can be enforced: taken, as dockerd and containerd do)
    if r.memory_swap > 0 && r.memory_swap != r.memory * 2 && r.memory_swap != r.memory && !host.swap_limit {
        return bad("Your kernel does not support swap limit capabilities or the cgroup is not mounted: MemorySwap cannot be applied");
    }
    if let Some(s) = r.memory_swappiness.filter(|s| *s != -1) {
        if !(0..=100).contains(&s) {
            return Err(ApiError::bad_request(format!("Invalid value: {s}, valid memory swappiness range is 0-100")));
        }
        if !host.memory_v1 {
            return bad("MemorySwappiness is not supported on cgroup v2 (the kernel has no per-cgroup swappiness)");
        }
    }
    if r.oom_kill_disable == Some(true) && !host.memory_v1 {
        return bad("OomKillDisable is not supported on cgroup v2");
    }
    Ok(())
}

/// `--cpuset-cpus` and `--cpuset-mems`: lists of what this host has.
fn check_cpuset(r: &engine_docker_api::Resources) -> Result<(), ApiError> {
    let host = Host::get();
    for (given, available, what) in [(&r.cpuset_cpus, &host.cpus, "cpus"), (&r.cpuset_mems, &host.mems, "mems")] {
        if given.is_empty() {
            continue;
        }
        let Some(asked) = cpuset_list(given) else {
            return Err(ApiError::bad_request(format!("Invalid value {given} for cpuset {what}")));
        };
        let have = cpuset_list(available).unwrap_or_default();
        if !asked.is_subset(&have) {
            let kind = if what == "cpus" { "CPUs" } else { "memory nodes" };
            return Err(ApiError::bad_request(format!(
                "Requested {kind} are not available - requested {given}, available: {available}"
            )));
        }
    }
    Ok(())
}

/// Limits this engine or host cannot apply: refused by name, never dropped.
pub fn check_unsupported(r: &engine_docker_api::Resources) -> Result<(), ApiError> {
    let unsupported = [
        (
            r.blkio_weight != 0 || r.blkio_weight_device.as_ref().is_some_and(|d| !d.is_empty()),
            "BlkioWeight (this host has no block I/O weights)",
        ),
        (
            throttles(r).iter().any(|d| !d.is_empty()) && !Host::get().blkio_throttle,
            "block I/O throttling (BlkioDevice*Bps/IOps: neither v1's blkio nor v2's io controller is here)",
        ),
        (
            r.cpu_realtime_period != 0 || r.cpu_realtime_runtime != 0,
            "CpuRealtimePeriod and CpuRealtimeRuntime (engined gives its cgroups no real-time CPU time)",
        ),
        (r.kernel_memory != 0 || r.kernel_memory_tcp != 0, "KernelMemory (kernel memory limits are deprecated)"),
        (
            r.device_requests.as_ref().is_some_and(|d| !d.is_empty()),
            "DeviceRequests (no device driver such as GPUs is set up)",
        ),
        (
            r.cpu_count != 0 || r.cpu_percent != 0 || r.io_maximum_iops != 0 || r.io_maximum_bandwidth != 0,
            "CpuCount, CpuPercent and IOMaximum* (Windows only)",
        ),
    ];
    if let Some((_, what)) = unsupported.iter().find(|(set, _)| *set) {
        return Err(ApiError::bad_request(format!("{what} is not supported")));
    }
    for d in throttles(r).into_iter().flatten() {
        throttle_device(d)?;
    }
    Ok(())
}

/// What a create applies but an update cannot change (the block I/O throttles): refused by
/// name, never dropped.
pub fn check_updatable(r: &engine_docker_api::Resources) -> Result<(), ApiError> {
    if throttles(r).iter().any(|d| !d.is_empty()) {
        return Err(ApiError::bad_request(
            "BlkioDevice*Bps/IOps cannot be updated: block I/O throttles are set when a container is created",
        ));
    }
    Ok(())
}

/// The four per-device throttles of `r`: read bps, write bps, read IOPS, write IOPS
/// (`--device-read-bps` …).
fn throttles(r: &engine_docker_api::Resources) -> [&[engine_docker_api::ThrottleDevice]; 4] {
    [&r.blkio_device_read_bps, &r.blkio_device_write_bps, &r.blkio_device_read_iops, &r.blkio_device_write_iops]
        .map(|d| d.as_deref().unwrap_or_default())
}

/// A throttle of the host's block device at `d.path`, by its device numbers (what the cgroup
/// files take).
fn throttle_device(d: &engine_docker_api::ThrottleDevice) -> Result<LinuxThrottleDevice, ApiError> {
    let bad =
        |why: String| ApiError::bad_request(format!("invalid device {:?} for block I/O throttling: {why}", d.path));
    let st = nix::sys::stat::stat(Path::new(&d.path)).map_err(|e| bad(e.desc().to_lowercase()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFBLK {
        return Err(bad("not a block device".into()));
    }
    LinuxThrottleDeviceBuilder::default()
        .major(nix::sys::stat::major(st.st_rdev) as i64)
        .minor(nix::sys::stat::minor(st.st_rdev) as i64)
        .rate(d.rate)
        .build()
        .map_err(spec_error)
}

/// The binds (`-v`) and `Mounts` (`--mount`) of `hc`, parsed and checked (absolute targets,
/// existing bind sources, no target twice).
pub fn mount_specs(hc: &HostConfig) -> Result<Vec<MountSpec>, ApiError> {
    let bad = |m: String| Err(ApiError::bad_request(m));
    let mut mounts = Vec::new();
    for b in hc.binds.iter().flatten() {
        mounts.push(parse_bind(b)?);
    }
    // tmpfs mounts are made with `--tmpfs`'s (see `tmpfs_mounts`): their targets count here
    let mut tmpfs_targets: Vec<&str> = hc.tmpfs.iter().flatten().map(|(t, _)| t.as_str()).collect();
    for m in hc.mounts.iter().flatten() {
        if !m.target.starts_with('/') {
            return bad(format!("invalid mount config: mount path {:?} must be absolute", m.target));
        }
        // each type takes its own options only (dockerd's words)
        let given = [
            ("BindOptions", m.bind_options.is_some(), "bind"),
            ("VolumeOptions", m.volume_options.is_some(), "volume"),
            ("TmpfsOptions", m.tmpfs_options.is_some(), "tmpfs"),
        ];
        if let Some((field, _, _)) = given.iter().find(|(_, set, of)| *set && *of != m.typ) {
            return bad(format!("invalid mount config for type {:?}: field {field} must not be specified", m.typ));
        }
        let (mut no_copy, mut propagation, mut non_recursive) = (false, None, false);
        let source = match m.typ.as_str() {
            "bind" => {
                let o = m.bind_options.clone().unwrap_or_default();
                if o.create_mountpoint {
                    return bad("BindOptions.CreateMountpoint is not supported: the bind source must exist".into());
                }
                propagation = match o.propagation.as_str() {
                    "" => None,
                    p => Some(*PROPAGATIONS.iter().find(|x| **x == p).ok_or_else(|| {
                        ApiError::bad_request(format!("invalid mount config: invalid propagation mode {p:?}"))
                    })?),
                };
                non_recursive = o.non_recursive;
                Source::Host(PathBuf::from(&m.source))
            }
            "volume" => {
                let o = m.volume_options.clone().unwrap_or_default();
                if !o.subpath.is_empty() {
                    return bad("VolumeOptions.Subpath is not supported".into());
                }
                if let Some(d) = &o.driver_config {
                    if !matches!(d.name.as_str(), "" | "local") {
                        return bad(format!("volume driver {:?} is not supported (local)", d.name));
                    }
                    if d.options.as_ref().is_some_and(|o| !o.is_empty()) {
                        return bad(
                            "VolumeOptions.DriverConfig.Options are not supported (local volumes are directories)"
                                .into(),
                        );
                    }
                }
                if !m.source.is_empty() {
                    crate::volumes::check_volume_name(&m.source)
                        .map_err(|e| ApiError::bad_request(format!("invalid mount config for type \"volume\": {e}")))?;
                }
                no_copy = o.no_copy;
                // an empty source: an anonymous volume, made at create
                Source::Volume(m.source.clone())
            }
            "tmpfs" if m.source.is_empty() => {
                if m.tmpfs_options.as_ref().is_some_and(|o| o.size_bytes < 0) {
                    return bad("invalid mount config for type \"tmpfs\": TmpfsOptions.SizeBytes is negative".into());
                }
                tmpfs_targets.push(&m.target);
                continue;
            }
            "tmpfs" => return bad("invalid mount config for type \"tmpfs\": source must be empty".into()),
            t => return bad(format!("mount type {t:?} is not supported (bind, volume, tmpfs)")),
        };
        if let Source::Host(p) = &source {
            if !p.is_absolute() || !p.exists() {
                return bad(format!(
                    "invalid mount config for type \"bind\": bind source path does not exist: {}",
                    p.display()
                ));
            }
            if let Some(p2) = propagation {
                ensure_propagates(p, p2)?;
            }
        }
        mounts.push(MountSpec {
            source,
            target: m.target.clone(),
            read_only: m.read_only,
            no_copy,
            propagation,
            non_recursive,
        });
    }
    let targets: Vec<&str> = mounts.iter().map(|m| m.target.as_str()).chain(tmpfs_targets).collect();
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].contains(t) {
            return bad(format!("Duplicate mount point: {t}"));
        }
    }
    Ok(mounts)
}

/// The tmpfs mounts of `hc`: `--tmpfs PATH[:OPTIONS]` and `Mounts` of type tmpfs (read-only
/// when asked), each with its mount options.
fn tmpfs_mounts(hc: &HostConfig) -> Vec<(&str, String)> {
    let given = hc.tmpfs.iter().flatten().map(|(path, opts)| (path.as_str(), opts.clone()));
    let mounted = hc.mounts.iter().flatten().filter(|m| m.typ == "tmpfs").map(|m| {
        let o = m.tmpfs_options.clone().unwrap_or_default();
        let opts: Vec<String> = [
            m.read_only.then(|| "ro".to_string()),
            (o.size_bytes > 0).then(|| format!("size={}", o.size_bytes)),
            (o.mode != 0).then(|| format!("mode={:o}", o.mode)),
        ]
        .into_iter()
        .flatten()
        .collect();
        (m.target.as_str(), opts.join(","))
    });
    given.chain(mounted).collect()
}

fn check_rest(hc: &HostConfig) -> Result<Vec<MountSpec>, ApiError> {
    let bad = |m: String| Err(ApiError::bad_request(m));
    if hc.cgroup_parent.split('/').any(|c| c == ".." || c == ".") {
        return bad(format!("invalid cgroup parent {:?}: a path without . or ..", hc.cgroup_parent));
    }
    if !(-1000..=1000).contains(&hc.oom_score_adj) {
        return bad(format!("Invalid value {}, range for oom score adj is [-1000, 1000]", hc.oom_score_adj));
    }
    // the namespaces a container may share with the host or, for PID and IPC, with another
    // running container
    if !matches!(hc.uts_mode.as_str(), "" | "host") {
        return bad(format!("invalid UTS mode: {:?} is not supported (\"\" or \"host\")", hc.uts_mode));
    }
    if !(matches!(hc.pid_mode.as_str(), "" | "host") || hc.pid_mode.starts_with("container:")) {
        return bad(format!("invalid PID mode: {:?} (\"\", \"host\" or \"container:<name|id>\")", hc.pid_mode));
    }
    if !(matches!(hc.ipc_mode.as_str(), "" | "host" | "private" | "shareable") || hc.ipc_mode.starts_with("container:"))
    {
        return bad(format!(
            "invalid IPC mode: {:?} (\"\", \"private\", \"shareable\", \"host\" or \"container:<name|id>\")",
            hc.ipc_mode
        ));
    }
    if !matches!(hc.cgroupns_mode.as_str(), "" | "host" | "private") {
        return bad(format!("invalid cgroup namespace mode: {:?} (\"host\" or \"private\")", hc.cgroupns_mode));
    }
    if !matches!(hc.runtime.as_str(), "" | DEFAULT_RUNTIME) {
        return bad(format!("unknown or invalid runtime name: {}", hc.runtime));
    }
    if !matches!(hc.userns_mode.as_str(), "" | "host") {
        return bad(format!(
            "invalid user namespace mode: {:?} (no user namespace remapping is set up; \"host\" or \"\")",
            hc.userns_mode
        ));
    }
    if !hc.cgroup.is_empty() {
        return bad(format!("Cgroup {:?}: sharing another container's cgroup is not supported", hc.cgroup));
    }

    if !hc.storage_opt.is_empty() {
        return bad(format!(
            "StorageOpt (--storage-opt) {:?} is not supported: the writable layer has no size quota here (dockerd's overlay2 needs xfs with 'pquota')",
            hc.storage_opt.keys().next().map_or("", |k| k.as_str())
        ));
    }
    if !matches!(hc.isolation.as_str(), "" | "default") {
        return bad(format!("invalid isolation: {:?}: only \"default\" is supported on linux", hc.isolation));
    }
    for cap in hc.cap_add.iter().flatten().chain(hc.cap_drop.iter().flatten()) {
        if cap.eq_ignore_ascii_case("ALL") {
            continue;
        }
        if !ALL_CAPS.contains(&cap_name(cap).as_str()) {
            return bad(format!("invalid capability: {cap}"));
        }
    }
    for opt in hc.security_opt.iter().flatten() {
        match opt.as_str() {
            "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true" | "no-new-privileges:false" | "no-new-privileges=false" => {}
            "seccomp=unconfined" | "seccomp:unconfined" | "apparmor=unconfined" | "apparmor:unconfined" | "label=disable" | "label:disable" => {}
            // a profile: the Docker CLI sends the file's JSON, as dockerd takes it
            o if custom_seccomp(o).is_some() => {
                if let Some(Err(e)) = custom_seccomp(o) {
                    return bad(format!("invalid seccomp profile: {e}"));
                }
            }
            o if o.starts_with("seccomp") || o.starts_with("apparmor") || o.starts_with("label") => {
                return bad(format!("--security-opt {o:?} is not supported yet (only no-new-privileges, seccomp=unconfined, seccomp=<profile JSON>, apparmor=unconfined, label=disable)"))
            }
            o => return bad(format!("invalid --security-opt: {o:?}")),
        }
    }
    for p in hc.masked_paths.iter().chain(hc.readonly_paths.iter()).flatten() {
        if !p.starts_with('/') {
            return bad(format!("invalid masked or read-only path {p:?}: not absolute"));
        }
    }
    for (path, _) in hc.tmpfs.iter().flatten() {
        if !path.starts_with('/') {
            return bad(format!("invalid mount config: tmpfs destination {path:?} must be absolute"));
        }
    }
    let mounts = mount_specs(hc)?;
    // `--volume-driver` is the driver of the named volumes it makes (binds have none)
    if !matches!(hc.volume_driver.as_str(), "" | "local")
        && mounts.iter().any(|m| matches!(m.source, Source::Volume(_)))
    {
        return bad(format!("volume driver {:?} is not supported (only local)", hc.volume_driver));
    }
    if let Some(p) = hc.resources.pids_limit {
        if p < -1 {
            return bad("invalid pids limit".into());
        }
    }
    for u in hc.ulimits.iter().flatten() {
        if rlimit_type(&u.name).is_none() {
            return bad(format!("invalid ulimit type: {}", u.name));
        }
        if u.soft < 0 || u.hard < 0 {
            return bad(format!("invalid ulimit value for {}: a limit cannot be negative", u.name));
        }
        if u.soft > u.hard {
            return bad(format!("ulimit soft limit must be less than or equal to hard limit: {} > {}", u.soft, u.hard));
        }
    }
    if let Some(lc) = &hc.log_config {
        log_rotation(lc).map_err(ApiError::bad_request)?;
    }
    if hc.shm_size < 0 {
        return bad("SHM size can not be less than 0".into());
    }
    for key in hc.sysctls.iter().flatten().map(|(k, _)| k) {
        let namespaced =
            IPC_SYSCTLS.contains(&key.as_str()) || key.starts_with("fs.mqueue.") || key.starts_with("net.");
        if !namespaced {
            return bad(format!("sysctl '{key}' is not allowed: only namespaced kernel parameters can be set"));
        }
        if key.starts_with("net.") && hc.network_mode == "host" {
            return bad(format!("sysctl '{key}' is not allowed in host network namespace"));
        }
    }
    custom_devices(hc)?;
    device_cgroup_rules(hc)?;
    Ok(mounts)
}

/// `--device`: each mapping's device nodes at their paths in the container (a host directory
/// brings every node under it, as Docker does), with the cgroup rules that let the container
/// use them. A host path that is no device node, nor a directory holding one, is refused.
pub fn custom_devices(hc: &HostConfig) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), ApiError> {
    let (mut nodes, mut rules) = (Vec::new(), Vec::new());
    for d in hc.devices.iter().flatten() {
        let bad = |why: &str| {
            ApiError::bad_request(format!(
                "error gathering device information while adding custom device {:?}: {why}",
                d.path_on_host
            ))
        };
        let permissions = if d.cgroup_permissions.is_empty() { "rwm" } else { d.cgroup_permissions.as_str() };
        if !valid_device_permissions(permissions) {
            return Err(bad(&format!("invalid device permissions {permissions:?} (r, w and m at most once each)")));
        }
        let in_container = if d.path_in_container.is_empty() { &d.path_on_host } else { &d.path_in_container };
        if !in_container.starts_with('/') {
            return Err(bad(&format!("{in_container:?} is not an absolute path in the container")));
        }
        // a symlink such as /dev/disk/by-id/… names the node it points at
        let host = std::fs::canonicalize(&d.path_on_host).map_err(|e| bad(&e.to_string()))?;
        let found = if host.is_dir() {
            host_devices(&host)
                .into_iter()
                .filter_map(|n| {
                    let rel = n.path().strip_prefix(&host).ok()?.to_path_buf();
                    Some(with_device_path(&n, Path::new(in_container).join(rel)))
                })
                .collect()
        } else {
            let node = device_node(&host).ok_or_else(|| bad("not a device node"))?;
            vec![with_device_path(&node, PathBuf::from(in_container))]
        };
        if found.is_empty() {
            return Err(bad("no device node under it"));
        }
        for node in found {
            let rule = LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(node.typ())
                .major(node.major())
                .minor(node.minor())
                .access(permissions)
                .build()
                .map_err(spec_error)?;
            rules.push(rule);
            nodes.push(node);
        }
    }
    Ok((nodes, rules))
}

/// `r`, `w` and `m`, each at most once: what a device cgroup rule grants.
fn valid_device_permissions(p: &str) -> bool {
    !p.is_empty() && p.len() <= 3 && p.chars().all(|c| "rwm".contains(c)) && {
        let mut seen: Vec<char> = p.chars().collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len() == p.len()
    }
}

/// `--device-cgroup-rule`: Docker's `a|b|c <major|*>:<minor|*> <rwm>` rules, allowed in order.
pub fn device_cgroup_rules(hc: &HostConfig) -> Result<Vec<LinuxDeviceCgroup>, ApiError> {
    hc.device_cgroup_rules
        .iter()
        .flatten()
        .map(|text| {
            let bad = || ApiError::bad_request(format!("invalid device cgroup rule format: '{text}'"));
            let fields: Vec<&str> = text.split(' ').collect();
            let [typ, numbers, access] = fields[..] else { return Err(bad()) };
            let typ = match typ {
                "a" => LinuxDeviceType::A,
                "b" => LinuxDeviceType::B,
                "c" => LinuxDeviceType::C,
                _ => return Err(bad()),
            };
            let number = |n: &str| -> Result<Option<i64>, ApiError> {
                match n {
                    "*" => Ok(None),
                    n if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                        n.parse().map(Some).map_err(|_| bad())
                    }
                    _ => Err(bad()),
                }
            };
            let (major, minor) = numbers.split_once(':').ok_or_else(bad)?;
            let (major, minor) = (number(major)?, number(minor)?);
            if !valid_device_permissions(access) {
                return Err(bad());
            }
            let mut rule = LinuxDeviceCgroupBuilder::default().allow(true).typ(typ).access(access);
            if let Some(major) = major {
                rule = rule.major(major);
            }
            if let Some(minor) = minor {
                rule = rule.minor(minor);
            }
            rule.build().map_err(spec_error)
        })
        .collect()
}

/// The device node at `path` on the host, if it is one.
fn device_node(path: &Path) -> Option<LinuxDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(path).ok()?;
    let typ = if m.file_type().is_char_device() {
        LinuxDeviceType::C
    } else if m.file_type().is_block_device() {
        LinuxDeviceType::B
    } else {
        return None;
    };
    LinuxDeviceBuilder::default()
        .path(path)
        .typ(typ)
        .major(nix::sys::stat::major(m.rdev()) as i64)
        .minor(nix::sys::stat::minor(m.rdev()) as i64)
        .file_mode(m.mode() & 0o7777)
        .uid(m.uid())
        .gid(m.gid())
        .build()
        .ok()
}

/// `node` at another path.
fn with_device_path(node: &LinuxDevice, path: PathBuf) -> LinuxDevice {
    let mut node = node.clone();
    node.set_path(path);
    node
}

/// The json-file log's rotation asked for by `--log-driver` and `--log-opt` (max-size in bytes
/// and max-file, 0 for the defaults); Docker's words for a driver or option this engine does not
/// have.
pub fn log_rotation(lc: &engine_docker_api::LogConfig) -> Result<(u64, u32), String> {
    if lc.typ == "none" {
        if !lc.config.is_empty() {
            return Err("logger: the none log driver takes no options".into());
        }
        // no log to read: the output is kept only as far as attaching needs it (one small
        // file, overwritten)
        return Ok((NONE_LOG_SIZE, 1));
    }
    if !matches!(lc.typ.as_str(), "" | "json-file") {
        return Err(format!("logger: no log driver named '{}' is registered", lc.typ));
    }
    let mut rotation = (0u64, 0u32);
    for (k, v) in &lc.config {
        match k.as_str() {
            "max-size" => {
                let size = engine_util::size::parse_limit(v).map_err(|e| e.to_string())?;
                rotation.0 = if size < 0 { 0 } else { size as u64 };
            }
            "max-file" => {
                let n: u32 = v.parse().map_err(|_| format!("invalid value for max-file: {v}"))?;
                if n < 1 {
                    return Err("max-file cannot be less than 1".into());
                }
                rotation.1 = n;
            }
            other => return Err(format!("unknown log opt '{other}' for json-file log driver")),
        }
    }
    // as dockerd: max-file without max-size is accepted (one file, never rotated)
    Ok(rotation)
}

/// Kernel parameters of the IPC namespace a container may set (as Docker's list).
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// The rlimit `--ulimit` names (`nofile` is `RLIMIT_NOFILE`).
fn rlimit_type(name: &str) -> Option<PosixRlimitType> {
    const DOCKERS: &[&str] = &[
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    ];
    DOCKERS.contains(&name).then(|| format!("RLIMIT_{}", name.to_ascii_uppercase()).parse().ok()).flatten()
}

/// `host:container[:ro|rw]` or `volume:container[:ro]`.
fn parse_bind(b: &str) -> Result<MountSpec, ApiError> {
    let bad = || ApiError::bad_request(format!("invalid volume specification: '{b}'"));
    let parts: Vec<&str> = b.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [s, d] => (*s, *d, ""),
        [s, d, m] => (*s, *d, *m),
        _ => return Err(bad()),
    };
    let mut read_only = false;
    let mut no_copy = false;
    let mut propagation = None;
    for opt in mode.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => read_only = true,
            "nocopy" => no_copy = true,
            "rw" | "z" | "Z" => {}
            _ => match PROPAGATIONS.iter().find(|p| **p == opt) {
                Some(p) => propagation = Some(*p),
                None => return Err(bad()),
            },
        }
    }
    if !dst.starts_with('/') || dst == "/" {
        return Err(ApiError::bad_request(format!(
            "invalid volume specification: '{b}': invalid mount config: mount path must be absolute"
        )));
    }
    let source = if src.starts_with('/') {
        if !Path::new(src).exists() {
            return Err(ApiError::bad_request(format!(
                "invalid mount config for type \"bind\": bind source path does not exist: {src}"
            )));
        }
        if let Some(p) = propagation {
            ensure_propagates(Path::new(src), p)?;
        }
        Source::Host(PathBuf::from(src))
    } else {
        match crate::volumes::check_volume_name(src) {
            Ok(()) => {}
            Err(e @ crate::volumes::VolumeError::InvalidName(_)) => {
                return Err(ApiError::bad_request(format!(
                    "{e}. If you intended to pass a host directory, use absolute path"
                )))
            }
            Err(e) => return Err(ApiError::bad_request(e.to_string())),
        }
        Source::Volume(src.to_string())
    };
    Ok(MountSpec { source, target: dst.to_string(), read_only, no_copy, propagation, non_recursive: false })
}

/// The propagations a bind may ask for.
const PROPAGATIONS: [&str; 6] = ["rprivate", "private", "rshared", "shared", "rslave", "slave"];

/// A shared bind needs its source on a shared mount, a slave one on a shared or slave mount
/// (else nothing would propagate), as Docker checks.
fn ensure_propagates(src: &Path, propagation: &str) -> Result<(), ApiError> {
    let shared = propagation.ends_with("shared");
    if !shared && !propagation.ends_with("slave") {
        return Ok(());
    }
    let real = std::fs::canonicalize(src).unwrap_or_else(|_| src.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // the mount the path is on: the longest mount point that contains it
    let Some((point, optional)) = info
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let end = f.iter().position(|x| *x == "-")?;
            Some((PathBuf::from(f.get(4)?), f.get(6..end)?.join(" ")))
        })
        .filter(|(p, _)| real.starts_with(p))
        .max_by_key(|(p, _)| p.as_os_str().len())
    else {
        return Ok(());
    };
    let ok = optional.contains("shared:") || (!shared && optional.contains("master:"));
    if ok {
        return Ok(());
    }
    let kind = if shared { "a shared" } else { "a shared or slave" };
    Err(ApiError::bad_request(format!(
        "path {} is mounted on {} but it is not {kind} mount",
        src.display(),
        point.display()
    )))
}

const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capabilities this daemon can hand out: its own bounding set (ALL_CAPS is in
/// capability-number order). On hosts where even root lacks some (CAP_SYS_RESOURCE here),
/// `--privileged` gets what there is instead of failing in capset.
fn host_caps() -> Vec<String> {
    let bnd = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string())))
        .and_then(|h| u64::from_str_radix(&h, 16).ok())
        .unwrap_or(u64::MAX);
    ALL_CAPS.iter().enumerate().filter(|(i, _)| bnd & (1 << i) != 0).map(|(_, c)| c.to_string()).collect()
}

fn cap_name(c: &str) -> String {
    let up = c.to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

/// What `apply` needs besides the HostConfig.
pub struct Context<'a> {
    pub id: &'a str,
    pub cgroup_parent: &'a str,
    pub container_dir: &'a Path,
    pub init_bin: &'a Path,
    pub mounts: &'a [MountSpec],
    /// The network namespace to join (engined makes it at start); None: the host's.
    pub netns: Option<&'a Path>,
    /// The PID and IPC namespaces of the running container `pid_mode` and `ipc_mode` name
    /// (`container:<x>`), as `/proc/<pid>/ns/...` paths.
    pub pid_ns: Option<&'a Path>,
    pub ipc_ns: Option<&'a Path>,
    /// Resolves a named volume to its directory, creating it if needed.
    pub volume_dir: &'a dyn Fn(&str) -> Result<PathBuf, ApiError>,
}

/// Applies the checked HostConfig to `spec`, as typed `oci_spec` values (containerd's `SpecOpts`
/// are the model): one step per concern, in order.
pub fn apply(mut spec: Spec, hc: &HostConfig, cx: &Context<'_>) -> Result<Spec, ApiError> {
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    linux.set_cgroups_path(Some(PathBuf::from(cgroups_path(cx.cgroup_parent, cx.id))));
    with_resources(&mut spec, hc)?;
    with_limits(&mut spec, hc)?;
    with_groups(&mut spec, hc)?;
    let caps = with_capabilities(&mut spec, hc)?;
    with_privileges(&mut spec, hc)?;
    with_devices(&mut spec, hc)?;
    with_seccomp(&mut spec, hc, &caps)?;
    with_network(&mut spec, hc, cx.netns);
    with_host_namespaces(&mut spec, hc, cx);
    with_mounts(&mut spec, hc, cx)?;
    with_annotations(&mut spec, hc);
    Ok(spec)
}

/// `--annotation`: the user's annotations in the spec the runtime (and its hooks) read; one
/// the engine set itself keeps the engine's value.
fn with_annotations(spec: &mut Spec, hc: &HostConfig) {
    if hc.annotations.is_empty() {
        return;
    }
    let mut annotations = spec.annotations().clone().unwrap_or_default();
    for (k, v) in &hc.annotations {
        annotations.entry(k.clone()).or_insert_with(|| v.clone());
    }
    spec.set_annotations(Some(annotations));
}

fn spec_error(e: oci_spec::OciSpecError) -> ApiError {
    ApiError::internal(format!("building the spec: {e}"))
}

/// `--memory`, `--cpus` or `--cpu-quota/-period/-shares`, `--pids-limit`.
fn with_resources(spec: &mut Spec, hc: &HostConfig) -> Result<(), ApiError> {
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    let res = linux.resources_mut().get_or_insert_with(Default::default);
    set_limits(res, hc)
}

/// The limits of `hc` as the resources a running container's cgroup takes (`update`): memory,
/// CPU and pids only (no device rules).
pub fn limits(hc: &HostConfig) -> Result<LinuxResources, ApiError> {
    let mut res = LinuxResources::default();
    res.set_devices(None);
    set_limits(&mut res, hc)?;
    Ok(res)
}

fn set_limits(res: &mut LinuxResources, hc: &HostConfig) -> Result<(), ApiError> {
    let r = &hc.resources;
    let swappiness = r.memory_swappiness.filter(|s| *s >= 0);
    if r.memory > 0
        || r.memory_reservation > 0
        || r.memory_swap != 0
        || swappiness.is_some()
        || r.oom_kill_disable == Some(true)
    {
        let mut memory = LinuxMemoryBuilder::default();
        if r.memory > 0 {
            memory = memory.limit(r.memory);
        }
        if r.memory_reservation > 0 {
            memory = memory.reservation(r.memory_reservation);
        }
        // memory+swap, where the host accounts swap (the implicit twice-the-memory otherwise
        // goes unapplied, as dockerd's)
        if r.memory_swap != 0 && Host::get().swap_limit {
            memory = memory.swap(r.memory_swap);
        }
        if let Some(s) = swappiness {
            memory = memory.swappiness(s as u64);
        }
        if r.oom_kill_disable == Some(true) {
            memory = memory.disable_oom_killer(true);
        }
        res.set_memory(Some(memory.build().map_err(spec_error)?));
    }
    if r.nano_cpus > 0
        || r.cpu_quota > 0
        || r.cpu_period > 0
        || r.cpu_shares > 0
        || !r.cpuset_cpus.is_empty()
        || !r.cpuset_mems.is_empty()
    {
        let mut cpu = LinuxCpuBuilder::default();
        if r.nano_cpus > 0 {
            // --cpus: a quota of that many periods of 100 ms
            let period = 100_000i64;
            cpu = cpu.period(period as u64).quota(r.nano_cpus * period / 1_000_000_000);
        } else {
            if r.cpu_quota > 0 {
                cpu = cpu.quota(r.cpu_quota);
            }
            if r.cpu_period > 0 {
                cpu = cpu.period(r.cpu_period as u64);
            }
        }
        // shares whichever way the quota is given
        if r.cpu_shares > 0 {
            cpu = cpu.shares(r.cpu_shares as u64);
        }
        if !r.cpuset_cpus.is_empty() {
            cpu = cpu.cpus(r.cpuset_cpus.clone());
        }
        if !r.cpuset_mems.is_empty() {
            cpu = cpu.mems(r.cpuset_mems.clone());
        }
        res.set_cpu(Some(cpu.build().map_err(spec_error)?));
    }
    if let Some(p) = hc.resources.pids_limit.filter(|p| *p != 0) {
        res.set_pids(Some(LinuxPidsBuilder::default().limit(p).build().map_err(spec_error)?));
    }
    let [read_bps, write_bps, read_iops, write_iops] = throttles(r).map(|devices| {
        let devices = devices.iter().map(throttle_device).collect::<Result<Vec<_>, _>>();
        devices.map(|d| (!d.is_empty()).then_some(d))
    });
    let (read_bps, write_bps, read_iops, write_iops) = (read_bps?, write_bps?, read_iops?, write_iops?);
    if read_bps.is_some() || write_bps.is_some() || read_iops.is_some() || write_iops.is_some() {
        let mut block_io = res.block_io().clone().unwrap_or_default();
        block_io.set_throttle_read_bps_device(read_bps);
        block_io.set_throttle_write_bps_device(write_bps);
        block_io.set_throttle_read_iops_device(read_iops);
        block_io.set_throttle_write_iops_device(write_iops);
        res.set_block_io(Some(block_io));
    }
    Ok(())
}

/// `--group-add`: more supplementary groups, names resolved in the image's /etc/group.
fn with_groups(spec: &mut Spec, hc: &HostConfig) -> Result<(), ApiError> {
    let Some(add) = hc.group_add.as_ref().filter(|g| !g.is_empty()) else { return Ok(()) };
    let rootfs = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_default();
    let process = spec.process_mut().as_mut().ok_or_else(|| ApiError::internal("spec without process"))?;
    let mut gids = process.user().additional_gids().clone().unwrap_or_default();
    for g in add {
        let gid = engine_image::spec::group_id(&rootfs, g).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if !gids.contains(&gid) {
            gids.push(gid);
        }
    }
    process.user_mut().set_additional_gids(Some(gids));
    Ok(())
}

/// `--ulimit` (replacing the image's limit of the same kind), `--oom-score-adj` and `--sysctl`.
fn with_limits(spec: &mut Spec, hc: &HostConfig) -> Result<(), ApiError> {
    if let Some(process) = spec.process_mut().as_mut() {
        if hc.oom_score_adj != 0 {
            // checked to be within -1000..=1000
            process.set_oom_score_adj(Some(hc.oom_score_adj as i32));
        }
        let mut rlimits = process.rlimits().clone().unwrap_or_default();
        for u in hc.ulimits.iter().flatten() {
            let Some(typ) = rlimit_type(&u.name) else { continue };
            rlimits.retain(|r| r.typ() != typ);
            let r = PosixRlimitBuilder::default().typ(typ).soft(u.soft as u64).hard(u.hard as u64);
            rlimits.push(r.build().map_err(spec_error)?);
        }
        process.set_rlimits(Some(rlimits));
    }
    if let Some(sysctls) = hc.sysctls.as_ref().filter(|s| !s.is_empty()) {
        let linux = spec.linux_mut().get_or_insert_with(Default::default);
        let mut all = linux.sysctl().clone().unwrap_or_default();
        all.extend(sysctls.iter().map(|(k, v)| (k.clone(), v.clone())));
        linux.set_sysctl(Some(all));
    }
    Ok(())
}

/// The process's capabilities (bounding, effective, permitted) after `--privileged`, `--cap-add`
/// and `--cap-drop`, as Docker computes them; returns their names.
fn with_capabilities(spec: &mut Spec, hc: &HostConfig) -> Result<Vec<String>, ApiError> {
    let process = spec.process_mut().as_mut().ok_or_else(|| ApiError::internal("spec without process"))?;
    let mut set: Vec<String> = process
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().as_ref())
        .map(|b| b.iter().map(|c| format!("CAP_{c}")).collect())
        .unwrap_or_default();
    set.sort();
    if hc.privileged || hc.cap_add.iter().flatten().any(|c| c.eq_ignore_ascii_case("ALL")) {
        set = host_caps();
    }
    for c in hc.cap_add.iter().flatten().filter(|c| !c.eq_ignore_ascii_case("ALL")) {
        let c = cap_name(c);
        if !set.contains(&c) {
            set.push(c);
        }
    }
    if hc.cap_drop.iter().flatten().any(|c| c.eq_ignore_ascii_case("ALL")) {
        set.retain(|c| hc.cap_add.iter().flatten().any(|a| cap_name(a) == *c));
    }
    for c in hc.cap_drop.iter().flatten() {
        let c = cap_name(c);
        set.retain(|x| *x != c);
    }
    let typed: Capabilities = set.iter().filter_map(|c| capability(c)).collect();
    // every set named: the builder's defaults are runc's default capabilities, not empty sets
    let caps = LinuxCapabilitiesBuilder::default()
        .bounding(typed.clone())
        .effective(typed.clone())
        .permitted(typed)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .map_err(spec_error)?;
    process.set_capabilities(Some(caps));
    Ok(set)
}

/// The typed capability named `CAP_X` (`None` for one this build of oci-spec does not know).
fn capability(name: &str) -> Option<Capability> {
    name.strip_prefix("CAP_").and_then(|n| n.parse().ok())
}

/// `--privileged` (no masked or read-only paths, every device, writable /sys),
/// `--security-opt no-new-privileges`, `--read-only`.
fn with_privileges(spec: &mut Spec, hc: &HostConfig) -> Result<(), ApiError> {
    if hc.privileged {
        let linux = spec.linux_mut().get_or_insert_with(Default::default);
        linux.set_masked_paths(Some(Vec::new()));
        linux.set_readonly_paths(Some(Vec::new()));
        let all = LinuxDeviceCgroupBuilder::default().allow(true).access("rwm").build().map_err(spec_error)?;
        linux.resources_mut().get_or_insert_with(Default::default).set_devices(Some(vec![all]));
        // every device of the host, as dockerd gives a privileged container (loop devices, FUSE,
        // docker-in-docker need them)
        let mut devices = linux.devices().clone().unwrap_or_default();
        for d in host_devices(Path::new("/dev")) {
            if !devices.iter().any(|o| o.path() == d.path()) {
                devices.push(d);
            }
        }
        linux.set_devices(Some(devices));
        for m in spec.mounts_mut().iter_mut().flatten() {
            let dest = m.destination().clone();
            if dest == Path::new("/sys") || dest == Path::new("/sys/fs/cgroup") {
                if let Some(opts) = m.options_mut() {
                    opts.retain(|o| o != "ro");
                }
            }
        }
    }
    // the caller's own lists (a privileged container has none unless it names some)
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    if let Some(paths) = &hc.masked_paths {
        linux.set_masked_paths(Some(paths.clone()));
    }
    if let Some(paths) = &hc.readonly_paths {
        linux.set_readonly_paths(Some(paths.clone()));
    }
    for opt in hc.security_opt.iter().flatten() {
        let no_new_privileges = match opt.as_str() {
            "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true" => true,
            "no-new-privileges:false" | "no-new-privileges=false" => false,
            _ => continue,
        };
        if let Some(p) = spec.process_mut() {
            p.set_no_new_privileges(Some(no_new_privileges));
        }
    }
    if hc.readonly_rootfs {
        if let Some(root) = spec.root_mut() {
            root.set_readonly(Some(true));
        }
    }
    Ok(())
}

/// `--device` and `--device-cgroup-rule`: the nodes made in the container's /dev (replacing
/// one of the same path) and their rules after the image's (deny all, then the defaults).
fn with_devices(spec: &mut Spec, hc: &HostConfig) -> Result<(), ApiError> {
    let (nodes, mut rules) = custom_devices(hc)?;
    rules.extend(device_cgroup_rules(hc)?);
    if nodes.is_empty() && rules.is_empty() {
        return Ok(());
    }
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    let mut devices = linux.devices().clone().unwrap_or_default();
    devices.retain(|d| !nodes.iter().any(|n| n.path() == d.path()));
    devices.extend(nodes);
    linux.set_devices(Some(devices));
    let res = linux.resources_mut().get_or_insert_with(Default::default);
    let mut all = res.devices().clone().unwrap_or_default();
    all.extend(rules);
    res.set_devices(Some(all));
    Ok(())
}

/// The character and block devices under `dir` (as runc's and containerd's host device lists:
/// not the container's own pts, shm, mqueue or fd, nor the console or ptmx).
pub fn host_devices(dir: &Path) -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for ent in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = ent.file_name();
            let name = name.to_string_lossy();
            let Ok(ft) = ent.file_type() else { continue };
            if ft.is_dir() {
                if !matches!(name.as_ref(), "pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev") {
                    stack.push(ent.path());
                }
                continue;
            }
            if ft.is_symlink() || matches!(name.as_ref(), "console" | "ptmx") {
                continue;
            }
            out.extend(device_node(&ent.path()));
        }
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out
}

/// `seccomp=<profile JSON>` (or `seccomp:`): the profile, in the OCI and Docker format
/// (`defaultAction`, `architectures`, `syscalls`); `None` for any other option.
fn custom_seccomp(opt: &str) -> Option<Result<LinuxSeccomp, serde_json::Error>> {
    let json = opt.strip_prefix("seccomp=").or_else(|| opt.strip_prefix("seccomp:"))?;
    json.trim_start().starts_with('{').then(|| serde_json::from_str(json))
}

/// The default seccomp filter, or the profile `--security-opt seccomp=<JSON>` gives; none with
/// `--privileged` or `--security-opt seccomp=unconfined`.
fn with_seccomp(spec: &mut Spec, hc: &HostConfig, caps: &[String]) -> Result<(), ApiError> {
    let unconfined = hc.security_opt.iter().flatten().any(|o| o == "seccomp=unconfined" || o == "seccomp:unconfined");
    if !hc.privileged && !unconfined {
        let custom = hc.security_opt.iter().flatten().find_map(|o| custom_seccomp(o));
        let filter = match custom {
            Some(profile) => profile.map_err(|e| ApiError::bad_request(format!("invalid seccomp profile: {e}")))?,
            None => default_seccomp(caps)?,
        };
        spec.linux_mut().get_or_insert_with(Default::default).set_seccomp(Some(filter));
    }
    Ok(())
}

/// Joins the network namespace engined made (`netns`), or stays in the host's (`None`); with
/// `--network host`, the host's UTS namespace and hostname too.
fn with_network(spec: &mut Spec, hc: &HostConfig, netns: Option<&Path>) {
    let host_network = hc.network_mode == "host";
    if host_network {
        spec.set_hostname(None);
        spec.set_domainname(None);
    }
    let Some(namespaces) = spec.linux_mut().as_mut().and_then(|l| l.namespaces_mut().as_mut()) else { return };
    match netns {
        Some(path) => {
            for n in namespaces.iter_mut().filter(|n| n.typ() == LinuxNamespaceType::Network) {
                n.set_path(Some(path.to_path_buf()));
            }
        }
        // the host's network (--network host, or container:<one on the host's network>)
        None => namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network),
    }
    if host_network {
        namespaces.retain(|n| n.typ() != LinuxNamespaceType::Uts);
    }
}

/// `--pid host`, `--uts host` and `--ipc host`: the host's namespace instead of its own (with
/// the host's UTS, the container does not set the host name); `--pid container:<x>` and `--ipc
/// container:<x>`: that container's.
fn with_host_namespaces(spec: &mut Spec, hc: &HostConfig, cx: &Context<'_>) {
    let uts_host = hc.uts_mode == "host";
    if uts_host {
        spec.set_hostname(None);
        spec.set_domainname(None);
    }
    let Some(namespaces) = spec.linux_mut().as_mut().and_then(|l| l.namespaces_mut().as_mut()) else { return };
    for (typ, mode, joined) in
        [(LinuxNamespaceType::Pid, &hc.pid_mode, cx.pid_ns), (LinuxNamespaceType::Ipc, &hc.ipc_mode, cx.ipc_ns)]
    {
        if mode == "host" {
            namespaces.retain(|n| n.typ() != typ);
        } else if let Some(path) = joined {
            for n in namespaces.iter_mut().filter(|n| n.typ() == typ) {
                n.set_path(Some(path.to_path_buf()));
            }
        }
    }
    if uts_host {
        namespaces.retain(|n| n.typ() != LinuxNamespaceType::Uts);
    }
    // `--cgroupns`: a namespace of its own (its cgroup is its root) or the host's
    namespaces.retain(|n| n.typ() != LinuxNamespaceType::Cgroup);
    let mode = if hc.cgroupns_mode.is_empty() { Host::get().default_cgroupns } else { hc.cgroupns_mode.as_str() };
    if mode == "private" {
        let mut ns = LinuxNamespace::default();
        ns.set_typ(LinuxNamespaceType::Cgroup);
        namespaces.push(ns);
    }
}

fn bind_mount(destination: impl Into<PathBuf>, source: impl Into<PathBuf>, opts: &[&str]) -> Result<Mount, ApiError> {
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(opts.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_error)
}

/// The /etc files, `--tmpfs`, binds and volumes, and `--init` (bind-mounted, put before the
/// process's arguments).
fn with_mounts(spec: &mut Spec, hc: &HostConfig, cx: &Context<'_>) -> Result<(), ApiError> {
    if hc.shm_size > 0 {
        // /dev/shm of the size asked for (Docker's unit: bytes; tmpfs takes k)
        for m in spec.mounts_mut().iter_mut().flatten().filter(|m| m.destination() == Path::new("/dev/shm")) {
            let mut opts: Vec<String> =
                m.options().clone().unwrap_or_default().into_iter().filter(|o| !o.starts_with("size=")).collect();
            opts.push(format!("size={}k", (hc.shm_size + 1023) / 1024));
            m.set_options(Some(opts));
        }
    }
    let mut added = Vec::new();
    for (file, dest) in [("hostname", "/etc/hostname"), ("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf")] {
        let src = cx.container_dir.join(file);
        if src.exists() {
            let opts: &[&str] = if hc.readonly_rootfs { &["rbind", "rprivate", "ro"] } else { &["rbind", "rprivate"] };
            added.push(bind_mount(dest, src, opts)?);
        }
    }
    for (path, opts) in tmpfs_mounts(hc) {
        let mut o: Vec<String> = vec!["nosuid".into(), "nodev".into(), "noexec".into()];
        o.extend(opts.split(',').filter(|s| !s.is_empty()).map(str::to_string));
        let m = MountBuilder::default().destination(path).typ("tmpfs").source("tmpfs").options(o);
        added.push(m.build().map_err(spec_error)?);
    }
    for m in cx.mounts {
        let source = match &m.source {
            Source::Host(p) => p.clone(),
            Source::Volume(name) => (cx.volume_dir)(name)?,
        };
        let mut opts = vec![if m.non_recursive { "bind" } else { "rbind" }, m.propagation.unwrap_or("rprivate")];
        if m.read_only {
            opts.push("ro");
        }
        added.push(bind_mount(&m.target, source, &opts)?);
    }
    // a bind that propagates needs the root's mounts to (Docker's rule): shared before slave
    let wanted = |kind: &str| cx.mounts.iter().any(|m| m.propagation.is_some_and(|p| p.ends_with(kind)));
    let root = if wanted("shared") { Some("rshared") } else { wanted("slave").then_some("rslave") };
    if let Some(root) = root {
        spec.linux_mut().get_or_insert_with(Default::default).set_rootfs_propagation(Some(root.to_string()));
    }
    if hc.init == Some(true) {
        added.push(bind_mount(INIT_PATH, cx.init_bin, &["rbind", "ro", "rprivate"])?);
        let process = spec.process_mut().as_mut().ok_or_else(|| ApiError::internal("spec without process"))?;
        let mut with_init = vec![INIT_PATH.to_string(), "--".to_string()];
        with_init.extend(process.args().clone().unwrap_or_default());
        process.set_args(Some(with_init));
    }
    spec.mounts_mut().get_or_insert_with(Vec::new).extend(added);
    Ok(())
}

/// The default seccomp filter, with the effect of Docker's default profile on what matters:
/// the syscalls it leaves out unless a capability is granted fail with EPERM, namespace
/// creation through clone flags is refused, and clone3 answers ENOSYS (so libcs fall back to
/// clone, whose flags can be checked). Everything else is allowed. `--privileged` and
/// `--security-opt seccomp=unconfined` run without it.
pub fn default_seccomp(caps: &[String]) -> Result<LinuxSeccomp, ApiError> {
    let has = |c: &str| caps.iter().any(|x| x == c);
    let mut denied: Vec<&str> = vec![
        "add_key",
        "bpf",
        "create_module",
        "get_kernel_syms",
        "kcmp",
        "kexec_file_load",
        "kexec_load",
        "keyctl",
        "lookup_dcookie",
        "nfsservctl",
        "perf_event_open",
        "query_module",
        "request_key",
        "swapon",
        "swapoff",
        "sysfs",
        "_sysctl",
        "uselib",
        "userfaultfd",
        "ustat",
        "vm86",
        "vm86old",
    ];
    let by_cap: &[(&str, &[&str])] = &[
        (
            "CAP_SYS_ADMIN",
            &[
                "mount",
                "umount",
                "umount2",
                "unshare",
                "setns",
                "pivot_root",
                "quotactl",
                "fanotify_init",
                "name_to_handle_at",
                "open_tree",
                "move_mount",
                "fsopen",
                "fsconfig",
                "fsmount",
                "fspick",
                "mount_setattr",
            ],
        ),
        ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
        ("CAP_SYS_PTRACE", &["ptrace", "process_vm_readv", "process_vm_writev"]),
        ("CAP_SYS_MODULE", &["init_module", "finit_module", "delete_module"]),
        (
            "CAP_SYS_TIME",
            &[
                "settimeofday",
                "stime",
                "clock_settime",
                "clock_settime64",
                "adjtimex",
                "clock_adjtime",
                "clock_adjtime64",
            ],
        ),
        ("CAP_SYS_BOOT", &["reboot"]),
        ("CAP_SYS_PACCT", &["acct"]),
        ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
        ("CAP_SYS_NICE", &["get_mempolicy", "set_mempolicy", "mbind", "move_pages"]),
        ("CAP_SYSLOG", &["syslog"]),
    ];
    for (cap, calls) in by_cap {
        if !has(cap) {
            denied.extend_from_slice(calls);
        }
    }
    let errno = |names: Vec<String>, errno: i32| {
        LinuxSyscallBuilder::default().names(names).action(LinuxSeccompAction::ScmpActErrno).errno_ret(errno as u32)
    };
    let mut rules = vec![
        errno(denied.iter().map(|s| s.to_string()).collect(), libc::EPERM).build().map_err(spec_error)?,
        errno(vec!["clone3".into()], libc::ENOSYS).build().map_err(spec_error)?,
    ];
    if !has("CAP_SYS_ADMIN") {
        // clone with any namespace flag: one rule per flag (libseccomp compares masked equality)
        for flag in [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWCGROUP,
        ] {
            let arg = LinuxSeccompArgBuilder::default()
                .index(0usize)
                .value(flag as u64)
                .value_two(flag as u64)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build()
                .map_err(spec_error)?;
            rules.push(errno(vec!["clone".into()], libc::EPERM).args(vec![arg]).build().map_err(spec_error)?);
        }
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32])
        .syscalls(rules)
        .build()
        .map_err(spec_error)
}

/// Writes the container's /etc/hostname, /etc/hosts and /etc/resolv.conf (bind-mounted by
/// `apply`): the host's own with `--network host`; else its name, `--add-host` entries and
/// `--dns*` settings (the hosts file is written again at each start, with its addresses).
pub fn write_etc_files(dir: &Path, hostname: &str, hc: &HostConfig, dns: &Resolvers) -> std::io::Result<()> {
    if hc.network_mode == "host" {
        for (f, src) in [("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf"), ("hostname", "/etc/hostname")] {
            if let Ok(b) = std::fs::read(src) {
                std::fs::write(dir.join(f), b)?;
            }
        }
        return Ok(());
    }
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
    engine_network::etc::write_in_place(
        &dir.join("hosts"),
        &(engine_network::etc::hosts(hostname, &[]) + &extra_hosts(hc, None)),
    )?;
    std::fs::write(dir.join("resolv.conf"), resolv_conf(hc, dns))
}

/// `--add-host name:ip` lines; `host-gateway` is `gateway` (the default bridge's address).
pub fn extra_hosts(hc: &HostConfig, gateway: Option<std::net::Ipv4Addr>) -> String {
    hc.extra_hosts
        .iter()
        .flatten()
        .filter_map(|h| h.split_once(':'))
        .filter_map(|(name, ip)| match ip {
            "host-gateway" => gateway.map(|g| format!("{g}\t{name}\n")),
            ip => Some(format!("{ip}\t{name}\n")),
        })
        .collect()
}

/// Where a container's names are resolved, beside its `--dns*` settings.
pub struct Resolvers<'a> {
    /// The daemon's `--dns`, used where the container gives none.
    pub daemon_dns: &'a [String],
    /// On a user network: the embedded DNS server answers at 127.0.0.11 (and asks the
    /// resolvers the file would have named).
    pub embedded: bool,
}

/// The container's resolv.conf, as dockerd writes it: the host's (without loopback
/// nameservers), with `--dns` (or the daemon's `--dns`), `--dns-search` and `--dns-option` in
/// place of its lines; on a user network the nameserver is the embedded server and `ndots:0`
/// is added unless an ndots option is given.
pub fn resolv_conf(hc: &HostConfig, r: &Resolvers) -> String {
    let host = engine_network::etc::host_resolv_conf();
    let container_dns = hc.dns.clone().unwrap_or_default();
    let dns = if container_dns.is_empty() { r.daemon_dns.to_vec() } else { container_dns };
    let search = hc.dns_search.clone().unwrap_or_default();
    let mut options = hc.dns_options.clone().unwrap_or_default();
    if r.embedded && !options.iter().any(|o| o.starts_with("ndots:")) {
        options.push("ndots:0".into());
    }
    let base = engine_network::etc::resolv_conf(&host);
    if dns.is_empty() && search.is_empty() && options.is_empty() {
        return base;
    }
    let keep = |prefix: &str| {
        base.lines().filter(move |l| l.starts_with(prefix)).map(|l| format!("{l}\n")).collect::<String>()
    };
    let mut s = String::new();
    // `--dns-search .`: no search domains
    s += &match search.as_slice() {
        [] => keep("search"),
        [dot] if dot == "." => String::new(),
        _ => format!("search {}\n", search.join(" ")),
    };
    s += &if r.embedded {
        format!("nameserver {}\n", engine_network::dns::ADDRESS)
    } else if dns.is_empty() {
        keep("nameserver")
    } else {
        dns.iter().map(|d| format!("nameserver {d}\n")).collect()
    };
    s += &if options.is_empty() { keep("options") } else { format!("options {}\n", options.join(" ")) };
    s
}

/// Labels as the container record keeps them.
pub type Labels = BTreeMap<String, String>;

/// A container's cgroup, under the daemon's cgroup parent.
/// The cgroup parent of a container: its own (`CgroupParent`, made absolute), else the daemon's.
pub fn cgroup_parent(hc: &HostConfig, daemons: &str) -> String {
    match hc.cgroup_parent.trim_matches('/') {
        "" => daemons.to_string(),
        own => format!("/{own}"),
    }
}

pub fn cgroups_path(cgroup_parent: &str, id: &str) -> String {
    format!("{}/{}", cgroup_parent.trim_end_matches('/'), id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_docker_api::Resources;

    #[test]
    fn checks_binds_and_policies() {
        assert_eq!(
            parse_bind("/tmp:/data:ro").unwrap(),
            MountSpec {
                source: Source::Host("/tmp".into()),
                target: "/data".into(),
                read_only: true,
                no_copy: false,
                propagation: None,
                non_recursive: false,
            }
        );
        assert_eq!(parse_bind("vol1:/data").unwrap().source, Source::Volume("vol1".into()));
        for bad in ["/tmp", "/tmp:data", "/nonexistent-engine:/x", "a b:/x", "/tmp:/x:bogus", "/tmp:/"] {
            assert!(parse_bind(bad).is_err(), "{bad}");
        }
        let mut hc = HostConfig::default();
        hc.restart_policy.name = "sometimes".into();
        assert!(check(&hc).is_err());
        hc.restart_policy.name = "always".into();
        hc.auto_remove = true;
        assert!(check(&hc).is_err());
        let hc = HostConfig { resources: Resources { memory: 1024, ..Default::default() }, ..Default::default() };
        assert!(check(&hc).is_err());
        let hc = HostConfig { cap_add: Some(vec!["NOT_A_CAP".into()]), ..Default::default() };
        assert!(check(&hc).is_err());
    }

    #[test]
    fn ulimits_shm_and_sysctls_are_checked_and_applied() {
        use engine_docker_api::Ulimit;
        let ulimit = |name: &str, soft, hard| Ulimit { name: name.into(), soft, hard };
        let bad = |hc: HostConfig| check(&hc).err().map(|e| e.message).unwrap_or_default();
        assert!(bad(HostConfig { ulimits: Some(vec![ulimit("nofiles", 1, 2)]), ..Default::default() })
            .contains("invalid ulimit type"));
        assert!(bad(HostConfig { ulimits: Some(vec![ulimit("nofile", 3, 2)]), ..Default::default() })
            .contains("soft limit"));
        assert!(bad(HostConfig { shm_size: -1, ..Default::default() }).contains("SHM size"));
        let sysctl = |k: &str| Some([(k.to_string(), "1".to_string())].into());
        assert!(bad(HostConfig { sysctls: sysctl("kernel.panic"), ..Default::default() }).contains("not allowed"));
        assert!(bad(HostConfig {
            sysctls: sysctl("net.ipv4.ip_forward"),
            network_mode: "host".into(),
            ..Default::default()
        })
        .contains("host network namespace"));

        let dir = tempfile::tempdir().unwrap();
        let mut image_spec = Spec::default();
        image_spec.set_mounts(Some(vec![MountBuilder::default()
            .destination("/dev/shm")
            .typ("tmpfs")
            .source("shm")
            .options(vec!["nosuid".to_string(), "size=65536k".to_string()])
            .build()
            .unwrap()]));
        let hc = HostConfig {
            ulimits: Some(vec![ulimit("nofile", 100, 200)]),
            shm_size: 1 << 20,
            sysctls: Some(
                [
                    ("net.ipv4.ip_forward".to_string(), "1".to_string()),
                    ("kernel.shmmax".to_string(), "4096".to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let mounts = check(&hc).unwrap();
        let volume_dir = |_: &str| -> Result<PathBuf, ApiError> { unreachable!("no volumes") };
        let cx = Context {
            id: "c1",
            cgroup_parent: "/engine",
            container_dir: dir.path(),
            init_bin: Path::new("/init"),
            mounts: &mounts,
            netns: None,
            pid_ns: None,
            ipc_ns: None,
            volume_dir: &volume_dir,
        };
        let v = serde_json::to_value(apply(image_spec, &hc, &cx).unwrap()).unwrap();
        let nofile: Vec<&serde_json::Value> =
            v["process"]["rlimits"].as_array().unwrap().iter().filter(|r| r["type"] == "RLIMIT_NOFILE").collect();
        assert_eq!(nofile, [&serde_json::json!({"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200})]);
        let shm = v["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/dev/shm").unwrap();
        assert_eq!(shm["options"], serde_json::json!(["nosuid", "size=1024k"]));
        assert_eq!(v["linux"]["sysctl"]["net.ipv4.ip_forward"], "1");
        assert_eq!(v["linux"]["sysctl"]["kernel.shmmax"], "4096");
    }

    #[test]
    fn device_cgroup_rules_read_as_docker_writes_them() {
        let rules = |r: &[&str]| {
            device_cgroup_rules(&HostConfig {
                device_cgroup_rules: Some(r.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            })
        };
        let got = rules(&["c 10:200 rwm", "b *:* m", "a 1:* r"]).unwrap();
        assert_eq!(
            serde_json::to_value(&got).unwrap(),
            serde_json::json!([
                {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"},
                {"allow": true, "type": "b", "access": "m"},
                {"allow": true, "type": "a", "major": 1, "access": "r"},
            ])
        );
        for bad in ["c 10:200", "x 1:2 r", "c 1 r", "c 1:2 rwx", "c 1:2 rr", "c -1:2 r", "c  1:2 r", ""] {
            let err = rules(&[bad]).unwrap_err();
            assert!(err.to_string().contains("invalid device cgroup rule format"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_device_mapping_takes_the_node_its_permissions_and_its_path() {
        let hc = |host: &str, container: &str, perms: &str| HostConfig {
            devices: Some(vec![engine_docker_api::DeviceMapping {
                path_on_host: host.into(),
                path_in_container: container.into(),
                cgroup_permissions: perms.into(),
            }]),
            ..Default::default()
        };
        let (nodes, rules) = custom_devices(&hc("/dev/null", "/dev/mynull", "rw")).unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!((nodes[0].path().as_path(), nodes[0].major(), nodes[0].minor()), (Path::new("/dev/mynull"), 1, 3));
        assert_eq!((rules[0].major(), rules[0].minor(), rules[0].access().as_deref()), (Some(1), Some(3), Some("rw")));
        let (nodes, rules) = custom_devices(&hc("/dev/null", "", "")).unwrap();
        assert_eq!(nodes[0].path(), Path::new("/dev/null"), "the host's path by default");
        assert_eq!(rules[0].access().as_deref(), Some("rwm"), "every permission by default");
        for (host, container, perms, says) in [
            ("/etc/passwd", "", "", "not a device node"),
            ("/dev/null", "relative", "", "not an absolute path"),
            ("/dev/null", "", "rwx", "invalid device permissions"),
            ("/nonexistent", "", "", "No such file"),
        ] {
            let err = custom_devices(&hc(host, container, perms)).unwrap_err().to_string();
            assert!(err.contains(says) && err.contains(host), "{host} {container} {perms}: {err}");
        }
    }

    #[test]
    fn a_privileged_container_gets_the_hosts_devices() {
        let devices = host_devices(Path::new("/dev"));
        let null = devices.iter().find(|d| d.path() == Path::new("/dev/null")).expect("/dev/null");
        assert_eq!((null.typ(), null.major(), null.minor()), (LinuxDeviceType::C, 1, 3));
        for left_out in ["/dev/ptmx", "/dev/console"] {
            assert!(devices.iter().all(|d| d.path() != Path::new(left_out)), "{left_out}");
        }
        assert!(devices.iter().all(|d| !d.path().starts_with("/dev/pts") && !d.path().starts_with("/dev/shm")));
    }

    /// `apply` on runc's default spec, read back as the runtime reads config.json.
    fn applied(hc: &HostConfig, netns: Option<&Path>, dir: &Path) -> serde_json::Value {
        let volume_dir = |name: &str| -> Result<PathBuf, ApiError> { Ok(PathBuf::from("/volumes").join(name)) };
        let mounts = check(hc).unwrap();
        let cx = Context {
            id: "c1",
            cgroup_parent: "/engine/",
            container_dir: dir,
            init_bin: Path::new("/usr/libexec/engine-init"),
            mounts: &mounts,
            netns,
            pid_ns: None,
            ipc_ns: None,
            volume_dir: &volume_dir,
        };
        serde_json::to_value(apply(Spec::default(), hc, &cx).unwrap()).unwrap()
    }

    fn names(v: &serde_json::Value) -> Vec<String> {
        let mut n: Vec<String> =
            v.as_array().unwrap().iter().map(|x| x.as_str().unwrap_or(&x["type"].to_string()).to_string()).collect();
        n.sort();
        n
    }

    #[test]
    fn the_oom_score_adjustment_goes_to_the_process_within_its_range() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["hostname", "hosts", "resolv.conf"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let hc = HostConfig { oom_score_adj: 500, ..Default::default() };
        assert!(check(&hc).is_ok());
        assert_eq!(applied(&hc, None, dir.path())["process"]["oomScoreAdj"], 500);
        assert!(applied(&HostConfig::default(), None, dir.path())["process"]
            .get("oomScoreAdj")
            .is_none_or(|v| v.is_null()));
        for bad in [-1001, 1001] {
            let err = check(&HostConfig { oom_score_adj: bad, ..Default::default() }).unwrap_err();
            assert_eq!(err.message, format!("Invalid value {bad}, range for oom score adj is [-1000, 1000]"));
        }
    }

    #[test]
    fn host_and_container_namespaces_are_shared_and_other_modes_refused() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["hostname", "hosts", "resolv.conf"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let kinds = |v: &serde_json::Value| -> Vec<String> {
            let ns = v["linux"]["namespaces"].as_array().cloned().unwrap_or_default();
            ns.iter().filter_map(|n| n["type"].as_str().map(str::to_string)).collect()
        };
        let own = applied(&HostConfig::default(), None, dir.path());
        assert!(kinds(&own).contains(&"pid".to_string()) && kinds(&own).contains(&"uts".to_string()));
        let hc = HostConfig { pid_mode: "host".into(), uts_mode: "host".into(), ..Default::default() };
        assert!(check(&hc).is_ok());
        let shared = applied(&hc, None, dir.path());
        assert!(!kinds(&shared).contains(&"pid".to_string()) && !kinds(&shared).contains(&"uts".to_string()));
        assert!(shared.get("hostname").is_none_or(|h| h.is_null()), "{shared}");
        // another container's PID and IPC namespaces: joined by the paths create resolves
        let hc =
            HostConfig { pid_mode: "container:web".into(), ipc_mode: "container:web".into(), ..Default::default() };
        assert!(check(&hc).is_ok());
        let volume_dir = |_: &str| -> Result<PathBuf, ApiError> { unreachable!("no volumes") };
        let cx = Context {
            id: "c1",
            cgroup_parent: "/engine",
            container_dir: dir.path(),
            init_bin: Path::new("/init"),
            mounts: &[],
            netns: None,
            pid_ns: Some(Path::new("/proc/42/ns/pid")),
            ipc_ns: Some(Path::new("/proc/42/ns/ipc")),
            volume_dir: &volume_dir,
        };
        let joined = serde_json::to_value(apply(Spec::default(), &hc, &cx).unwrap()).unwrap();
        let path_of = |typ: &str| {
            joined["linux"]["namespaces"].as_array().unwrap().iter().find(|n| n["type"] == typ).unwrap()["path"].clone()
        };
        assert_eq!(
            (path_of("pid"), path_of("ipc")),
            (serde_json::json!("/proc/42/ns/pid"), serde_json::json!("/proc/42/ns/ipc"))
        );
        // masked and read-only paths of the caller's, instead of the defaults
        let hc = HostConfig {
            masked_paths: Some(vec!["/secret".into()]),
            readonly_paths: Some(vec![]),
            ..Default::default()
        };
        let v = applied(&hc, None, dir.path());
        assert_eq!(
            (&v["linux"]["maskedPaths"], &v["linux"]["readonlyPaths"]),
            (&serde_json::json!(["/secret"]), &serde_json::json!([]))
        );
        for bad in [
            HostConfig { masked_paths: Some(vec!["relative".into()]), ..Default::default() },
            HostConfig { ipc_mode: "elsewhere".into(), ..Default::default() },
            HostConfig { uts_mode: "private".into(), ..Default::default() },
            HostConfig { isolation: "hyperv".into(), ..Default::default() },
        ] {
            assert_eq!(check(&bad).unwrap_err().status, hyper::StatusCode::BAD_REQUEST);
        }
        let lc = engine_docker_api::LogConfig {
            typ: "json-file".into(),
            config: [("max-file".to_string(), "3".to_string())].into(),
        };
        assert_eq!(log_rotation(&lc), Ok((0, 3)), "max-file alone is accepted, as by dockerd");
    }

    #[test]
    fn applies_the_host_config_as_typed_spec_values() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["hostname", "hosts", "resolv.conf"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let hc = HostConfig {
            resources: Resources {
                memory: 64 << 20,
                nano_cpus: 500_000_000,
                pids_limit: Some(20),
                ..Default::default()
            },
            cap_add: Some(vec!["net_admin".into()]),
            cap_drop: Some(vec!["CAP_KILL".into()]),
            readonly_rootfs: true,
            init: Some(true),
            tmpfs: Some([("/run".to_string(), "size=1m".to_string())].into()),
            binds: Some(vec!["vol1:/data:ro".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            ..Default::default()
        };
        let v = applied(&hc, Some(Path::new("/run/engine/netns/c1")), dir.path());
        assert_eq!(v["linux"]["cgroupsPath"], "/engine/c1");
        let res = &v["linux"]["resources"];
        assert_eq!((res["memory"]["limit"].as_i64(), res["pids"]["limit"].as_i64()), (Some(64 << 20), Some(20)));
        assert_eq!((res["cpu"]["quota"].as_i64(), res["cpu"]["period"].as_u64()), (Some(50_000), Some(100_000)));
        let caps = names(&v["process"]["capabilities"]["bounding"]);
        assert!(
            caps.contains(&"CAP_NET_ADMIN".to_string()) && caps.contains(&"CAP_AUDIT_WRITE".to_string()),
            "{caps:?}"
        );
        assert!(!caps.contains(&"CAP_KILL".to_string()), "{caps:?}");
        assert_eq!(names(&v["process"]["capabilities"]["effective"]), caps);
        assert_eq!(v["process"]["capabilities"]["inheritable"], serde_json::json!([]));
        assert_eq!(v["process"]["capabilities"]["ambient"], serde_json::json!([]));
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["process"]["args"][0], INIT_PATH);
        assert_eq!(v["process"]["args"][1], "--");
        let mounts = v["mounts"].as_array().unwrap();
        let mount = |dest: &str| mounts.iter().find(|m| m["destination"] == dest).unwrap_or_else(|| panic!("{dest}"));
        assert_eq!(mount("/etc/hosts")["options"], serde_json::json!(["rbind", "rprivate", "ro"]));
        assert_eq!(mount("/data")["source"], "/volumes/vol1");
        assert_eq!(mount("/run")["type"], "tmpfs");
        assert_eq!(mount("/run")["options"], serde_json::json!(["nosuid", "nodev", "noexec", "size=1m"]));
        assert_eq!(mount(INIT_PATH)["source"], "/usr/libexec/engine-init");
        let net = v["linux"]["namespaces"].as_array().unwrap().iter().find(|n| n["type"] == "network").unwrap();
        assert_eq!(net["path"], "/run/engine/netns/c1");
        // the default seccomp filter: EPERM for what needs a missing capability, ENOSYS for clone3
        let sc = &v["linux"]["seccomp"];
        assert_eq!(sc["defaultAction"], "SCMP_ACT_ALLOW");
        let denied = &sc["syscalls"][0];
        assert_eq!((denied["action"].as_str(), denied["errnoRet"].as_u64()), (Some("SCMP_ACT_ERRNO"), Some(1)));
        let denied = names(&denied["names"]);
        assert!(denied.contains(&"mount".to_string()) && denied.contains(&"bpf".to_string()));
        assert_eq!(sc["syscalls"][1]["errnoRet"].as_u64(), Some(libc::ENOSYS as u64));
        let clone = sc["syscalls"].as_array().unwrap().iter().filter(|r| r["names"][0] == "clone").count();
        assert_eq!(clone, 7, "one rule per namespace flag");

        // --privileged: every device and the host's capabilities, no filter, nothing masked
        let v = applied(
            &HostConfig { privileged: true, network_mode: "host".into(), ..Default::default() },
            None,
            dir.path(),
        );
        assert_eq!(v["linux"]["resources"]["devices"], serde_json::json!([{"allow": true, "access": "rwm"}]));
        assert!(v["linux"]["seccomp"].is_null());
        assert_eq!(v["linux"]["maskedPaths"], serde_json::json!([]));
        assert!(names(&v["process"]["capabilities"]["bounding"]).contains(&"CAP_SYS_ADMIN".to_string()));
        // --network host: the host's network and UTS namespaces, no hostname of its own
        let types: Vec<&str> =
            v["linux"]["namespaces"].as_array().unwrap().iter().filter_map(|n| n["type"].as_str()).collect();
        assert!(!types.contains(&"network") && !types.contains(&"uts"), "{types:?}");
        assert!(v["hostname"].is_null());
    }
}
