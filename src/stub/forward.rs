//! One front-door request, end to end on the stub: route it to a cluster, authenticate the
//! caller's token and check that it may reach that cluster, pick the cluster's least busy agent
//! connection, open a stream, send the head (with the token as the credential the agent checks
//! again) and stream the body; then turn the agent's response back into the HTTP response, or
//! after a `101` into a raw byte pipe. The caller going away resets the stream, which the agent
//! turns into an aborted upstream request. Every request leaves one audit line.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::transport::{Link, RecvHalf, SendHalf};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::audit::Pending;
use super::limits::{Admitted, LimitError};
use super::registry::{InFlight, Pick};
use super::route::{self, RouteError};
use super::{StubState, stalled};
use crate::bridge::{self, Body, PumpError};
use crate::identity::fingerprint::Fingerprint;
use crate::identity::token::{self, TokenError};
use crate::status;
use crate::wire::codes::AppCode;
use crate::wire::frame::{RequestHead, ResponseHead};
use crate::wire::io::{WireError, read_frame, write_frame};

/// Response header carrying the request id, so one request can be followed in both ends' logs.
pub const REQUEST_ID_HEADER: &str = "x-tether-request-id";

/// The front-door connection a request came on.
#[derive(Debug)]
pub struct Caller {
    pub remote: SocketAddr,
    /// Fingerprint of the client certificate the connection presented, if any (service callers).
    pub certificate: Option<Fingerprint>,
}

/// Why a request got no response from an agent.
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(
        "no bearer token: send `Authorization: Bearer <token>` (get one with `tether token` or `tether kubeconfig`)"
    )]
    NoToken,
    #[error("{0}")]
    BadToken(#[from] TokenError),
    #[error("the token is bound to a client certificate that this connection did not present")]
    CertificateBinding,
    #[error("user {user:?} may not reach cluster {cluster:?} through tether")]
    ClusterNotAllowed { user: String, cluster: String },
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error("cluster {0:?} is not registered with this stub")]
    UnknownCluster(String),
    #[error("no agent of cluster {0:?} is connected")]
    NoAgent(String),
    #[error("agent of cluster {cluster:?} failed before answering: {source}")]
    Stream {
        cluster: String,
        #[source]
        source: WireError,
    },
}

impl ForwardError {
    /// The `reason` label of `tether_refusals_total`.
    fn reason(&self) -> &'static str {
        match self {
            ForwardError::Route(RouteError::NotClusterPath(_)) => "not_a_cluster_path",
            ForwardError::Route(RouteError::BadCluster(_)) => "bad_cluster_name",
            ForwardError::NoToken => "no_token",
            ForwardError::BadToken(_) => "bad_token",
            ForwardError::CertificateBinding => "certificate_binding",
            ForwardError::ClusterNotAllowed { .. } => "cluster_not_allowed",
            ForwardError::Limit(LimitError::User { .. }) => "limit_user",
            ForwardError::Limit(LimitError::Cluster { .. }) => "limit_cluster",
            ForwardError::Limit(LimitError::Connection { .. }) => "limit_connection",
            ForwardError::UnknownCluster(_) => "unknown_cluster",
            ForwardError::NoAgent(_) => "no_agent",
            ForwardError::Stream { .. } => "agent_stream_failed",
        }
    }

    fn code(&self) -> StatusCode {
        match self {
            ForwardError::Route(RouteError::NotClusterPath(_)) => StatusCode::NOT_FOUND,
            ForwardError::Route(RouteError::BadCluster(_)) => StatusCode::BAD_REQUEST,
            ForwardError::NoToken | ForwardError::BadToken(_) | ForwardError::CertificateBinding => {
                StatusCode::UNAUTHORIZED
            }
            ForwardError::ClusterNotAllowed { .. } => StatusCode::FORBIDDEN,
            ForwardError::Limit(_) => StatusCode::TOO_MANY_REQUESTS,
            ForwardError::UnknownCluster(_) | ForwardError::NoAgent(_) => StatusCode::SERVICE_UNAVAILABLE,
            ForwardError::Stream { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

fn new_request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The Kubernetes-style verb, for the audit log: a GET with `watch=true` is a watch.
fn verb(req: &Request<Incoming>) -> String {
    let watch = req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    if watch { "watch".into() } else { req.method().as_str().to_ascii_lowercase() }
}

/// The hyper service of the front door.
pub async fn handle(
    state: Arc<StubState>,
    caller: Arc<Caller>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let request_id = new_request_id();
    let mut audit =
        Pending::new(state.audit.clone(), state.metrics.clone(), &request_id, &verb(&req), req.uri().path());
    let span = tracing::info_span!(
        "request", id = %request_id, method = %req.method(), path = %req.uri().path(), remote = %caller.remote, user = tracing::field::Empty
    );
    let response = async {
        match forward(&state, &caller, req, &request_id, &mut audit).await {
            Ok(response) => response,
            Err(e) => {
                tracing::info!(status = e.code().as_u16(), "{e}");
                state.metrics.refusals.inc(&[e.reason()]);
                status::response(e.code(), e.to_string())
            }
        }
    }
    .instrument(span)
    .await;
    audit.record.status = response.status().as_u16();
    let (mut parts, body) = response.into_parts();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        parts.headers.insert(REQUEST_ID_HEADER, value);
    }
    // The audit line is written when the body is done (or dropped), with its size.
    let body = body
        .map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                audit.count_bytes(data.len());
            }
            frame
        })
        .boxed_unsync();
    Ok(Response::from_parts(parts, body))
}

