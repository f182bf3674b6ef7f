//! Address management: the pools subnets come from, a subnet that collides with no route of
//! the host, and the addresses of one subnet handed to endpoints. Pure logic: the owner
//! ([`crate::networks`]) persists the allocations.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IpamError {
    #[error("invalid address pool {0:?}: want base=CIDR,size=N")]
    BadPool(String),
    #[error(
        "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network"
    )]
    NoSubnet,
    #[error("no available addresses on this network's address pools: {0}")]
    Exhausted(IpNet),
    #[error("requested address {0} is not in subnet {1}")]
    OutOfSubnet(IpAddr, IpNet),
    #[error("Address already in use: {0}")]
    InUse(IpAddr),
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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(bound(serialize = "A: Serialize + Ord", deserialize = "A: Deserialize<'de> + Ord"))]
pub struct AddressBook<A> {
    /// Address → owner (a container id).
    pub addresses: BTreeMap<A, String>,
    #[serde(default)]
    pub last: Option<A>,
    /// Addresses never handed out nor claimed: the network's auxiliary addresses (Docker's
    /// `--aux-address`, used by hosts on the bridge's segment that are not containers).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub reserved: BTreeSet<A>,
}

/// The IPv4 addresses of a network.
pub type Allocations = AddressBook<Ipv4Addr>;
/// The IPv6 addresses of a network with `--ipv6`, handed out the same way (the subnet's first
/// address and the gateway never).
pub type Allocations6 = AddressBook<Ipv6Addr>;

impl<A> Default for AddressBook<A> {
    fn default() -> Self {
        AddressBook { addresses: BTreeMap::new(), last: None, reserved: BTreeSet::new() }
    }
}

impl<A: Ord + Copy + Into<IpAddr>> AddressBook<A> {
    /// A requested address for `owner`: refused when it is not a host address of `subnet`
    /// (`inside`), is the gateway, or is another's.
    fn claim(&mut self, ip: A, inside: bool, subnet: IpNet, gateway: A, owner: &str) -> Result<A, IpamError> {
        if !inside {
            return Err(IpamError::OutOfSubnet(ip.into(), subnet));
        }
        if ip == gateway || self.reserved.contains(&ip) || self.addresses.get(&ip).is_some_and(|o| o != owner) {
            return Err(IpamError::InUse(ip.into()));
        }
        self.addresses.insert(ip, owner.to_string());
        Ok(ip)
    }

    fn hand_out(&mut self, ip: A, owner: &str) -> A {
        self.addresses.insert(ip, owner.to_string());
        self.last = Some(ip);
        ip
    }

    /// Releases every address of `owner`; true if there was one.
    pub fn release(&mut self, owner: &str) -> bool {
        let before = self.addresses.len();
        self.addresses.retain(|_, o| o != owner);
        before != self.addresses.len()
    }
}

impl AddressBook<Ipv4Addr> {
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
            let inside = subnet.contains(&ip) && ip != subnet.network() && ip != subnet.broadcast();
            return self.claim(ip, inside, subnet.into(), gateway, owner);
        }
        let space = range.unwrap_or(subnet);
        let (first, last) = (
            u32::from(space.network()).max(u32::from(subnet.network()) + 1),
            u32::from(space.broadcast()).min(u32::from(subnet.broadcast()) - 1),
        );
        if first > last {
            return Err(IpamError::Exhausted(subnet.into()));
        }
        let free = |n: u128| {
            let ip = Ipv4Addr::from(n as u32);
            ip != gateway && !self.addresses.contains_key(&ip) && !self.reserved.contains(&ip)
        };
        let found = next_free(first.into(), last.into(), self.last.map(|l| u32::from(l).into()), u128::MAX, free);
        let ip = Ipv4Addr::from(found.ok_or(IpamError::Exhausted(subnet.into()))? as u32);
        Ok(self.hand_out(ip, owner))
    }
}

