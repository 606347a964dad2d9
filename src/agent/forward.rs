//! One request stream on the agent: read the head, send the request to the API server with the
//! body streaming from the stream, then write the response head and stream the body back. The
//! stub stopping the stream (its caller went away) aborts the upstream request; an upstream that
//! fails before answering becomes a 502 Status, one that fails mid-body resets the stream.

use std::time::Duration;

use http::{Request, StatusCode};
use quinn::{RecvStream, SendStream};
use tracing::Instrument;

use super::upstream::Upstream;
use crate::bridge::{self, PumpError};
use crate::status;
use crate::wire::codes::AppCode;
use crate::wire::frame::{Header, RequestHead, ResponseHead};
use crate::wire::io::{WireError, read_frame_within, write_frame};

/// The stub writes the head right after opening the stream; a stream without one is broken.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one stream opened by the stub.
pub async fn serve_stream(upstream: Upstream, mut send: SendStream, mut recv: RecvStream) {
    let head: RequestHead = match read_frame_within(&mut recv, HEAD_TIMEOUT).await {
        Ok(head) => head,
        Err(e) => {
            tracing::debug!(error = %e, "request stream without a valid head");
            let code = if matches!(e, WireError::Timeout(_)) { AppCode::Timeout } else { AppCode::ProtocolViolation };
            let _ = send.reset(code.varint());
            return;
        }
    };
    let span =
        tracing::info_span!("request", id = %head.request_id, method = %head.method, path = %head.path_and_query);
    forward(upstream, head, send, recv).instrument(span).await
}

fn build_request(head: &RequestHead, recv: RecvStream) -> Result<Request<bridge::Body>, http::Error> {
    let mut request = Request::builder()
        .method(head.method.as_str())
        .uri(head.path_and_query.as_str())
        .body(bridge::recv_body(recv, ()))?;
    *request.headers_mut() = bridge::headers_from_wire(&head.headers);
    scrub_caller_identity(request.headers_mut());
    Ok(request)
}

/// Removes every header by which a caller could speak for someone at the API server: its own
/// `Authorization` (the agent sends its own credential) and all `Impersonate-*` headers (the
/// agent alone decides whom to impersonate). Header names are lowercase here, so this also
/// catches `IMPERSONATE-USER` and friends.
pub fn scrub_caller_identity(headers: &mut http::HeaderMap) {
    let names: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| *name == http::header::AUTHORIZATION || name.as_str().starts_with("impersonate-"))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

async fn forward(upstream: Upstream, head: RequestHead, mut send: SendStream, recv: RecvStream) {
    let request = match build_request(&head, recv) {
        Ok(r) => r,
        Err(e) => return respond_error(&mut send, StatusCode::BAD_REQUEST, &format!("invalid request: {e}")).await,
    };
    // `stopped` completes when the stub stops the stream because its caller went away: that is
    // how a cancellation reaches an upstream request that is waiting for its answer or for its
    // next body chunk (a quiet watch). A cancellation signal, not a wait for acknowledgements.
    let mut stopped = std::pin::pin!(send.stopped());
    let response = tokio::select! {
        response = upstream.send(request) => response,
        _ = &mut stopped => return tracing::debug!("stub cancelled the request before the upstream answered"),
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(
                error = crate::bridge::error_chain(&*e),
                upstream = upstream.url(),
                "upstream request failed"
            );
            let message = format!("the agent could not reach its API server: {}", crate::bridge::error_chain(&*e));
            return respond_error(&mut send, StatusCode::BAD_GATEWAY, &message).await;
        }
    };
    let (parts, body) = response.into_parts();
    let head = ResponseHead { status: parts.status.as_u16(), headers: bridge::headers_to_wire(&parts.headers) };
    if let Err(e) = write_frame(&mut send, &head).await {
        return tracing::debug!(error = %e, "stub went away before the response head");
    }
    let pumped = tokio::select! {
        pumped = bridge::pump_body(body, &mut send) => pumped,
        _ = &mut stopped => return tracing::debug!("stub stopped the response; upstream request aborted"),
    };
    match pumped {
        Ok(bytes) => {
            let _ = send.finish();
            tracing::debug!(status = head.status, bytes, "request done");
        }
        // Dropping the upstream body here closes that upstream connection: the abort reaches it.
        Err(PumpError::Sink(e)) => tracing::debug!(error = %e, "stub stopped the response; upstream request aborted"),
        Err(PumpError::Source(e)) => {
            tracing::warn!(error = %e, "upstream failed in the middle of the response");
            let _ = send.reset(AppCode::UpstreamFailed.varint());
        }
    }
}

async fn respond_error(send: &mut SendStream, code: StatusCode, message: &str) {
    let head = ResponseHead {
        status: code.as_u16(),
        headers: vec![Header { name: "content-type".into(), value: b"application/json".to_vec() }],
    };
    let body = status::json(code, message);
    if write_frame(send, &head).await.is_ok() && send.write_chunk(body).await.is_ok() {
        let _ = send.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_identity_headers_never_survive() {
        let wire = ["Authorization", "IMPERSONATE-USER", "Impersonate-Group", "impersonate-extra-scopes", "Accept"]
            .iter()
            .map(|name| Header { name: name.to_string(), value: b"x".to_vec() })
            .collect::<Vec<_>>();
        let mut headers = bridge::headers_from_wire(&wire);
        scrub_caller_identity(&mut headers);
        assert_eq!(headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
    }
}
