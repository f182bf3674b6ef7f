//! The `engine` command-line client.
//!
//! Owns: argument parsing (Docker's commands and flags) and presentation (tables, templates,
//! progress, waterfalls). It is only a client: it must never touch container state, images or
//! cgroups itself; everything goes through the daemon's API. The one exception is reading a span
//! hand-off file offline (`engine trace --file`), which only reads.

pub mod bench;
pub mod benchcri;
pub mod client;
pub mod containers;
pub mod files;
pub mod format;
pub mod images;
pub mod networks;
pub mod pprof;
pub mod registry;
pub mod trace;
pub mod traceviews;
pub mod volumes;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

pub const DEFAULT_HOST: &str = "unix:///run/engine/engine.sock";

/// Command line of `engine`.
#[derive(Parser, Debug)]
#[command(name = "engine", version, about = "An observability-first container engine")]
pub struct Cli {
    /// Daemon socket to connect to (default: $DOCKER_HOST, else unix:///run/engine/engine.sock).
    #[arg(short = 'H', long = "host", env = "ENGINE_HOST", global = true)]
    pub host: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create and run a new container from an image.
    Run(containers::RunArgs),
    /// Create a new container.
    Create(containers::RunArgs),
    /// Start one or more stopped containers.
    Start(containers::StartArgs),
    /// Stop one or more running containers.
    Stop(containers::StopArgs),
    /// Restart one or more containers.
    Restart(containers::StopArgs),
    /// Kill one or more running containers.
    Kill(containers::KillArgs),
    /// Pause all processes within one or more containers.
    Pause(containers::Names),
    /// Unpause all processes within one or more containers.
    Unpause(containers::Names),
    /// Update configuration of one or more containers.
    Update(containers::UpdateArgs),
    /// Remove one or more containers.
    Rm(containers::RmArgs),
    /// Block until one or more containers stop, then print their exit codes.
    Wait(containers::Names),
    /// Fetch the logs of a container.
    Logs(containers::LogsArgs),
    /// Inspect changes to files or directories on a container's filesystem.
    Diff(files::DiffArgs),
    /// Export a container's filesystem as a tar archive.
    Export(files::ExportArgs),
    /// Create a new image from a container's changes.
    Commit(files::CommitArgs),
    /// Copy files/folders between a container and the local filesystem.
    Cp(files::CpArgs),
    /// Build an image from a Dockerfile.
    Build(files::BuildArgs),
    /// Manage builds.
    #[command(subcommand)]
    Builder(files::BuilderCommand),
    /// Return low-level information on containers or images.
    Inspect(containers::InspectArgs),
    /// List containers.
    Ps(containers::PsArgs),
    /// Rename a container.
    Rename { container: String, new_name: String },
    /// Display the running processes of a container.
    Top { container: String },
    /// Display resource usage of containers.
    Stats(containers::StatsArgs),
    /// Run a command in a running container.
    Exec(containers::ExecArgs),
    /// Attach local standard input, output, and error streams to a running container.
    Attach(containers::AttachArgs),
    /// List images.
    Images(images::ImagesArgs),
    /// Download an image from a registry.
    Pull(registry::PullArgs),
    /// Upload an image to a registry.
    Push(registry::PushArgs),
    /// Log in to a registry.
    Login(registry::LoginArgs),
    /// Log out from a registry.
    Logout(registry::LogoutArgs),
    /// Load images from a tar archive (docker save or OCI layout).
    Load(images::LoadArgs),
    /// Save images to a tar archive.
    Save(images::SaveArgs),
    /// Import a rootfs tarball to create an image.
    Import(images::ImportArgs),
    /// Create a tag TARGET that refers to SOURCE.
    Tag { source: String, target: String },
    /// Remove one or more images.
    Rmi(images::RmiArgs),
    /// Show the history of an image.
    History(images::HistoryArgs),
    /// Manage containers.
    #[command(subcommand)]
    Container(containers::ContainerCommand),
    /// Manage images.
    #[command(subcommand)]
    Image(images::ImageCommand),
    /// Manage volumes.
    #[command(subcommand)]
    Volume(volumes::VolumeCommand),
    /// Manage networks.
    #[command(subcommand)]
    Network(networks::NetworkCommand),
    /// List port mappings or a specific mapping for the container.
    Port {
        container: String,
        /// PRIVATE_PORT[/PROTO]
        private_port: Option<String>,
    },
    /// Get real time events from the engine.
    Events(volumes::EventsArgs),
    /// Manage the engine.
    #[command(subcommand)]
    System(volumes::SystemCommand),
    /// Show the engine version information.
    Version,
    /// Display system-wide information.
    Info,
    /// Show a trace as a waterfall.
    Trace(trace::TraceArgs),
    /// Measure container start latency, phase by phase, beside docker, podman or runc.
    Bench(bench::BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
}

impl Cli {
    /// The daemon to talk to: `-H`, else `$ENGINE_HOST`, else `$DOCKER_HOST` (so a shell set up
    /// for the Docker CLI works), else [`DEFAULT_HOST`].
    pub fn host(&self) -> String {
        self.host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| DEFAULT_HOST.to_string())
    }
}

