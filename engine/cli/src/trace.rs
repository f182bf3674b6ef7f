//! `engine trace`: a container's operations as waterfalls (critical path marked), as OTLP JSON,
//! sent to an OTLP endpoint, or compared phase by phase with another container's; and
//! `engine trace stats`, per-phase percentiles of recent starts.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use engine_telemetry::handoff::flatten;
use engine_telemetry::otlp::{ExportConfig, Protocol};
use engine_telemetry::{analysis, waterfall, FlatSpan};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde_json::Value;

use crate::client::{self, Client};
use crate::containers::urlencode;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TraceArgs {
    #[command(subcommand)]
    pub command: Option<TraceCommand>,
    /// The container whose traced operations to show (a removed one by its name or id).
    pub container: Option<String>,
    /// The image whose pulls and pushes to show (any tag of it when NAME names none).
    #[arg(long, value_name = "NAME", conflicts_with = "container")]
    pub image: Option<String>,
    /// The image whose builds to show (`engine build -t NAME`): `--image NAME --op build`.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["container", "image"])]
    pub build: Option<String>,
    /// With --build: the build's steps, slowest first, after the waterfall.
    #[arg(long, requires = "build")]
    pub sort: bool,
    /// Read spans from an OTLP JSON lines file (a span hand-off) instead of the daemon.
    #[arg(long, conflicts_with_all = ["container", "image", "build"])]
    pub file: Option<PathBuf>,
    /// Show the last N operations (default 1).
    #[arg(long, default_value_t = 1)]
    pub last: usize,
    /// Only operations of this kind: create, start, stop, kill, exec, restart, rm, wait, attach …
    #[arg(long)]
    pub op: Option<String>,
    /// Only the trace with this id.
    #[arg(long)]
    pub trace_id: Option<String>,
    /// Print the trace as OTLP JSON (one document per trace) instead of a waterfall.
    #[arg(long)]
    pub json: bool,
    /// Send the trace to this OTLP endpoint (http://host:port) instead of printing it.
    #[arg(long, value_name = "ENDPOINT")]
    pub otlp: Option<String>,
    /// Protocol for --otlp: grpc, http/protobuf or http/json.
    #[arg(long, default_value = "grpc")]
    pub otlp_protocol: String,
    /// Compare phase by phase with this container's operation (same --op).
    #[arg(long, value_name = "CONTAINER")]
    pub compare: Option<String>,
    /// Print each span's attributes.
    #[arg(long, short = 'a')]
    pub attributes: bool,
    /// Leave out the kernel's rows (the eBPF probes' spans and events).
    #[arg(long)]
    pub no_kernel: bool,
    /// Show every kernel row (runs of alike ones are folded into one with their count).
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// Where the time of the critical path went, from the eBPF probes: each span's time on a
    /// CPU, blocked and waiting for a CPU, and the kernel stacks it blocked in longest.
    #[arg(long, conflicts_with_all = ["json", "otlp", "compare"])]
    pub why: bool,
    /// Write the trace's time as a flame graph (SVG) to FILE: the container's spans under their
    /// ancestors, each split into on-CPU, runqueue and blocked time with the kernel stacks it
    /// blocked in (from the eBPF probes).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["json", "otlp", "compare", "why"])]
    pub flame: Option<PathBuf>,
    /// Write the same as a pprof profile (gzipped profile.proto: `go tool pprof`, Pyroscope) to
    /// FILE, each sample labelled with its span, state and trace id.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["json", "otlp", "compare", "why"])]
    pub pprof: Option<PathBuf>,
    /// Write one self-contained HTML page to FILE: the waterfall with its kernel rows, where the
    /// time went (`--why`) and the flame graph, and the spans as JSON, to open in a browser.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["json", "otlp", "compare", "why"])]
    pub html: Option<PathBuf>,
}

/// What makes one of the files `engine trace` writes of a trace.
type TraceView = fn(&[FlatSpan]) -> Result<Vec<u8>>;

