//! Hostile archives, built here member by member: each is refused with a message naming the
//! problem, nothing is written outside the store, and the store is exactly as it was.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// A `docker save` archive around one layer; `diff_id` overrides the config's.
fn image_with_layer(layer: &[u8], diff_id: Option<Digest>) -> Vec<u8> {
    let diff = diff_id.unwrap_or_else(|| Digest::of(layer));
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {}, "rootfs": { "type": "layers", "diff_ids": [diff] }
    }))
    .unwrap();
    let manifest = serde_json::to_vec(
        &serde_json::json!([{ "Config": "config.json", "RepoTags": ["hostile:1"], "Layers": ["layer.tar"] }]),
    )
    .unwrap();
    RawTar::default().file("config.json", &config).file("layer.tar", layer).file("manifest.json", &manifest).finish()
}

/// An OCI layout archive with one manifest; `tamper` may change a blob after it is named.
fn oci_layout(layer: &[u8], tamper: impl FnOnce(&mut Vec<(String, Vec<u8>)>)) -> Vec<u8> {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "rootfs": { "type": "layers", "diff_ids": [Digest::of(layer)] }
    }))
    .unwrap();
    let desc = |mt: &str, b: &[u8]| serde_json::json!({ "mediaType": mt, "digest": Digest::of(b), "size": b.len() });
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar", layer)]
    }))
    .unwrap();
    let mut index_entry = desc("application/vnd.oci.image.manifest.v1+json", &manifest);
    index_entry["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": "hostile:oci" });
    let index = serde_json::to_vec(&serde_json::json!({ "schemaVersion": 2, "manifests": [index_entry] })).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = [&config, &manifest, &layer.to_vec()]
        .iter()
        .map(|b| (format!("blobs/sha256/{}", Digest::of(b).hex()), b.to_vec()))
        .collect();
    files.push(("index.json".into(), index));
    files.push(("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()));
    tamper(&mut files);
    let mut t = RawTar::default();
    for (name, data) in &files {
        t.file(name, data);
    }
    t.finish()
}

struct Case {
    name: &'static str,
    archive: Vec<u8>,
    /// A fragment the error message must contain.
    says: &'static str,
}

fn cases(outside: &Path) -> Vec<Case> {
    use tar::EntryType::*;
    let out = outside.to_str().unwrap().as_bytes().to_vec();
    let layer = |f: &dyn Fn(&mut RawTar)| {
        let mut t = RawTar::default();
        f(&mut t);
        t.finish()
    };
    let ok_layer = layer(&|t| {
        t.file("ok", b"fine");
    });
    let mut v = vec![
        Case {
            name: "traversal",
            says: "leaves the archive root",
            archive: image_with_layer(
                &layer(&|t| {
                    t.file("ok", b"1").file("../escape", b"x");
                }),
                None,
            ),
        },
        Case {
            name: "deep traversal",
            says: "leaves the archive root",
            archive: image_with_layer(
                &layer(&|t| {
                    t.file("a/b/../../../escape", b"x");
                }),
                None,
            ),
        },
        Case {
            name: "absolute path climbing out",
            says: "leaves the archive root",
            archive: image_with_layer(
                &layer(&|t| {
                    t.file("/../etc/engine-evil", b"x");
                }),
                None,
            ),
        },
        Case {
            name: "symlink escape",
            says: "leaves the layer",
            archive: image_with_layer(
                &layer(&|t| {
                    t.member(b"evil", Symlink, b"", b"../../../../../../../tmp");
                }),
                None,
            ),
        },
        Case {
            name: "write through symlink",
            says: "goes through the symlink",
            archive: image_with_layer(
                &layer(&|t| {
                    t.member(b"a", Symlink, b"", &out).file("a/pwned", b"x");
                }),
                None,
            ),
        },
        Case {
            name: "hard link escape",
            says: "hard link",
            archive: image_with_layer(
                &layer(&|t| {
                    t.member(b"h", Link, b"", b"../../etc/passwd");
                }),
                None,
            ),
        },
        Case {
            name: "hard link absolute",
            says: "hard link",
            archive: image_with_layer(
                &layer(&|t| {
                    t.member(b"h", Link, b"", b"/etc/passwd");
                }),
                None,
            ),
        },
        Case {
            name: "hard link through symlink",
            says: "hard link",
            archive: image_with_layer(
                &layer(&|t| {
                    t.member(b"s", Symlink, b"", b"/etc").member(b"h", Link, b"", b"s/passwd");
                }),
                None,
            ),
        },
        Case {
            name: "hard link to missing",
            says: "hard link",
            archive: image_with_layer(
                &layer(&|t| {
                    t.member(b"h", Link, b"", b"nothing");
                }),
                None,
            ),
        },
        Case {
            name: "hard link to an escaping symlink",
            says: "leaves the layer from here",
            archive: image_with_layer(
                &layer(&|t| {
                    t.member(b"a/b/c/l", Symlink, b"", b"../../../x").member(b"h", Link, b"", b"a/b/c/l");
                }),
                None,
            ),
        },
        Case {
            name: "block device",
            says: "device nodes are not allowed",
            archive: image_with_layer(
                &layer(&|t| {
                    t.member_sized(b"sda", Block, b"", 0, b"", Some((8, 0)));
                }),
                None,
            ),
        },
        Case {
            name: "char device",
            says: "device nodes are not allowed",
            archive: image_with_layer(
                &layer(&|t| {
                    t.member_sized(b"mem", Char, b"", 0, b"", Some((1, 1)));
                }),
                None,
            ),
        },
        Case {
            name: "oversized PAX header",
            says: "PAX header of 104857600 bytes",
            archive: image_with_layer(
                &layer(&|t| {
                    t.member_sized(b"PaxHeaders/x", XHeader, b"", 100 << 20, b"", None);
                }),
                None,
            ),
        },
        Case {
            name: "oversized GNU long name",
            says: "GNU long name header",
            archive: image_with_layer(
                &layer(&|t| {
                    t.member_sized(b"././@LongLink", GNULongName, b"", 50 << 20, b"", None);
                }),
                None,
            ),
        },
        Case {
            name: "overlay xattr",
            says: "trusted.overlay.redirect",
            archive: image_with_layer(
                &layer(&|t| {
                    t.pax(&[("SCHILY.xattr.trusted.overlay.redirect", b"/etc")]).file("d", b"");
                }),
                None,
            ),
        },
        Case {
            name: "PAX path traversal",
            says: "leaves the archive root",
            archive: image_with_layer(
                &layer(&|t| {
                    t.pax(&[("path", b"../../pax-escape")]).file("fine", b"x");
                }),
                None,
            ),
        },
        Case {
            name: "truncated layer",
            says: "",
            archive: image_with_layer(
                &layer(&|t| {
                    t.member_sized(b"big", Regular, b"short", 1 << 20, b"", None);
                })[..1024],
                None,
            ),
        },
        Case {
            name: "diff id mismatch",
            says: "diff id",
            archive: image_with_layer(&ok_layer, Some(Digest::of(b"something else"))),
        },
        Case {
            name: "outer traversal",
            says: "leaves the archive root",
            archive: RawTar::default().file("../evil", b"x").file("manifest.json", b"[]").finish(),
        },
        Case {
            name: "missing layer",
            says: "layer.tar is missing",
            archive: {
                let m =
                    serde_json::to_vec(&serde_json::json!([{ "Config": "c.json", "Layers": ["layer.tar"] }])).unwrap();
                let c = serde_json::to_vec(&serde_json::json!({ "os": "linux", "rootfs": { "type": "layers", "diff_ids": [Digest::of(b"")] } })).unwrap();
                RawTar::default().file("c.json", &c).file("manifest.json", &m).finish()
            },
        },
        Case { name: "not an archive", says: "", archive: b"this is not a tar file at all, not even close".repeat(20) },
        Case {
            name: "foreign os",
            says: "operating system",
            archive: {
                let c = serde_json::to_vec(&serde_json::json!({ "os": "windows", "rootfs": { "type": "layers", "diff_ids": [Digest::of(&ok_layer)] } })).unwrap();
                let m = serde_json::to_vec(&serde_json::json!([{ "Config": "c.json", "Layers": ["l.tar"] }])).unwrap();
                RawTar::default().file("c.json", &c).file("l.tar", &ok_layer).file("manifest.json", &m).finish()
            },
        },
    ];
    v.push(Case {
        name: "OCI blob does not match its digest",
        says: "digest mismatch",
        archive: oci_layout(&ok_layer, |files| {
            let layer = files.iter_mut().find(|(_, d)| d.starts_with(b"ok")).unwrap();
            layer.1[0] ^= 1;
        }),
    });
    v.push(Case {
        name: "OCI layer swapped for another",
        says: "digest mismatch",
        archive: oci_layout(&ok_layer, |files| {
            let evil = layer(&|t| {
                t.file("../x", b"");
            });
            let layer = files.iter_mut().find(|(_, d)| d.starts_with(b"ok")).unwrap();
            layer.1 = evil;
        }),
    });
    v.push(Case {
        name: "OCI missing blob",
        says: "is missing",
        archive: oci_layout(&ok_layer, |files| files.retain(|(_, d)| !d.starts_with(b"ok"))),
    });
    v
}

#[test]
fn hostile_archives_are_refused_and_change_nothing() {
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let store = ImageStore::open(work.path().join("store")).unwrap();
    // A store with an image in it already: a refusal must leave that untouched too.
    let img = docker_save_archive(&work.path().join("good"));
    store.load(std::fs::File::open(&img.archive).unwrap(), &()).unwrap();
    let before = store_listing(store.root());

    let mut failures = Vec::new();
    for case in cases(&outside) {
        match store.load(case.archive.as_slice(), &()) {
            Ok(loaded) => failures.push(format!("{}: loaded {loaded:?}", case.name)),
            Err(e) => {
                let msg = e.to_string();
                eprintln!("{}: {msg}", case.name);
                if !msg.contains(case.says) || msg.contains('\n') {
                    failures.push(format!("{}: message {msg:?} does not say {:?} on one line", case.name, case.says));
                }
            }
        }
        let after = store_listing(store.root());
        if after != before {
            let changed: Vec<_> = after
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(v))
                .map(|(k, _)| k.clone())
                .chain(before.keys().filter(|k| !after.contains_key(*k)).cloned())
                .collect();
            failures.push(format!("{}: store changed: {changed:?}", case.name));
        }
        if std::fs::read_dir(&outside).unwrap().count() != 0 {
            failures.push(format!("{}: wrote outside the store", case.name));
        }
    }
    assert!(mounts_under(work.path()).is_empty());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(!Path::new("/etc/engine-evil").exists());
}

