//! Container commands, with Docker's flags and output.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use engine_docker_api::{
    ContainerConfig, ContainerCreateBody, EndpointIpam, EndpointSettings, HealthConfig, HostConfig, NetworkingConfig,
    PortBinding, Resources, RestartPolicy, UpdateConfig,
};

use crate::client::{self, Client, Demux};
use crate::format;

#[derive(clap::Args, Debug, Clone)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    #[arg(long, action = clap::ArgAction::Help, help = "Print help")]
    help: Option<bool>,
    /// Run in the background and print the container ID.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Pull image before running ("always", "missing", "never").
    #[arg(long, default_value = "missing", value_parser = ["always", "missing", "never"])]
    pub pull: String,
    /// Set platform if server is multi-platform capable.
    #[arg(long)]
    pub platform: Option<String>,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Assign a name to the container.
    #[arg(long)]
    pub name: Option<String>,
    /// Set environment variables.
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Read environment variables from a file.
    #[arg(long)]
    pub env_file: Vec<std::path::PathBuf>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>]).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Set metadata on the container.
    #[arg(short = 'l', long = "label")]
    pub label: Vec<String>,
    /// Overwrite the default ENTRYPOINT of the image.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Container host name.
    #[arg(short = 'h', long)]
    pub hostname: Option<String>,
    /// Run an init inside the container that forwards signals and reaps processes.
    #[arg(long)]
    pub init: bool,
    /// Restart policy: no, on-failure[:max-retries], always, unless-stopped.
    #[arg(long, default_value = "no")]
    pub restart: String,
    #[command(flatten)]
    pub resources: ResourceArgs,
    /// Tune container memory swappiness (0 to 100).
    #[arg(long)]
    pub memory_swappiness: Option<i64>,
    /// Disable OOM Killer.
    #[arg(long)]
    pub oom_kill_disable: bool,
    /// Mount volumes from the specified container(s) (name[:ro|:rw]).
    #[arg(long)]
    pub volumes_from: Vec<String>,
    /// Logging driver for the container (json-file, none).
    #[arg(long)]
    pub log_driver: Option<String>,
    /// Log driver options (max-size=10m, max-file=3).
    #[arg(long)]
    pub log_opt: Vec<String>,
    /// Container MAC address (e.g., 92:d0:c6:0a:29:33).
    #[arg(long)]
    pub mac_address: Option<String>,
    /// Cgroup namespace to use (host|private).
    #[arg(long)]
    pub cgroupns: Option<String>,
    /// Runtime to use for this container.
    #[arg(long)]
    pub runtime: Option<String>,
    /// Mount the container's root filesystem as read only.
    #[arg(long)]
    pub read_only: bool,
    /// Add Linux capabilities.
    #[arg(long)]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities.
    #[arg(long)]
    pub cap_drop: Vec<String>,
    /// Give extended privileges to this container.
    #[arg(long)]
    pub privileged: bool,
    /// Add a host device to the container (host[:container][:permissions], permissions of rwm).
    #[arg(long)]
    pub device: Vec<String>,
    /// Add a rule to the cgroup allowed devices list ('c 1:3 rwm', '*' for any number).
    #[arg(long)]
    pub device_cgroup_rule: Vec<String>,
    /// Security options (no-new-privileges).
    #[arg(long)]
    pub security_opt: Vec<String>,
    /// Mount a tmpfs directory (path[:options]).
    #[arg(long)]
    pub tmpfs: Vec<String>,
    /// Bind mount a volume (host-path-or-volume:container-path[:ro]).
    #[arg(short = 'v', long = "volume")]
    pub volume: Vec<String>,
    /// Connect the container to a network: bridge (the default), a user network, host,
    /// none, or container:<name|id>.
    #[arg(long, alias = "net")]
    pub network: Option<String>,
    /// Publish a container's port to the host: [ip:][hostPort:]containerPort[/tcp|udp].
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Publish every exposed port to a free host port.
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// Expose a port or a range of ports (port[-port][/proto]).
    #[arg(long)]
    pub expose: Vec<String>,
    /// IPv4 address on a user network with a configured subnet.
    #[arg(long)]
    pub ip: Option<String>,
    /// IPv6 address on a user network with a configured IPv6 subnet.
    #[arg(long)]
    pub ip6: Option<String>,
    /// Container IPv4/IPv6 link-local addresses.
    #[arg(long = "link-local-ip")]
    pub link_local_ip: Vec<String>,
    /// Network-scoped alias for the container.
    #[arg(long = "network-alias", alias = "net-alias")]
    pub network_alias: Vec<String>,
    /// Add a custom host-to-IP mapping (host:ip).
    #[arg(long = "add-host")]
    pub add_host: Vec<String>,
    /// Add a link to another container (name[:alias]).
    #[arg(long)]
    pub link: Vec<String>,
    /// Set custom DNS servers.
    #[arg(long)]
    pub dns: Vec<String>,
    /// Set custom DNS search domains.
    #[arg(long = "dns-search")]
    pub dns_search: Vec<String>,
    /// Set DNS options.
    #[arg(long = "dns-option", alias = "dns-opt")]
    pub dns_option: Vec<String>,
    /// Keep STDIN open even if not attached.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// PID namespace to use (host: the host's; container:<name|id>: a running container's).
    #[arg(long)]
    pub pid: Option<String>,
    /// IPC namespace to use (host: the host's; container:<name|id>: a running container's;
    /// private, shareable: its own).
    #[arg(long)]
    pub ipc: Option<String>,
    /// UTS namespace to use (host: the host's).
    #[arg(long)]
    pub uts: Option<String>,
    /// Signal to stop the container.
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Timeout (in seconds) to stop the container.
    #[arg(long)]
    pub stop_timeout: Option<i64>,
    /// Command to run to check health.
    #[arg(long)]
    pub health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h).
    #[arg(long, value_parser = duration)]
    pub health_interval: Option<std::time::Duration>,
    /// Maximum time to allow one check to run (ms|s|m|h).
    #[arg(long, value_parser = duration)]
    pub health_timeout: Option<std::time::Duration>,
    /// Consecutive failures needed to report unhealthy.
    #[arg(long)]
    pub health_retries: Option<i64>,
    /// Start period for the container to initialize before starting health-retries countdown
    /// (ms|s|m|h).
    #[arg(long, value_parser = duration)]
    pub health_start_period: Option<std::time::Duration>,
    /// Time between running the check during the start period (ms|s|m|h).
    #[arg(long, value_parser = duration)]
    pub health_start_interval: Option<std::time::Duration>,
    /// Disable any container-specified HEALTHCHECK.
    #[arg(long)]
    pub no_healthcheck: bool,
    /// Ulimit options (name=soft[:hard], e.g. nofile=1024:2048).
    #[arg(long)]
    pub ulimit: Vec<String>,
    /// Size of /dev/shm (e.g. 64m).
    #[arg(long = "shm-size")]
    pub shm_size: Option<String>,
    /// Sysctl options (key=value).
    #[arg(long)]
    pub sysctl: Vec<String>,
    /// Attach a filesystem mount (type=bind|volume|tmpfs,source=…,target=…[,readonly]).
    #[arg(long)]
    pub mount: Vec<String>,
    /// Add additional groups to join.
    #[arg(long = "group-add")]
    pub group_add: Vec<String>,
    /// Tune the host's OOM preferences (-1000 to 1000).
    #[arg(long = "oom-score-adj", allow_hyphen_values = true)]
    pub oom_score_adj: Option<i64>,
    /// Optional parent cgroup for the container.
    #[arg(long = "cgroup-parent")]
    pub cgroup_parent: Option<String>,
    /// Write the container ID to the file.
    #[arg(long)]
    pub cidfile: Option<std::path::PathBuf>,
    /// User namespace to use.
    #[arg(long)]
    pub userns: Option<String>,
    /// Container NIS domain name.
    #[arg(long)]
    pub domainname: Option<String>,
    /// Read in a line delimited file of labels.
    #[arg(long = "label-file")]
    pub label_file: Vec<std::path::PathBuf>,
    /// Override the key sequence for detaching a container (e.g. ctrl-p,ctrl-q).
    #[arg(long = "detach-keys")]
    pub detach_keys: Option<String>,
    /// Suppress the pull output.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Attach to STDIN, STDOUT or STDERR (default: STDOUT and STDERR, and STDIN with -i).
    #[arg(short = 'a', long, value_parser = attach_stream)]
    pub attach: Vec<String>,
    /// Proxy received signals to the process (without a terminal).
    #[arg(long = "sig-proxy", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub sig_proxy: bool,
    /// Block IO weight of a device (path:weight, 10 to 1000).
    #[arg(long = "blkio-weight-device")]
    pub blkio_weight_device: Vec<String>,
    /// Limit read rate (bytes per second) from a device (path:rate[kb|mb|gb]).
    #[arg(long = "device-read-bps")]
    pub device_read_bps: Vec<String>,
    /// Limit write rate (bytes per second) to a device (path:rate[kb|mb|gb]).
    #[arg(long = "device-write-bps")]
    pub device_write_bps: Vec<String>,
    /// Limit read rate (IO per second) from a device (path:rate).
    #[arg(long = "device-read-iops")]
    pub device_read_iops: Vec<String>,
    /// Limit write rate (IO per second) to a device (path:rate).
    #[arg(long = "device-write-iops")]
    pub device_write_iops: Vec<String>,
    /// CPU count (Windows only).
    #[arg(long = "cpu-count")]
    pub cpu_count: Option<i64>,
    /// CPU percent (Windows only).
    #[arg(long = "cpu-percent")]
    pub cpu_percent: Option<i64>,
    /// Maximum IO bandwidth limit for the system drive (Windows only).
    #[arg(long = "io-maxbandwidth")]
    pub io_maxbandwidth: Option<String>,
    /// Maximum IOps limit for the system drive (Windows only).
    #[arg(long = "io-maxiops")]
    pub io_maxiops: Option<u64>,
    /// GPU devices to add to the container ('all' to pass all GPUs).
    #[arg(long)]
    pub gpus: Vec<String>,
    /// Container isolation technology (only "default" on Linux).
    #[arg(long)]
    pub isolation: Option<String>,
    /// Storage driver options for the container (key=value).
    #[arg(long = "storage-opt")]
    pub storage_opt: Vec<String>,
    /// Optional volume driver for the container.
    #[arg(long = "volume-driver")]
    pub volume_driver: Option<String>,
    /// Add an annotation to the container, passed through to the OCI runtime (key=value).
    #[arg(long)]
    pub annotation: Vec<String>,
    /// Skip image verification (images are not signed here: always skipped).
    #[arg(long = "disable-content-trust", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub disable_content_trust: bool,
    /// Bind mount the engine's API socket (at /var/run/docker.sock) and the registry
    /// credentials the CLI keeps (at /run/secrets/docker/config.json).
    #[arg(long = "use-api-socket")]
    pub use_api_socket: bool,
    pub image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// A duration flag (`30s`, `1m30s`, `500ms`).
