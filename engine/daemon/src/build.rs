//! `POST /build` as Docker's classic builder serves it: a tar context in the body, a Dockerfile
//! in it, and one image per instruction: a RUN is a container through the whole stack whose
//! changes are committed, a COPY or ADD copies context files into a container's root and
//! commits them, every other instruction makes an image of the new configuration alone. Steps
//! are cached by their parent image, their instruction and (COPY, ADD) the files' contents. The
//! answer streams `{"stream": "Step 1/7 : …"}`, `{"aux": {"ID": …}}` and `errorDetail` lines.
//!
//! Owns: the Dockerfile's meaning and the build's state (stages, build args, the run
//! configuration). It reaches containers through [`BuildHost`] (create, run, remove) and the
//! image store's snapshots and commits; it never keeps a container past its step, nor leaves
//! one behind when a step fails.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use engine_docker_api::{ContainerConfig, ContainerCreateBody, HostConfig};
use engine_image::changes::{write_tree, CommitOptions, TreeForm};
use engine_image::dockerfile::{self, Instruction};
use engine_image::manifest::{ContainerConfig as RunConfig, Platform};
use engine_image::{Digest, ImageStore, Reference};

use crate::http::{ApiError, Query};
use crate::trace::Trace;

/// What a build needs of the daemon: containers made, run and removed through the usual path,
/// and the image store.
pub trait BuildHost: Send + Sync + 'static {
    fn images(&self) -> &Arc<ImageStore>;
    /// Creates a container (not started); its id. One not `kept` is the step's own: it goes
    /// with the step, or with the build if engined stops during it.
    fn create(
        &self,
        trace: &Trace,
        body: ContainerCreateBody,
        kept: bool,
    ) -> impl std::future::Future<Output = Result<String, ApiError>> + Send;
    /// Starts container `id`, sends its output to `out` as it comes, and waits for its exit
    /// code.
    fn run(
        &self,
        trace: &Trace,
        id: &str,
        out: mpsc::Sender<String>,
    ) -> impl std::future::Future<Output = Result<i64, ApiError>> + Send;
    /// A new image of container `id`'s changes.
    fn commit(
        &self,
        id: &str,
        opts: CommitOptions,
    ) -> impl std::future::Future<Output = Result<Digest, ApiError>> + Send;
    /// Pulls `reference` for `platform` (a base image), the pull's progress lines on `out`.
    fn pull(
        &self,
        trace: &Arc<Trace>,
        reference: &Reference,
        platform: &Platform,
        creds: Option<engine_registry::AuthConfig>,
        out: &Out,
    ) -> impl std::future::Future<Output = Result<(), ApiError>> + Send;
    /// Removes container `id` and everything of it (best effort: it is the build's own).
    fn remove(&self, id: &str) -> impl std::future::Future<Output = ()> + Send;
    /// Kills container `id`'s process if it runs, and waits for its exit (best effort: a
    /// cancelled build's step).
    fn kill(&self, id: &str) -> impl std::future::Future<Output = ()> + Send;
    /// One step done: for `engine_build_step_duration_seconds`.
    fn observe_step(&self, instruction: &str, cache_hit: bool, secs: f64);
}

/// The build's options from the query of `POST /build`.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub tags: Vec<Reference>,
    pub dockerfile: String,
    pub build_args: BTreeMap<String, Option<String>>,
    pub target: Option<String>,
    pub no_cache: bool,
    pub labels: BTreeMap<String, String>,
    pub quiet: bool,
    pub network_mode: String,
    /// `--cache-from`: only steps these images (and the images they were built on) hold are
    /// taken from the cache, as the classic builder's.
    pub cache_from: Vec<String>,
    /// `host:ip` lines each RUN's /etc/hosts gets.
    pub extra_hosts: Vec<String>,
    pub shm_size: i64,
    /// `rm` (default true): intermediate containers go after their step; with `rm=0` (and no
    /// `forcerm`) they are kept, as `docker build --rm=false` asks.
    pub rm: bool,
    /// `forcerm`: intermediate containers always go.
    pub force_rm: bool,
    /// `pull`: every base image is pulled again, even one the store has.
    pub pull: bool,
    /// `platform`: the platform base images are pulled for (and must be of); the host's when
    /// not given.
    pub platform: Option<Platform>,
    /// The client's credentials per registry (`X-Registry-Config`), for pulling base images.
    pub registry_auth: engine_registry::RegistryConfigs,
    /// The images `cache_from` allows, found when the build starts.
    cache_allowed: Option<std::collections::HashSet<Digest>>,
}

impl BuildOptions {
    /// Whether step containers stay after their step (`rm=0` without `forcerm`).
    fn keeps_containers(&self) -> bool {
        !self.rm && !self.force_rm
    }

    pub fn from_query(q: &Query) -> Result<BuildOptions, ApiError> {
        let tags = q
            .all("t")
            .iter()
            .filter(|t| !t.is_empty())
            .map(|t| {
                let r = Reference::parse_name(t)?;
                Ok(if r.tag().is_none() && r.digest().is_none() { r.with_tag("latest")? } else { r })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let json_map = |k: &str| -> Result<Option<Value>, ApiError> {
            match q.get(k).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => serde_json::from_str(v).map(Some).map_err(|e| ApiError::bad_request(format!("{k}: {e}"))),
            }
        };
        let build_args = match json_map("buildargs")? {
            Some(Value::Object(m)) => m.into_iter().map(|(k, v)| (k, v.as_str().map(str::to_string))).collect(),
            _ => BTreeMap::new(),
        };
        let labels = match json_map("labels")? {
            Some(Value::Object(m)) => {
                m.into_iter().map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string())).collect()
            }
            _ => BTreeMap::new(),
        };
        Ok(BuildOptions {
            tags,
            dockerfile: q.get("dockerfile").filter(|d| !d.is_empty()).unwrap_or("Dockerfile").to_string(),
            build_args,
            target: q.get("target").filter(|t| !t.is_empty()).map(str::to_string),
            no_cache: q.flag("nocache"),
            labels,
            quiet: q.flag("q"),
            network_mode: q.get("networkmode").filter(|n| !n.is_empty() && *n != "default").unwrap_or("").to_string(),
            cache_from: match json_map("cachefrom")? {
                Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                _ => Vec::new(),
            },
            cache_allowed: None,
            extra_hosts: q
                .all("extrahosts")
                .iter()
                .flat_map(|h| {
                    h.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_string).collect::<Vec<_>>()
                })
                .collect(),
            shm_size: q.int("shmsize")?.unwrap_or(0),
            rm: q.get("rm").filter(|v| !v.is_empty()).is_none_or(|_| q.flag("rm")),
            force_rm: q.flag("forcerm"),
            pull: q.flag("pull"),
            platform: match q.get("platform").filter(|p| !p.is_empty()) {
                None => None,
                Some(p) => Some(build_platform(p).map_err(|e| ApiError::bad_request(e.message))?),
            },
            registry_auth: engine_registry::RegistryConfigs::default(),
        })
    }
}

