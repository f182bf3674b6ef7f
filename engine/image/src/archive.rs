//! Image archives: reading `docker save` archives and OCI image-layout archives into staged,
//! verified blobs and planned images, and writing one archive both kinds of tools read.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::compression;
use crate::digest::{Digest, DigestReader, DigestWriter};
use crate::manifest::{self, ContainerConfig, Descriptor, DockerSaveEntry, ImageConfig, Index, Manifest};
use crate::progress::{CountingReader, Progress, ProgressEvent};
use crate::reference::Reference;
use crate::store::{io_at, ImageError, ImageRecord, ImageStore, LayerRecord, PlannedImage, StagedBlob};
use crate::tarstream::{self, EntryKind, TarEntry, TarError};

/// Nested indexes followed at most this deep.
const MAX_INDEX_DEPTH: usize = 4;
/// JSON documents (manifests, indexes, configs) larger than this are refused.
const MAX_JSON_BYTES: u64 = 8 << 20;

/// The regular files of an archive, staged and hashed, by normalised path.
pub(crate) struct StagedFiles {
    files: HashMap<PathBuf, StagedBlob>,
}

impl StagedFiles {
    fn get(&self, path: &str) -> Option<&StagedBlob> {
        self.files.get(&tarstream::normalize(path.as_bytes()).ok()?)
    }

    fn json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ImageError> {
        let blob = self.get(path).ok_or_else(|| ImageError::Format(format!("{path} is missing")))?;
        read_json(blob, path)
    }

    /// The blob a descriptor names (`blobs/<alg>/<hex>`), checked against its digest and size.
    fn blob(&self, d: &Descriptor) -> Result<&StagedBlob, ImageError> {
        let path = format!("blobs/sha256/{}", d.digest.hex());
        let blob = self.get(&path).ok_or_else(|| ImageError::Format(format!("blob {} is missing", d.digest)))?;
        if blob.digest != d.digest {
            return Err(ImageError::DigestMismatch {
                what: path,
                expected: d.digest.clone(),
                actual: blob.digest.clone(),
            });
        }
        if blob.size != d.size {
            return Err(ImageError::Format(format!(
                "blob {} has {} bytes, its descriptor says {}",
                d.digest, blob.size, d.size
            )));
        }
        Ok(blob)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(blob: &StagedBlob, what: &str) -> Result<T, ImageError> {
    if blob.size > MAX_JSON_BYTES {
        return Err(ImageError::Format(format!("{what} is {} bytes (limit {MAX_JSON_BYTES})", blob.size)));
    }
    let bytes = fs::read(&blob.path).map_err(io_at(&blob.path))?;
    serde_json::from_slice(&bytes).map_err(|e| ImageError::Format(format!("{what}: {e}")))
}

/// Reads the archive into `staging/files`, hashing each regular file as it is written.
/// Symlinks and hard links between members (older `docker save` links repeated layers) become
/// aliases; any other kind of member, and any path that leaves the archive, is refused.
pub(crate) fn stage(r: impl Read, staging: &Path, progress: &dyn Progress) -> Result<StagedFiles, ImageError> {
    let counting = CountingReader::new(r, 1 << 20, |bytes| progress.event(ProgressEvent::Reading { bytes }));
    let (_, tar) = compression::decompress(counting).map_err(|e| ImageError::Format(e.to_string()))?;
    let mut files = HashMap::new();
    let mut aliases: Vec<(PathBuf, PathBuf, Vec<u8>)> = Vec::new();
    let mut n = 0u64;
    tarstream::for_each_entry(tar, |e: &TarEntry, content: &mut dyn Read| {
        match e.kind {
            EntryKind::Dir => {}
            EntryKind::File => {
                n += 1;
                let path = staging.join("files").join(n.to_string());
                let f = File::create(&path).map_err(io_at(&path))?;
                let mut w = DigestWriter::new(BufWriter::new(f));
                let copied = io::copy(&mut content.take(e.size), &mut w).map_err(io_at(&path))?;
                if copied != e.size {
                    return Err(TarError::Malformed(format!("{}: truncated", e.path.display())).into());
                }
                let (digest, size, w) = w.finish();
                w.into_inner().map_err(|err| io_at(&path)(err.into_error()))?;
                files.insert(e.path.clone(), StagedBlob { path, digest, size });
            }
            EntryKind::Symlink | EntryKind::HardLink => {
                let link = e.link.clone().unwrap_or_default();
                let target = if e.kind == EntryKind::Symlink {
                    let parent = e.path.parent().unwrap_or(Path::new(""));
                    let t = Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&link));
                    if t.is_absolute() {
                        return Err(TarError::refused(
                            &e.raw_path,
                            "symlink with an absolute target in an image archive",
                        )
                        .into());
                    }
                    tarstream::resolve_lexically(parent, t)
                        .ok_or_else(|| TarError::refused(&e.raw_path, "symlink leaves the archive"))?
                } else {
                    tarstream::normalize(&link)?
                };
                aliases.push((e.path.clone(), target, e.raw_path.clone()));
            }
            _ => return Err(TarError::refused(&e.raw_path, "unexpected member type in an image archive").into()),
        }
        Ok::<(), ImageError>(())
    })?;
    // Links may point at links; follow a few hops.
    for _ in 0..8 {
        let mut pending = Vec::new();
        for (path, target, raw) in aliases {
            match files.get(&target).cloned() {
                Some(b) => {
                    files.insert(path, b);
                }
                None => pending.push((path, target, raw)),
            }
        }
        aliases = pending;
        if aliases.is_empty() {
            break;
        }
    }
    if let Some((_, target, raw)) = aliases.first() {
        return Err(
            TarError::refused(raw, format!("link to {} which is not a file of the archive", target.display())).into()
        );
    }
    Ok(StagedFiles { files })
}

