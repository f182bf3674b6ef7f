//! Container networking on the host, for engined: bridge networks (the default `bridge` on
//! `engine0`, and user networks), their address management and records, the network
//! namespace of each container with its veth pairs, loopback, addresses and routes (over
//! rtnetlink, never by running `ip`), the firewall chains that masquerade and isolate
//! networks, the engine-proxy processes of published ports, the embedded DNS server of
//! containers on user networks, and the /etc/hosts and /etc/resolv.conf a container sees.
//!
//! Must never touch links, addresses or firewall chains it did not make, and never send
//! traffic of its own (the DNS server forwards containers' queries to their upstreams only).

pub mod cni;
pub mod dns;
pub mod etc;
pub mod firewall;
pub mod ipam;
pub mod netlink;
pub mod netns;
pub mod networks;
pub mod ports;

pub use netlink::{create_namespace, remove_namespace, Netlink};
pub use networks::{CreateRequest, Endpoint, EndpointRequest, NetworkError, NetworkRecord, Networks};
