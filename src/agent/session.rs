//! One connection to the stub: say hello on the control stream and wait for the welcome
//! ([`establish`]), then serve every stream the stub opens on its own task until the connection
//! ends or the agent asks it to stop ([`serve`]; then: `Drain`, let in-flight streams finish
//! within the grace period, close). Meanwhile the stub may say how many replicas the hub has
//! (`Members`), which the agent's slots follow. Two sessions overlap while a new certificate
//! takes over.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::forward::Forwarder;
use super::forward::serve_stream;
use crate::transport::{Connection, RecvHalf, SendHalf, Transport};
use crate::wire::PROTOCOL_VERSION;
use crate::wire::codes::AppCode;
use crate::wire::frame::{Control, Hello};
use crate::wire::io::{WireError, read_frame_within, read_frames, write_frame};

const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection the stub has welcomed.
pub struct Session {
    conn: Connection,
    control: SendHalf,
    control_recv: RecvHalf,
    /// The stub's id for the connection (both ends log it).
    pub connection_id: u64,
    /// The stub replica that welcomed us.
    pub replica: String,
    /// The hub's replicas at the welcome.
    pub members: Vec<String>,
}

impl Session {
    pub fn transport(&self) -> Transport {
        self.conn.transport()
    }

    pub fn connection(&self) -> &Connection {
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
pub async fn establish(conn: Connection, cluster: &str, name: &str) -> Result<Session, String> {
    let (mut control, mut control_recv) = conn.dialer_control().await?;
    let hello = Control::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        cluster: cluster.to_owned(),
        agent_name: name.to_owned(),
        build: crate::BUILD.into(),
    });
    write_frame(&mut control, &hello).await.map_err(|e| conn.explain_failure(&e))?;
    // In TLS 1.3 the handshake completes on our side before the stub has judged our
    // certificate, so only the welcome proves we are in.
    match read_frame_within(&mut control_recv, WELCOME_TIMEOUT).await {
        Ok(Control::Welcome(w)) => Ok(Session {
            conn,
            control,
            control_recv,
            connection_id: w.connection_id,
            replica: w.replica,
            members: w.members,
        }),
        Ok(other) => {
            conn.close(AppCode::ProtocolViolation, "expected welcome");
            Err(format!("stub sent {other:?} instead of a welcome"))
        }
        Err(e) => Err(conn.explain_failure(&e)),
    }
}

/// Serves the stub's streams until the connection ends or `stop` is cancelled (then drains).
/// `on_members` is told the hub's replicas whenever the stub says they changed.
pub async fn serve(
    session: Session,
    forwarder: Arc<Forwarder>,
    stop: CancellationToken,
    grace: Duration,
    on_members: impl Fn(Vec<String>) + Send,
    dead_after: Duration,
) -> SessionEnd {
    let Session { conn, mut control, control_recv, connection_id, .. } = session;
    let silent = crate::liveness::silent_for(&conn, dead_after);
    tokio::pin!(silent);
    let mut frames = read_frames::<Control, _>(control_recv);
    let mut control_open = true;
    let streams = TaskTracker::new();
    // Cancelled when a drain has been acknowledged: open watches then end (see `drain`).
    let watches_end = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            accepted = conn.accept_stream() => accepted,
            frame = frames.recv(), if control_open => {
                match frame {
                    Some(Ok(Control::Members { replicas })) => {
                        tracing::debug!(?replicas, "the hub's replicas changed");
                        on_members(replicas);
                    }
                    Some(Ok(other)) => tracing::debug!(frame = ?other, "unexpected control frame; ignored"),
                    // The stub keeps its control stream open while it serves; the connection's
                    // end is reported by `accept_stream`.
                    Some(Err(_)) | None => control_open = false,
                }
                continue;
            }
            _ = &mut silent => {
                let reason = format!("the stub was silent for {dead_after:?} (gone, or the path to it)");
                conn.close(AppCode::Timeout, &reason);
                return SessionEnd::Lost { reason };
            }
            _ = stop.cancelled() => break,
        };
        match accepted {
            Ok((send, recv)) => {
                streams.spawn(serve_stream(forwarder.clone(), send, recv, watches_end.clone()).in_current_span());
            }
            Err(reason) => return SessionEnd::Lost { reason },
        }
    }
    let control = ControlStream { conn: &conn, send: &mut control, frames: &mut frames, connection_id };
    drain(control, &forwarder, &streams, &watches_end, grace).await;
    SessionEnd::Stopped
}

/// A served connection's control stream, as the drain uses it.
struct ControlStream<'a> {
    conn: &'a Connection,
    send: &'a mut SendHalf,
    /// What the stub sends on it, read on a task of its own ([`read_frames`]).
    frames: &'a mut mpsc::Receiver<Result<Control, WireError>>,
    connection_id: u64,
}

/// Graceful end: ask the stub to route nothing new here, keep serving whatever it opened
/// before it heard that (until its `DrainAck`), let in-flight streams finish within the grace
/// period, then close. A rolling restart of the replicas fails no request this way. Watches
/// never finish by themselves, so once the stub routes nothing new here they are ended cleanly,
/// as an API server ends a watch: their clients watch again, through another agent.
async fn drain(
    control: ControlStream<'_>,
    forwarder: &Arc<Forwarder>,
    streams: &TaskTracker,
    watches_end: &CancellationToken,
    grace: Duration,
) {
    let ControlStream { conn, send: control, frames, connection_id } = control;
    tracing::info!(
        connection = connection_id,
        ?grace,
        in_flight = streams.len(),
        "draining: asking the stub to route nothing new here"
    );
    let deadline = tokio::time::Instant::now() + grace;
    let mut acked = write_frame(control, &Control::Drain).await.is_err();
    // Streams keep being accepted to the end: one the stub routed just before it heard the
    // drain may still arrive, and is served like any other.
    loop {
        tokio::select! {
            frame = frames.recv(), if !acked => {
                match frame {
                    Some(Ok(Control::DrainAck)) => {}
                    // The member count may still change while we wait; not an answer.
                    Some(Ok(Control::Members { .. })) => continue,
                    other => tracing::debug!(frame = ?other, "no drain acknowledgement; finishing what is in flight"),
                }
                acked = true;
                streams.close();
                watches_end.cancel();
                tracing::info!(connection = connection_id, in_flight = streams.len(), "drained: no new requests; finishing in-flight ones, ending watches");
            }
            accepted = conn.accept_stream() => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(serve_stream(forwarder.clone(), send, recv, watches_end.clone()).in_current_span());
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
    // connection once every request it routed here is answered. Closing here at once could
    // lose their tails. A request it routed in the instant before it heard the drain may still
    // arrive after the acknowledgement (a busy stub, a slow path): it is served too, until the
    // stub closes.
    control.finish();
    let served_to_the_end = tokio::time::timeout_at(deadline, async {
        while let Ok((send, recv)) = conn.accept_stream().await {
            tracing::debug!("a request routed just before the drain arrived late; serving it");
            streams.spawn(serve_stream(forwarder.clone(), send, recv, watches_end.clone()).in_current_span());
        }
    });
    if served_to_the_end.await.is_err() {
        tracing::warn!("the stub did not close the drained connection within the grace period");
    }
    conn.close(AppCode::Draining, "agent shutting down");
}