/// Writes `bytes` as a staged blob.
pub(crate) fn stage_bytes(staging: &Path, name: &str, bytes: &[u8]) -> Result<StagedBlob, ImageError> {
    let path = staging.join("files").join(name);
    fs::write(&path, bytes).map_err(io_at(&path))?;
    Ok(StagedBlob { path, digest: Digest::of(bytes), size: bytes.len() as u64 })
}

/// Works out which images an archive holds, checking every blob they need.
pub(crate) fn plan(files: &StagedFiles, staging: &Path) -> Result<Vec<PlannedImage>, ImageError> {
    let docker: Option<Vec<DockerSaveEntry>> = match files.get("manifest.json") {
        Some(_) => Some(files.json("manifest.json")?),
        None => None,
    };
    if files.get("index.json").is_some() {
        // An OCI layout keeps its manifests byte for byte; names may also come from a
        // manifest.json beside it (Docker 25 writes both).
        let mut docker_names: HashMap<Digest, Vec<Reference>> = HashMap::new();
        for e in docker.iter().flatten() {
            let config =
                files.get(&e.config).ok_or_else(|| ImageError::Format(format!("config {} is missing", e.config)))?;
            docker_names.entry(config.digest.clone()).or_default().extend(repo_tags(e)?);
        }
        let index: Index = files.json("index.json")?;
        let mut planned: Vec<PlannedImage> = Vec::new();
        for desc in &index.manifests {
            let names = names_from_annotations(&desc.annotations);
            let (manifest_desc, manifest_blob) = select_manifest(files, desc, 0)?;
            let mut image = plan_oci_manifest(files, manifest_desc, manifest_blob.clone())?;
            match planned.iter_mut().find(|p| p.manifest.digest == image.manifest.digest) {
                Some(p) => p.names.extend(names),
                None => {
                    image.names = names;
                    planned.push(image);
                }
            }
        }
        for p in &mut planned {
            if let Some(n) = docker_names.get(&p.config_blob.digest) {
                p.names.extend(n.iter().cloned());
            }
            p.names.sort();
            p.names.dedup();
        }
        return Ok(planned);
    }
    let Some(entries) = docker else {
        return Err(ImageError::Format(
            "neither index.json (OCI image layout) nor manifest.json (docker save) found".into(),
        ));
    };
    let mut planned = Vec::new();
    for e in &entries {
        let config_blob =
            files.get(&e.config).ok_or_else(|| ImageError::Format(format!("config {} is missing", e.config)))?.clone();
        let config: ImageConfig = read_json(&config_blob, &e.config)?;
        check_config(&config, e.layers.len())?;
        let mut blobs = Vec::new();
        let mut layers = Vec::new();
        for (path, diff_id) in e.layers.iter().zip(&config.rootfs.diff_ids) {
            let blob = files.get(path).ok_or_else(|| ImageError::Format(format!("layer {path} is missing")))?.clone();
            let mut f = io::BufReader::new(File::open(&blob.path).map_err(io_at(&blob.path))?);
            let c = compression::detect(&mut f).map_err(|err| ImageError::Format(format!("layer {path}: {err}")))?;
            layers.push(LayerRecord {
                blob: Descriptor {
                    media_type: c.oci_layer_media_type().into(),
                    digest: blob.digest.clone(),
                    size: blob.size,
                    platform: None,
                    annotations: Default::default(),
                },
                diff_id: diff_id.clone(),
                unpacked_size: 0,
            });
            blobs.push(blob);
        }
        planned.push(plan_manifest(staging, config_blob, blobs, layers, repo_tags(e)?)?);
    }
    Ok(planned)
}

