//! The Kubernetes Container Runtime Interface (CRI v1) on engined's own socket (`--cri-socket`,
//! default `<exec-root>/cri.sock`; `--no-cri` turns it off), on the daemon's own stores: an
//! image pulled through one API is seen by the other, and a CRI container is made, started and
//! stopped by the same paths as a Docker API one, so a pod start is one trace down to
//! `init.exec` and the kernel.
//!
//! A pod sandbox is a container of the sandbox image (`--cri-sandbox-image`, a pause image)
//! run with engine-init as PID 1; it holds the pod's network namespace, and the pod's containers
//! join it (`container:<sandbox>`), as dockershim did. The namespace is put on the network of
//! the first CNI configuration in `--cni-conf-dir` (ADD once the sandbox runs, DEL before it
//! stops; the attachment is kept under `<data-root>/cri/cni` before ADD, so a crash between
//! them still DELs, and a sandbox removed through the Docker API is DELed by the next CRI call
//! on it or engined's next start), on engined's default bridge when that directory has none, or is the
//! host's with `network: NODE`. Sandboxes and CRI containers carry the label `io.engine.cri` and are kept
//! out of the Docker API's listings, as containerd keeps its CRI namespace apart.
//!
//! Every call is a gRPC server span (`rpc.system=grpc`, `rpc.service`, `rpc.method`, and the
//! `k8s.*` attributes of its pod and container) under the caller's `traceparent` metadata.
//!
//! Exec, Attach and PortForward answer with a one-time URL of the streaming server
//! (`--cri-stream-address`, loopback; SPDY/3.1, [`engine_streaming`]); what it does is
//! [`crate::cristream`]'s.
//!
//! What is not served yet answers UNIMPLEMENTED: checkpoints, pod-level resource updates,
//! metric descriptors and the Stream* listings. The pod's containers share the sandbox's network and IPC namespaces
//! (its PID namespace when asked); their UTS namespaces are their own, named as the pod.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use engine_cri::v1 as cri;
use engine_cri::v1::image_service_server::ImageService;
use engine_cri::v1::runtime_service_server::RuntimeService;
use engine_docker_api::{ContainerConfig, ContainerCreateBody, HostConfig};
use tonic::{Request, Response, Status};

use crate::daemon::Daemon;
use crate::http::ApiError;
use crate::podlabels::*;
use crate::records::{ContainerRecord, Entry};
use crate::trace::Trace;

const RUNTIME_SERVICE: &str = "runtime.v1.RuntimeService";
const IMAGE_SERVICE: &str = "runtime.v1.ImageService";

/// One traced call: its span and what its metric is labelled with.
struct Call {
    trace: Arc<Trace>,
    service: &'static str,
    method: &'static str,
    started: std::time::Instant,
}

/// Asks a container's log writer to open its log file again (after the kubelet rotated it);
/// the answer says whether it could.
type Reopen = tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<Result<(), ApiError>>>;

/// The directory under the data root that keeps each attached sandbox's CNI attachment (what
/// DEL needs), `<sandbox id>.json`: apart from the sandbox's own directory, so an attachment
/// outlives a sandbox removed by other means (the Docker API) until a CRI call or the next
/// start of engined undoes it.
const CNI_ATTACHMENTS: &str = "cri/cni";

/// The streaming server whose URLs Exec, Attach and PortForward answer with.
pub type StreamServer = engine_streaming::Server<crate::cristream::CriStreams>;

/// Both CRI services, on the daemon.
#[derive(Clone)]
pub struct Cri {
    d: Arc<Daemon>,
    /// The log writers of running containers, by container id.
    logs: Arc<std::sync::Mutex<HashMap<String, Reopen>>>,
    streams: Arc<StreamServer>,
    /// The node's pod CIDR, as the kubelet last gave it (UpdateRuntimeConfig): reported by a
    /// verbose Status. Pods take their addresses from the CNI configuration, which the node's
    /// administrator writes for that range.
    pod_cidr: Arc<std::sync::Mutex<String>>,
}

impl Cri {
    pub fn new(d: Arc<Daemon>, streams: Arc<StreamServer>) -> Cri {
        Cri { d, logs: Arc::default(), streams, pod_cidr: Arc::default() }
    }

    /// The streaming URL of `req` on running object `id` of `kind`.
    fn stream_url(&self, id: &str, kind: &str, req: engine_streaming::Request) -> Result<String, ApiError> {
        let e = self.find(id, kind)?;
        if !e.snapshot().state.running() {
            return Err(ApiError::conflict(format!("{kind} {id:?} is not running")));
        }
        self.streams.url(req).map_err(|e| match e {
            engine_streaming::StreamingError::Invalid(m) => ApiError::bad_request(m),
            engine_streaming::StreamingError::TooMany => {
                ApiError { status: hyper::StatusCode::TOO_MANY_REQUESTS, message: e.to_string() }
            }
            engine_streaming::StreamingError::Token(m) => ApiError::internal(m),
        })
    }

    fn log_writers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Reopen>> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The server span of one call, under the caller's `traceparent` metadata.
    fn trace<T>(&self, req: &Request<T>, service: &'static str, method: &'static str) -> Call {
        let tp = req.metadata().get("traceparent").and_then(|v| v.to_str().ok());
        let t = Arc::new(Trace::new(self.d.sink.as_ref(), tp, &format!("{service}/{method}")));
        t.attr(t.root, "rpc.system", "grpc");
        t.attr(t.root, "rpc.service", service.to_string());
        t.attr(t.root, "rpc.method", method.to_string());
        Call { trace: t, service, method, started: std::time::Instant::now() }
    }

    /// Runs `f` as the call's operation (in the trace's scope, to its end even if the caller
    /// goes), closes the span with the result's gRPC status and counts the call.
    async fn call<T, F>(&self, call: Call, f: F) -> Result<Response<T>, Status>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        let (trace, op) = (call.trace.clone(), call.trace.clone());
        let r = tokio::spawn(async move { op.scope(f).await })
            .await
            .unwrap_or_else(|e| Err(ApiError::internal(format!("call failed: {e}"))));
        let status = match &r {
            Ok(_) => 200,
            Err(e) => e.status.as_u16(),
        };
        let code = grpc_code(status);
        trace.attr(trace.root, "rpc.grpc.status_code", code as i64);
        trace.close(status);
        self.d.metrics.observe_cri(call.service, call.method, code, call.started.elapsed().as_secs_f64());
        r.map(Response::new).map_err(to_status)
    }

    /// A read (status, lists, stats): counted, not traced (a poller would crowd the traces out).
    fn read<T>(
        &self,
        service: &'static str,
        method: &'static str,
        started: std::time::Instant,
        r: Result<T, ApiError>,
    ) -> Result<Response<T>, Status> {
        let code = r.as_ref().map_or_else(|e| grpc_code(e.status.as_u16()), |_| tonic::Code::Ok);
        self.d.metrics.observe_cri(service, method, code, started.elapsed().as_secs_f64());
        r.map(Response::new).map_err(to_status)
    }

    fn find(&self, id: &str, kind: &str) -> Result<Arc<Entry>, ApiError> {
        let e = self.d.containers.find(id).map_err(|_| ApiError::not_found(format!("{kind} {id:?} not found")))?;
        let rec = e.snapshot();
        match rec.config.labels.as_ref().and_then(|l| l.get(KIND_LABEL)) {
            Some(k) if k == kind => Ok(e),
            _ => Err(ApiError::not_found(format!("{kind} {id:?} not found"))),
        }
    }

    fn all(&self, kind: &str) -> Vec<ContainerRecord> {
        self.d
            .containers
            .all()
            .iter()
            .map(|e| e.snapshot())
            .filter(|r| r.config.labels.as_ref().and_then(|l| l.get(KIND_LABEL)).is_some_and(|k| k == kind))
            .collect()
    }
}

fn grpc_code(http: u16) -> tonic::Code {
    match http {
        200..=299 => tonic::Code::Ok,
        400 => tonic::Code::InvalidArgument,
        404 => tonic::Code::NotFound,
        409 => tonic::Code::FailedPrecondition,
        429 => tonic::Code::ResourceExhausted,
        504 => tonic::Code::DeadlineExceeded,
        501 => tonic::Code::Unimplemented,
        _ => tonic::Code::Internal,
    }
}

fn to_status(e: ApiError) -> Status {
    Status::new(grpc_code(e.status.as_u16()), e.message)
}

fn labels(rec: &ContainerRecord) -> BTreeMap<String, String> {
    rec.config.labels.clone().unwrap_or_default()
}

