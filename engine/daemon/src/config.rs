//! engined's command line and its JSON config file (`--config-file`), as dockerd has them.

use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

#[derive(Parser, Debug, Clone)]
#[command(name = "engined", version, about = "The engine daemon: serves the Docker Engine API on a unix socket")]
pub struct Config {
    /// Socket to listen on: unix://PATH, or fd:// (the socket systemd's socket activation
    /// hands over; fd://N for one of several). TCP is refused: it would need TLS.
    #[arg(short = 'H', long = "host", default_value = "unix:///run/engine/engine.sock")]
    pub host: String,
    /// Persistent state: images, containers, volumes.
    #[arg(long, default_value = "/var/lib/engine")]
    pub data_root: PathBuf,
    /// Runtime state: sockets, lifecycled's task state.
    #[arg(long, default_value = "/run/engine")]
    pub exec_root: PathBuf,
    /// Write the daemon's pid here (default: engined.pid in the exec-root).
    #[arg(long)]
    pub pidfile: Option<PathBuf>,
    /// The configuration file (default: /etc/engine/daemon.json, when it is there): JSON, with
    /// comments, of options keyed by their long names (`engined config default` prints them all).
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// error, warn, info or debug.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// text (`<time> level=<level> msg="…"`) or json (one object per line: level, msg, time),
    /// as dockerd's --log-format.
    #[arg(long, default_value = "text")]
    pub log_format: String,
    /// Parent cgroup of every container.
    #[arg(long, default_value = "/engine")]
    pub cgroup_parent: String,
    /// engine-lifecycled (default: beside this binary).
    #[arg(long)]
    pub lifecycled: Option<PathBuf>,
    /// engine-init, bind-mounted into containers run with --init (default: beside this binary).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Forward every span to this OTLP endpoint, http://host:port (default: the
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT environment variable).
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// grpc, http/protobuf or http/json (default: OTEL_EXPORTER_OTLP_PROTOCOL, else grpc).
    #[arg(long)]
    pub otlp_protocol: Option<String>,
    /// Keep at most this many traces under the data-root.
    #[arg(long, default_value_t = 5000)]
    pub trace_max_traces: usize,
    /// Keep at most this many MiB of traces under the data-root.
    #[arg(long, default_value_t = 256)]
    pub trace_max_mb: u64,
    /// Tail sampling of the OTLP export: the share (0 to 1) of the traces no rule keeps that is
    /// exported anyway. Failed traces, slow ones (--trace-keep-slower-than) and those that span
    /// a restart of lifecycled are always exported; the embedded store keeps every trace.
    #[arg(long, default_value_t = 1.0)]
    pub trace_keep_ratio: f64,
    /// With --trace-keep-ratio below 1: export every trace whose root took longer than this
    /// (`250ms`, `2s`; default: the running p99 of the root's operation).
    #[arg(long, value_name = "DURATION")]
    pub trace_keep_slower_than: Option<String>,
    /// Do not load the eBPF probes (traces then have no kernel rows).
    #[arg(long)]
    pub no_probes: bool,
    /// Load the eBPF probes without the scheduler's (`sched_switch`, `sched_wakeup`): kernel
    /// rows, but no `engine.cpu.*` split and no blocking stacks on the spans.
    #[arg(long)]
    pub no_profiles: bool,
    /// The Linux bridge of the default network (`bridge`); `none`: no default network (as
    /// dockerd's `--bridge=none`), containers name theirs.
    #[arg(short = 'b', long, visible_alias = "bridge", default_value = "engine0")]
    pub bridge_name: String,
    /// How container root filesystems are made: overlay2 (overlayfs mounts) or vfs (copies:
    /// slow and large, for filesystems overlayfs cannot sit on).
    #[arg(short = 's', long, default_value = "overlay2")]
    pub storage_driver: engine_image::StorageDriver,
    /// The default bridge's address and prefix, e.g. 172.17.0.1/16 (default: the first subnet
    /// of the address pools that no host route overlaps).
    #[arg(long)]
    pub bip: Option<String>,
    /// Where subnets of networks without --subnet come from: base=CIDR,size=N (repeatable;
    /// default: 172.17.0.0/16 … 172.31.0.0/16 as /16s, then 192.168.0.0/16 as /20s).
    #[arg(long = "default-address-pool")]
    pub default_address_pools: Vec<String>,
    /// Manage firewall rules (masquerade, forwarding, isolation between networks).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub iptables: bool,
    /// Also serve `GET /metrics` on this TCP address (e.g. 127.0.0.1:9323), as dockerd's
    /// --metrics-addr; the API socket always serves it.
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// auto (iptables if installed, else nftables), iptables, nftables or none.
    #[arg(long, default_value = "auto")]
    pub firewall_backend: String,
    /// engine-proxy, one per published port (default: beside this binary).
    #[arg(long)]
    pub userland_proxy_path: Option<PathBuf>,
    /// A mirror of Docker Hub, tried before it (repeatable).
    #[arg(long = "registry-mirror")]
    pub registry_mirrors: Vec<String>,
    /// A registry reached over plain HTTP or unverified TLS: host[:port] or CIDR (repeatable);
    /// loopback registries always are.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Per-registry TLS material: <dir>/<host:port>/ca.crt, client.cert, client.key
    /// (default: certs.d beside the config file, else /etc/engine/certs.d).
    #[arg(long)]
    pub certs_dir: Option<PathBuf>,
    /// Layers downloaded at once per pull.
    #[arg(long, default_value_t = 3)]
    pub max_concurrent_downloads: usize,
    /// Layers uploaded at once per push.
    #[arg(long, default_value_t = 5)]
    pub max_concurrent_uploads: usize,
    /// Blobs larger than this are pushed in chunks of it, so a broken upload resumes where the
    /// registry stopped (`64m`, `512k`; 0: each blob in one request).
    #[arg(long, default_value = "64m")]
    pub max_upload_chunk_size: String,
    /// Seconds a client has to send a request's header, counted from its connection or the end
    /// of its last request; then the connection is closed (an idle or stalled client cannot hold
    /// a connection forever; 0: no limit).
    #[arg(long, default_value_t = 30)]
    pub api_header_timeout: u64,
    /// Seconds a client may send nothing of a request's body while engined reads it (a
    /// stalled upload); then the request fails and its connection closes (0: no limit).
    #[arg(long, default_value_t = 30)]
    pub api_body_timeout: u64,
    /// API connections served at once; more wait to be accepted until some close (default:
    /// the descriptor limit less 1024 kept for containers, at least 64).
    #[arg(long)]
    pub max_api_connections: Option<usize>,
    /// Seconds between collections of orphans (what containers engined has no record of left:
    /// tasks, shims, cgroups, network namespaces and endpoints, port proxies, snapshots); one
    /// collection also runs at start. 0: only when asked (`engine system check --collect`).
    #[arg(long, default_value_t = 600)]
    pub orphan_collection_interval: u64,
    /// A DNS server for containers that name none (repeatable): written to their resolv.conf
    /// on the default bridge, asked by the embedded DNS server on user networks (default: the
    /// host's resolv.conf, without loopback servers).
    #[arg(long = "dns")]
    pub dns: Vec<String>,
    /// Seconds after a container's start during which its lookups through the embedded DNS
    /// server are spans (`dns.query`) of its start's trace (0: none).
    #[arg(long, default_value_t = 10)]
    pub dns_trace_window: u64,
    /// IPv6 on the default bridge too (dual stack), as dockerd's --ipv6.
    #[arg(long)]
    pub ipv6: bool,
    /// The default bridge's IPv6 subnet with --ipv6 (default: a unique local /64).
    #[arg(long)]
    pub fixed_cidr_v6: Option<String>,
    /// Leave the running containers running when engined stops, for the next engined to adopt
    /// (their shims and engine-lifecycled outlive it): a restart or an upgrade of the daemon
    /// does not stop them. `--live-restore=false` stops them first, as dockerd without
    /// live-restore.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub live_restore: bool,
    /// A label of this daemon, key=value, shown by `engine info` (repeatable; a SIGHUP reloads them).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// The socket of the Kubernetes CRI (runtime.v1 RuntimeService and ImageService; default:
    /// cri.sock in the exec-root).
    #[arg(long)]
    pub cri_socket: Option<PathBuf>,
    /// Serve no CRI.
    #[arg(long)]
    pub no_cri: bool,
    /// The image of the CRI's pod sandboxes: its process holds the pod's network namespace
    /// (engine-init is PID 1 of it).
    #[arg(long, default_value = "registry.k8s.io/pause:3.10")]
    pub cri_sandbox_image: String,
    /// Where the CRI's streaming server (exec, attach, port-forward URLs) listens, address:port
    /// (port 0: any free one). Keep it on loopback unless the kubelet is elsewhere.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub cri_stream_address: std::net::SocketAddr,
    /// The CNI configuration directory of CRI pods: a pod joins the network of its first
    /// configuration file by name (read at each pod's start); with none there, engined's
    /// default bridge.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Where the CNI plugins are (repeatable; default: /usr/lib/cni and /opt/cni/bin).
    #[arg(long)]
    pub cni_bin_dir: Vec<PathBuf>,
    /// A directory of OCI hook files (podman's and CRI-O's `oci-hooks` format, version 1.0.0),
    /// read at each container's create; repeatable, a later directory's file replaces an
    /// earlier one's of the same name. None by default.
    #[arg(long)]
    pub hooks_dir: Vec<PathBuf>,
    /// Check the configuration (flags and --config-file) and exit: 0 and "configuration OK",
    /// or the first problem.
    #[arg(long)]
    pub validate: bool,
    /// The options the command line gave (their clap ids): one the file sets too is a conflict.
    #[arg(skip)]
    pub given: Vec<String>,
}

