//! The defects Docker API clients met first, each through the interface that met it: the Docker
//! CLI's `run --rm` whose start fails (it hung waiting for a removal that never came), piped stdin
//! with `run -i` (it hung: stdin sent before the start went nowhere), and a short exec's output
//! read the way docker-py reads it (it came back empty: the output followed the 101 head so
//! closely that a client reading the head through a buffer lost it). Every CLI run here has a
//! deadline, so a regression fails instead of hanging.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use engine_test_support::engined::Engined;
use engine_test_support::*;

/// Runs `prog args` with `input` on its stdin; fails the test if it has not ended in 60 s.
fn run_within(prog: &std::path::Path, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", prog.display()));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{} {args:?} hung: {}{}", prog.display(), stdout(&out), stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn docker(e: &Engined, args: &[&str], input: &str) -> Output {
    let host = e.host();
    let mut all = vec!["-H", host.as_str()];
    all.extend_from_slice(args);
    run_within(&engine_test_support::dockerd::docker_cli(), &all, input)
}

fn engine(e: &Engined, args: &[&str], input: &str) -> Output {
    let host = e.host();
    let mut all = vec!["-H", host.as_str()];
    all.extend_from_slice(args);
    run_within(&bin("engine"), &all, input)
}

fn no_containers_left(e: &Engined, after: &str) {
    wait_for(&format!("no container left after {after}"), || e.ok(&["ps", "-aq"]).trim().is_empty());
}

#[test]
fn run_rm_whose_start_fails_ends_with_dockers_exit_code_and_leaves_nothing() {
    let e = Engined::start();
    e.import_busybox("bb");
    for (args, code, says) in [
        (&["run", "--rm", "bb", "nonexistent-command"][..], 127, "executable file not found"),
        (&["run", "--rm", "bb", "/nonexistent"][..], 127, "no such file or directory"),
        (&["run", "--rm", "bb", "/etc/passwd"][..], 126, "permission denied"),
        (&["run", "--rm", "-w", "/etc/passwd", "bb", "true"][..], 125, "Error response from daemon"),
        (&["run", "-d", "--rm", "bb", "nonexistent-command"][..], 127, "executable file not found"),
    ] {
        for (cli, out) in [("docker", docker(&e, args, "")), ("engine", engine(&e, args, ""))] {
            assert_eq!(out.status.code(), Some(code), "{cli} {args:?}: {}", stderr(&out));
            assert!(stderr(&out).contains(says), "{cli} {args:?}: {}", stderr(&out));
            no_containers_left(&e, &format!("{cli} {args:?}"));
        }
    }
    // without --rm the container stays, created, with dockerd's exit code and the reason
    assert_eq!(docker(&e, &["run", "--name", "typo", "bb", "nonexistent-command"], "").status.code(), Some(127));
    let state = e.docker_ok(&["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}} {{.State.Error}}", "typo"]);
    assert!(state.starts_with("created 127 "), "{state}");
    assert!(state.contains("executable file not found"), "{state}");
    e.ok(&["rm", "typo"]);
    // a create that fails is 125, as Docker's
    let out = engine(&e, &["run", "--rm", "no-such-image", "true"], "");
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    no_containers_left(&e, "a failed create");
}

#[test]
fn piped_stdin_ends_on_eof() {
    let e = Engined::start();
    e.import_busybox("bb");
    // the Docker CLI sends stdin (and its end) from the attach on, before it starts the container
    for i in 0..10 {
        let out = docker(&e, &["run", "-i", "--rm", "bb", "cat"], &format!("x{i}\n"));
        assert_eq!((stdout(&out), out.status.code()), (format!("x{i}\n"), Some(0)), "{}", stderr(&out));
    }
    let out = docker(&e, &["run", "-i", "--rm", "bb", "wc", "-l"], "a\nb\n");
    assert_eq!(stdout(&out).trim(), "2", "{}", stderr(&out));
    let out = engine(&e, &["run", "-i", "--rm", "bb", "cat"], "through the engine CLI\n");
    assert_eq!((stdout(&out), out.status.code()), ("through the engine CLI\n".to_string(), Some(0)));
    no_containers_left(&e, "the -i runs");
}

/// One HTTP/1.1 request on engined's socket; the response's body.
fn request(e: &Engined, method: &str, path: &str, body: &str) -> (u16, String) {
    e.request(method, path, body)
}

/// Starts exec `id` hijacked and reads it as docker-py does: the head through one buffered read
/// of up to 8 KiB whose remainder is thrown away, then the raw socket to its end. Returns the
/// head's content type and the bytes after it.
fn start_exec_as_docker_py(e: &Engined, id: &str, tty: bool) -> (String, Vec<u8>) {
    let mut s = UnixStream::connect(e.host().trim_start_matches("unix://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = format!("{{\"Detach\":false,\"Tty\":{tty}}}");
    write!(
        s,
        "POST /v1.43/exec/{id}/start HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = vec![0u8; 8192];
    let n = s.read(&mut first).unwrap();
    let head = String::from_utf8_lossy(&first[..n]).split("\r\n\r\n").next().unwrap_or_default().to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_string))
        .unwrap_or_default();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    (content_type, rest)
}

/// The payloads of a multiplexed stream as (stream, bytes); panics on anything that is not frames.
fn demux(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= 8 && matches!(b[0], 1 | 2) && b[1..4] == [0, 0, 0], "not a frame: {b:?}");
        let len = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as usize;
        out.push((b[0], b[8..8 + len].to_vec()));
        b = &b[8 + len..];
    }
    out
}

fn create_exec(e: &Engined, container: &str, cmd: &[&str], tty: bool) -> String {
    let body = serde_json::json!({"Cmd": cmd, "AttachStdout": true, "AttachStderr": true, "Tty": tty}).to_string();
    let (status, resp) = request(e, "POST", &format!("/v1.43/containers/{container}/exec"), &body);
    assert_eq!(status, 201, "{resp}");
    serde_json::from_str::<serde_json::Value>(&resp).unwrap()["Id"].as_str().unwrap().to_string()
}

#[test]
fn a_short_execs_output_is_never_lost() {
    let e = Engined::start();
    e.import_busybox("bb");
    e.ok(&["run", "-d", "--name", "box", "bb", "sleep", "1000"]);

    // as docker-py reads it: framed without a terminal, 200 short execs back to back
    for i in 0..200 {
        let id = create_exec(&e, "box", &["echo", &i.to_string()], false);
        let (ct, rest) = start_exec_as_docker_py(&e, &id, false);
        assert_eq!(ct, "application/vnd.docker.multiplexed-stream");
        assert_eq!(demux(&rest), vec![(1, format!("{i}\n").into_bytes())], "exec {i}");
    }
    // a terminal from the exec's create, framing from the start's Tty, as dockerd
    let id = create_exec(&e, "box", &["echo", "hi"], true);
    let (ct, rest) = start_exec_as_docker_py(&e, &id, false);
    assert_eq!(ct, "application/vnd.docker.multiplexed-stream");
    let joined: Vec<u8> = demux(&rest).into_iter().flat_map(|(_, b)| b).collect();
    assert_eq!(joined, b"hi\r\n");
    let id = create_exec(&e, "box", &["echo", "hi"], false);
    let (ct, rest) = start_exec_as_docker_py(&e, &id, true);
    assert_eq!((ct.as_str(), rest.as_slice()), ("application/vnd.docker.raw-stream", &b"hi\n"[..]));
    // a program that cannot start: the reason on the stream, and dockerd's exit code
    let id = create_exec(&e, "box", &["nosuch"], false);
    let (_, rest) = start_exec_as_docker_py(&e, &id, false);
    let said: Vec<u8> = demux(&rest).into_iter().flat_map(|(_, b)| b).collect();
    assert!(String::from_utf8_lossy(&said).contains("executable file not found"), "{said:?}");
    let (_, inspect) = request(&e, "GET", &format!("/v1.43/exec/{id}/json"), "");
    // (126 as dockerd 20.10's for any exec that cannot start, checked against it; a container's
    // missing program is 127)
    assert_eq!(serde_json::from_str::<serde_json::Value>(&inspect).unwrap()["ExitCode"], 126, "{inspect}");

    // through both CLIs, with and without a terminal
    for i in 0..200 {
        let n = i.to_string();
        let tty = i % 2 == 1;
        let args: Vec<&str> = if tty { vec!["exec", "-t", "box", "echo", &n] } else { vec!["exec", "box", "echo", &n] };
        let want = if tty { format!("{i}\r\n") } else { format!("{i}\n") };
        let out = docker(&e, &args, "");
        assert_eq!((stdout(&out), out.status.code()), (want.clone(), Some(0)), "docker {args:?}: {}", stderr(&out));
        let out = engine(&e, &args, "");
        assert_eq!(out.status.code(), Some(0), "engine {args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out).trim_end(), n, "engine {args:?}");
    }
    e.ok(&["rm", "-f", "box"]);
}

/// `--ulimit`, `--shm-size` and `--sysctl` reach the container (they were accepted and dropped),
/// and bad ones are refused with Docker's words.
#[test]
fn ulimits_shm_size_and_sysctls_are_applied() {
    let e = Engined::start();
    e.import_busybox("bb");
    let out = docker(
        &e,
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "--ulimit",
            "nofile=100:200",
            "--shm-size",
            "1m",
            "--sysctl",
            "net.ipv4.ip_forward=1",
            "--sysctl",
            "kernel.shmmax=4096",
            "bb",
            "sh",
            "-c",
            "ulimit -n; ulimit -H -n; df -k /dev/shm | tail -n 1 | awk '{print $2}'; cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmax",
        ],
        "",
    );
    assert_eq!(stdout(&out), "100\n200\n1024\n1\n4096\n", "{}", stderr(&out));
    // refused by engined itself (the Docker CLI checks these too, other clients do not)
    for (host_config, says) in [
        (serde_json::json!({"Ulimits": [{"Name": "nofile", "Soft": 300, "Hard": 200}]}), "soft limit"),
        (serde_json::json!({"Ulimits": [{"Name": "nofiles", "Soft": 1, "Hard": 2}]}), "invalid ulimit type"),
        (serde_json::json!({"Sysctls": {"kernel.panic": "1"}}), "not allowed"),
        (serde_json::json!({"ShmSize": -1}), "SHM size"),
    ] {
        let body = serde_json::json!({"Image": "bb", "Cmd": ["true"], "HostConfig": host_config}).to_string();
        let (status, resp) = request(&e, "POST", "/v1.43/containers/create", &body);
        assert_eq!(status, 400, "{body}: {resp}");
        assert!(resp.contains(says), "{body}: {resp}");
    }
    no_containers_left(&e, "the refused runs");
}

/// The log driver is named in inspect as dockerd names it (docker-py reads
/// `HostConfig.LogConfig.Type`), `--log-opt max-size/max-file` rotate the log, and a driver this
/// engine does not have is refused with Docker's words.
#[test]
fn log_config_is_shown_applied_and_checked() {
    let e = Engined::start();
    e.import_busybox("bb");
    e.docker_ok(&["create", "--name", "plain", "bb", "true"]);
    assert_eq!(e.docker_ok(&["inspect", "-f", "{{.HostConfig.LogConfig.Type}}", "plain"]).trim(), "json-file");
    let script = "for i in $(seq 300); do echo line $i; done";
    e.docker_ok(&[
        "run",
        "--name",
        "chatty",
        "--log-opt",
        "max-size=1k",
        "--log-opt",
        "max-file=2",
        "bb",
        "sh",
        "-c",
        script,
    ]);
    let shown = e.docker_ok(&[
        "inspect",
        "-f",
        "{{.HostConfig.LogConfig.Type}} {{index .HostConfig.LogConfig.Config \"max-size\"}}",
        "chatty",
    ]);
    assert_eq!(shown.trim(), "json-file 1k");
    let logs = e.docker_ok(&["logs", "chatty"]);
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines.last(), Some(&"line 300"), "{logs}");
    assert!(lines.len() < 100, "the log was not rotated: {} lines kept", lines.len());
    for (host_config, says) in [
        (serde_json::json!({"LogConfig": {"Type": "syslog", "Config": {}}}), "no log driver named 'syslog'"),
        (
            serde_json::json!({"LogConfig": {"Type": "json-file", "Config": {"max-files": "2"}}}),
            "unknown log opt 'max-files'",
        ),
        (serde_json::json!({"LogConfig": {"Type": "json-file", "Config": {"max-size": "lots"}}}), "invalid size"),
    ] {
        let body = serde_json::json!({"Image": "bb", "Cmd": ["true"], "HostConfig": host_config}).to_string();
        let (status, resp) = request(&e, "POST", "/v1.43/containers/create", &body);
        assert_eq!(status, 400, "{body}: {resp}");
        assert!(resp.contains(says), "{body}: {resp}");
    }
    e.ok(&["rm", "plain", "chatty"]);
    no_containers_left(&e, "the log tests");
}

