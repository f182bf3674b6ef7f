//! The name files a container gets: /etc/hosts (itself; the other containers of its user
//! networks are the embedded DNS server's) and /etc/resolv.conf (the host's, without the
//! loopback resolvers that mean nothing inside a network namespace).
//!
//! The files are bind-mounted into the container, so a rewrite must keep the inode: it is
//! written in place ([`write_in_place`]), never renamed over.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

/// The hosts file of a container: localhost lines, then its own addresses with its hostname
/// (127.0.1.1 when it has none).
pub fn hosts(hostname: &str, own: &[IpAddr]) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n");
    if own.is_empty() {
        s += &format!("127.0.1.1\t{hostname}\n");
    }
    for ip in own {
        s += &format!("{ip}\t{hostname}\n");
    }
    s
}

/// The host's resolv.conf for a container: `/etc/resolv.conf`, or systemd-resolved's upstream
/// list when the former names only its loopback stub (as Docker does).
pub fn host_resolv_conf() -> String {
    let main = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let only_loopback = !main.lines().any(|l| l.trim_start().starts_with("nameserver") && !is_loopback_ns(l));
    if only_loopback {
        if let Ok(upstream) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf") {
            return upstream;
        }
    }
    main
}

/// The host's resolv.conf without loopback nameservers; Docker's public fallbacks when none
/// is left (written, never contacted by the engine itself).
pub fn resolv_conf(host: &str) -> String {
    let kept: Vec<&str> =
        host.lines().filter(|l| !(l.trim_start().starts_with("nameserver") && is_loopback_ns(l))).collect();
    let mut s = kept.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    if !kept.iter().any(|l| l.trim_start().starts_with("nameserver")) {
        s += "nameserver 8.8.8.8\nnameserver 8.8.4.4\n";
    }
    s
}

fn is_loopback_ns(line: &str) -> bool {
    line.split_whitespace().nth(1).and_then(|a| a.parse::<std::net::IpAddr>().ok()).is_some_and(|a| a.is_loopback())
}

/// Rewrites `path` keeping its inode (a bind mount of it sees the new content).
pub fn write_in_place(path: &Path, content: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    f.write_all(content.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_resolvers() {
        let h = hosts("web", &[std::net::Ipv4Addr::new(10, 0, 0, 2).into(), "fd00::2".parse().unwrap()]);
        assert!(h.ends_with("10.0.0.2\tweb\nfd00::2\tweb\n"), "{h}");
        assert!(!h.contains("127.0.1.1"));
        assert!(hosts("box", &[]).contains("127.0.1.1\tbox\n"));
        assert_eq!(
            resolv_conf("search lan\nnameserver 127.0.0.53\nnameserver 10.1.1.1\n"),
            "search lan\nnameserver 10.1.1.1\n"
        );
        assert_eq!(resolv_conf("nameserver 127.0.0.53\n"), "nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }

    #[test]
    fn rewrite_keeps_the_inode() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts");
        write_in_place(&p, "a long first content\n").unwrap();
        let ino = std::fs::metadata(&p).unwrap().ino();
        write_in_place(&p, "short\n").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().ino(), ino);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "short\n");
    }
}
