//! `tether login`: a person signs in at the hub's OpenID Connect provider with the device
//! authorization grant (RFC 8628), and the id token becomes their hub credential for
//! `tether credential --login` (the hub's API server accepts it through its `--oidc-*` flags).
//!
//! The console says which provider and client (`GET /v1/login`); the provider's discovery
//! document gives the endpoints (its `issuer` must be the one the console named). The person
//! opens the verification URL in any browser and enters the code; `tether login` polls the
//! token endpoint at the interval asked for (5 s by default, 5 s more on `slow_down`) until the
//! provider answers with tokens, refuses, or the code expires. The id token and the refresh
//! token are kept in the user's cache directory (mode 0600, written whole); an id token about to
//! expire is refreshed with the refresh token, which the provider may replace on each use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::https::{Answer, HttpsClient};

/// The scopes asked for: the id token must carry the email and groups the hub's API server maps
/// (`--oidc-username-claim=email`, `--oidc-groups-claim=groups`), and `offline_access` brings a
/// refresh token.
pub const SCOPES: &str = "openid email groups offline_access";
/// An id token this close to its expiry is refreshed before use.
const REFRESH_BEFORE: u64 = 60;
/// The poll interval when the provider names none (RFC 8628), and what `slow_down` adds.
const DEFAULT_INTERVAL: u64 = 5;

/// What the console says of its login (`GET /v1/login`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginConfig {
    pub issuer: String,
    pub client_id: String,
    pub scopes: String,
}

/// A signed-in person's tokens, as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub issuer: String,
    pub client_id: String,
    pub token_endpoint: String,
    pub id_token: String,
    pub refresh_token: Option<String>,
    /// The id token's `exp`, Unix seconds.
    pub expires: u64,
}

/// Where `tether login` keeps the session for `console`: `login/` in the cache directory
/// (`cache_dir`, else the user's), a file named by a digest of the console URL.
pub fn session_file(console: &str, cache_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let base = match cache_dir {
        Some(dir) => dir.join("login"),
        None => super::cache::user_cache_dir()?.join("login"),
    };
    let digest: String = sha2::Sha256::digest(console.as_bytes())[..12].iter().map(|b| format!("{b:02x}")).collect();
    Ok(base.join(format!("{digest}.json")))
}

/// The claims of a JWT, unverified: only for what this side shows or schedules (the hub's API
/// server verifies the token).
pub fn claims_of(jwt: &str) -> Option<serde_json::Value> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What a poll of the token endpoint says (RFC 8628, section 3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    Pending,
    SlowDown,
    Tokens,
    Refused(String),
}

/// Reads a token endpoint's answer to a device-code poll.
pub fn poll_outcome(answer: &Answer) -> Poll {
    if answer.status.is_success() && answer.body.get("id_token").is_some() {
        return Poll::Tokens;
    }
    match answer.body.get("error").and_then(|e| e.as_str()) {
        Some("authorization_pending") => Poll::Pending,
        Some("slow_down") => Poll::SlowDown,
        Some("access_denied") => Poll::Refused("the sign-in was denied".into()),
        Some("expired_token") => {
            Poll::Refused("the code expired before anyone signed in; run tether login again".into())
        }
        _ if answer.status.is_success() => {
            Poll::Refused("the provider sent no id token (was the openid scope granted?)".into())
        }
        _ => Poll::Refused(format!("the provider refused ({}): {}", answer.status, answer.message())),
    }
}

/// The session from a token endpoint's successful answer.
fn session_from(
    config: &LoginConfig,
    token_endpoint: &str,
    answer: &Answer,
    old_refresh: Option<String>,
) -> anyhow::Result<Session> {
    let id_token = answer.body["id_token"].as_str().context("the provider's answer has no id_token")?.to_owned();
    let expires = claims_of(&id_token).and_then(|c| c["exp"].as_u64()).context("the id token has no exp claim")?;
    Ok(Session {
        issuer: config.issuer.clone(),
        client_id: config.client_id.clone(),
        token_endpoint: token_endpoint.to_owned(),
        id_token,
        // A provider that does not rotate refresh tokens sends none back: keep the old one.
        refresh_token: answer.body["refresh_token"].as_str().map(str::to_owned).or(old_refresh),
        expires,
    })
}

/// What `tether login` needs.
#[derive(Debug, Clone)]
pub struct LoginOptions {
    pub console: String,
    /// The CA of the console's certificate.
    pub ca: PathBuf,
    /// The CA of the provider's certificate.
    pub oidc_ca: PathBuf,
    pub cache_dir: Option<PathBuf>,
}

