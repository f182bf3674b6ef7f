//! One container start is one trace: spans from all six processes (engine, engined,
//! engine-lifecycled, engine-shim, engine-runtime, engine-init) in engined's store, read back
//! through `engine trace`, kept across an engined restart, exported to a real OTLP gRPC receiver
//! (the service generated from the official opentelemetry-proto definitions), with the eBPF
//! probes' kernel rows inside it (and without them when the probes are off).

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::{Arc, Mutex};

use engine_telemetry::handoff::flatten;
use engine_telemetry::FlatSpan;
use engine_test_support::engined::Engined;
use engine_test_support::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

const SERVICES: [&str; 6] = ["engine", "engined", "engine-lifecycled", "engine-shim", "engine-runtime", "engine-init"];

fn services(spans: &[FlatSpan]) -> HashSet<&str> {
    spans.iter().map(|s| s.service.as_str()).collect()
}

/// `engine trace --json` of `container`'s last `op`, once all six services are in it and every
/// span's parent (the processes' spans reach engined each on its own way: the shim's and the
/// runtime's of an exit come after the wait has answered).
fn whole_trace(e: &Engined, container: &str, op: &str) -> Vec<FlatSpan> {
    let mut spans = Vec::new();
    wait_for(&format!("{container}'s {op} trace with spans from all six processes, and their parents"), || {
        let out = e.engine(&["trace", "--json", "--op", op, container]);
        if !out.status.success() {
            return false;
        }
        let doc: ExportTraceServiceRequest = serde_json::from_str(stdout(&out).trim()).expect("OTLP JSON");
        spans = flatten(&doc);
        let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
        let whole = spans.iter().all(|s| s.parent_span_id.is_empty() || ids.contains(s.parent_span_id.as_str()));
        SERVICES.iter().all(|s| services(&spans).contains(s)) && spans.iter().any(|s| s.name == "init.exec") && whole
    });
    spans
}

fn ancestors<'a>(spans: &'a [FlatSpan], s: &'a FlatSpan) -> Vec<&'a FlatSpan> {
    let by_id: HashMap<&str, &FlatSpan> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut out = Vec::new();
    let mut cur = s;
    while let Some(p) = by_id.get(cur.parent_span_id.as_str()) {
        out.push(*p);
        cur = p;
    }
    out
}

fn check_trace(spans: &[FlatSpan], container: &str) {
    let ids: HashSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(ids.len(), 1, "one trace id: {ids:?}");
    let roots: Vec<&str> = spans.iter().filter(|s| s.parent_span_id.is_empty()).map(|s| s.name.as_str()).collect();
    assert_eq!(roots, ["engine.run"], "the CLI's command is the only root");
    let by_id: HashMap<&str, &FlatSpan> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for s in spans {
        if s.parent_span_id.is_empty() {
            continue;
        }
        let p = by_id
            .get(s.parent_span_id.as_str())
            .unwrap_or_else(|| panic!("{} ({}): parent {} missing", s.name, s.service, s.parent_span_id));
        assert!(
            p.start_unix_nanos <= s.start_unix_nanos && s.end_unix_nanos <= p.end_unix_nanos,
            "{} [{}, {}] does not nest in its parent {} [{}, {}]",
            s.name,
            s.start_unix_nanos,
            s.end_unix_nanos,
            p.name,
            p.start_unix_nanos,
            p.end_unix_nanos
        );
    }
    // the runtime's phases sit under the shim's span, init's exec under the runtime's start
    for phase in [
        "runtime.create",
        "runtime.spec",
        "runtime.cgroup",
        "runtime.namespaces",
        "runtime.init",
        "runtime.rootfs",
        "runtime.pivot_root",
        "runtime.start",
        "init.exec",
    ] {
        let s = spans.iter().find(|s| s.name == phase).unwrap_or_else(|| panic!("no {phase} span"));
        assert!(ancestors(spans, s).iter().any(|a| a.service == "engine-shim"), "{phase} is not under a shim span");
    }
    let exec = spans.iter().find(|s| s.name == "init.exec").unwrap();
    assert_eq!(exec.service, "engine-init");
    assert_eq!(by_id[exec.parent_span_id.as_str()].name, "runtime.start");
    assert_eq!(exec.attr("process.executable.path"), Some("/bin/true"));
    // semantic-convention attributes
    let start = spans.iter().find(|s| s.name == "POST /containers/{id}/start").expect("engined's request span");
    assert_eq!(start.attr("http.request.method"), Some("POST"));
    assert_eq!(start.attr("http.route"), Some("/containers/{id}/start"));
    assert_eq!(start.attr("http.response.status_code"), Some("204"));
    let daemon = spans.iter().find(|s| s.name == "daemon.start").unwrap();
    assert_eq!(daemon.attr("container.name"), Some(container));
    assert_eq!(daemon.attr("container.image.name"), Some("busybox"));
    assert_eq!(daemon.attr("container.id").map(str::len), Some(64));
    let rpc = spans.iter().find(|s| s.name == "lifecycle.Tasks/Start").unwrap();
    assert_eq!(
        (rpc.attr("rpc.system"), rpc.attr("rpc.service"), rpc.attr("rpc.method")),
        (Some("grpc"), Some("engine.v1.Tasks"), Some("Start"))
    );
    let shim = spans.iter().find(|s| s.name == "shim.start").unwrap();
    assert_eq!((shim.attr("rpc.service"), shim.attr("rpc.method")), (Some("engine.v1.Shim"), Some("Start")));
    for service in SERVICES {
        assert!(
            spans.iter().any(|s| s.service == service && s.attr("process.pid").is_some()),
            "no span of {service} says its process.pid"
        );
    }
}

