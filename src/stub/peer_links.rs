//! Peer links between the hub's replicas (`docs/design.md`, "The hub on many machines"). A
//! replica dials every other member ([`mesh`]) and keeps that link: over it, it announces the
//! clusters it holds agent connections for (all of them at once, then each change), and serves
//! the requests the other replica forwards to it ([`super::relay`]), as an agent serves a
//! stub. The other way round, it accepts the links of the other members ([`serve_link`]),
//! records what they announce ([`super::peer_routes`]) and forwards front-door requests over
//! them. So each pair of replicas has two links, one each way, and a replica only ever
//! announces its own connections: soft state, with no authority but the holder.
//!
//! Both ends are checked: the TLS handshake requires a stub certificate of the tether CA
//! ([`crate::identity::peer`]); the hello must name a current member (not this replica); the
//! welcome must come from the member that was dialled.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::hop::{Hop, HopTo};
use super::metrics::StubMetrics;
use super::state::StubState;
use crate::backoff::Backoff;
use crate::hub::members::Members;
use crate::identity::fingerprint::Fingerprint;
use crate::liveness;
use crate::transport::dial::{ClientTls, Dialer};
use crate::transport::quic::Tuning;
use crate::transport::{Connection, Transport};
use crate::wire::PROTOCOL_VERSION;
use crate::wire::codes::AppCode;
use crate::wire::frame::PeerControl;
use crate::wire::io::{WireError, read_frame, read_frame_within, write_frame};

/// How long a peer may take to say hello, or to welcome us.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Clusters per `Announce` frame: 63-byte names and their prefixes stay well under the frame limit.
const ANNOUNCE_BATCH: usize = 2000;
/// The name the dialer asks for in TLS; the peer verifier checks the CA and key usage, not names
/// (replicas dial each other by pod address).
const PEER_SERVER_NAME: &str = "tether-peer";

/// Says when a peer link goes silent and when it is heard again.
struct SilenceLog {
    replica: String,
}

impl liveness::Observer for SilenceLog {
    fn suspect(&self, silent: Duration) {
        tracing::warn!(replica = %self.replica, ?silent, "peer link silent: routing around it");
    }

    fn heard_again(&self, silent: Duration) {
        tracing::info!(replica = %self.replica, ?silent, "peer link heard again");
    }
}

/// The listening side: a link a peer replica dialled, whose TLS handshake is done. Hello,
/// welcome, then its announcements until the link ends or the replica leaves the hub.
pub async fn serve_link(conn: Connection, fingerprint: Option<Fingerprint>, state: Arc<StubState>) {
    let remote = conn.remote_address();
    let span = tracing::info_span!("peer", %remote, replica = tracing::field::Empty);
    async move {
        let (mut send, mut recv) = match tokio::time::timeout(HELLO_TIMEOUT, conn.listener_control()).await {
            Ok(Ok(control)) => control,
            _ => return conn.close(AppCode::Timeout, "no control stream"),
        };
        let (replica, build) = match read_frame_within(&mut recv, HELLO_TIMEOUT).await {
            Ok(PeerControl::Hello { protocol_version, replica, build }) if protocol_version == PROTOCOL_VERSION => {
                tracing::Span::current().record("replica", replica.as_str());
                tracing::debug!(%build, ?fingerprint, "peer hello");
                (replica, build)
            }
            Ok(PeerControl::Hello { protocol_version, .. }) => {
                let reason = format!("peer speaks protocol {protocol_version}, this replica {PROTOCOL_VERSION}");
                tracing::warn!("refused peer link: {reason}");
                return conn.close(AppCode::VersionMismatch, &reason);
            }
            Ok(other) => return conn.close(AppCode::ProtocolViolation, &format!("expected hello, got {other:?}")),
            Err(e) => return conn.close(AppCode::ProtocolViolation, &format!("no valid hello: {e}")),
        };
        if let Err(reason) = check_member(&state, &replica) {
            tracing::warn!("refused peer link: {reason}");
            return conn.close(AppCode::NotMember, &reason);
        }
        let welcome = PeerControl::Welcome { protocol_version: PROTOCOL_VERSION, replica: state.hub.replica.clone() };
        if write_frame(&mut send, &welcome).await.is_err() {
            return;
        }
        let to = HopTo::Peer { replica: replica.clone() };
        let link = Arc::new(Hop::new(state.registry.next_id(), to, conn.clone(), build));
        if let Some(old) = state.hub.peers.add_link(link.clone()) {
            old.connection.close(AppCode::Duplicate, "replaced by a newer link from the same replica");
        }
        tokio::spawn(
            liveness::watch(link.liveness.clone(), conn.clone(), SilenceLog { replica: replica.clone() })
                .in_current_span(),
        );
        tracing::info!(connection = link.id, "peer linked in");
        let mut members = state.hub.members.clone();
        loop {
            tokio::select! {
                frame = read_frame::<PeerControl, _>(&mut recv) => match frame {
                    Ok(PeerControl::Announce { added, removed }) => {
                        tracing::debug!(added = added.len(), removed = removed.len(), "peer announced");
                        state.hub.peers.announce(&link, added, removed);
                    }
                    Ok(other) => {
                        conn.close(AppCode::ProtocolViolation, &format!("unexpected {other:?}"));
                        break;
                    }
                    Err(WireError::Frame(e)) => {
                        conn.close(AppCode::ProtocolViolation, &e.to_string());
                        break;
                    }
                    Err(_) => break,
                },
                changed = members.changed() => {
                    if changed.is_err() || !members.borrow_and_update().contains_key(&replica) {
                        conn.close(AppCode::NotMember, "no longer a member of the hub");
                        break;
                    }
                }
            }
        }
        state.hub.peers.remove_link(&link);
        conn.close(AppCode::Normal, "link ended");
        tracing::info!(connection = link.id, reason = %conn.close_reason().unwrap_or_default(), "peer link ended");
    }
    .instrument(span)
    .await
}

