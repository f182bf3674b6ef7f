//! Ingesting an image piece by piece, as a registry pull brings it.
//!
//! A pull learns an image top-down (manifest, config, then layers that arrive in any order and
//! in parallel), so it cannot stage a whole archive first as `load` does. An [`Ingest`] instead
//! lets each piece enter the store as soon as it is verified, the way containerd's content
//! store does:
//!
//! - a blob is written through a [`BlobWriter`], hashed on the way; only when its digest and
//!   size match the descriptor is it synced and renamed into `blobs/`. Nothing unverified is
//!   ever visible in the store;
//! - a layer is unpacked from its stored blob into staging and renamed into `layers/` (after a
//!   `syncfs`) once its diff id is checked;
//! - the image itself (its record and names in `index.json`) appears only in
//!   [`Ingest::commit`], after every blob and layer it needs is in place.
//!
//! So a pull killed at any moment lists no image, and the next pull finds the blobs and layers
//! already verified and fetches only the rest. Blobs and layers no image refers to are
//! collected by [`ImageStore::gc`].

use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, Write};
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::manifest::{self, Descriptor, ImageConfig, Manifest};
use crate::progress::Progress;
use crate::reference::Reference;
use crate::store::{
    io_at, sync_dir, ImageError, ImageStore, LayerRecord, LoadedImage, PlannedImage, StagedBlob, Staging,
};

/// The largest manifest or index accepted (containerd's bound).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// The largest image configuration accepted.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// One image being ingested. Dropping it without [`Ingest::commit`] leaves the verified blobs
/// and layers in the store (for the next attempt) and no image.
pub struct Ingest {
    store: Arc<ImageStore>,
    staging: Staging,
}

/// What [`Ingest::commit`] records: the manifest exactly as the registry served it, the config
/// and the layers, and the names the image gets (tags, and `name@digest` references).
#[derive(Clone, Debug)]
pub struct IngestedImage {
    pub manifest: Descriptor,
    pub manifest_bytes: Vec<u8>,
    pub config_bytes: Vec<u8>,
    pub names: Vec<Reference>,
}

impl Ingest {
    pub fn begin(store: Arc<ImageStore>) -> Result<Self, ImageError> {
        let staging = store.staging()?;
        Ok(Ingest { store, staging })
    }

