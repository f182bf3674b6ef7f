//! Crashes under load: engined, lifecycled or every shim killed -9 at several points of 20
//! concurrent starts and of 20 concurrent removals. After each kill, every container is running
//! with its own process, not running with none, or removed; `rm -f` of all of them ends within
//! 30 s; no process, shim, task directory, snapshot, mount, cgroup, network namespace, veth or
//! port proxy is left; and no container's exit is reported twice.

use engine_test_support::engined::Engined;
use engine_test_support::*;

/// Containers started, or removed, at once.
const AT_ONCE: usize = 20;

#[derive(Clone, Copy, Debug)]
enum Victim {
    Engined,
    Lifecycled,
    /// Every shim of the instance alive at that moment.
    Shims,
}

/// When the victim dies, as seen from outside.
#[derive(Clone, Copy, Debug)]
enum Point {
    /// Right after the requests are sent: no runtime has run yet for most containers (their
    /// networks are being set up, their shims spawned); for removals, the stop signals are on
    /// their way.
    Sent,
    /// Once the first shims are up: containers being created by the runtime.
    Creating,
    /// Once the first containers run: the others between create and start, or on their way.
    FirstRunning,
    /// Once the first containers are gone: the others being stopped, killed or deleted.
    FirstGone,
}

macro_rules! fault_tests {
    ($($name:ident: $scenario:ident($victim:ident, $point:ident);)*) => {$(
        #[test]
        fn $name() {
            $scenario(Victim::$victim, Point::$point);
        }
    )*};
}

fault_tests! {
    engined_killed_as_starts_are_sent: starts(Engined, Sent);
    engined_killed_while_starts_create: starts(Engined, Creating);
    engined_killed_once_the_first_starts_run: starts(Engined, FirstRunning);
    lifecycled_killed_as_starts_are_sent: starts(Lifecycled, Sent);
    lifecycled_killed_while_starts_create: starts(Lifecycled, Creating);
    lifecycled_killed_once_the_first_starts_run: starts(Lifecycled, FirstRunning);
    // (before the first shim there is no shim to kill)
    shims_killed_while_starts_create: starts(Shims, Creating);
    shims_killed_once_the_first_starts_run: starts(Shims, FirstRunning);
    engined_killed_as_removals_are_sent: removals(Engined, Sent);
    engined_killed_once_the_first_removals_end: removals(Engined, FirstGone);
    lifecycled_killed_as_removals_are_sent: removals(Lifecycled, Sent);
    lifecycled_killed_once_the_first_removals_end: removals(Lifecycled, FirstGone);
    shims_killed_as_removals_are_sent: removals(Shims, Sent);
    shims_killed_once_the_first_removals_end: removals(Shims, FirstGone);
}

/// A command line no other test (or run) has, to count this test's container processes.
fn unique_command(kind: u8, victim: Victim, point: Point) -> [String; 2] {
    ["sleep".to_string(), format!("{kind}{}{}{}", std::process::id(), victim as u8, point as u8)]
}

