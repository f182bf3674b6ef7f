//! Debian's Docker CLI, unchanged, against a private engined: the Docker Engine API as real
//! clients use it (version negotiation, hijacked attach and exec streams, image transfer).

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use engine_test_support::engined::Engined;
use engine_test_support::*;

#[test]
fn docker_cli_drives_engined() {
    let e = Engined::start();
    let version = e.docker_ok(&["version", "--format", "{{.Server.APIVersion}} {{.Server.Os}}"]);
    assert_eq!(version.trim(), "1.43 linux");
    assert!(e.docker_ok(&["info", "--format", "{{.OperatingSystem}} {{.Driver}}"]).contains("overlay2"));

    // import, images, tag, save, rmi, load
    let tar = e.busybox_tar();
    e.docker_ok(&["import", "--change", "CMD [\"sh\"]", tar.to_str().unwrap(), "bb:1"]);
    assert!(e.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]).contains("bb:1"));
    e.docker_ok(&["tag", "bb:1", "bb:2"]);
    let saved = e.dir.path().join("saved.tar");
    e.docker_ok(&["save", "-o", saved.to_str().unwrap(), "bb:2"]);
    e.docker_ok(&["rmi", "bb:2"]);
    e.docker_ok(&["rmi", "bb:1"]);
    assert_eq!(e.docker_ok(&["images", "-q"]).trim(), "");
    assert!(e.docker_ok(&["load", "-i", saved.to_str().unwrap()]).contains("Loaded image: bb:2"));

    // run: attached with --rm, options, exit codes
    assert_eq!(e.docker_ok(&["run", "--rm", "bb:2", "echo", "hi"]), "hi\n");
    let out = e.docker(&["run", "--rm", "bb:2", "sh", "-c", "exit 9"]);
    assert_eq!(out.status.code(), Some(9));
    let host = e.dir.path().join("vol");
    std::fs::create_dir_all(&host).unwrap();
    std::os::unix::fs::chown(&host, Some(1000), Some(1000)).unwrap();
    let bind = format!("{}:/v", host.display());
    let out = e.docker_ok(&[
        "run",
        "--rm",
        "--init",
        "-e",
        "X=1",
        "-v",
        &bind,
        "-w",
        "/v",
        "-u",
        "1000:1000",
        "bb:2",
        "sh",
        "-c",
        "echo $X $(pwd) $(id -u) > f; cat f; cat /proc/1/cmdline | tr '\\0' ' '",
    ]);
    assert_eq!(
        out,
        "1 /v 1000\n/sbin/docker-init -- sh -c echo $X $(pwd) $(id -u) > f; cat f; cat /proc/1/cmdline | tr '\\0' ' ' "
    );
    assert_eq!(std::fs::read_to_string(host.join("f")).unwrap(), "1 /v 1000\n");

    // run -d, ps, logs, exec, inspect, stop, kill, rm
    let id =
        e.docker_ok(&["run", "-d", "--name", "svc", "bb:2", "sh", "-c", "echo up; exec sleep 1000"]).trim().to_string();
    assert!(e.docker_ok(&["ps", "--format", "{{.Names}} {{.Status}}"]).contains("svc Up"));
    wait_for("logs", || e.docker_ok(&["logs", "svc"]) == "up\n");
    assert_eq!(e.docker_ok(&["exec", "svc", "sh", "-c", "echo in; echo err >&2"]), "in\n");
    assert_eq!(e.docker(&["exec", "svc", "sh", "-c", "exit 4"]).status.code(), Some(4));
    assert_eq!(e.docker_ok(&["inspect", "-f", "{{.Id}} {{.State.Running}}", "svc"]).trim(), format!("{id} true"));
    e.docker_ok(&["stop", "-t", "1", "svc"]);
    assert_eq!(e.docker_ok(&["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "svc"]).trim(), "exited 137");
    e.docker_ok(&["start", "svc"]);
    e.docker_ok(&["pause", "svc"]);
    assert!(e.docker_ok(&["ps", "--format", "{{.Names}} {{.Status}}"]).contains("(Paused)"));
    let out = e.docker(&["exec", "svc", "true"]);
    assert!(stderr(&out).contains("is paused, unpause the container before exec"), "{}", stderr(&out));
    e.docker_ok(&["unpause", "svc"]);
    assert_eq!(e.docker_ok(&["inspect", "-f", "{{.State.Status}}", "svc"]).trim(), "running");
    e.docker_ok(&["pause", "svc"]);
    e.docker_ok(&["kill", "svc"]);
    assert_eq!(e.docker_ok(&["wait", "svc"]).trim(), "137");
    e.docker_ok(&["rm", "svc"]);
    assert_eq!(e.docker_ok(&["ps", "-aq"]).trim(), "");

    // errors come back as Docker's
    let out = e.docker(&["run", "--rm", "nosuch:1", "true"]);
    assert!(stderr(&out).contains("Unable to find image 'nosuch:1' locally"), "{}", stderr(&out));
    let out = e.docker(&["rm", "nosuch"]);
    assert!(stderr(&out).contains("No such container: nosuch"), "{}", stderr(&out));
}

/// Runs `docker args` on a new pty, types `input` once `ready` shows, and returns what the
/// terminal showed and the exit code.
fn on_a_pty(e: &Engined, args: &[&str], ready: &str, input: &[u8], expect: &str) -> i32 {
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = || std::fs::File::from(pty.slave.try_clone().unwrap());
    let mut child = Command::new(dockerd::docker_cli())
        .arg("-H")
        .arg(e.host())
        .args(args)
        .stdin(Stdio::from(slave()))
        .stdout(Stdio::from(slave()))
        .stderr(Stdio::from(slave()))
        .spawn()
        .unwrap();
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let mut read_until = |needle: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !String::from_utf8_lossy(&seen).contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} on the terminal: {:?}",
                String::from_utf8_lossy(&seen)
            );
            if let Ok(chunk) = rx.recv_timeout(std::time::Duration::from_millis(100)) {
                seen.extend(chunk);
            }
        }
    };
    read_until(ready);
    master.write_all(input).unwrap();
    read_until(expect);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        assert!(std::time::Instant::now() < deadline, "docker {args:?} did not end");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn docker_exec_it_through_a_pty() {
    let e = Engined::start();
    let tar = e.busybox_tar();
    e.docker_ok(&["import", tar.to_str().unwrap(), "bb:1"]);
    e.docker_ok(&["run", "-d", "--name", "box", "bb:1", "sleep", "1000"]);
    let code = on_a_pty(&e, &["exec", "-it", "box", "sh"], "#", b"echo $((6*7)) $(tty)\nexit 3\n", "42 /dev/pts/");
    assert_eq!(code, 3);
    e.docker_ok(&["rm", "-f", "box"]);
}

