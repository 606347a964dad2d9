//! One connection to the stub: say hello on the control stream and wait for the welcome
//! ([`establish`]), then serve every stream the stub opens on its own task until the connection
//! ends or the agent asks it to stop ([`serve`]; then: `Drain`, let in-flight streams finish
//! within the grace period, close). Two sessions overlap while a new certificate takes over.

use std::sync::Arc;
use std::time::Duration;

use quinn::{ConnectionError, TransportErrorCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::forward::Forwarder;
use super::forward::serve_stream;
use crate::transport::{Link, RecvHalf, SendHalf};
use crate::wire::PROTOCOL_VERSION;
use crate::wire::codes::AppCode;
use crate::wire::frame::{Control, Hello};
use crate::wire::io::{WireError, read_frame, read_frame_within, write_frame};

const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection the stub has welcomed.
pub struct Session {
    conn: Link,
    control: SendHalf,
    control_recv: RecvHalf,
    pub connection_id: u64,
}

impl Session {
    pub fn transport(&self) -> crate::transport::Transport {
        self.conn.transport()
    }

    pub fn link(&self) -> &Link {
        &self.conn
    }
}

/// How a served session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The agent asked it to stop, and it drained.
    Stopped,
    /// The connection was lost; the reason is in plain words.
    Lost { reason: String },
}

/// Says hello on a new connection and waits for the stub's welcome; the error is in plain words.
pub async fn establish(conn: Link, cluster: &str, name: &str) -> Result<Session, String> {
    let (mut control, mut control_recv) = conn.agent_control().await?;
    let hello = Control::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        cluster: cluster.to_owned(),
        agent_name: name.to_owned(),
        build: crate::BUILD.into(),
    });
    write_frame(&mut control, &hello).await.map_err(|e| explain_wire(&conn, &e))?;
    // In TLS 1.3 the handshake completes on our side before the stub has judged our
    // certificate, so only the welcome proves we are in.
    match read_frame_within(&mut control_recv, WELCOME_TIMEOUT).await {
        Ok(Control::Welcome(w)) => Ok(Session { conn, control, control_recv, connection_id: w.connection_id }),
        Ok(other) => {
            conn.close(AppCode::ProtocolViolation, "expected welcome");
            Err(format!("stub sent {other:?} instead of a welcome"))
        }
        Err(e) => Err(explain_wire(&conn, &e)),
    }
}

/// Serves the stub's streams until the connection ends or `stop` is cancelled (then drains).
pub async fn serve(
    mut session: Session,
    forwarder: Arc<Forwarder>,
    stop: CancellationToken,
    grace: Duration,
) -> SessionEnd {
    let streams = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = session.conn.accept_stream() => accepted,
            _ = stop.cancelled() => break,
        };
        match accepted {
            Ok((send, recv)) => {
                streams.spawn(serve_stream(forwarder.clone(), send, recv));
            }
            Err(reason) => return SessionEnd::Lost { reason },
        }
    }
    drain(&mut session, &forwarder, &streams, grace).await;
    SessionEnd::Stopped
}

/// Graceful end: ask the stub to route nothing new here, keep serving whatever it opened
/// before it heard that (until its `DrainAck`), let in-flight streams finish within the grace
/// period, then close. A rolling restart of the replicas fails no request this way.
async fn drain(session: &mut Session, forwarder: &Arc<Forwarder>, streams: &TaskTracker, grace: Duration) {
    let Session { conn, control, control_recv, connection_id } = session;
    tracing::info!(
        connection = *connection_id,
        ?grace,
        in_flight = streams.len(),
        "draining: asking the stub to route nothing new here"
    );
    let deadline = tokio::time::Instant::now() + grace;
    let mut acked = write_frame(control, &Control::Drain).await.is_err();
    let mut ack = std::pin::pin!(read_frame::<Control, _>(control_recv));
    // Streams keep being accepted to the end: one the stub routed just before it heard the
    // drain may still arrive, and is served like any other.
    loop {
        tokio::select! {
            frame = &mut ack, if !acked => {
                if !matches!(frame, Ok(Control::DrainAck)) {
                    tracing::debug!(?frame, "no drain acknowledgement; finishing what is in flight");
                }
                acked = true;
                streams.close();
                tracing::info!(connection = *connection_id, in_flight = streams.len(), "drained: no new requests; finishing in-flight ones");
            }
            accepted = conn.accept_stream() => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(serve_stream(forwarder.clone(), send, recv));
                }
                Err(_) => break,
            },
            _ = streams.wait(), if acked => break,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(abandoned = streams.len(), "grace period over with requests still in flight");
                break;
            }
        }
    }
    // Finishing the control stream tells the stub we sent our last response; it closes the
    // connection once it has received them all. Closing here at once could lose their tails.
    control.finish();
    if tokio::time::timeout_at(deadline, conn.closed()).await.is_err() {
        tracing::warn!("the stub did not close the drained connection within the grace period");
    }
    conn.close(AppCode::Draining, "agent shutting down");
}

