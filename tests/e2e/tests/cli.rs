//! The engine CLI against a private engined: containers, run options, images, bad input and
//! crashes of engined and lifecycled while containers run.

use std::process::{Command, Stdio};

use engine_test_support::engined::{pid_alive, Engined};
use engine_test_support::*;

#[test]
fn container_lifecycle_through_the_cli() {
    let e = Engined::start();
    e.import_busybox("busybox");

    // run --rm, attached: output and exit code
    assert_eq!(e.ok(&["run", "--rm", "busybox", "echo", "hello"]), "hello\n");
    let out = e.engine(&["run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!((stdout(&out).as_str(), stderr(&out).as_str()), ("out\n", "err\n"));
    assert_eq!(e.ok(&["ps", "-aq"]).trim(), "", "--rm left a container");

    // run -d, ps, logs, exec, top, stats
    let id = e
        .ok(&["run", "-d", "--name", "web", "busybox", "sh", "-c", "echo started; exec sleep 1000"])
        .trim()
        .to_string();
    assert_eq!(id.len(), 64);
    assert!(e.ok(&["ps"]).contains("web"));
    assert_eq!(e.ok(&["ps", "-q"]).trim(), &id[..12]);
    assert_eq!(e.ok(&["ps", "--format", "{{.Names}} {{.State}}"]).trim(), "web running");
    wait_for("the log line", || e.ok(&["logs", "web"]) == "started\n");
    assert!(e.ok(&["logs", "-t", "web"]).contains("Z started"));
    assert_eq!(e.ok(&["exec", "web", "sh", "-c", "echo $((6*7))"]), "42\n");
    assert_eq!(e.engine(&["exec", "web", "sh", "-c", "exit 5"]).status.code(), Some(5));
    assert_eq!(
        e.ok(&["exec", "-e", "A=b", "-w", "/tmp", "-u", "1000", "web", "sh", "-c", "echo $A $(pwd) $(id -u)"]),
        "b /tmp 1000\n"
    );
    e.ok(&["exec", "-d", "web", "sleep", "30"]);
    // exec -i: stdin reaches the process
    let mut child = std::process::Command::new(bin("engine"))
        .args(["-H", &e.host(), "exec", "-i", "web", "sh", "-c", "read a; echo got $a"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"line\n").unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&out), "got line\n");
    // exec output streams while the process runs (it is still running when the line arrives)
    let mut child = std::process::Command::new(bin("engine"))
        .args(["-H", &e.host(), "exec", "web", "sh", "-c", "echo first; exec sleep 1000"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line, "first\n");
    assert!(child.try_wait().unwrap().is_none(), "the exec should still be running");
    let _ = child.kill();
    let _ = child.wait();
    assert!(e.ok(&["top", "web"]).contains("sleep 1000"));
    assert!(e.ok(&["stats", "--no-stream", "web"]).contains("web"));
    assert_eq!(e.inspect("web", "{{.State.Running}}"), "true");
    assert_eq!(e.inspect(&id[..8], "{{.Name}}"), "/web");

    // stop (sleep as PID 1 ignores SIGTERM: killed after -t), start, restart, kill, wait
    e.ok(&["stop", "-t", "1", "web"]);
    assert_eq!(e.state("web"), "exited");
    assert_eq!(e.inspect("web", "{{.State.ExitCode}}"), "137");
    e.ok(&["start", "web"]);
    assert_eq!(e.state("web"), "running");
    e.ok(&["restart", "-t", "0", "web"]);
    assert_eq!(e.state("web"), "running");
    e.ok(&["kill", "-s", "KILL", "web"]);
    assert_eq!(e.ok(&["wait", "web"]).trim(), "137");
    assert!(e.fails(&["kill", "web"]).contains("is not running"));
    e.ok(&["rename", "web", "web2"]);
    assert_eq!(e.inspect(&id, "{{.Name}}"), "/web2");

    // rm of a running container needs -f
    e.ok(&["start", "web2"]);
    assert!(e.fails(&["rm", "web2"]).contains("cannot remove a running container"));
    e.ok(&["rm", "-f", "web2"]);
    assert!(e.fails(&["inspect", "web2"]).contains("No such object"));

    // attach: output from now on, stdin through, the exit code back
    e.ok(&["run", "-d", "-i", "--name", "catter", "busybox", "cat"]);
    let mut child = std::process::Command::new(bin("engine"))
        .args(["-H", &e.host(), "attach", "catter"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"echoed\n").unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!((stdout(&out).as_str(), out.status.code()), ("echoed\n", Some(0)));
    assert_eq!(e.state("catter"), "exited");
    e.ok(&["rm", "catter"]);

    // after a reboot the snapshot is not mounted: start mounts it again
    e.ok(&["create", "--name", "rebooted", "busybox", "echo", "remounted"]);
    let rid = e.inspect("rebooted", "{{.Id}}");
    let rootfs = e.data_root().join("image/snapshots").join(&rid).join("rootfs");
    nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert_eq!(e.ok(&["start", "-a", "rebooted"]), "remounted\n");
    e.ok(&["rm", "rebooted"]);

    // create + start -a
    e.ok(&["create", "--name", "later", "busybox", "echo", "from-create"]);
    assert_eq!(e.state("later"), "created");
    assert_eq!(e.ok(&["start", "-a", "later"]), "from-create\n");
    e.ok(&["rm", "later"]);
    e.assert_clean();
}

#[test]
fn run_options_reach_the_container() {
    let e = Engined::start();
    e.import_busybox("busybox");
    let env_file = e.dir.path().join("env");
    std::fs::write(&env_file, "# comment\nFROM_FILE=yes\n").unwrap();
    let out = e.ok(&[
        "run",
        "--rm",
        "-e",
        "A=1",
        "--env-file",
        env_file.to_str().unwrap(),
        "-w",
        "/home/user",
        "-u",
        "user",
        "-l",
        "k=v",
        "--hostname",
        "box",
        "busybox",
        "sh",
        "-c",
        "echo $A $FROM_FILE $(pwd) $(id -un) $(hostname) $HOME",
    ]);
    assert_eq!(out, "1 yes /home/user user box /home/user\n");
    assert_eq!(e.ok(&["run", "--rm", "--entrypoint", "echo", "busybox", "via", "entrypoint"]), "via entrypoint\n");

    // --init: engine-init is PID 1, the command its child
    assert_eq!(
        e.ok(&["run", "--rm", "--init", "busybox", "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '"]),
        "/sbin/docker-init -- sh -c cat /proc/1/cmdline | tr '\\0' ' ' "
    );

    // --read-only, --tmpfs
    let ro = e.engine(&[
        "run",
        "--rm",
        "--read-only",
        "--tmpfs",
        "/scratch",
        "busybox",
        "sh",
        "-c",
        "touch /scratch/ok && touch /nope",
    ]);
    assert_ne!(ro.status.code(), Some(0));
    assert!(stderr(&ro).contains("Read-only file system"), "{}", stderr(&ro));

    // capabilities and privileges
    let caps = |args: &[&str]| {
        let mut a = vec!["run", "--rm"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["busybox", "sh", "-c", "grep CapEff /proc/self/status"]);
        e.ok(&a).split_whitespace().nth(1).unwrap().to_string()
    };
    assert_eq!(caps(&["--cap-drop", "ALL"]), "0000000000000000");
    assert_eq!(caps(&[]), "00000000a80425fb", "Docker's default set");
    assert_ne!(caps(&["--privileged"]), caps(&[]));
    assert_eq!(
        e.ok(&[
            "run",
            "--rm",
            "--security-opt",
            "no-new-privileges",
            "busybox",
            "sh",
            "-c",
            "grep NoNewPrivs /proc/self/status"
        ])
        .split_whitespace()
        .nth(1),
        Some("1")
    );

    // the default seccomp filter: on unless --privileged or seccomp=unconfined; namespace
    // creation refused, ordinary work untouched
    let seccomp = |args: &[&str]| {
        let mut a = vec!["run", "--rm"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["busybox", "sh", "-c", "grep '^Seccomp:' /proc/self/status"]);
        e.ok(&a).split_whitespace().nth(1).unwrap().to_string()
    };
    assert_eq!(seccomp(&[]), "2");
    assert_eq!(seccomp(&["--privileged"]), "0");
    assert_eq!(seccomp(&["--security-opt", "seccomp=unconfined"]), "0");
    let unshare = e.engine(&[
        "run",
        "--rm",
        "--cap-add",
        "SYS_ADMIN",
        "--cap-drop",
        "SYS_ADMIN",
        "busybox",
        "unshare",
        "-U",
        "true",
    ]);
    assert_ne!(unshare.status.code(), Some(0), "a user namespace was created: {}", stdout(&unshare));
    assert!(stderr(&unshare).contains("Operation not permitted"), "{}", stderr(&unshare));
    assert_eq!(
        e.ok(&["run", "--rm", "--security-opt", "seccomp=unconfined", "busybox", "unshare", "-U", "echo", "in-userns"]),
        "in-userns\n"
    );

    // a profile of one's own, from a file (sent as its JSON, as the Docker CLI sends it): here
    // sethostname is refused even with CAP_SYS_ADMIN, which the default filter allows it with
    let profile = e.dir.path().join("no-hostname.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let set_hostname = |opts: &[&str]| {
        let mut a = vec!["run", "--rm", "--cap-add", "SYS_ADMIN"];
        a.extend_from_slice(opts);
        a.extend_from_slice(&["busybox", "hostname", "renamed"]);
        e.engine(&a)
    };
    assert!(set_hostname(&[]).status.success());
    let seccomp_opt = format!("seccomp={}", profile.display());
    let refused = set_hostname(&["--security-opt", &seccomp_opt]);
    assert!(!refused.status.success() && stderr(&refused).contains("not permitted"), "{}", stderr(&refused));
    std::fs::write(&profile, r#"{"defaultAction": 3}"#).unwrap();
    let err = e.fails(&["run", "--rm", "--security-opt", &seccomp_opt, "busybox", "true"]);
    assert!(err.contains("invalid seccomp profile"), "{err}");

    // --pid host and --uts host: the host's namespaces; anything else is refused
    let host_init = std::fs::read_to_string("/proc/1/comm").unwrap();
    assert_eq!(e.ok(&["run", "--rm", "--pid", "host", "busybox", "cat", "/proc/1/comm"]), host_init);
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(e.ok(&["run", "--rm", "--uts", "host", "busybox", "hostname"]).trim(), host_name.trim());
    // --pid and --ipc container:<x>: a running container's namespaces
    e.ok(&["run", "-d", "--name", "holder", "busybox", "sleep", "1001"]);
    assert!(e.ok(&["run", "--rm", "--pid", "container:holder", "busybox", "cat", "/proc/1/cmdline"]).contains("1001"));
    let ipc_of_holder = e.ok(&["exec", "holder", "readlink", "/proc/self/ns/ipc"]);
    assert_eq!(
        e.ok(&["run", "--rm", "--ipc", "container:holder", "busybox", "readlink", "/proc/self/ns/ipc"]),
        ipc_of_holder
    );
    assert_ne!(e.ok(&["run", "--rm", "busybox", "readlink", "/proc/self/ns/ipc"]), ipc_of_holder);
    e.ok(&["stop", "-t", "0", "holder"]);
    assert!(e.fails(&["run", "--rm", "--pid", "container:holder", "busybox", "true"]).contains("it is not running"));
    e.ok(&["rm", "holder"]);
    assert!(e.fails(&["run", "--rm", "--pid", "container:nope", "busybox", "true"]).contains("nope"));
    assert!(e.fails(&["run", "--rm", "--ipc", "elsewhere", "busybox", "true"]).contains("invalid IPC mode"));

    // resources: the container's own cgroup has the limits
    let id = e
        .ok(&["run", "-d", "-m", "64m", "--pids-limit", "50", "--cpus", "0.5", "busybox", "sleep", "100"])
        .trim()
        .to_string();
    let cg = |ctrl_file: &str| e.cgroup_file(&id, ctrl_file);
    let mem = cg("memory.max").or_else(|| cg("memory.limit_in_bytes")).unwrap();
    assert_eq!(mem, (64u64 << 20).to_string());
    assert_eq!(cg("pids.max").unwrap(), "50");
    let cpu = cg("cpu.max").or_else(|| cg("cpu.cfs_quota_us")).unwrap();
    assert!(cpu.starts_with("50000"), "{cpu}");
    // update: the running container's cgroup takes the new limits, inspect shows them, and a
    // restart keeps them; what cannot be applied is refused and changes nothing
    e.ok(&["update", "-m", "96m", "--pids-limit", "70", "--restart", "on-failure:2", &id]);
    assert_eq!(cg("memory.max").or_else(|| cg("memory.limit_in_bytes")).unwrap(), (96u64 << 20).to_string());
    assert_eq!(cg("pids.max").unwrap(), "70");
    let shown = "{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}} {{.HostConfig.RestartPolicy.Name}}";
    assert_eq!(e.inspect(&id, shown), format!("{} 70 on-failure", 96u64 << 20));
    e.ok(&["update", "--cpuset-cpus", "0", &id]);
    assert_eq!(cg("cpuset.cpus").unwrap(), "0");
    assert!(e.fails(&["update", "--kernel-memory", "10m", &id]).contains("KernelMemory"));
    assert!(e.fails(&["update", "--cpu-quota", "20000", &id]).contains("NanoCPUs has already been set"));
    assert!(e.fails(&["update", "-m", "1k", &id]).contains("Minimum memory limit"));
    assert_eq!(e.inspect(&id, shown), format!("{} 70 on-failure", 96u64 << 20), "a refused update changed it");
    e.ok(&["restart", "-t", "0", &id]);
    assert_eq!(cg("pids.max").unwrap(), "70", "the limits went with the restart");
    e.ok(&["rm", "-f", &id]);

    // binds and named volumes
    let host = e.dir.path().join("shared");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("in"), "from host").unwrap();
    let bind = format!("{}:/data", host.display());
    assert_eq!(
        e.ok(&["run", "--rm", "-v", &bind, "busybox", "sh", "-c", "cat /data/in; echo back > /data/out"]),
        "from host"
    );
    assert_eq!(std::fs::read_to_string(host.join("out")).unwrap(), "back\n");
    let ro_bind = format!("{}:/data:ro", host.display());
    assert_ne!(e.engine(&["run", "--rm", "-v", &ro_bind, "busybox", "touch", "/data/x"]).status.code(), Some(0));
    e.ok(&["run", "--rm", "-v", "vol1:/v", "busybox", "sh", "-c", "echo kept > /v/f"]);
    assert_eq!(e.ok(&["run", "--rm", "-v", "vol1:/v", "busybox", "cat", "/v/f"]), "kept\n");

    // network: none has only loopback; host shares the host's interfaces
    let ifaces = e.ok(&["run", "--rm", "--network", "none", "busybox", "ls", "/sys/class/net"]);
    assert_eq!(ifaces.split_whitespace().collect::<Vec<_>>(), ["lo"]);
    let host_ifaces = e.ok(&["run", "--rm", "--network", "host", "busybox", "ls", "/sys/class/net"]);
    assert_eq!(host_ifaces.split_whitespace().count(), std::fs::read_dir("/sys/class/net").unwrap().count());

    // restart policies
    e.ok(&["run", "-d", "--name", "flaky", "--restart", "on-failure:2", "busybox", "sh", "-c", "exit 1"]);
    wait_for("two restarts", || e.inspect("flaky", "{{.RestartCount}}") == "2" && e.state("flaky") == "exited");
    e.ok(&["run", "-d", "--name", "always", "--restart", "always", "busybox", "sh", "-c", "sleep 0.2"]);
    wait_for("a restart", || e.inspect("always", "{{.RestartCount}}").parse::<u32>().unwrap_or(0) >= 1);
    e.ok(&["stop", "-t", "1", "always"]);
    // engined settles exited-or-restarting before a stop returns: no pending restart
    assert_eq!(e.state("always"), "exited", "a stopped container does not restart");
    e.ok(&["run", "-d", "--name", "onfail", "--restart", "on-failure", "busybox", "sleep", "1000"]);
    e.ok(&["stop", "-t", "0", "onfail"]);
    assert_eq!(
        (e.state("onfail"), e.inspect("onfail", "{{.RestartCount}}")),
        ("exited".into(), "0".into()),
        "a user's stop is not a failure to restart from"
    );
    e.ok(&["rm", "-f", "flaky", "always", "onfail"]);
    e.assert_clean();
}

/// The `run` flags a Docker user carries over (ulimits, /dev/shm, sysctls, mounts, groups, the
/// OOM score, the domain name, a label file, the cid file, a quiet pull) reach the container
/// through the engine CLI as through Docker's.
#[test]
fn dockers_run_flags_reach_the_container() {
    let e = Engined::start();
    e.import_busybox("busybox");
    let labels = e.dir.path().join("labels");
    std::fs::write(&labels, "# a comment\nfrom.file=yes\n").unwrap();
    let cidfile = e.dir.path().join("cid");
    let out = e.ok(&[
        "run",
        "--name",
        "flags",
        "--ulimit",
        "nofile=100:200",
        "--shm-size",
        "1m",
        "--sysctl",
        "kernel.shm_rmid_forced=1",
        "--mount",
        "type=tmpfs,target=/scratch",
        "--group-add",
        "1234",
        "--oom-score-adj",
        "500",
        "--domainname",
        "example.org",
        "--label-file",
        labels.to_str().unwrap(),
        "--cidfile",
        cidfile.to_str().unwrap(),
        "--userns",
        "host",
        "-q",
        "busybox",
        "sh",
        "-c",
        "ulimit -n; ulimit -Hn; df -k /dev/shm | tail -1; cat /proc/sys/kernel/shm_rmid_forced; \
         grep -c ' /scratch tmpfs' /proc/mounts; id -G; cat /proc/self/oom_score_adj; cat /proc/sys/kernel/domainname",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8, "{out}");
    assert_eq!((lines[0], lines[1]), ("100", "200"), "{out}");
    assert_eq!(lines[2].split_whitespace().nth(1), Some("1024"), "/dev/shm of 1m: {out}");
    assert_eq!(lines[3], "1", "{out}");
    assert_eq!(lines[4], "1", "{out}");
    assert!(lines[5].split_whitespace().any(|g| g == "1234"), "{out}");
    assert_eq!(lines[6], "500", "{out}");
    assert_eq!(lines[7], "example.org", "{out}");
    assert_eq!(e.inspect("flags", "{{index .Config.Labels \"from.file\"}}"), "yes");
    let id = e.inspect("flags", "{{.Id}}");
    assert_eq!(std::fs::read_to_string(&cidfile).unwrap(), id);
    assert_eq!(e.inspect("flags", "{{.HostConfig.ContainerIDFile}}"), cidfile.to_str().unwrap());
    // an existing cid file stops the run before anything is made, as Docker's CLI
    let before = e.ok(&["ps", "-aq"]);
    let out = e.engine(&["run", "--cidfile", cidfile.to_str().unwrap(), "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("container ID file found"), "{out:?}");
    assert_eq!(e.ok(&["ps", "-aq"]), before);
    // a failed create leaves no cid file behind
    let fresh = e.dir.path().join("cid2");
    let bad = e.fails(&["run", "--cidfile", fresh.to_str().unwrap(), "--ulimit", "nofile=200:100", "busybox", "true"]);
    assert!(bad.contains("soft limit"), "{bad}");
    let refused = e.fails(&["run", "--cidfile", fresh.to_str().unwrap(), "--userns", "private", "busybox", "true"]);
    assert!(refused.to_lowercase().contains("user namespace") || refused.contains("userns"), "{refused}");
    assert!(!fresh.exists(), "the cid file of a failed create is left");
    assert!(e.fails(&["run", "--mount", "type=bind,target=/x,bogus=1", "busybox", "true"]).contains("bogus"));
    let wrong = e.fails(&["run", "--mount", "type=tmpfs,target=/x,volume-nocopy", "busybox", "true"]);
    assert!(wrong.contains("VolumeOptions must not be specified"), "{wrong}");
    // each type's options applied: a tmpfs of a size and mode, a labelled volume that does not
    // take the image's files, an anonymous volume of its own, a non-recursive bind
    let out = e.ok(&[
        "run",
        "--name",
        "mounts",
        "--mount",
        "type=tmpfs,target=/t,tmpfs-size=2m,tmpfs-mode=1770",
        "--mount",
        "type=volume,source=labelled,target=/etc,volume-nocopy,volume-label=purpose=test",
        "--mount",
        "type=volume,target=/anon",
        "--mount",
        &format!("type=bind,source={},target=/host,readonly,bind-nonrecursive", e.dir.path().display()),
        "busybox",
        "sh",
        "-c",
        "df -k /t | tail -1; stat -c %a /t; ls /etc | wc -l; grep -c ' /anon ' /proc/mounts; grep ' /host ' /proc/mounts | grep -c ro,",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].split_whitespace().nth(1), Some("2048"), "{out}");
    assert_eq!(&lines[1..], ["1770", "0", "1", "1"], "{out}");
    assert_eq!(e.ok(&["volume", "inspect", "-f", "{{.Labels.purpose}}", "labelled"]).trim(), "test");
    let mounts = e.inspect("mounts", "{{range .Mounts}}{{.Type}}:{{.Destination}}:{{.RW}} {{end}}");
    for m in ["tmpfs:/t:true", "volume:/etc:true", "volume:/anon:true", "bind:/host:false"] {
        assert!(mounts.contains(m), "{m} not in {mounts}");
    }
    let anon = e.inspect("mounts", "{{range .Mounts}}{{if eq .Destination \"/anon\"}}{{.Name}}{{end}}{{end}}");
    assert_eq!(anon.len(), 64, "the anonymous volume's name: {mounts}");
    e.ok(&["rm", "-v", "mounts"]);
    assert!(!e.ok(&["volume", "ls", "-q"]).contains(&anon), "the anonymous volume outlived rm -v");
    e.ok(&["volume", "rm", "labelled"]);
    e.ok(&["create", "--name", "parented", "--cgroup-parent", "/custom-parent", "busybox", "true"]);
    assert_eq!(e.inspect("parented", "{{.HostConfig.CgroupParent}}"), "/custom-parent");
    e.ok(&["rm", "flags", "parented"]);
    e.assert_clean();
}

/// Every `run` flag of the Docker CLI 28's reference is one the engine CLI takes; each is applied
/// (block I/O throttles in the container's cgroup, annotations in the state its OCI hooks read,
/// the streams `-a` names, signals proxied to the container, the API socket and the CLI's
/// credentials for `--use-api-socket`) or refused by the daemon with one line, leaving nothing.
#[test]
fn every_docker_run_flag_is_taken_and_applied_or_refused() {
    let help = Command::new(engine_test_support::dockerd::docker_cli()).args(["run", "--help"]).output().unwrap();
    let ours = stdout(&Command::new(bin("engine")).args(["run", "--help"]).output().unwrap());
    let missing: Vec<String> = stdout(&help)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("--")).map(|w| w.trim_end_matches(',').to_string()))
        .filter(|flag| ![" ", "=", "[", "\n"].iter().any(|after| ours.contains(&format!("{flag}{after}"))))
        .collect();
    assert!(missing.is_empty(), "docker run flags the engine CLI lacks: {missing:?}\n{ours}");

    let hooks = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let seen = out_dir.path().join("state.json");
    std::fs::write(
        hooks.path().join("50-tagged.json"),
        format!(
            r#"{{"version":"1.0.0","hook":{{"path":"/bin/sh","args":["sh","-c","cat > {}"]}},"when":{{"annotations":{{"^com\\.example\\.tag$":"^on$"}}}},"stages":["createRuntime"]}}"#,
            seen.display()
        ),
    )
    .unwrap();
    let e = Engined::start_with(&[], &["--hooks-dir", hooks.path().to_str().unwrap()]);
    e.import_busybox("busybox");

    // --annotation: in the spec, so the runtime's state (what hooks read) carries it
    e.ok(&["run", "--rm", "--network", "none", "--annotation", "com.example.tag=on", "busybox", "true"]);
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&seen).unwrap()).unwrap();
    assert_eq!(state["annotations"]["com.example.tag"], "on", "{state}");
    e.ok(&["create", "--name", "annotated", "--network", "none", "--annotation", "a=b", "busybox"]);
    assert_eq!(e.inspect("annotated", "{{json .HostConfig.Annotations}}"), r#"{"a":"b"}"#);
    e.ok(&["rm", "annotated"]);

    // block I/O throttles by device, in the container's own cgroup
    let dev = block_device();
    let numbers = std::fs::read_to_string(format!("/sys/block/{dev}/dev")).unwrap().trim().to_string();
    let (bps, iops) = (format!("/dev/{dev}:1mb"), format!("/dev/{dev}:300"));
    let id = e.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--device-read-bps",
        &bps,
        "--device-write-iops",
        &iops,
        "busybox",
        "sleep",
        "100",
    ]);
    let id = id.trim();
    let (read, write) = if pure_v2() {
        let max = e.cgroup_file(id, "io.max").unwrap_or_default();
        (max.clone(), max)
    } else {
        (
            e.cgroup_file(id, "blkio.throttle.read_bps_device").unwrap_or_default(),
            e.cgroup_file(id, "blkio.throttle.write_iops_device").unwrap_or_default(),
        )
    };
    assert!(read.contains(&numbers) && (read.contains(" 1048576") || read.contains("rbps=1048576")), "{read}");
    assert!(write.contains(&numbers) && (write.contains(" 300") || write.contains("wiops=300")), "{write}");
    assert_eq!(
        e.inspect(id, "{{json .HostConfig.BlkioDeviceReadBps}}"),
        format!(r#"[{{"Path":"/dev/{dev}","Rate":1048576}}]"#)
    );
    e.ok(&["rm", "-f", id]);

    // what this host or engine cannot apply: refused with one line, nothing made
    for (flags, says) in [
        (&["--storage-opt", "size=1G"][..], "--storage-opt"),
        (&["--gpus", "all"], "DeviceRequests"),
        (&["--cpu-rt-runtime", "950"], "CpuRealtime"),
        (&["--cpu-count", "2"], "Windows only"),
        (&["--io-maxiops", "100"], "Windows only"),
        (&["--isolation", "hyperv"], "invalid isolation"),
        (&["--volume-driver", "other", "-v", "named:/x"], "volume driver"),
        (&["--device-read-bps", "/dev/null:1mb"], "not a block device"),
        (&["--device-read-bps", "/dev/nonesuch:1mb"], "/dev/nonesuch"),
        (&["--blkio-weight-device", "/dev/null:1"], "invalid weight for device"),
        (&["--device-write-bps", "sda:1mb"], "bad format"),
        (&["--gpus", "count=x"], "invalid count"),
        (&["-a", "stdnothing"], "valid streams are STDIN, STDOUT and STDERR"),
        (&["-d", "-a", "stdout"], "cannot specify both --attach and --detach"),
    ] {
        let mut args = vec!["run", "--rm", "--network", "none"];
        args.extend_from_slice(flags);
        args.extend(["busybox", "true"]);
        let out = e.engine(&args);
        // the reason on the first line (a flag the CLI itself refuses is followed by its usage hint)
        let first = stderr(&out).lines().next().unwrap_or_default().to_string();
        assert!(!out.status.success() && first.contains(says), "{flags:?}: {}{}", stdout(&out), stderr(&out));
        assert_eq!(e.ok(&["ps", "-aq"]).trim(), "", "{flags:?} left a container");
    }
    assert_eq!(e.ok(&["volume", "ls", "-q"]).trim(), "");
    e.ok(&["run", "--rm", "--network", "none", "--disable-content-trust", "busybox", "true"]);

    // -a: only the streams named
    let out = e.engine(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-a",
        "stderr",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2",
    ]);
    assert_eq!((stdout(&out).as_str(), stderr(&out).as_str()), ("", "err\n"));

    // --sig-proxy: the command's signals reach the container (on by default), or end the command
    let script = "trap 'echo got TERM; exit 7' TERM; echo ready; while true; do sleep 0.1; done";
    for proxy in ["--sig-proxy=true", "--sig-proxy=false"] {
        let mut child = Command::new(bin("engine"))
            .args(["-H", &e.host(), "run", "--name", "sig", "--network", "none", proxy, "busybox", "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line, "ready\n");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let status = child.wait().unwrap();
        if proxy == "--sig-proxy=true" {
            std::io::BufRead::read_line(&mut out, &mut line).unwrap();
            assert_eq!((status.code(), line.as_str()), (Some(7), "ready\ngot TERM\n"));
            assert_eq!(e.inspect("sig", "{{.State.ExitCode}}"), "7");
        } else {
            // the command ended by the signal; the container runs on
            assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(15));
            assert_eq!(e.inspect("sig", "{{.State.Status}}"), "running");
        }
        e.ok(&["rm", "-f", "sig"]);
    }

    // --use-api-socket: the engine's socket in the container and the CLI's credentials
    let config = tempfile::tempdir().unwrap();
    std::fs::write(config.path().join("config.json"), r#"{"auths":{"127.0.0.1:5999":{"auth":"dTpw"}}}"#).unwrap();
    let out = Command::new(bin("engine"))
        .env("DOCKER_CONFIG", config.path())
        .args(["-H", &e.host(), "run", "--rm", "--network", "none", "--use-api-socket", "busybox", "sh", "-c"])
        .arg("test -S /var/run/docker.sock && echo socket; echo $DOCKER_CONFIG; cat /run/secrets/docker/config.json; stat -c %a /run/secrets/docker/config.json")
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(
        text.starts_with("socket\n/run/secrets/docker\n")
            && text.contains(r#""auth": "dTpw""#)
            && text.ends_with("600\n"),
        "{text}"
    );
    e.assert_clean();
}

#[test]
fn images_through_the_cli() {
    let e = Engined::start();
    e.import_busybox("busybox");
    let images = e.ok(&["images"]);
    assert!(images.starts_with("REPOSITORY   TAG      IMAGE ID"), "{images}");
    assert!(images.contains("busybox      latest"), "{images}");
    let id = e.ok(&["images", "-q"]).trim().to_string();
    assert_eq!(id.len(), 12);
    e.ok(&["tag", "busybox", "mine/bb:v1"]);
    assert!(e.ok(&["images", "mine/bb"]).contains("v1"));
    assert_eq!(e.ok(&["image", "inspect", "-f", "{{.Config.Cmd}}", "mine/bb:v1"]).trim(), "[sh]");
    assert!(e.ok(&["history", "busybox"]).contains("engine import"));

    let saved = e.dir.path().join("saved.tar");
    e.ok(&["save", "-o", saved.to_str().unwrap(), "mine/bb:v1"]);
    assert!(e.ok(&["rmi", "mine/bb:v1"]).contains("Untagged: mine/bb:v1"));
    let rmi = e.ok(&["rmi", "busybox"]);
    assert!(rmi.contains("Deleted: sha256:"), "{rmi}");
    assert_eq!(e.ok(&["images", "-q"]).trim(), "");
    assert_eq!(e.ok(&["load", "-i", saved.to_str().unwrap()]), "Loaded image: mine/bb:v1\n");
    assert_eq!(e.ok(&["images", "-q"]).trim(), id);
    assert_eq!(e.ok(&["run", "--rm", "mine/bb:v1", "echo", "loaded"]), "loaded\n");

    // an image in use is not removed; a container keeps it
    e.ok(&["create", "--name", "user", "mine/bb:v1"]);
    assert!(e.fails(&["rmi", "mine/bb:v1"]).contains("container is using"));
    e.ok(&["rm", "user"]);
    e.ok(&["rmi", "mine/bb:v1"]);
    e.assert_clean();
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let e = Engined::start();
    e.import_busybox("busybox");
    e.ok(&["create", "--name", "taken", "busybox"]);
    let before = (e.ok(&["ps", "-aq"]), e.snapshots(), e.mounts());
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--pull", "never", "nosuch"], "No such image: nosuch"),
        // a pull that cannot reach the registry (the tests' daemons have no way out)
        (&["run", "nosuch"], "Unable to find image 'nosuch:latest' locally"),
        (&["create", "--pull", "never", "nosuch"], "No such image: nosuch"),
        (&["run", "Bad:Ref"], "invalid reference format"),
        (&["run", "--name", "taken", "busybox"], "is already in use"),
        (&["run", "--name", "bad name", "busybox"], "Invalid container name"),
        (&["run", "-m", "1k", "busybox"], "Minimum memory limit"),
        (&["run", "--restart", "sometimes", "busybox"], "invalid restart policy"),
        (&["run", "--cap-add", "NOT_A_CAP", "busybox"], "invalid capability"),
        (&["run", "-v", "relative:path", "busybox"], "invalid volume specification"),
        (&["run", "-v", "/does/not/exist:/x", "busybox"], "bind source path does not exist"),
        (&["run", "--network", "nonet", "busybox"], "network nonet not found"),
        (&["run", "-w", "relative", "busybox"], "needs to be an absolute path"),
        (&["run", "-u", "nobody-here", "busybox"], "unable to find user nobody-here"),
        (&["run", "--cpus", "64", "busybox"], "Range of CPUs"),
        (&["run", "--device", "/etc/passwd", "busybox"], "not a device node"),
        (&["run", "--device", "/dev/nosuch", "busybox"], "adding custom device \"/dev/nosuch\""),
        (&["run", "--device", "/dev/null:/x:rwx", "busybox"], "invalid device specification"),
        (&["run", "--device-cgroup-rule", "x 1:3 r", "busybox"], "invalid device cgroup rule format"),
        (&["run", "--device-cgroup-rule", "c 1 r", "busybox"], "invalid device cgroup rule format"),
        (&["start", "nosuch"], "No such container: nosuch"),
        (&["rmi", "nosuch"], "No such image: nosuch"),
        (&["tag", "busybox", "Bad:Tag:x"], "invalid"),
        (&["load", "-i", "/dev/null"], "invalid image archive"),
    ];
    for (args, says) in cases {
        let err = e.fails(args);
        assert!(err.contains(says), "engine {args:?}: {err:?} does not say {says:?}");
        assert_eq!(
            err.trim().lines().filter(|l| !l.starts_with("Unable to find image")).count(),
            1,
            "engine {args:?}: not one line: {err:?}"
        );
        assert_eq!((e.ok(&["ps", "-aq"]), e.snapshots(), e.mounts()), before, "engine {args:?} changed state");
    }
    // Names past the bound (a volume's name is a directory's name: NAME_MAX) are refused up
    // front with a short message; one at the bound is taken.
    let networks = e.ok(&["network", "ls", "-q"]);
    let volumes = e.ok(&["volume", "ls", "-q"]);
    let long = "n".repeat(10_000);
    let over = "v".repeat(256);
    let at_bound = "c".repeat(255);
    let over_volume = format!("{over}:/data");
    let cases: [(Vec<&str>, &str); 5] = [
        (vec!["network", "create", &long], "invalid network name"),
        (vec!["create", "--name", &over, "busybox"], "Invalid container name"),
        (vec!["create", "-v", &over_volume, "busybox"], "at most 255 are allowed"),
        (vec!["volume", "create", &over], "at most 255 are allowed"),
        (vec!["rename", "taken", &long], "Invalid container name"),
    ];
    for (args, says) in &cases {
        let err = e.fails(args);
        assert!(err.contains(says) && err.contains("bytes long"), "engine {args:?}: {err:?} does not say {says:?}");
        assert_eq!(err.trim().lines().count(), 1, "engine {args:?}: not one line: {err:?}");
        assert!(err.len() < 300, "engine {args:?}: the message repeats the whole name: {err:?}");
        assert_eq!((e.ok(&["ps", "-aq"]), e.snapshots(), e.mounts()), before, "engine {args:?} changed state");
        assert_eq!(e.ok(&["network", "ls", "-q"]), networks, "engine {args:?} made a network");
        assert_eq!(e.ok(&["volume", "ls", "-q"]), volumes, "engine {args:?} made a volume");
    }
    e.ok(&["create", "--name", &at_bound, "busybox"]);
    e.ok(&["rm", &at_bound]);

    // A body that is not JSON, straight to the API.
    let reply = raw_request(&e, "POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{not json");
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("\"message\":\"invalid JSON"), "{reply}");
    let reply = raw_request(
        &e,
        "GET /v1.41/containers/taken/logs?stdout=1&since=1.2%C3%A9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 400") && reply.contains("invalid timestamp"), "{reply}");
    // null where a value is expected reads as unset, as Docker's Go decoding has it
    let body = r#"{"Image":"busybox","User":null,"Hostname":null,"Tty":null,"HostConfig":{"Binds":null,"NetworkMode":null,"Privileged":null}}"#;
    let reply = raw_request(&e, &format!("POST /v1.41/containers/create?name=nulls HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()));
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
    e.ok(&["rm", "nulls"]);
    let reply = raw_request(&e, "GET /v1.12/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 400") && reply.contains("too old"), "{reply}");
    assert_eq!((e.ok(&["ps", "-aq"]), e.snapshots(), e.mounts()), before);

    let down = std::process::Command::new(bin("engine"))
        .args(["-H", "unix:///nonexistent/engine.sock", "ps"])
        .output()
        .unwrap();
    assert!(stderr(&down).contains("Is engined running?"), "{}", stderr(&down));
    e.ok(&["rm", "taken"]);
}

/// `--device` puts host device nodes in the container (one, or every node under a directory)
/// with just the access asked for, and `--device-cgroup-rule` lets a container use the nodes it
/// makes itself: both enforced by the devices cgroup, as the container sees it.
#[test]
fn devices_and_device_cgroup_rules_reach_the_container() {
    use std::os::unix::fs::FileTypeExt;
    let fuse = std::path::Path::new("/dev/fuse");
    assert!(fuse.metadata().unwrap().file_type().is_char_device(), "this machine's /dev/fuse");
    let e = Engined::start();
    e.import_busybox("busybox");
    // read-only access: opening for reading works, for writing the cgroup refuses
    let out = e.ok(&[
        "run",
        "--rm",
        "--device",
        "/dev/fuse:/dev/xfuse:r",
        "busybox",
        "sh",
        "-c",
        "ls -l /dev/xfuse; exec 3</dev/xfuse && echo read-ok; (exec 4>/dev/xfuse) 2>&1 || echo write-denied",
    ]);
    assert!(out.contains("10, 229") && out.starts_with('c'), "{out}");
    assert!(
        out.contains("read-ok") && out.contains("write-denied") && out.contains("Operation not permitted"),
        "{out}"
    );
    let out = e.ok(&["run", "--rm", "--device", "/dev/fuse", "busybox", "sh", "-c", "exec 3<>/dev/fuse && echo rw-ok"]);
    assert!(out.contains("rw-ok"), "{out}");
    // a directory: every node under it, at the same place under the container's path
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let node = |path: &std::path::Path, major: u64, minor: u64| {
        nix::sys::stat::mknod(
            path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(major, minor),
        )
        .unwrap()
    };
    node(&dir.path().join("null"), 1, 3);
    node(&dir.path().join("sub/fuse"), 10, 229);
    std::fs::write(dir.path().join("not-a-node"), "x").unwrap();
    let mapping = format!("{}:/dev/mine", dir.path().display());
    let out = e.ok(&[
        "run",
        "--rm",
        "--device",
        &mapping,
        "busybox",
        "sh",
        "-c",
        "ls /dev/mine /dev/mine/sub; exec 3<>/dev/mine/sub/fuse && echo dir-ok",
    ]);
    assert!(out.contains("null") && out.contains("fuse") && out.contains("dir-ok"), "{out}");
    assert!(!out.contains("not-a-node"), "{out}");
    // a node the container makes itself: refused, unless a rule allows its numbers
    let mknod = "mknod /tmp/f c 10 229 && exec 3<>/tmp/f && echo rule-ok";
    let out = e.engine(&["run", "--rm", "busybox", "sh", "-c", mknod]);
    assert!(!stdout(&out).contains("rule-ok") && stderr(&out).contains("Operation not permitted"), "{out:?}");
    let out = e.ok(&["run", "--rm", "--device-cgroup-rule", "c 10:* rw", "busybox", "sh", "-c", mknod]);
    assert!(out.contains("rule-ok"), "{out}");
    // inspect reports them as given
    e.ok(&[
        "create",
        "--name",
        "dev",
        "--device",
        "/dev/fuse:/dev/xfuse:r",
        "--device-cgroup-rule",
        "c 10:* rw",
        "busybox",
    ]);
    let inspect: serde_json::Value = serde_json::from_str(&e.ok(&["inspect", "dev"])).unwrap();
    let hc = &inspect[0]["HostConfig"];
    assert_eq!(
        hc["Devices"],
        serde_json::json!([{"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/xfuse", "CgroupPermissions": "r"}])
    );
    assert_eq!(hc["DeviceCgroupRules"], serde_json::json!(["c 10:* rw"]));
    e.ok(&["rm", "dev"]);
}

/// `pause` freezes every process of a container and `unpause` thaws them, as Docker's users
/// see it: the state, `ps`, the events, what a paused container refuses, and a paused container
/// stopped, killed or removed with `-f` (the signal is delivered: it is thawed after it).
#[test]
fn pause_freezes_a_container_and_unpause_thaws_it() {
    let e = Engined::start();
    e.import_busybox("busybox");
    let since = unix_secs();
    let ticker = ["busybox", "sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /count; usleep 20000; done"];
    let id = e.ok(&[&["run", "-d", "--name", "ticker"][..], &ticker[..]].concat()).trim().to_string();
    let count = e.data_root().join("image/snapshots").join(&id).join("rootfs/count");
    let read = || std::fs::read_to_string(&count).unwrap_or_default();
    wait_for("the container counts", || read().trim().parse::<u64>().is_ok_and(|n| n > 1));
    assert!(e.fails(&["unpause", "ticker"]).contains(&format!("Container {id} is not paused")));

    e.ok(&["pause", "ticker"]);
    assert_eq!(e.inspect("ticker", "{{.State.Status}} {{.State.Running}} {{.State.Paused}}"), "paused true true");
    assert!(e.ok(&["ps", "--format", "{{.Names}} {{.Status}}"]).trim().ends_with("(Paused)"));
    assert_eq!(e.ok(&["ps", "-q", "--filter", "status=paused"]).trim(), &id[..12]);
    // the kernel says every process of it is frozen (v1 freezer, or v2 cgroup.events)
    let frozen_state = || match e.cgroup_file(&id, "freezer.state") {
        Some(state) => state == "FROZEN",
        None => e.cgroup_file(&id, "cgroup.events").is_some_and(|ev| ev.lines().any(|l| l == "frozen 1")),
    };
    assert!(frozen_state(), "a paused container went on counting: its cgroup is not frozen");
    let frozen = read();
    assert!(e.fails(&["pause", "ticker"]).contains("is already paused"));
    assert!(e.fails(&["exec", "ticker", "true"]).contains("is paused"));
    assert!(e.fails(&["start", "ticker"]).contains("cannot start a paused container"));
    assert!(e.fails(&["rm", "ticker"]).contains("cannot remove a paused container"));
    assert_eq!(e.state("ticker"), "paused", "a refused operation changed the container");

    e.ok(&["unpause", "ticker"]);
    assert_eq!(e.inspect("ticker", "{{.State.Status}} {{.State.Paused}}"), "running false");
    assert!(!frozen_state(), "an unpaused container is still frozen");
    wait_for("the container counts again", || read() != frozen);

    // a paused container stops (sh as PID 1 ignores SIGTERM: killed after -t), is killed, and is
    // removed with -f
    e.ok(&["pause", "ticker"]);
    e.ok(&["stop", "-t", "1", "ticker"]);
    assert_eq!(e.inspect("ticker", "{{.State.Status}} {{.State.ExitCode}}"), "exited 137");
    e.ok(&["start", "ticker"]);
    e.ok(&["pause", "ticker"]);
    e.ok(&["kill", "ticker"]);
    assert_eq!(e.ok(&["wait", "ticker"]).trim(), "137");
    e.ok(&["start", "ticker"]);
    e.ok(&["pause", "ticker"]);
    e.ok(&["rm", "-f", "ticker"]);
    assert!(e.fails(&["inspect", "ticker"]).contains("No such object"));
    assert!(e.fails(&["pause", "ticker"]).contains("No such container"));

    assert_eq!(
        e.event_actions(since, &["event=pause", "event=unpause"]),
        ["pause", "unpause", "pause", "unpause", "pause", "unpause", "pause", "unpause"]
    );
    e.assert_clean();
}

/// `--storage-driver vfs` (copies, no overlay mount) and `--bridge none` (no default network),
/// as dockerd's: containers run on copied root filesystems and name their network.
#[test]
fn vfs_snapshots_and_no_default_bridge() {
    let e = Engined::start_with(&[], &["--storage-driver", "vfs", "--bridge-name", "none"]);
    e.import_busybox("busybox");
    assert!(e.ok(&["info"]).contains("Storage Driver: vfs"));
    assert_eq!(
        e.ok(&["network", "ls", "--format", "{{.Name}}"]).split_whitespace().collect::<Vec<_>>(),
        ["host", "none"]
    );
    assert!(e.fails(&["run", "--rm", "busybox", "true"]).contains("network bridge not found"));
    assert_eq!(e.ok(&["ps", "-aq"]).trim(), "", "a refused run left a container");
    e.ok(&[
        "run",
        "--name",
        "copied",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo in > /f; cat /f; ls /proc/net/dev",
    ]);
    assert_eq!(e.ok(&["logs", "copied"]), "in\n/proc/net/dev\n");
    assert_eq!(e.inspect("copied", "{{.GraphDriver.Name}} {{.Driver}}"), "vfs vfs");
    let id = e.inspect("copied", "{{.Id}}");
    let rootfs = e.data_root().join("image/snapshots").join(&id).join("rootfs");
    assert_eq!(std::fs::read_to_string(rootfs.join("f")).unwrap(), "in\n", "the copy is the container's root");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&id), "a vfs snapshot is not a mount");
    e.ok(&["start", "-a", "copied"]);
    e.ok(&["rm", "copied"]);
    assert!(!rootfs.exists());
    e.assert_clean();
}

