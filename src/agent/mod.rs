//! The agent: the cluster side of the tunnel. It dials out to the stub, keeps the connection,
//! and forwards the stub's request streams to its API server.
//!
//! - [`backoff`]: reconnect delays.
//! - [`identity`]: certificate, key and CA from files, watched for rotation.
//! - [`session`]: one connection (hello/welcome, serving streams, draining).
//! - [`forward`]: one request stream to the API server and back.
//! - [`upstream`]: the API server client (URL, kubeconfig or in-cluster, through the `kube` crate).
//! - [`token_file`]: the pod's service-account token, re-read when the kubelet rotates it.
//!
//! A rotated certificate takes over without a gap: the agent dials a second connection with the
//! new certificate, and only once the stub has welcomed it drains the old one (make before
//! break). If the stub refuses the new certificate, the old connection stays and the handover is
//! tried again every few seconds.

pub mod backoff;
pub mod forward;
pub mod identity;
pub mod session;
pub mod token_file;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Readiness;
use crate::identity::token::TokenVerifier;
use crate::quic::{self, Tuning};
use backoff::Backoff;
use forward::Forwarder;
use identity::{Identity, IdentityFiles};
use session::{Session, SessionEnd};
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
    /// How long in-flight requests may run on after a shutdown signal (or on a connection that
    /// a new certificate replaces).
    pub grace: Duration,
    /// Where to serve `/healthz` and `/readyz` (ready while connected and welcomed).
    pub admin_listen: Option<SocketAddr>,
}

/// A connection that lasted this long was healthy: the next failure starts backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// How often a new certificate the stub refused is tried again while the old one still works.
const HANDOVER_RETRY: Duration = Duration::from_secs(5);

fn host_of(stub: &str) -> &str {
    // "[::1]:443" -> "::1", "stub.example:443" -> "stub.example"
    let host = stub.rsplit_once(':').map_or(stub, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Dials the stub and gets a session welcomed.
struct Dialer<'a> {
    endpoint: &'a quinn::Endpoint,
    config: &'a AgentConfig,
    server_name: String,
}

impl Dialer<'_> {
    async fn connect(&self, identity: &Identity) -> Result<Session, String> {
        let stub = &self.config.stub;
        let addr = tokio::net::lookup_host(stub)
            .await
            .map_err(|e| format!("cannot resolve {stub}: {e}"))?
            .next()
            .ok_or_else(|| format!("{stub} resolves to no address"))?;
        let connecting = self
            .endpoint
            .connect_with(identity.client_config.clone(), addr, &self.server_name)
            .map_err(|e| format!("cannot dial {addr}: {e}"))?;
        let conn = connecting.await.map_err(|e| session::explain(&e))?;
        session::establish(conn, &self.config.cluster, &self.config.name).await
    }
}