fn explain_wire(conn: &Link, e: &WireError) -> String {
    match conn {
        Link::Quic(c) => match c.close_reason() {
            Some(reason) => explain(&reason),
            None => format!("control stream failed: {e}"),
        },
        Link::Tcp(l) => match l.close_reason() {
            Some(reason) => reason,
            None => explain_tcp_wire(e),
        },
    }
}

/// Plain words for a TCP link whose control stream failed: a TLS alert from the stub's verifier
/// arrives here (in TLS 1.3 our handshake completes before the stub has judged us).
fn explain_tcp_wire(e: &WireError) -> String {
    let WireError::Io(io) = e else { return format!("control stream failed: {e}") };
    explain_tcp(io)
}

/// Plain words for a failed TCP dial or handshake.
pub fn explain_tcp(e: &std::io::Error) -> String {
    match rustls_error_in(e) {
        Some(rustls::Error::AlertReceived(alert)) => {
            return format!("refused by stub: {}", explain_alert(u8::from(*alert)));
        }
        Some(rustls::Error::InvalidCertificate(problem)) => {
            return format!(
                "cannot trust the stub: {problem:?} (check --server-name and that the stub's certificate is signed by this CA)"
            );
        }
        _ => {}
    }
    format!("connection failed: {}", crate::bridge::error_chain(e))
}

/// The rustls error somewhere inside `e`. `io::Error::source` skips the error it wraps, and h2
/// keeps its I/O error to itself, so each layer is opened by hand.
fn rustls_error_in(e: &std::io::Error) -> Option<&rustls::Error> {
    let mut node: &(dyn std::error::Error + 'static) = e.get_ref()?;
    for _ in 0..8 {
        if let Some(found) = node.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        node = if let Some(io) = node.downcast_ref::<std::io::Error>() {
            io.get_ref()?
        } else if let Some(h2) = node.downcast_ref::<h2::Error>() {
            h2.get_io()?.get_ref()?
        } else {
            node.source()?
        };
    }
    None
}

/// Plain words for a lost or refused connection. The stub refuses certificates with TLS alerts
/// (QUIC crypto errors 0x100 + alert) and closes for other reasons with an [`AppCode`].
pub fn explain(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            match code.checked_sub(0x100).filter(|a| *a < 0x100) {
                Some(alert) => format!("refused by stub: {}", explain_alert(alert as u8)),
                None => format!("stub closed the connection: {close}"),
            }
        }
        ConnectionError::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason);
            match AppCode::from_varint(close.error_code) {
                Some(AppCode::IdentityMismatch) => format!("refused by stub: {reason}"),
                Some(code) => format!("stub closed the connection: {} ({reason})", code.describe()),
                None => format!("stub closed the connection with code {} ({reason})", close.error_code),
            }
        }
        ConnectionError::TransportError(t) if is_crypto(t.code) => {
            format!(
                "cannot trust the stub: {t} (check --server-name and that the stub's certificate is signed by this CA)"
            )
        }
        ConnectionError::TimedOut => "stub did not answer (timed out); is it running and reachable over UDP?".into(),
        other => format!("connection lost: {other}"),
    }
}

fn is_crypto(code: TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

fn explain_alert(alert: u8) -> String {
    match alert {
        0x31 => "certificate not in the stub's whitelist (TLS alert access_denied); register its fingerprint with `tether certs agent --register` or add it to the whitelist".into(),
        0x30 => "certificate is not signed by the stub's CA (TLS alert unknown_ca)".into(),
        0x2d => "certificate has expired or is not yet valid (TLS alert certificate_expired)".into(),
        0x2a | 0x2b | 0x2e => "certificate was rejected (TLS alert bad_certificate)".into(),
        0x33 => "certificate's signature does not verify: it was signed by another CA than the stub's (TLS alert decrypt_error)".into(),
        0x74 => "the stub requires a client certificate (TLS alert certificate_required)".into(),
        0x78 => "the stub does not speak tether/1 (TLS alert no_application_protocol)".into(),
        other => format!("TLS alert {other:#x}"),
    }
}
