//! `tether console` (short-lived tokens, the hub's RBAC deciding) and `tether credential`
//! (kubectl's exec plugin that fetches them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::console::audit::AuditTarget;
use crate::console::credential::{self, CredentialConfig, HubCredential};
use crate::console::{Console, ConsoleConfig};
use crate::identity::files::CertDir;

#[derive(Args)]
pub struct ConsoleArgs {
    /// Certificate directory with issuer.key (the console is the one online holder of it), the
    /// CA, and the stub certificate it serves HTTPS with unless --tls-cert says.
    #[arg(long, env = "TETHER_CERTS", default_value = "certs")]
    certs: PathBuf,
    /// The HTTPS listener (POST /v1/token).
    #[arg(long, env = "TETHER_CONSOLE_LISTEN", default_value = "0.0.0.0:8444")]
    listen: SocketAddr,
    /// /healthz, /readyz and /metrics, plain HTTP.
    #[arg(long, env = "TETHER_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Kubeconfig of the hub's API server, which answers the token and access reviews (default:
    /// in-cluster, or the default kubeconfig). Its user needs `create` on tokenreviews and
    /// subjectaccessreviews (ClusterRole system:auth-delegator).
    #[arg(long, env = "TETHER_HUB_KUBECONFIG")]
    hub_kubeconfig: Option<PathBuf>,
    /// Lifetime of the tokens it mints (at least 1s, at most 12h).
    #[arg(long, env = "TETHER_CONSOLE_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Serve HTTPS with this certificate (and --tls-key) instead of the stub's.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Where the audit lines go: a file, "-" for stdout, or "off".
    #[arg(long, env = "TETHER_CONSOLE_AUDIT_LOG", default_value = "-")]
    audit_log: AuditTarget,
}

impl ConsoleArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        let config = ConsoleConfig {
            certs: CertDir::new(self.certs),
            listen: self.listen,
            admin_listen: self.admin_listen,
            hub_kubeconfig: self.hub_kubeconfig,
            ttl: self.ttl,
            tls: self.tls_cert.zip(self.tls_key),
            audit: self.audit_log,
        };
        let console = Console::bind(config).await.context("starting the console")?;
        tracing::info!(https = %console.local_addr()?, ttl = ?self.ttl, "console listening (POST /v1/token)");
        if let Some(admin) = console.admin_addr() {
            tracing::info!(admin = %admin?, "admin listening (/healthz, /readyz, /metrics)");
        }
        let shutdown = tokio_util::sync::CancellationToken::new();
        let serving = tokio::spawn(console.run(shutdown.clone()));
        crate::shutdown::signal().await;
        shutdown.cancel();
        let _ = serving.await;
        Ok(())
    }
}

#[derive(Args)]
pub struct CredentialArgs {
    /// The console, https://HOST:PORT.
    #[arg(long, env = "TETHER_CONSOLE")]
    console: String,
    /// The cluster the token is for.
    #[arg(long)]
    cluster: String,
    /// The CA of the console's certificate (the tether CA).
    #[arg(long)]
    ca: PathBuf,
    /// Your hub credential: the token of this kubeconfig's current user.
    #[arg(long, conflicts_with = "hub_token_file", required_unless_present = "hub_token_file")]
    hub_kubeconfig: Option<PathBuf>,
    /// Your hub credential: a file holding a token the hub's API server accepts.
    #[arg(long)]
    hub_token_file: Option<PathBuf>,
    /// Where tokens are cached (default: $XDG_CACHE_HOME/tether/credentials or
    /// ~/.cache/tether/credentials).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

impl CredentialArgs {
    pub fn config(self) -> CredentialConfig {
        let hub = match (self.hub_token_file, self.hub_kubeconfig) {
            (Some(file), _) => HubCredential::TokenFile(file),
            (None, Some(kubeconfig)) => HubCredential::Kubeconfig(kubeconfig),
            (None, None) => unreachable!("clap requires one of them"),
        };
        CredentialConfig {
            console: self.console,
            cluster: self.cluster,
            hub,
            ca: Some(self.ca),
            cache_dir: self.cache_dir,
        }
    }

    /// Prints the ExecCredential on stdout (kubectl reads it there).
    pub async fn run(self) -> anyhow::Result<()> {
        let cached = credential::credential(&self.config()).await?;
        println!("{}", credential::exec_credential(&cached));
        Ok(())
    }
}
