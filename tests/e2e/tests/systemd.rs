//! engined as systemd runs it: the units verify, socket activation hands it the API socket
//! (`-H fd://`), it says READY=1 on `$NOTIFY_SOCKET` only once the API answers (with STATUS=
//! lines before, STOPPING=1 at the end), and `--validate` checks a configuration.

use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine_test_support::engined::Engined;
use engine_test_support::*;

fn units_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/systemd")
}

/// A `GET /_ping` answered on `sock`.
fn pings(sock: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(sock) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: engine\r\n\r\n").is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200")
}

#[test]
fn the_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    for unit in ["engine.service", "engine.socket"] {
        // the binary the unit names must exist for verify: the one built here stands in
        let text = std::fs::read_to_string(units_dir().join(unit)).unwrap();
        let text = text.replace("/usr/bin/engined", bin("engined").to_str().unwrap());
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let service = std::fs::read_to_string(units_dir().join("engine.service")).unwrap();
    for line in ["Type=notify", "ExecStart=/usr/bin/engined -H fd://", "KillMode=process", "Delegate=yes"] {
        assert!(service.lines().any(|l| l == line), "engine.service lacks {line}");
    }
    let out = Command::new(which("systemd-analyze"))
        .arg("verify")
        .arg(dir.path().join("engine.service"))
        .arg(dir.path().join("engine.socket"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).trim().is_empty(), "systemd-analyze warns: {}", stderr(&out));
}

#[test]
fn socket_activation_hands_over_the_api_socket() {
    let e = Engined::start_activated(&[]);
    // the activator became engined (same process), on the socket it was handed
    let pid: u32 = std::fs::read_to_string(e.dir.path().join("engined.pid")).unwrap().trim().parse().unwrap();
    assert_eq!(Some(pid), e.child.as_ref().map(|c| c.id()));
    assert!(e.log_tail().contains("API listening on the socket handed over"), "{}", e.log_tail());
    e.import_busybox("bb");
    assert_eq!(e.ok(&["run", "--rm", "--network", "none", "bb", "echo", "activated"]), "activated\n");
    // the descriptor handed over is not inherited by what engined starts
    let lifecycled = e.lifecycled_pid();
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{lifecycled}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|f| std::fs::read_link(f.path()).ok())
        .map(|l| l.display().to_string())
        .collect();
    let inode = std::fs::read_link(format!("/proc/{pid}/fd/3")).unwrap().display().to_string();
    assert!(!fds.contains(&inode), "lifecycled holds the API socket ({inode}): {fds:?}");
    // -H fd:// with nothing handed over is a clear error, and nothing starts
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("engined"))
        .args(["-H", "fd://", "--data-root"])
        .arg(dir.path().join("d"))
        .arg("--exec-root")
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no socket was handed over"), "{}", stderr(&out));
    assert!(!dir.path().join("x/lifecycled.sock").exists());
}

#[test]
fn ready_is_notified_once_the_api_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    let got: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let api: Arc<Mutex<Option<std::path::PathBuf>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = {
        let (got, api, done) = (got.clone(), api.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let received = sock.recv(&mut buf);
                // the test's own last datagram wakes this loop to end it
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let Ok(n) = received else { continue };
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                // at the moment READY=1 arrives, the API must answer
                let answers = msg.contains("READY=1") && api.lock().unwrap().as_deref().is_some_and(pings);
                got.lock().unwrap().push((msg, answers));
            }
        })
    };
    let notify = path.display().to_string();
    let mut e = Engined::start_with(&[("NOTIFY_SOCKET", notify.as_str())], &[]);
    *api.lock().unwrap() = Some(e.sock.clone());
    wait_for("READY=1", || got.lock().unwrap().iter().any(|(m, _)| m.contains("READY=1")));
    e.kill9();
    e.restart();
    wait_for("a second READY=1", || got.lock().unwrap().iter().filter(|(m, _)| m.contains("READY=1")).count() == 2);
    drop(e);
    wait_for("STOPPING=1", || got.lock().unwrap().iter().any(|(m, _)| m.contains("STOPPING=1")));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    UnixDatagram::unbound().unwrap().send_to(b"done", &path).unwrap();
    listener.join().unwrap();
    let got = got.lock().unwrap().clone();
    let first_ready = got.iter().position(|(m, _)| m.contains("READY=1")).unwrap();
    assert!(
        got[..first_ready].iter().any(|(m, _)| m.contains("STATUS=starting engine-lifecycled")),
        "no STATUS before READY: {got:?}"
    );
    // the second READY=1 came when this test knew the socket: the API answered then
    let second = got.iter().filter(|(m, _)| m.contains("READY=1")).nth(1).unwrap();
    assert!(second.1, "READY=1 before the API answered: {got:?}");
}