fn check_member(state: &StubState, replica: &str) -> Result<(), String> {
    if replica == state.hub.replica {
        return Err(format!("the peer claims this replica's own id {replica:?} (two replicas with one --id?)"));
    }
    let members = state.hub.members.borrow();
    if !members.contains_key(replica) {
        let known: Vec<&str> = members.keys().map(String::as_str).collect();
        return Err(format!("replica {replica:?} is not a member of this hub (members: {})", known.join(", ")));
    }
    Ok(())
}

/// The dialing side: keeps one link to every other member as the members change, until
/// `cancel`. `tls` is this replica's peer TLS (its stub certificate).
pub async fn mesh(
    state: Arc<StubState>,
    tls: ClientTls,
    tuning: Tuning,
    metrics: Arc<StubMetrics>,
    cancel: CancellationToken,
) {
    let mut members = state.hub.members.clone();
    // Member id -> (its address, the task keeping its link).
    let mut links: HashMap<String, (String, CancellationToken)> = HashMap::new();
    loop {
        let now: Members = members.borrow_and_update().clone();
        links.retain(|id, (address, stop)| {
            let keep = now.get(id) == Some(address);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (id, address) in now.iter().filter(|(id, _)| **id != state.hub.replica) {
            if links.contains_key(id) {
                continue;
            }
            let stop = cancel.child_token();
            let link = LinkOut {
                state: state.clone(),
                tls: tls.clone(),
                tuning: tuning.clone(),
                replica: id.clone(),
                address: address.clone(),
            };
            tokio::spawn(link.run(stop.clone(), metrics.clone()));
            links.insert(id.clone(), (address.clone(), stop));
        }
        tokio::select! {
            changed = members.changed() => if changed.is_err() { break },
            _ = cancel.cancelled() => break,
        }
    }
    for (_, stop) in links.into_values() {
        stop.cancel();
    }
}

/// One outgoing link, to one member, kept up with backoff.
struct LinkOut {
    state: Arc<StubState>,
    tls: ClientTls,
    tuning: Tuning,
    replica: String,
    address: String,
}

impl LinkOut {
    async fn run(self, stop: CancellationToken, metrics: Arc<StubMetrics>) {
        let span = tracing::info_span!("peer", replica = %self.replica, address = %self.address);
        async move {
            let dialer = match Dialer::new(&self.address, PEER_SERVER_NAME, &self.tuning) {
                Ok(dialer) => dialer,
                Err(e) => return tracing::error!(error = %e, "cannot bind a UDP socket for the peer link"),
            };
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
            while !stop.is_cancelled() {
                let started = tokio::time::Instant::now();
                let outcome = tokio::select! {
                    outcome = self.connect_and_serve(&dialer, &metrics, &stop) => outcome,
                    _ = stop.cancelled() => break,
                };
                if started.elapsed() >= Duration::from_secs(10) {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                match outcome {
                    Ok(reason) => tracing::warn!(retry_in = ?delay, "peer link lost: {reason}"),
                    Err(reason) => tracing::warn!(retry_in = ?delay, "cannot link to peer: {reason}"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => break,
                }
            }
            dialer.endpoint().close(AppCode::NotMember.varint(), b"no longer a member");
        }
        .instrument(span)
        .await
    }

    /// Dials, says hello, announces, and serves forwarded requests until the link ends (its
    /// reason) or `stop`. `Err`: it never got going.
    async fn connect_and_serve(
        &self,
        dialer: &Dialer,
        metrics: &Arc<StubMetrics>,
        stop: &CancellationToken,
    ) -> Result<String, String> {
        let conn = dialer.dial(&self.tls, Transport::Quic).await?;
        let (mut send, mut recv) = conn.dialer_control().await?;
        let hello = PeerControl::Hello {
            protocol_version: PROTOCOL_VERSION,
            replica: self.state.hub.replica.clone(),
            build: crate::BUILD.into(),
        };
        write_frame(&mut send, &hello).await.map_err(|e| conn.explain_failure(&e))?;
        match read_frame_within::<PeerControl, _>(&mut recv, HELLO_TIMEOUT).await {
            Ok(PeerControl::Welcome { replica, .. }) if replica == self.replica => {}
            Ok(PeerControl::Welcome { replica, .. }) => {
                conn.close(AppCode::NotMember, "not the replica that was dialled");
                return Err(format!(
                    "{} answered as replica {replica:?}, not {:?}: two members share an address?",
                    self.address, self.replica
                ));
            }
            Ok(other) => return Err(format!("expected a welcome, got {other:?}")),
            Err(e) => return Err(conn.explain_failure(&e)),
        }
        tracing::info!("peer link up");
        self.state.hub.set_linked_out(&self.replica, true);
        let mut held = self.state.registry.held();
        let mut announced = BTreeSet::new();
        let streams = tokio_util::task::TaskTracker::new();
        let lost = loop {
            let now = held.borrow_and_update().clone();
            if let Err(e) = announce(&mut send, &mut announced, now).await {
                break conn.explain_failure(&e);
            }
            tokio::select! {
                changed = held.changed() => if changed.is_err() { break "the registry ended".to_owned() },
                accepted = conn.accept_stream() => match accepted {
                    Ok((send, recv)) => {
                        let (state, from) = (self.state.clone(), self.replica.clone());
                        streams.spawn(super::relay::serve(state, metrics.clone(), from, send, recv).in_current_span());
                    }
                    Err(reason) => break reason,
                },
                _ = stop.cancelled() => {
                    conn.close(AppCode::NotMember, "no longer a member of the hub");
                    break "this replica left the link (the peer left the hub)".to_owned();
                }
            }
        };
        self.state.hub.set_linked_out(&self.replica, false);
        conn.close(AppCode::Normal, "link ended");
        Ok(lost)
    }
}

/// Sends what changed between `announced` and `now`, in batches, and remembers `now`.
async fn announce(
    send: &mut crate::transport::SendHalf,
    announced: &mut BTreeSet<String>,
    now: BTreeSet<String>,
) -> Result<(), WireError> {
    let added: Vec<String> = now.difference(announced).cloned().collect();
    let removed: Vec<String> = announced.difference(&now).cloned().collect();
    for batch in removed.chunks(ANNOUNCE_BATCH) {
        write_frame(send, &PeerControl::Announce { added: vec![], removed: batch.to_vec() }).await?;
    }
    for batch in added.chunks(ANNOUNCE_BATCH) {
        write_frame(send, &PeerControl::Announce { added: batch.to_vec(), removed: vec![] }).await?;
    }
    *announced = now;
    Ok(())
}
