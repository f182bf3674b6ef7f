//! Address management: the pools subnets come from, a subnet that collides with no route of
//! the host, and the addresses of one subnet handed to endpoints. Pure logic: the owner
//! ([`crate::networks`]) persists the allocations.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IpamError {
    #[error("invalid address pool {0:?}: want base=CIDR,size=N")]
    BadPool(String),
    #[error(
        "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network"
    )]
    NoSubnet,
    #[error("no available IPv4 addresses on this network's address pools: {0}")]
    Exhausted(Ipv4Net),
    #[error("requested address {0} is not in subnet {1}")]
    OutOfSubnet(Ipv4Addr, Ipv4Net),
    #[error("Address already in use: {0}")]
    InUse(Ipv4Addr),
}

/// Where subnets of networks created without `--subnet` come from (dockerd's
/// `--default-address-pool base=172.17.0.0/16,size=16`).
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub base: Ipv4Net,
    pub size: u8,
}

impl FromStr for Pool {
    type Err = IpamError;
    fn from_str(s: &str) -> Result<Self, IpamError> {
        let bad = || IpamError::BadPool(s.to_string());
        let (mut base, mut size) = (None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("base", v)) => base = Some(v.parse::<Ipv4Net>().map_err(|_| bad())?.trunc()),
                Some(("size", v)) => size = Some(v.parse::<u8>().map_err(|_| bad())?),
                _ => return Err(bad()),
            }
        }
        let (base, size) = (base.ok_or_else(bad)?, size.ok_or_else(bad)?);
        if size < base.prefix_len() || size > 30 {
            return Err(bad());
        }
        Ok(Pool { base, size })
    }
}

/// Docker's defaults: 172.17–172.31 as /16s, then 192.168.0.0/16 as /20s.
pub fn default_pools() -> Vec<Pool> {
    vec![
        Pool { base: "172.17.0.0/16".parse().expect("literal"), size: 16 },
        Pool { base: "172.18.0.0/15".parse().expect("literal"), size: 16 },
        Pool { base: "172.20.0.0/14".parse().expect("literal"), size: 16 },
        Pool { base: "172.24.0.0/14".parse().expect("literal"), size: 16 },
        Pool { base: "172.28.0.0/14".parse().expect("literal"), size: 16 },
        Pool { base: "192.168.0.0/16".parse().expect("literal"), size: 20 },
    ]
}

/// The first subnet of the pools that overlaps none of `taken` (the host's routes and the
/// other networks' subnets).
pub fn pick_subnet(pools: &[Pool], taken: &[Ipv4Net]) -> Result<Ipv4Net, IpamError> {
    for pool in pools {
        let Ok(subnets) = pool.base.subnets(pool.size) else { continue };
        for candidate in subnets {
            if !taken.iter().any(|t| overlaps(t, &candidate)) {
                return Ok(candidate);
            }
        }
    }
    Err(IpamError::NoSubnet)
}

pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The addresses of one network: which are handed out, to whom, and where the next search
/// starts (round robin, as Docker's allocator: a released address is not reused at once, so
/// a peer that still caches it does not reach a newcomer).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Allocations {
    /// Address → owner (a container id).
    pub addresses: BTreeMap<Ipv4Addr, String>,
    #[serde(default)]
    pub last: Option<Ipv4Addr>,
}

impl Allocations {
    /// An address of `subnet` (within `range` when the network has one) for `owner`:
    /// `requested` if free, else the next free one after the last handed out. The network
    /// address, the broadcast address and the gateway are never handed out.
    pub fn allocate(
        &mut self,
        subnet: Ipv4Net,
        range: Option<Ipv4Net>,
        gateway: Ipv4Addr,
        owner: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = requested {
            if !subnet.contains(&ip) || ip == subnet.network() || ip == subnet.broadcast() {
                return Err(IpamError::OutOfSubnet(ip, subnet));
            }
            if ip == gateway || self.addresses.get(&ip).is_some_and(|o| o != owner) {
                return Err(IpamError::InUse(ip));
            }
            self.addresses.insert(ip, owner.to_string());
            return Ok(ip);
        }
        let space = range.unwrap_or(subnet);
        let (first, last) = (
            u32::from(space.network()).max(u32::from(subnet.network()) + 1),
            u32::from(space.broadcast()).min(u32::from(subnet.broadcast()) - 1),
        );
        if first > last {
            return Err(IpamError::Exhausted(subnet));
        }
        let n = last - first + 1;
        let start = self.last.map(u32::from).filter(|l| (first..=last).contains(l)).map(|l| l - first + 1).unwrap_or(0);
        for i in 0..n {
            let ip = Ipv4Addr::from(first + (start + i) % n);
            if ip != gateway && !self.addresses.contains_key(&ip) {
                self.addresses.insert(ip, owner.to_string());
                self.last = Some(ip);
                return Ok(ip);
            }
        }
        Err(IpamError::Exhausted(subnet))
    }

