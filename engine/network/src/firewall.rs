//! Firewall rules of the bridge networks, in chains engined owns: masquerade of each network's
//! traffic to the outside, forwarding accepted for its bridges (whatever the host's FORWARD
//! policy), isolation between networks, and nothing for `--internal` networks beyond their
//! bridge. Two backends, chosen at start from what the host has (iptables first, as its
//! FORWARD policy may be Docker's DROP, which only a rule in the same chain overrides):
//! - iptables (nft or legacy): written with `iptables-restore --noflush` (one atomic transaction
//!   per table: the chains are declared, so emptied, and refilled), hooked into the built-in
//!   FORWARD and POSTROUTING chains once;
//! - nftables: one table of its own (`ip engine_<bridge>`), replaced whole in one `nft -f`
//!   transaction.
//!
//! IPv6 networks (`--ipv6`) get the same rules for their IPv6 subnets from a second
//! [`Firewall`] of the same backend ([`Firewall::for_ipv6`]: ip6tables, or an `ip6` table).
//!
//! Must never touch a chain or table it does not own, beyond its own jump rule in FORWARD and
//! POSTROUTING.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::IpNet;

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("running {cmd}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("no {0} on this host")]
    Missing(String),
}

type Result<T> = std::result::Result<T, FirewallError>;

/// What one bridge network needs from the firewall.
#[derive(Clone, Debug, PartialEq)]
pub struct BridgeRules {
    pub bridge: String,
    /// Its subnet of the firewall's family.
    pub subnet: IpNet,
    /// No traffic leaves the bridge, and no masquerade.
    pub internal: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    Iptables,
    Nftables,
}

/// The chains (iptables) or table (nftables) of one engined; their names keep side-by-side
/// instances apart.
pub struct Firewall {
    prefix: String,
    backend: Backend,
    /// The iptables, ip6tables or nft binary.
    tool: String,
    /// IPv6 rules (ip6tables, an `ip6` nftables table) rather than IPv4 ones.
    ipv6: bool,
}

/// The prefix of one engined's chains: `ENGINE` for the default bridge `engine0`, else
/// `ENGINE-<8 hex digits of the bridge name>` (chain names must fit iptables' 28 characters:
/// `ENGINE-xxxxxxxx-ISOLATION-1` is 27).
pub fn chain_prefix(bridge: &str) -> String {
    if bridge == "engine0" {
        return "ENGINE".into();
    }
    // FNV-1a: stable across builds and machines
    let h = bridge.bytes().fold(0x811c9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x01000193));
    format!("ENGINE-{h:08x}")
}

/// The nftables table of the engined whose default bridge is `bridge`.
pub fn nft_table(bridge: &str) -> String {
    let p = chain_prefix(bridge);
    match p.strip_prefix("ENGINE-") {
        Some(h) => format!("engine_{h}"),
        None => "engine".into(),
    }
}

fn find(names: &[&str]) -> Option<String> {
    names
        .iter()
        .flat_map(|n| ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(|d| format!("{d}/{n}")))
        .find(|p| std::path::Path::new(p).exists())
}

impl Firewall {
    /// The firewall to use: `choice` is auto (iptables if installed, else nftables), iptables
    /// or nftables. `prefix` ([`chain_prefix`]) names the chains (`<prefix>-FORWARD`, …) and the
    /// nftables table.
    pub fn detect(prefix: &str, choice: &str) -> Result<Option<Firewall>> {
        let make = |backend, tool: String| Some(Firewall { prefix: prefix.to_string(), backend, tool, ipv6: false });
        let iptables = || find(&["iptables"]);
        let nft = || find(&["nft"]);
        Ok(match choice {
            "auto" | "" => iptables()
                .and_then(|t| make(Backend::Iptables, t))
                .or_else(|| nft().and_then(|t| make(Backend::Nftables, t))),
            "iptables" => make(Backend::Iptables, iptables().ok_or_else(|| FirewallError::Missing("iptables".into()))?),
            "nftables" => make(Backend::Nftables, nft().ok_or_else(|| FirewallError::Missing("nft".into()))?),
            "none" => None,
            other => {
                return Err(FirewallError::Missing(format!(
                    "a firewall backend named {other:?} (auto, iptables, nftables or none)"
                )))
            }
        })
    }

    /// The firewall of the same backend and chains for IPv6 subnets; `None` when the host has
    /// no ip6tables.
    pub fn for_ipv6(&self) -> Option<Firewall> {
        let tool = match self.backend {
            Backend::Iptables => find(&["ip6tables"])?,
            Backend::Nftables => self.tool.clone(),
        };
        Some(Firewall { prefix: self.prefix.clone(), backend: self.backend, tool, ipv6: true })
    }

