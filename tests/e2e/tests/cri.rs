//! The Kubernetes CRI on a private engined's CRI socket, driven as the kubelet drives it (gRPC,
//! `runtime.v1`): a pod sandbox, a container in it, ExecSync, status and listings, the trace
//! the caller's `traceparent` names, then stop and removal leaving nothing behind; the images
//! the Docker API imported are the CRI's too.

use std::collections::HashMap;

use engine_cri::v1 as cri;
use engine_cri::v1::image_service_client::ImageServiceClient;
use engine_cri::v1::runtime_service_client::RuntimeServiceClient;
use engine_test_support::engined::Engined;
use engine_test_support::wait_for;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A request carrying the test's trace context, as the kubelet's does.
fn traced<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01").parse().unwrap());
    r
}

fn pod_config(log_directory: &std::path::Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        log_directory: log_directory.display().to_string(),
        metadata: Some(cri::PodSandboxMetadata {
            name: "web".into(),
            namespace: "default".into(),
            uid: "uid-web-1".into(),
            attempt: 0,
        }),
        hostname: "web-pod".into(),
        labels: HashMap::from([("app".to_string(), "web".to_string())]),
        annotations: HashMap::from([("note".to_string(), "kept".to_string())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            // an IPC sysctl: each container of the pod takes it
            sysctls: HashMap::from([("kernel.shm_rmid_forced".to_string(), "1".to_string())]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// CreateContainer and StartContainer of `config` in `pod` (made with [`pod_config`]): its id.
fn create_started(
    rt: &tokio::runtime::Runtime,
    runtime: &mut RuntimeServiceClient<tonic::transport::Channel>,
    pod: &str,
    config: cri::ContainerConfig,
    logs: &std::path::Path,
) -> Result<String, tonic::Status> {
    let req = cri::CreateContainerRequest {
        pod_sandbox_id: pod.to_string(),
        config: Some(config),
        sandbox_config: Some(pod_config(logs)),
    };
    let id = rt.block_on(runtime.create_container(req))?.into_inner().container_id;
    rt.block_on(runtime.start_container(cri::StartContainerRequest { container_id: id.clone() }))?;
    Ok(id)
}

/// PodSandboxStatus of `pod`.
fn sandbox_status(
    rt: &tokio::runtime::Runtime,
    runtime: &mut RuntimeServiceClient<tonic::transport::Channel>,
    pod: &str,
) -> cri::PodSandboxStatus {
    let req = cri::PodSandboxStatusRequest { pod_sandbox_id: pod.to_string(), verbose: false };
    rt.block_on(runtime.pod_sandbox_status(req)).unwrap().into_inner().status.unwrap()
}

/// A busybox container `name` that sleeps an hour.
fn sleeper(name: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: "busybox".into(), ..Default::default() }),
        command: vec!["sleep".into(), "3600".into()],
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// A private engined with busybox, and a pause image (busybox sleeping) for its sandboxes.
fn engined_with_pause() -> Engined {
    let e = Engined::start_with(&[], &["--cri-sandbox-image", "pause:test", "--dns", "127.0.0.1"]);
    e.import_busybox("busybox");
    let tar = e.busybox_tar();
    e.ok(&["import", "--change", r#"CMD ["sleep", "2147483647"]"#, tar.to_str().unwrap(), "pause:test"]);
    e
}

#[test]
fn a_pod_runs_through_the_cri_in_one_trace_and_leaves_nothing() {
    let e = engined_with_pause();
    let logs = e.dir.path().join("pod-logs");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // the channel's connection task needs the runtime about it
    let _in_runtime = rt.enter();
    let channel = engine_api::unix_channel(e.exec_root().join("cri.sock"));
    let mut runtime = RuntimeServiceClient::new(channel.clone());
    let mut images = ImageServiceClient::new(channel);

    let v = rt.block_on(runtime.version(cri::VersionRequest::default())).unwrap().into_inner();
    assert_eq!((v.runtime_name.as_str(), v.runtime_api_version.as_str()), ("engine", "v1"));
    let status = rt.block_on(runtime.status(cri::StatusRequest::default())).unwrap().into_inner();
    let ready = status.status.unwrap().conditions.iter().any(|c| c.r#type == "RuntimeReady" && c.status);
    assert!(ready);

    // the Docker API's images are the CRI's
    let spec = |image: &str| Some(cri::ImageSpec { image: image.into(), ..Default::default() });
    let listed = rt.block_on(images.list_images(cri::ListImagesRequest::default())).unwrap().into_inner().images;
    assert!(listed.iter().any(|i| i.repo_tags.iter().any(|t| t.ends_with("busybox:latest"))), "{listed:?}");
    let one = rt.block_on(images.image_status(cri::ImageStatusRequest { image: spec("busybox"), verbose: false }));
    assert!(one.unwrap().into_inner().image.is_some_and(|i| i.size > 0));
    let none =
        rt.block_on(images.image_status(cri::ImageStatusRequest { image: spec("nothing:here"), verbose: false }));
    assert!(none.unwrap().into_inner().image.is_none());
    // RemoveImage by id (as the kubelet's image collection sends it) takes every name of it
    let tar = e.busybox_tar();
    e.ok(&["import", "--change", "LABEL twice=1", tar.to_str().unwrap(), "twice:one"]);
    e.ok(&["tag", "twice:one", "twice:two"]);
    let id = rt
        .block_on(images.image_status(cri::ImageStatusRequest { image: spec("twice:one"), verbose: false }))
        .unwrap()
        .into_inner()
        .image
        .unwrap()
        .id;
    rt.block_on(images.remove_image(cri::RemoveImageRequest { image: spec(&id) })).unwrap();
    for name in ["twice:one", "twice:two"] {
        let gone = rt.block_on(images.image_status(cri::ImageStatusRequest { image: spec(name), verbose: false }));
        assert!(gone.unwrap().into_inner().image.is_none(), "{name} is left");
    }
    rt.block_on(images.remove_image(cri::RemoveImageRequest { image: spec(&id) })).expect("idempotent");

    // the pod
    let pod = rt
        .block_on(runtime.run_pod_sandbox(traced(cri::RunPodSandboxRequest {
            config: Some(pod_config(&logs)),
            runtime_handler: String::new(),
        })))
        .unwrap_or_else(|s| panic!("{s}\n{}", e.log_tail()))
        .into_inner()
        .pod_sandbox_id;
    let sandbox = sandbox_status(&rt, &mut runtime, &pod);
    assert_eq!(sandbox.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(sandbox.metadata.as_ref().unwrap().name, "web");
    assert_eq!(sandbox.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(sandbox.annotations.get("note").map(String::as_str), Some("kept"));
    let pod_ip = sandbox.network.unwrap().ip;
    assert!(pod_ip.parse::<std::net::Ipv4Addr>().is_ok(), "pod IP {pod_ip:?}");

    // a container in it
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "app".into(), attempt: 0 }),
        image: spec("busybox"),
        // says what is left in /tmp/say, so the test can make it write when it wants
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo started; while :; do [ -f /tmp/say ] && cat /tmp/say && rm /tmp/say; sleep 0.1; done".into(),
        ],
        envs: vec![cri::KeyValue { key: "GREETING".into(), value: b"hello".to_vec() }],
        labels: HashMap::from([("tier".to_string(), "front".to_string())]),
        log_path: "app/0.log".into(),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                supplemental_groups: vec![4321],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let ctr = rt
        .block_on(runtime.create_container(traced(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: Some(pod_config(&logs)),
        })))
        .unwrap_or_else(|s| panic!("{s}\n{}", e.log_tail()))
        .into_inner()
        .container_id;
    rt.block_on(runtime.start_container(traced(cri::StartContainerRequest { container_id: ctr.clone() })))
        .unwrap_or_else(|s| panic!("{s}\n{}", e.log_tail()));
    let status = |runtime: &mut RuntimeServiceClient<_>| {
        rt.block_on(runtime.container_status(cri::ContainerStatusRequest { container_id: ctr.clone(), verbose: false }))
            .unwrap()
            .into_inner()
            .status
            .unwrap()
    };
    let s = status(&mut runtime);
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(s.metadata.unwrap().name, "app");
    assert_eq!(s.labels.get("tier").map(String::as_str), Some("front"));
    assert!(s.started_at > 0);
    // its output in the CRI's log format, where the kubelet reads it
    let log_path = logs.join("app/0.log");
    assert_eq!(s.log_path, log_path.display().to_string());
    wait_for("the CRI log", || std::fs::read_to_string(&log_path).is_ok_and(|t| t.ends_with(" stdout F started\n")));
    let line = std::fs::read_to_string(&log_path).unwrap();
    let time = line.split(' ').next().unwrap();
    assert!(engine_test_support::unix_secs() as i64 - rfc3339_secs(time) < 600, "{line}");
    // the kubelet rotates it: renamed, then reopened; what comes next goes to the new file
    std::fs::rename(&log_path, logs.join("app/0.log.1")).unwrap();
    rt.block_on(runtime.reopen_container_log(cri::ReopenContainerLogRequest { container_id: ctr.clone() })).unwrap();
    let say = cri::ExecSyncRequest {
        container_id: ctr.clone(),
        cmd: vec!["sh".into(), "-c".into(), "echo again > /tmp/say".into()],
        timeout: 10,
    };
    rt.block_on(runtime.exec_sync(say)).unwrap();
    wait_for("the reopened CRI log", || {
        std::fs::read_to_string(&log_path).is_ok_and(|t| t.ends_with(" stdout F again\n"))
    });
    assert_eq!(std::fs::read_to_string(&log_path).unwrap().lines().count(), 1);
    assert!(std::fs::read_to_string(logs.join("app/0.log.1")).unwrap().ends_with(" stdout F started\n"));
    let in_pod = rt
        .block_on(runtime.list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter { pod_sandbox_id: pod.clone(), ..Default::default() }),
        }))
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(in_pod.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [ctr.as_str()]);

    // ExecSync: its environment, and the pod's network namespace (the pod's address on eth0)
    let out = rt
        .block_on(runtime.exec_sync(cri::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo $GREETING; ip -4 -o addr show eth0; echo oops >&2; exit 3".into(),
            ],
            timeout: 10,
        }))
        .unwrap()
        .into_inner();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.exit_code, 3);
    assert!(stdout.starts_with("hello\n") && stdout.contains(&format!("inet {pod_ip}/")), "{stdout}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    // the pod's host name, its sysctls, the supplemental groups asked for
    let run = |cmd: &str, timeout: i64| {
        rt.block_on(runtime.clone().exec_sync(cri::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec!["sh".into(), "-c".into(), cmd.into()],
            timeout,
        }))
    };
    let out = run("hostname; cat /proc/sys/kernel/shm_rmid_forced; id -G", 10).unwrap().into_inner();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines[..2], ["web-pod", "1"], "{lines:?}");
    assert!(lines[2].split(' ').any(|g| g == "4321"), "{lines:?}");
    // a command that overruns its timeout
    assert_eq!(run("sleep 30", 1).unwrap_err().code(), tonic::Code::DeadlineExceeded);

    // its stats, from its cgroup
    let stats = rt
        .block_on(runtime.list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter { pod_sandbox_id: pod.clone(), ..Default::default() }),
        }))
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].attributes.as_ref().unwrap().id, ctr);
    assert!(stats[0].memory.as_ref().unwrap().working_set_bytes.as_ref().is_some_and(|m| m.value > 0), "{stats:?}");
    assert!(stats[0].cpu.as_ref().unwrap().usage_core_nano_seconds.as_ref().is_some_and(|c| c.value > 0), "{stats:?}");

    // the Docker API's listings leave the CRI's objects out, but for a label filter
    assert_eq!(e.ok(&["ps", "-aq"]).trim(), "");
    assert_eq!(e.ok(&["ps", "-aq", "--filter", "label=io.engine.cri"]).lines().count(), 2);

    // one trace, from the caller's span through each call down to init.exec
    let (code, body) = e.request("GET", &format!("/engine/v1/traces/{TRACE_ID}"), "");
    assert_eq!(code, 200, "{body}");
    for name in [
        "runtime.v1.RuntimeService/RunPodSandbox",
        "runtime.v1.RuntimeService/CreateContainer",
        "runtime.v1.RuntimeService/StartContainer",
        "daemon.create",
        "daemon.start",
        "runtime.create",
        "init.exec",
    ] {
        assert!(body.contains(&format!("\"{name}\"")), "{name} is not in the trace");
    }
    assert!(body.contains("\"k8s.pod.name\"") && body.contains("\"rpc.system\""), "no CRI attributes");
    // found by the pod's name, as `engine trace web` finds it
    let (code, pod_traces) = e.request("GET", "/engine/v1/containers/web/traces", "");
    assert_eq!(code, 200, "{pod_traces}");
    assert!(pod_traces.contains(TRACE_ID), "{pod_traces}");
    let drawn = e.ok(&["trace", "web", "--op", "start", "--no-kernel"]);
    assert!(drawn.contains("runtime.v1.RuntimeService/") && drawn.contains("init.exec"), "{drawn}");

    // a group without a user
    let as_group = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "g".into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: "busybox".into(), ..Default::default() }),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                run_as_group: Some(cri::Int64Value { value: 10 }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = rt
        .block_on(runtime.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(as_group),
            sandbox_config: Some(pod_config(&logs)),
        }))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    // a seccomp profile on the node (Localhost): sethostname refused, CAP_SYS_ADMIN or not
    let profile = e.dir.path().join("no-hostname.json");
    let deny =
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}]}"#;
    std::fs::write(&profile, deny).unwrap();
    let guarded = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "guarded".into(), attempt: 0 }),
        image: spec("busybox"),
        command: vec!["sleep".into(), "1000".into()],
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: vec!["SYS_ADMIN".into()],
                    ..Default::default()
                }),
                masked_paths: vec!["/etc/hostname".into()],
                readonly_paths: vec!["/home".into()],
                seccomp: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::Localhost as i32,
                    localhost_ref: profile.display().to_string(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        devices: vec![cri::Device {
            container_path: "/dev/xfuse".into(),
            host_path: "/dev/fuse".into(),
            permissions: "r".into(),
        }],
        ..Default::default()
    };
    let guarded = rt
        .block_on(runtime.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(guarded),
            sandbox_config: Some(pod_config(&logs)),
        }))
        .unwrap()
        .into_inner()
        .container_id;
    rt.block_on(runtime.start_container(cri::StartContainerRequest { container_id: guarded.clone() })).unwrap();
    let out = rt
        .block_on(runtime.exec_sync(cri::ExecSyncRequest {
            container_id: guarded.clone(),
            cmd: vec!["hostname".into(), "renamed".into()],
            timeout: 10,
        }))
        .unwrap()
        .into_inner();
    assert_ne!(out.exit_code, 0, "sethostname went through the profile");
    // its own masked and read-only paths
    let out = rt
        .block_on(runtime.exec_sync(cri::ExecSyncRequest {
            container_id: guarded.clone(),
            cmd: vec!["sh".into(), "-c".into(), "wc -c < /etc/hostname; touch /home/x || echo read-only".into()],
            timeout: 10,
        }))
        .unwrap()
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>(), ["0", "read-only"]);
    // its device, with the access asked for: read, not write
    let out = rt
        .block_on(runtime.exec_sync(cri::ExecSyncRequest {
            container_id: guarded.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "exec 3</dev/xfuse && echo read; (exec 4>/dev/xfuse) || echo no-write".into(),
            ],
            timeout: 10,
        }))
        .unwrap()
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>(), ["read", "no-write"]);
    // the pod's containers share the sandbox's IPC and PID namespaces: its init is their PID 1
    let both = |cmd: &str| -> Vec<String> {
        [&ctr, &guarded]
            .iter()
            .map(|c| {
                let out = rt.block_on(runtime.clone().exec_sync(cri::ExecSyncRequest {
                    container_id: c.to_string(),
                    cmd: vec!["sh".into(), "-c".into(), cmd.into()],
                    timeout: 10,
                }));
                String::from_utf8_lossy(&out.unwrap().into_inner().stdout).into_owned()
            })
            .collect()
    };
    let ipc = both("readlink /proc/self/ns/ipc");
    assert_eq!(ipc[0], ipc[1]);
    let init = both("tr '\\0' ' ' < /proc/1/cmdline");
    assert!(init.iter().all(|i| i.contains("2147483647")), "{init:?}");

    // stopping what is gone is no error
    rt.block_on(runtime.stop_container(cri::StopContainerRequest { container_id: "gone".into(), timeout: 0 })).unwrap();

    // stop and removal, twice each (the kubelet repeats them): nothing is left
    for _ in 0..2 {
        rt.block_on(runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() })).unwrap();
    }
    assert_eq!(status(&mut runtime).state, cri::ContainerState::ContainerExited as i32);
    for _ in 0..2 {
        rt.block_on(runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() })).unwrap();
    }
    let pods = rt.block_on(runtime.list_pod_sandbox(cri::ListPodSandboxRequest::default())).unwrap().into_inner();
    assert!(pods.items.is_empty());
    let gone = rt.block_on(runtime.container_status(cri::ContainerStatusRequest { container_id: ctr, verbose: false }));
    assert_eq!(gone.unwrap_err().code(), tonic::Code::NotFound);
    assert_eq!(e.ok(&["ps", "-aq", "--filter", "label=io.engine.cri"]).trim(), "");
    e.assert_clean();
    assert_eq!(e.netns_files(), 0);
    assert!(e.shims().is_empty());
    assert!(e.bridge_ports().is_empty(), "{:?}", e.bridge_ports());

    // each call is counted by method and code
    let (_, metrics) = e.request("GET", "/metrics", "");
    for method in ["RunPodSandbox", "StartContainer", "ExecSync", "ListContainerStats"] {
        let series = format!(
            "engine_cri_request_duration_seconds_count{{service=\"runtime.v1.RuntimeService\",method=\"{method}\",code=\"Ok\"}}"
        );
        assert!(metrics.contains(&series), "{method} is not counted");
    }

    // what is not served says so
    let req = cri::CheckpointContainerRequest { container_id: "x".into(), ..Default::default() };
    assert_eq!(rt.block_on(runtime.checkpoint_container(req)).unwrap_err().code(), tonic::Code::Unimplemented);
}

