//! Ship: push to and pull from Debian's `docker-registry` on 127.0.0.1 (started per test: plain
//! HTTP, htpasswd Basic auth, TLS with a client certificate, bearer tokens from a token server
//! of the test's), through the engine CLI, the Docker CLI and docker-py; images made by umoci,
//! skopeo (gzip, zstd, uncompressed) and buildah, and what the engine pushes and saves read back
//! by them and by dockerd; faults: a corrupted blob, connections cut mid-blob both ways, the
//! registry stopped and engined killed mid-pull.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use engine_test_support::engined::Engined;
use engine_test_support::*;

/// A private registry on a free loopback port; stopped (by pid) when dropped.
struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    addr: String,
}

impl Registry {
    fn start(htpasswd: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let mut extra = String::new();
        if let Some((user, password)) = htpasswd {
            let out =
                Command::new("htpasswd").args(["-Bbn", user, password]).output().expect("htpasswd (apache2-utils)");
            assert!(out.status.success(), "htpasswd: {}", stderr(&out));
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
            extra = format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                dir.path().join("htpasswd").display()
            );
        }
        Registry::start_with(dir, None, |_| extra)
    }

    /// A registry in `dir` on `port` (a free one when `None`), with more configuration that
    /// `extra` writes given the address.
    fn start_with(dir: tempfile::TempDir, port: Option<u16>, extra: impl FnOnce(&str) -> String) -> Registry {
        let port =
            port.unwrap_or_else(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
        Registry::start_at(dir, &format!("127.0.0.1:{port}"), None, extra)
    }

    /// A registry listening on `addr`, in the network namespace `netns` (a test's own) if given.
    fn start_at(
        dir: tempfile::TempDir,
        addr: &str,
        netns: Option<&str>,
        extra: impl FnOnce(&str) -> String,
    ) -> Registry {
        let addr = addr.to_string();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        config.push_str(&extra(&addr));
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let mut cmd = match netns {
            // `ip netns exec` enters the namespace and execs the registry: the child is it.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(which("docker-registry"));
                c
            }
            None => Command::new(which("docker-registry")),
        };
        let child = cmd
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian's docker-registry package)");
        let r = Registry { child, dir, addr };
        wait_for("the registry to listen", || TcpStream::connect(&r.addr).is_ok());
        r
    }

    /// The stored blob file of `digest` (`sha256:…`).
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.path().join(format!("data/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `engine args` with its own credentials directory (DOCKER_CONFIG) and `input` on stdin.
fn engine_with(e: &Engined, config: &Path, args: &[&str], input: &str) -> Output {
    client_with(&bin("engine"), e, config, args, input)
}

/// The same through the Docker CLI.
fn docker_with(e: &Engined, config: &Path, args: &[&str], input: &str) -> Output {
    client_with(&engine_test_support::dockerd::docker_cli(), e, config, args, input)
}

/// A client run with `config` as its DOCKER_CONFIG; credential helpers a test puts in
/// `<config>/bin` are on its PATH.
fn client_with(program: &Path, e: &Engined, config: &Path, args: &[&str], input: &str) -> Output {
    let path = format!("{}:{}", config.join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let mut child = Command::new(program)
        .arg("-H")
        .arg(e.host())
        .args(args)
        .env("DOCKER_CONFIG", config)
        .env("DOCKER_BUILDKIT", "0")
        .env("PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn image_ids(e: &Engined) -> String {
    e.ok(&["images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"])
}

#[test]
fn push_pull_and_run_through_a_loopback_registry() {
    let reg = Registry::start(None);
    let e = Engined::start();
    e.import_busybox("busybox");
    let name = format!("{}/test/busybox:1", reg.addr);
    e.ok(&["tag", "busybox", &name]);

    let out = e.ok(&["push", &name]);
    assert!(out.contains("The push refers to repository"), "{out}");
    assert!(out.contains("Pushed"), "{out}");
    let digest = out
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest in {out}"))
        .to_string();
    // The push is one trace, found by the image's name: the command, the request, the push,
    // an upload per blob (the layer and the config) and the manifest.
    let names = one_trace(&e.ok(&["trace", "--json", "--op", "push", "--image", &name]));
    let count = |n: &str| names.iter().filter(|x| *x == n).count();
    assert_eq!((count("engine.push"), count("daemon.push")), (1, 1), "{names:?}");
    assert_eq!((count("registry.upload"), count("registry.manifest")), (2, 1), "{names:?}");
    // A second push finds every layer there.
    let again = e.ok(&["push", &name]);
    assert!(again.contains("Layer already exists"), "{again}");

    // What the registry holds, asked without pulling (GET /distribution/{name}/json).
    let (status, body) = e.request("GET", &format!("/distribution/{name}/json"), "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["Descriptor"]["digest"], digest.as_str(), "{v}");
    assert_eq!(v["Platforms"][0]["os"], "linux", "{v}");
    let (status, body) = e.request("GET", &format!("/distribution/{}/test/busybox:nope/json", reg.addr), "");
    assert_eq!(status, 404, "{body}");

    // Another tool reads what the engine pushed.
    let inspect =
        Command::new("skopeo").args(["inspect", "--tls-verify=false", &format!("docker://{name}")]).output().unwrap();
    assert!(inspect.status.success(), "skopeo inspect: {}", stderr(&inspect));
    assert!(stdout(&inspect).contains(&digest), "{}", stdout(&inspect));

    // Pulled into an engine that never had it, then run.
    e.ok(&["rmi", &name, "busybox"]);
    assert!(!image_ids(&e).contains("busybox"), "{}", image_ids(&e));
    let out = e.ok(&["pull", &name]);
    assert!(out.contains("1: Pulling from test/busybox"), "{out}");
    assert!(out.contains("Pull complete"), "{out}");
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    assert!(out.contains(&format!("Status: Downloaded newer image for {name}")), "{out}");
    assert_eq!(e.ok(&["run", "--rm", &name, "echo", "pulled"]).trim(), "pulled");
    let repo_digests = e.ok(&["image", "inspect", "--format", "{{json .RepoDigests}}", &name]);
    assert!(repo_digests.contains(&format!("{}/test/busybox@{digest}", reg.addr)), "{repo_digests}");
    let out = e.ok(&["pull", &name]);
    assert!(out.contains(&format!("Status: Image is up to date for {name}")), "{out}");

    // By digest, and a tag the registry lacks.
    let by_digest = format!("{}/test/busybox@{digest}", reg.addr);
    e.ok(&["pull", &by_digest]);
    let err = e.fails(&["pull", &format!("{}/test/busybox:nope", reg.addr)]);
    assert!(err.contains("not found") && err.contains("manifest unknown"), "{err}");

    // `run` of an image it does not have pulls it first, as docker run does.
    e.ok(&["rmi", "-f", &name]);
    let run = e.engine(&["run", "--rm", &name, "echo", "auto"]);
    assert!(run.status.success(), "{}{}", stdout(&run), stderr(&run));
    assert_eq!(stdout(&run).trim(), "auto");
    assert!(stderr(&run).contains(&format!("Unable to find image '{name}' locally")), "{}", stderr(&run));
    e.ok(&["rmi", "-f", &name]);
    let never = e.fails(&["run", "--rm", "--pull", "never", &name, "true"]);
    assert!(never.contains("No such image"), "{never}");

    // The Docker CLI pulls through engined.
    let out = e.docker_ok(&["pull", &name]);
    assert!(out.contains("Pull complete") || out.contains("Already exists"), "{out}");
    assert_eq!(e.docker_ok(&["run", "--rm", &name, "echo", "docker"]).trim(), "docker");
    e.ok(&["rmi", "-f", &name]);

    // A layer blob changed by one byte in the registry: refused, nothing listed; mended, pulled.
    let manifest = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{name}")])
        .output()
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&manifest.stdout).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let file = reg.blob_file(&layer);
    let good = std::fs::read(&file).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&file, &bad).unwrap();
    let err = e.fails(&["pull", &name]);
    assert!(err.contains("digest mismatch"), "{err}");
    assert!(!image_ids(&e).contains("test/busybox"), "{}", image_ids(&e));
    std::fs::write(&file, &good).unwrap();
    let out = e.ok(&["pull", &name]);
    assert!(out.contains("Status: Downloaded newer image"), "{out}");
    assert_eq!(e.ok(&["run", "--rm", &name, "echo", "mended"]).trim(), "mended");

    // Pushed to another repository of the same registry, the layers are mounted, not sent.
    let other = format!("{}/other/busybox:1", reg.addr);
    e.ok(&["tag", &name, &other]);
    let out = e.ok(&["push", &other]);
    assert!(out.contains("Mounted from test/busybox"), "{out}");
    e.ok(&["rmi", &other]);
    // The Docker CLI pushes through engined.
    let via_docker = format!("{}/docker/busybox:1", reg.addr);
    e.ok(&["tag", &name, &via_docker]);
    let out = e.docker_ok(&["push", &via_docker]);
    assert!(out.contains("1: digest: sha256:"), "{out}");
    e.ok(&["rmi", &via_docker]);

    // Every tag of a repository, both ways (`-a`).
    let repo = format!("{}/test/tags", reg.addr);
    for t in ["a", "b"] {
        e.ok(&["tag", &name, &format!("{repo}:{t}")]);
    }
    assert!(e.fails(&["push", "-a", &format!("{repo}:a")]).contains("tag can't be used with --all-tags/-a"));
    let out = e.ok(&["push", "-a", &repo]);
    assert_eq!(out.matches("The push refers to repository").count(), 1, "{out}");
    assert_eq!(out.matches(": digest: sha256:").count(), 2, "{out}");
    e.ok(&["rmi", &format!("{repo}:a"), &format!("{repo}:b")]);
    let out = e.ok(&["pull", "-a", &repo]);
    assert!(out.contains("a: Pulling from test/tags") && out.contains("b: Pulling from test/tags"), "{out}");
    assert!(out.contains(&format!("Status: Downloaded newer image for {repo}\n")), "{out}");
    let tags = e.ok(&["images", "--format", "{{.Tag}}", &repo]);
    assert_eq!(tags.lines().collect::<std::collections::BTreeSet<_>>(), ["a", "b"].into(), "{tags}");

    // What went over the wire is on /metrics, and each phase's time too.
    let (_, metrics) = e.request("GET", "/metrics", "");
    for direction in ["pull", "push"] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("engine_registry_bytes_total{{direction=\"{direction}\"}}")))
            .unwrap_or_else(|| panic!("no {direction} bytes in {metrics}"));
        let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n > 1_000_000.0, "{line}");
    }
    assert!(metrics.contains("phase=\"registry.blob\""), "{metrics}");
}