#[test]
fn one_start_is_one_trace_from_the_cli_to_init() {
    let mut e = Engined::start();
    e.import_busybox("busybox");
    let untraced = std::process::Command::new(bin("engine"))
        .args(["-H", &e.host(), "run", "--name", "untraced", "busybox", "true"])
        .env("OTEL_TRACES_SAMPLER", "always_off")
        .output()
        .unwrap();
    assert!(untraced.status.success(), "{}", stderr(&untraced));
    e.ok(&["run", "--name", "traced", "busybox", "true"]);
    let spans = whole_trace(&e, "traced", "start");
    check_trace(&spans, "traced");
    // the whole run, not just its start: the container's run, its exit's way back and the
    // removal of `--rm` are in the same trace, under the wait the CLI made
    e.ok(&["run", "--rm", "--name", "whole", "busybox", "true"]);
    let mut whole = Vec::new();
    wait_for("the run's exit and removal in its trace", || {
        whole = whole_trace(&e, "whole", "start");
        whole.iter().any(|s| s.name == "daemon.remove")
    });
    check_trace(&whole, "whole");
    let by_id: HashMap<&str, &FlatSpan> = whole.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let parent = |name: &str| {
        let s = whole.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name} span"));
        by_id[s.parent_span_id.as_str()].name.clone()
    };
    assert_eq!(parent("container.run"), "POST /containers/{id}/wait");
    assert_eq!(parent("daemon.exit"), "POST /containers/{id}/wait");
    assert_eq!(parent("daemon.remove"), "daemon.exit");
    assert_eq!(parent("lifecycle.Containers/Delete"), "daemon.remove");
    let run = whole.iter().find(|s| s.name == "container.run").unwrap();
    assert_eq!(run.attr("process.exit.code"), Some("0"));

    // not sampled by the CLI: nothing below it recorded either, its exit's clean-up included
    assert!(e.fails(&["trace", "--op", "start", "untraced"]).contains("no traces of untraced for --op start"));

    // the waterfall, with the critical path drawn solid, and attributes on request
    let waterfall = e.ok(&["trace", "traced"]);
    for want in ["engine.run", "init.exec", "runtime.pivot_root"] {
        assert!(waterfall.contains(want), "no {want} in\n{waterfall}");
    }
    // the root is always on the critical path (which other spans are depends on timing)
    let root = waterfall.lines().find(|l| l.starts_with("engine.run")).unwrap();
    assert!(root.contains('█') && !root.contains('░'), "{waterfall}");
    assert!(e.ok(&["trace", "-a", "traced"]).contains("container.image.name=busybox"));

    // phase by phase against another start, and percentiles over both
    e.ok(&["run", "--name", "other", "busybox", "true"]);
    whole_trace(&e, "other", "start");
    let cmp = e.ok(&["trace", "--op", "start", "--compare", "other", "traced"]);
    assert!(cmp.lines().any(|l| l.starts_with("runtime.create ")) && cmp.contains("(total)"), "{cmp}");
    let stats = e.ok(&["trace", "stats"]);
    let row = stats
        .lines()
        .find(|l| l.starts_with("runtime.create "))
        .unwrap_or_else(|| panic!("no runtime.create in\n{stats}"));
    // traced, whole and other
    assert_eq!(row.split_whitespace().nth(1), Some("3"), "{stats}");

    // a Docker client that sends traceparent has its trace continued
    let (tid, sid) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let status = raw_request(&e, "POST /v1.43/containers/traced/stop", &format!("traceparent: 00-{tid}-{sid}-01"));
    assert!(status.starts_with("HTTP/1.1 304"), "{status}");
    let continued = e.ok(&["trace", "--json", "--trace-id", tid, "traced"]);
    let continued = flatten(&serde_json::from_str(continued.trim()).unwrap());
    let stop = continued.iter().find(|s| s.name == "POST /containers/{id}/stop").expect("the stop request's span");
    assert_eq!((stop.trace_id.as_str(), stop.parent_span_id.as_str()), (tid, sid));

    // the store survives engined's restart; a removed container's traces are found by name
    e.kill9();
    e.restart();
    e.ok(&["rm", "traced", "other", "untraced"]);
    let again = whole_trace(&e, "traced", "start");
    assert_eq!(again.len(), spans.len());
    assert!(e.fails(&["trace", "nosuch"]).contains("No such container"));
}

/// One HTTP request on engined's socket with an extra header line; returns the status line.
fn raw_request(e: &Engined, request_line: &str, header: &str) -> String {
    raw_response(e, request_line, header).lines().next().unwrap_or("").to_string()
}

fn raw_response(e: &Engined, request_line: &str, header: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&e.sock).unwrap();
    write!(s, "{request_line} HTTP/1.1\r\nHost: engine\r\n{header}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// `GET /engine/v1/probes`.
fn probes(e: &Engined) -> serde_json::Value {
    let r = raw_response(e, "GET /engine/v1/probes", "Accept: application/json");
    let body = r.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|err| panic!("{err}: {r}"))
}

