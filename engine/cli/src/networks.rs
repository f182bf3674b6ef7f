//! `engine network ...` and `engine port`, with Docker's flags and output.

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::client::{self, Client};
use crate::containers::{each, filters_param, inspect_each, print_formatted, urlencode};
use crate::format;
use engine_docker_api::{EndpointIpam, EndpointSettings};

#[derive(clap::Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a network.
    Create {
        /// Driver to manage the network (bridge).
        #[arg(short = 'd', long, default_value = "bridge")]
        driver: String,
        /// Subnet in CIDR format, e.g. 10.10.0.0/24 (an IPv4 one and, with --ipv6, an IPv6 one).
        #[arg(long)]
        subnet: Vec<String>,
        /// Gateway for the subnet of the same family.
        #[arg(long)]
        gateway: Vec<String>,
        /// Enable IPv6 (dual stack; without an IPv6 --subnet, a unique local /64).
        #[arg(long)]
        ipv6: bool,
        /// Allocate container addresses from a sub-range (one per family).
        #[arg(long = "ip-range")]
        ip_range: Vec<String>,
        /// Auxiliary IPv4 or IPv6 addresses never given to a container (name=address).
        #[arg(long = "aux-address")]
        aux_address: Vec<String>,
        /// Restrict external access to the network.
        #[arg(long)]
        internal: bool,
        /// Set metadata on a network.
        #[arg(long = "label")]
        label: Vec<String>,
        /// Set driver specific options (com.docker.network.bridge.name=...).
        #[arg(short = 'o', long = "opt")]
        opt: Vec<String>,
        name: String,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Only display network IDs.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Filter output (name=, id=, driver=, type=custom|builtin, label=).
        #[arg(short = 'f', long = "filter")]
        filter: Vec<String>,
        /// Do not truncate the output.
        #[arg(long)]
        no_trunc: bool,
        /// Format output using a Go-template subset.
        #[arg(long)]
        format: Option<String>,
    },
    /// Display detailed information on one or more networks.
    Inspect {
        #[arg(short = 'f', long)]
        format: Option<String>,
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove one or more networks.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Connect a container to a network.
    Connect {
        /// IPv4 address (on a network with a configured subnet).
        #[arg(long)]
        ip: Option<String>,
        /// IPv6 address (on a network with a configured IPv6 subnet).
        #[arg(long)]
        ip6: Option<String>,
        /// Link-local addresses for the container's interface.
        #[arg(long = "link-local-ip")]
        link_local_ip: Vec<String>,
        /// Network-scoped alias for the container.
        #[arg(long)]
        alias: Vec<String>,
        /// Add a link to another container (name[:alias]), answered by this network's DNS.
        #[arg(long)]
        link: Vec<String>,
        /// Driver options for the endpoint (key=value).
        #[arg(long = "driver-opt")]
        driver_opt: Vec<String>,
        network: String,
        container: String,
    },
    /// Disconnect a container from a network.
    Disconnect {
        /// Force the container to disconnect from a network.
        #[arg(short = 'f', long)]
        force: bool,
        network: String,
        container: String,
    },
    /// Remove all unused networks.
    Prune {
        /// Do not prompt for confirmation.
        #[arg(short = 'f', long)]
        force: bool,
    },
}

fn pairs(items: &[String]) -> serde_json::Map<String, Value> {
    items
        .iter()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            (k.to_string(), Value::String(v.to_string()))
        })
        .collect()
}

