//! The one decision whether a caller may reach a cluster, made the same way by the stub at its
//! front door and by the agent again (defense in depth: a compromised stub cannot invent
//! callers): the token verifies with the issuer's public key, it is bound to no client
//! certificate or to the one the caller's connection presented, and it names the cluster.

use http::StatusCode;

use super::fingerprint::Fingerprint;
use super::token::{Claims, TokenError, TokenVerifier};

/// Where a token arrived, which says what can be known of the caller's connection.
#[derive(Debug, Clone, Copy)]
pub enum Channel<'a> {
    /// The stub's front door: the client certificate the caller's connection presented, if any.
    FrontDoor { certificate: Option<&'a Fingerprint> },
    /// An agent, through the tunnel: the stub checked a certificate binding on the caller's
    /// connection, which the agent cannot see.
    Tunnel,
}

/// Why a caller may not go on. The messages are shown to the caller in a `Status`; the claims
/// of a token that verified are kept for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The token is missing its signature, forged, expired, or not for tether.
    #[error("{0}")]
    Token(#[from] TokenError),
    /// The token is bound to a client certificate (RFC 8705) that the connection did not present.
    #[error("the token is bound to a client certificate that this connection did not present")]
    CertificateBinding { claims: Box<Claims> },
    /// The token is good, but does not name the cluster.
    #[error("user {:?} may not reach cluster {cluster:?} through tether", claims.sub)]
    ClusterNotAllowed { claims: Box<Claims>, cluster: String },
}

impl Refusal {
    /// 401 when the caller is not authenticated, 403 when it is but may not reach the cluster.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Token(_) | Refusal::CertificateBinding { .. } => StatusCode::UNAUTHORIZED,
            Refusal::ClusterNotAllowed { .. } => StatusCode::FORBIDDEN,
        }
    }

    /// The claims of the token, if it verified.
    pub fn claims(&self) -> Option<&Claims> {
        match self {
            Refusal::Token(_) => None,
            Refusal::CertificateBinding { claims } | Refusal::ClusterNotAllowed { claims, .. } => Some(claims),
        }
    }
}

impl TokenVerifier {
    /// The caller's claims if `token` lets it reach `cluster` at `now` (Unix seconds) over
    /// `channel`. The checks run in this order, so that a token used without the certificate it
    /// is bound to reveals nothing of the clusters it names.
    pub fn authorize(&self, token: &str, now: u64, cluster: &str, channel: Channel<'_>) -> Result<Claims, Refusal> {
        let claims = self.verify(token, now)?;
        if let Channel::FrontDoor { certificate } = channel
            && !claims.bound_certificate_matches(certificate)
        {
            return Err(Refusal::CertificateBinding { claims: Box::new(claims) });
        }
        if !claims.allows_cluster(cluster) {
            return Err(Refusal::ClusterNotAllowed { claims: Box::new(claims), cluster: cluster.to_owned() });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::identity::token::{Confirmation, TokenIssuer, unix_now};

    fn issuer() -> (TokenIssuer, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let certs = crate::identity::files::CertDir::new(dir.path());
        crate::identity::certs::issuer_in_dir(&certs, false).unwrap();
        (TokenIssuer::load(&certs.issuer_key()).unwrap(), dir)
    }

    #[test]
    fn stub_and_agent_decide_alike() {
        let (issuer, _dir) = issuer();
        let verifier = issuer.verifier();
        let now = unix_now();
        let claims = Claims::new("alice", &[], &["dev".into()], Duration::from_secs(60));
        let token = issuer.sign(&claims);
        for channel in [Channel::FrontDoor { certificate: None }, Channel::Tunnel] {
            assert_eq!(verifier.authorize(&token, now, "dev", channel).unwrap(), claims);
            let refused = verifier.authorize(&token, now, "prod", channel).unwrap_err();
            assert_eq!(refused.status(), StatusCode::FORBIDDEN);
            assert_eq!(refused.to_string(), r#"user "alice" may not reach cluster "prod" through tether"#);
            let expired = verifier.authorize(&token, now + 61, "dev", channel).unwrap_err();
            assert!(matches!(expired, Refusal::Token(TokenError::Expired(_))));
            assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
        }
    }

    #[test]
    fn a_bound_token_without_its_certificate_reveals_nothing_at_the_front_door() {
        let (issuer, _dir) = issuer();
        let verifier = issuer.verifier();
        let fingerprint = Fingerprint::of_der(b"service certificate");
        let mut claims = Claims::new("svc", &[], &["dev".into()], Duration::from_secs(60));
        claims.cnf = Some(Confirmation::for_certificate(&fingerprint));
        let token = issuer.sign(&claims);
        let now = unix_now();
        let without = Channel::FrontDoor { certificate: None };
        let refused = verifier.authorize(&token, now, "prod", without).unwrap_err();
        assert!(matches!(refused, Refusal::CertificateBinding { .. }), "{refused:?}");
        assert_eq!(refused.claims().map(|c| c.sub.as_str()), Some("svc"), "kept for the audit log");
        let with = Channel::FrontDoor { certificate: Some(&fingerprint) };
        assert!(verifier.authorize(&token, now, "dev", with).is_ok());
        assert!(verifier.authorize(&token, now, "dev", Channel::Tunnel).is_ok());
    }
}
