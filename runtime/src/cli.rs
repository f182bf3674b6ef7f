//! The command line, as runc has it, and the dispatch to the lifecycle operations.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use engine_telemetry::Recorder;

use crate::container::{self, ConsoleSocket, CreateOptions};
use crate::control;
use crate::exec::{self, ExecOptions};
use crate::log::{LogFormat, Logger};
use crate::state::StateDir;
use crate::terminal;
use crate::{Error, Result};

/// Version of the runtime spec this runtime implements.
pub const SPEC_VERSION: &str = "1.2.0";

#[derive(Parser, Debug)]
#[command(name = "engine-runtime", version = concat!(env!("CARGO_PKG_VERSION"), "\nspec: 1.2.0"), about = "An OCI container runtime")]
pub struct Cli {
    /// Directory for container state.
    #[arg(long, global = true, default_value = "/run/engine-runtime")]
    pub root: PathBuf,
    /// Log file (default: none; errors always go to stderr).
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Format of the log file.
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log debug lines.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Use systemd to manage cgroups (not supported; accepted so callers get a clear error).
    #[arg(long = "systemd-cgroup", global = true)]
    pub systemd_cgroup: bool,
    /// Rootless mode ("auto", "true", "false"); only "false" and "auto" as root are supported.
    #[arg(long, global = true)]
    pub rootless: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Container id.
    pub id: String,
    /// Bundle directory (holds config.json).
    #[arg(long, short = 'b', default_value = ".")]
    pub bundle: PathBuf,
    /// Write the container's pid here.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to send the pty master to (for process.terminal).
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Do not use pivot_root (for a ramdisk root): move the rootfs over / and chroot.
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// Do not create a new session keyring.
    #[arg(long = "no-new-keyring")]
    pub no_new_keyring: bool,
    /// Pass N extra descriptors (3 .. 3+N-1) to the container.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: i32,
}

/// Arguments of `exec`, as runc takes them.
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// The process as JSON (config.json's `process` object) instead of a command line.
    #[arg(long, short = 'p')]
    pub process: Option<PathBuf>,
    /// Allocate a pseudo-terminal.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Unix socket to send the pty master to.
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Return once the process runs instead of waiting for it.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Write the process's pid here.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Set an environment variable (KEY=VALUE), added to the container's.
    #[arg(long, short = 'e')]
    pub env: Vec<String>,
    /// Working directory in the container.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// uid[:gid] to run as.
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Additional group ids.
    #[arg(long = "additional-gids", short = 'g')]
    pub additional_gids: Vec<u32>,
    /// Add a capability to every set.
    #[arg(long, short = 'c')]
    pub cap: Vec<String>,
    /// Set no_new_privs.
    #[arg(long = "no-new-privs")]
    pub no_new_privs: bool,
    /// Pass N extra descriptors (3 .. 3+N-1).
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: i32,
    /// Exec even in a paused container.
    #[arg(long = "ignore-paused")]
    pub ignore_paused: bool,
    /// SELinux label (no SELinux here: must be empty).
    #[arg(long = "process-label")]
    pub process_label: Option<String>,
    /// AppArmor profile (no AppArmor here: must be empty).
    #[arg(long)]
    pub apparmor: Option<String>,
    /// Container id.
    pub id: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

