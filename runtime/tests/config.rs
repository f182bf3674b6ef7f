//! Each configuration area of the spec, observed from inside the container.

mod common;
use common::*;
use serde_json::json;

fn run(env: &Env, b: &Bundle, id: &str) -> String {
    let out = env.rt(&["run", "--bundle", b.p(), id]);
    assert!(out.status.success(), "run {id}: {}", stderr(&out));
    env.assert_no_leaks(id, &b.path);
    stdout(&out)
}

#[test]
fn hostname_domainname_and_pid_1() {
    let env = Env::new();
    let mut b = env.bundle("h1", &["sh", "-c", "hostname; echo $$; cat /proc/sys/kernel/domainname"]);
    b.spec["hostname"] = json!("box");
    b.spec["domainname"] = json!("example.test");
    b.save();
    assert_eq!(run(&env, &b, "h1"), "box\n1\nexample.test\n");
}

#[test]
fn env_cwd_user_and_umask() {
    let env = Env::new();
    let mut b = env.bundle(
        "u1",
        &["sh", "-c", "echo $FOO; pwd; grep -E '^(Uid|Gid|Groups)' /proc/self/status; umask; echo $HOME"],
    );
    b.spec["process"]["env"] = json!(["PATH=/bin", "FOO=bar"]);
    b.spec["process"]["cwd"] = json!("/tmp");
    b.spec["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [5, 7], "umask": 63});
    b.save();
    let out = run(&env, &b, "u1");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "bar");
    assert_eq!(lines[1], "/tmp");
    assert!(lines[2].starts_with("Uid:\t1000\t1000\t1000\t1000"), "{out}");
    assert!(lines[3].starts_with("Gid:\t1000\t1000\t1000\t1000"), "{out}");
    assert_eq!(lines[4].split_whitespace().skip(1).collect::<Vec<_>>(), ["5", "7"], "{out}");
    assert_eq!(lines[5], "0077");
    assert_eq!(lines[6], "/home/user");
}

#[test]
fn capabilities_all_five_sets_and_no_new_privs() {
    let env = Env::new();
    let mut b = env.bundle("cap", &["grep", "-E", "^(Cap|NoNewPrivs)", "/proc/self/status"]);
    let two = json!(["CAP_CHOWN", "CAP_KILL"]);
    b.spec["process"]["capabilities"] = json!({
        "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW"],
        "effective": two, "permitted": two, "inheritable": two, "ambient": ["CAP_KILL"]
    });
    b.spec["process"]["noNewPrivileges"] = json!(true);
    b.save();
    let out = run(&env, &b, "cap");
    let field = |name: &str| out.lines().find(|l| l.starts_with(name)).unwrap().split('\t').nth(1).unwrap().to_string();
    assert_eq!(field("CapInh:"), "0000000000000021");
    assert_eq!(field("CapPrm:"), "0000000000000021");
    assert_eq!(field("CapEff:"), "0000000000000021");
    assert_eq!(field("CapBnd:"), "0000000000002021");
    assert_eq!(field("CapAmb:"), "0000000000000020");
    assert_eq!(field("NoNewPrivs:"), "1");
}

#[test]
fn rlimits_and_oom_score_adj() {
    let env = Env::new();
    let mut b = env.bundle("rl", &["sh", "-c", "ulimit -n; ulimit -Hn; ulimit -c; cat /proc/self/oom_score_adj"]);
    b.spec["process"]["rlimits"] = json!([
        {"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1024},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}
    ]);
    b.spec["process"]["oomScoreAdj"] = json!(500);
    b.save();
    assert_eq!(run(&env, &b, "rl"), "512\n1024\n0\n500\n");
}

#[test]
fn memory_pids_and_cpu_limits_in_the_cgroup() {
    let env = Env::new();
    let script = if pure_v2() {
        "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max /sys/fs/cgroup/cpu.max"
    } else {
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.shares; cat /proc/self/cgroup"
    };
    let mut b = env.bundle("mem", &["sh", "-c", script]);
    b.spec["linux"]["resources"]["memory"] = json!({"limit": 67108864});
    b.spec["linux"]["resources"]["pids"] = json!({"limit": 64});
    b.spec["linux"]["resources"]["cpu"] = json!({"quota": 50000, "period": 100000, "shares": 512});
    b.save();
    let out = run(&env, &b, "mem");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "67108864");
    assert_eq!(lines[1], "64");
    if pure_v2() {
        assert_eq!(lines[2], "50000 100000");
    } else {
        assert_eq!(lines[2], "50000");
        assert_eq!(lines[3], "512");
        // inside its cgroup namespace the container sees itself at the root
        assert!(out.lines().any(|l| l.ends_with(":memory:/")), "{out}");
    }
}

