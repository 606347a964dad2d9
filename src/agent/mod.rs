//! The agent: the cluster side of the tunnel. It dials out to the stub, keeps the connection,
//! and forwards the stub's request streams to its API server.
//!
//! - [`backoff`]: reconnect delays.
//! - [`identity`]: certificate, key and CA from files, watched for rotation.
//! - [`metrics`]: what `/metrics` on the admin listener shows.
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
pub mod metrics;
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
use crate::transport::h2link::H2Link;
use crate::transport::{Link, Transport};
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
    pub transport: TransportMode,
    /// In `auto` mode on TCP, how often QUIC is tried again (a working QUIC takes over).
    pub quic_retry: Duration,
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

/// Which transports the agent may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportMode {
    /// QUIC; after repeated failures TLS over TCP, and back to QUIC as soon as it works again.
    Auto,
    Quic,
    Tcp,
}

/// In `auto` mode, QUIC dials that fail in a row before the next dial is over TCP.
const QUIC_FAILURES_BEFORE_TCP: u32 = 2;
/// A TCP dial (connect and handshakes) that takes longer has failed.
const TCP_DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Dials the stub and gets a session welcomed.
struct Dialer<'a> {
    endpoint: &'a quinn::Endpoint,
    config: &'a AgentConfig,
    server_name: String,
}

