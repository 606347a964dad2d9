//! `tether token` and `tether kubeconfig`: credentials for users and services, signed with the
//! issuer key (the console's role).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::identity::files::Mode;
use crate::identity::files::{self, CertDir};
use crate::identity::token::{self, TokenRequest};
use crate::kubeconfig::{self, Credential, Entry, UserKubeconfig};
use anyhow::Context;

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
    /// Certificate directory: the CA (both modes) and issuer.key (to mint tokens, without --exec).
    #[arg(long, env = "TETHER_CERTS", default_value = "certs")]
    certs: PathBuf,
    /// The user name the API server will see (the token's; with --exec, only in entry names).
    #[arg(long, required_unless_present = "exec")]
    user: Option<String>,
    /// A group of the user (repeatable; not with --exec: the console takes them from the hub).
    #[arg(long = "group", conflicts_with = "exec")]
    groups: Vec<String>,
    /// How long the token is valid (not with --exec: the console decides).
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Bind the token to this client certificate (RFC 8705).
    #[arg(long, conflicts_with = "exec")]
    bind_cert: Option<PathBuf>,
    /// The stub's front door, https://HOST:PORT.
    #[arg(long, env = "TETHER_STUB_URL")]
    stub: String,
    /// A cluster to reach: one context per cluster, each with its own user entry (repeatable).
    #[arg(long = "cluster", required = true)]
    clusters: Vec<String>,
    /// Users run `tether credential` as kubectl's exec plugin: short-lived tokens from the
    /// console, refreshed before they expire, instead of one long token in the file.
    #[arg(long, requires = "console")]
    exec: bool,
    /// With --exec: the console, https://HOST:PORT.
    #[arg(long, requires = "exec")]
    console: Option<String>,
    /// With --exec: the plugin's hub credential, a file holding a token the hub accepts.
    #[arg(long, requires = "exec", conflicts_with = "hub_kubeconfig")]
    hub_token_file: Option<PathBuf>,
    /// With --exec: the plugin's hub credential, the token of this kubeconfig's current user.
    #[arg(long, requires = "exec", conflicts_with = "login")]
    hub_kubeconfig: Option<PathBuf>,
    /// With --exec: the plugin's hub credential, the sign-in of `tether login`.
    #[arg(long, requires = "exec", conflicts_with = "hub_token_file")]
    login: bool,
    /// With --login: the CA of the OpenID Connect provider's certificate (default: the tether CA).
    #[arg(long, requires = "login")]
    oidc_ca: Option<PathBuf>,
    /// Add the entries to this kubeconfig (written in place, whole; its other entries and its
    /// current context stay) instead of printing a new one.
    #[arg(long)]
    merge: Option<PathBuf>,
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
    /// Prints the kubeconfig, or merges it into `--merge FILE`.
    pub fn run(self) -> anyhow::Result<()> {
        let dir = CertDir::new(&self.certs);
        let ca_pem = files::load_text(&dir.ca_cert(), "cannot read the CA certificate")?;
        for cluster in &self.clusters {
            crate::identity::names::validate("cluster", cluster)?;
        }
        let mut entries = Vec::new();
        for cluster in &self.clusters {
            let credential = if self.exec {
                Credential::Exec { command: tether_command()?, args: self.plugin_args(&dir, cluster)? }
            } else {
                let request = TokenRequest {
                    user: self.user.as_deref().expect("clap requires --user without --exec"),
                    groups: &self.groups,
                    clusters: std::slice::from_ref(cluster),
                    ttl: self.ttl,
                    bind_cert: self.bind_cert.as_deref(),
                };
                Credential::Token(token::mint(&dir, &request)?)
            };
            entries.push(Entry { cluster: cluster.clone(), credential });
        }
        let user = self.user.clone().unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "me".into()));
        let ours = UserKubeconfig { stub_url: self.stub.clone(), user, ca_pem, entries }.build();
        match &self.merge {
            None => print!("{}", kubeconfig::to_yaml(&ours)?),
            Some(path) => {
                let existing = if path.exists() {
                    kube::config::Kubeconfig::read_from(path)
                        .with_context(|| format!("{}: cannot read the kubeconfig to merge into", path.display()))?
                } else {
                    kube::config::Kubeconfig::default()
                };
                let merged = kubeconfig::merge_into(existing, ours);
                files::save(path, kubeconfig::to_yaml(&merged)?.as_bytes(), Mode::Secret)?;
                eprintln!("merged {} context(s) into {}", self.clusters.len(), path.display());
            }
        }
        Ok(())
    }

    /// `tether credential ...` for one cluster: absolute paths, so kubectl runs it from anywhere.
    fn plugin_args(&self, dir: &CertDir, cluster: &str) -> anyhow::Result<Vec<String>> {
        let absolute = |p: &std::path::Path| -> anyhow::Result<String> {
            Ok(std::path::absolute(p).with_context(|| format!("{}", p.display()))?.to_string_lossy().into_owned())
        };
        let console = self.console.clone().expect("clap requires --console with --exec");
        let mut args = vec!["credential".into(), "--console".into(), console, "--cluster".into(), cluster.to_owned()];
        args.extend(["--ca".into(), absolute(&dir.ca_cert())?]);
        match (&self.hub_token_file, &self.hub_kubeconfig) {
            (Some(file), _) => args.extend(["--hub-token-file".into(), absolute(file)?]),
            (None, Some(kubeconfig)) => args.extend(["--hub-kubeconfig".into(), absolute(kubeconfig)?]),
            (None, None) if self.login => {
                let oidc_ca = self.oidc_ca.clone().unwrap_or_else(|| dir.ca_cert());
                args.extend(["--login".into(), "--oidc-ca".into(), absolute(&oidc_ca)?]);
            }
            (None, None) => {
                anyhow::bail!("--exec: give the plugin a hub credential: --hub-token-file, --hub-kubeconfig or --login")
            }
        }
        Ok(args)
    }
}

/// This binary, for the exec plugin's command.
fn tether_command() -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("cannot tell where this tether binary is, for the plugin's command")?;
    Ok(exe.to_string_lossy().into_owned())
}