#[test]
fn memory_limit_is_enforced() {
    let env = Env::new();
    // 32 MiB limit, no swap: a 64 MiB buffer gets the process OOM-killed (SIGKILL, 128+9)
    let mut b = env.bundle("oom", &["sh", "-c", "exec dd if=/dev/zero of=/dev/null bs=64M count=1"]);
    b.spec["linux"]["resources"]["memory"] = json!({"limit": 33554432, "swap": 33554432});
    b.save();
    let out = env.rt(&["run", "--bundle", b.p(), "oom"]);
    assert_eq!(out.status.code(), Some(137), "stdout {} stderr {}", stdout(&out), stderr(&out));
    env.assert_no_leaks("oom", &b.path);
}

#[test]
fn readonly_rootfs_masked_and_readonly_paths() {
    let env = Env::new();
    // a masked file that exists on this kernel (kcore needs CONFIG_PROC_KCORE)
    let masked = ["/proc/kcore", "/proc/keys", "/proc/timer_list"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("a maskable /proc file");
    let mut b = env.bundle(
        "ro",
        &[
            "sh",
            "-c",
            &format!(
                "touch /x 2>/dev/null && echo rootfs-writable || echo rootfs-ro; \
         wc -c < {masked}; \
         echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo sys-writable || echo sys-ro; \
         touch /tmp/ok && echo tmp-writable"
            ),
        ],
    );
    b.spec["root"]["readonly"] = json!(true);
    b.spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]}));
    b.save();
    assert_eq!(run(&env, &b, "ro"), "rootfs-ro\n0\nsys-ro\ntmp-writable\n");
}

#[test]
fn bind_mounts_tmpfs_and_propagation() {
    let env = Env::new();
    let host = env.dir.path().join("shared");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("hello"), "from host\n").unwrap();
    let file = env.dir.path().join("single-file");
    std::fs::write(&file, "one file\n").unwrap();
    let mut b = env.bundle(
        "bm",
        &[
            "sh",
            "-c",
            "cat /data/hello; cat /etc/single; touch /data/new 2>/dev/null && echo data-rw || echo data-ro; \
         grep ' /scratch ' /proc/self/mountinfo | grep -c 'size=1024k'",
        ],
    );
    let mounts = b.spec["mounts"].as_array_mut().unwrap();
    mounts
        .push(json!({"destination": "/data", "type": "bind", "source": host, "options": ["rbind", "ro", "rprivate"]}));
    mounts.push(json!({"destination": "/etc/single", "source": file, "options": ["bind"]}));
    mounts
        .push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m", "nosuid"]}));
    b.save();
    assert_eq!(run(&env, &b, "bm"), "from host\none file\ndata-ro\n1\n");
    assert!(!host.join("new").exists());
}

/// A tmpfs mounted on `path` in the test's mount namespace, unmounted when dropped.
struct HostTmpfs(std::path::PathBuf);

impl HostTmpfs {
    fn mount(path: &std::path::Path) -> HostTmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out =
            std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(path).output();
        assert!(out.unwrap().status.success(), "mount tmpfs on {}", path.display());
        HostTmpfs(path.to_path_buf())
    }
}

impl Drop for HostTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn recursive_mount_options_reach_the_mounts_below() {
    let env = Env::new();
    let outer = env.dir.path().join("outer");
    std::fs::create_dir_all(&outer).unwrap();
    let _inner = HostTmpfs::mount(&outer.join("inner"));
    let probe = "for d in /ro /ro/inner /plain/inner; do touch $d/f 2>/dev/null && echo $d-rw || echo $d-ro; done; \
                 cp /bin/busybox /plain/inner/bb && /plain/inner/bb true 2>/dev/null && echo exec || echo noexec";
    let mut b = env.bundle("rec", &["sh", "-c", probe]);
    let mounts = b.spec["mounts"].as_array_mut().unwrap();
    // rro: read-only down to the submount; plain ro leaves the submount writable (as runc).
    mounts.push(json!({"destination": "/ro", "type": "bind", "source": outer, "options": ["rbind", "rro"]}));
    mounts.push(json!({"destination": "/plain", "type": "bind", "source": outer, "options": ["rbind", "rnoexec"]}));
    b.save();
    assert_eq!(run(&env, &b, "rec"), "/ro-ro\n/ro/inner-ro\n/plain/inner-rw\nnoexec\n");
}