/// The build cache: (parent image, instruction, content) → image made, as the classic
/// builder's. Kept in memory and in `build-cache.json` under the data root; an entry whose
/// image is gone is a miss.
pub struct BuildCache {
    path: PathBuf,
    /// Key → the images made for it, newest last (a few: `--cache-from` may want an older one).
    entries: Mutex<HashMap<String, Vec<Digest>>>,
}

/// Images kept per step key.
const CACHED_PER_STEP: usize = 8;

impl BuildCache {
    pub fn open(path: PathBuf) -> BuildCache {
        let entries = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        BuildCache { path, entries: Mutex::new(entries) }
    }

    fn key(parent: &Digest, instruction: &str, content: &str) -> String {
        Digest::of(format!("{parent}\n{instruction}\n{content}").as_bytes()).to_string()
    }

    /// The newest image made for `key` that still exists and that `--cache-from` allows.
    fn get(&self, key: &str, images: &ImageStore, opts: &BuildOptions) -> Option<Digest> {
        if opts.no_cache {
            return None;
        }
        let made = self.entries.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()?;
        made.into_iter().rev().find(|hit| {
            opts.cache_allowed.as_ref().is_none_or(|allowed| allowed.contains(hit))
                && images.resolve(&hit.to_string()).is_ok()
        })
    }

    /// Forgets every step (`docker builder prune`); the keys forgotten.
    pub fn clear(&self) -> Vec<String> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<String> = entries.drain().map(|(k, _)| k).collect();
        let _ = std::fs::remove_file(&self.path);
        keys
    }

    fn put(&self, key: String, image: Digest) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let made = entries.entry(key).or_default();
        made.retain(|d| *d != image);
        made.push(image);
        if made.len() > CACHED_PER_STEP {
            made.remove(0);
        }
        if let Ok(bytes) = serde_json::to_vec(&*entries) {
            // a lost cache costs a rebuild, never a wrong image: no fsync
            let _ = engine_util::fs::write_atomic(&self.path, &bytes);
        }
    }
}

/// One line of the answer.
pub type Out = mpsc::Sender<Value>;

/// The instructions of Dockerfile `text` (named `name` in the context), read before the
/// build's answer starts: one that is empty, malformed or without a FROM is refused with the
/// request, as dockerd refuses it (a 400, not a line of a stream).
pub fn instructions(text: &str, name: &str) -> Result<Vec<Instruction>, BuildError> {
    if text.is_empty() {
        return Err(BuildError::msg(format!("the Dockerfile ({name}) cannot be empty")));
    }
    let instructions = dockerfile::parse(text)?;
    if instructions.is_empty() {
        return Err(BuildError::msg("file with no instructions"));
    }
    if !instructions.iter().any(|i| i.keyword == "FROM") {
        return Err(BuildError::msg("no build stage in current context"));
    }
    Ok(instructions)
}

async fn say(out: &Out, text: impl Into<String>) {
    let _ = out.send(json!({ "stream": text.into() })).await;
}

/// A build whose client went away (its answer's receiver is gone: the connection closed, a
/// `docker build` interrupted) stops, as dockerd cancels it: before its next step, and a RUN
/// in progress has its process killed.
fn cancelled() -> BuildError {
    BuildError::msg("the build was cancelled: its client went away")
}

/// How long a cancelled build's RUN is waited for once its process is killed.
const CANCEL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A build failure, as the stream's `errorDetail` carries it.
#[derive(Debug)]
pub struct BuildError {
    pub message: String,
    /// A RUN's exit code, when that is what failed.
    pub code: Option<i64>,
}

impl BuildError {
    fn msg(message: impl Into<String>) -> BuildError {
        BuildError { message: message.into(), code: None }
    }
}

impl<E: std::fmt::Display> From<E> for BuildError {
    fn from(e: E) -> Self {
        BuildError::msg(e.to_string())
    }
}

/// One stage's state: its image and run configuration, the args in scope, its shell.
#[derive(Clone)]
struct Stage {
    name: Option<String>,
    image: Digest,
    config: RunConfig,
    args: BTreeMap<String, Option<String>>,
    shell: Vec<String>,
    /// MAINTAINER: the author of the images the stage makes from then on.
    maintainer: Option<String>,
}

impl Stage {
    fn lookup(&self, name: &str) -> Option<String> {
        // ENV wins over ARG, as Docker's
        for e in self.config.env.iter().flatten().rev() {
            if let Some((k, v)) = e.split_once('=') {
                if k == name {
                    return Some(v.to_string());
                }
            }
        }
        self.args.get(name).cloned().flatten()
    }

    fn subst(&self, word: &str) -> Result<String, BuildError> {
        Ok(dockerfile::substitute(word, &|n| self.lookup(n))?)
    }

    /// The history line of a step that makes no layer, as the classic builder writes it
    /// (the stage's shell, then `#(nop)`).
    fn nop(&self, what: &str) -> String {
        format!("{} #(nop)  {what}", self.shell.join(" "))
    }

    fn workdir(&self) -> String {
        self.config.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into())
    }

    /// The build args a RUN sees as environment (those set, that ENV does not set).
    fn run_env(&self) -> Vec<String> {
        let env_keys: Vec<&str> = self.config.env.iter().flatten().filter_map(|e| e.split('=').next()).collect();
        self.args
            .iter()
            .filter(|(k, _)| !env_keys.contains(&k.as_str()))
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect()
    }
}

/// The key prefix of the snapshots a `COPY --from` reads an image through (removed after the
/// step, and at engined's start when a crash cut a build short).
pub const FROM_SNAPSHOT_PREFIX: &str = "build-from-";

/// The args Docker predefines (usable without an ARG).
const PREDEFINED_ARGS: &[&str] =
    &["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy", "NO_PROXY", "no_proxy"];

