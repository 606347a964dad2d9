//! The hub on many machines: stub replicas behind one address, each agent connected to K of
//! them, replicas forwarding requests to each other over peer links (`docs/design.md`, "The
//! hub on many machines"). What is here knows nothing of the stub's request path:
//!
//! - [`members`]: who the replicas are (`--members static:...|kubernetes:NAMESPACE`), pure.
//! - [`leases`]: membership from Kubernetes Leases, one per replica, renewed while it runs.
//! - [`manifest`]: `tether hub`, the hub's own Kubernetes manifest.
//! - [`client`]: a client of the hub's own API server (Leases; the console's reviews).

pub mod client;
pub mod leases;
pub mod manifest;
pub mod members;
