//! engine-image: images and snapshots.
//!
//! Owns the content store (blobs verified by sha256 on write and again on read), the image
//! index with Docker-normalised names, `docker save` and OCI image-layout archives (read and
//! write), `import` of a rootfs tarball, safe unpacking of untrusted layers into
//! content-addressed directories shared by every image that has them, overlayfs snapshots per
//! container, and the translation of an image configuration into an OCI runtime spec.
//!
//! It must never write outside its root directory on behalf of an archive, never trust a
//! digest it has not computed, and never leave a half-loaded image behind: every load is staged
//! and checked before the store changes. It knows nothing of containers beyond snapshot keys,
//! and nothing of the daemon or its API.

pub mod archive;
pub mod changes;
pub mod compression;
pub mod copy;
pub mod digest;
pub mod dockerfile;
pub mod ingest;
pub mod manifest;
pub mod progress;
pub mod reference;
pub mod snapshot;
pub mod spec;
pub mod store;
pub mod tarstream;
pub mod unpack;

pub use digest::Digest;
pub use ingest::{BlobWriter, Ingest, IngestedImage};
pub use progress::{Progress, ProgressEvent};
pub use reference::Reference;
pub use snapshot::{Snapshot, SnapshotError, StorageDriver};
pub use spec::{ContainerSpec, RunOptions};
pub use store::{GcStats, Image, ImageError, ImageStore, ImportOptions, LoadedImage, Removed};