/// The CRI's labels of an object: its labels but engine's own and the annotations (the
/// `io.kubernetes.*` ones stay: the kubelet sets them itself, and crictl reads them).
fn user_labels(l: &BTreeMap<String, String>) -> HashMap<String, String> {
    l.iter().filter(|(k, _)| !k.starts_with("io.engine.cri")).map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn annotations(l: &BTreeMap<String, String>) -> HashMap<String, String> {
    l.iter().filter_map(|(k, v)| Some((k.strip_prefix(ANNOTATION)?.to_string(), v.clone()))).collect()
}

fn nanos(rfc3339: &str) -> i64 {
    engine_util::time::parse_rfc3339_unix_nanos(rfc3339).unwrap_or(0)
}

fn selected(filter: &HashMap<String, String>, l: &BTreeMap<String, String>) -> bool {
    filter.iter().all(|(k, v)| l.get(k) == Some(v))
}

/// The interfaces of a network namespace but loopback, with their traffic, from its
/// `/proc/<pid>/net/dev`.
/// A CRI container's memory+swap: the kubelet's, or with none given, its memory limit alone (no
/// swap, as containerd's CRI); not Docker's default of twice the memory.
fn swap_limit(memory: i64, swap: i64) -> i64 {
    match swap {
        0 if memory > 0 => memory,
        s => s,
    }
}

fn interface_usage(net_dev: &str) -> Vec<cri::NetworkInterfaceUsage> {
    let v = |value: u64| Some(cri::UInt64Value { value });
    crate::network::interface_counters(net_dev)
        .into_iter()
        .map(|(name, n)| cri::NetworkInterfaceUsage {
            name,
            rx_bytes: v(n[0]),
            rx_errors: v(n[2]),
            tx_bytes: v(n[8]),
            tx_errors: v(n[10]),
        })
        .collect()
}

/// The name a Docker listing would show for a pod's object, as dockershim named them:
/// `k8s_<container or POD>_<pod>_<namespace>_<uid>_<attempt>`.
/// A name longer than a container name may be (255 bytes) keeps its first 180 bytes and gains
/// a digest of the whole, so it stays unique.
fn docker_name(container: &str, pod: &cri::PodSandboxMetadata, attempt: u32) -> String {
    let name = format!("k8s_{container}_{}_{}_{}_{attempt}", pod.name, pod.namespace, pod.uid);
    if name.len() <= 255 {
        return name;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let mut cut = 180;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{}_{hex}", &name[..cut])
}

/// A container's PID or IPC mode from the CRI's: the host's (NODE), the sandbox's (POD), or
/// its own (CONTAINER; TARGET is not served: its own).
fn namespace_mode(mode: i32, sandbox: &ContainerRecord) -> String {
    match mode {
        m if m == cri::NamespaceMode::Node as i32 => "host".into(),
        m if m == cri::NamespaceMode::Pod as i32 => format!("container:{}", sandbox.id),
        _ => String::new(),
    }
}

fn sandbox_state(rec: &ContainerRecord) -> i32 {
    if rec.state.running() {
        cri::PodSandboxState::SandboxReady as i32
    } else {
        cri::PodSandboxState::SandboxNotready as i32
    }
}

fn sandbox_metadata(l: &BTreeMap<String, String>) -> cri::PodSandboxMetadata {
    let get = |k: &str| l.get(k).cloned().unwrap_or_default();
    cri::PodSandboxMetadata {
        name: get(POD_NAME),
        namespace: get(POD_NAMESPACE),
        uid: get(POD_UID),
        attempt: get(ATTEMPT).parse().unwrap_or(0),
    }
}

fn container_state(rec: &ContainerRecord) -> i32 {
    use crate::state::Status as S;
    match rec.state.status() {
        S::Created => cri::ContainerState::ContainerCreated as i32,
        S::Running | S::Paused | S::Restarting => cri::ContainerState::ContainerRunning as i32,
        S::Exited | S::Dead => cri::ContainerState::ContainerExited as i32,
        _ => cri::ContainerState::ContainerUnknown as i32,
    }
}

impl Cri {
    async fn run_pod_sandbox(&self, trace: &Trace, req: cri::RunPodSandboxRequest) -> Result<String, ApiError> {
        let config = req.config.ok_or_else(|| ApiError::bad_request("RunPodSandbox without a config"))?;
        let meta = config.metadata.clone().ok_or_else(|| ApiError::bad_request("a pod sandbox without metadata"))?;
        if meta.name.is_empty() || meta.namespace.is_empty() || meta.uid.is_empty() {
            return Err(ApiError::bad_request("a pod sandbox needs a name, a namespace and a uid"));
        }
        trace.attr(trace.root, "k8s.pod.name", meta.name.clone());
        trace.attr(trace.root, "k8s.namespace.name", meta.namespace.clone());
        trace.attr(trace.root, "k8s.pod.uid", meta.uid.clone());
        let mut l: BTreeMap<String, String> = config.labels.clone().into_iter().collect();
        l.extend(config.annotations.iter().map(|(k, v)| (format!("{ANNOTATION}{k}"), v.clone())));
        l.insert(KIND_LABEL.into(), "sandbox".into());
        l.insert(POD_NAME.into(), meta.name.clone());
        l.insert(POD_NAMESPACE.into(), meta.namespace.clone());
        l.insert(POD_UID.into(), meta.uid.clone());
        l.insert(ATTEMPT.into(), meta.attempt.to_string());
        if !config.log_directory.is_empty() {
            l.insert(LOG_DIRECTORY.into(), config.log_directory.clone());
        }
        let linux = config.linux.clone().unwrap_or_default();
        if !linux.sysctls.is_empty() {
            let sorted: BTreeMap<&String, &String> = linux.sysctls.iter().collect();
            l.insert(SYSCTLS.into(), serde_json::to_string(&sorted).unwrap_or_default());
        }
        let security = linux.security_context.clone().unwrap_or_default();
        let ns = security.namespace_options.clone().unwrap_or_default();
        let host_network = ns.network == cri::NamespaceMode::Node as i32;
        let dns = config.dns_config.clone().unwrap_or_default();
        let mut port_bindings = BTreeMap::new();
        for p in &config.port_mappings {
            if p.host_port <= 0 {
                continue;
            }
            let proto = if p.protocol == cri::Protocol::Udp as i32 { "udp" } else { "tcp" };
            port_bindings.insert(
                format!("{}/{proto}", p.container_port),
                Some(vec![engine_docker_api::PortBinding {
                    host_ip: p.host_ip.clone(),
                    host_port: p.host_port.to_string(),
                }]),
            );
        }
        // the pod's network: the CNI configuration's when there is one, else engined's bridge
        let cni = if host_network { None } else { self.cni_network()? };
        if cni.is_some() {
            // the portmap plugin publishes the pod's host ports
            port_bindings.clear();
        }
        let network_mode = match (host_network, cni.is_some()) {
            (true, _) => "host",
            // its own namespace, loopback only; the plugins add the rest
            (false, true) => "none",
            (false, false) => "",
        };
        let host_config = HostConfig {
            network_mode: network_mode.into(),
            pid_mode: if ns.pid == cri::NamespaceMode::Node as i32 { "host".into() } else { String::new() },
            ipc_mode: if ns.ipc == cri::NamespaceMode::Node as i32 { "host".into() } else { String::new() },
            // the pod's sysctls: the network ones take in its network namespace, which the
            // sandbox holds (the others go to each container)
            sysctls: Some(linux.sysctls.clone().into_iter().collect()).filter(|s: &BTreeMap<_, _>| !s.is_empty()),
            init: Some(true),
            privileged: security.privileged,
            // the pod's cgroup, which the kubelet makes and owns; its containers' go under it
            cgroup_parent: linux.cgroup_parent.clone(),
            dns: (!dns.servers.is_empty()).then_some(dns.servers),
            dns_search: (!dns.searches.is_empty()).then_some(dns.searches),
            dns_options: (!dns.options.is_empty()).then_some(dns.options),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            config: ContainerConfig {
                image: self.d.cfg.cri_sandbox_image.clone(),
                hostname: if host_network { String::new() } else { config.hostname.clone() },
                labels: Some(l),
                ..Default::default()
            },
            host_config: Some(host_config),
            networking_config: None,
        };
        let name = docker_name("POD", &meta, meta.attempt);
        let id = self.d.create(trace, Some(name), body).await?;
        let e = self.d.containers.find(&id)?;
        if let Err(err) = self.d.start(trace, &e).await {
            // nothing of a sandbox that did not start stays
            let _ = self.d.remove(&e, true, true).await;
            return Err(err);
        }
        if let Some((cni, network)) = cni {
            let pod = engine_network::cni::Pod {
                id: id.clone(),
                netns: self.d.networks.sandbox_path(&id),
                args: vec![
                    ("K8S_POD_NAMESPACE".into(), meta.namespace.clone()),
                    ("K8S_POD_NAME".into(), meta.name.clone()),
                    ("K8S_POD_INFRA_CONTAINER_ID".into(), id.clone()),
                    ("K8S_POD_UID".into(), meta.uid.clone()),
                ],
                port_mappings: config
                    .port_mappings
                    .iter()
                    .filter(|p| p.host_port > 0)
                    .map(|p| engine_network::cni::PortMapping {
                        host_port: p.host_port as u16,
                        container_port: p.container_port as u16,
                        protocol: if p.protocol == cri::Protocol::Udp as i32 { "udp" } else { "tcp" }.into(),
                        host_ip: p.host_ip.clone(),
                    })
                    .collect(),
            };
            if let Err(err) = self.cni_attach(trace, &cni, &network, pod).await {
                let _ = self.d.remove(&e, true, true).await;
                return Err(err);
            }
        }
        Ok(id)
    }

    /// The CNI network pods join now: `None` when the configuration directory has none.
    fn cni_network(&self) -> Result<Option<(engine_network::cni::Cni, engine_network::cni::NetworkList)>, ApiError> {
        let cni = self.cni_plugins();
        match cni.network() {
            Ok(network) => Ok(Some((cni, network))),
            Err(engine_network::cni::CniError::NoConfig(_)) => Ok(None),
            Err(e) => Err(ApiError::internal(e.to_string())),
        }
    }

    /// The CNI configuration directory and plugin directories of the daemon.
    fn cni_plugins(&self) -> engine_network::cni::Cni {
        let bin_dirs = match &self.d.cfg.cni_bin_dir {
            dirs if dirs.is_empty() => engine_network::cni::default_bin_dirs(),
            dirs => dirs.clone(),
        };
        engine_network::cni::Cni { conf_dir: self.d.cfg.cni_conf_dir.clone(), bin_dirs }
    }

    /// ADD of a started sandbox to its network. What DEL will need is kept in the sandbox's
    /// directory first, so a crash during the ADD still leaves it to undo.
    async fn cni_attach(
        &self,
        trace: &Trace,
        cni: &engine_network::cni::Cni,
        network: &engine_network::cni::NetworkList,
        pod: engine_network::cni::Pod,
    ) -> Result<(), ApiError> {
        let path = self.attachment_path(&pod.id).ok_or_else(|| ApiError::internal("a sandbox id that is not one"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ApiError::internal(format!("{}: {e}", dir.display())))?;
        }
        let keep = |a: &engine_network::cni::Attachment| {
            let bytes = serde_json::to_vec(a).map_err(|e| ApiError::internal(e.to_string()))?;
            engine_util::fs::write_atomic(&path, &bytes)
                .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))
        };
        keep(&engine_network::cni::Attachment {
            network: network.clone(),
            pod: pod.clone(),
            result: serde_json::json!({}),
        })?;
        let span = trace.start(engine_telemetry::names::CNI_ADD);
        trace.attr(span, "cni.network", network.name.clone());
        let added = cni.add(network, &pod).await;
        if let Ok(a) = &added {
            trace.attr(span, "cni.ips", a.ips().join(","));
        }
        match trace.finish(span, added) {
            Ok(attachment) => keep(&attachment),
            Err(e) => {
                // the chain undid itself: nothing is left to DEL
                let _ = std::fs::remove_file(&path);
                Err(ApiError::internal(e.to_string()))
            }
        }
    }

    /// DEL of a sandbox from its CNI network, if it was attached (and not detached since).
    async fn cni_detach(&self, trace: &Trace, id: &str) -> Result<(), ApiError> {
        let Some(path) = self.attachment_path(id) else { return Ok(()) };
        let Ok(bytes) = std::fs::read(&path) else { return Ok(()) };
        let Ok(attachment) = serde_json::from_slice::<engine_network::cni::Attachment>(&bytes) else {
            let _ = std::fs::remove_file(&path);
            return Ok(());
        };
        // the network as it was attached, whatever the configuration directory says now
        let cni = self.cni_plugins();
        let span = trace.start(engine_telemetry::names::CNI_DEL);
        trace.attr(span, "cni.network", attachment.network.name.clone());
        trace.finish(span, cni.del(&attachment).await).map_err(|e| ApiError::internal(e.to_string()))?;
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    /// Where sandbox `id`'s CNI attachment is kept; `None` for what is no full container id
    /// (a caller's string never names a path).
    fn attachment_path(&self, id: &str) -> Option<std::path::PathBuf> {
        let full = id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        full.then(|| self.d.cfg.data_root.join(CNI_ATTACHMENTS).join(format!("{id}.json")))
    }

    /// DEL of every attachment whose sandbox is gone (removed through the Docker API, or lost
    /// with engined between its removal and the DEL): at engined's start, in a trace of its own.
    async fn collect_cni_attachments(&self) {
        let dir = self.d.cfg.data_root.join(CNI_ATTACHMENTS);
        let ids: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(str::to_string))
            .filter(|id| self.d.containers.find(id).is_err())
            .collect();
        for id in ids {
            let trace = Trace::background(self.d.sink.as_ref(), engine_telemetry::names::CNI_DEL);
            trace.attr(trace.root, "container.id", id.clone());
            let r = self.cni_detach(&trace, &id).await;
            if let Err(e) = &r {
                crate::log!(self.d.cfg, "warn", "the CNI attachment of gone sandbox {id}: {}", e.message);
            }
            trace.end(r.as_ref().err().map(|e| e.message.as_str()));
        }
    }

    /// The addresses CNI gave sandbox `id`, if it is attached.
    fn cni_ips(&self, id: &str) -> Option<Vec<String>> {
        let bytes = std::fs::read(self.attachment_path(id)?).ok()?;
        let a: engine_network::cni::Attachment = serde_json::from_slice(&bytes).ok()?;
        Some(a.ips())
    }

    /// Stops the pod's containers, then the sandbox; idempotent.
    async fn stop_pod_sandbox(&self, trace: &Trace, id: &str) -> Result<(), ApiError> {
        let sandbox = match self.find(id, "sandbox") {
            Ok(e) => e,
            Err(e) => {
                // a sandbox removed by other means: its network is still the pod's to give back
                if e.status == hyper::StatusCode::NOT_FOUND {
                    self.cni_detach(trace, id).await?;
                }
                return Err(e);
            }
        };
        let sid = sandbox.snapshot().id;
        for c in self.all("container").into_iter().filter(|c| labels(c).get(SANDBOX_ID) == Some(&sid)) {
            if let Ok(e) = self.d.containers.find(&c.id) {
                if e.snapshot().state.running() {
                    self.d.stop(trace, &e, Some(0)).await?;
                }
            }
        }
        // its network first, while its namespace is there
        self.cni_detach(trace, &sid).await?;
        if sandbox.snapshot().state.running() {
            self.d.stop(trace, &sandbox, Some(0)).await?;
        }
        Ok(())
    }

    async fn remove_pod_sandbox(&self, trace: &Trace, id: &str) -> Result<(), ApiError> {
        let sandbox = match self.find(id, "sandbox") {
            Ok(e) => e,
            // already removed: not an error (the call is idempotent), its network given back
            Err(e) if e.status == hyper::StatusCode::NOT_FOUND => return self.cni_detach(trace, id).await,
            Err(e) => return Err(e),
        };
        self.stop_pod_sandbox(trace, id).await?;
        let sid = sandbox.snapshot().id;
        for c in self.all("container").into_iter().filter(|c| labels(c).get(SANDBOX_ID) == Some(&sid)) {
            if let Ok(e) = self.d.containers.find(&c.id) {
                self.d.remove(&e, true, true).await?;
            }
        }
        self.d.remove(&sandbox, true, true).await
    }

    fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatusResponse, ApiError> {
        let rec = self.find(id, "sandbox")?.snapshot();
        let l = labels(&rec);
        let mut ips = self.cni_ips(&rec.id).unwrap_or_else(|| {
            let eth0 = self.d.networks.endpoints_of(&rec.id).into_iter().find(|(_, ep)| ep.ifname == "eth0");
            eth0.map(|(_, ep)| vec![ep.ip.to_string()]).unwrap_or_default()
        });
        let ip = if ips.is_empty() { String::new() } else { ips.remove(0) };
        let additional_ips = ips.into_iter().map(|ip| cri::PodIp { ip }).collect();
        let host_network = rec.host_config.network_mode == "host";
        let mode = if host_network { cri::NamespaceMode::Node } else { cri::NamespaceMode::Pod } as i32;
        let status = cri::PodSandboxStatus {
            id: rec.id.clone(),
            metadata: Some(sandbox_metadata(&l)),
            state: sandbox_state(&rec),
            created_at: nanos(&rec.created),
            network: Some(cri::PodSandboxNetworkStatus { ip, additional_ips }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(cri::NamespaceOption {
                        network: mode,
                        pid: if rec.host_config.pid_mode == "host" {
                            cri::NamespaceMode::Node
                        } else {
                            cri::NamespaceMode::Pod
                        } as i32,
                        ipc: if rec.host_config.ipc_mode == "host" {
                            cri::NamespaceMode::Node
                        } else {
                            cri::NamespaceMode::Pod
                        } as i32,
                        ..Default::default()
                    }),
                }),
            }),
            labels: user_labels(&l),
            annotations: annotations(&l),
            runtime_handler: String::new(),
        };
        Ok(cri::PodSandboxStatusResponse { status: Some(status), ..Default::default() })
    }

    fn list_pod_sandbox(&self, filter: Option<cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        let f = filter.unwrap_or_default();
        self.all("sandbox")
            .into_iter()
            .filter(|r| f.id.is_empty() || r.id.starts_with(&f.id))
            .filter(|r| f.state.as_ref().is_none_or(|s| s.state == sandbox_state(r)))
            .filter(|r| selected(&f.label_selector, &labels(r)))
            .map(|r| {
                let l = labels(&r);
                cri::PodSandbox {
                    id: r.id.clone(),
                    metadata: Some(sandbox_metadata(&l)),
                    state: sandbox_state(&r),
                    created_at: nanos(&r.created),
                    labels: user_labels(&l),
                    annotations: annotations(&l),
                    runtime_handler: String::new(),
                }
            })
            .collect()
    }

    async fn create_container(&self, trace: &Trace, req: cri::CreateContainerRequest) -> Result<String, ApiError> {
        let sandbox = self.find(&req.pod_sandbox_id, "sandbox")?.snapshot();
        let config = req.config.ok_or_else(|| ApiError::bad_request("CreateContainer without a config"))?;
        let meta = config.metadata.clone().ok_or_else(|| ApiError::bad_request("a container without metadata"))?;
        if meta.name.is_empty() {
            return Err(ApiError::bad_request("a container needs a name"));
        }
        let image = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        if image.is_empty() {
            return Err(ApiError::bad_request("a container needs an image"));
        }
        let pod = sandbox_metadata(&labels(&sandbox));
        trace.attr(trace.root, "k8s.pod.name", pod.name.clone());
        trace.attr(trace.root, "k8s.namespace.name", pod.namespace.clone());
        trace.attr(trace.root, "k8s.pod.uid", pod.uid.clone());
        trace.attr(trace.root, "k8s.container.name", meta.name.clone());
        let mut l: BTreeMap<String, String> = config.labels.clone().into_iter().collect();
        l.extend(config.annotations.iter().map(|(k, v)| (format!("{ANNOTATION}{k}"), v.clone())));
        l.insert(KIND_LABEL.into(), "container".into());
        l.insert(SANDBOX_ID.into(), sandbox.id.clone());
        l.insert(CONTAINER_NAME.into(), meta.name.clone());
        l.insert(POD_NAME.into(), pod.name.clone());
        l.insert(POD_NAMESPACE.into(), pod.namespace.clone());
        l.insert(POD_UID.into(), pod.uid.clone());
        l.insert(ATTEMPT.into(), meta.attempt.to_string());
        if let (Some(dir), false) = (labels(&sandbox).get(LOG_DIRECTORY), config.log_path.is_empty()) {
            let path = std::path::Path::new(dir).join(&config.log_path);
            if config.log_path.split('/').any(|p| p == "..") || path.is_relative() {
                return Err(ApiError::bad_request(format!("invalid log path {:?}", config.log_path)));
            }
            l.insert(LOG_PATH.into(), path.display().to_string());
        }
        let linux = config.linux.clone().unwrap_or_default();
        let security = linux.security_context.clone().unwrap_or_default();
        let resources = linux.resources.clone().unwrap_or_default();
        if security.run_as_group.is_some() && security.run_as_user.is_none() && security.run_as_username.is_empty() {
            return Err(ApiError::bad_request("run_as_group is set without run_as_user or run_as_username"));
        }
        let user = match (&security.run_as_user, &security.run_as_group) {
            (Some(u), Some(g)) => format!("{}:{}", u.value, g.value),
            (Some(u), None) => u.value.to_string(),
            (None, _) if !security.run_as_username.is_empty() => security.run_as_username.clone(),
            _ => String::new(),
        };
        let mut binds = Vec::new();
        for m in &config.mounts {
            if m.host_path.is_empty() || m.container_path.is_empty() {
                return Err(ApiError::bad_request("a mount needs a host path and a container path"));
            }
            let mut mode = vec![if m.readonly { "ro" } else { "rw" }];
            match cri::MountPropagation::try_from(m.propagation) {
                Ok(cri::MountPropagation::PropagationHostToContainer) => mode.push("rslave"),
                Ok(cri::MountPropagation::PropagationBidirectional) => mode.push("rshared"),
                _ => {}
            }
            binds.push(format!("{}:{}:{}", m.host_path, m.container_path, mode.join(",")));
        }
        let caps = security.capabilities.clone().unwrap_or_default();
        let ns = security.namespace_options.clone().unwrap_or_default();
        let host_network = sandbox.host_config.network_mode == "host";
        // the CRI's default is no seccomp filter (the kubelet asks for RuntimeDefault)
        let seccomp = security.seccomp.as_ref().map(|p| p.profile_type);
        let mut security_opt = Vec::new();
        match seccomp {
            Some(t) if t == cri::security_profile::ProfileType::RuntimeDefault as i32 => {}
            Some(t) if t == cri::security_profile::ProfileType::Localhost as i32 => {
                // a profile on this node, by its absolute path
                let path = security.seccomp.as_ref().map(|p| p.localhost_ref.clone()).unwrap_or_default();
                let profile = tokio::fs::read_to_string(&path)
                    .await
                    .map_err(|e| ApiError::bad_request(format!("the seccomp profile {path:?}: {e}")))?;
                security_opt.push(format!("seccomp={profile}"));
            }
            _ => security_opt.push("seccomp=unconfined".to_string()),
        }
        if security.no_new_privs {
            security_opt.push("no-new-privileges".to_string());
        }
        let pod_sysctls = labels(&sandbox).get(SYSCTLS).cloned().unwrap_or_default();
        let sysctls: BTreeMap<String, String> = serde_json::from_str::<BTreeMap<String, String>>(&pod_sysctls)
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("net."))
            .collect();
        let mut host_config = HostConfig {
            network_mode: format!("container:{}", sandbox.id),
            // the pod's host name (its UTS namespace is the container's own, named alike), or
            // the host's with the host's network
            uts_mode: if host_network { "host".into() } else { String::new() },
            // the pod's PID and IPC namespaces are the sandbox's (PID only when asked, as the
            // kubelet's shareProcessNamespace), or the host's
            pid_mode: namespace_mode(ns.pid, &sandbox),
            ipc_mode: namespace_mode(ns.ipc, &sandbox),
            group_add: Some(security.supplemental_groups.iter().map(|g| g.to_string()).collect())
                .filter(|g: &Vec<String>| !g.is_empty()),
            sysctls: Some(sysctls).filter(|s| !s.is_empty()),
            privileged: security.privileged,
            readonly_rootfs: security.readonly_rootfs,
            binds: (!binds.is_empty()).then_some(binds),
            cap_add: (!caps.add_capabilities.is_empty()).then_some(caps.add_capabilities),
            cap_drop: (!caps.drop_capabilities.is_empty()).then_some(caps.drop_capabilities),
            security_opt: Some(security_opt).filter(|o| !o.is_empty()),
            // the kubelet sends the lists to use (the defaults, or none for an unmasked /proc)
            masked_paths: (!security.masked_paths.is_empty()).then(|| security.masked_paths.clone()),
            readonly_paths: (!security.readonly_paths.is_empty()).then(|| security.readonly_paths.clone()),
            cgroup_parent: sandbox.host_config.cgroup_parent.clone(),
            devices: Some(
                config
                    .devices
                    .iter()
                    .map(|d| engine_docker_api::DeviceMapping {
                        path_on_host: d.host_path.clone(),
                        path_in_container: d.container_path.clone(),
                        cgroup_permissions: d.permissions.clone(),
                    })
                    .collect(),
            )
            .filter(|d: &Vec<_>| !d.is_empty()),
            ..Default::default()
        };
        host_config.resources.memory = resources.memory_limit_in_bytes;
        host_config.resources.memory_swap =
            swap_limit(resources.memory_limit_in_bytes, resources.memory_swap_limit_in_bytes);
        host_config.resources.cpu_shares = resources.cpu_shares;
        host_config.resources.cpu_quota = resources.cpu_quota;
        host_config.resources.cpu_period = resources.cpu_period;
        host_config.oom_score_adj = resources.oom_score_adj;
        let body = ContainerCreateBody {
            config: ContainerConfig {
                image,
                entrypoint: (!config.command.is_empty()).then_some(config.command.clone()),
                cmd: (!config.args.is_empty()).then_some(config.args.clone()),
                env: Some(
                    config.envs.iter().map(|kv| format!("{}={}", kv.key, String::from_utf8_lossy(&kv.value))).collect(),
                ),
                working_dir: config.working_dir.clone(),
                hostname: if host_network { String::new() } else { sandbox.config.hostname.clone() },
                user,
                tty: config.tty,
                open_stdin: config.stdin,
                stdin_once: config.stdin_once,
                labels: Some(l),
                ..Default::default()
            },
            host_config: Some(host_config),
            networking_config: None,
        };
        let name = docker_name(&meta.name, &pod, meta.attempt);
        self.d.create(trace, Some(name), body).await
    }

    fn container_of(&self, rec: &ContainerRecord) -> cri::Container {
        let l = labels(rec);
        cri::Container {
            id: rec.id.clone(),
            pod_sandbox_id: l.get(SANDBOX_ID).cloned().unwrap_or_default(),
            metadata: Some(cri::ContainerMetadata {
                name: l.get(CONTAINER_NAME).cloned().unwrap_or_default(),
                attempt: l.get(ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(0),
            }),
            image: Some(cri::ImageSpec { image: rec.image.clone(), ..Default::default() }),
            image_ref: rec.image_id.to_string(),
            state: container_state(rec),
            created_at: nanos(&rec.created),
            labels: user_labels(&l),
            annotations: annotations(&l),
            image_id: rec.image_id.to_string(),
        }
    }

    fn container_status(&self, id: &str) -> Result<cri::ContainerStatusResponse, ApiError> {
        let rec = self.find(id, "container")?.snapshot();
        let c = self.container_of(&rec);
        let exited = rec.state.exited();
        let reason = match () {
            _ if !exited => String::new(),
            _ if rec.state.oom_killed() => "OOMKilled".into(),
            _ if rec.state.exit_code() == 0 => "Completed".into(),
            _ => "Error".into(),
        };
        let status = cri::ContainerStatus {
            id: c.id,
            metadata: c.metadata,
            state: c.state,
            created_at: c.created_at,
            started_at: nanos(rec.state.started_at()),
            finished_at: if exited { nanos(rec.state.finished_at()) } else { 0 },
            exit_code: rec.state.exit_code() as i32,
            image: c.image,
            image_ref: c.image_ref,
            reason,
            message: rec.state.error().to_string(),
            labels: c.labels,
            annotations: c.annotations,
            mounts: rec
                .host_config
                .binds
                .iter()
                .flatten()
                .filter_map(|b| {
                    let mut parts = b.split(':');
                    let (host, ctr) = (parts.next()?, parts.next()?);
                    let mode: Vec<&str> = parts.next().unwrap_or("").split(',').collect();
                    let propagation = if mode.contains(&"rshared") {
                        cri::MountPropagation::PropagationBidirectional
                    } else if mode.contains(&"rslave") {
                        cri::MountPropagation::PropagationHostToContainer
                    } else {
                        cri::MountPropagation::PropagationPrivate
                    };
                    Some(cri::Mount {
                        host_path: host.into(),
                        container_path: ctr.into(),
                        readonly: mode.contains(&"ro"),
                        propagation: propagation as i32,
                        ..Default::default()
                    })
                })
                .collect(),
            log_path: labels(&rec).get(LOG_PATH).cloned().unwrap_or_default(),
            image_id: c.image_id,
            ..Default::default()
        };
        Ok(cri::ContainerStatusResponse { status: Some(status), ..Default::default() })
    }

    fn list_containers(&self, filter: Option<cri::ContainerFilter>) -> Vec<cri::Container> {
        let f = filter.unwrap_or_default();
        self.all("container")
            .into_iter()
            .filter(|r| f.id.is_empty() || r.id.starts_with(&f.id))
            .filter(|r| {
                f.pod_sandbox_id.is_empty()
                    || labels(r).get(SANDBOX_ID).is_some_and(|s| s.starts_with(&f.pod_sandbox_id))
            })
            .filter(|r| f.state.as_ref().is_none_or(|s| s.state == container_state(r)))
            .filter(|r| selected(&f.label_selector, &labels(r)))
            .map(|r| self.container_of(&r))
            .collect()
    }

    async fn exec_sync(&self, req: cri::ExecSyncRequest) -> Result<cri::ExecSyncResponse, ApiError> {
        let e = self.find(&req.container_id, "container")?;
        if req.cmd.is_empty() {
            return Err(ApiError::bad_request("ExecSync without a command"));
        }
        // a timeout of 0: none (a day stands for it)
        let timeout =
            if req.timeout > 0 { Duration::from_secs(req.timeout as u64) } else { Duration::from_secs(86400) };
        let out = self.d.execs.run_captured(&e, "execsync", req.cmd, timeout).await?;
        Ok(cri::ExecSyncResponse { stdout: out.stdout, stderr: out.stderr, exit_code: out.exit_code })
    }

    /// Writes the container's output, from its start to its exit, to its log `file` (at
    /// `path`) in the CRI's log format (`<RFC 3339 time> <stream> <F|P> <line>`, P for a line
    /// cut short), as the kubelet and crictl read it; ReopenContainerLog makes it open `path`
    /// again. The shim's own log stays what `docker logs` reads.
    fn write_log(&self, id: String, mut file: tokio::fs::File, path: std::path::PathBuf) {
        use tokio::io::AsyncWriteExt;
        let (lifecycle, cfg, writers) = (self.d.lifecycle.clone(), self.d.cfg.clone(), self.logs.clone());
        let (tx, mut reopen) = tokio::sync::mpsc::channel(1);
        self.log_writers().insert(id.clone(), tx);
        tokio::spawn(async move {
            let logs = lifecycle.logs(engine_api::v1::LogsRequest { container_id: id.clone(), follow: true, tail: 0 });
            match logs.await {
                Err(e) => crate::log!(cfg, "warn", "the CRI log of {id}: {}", e.message()),
                Ok(mut stream) => loop {
                    tokio::select! {
                        entry = stream.message() => {
                            let Ok(Some(entry)) = entry else { break };
                            let t = engine_util::time::rfc3339_from_unix_nanos(entry.time_unix_nanos);
                            let (line, tag) = match entry.line.strip_suffix(b"\n") {
                                Some(full) => (full, "F"),
                                None => (&entry.line[..], "P"),
                            };
                            let mut out = format!("{t} {} {tag} ", entry.stream).into_bytes();
                            out.extend_from_slice(line);
                            out.push(b'\n');
                            if file.write_all(&out).await.is_err() {
                                break;
                            }
                        }
                        Some(ack) = reopen.recv() => {
                            let _ = file.flush().await;
                            let opened = open_log(&path).await.map(|f| file = f);
                            let _ = ack.send(opened);
                        }
                    }
                },
            }
            writers.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        });
    }

    async fn reopen_log(&self, id: &str) -> Result<(), ApiError> {
        let e = self.find(id, "container")?;
        let rec = e.snapshot();
        if !rec.state.running() {
            return Err(ApiError::conflict(format!("container {id} is not running")));
        }
        let writer = self.log_writers().get(&rec.id).cloned();
        let writer = writer.ok_or_else(|| ApiError::conflict(format!("container {id} has no log path")))?;
        let (ack, answer) = tokio::sync::oneshot::channel();
        writer.send(ack).await.map_err(|_| ApiError::conflict(format!("container {id} has ended")))?;
        answer.await.map_err(|_| ApiError::conflict(format!("container {id} has ended")))?
    }

    /// A container's CPU, memory and writable layer now (from its cgroup, through lifecycled;
    /// a container that is not running has only its writable layer).
    async fn stats_of(&self, rec: &ContainerRecord) -> cri::ContainerStats {
        let now = engine_util::time::unix_nanos(std::time::SystemTime::now());
        let raw: serde_json::Value = match rec.state.running() {
            true => match self.d.lifecycle.stats(crate::lifecycle::task(&rec.id)).await {
                Ok(s) => serde_json::from_str(&s.stats_json).unwrap_or_default(),
                Err(_) => serde_json::Value::Null,
            },
            false => serde_json::Value::Null,
        };
        let data = &raw["data"];
        let value = |v: &serde_json::Value| v.as_u64().map(|value| cri::UInt64Value { value });
        let c = self.container_of(rec);
        let upper = rec.upper.clone();
        let used = tokio::task::spawn_blocking(move || engine_util::fs::dir_size(&upper)).await.unwrap_or(0);
        cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: c.id,
                metadata: c.metadata,
                labels: c.labels,
                annotations: c.annotations,
            }),
            cpu: Some(cri::CpuUsage {
                timestamp: now,
                usage_core_nano_seconds: value(&data["cpu"]["usage"]["total"]),
                ..Default::default()
            }),
            memory: Some(cri::MemoryUsage {
                timestamp: now,
                working_set_bytes: value(&data["memory"]["usage"]["usage"]),
                usage_bytes: value(&data["memory"]["usage"]["usage"]),
                ..Default::default()
            }),
            writable_layer: Some(cri::FilesystemUsage {
                timestamp: now,
                fs_id: Some(cri::FilesystemIdentifier { mountpoint: self.d.images.root().display().to_string() }),
                used_bytes: Some(cri::UInt64Value { value: used }),
                inodes_used: None,
            }),
            ..Default::default()
        }
    }

    /// The CRI's event of a daemon event about one of its objects, if it is one.
    fn container_event(&self, ev: &crate::events::Event) -> Option<cri::ContainerEventResponse> {
        use cri::ContainerEventType as T;
        if ev.kind != crate::events::Kind::Container {
            return None;
        }
        let attributes = &ev.actor.attributes;
        let kind = attributes.get(KIND_LABEL)?;
        let event_type = match ev.action.as_str() {
            "create" => T::ContainerCreatedEvent,
            "start" => T::ContainerStartedEvent,
            "die" => T::ContainerStoppedEvent,
            "destroy" => T::ContainerDeletedEvent,
            _ => return None,
        };
        let sandbox = if kind == "sandbox" { ev.actor.id.clone() } else { attributes.get(SANDBOX_ID).cloned()? };
        let containers_statuses = self
            .all("container")
            .iter()
            .filter(|r| labels(r).get(SANDBOX_ID) == Some(&sandbox))
            .filter_map(|r| self.container_status(&r.id).ok()?.status)
            .collect();
        Some(cri::ContainerEventResponse {
            container_id: ev.actor.id.clone(),
            container_event_type: event_type as i32,
            created_at: ev.time_nano,
            pod_sandbox_status: self.pod_sandbox_status(&sandbox).ok().and_then(|s| s.status),
            containers_statuses,
        })
    }

    /// UpdateContainerResources: the limits of a container, running or not, through the path
    /// of `docker update` (the next start keeps them). A zero leaves a limit as it is.
    async fn update_resources(&self, req: cri::UpdateContainerResourcesRequest) -> Result<(), ApiError> {
        let e = self.find(&req.container_id, "container")?;
        let Some(r) = req.linux else { return Ok(()) };
        let mut u = engine_docker_api::UpdateConfig::default();
        u.resources.cpuset_cpus = r.cpuset_cpus;
        u.resources.cpuset_mems = r.cpuset_mems;
        u.resources.memory = r.memory_limit_in_bytes;
        u.resources.memory_swap = swap_limit(r.memory_limit_in_bytes, r.memory_swap_limit_in_bytes);
        u.resources.cpu_shares = r.cpu_shares;
        u.resources.cpu_period = r.cpu_period;
        u.resources.cpu_quota = r.cpu_quota;
        self.d.update(&e, u).await
    }

    /// A pod's stats: its containers' (running ones), their sums, the processes of them all,
    /// and the traffic of the pod's interfaces (read in its network namespace).
    async fn pod_stats(&self, sandbox: &ContainerRecord) -> cri::PodSandboxStats {
        let now = engine_util::time::unix_nanos(std::time::SystemTime::now());
        let l = labels(sandbox);
        let members: Vec<ContainerRecord> = self
            .all("container")
            .into_iter()
            .filter(|r| r.state.running() && labels(r).get(SANDBOX_ID) == Some(&sandbox.id))
            .collect();
        let mut containers = Vec::new();
        let (mut cpu, mut memory, mut processes) = (0u64, 0u64, 0u64);
        for rec in members.iter().chain(std::iter::once(sandbox).filter(|s| s.state.running())) {
            if let Ok(p) = self.d.lifecycle.pids(crate::lifecycle::task(&rec.id)).await {
                processes += p.pids.len() as u64;
            }
            if rec.id == sandbox.id {
                // the sandbox's own usage counts to the pod's, not as a container
                let own = self.stats_of(rec).await;
                cpu += own.cpu.and_then(|c| c.usage_core_nano_seconds).map_or(0, |v| v.value);
                memory += own.memory.and_then(|m| m.working_set_bytes).map_or(0, |v| v.value);
                continue;
            }
            let st = self.stats_of(rec).await;
            cpu += st.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds.as_ref()).map_or(0, |v| v.value);
            memory += st.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref()).map_or(0, |v| v.value);
            containers.push(st);
        }
        let interfaces = match sandbox.state.running() {
            true => std::fs::read_to_string(format!("/proc/{}/net/dev", sandbox.state.pid()))
                .map(|t| interface_usage(&t))
                .unwrap_or_default(),
            false => Vec::new(),
        };
        let value = |value: u64| Some(cri::UInt64Value { value });
        cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: sandbox.id.clone(),
                metadata: Some(sandbox_metadata(&l)),
                labels: user_labels(&l),
                annotations: annotations(&l),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cri::CpuUsage { timestamp: now, usage_core_nano_seconds: value(cpu), ..Default::default() }),
                memory: Some(cri::MemoryUsage {
                    timestamp: now,
                    working_set_bytes: value(memory),
                    usage_bytes: value(memory),
                    ..Default::default()
                }),
                network: Some(cri::NetworkUsage {
                    timestamp: now,
                    default_interface: interfaces.iter().find(|i| i.name == "eth0").cloned(),
                    interfaces,
                }),
                process: Some(cri::ProcessUsage { timestamp: now, process_count: value(processes) }),
                containers,
                io: None,
            }),
            windows: None,
        }
    }

    fn image_of(&self, i: &engine_image::store::Image) -> cri::Image {
        let c = i.config.config.clone().unwrap_or_default();
        let user = c.user.clone().unwrap_or_default();
        let (uid, username) = match user.split(':').next().unwrap_or("").parse::<i64>() {
            Ok(n) => (Some(cri::Int64Value { value: n }), String::new()),
            Err(_) => (None, user.split(':').next().unwrap_or("").to_string()),
        };
        cri::Image {
            id: i.id().to_string(),
            repo_tags: i.names.iter().map(|n| n.to_string()).collect(),
            repo_digests: i.digests.iter().map(|n| n.to_string()).collect(),
            size: i.record.size(),
            uid,
            username,
            spec: Some(cri::ImageSpec { image: i.id().to_string(), ..Default::default() }),
            pinned: i.names.iter().any(|n| n.to_string() == self.d.cfg.cri_sandbox_image),
        }
    }

    async fn pull_image(&self, trace: &Arc<Trace>, req: cri::PullImageRequest) -> Result<String, ApiError> {
        let name = req.image.map(|i| i.image).unwrap_or_default();
        let mut reference = engine_image::reference::Reference::parse_name(&name)?;
        if reference.tag().is_none() && reference.digest().is_none() {
            reference = reference.with_tag("latest")?;
        }
        let creds = req
            .auth
            .filter(|a| {
                !a.username.is_empty()
                    || !a.auth.is_empty()
                    || !a.identity_token.is_empty()
                    || !a.registry_token.is_empty()
            })
            .map(|a| engine_registry::AuthConfig {
                username: a.username,
                password: a.password,
                auth: a.auth,
                serveraddress: a.server_address,
                identitytoken: a.identity_token,
                registrytoken: a.registry_token,
            });
        let span = trace.start(engine_telemetry::names::DAEMON_PULL);
        trace.attr(span, "oci.reference", reference.to_string());
        let previous = trace.enter(span);
        let platform = crate::distribution::host_platform();
        let r = async {
            let (repo, resolved) = self.d.distribution.resolve(trace, &reference, &platform, creds).await?;
            // the progress messages a Docker client would read: nobody reads them here
            let (out, mut rx) = tokio::sync::mpsc::channel(64);
            let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
            let pulled = self.d.distribution.pull(trace, &reference, repo, resolved, &out).await;
            drop(out);
            let _ = drain.await;
            pulled
        }
        .await;
        trace.enter(previous);
        let pulled = trace.finish(span, r.map_err(ApiError::from))?;
        self.d.events.publish(crate::events::Event::image("pull", &reference.familiar()));
        Ok(pulled.id.to_string())
    }
}

