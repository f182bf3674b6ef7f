//! Image commands, with Docker's flags and output, and progress bars for load and import.

use std::io::{IsTerminal, Write};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::client::{self, Client};
use crate::containers::{filters_param, print_rows, urlencode};
use crate::format;

#[derive(clap::Args, Debug)]
pub struct ImagesArgs {
    /// Only show image IDs.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Show all images (default hides intermediate images).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Filter output (reference=, dangling=true|false).
    #[arg(long = "filter")]
    pub filter: Vec<String>,
    /// Format output using a Go-template subset.
    #[arg(long)]
    pub format: Option<String>,
    /// Don't truncate output.
    #[arg(long)]
    pub no_trunc: bool,
    /// Only images of this repository[:tag].
    pub reference: Option<String>,
}

pub async fn images(c: &Client, a: ImagesArgs) -> Result<i32> {
    let mut filters = a.filter.clone();
    if let Some(r) = &a.reference {
        filters.push(format!("reference={r}"));
    }
    let list = c.get(&format!("/images/json?all={}&filters={}", a.all as u8, filters_param(&filters)?)).await?;
    let mut rows = Vec::new();
    for i in list.as_array().into_iter().flatten() {
        let id = i["Id"].as_str().unwrap_or("");
        let shown = if a.no_trunc { id.to_string() } else { format::short_id(id) };
        for tag in i["RepoTags"].as_array().into_iter().flatten().filter_map(|t| t.as_str()) {
            let (repo, t) = tag.rsplit_once(':').unwrap_or((tag, "<none>"));
            rows.push(json!({
                "Repository": repo, "Tag": t, "ID": shown,
                "CreatedSince": format::ago(i["Created"].as_i64().unwrap_or(0)),
                "CreatedAt": i["Created"], "Size": format::size(i["Size"].as_u64().unwrap_or(0)),
            }));
        }
    }
    if a.quiet {
        let mut seen = Vec::new();
        for r in &rows {
            let id = r["ID"].as_str().unwrap_or("").to_string();
            if !seen.contains(&id) {
                println!("{id}");
                seen.push(id);
            }
        }
        return Ok(0);
    }
    print_rows(
        a.format.as_deref(),
        &rows,
        &[
            ("REPOSITORY", "Repository"),
            ("TAG", "Tag"),
            ("IMAGE ID", "ID"),
            ("CREATED", "CreatedSince"),
            ("SIZE", "Size"),
        ],
    );
    Ok(0)
}

/// A byte progress bar on stderr when it is a terminal (and not with --quiet).
fn bar(total: Option<u64>, quiet: bool, what: &str) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let b = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let style = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    b.set_style(style);
    b.set_message(what.to_string());
    b
}

/// Prints a JSON-lines answer's `stream` text as it comes (and, with `statuses`, a pull's
/// status lines inside it: a build's base image); an `error` fails the command.
pub(crate) async fn json_stream(
    r: hyper::Response<hyper::body::Incoming>,
    quiet: bool,
    statuses: bool,
) -> Result<Vec<Value>> {
    let mut messages = Vec::new();
    let mut error = None;
    client::for_each_json_line(r, |v| {
        if let Some(e) = v["error"].as_str() {
            error = Some(e.to_string());
        } else if let Some(s) = v["stream"].as_str() {
            if !quiet || s.starts_with("Loaded image") {
                print!("{s}");
            }
        } else if let (Some(status), false, true) = (v["status"].as_str(), quiet, statuses) {
            // a pull inside the stream (a build's base image): its lines, not its ticks
            if v["progressDetail"]["current"].is_null() {
                match v["id"].as_str() {
                    Some(id) => println!("{id}: {status}"),
                    None => println!("{status}"),
                }
            }
        }
        messages.push(v);
    })
    .await?;
    match error {
        Some(e) => Err(client::DaemonError { status: 400, message: e }.into()),
        None => Ok(messages),
    }
}

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Read from a tar archive file, instead of STDIN.
    #[arg(short = 'i', long)]
    pub input: Option<std::path::PathBuf>,
    /// Suppress the load output.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

