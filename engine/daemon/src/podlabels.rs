//! The labels the CRI service puts on the container records of a pod (its sandbox and its
//! containers), and the queries other modules make on them: whether a record is a CRI object
//! (the Docker API's listings leave them out) and which records make a pod (`engine trace <pod
//! name>`). A leaf: it takes the records only, so the router and the trace service can ask
//! without knowing the CRI service.

use crate::records::ContainerRecord;

/// The label every CRI object carries: `sandbox` or `container`.
pub const KIND_LABEL: &str = "io.engine.cri";
pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// On a container: its sandbox's id.
pub const SANDBOX_ID: &str = "io.engine.cri.sandbox-id";
pub const ATTEMPT: &str = "io.engine.cri.attempt";
/// The pod's `log_directory`, on its sandbox.
pub const LOG_DIRECTORY: &str = "io.engine.cri.log-directory";
/// The pod's sysctls (JSON), on its sandbox: its containers take those outside the network
/// namespace.
pub const SYSCTLS: &str = "io.engine.cri.sysctls";
/// A container's log file in the CRI format (`log_directory` + its `log_path`).
pub const LOG_PATH: &str = "io.engine.cri.log-path";
/// Annotations are kept as labels under this prefix; the CRI's own labels as they are.
pub const ANNOTATION: &str = "io.engine.cri.annotation.";

fn label<'a>(rec: &'a ContainerRecord, key: &str) -> Option<&'a str> {
    rec.config.labels.as_ref().and_then(|l| l.get(key)).map(String::as_str)
}

/// Whether a container record is a CRI object (hidden from the Docker API's listings).
pub fn is_cri(rec: &ContainerRecord) -> bool {
    label(rec, KIND_LABEL).is_some()
}

/// The ids, among `recs`, of the CRI pod named `pod`: its sandboxes, then their containers.
pub fn pod_members(recs: &[ContainerRecord], pod: &str) -> Vec<String> {
    let sandboxes: Vec<&str> = recs
        .iter()
        .filter(|r| label(r, KIND_LABEL) == Some("sandbox") && label(r, POD_NAME) == Some(pod))
        .map(|r| r.id.as_str())
        .collect();
    let members = recs.iter().filter(|r| label(r, SANDBOX_ID).is_some_and(|s| sandboxes.contains(&s)));
    sandboxes.iter().map(|s| s.to_string()).chain(members.map(|r| r.id.clone())).collect()
}
