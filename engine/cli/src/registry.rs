//! `pull`, `push`, `login`, `logout`, and the credentials they use, kept as the Docker CLI keeps
//! them: `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`), `auths` entries with
//! `base64(user:password)`, or a `credsStore`/`credHelpers` program (`docker-credential-NAME`).
//! A password is never printed, logged or put in a span.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::{self, Client};
use crate::containers::urlencode;

/// Docker Hub's key in config.json, as the Docker CLI writes it.
const HUB_KEY: &str = "https://index.docker.io/v1/";

/// The credentials file (only the parts the engine uses are typed; the rest is kept).
#[derive(Debug, Default, Serialize, Deserialize)]
struct ConfigFile {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(rename = "credsStore", default, skip_serializing_if = "Option::is_none")]
    creds_store: Option<String>,
    #[serde(rename = "credHelpers", default, skip_serializing_if = "BTreeMap::is_empty")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthEntry {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    auth: String,
    #[serde(default, rename = "identitytoken", skip_serializing_if = "String::is_empty")]
    identity_token: String,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

fn config_path() -> PathBuf {
    let dir = std::env::var_os("DOCKER_CONFIG").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root")).join(".docker")
    });
    dir.join("config.json")
}

fn read_config() -> Result<ConfigFile> {
    let p = config_path();
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn write_config(c: &ConfigFile) -> Result<()> {
    let p = config_path();
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let bytes = serde_json::to_vec_pretty(c)?;
    engine_util::fs::write_atomic_mode(&p, &bytes, 0o600).with_context(|| format!("writing {}", p.display()))
}

/// The registry a reference or server argument names, as config.json keys it.
fn server_key(domain: &str) -> String {
    match domain.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/') {
        "" | "docker.io" | "index.docker.io" | "registry-1.docker.io" | "index.docker.io/v1" => HUB_KEY.into(),
        d => d.split('/').next().unwrap_or(d).to_string(),
    }
}

/// The registry of an image reference (`busybox` is Docker Hub, `127.0.0.1:5000/x` is not).
fn domain_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_string(),
        _ => "docker.io".into(),
    }
}

fn helper(name: &str, action: &str, input: &str) -> Result<String> {
    let program = format!("docker-credential-{name}");
    let mut child = Command::new(&program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    child.stdin.take().map(|mut s| s.write_all(input.as_bytes())).transpose()?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        bail!(
            "{program} {action}: {}",
            if text.is_empty() { String::from_utf8_lossy(&out.stderr).trim().to_string() } else { text }
        );
    }
    Ok(text)
}

/// The `X-Registry-Auth` header for the registry of `image`, if credentials are kept for it.
pub fn auth_header_for(image: &str) -> Result<Option<String>> {
    let key = server_key(&domain_of(image));
    let cfg = read_config()?;
    match auth_for(&cfg, &key)? {
        Some(auth) => Ok(Some(base64::engine::general_purpose::URL_SAFE.encode(serde_json::to_vec(&auth)?))),
        None => Ok(None),
    }
}

/// The `X-Registry-Config` header of a build: the credentials of every registry kept, keyed by
/// its address, as the Docker CLI sends them (the daemon picks the base images' registries').
pub fn registry_config_header() -> Result<Option<String>> {
    let all: serde_json::Map<String, Value> = all_auths(&read_config()?)?.into_iter().collect();
    if all.is_empty() {
        return Ok(None);
    }
    Ok(Some(base64::engine::general_purpose::URL_SAFE.encode(serde_json::to_vec(&Value::Object(all))?)))
}

/// The registry credentials the CLI keeps, as a config.json of `auths` only (what `run
/// --use-api-socket` puts in the container, as the Docker CLI does): `DOCKER_AUTH_CONFIG`'s
/// when it holds any, else each registry's from config.json or its helper; none when there
/// are none.
pub fn credentials_config() -> Result<Option<Vec<u8>>> {
    if let Some(v) = std::env::var("DOCKER_AUTH_CONFIG").ok().filter(|v| !v.is_empty()) {
        let given: ConfigFile =
            serde_json::from_str(&v).context("failed to read credentials from DOCKER_AUTH_CONFIG")?;
        if !given.auths.is_empty() {
            return Ok(Some(serde_json::to_vec_pretty(&ConfigFile { auths: given.auths, ..Default::default() })?));
        }
    }
    let mut auths = BTreeMap::new();
    for (key, auth) in all_auths(&read_config()?)? {
        let field = |k: &str| auth[k].as_str().unwrap_or_default().to_string();
        let (user, password) = (field("username"), field("password"));
        let entry = AuthEntry {
            auth: if user.is_empty() && password.is_empty() {
                String::new()
            } else {
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            },
            identity_token: field("identitytoken"),
            other: BTreeMap::new(),
        };
        auths.insert(key, entry);
    }
    if auths.is_empty() {
        return Ok(None);
    }
    Ok(Some(serde_json::to_vec_pretty(&ConfigFile { auths, ..Default::default() })?))
}