#[test]
fn hostile_import_is_refused_and_changes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(work.path().join("store")).unwrap();
    let before = store_listing(store.root());
    let rootfs = RawTar::default()
        .file("ok", b"1")
        .member(b"bin", tar::EntryType::Symlink, b"", b"/")
        .file("bin/etc/evil", b"x")
        .finish();
    let opts = engine_image::ImportOptions { reference: Some("evil".parse().unwrap()), ..Default::default() };
    let err = store.import(rootfs.as_slice(), &opts, &()).unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    assert_eq!(store_listing(store.root()), before);
    // A bad change is refused before anything is read.
    let opts = engine_image::ImportOptions { changes: vec!["RUN rm -rf /".into()], ..Default::default() };
    assert!(store.import(&b""[..], &opts, &()).is_err());
    assert_eq!(store_listing(store.root()), before);
}

#[test]
fn device_nodes_load_when_allowed() {
    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(work.path().join("store")).unwrap().allow_devices(true);
    let layer = RawTar::default().member_sized(b"dev/null", tar::EntryType::Char, b"", 0, b"", Some((1, 3))).finish();
    let loaded = store.load(image_with_layer(&layer, None).as_slice(), &()).unwrap();
    let dir: PathBuf = store.layer_dirs(&loaded[0].id).unwrap()[0].clone();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::symlink_metadata(dir.join("dev/null")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), nix::sys::stat::makedev(1, 3));
}

