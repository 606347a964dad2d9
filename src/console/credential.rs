//! `tether credential`: kubectl's exec credential plugin (`client.authentication.k8s.io/v1`).
//! It prints an `ExecCredential` with a tether token from the console and its
//! `expirationTimestamp`, so that kubectl asks again before the token runs out, and a kubectl
//! session (a long watch, a script of gets) outlives any one token.
//!
//! Tokens are cached per console, cluster and hub credential in the user's cache directory
//! (`$XDG_CACHE_HOME/tether/credentials`, or `~/.cache/...`; files mode 0600, written whole),
//! and reused until [`refresh_margin`] before they expire. The console down, or refusing, gives
//! kubectl a clear error at once (bounded by [`super::https::REQUEST_TIMEOUT`]), never a hang.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::https::HttpsClient;
use super::request::{TokenRequest, TokenResponse};
use crate::bridge;
use crate::identity::files;

/// Where the hub credential comes from.
#[derive(Debug, Clone)]
pub enum HubCredential {
    /// A file holding a bearer token the hub's API server accepts.
    TokenFile(PathBuf),
    /// The token of the current context's user in this kubeconfig.
    Kubeconfig(PathBuf),
    /// The id token `tether login` keeps for the console (refreshed when about to expire),
    /// from the provider whose certificate this CA signed.
    Login { oidc_ca: PathBuf },
}

impl HubCredential {
    /// The bearer token.
    pub async fn read(&self, config: &CredentialConfig) -> anyhow::Result<String> {
        let token = match self {
            HubCredential::TokenFile(path) => {
                files::load_text(path, "cannot read the hub token file")?.trim().to_owned()
            }
            HubCredential::Kubeconfig(path) => token_of_current_user(path)?,
            HubCredential::Login { oidc_ca } => {
                super::login::id_token(&config.console, oidc_ca, config.cache_dir.as_deref()).await?
            }
        };
        anyhow::ensure!(!token.is_empty(), "the hub credential is empty");
        Ok(token)
    }
}

fn token_of_current_user(path: &Path) -> anyhow::Result<String> {
    let config = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("{}: cannot read the hub kubeconfig", path.display()))?;
    let context_name =
        config.current_context.clone().with_context(|| format!("{}: no current-context", path.display()))?;
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .with_context(|| format!("{}: no context {context_name:?}", path.display()))?;
    let user = config
        .auth_infos
        .iter()
        .find(|u| u.name == context.user.as_deref().unwrap_or_default())
        .and_then(|u| u.auth_info.as_ref())
        .with_context(|| format!("{}: the context {context_name:?} names no user", path.display()))?;
    if let Some(token) = &user.token {
        return Ok(secrecy::ExposeSecret::expose_secret(token).trim().to_owned());
    }
    if let Some(file) = &user.token_file {
        return Ok(files::load_text(Path::new(file), "cannot read the kubeconfig user's token file")?
            .trim()
            .to_owned());
    }
    anyhow::bail!(
        "{}: the user of context {context_name:?} has no token (the console takes a bearer token the hub accepts; \
         give --hub-token-file)",
        path.display()
    )
}

/// What the plugin needs.
#[derive(Debug, Clone)]
pub struct CredentialConfig {
    /// `https://HOST:PORT` of the console.
    pub console: String,
    pub cluster: String,
    pub hub: HubCredential,
    /// The CA of the console's certificate (the tether CA); None: the system's roots.
    pub ca: Option<PathBuf>,
    /// The cache directory; None: the user's.
    pub cache_dir: Option<PathBuf>,
}

/// A cached token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cached {
    pub token: String,
    /// When it was issued and when it expires, Unix seconds.
    pub issued: u64,
    pub expires: u64,
}

/// How long before expiry a token is refreshed: a fifth of its lifetime, between 1 s and 60 s.
pub fn refresh_margin(issued: u64, expires: u64) -> u64 {
    (expires.saturating_sub(issued) / 5).clamp(1, 60)
}

impl Cached {
    /// Still good at `now` (Unix seconds), with the margin to spare.
    pub fn fresh_at(&self, now: u64) -> bool {
        now + refresh_margin(self.issued, self.expires) < self.expires
    }

    /// The `expirationTimestamp` kubectl gets: the margin before the real expiry, so that it
    /// asks again while the token still works.
    pub fn renew_at(&self) -> u64 {
        let margin = refresh_margin(self.issued, self.expires);
        self.expires.saturating_sub(margin).max(self.issued.min(self.expires))
    }
}

