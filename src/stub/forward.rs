//! One front-door request, end to end on the stub: route it to a cluster, pick that cluster's
//! least busy agent connection, open a stream, send the head and stream the body; then turn the
//! agent's response head and body back into the HTTP response. The caller going away resets the
//! stream, which the agent turns into an aborted upstream request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use quinn::SendStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::StubState;
use super::route::{self, RouteError};
use crate::bridge::{self, Body, PumpError};
use crate::status;
use crate::wire::codes::AppCode;
use crate::wire::frame::{RequestHead, ResponseHead};
use crate::wire::io::{WireError, read_frame, write_frame};

/// Response header carrying the request id, so one request can be followed in both ends' logs.
pub const REQUEST_ID_HEADER: &str = "x-tether-request-id";

/// Why a request got no response from an agent.
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error(transparent)]
    Route(#[from] RouteError),
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
    fn code(&self) -> StatusCode {
        match self {
            ForwardError::Route(RouteError::NotClusterPath(_)) => StatusCode::NOT_FOUND,
            ForwardError::Route(RouteError::BadCluster(_)) => StatusCode::BAD_REQUEST,
            ForwardError::UnknownCluster(_) | ForwardError::NoAgent(_) => StatusCode::SERVICE_UNAVAILABLE,
            ForwardError::Stream { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

fn new_request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The hyper service of the front door.
pub async fn handle(
    state: Arc<StubState>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let request_id = new_request_id();
    let span =
        tracing::info_span!("request", id = %request_id, method = %req.method(), path = %req.uri().path(), %remote);
    let mut response = async {
        match forward(&state, req, &request_id).await {
            Ok(response) => response,
            Err(e) => {
                tracing::info!(status = e.code().as_u16(), "{e}");
                status::response(e.code(), e.to_string())
            }
        }
    }
    .instrument(span)
    .await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    Ok(response)
}

async fn forward(state: &StubState, req: Request<Incoming>, request_id: &str) -> Result<Response<Body>, ForwardError> {
    let route = route::route(req.uri().path(), req.uri().query())?;
    let cluster = route.cluster.to_owned();
    let Some(in_flight) = state.registry.pick(&cluster) else {
        return Err(if state.whitelist.get().has_cluster(&cluster) {
            ForwardError::NoAgent(cluster)
        } else {
            ForwardError::UnknownCluster(cluster)
        });
    };
    let link = in_flight.0.clone();
    tracing::debug!(connection = link.id, agent = %link.name, "routing");
    let stream_err = |source| ForwardError::Stream { cluster: cluster.clone(), source };

    let head = RequestHead {
        request_id: request_id.to_owned(),
        method: req.method().as_str().to_owned(),
        path_and_query: route.path_and_query,
        headers: bridge::headers_to_wire(req.headers()),
        credential: None,
    };
    let (mut send, mut recv) =
        link.connection.open_bi().await.map_err(|e| stream_err(WireError::Io(std::io::Error::other(e))))?;
    write_frame(&mut send, &head).await.map_err(stream_err)?;

    // The request body flows on its own task, so a large upload and the response overlap.
    // Dropping `cancel_on_drop` (the caller went away, or the response is done) resets the
    // request side if it is still going.
    let cancel = CancellationToken::new();
    tokio::spawn(pump_request(req.into_body(), send, cancel.clone()).in_current_span());
    let cancel_on_drop = cancel.drop_guard();

    let head: ResponseHead = read_frame(&mut recv).await.map_err(stream_err)?;
    let mut response = Response::new(bridge::recv_body(recv, (cancel_on_drop, in_flight)));
    *response.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    *response.headers_mut() = bridge::headers_from_wire(&head.headers);
    tracing::debug!(status = head.status, "response head");
    Ok(response)
}

async fn pump_request(body: Incoming, mut send: SendStream, cancel: CancellationToken) {
    let result = tokio::select! {
        result = bridge::pump_body(body, &mut send) => Some(result),
        _ = cancel.cancelled() => None,
    };
    match result {
        Some(Ok(_)) => {
            let _ = send.finish();
        }
        Some(Err(PumpError::Sink(e))) => tracing::debug!(error = %e, "agent stopped reading the request body"),
        Some(Err(PumpError::Source(e))) => {
            tracing::debug!(error = %e, "caller's request body failed");
            let _ = send.reset(AppCode::Cancelled.varint());
        }
        None => {
            let _ = send.reset(AppCode::Cancelled.varint());
        }
    }
}