#[test]
fn docker_run_it_through_a_pty() {
    let e = Engined::start();
    let tar = e.busybox_tar();
    e.docker_ok(&["import", "--change", "CMD [\"sh\"]", tar.to_str().unwrap(), "bb:1"]);
    let code = on_a_pty(
        &e,
        &["run", "-it", "--rm", "bb:1", "sh"],
        "Enter 'help'",
        b"echo $((40+2)) $(tty)\nexit 7\n",
        "42 /dev/pts/0",
    );
    assert_eq!(code, 7);
    wait_for("--rm to remove it", || e.docker_ok(&["ps", "-aq"]).trim().is_empty());
}

#[test]
fn docker_cli_volumes_events_and_df() {
    let e = Engined::start();
    let tar = e.busybox_tar();
    e.docker_ok(&["import", tar.to_str().unwrap(), "bb:1"]);
    let since = unix_secs().to_string();
    e.docker_ok(&["volume", "create", "v1"]);
    assert!(e.docker_ok(&["volume", "ls", "--format", "{{.Name}}"]).contains("v1"));
    assert_eq!(e.docker_ok(&["run", "--rm", "-v", "v1:/v", "bb:1", "sh", "-c", "echo hi > /v/f; cat /v/f"]), "hi\n");
    assert!(e.docker_ok(&["system", "df"]).contains("Local Volumes"));
    e.docker_ok(&["volume", "rm", "v1"]);
    let until = (unix_secs() + 1).to_string();
    let events = e.docker_ok(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        "type=container",
        "--format",
        "{{.Action}}",
    ]);
    assert_eq!(events.split_whitespace().collect::<Vec<_>>(), ["create", "start", "die", "destroy"], "{events}");

    // prune as the Docker CLI asks for it; swarm answered as by a node outside a swarm
    let stopped = e.docker_ok(&["create", "bb:1", "true"]).trim().to_string();
    let out = e.docker_ok(&["container", "prune", "-f"]);
    assert!(out.contains(&stopped) && out.contains("Total reclaimed space"), "{out}");
    e.docker_ok(&["tag", "bb:1", "bb:2"]);
    e.docker_ok(&["rmi", "bb:1"]);
    let out = e.docker_ok(&["image", "prune", "-a", "-f"]);
    assert!(out.contains("untagged: bb:2") && out.contains("deleted: sha256:"), "{out}");
    let out = e.docker(&["node", "ls"]);
    assert!(stderr(&out).contains("This node is not a swarm manager"), "{}", stderr(&out));
}

