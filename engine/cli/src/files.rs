//! A container's files: `engine diff`, `engine export` and `engine commit`.

use anyhow::Result;

use crate::client::{self, Client};
use crate::containers::urlencode;

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    pub container: String,
}

/// Prints the container's changes as `docker diff` does: `A`dded, `C`hanged, `D`eleted.
pub async fn diff(c: &Client, a: DiffArgs) -> Result<i32> {
    let changes = c.get(&format!("/containers/{}/changes", urlencode(&a.container))).await?;
    for ch in changes.as_array().into_iter().flatten() {
        let letter = match ch["Kind"].as_u64() {
            Some(0) => 'C',
            Some(1) => 'A',
            Some(2) => 'D',
            _ => '?',
        };
        println!("{letter} {}", ch["Path"].as_str().unwrap_or(""));
    }
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Write to a file, instead of STDOUT.
    #[arg(short = 'o', long)]
    pub output: Option<std::path::PathBuf>,
    pub container: String,
}

pub async fn export(c: &Client, a: ExportArgs) -> Result<i32> {
    let path = format!("/containers/{}/export", urlencode(&a.container));
    crate::images::download(c, &path, a.output.as_deref(), "export").await?;
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct CommitArgs {
    /// Author (e.g., "John Hannibal Smith <hannibal@a-team.com>").
    #[arg(short = 'a', long)]
    pub author: Option<String>,
    /// Apply Dockerfile instruction to the created image.
    #[arg(short = 'c', long = "change")]
    pub change: Vec<String>,
    /// Commit message.
    #[arg(short = 'm', long)]
    pub message: Option<String>,
    /// Pause container during commit.
    #[arg(short = 'p', long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub pause: bool,
    pub container: String,
    /// REPOSITORY[:TAG] of the new image.
    pub repository: Option<String>,
}

/// Prints the new image's id, as `docker commit` does.
pub async fn commit(c: &Client, a: CommitArgs) -> Result<i32> {
    let mut q = vec![format!("container={}", urlencode(&a.container)), format!("pause={}", a.pause as u8)];
    if let Some(r) = &a.repository {
        let (repo, tag) = crate::images::split_repo_tag(r);
        q.push(format!("repo={}", urlencode(repo)));
        if let Some(t) = tag {
            q.push(format!("tag={}", urlencode(t)));
        }
    }
    for (k, v) in [("author", &a.author), ("comment", &a.message)] {
        if let Some(v) = v {
            q.push(format!("{k}={}", urlencode(v)));
        }
    }
    q.extend(a.change.iter().map(|ch| format!("changes={}", urlencode(ch))));
    let r = c.post(&format!("/commit?{}", q.join("&")), None).await?;
    let v = client::read_json(r).await?;
    println!("{}", v["Id"].as_str().unwrap_or(""));
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct CpArgs {
    /// Archive mode (copy all uid/gid information).
    #[arg(short = 'a', long)]
    pub archive: bool,
    /// Always follow symbol link in SRC_PATH.
    #[arg(short = 'L', long)]
    pub follow_link: bool,
    /// CONTAINER:SRC_PATH, SRC_PATH or - (a tar stream on stdin).
    pub source: String,
    /// CONTAINER:DEST_PATH, DEST_PATH or - (a tar stream on stdout).
    pub destination: String,
}

/// `CONTAINER:PATH` → (container, path); a local path (which may hold ':' after a '/') → None.
fn split_container_path(arg: &str) -> Option<(&str, &str)> {
    if arg.starts_with('/') || arg.starts_with('.') {
        return None;
    }
    arg.split_once(':').filter(|(c, _)| !c.is_empty() && !c.contains('/'))
}

/// The stat dockerd sends in `X-Docker-Container-Path-Stat`.
#[derive(serde::Deserialize, Debug)]
struct PathStat {
    #[serde(default)]
    mode: u32,
}

impl PathStat {
    fn is_dir(&self) -> bool {
        self.mode & (1 << 31) != 0
    }

    fn of(r: &hyper::Response<hyper::body::Incoming>) -> Result<PathStat> {
        use base64::Engine as _;
        let raw = r.headers().get("X-Docker-Container-Path-Stat").and_then(|v| v.to_str().ok()).unwrap_or("");
        let json = base64::engine::general_purpose::STANDARD.decode(raw).unwrap_or_default();
        Ok(serde_json::from_slice(&json).unwrap_or(PathStat { mode: 0 }))
    }
}

fn archive_path(container: &str, path: &str) -> String {
    format!("/containers/{}/archive?path={}", urlencode(container), urlencode(path))
}

/// The last component a copy names its result after (`.` for `dir/.`: its contents).
fn base_name(path: &str) -> String {
    if path.ends_with("/.") {
        return ".".into();
    }
    std::path::Path::new(path.trim_end_matches('/'))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| ".".into())
}

/// Copies files between a container and the local filesystem as `docker cp` does: into an
/// existing directory under the source's name, else to the destination's name.
pub async fn cp(c: &Client, a: CpArgs) -> Result<i32> {
    match (split_container_path(&a.source), split_container_path(&a.destination)) {
        (Some((ctr, src)), None) => copy_from_container(c, ctr, src, &a.destination).await?,
        (None, Some((ctr, dest))) => copy_to_container(c, &a.source, ctr, dest, &a).await?,
        (Some(_), Some(_)) => anyhow::bail!("copying between containers is not supported"),
        (None, None) => anyhow::bail!("must specify at least one container source"),
    }
    Ok(0)
}

async fn copy_from_container(c: &Client, ctr: &str, src: &str, dest: &str) -> Result<()> {
    let r = c.send(hyper::Method::GET, &archive_path(ctr, src), client::empty_body(), None).await?;
    let stat = PathStat::of(&r)?;
    let mut tar = Vec::new();
    client::for_each_chunk(r, |chunk| {
        tar.extend_from_slice(chunk);
        Ok(())
    })
    .await?;
    if dest == "-" {
        use std::io::Write;
        std::io::stdout().write_all(&tar)?;
        return Ok(());
    }
    let dest = std::path::Path::new(dest);
    let extract = |dir: &std::path::Path, tar: &[u8]| -> Result<()> {
        let opts = engine_image::copy::CopyInOptions::default();
        engine_image::copy::copy_in(std::path::Path::new("/"), &dir.display().to_string(), tar, &opts)
            .map_err(|e| anyhow::anyhow!("{e}"))
    };
    let absolute = std::path::absolute(dest)?;
    let name = base_name(src);
    match std::fs::metadata(&absolute) {
        Ok(m) if m.is_dir() => extract(&absolute, &tar),
        Ok(_) if stat.is_dir() => anyhow::bail!("cannot copy a directory to a file: {}", dest.display()),
        Err(_) if dest.to_string_lossy().ends_with('/') && !stat.is_dir() => {
            anyhow::bail!("destination directory {} does not exist", dest.display())
        }
        Err(_) if name == "." => {
            // a directory's contents, to a new directory
            std::fs::create_dir(&absolute).map_err(|e| anyhow::anyhow!("{}: {e}", dest.display()))?;
            extract(&absolute, &tar)
        }
        _ => {
            // to a new name: extracted beside it, then renamed over it
            let parent = absolute.parent().unwrap_or(std::path::Path::new("/"));
            let staging = tempfile_dir(parent)?;
            let made = extract(&staging, &tar).and_then(|()| {
                std::fs::rename(staging.join(&name), &absolute).map_err(|e| anyhow::anyhow!("{}: {e}", dest.display()))
            });
            let _ = std::fs::remove_dir_all(&staging);
            made
        }
    }
}

/// A new empty directory in `parent`, to extract into before a rename.
fn tempfile_dir(parent: &std::path::Path) -> Result<std::path::PathBuf> {
    for n in 0..1000 {
        let p = parent.join(format!(".engine-cp-{}-{n}", std::process::id()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", parent.display())),
        }
    }
    anyhow::bail!("no room for a temporary directory in {}", parent.display())
}

async fn copy_to_container(c: &Client, src: &str, ctr: &str, dest: &str, a: &CpArgs) -> Result<()> {
    let put = |dir: String, body| async move {
        let path = format!("{}&noOverwriteDirNonDir=1&copyUIDGID={}", archive_path(ctr, &dir), a.archive as u8);
        c.send(hyper::Method::PUT, &path, body, Some("application/x-tar")).await.map(|_| ())
    };
    if src == "-" {
        return put(dest.to_string(), client::reader_body(std::io::stdin(), |_| {})).await;
    }
    let mut local = std::path::PathBuf::from(src);
    if a.follow_link {
        local = std::fs::canonicalize(&local)?;
    }
    let meta = std::fs::symlink_metadata(&local).map_err(|e| anyhow::anyhow!("{src}: {e}"))?;
    // where the copy lands: into an existing directory under its own name, else to `dest`
    let target = match c.send(hyper::Method::HEAD, &archive_path(ctr, dest), client::empty_body(), None).await {
        Ok(r) => Some(PathStat::of(&r)?),
        Err(e) if e.downcast_ref::<client::DaemonError>().is_some_and(|d| d.status == 404) => None,
        Err(e) => return Err(e),
    };
    let (dir, name) = match target {
        Some(t) if t.is_dir() => (dest.to_string(), base_name(src)),
        Some(_) if meta.is_dir() => anyhow::bail!("cannot copy a directory to a file: {dest}"),
        _ => {
            let d = std::path::Path::new(dest.trim_end_matches('/'));
            let parent = d.parent().map(|p| p.display().to_string()).filter(|p| !p.is_empty()).unwrap_or("/".into());
            (parent, base_name(dest))
        }
    };
    let (reader, writer) = std::io::pipe()?;
    let writing = std::thread::spawn(move || {
        engine_image::changes::write_tree(
            &local,
            std::path::Path::new(&name),
            engine_image::changes::TreeForm::Plain,
            &Default::default(),
            writer,
        )
        .map(|_| ())
    });
    let body = client::reader_body(reader, |_| {});
    let sent = put(dir, body).await;
    let written = writing.join().map_err(|_| anyhow::anyhow!("reading {src} failed"))?;
    sent?;
    written.map_err(|e| anyhow::anyhow!("{src}: {e}"))
}

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Name and optionally a tag in the 'name:tag' format.
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// Name of the Dockerfile (default: 'PATH/Dockerfile').
    #[arg(short = 'f', long = "file")]
    pub file: Option<std::path::PathBuf>,
    /// Set build-time variables.
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// Set the target build stage to build.
    #[arg(long)]
    pub target: Option<String>,
    /// Do not use cache when building the image.
    #[arg(long)]
    pub no_cache: bool,
    /// Set metadata for an image.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Suppress the build output and print image ID on success.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Set the networking mode for the RUN instructions during build.
    #[arg(long)]
    pub network: Option<String>,
    /// Add a custom host-to-IP mapping (host:ip) for the RUN instructions.
    #[arg(long = "add-host")]
    pub add_hosts: Vec<String>,
    /// Images to consider as cache sources.
    #[arg(long = "cache-from")]
    pub cache_from: Vec<String>,
    /// Remove intermediate containers after a successful build (`--rm=false` keeps them).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub rm: bool,
    /// Always attempt to pull a newer version of the base images.
    #[arg(long)]
    pub pull: bool,
    /// Set platform if server is multi-platform capable (os/arch[/variant]).
    #[arg(long)]
    pub platform: Option<String>,
    /// Always remove intermediate containers.
    #[arg(long)]
    pub force_rm: bool,
    /// The build context: a directory, or - for a tar stream on stdin.
    pub path: String,
}

/// `engine build`: sends the context as a tar stream and prints the steps as they run.
pub async fn build(c: &Client, a: BuildArgs) -> Result<i32> {
    let mut q = Vec::new();
    for t in &a.tags {
        q.push(format!("t={}", urlencode(t)));
    }
    if let Some(f) = &a.file {
        let rel = if a.path == "-" {
            f.clone()
        } else {
            let ctx = std::fs::canonicalize(&a.path)?;
            let file = std::fs::canonicalize(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            file.strip_prefix(&ctx)
                .map(|p| p.to_path_buf())
                .map_err(|_| anyhow::anyhow!("the Dockerfile ({}) must be within the build context", f.display()))?
        };
        q.push(format!("dockerfile={}", urlencode(&rel.display().to_string())));
    }
    let pairs = |list: &[String]| -> serde_json::Map<String, serde_json::Value> {
        list.iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), serde_json::json!(v)),
                // a name alone takes its value from this environment, as the Docker CLI's
                None => {
                    (kv.clone(), std::env::var(kv).map(|v| serde_json::json!(v)).unwrap_or(serde_json::Value::Null))
                }
            })
            .collect()
    };
    if !a.build_args.is_empty() {
        q.push(format!("buildargs={}", urlencode(&serde_json::Value::Object(pairs(&a.build_args)).to_string())));
    }
    if !a.labels.is_empty() {
        q.push(format!("labels={}", urlencode(&serde_json::Value::Object(pairs(&a.labels)).to_string())));
    }
    if let Some(t) = &a.target {
        q.push(format!("target={}", urlencode(t)));
    }
    if let Some(n) = &a.network {
        q.push(format!("networkmode={}", urlencode(n)));
    }
    for h in &a.add_hosts {
        q.push(format!("extrahosts={}", urlencode(h)));
    }
    if !a.cache_from.is_empty() {
        q.push(format!("cachefrom={}", urlencode(&serde_json::json!(a.cache_from).to_string())));
    }
    if let Some(p) = &a.platform {
        q.push(format!("platform={}", urlencode(p)));
    }
    q.push(format!(
        "nocache={}&q={}&rm={}&forcerm={}&pull={}",
        a.no_cache as u8, a.quiet as u8, a.rm as u8, a.force_rm as u8, a.pull as u8
    ));
    let body = if a.path == "-" {
        client::reader_body(std::io::stdin(), |_| {})
    } else {
        let root = std::path::PathBuf::from(&a.path);
        if !root.is_dir() {
            anyhow::bail!("unable to prepare context: path {:?} not found", a.path);
        }
        let (reader, writer) = std::io::pipe()?;
        std::thread::spawn(move || {
            let _ = engine_image::changes::write_tree(
                &root,
                std::path::Path::new(""),
                engine_image::changes::TreeForm::Plain,
                &Default::default(),
                writer,
            );
        });
        client::reader_body(reader, |_| {})
    };
    let registries = crate::registry::registry_config_header()?;
    let r = c
        .send_with_headers(
            hyper::Method::POST,
            &format!("/build?{}", q.join("&")),
            body,
            Some("application/x-tar"),
            registries.iter().map(|h| ("X-Registry-Config", h.as_str())),
        )
        .await?;
    let messages = crate::images::json_stream(r, a.quiet, true).await?;
    if a.quiet {
        if let Some(id) = messages.iter().rev().find_map(|m| m["aux"]["ID"].as_str()) {
            println!("{id}");
        }
    }
    Ok(0)
}

/// `engine builder …`.
#[derive(clap::Subcommand, Debug)]
pub enum BuilderCommand {
    /// Remove build cache.
    Prune {
        /// Do not prompt for confirmation.
        #[arg(short = 'f', long)]
        force: bool,
    },
}

pub async fn builder(c: &Client, cmd: BuilderCommand) -> Result<i32> {
    match cmd {
        BuilderCommand::Prune { force } => {
            if !force {
                anyhow::bail!("this removes all build cache: pass -f to confirm");
            }
            let v = client::read_json(c.post("/build/prune", None).await?).await?;
            println!("Deleted build cache objects: {}", v["CachesDeleted"].as_array().map_or(0, Vec::len));
            println!("Total reclaimed space: 0B");
            Ok(0)
        }
    }
}
