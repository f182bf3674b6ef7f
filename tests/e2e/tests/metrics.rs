//! The dashboards against real data: Debian's Prometheus, on loopback, scrapes a private
//! engined (`--metrics-addr`) while containers run; every PromQL expression of every dashboard
//! must then return data through Prometheus's HTTP API, a latency bucket's exemplar must name a
//! trace engined has, and each dashboard's JSON must have the structure Grafana loads.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine_test_support::engined::Engined;
use engine_test_support::*;
use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dashboards")
}

/// Percent-encoding of a query parameter.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// GET on loopback over HTTP/1.0; the body.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// Prometheus on loopback, killed (by pid) when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: engine\n    static_configs:\n      - targets: [\"127.0.0.1:{target}\"]\n")).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(which("prometheus"))
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--enable-feature=exemplar-storage")
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus (make test installs Debian's)");
        let p = Prometheus { child, port, _dir: dir };
        wait_for("prometheus to answer", || http_get(p.port, "/-/ready").is_some_and(|b| b.contains("Ready")));
        p
    }

    /// An instant query's result vector.
    fn query(&self, expr: &str) -> Vec<Value> {
        let body = http_get(self.port, &format!("/api/v1/query?query={}", enc(expr))).unwrap_or_default();
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        assert_ne!(v["status"], "error", "{expr}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every PromQL expression of a dashboard (Prometheus targets of panels), with its panel title.
fn expressions(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if t["datasource"]["type"] == "prometheus" {
                out.push((p["title"].as_str().unwrap_or("").to_string(), t["expr"].as_str().unwrap_or("").to_string()));
            }
        }
    }
    out
}

/// Grafana's variables, as the test evaluates them: every value, a one-minute rate window.
fn instantiate(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$phase", ".+").replace("$container", ".+")
}

/// The span names an expression selects by `phase="…"` or `phase=~"a|b"` (alternatives that are
/// plain names; patterns and Grafana variables are left out).
fn phases_named(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in expr.match_indices("phase=") {
        let rest = expr[i + "phase=".len()..].trim_start_matches('~');
        let Some(value) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) else { continue };
        for alt in value.split('|') {
            if !alt.is_empty() && !alt.contains(['$', '(', ')', '*', '+', '[']) {
                out.push(alt.to_string());
            }
        }
    }
    out
}

