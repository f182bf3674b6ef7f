//! Orphans: what containers engined has no record of left behind — lifecycled's containers and
//! tasks (with their shims and processes), port proxies, network namespaces, endpoints on
//! networks, cgroups and snapshots. [`find`] reports them (`GET /engine/v1/system/check`,
//! `engine system check`); [`collect`] removes them, at engined's start, every
//! `--orphan-collection-interval` seconds and when asked (`POST`, `--collect`).
//!
//! It owns nothing but the looking: what it removes is removed through the store that made it
//! (lifecycled, the networks, the image store, the proxies' own stop), with one exception: a
//! cgroup lifecycled no longer knows of has its processes killed and its directories removed
//! here ([`remove_cgroup`], which `rm -f` also uses when lifecycled does not answer). It must
//! never touch a container engined knows (by its record or its directory), nor anything not
//! named by a container id under engined's own roots (its exec-root, data-root, networks), nor
//! a cgroup under its cgroup parent that nothing else of engined's names: the parent may be
//! shared with another engine (`--cgroup-parent /docker`), whose cgroups are named alike.
//!
//! It rests on one invariant of the container store: every resource of a container is made
//! after the container's directory (`<data-root>/containers/<id>`) and removed before it. So
//! the resources are listed first and the known containers read after: a resource of a
//! container being created is known by then; one of a container being removed may be listed,
//! but its removal and its collection are both idempotent.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engine_api::v1::{ContainerId, ListContainersRequest};
use serde::Serialize;

use crate::lifecycle::task;
use crate::log;

/// What kind of thing an orphan is, in the order a collection takes them: the proxies and
/// processes first, what they hold after.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A port proxy (`engine-proxy`), by its counters file.
    Proxy,
    /// lifecycled's container, its task if any (shim, processes, runtime state, task directory).
    Task,
    /// The container's cgroup, in every hierarchy (and whatever runs in it).
    Cgroup,
    /// A network namespace bind mount under the exec-root.
    Namespace,
    /// An endpoint on a network: an address and a host veth.
    Endpoint,
    /// The container's snapshot (its overlay mount and writable layer).
    Snapshot,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Proxy => "proxy",
            Kind::Task => "task",
            Kind::Namespace => "namespace",
            Kind::Endpoint => "endpoint",
            Kind::Cgroup => "cgroup",
            Kind::Snapshot => "snapshot",
        }
    }
}

/// One thing left of a container engined has no record of.
#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct Orphan {
    pub kind: Kind,
    /// The id of the container it belonged to.
    pub container: String,
    /// Where it is: a file or directory, or `<network>/<host veth>` for an endpoint.
    pub path: String,
    /// After a collection: whether it is gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collected: Option<bool>,
    /// After a collection that failed: why it is still there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The network of an endpoint (its id).
    #[serde(skip)]
    network: String,
}

/// What a check or a collection found.
#[derive(Serialize, Clone, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Report {
    pub orphans: Vec<Orphan>,
    /// What could not be looked at (lifecycled did not answer): orphans may hide there.
    pub unchecked: Vec<String>,
}

/// What finding and collecting orphans uses: lifecycled, the configuration (roots, cgroup
/// parent), the networks, the container and image stores, engined's span sink and whether
/// engined is shutting down. It removes each orphan through the store that made it.
pub struct OrphanService {
    pub lifecycle: crate::lifecycle::Lifecycle,
    pub cfg: std::sync::Arc<crate::config::Config>,
    pub networks: std::sync::Arc<engine_network::Networks>,
    pub containers: std::sync::Arc<crate::records::ContainerStore>,
    pub images: std::sync::Arc<engine_image::ImageStore>,
    pub sink: Option<engine_telemetry::Sink>,
    pub shutting_down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Serializes collections: the periodic one and those the API asks for.
    pub collecting: tokio::sync::Mutex<()>,
}

/// Whether `s` is a container id as engined makes them (64 hex digits): nothing else under its
/// roots is ever taken for a container's.
fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The names and paths of the entries of `dir` (none when it does not exist).
fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
        .collect()
}

/// The mount points of the cgroup hierarchies (v1 and v2), from `/proc/self/mountinfo`.
fn cgroup_mounts() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let mount_point = left.split(' ').nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect()
}

/// Lists every orphan of `d` (nothing is changed).
pub async fn find(d: &OrphanService) -> Report {
    let mut report = Report::default();
    let lifecycled = match d.lifecycle.list_containers(ListContainersRequest::default()).await {
        Ok(r) => r.containers.into_iter().map(|c| c.id).collect(),
        Err(s) => {
            report.unchecked.push(format!("lifecycled's containers: {}", s.message()));
            Vec::new()
        }
    };
    let (cfg, networks) = (d.cfg.clone(), d.networks.list());
    let found = tokio::task::spawn_blocking(move || scan(&cfg, lifecycled, &networks)).await.unwrap_or_default();
    // Only now the known containers (see the crate doc): their directories, and the store.
    let root = d.containers.root().to_path_buf();
    let mut known: BTreeSet<String> = tokio::task::spawn_blocking(move || entries(&root))
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    known.extend(d.containers.all().iter().map(|e| e.snapshot().id));
    report.orphans = found.into_iter().filter(|o| !known.contains(&o.container)).collect();
    report.orphans.sort_by(|a, b| (&a.container, a.kind).cmp(&(&b.container, b.kind)));
    report
}

