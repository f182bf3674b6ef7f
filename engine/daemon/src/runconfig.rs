//! dockerd's merges of run configurations: a container's Config over its image's (at create),
//! a commit's over its container's, and the image run defaults a container's Config makes.
//!
//! Owns: those rules only. It must never reach a service: plain data in, plain data out.

use std::collections::{BTreeMap, HashSet};

use engine_docker_api::ContainerConfig;
use engine_image::manifest::ContainerConfig as ImageRunConfig;

/// The run defaults of an image from a container's Config.
pub fn run_config(c: &ContainerConfig) -> ImageRunConfig {
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
pub fn merge(user: &mut ImageRunConfig, container: &ImageRunConfig) {
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
pub fn merge_env(mine: &mut Option<Vec<String>>, theirs: &Option<Vec<String>>) {
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
    use serde_json::json;

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
