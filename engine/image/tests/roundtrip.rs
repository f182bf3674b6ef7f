//! Round trips: an image from a `docker save` archive, from OCI layouts made by skopeo (gzip
//! and zstd layers), and from our own save all unpack to the same tree with the same digests.

mod common;
use common::*;
use std::process::Command;

use engine_image::{ProgressEvent, Reference};

fn load(store: &ImageStore, archive: &std::path::Path) -> Vec<engine_image::LoadedImage> {
    store.load(std::fs::File::open(archive).unwrap(), &()).unwrap_or_else(|e| panic!("load {}: {e}", archive.display()))
}

/// The merged tree of an image, through a real overlay mount, then unmounted.
fn merged_tree(store: &ImageStore, id: &Digest, key: &str) -> std::collections::BTreeMap<String, String> {
    let snap = store.prepare_snapshot(key, id).unwrap();
    let t = tree(&snap.rootfs);
    store.remove_snapshot(key).unwrap();
    assert!(mounts_under(store.root()).is_empty(), "snapshot left mounted");
    t
}

fn skopeo(args: &[&str]) {
    run(Command::new("skopeo").arg("--insecure-policy").args(args));
}

#[test]
fn docker_save_and_skopeo_oci_layouts_unpack_to_the_same_tree() {
    let work = tempfile::tempdir().unwrap();
    let img = docker_save_archive(work.path());

    let a = ImageStore::open(work.path().join("a")).unwrap();
    let loaded = load(&a, &img.archive);
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].names, vec![Reference::parse("test/busybox:1").unwrap()]);
    let id = loaded[0].id.clone();
    let image = a.resolve("test/busybox:1").unwrap();
    assert_eq!(image.id(), &id);
    assert_eq!(a.resolve(&id.hex()[..12]).unwrap().id(), &id);
    assert_eq!(image.config.config.as_ref().unwrap().cmd.as_deref(), Some(&["sh".to_string()][..]));
    assert_eq!(image.config.history.len(), 2);

    // Each layer directory holds exactly its tar's tree (whiteouts in overlay form).
    let layers = a.layer_dirs(&id).unwrap();
    assert_eq!(tree(&layers[0]), tree(&img.base_dir));
    let top = tree(&layers[1]);
    assert!(top["etc/group"].starts_with("special 20000 0:0 rdev=0"), "whiteout: {}", top["etc/group"]);
    assert!(top["tmp"].contains("xattr trusted.overlay.opaque=y"), "opaque: {}", top["tmp"]);
    let mut expected_top = tree(&img.top_dir);
    for (k, v) in &top {
        if k != "etc/group" && k != "tmp" && !k.is_empty() && k != "etc" {
            assert_eq!(expected_top.remove(k).as_ref(), Some(v), "{k}");
        }
    }

    // The merged view applies them.
    let merged = merged_tree(&a, &id, "ctr-a");
    assert!(!merged.contains_key("etc/group"), "whited-out file is visible");
    assert!(merged.contains_key("etc/passwd"));
    assert!(!merged.contains_key("tmp/old"), "opaque directory shows the lower layer");
    assert!(merged["tmp/new"].starts_with("file"));
    assert!(merged["var/keep/file"].starts_with("file"));
    assert!(merged["data/suid"].starts_with("file 104755 0:0"), "{}", merged["data/suid"]);
    assert!(merged["data/owned"].contains(" 1000:1000 "), "{}", merged["data/owned"]);
    assert!(merged["data/x"].contains("xattr user.test=hello"), "{}", merged["data/x"]);
    assert!(
        merged["data/hard"].contains("inode-of=data/big.bin") || merged["data/big.bin"].contains("inode-of=data/hard")
    );
    assert!(merged["data/link"].ends_with("-> ../bin/busybox"));
    assert!(merged["data/fifo"].starts_with("special 10640"), "{}", merged["data/fifo"]);
    assert!(merged.keys().any(|k| k.ends_with("/deep")));

    // skopeo's OCI archives: gzip (its default) and zstd layers.
    for (i, extra) in [&[][..], &["--dest-compress-format", "zstd"][..]].iter().enumerate() {
        let oci = work.path().join(format!("oci-{i}.tar"));
        let mut args = vec!["copy"];
        args.extend_from_slice(extra);
        let src = format!("docker-archive:{}", img.archive.display());
        let dst = format!("oci-archive:{}:test/busybox:1", oci.display());
        args.extend([src.as_str(), dst.as_str()]);
        skopeo(&args);
        let b = ImageStore::open(work.path().join(format!("b{i}"))).unwrap();
        let loaded_b = load(&b, &oci);
        assert_eq!(loaded_b[0].names, vec![Reference::parse("test/busybox:1").unwrap()]);
        // skopeo rewrites the config as an OCI one (a new image id) but not the layers' contents.
        let id_b = loaded_b[0].id.clone();
        let image_b = b.resolve(&id_b.to_string()).unwrap();
        assert_eq!(image_b.config.rootfs.diff_ids, image.config.rootfs.diff_ids);
        let media: Vec<String> = image_b.record.layers.iter().map(|l| l.blob.media_type.clone()).collect();
        let want = if i == 0 { "gzip" } else { "zstd" };
        assert!(media.iter().all(|m| m.ends_with(want)), "{media:?}");
        assert_eq!(merged_tree(&b, &id_b, "ctr-b"), merged, "OCI layout {i} unpacks differently");
    }

    // Saved and loaded again: same digests; saved again: same bytes.
    let saved = work.path().join("saved.tar");
    a.save(&["test/busybox:1"], std::fs::File::create(&saved).unwrap()).unwrap();
    let c = ImageStore::open(work.path().join("c")).unwrap();
    let loaded_c = load(&c, &saved);
    assert_eq!(loaded_c[0].id, id);
    assert_eq!(loaded_c[0].names, loaded[0].names);
    assert_eq!(
        c.resolve("test/busybox:1").unwrap().record.manifest,
        a.resolve("test/busybox:1").unwrap().record.manifest
    );
    let saved_again = work.path().join("saved-again.tar");
    c.save(&["test/busybox:1"], std::fs::File::create(&saved_again).unwrap()).unwrap();
    assert!(std::fs::read(&saved).unwrap() == std::fs::read(&saved_again).unwrap(), "save is not deterministic");
    assert_eq!(merged_tree(&c, &id, "ctr-c"), merged);

    // Our save is an OCI layout too: skopeo reads it.
    skopeo(&["inspect", "--raw", &format!("oci-archive:{}", saved.display())]);
}

