//! The agent: the cluster side of the tunnel. It dials out to the stub, keeps the connection,
//! and forwards the stub's request streams to its API server.
//!
//! - [`backoff`]: reconnect delays.
//! - [`session`]: one connection (hello/welcome, serving streams, draining on shutdown).
//! - [`forward`]: one request stream to the API server and back.
//! - [`upstream`]: the API server client (URL or kubeconfig, through the `kube` crate).

pub mod backoff;
pub mod forward;
pub mod session;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::identity::files;
use crate::identity::tls;
use crate::identity::token::TokenVerifier;
use crate::quic::{self, Tuning};
use backoff::Backoff;
use forward::Forwarder;
use session::SessionEnd;
use std::sync::Arc;
use upstream::{Upstream, UpstreamSource};

/// What `tether agent` needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub cluster: String,
    pub name: String,
    /// `HOST:PORT` of the stub's QUIC listener; resolved again on every dial.
    pub stub: String,
    /// Name the stub's certificate must carry; defaults to the host part of `stub`.
    pub server_name: Option<String>,
    pub ca: PathBuf,
    /// The token issuer's public key: the agent verifies every caller again.
    pub issuer_pub: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub upstream: UpstreamSource,
    pub tuning: Tuning,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long in-flight requests may run on after a shutdown signal.
    pub grace: Duration,
    /// Where to serve `/healthz` and `/readyz` (ready while connected and welcomed).
    pub admin_listen: Option<SocketAddr>,
}

/// A connection that lasted this long was healthy: the next failure starts backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(10);

fn host_of(stub: &str) -> &str {
    // "[::1]:443" -> "::1", "stub.example:443" -> "stub.example"
    let host = stub.rsplit_once(':').map_or(stub, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Runs the agent until `shutdown` completes: dial, serve, and on loss dial again with backoff.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let ca = files::load_certs(&config.ca)?;
    let chain = files::load_certs(&config.cert)?;
    let key = files::load_key(&config.key)?;
    let tls_config = tls::agent_quic(&ca, chain, key)?;
    let upstream = Upstream::new(&config.upstream).await?;
    let tokens = TokenVerifier::load(&config.issuer_pub)?;
    let bind: SocketAddr = "[::]:0".parse().expect("valid address");
    let (endpoint, client_config) = match quic::client_endpoint(bind, tls_config.clone(), &config.tuning) {
        Ok(x) => x,
        // A host without IPv6: fall back to IPv4 only.
        Err(_) => quic::client_endpoint("0.0.0.0:0".parse().expect("valid address"), tls_config, &config.tuning)
            .context("binding the agent's UDP socket")?,
    };
    let server_name = config.server_name.clone().unwrap_or_else(|| host_of(&config.stub).to_owned());
    tokio::spawn(rebind_on_sigusr1(endpoint.clone()));

    let cancel = CancellationToken::new();
    let on_shutdown = cancel.clone();
    tokio::spawn(async move {
        shutdown.await;
        on_shutdown.cancel();
    });
    tracing::info!(cluster = %config.cluster, name = %config.name, stub = %config.stub, upstream = upstream.url(), "agent starting");
    let forwarder = Arc::new(Forwarder { upstream, tokens, cluster: config.cluster.clone() });
    let readiness = Readiness::default();
    if let Some(addr) = config.admin_listen {
        let bound = crate::admin::serve(addr, readiness.clone())
            .await
            .with_context(|| format!("binding the admin listener on {addr}"))?;
        tracing::info!(admin = %bound, "admin listening (/healthz, /readyz)");
    }
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    while !cancel.is_cancelled() {
        let started = Instant::now();
        let end = match dial(&endpoint, &client_config, &config.stub, &server_name).await {
            Ok(conn) => session::run(conn, &config, &forwarder, &cancel, &readiness).await,
            Err(reason) => SessionEnd::Lost { welcomed: false, reason },
        };
        let SessionEnd::Lost { welcomed, reason } = end else {
            break;
        };
        if welcomed && started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        if welcomed {
            tracing::warn!(retry_in = ?delay, "disconnected from stub: {reason}");
        } else {
            tracing::warn!(retry_in = ?delay, "cannot connect to stub: {reason}");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => break,
        }
    }
    endpoint.close(crate::wire::codes::AppCode::Normal.varint(), b"agent stopped");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    tracing::info!("agent stopped");
    Ok(())
}

/// `SIGUSR1` moves the agent to a new UDP socket (a new local port), as a network change would.
/// QUIC connection migration keeps the connection and every stream on it; this is how that is
/// exercised on purpose (and a way to shake off a NAT binding that went bad).
async fn rebind_on_sigusr1(endpoint: quinn::Endpoint) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else { return };
    while usr1.recv().await.is_some() {
        let old = endpoint.local_addr().ok();
        let bind = old.map_or_else(|| "0.0.0.0:0".parse().expect("valid address"), |a| SocketAddr::new(a.ip(), 0));
        match quic::bind_udp(bind).and_then(|socket| endpoint.rebind(socket)) {
            Ok(()) => {
                tracing::info!(from = ?old, to = ?endpoint.local_addr().ok(), "rebound UDP socket (connection migrates)")
            }
            Err(e) => tracing::warn!(error = %e, "cannot rebind the UDP socket"),
        }
    }
}

async fn dial(
    endpoint: &quinn::Endpoint,
    client_config: &quinn::ClientConfig,
    stub: &str,
    server_name: &str,
) -> Result<quinn::Connection, String> {
    let addr = tokio::net::lookup_host(stub)
        .await
        .map_err(|e| format!("cannot resolve {stub}: {e}"))?
        .next()
        .ok_or_else(|| format!("{stub} resolves to no address"))?;
    let connecting = endpoint
        .connect_with(client_config.clone(), addr, server_name)
        .map_err(|e| format!("cannot dial {addr}: {e}"))?;
    connecting.await.map_err(|e| session::explain(&e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(super::host_of("localhost:7443"), "localhost");
        assert_eq!(super::host_of("[::1]:7443"), "::1");
        assert_eq!(super::host_of("127.0.0.1:1"), "127.0.0.1");
    }
}
