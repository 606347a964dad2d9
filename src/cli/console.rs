//! `tether console` (short-lived tokens, the hub's RBAC deciding) and `tether credential`
//! (kubectl's exec plugin that fetches them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::console::audit::AuditTarget;
use crate::console::credential::{self, CredentialConfig, HubCredential};
use crate::console::login::{self, LoginConfig, LoginOptions};
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
    /// The hub's OpenID Connect provider (the issuer URL its API server's --oidc-issuer-url
    /// names), for people to sign in with `tether login`.
    #[arg(long, env = "TETHER_OIDC_ISSUER")]
    oidc_issuer: Option<String>,
    /// The client id people sign in with (the API server's --oidc-client-id).
    #[arg(long, env = "TETHER_OIDC_CLIENT_ID", default_value = "tether")]
    oidc_client_id: String,
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
            login: self.oidc_issuer.map(|issuer| LoginConfig {
                issuer,
                client_id: self.oidc_client_id,
                scopes: login::SCOPES.into(),
            }),
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
#[command(group(clap::ArgGroup::new("hub_credential").required(true).args(["hub_kubeconfig", "hub_token_file", "login"])))]
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
    /// Your hub credential (one of three): the token of this kubeconfig's current user.
    #[arg(long)]
    hub_kubeconfig: Option<PathBuf>,
    /// Your hub credential (one of three): the sign-in `tether login` keeps for this console.
    #[arg(long)]
    login: bool,
    /// With --login: the CA of the OpenID Connect provider's certificate (default: --ca).
    #[arg(long, requires = "login")]
    oidc_ca: Option<PathBuf>,
    /// Your hub credential (one of three): a file holding a token the hub's API server accepts.
    #[arg(long)]
    hub_token_file: Option<PathBuf>,
    /// The cache directory: tokens in it (default: $XDG_CACHE_HOME/tether/credentials or
    /// ~/.cache/tether/credentials), and with --login the sign-in in its login/ (default
    /// ~/.cache/tether/login).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

impl CredentialArgs {
    pub fn config(self) -> CredentialConfig {
        let hub = match (self.hub_token_file, self.hub_kubeconfig, self.login) {
            (Some(file), _, _) => HubCredential::TokenFile(file),
            (None, Some(kubeconfig), _) => HubCredential::Kubeconfig(kubeconfig),
            (None, None, true) => HubCredential::Login { oidc_ca: self.oidc_ca.unwrap_or_else(|| self.ca.clone()) },
            (None, None, false) => unreachable!("clap requires one of them"),
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

#[derive(Args)]
pub struct LoginArgs {
    /// The console, https://HOST:PORT (it names the hub's OpenID Connect provider).
    #[arg(long, env = "TETHER_CONSOLE")]
    console: String,
    /// The CA of the console's certificate (the tether CA).
    #[arg(long)]
    ca: PathBuf,
    /// The CA of the provider's certificate (default: --ca).
    #[arg(long)]
    oidc_ca: Option<PathBuf>,
    /// The cache directory, as for tether credential: the sign-in goes to its login/ (default:
    /// $XDG_CACHE_HOME/tether or ~/.cache/tether).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

impl LoginArgs {
    /// Signs in with the device grant: prints where to go and the code, waits, keeps the tokens.
    pub async fn run(self) -> anyhow::Result<()> {
        let options = LoginOptions {
            console: self.console,
            oidc_ca: self.oidc_ca.unwrap_or_else(|| self.ca.clone()),
            ca: self.ca,
            cache_dir: self.cache_dir,
        };
        let (session, who) = login::login(&options).await?;
        let until =
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(session.expires));
        eprintln!("signed in to {} as {who} (until {until}; renewed as needed)", session.issuer);
        Ok(())
    }
}