#[test]
fn docker_cli_publishes_ports_and_manages_networks() {
    let e = Engined::start();
    let tar = e.busybox_tar();
    e.docker_ok(&["import", tar.to_str().unwrap(), "bb:1"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let serve = "mkdir -p /www && echo via-docker-cli > /www/index.html && exec httpd -f -p 80 -h /www";
    // --dns 127.0.0.1: a name lookup that misses /etc/hosts stays inside the container
    e.docker_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--dns",
        "127.0.0.1",
        "-p",
        &format!("127.0.0.1:{port}:80"),
        "bb:1",
        "sh",
        "-c",
        serve,
    ]);
    assert_eq!(e.docker_ok(&["port", "web"]).trim(), format!("80/tcp -> 127.0.0.1:{port}"));
    assert!(e.docker_ok(&["ps", "--format", "{{.Ports}}"]).contains(&format!("127.0.0.1:{port}->80/tcp")));
    let get = || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    };
    wait_for("the published port", || get().is_some_and(|b| b.contains("via-docker-cli")));

    let id = e.docker_ok(&["network", "create", "dnet"]).trim().to_string();
    assert!(e.docker_ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]).contains("dnet bridge"));
    e.docker_ok(&["run", "-d", "--name", "peer", "--network", "dnet", "bb:1", "sh", "-c", serve]);
    e.docker_ok(&["network", "connect", "dnet", "web"]);
    assert!(e
        .docker_ok(&["network", "inspect", "dnet", "--format", "{{range .Containers}}{{.Name}} {{end}}"])
        .contains("peer"));
    assert_eq!(e.docker_ok(&["exec", "web", "wget", "-q", "-O-", "http://peer/"]).trim(), "via-docker-cli");
    assert!(e
        .docker_ok(&["inspect", "web", "--format", "{{.NetworkSettings.Networks.dnet.IPAddress}}"])
        .trim()
        .starts_with("10."));
    e.docker_ok(&["rm", "-f", "web", "peer"]);
    e.docker_ok(&["network", "rm", "dnet"]);
    assert!(!e.docker_ok(&["network", "ls", "-q"]).contains(&id[..12]));
    assert!(!Engined::links().contains(&format!("br-{}", &id[..12])));
    wait_for("the proxy to exit", || e.proxies().is_empty());
}

/// Runs the same script in a container `src` on engined and on dockerd (busybox imported in
/// both): the same `diff`, and `commit` of it makes an image with the same config and history
/// comment that runs the same.
fn diff_and_commit_match(e: &Engined, d: &engine_test_support::dockerd::Dockerd) {
    let tar = e.busybox_tar();
    let script = "echo hi > /new && rm /etc/group && mkdir -p /home/d && echo x > /home/d/f && chmod 640 /home/d/f \
                  && ln /home/d/f /home/d/hard && ln -s f /home/d/soft && rm -r /out && echo ready > /tmp/ready \
                  && exec sleep 1000";
    let run = ["run", "-d", "--network", "none", "--name", "src", "-e", "FROM_RUN=1", "busybox", "sh", "-c", script];
    let engine = |args: &[&str]| e.docker_ok(args);
    let docker = |args: &[&str]| d.ok(args);
    let both: [&dyn Fn(&[&str]) -> String; 2] = [&engine, &docker];
    for docker in both {
        docker(&["import", "-c", "CMD [\"sh\"]", tar.to_str().unwrap(), "busybox"]);
        docker(&run);
        wait_for("the container's changes", || docker(&["diff", "src"]).contains("A /tmp/ready"));
    }
    let sorted = |s: String| {
        let mut l: Vec<String> = s.lines().map(str::to_string).collect();
        l.sort();
        l
    };
    assert_eq!(sorted(engine(&["diff", "src"])), sorted(docker(&["diff", "src"])));

    let config = "{{json .Config.Env}} {{json .Config.Cmd}} {{json .Config.Entrypoint}} {{.Config.WorkingDir}} \
                  {{.Config.User}} {{json .Config.Labels}} {{.Author}} {{.Comment}}";
    let check =
        "cat /new /home/d/hard; readlink /home/d/soft; stat -c %a /home/d/f; test -e /etc/group || echo no-group; \
                 test -e /out || echo no-out";
    let mut seen = Vec::new();
    for docker in both {
        docker(&[
            "commit",
            "-a",
            "me",
            "-m",
            "a message",
            "-c",
            "ENV COMMITTED=yes",
            "-c",
            "LABEL l=1",
            "src",
            "made:1",
        ]);
        let inspect = docker(&["image", "inspect", "-f", config, "made:1"]);
        let out = docker(&["run", "--rm", "--network", "none", "made:1", "sh", "-c", check]);
        let history = docker(&["history", "--format", "{{.Comment}}", "made:1"]);
        seen.push((inspect, out, history.lines().next().unwrap_or("").to_string()));
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0].1, "hi\nx\nf\n640\nno-group\nno-out\n");
}

