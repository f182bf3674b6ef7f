//! `engine bench`: container start latency, as a user sees it and phase by phase.
//!
//! N runs of `engine run --rm IMAGE true` (this very binary, one process each, so a start costs
//! what it costs a user), one after another and then C at a time; the daemon's traces of those
//! starts give each phase's p50/p95/p99. With `--compare docker,podman,runc` the same runs of
//! those installed are interleaved with the engine's in the same session, and the ratios printed;
//! `--json FILE` writes the report, and `--baseline FILE` prints the change of each phase against
//! an earlier report. Timings are reported, never judged: the command fails only when the engine
//! cannot run the containers at all; a peer that cannot is reported and left out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::client::{self, Client};
use crate::containers::urlencode;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Starts per phase of the benchmark (sequential, then concurrent).
    #[arg(short = 'n', long, default_value_t = 20)]
    pub runs: usize,
    /// Starts at once in the concurrent phase.
    #[arg(short = 'c', long, default_value_t = 4)]
    pub concurrency: usize,
    /// Image to run (its `true` is run).
    #[arg(long, default_value = "busybox")]
    pub image: String,
    /// Network of the containers (none, bridge, ...).
    #[arg(long, default_value = "none")]
    pub network: String,
    /// Peers to measure in the same run: docker, podman, runc, engine-untraced.
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<String>,
    /// OCI bundle for runc (default: one made from the host's busybox-static, running `true`).
    #[arg(long)]
    pub runc_bundle: Option<PathBuf>,
    /// Write the report (JSON) here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// An earlier report: print each phase's change against it.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Measure pod starts through this CRI endpoint (unix:///path, engined's cri.sock) instead
    /// of `engine run`: RunPodSandbox + CreateContainer + StartContainer of `--image`.
    #[arg(long)]
    pub cri: Option<String>,
    /// With --cri: another CRI runtime measured in the same run, NAME=unix:///path (e.g.
    /// containerd=unix:///run/containerd/containerd.sock).
    #[arg(long, requires = "cri")]
    pub compare_cri: Vec<String>,
}

/// One system measured: how to start one container.
struct Peer {
    name: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    /// Append a container id of its own to each run (runc's `run` takes one).
    unique_id: bool,
}

static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn median(v: &[f64]) -> f64 {
    percentile(v, 0.5)
}

pub(crate) fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

async fn one(p: &Peer) -> Result<f64> {
    let mut cmd = tokio::process::Command::new(&p.argv[0]);
    cmd.args(&p.argv[1..]).envs(p.env.iter().cloned()).stdin(Stdio::null());
    if p.unique_id {
        cmd.arg(format!("bench-{}-{}", std::process::id(), RUN.fetch_add(1, std::sync::atomic::Ordering::SeqCst)));
    }
    let t0 = Instant::now();
    let out = cmd.output().await.with_context(|| format!("running {}", p.argv[0]))?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!("{}: {}", p.name, String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("failed"));
    }
    Ok(ms)
}

/// `n` starts, `c` at a time: (latencies ms, wall seconds).
async fn concurrent(p: &Peer, n: usize, c: usize) -> Result<(Vec<f64>, f64)> {
    let t0 = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worker = || async {
        let mut mine = Vec::new();
        while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < n {
            mine.push(one(p).await?);
        }
        Ok::<_, anyhow::Error>(mine)
    };
    let mut all = Vec::new();
    for r in futures_util::future::join_all((0..c.max(1)).map(|_| worker())).await {
        all.extend(r?);
    }
    Ok((all, t0.elapsed().as_secs_f64()))
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(prog)).find(|p| p.is_file()))
}

/// An OCI bundle for runc: the host's busybox-static as rootfs, `true` as the process.
fn runc_bundle(dir: &Path, runc: &Path) -> Result<PathBuf> {
    let busybox = which("busybox").context("--compare runc needs busybox-static on PATH, or --runc-bundle")?;
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy(&busybox, rootfs.join("bin/busybox"))?;
    let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin/true"));
    let st = std::process::Command::new(runc).args(["spec", "--bundle"]).arg(dir).status()?;
    if !st.success() {
        bail!("runc spec failed");
    }
    let path = dir.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["process"]["args"] = json!(["/bin/true"]);
    spec["process"]["terminal"] = json!(false);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(dir.to_path_buf())
}