impl ExecArgs {
    fn options(&self, dir: &StateDir) -> Result<ExecOptions> {
        if self.preserve_fds < 0 {
            return Err(Error::Other(format!("--preserve-fds {} must not be negative", self.preserve_fds)));
        }
        for (flag, v) in [("--process-label", &self.process_label), ("--apparmor", &self.apparmor)] {
            if v.as_deref().is_some_and(|v| !v.is_empty()) {
                return Err(Error::Other(format!("{flag}: not supported on this host (no SELinux or AppArmor)")));
            }
        }
        let process = match &self.process {
            Some(path) => {
                let text = std::fs::read(path).map_err(|e| Error::Other(format!("read {}: {e}", path.display())))?;
                serde_json::from_slice(&text)
                    .map_err(|e| Error::Other(format!("invalid process {}: {e}", path.display())))?
            }
            None => {
                let user = match &self.user {
                    None => None,
                    Some(u) => {
                        let bad = || Error::Other(format!("invalid --user {u:?}: want uid[:gid]"));
                        let (uid, gid) = match u.split_once(':') {
                            Some((a, b)) => (a.parse().map_err(|_| bad())?, Some(b.parse().map_err(|_| bad())?)),
                            None => (u.parse().map_err(|_| bad())?, None),
                        };
                        Some((uid, gid))
                    }
                };
                let o = exec::ProcessOverrides {
                    args: self.command.clone(),
                    env: self.env.clone(),
                    cwd: self.cwd.clone(),
                    user,
                    additional_gids: self.additional_gids.clone(),
                    caps: self.cap.clone(),
                    no_new_privs: self.no_new_privs,
                    tty: self.tty,
                };
                exec::process_from_args(exec::container_process(dir, &self.id)?, &o)?
            }
        };
        Ok(ExecOptions {
            id: self.id.clone(),
            process,
            pid_file: self.pid_file.clone(),
            console: self.console_socket.clone().map(ConsoleSocket::Path),
            preserve_fds: self.preserve_fds,
            ignore_paused: self.ignore_paused,
        })
    }
}

/// Arguments of `update`, as runc takes them.
#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    /// linux.resources as JSON from a file ("-" for stdin); flags override it.
    #[arg(long, short = 'r')]
    pub resources: Option<PathBuf>,
    #[arg(long = "blkio-weight")]
    pub blkio_weight: Option<u16>,
    #[arg(long = "cpu-period")]
    pub cpu_period: Option<u64>,
    #[arg(long = "cpu-quota")]
    pub cpu_quota: Option<i64>,
    #[arg(long = "cpu-share")]
    pub cpu_share: Option<u64>,
    #[arg(long = "cpu-rt-period")]
    pub cpu_rt_period: Option<u64>,
    #[arg(long = "cpu-rt-runtime")]
    pub cpu_rt_runtime: Option<i64>,
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems")]
    pub cpuset_mems: Option<String>,
    /// Memory limit (bytes, or with a k/m/g suffix; -1 for none).
    #[arg(long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    #[arg(long = "memory-reservation", allow_hyphen_values = true)]
    pub memory_reservation: Option<String>,
    /// Memory plus swap limit.
    #[arg(long = "memory-swap", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Container id.
    pub id: String,
}

/// Bytes with an optional binary suffix, as docker and runc accept them ("64m"); -1 is "none".
fn parse_bytes(s: &str) -> Result<i64> {
    engine_util::size::parse_limit(s).map_err(|e| Error::Other(e.to_string()))
}

