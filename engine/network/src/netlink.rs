//! Links, addresses and routes over rtnetlink: the bridges, the veth pairs and the inside of a
//! container's network namespace. Network namespaces are made here too: a short-lived thread
//! unshares one and bind-mounts it on a file, so it outlives the thread.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("{what}: {source}")]
    Request { what: String, source: rtnetlink::Error },
    #[error("no link named {0}")]
    NoLink(String),
    #[error("network namespace {path}: {source}")]
    Namespace { path: PathBuf, source: std::io::Error },
    #[error("a link named {0} exists and engined did not make it (choose another bridge name)")]
    NotOurs(String),
    #[error("enabling IPv6 on {link} ({source}): is IPv6 disabled on this host?")]
    Ipv6Off { link: String, source: std::io::Error },
}

/// The alias engined gives the bridges it makes: a link without it is never adopted or deleted.
pub const OWNER_ALIAS: &str = "engine-bridge";

type Result<T> = std::result::Result<T, NetlinkError>;

fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

/// The errno of a failed request (positive), if the kernel answered with one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A route-netlink connection bound to one network namespace (the one it was opened in).
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// A connection in this process's network namespace. Needs a tokio runtime.
    pub fn host() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// A connection inside the namespace `ns`: its socket is opened by a thread that joined
    /// the namespace and then ends, so no thread of ours stays in it.
    pub fn inside(ns: &File, path: &Path) -> Result<Netlink> {
        let rt = tokio::runtime::Handle::current();
        let opened = crate::netns::run_in(ns, || {
            let _rt = rt.enter();
            rtnetlink::new_connection()
        });
        let (conn, handle, _) =
            opened.map_err(|source| NetlinkError::Namespace { path: path.to_path_buf(), source })?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The index of the link `name`, if there is one.
    pub async fn index(&self, name: &str) -> Result<Option<u32>> {
        match self.handle.link().get().match_name(name.to_string()).execute().try_next().await {
            Ok(Some(m)) => Ok(Some(m.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(req(format!("looking up link {name}"))(e)),
        }
    }

    async fn must_index(&self, name: &str) -> Result<u32> {
        self.index(name).await?.ok_or_else(|| NetlinkError::NoLink(name.to_string()))
    }

    /// Whether the link `name` is a bridge engined made (it carries [`OWNER_ALIAS`]); None when
    /// there is no such link.
    pub async fn owned_bridge(&self, name: &str) -> Result<Option<(u32, bool)>> {
        let msg = match self.handle.link().get().match_name(name.to_string()).execute().try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(req(format!("looking up link {name}"))(e)),
        };
        let alias = msg.attributes.iter().any(|a| matches!(a, LinkAttribute::IfAlias(x) if x == OWNER_ALIAS));
        let bridge = msg.attributes.iter().any(|a| matches!(a, LinkAttribute::LinkInfo(infos) if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge)))));
        Ok(Some((msg.header.index, alias && bridge)))
    }

    /// Makes the bridge `name` exist (tagged as engined's), hold `gateway/prefix` and be up.
    /// Returns its index. A link of that name engined did not make is refused, never adopted.
    pub async fn ensure_bridge(&self, name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<u32> {
        let index = match self.owned_bridge(name).await? {
            Some((i, true)) => i,
            Some((_, false)) => return Err(NetlinkError::NotOurs(name.to_string())),
            None => {
                // made, then tagged (the kernel ignores an alias given at creation); a link of
                // that name someone else made meanwhile is not tagged
                self.handle.link().add(LinkBridge::new(name).build()).execute().await.map_err(|e| match errno(&e) {
                    Some(libc::EEXIST) => NetlinkError::NotOurs(name.to_string()),
                    _ => req(format!("creating bridge {name}"))(e),
                })?;
                let i = self.must_index(name).await?;
                self.handle
                    .link()
                    .set(LinkUnspec::new_with_index(i).alias(OWNER_ALIAS).build())
                    .execute()
                    .await
                    .map_err(req(format!("tagging bridge {name}")))?;
                i
            }
        };
        match self.handle.address().add(index, gateway.into(), prefix).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => return Err(req(format!("adding {gateway}/{prefix} to {name}"))(e)),
        }
        self.up(index, name).await?;
        Ok(index)
    }

    /// Gives an IPv6 network's bridge its gateway address (IPv6 enabled on it first).
    pub async fn ensure_bridge_v6(&self, name: &str, gateway: Ipv6Addr, prefix: u8) -> Result<()> {
        let index = self.must_index(name).await?;
        let knob = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
        std::fs::write(&knob, "0").map_err(|source| NetlinkError::Ipv6Off { link: name.to_string(), source })?;
        self.add_v6(index, name, gateway, prefix).await
    }

    /// Adds an IPv6 address without duplicate address detection (usable at once; the
    /// network's allocator already keeps addresses unique), as Docker adds them.
    async fn add_v6(&self, index: u32, name: &str, ip: Ipv6Addr, prefix: u8) -> Result<()> {
        let mut add = self.handle.address().add(index, ip.into(), prefix);
        add.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        match add.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(req(format!("adding {ip}/{prefix} to {name}"))(e)),
        }
    }

    /// Deletes the bridge `name` if engined made it; anything else of that name stays.
    pub async fn delete_bridge(&self, name: &str) -> Result<bool> {
        match self.owned_bridge(name).await? {
            Some((_, true)) => self.delete(name).await,
            _ => Ok(false),
        }
    }

    pub async fn up(&self, index: u32, name: &str) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(req(format!("setting {name} up")))
    }

    /// Deletes the link `name`; one that is not there is not an error.
    pub async fn delete(&self, name: &str) -> Result<bool> {
        let Some(index) = self.index(name).await? else { return Ok(false) };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(req(format!("deleting link {name}"))(e)),
        }
    }

    /// Creates the veth pair `host`/`inner` in one request: `host` here, up and on the bridge
    /// `bridge`; `inner` made directly inside the namespace `ns` with its MAC address (moving
    /// a link between namespaces afterwards costs an RCU grace period, ~25 ms here).
    pub async fn veth_into(&self, host: &str, inner: &str, mac: [u8; 6], bridge: u32, ns: &File) -> Result<()> {
        let peer = LinkUnspec::new_with_name(inner).address(mac.to_vec()).setns_by_fd(ns.as_raw_fd()).build();
        let msg = LinkVeth::new(host, inner)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .controller(bridge)
            .up()
            .build();
        self.handle.link().add(msg).execute().await.map_err(req(format!("creating veth pair {host}/{inner}")))
    }

    /// Inside a container's namespace: loopback up.
    pub async fn loopback_up(&self) -> Result<()> {
        let lo = self.must_index("lo").await?;
        self.up(lo, "lo").await
    }

    /// Inside a container's namespace: gives `ifname` its address, sets it up, and routes the
    /// default through `gateway` when asked.
    pub async fn configure(&self, ifname: &str, ip: Ipv4Addr, prefix: u8, gateway: Option<Ipv4Addr>) -> Result<()> {
        let index = self.must_index(ifname).await?;
        self.handle
            .address()
            .add(index, ip.into(), prefix)
            .execute()
            .await
            .map_err(req(format!("adding {ip}/{prefix} to {ifname}")))?;
        self.up(index, ifname).await?;
        if let Some(gw) = gateway {
            let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).output_interface(index).build();
            self.handle
                .route()
                .add(route)
                .execute()
                .await
                .map_err(req(format!("adding the default route via {gw}")))?;
        }
        Ok(())
    }

    /// Inside a container's namespace: gives `ifname` (configured with [`Netlink::configure`])
    /// its IPv6 address, and routes the IPv6 default through `gateway` when asked.
    pub async fn configure_v6(&self, ifname: &str, ip: Ipv6Addr, prefix: u8, gateway: Option<Ipv6Addr>) -> Result<()> {
        let index = self.must_index(ifname).await?;
        self.add_v6(index, ifname, ip, prefix).await?;
        if let Some(gw) = gateway {
            let route = RouteMessageBuilder::<Ipv6Addr>::new().gateway(gw).output_interface(index).build();
            self.handle
                .route()
                .add(route)
                .execute()
                .await
                .map_err(req(format!("adding the IPv6 default route via {gw}")))?;
        }
        Ok(())
    }

    /// Inside a container's namespace: adds the link-local address `ip` (169.254.0.0/16 or
    /// fe80::/64, as Docker's `--link-local-ip`) to `ifname`.
    pub async fn add_link_local(&self, ifname: &str, ip: IpAddr) -> Result<()> {
        let index = self.must_index(ifname).await?;
        match ip {
            IpAddr::V4(v4) => self
                .handle
                .address()
                .add(index, v4.into(), 16)
                .execute()
                .await
                .map_err(req(format!("adding {v4}/16 to {ifname}"))),
            IpAddr::V6(v6) => self.add_v6(index, ifname, v6, 64).await,
        }
    }

    /// The IPv4 destinations routed in this namespace's main table, except the default route
    /// (what a new subnet must not overlap).
    pub async fn routed_subnets(&self) -> Result<Vec<Ipv4Net>> {
        let mut out = Vec::new();
        let mut routes = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        while let Some(r) = routes.try_next().await.map_err(req("listing routes"))? {
            let len = r.header.destination_prefix_length;
            if len == 0 || r.header.table != 254 {
                continue;
            }
            for a in &r.attributes {
                if let RouteAttribute::Destination(RouteAddress::Inet(ip)) = a {
                    if let Ok(net) = Ipv4Net::new(*ip, len) {
                        out.push(net.trunc());
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A new network namespace, bind-mounted on `path` (an empty file is made there) so it lives
/// until [`remove_namespace`]. Returns it open, with a netlink connection inside it (opened by
/// the thread that made it, while in it). `watch` is told that thread's id before it unshares
/// (`true`) and when it is done (`false`), for whoever traces it. Needs a tokio runtime.
pub fn create_namespace(path: &Path, watch: &(dyn Fn(u32, bool) + Sync)) -> Result<(File, Netlink)> {
    let err = |source| NetlinkError::Namespace { path: path.to_path_buf(), source };
    let rt = tokio::runtime::Handle::current();
    let made = std::thread::scope(|s| {
        s.spawn(|| {
            let _rt = rt.enter();
            let tid = nix::unistd::gettid().as_raw() as u32;
            watch(tid, true);
            let made = make_here(path);
            watch(tid, false);
            made?;
            rtnetlink::new_connection()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))
    });
    let opened = made.and_then(|(conn, handle, _)| {
        tokio::spawn(conn);
        File::open(path).map(|f| (f, Netlink { handle }))
    });
    if opened.is_err() {
        remove_namespace(path);
    }
    opened.map_err(err)
}

/// Unshares this thread's network namespace and bind-mounts it on `path`.
fn make_here(path: &Path) -> std::io::Result<()> {
    // SAFETY: unshare affects this thread only (a network namespace is per task); the thread
    // ends soon after, its namespace kept by the bind mount.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    File::create(path)?;
    nix::mount::mount(Some("/proc/thread-self/ns/net"), path, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
        .map_err(std::io::Error::from)
}

/// Unmounts and removes a namespace file of [`create_namespace`]; the namespace goes when
/// its last process leaves. Absent is fine.
pub fn remove_namespace(path: &Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
}