/// Seconds since the epoch of an RFC 3339 UTC time (`2026-12-07T03:33:23.123456789Z`).
fn rfc3339_secs(t: &str) -> i64 {
    let out = std::process::Command::new("date").args(["-u", "-d", t, "+%s"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("not a time: {t}"))
}

/// Bad input gets a clear error and changes nothing.
#[test]
fn bad_cri_requests_are_refused_and_change_nothing() {
    let e = Engined::start_with(&[], &["--cri-sandbox-image", "missing:image"]);
    let logs = e.dir.path().join("pod-logs");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // the channel's connection task needs the runtime about it
    let _in_runtime = rt.enter();
    let mut runtime = RuntimeServiceClient::new(engine_api::unix_channel(e.exec_root().join("cri.sock")));
    let no_meta = cri::PodSandboxConfig::default();
    let err = rt
        .block_on(
            runtime
                .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(no_meta), runtime_handler: String::new() }),
        )
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    // the sandbox image is not here: refused, nothing made
    let err = rt
        .block_on(runtime.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config(&logs)),
            runtime_handler: String::new(),
        }))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    assert!(err.message().contains("missing:image"), "{err}");
    let err = rt
        .block_on(runtime.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: "nope".into(),
            config: None,
            sandbox_config: None,
        }))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    assert_eq!(e.ok(&["ps", "-aq", "--filter", "label=io.engine.cri"]).trim(), "");
    e.assert_clean();
    // the node's configuration as the kubelet sends it: the pod CIDR (a bad one refused and
    // not kept), reported by a verbose Status; the cgroup driver the kubelet should use
    let set_cidr = |runtime: &mut RuntimeServiceClient<_>, cidr: &str| {
        let req = cri::UpdateRuntimeConfigRequest {
            runtime_config: Some(cri::RuntimeConfig {
                network_config: Some(cri::NetworkConfig { pod_cidr: cidr.into() }),
            }),
        };
        rt.block_on(runtime.update_runtime_config(req))
    };
    set_cidr(&mut runtime, "10.244.1.0/24,fd00:10:244:1::/64").unwrap();
    let err = set_cidr(&mut runtime, "10.244.1.0").unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let status = rt.block_on(runtime.status(cri::StatusRequest { verbose: true })).unwrap().into_inner();
    let config: serde_json::Value = serde_json::from_str(&status.info["config"]).unwrap();
    assert_eq!(config["podCIDR"], "10.244.1.0/24,fd00:10:244:1::/64", "{config}");
    let linux = rt.block_on(runtime.runtime_config(cri::RuntimeConfigRequest {})).unwrap().into_inner().linux;
    assert_eq!(linux.unwrap().cgroup_driver, cri::CgroupDriver::Cgroupfs as i32);
}