async fn forward(
    state: &StubState,
    caller: &Caller,
    req: Request<Incoming>,
    request_id: &str,
    audit: &mut Pending,
) -> Result<Response<Body>, ForwardError> {
    let route = route::route(req.uri().path(), req.uri().query())?;
    let cluster = route.cluster.to_owned();
    audit.record.cluster = Some(cluster.clone());

    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| token::bearer(v.as_bytes()))
        .ok_or(ForwardError::NoToken)?
        .to_owned();
    let claims = state.tokens.verify(&token, token::unix_now())?;
    tracing::Span::current().record("user", claims.sub.as_str());
    audit.record.user = Some(claims.sub.clone());
    audit.record.groups = claims.groups.clone();
    if !claims.bound_certificate_matches(caller.certificate.as_ref()) {
        return Err(ForwardError::CertificateBinding);
    }
    if !claims.allows_cluster(&cluster) {
        return Err(ForwardError::ClusterNotAllowed { user: claims.sub, cluster });
    }
    audit.cluster_vouched = true;
    // Counted until the response body ends, or an upgraded connection closes.
    let admitted = state.limits.admit(&claims.sub, &cluster)?;
    let path_and_query = route.path_and_query;
    send_to_agent(state, req, request_id, token, path_and_query, cluster, admitted, audit).await
}

/// Sends the request on a stream of one of the cluster's agent connections and returns the
/// response as it starts arriving. `admitted` and the connection's count are held until the
/// response body ends or the upgraded connection closes.
#[allow(clippy::too_many_arguments)]
async fn send_to_agent(
    state: &StubState,
    req: Request<Incoming>,
    request_id: &str,
    token: String,
    path_and_query: String,
    cluster: String,
    admitted: Admitted,
    audit: &mut Pending,
) -> Result<Response<Body>, ForwardError> {
    let upgrade = bridge::is_upgrade(req.headers());
    let mut headers = bridge::headers_to_wire(req.headers(), upgrade);
    // The token travels as the credential, never as a header the API server could see.
    headers.retain(|h| h.name != "authorization");
    let head = RequestHead {
        request_id: request_id.to_owned(),
        method: req.method().as_str().to_owned(),
        path_and_query,
        headers,
        credential: Some(token),
    };

    // A request without a body whose method is idempotent (GET, HEAD, OPTIONS: reads and
    // watches) can be sent again: if its stream fails before any response byte, it is retried
    // once on another connection of the cluster (the other replica).
    let replayable = !upgrade && is_idempotent(req.method()) && req.body().is_end_stream();
    let mut failed_link = None;
    loop {
        let in_flight = pick(state, &cluster, failed_link)?;
        let link = in_flight.0.clone();
        audit.record.agent = Some(link.name.clone());
        tracing::debug!(connection = link.id, agent = %link.name, "routing");
        let stream_err = |source| ForwardError::Stream { cluster: cluster.clone(), source };

        if replayable {
            match send_head_and_wait(&link.link, &head, true).await {
                Ok((_send, recv, response_head)) => {
                    tracing::debug!(status = response_head.status, "response head");
                    return Ok(response_from(
                        response_head,
                        stalled::response_body(recv, (in_flight, admitted), state.stalled_reader_timeout),
                    ));
                }
                Err(e) if failed_link.is_none() => {
                    tracing::warn!(connection = link.id, agent = %link.name, error = %e, "stream failed before any response; retrying on another connection");
                    failed_link = Some(link.id);
                    continue;
                }
                Err(e) => return Err(stream_err(e)),
            }
        }

        let (mut send, mut recv) = link.link.open_stream().await.map_err(|e| stream_err(WireError::Io(e)))?;
        write_frame(&mut send, &head).await.map_err(stream_err)?;

        if upgrade {
            let timeout = state.stalled_reader_timeout;
            return upgrade_response(req, send, recv, (in_flight, admitted), timeout).await.map_err(stream_err);
        }

        // The request body flows on its own task, so a large upload and the response overlap.
        // Dropping `cancel_on_drop` (the caller went away, or the response is done) resets the
        // request side if it is still going.
        let cancel = CancellationToken::new();
        tokio::spawn(pump_request(req.into_body(), send, cancel.clone()).in_current_span());
        let cancel_on_drop = cancel.drop_guard();

        let response_head: ResponseHead = read_frame(&mut recv).await.map_err(stream_err)?;
        tracing::debug!(status = response_head.status, "response head");
        return Ok(response_from(
            response_head,
            stalled::response_body(recv, (cancel_on_drop, in_flight, admitted), state.stalled_reader_timeout),
        ));
    }
}