fn repo_tags(e: &DockerSaveEntry) -> Result<Vec<Reference>, ImageError> {
    e.repo_tags.iter().flatten().map(|t| Reference::parse(t).map_err(ImageError::from)).collect()
}

/// Names from an OCI index entry: containerd's full name, or a ref.name that is a whole
/// reference (skopeo writes `busybox:latest`; a bare tag such as umoci's `latest` names no
/// repository, so the image loads untagged).
fn names_from_annotations(a: &BTreeMap<String, String>) -> Vec<Reference> {
    if let Some(r) = a.get(manifest::ANNOTATION_CONTAINERD_NAME).and_then(|n| Reference::parse(n).ok()) {
        return vec![r];
    }
    match a.get(manifest::ANNOTATION_REF_NAME) {
        Some(n) if n.contains(['/', ':']) => Reference::parse(n).ok().into_iter().collect(),
        _ => Vec::new(),
    }
}

fn check_config(config: &ImageConfig, layers: usize) -> Result<(), ImageError> {
    if !config.os.is_empty() && config.os != "linux" {
        return Err(ImageError::Platform(format!(
            "image operating system {:?} cannot be used on this platform",
            config.os
        )));
    }
    if config.rootfs.diff_ids.len() != layers {
        return Err(ImageError::Format(format!(
            "config lists {} diff ids for {} layers",
            config.rootfs.diff_ids.len(),
            layers
        )));
    }
    Ok(())
}

/// Follows an index entry down to one manifest, choosing linux/amd64 in multi-platform indexes.
fn select_manifest<'a>(
    files: &'a StagedFiles,
    desc: &Descriptor,
    depth: usize,
) -> Result<(Descriptor, &'a StagedBlob), ImageError> {
    let blob = files.blob(desc)?;
    if manifest::is_manifest(&desc.media_type) {
        return Ok((desc.clone(), blob));
    }
    if !manifest::is_index(&desc.media_type) {
        return Err(ImageError::Format(format!("unsupported manifest media type {:?}", desc.media_type)));
    }
    if depth >= MAX_INDEX_DEPTH {
        return Err(ImageError::Format("image indexes nested too deep".into()));
    }
    let index: Index = read_json(blob, &desc.digest.to_string())?;
    let wanted = |d: &&Descriptor| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == "amd64");
    let chosen = match index.manifests.iter().find(wanted) {
        Some(d) => d,
        None if index.manifests.len() == 1 && index.manifests[0].platform.is_none() => &index.manifests[0],
        None => {
            let found: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(|p| format!("{}/{}", p.os, p.architecture)))
                .collect();
            return Err(ImageError::Platform(format!(
                "no linux/amd64 image in the index (it has: {})",
                found.join(", ")
            )));
        }
    };
    select_manifest(files, chosen, depth + 1)
}

