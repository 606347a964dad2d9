//! One request stream on the agent: read the head, verify the caller's token again (defense in
//! depth: a compromised stub cannot invent callers), send the request to the API server as the
//! agent itself impersonating the caller, with the body streaming from the stream; then write the
//! response head and stream the body back, or after a `101` pipe raw bytes both ways.
//!
//! The stub stopping the stream (its caller went away) aborts the upstream request; an upstream
//! that fails before answering becomes a 502 Status, one that fails mid-body resets the stream.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::upstream::Upstream;
use crate::bridge::{self, PumpError};
use crate::errors;
use crate::identity::authorize::{Channel, Refusal};
use crate::identity::token::{self, Claims, TokenVerifier};
use crate::status;
use crate::transport::{RecvHalf, SendHalf};
use crate::wire::codes::AppCode;
use crate::wire::frame::{Header, RequestHead, ResponseHead};
use crate::wire::io::{WireError, read_frame_within, write_frame};

/// The stub writes the head right after opening the stream; a stream without one is broken.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request stream of this agent needs.
#[derive(Debug)]
pub struct Forwarder {
    pub upstream: Upstream,
    pub tokens: TokenVerifier,
    /// This agent's cluster: a token must name it.
    pub cluster: String,
    pub metrics: Arc<super::metrics::AgentMetrics>,
}

/// Serves one stream opened by the stub. If it is a watch, `watches_end` cancelled ends it
/// cleanly (the agent is draining).
pub async fn serve_stream(
    forwarder: Arc<Forwarder>,
    mut send: SendHalf,
    mut recv: RecvHalf,
    watches_end: CancellationToken,
) {
    let _in_flight = super::metrics::InFlight::new(forwarder.metrics.clone());
    let mut head: RequestHead = match read_frame_within(&mut recv, HEAD_TIMEOUT).await {
        Ok(head) => head,
        Err(e) => {
            tracing::debug!(error = %e, "request stream without a valid head");
            let code = if matches!(e, WireError::Timeout(_)) { AppCode::Timeout } else { AppCode::ProtocolViolation };
            send.reset(code);
            return;
        }
    };
    // The stub replica that forwarded this request to the one we are connected to (the hub
    // on many machines), for this log only: the API server never sees it.
    let forwarded_by = head
        .headers
        .iter()
        .position(|h| h.name == bridge::FORWARDED_BY_HEADER)
        .map(|i| String::from_utf8_lossy(&head.headers.remove(i).value).into_owned());
    let span = tracing::info_span!(
        "request", id = %head.request_id, method = %head.method, path = %head.path_and_query, user = tracing::field::Empty,
        forwarded_by = tracing::field::Empty
    );
    if let Some(replica) = &forwarded_by {
        span.record("forwarded_by", tracing::field::display(replica));
    }
    async move {
        let claims = match authenticate(&forwarder, &head) {
            Ok(claims) => claims,
            Err((code, message)) => {
                tracing::warn!(status = code.as_u16(), "refused: {message}");
                return respond_error(&forwarder.metrics, &mut send, code, &message).await;
            }
        };
        tracing::Span::current().record("user", claims.sub.as_str());
        forward(&forwarder, &claims, head, send, recv, watches_end).await
    }
    .instrument(span)
    .await
}

/// The caller's verified identity, or the status and message to refuse it with: the same
/// decision as the stub's ([`TokenVerifier::authorize`]), made again here.
fn authenticate(forwarder: &Forwarder, head: &RequestHead) -> Result<Claims, (StatusCode, String)> {
    let token = head.credential.as_deref().ok_or((StatusCode::UNAUTHORIZED, "no caller credential".to_owned()))?;
    forwarder.tokens.authorize(token, token::unix_now(), &forwarder.cluster, Channel::Tunnel).map_err(|refusal| {
        let message = match &refusal {
            Refusal::Token(e) => format!("the agent refused the caller's token: {e}"),
            other => other.to_string(),
        };
        (refusal.status(), message)
    })
}

