//! The daemon's state: the image store, container records (one JSON file each, written
//! atomically), the channel to lifecycled, and the container operations the API calls —
//! create (snapshot + spec + lifecycled container), start, stop, kill, wait, remove, restart,
//! with exit monitoring and restart policies.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engine_api::v1::*;
use engine_image::ImageStore;

use crate::config::Config;
use crate::events::{Event, Events};
use crate::hostconfig;
use crate::http::{ApiError, Query};
use crate::lifecycle::{task, Lifecycle};
use crate::log;
use crate::records::{ContainerStore, Loaded, NameReservation};
use crate::state::State;
use crate::supervisor::Supervisor;
use crate::trace::Trace;
use engine_docker_api::{ContainerConfig, ContainerCreateBody, HostConfig, UpdateConfig};

pub use crate::records::{ContainerRecord, Entry, Life};

pub struct Daemon {
    pub cfg: Arc<Config>,
    pub images: Arc<ImageStore>,
    pub distribution: Arc<crate::distribution::Distribution>,
    /// Every container's record, entry and name.
    pub containers: Arc<ContainerStore>,
    /// Named volumes.
    pub volumes: crate::volumes::VolumeStore,
    /// The one client of lifecycled: retries while it restarts, carries trace context.
    pub lifecycle: Lifecycle,
    pub supervisor: Supervisor,
    /// engined's own spans go here: into `traces`.
    pub sink: Option<engine_telemetry::Sink>,
    pub traces: Arc<crate::tracestore::TraceStore>,
    pub probes: crate::kernel::ProbeState,
    pub networks: Arc<engine_network::Networks>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub shutting_down: Arc<AtomicBool>,
    /// The daemon's labels (`--label`, "labels"; a SIGHUP replaces them).
    pub labels: std::sync::RwLock<Vec<String>>,
    pub execs: Arc<crate::exec::ExecService>,
    /// Container and network events for `GET /events`.
    pub events: Arc<Events>,
    /// The image routes' service (the same store, distribution and events).
    pub image_service: Arc<crate::images::ImageService>,
    /// The trace routes' service (the same trace store, sink, probes and containers).
    pub trace_service: Arc<crate::traces::TraceService>,
    /// Wires containers to networks (the same networks, containers, config, events and probes).
    pub network_service: Arc<crate::network::NetworkService>,
    /// Finds and collects what containers without a record left (one collection at a time).
    pub orphans: Arc<crate::orphans::OrphanService>,
    /// What `GET /metrics` reads (the same stores and handles).
    pub metrics_service: Arc<crate::metrics::MetricsService>,
    /// Runs the health checks of running containers that have one.
    pub health: Arc<crate::health::HealthService>,
    /// The classic builder's cache of steps.
    pub build_cache: Arc<crate::build::BuildCache>,
}

use engine_util::time::now_rfc3339_nanos as now;

/// Who a container is made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A user's (the Docker API's, the CRI's): it stays until they remove it.
    User,
    /// A build's step: it goes with its step, or at engined's next start if the build ended
    /// with the engined before.
    BuildStep,
}

impl Daemon {
    pub async fn open(
        cfg: Arc<Config>,
        supervisor: Supervisor,
        traces: (Arc<crate::tracestore::TraceStore>, engine_telemetry::Sink),
        probes: crate::kernel::ProbeState,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let (traces, sink) = traces;
        let images = Arc::new(ImageStore::open(cfg.data_root.join("image"))?.storage_driver(cfg.storage_driver));
        // build contexts and COPY --from snapshots a crash cut short (a build's own, never kept
        // past it)
        let _ = std::fs::remove_dir_all(cfg.data_root.join("build"));
        for s in images.snapshot_records().unwrap_or_default() {
            if s.key.starts_with(crate::build::FROM_SNAPSHOT_PREFIX) {
                let _ = images.remove_snapshot(&s.key);
            }
        }
        let distribution = Arc::new(crate::distribution::Distribution::new(
            images.clone(),
            cfg.registry(),
            cfg.max_concurrent_downloads,
            cfg.max_concurrent_uploads,
        ));
        let (containers, loaded) =
            ContainerStore::open(cfg.data_root.join("containers")).context("reading the container records")?;
        let networks = engine_network::Networks::open(
            engine_network::networks::Config {
                dir: cfg.data_root.join("network"),
                netns_dir: cfg.exec_root.join("netns"),
                bridge_name: cfg.bridge_name.clone(),
                bip: cfg.default_bridge_address()?,
                default_v6: cfg.default_bridge_v6()?,
                pools: cfg.address_pools()?,
                iptables: cfg.iptables,
                firewall: cfg.firewall_backend.clone(),
            },
            now(),
        )
        .await
        .context("setting up the networks")?;
        let containers = Arc::new(containers);
        let lifecycle = Lifecycle::new(&cfg.lifecycled_socket());
        let events = Arc::new(Events::default());
        let image_service = Arc::new(crate::images::ImageService {
            images: images.clone(),
            distribution: distribution.clone(),
            events: events.clone(),
        });
        let trace_service = Arc::new(crate::traces::TraceService {
            traces: traces.clone(),
            sink: Some(sink.clone()),
            probes: probes.clone(),
            containers: containers.clone(),
        });
        let networks = Arc::new(networks);
        let network_service = Arc::new(crate::network::NetworkService {
            networks: networks.clone(),
            containers: containers.clone(),
            cfg: cfg.clone(),
            events: events.clone(),
            probes: probes.clone(),
            dns: crate::network::DnsServers::new(metrics.clone(), Some(sink.clone())),
        });
        let shutting_down = Arc::new(AtomicBool::new(false));
        let orphans = Arc::new(crate::orphans::OrphanService {
            lifecycle: lifecycle.clone(),
            cfg: cfg.clone(),
            networks: networks.clone(),
            containers: containers.clone(),
            images: images.clone(),
            sink: Some(sink.clone()),
            shutting_down: shutting_down.clone(),
            collecting: Default::default(),
        });
        let metrics_service = Arc::new(crate::metrics::MetricsService {
            metrics: metrics.clone(),
            containers: containers.clone(),
            supervisor: supervisor.clone(),
            cfg: cfg.clone(),
            probes: probes.clone(),
            traces: traces.clone(),
            distribution: distribution.clone(),
            lifecycle: lifecycle.clone(),
        });
        let execs = crate::exec::ExecService::new(containers.clone(), lifecycle.clone());
        let health = Arc::new(crate::health::HealthService {
            containers: containers.clone(),
            lifecycle: lifecycle.clone(),
            execs: execs.clone(),
            events: events.clone(),
            sink: Some(sink.clone()),
            cfg: cfg.clone(),
        });
        let d = Arc::new(Daemon {
            labels: std::sync::RwLock::new(cfg.labels.clone()),
            health,
            metrics_service,
            orphans,
            network_service,
            trace_service,
            events,
            image_service,
            networks,
            metrics,
            execs,
            lifecycle,
            images,
            distribution,
            containers,
            volumes: crate::volumes::VolumeStore::new(cfg.data_root.join("volumes")),
            build_cache: Arc::new(crate::build::BuildCache::open(cfg.data_root.join("build-cache.json"))),
            supervisor,
            sink: Some(sink),
            traces,
            probes,
            shutting_down,
            cfg,
        });
        d.load_records(loaded).await?;
        Ok(d)
    }

