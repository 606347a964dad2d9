//! The stub: the hub side of the tunnel.
//!
//! - [`agents`]: an agent connection (QUIC or TCP) says hello and joins the [`registry`].
//! - [`hop`]: a connection requests are sent on (an agent's, or a peer replica's link).
//! - [`registry`]: live agent connections per cluster and the choice of one per request.
//! - [`replica`]: this stub as one replica of a hub: id, members, peer listener, mesh.
//! - [`peer_links`]: links between replicas: announcing clusters, accepting peers' links.
//! - [`peer_routes`]: the clusters peer replicas hold, and the choice of a peer for a request.
//! - [`relay`]: a request a peer forwarded here, on to one of this replica's agents.
//! - [`front_door`]: the HTTPS listener for users and services (HTTP/1.1 and HTTP/2).
//! - [`connections`]: front-door connections limited per source and in all; silent and idle
//!   ones closed.
//! - [`admission`]: whether a request may go on (route, token, certificate binding, cluster,
//!   limits).
//! - [`forward`]: an admitted request over its own stream to an agent and back.
//! - [`route`]: `/clusters/{cluster}/{path}` -> cluster and upstream path.
//! - [`audit`]: one JSON line per request.
//! - [`limits`]: requests in flight per user, per cluster and per connection (429 beyond).
//! - [`metrics`]: what `/metrics` on the admin listener shows.
//! - [`inventory`]: what `/clusters` on the admin listener shows (and `tether status` prints).
//! - [`reload`]: the whitelist reloaded on change and on SIGHUP; revoked agents cut off.
//! - [`unread`]: responses their callers leave unread get a window of their own (within limits),
//!   so they cannot stall an agent connection for anyone else.
//! - [`state`]: what all of these share.

pub mod admission;
pub mod agents;
pub mod audit;
pub mod connections;
pub mod forward;
pub mod front_door;
pub mod hop;
pub mod hub_view;
pub mod inventory;
pub mod limits;
pub mod metrics;
pub mod peer_links;
pub mod peer_routes;
pub mod registry;
pub mod relay;
pub mod reload;
pub mod replica;
pub mod route;
pub mod state;
pub mod unread;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::identity::files::{self, CertDir};
use crate::identity::tls;
use crate::identity::token::TokenVerifier;
use crate::identity::whitelist::{Whitelist, WhitelistHandle};
use crate::transport::listen::Listener;
use crate::transport::quic::Tuning;
use crate::wire::codes::AppCode;
use audit::{AuditLog, AuditTarget};
use state::StubState;

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
    /// Refuse requests (503) while the audit log cannot be written.
    pub audit_required: bool,
    /// Reload the whitelist when its file changes (besides on SIGHUP).
    pub watch_whitelist: bool,
    pub limits: limits::Limits,
    /// Responses left unread: limits, and the timeout after which one is dropped.
    pub unread: unread::UnreadLimits,
    /// Where to serve `/healthz`, `/readyz` and `/metrics`.
    pub admin_listen: Option<SocketAddr>,
    /// Front-door connections: how many, and how long silent or idle ones stay.
    pub connections: connections::ConnectionLimits,
    /// This stub as one replica of a hub (by default: alone).
    pub replica: replica::ReplicaConfig,
}

/// A stub whose sockets are bound (so its addresses are known) but not yet serving.
pub struct Stub {
    /// Agents, over QUIC and the TCP fallback on the same port.
    agents: Listener,
    front_door: TcpListener,
    front_tls: Arc<rustls::ServerConfig>,
    admin: Option<TcpListener>,
    state: Arc<StubState>,
    grace: Duration,
    connections: Arc<connections::Connections>,
    whitelist_path: PathBuf,
    /// The version of the whitelist file the list in force came from.
    whitelist_stamp: Option<reload::Stamp>,
    watch_whitelist: bool,
    /// Members, peer listener and links, started with the rest.
    replica: replica::Replica,
}

