//! Writes the man pages and shell completions of the engine's binaries, generated from their
//! clap command lines so they cannot drift from them:
//! - `engine-docs man DIR`: `engine.1` and a page per subcommand (`engine-run.1`, …), and
//!   section 8 pages of the daemons and helpers (`engined.8`, `engine-lifecycled.8`,
//!   `engine-shim.8`, `engine-runtime.8`, `engine-proxy.8`, `engine-init.8`);
//! - `engine-docs completions DIR`: `engine.bash`, `_engine` (zsh) and `engine.fish`;
//! - `engine-docs copyright < METADATA`: the Debian package's copyright file, from `cargo
//!   metadata`'s JSON: the engine's licence, then every crate linked into the seven binaries
//!   (their normal dependencies, followed from the binaries' packages) with its licence.
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
        [what] if what == "copyright" => {
            let metadata: serde_json::Value =
                serde_json::from_reader(std::io::stdin().lock()).context("reading cargo metadata's JSON")?;
            print!("{}", copyright(&metadata)?);
            Ok(())
        }
        _ => bail!("usage: engine-docs man DIR | engine-docs completions DIR | engine-docs copyright < METADATA"),
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

/// The packages whose binaries the package carries.
const SHIPPED: [&str; 7] = [
    "engine-cli",
    "engine-daemon",
    "engine-lifecycled",
    "engine-shim",
    "engine-runtime",
    "engine-init",
    "engine-proxy",
];

/// A machine-readable Debian copyright file (format 1.0): the engine's own stanza, then one per
/// crate the shipped binaries link, reached from their packages over normal dependencies in
/// `cargo metadata`'s resolve graph.
fn copyright(metadata: &serde_json::Value) -> anyhow::Result<String> {
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    let packages: HashMap<&str, &serde_json::Value> = metadata["packages"]
        .as_array()
        .context("no packages in the metadata")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: HashMap<&str, &serde_json::Value> = metadata["resolve"]["nodes"]
        .as_array()
        .context("no resolve graph in the metadata (cargo metadata without --no-deps)")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let workspace: BTreeSet<&str> =
        metadata["workspace_members"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
    let mut todo: Vec<&str> = packages
        .iter()
        .filter(|(id, p)| workspace.contains(*id) && p["name"].as_str().is_some_and(|n| SHIPPED.contains(&n)))
        .map(|(id, _)| *id)
        .collect();
    if todo.len() != SHIPPED.len() {
        bail!("the metadata names {} of the {} shipped packages", todo.len(), SHIPPED.len());
    }
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        let Some(node) = nodes.get(id) else { continue };
        for dep in node["deps"].as_array().into_iter().flatten() {
            // a normal dependency has kind null; dev- and build-dependencies are not linked
            let linked = dep["dep_kinds"].as_array().into_iter().flatten().any(|k| k["kind"].is_null());
            if let (true, Some(d)) = (linked, dep["pkg"].as_str()) {
                todo.push(d);
            }
        }
    }
    let mut crates: BTreeMap<(String, String), (String, String)> = BTreeMap::new();
    for id in seen.iter().filter(|id| !workspace.contains(*id)) {
        let Some(p) = packages.get(id) else { continue };
        let field = |k: &str| p[k].as_str().unwrap_or_default().to_string();
        let licence = match p["license"].as_str() {
            Some(l) => l.to_string(),
            None if p["license_file"].is_string() => "see the crate's licence file".to_string(),
            None => "unknown".to_string(),
        };
        let authors: Vec<&str> = p["authors"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect();
        let holders = if authors.is_empty() { format!("the authors of {}", field("name")) } else { authors.join(", ") };
        crates.insert((field("name"), field("version")), (licence, holders));
    }
    let mut out = String::from(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: engine\n\
         Comment: The engine's binaries are linked statically: each crate below is part of them.\n\n\
         Files: *\n\
         Copyright: The engine authors\n\
         License: Apache-2.0\n",
    );
    for ((name, version), (licence, holders)) in &crates {
        out.push_str(&format!(
            "\nFiles: rust-crate/{name}-{version}/*\nCopyright: {}\nLicense: {licence}\n",
            holders.replace('\n', " ")
        ));
    }
    let mut by_licence: BTreeMap<&str, usize> = BTreeMap::new();
    for (licence, _) in crates.values() {
        *by_licence.entry(licence).or_default() += 1;
    }
    out.push_str(&format!("\nComment: {} crates:", crates.len()));
    for (licence, n) in by_licence {
        out.push_str(&format!(" {licence} ({n});"));
    }
    out.push('\n');
    Ok(out)
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
