//! `tether agent`: the cluster side.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::QuicArgs;
use crate::agent::upstream::UpstreamSource;
use crate::agent::{AgentConfig, TransportMode};
use crate::identity::files::CertDir;
use crate::transport::proxy::{NoProxy, Proxy};
use crate::transport::quic::Tuning;

#[derive(Args)]
pub struct AgentArgs {
    /// Certificate directory (ca.crt and agents/CLUSTER/NAME.{crt,key}).
    #[arg(long, env = "TETHER_CERTS", default_value = "certs")]
    certs: PathBuf,
    #[arg(long, env = "TETHER_CLUSTER")]
    cluster: String,
    #[arg(long, env = "TETHER_NAME")]
    name: String,
    /// The stub's agent address, HOST:PORT (QUIC over UDP, or the TCP fallback on the same port).
    #[arg(long, env = "TETHER_STUB")]
    stub: String,
    /// Name to verify the stub's certificate against (default: the host of --stub).
    #[arg(long, env = "TETHER_SERVER_NAME")]
    server_name: Option<String>,
    /// Agent certificate (default: CERTS/agents/CLUSTER/NAME.crt).
    #[arg(long, env = "TETHER_CERT")]
    cert: Option<PathBuf>,
    /// Agent key (default: CERTS/agents/CLUSTER/NAME.key).
    #[arg(long, env = "TETHER_KEY")]
    key: Option<PathBuf>,
    /// CA that signed the stub's certificate (default: CERTS/ca.crt).
    #[arg(long, env = "TETHER_CA")]
    ca: Option<PathBuf>,
    /// The token issuer's public key, to verify callers again (default: CERTS/issuer.pub).
    #[arg(long, env = "TETHER_ISSUER_PUB")]
    issuer_pub: Option<PathBuf>,
    /// The API server (or any HTTP(S) server) to forward to.
    #[arg(
        long,
        env = "TETHER_UPSTREAM",
        conflicts_with_all = ["kubeconfig", "in_cluster"],
        required_unless_present_any = ["kubeconfig", "in_cluster"]
    )]
    upstream: Option<String>,
    /// Running in a pod: use its service account (token and CA files) and KUBERNETES_SERVICE_*.
    #[arg(long, env = "TETHER_IN_CLUSTER", conflicts_with = "kubeconfig")]
    in_cluster: bool,
    /// Where the pod's service account files are (with --in-cluster).
    #[arg(long, env = "TETHER_SERVICEACCOUNT_DIR", default_value = "/var/run/secrets/kubernetes.io/serviceaccount")]
    serviceaccount_dir: PathBuf,
    /// CA of the --upstream server's certificate.
    #[arg(long, env = "TETHER_UPSTREAM_CA", requires = "upstream")]
    upstream_ca: Option<PathBuf>,
    /// Take the API server's address, CA and credential from this kubeconfig.
    #[arg(long, env = "TETHER_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Context of the kubeconfig (default: its current context).
    #[arg(long, env = "TETHER_CONTEXT", requires = "kubeconfig")]
    context: Option<String>,
    /// Streams the stub may have open on this connection at once (watches each hold one). Keep
    /// it above the stub's --max-requests-per-agent, so a full connection is answered with 429
    /// rather than made to wait.
    #[arg(long, env = "TETHER_MAX_STREAMS", default_value_t = Tuning::default().max_request_streams)]
    max_streams: u32,
    /// First reconnect delay (doubles up to --backoff-max, with jitter).
    #[arg(long, env = "TETHER_BACKOFF_MIN", default_value = "100ms", value_parser = humantime::parse_duration)]
    backoff_min: Duration,
    #[arg(long, env = "TETHER_BACKOFF_MAX", default_value = "1s", value_parser = humantime::parse_duration)]
    backoff_max: Duration,
    /// How long in-flight requests may take to finish on shutdown.
    #[arg(long, env = "TETHER_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Serve /healthz and /readyz (ready while connected to the stub) on this address.
    #[arg(long, env = "TETHER_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// quic, tcp (TLS over TCP to the same port, for networks that block UDP), or auto: QUIC,
    /// falling back to TCP after repeated failures and returning to QUIC when it works again.
    #[arg(long, env = "TETHER_TRANSPORT", value_enum, default_value = "auto")]
    transport: TransportMode,
    /// With --transport auto, while on TCP: how often to try QUIC again.
    #[arg(long, env = "TETHER_QUIC_RETRY", default_value = "30s", value_parser = humantime::parse_duration)]
    quic_retry: Duration,
    /// Connections to keep, each to a distinct stub replica (at most as many as the hub has):
    /// losing one replica then costs at most one of them.
    #[arg(long, env = "TETHER_CONNECTIONS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    connections: u16,
    /// HTTP proxy for the TCP fallback, http://[USER:PASSWORD@]HOST[:PORT] (default: the
    /// HTTPS_PROXY variable). With a proxy, --transport auto starts on TCP through it and tries
    /// QUIC beside it every --quic-retry.
    #[arg(long, env = "TETHER_PROXY", hide_env_values = true, value_name = "URL")]
    proxy: Option<String>,
    /// Stubs to reach without the proxy: comma-separated names (and their subdomains), IP
    /// addresses, CIDR ranges, or * (default: the NO_PROXY variable).
    #[arg(long, env = "TETHER_NO_PROXY", value_name = "LIST")]
    no_proxy: Option<String>,
    #[command(flatten)]
    quic: QuicArgs,
}

