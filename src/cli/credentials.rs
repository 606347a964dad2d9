//! `tether token` and `tether kubeconfig`: credentials for users and services, signed with the
//! issuer key (the console's role).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::identity::files::{self, CertDir};
use crate::identity::token::{self, TokenRequest};
use crate::kubeconfig::UserKubeconfig;

#[derive(Args)]
pub struct IdentityArgs {
    /// Certificate directory holding issuer.key (only the console, which mints tokens, needs it).
    #[arg(long, env = "TETHER_CERTS", default_value = "certs")]
    certs: PathBuf,
    /// The user name the API server will see.
    #[arg(long)]
    user: String,
    /// A group of the user (repeatable).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// How long the token is valid (e.g. 1h, 30m, 7d).
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Bind the token to this client certificate (RFC 8705): the stub then accepts it only on a
    /// connection that presents that certificate.
    #[arg(long)]
    bind_cert: Option<PathBuf>,
}

#[derive(Args)]
pub struct TokenArgs {
    #[command(flatten)]
    identity: IdentityArgs,
    /// A cluster the caller may reach (repeatable).
    #[arg(long = "cluster", required = true)]
    clusters: Vec<String>,
}

#[derive(Args)]
pub struct KubeconfigArgs {
    #[command(flatten)]
    identity: IdentityArgs,
    /// The stub's front door, https://HOST:PORT.
    #[arg(long, env = "TETHER_STUB_URL")]
    stub: String,
    /// The cluster this kubeconfig reaches.
    #[arg(long)]
    cluster: String,
}

impl IdentityArgs {
    fn mint(&self, clusters: &[String]) -> anyhow::Result<String> {
        let request = TokenRequest {
            user: &self.user,
            groups: &self.groups,
            clusters,
            ttl: self.ttl,
            bind_cert: self.bind_cert.as_deref(),
        };
        Ok(token::mint(&CertDir::new(&self.certs), &request)?)
    }
}

impl TokenArgs {
    /// Prints a token.
    pub fn run(self) -> anyhow::Result<()> {
        println!("{}", self.identity.mint(&self.clusters)?);
        Ok(())
    }
}

impl KubeconfigArgs {
    /// Prints a kubeconfig with a fresh token.
    pub fn run(self) -> anyhow::Result<()> {
        let token = self.identity.mint(std::slice::from_ref(&self.cluster))?;
        let ca_path = CertDir::new(&self.identity.certs).ca_cert();
        let ca_pem = files::load_text(&ca_path, "cannot read the CA certificate")?;
        let kubeconfig = UserKubeconfig {
            stub_url: &self.stub,
            cluster: &self.cluster,
            user: &self.identity.user,
            ca_pem: &ca_pem,
            token: &token,
        };
        print!("{}", kubeconfig.render());
        Ok(())
    }
}
