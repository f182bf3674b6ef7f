//! `HostConfig` (the run options of `docker run`) checked, then applied to the OCI spec that
//! engine-image built from the image: resources, capabilities, privileges, read-only root,
//! tmpfs, binds and volumes, network mode, `--init`, and the per-container /etc files.
//! Checking happens before anything is created, so bad values change nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde_json::{json, Value};

use crate::http::ApiError;
use crate::types::HostConfig;

/// Docker's floor for `--memory`.
const MIN_MEMORY: i64 = 6 * 1024 * 1024;
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
}

/// Everything in a HostConfig that can be wrong, checked up front.
pub fn check(hc: &HostConfig) -> Result<Vec<MountSpec>, ApiError> {
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
    if hc.memory != 0 && hc.memory < MIN_MEMORY {
        return bad("Minimum memory limit allowed is 6MB".into());
    }
    if hc.nano_cpus < 0 {
        return bad("invalid CPU value: must be positive".into());
    }
    let ncpu = std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1);
    if hc.nano_cpus > ncpu * 1_000_000_000 {
        return bad(format!("Range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available"));
    }
    if hc.nano_cpus > 0 && (hc.cpu_quota > 0 || hc.cpu_period > 0) {
        return bad("Conflicting options: Nano CPUs and CPU Period/Quota cannot both be set".into());
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
            o if o.starts_with("seccomp") || o.starts_with("apparmor") || o.starts_with("label") => {
                return bad(format!("--security-opt {o:?} is not supported yet (only no-new-privileges, seccomp=unconfined, apparmor=unconfined, label=disable)"))
            }
            o => return bad(format!("invalid --security-opt: {o:?}")),
        }
    }
    for (path, _) in hc.tmpfs.iter().flatten() {
        if !path.starts_with('/') {
            return bad(format!("invalid mount config: tmpfs destination {path:?} must be absolute"));
        }
    }
    let mut mounts = Vec::new();
    for b in hc.binds.iter().flatten() {
        mounts.push(parse_bind(b)?);
    }
    for m in hc.mounts.iter().flatten() {
        if !m.target.starts_with('/') {
            return bad(format!("invalid mount config: mount path {:?} must be absolute", m.target));
        }
        let source = match m.typ.as_str() {
            "bind" => Source::Host(PathBuf::from(&m.source)),
            "volume" => Source::Volume(m.source.clone()),
            t => return bad(format!("mount type {t:?} is not supported (bind, volume)")),
        };
        if let Source::Host(p) = &source {
            if !p.is_absolute() || !p.exists() {
                return bad(format!(
                    "invalid mount config for type \"bind\": bind source path does not exist: {}",
                    p.display()
                ));
            }
        }
        mounts.push(MountSpec { source, target: m.target.clone(), read_only: m.read_only });
    }
    for (i, m) in mounts.iter().enumerate() {
        if mounts[..i].iter().any(|o| o.target == m.target) {
            return bad(format!("Duplicate mount point: {}", m.target));
        }
    }
    if let Some(p) = hc.pids_limit {
        if p < -1 {
            return bad("invalid pids limit".into());
        }
    }
    Ok(mounts)
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
    for opt in mode.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => read_only = true,
            "rw" | "z" | "Z" | "rprivate" | "private" | "rshared" | "shared" | "rslave" | "slave" | "nocopy" => {}
            _ => return Err(bad()),
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
        Source::Host(PathBuf::from(src))
    } else {
        if !valid_volume_name(src) {
            return Err(ApiError::bad_request(format!(
                "create {src}: \"{src}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
            )));
        }
        Source::Volume(src.to_string())
    };
    Ok(MountSpec { source, target: dst.to_string(), read_only })
}

pub fn valid_volume_name(n: &str) -> bool {
    let b = n.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
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
    /// Resolves a named volume to its directory, creating it if needed.
    pub volume_dir: &'a dyn Fn(&str) -> Result<PathBuf, ApiError>,
}