    /// The directory of container `id` (its record, bundle and /etc files).
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers.dir(id)
    }

    /// Publishes a container event (Docker's shape) to `GET /events` listeners.
    pub fn event(&self, rec: &ContainerRecord, action: &str, extra: &[(&str, String)]) {
        let labels = rec.config.labels.clone().unwrap_or_default();
        self.events.publish(Event::container(&rec.id, &rec.name, &rec.image, &labels, action, extra));
    }

    /// Writes the entry's record as it is now (a failure is logged: the state in memory stays
    /// the truth, and the next write carries it).
    pub fn persist(&self, e: &Entry) {
        if let Err(err) = self.containers.persist(e) {
            log!(self.cfg, "error", "saving {err}");
        }
    }

    /// The `ns` namespace (`pid`, `ipc`) of the running container `mode` names
    /// (`container:<name|id>`), as a path under /proc; None for any other mode.
    fn joined(&self, mode: &str, ns: &str) -> Result<Option<PathBuf>, ApiError> {
        let Some(other) = mode.strip_prefix("container:") else { return Ok(None) };
        let rec = self.containers.find(other)?.snapshot();
        if !rec.state.running() || rec.state.pid() == 0 {
            return Err(ApiError::conflict(format!("cannot join the {ns} namespace of {other}: it is not running")));
        }
        Ok(Some(PathBuf::from(format!("/proc/{}/ns/{ns}", rec.state.pid()))))
    }

    // ---- create ------------------------------------------------------------------------------

    pub async fn create(
        self: &Arc<Self>,
        trace: &Trace,
        name: Option<String>,
        body: ContainerCreateBody,
    ) -> Result<String, ApiError> {
        self.create_as(trace, name, body, Origin::User).await
    }

    /// [`Self::create`] of a container made for `origin`.
    pub async fn create_as(
        self: &Arc<Self>,
        trace: &Trace,
        name: Option<String>,
        body: ContainerCreateBody,
        origin: Origin,
    ) -> Result<String, ApiError> {
        let span = trace.start(engine_telemetry::names::DAEMON_CREATE);
        let outer = trace.enter(span);
        let r = self.create_inner(trace, name, body, origin).await;
        trace.enter(outer);
        if let Ok(id) = &r {
            trace.attr(span, "container.id", id.clone());
            if let Ok(e) = self.containers.find(id) {
                let rec = e.snapshot();
                trace.attr(span, "container.name", rec.name.clone());
                trace.attr(span, "container.image.name", rec.image.clone());
            }
        }
        trace.finish(span, r.as_ref().map(|_| ()).map_err(|e| e.message.clone())).ok();
        r
    }

    async fn create_inner(
        self: &Arc<Self>,
        trace: &Trace,
        name: Option<String>,
        create: ContainerCreateBody,
        origin: Origin,
    ) -> Result<String, ApiError> {
        let ContainerCreateBody { config: body, host_config, networking_config } = create;
        let mut hc = host_config.unwrap_or_default();
        if body.image.is_empty() {
            return Err(ApiError::bad_request("config cannot be empty in order to create a container: no image given"));
        }
        self.resolve_volumes_from(&mut hc)?;
        let mounts = hostconfig::check(&hc)?;
        hostconfig::fill_defaults(&mut hc);
        // as dockerd shows it: the driver the container logs with, named
        let log_config = hc.log_config.get_or_insert_with(Default::default);
        if log_config.typ.is_empty() {
            log_config.typ = "json-file".into();
        }
        let networks =
            crate::network::plan(&self.network_service, &mut hc, networking_config.as_ref(), &body.mac_address)?;
        let given = match name.filter(|n| !n.is_empty()) {
            Some(n) => {
                let n = n.trim_start_matches('/').to_string();
                crate::records::check_name(&n)?;
                Some(n)
            }
            None => None,
        };
        let images = self.images.clone();
        let image_ref = body.image.clone();
        let image = tokio::task::spawn_blocking(move || images.resolve(&image_ref))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| match e {
                engine_image::ImageError::NotFound(_) => ApiError::not_found(format!("No such image: {}", body.image)),
                e => e.into(),
            })?;
        // The name is reserved, so two creates cannot both take it; given back if the create fails.
        let name = match given {
            Some(n) => self.containers.reserve(&n)?,
            None => self.containers.reserve_generated(),
        };
        let id = crate::http::new_id()?;
        let result = self.create_with_id(trace, &id, name, body, hc, mounts, image, networks, origin).await;
        if result.is_err() {
            self.undo_create(&id).await;
        }
        result.map(|_| id)
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_with_id(
        self: &Arc<Self>,
        trace: &Trace,
        id: &str,
        name: NameReservation<'_>,
        body: ContainerConfig,
        hc: HostConfig,
        mounts: Vec<hostconfig::MountSpec>,
        image: engine_image::Image,
        networks: Vec<crate::network::NetworkLink>,
        origin: Origin,
    ) -> Result<(), ApiError> {
        let dir = self.containers.make_dir(id)?;

        let span = trace.start(engine_telemetry::names::DAEMON_SNAPSHOT);
        let images = self.images.clone();
        let (key, image_id) = (id.to_string(), image.id().clone());
        let snap = tokio::task::spawn_blocking(move || images.prepare_snapshot(&key, &image_id))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let snap =
            trace.finish(span, snap.map_err(ApiError::from).map_err(|e| e.message)).map_err(ApiError::internal)?;

        // `--mount type=volume` without a source: an anonymous volume of its own; with labels
        // (VolumeOptions.Labels): the volume's when this mount makes it
        let mut mounts = mounts;
        let mut anonymous_volumes = Vec::new();
        let volume_labels = |target: &str| -> std::collections::BTreeMap<String, String> {
            hc.mounts
                .iter()
                .flatten()
                .find(|m| m.typ == "volume" && m.target == target)
                .and_then(|m| m.volume_options.as_ref()?.labels.clone())
                .unwrap_or_default()
        };
        for m in mounts.iter_mut() {
            let hostconfig::Source::Volume(name) = &m.source else { continue };
            let labels = volume_labels(&m.target);
            if name.is_empty() {
                let name = crate::http::new_id()?;
                let mut labels = labels;
                labels.insert("com.docker.volume.anonymous".into(), String::new());
                labels.insert("engine.container".into(), id.to_string());
                self.volumes.ensure(&name, labels)?;
                anonymous_volumes.push((name.clone(), m.target.clone()));
                m.source = hostconfig::Source::Volume(name);
            } else if !labels.is_empty() && self.volumes.get(name).is_none() {
                self.volumes.ensure(name, labels)?;
            }
        }
        // A named volume used for the first time (new, or empty) takes what the image has at its
        // path, as dockerd's copy-up (`nocopy` aside).
        for m in &mounts {
            if let hostconfig::Source::Volume(name) = &m.source {
                let fresh = self
                    .volumes
                    .get(name)
                    .is_none_or(|v| std::fs::read_dir(&v.mountpoint).map(|mut d| d.next().is_none()).unwrap_or(false));
                if fresh && !m.no_copy {
                    let volume = self.volumes.ensure(name, Default::default())?;
                    let (rootfs, path, data) = (snap.rootfs.clone(), m.target.clone(), volume.mountpoint.clone());
                    tokio::task::spawn_blocking(move || copy_up(&rootfs, &path, &data))
                        .await
                        .map_err(|e| ApiError::internal(e.to_string()))?
                        .map_err(|e| ApiError::internal(format!("filling volume {name}: {e}")))?;
                }
            }
        }
        // The Config's and the image's volumes no mount covers: an anonymous volume each, holding
        // what the image has at that path (dockerd's copy-up).
        let wanted: std::collections::BTreeSet<String> = body
            .volumes
            .iter()
            .flatten()
            .chain(image.config.config.as_ref().and_then(|c| c.volumes.as_ref()).into_iter().flatten())
            .map(|(path, _)| path.clone())
            .collect();
        for target in wanted {
            if !target.starts_with('/') || mounts.iter().any(|m| m.target == target) {
                continue;
            }
            let name = crate::http::new_id()?;
            let labels = [("com.docker.volume.anonymous", ""), ("engine.container", id)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let volume = self.volumes.ensure(&name, labels)?;
            let (rootfs, path, data) = (snap.rootfs.clone(), target.clone(), volume.mountpoint.clone());
            tokio::task::spawn_blocking(move || copy_up(&rootfs, &path, &data))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(|e| ApiError::internal(format!("filling the volume at {target}: {e}")))?;
            mounts.push(hostconfig::MountSpec {
                source: hostconfig::Source::Volume(name.clone()),
                target: target.clone(),
                read_only: false,
                no_copy: false,
                propagation: None,
                non_recursive: false,
            });
            anonymous_volumes.push((name, target));
        }

        let span = trace.start(engine_telemetry::names::DAEMON_SPEC);
        let hostname = if body.hostname.is_empty() { id[..12].to_string() } else { body.hostname.clone() };
        let run = engine_image::RunOptions {
            entrypoint: body.entrypoint.clone(),
            cmd: body.cmd.clone(),
            // legacy links' variables first: the container's own win
            env: crate::network::link_env(&self.network_service, &hc, &name.name)
                .into_iter()
                .chain(body.env.clone().unwrap_or_default())
                .collect(),
            workdir: Some(body.working_dir.clone()).filter(|w| !w.is_empty()),
            user: Some(body.user.clone()).filter(|u| !u.is_empty()),
            hostname: hostname.clone(),
            domainname: body.domainname.clone(),
            tty: body.tty,
            open_stdin: body.open_stdin,
            read_only: hc.readonly_rootfs,
            labels: body.labels.clone().unwrap_or_default(),
        };
        let (config, rootfs) = (image.config.clone(), snap.rootfs.clone());
        let built = tokio::task::spawn_blocking(move || engine_image::spec::build(&config, &run, &rootfs))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::bad_request(e.to_string()));
        let built = match built {
            Ok(b) => b,
            Err(e) => {
                return Err(trace.finish(span, Err::<(), _>(e.message)).map_err(ApiError::bad_request).unwrap_err())
            }
        };
        let resolvers = hostconfig::Resolvers {
            daemon_dns: &self.cfg.dns,
            embedded: networks.iter().any(|l| l.name != engine_network::networks::DEFAULT),
        };
        hostconfig::write_etc_files(&dir, &hostname, &hc, &resolvers)
            .map_err(|e| ApiError::internal(format!("writing /etc files: {e}")))?;
        let spec = {
            let volume_dir = |name: &str| -> Result<PathBuf, ApiError> {
                Ok(self.volumes.ensure(name, Default::default())?.mountpoint)
            };
            let init_bin = self.cfg.init_bin();
            let netns = match crate::network::mode(&hc) {
                crate::network::Mode::Host => None,
                crate::network::Mode::Container(other) => {
                    crate::network::joined_namespace(&self.network_service, &other)?
                }
                _ => Some(self.networks.sandbox_path(id)),
            };
            let pid_ns = self.joined(&hc.pid_mode, "pid")?;
            let ipc_ns = self.joined(&hc.ipc_mode, "ipc")?;
            let cgroup_parent = hostconfig::cgroup_parent(&hc, &self.cfg.cgroup_parent);
            let cx = hostconfig::Context {
                id,
                cgroup_parent: &cgroup_parent,
                container_dir: &dir,
                init_bin: &init_bin,
                mounts: &mounts,
                netns: netns.as_deref(),
                pid_ns: pid_ns.as_deref(),
                ipc_ns: ipc_ns.as_deref(),
                volume_dir: &volume_dir,
            };
            let mut spec = hostconfig::apply(built.spec, &hc, &cx)?;
            // the hook directories are the daemon's configuration: a bad file there is not the
            // request's fault
            let rules = crate::ocihooks::load(&self.cfg.hooks_dir).map_err(|e| ApiError::internal(e.to_string()))?;
            crate::ocihooks::inject(&mut spec, &rules);
            spec
        };
        let spec_json = serde_json::to_vec_pretty(&spec).map_err(|e| ApiError::internal(e.to_string()))?;
        engine_util::fs::write_atomic(&dir.join("config.json"), &spec_json)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        trace.finish(span, Ok::<(), String>(())).ok();

        let process = spec.process().as_ref().ok_or_else(|| ApiError::internal("spec without process"))?;
        let args = process.args().clone().unwrap_or_default();
        let mut config = body.clone();
        config.image = body.image.clone();
        config.hostname = hostname;
        // Config as dockerd keeps it: the caller's with the image's merged in, not the
        // process's environment and directory (what the runtime adds is not the container's)
        let image_run = image.config.config.clone().unwrap_or_default();
        crate::runconfig::merge_env(&mut config.env, &image_run.env);
        if config.user.is_empty() {
            config.user = image_run.user.clone().unwrap_or_default();
        }
        if config.working_dir.is_empty() {
            config.working_dir = image_run.working_dir.clone().unwrap_or_default();
        }
        config.entrypoint = built.entrypoint.clone();
        config.cmd = built.cmd.clone();
        config.labels = Some(built.labels.clone());
        if config.exposed_ports.is_none() && !built.exposed_ports.is_empty() {
            config.exposed_ports =
                Some(built.exposed_ports.iter().map(|p| (p.clone(), serde_json::json!({}))).collect());
        }
        if config.stop_signal.is_none() {
            config.stop_signal = image.config.config.as_ref().and_then(|c| c.stop_signal.clone());
        }
        let image_check = image
            .config
            .config
            .as_ref()
            .and_then(|c| c.other.get("Healthcheck"))
            .and_then(|h| serde_json::from_value(h.clone()).ok());
        config.healthcheck = crate::health::merge(config.healthcheck.take(), image_check);

        let mut labels = built.labels.clone();
        labels.insert("engine.name".into(), name.name.clone());
        let req = CreateContainerRequest {
            id: id.to_string(),
            bundle: dir.display().to_string(),
            labels: labels.into_iter().collect(),
        };
        self.lifecycle.create_container(req).await?;

        let record = ContainerRecord {
            id: id.to_string(),
            name: name.name.clone(),
            created: now(),
            path: args.first().cloned().unwrap_or_default(),
            args: args.iter().skip(1).cloned().collect(),
            config,
            host_config: hc,
            image: body.image.clone(),
            image_id: image.id().clone(),
            state: State::default(),
            restart_count: 0,
            manually_stopped: false,
            lower: image.record.layers.iter().map(|l| self.images.layer_path(&l.diff_id)).collect(),
            rootfs: snap.rootfs,
            upper: snap.upper,
            work: snap.work,
            networks,
            ports: Vec::new(),
            anonymous_volumes,
            build_step: origin == Origin::BuildStep,
        };
        let entry = self.containers.insert(record, name)?;
        self.event(&entry.snapshot(), "create", &[]);
        Ok(())
    }

    /// Removes the anonymous volumes made for container `id` (its `rm -v`, its `--rm`, or a
    /// create that failed).
    fn remove_anonymous_volumes(&self, id: &str) {
        for v in self.volumes.list() {
            if v.labels.get("engine.container").map(String::as_str) == Some(id) {
                // one another container took with --volumes-from stays while it is used
                let others: Vec<String> =
                    crate::volumes::users(&self.containers, &v.name).into_iter().filter(|u| u != id).collect();
                if let Err(err) = self.volumes.remove(&v.name, others) {
                    log!(self.cfg, "warn", "removing anonymous volume {} of {id}: {err}", v.name);
                }
            }
        }
    }

    /// `--volumes-from name[:ro|:rw]`: each named container's binds and volumes (its anonymous
    /// ones too) join this one's `Mounts` at the same paths (read-only or read-write as asked,
    /// else as each was), unless this one mounts something there itself; they then count as in
    /// use by it (an `rm -v` of the other leaves them).
    fn resolve_volumes_from(&self, hc: &mut HostConfig) -> Result<(), ApiError> {
        let Some(from) = hc.volumes_from.clone().filter(|f| !f.is_empty()) else { return Ok(()) };
        let mut taken: Vec<String> = hostconfig::mount_specs(hc)?.into_iter().map(|m| m.target).collect();
        let mut added = Vec::new();
        for spec in &from {
            let (name, mode) = match spec.rsplit_once(':') {
                Some((n, m)) if matches!(m, "ro" | "rw") => (n, Some(m)),
                Some((_, m)) => return Err(ApiError::bad_request(format!("invalid mode for volumes-from: {m}"))),
                None => (spec.as_str(), None),
            };
            // a 400, not a 404: the Docker CLI reads a 404 of a create as a missing image
            let other = self
                .containers
                .find(name)
                .map_err(|_| ApiError::bad_request(format!("No such container: {name}")))?
                .snapshot();
            let mut theirs = hostconfig::mount_specs(&other.host_config)?;
            theirs.extend(other.anonymous_volumes.iter().map(|(v, target)| hostconfig::MountSpec {
                source: hostconfig::Source::Volume(v.clone()),
                target: target.clone(),
                read_only: false,
                no_copy: true,
                propagation: None,
                non_recursive: false,
            }));
            for m in theirs {
                if taken.contains(&m.target) {
                    continue;
                }
                taken.push(m.target.clone());
                let read_only = match mode {
                    Some("ro") => true,
                    Some("rw") => false,
                    _ => m.read_only,
                };
                // the other's mount as it was made: its propagation, its nocopy
                let mount = match m.source {
                    hostconfig::Source::Host(p) => engine_docker_api::Mount {
                        typ: "bind".into(),
                        source: p.display().to_string(),
                        bind_options: (m.propagation.is_some() || m.non_recursive).then(|| {
                            engine_docker_api::BindOptions {
                                propagation: m.propagation.unwrap_or_default().to_string(),
                                non_recursive: m.non_recursive,
                                ..Default::default()
                            }
                        }),
                        ..Default::default()
                    },
                    hostconfig::Source::Volume(v) => engine_docker_api::Mount {
                        typ: "volume".into(),
                        source: v,
                        volume_options: m
                            .no_copy
                            .then(|| engine_docker_api::VolumeOptions { no_copy: true, ..Default::default() }),
                        ..Default::default()
                    },
                };
                added.push(engine_docker_api::Mount { target: m.target, read_only, ..mount });
            }
        }
        hc.mounts.get_or_insert_with(Vec::new).extend(added);
        Ok(())
    }

    /// Removes whatever a failed create made: lifecycled's container, the snapshot, the directory.
    async fn undo_create(&self, id: &str) {
        self.remove_anonymous_volumes(id);
        let _ = self.lifecycle.delete_container(ContainerId { id: id.to_string() }).await;
        let images = self.images.clone();
        let key = id.to_string();
        let _ = tokio::task::spawn_blocking(move || images.remove_snapshot(&key)).await;
        let _ = self.containers.remove(id);
    }

    // ---- start, monitor, restart ---------------------------------------------------------

    pub async fn start(self: &Arc<Self>, trace: &Trace, e: &Arc<Entry>) -> Result<(), ApiError> {
        let op = e.op.lock().await;
        let rec = e.snapshot();
        if rec.state.paused() {
            return Err(ApiError::conflict("cannot start a paused container, try unpause instead"));
        }
        if rec.state.running() {
            return Err(ApiError::not_modified());
        }
        if rec.state.removing() || e.life.borrow().removed {
            return Err(ApiError::conflict(format!(
                "container {} is marked for removal and cannot be started",
                rec.id
            )));
        }
        let span = trace.start(engine_telemetry::names::DAEMON_START);
        trace.attr(span, "container.id", rec.id.clone());
        trace.attr(span, "container.name", rec.name.clone());
        trace.attr(span, "container.image.name", rec.image.clone());
        let outer = trace.enter(span);
        let r = self.start_task(Some(trace), e).await;
        // As dockerd: an auto-remove container whose start failed is removed before the error
        // is answered (the Docker CLI waits for that removal with wait?condition=removed).
        if r.is_err() && rec.host_config.auto_remove {
            drop(op);
            if let Err(err) = self.remove(e, true, true).await {
                log!(self.cfg, "error", "auto-removing {} after its failed start: {}", rec.id, err.message);
            }
        }
        trace.enter(outer);
        trace.finish(span, r.as_ref().map(|_| ()).map_err(|e| e.message.clone())).ok();
        r
    }

    /// The task of a container as lifecycled knows it once it answers again (after a restart
    /// that cut a call short); none when it has no task or does not come back.
    async fn task_after_restart(&self, req: &TaskRequest) -> Option<TaskState> {
        until_answered(|| self.lifecycle.state(req.clone())).await.ok()
    }

    /// A start that lifecycled's (or the shim's) death cut short: started if its successor says
    /// the task ran; a task still waiting is started again, and a second start that fails
    /// because the first went through after all (its shim lives on) counts as started too. A
    /// task stopped without a process (its shim died before the start) never ran.
    async fn settle_unknown_start(
        &self,
        req: &TaskRequest,
        err: tonic::Status,
        pid: &mut u32,
    ) -> Result<(), tonic::Status> {
        let ran = |t: &TaskState| t.pid != 0 && matches!(t.status.as_str(), "running" | "paused" | "stopped");
        match self.task_after_restart(req).await {
            Some(t) if ran(&t) => {
                *pid = t.pid;
                Ok(())
            }
            Some(_) => match self.lifecycle.start_task(req.clone()).await {
                Ok(_) => Ok(()),
                Err(again) => match self.task_after_restart(req).await {
                    Some(t) if ran(&t) => {
                        *pid = t.pid;
                        Ok(())
                    }
                    _ => Err(again),
                },
            },
            None => Err(err),
        }
    }

    /// Records a start that failed (its reason and dockerd's exit code) and makes its answer:
    /// 400 when the program is missing or cannot be run (dockerd's invalid-config error), else 500.
    fn start_failed(&self, e: &Entry, msg: String) -> ApiError {
        let code = crate::state::start_failure_code(&msg);
        e.update(|r| r.state.start_failed(msg.clone(), code.unwrap_or(128)));
        self.persist(e);
        match code {
            Some(_) => ApiError::bad_request(msg),
            None => ApiError::internal(msg),
        }
    }

    async fn start_task(self: &Arc<Self>, trace: Option<&Trace>, e: &Arc<Entry>) -> Result<(), ApiError> {
        let rec = e.snapshot();
        let id = rec.id.clone();
        // After a reboot the overlay is gone: mount it again before the runtime needs it.
        let images = self.images.clone();
        let key = id.clone();
        tokio::task::spawn_blocking(move || images.mount_snapshot(&key))
            .await
            .map_err(|err| ApiError::internal(err.to_string()))??;
        let task_req = TaskRequest { container_id: id.clone(), exec_id: String::new() };
        // A task left from an earlier run (exited, not yet deleted) goes first; a container
        // that never ran has none, and its first start skips the round trip.
        if rec.state.status() != crate::state::Status::Created {
            self.delete_task_to_end(&id)
                .await
                .map_err(|s| ApiError::internal(format!("deleting the last task of {id}: {}", s.message())))?;
        }
        crate::network::up(&self.network_service, trace, e).await?;
        // checked at create: a record that does not parse gets the defaults
        let (log_max_size, log_max_files) =
            rec.host_config.log_config.as_ref().and_then(|lc| hostconfig::log_rotation(lc).ok()).unwrap_or((0, 0));
        let create = CreateTaskRequest {
            container_id: id.clone(),
            terminal: rec.config.tty,
            stdin: rec.config.open_stdin,
            log_max_size,
            log_max_files,
        };
        let mut created = self.lifecycle.create_task(create.clone()).await;
        if created.as_ref().is_err_and(|s| s.code() == tonic::Code::AlreadyExists) {
            // A task of an earlier start that a crash cut short: it is not this start's, it goes.
            let _ = self.lifecycle.delete_task(task_req.clone()).await;
            created = self.lifecycle.create_task(create).await;
        }
        let mut pid = match created {
            Ok(r) => r.pid,
            // lifecycled went away during the create: its successor knows whether it was made.
            Err(s) if outcome_unknown(&s) => match self.task_after_restart(&task_req).await {
                Some(t) => t.pid,
                None => {
                    crate::network::down(&self.network_service, e).await;
                    return Err(
                        self.start_failed(e, format!("failed to create task for container {id}: {}", s.message()))
                    );
                }
            },
            Err(s) => {
                crate::network::down(&self.network_service, e).await;
                return Err(self.start_failed(e, format!("failed to create task for container {id}: {}", s.message())));
            }
        };
        let start_sent = engine_telemetry::recorder::now_unix_nanos();
        let started = match self.lifecycle.start_task(task_req.clone()).await {
            Err(s) if outcome_unknown(&s) => self.settle_unknown_start(&task_req, s, &mut pid).await,
            r => r.map(|_| ()),
        };
        if let Err(s) = started {
            let _ = self.lifecycle.delete_task(task_req.clone()).await;
            crate::network::down(&self.network_service, e).await;
            return Err(self.start_failed(e, format!("failed to start container {id}: {}", s.message())));
        }
        e.update(|r| {
            r.state.start(pid, now());
            r.manually_stopped = false;
            if crate::health::check_of(&r.config).is_some() {
                r.state.health_starting();
            }
        });
        self.persist(e);
        let parent = hostconfig::cgroup_parent(&e.snapshot().host_config, &self.cfg.cgroup_parent);
        crate::kernel::container_started(&self.probes, &hostconfig::cgroups_path(&parent, &id));
        self.event(&e.snapshot(), "start", &[]);
        e.life.send_modify(|l| {
            l.running = true;
            l.started_unix_nanos = start_sent;
        });
        self.spawn_monitor(e.clone());
        Ok(())
    }

    /// Waits for the container's exit in the background, then records it and applies the
    /// auto-remove and restart policies.
    fn spawn_monitor(self: &Arc<Self>, e: Arc<Entry>) {
        self.health.watch(e.clone());
        let d = self.clone();
        tokio::spawn(async move {
            let id = e.snapshot().id;
            let req = TaskRequest { container_id: id.clone(), exec_id: String::new() };
            let exit = loop {
                match d.lifecycle.tasks().wait(req.clone()).await {
                    Ok(r) => break r.into_inner(),
                    Err(s) if s.code() == tonic::Code::NotFound => {
                        break ExitStatus {
                            exit_status: 255,
                            reason: "task lost: lifecycled no longer knows it".into(),
                            ..Default::default()
                        }
                    }
                    // lifecycled is restarting (or the call was cut): ask again
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            // the exit and what follows it (auto-removal, a restart policy) are one operation:
            // part of the trace of the client waiting on it (`run`), or a trace of its own, so
            // none of its calls to lifecycled starts a trace of its own
            let (trace, span, waiter) = match e.take_exit_waiter() {
                Some(w) => {
                    let trace = w.trace.clone();
                    // the container's own run, from its start to its exit
                    let exited = match exit.exited_unix_nanos {
                        t if t > 0 => t as u64,
                        _ => engine_telemetry::recorder::now_unix_nanos(),
                    };
                    let started = e.life.borrow().started_unix_nanos;
                    if started > 0 {
                        let run = trace.record(engine_telemetry::names::CONTAINER_RUN, trace.root, started, exited);
                        trace.attr(run, "container.id", id.clone());
                        trace.attr(run, "process.exit.code", exit.exit_status as i64);
                    }
                    // from the exit itself: its way back (shim, lifecycled, engined) is part of it
                    let span = trace.start_under_at(engine_telemetry::names::DAEMON_EXIT, trace.root, exited);
                    (trace, span, Some(w.done))
                }
                None => {
                    let trace = Arc::new(Trace::background(d.sink.as_ref(), engine_telemetry::names::DAEMON_EXIT));
                    let root = trace.root;
                    (trace, root, None)
                }
            };
            trace.attr(span, "container.id", id.clone());
            trace.attr(span, "process.exit.code", exit.exit_status as i64);
            let outer = trace.enter(span);
            trace
                .scope(async {
                    let _ = d.lifecycle.delete_task(req).await;
                    if let Some(removal) = d.record_exit(&e, exit).await {
                        let _ = removal.await;
                    }
                })
                .await;
            trace.enter(outer);
            match waiter {
                Some(done) => {
                    trace.finish(span, Ok::<(), String>(())).ok();
                    let _ = done.send(());
                }
                None => trace.end(None),
            }
        });
    }

    /// Records an exit and applies the policies; the auto-removal it starts, if any, to await.
    async fn record_exit(self: &Arc<Self>, e: &Arc<Entry>, exit: ExitStatus) -> Option<tokio::task::JoinHandle<()>> {
        if e.life.borrow().removed {
            // removed while lifecycled did not answer (`rm -f`): nothing is left to record
            return None;
        }
        // its network goes with its processes (a restart sets it up again)
        crate::network::down(&self.network_service, e).await;
        let oom = exit.reason == "OOMKilled";
        let error = if oom || exit.reason.is_empty() { String::new() } else { exit.reason.clone() };
        let shutting_down = self.shutting_down.load(Ordering::SeqCst);
        // The whole outcome (exited, or restarting after a delay) is settled before anyone
        // waiting on the container hears of the exit.
        let restart_in = e.update(|r| {
            r.state.exit(exit.exit_status as i64, oom, error.clone(), now());
            if shutting_down || r.host_config.auto_remove || !self.should_restart(r) {
                return None;
            }
            // Docker's backoff: 100 ms, doubling with each restart.
            let delay = Duration::from_millis(100u64.saturating_mul(1 << r.restart_count.min(9)));
            r.restart_count += 1;
            r.state.restart_pending();
            Some(delay)
        });
        self.persist(e);
        self.event(&e.snapshot(), "die", &[("exitCode", exit.exit_status.to_string())]);
        e.life.send_modify(|l| {
            l.running = false;
            l.exits += 1;
            l.exit_code = exit.exit_status as i64;
            l.error = error.clone();
        });
        if shutting_down {
            return None;
        }
        if e.snapshot().host_config.auto_remove {
            let d = self.clone();
            let e = e.clone();
            return Some(crate::trace::spawn_in_operation(async move {
                let trace = crate::trace::current();
                let span = trace.as_ref().map(|t| t.start(engine_telemetry::names::DAEMON_REMOVE));
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while e.attached.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let outer = trace.as_ref().zip(span).map(|(t, s)| t.enter(s));
                let removed = d.remove(&e, true, true).await;
                if let (Some(t), Some(s), Some(outer)) = (trace.as_ref(), span, outer) {
                    t.enter(outer);
                    let _ = t.finish(s, removed.as_ref().map_err(|e| e.message.clone()));
                }
                if let Err(err) = removed {
                    log!(d.cfg, "error", "auto-removing {}: {}", e.snapshot().id, err.message);
                }
            }));
        }
        if let Some(delay) = restart_in {
            let d = self.clone();
            let e = e.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _op = e.op.lock().await;
                let rec = e.snapshot();
                if !rec.state.restarting() || e.life.borrow().removed {
                    return; // stopped or removed meanwhile
                }
                if let Err(err) = d.policy_start(&e, engine_telemetry::names::DAEMON_POLICY_START).await {
                    log!(d.cfg, "warn", "restarting {}: {}", rec.id, err.message);
                    e.update(|r| r.state.cancel_restart());
                    d.persist(&e);
                    e.life.send_modify(|_| {});
                }
            });
        }
        None
    }

    /// A start a restart policy asks for (the caller holds the container's `op` lock), as a trace
    /// of its own rooted at `name`.
    async fn policy_start(self: &Arc<Self>, e: &Arc<Entry>, name: &str) -> Result<(), ApiError> {
        let trace = Arc::new(Trace::background(self.sink.as_ref(), name));
        trace.attr(trace.root, "container.id", e.snapshot().id);
        let r = trace.scope(self.start_task(Some(&trace), e)).await;
        trace.end(r.as_ref().err().map(|e| e.message.as_str()));
        r
    }

    fn should_restart(&self, rec: &ContainerRecord) -> bool {
        let p = &rec.host_config.restart_policy;
        if rec.manually_stopped {
            return false; // a user's stop or kill-by-stop is never undone by a policy
        }
        match p.name.as_str() {
            "always" => !rec.manually_stopped,
            "unless-stopped" => !rec.manually_stopped,
            "on-failure" => {
                rec.state.exit_code() != 0
                    && (p.maximum_retry_count == 0 || (rec.restart_count as i64) < p.maximum_retry_count)
            }
            _ => false,
        }
    }

    // ---- stop, kill, wait, remove -------------------------------------------------------

    pub async fn kill(&self, e: &Arc<Entry>, signal: u32) -> Result<(), ApiError> {
        let rec = e.snapshot();
        if !rec.state.running() {
            return Err(ApiError::conflict(format!(
                "Cannot kill container: {}: Container {} is not running",
                rec.name, rec.id
            )));
        }
        let req = KillRequest { container_id: rec.id.clone(), exec_id: String::new(), signal, all: false };
        let mut life = e.life.subscribe();
        self.lifecycle.kill(req).await?;
        self.event(&rec, "kill", &[("signal", signal.to_string())]);
        self.thaw_after_kill(e).await;
        if signal == libc::SIGKILL as u32 {
            // As dockerd: a SIGKILL is answered once the exit is recorded, so a `rm` right
            // after it does not find the container running. Bounded: a process in an
            // uninterruptible sleep may outlive it.
            let exited = life.wait_for(|l| !l.running);
            let _ = tokio::time::timeout(Duration::from_secs(10), exited).await;
        }
        Ok(())
    }

    /// As dockerd: a paused container is thawed after a signal is sent to it, so the signal is
    /// delivered (a frozen process does not even die of SIGKILL under the v1 freezer). A thaw
    /// that fails is logged: the process may have died of the signal already.
    ///
    /// The task's own status decides, not the record: a pause whose answer was lost (lifecycled
    /// restarting) leaves a frozen task the record may not know of.
    async fn thaw_after_kill(&self, e: &Entry) {
        let id = e.snapshot().id;
        let frozen = match self.lifecycle.state(task(&id)).await {
            Ok(s) => s.status == "paused",
            Err(_) => e.snapshot().state.paused(),
        };
        if !frozen {
            return;
        }
        match self.lifecycle.resume(task(&id)).await {
            Ok(_) => self.unpaused(e),
            Err(err) => log!(self.cfg, "warn", "thawing {id} after a signal: {}", err.message()),
        }
    }

    /// After a pause or resume that failed: the record follows what the task is (the call may
    /// have been done before its answer was lost).
    async fn reconcile_pause(&self, e: &Entry) {
        let id = e.snapshot().id;
        let Ok(s) = self.lifecycle.state(task(&id)).await else { return };
        let before = e.snapshot().state.paused();
        match s.status.as_str() {
            "paused" if !before => {
                e.update(|r| r.state.pause());
                self.persist(e);
                self.event(&e.snapshot(), "pause", &[]);
            }
            "running" if before => self.unpaused(e),
            _ => {}
        }
    }

    fn unpaused(&self, e: &Entry) {
        e.update(|r| r.state.unpause());
        self.persist(e);
        self.event(&e.snapshot(), "unpause", &[]);
    }

    /// Freezes every process of a running container (the cgroup freezer).
    pub async fn pause(&self, e: &Arc<Entry>) -> Result<(), ApiError> {
        let _op = e.op.lock().await;
        let rec = e.snapshot();
        if rec.state.restarting() {
            return Err(ApiError::conflict(format!(
                "Container {} is restarting, wait until the container is running",
                rec.id
            )));
        }
        if !rec.state.running() {
            return Err(ApiError::conflict(format!("Container {} is not running", rec.id)));
        }
        if rec.state.paused() {
            return Err(ApiError::conflict(format!("Container {} is already paused", rec.id)));
        }
        if let Err(err) = self.lifecycle.pause(task(&rec.id)).await {
            self.reconcile_pause(e).await;
            return Err(err.into());
        }
        e.update(|r| r.state.pause());
        self.persist(e);
        self.event(&e.snapshot(), "pause", &[]);
        Ok(())
    }

    /// What the container-file routes (diff, export, cp, commit) need of the daemon.
    pub fn files(&self) -> crate::commit::Files<'_> {
        crate::commit::Files { images: &self.images, containers: &self.containers, events: &self.events }
    }

    /// `POST /commit`: a new image of a container's changes, the container paused around it
    /// when it runs unless `pause=0` (dockerd's default); one `daemon.commit` span.
    pub async fn commit(
        &self,
        trace: &Trace,
        q: &Query,
        body: Option<engine_docker_api::ContainerConfig>,
    ) -> Result<engine_image::Digest, ApiError> {
        let e = self.containers.find(q.get("container").unwrap_or(""))?;
        let rec = e.snapshot();
        let opts = crate::commit::commit_options(&rec, q, body)?;
        let span = trace.start(engine_telemetry::names::DAEMON_COMMIT);
        trace.attr(span, "container.id", rec.id.as_str());
        let pause = q.get("pause").is_none_or(|p| !matches!(p, "0" | "false" | "False"));
        let paused_here = pause && rec.state.running() && !rec.state.paused() && self.pause(&e).await.is_ok();
        let made = self.files().commit_image(&rec, opts).await;
        if paused_here {
            if let Err(err) = self.unpause(&e).await {
                log!(self.cfg, "warn", "unpausing {} after its commit: {}", rec.id, err.message);
            }
        }
        let id = trace.finish(span, made.map_err(|e| e.message)).map_err(ApiError::internal)?;
        trace.attr(span, "image.id", id.to_string());
        self.event(&rec, "commit", &[]);
        Ok(id)
    }

    /// Runs container `id` to its end for a build step, its output sent to `out` line by line;
    /// its exit code.
    async fn run_to_end(
        self: &Arc<Self>,
        trace: &Trace,
        id: &str,
        out: tokio::sync::mpsc::Sender<String>,
    ) -> Result<i64, ApiError> {
        let e = self.containers.find(id)?;
        self.start(trace, &e).await?;
        let req = LogsRequest { container_id: id.to_string(), follow: true, tail: 0 };
        if let Ok(mut logs) = self.lifecycle.logs(req).await {
            while let Ok(Some(entry)) = logs.message().await {
                let line = String::from_utf8_lossy(&entry.line).into_owned();
                // a RUN's stderr in red, as dockerd's builder sends it
                let line = if entry.stream == "stderr" { format!("\u{1b}[91m{line}\u{1b}[0m") } else { line };
                if out.send(line).await.is_err() {
                    break;
                }
            }
        }
        let (code, _) = self.wait(&e, "not-running").await?;
        Ok(code)
    }

    /// Thaws a paused container.
    pub async fn unpause(&self, e: &Arc<Entry>) -> Result<(), ApiError> {
        let _op = e.op.lock().await;
        if !e.snapshot().state.paused() {
            // a pause whose answer was lost may have frozen it all the same
            self.reconcile_pause(e).await;
        }
        let rec = e.snapshot();
        if !rec.state.paused() {
            return Err(ApiError::conflict(format!("Container {} is not paused", rec.id)));
        }
        if let Err(err) = self.lifecycle.resume(task(&rec.id)).await {
            self.reconcile_pause(e).await;
            return Err(err.into());
        }
        self.unpaused(e);
        Ok(())
    }

    /// Sends the stop signal, waits `timeout` seconds, then kills. Not running: 304.
    pub async fn stop(self: &Arc<Self>, trace: &Trace, e: &Arc<Entry>, timeout: Option<i64>) -> Result<(), ApiError> {
        let _op = e.op.lock().await;
        let rec = e.snapshot();
        // A stop by the daemon's own shutdown is not a user's stop: policies still apply
        // when it comes back.
        let manual = !self.shutting_down.load(Ordering::SeqCst);
        e.update(|r| {
            r.manually_stopped |= manual;
            // a pending restart is cancelled: the container stays exited
            r.state.cancel_restart();
        });
        self.persist(e);
        e.life.send_modify(|_| {}); // waiters on not-running re-check `restarting`
        if !rec.state.running() {
            return Err(ApiError::not_modified());
        }
        let span = trace.start(engine_telemetry::names::DAEMON_STOP);
        trace.attr(span, "container.id", rec.id.clone());
        let signal = rec.config.stop_signal.as_deref().map(parse_signal).transpose()?.unwrap_or(libc::SIGTERM as u32);
        let timeout = timeout.or(rec.config.stop_timeout).unwrap_or(10);
        let mut life = e.life.subscribe();
        let exits = life.borrow().exits;
        if timeout != 0 {
            let _ = self.kill(e, signal).await;
        }
        let waited = async {
            loop {
                let still = {
                    let l = life.borrow_and_update();
                    l.exits == exits && l.running
                };
                if !still || life.changed().await.is_err() {
                    break;
                }
            }
        };
        let in_time = if timeout < 0 {
            waited.await;
            true
        } else {
            tokio::time::timeout(Duration::from_secs(timeout as u64), waited).await.is_ok()
        };
        if !in_time {
            if let Err(err) = self.kill_until_exited(e).await {
                trace.finish(span, Err::<(), String>(err.message.clone())).ok();
                return Err(err);
            }
        }
        trace.finish(span, Ok::<(), String>(())).ok();
        self.event(&e.snapshot(), "stop", &[]);
        Ok(())
    }

    /// Deletes the container's task, if it has one, to its end. A delete that lifecycled's death
    /// cut short is asked again of the lifecycled that follows (which finds the task again in
    /// its directory) for up to [`SETTLE_FOR`]; any answer but done or no-task is an error.
    async fn delete_task_to_end(&self, id: &str) -> Result<(), tonic::Status> {
        match until_answered(|| self.lifecycle.delete_task(task(id))).await {
            Err(s) if s.code() != tonic::Code::NotFound => Err(s),
            _ => Ok(()),
        }
    }

    /// SIGKILL to every process of the container, again every few seconds (lifecycled may be
    /// restarting), until its exit is recorded; an error when it is not recorded within
    /// [`SETTLE_FOR`] (lifecycled does not come back).
    async fn kill_until_exited(&self, e: &Arc<Entry>) -> Result<(), ApiError> {
        let id = e.snapshot().id;
        let mut life = e.life.subscribe();
        let deadline = tokio::time::Instant::now() + SETTLE_FOR;
        loop {
            if !life.borrow_and_update().running {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::internal(format!(
                    "container {id} did not exit after SIGKILL within {} s: is lifecycled running?",
                    SETTLE_FOR.as_secs()
                )));
            }
            let _ = tokio::time::timeout_at(deadline, self.lifecycle.kill(crate::lifecycle::kill_all(&id))).await;
            self.thaw_after_kill(e).await;
            let exited = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    if !life.borrow_and_update().running || life.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await;
            if exited.is_ok() {
                return Ok(());
            }
        }
    }

    /// Whether lifecycled answers a question about container `id` within a few seconds
    /// (whatever the answer), unlike one that is gone or restarting.
    async fn lifecycled_answers(&self, id: &str) -> bool {
        match tokio::time::timeout(Duration::from_secs(5), self.lifecycle.tasks().state(task(id))).await {
            Ok(Ok(_)) => true,
            Ok(Err(s)) => !outcome_unknown(&s),
            Err(_) => false,
        }
    }

    /// Waits for `condition` (not-running, next-exit, removed); returns the exit code and error.
    pub async fn wait(&self, e: &Arc<Entry>, condition: &str) -> Result<(i64, String), ApiError> {
        let mut life = e.life.subscribe();
        let start = life.borrow().clone();
        loop {
            {
                let l = life.borrow_and_update();
                let done = match condition {
                    // as dockerd's: stopped now, or an exit since (a restart policy's too:
                    // dockerd wakes its waiters when it restarts the container)
                    "" | "not-running" => (!l.running && !e.snapshot().state.restarting()) || l.exits > start.exits,
                    "next-exit" => l.exits > start.exits,
                    "removed" => l.removed,
                    c => return Err(ApiError::bad_request(format!("invalid condition: {c:?}"))),
                };
                if done {
                    let rec = e.snapshot();
                    return Ok((rec.state.exit_code(), l.error.clone()));
                }
            }
            if life.changed().await.is_err() {
                let rec = e.snapshot();
                return Ok((rec.state.exit_code(), rec.state.error().to_string()));
            }
        }
    }

    pub async fn remove(self: &Arc<Self>, e: &Arc<Entry>, force: bool, volumes: bool) -> Result<(), ApiError> {
        let rec = e.snapshot();
        let running_refused = |rec: &ContainerRecord| {
            ApiError::conflict(format!(
                "You cannot remove a running container {}. Stop the container before attempting removal or force remove",
                rec.id
            ))
        };
        // one its restart policy restarts counts as running, as dockerd's
        if rec.state.restarting() && !force {
            return Err(ApiError::conflict(format!(
                "You cannot remove a restarting container {}. Stop the container before attempting removal or force remove",
                rec.id
            )));
        }
        // `rm -f` of a container lifecycled does not stop (it does not answer): what is left
        // of it is removed without lifecycled
        let mut unanswered = None;
        if rec.state.running() {
            if !force && rec.state.paused() {
                return Err(ApiError::conflict(format!(
                    "You cannot remove a paused container {}. Unpause and then stop the container before attempting removal or force remove",
                    rec.id
                )));
            }
            if !force {
                return Err(running_refused(&rec));
            }
            e.update(|r| r.manually_stopped = true);
            if let Err(err) = self.kill_until_exited(e).await {
                // a lifecycled that answers, but whose SIGKILL did not end the container (a
                // process stuck in the kernel), keeps it: the removal fails
                if self.lifecycled_answers(&rec.id).await {
                    return Err(err);
                }
                unanswered = Some(err.message);
            }
        }
        let _op = e.op.lock().await;
        if e.life.borrow().removed {
            return Ok(());
        }
        // A start (or a policy restart) may have won the lock meanwhile.
        if unanswered.is_none() && e.snapshot().state.running() {
            return Err(running_refused(&e.snapshot()));
        }
        e.update(|r| r.state.begin_removal());
        let result = self.remove_locked(e, force, unanswered).await;
        if result.is_err() && !e.life.borrow().removed {
            e.update(|r| r.state.removal_failed());
        }
        if e.life.borrow().removed && (volumes || rec.host_config.auto_remove) {
            self.remove_anonymous_volumes(&rec.id);
        }
        result
    }

    /// Removes the container: its task and lifecycled's container, its network, its snapshot,
    /// its record. With `force`, a lifecycled that does not answer (`unanswered` says why, or
    /// its task's delete finds out) does not keep the container: engined kills its processes
    /// through its cgroup, removes the rest, and answers with an error saying that the task
    /// (shim, task directory) is left, for the orphan collection once lifecycled answers.
    async fn remove_locked(
        self: &Arc<Self>,
        e: &Arc<Entry>,
        force: bool,
        mut unanswered: Option<String>,
    ) -> Result<(), ApiError> {
        let rec = e.snapshot();
        let id = rec.id.clone();
        let removing = |s: tonic::Status| ApiError::internal(format!("removing container {id}: {}", s.message()));
        if unanswered.is_none() {
            let task = match self.delete_task_to_end(&id).await {
                Ok(()) => match self.lifecycle.delete_container(ContainerId { id: id.clone() }).await {
                    Err(s) if s.code() != tonic::Code::NotFound => Err(s),
                    _ => Ok(()),
                },
                Err(s) => Err(s),
            };
            match task {
                Ok(()) => {}
                Err(s) if force && outcome_unknown(&s) => unanswered = Some(s.message().to_string()),
                Err(s) => return Err(removing(s)),
            }
        }
        let mut left = "its task (shim, task directory) is".to_string();
        if unanswered.is_some() {
            let parent = hostconfig::cgroup_parent(&rec.host_config, &self.cfg.cgroup_parent);
            let cgroup = PathBuf::from(hostconfig::cgroups_path(&parent, &id).trim_start_matches('/'));
            let killed = tokio::task::spawn_blocking(move || crate::orphans::remove_cgroup(&cgroup)).await;
            if let Ok(Err(err)) = killed {
                log!(self.cfg, "warn", "removing {id} without lifecycled: {err}");
                left = format!("its task (shim, task directory) and processes ({err}) are");
            }
            if e.life.borrow().running {
                // killed through its cgroup: its exit is told here, as lifecycled would have
                let reason = "killed without lifecycled, which did not answer";
                e.update(|r| r.state.exit(137, false, reason.to_string(), now()));
                self.event(&rec, "die", &[("exitCode", "137".to_string())]);
                e.life.send_modify(|l| {
                    l.running = false;
                    l.exits += 1;
                    l.exit_code = 137;
                    l.error = reason.to_string();
                });
            }
        }
        crate::network::down(&self.network_service, e).await;
        let images = self.images.clone();
        let key = id.clone();
        tokio::task::spawn_blocking(move || images.remove_snapshot(&key))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
        self.containers.remove(&id)?;
        self.execs.forget_container(&id);
        self.event(&rec, "destroy", &[]);
        e.life.send_modify(|l| l.removed = true);
        match unanswered {
            None => Ok(()),
            Some(why) => Err(ApiError::internal(format!(
                "container {id} is removed, but lifecycled did not answer ({why}): {left} left until lifecycled answers, then collected as an orphan"
            ))),
        }
    }

    pub async fn restart(
        self: &Arc<Self>,
        trace: &Trace,
        e: &Arc<Entry>,
        timeout: Option<i64>,
    ) -> Result<(), ApiError> {
        match self.stop(trace, e, timeout).await {
            Ok(()) => {}
            Err(err) if err.status == hyper::StatusCode::NOT_MODIFIED => {}
            Err(err) => return Err(err),
        }
        match self.start(trace, e).await {
            Err(err) if err.status == hyper::StatusCode::NOT_MODIFIED => Ok(()),
            r => r,
        }
    }

    /// `docker update`: new limits (a zero field leaves its limit as it is) and restart policy.
    /// The bundle's spec (what the next start uses) is written first, then the running (or
    /// paused) task takes the limits, then the record; a refusal or failure at any step leaves
    /// the container as it was (the bundle is written back).
    pub async fn update(&self, e: &Arc<Entry>, u: UpdateConfig) -> Result<(), ApiError> {
        let _op = e.op.lock().await;
        let rec = e.snapshot();
        let cannot =
            |err: ApiError| ApiError::new(err.status, format!("Cannot update container {}: {}", rec.id, err.message));
        // NanoCpus sets the period and quota: once one way is set, the other cannot be updated
        let (new, old) = (&u.resources, &rec.host_config.resources);
        let conflicts = [
            (new.nano_cpus > 0 && old.cpu_period > 0, "Nano CPUs cannot be updated as CPU Period has already been set"),
            (new.nano_cpus > 0 && old.cpu_quota > 0, "Nano CPUs cannot be updated as CPU Quota has already been set"),
            (new.cpu_period > 0 && old.nano_cpus > 0, "CPU Period cannot be updated as NanoCPUs has already been set"),
            (new.cpu_quota > 0 && old.nano_cpus > 0, "CPU Quota cannot be updated as NanoCPUs has already been set"),
        ];
        if let Some((_, why)) = conflicts.iter().find(|(c, _)| *c) {
            return Err(cannot(ApiError::conflict(format!("Conflicting options: {why}"))));
        }
        let mut hc = rec.host_config.clone();
        for (new, field) in [
            (new.memory, &mut hc.resources.memory),
            (new.nano_cpus, &mut hc.resources.nano_cpus),
            (new.cpu_shares, &mut hc.resources.cpu_shares),
            (new.cpu_period, &mut hc.resources.cpu_period),
            (new.cpu_quota, &mut hc.resources.cpu_quota),
        ] {
            if new != 0 {
                *field = new;
            }
        }
        for (new, field) in [
            (new.memory_reservation, &mut hc.resources.memory_reservation),
            (new.memory_swap, &mut hc.resources.memory_swap),
        ] {
            if new != 0 {
                *field = new;
            }
        }
        for (new, field) in
            [(&new.cpuset_cpus, &mut hc.resources.cpuset_cpus), (&new.cpuset_mems, &mut hc.resources.cpuset_mems)]
        {
            if !new.is_empty() {
                *field = new.clone();
            }
        }
        if let Some(p) = new.pids_limit.filter(|p| *p != 0) {
            hc.resources.pids_limit = Some(p);
        }
        // what an update cannot change (kernel memory, block I/O, realtime, devices): refused
        // as a create's
        hostconfig::check_unsupported(new).map_err(cannot)?;
        hostconfig::check_updatable(new).map_err(cannot)?;
        if !u.restart_policy.name.is_empty() {
            if hc.auto_remove && u.restart_policy.name != "no" {
                return Err(cannot(ApiError::conflict(
                    "Restart policy cannot be updated because AutoRemove is enabled for the container",
                )));
            }
            hc.restart_policy = u.restart_policy.clone();
        }
        hostconfig::check_limits(&hc).map_err(cannot)?;
        let limits = hostconfig::limits(&hc)?;
        let bundle = self.container_dir(&rec.id).join("config.json");
        let before =
            std::fs::read(&bundle).map_err(|err| ApiError::internal(format!("reading {}: {err}", bundle.display())))?;
        let mut spec: oci_spec::runtime::Spec = serde_json::from_slice(&before)
            .map_err(|err| ApiError::internal(format!("reading {}: {err}", bundle.display())))?;
        let linux = spec.linux_mut().get_or_insert_with(Default::default);
        let res = linux.resources_mut().get_or_insert_with(Default::default);
        res.set_memory(limits.memory().or(*res.memory()));
        res.set_cpu(limits.cpu().clone().or(res.cpu().clone()));
        res.set_pids(limits.pids().or(*res.pids()));
        let spec_json = serde_json::to_vec_pretty(&spec).map_err(|err| ApiError::internal(err.to_string()))?;
        let write = |bytes: &[u8]| {
            engine_util::fs::write_atomic(&bundle, bytes).map_err(|err| ApiError::internal(err.to_string()))
        };
        write(&spec_json)?;
        if rec.state.running() {
            let resources_json = serde_json::to_string(&limits).map_err(|err| ApiError::internal(err.to_string()))?;
            let req = UpdateTaskRequest { container_id: rec.id.clone(), resources_json };
            if let Err(s) = self.lifecycle.update(req).await {
                if let Err(err) = write(&before) {
                    log!(
                        self.cfg,
                        "error",
                        "writing back the spec of {} after a failed update: {}",
                        rec.id,
                        err.message
                    );
                }
                return Err(cannot(s.into()));
            }
        }
        e.update(|r| r.host_config = hc);
        self.persist(e);
        self.event(&e.snapshot(), "update", &[]);
        Ok(())
    }

    /// Docker's `container prune`: removes every container that does not run (created, exited,
    /// dead) and that `pick` picks; returns the ids removed and the bytes their writable layers
    /// held. A container started meanwhile is left; one that cannot be removed is logged.
    pub async fn prune(self: &Arc<Self>, pick: impl Fn(&ContainerRecord) -> bool) -> (Vec<String>, u64) {
        let (mut deleted, mut reclaimed) = (Vec::new(), 0);
        for e in self.containers.all() {
            let rec = e.snapshot();
            if rec.state.running() || rec.state.restarting() || rec.state.removing() || !pick(&rec) {
                continue;
            }
            let written = match self.images.snapshot(&rec.id).ok().flatten() {
                Some(s) if s.driver == engine_image::StorageDriver::Vfs => s.rootfs,
                _ => rec.upper.clone(),
            };
            let size = tokio::task::spawn_blocking(move || engine_util::fs::dir_size(&written)).await.unwrap_or(0);
            match self.remove(&e, false, false).await {
                Ok(()) => {
                    deleted.push(rec.id);
                    reclaimed += size;
                }
                // started or removed meanwhile
                Err(err) if matches!(err.status, hyper::StatusCode::CONFLICT | hyper::StatusCode::NOT_FOUND) => {}
                // as dockerd: one that cannot be removed is logged, the others still go
                Err(err) => log!(self.cfg, "error", "pruning container {}: {}", rec.id, err.message),
            }
        }
        (deleted, reclaimed)
    }

    /// `DELETE /containers/{name}/{alias}?link=1` (`docker rm --link`): the legacy link `alias`
    /// of container `name` goes; the linked container stays.
    pub async fn remove_link(&self, e: &Arc<Entry>, alias: &str) -> Result<(), ApiError> {
        let _op = e.op.lock().await;
        let rec = e.snapshot();
        let links = crate::network::links_of(&rec.host_config)?;
        if !links.iter().any(|(_, a)| a == alias) {
            return Err(ApiError::not_found(format!("Could not find entity for /{}/{alias}", rec.name)));
        }
        let kept: Vec<String> =
            links.into_iter().filter(|(_, a)| a != alias).map(|(target, a)| format!("{target}:{a}")).collect();
        e.update(|r| r.host_config.links = Some(kept).filter(|k| !k.is_empty()));
        self.persist(e);
        Ok(())
    }

    pub fn rename(&self, e: &Arc<Entry>, new: &str) -> Result<(), ApiError> {
        self.containers.rename(e, new)?;
        let new = new.trim_start_matches('/');
        // the embedded DNS servers of its user networks know it by the new name
        let id = e.snapshot().id;
        self.networks.rename(&id, new);
        Ok(())
    }

    // ---- after a restart of engined ---------------------------------------------------------

    /// Reads every container record, asks lifecycled about the ones that were running, and
    /// monitors them again or records their exit (applying restart policies).
    async fn load_records(self: &Arc<Self>, loaded: Loaded) -> anyhow::Result<()> {
        // A create that crashed before its record was written: undo what it made.
        for id in loaded.unfinished {
            log!(self.cfg, "warn", "removing the leftovers of an unfinished create of {id}");
            let d = self.clone();
            tokio::spawn(async move {
                let recovery = Recovery::begin(d.sink.as_ref(), &id, "none (its create was cut short)");
                recovery.found("what the create made before it was cut short");
                recovery.scope(d.undo_create(&id)).await;
                recovery.done("removed", None);
            });
        }
        for (path, why) in loaded.unreadable {
            log!(self.cfg, "warn", "skipping {}: {why}", path.display());
        }
        self.settle_interrupted_starts().await;
        let running: Vec<Arc<Entry>> = self
            .containers
            .all()
            .into_iter()
            .filter(|e| {
                let r = e.snapshot();
                r.state.running() || r.state.restarting()
            })
            .collect();
        // Endpoints and namespaces of containers that are not running any more go.
        let keep = running.iter().map(|e| e.snapshot().id).collect();
        self.networks.release_all_but(&keep).await;
        for e in running {
            let d = self.clone();
            tokio::spawn(async move { d.reattach(e).await });
        }
        let stopped: Vec<Arc<Entry>> = self
            .containers
            .all()
            .into_iter()
            .filter(|e| {
                matches!(e.snapshot().state.status(), crate::state::Status::Exited | crate::state::Status::Dead)
            })
            .collect();
        for e in stopped {
            let d = self.clone();
            tokio::spawn(async move { d.check_stopped(e).await });
        }
        // Restart policies at daemon start: `always` containers, and `unless-stopped` ones no
        // user stopped, that are not running (stopped by the last shutdown, or by a reboot).
        let to_start: Vec<Arc<Entry>> = self
            .containers
            .all()
            .into_iter()
            .filter(|e| {
                let r = e.snapshot();
                r.state.exited()
                    && match r.host_config.restart_policy.name.as_str() {
                        "always" => true,
                        "unless-stopped" => !r.manually_stopped,
                        _ => false,
                    }
            })
            .collect();
        for e in to_start {
            let d = self.clone();
            tokio::spawn(async move {
                let _op = e.op.lock().await;
                if let Err(err) = d.policy_start(&e, engine_telemetry::names::DAEMON_POLICY_START).await {
                    log!(d.cfg, "warn", "starting {} (restart policy): {}", e.snapshot().id, err.message);
                }
            });
        }
        // once they are monitored again (a running one's kill waits for its exit)
        self.remove_build_steps();
        Ok(())
    }

    /// Step containers of builds the engined before ran: their build ended with it (a build
    /// does not outlive its request), so they go, as their step would have removed them.
    fn remove_build_steps(self: &Arc<Self>) {
        for e in self.containers.all().into_iter().filter(|e| e.snapshot().build_step) {
            let d = self.clone();
            tokio::spawn(async move {
                let rec = e.snapshot();
                log!(d.cfg, "info", "removing {}, a step container of a build that ended with engined", rec.id);
                let recovery = Recovery::begin(d.sink.as_ref(), &rec.id, rec.state.status().as_str());
                recovery.found("a build's step container, its build gone");
                match recovery.scope(d.remove(&e, true, true)).await {
                    Ok(()) => recovery.done("removed", None),
                    Err(err) => {
                        log!(d.cfg, "warn", "removing build step container {}: {}", rec.id, err.message);
                        recovery.done("remove failed", Some(&err.message));
                    }
                }
            });
        }
    }

    /// Containers whose start was under way when engined stopped: the record still says
    /// created, but lifecycled may have made or even started their task. A task that ran is
    /// adopted (the record says running, as it would have, and [`Self::reattach`] records its
    /// exit if it has ended); a task that never ran is deleted, so the container is created
    /// and nothing else, as before its start.
    async fn settle_interrupted_starts(&self) {
        let created: Vec<Arc<Entry>> = self
            .containers
            .all()
            .into_iter()
            .filter(|e| e.snapshot().state.status() == crate::state::Status::Created)
            .collect();
        for e in created {
            let id = e.snapshot().id;
            let recovery = Recovery::begin(self.sink.as_ref(), &id, "created");
            if !recovery.scope(self.settle_interrupted_start(&e, &recovery)).await {
                return;
            }
        }
    }

    /// One container of [`Self::settle_interrupted_starts`]; false when lifecycled is
    /// unreachable (the others need not ask).
    async fn settle_interrupted_start(&self, e: &Arc<Entry>, recovery: &Recovery) -> bool {
        let id = e.snapshot().id;
        let s = match self.lifecycle.state(task(&id)).await {
            Ok(s) => s,
            // no task: a plain created container
            Err(err) if err.code() == tonic::Code::NotFound => {
                recovery.found("no task");
                recovery.done("kept as created", None);
                return true;
            }
            // (each call waits for an unreachable lifecycled: once is enough)
            Err(err) if err.code() == tonic::Code::Unavailable => {
                log!(self.cfg, "warn", "lifecycled unreachable: starts cut short are not settled: {}", err.message());
                recovery.found("lifecycled unreachable");
                recovery.done("kept as created", Some(err.message()));
                return false;
            }
            Err(err) => {
                log!(self.cfg, "warn", "container {id}: asking lifecycled for its task: {}", err.message());
                recovery.found("lifecycled's answer was an error");
                recovery.done("kept as created", Some(err.message()));
                return true;
            }
        };
        recovery.found(format!("a task {} (pid {}): a start cut short", s.status, s.pid));
        if matches!(s.status.as_str(), "running" | "paused" | "stopped") && s.pid != 0 {
            log!(self.cfg, "warn", "container {id} was started when the daemon stopped: adopted as running");
            e.update(|r| r.state.start(s.pid, now()));
            e.life.send_modify(|l| l.running = true);
            self.persist(e);
            recovery.done("adopted as running (its exit, if it has ended, is recorded next)", None);
        } else {
            log!(self.cfg, "warn", "container {id}: removing the task of a start the daemon did not finish");
            let deleted = self.delete_task_to_end(&id).await;
            if let Err(err) = &deleted {
                log!(self.cfg, "warn", "container {id}: deleting its unfinished task: {}", err.message());
            }
            recovery.done("task deleted, kept as created", deleted.as_ref().err().map(|s| s.message()));
        }
        true
    }

    async fn reattach(self: Arc<Self>, e: Arc<Entry>) {
        let rec = e.snapshot();
        let id = rec.id.clone();
        let recovery = Recovery::begin(self.sink.as_ref(), &id, rec.state.status().as_str());
        recovery.scope(self.reattach_in(e, &recovery)).await;
    }

    async fn reattach_in(self: &Arc<Self>, e: Arc<Entry>, recovery: &Recovery) {
        let id = e.snapshot().id;
        let state = self.lifecycle.state(task(&id)).await;
        match state {
            Ok(s) if matches!(s.status.as_str(), "running" | "paused" | "created") => {
                log!(self.cfg, "info", "reattached to container {id}");
                recovery.found(format!("its task {} (pid {})", s.status, s.pid));
                // a pause or unpause that engined's death cut short after lifecycled did it
                e.update(|r| match s.status.as_str() {
                    "paused" => r.state.pause(),
                    _ => r.state.unpause(),
                });
                crate::network::ensure_proxies(&self.network_service, &e).await;
                crate::network::ensure_dns(&self.network_service, &e).await;
                self.persist(&e);
                self.spawn_monitor(e);
                recovery.done("adopted: monitored again, its port proxies checked", None);
            }
            Ok(s) => {
                let exit = s.exit.unwrap_or_default();
                recovery.found(format!("its task {}, exit code {}", s.status, exit.exit_status));
                let deleted = self.delete_task_to_end(&id).await;
                self.record_exit(&e, exit).await;
                let error = deleted.as_ref().err().map(|s| s.message());
                recovery.done("exit recorded, task deleted", error);
            }
            Err(err) => {
                recovery.found(format!("no task ({})", err.message()));
                let exit = ExitStatus {
                    exit_status: 255,
                    reason: "task lost while the daemon was down".into(),
                    ..Default::default()
                };
                self.record_exit(&e, exit).await;
                recovery.done("exit recorded as lost (255)", None);
            }
        }
    }

    /// A container recorded as not running: no task of it may be left in lifecycled (a process
    /// the record does not know of is killed, and the task deleted).
    async fn check_stopped(self: Arc<Self>, e: Arc<Entry>) {
        let rec = e.snapshot();
        let id = rec.id.clone();
        let recovery = Recovery::begin(self.sink.as_ref(), &id, rec.state.status().as_str());
        recovery.scope(self.check_stopped_in(&e, &recovery)).await;
    }

    async fn check_stopped_in(&self, e: &Entry, recovery: &Recovery) {
        // A restart policy may start it meanwhile: that start's task is known, not a stray.
        let _op = e.op.lock().await;
        let rec = e.snapshot();
        let id = rec.id.clone();
        if !matches!(rec.state.status(), crate::state::Status::Exited | crate::state::Status::Dead) {
            recovery.found(format!("{} by the time it was checked", rec.state.status().as_str()));
            return recovery.done("kept", None);
        }
        let s = match self.lifecycle.state(task(&id)).await {
            Err(err) if err.code() == tonic::Code::NotFound => {
                recovery.found("no task");
                return recovery.done("kept", None);
            }
            Err(err) => {
                recovery.found("lifecycled's answer was an error");
                return recovery.done("kept", Some(err.message()));
            }
            Ok(s) => s,
        };
        recovery.found(format!("a task {} (pid {}) the record does not know of", s.status, s.pid));
        log!(
            self.cfg,
            "warn",
            "container {id} is {} but has a task {}: deleting it",
            rec.state.status().as_str(),
            s.status
        );
        if matches!(s.status.as_str(), "running" | "paused" | "created") {
            let _ = self.lifecycle.kill(crate::lifecycle::kill_all(&id)).await;
            if s.status == "paused" {
                let _ = self.lifecycle.resume(task(&id)).await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), self.lifecycle.wait(task(&id))).await;
        }
        let deleted = self.delete_task_to_end(&id).await;
        recovery.done("killed and deleted", deleted.as_ref().err().map(|s| s.message()));
    }

    /// On shutdown: stop running containers (as dockerd does without live-restore; with it,
    /// they stay for the next engined), then take down what of the networks no container uses.
    pub async fn shutdown(self: &Arc<Self>, live_restore: bool) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let running: Vec<_> =
            self.containers.all().into_iter().filter(|e| !live_restore && e.snapshot().state.running()).collect();
        let mut handles = Vec::new();
        for e in running {
            let d = self.clone();
            let t = Trace::new(None, None, engine_telemetry::names::DAEMON_SHUTDOWN);
            handles.push(tokio::spawn(async move {
                let _ = d.stop(&t, &e, Some(10)).await;
            }));
        }
        for h in handles {
            let _ = h.await;
        }
        self.networks.shutdown().await;
    }
}