fn kernel_events(spans: &[FlatSpan]) -> Vec<(&FlatSpan, &str, &[(String, String)])> {
    spans
        .iter()
        .flat_map(|s| s.events.iter().map(move |(_, name, attrs)| (s, name.as_str(), attrs.as_slice())))
        .collect()
}

fn get<'a>(attrs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[test]
fn the_kernel_side_of_a_start_is_in_its_trace() {
    let e = Engined::start();
    let status = probes(&e);
    assert_eq!(status["Running"], true, "the probes did not load: {status}\n{}", e.log_tail());
    e.import_busybox("busybox");
    e.ok(&["run", "--name", "kernel", "busybox", "true"]);
    let spans = whole_trace(&e, "kernel", "start");
    // the kernel rows come with the spans they belong to: no waiting for them
    let rows = |spans: &[FlatSpan]| -> String {
        let mut out: Vec<String> = spans
            .iter()
            .map(|s| {
                format!(
                    "{} {} pid={:?} cpid={:?}",
                    s.service,
                    s.name,
                    s.attr("process.pid"),
                    s.attr("container.process.pid")
                )
            })
            .collect();
        out.extend(kernel_events(spans).iter().map(|(s, n, a)| format!("  {n} on {} {a:?}", s.name)));
        out.join("\n")
    };
    assert!(
        spans.iter().any(|s| s.name == "kernel.pivot_root")
            && kernel_events(&spans)
                .iter()
                .any(|(_, n, a)| *n == "kernel.exec" && get(a, "process.executable.path") == Some("/bin/true")),
        "kernel rows missing:\n{}\n{}",
        rows(&spans),
        e.log_tail()
    );
    check_trace(&spans, "kernel");
    let by_id: HashMap<&str, &FlatSpan> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let parent = |s: &FlatSpan| by_id[s.parent_span_id.as_str()].name.clone();
    // the clone of the container's process, with its namespaces, under runtime.namespaces
    let clone = spans
        .iter()
        .find(|s| s.name == "kernel.clone3" && s.attr("linux.namespaces").is_some_and(|n| n.contains("CLONE_NEWPID")))
        .expect("kernel.clone3 with CLONE_NEWPID");
    let ns = clone.attr("linux.namespaces").unwrap();
    for flag in ["CLONE_NEWNS", "CLONE_NEWUTS", "CLONE_NEWIPC", "CLONE_NEWPID"] {
        assert!(ns.contains(flag), "{flag} missing from {ns}");
    }
    assert_eq!(parent(clone), "runtime.namespaces");
    let pivot = spans.iter().find(|s| s.name == "kernel.pivot_root").unwrap();
    assert_eq!(parent(pivot), "runtime.pivot_root");
    assert_eq!(pivot.attr("linux.syscall.ret"), Some("0"));
    // confirmed by cgroup: the container's process acts from the container's own cgroup
    let init = spans.iter().find(|s| s.name == "runtime.init").unwrap();
    assert!(init.attr("linux.cgroup.id").is_some(), "runtime.init names the container's cgroup");
    assert_eq!(pivot.attr("linux.cgroup.id"), init.attr("linux.cgroup.id"));
    // the container's cgroup made and joined, as events of the runtime's spans
    let id = spans.iter().find(|s| s.name == "daemon.start").and_then(|s| s.attr("container.id")).unwrap().to_string();
    let events = kernel_events(&spans);
    let mkdir = events
        .iter()
        .find(|(_, n, a)| *n == "kernel.cgroup_mkdir" && get(a, "linux.cgroup.path").is_some_and(|p| p.ends_with(&id)))
        .expect("the container's cgroup_mkdir");
    assert_eq!(mkdir.0.name, "runtime.cgroup");
    let attach = events
        .iter()
        .find(|(_, n, a)| *n == "kernel.cgroup_attach" && get(a, "linux.cgroup.path").is_some_and(|p| p.ends_with(&id)))
        .expect("the container's cgroup_attach");
    assert_eq!(attach.0.name, "runtime.cgroup.attach");
    // the container's network namespace: engined's thread unshares it and bind-mounts it
    let engined_pid = e.child.as_ref().unwrap().id().to_string();
    let unshare = spans
        .iter()
        .find(|s| s.name == "kernel.unshare" && s.attr("linux.namespaces").is_some_and(|n| n.contains("CLONE_NEWNET")))
        .expect("kernel.unshare with CLONE_NEWNET");
    assert_eq!(parent(unshare), "network.namespace");
    let bind = spans
        .iter()
        .find(|s| s.name == "kernel.mount" && parent(s) == "network.namespace")
        .expect("the namespace's bind mount");
    assert!(
        bind.attr("mount.target").is_some_and(|t| t.ends_with(&format!("netns/{id}"))),
        "{:?}",
        bind.attr("mount.target")
    );
    for s in spans.iter().filter(|s| s.name.starts_with("kernel.") && parent(s) == "network.namespace") {
        assert_eq!(
            s.attr("process.pid"),
            Some(engined_pid.as_str()),
            "{} under network.namespace is not engined's",
            s.name
        );
    }
    // nothing else from a process outside the container's tree (shim, runtime, the container)
    let mut tree: HashSet<String> = spans
        .iter()
        .filter(|s| ["engine-shim", "engine-runtime", "engine-init"].contains(&s.service.as_str()))
        .filter_map(|s| s.attr("process.pid"))
        .map(str::to_string)
        .collect();
    tree.extend(spans.iter().filter_map(|s| s.attr("container.process.pid")).map(str::to_string));
    for s in spans.iter().filter(|s| s.name.starts_with("kernel.") && parent(s) != "network.namespace") {
        assert!(
            tree.contains(s.attr("process.pid").unwrap()),
            "{} of pid {:?} is outside {tree:?}",
            s.name,
            s.attr("process.pid")
        );
    }
    for (span, name, attrs) in &events {
        let pid = get(attrs, "process.pid").unwrap();
        // engined's thread that makes the namespace: its own events, in its own span
        if span.name == "network.namespace" {
            assert_eq!(pid, engined_pid, "{name} on network.namespace is not engined's");
            continue;
        }
        assert!(tree.contains(pid), "{name} of pid {pid} is outside {tree:?}");
    }
    // the waterfall shows kernel rows, --no-kernel leaves them out
    let w = e.ok(&["trace", "--op", "start", "kernel"]);
    assert!(w.contains("kernel.pivot_root") && w.contains("· kernel.exec /bin/true"), "{w}");
    assert!(!e.ok(&["trace", "--op", "start", "--no-kernel", "kernel"]).contains("kernel."));
    assert!(probes(&e)["EventsSent"].as_u64().unwrap() > 0);
    e.ok(&["rm", "kernel"]);
}