/// Signs in with the device grant; returns the session (saved) and who the id token names.
pub async fn login(options: &LoginOptions) -> anyhow::Result<(Session, String)> {
    let console = HttpsClient::new(&options.ca)?;
    let url = format!("{}/v1/login", options.console.trim_end_matches('/'));
    let answer = console.get("the console", &url).await?;
    anyhow::ensure!(answer.status.is_success(), "the console has no login ({}): {}", answer.status, answer.message());
    let config: LoginConfig = serde_json::from_value(answer.body).context("the console's login configuration")?;

    let provider = HttpsClient::new(&options.oidc_ca)?;
    let discovery_url = format!("{}/.well-known/openid-configuration", config.issuer.trim_end_matches('/'));
    let discovery = provider.get("the OpenID Connect provider", &discovery_url).await?;
    anyhow::ensure!(discovery.status.is_success(), "{discovery_url}: {} {}", discovery.status, discovery.message());
    let field = |name: &str| -> anyhow::Result<String> {
        discovery.body[name].as_str().map(str::to_owned).with_context(|| format!("{discovery_url} has no {name}"))
    };
    anyhow::ensure!(
        field("issuer")? == config.issuer,
        "the provider says its issuer is {:?}, the console named {:?}",
        field("issuer")?,
        config.issuer
    );
    let (device_endpoint, token_endpoint) = (field("device_authorization_endpoint")?, field("token_endpoint")?);

    let form = [("client_id", config.client_id.as_str()), ("scope", config.scopes.as_str())];
    let device = provider.post_form("the device authorization endpoint", &device_endpoint, &form).await?;
    anyhow::ensure!(device.status.is_success(), "the provider refused the device request: {}", device.message());
    let text = |name: &str| device.body[name].as_str().map(str::to_owned);
    let device_code = text("device_code").context("no device_code in the provider's answer")?;
    let user_code = text("user_code").context("no user_code in the provider's answer")?;
    let verification = text("verification_uri").context("no verification_uri in the provider's answer")?;
    let complete = text("verification_uri_complete");
    let expires_in = device.body["expires_in"].as_u64().unwrap_or(600);
    let mut interval = device.body["interval"].as_u64().unwrap_or(DEFAULT_INTERVAL).max(1);
    eprintln!("To sign in, open {verification} and enter the code {user_code}");
    if let Some(complete) = &complete {
        eprintln!("  (or open {complete})");
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(expires_in);
    let grant = "urn:ietf:params:oauth:grant-type:device_code";
    loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the code expired before anyone signed in");
        let form = [("grant_type", grant), ("device_code", &device_code), ("client_id", &config.client_id)];
        let answer = provider.post_form("the token endpoint", &token_endpoint, &form).await?;
        match poll_outcome(&answer) {
            Poll::Pending => {}
            Poll::SlowDown => interval += DEFAULT_INTERVAL,
            Poll::Refused(why) => anyhow::bail!("{why}"),
            Poll::Tokens => {
                let session = session_from(&config, &token_endpoint, &answer, None)?;
                save(&session, &session_file(&options.console, options.cache_dir.as_deref())?)?;
                let who = claims_of(&session.id_token)
                    .and_then(|c| c["email"].as_str().or(c["sub"].as_str()).map(str::to_owned))
                    .unwrap_or_default();
                return Ok((session, who));
            }
        }
    }
}

fn save(session: &Session, path: &Path) -> anyhow::Result<()> {
    super::cache::save_private(path, &serde_json::to_vec(session)?)
}

/// The id token of the session `tether login` keeps for `console`, refreshed first if it
/// expires within a minute.
pub async fn id_token(console: &str, oidc_ca: &Path, cache_dir: Option<&Path>) -> anyhow::Result<String> {
    let path = session_file(console, cache_dir)?;
    let text = std::fs::read_to_string(&path)
        .map_err(|_| anyhow::anyhow!("not logged in to {console}: run tether login --console {console}"))?;
    let session: Session =
        serde_json::from_str(&text).with_context(|| format!("{}: not a login session", path.display()))?;
    if crate::identity::token::unix_now() + REFRESH_BEFORE < session.expires {
        return Ok(session.id_token);
    }
    let refresh = session.refresh_token.clone().with_context(|| {
        format!("the sign-in to {console} has expired and holds no refresh token: run tether login again")
    })?;
    let provider = HttpsClient::new(oidc_ca)?;
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
        ("client_id", session.client_id.as_str()),
    ];
    let answer = provider.post_form("the token endpoint", &session.token_endpoint, &form).await?;
    anyhow::ensure!(
        answer.status.is_success(),
        "the provider did not renew the sign-in ({}: {}): run tether login again",
        answer.status,
        answer.message()
    );
    let config =
        LoginConfig { issuer: session.issuer.clone(), client_id: session.client_id.clone(), scopes: SCOPES.into() };
    let renewed = session_from(&config, &session.token_endpoint, &answer, Some(refresh))?;
    save(&renewed, &path)?;
    Ok(renewed.id_token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn answer(status: u16, body: serde_json::Value) -> Answer {
        Answer { status: StatusCode::from_u16(status).unwrap(), body }
    }

    #[test]
    fn each_poll_answer_is_read_as_rfc_8628_says() {
        assert_eq!(poll_outcome(&answer(400, serde_json::json!({"error": "authorization_pending"}))), Poll::Pending);
        assert_eq!(poll_outcome(&answer(400, serde_json::json!({"error": "slow_down"}))), Poll::SlowDown);
        assert_eq!(poll_outcome(&answer(200, serde_json::json!({"id_token": "a.b.c"}))), Poll::Tokens);
        assert!(
            matches!(poll_outcome(&answer(400, serde_json::json!({"error": "expired_token"}))), Poll::Refused(w) if w.contains("expired"))
        );
        assert!(matches!(poll_outcome(&answer(400, serde_json::json!({"error": "access_denied"}))), Poll::Refused(_)));
        let odd = poll_outcome(&answer(
            401,
            serde_json::json!({"error": "invalid_client", "error_description": "no such client"}),
        ));
        assert!(matches!(odd, Poll::Refused(w) if w.contains("no such client")));
    }

    #[test]
    fn the_claims_of_a_jwt_are_read_without_padding() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"exp":1700000000,"email":"a@b"}"#);
        let claims = claims_of(&format!("h.{payload}.s")).unwrap();
        assert_eq!((claims["exp"].as_u64(), claims["email"].as_str()), (Some(1_700_000_000), Some("a@b")));
        assert!(claims_of("not-a-jwt").is_none());
    }
}