/// Round robin over the addresses `first..=last` (as numbers): the first `free` one after
/// `previous` (the last handed out), wrapping round, looking at `tries` of them at most.
fn next_free(
    first: u128,
    last: u128,
    previous: Option<u128>,
    tries: u128,
    free: impl Fn(u128) -> bool,
) -> Option<u128> {
    let n = last - first + 1;
    let start = previous.filter(|l| (first..=last).contains(l)).map(|l| l - first + 1).unwrap_or(0);
    (0..n.min(tries)).map(|i| first + (start + i) % n).find(|a| free(*a))
}

impl AddressBook<Ipv6Addr> {
    /// As [`AddressBook::<Ipv4Addr>::allocate`]; the subnet's first address (its anycast
    /// router address) is never handed out, the last is (IPv6 has no broadcast).
    pub fn allocate(
        &mut self,
        subnet: Ipv6Net,
        range: Option<Ipv6Net>,
        gateway: Ipv6Addr,
        owner: &str,
        requested: Option<Ipv6Addr>,
    ) -> Result<Ipv6Addr, IpamError> {
        if let Some(ip) = requested {
            let inside = subnet.contains(&ip) && ip != subnet.network();
            return self.claim(ip, inside, subnet.into(), gateway, owner);
        }
        let space = range.unwrap_or(subnet);
        let first = u128::from(space.network()).max(u128::from(subnet.network()) + 1);
        let last = u128::from(space.broadcast()).min(u128::from(subnet.broadcast()));
        if first > last {
            return Err(IpamError::Exhausted(subnet.into()));
        }
        // at most every handed-out and reserved address and the gateway are in the way
        let tries = (self.addresses.len() + self.reserved.len()) as u128 + 2;
        let free = |n: u128| {
            let ip = Ipv6Addr::from(n);
            ip != gateway && !self.addresses.contains_key(&ip) && !self.reserved.contains(&ip)
        };
        let found = next_free(first, last, self.last.map(u128::from), tries, free);
        let ip = Ipv6Addr::from(found.ok_or(IpamError::Exhausted(subnet.into()))?);
        Ok(self.hand_out(ip, owner))
    }
}

/// A unique local IPv6 /64 (RFC 4193) for a network created with `--ipv6` and no IPv6
/// subnet: `fd` and 40 bits of the network's id as the global id, subnet 0.
pub fn ula_subnet(network_id: &str) -> Ipv6Net {
    let hex: String = network_id.chars().filter(char::is_ascii_hexdigit).take(10).collect();
    let global = u64::from_str_radix(&format!("{hex:0<10}"), 16).unwrap_or(0);
    let prefix = (0xfdu128 << 120) | (u128::from(global) << 80);
    Ipv6Net::new(Ipv6Addr::from(prefix), 64).unwrap_or_default()
}

