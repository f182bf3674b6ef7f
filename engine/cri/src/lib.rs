//! The Container Runtime Interface v1 (`runtime.v1`), the contract between the kubelet (or
//! crictl, critest) and a node's container runtime: the generated message types, the
//! `RuntimeService` and `ImageService` server traits engined implements and their clients.
//!
//! `proto/runtime/v1/api.proto` is Kubernetes' cri-api v0.36.3, unchanged (Apache-2.0).
//!
//! Owns: the wire contract only. It must never hold behaviour: the services live in engined
//! (engine-daemon's `cri` module), on the daemon's own stores.

/// Generated types of `runtime.v1`.
#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}
