//! User and service credentials: JWTs signed with EdDSA (Ed25519) by the issuer key, which only
//! `tether token` and `tether kubeconfig` (the console's role) hold: [`mint`]. Stub and agent hold only the public key, so a
//! compromised stub cannot mint identities.
//!
//! Claims: `sub` (user), `groups`, `clusters` (which clusters the caller may reach), `iss` and
//! `aud` (both `tether`), `iat`, `exp`, `jti`, and for service callers an RFC 8705 `cnf` with
//! `x5t#S256`, binding the token to a client certificate. Only `alg: EdDSA` is accepted: `none`
//! and every other algorithm are refused before any signature is looked at.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use super::files::{self, FileError};
use super::fingerprint::Fingerprint;

/// The `iss` and `aud` of every tether token.
pub const ISSUER: &str = "tether";
pub const AUDIENCE: &str = "tether";
/// Tokens longer than this are refused unparsed.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Clock skew tolerated between the console that issued a token and the stub or agent.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// What a token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user name the API server will see (impersonated).
    pub sub: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Clusters this caller may reach through the stub.
    pub clusters: Vec<String>,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    /// RFC 8705 confirmation: the token is valid only with this client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// RFC 8705 certificate-bound token confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// base64url (no padding) of the SHA-256 of the client certificate's DER.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

impl Confirmation {
    pub fn for_certificate(fingerprint: &Fingerprint) -> Confirmation {
        Confirmation { x5t_s256: B64.encode(fingerprint.digest()) }
    }
}

impl Claims {
    /// Claims for `sub` valid from now for `ttl`.
    pub fn new(sub: &str, groups: &[String], clusters: &[String], ttl: Duration) -> Claims {
        let now = unix_now();
        Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: sub.into(),
            groups: groups.to_vec(),
            clusters: clusters.to_vec(),
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
            jti: format!("{:032x}", rand::random::<u128>()),
            cnf: None,
        }
    }

    /// Checks that the user and every group would reach the API server as themselves.
    pub fn validate_identity(&self) -> Result<(), super::names::InvalidIdentity> {
        super::names::validate_identity("user", &self.sub)?;
        self.groups.iter().try_for_each(|group| super::names::validate_identity("group", group))
    }

    /// Whether this token lets its bearer reach `cluster`.
    pub fn allows_cluster(&self, cluster: &str) -> bool {
        self.clusters.iter().any(|c| c == cluster)
    }

    /// Whether a caller presenting `certificate` (or none) may use this token.
    pub fn bound_certificate_matches(&self, certificate: Option<&Fingerprint>) -> bool {
        match (&self.cnf, certificate) {
            (None, _) => true,
            (Some(cnf), Some(fp)) => cnf == &Confirmation::for_certificate(fp),
            (Some(_), None) => false,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Why a token was refused. The messages are shown to the caller in a 401 Status.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts of JSON, or too long.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header names an algorithm other than EdDSA (`none` included).
    #[error("token algorithm {0:?} is not accepted (only EdDSA)")]
    Algorithm(String),
    /// The signature does not verify with the issuer's public key (forged or tampered).
    #[error("token signature does not verify")]
    Signature,
    /// `iss` or `aud` is not tether's.
    #[error("token is not for tether (iss {iss:?}, aud {aud:?})")]
    WrongAudience { iss: String, aud: String },
    /// `exp` has passed.
    #[error("token expired {0} s ago")]
    Expired(u64),
    /// `iat` lies in the future beyond the clock skew.
    #[error("token is not valid yet (issued {0} s in the future)")]
    NotYetValid(u64),
    /// The user or a group is a name that would not reach the API server as itself.
    #[error("token names an unusable identity: {0}")]
    Identity(#[from] super::names::InvalidIdentity),
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
}

/// Signs tokens; holds the issuer's private key.
pub struct TokenIssuer {
    key: Ed25519KeyPair,
}

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    File(#[from] FileError),
    /// The PEM does not hold an Ed25519 key of the expected kind.
    #[error("{}: {problem}", path.display())]
    Invalid { path: std::path::PathBuf, problem: String },
}

fn pem_body(path: &Path, label: &str) -> Result<Vec<u8>, KeyError> {
    Ok(pem_bodies(path, label)?.remove(0))
}

/// Every `label` block of the PEM file at `path`, in order; at least one.
fn pem_bodies(path: &Path, label: &str) -> Result<Vec<Vec<u8>>, KeyError> {
    let text = files::load_text(path, "cannot read key (run `tether certs issuer` first)")?;
    let invalid = |problem: String| KeyError::Invalid { path: path.to_owned(), problem };
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut bodies = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find(&begin) {
        let start = at + begin.len();
        let stop = rest[start..].find(&end).ok_or_else(|| invalid(format!("unterminated {label} block")))? + start;
        let b64: String = rest[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
        bodies.push(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| invalid(format!("block {}: bad base64: {e}", bodies.len() + 1)))?,
        );
        rest = &rest[stop + end.len()..];
    }
    if bodies.is_empty() {
        return Err(invalid(format!("no {label} block")));
    }
    Ok(bodies)
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32-byte key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

impl TokenIssuer {
    /// Loads the issuer's private key (PKCS#8 PEM, as `tether certs issuer` writes it).
    pub fn load(path: &Path) -> Result<TokenIssuer, KeyError> {
        let der = pem_body(path, "PRIVATE KEY")?;
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|e| KeyError::Invalid { path: path.to_owned(), problem: format!("not an Ed25519 key: {e}") })?;
        Ok(TokenIssuer { key })
    }

    /// A signed token carrying `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = Header { alg: "EdDSA".into(), typ: Some("JWT".into()) };
        let signing_input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header).expect("header serialises")),
            B64.encode(serde_json::to_vec(claims).expect("claims serialise"))
        );
        let signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", B64.encode(signature.as_ref()))
    }

    /// The verifier for tokens of this issuer.
    pub fn verifier(&self) -> TokenVerifier {
        TokenVerifier { keys: vec![self.key.public_key().as_ref().to_vec()] }
    }
}

