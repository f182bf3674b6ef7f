//! engined's side of networking: what a container's network mode and endpoint settings mean
//! (checked at create), its network brought up at start — namespace, endpoints, /etc/hosts,
//! published-port proxies — and down at exit, `network connect/disconnect` of a running
//! container, the `/networks` API, and the network parts of `inspect` and `ps`.
//! The host side of all of it (links, addresses, rules, processes) is `engine-network`'s.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use engine_network::ports::{self, Published};
use engine_network::{etc, NetworkError, NetworkRecord};
use engine_telemetry::SpanHandle;
use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{self, empty, ApiError, Query, Resp};
use crate::log;
pub use crate::records::NetworkLink;
use crate::records::{ContainerRecord, ContainerStore, Entry};
use crate::trace::Trace;
use engine_docker_api::{HostConfig, NetworkingConfig};

/// What wiring containers to networks uses: the networks, the container store (a container's
/// links, hosts file and peers), the configuration (proxy binary, log), the event stream and
/// the probes (to tell the kernel's events of a network set-up apart). Nothing else of engined.
pub struct NetworkService {
    pub networks: Arc<engine_network::Networks>,
    pub containers: Arc<ContainerStore>,
    pub cfg: Arc<crate::config::Config>,
    pub events: Arc<crate::events::Events>,
    pub probes: crate::kernel::ProbeState,
    /// The embedded DNS servers of running containers on user networks.
    pub dns: DnsServers,
}

impl NetworkService {
    fn container_dir(&self, id: &str) -> std::path::PathBuf {
        self.containers.dir(id)
    }

    /// Writes the entry's record as it is now (a failure is logged, as the daemon's own writes).
    fn persist(&self, e: &Entry) {
        if let Err(err) = self.containers.persist(e) {
            log!(self.cfg, "error", "saving {err}");
        }
    }
}

/// The embedded DNS server of each running container on a user network, and what its queries
/// become: `engine_dns_*` metrics, and `dns.query` spans in the container's start trace during
/// its first `--dns-trace-window` seconds.
pub struct DnsServers {
    running: std::sync::Mutex<std::collections::HashMap<String, engine_network::dns::Server>>,
    telemetry: Arc<DnsTelemetry>,
}

struct DnsTelemetry {
    metrics: Arc<crate::metrics::Metrics>,
    sink: Option<engine_telemetry::Sink>,
    /// Container id → the `traceparent` of its start and until when its lookups are spans.
    windows: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

impl DnsServers {
    pub fn new(metrics: Arc<crate::metrics::Metrics>, sink: Option<engine_telemetry::Sink>) -> Self {
        DnsServers {
            running: Default::default(),
            telemetry: Arc::new(DnsTelemetry { metrics, sink, windows: Default::default() }),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, engine_network::dns::Server>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (String, std::time::Instant)>> {
        self.telemetry.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops a container's server (its sockets close, so its namespace can go).
    fn stop(&self, id: &str) {
        self.running().remove(id);
        self.windows().remove(id);
    }

    pub fn is_running(&self, id: &str) -> bool {
        self.running().contains_key(id)
    }
}

impl engine_network::dns::Observer for DnsTelemetry {
    fn answered(&self, a: &engine_network::dns::Answered) {
        self.metrics.observe_dns(&a.network, &a.qtype, &a.result, a.duration.as_secs_f64());
        let traceparent = {
            let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            match w.get(&a.container) {
                Some((tp, until)) if std::time::Instant::now() < *until => Some(tp.clone()),
                Some(_) => {
                    w.remove(&a.container);
                    None
                }
                None => None,
            }
        };
        let Some(tp) = traceparent else { return };
        let mut rec = engine_telemetry::Recorder::for_request("engined", self.sink.as_ref(), Some(&tp));
        let h = rec.start_at(engine_telemetry::names::DNS_QUERY, None, a.start_unix_nanos);
        rec.set_kind(h, engine_telemetry::Kind::Server);
        rec.set_attr(h, "dns.question.name", a.name.clone());
        rec.set_attr(h, "dns.question.type", a.qtype.clone());
        rec.set_attr(h, "dns.response.code", a.result.clone());
        rec.set_attr(h, "dns.answers", a.answers as i64);
        rec.set_attr(h, "network.name", a.network.clone());
        rec.set_attr(h, "network.transport", a.transport);
        rec.set_attr(h, "container.id", a.container.clone());
        if let Some(up) = a.upstream {
            rec.set_attr(h, "server.address", up.ip().to_string());
            rec.set_attr(h, "server.port", i64::from(up.port()));
        }
        if matches!(a.result.as_str(), "SERVFAIL" | "TIMEOUT") {
            rec.fail(h, &format!("{} {}: {}", a.qtype, a.name, a.result));
        }
        rec.end_at(h, a.start_unix_nanos + a.duration.as_nanos() as u64);
        rec.flush();
    }
}

/// Starts the embedded DNS server of a container on a user network, in its namespace `ns`.
async fn start_dns(
    d: &Arc<NetworkService>,
    rec: &ContainerRecord,
    ns: &std::fs::File,
    traceparent: Option<String>,
) -> Result<(), ApiError> {
    if d.networks.dns_scope(&rec.id).is_none() {
        return Ok(());
    }
    let ns = ns.try_clone().map_err(|e| ApiError::internal(format!("the network namespace: {e}")))?;
    let sockets = tokio::task::spawn_blocking(move || engine_network::dns::bind_in(&ns))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("binding the DNS server at 127.0.0.11:53: {e}")))?;
    let given = rec.host_config.dns.clone().filter(|d| !d.is_empty()).unwrap_or_else(|| d.cfg.dns.clone());
    let scope = engine_network::dns::Scope {
        container: rec.id.clone(),
        links: dns_links(d, rec),
        networks: d.networks.clone(),
        upstreams: engine_network::dns::upstreams(&given, &etc::host_resolv_conf()),
        observer: d.dns.telemetry.clone(),
    };
    let server =
        engine_network::dns::serve(scope, sockets).map_err(|e| ApiError::internal(format!("serving DNS: {e}")))?;
    d.dns.running().insert(rec.id.clone(), server);
    // a container created on the default bridge and connected since names the host's
    // resolvers: from now on it names this server (rewritten in place: it is bind-mounted)
    let resolvers = crate::hostconfig::Resolvers { daemon_dns: &d.cfg.dns, embedded: true };
    let path = d.container_dir(&rec.id).join("resolv.conf");
    etc::write_in_place(&path, &crate::hostconfig::resolv_conf(&rec.host_config, &resolvers))
        .map_err(|err| ApiError::internal(format!("writing {}: {err}", path.display())))?;
    if let Some(tp) = traceparent.filter(|_| d.cfg.dns_trace_window > 0) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(d.cfg.dns_trace_window);
        d.dns.windows().insert(rec.id.clone(), (tp, until));
    }
    Ok(())
}

/// What a container's DNS server answers as links: alias → container, of its legacy links and
/// of its networks' links (a network link's container may come later: named, not resolved).
fn dns_links(d: &NetworkService, rec: &ContainerRecord) -> BTreeMap<String, String> {
    linked(d, &rec.host_config)
        .into_iter()
        .map(|(alias, target)| (alias, target.id))
        .chain(rec.networks.iter().flat_map(|l| {
            links_of(&HostConfig { links: Some(l.links.clone()), ..Default::default() })
                .unwrap_or_default()
                .into_iter()
                .map(|(target, alias)| (alias, target))
        }))
        .collect()
}

/// A running container's DNS server learns its links as a connect or disconnect left them.
fn refresh_dns_links(d: &NetworkService, e: &Entry) {
    let rec = e.snapshot();
    if let Some(server) = d.dns.running().get(&rec.id) {
        server.set_links(dns_links(d, &rec));
    }
}

/// After an engined restart, for a container still running on a user network: its DNS
/// server, whose sockets died with the engined before, is bound again in its namespace.
pub async fn ensure_dns(d: &Arc<NetworkService>, e: &Arc<Entry>) {
    let rec = e.snapshot();
    if d.dns.is_running(&rec.id) || !matches!(mode(&rec.host_config), Mode::Bridge) {
        return;
    }
    let path = d.networks.sandbox_path(&rec.id);
    let Ok(ns) = std::fs::File::open(&path) else { return };
    if let Err(err) = start_dns(d, &rec, &ns, None).await {
        crate::log!(d.cfg, "warn", "restarting the DNS server of {}: {}", rec.id, err.message);
    }
}

/// What `HostConfig.NetworkMode` asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Host,
    None,
    /// One or more bridge networks.
    Bridge,
    /// Another container's namespace (`container:<name|id>`).
    Container(String),
}