/// Exec, attach and port-forward as kubectl reaches them through the kubelet: the CRI call
/// answers a one-time URL, and the client upgrades it to SPDY/3.1 and speaks Kubernetes'
/// remotecommand (v4) or port-forward protocol on it. Then the pod's stats and its
/// container's resources.
#[test]
fn exec_attach_and_port_forward_stream_through_the_cri() {
    use engine_streaming::client::Client;

    let e = engined_with_pause();
    let logs = e.dir.path().join("pod-logs");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let mut runtime = RuntimeServiceClient::new(engine_api::unix_channel(e.exec_root().join("cri.sock")));
    let pod = rt
        .block_on(runtime.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config(&logs)),
            runtime_handler: String::new(),
        }))
        .unwrap_or_else(|s| panic!("{s}\n{}", e.log_tail()))
        .into_inner()
        .pod_sandbox_id;
    let container = |runtime: &mut RuntimeServiceClient<_>, name: &str, command: &[&str], stdin: bool| -> String {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: "busybox".into(), ..Default::default() }),
            command: command.iter().map(|s| s.to_string()).collect(),
            stdin,
            stdin_once: stdin,
            log_path: format!("{name}/0.log"),
            linux: Some(cri::LinuxContainerConfig {
                // as the kubelet gives a burstable pod's containers
                resources: Some(cri::LinuxContainerResources { oom_score_adj: 500, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        };
        create_started(&rt, runtime, &pod, config, &logs).unwrap()
    };
    // the kubelet's evented PLEG follows the containers' lifecycle
    let mut events = rt.block_on(runtime.get_container_events(cri::GetEventsRequest {})).unwrap().into_inner();
    // a web server on the pod's loopback only, and a shell reading its stdin
    let web_cmd = "mkdir -p /www && echo pong > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www";
    let web = container(&mut runtime, "web", &["sh", "-c", web_cmd], false);
    let mut seen = Vec::new();
    let started = cri::ContainerEventType::ContainerStartedEvent as i32;
    while !seen.iter().any(|(id, t)| *id == web && *t == started) {
        let next = tokio::time::timeout(std::time::Duration::from_secs(30), events.message());
        let ev = rt.block_on(next).expect("no event in time").unwrap().expect("the event stream ended");
        if ev.container_id == web {
            assert_eq!(ev.pod_sandbox_status.as_ref().unwrap().id, pod);
            assert!(ev.containers_statuses.iter().any(|c| c.id == web));
        }
        seen.push((ev.container_id, ev.container_event_type));
    }
    let created = cri::ContainerEventType::ContainerCreatedEvent as i32;
    assert!(seen.contains(&(web.clone(), created)), "{seen:?}");
    let shell = container(&mut runtime, "shell", &["sh"], true);
    // whatever the test waits on, it waits within a deadline
    let within = |f: std::pin::Pin<Box<dyn std::future::Future<Output = _>>>| {
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(60), f).await.expect("no end in time")
        })
    };
    let exec_url = |runtime: &mut RuntimeServiceClient<_>, cmd: &[&str], stdin: bool, tty: bool| -> String {
        let req = cri::ExecRequest {
            container_id: web.clone(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        };
        rt.block_on(runtime.exec(req)).unwrap().into_inner().url
    };
    let status = |bytes: &[u8]| -> serde_json::Value { serde_json::from_slice(bytes).unwrap() };

    // exec: stdin in, stdout and stderr apart, the exit code on the error stream
    let url = exec_url(&mut runtime, &["sh", "-c", "cat; echo oops >&2; exit 3"], true, false);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let got = within(Box::pin(async {
        let mut c = Client::connect(&url, &["v4.channel.k8s.io", "v3.channel.k8s.io"]).await.unwrap();
        assert_eq!(c.protocol, "v4.channel.k8s.io");
        let ids: Vec<u32> = open_streams(&mut c, &["error", "stdin", "stdout", "stderr"]).await;
        c.send(ids[1], b"typed in\n", true).await.unwrap();
        (ids, c.read_to_end().await.unwrap())
    }));
    let (ids, got) = got;
    assert_eq!(got[&ids[2]].0, b"typed in\n");
    assert_eq!(got[&ids[3]].0, b"oops\n");
    let end = status(&got[&ids[0]].0);
    assert_eq!(end["reason"], "NonZeroExitCode", "{end}");
    assert_eq!(end["details"]["causes"][0]["message"], "3", "{end}");

    // with a terminal: the client's size reaches it
    let script = r#"while [ "$(stty size)" != "40 100" ]; do sleep 0.05; done; echo resized; tty"#;
    let url = exec_url(&mut runtime, &["sh", "-c", script], true, true);
    let (ids, got) = within(Box::pin(async {
        let mut c = Client::connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
        let ids = open_streams(&mut c, &["error", "stdin", "stdout", "resize"]).await;
        c.send(ids[3], br#"{"Width":100,"Height":40}"#, false).await.unwrap();
        (ids, c.read_to_end().await.unwrap())
    }));
    let out = String::from_utf8_lossy(&got[&ids[2]].0).into_owned();
    assert!(out.contains("resized") && out.contains("/dev/pts/"), "{out:?}");
    assert_eq!(status(&got[&ids[0]].0)["status"], "Success");

    // a command that is not there: the reason, not an exit code
    let url = exec_url(&mut runtime, &["no-such-command"], false, false);
    let (ids, got) = within(Box::pin(async {
        let mut c = Client::connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
        let ids = open_streams(&mut c, &["error", "stdout", "stderr"]).await;
        (ids, c.read_to_end().await.unwrap())
    }));
    let end = status(&got[&ids[0]].0);
    assert_eq!(end["status"], "Failure", "{end}");
    assert!(end["message"].as_str().unwrap().contains("no-such-command"), "{end}");

    // attach: output without a newline arrives (a prompt would), the end of input ends a
    // container that takes its stdin once
    let req = cri::AttachRequest { container_id: shell.clone(), stdin: true, tty: false, stdout: true, stderr: true };
    let url = rt.block_on(runtime.attach(req)).unwrap().into_inner().url;
    let (ids, got) = within(Box::pin(async {
        let mut c = Client::connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
        let ids = open_streams(&mut c, &["error", "stdin", "stdout", "stderr"]).await;
        c.send(ids[1], b"printf prompt\n", false).await.unwrap();
        let mut got = Default::default();
        let prompt = |g: &engine_streaming::client::Received| g.get(&ids[2]).is_some_and(|o| o.0 == b"prompt");
        assert!(c.read_until(&mut got, prompt).await.unwrap(), "{got:?}");
        c.send(ids[1], b"echo bye; echo err >&2\n", true).await.unwrap();
        let rest = c.read_to_end().await.unwrap();
        for (id, (data, fin)) in rest {
            let e: &mut (Vec<u8>, bool) = got.entry(id).or_default();
            e.0.extend_from_slice(&data);
            e.1 |= fin;
        }
        (ids, got)
    }));
    assert_eq!(got[&ids[2]].0, b"promptbye\n");
    assert_eq!(got[&ids[3]].0, b"err\n");
    assert_eq!(status(&got[&ids[0]].0)["status"], "Success");
    let exited = || {
        let s = rt.block_on(
            runtime
                .clone()
                .container_status(cri::ContainerStatusRequest { container_id: shell.clone(), verbose: false }),
        );
        s.unwrap().into_inner().status.unwrap().state == cri::ContainerState::ContainerExited as i32
    };
    wait_for("the shell to end with its input", exited);
    // it is not running any more: no URL
    let req = cri::AttachRequest { container_id: shell.clone(), stdin: false, tty: false, stdout: true, stderr: false };
    assert_eq!(rt.block_on(runtime.attach(req)).unwrap_err().code(), tonic::Code::FailedPrecondition);

    // port-forward: a connection to the pod's loopback, and a port nobody listens on
    let wait_served = || {
        let out = rt.block_on(runtime.clone().exec_sync(cri::ExecSyncRequest {
            container_id: web.clone(),
            cmd: vec!["sh".into(), "-c".into(), "netstat -ltn | grep -q 127.0.0.1:8080".into()],
            timeout: 10,
        }));
        out.is_ok_and(|o| o.into_inner().exit_code == 0)
    };
    wait_for("the web server to listen", wait_served);
    let req = cri::PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![8080] };
    let url = rt.block_on(runtime.port_forward(req)).unwrap().into_inner().url;
    let (ids, got) = within(Box::pin(async {
        let mut c = Client::connect(&url, &["portforward.k8s.io"]).await.unwrap();
        let mut ids = Vec::new();
        for (kind, port, request) in
            [("error", "8080", "0"), ("data", "8080", "0"), ("error", "1", "1"), ("data", "1", "1")]
        {
            ids.push(c.open(&[("streamtype", kind), ("port", port), ("requestid", request)]).await.unwrap());
        }
        c.send(ids[1], b"GET / HTTP/1.0\r\n\r\n", true).await.unwrap();
        let mut got = Default::default();
        let ended = |g: &engine_streaming::client::Received| ids.iter().all(|i| g.get(i).is_some_and(|e| e.1));
        assert!(c.read_until(&mut got, ended).await.unwrap(), "{got:?}");
        (ids, got)
    }));
    let page = String::from_utf8_lossy(&got[&ids[1]].0).into_owned();
    assert!(page.starts_with("HTTP/1.") && page.ends_with("pong\n"), "{page:?}");
    assert!(got[&ids[0]].0.is_empty());
    let refused = String::from_utf8_lossy(&got[&ids[2]].0).into_owned();
    assert!(refused.contains("error forwarding port 1"), "{refused:?}");

    // the pod's stats: its running container, the processes of all, its interface
    let stats = rt
        .block_on(runtime.pod_sandbox_stats(cri::PodSandboxStatsRequest { pod_sandbox_id: pod.clone() }))
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(stats.attributes.unwrap().metadata.unwrap().name, "web");
    let linux = stats.linux.unwrap();
    let ids: Vec<String> = linux.containers.iter().map(|c| c.attributes.clone().unwrap().id).collect();
    assert_eq!(ids, std::slice::from_ref(&web), "the shell has exited");
    assert!(linux.process.unwrap().process_count.unwrap().value >= 2, "pause and httpd");
    assert!(linux.memory.unwrap().working_set_bytes.unwrap().value > 0);
    assert_eq!(linux.network.unwrap().default_interface.unwrap().name, "eth0");
    let list = |filter: cri::PodSandboxStatsFilter| {
        let req = cri::ListPodSandboxStatsRequest { filter: Some(filter) };
        rt.block_on(runtime.clone().list_pod_sandbox_stats(req)).unwrap().into_inner().stats.len()
    };
    assert_eq!(list(cri::PodSandboxStatsFilter { id: pod.clone(), ..Default::default() }), 1);
    let other = HashMap::from([("app".to_string(), "db".to_string())]);
    assert_eq!(list(cri::PodSandboxStatsFilter { label_selector: other, ..Default::default() }), 0);

    // resources: the OOM score given at creation, then new limits on the running container
    let own = rt
        .block_on(runtime.exec_sync(cri::ExecSyncRequest {
            container_id: web.clone(),
            cmd: vec!["sh".into(), "-c".into(), "cat /proc/$(pidof httpd)/oom_score_adj".into()],
            timeout: 10,
        }))
        .unwrap()
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&own.stdout).trim(), "500");
    let limits = cri::LinuxContainerResources { memory_limit_in_bytes: 96 << 20, ..Default::default() };
    let req =
        cri::UpdateContainerResourcesRequest { container_id: web.clone(), linux: Some(limits), ..Default::default() };
    rt.block_on(runtime.update_container_resources(req)).unwrap();
    let mem = e.cgroup_file(&web, "memory.max").or_else(|| e.cgroup_file(&web, "memory.limit_in_bytes"));
    assert_eq!(mem.unwrap(), (96u64 << 20).to_string());
    // no swap beyond it, as containerd's CRI (not Docker's twice the memory), where swap is accounted
    if let Some(memsw) = e.cgroup_file(&web, "memory.memsw.limit_in_bytes") {
        assert_eq!(memsw, (96u64 << 20).to_string());
    }
    let cpuset = cri::LinuxContainerResources { cpuset_cpus: "0".into(), ..Default::default() };
    let req =
        cri::UpdateContainerResourcesRequest { container_id: web.clone(), linux: Some(cpuset), ..Default::default() };
    rt.block_on(runtime.update_container_resources(req)).unwrap();
    assert_eq!(e.cgroup_file(&web, "cpuset.cpus").unwrap(), "0");
    let cpuset = cri::LinuxContainerResources { cpuset_cpus: "64".into(), ..Default::default() };
    let req =
        cri::UpdateContainerResourcesRequest { container_id: web.clone(), linux: Some(cpuset), ..Default::default() };
    assert_eq!(rt.block_on(runtime.update_container_resources(req)).unwrap_err().code(), tonic::Code::InvalidArgument);

    // bad requests: refused, as the kubelet's streaming server refuses them
    let req = cri::ExecRequest { container_id: web.clone(), cmd: vec!["true".into()], ..Default::default() };
    assert_eq!(rt.block_on(runtime.exec(req)).unwrap_err().code(), tonic::Code::InvalidArgument);
    let req =
        cri::ExecRequest { container_id: "nope".into(), cmd: vec!["true".into()], stdout: true, ..Default::default() };
    assert_eq!(rt.block_on(runtime.exec(req)).unwrap_err().code(), tonic::Code::NotFound);

    // the execs left nothing in the container, and the pod goes as usual
    let left = rt
        .block_on(runtime.exec_sync(cri::ExecSyncRequest {
            container_id: web.clone(),
            cmd: vec!["sh".into(), "-c".into(), "ps -o comm | grep -c -e cat -e stty || true".into()],
            timeout: 10,
        }))
        .unwrap()
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "0");
    rt.block_on(runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() })).unwrap();
    rt.block_on(runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod })).unwrap();
    e.assert_clean();
    assert!(e.shims().is_empty());
}