/// `SIGTERM`, `TERM`, `15`.
pub fn parse_signal(s: &str) -> Result<u32, ApiError> {
    if let Ok(n) = s.parse::<u32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") { name } else { format!("SIG{name}") };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as u32)
        .map_err(|_| ApiError::bad_request(format!("Invalid signal: {s}")))
}

/// One container's reconciliation at engined's start: a `daemon.recover` trace of its own,
/// whose attributes say what was found (`recover.found`) and what was done (`recover.action`).
/// The calls to lifecycled made for it run in [`Recovery::scope`], so they join its trace.
struct Recovery(Arc<Trace>);

impl Recovery {
    fn begin(sink: Option<&engine_telemetry::Sink>, id: &str, record: &str) -> Recovery {
        let t = Trace::background(sink, engine_telemetry::names::DAEMON_RECOVER);
        t.attr(t.root, "container.id", id.to_string());
        t.attr(t.root, "recover.record", record.to_string());
        Recovery(Arc::new(t))
    }

    /// Runs `f` as part of this trace.
    async fn scope<F: std::future::Future>(&self, f: F) -> F::Output {
        self.0.scope(f).await
    }

    /// What lifecycled (or the disk) says of the container's task.
    fn found(&self, what: impl Into<String>) {
        self.0.attr(self.0.root, "recover.found", what.into());
    }