/// What of containers is under engined's roots, whoever they belong to: lifecycled's containers
/// `lifecycled` and task directories, proxies, namespaces, endpoints on `networks`, snapshots,
/// and the cgroups that one of those (or the runtime's state) names.
fn scan(cfg: &crate::Config, lifecycled: Vec<String>, networks: &[engine_network::NetworkRecord]) -> Vec<Orphan> {
    let mut found = Vec::new();
    let mut push = |kind, container: &str, path: String, network: &str| {
        found.push(Orphan {
            kind,
            container: container.to_string(),
            path,
            collected: None,
            error: None,
            network: network.to_string(),
        })
    };
    // proxies: `<exec-root>/proxy/<id>-<proto>-<port>-<n>`
    for (name, path) in entries(&cfg.exec_root.join("proxy")) {
        if let Some(id) = name.split('-').next().filter(|id| is_id(id)) {
            push(Kind::Proxy, id, path.display().to_string(), "");
        }
    }
    // lifecycled's containers, and its task directories (a task of a container it lost)
    let tasks_dir = cfg.exec_root.join("lifecycle").join("tasks");
    let mut task_ids: BTreeSet<String> = entries(&tasks_dir).into_iter().map(|(name, _)| name).collect();
    task_ids.extend(lifecycled);
    for id in task_ids.iter().filter(|id| is_id(id)) {
        let dir = tasks_dir.join(id);
        let path = if dir.exists() { dir } else { cfg.data_root.join("lifecycle").join("containers").join(id) };
        push(Kind::Task, id, path.display().to_string(), "");
    }
    for (name, path) in entries(&cfg.exec_root.join("netns")).into_iter().filter(|(name, _)| is_id(name)) {
        push(Kind::Namespace, &name, path.display().to_string(), "");
    }
    for net in networks {
        for (id, ep) in net.endpoints.iter().filter(|(id, _)| is_id(id)) {
            push(Kind::Endpoint, id, format!("{}/{}", net.name, ep.host_veth), &net.id);
        }
    }
    let snapshots = entries(&cfg.data_root.join("image").join("snapshots"));
    for (name, path) in snapshots.into_iter().filter(|(name, _)| is_id(name)) {
        push(Kind::Snapshot, &name, path.display().to_string(), "");
    }
    // cgroups, `<hierarchy>/<cgroup parent>/<id>` (one orphan for all hierarchies), of the
    // containers something else of engined's names
    let mut named: BTreeSet<String> = found.iter().map(|o| o.container.clone()).collect();
    named.extend(entries(&cfg.exec_root.join("lifecycle").join("runtime")).into_iter().map(|(name, _)| name));
    let parent = cfg.cgroup_parent.trim_matches('/');
    let mut cgroups = BTreeSet::new();
    for mount in cgroup_mounts() {
        for (name, path) in entries(&mount.join(parent)) {
            if named.contains(&name) && path.is_dir() {
                cgroups.insert(name);
            }
        }
    }
    for id in cgroups {
        found.push(Orphan {
            kind: Kind::Cgroup,
            path: format!("/{parent}/{id}"),
            container: id,
            collected: None,
            error: None,
            network: String::new(),
        });
    }
    found
}

/// Finds and removes every orphan of `d`; the report says what was found and whether each went.
/// A collection that found any is a `daemon.collect` trace, and each orphan a warning in the log.
pub async fn collect(d: &OrphanService) -> Report {
    let _one_at_a_time = d.collecting.lock().await;
    let mut report = find(d).await;
    if report.orphans.is_empty() {
        return report;
    }
    let trace =
        std::sync::Arc::new(crate::trace::Trace::background(d.sink.as_ref(), engine_telemetry::names::DAEMON_COLLECT));
    trace.attr(trace.root, "collect.found", report.orphans.len() as i64);
    let mut failed = 0;
    // a container whose task or cgroup stays may still have processes: what they use (its
    // network, its snapshot) stays with them
    let mut holding: Option<(String, Kind)> = None;
    for o in &mut report.orphans {
        if let Some((_, kind)) = holding.as_ref().filter(|(id, _)| *id == o.container) {
            o.collected = Some(false);
            o.error = Some(format!("not tried: its {} is still there", kind.as_str()));
            failed += 1;
            continue;
        }
        let span = trace.start(engine_telemetry::names::DAEMON_ORPHAN);
        trace.attr(span, "orphan.kind", o.kind.as_str());
        trace.attr(span, "container.id", o.container.clone());
        trace.attr(span, "orphan.path", o.path.clone());
        // lifecycled's work for it (a task's delete) joins the trace under this span
        let outer = trace.enter(span);
        let result = trace.scope(remove(d, o)).await;
        trace.enter(outer);
        log!(
            d.cfg,
            "warn",
            "orphaned {} of container {} ({}): {}",
            o.kind.as_str(),
            o.container,
            o.path,
            match &result {
                Ok(()) => "removed".to_string(),
                Err(e) => format!("not removed: {e}"),
            }
        );
        o.collected = Some(result.is_ok());
        o.error = result.as_ref().err().cloned();
        failed += usize::from(result.is_err());
        if result.is_err() && matches!(o.kind, Kind::Task | Kind::Cgroup) {
            holding = Some((o.container.clone(), o.kind));
        }
        let _ = trace.finish(span, result);
    }
    trace.end((failed > 0).then(|| format!("{failed} orphans not removed")).as_deref());
    report
}