fn plan_oci_manifest(files: &StagedFiles, desc: Descriptor, blob: StagedBlob) -> Result<PlannedImage, ImageError> {
    // The index entry's annotations name one tag of the image; the record keeps only what
    // identifies the manifest.
    let desc = Descriptor { annotations: Default::default(), platform: None, ..desc };
    let m: Manifest = read_json(&blob, &desc.digest.to_string())?;
    let config_blob = files.blob(&m.config)?.clone();
    let config: ImageConfig = read_json(&config_blob, "image config")?;
    check_config(&config, m.layers.len())?;
    let mut layer_blobs = Vec::new();
    let mut layers = Vec::new();
    for (l, diff_id) in m.layers.iter().zip(&config.rootfs.diff_ids) {
        crate::ingest::check_layer_media_type(l)?;
        layer_blobs.push(files.blob(l)?.clone());
        layers.push(LayerRecord { blob: l.clone(), diff_id: diff_id.clone(), unpacked_size: 0 });
    }
    Ok(PlannedImage {
        manifest: desc,
        manifest_blob: blob,
        config_blob,
        layer_blobs,
        layers,
        names: Vec::new(),
        parent: None,
    })
}

/// Writes an OCI manifest for a config and layers that came without one.
pub(crate) fn plan_manifest(
    staging: &Path,
    config_blob: StagedBlob,
    layer_blobs: Vec<StagedBlob>,
    layers: Vec<LayerRecord>,
    names: Vec<Reference>,
) -> Result<PlannedImage, ImageError> {
    let m = Manifest {
        schema_version: 2,
        media_type: Some(manifest::MEDIA_OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: manifest::MEDIA_OCI_CONFIG.into(),
            digest: config_blob.digest.clone(),
            size: config_blob.size,
            platform: None,
            annotations: Default::default(),
        },
        layers: layers.iter().map(|l| l.blob.clone()).collect(),
        annotations: Default::default(),
    };
    let bytes = serde_json::to_vec(&m).map_err(|e| ImageError::Format(e.to_string()))?;
    let manifest_blob = stage_bytes(staging, &format!("manifest-{}", config_blob.digest.hex()), &bytes)?;
    let manifest = Descriptor {
        media_type: manifest::MEDIA_OCI_MANIFEST.into(),
        digest: manifest_blob.digest.clone(),
        size: manifest_blob.size,
        platform: None,
        annotations: Default::default(),
    };
    Ok(PlannedImage { manifest, manifest_blob, config_blob, layer_blobs, layers, names, parent: None })
}

