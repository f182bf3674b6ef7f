//! The embedded DNS server end to end: containers on user networks look names up with
//! busybox's `nslookup` at 127.0.0.11 (names, aliases, a round-robin alias, `<name>.<network>`,
//! PTR, a name of another network, a container removed a moment ago), external names go to a
//! small DNS server this test runs on a loopback address of its own (over UDP, and over TCP
//! after a truncated answer), a slow lookup is a span of the container's start trace, the
//! queries are counted on /metrics, and an engined killed with -9 serves again after its
//! restart and leaves nothing behind. The Docker CLI gets the same answers from engined as from
//! a private dockerd.
//!
//! Nothing leaves loopback: every engined here is given `--dns <the test's upstream>`, and the
//! private dockerd `--dns 127.0.0.1` (asked inside the container's namespace, where nothing
//! listens), and only names that exist are asked of it.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine_telemetry::handoff::flatten;
use engine_test_support::dockerd::Dockerd;
use engine_test_support::engined::Engined;
use engine_test_support::*;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

/// What the test upstream answers to `ext.test`.
const EXT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// How many addresses `big.test` has (more than a 512-byte UDP answer holds).
const BIG: u8 = 60;
/// How long the upstream waits before it answers `slow.test`.
const SLOW: Duration = Duration::from_millis(600);

static UPSTREAMS: AtomicUsize = AtomicUsize::new(0);