pub fn mode(hc: &HostConfig) -> Mode {
    match hc.network_mode.as_str() {
        "host" => Mode::Host,
        "none" => Mode::None,
        m if m.starts_with("container:") => Mode::Container(m["container:".len()..].to_string()),
        _ => Mode::Bridge,
    }
}

impl From<NetworkError> for ApiError {
    fn from(e: NetworkError) -> Self {
        let status = match &e {
            NetworkError::NotFound(_) => StatusCode::NOT_FOUND,
            NetworkError::Exists(_) => StatusCode::CONFLICT,
            NetworkError::Forbidden(_) => StatusCode::FORBIDDEN,
            NetworkError::Invalid(_)
            | NetworkError::Ipam(
                engine_network::ipam::IpamError::InUse(_) | engine_network::ipam::IpamError::OutOfSubnet(..),
            ) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// `--link name[:alias]` of a host config: (name, alias), the alias being the name when none
/// is given.
pub fn links_of(hc: &HostConfig) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for l in hc.links.iter().flatten() {
        // Docker's inspect form `/target:/self/alias` is taken back too
        let (target, alias) = l.split_once(':').unwrap_or((l, l));
        let (target, alias) = (target.trim_start_matches('/'), alias.rsplit('/').next().unwrap_or(alias));
        if target.is_empty() || alias.is_empty() || engine_util::name::check_name(alias, 1).is_err() {
            return Err(ApiError::bad_request(format!("invalid link {l:?}: want name[:alias]")));
        }
        out.push((target.to_string(), alias.to_string()));
    }
    Ok(out)
}

/// The containers a container's links name (the ones that exist), each with its alias.
fn linked(d: &NetworkService, hc: &HostConfig) -> Vec<(String, ContainerRecord)> {
    links_of(hc)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(target, alias)| d.containers.find(&target).ok().map(|e| (alias, e.snapshot())))
        .collect()
}

/// The environment Docker's legacy links give container `own_name`: for each linked container,
/// by its alias upper-cased (`-` as `_`), `<A>_NAME=/<own>/<alias>`, `<A>_ENV_<k>=<v>` for its
/// environment (but HOME and PATH), and for its exposed ports at its default-bridge address
/// `<A>_PORT=tcp://ip:port` (the lowest) and `<A>_PORT_<port>_<PROTO>[_ADDR|_PORT|_PROTO]`.
pub fn link_env(d: &NetworkService, hc: &HostConfig, own_name: &str) -> Vec<String> {
    let mut env = Vec::new();
    for (alias, target) in linked(d, hc) {
        let a = alias.to_ascii_uppercase().replace('-', "_");
        env.push(format!("{a}_NAME=/{own_name}/{alias}"));
        for kv in target.config.env.iter().flatten() {
            if let Some((k, v)) = kv.split_once('=') {
                if k != "HOME" && k != "PATH" {
                    env.push(format!("{a}_ENV_{k}={v}"));
                }
            }
        }
        let ip = d
            .networks
            .endpoints_of(&target.id)
            .into_iter()
            .find(|(n, _)| n.name == engine_network::networks::DEFAULT)
            .map(|(_, ep)| ep.ip);
        let Some(ip) = ip else { continue };
        let mut ports: Vec<(u16, String)> = target
            .config
            .exposed_ports
            .iter()
            .flatten()
            .filter_map(|(p, _)| {
                let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                Some((port.parse().ok()?, proto.to_string()))
            })
            .collect();
        ports.sort();
        if let Some((port, proto)) = ports.first() {
            env.push(format!("{a}_PORT={proto}://{ip}:{port}"));
        }
        for (port, proto) in &ports {
            let p = format!("{a}_PORT_{port}_{}", proto.to_ascii_uppercase());
            env.push(format!("{p}={proto}://{ip}:{port}"));
            env.push(format!("{p}_ADDR={ip}"));
            env.push(format!("{p}_PORT={port}"));
            env.push(format!("{p}_PROTO={proto}"));
        }
    }
    env
}

/// The MAC address a link asks for (checked at create).
/// What a container's configured place on a network asks of its endpoint.
fn endpoint_request(link: &NetworkLink) -> engine_network::EndpointRequest {
    engine_network::EndpointRequest {
        ipv4: link.ipv4_address,
        ipv6: link.ipv6_address,
        link_local: link.link_local_ips.clone(),
        mac: link.mac_address.as_deref().and_then(engine_network::ipam::parse_mac),
    }
}

/// `IPAMConfig` of an endpoint as dockerd shows it: what was asked for, null when nothing was.
fn ipam_config_json(link: &NetworkLink) -> Value {
    if link.ipv4_address.is_none() && link.ipv6_address.is_none() && link.link_local_ips.is_empty() {
        return Value::Null;
    }
    let asked = engine_docker_api::EndpointIpam {
        ipv4_address: link.ipv4_address.map(|ip| ip.to_string()).unwrap_or_default(),
        ipv6_address: link.ipv6_address.map(|ip| ip.to_string()).unwrap_or_default(),
        link_local_ips: (!link.link_local_ips.is_empty())
            .then(|| link.link_local_ips.iter().map(ToString::to_string).collect()),
    };
    serde_json::to_value(asked).unwrap_or(Value::Null)
}

/// At create: the networks a container goes on, checked (they exist, aliases and fixed
/// addresses only where Docker allows them, ports parse). Its network mode is written back in
/// its canonical form (`container:<id>`, or the network's name).
pub fn plan(
    d: &NetworkService,
    hc: &mut HostConfig,
    nc: Option<&NetworkingConfig>,
    config_mac: &str,
) -> Result<Vec<NetworkLink>, ApiError> {
    let endpoints = nc.and_then(|n| n.endpoints_config.clone()).unwrap_or_default();
    let has_ports = hc.port_bindings.as_ref().is_some_and(|p| !p.is_empty()) || hc.publish_all_ports;
    let primary = match hc.network_mode.as_str() {
        "" | "default" => engine_network::networks::DEFAULT.to_string(),
        m => m.to_string(),
    };
    // the endpoint of the primary network may be keyed by the mode as given ("default")
    let is_primary =
        |k: &str, id: &str| k == primary || k == id || (k == "default" && primary == engine_network::networks::DEFAULT);
    let links = links_of(hc)?;
    if !links.is_empty() {
        match mode(hc) {
            Mode::Host => return Err(ApiError::bad_request("conflicting options: host type networking can't be used with links. This would result in undefined behavior")),
            Mode::Container(_) => return Err(ApiError::bad_request("conflicting options: container type network can't be used with links. This would result in undefined behavior")),
            _ => {}
        }
    }
    for (target, _) in &links {
        d.containers
            .find(target)
            .map_err(|_| ApiError::bad_request(format!("could not get container for {target}")))?;
    }
    if let Mode::Container(target) = mode(hc) {
        let other =
            // a 400, not a 404: the Docker CLI reads a 404 of a create as a missing image and pulls
            d.containers.find(&target).map_err(|_| ApiError::bad_request(format!("No such container: {target}")))?;
        if has_ports {
            return Err(ApiError::bad_request(
                "conflicting options: port publishing and the container type network mode",
            ));
        }
        if !config_mac.is_empty()
            || endpoints.values().any(|e| {
                e.aliases.as_ref().is_some_and(|a| !a.is_empty())
                    || e.ipam_config.as_ref().is_some_and(|i| {
                        !i.ipv4_address.is_empty()
                            || !i.ipv6_address.is_empty()
                            || i.link_local_ips.as_ref().is_some_and(|l| !l.is_empty())
                    })
                    || !e.mac_address.is_empty()
            })
        {
            return Err(ApiError::bad_request(
                "conflicting options: network endpoints and the container type network mode",
            ));
        }
        hc.network_mode = format!("container:{}", other.snapshot().id);
        return Ok(Vec::new());
    }
    let net = d.networks.find(&primary)?;
    let link = |rec: &NetworkRecord,
                ep: Option<&engine_docker_api::EndpointSettings>,
                mac: &str|
     -> Result<NetworkLink, ApiError> {
        let aliases = ep.and_then(|e| e.aliases.clone()).unwrap_or_default();
        let mac = ep.map(|e| e.mac_address.as_str()).filter(|m| !m.is_empty()).unwrap_or(mac);
        let mac_address = match mac {
            "" => None,
            m => Some(engine_network::ipam::mac_string(
                &engine_network::ipam::parse_mac(m)
                    .ok_or_else(|| ApiError::bad_request(format!("invalid MAC address: {m}")))?,
            )),
        };
        let ip = ep.and_then(|e| e.ipam_config.as_ref()).map(|i| i.ipv4_address.as_str()).filter(|s| !s.is_empty());
        let ipv4_address = ip
            .map(|s| s.parse::<Ipv4Addr>().map_err(|_| ApiError::bad_request(format!("invalid IPv4 address: {s}"))))
            .transpose()?;
        if rec.name == engine_network::networks::DEFAULT && !aliases.is_empty() {
            return Err(ApiError::bad_request(
                "network-scoped alias is supported only for containers in user defined networks",
            ));
        }
        if ipv4_address.is_some() && !rec.subnet_configured {
            return Err(ApiError::bad_request(
                "user specified IP address is supported only when connecting to networks with user configured subnets",
            ));
        }
        if let (Some(ip), Some(subnet)) = (ipv4_address, rec.subnet) {
            if !subnet.contains(&ip) {
                return Err(ApiError::bad_request(format!(
                    "requested address {ip} is not in subnet {subnet} of network {}",
                    rec.name
                )));
            }
        }
        let ip6 = ep.and_then(|e| e.ipam_config.as_ref()).map(|i| i.ipv6_address.as_str()).filter(|s| !s.is_empty());
        let ipv6_address = ip6
            .map(|s| {
                s.parse::<std::net::Ipv6Addr>().map_err(|_| ApiError::bad_request(format!("invalid IPv6 address: {s}")))
            })
            .transpose()?;
        if let Some(ip) = ipv6_address {
            // an address of the IPv6 pool the user gave the network (with or without --ipv6,
            // as dockerd: without it, the address is kept and shown but not given)
            match rec.ipv6.as_ref().filter(|v6| v6.configured) {
                None => {
                    return Err(ApiError::bad_request(
                        "user specified IP address is supported only when connecting to networks with user configured subnets",
                    ))
                }
                Some(v6) if !v6.subnet.contains(&ip) => {
                    return Err(ApiError::bad_request(format!(
                        "requested address {ip} is not in subnet {} of network {}",
                        v6.subnet, rec.name
                    )))
                }
                Some(_) => {}
            }
        }
        let mut link_local_ips = Vec::new();
        for s in ep.and_then(|e| e.ipam_config.as_ref()).and_then(|i| i.link_local_ips.as_ref()).into_iter().flatten() {
            let ip = s
                .parse::<std::net::IpAddr>()
                .map_err(|_| ApiError::bad_request(format!("invalid link-local IP address: {s}")))?;
            let link_local = match ip {
                std::net::IpAddr::V4(v4) => v4.is_link_local(),
                std::net::IpAddr::V6(v6) => v6.is_unicast_link_local(),
            };
            if !link_local {
                return Err(ApiError::bad_request(format!(
                    "{ip} is not a link-local address (169.254.0.0/16 or fe80::/10)"
                )));
            }
            link_local_ips.push(ip);
        }
        let links: Vec<String> = ep.and_then(|e| e.links.clone()).unwrap_or_default();
        if !links.is_empty() && rec.name == engine_network::networks::DEFAULT {
            return Err(ApiError::bad_request(
                "links on the default bridge are the container's own (HostConfig.Links), not its endpoint's",
            ));
        }
        // (checked for form only: the container a network link names may come later, as
        // dockerd allows; the network's DNS answers it once it is there)
        links_of(&HostConfig { links: Some(links.clone()), ..Default::default() })?;
        let driver_opts = ep.and_then(|e| e.driver_opts.clone()).unwrap_or_default();
        Ok(NetworkLink {
            name: rec.name.clone(),
            id: rec.id.clone(),
            aliases,
            ipv4_address,
            ipv6_address,
            link_local_ips,
            mac_address,
            links,
            driver_opts,
        })
    };
    let primary_ep = endpoints.iter().find(|(k, _)| is_primary(k, &net.id)).map(|(_, v)| v);
    let mut links = vec![link(&net, primary_ep, config_mac)?];
    if !net.is_bridge() {
        // host or none: no other network, and nothing to publish
        if endpoints.keys().any(|k| !is_primary(k, &net.id)) {
            return Err(ApiError::bad_request(format!(
                "container cannot be connected to other networks with network mode {}",
                net.name
            )));
        }
        hc.network_mode = net.name.clone();
        hc.port_bindings = None;
        hc.publish_all_ports = false;
        return Ok(links);
    }
    for (name, ep) in &endpoints {
        if is_primary(name, &net.id) {
            continue;
        }
        let other = d.networks.find(name)?;
        if !other.is_bridge() {
            return Err(ApiError::bad_request(format!(
                "container cannot be connected to network {} and to bridge networks",
                other.name
            )));
        }
        links.push(link(&other, Some(ep), "")?);
    }
    for (key, bindings) in hc.port_bindings.iter().flatten() {
        for b in bindings.iter().flatten() {
            ports::binding(key, &b.host_ip, &b.host_port).map_err(|e| ApiError::bad_request(e.to_string()))?;
        }
        if bindings.as_ref().is_none_or(|b| b.is_empty()) {
            ports::parse_port_proto(key).map_err(|e| ApiError::bad_request(e.to_string()))?;
        }
    }
    if hc.network_mode.is_empty() {
        hc.network_mode = "default".into();
    }
    Ok(links)
}

/// The network namespace a `container:<other>` container joins: the other's, or the one the
/// other itself joins (`container:` chains), or None for the host's (`other` uses the host's).
pub fn joined_namespace(d: &NetworkService, other: &str) -> Result<Option<std::path::PathBuf>, ApiError> {
    let mut cur = other.to_string();
    for _ in 0..8 {
        let rec =
            d.containers.find(&cur).map_err(|_| ApiError::not_found(format!("No such container: {cur}")))?.snapshot();
        match mode(&rec.host_config) {
            Mode::Host => return Ok(None),
            Mode::Container(next) => cur = next,
            Mode::Bridge | Mode::None => return Ok(Some(d.networks.sandbox_path(&rec.id))),
        }
    }
    Err(ApiError::bad_request(format!("container:{other} joins a chain of containers too long to follow")))
}

/// The ports to publish at start: `PortBindings`, then with `-P` every exposed port not bound
/// yet, on any free host port.
pub fn published(rec: &ContainerRecord) -> Vec<Published> {
    let mut out = Vec::new();
    for (key, bindings) in rec.host_config.port_bindings.iter().flatten() {
        for b in bindings.iter().flatten() {
            if let Ok(p) = ports::binding(key, &b.host_ip, &b.host_port) {
                out.push(p);
            }
        }
    }
    if rec.host_config.publish_all_ports {
        for key in rec.config.exposed_ports.iter().flat_map(|m| m.keys()) {
            let bound = rec
                .host_config
                .port_bindings
                .as_ref()
                .is_some_and(|b| b.get(key).is_some_and(|v| v.as_ref().is_some_and(|v| !v.is_empty())));
            if !bound {
                if let Ok(p) = ports::binding(key, "", "") {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// Spans of the network set-up when the start is traced.
struct Spans<'a>(Option<&'a Trace>);

impl Spans<'_> {
    /// The request's context, for work that belongs to it but happens later.
    fn traceparent(&self) -> Option<String> {
        self.0.and_then(|t| t.traceparent(t.root))
    }
    fn start(&self, name: &str) -> Option<SpanHandle> {
        self.0.map(|t| t.start(name))
    }
    fn attr(&self, h: Option<SpanHandle>, k: &str, v: impl Into<engine_telemetry::recorder::AttrValue>) {
        if let (Some(t), Some(h)) = (self.0, h) {
            t.attr(h, k, v);
        }
    }
    fn finish<T>(&self, h: Option<SpanHandle>, r: Result<T, ApiError>) -> Result<T, ApiError> {
        match (self.0, h) {
            (Some(t), Some(h)) => {
                let msg = r.as_ref().err().map(|e| e.message.clone());
                let _ = t.finish(
                    h,
                    match msg {
                        Some(m) => Err(m),
                        None => Ok(()),
                    },
                );
                r
            }
            _ => r,
        }
    }
}

/// At start, before the task: the container's network namespace with its endpoints, its
/// /etc/hosts (and its neighbours'), and a proxy per published port. Undone whole on failure.
pub async fn up(d: &Arc<NetworkService>, trace: Option<&Trace>, e: &Arc<Entry>) -> Result<(), ApiError> {
    let rec = e.snapshot();
    let sp = Spans(trace);
    let m = mode(&rec.host_config);
    if m == Mode::Host {
        return Ok(());
    }
    let span = sp.start(engine_telemetry::names::DAEMON_NETWORK);
    sp.attr(span, "network.mode", rec.host_config.network_mode.clone());
    let outer = trace.zip(span).map(|(t, s)| t.enter(s));
    let net = e.net.lock().await;
    let r = up_inner(d, &sp, e, &rec, m).await;
    drop(net);
    if let (Some(t), Some(o)) = (trace, outer) {
        t.enter(o);
    }
    if r.is_err() {
        down(d, e).await;
    }
    sp.finish(span, r)
}

async fn up_inner(
    d: &Arc<NetworkService>,
    sp: &Spans<'_>,
    e: &Arc<Entry>,
    rec: &ContainerRecord,
    m: Mode,
) -> Result<(), ApiError> {
    let id = rec.id.clone();
    if let Mode::Container(target) = m {
        let other = d
            .containers
            .find(&target)
            .map_err(|_| ApiError::not_found(format!("No such container: {target}")))?
            .snapshot();
        if !other.state.running() {
            return Err(ApiError::conflict(format!("cannot join network of a non running container: {}", other.id)));
        }
        // its name files are the other container's
        let (from, to) = (d.container_dir(&other.id), d.container_dir(&id));
        for f in ["hosts", "resolv.conf", "hostname"] {
            let content = std::fs::read_to_string(from.join(f)).unwrap_or_default();
            etc::write_in_place(&to.join(f), &content)
                .map_err(|err| ApiError::internal(format!("writing {f}: {err}")))?;
        }
        return Ok(());
    }
    let path = d.networks.sandbox_path(&id);
    let h = sp.start(engine_telemetry::names::NETWORK_NAMESPACE);
    let made = {
        let (path, d) = (path.clone(), d.clone());
        tokio::task::spawn_blocking(move || {
            engine_network::remove_namespace(&path); // a leftover of a crash
                                                     // the probes follow the thread that unshares and mounts it
            let thread = std::sync::atomic::AtomicU32::new(0);
            let made = engine_network::create_namespace(&path, &|tid, on| {
                thread.store(tid, std::sync::atomic::Ordering::Relaxed);
                crate::kernel::watch_thread(&d.probes, tid, on)
            });
            made.map(|(f, n)| (f, n, thread.load(std::sync::atomic::Ordering::Relaxed)))
        })
        .await
        .map_err(|err| ApiError::internal(err.to_string()))?
        .map_err(|err| ApiError::internal(format!("creating the network namespace: {err}")))
    };
    if let Ok((_, _, tid)) = &made {
        // the probes' events of that thread go in this span (not in another start's)
        sp.attr(h, "thread.id", *tid as i64);
    }
    let (ns, nl, _) = sp.finish(h, made)?;
    nl.loopback_up().await.map_err(|err| ApiError::internal(err.to_string()))?;
    if m == Mode::None {
        return Ok(());
    }
    let mut first_ip = None;
    for (i, link) in rec.networks.iter().enumerate() {
        let h = sp.start(engine_telemetry::names::NETWORK_ENDPOINT);
        sp.attr(h, "network.name", link.name.clone());
        let ifname = format!("eth{i}");
        let net = d
            .networks
            .find(&link.id)
            .or_else(|_| d.networks.find(&link.name))
            .map_err(|_| ApiError::not_found(format!("network {} not found", link.name)));
        let attached = match &net {
            Ok(net) => d
                .networks
                .attach(&net.id, &id, &rec.name, &link.aliases, (&ns, &nl), &ifname, &endpoint_request(link), i == 0)
                .await
                .map_err(ApiError::from),
            Err(err) => Err(ApiError::new(err.status, err.message.clone())),
        };
        if let (Ok(ep), Ok(net)) = (&attached, &net) {
            sp.attr(h, "network.interface.name", ifname.clone());
            sp.attr(h, "network.local.address", ep.ip.to_string());
            sp.attr(h, "network.bridge", net.bridge.clone());
            first_ip.get_or_insert(ep.ip);
        }
        sp.finish(h, attached)?;
    }
    let h = sp.start(engine_telemetry::names::NETWORK_HOSTS);
    let r = write_hosts(d, &id);
    sp.finish(h, r)?;
    if d.networks.dns_scope(&id).is_some() {
        let h = sp.start(engine_telemetry::names::NETWORK_DNS);
        let r = start_dns(d, rec, &ns, sp.traceparent()).await;
        sp.finish(h, r)?;
    }
    if let Some(ip) = first_ip {
        let mut proxies = Vec::new();
        let result = async {
            for p in published(rec) {
                let h = sp.start(engine_telemetry::names::NETWORK_PROXY);
                sp.attr(h, "network.transport", p.proto.clone());
                sp.attr(h, "server.port", p.container_port as i64);
                let r = spawn_proxy(d, &id, &p, ip, proxies.len()).await;
                if let Ok(px) = &r {
                    sp.attr(h, "host.port", px.port.host_port as i64);
                    sp.attr(h, "process.pid", px.pid as i64);
                    proxies.push(px.clone());
                }
                sp.finish(h, r)?;
            }
            Ok::<(), ApiError>(())
        }
        .await;
        // recorded even when one failed: the ones started are stopped by `down`
        e.update(|r| r.ports = proxies);
        result?;
    }
    Ok(())
}

async fn spawn_proxy(
    d: &Arc<NetworkService>,
    id: &str,
    p: &Published,
    ip: Ipv4Addr,
    n: usize,
) -> Result<ports::Proxy, ApiError> {
    let dir = d.cfg.exec_root.join("proxy");
    std::fs::create_dir_all(&dir).map_err(|err| ApiError::internal(format!("creating {}: {err}", dir.display())))?;
    let stats = dir.join(format!("{id}-{}-{}-{n}", p.proto, p.container_port));
    let (bin, id, p) = (d.cfg.proxy_bin(), id.to_string(), p.clone());
    tokio::task::spawn_blocking(move || ports::spawn(&bin, &id, &p, ip, &stats))
        .await
        .map_err(|err| ApiError::internal(err.to_string()))?
        .map_err(|err| ApiError::internal(err.to_string()))
}

/// After the container's exit (or a failed start): its DNS server and proxies stopped,
/// endpoints released (its names leave the other containers' DNS at once), the namespace
/// unmounted (the kernel takes its veth pairs with it). Safe to call again.
pub async fn down(d: &Arc<NetworkService>, e: &Arc<Entry>) {
    let _net = e.net.lock().await;
    let rec = e.snapshot();
    let id = rec.id.clone();
    d.dns.stop(&id);
    if !rec.ports.is_empty() {
        let proxies = rec.ports.clone();
        let _ = tokio::task::spawn_blocking(move || proxies.iter().for_each(ports::stop)).await;
        e.update(|r| r.ports.clear());
    }
    // The namespace goes with its last process and its mount: the kernel then destroys the
    // veth pairs in it, off this path. A running container that joined it keeps it alive:
    // then the pairs are deleted here.
    let shared = d
        .containers
        .all()
        .iter()
        .map(|o| o.snapshot())
        .any(|o| o.state.running() && o.id != id && mode(&o.host_config) == Mode::Container(id.clone()));
    let veths = d.networks.release(&id);
    let path = d.networks.sandbox_path(&id);
    if path.exists() {
        let _ = tokio::task::spawn_blocking(move || engine_network::remove_namespace(&path)).await;
    }
    if shared {
        for v in veths {
            if let Err(err) = d.networks.delete_link(&v).await {
                crate::log!(d.cfg, "warn", "deleting {v} of {id}: {err}");
            }
        }
    }
}

/// After an engined restart, for a container still running: its proxies that died with the
/// host's last boot or were killed are started again.
pub async fn ensure_proxies(d: &Arc<NetworkService>, e: &Arc<Entry>) {
    let _net = e.net.lock().await;
    let rec = e.snapshot();
    let Some((_, ep)) = d.networks.endpoints_of(&rec.id).into_iter().find(|(_, ep)| ep.ifname == "eth0") else {
        return;
    };
    let mut kept = Vec::new();
    for (n, p) in rec.ports.iter().enumerate() {
        if ports::is_running(p) {
            kept.push(p.clone());
            continue;
        }
        match spawn_proxy(d, &rec.id, &p.port, ep.ip, n).await {
            Ok(px) => kept.push(px),
            Err(err) => crate::log!(
                d.cfg,
                "warn",
                "restarting the proxy of {} port {}: {}",
                rec.id,
                p.port.container_port,
                err.message
            ),
        }
    }
    e.update(|r| r.ports = kept);
}

/// Rewrites a container's /etc/hosts: itself with its addresses and `--add-host` entries. The
/// other containers of its user networks are the embedded DNS server's, as with Docker (one
/// name may have several addresses, and a file cannot take turns).
fn write_hosts(d: &NetworkService, id: &str) -> Result<(), ApiError> {
    let Ok(e) = d.containers.find(id) else { return Ok(()) };
    let rec = e.snapshot();
    if matches!(mode(&rec.host_config), Mode::Host | Mode::Container(_)) {
        return Ok(());
    }
    let own: Vec<std::net::IpAddr> = d
        .networks
        .endpoints_of(id)
        .iter()
        .flat_map(|(_, ep)| std::iter::once(ep.ip.into()).chain(ep.ipv6.map(Into::into)))
        .collect();
    let gateway = d.networks.find(engine_network::networks::DEFAULT).ok().and_then(|n| n.gateway);
    // legacy links on the default bridge are lines of the hosts file (on user networks, the
    // DNS server answers them)
    let mut content = etc::hosts(&rec.config.hostname, &own);
    for (alias, target) in linked(d, &rec.host_config) {
        let on_default =
            d.networks.endpoints_of(&target.id).into_iter().find(|(n, _)| n.name == engine_network::networks::DEFAULT);
        let on_user = d.networks.dns_scope(id).is_some();
        if let (Some((_, ep)), false) = (on_default, on_user) {
            let names = if alias == target.name { alias } else { format!("{alias} {}", target.name) };
            content += &format!("{}\t{names}\n", ep.ip);
        }
    }
    content += &crate::hostconfig::extra_hosts(&rec.host_config, gateway);
    let path = d.container_dir(id).join("hosts");
    etc::write_in_place(&path, &content).map_err(|err| ApiError::internal(format!("writing {}: {err}", path.display())))
}

// ---- inspect and ps ------------------------------------------------------------------------

/// The interfaces in a `/proc/<pid>/net/dev` but loopback, each with its 16 counters (receive:
/// bytes, packets, errs, drop, fifo, frame, compressed, multicast; then transmit's eight from
/// bytes).
pub fn interface_counters(net_dev: &str) -> Vec<(String, Vec<u64>)> {
    net_dev
        .lines()
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let n: Vec<u64> = counters.split_whitespace().filter_map(|c| c.parse().ok()).collect();
            let name = name.trim();
            (name != "lo" && n.len() >= 16).then(|| (name.to_string(), n))
        })
        .collect()
}

/// `NetworkSettings` of `GET /containers/{id}/json`.
pub fn settings_json(d: &NetworkService, rec: &ContainerRecord) -> Value {
    let eps: BTreeMap<String, engine_network::Endpoint> =
        d.networks.endpoints_of(&rec.id).into_iter().map(|(n, ep)| (n.id, ep)).collect();
    let mut networks = serde_json::Map::new();
    for link in &rec.networks {
        let ep = eps.get(&link.id);
        networks.insert(
            link.name.clone(),
            json!({
                "IPAMConfig": ipam_config_json(link),
                "Links": if link.links.is_empty() { Value::Null } else { json!(link.links) },
                "Aliases": if link.aliases.is_empty() { Value::Null } else { json!(link.aliases) },
                "NetworkID": link.id, "EndpointID": ep.map(|e| e.id.clone()).unwrap_or_default(),
                "Gateway": ep.map(|e| e.gateway.to_string()).unwrap_or_default(),
                "IPAddress": ep.map(|e| e.ip.to_string()).unwrap_or_default(),
                "IPPrefixLen": ep.map(|e| e.prefix).unwrap_or(0),
                "IPv6Gateway": ep.and_then(|e| e.gateway_v6).map(|g| g.to_string()).unwrap_or_default(),
                "GlobalIPv6Address": ep.and_then(|e| e.ipv6).map(|ip| ip.to_string()).unwrap_or_default(),
                "GlobalIPv6PrefixLen": ep.map(|e| e.prefix_v6).unwrap_or(0),
                "MacAddress": ep.map(|e| e.mac.clone()).or_else(|| link.mac_address.clone()).unwrap_or_default(),
                "DriverOpts": if link.driver_opts.is_empty() { Value::Null } else { json!(link.driver_opts) },
            }),
        );
    }
    let default =
        rec.networks.iter().find(|l| l.name == engine_network::networks::DEFAULT).and_then(|l| eps.get(&l.id));
    let sandbox = if rec.state.running() && matches!(mode(&rec.host_config), Mode::Bridge | Mode::None) {
        d.networks.sandbox_path(&rec.id).display().to_string()
    } else {
        String::new()
    };
    json!({
        "Bridge": "", "SandboxID": if sandbox.is_empty() { "" } else { &rec.id }, "HairpinMode": false,
        "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
        "Ports": ports_map(rec), "SandboxKey": sandbox,
        "SecondaryIPAddresses": null, "SecondaryIPv6Addresses": null,
        "EndpointID": default.map(|e| e.id.clone()).unwrap_or_default(),
        "Gateway": default.map(|e| e.gateway.to_string()).unwrap_or_default(),
        "GlobalIPv6Address": default.and_then(|e| e.ipv6).map(|ip| ip.to_string()).unwrap_or_default(),
        "GlobalIPv6PrefixLen": default.map(|e| e.prefix_v6).unwrap_or(0),
        "IPAddress": default.map(|e| e.ip.to_string()).unwrap_or_default(),
        "IPPrefixLen": default.map(|e| e.prefix).unwrap_or(0),
        "IPv6Gateway": default.and_then(|e| e.gateway_v6).map(|g| g.to_string()).unwrap_or_default(),
        "MacAddress": default.map(|e| e.mac.clone()).unwrap_or_default(),
        "Networks": networks,
    })
}

/// `"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]` while running; exposed ports
/// that are not published map to null.
fn ports_map(rec: &ContainerRecord) -> Value {
    let mut m = serde_json::Map::new();
    if !rec.state.running() {
        return Value::Object(m);
    }
    for key in rec.config.exposed_ports.iter().flat_map(|e| e.keys()) {
        m.insert(key.clone(), Value::Null);
    }
    for p in &rec.ports {
        let key = format!("{}/{}", p.port.container_port, p.port.proto);
        let entry = m.entry(key).or_insert_with(|| json!([]));
        if !entry.is_array() {
            *entry = json!([]);
        }
        if let Some(a) = entry.as_array_mut() {
            for ip in host_ips(p) {
                a.push(json!({ "HostIp": ip, "HostPort": p.port.host_port.to_string() }));
            }
        }
    }
    Value::Object(m)
}

/// The host addresses a proxy serves, as dockerd lists them: `0.0.0.0` and `::` for a port
/// published on every address of a host with IPv6.
fn host_ips(p: &ports::Proxy) -> Vec<String> {
    let mut ips = vec![p.port.host_ip.to_string()];
    if p.dual_stack {
        ips.push("::".to_string());
    }
    ips
}

/// `Ports` of `GET /containers/json`.
pub fn ps_ports(rec: &ContainerRecord) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    if rec.state.running() {
        for p in &rec.ports {
            for ip in host_ips(p) {
                out.push(json!({ "IP": ip, "PrivatePort": p.port.container_port, "PublicPort": p.port.host_port, "Type": p.port.proto }));
            }
        }
    }
    for key in rec.config.exposed_ports.iter().flat_map(|e| e.keys()) {
        if let Ok((port, proto)) = ports::parse_port_proto(key) {
            if !out.iter().any(|o| o["PrivatePort"] == json!(port) && o["Type"] == json!(proto)) {
                out.push(json!({ "PrivatePort": port, "Type": proto }));
            }
        }
    }
    out
}

/// `NetworkSettings.Networks` of `GET /containers/json`.
pub fn ps_networks(d: &NetworkService, rec: &ContainerRecord) -> Value {
    settings_json(d, rec)["Networks"].clone()
}

// ---- /networks -------------------------------------------------------------------------

fn network_json(d: &NetworkService, n: &NetworkRecord) -> Value {
    let containers: serde_json::Map<String, Value> = n
        .endpoints
        .values()
        .map(|ep| {
            let name = d.containers.find(&ep.container).map(|e| e.snapshot().name).unwrap_or_else(|_| ep.container_name.clone());
            let v6 = ep.ipv6.map(|ip| format!("{ip}/{}", ep.prefix_v6)).unwrap_or_default();
            (ep.container.clone(), json!({ "Name": name, "EndpointID": ep.id, "MacAddress": ep.mac, "IPv4Address": format!("{}/{}", ep.ip, ep.prefix), "IPv6Address": v6 }))
        })
        .collect();
    // a pool as dockerd shows it: IPRange and AuxiliaryAddresses only when given
    let pool = |subnet: String, gateway: String, range: Option<String>, aux: BTreeMap<&String, String>| {
        let mut c = json!({ "Subnet": subnet, "Gateway": gateway });
        if let Some(r) = range {
            c["IPRange"] = json!(r);
        }
        if !aux.is_empty() {
            c["AuxiliaryAddresses"] = json!(aux);
        }
        c
    };
    let mut config: Vec<Value> = match (n.subnet, n.gateway) {
        (Some(s), Some(g)) => vec![pool(
            s.to_string(),
            g.to_string(),
            n.ip_range.map(|r| r.to_string()),
            n.aux_addresses.iter().map(|(k, v)| (k, v.to_string())).collect(),
        )],
        _ => Vec::new(),
    };
    if let Some(v6) = &n.ipv6 {
        config.push(pool(
            v6.subnet.to_string(),
            v6.gateway.to_string(),
            v6.ip_range.map(|r| r.to_string()),
            v6.aux_addresses.iter().map(|(k, v)| (k, v.to_string())).collect(),
        ));
    }
    // only what the user set (and the default bridge's own), as dockerd: compose compares these
    // with its project's and recreates a network whose options differ
    let options = &n.options;
    json!({
        "Name": n.name, "Id": n.id, "Created": n.created, "Scope": "local", "Driver": n.driver,
        "EnableIPv6": n.ipv6_enabled().is_some(), "IPAM": { "Driver": "default", "Options": null, "Config": config },
        "Internal": n.internal, "Attachable": false, "Ingress": false, "ConfigFrom": { "Network": "" }, "ConfigOnly": false,
        "Containers": containers, "Options": options, "Labels": n.labels,
    })
}

/// `GET /networks`, filters `name` (substring), `id` (prefix), `driver`, `type`
/// (custom|builtin), `label`.
pub fn list(d: &NetworkService, q: &Query) -> Result<Resp, ApiError> {
    let f = http::Filters::parse(q)?;
    f.only(&["name", "id", "driver", "type", "label", "dangling"])?;
    let out: Vec<Value> = d
        .networks
        .list()
        .iter()
        .filter(|n| {
            f.get("name").iter().all(|x| n.name.contains(x.as_str()))
                && f.get("id").iter().all(|x| n.id.starts_with(x.as_str()))
                && f.get("driver").iter().all(|x| n.driver == *x)
                && f.get("type").iter().all(|t| (t == "builtin") == n.predefined())
                && f.get("label").iter().all(|l| match l.split_once('=') {
                    Some((k, v)) => n.labels.get(k).map(String::as_str) == Some(v),
                    None => n.labels.contains_key(l),
                })
                && f.get("dangling")
                    .iter()
                    .all(|x| (x == "true" || x == "1") == (n.endpoints.is_empty() && !n.predefined()))
        })
        .map(|n| network_json(d, n))
        .collect();
    Ok(http::json(StatusCode::OK, &out))
}

pub fn inspect(d: &NetworkService, id: &str) -> Result<Resp, ApiError> {
    let n = d.networks.find(id)?;
    Ok(http::json(StatusCode::OK, &network_json(d, &n)))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateBody {
    name: String,
    driver: Option<String>,
    internal: bool,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: bool,
    #[serde(rename = "IPAM")]
    ipam: Option<IpamBody>,
    options: Option<BTreeMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct IpamBody {
    driver: Option<String>,
    config: Option<Vec<IpamConfigBody>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct IpamConfigBody {
    subnet: Option<String>,
    #[serde(rename = "IPRange")]
    ip_range: Option<String>,
    gateway: Option<String>,
    #[serde(rename = "AuxiliaryAddresses")]
    aux_addresses: Option<BTreeMap<String, String>>,
}

/// `POST /networks/create`.
pub async fn create(d: &Arc<NetworkService>, body: CreateBody) -> Result<Resp, ApiError> {
    if body.name.is_empty() {
        return Err(ApiError::bad_request("network name is empty"));
    }
    let ipam = body.ipam.unwrap_or_default();
    if ipam.driver.as_deref().is_some_and(|x| !x.is_empty() && x != "default") {
        return Err(ApiError::bad_request(format!(
            "IPAM driver {:?} is not supported (only default)",
            ipam.driver.unwrap_or_default()
        )));
    }
    let configs = ipam.config.unwrap_or_default();
    let (v6, v4): (Vec<&IpamConfigBody>, Vec<&IpamConfigBody>) =
        configs.iter().partition(|c| c.subnet.as_deref().unwrap_or("").contains(':'));
    if v4.len() > 1 || v6.len() > 1 {
        return Err(ApiError::bad_request("one IPv4 and one IPv6 subnet per network are supported"));
    }
    let c6 = v6.first();
    let ip_range_v6 = c6
        .and_then(|c| c.ip_range.as_deref())
        .filter(|r| !r.is_empty())
        .map(|r| r.parse::<ipnet::Ipv6Net>().map_err(|_| ApiError::bad_request(format!("invalid ip-range {r:?}"))))
        .transpose()?;
    // each pool's auxiliary addresses, of the pool's own family
    fn aux<A: std::str::FromStr>(c: Option<&&IpamConfigBody>) -> Result<BTreeMap<String, A>, ApiError> {
        c.and_then(|c| c.aux_addresses.as_ref())
            .into_iter()
            .flatten()
            .map(|(name, ip)| {
                ip.parse::<A>()
                    .map(|a| (name.clone(), a))
                    .map_err(|_| ApiError::bad_request(format!("invalid auxiliary address {name}={ip}")))
            })
            .collect()
    }
    let subnet_v6 = c6
        .and_then(|c| c.subnet.as_deref())
        .map(|s| s.parse::<ipnet::Ipv6Net>().map_err(|_| ApiError::bad_request(format!("invalid subnet {s:?}"))))
        .transpose()?;
    let gateway_v6 = c6
        .and_then(|c| c.gateway.as_deref())
        .filter(|g| !g.is_empty())
        .map(|g| g.parse::<std::net::Ipv6Addr>().map_err(|_| ApiError::bad_request(format!("invalid gateway {g:?}"))))
        .transpose()?;
    let parse_net = |s: &Option<String>, what: &str| -> Result<Option<ipnet::Ipv4Net>, ApiError> {
        s.as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<ipnet::Ipv4Net>().map_err(|_| ApiError::bad_request(format!("invalid {what} {s:?}"))))
            .transpose()
    };
    let c = v4.first();
    let req = engine_network::CreateRequest {
        name: body.name,
        driver: body.driver.unwrap_or_default(),
        subnet: c.map(|c| parse_net(&c.subnet, "subnet")).transpose()?.flatten(),
        gateway: c
            .and_then(|c| c.gateway.as_deref())
            .filter(|g| !g.is_empty())
            .map(|g| g.parse::<Ipv4Addr>().map_err(|_| ApiError::bad_request(format!("invalid gateway {g:?}"))))
            .transpose()?,
        ip_range: c.map(|c| parse_net(&c.ip_range, "ip-range")).transpose()?.flatten(),
        aux_addresses: aux(c)?,
        internal: body.internal,
        labels: body.labels.unwrap_or_default(),
        options: body.options.unwrap_or_default(),
        ipv6: body.enable_ipv6,
        subnet_v6,
        gateway_v6,
        ip_range_v6,
        aux_addresses_v6: aux(c6)?,
    };
    if req.gateway.is_some() && req.subnet.is_none() {
        return Err(ApiError::bad_request("a gateway needs a subnet"));
    }
    let rec = d.networks.create(req, engine_util::time::now_rfc3339_nanos()).await?;
    network_event(d, "create", &rec, None);
    Ok(http::json(StatusCode::CREATED, &json!({ "Id": rec.id, "Warning": "" })))
}

/// `DELETE /networks/{id}`.
pub async fn remove(d: &Arc<NetworkService>, id: &str) -> Result<Resp, ApiError> {
    let rec = d.networks.remove(id).await?;
    network_event(d, "destroy", &rec, None);
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `POST /networks/prune`: every user network without containers on it, that the filters
/// `label=k[=v]` and `label!=k[=v]` keep.
pub async fn prune(d: &Arc<NetworkService>, q: &Query) -> Result<Resp, ApiError> {
    let f = http::Filters::parse(q)?;
    f.only(&["label", "label!"])?;
    let has = |n: &NetworkRecord, l: &str| match l.split_once('=') {
        Some((k, v)) => n.labels.get(k).map(String::as_str) == Some(v),
        None => n.labels.contains_key(l),
    };
    let mut deleted = Vec::new();
    let chosen = d
        .networks
        .list()
        .into_iter()
        .filter(|n| !n.predefined() && n.endpoints.is_empty())
        .filter(|n| f.get("label").iter().all(|l| has(n, l)) && !f.get("label!").iter().any(|l| has(n, l)));
    for n in chosen {
        if let Ok(rec) = d.networks.remove(&n.id).await {
            network_event(d, "destroy", &rec, None);
            deleted.push(rec.name);
        }
    }
    Ok(http::json(StatusCode::OK, &json!({ "NetworksDeleted": deleted })))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ConnectBody {
    container: String,
    endpoint_config: Option<engine_docker_api::EndpointSettings>,
    force: bool,
}

/// `POST /networks/{id}/connect`: the container joins the network now if it runs, and at each
/// start from now on.
pub async fn connect(d: &Arc<NetworkService>, net: &str, body: ConnectBody) -> Result<Resp, ApiError> {
    let n = d.networks.find(net)?;
    let e = d.containers.find(&body.container)?;
    let _op = e.op.lock().await;
    // an exit tearing the network down waits for this, or this finds it torn down
    let _net = e.net.lock().await;
    let rec = e.snapshot();
    match mode(&rec.host_config) {
        Mode::Bridge if n.is_bridge() => {}
        Mode::Host | Mode::None | Mode::Container(_) => return Err(ApiError::new(StatusCode::FORBIDDEN, "container sharing network namespace with another container or host cannot be connected to any other network")),
        Mode::Bridge => return Err(ApiError::new(StatusCode::FORBIDDEN, format!("container cannot be connected to network {} (driver {})", n.name, n.driver))),
    }
    if rec.networks.iter().any(|l| l.id == n.id) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("endpoint with name {} already exists in network {}", rec.name, n.name),
        ));
    }
    let mut hc = rec.host_config.clone();
    hc.network_mode = n.name.clone();
    hc.port_bindings = None;
    hc.publish_all_ports = false;
    let nc =
        NetworkingConfig { endpoints_config: body.endpoint_config.map(|ep| BTreeMap::from([(n.name.clone(), ep)])) };
    let link = plan(d, &mut hc, Some(&nc), "")?.remove(0);
    if rec.state.running() {
        let used: Vec<String> = d.networks.endpoints_of(&rec.id).into_iter().map(|(_, ep)| ep.ifname).collect();
        let ifname = (0..).map(|i| format!("eth{i}")).find(|n| !used.contains(n)).unwrap_or_default();
        let path = d.networks.sandbox_path(&rec.id);
        let opened = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::File::open(&path).map_err(|err| err.to_string()).and_then(|f| {
                    engine_network::Netlink::inside(&f, &path).map(|nl| (f, nl)).map_err(|err| err.to_string())
                })
            })
            .await
            .map_err(|err| ApiError::internal(err.to_string()))?
            .map_err(|err| ApiError::internal(format!("opening the container's network namespace: {err}")))?
        };
        d.networks
            .attach(
                &n.id,
                &rec.id,
                &rec.name,
                &link.aliases,
                (&opened.0, &opened.1),
                &ifname,
                &endpoint_request(&link),
                false,
            )
            .await?;
    }
    e.update(|r| r.networks.push(link));
    d.persist(&e);
    if rec.state.running() {
        let _ = write_hosts(d, &rec.id);
        // on its first user network: the embedded DNS server, and a resolv.conf naming it
        // (the connection stands without it: names then fail in the container, and the log says why)
        if !d.dns.is_running(&rec.id) {
            if let Ok(ns) = std::fs::File::open(d.networks.sandbox_path(&rec.id)) {
                if let Err(err) = start_dns(d, &e.snapshot(), &ns, None).await {
                    crate::log!(d.cfg, "warn", "starting the DNS server of {}: {}", rec.id, err.message);
                }
            }
        } else {
            refresh_dns_links(d, &e);
        }
    }
    network_event(d, "connect", &n, Some(&rec.id));
    Ok(empty(StatusCode::OK))
}