/// `--flame`, `--pprof` and `--html` of one trace: the files written, each named on stdout.
fn write_profiles(args: &TraceArgs, spans: &[FlatSpan]) -> Result<()> {
    let outputs: [(&Option<PathBuf>, TraceView); 3] = [
        (&args.flame, crate::traceviews::flame_svg),
        (&args.pprof, crate::traceviews::pprof_gz),
        (&args.html, crate::traceviews::html_page),
    ];
    for (path, make) in outputs {
        if let Some(path) = path {
            let bytes = make(spans)?;
            std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
            println!("{}", path.display());
        }
    }
    Ok(())
}

/// How the waterfall is drawn for `args`: fitted to the terminal and coloured when stdout is one.
fn waterfall_options(args: &TraceArgs) -> waterfall::Options {
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    waterfall::Options {
        attributes: args.attributes,
        kernel: !args.no_kernel,
        fold: !args.verbose,
        width: if tty { crate::containers::terminal_size().map(|(_, cols)| cols as usize) } else { None },
        colour: tty && std::env::var_os("NO_COLOR").is_none(),
        ..Default::default()
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum TraceCommand {
    /// Per-phase count, p50, p95 and p99 over recent operations (default: the last 100 starts).
    Stats {
        #[arg(long, default_value = "start")]
        op: String,
        #[arg(long, default_value_t = 100)]
        last: usize,
        /// Print the statistics as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn ms(nanos: u64) -> String {
    format!("{:.3}", nanos as f64 / 1e6)
}

/// Whose traces to show.
enum Subject<'a> {
    Container(&'a str),
    Image(&'a str),
}

impl std::fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Container(c) => f.write_str(c),
            Subject::Image(i) => write!(f, "image {i}"),
        }
    }
}

/// The traces of `subject` the arguments select, oldest first.
async fn select(
    c: &Client,
    subject: &Subject<'_>,
    op: Option<&str>,
    trace_id: Option<&str>,
    last: usize,
) -> Result<Vec<String>> {
    if let Some(t) = trace_id {
        return Ok(vec![t.to_string()]);
    }
    let list = match subject {
        Subject::Container(container) => {
            c.get(&format!("/engine/v1/containers/{}/traces", urlencode(container))).await?
        }
        Subject::Image(image) => c.get(&format!("/engine/v1/traces?image={}", urlencode(image))).await?,
    };
    let all: Vec<&Value> = list.as_array().into_iter().flatten().collect();
    // operations a user asked for (rooted at a command or an API request), not the daemon's own
    // bookkeeping (a restart policy's start); with --op, operations of that kind
    let requested = |t: &&Value| {
        let root = t["Operation"].as_str().unwrap_or("");
        root.starts_with("engine.") || root.contains(" /")
    };
    let op = op.map(|o| if o == "delete" { "rm" } else { o });
    let has_op = |t: &&Value| op.is_none_or(|o| t["Ops"].as_array().is_some_and(|ops| ops.iter().any(|x| x == o)));
    let mut picked: Vec<&Value> = all.iter().copied().filter(requested).filter(has_op).collect();
    if picked.is_empty() {
        // none a user asked for: the daemon's own (`--op recover`, `--op exit`), or any
        picked = all.iter().copied().filter(has_op).collect();
    }
    let ids: Vec<String> =
        picked.iter().rev().take(last.max(1)).rev().filter_map(|t| t["TraceID"].as_str().map(str::to_string)).collect();
    if ids.is_empty() {
        bail!("no traces of {subject}{}", op.map(|o| format!(" for --op {o}")).unwrap_or_default());
    }
    Ok(ids)
}

async fn fetch(c: &Client, trace_id: &str) -> Result<ExportTraceServiceRequest> {
    let v = c.get(&format!("/engine/v1/traces/{trace_id}")).await?;
    serde_json::from_value(v).context("reading the trace")
}

/// `engine trace …` against the daemon.
pub async fn run(c: &Client, args: TraceArgs) -> Result<i32> {
    if let Some(TraceCommand::Stats { op, last, json }) = &args.command {
        return stats(c, op, *last, *json).await;
    }
    let op = if args.build.is_some() { Some("build") } else { args.op.as_deref() };
    let subject = match (args.container.as_deref(), args.image.as_deref().or(args.build.as_deref())) {
        (Some(container), _) => Subject::Container(container),
        (None, Some(image)) => Subject::Image(image),
        (None, None) => bail!("engine trace needs a container (or --image, --build, --file, or stats)"),
    };
    let container = subject.to_string();
    let ids = select(c, &subject, op, args.trace_id.as_deref(), args.last).await?;
    let mut docs = Vec::new();
    for id in &ids {
        docs.push((id.clone(), fetch(c, id).await?));
    }
    if let Some(other) = &args.compare {
        let theirs = select(c, &Subject::Container(other), args.op.as_deref(), None, 1).await?;
        let mine = flatten(&docs.last().context("no trace")?.1);
        let theirs = flatten(&fetch(c, &theirs[0]).await?);
        print!("{}", compare(&container, &mine, other, &theirs));
        return Ok(0);
    }
    if let Some(endpoint) = &args.otlp {
        let cfg = ExportConfig::new(endpoint, Protocol::parse(&args.otlp_protocol)?)?;
        for (id, doc) in &docs {
            engine_telemetry::otlp::send_once(&cfg, doc)
                .await
                .map_err(|e| anyhow::anyhow!("sending trace {id} to {endpoint}: {e}"))?;
            println!("{id}");
        }
        return Ok(0);
    }
    for (_, doc) in &docs {
        if args.json {
            println!("{}", serde_json::to_string(doc)?);
        } else if args.why {
            print!("{}", engine_telemetry::why::render(&flatten(doc)));
        } else if args.flame.is_some() || args.pprof.is_some() || args.html.is_some() {
            write_profiles(&args, &flatten(doc))?;
        } else {
            print!("{}", waterfall::render(&flatten(doc), &waterfall_options(&args)));
            if args.sort {
                print!("{}", slowest_steps(&flatten(doc)));
            }
        }
    }
    Ok(0)
}

/// A build's steps, slowest first: time, cache hit or miss, the size of the layer it made, and
/// the instruction.
pub fn slowest_steps(spans: &[FlatSpan]) -> String {
    use std::fmt::Write;
    let attr = |s: &FlatSpan, k: &str| s.attributes.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let mut steps: Vec<&FlatSpan> = spans.iter().filter(|s| s.name == engine_telemetry::names::BUILD_STEP).collect();
    steps.sort_by_key(|s| std::cmp::Reverse(s.duration_nanos()));
    let mut out = format!("\n{:>12}  {:5}  {:>9}  STEP\n", "DURATION ms", "CACHE", "LAYER");
    for s in steps {
        let cache = if attr(s, "build.cache_hit").as_deref() == Some("true") { "hit" } else { "miss" };
        let layer = attr(s, "build.layer.size")
            .and_then(|v| v.parse::<u64>().ok())
            .map_or_else(|| "-".to_string(), crate::format::size);
        let line = attr(s, "build.step.line").or_else(|| attr(s, "build.instruction")).unwrap_or_default();
        let _ = writeln!(out, "{:>12}  {cache:5}  {layer:>9}  {line}", ms(s.duration_nanos()));
    }
    out
}

/// Phase by phase: each stable span name's total time in both traces, in the order the phases
/// start in the first.
pub fn compare(a_name: &str, a: &[FlatSpan], b_name: &str, b: &[FlatSpan]) -> String {
    use std::fmt::Write;
    let pa = analysis::phases(a);
    let pb = analysis::phases(b);
    let t0 = a.iter().map(|s| s.start_unix_nanos).min().unwrap_or(0);
    let mut order: BTreeMap<String, u64> = BTreeMap::new();
    for s in a {
        let at = s.start_unix_nanos.saturating_sub(t0);
        order.entry(s.name.clone()).and_modify(|v| *v = (*v).min(at)).or_insert(at);
    }
    let mut names: Vec<&String> = pa.keys().chain(pb.keys().filter(|k| !pa.contains_key(*k))).collect();
    names.sort_by_key(|n| (order.get(*n).copied().unwrap_or(u64::MAX), (*n).clone()));
    let width = names.iter().map(|n| n.len()).max().unwrap_or(5).max(5);
    let mut out = String::new();
    let col = |n: &str| format!("{:.12}", n);
    let _ = writeln!(
        out,
        "{:width$}  {:>12}  {:>12}  {:>10}  {:>7}",
        "PHASE",
        col(a_name),
        col(b_name),
        "DELTA ms",
        "RATIO"
    );
    let total = |s: &[FlatSpan]| {
        s.iter()
            .map(|x| x.end_unix_nanos)
            .max()
            .unwrap_or(0)
            .saturating_sub(s.iter().map(|x| x.start_unix_nanos).min().unwrap_or(0))
    };
    let row = |out: &mut String, name: &str, x: Option<u64>, y: Option<u64>| {
        let cell = |v: Option<u64>| v.map(ms).unwrap_or_else(|| "-".into());
        let delta = match (x, y) {
            (Some(x), Some(y)) => format!("{:+.3}", (y as f64 - x as f64) / 1e6),
            _ => "-".into(),
        };
        let ratio = match (x, y) {
            (Some(x), Some(y)) if x > 0 => format!("{:.2}", y as f64 / x as f64),
            _ => "-".into(),
        };
        let _ = writeln!(out, "{name:width$}  {:>12}  {:>12}  {delta:>10}  {ratio:>7}", cell(x), cell(y));
    };
    row(&mut out, "(total)", Some(total(a)), Some(total(b)));
    for n in names {
        row(&mut out, n, pa.get(n).copied(), pb.get(n).copied());
    }
    out
}

async fn stats(c: &Client, op: &str, last: usize, json: bool) -> Result<i32> {
    let v = c.get(&format!("/engine/v1/traces/stats?op={}&limit={last}", urlencode(op))).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let phases = v["Phases"].as_array().cloned().unwrap_or_default();
    if phases.is_empty() {
        bail!("no traced {op} operations yet");
    }
    println!("{} traces of {op}", v["Traces"].as_u64().unwrap_or(0));
    let width = phases.iter().filter_map(|p| p["phase"].as_str()).map(str::len).max().unwrap_or(5).max(5);
    println!(
        "{:width$}  {:>6}  {:>10}  {:>10}  {:>10}  {:>10}",
        "PHASE", "COUNT", "P50 ms", "P95 ms", "P99 ms", "MAX ms"
    );
    for p in phases {
        let n = |k: &str| ms(p[k].as_u64().unwrap_or(0));
        println!(
            "{:width$}  {:>6}  {:>10}  {:>10}  {:>10}  {:>10}",
            p["phase"].as_str().unwrap_or(""),
            p["count"].as_u64().unwrap_or(0),
            n("p50_nanos"),
            n("p95_nanos"),
            n("p99_nanos"),
            n("max_nanos")
        );
    }
    Ok(0)
}

/// `engine trace --file PATH`: a trace from a span hand-off file, offline.
pub fn from_file(args: TraceArgs) -> Result<i32> {
    let path = args.file.clone().context("--file is required without a container")?;
    let file = std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
    let (spans, skipped) =
        engine_telemetry::read_spans(BufReader::new(file)).with_context(|| format!("read {}", path.display()))?;
    let trace_id = match args.trace_id.clone() {
        Some(id) => id,
        None => match spans.iter().max_by_key(|s| s.start_unix_nanos) {
            Some(s) => s.trace_id.clone(),
            None => bail!("no spans in {}", path.display()),
        },
    };
    let trace: Vec<_> = spans.into_iter().filter(|s| s.trace_id == trace_id).collect();
    if trace.is_empty() {
        bail!("no trace {trace_id} in {}", path.display());
    }
    if args.why {
        print!("{}", engine_telemetry::why::render(&trace));
    } else if args.flame.is_some() || args.pprof.is_some() || args.html.is_some() {
        write_profiles(&args, &trace)?;
    } else {
        print!("{}", waterfall::render(&trace, &waterfall_options(&args)));
    }
    if skipped > 0 {
        eprintln!("engine: skipped {skipped} unreadable line(s) in {}", path.display());
    }
    Ok(0)
}

/// Hands the command's own spans to the daemon (OTLP/HTTP JSON on its socket); a daemon that
/// does not take them (not an engined) is ignored: telemetry never fails a command.
pub async fn post_spans(c: &Client, req: ExportTraceServiceRequest) {
    if let Ok(body) = serde_json::to_value(&req) {
        let _ = c.send(hyper::Method::POST, "/v1/traces", client::json_body(&body), Some("application/json")).await;
    }
}
