//! The networks of one engined: their records (one JSON file each under the data root, with
//! their address allocations and endpoints), their bridges and firewall rules, and the
//! endpoints of containers on them (a veth pair per container and network).
//!
//! Three networks always exist, as in Docker: `bridge` (the default, on the Linux bridge
//! named by the configuration, `engine0` by default), `host` and `none`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::firewall::{BridgeRules, Firewall, FirewallError};
use crate::ipam::{self, Allocations, Allocations6, IpamError, Pool};
use crate::netlink::{Netlink, NetlinkError};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network {0} not found")]
    NotFound(String),
    #[error("network with name {0} already exists")]
    Exists(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

type Result<T> = std::result::Result<T, NetworkError>;

pub const DEFAULT: &str = "bridge";

/// A container's place on a network while it runs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Endpoint {
    pub id: String,
    pub container: String,
    pub container_name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    /// The host end of the veth pair.
    pub host_veth: String,
    /// The name inside the container (eth0, eth1, …).
    pub ifname: String,
    /// Its IPv6 address on a network with `--ipv6`, with the prefix and gateway.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    #[serde(default)]
    pub prefix_v6: u8,
    #[serde(default)]
    pub gateway_v6: Option<Ipv6Addr>,
}

/// The IPv6 side of a network: its pool, and with `--ipv6` its addresses. A pool given without
/// `--ipv6` is kept and shown (as dockerd keeps it) but gives no container an address.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Ipv6Side {
    pub subnet: Ipv6Net,
    pub gateway: Ipv6Addr,
    /// Whether the user chose the subnet (else a unique local /64 of the network's id).
    #[serde(default)]
    pub configured: bool,
    /// `--ipv6`: containers get addresses of the pool, the bridge its gateway.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Where addresses are handed out from (`--ip-range` of the IPv6 pool).
    #[serde(default)]
    pub ip_range: Option<Ipv6Net>,
    /// `--aux-address` of the IPv6 pool: name → address, never handed out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_addresses: BTreeMap<String, Ipv6Addr>,
    #[serde(default)]
    pub allocations: Allocations6,
}

/// The address book of a new pool: its range checked to lie inside `subnet`, its auxiliary
/// addresses checked and reserved.
fn address_book<A>(
    subnet: ipnet::IpNet,
    range: Option<ipnet::IpNet>,
    aux: &BTreeMap<String, A>,
) -> Result<ipam::AddressBook<A>>
where
    A: Copy + Ord + Into<IpAddr> + std::fmt::Display,
{
    if let Some(r) = range {
        if !subnet.contains(&r.network()) || r.prefix_len() < subnet.prefix_len() {
            return Err(NetworkError::Invalid(format!("ip-range {r} is not inside subnet {subnet}")));
        }
    }
    let mut book = ipam::AddressBook::default();
    for (name, ip) in aux {
        if !subnet.contains(&(*ip).into()) {
            return Err(NetworkError::Invalid(format!("auxiliary address {name}={ip} is not inside subnet {subnet}")));
        }
        book.reserved.insert(*ip);
    }
    Ok(book)
}

/// Records written before a pool could be given without `--ipv6` have a side only with it.
fn enabled() -> bool {
    true
}

/// What engined keeps of a network (`<data-root>/network/<id>.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    /// bridge, host or null.
    pub driver: String,
    pub created: String,
    /// The Linux bridge (bridge driver only).
    #[serde(default)]
    pub bridge: String,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub ip_range: Option<Ipv4Net>,
    /// Whether the user chose the subnet (a default one may move to avoid a host route).
    #[serde(default)]
    pub subnet_configured: bool,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub allocations: Allocations,
    /// Container id → its endpoint.
    #[serde(default)]
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Its IPv6 pool (and with `--ipv6`, its addresses).
    #[serde(default)]
    pub ipv6: Option<Ipv6Side>,
    /// `--aux-address` of the IPv4 pool: name → address, never handed out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_addresses: BTreeMap<String, Ipv4Addr>,
}

impl NetworkRecord {
    /// The IPv6 side of a dual stack network (`--ipv6`), whose containers get IPv6 addresses.
    pub fn ipv6_enabled(&self) -> Option<&Ipv6Side> {
        self.ipv6.as_ref().filter(|v6| v6.enabled)
    }
    pub fn predefined(&self) -> bool {
        matches!(self.name.as_str(), DEFAULT | "host" | "none")
    }
    pub fn is_bridge(&self) -> bool {
        self.driver == "bridge"
    }
}