/// `docker diff`, `docker commit` and `docker export` through engined and through a private
/// Debian dockerd, on the same image and the same container script: the same changes, a
/// committed image with the same config that runs the same, exports with the same files.
#[test]
fn docker_diff_commit_and_export_match_dockerd() {
    let e = Engined::start();
    let d = engine_test_support::dockerd::Dockerd::start(&[]);
    diff_and_commit_match(&e, &d);
    let engine = |args: &[&str]| e.docker_ok(args);
    let docker = |args: &[&str]| d.ok(args);
    let both: [&dyn Fn(&[&str]) -> String; 2] = [&engine, &docker];

    // docker cp both ways: the same tree out (types, modes, link targets, contents), the same
    // file in, the same answer for a missing path
    let tree = |root: &std::path::Path| -> Vec<String> {
        let out =
            Command::new("find").arg(".").arg("-printf").arg("%p %y %m %l\\n").current_dir(root).output().unwrap();
        let mut l: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
        l.sort();
        l
    };
    let local = e.dir.path().join("in.txt");
    std::fs::write(&local, "in\n").unwrap();
    let mut copies = Vec::new();
    for (i, docker) in both.into_iter().enumerate() {
        let out = e.dir.path().join(format!("cp{i}"));
        std::fs::create_dir(&out).unwrap();
        docker(&["cp", "src:/home/d", out.to_str().unwrap()]);
        docker(&["cp", local.to_str().unwrap(), "src:/tmp/"]);
        copies.push((tree(&out), docker(&["exec", "src", "cat", "/tmp/in.txt"])));
    }
    assert_eq!(copies[0], copies[1]);
    assert!(copies[0].0.iter().any(|l| l.starts_with("./d/soft l 777 f")), "{:?}", copies[0].0);
    let missing = |out: std::process::Output| stderr(&out).trim().to_string();
    assert_eq!(
        missing(e.docker(&["cp", "src:/nope", e.dir.path().to_str().unwrap()])),
        missing(d.docker(&["cp", "src:/nope", e.dir.path().to_str().unwrap()]))
    );

    let files = |docker: &dyn Fn(&[&str]) -> String, name: &str| {
        let path = e.dir.path().join(name);
        docker(&["export", "-o", path.to_str().unwrap(), "src"]);
        let list = Command::new("tar").arg("-tf").arg(&path).output().unwrap();
        let mut l: Vec<String> = stdout(&list)
            .lines()
            .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
            .filter(|l| l.starts_with("home") || l.starts_with("bin/s") || l == "new" || l.starts_with("etc/"))
            .collect();
        l.sort();
        l.dedup();
        l
    };
    let (ours, theirs) = (files(&engine, "engine.tar"), files(&docker, "docker.tar"));
    // dockerd's init layer adds /etc/mtab; the files mounted over are in neither's image
    let without_mount_points = |l: Vec<String>| -> Vec<String> {
        l.into_iter()
            .filter(|p| !["etc/hosts", "etc/hostname", "etc/resolv.conf", "etc/mtab"].contains(&p.as_str()))
            .collect()
    };
    assert_eq!(without_mount_points(ours), without_mount_points(theirs));
}