/// Runs the agent until `shutdown` completes: dial, serve, and on loss dial again with backoff.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let files = IdentityFiles { ca: config.ca.clone(), cert: config.cert.clone(), key: config.key.clone() };
    let mut identity = files.load(&config.tuning)?;
    let upstream = Upstream::new(&config.upstream).await?;
    let tokens = TokenVerifier::load(&config.issuer_pub)?;
    let endpoint = match quic::client_endpoint("[::]:0".parse().expect("valid address")) {
        Ok(endpoint) => endpoint,
        // A host without IPv6: fall back to IPv4 only.
        Err(_) => quic::client_endpoint("0.0.0.0:0".parse().expect("valid address"))
            .context("binding the agent's UDP socket")?,
    };
    tokio::spawn(rebind_on_sigusr1(endpoint.clone()));

    let cancel = CancellationToken::new();
    let on_shutdown = cancel.clone();
    tokio::spawn(async move {
        shutdown.await;
        on_shutdown.cancel();
    });
    tracing::info!(cluster = %config.cluster, name = %config.name, stub = %config.stub, upstream = upstream.url(), fingerprint = %identity.fingerprint, "agent starting");
    let forwarder = Arc::new(Forwarder { upstream, tokens, cluster: config.cluster.clone() });
    let readiness = Readiness::default();
    if let Some(addr) = config.admin_listen {
        let bound = crate::admin::serve(addr, readiness.clone())
            .await
            .with_context(|| format!("binding the admin listener on {addr}"))?;
        tracing::info!(admin = %bound, "admin listening (/healthz, /readyz)");
    }
    let (identity_tx, mut new_identities) = mpsc::channel(4);
    tokio::spawn(identity::watch(files, config.tuning.clone(), identity.clone(), identity_tx, cancel.clone()));

    let server_name = config.server_name.clone().unwrap_or_else(|| host_of(&config.stub).to_owned());
    let dialer = Dialer { endpoint: &endpoint, config: &config, server_name };
    // Connections a new certificate replaced, draining.
    let retiring = TaskTracker::new();
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    'connect: while !cancel.is_cancelled() {
        let session = tokio::select! {
            connected = dialer.connect(&identity) => connected,
            _ = cancel.cancelled() => break,
        };
        let session = match session {
            Ok(session) => session,
            Err(reason) => {
                let delay = backoff.next_delay();
                tracing::warn!(retry_in = ?delay, fingerprint = %identity.fingerprint, "cannot connect to stub: {reason}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    // New certificate files: try them at once.
                    Some(new) = new_identities.recv() => identity = new,
                    _ = cancel.cancelled() => break,
                }
                continue;
            }
        };
        let started = Instant::now();
        tracing::info!(connection = session.connection_id, stub = %config.stub, fingerprint = %identity.fingerprint, "connected to stub");
        readiness.set(true);
        let mut stop = CancellationToken::new();
        let mut serving = tokio::spawn(session::serve(session, forwarder.clone(), stop.clone(), config.grace));
        // New certificate files the stub has not accepted yet, and when to try them again.
        let mut pending: Option<Identity> = None;
        let mut retry_at = tokio::time::Instant::now();
        let reason = loop {
            tokio::select! {
                end = &mut serving => break match end {
                    Ok(SessionEnd::Lost { reason }) => reason,
                    Ok(SessionEnd::Stopped) => "the session stopped".to_owned(),
                    Err(e) => format!("the session failed: {e}"),
                },
                _ = cancel.cancelled() => {
                    stop.cancel();
                    let _ = serving.await;
                    break 'connect;
                }
                Some(new) = new_identities.recv() => pending = Some(new),
                _ = tokio::time::sleep_until(retry_at), if pending.is_some() => {}
            }
            let Some(new) = pending.take() else { continue };
            let handover = tokio::select! {
                connected = dialer.connect(&new) => connected,
                _ = cancel.cancelled() => continue,
            };
            match handover {
                Ok(next) => {
                    tracing::info!(connection = next.connection_id, from = %identity.fingerprint, to = %new.fingerprint, "certificate rotated: new connection welcomed; draining the old one");
                    tracing::info!(connection = next.connection_id, stub = %config.stub, fingerprint = %new.fingerprint, "connected to stub");
                    stop.cancel();
                    stop = CancellationToken::new();
                    let next_serving =
                        tokio::spawn(session::serve(next, forwarder.clone(), stop.clone(), config.grace));
                    retiring.spawn(std::mem::replace(&mut serving, next_serving));
                    identity = new;
                }
                Err(reason) => {
                    tracing::warn!(fingerprint = %new.fingerprint, retry_in = ?HANDOVER_RETRY, "the stub does not accept the new certificate: {reason}; the connection with {} stays", identity.fingerprint);
                    pending = Some(new);
                    retry_at = tokio::time::Instant::now() + HANDOVER_RETRY;
                }
            }
        };
        readiness.set(false);
        // The files on disk win for the next connection, accepted before or not.
        if let Some(new) = pending {
            identity = new;
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::warn!(retry_in = ?delay, "disconnected from stub: {reason}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => break,
        }
    }
    readiness.set(false);
    retiring.close();
    let _ = tokio::time::timeout(config.grace, retiring.wait()).await;
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

#[cfg(test)]
mod tests {
    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(super::host_of("localhost:7443"), "localhost");
        assert_eq!(super::host_of("[::1]:7443"), "::1");
        assert_eq!(super::host_of("127.0.0.1:1"), "127.0.0.1");
    }
}
