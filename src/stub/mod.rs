//! The stub: the hub side of the tunnel.
//!
//! - [`agents`]: the QUIC listener; agents connect, say hello, and join the [`registry`].
//! - [`registry`]: live agent connections per cluster and the choice of one per request.
//! - [`front_door`]: the HTTPS listener for users and services (HTTP/1.1 and HTTP/2).
//! - [`forward`]: one request from the front door over its own QUIC stream and back.
//! - [`route`]: `/clusters/{cluster}/{path}` -> cluster and upstream path.
//! - [`audit`]: one JSON line per request.
//! - [`limits`]: requests in flight per user and per cluster (429 beyond).
//! - [`metrics`]: what `/metrics` on the admin listener shows.
//! - [`reload`]: the whitelist reloaded on change and on SIGHUP; revoked agents cut off.
//! - [`stalled`]: responses whose caller stopped reading are dropped, so they cannot stall an
//!   agent connection.

pub mod agents;
pub mod audit;
pub mod forward;
pub mod front_door;
pub mod limits;
pub mod metrics;
pub mod registry;
pub mod reload;
pub mod route;
pub mod stalled;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::identity::files::{self, CertDir};
use crate::identity::tls;
use crate::identity::token::TokenVerifier;
use crate::identity::whitelist::{Whitelist, WhitelistHandle};
use crate::quic::{self, Tuning};
use crate::wire::codes::AppCode;
use audit::{AuditLog, AuditTarget};

/// What `tether stub` needs.
#[derive(Debug, Clone)]
pub struct StubConfig {
    pub certs: CertDir,
    pub quic_listen: SocketAddr,
    pub https_listen: SocketAddr,
    pub tuning: Tuning,
    /// How long open front-door requests may take to finish on shutdown.
    pub grace: Duration,
    /// The token issuer's public key (the stub never holds the private one).
    pub issuer_pub: PathBuf,
    pub audit: AuditTarget,
    /// Reload the whitelist when its file changes (besides on SIGHUP).
    pub watch_whitelist: bool,
    pub limits: limits::Limits,
    /// A response left unread this long is dropped (`None`: never).
    pub stalled_reader_timeout: Option<Duration>,
    /// Where to serve `/healthz`, `/readyz` and `/metrics`.
    pub admin_listen: Option<SocketAddr>,
    /// A front-door client has this long to send a request's headers (HTTP/1.1; slow-loris).
    pub header_timeout: Duration,
}

/// State shared by the QUIC side and the front door.
#[derive(Debug)]
pub struct StubState {
    pub registry: registry::Registry,
    pub whitelist: WhitelistHandle,
    pub tokens: TokenVerifier,
    pub audit: AuditLog,
    pub limits: Arc<limits::Counters>,
    pub stalled_reader_timeout: Option<Duration>,
    pub metrics: Arc<metrics::StubMetrics>,
}

/// A stub whose sockets are bound (so its addresses are known) but not yet serving.
pub struct Stub {
    endpoint: quinn::Endpoint,
    /// The TCP fallback for agents, on the QUIC listener's address and port.
    agent_tcp: TcpListener,
    agent_tls: Arc<rustls::ServerConfig>,
    idle_timeout: Duration,
    listener: TcpListener,
    front_tls: Arc<rustls::ServerConfig>,
    state: Arc<StubState>,
    grace: Duration,
    header_timeout: Duration,
    whitelist_path: PathBuf,
    watch_whitelist: bool,
}

/// Binds the agents' port for both transports, UDP (QUIC) and TCP (the fallback), so that one
/// firewall rule serves agents whether or not their network lets UDP through. With port 0 the
/// kernel picks a UDP port, and another is tried if that port is taken over TCP.
async fn bind_agent_port(addr: SocketAddr) -> anyhow::Result<(std::net::UdpSocket, TcpListener)> {
    let mut attempts = 0;
    loop {
        let udp = quic::bind_udp(addr).with_context(|| format!("binding the QUIC listener on {addr} (UDP)"))?;
        let bound = udp.local_addr().context("reading the QUIC listener's address")?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && addr.port() == 0 && attempts < 50 => attempts += 1,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("binding the agents' TCP fallback listener on {bound} (the QUIC port, over TCP)")
                });
            }
        }
    }
}