#[test]
fn basic_auth_login_logout_and_refusals() {
    let reg = Registry::start(Some(("alice", "s3cret-pass")));
    let e = Engined::start();
    let config = tempfile::tempdir().unwrap();
    e.import_busybox("busybox");
    let name = format!("{}/private/busybox:latest", reg.addr);
    e.ok(&["tag", "busybox", &name]);

    // Without credentials: refused, in Docker's words.
    let out = engine_with(&e, config.path(), &["push", &name], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));

    // A wrong password is refused and nothing is kept.
    let out = engine_with(&e, config.path(), &["login", "-u", "alice", "--password-stdin", &reg.addr], "wrong\n");
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stderr(&out).contains("401 Unauthorized"), "{}", stderr(&out));
    assert!(!config.path().join("config.json").exists());

    let out = engine_with(&e, config.path(), &["login", "-u", "alice", "--password-stdin", &reg.addr], "s3cret-pass\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Login Succeeded"));
    let kept = std::fs::read_to_string(config.path().join("config.json")).unwrap();
    assert!(kept.contains(&reg.addr) && kept.contains("\"auth\""), "{kept}");
    assert!(!e.log_tail().contains("s3cret-pass"), "the password reached engined's log");

    let out = engine_with(&e, config.path(), &["push", &name], "");
    assert!(out.status.success(), "{}", stderr(&out));
    e.ok(&["rmi", &name, "busybox"]);
    let out = engine_with(&e, config.path(), &["pull", &name], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Status: Downloaded newer image"), "{}", stdout(&out));

    // Logged out, the private image is refused.
    e.ok(&["rmi", &name]);
    let out = engine_with(&e, config.path(), &["logout", &reg.addr], "");
    assert!(stdout(&out).contains("Removing login credentials"), "{}", stdout(&out));
    let out = engine_with(&e, config.path(), &["pull", &name], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("pull access denied"), "{}", stderr(&out));
    assert!(!image_ids(&e).contains("private"), "{}", image_ids(&e));

    // The Docker CLI logs in through engined's POST /auth.
    let docker_config = tempfile::tempdir().unwrap();
    let out = docker_with(
        &e,
        docker_config.path(),
        &["login", "-u", "alice", "--password-stdin", &reg.addr],
        "s3cret-pass\n",
    );
    assert!(stdout(&out).contains("Login Succeeded"), "{}{}", stdout(&out), stderr(&out));
}