/// Runs a whole build of the Dockerfile in `context`: streams its progress to `out`, returns
/// the final image.
pub async fn build<H: BuildHost>(
    host: Arc<H>,
    cache: &BuildCache,
    trace: &Arc<Trace>,
    context: &Path,
    instructions: &[Instruction],
    opts: &BuildOptions,
    out: &Out,
) -> Result<Digest, BuildError> {
    let mut opts = opts.clone();
    if !opts.cache_from.is_empty() {
        let by_id: HashMap<Digest, Option<Digest>> =
            host.images().list()?.into_iter().map(|i| (i.id().clone(), i.record.parent.clone())).collect();
        let mut allowed = std::collections::HashSet::new();
        for name in &opts.cache_from {
            let mut next = host.images().resolve(name).ok().map(|i| i.id().clone());
            while let Some(id) = next.take() {
                next = by_id.get(&id).cloned().flatten();
                allowed.insert(id);
            }
        }
        opts.cache_allowed = Some(allowed);
    }
    let opts = &opts;
    let total = instructions.len();
    // ARGs before the first FROM: usable in FROM lines
    let mut global_args: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut current: Option<Stage> = None;
    for (n, ins) in instructions.iter().enumerate() {
        if out.is_closed() {
            return Err(cancelled());
        }
        let step = format!("Step {}/{} : {}", n + 1, total, ins.original);
        if !opts.quiet {
            say(out, format!("{step}\n")).await;
        }
        let span = trace.start(engine_telemetry::names::BUILD_STEP);
        trace.attr(span, "build.instruction", ins.keyword.clone());
        trace.attr(span, "build.step.line", ins.original.chars().take(200).collect::<String>());
        trace.attr(span, "build.stage", stages.len() as i64);
        let outer = trace.enter(span);
        let started = std::time::Instant::now();
        let image_before = current.as_ref().map(|s| s.image.clone());
        let result = match (&mut current, ins.keyword.as_str()) {
            (_, "FROM") => {
                if let Some(done) = current.take() {
                    if opts.target.is_some() && done.name == opts.target {
                        trace.enter(outer);
                        trace.finish(span, Ok::<(), String>(())).ok();
                        current = Some(done);
                        break;
                    }
                    stages.push(done);
                }
                let lookup = |n: &str| global_args.get(n).cloned().flatten();
                let words = dockerfile::words(&dockerfile::substitute(&ins.rest, &lookup)?)?;
                let (base, name) = match words.as_slice() {
                    [b] => (b.clone(), None),
                    [b, as_, name] if as_.eq_ignore_ascii_case("as") => (b.clone(), Some(name.to_ascii_lowercase())),
                    _ => {
                        return Err(BuildError::msg(format!(
                            "Dockerfile parse error line {}: FROM requires either one or three arguments",
                            ins.line
                        )))
                    }
                };
                let from = stages.iter().rev().find(|s| s.name.as_deref() == Some(base.as_str())).cloned();
                let stage = match from {
                    Some(s) => Stage { name: name.clone(), args: BTreeMap::new(), maintainer: None, ..s },
                    None if base.eq_ignore_ascii_case("scratch") => {
                        let images = host.images().clone();
                        let image = tokio::task::spawn_blocking(move || images.scratch_image()).await??;
                        Stage {
                            name: name.clone(),
                            image,
                            config: RunConfig {
                                env: Some(vec![engine_image::spec::DEFAULT_PATH.to_string()]),
                                ..Default::default()
                            },
                            args: BTreeMap::new(),
                            shell: vec!["/bin/sh".into(), "-c".into()],
                            maintainer: None,
                        }
                    }
                    None => {
                        let platform = match ins.flags.get("platform") {
                            Some(p) => Some(build_platform(&dockerfile::substitute(p, &lookup)?)?),
                            None => opts.platform.clone(),
                        };
                        let image = base_image(host.as_ref(), trace, &base, platform.as_ref(), opts, out).await?;
                        let mut config = image.config.config.clone().unwrap_or_default();
                        // the builder's environment has a PATH, as dockerd's
                        let env = config.env.get_or_insert_with(Vec::new);
                        if !env.iter().any(|e| e.starts_with("PATH=")) {
                            env.insert(0, engine_image::spec::DEFAULT_PATH.to_string());
                        }
                        Stage {
                            name: name.clone(),
                            image: image.id().clone(),
                            config,
                            args: BTreeMap::new(),
                            shell: vec!["/bin/sh".into(), "-c".into()],
                            maintainer: None,
                        }
                    }
                };
                let mut stage = stage;
                for k in PREDEFINED_ARGS {
                    if let Some(v) = opts.build_args.get(*k) {
                        stage.args.insert(k.to_string(), v.clone());
                    }
                }
                // the base image's ONBUILD triggers run now, and are not passed on
                let triggers: Vec<String> = stage
                    .config
                    .other
                    .remove("OnBuild")
                    .and_then(|v| serde_json::from_value(v).ok())
                    .unwrap_or_default();
                let mut ran = Ok(false);
                if !triggers.is_empty() {
                    say(
                        out,
                        format!(
                            "# Executing {} build trigger{}\n",
                            triggers.len(),
                            if triggers.len() == 1 { "" } else { "s" }
                        ),
                    )
                    .await;
                }
                for t in &triggers {
                    let Some(trigger) = dockerfile::parse(t)?.into_iter().next() else { continue };
                    if matches!(trigger.keyword.as_str(), "FROM" | "ONBUILD" | "MAINTAINER") {
                        ran = Err(BuildError::msg(format!("{} isn't allowed as an ONBUILD trigger", trigger.keyword)));
                        break;
                    }
                    ran = step_in(&host, cache, trace, context, opts, &global_args, &stages, &mut stage, &trigger, out)
                        .await;
                    if ran.is_err() {
                        break;
                    }
                }
                current = Some(stage);
                ran.map(|_| false)
            }
            (None, "ARG") => {
                for (k, v) in arg_pairs(&ins.rest)? {
                    let v = opts.build_args.get(&k).cloned().unwrap_or(v);
                    global_args.insert(k, v);
                }
                Ok(false)
            }
            (None, other) => Err(BuildError::msg(format!("{other} before any FROM"))),
            (Some(stage), _) => {
                step_in(&host, cache, trace, context, opts, &global_args, &stages, stage, ins, out).await
            }
        };
        trace.enter(outer);
        let hit = match &result {
            Ok(h) => *h,
            Err(_) => false,
        };
        trace.attr(span, "build.cache_hit", hit);
        // the layer the step made (a RUN's, a COPY's): its size unpacked
        if let (Ok(_), Some(s)) = (&result, &current) {
            if image_before.as_ref() != Some(&s.image) {
                if let Ok(made) = host.images().resolve(&s.image.to_string()) {
                    // a new image whose last history entry made a layer: the step's
                    if made.config.history.last().is_some_and(|h| !h.empty_layer) {
                        let size = made.record.layers.last().map_or(0, |l| l.unpacked_size);
                        trace.attr(span, "build.layer.size", size as i64);
                    }
                }
            }
        }
        host.observe_step(&ins.keyword, hit, started.elapsed().as_secs_f64());
        trace.finish(span, result.as_ref().map(|_| ()).map_err(|e| e.message.clone())).ok();
        result?;
        if let Some(s) = &current {
            if !opts.quiet {
                if hit {
                    say(out, " ---> Using cache\n").await;
                }
                say(out, format!(" ---> {}\n", &s.image.hex()[..12])).await;
            }
        }
    }
    // build args no ARG declared, as dockerd warns of them
    let declared: std::collections::HashSet<String> = instructions
        .iter()
        .filter(|i| i.keyword == "ARG")
        .flat_map(|i| arg_pairs(&i.rest).unwrap_or_default().into_iter().map(|(k, _)| k))
        .collect();
    let unused: Vec<&String> =
        opts.build_args.keys().filter(|k| !declared.contains(*k) && !PREDEFINED_ARGS.contains(&k.as_str())).collect();
    if !unused.is_empty() {
        let names: Vec<&str> = unused.iter().map(|k| k.as_str()).collect();
        say(out, format!("[Warning] One or more build-args [{}] were not consumed\n", names.join(" "))).await;
    }
    let last = current.ok_or_else(|| BuildError::msg("no build stage in current context"))?;
    let mut image = last.image.clone();
    if !opts.labels.is_empty() {
        let mut config = last.config.clone();
        config.labels.get_or_insert_with(Default::default).extend(opts.labels.clone());
        let labels: Vec<String> = opts.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let history = last.nop(&format!("LABEL {}", labels.join(" ")));
        image = derive(&host, &last.image, config, last.maintainer.clone(), &history).await?;
    }
    for t in &opts.tags {
        host.images().tag(&image.to_string(), t)?;
    }
    Ok(image)
}