/// Applies the checked HostConfig to `spec`.
pub fn apply(spec: Spec, hc: &HostConfig, cx: &Context<'_>) -> Result<Spec, ApiError> {
    let internal = |e: serde_json::Error| ApiError::internal(format!("building the spec: {e}"));
    let mut v = serde_json::to_value(&spec).map_err(internal)?;
    v["linux"]["cgroupsPath"] = json!(cgroups_path(cx.cgroup_parent, cx.id));

    // resources
    let res = &mut v["linux"]["resources"];
    if hc.memory > 0 {
        res["memory"] = json!({ "limit": hc.memory });
    }
    if hc.nano_cpus > 0 {
        let period = 100_000i64;
        res["cpu"] = json!({ "period": period, "quota": hc.nano_cpus * period / 1_000_000_000 });
    } else if hc.cpu_quota > 0 || hc.cpu_period > 0 || hc.cpu_shares > 0 {
        let mut cpu = json!({});
        if hc.cpu_quota > 0 {
            cpu["quota"] = json!(hc.cpu_quota);
        }
        if hc.cpu_period > 0 {
            cpu["period"] = json!(hc.cpu_period);
        }
        if hc.cpu_shares > 0 {
            cpu["shares"] = json!(hc.cpu_shares);
        }
        res["cpu"] = cpu;
    }
    if let Some(p) = hc.pids_limit.filter(|p| *p != 0) {
        res["pids"] = json!({ "limit": p });
    }

    // capabilities and privileges
    let caps = &mut v["process"]["capabilities"];
    let mut set: Vec<String> = caps["bounding"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
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
    *caps = json!({ "bounding": set, "effective": set, "permitted": set });
    if hc.privileged {
        v["linux"]["maskedPaths"] = json!([]);
        v["linux"]["readonlyPaths"] = json!([]);
        v["linux"]["resources"]["devices"] = json!([{ "allow": true, "access": "rwm" }]);
        for m in v["mounts"].as_array_mut().into_iter().flatten() {
            if m["destination"] == "/sys" || m["destination"] == "/sys/fs/cgroup" {
                if let Some(opts) = m["options"].as_array_mut() {
                    opts.retain(|o| o != "ro");
                }
            }
        }
    }
    for opt in hc.security_opt.iter().flatten() {
        match opt.as_str() {
            "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true" => {
                v["process"]["noNewPrivileges"] = json!(true)
            }
            "no-new-privileges:false" | "no-new-privileges=false" => v["process"]["noNewPrivileges"] = json!(false),
            _ => {}
        }
    }
    if hc.readonly_rootfs {
        v["root"]["readonly"] = json!(true);
    }
    let unconfined = hc.security_opt.iter().flatten().any(|o| o == "seccomp=unconfined" || o == "seccomp:unconfined");
    if !hc.privileged && !unconfined {
        v["linux"]["seccomp"] = default_seccomp(&set);
    }

    // network
    if let Some(path) = cx.netns {
        for n in v["linux"]["namespaces"].as_array_mut().into_iter().flatten() {
            if n["type"] == "network" {
                n["path"] = json!(path);
            }
        }
    }
    if cx.netns.is_none() {
        // the host's network (--network host, or container:<one on the host's network>)
        if let Some(ns) = v["linux"]["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != json!(LinuxNamespaceType::Network.to_string()) && n["type"] != "network");
        }
    }
    if hc.network_mode == "host" {
        if let Some(ns) = v["linux"]["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "uts");
        }
        v.as_object_mut().map(|o| o.remove("hostname"));
    }

    // mounts: /etc files, tmpfs, binds and volumes, init
    let mounts = v["mounts"].as_array_mut().ok_or_else(|| ApiError::internal("spec has no mounts"))?;
    for (file, dest) in [("hostname", "/etc/hostname"), ("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf")] {
        let src = cx.container_dir.join(file);
        if src.exists() {
            let mut opts = vec!["rbind", "rprivate"];
            if hc.readonly_rootfs {
                opts.push("ro");
            }
            mounts.push(json!({ "destination": dest, "type": "bind", "source": src, "options": opts }));
        }
    }
    for (path, opts) in hc.tmpfs.iter().flatten() {
        let mut o: Vec<String> = vec!["nosuid".into(), "nodev".into(), "noexec".into()];
        o.extend(opts.split(',').filter(|s| !s.is_empty()).map(str::to_string));
        mounts.push(json!({ "destination": path, "type": "tmpfs", "source": "tmpfs", "options": o }));
    }
    for m in cx.mounts {
        let source = match &m.source {
            Source::Host(p) => p.clone(),
            Source::Volume(name) => (cx.volume_dir)(name)?,
        };
        let mut opts = vec!["rbind", "rprivate"];
        if m.read_only {
            opts.push("ro");
        }
        mounts.push(json!({ "destination": m.target, "type": "bind", "source": source, "options": opts }));
    }
    if hc.init == Some(true) {
        mounts.push(json!({ "destination": INIT_PATH, "type": "bind", "source": cx.init_bin, "options": ["rbind", "ro", "rprivate"] }));
        let args = v["process"]["args"].as_array().cloned().unwrap_or_default();
        let mut with_init = vec![json!(INIT_PATH), json!("--")];
        with_init.extend(args);
        v["process"]["args"] = Value::Array(with_init);
    }
    serde_json::from_value(v).map_err(internal)
}

/// The default seccomp filter, with the effect of Docker's default profile on what matters:
/// the syscalls it leaves out unless a capability is granted fail with EPERM, namespace
/// creation through clone flags is refused, and clone3 answers ENOSYS (so libcs fall back to
/// clone, whose flags can be checked). Everything else is allowed. `--privileged` and
/// `--security-opt seccomp=unconfined` run without it.
pub fn default_seccomp(caps: &[String]) -> Value {
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
    let mut rules = vec![
        json!({ "names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM }),
        json!({ "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS }),
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
            rules.push(json!({
                "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM,
                "args": [{ "index": 0, "value": flag as u64, "valueTwo": flag as u64, "op": "SCMP_CMP_MASKED_EQ" }]
            }));
        }
    }
    json!({ "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"], "syscalls": rules })
}

/// Writes the container's /etc/hostname, /etc/hosts and /etc/resolv.conf (bind-mounted by
/// `apply`): the host's own with `--network host`; else its name, `--add-host` entries and
/// `--dns*` settings (the hosts file is written again at each start, with its addresses).
pub fn write_etc_files(dir: &Path, hostname: &str, hc: &HostConfig) -> std::io::Result<()> {
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
        &(engine_network::etc::hosts(hostname, &[], &[]) + &extra_hosts(hc, None)),
    )?;
    std::fs::write(dir.join("resolv.conf"), resolv_conf(hc))
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

/// The host's resolvers (without loopback ones), or `--dns`, `--dns-search`, `--dns-option`.
pub fn resolv_conf(hc: &HostConfig) -> String {
    let host = engine_network::etc::host_resolv_conf();
    let dns = hc.dns.clone().unwrap_or_default();
    let search = hc.dns_search.clone().unwrap_or_default();
    let options = hc.dns_options.clone().unwrap_or_default();
    if dns.is_empty() && search.is_empty() && options.is_empty() {
        return engine_network::etc::resolv_conf(&host);
    }
    let base = engine_network::etc::resolv_conf(&host);
    let keep = |prefix: &str, given: bool| {
        base.lines().filter(move |l| !given && l.starts_with(prefix)).map(|l| format!("{l}\n")).collect::<String>()
    };
    let mut s = String::new();
    s += &if search.is_empty() { keep("search", false) } else { format!("search {}\n", search.join(" ")) };
    s += &if dns.is_empty() {
        keep("nameserver", false)
    } else {
        dns.iter().map(|d| format!("nameserver {d}\n")).collect()
    };
    s += &if options.is_empty() { keep("options", false) } else { format!("options {}\n", options.join(" ")) };
    s
}

/// Labels as the container record keeps them.
pub type Labels = BTreeMap<String, String>;

/// A container's cgroup, under the daemon's cgroup parent.
pub fn cgroups_path(cgroup_parent: &str, id: &str) -> String {
    format!("{}/{}", cgroup_parent.trim_end_matches('/'), id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_binds_and_policies() {
        assert_eq!(
            parse_bind("/tmp:/data:ro").unwrap(),
            MountSpec { source: Source::Host("/tmp".into()), target: "/data".into(), read_only: true }
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
        let hc = HostConfig { memory: 1024, ..Default::default() };
        assert!(check(&hc).is_err());
        let hc = HostConfig { cap_add: Some(vec!["NOT_A_CAP".into()]), ..Default::default() };
        assert!(check(&hc).is_err());
    }
}