fn is_idempotent(method: &http::Method) -> bool {
    matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS)
}

/// The least busy routable connection of `cluster`, other than `excluding` when there is one.
fn pick(state: &StubState, cluster: &str, excluding: Option<u64>) -> Result<InFlight, ForwardError> {
    let limit = state.limits.limits().per_connection;
    match state.registry.pick(cluster, excluding, limit) {
        Pick::Link(in_flight) => return Ok(in_flight),
        Pick::Full { connections } => {
            return Err(ForwardError::Limit(LimitError::Connection {
                cluster: cluster.to_owned(),
                connections,
                limit,
            }));
        }
        Pick::NoLink => {}
    }
    Err(if state.whitelist.get().has_cluster(cluster) {
        ForwardError::NoAgent(cluster.to_owned())
    } else {
        ForwardError::UnknownCluster(cluster.to_owned())
    })
}

/// Opens a stream, sends `head` (finishing the request side when `finish`), and waits for the
/// response head. Every failure here happened before any response byte.
async fn send_head_and_wait(
    link: &Link,
    head: &RequestHead,
    finish: bool,
) -> Result<(SendHalf, RecvHalf, ResponseHead), WireError> {
    let (mut send, mut recv) = link.open_stream().await.map_err(WireError::Io)?;
    write_frame(&mut send, head).await?;
    if finish {
        send.finish();
    }
    let response_head = read_frame(&mut recv).await?;
    Ok((send, recv, response_head))
}

/// An upgrade request: no body; after the agent's `101` the stream becomes a raw pipe to the
/// caller's upgraded connection.
async fn upgrade_response(
    mut req: Request<Incoming>,
    mut send: SendHalf,
    mut recv: RecvHalf,
    counted: (InFlight, Admitted),
    stalled_reader_timeout: Option<Duration>,
) -> Result<Response<Body>, WireError> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let head: ResponseHead = read_frame(&mut recv).await?;
    if head.status != StatusCode::SWITCHING_PROTOCOLS.as_u16() {
        send.finish();
        return Ok(response_from(head, stalled::response_body(recv, counted, stalled_reader_timeout)));
    }
    tokio::spawn(
        async move {
            match on_upgrade.await {
                Ok(upgraded) => bridge::pipe(hyper_util::rt::TokioIo::new(upgraded), send, recv).await,
                Err(e) => tracing::debug!(error = %e, "caller's upgrade failed"),
            }
            drop(counted);
            tracing::debug!("upgraded stream closed");
        }
        .in_current_span(),
    );
    let mut response = Response::new(bridge::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *response.headers_mut() = bridge::headers_from_wire(&head.headers, true);
    Ok(response)
}

fn response_from(head: ResponseHead, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    *response.headers_mut() = bridge::headers_from_wire(&head.headers, false);
    response
}

async fn pump_request(body: Incoming, mut send: SendHalf, cancel: CancellationToken) {
    let result = tokio::select! {
        result = bridge::pump_body(body, &mut send) => Some(result),
        _ = cancel.cancelled() => None,
    };
    match result {
        Some(Ok(_)) => send.finish(),
        Some(Err(PumpError::Sink(e))) => tracing::debug!(error = %e, "agent stopped reading the request body"),
        Some(Err(PumpError::Source(e))) => {
            tracing::debug!(error = %e, "caller's request body failed");
            send.reset(AppCode::Cancelled);
        }
        None => {
            send.reset(AppCode::Cancelled);
        }
    }
}