/// `engine <args> <id>` for each id, all at once, output discarded.
fn at_once(e: &Engined, args: &[&str], ids: &[String]) -> Vec<std::process::Child> {
    ids.iter()
        .map(|id| {
            std::process::Command::new(bin("engine"))
                .args(["-H", &e.host()])
                .args(args)
                .arg(id)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect()
}

/// AT_ONCE starts on the default bridge, `victim` killed -9 at `point`; then every container is
/// running with its own process, or created or exited with none; each starts; rm -f leaves
/// nothing.
fn starts(victim: Victim, point: Point) {
    let mut e = Engined::start();
    e.import_busybox("busybox");
    let rules = e.firewall_rules(&[]);
    let cmd = unique_command(9, victim, point);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let ids: Vec<String> = (0..AT_ONCE)
        .map(|i| e.ok(&["create", "--name", &format!("started{i}"), "busybox", cmd[0], cmd[1]]).trim().to_string())
        .collect();
    let since = unix_secs();
    let clients = at_once(&e, &["start"], &ids);
    match point {
        Point::Sent => {}
        Point::Creating => wait_for("the first shims", || !e.shims().is_empty()),
        Point::FirstRunning => wait_for("the first containers to run", || processes_running(&cmd).len() >= 2),
        Point::FirstGone => unreachable!("starts are not killed at {point:?}"),
    }
    kill_during(&mut e, victim, clients);
    assert_known(&e, &ids, &cmd);
    for id in &ids {
        if e.state(id) != "running" {
            e.ok(&["start", id]);
        }
    }
    assert_eq!(processes_running(&cmd).len(), ids.len());
    force_remove_within_30s(&e, &ids);
    assert_nothing_left(&e, &cmd, &rules);
    assert_no_exit_reported_twice(&e, victim, &ids, since);
}

/// AT_ONCE removals (`rm -f` of running containers on the default bridge, each publishing a
/// port), `victim` killed -9 at `point`; then every container is removed or known as what it is
/// (running with its own process, or not running with none); `rm -f` of the rest ends within
/// 30 s, and nothing is left.
fn removals(victim: Victim, point: Point) {
    let mut e = Engined::start();
    e.import_busybox("busybox");
    let rules = e.firewall_rules(&[]);
    let cmd = unique_command(7, victim, point);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let since = unix_secs();
    let ids: Vec<String> = (0..AT_ONCE)
        .map(|i| {
            let name = format!("removed{i}");
            e.ok(&["run", "-d", "--name", &name, "-p", "127.0.0.1::80", "busybox", cmd[0], cmd[1]]).trim().to_string()
        })
        .collect();
    assert_eq!(processes_running(&cmd).len(), ids.len());
    let clients = at_once(&e, &["rm", "-f"], &ids);
    match point {
        Point::Sent => {}
        Point::FirstGone => {
            wait_for("the first containers to be killed", || processes_running(&cmd).len() <= AT_ONCE - 2)
        }
        Point::Creating | Point::FirstRunning => unreachable!("removals are not killed at {point:?}"),
    }
    kill_during(&mut e, victim, clients);
    let left: Vec<String> = e.ok(&["ps", "-aq", "--no-trunc"]).lines().map(str::to_string).collect();
    assert!(left.iter().all(|id| ids.contains(id)), "containers that are not the test's: {left:?}");
    assert_known(&e, &left, &cmd);
    force_remove_within_30s(&e, &left);
    assert_nothing_left(&e, &cmd, &rules);
    assert_no_exit_reported_twice(&e, victim, &ids, since);
}

/// kill -9 of `victim`, with the operations of `clients` under way; waits for the clients and
/// for the engine to be whole again (engined restarted, or a new lifecycled).
fn kill_during(e: &mut Engined, victim: Victim, clients: Vec<std::process::Child>) {
    match victim {
        Victim::Engined => e.kill9(),
        Victim::Lifecycled => {
            let lc = e.lifecycled_pid();
            // SAFETY: SIGKILL to the lifecycled of this test's engined, by pid.
            unsafe { libc::kill(lc, libc::SIGKILL) };
            wait_for("a new lifecycled", || e.lifecycled_pid() != lc);
        }
        Victim::Shims => {
            for pid in e.shims() {
                // SAFETY: SIGKILL to a shim of this test's engined, by pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    for mut c in clients {
        let _ = c.wait();
    }
    if let Victim::Engined = victim {
        e.restart();
    }
}

/// Each of `ids` is running with its own process (one running `cmd`), or not running with none,
/// and no process runs `cmd` that the engine does not know of.
fn assert_known(e: &Engined, ids: &[String], cmd: &[&str]) {
    let pid_of = |id: &str| e.inspect(id, "{{.State.Pid}}").parse::<u32>().unwrap_or(0);
    for id in ids {
        wait_for("every running container to have its process", || {
            e.state(id) != "running" || processes_running(cmd).contains(&pid_of(id))
        });
    }
    let mut running = 0;
    for id in ids {
        match e.state(id).as_str() {
            "running" => {
                running += 1;
                let pid = pid_of(id);
                assert!(processes_running(cmd).contains(&pid), "{id} is running as {pid}, which is not its process");
            }
            "created" | "exited" | "dead" => {}
            other => panic!("{id} is {other}"),
        }
    }
    let statuses: Vec<String> = ids.iter().map(|id| e.state(id)).collect();
    assert_eq!(
        processes_running(cmd).len(),
        running,
        "container processes the engine does not know of: {statuses:?}\n{}",
        e.log_tail()
    );
}

/// `engine rm -f` of `ids`, which must end within 30 s whatever was killed before.
fn force_remove_within_30s(e: &Engined, ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let mut rm = std::process::Command::new(bin("engine"));
    rm.args(["-H", &e.host(), "rm", "-f"]).args(ids);
    let mut child = rm.stdout(std::process::Stdio::null()).spawn().unwrap();
    let mut status = None;
    let ended = wait_until(std::time::Duration::from_secs(30), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
        panic!("rm -f {ids:?} did not end within 30 s\n{}", e.log_tail());
    }
    let status = status.unwrap();
    assert!(status.success(), "rm -f {ids:?}: {status}\n{}", e.log_tail());
}

/// Nothing of the instance's containers is left: records, processes running `cmd`, shims,
/// task directories, snapshots, mounts, cgroups, network namespaces, veths on the bridge,
/// address allocations, port proxies; its firewall rules are `rules`, those it had before any
/// container.
fn assert_nothing_left(e: &Engined, cmd: &[&str], rules: &[String]) {
    assert!(processes_running(cmd).is_empty(), "container processes left");
    wait_for("the shims to exit", || e.shims().is_empty());
    assert_eq!(e.task_dirs(), Vec::<std::path::PathBuf>::new(), "task directories left");
    e.assert_clean();
    assert_eq!(e.netns_files(), 0, "network namespaces left");
    wait_for("the veths to go", || e.bridge_ports().is_empty());
    wait_for("the port proxies to exit", || e.proxies().is_empty());
    let allocated = e.ok(&["network", "inspect", "bridge", "-f", "{{json .Containers}}"]);
    assert_eq!(allocated.trim(), "{}", "addresses left allocated on the default bridge");
    let (mut now, mut before) = (e.firewall_rules(&[]), rules.to_vec());
    now.sort();
    before.sort();
    assert_eq!(now, before, "firewall rules changed");
}

/// No container's exit was reported (a `die` event) more than once per start, and none was
/// destroyed twice (once, when engined lived through the test). The events of an engined killed
/// -9 are gone with it: a container whose start was reported before the kill may then show one
/// `die` more than `start`.
fn assert_no_exit_reported_twice(e: &Engined, victim: Victim, ids: &[String], since: u64) {
    let lost = usize::from(matches!(victim, Victim::Engined));
    for id in ids {
        let events = e.event_actions(since, &[&format!("container={id}")]);
        let count = |action: &str| events.iter().filter(|a| *a == action).count();
        assert!(count("die") <= count("start") + lost, "{id}: exit reported twice: {events:?}");
        if lost == 0 {
            // every container was started and is removed, all in this engined's life
            assert!(count("start") >= 1 && count("destroy") == 1, "{id}: {events:?}");
        } else {
            assert!(count("destroy") <= 1, "{id}: destroyed twice: {events:?}");
        }
    }
}

/// Containers whose records are lost (their directory gone while engined was down) leave a
/// task with its shim and process, a port proxy, a cgroup and a snapshot that no record names.
/// `engine system check` lists them and fails; `--collect` removes them; with the periodic
/// collection on, engined's start alone does.
#[test]
fn orphans_of_lost_records_are_reported_and_collected() {
    let mut e = Engined::start_with(&[], &["--orphan-collection-interval", "0"]);
    e.import_busybox("busybox");
    let rules = e.firewall_rules(&[]);
    let cmd = unique_command(6, Victim::Engined, Point::FirstRunning);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let run = |name: &str| {
        e.ok(&["run", "-d", "--name", name, "-p", "127.0.0.1::80", "busybox", cmd[0], cmd[1]]).trim().to_string()
    };
    let (a, b) = (run("lost-a"), run("lost-b"));
    wait_for("both containers to run", || processes_running(&cmd).len() == 2);
    let pid_of = |id: &str| e.inspect(id, "{{.State.Pid}}").parse::<u32>().unwrap();
    let (pid_a, pid_b) = (pid_of(&a), pid_of(&b));
    assert_eq!(e.proxies().len(), 2);

    // a's record goes while engined is down: engined never hears of a again
    e.kill9();
    std::fs::remove_dir_all(e.data_root().join("containers").join(&a)).unwrap();
    e.restart();
    assert_eq!(e.ok(&["ps", "-aq", "--no-trunc"]).trim(), b);
    let check = e.engine(&["system", "check"]);
    let listed = stdout(&check);
    assert_eq!(check.status.code(), Some(1), "check with orphans: {listed}{}", stderr(&check));
    for kind in ["proxy", "task", "cgroup", "snapshot"] {
        assert!(
            listed.lines().any(|l| l.starts_with(kind) && l.contains(&a[..12])),
            "no {kind} of {a} listed:\n{listed}"
        );
    }
    assert!(!listed.contains(&b[..12]), "b is known, not orphaned:\n{listed}");
    assert!(processes_running(&cmd).contains(&pid_a), "a check must change nothing");

    let collected = e.engine(&["system", "check", "--collect"]);
    let listed = stdout(&collected);
    assert!(collected.status.success(), "collect: {listed}{}\n{}", stderr(&collected), e.log_tail());
    assert!(listed.lines().skip(1).all(|l| l.ends_with("removed")), "{listed}");
    assert_eq!(e.ok(&["system", "check"]).trim(), "nothing orphaned");
    assert_eq!(processes_running(&cmd), vec![pid_b], "a's process is killed, b's is not");
    wait_for("a's shim to exit", || e.shims().len() == 1);
    assert_eq!(e.task_dirs().len(), 1, "a's task directory is removed");
    wait_for("a's proxy to exit", || e.proxies().len() == 1);
    assert_eq!(e.snapshots(), 1, "a's snapshot is removed");
    assert!(e.cgroups().iter().all(|p| !p.ends_with(&a)), "a's cgroup is removed");
    assert!(e.mounts().iter().all(|m| !m.contains(&a)), "a's mounts are removed");
    let log = std::fs::read_to_string(e.dir.path().join("engined.log")).unwrap();
    assert!(log.contains(&format!("orphaned task of container {a}")), "no warning of the collection in the log");
    // the collection is a trace of its own, found by the lost container's id (its spans reach
    // the store on their own way: waited for, as the other trace tests do)
    let parts = ["daemon.collect", "daemon.orphan", "snapshots", "/lifecycle/tasks/", "lifecycle.Tasks/Delete"];
    let mut traced = String::new();
    wait_until(std::time::Duration::from_secs(30), || {
        traced = stdout(&e.engine(&["trace", "--json", "--op", "collect", &a]));
        parts.iter().all(|p| traced.contains(p))
    });
    for what in parts {
        assert!(traced.contains(what), "no {what} in the collection's trace: {traced}");
    }
    assert_eq!(e.state("lost-b"), "running");

    // Cgroups under the parent that nothing else of engined's names are not its to judge (the
    // parent may be shared with another engine): neither listed nor touched
    let foreign = |n: u8| format!("{n:x}").repeat(64);
    let (busy, empty) = (foreign(0xa), foreign(0xb));
    let mut dirs = Vec::new();
    for m in cgroup_mounts() {
        let parent = m.join(e.cgroup_parent.trim_start_matches('/'));
        if parent.is_dir() {
            for id in [&busy, &empty] {
                std::fs::create_dir(parent.join(id)).unwrap();
                dirs.push(parent.join(id));
            }
        }
    }
    let mut sleeper = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
    let busy_dir = dirs.iter().find(|d| d.ends_with(&busy)).unwrap();
    std::fs::write(busy_dir.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
    let collected = e.engine(&["system", "check", "--collect"]);
    assert!(collected.status.success(), "{}", stdout(&collected));
    assert_eq!(stdout(&collected).trim(), "nothing orphaned");
    assert!(dirs.iter().all(|d| d.exists()), "a cgroup not engined's was removed");
    assert!(sleeper.try_wait().unwrap().is_none(), "a process of a cgroup not engined's was killed");
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    wait_for("the test's own cgroups to be removed", || {
        dirs.iter().all(|d| std::fs::remove_dir(d).is_ok() || !d.exists())
    });

    // b's record goes too, and engined comes back with the periodic collection on: its start
    // collects b's orphans on its own
    e.kill9();
    std::fs::remove_dir_all(e.data_root().join("containers").join(&b)).unwrap();
    let flag = e.args.iter().position(|a| a == "--orphan-collection-interval").unwrap();
    e.args.drain(flag..flag + 2);
    e.restart();
    wait_for("engined's start to collect b's orphans", || {
        e.engine(&["system", "check"]).status.success() && processes_running(&cmd).is_empty()
    });
    assert_nothing_left(&e, &cmd, &rules);
}

/// Fills `dir`'s file system to the last byte (ENOSPC) with one file, and returns it.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for size in [1 << 20, 4096, 1] {
        loop {
            match f.write(&chunk[..size]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    path
}

/// Data-root and exec-root full: an image load, a create and a run fail with a clear error and
/// leave nothing behind; a running container's log loses lines but no line is torn; engined
/// keeps answering and logs little. Once space is freed, everything works again.
#[test]
fn full_disks_give_clear_errors_and_everything_works_once_freed() {
    let e = Engined::start_on_small_disks("48m");
    e.import_busybox("busybox");
    let talk = "while true; do echo tick; sleep 0.02; done";
    e.ok(&["run", "-d", "--name", "talker", "busybox", "sh", "-c", talk]);
    wait_for("talker's first lines", || e.ok(&["logs", "talker"]).contains("tick"));
    let rootfs = e.dir.path().join("second");
    make_busybox_rootfs(&rootfs);
    let tar = rootfs.with_extension("tar");
    tar_dir(&rootfs, &tar);
    let log_before = std::fs::metadata(e.dir.path().join("engined.log")).unwrap().len();

    let fillers = [fill(&e.data_root()), fill(&e.exec_root())];
    let full = |args: &[&str]| {
        let out = e.engine(args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded on a full disk");
        assert!(
            err.to_lowercase().contains("no space left on device"),
            "{args:?}: not a clear error: {err} {} {:?}\n{}",
            stdout(&out),
            out.status,
            e.log_tail()
        );
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: not one line: {err}");
    };
    full(&["import", tar.to_str().unwrap(), "second"]);
    assert!(!e.engine(&["image", "inspect", "second"]).status.success(), "a failed load is listed");
    let staged = std::fs::read_dir(e.data_root().join("image/staging")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(staged, 0, "a failed load left its staging directory");
    full(&["create", "--name", "late", "busybox", "true"]);
    full(&["run", "-d", "--name", "later", "busybox", "sleep", "1000"]);
    assert_eq!(e.ok(&["ps", "-a", "--format", "{{.Names}}"]).trim(), "talker", "a failed create is listed");
    assert_eq!(e.snapshots(), 1, "a failed create left its snapshot");
    assert_eq!(e.task_dirs().len(), 1, "a failed run left its task directory");
    // the talker talks on into a full disk: its loop goes round (a `sleep` child each time)
    let pid = e.inspect("talker", "{{.State.Pid}}");
    let mut children = std::collections::BTreeSet::new();
    wait_for("the talker to talk on into the full disk", || {
        let now = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        children.extend(now.split_whitespace().map(str::to_string));
        children.len() >= 10
    });
    assert_eq!(e.state("talker"), "running");
    assert!(e.engine(&["version"]).status.success());

    // room on the data-root, none on the exec-root: the container is made, its task is not
    std::fs::remove_file(&fillers[0]).unwrap();
    full(&["run", "-d", "--name", "later", "busybox", "sleep", "1000"]);
    assert_eq!(e.state("later"), "created");
    assert_eq!(e.task_dirs().len(), 1, "a failed start left its task directory");
    assert_eq!(e.shims().len(), 1, "a failed start left its shim");

    std::fs::remove_file(&fillers[1]).unwrap();
    e.ok(&["start", "later"]);
    assert!(e.ok(&["trace", "--op", "start", "later"]).contains("daemon.start"), "the trace store takes spans again");
    let lines = |e: &Engined| e.ok(&["logs", "talker"]).lines().count();
    let before = lines(&e);
    wait_for("talker's log to take lines again", || lines(&e) > before + 5);
    // (`logs` skips lines it cannot read: the file itself must have none torn)
    let task_dir = e.exec_root().join("lifecycle/tasks").join(e.inspect("talker", "{{.Id}}"));
    for file in std::fs::read_dir(&task_dir)
        .unwrap()
        .flatten()
        .filter(|f| f.file_name().to_string_lossy().starts_with("log.json"))
    {
        let text = std::fs::read_to_string(file.path()).unwrap();
        for line in text.lines() {
            let entry: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|err| panic!("a torn line in the log: {line:?}: {err}"));
            assert_eq!(entry["log"], "tick\n", "{line}");
        }
    }
    e.ok(&["import", tar.to_str().unwrap(), "second"]);
    assert_eq!(e.ok(&["run", "--rm", "second", "echo", "works"]).trim(), "works");
    e.ok(&["create", "--name", "late", "busybox", "true"]);
    e.ok(&["start", "late"]);
    let logged_meanwhile = std::fs::metadata(e.dir.path().join("engined.log")).unwrap().len() - log_before;
    assert!(logged_meanwhile < 1 << 20, "engined logged {logged_meanwhile} bytes");
    e.ok(&["rm", "-f", "talker", "late", "later"]);
    wait_for("the shims to exit", || e.shims().is_empty());
    assert_eq!(e.task_dirs(), Vec::<std::path::PathBuf>::new(), "task directories left");
    e.assert_clean();
}

/// `rm -f` of a running container while lifecycled is gone for good (its binary taken away, so
/// engined cannot start another): past its deadline, engined removes what it can itself — the
/// container's processes (through its cgroup), its port proxy, network and snapshot, its record
/// — and says that the task is left. Once lifecycled is back, the task is collected.
#[test]
fn rm_f_without_lifecycled_removes_what_engined_can_and_says_what_is_left() {
    let bin_dir = tempfile::tempdir().unwrap();
    let lifecycled = bin_dir.path().join("engine-lifecycled");
    // a link of its own to lifecycled (which finds the shim beside its real binary)
    std::os::unix::fs::symlink(bin("engine-lifecycled"), &lifecycled).unwrap();
    let e = Engined::start_with(&[], &["--lifecycled", lifecycled.to_str().unwrap()]);
    e.import_busybox("busybox");
    let rules = e.firewall_rules(&[]);
    let cmd = unique_command(5, Victim::Lifecycled, Point::FirstRunning);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    e.ok(&["run", "-d", "--name", "alone", "-p", "127.0.0.1::80", "busybox", cmd[0], cmd[1]]);
    wait_for("the container to run", || processes_running(&cmd).len() == 1);

    let waiter = std::process::Command::new(bin("engine"))
        .args(["-H", &e.host(), "wait", "alone"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let away = bin_dir.path().join("away");
    std::fs::rename(&lifecycled, &away).unwrap();
    // SAFETY: SIGKILL to the lifecycled of this test's engined, by pid.
    unsafe { libc::kill(e.lifecycled_pid(), libc::SIGKILL) };
    let removed = e.engine(&["rm", "-f", "alone"]);
    let err = stderr(&removed);
    assert!(!removed.status.success(), "rm -f without lifecycled said nothing of what it left");
    assert!(err.contains("is removed, but lifecycled did not answer") && err.contains("orphan"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert_eq!(e.ok(&["ps", "-aq"]).trim(), "");
    assert!(processes_running(&cmd).is_empty(), "its process was not killed");
    wait_for("its proxy to exit", || e.proxies().is_empty());
    assert_eq!(e.netns_files(), 0, "its network namespace is left");
    e.assert_clean();
    assert_eq!(e.shims().len(), 1, "its shim waits for lifecycled");
    // a client waiting for its exit hears of it
    let waited = waiter.wait_with_output().unwrap();
    assert_eq!(stdout(&waited).trim(), "137", "{}", stderr(&waited));

    std::fs::rename(&away, &lifecycled).unwrap();
    wait_for("lifecycled to be back and the task collected", || {
        e.engine(&["system", "check", "--collect"]).status.success() && e.shims().is_empty()
    });
    assert_nothing_left(&e, &cmd, &rules);
}

/// engined killed -9 in the middle of a build, its RUN running in a step container: after the
/// restart the step container, its process, snapshot, mounts and cgroup are gone, nothing is
/// tagged, and the same build runs again to its end.
#[test]
fn a_build_cut_short_by_engineds_death_leaves_nothing_behind() {
    let mut e = Engined::start();
    e.import_busybox("busybox");
    let ctx = e.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nARG WAIT=0\nRUN echo step > /step && sleep $WAIT\n").unwrap();
    let context = ctx.to_str().unwrap();
    let mut build = std::process::Command::new(bin("engine"))
        .args(["-H", &e.host(), "build", "-t", "cut:1", "--build-arg", "WAIT=1000", context])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the RUN step's container to run", || !e.ok(&["ps", "-q"]).trim().is_empty());
    e.kill9();
    let _ = build.wait();
    e.restart();
    wait_for("the step container to go", || e.ok(&["ps", "-aq"]).trim().is_empty());
    e.assert_clean();
    assert!(e.log_tail().contains("a step container of a build that ended with engined"), "{}", e.log_tail());
    assert!(!e.ok(&["images"]).contains("cut"), "{}", e.ok(&["images"]));

    let out = e.ok(&["build", "-t", "cut:1", context]);
    assert!(out.contains("Successfully tagged cut:1"), "{out}");
    assert_eq!(e.ok(&["run", "--rm", "cut:1", "cat", "/step"]), "step\n");
    e.assert_clean();
}