/// Runs the CLI and returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Trace(args) if args.file.is_some() => return trace::from_file(args),
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "engine", &mut std::io::stdout());
            return Ok(0);
        }
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // The command is the root of its trace (under TRACEPARENT if one came in); its span goes to
    // the daemon when the command is done, and every request carries its context. Reading traces
    // is not traced.
    let name = format!("engine.{}", command_name(&cli.command));
    let spans = engine_telemetry::MemorySink::default();
    let mut rec = match cli.command {
        Command::Trace(_) => engine_telemetry::Recorder::disabled("engine"),
        _ => engine_telemetry::Recorder::with_sink(
            "engine",
            engine_telemetry::Sink::new(spans.clone()),
            engine_telemetry::TraceContext::from_env(),
        ),
    };
    let root = rec.start(&name, None);
    rec.set_kind(root, engine_telemetry::Kind::Client);
    rec.set_attr(root, "process.pid", std::process::id());
    // the command, never its arguments (they carry environment values, secrets among them)
    rec.set_attr(root, "process.command", "engine");
    let traceparent = rec.context(root).map(|c| c.traceparent());
    let client = client::Client::new(&cli.host(), traceparent)?;
    let result = rt.block_on(dispatch(&client, cli.command));
    let result = rec.finish(root, result.map_err(|e| format!("{e:#}"))).map_err(|e| anyhow::anyhow!(e));
    rec.flush();
    if let Some(req) = spans.take() {
        rt.block_on(trace::post_spans(&client, req));
    }
    result
}

/// The subcommand's name, for the root span (`engine.run`, `engine.image`).
fn command_name(c: &Command) -> String {
    let dbg = format!("{c:?}");
    let word = dbg.split(|ch: char| !ch.is_alphanumeric()).next().unwrap_or("command");
    word.to_ascii_lowercase()
}

async fn dispatch(c: &client::Client, command: Command) -> Result<i32> {
    use containers as ct;
    match command {
        Command::Run(a) => ct::run(c, a).await,
        Command::Create(a) => ct::create_cmd(c, a).await,
        Command::Start(a) => ct::start(c, a).await,
        Command::Stop(a) => ct::stop(c, a, "stop").await,
        Command::Restart(a) => ct::stop(c, a, "restart").await,
        Command::Kill(a) => ct::kill(c, a).await,
        Command::Pause(a) => ct::post_each(c, &a.containers, "pause").await,
        Command::Unpause(a) => ct::post_each(c, &a.containers, "unpause").await,
        Command::Update(a) => ct::update(c, a).await,
        Command::Rm(a) => ct::rm(c, a).await,
        Command::Wait(a) => ct::wait(c, a).await,
        Command::Logs(a) => ct::logs(c, a).await,
        Command::Inspect(a) => ct::inspect(c, a).await,
        Command::Diff(a) => files::diff(c, a).await,
        Command::Export(a) => files::export(c, a).await,
        Command::Commit(a) => files::commit(c, a).await,
        Command::Cp(a) => files::cp(c, a).await,
        Command::Build(a) => files::build(c, a).await,
        Command::Builder(cmd) => files::builder(c, cmd).await,
        Command::Ps(a) => ct::ps(c, a).await,
        Command::Rename { container, new_name } => ct::rename(c, &container, &new_name).await,
        Command::Top { container } => ct::top(c, &container).await,
        Command::Stats(a) => ct::stats(c, a).await,
        Command::Exec(a) => ct::exec(c, a).await,
        Command::Attach(a) => ct::attach(c, a).await,
        Command::Images(a) => images::images(c, a).await,
        Command::Pull(a) => registry::pull(c, a).await,
        Command::Push(a) => registry::push(c, a).await,
        Command::Login(a) => registry::login(c, a).await,
        Command::Logout(a) => registry::logout(a).await,
        Command::Load(a) => images::load(c, a).await,
        Command::Save(a) => images::save(c, a).await,
        Command::Import(a) => images::import(c, a).await,
        Command::Tag { source, target } => images::tag(c, &source, &target).await,
        Command::Rmi(a) => images::rmi(c, a).await,
        Command::History(a) => images::history(c, a).await,
        Command::Container(cmd) => ct::container(c, cmd).await,
        Command::Image(cmd) => images::image(c, cmd).await,
        Command::Volume(cmd) => volumes::volume(c, cmd).await,
        Command::Network(cmd) => networks::network(c, cmd).await,
        Command::Port { container, private_port } => ct::port(c, &container, private_port.as_deref()).await,
        Command::Events(a) => volumes::events(c, a).await,
        Command::System(volumes::SystemCommand::Df) => volumes::system_df(c).await,
        Command::System(volumes::SystemCommand::Info) => info(c).await,
        Command::System(volumes::SystemCommand::Check { collect }) => volumes::system_check(c, collect).await,
        Command::Version => version(c).await,
        Command::Info => info(c).await,
        Command::Trace(a) => trace::run(c, a).await,
        Command::Bench(a) => bench::run(c, c.host(), a).await,
        Command::Completion { .. } => unreachable!("handled before the runtime starts"),
    }
}

