//! `tether stub`: the hub side.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::QuicArgs;
use crate::hub::members::MembersSpec;
use crate::identity::files::CertDir;
use crate::stub::audit::AuditTarget;
use crate::stub::connections::ConnectionLimits;
use crate::stub::limits::Limits;
use crate::stub::replica::ReplicaConfig;
use crate::stub::unread::UnreadLimits;
use crate::stub::{Stub, StubConfig};

#[derive(Args)]
pub struct StubArgs {
    /// Certificate directory (ca.crt, stub.crt, stub.key, whitelist).
    #[arg(long, env = "TETHER_CERTS", default_value = "certs")]
    certs: PathBuf,
    /// Address for agents: QUIC over UDP, and the TCP fallback on the same port.
    #[arg(long, env = "TETHER_QUIC_LISTEN", default_value = "0.0.0.0:7443")]
    quic_listen: SocketAddr,
    /// TCP address for users and services (HTTPS).
    #[arg(long, env = "TETHER_HTTPS_LISTEN", default_value = "0.0.0.0:8443")]
    https_listen: SocketAddr,
    /// How long open requests may take to finish on shutdown.
    #[arg(long, env = "TETHER_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// The token issuer's public key (default: CERTS/issuer.pub).
    #[arg(long, env = "TETHER_ISSUER_PUB")]
    issuer_pub: Option<PathBuf>,
    /// Audit log: a file to append one JSON line per request to, `-` for stdout, `off` for none.
    #[arg(long, env = "TETHER_AUDIT_LOG", default_value = "-")]
    audit_log: AuditTarget,
    /// Refuse requests (503 Status) while the audit log cannot be written (a full disk, say),
    /// instead of serving them unaudited.
    #[arg(long, env = "TETHER_AUDIT_REQUIRED")]
    audit_required: bool,
    /// Requests one user may have in flight at once (watches count); beyond it, 429. 0: no limit.
    #[arg(long, env = "TETHER_MAX_REQUESTS_PER_USER", default_value_t = 2000)]
    max_requests_per_user: usize,
    /// Requests one cluster may have in flight at once; beyond it, 429. 0: no limit.
    #[arg(long, env = "TETHER_MAX_REQUESTS_PER_CLUSTER", default_value_t = 30000)]
    max_requests_per_cluster: usize,
    /// Requests one agent connection may carry at once; a cluster whose connections are all
    /// this busy answers 429. Keep it below the agents' --max-streams. 0: no limit.
    #[arg(long, env = "TETHER_MAX_REQUESTS_PER_AGENT", default_value_t = 16000)]
    max_requests_per_agent: usize,
    /// A response whose caller leaves it unread this long is dropped (its stream stopped, its
    /// caller's HTTP stream failed). 0s: never.
    #[arg(long, env = "TETHER_STALLED_READER_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    stalled_reader_timeout: Duration,
    /// Responses one user may leave unread at once (each is given a flow-control window of its
    /// own, up to 2 MiB of the stub's memory); one more is dropped. 0: no limit.
    #[arg(long, env = "TETHER_MAX_UNREAD_PER_USER", default_value_t = 8)]
    max_unread_per_user: usize,
    /// Responses left unread that one agent connection may hold at once (memory: up to 2 MiB
    /// each, beyond the connection's shared 16 MiB); one more is dropped. 0: no limit.
    #[arg(long, env = "TETHER_MAX_UNREAD_PER_AGENT", default_value_t = 32)]
    max_unread_per_agent: usize,
    /// Serve /healthz, /readyz and /metrics (Prometheus) on this address.
    #[arg(long, env = "TETHER_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// A front-door client must send a request's headers within this time, also its first
    /// request after connecting, or is disconnected: slow-loris and silent-connection protection.
    #[arg(long, env = "TETHER_HEADER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// A front-door connection with no request in flight for this long is closed (open watches
    /// and exec sessions are in flight).
    #[arg(long, env = "TETHER_CLIENT_IDLE_TIMEOUT", default_value = "90s", value_parser = humantime::parse_duration)]
    client_idle_timeout: Duration,
    /// Front-door connections one IP address may have open at once; more are closed at once. 0:
    /// no limit.
    #[arg(long, env = "TETHER_MAX_CONNECTIONS_PER_SOURCE", default_value_t = 512)]
    max_connections_per_source: usize,
    /// Front-door connections open at once, from everyone; more are closed at once. 0: no limit.
    #[arg(long, env = "TETHER_MAX_CONNECTIONS", default_value_t = 10000)]
    max_connections: usize,
    /// Reload the whitelist only on SIGHUP, not also when the file changes.
    #[arg(long, env = "TETHER_NO_WATCH_WHITELIST")]
    no_watch_whitelist: bool,
    /// This replica's id among the hub's replicas (default: the host name). Agents hold
    /// connections to distinct ids.
    #[arg(long, env = "TETHER_ID")]
    id: Option<String>,
    /// Who the hub's replicas are: `static:ID=HOST:PORT,...` (the same list on every replica,
    /// with each one's peer address) or `kubernetes:NAMESPACE` (a Lease per replica in that
    /// namespace of the hub's Kubernetes). Without it, this stub runs alone.
    #[arg(long, env = "TETHER_MEMBERS")]
    members: Option<MembersSpec>,
    /// Where the other replicas link to this one (QUIC, and TCP on the same port); needed with
    /// --members.
    #[arg(long, env = "TETHER_PEER_LISTEN")]
    peer_listen: Option<SocketAddr>,
    /// The address the other replicas dial for this one, HOST:PORT (default: --peer-listen when it
    /// names one address; in a pod, $(POD_IP):PORT).
    #[arg(long, env = "TETHER_PEER_ADVERTISE")]
    peer_advertise: Option<String>,
    /// Kubeconfig of the hub's own API server, for --members kubernetes:NAMESPACE (default:
    /// in-cluster, or the usual kubeconfig).
    #[arg(long, env = "TETHER_HUB_KUBECONFIG")]
    hub_kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    quic: QuicArgs,
}