impl UpdateArgs {
    fn resources(&self) -> Result<oci_spec::runtime::LinuxResources> {
        use serde_json::json;
        let mut v = match &self.resources {
            None => json!({}),
            Some(p) => {
                let text = if p.as_os_str() == "-" {
                    let mut s = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut s)
                        .map_err(|e| Error::Other(format!("read stdin: {e}")))?;
                    s
                } else {
                    std::fs::read(p).map_err(|e| Error::Other(format!("read {}: {e}", p.display())))?
                };
                serde_json::from_slice(&text).map_err(|e| Error::Other(format!("invalid resources JSON: {e}")))?
            }
        };
        if let Some(x) = self.blkio_weight {
            v["blockIO"]["weight"] = json!(x)
        }
        if let Some(x) = self.cpu_period {
            v["cpu"]["period"] = json!(x)
        }
        if let Some(x) = self.cpu_quota {
            v["cpu"]["quota"] = json!(x)
        }
        if let Some(x) = self.cpu_share {
            v["cpu"]["shares"] = json!(x)
        }
        if let Some(x) = self.cpu_rt_period {
            v["cpu"]["realtimePeriod"] = json!(x)
        }
        if let Some(x) = self.cpu_rt_runtime {
            v["cpu"]["realtimeRuntime"] = json!(x)
        }
        if let Some(x) = &self.cpuset_cpus {
            v["cpu"]["cpus"] = json!(x)
        }
        if let Some(x) = &self.cpuset_mems {
            v["cpu"]["mems"] = json!(x)
        }
        if let Some(x) = &self.memory {
            v["memory"]["limit"] = json!(parse_bytes(x)?)
        }
        if let Some(x) = &self.memory_reservation {
            v["memory"]["reservation"] = json!(parse_bytes(x)?)
        }
        if let Some(x) = &self.memory_swap {
            v["memory"]["swap"] = json!(parse_bytes(x)?)
        }
        if let Some(x) = self.pids_limit {
            v["pids"]["limit"] = json!(x)
        }
        serde_json::from_value(v).map_err(|e| Error::Other(format!("invalid resources: {e}")))
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a container (its program waits for `start`).
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to a container.
    Kill {
        #[arg(long, short = 'a')]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container.
    Delete {
        #[arg(long, short = 'f')]
        force: bool,
        id: String,
    },
    /// Create and start a container; without --detach, wait for it and delete it.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(long, short = 'd')]
        detach: bool,
        /// Keep the container's state after it exits.
        #[arg(long)]
        keep: bool,
    },
    /// Run a further process in a running container.
    Exec(ExecArgs),
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Change a container's resource limits.
    Update(UpdateArgs),
    /// Print resource usage (`--stats`: once) or follow it and OOM kills.
    Events {
        #[arg(long)]
        stats: bool,
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Write a default config.json.
    Spec {
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
    },
    /// Print the features this runtime supports, as JSON.
    Features,
    /// List containers.
    List {
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// List a container's processes.
    Ps {
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        id: String,
        /// Options for ps(1) (accepted for compatibility; ignored).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
}

impl CreateArgs {
    fn options(&self) -> Result<CreateOptions> {
        if self.preserve_fds < 0 {
            return Err(Error::Other(format!("--preserve-fds {} must not be negative", self.preserve_fds)));
        }
        Ok(CreateOptions {
            id: self.id.clone(),
            bundle: self.bundle.clone(),
            pid_file: self.pid_file.clone(),
            no_pivot: self.no_pivot,
            preserve_fds: self.preserve_fds,
            console: self.console_socket.clone().map(ConsoleSocket::Path),
        })
    }
}

/// Runs a parsed command line; returns the exit code. Errors are logged here.
pub fn main(cli: Cli) -> i32 {
    let logger = Logger { file: cli.log.clone(), format: cli.log_format, debug: cli.debug };
    let mut rec = Recorder::from_env("engine-runtime");
    let code = match dispatch(&cli, &logger, &mut rec) {
        Ok(code) => code,
        Err(e) => {
            logger.error(&e.to_string());
            1
        }
    };
    rec.flush();
    code
}

fn dispatch(cli: &Cli, logger: &Logger, rec: &mut Recorder) -> Result<i32> {
    if cli.systemd_cgroup {
        return Err(Error::Other("--systemd-cgroup is not supported: use cgroupfs paths".into()));
    }
    if matches!(cli.rootless.as_deref(), Some("true")) {
        return Err(Error::Other("rootless mode is not supported yet".into()));
    }
    let dir = StateDir::new(&cli.root);
    logger.debug(&format!("{:?}", cli.command));
    match &cli.command {
        Command::Create(args) => {
            container::create(&dir, &args.options()?, rec)?;
            Ok(0)
        }
        Command::Start { id } => container::start(&dir, id, rec).map(|_| 0),
        Command::State { id } => {
            let state = container::state(&dir, id)?;
            println!("{}", serde_json::to_string_pretty(&state).expect("serde_json::Value serializes"));
            Ok(0)
        }
        Command::Kill { all, id, signal } => {
            let sig = container::parse_signal(signal)?;
            container::kill(&dir, id, sig, *all, rec).map(|_| 0)
        }
        Command::Delete { force, id } => container::delete(&dir, id, *force, rec).map(|_| 0),
        Command::Run { create, detach, keep } => {
            let mut opts = create.options()?;
            // In the foreground with a terminal, run listens on the console socket itself and
            // relays the pty to its own stdio.
            let relay = if !*detach && opts.console.is_none() && wants_terminal(&opts.bundle) {
                let (ours, theirs) =
                    std::os::unix::net::UnixStream::pair().map_err(|e| Error::Other(format!("socketpair: {e}")))?;
                opts.console = Some(ConsoleSocket::Connected(std::sync::Arc::new(theirs.into())));
                Some(ours)
            } else {
                None
            };
            let created = container::create(&dir, &opts, rec)?;
            let master = match relay.map(|s| terminal::receive_master(std::os::fd::AsFd::as_fd(&s))).transpose() {
                Ok(m) => m,
                Err(e) => {
                    let _ = container::delete(&dir, &opts.id, true, rec);
                    return Err(e.into());
                }
            };
            if !*detach {
                if let Err(e) = container::block_forwarded_signals() {
                    let _ = container::delete(&dir, &opts.id, true, rec);
                    return Err(e);
                }
            }
            if let Err(e) = container::start(&dir, &opts.id, rec) {
                let _ = container::delete(&dir, &opts.id, true, rec);
                return Err(e);
            }
            if *detach {
                return Ok(0);
            }
            rec.flush();
            let code = container::wait_forwarding(&created, master.as_ref())?;
            if !keep {
                container::delete(&dir, &opts.id, true, rec)?;
            }
            Ok(code)
        }
        Command::Exec(args) => {
            let mut opts = args.options(&dir)?;
            let relay = if !args.detach && opts.console.is_none() && opts.process.terminal() == Some(true) {
                let (ours, theirs) =
                    std::os::unix::net::UnixStream::pair().map_err(|e| Error::Other(format!("socketpair: {e}")))?;
                opts.console = Some(ConsoleSocket::Connected(std::sync::Arc::new(theirs.into())));
                Some(ours)
            } else {
                None
            };
            let started = exec::exec(&dir, &opts, rec)?;
            if args.detach {
                return Ok(0);
            }
            let master = relay.map(|s| terminal::receive_master(std::os::fd::AsFd::as_fd(&s))).transpose()?;
            rec.flush();
            container::wait_forwarding(&started, master.as_ref())
        }
        Command::Pause { id } => control::pause(&dir, id, rec).map(|_| 0),
        Command::Resume { id } => control::resume(&dir, id, rec).map(|_| 0),
        Command::Update(args) => {
            let resources = args.resources()?;
            control::update(&dir, &args.id, &resources, rec).map(|_| 0)
        }
        Command::Events { stats, interval, id } => {
            let interval = control::parse_interval(interval)?;
            let mut out = std::io::stdout();
            if *stats {
                writeln!(out, "{}", control::stats(&dir, id)?).map_err(|e| Error::Other(e.to_string()))?;
                return Ok(0);
            }
            // follow: a stats event per interval and an oom event per new OOM kill, until it stops
            let mut ooms = control::oom_kills(&dir, id)?;
            loop {
                let Ok(event) = control::stats(&dir, id) else { return Ok(0) };
                let now = control::oom_kills(&dir, id).unwrap_or(ooms);
                for _ in ooms..now {
                    let _ = writeln!(out, "{}", serde_json::json!({"type": "oom", "id": id}));
                }
                ooms = now;
                if writeln!(out, "{event}").and_then(|_| out.flush()).is_err() {
                    return Ok(0);
                }
                std::thread::sleep(interval);
            }
        }
        Command::Spec { bundle } => write_default_spec(bundle).map(|_| 0),
        Command::Features => {
            println!("{}", serde_json::to_string_pretty(&features()).expect("serde_json::Value serializes"));
            Ok(0)
        }
        Command::List { format, quiet } => list(&dir, format, *quiet),
        Command::Ps { format, id, .. } => ps(&dir, id, format),
    }
}

/// Whether the bundle's config asks for a terminal (a config that cannot be read is left to
/// `create` to report).
fn wants_terminal(bundle: &std::path::Path) -> bool {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["process"]["terminal"] == serde_json::Value::Bool(true))
}

fn write_default_spec(bundle: &std::path::Path) -> Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        return Err(Error::Other(format!("{} exists; remove it first", path.display())));
    }
    let mut spec = oci_spec::runtime::Spec::default();
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(false));
        p.set_args(Some(vec!["sh".into()]));
    }
    spec.set_hostname(Some("engine".into()));
    if let Some(linux) = spec.linux_mut() {
        // deny every device but the defaults, as runc's spec does
        let deny_all = oci_spec::runtime::LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(|e| Error::Other(e.to_string()))?;
        let mut resources = linux.resources().clone().unwrap_or_default();
        resources.set_devices(Some(vec![deny_all]));
        linux.set_resources(Some(resources));
    }
    let text = serde_json::to_string_pretty(&spec).map_err(|e| Error::Other(e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| Error::Other(format!("write {}: {e}", path.display())))
}

