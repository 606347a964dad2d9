//! A request a peer replica forwarded to this one (it has no agent connection of the cluster;
//! this replica has): the same frames as on an agent connection, preceded by a [`PeerRequest`]
//! naming the cluster. It goes on to one of this replica's agent connections with a header
//! that names the replica that forwarded it (the agent logs it, and so does this replica's
//! audit line); the response comes back the same way.
//!
//! What a front-door request gets here too: a read whose agent stream fails or goes silent
//! before any response byte is sent again on another agent connection; a response the far
//! caller leaves unread gets a window of its own on the agent connection
//! ([`Hop::hold_unread`]), so it holds back no one else's; the far caller going away (the
//! peer stops its stream) abandons the request at the agent.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::audit::Pending;
use super::forward::{head_or_elsewhere, open_request, verb};
use super::hop::{Hop, InFlight, Pick};
use super::metrics::StubMetrics;
use super::state::StubState;
use super::unread::HOLD_AFTER;
use crate::bridge::{self, FORWARDED_BY_HEADER};
use crate::identity::authorize::Channel;
use crate::identity::token;
use crate::status;
use crate::transport::{RecvHalf, SendHalf};
use crate::wire::codes::AppCode;
use crate::wire::frame::{Header, PeerRequest, RequestHead, ResponseHead};
use crate::wire::io::{WireError, read_frame, read_frame_within, write_frame};

/// The forwarding replica writes both frames right after opening the stream.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one stream a peer replica (`from`) opened on the link this replica dialled.
pub async fn serve(
    state: Arc<StubState>,
    metrics: Arc<StubMetrics>,
    from: String,
    mut send: SendHalf,
    mut recv: RecvHalf,
) {
    let heads = async {
        let request: PeerRequest = read_frame_within(&mut recv, HEAD_TIMEOUT).await?;
        let head: RequestHead = read_frame_within(&mut recv, HEAD_TIMEOUT).await?;
        Ok::<_, WireError>((request, head))
    };
    let (request, head) = match heads.await {
        Ok(heads) => heads,
        Err(e) => {
            tracing::debug!(error = %e, "forwarded stream without valid heads");
            return send.reset(AppCode::ProtocolViolation);
        }
    };
    let (path, query) =
        head.path_and_query.split_once('?').map_or((head.path_and_query.as_str(), None), |(p, q)| (p, Some(q)));
    let full_path = format!("/clusters/{}{path}", request.cluster);
    let mut audit =
        Pending::new(state.audit.clone(), metrics, &head.request_id, &verb(&head.method, query), &full_path);
    audit.record.cluster = Some(request.cluster.clone());
    audit.record.forwarded_by = Some(from.clone());
    let span =
        tracing::info_span!("forwarded", id = %head.request_id, forwarded_by = %from, cluster = %request.cluster);
    relay(state, request, head, audit, from, send, recv).instrument(span).await
}

/// See [`serve`]: the heads are read and the audit line begun.
async fn relay(
    state: Arc<StubState>,
    request: PeerRequest,
    mut head: RequestHead,
    mut audit: Pending,
    from: String,
    mut send: SendHalf,
    recv: RecvHalf,
) {
    // The forwarding replica has admitted the caller; the token is checked here again, as the
    // agent will, for this replica's audit line (and so a peer cannot send what no caller may).
    let token = head.credential.clone().unwrap_or_default();
    match state.tokens.authorize(&token, token::unix_now(), &request.cluster, Channel::Tunnel) {
        Ok(claims) => {
            audit.record.user = Some(claims.sub);
            audit.record.groups = claims.groups;
            audit.cluster_vouched = true;
            // kubectl --as, as the forwarding replica passed it on (its own audit line has it too).
            let asked = bridge::asked_on_the_wire(&head.headers);
            (audit.record.as_user, audit.record.as_groups) = (asked.user, asked.groups);
        }
        Err(refusal) => {
            audit.record.status = refusal.status().as_u16();
            return answer(&mut send, refusal.status(), &refusal.to_string()).await;
        }
    }
    head.headers.retain(|h| h.name != FORWARDED_BY_HEADER);
    head.headers.push(Header { name: FORWARDED_BY_HEADER.into(), value: from.into_bytes() });

    let limit = state.limits.limits().per_connection;
    let mut from_peer = Some(recv);
    let mut failed = None;
    let mut retry_on: Option<InFlight> = None;
    let (mut agent_recv, response_head, in_flight) = loop {
        let in_flight = match retry_on.take() {
            Some(in_flight) => in_flight,
            None => match state.registry.pick(&request.cluster, failed, limit) {
                Pick::Picked(in_flight) => in_flight,
                // No agent of the cluster here (any more): the peer tries elsewhere.
                _ => return send.reset(AppCode::Draining),
            },
        };
        let agent = in_flight.0.clone();
        audit.record.agent = Some(agent.name().to_owned());
        let (mut agent_send, mut agent_recv) = match open_request(&agent, &request.cluster, &head, false).await {
            Ok(stream) => stream,
            Err(_) if request.replayable && failed.is_none() => {
                failed = Some(agent.id);
                continue;
            }
            Err(_) => return send.reset(AppCode::Draining),
        };
        if request.replayable {
            agent_send.finish();
            let may_retry = failed.is_none();
            // Only this replica's own agents: a forwarded request is never forwarded again.
            let elsewhere = |excluding| state.registry.pick(&request.cluster, Some(excluding), limit);
            match head_or_elsewhere(&agent, &mut agent_recv, may_retry, elsewhere).await {
                Ok(Ok(response_head)) => break (agent_recv, response_head, in_flight),
                Ok(Err(_)) if may_retry => failed = Some(agent.id),
                Ok(Err(_)) => return send.reset(AppCode::Draining),
                Err(elsewhere) => {
                    agent_recv.stop(AppCode::Cancelled);
                    failed = Some(agent.id);
                    retry_on = Some(elsewhere.0);
                }
            }
        } else {
            // The body (or, after a 101, the upgraded connection's bytes) flows on by itself.
            let Some(from_peer) = from_peer.take() else { return send.reset(AppCode::Internal) };
            let agent_stopped = agent_send.stopped();
            tokio::spawn(pump_request(from_peer, agent_send, agent_stopped).in_current_span());
            let waiting = agent.liveness.waiting();
            let response_head = read_frame::<ResponseHead, _>(&mut agent_recv).await;
            drop(waiting);
            match response_head {
                Ok(response_head) => break (agent_recv, response_head, in_flight),
                Err(_) => return send.reset(AppCode::Draining),
            }
        }
    };
    audit.record.status = response_head.status;
    if write_frame(&mut send, &response_head).await.is_err() {
        return agent_recv.stop(AppCode::Cancelled);
    }
    let bytes = pump_response(agent_recv, send, &in_flight.0, state.unread.limits().per_connection).await;
    audit.count_bytes(bytes);
}