fn arg_pairs(rest: &str) -> Result<Vec<(String, Option<String>)>, BuildError> {
    Ok(dockerfile::words(rest)?
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (w, None),
        })
        .collect())
}

/// An image of `parent` with `config`, `author` and no new layer, `created_by` its history.
async fn derive<H: BuildHost>(
    host: &Arc<H>,
    parent: &Digest,
    config: RunConfig,
    author: Option<String>,
    created_by: &str,
) -> Result<Digest, BuildError> {
    let images = host.images().clone();
    let (parent, created_by) = (parent.clone(), created_by.to_string());
    Ok(tokio::task::spawn_blocking(move || images.derive_image(&parent, config, author, &created_by)).await??)
}

/// A list as Go's `%q` prints it: `["a" "b \"c\""]` (CMD and ENTRYPOINT in the history).
fn go_quoted(list: &[String]) -> String {
    let quoted: Vec<String> = list.iter().map(|w| serde_json::to_string(w).unwrap_or_default()).collect();
    format!("[{}]", quoted.join(" "))
}

/// A HEALTHCHECK's history text, as dockerd 20.10 prints its config (`%q` of the struct).
fn healthcheck_history(h: &Value) -> String {
    let test: Vec<String> = serde_json::from_value(h["Test"].clone()).unwrap_or_default();
    let d = |k: &str| engine_util::time::go_duration(std::time::Duration::from_nanos(h[k].as_u64().unwrap_or(0)));
    let retries = h["Retries"].as_u64().unwrap_or(0);
    let rune = match char::from_u32(retries as u32) {
        Some(c) if (' '..='~').contains(&c) && c != '\\' && c != '\'' => format!("'{c}'"),
        _ => format!("'\\x{retries:02x}'"),
    };
    format!(
        "HEALTHCHECK &{{{} {:?} {:?} {:?} {rune}}}",
        go_quoted(&test),
        d("Interval"),
        d("Timeout"),
        d("StartPeriod")
    )
}

/// Runs one instruction of a stage; whether it was a cache hit.
#[allow(clippy::too_many_arguments)]
async fn step_in<H: BuildHost>(
    host: &Arc<H>,
    cache: &BuildCache,
    trace: &Trace,
    context: &Path,
    opts: &BuildOptions,
    global_args: &BTreeMap<String, Option<String>>,
    stages: &[Stage],
    stage: &mut Stage,
    ins: &Instruction,
    out: &Out,
) -> Result<bool, BuildError> {
    let mut config = stage.config.clone();
    let exec_or_shell = |stage: &Stage| -> Vec<String> {
        match &ins.json {
            Some(v) => v.clone(),
            None => stage.shell.iter().cloned().chain([ins.rest.clone()]).collect(),
        }
    };
    // what makes the step, for the cache; what its history says, as the classic builder's
    let described = ins.original.clone();
    let history: String;
    match ins.keyword.as_str() {
        "ARG" => {
            let mut written = Vec::new();
            for (k, v) in arg_pairs(&ins.rest)? {
                written.push(match &v {
                    Some(v) => format!("{k}={v}"),
                    None => k.clone(),
                });
                let default = match v {
                    Some(v) => Some(stage.subst(&v)?),
                    None => global_args.get(&k).cloned().flatten(),
                };
                let v = opts.build_args.get(&k).cloned().unwrap_or(default);
                stage.args.insert(k, v);
            }
            history = format!("ARG {}", written.join(" "));
        }
        "ENV" => {
            let mut pairs = Vec::new();
            for (k, v) in dockerfile::key_values(&ins.rest, true)? {
                let v = stage.subst(&v)?;
                let env = config.env.get_or_insert_with(Vec::new);
                env.retain(|e| e.split('=').next() != Some(k.as_str()));
                env.push(format!("{k}={v}"));
                pairs.push(format!("{k}={v}"));
            }
            history = format!("ENV {}", pairs.join(" "));
        }
        "LABEL" => {
            let mut pairs = Vec::new();
            for (k, v) in dockerfile::key_values(&ins.rest, false)? {
                let (k, v) = (stage.subst(&k)?, stage.subst(&v)?);
                pairs.push(format!("{k}={v}"));
                config.labels.get_or_insert_with(Default::default).insert(k, v);
            }
            history = format!("LABEL {}", pairs.join(" "));
        }
        "MAINTAINER" => {
            let who = stage.subst(ins.rest.trim())?;
            history = format!("MAINTAINER {who}");
            stage.maintainer = Some(who);
        }
        "CMD" => {
            let cmd = exec_or_shell(stage);
            history = format!("CMD {}", go_quoted(&cmd));
            config.cmd = Some(cmd);
        }
        "ENTRYPOINT" => {
            let entrypoint = exec_or_shell(stage);
            history = format!("ENTRYPOINT {}", go_quoted(&entrypoint));
            config.entrypoint = Some(entrypoint).filter(|e| !e.is_empty());
            // an ENTRYPOINT resets the image's CMD, as Docker's
            config.cmd = None;
        }
        "WORKDIR" => {
            let w = stage.subst(&ins.rest)?;
            let w = if w.starts_with('/') { w } else { format!("{}/{w}", stage.workdir().trim_end_matches('/')) };
            config.working_dir = Some(w.clone());
            // a directory the image lacks is made, in a layer of its own, as Docker's
            if !host.images().image_has_path(&stage.image, Path::new(&w))? {
                return workdir_layer(host, cache, trace, opts, stage, config, &w).await;
            }
            // (one space after `#(nop)`, as dockerd writes WORKDIR's)
            history = format!("WORKDIR {w}");
        }
        "USER" => {
            let user = stage.subst(&ins.rest)?;
            history = format!("USER {user}");
            config.user = Some(user);
        }
        "EXPOSE" => {
            let mut words = dockerfile::words(&stage.subst(&ins.rest)?)?;
            for w in &words {
                for p in exposed_ports(w)? {
                    config.exposed_ports.get_or_insert_with(Default::default).insert(p, json!({}));
                }
            }
            words.sort();
            history = format!("EXPOSE {}", words.join(" "));
        }
        "VOLUME" => {
            let vols = match &ins.json {
                Some(v) => v.clone(),
                None => dockerfile::words(&stage.subst(&ins.rest)?)?,
            };
            history = format!("VOLUME [{}]", vols.join(" "));
            for v in vols {
                config.volumes.get_or_insert_with(Default::default).insert(v, json!({}));
            }
        }
        "STOPSIGNAL" => {
            let signal = stage.subst(&ins.rest)?;
            history = format!("STOPSIGNAL {signal}");
            config.stop_signal = Some(signal);
        }
        "SHELL" => {
            stage.shell = ins.json.clone().unwrap_or_default();
            history = format!("SHELL [{}]", stage.shell.join(" "));
            config.other.insert("Shell".into(), json!(stage.shell));
        }
        "ONBUILD" => {
            let mut on = config
                .other
                .get("OnBuild")
                .and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok())
                .unwrap_or_default();
            on.push(ins.rest.clone());
            config.other.insert("OnBuild".into(), json!(on));
            history = format!("ONBUILD {}", ins.rest);
        }
        "HEALTHCHECK" => {
            let check = healthcheck(ins)?;
            history = healthcheck_history(&check);
            config.other.insert("Healthcheck".into(), check);
        }
        "RUN" => return run(host, cache, trace, opts, stage, ins, out).await,
        "COPY" | "ADD" => return copy(host, cache, trace, context, opts, stages, stage, ins).await,
        other => return Err(BuildError::msg(format!("{other} is not supported"))),
    }
    let key = BuildCache::key(&stage.image, &described, &serde_json::to_string(&config).unwrap_or_default());
    if let Some(hit) = cache.get(&key, host.images(), opts) {
        stage.image = hit;
        stage.config = config;
        return Ok(true);
    }
    let history = if ins.keyword == "WORKDIR" {
        format!("{} #(nop) {history}", stage.shell.join(" "))
    } else {
        stage.nop(&history)
    };
    stage.image = derive(host, &stage.image, config.clone(), stage.maintainer.clone(), &history).await?;
    stage.config = config;
    cache.put(key, stage.image.clone());
    Ok(false)
}