fn duration(s: &str) -> Result<std::time::Duration, String> {
    engine_util::time::parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration (30s, 1m30s)"))
}

/// The `Healthcheck` the `--health-*` flags ask for (none: the image's).
fn healthcheck(a: &RunArgs) -> Result<Option<HealthConfig>> {
    let nanos = |d: Option<std::time::Duration>| d.map_or(0, |d| d.as_nanos() as i64);
    let timing = HealthConfig {
        test: None,
        interval: nanos(a.health_interval),
        timeout: nanos(a.health_timeout),
        start_period: nanos(a.health_start_period),
        start_interval: nanos(a.health_start_interval),
        retries: a.health_retries.unwrap_or(0),
    };
    if a.no_healthcheck {
        if a.health_cmd.is_some() || timing != HealthConfig::default() {
            bail!("--no-healthcheck conflicts with --health-* options");
        }
        return Ok(Some(HealthConfig { test: Some(vec!["NONE".into()]), ..Default::default() }));
    }
    if timing.retries < 0 {
        bail!("--health-retries cannot be negative");
    }
    let test = a.health_cmd.as_ref().map(|c| vec!["CMD-SHELL".to_string(), c.clone()]);
    Ok((test.is_some() || timing != HealthConfig::default()).then_some(HealthConfig { test, ..timing }))
}

/// `--ulimit name=soft[:hard]` (one value: soft and hard alike), as Docker's CLI reads it.
fn parse_ulimit(u: &str) -> Result<engine_docker_api::Ulimit> {
    let bad = || anyhow!("invalid argument {u:?} for --ulimit: name=soft[:hard]");
    let (name, limits) = u.split_once('=').ok_or_else(bad)?;
    let (soft, hard) = limits.split_once(':').unwrap_or((limits, limits));
    let (soft, hard) = (soft.parse::<i64>().map_err(|_| bad())?, hard.parse::<i64>().map_err(|_| bad())?);
    if name.is_empty() {
        return Err(bad());
    }
    if soft > hard {
        bail!("invalid argument {u:?} for --ulimit: soft limit {soft} is above the hard limit {hard}");
    }
    Ok(engine_docker_api::Ulimit { name: name.to_string(), soft, hard })
}

/// `--mount type=bind|volume|tmpfs,source=…,target=…[,readonly]` and each type's options, Docker's
/// CSV form (the daemon refuses what it would not act on).
fn parse_mount(m: &str) -> Result<engine_docker_api::Mount> {
    use engine_docker_api::{BindOptions, TmpfsOptions, VolumeDriverConfig, VolumeOptions};
    let mut mount = engine_docker_api::Mount { typ: "volume".into(), ..Default::default() };
    let (mut bind, mut volume, mut tmpfs) = (None::<BindOptions>, None::<VolumeOptions>, None::<TmpfsOptions>);
    for field in m.split(',') {
        let (k, v) = field.split_once('=').map_or((field, None), |(k, v)| (k, Some(v)));
        let value = || v.map(str::to_string).ok_or_else(|| anyhow!("invalid field {field:?} of --mount: {k}=value"));
        let flag = || match v.map(str::to_ascii_lowercase).as_deref() {
            None | Some("1" | "true") => Ok(true),
            Some("0" | "false") => Ok(false),
            Some(other) => Err(anyhow!("invalid value {other:?} for {k} of --mount: true or false")),
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "type" => mount.typ = value()?,
            "source" | "src" => mount.source = value()?,
            "target" | "destination" | "dst" => mount.target = value()?,
            "readonly" | "ro" => mount.read_only = flag()?,
            "consistency" => mount.consistency = value()?,
            "bind-propagation" => bind.get_or_insert_with(Default::default).propagation = value()?,
            "bind-nonrecursive" => bind.get_or_insert_with(Default::default).non_recursive = flag()?,
            "volume-nocopy" => volume.get_or_insert_with(Default::default).no_copy = flag()?,
            "volume-subpath" => volume.get_or_insert_with(Default::default).subpath = value()?,
            "volume-label" => {
                let (lk, lv) =
                    value()?.split_once('=').map(|(a, b)| (a.to_string(), b.to_string())).unwrap_or_default();
                volume.get_or_insert_with(Default::default).labels.get_or_insert_with(Default::default).insert(lk, lv);
            }
            "volume-driver" => {
                let o = volume.get_or_insert_with(Default::default);
                o.driver_config.get_or_insert_with(VolumeDriverConfig::default).name = value()?;
            }
            "volume-opt" => {
                let (ok, ov) =
                    value()?.split_once('=').map(|(a, b)| (a.to_string(), b.to_string())).unwrap_or_default();
                let o = volume.get_or_insert_with(Default::default);
                let d = o.driver_config.get_or_insert_with(VolumeDriverConfig::default);
                d.options.get_or_insert_with(Default::default).insert(ok, ov);
            }
            "tmpfs-size" => tmpfs.get_or_insert_with(Default::default).size_bytes = parse_bytes(&value()?)?,
            "tmpfs-mode" => {
                let mode = value()?;
                tmpfs.get_or_insert_with(Default::default).mode = u32::from_str_radix(&mode, 8)
                    .map_err(|_| anyhow!("invalid value {mode:?} for tmpfs-mode of --mount: octal bits"))?;
            }
            other => bail!("unexpected key {other:?} in --mount {m:?}"),
        }
    }
    if mount.target.is_empty() {
        bail!("invalid argument {m:?} for --mount: target is required");
    }
    (mount.bind_options, mount.volume_options, mount.tmpfs_options) = (bind, volume, tmpfs);
    Ok(mount)
}

/// `64m`, `1g`, `512k`, `1024` (bytes).
pub fn parse_bytes(s: &str) -> Result<i64> {
    Ok(engine_util::size::parse_bytes(s)?)
}

fn restart_policy(s: &str) -> Result<RestartPolicy> {
    let (name, count) = match s.split_once(':') {
        Some((n, c)) => (
            n,
            c.parse::<i64>().map_err(|_| anyhow!("invalid restart policy: maximum retry count must be an integer"))?,
        ),
        None => (s, 0),
    };
    if !["no", "always", "unless-stopped", "on-failure"].contains(&name) {
        bail!("invalid restart policy {name:?}: use no, on-failure[:max-retries], always or unless-stopped");
    }
    if count != 0 && name != "on-failure" {
        bail!("invalid restart policy: maximum retry count can only be used with 'on-failure'");
    }
    Ok(RestartPolicy { name: name.into(), maximum_retry_count: count })
}

/// The `POST /containers/create` body of `run`/`create`.
/// `--security-opt`, as the Docker CLI sends it: `seccomp=<file>` goes as the file's JSON.
fn security_opts(opts: &[String]) -> Result<Vec<String>> {
    opts.iter()
        .map(|o| match o.split_once(['=', ':']) {
            Some(("seccomp", path)) if path != "unconfined" && !path.trim_start().starts_with('{') => {
                let profile = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("opening seccomp profile ({path}) failed: {e}"))?;
                Ok(format!("seccomp={profile}"))
            }
            _ => Ok(o.clone()),
        })
        .collect()
}