/// The credentials of every registry kept (config.json's entries and its helpers'), by key.
fn all_auths(cfg: &ConfigFile) -> Result<Vec<(String, Value)>> {
    let mut all = Vec::new();
    for key in cfg.auths.keys().chain(cfg.cred_helpers.keys()) {
        if let Some(auth) = auth_for(cfg, key)? {
            all.push((key.clone(), auth));
        }
    }
    Ok(all)
}

/// The credentials kept for registry `key` (a helper's, else config.json's), as the daemon
/// reads them.
fn auth_for(cfg: &ConfigFile, key: &str) -> Result<Option<Value>> {
    let helper_name = cfg.cred_helpers.get(key).or(cfg.creds_store.as_ref());
    let auth = if let Some(h) = helper_name {
        match helper(h, "get", key) {
            Ok(out) => {
                let v: Value = serde_json::from_str(&out).unwrap_or_default();
                let user = v["Username"].as_str().unwrap_or("").to_string();
                let secret = v["Secret"].as_str().unwrap_or("").to_string();
                if user == "<token>" {
                    serde_json::json!({ "identitytoken": secret, "serveraddress": key })
                } else {
                    serde_json::json!({ "username": user, "password": secret, "serveraddress": key })
                }
            }
            // "credentials not found" is anonymous, as with the Docker CLI; a helper that
            // fails otherwise fails the command.
            Err(e) if e.to_string().contains("credentials not found") => return Ok(None),
            Err(e) => return Err(e),
        }
    } else {
        match cfg.auths.get(key) {
            Some(e) if !e.auth.is_empty() || !e.identity_token.is_empty() => {
                let raw = base64::engine::general_purpose::STANDARD.decode(&e.auth).unwrap_or_default();
                let s = String::from_utf8_lossy(&raw).to_string();
                let (u, p) = s.split_once(':').unwrap_or(("", ""));
                serde_json::json!({ "username": u, "password": p, "identitytoken": e.identity_token, "serveraddress": key })
            }
            _ => return Ok(None),
        }
    };
    Ok(Some(auth))
}

#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// Download all tagged images in the repository.
    #[arg(short = 'a', long)]
    pub all_tags: bool,
    /// Suppress verbose output.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Set platform if server is multi-platform capable (os/arch[/variant]).
    #[arg(long)]
    pub platform: Option<String>,
    /// NAME[:TAG|@DIGEST]
    pub image: String,
}

#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// Push all tags of an image to the repository.
    #[arg(short = 'a', long)]
    pub all_tags: bool,
    /// Suppress verbose output.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// NAME[:TAG]
    pub image: String,
}

#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// Username.
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password (prefer --password-stdin: this one is in the shell's history).
    #[arg(short = 'p', long)]
    pub password: Option<String>,
    /// Take the password from stdin.
    #[arg(long)]
    pub password_stdin: bool,
    /// The registry (default: Docker Hub).
    pub server: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct LogoutArgs {
    pub server: Option<String>,
}

/// Splits `name[:tag|@digest]` into the `fromImage` and `tag` of the pull API.
fn split_reference(image: &str) -> (String, String) {
    let (name, tag) = split_tag(image);
    (name, tag.unwrap_or_else(|| "latest".to_string()))
}

/// The name and the tag or digest the user wrote, if any.
fn split_tag(image: &str) -> (String, Option<String>) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name.to_string(), Some(digest.to_string()));
    }
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_string(), Some(tag.to_string())),
        _ => (image.to_string(), None),
    }
}