/// The configuration file read when `--config-file` names none, if it is there.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/engine/daemon.json";

/// Where the API listens.
#[derive(Debug, PartialEq)]
pub enum Listen {
    Unix(PathBuf),
    /// Socket activation: the first socket systemd handed over, or fd N.
    Activated(Option<i32>),
}

#[derive(Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    log_level: Option<String>,
    cgroup_parent: Option<String>,
    data_root: Option<PathBuf>,
    exec_root: Option<PathBuf>,
    pidfile: Option<PathBuf>,
    hosts: Option<Vec<String>>,
    otlp_endpoint: Option<String>,
    otlp_protocol: Option<String>,
    trace_max_traces: Option<usize>,
    trace_max_mb: Option<u64>,
    trace_keep_ratio: Option<f64>,
    trace_keep_slower_than: Option<String>,
    no_probes: Option<bool>,
    no_profiles: Option<bool>,
    #[serde(alias = "bridge")]
    bridge_name: Option<String>,
    storage_driver: Option<String>,
    bip: Option<String>,
    default_address_pools: Option<Vec<FilePool>>,
    iptables: Option<bool>,
    firewall_backend: Option<String>,
    userland_proxy_path: Option<PathBuf>,
    metrics_addr: Option<String>,
    registry_mirrors: Option<Vec<String>>,
    insecure_registries: Option<Vec<String>>,
    certs_dir: Option<PathBuf>,
    max_concurrent_downloads: Option<usize>,
    max_concurrent_uploads: Option<usize>,
    max_upload_chunk_size: Option<String>,
    api_header_timeout: Option<u64>,
    api_body_timeout: Option<u64>,
    max_api_connections: Option<usize>,
    orphan_collection_interval: Option<u64>,
    dns: Option<Vec<String>>,
    dns_trace_window: Option<u64>,
    ipv6: Option<bool>,
    fixed_cidr_v6: Option<String>,
    live_restore: Option<bool>,
    labels: Option<Vec<String>>,
    log_format: Option<String>,
    cri_socket: Option<PathBuf>,
    no_cri: Option<bool>,
    cri_sandbox_image: Option<String>,
    cri_stream_address: Option<std::net::SocketAddr>,
    cni_conf_dir: Option<PathBuf>,
    cni_bin_dir: Option<Vec<PathBuf>>,
    hooks_dir: Option<Vec<PathBuf>>,
}