#[test]
fn validate_checks_a_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(&good, "{\n  \"log-level\": \"warn\",\n  \"dns\": [\"127.0.0.1\"]\n}\n").unwrap();
    let data_root = dir.path().join("data");
    let out = Command::new(bin("engined"))
        .arg("--validate")
        .arg("--config-file")
        .arg(&good)
        .arg("--data-root")
        .arg(&data_root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!data_root.exists(), "a check made the data root");
    assert_eq!(stdout(&out), "configuration OK\n");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\n  \"log-level\": \"warn\",\n  \"no-such-option\": true\n}\n").unwrap();
    let out = Command::new(bin("engined")).arg("--validate").arg("--config-file").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no-such-option") && err.contains("line 3"), "{err}");
    let wrong = dir.path().join("wrong.json");
    std::fs::write(&wrong, "{\"dns\": [\"not-an-address\"]}").unwrap();
    let out = Command::new(bin("engined")).arg("--validate").arg("--config-file").arg(&wrong).output().unwrap();
    assert!(!out.status.success() && stderr(&out).contains("invalid --dns \"not-an-address\""), "{}", stderr(&out));
}

/// A shell set up for the Docker CLI (`DOCKER_HOST`) works with the engine CLI too; `-H` and
/// `ENGINE_HOST` come first.
#[test]
fn the_engine_cli_honours_docker_host() {
    let e = Engined::start();
    let engine = |env: &[(&str, &str)], args: &[&str]| {
        Command::new(bin("engine"))
            .env_remove("ENGINE_HOST")
            .env_remove("DOCKER_HOST")
            .envs(env.iter().copied())
            .args(args)
            .output()
            .unwrap()
    };
    let host = e.host();
    let out = engine(&[("DOCKER_HOST", host.as_str())], &["version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let wrong = "unix:///nonexistent/engine.sock";
    let out = engine(&[("DOCKER_HOST", wrong), ("ENGINE_HOST", host.as_str())], &["version"]);
    assert!(out.status.success(), "ENGINE_HOST did not come first: {}", stderr(&out));
    let out = engine(&[("DOCKER_HOST", host.as_str())], &["-H", wrong, "version"]);
    assert!(!out.status.success(), "-H did not come first");
}

/// SIGHUP reads the configuration file again: a changed log level and registry mirror take
/// effect at once, the log says what changed; a file that does not read changes nothing.
#[test]
fn sighup_reloads_the_log_level_the_registry_mirrors_and_the_labels() {
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("daemon.json");
    // mirrors that are never contacted: nothing here pulls
    std::fs::write(
        &conf,
        r#"{"log-level": "error", "registry-mirrors": ["http://127.0.0.1:1"], "labels": ["tier=a"]}"#,
    )
    .unwrap();
    let e = Engined::start_with(&[], &["--config-file", conf.to_str().unwrap()]);
    let info = |field: &str| e.docker_ok(&["info", "--format", &format!("{{{{json .{field}}}}}")]).trim().to_string();
    let log = || std::fs::read_to_string(e.dir.path().join("engined.log")).unwrap_or_default();
    assert_eq!(info("RegistryConfig.Mirrors"), r#"["http://127.0.0.1:1"]"#);
    assert_eq!(info("Debug"), "false");
    assert_eq!(info("Labels"), r#"["tier=a"]"#);
    assert!(!log().contains("level=info"), "info lines at log-level error: {}", log());

    std::fs::write(
        &conf,
        r#"{"log-level": "debug", "registry-mirrors": ["http://127.0.0.1:2"], "labels": ["tier=b"]}"#,
    )
    .unwrap();
    let pid = e.child.as_ref().unwrap().id() as i32;
    // SAFETY: a signal to the engined this test started, by pid
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_for("the reload in the log", || log().contains("reloaded the configuration:"));
    let line = log().lines().find(|l| l.contains("reloaded the configuration:")).unwrap().to_string();
    assert!(
        line.contains("log-level: error → debug") && line.contains("registry-mirrors") && line.contains("labels"),
        "{line}"
    );
    assert_eq!(info("Labels"), r#"["tier=b"]"#);
    assert_eq!(info("RegistryConfig.Mirrors"), r#"["http://127.0.0.1:2"]"#);
    assert_eq!(info("Debug"), "true");

    // a broken file: said so, and the configuration stays
    std::fs::write(&conf, r#"{"log-level": "#).unwrap();
    // SAFETY: as above
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_for("the refused reload in the log", || log().contains("it stays as it was"));
    assert_eq!(info("RegistryConfig.Mirrors"), r#"["http://127.0.0.1:2"]"#);
    assert!(e.engine(&["version"]).status.success());
}

/// `engined config default` prints a configuration file of every option at its default,
/// commented out, that `--validate` takes back; an option both in a file and given as a flag is
/// refused, as dockerd refuses it, and a bad key is named with its line.
#[test]
fn the_default_configuration_validates_and_flags_may_not_repeat_the_file() {
    let out = Command::new(bin("engined")).args(["config", "default"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for key in ["log-level", "data-root", "registry-mirrors", "dns", "ipv6", "default-address-pools", "hosts", "labels"]
    {
        assert!(text.contains(&format!("  // \"{key}\": ")), "{key} missing from {text}");
    }
    assert!(text.contains("  // \"log-level\": \"info\",") && text.contains("  // \"live-restore\": true,"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("daemon.json");
    let validate = |flags: &[&str]| {
        Command::new(bin("engined")).arg("--validate").arg("--config-file").arg(&file).args(flags).output().unwrap()
    };
    std::fs::write(&file, &text).unwrap();
    // as the unit runs it: -H fd:// beside the packaged file
    let out = validate(&["-H", "fd://", "--log-level", "debug"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "configuration OK");

    let set = text.replace("  // \"log-level\": \"info\",", "  \"log-level\": \"warn\",");
    std::fs::write(&file, &set).unwrap();
    let out = validate(&["--log-level", "debug"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("specified both as a flag and in the configuration file: log-level: (from flag: \"debug\", from file: \"warn\")"),
        "{err}"
    );
    let line = set.lines().position(|l| l.starts_with("  \"log-level\"")).unwrap() + 1;
    std::fs::write(&file, set.replace("  \"log-level\": \"warn\",", "  \"log-levle\": \"warn\",")).unwrap();
    let err = stderr(&validate(&[]));
    assert!(err.contains("unknown field `log-levle`") && err.contains(&format!("line {line}")), "{err}");
}

/// A data root a newer engine wrote (a later format) is refused before anything starts or
/// changes; one without a format record is taken as format 1 and recorded.
#[test]
fn a_newer_data_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, exec) = (dir.path().join("data"), dir.path().join("exec"));
    std::fs::create_dir_all(&data).unwrap();
    let newer = r#"{"format": 99, "written_by": "9.0.0"}"#;
    std::fs::write(data.join("format.json"), newer).unwrap();
    let out = Command::new(bin("engined"))
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .arg("-H")
        .arg(format!("unix://{}", dir.path().join("e.sock").display()))
        .arg("--data-root")
        .arg(&data)
        .arg("--exec-root")
        .arg(&exec)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("is in format 99, written by engine 9.0.0") && err.lines().count() <= 2, "{err}");
    assert_eq!(std::fs::read_to_string(data.join("format.json")).unwrap(), newer);
    assert!(!exec.join("lifecycled.pid").exists(), "lifecycled was started");
    assert!(!dir.path().join("e.sock").exists());

    // an engined on a root from before the record: recorded as this engine's
    let e = Engined::start();
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(e.data_root().join("format.json")).unwrap()).unwrap();
    assert_eq!(f["format"], 1);
}

/// The man pages and completions generated from the command lines, and install.sh of `make
/// dist` run into another root: everything lands where it belongs, the pages render, the
/// completion loads in bash.
#[test]
fn man_pages_completions_and_install_sh() {
    let stage = tempfile::tempdir().unwrap();
    let s = stage.path();
    let docs = |what: &str, dir: &str| {
        let out = Command::new(bin("engine-docs")).arg(what).arg(s.join(dir)).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    docs("man", "man");
    docs("completions", "completions");
    std::fs::create_dir_all(s.join("bin")).unwrap();
    for b in ["engine", "engined", "engine-lifecycled", "engine-shim", "engine-runtime", "engine-init", "engine-proxy"]
    {
        std::fs::copy(bin(b), s.join("bin").join(b)).unwrap();
    }
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging");
    std::fs::create_dir_all(s.join("systemd")).unwrap();
    for u in ["engine.service", "engine.socket"] {
        std::fs::copy(units.join("systemd").join(u), s.join("systemd").join(u)).unwrap();
    }
    std::fs::copy(units.join("install.sh"), s.join("install.sh")).unwrap();
    let defaults = Command::new(bin("engined")).args(["config", "default"]).output().unwrap();
    std::fs::write(s.join("daemon.json"), &defaults.stdout).unwrap();
    std::fs::create_dir_all(s.join("dashboards")).unwrap();
    std::fs::write(s.join("dashboards/start-latency.json"), "{}").unwrap();

    // every page renders
    let pages: Vec<std::path::PathBuf> =
        std::fs::read_dir(s.join("man")).unwrap().flatten().map(|e| e.path()).collect();
    for name in
        ["engine.1", "engine-run.1", "engine-network-create.1", "engined.8", "engine-runtime.8", "engine-init.8"]
    {
        assert!(s.join("man").join(name).exists(), "no {name}");
    }
    for p in &pages {
        let out = Command::new("man").arg("-l").arg(p).env("MANPAGER", "cat").env("MANWIDTH", "80").output().unwrap();
        assert!(out.status.success() && stdout(&out).contains("NAME"), "{}: {}", p.display(), stderr(&out));
    }
    // the bash completion loads
    let script = format!("source {} && complete -p engine", s.join("completions/engine.bash").display());
    let out = Command::new("bash").arg("-c").arg(&script).output().unwrap();
    assert!(stdout(&out).contains("complete") && stdout(&out).contains("engine"), "{}{}", stdout(&out), stderr(&out));

    // install.sh into another root: says each step, puts each file in its place
    let root = tempfile::tempdir().unwrap();
    let out = Command::new("sh").arg(s.join("install.sh")).env("DESTDIR", root.path()).output().unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).lines().all(|l| l.starts_with("install.sh: ")), "{}", stdout(&out));
    let r = root.path();
    for f in [
        "usr/local/bin/engined",
        "usr/local/bin/engine-init",
        "etc/systemd/system/engine.socket",
        "etc/engine/daemon.json",
        "usr/local/share/man/man1/engine-run.1",
        "usr/local/share/man/man8/engined.8",
        "usr/local/share/bash-completion/completions/engine",
        "usr/local/share/zsh/vendor-completions/_engine",
        "usr/local/share/fish/vendor_completions.d/engine.fish",
        "usr/local/share/engine/dashboards/start-latency.json",
    ] {
        assert!(r.join(f).exists(), "install.sh left out {f}");
    }
    let service = std::fs::read_to_string(r.join("etc/systemd/system/engine.service")).unwrap();
    assert!(service.contains("ExecStart=/usr/local/bin/engined -H fd://"), "{service}");
    // a configuration there is kept
    std::fs::write(r.join("etc/engine/daemon.json"), "{\"log-level\": \"warn\"}").unwrap();
    let out = Command::new("sh").arg(s.join("install.sh")).env("DESTDIR", r).output().unwrap();
    assert!(stdout(&out).contains("is there, kept"));
    assert_eq!(std::fs::read_to_string(r.join("etc/engine/daemon.json")).unwrap(), "{\"log-level\": \"warn\"}");
}

/// Under systemd's journal (`$JOURNAL_STREAM`), log lines carry the syslog priority prefix and
/// no time of their own (the journal stamps them).
#[test]
fn journal_lines_have_priorities_and_no_time() {
    let e = Engined::start_with(&[("JOURNAL_STREAM", "8:12345")], &[]);
    let log = std::fs::read_to_string(e.dir.path().join("engined.log")).unwrap();
    let listening = log.lines().find(|l| l.contains("API listening on")).unwrap_or_else(|| panic!("{log}"));
    assert!(listening.starts_with("<6>API listening on"), "{listening}");
    assert!(!log.contains("level=info"), "{log}");
}

/// `--log-format json`: every log line is one JSON object with the level, the message and the
/// time, as dockerd's.
#[test]
fn json_log_lines() {
    let e = Engined::start_with(&[], &["--log-format", "json"]);
    let log = std::fs::read_to_string(e.dir.path().join("engined.log")).unwrap();
    let mut listening = None;
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
        assert!(v["level"].is_string() && v["time"].is_string(), "{line}");
        if v["msg"].as_str().is_some_and(|m| m.starts_with("API listening on")) {
            listening = Some(v);
        }
    }
    assert_eq!(listening.unwrap_or_else(|| panic!("{log}"))["level"], "info");
}

/// The reference pages generated from the code are the committed ones: after a change of a
/// command line or a span name, `cargo run -p engine-docs -- markdown docs` writes them again.
#[test]
fn the_generated_docs_are_current() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("engine-docs")).arg("markdown").arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    for page in ["cli.md", "engined.md", "metrics.md", "spans.md"] {
        let generated = std::fs::read_to_string(dir.path().join(page)).unwrap();
        let committed = std::fs::read_to_string(docs.join(page)).unwrap_or_default();
        assert!(
            generated == committed,
            "docs/{page} is not what the code generates: run `cargo run -p engine-docs -- markdown docs`"
        );
    }
}

/// The README's "use it for real" commands, read from the README as written, run against a
/// private engined (its socket for the one the README names): each succeeds and shows what the
/// README promises.
#[test]
fn the_readmes_commands_run() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    let at =
        lines.iter().position(|l| l.starts_with("test runs these three lines")).expect("the README's marked block");
    let block: Vec<&str> = lines[at + 1..]
        .iter()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.starts_with("    "))
        .map(|l| l.trim())
        .collect();
    assert_eq!(block.len(), 3, "{block:?}");
    let e = Engined::start();
    e.import_busybox("busybox");
    let mut outputs = Vec::new();
    for line in block {
        let mut words: Vec<&str> = line.split_whitespace().collect();
        let mut env = Vec::new();
        while let Some((k, v)) = words.first().and_then(|w| w.split_once('=')) {
            assert_eq!((k, v), ("DOCKER_HOST", "unix:///run/engine/engine.sock"), "{line}");
            env.push((k, e.host()));
            words.remove(0);
        }
        let out = match words.split_first() {
            Some((&"engine", args)) => e.engine(args),
            Some((&"docker", args)) => Command::new("docker").envs(env).args(args).output().unwrap(),
            _ => panic!("a README command this test does not know: {line}"),
        };
        assert!(out.status.success(), "{line}: {}", stderr(&out));
        outputs.push(stdout(&out));
    }
    assert_eq!(outputs[0].trim(), "hello");
    assert!(outputs[1].contains("engine.run") && outputs[1].contains("runtime.create"), "{}", outputs[1]);
    assert!(outputs[2].contains("hello"), "{}", outputs[2]);
}
