//! This stub as one replica of a hub (`docs/design.md`, "The hub on many machines"): its id, who
//! the other members are (`--members static:...`, `kubernetes:NAMESPACE` through Leases, or no
//! one: a stub alone is a hub of one), its peer listener, and the mesh of links to the others
//! ([`super::peer_links`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::metrics::StubMetrics;
use super::state::StubState;
use crate::hub::leases::{LeaseConfig, LeaseMembership};
use crate::hub::members::{self, Members, MembersSpec};
use crate::identity::peer;
use crate::transport::dial::ClientTls;
use crate::transport::listen::Listener;
use crate::transport::quic::Tuning;

/// How long a replica's Lease lasts without renewal, and how often it is renewed.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const LEASE_RENEW: Duration = Duration::from_secs(3);

/// What makes a stub one replica of a hub.
#[derive(Debug, Clone, Default)]
pub struct ReplicaConfig {
    /// This replica's id (default: the host name).
    pub id: Option<String>,
    /// Who the members are; `None`: this stub alone.
    pub members: Option<MembersSpec>,
    /// Where to accept peer links (UDP, and TCP on the same port).
    pub peer_listen: Option<SocketAddr>,
    /// The address other replicas dial for this one (default: `peer_listen`, if it names one).
    pub peer_advertise: Option<String>,
    /// Kubeconfig of the hub's API server, for Leases (default: in-cluster, or the usual
    /// kubeconfig).
    pub hub_kubeconfig: Option<PathBuf>,
}

/// Why the replica settings do not hold together.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("--id: {0}")]
    Id(#[from] crate::identity::names::InvalidName),
    #[error("this machine's host name is not a valid replica id (lowercase letters, digits and '-'): give --id")]
    NoDefaultId,
    #[error(transparent)]
    Members(#[from] members::MembersError),
    #[error("--members needs --peer-listen (where the other replicas link to this one)")]
    NoPeerListen,
    #[error(
        "--members kubernetes: needs --peer-advertise HOST:PORT (the address the other replicas dial for this \
         one, e.g. $(POD_IP):7444): --peer-listen {0} names no single address"
    )]
    NoAdvertise(SocketAddr),
    #[error("--peer-advertise {0:?} is not HOST:PORT")]
    Advertise(String),
}

/// Where the members come from, ready to run.
enum Source {
    Alone,
    Static,
    Leases(Box<LeaseMembership>),
}

/// A replica whose peer listener is bound and whose membership source is ready.
pub struct Replica {
    pub id: String,
    members: watch::Sender<Members>,
    source: Source,
    listener: Option<Listener>,
    dial_tls: Option<ClientTls>,
    tuning: Tuning,
}

impl Replica {
    /// Checks the settings, binds the peer listener and connects to the hub's Kubernetes.
    pub async fn prepare(
        config: ReplicaConfig,
        ca: &[CertificateDer<'static>],
        chain: &[CertificateDer<'static>],
        key: &PrivateKeyDer<'static>,
        tuning: &Tuning,
        metrics: Arc<StubMetrics>,
    ) -> anyhow::Result<Replica> {
        let id = match config.id {
            Some(id) => {
                members::validate_id(&id).map_err(ReplicaError::Id)?;
                id
            }
            None if config.members.is_none() => members::default_id().unwrap_or_else(|| "stub".to_owned()),
            None => members::default_id().ok_or(ReplicaError::NoDefaultId)?,
        };
        let Some(spec) = config.members else {
            let (members, _) = watch::channel(Members::from([(id.clone(), String::new())]));
            return Ok(Replica {
                id,
                members,
                source: Source::Alone,
                listener: None,
                dial_tls: None,
                tuning: tuning.clone(),
            });
        };
        spec.check_own(&id)?;
        let peer_listen = config.peer_listen.ok_or(ReplicaError::NoPeerListen)?;
        if let Some(address) = &config.peer_advertise
            && !members::is_host_port(address)
        {
            return Err(ReplicaError::Advertise(address.clone()).into());
        }
        if config.peer_advertise.is_none()
            && peer_listen.ip().is_unspecified()
            && matches!(spec, MembersSpec::Kubernetes { .. })
        {
            return Err(ReplicaError::NoAdvertise(peer_listen).into());
        }
        let tls = peer::listener(ca, chain.to_vec(), key.clone_key())?;
        let listener = Listener::bind(peer_listen, tls, tuning, metrics)
            .await
            .with_context(|| format!("starting the peer listener on {peer_listen}"))?;
        // Port 0 asks for any port: the one bound is the one to advertise.
        let advertise = match (config.peer_advertise, &spec) {
            (Some(address), _) => address,
            (None, MembersSpec::Static(list)) => list[&id].clone(),
            (None, MembersSpec::Kubernetes { .. }) => listener.local_addr()?.to_string(),
        };
        let dial_tls = ClientTls::new(peer::dialer(ca, chain.to_vec(), key.clone_key())?, tuning)?;
        let (members, source) = match spec {
            MembersSpec::Static(list) => (watch::channel(list).0, Source::Static),
            MembersSpec::Kubernetes { namespace } => {
                let config = LeaseConfig {
                    namespace,
                    kubeconfig: config.hub_kubeconfig,
                    id: id.clone(),
                    peer_address: advertise.clone(),
                    duration: LEASE_DURATION,
                    renew_every: LEASE_RENEW,
                };
                let leases = LeaseMembership::connect(config).await.context("membership through Kubernetes Leases")?;
                (watch::channel(Members::from([(id.clone(), advertise)])).0, Source::Leases(Box::new(leases)))
            }
        };
        Ok(Replica { id, members, source, listener: Some(listener), dial_tls: Some(dial_tls), tuning: tuning.clone() })
    }

    /// Where peers link to this replica, if it has peers.
    pub fn peer_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.listener.as_ref().map(Listener::local_addr)
    }

    /// The members as this replica will see them.
    pub fn members(&self) -> watch::Receiver<Members> {
        self.members.subscribe()
    }

    /// Runs membership, the peer listener and the mesh until `cancel` (then the Lease, if any,
    /// is given up, so the others drop this replica at once).
    pub fn start(
        self,
        state: Arc<StubState>,
        metrics: Arc<StubMetrics>,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) {
        let Replica { members, source, listener, dial_tls, tuning, .. } = self;
        match source {
            // The members never change; the sender lives as long as the stub, so that nobody
            // takes its end for the end of the hub.
            Source::Alone | Source::Static => {
                let until = cancel.clone();
                tracker.spawn(async move {
                    until.cancelled().await;
                    drop(members);
                });
            }
            Source::Leases(leases) => {
                tracker.spawn(leases.run(members, cancel.clone()));
            }
        }
        if let Some(listener) = listener {
            let serving = state.clone();
            let on_link = move |conn, fingerprint| super::peer_links::serve_link(conn, fingerprint, serving.clone());
            tracker.spawn(listener.run(cancel.clone(), tracker.clone(), on_link));
        }
        if let Some(tls) = dial_tls {
            tracker.spawn(super::peer_links::mesh(state, tls, tuning, metrics, cancel));
        }
    }
}