    /// Whether the store holds this verified blob.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.store.blob_path(d).is_file()
    }

    /// Whether the store holds this unpacked layer.
    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.store.layer_path(diff_id).is_dir()
    }

    /// A writer for the blob `expected` describes, refused up front when it is larger than
    /// `limit` bytes.
    pub fn blob_writer(&self, expected: &Descriptor, limit: Option<u64>) -> Result<BlobWriter, ImageError> {
        if let Some(limit) = limit.filter(|l| expected.size > *l) {
            return Err(ImageError::Format(format!(
                "blob {} is {} bytes, more than the {} allowed",
                expected.digest, expected.size, limit
            )));
        }
        let path = self.staging.0.join("files").join(format!("{}.partial", expected.digest.hex()));
        let file =
            File::options().create(true).truncate(true).read(true).write(true).open(&path).map_err(io_at(&path))?;
        Ok(BlobWriter {
            store: self.store.clone(),
            path,
            file: BufWriter::with_capacity(256 * 1024, file),
            hasher: Sha256::new(),
            written: 0,
            expected: expected.clone(),
        })
    }

    /// Puts a blob held in memory (a manifest or config) into the store after checking it.
    pub fn put_blob(&self, expected: &Descriptor, bytes: &[u8]) -> Result<(), ImageError> {
        if self.has_blob(&expected.digest) {
            return Ok(());
        }
        let mut w = self.blob_writer(expected, None)?;
        w.write_all(bytes).map_err(io_at(&w.path))?;
        w.commit()
    }

    /// Unpacks the stored blob of `layer` and moves the layer into the store once its diff id
    /// is checked; returns its bytes of file content. A layer the store has is not unpacked.
    pub fn unpack_layer(
        &self,
        layer: &Descriptor,
        diff_id: &Digest,
        progress: &dyn Progress,
    ) -> Result<u64, ImageError> {
        check_layer_media_type(layer)?;
        let blob =
            StagedBlob { path: self.store.blob_path(&layer.digest), digest: layer.digest.clone(), size: layer.size };
        if !blob.path.is_file() {
            return Err(ImageError::NotFound(format!("blob {}", layer.digest)));
        }
        let (diff_id, size) = self.store.unpack_blob(&blob, Some(diff_id), &self.staging.0, progress)?;
        let src = self.staging.0.join("layers").join(diff_id.hex());
        if src.exists() {
            let dir = File::open(&self.staging.0).map_err(io_at(&self.staging.0))?;
            nix::unistd::syncfs(&dir).map_err(|e| io_at(&self.staging.0)(e.into()))?;
            let _lock = self.store.locked()?;
            let dest = self.store.layer_path(&diff_id);
            if dest.exists() {
                fs::remove_dir_all(&src).map_err(io_at(&src))?;
            } else {
                fs::rename(&src, &dest).map_err(io_at(&dest))?;
                sync_dir(dest.parent().unwrap_or(&dest))?;
            }
        }
        Ok(size)
    }

    /// Records the image: checks that the manifest, config and layers agree and are all in the
    /// store, then writes the image and its names to the index in one atomic step.
    pub fn commit(self, image: IngestedImage, progress: &dyn Progress) -> Result<LoadedImage, ImageError> {
        if Digest::of(&image.manifest_bytes) != image.manifest.digest {
            return Err(ImageError::DigestMismatch {
                what: "manifest".into(),
                expected: image.manifest.digest.clone(),
                actual: Digest::of(&image.manifest_bytes),
            });
        }
        let m: Manifest = serde_json::from_slice(&image.manifest_bytes)
            .map_err(|e| ImageError::Format(format!("manifest {}: {e}", image.manifest.digest)))?;
        let config = parse_config(&m, &image.config_bytes)?;
        self.put_blob(&image.manifest, &image.manifest_bytes)?;
        self.put_blob(&m.config, &image.config_bytes)?;
        let mut layers = Vec::new();
        let mut layer_blobs = Vec::new();
        for (l, diff_id) in m.layers.iter().zip(&config.rootfs.diff_ids) {
            let layer_dir = self.store.layer_path(diff_id);
            if !self.has_blob(&l.digest) || !layer_dir.is_dir() {
                return Err(ImageError::Format(format!("layer {} is not in the store", l.digest)));
            }
            layer_blobs.push(StagedBlob {
                path: self.store.blob_path(&l.digest),
                digest: l.digest.clone(),
                size: l.size,
            });
            layers.push(LayerRecord {
                blob: l.clone(),
                diff_id: diff_id.clone(),
                unpacked_size: engine_util::fs::dir_size(&layer_dir),
            });
        }
        let blob = |d: &Descriptor| StagedBlob {
            path: self.store.blob_path(&d.digest),
            digest: d.digest.clone(),
            size: d.size,
        };
        let manifest = Descriptor { annotations: Default::default(), platform: None, ..image.manifest.clone() };
        let planned = PlannedImage {
            manifest_blob: blob(&manifest),
            manifest,
            config_blob: blob(&m.config),
            layer_blobs,
            layers,
            names: image.names,
            parent: None,
        };
        let mut loaded = self.store.commit(vec![planned], &self.staging.0, progress)?;
        loaded.pop().ok_or_else(|| ImageError::Format("the image was not recorded".into()))
    }
}