#[test]
fn docker_loads_our_archive_and_its_save_loads_here() {
    let work = tempfile::tempdir().unwrap();
    let img = docker_save_archive(work.path());
    let a = ImageStore::open(work.path().join("a")).unwrap();
    let id = load(&a, &img.archive)[0].id.clone();
    let ours = work.path().join("ours.tar");
    a.save(&["test/busybox:1"], std::fs::File::create(&ours).unwrap()).unwrap();

    let d = dockerd::Dockerd::start(&[]);
    d.ok(&["load", "-i", ours.to_str().unwrap()]);
    let docker_id = d.ok(&["image", "inspect", "-f", "{{.Id}}", "test/busybox:1"]);
    assert_eq!(docker_id.trim(), id.to_string(), "docker computes the same image id");
    let theirs = work.path().join("theirs.tar");
    d.ok(&["save", "-o", theirs.to_str().unwrap(), "test/busybox:1"]);
    drop(d);

    let b = ImageStore::open(work.path().join("b")).unwrap();
    let loaded = load(&b, &theirs);
    assert_eq!(loaded[0].id, id);
    assert_eq!(loaded[0].names, vec![Reference::parse("test/busybox:1").unwrap()]);
    assert_eq!(merged_tree(&b, &id, "ctr-b"), merged_tree(&a, &id, "ctr-a"));
}

/// The vfs driver copies the layers into a directory, applying whiteouts and opaque
/// directories: the same tree an overlay mount shows, with nothing mounted.
#[test]
fn a_vfs_snapshot_is_the_tree_an_overlay_mount_shows() {
    let work = tempfile::tempdir().unwrap();
    let img = docker_save_archive(work.path());
    let store = ImageStore::open(work.path().join("store")).unwrap();
    let id = load(&store, &img.archive)[0].id.clone();
    let merged = merged_tree(&store, &id, "overlay");
    let store = store.storage_driver(engine_image::StorageDriver::Vfs);
    let snap = store.prepare_snapshot("copied", &id).unwrap();
    assert!(mounts_under(store.root()).is_empty(), "a vfs snapshot is not a mount");
    assert_eq!(tree(&snap.rootfs), merged);
    assert!(!snap.rootfs.join("etc/group").exists() && snap.rootfs.join("tmp/new").exists());
    assert!(!snap.rootfs.join("tmp/old").exists(), "the opaque directory hides the lower layer's file");
    // mounting it again (after a reboot) leaves it as it is; removal deletes it
    store.mount_snapshot("copied").unwrap();
    assert_eq!(tree(&snap.rootfs), merged);
    store.remove_snapshot("copied").unwrap();
    assert!(!snap.rootfs.exists());
    // an overlay2 store still finds a vfs snapshot a vfs snapshot
    store.prepare_snapshot("again", &id).unwrap();
    let store = ImageStore::open(work.path().join("store")).unwrap();
    store.mount_snapshot("again").unwrap();
    assert!(mounts_under(store.root()).is_empty());
    store.remove_snapshot("again").unwrap();
}