    /// `ip` or `ip6`: the nftables family and address keyword.
    fn family(&self) -> &'static str {
        if self.ipv6 {
            "ip6"
        } else {
            "ip"
        }
    }

    pub fn kind(&self) -> Backend {
        self.backend
    }

    /// What the firewall is, for `info`: `iptables v1.8.9 (nf_tables)`, `nftables v1.0.6 …`.
    pub fn backend(&self) -> String {
        let out = Command::new(&self.tool)
            .arg(if self.backend == Backend::Iptables { "-V" } else { "--version" })
            .output()
            .ok();
        let fallback = if self.backend == Backend::Iptables { "iptables" } else { "nftables" };
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| fallback.into())
    }

    /// The nftables table of this engined.
    pub fn table(&self) -> String {
        match self.prefix.strip_prefix("ENGINE-") {
            Some(h) => format!("engine_{}", h.replace('-', "_")),
            None => "engine".into(),
        }
    }

    /// The whole nftables table for these networks, replacing the one there (one transaction).
    pub fn render_nft(&self, nets: &[BridgeRules]) -> String {
        let (t, f) = (self.table(), self.family());
        let mut fwd = String::new();
        for n in nets {
            let b = &n.bridge;
            let others: Vec<String> =
                nets.iter().filter(|o| o.bridge != n.bridge).map(|o| format!("\"{}\"", o.bridge)).collect();
            if !others.is_empty() {
                fwd += &format!("        iifname \"{b}\" oifname {{ {} }} drop\n", others.join(", "));
            }
            fwd += &format!("        iifname \"{b}\" oifname \"{b}\" accept\n");
            if n.internal {
                fwd += &format!("        iifname \"{b}\" drop\n        oifname \"{b}\" drop\n");
            } else {
                fwd += &format!("        oifname \"{b}\" ct state related,established accept\n");
                fwd += &format!("        iifname \"{b}\" accept\n");
                fwd += &format!("        oifname \"{b}\" drop\n");
            }
        }
        let mut post = String::new();
        for n in nets.iter().filter(|n| !n.internal) {
            post += &format!("        {f} saddr {} oifname != \"{}\" masquerade\n", n.subnet, n.bridge);
        }
        format!(
            "table {f} {t} {{}}\ndelete table {f} {t}\ntable {f} {t} {{\n    chain forward {{\n        type filter hook forward priority filter; policy accept;\n{fwd}    }}\n    chain postrouting {{\n        type nat hook postrouting priority srcnat; policy accept;\n{post}    }}\n}}\n"
        )
    }

    fn chain(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    /// The chains' whole contents for these networks.
    pub fn render(&self, nets: &[BridgeRules]) -> (String, String) {
        let (fwd, iso1, iso2, post) =
            (self.chain("FORWARD"), self.chain("ISOLATION-1"), self.chain("ISOLATION-2"), self.chain("POSTROUTING"));
        let mut filter = format!("*filter\n:{fwd} - [0:0]\n:{iso1} - [0:0]\n:{iso2} - [0:0]\n-A {fwd} -j {iso1}\n");
        for n in nets {
            let b = &n.bridge;
            filter += &format!("-A {fwd} -i {b} -o {b} -j ACCEPT\n");
            if n.internal {
                filter += &format!("-A {fwd} -i {b} ! -o {b} -j DROP\n-A {fwd} ! -i {b} -o {b} -j DROP\n");
            } else {
                filter += &format!("-A {fwd} -o {b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
                filter += &format!("-A {fwd} -i {b} ! -o {b} -j ACCEPT\n");
                filter += &format!("-A {fwd} -o {b} -j DROP\n");
            }
            filter += &format!("-A {iso1} -i {b} ! -o {b} -j {iso2}\n");
            filter += &format!("-A {iso2} -o {b} -j DROP\n");
        }
        filter += &format!("-A {iso1} -j RETURN\n-A {iso2} -j RETURN\nCOMMIT\n");
        let mut nat = format!("*nat\n:{post} - [0:0]\n");
        for n in nets.iter().filter(|n| !n.internal) {
            nat += &format!("-A {post} -s {} ! -o {} -j MASQUERADE\n", n.subnet, n.bridge);
        }
        nat += "COMMIT\n";
        (filter, nat)
    }

    /// Makes the chains (or table) hold exactly the rules for `nets`, and the built-in chains
    /// jump to them.
    pub fn apply(&self, nets: &[BridgeRules]) -> Result<()> {
        if self.backend == Backend::Nftables {
            return self.feed(&[&self.tool, "-f", "-"], &self.render_nft(nets));
        }
        let (filter, nat) = self.render(nets);
        self.restore(&(filter + &nat))?;
        self.ensure_jump("filter", "FORWARD", &self.chain("FORWARD"))?;
        self.ensure_jump("nat", "POSTROUTING", &self.chain("POSTROUTING"))
    }

    /// Removes the chains and the jumps to them (or the table): the host is as before engined
    /// came.
    pub fn remove(&self) -> Result<()> {
        if self.backend == Backend::Nftables {
            let t = self.table();
            let f = self.family();
            return self.feed(&[&self.tool, "-f", "-"], &format!("table {f} {t} {{}}\ndelete table {f} {t}\n"));
        }
        for (table, builtin, chain) in
            [("filter", "FORWARD", self.chain("FORWARD")), ("nat", "POSTROUTING", self.chain("POSTROUTING"))]
        {
            while self.run(&["-t", table, "-C", builtin, "-j", &chain]).is_ok() {
                self.run(&["-t", table, "-D", builtin, "-j", &chain])?;
            }
        }
        let chains = [
            ("filter", self.chain("FORWARD")),
            ("filter", self.chain("ISOLATION-1")),
            ("filter", self.chain("ISOLATION-2")),
            ("nat", self.chain("POSTROUTING")),
        ];
        let present: Vec<&(&str, String)> =
            chains.iter().filter(|(table, chain)| self.run(&["-t", table, "-n", "-L", chain]).is_ok()).collect();
        // all emptied first: a chain still jumped to from another cannot be deleted
        for (table, chain) in &present {
            self.run(&["-t", table, "-F", chain])?;
        }
        for (table, chain) in &present {
            self.run(&["-t", table, "-X", chain])?;
        }
        Ok(())
    }

    fn ensure_jump(&self, table: &str, builtin: &str, chain: &str) -> Result<()> {
        if self.run(&["-t", table, "-C", builtin, "-j", chain]).is_err() {
            self.run(&["-t", table, "-I", builtin, "1", "-j", chain])?;
        }
        Ok(())
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        let mut argv = vec![self.tool.as_str(), "-w", "5"];
        argv.extend_from_slice(args);
        self.feed(&argv, "")
    }

    fn restore(&self, rules: &str) -> Result<()> {
        let restore = format!("{}-restore", self.tool);
        self.feed(&[&restore, "-w", "5", "--noflush"], rules)
    }

    /// Runs `argv` with `input` on its stdin.
    fn feed(&self, argv: &[&str], input: &str) -> Result<()> {
        let cmd = argv.join(" ");
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| FirewallError::Spawn { cmd: cmd.clone(), source })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).map_err(|source| FirewallError::Spawn { cmd: cmd.clone(), source })?;
        }
        let out = child.wait_with_output().map_err(|source| FirewallError::Spawn { cmd: cmd.clone(), source })?;
        if !out.status.success() {
            return Err(FirewallError::Failed { cmd, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_for_two_networks() {
        let fw = Firewall { prefix: "ENGINE".into(), backend: Backend::Iptables, tool: "iptables".into(), ipv6: false };
        let nets = [
            BridgeRules { bridge: "engine0".into(), subnet: "172.17.0.0/16".parse().unwrap(), internal: false },
            BridgeRules { bridge: "br-1".into(), subnet: "10.0.0.0/24".parse().unwrap(), internal: true },
        ];
        let (filter, nat) = fw.render(&nets);
        assert!(filter.contains(":ENGINE-FORWARD - [0:0]\n"));
        assert!(filter.contains("-A ENGINE-ISOLATION-1 -i engine0 ! -o engine0 -j ENGINE-ISOLATION-2\n"));
        assert!(filter.contains("-A ENGINE-ISOLATION-2 -o br-1 -j DROP\n"));
        assert!(filter.contains("-A ENGINE-FORWARD -i br-1 ! -o br-1 -j DROP\n"));
        assert!(filter.ends_with("COMMIT\n"));
        assert_eq!(nat, "*nat\n:ENGINE-POSTROUTING - [0:0]\n-A ENGINE-POSTROUTING -s 172.17.0.0/16 ! -o engine0 -j MASQUERADE\nCOMMIT\n");
        let nft =
            Firewall { prefix: chain_prefix("et12x3"), backend: Backend::Nftables, tool: "nft".into(), ipv6: false };
        assert_eq!(nft.table(), nft_table("et12x3"));
        assert_eq!(chain_prefix("a-bridge-name15").len(), 15);
        assert!((chain_prefix("a-bridge-name15") + "-ISOLATION-1").len() <= 28);
        assert_eq!(
            Firewall { prefix: "ENGINE".into(), backend: Backend::Nftables, tool: "nft".into(), ipv6: false }.table(),
            "engine"
        );
        let t = nft.render_nft(&nets);
        let tn = nft_table("et12x3");
        assert!(t.starts_with(&format!("table ip {tn} {{}}\ndelete table ip {tn}\ntable ip {tn} {{\n")), "{t}");
        assert!(t.contains("iifname \"engine0\" oifname { \"br-1\" } drop\n"), "{t}");
        assert!(t.contains("ip saddr 172.17.0.0/16 oifname != \"engine0\" masquerade\n"), "{t}");
        assert!(!t.contains("10.0.0.0/24"), "an internal network is not masqueraded: {t}");
        // the IPv6 rules of a dual-stack network: the same shape, in an ip6 table
        let nft6 = nft.for_ipv6().unwrap();
        let v6 = [BridgeRules { bridge: "br-2".into(), subnet: "fd00:1::/64".parse().unwrap(), internal: false }];
        let t6 = nft6.render_nft(&v6);
        assert!(t6.starts_with(&format!("table ip6 {tn} {{}}\ndelete table ip6 {tn}\n")), "{t6}");
        assert!(t6.contains("ip6 saddr fd00:1::/64 oifname != \"br-2\" masquerade\n"), "{t6}");
        let (_, nat6) = fw.render(&v6);
        assert!(nat6.contains("-A ENGINE-POSTROUTING -s fd00:1::/64 ! -o br-2 -j MASQUERADE\n"), "{nat6}");
    }
}