/// Supplementary groups as dockerd sets them: the primary group, the image's groups that list the
/// user, and `--group-add` (ids or names).
#[test]
fn supplementary_groups_are_dockers() {
    let e = Engined::start();
    e.import_busybox("bb");
    // the kernel's list of the process's supplementary groups, as /proc shows it (sorted)
    let groups = "grep Groups: /proc/self/status | cut -f2";
    for (args, want) in [
        (&["run", "--rm", "bb", "sh", "-c", groups][..], "0"),
        (&["run", "--rm", "-u", "1000:1000", "bb", "sh", "-c", groups][..], "1000"),
        (
            &["run", "--rm", "-u", "1000", "--group-add", "1234", "--group-add", "root", "bb", "sh", "-c", groups][..],
            "0 1000 1234",
        ),
    ] {
        let out = docker(&e, args, "");
        assert_eq!((stdout(&out).trim(), out.status.code()), (want, Some(0)), "{args:?}: {}", stderr(&out));
    }
    let out = docker(&e, &["run", "--rm", "--group-add", "nosuchgroup", "bb", "true"], "");
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("nosuchgroup"), "{}", stderr(&out));
    no_containers_left(&e, "the group runs");
}

/// Three answers clients act on: `kill` returns once the container has exited (a `rm` right
/// after it never finds it running), `--network container:<missing>` names the missing
/// container (a 404 made the Docker CLI try to pull the image), and a user network's inspect
/// shows only the options the user set (compose recreated networks whose options differed).
#[test]
fn kill_then_rm_network_container_missing_and_network_options() {
    let e = Engined::start();
    e.import_busybox("bb");
    for i in 0..10 {
        let name = format!("k{i}");
        e.docker_ok(&["run", "-d", "--name", &name, "bb", "sleep", "1000"]);
        e.docker_ok(&["kill", &name]);
        let out = docker(&e, &["rm", &name], "");
        assert_eq!(out.status.code(), Some(0), "rm right after kill: {}", stderr(&out));
    }
    let out = docker(&e, &["run", "--rm", "--network", "container:nope", "bb", "true"], "");
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("No such container: nope"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("Unable to find image"), "the CLI tried to pull: {}", stderr(&out));

    let bridge = format!("ebo{}", std::process::id() % 100_000);
    e.docker_ok(&["network", "create", "plain"]);
    e.docker_ok(&["network", "create", "-o", &format!("com.docker.network.bridge.name={bridge}"), "named"]);
    assert_eq!(e.docker_ok(&["network", "inspect", "-f", "{{json .Options}}", "plain"]).trim(), "{}");
    assert_eq!(
        e.docker_ok(&["network", "inspect", "-f", "{{json .Options}}", "named"]).trim(),
        format!("{{\"com.docker.network.bridge.name\":\"{bridge}\"}}")
    );
    e.docker_ok(&["network", "rm", "plain", "named"]);
    no_containers_left(&e, "the kills");
}