/// `"default-address-pools": [{"base": "10.10.0.0/16", "size": 24}]`, as daemon.json has it.
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct FilePool {
    base: String,
    size: u8,
}

/// `engined config default`: the configuration file with every option at its default (null
/// where the default is to have none), as JSON.
pub fn default_file() -> String {
    let d = Config::parse_from(["engined"]);
    let f = FileConfig {
        log_level: Some(d.log_level),
        cgroup_parent: Some(d.cgroup_parent),
        data_root: Some(d.data_root),
        exec_root: Some(d.exec_root),
        pidfile: d.pidfile,
        hosts: Some(vec![d.host]),
        otlp_endpoint: d.otlp_endpoint,
        otlp_protocol: d.otlp_protocol,
        trace_max_traces: Some(d.trace_max_traces),
        trace_max_mb: Some(d.trace_max_mb),
        trace_keep_ratio: Some(d.trace_keep_ratio),
        trace_keep_slower_than: d.trace_keep_slower_than,
        no_probes: Some(d.no_probes),
        no_profiles: Some(d.no_profiles),
        bridge_name: Some(d.bridge_name),
        storage_driver: Some(d.storage_driver.as_str().to_string()),
        bip: d.bip,
        default_address_pools: Some(
            engine_network::ipam::default_pools()
                .into_iter()
                .map(|p| FilePool { base: p.base.to_string(), size: p.size })
                .collect(),
        ),
        iptables: Some(d.iptables),
        firewall_backend: Some(d.firewall_backend),
        userland_proxy_path: d.userland_proxy_path,
        metrics_addr: d.metrics_addr,
        registry_mirrors: Some(d.registry_mirrors),
        insecure_registries: Some(d.insecure_registries),
        certs_dir: d.certs_dir,
        max_concurrent_downloads: Some(d.max_concurrent_downloads),
        max_concurrent_uploads: Some(d.max_concurrent_uploads),
        max_upload_chunk_size: Some(d.max_upload_chunk_size),
        api_header_timeout: Some(d.api_header_timeout),
        api_body_timeout: Some(d.api_body_timeout),
        max_api_connections: d.max_api_connections,
        orphan_collection_interval: Some(d.orphan_collection_interval),
        dns: Some(d.dns),
        dns_trace_window: Some(d.dns_trace_window),
        ipv6: Some(d.ipv6),
        fixed_cidr_v6: d.fixed_cidr_v6,
        live_restore: Some(d.live_restore),
        labels: Some(d.labels),
        log_format: Some(d.log_format),
        cri_socket: d.cri_socket,
        no_cri: Some(d.no_cri),
        cri_sandbox_image: Some(d.cri_sandbox_image),
        cri_stream_address: Some(d.cri_stream_address),
        cni_conf_dir: Some(d.cni_conf_dir),
        cni_bin_dir: Some(d.cni_bin_dir),
        hooks_dir: Some(d.hooks_dir),
    };
    let Ok(serde_json::Value::Object(values)) = serde_json::to_value(&f) else { return String::new() };
    let mut out = String::from(DEFAULT_FILE_HEAD);
    out.push_str("{\n");
    use clap::CommandFactory;
    let cmd = Config::command();
    for arg in cmd.get_arguments() {
        let key = file_key(arg.get_id().as_str());
        let Some(value) = values.get(&key) else { continue };
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        out.push('\n');
        for line in wrap(&help, 88) {
            out.push_str(&format!("  // {line}\n"));
        }
        let shown = serde_json::to_string_pretty(value).unwrap_or_default();
        let shown = format!("{}: {shown},", serde_json::Value::String(key.clone()));
        for line in shown.lines() {
            out.push_str(&format!("  // {line}\n"));
        }
    }
    out.push_str("}\n");
    out
}

const DEFAULT_FILE_HEAD: &str = "\
// engined's configuration: /etc/engine/daemon.json, or the file --config-file names.
// Every option is here at its default, commented out: remove the // of an option's lines to
// set it. Comments and trailing commas are allowed. An option set both here and as a flag of
// engined is an error, as with dockerd (engine.service gives only -H fd://: \"hosts\" stays
// commented out under systemd). `engined --validate` checks the file; a SIGHUP reloads
// log-level, labels, registry-mirrors, insecure-registries and max-concurrent-*.
";