/// Headless Chromium with `args`, its profile in `dir`, kept off every network (no proxy
/// reachable, no name resolved, no background fetches); its stdout.
fn chromium(args: &[&str], dir: &std::path::Path) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--proxy-server=127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND",
        ])
        .arg(format!("--user-data-dir={}", dir.join("chromium").display()))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("chromium: {e} (`make setup` installs it)"));
    assert!(out.status.success(), "chromium {args:?}: {}", stderr(&out));
    stdout(&out)
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// An OTLP gRPC receiver on loopback (the service generated from the official protos), served
/// on `rt`: what it got, and its address.
fn otlp_receiver(rt: &tokio::runtime::Runtime) -> (Collector, std::net::SocketAddr) {
    let collector = Collector::default();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (collector, addr)
}

#[test]
fn the_same_trace_reaches_an_otlp_grpc_receiver() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (collector, addr) = otlp_receiver(&rt);

    let endpoint = format!("http://{addr}");
    // with the probes off: containers run and are traced, without kernel rows
    let e = Engined::start_with(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=e2e,team=engine%20core"),
        ],
        &["--no-probes"],
    );
    let status = probes(&e);
    assert_eq!(
        (status["Running"].as_bool(), status["Reason"].as_str()),
        (Some(false), Some("disabled by --no-probes"))
    );
    e.import_busybox("busybox");
    e.ok(&["run", "--name", "traced", "busybox", "true"]);
    let stored = whole_trace(&e, "traced", "start");
    assert!(stored.iter().all(|s| !s.name.starts_with("kernel.") && s.events.is_empty()), "kernel rows without probes");
    let trace_id = stored[0].trace_id.clone();
    let mut received = Vec::new();
    wait_for("the receiver to get the trace from all six processes", || {
        received = collector.0.lock().unwrap().iter().flat_map(flatten).filter(|s| s.trace_id == trace_id).collect();
        received.len() >= stored.len()
    });
    let got: HashSet<(&str, &str)> = received.iter().map(|s| (s.span_id.as_str(), s.name.as_str())).collect();
    let want: HashSet<(&str, &str)> = stored.iter().map(|s| (s.span_id.as_str(), s.name.as_str())).collect();
    assert_eq!(got, want, "the receiver got the stored trace");
    // resource attributes from OTEL_RESOURCE_ATTRIBUTES, service.name per process kept
    let reqs = collector.0.lock().unwrap().clone();
    let resources: Vec<HashMap<String, String>> = reqs
        .iter()
        .flat_map(|r| &r.resource_spans)
        .map(|rs| {
            rs.resource
                .iter()
                .flat_map(|r| &r.attributes)
                .map(|kv| (kv.key.clone(), format!("{:?}", kv.value)))
                .collect()
        })
        .collect();
    assert!(resources.iter().all(|r| r.get("deployment.environment").is_some_and(|v| v.contains("e2e"))
        && r.get("team").is_some_and(|v| v.contains("engine core"))));
    let names: HashSet<String> = resources.iter().filter_map(|r| r.get("service.name").cloned()).collect();
    assert_eq!(names.len(), SERVICES.len(), "{names:?}");

    // `engine trace --otlp` sends a stored trace to an endpoint itself
    collector.0.lock().unwrap().clear();
    assert_eq!(e.ok(&["trace", "--otlp", &endpoint, "--op", "start", "traced"]).trim(), trace_id);
    let sent: Vec<FlatSpan> =
        collector.0.lock().unwrap().iter().flat_map(flatten).filter(|s| s.trace_id == trace_id).collect();
    assert_eq!(sent.len(), stored.len(), "engine trace --otlp sent the whole trace");
    e.ok(&["rm", "traced"]);
}

