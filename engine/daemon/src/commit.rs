//! A container's files as dockerd serves them: its changes (`GET /containers/{id}/changes`),
//! its root filesystem as a tar (`GET /containers/{id}/export`) and a new image of it
//! (`POST /commit`).
//!
//! Owns: Docker's rules for these (which paths are the container's mount points and so not its
//! changes, how a commit's configuration is merged from the caller's and the container's). It
//! must never write to a container's snapshot: the image store reads it.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::StatusCode;
use serde_json::json;

use engine_docker_api::ContainerConfig;
use engine_image::changes::CommitOptions;
use engine_image::manifest::ContainerConfig as ImageRunConfig;

use crate::daemon::Daemon;
use crate::http::{self, ApiError, Query, Resp};
use crate::records::{ContainerRecord, Entry};
use crate::trace::Trace;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, engine_image::ImageError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(e.to_string()))?.map_err(ApiError::from)
}

/// The container's mount points (`/proc`, `/etc/hosts`, its volumes…): made for its mounts, not
/// by it, so neither its changes nor a commit show them, as dockerd's init layer hides them.
fn mount_points(d: &Daemon, id: &str) -> HashSet<PathBuf> {
    let spec = oci_spec::runtime::Spec::load(d.container_dir(id).join("config.json"));
    spec.ok()
        .and_then(|s| s.mounts().clone())
        .unwrap_or_default()
        .iter()
        .map(|m| m.destination().clone())
        .filter(|p| p != std::path::Path::new("/"))
        .collect()
}

/// `GET /containers/{id}/changes`.
pub async fn changes(d: &Arc<Daemon>, e: &Arc<Entry>) -> Result<Resp, ApiError> {
    let id = e.snapshot().id;
    let skip = mount_points(d, &id);
    let images = d.images.clone();
    let changes = blocking(move || images.snapshot_changes(&id, &skip)).await?;
    Ok(http::json(StatusCode::OK, &changes))
}

/// `GET /containers/{id}/export`: the root filesystem as a tar stream.
pub async fn export(d: &Arc<Daemon>, e: &Arc<Entry>) -> Result<Resp, ApiError> {
    let rec = e.snapshot();
    if d.images.snapshot(&rec.id)?.is_none() {
        return Err(ApiError::internal(format!("container {} has no root filesystem", rec.id)));
    }
    let (tx, body) = http::channel_body(16);
    let images = d.images.clone();
    let id = rec.id.clone();
    tokio::task::spawn_blocking(move || {
        let w = std::io::BufWriter::with_capacity(256 * 1024, http::ChannelWriter(tx));
        // An error mid-stream can only cut the tar short; the client sees it truncated.
        let _ = images.export_snapshot(&id, w);
    });
    let mut r = Resp::new(body);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    d.event(&rec, "export", &[]);
    Ok(r)
}

/// `POST /commit?container=…&repo=…&tag=…&comment=…&author=…&pause=…&changes=…` with the
/// caller's Config as the body: a new image of the container's changes. A running container is
/// paused around it unless `pause=0`, as dockerd does.
pub async fn commit(
    d: &Arc<Daemon>,
    trace: &Trace,
    q: &Query,
    body: Option<ContainerConfig>,
) -> Result<Resp, ApiError> {
    let name = q.get("container").unwrap_or("");
    let e = d.containers.find(name)?;
    let reference = crate::images::repo_tag(q)?;
    let rec = e.snapshot();
    // no Config: the container's, as dockerd has it; the changes apply over either
    let mut config = run_config(body.as_ref().unwrap_or(&rec.config));
    for change in q.all("changes") {
        engine_image::archive::apply_change(&mut config, &change)?;
    }
    merge(&mut config, &run_config(&rec.config));
    let opts = CommitOptions {
        reference,
        config,
        author: q.get("author").map(str::to_string),
        comment: q.get("comment").map(str::to_string),
        created_by: Some(created_by(&rec)),
    };
    let span = trace.start(engine_telemetry::names::DAEMON_COMMIT);
    trace.attr(span, "container.id", rec.id.as_str());
    let pause = q.get("pause").is_none_or(|p| !matches!(p, "0" | "false" | "False"));
    let paused_here = pause && rec.state.running() && !rec.state.paused() && d.pause(&e).await.is_ok();
    let images = d.images.clone();
    let (key, skip) = (rec.id.clone(), mount_points(d, &rec.id));
    let made = blocking(move || images.commit_snapshot(&key, &skip, &opts, &())).await;
    if paused_here {
        if let Err(err) = d.unpause(&e).await {
            crate::log!(d.cfg, "warn", "unpausing {} after its commit: {}", rec.id, err.message);
        }
    }
    let id = trace.finish(span, made.map_err(|e| e.message)).map_err(ApiError::internal)?;
    trace.attr(span, "image.id", id.to_string());
    d.event(&rec, "commit", &[]);
    Ok(http::json(StatusCode::CREATED, &json!({ "Id": id.to_string() })))
}