/// Calls not served yet: UNIMPLEMENTED, as a client expects of a runtime without them. (A
/// macro's methods are expanded after `async_trait` has rewritten the impl's own, so they are
/// written in its expanded form.)
macro_rules! unimplemented_calls {
    ($($name:ident($req:ty) -> $resp:ty;)*) => {
        $(
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                _: Request<$req>,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<$resp>, Status>> + Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async { Err(Status::unimplemented(concat!(stringify!($name), " is not served yet"))) })
            }
        )*
    };
}

type Stream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeService for Cri {
    type StreamPodSandboxesStream = Stream<cri::StreamPodSandboxesResponse>;
    type StreamContainersStream = Stream<cri::StreamContainersResponse>;
    type StreamContainerStatsStream = Stream<cri::StreamContainerStatsResponse>;
    type StreamPodSandboxStatsStream = Stream<cri::StreamPodSandboxStatsResponse>;
    type GetContainerEventsStream = Stream<cri::ContainerEventResponse>;
    type StreamPodSandboxMetricsStream = Stream<cri::StreamPodSandboxMetricsResponse>;

    async fn version(&self, req: Request<cri::VersionRequest>) -> Result<Response<cri::VersionResponse>, Status> {
        let t = self.trace(&req, RUNTIME_SERVICE, "Version");
        self.call(t, async {
            Ok(cri::VersionResponse {
                version: "0.1.0".into(),
                runtime_name: "engine".into(),
                runtime_version: env!("CARGO_PKG_VERSION").into(),
                runtime_api_version: "v1".into(),
            })
        })
        .await
    }

    async fn status(&self, req: Request<cri::StatusRequest>) -> Result<Response<cri::StatusResponse>, Status> {
        let t = self.trace(&req, RUNTIME_SERVICE, "Status");
        let lifecycled_up = *self.d.supervisor.pid.borrow() > 0;
        let info = if req.get_ref().verbose {
            let config = serde_json::json!({
                "podCIDR": *self.pod_cidr.lock().unwrap_or_else(|e| e.into_inner()),
                "cniConfDir": self.d.cfg.cni_conf_dir,
                "sandboxImage": self.d.cfg.cri_sandbox_image,
                "streamServer": self.streams.address(),
            });
            HashMap::from([("config".to_string(), config.to_string())])
        } else {
            HashMap::new()
        };
        self.call(t, async move {
            let condition = |kind: &str, up: bool, why: &str| cri::RuntimeCondition {
                r#type: kind.into(),
                status: up,
                reason: if up { String::new() } else { why.into() },
                message: String::new(),
            };
            Ok(cri::StatusResponse {
                status: Some(cri::RuntimeStatus {
                    conditions: vec![
                        condition("RuntimeReady", lifecycled_up, "LifecycledDown"),
                        condition("NetworkReady", true, ""),
                    ],
                }),
                info,
                ..Default::default()
            })
        })
        .await
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let t = self.trace(&req, RUNTIME_SERVICE, "RunPodSandbox");
        let (this, op) = (self.clone(), t.trace.clone());
        self.call(t, async move {
            let id = this.run_pod_sandbox(&op, req.into_inner()).await?;
            Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
        })
        .await
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let t = self.trace(&req, RUNTIME_SERVICE, "StopPodSandbox");
        let (this, op) = (self.clone(), t.trace.clone());
        self.call(t, async move {
            match this.stop_pod_sandbox(&op, &req.into_inner().pod_sandbox_id).await {
                // idempotent: a sandbox that is gone is stopped
                Err(e) if e.status == hyper::StatusCode::NOT_FOUND => Ok(cri::StopPodSandboxResponse {}),
                r => r.map(|()| cri::StopPodSandboxResponse {}),
            }
        })
        .await
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let t = self.trace(&req, RUNTIME_SERVICE, "RemovePodSandbox");
        let (this, op) = (self.clone(), t.trace.clone());
        self.call(t, async move {
            this.remove_pod_sandbox(&op, &req.into_inner().pod_sandbox_id).await?;
            Ok(cri::RemovePodSandboxResponse {})
        })
        .await
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let started = std::time::Instant::now();
        self.read(
            RUNTIME_SERVICE,
            "PodSandboxStatus",
            started,
            self.pod_sandbox_status(&req.into_inner().pod_sandbox_id),
        )
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let started = std::time::Instant::now();
        let items = self.list_pod_sandbox(req.into_inner().filter);
        self.read(RUNTIME_SERVICE, "ListPodSandbox", started, Ok(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let t = self.trace(&req, RUNTIME_SERVICE, "CreateContainer");
        let (this, op) = (self.clone(), t.trace.clone());
        self.call(t, async move {
            let id = this.create_container(&op, req.into_inner()).await?;
            Ok(cri::CreateContainerResponse { container_id: id })
        })
        .await
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let t = self.trace(&req, RUNTIME_SERVICE, "StartContainer");
        let (this, op) = (self.clone(), t.trace.clone());
        self.call(t, async move {
            let e = this.find(&req.into_inner().container_id, "container")?;
            let l = labels(&e.snapshot());
            op.attr(op.root, "k8s.pod.name", l.get(POD_NAME).cloned().unwrap_or_default());
            op.attr(op.root, "k8s.container.name", l.get(CONTAINER_NAME).cloned().unwrap_or_default());
            // the log file is there when the start returns (a reader opens it at once)
            let log = match l.get(LOG_PATH) {
                Some(path) => Some(open_log(std::path::Path::new(path)).await?),
                None => None,
            };
            this.d.start(&op, &e).await?;
            if let (Some(file), Some(path)) = (log, l.get(LOG_PATH)) {
                this.write_log(e.snapshot().id, file, path.into());
            }
            Ok(cri::StartContainerResponse {})
        })
        .await
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let t = self.trace(&req, RUNTIME_SERVICE, "StopContainer");
        let (this, op) = (self.clone(), t.trace.clone());
        self.call(t, async move {
            let r = req.into_inner();
            let e = match this.find(&r.container_id, "container") {
                Ok(e) => e,
                // idempotent: a container that is gone is stopped
                Err(e) if e.status == hyper::StatusCode::NOT_FOUND => return Ok(cri::StopContainerResponse {}),
                Err(e) => return Err(e),
            };
            if e.snapshot().state.running() {
                this.d.stop(&op, &e, Some(r.timeout)).await?;
            }
            Ok(cri::StopContainerResponse {})
        })
        .await
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let t = self.trace(&req, RUNTIME_SERVICE, "RemoveContainer");
        let this = self.clone();
        self.call(t, async move {
            match this.find(&req.into_inner().container_id, "container") {
                Ok(e) => this.d.remove(&e, true, true).await?,
                // idempotent: a container that is gone is removed
                Err(e) if e.status == hyper::StatusCode::NOT_FOUND => {}
                Err(e) => return Err(e),
            }
            Ok(cri::RemoveContainerResponse {})
        })
        .await
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let started = std::time::Instant::now();
        let containers = self.list_containers(req.into_inner().filter);
        self.read(RUNTIME_SERVICE, "ListContainers", started, Ok(cri::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let started = std::time::Instant::now();
        self.read(RUNTIME_SERVICE, "ContainerStatus", started, self.container_status(&req.into_inner().container_id))
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let started = std::time::Instant::now();
        let r = match self.find(&req.into_inner().container_id, "container") {
            Ok(e) => Ok(cri::ContainerStatsResponse { stats: Some(self.stats_of(&e.snapshot()).await) }),
            Err(e) => Err(e),
        };
        self.read(RUNTIME_SERVICE, "ContainerStats", started, r)
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let started = std::time::Instant::now();
        let f = req.into_inner().filter.unwrap_or_default();
        let filter = cri::ContainerFilter {
            id: f.id,
            pod_sandbox_id: f.pod_sandbox_id,
            label_selector: f.label_selector,
            state: Some(cri::ContainerStateValue { state: cri::ContainerState::ContainerRunning as i32 }),
        };
        let ids: Vec<String> = self.list_containers(Some(filter)).into_iter().map(|c| c.id).collect();
        let mut stats = Vec::new();
        for rec in self.all("container").into_iter().filter(|r| ids.contains(&r.id)) {
            stats.push(self.stats_of(&rec).await);
        }
        self.read(RUNTIME_SERVICE, "ListContainerStats", started, Ok(cri::ListContainerStatsResponse { stats }))
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let t = self.trace(&req, RUNTIME_SERVICE, "ReopenContainerLog");
        let this = self.clone();
        self.call(t, async move {
            this.reopen_log(&req.into_inner().container_id).await?;
            Ok(cri::ReopenContainerLogResponse {})
        })
        .await
    }

    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let t = self.trace(&req, RUNTIME_SERVICE, "ExecSync");
        let this = self.clone();
        self.call(t, async move { this.exec_sync(req.into_inner()).await }).await
    }

    /// The lifecycle events of the CRI's containers and sandboxes (the kubelet's evented
    /// PLEG), from the daemon's event stream, each with its pod's status and its containers'.
    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        use tokio::sync::broadcast::error::RecvError;
        let (_, mut events) = self.d.events.subscribe(None);
        let (tx, out) = tokio::sync::mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let ev = match events.recv().await {
                    Ok(ev) => ev,
                    // a slow reader skips; the kubelet relists anyway
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => break,
                };
                let Some(resp) = this.container_event(&ev) else { continue };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))))
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let t = self.trace(&req, RUNTIME_SERVICE, "UpdateContainerResources");
        let this = self.clone();
        self.call(t, async move {
            this.update_resources(req.into_inner()).await?;
            Ok(cri::UpdateContainerResourcesResponse {})
        })
        .await
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let started = std::time::Instant::now();
        let r = match self.find(&req.get_ref().pod_sandbox_id, "sandbox") {
            Ok(e) => Ok(cri::PodSandboxStatsResponse { stats: Some(self.pod_stats(&e.snapshot()).await) }),
            Err(e) => Err(e),
        };
        self.read(RUNTIME_SERVICE, "PodSandboxStats", started, r)
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let started = std::time::Instant::now();
        let f = req.into_inner().filter.unwrap_or_default();
        let mut stats = Vec::new();
        for rec in self.all("sandbox") {
            let l = labels(&rec);
            if (!f.id.is_empty() && !rec.id.starts_with(&f.id)) || !selected(&f.label_selector, &l) {
                continue;
            }
            stats.push(self.pod_stats(&rec).await);
        }
        self.read(RUNTIME_SERVICE, "ListPodSandboxStats", started, Ok(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn exec(&self, req: Request<cri::ExecRequest>) -> Result<Response<cri::ExecResponse>, Status> {
        let t = self.trace(&req, RUNTIME_SERVICE, "Exec");
        let r = req.into_inner();
        let wanted = engine_streaming::Wanted { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, tty: r.tty };
        let url = {
            let req = engine_streaming::Request::Exec { container_id: r.container_id.clone(), cmd: r.cmd, wanted };
            self.stream_url(&r.container_id, "container", req)
        };
        self.call(t, async move { url.map(|url| cri::ExecResponse { url }) }).await
    }

    async fn attach(&self, req: Request<cri::AttachRequest>) -> Result<Response<cri::AttachResponse>, Status> {
        let t = self.trace(&req, RUNTIME_SERVICE, "Attach");
        let r = req.into_inner();
        let wanted = engine_streaming::Wanted { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, tty: r.tty };
        let url = {
            let req = engine_streaming::Request::Attach { container_id: r.container_id.clone(), wanted };
            self.stream_url(&r.container_id, "container", req)
        };
        self.call(t, async move { url.map(|url| cri::AttachResponse { url }) }).await
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let t = self.trace(&req, RUNTIME_SERVICE, "PortForward");
        let r = req.into_inner();
        let url = {
            let req = engine_streaming::Request::PortForward { sandbox_id: r.pod_sandbox_id.clone() };
            self.stream_url(&r.pod_sandbox_id, "sandbox", req)
        };
        self.call(t, async move { url.map(|url| cri::PortForwardResponse { url }) }).await
    }

    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        let t = self.trace(&req, RUNTIME_SERVICE, "UpdateRuntimeConfig");
        let cidr = req.into_inner().runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr);
        let (pod_cidr, d) = (self.pod_cidr.clone(), self.d.clone());
        self.call(t, async move {
            let Some(cidr) = cidr else { return Ok(cri::UpdateRuntimeConfigResponse {}) };
            // one range per family, comma-separated (a dual-stack node)
            for range in cidr.split(',').filter(|r| !r.is_empty()) {
                let valid = range
                    .split_once('/')
                    .is_some_and(|(ip, len)| ip.parse::<std::net::IpAddr>().is_ok() && len.parse::<u8>().is_ok());
                if !valid {
                    return Err(ApiError::bad_request(format!("invalid pod CIDR {range:?}")));
                }
            }
            let mut kept = pod_cidr.lock().unwrap_or_else(|e| e.into_inner());
            if *kept != cidr {
                crate::log!(d.cfg, "info", "the kubelet set the node's pod CIDR: {cidr}");
                *kept = cidr;
            }
            Ok(cri::UpdateRuntimeConfigResponse {})
        })
        .await
    }

    async fn runtime_config(
        &self,
        req: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        let t = self.trace(&req, RUNTIME_SERVICE, "RuntimeConfig");
        // the kubelet takes its cgroup driver from here: engined writes cgroupfs paths
        self.call(t, async move {
            Ok(cri::RuntimeConfigResponse {
                linux: Some(cri::LinuxRuntimeConfiguration { cgroup_driver: cri::CgroupDriver::Cgroupfs as i32 }),
            })
        })
        .await
    }

    unimplemented_calls! {
        stream_pod_sandboxes(cri::StreamPodSandboxesRequest) -> Self::StreamPodSandboxesStream;
        stream_containers(cri::StreamContainersRequest) -> Self::StreamContainersStream;
        stream_container_stats(cri::StreamContainerStatsRequest) -> Self::StreamContainerStatsStream;
        stream_pod_sandbox_stats(cri::StreamPodSandboxStatsRequest) -> Self::StreamPodSandboxStatsStream;
        checkpoint_container(cri::CheckpointContainerRequest) -> cri::CheckpointContainerResponse;
        list_metric_descriptors(cri::ListMetricDescriptorsRequest) -> cri::ListMetricDescriptorsResponse;
        list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest) -> cri::ListPodSandboxMetricsResponse;
        stream_pod_sandbox_metrics(cri::StreamPodSandboxMetricsRequest) -> Self::StreamPodSandboxMetricsStream;
        update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest) -> cri::UpdatePodSandboxResourcesResponse;
    }
}