/// Every option of the configuration file: (clap id, key), in the command line's order.
pub fn file_keys() -> Vec<(String, String)> {
    use clap::CommandFactory;
    let Ok(serde_json::Value::Object(values)) = serde_json::to_value(FileConfig::default()) else { return Vec::new() };
    Config::command()
        .get_arguments()
        .map(|a| a.get_id().as_str().to_string())
        .filter_map(|id| {
            let key = file_key(&id);
            values.contains_key(&key).then_some((id, key))
        })
        .collect()
}

/// The file's name of the option whose clap id is `id`: `data_root` is `data-root`, and the
/// one host is `hosts`, as dockerd names them.
fn file_key(id: &str) -> String {
    match id {
        "host" => "hosts".to_string(),
        id => id.replace('_', "-"),
    }
}

/// `text` in lines of at most `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(l) if l.len() + 1 + word.len() <= width => {
                l.push(' ');
                l.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

/// Reads a configuration file: JSON with `//` and `/* */` comments and trailing commas allowed
/// (the default file is commented); an error names the line and column, as serde_json gives
/// them (comments and commas are blanked, so positions stay where they were).
fn parse_file(text: &str) -> Result<FileConfig, serde_json::Error> {
    use std::io::Read;
    let mut plain = String::with_capacity(text.len());
    // reading from a byte slice cannot fail
    let _ = json_comments::StripComments::new(text.as_bytes()).read_to_string(&mut plain);
    serde_json::from_str(&blank_trailing_commas(&plain))
}

/// `{"a": 1,}` as `{"a": 1 }`: a comma that only whitespace separates from `}` or `]`, outside
/// strings, becomes a space.
fn blank_trailing_commas(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = bytes.to_vec();
    let (mut in_string, mut escaped) = (false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b',' => {
                let next = bytes[i + 1..].iter().find(|c| !c.is_ascii_whitespace());
                if matches!(next, Some(b'}') | Some(b']')) {
                    out[i] = b' ';
                }
            }
            _ => {}
        }
    }
    // only ASCII commas were replaced by ASCII spaces: still UTF-8
    String::from_utf8(out).unwrap_or_default()
}

/// Puts the file's options into a configuration; an option the command line gave as well is
/// a conflict, collected to be said all at once, as dockerd says them.
struct FromFile<'a> {
    given: &'a [String],
    conflicts: Vec<String>,
}

impl FromFile<'_> {
    fn set<T: std::fmt::Debug>(&mut self, key: &str, slot: &mut T, value: Option<T>) {
        let Some(v) = value else { return };
        let id = if key == "hosts" { "host".to_string() } else { key.replace('-', "_") };
        if self.given.contains(&id) {
            self.conflicts.push(format!("{key}: (from flag: {slot:?}, from file: {v:?})"));
        } else {
            *slot = v;
        }
    }
}