/// `container prune` removes the stopped containers its filters pick, `image prune` the
/// dangling images (with -a every image no container uses), as Docker's.
#[test]
fn prune_removes_what_nothing_runs_or_uses() {
    let e = Engined::start();
    e.import_busybox("busybox");
    let old = e.ok(&["create", "--name", "old", "--label", "keep=no", "busybox", "true"]).trim().to_string();
    e.ok(&[
        "run",
        "--name",
        "done",
        "--label",
        "keep=yes",
        "busybox",
        "sh",
        "-c",
        "head -c 100000 /dev/zero > /written",
    ]);
    let done = e.inspect("done", "{{.Id}}");
    e.ok(&["run", "-d", "--name", "up", "busybox", "sleep", "1000"]);
    let names = || {
        let mut n: Vec<String> = e.ok(&["ps", "-a", "--format", "{{.Names}}"]).lines().map(str::to_string).collect();
        n.sort();
        n
    };
    assert!(e.fails(&["container", "prune"]).contains("pass -f"));
    assert_eq!(names(), ["done", "old", "up"], "a prune without -f removed something");

    let out = e.ok(&["container", "prune", "-f", "--filter", "label=keep=no"]);
    assert_eq!(out, format!("Deleted Containers:\n{old}\n\nTotal reclaimed space: 0B\n"));
    assert_eq!(e.ok(&["container", "prune", "-f", "--filter", "until=1h"]), "Total reclaimed space: 0B\n");
    assert_eq!(e.ok(&["container", "prune", "-f", "--filter", "label!=keep"]), "Total reclaimed space: 0B\n");
    assert_eq!(names(), ["done", "up"]);
    let out = e.ok(&["container", "prune", "-f"]);
    assert!(out.starts_with(&format!("Deleted Containers:\n{done}\n")) && !out.ends_with(" 0B\n"), "{out}");
    assert_eq!(names(), ["up"], "the running container stays");
    assert!(e.fails(&["container", "prune", "-f", "--filter", "until=someday"]).contains("invalid until filter"));

    // an image whose name moved to another is dangling; one a container uses stays
    let tar = e.dir.path().join("rootfs-busybox.tar");
    let first = e.inspect("busybox", "{{.Id}}");
    e.ok(&["import", "--change", "CMD [\"true\"]", tar.to_str().unwrap(), "busybox"]);
    assert_ne!(e.inspect("busybox", "{{.Id}}"), first);
    e.ok(&["import", tar.to_str().unwrap(), "spare"]);
    // `up` was made from the first image: it is in use, and stays
    assert_eq!(e.ok(&["image", "prune", "-f"]), "Total reclaimed space: 0B\n");
    e.ok(&["rm", "-f", "up"]);
    let out = e.ok(&["image", "prune", "-f"]);
    assert!(out.starts_with(&format!("Deleted Images:\ndeleted: {first}\n")) && !out.ends_with(" 0B\n"), "{out}");
    assert_eq!(e.ok(&["images", "-q"]).lines().count(), 2, "the named images stay");
    let out = e.ok(&["image", "prune", "-a", "-f"]);
    assert!(out.contains("untagged: busybox:latest") && out.contains("untagged: spare:latest"), "{out}");
    assert_eq!(e.ok(&["images", "-q"]).trim(), "");
    e.assert_clean();
}