pub fn create_body(a: &RunArgs) -> Result<ContainerCreateBody> {
    let mut env = Vec::new();
    for f in &a.env_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading env file {}", f.display()))?;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            env.push(expand_env(line));
        }
    }
    env.extend(a.env.iter().map(|e| expand_env(e)));
    let mut labels = BTreeMap::new();
    let mut label_lines = Vec::new();
    for f in &a.label_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading label file {}", f.display()))?;
        label_lines
            .extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string));
    }
    for l in label_lines.iter().chain(&a.label) {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        labels.insert(k.to_string(), v.to_string());
    }
    let mut sysctls = BTreeMap::new();
    for kv in &a.sysctl {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("invalid argument {kv:?} for --sysctl: key=value"))?;
        sysctls.insert(k.to_string(), v.to_string());
    }
    let mut tmpfs = BTreeMap::new();
    for t in &a.tmpfs {
        let (p, o) = t.split_once(':').unwrap_or((t, ""));
        tmpfs.insert(p.to_string(), o.to_string());
    }
    let (exposed, bindings) = parse_publish(&a.publish, &a.expose)?;
    let given = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let (anonymous, binds): (Vec<String>, Vec<String>) =
        a.volume.iter().cloned().partition(|v| v.starts_with('/') && !v.contains(':'));
    let config = ContainerConfig {
        image: a.image.clone(),
        env: Some(env),
        labels: Some(labels),
        tty: a.tty,
        open_stdin: a.interactive,
        stdin_once: a.interactive,
        attach_stdin: !a.detach && attached(a, "stdin"),
        attach_stdout: !a.detach && attached(a, "stdout"),
        attach_stderr: !a.detach && attached(a, "stderr"),
        cmd: given(&a.command),
        // `--entrypoint ""` clears the image's
        entrypoint: a.entrypoint.as_ref().map(|e| if e.is_empty() { vec![] } else { vec![e.clone()] }),
        working_dir: a.workdir.clone().unwrap_or_default(),
        user: a.user.clone().unwrap_or_default(),
        hostname: a.hostname.clone().unwrap_or_default(),
        domainname: a.domainname.clone().unwrap_or_default(),
        stop_signal: a.stop_signal.clone(),
        stop_timeout: a.stop_timeout,
        healthcheck: healthcheck(a)?,
        exposed_ports: (!exposed.is_empty()).then(|| exposed.into_iter().map(|k| (k, serde_json::json!({}))).collect()),
        // `-v /path` alone is an anonymous volume, as the Docker CLI sends it
        volumes: Some(anonymous.iter().map(|p| (p.to_string(), serde_json::json!({}))).collect())
            .filter(|v: &BTreeMap<String, serde_json::Value>| !v.is_empty()),
        ..Default::default()
    };
    let host_config = HostConfig {
        auto_remove: a.rm,
        binds: Some(binds),
        restart_policy: restart_policy(&a.restart)?,
        resources: engine_docker_api::Resources {
            memory_swappiness: a.memory_swappiness,
            oom_kill_disable: a.oom_kill_disable.then_some(true),
            blkio_weight_device: given(&a.blkio_weight_device)
                .map(|d| d.iter().map(|d| weight_device(d)).collect::<Result<Vec<_>>>())
                .transpose()?,
            blkio_device_read_bps: throttle_devices(&a.device_read_bps, true)?,
            blkio_device_write_bps: throttle_devices(&a.device_write_bps, true)?,
            blkio_device_read_iops: throttle_devices(&a.device_read_iops, false)?,
            blkio_device_write_iops: throttle_devices(&a.device_write_iops, false)?,
            cpu_count: a.cpu_count.unwrap_or(0),
            cpu_percent: a.cpu_percent.unwrap_or(0),
            io_maximum_bandwidth: a.io_maxbandwidth.as_deref().map(parse_bytes).transpose()?.unwrap_or(0) as u64,
            io_maximum_iops: a.io_maxiops.unwrap_or(0),
            device_requests: given(&a.gpus)
                .map(|g| g.iter().map(|g| gpu_request(g)).collect::<Result<Vec<_>>>())
                .transpose()?,
            ..a.resources.resources()?
        },
        readonly_rootfs: a.read_only,
        pid_mode: a.pid.clone().unwrap_or_default(),
        ipc_mode: a.ipc.clone().unwrap_or_default(),
        uts_mode: a.uts.clone().unwrap_or_default(),
        cap_add: Some(a.cap_add.clone()),
        cap_drop: Some(a.cap_drop.clone()),
        privileged: a.privileged,
        devices: given(&a.device).map(|d| d.iter().map(|d| parse_device(d)).collect::<Result<Vec<_>>>()).transpose()?,
        device_cgroup_rules: given(&a.device_cgroup_rule),
        security_opt: Some(security_opts(&a.security_opt)?),
        tmpfs: Some(tmpfs),
        network_mode: a.network.clone().unwrap_or_else(|| "default".into()),
        init: a.init.then_some(true),
        port_bindings: Some(bindings.into_iter().map(|(k, v)| (k, Some(v))).collect()),
        publish_all_ports: a.publish_all,
        extra_hosts: given(&a.add_host),
        links: given(&a.link),
        dns: given(&a.dns),
        dns_search: given(&a.dns_search),
        dns_options: given(&a.dns_option),
        log_config: (a.log_driver.is_some() || !a.log_opt.is_empty())
            .then(|| -> Result<engine_docker_api::LogConfig> {
                let config = a
                    .log_opt
                    .iter()
                    .map(|o| match o.split_once('=') {
                        Some((k, v)) => Ok((k.to_string(), v.to_string())),
                        None => bail!("invalid log option {o:?}: want key=value"),
                    })
                    .collect::<Result<_>>()?;
                Ok(engine_docker_api::LogConfig { typ: a.log_driver.clone().unwrap_or_default(), config })
            })
            .transpose()?,
        volumes_from: given(&a.volumes_from),
        ulimits: given(&a.ulimit).map(|u| u.iter().map(|u| parse_ulimit(u)).collect::<Result<Vec<_>>>()).transpose()?,
        shm_size: a.shm_size.as_deref().map(parse_bytes).transpose()?.unwrap_or(0),
        sysctls: (!sysctls.is_empty()).then_some(sysctls),
        mounts: given(&a.mount).map(|m| m.iter().map(|m| parse_mount(m)).collect::<Result<Vec<_>>>()).transpose()?,
        group_add: given(&a.group_add),
        oom_score_adj: a.oom_score_adj.unwrap_or(0),
        cgroup_parent: a.cgroup_parent.clone().unwrap_or_default(),
        container_id_file: a.cidfile.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        userns_mode: a.userns.clone().unwrap_or_default(),
        cgroupns_mode: a.cgroupns.clone().unwrap_or_default(),
        runtime: a.runtime.clone().unwrap_or_default(),
        isolation: a.isolation.clone().unwrap_or_default(),
        volume_driver: a.volume_driver.clone().unwrap_or_default(),
        storage_opt: key_values(&a.storage_opt, "--storage-opt", false)?,
        annotations: key_values(&a.annotation, "--annotation", true)?,
        ..Default::default()
    };
    let addressed = a.ip.is_some() || a.ip6.is_some() || !a.link_local_ip.is_empty();
    let networking_config = (addressed || !a.network_alias.is_empty() || a.mac_address.is_some()).then(|| {
        let net = a.network.clone().filter(|n| !n.is_empty() && n != "default").unwrap_or_else(|| "bridge".into());
        let endpoint = EndpointSettings {
            aliases: Some(a.network_alias.clone()),
            ipam_config: addressed.then(|| EndpointIpam {
                ipv4_address: a.ip.clone().unwrap_or_default(),
                ipv6_address: a.ip6.clone().unwrap_or_default(),
                link_local_ips: (!a.link_local_ip.is_empty()).then(|| a.link_local_ip.clone()),
            }),
            mac_address: a.mac_address.clone().unwrap_or_default(),
            ..Default::default()
        };
        NetworkingConfig { endpoints_config: Some(BTreeMap::from([(net, endpoint)])) }
    });
    Ok(ContainerCreateBody { config, host_config: Some(host_config), networking_config })
}

/// Whether `run` attaches `stream`: the `-a` streams when given, else stdout and stderr, and
/// stdin with `-i` (as the Docker CLI decides).
fn attached(a: &RunArgs, stream: &str) -> bool {
    (stream == "stdin" && a.interactive)
        || a.attach.iter().any(|s| s == stream)
        || (a.attach.is_empty() && stream != "stdin")
}

/// One `-a` stream, as the Docker CLI takes it (any case).
fn attach_stream(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    match lower.as_str() {
        "stdin" | "stdout" | "stderr" => Ok(lower),
        _ => Err("valid streams are STDIN, STDOUT and STDERR".into()),
    }
}

/// `key=value` options (`--storage-opt`, `--annotation`) as a map; with `bare`, a `key` alone
/// has an empty value (the Docker CLI's map options).
fn key_values(given: &[String], flag: &str, bare: bool) -> Result<BTreeMap<String, String>> {
    given
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            None if bare && !kv.is_empty() => Ok((kv.to_string(), String::new())),
            _ => bail!("invalid argument {kv:?} for \"{flag}\" flag: invalid key value pair format"),
        })
        .collect()
}

/// A device path of `--blkio-weight-device` and the throttle flags: under /dev, as the Docker
/// CLI checks it.
fn device_and_value(s: &str) -> Result<(&str, &str)> {
    match s.split_once(':') {
        Some((path, _)) if !path.starts_with("/dev/") => bail!("bad format for device path: {s}"),
        Some((path, value)) if !path.is_empty() => Ok((path, value)),
        _ => bail!("bad format: {s}"),
    }
}

/// `--blkio-weight-device /dev/sda:200` (10 to 1000, or 0).
fn weight_device(s: &str) -> Result<engine_docker_api::WeightDevice> {
    let (path, weight) = device_and_value(s)?;
    match weight.parse::<u16>() {
        Ok(w) if w == 0 || (10..=1000).contains(&w) => {
            Ok(engine_docker_api::WeightDevice { path: path.into(), weight: w })
        }
        _ => bail!("invalid weight for device: {s}"),
    }
}

/// `--device-{read,write}-{bps,iops} /dev/sda:rate`: bytes with a unit for bps, a count for iops.
fn throttle_devices(given: &[String], bytes: bool) -> Result<Option<Vec<engine_docker_api::ThrottleDevice>>> {
    let one = |s: &String| -> Result<engine_docker_api::ThrottleDevice> {
        let (path, rate) = device_and_value(s)?;
        let rate = if bytes {
            engine_util::size::parse_bytes(rate).ok().and_then(|r| u64::try_from(r).ok()).ok_or_else(|| {
                anyhow!("invalid rate for device: {s}. The correct format is <device-path>:<number>[<unit>]. Number must be a positive integer. Unit is optional and can be kb, mb, or gb")
            })?
        } else {
            rate.parse::<u64>().map_err(|_| {
                anyhow!("invalid rate for device: {s}. The correct format is <device-path>:<number>. Number must be a positive integer")
            })?
        };
        Ok(engine_docker_api::ThrottleDevice { path: path.into(), rate })
    };
    (!given.is_empty()).then(|| given.iter().map(one).collect()).transpose()
}

