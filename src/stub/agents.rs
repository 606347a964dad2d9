//! The agent side of the stub: an agent connection, over QUIC or the TCP fallback, whose TLS
//! handshake has already checked chain and whitelist (see [`crate::transport::listen`]): read
//! the hello on the control stream, check the claimed cluster against the whitelist entry,
//! welcome the agent into the registry, follow its control stream (drain), and take it out of
//! the registry when it goes.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::hop::{Hop, HopTo};
use super::metrics::StubMetrics;
use super::state::StubState;
use crate::hub::members::Members;
use crate::identity::fingerprint::Fingerprint;
use crate::liveness;
use crate::transport::{Connection, RecvHalf, SendHalf};
use crate::wire::codes::AppCode;
use crate::wire::frame::{Control, Welcome};
use crate::wire::io::{WireError, read_frame_within, read_frames, write_frame};
use crate::wire::{PROTOCOL_VERSION, frame::Hello};

/// How long an agent may take to open its control stream and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one agent connection whose handshake is done (see [`crate::transport::listen`]):
/// hello, the whitelist entry in force, welcome, then its control stream until it ends.
pub async fn serve_agent(conn: Connection, fingerprint: Option<Fingerprint>, state: Arc<StubState>) {
    let remote = conn.remote_address();
    let Some(fingerprint) = fingerprint else {
        // The verifier requires a certificate, so this is a broken handshake, not a caller.
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
        let (mut control_send, control_recv, hello) = hello;
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
        let to = HopTo::Agent { cluster: entry.cluster.clone(), name: entry.name.clone(), fingerprint };
        let agent = Arc::new(Hop::new(state.registry.next_id(), to, conn.clone(), hello.build.clone()));
        state.registry.add(agent.clone());
        let observer = SilenceLog { connection: agent.id, cluster: entry.cluster.clone(), metrics: state.metrics.clone() };
        tokio::spawn(liveness::watch(agent.liveness.clone(), conn.clone(), observer).in_current_span());
        // The agent asks whether its packets still arrive (see `transport::echo`).
        tokio::spawn(crate::transport::echo::answer(conn.clone()));
        let welcome = Control::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            connection_id: agent.id,
            build: crate::BUILD.into(),
            replica: state.hub.replica.clone(),
            members: state.hub.members.borrow().keys().cloned().collect(),
        });
        if let Err(e) = write_frame(&mut control_send, &welcome).await {
            tracing::debug!(error = %e, "agent went away before its welcome");
            state.registry.remove(&agent);
            return;
        }
        tracing::info!(connection = agent.id, build = %hello.build, "agent connected");
        if hello.build != crate::BUILD {
            // Same protocol (checked above), another build: fine to run, worth knowing about
            // (an agent left behind by an upgrade, or one ahead of a rollback).
            tracing::warn!(
                connection = agent.id,
                agent_build = %hello.build,
                stub_build = crate::BUILD,
                "agent runs another build than this stub; `tether status` lists every connection's build"
            );
        }
        watch_control(&conn, &agent, &mut control_send, control_recv, state.hub.members.clone()).await;
        state.registry.remove(&agent);
        let reason = conn.close_reason().unwrap_or_default();
        tracing::info!(connection = agent.id, %reason, "agent disconnected");
    }
    .instrument(span)
    .await
}

/// Says when an agent connection goes silent and when it is heard again.
struct SilenceLog {
    connection: u64,
    cluster: String,
    metrics: Arc<StubMetrics>,
}

impl liveness::Observer for SilenceLog {
    fn suspect(&self, silent: Duration) {
        tracing::warn!(
            connection = self.connection,
            ?silent,
            "agent connection silent: routing around it, retrying the reads waiting on it elsewhere"
        );
        self.metrics.agents_suspected.inc(&[&self.cluster]);
    }

    fn heard_again(&self, silent: Duration) {
        tracing::info!(connection = self.connection, ?silent, "agent connection heard again");
    }
}

type ControlStream = (SendHalf, RecvHalf, Hello);

async fn read_hello(conn: &Connection) -> Result<ControlStream, (AppCode, String)> {
    let (send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.listener_control())
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

/// Follows the control stream until the connection ends, and tells the agent when the hub's
/// member count changes (it holds connections to as many distinct replicas as it can).
async fn watch_control(
    conn: &Connection,
    agent: &Hop,
    control_send: &mut SendHalf,
    control: RecvHalf,
    mut members: tokio::sync::watch::Receiver<Members>,
) {
    let mut frames = read_frames::<Control, _>(control);
    let mut replicas: Vec<String> = members.borrow_and_update().keys().cloned().collect();
    let mut members_change = true;
    loop {
        let frame = tokio::select! {
            frame = frames.recv() => frame.unwrap_or(Err(WireError::Closed)),
            changed = members.changed(), if members_change => {
                if changed.is_err() {
                    members_change = false;
                    continue;
                }
                let now: Vec<String> = members.borrow_and_update().keys().cloned().collect();
                if now != replicas {
                    replicas = now;
                    let update = Control::Members { replicas: replicas.clone() };
                    if let Err(e) = write_frame(control_send, &update).await {
                        tracing::debug!(error = %e, "could not tell the agent the member count");
                    }
                }
                continue;
            }
            _ = conn.closed() => return,
        };
        match frame {
            Ok(Control::Drain) => {
                tracing::info!(connection = agent.id, "agent draining: routing nothing new to it");
                agent.set_draining();
                // From here on `pick` skips this connection, so the agent may count down to zero.
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
                agent.set_draining();
                tokio::select! {
                    _ = agent.idle() => conn.close(AppCode::Normal, "drained"),
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
