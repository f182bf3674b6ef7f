//! Writes the man pages and shell completions of the engine's binaries, generated from their
//! clap command lines so they cannot drift from them:
//! - `engine-docs man DIR`: `engine.1` and a page per subcommand (`engine-run.1`, …), and
//!   section 8 pages of the daemons and helpers (`engined.8`, `engine-lifecycled.8`,
//!   `engine-shim.8`, `engine-runtime.8`, `engine-proxy.8`, `engine-init.8`);
//! - `engine-docs completions DIR`: `engine.bash`, `_engine` (zsh) and `engine.fish`.
//!
//! Built with the release binaries; `make dist` packs its output. Never writes anywhere but
//! the directory it is given, and holds no text of a command line itself (but engine-init's,
//! which has no clap command line).

use std::path::Path;

use anyhow::{bail, Context};
use clap::CommandFactory;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [what, dir] if what == "man" => man(Path::new(dir)),
        [what, dir] if what == "completions" => completions(Path::new(dir)),
        _ => bail!("usage: engine-docs man DIR | engine-docs completions DIR"),
    }
}

fn man(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut engine = engine_cli::Cli::command();
    engine.build();
    pages(dir, &engine, "engine", "1")?;
    let daemons = [
        engine_daemon::Config::command(),
        engine_lifecycle::Config::command(),
        engine_shim::Config::command(),
        engine_runtime::cli::Cli::command(),
        engine_proxy::Args::command(),
    ];
    for mut cmd in daemons {
        cmd.build();
        let name = cmd.get_name().to_string();
        pages(dir, &cmd, &name, "8")?;
    }
    write(dir, "engine-init.8", INIT_PAGE)
}

/// The page of `cmd` named `name`, and one per subcommand (`name-sub`), recursively.
fn pages(dir: &Path, cmd: &clap::Command, name: &str, section: &str) -> anyhow::Result<()> {
    let mut out = Vec::new();
    let named = cmd.clone().name(name.to_string()).bin_name(name.replace('-', " "));
    clap_mangen::Man::new(named).section(section).render(&mut out)?;
    write(dir, &format!("{name}.{section}"), &String::from_utf8_lossy(&out))?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        pages(dir, sub, &format!("{name}-{}", sub.get_name()), section)?;
    }
    Ok(())
}

fn completions(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (shell, file) in [
        (clap_complete::Shell::Bash, "engine.bash"),
        (clap_complete::Shell::Zsh, "_engine"),
        (clap_complete::Shell::Fish, "engine.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut engine_cli::Cli::command(), "engine", &mut out);
        write(dir, file, &String::from_utf8_lossy(&out))?;
    }
    Ok(())
}

fn write(dir: &Path, file: &str, text: &str) -> anyhow::Result<()> {
    let path = dir.join(file);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// engine-init parses its few arguments by hand (it is PID 1 of a container): its page is
/// written here.
const INIT_PAGE: &str = r#".TH engine-init 8 "" "engine" "System Manager's Manual"
.SH NAME
engine-init \- PID 1 of a container started with --init
.SH SYNOPSIS
\fBengine-init\fR [\fB-s\fR] [\fB-g\fR] [\fB--\fR] \fIprogram\fR [\fIargs\fR...]
.SH DESCRIPTION
Bind-mounted at /sbin/docker-init in containers run with \fB--init\fR: runs \fIprogram\fR as its
child, forwards the signals it receives to it, reaps every zombie, and exits with the child's
exit code, or 128 plus the number of the signal that ended it. On a traced start it is also the
last step of the runtime's hand-over, recording the exec of the user's program.
.SH OPTIONS
.TP
\fB-s\fR
Register as a subreaper (when not PID 1).
.TP
\fB-g\fR
Forward signals to the child's whole process group.
.SH SEE ALSO
engine(1), engined(8), engine-runtime(8)
"#;
