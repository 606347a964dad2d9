//! tether: a QUIC reverse tunnel that lets a hub reach the Kubernetes API servers of clusters it
//! cannot dial.
//!
//! An **agent** in each cluster dials out to the hub's **stub** over QUIC with mutual TLS. The
//! stub takes ordinary Kubernetes API requests on its HTTPS front door and hands each one to its
//! own QUIC stream on a connection of the right cluster's agent, which forwards it to its API
//! server. `docs/design.md` in the repository has the whole picture.
//!
//! Where things live, from the ground up: a module uses only those above it in this list, and
//! the agent never uses the stub (`tests/layering.rs` holds the code to this).
//! - [`shutdown`]: SIGINT and SIGTERM as one future.
//! - [`fd_limit`]: the open-file limit raised for thousands of connections.
//! - [`allocator`]: glibc's allocator set for streaming (freed buffers kept, not unmapped).
//! - [`backoff`]: reconnect delays, capped exponential with jitter (pure).
//! - [`wire`]: the protocol between agent and stub (frames, stream I/O, error codes).
//! - [`identity`]: CA and certificates, fingerprints, the whitelist, TLS configurations, tokens
//!   and the one authorization decision.
//! - [`errors`]: an error and its sources as one line.
//! - [`logging`]: log lines on stderr, as text or as one JSON object per line.
//! - [`accept`]: the one accept loop of every TCP listener.
//! - [`transport`]: a connection over QUIC or the TCP fallback, its streams, dialing and
//!   listening, and plain words for refusals.
//! - [`liveness`]: dead peers noticed from the traffic while requests wait on them.
//! - [`metrics`]: the Prometheus text format.
//! - [`bridge`]: HTTP messages to and from tunnel streams (headers, streaming bodies, pipes).
//! - [`status`]: errors as Kubernetes `Status` JSON.
//! - [`admin`]: `/healthz`, `/readyz` and `/metrics` on the admin listener.
//! - [`audit_target`]: where an audit log goes (`--audit-log`).
//! - [`hub`]: the hub on many machines: members, Kubernetes Leases, the hub's manifest.
//! - [`stub`]: the hub side (agent listener, registry, front door, admission, forwarding).
//! - [`agent`]: the cluster side (dial loop, session, forwarding to the API server).
//! - [`console`]: short-lived tokens for users and services, the hub's RBAC deciding.
//! - [`kubeconfig`]: the kubeconfig a user gets to reach a cluster through the stub.
//! - [`register`]: the manifest that installs an agent in a cluster.
//! - [`bench`]: the load harness (`tether bench`).
//! - [`link`]: an emulated bad link (loss, delay, jitter, rate) for tests and benchmarks.
//! - [`config`]: flags from a TOML file (`--config`).
//! - [`cli`]: the command line, one module per command.

pub mod accept;
pub mod admin;
pub mod agent;
pub mod allocator;
pub mod audit_target;
pub mod backoff;
pub mod bench;
pub mod bridge;
pub mod cli;
pub mod config;
pub mod console;
pub mod errors;
pub mod fd_limit;
pub mod hub;
pub mod identity;
pub mod kubeconfig;
pub mod link;
pub mod liveness;
pub mod logging;
pub mod metrics;
pub mod register;
pub mod shutdown;
pub mod status;
pub mod stub;
pub mod transport;
pub mod wire;

/// This build, for hello/welcome and logs.
pub const BUILD: &str = concat!("tether ", env!("CARGO_PKG_VERSION"));