/// A DNS server on a loopback address of its own, port 53: `ext.test` (A), `big.test` (A,
/// truncated over UDP, whole over TCP), `slow.test` (A, after [`SLOW`]); NXDOMAIN for the rest.
struct Upstream {
    ip: Ipv4Addr,
    /// Each question asked: (name, "udp" or "tcp").
    asked: Arc<Mutex<Vec<(String, &'static str)>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Upstream {
    fn start() -> Upstream {
        let pid = std::process::id();
        let n = UPSTREAMS.fetch_add(1, Ordering::SeqCst) as u32;
        let ip = Ipv4Addr::new(127, 53 + (n % 100) as u8, ((pid / 250) % 250) as u8, (pid % 250 + 1) as u8);
        // both loops block; Drop wakes them (a datagram, a connection) once `stop` is set
        let udp = UdpSocket::bind((ip, 53)).expect("binding the test upstream (UDP)");
        let tcp = TcpListener::bind((ip, 53)).expect("binding the test upstream (TCP)");
        let (asked, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let mut threads = Vec::new();
        {
            let (asked, stop) = (asked.clone(), stop.clone());
            let udp = Arc::new(udp);
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                loop {
                    let got = udp.recv_from(&mut buf);
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok((n, peer)) = got else { continue };
                    let (q, udp, asked) = (buf[..n].to_vec(), udp.clone(), asked.clone());
                    std::thread::spawn(move || {
                        if let Some(r) = answer(&q, false, &asked) {
                            let _ = udp.send_to(&r, peer);
                        }
                    });
                }
            }));
        }
        {
            let (asked, stop) = (asked.clone(), stop.clone());
            threads.push(std::thread::spawn(move || loop {
                let got = tcp.accept();
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok((mut conn, _)) = got else { continue };
                let asked = asked.clone();
                std::thread::spawn(move || {
                    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    while let Some(q) = read_framed(&mut conn) {
                        let Some(r) = answer(&q, true, &asked) else { return };
                        if write_framed(&mut conn, &r).is_err() {
                            return;
                        }
                    }
                });
            }));
        }
        Upstream { ip, asked, stop, threads }
    }

    fn asked(&self) -> Vec<(String, &'static str)> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(wake) = UdpSocket::bind((self.ip, 0)) {
            let _ = wake.send_to(b"stop", (self.ip, 53));
        }
        let _ = TcpStream::connect((self.ip, 53));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn answer(q: &[u8], over_tcp: bool, asked: &Mutex<Vec<(String, &'static str)>>) -> Option<Vec<u8>> {
    let msg = Message::from_vec(q).ok()?;
    let query = msg.queries().first()?.clone();
    let name = query.name().to_ascii().to_ascii_lowercase();
    asked.lock().unwrap().push((name.clone(), if over_tcp { "tcp" } else { "udp" }));
    let mut resp = Message::new();
    resp.set_id(msg.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(msg.recursion_desired())
        .set_recursion_available(true);
    resp.add_query(query.clone());
    let a = |ip: Ipv4Addr| Record::from_rdata(query.name().clone(), 60, RData::A(A(ip)));
    match (name.as_str(), query.query_type()) {
        ("ext.test.", RecordType::A) => {
            resp.add_answer(a(EXT));
        }
        ("slow.test.", RecordType::A) => {
            std::thread::sleep(SLOW);
            resp.add_answer(a(EXT));
        }
        ("big.test.", RecordType::A) if !over_tcp => {
            resp.set_truncated(true);
        }
        ("big.test.", RecordType::A) => {
            for i in 1..=BIG {
                resp.add_answer(a(Ipv4Addr::new(192, 0, 2, i)));
            }
        }
        ("ext.test." | "slow.test." | "big.test.", _) => {}
        _ => {
            resp.set_response_code(ResponseCode::NXDomain);
        }
    }
    resp.to_vec().ok()
}

fn read_framed(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).ok()?;
    let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
    conn.read_exact(&mut q).ok()?;
    Some(q)
}

fn write_framed(conn: &mut TcpStream, m: &[u8]) -> std::io::Result<()> {
    let mut out = (m.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(m);
    conn.write_all(&out)
}

fn question(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

/// Asks 127.0.0.11 in the network namespace of process `pid` for `name`'s A records, as a
/// resolver does: over UDP, then over TCP when the answer is truncated. Both answers.
fn ask_in_namespace(pid: u32, name: &str) -> (Message, Option<Message>) {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
    let name = name.to_string();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let server: SocketAddr = "127.0.0.11:53".parse().unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        udp.send_to(&question(7, &name), server).unwrap();
        let mut buf = [0u8; 1500];
        let n = udp.recv(&mut buf).expect("an answer over UDP");
        let first = Message::from_vec(&buf[..n]).unwrap();
        let second = first.truncated().then(|| {
            let mut conn = TcpStream::connect_timeout(&server, Duration::from_secs(5)).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            write_framed(&mut conn, &question(8, &name)).unwrap();
            Message::from_vec(&read_framed(&mut conn).expect("an answer over TCP")).unwrap()
        });
        (first, second)
    })
    .join()
    .unwrap()
}

fn ip_on(e: &Engined, name: &str, network: &str) -> String {
    e.inspect(name, &format!("{{{{.NetworkSettings.Networks.{network}.IPAddress}}}}"))
}

/// `nslookup ARGS` in container `cl`: what it printed.
fn nslookup(e: &Engined, args: &[&str]) -> String {
    let mut all = vec!["exec", "cl", "nslookup"];
    all.extend_from_slice(args);
    let out = e.engine(&all);
    format!("{}{}", stdout(&out), stderr(&out))
}

#[test]
fn names_aliases_round_robin_ptr_and_forwarding() {
    let up = Upstream::start();
    let mut e = Engined::start_with(&[], &["--dns", &up.ip.to_string()]);
    e.import_busybox("bb");
    e.ok(&["network", "create", "n1"]);
    e.ok(&["network", "create", "n2"]);
    let run = |args: &[&str]| {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["bb", "sleep", "1000"]);
        e.ok(&all).trim().to_string()
    };
    run(&["--name", "s1", "--network", "n1"]);
    run(&["--name", "s2", "--network", "n1", "--network-alias", "web"]);
    for r in ["r1", "r2", "r3"] {
        run(&["--name", r, "--network", "n1", "--network-alias", "pool"]);
    }
    run(&["--name", "x1", "--network", "n2"]);
    run(&["--name", "cl", "--network", "n1"]);

    let resolv = e.ok(&["exec", "cl", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 127.0.0.11\n") && resolv.contains("options ndots:0\n"), "{resolv}");
    assert!(!resolv.contains(&up.ip.to_string()), "the upstream is the server's, not the container's: {resolv}");

    // a name, an alias, <name>.<network>
    let s1 = ip_on(&e, "s1", "n1");
    assert!(
        nslookup(&e, &["-type=a", "s1"]).contains(&format!("Address: {s1}")),
        "{}",
        nslookup(&e, &["-type=a", "s1"])
    );
    assert!(nslookup(&e, &["-type=a", "S1.n1"]).contains(&format!("Address: {s1}")));
    assert!(nslookup(&e, &["-type=a", "web"]).contains(&format!("Address: {}", ip_on(&e, "s2", "n1"))));
    // AAAA of a container's name: no records, not NXDOMAIN
    assert!(!nslookup(&e, &["-type=aaaa", "s1"]).contains("NXDOMAIN"));

    // three containers behind one alias: all three each time, in turn first
    let pool: BTreeSet<String> = ["r1", "r2", "r3"].iter().map(|r| ip_on(&e, r, "n1")).collect();
    let mut firsts = BTreeSet::new();
    for _ in 0..6 {
        let out = nslookup(&e, &["-type=a", "pool"]);
        let got: Vec<String> =
            out.lines().filter_map(|l| l.strip_prefix("Address: ")).map(|a| a.trim().to_string()).collect();
        assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), pool, "{out}");
        firsts.insert(got[0].clone());
    }
    assert!(firsts.len() > 1, "the alias's addresses never rotated: {firsts:?}");

    // PTR of a container's address
    let ptr = nslookup(&e, &[&s1]);
    assert!(ptr.contains("name = s1.n1"), "{ptr}");

    // a name of another network is not known here (the upstream says NXDOMAIN)
    let other = nslookup(&e, &["-type=a", "x1"]);
    assert!(other.contains("NXDOMAIN") && !other.contains(&ip_on(&e, "x1", "n2")), "{other}");
    // external names go to the upstream
    assert!(nslookup(&e, &["-type=a", "ext.test"]).contains(&format!("Address: {EXT}")));
    assert!(up.asked().contains(&("ext.test.".to_string(), "udp")), "{:?}", up.asked());
    assert!(
        !up.asked().iter().any(|(n, _)| n == "s1." || n == "pool."),
        "known names were forwarded: {:?}",
        up.asked()
    );

    // a truncated answer, asked again over TCP, comes whole
    let pid: u32 = e.inspect("cl", "{{.State.Pid}}").parse().unwrap();
    let (udp, tcp) = ask_in_namespace(pid, "big.test.");
    assert!(udp.truncated() && udp.id() == 7, "{udp:?}");
    let tcp = tcp.unwrap();
    assert_eq!((tcp.id(), tcp.answers().len()), (8, BIG as usize));
    assert!(up.asked().contains(&("big.test.".to_string(), "tcp")));
    // a known name over TCP too
    let (known, _) = ask_in_namespace(pid, "web.");
    assert_eq!(known.answers().len(), 1);

    // --link: the alias answers for the container that has the link, and only there
    run(&["--name", "lk", "--network", "n1", "--link", "s2:backend"]);
    let by_link = e.ok(&["exec", "lk", "nslookup", "-type=a", "backend"]);
    assert!(by_link.contains(&format!("Address: {}", ip_on(&e, "s2", "n1"))), "{by_link}");
    assert!(nslookup(&e, &["-type=a", "backend"]).contains("NXDOMAIN"));
    assert!(e.fails(&["run", "--rm", "--link", "nope:x", "bb", "true"]).contains("could not get container for nope"));
    // on the default bridge a link is a line of the hosts file
    run(&["--name", "old"]);
    let hosts = e.ok(&["run", "--rm", "--link", "old:legacy", "bb", "cat", "/etc/hosts"]);
    assert!(
        hosts.contains(&format!("{}\tlegacy old\n", e.inspect("old", "{{.NetworkSettings.IPAddress}}"))),
        "{hosts}"
    );

    // removed a moment ago: gone at once
    e.ok(&["rm", "-f", "s1"]);
    assert!(nslookup(&e, &["-type=a", "s1"]).contains("NXDOMAIN"));

    // --dns-search and --dns-option as Docker writes them; the daemon's --dns on the default bridge
    let written = e.ok(&[
        "run",
        "--rm",
        "--network",
        "n1",
        "--dns-search",
        "example.test",
        "--dns-option",
        "ndots:2",
        "bb",
        "cat",
        "/etc/resolv.conf",
    ]);
    assert_eq!(written, "search example.test\nnameserver 127.0.0.11\noptions ndots:2\n");
    let bridge = e.ok(&["run", "--rm", "bb", "cat", "/etc/resolv.conf"]);
    assert!(bridge.contains(&format!("nameserver {}\n", up.ip)) && !bridge.contains("127.0.0.11"), "{bridge}");

    // counted by network, type and result
    let (_, metrics) = e.request("GET", "/metrics", "");
    for result in ["NOERROR", "NXDOMAIN"] {
        let series = format!("engine_dns_queries_total{{network=\"n1\",type=\"A\",result=\"{result}\"}}");
        assert!(metrics.contains(&series), "{series} missing");
    }
    assert!(
        metrics.lines().any(|l| l.starts_with("engine_dns_query_duration_seconds_count{")
            && l.contains("network=\"n1\"")
            && l.contains("result=\"NOERROR\"")),
        "{}",
        metrics.lines().filter(|l| l.contains("engine_dns")).collect::<Vec<_>>().join("\n")
    );

    // engined killed: the running containers' servers are bound again by the next one
    e.kill9();
    e.restart();
    assert!(nslookup(&e, &["-type=a", "web"]).contains(&format!("Address: {}", ip_on(&e, "s2", "n1"))));

    e.ok(&["rm", "-f", "s2", "r1", "r2", "r3", "x1", "cl", "lk", "old"]);
    e.ok(&["network", "rm", "n1", "n2"]);
    assert_eq!(e.netns_files(), 0);
    e.assert_clean();
}