/// Every container operation through the CLI is exactly one trace holding the calls it made down
/// to the runtime: `kill` and `rm` used to send lifecycled no context, so their lifecycled, shim and
/// runtime spans started traces of their own. The work engined does on its own after an exit is
/// one trace too (`daemon.exit`), and no trace is ever rooted below engined.
#[test]
fn every_operation_is_exactly_one_trace() {
    let e = Engined::start();
    e.import_busybox("bb");
    let context = e.dir.path().join("context");
    std::fs::create_dir(&context).unwrap();
    std::fs::write(context.join("Dockerfile"), "FROM bb\nRUN echo built > /built\nCMD [\"cat\", \"/built\"]\n")
        .unwrap();
    let context = context.to_str().unwrap();
    let ops: &[(&[&str], &str, &[&str])] = &[
        (&["create", "--name", "ctr", "bb", "sleep", "1000"], "engine.create", &["lifecycle.Containers/Create"]),
        (&["start", "ctr"], "engine.start", &["lifecycle.Tasks/Start", "runtime.start", "init.exec"]),
        (&["exec", "ctr", "true"], "engine.exec", &["lifecycle.Tasks/Exec", "shim.exec"]),
        // a commit pauses the container around it; a build's RUN is a whole container start
        (&["commit", "ctr", "traced:1"], "engine.commit", &["daemon.commit", "lifecycle.Tasks/Pause", "shim.resume"]),
        (
            &["build", "-t", "traced:2", context],
            "engine.build",
            &[
                "daemon.build",
                "build.step",
                "daemon.create",
                "lifecycle.Tasks/Start",
                "init.exec",
                "lifecycle.Containers/Delete",
            ],
        ),
        (&["pause", "ctr"], "engine.pause", &["lifecycle.Tasks/Pause", "shim.pause", "runtime.pause"]),
        (&["unpause", "ctr"], "engine.unpause", &["lifecycle.Tasks/Resume", "shim.resume", "runtime.resume"]),
        (
            &["update", "--pids-limit", "90", "ctr"],
            "engine.update",
            &["lifecycle.Tasks/Update", "shim.update", "runtime.update"],
        ),
        (&["stop", "-t", "1", "ctr"], "engine.stop", &["lifecycle.Tasks/Kill", "shim.kill"]),
        (&["start", "ctr"], "engine.start", &["lifecycle.Tasks/Start", "runtime.start"]),
        (&["restart", "-t", "1", "ctr"], "engine.restart", &["lifecycle.Tasks/Kill", "lifecycle.Tasks/Start"]),
        (&["kill", "ctr"], "engine.kill", &["lifecycle.Tasks/Kill", "shim.kill"]),
        (&["start", "ctr"], "engine.start", &["lifecycle.Tasks/Start", "runtime.start"]),
        (&["rm", "-f", "ctr"], "engine.rm", &["lifecycle.Tasks/Kill", "lifecycle.Containers/Delete"]),
    ];
    // engined's trace API, as another tool reads it
    let get = |path: &str| -> Vec<u8> {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(e.host().trim_start_matches("unix://")).unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: engine\r\n\r\n").as_bytes()).unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let body = resp.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |i| i + 4);
        resp[body..].to_vec()
    };
    let list = || serde_json::from_slice::<Vec<serde_json::Value>>(&get("/engine/v1/traces?limit=10000")).unwrap();
    let spans_of = |id: &str| -> Vec<FlatSpan> {
        serde_json::from_slice::<ExportTraceServiceRequest>(&get(&format!("/engine/v1/traces/{id}")))
            .map(|d| flatten(&d))
            .unwrap_or_default()
    };
    for (i, (args, root, wanted)) in ops.iter().enumerate() {
        e.ok(args);
        // the operation's trace: the i-th of its kind, with every wanted span from the processes below
        let count = ops[..=i].iter().filter(|(_, r, _)| r == root).count();
        let mut spans = Vec::new();
        wait_for(&format!("{args:?}: one trace rooted at {root} holding {wanted:?}"), || {
            let ours: Vec<String> = list()
                .iter()
                .filter(|t| t["Operation"] == *root)
                .filter_map(|t| t["TraceID"].as_str().map(str::to_string))
                .collect();
            if ours.len() != count {
                return false;
            }
            spans = spans_of(ours.last().unwrap());
            wanted.iter().all(|w| spans.iter().any(|s| s.name == *w))
        });
        let ids: HashSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
        assert_eq!(ids.len(), 1, "{args:?}");
        let roots: Vec<&str> = spans.iter().filter(|s| s.parent_span_id.is_empty()).map(|s| s.name.as_str()).collect();
        assert_eq!(roots, [*root], "{args:?}: the CLI's command is the only root");
    }
    // nothing is rooted below engined: every trace is a command's, or engined's own after an exit
    let all = list();
    for t in &all {
        let root = t["Operation"].as_str().unwrap_or_default();
        assert!(
            root.starts_with("engine.") || root == "daemon.exit" || root == "daemon.policy_start",
            "a trace rooted at {root:?}: {t}"
        );
    }
    for (_, root, _) in ops {
        let n = all.iter().filter(|t| t["Operation"] == *root).count();
        assert_eq!(n, ops.iter().filter(|(_, r, _)| r == root).count(), "traces rooted at {root}");
    }
}

