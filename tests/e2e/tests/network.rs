//! Networking end to end, through the engine CLI against a private engined: published ports
//! through engine-proxy, user networks with names and isolation, connect and disconnect, the
//! none and container: modes, and that nothing stays behind (veths, bridges, rules, address
//! allocations, namespaces, proxies). Traffic goes only to loopback and to the test's own
//! containers: containers that look names up get `--dns 127.0.0.1`, so a name their embedded
//! DNS server does not know is asked of the host's loopback, where nothing answers, instead of
//! the host's resolver.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use engine_test_support::engined::Engined;
use engine_test_support::*;

/// A port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET / over plain HTTP/1.0; the body, or None when nothing answers.
fn http_get(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// A container serving `marker` over HTTP on port 80 (busybox httpd).
fn serve(marker: &str) -> String {
    format!("mkdir -p /www && echo {marker} > /www/index.html && exec httpd -f -p 80 -h /www")
}

/// `GET path` on the API socket; the body.
fn api_get(e: &Engined, path: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(&e.sock).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: engine\r\n\r\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// The value of the series of `name` whose labels contain all of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn veths_of(id: &str) -> Vec<String> {
    Engined::links().into_iter().filter(|l| l.starts_with(&format!("ve{}", &id[..12]))).collect()
}

#[test]
fn published_port_answers_through_engine_proxy() {
    let mut e = Engined::start();
    e.import_busybox("bb");
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    let id = e
        .ok(&["run", "-d", "--name", "web", "-p", &publish, "bb", "sh", "-c", &serve("hello-through-the-proxy")])
        .trim()
        .to_string();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for("the published port to answer", || http_get(addr).is_some_and(|b| b.contains("hello-through-the-proxy")));
    assert_eq!(e.ok(&["port", "web"]).trim(), format!("80/tcp -> 127.0.0.1:{port}"));
    assert_eq!(e.ok(&["port", "web", "80"]).trim(), format!("127.0.0.1:{port}"));
    assert!(e.ok(&["ps"]).contains(&format!("127.0.0.1:{port}->80/tcp")));
    assert_eq!(e.proxies().len(), 1, "one engine-proxy per published port");
    // its connections and bytes are metrics
    let port_label = format!("host_port=\"{port}\"");
    wait_for("the proxy's counters in /metrics", || {
        let m = api_get(&e, "/metrics");
        metric(&m, "engine_proxy_connections_total", &[&port_label, "container_name=\"web\""]).is_some_and(|v| v >= 1.0)
            && metric(&m, "engine_proxy_bytes_total", &[&port_label, "direction=\"out\""]).is_some_and(|v| v > 0.0)
            && metric(&m, "engine_proxy_bytes_total", &[&port_label, "direction=\"in\""]).is_some_and(|v| v > 0.0)
    });
    // the container is on the default bridge, with an address of it and its default route
    let ip = e.inspect("web", "{{.NetworkSettings.IPAddress}}");
    assert!(ip.starts_with(&format!("10.{}.{}.", e.pool.0, e.pool.1)), "{ip}");
    let routes = e.ok(&["exec", "web", "ip", "route"]);
    assert!(routes.contains(&format!("default via 10.{}.{}.1 dev eth0", e.pool.0, e.pool.1)), "{routes}");
    assert!(e.ok(&["exec", "web", "ip", "addr", "show", "lo"]).contains("127.0.0.1/8"));
    assert!(e.ok(&["exec", "web", "cat", "/etc/hosts"]).contains(&format!("{ip}\t{}", &id[..12])));
    // the bridge holds the container's veth
    assert_eq!(veths_of(&id).len(), 1);
    let master = std::fs::read_link(format!("/sys/class/net/{}/master", veths_of(&id)[0])).unwrap();
    assert!(master.ends_with(&e.bridge), "{master:?}");

    // the port is taken: a clear error, and the failed start leaves no veth, namespace or proxy
    let out = e.engine(&["run", "-d", "--name", "second", "-p", &publish, "bb", "sleep", "100"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("address already in use") && err.lines().count() == 1, "{err}");
    let second = e.inspect("second", "{{.Id}}");
    assert_eq!(e.inspect("second", "{{.State.Status}}"), "created");
    wait_for("the failed start's veth to go", || veths_of(&second).is_empty());
    assert_eq!(e.netns_files(), 1);
    assert_eq!(e.proxies().len(), 1);
    e.ok(&["rm", "second"]);

    // -P publishes exposed ports on free host ports
    e.ok(&["run", "-d", "--name", "auto", "--expose", "80", "-P", "bb", "sh", "-c", &serve("published-all")]);
    let auto = e.ok(&["port", "auto", "80/tcp"]);
    let auto_port: u16 = auto.lines().next().unwrap().rsplit(':').next().unwrap().parse().unwrap();
    // on both families, as dockerd publishes them
    assert_eq!(auto, format!("0.0.0.0:{auto_port}\n[::]:{auto_port}\n"));
    let auto_addr: SocketAddr = format!("127.0.0.1:{auto_port}").parse().unwrap();
    wait_for("the -P port to answer", || http_get(auto_addr).is_some_and(|b| b.contains("published-all")));
    let auto_v6: SocketAddr = format!("[::1]:{auto_port}").parse().unwrap();
    assert!(http_get(auto_v6).is_some_and(|b| b.contains("published-all")), "not on [::1]");
    assert_eq!(e.proxies().len(), 2, "one engine-proxy serves both families");

    // engined killed: the proxy and the container keep serving; after the restart all is known
    e.kill9();
    assert!(http_get(addr).is_some_and(|b| b.contains("hello-through-the-proxy")));
    e.restart();
    assert_eq!(e.ok(&["port", "web"]).trim(), format!("80/tcp -> 127.0.0.1:{port}"));
    assert_eq!(e.proxies().len(), 2);

    // stop: the proxy goes and the port is free again; the veth and namespace go
    e.ok(&["stop", "-t", "1", "web", "auto"]);
    wait_for("the proxies to exit", || e.proxies().is_empty());
    assert!(TcpListener::bind(addr).is_ok(), "the host port was not released");
    wait_for("web's veth to go with its namespace", || veths_of(&id).is_empty());
    assert_eq!(e.netns_files(), 0);
    assert_eq!(e.ok(&["port", "web"]).trim(), "");
    // started again, it publishes again
    e.ok(&["start", "web"]);
    wait_for("the port to answer after a restart", || {
        http_get(addr).is_some_and(|b| b.contains("hello-through-the-proxy"))
    });
    e.ok(&["rm", "-f", "web", "auto"]);
    wait_for("the proxy to exit", || e.proxies().is_empty());
    wait_for("web's veth to go", || veths_of(&id).is_empty());
    assert_eq!(e.netns_files(), 0);
    let bridge = e.ok(&["network", "inspect", "bridge", "-f", "{{json .Containers}}"]);
    assert_eq!(bridge.trim(), "{}", "allocations left on the default bridge");

    // stopping engined takes its bridge and chains with it
    let bridge_name = e.bridge.clone();
    assert!(!e.firewall_rules(&[]).is_empty(), "engined made no firewall rules");
    drop(e);
    assert!(!Engined::links().contains(&bridge_name), "bridge left after engined stopped");
}

#[test]
fn user_networks_resolve_names_and_are_isolated() {
    let e = Engined::start();
    e.import_busybox("bb");
    let n1 = e.ok(&["network", "create", "front"]).trim().to_string();
    let subnet = e.subnet(7);
    let n2 = e.ok(&["network", "create", "--subnet", &subnet, "back"]).trim().to_string();
    assert_eq!(n1.len(), 64);
    let ls = e.ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    for want in ["bridge bridge", "host host", "none null", "front bridge", "back bridge"] {
        assert!(ls.contains(want), "{ls}");
    }
    assert!(e.fails(&["network", "create", "front"]).contains("already exists"));
    assert!(e.fails(&["network", "create", "--subnet", &subnet, "again"]).contains("overlaps"));
    assert!(e.fails(&["network", "rm", "bridge"]).contains("pre-defined"));
    for bad in ["br+x", "br%d", "br\"x", "a-name-longer-than-15"] {
        assert!(
            e.fails(&["network", "create", "-o", &format!("com.docker.network.bridge.name={bad}"), "badbridge"])
                .contains("invalid bridge name"),
            "{bad}"
        );
    }
    let br = |n: &str| format!("br-{}", &n[..12]);
    assert!(Engined::links().contains(&br(&n1)) && Engined::links().contains(&br(&n2)));

    let a1 = e
        .ok(&[
            "run",
            "-d",
            "--name",
            "a1",
            "--network",
            "front",
            "--dns",
            "127.0.0.1",
            "bb",
            "sh",
            "-c",
            &serve("from-a1"),
        ])
        .trim()
        .to_string();
    let a2 = e
        .ok(&[
            "run",
            "-d",
            "--name",
            "a2",
            "--network",
            "front",
            "--dns",
            "127.0.0.1",
            "--network-alias",
            "db",
            "bb",
            "sh",
            "-c",
            &serve("from-a2"),
        ])
        .trim()
        .to_string();
    let fixed = subnet.replace(".0/24", ".50");
    let b1 = e
        .ok(&[
            "run",
            "-d",
            "--name",
            "b1",
            "--network",
            "back",
            "--dns",
            "127.0.0.1",
            "--ip",
            &fixed,
            "bb",
            "sh",
            "-c",
            &serve("from-b1"),
        ])
        .trim()
        .to_string();
    assert_eq!(e.inspect("b1", "{{.NetworkSettings.Networks.back.IPAddress}}"), fixed);

    // by name, alias and short id, through the embedded DNS server; /etc/hosts names only itself
    let resolv = e.ok(&["exec", "a1", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 127.0.0.11\n") && resolv.contains("options ndots:0\n"), "{resolv}");
    let hosts = e.ok(&["exec", "a1", "cat", "/etc/hosts"]);
    // (a word of its own: a1's short id may begin with "a2")
    let names: Vec<&str> = hosts.split_whitespace().collect();
    assert!(!names.contains(&"a2") && !names.contains(&"b1"), "{hosts}");
    let a2_ip = e.inspect("a2", "{{.NetworkSettings.Networks.front.IPAddress}}");
    let knows = |who: &str, name: &str| e.engine(&["exec", who, "nslookup", "-type=a", name]);
    for name in ["a2", "db", &a2[..12]] {
        assert!(stdout(&knows("a1", name)).contains(&format!("Address: {a2_ip}")), "{name}");
    }
    assert!(!knows("a1", "b1").status.success(), "a name of another network answered");
    wait_for("a2 to serve", || e.engine(&["exec", "a1", "wget", "-q", "-O-", "http://db/"]).status.success());
    assert_eq!(e.ok(&["exec", "a1", "wget", "-q", "-O-", "http://db/"]).trim(), "from-a2");
    wait_for("a1 to serve", || e.engine(&["exec", "a2", "wget", "-q", "-O-", "http://a1/"]).status.success());
    assert_eq!(e.ok(&["exec", "a2", "wget", "-q", "-O-", "http://a1/"]).trim(), "from-a1");

    // b1 serves (the host reaches it on its bridge), but not to a container of another network
    let b1_addr: SocketAddr = format!("{fixed}:80").parse().unwrap();
    wait_for("b1 to serve", || http_get(b1_addr).is_some_and(|b| b.contains("from-b1")));
    let cross = e.engine(&["exec", "a1", "nc", "-w", "2", &fixed, "80"]);
    assert!(!cross.status.success(), "a container of another network reached b1: {}", stdout(&cross));
    // the same connection from b1's own network works (the check above is not a broken nc)
    assert!(e
        .ok(&["exec", "b1", "sh", "-c", &format!("echo 'GET / HTTP/1.0' | nc -w 2 {fixed} 80")])
        .contains("from-b1"));

    // renamed, it is known by its new name
    e.ok(&["rename", "a2", "a2new"]);
    assert!(stdout(&knows("a1", "a2new")).contains(&format!("Address: {a2_ip}")));
    assert!(!knows("a1", "a2").status.success(), "the old name still answered");
    e.ok(&["rename", "a2new", "a2"]);
    // a container that comes later is in the others' hosts files, and leaves them when it stops
    e.ok(&["run", "-d", "--name", "a3", "--network", "front", "--dns", "127.0.0.1", "bb", "sleep", "1000"]);
    assert!(knows("a1", "a3").status.success());
    e.ok(&["stop", "-t", "0", "a3"]);
    assert!(!knows("a1", "a3").status.success(), "a stopped container still answered");

    // connect a1 to back: eth1, b1 reachable by name; disconnect: gone again
    e.ok(&["network", "connect", "back", "a1"]);
    assert!(e.ok(&["exec", "a1", "ip", "addr", "show", "eth1"]).contains(&subnet.replace(".0/24", ".")));
    assert_eq!(e.ok(&["exec", "a1", "wget", "-q", "-O-", "http://b1/"]).trim(), "from-b1");
    let inspected = e.ok(&["network", "inspect", "back", "-f", "{{json .Containers}}"]);
    assert!(inspected.contains(&a1) && inspected.contains(&b1), "{inspected}");
    assert!(e.fails(&["network", "connect", "back", "a1"]).contains("already exists"));
    e.ok(&["network", "disconnect", "back", "a1"]);
    assert!(!knows("a1", "b1").status.success());
    assert!(!e.engine(&["exec", "a1", "ip", "addr", "show", "eth1"]).status.success());

    // a network with containers on it stays
    assert!(e.fails(&["network", "rm", "front"]).contains("active endpoints"));
    assert!(Engined::links().contains(&br(&n1)));

    // everything goes: containers, then networks; nothing of them stays
    e.ok(&["rm", "-f", "a1", "a2", "a3", "b1"]);
    for id in [&a1, &a2, &b1] {
        wait_for("the containers' veths to go with their namespaces", || veths_of(id).is_empty());
    }
    assert_eq!(e.netns_files(), 0);
    for n in ["front", "back", "bridge"] {
        assert_eq!(
            e.ok(&["network", "inspect", n, "-f", "{{json .Containers}}"]).trim(),
            "{}",
            "endpoints left on {n}"
        );
    }
    let records = std::fs::read_to_string(e.data_root().join("network").join(format!("{n2}.json"))).unwrap();
    assert!(records.contains("\"addresses\": {}"), "address allocations left: {records}");
    assert_eq!(e.ok(&["network", "rm", "front", "back"]).trim(), "front\nback");
    for n in [&n1, &n2] {
        assert!(!Engined::links().contains(&br(n)), "bridge {} left", br(n));
        assert!(e.firewall_rules(&[&br(n)]).iter().all(|r| !r.contains(&br(n))), "rules of {} left", br(n));
        assert!(!e.data_root().join("network").join(format!("{n}.json")).exists());
    }
    assert!(e.fails(&["network", "inspect", "front"]).contains("not found"));
    e.ok(&["network", "create", "spare"]);
    assert_eq!(e.ok(&["network", "prune", "-f"]).trim(), "Deleted Networks:\nspare");
}

#[test]
fn none_and_container_modes() {
    let e = Engined::start();
    e.import_busybox("bb");
    // none: loopback only, up
    let addrs = e.ok(&["run", "--rm", "--network", "none", "bb", "ip", "-o", "addr"]);
    assert!(addrs.contains("lo") && addrs.contains("127.0.0.1/8") && !addrs.contains("eth0"), "{addrs}");
    // container:<name>: the other's namespace, its loopback
    e.ok(&["run", "-d", "--name", "srv", "--network", "none", "bb", "sh", "-c", &serve("shared-namespace")]);
    wait_for("srv to serve on its loopback", || {
        e.engine(&["exec", "srv", "wget", "-q", "-O-", "http://127.0.0.1/"]).status.success()
    });
    assert_eq!(
        e.ok(&["run", "--rm", "--network", "container:srv", "bb", "wget", "-q", "-O-", "http://127.0.0.1/"]).trim(),
        "shared-namespace"
    );
    assert!(e
        .fails(&["run", "--rm", "--network", "container:srv", "-p", "80:80", "bb", "true"])
        .contains("conflicting options"));
    // a chain: container:mid, mid being container:srv, is srv's namespace
    e.ok(&["run", "-d", "--name", "mid", "--network", "container:srv", "bb", "sleep", "1000"]);
    assert_eq!(
        e.ok(&["run", "--rm", "--network", "container:mid", "bb", "wget", "-q", "-O-", "http://127.0.0.1/"]).trim(),
        "shared-namespace"
    );
    // container:<one on the host's network> is the host's network
    e.ok(&["run", "-d", "--name", "onhost", "--network", "host", "bb", "sleep", "1000"]);
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap().display().to_string();
    assert_eq!(
        e.ok(&["run", "--rm", "--network", "container:onhost", "bb", "readlink", "/proc/self/ns/net"]).trim(),
        host_ns
    );
    e.ok(&["create", "--name", "late", "--network", "container:srv", "bb", "true"]);
    e.ok(&["stop", "-t", "0", "srv"]);
    assert!(e.fails(&["start", "late"]).contains("non running container"));
    // bad input: unknown network, alias on the default bridge, an address without a subnet
    assert!(e.fails(&["run", "--rm", "--network", "nope", "bb", "true"]).contains("network nope not found"));
    assert!(e.fails(&["run", "--rm", "--network-alias", "x", "bb", "true"]).contains("user defined networks"));
    assert!(e.fails(&["run", "--rm", "--ip", "10.1.2.3", "bb", "true"]).contains("user configured subnets"));
    assert!(e.fails(&["run", "--rm", "-p", "70000:80", "bb", "true"]).contains("invalid"));
    e.ok(&["rm", "-f", "srv", "late", "mid", "onhost"]);
    assert_eq!(e.ok(&["ps", "-aq"]).trim(), "");
    assert_eq!(e.netns_files(), 0);
}

#[test]
fn nftables_backend_masquerades_isolates_and_cleans_up() {
    let nft = which("nft");
    let e = Engined::start_with(&[], &["--firewall-backend", "nftables"]);
    assert!(e.ok(&["info"]).contains("Firewall: nftables"), "{}", e.ok(&["info"]));
    e.import_busybox("bb");
    let table = e.nft_table();
    let list = || {
        String::from_utf8_lossy(
            &std::process::Command::new(&nft).args(["list", "table", "ip", &table]).output().unwrap().stdout,
        )
        .into_owned()
    };
    let default_subnet = e.subnet(0);
    assert!(
        list().contains(&format!("ip saddr {default_subnet} oifname != \"{}\" masquerade", e.bridge)),
        "{}",
        list()
    );
    assert!(e.firewall_rules(&[]).is_empty(), "iptables chains made with the nftables backend");
    e.ok(&["network", "create", "one"]);
    e.ok(&["network", "create", "two"]);
    e.ok(&["run", "-d", "--name", "nx", "--network", "one", "bb", "sleep", "1000"]);
    e.ok(&["run", "-d", "--name", "ny", "--network", "two", "bb", "sh", "-c", &serve("from-y")]);
    let y_ip = e.inspect("ny", "{{.NetworkSettings.Networks.two.IPAddress}}");
    let y_addr: SocketAddr = format!("{y_ip}:80").parse().unwrap();
    wait_for("y to serve", || http_get(y_addr).is_some_and(|b| b.contains("from-y")));
    assert!(
        !e.engine(&["exec", "nx", "nc", "-w", "2", &y_ip, "80"]).status.success(),
        "network one reached network two"
    );
    e.ok(&["rm", "-f", "nx", "ny"]);
    e.ok(&["network", "rm", "one", "two"]);
    assert!(!list().contains("br-"), "rules of removed networks left: {}", list());
    drop(e);
    let tables =
        String::from_utf8_lossy(&std::process::Command::new(&nft).args(["list", "tables"]).output().unwrap().stdout)
            .into_owned();
    assert!(!tables.contains(&table), "{table} left after engined stopped: {tables}");
}

#[test]
fn a_link_engined_did_not_make_is_never_taken() {
    // a bridge of the test's own (not engined's), named as engined's bridge would be
    let name = format!("eo{}", std::process::id() % 10_000_000);
    assert!(std::process::Command::new("ip")
        .args(["link", "add", &name, "type", "bridge"])
        .status()
        .unwrap()
        .success());
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(bin("engined"))
        .arg("-H")
        .arg(format!("unix://{}", dir.path().join("s.sock").display()))
        .arg("--data-root")
        .arg(dir.path().join("data"))
        .arg("--exec-root")
        .arg(dir.path().join("exec"))
        .args([
            "--cgroup-parent",
            &format!("/engine-e2e-eo-{}", std::process::id()),
            "--bridge-name",
            &name,
            "--no-probes",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    wait_for("engined to refuse the bridge", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let still_there = Engined::links().contains(&name);
    let addrs = String::from_utf8_lossy(
        &std::process::Command::new("ip").args(["-o", "addr", "show", &name]).output().unwrap().stdout,
    )
    .into_owned();
    let _ = std::process::Command::new("ip").args(["link", "del", &name]).status();
    assert!(!status.unwrap().success());
    assert!(err.contains("did not make it"), "{err}");
    // nothing of the failed start stays: no lifecycled of it
    let marker = dir.path().display().to_string();
    let leftovers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&marker))
        .collect();
    assert!(leftovers.is_empty(), "processes of the failed start left: {leftovers:?}");
    assert!(still_there, "engined deleted a link it did not make");
    assert!(!addrs.contains("inet "), "engined put an address on a link it did not make: {addrs}");
}

/// A dual-stack network (`--ipv6`): containers get an IPv6 address beside the IPv4 one, reach
/// each other over IPv6 by address and by name (AAAA from the embedded DNS server), list it
/// in inspect and /etc/hosts; nothing of it stays after the network goes.
#[test]
fn ipv6_networks_are_dual_stack() {
    let pid = std::process::id();
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() % 0xfff0 + 1;
    let fixed = format!("fd01:{:x}:{n:x}::/64", pid % 0xfff0 + 1);
    let e = Engined::start_with(&[], &["--dns", "127.0.0.1", "--ipv6", "--fixed-cidr-v6", &fixed]);
    e.import_busybox("bb");
    let subnet = format!("fd00:{:x}:{n:x}::/64", pid % 0xfff0 + 1);
    let prefix = subnet.trim_end_matches("::/64");
    // the default bridge is dual stack with --ipv6, on --fixed-cidr-v6
    let on_default = e.ok(&["run", "--rm", "bb", "ip", "-6", "addr", "show", "eth0"]);
    assert!(on_default.contains(&fixed.replace("::/64", "::2/64")), "{on_default}");
    assert!(e.ok(&["network", "inspect", "-f", "{{.EnableIPv6}}", "bridge"]).contains("true"));
    // an IPv6 pool without --ipv6 is kept and shown (as dockerd keeps it) but gives no
    // container an IPv6 address; an address asked of it is shown as asked
    let pool = format!("fd02:{:x}:{n:x}::/64", pid % 0xfff0 + 1);
    let pool_prefix = pool.trim_end_matches("::/64");
    e.ok(&[
        "network",
        "create",
        "--subnet",
        "10.213.7.0/24",
        "--subnet",
        &pool,
        "--aux-address",
        "router=10.213.7.9",
        "nov6",
    ]);
    assert_eq!(e.ok(&["network", "inspect", "-f", "{{.EnableIPv6}}", "nov6"]).trim(), "false");
    let ipam = e.ok(&["network", "inspect", "-f", "{{json .IPAM.Config}}", "nov6"]);
    assert!(
        ipam.contains(&format!("\"Subnet\":\"{pool}\""))
            && ipam.contains("\"AuxiliaryAddresses\":{\"router\":\"10.213.7.9\"}"),
        "{ipam}"
    );
    let asked = format!("{pool_prefix}::f00d");
    e.ok(&["run", "-d", "--name", "asked", "--network", "nov6", "--ip6", &asked, "bb", "sleep", "1000"]);
    assert_eq!(e.inspect("asked", "{{.NetworkSettings.Networks.nov6.IPAMConfig.IPv6Address}}"), asked);
    assert_eq!(e.inspect("asked", "{{.NetworkSettings.Networks.nov6.GlobalIPv6Address}}"), "");
    assert!(!e.ok(&["exec", "asked", "ip", "-6", "addr", "show", "eth0"]).contains(pool_prefix));
    // the aux address is never handed out, nor taken when asked for
    let err = e.fails(&["run", "--rm", "--network", "nov6", "--ip", "10.213.7.9", "bb", "true"]);
    assert!(err.contains("10.213.7.9"), "{err}");
    let elsewhere = e.fails(&["run", "--rm", "--network", "nov6", "--ip6", "fd03::5", "bb", "true"]);
    assert!(elsewhere.contains("not in subnet"), "{elsewhere}");
    e.ok(&["rm", "-f", "asked"]);
    e.ok(&["network", "rm", "nov6"]);
    let id = e.ok(&["network", "create", "--ipv6", "--subnet", &subnet, "v6net"]).trim().to_string();
    assert_eq!(e.ok(&["network", "inspect", "-f", "{{.EnableIPv6}}", "v6net"]).trim(), "true");
    let ipam = e.ok(&["network", "inspect", "-f", "{{json .IPAM.Config}}", "v6net"]);
    assert!(
        ipam.contains(&format!("\"Subnet\":\"{subnet}\"")) && ipam.contains(&format!("\"Gateway\":\"{prefix}::1\"")),
        "{ipam}"
    );
    // a second one without a subnet gets a unique local /64
    e.ok(&["network", "create", "--ipv6", "ula"]);
    let ula = e.ok(&["network", "inspect", "-f", "{{json .IPAM.Config}}", "ula"]);
    assert!(ula.contains("\"Subnet\":\"fd") && ula.contains("::/64"), "{ula}");

    // an IPv6 ip-range and aux address: addresses from the range, past the aux address
    let ranged = format!("fd04:{:x}:{n:x}::/64", pid % 0xfff0 + 1);
    let ranged_prefix = ranged.trim_end_matches("::/64");
    let (range, aux) = (format!("{ranged_prefix}::100/120"), format!("{ranged_prefix}::100"));
    let spec = ["--ipv6", "--subnet", &ranged, "--ip-range", &range, "--aux-address", &format!("gw2={aux}")];
    e.ok(&[&["network", "create"], &spec[..], &["ranged"]].concat());
    let ipam = e.ok(&["network", "inspect", "-f", "{{json .IPAM.Config}}", "ranged"]);
    assert!(ipam.contains(&format!("\"IPRange\":\"{range}\"")), "{ipam}");
    e.ok(&["run", "-d", "--name", "inrange", "--network", "ranged", "bb", "sleep", "1000"]);
    assert_eq!(
        e.inspect("inrange", "{{.NetworkSettings.Networks.ranged.GlobalIPv6Address}}"),
        format!("{ranged_prefix}::101")
    );
    e.ok(&["rm", "-f", "inrange"]);
    e.ok(&["network", "rm", "ranged"]);

    e.ok(&["run", "-d", "--name", "srv", "--network", "v6net", "bb", "sh", "-c", &serve("over-ipv6")]);
    e.ok(&["run", "-d", "--name", "cli", "--network", "v6net", "bb", "sleep", "1000"]);
    let srv6 = e.inspect("srv", "{{.NetworkSettings.Networks.v6net.GlobalIPv6Address}}");
    assert!(srv6.starts_with(&format!("{prefix}::")), "{srv6}");
    // an address asked of an --ipv6 network is the container's
    let fixed6 = format!("{prefix}::beef");
    e.ok(&["run", "-d", "--name", "fixed6", "--network", "v6net", "--ip6", &fixed6, "bb", "sleep", "1000"]);
    assert_eq!(e.inspect("fixed6", "{{.NetworkSettings.Networks.v6net.GlobalIPv6Address}}"), fixed6);
    assert!(e.ok(&["exec", "fixed6", "ip", "-6", "addr", "show", "eth0"]).contains(&format!("{fixed6}/64")));
    e.ok(&["rm", "-f", "fixed6"]);
    assert_eq!(e.inspect("srv", "{{.NetworkSettings.Networks.v6net.GlobalIPv6PrefixLen}}"), "64");
    assert_eq!(e.inspect("srv", "{{.NetworkSettings.Networks.v6net.IPv6Gateway}}"), format!("{prefix}::1"));
    assert!(e.ok(&["exec", "srv", "ip", "-6", "addr", "show", "eth0"]).contains(&format!("{srv6}/64")));
    assert!(e.ok(&["exec", "srv", "ip", "-6", "route"]).contains(&format!("default via {prefix}::1")));
    assert!(e.ok(&["exec", "srv", "cat", "/etc/hosts"]).contains(&format!("{srv6}\t")));
    // the IPv6 subnet has the IPv4 one's rules: forwarding on its bridge, isolation, masquerade
    let bridge = format!("br-{}", &id[..12]);
    let rules6 = e.firewall6_rules(&[&bridge]);
    assert!(rules6.iter().any(|r| r.contains(&format!("-s {subnet} ! -o {bridge} -j MASQUERADE"))), "{rules6:?}");
    assert!(rules6.iter().any(|r| r.contains(&format!("-i {bridge} -o {bridge} -j ACCEPT"))), "{rules6:?}");
    let members = e.ok(&["network", "inspect", "-f", "{{json .Containers}}", "v6net"]);
    assert!(members.contains(&format!("\"IPv6Address\":\"{srv6}/64\"")), "{members}");

    // by address and by name, over IPv6
    wait_for("srv to serve over IPv6", || {
        e.engine(&["exec", "cli", "wget", "-q", "-O-", &format!("http://[{srv6}]/")]).status.success()
    });
    assert_eq!(e.ok(&["exec", "cli", "wget", "-q", "-O-", &format!("http://[{srv6}]/")]).trim(), "over-ipv6");
    let aaaa = e.ok(&["exec", "cli", "nslookup", "-type=aaaa", "srv"]);
    assert!(aaaa.contains(&format!("Address: {srv6}")), "{aaaa}");
    assert!(e.ok(&["exec", "cli", "ping6", "-c", "1", "-W", "5", "srv"]).contains(&srv6));
    let ptr = e.ok(&["exec", "cli", "nslookup", &srv6]);
    assert!(ptr.contains("name = srv.v6net"), "{ptr}");

    e.ok(&["rm", "-f", "srv", "cli"]);
    let record = std::fs::read_to_string(e.data_root().join("network").join(format!("{id}.json"))).unwrap();
    let rec: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(rec["ipv6"]["allocations"]["addresses"], serde_json::json!({}), "IPv6 addresses left: {record}");
    e.ok(&["network", "rm", "v6net", "ula"]);
    assert!(!Engined::links().contains(&bridge), "{bridge} left");
    assert!(e.firewall6_rules(&[&bridge]).iter().all(|r| !r.contains(&bridge)), "IPv6 rules of {bridge} left");
    assert_eq!(e.netns_files(), 0);
    e.assert_clean();
}