    /// What was done (once); an error marks the span failed.
    fn done(&self, action: &str, error: Option<&str>) {
        self.0.attr(self.0.root, "recover.action", action.to_string());
        self.0.end(error);
    }
}

/// How long an operation whose outcome lifecycled's death left unknown keeps asking again.
const SETTLE_FOR: Duration = Duration::from_secs(60);

/// Whether a call to lifecycled failed without an answer (it went away during the call), so
/// what it did is unknown until its successor is asked.
fn outcome_unknown(s: &tonic::Status) -> bool {
    matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled)
}

/// Runs `call` (a call safe to repeat) until lifecycled answers it, for up to [`SETTLE_FOR`]: the
/// first calls after lifecycled died may meet the broken connection (a transport error) before
/// a new one is refused (Unavailable, which each call already retries for a while).
async fn until_answered<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + SETTLE_FOR;
    loop {
        match call().await {
            Err(s) if outcome_unknown(&s) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            r => return r,
        }
    }
}

/// The daemon as a build's host: its containers made, run and removed the usual way.
pub struct BuildHost(pub Arc<Daemon>);

impl crate::build::BuildHost for BuildHost {
    fn images(&self) -> &Arc<ImageStore> {
        &self.0.images
    }

    async fn create(&self, trace: &Trace, body: ContainerCreateBody, kept: bool) -> Result<String, ApiError> {
        self.0.create_as(trace, None, body, if kept { Origin::User } else { Origin::BuildStep }).await
    }