/// Parses and checks an image configuration against its manifest: its digest, its platform
/// and one diff id per layer.
pub fn parse_config(m: &Manifest, bytes: &[u8]) -> Result<ImageConfig, ImageError> {
    let actual = Digest::of(bytes);
    if actual != m.config.digest {
        return Err(ImageError::DigestMismatch {
            what: "image config".into(),
            expected: m.config.digest.clone(),
            actual,
        });
    }
    let config: ImageConfig = serde_json::from_slice(bytes)
        .map_err(|e| ImageError::Format(format!("image config {}: {e}", m.config.digest)))?;
    if !config.os.is_empty() && config.os != "linux" {
        return Err(ImageError::Platform(format!(
            "image operating system {:?} cannot be used on this platform",
            config.os
        )));
    }
    if config.rootfs.diff_ids.len() != m.layers.len() {
        return Err(ImageError::Format(format!(
            "config lists {} diff ids for {} layers",
            config.rootfs.diff_ids.len(),
            m.layers.len()
        )));
    }
    for l in &m.layers {
        check_layer_media_type(l)?;
    }
    Ok(config)
}

/// Layers the engine can unpack; foreign (non-distributable) layers and unknown types are
/// refused with their media type named.
pub fn check_layer_media_type(l: &Descriptor) -> Result<(), ImageError> {
    let known = [
        manifest::MEDIA_OCI_LAYER,
        manifest::MEDIA_OCI_LAYER_GZIP,
        manifest::MEDIA_OCI_LAYER_ZSTD,
        manifest::MEDIA_DOCKER_LAYER,
        manifest::MEDIA_DOCKER_LAYER_GZIP,
    ];
    if known.contains(&l.media_type.as_str()) {
        return Ok(());
    }
    let why = if l.media_type.contains("foreign") || l.media_type.contains("nondistributable") {
        "foreign layers are not fetched"
    } else {
        "unsupported media type"
    };
    Err(ImageError::Format(format!("layer {}: {why} {:?}", l.digest, l.media_type)))
}

/// A blob on its way into the store: hashed as it is written, visible only once verified.
pub struct BlobWriter {
    store: Arc<ImageStore>,
    path: PathBuf,
    file: BufWriter<File>,
    hasher: Sha256,
    written: u64,
    expected: Descriptor,
}

impl BlobWriter {
    /// Bytes written so far (where a resumed download continues).
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn expected(&self) -> &Descriptor {
        &self.expected
    }

    /// Starts the blob over (a server that ignored a range request sends it all again).
    pub fn restart(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_mut().set_len(0)?;
        self.file.get_mut().rewind()?;
        self.hasher = Sha256::new();
        self.written = 0;
        Ok(())
    }