pub async fn load(c: &Client, a: LoadArgs) -> Result<i32> {
    let (reader, total): (Box<dyn std::io::Read + Send>, Option<u64>) = match &a.input {
        Some(p) => {
            let f = std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?;
            let len = f.metadata().ok().map(|m| m.len());
            (Box::new(f), len)
        }
        None => {
            if std::io::stdin().is_terminal() {
                bail!("requested load from stdin, but stdin is empty");
            }
            (Box::new(std::io::stdin()), None)
        }
    };
    let pb = bar(total, a.quiet, "Loading");
    let pb2 = pb.clone();
    let body = client::reader_body(reader, move |n| pb2.set_position(n));
    let r = c
        .send(hyper::Method::POST, &format!("/images/load?quiet={}", a.quiet as u8), body, Some("application/x-tar"))
        .await?;
    let out = json_stream(r, a.quiet, false).await;
    pb.finish_and_clear();
    out?;
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct SaveArgs {
    /// Write to a file, instead of STDOUT.
    #[arg(short = 'o', long)]
    pub output: Option<std::path::PathBuf>,
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub async fn save(c: &Client, a: SaveArgs) -> Result<i32> {
    let names: Vec<String> = a.images.iter().map(|n| format!("names={}", urlencode(n))).collect();
    download(c, &format!("/images/get?{}", names.join("&")), a.output.as_deref(), "save").await?;
    Ok(0)
}

/// Writes what `GET path` answers to `output`, or to stdout unless it is a terminal (as the
/// Docker CLI's save and export); a file cut short by an error is removed.
pub(crate) async fn download(c: &Client, path: &str, output: Option<&std::path::Path>, verb: &str) -> Result<()> {
    let mut out: Box<dyn Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?,
        )),
        None => {
            if std::io::stdout().is_terminal() {
                bail!("cowardly refusing to {verb} to a terminal. Use the -o flag or redirect");
            }
            Box::new(std::io::stdout())
        }
    };
    let r = c.send(hyper::Method::GET, path, client::empty_body(), None).await?;
    let result = client::for_each_chunk(r, |chunk| Ok(out.write_all(chunk)?)).await.and_then(|_| Ok(out.flush()?));
    if result.is_err() {
        if let Some(p) = output {
            let _ = std::fs::remove_file(p);
        }
    }
    result
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// Apply Dockerfile instructions to the created image.
    #[arg(short = 'c', long = "change")]
    pub change: Vec<String>,
    /// Set a commit message for the imported image.
    #[arg(short = 'm', long)]
    pub message: Option<String>,
    /// A rootfs tarball, or - for STDIN.
    pub file: String,
    /// REPOSITORY[:TAG]
    pub reference: Option<String>,
}