#[test]
fn proc_through_a_symlink_is_refused() {
    let env = Env::new();
    let b = env.bundle("symproc", &["true"]);
    let proc_dir = b.path.join("rootfs/proc");
    let _ = std::fs::remove_dir_all(&proc_dir);
    std::os::unix::fs::symlink("/tmp", &proc_dir).unwrap();
    let out = env.rt(&["run", "--bundle", b.p(), "symproc"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("\"proc\" must be mounted on ordinary directory"), "{err}");
    env.assert_no_leaks("symproc", &b.path);
}

#[test]
fn devices_and_dev_symlinks() {
    let env = Env::new();
    let mut b = env.bundle("dev", &["sh", "-c",
        "ls -l /dev/null /dev/zero /dev/fuse | awk '{print $1, $5, $6}'; readlink /dev/fd; readlink /dev/ptmx; head -c 4 /dev/zero | wc -c; \
         head -c 1 /dev/fuse 2>/dev/null; echo fuse-rc=$?"]);
    b.spec["linux"]["devices"] =
        json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 420, "uid": 0, "gid": 0}]);
    b.save();
    let out = run(&env, &b, "dev");
    assert!(out.contains("crw-r--r-- 10, 229"), "{out}");
    assert!(out.contains("crw-rw-rw- 1, 3"), "{out}");
    assert!(out.contains("/proc/self/fd\npts/ptmx\n4\n"), "{out}");
    // created but not allowed by the device cgroup (v1) or filter (v2): the spec denies the rest
    assert!(out.contains("fuse-rc=1"), "{out}");
}

#[test]
fn sysctl_in_the_container_namespaces() {
    let env = Env::new();
    let mut b = env.bundle("sc", &["sh", "-c", "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni"]);
    b.spec["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.shmmni": "1234"});
    b.save();
    assert_eq!(run(&env, &b, "sc"), "1\n1234\n");
}

#[test]
fn join_namespaces_by_path() {
    let env = Env::new();
    let a = env.bundle("ns-a", &["sleep", "1000"]);
    env.ok(&["run", "--detach", "--bundle", a.p(), "ns-a"]);
    let st: serde_json::Value = serde_json::from_str(&env.ok(&["state", "ns-a"])).unwrap();
    let pid = st["pid"].as_i64().unwrap();
    let mut b = env.bundle("ns-b", &["sh", "-c", "for n in net uts ipc; do readlink /proc/self/ns/$n; done; hostname"]);
    for ns in b.spec["linux"]["namespaces"].as_array_mut().unwrap() {
        let t = ns["type"].as_str().unwrap().to_string();
        if t == "network" || t == "uts" || t == "ipc" {
            let file = if t == "network" { "net" } else { &t };
            ns["path"] = json!(format!("/proc/{pid}/ns/{file}"));
        }
    }
    b.spec.as_object_mut().unwrap().remove("hostname");
    b.save();
    let out = run(&env, &b, "ns-b");
    let want: Vec<String> = ["net", "uts", "ipc"]
        .iter()
        .map(|n| std::fs::read_link(format!("/proc/{pid}/ns/{n}")).unwrap().to_string_lossy().into_owned())
        .collect();
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got[..3], [want[0].as_str(), want[1].as_str(), want[2].as_str()]);
    assert_eq!(got[3], "engine", "joined uts namespace keeps the first container's hostname");
    env.ok(&["delete", "--force", "ns-a"]);
    env.assert_no_leaks("ns-a", &a.path);
}