/// Health checks as Docker's: `--health-*` run in the container while it runs; the verdict in
/// inspect, `ps` and its `health` filter, `health_status` events; a check that overruns its
/// timeout fails; each check is a trace of its own, its exec under it.
#[test]
fn health_checks_judge_a_running_container() {
    let e = Engined::start();
    e.import_busybox("busybox");
    let since = unix_secs();
    let check = ["--health-cmd", "test -f /ok && echo fine", "--health-interval", "100ms", "--health-retries", "2"];
    let run = [&["run", "-d", "--name", "probed"][..], &check[..], &["busybox", "sleep", "1000"][..]].concat();
    let id = e.ok(&run).trim().to_string();
    let shown: serde_json::Value = serde_json::from_str(&e.inspect("probed", "{{json .Config.Healthcheck}}")).unwrap();
    let asked = serde_json::json!({"Test": ["CMD-SHELL", "test -f /ok && echo fine"], "Interval": 100_000_000,
        "Timeout": 0, "StartPeriod": 0, "StartInterval": 0, "Retries": 2});
    assert_eq!(shown, asked);
    let health = || e.inspect("probed", "{{.State.Health.Status}}");
    wait_for("unhealthy after two failed checks", || health() == "unhealthy");
    assert!(e.inspect("probed", "{{.State.Health.FailingStreak}}").parse::<i64>().unwrap() >= 2);
    assert_eq!(e.ok(&["ps", "-q", "--filter", "health=unhealthy"]).trim(), &id[..12]);
    assert!(e.ok(&["ps", "--format", "{{.Status}}"]).contains("(unhealthy)"));
    e.ok(&["exec", "probed", "touch", "/ok"]);
    wait_for("healthy once the check passes", || health() == "healthy");
    assert_eq!(e.inspect("probed", "{{.State.Health.FailingStreak}}"), "0");
    let log = |name: &str| -> Vec<(i64, String)> {
        let log: serde_json::Value = serde_json::from_str(&e.inspect(name, "{{json .State.Health.Log}}")).unwrap();
        let entries = log.as_array().cloned().unwrap_or_default();
        entries.iter().map(|l| (l["ExitCode"].as_i64().unwrap(), l["Output"].as_str().unwrap().to_string())).collect()
    };
    assert!(log("probed").contains(&(0, "fine\n".to_string())), "{:?}", log("probed"));
    assert!(e.ok(&["ps", "--format", "{{.Status}}"]).contains("(healthy)"));
    assert_eq!(e.ok(&["ps", "-q", "--filter", "health=none"]).trim(), "");
    let events = e.ok(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &(unix_secs() + 1).to_string(),
        "--filter",
        "container=probed",
        "--format",
        "{{.Action}}",
    ]);
    assert!(events.contains("health_status: unhealthy\nhealth_status: healthy\n"), "{events}");
    // a check is a trace of its own, its exec in it
    let trace = stdout(&e.engine(&["trace", "--json", "--op", "health", "probed"]));
    assert!(trace.contains("daemon.health") && trace.contains("lifecycle.Tasks/Exec"), "{trace}");

    // a stopped container is not checked; started again, it starts over
    e.ok(&["stop", "-t", "0", "probed"]);
    e.ok(&["start", "probed"]);
    assert!(["starting", "healthy"].contains(&health().as_str()));
    e.ok(&["rm", "-f", "probed"]);

    // a check that overruns its timeout fails
    e.ok(&[
        "run",
        "-d",
        "--name",
        "slow",
        "--health-cmd",
        "sleep 10",
        "--health-interval",
        "100ms",
        "--health-timeout",
        "200ms",
        "--health-retries",
        "1",
        "busybox",
        "sleep",
        "1000",
    ]);
    wait_for("the slow check to fail", || e.inspect("slow", "{{.State.Health.Status}}") == "unhealthy");
    let timed_out = (-1, "Health check exceeded timeout (200ms)".to_string());
    assert!(log("slow").contains(&timed_out), "{:?}", log("slow"));
    assert!(e.fails(&["run", "--no-healthcheck", "--health-cmd", "true", "busybox", "true"]).contains("conflicts"));
    e.ok(&["rm", "-f", "slow"]);
    e.assert_clean();
}