impl Stub {
    /// Loads certificates and whitelist and binds both listeners.
    pub async fn bind(config: StubConfig) -> anyhow::Result<Stub> {
        let dir = &config.certs;
        let ca = files::load_certs(&dir.ca_cert())?;
        let chain = files::load_certs(&dir.stub_cert())?;
        let key = files::load_key(&dir.stub_key())?;
        let whitelist = WhitelistHandle::new(Whitelist::load(&dir.whitelist())?);
        tracing::info!(agents = whitelist.get().entries().len(), path = %dir.whitelist().display(), "whitelist loaded");

        let stub_metrics = Arc::new(metrics::StubMetrics::default());
        let counted = stub_metrics.clone();
        let on_refusal: crate::identity::verifier::OnRefusal =
            Arc::new(move |reason| counted.agent_refusals.inc(&[reason]));
        let quic_tls = tls::stub_quic(&ca, chain.clone(), key.clone_key(), whitelist.clone(), on_refusal.clone())?;
        let agent_tls = Arc::new(tls::stub_quic(&ca, chain.clone(), key.clone_key(), whitelist.clone(), on_refusal)?);
        let (udp, agent_tcp) = bind_agent_port(config.quic_listen).await?;
        let endpoint = quic::server_endpoint(udp, quic_tls, &config.tuning)
            .with_context(|| format!("starting the QUIC listener on {}", config.quic_listen))?;
        let front_tls = Arc::new(tls::front_door(&ca, chain, key)?);
        let tokens = TokenVerifier::load(&config.issuer_pub)?;
        let audit =
            AuditLog::open(&config.audit).with_context(|| format!("opening the audit log {:?}", config.audit))?;
        let listener = TcpListener::bind(config.https_listen)
            .await
            .with_context(|| format!("binding the HTTPS listener on {}", config.https_listen))?;
        let state = Arc::new(StubState {
            registry: registry::Registry::default(),
            whitelist,
            tokens,
            audit,
            limits: limits::Counters::new(config.limits),
            stalled_reader_timeout: config.stalled_reader_timeout,
            metrics: stub_metrics,
        });
        if let Some(addr) = config.admin_listen {
            let readiness = crate::admin::Readiness::default();
            readiness.set(true);
            let scraped = state.clone();
            let render: crate::admin::Metrics = Arc::new(move || scraped.metrics.render(&scraped.registry));
            let bound = crate::admin::serve(addr, readiness, "not serving\n", render)
                .await
                .with_context(|| format!("binding the admin listener on {addr}"))?;
            tracing::info!(admin = %bound, "admin listening (/healthz, /readyz, /metrics)");
        }
        Ok(Stub {
            endpoint,
            agent_tcp,
            agent_tls,
            idle_timeout: config.tuning.idle_timeout,
            listener,
            front_tls,
            state,
            grace: config.grace,
            header_timeout: config.header_timeout,
            whitelist_path: dir.whitelist(),
            watch_whitelist: config.watch_whitelist,
        })
    }

    pub fn quic_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn https_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then closes agent connections with "going away" and
    /// drains the front door.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let agents = tokio::spawn(agents::accept_loop(
            self.endpoint.clone(),
            self.state.clone(),
            cancel.clone(),
            tracker.clone(),
        ));
        let agents_tcp = tokio::spawn(agents::accept_tcp_loop(
            self.agent_tcp,
            self.agent_tls,
            self.state.clone(),
            self.idle_timeout,
            cancel.clone(),
            tracker.clone(),
        ));
        let front = tokio::spawn(front_door::serve(
            self.listener,
            self.front_tls,
            self.state.clone(),
            cancel.clone(),
            self.grace,
            self.header_timeout,
        ));
        tokio::spawn(reload::watch(self.state.clone(), self.whitelist_path, self.watch_whitelist, cancel.clone()));
        shutdown.await;
        tracing::info!("shutting down: draining the front door, then closing agent connections");
        cancel.cancel();
        let _ = front.await;
        self.endpoint.close(AppCode::GoingAway.varint(), b"stub shutting down");
        for link in self.state.registry.all() {
            link.link.close(AppCode::GoingAway, "stub shutting down");
        }
        let _ = agents.await;
        let _ = agents_tcp.await;
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        Ok(())
    }
}