#[test]
fn members_named_as_other_tools_write_them_load_under_the_root() {
    // umoci writes the root as `/`; others `./x`, `/x` or `a/../b`: all inside the layer, as
    // dockerd and containerd take them.
    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(work.path().join("store")).unwrap();
    let layer = RawTar::default()
        .member(b"/", tar::EntryType::Directory, b"", b"")
        .file("./dot", b"1")
        .file("/etc/abs", b"2")
        .file("a/../cleaned", b"3")
        .finish();
    let loaded = store.load(image_with_layer(&layer, None).as_slice(), &()).unwrap();
    let dir: PathBuf = store.layer_dirs(&loaded[0].id).unwrap()[0].clone();
    assert_eq!(std::fs::read(dir.join("dot")).unwrap(), b"1");
    assert_eq!(std::fs::read(dir.join("etc/abs")).unwrap(), b"2");
    assert_eq!(std::fs::read(dir.join("cleaned")).unwrap(), b"3");
    assert!(!dir.join("a").exists());
}

#[test]
fn multi_platform_index_selects_linux_amd64() {
    let layer = |name: &str| RawTar::default().file(name, b"x").finish();
    let (amd, arm) = (layer("amd64"), layer("arm64"));
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut blob = |b: &[u8]| {
        files.push((format!("blobs/sha256/{}", Digest::of(b).hex()), b.to_vec()));
        Digest::of(b)
    };
    let manifest_for = |arch: &str, layer: &[u8], blob: &mut dyn FnMut(&[u8]) -> Digest| {
        let config = serde_json::to_vec(&serde_json::json!({ "architecture": arch, "os": "linux", "rootfs": { "type": "layers", "diff_ids": [Digest::of(layer)] } })).unwrap();
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(&config), "size": config.len() },
            "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blob(layer), "size": layer.len() }]
        })).unwrap();
        let d = blob(&m);
        (
            serde_json::json!({ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": m.len(),
            "platform": { "architecture": arch, "os": "linux" } }),
            Digest::of(&config),
        )
    };
    let (arm_desc, _) = manifest_for("arm64", &arm, &mut blob);
    let (amd_desc, amd_config) = manifest_for("amd64", &amd, &mut blob);
    let make = |manifests: Vec<serde_json::Value>, files: &[(String, Vec<u8>)]| {
        let nested = serde_json::to_vec(&serde_json::json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests })).unwrap();
        let top = serde_json::to_vec(&serde_json::json!({ "schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": Digest::of(&nested), "size": nested.len(),
            "annotations": { "io.containerd.image.name": "docker.io/library/multi:1" } }] }))
        .unwrap();
        let mut t = RawTar::default();
        for (n, d) in files {
            t.file(n, d);
        }
        t.file(&format!("blobs/sha256/{}", Digest::of(&nested).hex()), &nested)
            .file("index.json", &top)
            .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
            .finish()
    };
    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(work.path().join("store")).unwrap();
    let loaded = store.load(make(vec![arm_desc.clone(), amd_desc], &files).as_slice(), &()).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].id, amd_config);
    assert_eq!(loaded[0].names, vec!["multi:1".parse().unwrap()]);
    let dir = &store.layer_dirs(&amd_config).unwrap()[0];
    assert!(dir.join("amd64").exists() && !dir.join("arm64").exists());

    let other = ImageStore::open(work.path().join("other")).unwrap();
    let before = store_listing(other.root());
    let err = other.load(make(vec![arm_desc], &files).as_slice(), &()).unwrap_err();
    assert!(err.to_string().contains("no linux/amd64 image"), "{err}");
    assert_eq!(store_listing(other.root()), before);
}

