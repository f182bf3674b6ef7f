//! engine-registry: the client side of the OCI Distribution Specification.
//!
//! Owns reaching a registry (Docker Hub mirrors, insecure registries with loopback always among
//! them, a `certs.d` directory per registry), authentication (anonymous, Basic, Bearer tokens
//! fetched from the challenge's realm and reused per scope), resolving a tag or digest to one
//! image manifest for a platform, streaming blobs into a verifying sink with `Range` resume and
//! backoff, and pushing blobs (in one request, or in chunks that resume where the registry stopped)
//! and manifests.
//!
//! It must never store anything itself (blobs go through `engine_image::Ingest`, which verifies
//! them), never put a password or token in an error, a log line or a span, and never contact a
//! host other than the registry (and its token realm) the caller named.

pub mod auth;
pub mod client;

pub use auth::{AuthConfig, RegistryConfigs};
pub use client::{Client, RegistryConfig, RegistryError, Repository, Resolved};