/// Shows the JSON progress stream of pull and push: a line per layer redrawn in place on a
/// terminal (phase, bar, sizes and rate), plain status lines otherwise; an `error` message fails
/// the command.
pub async fn show_progress(r: hyper::Response<hyper::body::Incoming>, quiet: bool, to_stderr: bool) -> Result<()> {
    let tty = !quiet && if to_stderr { std::io::stderr().is_terminal() } else { std::io::stdout().is_terminal() };
    let mut order: Vec<String> = Vec::new();
    let mut lines: BTreeMap<String, String> = BTreeMap::new();
    let mut drawn = 0usize;
    let mut started: std::collections::HashMap<(String, String), Instant> = Default::default();
    let mut error = None;
    let mut out: Box<dyn Write> = if to_stderr { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) };
    client::for_each_json_line(r, |v| {
        if let Some(e) = v["error"].as_str() {
            error = Some(e.to_string());
            return;
        }
        let status = v["status"].as_str().unwrap_or("");
        let id = v["id"].as_str().unwrap_or("");
        if quiet {
            return;
        }
        let is_layer = id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit());
        if !tty {
            // Progress ticks are for terminals.
            if v["progressDetail"]["current"].is_null() {
                if id.is_empty() {
                    let _ = writeln!(out, "{status}");
                } else {
                    let _ = writeln!(out, "{id}: {status}");
                }
            }
            return;
        }
        if !is_layer {
            // Leave the layer block and print the line below it.
            let _ = if id.is_empty() { writeln!(out, "{status}") } else { writeln!(out, "{id}: {status}") };
            order.clear();
            lines.clear();
            drawn = 0;
            return;
        }
        if !order.iter().any(|o| o == id) {
            order.push(id.to_string());
        }
        let progress = v["progress"].as_str().unwrap_or("");
        // The rate of this phase of this layer since its first tick.
        let rate = match v["progressDetail"]["current"].as_u64() {
            Some(current) => {
                let since = *started.entry((id.to_string(), status.to_string())).or_insert_with(Instant::now);
                let secs = since.elapsed().as_secs_f64();
                if secs >= 0.25 {
                    format!(" {}/s", crate::format::size((current as f64 / secs) as u64))
                } else {
                    String::new()
                }
            }
            None => String::new(),
        };
        lines.insert(id.to_string(), format!("{id}: {status} {progress}{rate}"));
        // Redraw the block of layer lines in place.
        if drawn > 0 {
            let _ = write!(out, "\x1b[{drawn}A");
        }
        for o in &order {
            let _ = writeln!(out, "\x1b[2K{}", lines.get(o).map(String::as_str).unwrap_or(""));
        }
        drawn = order.len();
        let _ = out.flush();
    })
    .await?;
    match error {
        Some(e) => Err(client::DaemonError { status: 500, message: e }.into()),
        None => Ok(()),
    }
}

/// Pulls `image` through the daemon, showing progress (on stderr for `run`, as Docker).
pub async fn pull_image(c: &Client, image: &str, platform: Option<&str>, quiet: bool, to_stderr: bool) -> Result<()> {
    let (name, tag) = split_reference(image);
    pull_path(c, &name, &tag, platform, quiet, to_stderr).await
}

/// `POST /images/create` for `name` and `tag` (every tag when empty).
async fn pull_path(
    c: &Client,
    name: &str,
    tag: &str,
    platform: Option<&str>,
    quiet: bool,
    to_stderr: bool,
) -> Result<()> {
    let mut path = format!("/images/create?fromImage={}&tag={}", urlencode(name), urlencode(tag));
    if let Some(p) = platform {
        path.push_str(&format!("&platform={}", urlencode(p)));
    }
    let auth = auth_header_for(name)?;
    let r = c.post_with_auth(&path, auth.as_deref()).await?;
    show_progress(r, quiet, to_stderr).await
}

pub async fn pull(c: &Client, a: PullArgs) -> Result<i32> {
    if a.all_tags {
        let (name, tag) = split_tag(&a.image);
        if tag.is_some() {
            bail!("tag can't be used with --all-tags/-a");
        }
        pull_path(c, &name, "", a.platform.as_deref(), a.quiet, false).await?;
        if a.quiet {
            println!("{name}");
        }
        return Ok(0);
    }
    pull_image(c, &a.image, a.platform.as_deref(), a.quiet, false).await?;
    if a.quiet {
        let (name, tag) = split_reference(&a.image);
        let sep = if tag.starts_with("sha256:") { "@" } else { ":" };
        println!(
            "{}",
            if a.image.contains(['@']) || a.image.ends_with(&format!(":{tag}")) {
                a.image.clone()
            } else {
                format!("{name}{sep}{tag}")
            }
        );
    }
    Ok(0)
}