/// WORKDIR of a directory the image lacks: made in a step container and committed.
async fn workdir_layer<H: BuildHost>(
    host: &Arc<H>,
    cache: &BuildCache,
    trace: &Trace,
    opts: &BuildOptions,
    stage: &mut Stage,
    config: RunConfig,
    dir: &str,
) -> Result<bool, BuildError> {
    let described = format!("WORKDIR {dir}");
    let key = BuildCache::key(&stage.image, &described, &serde_json::to_string(&config).unwrap_or_default());
    if let Some(hit) = cache.get(&key, host.images(), opts) {
        stage.image = hit;
        stage.config = config;
        return Ok(true);
    }
    let body = step_container(stage, vec!["#(nop) WORKDIR".into()], opts, "none");
    let commit = CommitOptions {
        config: config.clone(),
        created_by: Some(format!("{} #(nop) {described}", stage.shell.join(" "))),
        author: stage.maintainer.clone(),
        ..Default::default()
    };
    let (_, made) = in_step_container(host, trace, body, commit, opts.keeps_containers(), |id| async move {
        make_workdir(host.as_ref(), &id, dir)
    })
    .await?;
    stage.image = made?;
    stage.config = config;
    cache.put(key, stage.image.clone());
    Ok(false)
}

/// HEALTHCHECK [--interval=…] [--timeout=…] [--start-period=…] [--start-interval=…]
/// [--retries=…] CMD … | NONE, as the image's `Healthcheck`.
fn healthcheck(ins: &Instruction) -> Result<Value, BuildError> {
    let rest = ins.rest.trim();
    if rest.eq_ignore_ascii_case("NONE") {
        return Ok(json!({ "Test": ["NONE"] }));
    }
    let Some(cmd) = rest.strip_prefix("CMD").or_else(|| rest.strip_prefix("cmd")) else {
        return Err(BuildError::msg(format!(
            "Dockerfile parse error line {}: HEALTHCHECK needs CMD or NONE",
            ins.line
        )));
    };
    let cmd = cmd.trim();
    let test = match serde_json::from_str::<Vec<String>>(cmd) {
        Ok(v) => std::iter::once("CMD".to_string()).chain(v).collect::<Vec<_>>(),
        Err(_) => vec!["CMD-SHELL".to_string(), cmd.to_string()],
    };
    let mut h = json!({ "Test": test });
    for (flag, key) in [
        ("interval", "Interval"),
        ("timeout", "Timeout"),
        ("start-period", "StartPeriod"),
        ("start-interval", "StartInterval"),
    ] {
        if let Some(v) = ins.flags.get(flag) {
            let d = engine_util::time::parse_duration(v).ok_or_else(|| {
                BuildError::msg(format!("Dockerfile parse error line {}: invalid --{flag} {v:?}", ins.line))
            })?;
            h[key] = json!(d.as_nanos() as u64);
        }
    }
    if let Some(r) = ins.flags.get("retries") {
        h["Retries"] = json!(r.parse::<u64>().map_err(|_| BuildError::msg(format!("invalid --retries {r:?}")))?);
    }
    Ok(h)
}

/// The create body of a step's container: the stage's image with `cmd`, its user, directory
/// and environment (and the build args, for a RUN), on `network_mode` (a RUN's is the
/// build's; a step that only writes files has none).
fn step_container(stage: &Stage, cmd: Vec<String>, opts: &BuildOptions, network_mode: &str) -> ContainerCreateBody {
    ContainerCreateBody {
        config: ContainerConfig {
            image: stage.image.to_string(),
            cmd: Some(cmd),
            entrypoint: Some(Vec::new()),
            env: Some(stage.run_env()),
            user: stage.config.user.clone().unwrap_or_default(),
            working_dir: stage.workdir(),
            ..Default::default()
        },
        host_config: Some(HostConfig {
            network_mode: network_mode.to_string(),
            extra_hosts: Some(opts.extra_hosts.clone()).filter(|h| !h.is_empty()),
            shm_size: opts.shm_size,
            ..Default::default()
        }),
        networking_config: None,
    }
}

/// A step that changes files: a container of `body` is made, `work` runs on it (given its id),
/// its changes are committed with `commit`, and it is removed whatever happened. The
/// container's id and the image made (or why not).
/// The ports an EXPOSE word names (`80`, `53/udp`, `8000-8002/tcp`), each `port/proto`, as
/// dockerd expands them.
fn exposed_ports(word: &str) -> Result<Vec<String>, BuildError> {
    let (ports, proto) = word.split_once('/').unwrap_or((word, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(BuildError::msg(format!("invalid proto: {proto}")));
    }
    let port = |p: &str| p.parse::<u16>().map_err(|_| BuildError::msg(format!("invalid containerPort: {ports}")));
    let (first, last) = match ports.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(ports)?, port(ports)?),
    };
    if first > last {
        return Err(BuildError::msg(format!("invalid range specified for container port: {ports}")));
    }
    Ok((first..=last).map(|p| format!("{p}/{proto}")).collect())
}