/// What `network create` asks for.
#[derive(Clone, Debug, Default)]
pub struct CreateRequest {
    pub name: String,
    pub driver: String,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Ipv4Net>,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    /// `--aux-address`es of the IPv4 pool.
    pub aux_addresses: BTreeMap<String, Ipv4Addr>,
    /// Dual stack: an IPv6 subnet too (`subnet_v6`, else a unique local /64).
    pub ipv6: bool,
    /// An IPv6 pool (kept without `ipv6`, giving no addresses, as dockerd keeps it).
    pub subnet_v6: Option<Ipv6Net>,
    pub gateway_v6: Option<Ipv6Addr>,
    pub ip_range_v6: Option<Ipv6Net>,
    pub aux_addresses_v6: BTreeMap<String, Ipv6Addr>,
}

/// What a container asks of its endpoint on a network, beyond being on it.
#[derive(Clone, Debug, Default)]
pub struct EndpointRequest {
    /// `--ip`: an address of a subnet the user configured.
    pub ipv4: Option<Ipv4Addr>,
    /// `--ip6`: an address of the network's IPv6 pool (given only with `--ipv6`).
    pub ipv6: Option<Ipv6Addr>,
    /// `--link-local-ip`: link-local addresses added to the interface.
    pub link_local: Vec<IpAddr>,
    /// `--mac-address`; else one made of the IPv4 address.
    pub mac: Option<[u8; 6]>,
}

/// The bridge name that asks for no default network.
pub const NO_BRIDGE: &str = "none";

pub struct Config {
    /// Where the records go (`<data-root>/network`).
    pub dir: PathBuf,
    /// Where container network namespaces are mounted (`<exec-root>/netns`).
    pub netns_dir: PathBuf,
    /// The default network's Linux bridge; [`NO_BRIDGE`] (dockerd's `--bridge=none`): no
    /// default network.
    pub bridge_name: String,
    /// The default bridge's address and prefix (dockerd's `--bip`).
    pub bip: Option<Ipv4Net>,
    /// IPv6 on the default bridge (dockerd's `--ipv6`): its subnet (`--fixed-cidr-v6`), or
    /// `Some(None)` for a unique local /64.
    pub default_v6: Option<Option<Ipv6Net>>,
    pub pools: Vec<Pool>,
    /// Manage firewall rules (dockerd's `--iptables`).
    pub iptables: bool,
    /// auto, iptables, nftables or none.
    pub firewall: String,
}

pub struct Networks {
    cfg: Config,
    records: Mutex<BTreeMap<String, NetworkRecord>>,
    host: Netlink,
    firewall: Option<Firewall>,
    /// The same rules for the IPv6 subnets of `--ipv6` networks (ip6tables, an ip6 table).
    firewall6: Option<Firewall>,
    /// What the firewall is (`iptables v1.8.9 (nf_tables)`), for `info`.
    firewall_backend: Option<String>,
    /// Serialises create/remove against each other (subnet choice, bridge names).
    admin: tokio::sync::Mutex<()>,
    /// Serialises record writes (one temp file per record; the newest state is written last).
    saving: Mutex<()>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NetworkError + '_ {
    move |source| NetworkError::Io { path: path.to_path_buf(), source }
}

/// A new network or endpoint id.
fn random_id() -> Result<String> {
    engine_util::id::new_id().map_err(|source| NetworkError::Io { path: "getrandom".into(), source })
}

/// A valid network name, as dockerd's (libnetwork takes any name that is not blank: "test 01"
/// is one), within the engine's length bound; no `/` (the API could not name it) and no
/// control characters.
pub fn check_name(n: &str) -> Result<()> {
    let bad = |why: String| {
        Err(NetworkError::Invalid(format!("invalid network name {:?}: {why}", engine_util::name::shown(n))))
    };
    if n.len() > engine_util::name::MAX_NAME_LEN {
        return bad(engine_util::name::NameError::TooLong(n.len()).to_string());
    }
    if n.trim().is_empty() || n.contains('/') || n.chars().any(char::is_control) {
        return bad("a name is not blank and has no / or control characters".into());
    }
    Ok(())
}