#[test]
fn a_slow_lookup_is_a_span_of_the_start() {
    let up = Upstream::start();
    let e = Engined::start_with(&[], &["--dns", &up.ip.to_string()]);
    e.import_busybox("bb");
    e.ok(&["network", "create", "n1"]);
    e.ok(&[
        "run",
        "-d",
        "--name",
        "slow",
        "--network",
        "n1",
        "bb",
        "sh",
        "-c",
        "nslookup -type=a slow.test; sleep 1000",
    ]);
    let mut spans = Vec::new();
    wait_for("the lookup's span in the start trace", || {
        let out = e.engine(&["trace", "--json", "--op", "start", "slow"]);
        if !out.status.success() {
            return false;
        }
        let doc: ExportTraceServiceRequest = serde_json::from_str(stdout(&out).trim()).expect("OTLP JSON");
        spans = flatten(&doc);
        spans.iter().any(|s| s.name == "dns.query")
    });
    let q = spans.iter().find(|s| s.name == "dns.query").unwrap();
    let attr = |k: &str| q.attributes.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone()).unwrap_or_default();
    assert_eq!(attr("dns.question.name"), "slow.test");
    assert_eq!(attr("dns.response.code"), "NOERROR");
    assert_eq!(attr("server.address"), up.ip.to_string());
    assert!(q.duration_nanos() >= SLOW.as_nanos() as u64, "the span holds the upstream's wait: {q:?}");
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(ids.len(), 1, "the lookup is in the start's trace");
    // and the waterfall shows it
    assert!(e.ok(&["trace", "--op", "start", "slow"]).contains("dns.query"));
    e.ok(&["rm", "-f", "slow"]);
    e.ok(&["network", "rm", "n1"]);
}

