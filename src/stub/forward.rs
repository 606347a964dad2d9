//! One front-door request, carried: once [`super::admission`] has let it go on, pick the
//! cluster's least busy agent connection, open a stream, send the head (with the caller's token
//! as the credential the agent checks again) and stream the body; then turn the agent's response
//! back into the HTTP response, or after a `101` into a raw byte pipe. A read without a body
//! whose stream fails before any response byte is sent again on another connection. The caller
//! going away resets the stream, which the agent turns into an aborted upstream request. Every
//! request leaves one audit line.

use std::convert::Infallible;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::admission::{self, Admitted, Caller, Refused};
use super::audit::Pending;
use super::hop::{Hop, InFlight, Pick};
use super::limits::{Counted, LimitError};
use super::state::StubState;
use super::unread::Unread;
use crate::bridge::{self, Body, PumpError};
use crate::status;
use crate::transport::{RecvHalf, SendHalf};
use crate::wire::codes::AppCode;
use crate::wire::frame::{Header, PeerRequest, RequestHead, ResponseHead};
use crate::wire::io::{WireError, read_frame, write_frame};

/// Response header carrying the request id, so one request can be followed in both ends' logs.
pub const REQUEST_ID_HEADER: &str = "x-tether-request-id";

/// Why a request got no response from an agent.
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("cluster {0:?} is not registered with this stub")]
    UnknownCluster(String),
    #[error("no agent of cluster {0:?} is connected")]
    NoAgent(String),
    #[error("{0}")]
    Impersonation(String),
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
            ForwardError::Refused(refused) => refused.reason(),
            ForwardError::UnknownCluster(_) => "unknown_cluster",
            ForwardError::NoAgent(_) => "no_agent",
            ForwardError::Impersonation(_) => "impersonation",
            ForwardError::Stream { .. } => "agent_stream_failed",
        }
    }

    fn code(&self) -> StatusCode {
        match self {
            ForwardError::Refused(refused) => refused.code(),
            ForwardError::UnknownCluster(_) | ForwardError::NoAgent(_) => StatusCode::SERVICE_UNAVAILABLE,
            ForwardError::Impersonation(_) => StatusCode::BAD_REQUEST,
            ForwardError::Stream { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

fn new_request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The Kubernetes-style verb, for the audit log: a GET with `watch=true` is a watch.
pub(super) fn verb(method: &str, query: Option<&str>) -> String {
    let watch = query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    if watch { "watch".into() } else { method.to_ascii_lowercase() }
}

/// The hyper service of the front door.
pub async fn handle(
    state: Arc<StubState>,
    caller: Arc<Caller>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let request_id = new_request_id();
    let mut audit = Pending::new(
        state.audit.clone(),
        state.metrics.clone(),
        &request_id,
        &verb(req.method().as_str(), req.uri().query()),
        req.uri().path(),
    );
    let span = tracing::info_span!(
        "request", id = %request_id, method = %req.method(), path = %req.uri().path(), remote = %caller.remote, user = tracing::field::Empty
    );
    let response = async {
        let forwarded = match admission::admit(&state, &caller, &req, &mut audit) {
            Ok(admitted) => match bridge::asked_impersonation(req.headers()) {
                Ok(asked) => {
                    // kubectl --as: the agent asks its API server whether this caller may.
                    audit.record.as_user = asked.user.clone();
                    audit.record.as_groups = asked.groups.clone();
                    send_to_agent(&state, Outbound::new(req, &request_id, admitted, &caller, &asked), &mut audit).await
                }
                Err(e) => Err(ForwardError::Impersonation(e)),
            },
            Err(refused) => Err(ForwardError::from(refused)),
        };
        forwarded.unwrap_or_else(|e| {
            tracing::info!(status = e.code().as_u16(), "{e}");
            state.metrics.refusals.inc(&[e.reason()]);
            status::response(e.code(), e.to_string())
        })
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

/// An admitted request on its way to an agent.
struct Outbound {
    head: RequestHead,
    user: String,
    cluster: String,
    /// Counted against user and cluster until the response body ends or the upgraded
    /// connection closes.
    counted: Counted,
    body: RequestBody,
}

/// What follows the head on the request stream.
enum RequestBody {
    /// Nothing, and the method is idempotent (GET, HEAD, OPTIONS: reads and watches): a stream
    /// that fails before any response byte can be sent again, on another connection of the
    /// cluster (the other replica).
    Replayable,
    /// The caller's body, streamed on a task of its own so that a large upload and the response
    /// overlap.
    Streaming(Incoming),
    /// An upgrade (exec, attach, port-forward): no body; after the agent's `101` the stream
    /// becomes a raw pipe to the caller's upgraded connection.
    Upgrade(OnUpgrade),
}

impl Outbound {
    fn new(
        mut req: Request<Incoming>,
        request_id: &str,
        admitted: Admitted,
        caller: &Caller,
        asked: &bridge::AskedImpersonation,
    ) -> Outbound {
        let upgrade = bridge::is_upgrade(req.headers());
        let mut headers = bridge::headers_to_wire(req.headers(), upgrade);
        // The token travels as the credential, never as a header the API server could see; no
        // caller chooses whom it speaks for, nor where it says it comes from. An impersonation
        // it asks for goes to the agent under tether's own names, as a question: the agent
        // asks the cluster's API server whether this caller may.
        headers.retain(|h| !bridge::speaks_for_someone(&h.name) && !bridge::says_where_from(&h.name));
        bridge::asked_to_wire(asked, &mut headers);
        let from = caller.remote.ip().to_canonical().to_string();
        headers.push(Header { name: "x-forwarded-for".into(), value: from.into_bytes() });
        let head = RequestHead {
            request_id: request_id.to_owned(),
            method: req.method().as_str().to_owned(),
            path_and_query: admitted.path_and_query,
            headers,
            credential: Some(admitted.token),
        };
        let body = if upgrade {
            RequestBody::Upgrade(hyper::upgrade::on(&mut req))
        } else if is_idempotent(req.method()) && req.body().is_end_stream() {
            RequestBody::Replayable
        } else {
            RequestBody::Streaming(req.into_body())
        };
        Outbound { head, user: admitted.user, cluster: admitted.cluster, counted: admitted.counted, body }
    }
}

fn is_idempotent(method: &http::Method) -> bool {
    matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS)
}

/// Sends the request on a stream of one of the cluster's agent connections and returns the
/// response as it starts arriving. The request's counts are held until the response body ends or
/// the upgraded connection closes.
async fn send_to_agent(
    state: &StubState,
    outbound: Outbound,
    audit: &mut Pending,
) -> Result<Response<Body>, ForwardError> {
    let Outbound { head, user, cluster, counted, body } = outbound;
    let unread = &state.unread;
    let mut failed_connection = None;
    // A healthy connection already counted for the retry, when the first one went silent.
    let mut retry_on: Option<InFlight> = None;
    loop {
        let in_flight = match retry_on.take() {
            Some(in_flight) => in_flight,
            None => pick(state, &cluster, failed_connection)?,
        };
        let agent = in_flight.0.clone();
        match agent.peer() {
            None => (audit.record.agent, audit.record.peer) = (Some(agent.name().to_owned()), None),
            Some(replica) => (audit.record.agent, audit.record.peer) = (None, Some(replica.to_owned())),
        }
        tracing::debug!(connection = agent.id, agent = %agent.name(), peer = agent.peer(), "routing");
        let stream_error = |source| ForwardError::Stream { cluster: cluster.clone(), source };
        let replayable = matches!(body, RequestBody::Replayable);
        let opened = open_request(&agent, &cluster, &head, replayable).await;
        let (mut send, mut recv) = match opened {
            Ok(stream) => stream,
            Err(e) if replayable && failed_connection.is_none() => {
                tracing::warn!(connection = agent.id, agent = %agent.name(), error = %e, "stream failed before any response; retrying on another connection");
                state.metrics.retries.inc(&[&cluster]);
                failed_connection = Some(agent.id);
                continue;
            }
            Err(e) => return Err(stream_error(e)),
        };
        match body {
            RequestBody::Replayable => {
                send.finish();
                let may_retry = failed_connection.is_none();
                let elsewhere = |excluding| pick_hop(state, &cluster, Some(excluding));
                match head_or_elsewhere(&agent, &mut recv, may_retry, elsewhere).await {
                    Ok(Ok(response_head)) => {
                        tracing::debug!(status = response_head.status, "response head");
                        let body = unread.response_body(recv, (in_flight, counted), &user, agent);
                        return Ok(response_from(response_head, body));
                    }
                    Ok(Err(e)) if may_retry => {
                        tracing::warn!(connection = agent.id, agent = %agent.name(), error = %e, "stream failed before any response; retrying on another connection");
                        state.metrics.retries.inc(&[&cluster]);
                        failed_connection = Some(agent.id);
                    }
                    Ok(Err(e)) => return Err(stream_error(e)),
                    Err(Elsewhere(other)) => {
                        tracing::warn!(connection = agent.id, agent = %agent.name(), to = other.0.id, "agent connection silent before any response; retrying on another connection");
                        state.metrics.retries.inc(&[&cluster]);
                        // The agent, if it is alive after all, abandons the upstream request.
                        recv.stop(AppCode::Cancelled);
                        failed_connection = Some(agent.id);
                        retry_on = Some(other);
                    }
                }
            }
            RequestBody::Upgrade(on_upgrade) => {
                let counted = (in_flight, counted);
                // Not sent again, but counted as waiting, so that a silent agent is noticed and
                // new requests go elsewhere.
                let _waiting = agent.liveness.waiting();
                return upgrade_response(on_upgrade, send, recv, counted, unread, &user).await.map_err(stream_error);
            }
            RequestBody::Streaming(request_body) => {
                // Dropping `cancel_on_drop` (the caller went away, or the response is done)
                // resets the request side if it is still going.
                let cancel = CancellationToken::new();
                tokio::spawn(pump_request(request_body, send, cancel.clone()).in_current_span());
                let cancel_on_drop = cancel.drop_guard();
                let waiting = agent.liveness.waiting();
                let response_head: ResponseHead = read_frame(&mut recv).await.map_err(stream_error)?;
                drop(waiting);
                tracing::debug!(status = response_head.status, "response head");
                let body = unread.response_body(recv, (cancel_on_drop, in_flight, counted), &user, agent);
                return Ok(response_from(response_head, body));
            }
        }
    }
}

/// A healthy connection to send a request to instead of a silent one.
pub(super) struct Elsewhere(pub InFlight);

/// Waits for the response head on `recv`, counted as waiting on `agent`'s connection (so that
/// its silence is noticed, see [`crate::liveness`]). If the connection goes silent first and
/// `may_retry`, and `elsewhere` (asked to exclude this hop) has one that is not silent, gives up
/// on this one: `Err` with that hop, already counted.
pub(super) async fn head_or_elsewhere(
    agent: &Hop,
    recv: &mut RecvHalf,
    may_retry: bool,
    elsewhere: impl Fn(u64) -> Pick,
) -> Result<Result<ResponseHead, WireError>, Elsewhere> {
    let _waiting = agent.liveness.waiting();
    let read = read_frame::<ResponseHead, _>(recv);
    tokio::pin!(read);
    loop {
        tokio::select! {
            head = &mut read => return Ok(head),
            _ = agent.liveness.suspected(), if may_retry => {}
        }
        if let Pick::Picked(other) = elsewhere(agent.id)
            && !other.0.liveness.is_suspect()
        {
            return Err(Elsewhere(other));
        }
        // Nowhere better yet: keep waiting here, and look again shortly.
        tokio::select! {
            head = &mut read => return Ok(head),
            _ = tokio::time::sleep(crate::liveness::TICK) => {}
        }
    }
}

/// Where a front-door request for `cluster` goes (not to `excluding`): the least busy agent
/// connection of this replica; or, when this replica has none (or only a silent one), the least
/// busy link of a peer replica that holds one.
fn pick_hop(state: &StubState, cluster: &str, excluding: Option<u64>) -> Pick {
    let limit = state.limits.limits().per_connection;
    match state.registry.pick(cluster, excluding, limit) {
        Pick::Picked(local) if local.0.liveness.is_suspect() => match state.hub.peers.pick(cluster, excluding, limit) {
            Pick::Picked(peer) if !peer.0.liveness.is_suspect() => Pick::Picked(peer),
            _ => Pick::Picked(local),
        },
        Pick::None => state.hub.peers.pick(cluster, excluding, limit),
        local => local,
    }
}

/// [`pick_hop`], or why there is nowhere to go.
fn pick(state: &StubState, cluster: &str, excluding: Option<u64>) -> Result<InFlight, ForwardError> {
    let limit = state.limits.limits().per_connection;
    match pick_hop(state, cluster, excluding) {
        Pick::Picked(in_flight) => Ok(in_flight),
        Pick::Full { connections } => {
            let full = LimitError::Connection { cluster: cluster.to_owned(), connections, limit };
            Err(ForwardError::Refused(Refused::Limit(full)))
        }
        Pick::None if state.whitelist.get().has_cluster(cluster) => Err(ForwardError::NoAgent(cluster.to_owned())),
        Pick::None => Err(ForwardError::UnknownCluster(cluster.to_owned())),
    }
}

/// Opens a request stream on `hop` and writes `head` on it (on a peer link, after the
/// [`PeerRequest`] that names the cluster): the one way every request starts.
pub(super) async fn open_request(
    hop: &Hop,
    cluster: &str,
    head: &RequestHead,
    replayable: bool,
) -> Result<(SendHalf, RecvHalf), WireError> {
    let (mut send, recv) = hop.connection.open_stream().await.map_err(WireError::Io)?;
    if hop.peer().is_some() {
        write_frame(&mut send, &PeerRequest { cluster: cluster.to_owned(), replayable }).await?;
    }
    write_frame(&mut send, head).await?;
    Ok((send, recv))
}

/// After the agent's answer to an upgrade request: a `101` turns the stream into a raw pipe to
/// the caller's upgraded connection; anything else is an ordinary response.
async fn upgrade_response(
    on_upgrade: OnUpgrade,
    mut send: SendHalf,
    mut recv: RecvHalf,
    counted: (InFlight, Counted),
    unread: &Arc<Unread>,
    user: &str,
) -> Result<Response<Body>, WireError> {
    let head: ResponseHead = read_frame(&mut recv).await?;
    if head.status != StatusCode::SWITCHING_PROTOCOLS.as_u16() {
        send.finish();
        let agent = counted.0.0.clone();
        return Ok(response_from(head, unread.response_body(recv, counted, user, agent)));
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