/// The image, loaded into a peer that lacks it (from the engine's `save`).
async fn load_into(c: &Client, image: &str, loader: &[&str], name: &str) -> Result<()> {
    let r = c
        .send(hyper::Method::GET, &format!("/images/get?names={}", urlencode(image)), client::empty_body(), None)
        .await?;
    let mut tar = Vec::new();
    client::for_each_chunk(r, |chunk| {
        tar.extend_from_slice(chunk);
        Ok(())
    })
    .await?;
    let mut child = tokio::process::Command::new(loader[0])
        .args(&loader[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", loader[0]))?;
    if let Some(mut stdin) = child.stdin.take() {
        tokio::io::AsyncWriteExt::write_all(&mut stdin, &tar).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!("{name} could not load {image}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

pub async fn run(c: &Client, host: &str, a: BenchArgs) -> Result<i32> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if let Some(endpoint) = &a.cri {
        let report = crate::benchcri::run(endpoint, &a.compare_cri, &a.image, a.runs).await?;
        return write_report(&a, &report).map(|_| 0);
    }
    let me = std::env::current_exe().context("finding the engine binary")?.display().to_string();
    c.get(&format!("/images/{}/json", urlencode(&a.image)))
        .await
        .with_context(|| format!("image {} (load or import it first)", a.image))?;
    let engine_argv = |extra: &[&str]| -> Vec<String> {
        let mut v = vec![
            me.clone(),
            "-H".into(),
            host.to_string(),
            "run".into(),
            "--rm".into(),
            "--network".into(),
            a.network.clone(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend([a.image.clone(), "true".into()]);
        v
    };
    let mut peers = vec![Peer { name: "engine".into(), argv: engine_argv(&[]), env: Vec::new(), unique_id: false }];
    let mut skipped: BTreeMap<String, String> = BTreeMap::new();
    // a private directory (mkdtemp: never a path someone else could have prepared)
    let tmp = nix::unistd::mkdtemp(&std::env::temp_dir().join("engine-bench.XXXXXX"))
        .context("making a temporary directory")?;
    for name in &a.compare {
        let r: Result<Peer> = async {
            match name.as_str() {
                "engine-untraced" => Ok(Peer {
                    name: name.clone(),
                    argv: engine_argv(&[]),
                    env: vec![("OTEL_TRACES_SAMPLER".into(), "always_off".into())],
                    unique_id: false,
                }),
                "docker" | "podman" => {
                    let bin = which(name).with_context(|| format!("{name} is not installed"))?;
                    let b = bin.display().to_string();
                    let mut base = vec![b.clone()];
                    if name == "podman" {
                        base.extend(["--runtime".into(), "runc".into()]);
                    }
                    let probe = std::process::Command::new(&base[0])
                        .args(&base[1..])
                        .args(["image", "inspect", &a.image])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                    if !probe.as_ref().is_ok_and(|s| s.success()) {
                        let info = std::process::Command::new(&b)
                            .arg("info")
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                        if !info.is_ok_and(|s| s.success()) {
                            bail!("{name} has no daemon to talk to");
                        }
                        load_into(c, &a.image, &[&b, "load"], name).await?;
                    }
                    let mut argv = base;
                    argv.extend(["run".into(), "--rm".into(), "--network".into(), a.network.clone()]);
                    if name == "podman" {
                        argv.extend(["--ulimit".into(), "nofile=1024:1024".into()]);
                    }
                    argv.extend([a.image.clone(), "true".into()]);
                    Ok(Peer { name: name.clone(), argv, env: Vec::new(), unique_id: false })
                }
                "runc" => {
                    let runc = which("runc").context("runc is not installed")?;
                    let bundle = match &a.runc_bundle {
                        Some(b) => b.clone(),
                        None => runc_bundle(&tmp.join("bundle"), &runc)?,
                    };
                    let state = tmp.join("runc-state");
                    std::fs::create_dir_all(&state)?;
                    let argv = vec![
                        runc.display().to_string(),
                        "--root".into(),
                        state.display().to_string(),
                        "run".into(),
                        "--bundle".into(),
                        bundle.display().to_string(),
                    ];
                    Ok(Peer { name: name.clone(), argv, env: Vec::new(), unique_id: true })
                }
                other => bail!("unknown peer {other:?} (docker, podman, runc, engine-untraced)"),
            }
        }
        .await;
        match r {
            Ok(p) => peers.push(p),
            Err(e) => {
                eprintln!("bench: skipping {name}: {e:#}");
                skipped.insert(name.clone(), format!("{e:#}"));
            }
        }
    }
    // warm up every system once, then the sequential runs, interleaved
    let mut warm = Vec::new();
    for p in peers {
        match one(&p).await {
            Ok(_) => warm.push(p),
            Err(e) if p.name == "engine" => return Err(e.context("warming up the engine")),
            Err(e) => {
                eprintln!("bench: leaving {} out: {e:#}", p.name);
                skipped.insert(p.name.clone(), format!("{e:#}"));
            }
        }
    }
    let peers = warm;
    let mut seq: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for _ in 0..a.runs {
        for p in &peers {
            match one(p).await {
                Ok(ms) => seq.entry(p.name.clone()).or_default().push(ms),
                Err(e) if p.name == "engine" => return Err(e),
                Err(e) => eprintln!("bench: {e:#}"),
            }
        }
    }
    let mut conc: BTreeMap<String, (Vec<f64>, f64)> = BTreeMap::new();
    for p in &peers {
        match concurrent(p, a.runs, a.concurrency).await {
            Ok(r) => {
                conc.insert(p.name.clone(), r);
            }
            Err(e) if p.name == "engine" => return Err(e),
            Err(e) => eprintln!("bench: {e:#}"),
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);

    // the engine's phases, from the traces of the starts just made (2N runs + warm-up); the
    // long-lived processes' spans arrive a moment after each run, so ask until they are all in
    let limit = 2 * a.runs + 1;
    let mut stats = Value::Null;
    for _ in 0..100 {
        stats = c.get(&format!("/engine/v1/traces/stats?op=start&limit={limit}")).await?;
        let has = |n: &str| {
            stats["Phases"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["phase"] == n && p["count"].as_u64().unwrap_or(0) as usize >= limit.min(2 * a.runs))
        };
        if has("init.exec") && has("shim.start") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut phases: Vec<Value> = stats["Phases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let ms = |k: &str| p[k].as_u64().unwrap_or(0) as f64 / 1e6;
            json!({ "phase": p["phase"], "count": p["count"], "p50_ms": ms("p50_nanos"), "p95_ms": ms("p95_nanos"), "p99_ms": ms("p99_nanos"), "max_ms": ms("max_nanos") })
        })
        .collect();
    // kernel events (cgroup mkdir/attach, exec, fork) of the newest start: names and counts
    let events = latest_events(c).await.unwrap_or_default();
    for (name, count) in &events {
        if !phases.iter().any(|p| p["phase"] == name.as_str()) {
            phases.push(json!({ "phase": name, "count": count, "event": true }));
        }
    }
    let present = |n: &str| phases.iter().any(|p| p["phase"] == n);
    let missing: Vec<&str> = engine_telemetry::names::START_PHASES.iter().copied().filter(|n| !present(n)).collect();

    let summary = |v: &[f64]| json!({ "runs": v.len(), "median_ms": median(v), "p95_ms": percentile(v, 0.95), "min_ms": percentile(v, 0.0), "max_ms": percentile(v, 1.0) });
    let mut systems = serde_json::Map::new();
    for p in &peers {
        let s = seq.get(&p.name).map(|v| summary(v)).unwrap_or(Value::Null);
        let cc = conc.get(&p.name).map(|(v, wall)| json!({ "runs": v.len(), "concurrency": a.concurrency, "wall_s": wall, "throughput_per_s": v.len() as f64 / wall.max(1e-9), "median_ms": median(v), "p95_ms": percentile(v, 0.95) })).unwrap_or(Value::Null);
        systems.insert(p.name.clone(), json!({ "sequential": s, "concurrent": cc, "command": p.argv.join(" ") }));
    }
    let engine_median = seq.get("engine").map(|v| median(v)).unwrap_or(0.0);
    let ratios: serde_json::Map<String, Value> = seq
        .iter()
        .filter(|(n, _)| *n != "engine")
        .map(|(n, v)| (format!("engine/{n}"), json!(engine_median / median(v).max(1e-9))))
        .collect();
    let report = json!({
        "version": 1,
        "time_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "host": nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        "kernel": nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
        "image": a.image, "network": a.network, "runs": a.runs, "concurrency": a.concurrency,
        "systems": systems, "ratios": ratios, "skipped": skipped,
        "phases": phases, "missing_phases": missing,
    });
    print_report(&report);
    if let Some(b) = &a.baseline {
        match std::fs::read(b).ok().and_then(|x| serde_json::from_slice::<Value>(&x).ok()) {
            Some(old) => print_change(&old, &report),
            None => println!("\n(no baseline report at {})", b.display()),
        }
    }
    write_report(&a, &report)?;
    Ok(0)
}

/// `--json FILE`: the report written there.
fn write_report(a: &BenchArgs, report: &Value) -> Result<()> {
    if let Some(path) = &a.json {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nreport: {}", path.display());
    }
    Ok(())
}

/// Names and counts of the kernel events in the newest start's trace.
async fn latest_events(c: &Client) -> Result<BTreeMap<String, u64>> {
    let recent = c.get("/engine/v1/traces?op=start&limit=1").await?;
    let id = recent
        .as_array()
        .and_then(|a| a.last())
        .and_then(|t| t["TraceID"].as_str())
        .context("no start trace")?
        .to_string();
    let doc = c.get(&format!("/engine/v1/traces/{id}")).await?;
    let mut out = BTreeMap::new();
    for rs in doc["resourceSpans"].as_array().or(doc["resource_spans"].as_array()).into_iter().flatten() {
        for ss in rs["scopeSpans"].as_array().or(rs["scope_spans"].as_array()).into_iter().flatten() {
            for sp in ss["spans"].as_array().into_iter().flatten() {
                for ev in sp["events"].as_array().into_iter().flatten() {
                    if let Some(n) = ev["name"].as_str().filter(|n| n.starts_with("kernel.")) {
                        *out.entry(n.to_string()).or_insert(0) += 1;
                    }
                }
            }
        }
    }
    Ok(out)
}

fn print_report(r: &Value) {
    println!(
        "engine bench: {} × `run --rm --network {} {} true`, sequential then {} at a time",
        r["runs"],
        r["network"].as_str().unwrap_or(""),
        r["image"].as_str().unwrap_or(""),
        r["concurrency"]
    );
    println!(
        "\n{:<16} {:>10} {:>9} {:>13} {:>13} {:>10}",
        "SYSTEM", "MEDIAN ms", "P95 ms", "CONC. MED ms", "CONC. TOTAL s", "STARTS/s"
    );
    for (name, s) in r["systems"].as_object().into_iter().flatten() {
        let f = |v: &Value| v.as_f64().map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
        let c = &s["concurrent"];
        println!(
            "{:<16} {:>10} {:>9} {:>13} {:>13} {:>10}",
            name,
            f(&s["sequential"]["median_ms"]),
            f(&s["sequential"]["p95_ms"]),
            f(&c["median_ms"]),
            f(&c["wall_s"]),
            f(&c["throughput_per_s"])
        );
    }
    for (k, v) in r["ratios"].as_object().into_iter().flatten() {
        println!("ratio {k}: {:.2}", v.as_f64().unwrap_or(0.0));
    }
    println!("\n{:<34} {:>6} {:>10} {:>10} {:>10}", "PHASE (engine traces)", "COUNT", "P50 ms", "P95 ms", "P99 ms");
    for p in r["phases"].as_array().into_iter().flatten() {
        if p["event"] == true {
            println!(
                "{:<34} {:>6} {:>10} {:>10} {:>10}",
                p["phase"].as_str().unwrap_or(""),
                p["count"],
                "event",
                "",
                ""
            );
            continue;
        }
        let f = |k: &str| format!("{:.3}", p[k].as_f64().unwrap_or(0.0));
        println!(
            "{:<34} {:>6} {:>10} {:>10} {:>10}",
            p["phase"].as_str().unwrap_or(""),
            p["count"],
            f("p50_ms"),
            f("p95_ms"),
            f("p99_ms")
        );
    }
    let missing: Vec<&str> = r["missing_phases"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
    if !missing.is_empty() {
        println!("phases of the design missing from these traces: {}", missing.join(", "));
    }
}

/// Each phase's p50 against an earlier report.
fn print_change(old: &Value, new: &Value) {
    let by_phase = |r: &Value| -> BTreeMap<String, f64> {
        r["phases"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["event"] != true)
            .filter_map(|p| Some((p["phase"].as_str()?.to_string(), p["p50_ms"].as_f64()?)))
            .collect()
    };
    let (o, n) = (by_phase(old), by_phase(new));
    println!("\nchange against the baseline (p50 ms; timings vary between runs by a few percent):");
    println!("{:<34} {:>10} {:>10} {:>9}", "PHASE", "BEFORE", "NOW", "CHANGE");
    let sys = |r: &Value| r["systems"]["engine"]["sequential"]["median_ms"].as_f64();
    if let (Some(a), Some(b)) = (sys(old), sys(new)) {
        println!(
            "{:<34} {:>10.3} {:>10.3} {:>+8.1}%",
            "(engine run --rm, median)",
            a,
            b,
            (b / a.max(1e-9) - 1.0) * 100.0
        );
    }
    for (name, now) in &n {
        match o.get(name) {
            Some(before) => {
                println!("{name:<34} {before:>10.3} {now:>10.3} {:>+8.1}%", (now / before.max(1e-9) - 1.0) * 100.0)
            }
            None => println!("{name:<34} {:>10} {now:>10.3} {:>9}", "-", "new"),
        }
    }
}