/// `os/arch[/variant]` of a build's `platform` or a FROM's `--platform`: only Linux.
fn build_platform(s: &str) -> Result<Platform, BuildError> {
    let p = crate::distribution::parse_platform(s).map_err(|e| BuildError::msg(e.to_string()))?;
    if !p.os.eq_ignore_ascii_case("linux") {
        return Err(BuildError::msg(format!(
            "\"{}\" is an invalid OS component of \"{s}\": only linux is supported",
            p.os
        )));
    }
    Ok(p)
}

/// The image a FROM names: the store's, or pulled when the store lacks it, when it is of
/// another platform than the one asked for, or always with `pull`, as the classic builder's.
async fn base_image<H: BuildHost>(
    host: &H,
    trace: &Arc<Trace>,
    base: &str,
    platform: Option<&Platform>,
    opts: &BuildOptions,
    out: &Out,
) -> Result<engine_image::Image, BuildError> {
    let of_platform = |i: &engine_image::Image| {
        platform.is_none_or(|p| i.config.os == p.os && i.config.architecture == p.architecture)
    };
    let local = host.images().resolve(base).ok();
    let reference = Reference::parse_name(base)
        .ok()
        .map(|r| if r.tag().is_none() && r.digest().is_none() { r.with_tag("latest") } else { Ok(r) })
        .transpose()
        .ok()
        .flatten();
    match (local, reference) {
        (Some(i), _) if !opts.pull && of_platform(&i) => Ok(i),
        // an image id is never pulled
        (Some(i), None) if of_platform(&i) => Ok(i),
        (_, None) => Err(BuildError::msg(format!(
            "pull access denied for {base}, repository does not exist or may require 'docker login'"
        ))),
        (_, Some(reference)) => {
            let want = platform.cloned().unwrap_or_else(crate::distribution::host_platform);
            let creds = opts.registry_auth.for_registry(reference.domain());
            host.pull(trace, &reference, &want, creds, out).await.map_err(|e| BuildError::msg(e.message))?;
            let image = host.images().resolve(&reference.to_string())?;
            if !of_platform(&image) {
                return Err(BuildError::msg(format!(
                    "image with reference {base} was found but does not match the specified platform: wanted {}/{}, actual: {}/{}",
                    want.os, want.architecture, image.config.os, image.config.architecture
                )));
            }
            Ok(image)
        }
    }
}

async fn in_step_container<H, F, Fut>(
    host: &Arc<H>,
    trace: &Trace,
    body: ContainerCreateBody,
    commit: CommitOptions,
    keep: bool,
    work: F,
) -> Result<(String, Result<Digest, BuildError>), BuildError>
where
    H: BuildHost,
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), BuildError>>,
{
    let id = host.create(trace, body, keep).await.map_err(|e| BuildError::msg(e.message))?;
    let made = match work(id.clone()).await {
        Ok(()) => host.commit(&id, commit).await.map_err(|e| BuildError::msg(e.message)),
        Err(e) => Err(e),
    };
    if !keep {
        host.remove(&id).await;
    }
    Ok((id, made))
}

/// Makes the stage's working directory in container `id`'s root (Docker creates it).
fn make_workdir<H: BuildHost>(host: &H, id: &str, workdir: &str) -> Result<(), BuildError> {
    let rootfs = host.images().snapshot(id)?.map(|s| s.rootfs).unwrap_or_default();
    let dir = engine_image::copy::resolve_in_root(&rootfs, Path::new(workdir), true)?;
    std::fs::create_dir_all(&dir)?;
    Ok(())
}

async fn run<H: BuildHost>(
    host: &Arc<H>,
    cache: &BuildCache,
    trace: &Trace,
    opts: &BuildOptions,
    stage: &mut Stage,
    ins: &Instruction,
    out: &Out,
) -> Result<bool, BuildError> {
    let cmd = match &ins.json {
        Some(v) => v.clone(),
        None => stage.shell.iter().cloned().chain([ins.rest.clone()]).collect(),
    };
    let key =
        BuildCache::key(&stage.image, &format!("RUN {}", serde_json::to_string(&cmd)?), &stage.run_env().join("\n"));
    if let Some(hit) = cache.get(&key, host.images(), opts) {
        stage.image = hit;
        return Ok(true);
    }
    let shown = if ins.json.is_some() { serde_json::to_string(&cmd)? } else { cmd.join(" ") };
    // the history: the command, after the build args it saw (`|N k=v …`), as the classic
    // builder's (proxy args left out)
    let args: Vec<String> = stage
        .run_env()
        .into_iter()
        .filter(|kv| !PREDEFINED_ARGS.contains(&kv.split('=').next().unwrap_or_default()))
        .collect();
    let created_by = match args.is_empty() {
        true => cmd.join(" "),
        false => format!("|{} {} {}", args.len(), args.join(" "), cmd.join(" ")),
    };
    let commit = CommitOptions {
        config: stage.config.clone(),
        created_by: Some(created_by),
        author: stage.maintainer.clone(),
        ..Default::default()
    };
    let body = step_container(stage, cmd, opts, &opts.network_mode);
    let workdir = stage.workdir();
    let (id, made) = in_step_container(host, trace, body, commit, opts.keeps_containers(), |id| async move {
        make_workdir(host.as_ref(), &id, &workdir)?;
        if !opts.quiet {
            say(out, format!(" ---> Running in {}\n", &id[..12])).await;
        }
        let (tx, mut rx) = mpsc::channel::<String>(64);
        let forward = {
            let out = out.clone();
            let quiet = opts.quiet;
            tokio::spawn(async move {
                while let Some(line) = rx.recv().await {
                    if !quiet {
                        say(&out, line).await;
                    }
                }
            })
        };
        let run = host.run(trace, &id, tx);
        tokio::pin!(run);
        let code = tokio::select! {
            ran = &mut run => ran.map_err(|e| BuildError::msg(e.message))?,
            _ = out.closed() => {
                // the run is not dropped halfway: it ends once its process is killed (killed
                // again until then: a start still under way has no process to kill yet), or
                // is given up after CANCEL_WAIT (the container goes with the step all the same)
                let give_up = tokio::time::Instant::now() + CANCEL_WAIT;
                loop {
                    host.kill(&id).await;
                    let ended = tokio::time::timeout(std::time::Duration::from_millis(200), &mut run).await.is_ok();
                    if ended || tokio::time::Instant::now() > give_up {
                        break;
                    }
                }
                let _ = forward.await;
                return Err(cancelled());
            }
        };
        let _ = forward.await;
        if code != 0 {
            return Err(BuildError {
                message: format!("The command '{shown}' returned a non-zero code: {code}"),
                code: Some(code),
            });
        }
        Ok(())
    })
    .await?;
    if !opts.quiet && !opts.keeps_containers() {
        say(out, format!("Removing intermediate container {}\n", &id[..12])).await;
    }
    stage.image = made?;
    cache.put(key, stage.image.clone());
    Ok(false)
}