/// The Docker CLI's view, engined beside a private dockerd: the same names answer the same.
#[test]
fn docker_cli_lookups_match_dockerd() {
    let up = Upstream::start();
    let e = Engined::start_with(&[], &["--dns", &up.ip.to_string()]);
    let d = Dockerd::start(&["--dns".to_string(), "127.0.0.1".to_string()]);
    let tar = e.busybox_tar();
    type Cli<'a> = Box<dyn Fn(&[&str]) -> std::process::Output + 'a>;
    let clis: [(&str, Cli); 2] = [("engined", Box::new(|a| e.docker(a))), ("dockerd", Box::new(|a| d.docker(a)))];
    let mut seen = Vec::new();
    for (who, cli) in &clis {
        let ok = |a: &[&str]| {
            let out = cli(a);
            assert!(out.status.success(), "{who}: docker {a:?}: {}", stderr(&out));
            stdout(&out)
        };
        ok(&["import", tar.to_str().unwrap(), "bb:1"]);
        ok(&["network", "create", "dnsnet"]);
        for (name, alias) in [("s1", "web"), ("r1", "pool"), ("r2", "pool"), ("r3", "pool"), ("cl", "client")] {
            ok(&[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "dnsnet",
                "--network-alias",
                alias,
                "bb:1",
                "sleep",
                "1000",
            ]);
        }
        let ip =
            |n: &str| ok(&["inspect", "-f", "{{.NetworkSettings.Networks.dnsnet.IPAddress}}", n]).trim().to_string();
        let look = |args: &[&str]| {
            let mut all = vec!["exec", "cl", "nslookup"];
            all.extend_from_slice(args);
            let out = cli(&all);
            format!("{}{}", stdout(&out), stderr(&out))
        };
        let s1 = ip("s1");
        let by_name = look(&["-type=a", "s1"]).contains(&format!("Address: {s1}"));
        let by_alias = look(&["-type=a", "web"]).contains(&format!("Address: {s1}"));
        let pool = look(&["-type=a", "pool"]);
        let all_three = ["r1", "r2", "r3"].iter().all(|r| pool.contains(&format!("Address: {}", ip(r))));
        let ptr = look(&[&s1]).contains("name = s1.dnsnet");
        let resolv = ok(&["exec", "cl", "cat", "/etc/resolv.conf"]);
        let embedded = resolv.contains("nameserver 127.0.0.11") && resolv.contains("ndots:0");
        seen.push((who.to_string(), [by_name, by_alias, all_three, ptr, embedded]));
        if *who == "engined" {
            // what this dockerd (20.10) cannot be compared on here: it asks upstreams from the
            // container's namespace, so the test's loopback upstream is out of its reach
            ok(&["network", "create", "othernet"]);
            ok(&["run", "-d", "--name", "x1", "--network", "othernet", "bb:1", "sleep", "1000"]);
            assert!(look(&["-type=a", "x1"]).contains("NXDOMAIN"), "a name of another network answered");
            assert!(look(&["-type=a", "ext.test"]).contains(&format!("Address: {EXT}")));
            ok(&["rm", "-f", "r3"]);
            assert!(look(&["-type=a", "r3"]).contains("NXDOMAIN"), "a removed container answered");
            let written = ok(&[
                "run",
                "--rm",
                "--network",
                "dnsnet",
                "--dns-search",
                "example.test",
                "--dns-option",
                "ndots:2",
                "bb:1",
                "cat",
                "/etc/resolv.conf",
            ]);
            assert_eq!(written, "search example.test\nnameserver 127.0.0.11\noptions ndots:2\n");
            ok(&["rm", "-f", "x1"]);
            ok(&["network", "rm", "othernet"]);
        }
        ok(&["rm", "-f", "s1", "r1", "r2", "r3", "cl"]);
        ok(&["network", "rm", "dnsnet"]);
    }
    assert_eq!(seen[0].1, seen[1].1, "engined and dockerd differ: {seen:?}");
    assert_eq!(seen[0].1, [true; 5], "{seen:?}");
}