/// The `ExecCredential` kubectl reads on stdout.
pub fn exec_credential(cached: &Cached) -> serde_json::Value {
    let at = humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(cached.renew_at()));
    serde_json::json!({
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": cached.token, "expirationTimestamp": at.to_string()},
    })
}

fn cache_dir(config: &CredentialConfig) -> anyhow::Result<PathBuf> {
    match &config.cache_dir {
        Some(dir) => Ok(dir.clone()),
        None => Ok(super::cache::user_cache_dir()?.join("credentials")),
    }
}

/// The cache file of this console, cluster and hub credential (a digest: the file name says
/// nothing of the credential).
fn cache_file(config: &CredentialConfig, hub_token: &str) -> anyhow::Result<PathBuf> {
    let mut digest = sha2::Sha256::new();
    for part in [config.console.as_str(), config.cluster.as_str(), hub_token] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    }
    let name: String = digest.finalize()[..12].iter().map(|b| format!("{b:02x}")).collect();
    Ok(cache_dir(config)?.join(format!("{}-{name}.json", config.cluster)))
}

/// A token for the cluster: the cached one if still fresh, else a new one from the console
/// (cached).
pub async fn credential(config: &CredentialConfig) -> anyhow::Result<Cached> {
    let hub_token = config.hub.read(config).await?;
    let path = cache_file(config, &hub_token)?;
    let now = crate::identity::token::unix_now();
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(cached) = serde_json::from_str::<Cached>(&text)
        && cached.fresh_at(now)
    {
        return Ok(cached);
    }
    let answer = fetch(config, &hub_token).await?;
    let expires = humantime::parse_rfc3339(&answer.expiration_timestamp)
        .with_context(|| format!("the console sent a bad expirationTimestamp {:?}", answer.expiration_timestamp))?
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let cached = Cached { token: answer.token, issued: now, expires };
    super::cache::save_private(&path, &serde_json::to_vec(&cached)?)?;
    Ok(cached)
}

async fn fetch(config: &CredentialConfig, hub_token: &str) -> anyhow::Result<TokenResponse> {
    let ca = config.ca.as_deref().context("--ca FILE: the CA of the console's certificate (the tether CA)")?;
    let client = HttpsClient::new(ca)?;
    let url = format!("{}/v1/token", config.console.trim_end_matches('/'));
    let body = serde_json::to_vec(&TokenRequest { clusters: vec![config.cluster.clone()] })?;
    let request = http::Request::post(&url)
        .header(http::header::AUTHORIZATION, format!("Bearer {hub_token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(bridge::full(body))
        .with_context(|| format!("--console {:?}: not a URL", config.console))?;
    let answer = client.send("the console", request).await?;
    if !answer.status.is_success() {
        anyhow::bail!("the console refused ({}): {}", answer.status, answer.message());
    }
    serde_json::from_value(answer.body).context("the console's answer is not a token response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kubectl_is_told_to_ask_again_before_the_token_expires() {
        let cached = Cached { token: "t".into(), issued: 1_000, expires: 1_600 };
        assert_eq!(refresh_margin(1_000, 1_600), 60);
        assert_eq!(cached.renew_at(), 1_540);
        assert!(cached.fresh_at(1_539) && !cached.fresh_at(1_540));
        let short = Cached { token: "t".into(), issued: 1_000, expires: 1_003 };
        assert_eq!(short.renew_at(), 1_002);
        let credential = exec_credential(&cached);
        assert_eq!(credential["kind"], "ExecCredential");
        assert_eq!(credential["status"]["expirationTimestamp"], "1970-01-01T00:25:40Z");
    }

    proptest! {
        /// Whatever the lifetime, kubectl renews before expiry and not before issue, and a
        /// token is never fresh once kubectl was told to renew it.
        #[test]
        fn renewal_falls_within_the_lifetime(issued in 0u64..2_000_000_000, lifetime in 1u64..100_000, now in 0u64..2_100_000_000) {
            let cached = Cached { token: "t".into(), issued, expires: issued + lifetime };
            prop_assert!(cached.renew_at() >= issued && cached.renew_at() < cached.expires);
            if now >= cached.renew_at() {
                prop_assert!(!cached.fresh_at(now));
            }
        }
    }
}