/// `--gpus all|N|key=value,…` as the Docker CLI reads it into a device request (count -1 is
/// all; capabilities always include `gpu`).
fn gpu_request(s: &str) -> Result<engine_docker_api::DeviceRequest> {
    let count = |v: &str| -> Result<i64> {
        if v == "all" {
            return Ok(-1);
        }
        v.parse().map_err(|_| anyhow!("invalid count ({v}): value must be either \"all\" or an integer"))
    };
    let mut req = engine_docker_api::DeviceRequest::default();
    let (mut seen, mut counted) = (Vec::new(), false);
    // a CSV field may quote a comma-separated list: device="0,1"
    let mut fields = Vec::new();
    let (mut field, mut quoted) = (String::new(), false);
    for ch in s.chars() {
        match ch {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    for f in &fields {
        let (key, value) = match f.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (f.as_str(), None),
        };
        if seen.contains(&key) {
            bail!("gpu request key '{key}' can be specified only once");
        }
        seen.push(key);
        match (key, value) {
            (k, None) => {
                if seen.contains(&"count") {
                    bail!("gpu request key 'count' can be specified only once");
                }
                seen.push("count");
                req.count = count(k)?;
                counted = true;
            }
            ("driver", Some(v)) => req.driver = v.into(),
            ("count", Some(v)) => {
                req.count = count(v)?;
                counted = true;
            }
            ("device", Some(v)) => req.device_ids = Some(v.split(',').map(str::to_string).collect()),
            ("capabilities", Some(v)) => {
                req.capabilities = Some(vec![v.split(',').map(str::to_string).chain(["gpu".to_string()]).collect()])
            }
            ("options", Some(v)) => {
                req.options = Some(
                    v.split(',')
                        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
                        .map(|(k, v)| (k.into(), v.into()))
                        .collect(),
                )
            }
            (k, _) => bail!("unexpected key '{k}' in '{f}'"),
        }
    }
    if !counted && req.device_ids.is_none() {
        req.count = 1;
    }
    req.options.get_or_insert_with(Default::default);
    req.capabilities.get_or_insert_with(|| vec![vec!["gpu".to_string()]]);
    Ok(req)
}

/// `--device host[:container][:permissions]` as the Docker CLI reads it: a second field of
/// only `r`, `w` and `m` is the permissions; the container's path is the host's by default.
fn parse_device(d: &str) -> Result<engine_docker_api::DeviceMapping> {
    let is_mode = |m: &str| !m.is_empty() && m.len() <= 3 && m.chars().all(|c| "rwm".contains(c));
    let (host, container, permissions) = match d.split(':').collect::<Vec<_>>()[..] {
        [host] => (host, host, "rwm"),
        [host, mode] if is_mode(mode) => (host, host, mode),
        [host, container] => (host, container, "rwm"),
        [host, container, mode] if is_mode(mode) => (host, container, mode),
        _ => bail!("invalid device specification: {d}"),
    };
    if host.is_empty() || !container.starts_with('/') {
        bail!("invalid device specification: {d}");
    }
    Ok(engine_docker_api::DeviceMapping {
        path_on_host: host.into(),
        path_in_container: container.into(),
        cgroup_permissions: permissions.into(),
    })
}

/// `-p` and `--expose` as Docker's `ExposedPorts` keys and `PortBindings`:
/// `8080:80`, `127.0.0.1:8080:80/udp`, `127.0.0.1::80`, `80`, and ranges `8000-8001:80-81`.
pub fn parse_publish(
    publish: &[String],
    expose: &[String],
) -> Result<(Vec<String>, BTreeMap<String, Vec<PortBinding>>)> {
    let range = |s: &str| -> Result<(u16, u16)> {
        let bad = || anyhow!("invalid port {s:?}");
        match s.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u16, u16) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                Ok((a, b))
            }
            None => {
                let p = s.parse().map_err(|_| bad())?;
                Ok((p, p))
            }
        }
    };
    let mut exposed = Vec::new();
    let mut bindings: BTreeMap<String, Vec<PortBinding>> = BTreeMap::new();
    for e in expose {
        let (ports, proto) = e.split_once('/').unwrap_or((e, "tcp"));
        let (a, b) = range(ports)?;
        for p in a..=b {
            exposed.push(format!("{p}/{proto}"));
        }
    }
    for spec in publish {
        let (rest, proto) = match spec.rsplit_once('/') {
            Some((r, p)) if matches!(p, "tcp" | "udp") => (r, p),
            Some(_) => bail!("invalid proto in {spec:?}: want tcp or udp"),
            None => (spec.as_str(), "tcp"),
        };
        // an IPv6 host address is written in brackets: [::1]:8080:80
        let (ip, rest) = match rest.strip_prefix('[') {
            Some(r) => {
                let (ip, r) = r.split_once("]:").ok_or_else(|| anyhow!("invalid publish spec {spec:?}"))?;
                (ip.to_string(), r.to_string())
            }
            None => match rest.matches(':').count() {
                2 => {
                    let (ip, r) = rest.split_once(':').unwrap_or(("", rest));
                    (ip.to_string(), r.to_string())
                }
                _ => (String::new(), rest.to_string()),
            },
        };
        let (host, container) = match rest.split_once(':') {
            Some((h, c)) => (h.to_string(), c.to_string()),
            None => (String::new(), rest.clone()),
        };
        let (c1, c2) = range(&container)?;
        let host_range = if host.is_empty() { None } else { Some(range(&host)?) };
        // host range as wide as the container's: port to port; a wider host range for one
        // container port: any free port of it (Docker's `8000-8010:80`), its first here
        if let Some((h1, h2)) = host_range {
            if h2 - h1 != c2 - c1 && c1 != c2 && h1 != h2 {
                bail!("invalid ranges in {spec:?}: host and container ranges differ in size");
            }
        }
        for (i, p) in (c1..=c2).enumerate() {
            let key = format!("{p}/{proto}");
            let host_port = match host_range {
                Some((h1, h2)) if h2 - h1 == c2 - c1 => (h1 + i as u16).to_string(),
                Some((h1, _)) => h1.to_string(),
                None => String::new(),
            };
            if !exposed.contains(&key) {
                exposed.push(key.clone());
            }
            bindings.entry(key).or_default().push(PortBinding { host_ip: ip.clone(), host_port });
        }
    }
    Ok((exposed, bindings))
}

/// `engine port CONTAINER [PRIVATE_PORT[/PROTO]]`.
pub async fn port(c: &Client, container: &str, private: Option<&str>) -> Result<i32> {
    let v = c.get(&format!("/containers/{}/json", urlencode(container))).await?;
    let want = private.map(|p| if p.contains('/') { p.to_string() } else { format!("{p}/tcp") });
    let mut found = false;
    for (key, binds) in v["NetworkSettings"]["Ports"].as_object().into_iter().flatten() {
        if want.as_ref().is_some_and(|w| w != key) {
            continue;
        }
        for b in binds.as_array().into_iter().flatten() {
            found = true;
            let ip = b["HostIp"].as_str().unwrap_or("");
            let host = if ip.contains(':') { format!("[{ip}]") } else { ip.to_string() };
            let port = b["HostPort"].as_str().unwrap_or("");
            if want.is_some() {
                println!("{host}:{port}");
            } else {
                println!("{key} -> {host}:{port}");
            }
        }
    }
    if let (Some(w), false) = (want, found) {
        bail!("no public port '{w}' published for {container}");
    }
    Ok(0)
}

/// The PORTS column of `ps`: `127.0.0.1:8080->80/tcp, 81/tcp`.
pub fn ports_column(ports: &Value) -> String {
    let mut out: Vec<String> = ports
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let (private, proto) = (p["PrivatePort"].as_u64().unwrap_or(0), p["Type"].as_str().unwrap_or("tcp"));
            match p["PublicPort"].as_u64() {
                Some(public) => format!("{}:{public}->{private}/{proto}", p["IP"].as_str().unwrap_or("")),
                None => format!("{private}/{proto}"),
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out.join(", ")
}

/// `-e NAME` takes the value from the CLI's own environment, as Docker does.
fn expand_env(e: &str) -> String {
    if e.contains('=') {
        e.to_string()
    } else {
        match std::env::var(e) {
            Ok(v) => format!("{e}={v}"),
            Err(_) => e.to_string(),
        }
    }
}

async fn create(c: &Client, a: &RunArgs) -> Result<String> {
    // --cidfile: made before the create (an existing one stops it, as Docker's CLI), the id
    // written once there is one, gone again when the create fails
    let cidfile = match &a.cidfile {
        Some(path) => Some(
            std::fs::OpenOptions::new().write(true).create_new(true).open(path).map(|f| (f, path)).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    anyhow!(
                        "container ID file found, make sure the other container isn't running or delete {}",
                        path.display()
                    )
                } else {
                    anyhow!("failed to create the container ID file {}: {e}", path.display())
                }
            })?,
        ),
        None => None,
    };
    let made = create_container(c, a).await;
    match (cidfile, &made) {
        (Some((mut file, _)), Ok(id)) => {
            use std::io::Write as _;
            file.write_all(id.as_bytes()).context("writing the container ID file")?;
        }
        (Some((_, path)), Err(_)) => {
            let _ = std::fs::remove_file(path);
        }
        (None, _) => {}
    }
    made
}

/// Where `--use-api-socket` puts the registry credentials in the container (its
/// `DOCKER_CONFIG`), as the Docker CLI does.
const CONFIG_DIR_IN_CONTAINER: &str = "/run/secrets/docker";