/// What dockerd's history says made a committed layer: the container's command.
fn created_by(rec: &ContainerRecord) -> String {
    std::iter::once(rec.path.as_str()).chain(rec.args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
}

/// The run defaults of an image from a container's Config.
fn run_config(c: &ContainerConfig) -> ImageRunConfig {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let mut other = BTreeMap::new();
    if let Some(h) = c.healthcheck.as_ref().and_then(|h| serde_json::to_value(h).ok()) {
        other.insert("Healthcheck".to_string(), h);
    }
    ImageRunConfig {
        user: non_empty(&c.user),
        exposed_ports: c.exposed_ports.clone().filter(|p| !p.is_empty()),
        env: c.env.clone().filter(|e| !e.is_empty()),
        entrypoint: c.entrypoint.clone().filter(|e| !e.is_empty()),
        cmd: c.cmd.clone().filter(|c| !c.is_empty()),
        volumes: c.volumes.clone().filter(|v| !v.is_empty()),
        working_dir: non_empty(&c.working_dir),
        labels: c.labels.clone(),
        stop_signal: c.stop_signal.clone().filter(|s| !s.is_empty()),
        other,
    }
}

/// dockerd's `merge` of a commit's configuration: what the caller (and the changes) left unset
/// comes from the container; environment variables, labels, ports and volumes are joined, the
/// caller's winning.
fn merge(user: &mut ImageRunConfig, container: &ImageRunConfig) {
    if user.user.is_none() {
        user.user = container.user.clone();
    }
    join_maps(&mut user.exposed_ports, &container.exposed_ports);
    join_maps(&mut user.volumes, &container.volumes);
    join_maps(&mut user.labels, &container.labels);
    merge_env(&mut user.env, &container.env);
    if user.entrypoint.is_none() {
        if user.cmd.is_none() {
            user.cmd = container.cmd.clone();
        }
        user.entrypoint = container.entrypoint.clone();
    }
    if !user.other.contains_key("Healthcheck") {
        if let Some(h) = container.other.get("Healthcheck") {
            user.other.insert("Healthcheck".into(), h.clone());
        }
    }
    if user.working_dir.is_none() {
        user.working_dir = container.working_dir.clone();
    }
    if user.stop_signal.is_none() {
        user.stop_signal = container.stop_signal.clone();
    }
}

/// dockerd's merge of environments (a container's over its image's, a commit's over its
/// container's): `mine` first, then each of `theirs` whose name `mine` does not set.
pub(crate) fn merge_env(mine: &mut Option<Vec<String>>, theirs: &Option<Vec<String>>) {
    match (mine.as_mut(), theirs) {
        (None, env) => *mine = env.clone(),
        (Some(m), Some(t)) => {
            let key = |v: &str| v.split('=').next().unwrap_or("").to_string();
            let have: HashSet<String> = m.iter().map(|v| key(v)).collect();
            m.extend(t.iter().filter(|v| !have.contains(&key(v))).cloned());
        }
        (Some(_), None) => {}
    }
}

fn join_maps<V: Clone>(mine: &mut Option<BTreeMap<String, V>>, theirs: &Option<BTreeMap<String, V>>) {
    match (mine.as_mut(), theirs) {
        (None, t) => *mine = t.clone(),
        (Some(m), Some(t)) => {
            for (k, v) in t {
                m.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        (Some(_), None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(v: serde_json::Value) -> ImageRunConfig {
        run_config(&serde_json::from_value(v).unwrap())
    }

    #[test]
    fn a_commit_merges_the_callers_config_over_the_containers_as_dockerd() {
        let container = config(json!({
            "User": "nobody", "Env": ["PATH=/bin", "A=container"], "Cmd": ["sh"], "WorkingDir": "/w",
            "Labels": {"l": "container", "k": "kept"}, "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGUSR1",
        }));
        let mut user = config(json!({"Env": ["A=mine"], "Labels": {"l": "mine"}, "ExposedPorts": {"443/tcp": {}}}));
        engine_image::archive::apply_change(&mut user, "CMD [\"echo\", \"hi\"]").unwrap();
        merge(&mut user, &container);
        assert_eq!(user.user.as_deref(), Some("nobody"));
        assert_eq!(user.env.unwrap(), ["A=mine", "PATH=/bin"]);
        assert_eq!(user.cmd.unwrap(), ["echo", "hi"]);
        assert_eq!(user.working_dir.as_deref(), Some("/w"));
        let labels = user.labels.unwrap();
        assert_eq!((labels["l"].as_str(), labels["k"].as_str()), ("mine", "kept"));
        assert_eq!(user.exposed_ports.unwrap().keys().collect::<Vec<_>>(), ["443/tcp", "80/tcp"]);
        assert_eq!(user.stop_signal.as_deref(), Some("SIGUSR1"));

        // an entrypoint of the caller's keeps the container's command out
        let mut user = config(json!({"Entrypoint": ["/bin/true"]}));
        merge(&mut user, &container);
        assert_eq!((user.entrypoint.unwrap(), user.cmd), (vec!["/bin/true".to_string()], None));
    }
}