    /// Checks size and digest, then syncs the blob and renames it into the store.
    pub fn commit(mut self) -> Result<(), ImageError> {
        let expected = self.expected.clone();
        if self.written != expected.size {
            return Err(ImageError::Format(format!(
                "blob {}: got {} bytes, the manifest says {}",
                expected.digest, self.written, expected.size
            )));
        }
        let actual = Digest::from_hex(&hex::encode(std::mem::take(&mut self.hasher).finalize()))
            .map_err(|e| ImageError::Format(e.to_string()))?;
        if actual != expected.digest {
            return Err(ImageError::DigestMismatch { what: "blob".into(), expected: expected.digest, actual });
        }
        self.file.flush().map_err(io_at(&self.path))?;
        self.file.get_ref().sync_all().map_err(io_at(&self.path))?;
        let dest = self.store.blob_path(&expected.digest);
        fs::rename(&self.path, &dest).map_err(io_at(&dest))?;
        sync_dir(dest.parent().unwrap_or(&dest))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.expected.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "blob {} is longer than the {} bytes its descriptor says",
                    self.expected.digest, self.expected.size
                ),
            ));
        }
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{RootFs, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER, MEDIA_OCI_MANIFEST};

    fn desc(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            platform: None,
            annotations: Default::default(),
        }
    }

    fn layer_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, "hello.txt", &b"hello"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn pieces_enter_verified_and_the_image_only_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ImageStore::open(dir.path()).unwrap());
        let tar = layer_tar();
        let layer = desc(MEDIA_OCI_LAYER, &tar);
        let config = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            rootfs: RootFs { typ: "layers".into(), diff_ids: vec![Digest::of(&tar)] },
            ..Default::default()
        };
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let m = Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_OCI_MANIFEST.into()),
            config: desc(MEDIA_OCI_CONFIG, &config_bytes),
            layers: vec![layer.clone()],
            annotations: Default::default(),
        };
        let manifest_bytes = serde_json::to_vec(&m).unwrap();

        // A corrupted download is refused and leaves nothing in the store.
        let ingest = Ingest::begin(store.clone()).unwrap();
        let mut w = ingest.blob_writer(&layer, None).unwrap();
        let mut bad = tar.clone();
        bad[0] ^= 1;
        w.write_all(&bad).unwrap();
        assert!(matches!(w.commit(), Err(ImageError::DigestMismatch { .. })));
        assert!(!ingest.has_blob(&layer.digest));
        // Too long is refused as it is written.
        let mut w = ingest.blob_writer(&layer, None).unwrap();
        assert!(w.write_all(&[tar.clone(), vec![0]].concat()).is_err());

        // Resumed after a restart, the blob goes in; the layer follows; no image yet.
        let mut w = ingest.blob_writer(&layer, None).unwrap();
        w.write_all(&tar[..100]).unwrap();
        w.restart().unwrap();
        w.write_all(&tar).unwrap();
        w.commit().unwrap();
        assert!(ingest.has_blob(&layer.digest));
        ingest.unpack_layer(&layer, &Digest::of(&tar), &()).unwrap();
        assert!(ingest.has_layer(&Digest::of(&tar)));
        drop(ingest);
        assert!(store.list().unwrap().is_empty());

        // The next attempt commits with what was kept.
        let ingest = Ingest::begin(store.clone()).unwrap();
        assert!(ingest.has_blob(&layer.digest) && ingest.has_layer(&Digest::of(&tar)));
        let name = Reference::parse("127.0.0.1:5000/hello:1").unwrap();
        let by_digest = Reference::parse(&format!("127.0.0.1:5000/hello@{}", Digest::of(&manifest_bytes))).unwrap();
        let loaded = ingest
            .commit(
                IngestedImage {
                    manifest: desc(MEDIA_OCI_MANIFEST, &manifest_bytes),
                    manifest_bytes: manifest_bytes.clone(),
                    config_bytes,
                    names: vec![name.clone(), by_digest.clone()],
                },
                &(),
            )
            .unwrap();
        let image = store.resolve(&by_digest.to_string()).unwrap();
        assert_eq!(image.id(), &loaded.id);
        assert_eq!(image.names, vec![name]);
        assert_eq!(image.digests, vec![by_digest]);
        assert_eq!(store.read_blob(&Digest::of(&manifest_bytes)).unwrap(), manifest_bytes);
        // Untagging the last tag deletes the image and its digest reference.
        let removed = store.remove("127.0.0.1:5000/hello:1", false).unwrap();
        assert_eq!(removed.deleted, vec![loaded.id]);
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn foreign_layers_and_oversized_blobs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ImageStore::open(dir.path()).unwrap());
        let ingest = Ingest::begin(store).unwrap();
        let mut big = desc(MEDIA_OCI_MANIFEST, b"{}");
        big.size = MAX_MANIFEST_BYTES + 1;
        let e = ingest.blob_writer(&big, Some(MAX_MANIFEST_BYTES)).err().unwrap();
        assert!(e.to_string().contains("more than the"), "{e}");
        let foreign = desc("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", b"x");
        let e = check_layer_media_type(&foreign).unwrap_err();
        assert!(e.to_string().contains("foreign layers are not fetched"), "{e}");
    }
}