/// Opens one stream of each kind, in order; their ids.
async fn open_streams(c: &mut engine_streaming::client::Client<tokio::net::TcpStream>, kinds: &[&str]) -> Vec<u32> {
    let mut ids = Vec::new();
    for k in kinds {
        ids.push(c.open(&[("streamtype", k)]).await.unwrap());
    }
    ids
}

/// Crashes are normal input: engined killed -9 while four pods start through the CRI, then
/// started again. Every pod the CRI then lists is whole or at least stoppable and removable,
/// every container it lists has a state and, when running, its process; once all are removed
/// nothing is left: no record, process, shim, mount, cgroup, network namespace or veth.
#[test]
fn engined_killed_while_pods_start_leaves_them_whole_or_removable() {
    let mut e = engined_with_pause();
    let logs = e.dir.path().join("pod-logs");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let channel = engine_api::unix_channel(e.exec_root().join("cri.sock"));
    let starts: Vec<_> = (0..4)
        .map(|i| {
            let mut runtime = RuntimeServiceClient::new(channel.clone());
            let mut config = pod_config(&logs);
            config.metadata.as_mut().unwrap().name = format!("crash-{i}");
            config.metadata.as_mut().unwrap().uid = format!("uid-crash-{i}");
            rt.spawn(async move {
                let req = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
                let pod = runtime.run_pod_sandbox(req).await?.into_inner().pod_sandbox_id;
                let container = sleeper("app");
                let req = cri::CreateContainerRequest {
                    pod_sandbox_id: pod,
                    config: Some(container),
                    sandbox_config: Some(config),
                };
                let id = runtime.create_container(req).await?.into_inner().container_id;
                runtime.start_container(cri::StartContainerRequest { container_id: id }).await?;
                Ok::<_, tonic::Status>(())
            })
        })
        .collect();
    // the kill once the first sandbox exists: the others between their sandbox and their container
    let any_sandbox = || e.ok(&["ps", "-aq", "--filter", "label=io.engine.cri=sandbox"]).trim().lines().count() > 0;
    wait_for("a first sandbox", any_sandbox);
    e.kill9();
    for s in starts {
        // each ends: done before the kill, or failed with the connection
        let _ = rt
            .block_on(async { tokio::time::timeout(std::time::Duration::from_secs(60), s).await })
            .expect("a start hung");
    }
    e.restart();

    let mut runtime = RuntimeServiceClient::new(channel);
    let pods = rt.block_on(runtime.list_pod_sandbox(cri::ListPodSandboxRequest::default())).unwrap().into_inner().items;
    assert!(!pods.is_empty(), "the sandbox seen before the kill is gone\n{}", e.log_tail());
    let containers = rt.block_on(runtime.list_containers(cri::ListContainersRequest::default())).unwrap().into_inner();
    for c in &containers.containers {
        assert!(pods.iter().any(|p| p.id == c.pod_sandbox_id), "{} belongs to no listed pod", c.id);
        if c.state == cri::ContainerState::ContainerRunning as i32 {
            let pid = e.inspect(&c.id, "{{.State.Pid}}");
            assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "{} runs as {pid}, which is gone", c.id);
        }
    }
    for p in &pods {
        let req = cri::StopPodSandboxRequest { pod_sandbox_id: p.id.clone() };
        rt.block_on(runtime.stop_pod_sandbox(req)).unwrap_or_else(|s| panic!("stop {}: {s}\n{}", p.id, e.log_tail()));
        let req = cri::RemovePodSandboxRequest { pod_sandbox_id: p.id.clone() };
        rt.block_on(runtime.remove_pod_sandbox(req))
            .unwrap_or_else(|s| panic!("remove {}: {s}\n{}", p.id, e.log_tail()));
    }
    let left = rt.block_on(runtime.list_containers(cri::ListContainersRequest::default())).unwrap().into_inner();
    assert!(left.containers.is_empty(), "{:?}", left.containers);
    assert_eq!(e.ok(&["ps", "-aq", "--filter", "label=io.engine.cri"]).trim(), "");
    wait_for("the shims to exit", || e.shims().is_empty());
    e.assert_clean();
    assert_eq!(e.netns_files(), 0);
    wait_for("the veths to go", || e.bridge_ports().is_empty());
}

