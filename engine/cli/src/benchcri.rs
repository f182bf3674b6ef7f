//! `engine bench --cri ENDPOINT`: pod starts through a CRI runtime service, as the kubelet makes
//! them: RunPodSandbox, CreateContainer, StartContainer of one container (the time of the three
//! is one start), then StopPodSandbox and RemovePodSandbox outside the timing. With
//! `--compare-cri NAME=ENDPOINT` another runtime (containerd's CRI) is measured in the same run,
//! interleaved start by start; medians, p95 and the ratio to the first are printed.
//!
//! The pods use the host's network (no CNI is asked of either runtime); the container is
//! `--image` running `sleep 3600`, which each runtime must already have.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use engine_cri::v1 as cri;
use engine_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::{json, Value};
use tonic::transport::Channel;

/// One runtime measured.
struct Runtime {
    name: String,
    client: RuntimeServiceClient<Channel>,
    starts: Vec<f64>,
}

fn channel(endpoint: &str) -> Result<Channel> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !path.starts_with('/') {
        bail!("a CRI endpoint is a unix socket: unix:///path/to/socket, not {endpoint:?}");
    }
    Ok(engine_api::unix_channel(path))
}

fn pod_config(run: usize, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: format!("bench-{run}"),
            namespace: "engine-bench".into(),
            uid: format!("engine-bench-{name}-{}-{run}", std::process::id()),
            attempt: 0,
        }),
        // no hostname: a pod on the host's network has the host's UTS namespace
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One pod start on `rt`; its seconds. The pod is removed after, untimed.
async fn start_pod(rt: &mut Runtime, run: usize, image: &str) -> Result<f64> {
    let config = pod_config(run, &rt.name);
    let t0 = Instant::now();
    let req = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
    let pod = rt.client.run_pod_sandbox(req).await.context("RunPodSandbox")?.into_inner().pod_sandbox_id;
    let started = async {
        let container = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: "main".into(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
            command: vec!["sleep".into(), "3600".into()],
            linux: Some(cri::LinuxContainerConfig::default()),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container),
            sandbox_config: Some(config),
        };
        let id = rt.client.create_container(req).await.context("CreateContainer")?.into_inner().container_id;
        rt.client.start_container(cri::StartContainerRequest { container_id: id }).await.context("StartContainer")?;
        anyhow::Ok(t0.elapsed().as_secs_f64())
    }
    .await;
    let stop = cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() };
    let stopped = rt.client.stop_pod_sandbox(stop).await;
    let removed = rt.client.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await;
    let secs = started?;
    stopped.context("StopPodSandbox")?;
    removed.context("RemovePodSandbox")?;
    Ok(secs)
}

fn median(v: &[f64]) -> f64 {
    super::bench::percentile(v, 0.5)
}

/// Runs the benchmark: `runs` starts on each runtime, interleaved; prints and returns the report.
pub async fn run(endpoint: &str, compare: &[String], image: &str, runs: usize) -> Result<Value> {
    let mut runtimes = vec![Runtime {
        name: "engine".into(),
        client: RuntimeServiceClient::new(channel(endpoint)?),
        starts: Vec::new(),
    }];
    for c in compare {
        let (name, ep) = c.split_once('=').with_context(|| format!("--compare-cri takes NAME=ENDPOINT, not {c:?}"))?;
        runtimes.push(Runtime {
            name: name.into(),
            client: RuntimeServiceClient::new(channel(ep)?),
            starts: Vec::new(),
        });
    }
    for rt in &mut runtimes {
        let v =
            rt.client.version(cri::VersionRequest::default()).await.with_context(|| format!("{}'s CRI", rt.name))?;
        let v = v.into_inner();
        eprintln!("{}: {} {} (CRI {})", rt.name, v.runtime_name, v.runtime_version, v.runtime_api_version);
        // one start each first, not counted: images and caches warm
        start_pod(rt, runs, image).await.with_context(|| format!("a pod start through {}'s CRI", rt.name))?;
    }
    for run in 0..runs {
        for rt in &mut runtimes {
            let secs =
                start_pod(rt, run, image).await.with_context(|| format!("a pod start through {}'s CRI", rt.name))?;
            rt.starts.push(secs);
        }
    }
    let first = median(&runtimes[0].starts);
    let mut report = HashMap::new();
    println!("engine bench --cri: {runs} × pod start (RunPodSandbox + CreateContainer + StartContainer, host network), interleaved");
    println!("{:<14} {:>12} {:>12} {:>10}", "RUNTIME", "MEDIAN ms", "P95 ms", "RATIO");
    for rt in &runtimes {
        let (m, p95) = (median(&rt.starts), super::bench::percentile(&rt.starts, 0.95));
        println!("{:<14} {:>12.2} {:>12.2} {:>9.2}×", rt.name, m * 1e3, p95 * 1e3, m / first);
        report.insert(rt.name.clone(), json!({ "median_ms": m * 1e3, "p95_ms": p95 * 1e3, "starts_ms": rt.starts.iter().map(|s| s * 1e3).collect::<Vec<_>>() }));
    }
    Ok(json!({ "cri": report, "runs": runs, "image": image }))
}