#[test]
fn replaced_directory_times_do_not_follow_a_symlink() {
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    std::fs::create_dir_all(outside.join("etc")).unwrap();
    let before = std::fs::metadata(outside.join("etc")).unwrap().modified().unwrap();
    // x/ and x/etc/ with old times, then x replaced by a symlink to the outside directory.
    let layer = RawTar::default()
        .member(b"x/", tar::EntryType::Directory, b"", b"")
        .member(b"x/etc/", tar::EntryType::Directory, b"", b"")
        .member(b"x", tar::EntryType::Symlink, b"", outside.to_str().unwrap().as_bytes())
        .finish();
    let store = ImageStore::open(work.path().join("store")).unwrap();
    store.load(image_with_layer(&layer, None).as_slice(), &()).unwrap();
    assert_eq!(
        std::fs::metadata(outside.join("etc")).unwrap().modified().unwrap(),
        before,
        "a time was set through the symlink"
    );
}

#[test]
fn an_image_repeating_a_layer_mounts() {
    let l1 = RawTar::default().file("one", b"1").finish();
    let l2 = RawTar::default().file("two", b"2").finish();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "rootfs": { "type": "layers", "diff_ids": [Digest::of(&l1), Digest::of(&l2), Digest::of(&l1)] }
    })).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!([{ "Config": "c.json", "RepoTags": ["repeat:1"], "Layers": ["l1.tar", "l2.tar", "l1.tar"] }])).unwrap();
    let archive = RawTar::default()
        .file("c.json", &config)
        .file("l1.tar", &l1)
        .file("l2.tar", &l2)
        .file("manifest.json", &manifest)
        .finish();
    let work = tempfile::tempdir().unwrap();
    let store = ImageStore::open(work.path().join("store")).unwrap();
    let id = store.load(archive.as_slice(), &()).unwrap()[0].id.clone();
    let snap = store.prepare_snapshot("rep", &id).unwrap();
    assert!(snap.rootfs.join("one").exists() && snap.rootfs.join("two").exists());
    store.remove_snapshot("rep").unwrap();
    assert!(mounts_under(work.path()).is_empty());
}
