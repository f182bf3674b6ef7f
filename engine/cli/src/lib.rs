//! The `engine` command-line client.
//!
//! Owns: argument parsing and presentation (tables, waterfalls). It is only a client: it must never
//! touch container state, images or cgroups itself; everything goes through the daemon's API. The
//! one exception is reading a span hand-off file offline (`engine trace --file`), which only reads.

use std::io::BufReader;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use engine_telemetry::waterfall;

/// Command line of `engine`.
#[derive(Parser, Debug)]
#[command(name = "engine", version, about = "An observability-first container engine")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show a trace as a waterfall.
    Trace(TraceArgs),
}

#[derive(clap::Args, Debug)]
pub struct TraceArgs {
    /// Read spans from an OTLP JSON lines file (the span hand-off) instead of the daemon.
    #[arg(long)]
    pub file: PathBuf,
    /// Only the trace with this id (default: the last trace in the file).
    #[arg(long)]
    pub trace_id: Option<String>,
    /// Print each span's attributes.
    #[arg(long, short = 'a')]
    pub attributes: bool,
}

/// Runs the CLI and returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Trace(args) => trace(args),
    }
}

fn trace(args: TraceArgs) -> Result<i32> {
    let file = std::fs::File::open(&args.file).with_context(|| format!("open {}", args.file.display()))?;
    let (spans, skipped) = engine_telemetry::read_spans(BufReader::new(file))
        .with_context(|| format!("read {}", args.file.display()))?;
    let trace_id = match args.trace_id {
        Some(id) => id,
        None => match spans.iter().max_by_key(|s| s.start_unix_nanos) {
            Some(s) => s.trace_id.clone(),
            None => bail!("no spans in {}", args.file.display()),
        },
    };
    let trace: Vec<_> = spans.into_iter().filter(|s| s.trace_id == trace_id).collect();
    if trace.is_empty() {
        bail!("no trace {trace_id} in {}", args.file.display());
    }
    let opts = waterfall::Options { attributes: args.attributes, ..Default::default() };
    print!("{}", waterfall::render(&trace, &opts));
    if skipped > 0 {
        eprintln!("engine: skipped {skipped} unreadable line(s) in {}", args.file.display());
    }
    Ok(0)
}