impl AgentArgs {
    /// The proxy the TCP fallback goes through, from `--proxy` or `HTTPS_PROXY` (`https_proxy`),
    /// unless `--no-proxy` or `NO_PROXY` (`no_proxy`) lists the stub.
    fn proxy(&self) -> anyhow::Result<Option<Proxy>> {
        let from_environment = |names: [&'static str; 2]| {
            names.into_iter().find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()).map(|v| (name, v)))
        };
        let (source, url) = match &self.proxy {
            Some(url) => ("--proxy", url.clone()),
            None => match from_environment(["HTTPS_PROXY", "https_proxy"]) {
                Some(found) => found,
                None => return Ok(None),
            },
        };
        let proxy = Proxy::parse(&url, source)?;
        let no_proxy = match &self.no_proxy {
            Some(list) => list.clone(),
            None => from_environment(["NO_PROXY", "no_proxy"]).map(|(_, v)| v).unwrap_or_default(),
        };
        if NoProxy::parse(&no_proxy).bypasses(&self.stub) {
            tracing::info!(%proxy, stub = %self.stub, "the stub is listed in NO_PROXY: dialling it directly");
            return Ok(None);
        }
        // As Go's and most tools' proxy rules have it: this machine is never behind a proxy.
        if crate::transport::proxy::is_loopback(&self.stub) {
            tracing::info!(%proxy, stub = %self.stub, "the stub is on this machine: dialling it directly, not through the proxy");
            return Ok(None);
        }
        Ok(Some(proxy))
    }

    /// The agent's configuration from these flags.
    pub fn config(self) -> anyhow::Result<AgentConfig> {
        let proxy = self.proxy()?;
        let dir = CertDir::new(&self.certs);
        let upstream = match (self.upstream, self.kubeconfig) {
            (Some(url), _) => UpstreamSource::Url { url, ca: self.upstream_ca },
            (None, Some(path)) => UpstreamSource::Kubeconfig { path, context: self.context },
            (None, None) if self.in_cluster => UpstreamSource::InCluster { dir: self.serviceaccount_dir },
            (None, None) => anyhow::bail!("give --upstream URL, --kubeconfig FILE or --in-cluster"),
        };
        Ok(AgentConfig {
            cert: self.cert.unwrap_or_else(|| dir.agent_cert(&self.cluster, &self.name)),
            key: self.key.unwrap_or_else(|| dir.agent_key(&self.cluster, &self.name)),
            ca: self.ca.unwrap_or_else(|| dir.ca_cert()),
            issuer_pub: self.issuer_pub.unwrap_or_else(|| dir.issuer_pub()),
            cluster: self.cluster,
            name: self.name,
            stub: self.stub,
            server_name: self.server_name,
            upstream,
            tuning: Tuning { max_request_streams: self.max_streams, ..self.quic.tuning() },
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
            grace: self.grace,
            admin_listen: self.admin_listen,
            transport: self.transport,
            quic_retry: self.quic_retry,
            connections: usize::from(self.connections),
            proxy,
        })
    }

    /// Runs the agent until SIGINT or SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        crate::agent::run(self.config()?, crate::shutdown::signal()).await
    }
}
