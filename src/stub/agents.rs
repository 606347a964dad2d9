//! The QUIC side of the stub: accept agent connections (the TLS handshake has already checked
//! chain and whitelist), read the hello on the control stream, check the claimed cluster against
//! the whitelist entry, welcome the agent into the registry, and take it out when it goes.

use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint, Incoming};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::StubState;
use super::registry::AgentLink;
use crate::identity::fingerprint::Fingerprint;
use crate::wire::codes::AppCode;
use crate::wire::frame::{Control, Welcome};
use crate::wire::io::{WireError, read_frame, read_frame_within, write_frame};
use crate::wire::{PROTOCOL_VERSION, frame::Hello};

/// How long an agent may take to open its control stream and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts agents until `cancel` fires.
pub async fn accept_loop(endpoint: Endpoint, state: Arc<StubState>, cancel: CancellationToken, tracker: TaskTracker) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = cancel.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        tracker.spawn(serve_agent(incoming, state.clone()));
    }
}

/// The certificate fingerprint of a connected peer.
fn peer_fingerprint(conn: &Connection) -> Option<Fingerprint> {
    let certs = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    certs.first().map(|leaf| Fingerprint::of_der(leaf))
}

fn close(conn: &Connection, code: AppCode, reason: &str) {
    conn.close(code.varint(), reason.as_bytes());
}

async fn serve_agent(incoming: Incoming, state: Arc<StubState>) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        // The verifier has logged why, with the fingerprint.
        Err(e) => return tracing::debug!(%remote, error = %e, "agent handshake failed"),
    };
    let Some(fingerprint) = peer_fingerprint(&conn) else {
        return close(&conn, AppCode::ProtocolViolation, "no client certificate");
    };
    // The whitelist may have changed since the handshake; the entry in force now decides.
    let Some(entry) = state.whitelist.get().lookup(&fingerprint).cloned() else {
        return close(&conn, AppCode::Revoked, "certificate is no longer in the whitelist");
    };
    let span = tracing::info_span!("agent", cluster = %entry.cluster, name = %entry.name, %remote);
    async move {
        let hello = match read_hello(&conn).await {
            Ok(x) => x,
            Err((code, reason)) => {
                tracing::warn!(%fingerprint, reason, "closing agent connection: {}", code.describe());
                return close(&conn, code, &reason);
            }
        };
        let (mut control_send, mut control_recv, hello) = hello;
        if hello.cluster != entry.cluster {
            let reason = format!(
                "certificate {fingerprint} is registered for cluster {:?}, but the agent claims cluster {:?}",
                entry.cluster, hello.cluster
            );
            tracing::warn!("refused agent: {reason}");
            return close(&conn, AppCode::IdentityMismatch, &reason);
        }
        if hello.agent_name != entry.name {
            tracing::info!(claimed = %hello.agent_name, "agent name differs from its whitelist entry; using the entry's");
        }
        let link = Arc::new(AgentLink::new(state.registry.next_id(), entry.cluster.clone(), entry.name.clone(), fingerprint, conn.clone()));
        state.registry.add(link.clone());
        let welcome = Control::Welcome(Welcome { protocol_version: PROTOCOL_VERSION, connection_id: link.id, build: crate::BUILD.into() });
        if let Err(e) = write_frame(&mut control_send, &welcome).await {
            tracing::debug!(error = %e, "agent went away before its welcome");
            state.registry.remove(&link);
            return;
        }
        tracing::info!(connection = link.id, build = %hello.build, "agent connected");
        watch_control(&conn, &link, &mut control_send, &mut control_recv).await;
        state.registry.remove(&link);
        let reason = conn.close_reason().map(|r| r.to_string()).unwrap_or_default();
        tracing::info!(connection = link.id, %reason, "agent disconnected");
    }
    .instrument(span)
    .await
}

type ControlStream = (quinn::SendStream, quinn::RecvStream, Hello);

async fn read_hello(conn: &Connection) -> Result<ControlStream, (AppCode, String)> {
    let (send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| (AppCode::Timeout, "no control stream".to_owned()))?
        .map_err(|e| (AppCode::Normal, format!("connection lost before hello: {e}")))?;
    let hello = match read_frame_within(&mut recv, HELLO_TIMEOUT).await {
        Ok(Control::Hello(hello)) => hello,
        Ok(other) => return Err((AppCode::ProtocolViolation, format!("expected hello, got {other:?}"))),
        Err(WireError::Timeout(_)) => return Err((AppCode::Timeout, "no hello".into())),
        Err(e) => return Err((AppCode::ProtocolViolation, format!("bad hello: {e}"))),
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err((
            AppCode::VersionMismatch,
            format!("agent speaks protocol {}, this stub speaks {PROTOCOL_VERSION}", hello.protocol_version),
        ));
    }
    Ok((send, recv, hello))
}

/// Follows the control stream until the connection ends.
async fn watch_control(
    conn: &Connection,
    link: &AgentLink,
    control_send: &mut quinn::SendStream,
    control: &mut quinn::RecvStream,
) {
    loop {
        let frame = tokio::select! {
            frame = read_frame::<Control, _>(control) => frame,
            _ = conn.closed() => return,
        };
        match frame {
            Ok(Control::Drain) => {
                tracing::info!(connection = link.id, "agent draining: routing nothing new to it");
                link.set_draining();
                // From here on `pick` skips this link, so the agent may count down to zero.
                if let Err(e) = write_frame(control_send, &Control::DrainAck).await {
                    tracing::debug!(error = %e, "could not acknowledge the drain");
                }
            }
            Ok(other) => {
                return close(conn, AppCode::ProtocolViolation, &format!("unexpected control frame {other:?}"));
            }
            Err(WireError::Closed) => {
                // The agent finished its control stream: it has sent its last response. Close
                // once every response has been received whole; closing sooner (on either side)
                // would throw away response bytes still in flight.
                link.set_draining();
                tokio::select! {
                    _ = link.idle() => conn.close(AppCode::Normal.varint(), b"drained"),
                    _ = conn.closed() => {}
                }
                return;
            }
            Err(WireError::Frame(e)) => return close(conn, AppCode::ProtocolViolation, &e.to_string()),
            Err(_) => {
                conn.closed().await;
                return;
            }
        }
    }
}