/// Applies one Dockerfile-like change (`docker import --change`) to a run configuration.
pub fn apply_change(c: &mut ContainerConfig, change: &str) -> Result<(), ImageError> {
    let err = |m: &str| ImageError::Change(change.to_string(), m.to_string());
    let (word, rest) = change.trim().split_once(char::is_whitespace).unwrap_or((change.trim(), ""));
    let rest = rest.trim();
    let list = |shell: bool| -> Result<Vec<String>, ImageError> {
        if rest.starts_with('[') {
            serde_json::from_str(rest).map_err(|_| err("not a JSON array of strings"))
        } else if shell {
            Ok(vec!["/bin/sh".into(), "-c".into(), rest.to_string()])
        } else {
            Ok(rest.split_whitespace().map(str::to_string).collect())
        }
    };
    match word.to_ascii_uppercase().as_str() {
        "CMD" => c.cmd = Some(list(true)?),
        "ENTRYPOINT" => c.entrypoint = Some(list(true)?),
        "ENV" => {
            let pairs = if rest.contains('=') {
                key_values(rest).ok_or_else(|| err("want KEY=VALUE"))?
            } else {
                let (k, v) = rest.split_once(char::is_whitespace).ok_or_else(|| err("want KEY=VALUE"))?;
                vec![(k.to_string(), v.trim().to_string())]
            };
            let env = c.env.get_or_insert_with(Vec::new);
            for (k, v) in pairs {
                env.retain(|e| e.split_once('=').map_or(e.as_str(), |(ek, _)| ek) != k);
                env.push(format!("{k}={v}"));
            }
        }
        "LABEL" => {
            let labels = c.labels.get_or_insert_with(Default::default);
            for (k, v) in key_values(rest).ok_or_else(|| err("want key=value"))? {
                labels.insert(k, v);
            }
        }
        "WORKDIR" => {
            if rest.is_empty() {
                return Err(err("needs a path"));
            }
            let base = c.working_dir.clone().unwrap_or_else(|| "/".into());
            c.working_dir = Some(Path::new(&base).join(rest).to_string_lossy().into_owned());
        }
        "USER" if !rest.is_empty() => c.user = Some(rest.to_string()),
        "STOPSIGNAL" if !rest.is_empty() => c.stop_signal = Some(rest.to_string()),
        "EXPOSE" => {
            let ports = c.exposed_ports.get_or_insert_with(Default::default);
            for p in rest.split_whitespace() {
                let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                if port.parse::<u16>().is_err() || !matches!(proto, "tcp" | "udp" | "sctp") {
                    return Err(err("want PORT[/tcp|udp|sctp]"));
                }
                ports.insert(format!("{port}/{proto}"), serde_json::json!({}));
            }
        }
        "VOLUME" => {
            let vols = c.volumes.get_or_insert_with(Default::default);
            for v in list(false)? {
                vols.insert(v, serde_json::json!({}));
            }
        }
        _ => return Err(err("supported: CMD ENTRYPOINT ENV EXPOSE LABEL STOPSIGNAL USER VOLUME WORKDIR")),
    }
    Ok(())
}

/// `a=1 "b c"="d e"` → pairs, with double quotes removed.
fn key_values(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut word = String::new();
        let mut quoted = false;
        while let Some(&c) = chars.peek() {
            if c == '"' {
                quoted = !quoted;
            } else if c.is_whitespace() && !quoted {
                break;
            } else {
                word.push(c);
            }
            chars.next();
        }
        let (k, v) = word.split_once('=')?;
        if k.is_empty() {
            return None;
        }
        out.push((k.to_string(), v.to_string()));
    }
}

