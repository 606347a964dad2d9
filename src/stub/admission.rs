//! Whether a front-door request may go on to an agent, decided before any agent is involved:
//! its route (which cluster, which upstream path), the caller's token ([`TokenVerifier::authorize`]
//! with the client certificate of the caller's connection), an audit log that can be written (with
//! `--audit-required`), and the limits of requests in flight per user and per cluster. A refusal
//! is a `Status` with its code (404, 400, 401, 403, 503, 429) and
//! a reason label for `tether_refusals_total`. The audit record is filled in as the decision
//! goes, so a refused request is audited with whatever was known of it.

use std::net::SocketAddr;

use http::{Request, StatusCode};

use super::audit::Pending;
use super::limits::{Counted, LimitError};
use super::route::{self, RouteError};
use super::state::StubState;
use crate::identity::authorize::{Channel, Refusal};
use crate::identity::fingerprint::Fingerprint;
use crate::identity::token::{self, Claims, TokenVerifier};

/// The front-door connection a request came on.
#[derive(Debug)]
pub struct Caller {
    pub remote: SocketAddr,
    /// Fingerprint of the client certificate the connection presented, if any (service callers).
    pub certificate: Option<Fingerprint>,
}

/// A request that may go on to an agent of its cluster.
#[derive(Debug)]
pub struct Admitted {
    /// The user the token names.
    pub user: String,
    pub cluster: String,
    /// Path and query as the cluster's API server is to see them.
    pub path_and_query: String,
    /// The caller's token, which the agent verifies again.
    pub token: String,
    /// Counted against the user's and the cluster's limits until dropped.
    pub counted: Counted,
}

/// Why a request may not go on.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Not a `/clusters/{cluster}/...` path, or not a valid cluster name.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// No `Authorization: Bearer` header.
    #[error(
        "no bearer token: send `Authorization: Bearer <token>` (get one with `tether token` or `tether kubeconfig`)"
    )]
    NoToken,
    /// The token does not let this caller reach this cluster.
    #[error(transparent)]
    Refusal(#[from] Refusal),
    /// The user or the cluster has too many requests in flight.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// `--audit-required`, and the audit log cannot be written.
    #[error("the stub cannot write its audit log (a full disk?), and audit is required: retry later")]
    AuditUnavailable,
}

impl Refused {
    /// The `reason` label of `tether_refusals_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Route(RouteError::NotClusterPath(_)) => "not_a_cluster_path",
            Refused::Route(RouteError::BadCluster(_)) => "bad_cluster_name",
            Refused::NoToken => "no_token",
            Refused::Refusal(Refusal::Token(_)) => "bad_token",
            Refused::Refusal(Refusal::CertificateBinding { .. }) => "certificate_binding",
            Refused::Refusal(Refusal::ClusterNotAllowed { .. }) => "cluster_not_allowed",
            Refused::Limit(LimitError::User { .. }) => "limit_user",
            Refused::Limit(LimitError::Cluster { .. }) => "limit_cluster",
            Refused::Limit(LimitError::Connection { .. }) => "limit_connection",
            Refused::AuditUnavailable => "audit_unavailable",
        }
    }

    pub fn code(&self) -> StatusCode {
        match self {
            Refused::Route(RouteError::NotClusterPath(_)) => StatusCode::NOT_FOUND,
            Refused::Route(RouteError::BadCluster(_)) => StatusCode::BAD_REQUEST,
            Refused::NoToken => StatusCode::UNAUTHORIZED,
            Refused::Refusal(refusal) => refusal.status(),
            Refused::Limit(_) => StatusCode::TOO_MANY_REQUESTS,
            Refused::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Decides whether `req` from `caller` may go on, filling in `audit` as it learns who and where.
pub fn admit<B>(
    state: &StubState,
    caller: &Caller,
    req: &Request<B>,
    audit: &mut Pending,
) -> Result<Admitted, Refused> {
    let route = route::route(req.uri().path(), req.uri().query())?;
    let cluster = route.cluster.to_owned();
    audit.record.cluster = Some(cluster.clone());

    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| token::bearer(v.as_bytes()))
        .ok_or(Refused::NoToken)?
        .to_owned();
    let claims = authorize(&state.tokens, &token, &cluster, caller, audit)?;
    audit.cluster_vouched = true;
    if state.audit.unavailable() {
        return Err(Refused::AuditUnavailable);
    }
    let counted = state.limits.admit(&claims.sub, &cluster)?;
    Ok(Admitted { user: claims.sub, cluster, path_and_query: route.path_and_query, token, counted })
}

/// The token's verdict. The user and groups go into the audit record as soon as the token
/// verifies, also when the request is refused after that.
fn authorize(
    tokens: &TokenVerifier,
    token: &str,
    cluster: &str,
    caller: &Caller,
    audit: &mut Pending,
) -> Result<Claims, Refusal> {
    let channel = Channel::FrontDoor { certificate: caller.certificate.as_ref() };
    let result = tokens.authorize(token, token::unix_now(), cluster, channel);
    if let Some(claims) = result.as_ref().map_or_else(Refusal::claims, Some) {
        tracing::Span::current().record("user", claims.sub.as_str());
        audit.record.user = Some(claims.sub.clone());
        audit.record.groups = claims.groups.clone();
    }
    result
}