/// The Docker CLI's classic builder (`DOCKER_BUILDKIT=0 docker build`) through engined and
/// through a private dockerd, on the same context: the same files (modes, owners, contents,
/// deletions applied) and the same config (Env, Cmd, Entrypoint, WorkingDir, User,
/// ExposedPorts, Labels, Volumes, Healthcheck, StopSignal); ONBUILD, SHELL, ADD of a tar and
/// a multi-stage COPY --from included.
#[test]
fn docker_build_matches_dockerds_classic_builder() {
    let e = Engined::start();
    let d = engine_test_support::dockerd::Dockerd::start(&[]);
    let tar = e.busybox_tar();
    let ctx = e.dir.path().join("ctx");
    std::fs::create_dir_all(ctx.join("dir/sub")).unwrap();
    std::fs::write(ctx.join("dir/a"), "a\n").unwrap();
    std::fs::write(ctx.join("dir/sub/b"), "b\n").unwrap();
    std::fs::write(ctx.join("skip.tmp"), "no\n").unwrap();
    std::fs::write(ctx.join(".dockerignore"), "*.tmp\n").unwrap();
    let packed = ctx.join("packed.tar");
    tar_dir(&ctx.join("dir"), &packed);
    std::fs::write(
        ctx.join("Dockerfile"),
        r#"ARG BASE=busybox
FROM ${BASE} AS first
RUN mkdir -p /made && echo made > /made/file && chmod 750 /made
FROM ${BASE}
MAINTAINER someone <someone@example.test>
ARG V=1
ENV A=1 B="two words" C=${V:-none}
LABEL x=y z="w v"
WORKDIR /lonely/dir
WORKDIR /w
COPY dir/ copied/
COPY --chown=1000:1000 dir/a /owned
ADD packed.tar /added/
COPY --from=first /made /from-first
RUN rm -r /etc/group copied/sub && echo ran > ran.txt
SHELL ["/bin/sh", "-ec"]
RUN echo "$B" > shell.txt
USER user
EXPOSE 8080 53/udp 9000-9001
VOLUME /data
STOPSIGNAL SIGUSR1
HEALTHCHECK --interval=5s --retries=2 CMD true
ONBUILD RUN echo child
ENTRYPOINT ["sh", "-c"]
CMD ["echo hi"]
"#,
    )
    .unwrap();
    let build = |host: &str| {
        let out = Command::new(dockerd::docker_cli())
            .env("DOCKER_BUILDKIT", "0")
            .args(["-H", host, "build", "--build-arg", "V=2", "-t", "built:1", ctx.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "build through {host}: {}{}", stdout(&out), stderr(&out));
    };
    let engine = |args: &[&str]| e.docker_ok(args);
    let docker = |args: &[&str]| d.ok(args);
    type Cli<'a> = &'a dyn Fn(&[&str]) -> String;
    let both: [(Cli, String); 2] = [(&engine, e.host()), (&docker, format!("unix://{}", d.sock.display()))];
    // the config and the files of image `image` as `docker` sees them
    let describe = |docker: &dyn Fn(&[&str]) -> String, image: &str| {
        let config = docker(&[
            "image",
            "inspect",
            "-f",
            "{{json .Config.Env}}|{{json .Config.Cmd}}|{{json .Config.Entrypoint}}|{{.Config.WorkingDir}}|\
             {{.Config.User}}|{{json .Config.ExposedPorts}}|{{json .Config.Labels}}|{{json .Config.Volumes}}|\
             {{json .Config.Healthcheck}}|{{.Config.StopSignal}}|{{json .Config.OnBuild}}|{{.Author}}",
            image,
        ]);
        let files = docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "sh",
            image,
            "-c",
            "cd / && find copied owned added from-first w ran.txt lonely -exec stat -c '%n %a %u:%g %F' {} + 2>&1 | sort; \
             cat w/shell.txt w/ran.txt from-first/file; test -e etc/group || echo no-group; \
             test -e w/skip.tmp || echo no-skip",
        ]);
        (config, files)
    };
    let (mut seen, mut histories) = (Vec::new(), Vec::new());
    for (docker, host) in both {
        docker(&["import", "-c", "CMD [\"sh\"]", tar.to_str().unwrap(), "busybox"]);
        build(&host);
        seen.push(describe(docker, "built:1"));
        // the history as `docker history` shows it: each step's line, and an id for each
        // step (its image, kept as the next one's parent), not `<missing>`
        let history = docker(&["history", "--no-trunc", "--format", "{{.ID}} {{.CreatedBy}}", "built:1"]);
        let steps: Vec<&str> = history.lines().take_while(|l| !l.contains("#(nop) WORKDIR /lonely")).collect();
        assert!(steps.iter().all(|l| l.starts_with("sha256:")), "{history}");
        histories.push(
            steps
                .iter()
                .map(|l| l.split_once(' ').map_or("", |(_, by)| by).trim().to_string())
                // COPY and ADD name their sources by dockerd's own content hash
                .filter(|by| !by.contains("#(nop) COPY") && !by.contains("#(nop) ADD"))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(seen[0].0, seen[1].0, "config");
    assert_eq!(seen[0].1, seen[1].1, "files");
    assert_eq!(histories[0], histories[1], "history");
    assert!(seen[0].1.contains("no-group") && seen[0].1.contains("two words"), "{}", seen[0].1);

    // Debian's buildah (`buildah bud`, Docker format, the same base image's files): where it
    // agrees with dockerd, engined agrees too. Its image is read through the private dockerd.
    let b = engine_test_support::buildah::Buildah::new(e.dir.path());
    let here = e.dir.path();
    let base = b.ok(here, &["from", "scratch"]);
    b.ok(here, &["add", &base, tar.to_str().unwrap(), "/"]);
    b.ok(here, &["config", "--cmd", "sh", &base]);
    b.ok(here, &["commit", "-q", "--format", "docker", &base, "busybox"]);
    b.ok(
        here,
        &[
            "bud",
            "--pull-never",
            "--isolation",
            "chroot",
            "--format",
            "docker",
            "--build-arg",
            "V=2",
            "-t",
            "built:1",
            ctx.to_str().unwrap(),
        ],
    );
    let archive = here.join("buildah-built.tar");
    b.ok(here, &["push", "-q", "built:1", &format!("docker-archive:{}:buildah-built:1", archive.display())]);
    d.ok(&["load", "-i", archive.to_str().unwrap()]);
    let buildah = describe(&docker, "buildah-built:1");
    let fields = |c: &str| c.split('|').map(str::to_string).collect::<Vec<_>>();
    let (engine_fields, dockerd_fields, buildah_fields) = (fields(&seen[0].0), fields(&seen[1].0), fields(&buildah.0));
    assert_eq!(buildah_fields.len(), dockerd_fields.len(), "{}", buildah.0);
    let mut agreed = 0;
    for (i, field) in buildah_fields.iter().enumerate() {
        if *field == dockerd_fields[i] {
            agreed += 1;
            assert_eq!(engine_fields[i], *field, "config field {i}: buildah and dockerd agree, engined does not");
        } else {
            eprintln!("buildah's config field {i} differs from dockerd's: {field} / {}", dockerd_fields[i]);
        }
    }
    let lines = |f: &str| f.lines().map(str::to_string).collect::<std::collections::BTreeSet<_>>();
    let (engine_files, dockerd_files) = (lines(&seen[0].1), lines(&seen[1].1));
    for line in lines(&buildah.1).intersection(&dockerd_files) {
        agreed += 1;
        assert!(engine_files.contains(line), "buildah and dockerd have {line:?}, engined has not:\n{}", seen[0].1);
    }
    for line in lines(&buildah.1).symmetric_difference(&dockerd_files) {
        eprintln!("buildah and dockerd differ on: {line}");
    }
    // the comparison is not empty: buildah agrees with dockerd on most of it
    assert!(agreed > (dockerd_fields.len() + dockerd_files.len()) / 2, "buildah agreed on {agreed} only: {buildah:?}");
}

/// The same with both daemons on the vfs storage driver (full copies, no overlay): diff and
/// commit compare the copy with the image's files, as dockerd's naive diff does.
#[test]
fn vfs_diff_and_commit_match_dockerds_vfs() {
    let e = Engined::start_with(&[], &["--storage-driver", "vfs"]);
    let d = engine_test_support::dockerd::Dockerd::start(&["--storage-driver".into(), "vfs".into()]);
    assert!(d.ok(&["info", "-f", "{{.Driver}}"]).contains("vfs"));
    diff_and_commit_match(&e, &d);
    // a build commits each step the same way
    let ctx = e.dir.path().join("vfs-ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nRUN rm /etc/group && echo b > /b\nCOPY f /f\n").unwrap();
    std::fs::write(ctx.join("f"), "f\n").unwrap();
    e.docker_ok(&["build", "-q", "-t", "vfs-built", ctx.to_str().unwrap()]);
    let check = "cat /b /f; test -e /etc/group || echo no-group";
    assert_eq!(e.docker_ok(&["run", "--rm", "--network", "none", "vfs-built", "sh", "-c", check]), "b\nf\nno-group\n");
    e.docker_ok(&["rm", "-f", "src"]);
    e.assert_clean();
}

/// Anonymous volumes as dockerd makes them: one per `-v /path` and per image VOLUME no mount
/// covers, holding what the image has there; seen in Mounts, written through `docker cp`, and
/// removed by `rm -v` and by `--rm`.
#[test]
fn anonymous_volumes_as_dockerd_makes_them() {
    let e = Engined::start();
    let tar = e.busybox_tar();
    e.docker_ok(&["import", "-c", "CMD [\"sh\"]", tar.to_str().unwrap(), "busybox"]);
    let ctx = e.dir.path().join("withvol");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nRUN mkdir /data && echo seed > /data/seed\nVOLUME /data\n")
        .unwrap();
    let out = Command::new(dockerd::docker_cli())
        .env("DOCKER_BUILDKIT", "0")
        .args(["-H", &e.host(), "build", "-q", "-t", "withvol", ctx.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    e.docker_ok(&["run", "-d", "--name", "anon", "-v", "/scratch", "withvol", "sleep", "1000"]);
    assert_eq!(e.docker_ok(&["exec", "anon", "cat", "/data/seed"]), "seed\n");
    let volumes = e.docker_ok(&["volume", "ls", "-q"]);
    assert_eq!(volumes.lines().count(), 2, "{volumes}");
    let mounts = e.docker_ok(&["inspect", "-f", "{{range .Mounts}}{{.Type}}:{{.Destination}} {{end}}", "anon"]);
    assert!(mounts.contains("volume:/data") && mounts.contains("volume:/scratch"), "{mounts}");
    let file = e.dir.path().join("in.txt");
    std::fs::write(&file, "copied\n").unwrap();
    e.docker_ok(&["cp", file.to_str().unwrap(), "anon:/scratch/"]);
    assert_eq!(e.docker_ok(&["exec", "anon", "cat", "/scratch/in.txt"]), "copied\n");
    // a volume in use is not removed
    let first = volumes.lines().next().unwrap().to_string();
    assert!(!e.docker(&["volume", "rm", &first]).status.success());
    e.docker_ok(&["rm", "-f", "-v", "anon"]);
    assert_eq!(e.docker_ok(&["volume", "ls", "-q"]), "", "rm -v left anonymous volumes");

    assert_eq!(e.docker_ok(&["run", "--rm", "withvol", "cat", "/data/seed"]), "seed\n");
    assert_eq!(e.docker_ok(&["volume", "ls", "-q"]), "", "--rm left an anonymous volume");
    // a named volume at the image's VOLUME path: no anonymous one beside it; used first, it takes
    // the image's files there (not with nocopy, nor once it holds something)
    assert_eq!(e.docker_ok(&["run", "--rm", "-v", "named:/data", "withvol", "cat", "/data/seed"]), "seed\n");
    assert_eq!(e.docker_ok(&["volume", "ls", "-q"]), "named\n");
    e.docker_ok(&["run", "--rm", "-v", "named:/data", "withvol", "sh", "-c", "echo mine > /data/seed"]);
    assert_eq!(e.docker_ok(&["run", "--rm", "-v", "named:/data", "withvol", "cat", "/data/seed"]), "mine\n");
    let out = e.docker_ok(&["run", "--rm", "-v", "bare:/data:nocopy", "withvol", "ls", "/data"]);
    assert_eq!(out, "", "a nocopy volume took the image's files");
}

/// What one command gave: its exit code and output, container and network ids masked.
#[derive(Debug, PartialEq)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
}

fn outcome(mut cmd: Command, input: Option<&str>) -> (Outcome, String) {
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(text) = input {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    // a command that hangs is a difference, not a hung test
    if !wait_until(std::time::Duration::from_secs(120), || child.try_wait().unwrap().is_some()) {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let mask = |s: &str| {
        s.split_inclusive(|c: char| !c.is_ascii_hexdigit())
            .map(|w| {
                let hex = w.trim_end_matches(|c: char| !c.is_ascii_hexdigit());
                match hex.len() {
                    64 => w.replacen(hex, "<id>", 1),
                    12 if hex.chars().any(|c| c.is_ascii_digit()) && hex.chars().any(|c| c.is_ascii_alphabetic()) => {
                        w.replacen(hex, "<short-id>", 1)
                    }
                    _ => w.to_string(),
                }
            })
            .collect::<String>()
    };
    (Outcome { code: out.status.code(), stdout: mask(&stdout(&out)) }, stderr(&out))
}

/// Everyday commands through the `engine` CLI against engined and through the Docker CLI
/// against a private dockerd, all on engined then all on dockerd, in the same order: the same
/// output and exit code (run flags, exec, stop, logs, volumes, networks, inspect templates,
/// errors).
#[test]
fn everyday_commands_match_the_docker_cli_on_dockerd() {
    let e = Engined::start();
    let d = engine_test_support::dockerd::Dockerd::start(&[]);
    let tar = e.busybox_tar();
    let bps = format!("/dev/{}:1mb", block_device());
    // a subnet of this engined's own (no other test's network has it)
    let subnet = e.subnet(7);
    let address = subnet.replace(".0/24", ".9");
    let nonet = ["run", "--rm", "--network", "none"];
    let run = |rest: &[&str]| -> Vec<String> { nonet.iter().chain(rest).map(|s| s.to_string()).collect() };
    let cases: Vec<(Vec<String>, Option<&str>)> = vec![
        (vec!["import".into(), "-c".into(), "CMD [\"sh\"]".into(), tar.display().to_string(), "bb".into()], None),
        (run(&["bb", "echo", "hi"]), None),
        (run(&["bb", "sh", "-c", "exit 3"]), None),
        (run(&["-e", "A=1", "bb", "sh", "-c", "echo $A"]), None),
        (run(&["-w", "/tmp", "bb", "pwd"]), None),
        (run(&["-w", "/not/there", "bb", "pwd"]), None),
        (run(&["-u", "1000:1000", "bb", "id"]), None),
        (run(&["--entrypoint", "echo", "bb", "x", "y"]), None),
        (run(&["-h", "myhost", "bb", "hostname"]), None),
        (run(&["--read-only", "bb", "touch", "/x"]), None),
        (run(&["bb", "ls", "/sys/class/net"]), None),
        (run(&["--cap-drop", "ALL", "bb", "grep", "CapEff", "/proc/self/status"]), None),
        (run(&["--cap-add", "NET_ADMIN", "bb", "grep", "CapEff", "/proc/self/status"]), None),
        (run(&["--ulimit", "nofile=100:200", "bb", "sh", "-c", "ulimit -n; ulimit -Hn"]), None),
        (run(&["--shm-size", "1m", "bb", "sh", "-c", "df -k /dev/shm | tail -1 | awk '{print $2}'"]), None),
        (run(&["--tmpfs", "/t:size=2m", "bb", "sh", "-c", "df -k /t | tail -1 | awk '{print $2}'"]), None),
        (run(&["--sysctl", "kernel.shmmax=1048576", "bb", "cat", "/proc/sys/kernel/shmmax"]), None),
        (run(&["--add-host", "foo:10.1.2.3", "bb", "grep", "foo", "/etc/hosts"]), None),
        (run(&["-a", "stdout", "bb", "sh", "-c", "echo out; echo err >&2"]), None),
        (run(&["-a", "stderr", "bb", "sh", "-c", "echo out; echo err >&2"]), None),
        (run(&["-i", "bb", "cat"]), Some("piped\n")),
        (run(&["--group-add", "10", "-u", "1000", "bb", "id", "-G"]), None),
        (run(&["--sig-proxy=false", "bb", "true"]), None),
        (run(&["--device-read-bps", &bps, "bb", "true"]), None),
        (run(&["bb", "nosuchcmd"]), None),
        (run(&["bb", "/etc"]), None),
        (run(&["--pull", "never", "nosuch:1", "true"]), None),
        (run(&["--storage-opt", "size=1G", "bb", "true"]), None),
        (run(&["--isolation", "hyperv", "bb", "true"]), None),
        (vec!["create".into(), "--name".into(), "c2".into(), "--network".into(), "none".into(), "bb".into()], None),
        (
            vec![
                "inspect".into(),
                "-f".into(),
                "{{.State.Status}} {{json .Config.Cmd}} {{.HostConfig.NetworkMode}}".into(),
                "c2".into(),
            ],
            None,
        ),
        (vec!["kill".into(), "c2".into()], None),
        (vec!["rm".into(), "c2".into()], None),
        (
            [
                "run",
                "-d",
                "--name",
                "svc",
                "--network",
                "none",
                "bb",
                "sh",
                "-c",
                "echo up; echo err >&2; exec sleep 1000",
            ]
            .map(String::from)
            .to_vec(),
            None,
        ),
        (["ps", "--format", "{{.Names}} {{.Image}} {{.Command}}"].map(String::from).to_vec(), None),
        (["logs", "svc"].map(String::from).to_vec(), None),
        (["exec", "svc", "echo", "hi"].map(String::from).to_vec(), None),
        (["exec", "svc", "sh", "-c", "exit 4"].map(String::from).to_vec(), None),
        (["exec", "-w", "/tmp", "svc", "pwd"].map(String::from).to_vec(), None),
        (["exec", "-e", "X=2", "svc", "sh", "-c", "echo $X"].map(String::from).to_vec(), None),
        (["exec", "-u", "1000", "svc", "id", "-u"].map(String::from).to_vec(), None),
        (["exec", "-i", "svc", "cat"].map(String::from).to_vec(), Some("in\n")),
        (["exec", "svc", "nosuchcmd"].map(String::from).to_vec(), None),
        (
            ["inspect", "-f", "{{.State.Status}} {{.State.Running}} {{json .Config.Cmd}} {{.Name}}", "svc"]
                .map(String::from)
                .to_vec(),
            None,
        ),
        (
            [
                "inspect",
                "-f",
                "{{range $k, $v := .Config.Labels}}{{$k}}{{end}}|{{len .Mounts}}|{{.HostConfig.RestartPolicy.Name}}",
                "svc",
            ]
            .map(String::from)
            .to_vec(),
            None,
        ),
        (["pause", "svc"].map(String::from).to_vec(), None),
        (["inspect", "-f", "{{.State.Status}} {{.State.Paused}}", "svc"].map(String::from).to_vec(), None),
        (["unpause", "svc"].map(String::from).to_vec(), None),
        (["rename", "svc", "svc2"].map(String::from).to_vec(), None),
        (["stop", "-t", "1", "svc2"].map(String::from).to_vec(), None),
        (["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "svc2"].map(String::from).to_vec(), None),
        (["start", "svc2"].map(String::from).to_vec(), None),
        (["kill", "-s", "KILL", "svc2"].map(String::from).to_vec(), None),
        (["wait", "svc2"].map(String::from).to_vec(), None),
        (["rm", "svc2"].map(String::from).to_vec(), None),
        (["rm", "nosuch"].map(String::from).to_vec(), None),
        (["volume", "create", "v1"].map(String::from).to_vec(), None),
        (["volume", "ls", "-q"].map(String::from).to_vec(), None),
        (run(&["-v", "v1:/data", "bb", "sh", "-c", "echo x > /data/f"]), None),
        (run(&["-v", "v1:/data:ro", "bb", "cat", "/data/f"]), None),
        (run(&["-v", "v1:/data:ro", "bb", "touch", "/data/g"]), None),
        (["volume", "inspect", "-f", "{{.Driver}} {{.Name}} {{.Scope}}", "v1"].map(String::from).to_vec(), None),
        (["volume", "rm", "v1"].map(String::from).to_vec(), None),
        (["volume", "rm", "v1"].map(String::from).to_vec(), None),
        (vec!["network".into(), "create".into(), "--subnet".into(), subnet.clone(), "n1".into()], None),
        (
            ["network", "ls", "--filter", "name=n1", "--format", "{{.Name}} {{.Driver}} {{.Scope}}"]
                .map(String::from)
                .to_vec(),
            None,
        ),
        (
            [
                "network",
                "inspect",
                "-f",
                "{{.Name}} {{.Driver}} {{.Internal}} {{range .IPAM.Config}}{{.Subnet}}{{end}}",
                "n1",
            ]
            .map(String::from)
            .to_vec(),
            None,
        ),
        (
            [
                "run",
                "--rm",
                "--network",
                "n1",
                "--ip",
                &address,
                "bb",
                "sh",
                "-c",
                "ls /sys/class/net; ip -4 -o addr show eth0 | awk '{print $4}'",
            ]
            .map(String::from)
            .to_vec(),
            None,
        ),
        (["network", "rm", "n1"].map(String::from).to_vec(), None),
        (["network", "rm", "n1"].map(String::from).to_vec(), None),
        (["image", "inspect", "-f", "{{json .Config.Cmd}} {{.Os}}", "bb"].map(String::from).to_vec(), None),
        (["tag", "bb", "bb:two"].map(String::from).to_vec(), None),
        (["images", "--format", "{{.Repository}}:{{.Tag}}"].map(String::from).to_vec(), None),
        (["rmi", "bb:two"].map(String::from).to_vec(), None),
        (["image", "inspect", "nosuch"].map(String::from).to_vec(), None),
        (["ps", "-a", "--format", "{{.Names}}"].map(String::from).to_vec(), None),
    ];
    // engined's pass ends with its network removed, so both never hold the subnet at once
    let pass = |program: std::path::PathBuf, host: String| -> Vec<(Outcome, String)> {
        cases
            .iter()
            .map(|(args, input)| {
                let mut cmd = Command::new(&program);
                cmd.arg("-H").arg(&host).args(args);
                outcome(cmd, *input)
            })
            .collect()
    };
    let engined = pass(bin("engine"), e.host());
    let dockerd = pass(dockerd::docker_cli(), format!("unix://{}", d.sock.display()));
    let mut differ = Vec::new();
    for (((args, _), (ours, our_err)), (theirs, their_err)) in cases.iter().zip(engined).zip(dockerd) {
        if ours != theirs {
            differ.push(format!("{args:?}\n  engine: {ours:?} {our_err:?}\n  docker: {theirs:?} {their_err:?}"));
        }
    }
    assert!(cases.len() >= 70, "{}", cases.len());
    assert!(differ.is_empty(), "{} of {} commands differ:\n{}", differ.len(), cases.len(), differ.join("\n"));
    e.assert_clean();
}