fn dashboards() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for ent in std::fs::read_dir(dashboards_dir()).unwrap() {
        let p = ent.unwrap().path();
        if p.extension().is_some_and(|e| e == "json") {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            out.push((p.file_name().unwrap().to_string_lossy().into_owned(), v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn dashboards_are_well_formed_and_provisioned() {
    let provisioning = std::fs::read_to_string(dashboards_dir().join("provisioning/datasources/engine.yaml")).unwrap();
    let uids: HashSet<&str> = ["engine-prometheus", "engine-jaeger"]
        .into_iter()
        .filter(|u| provisioning.contains(&format!("uid: {u}")))
        .collect();
    assert_eq!(uids.len(), 2, "provisioning names both data sources: {provisioning}");
    assert!(provisioning.contains("exemplarTraceIdDestinations"), "exemplars link to the traces");
    let compose = std::fs::read_to_string(dashboards_dir().join("compose.yaml")).unwrap();
    let all = dashboards();
    assert_eq!(all.len(), 4, "start latency, engine health, container resources, kernel events");
    let mut seen_uids = HashSet::new();
    let named: HashSet<String> =
        all.iter().flat_map(|(_, d)| expressions(d)).flat_map(|(_, e)| phases_named(&e)).collect();
    assert!(named.contains("daemon.start") && named.contains("runtime.namespaces"), "{named:?}");
    for (file, d) in &all {
        assert!(compose.contains(file.as_str()), "compose.yaml does not mount {file}");
        let uid = d["uid"].as_str().unwrap_or_else(|| panic!("{file}: no uid"));
        assert!(seen_uids.insert(uid.to_string()), "{file}: uid {uid} used twice");
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "{file}: no title");
        assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 30), "{file}: schemaVersion");
        let panels = d["panels"].as_array().unwrap_or_else(|| panic!("{file}: no panels"));
        assert!(!panels.is_empty());
        for p in panels {
            let title = p["title"].as_str().unwrap_or("");
            assert!(!title.is_empty(), "{file}: a panel without title");
            assert!(
                ["timeseries", "stat", "heatmap", "table", "gauge", "bargauge"]
                    .contains(&p["type"].as_str().unwrap_or("")),
                "{file}/{title}: type {}",
                p["type"]
            );
            let g = &p["gridPos"];
            let (x, w, h) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap(), g["h"].as_u64().unwrap());
            assert!(x + w <= 24 && w > 0 && h > 0 && g["y"].is_u64(), "{file}/{title}: gridPos {g}");
            let ds = p["datasource"]["uid"].as_str().unwrap_or("");
            assert!(uids.contains(ds), "{file}/{title}: data source {ds:?} is not provisioned");
            let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{file}/{title}: no targets"));
            assert!(!targets.is_empty(), "{file}/{title}: no targets");
            let refs: HashSet<&str> = targets.iter().map(|t| t["refId"].as_str().unwrap_or("")).collect();
            assert_eq!(refs.len(), targets.len(), "{file}/{title}: refIds");
            for t in targets {
                assert!(
                    uids.contains(t["datasource"]["uid"].as_str().unwrap_or("")),
                    "{file}/{title}: target data source"
                );
                if t["datasource"]["type"] == "prometheus" {
                    let expr = t["expr"].as_str().unwrap_or_default();
                    assert!(!expr.is_empty(), "{file}/{title}: empty expr");
                    for phase in phases_named(expr) {
                        assert!(
                            engine_telemetry::names::ALL.contains(&phase.as_str())
                                || phase.starts_with("kernel.")
                                || phase.split_once(' ').is_some_and(|(m, r)| m.chars().all(|c| c.is_ascii_uppercase()) && r.starts_with('/')),
                            "{file}/{title}: phase {phase:?} is no span name of the catalogue (engine_telemetry::names)"
                        );
                    }
                }
            }
        }
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            assert_eq!(v["datasource"]["uid"], "engine-prometheus", "{file}: variable {}", v["name"]);
            assert!(
                v["query"]["query"].as_str().is_some_and(|q| q.starts_with("label_values(")),
                "{file}: variable {}",
                v["name"]
            );
        }
    }
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let mport = free_port();
    // --dns 127.0.0.1: the containers' lookups never leave loopback
    let e = Engined::start_with(&[], &["--metrics-addr", &format!("127.0.0.1:{mport}"), "--dns", "127.0.0.1"]);
    assert!(
        http_get(mport, "/metrics").is_some_and(|m| m.contains("# TYPE engine_containers gauge")),
        "{}",
        e.log_tail()
    );
    let prom = Prometheus::start(mport);
    wait_for("the first scrape", || prom.query("up{job=\"engine\"} == 1").len() == 1);

    // some work: a server with a published port (running throughout), short containers, traffic
    e.import_busybox("bb");
    let port = free_port();
    e.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &format!("127.0.0.1:{port}:80"),
        "bb",
        "sh",
        "-c",
        "mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    let hit = || http_get(port, "/").is_some_and(|b| b.contains("hi"));
    wait_for("the published port", hit);
    for _ in 0..2 {
        e.ok(&["run", "--rm", "bb", "true"]);
    }
    // a name looked up through the embedded DNS server of a user network, twice (for a rate)
    e.ok(&["network", "create", "mnet"]);
    e.ok(&["run", "-d", "--name", "named", "--network", "mnet", "bb", "sleep", "1000"]);
    let lookup = || e.ok(&["exec", "named", "nslookup", "-type=a", "named"]);
    lookup();
    let starts = |n: usize| {
        prom.query(&format!("sum(engine_phase_duration_seconds_count{{phase=\"daemon.start\"}}) >= {n}")).len() == 1
    };
    wait_for("Prometheus to see the first starts", || starts(3));
    // a second round once the series exist, so their rates are not empty
    for _ in 0..2 {
        e.ok(&["run", "--rm", "bb", "true"]);
    }
    lookup();
    assert!(hit());
    wait_for("Prometheus to see the second round", || starts(5));

    let mut checked = 0;
    for (file, d) in dashboards() {
        for (title, expr) in expressions(&d) {
            let q = instantiate(&expr);
            wait_for(&format!("data for {file} / {title}: {q}"), || !prom.query(&q).is_empty());
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} expressions");

    // every family /metrics serves now (most of them, after this work) is in docs/metrics.md,
    // with its type: the page is generated from the catalogue the daemon registers from
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/metrics.md")).unwrap();
    let exposition = http_get(mport, "/metrics").unwrap_or_default();
    let families: Vec<(&str, &str)> =
        exposition.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_once(' ')).collect();
    assert!(families.len() >= 18, "{exposition}");
    for (name, kind) in families {
        let exposed = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
        assert!(page.contains(&format!("| `{exposed}` | {kind} |")), "{name} ({kind}) is not in docs/metrics.md");
    }

    // a latency bucket's exemplar names a trace engined has
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let path = format!(
        "/api/v1/query_exemplars?query={}&start={}&end={}",
        enc("engine_phase_duration_seconds_bucket{phase=\"daemon.start\"}"),
        now - 600,
        now + 60
    );
    let mut trace_id = String::new();
    wait_for("an exemplar of daemon.start", || {
        let v: Value = serde_json::from_str(&http_get(prom.port, &path).unwrap_or_default()).unwrap_or_default();
        trace_id = v["data"][0]["exemplars"][0]["labels"]["trace_id"].as_str().unwrap_or("").to_string();
        trace_id.len() == 32
    });
    let mut s = std::os::unix::net::UnixStream::connect(&e.sock).unwrap();
    s.write_all(format!("GET /engine/v1/traces/{trace_id} HTTP/1.0\r\nHost: engine\r\n\r\n").as_bytes()).unwrap();
    let mut trace = String::new();
    s.read_to_string(&mut trace).unwrap();
    assert!(
        trace.starts_with("HTTP/1.0 200") || trace.starts_with("HTTP/1.1 200"),
        "{}",
        &trace[..trace.len().min(300)]
    );
    assert!(trace.contains("daemon.start"), "the exemplar's trace has no daemon.start");
    e.ok(&["rm", "-f", "web", "named"]);
    e.ok(&["network", "rm", "mnet"]);
}
