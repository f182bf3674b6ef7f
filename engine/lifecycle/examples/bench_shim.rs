//! `make bench-shim`: the resident memory of one engine-shim per running container, and the
//! median create+start+wait+delete latency of a busybox `true` through engine-lifecycled beside
//! `runc run` of the same bundle. Prints figures; never fails.
//!
//!   cargo run --release -p engine-lifecycled --example bench_shim -- [RUNS]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use engine_api::v1::containers_client::ContainersClient;
use engine_api::v1::tasks_client::TasksClient;
use engine_api::v1::*;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn pss_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("Pss:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn bundle(dir: &Path, name: &str, args: &[&str], runtime: &Path) -> PathBuf {
    let path = dir.join(name);
    engine_test_support::make_busybox_rootfs(&path.join("rootfs"));
    let out = Command::new(runtime).args(["spec", "--bundle"]).arg(&path).output().expect("engine-runtime spec");
    assert!(out.status.success());
    let config = path.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    spec["process"]["args"] = serde_json::json!(args);
    std::fs::write(&config, spec.to_string()).unwrap();
    path
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(30);
    let bin_dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    let runtime = bin_dir.join("engine-runtime");
    let dir = std::env::temp_dir().join(format!("engine-bench-shim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("lifecycled.sock");
    /// Stops lifecycled and removes the scratch directory whatever happens, panics included.
    struct Cleanup(std::process::Child, PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let lifecycled = Command::new(bin_dir.join("engine-lifecycled"))
        .arg("--address")
        .arg(&sock)
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--runtime")
        .arg(&runtime)
        .arg("--shim")
        .arg(bin_dir.join("engine-shim"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start engine-lifecycled (build with --release first)");
    let _cleanup = Cleanup(lifecycled, dir.clone());
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let channel = engine_api::unix_channel(&sock);
    let mut containers = ContainersClient::new(channel.clone());
    let mut tasks = TasksClient::new(channel);
    let req = |id: &str| TaskRequest { container_id: id.into(), exec_id: String::new() };

    // memory: ten running containers, one shim each
    let sleeper = bundle(&dir, "sleeper", &["sleep", "100000"], &runtime);
    let mut shims = Vec::new();
    for i in 0..10 {
        let id = format!("m{i}");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(sleeper.join("config.json")).unwrap()).unwrap();
        spec["root"]["path"] = serde_json::json!(sleeper.join("rootfs"));
        let b = dir.join(&id);
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
        containers
            .create(CreateContainerRequest {
                id: id.clone(),
                bundle: b.display().to_string(),
                labels: Default::default(),
            })
            .await
            .unwrap();
        tasks.create(CreateTaskRequest { container_id: id.clone(), ..Default::default() }).await.unwrap();
        tasks.start(req(&id)).await.unwrap();
        let shim: i32 = std::fs::read_to_string(dir.join("state/tasks").join(&id).join("shim.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        shims.push(shim);
    }
    // measured with all ten running: proportional set size shares the binary's pages among them
    let rss: Vec<(u64, u64, u64, u64)> = shims
        .iter()
        .filter_map(|&p| {
            Some((status_kib(p, "VmRSS:")?, status_kib(p, "RssAnon:")?, status_kib(p, "RssFile:")?, pss_kib(p)?))
        })
        .collect();
    for i in 0..10 {
        let id = format!("m{i}");
        let _ =
            tasks.kill(KillRequest { container_id: id.clone(), exec_id: String::new(), signal: 9, all: false }).await;
        let _ = tasks.wait(req(&id)).await;
        let _ = tasks.delete(req(&id)).await;
        let _ = containers.delete(ContainerId { id }).await;
    }
    let kib = |f: fn(&(u64, u64, u64, u64)) -> u64| median(rss.iter().map(|r| f(r) as f64).collect());
    println!("engine-shim memory, one per running container ({} shims running), median", rss.len());
    println!(
        "  resident {:.0} KiB = {:.2} MiB (target <= 3 MiB; containerd-shim-runc-v2 holds about 13 MiB)",
        kib(|r| r.0),
        kib(|r| r.0) / 1024.0
    );
    println!(
        "    anonymous {:.0} KiB, file-backed {:.0} KiB (the binary's pages, shared by every shim)",
        kib(|r| r.1),
        kib(|r| r.2)
    );
    println!("  proportional (PSS) {:.0} KiB: what each further container costs", kib(|r| r.3));

    // latency: busybox true through lifecycled, and runc run of the same bundle
    let t = bundle(&dir, "true", &["true"], &runtime);
    let (mut engine, mut runc) = (Vec::new(), Vec::new());
    let have_runc = Command::new("runc").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    for i in 0..runs {
        let id = format!("t{i}");
        let t0 = Instant::now();
        containers
            .create(CreateContainerRequest {
                id: id.clone(),
                bundle: t.display().to_string(),
                labels: Default::default(),
            })
            .await
            .unwrap();
        tasks.create(CreateTaskRequest { container_id: id.clone(), ..Default::default() }).await.unwrap();
        tasks.start(req(&id)).await.unwrap();
        tasks.wait(req(&id)).await.unwrap();
        tasks.delete(req(&id)).await.unwrap();
        containers.delete(ContainerId { id: id.clone() }).await.unwrap();
        engine.push(t0.elapsed().as_secs_f64() * 1000.0);
        if have_runc {
            let t0 = Instant::now();
            let ok = Command::new("runc")
                .arg("--root")
                .arg(dir.join("runc"))
                .args(["run", "--bundle"])
                .arg(&t)
                .arg(format!("r{i}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                runc.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    println!("busybox true: create+start+wait+delete, {runs} runs each, median");
    let e = median(engine);
    println!("  engine-lifecycled + engine-shim + engine-runtime  {e:8.2} ms");
    if !runc.is_empty() {
        let r = median(runc);
        println!("  runc run                                          {r:8.2} ms");
        println!("  ratio: {:.2}", e / r);
    }
}