/// Whether a request is a watch (a GET with `watch=true` or `watch=1`): one that never ends by
/// itself, and may be ended cleanly at any time.
pub fn is_watch(method: &str, path_and_query: &str) -> bool {
    method == "GET"
        && path_and_query
            .split_once('?')
            .is_some_and(|(_, query)| query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
}

async fn forward(
    forwarder: &Forwarder,
    claims: &Claims,
    head: RequestHead,
    mut send: SendHalf,
    recv: RecvHalf,
    watches_end: CancellationToken,
) {
    let upstream = &forwarder.upstream;
    let watch = is_watch(&head.method, &head.path_and_query);
    // The stub sends an `Upgrade` header only for a request that asks to switch protocols.
    let upgrade = head.headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade"));
    let asked = bridge::asked_on_the_wire(&head.headers);
    let mut headers = bridge::headers_from_wire(&head.headers, upgrade);
    if asked.user.is_some() {
        // kubectl --as: only if this cluster's API server says the caller may.
        match super::impersonation::check(upstream, claims, &asked).await {
            Ok(None) => {}
            Ok(Some(refused)) => {
                tracing::info!(user = %claims.sub, as_user = ?asked.user, as_groups = ?asked.groups, "impersonation refused");
                return respond_error(&forwarder.metrics, &mut send, StatusCode::FORBIDDEN, &refused).await;
            }
            Err(e) => {
                let message = format!("the agent could not ask its API server whether the caller may impersonate: {e}");
                return respond_error(&forwarder.metrics, &mut send, StatusCode::BAD_GATEWAY, &message).await;
            }
        }
        if let Err(e) = super::impersonation::apply(&mut headers, claims, &asked) {
            return respond_error(&forwarder.metrics, &mut send, StatusCode::BAD_REQUEST, &e).await;
        }
    } else if super::impersonation::impersonate(&mut headers, claims).is_err() {
        return respond_error(
            &forwarder.metrics,
            &mut send,
            StatusCode::BAD_REQUEST,
            "user or group name is not a valid header value",
        )
        .await;
    }
    // An upgrade request has no body: the stream is kept for the pipe after 101.
    let (body, kept_recv) = if upgrade { (bridge::empty(), Some(recv)) } else { (bridge::recv_body(recv, ()), None) };
    let mut request = match Request::builder().method(head.method.as_str()).uri(head.path_and_query.as_str()).body(body)
    {
        Ok(r) => r,
        Err(e) => {
            return respond_error(
                &forwarder.metrics,
                &mut send,
                StatusCode::BAD_REQUEST,
                &format!("invalid request: {e}"),
            )
            .await;
        }
    };
    *request.headers_mut() = headers;

    // `stopped` completes when the stub stops the stream because its caller went away: that is
    // how a cancellation reaches an upstream request that is waiting for its answer or for its
    // next body chunk (a quiet watch). A cancellation signal, not a wait for acknowledgements.
    let mut stopped = send.stopped();
    let sent = std::time::Instant::now();
    let response = tokio::select! {
        response = upstream.send(request) => response,
        _ = &mut stopped => return tracing::debug!("stub cancelled the request before the upstream answered"),
    };
    forwarder.metrics.upstream.observe(&[], sent.elapsed().as_secs_f64());
    let mut response = match response {
        Ok(r) => r,
        Err(e) => {
            let chain = errors::chain(&*e);
            tracing::warn!(error = chain, upstream = upstream.url(), "upstream request failed");
            let message = format!("the agent could not reach its API server: {chain}");
            return respond_error(&forwarder.metrics, &mut send, StatusCode::BAD_GATEWAY, &message).await;
        }
    };

    if let (Some(recv), StatusCode::SWITCHING_PROTOCOLS) = (kept_recv, response.status()) {
        let on_upgrade = hyper::upgrade::on(&mut response);
        let head = ResponseHead { status: 101, headers: bridge::headers_to_wire(response.headers(), true) };
        if let Err(e) = write_frame(&mut send, &head).await {
            return tracing::debug!(error = %e, "stub went away before the 101");
        }
        forwarder.metrics.requests.inc(&["101"]);
        match on_upgrade.await {
            Ok(upgraded) => bridge::pipe(hyper_util::rt::TokioIo::new(upgraded), send, recv).await,
            Err(e) => {
                tracing::warn!(error = %e, "upstream upgrade failed");
                send.reset(AppCode::UpstreamFailed);
            }
        }
        return tracing::debug!("upgraded stream closed");
    }

    let (parts, body) = response.into_parts();
    let head = ResponseHead { status: parts.status.as_u16(), headers: bridge::headers_to_wire(&parts.headers, false) };
    if let Err(e) = write_frame(&mut send, &head).await {
        return tracing::debug!(error = %e, "stub went away before the response head");
    }
    forwarder.metrics.requests.inc(&[parts.status.as_str()]);
    // A JSON watch (one event per line) may be ended between two events when the agent drains.
    let json =
        parts.headers.get(http::header::CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    let never = CancellationToken::new();
    let end = if watch && json { &watches_end } else { &never };
    let pumped = tokio::select! {
        pumped = pump_response(body, &mut send, end) => pumped,
        _ = &mut stopped => return tracing::debug!("stub stopped the response; upstream request aborted"),
    };
    match pumped {
        Ok(bytes) => {
            send.finish();
            tracing::debug!(status = head.status, bytes, "request done");
        }
        // Dropping the upstream body here closes that upstream connection: the abort reaches it.
        Err(PumpError::Sink(e)) => tracing::debug!(error = %e, "stub stopped the response; upstream request aborted"),
        Err(PumpError::Source(e)) => {
            tracing::warn!(error = %e, "upstream failed in the middle of the response");
            send.reset(AppCode::UpstreamFailed);
        }
    }
}

/// Moves a response body like [`bridge::pump_body`]; once `end` is cancelled (only ever for a
/// JSON watch, one event per line) it ends the body (`Ok`) at the next point between two
/// events, never inside one: the caller sees a whole stream of whole events, as when an API
/// server ends a watch, and watches again.
/// A response that has sent this much is bulk (a large list, a log, a copy): from then on the
/// other responses on its connection go first, so a download does not hold up the small
/// requests beside it in quinn's send queue. Measured at 5% loss with a full-speed 10 MB
/// download beside, one small GET at a time: median 2.3x its time alone without this, 1.95x
/// with it (`scripts/bench.sh`, part 2).
const BULK_AFTER: u64 = 1 << 20;

async fn pump_response<B>(body: B, send: &mut SendHalf, end: &CancellationToken) -> Result<u64, PumpError>
where
    B: hyper::body::Body<Data = bytes::Bytes>,
    B::Error: Into<bridge::BoxError>,
{
    use futures_util::StreamExt;
    let mut frames = std::pin::pin!(http_body_util::BodyStream::new(body));
    let (mut moved, mut between_events) = (0u64, true);
    loop {
        let frame = tokio::select! {
            frame = frames.next() => frame,
            _ = end.cancelled(), if between_events => {
                tracing::debug!("watch ended between two events: this agent is draining");
                return Ok(moved);
            }
        };
        let Some(frame) = frame else { return Ok(moved) };
        let frame = frame.map_err(|e| PumpError::Source(e.into()))?;
        if let Ok(data) = frame.into_data()
            && !data.is_empty()
        {
            between_events = data.ends_with(b"\n");
            if moved < BULK_AFTER && moved + data.len() as u64 >= BULK_AFTER {
                send.yield_to_others();
            }
            moved += data.len() as u64;
            send.write_chunk(data).await.map_err(PumpError::Sink)?;
        }
    }
}

async fn respond_error(metrics: &super::metrics::AgentMetrics, send: &mut SendHalf, code: StatusCode, message: &str) {
    metrics.requests.inc(&[code.as_str()]);
    let head = ResponseHead {
        status: code.as_u16(),
        headers: vec![Header { name: "content-type".into(), value: b"application/json".to_vec() }],
    };
    let body = status::json(code, message);
    if write_frame(send, &head).await.is_ok() && send.write_chunk(body).await.is_ok() {
        send.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::impersonation::{impersonate, scrub_caller_identity};
    use std::time::Duration;

    /// A response turns into bulk, and lets the others on its connection go first, once it has
    /// sent BULK_AFTER bytes; a smaller one keeps its place.
    #[tokio::test]
    async fn a_large_response_lets_the_others_go_first() {
        use crate::transport::SendHalf;
        let (dialer, listener) = crate::transport::quic::testing::loopback_pair().await;
        for (size, yields) in [(BULK_AFTER as usize - 1, false), (BULK_AFTER as usize + 1, true)] {
            let (send, _recv) = dialer.open_bi().await.unwrap();
            let mut send = SendHalf::Quic(send);
            let reader = tokio::spawn({
                let listener = listener.clone();
                async move {
                    let (_send, mut recv) = listener.accept_bi().await.unwrap();
                    recv.read_to_end(usize::MAX).await.unwrap().len()
                }
            });
            let chunks = (0..size).step_by(64 * 1024).map(move |at| {
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(vec![
                    0u8;
                    (size - at)
                        .min(64 * 1024)
                ])))
            });
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
            let moved = pump_response(body, &mut send, &CancellationToken::new()).await.unwrap();
            assert_eq!(moved, size as u64);
            assert_eq!(send.yields_to_others(), yields, "a response of {size} bytes");
            send.finish();
            assert_eq!(reader.await.unwrap(), size);
        }
    }

    #[test]
    fn caller_identity_headers_never_survive() {
        let wire = ["Authorization", "IMPERSONATE-USER", "Impersonate-Group", "impersonate-extra-scopes", "Accept"]
            .iter()
            .map(|name| Header { name: name.to_string(), value: b"x".to_vec() })
            .collect::<Vec<_>>();
        let mut headers = bridge::headers_from_wire(&wire, false);
        scrub_caller_identity(&mut headers);
        assert_eq!(headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
    }

    #[test]
    fn impersonation_comes_from_the_claims_only() {
        let mut headers = http::HeaderMap::new();
        headers.insert("impersonate-user", "system:admin".parse().unwrap());
        headers.insert("impersonate-group", "system:masters".parse().unwrap());
        let claims = Claims::new("alice", &["devs".into(), "ops".into()], &["dev".into()], Duration::from_secs(60));
        impersonate(&mut headers, &claims).unwrap();
        assert_eq!(headers["impersonate-user"], "alice");
        let groups: Vec<_> = headers.get_all("impersonate-group").iter().collect();
        assert_eq!(groups, ["devs", "ops"]);
        let bad = Claims::new("eve\n", &[], &["dev".into()], Duration::from_secs(60));
        assert!(impersonate(&mut headers, &bad).is_err());
    }
}