/// `POST /networks/{id}/disconnect`.
pub async fn disconnect(d: &Arc<NetworkService>, net: &str, body: ConnectBody) -> Result<Resp, ApiError> {
    let n = d.networks.find(net)?;
    let e = d.containers.find(&body.container)?;
    let _op = e.op.lock().await;
    let _net = e.net.lock().await;
    let rec = e.snapshot();
    // (force or not, as dockerd: force helps with a network that is gone, not with this)
    if !rec.networks.iter().any(|l| l.id == n.id) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("container {} is not connected to network {}", rec.id, n.name),
        ));
    }
    if matches!(mode(&rec.host_config), Mode::Host) || (!n.is_bridge() && !body.force) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "container cannot be disconnected from host network or connected to host network",
        ));
    }
    d.networks.detach(&n.id, &rec.id).await?;
    e.update(|r| r.networks.retain(|l| l.id != n.id));
    d.persist(&e);
    let _ = write_hosts(d, &rec.id);
    refresh_dns_links(d, &e);
    network_event(d, "disconnect", &n, Some(&rec.id));
    Ok(empty(StatusCode::OK))
}

fn network_event(d: &NetworkService, action: &str, n: &NetworkRecord, container: Option<&str>) {
    d.events.publish(crate::events::Event::network(&n.id, &n.name, &n.driver, action, container));
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use serde_json::json;

    use super::*;
    use crate::testing;
    use crate::trace::Trace;

    async fn body_json(r: Resp) -> (StatusCode, Value) {
        let status = r.status();
        let bytes = r.into_body().collect().await.expect("the body").to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn host_config(v: Value) -> HostConfig {
        serde_json::from_value(v).expect("a HostConfig")
    }

    #[tokio::test]
    async fn the_predefined_networks_are_listed_inspected_and_kept() {
        let t = testing::daemon().await;
        let n = &t.daemon.network_service;
        let (status, all) = body_json(list(n, &Query::parse(None)).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        let mut names: Vec<&str> = all.as_array().unwrap().iter().filter_map(|n| n["Name"].as_str()).collect();
        names.sort();
        assert_eq!(names, ["host", "none"], "no default bridge: none was asked for");
        let filtered = Query::parse(Some("filters=%7B%22driver%22%3A%5B%22null%22%5D%7D"));
        let (_, nulls) = body_json(list(n, &filtered).unwrap()).await;
        assert_eq!(nulls.as_array().map(Vec::len), Some(1));
        assert_eq!(nulls[0]["Name"], "none");
        let (_, host) = body_json(inspect(n, "host").unwrap()).await;
        assert_eq!((host["Driver"].as_str(), host["Scope"].as_str()), (Some("host"), Some("local")));
        assert_eq!(inspect(n, "nope").unwrap_err().status, StatusCode::NOT_FOUND);
        let refused = remove(n, "host").await.unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(refused.message.contains("pre-defined network"), "{}", refused.message);
        let two_v6 = json!({"Name": "v6", "EnableIPv6": true, "IPAM": {"Config": [{"Subnet": "fd00:9::/64"}, {"Subnet": "fd00:a::/64"}]}});
        let bad = create(n, serde_json::from_value(two_v6).unwrap()).await;
        assert_eq!(bad.unwrap_err().status, StatusCode::BAD_REQUEST);
        let (_, after) = body_json(list(n, &Query::parse(None)).unwrap()).await;
        assert_eq!(after.as_array().map(Vec::len), Some(2), "a refused create changed the networks");
    }

    #[tokio::test]
    async fn a_plan_checks_what_docker_refuses_and_writes_the_mode_back_canonical() {
        let t = testing::daemon().await;
        let (d, n) = (&t.daemon, &t.daemon.network_service);
        let trace = Trace::background(None, "test");
        let body = serde_json::from_value(json!({"Image": "tiny", "HostConfig": {"NetworkMode": "host"}})).unwrap();
        let id = d.create(&trace, Some("web".into()), body).await.unwrap();

        // container:<name> becomes container:<id>; ports cannot go with it
        let mut hc = host_config(json!({"NetworkMode": "container:web"}));
        assert!(plan(n, &mut hc, None, "").unwrap().is_empty());
        assert_eq!(hc.network_mode, format!("container:{id}"));
        let mut hc = host_config(json!({"NetworkMode": "container:nope"}));
        let err = plan(n, &mut hc, None, "").unwrap_err();
        assert_eq!((err.status, err.message.as_str()), (StatusCode::BAD_REQUEST, "No such container: nope"));
        let mut hc = host_config(
            json!({"NetworkMode": "container:web", "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}}),
        );
        assert!(plan(n, &mut hc, None, "").unwrap_err().message.contains("port publishing"));

        // host: no other network, and nothing published
        let mut hc = host_config(json!({"NetworkMode": "host", "PortBindings": {"80/tcp": [{"HostPort": "8080"}]}}));
        let links = plan(n, &mut hc, None, "").unwrap();
        assert_eq!((links.len(), links[0].name.as_str()), (1, "host"));
        assert!(hc.port_bindings.is_none(), "a host container publishes nothing");
        let nc: NetworkingConfig =
            serde_json::from_value(json!({"EndpointsConfig": {"host": {}, "none": {}}})).unwrap();
        let err = plan(n, &mut host_config(json!({"NetworkMode": "host"})), Some(&nc), "").unwrap_err();
        assert!(err.message.contains("cannot be connected to other networks"), "{}", err.message);
        // the default network is not there
        let err = plan(n, &mut host_config(json!({})), None, "").unwrap_err();
        assert_eq!(err.status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_container_joins_the_namespace_of_a_running_one_only() {
        let t = testing::daemon().await;
        let d = &t.daemon;
        let trace = Trace::background(None, "test");
        let create = |name: &str, mode: &str| {
            let body = serde_json::from_value(json!({"Image": "tiny", "HostConfig": {"NetworkMode": mode}})).unwrap();
            d.create(&trace, Some(name.into()), body)
        };
        let web = create("web", "host").await.unwrap();
        let side = create("side", "container:web").await.unwrap();
        let side = d.containers.find(&side).unwrap();
        let err = d.start(&trace, &side).await.unwrap_err();
        assert_eq!(err.status, StatusCode::CONFLICT);
        assert!(err.message.contains("cannot join network of a non running container"), "{}", err.message);
        assert_eq!(t.fake.status(&side.snapshot().id), None, "a refused start left a task");
        let web = d.containers.find(&web).unwrap();
        d.start(&trace, &web).await.unwrap();
        // web uses the host's namespace: so does side
        assert_eq!(joined_namespace(&d.network_service, "web").unwrap(), None);
        d.start(&trace, &side).await.unwrap();
        let settings = settings_json(&d.network_service, &side.snapshot());
        assert_eq!(settings["Networks"], json!({}), "{settings}");
        // a container on the host's network is connected to no other
        let body = serde_json::from_value(json!({"Container": "web"})).unwrap();
        let err = connect(&d.network_service, "none", body).await.unwrap_err();
        assert_eq!(err.status, StatusCode::FORBIDDEN);
    }
}