/// COPY/ADD [--from=stage|image] [--chown=user:group] [--chmod=mode] src... dest
#[allow(clippy::too_many_arguments)]
async fn copy<H: BuildHost>(
    host: &Arc<H>,
    cache: &BuildCache,
    trace: &Trace,
    context: &Path,
    opts: &BuildOptions,
    stages: &[Stage],
    stage: &mut Stage,
    ins: &Instruction,
) -> Result<bool, BuildError> {
    let mut args = match &ins.json {
        Some(v) => v.iter().map(|w| stage.subst(w)).collect::<Result<Vec<_>, _>>()?,
        None => dockerfile::words(&stage.subst(&ins.rest)?)?,
    };
    if args.len() < 2 {
        return Err(BuildError::msg(format!(
            "Dockerfile parse error line {}: {} requires at least two arguments",
            ins.line, ins.keyword
        )));
    }
    let dest_raw = args.pop().unwrap_or_default();
    if ins.keyword == "ADD" {
        for (i, a) in args.iter_mut().enumerate() {
            if a.starts_with("http://") || a.starts_with("https://") {
                *a = download(context, i, a).await?;
            }
        }
    }
    let dest = if dest_raw.starts_with('/') {
        dest_raw.clone()
    } else {
        format!("{}/{dest_raw}", stage.workdir().trim_end_matches('/'))
    };
    let into_dir = dest_raw.ends_with('/') || args.len() > 1;
    // where the sources are read: the context, another stage's image or an image
    let from = ins.flags.get("from").cloned();
    let mut temp_snapshot = None;
    let source_root: PathBuf = match &from {
        None => context.to_path_buf(),
        Some(f) => {
            let image = match stages
                .iter()
                .enumerate()
                .find(|(i, s)| s.name.as_deref() == Some(f.as_str()) || i.to_string() == *f)
            {
                Some((_, s)) => s.image.clone(),
                None => host.images().resolve(f).map_err(|e| BuildError::msg(e.to_string()))?.id().clone(),
            };
            // a snapshot of its own: builds run side by side
            let key = format!("{FROM_SNAPSHOT_PREFIX}{}", engine_util::id::new_id()?);
            let images = host.images().clone();
            let k = key.clone();
            let snap = tokio::task::spawn_blocking(move || images.prepare_snapshot(&k, &image)).await??;
            temp_snapshot = Some(key);
            snap.rootfs
        }
    };
    let result =
        copy_with(host, cache, trace, &source_root, from.is_some(), opts, stage, ins, &args, &dest, into_dir).await;
    if let Some(key) = temp_snapshot {
        let images = host.images().clone();
        let _ = tokio::task::spawn_blocking(move || images.remove_snapshot(&key)).await;
    }
    result
}