fn raw_request(e: &Engined, req: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&e.sock).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Whether any thread of process `pid` is running or runnable (state R).
fn any_thread_running(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten().any(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .is_ok_and(|st| st.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('R')))
    })
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// A connection that sent part of a request's header and then nothing more.
fn stalled_connection(e: &Engined) -> std::os::unix::net::UnixStream {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(&e.sock).unwrap();
    s.write_all(b"GET /_ping HTTP/1.1\r\nHost: engine\r\n").unwrap();
    s
}

/// A client that sends a request's header and part of its body, then nothing: past
/// `--api-body-timeout` its request fails with a clear error, nothing is made, and the
/// connection closes. A client that waits longer than that for an answer without sending
/// anything (`wait`) is not cut.
#[test]
fn a_stalled_request_body_is_cut_and_a_long_wait_is_not() {
    use std::io::{Read, Write};
    let e = Engined::start_with(&[], &["--api-body-timeout", "2"]);
    e.import_busybox("busybox");
    let mut s = std::os::unix::net::UnixStream::connect(&e.sock).unwrap();
    s.write_all(
        b"POST /containers/create?name=stalled HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"Image\":",
    )
    .unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("sent nothing of its request body for 2 s"), "{answer}");
    assert!(!e.engine(&["inspect", "stalled"]).status.success(), "a container was made of half a request");

    e.ok(&["run", "-d", "--name", "slow", "busybox", "sh", "-c", "sleep 4; exit 3"]);
    assert_eq!(e.ok(&["wait", "slow"]).trim(), "3");
}