/// The MAC address Docker derives from an IPv4 address: 02:42 and the four octets.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// A MAC address as written (`02:42:ac:11:00:0a`); `None` when it is not one.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_print() {
        assert_eq!(parse_mac("02:42:AC:11:00:0a"), Some([2, 0x42, 0xac, 0x11, 0, 10]));
        assert_eq!(mac_string(&parse_mac("02-42-ac-11-00-0a").unwrap()), "02:42:ac:11:00:0a");
        assert_eq!(parse_mac("02:42:ac:11:00"), None);
        assert_eq!(parse_mac("02:42:ac:11:00:zz"), None);
        assert_eq!(parse_mac("2:42:ac:11:00:0a"), None);
    }

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
            Err(IpamError::InUse(Ipv4Addr::new(10, 1, 0, 6).into()))
        );
        assert_eq!(a.allocate(subnet, None, gw, "c5", Some(gw)), Err(IpamError::InUse(gw.into())));
        assert!(matches!(
            a.allocate(subnet, None, gw, "c5", Some(Ipv4Addr::new(10, 1, 0, 7))),
            Err(IpamError::OutOfSubnet(..))
        ));
        assert_eq!(a.allocate(subnet, None, gw, "c5", None).unwrap(), Ipv4Addr::new(10, 1, 0, 5));
        // wraps round to the released .2, then is full
        assert_eq!(a.allocate(subnet, None, gw, "c6", None).unwrap(), Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(a.allocate(subnet, None, gw, "c7", None), Err(IpamError::Exhausted(subnet.into())));
        let range: Ipv4Net = "10.1.0.4/30".parse().unwrap();
        let mut b = Allocations::default();
        assert_eq!(b.allocate(subnet, Some(range), gw, "c1", None).unwrap(), Ipv4Addr::new(10, 1, 0, 4));
        // a reserved (auxiliary) address is skipped, and refused when asked for
        b.reserved.insert(Ipv4Addr::new(10, 1, 0, 5));
        assert_eq!(b.allocate(subnet, Some(range), gw, "c2", None).unwrap(), Ipv4Addr::new(10, 1, 0, 6));
        assert_eq!(
            b.allocate(subnet, None, gw, "c3", Some(Ipv4Addr::new(10, 1, 0, 5))),
            Err(IpamError::InUse(Ipv4Addr::new(10, 1, 0, 5).into()))
        );
        assert_eq!(mac_string(&mac_for(Ipv4Addr::new(172, 17, 0, 2))), "02:42:ac:11:00:02");
    }

    #[test]
    fn ipv6_addresses_and_unique_local_subnets() {
        let subnet: Ipv6Net = "fd00:1::/64".parse().unwrap();
        let gw: Ipv6Addr = "fd00:1::1".parse().unwrap();
        let mut a = Allocations6::default();
        assert_eq!(a.allocate(subnet, None, gw, "c1", None).unwrap(), "fd00:1::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(a.allocate(subnet, None, gw, "c2", None).unwrap(), "fd00:1::3".parse::<Ipv6Addr>().unwrap());
        assert!(a.release("c1"));
        assert_eq!(a.allocate(subnet, None, gw, "c3", None).unwrap(), "fd00:1::4".parse::<Ipv6Addr>().unwrap());
        let asked: Ipv6Addr = "fd00:1::99".parse().unwrap();
        assert_eq!(a.allocate(subnet, None, gw, "c4", Some(asked)).unwrap(), asked);
        assert_eq!(a.allocate(subnet, None, gw, "c5", Some(asked)), Err(IpamError::InUse(asked.into())));
        assert!(matches!(
            a.allocate(subnet, None, gw, "c5", Some("fd00:2::1".parse().unwrap())),
            Err(IpamError::OutOfSubnet(..))
        ));
        let tiny: Ipv6Net = "fd00:3::/126".parse().unwrap();
        let mut b = Allocations6::default();
        let tiny_gw: Ipv6Addr = "fd00:3::1".parse().unwrap();
        assert_eq!(b.allocate(tiny, None, tiny_gw, "x", None).unwrap(), "fd00:3::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(b.allocate(tiny, None, tiny_gw, "y", None).unwrap(), "fd00:3::3".parse::<Ipv6Addr>().unwrap());
        assert!(matches!(b.allocate(tiny, None, tiny_gw, "z", None), Err(IpamError::Exhausted(_))));
        // within a range, past the reserved addresses; a reserved address is never claimed
        let mut c = Allocations6::default();
        let range: Ipv6Net = "fd00:1::100/120".parse().unwrap();
        let aux: Ipv6Addr = "fd00:1::100".parse().unwrap();
        c.reserved.insert(aux);
        assert_eq!(
            c.allocate(subnet, Some(range), gw, "c1", None).unwrap(),
            "fd00:1::101".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(c.allocate(subnet, Some(range), gw, "c2", Some(aux)), Err(IpamError::InUse(aux.into())));
        let ula = ula_subnet("0123456789abcdef");
        assert_eq!(ula.to_string(), "fd01:2345:6789::/64");
    }
}