impl Networks {
    /// Loads the records, makes the predefined networks, and brings every bridge and the
    /// firewall rules up to date (after a restart or a reboot: missing ones are made again;
    /// endpoints of running containers are kept).
    pub async fn open(cfg: Config, now: String) -> Result<Networks> {
        std::fs::create_dir_all(&cfg.dir).map_err(io(&cfg.dir))?;
        std::fs::create_dir_all(&cfg.netns_dir).map_err(io(&cfg.netns_dir))?;
        let mut records = BTreeMap::new();
        for ent in std::fs::read_dir(&cfg.dir).map_err(io(&cfg.dir))? {
            let path = ent.map_err(io(&cfg.dir))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let rec: NetworkRecord = std::fs::read(&path).map_err(io(&path)).and_then(|b| {
                    serde_json::from_slice(&b).map_err(|e| NetworkError::Invalid(format!("{}: {e}", path.display())))
                })?;
                records.insert(rec.id.clone(), rec);
            }
        }
        let chain_prefix = crate::firewall::chain_prefix(&cfg.bridge_name);
        let firewall = if cfg.iptables { Firewall::detect(&chain_prefix, &cfg.firewall)? } else { None };
        let firewall_backend = firewall.as_ref().map(|f| f.backend());
        let firewall6 = firewall.as_ref().and_then(Firewall::for_ipv6);
        let n = Networks {
            host: Netlink::host()?,
            firewall,
            firewall6,
            firewall_backend,
            records: Mutex::new(records),
            admin: Default::default(),
            saving: Mutex::new(()),
            cfg,
        };
        for (name, driver) in [("host", "host"), ("none", "null")] {
            if n.by_name(name).is_none() {
                let rec = NetworkRecord {
                    id: random_id()?,
                    name: name.into(),
                    driver: driver.into(),
                    created: now.clone(),
                    bridge: String::new(),
                    subnet: None,
                    gateway: None,
                    ip_range: None,
                    subnet_configured: false,
                    internal: false,
                    labels: Default::default(),
                    options: Default::default(),
                    allocations: Default::default(),
                    endpoints: Default::default(),
                    ipv6: None,
                    aux_addresses: Default::default(),
                };
                n.save(&rec)?;
                n.lock().insert(rec.id.clone(), rec);
            }
        }
        if n.cfg.bridge_name == NO_BRIDGE {
            n.drop_default()?;
        } else {
            n.ensure_default(now).await?;
        }
        let bridges: Vec<NetworkRecord> = n.list().into_iter().filter(|r| r.is_bridge() && r.name != DEFAULT).collect();
        for r in bridges {
            n.ensure_bridge_of(&r).await?;
        }
        n.apply_firewall()?;
        if n.firewall.is_some() {
            // Containers reach the outside through the host, as with Docker.
            let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
        }
        Ok(n)
    }

    /// With no default bridge: the default network an earlier configuration made goes, unless
    /// containers are still on it (it goes with the next start without them).
    fn drop_default(&self) -> Result<()> {
        let mut map = self.lock();
        let Some(rec) = map.values().find(|r| r.name == DEFAULT && r.endpoints.is_empty()).cloned() else {
            return Ok(());
        };
        let path = self.cfg.dir.join(format!("{}.json", rec.id));
        std::fs::remove_file(&path).map_err(io(&path))?;
        map.remove(&rec.id);
        Ok(())
    }

    async fn ensure_default(&self, now: String) -> Result<()> {
        let existing = self.by_name(DEFAULT);
        let new_id = random_id()?;
        let mut rec = existing.clone().unwrap_or_else(|| NetworkRecord {
            id: new_id,
            name: DEFAULT.into(),
            driver: "bridge".into(),
            created: now,
            bridge: self.cfg.bridge_name.clone(),
            subnet: None,
            gateway: None,
            ip_range: None,
            subnet_configured: false,
            internal: false,
            labels: Default::default(),
            options: BTreeMap::from([
                ("com.docker.network.bridge.default_bridge".into(), "true".into()),
                ("com.docker.network.bridge.name".into(), self.cfg.bridge_name.clone()),
            ]),
            allocations: Default::default(),
            endpoints: Default::default(),
            ipv6: None,
            aux_addresses: Default::default(),
        });
        rec.bridge = self.cfg.bridge_name.clone();
        let bridge_exists = self.host.index(&rec.bridge).await?.is_some();
        match self.cfg.bip {
            Some(bip) => {
                rec.subnet = Some(bip.trunc());
                rec.gateway = Some(bip.addr());
                rec.subnet_configured = true;
            }
            // A subnet of a bridge that is gone is chosen again (it may collide now), unless
            // containers still hold addresses of it.
            None if rec.subnet.is_none() || (!bridge_exists && rec.endpoints.is_empty()) => {
                let subnet = self.free_subnet(Some(&rec.id)).await?;
                rec.subnet = Some(subnet);
                rec.gateway = subnet.hosts().next();
            }
            None => {}
        }
        rec.ipv6 = match self.cfg.default_v6 {
            None => None,
            Some(wanted) => {
                let subnet = wanted.unwrap_or_else(|| ipam::ula_subnet(&rec.id));
                match rec.ipv6.take() {
                    // the same subnet keeps the addresses its containers hold
                    Some(side) if side.subnet == subnet => Some(side),
                    _ => Some(Ipv6Side {
                        subnet,
                        gateway: Ipv6Addr::from(u128::from(subnet.network()) + 1),
                        configured: wanted.is_some(),
                        enabled: true,
                        ip_range: None,
                        aux_addresses: Default::default(),
                        allocations: Default::default(),
                    }),
                }
            }
        };
        self.ensure_bridge_of(&rec).await?;
        self.save(&rec)?;
        self.lock().insert(rec.id.clone(), rec);
        Ok(())
    }

    /// Makes the Linux bridge of a bridge network exist with its gateway addresses; its index.
    async fn ensure_bridge_of(&self, rec: &NetworkRecord) -> Result<u32> {
        let (subnet, gw) = match (rec.subnet, rec.gateway) {
            (Some(s), Some(g)) => (s, g),
            _ => return Err(NetworkError::Invalid(format!("network {} has no subnet", rec.name))),
        };
        let index = self.host.ensure_bridge(&rec.bridge, gw, subnet.prefix_len()).await?;
        if let Some(v6) = rec.ipv6_enabled() {
            self.host.ensure_bridge_v6(&rec.bridge, v6.gateway, v6.subnet.prefix_len()).await?;
        }
        Ok(index)
    }

    /// A subnet from the pools that overlaps no host route and no other network.
    async fn free_subnet(&self, except: Option<&str>) -> Result<Ipv4Net> {
        let mut taken = self.host.routed_subnets().await?;
        taken.extend(self.list().iter().filter(|r| Some(r.id.as_str()) != except).filter_map(|r| r.subnet));
        Ok(ipam::pick_subnet(&self.cfg.pools, &taken)?)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, NetworkRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes a record: temp file and rename. Not fsynced: a record must survive a crash of
    /// engined (the page cache keeps it); after a crash of the host no container runs, and
    /// the endpoints it lists are released at the next start.
    fn save(&self, rec: &NetworkRecord) -> Result<()> {
        let _one = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        self.write(rec)
    }

    /// Writes the record of `id` as it is now (after concurrent changes, the newest wins).
    fn persist(&self, id: &str) -> Result<()> {
        let _one = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let Some(rec) = self.lock().get(id).cloned() else { return Ok(()) };
        self.write(&rec)
    }

    fn write(&self, rec: &NetworkRecord) -> Result<()> {
        let path = self.cfg.dir.join(format!("{}.json", rec.id));
        let bytes = serde_json::to_vec_pretty(rec).map_err(|e| NetworkError::Invalid(e.to_string()))?;
        engine_util::fs::write_atomic(&path, &bytes).map_err(io(&path))
    }

    pub fn list(&self) -> Vec<NetworkRecord> {
        self.lock().values().cloned().collect()
    }

    fn by_name(&self, name: &str) -> Option<NetworkRecord> {
        self.lock().values().find(|r| r.name == name).cloned()
    }

    /// By full id, name, or unique id prefix.
    pub fn find(&self, s: &str) -> Result<NetworkRecord> {
        let map = self.lock();
        if let Some(r) = map.get(s) {
            return Ok(r.clone());
        }
        if let Some(r) = map.values().find(|r| r.name == s) {
            return Ok(r.clone());
        }
        let hits: Vec<&NetworkRecord> =
            if s.is_empty() { Vec::new() } else { map.values().filter(|r| r.id.starts_with(s)).collect() };
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(NetworkError::NotFound(s.to_string())),
            _ => Err(NetworkError::Invalid(format!(
                "network {s} is ambiguous ({} matches found based on ID prefix)",
                hits.len()
            ))),
        }
    }

    pub fn firewall_backend(&self) -> Option<String> {
        self.firewall_backend.clone()
    }

    fn apply_firewall(&self) -> Result<()> {
        let Some(fw) = &self.firewall else { return Ok(()) };
        let bridges: Vec<NetworkRecord> = self.list().into_iter().filter(|r| r.is_bridge()).collect();
        let rule = |r: &NetworkRecord, subnet: ipnet::IpNet| BridgeRules {
            bridge: r.bridge.clone(),
            subnet,
            internal: r.internal,
        };
        let v4: Vec<BridgeRules> = bridges.iter().filter_map(|r| Some(rule(r, r.subnet?.into()))).collect();
        let v6: Vec<BridgeRules> =
            bridges.iter().filter_map(|r| Some(rule(r, r.ipv6_enabled()?.subnet.into()))).collect();
        // iptables and nft are processes that may wait (5 s at most) for the xtables lock: the
        // async worker hands its other tasks over meanwhile
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let apply = || -> std::result::Result<(), FirewallError> {
            fw.apply(&v4)?;
            match &self.firewall6 {
                // no IPv6 rules are made until a network has IPv6
                Some(fw6) if !v6.is_empty() => fw6.apply(&v6),
                Some(fw6) => fw6.remove(),
                None => Ok(()),
            }
        };
        let applied = if multi { tokio::task::block_in_place(apply) } else { apply() };
        Ok(applied?)
    }

    /// `network create`: a bridge network with its own Linux bridge (`br-<id12>`).
    pub async fn create(&self, req: CreateRequest, now: String) -> Result<NetworkRecord> {
        let _admin = self.admin.lock().await;
        check_name(&req.name)?;
        if self.by_name(&req.name).is_some() {
            return Err(NetworkError::Exists(req.name));
        }
        match req.driver.as_str() {
            "" | "bridge" => {}
            "host" | "null" => {
                return Err(NetworkError::Forbidden(format!(
                    "only one instance of \"{}\" network is allowed",
                    req.driver
                )))
            }
            d => return Err(NetworkError::NotFound(format!("plugin \"{d}\" (driver)"))),
        }
        let subnet = match req.subnet {
            Some(s) => {
                if s.prefix_len() > 30 {
                    return Err(NetworkError::Invalid(format!("subnet {s} is too small")));
                }
                let s = s.trunc();
                if let Some(other) = self.list().into_iter().find(|r| r.subnet.is_some_and(|o| ipam::overlaps(&o, &s)))
                {
                    return Err(NetworkError::Forbidden(format!(
                        "Pool overlaps with other one on this address space (network {})",
                        other.name
                    )));
                }
                s
            }
            None => self.free_subnet(None).await?,
        };
        let gateway = match req.gateway {
            Some(g) if !subnet.contains(&g) || g == subnet.network() || g == subnet.broadcast() => {
                return Err(NetworkError::Invalid(format!("gateway {g} is not a host address of subnet {subnet}")));
            }
            Some(g) => g,
            None => subnet
                .hosts()
                .next()
                .ok_or_else(|| NetworkError::Invalid(format!("subnet {subnet} has no host address")))?,
        };
        let allocations = address_book(subnet.into(), req.ip_range.map(Into::into), &req.aux_addresses)?;
        let id = random_id()?;
        let ipv6 = match (req.ipv6, req.subnet_v6) {
            (false, None) => {
                if req.gateway_v6.is_some() || req.ip_range_v6.is_some() || !req.aux_addresses_v6.is_empty() {
                    return Err(NetworkError::Invalid(
                        "an IPv6 gateway, ip-range or aux-address needs an IPv6 subnet".into(),
                    ));
                }
                None
            }
            (enabled, given) => {
                let subnet = given.map(|s| s.trunc()).unwrap_or_else(|| ipam::ula_subnet(&id));
                if subnet.prefix_len() > 124 {
                    return Err(NetworkError::Invalid(format!("subnet {subnet} is too small")));
                }
                let overlapping = |o: &Ipv6Net| o.contains(&subnet.network()) || subnet.contains(&o.network());
                if let Some(other) =
                    self.list().into_iter().find(|r| r.ipv6.as_ref().is_some_and(|v6| overlapping(&v6.subnet)))
                {
                    return Err(NetworkError::Forbidden(format!(
                        "Pool overlaps with other one on this address space (network {})",
                        other.name
                    )));
                }
                let gateway = match req.gateway_v6 {
                    Some(g) if !subnet.contains(&g) || g == subnet.network() => {
                        return Err(NetworkError::Invalid(format!(
                            "gateway {g} is not a host address of subnet {subnet}"
                        )))
                    }
                    Some(g) => g,
                    None => Ipv6Addr::from(u128::from(subnet.network()) + 1),
                };
                let allocations = address_book(subnet.into(), req.ip_range_v6.map(Into::into), &req.aux_addresses_v6)?;
                Some(Ipv6Side {
                    subnet,
                    gateway,
                    configured: given.is_some(),
                    enabled,
                    ip_range: req.ip_range_v6,
                    aux_addresses: req.aux_addresses_v6,
                    allocations,
                })
            }
        };
        let bridge =
            req.options.get("com.docker.network.bridge.name").cloned().unwrap_or_else(|| format!("br-{}", &id[..12]));
        // a name the kernel, iptables and nft all take literally (no %d template, no + or * wildcard, no quote)
        let literal = bridge.len() <= 15
            && bridge.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && bridge.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !literal {
            return Err(NetworkError::Invalid(format!(
                "invalid bridge name {bridge:?}: 1 to 15 letters, digits, '_', '.' or '-'"
            )));
        }
        if self.host.index(&bridge).await?.is_some() || self.list().iter().any(|r| r.bridge == bridge) {
            return Err(NetworkError::Invalid(format!("bridge name {bridge:?} is taken")));
        }
        let rec = NetworkRecord {
            id,
            name: req.name,
            driver: "bridge".into(),
            created: now,
            bridge,
            subnet: Some(subnet),
            gateway: Some(gateway),
            ip_range: req.ip_range,
            subnet_configured: req.subnet.is_some(),
            internal: req.internal,
            labels: req.labels,
            options: req.options,
            allocations,
            endpoints: Default::default(),
            ipv6,
            aux_addresses: req.aux_addresses,
        };
        let made = async {
            self.ensure_bridge_of(&rec).await?;
            self.save(&rec)?;
            self.lock().insert(rec.id.clone(), rec.clone());
            self.apply_firewall()
        }
        .await;
        if let Err(e) = made {
            self.lock().remove(&rec.id);
            let _ = std::fs::remove_file(self.cfg.dir.join(format!("{}.json", rec.id)));
            let _ = self.host.delete_bridge(&rec.bridge).await;
            let _ = self.apply_firewall();
            return Err(e);
        }
        Ok(rec)
    }

    /// `network rm`: refused for the predefined networks and while containers are on it.
    pub async fn remove(&self, s: &str) -> Result<NetworkRecord> {
        let _admin = self.admin.lock().await;
        let rec = self.find(s)?;
        if rec.predefined() {
            return Err(NetworkError::Forbidden(format!(
                "{} is a pre-defined network and cannot be removed",
                rec.name
            )));
        }
        {
            // checked and taken out under one lock: an attach cannot slip in between
            let mut map = self.lock();
            if map.get(&rec.id).is_some_and(|r| !r.endpoints.is_empty()) {
                return Err(NetworkError::Forbidden(format!(
                    "error while removing network: network {} id {} has active endpoints",
                    rec.name, rec.id
                )));
            }
            map.remove(&rec.id);
        }
        let path = self.cfg.dir.join(format!("{}.json", rec.id));
        std::fs::remove_file(&path).map_err(io(&path))?;
        self.host.delete_bridge(&rec.bridge).await?;
        self.apply_firewall()?;
        Ok(rec)
    }

    /// Where a container's network namespace is mounted: `<exec-root>/netns/<id>`.
    pub fn sandbox_path(&self, container: &str) -> PathBuf {
        self.cfg.netns_dir.join(container)
    }

    /// Puts a container on a network: an address, a veth pair with one end on the bridge and
    /// the other, named `ifname`, made in `ns`; the default route through the gateway when
    /// `default_route`. The endpoint is recorded before the links are made, so a crash in
    /// between is cleaned up by [`Networks::detach`].
    #[allow(clippy::too_many_arguments)]
    pub async fn attach(
        &self,
        network: &str,
        container: &str,
        container_name: &str,
        aliases: &[String],
        ns: (&File, &Netlink),
        ifname: &str,
        asked: &EndpointRequest,
        default_route: bool,
    ) -> Result<Endpoint> {
        let (requested_ip, requested_mac) = (asked.ipv4, asked.mac);
        let rec = self.find(network)?;
        if !rec.is_bridge() {
            return Err(NetworkError::Invalid(format!(
                "container cannot be connected to network {} (driver {})",
                rec.name, rec.driver
            )));
        }
        if rec.endpoints.contains_key(container) {
            return Err(NetworkError::Forbidden(format!(
                "endpoint with name {container_name} already exists in network {}",
                rec.name
            )));
        }
        if requested_ip.is_some() && !rec.subnet_configured {
            return Err(NetworkError::Invalid(
                "user specified IP address is supported only when connecting to networks with user configured subnets"
                    .into(),
            ));
        }
        let (subnet, gateway) = match (rec.subnet, rec.gateway) {
            (Some(s), Some(g)) => (s, g),
            _ => return Err(NetworkError::Invalid(format!("network {} has no subnet", rec.name))),
        };
        // ve<12 of the id><one hex digit of the interface>: within the kernel's 15 characters
        let n: u32 = ifname
            .trim_start_matches("eth")
            .parse()
            .map_err(|_| NetworkError::Invalid(format!("interface name {ifname}")))?;
        if n > 15 {
            return Err(NetworkError::Invalid("a container can be on at most 16 networks".into()));
        }
        let short = &container[..container.len().min(12)];
        let host_veth = format!("ve{short}{n:x}");
        let ep = {
            let mut map = self.lock();
            let r = map.get_mut(&rec.id).ok_or_else(|| NetworkError::NotFound(network.to_string()))?;
            let ip = r.allocations.allocate(subnet, r.ip_range, gateway, container, requested_ip)?;
            let v6 = match r.ipv6.as_mut().filter(|side| side.enabled) {
                Some(side) => {
                    match side.allocations.allocate(side.subnet, side.ip_range, side.gateway, container, asked.ipv6) {
                        Ok(ip6) => Some((ip6, side.subnet.prefix_len(), side.gateway)),
                        Err(e) => {
                            r.allocations.release(container);
                            return Err(e.into());
                        }
                    }
                }
                None => None,
            };
            let ep = Endpoint {
                id: random_id()?,
                container: container.to_string(),
                container_name: container_name.to_string(),
                aliases: aliases.to_vec(),
                ip,
                prefix: subnet.prefix_len(),
                gateway,
                mac: ipam::mac_string(&requested_mac.unwrap_or_else(|| ipam::mac_for(ip))),
                host_veth: host_veth.clone(),
                ifname: ifname.to_string(),
                ipv6: v6.map(|v| v.0),
                prefix_v6: v6.map(|v| v.1).unwrap_or_default(),
                gateway_v6: v6.map(|v| v.2),
            };
            r.endpoints.insert(container.to_string(), ep.clone());
            drop(map);
            if let Err(e) = self.persist(&rec.id) {
                self.forget(&rec.id, container);
                return Err(e);
            }
            ep
        };
        let linked = async {
            let bridge = match self.host.index(&rec.bridge).await? {
                Some(i) => i,
                None => self.ensure_bridge_of(&rec).await?,
            };
            let mac = requested_mac.unwrap_or_else(|| ipam::mac_for(ep.ip));
            if self.host.veth_into(&host_veth, ifname, mac, bridge, ns.0).await.is_err() {
                // the pair of an earlier run of this container, its namespace not yet torn down
                // by the kernel (or gone a moment ago): deleted if still there, and made again
                let _ = self.host.delete(&host_veth).await;
                self.host.veth_into(&host_veth, ifname, mac, bridge, ns.0).await?;
            }
            ns.1.configure(ifname, ep.ip, ep.prefix, default_route.then_some(gateway)).await?;
            if let Some(ip6) = ep.ipv6 {
                ns.1.configure_v6(ifname, ip6, ep.prefix_v6, ep.gateway_v6.filter(|_| default_route)).await?;
            }
            for ip in &asked.link_local {
                ns.1.add_link_local(ifname, *ip).await?;
            }
            Ok::<(), NetworkError>(())
        }
        .await;
        if let Err(e) = linked {
            let _ = self.host.delete(&host_veth).await;
            self.forget(&rec.id, container);
            return Err(e);
        }
        Ok(ep)
    }

    fn forget(&self, network_id: &str, container: &str) {
        {
            let mut map = self.lock();
            let Some(r) = map.get_mut(network_id) else { return };
            r.allocations.release(container);
            if let Some(side) = r.ipv6.as_mut() {
                side.allocations.release(container);
            }
            r.endpoints.remove(container);
        }
        let _ = self.persist(network_id);
    }

    /// Takes a container off a network: its host veth (the other end goes with it) and its
    /// address. Not attached is fine.
    pub async fn detach(&self, network: &str, container: &str) -> Result<()> {
        let rec = self.find(network)?;
        if let Some(ep) = rec.endpoints.get(container) {
            self.host.delete(&ep.host_veth).await?;
        }
        self.forget(&rec.id, container);
        Ok(())
    }

    /// Releases every endpoint of a container whose network namespace goes with it: addresses
    /// and records at once; the veth pairs are left to the kernel, which destroys them with the
    /// namespace (deleting one here holds the kernel's network lock for ~20 ms). Returns the
    /// host ends, for a caller that keeps the namespace alive to delete with [`Networks::delete_link`].
    pub fn release(&self, container: &str) -> Vec<String> {
        let mut veths = Vec::new();
        for (net, ep) in self.endpoints_of(container) {
            veths.push(ep.host_veth);
            self.forget(&net.id, container);
        }
        veths
    }

    /// Deletes a host link of an endpoint (absent is fine).
    pub async fn delete_link(&self, name: &str) -> Result<()> {
        self.host.delete(name).await?;
        Ok(())
    }

    /// A renamed container: its endpoints carry the new name (peers' /etc/hosts follow).
    pub fn rename(&self, container: &str, name: &str) {
        let ids: Vec<String> = {
            let mut map = self.lock();
            map.values_mut()
                .filter_map(|r| {
                    r.endpoints.get_mut(container).map(|ep| ep.container_name = name.to_string()).map(|_| r.id.clone())
                })
                .collect()
        };
        for id in ids {
            let _ = self.persist(&id);
        }
    }

    /// Every network a container has an endpoint on.
    pub fn endpoints_of(&self, container: &str) -> Vec<(NetworkRecord, Endpoint)> {
        self.lock().values().filter_map(|r| r.endpoints.get(container).map(|e| (r.clone(), e.clone()))).collect()
    }

    /// Releases the endpoints of containers `keep` says are gone (after a restart: containers
    /// that stopped while engined was down, or a reboot).
    pub async fn release_all_but(&self, keep: &BTreeSet<String>) {
        let stale: Vec<(String, String)> = self
            .lock()
            .values()
            .flat_map(|r| {
                r.endpoints.keys().filter(|c| !keep.contains(*c)).map(|c| (r.id.clone(), c.clone())).collect::<Vec<_>>()
            })
            .collect();
        for (net, c) in stale {
            let _ = self.detach(&net, &c).await;
        }
        if let Ok(rd) = std::fs::read_dir(&self.cfg.netns_dir) {
            for ent in rd.flatten() {
                if !keep.contains(&ent.file_name().to_string_lossy().to_string()) {
                    crate::netlink::remove_namespace(&ent.path());
                }
            }
        }
    }

    /// The user networks `container` is on, the embedded DNS server's scope: their names, and
    /// whether any of them reaches outside (not `--internal`), so that other names may be
    /// forwarded. `None` when it is on none (the default bridge keeps the host's resolvers).
    pub fn dns_scope(&self, container: &str) -> Option<(Vec<String>, bool)> {
        let map = self.lock();
        let on: Vec<&NetworkRecord> =
            map.values().filter(|r| r.name != DEFAULT && r.endpoints.contains_key(container)).collect();
        if on.is_empty() {
            return None;
        }
        Some((on.iter().map(|r| r.name.clone()).collect(), on.iter().any(|r| !r.internal)))
    }

    /// What `name` (any case, with or without its final dot) is to `container`'s DNS server:
    /// the addresses of the containers of its user networks that have it as their name, an
    /// alias, their short id or `<name>.<network>`, with the first network that has it.
    /// `None` when no network of `container` knows it.
    pub fn resolve(&self, container: &str, name: &str) -> Option<(String, Vec<std::net::IpAddr>)> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let mut found: Option<(String, Vec<std::net::IpAddr>)> = None;
        for r in self.lock().values().filter(|r| r.name != DEFAULT && r.endpoints.contains_key(container)) {
            let suffix = format!(".{}", r.name.to_ascii_lowercase());
            let bare = name.strip_suffix(&suffix).unwrap_or(&name);
            for ep in r.endpoints.values() {
                let short = &ep.container[..ep.container.len().min(12)];
                let known = ep.container_name.eq_ignore_ascii_case(bare)
                    || ep.aliases.iter().any(|a| a.eq_ignore_ascii_case(bare))
                    || short == bare;
                if known {
                    let f = found.get_or_insert_with(|| (r.name.clone(), Vec::new()));
                    for ip in std::iter::once(ep.ip.into()).chain(ep.ipv6.map(Into::into)) {
                        if !f.1.contains(&ip) {
                            f.1.push(ip);
                        }
                    }
                }
            }
        }
        found
    }

    /// The addresses `target` has on the user networks `container` is on too, with the first
    /// such network (a `--link` alias of `container`'s).
    pub fn shared_addresses(&self, container: &str, target: &str) -> Option<(String, Vec<std::net::IpAddr>)> {
        let map = self.lock();
        let mut found: Option<(String, Vec<std::net::IpAddr>)> = None;
        for r in map.values().filter(|r| r.name != DEFAULT && r.endpoints.contains_key(container)) {
            // by id, or by name (a network link may name a container made after it)
            let ep = r.endpoints.get(target).or_else(|| r.endpoints.values().find(|ep| ep.container_name == target));
            if let Some(ep) = ep {
                let f = found.get_or_insert_with(|| (r.name.clone(), Vec::new()));
                f.1.push(ep.ip.into());
                f.1.extend(ep.ipv6.map(std::net::IpAddr::from));
            }
        }
        found
    }

    /// The name of an address on `container`'s user networks, for a PTR query:
    /// `<container name>.<network>` and the network.
    pub fn reverse(&self, container: &str, ip: std::net::IpAddr) -> Option<(String, String)> {
        self.lock().values().filter(|r| r.name != DEFAULT && r.endpoints.contains_key(container)).find_map(|r| {
            r.endpoints
                .values()
                .find(|ep| std::net::IpAddr::from(ep.ip) == ip || ep.ipv6.map(std::net::IpAddr::from) == Some(ip))
                .map(|ep| (format!("{}.{}", ep.container_name, r.name), r.name.clone()))
        })
    }

    /// On engined's shutdown (every container stopped): the bridges and the firewall chains
    /// go, so nothing of engined stays on the host. They come back at the next start.
    pub async fn shutdown(&self) {
        for r in self.list().into_iter().filter(|r| r.is_bridge()) {
            if r.endpoints.is_empty() {
                let _ = self.host.delete_bridge(&r.bridge).await;
            }
        }
        if self.lock().values().all(|r| r.endpoints.is_empty()) {
            if let Some(fw) = &self.firewall {
                let _ = fw.remove();
            }
            if let Some(fw6) = &self.firewall6 {
                let _ = fw6.remove();
            }
        }
    }
}