    async fn run(&self, trace: &Trace, id: &str, out: tokio::sync::mpsc::Sender<String>) -> Result<i64, ApiError> {
        self.0.run_to_end(trace, id, out).await
    }

    async fn commit(
        &self,
        id: &str,
        opts: engine_image::changes::CommitOptions,
    ) -> Result<engine_image::Digest, ApiError> {
        let rec = self.0.containers.find(id)?.snapshot();
        self.0.files().commit_image(&rec, opts).await
    }

    fn observe_step(&self, instruction: &str, cache_hit: bool, secs: f64) {
        self.0.metrics.observe_build_step(instruction, cache_hit, secs);
    }

    async fn pull(
        &self,
        trace: &Arc<Trace>,
        reference: &engine_image::Reference,
        platform: &engine_image::manifest::Platform,
        creds: Option<engine_registry::AuthConfig>,
        out: &crate::build::Out,
    ) -> Result<(), ApiError> {
        crate::images::pull_into(&self.0.image_service, trace, reference, platform, creds, out).await
    }

    async fn remove(&self, id: &str) {
        if let Ok(e) = self.0.containers.find(id) {
            if let Err(err) = self.0.remove(&e, true, false).await {
                log!(self.0.cfg, "error", "removing build container {id}: {}", err.message);
            }
        }
    }