/// Gives the bundle a user namespace mapping its root to host uid and gid 100000 (65536 ids).
fn in_user_namespace(b: &mut Bundle) {
    b.spec["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "user"}));
    b.spec["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    b.spec["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
}

#[test]
fn user_namespace_with_mappings() {
    let env = Env::new();
    let mut b = env.bundle("us", &["sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; id -u"]);
    in_user_namespace(&mut b);
    // the host's files are owned by host root, unmapped here: keep the rootfs readable by others
    b.save();
    let out = run(&env, &b, "us");
    let fields: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(fields[0], ["0", "100000", "65536"]);
    assert_eq!(fields[1], ["0", "100000", "65536"]);
    assert_eq!(fields[2], ["0"]);
}

#[test]
fn user_namespace_create_then_start_with_a_private_state_root() {
    let env = Env::new();
    let mut b = env.bundle("usp", &["sh", "-c", "id -u > /tmp/ran; id -u"]);
    in_user_namespace(&mut b);
    b.save();
    // The state root is reachable by host root only, as runc's /run/runc is: the container's
    // mapped user cannot open its exec fifo by path.
    std::fs::create_dir_all(&env.root).unwrap();
    std::fs::set_permissions(&env.root, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    // where the mapped root may write its answer
    let tmp = b.path.join("rootfs/tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    env.ok(&["create", "--bundle", b.p(), "usp"]);
    assert_eq!(env.status("usp"), "created");
    env.ok(&["start", "usp"]);
    wait_for("the container to run and exit", || env.status("usp") == "stopped");
    assert_eq!(std::fs::read_to_string(b.path.join("rootfs/tmp/ran")).unwrap(), "0\n");
    env.ok(&["delete", "usp"]);
    env.assert_no_leaks("usp", &b.path);
}

#[test]
fn scheduler_io_priority_personality_and_time_offsets() {
    let env = Env::new();
    // /proc/self/stat: field 19 is nice, field 41 the policy (3 = SCHED_BATCH)
    let mut b = env
        .bundle("sch", &["sh", "-c", "cut -d' ' -f19,41 /proc/self/stat; ionice; uname -m; cut -d. -f1 /proc/uptime"]);
    b.spec["process"]["scheduler"] = json!({"policy": "SCHED_BATCH", "nice": 7});
    b.spec["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_BE", "priority": 6});
    b.spec["linux"]["personality"] = json!({"domain": "LINUX32"});
    b.spec["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "time"}));
    b.spec["linux"]["timeOffsets"] = json!({"boottime": {"secs": 8640000, "nanosecs": 0}});
    b.save();
    let out = run(&env, &b, "sch");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "7 3", "{out}");
    assert_eq!(lines[1], "best-effort: prio 6", "{out}");
    assert_eq!(lines[2], "i686", "{out}");
    assert!(lines[3].parse::<u64>().unwrap() >= 8_640_000, "boot time moved 100 days on: {out}");

    // bad values are refused up front or rolled back
    let mut b = env.bundle("sch2", &["true"]);
    b.spec["linux"]["timeOffsets"] = json!({"boottime": {"secs": 1}});
    b.save();
    let out = env.rt(&["create", "--bundle", b.p(), "sch2"]);
    assert!(stderr(&out).contains("timeOffsets need a new time namespace"), "{}", stderr(&out));
    b.spec.as_object_mut().unwrap()["linux"].as_object_mut().unwrap().remove("timeOffsets");
    b.spec["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_BE", "priority": 9});
    b.save();
    let out = env.rt(&["create", "--bundle", b.p(), "sch2"]);
    assert!(stderr(&out).contains("ioPriority.priority 9 is out of range"), "{}", stderr(&out));
    env.assert_no_leaks("sch2", &b.path);
}

#[test]
fn shared_root_propagation() {
    let env = Env::new();
    let mut b = env.bundle("sh1", &["awk", "$5 == \"/\"", "/proc/self/mountinfo"]);
    b.spec["linux"]["rootfsPropagation"] = json!("shared");
    b.save();
    let out = run(&env, &b, "sh1");
    assert!(out.contains(" shared:"), "the container's root is shared: {out}");
}

#[test]
fn without_a_mount_namespace() {
    let env = Env::new();
    let mut b = env.bundle("nm1", &["sh", "-c", "readlink /proc/self/ns/mnt; test -x /bin/busybox && echo jailed"]);
    b.spec["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "mount");
    b.spec["linux"].as_object_mut().unwrap().remove("maskedPaths");
    b.spec["linux"].as_object_mut().unwrap().remove("readonlyPaths");
    b.save();
    let host = std::fs::read_link("/proc/self/ns/mnt").unwrap().to_string_lossy().into_owned();
    // run() checks that no mount is left under the bundle afterwards
    assert_eq!(run(&env, &b, "nm1"), format!("{host}\njailed\n"));

    // hiding paths needs a mount namespace of its own
    let mut b = env.bundle("nm2", &["true"]);
    b.spec["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "mount");
    b.save();
    let out = env.rt(&["create", "--bundle", b.p(), "nm2"]);
    assert!(stderr(&out).contains("maskedPaths and readonlyPaths need a mount namespace"), "{}", stderr(&out));
    env.assert_no_leaks("nm2", &b.path);
}
