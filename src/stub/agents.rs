//! The agent side of the stub: accept agent connections over QUIC, or over the TCP fallback
//! (TLS on the same port, then HTTP/2), whose TLS handshake has already checked chain and
//! whitelist; read the hello on the control stream, check the claimed cluster against the
//! whitelist entry, welcome the agent into the registry, and take it out when it goes.

use std::sync::Arc;
use std::time::Duration;

use quinn::{Endpoint, Incoming};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::StubState;
use super::registry::AgentLink;
use crate::identity::fingerprint::Fingerprint;
use crate::transport::h2link::H2Link;
use crate::transport::{Link, RecvHalf, SendHalf};
use crate::wire::codes::AppCode;
use crate::wire::frame::{Control, Welcome};
use crate::wire::io::{WireError, read_frame, read_frame_within, write_frame};
use crate::wire::{ALPN, PROTOCOL_VERSION, frame::Hello};

/// How long an agent may take to open its control stream and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TCP agent may take for its TLS handshake.
const TLS_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts QUIC agents until `cancel` fires.
pub async fn accept_loop(endpoint: Endpoint, state: Arc<StubState>, cancel: CancellationToken, tracker: TaskTracker) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = cancel.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        tracker.spawn(serve_quic_agent(incoming, state.clone()));
    }
}

/// Accepts TCP-fallback agents until `cancel` fires.
pub async fn accept_tcp_loop(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<StubState>,
    idle: Duration,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "agent TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, state) = (acceptor.clone(), state.clone());
        tracker.spawn(async move {
            let tls = match tokio::time::timeout(TLS_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                // The verifier has logged why, with the fingerprint.
                Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "agent TCP handshake failed"),
                Err(_) => return tracing::debug!(%remote, "agent TCP handshake timed out"),
            };
            let (_, session) = tls.get_ref();
            if session.alpn_protocol() != Some(ALPN) {
                return tracing::debug!(%remote, "TCP peer does not speak tether/1");
            }
            let fingerprint = session.peer_certificates().and_then(|c| c.first()).map(|leaf| Fingerprint::of_der(leaf));
            let link = match H2Link::stub_side(tls, remote, idle).await {
                Ok(link) => Link::Tcp(link),
                Err(e) => return tracing::debug!(%remote, error = %e, "agent HTTP/2 handshake failed"),
            };
            serve_link(link, fingerprint, state).await;
        });
    }
}

/// The certificate fingerprint of a connected QUIC peer.
fn peer_fingerprint(conn: &quinn::Connection) -> Option<Fingerprint> {
    let certs = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    certs.first().map(|leaf| Fingerprint::of_der(leaf))
}

async fn serve_quic_agent(incoming: Incoming, state: Arc<StubState>) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        // The verifier has logged why, with the fingerprint.
        Err(e) => return tracing::debug!(%remote, error = %e, "agent handshake failed"),
    };
    let fingerprint = peer_fingerprint(&conn);
    serve_link(Link::Quic(conn), fingerprint, state).await;
}

async fn serve_link(conn: Link, fingerprint: Option<Fingerprint>, state: Arc<StubState>) {
    let remote = conn.remote_address();
    let Some(fingerprint) = fingerprint else {
        return conn.close(AppCode::ProtocolViolation, "no client certificate");
    };
    // The whitelist may have changed since the handshake; the entry in force now decides.
    let Some(entry) = state.whitelist.get().lookup(&fingerprint).cloned() else {
        return conn.close(AppCode::Revoked, "certificate is no longer in the whitelist");
    };
    let transport = conn.transport();
    let span = tracing::info_span!("agent", cluster = %entry.cluster, name = %entry.name, %remote, %transport);
    async move {
        let hello = match read_hello(&conn).await {
            Ok(x) => x,
            Err((code, reason)) => {
                tracing::warn!(%fingerprint, reason, "closing agent connection: {}", code.describe());
                return conn.close(code, &reason);
            }
        };
        let (mut control_send, mut control_recv, hello) = hello;
        if hello.cluster != entry.cluster {
            let reason = format!(
                "certificate {fingerprint} is registered for cluster {:?}, but the agent claims cluster {:?}",
                entry.cluster, hello.cluster
            );
            tracing::warn!("refused agent: {reason}");
            return conn.close(AppCode::IdentityMismatch, &reason);
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
        let reason = conn.close_reason().unwrap_or_default();
        tracing::info!(connection = link.id, %reason, "agent disconnected");
    }
    .instrument(span)
    .await
}

type ControlStream = (SendHalf, RecvHalf, Hello);

async fn read_hello(conn: &Link) -> Result<ControlStream, (AppCode, String)> {
    let (send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.stub_control())
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
async fn watch_control(conn: &Link, link: &AgentLink, control_send: &mut SendHalf, control: &mut RecvHalf) {
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
                return conn.close(AppCode::ProtocolViolation, &format!("unexpected control frame {other:?}"));
            }
            Err(WireError::Closed) => {
                // The agent finished its control stream: it has sent its last response. Close
                // once every response has been received whole; closing sooner (on either side)
                // would throw away response bytes still in flight.
                link.set_draining();
                tokio::select! {
                    _ = link.idle() => conn.close(AppCode::Normal, "drained"),
                    _ = conn.closed() => {}
                }
                return;
            }
            Err(WireError::Frame(e)) => return conn.close(AppCode::ProtocolViolation, &e.to_string()),
            Err(_) => {
                conn.closed().await;
                return;
            }
        }
    }
}
