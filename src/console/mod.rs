//! `tether console`: hands users and services short-lived tether tokens, the hub's policy
//! deciding. It is the one process that holds `issuer.key` online, so that no person needs it.
//!
//! `POST /v1/token` with `{"clusters": [...]}` and the caller's hub credential as a bearer
//! token: the hub's API server says who that is (`TokenReview`) and, per cluster, whether they
//! may reach it ([`review`]); the answer is a token for the allowed clusters with the user and
//! groups of the review, or a Kubernetes `Status`: 400 for a bad body, 401 for a credential the
//! hub does not know, 403 naming the clusters refused when none is allowed, 503 when the hub's
//! API server does not answer. A service may instead connect with a tether service certificate
//! (`tether certs service`): it is then the hub user `tether:service:NAME` for the access
//! reviews, and its token is bound to that certificate (RFC 8705). Every decision is one JSON
//! line in the audit log ([`audit`]).
//! `/healthz`, `/readyz` and `/metrics` are on `--admin-listen`, as for stub and agent.
//!
//! HTTPS with the stub's certificate from the certificate directory (the console runs beside
//! the stub, under a name in that certificate), or `--tls-cert`/`--tls-key`.

pub mod audit;
pub mod cache;
pub mod credential;
pub mod https;
pub mod login;
pub mod request;
pub mod review;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Readiness, Site};
use crate::bridge::{self, Body};
use crate::identity::certs;
use crate::identity::files::{self, CertDir};
use crate::identity::fingerprint::Fingerprint;
use crate::identity::tls;
use crate::identity::token::{self, Claims, Confirmation, TokenIssuer};
use crate::metrics::{CounterVec, Text};
use audit::{AuditTarget, Decision, DecisionLog};
use request::{BadRequest, TokenResponse};
use review::{Caller, Reviewer};

/// The hub user a service with a tether service certificate is, for the hub's RBAC:
/// `tether:service:NAME`, in group [`SERVICES_GROUP`].
pub const SERVICE_USER_PREFIX: &str = "tether:service:";
pub const SERVICES_GROUP: &str = "tether:services";

/// The default lifetime of a token the console mints.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10 * 60);
/// The longest lifetime `--ttl` may set: a console token is meant to be refreshed.
pub const MAX_TTL: Duration = Duration::from_secs(12 * 3600);
/// A TLS handshake or a request that takes longer is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What `tether console` needs.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// Certificate directory: `issuer.key`, the CA, and (unless `tls` says) the stub's
    /// certificate and key.
    pub certs: CertDir,
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    /// The hub's kubeconfig; None: in-cluster or the default kubeconfig.
    pub hub_kubeconfig: Option<PathBuf>,
    pub ttl: Duration,
    /// Certificate and key to serve HTTPS with, instead of the stub's.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub audit: AuditTarget,
    /// The hub's OpenID Connect provider, for `tether login` (`GET /v1/login`).
    pub login: Option<login::LoginConfig>,
}

/// Counts of the console's decisions, for `/metrics`.
#[derive(Debug)]
struct ConsoleMetrics {
    /// outcome: minted, forbidden, unauthenticated, bad_request, unavailable
    decisions: CounterVec,
}

impl ConsoleMetrics {
    fn render(&self) -> String {
        let mut text = Text::default();
        self.decisions.render(&mut text, "tether_console_decisions_total", "Token requests decided, by outcome.");
        text.into_string()
    }
}

struct Shared {
    login: Option<login::LoginConfig>,
    issuer: TokenIssuer,
    reviewer: Reviewer,
    ttl: Duration,
    log: DecisionLog,
    metrics: ConsoleMetrics,
}

/// A console bound to its listeners.
pub struct Console {
    listener: TcpListener,
    admin: Option<TcpListener>,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
}