/// Mount propagation as the kubelet asks for it: a host-to-container mount sees what the host
/// mounts under it later, a bidirectional one (privileged) shows the host what the container
/// mounts, a private one neither; a propagating mount of a source that is not on a shared
/// mount is refused with the reason.
#[test]
fn mounts_propagate_as_asked() {
    let e = engined_with_pause();
    let logs = e.dir.path().join("pod-logs");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let mut runtime = RuntimeServiceClient::new(engine_api::unix_channel(e.exec_root().join("cri.sock")));
    // a directory on a mount of its own, shared, as a node's kubelet directory is
    let shared = e.dir.path().join("shared");
    std::fs::create_dir_all(shared.join("from-host")).unwrap();
    std::fs::create_dir_all(shared.join("from-container")).unwrap();
    let dir = shared.to_str().unwrap().to_string();
    let sh = |cmd: &str| {
        let st = std::process::Command::new("sh").args(["-c", cmd]).status().unwrap();
        assert!(st.success(), "{cmd}");
    };
    sh(&format!("mount --bind {dir} {dir} && mount --make-shared {dir}"));
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").args(["-R", "-l", &self.0]).status();
        }
    }
    let _unmount = Unmount(dir.clone());
    let pod = rt
        .block_on(runtime.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config(&logs)),
            runtime_handler: String::new(),
        }))
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let create = |runtime: &mut RuntimeServiceClient<_>, name: &str, host: &str, propagation: cri::MountPropagation| {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: "busybox".into(), ..Default::default() }),
            command: vec!["sleep".into(), "3600".into()],
            mounts: vec![cri::Mount {
                host_path: host.into(),
                container_path: "/data".into(),
                propagation: propagation as i32,
                ..Default::default()
            }],
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext { privileged: true, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        };
        create_started(&rt, runtime, &pod, config, &logs)
    };
    let exec = |runtime: &mut RuntimeServiceClient<_>, id: &str, cmd: &str| -> String {
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), cmd.into()],
            timeout: 10,
        };
        let out = rt.block_on(runtime.exec_sync(req)).unwrap().into_inner();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    use cri::MountPropagation as P;
    let slave = create(&mut runtime, "slave", &dir, P::PropagationHostToContainer).unwrap();
    let both = create(&mut runtime, "both", &dir, P::PropagationBidirectional).unwrap();
    let private = create(&mut runtime, "private", &dir, P::PropagationPrivate).unwrap();
    let status = rt
        .block_on(runtime.container_status(cri::ContainerStatusRequest { container_id: slave.clone(), verbose: false }))
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.mounts[0].propagation, P::PropagationHostToContainer as i32);

    // the host mounts: the slave and the shared one see it, the private one does not
    sh(&format!("mount -t tmpfs host-tmpfs {dir}/from-host && touch {dir}/from-host/mark"));
    assert_eq!(exec(&mut runtime, &slave, "ls /data/from-host"), "mark\n");
    assert_eq!(exec(&mut runtime, &both, "ls /data/from-host"), "mark\n");
    assert_eq!(exec(&mut runtime, &private, "ls /data/from-host"), "");
    // the bidirectional container mounts: the host sees it
    exec(&mut runtime, &both, "mount -t tmpfs ctr-tmpfs /data/from-container && touch /data/from-container/back");
    assert!(shared.join("from-container/back").exists(), "the container's mount did not reach the host");

    // a propagating mount of what is not on a shared mount: refused, with the reason
    let plain = e.dir.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let err = create(&mut runtime, "refused", plain.to_str().unwrap(), P::PropagationBidirectional).unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("is not a shared mount"), "{err}");

    rt.block_on(runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() })).unwrap();
    rt.block_on(runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod })).unwrap();
    drop(_unmount);
    e.assert_clean();
}

