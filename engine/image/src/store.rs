//! The image store: verified blobs by digest, unpacked layers by diff id, and an index of
//! images and their names, all under one root directory.
//!
//! ```text
//! <root>/blobs/sha256/<hex>     manifests, configs and layer blobs, named by their digest
//! <root>/layers/sha256/<hex>    one unpacked layer (overlayfs form), named by its diff id
//! <root>/snapshots/<key>/       a container's overlay: upper, work, rootfs (see snapshot.rs)
//! <root>/index.json             images (by id = config digest) and names → id
//! <root>/staging/               loads in progress; removed on error and at open
//! ```
//!
//! Everything a load brings is staged and checked first (blob digests, diff ids, the layers'
//! tar streams); the store itself changes only in the commit step, under the store lock, by
//! renames followed by an atomic rewrite of `index.json`. A failed or refused load therefore
//! leaves the store exactly as it was.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::archive;
use crate::compression;
use crate::digest::{Digest, DigestReader, DigestWriter};
use crate::manifest::{ContainerConfig, Descriptor, History, ImageConfig, RootFs};
use crate::progress::{CountingReader, Progress, ProgressEvent};
use crate::reference::{Reference, ReferenceError};
use crate::tarstream::TarError;
use crate::unpack::{self, UnpackError, UnpackOptions};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("No such image: {0}")]
    NotFound(String),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("invalid image archive: {0}")]
    Format(String),
    #[error("{what} digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { what: String, expected: Digest, actual: Digest },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Platform(String),
    #[error("invalid change {0:?}: {1}")]
    Change(String, String),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error(transparent)]
    Tar(#[from] TarError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("image store index {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
}

pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io { path: path.to_path_buf(), source }
}

/// One layer of an image: its blob as stored and the digest of its uncompressed tar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub blob: Descriptor,
    pub diff_id: Digest,
    /// Bytes of file content in the unpacked layer.
    pub unpacked_size: u64,
}

/// What the store knows of one image. Its id is its configuration's digest, as Docker's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: Digest,
    pub manifest: Descriptor,
    pub layers: Vec<LayerRecord>,
    /// When the image entered this store (RFC 3339).
    pub loaded: String,
    /// The image this one was made from here (a commit's or a build step's), Docker's `Parent`:
    /// an untagged parent is an intermediate image, listed only with `-a` and removed with its
    /// last child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Digest>,
}

impl ImageRecord {
    /// Bytes of file content over all layers (what `docker images` calls SIZE).
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.unpacked_size).sum()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    images: BTreeMap<Digest, ImageRecord>,
    /// Full reference (`docker.io/library/busybox:latest`) → image id.
    names: BTreeMap<String, Digest>,
    /// `name@manifest-digest` of pulled images (Docker's RepoDigests) → image id. These name
    /// an image but never keep it: an image with no tag left is deleted with its digests.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    digests: BTreeMap<String, Digest>,
}

/// An image with its names and parsed configuration, as inspect shows it.
#[derive(Clone, Debug)]
pub struct Image {
    pub record: ImageRecord,
    pub names: Vec<Reference>,
    /// `name@digest` references the image was pulled by (Docker's RepoDigests).
    pub digests: Vec<Reference>,
    pub config: ImageConfig,
}

impl Image {
    pub fn id(&self) -> &Digest {
        &self.record.id
    }
}

/// An image a load brought in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedImage {
    pub id: Digest,
    pub names: Vec<Reference>,
}

/// What `import` needs besides the rootfs tarball.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    pub reference: Option<Reference>,
    /// Dockerfile-like changes: `CMD ["sh"]`, `ENV A=b`, `WORKDIR /x`, `USER u`, `EXPOSE 80`,
    /// `LABEL k=v`, `ENTRYPOINT …`, `VOLUME …`, `STOPSIGNAL …`.
    pub changes: Vec<String>,
    pub message: Option<String>,
}

/// What garbage collection removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    pub blobs: usize,
    pub layers: usize,
    pub bytes: u64,
}