impl Config {
    /// The command line `args` (the program's name first), noting which options it gave.
    pub fn from_args<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let m = Config::command().try_get_matches_from(args)?;
        let mut c = Config::from_arg_matches(&m)?;
        c.given = m
            .ids()
            .filter(|id| m.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine))
            .map(|id| id.to_string())
            .collect();
        Ok(c)
    }

    /// Applies `--config-file` (an option both in it and on the command line is an error, as
    /// dockerd's) and checks the values.
    pub fn resolve(mut self) -> anyhow::Result<Self> {
        // dockerd reads /etc/docker/daemon.json when it is there; engined its own
        if self.config_file.is_none() && Path::new(DEFAULT_CONFIG_FILE).exists() {
            self.config_file = Some(DEFAULT_CONFIG_FILE.into());
        }
        if let Some(path) = self.config_file.clone() {
            let text =
                std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            let f = parse_file(&text).map_err(|e| anyhow::anyhow!("invalid {}: {e}", path.display()))?;
            let given = std::mem::take(&mut self.given);
            let mut m = FromFile { given: &given, conflicts: Vec::new() };
            m.set("log-level", &mut self.log_level, f.log_level);
            m.set("cgroup-parent", &mut self.cgroup_parent, f.cgroup_parent);
            m.set("data-root", &mut self.data_root, f.data_root);
            m.set("exec-root", &mut self.exec_root, f.exec_root);
            m.set("pidfile", &mut self.pidfile, f.pidfile.map(Some));
            m.set("hosts", &mut self.host, f.hosts.and_then(|h| h.into_iter().next()));
            m.set("otlp-endpoint", &mut self.otlp_endpoint, f.otlp_endpoint.map(Some));
            m.set("otlp-protocol", &mut self.otlp_protocol, f.otlp_protocol.map(Some));
            m.set("trace-max-traces", &mut self.trace_max_traces, f.trace_max_traces);
            m.set("trace-max-mb", &mut self.trace_max_mb, f.trace_max_mb);
            m.set("trace-keep-ratio", &mut self.trace_keep_ratio, f.trace_keep_ratio);
            m.set("trace-keep-slower-than", &mut self.trace_keep_slower_than, f.trace_keep_slower_than.map(Some));
            m.set("no-probes", &mut self.no_probes, f.no_probes);
            m.set("no-profiles", &mut self.no_profiles, f.no_profiles);
            m.set("bridge-name", &mut self.bridge_name, f.bridge_name);
            let driver = f
                .storage_driver
                .map(|v| v.parse::<engine_image::StorageDriver>())
                .transpose()
                .map_err(|e| anyhow::anyhow!("invalid {}: {e}", path.display()))?;
            m.set("storage-driver", &mut self.storage_driver, driver);
            m.set("bip", &mut self.bip, f.bip.map(Some));
            let pools = f
                .default_address_pools
                .map(|ps| ps.into_iter().map(|p| format!("base={},size={}", p.base, p.size)).collect());
            m.set("default-address-pools", &mut self.default_address_pools, pools);
            m.set("iptables", &mut self.iptables, f.iptables);
            m.set("firewall-backend", &mut self.firewall_backend, f.firewall_backend);
            m.set("userland-proxy-path", &mut self.userland_proxy_path, f.userland_proxy_path.map(Some));
            m.set("metrics-addr", &mut self.metrics_addr, f.metrics_addr.map(Some));
            m.set("registry-mirrors", &mut self.registry_mirrors, f.registry_mirrors);
            m.set("insecure-registries", &mut self.insecure_registries, f.insecure_registries);
            m.set("certs-dir", &mut self.certs_dir, f.certs_dir.map(Some));
            m.set("max-concurrent-downloads", &mut self.max_concurrent_downloads, f.max_concurrent_downloads);
            m.set("max-concurrent-uploads", &mut self.max_concurrent_uploads, f.max_concurrent_uploads);
            m.set("max-upload-chunk-size", &mut self.max_upload_chunk_size, f.max_upload_chunk_size);
            m.set("api-header-timeout", &mut self.api_header_timeout, f.api_header_timeout);
            m.set("api-body-timeout", &mut self.api_body_timeout, f.api_body_timeout);
            m.set("max-api-connections", &mut self.max_api_connections, f.max_api_connections.map(Some));
            m.set("orphan-collection-interval", &mut self.orphan_collection_interval, f.orphan_collection_interval);
            m.set("dns", &mut self.dns, f.dns);
            m.set("dns-trace-window", &mut self.dns_trace_window, f.dns_trace_window);
            m.set("ipv6", &mut self.ipv6, f.ipv6);
            m.set("fixed-cidr-v6", &mut self.fixed_cidr_v6, f.fixed_cidr_v6.map(Some));
            m.set("live-restore", &mut self.live_restore, f.live_restore);
            m.set("labels", &mut self.labels, f.labels);
            m.set("log-format", &mut self.log_format, f.log_format);
            m.set("cri-socket", &mut self.cri_socket, f.cri_socket.map(Some));
            m.set("no-cri", &mut self.no_cri, f.no_cri);
            m.set("cri-sandbox-image", &mut self.cri_sandbox_image, f.cri_sandbox_image);
            m.set("cri-stream-address", &mut self.cri_stream_address, f.cri_stream_address);
            m.set("cni-conf-dir", &mut self.cni_conf_dir, f.cni_conf_dir);
            m.set("cni-bin-dir", &mut self.cni_bin_dir, f.cni_bin_dir);
            m.set("hooks-dir", &mut self.hooks_dir, f.hooks_dir);
            if !m.conflicts.is_empty() {
                anyhow::bail!(
                    "unable to configure the engine with file {}: the following directives are specified both as a flag and in the configuration file: {}",
                    path.display(),
                    m.conflicts.join(", ")
                );
            }
            if self.certs_dir.is_none() {
                self.certs_dir = path.parent().map(|p| p.join("certs.d"));
            }
            self.given = given;
        }
        if self.pidfile.is_none() {
            self.pidfile = Some(self.exec_root.join("engined.pid"));
        }
        if self.cri_socket.is_none() {
            self.cri_socket = Some(self.exec_root.join("cri.sock"));
        }
        if let Some(bad) = self.labels.iter().find(|l| l.split_once('=').is_none_or(|(k, _)| k.is_empty())) {
            anyhow::bail!("invalid label {bad:?}: want key=value");
        }
        if let Some(bad) = self.dns.iter().find(|d| d.parse::<std::net::IpAddr>().is_err()) {
            anyhow::bail!("invalid --dns {bad:?}: an IP address");
        }
        if !["text", "json"].contains(&self.log_format.as_str()) {
            anyhow::bail!("invalid --log-format {:?}: use text or json", self.log_format);
        }
        if !["error", "warn", "info", "debug"].contains(&self.log_level.as_str()) {
            anyhow::bail!("invalid --log-level {:?}: use error, warn, info or debug", self.log_level);
        }
        self.listen()?;
        self.address_pools()?;
        if !["auto", "iptables", "nftables", "none"].contains(&self.firewall_backend.as_str()) {
            anyhow::bail!(
                "invalid --firewall-backend {:?}: use auto, iptables, nftables or none",
                self.firewall_backend
            );
        }
        self.default_bridge_address()?;
        self.default_bridge_v6()?;
        self.tail_sampling()?;
        if self.bridge_name.is_empty()
            || self.bridge_name.len() > 15
            || !self.bridge_name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            anyhow::bail!("invalid --bridge-name {:?}: 1 to 15 letters, digits, '-' or '_'", self.bridge_name);
        }
        if self.max_concurrent_downloads == 0 || self.max_concurrent_uploads == 0 {
            anyhow::bail!("max-concurrent-downloads and max-concurrent-uploads must be at least 1");
        }
        self.upload_chunk_size()?;
        if self.max_api_connections == Some(0) {
            anyhow::bail!("max-api-connections must be at least 1");
        }
        for m in &self.registry_mirrors {
            if !(m.starts_with("http://") || m.starts_with("https://")) {
                anyhow::bail!("invalid registry mirror {m:?}: want http:// or https:// and a host");
            }
        }
        if !self.cgroup_parent.starts_with('/') {
            self.cgroup_parent = format!("/{}", self.cgroup_parent);
        }
        Ok(self)
    }

    /// How engined reaches registries.
    pub fn registry(&self) -> engine_registry::RegistryConfig {
        engine_registry::RegistryConfig {
            mirrors: self.registry_mirrors.clone(),
            insecure_registries: self.insecure_registries.clone(),
            certs_dir: Some(self.certs_dir.clone().unwrap_or_else(|| PathBuf::from("/etc/engine/certs.d"))),
            upload_chunk_size: self.upload_chunk_size().unwrap_or(0),
        }
    }

    /// `max-upload-chunk-size` in bytes (checked when the configuration is read).
    fn upload_chunk_size(&self) -> anyhow::Result<u64> {
        let n = engine_util::size::parse_bytes(&self.max_upload_chunk_size)
            .map_err(|e| anyhow::anyhow!("invalid max-upload-chunk-size: {e}"))?;
        Ok(n as u64)
    }

    /// Where the API listens: `unix://PATH`, or the socket systemd hands over (`fd://`, the
    /// first one; `fd://N`).
    pub fn listen(&self) -> anyhow::Result<Listen> {
        if let Some(fd) = self.host.strip_prefix("fd://") {
            let fd = (!fd.is_empty())
                .then(|| fd.parse::<i32>().map_err(|_| anyhow::anyhow!("--host {}: want fd:// or fd://N", self.host)))
                .transpose()?;
            return Ok(Listen::Activated(fd));
        }
        self.socket_path().map(Listen::Unix)
    }

    /// The unix socket path of `--host`.
    pub fn socket_path(&self) -> anyhow::Result<PathBuf> {
        match self.host.strip_prefix("unix://") {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ if self.host.starts_with("tcp://") => {
                anyhow::bail!("--host {}: TCP without TLS is refused; use unix://PATH", self.host)
            }
            _ => anyhow::bail!("--host {:?}: want unix://PATH", self.host),
        }
    }

    pub fn lifecycled_bin(&self) -> PathBuf {
        self.lifecycled.clone().unwrap_or_else(|| sibling("engine-lifecycled"))
    }

    pub fn init_bin(&self) -> PathBuf {
        self.init.clone().unwrap_or_else(|| sibling("engine-init"))
    }

    pub fn proxy_bin(&self) -> PathBuf {
        self.userland_proxy_path.clone().unwrap_or_else(|| sibling("engine-proxy"))
    }

    pub fn address_pools(&self) -> anyhow::Result<Vec<engine_network::ipam::Pool>> {
        if self.default_address_pools.is_empty() {
            return Ok(engine_network::ipam::default_pools());
        }
        self.default_address_pools
            .iter()
            .map(|p| p.parse().map_err(|e| anyhow::anyhow!("--default-address-pool: {e}")))
            .collect()
    }

    /// The tail sampling policy of the OTLP export.
    pub fn tail_sampling(&self) -> anyhow::Result<crate::tailsample::Policy> {
        if !(0.0..=1.0).contains(&self.trace_keep_ratio) {
            anyhow::bail!("invalid --trace-keep-ratio {}: want a share from 0 to 1", self.trace_keep_ratio);
        }
        let keep_slower_than = match &self.trace_keep_slower_than {
            None => None,
            Some(d) => Some(engine_util::time::parse_duration(d).ok_or_else(|| {
                anyhow::anyhow!("invalid --trace-keep-slower-than {d:?}: want a duration such as 250ms or 2s")
            })?),
        };
        Ok(crate::tailsample::Policy { keep_ratio: self.trace_keep_ratio, keep_slower_than })
    }

    pub fn default_bridge_address(&self) -> anyhow::Result<Option<ipnet::Ipv4Net>> {
        let Some(bip) = &self.bip else { return Ok(None) };
        let net: ipnet::Ipv4Net = bip.parse().map_err(|_| {
            anyhow::anyhow!("invalid --bip {bip:?}: want an address with its prefix, e.g. 172.17.0.1/16")
        })?;
        if net.addr() == net.network() || net.prefix_len() > 30 {
            anyhow::bail!("invalid --bip {bip:?}: the address is the bridge's own (a host address of the subnet, e.g. 172.17.0.1/16)");
        }
        Ok(Some(net))
    }

    /// The default bridge's IPv6 subnet: `None` without --ipv6; `Some(None)` for a unique
    /// local one of the network's id.
    pub fn default_bridge_v6(&self) -> anyhow::Result<Option<Option<ipnet::Ipv6Net>>> {
        match (&self.fixed_cidr_v6, self.ipv6) {
            (Some(c), false) => anyhow::bail!("--fixed-cidr-v6 {c:?} needs --ipv6"),
            (_, false) => Ok(None),
            (None, true) => Ok(Some(None)),
            (Some(c), true) => {
                let net: ipnet::Ipv6Net = c.parse().map_err(|_| {
                    anyhow::anyhow!("invalid --fixed-cidr-v6 {c:?}: want an IPv6 subnet, e.g. fd00:1::/64")
                })?;
                if net.prefix_len() > 124 {
                    anyhow::bail!("invalid --fixed-cidr-v6 {c:?}: too small");
                }
                Ok(Some(Some(net.trunc())))
            }
        }
    }

    pub fn lifecycled_socket(&self) -> PathBuf {
        self.exec_root.join("lifecycled.sock")
    }

    /// Engined's OTLP receiver socket (lifecycled, the shims and the runtime export to it).
    pub fn otlp_receiver_socket(&self) -> PathBuf {
        self.exec_root.join("otlp.sock")
    }

    /// Whether a message of `level` is logged: up to the level a SIGHUP set, else the
    /// configuration's.
    pub fn log_enabled(&self, level: &str) -> bool {
        let current = match LOG_LEVEL.load(std::sync::atomic::Ordering::Relaxed) {
            u8::MAX => level_rank(&self.log_level),
            n => usize::from(n),
        };
        level_rank(level) <= current
    }
}