    /// Releases every address of `owner`; true if there was one.
    pub fn release(&mut self, owner: &str) -> bool {
        let before = self.addresses.len();
        self.addresses.retain(|_, o| o != owner);
        before != self.addresses.len()
    }
}

/// The MAC address Docker derives from an IPv4 address: 02:42 and the four octets.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_parse_and_subnets_avoid_routes() {
        assert_eq!(
            "base=10.9.0.0/16,size=24".parse::<Pool>().unwrap(),
            Pool { base: "10.9.0.0/16".parse().unwrap(), size: 24 }
        );
        for bad in ["10.9.0.0/16", "base=10.9.0.0/16,size=8", "base=x,size=24", "base=10.0.0.0/8,size=24,color=red"] {
            assert!(bad.parse::<Pool>().is_err(), "{bad}");
        }
        let taken: Vec<Ipv4Net> = vec![
            "172.17.0.0/16".parse().unwrap(),
            "172.18.5.0/24".parse().unwrap(),
            "0.0.0.0/0".parse::<Ipv4Net>().unwrap(),
        ];
        // a default route overlaps everything, so it must not be passed as taken: routes are filtered by the caller
        assert_eq!(pick_subnet(&default_pools(), &taken[..2]).unwrap(), "172.19.0.0/16".parse().unwrap());
        assert_eq!(pick_subnet(&default_pools(), &taken), Err(IpamError::NoSubnet));
    }

    #[test]
    fn addresses_round_robin_and_requests() {
        let subnet: Ipv4Net = "10.1.0.0/29".parse().unwrap();
        let gw: Ipv4Addr = "10.1.0.1".parse().unwrap();
        let mut a = Allocations::default();
        assert_eq!(a.allocate(subnet, None, gw, "c1", None).unwrap(), Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(a.allocate(subnet, None, gw, "c2", None).unwrap(), Ipv4Addr::new(10, 1, 0, 3));
        assert!(a.release("c1"));
        // .2 was released but the next one is .4
        assert_eq!(a.allocate(subnet, None, gw, "c3", None).unwrap(), Ipv4Addr::new(10, 1, 0, 4));
        assert_eq!(
            a.allocate(subnet, None, gw, "c4", Some(Ipv4Addr::new(10, 1, 0, 6))).unwrap(),
            Ipv4Addr::new(10, 1, 0, 6)
        );
        assert_eq!(
            a.allocate(subnet, None, gw, "c5", Some(Ipv4Addr::new(10, 1, 0, 6))),
            Err(IpamError::InUse(Ipv4Addr::new(10, 1, 0, 6)))
        );
        assert_eq!(a.allocate(subnet, None, gw, "c5", Some(gw)), Err(IpamError::InUse(gw)));
        assert!(matches!(
            a.allocate(subnet, None, gw, "c5", Some(Ipv4Addr::new(10, 1, 0, 7))),
            Err(IpamError::OutOfSubnet(..))
        ));
        assert_eq!(a.allocate(subnet, None, gw, "c5", None).unwrap(), Ipv4Addr::new(10, 1, 0, 5));
        // wraps round to the released .2, then is full
        assert_eq!(a.allocate(subnet, None, gw, "c6", None).unwrap(), Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(a.allocate(subnet, None, gw, "c7", None), Err(IpamError::Exhausted(subnet)));
        let range: Ipv4Net = "10.1.0.4/30".parse().unwrap();
        let mut b = Allocations::default();
        assert_eq!(b.allocate(subnet, Some(range), gw, "c1", None).unwrap(), Ipv4Addr::new(10, 1, 0, 4));
        assert_eq!(mac_string(&mac_for(Ipv4Addr::new(172, 17, 0, 2))), "02:42:ac:11:00:02");
    }
}