#[test]
fn ten_thousand_stalled_connections_neither_hold_nor_slow_engined() {
    // 10,000 connections need more descriptors than the usual soft limit of 1024
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(hard >= 10_500, "this test needs a hard descriptor limit of 10,500 or more, not {hard}");
    // a timeout well beyond the time 10,000 connections take to open on a loaded machine (the
    // other tests of this file run beside it): none is closed before all are held
    let e = Engined::start_with(&[], &["--api-header-timeout", "30"]);
    let pid = e.child.as_ref().unwrap().id();
    wait_for("engined to answer", || raw_request(&e, "GET /_ping HTTP/1.0\r\n\r\n").contains("OK"));
    let baseline = open_fds(pid);
    let log_path = e.dir.path().join("engined.log");
    let log_size = || std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
    let log_before = log_size();
    let stalled: Vec<_> = (0..10_000).map(|_| stalled_connection(&e)).collect();
    // (within a few of the baseline either way: it may hold the ping's closing socket, or a
    // trace segment being written)
    assert!(
        wait_until(std::time::Duration::from_secs(30), || open_fds(pid) + 5 >= baseline + 10_000),
        "timed out waiting for engined to hold the stalled connections ({} open, baseline {baseline})",
        open_fds(pid)
    );
    // It answers others meanwhile, and its threads rest (a spinning loop keeps one running).
    let asked = std::time::Instant::now();
    assert!(raw_request(&e, "GET /_ping HTTP/1.0\r\n\r\n").contains("OK"));
    eprintln!("/_ping with 10,000 stalled connections answered in {:?}", asked.elapsed());
    let mut quiet_samples = 0;
    wait_for("engined's threads to rest beside the stalled connections", || {
        quiet_samples = if any_thread_running(pid) { 0 } else { quiet_samples + 1 };
        quiet_samples >= 5
    });
    // The header timeout closes them: their descriptors are released, quietly.
    assert!(
        wait_until(std::time::Duration::from_secs(90), || open_fds(pid) <= baseline + 5),
        "timed out waiting for the stalled connections to be closed"
    );
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut &stalled[0], &mut buf).unwrap_or(0);
    assert!(n == 0 || buf.starts_with(b"HTTP/1.1 408"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    assert!(log_size() - log_before < 1 << 20, "engined logged {} bytes", log_size() - log_before);
    drop(stalled);
    assert!(raw_request(&e, "GET /_ping HTTP/1.0\r\n\r\n").contains("OK"));
}

#[test]
fn connections_past_the_api_limit_wait_for_a_place() {
    let e = Engined::start_with(&[], &["--max-api-connections", "20", "--api-header-timeout", "2"]);
    let pid = e.child.as_ref().unwrap().id();
    wait_for("engined to answer", || raw_request(&e, "GET /_ping HTTP/1.0\r\n\r\n").contains("OK"));
    let baseline = open_fds(pid);
    let stalled: Vec<_> = (0..20).map(|_| stalled_connection(&e)).collect();
    // engined says so once it holds all 20 and waits for a place before its next accept.
    // (Not counted in descriptors: the baseline may still hold the ping's closing socket.)
    let log = || std::fs::read_to_string(e.dir.path().join("engined.log")).unwrap_or_default();
    wait_for("engined to say it is at its limit", || log().contains("20 API connections open"));
    // The 21st waits (unaccepted) and is answered once the stalled ones time out.
    let sock = e.sock.clone();
    let ping = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.write_all(b"GET /_ping HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    assert!(open_fds(pid) <= baseline + 21, "engined accepted past its limit");
    assert!(ping.join().unwrap().contains("OK"));
    // It was served only once a place was free: engined had closed a stalled one by then.
    let closed_by_engined = stalled.iter().any(|s| {
        use std::io::Read;
        s.set_nonblocking(true).unwrap();
        !matches!((&*s).read(&mut [0u8; 64]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    });
    assert!(closed_by_engined, "the 21st connection was served while 20 were held");
    assert_eq!(log().matches("API connections open").count(), 1, "{}", log());
    drop(stalled);
}

#[test]
fn an_operation_whose_client_goes_away_runs_to_its_end() {
    use std::io::Write;
    let e = Engined::start();
    e.import_busybox("busybox");
    let seconds = format!("8{}", std::process::id());
    let ids: Vec<String> = (0..4)
        .map(|i| {
            let name = format!("abandoned{i}");
            e.ok(&["create", "--network", "none", "--name", &name, "busybox", "sleep", &seconds]).trim().to_string()
        })
        .collect();
    // Each start is sent and its connection closed at once, as a client killed mid-call.
    // engined is stopped meanwhile, so it reads each request and the end of its connection
    // together (the harder case: nothing was under way yet when the client left).
    let pid = e.child.as_ref().unwrap().id() as i32;
    // SAFETY: signals to the engined this test started, by pid.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let sent: Vec<_> = ids
        .iter()
        .map(|id| {
            let mut s = std::os::unix::net::UnixStream::connect(&e.sock);
            if let Ok(s) = &mut s {
                let _ = write!(s, "POST /containers/{id}/start HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
            }
            s
        })
        .collect();
    drop(sent);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // Each container ends up running, with its own process, as the record says.
    for id in &ids {
        wait_for("the abandoned start to finish", || e.state(id) != "created");
        assert_eq!(e.state(id), "running");
        let pid: u32 = e.inspect(id, "{{.State.Pid}}").parse().unwrap();
        assert!(processes_running(&["sleep", &seconds]).contains(&pid), "{id}");
    }
    let mut rm = vec!["rm", "-f"];
    rm.extend(ids.iter().map(String::as_str));
    e.ok(&rm);
    assert!(processes_running(&["sleep", &seconds]).is_empty());
    e.assert_clean();
}

#[test]
fn connections_past_the_descriptor_limit_wait_without_spinning_and_are_served_after() {
    let e = Engined::start();
    let pid = e.child.as_ref().unwrap().id();
    wait_for("engined to answer", || raw_request(&e, "GET /_ping HTTP/1.0\r\n\r\n").contains("OK"));
    let baseline = open_fds(pid);
    // engined's descriptors limited to what it holds plus a few, then 300 idle connections:
    // accept meets EMFILE.
    let limit = format!("--nofile={}:{}", baseline + 40, baseline + 40);
    let out = std::process::Command::new("prlimit").args(["--pid", &pid.to_string(), &limit]).output().unwrap();
    assert!(out.status.success(), "prlimit: {}", stderr(&out));
    let held: Vec<std::os::unix::net::UnixStream> =
        (0..300).map(|_| std::os::unix::net::UnixStream::connect(&e.sock).unwrap()).collect();
    let log = || std::fs::read_to_string(e.dir.path().join("engined.log")).unwrap_or_default();
    wait_for("engined to run out of descriptors", || log().contains("accept:"));
    // Out of them, engined waits rather than spins: its threads come to rest (a spinning
    // accept loop keeps one running for good), and it says so once.
    let mut quiet_samples = 0;
    wait_for("engined's threads to rest while out of descriptors", || {
        quiet_samples = if any_thread_running(pid) { 0 } else { quiet_samples + 1 };
        quiet_samples >= 5
    });
    assert_eq!(log().matches("accept:").count(), 1, "{}", log());
    // The connections close: their descriptors are released and engined answers again.
    drop(held);
    wait_for("engined to answer again", || {
        std::os::unix::net::UnixStream::connect(&e.sock).is_ok()
            && raw_request(&e, "GET /_ping HTTP/1.0\r\n\r\n").contains("OK")
    });
    wait_for("the descriptors to be released", || open_fds(pid) <= baseline + 5);
    assert!(log().contains("accepting connections again"), "{}", log());
}

#[test]
fn containers_survive_kill9_of_engined_and_lifecycled() {
    let mut e = Engined::start();
    e.import_busybox("busybox");
    e.ok(&["run", "-d", "--name", "steady", "busybox", "sh", "-c", "echo one; while true; do sleep 0.1; done"]);
    e.ok(&["run", "-d", "--name", "short", "busybox", "sh", "-c", "sleep 1; exit 4"]);
    e.ok(&["run", "-d", "--name", "frozen", "busybox", "sleep", "1000"]);
    e.ok(&["pause", "frozen"]);
    let pid = e.inspect("steady", "{{.State.Pid}}");
    let short_pid = e.inspect("short", "{{.State.Pid}}");

    // kill -9 engined; the container runs on; a restarted engined finds it and the exit of
    // the other one that happened while it was down
    e.kill9();
    wait_for("short to exit while engined is down", || !std::path::Path::new(&format!("/proc/{short_pid}")).exists());
    e.restart();
    assert_eq!(e.state("steady"), "running");
    assert_eq!(e.inspect("steady", "{{.State.Pid}}"), pid);
    wait_for("the exit while engined was down", || e.state("short") == "exited");
    assert_eq!(e.inspect("short", "{{.State.ExitCode}}"), "4");
    // a wait after the restart gets that exit code, once and at once
    assert_eq!(e.ok(&["wait", "short"]).trim(), "4");
    // Each container's reconciliation is a trace of its own: what was found, what was done.
    let recovery = |name: &str| stdout(&e.engine(&["trace", "--json", "--op", "recover", name]));
    wait_for("steady's recovery trace", || recovery("steady").contains("adopted"));
    // (its spans reach the store on their own way, the shim's after its delete)
    let mut short = String::new();
    wait_for("short's recovery trace with its task's delete", || {
        short = recovery("short");
        short.contains("lifecycle.Tasks/Delete")
    });
    assert!(short.contains("daemon.recover") && short.contains("exit code 4"), "{short}");
    // (its task's delete in lifecycled is part of that trace, not one of its own)
    assert!(short.contains("exit recorded, task deleted") && short.contains("lifecycle.Tasks/Delete"), "{short}");
    assert!(e.ok(&["logs", "steady"]).starts_with("one\n"));
    // a paused container is found paused
    assert_eq!(e.state("frozen"), "paused");

    // kill -9 lifecycled: engined starts another; the container runs on and is still managed
    let lc = e.lifecycled_pid();
    // SAFETY: SIGKILL to the lifecycled of this test's engined, by pid.
    unsafe { libc::kill(lc, libc::SIGKILL) };
    wait_for("a new lifecycled", || e.lifecycled_pid() != lc);
    wait_for("the container to answer exec", || e.engine(&["exec", "steady", "true"]).status.success());
    assert_eq!(e.state("steady"), "running");
    assert!(e.ok(&["info"]).contains("Lifecycled Restarts: 1"));
    // the new lifecycled knows the paused one as paused: it thaws, and goes on
    e.ok(&["unpause", "frozen"]);
    assert_eq!(e.state("frozen"), "running");
    e.ok(&["rm", "-f", "frozen"]);
    e.ok(&["stop", "-t", "1", "steady"]);
    assert_eq!(e.state("steady"), "exited");
    e.ok(&["rm", "steady", "short"]);
    e.assert_clean();
}

#[test]
fn volumes_events_and_disk_usage() {
    let e = Engined::start();
    e.import_busybox("busybox");
    let since = unix_secs();
    assert_eq!(e.ok(&["volume", "create", "-l", "team=a", "data"]).trim(), "data");
    assert!(e.ok(&["volume", "ls"]).lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["local", "data"]));
    assert_eq!(
        e.ok(&["volume", "inspect", "-f", "{{.Name}} {{.Driver}} {{.Labels.team}}", "data"]).trim(),
        "data local a"
    );
    e.ok(&["run", "--name", "writer", "-v", "data:/d", "busybox", "sh", "-c", "echo x > /d/f"]);
    // the volume is where inspect says, under this engined's data-root
    let inspect: serde_json::Value = serde_json::from_str(&e.ok(&["inspect", "writer"])).unwrap();
    let source = inspect[0]["Mounts"][0]["Source"].as_str().unwrap_or_default().to_string();
    assert_eq!(source, e.data_root().join("volumes/data/_data").display().to_string());
    assert_eq!(std::fs::read_to_string(e.data_root().join("volumes/data/_data/f")).unwrap(), "x\n");
    assert!(e.fails(&["volume", "rm", "data"]).contains("volume is in use"));
    assert!(e
        .ok(&["system", "df"])
        .lines()
        .any(|l| l.starts_with("Local Volumes") && l.split_whitespace().nth(2) == Some("1")));
    e.ok(&["rm", "writer"]);
    e.ok(&["run", "--rm", "-v", "anon1:/d", "busybox", "true"]);
    assert_eq!(e.ok(&["volume", "ls", "-q"]).split_whitespace().collect::<Vec<_>>(), ["anon1", "data"]);
    e.ok(&["volume", "rm", "data"]);
    assert!(e.ok(&["volume", "prune", "-f"]).contains("anon1"));
    assert_eq!(e.ok(&["volume", "ls", "-q"]).trim(), "");
    assert!(e.fails(&["volume", "inspect", "data"]).contains("no such volume"));

    // the container's life as events, replayed from `since` up to now
    assert_eq!(e.event_actions(since, &["container=writer"]), ["create", "start", "die", "destroy"]);
    e.assert_clean();
}

#[test]
fn restart_policies_apply_when_engined_comes_back() {
    let mut e = Engined::start_with(&[], &["--live-restore=false"]);
    e.import_busybox("busybox");
    e.ok(&["run", "-d", "--name", "always", "--restart", "always", "busybox", "sleep", "1000"]);
    e.ok(&["run", "-d", "--name", "unless", "--restart", "unless-stopped", "busybox", "sleep", "1000"]);
    e.ok(&["run", "-d", "--name", "stopped", "--restart", "unless-stopped", "busybox", "sleep", "1000"]);
    e.ok(&["run", "-d", "--name", "plain", "busybox", "sleep", "1000"]);
    e.ok(&["stop", "-t", "0", "stopped"]);
    // Without live-restore, a clean stop of engined stops its containers; on start the
    // policies bring some back.
    let pid = e.child.as_ref().unwrap().id() as i32;
    // SAFETY: SIGTERM to this test's engined, by pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let _ = e.child.take().unwrap().wait();
    e.restart();
    wait_for("always and unless-stopped to run again", || {
        e.state("always") == "running" && e.state("unless") == "running"
    });
    assert_eq!(e.state("stopped"), "exited", "a user's stop is kept");
    assert_eq!(e.state("plain"), "exited", "no policy, no restart");
    e.ok(&["rm", "-f", "always", "unless", "stopped", "plain"]);
    e.assert_clean();
}

/// With live-restore (the default), a clean stop of engined (SIGTERM, as `systemctl stop` or an
/// upgrade sends it) leaves the running containers running, with their shims and lifecycled;
/// the next engined adopts them: same processes, exec, logs and stop work.
#[test]
fn live_restore_keeps_containers_running_across_a_clean_stop() {
    let mut e = Engined::start();
    e.import_busybox("busybox");
    assert_eq!(e.docker_ok(&["info", "--format", "{{.LiveRestoreEnabled}}"]).trim(), "true");
    e.ok(&["run", "-d", "--name", "kept", "busybox", "sh", "-c", "echo up; exec sleep 1000"]);
    let pid: i32 = e.inspect("kept", "{{.State.Pid}}").parse().unwrap();
    let lifecycled = e.lifecycled_pid();
    let engined = e.child.as_ref().unwrap().id() as i32;
    // SAFETY: SIGTERM to this test's engined, by pid.
    unsafe { libc::kill(engined, libc::SIGTERM) };
    let status = e.child.take().unwrap().wait().unwrap();
    assert!(status.success(), "engined exited with {status}");
    assert!(e.log_tail().contains("1 running containers stay running"), "{}", e.log_tail());
    assert!(pid_alive(pid), "the container's process went with engined");
    assert!(pid_alive(lifecycled), "lifecycled went with engined");
    e.restart();
    assert_eq!(e.state("kept"), "running");
    assert_eq!(e.inspect("kept", "{{.State.Pid}}"), pid.to_string(), "not the same process");
    assert_eq!(e.lifecycled_pid(), lifecycled, "lifecycled was not adopted");
    assert_eq!(e.ok(&["exec", "kept", "echo", "adopted"]).trim(), "adopted");
    assert_eq!(e.ok(&["logs", "kept"]).trim(), "up");
    e.ok(&["stop", "-t", "1", "kept"]);
    assert_eq!(e.state("kept"), "exited");
    assert!(!pid_alive(pid));
    e.ok(&["rm", "kept"]);
    e.assert_clean();
}

#[test]
fn concurrent_creates_get_distinct_generated_names() {
    let e = Engined::start();
    e.import_busybox("busybox");
    // many creates at once, none named: each gets a name of its own (no conflict between them;
    // 40 of 256 generated names collide most of the time without the reservation retry)
    let outs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..40).map(|_| s.spawn(|| e.engine(&["create", "busybox", "true"]))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &outs {
        assert!(o.status.success(), "{}", stderr(o));
    }
    let names = e.ok(&["ps", "-a", "--format", "{{.Names}}"]);
    let unique: std::collections::HashSet<&str> = names.lines().collect();
    assert_eq!(unique.len(), 40, "{names}");
    let ids: Vec<String> = outs.iter().map(|o| stdout(o).trim().to_string()).collect();
    let mut args = vec!["rm"];
    args.extend(ids.iter().map(String::as_str));
    e.ok(&args);
}

#[test]
fn concurrent_starts_under_a_fresh_cgroup_parent() {
    // the first starts make the cgroup parent together (and the last to go removes it): each
    // round starts from no parent, and every start must find a usable one (on cgroup v1 a new
    // cpuset parent is empty until filled; the runtime's unit test pins that case down, this
    // one drives the concurrency end to end)
    let e = Engined::start();
    e.import_busybox("busybox");
    for round in 0..3 {
        let outs: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| e.engine(&["run", "--rm", "--network", "none", "busybox", "true"])))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for o in &outs {
            assert!(o.status.success(), "round {round}: {}", stderr(o));
        }
    }
    assert_eq!(e.ok(&["ps", "-aq"]).trim(), "");
}

/// `diff`, `commit` and `export` of a running container, as dockerd answers them: its changes
/// without its mount points, an image of them the next container runs on (the caller's changes
/// merged over the container's config), its whole root filesystem as a tar; a bad commit makes
/// no image and leaves the container running.
#[test]
fn diff_commit_and_export_a_container() {
    let e = Engined::start();
    e.import_busybox("busybox");
    let script = "echo hi > /new && rm /etc/group && mkdir /home/user/d && echo x > /home/user/d/f && \
                  chmod 640 /home/user/d/f && echo ready > /tmp/ready && exec sleep 1000";
    e.ok(&["run", "-d", "--name", "src", "-e", "FROM_RUN=1", "busybox", "sh", "-c", script]);
    wait_for("the container's changes", || e.ok(&["diff", "src"]).contains("A /tmp/ready"));
    assert_eq!(
        e.ok(&["diff", "src"]).lines().collect::<Vec<_>>(),
        [
            "C /etc",
            "D /etc/group",
            "C /home/user",
            "A /home/user/d",
            "A /home/user/d/f",
            "A /new",
            "C /tmp",
            "A /tmp/ready"
        ]
    );

    // bad input: no image, the container runs on, unpaused
    let images_before = e.ok(&["images", "-aq"]);
    assert!(e.fails(&["commit", "nope", "x:1"]).contains("No such container: nope"));
    assert!(e.fails(&["commit", "-c", "BOGUS 1", "src", "x:1"]).contains("BOGUS"));
    assert_eq!(e.ok(&["images", "-aq"]), images_before);
    assert_eq!(e.state("src"), "running");

    let id = e.ok(&["commit", "-a", "me", "-m", "a message", "-c", "ENV COMMITTED=yes", "src", "committed:v1"]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    assert_eq!(e.state("src"), "running");
    assert_eq!(e.inspect("committed:v1", "{{.Id}}"), id.trim());
    assert_eq!(e.inspect("committed:v1", "{{.Author}}"), "me");
    let env = e.inspect("committed:v1", "{{json .Config.Env}}");
    assert!(env.contains("COMMITTED=yes") && env.contains("FROM_RUN=1"), "{env}");
    assert_eq!(e.inspect("committed:v1", "{{json .Config.Cmd}}"), serde_json::json!(["sh", "-c", script]).to_string());
    let out = e.ok(&[
        "run",
        "--rm",
        "committed:v1",
        "sh",
        "-c",
        "cat /new; test -e /etc/group || echo no-group; stat -c %a /home/user/d/f; test -e /tmp/ready && echo ready",
    ]);
    assert_eq!(out, "hi\nno-group\n640\nready\n");

    let tar = e.dir.path().join("src.tar");
    e.ok(&["export", "-o", tar.to_str().unwrap(), "src"]);
    let list = std::process::Command::new("tar").arg("-tvf").arg(&tar).output().unwrap();
    let list = stdout(&list);
    for want in ["new", "home/user/d/f", "bin/busybox", "etc/passwd"] {
        assert!(list.lines().any(|l| l.ends_with(&format!(" {want}"))), "{want} not in the export:\n{list}");
    }
    assert!(!list.lines().any(|l| l.ends_with(" etc/group")), "a deleted file exported:\n{list}");
    assert!(list.lines().any(|l| l.starts_with("-rw-r-----") && l.ends_with(" home/user/d/f")), "{list}");

    e.ok(&["rm", "-f", "src"]);
    e.ok(&["rmi", "committed:v1"]);
    e.assert_clean();
}

/// `engine cp` both ways with `docker cp`'s rules: into an existing directory under the
/// source's name, else to the destination's name; `dir/.` copies the contents; a symlink goes
/// as a link; a volume's path lands in the volume; a link of the container's to a host path is
/// read in the container's root and never written through; bad paths are clear errors.
#[test]
fn cp_copies_files_in_and_out_of_a_container() {
    let e = Engined::start();
    e.import_busybox("busybox");
    let outside = tempfile::tempdir().unwrap();
    let script = format!(
        "mkdir -p /src/sub && echo a > /src/a && echo b > /src/sub/b && ln -s /etc/passwd /src/link && \
         ln -s {} /escape && echo ready > /tmp/ready && exec sleep 1000",
        outside.path().display()
    );
    e.ok(&["run", "-d", "--name", "cpc", "-v", "cpvol:/data", "busybox", "sh", "-c", &script]);
    wait_for("the container's files", || e.engine(&["exec", "cpc", "cat", "/tmp/ready"]).status.success());
    let local = e.dir.path().join("local");
    std::fs::create_dir(&local).unwrap();
    let l = |p: &str| local.join(p).display().to_string();

    // out
    e.ok(&["cp", "cpc:/src", &l("")]);
    assert_eq!(std::fs::read_to_string(local.join("src/sub/b")).unwrap(), "b\n");
    assert_eq!(std::fs::read_link(local.join("src/link")).unwrap(), std::path::Path::new("/etc/passwd"));
    e.ok(&["cp", "cpc:/src/a", &l("renamed")]);
    assert_eq!(std::fs::read_to_string(local.join("renamed")).unwrap(), "a\n");
    e.ok(&["cp", "cpc:/src/.", &l("contents")]);
    assert_eq!(std::fs::read_to_string(local.join("contents/a")).unwrap(), "a\n");

    // in
    std::fs::write(local.join("in.txt"), "in\n").unwrap();
    e.ok(&["cp", &l("in.txt"), "cpc:/tmp"]);
    assert_eq!(e.ok(&["exec", "cpc", "cat", "/tmp/in.txt"]), "in\n");
    e.ok(&["cp", &l("src"), "cpc:/newdir"]);
    assert_eq!(e.ok(&["exec", "cpc", "cat", "/newdir/sub/b"]), "b\n");
    e.ok(&["cp", &l("in.txt"), "cpc:/data/"]);
    let volume = e.ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "cpvol"]).trim().to_string();
    assert_eq!(std::fs::read_to_string(std::path::Path::new(&volume).join("in.txt")).unwrap(), "in\n");

    // a link to a host path is the container's path, which does not exist: nothing is written
    let err = e.fails(&["cp", &l("in.txt"), "cpc:/escape/x.txt"]);
    assert!(err.contains("Could not find") || err.contains("not find"), "{err}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "written through a link to the host");
    let err = e.fails(&["cp", "cpc:/nope", &l("x")]);
    assert!(err.contains("Could not find the file /nope in container cpc"), "{err}");
    let err = e.fails(&["cp", &l("src"), "cpc:/tmp/in.txt"]);
    assert!(err.contains("cannot copy a directory to a file"), "{err}");

    e.ok(&["rm", "-f", "cpc"]);
    e.ok(&["volume", "rm", "cpvol"]);
    e.assert_clean();
}

/// A context with its Dockerfile, .dockerignore and files, in the test's directory.
fn build_context(e: &Engined, name: &str, dockerfile: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = e.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    for (path, content) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    dir
}

/// `engine build`: a two-stage Dockerfile with ARG/ENV substitution, RUN, WORKDIR, COPY of a
/// directory's contents and with --chown, COPY --from, USER, LABEL, EXPOSE, CMD, ENTRYPOINT and
/// a .dockerignore; the image runs as built. A second build hits the cache at every step; a
/// changed file invalidates from its COPY on. A failing RUN stops the build with its exit code
/// and leaves no container behind; a Dockerfile error names its line.
#[test]
fn build_a_dockerfile_with_its_cache() {
    let e = Engined::start();
    e.import_busybox("busybox");
    let dockerfile = r#"FROM busybox AS base
ARG WHO=world
ENV GREETING="hello ${WHO}" SHORT=${WHO:+set}
RUN echo "$GREETING $SHORT" > /greeting && mkdir -p /app
WORKDIR /app
COPY files/ ./
COPY --chown=1000:1000 one.txt /owned.txt
COPY --chmod=600 files/ /chmodded/
WORKDIR /lonely
WORKDIR /app
RUN rm /bin/ls && (test -e /app/ignored.log || echo no-log > /app/log-state)
USER user
LABEL a=b
EXPOSE 80 443/udp
CMD ["sh", "-c", "cat /greeting"]

FROM busybox
COPY --from=base /greeting /from-base
ENTRYPOINT ["cat"]
CMD ["/from-base"]
"#;
    let ctx = build_context(
        &e,
        "ctx",
        dockerfile,
        &[
            ("files/a", "f1\n"),
            ("files/sub/b", "f2\n"),
            ("one.txt", "one\n"),
            ("files/ignored.log", "x"),
            (".dockerignore", "**/*.log\n"),
        ],
    );
    let c = ctx.to_str().unwrap();
    let out = e.ok(&[
        "build",
        "--build-arg",
        "WHO=you",
        "--build-arg",
        "UNUSED=1",
        "--target",
        "base",
        "-t",
        "built:base",
        c,
    ]);
    assert!(out.contains("Step 1/19 : FROM busybox AS base"), "{out}");
    assert!(out.contains("[Warning] One or more build-args [UNUSED] were not consumed"), "{out}");
    assert!(out.contains("Successfully tagged built:base"), "{out}");
    assert_eq!(e.ok(&["run", "--rm", "built:base"]), "hello you set\n");
    let check =
        "cat /app/a /app/sub/b /app/log-state; stat -c '%u %g' /owned.txt; id -un; pwd; test -e /bin/ls || echo no-ls";
    assert_eq!(
        e.ok(&["run", "--rm", "built:base", "sh", "-c", check]),
        "f1\nf2\nno-log\n1000 1000\nuser\n/app\nno-ls\n"
    );
    assert_eq!(e.inspect("built:base", "{{json .Config.Labels}}"), r#"{"a":"b"}"#);
    // the history names each step's image and what made it, as docker history
    let history = e.ok(&["history", "--no-trunc", "--format", "{{.ID}}|{{.CreatedBy}}", "built:base"]);
    let first: Vec<&str> = history.lines().take(3).collect();
    assert!(first.iter().all(|l| l.starts_with("sha256:")), "{history}");
    assert!(history.contains("|/bin/sh -c #(nop)  ARG WHO=world\n"), "{history}");
    assert!(history.contains(r#"|/bin/sh -c #(nop)  CMD ["sh" "-c" "cat /greeting"]"#), "{history}");
    assert!(history.contains("|1 WHO=you /bin/sh -c echo"), "{history}");
    assert_eq!(e.inspect("built:base", "{{json .Config.ExposedPorts}}"), r#"{"443/udp":{},"80/tcp":{}}"#);

    let out = e.ok(&["build", "--build-arg", "WHO=you", "-t", "built:final", c]);
    assert!(out.contains("Using cache"), "{out}");
    assert_eq!(e.ok(&["run", "--rm", "built:final"]), "hello you set\n");

    // unchanged: every step from the cache, the same image
    let again = e.ok(&["build", "--build-arg", "WHO=you", "-q", c]);
    assert_eq!(again.trim(), e.inspect("built:final", "{{.Id}}"));
    let out = e.ok(&["build", "--build-arg", "WHO=you", c]);
    // (ARG makes a step of its own, as the classic builder's)
    assert_eq!(out.matches("Using cache").count(), 17, "{out}");
    // after builder prune, nothing is cached
    assert!(e.ok(&["builder", "prune", "-f"]).contains("Deleted build cache objects:"));
    let out = e.ok(&["build", "--build-arg", "WHO=you", c]);
    assert_eq!(out.matches("Using cache").count(), 0, "{out}");
    // a changed file: its COPY and what follows run again
    std::fs::write(ctx.join("one.txt"), "changed\n").unwrap();
    let out = e.ok(&["build", "--build-arg", "WHO=you", c]);
    // (the second stage copies the same /greeting: cached, as dockerd's by content)
    assert_eq!(out.matches("Using cache").count(), 8, "{out}");

    // ONBUILD: the triggers of a base image run in its child's build, and stop there
    let parent = build_context(&e, "onbuild", "FROM busybox\nONBUILD RUN echo triggered > /trigger\n", &[]);
    e.ok(&["build", "-t", "with-trigger:1", parent.to_str().unwrap()]);
    let child = build_context(&e, "child", "FROM with-trigger:1\nCMD [\"cat\", \"/trigger\"]\n", &[]);
    e.ok(&["build", "-t", "triggered:1", child.to_str().unwrap()]);
    assert_eq!(e.ok(&["run", "--rm", "triggered:1"]), "triggered\n");
    assert_eq!(e.inspect("triggered:1", "{{json .Config.OnBuild}}"), "null");

    // a failing RUN: its code and output, nothing left
    let containers = e.ok(&["ps", "-aq"]);
    let bad = build_context(&e, "bad", "FROM busybox\nRUN echo failing-output; exit 3\n", &[]);
    let err = e.engine(&["build", bad.to_str().unwrap()]);
    assert!(!err.status.success());
    assert!(stdout(&err).contains("failing-output"), "{}", stdout(&err));
    assert!(
        stderr(&err).contains("The command '/bin/sh -c echo failing-output; exit 3' returned a non-zero code: 3"),
        "{}",
        stderr(&err)
    );
    assert_eq!(e.ok(&["ps", "-aq"]), containers, "a build container was left");
    // --rm=false keeps the intermediate containers (one per RUN and COPY), as docker build's;
    // --force-rm takes them anyway
    let kept = build_context(&e, "kept", "FROM busybox\nRUN echo one > /one\nCOPY f /f\n", &[("f", "f\n")]);
    let out = e.ok(&["build", "--no-cache", "--rm=false", kept.to_str().unwrap()]);
    assert!(!out.contains("Removing intermediate container"), "{out}");
    let left = e.ok(&["ps", "-aq"]);
    assert_eq!(left.lines().count(), containers.lines().count() + 2, "{left}");
    for id in left.lines().filter(|l| !containers.contains(l)) {
        e.ok(&["rm", id]);
    }
    e.ok(&["build", "--no-cache", "--rm=false", "--force-rm", kept.to_str().unwrap()]);
    assert_eq!(e.ok(&["ps", "-aq"]), containers, "--force-rm left a build container");
    let bad = build_context(&e, "bad2", "FROM busybox\n\nRUNN x\n", &[]);
    let err = e.fails(&["build", bad.to_str().unwrap()]);
    assert!(err.contains("Dockerfile parse error line 3: unknown instruction: RUNN"), "{err}");

    // the build's trace, found by the name it gave: every step, the RUN's container start in it
    let waterfall = e.ok(&["trace", "--build", "built:base", "--sort"]);
    for want in ["daemon.build", "build.step", "init.exec", "DURATION ms", "LAYER", "B  RUN echo", "-  ENV"] {
        assert!(waterfall.contains(want), "{want} not in the build's trace:\n{waterfall}");
    }

    // each step's time on /metrics; no context, container, snapshot, mount or cgroup left
    let (_, metrics) = e.request("GET", "/metrics", "");
    assert!(
        metrics.contains(r#"engine_build_step_duration_seconds_count{instruction="RUN",cache="miss"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"engine_build_step_duration_seconds_count{instruction="COPY",cache="hit"}"#),
        "{metrics}"
    );
    let contexts = std::fs::read_dir(e.data_root().join("build")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(contexts, 0, "a build context was left");
    e.assert_clean();
}

/// ADD of a URL (a server on loopback): the file as served, mode 0600, named after the URL into a
/// directory or as the destination names it; never extracted, even when it is a tar.
#[test]
fn build_adds_files_from_urls() {
    let e = Engined::start();
    e.import_busybox("busybox");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().flatten().take(2) {
            let mut s = stream;
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req);
            let body = "served\n";
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    let dockerfile = format!(
        "FROM busybox\nADD http://127.0.0.1:{port}/files/served.txt /dl/\nADD http://127.0.0.1:{port}/x?y=1 /named.txt\n"
    );
    let ctx = build_context(&e, "url", &dockerfile, &[]);
    e.ok(&["build", "-t", "added:1", ctx.to_str().unwrap()]);
    let out = e.ok(&["run", "--rm", "added:1", "sh", "-c", "cat /dl/served.txt /named.txt; stat -c %a /dl/served.txt"]);
    assert_eq!(out, "served\nserved\n600\n");
}

/// A build whose client goes away (`engine build` killed, or interrupted by Ctrl-C) stops, as
/// dockerd cancels it: the RUN in progress has its process killed, no later step runs, its step
/// container, snapshot, mount and cgroup go, and nothing is tagged.
#[test]
fn an_interrupted_build_stops_and_leaves_nothing() {
    let e = Engined::start();
    e.import_busybox("busybox");
    let ctx = build_context(&e, "interrupted", "FROM busybox\nRUN echo started && sleep 1000\nRUN sleep 1000\n", &[]);
    let mut build = Command::new(bin("engine"))
        .args(["-H", &e.host(), "build", "-t", "interrupted:1", ctx.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // the build's output, read aside (a test that waits on it never hangs)
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (seen, out) = (seen.clone(), build.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
                seen.lock().unwrap().push_str(&format!("{line}\n"));
            }
        })
    };
    // the RUN's process runs: its step container's log has its first line
    wait_for("the RUN's process to run", || {
        let id = e.ok(&["ps", "-q"]).trim().to_string();
        !id.is_empty() && e.ok(&["logs", &id]) == "started\n"
    });
    // the client goes: killed outright (a Ctrl-C's SIGINT may be ignored by a command a
    // non-interactive shell started in the background, as CI's)
    build.kill().unwrap();
    let _ = build.wait();
    reader.join().unwrap();
    assert!(seen.lock().unwrap().contains("Step 2/3 : RUN echo started"), "{}", seen.lock().unwrap());
    // the build has ended (its context goes last), and no later step's container came
    let contexts = e.data_root().join("build");
    wait_for("the build to end", || std::fs::read_dir(&contexts).map_or(true, |mut d| d.next().is_none()));
    assert_eq!(e.ok(&["ps", "-aq"]).trim(), "", "a step's container is left, or a later step ran");
    assert!(!e.ok(&["images"]).contains("interrupted"), "{}", e.ok(&["images"]));
    e.assert_clean();
}

/// What docker-py's build tests found, kept here: FROM scratch with intermediate images hidden
/// from `images` (shown with -a) and removed with their last child, a RUN's stderr in red,
/// --add-host for RUN, --cache-from (only those images' steps are cache), and the API's
/// errorDetail carrying a failed RUN's exit code.
#[test]
fn build_as_docker_py_uses_it() {
    let e = Engined::start();
    e.import_busybox("busybox");
    let images_before = e.ok(&["images", "-aq"]).lines().count();
    let ctx =
        build_context(&e, "scratch", "FROM scratch\nLABEL from=scratch\nCOPY one.txt /one\n", &[("one.txt", "1\n")]);
    e.ok(&["build", "-t", "fromscratch:1", ctx.to_str().unwrap()]);
    assert_eq!(e.inspect("fromscratch:1", "{{json .Config.Labels}}"), r#"{"from":"scratch"}"#);
    let listed = e.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(!listed.contains("<none>"), "intermediate images listed:\n{listed}");
    assert!(e.ok(&["images", "-a", "--format", "{{.Repository}}"]).contains("<none>"));
    e.ok(&["rmi", "fromscratch:1"]);
    assert_eq!(e.ok(&["images", "-aq"]).lines().count(), images_before, "intermediate images left by rmi");

    let ctx =
        build_context(&e, "hosts", "FROM busybox\nRUN echo to-stderr >&2\nRUN grep -q 'extra.test' /etc/hosts\n", &[]);
    let out = e.ok(&["build", "--add-host", "extra.test:127.0.0.1", "-t", "hosts:1", ctx.to_str().unwrap()]);
    assert!(out.contains("\u{1b}[91mto-stderr\n\u{1b}[0m"), "{out:?}");

    let ctx = build_context(&e, "cached", "FROM busybox\nENV A=1\nRUN touch /a\n", &[]);
    let c = ctx.to_str().unwrap();
    e.ok(&["build", "-t", "cache-source:1", c]);
    let out = e.ok(&["build", "--cache-from", "nosuchimage", c]);
    assert_eq!(out.matches("Using cache").count(), 0, "{out}");
    let out = e.ok(&["build", "--cache-from", "cache-source:1", c]);
    assert_eq!(out.matches("Using cache").count(), 2, "{out}");

    // a context cannot reach out of itself: `..` and links are read inside it, and a source
    // that is not there is an error, never the host's file
    let secret = e.dir.path().join("secret");
    std::fs::write(&secret, "host-only\n").unwrap();
    for (name, source) in [("dotdot", "../secret"), ("link", "link-out")] {
        let ctx = build_context(&e, name, &format!("FROM busybox\nCOPY {source} /got\n"), &[]);
        std::os::unix::fs::symlink(&secret, ctx.join("link-out")).unwrap();
        let err = e.fails(&["build", "-t", "escaped:1", ctx.to_str().unwrap()]);
        assert!(err.contains("file not found in build context"), "{name}: {err}");
    }
    assert!(!e.engine(&["inspect", "escaped:1"]).status.success(), "an image was made");

    // the API's error line names a failed RUN's exit code
    let bad = build_context(&e, "code", "FROM busybox\nRUN exit 7\n", &[]);
    let tar = e.dir.path().join("code.tar");
    tar_dir(&bad, &tar);
    let body = std::fs::read_to_string(&tar).unwrap();
    let (status, lines) = e.request("POST", "/build", &body);
    assert_eq!(status, 200);
    assert!(lines.contains(r#""errorDetail":{"code":7,"#) || lines.contains(r#""code":7"#), "{lines}");
    // a Dockerfile that is empty or malformed is refused with the request (a 400, as dockerd's,
    // which docker-py raises as an APIError), not as a line of a stream
    for (name, dockerfile, says) in [
        ("empty", "", "the Dockerfile (Dockerfile) cannot be empty"),
        ("malformed", "FROM busybox\nRUNN x\n", "unknown instruction: RUNN"),
        ("stageless", "# only a comment\nENV A=1\n", "no build stage in current context"),
    ] {
        let ctx = build_context(&e, name, dockerfile, &[]);
        let tar = e.dir.path().join(format!("{name}.tar"));
        tar_dir(&ctx, &tar);
        let (status, answer) = e.request("POST", "/build", &std::fs::read_to_string(&tar).unwrap());
        assert_eq!(status, 400, "{name}: {answer}");
        assert!(answer.contains(says), "{name}: {answer}");
    }
    e.assert_clean();
}