pub async fn push(c: &Client, a: PushArgs) -> Result<i32> {
    let (name, tag) = split_tag(&a.image);
    let tag = match (tag, a.all_tags) {
        (Some(_), true) => bail!("tag can't be used with --all-tags/-a"),
        (Some(t), false) if t.starts_with("sha256:") => bail!("cannot push a digest reference"),
        (Some(t), false) => t,
        (None, false) => "latest".to_string(),
        // no tag: the daemon pushes every local tag of the repository
        (None, true) => String::new(),
    };
    let auth = auth_header_for(&name)?;
    let path = format!("/images/{}/push?tag={}", name, urlencode(&tag));
    let r = c.post_with_auth(&path, auth.as_deref()).await?;
    show_progress(r, a.quiet, false).await?;
    if a.quiet {
        println!("{}", if tag.is_empty() { name } else { format!("{name}:{tag}") });
    }
    Ok(0)
}

pub async fn login(c: &Client, a: LoginArgs) -> Result<i32> {
    let key = server_key(a.server.as_deref().unwrap_or("docker.io"));
    let username = match a.username {
        Some(u) => u,
        None if std::io::stdin().is_terminal() => {
            print!("Username: ");
            std::io::stdout().flush()?;
            let mut u = String::new();
            std::io::stdin().read_line(&mut u)?;
            u.trim().to_string()
        }
        None => bail!("Cannot perform an interactive login from a non TTY device"),
    };
    let password = match (a.password, a.password_stdin) {
        (Some(_), true) => bail!("--password and --password-stdin are mutually exclusive"),
        (Some(p), false) => {
            eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
            p
        }
        (None, true) => {
            let mut p = String::new();
            std::io::stdin().read_to_string(&mut p)?;
            p.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => bail!("a password is required: use --password-stdin"),
    };
    if username.is_empty() {
        bail!("Error: Non-null Username Required");
    }
    let body = serde_json::json!({ "username": username, "password": password, "serveraddress": key });
    c.post("/auth", Some(&body)).await?;
    let mut cfg = read_config()?;
    let helper_name = cfg.cred_helpers.get(&key).or(cfg.creds_store.as_ref()).cloned();
    match helper_name {
        Some(h) => {
            let input = serde_json::json!({ "ServerURL": key, "Username": username, "Secret": password }).to_string();
            helper(&h, "store", &input)?;
            cfg.auths.entry(key.clone()).or_default();
        }
        None => {
            let e = cfg.auths.entry(key.clone()).or_default();
            e.auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        }
    }
    write_config(&cfg)?;
    if cfg.cred_helpers.get(&key).or(cfg.creds_store.as_ref()).is_none() {
        eprintln!(
            "WARNING! Your password will be stored unencrypted in {}.\nConfigure a credential helper to remove this warning.",
            config_path().display()
        );
    }
    println!("Login Succeeded");
    Ok(0)
}

pub async fn logout(a: LogoutArgs) -> Result<i32> {
    let key = server_key(a.server.as_deref().unwrap_or("docker.io"));
    let mut cfg = read_config()?;
    let helper_name = cfg.cred_helpers.get(&key).or(cfg.creds_store.as_ref()).cloned();
    // Logged in is what config.json records (a helper keeps only the secret), as the Docker
    // CLI decides it; a helper that cannot erase is a warning, the entry goes anyway.
    if cfg.auths.remove(&key).is_none() {
        println!("Not logged in to {key}");
        return Ok(0);
    }
    println!("Removing login credentials for {key}");
    if let Some(h) = helper_name {
        if let Err(e) = helper(&h, "erase", &key) {
            eprintln!("WARNING: could not erase credentials:\n{key}: {e}");
        }
    }
    write_config(&cfg)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_servers_split_as_dockers() {
        assert_eq!(split_reference("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(split_reference("127.0.0.1:5000/a/b:1.0"), ("127.0.0.1:5000/a/b".into(), "1.0".into()));
        assert_eq!(split_reference("127.0.0.1:5000/a"), ("127.0.0.1:5000/a".into(), "latest".into()));
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(split_reference(&format!("x@{d}")), ("x".into(), d));
        assert_eq!(domain_of("busybox"), "docker.io");
        assert_eq!(domain_of("localhost:5000/x"), "localhost:5000");
        assert_eq!(server_key("docker.io"), HUB_KEY);
        assert_eq!(server_key("http://127.0.0.1:5000/"), "127.0.0.1:5000");
    }
}