/// A start whose hook spins on a CPU: the probes' on-CPU samples of the hook's process land on
/// the span of the runtime step that ran it, with where it ran (its own code: `[user] sh`).
#[test]
fn a_busy_hook_shows_as_on_cpu_samples_on_its_span() {
    let hooks = tempfile::tempdir().unwrap();
    std::fs::write(
        hooks.path().join("50-spin.json"),
        r#"{"version":"1.0.0","hook":{"path":"/bin/sh","args":["sh","-c","i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"]},"when":{"commands":["^/bin/true$"]},"stages":["createRuntime"]}"#,
    )
    .unwrap();
    let e = Engined::start_with(&[], &["--hooks-dir", hooks.path().to_str().unwrap()]);
    let status = probes(&e);
    assert_eq!(status["OnCpuSampling"], true, "the on-CPU sampler did not attach: {status}\n{}", e.log_tail());
    e.import_busybox("busybox");
    e.ok(&["run", "--name", "spin", "busybox", "/bin/true"]);
    let spans = whole_trace(&e, "spin", "start");
    let waterfall = stdout(&e.engine(&["trace", "--op", "start", "spin"]));
    let hook = spans.iter().find(|s| s.name == "runtime.hooks.createRuntime").unwrap_or_else(|| panic!("{waterfall}"));
    let samples: u64 = hook.attr("linux.perf.samples").and_then(|n| n.parse().ok()).unwrap_or(0);
    // at 997 Hz, a loop that runs for tens of milliseconds at least gives tens of samples
    assert!(samples >= 10, "{samples} samples on the hook's span:\n{waterfall}");
    let sampled: Vec<(&str, u64)> = hook
        .events
        .iter()
        .filter(|(_, n, _)| n == "kernel.on_cpu")
        .filter_map(|(_, _, a)| Some((get(a, "linux.kernel.stack")?, get(a, "linux.perf.samples")?.parse().ok()?)))
        .collect();
    let top = sampled.first().unwrap_or_else(|| panic!("no kernel.on_cpu on the hook's span:\n{waterfall}"));
    assert!(top.0 == "[user] sh" && top.1 * 2 >= samples, "{sampled:?} of {samples}");
    // of the runtime's span, the hook's process named beside it
    let create = spans.iter().find(|s| s.name == "runtime.create").unwrap();
    let event = hook.events.iter().find(|(_, n, _)| n == "kernel.on_cpu").unwrap();
    assert_eq!(get(&event.2, "process.pid"), create.attr("process.pid"), "{:?}", event.2);
    let hook_pid = get(&event.2, "linux.perf.sampled_pid").unwrap_or_else(|| panic!("{:?}", event.2));
    assert_ne!(Some(hook_pid), create.attr("process.pid"));
    // its parents count them too; the spans of no other step do
    assert!(create.attr("linux.perf.samples").and_then(|n| n.parse::<u64>().ok()).unwrap_or(0) >= samples);
    let start = spans.iter().find(|s| s.name == "runtime.start").unwrap();
    assert!(start.attr("linux.perf.samples").and_then(|n| n.parse::<u64>().ok()).unwrap_or(0) < samples / 2);
    assert!(waterfall.contains("kernel.on_cpu") && waterfall.contains("samples in [user] sh"), "{waterfall}");
    let why = stdout(&e.engine(&["trace", "--why", "--op", "start", "spin"]));
    let line = why.lines().position(|l| l.contains("runtime.hooks.createRuntime")).unwrap_or_else(|| panic!("{why}"));
    assert!(
        why.lines().skip(line + 1).take(4).any(|l| l.contains("on-CPU") && l.contains("samples in [user] sh")),
        "{why}"
    );
    assert!(probes(&e)["OnCpuSent"].as_u64().unwrap_or(0) >= samples);
    e.ok(&["rm", "spin"]);
}