pub async fn import(c: &Client, a: ImportArgs) -> Result<i32> {
    let (reader, total): (Box<dyn std::io::Read + Send>, Option<u64>) = if a.file == "-" {
        (Box::new(std::io::stdin()), None)
    } else {
        if a.file.contains("://") {
            bail!("importing from a URL is not supported: download {} first", a.file);
        }
        let f = std::fs::File::open(&a.file).with_context(|| format!("open {}", a.file))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let mut q = String::from("fromSrc=-");
    if let Some(r) = &a.reference {
        q.push_str(&format!("&repo={}", urlencode(r)));
    }
    for ch in &a.change {
        q.push_str(&format!("&changes={}", urlencode(ch)));
    }
    if let Some(m) = &a.message {
        q.push_str(&format!("&message={}", urlencode(m)));
    }
    let pb = bar(total, false, "Importing");
    let pb2 = pb.clone();
    let body = client::reader_body(reader, move |n| pb2.set_position(n));
    let r = c.send(hyper::Method::POST, &format!("/images/create?{q}"), body, Some("application/x-tar")).await?;
    let out = json_stream(r, true, false).await;
    pb.finish_and_clear();
    for m in out? {
        if let Some(id) = m["status"].as_str() {
            println!("{id}");
        }
    }
    Ok(0)
}

/// REPO[:TAG]: the tag follows the last ':' after the last '/'.
pub(crate) fn split_repo_tag(target: &str) -> (&str, Option<&str>) {
    let slash = target.rfind('/').map_or(0, |i| i + 1);
    match target[slash..].rfind(':') {
        Some(i) => (&target[..slash + i], Some(&target[slash + i + 1..])),
        None => (target, None),
    }
}

pub async fn tag(c: &Client, source: &str, target: &str) -> Result<i32> {
    let (repo, tag) = split_repo_tag(target);
    let tag = tag.unwrap_or("latest");
    c.post(&format!("/images/{source}/tag?repo={}&tag={}", urlencode(repo), urlencode(tag)), None).await?;
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct RmiArgs {
    /// Force removal of the image.
    #[arg(short = 'f', long)]
    pub force: bool,
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub async fn rmi(c: &Client, a: RmiArgs) -> Result<i32> {
    let mut failed = false;
    for n in &a.images {
        match c.delete(&format!("/images/{n}?force={}", a.force as u8)).await {
            Ok(r) => {
                for item in client::read_json(r).await?.as_array().into_iter().flatten() {
                    if let Some(u) = item["Untagged"].as_str() {
                        println!("Untagged: {u}");
                    }
                    if let Some(d) = item["Deleted"].as_str() {
                        println!("Deleted: {d}");
                    }
                }
            }
            Err(e) => {
                eprintln!("{e:#}");
                failed = true;
            }
        }
    }
    Ok(failed as i32)
}

#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    /// Only show image IDs.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Don't truncate output.
    #[arg(long)]
    pub no_trunc: bool,
    /// Print sizes and dates in human readable format.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub human: bool,
    /// Format output using a Go template (fields: ID, CreatedSince, CreatedAt, CreatedBy, Size, Comment).
    #[arg(long)]
    pub format: Option<String>,
    pub image: String,
}

/// `engine history`: the rows as the Docker CLI's (`--format` fields, `-H=false` raw
/// sizes and RFC 3339 dates).
pub async fn history(c: &Client, a: HistoryArgs) -> Result<i32> {
    let h = c.get(&format!("/images/{}/history", a.image)).await?;
    let mut rows = Vec::new();
    for e in h.as_array().into_iter().flatten() {
        let id = e["Id"].as_str().unwrap_or("");
        let id = if id.starts_with("sha256:") && !a.no_trunc { format::short_id(id) } else { id.to_string() };
        if a.quiet {
            println!("{id}");
            continue;
        }
        let by = e["CreatedBy"].as_str().unwrap_or("");
        let created = e["Created"].as_i64().unwrap_or(0);
        let size = e["Size"].as_u64().unwrap_or(0);
        let at = engine_util::time::rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(created.max(0) as u64),
        );
        rows.push(json!({
            "ID": id,
            "CreatedSince": if a.human { format::ago(created) } else { at.clone() },
            "CreatedAt": at,
            "CreatedBy": if a.no_trunc { by.to_string() } else { format::truncate(by, 45) },
            "Size": if a.human { format::size(size) } else { size.to_string() },
            "Comment": e["Comment"].as_str().unwrap_or(""),
        }));
    }
    if a.quiet {
        return Ok(0);
    }
    print_rows(
        a.format.as_deref(),
        &rows,
        &[
            ("IMAGE", "ID"),
            ("CREATED", "CreatedSince"),
            ("CREATED BY", "CreatedBy"),
            ("SIZE", "Size"),
            ("COMMENT", "Comment"),
        ],
    );
    Ok(0)
}

#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// List images.
    Ls(ImagesArgs),
    /// Display detailed information on one or more images.
    Inspect {
        #[arg(short = 'f', long)]
        format: Option<String>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Show the history of an image.
    History(HistoryArgs),
    /// Load images from a tar archive.
    Load(LoadArgs),
    /// Save images to a tar archive.
    Save(SaveArgs),
    /// Import a rootfs tarball.
    Import(ImportArgs),
    /// Tag an image.
    Tag { source: String, target: String },
    /// Remove images.
    Rm(RmiArgs),
    /// Remove unused images: those without a name, or with -a every one no container uses.
    Prune {
        /// Remove all unused images, not just dangling ones.
        #[arg(short = 'a', long)]
        all: bool,
        #[command(flatten)]
        prune: crate::containers::PruneArgs,
    },
}

/// `engine image prune`.
async fn prune(c: &Client, all: bool, a: crate::containers::PruneArgs) -> Result<i32> {
    if !a.force {
        anyhow::bail!(
            "this removes all {} images: pass -f to confirm",
            if all { "images without at least one container associated to them" } else { "dangling" }
        );
    }
    let mut filters = a.filter;
    if all {
        filters.push("dangling=false".into());
    }
    let path = format!("/images/prune?filters={}", crate::containers::filters_param(&filters)?);
    let v = client::read_json(c.post(&path, None).await?).await?;
    let deleted = v["ImagesDeleted"].as_array().cloned().unwrap_or_default();
    if !deleted.is_empty() {
        println!("Deleted Images:");
        for d in &deleted {
            if let Some(u) = d["Untagged"].as_str() {
                println!("untagged: {u}");
            }
            if let Some(id) = d["Deleted"].as_str() {
                println!("deleted: {id}");
            }
        }
        println!();
    }
    println!("Total reclaimed space: {}", format::size(v["SpaceReclaimed"].as_u64().unwrap_or(0)));
    Ok(0)
}

pub async fn image(c: &Client, cmd: ImageCommand) -> Result<i32> {
    match cmd {
        ImageCommand::Ls(a) => images(c, a).await,
        ImageCommand::Inspect { format, images } => {
            let mut out = Vec::new();
            let mut failed = false;
            for n in &images {
                match c.get(&format!("/images/{n}/json")).await {
                    Ok(v) => out.push(v),
                    Err(e) => {
                        eprintln!("{e:#}");
                        failed = true;
                    }
                }
            }
            match format {
                Some(f) => out.iter().for_each(|v| println!("{}", format::template(&f, v))),
                None => println!("{}", serde_json::to_string_pretty(&out).map_err(|e| anyhow!(e))?),
            }
            Ok(failed as i32)
        }
        ImageCommand::History(a) => history(c, a).await,
        ImageCommand::Load(a) => load(c, a).await,
        ImageCommand::Save(a) => save(c, a).await,
        ImageCommand::Import(a) => import(c, a).await,
        ImageCommand::Tag { source, target } => tag(c, &source, &target).await,
        ImageCommand::Rm(a) => rmi(c, a).await,
        ImageCommand::Prune { all, prune: a } => prune(c, all, a).await,
    }
}