/// Debian's docker-compose 1.29: a project's services find each other by their names, one of
/// them scaled to three behind its name.
#[test]
fn a_compose_project_finds_its_services_by_name() {
    let up = Upstream::start();
    let e = Engined::start_with(&[], &["--dns", &up.ip.to_string()]);
    e.docker_ok(&["import", e.busybox_tar().to_str().unwrap(), "busybox:latest"]);
    let project = e.dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("docker-compose.yml"),
        r#"version: "3.7"
services:
  web:
    image: busybox:latest
    command: sh -c "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"
  client:
    image: busybox:latest
    command: sleep 1000
"#,
    )
    .unwrap();
    let compose = |args: &[&str]| {
        let out = std::process::Command::new(which("docker-compose"))
            .current_dir(&project)
            .env("DOCKER_HOST", e.host())
            .envs(OFFLINE_ENV)
            .args(["-p", "dnsproj"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "docker-compose {args:?}: {}{}", stdout(&out), stderr(&out));
        stdout(&out)
    };
    compose(&["up", "-d", "--scale", "web=3"]);
    let webs: BTreeSet<String> = (1..=3)
        .map(|i| {
            let name = format!("dnsproj_web_{i}");
            e.docker_ok(&["inspect", "-f", "{{.NetworkSettings.Networks.dnsproj_default.IPAddress}}", &name])
                .trim()
                .to_string()
        })
        .collect();
    assert_eq!(webs.len(), 3);
    let looked = compose(&["exec", "-T", "client", "nslookup", "-type=a", "web"]);
    let got: BTreeSet<String> =
        looked.lines().filter_map(|l| l.strip_prefix("Address: ")).map(|a| a.trim().to_string()).collect();
    assert_eq!(got, webs, "{looked}");
    // a client reaches one of them by the name (which one is the C library's choice: glibc
    // sorts the addresses by their common prefix with its own, RFC 6724's rule 9)
    let hostnames: BTreeSet<String> = (1..=3)
        .map(|i| {
            e.docker_ok(&["inspect", "-f", "{{.Config.Hostname}}", &format!("dnsproj_web_{i}")]).trim().to_string()
        })
        .collect();
    let served = compose(&["exec", "-T", "client", "wget", "-q", "-O-", "http://web/"]);
    assert!(hostnames.contains(served.trim()), "{served} is none of {hostnames:?}");
    // the client is known by its service name too
    let client = e
        .docker_ok(&["inspect", "-f", "{{.NetworkSettings.Networks.dnsproj_default.IPAddress}}", "dnsproj_client_1"])
        .trim()
        .to_string();
    assert!(compose(&["exec", "-T", "web", "nslookup", "-type=a", "client"]).contains(&format!("Address: {client}")));
    compose(&["down"]);
    assert_eq!(e.netns_files(), 0);
    e.assert_clean();
}