const LEVELS: [&str; 4] = ["error", "warn", "info", "debug"];

fn level_rank(l: &str) -> usize {
    LEVELS.iter().position(|x| *x == l).unwrap_or(2)
}

/// The log level a SIGHUP set (its rank), over the configuration's; `u8::MAX`: none.
static LOG_LEVEL: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

/// What SIGHUP changes without a restart, as dockerd reloads them.
#[derive(Clone, Debug, PartialEq)]
pub struct Reloadable {
    pub log_level: String,
    pub registry_mirrors: Vec<String>,
    pub insecure_registries: Vec<String>,
    pub max_concurrent_downloads: usize,
    pub max_concurrent_uploads: usize,
    pub labels: Vec<String>,
}

impl Reloadable {
    pub fn of(c: &Config) -> Self {
        Reloadable {
            log_level: c.log_level.clone(),
            registry_mirrors: c.registry_mirrors.clone(),
            insecure_registries: c.insecure_registries.clone(),
            max_concurrent_downloads: c.max_concurrent_downloads,
            max_concurrent_uploads: c.max_concurrent_uploads,
            labels: c.labels.clone(),
        }
    }

    /// What differs from `self` in `next`: `log-level: info → debug`, one per option.
    pub fn changes(&self, next: &Reloadable) -> Vec<String> {
        let mut out = Vec::new();
        let mut diff = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name}: {a} → {b}"));
            }
        };
        diff("log-level", self.log_level.clone(), next.log_level.clone());
        diff("registry-mirrors", format!("{:?}", self.registry_mirrors), format!("{:?}", next.registry_mirrors));
        diff(
            "insecure-registries",
            format!("{:?}", self.insecure_registries),
            format!("{:?}", next.insecure_registries),
        );
        diff(
            "max-concurrent-downloads",
            self.max_concurrent_downloads.to_string(),
            next.max_concurrent_downloads.to_string(),
        );
        diff(
            "max-concurrent-uploads",
            self.max_concurrent_uploads.to_string(),
            next.max_concurrent_uploads.to_string(),
        );
        diff("labels", format!("{:?}", self.labels), format!("{:?}", next.labels));
        out
    }

    /// Makes the log level the one logging follows from now on.
    pub fn apply_log_level(&self) {
        LOG_LEVEL.store(level_rank(&self.log_level) as u8, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Writes one log line to stderr: `<time> level=<level> msg="…"` (with `--log-format json`,
/// `{"level":…,"msg":…,"time":…}`), or under systemd's journal (`$JOURNAL_STREAM`) the message
/// with its syslog priority prefix (`<4>`) and no time (the journal has its own).
pub fn emit(level: &str, msg: &str) {
    static JOURNAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let journal = *JOURNAL.get_or_init(|| std::env::var_os("JOURNAL_STREAM").is_some());
    let priority = match level {
        "error" => 3,
        "warn" => 4,
        "info" => 6,
        _ => 7,
    };
    match (JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed), journal) {
        (true, true) => eprintln!("<{priority}>{}", serde_json::json!({"level": level, "msg": msg})),
        (true, false) => eprintln!("{}", serde_json::json!({"level": level, "msg": msg, "time": timestamp()})),
        (false, true) => eprintln!("<{priority}>{msg}"),
        (false, false) => eprintln!("{} level={level} msg={msg:?}", timestamp()),
    }
}

/// `--log-format json`: [`emit`] writes JSON objects.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes [`emit`] follow the configuration's log format from now on.
pub fn apply_log_format(c: &Config) {
    JSON_LOGS.store(c.log_format == "json", std::sync::atomic::Ordering::Relaxed);
}

/// `name` in the directory of the running binary (or on PATH when that is unknown).
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Logs one line to stderr with a level, if enabled.
#[macro_export]
macro_rules! log {
    ($cfg:expr, $level:literal, $($arg:tt)*) => {
        if $cfg.log_enabled($level) {
            $crate::config::emit($level, &format!($($arg)*));
        }
    };
}

pub fn timestamp() -> String {
    engine_util::time::rfc3339_seconds(std::time::SystemTime::now())
}

pub fn ensure_dir(p: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(p).map_err(|e| anyhow::anyhow!("creating {}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_sets_options_and_a_flag_for_the_same_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("daemon.json");
        std::fs::write(&file, r#"{"otlp-endpoint": "http://127.0.0.1:4317", "otlp-protocol": "grpc", "trace-max-traces": 10, "log-level": "debug"}"#).unwrap();
        let cfg = resolve_with(&file, &["--trace-max-mb", "7"]).unwrap();
        assert_eq!(cfg.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        assert_eq!((cfg.trace_max_traces, cfg.trace_max_mb, cfg.log_level.as_str()), (10, 7, "debug"));
        // a flag at its default value counts as given too, as with dockerd
        let err = resolve_with(&file, &["--log-level", "info", "--trace-max-traces", "10"]).unwrap_err().to_string();
        assert!(
            err.contains("specified both as a flag and in the configuration file")
                && err.contains(r#"log-level: (from flag: "info", from file: "debug")"#)
                && err.contains("trace-max-traces: (from flag: 10, from file: 10)"),
            "{err}"
        );
        std::fs::write(&file, r#"{"hosts": ["unix:///tmp/x.sock"]}"#).unwrap();
        let err = resolve_with(&file, &["-H", "fd://"]).unwrap_err().to_string();
        assert!(err.contains("hosts: (from flag: \"fd://\""), "{err}");
        std::fs::write(&file, r#"{"otlp": "x"}"#).unwrap();
        let err = resolve_with(&file, &[]).unwrap_err().to_string();
        assert!(err.contains("unknown field `otlp`") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn config_file_takes_comments_and_trailing_commas_and_errors_keep_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("daemon.json");
        let text = "// the daemon\n{\n  /* levels: error … debug */ \"log-level\": \"warn\", // quiet\n  \"labels\": [\"a=1\", \"b=//not a comment\",],\n}\n";
        std::fs::write(&file, text).unwrap();
        let cfg = resolve_with(&file, &[]).unwrap();
        assert_eq!(cfg.log_level, "warn");
        assert_eq!(cfg.labels, ["a=1", "b=//not a comment"]);
        std::fs::write(&file, "// one\n// two\n{\n  \"log-level\": \"warn\",\n  \"dsn\": []\n}\n").unwrap();
        let err = resolve_with(&file, &[]).unwrap_err().to_string();
        assert!(err.contains("unknown field `dsn`") && err.contains("line 5"), "{err}");
        std::fs::write(&file, r#"{"labels": ["novalue"]}"#).unwrap();
        assert!(resolve_with(&file, &[]).unwrap_err().to_string().contains("invalid label \"novalue\""));
    }

    #[test]
    fn the_default_file_is_every_option_commented_out_and_each_uncommented_reads_back() {
        let text = default_file();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("daemon.json");
        std::fs::write(&file, &text).unwrap();
        // as it is: nothing set, so any flag goes with it
        let cfg = resolve_with(&file, &["--log-level", "warn", "-H", "fd://"]).unwrap();
        assert_eq!((cfg.log_level.as_str(), cfg.host.as_str()), ("warn", "fd://"));
        // everything uncommented: the defaults, read back
        let all: String = text
            .lines()
            .filter(|l| {
                !l.trim_start().starts_with("// ")
                    || l.trim_start().starts_with("// \"")
                    || l.starts_with("  //   ")
                    || l.starts_with("  // ]")
                    || l.starts_with("  // }")
            })
            .map(|l| if l.starts_with("  // ") { l.replacen("  // ", "  ", 1) } else { l.to_string() })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&file, &all).unwrap();
        let cfg = resolve_with(&file, &[]).unwrap_or_else(|e| panic!("{e}\n{all}"));
        let defaults = Config::from_args(["engined"]).unwrap();
        assert_eq!(cfg.host, defaults.host);
        assert_eq!(cfg.default_address_pools.len(), 6);
        assert_eq!((cfg.log_level, cfg.live_restore, cfg.iptables), (defaults.log_level, true, true));
        for key in ["log-level", "data-root", "registry-mirrors", "dns", "ipv6", "live-restore", "labels", "hosts"] {
            assert!(text.contains(&format!("// \"{key}\": ")), "{key} missing from {text}");
        }
    }

    /// The configuration from `file` and the flags `extra`.
    fn resolve_with(file: &std::path::Path, extra: &[&str]) -> anyhow::Result<Config> {
        let mut args = vec!["engined", "--config-file", file.to_str().unwrap()];
        args.extend(extra);
        Config::from_args(args)?.resolve()
    }

    #[test]
    fn upload_chunk_size_from_flag_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("daemon.json");
        let resolve = |extra: &[&str]| resolve_with(&file, extra);
        std::fs::write(&file, "{}").unwrap();
        assert_eq!(resolve(&[]).unwrap().registry().upload_chunk_size, 64 << 20);
        assert_eq!(resolve(&["--max-upload-chunk-size", "0"]).unwrap().registry().upload_chunk_size, 0);
        let err = resolve(&["--max-upload-chunk-size", "lots"]).unwrap_err().to_string();
        assert!(err.contains("invalid max-upload-chunk-size"), "{err}");
        std::fs::write(&file, r#"{"max-upload-chunk-size": "512k"}"#).unwrap();
        assert_eq!(resolve(&[]).unwrap().registry().upload_chunk_size, 512 << 10);
    }

    #[test]
    fn api_connection_bounds_from_flag_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("daemon.json");
        let resolve = |extra: &[&str]| resolve_with(&file, extra);
        std::fs::write(&file, "{}").unwrap();
        let cfg = resolve(&[]).unwrap();
        assert_eq!((cfg.api_header_timeout, cfg.max_api_connections), (30, None));
        assert_eq!(cfg.orphan_collection_interval, 600);
        let cfg = resolve(&["--api-header-timeout", "0", "--max-api-connections", "7"]).unwrap();
        assert_eq!((cfg.api_header_timeout, cfg.max_api_connections), (0, Some(7)));
        let err = resolve(&["--max-api-connections", "0"]).unwrap_err().to_string();
        assert!(err.contains("max-api-connections must be at least 1"), "{err}");
        assert_eq!(resolve(&["--orphan-collection-interval", "60"]).unwrap().orphan_collection_interval, 60);
        std::fs::write(&file, r#"{"api-header-timeout": 5, "max-api-connections": 100}"#).unwrap();
        let cfg = resolve(&[]).unwrap();
        assert_eq!((cfg.api_header_timeout, cfg.max_api_connections), (5, Some(100)));
        std::fs::write(&file, r#"{"orphan-collection-interval": 0, "api-body-timeout": 5}"#).unwrap();
        assert_eq!(resolve(&[]).unwrap().api_body_timeout, 5);
        assert_eq!(resolve(&[]).unwrap().orphan_collection_interval, 0);
    }
}