#[test]
fn a_starts_time_is_split_on_and_off_cpu_with_where_it_blocked() {
    // an OCI hook (from a hooks directory, as podman's) that makes every start sleep 300 ms in
    // the runtime's createRuntime step: the runtime waits for it in wait4
    let hooks = tempfile::tempdir().unwrap();
    std::fs::write(
        hooks.path().join("50-nap.json"),
        r#"{"version":"1.0.0","hook":{"path":"/bin/sleep","args":["sleep","0.3"]},"when":{"commands":["^/bin/true$"]},"stages":["createRuntime"]}"#,
    )
    .unwrap();
    let e = Engined::start_with(&[], &["--hooks-dir", hooks.path().to_str().unwrap()]);
    let status = probes(&e);
    assert_eq!(status["Running"], true, "the probes did not load: {status}\n{}", e.log_tail());
    e.import_busybox("busybox");
    e.ok(&["run", "--name", "why", "busybox", "/bin/true"]);
    let spans = whole_trace(&e, "why", "start");
    let waterfall = stdout(&e.engine(&["trace", "--op", "start", "why"]));
    let split = |s: &FlatSpan| -> Option<[u64; 3]> {
        let n = |k: &str| s.attr(k).and_then(|v| v.parse::<u64>().ok());
        Some([n("engine.cpu.on_ns")?, n("engine.cpu.off_ns")?, n("engine.cpu.runq_ns")?])
    };
    let hook = spans.iter().find(|s| s.name == "runtime.hooks.createRuntime").unwrap_or_else(|| panic!("{waterfall}"));
    let [on, off, runq] = split(hook).unwrap_or_else(|| panic!("no CPU split on the hook's span:\n{waterfall}"));
    // the nap is the runtime's blocked time, not its CPU's; the three add up to the span
    assert!(off >= 250_000_000 && on < off, "on {on} off {off} runq {runq}\n{waterfall}");
    assert_eq!(on + off + runq, hook.duration_nanos());
    let blocked: Vec<(&str, u64)> = hook
        .events
        .iter()
        .filter(|(_, n, _)| n == "kernel.blocked")
        .filter_map(|(_, _, a)| Some((get(a, "linux.kernel.stack")?, get(a, "engine.cpu.off_ns")?.parse().ok()?)))
        .collect();
    let top = blocked.first().unwrap_or_else(|| panic!("no kernel.blocked on the hook's span:\n{waterfall}"));
    assert!(top.0.starts_with("do_wait") && top.0.contains("wait4") && top.1 >= 250_000_000, "{blocked:?}");
    // every span of the container's own processes has its split; the parents' include it
    for s in spans.iter().filter(|s| matches!(s.service.as_str(), "engine-shim" | "engine-runtime" | "engine-init")) {
        assert!(split(s).is_some(), "{} has no CPU split:\n{waterfall}", s.name);
    }
    let create = spans.iter().find(|s| s.name == "runtime.create").unwrap();
    assert!(split(create).unwrap()[1] >= off, "runtime.create's blocked time includes its hook's");
    assert!(waterfall.contains("kernel.blocked") && waterfall.contains("ms in do_wait"), "{waterfall}");
    // --why puts the split and the stack beside the span
    let why = stdout(&e.engine(&["trace", "--why", "--op", "start", "why"]));
    let line = why.lines().position(|l| l.contains("runtime.hooks.createRuntime")).unwrap_or_else(|| panic!("{why}"));
    assert!(why.lines().nth(line + 1).is_some_and(|l| l.contains("blocked") && l.contains("in do_wait")), "{why}");
    // a flame graph of it: the hook's span with the stack it blocked in
    let svg = hooks.path().join("why.svg");
    e.ok(&["trace", "--flame", svg.to_str().unwrap(), "--op", "start", "why"]);
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("runtime.hooks.createRuntime") && svg.contains("<title>do_wait ("),
        "{svg}"
    );
    // and a pprof profile of it: gzipped profile.proto, the hook's wait a sample of its span
    let pprof = hooks.path().join("why.pb.gz");
    e.ok(&["trace", "--pprof", pprof.to_str().unwrap(), "--op", "start", "why"]);
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(std::fs::File::open(&pprof).unwrap()), &mut raw)
        .unwrap();
    let profile = <engine_cli::pprof::Profile as prost::Message>::decode(&raw[..]).unwrap();
    let s = |i: i64| profile.string_table[i as usize].as_str();
    let waited = profile.sample.iter().find(|x| {
        x.label.iter().any(|l| s(l.key) == "span" && s(l.str) == "runtime.hooks.createRuntime")
            && x.location_id
                .first()
                .and_then(|id| profile.function.iter().find(|f| f.id == *id))
                .is_some_and(|f| s(f.name) == "do_wait")
    });
    assert!(waited.is_some_and(|x| x.value[0] >= 250_000_000), "no wait4 sample of the hook's span");
    // as its users read it: `go tool pprof` (Go from bookworm-backports, as `make setup` installs it)
    let go = "/usr/lib/go-1.23/bin/go";
    assert!(std::path::Path::new(go).exists(), "{go} is missing: `make setup` installs golang-1.23-go");
    let top = Command::new(go)
        .args(["tool", "pprof", "-top", "-sample_index=0"])
        .arg(&pprof)
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("HOME", hooks.path())
        .env("GOCACHE", hooks.path().join("gocache"))
        .output()
        .unwrap();
    let top_text = stdout(&top);
    assert!(top.status.success() && top_text.contains("do_wait"), "{top_text}{}", stderr(&top));
    // and one HTML page of it all: the waterfall, the flame graph, the spans as JSON
    let html = hooks.path().join("why.html");
    e.ok(&["trace", "--html", html.to_str().unwrap(), "--op", "start", "why"]);
    let html = std::fs::read_to_string(&html).unwrap();
    assert!(html.contains("<pre id=\"waterfall\">") && html.contains("<div id=\"flame\"><svg"), "{html}");
    let json = html.split("<script type=\"application/json\" id=\"spans\">").nth(1).unwrap();
    let page_spans: serde_json::Value = serde_json::from_str(json.split("</script>").next().unwrap()).unwrap();
    let hook_off = page_spans
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "runtime.hooks.createRuntime")
        .and_then(|s| s["attributes"]["engine.cpu.off_ns"].as_str()?.parse::<u64>().ok());
    assert_eq!(hook_off, Some(off));
    // in a real browser (headless Chromium, kept off every network): the page renders, and its
    // own script lists the slowest spans from its JSON, the hook's among them
    let page = hooks.path().join("why.html");
    let dom = chromium(&["--dump-dom", &format!("file://{}", page.display())], hooks.path());
    let slowest = dom.split("<ol id=\"slowest\">").nth(1).and_then(|l| l.split("</ol>").next()).unwrap_or_default();
    assert_eq!(slowest.matches("<li>").count(), 10, "{dom}");
    assert!(
        slowest.contains("<li>engine.run (engine) ") && slowest.contains("runtime.hooks.createRuntime"),
        "{slowest}"
    );
    let png = hooks.path().join("why.png");
    chromium(
        &[&format!("--screenshot={}", png.display()), "--window-size=1280,2000", &format!("file://{}", page.display())],
        hooks.path(),
    );
    let shot = std::fs::read(&png).unwrap();
    assert!(shot.starts_with(b"\x89PNG") && shot.len() > 20_000, "a screenshot of {} bytes", shot.len());
    // and /metrics has the blocked time by phase
    let (_, metrics) = e.request("GET", "/metrics", "");
    let off_metric = metrics
        .lines()
        .find(|l| {
            l.starts_with("engine_phase_cpu_seconds_total{")
                && l.contains("phase=\"runtime.hooks.createRuntime\"")
                && l.contains("state=\"off\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(off_metric.is_some_and(|v| v >= 0.25), "{off_metric:?}");
    let status = probes(&e);
    assert!(status["OffCpuSent"].as_u64().is_some_and(|n| n > 0), "{status}");
    // a malformed hook file fails the create with its name, and leaves nothing
    e.ok(&["rm", "why"]);
    std::fs::write(hooks.path().join("60-bad.json"), r#"{"version":"1.0.0","hook":{"path":"sleep"}}"#).unwrap();
    let out = e.engine(&["run", "--rm", "busybox", "/bin/true"]);
    assert!(!out.status.success() && stderr(&out).contains("60-bad.json"), "{}", stderr(&out));
    e.assert_clean();
    drop(e);

    // --no-profiles: the kernel rows stay, the scheduler's probes and the split go
    let e = Engined::start_with(&[], &["--no-profiles"]);
    assert_eq!(probes(&e)["Profiles"], false);
    assert!(e.ok(&["info"]).contains("Profiles: off (--no-profiles)"));
    e.import_busybox("busybox");
    e.ok(&["run", "--name", "plain", "busybox", "true"]);
    let spans = whole_trace(&e, "plain", "start");
    assert!(spans.iter().any(|s| s.name == "kernel.pivot_root"), "kernel rows without profiles");
    assert!(spans.iter().all(|s| split(s).is_none() && s.events.iter().all(|(_, n, _)| n != "kernel.blocked")));
    assert_eq!(probes(&e)["OffCpuSent"], 0);
}

#[test]
fn tail_sampling_exports_the_slow_and_the_failed_starts_only() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (collector, addr) = otlp_receiver(&rt);
    // a start of `/bin/true` (not of `true`) sleeps 1.5 s in a createRuntime hook
    let hooks = tempfile::tempdir().unwrap();
    std::fs::write(
        hooks.path().join("nap.json"),
        r#"{"version":"1.0.0","hook":{"path":"/bin/sleep","args":["sleep","1.5"]},"when":{"commands":["^/bin/true$"]},"stages":["createRuntime"]}"#,
    )
    .unwrap();
    let e = Engined::start_with(
        &[],
        &[
            "--otlp-endpoint",
            &format!("http://{addr}"),
            "--trace-keep-ratio",
            "0",
            "--trace-keep-slower-than",
            "1s",
            "--hooks-dir",
            hooks.path().to_str().unwrap(),
        ],
    );
    e.import_busybox("busybox");
    let trace_of = |name: &str| -> String {
        let out = e.ok(&["trace", "--json", "--op", "start", name]);
        let doc: ExportTraceServiceRequest = serde_json::from_str(out.trim()).expect("OTLP JSON");
        flatten(&doc)[0].trace_id.clone()
    };
    e.ok(&["run", "-d", "--name", "fast", "busybox", "sleep", "100"]);
    e.ok(&["run", "-d", "--name", "slow", "busybox", "/bin/true"]);
    assert!(!e.engine(&["run", "-d", "--name", "failed", "busybox", "/no/such/program"]).status.success());
    let (fast, slow, failed) = (trace_of("fast"), trace_of("slow"), trace_of("failed"));
    let exported = || -> HashSet<String> {
        collector.0.lock().unwrap().iter().flat_map(flatten).map(|s| s.trace_id).collect::<HashSet<_>>()
    };
    wait_for("the slow and the failed start's traces at the receiver", || {
        let got = exported();
        got.contains(&slow) && got.contains(&failed)
    });
    // the fast start was decided before them (it ended first): dropped, never sent
    assert!(!exported().contains(&fast), "the fast start was exported");
    // the store keeps all three, the metrics count each decision
    assert!(e.ok(&["trace", "--op", "start", "fast"]).contains("engine.run"));
    let (_, metrics) = e.request("GET", "/metrics", "");
    for (decision, reason) in [("kept", "slow"), ("kept", "error"), ("dropped", "dropped")] {
        let line = format!("engine_trace_export_decisions_total{{decision=\"{decision}\",reason=\"{reason}\"}}");
        let n = metrics.lines().find(|l| l.starts_with(&line)).and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
        assert!(n.is_some_and(|n| n >= 1), "{line}: {n:?}");
    }
    e.ok(&["rm", "-f", "fast", "slow", "failed"]);
    // a ratio outside 0..1 is refused at start, with the flag named
    let out = std::process::Command::new(engine_test_support::bin("engined"))
        .args(["--trace-keep-ratio", "2", "--validate"])
        .output()
        .unwrap();
    assert!(!out.status.success() && stderr(&out).contains("--trace-keep-ratio"), "{}", stderr(&out));
}