/// ADD of a URL: fetched into the context (under `.engine-add/N/`), named after the URL's last
/// path component, mode 0600 as Docker's; its context path, to copy as any source.
async fn download(context: &Path, n: usize, url: &str) -> Result<String, BuildError> {
    let resp = reqwest::get(url).await.map_err(|e| BuildError::msg(format!("ADD {url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(BuildError::msg(format!("ADD {url}: {}", resp.status())));
    }
    let name = url
        .split(['?', '#'])
        .next()
        .and_then(|u| u.rsplit('/').next())
        .filter(|n| !n.is_empty() && !url.ends_with("//"))
        .unwrap_or("download")
        .to_string();
    let bytes = resp.bytes().await.map_err(|e| BuildError::msg(format!("ADD {url}: {e}")))?;
    let rel = format!(".engine-add/{n}/{name}");
    let path = context.join(&rel);
    std::fs::create_dir_all(path.parent().unwrap_or(context))?;
    std::fs::write(&path, &bytes)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(rel)
}

/// The sources of a COPY as (path in `root`, name under the destination), wildcards expanded;
/// a directory stands for its contents.
fn sources(root: &Path, args: &[String]) -> Result<Vec<PathBuf>, BuildError> {
    let mut out = Vec::new();
    for a in args {
        if a.starts_with("http://") || a.starts_with("https://") {
            return Err(BuildError::msg(format!("COPY does not take URLs (ADD does): {a}")));
        }
        let clean = Path::new(a.trim_start_matches('/'));
        // in the context or an image's root: never out of it, through links or ..
        let resolved = engine_image::copy::resolve_in_root(root, clean, true)?;
        if a.contains(['*', '?', '[']) {
            let parent = resolved.parent().unwrap_or(root);
            let pattern = resolved.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let mut hits: Vec<PathBuf> =
                std::fs::read_dir(parent).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
            hits.retain(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                dockerfile::matches(&pattern, &name)
            });
            hits.sort();
            if hits.is_empty() {
                return Err(BuildError::msg(format!("COPY failed: no source files were specified ({a})")));
            }
            out.extend(hits);
        } else {
            if std::fs::symlink_metadata(&resolved).is_err() {
                return Err(BuildError::msg(format!("COPY failed: file not found in build context or excluded by .dockerignore: stat {a}: file does not exist")));
            }
            out.push(resolved);
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn copy_with<H: BuildHost>(
    host: &Arc<H>,
    cache: &BuildCache,
    trace: &Trace,
    root: &Path,
    from_image: bool,
    opts: &BuildOptions,
    stage: &mut Stage,
    ins: &Instruction,
    args: &[String],
    dest: &str,
    into_dir: bool,
) -> Result<bool, BuildError> {
    let srcs = sources(root, args)?;
    let into_dir = into_dir || srcs.len() > 1;
    // one tar of everything, named as it lands under the destination's directory; its digest
    // is the files' part of the cache key
    let (dir, tar) = {
        let dest_path = Path::new(dest);
        let mut tar = Vec::new();
        let single_file_to_name = !into_dir && srcs.len() == 1 && !srcs[0].is_dir();
        let dir = if single_file_to_name {
            dest_path.parent().unwrap_or(Path::new("/")).to_path_buf()
        } else {
            dest_path.to_path_buf()
        };
        for s in &srcs {
            let name = if single_file_to_name {
                PathBuf::from(dest_path.file_name().unwrap_or_default())
            } else if s.is_dir() {
                PathBuf::new()
            } else {
                PathBuf::from(s.file_name().unwrap_or_default())
            };
            // a local archive is extracted; a download never is
            let downloaded = s.strip_prefix(root).is_ok_and(|p| p.starts_with(".engine-add"));
            let extract_tar = ins.keyword == "ADD" && !from_image && !downloaded && s.is_file() && is_archive(s);
            if extract_tar {
                let (_, mut r) = engine_image::compression::decompress(std::fs::File::open(s)?)?;
                let mut raw = Vec::new();
                std::io::Read::read_to_end(&mut r, &mut raw)?;
                tar.push(raw);
            } else {
                tar.push(write_tree(s, &name, TreeForm::Plain, &Default::default(), Vec::new())?);
            }
        }
        (dir, tar)
    };
    let content: Vec<String> = tar.iter().map(|t| Digest::of(t).to_string()).collect();
    let described = format!("{} {:?} {dest} {:?}", ins.keyword, ins.flags, content);
    let key = BuildCache::key(&stage.image, &described, "");
    if let Some(hit) = cache.get(&key, host.images(), opts) {
        stage.image = hit;
        return Ok(true);
    }
    let created_by = format!("{} #(nop) {} {}", stage.shell.join(" "), ins.keyword, ins.rest);
    let commit = CommitOptions {
        config: stage.config.clone(),
        created_by: Some(created_by),
        author: stage.maintainer.clone(),
        ..Default::default()
    };
    let body = step_container(stage, vec![format!("#(nop) {}", ins.keyword)], opts, "none");
    let chown = ins.flags.get("chown").map(|spec| stage.subst(spec)).transpose()?;
    let mode = match ins.flags.get("chmod") {
        Some(m) => Some(u32::from_str_radix(m, 8).map_err(|_| BuildError::msg(format!("invalid --chmod {m:?}")))?),
        None => None,
    };
    let (_, made) = in_step_container(host, trace, body, commit, opts.keeps_containers(), |id| async move {
        let rootfs = host.images().snapshot(&id)?.map(|s| s.rootfs).unwrap_or_default();
        let owner = match chown {
            Some(spec) => {
                let u = engine_image::spec::resolve_user(&rootfs, &spec)?;
                (u.uid, u.gid)
            }
            None => (0, 0),
        };
        std::fs::create_dir_all(engine_image::copy::resolve_in_root(&rootfs, &dir, true)?)?;
        let opts = engine_image::copy::CopyInOptions { no_overwrite_dir_non_dir: false, owner: Some(owner), mode };
        let dir = dir.display().to_string();
        tokio::task::spawn_blocking(move || -> Result<(), engine_image::copy::CopyError> {
            for t in &tar {
                engine_image::copy::copy_in(&rootfs, &dir, t.as_slice(), &opts)?;
            }
            Ok(())
        })
        .await??;
        Ok(())
    })
    .await?;
    stage.image = made?;
    cache.put(key, stage.image.clone());
    Ok(false)
}

/// Whether a local ADD source is an archive ADD extracts (tar, plain or compressed).
fn is_archive(p: &Path) -> bool {
    let Ok(f) = std::fs::File::open(p) else { return false };
    let Ok((_, mut r)) = engine_image::compression::decompress(f) else { return false };
    let mut block = [0u8; 512];
    std::io::Read::read_exact(&mut r, &mut block).is_ok() && &block[257..262] == b"ustar"
}

/// Unpacks a build context (a tar stream, plain or compressed) into `dir`, reads its
/// Dockerfile, then takes out what its `.dockerignore` excludes (the Dockerfile and
/// `.dockerignore` too when it names them, as dockerd does: they are read first). The
/// Dockerfile's text.
pub fn unpack_context(dir: &Path, r: impl Read, dockerfile: &str) -> Result<String, BuildError> {
    let (_, tar) = engine_image::compression::decompress(r)?;
    let opts = engine_image::copy::CopyInOptions::default();
    engine_image::copy::copy_in(dir, "/", tar, &opts)?;
    let file = engine_image::copy::resolve_in_root(dir, Path::new(dockerfile), true)?;
    let text = std::fs::read_to_string(&file)
        .map_err(|_| BuildError::msg(format!("Cannot locate specified Dockerfile: {dockerfile}")))?;
    let Ok(ignore_text) = std::fs::read_to_string(dir.join(".dockerignore")) else { return Ok(text) };
    let ignore = dockerfile::Ignore::parse(&ignore_text);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(dir.join(&rel))?.flatten() {
            let child = rel.join(entry.file_name());
            let name = child.to_string_lossy().into_owned();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if ignore.excludes(&name) {
                if is_dir {
                    // an exception may keep something below: look inside first
                    stack.push(child);
                } else {
                    std::fs::remove_file(entry.path())?;
                }
            } else if is_dir {
                stack.push(child);
            }
        }
    }
    // excluded directories left empty by the walk go; those holding a kept file stay
    remove_empty_excluded(dir, Path::new(""), &ignore)?;
    Ok(text)
}

fn remove_empty_excluded(root: &Path, rel: &Path, ignore: &dockerfile::Ignore) -> Result<(), BuildError> {
    for entry in std::fs::read_dir(root.join(rel))?.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            let child = rel.join(entry.file_name());
            remove_empty_excluded(root, &child, ignore)?;
            if ignore.excludes(&child.to_string_lossy()) && std::fs::read_dir(entry.path())?.next().is_none() {
                std::fs::remove_dir(entry.path())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dockerfile_is_read_before_the_build_as_dockerd_reads_it() {
        let err = |text: &str| instructions(text, "Dockerfile").unwrap_err().message;
        assert_eq!(err(""), "the Dockerfile (Dockerfile) cannot be empty");
        assert_eq!(err("# only a comment\n"), "file with no instructions");
        assert_eq!(err("ENV A=1\n"), "no build stage in current context");
        assert!(err("FROM x\nRUNN y\n").contains("line 2: unknown instruction: RUNN"));
        assert_eq!(instructions("FROM x\nRUN y\n", "Dockerfile").unwrap().len(), 2);
    }

    #[test]
    fn expose_expands_ranges_and_refuses_bad_ports() {
        assert_eq!(exposed_ports("80").unwrap(), ["80/tcp"]);
        assert_eq!(exposed_ports("53/UDP").unwrap(), ["53/udp"]);
        assert_eq!(exposed_ports("8000-8002/tcp").unwrap(), ["8000/tcp", "8001/tcp", "8002/tcp"]);
        assert!(exposed_ports("70000").unwrap_err().message.contains("invalid containerPort"));
        assert!(exposed_ports("9-8").unwrap_err().message.contains("invalid range"));
        assert!(exposed_ports("80/icmp").unwrap_err().message.contains("invalid proto"));
    }

    #[test]
    fn history_lines_are_the_classic_builders() {
        assert_eq!(go_quoted(&["echo".into(), "a \"q\"".into()]), r#"["echo" "a \"q\""]"#);
        let check = json!({ "Test": ["CMD-SHELL", "true"], "Interval": 5_000_000_000u64 });
        assert_eq!(healthcheck_history(&check), r#"HEALTHCHECK &{["CMD-SHELL" "true"] "5s" "0s" "0s" '\x00'}"#);
        let check = json!({ "Test": ["NONE"], "Retries": 65 });
        assert_eq!(healthcheck_history(&check), r#"HEALTHCHECK &{["NONE"] "0s" "0s" "0s" 'A'}"#);
    }
}