impl StubArgs {
    /// The stub's configuration from these flags.
    pub fn config(self) -> StubConfig {
        let dir = CertDir::new(self.certs);
        StubConfig {
            issuer_pub: self.issuer_pub.unwrap_or_else(|| dir.issuer_pub()),
            audit: self.audit_log,
            audit_required: self.audit_required,
            watch_whitelist: !self.no_watch_whitelist,
            unread: UnreadLimits {
                per_user: self.max_unread_per_user,
                per_connection: self.max_unread_per_agent,
                stalled_timeout: Some(self.stalled_reader_timeout).filter(|t| !t.is_zero()),
            },
            admin_listen: self.admin_listen,
            connections: ConnectionLimits {
                per_source: self.max_connections_per_source,
                total: self.max_connections,
                first_request: self.header_timeout,
                idle: self.client_idle_timeout,
            },
            limits: Limits {
                per_user: self.max_requests_per_user,
                per_cluster: self.max_requests_per_cluster,
                per_connection: self.max_requests_per_agent,
            },
            replica: ReplicaConfig {
                id: self.id,
                members: self.members,
                peer_listen: self.peer_listen,
                peer_advertise: self.peer_advertise,
                hub_kubeconfig: self.hub_kubeconfig,
            },
            certs: dir,
            quic_listen: self.quic_listen,
            https_listen: self.https_listen,
            tuning: self.quic.tuning(),
            grace: self.grace,
        }
    }

    /// Binds, says where, and serves until SIGINT or SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        let stub = Stub::bind(self.config()).await.context("starting the stub")?;
        match stub.peer_addr() {
            Some(peer) => {
                tracing::info!(quic = %stub.quic_addr()?, https = %stub.https_addr()?, peer = %peer?, replica = stub.replica_id(), "stub listening")
            }
            None => {
                tracing::info!(quic = %stub.quic_addr()?, https = %stub.https_addr()?, replica = stub.replica_id(), "stub listening")
            }
        }
        if let Some(admin) = stub.admin_addr() {
            tracing::info!(admin = %admin?, "admin listening (/healthz, /readyz, /metrics)");
        }
        stub.serve(crate::shutdown::signal()).await
    }
}