/// The pod's cgroup (the kubelet's `cgroup_parent`, which it makes and owns) holds the
/// sandbox's and its containers' cgroups; removing the pod takes theirs and leaves the pod's.
#[test]
fn a_pods_cgroup_parent_holds_its_containers() {
    let e = engined_with_pause();
    let logs = e.dir.path().join("pod-logs");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let mut runtime = RuntimeServiceClient::new(engine_api::unix_channel(e.exec_root().join("cri.sock")));
    let parent = format!("/engine-e2e-kubepods-{}/pod-uid-web-1", std::process::id());
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let top = self.0.trim_start_matches('/').split('/').next().unwrap_or("").to_string();
            for root in engine_test_support::cgroup_mounts() {
                let _ = std::process::Command::new("find")
                    .arg(root.join(&top))
                    .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                    .status();
            }
        }
    }
    let _remove = Remove(parent.clone());
    let mut config = pod_config(&logs);
    config.linux.as_mut().unwrap().cgroup_parent = parent.clone();
    let req = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
    let pod = rt.block_on(runtime.run_pod_sandbox(req)).unwrap().into_inner().pod_sandbox_id;
    let container = sleeper("app");
    let req = cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(container),
        sandbox_config: Some(config),
    };
    let ctr = rt.block_on(runtime.create_container(req)).unwrap().into_inner().container_id;
    rt.block_on(runtime.start_container(cri::StartContainerRequest { container_id: ctr.clone() })).unwrap();
    for id in [&pod, &ctr] {
        let pid = e.inspect(id, "{{.State.Pid}}");
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(cgroups.contains(&format!("{parent}/{id}")), "{id}: {cgroups}");
    }
    rt.block_on(runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() })).unwrap();
    rt.block_on(runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() })).unwrap();
    for root in engine_test_support::cgroup_mounts() {
        let pod_dir = root.join(parent.trim_start_matches('/'));
        if pod_dir.exists() {
            for id in [&pod, &ctr] {
                wait_for("the container's cgroup to go", || !pod_dir.join(id.as_str()).exists());
            }
        }
    }
    e.assert_clean();
}