/// `--use-api-socket`: the engine's API socket bound at /var/run/docker.sock and, unless the
/// command sets DOCKER_CONFIG itself, the CLI's registry credentials, to copy in once the
/// container exists (returned).
fn use_api_socket(c: &Client, body: &mut ContainerCreateBody) -> Result<Option<Vec<u8>>> {
    let hc = body.host_config.get_or_insert_with(Default::default);
    hc.mounts.get_or_insert_with(Vec::new).push(engine_docker_api::Mount {
        typ: "bind".into(),
        source: c.socket().display().to_string(),
        target: "/var/run/docker.sock".into(),
        bind_options: Some(Default::default()),
        ..Default::default()
    });
    let env = body.config.env.get_or_insert_with(Vec::new);
    if env.iter().any(|e| e.starts_with("DOCKER_CONFIG=")) {
        return Ok(None);
    }
    let credentials = crate::registry::credentials_config().context("resolving credentials failed")?;
    if credentials.is_some() {
        env.push(format!("DOCKER_CONFIG={CONFIG_DIR_IN_CONTAINER}"));
    }
    Ok(credentials)
}

/// Copies `config` into container `id` as `config.json` in its DOCKER_CONFIG (0600).
async fn copy_credentials(c: &Client, id: &str, config: &[u8]) -> Result<()> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(config.len() as u64);
    header.set_mode(0o600);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    let path = format!("{}/config.json", CONFIG_DIR_IN_CONTAINER.trim_start_matches('/'));
    tar.append_data(&mut header, path, config)?;
    let body = client::bytes_body(tar.into_inner()?);
    c.send(
        hyper::Method::PUT,
        &format!("/containers/{}/archive?path=/", urlencode(id)),
        body,
        Some("application/x-tar"),
    )
    .await
    .map(drop)
}

async fn create_container(c: &Client, a: &RunArgs) -> Result<String> {
    let mut body = create_body(a)?;
    let credentials = if a.use_api_socket { use_api_socket(c, &mut body)? } else { None };
    let body = serde_json::to_value(body)?;
    let path = match &a.name {
        Some(n) => format!("/containers/create?name={}", urlencode(n)),
        None => "/containers/create".into(),
    };
    if a.pull == "always" {
        crate::registry::pull_image(c, &a.image, a.platform.as_deref(), a.quiet, true).await?;
    }
    let resp = match c.post(&path, Some(&body)).await {
        Err(e)
            if e.downcast_ref::<client::DaemonError>()
                .is_some_and(|d| d.status == 404 && d.message.starts_with("No such image")) =>
        {
            let shown = if a.image.contains(['@']) || a.image.rsplit('/').next().is_some_and(|l| l.contains(':')) {
                a.image.clone()
            } else {
                format!("{}:latest", a.image)
            };
            if !a.quiet {
                eprintln!("Unable to find image '{shown}' locally");
            }
            if a.pull == "never" {
                return Err(e);
            }
            // As docker run: pull it (progress on stderr), then create.
            crate::registry::pull_image(c, &a.image, a.platform.as_deref(), a.quiet, true).await?;
            c.post(&path, Some(&body)).await?
        }
        r => r?,
    };
    let v = client::read_json(resp).await?;
    let id = v["Id"].as_str().map(str::to_string).ok_or_else(|| anyhow!("the daemon returned no container id"))?;
    if let Some(config) = credentials {
        if let Err(e) = copy_credentials(c, &id, &config).await {
            eprintln!("WARNING: injecting docker config.json into container failed: {e:#}");
        }
    }
    Ok(id)
}

pub async fn create_cmd(c: &Client, a: RunArgs) -> Result<i32> {
    println!("{}", create(c, &a).await?);
    Ok(0)
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A terminal in raw mode for the length of an attached `-t` session.
struct RawTerminal(Option<nix::sys::termios::Termios>);

impl RawTerminal {
    fn enable() -> Self {
        use nix::sys::termios::*;
        let stdin = std::io::stdin();
        match tcgetattr(&stdin) {
            Ok(orig) => {
                let mut raw = orig.clone();
                cfmakeraw(&mut raw);
                let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
                RawTerminal(Some(orig))
            }
            Err(_) => RawTerminal(None),
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, t);
        }
    }
}

pub(crate) fn terminal_size() -> Option<(u16, u16)> {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills the winsize we pass.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Streams an attached container: output to stdout/stderr (demultiplexed without a
/// terminal), stdin to the container with `-i`.
async fn stream_attached(io: client::Upgraded, tty: bool, stdin: bool) -> Result<()> {
    let (mut rd, mut wr) = tokio::io::split(io);
    if stdin {
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 8192];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = wr.shutdown().await;
                        return;
                    }
                    Ok(n) => {
                        if wr.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    let mut demux = Demux::default();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if tty {
            let mut out = std::io::stdout();
            out.write_all(&buf[..n])?;
            out.flush()?;
        } else {
            demux.push(&buf[..n], |stream, payload| {
                if stream == 2 {
                    let _ = std::io::stderr().write_all(payload);
                } else {
                    let mut out = std::io::stdout();
                    let _ = out.write_all(payload);
                    let _ = out.flush();
                }
            });
        }
    }
    Ok(())
}

/// Docker's exit code for a `run` whose container did not start (its CLI reads the daemon's words,
/// case-sensitively): 127 the program is not there, 126 it cannot be run, 125 any other error.
pub fn run_failure_code(msg: &str) -> i32 {
    if msg.contains("executable file not found") || msg.contains("no such file or directory") {
        127
    } else if msg.contains("permission denied") || msg.contains("is a directory") {
        126
    } else {
        125
    }
}

pub async fn run(c: &Client, a: RunArgs) -> Result<i32> {
    if a.detach && a.rm && a.restart != "no" {
        bail!("conflicting options: cannot specify both --restart and --rm");
    }
    if a.detach && !a.attach.is_empty() {
        bail!("conflicting options: cannot specify both --attach and --detach");
    }
    let id = match create(c, &a).await {
        Ok(id) => id,
        Err(e) => {
            eprintln!("engine: {e:#}");
            return Ok(125);
        }
    };
    // as the Docker CLI: signals this command gets go to the container (a terminal sends its
    // own), from the create on
    if a.sig_proxy && !a.tty {
        forward_signals(c, &id);
    }
    if a.detach {
        if let Err(e) = c.post(&format!("/containers/{id}/start"), None).await {
            eprintln!("engine: {e:#}");
            return Ok(run_failure_code(&format!("{e:#}")));
        }
        println!("{id}");
        return Ok(0);
    }
    let stdin = attached(&a, "stdin");
    let attach = format!(
        "/containers/{id}/attach?stream=1&stdout={}&stderr={}&stdin={}{}",
        attached(&a, "stdout") as u8,
        attached(&a, "stderr") as u8,
        stdin as u8,
        a.detach_keys.as_deref().map(|k| format!("&detachKeys={}", urlencode(k))).unwrap_or_default()
    );
    let io = c.hijack(&attach, None).await?;
    if !attached(&a, "stdout") && !attached(&a, "stderr") {
        // nothing of the container's shows: its id does, as the Docker CLI prints it
        println!("{id}");
    }
    // Wait is asked before the start, so the exit cannot be missed.
    let condition = if a.rm { "removed" } else { "next-exit" };
    let wait = c.post(&format!("/containers/{id}/wait?condition={condition}"), None).await?;
    let raw = (a.tty && nix::unistd::isatty(std::io::stdin()).unwrap_or(false)).then(RawTerminal::enable);
    if let Err(e) = c.post(&format!("/containers/{id}/start"), None).await {
        drop(raw);
        if a.rm {
            // engined removes it itself (as dockerd); an older daemon may not have
            let _ = c.delete(&format!("/containers/{id}?force=1")).await;
        }
        eprintln!("engine: {e:#}");
        return Ok(run_failure_code(&format!("{e:#}")));
    }
    if a.tty {
        if let Some((h, w)) = terminal_size() {
            let _ = c.post(&format!("/containers/{id}/resize?h={h}&w={w}"), None).await;
        }
    }
    stream_attached(io, a.tty, stdin).await?;
    drop(raw);
    let status = client::read_json(wait).await?;
    if let Some(msg) = status["Error"]["Message"].as_str() {
        eprintln!("engine: {msg}");
    }
    Ok(status["StatusCode"].as_i64().unwrap_or(125) as i32)
}

/// The signals a command proxies to its container (`--sig-proxy`): all a process can catch
/// but those about the command itself (a child, a closed pipe, its window, its reads and
/// writes of a terminal from the background) and the faults of its own instructions (SIGSEGV,
/// SIGBUS, SIGFPE, SIGILL, SIGTRAP), as the Docker CLI forwards them.
const PROXIED_SIGNALS: &[nix::sys::signal::Signal] = {
    use nix::sys::signal::Signal::*;
    &[
        SIGHUP, SIGINT, SIGQUIT, SIGABRT, SIGUSR1, SIGUSR2, SIGALRM, SIGTERM, SIGSTKFLT, SIGCONT, SIGTSTP, SIGXCPU,
        SIGXFSZ, SIGVTALRM, SIGPROF, SIGIO, SIGPWR, SIGSYS,
    ]
};

/// Sends each proxied signal this process receives to container `id` (`POST kill`), for as
/// long as the command runs.
fn forward_signals(c: &Client, id: &str) {
    for &sig in PROXIED_SIGNALS {
        let Ok(mut stream) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(sig as i32)) else {
            continue;
        };
        let (c, path) = (c.clone(), format!("/containers/{}/kill?signal={}", urlencode(id), sig.as_str()));
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                // a container that has gone answers 409: nothing to do then
                let _ = c.post(&path, None).await;
            }
        });
    }
}