#[test]
fn layers_are_shared_and_collected_when_unused() {
    let work = tempfile::tempdir().unwrap();
    let img = docker_save_archive(work.path());
    let store = ImageStore::open(work.path().join("store")).unwrap();
    let id = load(&store, &img.archive)[0].id.clone();

    // A second image on the same base layer, from a rootfs import.
    let events = std::sync::Mutex::new(Vec::new());
    let progress = |e: ProgressEvent<'_>| events.lock().unwrap().push(format!("{e:?}"));
    let base_tar = work.path().join("save/l1/layer.tar");
    let opts = engine_image::ImportOptions {
        reference: Some(Reference::parse("test/imported").unwrap()),
        changes: vec!["CMD [\"sh\"]".into(), "ENV A=1".into()],
        message: None,
    };
    let imported = store.import(std::fs::File::open(&base_tar).unwrap(), &opts, &progress).unwrap();
    let events = events.into_inner().unwrap();
    assert!(events.iter().any(|e| e.starts_with("LayerDone") && e.contains("reused: true")), "{events:?}");
    assert!(events.iter().any(|e| e.starts_with("Loaded")), "{events:?}");
    let base_layer = store.layer_dirs(&id).unwrap()[0].clone();
    assert_eq!(store.layer_dirs(&imported).unwrap(), vec![base_layer.clone()], "the base layer is unpacked once");
    let img2 = store.resolve("test/imported:latest").unwrap();
    assert_eq!(img2.config.config.as_ref().unwrap().env.as_deref(), Some(&["A=1".to_string()][..]));
    assert_eq!(store.list().unwrap().len(), 2);

    // In use by a snapshot: not deleted.
    store.prepare_snapshot("user", &id).unwrap();
    assert!(store.remove(&id.to_string(), true).is_err());
    store.remove_snapshot("user").unwrap();

    let removed = store.remove("test/busybox:1", false).unwrap();
    assert_eq!(removed.deleted, vec![id.clone()]);
    assert!(base_layer.is_dir(), "the shared layer stays");
    assert_eq!(std::fs::read_dir(store.root().join("layers/sha256")).unwrap().count(), 1);
    assert!(store.resolve("test/busybox:1").is_err());

    // Two names: untag one, then the last removal deletes.
    store.tag("test/imported", &Reference::parse("other:2").unwrap()).unwrap();
    assert!(store.remove(&imported.hex()[..12], false).is_err(), "several names need force");
    // Saving a repository saves each of its tags.
    store.tag("test/imported", &Reference::parse("test/imported:v2").unwrap()).unwrap();
    let mut all_tags = Vec::new();
    store.save(&["test/imported"], &mut all_tags).unwrap();
    let other = ImageStore::open(work.path().join("other")).unwrap();
    let loaded = other.load(all_tags.as_slice(), &()).unwrap();
    assert_eq!(
        loaded[0].names,
        vec![Reference::parse("test/imported:latest").unwrap(), Reference::parse("test/imported:v2").unwrap()]
    );
    store.remove("test/imported:v2", false).unwrap();
    let r = store.remove("other:2", false).unwrap();
    assert!(r.deleted.is_empty());
    store.remove("test/imported", false).unwrap();
    assert_eq!(std::fs::read_dir(store.root().join("layers/sha256")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(store.root().join("blobs/sha256")).unwrap().count(), 0);
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn imported_image_runs_with_engine_runtime() {
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs");
    make_busybox_rootfs(&rootfs);
    std::fs::create_dir_all(rootfs.join("home/user")).unwrap();
    std::os::unix::fs::chown(rootfs.join("home/user"), Some(1000), Some(1000)).unwrap();
    let tar = work.path().join("rootfs.tar");
    tar_dir(&rootfs, &tar);
    run(Command::new("zstd").arg("-q").arg(&tar));
    let store = ImageStore::open(work.path().join("store")).unwrap();
    let opts = engine_image::ImportOptions {
        reference: Some(Reference::parse("bb").unwrap()),
        changes: vec![
            "ENTRYPOINT [\"sh\", \"-c\"]".into(),
            "CMD [\"id\"]".into(),
            "USER user".into(),
            "WORKDIR /home/user".into(),
        ],
        message: Some("test".into()),
    };
    let id = store.import(std::fs::File::open(work.path().join("rootfs.tar.zst")).unwrap(), &opts, &()).unwrap();
    let image = store.resolve("bb").unwrap();
    assert!(image.record.layers[0].blob.media_type.ends_with("zstd"));

    let key = format!("run-{}", std::process::id());
    let snap = store.prepare_snapshot(&key, &id).unwrap();
    let run_opts = engine_image::RunOptions {
        cmd: Some(vec!["echo $(id -u):$(id -g) $HOME $(pwd) > /home/user/out".into()]),
        hostname: "imgtest".into(),
        ..Default::default()
    };
    let cs = engine_image::spec::build(&image.config, &run_opts, &snap.rootfs).unwrap();
    let bundle = work.path().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let mut spec = cs.spec;
    let mut linux = spec.linux().clone().unwrap();
    linux.set_cgroups_path(Some(format!("/engine-image-test-{}", std::process::id()).into()));
    spec.set_linux(Some(linux));
    std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    let state = work.path().join("state");
    let out = Command::new(bin("engine-runtime"))
        .arg("--root")
        .arg(&state)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(snap.upper.join("home/user/out")).unwrap(), "1000:1000 /home/user /home/user\n");
    let _ = Command::new(bin("engine-runtime")).arg("--root").arg(&state).args(["delete", "-f", &key]).output();
    store.remove_snapshot(&key).unwrap();
    assert!(mounts_under(work.path()).is_empty());
    assert!(!store.root().join("snapshots").join(&key).exists());
}