async fn version(c: &client::Client) -> Result<i32> {
    println!(
        "Client:\n Version:           {}\n API version:       {}\n OS/Arch:           linux/amd64\n",
        env!("CARGO_PKG_VERSION"),
        &client::API[1..]
    );
    let v = c.get("/version").await?;
    println!(
        "Server: engine\n Engine:\n  Version:          {}\n  API version:      {} (minimum version {})\n  OS/Arch:          {}/{}\n  Kernel:           {}",
        format::template("{{.Version}}", &v),
        format::template("{{.ApiVersion}}", &v),
        format::template("{{.MinAPIVersion}}", &v),
        format::template("{{.Os}}", &v),
        format::template("{{.Arch}}", &v),
        format::template("{{.KernelVersion}}", &v)
    );
    Ok(0)
}

async fn info(c: &client::Client) -> Result<i32> {
    let i = c.get("/info").await?;
    let t = |f: &str| format::template(f, &i);
    println!("Server:");
    println!(" Containers: {}", t("{{.Containers}}"));
    println!("  Running: {}", t("{{.ContainersRunning}}"));
    println!("  Paused: {}", t("{{.ContainersPaused}}"));
    println!("  Stopped: {}", t("{{.ContainersStopped}}"));
    println!(" Images: {}", t("{{.Images}}"));
    println!(" Server Version: {}", t("{{.ServerVersion}}"));
    println!(" Storage Driver: {}", t("{{.Driver}}"));
    println!(" Logging Driver: {}", t("{{.LoggingDriver}}"));
    println!(" Cgroup Driver: {}", t("{{.CgroupDriver}}"));
    println!(" Cgroup Version: {}", t("{{.CgroupVersion}}"));
    println!(" Default Runtime: {}", t("{{.DefaultRuntime}}"));
    println!(" Init Binary: {}", t("{{.InitBinary}}"));
    println!(" Kernel Version: {}", t("{{.KernelVersion}}"));
    println!(" Operating System: {}", t("{{.OperatingSystem}}"));
    println!(" CPUs: {}", t("{{.NCPU}}"));
    println!(" Total Memory: {}", format::size(i["MemTotal"].as_u64().unwrap_or(0)));
    println!(" Engine Root Dir: {}", t("{{.DockerRootDir}}"));
    println!(" Lifecycled Restarts: {}", t("{{.Engine.LifecycledRestarts}}"));
    let p = &i["Engine"]["Probes"];
    if p["Running"].as_bool() == Some(true) {
        println!(
            " eBPF Probes: running ({} events seen, {} sent, {} dropped)",
            p["EventsSeen"], p["EventsSent"], p["EventsDropped"]
        );
        if p["Profiles"].as_bool() == Some(true) {
            println!(
                " Profiles: off-CPU ({} intervals, {} dropped, {} without their stack)",
                p["OffCpuSent"], p["OffCpuDropped"], p["StacksLost"]
            );
            match p["OnCpuReason"].as_str().filter(|r| !r.is_empty()) {
                None => println!(
                    " On-CPU Samples: {} Hz ({} samples, {} dropped)",
                    p["OnCpuHz"], p["OnCpuSent"], p["OnCpuDropped"]
                ),
                Some(why) => println!(" On-CPU Samples: off ({why})"),
            }
        } else {
            println!(" Profiles: off (--no-profiles)");
        }
    } else if p.is_object() {
        println!(" eBPF Probes: off ({})", p["Reason"].as_str().unwrap_or("unknown"));
    }
    match i["Engine"]["Firewall"].as_str() {
        Some(f) => println!(" Firewall: {f}"),
        None => println!(" Firewall: none (networks are not isolated, no masquerade)"),
    }
    println!(" Networks: {}", t("{{.Engine.Networks}}"));
    println!(
        " Traces: {} ({})",
        t("{{.Engine.Traces.Count}}"),
        format::size(i["Engine"]["Traces"]["Bytes"].as_u64().unwrap_or(0))
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    /// clap's own checks of every command (unique short flags, …), which otherwise fail only
    /// when the command is run.
    #[test]
    fn every_command_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