impl Stub {
    /// Loads certificates and whitelist and binds every listener.
    pub async fn bind(config: StubConfig) -> anyhow::Result<Stub> {
        let dir = &config.certs;
        let ca = files::load_certs(&dir.ca_cert())?;
        let chain = files::load_certs(&dir.stub_cert())?;
        let key = files::load_key(&dir.stub_key())?;
        let whitelist_stamp = reload::stamp(&dir.whitelist());
        let whitelist = WhitelistHandle::new(Whitelist::load(&dir.whitelist())?);
        tracing::info!(agents = whitelist.get().entries().len(), path = %dir.whitelist().display(), "whitelist loaded");

        let stub_metrics = Arc::new(metrics::StubMetrics::default());
        let counted = stub_metrics.clone();
        let on_refusal: crate::identity::verifier::OnRefusal =
            Arc::new(move |reason| counted.agent_refusals.inc(&[reason]));
        let agent_tls = tls::agent_listener(&ca, chain.clone(), key.clone_key(), whitelist.clone(), on_refusal)?;
        let agents = Listener::bind(config.quic_listen, agent_tls, &config.tuning, stub_metrics.clone())
            .await
            .context("starting the agent listener (QUIC, and the TCP fallback on the same port)")?;
        let front_tls = Arc::new(tls::front_door(&ca, chain.clone(), key.clone_key())?);
        let tokens = TokenVerifier::load(&config.issuer_pub)?;
        let audit = AuditLog::open(&config.audit, config.audit_required, stub_metrics.clone())
            .with_context(|| format!("opening the audit log {:?}", config.audit))?;
        let front_door = TcpListener::bind(config.https_listen)
            .await
            .with_context(|| format!("binding the HTTPS listener on {}", config.https_listen))?;
        let admin = crate::admin::bind(config.admin_listen).await?;
        let replica =
            replica::Replica::prepare(config.replica, &ca, &chain, &key, &config.tuning, stub_metrics.clone())
                .await
                .context("starting this stub as a replica of the hub")?;
        let hub = hub_view::HubView {
            replica: replica.id.clone(),
            members: replica.members(),
            peers: peer_routes::PeerRoutes::default(),
            linked_out: Default::default(),
        };
        let stub_metrics_for_connections = stub_metrics.clone();
        let state = Arc::new(StubState {
            registry: registry::Registry::default(),
            whitelist,
            tokens,
            audit,
            limits: limits::Counters::new(config.limits),
            unread: unread::Unread::new(config.unread, stub_metrics.clone()),
            metrics: stub_metrics,
            hub,
        });
        Ok(Stub {
            agents,
            front_door,
            front_tls,
            admin,
            state,
            grace: config.grace,
            connections: connections::Connections::new(config.connections, stub_metrics_for_connections),
            whitelist_path: dir.whitelist(),
            whitelist_stamp,
            watch_whitelist: config.watch_whitelist,
            replica,
        })
    }

    /// Where agents connect (UDP and TCP).
    pub fn quic_addr(&self) -> std::io::Result<SocketAddr> {
        self.agents.local_addr()
    }

    pub fn https_addr(&self) -> std::io::Result<SocketAddr> {
        self.front_door.local_addr()
    }

    pub fn admin_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.admin.as_ref().map(TcpListener::local_addr)
    }

    /// Where peer replicas link to this one, if it is one of several.
    pub fn peer_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.replica.peer_addr()
    }

    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.replica.id
    }

    /// Serves until `shutdown` completes, then drains the front door and closes agent
    /// connections with "going away".
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        // The admin listener answers through the drain, and stops last.
        let admin_stop = CancellationToken::new();
        // Not ready from the moment shutdown begins, so a load balancer sends nothing new.
        let readiness = admin::Readiness::ready();
        if let Some(listener) = self.admin {
            let (scraped, connections) = (self.state.clone(), self.connections.clone());
            let described = self.state.clone();
            let site = admin::Site {
                readiness: readiness.clone(),
                not_ready: "not serving (shutting down)\n",
                ready_detail: Some(Arc::new(move || described.hub.summary(&described.registry).to_string())),
                clusters: Some({
                    let state = self.state.clone();
                    Arc::new(move || {
                        serde_json::to_string_pretty(&inventory::collect(&state)).expect("the inventory serialises")
                    })
                }),
                metrics: Arc::new(move || {
                    let hub = scraped.hub.summary(&scraped.registry);
                    scraped.metrics.render(&scraped.registry, connections.open(), &hub)
                }),
            };
            tokio::spawn(admin::serve(listener, site, admin_stop.clone()));
        }
        let endpoint = self.agents.endpoint().clone();
        let on_agent = {
            let state = self.state.clone();
            move |conn, fingerprint| agents::serve_agent(conn, fingerprint, state.clone())
        };
        let agents = tokio::spawn(self.agents.run(cancel.clone(), tracker.clone(), on_agent));
        let front = tokio::spawn(front_door::serve(
            self.front_door,
            self.front_tls,
            self.state.clone(),
            self.connections.clone(),
            cancel.clone(),
            self.grace,
        ));
        let (path, stamp) = (self.whitelist_path, self.whitelist_stamp);
        tokio::spawn(reload::watch(self.state.clone(), path, stamp, self.watch_whitelist, cancel.clone()));
        tokio::spawn(self.state.unread.clone().sweep(admin_stop.clone()));
        // The hub: membership, peer links. They outlive the front door's drain (its requests
        // may be forwarded to peers), and go with the admin listener.
        let hub_tracker = TaskTracker::new();
        self.replica.start(self.state.clone(), self.state.metrics.clone(), admin_stop.clone(), &hub_tracker);
        shutdown.await;
        readiness.set(false);
        tracing::info!("shutting down: draining the front door, then closing agent connections");
        cancel.cancel();
        let _ = front.await;
        endpoint.close(AppCode::GoingAway.varint(), b"stub shutting down");
        for agent in self.state.registry.all() {
            agent.connection.close(AppCode::GoingAway, "stub shutting down");
        }
        let _ = agents.await;
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        for link in self.state.hub.peers.links() {
            link.connection.close(AppCode::GoingAway, "replica shutting down");
        }
        admin_stop.cancel();
        // The Lease given up (bounded), so the others drop this replica at once.
        hub_tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), hub_tracker.wait()).await;
        Ok(())
    }
}