/// Collects at engined's start and then every `--orphan-collection-interval` seconds (none when
/// it is 0).
pub fn spawn_periodic(d: std::sync::Arc<OrphanService>) {
    let every = d.cfg.orphan_collection_interval;
    if every == 0 {
        return;
    }
    tokio::spawn(async move {
        loop {
            if d.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let report = collect(&d).await;
            for what in &report.unchecked {
                log!(d.cfg, "warn", "orphan collection could not check {what}");
            }
            tokio::time::sleep(Duration::from_secs(every)).await;
        }
    });
}

/// Removes one orphan; an error says why it is still there.
async fn remove(d: &OrphanService, o: &Orphan) -> Result<(), String> {
    let id = o.container.clone();
    match o.kind {
        Kind::Proxy => {
            let stats = PathBuf::from(&o.path);
            blocking(move || {
                engine_network::ports::stop_by_stats(&stats);
                match engine_network::ports::find_by_stats(&stats) {
                    Some(pid) => Err(format!("proxy {pid} did not exit")),
                    None => Ok(()),
                }
            })
            .await
        }
        Kind::Task => remove_task(d, &id).await,
        Kind::Namespace => {
            d.networks.release(&id);
            let path = PathBuf::from(&o.path);
            blocking(move || {
                engine_network::remove_namespace(&path);
                match path.exists() {
                    true => Err(format!("{} is still there", path.display())),
                    false => Ok(()),
                }
            })
            .await
        }
        Kind::Endpoint => d.networks.detach(&o.network, &id).await.map_err(|e| e.to_string()),
        Kind::Cgroup => {
            let rel = PathBuf::from(o.path.trim_start_matches('/'));
            blocking(move || remove_cgroup(&rel)).await
        }
        Kind::Snapshot => {
            let images = d.images.clone();
            blocking(move || images.remove_snapshot(&id).map_err(|e| e.to_string())).await
        }
    }
}

async fn blocking(f: impl FnOnce() -> Result<(), String> + Send + 'static) -> Result<(), String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| e.to_string())?
}

/// How long an orphan's task has to end after SIGKILL before its removal counts as failed.
const TASK_END: Duration = Duration::from_secs(10);

/// Kills every process of lifecycled's container `id`, deletes its task (the shim goes, and
/// with it the runtime's container, its cgroup and the task directory), then the container.
async fn remove_task(d: &OrphanService, id: &str) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + TASK_END;
    loop {
        let _ = d.lifecycle.kill(crate::lifecycle::kill_all(id)).await;
        match d.lifecycle.delete_task(task(id)).await {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::NotFound => break,
            Err(s) if tokio::time::Instant::now() >= deadline => {
                return Err(format!("deleting its task: {}", s.message()))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    match d.lifecycle.delete_container(ContainerId { id: id.to_string() }).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(format!("deleting it from lifecycled: {}", s.message())),
    }
}

/// Kills every process of the cgroup `rel` (relative to each hierarchy's root) and removes
/// it, with the cgroups under it, from every hierarchy (5 s at most). A frozen (paused) cgroup
/// is thawed first: its processes could not die.
pub(crate) fn remove_cgroup(rel: &Path) -> Result<(), String> {
    let tops: Vec<PathBuf> = cgroup_mounts().into_iter().map(|m| m.join(rel)).filter(|d| d.is_dir()).collect();
    for top in &tops {
        let _ = std::fs::write(top.join("cgroup.freeze"), "0");
        let _ = std::fs::write(top.join("freezer.state"), "THAWED");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        // every cgroup of it, children before their parents
        let mut tree = Vec::new();
        for top in &tops {
            subtree(top, &mut tree);
        }
        if tree.is_empty() {
            return Ok(());
        }
        for dir in &tree {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        let mut last_error = None;
        for dir in &tree {
            match std::fs::remove_dir(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => last_error = Some((dir.clone(), e)),
                _ => {}
            }
        }
        match last_error {
            None => return Ok(()),
            Some((dir, e)) if std::time::Instant::now() >= deadline => {
                return Err(format!("removing {}: {e}", dir.display()))
            }
            Some(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// `dir` and the cgroups under it, children before their parents, into `out`.
fn subtree(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    for (_, child) in entries(dir) {
        if child.is_dir() {
            subtree(&child, out);
        }
    }
    out.push(dir.to_path_buf());
}