/// What `tether token` and `tether kubeconfig` ask to be minted.
#[derive(Debug, Clone)]
pub struct TokenRequest<'a> {
    /// The user name the API server will see.
    pub user: &'a str,
    pub groups: &'a [String],
    /// The clusters the token lets its bearer reach.
    pub clusters: &'a [String],
    pub ttl: Duration,
    /// Bind the token to this client certificate (RFC 8705).
    pub bind_cert: Option<&'a Path>,
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The issuer key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A cluster name is not a valid name.
    #[error(transparent)]
    Name(#[from] super::names::InvalidName),
    /// The user or a group would not reach the API server as itself.
    #[error("--user or --group: {0}")]
    Identity(#[from] super::names::InvalidIdentity),
    /// The certificate to bind to could not be read.
    #[error(transparent)]
    BindCert(#[from] FileError),
}

/// A token signed with the issuer key of the certificate directory `dir`.
pub fn mint(dir: &super::files::CertDir, request: &TokenRequest<'_>) -> Result<String, MintError> {
    for cluster in request.clusters {
        super::names::validate("cluster", cluster)?;
    }
    let mut claims = Claims::new(request.user, request.groups, request.clusters, request.ttl);
    claims.validate_identity()?;
    let issuer = TokenIssuer::load(&dir.issuer_key())?;
    if let Some(cert) = request.bind_cert {
        claims.cnf = Some(Confirmation::for_certificate(&super::certs::fingerprint_of_file(cert)?));
    }
    Ok(issuer.sign(&claims))
}

/// Verifies tokens; holds only the issuer's public keys. Several keys (PEM blocks one after the
/// other in `issuer.pub`) let an issuer key be rotated without refusing anyone: tokens signed
/// by any of them verify.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier").finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// Loads the issuer's public keys (SPKI PEM, as `tether certs issuer` writes them; one or
    /// more blocks).
    pub fn load(path: &Path) -> Result<TokenVerifier, KeyError> {
        let keys = pem_bodies(path, "PUBLIC KEY")?
            .into_iter()
            .enumerate()
            .map(|(i, der)| match der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
                Some(key) if key.len() == 32 => Ok(key.to_vec()),
                _ => Err(KeyError::Invalid {
                    path: path.to_owned(),
                    problem: format!("block {}: not an Ed25519 public key", i + 1),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TokenVerifier { keys })
    }

    /// The claims of `token` if it is well-formed, signed by the issuer, for tether, and valid
    /// at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        let malformed = TokenError::Malformed("expected three dot-separated parts");
        let (signing_input, signature) = token.rsplit_once('.').ok_or(malformed.clone())?;
        let (header, payload) = signing_input.split_once('.').ok_or(malformed.clone())?;
        if payload.contains('.') {
            return Err(malformed);
        }
        let header: Header = B64
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(TokenError::Malformed("header is not base64url JSON"))?;
        if header.alg != "EdDSA" {
            return Err(TokenError::Algorithm(header.alg));
        }
        let signature = B64.decode(signature).map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        if !self
            .keys
            .iter()
            .any(|key| UnparsedPublicKey::new(&ED25519, key).verify(signing_input.as_bytes(), &signature).is_ok())
        {
            return Err(TokenError::Signature);
        }
        let claims: Claims = B64
            .decode(payload)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or(TokenError::Malformed("claims are not base64url JSON of the expected shape"))?;
        if claims.iss != ISSUER || claims.aud != AUDIENCE {
            return Err(TokenError::WrongAudience { iss: claims.iss, aud: claims.aud });
        }
        if claims.exp <= now {
            return Err(TokenError::Expired(now - claims.exp));
        }
        if claims.iat > now + CLOCK_SKEW.as_secs() {
            return Err(TokenError::NotYetValid(claims.iat - now));
        }
        claims.validate_identity()?;
        Ok(claims)
    }
}

/// The bearer token of an `Authorization` header value, if it is one.
pub fn bearer(authorization: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(authorization).ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn issuer() -> TokenIssuer {
        let dir = tempfile::tempdir().unwrap();
        let certs = super::super::files::CertDir::new(dir.path());
        super::super::certs::issuer_in_dir(&certs, false).unwrap();
        let issuer = TokenIssuer::load(&certs.issuer_key()).unwrap();
        let verifier = TokenVerifier::load(&certs.issuer_pub()).unwrap();
        assert_eq!(verifier.keys, issuer.verifier().keys, "the public file matches the private key");
        issuer
    }

    fn alice(ttl: u64) -> Claims {
        Claims::new("alice", &["devs".into()], &["dev".into()], Duration::from_secs(ttl))
    }

    #[test]
    fn a_signed_token_verifies_and_carries_its_claims() {
        let issuer = issuer();
        let claims = alice(3600);
        let token = issuer.sign(&claims);
        assert_eq!(issuer.verifier().verify(&token, unix_now()).unwrap(), claims);
        assert!(claims.allows_cluster("dev") && !claims.allows_cluster("prod"));
    }

    #[test]
    fn refusals_say_why() {
        let issuer = issuer();
        let v = issuer.verifier();
        let now = unix_now();
        let token = issuer.sign(&alice(3600));

        assert_eq!(v.verify(&token, now + 3600), Err(TokenError::Expired(0)));
        let mut early = alice(3600);
        early.iat = now + 3600;
        assert!(matches!(v.verify(&issuer.sign(&early), now), Err(TokenError::NotYetValid(_))));

        // Tampered claims (a different user) keep the old signature.
        let parts: Vec<&str> = token.split('.').collect();
        let mut mallory = alice(3600);
        mallory.sub = "system:admin".into();
        let forged = format!("{}.{}.{}", parts[0], B64.encode(serde_json::to_vec(&mallory).unwrap()), parts[2]);
        assert_eq!(v.verify(&forged, now), Err(TokenError::Signature));

        // alg: none with no signature.
        let none = format!("{}.{}.", B64.encode(br#"{"alg":"none"}"#), parts[1]);
        assert_eq!(v.verify(&none, now), Err(TokenError::Algorithm("none".into())));

        // Another issuer's key.
        assert_eq!(self::issuer().verifier().verify(&token, now), Err(TokenError::Signature));

        // Wrong audience, properly signed.
        let mut other = alice(3600);
        other.aud = "kubernetes".into();
        assert!(matches!(v.verify(&issuer.sign(&other), now), Err(TokenError::WrongAudience { .. })));
    }

    #[test]
    fn several_issuer_keys_verify_during_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let (old_key, old_pub) = super::super::certs::new_issuer_keypair().unwrap();
        let (new_key, new_pub) = super::super::certs::new_issuer_keypair().unwrap();
        let (stranger_key, _) = super::super::certs::new_issuer_keypair().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let both = TokenVerifier::load(&write("both.pub", &format!("{old_pub}{new_pub}"))).unwrap();
        let now = unix_now();
        for (name, key) in [("old", &old_key), ("new", &new_key)] {
            let issuer = TokenIssuer::load(&write(name, key)).unwrap();
            assert!(both.verify(&issuer.sign(&alice(60)), now).is_ok(), "{name} key");
        }
        let stranger = TokenIssuer::load(&write("stranger", &stranger_key)).unwrap();
        assert_eq!(both.verify(&stranger.sign(&alice(60)), now), Err(TokenError::Signature));
        let broken =
            write("broken.pub", &format!("{old_pub}-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"));
        let err = TokenVerifier::load(&broken).unwrap_err().to_string();
        assert!(err.contains("broken.pub") && err.contains("block 2"), "{err}");
    }

    #[test]
    fn tokens_for_empty_or_padded_names_are_refused() {
        let issuer = issuer();
        for (user, groups) in
            [("", vec![]), (" alice", vec![]), ("alice", vec!["".to_string()]), ("alice", vec!["ops ".into()])]
        {
            let claims = Claims::new(user, &groups, &["dev".into()], Duration::from_secs(60));
            let refused = issuer.verifier().verify(&issuer.sign(&claims), unix_now());
            assert!(matches!(refused, Err(TokenError::Identity(_))), "{user:?} {groups:?}: {refused:?}");
        }
    }

    #[test]
    fn certificate_binding() {
        let fp = Fingerprint::of_der(b"cert");
        let mut claims = alice(60);
        assert!(claims.bound_certificate_matches(None));
        claims.cnf = Some(Confirmation::for_certificate(&fp));
        assert!(claims.bound_certificate_matches(Some(&fp)));
        assert!(!claims.bound_certificate_matches(None));
        assert!(!claims.bound_certificate_matches(Some(&Fingerprint::of_der(b"other"))));
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"\xff"), None);
    }

    proptest! {
        #[test]
        fn arbitrary_tokens_never_panic_or_verify(token in "\\PC{0,300}", dots in "[a-zA-Z0-9_-]{0,40}\\.[a-zA-Z0-9_-]{0,40}\\.[a-zA-Z0-9_-]{0,90}") {
            let v = TokenVerifier { keys: vec![vec![7; 32]] };
            prop_assert!(v.verify(&token, 0).is_err());
            prop_assert!(v.verify(&dots, 0).is_err());
        }

        #[test]
        fn any_flipped_byte_is_refused(index in any::<prop::sample::Index>(), bit in 0u8..8) {
            let issuer = issuer();
            let token = issuer.sign(&alice(3600));
            let mut bytes = token.clone().into_bytes();
            let i = index.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(tampered) = String::from_utf8(bytes) && tampered != token {
                prop_assert!(issuer.verifier().verify(&tampered, unix_now()).is_err());
            }
        }
    }
}