    async fn kill(&self, id: &str) {
        if let Ok(e) = self.0.containers.find(id) {
            if let Err(err) = self.0.kill_until_exited(&e).await {
                log!(self.0.cfg, "error", "killing build container {id}: {}", err.message);
            }
        }
    }
}

/// Fills a new volume at `data` with what the image has at `path` in `rootfs` (nothing when it
/// has nothing there), as dockerd's copy-up: modes, owners and links kept, never followed out.
fn copy_up(rootfs: &Path, path: &str, data: &Path) -> Result<(), String> {
    let source = engine_image::copy::resolve_in_root(rootfs, Path::new(path), true).map_err(|e| e.to_string())?;
    if !source.is_dir() {
        return Ok(());
    }
    let tar = engine_image::changes::write_tree(
        &source,
        Path::new(""),
        engine_image::changes::TreeForm::Plain,
        &Default::default(),
        Vec::new(),
    )
    .map_err(|e| e.to_string())?;
    engine_image::copy::copy_in(data, "/", tar.as_slice(), &Default::default()).map_err(|e| e.to_string())?;
    // the volume's root takes the directory's owner and mode
    if let Ok(meta) = std::fs::metadata(&source) {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let _ = std::os::unix::fs::chown(data, Some(meta.uid()), Some(meta.gid()));
        let _ = std::fs::set_permissions(data, std::fs::Permissions::from_mode(meta.mode() & 0o7777));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use hyper::StatusCode;
    use serde_json::json;

    use super::*;
    use crate::state::Status;
    use crate::testing;

    fn body(v: serde_json::Value) -> ContainerCreateBody {
        serde_json::from_value(v).expect("a create body")
    }

    /// Creates container `name` of the image `tiny` on the host's network, with `host_config`'s
    /// other fields; returns its id and entry.
    async fn create(
        d: &Arc<Daemon>,
        trace: &Trace,
        name: &str,
        host_config: serde_json::Value,
    ) -> (String, Arc<Entry>) {
        let mut hc = json!({"NetworkMode": "host"});
        if let (Some(hc), Some(more)) = (hc.as_object_mut(), host_config.as_object()) {
            hc.extend(more.clone());
        }
        let id = d.create(trace, Some(name.into()), body(json!({"Image": "tiny", "HostConfig": hc}))).await.unwrap();
        let e = d.containers.find(&id).unwrap();
        (id, e)
    }

    /// Polls `cond` until it holds (10 s at most).
    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_container_lives_through_create_start_pause_kill_and_rm() {
        let t = testing::daemon().await;
        let (d, fake) = (&t.daemon, &t.fake);
        let trace = Trace::background(None, "test");
        let (id, e) = create(d, &trace, "web", json!({})).await;
        assert_eq!(e.snapshot().state.status(), Status::Created);
        assert_eq!(e.snapshot().path, "/bin/tiny", "the image's CMD");
        let rootfs = d.images.snapshot(&id).unwrap().unwrap().rootfs;
        assert_eq!(std::fs::read(rootfs.join("bin/tiny")).unwrap(), b"tiny", "the snapshot has the image's files");
        assert!(fake.containers.lock().unwrap().contains_key(&id), "lifecycled has the container");

        d.start(&trace, &e).await.unwrap();
        let rec = e.snapshot();
        assert_eq!((rec.state.status(), rec.state.pid()), (Status::Running, fake.tasks.lock().unwrap()[&id].pid));
        assert_eq!(fake.status(&id), Some("running"));
        assert_eq!(d.start(&trace, &e).await.unwrap_err().status, StatusCode::NOT_MODIFIED);

        d.pause(&e).await.unwrap();
        assert_eq!((e.snapshot().state.status(), fake.status(&id)), (Status::Paused, Some("paused")));
        let refused = d.pause(&e).await.unwrap_err();
        assert_eq!(
            (refused.status, refused.message),
            (StatusCode::CONFLICT, format!("Container {id} is already paused"))
        );
        assert_eq!(d.start(&trace, &e).await.unwrap_err().status, StatusCode::CONFLICT);
        assert!(d.remove(&e, false, false).await.unwrap_err().message.contains("cannot remove a paused container"));
        assert_eq!(fake.status(&id), Some("paused"), "a refused operation changed the task");

        // a SIGTERM to a paused container is delivered: it is thawed after the signal
        d.kill(&e, libc::SIGTERM as u32).await.unwrap();
        let calls = fake.calls();
        let kill = calls.iter().position(|c| *c == format!("Kill {id} 15")).expect("the kill");
        assert_eq!(calls.get(kill + 1), Some(&format!("Resume {id}")), "{calls:?}");
        assert_eq!(d.wait(&e, "not-running").await.unwrap().0, 143);
        assert_eq!(e.snapshot().state.status(), Status::Exited);
        let refused = d.kill(&e, libc::SIGKILL as u32).await.unwrap_err();
        assert_eq!(refused.status, StatusCode::CONFLICT);

        d.remove(&e, false, false).await.unwrap();
        assert!(d.containers.find("web").is_err() && d.containers.find(&id).is_err());
        assert!(!rootfs.exists(), "the snapshot is removed");
        assert!(fake.containers.lock().unwrap().is_empty() && fake.status(&id).is_none(), "{:?}", fake.calls());
        assert!(!d.container_dir(&id).exists());
    }

    #[tokio::test]
    async fn a_pause_whose_answer_was_lost_is_found_and_thawed() {
        let t = testing::daemon().await;
        let (d, fake) = (&t.daemon, &t.fake);
        let trace = Trace::background(None, "test");
        let (id, e) = create(d, &trace, "web", json!({})).await;
        d.start(&trace, &e).await.unwrap();
        fake.lose_answers.lock().unwrap().insert(id.clone());
        assert!(d.pause(&e).await.is_err());
        assert_eq!(
            (fake.status(&id), e.snapshot().state.status()),
            (Some("paused"), Status::Paused),
            "the record follows the task"
        );
        // a kill thaws the frozen task so the signal is delivered
        fake.lose_answers.lock().unwrap().clear();
        d.kill(&e, libc::SIGKILL as u32).await.unwrap();
        assert_eq!(d.wait(&e, "not-running").await.unwrap().0, 137);
        assert!(fake.calls().contains(&format!("Resume {id}")), "{:?}", fake.calls());
        d.remove(&e, true, false).await.unwrap();
    }

    #[tokio::test]
    async fn a_start_the_runtime_refuses_leaves_the_container_created_with_the_exit_code_dockerd_gives() {
        let t = testing::daemon().await;
        let (d, fake) = (&t.daemon, &t.fake);
        let trace = Trace::background(None, "test");
        let (id, e) = create(d, &trace, "bad", json!({})).await;
        fake.refuse_start.lock().unwrap().insert(id.clone());
        let err = d.start(&trace, &e).await.unwrap_err();
        assert!(err.message.contains("executable file not found"), "{}", err.message);
        let rec = e.snapshot();
        assert_eq!((rec.state.status(), rec.state.exit_code()), (Status::Created, 127));
        assert!(rec.state.error().contains("executable file not found"));
        assert_eq!(fake.status(&id), None, "the failed task is deleted");
        // fixed, it starts
        fake.refuse_start.lock().unwrap().clear();
        d.start(&trace, &e).await.unwrap();
        assert_eq!((e.snapshot().state.status(), e.snapshot().state.exit_code()), (Status::Running, 0));
        assert!(e.snapshot().state.error().is_empty());
        d.remove(&e, true, false).await.unwrap();
        assert!(fake.containers.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn on_failure_restarts_up_to_its_maximum_and_a_stop_is_never_undone() {
        let t = testing::daemon().await;
        let (d, fake) = (&t.daemon, &t.fake);
        let trace = Trace::background(None, "test");
        let policy = json!({"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 1}});
        let (id, e) = create(d, &trace, "flaky", policy).await;
        let starts = || fake.calls().iter().filter(|c| **c == format!("Start {id}")).count();
        d.start(&trace, &e).await.unwrap();
        fake.exit(&id, 3);
        until("the restart", || starts() == 2 && e.snapshot().state.status() == Status::Running).await;
        assert_eq!(e.snapshot().restart_count, 1);
        fake.exit(&id, 3);
        until("the last exit", || e.snapshot().state.status() == Status::Exited).await;
        // the exit and the restart decision are settled together: exited (not restarting)
        // means no restart is scheduled
        assert_eq!(e.snapshot().state.exit_code(), 3);
        assert_eq!((starts(), e.snapshot().restart_count), (2, 1), "restarted past its maximum");

        // always: an exit restarts it, a stop does not
        let (_, e) = create(d, &trace, "always", json!({"RestartPolicy": {"Name": "always"}})).await;
        d.start(&trace, &e).await.unwrap();
        d.stop(&trace, &e, Some(5)).await.unwrap();
        // settled with the exit, which stop waited for: exited, not restarting
        assert_eq!((e.snapshot().state.status(), e.snapshot().state.exit_code()), (Status::Exited, 143));
        assert_eq!(e.snapshot().state.status(), Status::Exited, "a stopped container was restarted");
        assert_eq!(d.stop(&trace, &e, Some(5)).await.unwrap_err().status, StatusCode::NOT_MODIFIED);
    }

    #[tokio::test]
    async fn an_update_reaches_the_running_task_the_record_and_the_bundle_or_changes_nothing() {
        let t = testing::daemon().await;
        let (d, fake) = (&t.daemon, &t.fake);
        let trace = Trace::background(None, "test");
        let (id, e) = create(d, &trace, "web", json!({"NanoCpus": 500_000_000})).await;
        let update = |v: serde_json::Value| d.update(&e, serde_json::from_value(v).unwrap());
        let bundle = || oci_spec::runtime::Spec::load(d.container_dir(&id).join("config.json")).unwrap();
        let memory_limit = || (*bundle().linux().clone()?.resources().clone()?.memory())?.limit();

        // not running: the record and the bundle only
        update(json!({"Memory": 64 << 20})).await.unwrap();
        assert_eq!((e.snapshot().host_config.resources.memory, memory_limit()), (64 << 20, Some(64 << 20)));
        assert!(!fake.calls().iter().any(|c| c.starts_with("Update")));

        d.start(&trace, &e).await.unwrap();
        update(json!({"PidsLimit": 70, "RestartPolicy": {"Name": "always"}})).await.unwrap();
        let calls = fake.calls();
        let sent = calls.iter().find(|c| c.starts_with(&format!("Update {id} "))).expect("the update of the task");
        let sent: serde_json::Value = serde_json::from_str(sent.splitn(3, ' ').nth(2).unwrap()).unwrap();
        assert_eq!((sent["pids"]["limit"].as_i64(), sent["memory"]["limit"].as_i64()), (Some(70), Some(64 << 20)));
        assert!(sent.get("devices").is_none_or(|d| d.is_null()), "device rules are not the update's: {sent}");
        let rec = e.snapshot();
        assert_eq!(
            (rec.host_config.resources.pids_limit, rec.host_config.restart_policy.name.as_str()),
            (Some(70), "always")
        );

        // refused: nothing changes, lifecycled is not asked
        let before = fake.calls().len();
        for (body, status, why) in [
            (json!({"KernelMemory": 1 << 20}), StatusCode::BAD_REQUEST, "KernelMemory"),
            (json!({"CpusetCpus": "x"}), StatusCode::BAD_REQUEST, "Invalid value x for cpuset cpus"),
            (
                json!({"CpuQuota": 20000}),
                StatusCode::CONFLICT,
                "CPU Quota cannot be updated as NanoCPUs has already been set",
            ),
            (json!({"Memory": 1024}), StatusCode::BAD_REQUEST, "Minimum memory limit"),
            (json!({"RestartPolicy": {"Name": "sometimes"}}), StatusCode::BAD_REQUEST, "invalid restart policy"),
        ] {
            let err = update(body).await.unwrap_err();
            assert_eq!(err.status, status, "{}", err.message);
            assert!(err.message.starts_with(&format!("Cannot update container {id}: ")), "{}", err.message);
            assert!(err.message.contains(why), "{}", err.message);
        }
        assert_eq!(fake.calls().len(), before);
        assert_eq!((e.snapshot().host_config.resources.memory, memory_limit()), (64 << 20, Some(64 << 20)));
        // the task refuses: the bundle is written back, the record stays
        fake.refuse_update.lock().unwrap().insert(id.clone());
        let err = update(json!({"Memory": 128 << 20})).await.unwrap_err();
        assert!(err.message.contains("cannot set the memory limit"), "{}", err.message);
        assert_eq!((e.snapshot().host_config.resources.memory, memory_limit()), (64 << 20, Some(64 << 20)));
        d.remove(&e, true, false).await.unwrap();
    }

    #[tokio::test]
    async fn without_a_default_bridge_a_container_names_its_network() {
        let t = testing::daemon().await;
        let d = &t.daemon;
        let trace = Trace::background(None, "test");
        let names: Vec<String> = d.networks.list().into_iter().map(|n| n.name).collect();
        assert!(names.contains(&"host".into()) && names.contains(&"none".into()), "{names:?}");
        assert!(!names.contains(&"bridge".into()), "{names:?}");
        let err = d.create(&trace, Some("nonet".into()), body(json!({"Image": "tiny"}))).await.unwrap_err();
        assert!(err.message.contains("bridge") && err.message.contains("not found"), "{}", err.message);
        assert!(d.containers.find("nonet").is_err(), "a refused create left a container");
        assert!(t.fake.containers.lock().unwrap().is_empty(), "a refused create left lifecycled's container");
    }
}
