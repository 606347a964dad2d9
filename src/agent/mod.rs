//! The agent: the cluster side of the tunnel. It dials out to the stub, keeps the connection,
//! and forwards the stub's request streams to its API server.
//!
//! - [`dial_loop`]: one loop per connection slot: dial, serve, redial with backoff; new
//!   certificates and the return to QUIC take over make before break.
//! - [`replicas`]: which stub replicas the slots hold (K distinct ones), pure.
//! - [`transport_choice`]: QUIC or the TCP fallback, and when to try QUIC again (pure).
//! - [`handover`]: new certificate files waiting to take over (pure).
//! - [`certificate`]: certificate, key and CA from files, watched for rotation.
//! - [`session`]: one connection (hello/welcome, serving streams, draining).
//! - [`forward`]: one request stream to the API server and back.
//! - [`upstream`]: the API server client (URL, kubeconfig or in-cluster, through the `kube` crate).
//! - [`token_file`]: the pod's service-account token, re-read when the kubelet rotates it.
//! - [`metrics`]: what `/metrics` on the admin listener shows.

pub mod certificate;
pub mod dial_loop;
pub mod forward;
pub mod handover;
pub mod impersonation;
pub mod metrics;
pub mod replicas;
pub mod session;
pub mod token_file;
pub mod transport_choice;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Readiness};
use crate::backoff::Backoff;
use crate::identity::token::TokenVerifier;
use crate::transport::dial::Dialer;
use crate::transport::quic::{self, Tuning};
use crate::wire::codes::AppCode;
use certificate::CertificateFiles;
use dial_loop::{DialLoop, Slots};
use forward::Forwarder;
use transport_choice::TransportChoice;
pub use transport_choice::TransportMode;
use upstream::{Upstream, UpstreamSource};

/// What `tether agent` needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub cluster: String,
    pub name: String,
    /// `HOST:PORT` of the stub's agent listener (UDP and TCP); resolved again on every dial.
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
    /// Connections to keep, each to a distinct stub replica (at most the hub's member count).
    pub connections: usize,
    /// The HTTP proxy the TCP fallback goes through (`--proxy`, `HTTPS_PROXY`), if any.
    pub proxy: Option<crate::transport::proxy::Proxy>,
}

/// Runs the agent until `shutdown` completes: loads its certificate, upstream and issuer key,
/// starts the admin listener and the certificate watch, then runs one [`DialLoop`] per
/// connection slot.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let files = CertificateFiles { ca: config.ca.clone(), cert: config.cert.clone(), key: config.key.clone() };
    let certificate = files.load(&config.tuning)?;
    let upstream = Upstream::new(&config.upstream).await?;
    let tokens = TokenVerifier::load(&config.issuer_pub)?;
    let server_name = config.server_name.clone().unwrap_or_else(|| crate::transport::host_of(&config.stub).to_owned());
    let slots = config.connections.max(1);
    if let Some(proxy) = &config.proxy {
        tracing::info!(
            %proxy,
            transport = ?config.transport,
            "TCP dials go through the HTTP proxy (CONNECT); QUIC cannot, so --transport auto starts on TCP"
        );
    }
    let dialers = (0..slots)
        .map(|_| {
            Dialer::new(&config.stub, &server_name, &config.tuning)
                .map(|d| Arc::new(d.with_proxy(config.proxy.clone())))
        })
        .collect::<std::io::Result<Vec<_>>>()
        .context("binding the agent's UDP sockets")?;
    tokio::spawn(rebind_on_sigusr1(dialers.clone()));

    let cancel = CancellationToken::new();
    let on_shutdown = cancel.clone();
    tokio::spawn(async move {
        shutdown.await;
        on_shutdown.cancel();
    });
    tracing::info!(cluster = %config.cluster, name = %config.name, stub = %config.stub, upstream = upstream.url(), fingerprint = %certificate.fingerprint, transport = ?config.transport, "agent starting");
    let agent_metrics = Arc::new(metrics::AgentMetrics::default());
    let forwarder =
        Arc::new(Forwarder { upstream, tokens, cluster: config.cluster.clone(), metrics: agent_metrics.clone() });
    let readiness = Readiness::default();
    // The admin listener outlives the drain (probes during it say "not ready"), and stops last.
    let admin_stop = CancellationToken::new();
    if let Some(listener) = admin::bind(config.admin_listen).await? {
        tracing::info!(admin = %listener.local_addr()?, "admin listening (/healthz, /readyz, /metrics)");
        let (scraped, ready) = (agent_metrics.clone(), readiness.clone());
        let site = admin::Site {
            readiness: readiness.clone(),
            not_ready: "not connected to the stub\n",
            ready_detail: None,
            clusters: None,
            metrics: Arc::new(move || scraped.render(ready.get())),
        };
        tokio::spawn(admin::serve(listener, site, admin_stop.clone()));
    }
    let (certificate_tx, mut new_certificates) = mpsc::channel(4);
    tokio::spawn(certificate::watch(files, config.tuning.clone(), certificate.clone(), certificate_tx, cancel.clone()));
    // Every slot hears of new certificate files.
    let (to_slots, from_watch): (Vec<_>, Vec<_>) = (0..slots).map(|_| mpsc::channel(4)).unzip();
    tokio::spawn(async move {
        while let Some(new) = new_certificates.recv().await {
            for slot in &to_slots {
                let _ = slot.send(new.clone()).await;
            }
        }
    });

    let shared = Slots::new(
        slots,
        config.cluster.clone(),
        config.name.clone(),
        forwarder,
        readiness,
        agent_metrics,
        config.grace,
        // Two keep-alive intervals (a third of the idle timeout each) and a margin: see
        // `liveness::silent_for`.
        config.tuning.idle_timeout * 2 / 3 + Duration::from_millis(500),
        cancel,
    );
    let loops: Vec<_> = dialers
        .iter()
        .zip(from_watch)
        .enumerate()
        .map(|(slot, (dialer, new_certificates))| {
            let dial_loop = DialLoop {
                slot,
                slots: shared.clone(),
                dialer: dialer.clone(),
                new_certificates,
                backoff: Backoff::new(config.backoff_min, config.backoff_max),
                choice: TransportChoice::new(config.transport, config.quic_retry, config.proxy.is_some()),
            };
            tokio::spawn(dial_loop.run(certificate.clone()))
        })
        .collect();
    for dial_loop in loops {
        let _ = dial_loop.await;
    }
    shared.readiness.set(false);
    for dialer in &dialers {
        let endpoint = dialer.endpoint();
        endpoint.close(AppCode::Normal.varint(), b"agent stopped");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    }
    admin_stop.cancel();
    tracing::info!("agent stopped");
    Ok(())
}

/// `SIGUSR1` moves the agent to new UDP sockets (new local ports), as a network change would.
/// QUIC connection migration keeps the connections and every stream on them; this is how that is
/// exercised on purpose (and a way to shake off a NAT binding that went bad).
async fn rebind_on_sigusr1(dialers: Vec<Arc<Dialer>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else { return };
    while usr1.recv().await.is_some() {
        for dialer in &dialers {
            let endpoint = dialer.endpoint();
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
}