/// Answers the peer with a Status of its own (the caller's token was refused here).
async fn answer(send: &mut SendHalf, code: http::StatusCode, message: &str) {
    let body = status::json(code, message);
    let head = ResponseHead {
        status: code.as_u16(),
        headers: vec![Header { name: "content-type".into(), value: b"application/json".to_vec() }],
    };
    if write_frame(send, &head).await.is_ok() {
        let _ = send.write_chunk(body).await;
        send.finish();
    }
}

/// The request body (or an upgraded connection's bytes), peer -> agent, until either ends.
async fn pump_request(
    mut from: RecvHalf,
    mut to: SendHalf,
    agent_stopped: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) {
    tokio::pin!(agent_stopped);
    loop {
        let chunk = tokio::select! {
            chunk = from.read_chunk() => chunk,
            _ = &mut agent_stopped => return from.stop(AppCode::Cancelled),
        };
        match chunk {
            Ok(Some(chunk)) => {
                if to.write_chunk(chunk).await.is_err() {
                    return from.stop(AppCode::Cancelled);
                }
            }
            Ok(None) => return to.finish(),
            Err(_) => return to.reset(AppCode::Cancelled),
        }
    }
}

/// The response body, agent -> peer, until it ends or the peer stops it; returns the bytes
/// relayed. A chunk the peer does not take within [`HOLD_AFTER`] (its caller is not reading)
/// holds a window of its own on the agent connection while it waits, within the per-connection
/// limit of held responses (`0`: none).
async fn pump_response(mut from: RecvHalf, mut to: SendHalf, agent: &Arc<Hop>, held_limit: usize) -> usize {
    let peer_stopped = to.stopped();
    tokio::pin!(peer_stopped);
    let mut bytes = 0;
    loop {
        let chunk = tokio::select! {
            chunk = from.read_chunk() => chunk,
            _ = &mut peer_stopped => {
                from.stop(AppCode::Cancelled);
                return bytes;
            }
        };
        let chunk = match chunk {
            Ok(Some(chunk)) => chunk,
            Ok(None) => {
                to.finish();
                return bytes;
            }
            Err(_) => {
                to.reset(AppCode::UpstreamFailed);
                return bytes;
            }
        };
        bytes += chunk.len();
        let write = to.write_chunk(chunk);
        tokio::pin!(write);
        let written = match tokio::time::timeout(HOLD_AFTER, &mut write).await {
            Ok(written) => written,
            Err(_) => {
                let _held = Held::start(agent, held_limit);
                write.await
            }
        };
        if written.is_err() {
            from.stop(AppCode::Cancelled);
            return bytes;
        }
    }
}

/// A held response's window on its agent connection, given back when dropped.
struct Held<'a>(Option<&'a Hop>);

impl<'a> Held<'a> {
    fn start(agent: &'a Arc<Hop>, limit: usize) -> Held<'a> {
        if limit != 0 && agent.unread() >= limit {
            return Held(None);
        }
        agent.hold_unread();
        Held(Some(agent))
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(agent) = self.0 {
            agent.release_unread();
        }
    }
}