/// Writes `images` (each with the names to record) as one archive: an OCI image layout
/// (`oci-layout`, `index.json`, `blobs/sha256/…`) plus Docker's `manifest.json`. Entries are
/// sorted and carry fixed times and owners, so the same images give the same bytes.
pub(crate) fn write(
    store: &ImageStore,
    images: &[(ImageRecord, Vec<Reference>)],
    w: impl Write,
) -> Result<(), ImageError> {
    let mut blobs: BTreeMap<Digest, u64> = BTreeMap::new();
    let mut index =
        Index { schema_version: 2, media_type: Some(manifest::MEDIA_OCI_INDEX.into()), manifests: Vec::new() };
    let mut docker = Vec::new();
    for (record, tags) in images {
        blobs.insert(record.manifest.digest.clone(), record.manifest.size);
        let config_size = fs::metadata(store.blob_path(&record.id)).map_err(io_at(&store.blob_path(&record.id)))?.len();
        blobs.insert(record.id.clone(), config_size);
        for l in &record.layers {
            blobs.insert(l.blob.digest.clone(), l.blob.size);
        }
        let base = Descriptor { annotations: Default::default(), platform: None, ..record.manifest.clone() };
        if tags.is_empty() {
            index.manifests.push(base.clone());
        }
        for t in tags {
            let mut d = base.clone();
            d.annotations.insert(manifest::ANNOTATION_CONTAINERD_NAME.into(), t.to_string());
            d.annotations
                .insert(manifest::ANNOTATION_REF_NAME.into(), t.tag().unwrap_or(crate::reference::DEFAULT_TAG).into());
            index.manifests.push(d);
        }
        docker.push(DockerSaveEntry {
            config: format!("blobs/sha256/{}", record.id.hex()),
            repo_tags: if tags.is_empty() { None } else { Some(tags.iter().map(Reference::familiar).collect()) },
            layers: record.layers.iter().map(|l| format!("blobs/sha256/{}", l.blob.digest.hex())).collect(),
        });
    }
    let json = |v: &dyn erased::Json| v.to_vec().map_err(|e| ImageError::Format(e.to_string()));
    let mut tar = tar::Builder::new(w);
    tar.mode(tar::HeaderMode::Deterministic);
    let dir = |tar: &mut tar::Builder<_>, path: &str| -> Result<(), ImageError> {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut h, path, io::empty()).map_err(|e| ImageError::Io { path: path.into(), source: e })
    };
    dir(&mut tar, "blobs/")?;
    dir(&mut tar, "blobs/sha256/")?;
    for (digest, size) in &blobs {
        let path = store.blob_path(digest);
        let mut r = DigestReader::new(File::open(&path).map_err(io_at(&path))?);
        let mut h = header(tar::EntryType::Regular, 0o644, *size);
        tar.append_data(&mut h, format!("blobs/sha256/{}", digest.hex()), &mut r).map_err(io_at(&path))?;
        let (actual, _) = r.finish().map_err(io_at(&path))?;
        if &actual != digest {
            return Err(ImageError::DigestMismatch {
                what: format!("stored blob {}", path.display()),
                expected: digest.clone(),
                actual,
            });
        }
    }
    for (name, bytes) in [
        ("index.json", json(&index)?),
        ("manifest.json", json(&docker)?),
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
    ] {
        let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
        tar.append_data(&mut h, name, bytes.as_slice()).map_err(|e| ImageError::Io { path: name.into(), source: e })?;
    }
    tar.into_inner().and_then(|mut w| w.flush()).map_err(|e| ImageError::Io { path: "archive".into(), source: e })
}

fn header(ty: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(ty);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

mod erased {
    /// Serialising different document types through one closure.
    pub trait Json {
        fn to_vec(&self) -> serde_json::Result<Vec<u8>>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_vec(&self) -> serde_json::Result<Vec<u8>> {
            serde_json::to_vec(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_changes() {
        let mut c = ContainerConfig::default();
        for ch in [
            r#"CMD ["sh", "-c", "echo hi"]"#,
            "ENTRYPOINT /bin/app --x",
            "ENV A=1 B=\"two words\"",
            "ENV A 3",
            "WORKDIR /srv",
            "WORKDIR data",
            "USER 1000:1000",
            "EXPOSE 80 53/udp",
            "LABEL k=v",
        ] {
            apply_change(&mut c, ch).unwrap();
        }
        assert_eq!(c.cmd.unwrap(), ["sh", "-c", "echo hi"]);
        assert_eq!(c.entrypoint.unwrap(), ["/bin/sh", "-c", "/bin/app --x"]);
        assert_eq!(c.env.unwrap(), ["B=two words", "A=3"]);
        assert_eq!(c.working_dir.unwrap(), "/srv/data");
        assert_eq!(c.user.unwrap(), "1000:1000");
        assert_eq!(c.exposed_ports.unwrap().keys().collect::<Vec<_>>(), ["53/udp", "80/tcp"]);
        assert_eq!(c.labels.unwrap()["k"], "v");
        for bad in ["RUN make", "EXPOSE http", "CMD [broken", "ENV", "ONBUILD x"] {
            assert!(apply_change(&mut ContainerConfig::default(), bad).is_err(), "{bad}");
        }
    }
}