/// A `--workdir` the image lacks is made (root's, 0755), as dockerd and runc make it.
#[test]
fn a_missing_workdir_is_made() {
    let e = Engined::start();
    e.import_busybox("bb");
    let out =
        docker(&e, &["run", "--rm", "-u", "1000", "-w", "/made/here", "bb", "sh", "-c", "pwd; stat -c '%u %a' ."], "");
    assert_eq!((stdout(&out).as_str(), out.status.code()), ("/made/here\n0 755\n", Some(0)), "{}", stderr(&out));
    let out = engine(&e, &["run", "--rm", "-w", "/x/y", "bb", "pwd"], "");
    assert_eq!(stdout(&out), "/x/y\n", "{}", stderr(&out));
    // a workdir that is a file is still an error
    let out = docker(&e, &["run", "--rm", "-w", "/etc/passwd", "bb", "true"], "");
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    no_containers_left(&e, "the workdir runs");
}

/// `--privileged` gives the host's devices, as dockerd does (loop devices, FUSE and
/// docker-in-docker need them); an unprivileged container keeps the default few.
#[test]
fn a_privileged_container_sees_the_hosts_devices() {
    let e = Engined::start();
    e.import_busybox("bb");
    let host: Vec<String> = std::fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .filter(|d| {
            d.file_type().is_ok_and(|t| {
                std::os::unix::fs::FileTypeExt::is_char_device(&t)
                    || std::os::unix::fs::FileTypeExt::is_block_device(&t)
            })
        })
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "console" && n != "ptmx")
        .collect();
    let list = "find /dev -maxdepth 1 \\( -type c -o -type b \\) | sed 's|/dev/||' | sort";
    let out = docker(&e, &["run", "--rm", "--privileged", "bb", "sh", "-c", list], "");
    let listed = stdout(&out);
    let inside: Vec<&str> = listed.lines().collect();
    for name in &host {
        assert!(inside.contains(&name.as_str()), "/dev/{name} missing in a privileged container: {inside:?}");
    }
    let out = docker(&e, &["run", "--rm", "bb", "sh", "-c", list], "");
    let unprivileged = stdout(&out).lines().count();
    assert!(unprivileged < host.len().min(20), "an unprivileged container got {unprivileged} devices");
    no_containers_left(&e, "the privileged runs");
}