#[tonic::async_trait]
impl ImageService for Cri {
    type StreamImagesStream = Stream<cri::StreamImagesResponse>;

    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let started = std::time::Instant::now();
        let want = req.into_inner().filter.and_then(|f| f.image).map(|i| i.image).filter(|i| !i.is_empty());
        let images = self.d.images.list().map_err(|e| to_status(e.into()))?;
        let picked = match want {
            Some(name) => match self.d.images.resolve(&name) {
                Ok(one) => images.into_iter().filter(|i| i.id() == one.id()).collect(),
                Err(_) => Vec::new(),
            },
            None => images,
        };
        let images = picked.iter().map(|i| self.image_of(i)).collect();
        self.read(IMAGE_SERVICE, "ListImages", started, Ok(cri::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let started = std::time::Instant::now();
        let name = req.into_inner().image.map(|i| i.image).unwrap_or_default();
        // an image that is not here is no error: the answer has none
        let image = self.d.images.resolve(&name).ok().map(|i| self.image_of(&i));
        self.read(IMAGE_SERVICE, "ImageStatus", started, Ok(cri::ImageStatusResponse { image, info: HashMap::new() }))
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let t = self.trace(&req, IMAGE_SERVICE, "PullImage");
        let (this, op) = (self.clone(), t.trace.clone());
        self.call(t, async move {
            let image_ref = this.pull_image(&op, req.into_inner()).await?;
            Ok(cri::PullImageResponse { image_ref })
        })
        .await
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let t = self.trace(&req, IMAGE_SERVICE, "RemoveImage");
        let this = self.clone();
        self.call(t, async move {
            let name = req.into_inner().image.map(|i| i.image).unwrap_or_default();
            let images = this.d.images.clone();
            // removing an image that is not here is no error; one that is goes with every name
            // it has (as containerd's CRI removes all of an image's references: the kubelet's
            // image collection removes images by id), unless a container uses it
            if let Ok(image) = images.resolve(&name) {
                let id = image.id().to_string();
                tokio::task::spawn_blocking(move || images.remove(&id, true))
                    .await
                    .map_err(|e| ApiError::internal(e.to_string()))??;
                this.d.events.publish(crate::events::Event::image("delete", &name));
            }
            Ok(cri::RemoveImageResponse {})
        })
        .await
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let started = std::time::Instant::now();
        let root = self.d.images.root().to_path_buf();
        let (used, inodes) = tokio::task::spawn_blocking(move || (engine_util::fs::dir_size(&root), walk_count(&root)))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let usage = cri::FilesystemUsage {
            timestamp: engine_util::time::unix_nanos(std::time::SystemTime::now()),
            fs_id: Some(cri::FilesystemIdentifier { mountpoint: self.d.images.root().display().to_string() }),
            used_bytes: Some(cri::UInt64Value { value: used }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        };
        let answer = cri::ImageFsInfoResponse { image_filesystems: vec![usage], container_filesystems: Vec::new() };
        self.read(IMAGE_SERVICE, "ImageFsInfo", started, Ok(answer))
    }

    unimplemented_calls! {
        stream_images(cri::StreamImagesRequest) -> Self::StreamImagesStream;
    }
}

/// A container's CRI log file, made with its directory, opened to append.
async fn open_log(path: &std::path::Path) -> Result<tokio::fs::File, ApiError> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| ApiError::internal(format!("the log directory {}: {e}", dir.display())))?;
    }
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(|e| ApiError::internal(format!("the log file {}: {e}", path.display())))
}

/// Files and directories under `dir` (its inodes in use).
fn walk_count(dir: &std::path::Path) -> u64 {
    let mut n = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            n += 1;
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            }
        }
    }
    n
}

/// Serves both services on `listener` until the process ends.
pub fn serve(d: Arc<Daemon>, listener: tokio::net::UnixListener, streams: Arc<StreamServer>) {
    let cri = Cri::new(d, streams);
    let collector = cri.clone();
    tokio::spawn(async move { collector.collect_cni_attachments().await });
    tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(engine_cri::v1::runtime_service_server::RuntimeServiceServer::new(cri.clone()))
            .add_service(engine_cri::v1::image_service_server::ImageServiceServer::new(cri.clone()))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await;
        if let Err(e) = r {
            crate::log!(cri.d.cfg, "error", "the CRI server stopped: {e}");
        }
    });
}