/// The features document of the runtime spec (features.md).
pub fn features() -> serde_json::Value {
    let caps: Vec<String> =
        caps::all().iter().map(|c| c.to_string()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": SPEC_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "mand", "noatime",
            "nodev", "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime", "nosuid", "private",
            "rbind", "relatime", "remount", "ro", "rprivate", "rshared", "rslave", "runbindable", "rw",
            "shared", "slave", "strictatime", "suid", "sync", "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": caps,
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false, "rdma": false },
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD",
                    "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
                "knownFlags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
                "supportedFlags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]
            },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
            "intelRdt": { "enabled": false },
            "mountExtensions": { "idmap": { "enabled": false } }
        },
        "annotations": { "io.github.engine.runtime.version": env!("CARGO_PKG_VERSION") }
    })
}

fn list(dir: &StateDir, format: &str, quiet: bool) -> Result<i32> {
    let all = container::list(dir)?;
    let mut out = std::io::stdout().lock();
    if quiet {
        for (st, _) in &all {
            let _ = writeln!(out, "{}", st.id);
        }
        return Ok(0);
    }
    match format {
        "json" => {
            let v: Vec<_> = all.iter().map(|(st, s)| st.to_spec_json(*s)).collect();
            let _ = writeln!(out, "{}", serde_json::Value::Array(v));
        }
        "table" => {
            let w = all.iter().map(|(st, _)| st.id.len()).max().unwrap_or(2).max(2);
            let _ = writeln!(out, "{:w$}   {:8} {:10} {:40} {:30} OWNER", "ID", "PID", "STATUS", "BUNDLE", "CREATED");
            for (st, s) in &all {
                let pid = if *s == crate::state::Status::Stopped { 0 } else { st.pid };
                let _ = writeln!(
                    out,
                    "{:w$}   {:<8} {:10} {:40} {:30} root",
                    st.id,
                    pid,
                    s.to_string(),
                    st.bundle.display(),
                    st.created
                );
            }
        }
        other => return Err(Error::Other(format!("invalid --format {other:?}: want table or json"))),
    }
    Ok(0)
}

fn ps(dir: &StateDir, id: &str, format: &str) -> Result<i32> {
    let pids = container::pids(dir, id)?;
    match format {
        "json" => println!("{}", serde_json::to_string(&pids).expect("a list of integers serializes")),
        "table" => {
            println!("{:>8}  CMD", "PID");
            for pid in pids {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_string())
                    .unwrap_or_default();
                println!("{pid:>8}  {cmd}");
            }
        }
        other => return Err(Error::Other(format!("invalid --format {other:?}: want table or json"))),
    }
    Ok(0)
}