pub async fn network(c: &Client, cmd: NetworkCommand) -> Result<i32> {
    match cmd {
        NetworkCommand::Create { driver, subnet, gateway, ipv6, ip_range, aux_address, internal, label, opt, name } => {
            let family = |s: &str| s.contains(':');
            let mut aux = Vec::new();
            for a in &aux_address {
                let (k, v) =
                    a.split_once('=').ok_or_else(|| anyhow::anyhow!("invalid --aux-address {a:?}: name=address"))?;
                aux.push((k.to_string(), v.to_string()));
            }
            let mut config = Vec::new();
            for s in &subnet {
                // the gateway, range and aux addresses of the subnet's family (Docker pairs them so)
                let gw = gateway.iter().find(|g| family(g) == family(s)).cloned().unwrap_or_default();
                let range = ip_range.iter().find(|r| family(r) == family(s)).cloned().unwrap_or_default();
                let aux: serde_json::Map<String, Value> =
                    aux.iter().filter(|(_, v)| family(v) == family(s)).map(|(k, v)| (k.clone(), json!(v))).collect();
                config.push(json!({ "Subnet": s, "Gateway": gw, "IPRange": range, "AuxiliaryAddresses": aux }));
            }
            let families = gateway.iter().chain(&ip_range).chain(aux.iter().map(|(_, v)| v));
            if families.clone().any(|g| !subnet.iter().any(|s| family(s) == family(g))) {
                bail!("--gateway, --ip-range and --aux-address need a --subnet of their family");
            }
            let body = json!({
                "Name": name, "CheckDuplicate": true, "Driver": driver, "Internal": internal, "EnableIPv6": ipv6,
                "IPAM": { "Driver": "default", "Config": config }, "Labels": pairs(&label), "Options": pairs(&opt),
            });
            let v = client::read_json(c.post("/networks/create", Some(&body)).await?).await?;
            println!("{}", v["Id"].as_str().unwrap_or(""));
        }
        NetworkCommand::Ls { quiet, filter, no_trunc, format: f } => {
            let v = c.get(&format!("/networks?filters={}", filters_param(&filter)?)).await?;
            let mut nets: Vec<Value> = v.as_array().cloned().unwrap_or_default();
            nets.sort_by(|a, b| a["Name"].as_str().cmp(&b["Name"].as_str()));
            let id = |n: &Value| {
                let id = n["Id"].as_str().unwrap_or("");
                if no_trunc {
                    id.to_string()
                } else {
                    format::short_id(id)
                }
            };
            if quiet {
                nets.iter().for_each(|n| println!("{}", id(n)));
            } else if let Some(f) = f {
                let rows: Vec<Value> = nets.iter().map(|n| json!({ "ID": id(n), "Name": n["Name"], "Driver": n["Driver"], "Scope": n["Scope"], "Internal": n["Internal"], "Labels": n["Labels"] })).collect();
                print_formatted(&f, &rows);
            } else {
                let rows: Vec<Vec<String>> = nets
                    .iter()
                    .map(|n| {
                        vec![
                            id(n),
                            n["Name"].as_str().unwrap_or("").into(),
                            n["Driver"].as_str().unwrap_or("").into(),
                            n["Scope"].as_str().unwrap_or("").into(),
                        ]
                    })
                    .collect();
                print!("{}", format::table(&["NETWORK ID", "NAME", "DRIVER", "SCOPE"], &rows));
            }
        }
        NetworkCommand::Inspect { format: f, networks } => {
            return inspect_each(c, "/networks", &networks, f.as_deref()).await
        }
        NetworkCommand::Rm { networks } => {
            return each(
                &networks,
                |n| async move { c.delete(&format!("/networks/{}", urlencode(&n))).await.map(drop) },
            )
            .await;
        }
        NetworkCommand::Connect { ip, ip6, link_local_ip, alias, link, driver_opt, network, container } => {
            let ep = EndpointSettings {
                ipam_config: (ip.is_some() || ip6.is_some() || !link_local_ip.is_empty()).then(|| EndpointIpam {
                    ipv4_address: ip.unwrap_or_default(),
                    ipv6_address: ip6.unwrap_or_default(),
                    link_local_ips: (!link_local_ip.is_empty()).then_some(link_local_ip),
                }),
                aliases: Some(alias),
                links: (!link.is_empty()).then_some(link),
                driver_opts: (!driver_opt.is_empty()).then(|| {
                    driver_opt
                        .iter()
                        .map(|l| l.split_once('=').unwrap_or((l, "")))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                }),
                ..Default::default()
            };
            c.post(
                &format!("/networks/{}/connect", urlencode(&network)),
                Some(&json!({ "Container": container, "EndpointConfig": ep })),
            )
            .await?;
        }
        NetworkCommand::Disconnect { force, network, container } => {
            c.post(
                &format!("/networks/{}/disconnect", urlencode(&network)),
                Some(&json!({ "Container": container, "Force": force })),
            )
            .await?;
        }
        NetworkCommand::Prune { force } => {
            if !force {
                bail!("this removes all networks not used by a container: pass -f to confirm");
            }
            let v = client::read_json(c.post("/networks/prune", None).await?).await?;
            let deleted: Vec<&str> =
                v["NetworksDeleted"].as_array().into_iter().flatten().filter_map(|n| n.as_str()).collect();
            if !deleted.is_empty() {
                println!("Deleted Networks:");
                deleted.iter().for_each(|n| println!("{n}"));
            }
        }
    }
    Ok(0)
}