/// A build whose base image the store lacks pulls it, with the client's credentials for its
/// registry (the engine CLI's and the Docker CLI's `X-Registry-Config`), its progress in the
/// build's output; `--pull` asks the registry again; a refused pull or a platform the registry
/// lacks fails the build and makes nothing.
#[test]
fn a_build_pulls_its_base_image_with_the_clients_credentials() {
    let reg = Registry::start(Some(("bob", "b-pass")));
    let e = Engined::start();
    let (config, anonymous) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    e.import_busybox("busybox");
    let base = format!("{}/private/base:1", reg.addr);
    e.ok(&["tag", "busybox", &base]);
    let out = engine_with(&e, config.path(), &["login", "-u", "bob", "--password-stdin", &reg.addr], "b-pass\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = engine_with(&e, config.path(), &["push", &base], "");
    assert!(out.status.success(), "{}", stderr(&out));
    e.ok(&["rmi", &base, "busybox"]);
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), format!("FROM {base}\nRUN echo built > /built\n")).unwrap();
    let context = ctx.path().to_str().unwrap();
    let build = |config: &Path, args: &[&str]| {
        let mut all = vec!["build"];
        all.extend(args);
        all.push(context);
        engine_with(&e, config, &all, "")
    };

    let out = build(anonymous.path(), &["-t", "child:1"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stderr(&out).contains("pull access denied"), "{}", stderr(&out));
    assert!(!image_ids(&e).contains("child"), "{}", image_ids(&e));
    assert_eq!(e.ok(&["ps", "-aq"]), "", "a failed build left a container");

    let out = build(config.path(), &["-t", "child:1"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("Pulling from private/base"), "{}", stdout(&out));
    assert!(stdout(&out).contains(&format!("Status: Downloaded newer image for {base}")), "{}", stdout(&out));
    assert_eq!(e.ok(&["run", "--rm", "child:1", "cat", "/built"]).trim(), "built");
    // the store has it now: no pull, no credentials needed
    let out = build(anonymous.path(), &["-t", "child:2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("Pulling from"), "{}", stdout(&out));
    // --pull asks the registry again
    let out = build(config.path(), &["--pull", "-t", "child:3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("Status: Image is up to date for {base}")), "{}", stdout(&out));

    // a platform the registry lacks, and one that is not Linux
    let out = build(config.path(), &["--platform", "linux/arm64", "-t", "arm:1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("linux/arm64"), "{}", stderr(&out));
    let out = build(config.path(), &["--platform", "windows/amd64", "-t", "win:1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("only linux is supported"), "{}", stderr(&out));
    assert!(!image_ids(&e).contains("arm") && !image_ids(&e).contains("win"), "{}", image_ids(&e));

    // The Docker CLI's classic builder sends its logins in X-Registry-Config.
    e.ok(&["rmi", &base]);
    let docker_config = tempfile::tempdir().unwrap();
    let out = docker_with(&e, docker_config.path(), &["login", "-u", "bob", "--password-stdin", &reg.addr], "b-pass\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = docker_with(&e, docker_config.path(), &["build", "-t", "child:4", context], "");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("Pulling from private/base"), "{}", stdout(&out));
    assert_eq!(e.ok(&["ps", "-aq"]), "", "a build left a container");
}

/// Runs a tool in `dir`, failing the test with its stderr.
fn tool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

#[test]
fn images_made_by_umoci_and_copied_by_skopeo_load_pull_and_run_each_pull_one_trace() {
    let reg = Registry::start(None);
    let e = Engined::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();

    // umoci: a busybox layer, then a layer inserted at `/`, which umoci writes with the entry `/`.
    tool(w, &["umoci", "init", "--layout", "oci"]);
    tool(w, &["umoci", "new", "--image", "oci:bb"]);
    tool(w, &["umoci", "unpack", "--rootless", "--image", "oci:bb", "bundle"]);
    std::fs::create_dir_all(w.join("bundle/rootfs/bin")).unwrap();
    std::fs::copy(which("busybox"), w.join("bundle/rootfs/bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", w.join("bundle/rootfs/bin/sh")).unwrap();
    tool(w, &["umoci", "repack", "--image", "oci:bb", "bundle"]);
    std::fs::create_dir_all(w.join("extra/etc")).unwrap();
    std::fs::write(w.join("extra/etc/greeting"), "from umoci\n").unwrap();
    tool(w, &["umoci", "insert", "--image", "oci:bb", "extra", "/"]);
    tool(
        w,
        &[
            "umoci",
            "config",
            "--image",
            "oci:bb",
            "--config.cmd",
            "/bin/busybox",
            "--config.cmd",
            "cat",
            "--config.cmd",
            "/etc/greeting",
        ],
    );
    let has_root_entry = std::fs::read_dir(w.join("oci/blobs/sha256")).unwrap().any(|b| {
        let out = Command::new("tar").arg("-tzf").arg(b.unwrap().path()).output().unwrap();
        stdout(&out).lines().any(|l| l == "/")
    });
    assert!(has_root_entry, "umoci wrote no layer with the entry `/`: the test proves nothing");

    // Copied into the registry by skopeo, zstd and gzip, then pulled and run.
    for (tag, compress) in [("zstd", "zstd"), ("gzip", "gzip")] {
        let name = format!("{}/umoci/bb:{tag}", reg.addr);
        tool(
            w,
            &[
                "skopeo",
                "copy",
                "--dest-tls-verify=false",
                "--dest-compress-format",
                compress,
                "oci:oci:bb",
                &format!("docker://{name}"),
            ],
        );
        let out = e.ok(&["pull", &name]);
        assert!(out.contains("Pull complete"), "{out}");
        assert_eq!(e.ok(&["run", "--rm", &name]).trim(), "from umoci", "{tag}");
    }

    // The zstd pull is one trace: the request, the pull, the manifest and a blob and an unpack
    // span per layer, found by the image's name.
    let zstd = format!("{}/umoci/bb:zstd", reg.addr);
    let out = e.ok(&["trace", "--json", "--op", "pull", "--image", &zstd]);
    let names = one_trace(&out);
    let count = |n: &str| names.iter().filter(|x| *x == n).count();
    assert_eq!(count("engine.pull"), 1, "{names:?}");
    assert_eq!(count("daemon.pull"), 1, "{names:?}");
    assert_eq!(count("registry.resolve"), 1, "{names:?}");
    assert_eq!(count("registry.blob"), 2, "{names:?}");
    assert_eq!(count("image.unpack"), 2, "{names:?}");
    assert!(!out.contains("Authorization"), "a credential header in the trace");
    let waterfall = e.ok(&["trace", "--image", &format!("{}/umoci/bb", reg.addr)]);
    assert!(waterfall.contains("registry.blob"), "{waterfall}");

    // Loaded as an OCI layout archive (the layers it shares with the pulls kept once), and run.
    tool(w, &["tar", "-C", "oci", "-cf", "bb.tar", "."]);
    let loaded = e.ok(&["load", "-i", w.join("bb.tar").to_str().unwrap()]);
    // umoci names the image by a bare tag (`bb`), which names no repository: it loads untagged.
    let id = loaded
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no image id in {loaded}"))
        .to_string();
    e.ok(&["tag", &id, "bb"]);
    assert_eq!(e.ok(&["run", "--rm", "bb"]).trim(), "from umoci");

    // Uncompressed layers, as skopeo writes them when asked: they load and run, go through the
    // registry as they are, and what the engine saves of them umoci unpacks and skopeo reads as
    // a Docker and as an OCI archive. (An engine of its own: here the image would be the one
    // pulled above, whose manifest names zstd layers, which this umoci cannot read.)
    tool(w, &["skopeo", "copy", "--dest-decompress", "oci:oci:bb", "dir:plain"]);
    tool(w, &["skopeo", "copy", "--dest-oci-accept-uncompressed-layers", "dir:plain", "oci:plain-oci:bb"]);
    let uncompressed = |manifest: &str| {
        let m: serde_json::Value = serde_json::from_str(manifest).unwrap();
        let layers = m["layers"].as_array().unwrap();
        assert!(layers.iter().all(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar"), "{m}");
    };
    let top: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.join("plain-oci/index.json")).unwrap()).unwrap();
    let digest = top["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    uncompressed(&std::fs::read_to_string(w.join("plain-oci/blobs/sha256").join(digest)).unwrap());
    tool(w, &["tar", "-C", "plain-oci", "-cf", "plain.tar", "."]);
    let e2 = Engined::start();
    let loaded = e2.ok(&["load", "-i", w.join("plain.tar").to_str().unwrap()]);
    let plain_id = loaded.split_whitespace().find(|w| w.starts_with("sha256:")).unwrap().to_string();
    let plain = format!("{}/plain/bb:1", reg.addr);
    e2.ok(&["tag", &plain_id, &plain]);
    assert_eq!(e2.ok(&["run", "--rm", &plain]).trim(), "from umoci");
    e2.ok(&["push", &plain]);
    uncompressed(&tool(w, &["skopeo", "inspect", "--raw", "--tls-verify=false", &format!("docker://{plain}")]));
    e2.ok(&["rmi", &plain]);
    let out = e2.ok(&["pull", &plain]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    assert_eq!(e2.ok(&["run", "--rm", &plain]).trim(), "from umoci");
    let saved = w.join("saved.tar");
    e2.ok(&["save", "-o", saved.to_str().unwrap(), &plain]);
    std::fs::create_dir(w.join("saved")).unwrap();
    tool(w, &["tar", "-C", "saved", "-xf", "saved.tar"]);
    tool(w, &["umoci", "unpack", "--rootless", "--image", "saved:1", "saved-bundle"]);
    assert_eq!(std::fs::read_to_string(w.join("saved-bundle/rootfs/etc/greeting")).unwrap(), "from umoci\n");
    tool(w, &["skopeo", "copy", "docker-archive:saved.tar", "oci:from-docker-archive:bb"]);
    tool(w, &["skopeo", "copy", "oci-archive:saved.tar", "oci:from-oci-archive:bb"]);

    // What the engine pushes, skopeo reads and copies out whole.
    let again = format!("{}/engine/bb:1", reg.addr);
    e.ok(&["tag", "bb", &again]);
    e.ok(&["push", &again]);
    tool(w, &["skopeo", "copy", "--src-tls-verify=false", &format!("docker://{again}"), "oci:copied:bb"]);
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(w.join("copied/index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(1), "{index}");
}

/// A loopback TCP proxy in front of the registry that sends its answers slowly (about 2 MB/s),
/// so a test can act in the middle of a blob: cut one connection once (`cut_once_after`), or
/// stop answering altogether like a stopped registry (`stop_after`, then `resume`).
struct SlowProxy {
    addr: String,
    state: std::sync::Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    /// Bytes sent to clients, over all connections.
    sent: std::sync::atomic::AtomicU64,
    /// Cut the connection that carries the byte at this count, once (0: never).
    cut_once_at: std::sync::atomic::AtomicU64,
    /// From this count on, every connection is closed and new ones are refused (0: never).
    stop_at: std::sync::atomic::AtomicU64,
    stopped: std::sync::atomic::AtomicBool,
    /// Whether a client asked for a byte range (a resumed download).
    saw_range: std::sync::atomic::AtomicBool,
    /// Bytes received from clients, over all connections.
    received: std::sync::atomic::AtomicU64,
    /// Cut the connection that carries the client's byte at this count, once (0: never).
    cut_upload_once_at: std::sync::atomic::AtomicU64,
    /// Whether a client sent a `Content-Range` (a chunked upload).
    saw_content_range: std::sync::atomic::AtomicBool,
}

impl SlowProxy {
    fn start(upstream: &str) -> SlowProxy {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = std::sync::Arc::new(ProxyState::default());
        let (st, upstream) = (state.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if st.stopped.load(SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let st_up = st.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = std::io::Read::read(&mut c_read, &mut buf) {
                        if n == 0 {
                            break;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                        if text.contains("\r\nrange: bytes=") {
                            st_up.saw_range.store(true, SeqCst);
                        }
                        if text.contains("\r\ncontent-range: ") {
                            st_up.saw_content_range.store(true, SeqCst);
                        }
                        let total = st_up.received.fetch_add(n as u64, SeqCst) + n as u64;
                        let cut = st_up.cut_upload_once_at.load(SeqCst);
                        if cut > 0 && total >= cut {
                            st_up.cut_upload_once_at.store(0, SeqCst);
                            let _ = c_read.shutdown(std::net::Shutdown::Both);
                            let _ = s_write.shutdown(std::net::Shutdown::Both);
                            break;
                        }
                        if s_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                let st_down = st.clone();
                std::thread::spawn(move || {
                    let (mut s_read, mut c_write) = (server, client);
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = std::io::Read::read(&mut s_read, &mut buf) {
                        if n == 0 || st_down.stopped.load(SeqCst) {
                            break;
                        }
                        let total = st_down.sent.fetch_add(n as u64, SeqCst) + n as u64;
                        let cut = st_down.cut_once_at.load(SeqCst);
                        if cut > 0 && total >= cut {
                            st_down.cut_once_at.store(0, SeqCst);
                            break;
                        }
                        let stop = st_down.stop_at.load(SeqCst);
                        if stop > 0 && total >= stop {
                            st_down.stopped.store(true, SeqCst);
                            break;
                        }
                        if c_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(8));
                    }
                    let _ = c_write.shutdown(std::net::Shutdown::Both);
                    let _ = s_read.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        SlowProxy { addr, state }
    }

    fn cut_once_after(&self, bytes: u64) {
        let sent = self.state.sent.load(std::sync::atomic::Ordering::SeqCst);
        self.state.cut_once_at.store(sent + bytes, std::sync::atomic::Ordering::SeqCst);
    }

    fn stop_after(&self, bytes: u64) {
        let sent = self.state.sent.load(std::sync::atomic::Ordering::SeqCst);
        self.state.stop_at.store(sent + bytes, std::sync::atomic::Ordering::SeqCst);
    }

    fn resume(&self) {
        self.state.stop_at.store(0, std::sync::atomic::Ordering::SeqCst);
        self.state.stopped.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    fn saw_range(&self) -> bool {
        self.state.saw_range.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn cut_upload_once_after(&self, bytes: u64) {
        let received = self.state.received.load(std::sync::atomic::Ordering::SeqCst);
        self.state.cut_upload_once_at.store(received + bytes, std::sync::atomic::Ordering::SeqCst);
    }

    fn saw_content_range(&self) -> bool {
        self.state.saw_content_range.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The span names of the one trace `engine trace --json` printed (asserting it is one).
fn one_trace(json_lines: &str) -> Vec<String> {
    let docs: Vec<serde_json::Value> = json_lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(docs.len(), 1, "{json_lines}");
    let mut names = Vec::new();
    let mut trace_ids = std::collections::HashSet::new();
    for rs in docs[0]["resourceSpans"].as_array().unwrap() {
        for ss in rs["scopeSpans"].as_array().unwrap() {
            for s in ss["spans"].as_array().unwrap() {
                names.push(s["name"].as_str().unwrap().to_string());
                trace_ids.insert(s["traceId"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(trace_ids.len(), 1, "{names:?}");
    names
}

/// Files below `dir` whose names end with `suffix`, with their sizes.
fn files_ending(dir: &Path, suffix: &str) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if e.file_name().to_string_lossy().ends_with(suffix) {
                out.push((e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    out
}

/// 8 MiB that do not compress (xorshift from `seed`).
fn noise(seed: u64) -> Vec<u8> {
    let mut noise = vec![0u8; 8 << 20];
    let mut x = seed;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    noise
}

/// Imports as `name` a busybox image with `/noise`, 8 MiB that do not compress, in `dir`.
fn import_noise_image(e: &Engined, dir: &Path, name: &str) {
    let rootfs = dir.join("rootfs");
    make_busybox_rootfs(&rootfs);
    std::fs::write(rootfs.join("noise"), noise(0x9e37_79b9_7f4a_7c15)).unwrap();
    tool(dir, &["tar", "-C", "rootfs", "-cf", "big.tar", "."]);
    e.ok(&["import", "--change", "CMD [\"sh\"]", dir.join("big.tar").to_str().unwrap(), name]);
}

/// Pulls `name` with the CLI, kills engined (-9) once `ready`, and restarts it: the pull has
/// failed and no partial blob is left.
fn kill_engined_mid_pull(e: &mut Engined, name: &str, what: &str, ready: impl FnMut() -> bool) {
    let mut pull = Command::new(bin("engine"))
        .args(["-H", &e.host(), "pull", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(what, ready);
    e.kill9();
    assert!(!pull.wait().unwrap().success());
    e.restart();
    assert_eq!(files_ending(&e.data_root(), ".partial"), vec![]);
}

#[test]
fn a_push_whose_connection_breaks_mid_blob_completes_in_chunks() {
    let reg = Registry::start(None);
    let e = Engined::start_with(&[], &["--max-upload-chunk-size", "1m"]);
    let work = tempfile::tempdir().unwrap();
    let proxy = SlowProxy::start(&reg.addr);
    let name = format!("{}/test/chunked:1", proxy.addr);
    import_noise_image(&e, work.path(), &name);
    // The connection of the upload breaks 3 MiB in: the push goes on and completes.
    proxy.cut_upload_once_after(3 << 20);
    let out = e.ok(&["push", &name]);
    assert!(out.contains("Pushed") && out.contains("digest: sha256:"), "{out}");
    assert!(proxy.saw_content_range(), "the 8 MiB layer was not sent in 1 MiB chunks");
    assert_eq!(proxy.state.cut_upload_once_at.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing was cut");
    // What the registry holds is whole: pulled straight from it, it runs.
    let direct = format!("{}/test/chunked:1", reg.addr);
    e.ok(&["rmi", &name]);
    e.ok(&["pull", &direct]);
    assert_eq!(e.ok(&["run", "--rm", &direct, "sh", "-c", "wc -c < /noise"]).trim(), (8 << 20).to_string());
}

#[test]
fn interrupted_pulls_leave_nothing_and_the_next_pull_completes() {
    let reg = Registry::start(None);
    let mut e = Engined::start();
    // One layer of 8 MiB that does not compress, pushed straight to the registry.
    let work = tempfile::tempdir().unwrap();
    let direct = format!("{}/test/big:1", reg.addr);
    import_noise_image(&e, work.path(), &direct);
    e.ok(&["push", &direct]);
    e.ok(&["rmi", &direct]);
    let proxy = SlowProxy::start(&reg.addr);
    let name = format!("{}/test/big:1", proxy.addr);
    let check = |e: &Engined| {
        assert_eq!(e.ok(&["run", "--rm", &name, "sh", "-c", "wc -c < /noise"]).trim(), (8 << 20).to_string());
        e.ok(&["rmi", &name]);
    };
    let none_listed = |e: &Engined| {
        let ids = image_ids(e);
        assert!(!ids.contains("test/big"), "{ids}");
    };

    // A connection cut in the middle of the blob: the download resumes where it stopped.
    proxy.cut_once_after(3 << 20);
    let out = e.ok(&["pull", &name]);
    assert!(out.contains("Pull complete"), "{out}");
    assert!(proxy.saw_range(), "the download started again from the beginning");
    check(&e);

    // The registry stops answering mid-blob: a clear error, nothing listed, no partial blob.
    proxy.stop_after(3 << 20);
    let err = e.fails(&["pull", &name]);
    assert!(err.contains("blob sha256:"), "{err}");
    none_listed(&e);
    assert_eq!(files_ending(&e.data_root(), ".partial"), vec![]);
    proxy.resume();
    e.ok(&["pull", &name]);
    check(&e);

    // engined killed mid-blob: after its restart, nothing listed and nothing partial; the next
    // pull completes.
    let data_root = e.data_root();
    kill_engined_mid_pull(&mut e, &name, "a partial blob of 2 MiB or more", || {
        files_ending(&data_root, ".partial").iter().any(|(_, size)| *size >= 2 << 20)
    });
    none_listed(&e);
    let out = e.ok(&["pull", &name]);
    assert!(out.contains("Status: Downloaded newer image"), "{out}");
    check(&e);

    // On a terminal (script(1) gives it one), a line per layer redrawn in place, with the bar,
    // the sizes and the rate, as docker pull draws them.
    let command = format!("{} -H {} pull {name}", bin("engine").display(), e.host());
    let out = Command::new("script").args(["-qec", &command, "/dev/null"]).output().unwrap();
    assert!(out.status.success(), "{}", stdout(&out));
    let drawn = stdout(&out);
    assert!(drawn.contains("\x1b[") && drawn.contains("Downloading [="), "{drawn:?}");
    assert!(drawn.contains("MB/s") || drawn.contains("kB/s"), "no rate in {drawn:?}");
    assert!(drawn.contains("Status: Downloaded newer image"), "{drawn:?}");
    check(&e);
}

/// Puts `docker-credential-test` in `<config>/bin`: a credential helper as
/// docker-credential-pass and its kin behave (store, get, erase), keeping one file per server
/// in `<config>/helper-store`.
fn install_credential_helper(config: &Path) {
    let bin = config.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let store = config.join("helper-store");
    std::fs::create_dir_all(&store).unwrap();
    let script = format!(
        r#"#!/bin/sh
key() {{ printf '%s' "$1" | tr '/:' '__'; }}
case "$1" in
store) input=$(cat); server=$(printf '%s' "$input" | sed 's/.*"ServerURL":"\([^"]*\)".*/\1/')
       printf '%s' "$input" > "{store}/$(key "$server")" ;;
get) server=$(cat); f="{store}/$(key "$server")"
     if [ -f "$f" ]; then cat "$f"; else echo "credentials not found in native keychain"; exit 1; fi ;;
erase) server=$(cat); rm -f "{store}/$(key "$server")" ;;
list) echo '{{}}' ;;
*) exit 1 ;;
esac
"#,
        store = store.display()
    );
    let helper = bin.join("docker-credential-test");
    std::fs::write(&helper, script).unwrap();
    let mut perms = std::fs::metadata(&helper).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&helper, perms).unwrap();
}

#[test]
fn credential_helpers_keep_the_secret_and_both_clis_share_them() {
    let reg = Registry::start(Some(("alice", "s3cret-pass")));
    let e = Engined::start();
    let config = tempfile::tempdir().unwrap();
    install_credential_helper(config.path());
    std::fs::write(config.path().join("config.json"), r#"{"credsStore": "test"}"#).unwrap();
    e.import_busybox("busybox");
    let name = format!("{}/private/busybox:1", reg.addr);
    e.ok(&["tag", "busybox", &name]);
    let stored = config.path().join("helper-store").join(reg.addr.replace(':', "_"));
    let kept = || std::fs::read_to_string(config.path().join("config.json")).unwrap();

    // The engine's login hands the secret to the helper; config.json names the registry only.
    let out = engine_with(&e, config.path(), &["login", "-u", "alice", "--password-stdin", &reg.addr], "s3cret-pass\n");
    assert!(stdout(&out).contains("Login Succeeded"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("unencrypted"), "{}", stderr(&out));
    assert!(std::fs::read_to_string(&stored).unwrap().contains("s3cret-pass"));
    // (YWxpY2U6czNjcmV0LXBhc3M= is base64 of alice:s3cret-pass)
    assert!(kept().contains(&reg.addr) && !kept().contains("s3cret") && !kept().contains("YWxpY2U6"), "{}", kept());
    let out = engine_with(&e, config.path(), &["push", &name], "");
    assert!(out.status.success(), "{}", stderr(&out));

    // The Docker CLI uses what the engine's login stored, and the other way round.
    e.ok(&["rmi", &name]);
    let out = docker_with(&e, config.path(), &["pull", &name], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = engine_with(&e, config.path(), &["logout", &reg.addr], "");
    assert!(stdout(&out).contains("Removing login credentials"), "{}", stdout(&out));
    assert!(!stored.exists(), "logout left the secret in the helper");
    assert!(!kept().contains(&reg.addr), "{}", kept());
    let out = engine_with(&e, config.path(), &["push", &name], "");
    assert!(!out.status.success(), "pushed without credentials");
    let out = docker_with(&e, config.path(), &["login", "-u", "alice", "--password-stdin", &reg.addr], "s3cret-pass\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stored.exists(), "the Docker CLI's login did not use the helper");
    let out = engine_with(&e, config.path(), &["push", &name], "");
    assert!(out.status.success(), "{}", stderr(&out));

    // A helper for this registry only (credHelpers): used for it; a helper that fails for
    // another reason than missing credentials fails the command with its words.
    std::fs::write(
        config.path().join("config.json"),
        format!(r#"{{"auths": {{"{0}": {{}}}}, "credHelpers": {{"{0}": "test"}}}}"#, reg.addr),
    )
    .unwrap();
    let out = engine_with(&e, config.path(), &["push", &name], "");
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(config.path().join("config.json"), format!(r#"{{"credHelpers": {{"{}": "missing"}}}}"#, reg.addr))
        .unwrap();
    let out = engine_with(&e, config.path(), &["push", &name], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("docker-credential-missing"), "{}", stderr(&out));
}

/// A test CA, and a server certificate for the address `ip` and a client certificate it
/// signed, made with openssl in `dir`.
fn make_pki(dir: &Path, ip: &str) {
    let ssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
    };
    std::fs::write(dir.join("server.ext"), format!("subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n")).unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    let key = ["-newkey", "rsa:2048", "-nodes", "-days", "2"];
    ssl(&[&["req", "-x509"][..], &key, &["-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=engine test CA"]]
        .concat());
    for (who, cn) in [("server", ip), ("client", "engine test client")] {
        let subj = format!("/CN={cn}");
        ssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{who}.key"),
            "-out",
            &format!("{who}.csr"),
            "-subj",
            &subj,
        ]);
        ssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{who}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{who}.crt"),
            "-extfile",
            &format!("{who}.ext"),
        ]);
    }
}

#[test]
fn tls_with_a_client_certificate_from_the_certs_directory() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    make_pki(&pki, "127.0.0.1");
    let p = |f: &str| pki.join(f).display().to_string();
    let tls = format!(
        "  tls:\n    certificate: {}\n    key: {}\n    clientcas:\n      - {}\n",
        p("server.crt"),
        p("server.key"),
        p("ca.crt")
    );
    let reg = Registry::start_with(dir, None, |_| tls);
    let name = format!("{}/tls/busybox:1", reg.addr);

    // Without the client certificate the registry refuses the connection.
    let bare = Engined::start();
    bare.import_busybox("busybox");
    bare.ok(&["tag", "busybox", &name]);
    let err = bare.fails(&["push", &name]);
    // (the HTTPS attempt's error, not the plain-HTTP fallback's 400)
    assert!(err.contains(&format!("https://{}/v2/", reg.addr)), "{err}");

    // With `<certs-dir>/<host:port>/{ca.crt,client.cert,client.key}`, as dockerd's certs.d.
    let certs = tempfile::tempdir().unwrap();
    let host_dir = certs.path().join(&reg.addr);
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::copy(pki.join("ca.crt"), host_dir.join("ca.crt")).unwrap();
    std::fs::copy(pki.join("client.crt"), host_dir.join("client.cert")).unwrap();
    std::fs::copy(pki.join("client.key"), host_dir.join("client.key")).unwrap();
    let e = Engined::start_with(&[], &["--certs-dir", certs.path().to_str().unwrap()]);
    e.import_busybox("busybox");
    e.ok(&["tag", "busybox", &name]);
    let out = e.ok(&["push", &name]);
    assert!(out.contains("Pushed"), "{out}");
    e.ok(&["rmi", &name, "busybox"]);
    let out = e.ok(&["pull", &name]);
    assert!(out.contains("Pull complete"), "{out}");
    assert_eq!(e.ok(&["run", "--rm", &name, "echo", "over tls"]).trim(), "over tls");
}

/// A token server as Docker Hub's: `GET /token?service=&scope=` with optional Basic
/// credentials answers a JWT (RS256, its certificate in `x5c`) granting what the user may do:
/// `alice` (with her password) everything she asks; anyone, pull of `public/…` repositories;
/// wrong credentials, 401. Counts the tokens it issued.
struct TokenServer {
    realm: String,
    issued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl TokenServer {
    fn start(pki: &Path, user: &'static str, password: &'static str) -> TokenServer {
        use base64::Engine;
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let ssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(pki).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
        };
        ssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "token.key",
            "-out",
            "token.crt",
            "-subj",
            "/CN=token signer",
        ]);
        ssl(&["x509", "-in", "token.crt", "-outform", "DER", "-out", "token.der"]);
        let der = std::fs::read(pki.join("token.der")).unwrap();
        let header = serde_json::json!({
            "alg": "RS256", "typ": "JWT",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(der)],
        });
        let header = b64url.encode(header.to_string());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (count, pki) = (issued.clone(), pki.to_path_buf());
        let good = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut request_line = String::new();
                let _ = std::io::BufRead::read_line(&mut reader, &mut request_line);
                let mut authorization = None;
                loop {
                    let mut line = String::new();
                    if std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("authorization") {
                            authorization = Some(v.trim().to_string());
                        }
                    }
                }
                let target = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
                let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
                let params: Vec<(String, String)> = query
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.replace("%3A", ":").replace("%2F", "/").replace("%2C", ",")))
                    .collect();
                let authenticated = match &authorization {
                    None => false,
                    Some(a) if *a == good => true,
                    Some(_) => {
                        let _ = conn
                            .write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        continue;
                    }
                };
                let mut access = Vec::new();
                for (_, scope) in params.iter().filter(|(k, _)| k == "scope") {
                    let mut parts = scope.splitn(3, ':');
                    let (kind, name, actions) = (parts.next(), parts.next(), parts.next());
                    let (Some(kind), Some(name), Some(actions)) = (kind, name, actions) else { continue };
                    let granted: Vec<&str> = actions
                        .split(',')
                        .filter(|a| authenticated || (*a == "pull" && name.starts_with("public/")))
                        .collect();
                    access.push(serde_json::json!({ "type": kind, "name": name, "actions": granted }));
                }
                let service = params.iter().find(|(k, _)| k == "service").map(|(_, v)| v.clone()).unwrap_or_default();
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let claims = serde_json::json!({
                    "iss": "test-issuer", "sub": if authenticated { user } else { "" }, "aud": service,
                    "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("token-{n}"), "access": access,
                });
                let signing_input = format!("{header}.{}", b64url.encode(claims.to_string()));
                let input = pki.join(format!("input-{n}"));
                std::fs::write(&input, &signing_input).unwrap();
                let sig = Command::new("openssl")
                    .args(["dgst", "-sha256", "-sign", "token.key"])
                    .arg(&input)
                    .current_dir(&pki)
                    .output()
                    .unwrap();
                let jwt = format!("{signing_input}.{}", b64url.encode(&sig.stdout));
                let body = serde_json::json!({ "token": jwt, "access_token": jwt, "expires_in": 300 }).to_string();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        TokenServer { realm, issued }
    }

    fn issued(&self) -> usize {
        self.issued.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn bearer_tokens_from_a_token_server() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    let tokens = TokenServer::start(&pki, "alice", "s3cret-pass");
    let auth = format!(
        "auth:\n  token:\n    realm: {}\n    service: test-registry\n    issuer: test-issuer\n    rootcertbundle: {}\n",
        tokens.realm,
        pki.join("token.crt").display()
    );
    let reg = Registry::start_with(dir, None, |_| auth);
    let e = Engined::start();
    let config = tempfile::tempdir().unwrap();
    e.import_busybox("busybox");
    let private = format!("{}/private/busybox:1", reg.addr);
    let public = format!("{}/public/busybox:1", reg.addr);
    e.ok(&["tag", "busybox", &private]);
    e.ok(&["tag", "busybox", &public]);

    // Anonymous: no push; a wrong password: refused, nothing kept.
    let out = engine_with(&e, config.path(), &["push", &public], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("denied") || stderr(&out).contains("unauthorized"), "{}", stderr(&out));
    let out = engine_with(&e, config.path(), &["login", "-u", "alice", "--password-stdin", &reg.addr], "nope\n");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("incorrect username or password"), "{}", stderr(&out));
    assert!(!config.path().join("config.json").exists());

    // Logged in: push both; a pull reuses one token for its requests.
    let out = engine_with(&e, config.path(), &["login", "-u", "alice", "--password-stdin", &reg.addr], "s3cret-pass\n");
    assert!(out.status.success(), "{}", stderr(&out));
    for name in [&private, &public] {
        let out = engine_with(&e, config.path(), &["push", name], "");
        assert!(out.status.success(), "{}", stderr(&out));
    }
    e.ok(&["rmi", &private, &public, "busybox"]);
    let before = tokens.issued();
    let out = engine_with(&e, config.path(), &["pull", &private], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Pull complete"), "{}", stdout(&out));
    assert_eq!(tokens.issued() - before, 1, "a pull of one repository asks for one token");
    let out = engine_with(
        &e,
        config.path(),
        &["pull", &format!("{}/private/busybox@{}", reg.addr, digest_of(&e, &private))],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // Logged out: the public image pulls anonymously, the private one is refused.
    engine_with(&e, config.path(), &["logout", &reg.addr], "");
    e.ok(&["rmi", "-f", &private]);
    let out = engine_with(&e, config.path(), &["pull", &public], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(e.ok(&["run", "--rm", &public, "echo", "public"]).trim(), "public");
    let out = engine_with(&e, config.path(), &["pull", &private], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("pull access denied"), "{}", stderr(&out));

    // The Docker CLI pulls the private image with its credentials through engined.
    let docker_config = tempfile::tempdir().unwrap();
    let docker = |args: &[&str], input: &str| docker_with(&e, docker_config.path(), args, input);
    let out = docker(&["login", "-u", "alice", "--password-stdin", &reg.addr], "s3cret-pass\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = docker(&["pull", &private], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(e.ok(&["run", "--rm", &private, "echo", "private"]).trim(), "private");
}

/// The manifest digest the engine recorded for `name` (its RepoDigest).
fn digest_of(e: &Engined, name: &str) -> String {
    let digests = e.ok(&["image", "inspect", "--format", "{{json .RepoDigests}}", name]);
    let d = digests.split('@').nth(1).unwrap_or_else(|| panic!("no RepoDigest in {digests}"));
    d.trim_end_matches(['"', ']', '\n']).to_string()
}

#[test]
fn buildah_images_pull_and_what_the_engine_pushes_is_read_by_buildah_dockerd_and_docker_py() {
    let reg = Registry::start(None);
    let e = Engined::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let b = engine_test_support::buildah::Buildah::new(w);
    let buildah = |args: &[&str]| b.ok(w, args);
    let ctr = buildah(&["from", "scratch"]);
    buildah(&["copy", &ctr, which("busybox").to_str().unwrap(), "/bin/busybox"]);
    buildah(&["config", "--entrypoint", "[\"/bin/busybox\"]", "--cmd", "[\"echo\",\"from buildah\"]", &ctr]);
    for format in ["oci", "docker"] {
        let name = format!("{}/buildah/bb:{format}", reg.addr);
        buildah(&["commit", "--format", format, &ctr, &format!("bb-{format}")]);
        buildah(&["push", "--tls-verify=false", &format!("bb-{format}"), &format!("docker://{name}")]);
        let out = e.ok(&["pull", &name]);
        assert!(out.contains("Digest: sha256:"), "{out}");
        assert_eq!(e.ok(&["run", "--rm", &name]).trim(), "from buildah", "{format}");
    }

    // What the engine pushes: buildah pulls it, a private Debian dockerd pulls and runs it.
    e.import_busybox("busybox");
    let pushed = format!("{}/engine/busybox:1", reg.addr);
    e.ok(&["tag", "busybox", &pushed]);
    e.ok(&["push", &pushed]);
    buildah(&["pull", "--tls-verify=false", &format!("docker://{pushed}")]);
    // What the engine saves, buildah reads as a Docker and as an OCI archive.
    let saved = w.join("saved.tar");
    e.ok(&["save", "-o", saved.to_str().unwrap(), "busybox"]);
    for transport in ["docker-archive", "oci-archive"] {
        let id = buildah(&["pull", "-q", &format!("{transport}:{}", saved.display())]);
        let ctr = buildah(&["from", &id]);
        let mnt = buildah(&["mount", &ctr]);
        assert!(Path::new(&mnt).join("bin/busybox").is_file(), "{transport}: no /bin/busybox in {mnt}");
        buildah(&["rm", &ctr]);
    }
    let d = engine_test_support::dockerd::Dockerd::start(&[]);
    let out = d.ok(&["pull", &pushed]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    assert_eq!(d.ok(&["run", "--rm", "--network", "none", &pushed, "echo", "in dockerd"]).trim(), "in dockerd");

    // docker-py pulls and pushes through engined as it does through dockerd.
    let script = format!(
        r#"
import docker
c = docker.DockerClient(base_url="{host}")
img = c.images.pull("{reg}/engine/busybox", tag="1")
assert "{reg}/engine/busybox:1" in img.tags, img.tags
img.tag("{reg}/py/busybox", tag="2")
out = c.images.push("{reg}/py/busybox", tag="2")
assert "digest: sha256:" in out, out
print(c.containers.run("{reg}/py/busybox:2", ["echo", "docker-py"], remove=True).decode().strip())
"#,
        host = e.host(),
        reg = reg.addr
    );
    e.ok(&["rmi", &pushed]);
    // Debian's python3 with its python3-docker (what scripts/setup installs).
    let out = Command::new("/usr/bin/python3").arg("-c").arg(&script).output().unwrap();
    assert!(out.status.success(), "docker-py: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "docker-py");
    let out = e.ok(&["pull", &format!("{}/py/busybox:2", reg.addr)]);
    assert!(out.contains("Image is up to date"), "{out}");
}

/// Writes `bytes` as a blob of the OCI layout `layout`; its descriptor fields.
fn oci_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let tmp = layout.join("blob.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    let sum = tool(layout, &["sha256sum", "blob.tmp"]);
    let hex = sum.split_whitespace().next().unwrap().to_string();
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&hex)).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

/// A gzip layer of the directory `dir`: its descriptor and diff id.
fn oci_layer(layout: &Path, dir: &Path) -> (serde_json::Value, String) {
    let tar = layout.join("layer.tar");
    tar_dir(dir, &tar);
    let diff_id = format!("sha256:{}", tool(layout, &["sha256sum", "layer.tar"]).split_whitespace().next().unwrap());
    let gz = Command::new("gzip").arg("-c").arg(&tar).output().unwrap();
    let (digest, size) = oci_blob(layout, &gz.stdout);
    (
        serde_json::json!({ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size }),
        diff_id,
    )
}

/// An OCI image layout at `dir/layout` holding busybox as a layer: the layout, and the layer's
/// descriptor and diff id.
fn busybox_layout(dir: &Path) -> (PathBuf, serde_json::Value, String) {
    let layout = dir.join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let rootfs = dir.join("rootfs");
    make_busybox_rootfs(&rootfs);
    let (base, base_diff) = oci_layer(&layout, &rootfs);
    (layout, base, base_diff)
}

/// Writes an image of `layers` (descriptor, diff id) for linux/`arch` running `cmd` to the
/// layout: its manifest's descriptor fields.
fn oci_image(layout: &Path, arch: &str, cmd: &[&str], layers: &[(&serde_json::Value, &str)]) -> (String, usize) {
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": { "Cmd": cmd },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.1).collect::<Vec<_>>() },
    });
    let (cd, cs) = oci_blob(layout, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs },
        "layers": layers.iter().map(|l| l.0).collect::<Vec<_>>(),
    });
    oci_blob(layout, manifest.to_string().as_bytes())
}

#[test]
fn an_index_with_two_platforms_pulls_the_hosts_or_the_one_asked_for() {
    let reg = Registry::start(None);
    let e = Engined::start();
    let work = tempfile::tempdir().unwrap();
    let (layout, base, base_diff) = busybox_layout(work.path());
    let mut manifests = Vec::new();
    for arch in ["amd64", "arm64"] {
        let extra = work.path().join(arch);
        std::fs::create_dir_all(&extra).unwrap();
        std::fs::write(extra.join("arch"), arch).unwrap();
        let (layer, diff) = oci_layer(&layout, &extra);
        let (md, ms) = oci_image(&layout, arch, &["cat", "/arch"], &[(&base, &base_diff), (&layer, &diff)]);
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "platform": { "architecture": arch, "os": "linux" },
        }));
    }
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests,
    });
    let (xd, xs) = oci_blob(&layout, index.to_string().as_bytes());
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.index.v1+json", "digest": xd, "size": xs,
                        "annotations": { "org.opencontainers.image.ref.name": "1" } }],
    });
    std::fs::write(layout.join("index.json"), top.to_string()).unwrap();
    let name = format!("{}/multi/bb:1", reg.addr);
    tool(
        work.path(),
        &["skopeo", "copy", "--all", "--dest-tls-verify=false", "oci:layout:1", &format!("docker://{name}")],
    );

    // What the registry serves: the index, two platforms.
    let (status, body) = e.request("GET", &format!("/distribution/{name}/json"), "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["Descriptor"]["mediaType"], "application/vnd.oci.image.index.v1+json", "{v}");
    assert_eq!(v["Platforms"].as_array().map(Vec::len), Some(2), "{v}");

    // The host's platform by default; the index's digest is the image's RepoDigest.
    e.ok(&["pull", &name]);
    assert_eq!(e.ok(&["run", "--rm", &name]).trim(), "amd64");
    let digests = e.ok(&["image", "inspect", "--format", "{{json .RepoDigests}}", &name]);
    assert!(digests.contains(&xd), "{digests} lacks the index digest {xd}");
    // Another platform when asked; one that is not there is a clear error.
    let out = e.ok(&["pull", "--platform", "linux/arm64", &name]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    assert_eq!(e.ok(&["image", "inspect", "--format", "{{.Architecture}}", &name]).trim(), "arm64");
    let err = e.fails(&["pull", "--platform", "linux/s390x", &name]);
    assert!(err.contains("no matching manifest for linux/s390x"), "{err}");
}

#[test]
fn a_pull_killed_mid_layer_keeps_the_layers_it_completed() {
    let reg = Registry::start(None);
    let mut e = Engined::start();
    let work = tempfile::tempdir().unwrap();
    // Two layers: busybox (small), then 8 MiB that do not compress, copied in by skopeo.
    let (layout, base, base_diff) = busybox_layout(work.path());
    let big = work.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::write(big.join("noise"), noise(0x2545_f491_4f6c_dd1d)).unwrap();
    let (layer, diff) = oci_layer(&layout, &big);
    let cmd = ["sh", "-c", "wc -c < /noise"];
    let (md, ms) = oci_image(&layout, "amd64", &cmd, &[(&base, &base_diff), (&layer, &diff)]);
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
                        "annotations": { "org.opencontainers.image.ref.name": "1" } }],
    });
    std::fs::write(layout.join("index.json"), top.to_string()).unwrap();
    tool(
        work.path(),
        &["skopeo", "copy", "--dest-tls-verify=false", "oci:layout:1", &format!("docker://{}/test/two:1", reg.addr)],
    );

    // Pulled slowly through the proxy; engined killed once the busybox layer is in and the big
    // one is partly downloaded.
    let proxy = SlowProxy::start(&reg.addr);
    let name = format!("{}/test/two:1", proxy.addr);
    let base_layer = e.data_root().join("image/layers/sha256").join(base_diff.trim_start_matches("sha256:"));
    let data_root = e.data_root();
    kill_engined_mid_pull(&mut e, &name, "the base layer unpacked and 2 MiB of the big one", || {
        base_layer.is_dir() && files_ending(&data_root, ".partial").iter().any(|(_, size)| *size >= 2 << 20)
    });
    assert!(!image_ids(&e).contains("test/two"), "a partial image is listed");

    // The next pull takes the completed layer as it is and fetches only the other.
    let out = e.ok(&["pull", &name]);
    let base_id = &base["digest"].as_str().unwrap()["sha256:".len()..][..12];
    assert!(out.contains(&format!("{base_id}: Already exists")), "{out}");
    assert!(out.contains("Pull complete") && out.contains("Downloaded newer image"), "{out}");
    assert_eq!(e.ok(&["run", "--rm", &name]).trim(), (8 << 20).to_string());
}

/// A network namespace of the test's joined to the host by a veth pair: `host_ip` on the host's
/// side, `ns_ip` inside. Its addresses (10.250.x.0/24) are outside every test engined's pool.
/// Removed when dropped.
struct Netns {
    name: String,
    host_link: String,
    ns_ip: String,
}

impl Netns {
    fn start() -> Netns {
        let pid = std::process::id();
        let (name, host_link, peer) = (format!("etr{pid}"), format!("etr{pid}h"), format!("etr{pid}n"));
        let net = format!("10.250.{}", pid % 250 + 1);
        let ns = Netns { name: name.clone(), host_link: host_link.clone(), ns_ip: format!("{net}.2") };
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", stderr(&out));
        };
        ip(&["netns", "add", &name]);
        ip(&["link", "add", &host_link, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &name]);
        ip(&["addr", "add", &format!("{net}.1/24"), "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        ip(&["-n", &name, "addr", "add", &format!("{}/24", ns.ns_ip), "dev", &peer]);
        ip(&["-n", &name, "link", "set", &peer, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        let _ = Command::new("ip").args(["link", "del", &self.host_link]).output();
    }
}

#[test]
fn a_registry_off_loopback_is_verified_against_the_ca_of_its_certs_directory() {
    let ns = Netns::start();
    let addr = format!("{}:5000", ns.ns_ip);
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    make_pki(&pki, &ns.ns_ip);
    let out = Command::new("htpasswd").args(["-Bbn", "alice", "s3cret-pass"]).output().unwrap();
    std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
    let config = format!(
        "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
        pki.join("server.crt").display(),
        pki.join("server.key").display(),
        dir.path().join("htpasswd").display()
    );
    let reg = Registry::start_at(dir, &addr, Some(&ns.name), |_| config);
    // Not through the tests' dead proxy: straight to the namespace's address.
    let no_proxy = format!("localhost,127.0.0.0/8,::1,{}", ns.ns_ip);
    let env = [("NO_PROXY", no_proxy.as_str()), ("no_proxy", no_proxy.as_str())];
    let name = format!("{}/private/busybox:1", reg.addr);

    // A registry that is neither loopback nor listed as insecure is reached over verified TLS
    // only: without its CA, refused as an unknown issuer, and no plain-HTTP attempt.
    let bare = Engined::start_with(&env, &[]);
    let creds = tempfile::tempdir().unwrap();
    let out =
        engine_with(&bare, creds.path(), &["login", "-u", "alice", "--password-stdin", &reg.addr], "s3cret-pass\n");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("https://{}/v2/", reg.addr)) && err.contains("certificate"), "{err}");
    assert!(!creds.path().join("config.json").exists());

    // With the CA in `<certs-dir>/<host:port>/ca.crt`: log in (a wrong password refused),
    // push, pull by tag and by digest, log out (the private image refused).
    let certs = tempfile::tempdir().unwrap();
    std::fs::create_dir(certs.path().join(&reg.addr)).unwrap();
    std::fs::copy(pki.join("ca.crt"), certs.path().join(&reg.addr).join("ca.crt")).unwrap();
    let e = Engined::start_with(&env, &["--certs-dir", certs.path().to_str().unwrap()]);
    let login = |password: &str| {
        engine_with(
            &e,
            creds.path(),
            &["login", "-u", "alice", "--password-stdin", &reg.addr],
            &format!("{password}\n"),
        )
    };
    let out = login("wrong");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("401 Unauthorized"), "{}", stderr(&out));
    let out = login("s3cret-pass");
    assert!(stdout(&out).contains("Login Succeeded"), "{}", stderr(&out));
    e.import_busybox("busybox");
    e.ok(&["tag", "busybox", &name]);
    let out = engine_with(&e, creds.path(), &["push", &name], "");
    assert!(out.status.success(), "{}", stderr(&out));
    // The push made name@digest one of the image's RepoDigests, as dockerd's does.
    let digest = digest_of(&e, &name);
    e.ok(&["rmi", &name, "busybox"]);
    let out = engine_with(&e, creds.path(), &["pull", &name], "");
    assert!(stdout(&out).contains("Pull complete"), "{}", stderr(&out));
    assert_eq!(e.ok(&["run", "--rm", &name, "echo", "verified"]).trim(), "verified");
    let by_digest = format!("{}/private/busybox@{digest}", reg.addr);
    let out = engine_with(&e, creds.path(), &["pull", &by_digest], "");
    assert!(out.status.success(), "{}", stderr(&out));
    e.ok(&["rmi", &name]);
    engine_with(&e, creds.path(), &["logout", &reg.addr], "");
    let out = engine_with(&e, creds.path(), &["pull", &name], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no basic auth credentials") || stderr(&out).contains("denied"), "{}", stderr(&out));

    // Listed as insecure, it is reached without the CA (TLS unverified), as dockerd does.
    let insecure = Engined::start_with(&env, &["--insecure-registry", &reg.addr]);
    let creds = tempfile::tempdir().unwrap();
    let out =
        engine_with(&insecure, creds.path(), &["login", "-u", "alice", "--password-stdin", &reg.addr], "s3cret-pass\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = engine_with(&insecure, creds.path(), &["pull", &name], "");
    assert!(out.status.success(), "{}", stderr(&out));
}
