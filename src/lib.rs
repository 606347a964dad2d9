//! tether: a QUIC reverse tunnel that lets a hub reach the Kubernetes API servers of clusters it
//! cannot dial.
//!
//! An **agent** in each cluster dials out to the hub's **stub** over QUIC with mutual TLS. The
//! stub takes ordinary Kubernetes API requests on its HTTPS front door and hands each one to its
//! own QUIC stream on a connection of the right cluster's agent, which forwards it to its API
//! server. See `DESIGN.md` in the shared notes for the whole picture.
//!
//! Where things live:
//! - [`wire`]: the protocol between agent and stub (frames, stream I/O, error codes).
//! - [`identity`]: CA and certificates, fingerprints, the whitelist, TLS configurations.
//! - [`quic`]: QUIC endpoints and transport tuning.
//! - [`transport`]: a link over QUIC or the TCP fallback (TLS + HTTP/2), and its streams.
//! - [`kubeconfig`]: the kubeconfig a user gets to reach a cluster through the stub.
//! - [`bridge`]: HTTP messages to and from QUIC streams (headers, streaming bodies).
//! - [`stub`]: the hub side (agent listener, registry, HTTPS front door, forwarding).
//! - [`agent`]: the cluster side (dial loop, session, forwarding to the API server).
//! - [`status`]: errors as Kubernetes `Status` JSON.
//! - [`admin`]: `/healthz`, `/readyz` and `/metrics` on the admin listener.
//! - [`metrics`]: the Prometheus text format.
//! - [`register`]: the manifest that installs an agent in a cluster.
//! - [`shutdown`]: SIGINT and SIGTERM as one future.
//! - [`fd_limit`]: the open-file limit raised for thousands of connections.
//! - [`bench`]: the load harness (`tether bench`).
//! - [`config`]: flags from a TOML file (`--config`).
//! - [`link`]: an emulated bad link (loss, delay, jitter, rate) for tests and benchmarks.

pub mod admin;
pub mod agent;
pub mod bench;
pub mod bridge;
pub mod config;
pub mod fd_limit;
pub mod identity;
pub mod kubeconfig;
pub mod link;
pub mod metrics;
pub mod quic;
pub mod register;
pub mod shutdown;
pub mod status;
pub mod stub;
pub mod transport;
pub mod wire;

/// This build, for hello/welcome and logs.
pub const BUILD: &str = concat!("tether ", env!("CARGO_PKG_VERSION"));