impl Dialer<'_> {
    async fn connect(&self, identity: &Identity, transport: Transport) -> Result<Session, String> {
        let stub = &self.config.stub;
        let addr = tokio::net::lookup_host(stub)
            .await
            .map_err(|e| format!("cannot resolve {stub}: {e}"))?
            .next()
            .ok_or_else(|| format!("{stub} resolves to no address"))?;
        let link = match transport {
            Transport::Quic => {
                let connecting = self
                    .endpoint
                    .connect_with(identity.client_config.clone(), addr, &self.server_name)
                    .map_err(|e| format!("cannot dial {addr}: {e}"))?;
                Link::Quic(connecting.await.map_err(|e| session::explain(&e))?)
            }
            Transport::Tcp => tokio::time::timeout(TCP_DIAL_TIMEOUT, self.dial_tcp(identity, addr))
                .await
                .map_err(|_| format!("no answer over TCP from {addr} within {TCP_DIAL_TIMEOUT:?}"))??,
        };
        session::establish(link, &self.config.cluster, &self.config.name).await
    }

    /// TCP, TLS 1.3 with the agent's certificate, then HTTP/2 (the agent as its server).
    async fn dial_tcp(&self, identity: &Identity, addr: std::net::SocketAddr) -> Result<Link, String> {
        let tcp =
            tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("cannot dial {addr} over TCP: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(self.server_name.clone())
            .map_err(|e| format!("--server-name {:?}: {e}", self.server_name))?;
        let tls = tokio_rustls::TlsConnector::from(identity.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| session::explain_tcp(&e))?;
        if tls.get_ref().1.alpn_protocol() != Some(crate::wire::ALPN) {
            return Err("the stub does not speak tether/1 over TCP".into());
        }
        let tuning = &self.config.tuning;
        let link = H2Link::agent_side(tls, addr, tuning.idle_timeout, tuning.max_request_streams)
            .await
            .map_err(|e| session::explain_tcp(&e))?;
        Ok(Link::Tcp(link))
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
    tracing::info!(cluster = %config.cluster, name = %config.name, stub = %config.stub, upstream = upstream.url(), fingerprint = %identity.fingerprint, transport = ?config.transport, "agent starting");
    let agent_metrics = Arc::new(metrics::AgentMetrics::default());
    let forwarder =
        Arc::new(Forwarder { upstream, tokens, cluster: config.cluster.clone(), metrics: agent_metrics.clone() });
    let readiness = Readiness::default();
    if let Some(addr) = config.admin_listen {
        let (scraped, ready) = (agent_metrics.clone(), readiness.clone());
        let render: crate::admin::Metrics = Arc::new(move || scraped.render(ready.get()));
        let bound = crate::admin::serve(addr, readiness.clone(), "not connected to the stub\n", render)
            .await
            .with_context(|| format!("binding the admin listener on {addr}"))?;
        tracing::info!(admin = %bound, "admin listening (/healthz, /readyz, /metrics)");
    }
    let (identity_tx, mut new_identities) = mpsc::channel(4);
    tokio::spawn(identity::watch(files, config.tuning.clone(), identity.clone(), identity_tx, cancel.clone()));

    let server_name = config.server_name.clone().unwrap_or_else(|| host_of(&config.stub).to_owned());
    let dialer = Dialer { endpoint: &endpoint, config: &config, server_name };
    // Connections a new certificate (or a working QUIC) replaced, draining.
    let retiring = TaskTracker::new();
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    let mut transport = if config.transport == TransportMode::Tcp { Transport::Tcp } else { Transport::Quic };
    let mut quic_failures = 0;
    'connect: while !cancel.is_cancelled() {
        let session = tokio::select! {
            connected = dialer.connect(&identity, transport) => connected,
            _ = cancel.cancelled() => break,
        };
        let session = match session {
            Ok(session) => session,
            Err(reason) => {
                let delay = backoff.next_delay();
                tracing::warn!(retry_in = ?delay, fingerprint = %identity.fingerprint, %transport, "cannot connect to stub: {reason}");
                if config.transport == TransportMode::Auto {
                    // QUIC a few times, then TCP once, and so on while nothing works.
                    if transport == Transport::Quic {
                        quic_failures += 1;
                        if quic_failures >= QUIC_FAILURES_BEFORE_TCP {
                            tracing::info!("QUIC failed {quic_failures} times in a row; trying the TCP fallback");
                            transport = Transport::Tcp;
                        }
                    } else {
                        transport = Transport::Quic;
                        quic_failures = 0;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    // New certificate files: try them at once.
                    Some(new) = new_identities.recv() => identity = new,
                    _ = cancel.cancelled() => break,
                }
                continue;
            }
        };
        quic_failures = 0;
        let started = Instant::now();
        let mut current = session.transport();
        // Ready before the log line says so: whoever reads the line may probe at once.
        readiness.set(true);
        agent_metrics.set_link(Some(session.link().clone()));
        agent_metrics.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(connection = session.connection_id, stub = %config.stub, fingerprint = %identity.fingerprint, transport = %current, "connected to stub");
        let mut stop = CancellationToken::new();
        let mut serving = tokio::spawn(session::serve(session, forwarder.clone(), stop.clone(), config.grace));
        // New certificate files the stub has not accepted yet, and when to try them again.
        let mut pending: Option<Identity> = None;
        let mut retry_at = tokio::time::Instant::now();
        let mut probe_at = tokio::time::Instant::now() + config.quic_retry;
        let reason = loop {
            let probing = config.transport == TransportMode::Auto && current == Transport::Tcp && pending.is_none();
            let mut probe = false;
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
                _ = tokio::time::sleep_until(probe_at), if probing => probe = true,
            }
            // Make before break: a new certificate, or QUIC again after the TCP fallback.
            let (candidate, candidate_transport) = match pending.take() {
                Some(new) => (new, current),
                None if probe => (identity.clone(), Transport::Quic),
                None => continue,
            };
            let handover = tokio::select! {
                connected = dialer.connect(&candidate, candidate_transport) => connected,
                _ = cancel.cancelled() => continue,
            };
            match handover {
                Ok(next) => {
                    if probe {
                        tracing::info!(
                            connection = next.connection_id,
                            "QUIC works again: moving off the TCP fallback; draining the TCP connection"
                        );
                    } else {
                        tracing::info!(connection = next.connection_id, from = %identity.fingerprint, to = %candidate.fingerprint, "certificate rotated: new connection welcomed; draining the old one");
                    }
                    tracing::info!(connection = next.connection_id, stub = %config.stub, fingerprint = %candidate.fingerprint, transport = %candidate_transport, "connected to stub");
                    agent_metrics.set_link(Some(next.link().clone()));
                    agent_metrics.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    stop.cancel();
                    stop = CancellationToken::new();
                    let next_serving =
                        tokio::spawn(session::serve(next, forwarder.clone(), stop.clone(), config.grace));
                    retiring.spawn(std::mem::replace(&mut serving, next_serving));
                    identity = candidate;
                    current = candidate_transport;
                }
                Err(reason) if probe => {
                    tracing::debug!(retry_in = ?config.quic_retry, "QUIC still does not work: {reason}");
                    probe_at = tokio::time::Instant::now() + config.quic_retry;
                }
                Err(reason) => {
                    tracing::warn!(fingerprint = %candidate.fingerprint, retry_in = ?HANDOVER_RETRY, "the stub does not accept the new certificate: {reason}; the connection with {} stays", identity.fingerprint);
                    pending = Some(candidate);
                    retry_at = tokio::time::Instant::now() + HANDOVER_RETRY;
                }
            }
        };
        readiness.set(false);
        agent_metrics.set_link(None);
        // The files on disk win for the next connection, accepted before or not.
        if let Some(new) = pending {
            identity = new;
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff.reset();
        }
        if config.transport == TransportMode::Auto {
            // A lost connection starts over with QUIC.
            transport = Transport::Quic;
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