impl Console {
    /// Loads the keys, builds the hub client and binds the listeners; fails with what is wrong.
    pub async fn bind(config: ConsoleConfig) -> anyhow::Result<Console> {
        anyhow::ensure!(
            config.ttl >= Duration::from_secs(1) && config.ttl <= MAX_TTL,
            "--ttl {}: give a lifetime of at least 1s and at most {}",
            humantime::format_duration(config.ttl),
            humantime::format_duration(MAX_TTL)
        );
        let dir = &config.certs;
        let issuer = TokenIssuer::load(&dir.issuer_key())
            .context("the console signs tokens with the issuer key (tether certs issuer writes it)")?;
        let ca = files::load_certs(&dir.ca_cert())?;
        let (cert, key) = config.tls.clone().unwrap_or_else(|| (dir.stub_cert(), dir.stub_key()));
        let tls = tls::front_door(&ca, files::load_certs(&cert)?, files::load_key(&key)?)?;
        let (client, server) = crate::hub::client::hub_client(config.hub_kubeconfig.as_deref()).await?;
        let log =
            DecisionLog::open(&config.audit).with_context(|| format!("opening the audit log {:?}", config.audit))?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding the console's HTTPS listener on {}", config.listen))?;
        let admin = crate::admin::bind(config.admin_listen).await?;
        let shared = Arc::new(Shared {
            login: config.login.clone(),
            issuer,
            reviewer: Reviewer::new(client, server),
            ttl: config.ttl,
            log,
            metrics: ConsoleMetrics { decisions: CounterVec::new(&["outcome"]) },
        });
        Ok(Console { listener, admin, tls: Arc::new(tls), shared })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn admin_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.admin.as_ref().map(TcpListener::local_addr)
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let Console { listener, admin, tls, shared } = self;
        if let Some(admin) = admin {
            let for_metrics = shared.clone();
            let site = Site {
                readiness: Readiness::ready(),
                not_ready: "shutting down",
                ready_detail: None,
                clusters: None,
                metrics: Arc::new(move || for_metrics.metrics.render()),
            };
            tokio::spawn(admin::serve(admin, site, shutdown.clone()));
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        crate::accept::accept_loop(listener, shutdown, "console", move |tcp, remote| {
            let (acceptor, shared) = (acceptor.clone(), shared.clone());
            tokio::spawn(async move {
                let Ok(Ok(stream)) = tokio::time::timeout(REQUEST_TIMEOUT, acceptor.accept(tcp)).await else {
                    return tracing::debug!(%remote, "console TLS handshake failed or timed out");
                };
                // A client certificate, verified against the tether CA in the handshake.
                let certificate = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
                let service = service_fn(move |req: Request<Incoming>| {
                    let (shared, certificate) = (shared.clone(), certificate.clone());
                    async move {
                        let answer =
                            tokio::time::timeout(REQUEST_TIMEOUT, handle(&shared, req, remote, certificate)).await;
                        Ok::<_, std::convert::Infallible>(answer.unwrap_or_else(|_| {
                            crate::status::response(StatusCode::REQUEST_TIMEOUT, "the request took too long")
                        }))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        })
        .await
    }
}

/// One request to the console.
async fn handle(
    shared: &Shared,
    req: Request<Incoming>,
    remote: SocketAddr,
    certificate: Option<CertificateDer<'static>>,
) -> Response<Body> {
    if req.uri().path() == "/v1/login" && req.method() == Method::GET {
        // Which provider and client `tether login` signs in with: public, no credential.
        return match &shared.login {
            Some(config) => {
                let mut response = Response::new(bridge::full(serde_json::to_vec(config).expect("serializable")));
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
                response
            }
            None => crate::status::response(
                StatusCode::NOT_FOUND,
                "this console has no sign-in for people (it runs without --oidc-issuer): bring a hub credential",
            ),
        };
    }
    if req.uri().path() != "/v1/token" {
        return crate::status::response(StatusCode::NOT_FOUND, "the console answers POST /v1/token and GET /v1/login");
    }
    if req.method() != Method::POST {
        return crate::status::response(StatusCode::METHOD_NOT_ALLOWED, "use POST /v1/token");
    }
    let credential =
        req.headers().get(http::header::AUTHORIZATION).and_then(|v| token::bearer(v.as_bytes())).map(str::to_owned);
    let mut decision = Decision::new(remote);
    let answer = decide(shared, credential, certificate, req.into_body(), &mut decision).await;
    let outcome = match answer.status() {
        StatusCode::OK => "minted",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::BAD_REQUEST => "bad_request",
        _ => "unavailable",
    };
    shared.metrics.decisions.inc(&[outcome]);
    decision.status = answer.status().as_u16();
    shared.log.write(&decision);
    answer
}

async fn decide(
    shared: &Shared,
    credential: Option<String>,
    certificate: Option<CertificateDer<'static>>,
    body: Incoming,
    decision: &mut Decision,
) -> Response<Body> {
    use crate::status::response;
    // Who asks: a person (or anything with a hub credential) by bearer token, which the hub's
    // API server must recognise; else a service by its tether service certificate, whose
    // token is then bound to that certificate.
    let service = match (&credential, &certificate) {
        (Some(_), _) => None,
        (None, Some(der)) => match certs::service_name_of(der) {
            Some(name) => Some((name, Fingerprint::of_der(der))),
            None => {
                decision.reason = "a client certificate that names no service".into();
                return response(
                    StatusCode::UNAUTHORIZED,
                    "this client certificate is not a tether service certificate (tether certs service); send a hub \
                     credential as Authorization: Bearer instead",
                );
            }
        },
        (None, None) => {
            decision.reason = "no credential".into();
            return response(
                StatusCode::UNAUTHORIZED,
                "no credential: send your hub credential (a token the hub's API server accepts) as Authorization: \
                 Bearer, or connect with a tether service certificate",
            );
        }
    };
    let body = match Limited::new(body, request::MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            decision.reason = format!("body: {e}");
            return response(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body (at most {} bytes): {e}", request::MAX_BODY),
            );
        }
    };
    let asked = match request::parse(&body) {
        Ok(asked) => asked.clusters,
        Err(e) => {
            decision.reason = e.to_string();
            return response(StatusCode::BAD_REQUEST, bad_request(&e));
        }
    };
    decision.asked = asked.clone();
    let caller = match (&service, credential) {
        (Some((name, _)), _) => {
            Caller { user: format!("{SERVICE_USER_PREFIX}{name}"), groups: vec![SERVICES_GROUP.into()] }
        }
        (None, Some(credential)) => match shared.reviewer.who(&credential).await {
            Ok(Ok(caller)) => caller,
            Ok(Err(why)) => {
                decision.reason = format!("TokenReview: {why}");
                return response(
                    StatusCode::UNAUTHORIZED,
                    format!("the hub's API server does not know this credential: {why}"),
                );
            }
            Err(e) => return unavailable(decision, e),
        },
        (None, None) => unreachable!("refused above"),
    };
    decision.user = Some(caller.user.clone());
    decision.groups = caller.groups.clone();
    let (mut allowed, mut refused) = (Vec::new(), Vec::new());
    for cluster in asked {
        match shared.reviewer.may_reach(&caller, &cluster).await {
            Ok((true, _)) => allowed.push(cluster),
            Ok((false, _)) => refused.push(cluster),
            Err(e) => return unavailable(decision, e),
        }
    }
    decision.allowed = allowed.clone();
    decision.refused = refused.clone();
    if allowed.is_empty() {
        decision.reason = "no cluster allowed".into();
        return response(StatusCode::FORBIDDEN, forbidden(&caller, &refused));
    }
    let mut claims = Claims::new(&caller.user, &caller.groups, &allowed, shared.ttl);
    if let Some((_, fingerprint)) = &service {
        // Good only on a connection that presents the same certificate (RFC 8705).
        claims.cnf = Some(Confirmation::for_certificate(fingerprint));
    }
    if let Err(e) = claims.validate_identity() {
        decision.reason = e.to_string();
        return response(StatusCode::FORBIDDEN, format!("no token for this identity: {e}"));
    }
    let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp);
    let answer = TokenResponse {
        token: shared.issuer.sign(&claims),
        clusters: allowed,
        refused,
        user: caller.user,
        groups: caller.groups,
        expiration_timestamp: humantime::format_rfc3339_seconds(expires).to_string(),
    };
    decision.jti = Some(claims.jti);
    let mut response = Response::new(bridge::full(serde_json::to_vec(&answer).expect("serializable")));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

fn bad_request(e: &BadRequest) -> String {
    format!("{e} (POST /v1/token with {{\"clusters\": [\"NAME\", ...]}})")
}

fn forbidden(caller: &Caller, refused: &[String]) -> String {
    format!(
        "user {:?} may not reach cluster(s) {}: the hub's RBAC grants no verb {:?} on {}.{} with that name \
         (an admin grants it with a RoleBinding in the hub)",
        caller.user,
        refused.join(", "),
        review::VERB,
        review::RESOURCE,
        review::GROUP
    )
}

fn unavailable(decision: &mut Decision, e: review::Unanswered) -> Response<Body> {
    let words = crate::errors::chain(&e);
    tracing::warn!(error = %words, "the hub's API server did not answer a review");
    decision.reason = words.clone();
    crate::status::response(StatusCode::SERVICE_UNAVAILABLE, format!("cannot decide now: {words}"))
}
