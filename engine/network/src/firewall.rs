//! Firewall rules of the bridge networks, in chains engined owns: masquerade of each network's
//! traffic to the outside, forwarding accepted for its bridges (whatever the host's FORWARD
//! policy), isolation between networks, and nothing for `--internal` networks beyond their
//! bridge. Written with `iptables-restore --noflush` (one atomic transaction per table: the
//! chains are declared, so emptied, and refilled), and hooked into the built-in chains once.
//!
//! Must never touch a chain it does not own, beyond its own jump rule in FORWARD and
//! POSTROUTING.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("running {cmd}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
}

type Result<T> = std::result::Result<T, FirewallError>;

/// What one bridge network needs from the firewall.
#[derive(Clone, Debug, PartialEq)]
pub struct BridgeRules {
    pub bridge: String,
    pub subnet: Ipv4Net,
    /// No traffic leaves the bridge, and no masquerade.
    pub internal: bool,
}

/// The iptables chains of one engined (their prefix keeps side-by-side instances apart).
pub struct Firewall {
    prefix: String,
    iptables: String,
}

impl Firewall {
    /// The firewall on this host: iptables (nft or legacy, whichever `iptables` is), if it is
    /// installed. `prefix` names the chains (`<prefix>-FORWARD`, …); at most 17 characters.
    pub fn detect(prefix: &str) -> Option<Firewall> {
        let found = ["/usr/sbin/iptables", "/sbin/iptables", "/usr/bin/iptables"].into_iter().find(|p| std::path::Path::new(p).exists())?;
        Some(Firewall { prefix: prefix.to_string(), iptables: found.to_string() })
    }

    pub fn backend(&self) -> String {
        let out = Command::new(&self.iptables).arg("-V").output().ok();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_else(|| "iptables".into())
    }

    fn chain(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    /// The chains' whole contents for these networks.
    pub fn render(&self, nets: &[BridgeRules]) -> (String, String) {
        let (fwd, iso1, iso2, post) = (self.chain("FORWARD"), self.chain("ISOLATION-1"), self.chain("ISOLATION-2"), self.chain("POSTROUTING"));
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

    /// Makes the chains hold exactly the rules for `nets`, and the built-in chains jump to them.
    pub fn apply(&self, nets: &[BridgeRules]) -> Result<()> {
        let (filter, nat) = self.render(nets);
        self.restore(&(filter + &nat))?;
        self.ensure_jump("filter", "FORWARD", &self.chain("FORWARD"))?;
        self.ensure_jump("nat", "POSTROUTING", &self.chain("POSTROUTING"))
    }

    /// Removes the chains and the jumps to them: the host is as before engined came.
    pub fn remove(&self) -> Result<()> {
        for (table, builtin, chain) in [("filter", "FORWARD", self.chain("FORWARD")), ("nat", "POSTROUTING", self.chain("POSTROUTING"))] {
            while self.run(&["-t", table, "-C", builtin, "-j", &chain]).is_ok() {
                self.run(&["-t", table, "-D", builtin, "-j", &chain])?;
            }
        }
        for (table, chain) in [("filter", self.chain("FORWARD")), ("filter", self.chain("ISOLATION-1")), ("filter", self.chain("ISOLATION-2")), ("nat", self.chain("POSTROUTING"))] {
            if self.run(&["-t", table, "-n", "-L", &chain]).is_ok() {
                self.run(&["-t", table, "-F", &chain])?;
            }
        }
        for (table, chain) in [("filter", self.chain("FORWARD")), ("filter", self.chain("ISOLATION-1")), ("filter", self.chain("ISOLATION-2")), ("nat", self.chain("POSTROUTING"))] {
            if self.run(&["-t", table, "-n", "-L", &chain]).is_ok() {
                self.run(&["-t", table, "-X", &chain])?;
            }
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
        let cmd = format!("{} {}", self.iptables, args.join(" "));
        let out = Command::new(&self.iptables).arg("-w").args(args).stdin(Stdio::null()).output().map_err(|source| FirewallError::Spawn { cmd: cmd.clone(), source })?;
        if !out.status.success() {
            return Err(FirewallError::Failed { cmd, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
        }
        Ok(())
    }

    fn restore(&self, rules: &str) -> Result<()> {
        let restore = format!("{}-restore", self.iptables);
        let cmd = format!("{restore} --noflush");
        let mut child = Command::new(&restore)
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| FirewallError::Spawn { cmd: cmd.clone(), source })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(rules.as_bytes()).map_err(|source| FirewallError::Spawn { cmd: cmd.clone(), source })?;
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
        let fw = Firewall { prefix: "ENGINE".into(), iptables: "iptables".into() };
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
    }
}
