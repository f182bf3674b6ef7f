//! The runtime's phase spans: handed to the caller through ENGINE_SPAN_SINK, under the
//! TRACEPARENT it was given, nested as the phases are, with engine-init's exec of the program.

mod common;
use common::*;

#[test]
fn phases_are_spans_under_the_callers_trace() {
    let env = Env::new();
    let b = env.bundle("sp", &["true"]);
    let sink = env.dir.path().join("spans.jsonl");
    let parent_tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let out = std::process::Command::new(RUNTIME)
        .env("TRACEPARENT", parent_tp)
        .env("ENGINE_SPAN_SINK", &sink)
        .arg("--root")
        .arg(&env.root)
        .args(["run", "--bundle", b.p(), "sp"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let (spans, skipped) =
        engine_telemetry::read_spans(std::io::BufReader::new(std::fs::File::open(&sink).unwrap())).unwrap();
    assert_eq!(skipped, 0);
    assert!(spans.iter().all(|s| s.trace_id == "0af7651916cd43dd8448eb211c80319c"), "one trace");
    // the runtime's, and engine-init's last step: the exec of the program, under runtime.start
    assert!(spans
        .iter()
        .all(|s| s.service == "engine-runtime" || (s.service == "engine-init" && s.name == "init.exec")));
    let by_name = |n: &str| spans.iter().find(|s| s.name == n).unwrap_or_else(|| panic!("no span {n}"));
    let create = by_name("runtime.create");
    assert_eq!(create.parent_span_id, "b7ad6b7169203331");
    assert_eq!(create.attr("container.id"), Some("sp"));
    for phase in ["runtime.spec", "runtime.cgroup", "runtime.namespaces", "runtime.init"] {
        assert_eq!(by_name(phase).parent_span_id, create.span_id, "{phase} under runtime.create");
    }
    let init = by_name("runtime.init");
    for phase in ["runtime.rootfs", "runtime.pivot_root", "runtime.process"] {
        assert_eq!(by_name(phase).parent_span_id, init.span_id, "{phase} under runtime.init");
    }
    for s in &spans {
        if let Some(parent) = spans.iter().find(|p| p.span_id == s.parent_span_id) {
            assert!(
                s.start_unix_nanos >= parent.start_unix_nanos && s.end_unix_nanos <= parent.end_unix_nanos,
                "{} does not nest in {}",
                s.name,
                parent.name
            );
        }
    }
    for op in ["runtime.start", "runtime.delete"] {
        assert_eq!(by_name(op).parent_span_id, "b7ad6b7169203331");
    }
    let exec = by_name("init.exec");
    assert_eq!(exec.parent_span_id, by_name("runtime.start").span_id);
    assert_eq!(exec.attr("process.executable.path"), Some("/bin/true"));
}

#[test]
fn failed_phase_is_marked() {
    let env = Env::new();
    let b = env.bundle("bad", &["no-such-program"]);
    let sink = env.dir.path().join("spans.jsonl");
    let out = std::process::Command::new(RUNTIME)
        .env("ENGINE_SPAN_SINK", &sink)
        .arg("--root")
        .arg(&env.root)
        .args(["create", "--bundle", b.p(), "bad"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let (spans, _) =
        engine_telemetry::read_spans(std::io::BufReader::new(std::fs::File::open(&sink).unwrap())).unwrap();
    let create = spans.iter().find(|s| s.name == "runtime.create").unwrap();
    assert!(create.error.as_deref().unwrap_or_default().contains("no-such-program"), "{create:?}");
    let process = spans.iter().find(|s| s.name == "runtime.process").unwrap();
    assert!(process.error.is_some());
    // without TRACEPARENT the runtime starts a trace of its own
    assert!(create.parent_span_id.is_empty());
}

#[test]
fn no_sink_no_spans() {
    let env = Env::new();
    let b = env.bundle("ns", &["true"]);
    let out = std::process::Command::new(RUNTIME)
        .env_remove("ENGINE_SPAN_SINK")
        .env("TRACEPARENT", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .arg("--root")
        .arg(&env.root)
        .args(["run", "--bundle", b.p(), "ns"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(std::fs::read_dir(&b.path).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("span")));
}