/// A pod on a CNI network (Debian's bridge, host-local and portmap plugins, from a
/// configuration directory of the test's own): its address from the plugins' result in its
/// status and on its eth0, reachable from the host, its host port published by portmap; once
/// the pod is removed, no address allocation, veth or port rule of it is left.
#[test]
fn a_pod_joins_its_cni_network_and_leaves_nothing_of_it() {
    let plugins = std::path::Path::new("/usr/lib/cni");
    assert!(plugins.join("bridge").exists(), "containernetworking-plugins (make setup) is not installed");
    let dir = tempfile::tempdir().unwrap();
    let (conf, ipam) = (dir.path().join("net.d"), dir.path().join("ipam"));
    std::fs::create_dir_all(&conf).unwrap();
    let tag = std::process::id() % 10000;
    let bridge = format!("ecni{tag}");
    let subnet_octet = 100 + tag % 100;
    std::fs::write(
        conf.join("10-e2e.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("e2e-{tag}"),
            "plugins": [
                {
                    "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                    "ipam": { "type": "host-local", "ranges": [[{ "subnet": format!("10.211.{subnet_octet}.0/24") }]], "dataDir": ipam },
                },
                { "type": "portmap", "capabilities": { "portMappings": true } },
            ],
        })
        .to_string(),
    )
    .unwrap();
    struct DeleteLink(String);
    impl Drop for DeleteLink {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }
    let _bridge = DeleteLink(bridge.clone());
    // portmap's chains, shared by every CNI user of the host: taken away after if this test
    // made them
    let nat = || {
        String::from_utf8_lossy(
            &std::process::Command::new("iptables-save").args(["-t", "nat"]).output().unwrap().stdout,
        )
        .into_owned()
    };
    struct PortmapChains(bool);
    impl Drop for PortmapChains {
        fn drop(&mut self) {
            if !self.0 {
                return;
            }
            let ipt = |args: &[&str]| {
                let _ = std::process::Command::new("iptables").args(["-t", "nat"]).args(args).status();
            };
            for hook in ["PREROUTING", "OUTPUT"] {
                ipt(&["-D", hook, "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"]);
            }
            let masq = ["-m", "comment", "--comment", "CNI portfwd requiring masquerade", "-j", "CNI-HOSTPORT-MASQ"];
            ipt(&[&["-D", "POSTROUTING"][..], &masq[..]].concat());
            for chain in ["CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK"] {
                ipt(&["-F", chain]);
                ipt(&["-X", chain]);
            }
        }
    }
    let _chains = PortmapChains(!nat().contains(":CNI-HOSTPORT-DNAT"));
    let mut e = Engined::start_with(
        &[],
        &["--cri-sandbox-image", "pause:test", "--dns", "127.0.0.1", "--cni-conf-dir", conf.to_str().unwrap()],
    );
    e.import_busybox("busybox");
    let tar = e.busybox_tar();
    e.ok(&["import", "--change", r#"CMD ["sleep", "2147483647"]"#, tar.to_str().unwrap(), "pause:test"]);
    let logs = e.dir.path().join("pod-logs");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let mut runtime = RuntimeServiceClient::new(engine_api::unix_channel(e.exec_root().join("cri.sock")));
    let host_port = 20000 + (tag % 20000) as i32;
    let mut config = pod_config(&logs);
    config.port_mappings = vec![cri::PortMapping { container_port: 8080, host_port, ..Default::default() }];
    let req = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
    let pod = rt
        .block_on(runtime.run_pod_sandbox(req))
        .unwrap_or_else(|s| panic!("{s}\n{}", e.log_tail()))
        .into_inner()
        .pod_sandbox_id;
    let ip = sandbox_status(&rt, &mut runtime, &pod).network.unwrap().ip;
    assert!(ip.starts_with(&format!("10.211.{subnet_octet}.")), "pod IP {ip:?}");
    assert!(ipam.join(format!("e2e-{tag}")).join(&ip).exists(), "host-local's allocation");
    // a web server in the pod, on its CNI address
    let mut web = sleeper("web");
    web.command = vec![
        "sh".into(),
        "-c".into(),
        "mkdir -p /www && echo pong > /www/index.html && exec httpd -f -p 8080 -h /www".into(),
    ];
    let ctr = create_started(&rt, &mut runtime, &pod, web, &logs).unwrap();
    let out = rt
        .block_on(runtime.exec_sync(cri::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec!["ip".into(), "-o".into(), "-4".into(), "addr".into(), "show".into(), "eth0".into()],
            timeout: 10,
        }))
        .unwrap()
        .into_inner();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{ip}/24")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let get = |addr: &str| {
        let out = std::process::Command::new("busybox")
            .args(["timeout", "5", "busybox", "wget", "-q", "-O", "-", addr])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_for("the pod's web server, from the host", || get(&format!("http://{ip}:8080/")) == "pong\n");
    // its host port, through portmap's rules
    let gateway = format!("10.211.{subnet_octet}.1");
    assert_eq!(get(&format!("http://{gateway}:{host_port}/")), "pong\n");
    assert!(nat().contains(&pod), "portmap's rules name the pod");

    // stop and removal: the plugins' DEL, then nothing of the pod is left
    rt.block_on(runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() })).unwrap();
    rt.block_on(runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() })).unwrap();
    rt.block_on(runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() })).unwrap();
    assert!(!ipam.join(format!("e2e-{tag}")).join(&ip).exists(), "the address is still allocated");
    let ports = std::fs::read_dir(format!("/sys/class/net/{bridge}/brif")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(ports, 0, "veths left on {bridge}");
    assert!(!nat().contains(&pod), "portmap's rules of the pod are left");
    e.assert_clean();
    assert_eq!(e.netns_files(), 0);

    // a sandbox removed through the Docker API gives its address back at the kubelet's next
    // call on it, or at engined's next start (after a kill -9 here)
    let run_pod = |runtime: &mut RuntimeServiceClient<_>| {
        let req = cri::RunPodSandboxRequest { config: Some(pod_config(&logs)), runtime_handler: String::new() };
        let pod = rt.block_on(runtime.run_pod_sandbox(req)).unwrap().into_inner().pod_sandbox_id;
        let ip = sandbox_status(&rt, runtime, &pod).network.unwrap().ip;
        assert!(ipam.join(format!("e2e-{tag}")).join(&ip).exists(), "host-local's allocation");
        e.ok(&["rm", "-f", &pod]);
        (pod, ip)
    };
    let (pod, ip) = run_pod(&mut runtime);
    rt.block_on(runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() })).unwrap();
    assert!(!ipam.join(format!("e2e-{tag}")).join(&ip).exists(), "RemovePodSandbox left the address allocated");
    let (_, ip) = run_pod(&mut runtime);
    e.kill9();
    e.restart();
    wait_for("engined's start to give the address back", || !ipam.join(format!("e2e-{tag}")).join(&ip).exists());
    e.assert_clean();
}
