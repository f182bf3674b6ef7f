//! `engine bench` as CI and users run it: starts measured beside runc and a (private) Debian
//! dockerd in the same run, and a JSON report whose phases cover every phase of a start the
//! design names. Only the report's shape is checked: timings are never a pass/fail condition.

use std::process::Command;

use engine_test_support::dockerd::Dockerd;
use engine_test_support::engined::Engined;
use engine_test_support::*;
use serde_json::Value;

const DESIGN_PHASES: &[&str] = &[
    "engine.run",
    "daemon.create",
    "daemon.start",
    "lifecycle.Tasks/Create",
    "lifecycle.Tasks/Start",
    "shim.create",
    "shim.start",
    "runtime.create",
    "runtime.namespaces",
    "runtime.cgroup",
    "runtime.rootfs",
    "runtime.start",
    "init.exec",
    "kernel.clone3",
    "kernel.cgroup_mkdir",
];

#[test]
fn bench_compares_runc_and_docker_and_reports_every_phase() {
    let e = Engined::start();
    e.import_busybox("busybox");
    let d = Dockerd::start(&[]);
    let report = e.dir.path().join("bench/report.json");
    let out = Command::new(bin("engine"))
        .args(["-H", &e.host(), "bench", "--runs", "3", "--concurrency", "2", "--compare", "runc,docker", "--json"])
        .arg(&report)
        .env("DOCKER_HOST", format!("unix://{}", d.sock.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "engine bench failed: {}{}\n{}", stdout(&out), stderr(&out), e.log_tail());
    let printed = stdout(&out);
    for want in [
        "SYSTEM",
        "engine",
        "runc",
        "docker",
        "ratio engine/docker",
        "ratio engine/runc",
        "PHASE",
        "runtime.namespaces",
    ] {
        assert!(printed.contains(want), "{want} missing from:\n{printed}");
    }
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    for sys in ["engine", "runc", "docker"] {
        let s = &r["systems"][sys];
        assert_eq!(s["sequential"]["runs"], 3, "{sys}: {s}");
        assert!(s["sequential"]["median_ms"].as_f64().is_some_and(|m| m > 0.0), "{sys}: {s}");
        assert_eq!(s["concurrent"]["runs"], 3, "{sys}: {s}");
        assert!(s["concurrent"]["throughput_per_s"].as_f64().is_some_and(|t| t > 0.0), "{sys}: {s}");
    }
    assert!(
        r["ratios"]["engine/docker"].as_f64().is_some() && r["ratios"]["engine/runc"].as_f64().is_some(),
        "{}",
        r["ratios"]
    );
    let phases: Vec<&str> = r["phases"].as_array().unwrap().iter().filter_map(|p| p["phase"].as_str()).collect();
    assert_eq!(engine_telemetry::names::START_PHASES, DESIGN_PHASES, "the catalogue's phases of a start");
    for p in DESIGN_PHASES {
        assert!(phases.contains(p), "phase {p} missing from the report: {phases:?}");
    }
    assert_eq!(r["missing_phases"], serde_json::json!([]));
    for p in r["phases"].as_array().unwrap().iter().filter(|p| p["event"] != true) {
        // the warm-up and 2 × 3 runs: every span phase of a start is in each of them
        if p["phase"] == "runtime.create" {
            assert_eq!(p["count"], 7, "{p}");
            assert!(p["p50_ms"].as_f64().unwrap() <= p["p99_ms"].as_f64().unwrap());
        }
    }
    // against itself as a baseline: every phase's change is printed
    let again = Command::new(bin("engine"))
        .args(["-H", &e.host(), "bench", "--runs", "2", "--baseline"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("change against the baseline") && stdout(&again).contains("runtime.create"),
        "{}",
        stdout(&again)
    );
    // bad input: an image that is not there, a peer that does not exist
    let bad = e.engine(&["bench", "--image", "nope"]);
    assert!(!bad.status.success() && stderr(&bad).contains("nope"));
    assert!(e.ok(&["bench", "--runs", "1", "--compare", "lxc"]).contains("SYSTEM"));
    assert_eq!(e.ok(&["ps", "-aq"]).trim(), "", "bench left containers");
}