/// Opens a hijacked request (attach, exec start) on engined's socket: the 101 head read, the
/// socket returned for the stream.
fn hijack(e: &Engined, path: &str, body: &str) -> UnixStream {
    let mut s = UnixStream::connect(e.host().trim_start_matches("unix://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // the head, byte by byte, so nothing of the stream is read with it
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "the head ended early: {}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

/// Reads until the server closes the stream (the deadline fails the test); what came.
fn read_to_close(mut s: UnixStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("the stream was not closed within 30 s");
    out
}

fn inspect_json(e: &Engined, id: &str) -> serde_json::Value {
    let (status, body) = request(e, "GET", &format!("/v1.43/containers/{id}/json"), "");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn create(e: &Engined, body: serde_json::Value) -> (u16, String) {
    request(e, "POST", "/v1.43/containers/create", &body.to_string())
}

/// Every HostConfig field dockerd shows is in inspect, with its defaults; the limits and modes
/// docker-py set and found missing (cpuset, swappiness, reservation, memory+swap, the OOM
/// killer, the cgroup namespace, the runtime) reach the container's cgroup and namespaces;
/// what cannot be applied is refused by name and leaves nothing.
#[test]
fn host_config_fields_are_shown_applied_or_refused() {
    let e = Engined::start();
    e.import_busybox("bb");
    let (status, body) = create(&e, serde_json::json!({"Image": "bb", "Cmd": ["true"]}));
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["Id"].as_str().unwrap().to_string();
    let hc = inspect_json(&e, &id)["HostConfig"].clone();
    for key in [
        "Binds",
        "ContainerIDFile",
        "LogConfig",
        "NetworkMode",
        "PortBindings",
        "RestartPolicy",
        "AutoRemove",
        "VolumeDriver",
        "VolumesFrom",
        "CapAdd",
        "CapDrop",
        "CgroupnsMode",
        "Dns",
        "DnsOptions",
        "DnsSearch",
        "ExtraHosts",
        "GroupAdd",
        "IpcMode",
        "Cgroup",
        "Links",
        "OomScoreAdj",
        "PidMode",
        "Privileged",
        "PublishAllPorts",
        "ReadonlyRootfs",
        "SecurityOpt",
        "UTSMode",
        "UsernsMode",
        "ShmSize",
        "Runtime",
        "ConsoleSize",
        "Isolation",
        "CpuShares",
        "Memory",
        "NanoCpus",
        "CgroupParent",
        "BlkioWeight",
        "BlkioWeightDevice",
        "BlkioDeviceReadBps",
        "BlkioDeviceWriteBps",
        "BlkioDeviceReadIOps",
        "BlkioDeviceWriteIOps",
        "CpuPeriod",
        "CpuQuota",
        "CpuRealtimePeriod",
        "CpuRealtimeRuntime",
        "CpusetCpus",
        "CpusetMems",
        "Devices",
        "DeviceCgroupRules",
        "DeviceRequests",
        "KernelMemory",
        "KernelMemoryTCP",
        "MemoryReservation",
        "MemorySwap",
        "MemorySwappiness",
        "OomKillDisable",
        "PidsLimit",
        "Ulimits",
        "CpuCount",
        "CpuPercent",
        "IOMaximumIOps",
        "IOMaximumBandwidth",
    ] {
        assert!(hc.get(key).is_some(), "HostConfig.{key} is missing: {hc}");
    }
    assert_eq!(hc["Runtime"], "runc");
    assert_eq!(hc["ShmSize"], 64 << 20);
    assert_eq!(hc["CgroupnsMode"], if pure_v2() { "private" } else { "host" });
    assert!(hc["MemorySwappiness"].is_null(), "{hc}");
    e.ok(&["rm", &id]);

    let dev = format!("/dev/{}", block_device());
    let swap_accounted = cgroup_mounts().iter().any(|m| m.join("memory.memsw.limit_in_bytes").exists()) || pure_v2();
    let (status, body) = create(
        &e,
        serde_json::json!({"Image": "bb", "Cmd": ["sleep", "1000"], "HostConfig": {
            "CpusetCpus": "0", "Memory": 64 << 20, "MemoryReservation": 32 << 20,
            "MemorySwappiness": if pure_v2() { serde_json::Value::Null } else { serde_json::json!(40) },
            "OomKillDisable": !pure_v2(), "CgroupnsMode": "private", "Runtime": "runc",
            "Annotations": {"com.example.k": "v"}, "BlkioDeviceWriteBps": [{"Path": dev, "Rate": 4096}],
        }}),
    );
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["Id"].as_str().unwrap().to_string();
    e.ok(&["start", &id]);
    let cg = |f: &str| e.cgroup_file(&id, f);
    assert_eq!(cg("cpuset.cpus").unwrap(), "0");
    let soft = cg("memory.soft_limit_in_bytes").or_else(|| cg("memory.low")).unwrap();
    assert_eq!(soft, (32u64 << 20).to_string());
    let hc = inspect_json(&e, &id)["HostConfig"].clone();
    if swap_accounted {
        // Docker's default memory+swap: twice the memory
        assert_eq!(hc["MemorySwap"], 128 << 20, "{hc}");
    }
    if !pure_v2() {
        assert_eq!(cg("memory.swappiness").unwrap(), "40");
        assert!(cg("memory.oom_control").unwrap().contains("oom_kill_disable 1"));
        assert_eq!(hc["MemorySwappiness"], 40);
    }
    assert_eq!(hc["CgroupnsMode"], "private");
    assert_eq!(hc["Annotations"], serde_json::json!({"com.example.k": "v"}));
    assert_eq!(hc["BlkioDeviceWriteBps"], serde_json::json!([{"Path": dev, "Rate": 4096}]));
    assert!(hc.get("StorageOpt").is_none(), "{hc}");
    let own = e.ok(&["exec", &id, "readlink", "/proc/self/ns/cgroup"]);
    assert_ne!(own.trim(), std::fs::read_link("/proc/self/ns/cgroup").unwrap().display().to_string());
    // update: a running container takes a new cpuset
    e.ok(&["update", "--cpuset-cpus", "0-1", &id]);
    assert_eq!(cg("cpuset.cpus").unwrap(), "0-1");
    assert_eq!(inspect_json(&e, &id)["HostConfig"]["CpusetCpus"], "0-1");
    // throttles are a create's: an update naming them is refused, not dropped
    let update = format!(r#"{{"BlkioDeviceReadBps": [{{"Path": "{dev}", "Rate": 1024}}]}}"#);
    let (status, body) = e.request("POST", &format!("/containers/{id}/update"), &update);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("cannot be updated"), "{body}");
    e.ok(&["rm", "-f", &id]);

    // refused by name, nothing made
    for (hc, says) in [
        (serde_json::json!({"KernelMemory": 1 << 20}), "KernelMemory"),
        (serde_json::json!({"BlkioWeight": 300}), "BlkioWeight"),
        (serde_json::json!({"Runtime": "kata"}), "unknown or invalid runtime name: kata"),
        (serde_json::json!({"CpusetCpus": "64"}), "Requested CPUs are not available"),
        (serde_json::json!({"CpusetCpus": "x"}), "Invalid value x for cpuset cpus"),
        (serde_json::json!({"CgroupnsMode": "weird"}), "invalid cgroup namespace mode"),
        (serde_json::json!({"MemorySwap": 1 << 30}), "always set the Memory limit"),
        (serde_json::json!({"Memory": 64 << 20, "MemoryReservation": 128 << 20}), "memory reservation"),
        (serde_json::json!({"MemorySwappiness": 101}), "swappiness"),
        (serde_json::json!({"DeviceRequests": [{"Count": -1, "Capabilities": [["gpu"]]}]}), "DeviceRequests"),
        (serde_json::json!({"StorageOpt": {"size": "1G"}}), "the writable layer has no size quota"),
        (serde_json::json!({"CpuRealtimeRuntime": 950}), "CpuRealtimePeriod and CpuRealtimeRuntime"),
        (serde_json::json!({"BlkioDeviceReadIOps": [{"Path": "/dev/null", "Rate": 1}]}), "not a block device"),
    ] {
        let (status, body) = create(&e, serde_json::json!({"Image": "bb", "Cmd": ["true"], "HostConfig": hc}));
        assert_eq!(status, 400, "{hc}: {body}");
        assert!(body.contains(says), "{hc}: {body}");
    }
    let out = engine(&e, &["update", "--kernel-memory", "10m", "nope"], "");
    assert!(!out.status.success());
    no_containers_left(&e, "the refused creates");
}

/// Attach as docker-py uses it: `logs=1` without `stream` sends what the container wrote and
/// ends; the detach keys (ctrl-p ctrl-q, or the request's `detachKeys`) end an attach or an
/// exec with a terminal and leave the container running; stats carry `networks`, `blkio_stats`
/// and a `precpu_stats`, one sample or a stream of them.
#[test]
fn attach_logs_detach_keys_and_stats_as_clients_read_them() {
    let e = Engined::start();
    e.import_busybox("bb");
    e.ok(&["run", "--name", "said", "bb", "echo", "hello"]);
    let s = hijack(&e, "/v1.43/containers/said/attach?logs=1&stream=0&stdout=1&stderr=1", "");
    let said: Vec<u8> = demux(&read_to_close(s)).into_iter().flat_map(|(_, b)| b).collect();
    assert_eq!(said, b"hello\n");

    e.ok(&["run", "-d", "-t", "-i", "--name", "cat", "bb", "cat"]);
    for (query, keys) in [("", &b"\x10\x11"[..]), ("&detachKeys=ctrl-x", &b"\x18"[..])] {
        let mut s = hijack(&e, &format!("/v1.43/containers/cat/attach?stream=1&stdin=1&stdout=1{query}"), "");
        s.write_all(b"typed\n").unwrap();
        s.write_all(keys).unwrap();
        let seen = read_to_close(s);
        assert!(!seen.windows(2).any(|w| w == b"^P" || w == b"^X"), "the keys reached the container: {seen:?}");
        assert_eq!(e.inspect("cat", "{{.State.Running}}"), "true", "detaching stopped it");
    }
    let body = serde_json::json!({"Cmd": ["cat"], "AttachStdin": true, "AttachStdout": true, "Tty": true, "DetachKeys": "ctrl-x"});
    let (status, resp) = request(&e, "POST", "/v1.43/containers/cat/exec", &body.to_string());
    assert_eq!(status, 201, "{resp}");
    let exec = serde_json::from_str::<serde_json::Value>(&resp).unwrap()["Id"].as_str().unwrap().to_string();
    let mut s = hijack(&e, &format!("/v1.43/exec/{exec}/start"), r#"{"Detach":false,"Tty":true}"#);
    s.write_all(b"\x18").unwrap();
    read_to_close(s);
    assert_eq!(e.inspect("cat", "{{.State.Running}}"), "true");
    let (status, _) = request(&e, "POST", "/v1.43/containers/cat/attach?stream=1&stdin=1&detachKeys=ctrl-", "");
    assert_eq!(status, 400);

    let (status, body) = request(&e, "GET", "/v1.43/containers/cat/stats?stream=0", "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    for key in ["read", "preread", "networks", "precpu_stats", "cpu_stats", "memory_stats", "blkio_stats", "pids_stats"]
    {
        assert!(v.get(key).is_some(), "stats lack {key}: {v}");
    }
    assert!(v["networks"]["eth0"]["rx_bytes"].is_u64(), "{v}");
    assert!(v["precpu_stats"]["cpu_usage"]["total_usage"].is_u64(), "{v}");
    // streamed: a sample a second, each with the one before as precpu_stats
    let mut s = UnixStream::connect(e.host().trim_start_matches("unix://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET /v1.43/containers/cat/stats HTTP/1.1\r\nHost: docker\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let samples = |got: &[u8]| String::from_utf8_lossy(got).matches("\"cpu_stats\"").count();
    while samples(&got) < 2 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the stats stream ended: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    e.ok(&["rm", "-f", "cat", "said"]);
}

/// Legacy links as dockerd gives them: the linked containers' name, environment and exposed
/// ports in variables, and `rm --link` (`DELETE /containers/{name}/{alias}?link=1`) takes a
/// link away and leaves both containers.
#[test]
fn legacy_link_variables_and_link_removal() {
    let e = Engined::start();
    e.import_busybox("bb");
    e.ok(&["run", "-d", "--name", "db", "-e", "FOO=1", "--expose", "5432", "bb", "sleep", "1000"]);
    let env = e.ok(&["run", "--name", "app", "--link", "db:my-db", "bb", "env"]);
    for want in [
        "MY_DB_NAME=/app/my-db",
        "MY_DB_ENV_FOO=1",
        "MY_DB_PORT=tcp://",
        "MY_DB_PORT_5432_TCP_PORT=5432",
        "MY_DB_PORT_5432_TCP_PROTO=tcp",
    ] {
        assert!(env.contains(want), "{want} not in\n{env}");
    }
    assert!(!env.contains("MY_DB_ENV_PATH"), "{env}");
    let (status, body) = request(&e, "DELETE", "/v1.43/containers/app/my-db?link=1", "");
    assert_eq!(status, 204, "{body}");
    assert_eq!(e.inspect("app", "{{json .HostConfig.Links}}"), "null");
    let (status, _) = request(&e, "DELETE", "/v1.43/containers/app/my-db?link=1", "");
    assert_eq!(status, 404);
    assert_eq!(e.ok(&["ps", "-aq"]).lines().count(), 2, "a container went with the link");
    e.ok(&["rm", "-f", "db", "app"]);
}

/// `--mac-address` (the engine CLI's and the API's `Config.MacAddress`, docker-py's way): the
/// container's eth0 has it and inspect shows it; a malformed one is refused and makes nothing.
#[test]
fn a_mac_address_as_asked() {
    let e = Engined::start();
    e.import_busybox("bb");
    let out = e.ok(&["run", "--rm", "--mac-address", "02:42:ac:11:00:99", "bb", "cat", "/sys/class/net/eth0/address"]);
    assert_eq!(out.trim(), "02:42:ac:11:00:99");
    let (status, body) =
        create(&e, serde_json::json!({"Image": "bb", "Cmd": ["sleep", "100"], "MacAddress": "02:42:AC:11:00:0A"}));
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["Id"].as_str().unwrap().to_string();
    e.ok(&["start", &id]);
    assert_eq!(e.inspect(&id, "{{.NetworkSettings.MacAddress}}"), "02:42:ac:11:00:0a");
    assert_eq!(e.ok(&["exec", &id, "cat", "/sys/class/net/eth0/address"]).trim(), "02:42:ac:11:00:0a");
    e.ok(&["rm", "-f", &id]);
    let (status, body) = create(&e, serde_json::json!({"Image": "bb", "MacAddress": "02:42"}));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid MAC address"), "{body}");
    no_containers_left(&e, "the refused create");
}

/// Details docker-py's suite found, each as dockerd answers: `HostConfig.Mounts` in inspect's
/// Mounts; a volume driver only matters to named volumes; the `none` log driver (no log to
/// read, attach still works); volume list filters; `detachKeys` in any case, as Go reads JSON.
#[test]
fn docker_py_details_as_dockerd_answers_them() {
    let e = Engined::start();
    e.import_busybox("bb");
    let src = e.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let (status, body) = create(
        &e,
        serde_json::json!({"Image": "bb", "Cmd": ["true"], "HostConfig": {
            "Mounts": [{"Type": "bind", "Source": src, "Target": "/m", "ReadOnly": true}],
            "VolumeDriver": "foo",
        }}),
    );
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["Id"].as_str().unwrap().to_string();
    let mounts = inspect_json(&e, &id)["Mounts"].clone();
    let m = mounts.as_array().unwrap().iter().find(|m| m["Destination"] == "/m").cloned().unwrap_or_default();
    assert_eq!(
        (m["Type"].as_str(), m["RW"].as_bool(), m["Propagation"].as_str()),
        (Some("bind"), Some(false), Some("rprivate")),
        "{mounts}"
    );
    e.ok(&["rm", &id]);
    let (status, body) =
        create(&e, serde_json::json!({"Image": "bb", "HostConfig": {"Binds": ["named:/v"], "VolumeDriver": "foo"}}));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("volume driver"), "{body}");

    let out = e.ok(&["run", "--name", "quiet", "--log-driver", "none", "bb", "echo", "hello"]);
    assert_eq!(out, "hello\n", "an attached run still shows the output");
    let (status, body) = request(&e, "GET", "/v1.43/containers/quiet/logs?stdout=1", "");
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("configured logging driver does not support reading"), "{body}");
    e.ok(&["rm", "quiet"]);

    e.ok(&["volume", "create", "dockerpytest"]);
    e.ok(&["volume", "create", "foobar-vol"]);
    let names = |filter: &str| {
        let (status, body) = request(&e, "GET", &format!("/v1.43/volumes?filters={filter}"), "");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["Volumes"].as_array().unwrap().iter().map(|v| v["Name"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(names("%7B%22name%22%3A%5B%22foobar%22%5D%7D"), ["foobar-vol"]);
    assert_eq!(names("%7B%22dangling%22%3A%5B%22true%22%5D%7D").len(), 2);
    let (status, _) = request(&e, "GET", "/v1.43/volumes?filters=%7B%22nope%22%3A%5B%22x%22%5D%7D", "");
    assert_eq!(status, 400);

    e.ok(&["run", "-d", "-t", "-i", "--name", "cat", "bb", "cat"]);
    let body = serde_json::json!({"Cmd": ["cat"], "AttachStdin": true, "AttachStdout": true, "Tty": true, "detachKeys": "ctrl-p"});
    let (status, resp) = request(&e, "POST", "/v1.43/containers/cat/exec", &body.to_string());
    assert_eq!(status, 201, "{resp}");
    let exec = serde_json::from_str::<serde_json::Value>(&resp).unwrap()["Id"].as_str().unwrap().to_string();
    let mut s = hijack(&e, &format!("/v1.43/exec/{exec}/start"), r#"{"Detach":false,"Tty":true}"#);
    s.write_all(b"\x10").unwrap();
    read_to_close(s);
    e.ok(&["rm", "-f", "cat"]);
    e.ok(&["volume", "rm", "dockerpytest", "foobar-vol"]);
}

/// `wait` of a container with a restart policy answers at its first exit, as dockerd wakes its
/// waiters when it restarts one (docker-py waited forever); a removal without force is still
/// refused while it restarts.
#[test]
fn wait_answers_at_an_exit_the_restart_policy_follows() {
    let e = Engined::start();
    e.import_busybox("bb");
    let (status, body) = create(
        &e,
        serde_json::json!({"Image": "bb", "Cmd": ["sh", "-c", "sleep 1; exit 3"], "HostConfig": {"RestartPolicy": {"Name": "always"}, "NetworkMode": "none"}}),
    );
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["Id"].as_str().unwrap().to_string();
    e.ok(&["start", &id]);
    let (status, body) = request(&e, "POST", &format!("/v1.43/containers/{id}/wait"), "");
    assert_eq!(status, 200, "{body}");
    // (the answer is chunked: its one JSON object)
    let object = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
    assert_eq!(serde_json::from_str::<serde_json::Value>(object).unwrap()["StatusCode"], 3, "{body}");
    let (status, body) = request(&e, "DELETE", &format!("/v1.43/containers/{id}"), "");
    assert_eq!(status, 409, "{body}");
    assert!(body.to_lowercase().contains("stop the container before"), "{body}");
    e.ok(&["rm", "-f", &id]);
}

/// Networks as docker-py meets them: a name with a space (any non-blank name, as dockerd's),
/// `IPAM.Options` null when none were given, an endpoint's `DriverOpts` and network-scoped
/// `Links` kept and shown (the network's DNS answers the link's alias), `LinkLocalIPs` refused
/// by name.
#[test]
fn networks_as_docker_py_meets_them() {
    let e = Engined::start();
    e.import_busybox("bb");
    let (status, body) = request(&e, "POST", "/v1.43/networks/create", r#"{"Name": "test 01"}"#);
    assert_eq!(status, 201, "{body}");
    let (status, body) = request(&e, "GET", "/v1.43/networks/test%2001", "");
    assert_eq!(status, 200, "{body}");
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["IPAM"]["Options"].is_null(), "{body}");
    let (status, _) = request(&e, "DELETE", "/v1.43/networks/test%2001", "");
    assert_eq!(status, 204);
    let (status, _) = request(&e, "POST", "/v1.43/networks/create", r#"{"Name": " "}"#);
    assert_eq!(status, 400);

    let net = format!("dpy{}", std::process::id());
    e.ok(&["network", "create", &net]);
    e.ok(&["run", "-d", "--name", "upstream", "--network", &net, "bb", "sleep", "1000"]);
    let (status, body) = create(
        &e,
        serde_json::json!({"Image": "bb", "Cmd": ["sleep", "1000"], "HostConfig": {"NetworkMode": net},
            "NetworkingConfig": {"EndpointsConfig": {net.clone(): {"Links": ["upstream:bar"], "DriverOpts": {"com.example.setting": "on"}}}}}),
    );
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["Id"].as_str().unwrap().to_string();
    e.ok(&["start", &id]);
    let settings = inspect_json(&e, &id)["NetworkSettings"]["Networks"][&net].clone();
    assert_eq!(settings["Links"], serde_json::json!(["upstream:bar"]), "{settings}");
    assert_eq!(settings["DriverOpts"]["com.example.setting"], "on", "{settings}");
    let upstream_ip = e.inspect("upstream", &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"));
    let answer = e.ok(&["exec", &id, "nslookup", "bar"]);
    assert!(answer.contains(upstream_ip.trim()), "bar is not {upstream_ip}: {answer}");
    // link-local addresses on the container's interface, shown as asked; others refused
    let (status, body) = create(
        &e,
        serde_json::json!({"Image": "bb", "Cmd": ["sleep", "1000"], "HostConfig": {"NetworkMode": "bridge"},
            "NetworkingConfig": {"EndpointsConfig": {"bridge": {"IPAMConfig": {"LinkLocalIPs": ["169.254.8.8"]}}}}}),
    );
    assert_eq!(status, 201, "{body}");
    let ll = serde_json::from_str::<serde_json::Value>(&body).unwrap()["Id"].as_str().unwrap().to_string();
    e.ok(&["start", &ll]);
    let ipam = inspect_json(&e, &ll)["NetworkSettings"]["Networks"]["bridge"]["IPAMConfig"].clone();
    assert_eq!(ipam, serde_json::json!({"LinkLocalIPs": ["169.254.8.8"]}));
    assert!(e.ok(&["exec", &ll, "ip", "addr", "show", "eth0"]).contains("169.254.8.8/16"));
    e.ok(&["rm", "-f", &ll]);
    let (status, body) = create(
        &e,
        serde_json::json!({"Image": "bb", "HostConfig": {"NetworkMode": net},
            "NetworkingConfig": {"EndpointsConfig": {net.clone(): {"IPAMConfig": {"LinkLocalIPs": ["10.9.8.7"]}}}}}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not a link-local address"), "{body}");
    // a network link may name a container made later: its DNS answers once it is there; a
    // MAC address given at connect shows before the start
    e.ok(&["create", "--name", "early", "--network", &net, "bb", "sleep", "1000"]);
    let connect = |container: &str, endpoint: serde_json::Value| {
        request(
            &e,
            "POST",
            &format!("/v1.43/networks/{net}/connect"),
            &serde_json::json!({"Container": container, "EndpointConfig": endpoint}).to_string(),
        )
    };
    let (status, body) = request(&e, "POST", &format!("/v1.43/networks/{net}/disconnect"), r#"{"Container": "early"}"#);
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        connect("early", serde_json::json!({"Links": ["later:soon"], "MacAddress": "02:42:ac:11:00:02"}));
    assert_eq!(status, 200, "{body}");
    let shown = inspect_json(&e, "early")["NetworkSettings"]["Networks"][&net].clone();
    assert_eq!(
        (shown["MacAddress"].as_str(), shown["Links"].clone()),
        (Some("02:42:ac:11:00:02"), serde_json::json!(["later:soon"])),
        "{shown}"
    );
    e.ok(&["start", "early"]);
    e.ok(&["run", "-d", "--name", "later", "--network", &net, "bb", "sleep", "1000"]);
    let later_ip = e.inspect("later", &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"));
    let answer = e.ok(&["exec", "early", "nslookup", "soon"]);
    assert!(answer.contains(later_ip.trim()), "soon is not {later_ip}: {answer}");
    // links given at a connect of a running container: its DNS server answers them at once
    let (status, body) = request(&e, "POST", &format!("/v1.43/networks/{net}/disconnect"), r#"{"Container": "early"}"#);
    assert_eq!(status, 200, "{body}");
    let (status, body) = connect("early", serde_json::json!({"Links": ["later:again"]}));
    assert_eq!(status, 200, "{body}");
    let answer = e.ok(&["exec", "early", "nslookup", "again"]);
    assert!(answer.contains(later_ip.trim()), "again is not {later_ip}: {answer}");
    // disconnecting what is not connected is refused, force or not
    let (status, _) = request(&e, "POST", &format!("/v1.43/networks/{net}/disconnect"), r#"{"Container": "early"}"#);
    assert_eq!(status, 200);
    let (status, body) =
        request(&e, "POST", &format!("/v1.43/networks/{net}/disconnect"), r#"{"Container": "early", "Force": true}"#);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("is not connected"), "{body}");
    e.ok(&["rm", "-f", &id, "upstream", "early", "later"]);
    e.ok(&["network", "rm", &net]);
}

/// `--volumes-from` as dockerd: the other container's binds, named and anonymous volumes at the
/// same paths, read-only when asked; shown in Mounts; a volume so shared outlives the other's
/// `rm -v` while this one uses it; a missing container or a bad mode is refused.
#[test]
fn volumes_from_another_container() {
    let e = Engined::start();
    e.import_busybox("bb");
    let host = e.dir.path().join("shared");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("h"), "host\n").unwrap();
    let bind = format!("{}:/bind", host.display());
    e.ok(&[
        "run",
        "--name",
        "src",
        "-v",
        "named:/named",
        "-v",
        "/anon",
        "-v",
        &bind,
        "bb",
        "sh",
        "-c",
        "echo n > /named/f; echo a > /anon/f",
    ]);
    let out = e.ok(&[
        "run",
        "--name",
        "user",
        "--volumes-from",
        "src:ro",
        "bb",
        "sh",
        "-c",
        "cat /named/f /anon/f /bind/h; touch /named/x 2>/dev/null || echo read-only",
    ]);
    assert_eq!(out, "n\na\nhost\nread-only\n");
    let mounts = e.inspect("user", "{{range .Mounts}}{{.Destination}}:{{.RW}} {{end}}");
    for want in ["/named:false", "/anon:false", "/bind:false"] {
        assert!(mounts.contains(want), "{want} not in {mounts}");
    }
    assert_eq!(e.inspect("user", "{{json .HostConfig.VolumesFrom}}"), r#"["src:ro"]"#);
    // the anonymous volume is in use by `user`: the other's rm -v leaves it
    e.ok(&["rm", "-v", "src"]);
    assert_eq!(e.ok(&["start", "-a", "user"]), "n\na\nhost\nread-only\n");
    e.ok(&["rm", "-v", "user"]);
    for (from, says) in [("nope", "No such container: nope"), ("user:xx", "invalid mode")] {
        let out = engine(&e, &["create", "--volumes-from", from, "bb"], "");
        assert!(!out.status.success() && stderr(&out).contains(says), "{from}: {}", stderr(&out));
    }
    no_containers_left(&e, "the refused creates");
}

/// The Docker SDK for Python (Debian's python3-docker) as its users call it, against engined
/// and, to hold the script to dockerd's answers, against a private dockerd:
/// `containers.run` attached (with `remove`, `stream`, stderr, a failing command) and detached,
/// log reading, `exec_run` (demultiplexed too), health checks, `wait`, `kill` and `remove`.
#[test]
fn the_python_sdk_runs_containers_as_on_dockerd() {
    let e = Engined::start();
    let d = engine_test_support::dockerd::Dockerd::start(&[]);
    let tar = e.busybox_tar();
    e.docker_ok(&["import", "-c", "CMD [\"sh\"]", tar.to_str().unwrap(), "bb"]);
    d.ok(&["import", "-c", "CMD [\"sh\"]", tar.to_str().unwrap(), "bb"]);
    let script = r#"
import sys, time
import docker

c = docker.DockerClient(base_url=sys.argv[1], version="auto", timeout=60)
none = dict(network_mode="none")

def until(what, cond):
    deadline = time.time() + 60
    while not cond():
        assert time.time() < deadline, "timed out waiting for " + what
        time.sleep(0.05)

# attached, removed after
assert c.containers.run("bb", ["echo", "hi"], remove=True, **none) == b"hi\n"
out = c.containers.run("bb", ["sh", "-c", "echo out; echo err >&2"], remove=True, stderr=True, **none)
assert sorted(out.splitlines()) == [b"err", b"out"], out
chunks = list(c.containers.run("bb", ["sh", "-c", "echo a; echo b"], stream=True, remove=True, **none))
assert b"".join(chunks) == b"a\nb\n", chunks
try:
    c.containers.run("bb", ["sh", "-c", "echo bad >&2; exit 3"], remove=True, **none)
    raise AssertionError("no ContainerError")
except docker.errors.ContainerError as err:
    assert err.exit_status == 3 and b"bad" in err.stderr, (err.exit_status, err.stderr)
assert c.containers.list(all=True) == [], c.containers.list(all=True)

# detached: logs, exec, wait
ctr = c.containers.run("bb", ["sh", "-c", "for i in 1 2 3; do echo line$i; done; exec sleep 1000"],
                       detach=True, name="py1", labels={"k": "v"}, **none)
until("the logs", lambda: ctr.logs() == b"line1\nline2\nline3\n")
assert [x.name for x in c.containers.list(filters={"label": "k=v"})] == ["py1"]
ctr.reload()
assert ctr.status == "running" and ctr.attrs["HostConfig"]["LogConfig"]["Type"] == "json-file"
assert ctr.exec_run(["echo", "x"]) == (0, b"x\n")
code, (o, e) = ctr.exec_run(["sh", "-c", "echo o; echo e >&2; exit 2"], demux=True)
assert (code, o, e) == (2, b"o\n", b"e\n"), (code, o, e)
assert b"".join(ctr.logs(stream=True, follow=False)) == b"line1\nline2\nline3\n"
assert ctr.logs(tail=1) == b"line3\n"
ctr.kill()
assert ctr.wait(timeout=60)["StatusCode"] == 137
ctr.reload()
assert ctr.status == "exited" and ctr.attrs["State"]["ExitCode"] == 137
ctr.remove()
ok = c.containers.run("bb", ["sh", "-c", "exit 5"], detach=True, **none)
assert ok.wait(timeout=60)["StatusCode"] == 5
ok.remove(v=True)

# health checks: unhealthy until the file is there, then healthy, with the check's log
h = c.containers.run("bb", ["sleep", "1000"], detach=True, **none,
                     healthcheck={"test": ["CMD-SHELL", "test -e /tmp/ok"], "interval": 100_000_000, "retries": 1})
def health():
    h.reload()
    return h.attrs["State"].get("Health", {}).get("Status")
until("unhealthy", lambda: health() == "unhealthy")
assert h.exec_run(["touch", "/tmp/ok"]).exit_code == 0
until("healthy", lambda: health() == "healthy")
assert h.attrs["State"]["Health"]["Log"][-1]["ExitCode"] == 0
h.remove(force=True)
assert c.containers.list(all=True) == []
print("sdk ok")
"#;
    for host in [e.host(), format!("unix://{}", d.sock.display())] {
        let out = Command::new("/usr/bin/python3").arg("-c").arg(script).arg(&host).output().unwrap();
        assert!(out.status.success(), "docker-py against {host}: {}{}", stdout(&out), stderr(&out));
        assert_eq!(stdout(&out).trim(), "sdk ok");
    }
    e.assert_clean();
}