#[derive(clap::Args, Debug)]
pub struct StartArgs {
    /// Attach STDOUT/STDERR and forward signals.
    #[arg(short = 'a', long)]
    pub attach: bool,
    /// Proxy received signals to the process (with --attach, without a terminal).
    #[arg(long = "sig-proxy", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub sig_proxy: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

pub async fn start(c: &Client, a: StartArgs) -> Result<i32> {
    if a.attach {
        let [name] = a.containers.as_slice() else { bail!("you cannot start and attach multiple containers at once") };
        let info = client::read_json(
            c.send(hyper::Method::GET, &format!("/containers/{}/json", urlencode(name)), client::empty_body(), None)
                .await?,
        )
        .await?;
        let tty = info["Config"]["Tty"].as_bool().unwrap_or(false);
        let io = c.hijack(&format!("/containers/{}/attach?stream=1&stdout=1&stderr=1", urlencode(name)), None).await?;
        if a.sig_proxy && !tty {
            forward_signals(c, name);
        }
        let wait = c.post(&format!("/containers/{}/wait?condition=next-exit", urlencode(name)), None).await?;
        c.post(&format!("/containers/{}/start", urlencode(name)), None).await?;
        stream_attached(io, tty, false).await?;
        let status = client::read_json(wait).await?;
        return Ok(status["StatusCode"].as_i64().unwrap_or(125) as i32);
    }
    each(
        &a.containers,
        |n| async move { c.post(&format!("/containers/{}/start", urlencode(&n)), None).await.map(drop) },
    )
    .await
}

/// Runs `f` for each name, printing the name on success and the error otherwise (exit 1 if
/// any failed), as Docker's multi-container commands do.
/// Inspects each named object at `<base>/<name>`: a JSON array, or `format` per object; a
/// name that fails is reported and the others still shown (exit 1).
pub async fn inspect_each(c: &Client, base: &str, names: &[String], format: Option<&str>) -> Result<i32> {
    let mut out = Vec::new();
    let mut failed = false;
    for n in names {
        match c.get(&format!("{base}/{}", urlencode(n))).await {
            Ok(v) => out.push(v),
            Err(e) => {
                eprintln!("{e:#}");
                failed = true;
            }
        }
    }
    match format {
        Some(f) => out.iter().for_each(|v| println!("{}", format::template(f, v))),
        None => println!("{}", serde_json::to_string_pretty(&out)?),
    }
    Ok(failed as i32)
}

/// Runs `f` for each name, printing the name when it succeeds (`rm` and friends).
pub async fn each<F, Fut>(names: &[String], f: F) -> Result<i32>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut failed = false;
    for n in names {
        match f(n.clone()).await {
            Ok(()) => println!("{n}"),
            Err(e) => {
                eprintln!("{e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

#[derive(clap::Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait before killing the container.
    #[arg(short = 't', long = "time")]
    pub time: Option<i64>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

pub async fn stop(c: &Client, a: StopArgs, verb: &str) -> Result<i32> {
    let t = a.time.map(|t| format!("?t={t}")).unwrap_or_default();
    each(&a.containers, |n| {
        let t = t.clone();
        async move { c.post(&format!("/containers/{}/{verb}{t}", urlencode(&n)), None).await.map(drop) }
    })
    .await
}

/// `POST /containers/{name}/{action}` for each name (`pause`, `unpause`).
pub async fn post_each(c: &Client, names: &[String], action: &str) -> Result<i32> {
    each(names, |n| async move { c.post(&format!("/containers/{}/{action}", urlencode(&n)), None).await.map(drop) })
        .await
}

#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub resources: ResourceArgs,
    /// Restart policy to apply when a container exits.
    #[arg(long)]
    pub restart: Option<String>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// The resource limits of `run`, `create` and `update` (Docker's flags).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ResourceArgs {
    /// Memory limit (e.g. 64m, 1g).
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// Number of CPUs.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// CPU shares (relative weight).
    #[arg(short = 'c', long)]
    pub cpu_shares: Option<i64>,
    /// Limit CPU CFS (Completely Fair Scheduler) period.
    #[arg(long)]
    pub cpu_period: Option<i64>,
    /// Limit CPU CFS (Completely Fair Scheduler) quota.
    #[arg(long)]
    pub cpu_quota: Option<i64>,
    /// Tune container pids limit (-1 for unlimited).
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// Swap limit equal to memory plus swap: -1 to enable unlimited swap.
    #[arg(long)]
    pub memory_swap: Option<String>,
    /// Memory soft limit.
    #[arg(long)]
    pub memory_reservation: Option<String>,
    /// CPUs in which to allow execution (0-3, 0,1).
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// MEMs in which to allow execution (0-3, 0,1).
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Block IO (relative weight), between 10 and 1000, or 0 to disable.
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    /// Kernel memory limit (deprecated; refused).
    #[arg(long)]
    pub kernel_memory: Option<String>,
    /// Limit CPU real-time period in microseconds.
    #[arg(long = "cpu-rt-period")]
    pub cpu_rt_period: Option<i64>,
    /// Limit CPU real-time runtime in microseconds.
    #[arg(long = "cpu-rt-runtime")]
    pub cpu_rt_runtime: Option<i64>,
}

impl ResourceArgs {
    /// As the API's `Resources` (0 or none: not given).
    pub fn resources(&self) -> Result<Resources> {
        Ok(Resources {
            memory: self.memory.as_deref().map(parse_bytes).transpose()?.unwrap_or(0),
            nano_cpus: match self.cpus {
                Some(c) if c < 0.0 => bail!("invalid argument {c} for \"--cpus\" flag"),
                Some(c) => (c * 1e9) as i64,
                None => 0,
            },
            cpu_shares: self.cpu_shares.unwrap_or(0),
            cpu_period: self.cpu_period.unwrap_or(0),
            cpu_quota: self.cpu_quota.unwrap_or(0),
            pids_limit: self.pids_limit,
            memory_swap: match self.memory_swap.as_deref() {
                Some("-1") => -1,
                other => other.map(parse_bytes).transpose()?.unwrap_or(0),
            },
            memory_reservation: self.memory_reservation.as_deref().map(parse_bytes).transpose()?.unwrap_or(0),
            cpuset_cpus: self.cpuset_cpus.clone().unwrap_or_default(),
            cpuset_mems: self.cpuset_mems.clone().unwrap_or_default(),
            blkio_weight: self.blkio_weight.unwrap_or(0),
            kernel_memory: self.kernel_memory.as_deref().map(parse_bytes).transpose()?.unwrap_or(0),
            cpu_realtime_period: self.cpu_rt_period.unwrap_or(0),
            cpu_realtime_runtime: self.cpu_rt_runtime.unwrap_or(0),
            ..Default::default()
        })
    }
}

/// `engine update`: new limits and restart policy for containers, running or not.
pub async fn update(c: &Client, a: UpdateArgs) -> Result<i32> {
    let body = UpdateConfig {
        resources: a.resources.resources()?,
        restart_policy: a.restart.as_deref().map(restart_policy).transpose()?.unwrap_or_default(),
    };
    let body = serde_json::to_value(&body)?;
    each(&a.containers, |n| {
        let body = body.clone();
        async move { c.post(&format!("/containers/{}/update", urlencode(&n)), Some(&body)).await.map(drop) }
    })
    .await
}

/// `engine container …`: the container commands under Docker's management command.
#[derive(clap::Subcommand, Debug)]
pub enum ContainerCommand {
    /// List containers.
    #[command(visible_alias = "ps", visible_alias = "list")]
    Ls(PsArgs),
    /// Display detailed information on one or more containers.
    Inspect(InspectArgs),
    /// Start one or more stopped containers.
    Start(StartArgs),
    /// Stop one or more running containers.
    Stop(StopArgs),
    /// Restart one or more containers.
    Restart(StopArgs),
    /// Kill one or more running containers.
    Kill(KillArgs),
    /// Pause all processes within one or more containers.
    Pause(Names),
    /// Unpause all processes within one or more containers.
    Unpause(Names),
    /// Fetch the logs of a container.
    Logs(LogsArgs),
    /// Remove one or more containers.
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Update configuration of one or more containers.
    Update(UpdateArgs),
    /// Remove all stopped containers.
    Prune(PruneArgs),
    /// Inspect changes to files or directories on a container's filesystem.
    Diff(crate::files::DiffArgs),
    /// Export a container's filesystem as a tar archive.
    Export(crate::files::ExportArgs),
    /// Create a new image from a container's changes.
    Commit(crate::files::CommitArgs),
    /// Copy files/folders between a container and the local filesystem.
    Cp(crate::files::CpArgs),
}

pub async fn container(c: &Client, cmd: ContainerCommand) -> Result<i32> {
    match cmd {
        ContainerCommand::Ls(a) => ps(c, a).await,
        ContainerCommand::Inspect(a) => inspect(c, a).await,
        ContainerCommand::Start(a) => start(c, a).await,
        ContainerCommand::Stop(a) => stop(c, a, "stop").await,
        ContainerCommand::Restart(a) => stop(c, a, "restart").await,
        ContainerCommand::Kill(a) => kill(c, a).await,
        ContainerCommand::Pause(a) => post_each(c, &a.containers, "pause").await,
        ContainerCommand::Unpause(a) => post_each(c, &a.containers, "unpause").await,
        ContainerCommand::Logs(a) => logs(c, a).await,
        ContainerCommand::Rm(a) => rm(c, a).await,
        ContainerCommand::Update(a) => update(c, a).await,
        ContainerCommand::Prune(a) => prune(c, a).await,
        ContainerCommand::Diff(a) => crate::files::diff(c, a).await,
        ContainerCommand::Export(a) => crate::files::export(c, a).await,
        ContainerCommand::Commit(a) => crate::files::commit(c, a).await,
        ContainerCommand::Cp(a) => crate::files::cp(c, a).await,
    }
}

#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// Do not prompt for confirmation.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Provide filter values (e.g. "until=<timestamp>", "label=<key>=<value>").
    #[arg(long)]
    pub filter: Vec<String>,
}

/// `engine container prune`: removes every stopped container the filters pick.
pub async fn prune(c: &Client, a: PruneArgs) -> Result<i32> {
    if !a.force {
        anyhow::bail!("this removes all stopped containers: pass -f to confirm");
    }
    let v = client::read_json(c.post(&format!("/containers/prune?filters={}", filters_param(&a.filter)?), None).await?)
        .await?;
    let deleted = v["ContainersDeleted"].as_array().cloned().unwrap_or_default();
    if !deleted.is_empty() {
        println!("Deleted Containers:");
        deleted.iter().for_each(|id| println!("{}", id.as_str().unwrap_or("")));
        println!();
    }
    println!("Total reclaimed space: {}", format::size(v["SpaceReclaimed"].as_u64().unwrap_or(0)));
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct KillArgs {
    /// Signal to send to the container.
    #[arg(short = 's', long, default_value = "KILL")]
    pub signal: String,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

pub async fn kill(c: &Client, a: KillArgs) -> Result<i32> {
    let sig = urlencode(&a.signal);
    each(&a.containers, |n| {
        let sig = sig.clone();
        async move { c.post(&format!("/containers/{}/kill?signal={sig}", urlencode(&n)), None).await.map(drop) }
    })
    .await
}

#[derive(clap::Args, Debug)]
pub struct RmArgs {
    /// Force the removal of a running container (uses SIGKILL).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Remove anonymous volumes associated with the container.
    #[arg(short = 'v', long)]
    pub volumes: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

pub async fn rm(c: &Client, a: RmArgs) -> Result<i32> {
    let q = format!("?force={}&v={}", a.force as u8, a.volumes as u8);
    each(&a.containers, |n| {
        let q = q.clone();
        async move { c.delete(&format!("/containers/{}{q}", urlencode(&n))).await.map(drop) }
    })
    .await
}

#[derive(clap::Args, Debug)]
pub struct Names {
    #[arg(required = true)]
    pub containers: Vec<String>,
}

pub async fn wait(c: &Client, a: Names) -> Result<i32> {
    let mut failed = false;
    for n in &a.containers {
        match c.post(&format!("/containers/{}/wait", urlencode(n)), None).await {
            Ok(r) => println!("{}", client::read_json(r).await?["StatusCode"]),
            Err(e) => {
                eprintln!("{e:#}");
                failed = true;
            }
        }
    }
    Ok(failed as i32)
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// Follow log output.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Number of lines to show from the end of the logs ("all" for every line).
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Show logs since a timestamp (unix seconds) or relative (e.g. 42m).
    #[arg(long)]
    pub since: Option<String>,
    /// Show timestamps.
    #[arg(short = 't', long)]
    pub timestamps: bool,
    pub container: String,
}

/// `42m`, `10s`, `2h` ago, or unix seconds, as the API's `since`.
fn since_param(s: &str) -> Result<String> {
    if s.parse::<f64>().is_ok() {
        return Ok(s.to_string());
    }
    let Some(unit_at) = s.char_indices().last().map(|(i, _)| i) else { bail!("invalid --since {s:?}") };
    let (num, unit) = s.split_at(unit_at);
    let mult = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => bail!("invalid --since {s:?}: use unix seconds or a duration like 10s, 5m, 2h"),
    };
    let n: f64 = num.parse().map_err(|_| anyhow!("invalid --since {s:?}"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
    Ok(format!("{:.9}", now - n * mult))
}

pub async fn logs(c: &Client, a: LogsArgs) -> Result<i32> {
    if a.tail != "all" && a.tail.parse::<u32>().is_err() {
        bail!("invalid --tail {:?}: a number or \"all\"", a.tail);
    }
    let mut q =
        format!("stdout=1&stderr=1&follow={}&timestamps={}&tail={}", a.follow as u8, a.timestamps as u8, a.tail);
    if let Some(s) = &a.since {
        q.push_str(&format!("&since={}", since_param(s)?));
    }
    let info = c.get(&format!("/containers/{}/json", urlencode(&a.container))).await?;
    let tty = info["Config"]["Tty"].as_bool().unwrap_or(false);
    let r = c
        .send(
            hyper::Method::GET,
            &format!("/containers/{}/logs?{q}", urlencode(&a.container)),
            client::empty_body(),
            None,
        )
        .await?;
    let mut demux = Demux::default();
    client::for_each_chunk(r, |chunk| {
        if tty {
            std::io::stdout().write_all(chunk)?;
        } else {
            demux.push(chunk, |s, p| {
                let _ = if s == 2 { std::io::stderr().write_all(p) } else { std::io::stdout().write_all(p) };
            });
        }
        std::io::stdout().flush()?;
        Ok(())
    })
    .await?;
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Format the output using a Go-template subset ({{.Field}}, {{json .X}}).
    #[arg(short = 'f', long)]
    pub format: Option<String>,
    /// Only inspect objects of this type (container, image).
    #[arg(long = "type")]
    pub typ: Option<String>,
    #[arg(required = true)]
    pub names: Vec<String>,
}

pub async fn inspect(c: &Client, a: InspectArgs) -> Result<i32> {
    let mut out = Vec::new();
    let mut failed = false;
    for n in &a.names {
        let container = if a.typ.as_deref() != Some("image") {
            c.get(&format!("/containers/{}/json", urlencode(n))).await.ok()
        } else {
            None
        };
        let found = match container {
            Some(v) => Some(v),
            None if a.typ.as_deref() != Some("container") => c.get(&format!("/images/{n}/json")).await.ok(),
            None => None,
        };
        match found {
            Some(v) => out.push(v),
            None => {
                eprintln!("Error: No such object: {n}");
                failed = true;
            }
        }
    }
    match &a.format {
        Some(f) => {
            for v in &out {
                println!("{}", format::template(f, v));
            }
        }
        None => println!("{}", serde_json::to_string_pretty(&out)?),
    }
    Ok(failed as i32)
}

#[derive(clap::Args, Debug)]
pub struct PsArgs {
    /// Show all containers (default shows just running).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only display container IDs.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Filter output (name=, id=, status=, label=, ancestor=, exited=).
    #[arg(long = "filter")]
    pub filter: Vec<String>,
    /// Format output using a Go-template subset; "table ..." prints a header.
    #[arg(long)]
    pub format: Option<String>,
    /// Don't truncate output.
    #[arg(long)]
    pub no_trunc: bool,
}

pub fn filters_param(filters: &[String]) -> Result<String> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in filters {
        let (k, v) = f.split_once('=').ok_or_else(|| anyhow!("bad format of filter (expected name=value): {f}"))?;
        m.entry(k.to_string()).or_default().push(v.to_string());
    }
    Ok(urlencode(&serde_json::to_string(&m)?))
}

pub async fn ps(c: &Client, a: PsArgs) -> Result<i32> {
    let list = c.get(&format!("/containers/json?all={}&filters={}", a.all as u8, filters_param(&a.filter)?)).await?;
    let list = list.as_array().cloned().unwrap_or_default();
    let rows: Vec<Value> = list
        .iter()
        .map(|x| {
            let id = x["Id"].as_str().unwrap_or_default();
            let cmd = x["Command"].as_str().unwrap_or_default();
            json!({
                "ID": if a.no_trunc { id.to_string() } else { format::short_id(id) },
                "Image": x["Image"],
                "Command": if a.no_trunc { format!("\"{cmd}\"") } else { format!("\"{}\"", format::truncate(cmd, 20)) },
                "CreatedAt": x["Created"],
                "RunningFor": format::ago(x["Created"].as_i64().unwrap_or(0)),
                "Status": x["Status"],
                "State": x["State"],
                "Ports": ports_column(&x["Ports"]),
                "Names": x["Names"].as_array().and_then(|n| n.first()).and_then(|n| n.as_str()).unwrap_or("").trim_start_matches('/'),
                "Labels": x["Labels"].as_object().map(|o| o.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(",")).unwrap_or_default(),
            })
        })
        .collect();
    if a.quiet {
        for r in &rows {
            println!("{}", r["ID"].as_str().unwrap_or(""));
        }
        return Ok(0);
    }
    print_rows(
        a.format.as_deref(),
        &rows,
        &[
            ("CONTAINER ID", "ID"),
            ("IMAGE", "Image"),
            ("COMMAND", "Command"),
            ("CREATED", "RunningFor"),
            ("STATUS", "Status"),
            ("PORTS", "Ports"),
            ("NAMES", "Names"),
        ],
    );
    Ok(0)
}

/// A listing's rows: through the `--format` template if given, else as a table of `columns`
/// (header, field of the row).
pub fn print_rows(format: Option<&str>, rows: &[Value], columns: &[(&str, &str)]) {
    if let Some(f) = format {
        print_formatted(f, rows);
        return;
    }
    let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let table: Vec<Vec<String>> =
        rows.iter().map(|r| columns.iter().map(|(_, field)| s(&r[*field])).collect()).collect();
    let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    print!("{}", format::table(&headers, &table));
}

/// `--format`: a template per row; `table <tpl>` adds a header of the field names.
pub fn print_formatted(f: &str, rows: &[Value]) {
    if let Some(tpl) = f.strip_prefix("table ") {
        let header = format::template(tpl, &Value::Null).replace("<no value>", "");
        let fields: Vec<String> = tpl
            .split("{{")
            .skip(1)
            .filter_map(|p| p.split("}}").next())
            .map(|e| e.trim().trim_start_matches('.').to_ascii_uppercase())
            .collect();
        let _ = header;
        println!("{}", fields.join("\t"));
        for r in rows {
            println!("{}", format::template(tpl, r));
        }
    } else {
        for r in rows {
            println!("{}", format::template(f, r));
        }
    }
}

pub async fn rename(c: &Client, from: &str, to: &str) -> Result<i32> {
    c.post(&format!("/containers/{}/rename?name={}", urlencode(from), urlencode(to)), None).await?;
    Ok(0)
}

pub async fn top(c: &Client, name: &str) -> Result<i32> {
    let v = c.get(&format!("/containers/{}/top", urlencode(name))).await?;
    let titles: Vec<&str> = v["Titles"].as_array().into_iter().flatten().filter_map(|t| t.as_str()).collect();
    let rows: Vec<Vec<String>> = v["Processes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p.as_array().into_iter().flatten().map(|x| x.as_str().unwrap_or("").to_string()).collect())
        .collect();
    print!("{}", format::table(&titles, &rows));
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// Disable streaming stats and only pull the first result.
    #[arg(long)]
    pub no_stream: bool,
    pub containers: Vec<String>,
}

pub async fn stats(c: &Client, a: StatsArgs) -> Result<i32> {
    let names: Vec<String> = if a.containers.is_empty() {
        c.get("/containers/json")
            .await?
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["Id"].as_str().map(str::to_string))
            .collect()
    } else {
        a.containers.clone()
    };
    loop {
        let mut rows = Vec::new();
        for n in &names {
            let s = c.get(&format!("/containers/{}/stats?stream=false", urlencode(n))).await?;
            let mem = s["memory_stats"]["usage"].as_u64().unwrap_or(0);
            let limit = s["memory_stats"]["limit"].as_u64().unwrap_or(0);
            rows.push(vec![
                format::short_id(s["id"].as_str().unwrap_or("")),
                s["name"].as_str().unwrap_or("").trim_start_matches('/').to_string(),
                format!(
                    "{} / {}",
                    format::size(mem),
                    if limit == 0 || limit > 1 << 60 { "unlimited".into() } else { format::size(limit) }
                ),
                s["pids_stats"]["current"].to_string(),
            ]);
        }
        print!("{}", format::table(&["CONTAINER ID", "NAME", "MEM USAGE / LIMIT", "PIDS"], &rows));
        if a.no_stream {
            return Ok(0);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[derive(clap::Args, Debug)]
pub struct AttachArgs {
    /// Do not attach STDIN.
    #[arg(long)]
    pub no_stdin: bool,
    pub container: String,
}

/// `engine attach`: the container's output from now on, and stdin to it (when it keeps one
/// open); returns its exit code when it ends.
pub async fn attach(c: &Client, a: AttachArgs) -> Result<i32> {
    let info = c.get(&format!("/containers/{}/json", urlencode(&a.container))).await?;
    if info["State"]["Running"] != Value::Bool(true) {
        bail!("You cannot attach to a stopped container, start it first");
    }
    let tty = info["Config"]["Tty"].as_bool().unwrap_or(false);
    let stdin = !a.no_stdin && info["Config"]["OpenStdin"].as_bool().unwrap_or(false);
    let name = urlencode(&a.container);
    let io = c
        .hijack(
            &format!("/containers/{name}/attach?stream=1&stdout=1&stderr=1{}", if stdin { "&stdin=1" } else { "" }),
            None,
        )
        .await?;
    let wait = c.post(&format!("/containers/{name}/wait?condition=next-exit"), None).await?;
    let raw = (tty && stdin && nix::unistd::isatty(std::io::stdin()).unwrap_or(false)).then(RawTerminal::enable);
    stream_attached(io, tty, stdin).await?;
    drop(raw);
    let status = client::read_json(wait).await?;
    Ok(status["StatusCode"].as_i64().unwrap_or(0) as i32)
}

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// Detached mode: run command in the background.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Set environment variables.
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Username or UID.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Keep STDIN open even if not attached.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Give extended privileges to the command.
    #[arg(long)]
    pub privileged: bool,
    pub container: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub async fn exec(c: &Client, a: ExecArgs) -> Result<i32> {
    let body = json!({
        "AttachStdin": a.interactive && !a.detach,
        "AttachStdout": !a.detach,
        "AttachStderr": !a.detach,
        "Tty": a.tty,
        "Env": a.env.iter().map(|e| expand_env(e)).collect::<Vec<_>>(),
        "Cmd": a.command,
        "WorkingDir": a.workdir.clone().unwrap_or_default(),
        "User": a.user.clone().unwrap_or_default(),
        "Privileged": a.privileged,
    });
    let r = c.post(&format!("/containers/{}/exec", urlencode(&a.container)), Some(&body)).await?;
    let id = client::read_json(r).await?["Id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the daemon returned no exec id"))?;
    let start = json!({ "Detach": a.detach, "Tty": a.tty });
    if a.detach {
        c.post(&format!("/exec/{id}/start"), Some(&start)).await?;
        return Ok(0);
    }
    let io = c.hijack(&format!("/exec/{id}/start"), Some(&start)).await?;
    let raw = (a.tty && nix::unistd::isatty(std::io::stdin()).unwrap_or(false)).then(RawTerminal::enable);
    if a.tty {
        if let Some((h, w)) = terminal_size() {
            let _ = c.post(&format!("/exec/{id}/resize?h={h}&w={w}"), None).await;
        }
    }
    stream_attached(io, a.tty, a.interactive).await?;
    drop(raw);
    let info = c.get(&format!("/exec/{id}/json")).await?;
    Ok(info["ExitCode"].as_i64().unwrap_or(126) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_and_device_limits_read_as_the_docker_cli_reads_them() {
        let all = gpu_request("all").unwrap();
        assert_eq!((all.count, all.capabilities.clone()), (-1, Some(vec![vec!["gpu".to_string()]])));
        let some = gpu_request(r#"driver=nvidia,"device=0,2",capabilities=compute"#).unwrap();
        assert_eq!(some.driver, "nvidia");
        assert_eq!(some.count, 0);
        assert_eq!(some.device_ids, Some(vec!["0".to_string(), "2".to_string()]));
        assert_eq!(some.capabilities, Some(vec![vec!["compute".to_string(), "gpu".to_string()]]));
        assert_eq!(gpu_request("count=2").unwrap().count, 2);
        assert_eq!(gpu_request("driver=x").unwrap().count, 1);
        assert!(gpu_request("count=1,count=2").unwrap_err().to_string().contains("only once"));
        assert!(gpu_request("colour=red").unwrap_err().to_string().contains("unexpected key"));

        let bps = throttle_devices(&["/dev/sda:1mb".into()], true).unwrap().unwrap();
        assert_eq!((bps[0].path.as_str(), bps[0].rate), ("/dev/sda", 1 << 20));
        assert_eq!(throttle_devices(&["/dev/sda:300".into()], false).unwrap().unwrap()[0].rate, 300);
        assert!(throttle_devices(&["/dev/sda:1mb".into()], false).is_err());
        assert!(throttle_devices(&["sda:1".into()], true)
            .unwrap_err()
            .to_string()
            .contains("bad format for device path"));
        assert!(throttle_devices(&[], true).unwrap().is_none());
        assert_eq!(weight_device("/dev/sda:200").unwrap().weight, 200);
        assert!(weight_device("/dev/sda:5").is_err());
        assert_eq!(key_values(&["a=b=c".into()], "--annotation", true).unwrap()["a"], "b=c");
        assert_eq!(key_values(&["bare".into()], "--annotation", true).unwrap()["bare"], "");
        assert!(key_values(&["bare".into()], "--storage-opt", false).is_err());
        assert!(key_values(&["=x".into()], "--annotation", true).is_err());
        assert!(gpu_request("all,count=2").unwrap_err().to_string().contains("only once"));
    }

    #[test]
    fn run_failures_map_to_dockers_exit_codes() {
        let daemon = |m: &str| format!("Error response from daemon: failed to create task for container x: {m}");
        assert_eq!(run_failure_code(&daemon("exec: \"nope\": executable file not found in $PATH")), 127);
        assert_eq!(run_failure_code(&daemon("exec: \"/x\": no such file or directory")), 127);
        assert_eq!(run_failure_code(&daemon("exec: \"/etc/passwd\": permission denied")), 126);
        assert_eq!(run_failure_code(&daemon("exec: \"/\": is a directory")), 126);
        assert_eq!(run_failure_code(&daemon("cwd /x: ENOENT: No such file or directory")), 125);
    }

    #[test]
    fn parses_sizes_and_policies() {
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("512").unwrap(), 512);
        assert!(parse_bytes("lots").is_err());
        assert_eq!(restart_policy("on-failure:3").unwrap().maximum_retry_count, 3);
        assert!(restart_policy("sometimes").is_err());
        assert!(restart_policy("always:2").is_err());
    }

    #[test]
    fn run_flags_become_a_typed_create_body() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let args = ["run", "-p", "127.0.0.1:8080:80/udp", "--expose", "90", "--entrypoint", "", "--init", "-m", "64m"];
        let a =
            Cli::parse_from(args.into_iter().chain(["--network", "n1", "--ip", "10.1.0.5", "busybox", "ls", "-l"])).run;
        let body = create_body(&a).unwrap();
        assert_eq!(body.config.entrypoint, Some(vec![]), "--entrypoint \"\" clears the image's");
        assert_eq!(body.config.cmd, Some(vec!["ls".to_string(), "-l".to_string()]));
        let exposed: Vec<_> = body.config.exposed_ports.unwrap().into_keys().collect();
        assert_eq!(exposed, ["80/udp", "90/tcp"]);
        let hc = body.host_config.unwrap();
        assert_eq!((hc.init, hc.resources.memory, hc.restart_policy.name.as_str()), (Some(true), 64 << 20, "no"));
        let b = &hc.port_bindings.unwrap()["80/udp"].clone().unwrap()[0];
        assert_eq!((b.host_ip.as_str(), b.host_port.as_str()), ("127.0.0.1", "8080"));
        let ep = &body.networking_config.unwrap().endpoints_config.unwrap()["n1"];
        assert_eq!(ep.ipam_config.as_ref().unwrap().ipv4_address, "10.1.0.5");

        let a = Cli::parse_from(["run", "busybox"]).run;
        let body = create_body(&a).unwrap();
        assert_eq!((body.config.cmd, body.config.entrypoint), (None, None), "the image's command stays");
        assert_eq!(body.host_config.unwrap().init, None, "no --init: the daemon's default");
        assert!(body.networking_config.is_none());
    }
}