/// Images by removal: which names were untagged and which images deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub untagged: Vec<Reference>,
    pub deleted: Vec<Digest>,
}

pub struct ImageStore {
    root: PathBuf,
    lock: Mutex<File>,
    pub(crate) unpack: UnpackOptions,
    pub(crate) driver: crate::snapshot::StorageDriver,
}

static STAGING_SEQ: AtomicU64 = AtomicU64::new(0);

/// A staging directory removed when dropped (on success its contents were renamed away).
pub(crate) struct Staging(pub(crate) PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The store lock: in-process mutex plus `flock` for other processes using the same root.
pub(crate) struct StoreLock<'a>(MutexGuard<'a, File>);

impl Drop for StoreLock<'_> {
    fn drop(&mut self) {
        // SAFETY: the fd belongs to the File held by the guard.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// A blob of a load, staged and verified, waiting for the commit.
#[derive(Clone, Debug)]
pub(crate) struct StagedBlob {
    pub(crate) path: PathBuf,
    pub(crate) digest: Digest,
    pub(crate) size: u64,
}

impl StagedBlob {
    /// The record of a layer whose blob this is (compressed as `compression`).
    pub(crate) fn layer_record(
        &self,
        compression: compression::Compression,
        diff_id: Digest,
        unpacked_size: u64,
    ) -> LayerRecord {
        LayerRecord {
            blob: Descriptor {
                media_type: compression.oci_layer_media_type().into(),
                digest: self.digest.clone(),
                size: self.size,
                platform: None,
                annotations: Default::default(),
            },
            diff_id,
            unpacked_size,
        }
    }
}

/// An image a load has checked and is ready to commit.
#[derive(Debug)]
pub(crate) struct PlannedImage {
    pub(crate) manifest: Descriptor,
    pub(crate) manifest_blob: StagedBlob,
    pub(crate) config_blob: StagedBlob,
    pub(crate) layer_blobs: Vec<StagedBlob>,
    pub(crate) layers: Vec<LayerRecord>,
    pub(crate) names: Vec<Reference>,
    pub(crate) parent: Option<Digest>,
}

impl ImageStore {
    /// Opens (creating if needed) the store under `root`, dropping staging left by a crash.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, ImageError> {
        let root = root.into();
        for d in ["blobs/sha256", "layers/sha256", "snapshots", "staging"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_at(&p))?;
        }
        let lock_path = root.join("lock");
        let lock =
            File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(io_at(&lock_path))?;
        let store = ImageStore {
            root,
            lock: Mutex::new(lock),
            unpack: UnpackOptions::default(),
            driver: crate::snapshot::StorageDriver::default(),
        };
        store.clean_staging()?;
        Ok(store)
    }

    /// Removes staging directories of loads whose process is gone (named `<pid>-<n>`); a
    /// load in progress in another live process is left alone.
    fn clean_staging(&self) -> Result<(), ImageError> {
        let _lock = self.locked()?;
        let staging = self.root.join("staging");
        for e in fs::read_dir(&staging).map_err(io_at(&staging))? {
            let e = e.map_err(io_at(&staging))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let owner = name.split('-').next().and_then(|p| p.parse::<i32>().ok());
            let alive = owner
                .is_some_and(|pid| pid != std::process::id() as i32 && Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        Ok(())
    }

    /// Allows device nodes in layers (off by default).
    pub fn allow_devices(mut self, allow: bool) -> Self {
        self.unpack.allow_devices = allow;
        self
    }

    /// How new snapshots are made (overlay2 by default); a snapshot keeps the driver it was
    /// made with.
    pub fn storage_driver(mut self, driver: crate::snapshot::StorageDriver) -> Self {
        self.driver = driver;
        self
    }

    pub fn driver(&self) -> crate::snapshot::StorageDriver {
        self.driver
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn locked(&self) -> Result<StoreLock<'_>, ImageError> {
        // A poisoned mutex only means another thread panicked while holding it; the index on
        // disk is rewritten atomically, so it is still consistent.
        let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: plain flock on an fd we own.
        if unsafe { libc::flock(guard.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_at(&self.root.join("lock"))(io::Error::last_os_error()));
        }
        Ok(StoreLock(guard))
    }

    pub(crate) fn staging(&self) -> Result<Staging, ImageError> {
        let p = self.root.join("staging").join(format!(
            "{}-{}",
            std::process::id(),
            STAGING_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(p.join("files")).map_err(io_at(&p))?;
        fs::create_dir_all(p.join("layers")).map_err(io_at(&p))?;
        Ok(Staging(p))
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// The directory holding the unpacked layer with this diff id.
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers/sha256").join(diff_id.hex())
    }

    /// Reads a blob and checks it against its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, ImageError> {
        let p = self.blob_path(d);
        let bytes = fs::read(&p).map_err(io_at(&p))?;
        let actual = Digest::of(&bytes);
        if &actual != d {
            return Err(ImageError::DigestMismatch {
                what: format!("stored blob {}", p.display()),
                expected: d.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn read_index(&self) -> Result<IndexFile, ImageError> {
        let p = self.index_path();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| ImageError::Corrupt { path: p, message: e.to_string() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(IndexFile::default()),
            Err(e) => Err(io_at(&p)(e)),
        }
    }

    fn write_index(&self, index: &IndexFile) -> Result<(), ImageError> {
        let bytes = serde_json::to_vec_pretty(index).map_err(|e| ImageError::Format(e.to_string()))?;
        write_atomic(&self.index_path(), &bytes)
    }

    // ---- queries -------------------------------------------------------------------------

    /// Every image, newest load first.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let index = self.read_index()?;
        let mut out = Vec::new();
        for record in index.images.values() {
            out.push(self.image_of(&index, record)?);
        }
        out.sort_by(|a, b| b.record.loaded.cmp(&a.record.loaded).then(a.record.id.cmp(&b.record.id)));
        Ok(out)
    }

    fn image_of(&self, index: &IndexFile, record: &ImageRecord) -> Result<Image, ImageError> {
        let names = index
            .names
            .iter()
            .filter(|(_, id)| **id == record.id)
            .filter_map(|(n, _)| Reference::parse_name(n).ok())
            .collect();
        let digests = index
            .digests
            .iter()
            .filter(|(_, id)| **id == record.id)
            .filter_map(|(n, _)| Reference::parse(n).ok())
            .collect();
        let config = serde_json::from_slice(&self.read_blob(&record.id)?)
            .map_err(|e| ImageError::Corrupt { path: self.blob_path(&record.id), message: e.to_string() })?;
        Ok(Image { record: record.clone(), names, digests, config })
    }

    /// Whether some image was made from image `id` (it is then an intermediate one when it has
    /// no name).
    pub fn has_children(&self, id: &Digest) -> Result<bool, ImageError> {
        Ok(self.read_index()?.images.values().any(|r| r.parent.as_ref() == Some(id)))
    }

    /// Finds an image as Docker does: full id (`sha256:…`), a unique id prefix (at least 4 hex
    /// digits, with or without `sha256:`), or a reference (`busybox` = `busybox:latest`).
    pub fn resolve(&self, s: &str) -> Result<Image, ImageError> {
        let index = self.read_index()?;
        let id = Self::resolve_in(&index, s)?;
        self.image_of(&index, &index.images[&id])
    }

    /// Docker's order: a full id, then a name, then an id prefix, then `name@digest`.
    fn resolve_in(index: &IndexFile, s: &str) -> Result<Digest, ImageError> {
        let not_found = || ImageError::NotFound(s.to_string());
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        let hexlike =
            hex.len() >= 4 && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let reference = if s.starts_with("sha256:") { None } else { Reference::parse(s).ok() };
        if let Some(r) = reference.as_ref().filter(|r| r.digest().is_none()) {
            if let Some(id) = index.names.get(&r.to_string()) {
                return Ok(id.clone());
            }
        }
        if hexlike {
            let matches: Vec<&Digest> = index.images.keys().filter(|d| d.hex().starts_with(hex)).collect();
            match matches.as_slice() {
                [one] => return Ok((*one).clone()),
                [] => {}
                _ => return Err(ImageError::Conflict(format!("image id prefix {s} is ambiguous"))),
            }
        }
        if let Some(id) = reference.as_ref().and_then(|r| index.digests.get(&r.to_string())) {
            return Ok(id.clone());
        }
        match reference {
            // name@digest: the image with that name whose manifest has that digest.
            Some(r) if r.digest().is_some() => index
                .images
                .values()
                .find(|i| {
                    Some(&i.manifest.digest) == r.digest()
                        && index.names.iter().any(|(n, id)| id == &i.id && n.starts_with(&format!("{}:", r.name())))
                })
                .map(|i| i.id.clone())
                .ok_or_else(not_found),
            Some(_) => Err(not_found()),
            None if s.starts_with("sha256:") => Err(not_found()),
            // Not a reference: a 64-hex id nobody has, or a malformed name (say why).
            None => match Reference::parse(s) {
                Err(ReferenceError::HexName(_)) | Ok(_) => Err(not_found()),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// The layer directories of an image, lowest first.
    pub fn layer_dirs(&self, id: &Digest) -> Result<Vec<PathBuf>, ImageError> {
        let index = self.read_index()?;
        let record = index.images.get(id).ok_or_else(|| ImageError::NotFound(id.to_string()))?;
        Ok(record.layers.iter().map(|l| self.layer_path(&l.diff_id)).collect())
    }

    // ---- names ---------------------------------------------------------------------------

    /// Gives the image `source` the name `target` (moving it from another image if needed).
    pub fn tag(&self, source: &str, target: &Reference) -> Result<(), ImageError> {
        if target.digest().is_some() {
            return Err(ImageError::Conflict(format!("refusing to create a tag with a digest reference: {target}")));
        }
        let _lock = self.locked()?;
        let mut index = self.read_index()?;
        let id = Self::resolve_in(&index, source)?;
        index.names.insert(target.to_string(), id);
        self.write_index(&index)
    }

    /// Records that the image `id` is `reference` (`name@digest`) in a registry, as a push
    /// makes it one of the image's RepoDigests. The image may have gone meanwhile: then
    /// nothing is recorded.
    pub fn add_repo_digest(&self, id: &Digest, reference: &Reference) -> Result<(), ImageError> {
        if reference.digest().is_none() {
            return Err(ImageError::Conflict(format!("not a digest reference: {reference}")));
        }
        let _lock = self.locked()?;
        let mut index = self.read_index()?;
        if !index.images.contains_key(id) {
            return Err(ImageError::NotFound(id.to_string()));
        }
        index.digests.insert(reference.to_string(), id.clone());
        self.write_index(&index)
    }

    /// `docker rmi`: a name is untagged, and an image with no names left is deleted with the
    /// blobs and layers only it used. An image a snapshot uses is never deleted; without
    /// `force`, an id naming an image with several names is refused.
    pub fn remove(&self, s: &str, force: bool) -> Result<Removed, ImageError> {
        let _lock = self.locked()?;
        let mut index = self.read_index()?;
        let id = Self::resolve_in(&index, s)?;
        let mut removed = Removed::default();
        let names: Vec<String> = index.names.iter().filter(|(_, v)| **v == id).map(|(k, _)| k.clone()).collect();
        let by_name = Reference::parse(s).ok().filter(|r| index.names.get(&r.to_string()) == Some(&id));
        let in_use = self.snapshot_users()?.contains(&id);
        match by_name {
            Some(r) if names.len() > 1 || in_use => {
                if in_use && names.len() == 1 && !force {
                    return Err(ImageError::Conflict(format!(
                        "conflict: unable to remove repository reference {:?} (must force) - a container is using its referenced image {}",
                        s, short_id(&id)
                    )));
                }
                index.names.remove(&r.to_string());
                removed.untagged.push(r);
            }
            _ => {
                if in_use {
                    return Err(ImageError::Conflict(format!(
                        "conflict: unable to delete {} - image is being used by a container",
                        short_id(&id)
                    )));
                }
                if names.len() > 1 && !force {
                    return Err(ImageError::Conflict(format!(
                        "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                        short_id(&id)
                    )));
                }
                for n in &names {
                    index.names.remove(n);
                    removed.untagged.extend(Reference::parse_name(n).ok());
                }
            }
        }
        if !index.names.values().any(|v| *v == id) && !in_use {
            let digests: Vec<String> =
                index.digests.iter().filter(|(_, v)| **v == id).map(|(k, _)| k.clone()).collect();
            for n in digests {
                index.digests.remove(&n);
                removed.untagged.extend(Reference::parse(&n).ok());
            }
            let mut parent = index.images.remove(&id).and_then(|r| r.parent);
            removed.deleted.push(id);
            // the untagged images it was built on go with it, as dockerd's, while nothing else
            // (a name, another child, a container) keeps them
            let users = self.snapshot_users()?;
            while let Some(p) = parent.take() {
                let named = index.names.values().any(|v| *v == p);
                let other_child = index.images.values().any(|r| r.parent.as_ref() == Some(&p));
                if named || other_child || users.contains(&p) || !index.images.contains_key(&p) {
                    break;
                }
                parent = index.images.remove(&p).and_then(|r| r.parent);
                removed.deleted.push(p);
            }
        }
        self.write_index(&index)?;
        if !removed.deleted.is_empty() {
            self.gc_locked(&index)?;
        }
        Ok(removed)
    }

    /// Removes blobs and layers no image or snapshot refers to.
    pub fn gc(&self) -> Result<GcStats, ImageError> {
        let _lock = self.locked()?;
        let index = self.read_index()?;
        self.gc_locked(&index)
    }

    fn gc_locked(&self, index: &IndexFile) -> Result<GcStats, ImageError> {
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        for i in index.images.values() {
            blobs.insert(i.manifest.digest.hex());
            blobs.insert(i.id.hex());
            for l in &i.layers {
                blobs.insert(l.blob.digest.hex());
                layers.insert(l.diff_id.hex());
            }
        }
        let (records, unreadable) = self.snapshot_records_checked()?;
        for s in records {
            layers.extend(s.layers.iter().map(Digest::hex));
        }
        let mut stats = GcStats::default();
        let blob_dir = self.root.join("blobs/sha256");
        for e in fs::read_dir(&blob_dir).map_err(io_at(&blob_dir))? {
            let e = e.map_err(io_at(&blob_dir))?;
            if !blobs.contains(e.file_name().to_string_lossy().as_ref()) {
                stats.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(e.path()).map_err(io_at(&e.path()))?;
                stats.blobs += 1;
            }
        }
        let layer_dir = self.root.join("layers/sha256");
        if unreadable {
            // A snapshot whose record is unreadable may use any layer: keep them all.
            return Ok(stats);
        }
        for e in fs::read_dir(&layer_dir).map_err(io_at(&layer_dir))? {
            let e = e.map_err(io_at(&layer_dir))?;
            if !layers.contains(e.file_name().to_string_lossy().as_ref()) {
                stats.bytes += engine_util::fs::dir_size(&e.path());
                fs::remove_dir_all(e.path()).map_err(io_at(&e.path()))?;
                stats.layers += 1;
            }
        }
        Ok(stats)
    }

    // ---- load, import, save -------------------------------------------------------------

    /// Loads a `docker save` archive or an OCI image-layout archive (plain, gzip or zstd).
    pub fn load(&self, r: impl Read, progress: &dyn Progress) -> Result<Vec<LoadedImage>, ImageError> {
        let staging = self.staging()?;
        let files = archive::stage(r, &staging.0, progress)?;
        let mut planned = archive::plan(&files, &staging.0)?;
        for image in &mut planned {
            self.unpack_layers(image, &staging.0, progress)?;
        }
        self.commit(planned, &staging.0, progress)
    }

    /// Imports a rootfs tarball (plain, gzip or zstd) as a one-layer image.
    pub fn import(&self, r: impl Read, opts: &ImportOptions, progress: &dyn Progress) -> Result<Digest, ImageError> {
        let mut container_config = ContainerConfig::default();
        for change in &opts.changes {
            archive::apply_change(&mut container_config, change)?;
        }
        let staging = self.staging()?;
        let blob_path = staging.0.join("files/layer");
        let blob = {
            let f = File::create(&blob_path).map_err(io_at(&blob_path))?;
            let mut w = DigestWriter::new(BufWriter::new(f));
            let mut counting =
                CountingReader::new(r, 1 << 20, |bytes| progress.event(ProgressEvent::Reading { bytes }));
            io::copy(&mut counting, &mut w).map_err(io_at(&blob_path))?;
            let (digest, size, w) = w.finish();
            w.into_inner().map_err(|e| io_at(&blob_path)(e.into_error()))?.sync_all().map_err(io_at(&blob_path))?;
            StagedBlob { path: blob_path.clone(), digest, size }
        };
        let compression =
            compression::detect(&mut io::BufReader::new(File::open(&blob_path).map_err(io_at(&blob_path))?))
                .map_err(io_at(&blob_path))?;
        // The diff id first (one decompressing pass), so a layer the store has is not unpacked again.
        let diff_id = {
            let (_, tar) = compression::decompress(File::open(&blob_path).map_err(io_at(&blob_path))?)
                .map_err(io_at(&blob_path))?;
            DigestReader::new(tar).finish().map_err(io_at(&blob_path))?.0
        };
        let (diff_id, unpacked_size) = self.unpack_blob(&blob, Some(&diff_id), &staging.0, progress)?;
        let now = engine_util::time::rfc3339_seconds(SystemTime::now());
        let config = ImageConfig {
            created: Some(now.clone()),
            architecture: "amd64".into(),
            os: "linux".into(),
            config: Some(container_config),
            rootfs: RootFs { typ: "layers".into(), diff_ids: vec![diff_id.clone()] },
            history: vec![History {
                created: Some(now),
                created_by: Some("engine import".into()),
                comment: opts.message.clone().or(Some("Imported from tarball".into())),
                ..Default::default()
            }],
            ..Default::default()
        };
        let config_blob = archive::stage_bytes(
            &staging.0,
            "config",
            &serde_json::to_vec(&config).map_err(|e| ImageError::Format(e.to_string()))?,
        )?;
        let layer = blob.layer_record(compression, diff_id, unpacked_size);
        let image = archive::plan_manifest(
            &staging.0,
            config_blob,
            vec![blob],
            vec![layer],
            opts.reference.iter().cloned().collect(),
        )?;
        let loaded = self.commit(vec![image], &staging.0, progress)?;
        loaded.into_iter().next().map(|l| l.id).ok_or_else(|| ImageError::Format("import produced no image".into()))
    }

    /// Writes the named images as one archive that both `docker load` (manifest.json) and OCI
    /// tools (index.json, oci-layout) read. The same images give the same bytes.
    pub fn save(&self, names: &[&str], w: impl Write) -> Result<(), ImageError> {
        let index = self.read_index()?;
        let mut images: Vec<(ImageRecord, Vec<Reference>)> = Vec::new();
        let mut wanted: Vec<(Digest, Option<Reference>)> = Vec::new();
        for s in names {
            // `docker save busybox` saves every tag of the repository.
            let repo = Reference::parse_name(s).ok().filter(|r| r.tag().is_none() && r.digest().is_none());
            let tagged: Vec<(Digest, Option<Reference>)> = match &repo {
                Some(r) => index
                    .names
                    .iter()
                    .filter_map(|(n, id)| {
                        Reference::parse_name(n).ok().filter(|p| p.name() == r.name()).map(|p| (id.clone(), Some(p)))
                    })
                    .collect(),
                None => Vec::new(),
            };
            if tagged.is_empty() {
                let id = Self::resolve_in(&index, s)?;
                let tag = Reference::parse(s).ok().filter(|r| index.names.get(&r.to_string()) == Some(&id));
                wanted.push((id, tag));
            } else {
                wanted.extend(tagged);
            }
        }
        for (id, tag) in wanted {
            match images.iter_mut().find(|(r, _)| r.id == id) {
                Some((_, tags)) => tags.extend(tag),
                None => images.push((index.images[&id].clone(), tag.into_iter().collect())),
            }
        }
        for (_, tags) in &mut images {
            tags.sort();
            tags.dedup();
        }
        archive::write(self, &images, w)
    }

    // ---- the steps of a load -------------------------------------------------------------

    fn unpack_layers(
        &self,
        image: &mut PlannedImage,
        staging: &Path,
        progress: &dyn Progress,
    ) -> Result<(), ImageError> {
        for (layer, blob) in image.layers.iter_mut().zip(&image.layer_blobs) {
            let (_, size) = self.unpack_blob(blob, Some(&layer.diff_id), staging, progress)?;
            layer.unpacked_size = size;
        }
        Ok(())
    }

    /// Unpacks a verified blob into `staging/layers/<diff id>` unless the store (or this load)
    /// already has that layer; checks the diff id when one is expected. Returns the diff id
    /// and the layer's file bytes.
    pub(crate) fn unpack_blob(
        &self,
        blob: &StagedBlob,
        expected: Option<&Digest>,
        staging: &Path,
        progress: &dyn Progress,
    ) -> Result<(Digest, u64), ImageError> {
        if let Some(diff_id) = expected {
            for dir in [self.layer_path(diff_id), staging.join("layers").join(diff_id.hex())] {
                if dir.is_dir() {
                    progress.event(ProgressEvent::LayerDone { diff_id, reused: true });
                    return Ok((diff_id.clone(), engine_util::fs::dir_size(&dir)));
                }
            }
        }
        let label = expected.cloned().unwrap_or_else(|| blob.digest.clone());
        progress.event(ProgressEvent::LayerStart { diff_id: &label, size: blob.size });
        let dest = staging.join("layers").join(format!("incoming-{}", blob.digest.hex()));
        fs::create_dir(&dest).map_err(io_at(&dest))?;
        let file = File::open(&blob.path).map_err(io_at(&blob.path))?;
        let total = blob.size;
        let counting = CountingReader::new(file, 1 << 20, |done| {
            progress.event(ProgressEvent::LayerProgress { diff_id: &label, done, total })
        });
        let (_, tar) = compression::decompress(counting).map_err(io_at(&blob.path))?;
        let mut tar = DigestReader::new(tar);
        let stats = unpack::unpack_layer(&mut tar, &dest, &self.unpack, |_| {})?;
        let (diff_id, _) = tar.finish().map_err(io_at(&blob.path))?;
        if let Some(expected) = expected {
            if &diff_id != expected {
                return Err(ImageError::DigestMismatch {
                    what: format!("layer {} diff id", blob.digest),
                    expected: expected.clone(),
                    actual: diff_id,
                });
            }
        }
        let final_dir = staging.join("layers").join(diff_id.hex());
        if final_dir.exists() || self.layer_path(&diff_id).exists() {
            fs::remove_dir_all(&dest).map_err(io_at(&dest))?;
        } else {
            fs::rename(&dest, &final_dir).map_err(io_at(&dest))?;
        }
        progress.event(ProgressEvent::LayerDone { diff_id: &diff_id, reused: false });
        Ok((diff_id, stats.file_bytes))
    }

    /// Moves checked blobs and layers into the store and records the images and names.
    pub(crate) fn commit(
        &self,
        planned: Vec<PlannedImage>,
        staging: &Path,
        progress: &dyn Progress,
    ) -> Result<Vec<LoadedImage>, ImageError> {
        // One syncfs flushes every staged file and layer before any of them becomes visible.
        let dir = File::open(staging).map_err(io_at(staging))?;
        // SAFETY: syncfs on an fd we own.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(io_at(staging)(io::Error::last_os_error()));
        }
        let _lock = self.locked()?;
        let mut index = self.read_index()?;
        let now = engine_util::time::rfc3339_seconds(SystemTime::now());
        // A layer this load found in the store may have been collected since (an rmi in
        // between); refuse rather than record an image without its layer.
        for image in &planned {
            for blob in std::iter::once(&image.manifest_blob)
                .chain(std::iter::once(&image.config_blob))
                .chain(&image.layer_blobs)
            {
                if !self.blob_path(&blob.digest).exists() && !blob.path.exists() {
                    return Err(ImageError::Conflict(format!(
                        "blob {} vanished while loading; load again",
                        blob.digest
                    )));
                }
            }
            for layer in &image.layers {
                if !self.layer_path(&layer.diff_id).exists()
                    && !staging.join("layers").join(layer.diff_id.hex()).exists()
                {
                    return Err(ImageError::Conflict(format!(
                        "layer {} was removed while loading; load again",
                        layer.diff_id
                    )));
                }
            }
        }
        let mut out = Vec::new();
        for image in planned {
            for blob in std::iter::once(&image.manifest_blob)
                .chain(std::iter::once(&image.config_blob))
                .chain(&image.layer_blobs)
            {
                let dest = self.blob_path(&blob.digest);
                if !dest.exists() && blob.path.exists() {
                    fs::rename(&blob.path, &dest).map_err(io_at(&dest))?;
                }
            }
            for layer in &image.layers {
                let src = staging.join("layers").join(layer.diff_id.hex());
                let dest = self.layer_path(&layer.diff_id);
                if !dest.exists() && src.exists() {
                    fs::rename(&src, &dest).map_err(io_at(&dest))?;
                }
            }
            let id = image.config_blob.digest.clone();
            let record = ImageRecord {
                id: id.clone(),
                manifest: image.manifest,
                layers: image.layers,
                loaded: now.clone(),
                parent: image.parent,
            };
            let record = match index.images.get(&id) {
                Some(existing) => existing.clone(),
                None => record,
            };
            index.images.insert(id.clone(), record);
            for name in &image.names {
                match name.digest() {
                    Some(_) => index.digests.insert(name.to_string(), id.clone()),
                    None => index.names.insert(name.to_string(), id.clone()),
                };
            }
            let tags: Vec<&Reference> = image.names.iter().filter(|n| n.digest().is_none()).collect();
            if tags.is_empty() {
                progress.event(ProgressEvent::Loaded { id: &id, name: None });
            }
            for name in tags {
                progress.event(ProgressEvent::Loaded { id: &id, name: Some(name) });
            }
            out.push(LoadedImage { id, names: image.names });
        }
        self.write_index(&index)?;
        sync_dir(&self.root.join("blobs/sha256"))?;
        sync_dir(&self.root.join("layers/sha256"))?;
        Ok(out)
    }

    /// Disk use of blobs and unpacked layers, for `system df`.
    pub fn disk_usage(&self) -> Result<(u64, u64), ImageError> {
        Ok((engine_util::fs::dir_size(&self.root.join("blobs")), engine_util::fs::dir_size(&self.root.join("layers"))))
    }

    pub(crate) fn images_by_id(&self) -> Result<HashMap<Digest, ImageRecord>, ImageError> {
        Ok(self.read_index()?.images.into_iter().collect())
    }
}

/// `sha256:` and the first 12 hex digits, as Docker shortens ids.
pub fn short_id(d: &Digest) -> String {
    d.hex()[..12].to_string()
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    engine_util::fs::write_atomic(path, bytes).map_err(io_at(path))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))
}
