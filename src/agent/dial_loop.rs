//! The agent's dial loops, one per connection slot (`--connections K`): dial the stub, serve the
//! welcomed session, and when it is lost dial again with capped backoff. The slots want K
//! distinct stub replicas ([`Replicas`]): a connection welcomed by a replica another slot holds
//! is closed and dialled again from a fresh UDP socket, and slots beyond the hub's member count
//! wait until it grows. While a session serves, two things may take over from it make before
//! break (a second connection is dialled and welcomed before the first drains): new
//! certificate files ([`Handover`]), and QUIC again after the TCP fallback
//! ([`TransportChoice`]). Readiness (any slot connected) and the connection metrics follow the
//! sessions in use.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::certificate::AgentCertificate;
use super::forward::Forwarder;
use super::handover::Handover;
use super::metrics::AgentMetrics;
use super::replicas::{Claim, Replicas, share_to_move};
use super::session::{self, Session, SessionEnd};
use super::transport_choice::{QUIC_FAILURES_BEFORE_TCP, TransportChoice};
use crate::admin::Readiness;
use crate::backoff::Backoff;
use crate::transport::Transport;
use crate::transport::dial::{DialFailure, Dialer};
use crate::wire::codes::AppCode;

/// A connection that lasted this long was healthy: the next failure starts backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// When the hub grows, connections that move do so within this time (spread, so that a fleet
/// of agents does not move at once).
const REBALANCE_SPREAD: Duration = Duration::from_secs(5);
/// Dials a moving connection tries before it stays where it is: each lands on a random
/// replica behind a load balancer, so with four replicas twelve miss the new one 3% of the time.
const REBALANCE_DIALS: usize = 12;
/// Redials after landing on a replica another slot holds: quick at first (a load balancer
/// usually sends the next socket elsewhere), slower if it keeps happening.
const DUPLICATE_BACKOFF: (Duration, Duration) = (Duration::from_millis(20), Duration::from_secs(2));

/// What every slot shares.
pub struct Slots {
    pub cluster: String,
    pub name: String,
    pub forwarder: Arc<Forwarder>,
    pub readiness: Readiness,
    pub metrics: Arc<AgentMetrics>,
    /// How long a replaced connection may take to finish its requests.
    pub grace: Duration,
    /// A connection silent this long is given up (see [`crate::liveness::silent_for`]).
    pub dead_after: Duration,
    pub cancel: CancellationToken,
    replicas: Mutex<Replicas>,
    /// The hub's replicas as last heard: slots with nothing to hold wait on them.
    members: watch::Sender<Vec<String>>,
    /// Slots serving a session now.
    serving: AtomicUsize,
}

impl Slots {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        k: usize,
        cluster: String,
        name: String,
        forwarder: Arc<Forwarder>,
        readiness: Readiness,
        metrics: Arc<AgentMetrics>,
        grace: Duration,
        dead_after: Duration,
        cancel: CancellationToken,
    ) -> Arc<Slots> {
        Arc::new(Slots {
            cluster,
            name,
            forwarder,
            readiness,
            metrics,
            grace,
            dead_after,
            cancel,
            replicas: Mutex::new(Replicas::new(k)),
            members: watch::Sender::new(Vec::new()),
            serving: AtomicUsize::new(0),
        })
    }

    fn replicas(&self) -> std::sync::MutexGuard<'_, Replicas> {
        self.replicas.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The hub has these replicas now (a welcome or a `Members` frame said so).
    fn members_changed(&self, replicas: Vec<String>) {
        if self.replicas().set_members(count(&replicas)) {
            tracing::info!(?replicas, "the hub's member count changed: the agent's connections follow");
        }
        self.members.send_if_modified(|known| {
            let changed = *known != replicas;
            *known = replicas;
            changed
        });
    }
}

/// One slot's dial loop.
pub struct DialLoop {
    pub slot: usize,
    pub slots: Arc<Slots>,
    pub dialer: Arc<Dialer>,
    /// New certificate files that load, from [`super::certificate::watch`].
    pub new_certificates: mpsc::Receiver<AgentCertificate>,
    pub backoff: Backoff,
    pub choice: TransportChoice,
}

/// A session being served on its own task.
struct Serving {
    task: JoinHandle<SessionEnd>,
    stop: CancellationToken,
    transport: Transport,
}

impl DialLoop {
    /// Runs until `cancel`; then lets replaced connections finish within the grace period.
    pub async fn run(mut self, mut certificate: AgentCertificate) {
        let retiring = TaskTracker::new();
        let mut members = self.slots.members.subscribe();
        let mut duplicates = Backoff::new(DUPLICATE_BACKOFF.0, DUPLICATE_BACKOFF.1);
        let mut attempt = 0usize;
        let cancel = self.slots.cancel.clone();
        while !cancel.is_cancelled() {
            if !self.slots.replicas().active(self.slot) {
                // More slots than replicas: hold nothing until the hub grows.
                tokio::select! {
                    _ = members.changed() => {}
                    Some(new) = self.new_certificates.recv() => certificate = new,
                    _ = cancel.cancelled() => break,
                }
                continue;
            }
            let transport = self.choice.next();
            let dialled = tokio::select! {
                dialled = self.connect(&certificate, transport, attempt) => dialled,
                _ = cancel.cancelled() => break,
            };
            attempt += 1;
            let (session, address) = match dialled {
                Ok(dialled) => dialled,
                Err(failure) => {
                    // A stub too busy to take the dial gets more room (see `backoff`).
                    let delay = if failure.busy { self.backoff.next_busy_delay() } else { self.backoff.next_delay() };
                    tracing::warn!(retry_in = ?delay, fingerprint = %certificate.fingerprint, %transport, slot = self.slot, "cannot connect to stub: {failure}");
                    if self.choice.dial_failed() {
                        match self.choice.first() {
                            Transport::Quic => tracing::info!(
                                "QUIC failed {QUIC_FAILURES_BEFORE_TCP} times in a row; trying the TCP fallback"
                            ),
                            Transport::Tcp => tracing::info!(
                                "TCP through the proxy failed {QUIC_FAILURES_BEFORE_TCP} times in a row; trying QUIC directly"
                            ),
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        // New certificate files: try them at once.
                        Some(new) = self.new_certificates.recv() => certificate = new,
                        _ = cancel.cancelled() => break,
                    }
                    continue;
                }
            };
            let claim = self.slots.replicas().claim(self.slot, &session.replica, address, count(&session.members));
            self.slots.members_changed(session.members.clone());
            if claim != Claim::Keep {
                let (code, reason) = match claim {
                    Claim::Duplicate => (AppCode::Duplicate, "this agent holds a connection to this replica already"),
                    _ => (AppCode::Normal, "this agent holds as many connections as the hub has replicas"),
                };
                tracing::debug!(slot = self.slot, replica = %session.replica, ?claim, "closing the new connection: {reason}");
                session.connection().close(code, reason);
                // A fresh socket, so that a load balancer may send the next dial elsewhere.
                if let Err(e) = self.dialer.fresh_socket() {
                    tracing::warn!(error = %e, "cannot open a fresh UDP socket; dialling from the same one");
                }
                if claim == Claim::Duplicate {
                    tokio::select! {
                        _ = tokio::time::sleep(duplicates.next_delay()) => {}
                        _ = cancel.cancelled() => break,
                    }
                }
                continue;
            }
            duplicates.reset();
            let started = Instant::now();
            let lost = self.serve(session, &mut certificate, &retiring).await;
            self.slots.replicas().release(self.slot);
            let Some(reason) = lost else { break };
            if started.elapsed() >= HEALTHY_RUN {
                self.backoff.reset();
            }
            self.choice.lost();
            // The next connection from a fresh socket: the old path may lead nowhere now.
            let _ = self.dialer.fresh_socket();
            let delay = self.backoff.next_delay();
            tracing::warn!(retry_in = ?delay, slot = self.slot, "disconnected from stub: {reason}");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled() => break,
            }
        }
        retiring.close();
        let _ = tokio::time::timeout(self.slots.grace, retiring.wait()).await;
    }

    /// Dials (an address no other slot's connection goes to, if the name has several) and
    /// waits for the welcome.
    async fn connect(
        &self,
        certificate: &AgentCertificate,
        transport: Transport,
        attempt: usize,
    ) -> Result<(Session, SocketAddr), DialFailure> {
        let addresses = self.dialer.resolve().await?;
        let address = self.slots.replicas().prefer(self.slot, &addresses, attempt).unwrap_or(addresses[0]);
        let conn = self.dialer.dial_to(address, &certificate.tls, transport).await?;
        let session = session::establish(conn, &self.slots.cluster, &self.slots.name).await?;
        Ok((session, address))
    }

    /// Serves `session` and whatever takes over from it, until the connection in use is lost
    /// (its reason) or the agent stops (`None`). `certificate` follows the one in use, and on
    /// loss becomes the newest files on disk.
    async fn serve(
        &mut self,
        session: Session,
        certificate: &mut AgentCertificate,
        retiring: &TaskTracker,
    ) -> Option<String> {
        let cancel = self.slots.cancel.clone();
        let mut serving = self.start(session, certificate);
        let mut handover = Handover::default();
        let mut members = self.slots.members.subscribe();
        let mut known: Vec<String> = members.borrow_and_update().clone();
        // When set: this slot moves to one of these new replicas then (the hub grew), make
        // before break.
        let mut rebalance_at: Option<(tokio::time::Instant, Vec<String>)> = None;
        let lost = loop {
            // No QUIC probe while new certificate files wait: they go first.
            let probe_at = self.choice.probe_at().filter(|_| !handover.is_waiting());
            let mut probe = false;
            let mut rebalance = false;
            tokio::select! {
                changed = members.changed() => {
                    if changed.is_ok() {
                        let now = members.borrow_and_update().clone();
                        let new: Vec<String> = now.iter().filter(|r| !known.contains(r)).cloned().collect();
                        if !known.is_empty() && rand::random::<f64>() < share_to_move(count(&known), count(&now)) {
                            let spread = REBALANCE_SPREAD.mul_f64(rand::random::<f64>());
                            tracing::info!(?new, after = ?spread, "the hub grew: moving this connection to a new replica");
                            rebalance_at = Some((tokio::time::Instant::now() + spread, new));
                        }
                        known = now;
                    }
                    continue;
                }
                _ = sleep_until(rebalance_at.as_ref().map(|(at, _)| *at)), if rebalance_at.is_some() && !handover.is_waiting() => {
                    rebalance = true;
                }
                end = &mut serving.task => break Some(match end {
                    Ok(SessionEnd::Lost { reason }) => reason,
                    Ok(SessionEnd::Stopped) => "the session stopped".to_owned(),
                    Err(e) => format!("the session failed: {e}"),
                }),
                _ = cancel.cancelled() => {
                    serving.stop.cancel();
                    let _ = (&mut serving.task).await;
                    break None;
                }
                Some(new) = self.new_certificates.recv() => handover.offer(new, tokio::time::Instant::now()),
                _ = sleep_until(handover.due_at()), if handover.is_waiting() => {}
                _ = sleep_until(probe_at), if probe_at.is_some() => probe = true,
            }
            let now = tokio::time::Instant::now();
            if rebalance && let Some((_, to)) = rebalance_at.take() {
                if let Some(next) = self.rebalance(certificate, serving.transport, &to).await {
                    let old = std::mem::replace(&mut serving, self.start(next, certificate));
                    old.stop.cancel();
                    self.stopped_one();
                    retiring.spawn(old.task);
                }
                continue;
            }
            // Make before break: new certificate files, or QUIC again after the TCP fallback.
            let (candidate, transport) = match handover.take_due(now) {
                Some(new) => (new, serving.transport),
                None if probe => (certificate.clone(), Transport::Quic),
                None => continue,
            };
            let dialled = tokio::select! {
                dialled = self.connect(&candidate, transport, 0) => dialled,
                _ = cancel.cancelled() => continue,
            };
            match dialled {
                Ok((next, address)) => {
                    if probe {
                        tracing::info!(
                            connection = next.connection_id,
                            "QUIC works again: moving off the TCP fallback; draining the TCP connection"
                        );
                    } else {
                        tracing::info!(connection = next.connection_id, from = %certificate.fingerprint, to = %candidate.fingerprint, "certificate rotated: new connection welcomed; draining the old one");
                    }
                    // The new connection may have landed on another replica: it is this slot's now.
                    self.slots.replicas().release(self.slot);
                    self.slots.replicas().claim(self.slot, &next.replica, address, count(&next.members));
                    *certificate = candidate;
                    let old = std::mem::replace(&mut serving, self.start(next, certificate));
                    old.stop.cancel();
                    self.stopped_one();
                    retiring.spawn(old.task);
                }
                Err(reason) if probe => {
                    tracing::debug!(retry_in = ?self.choice.quic_retry(), "QUIC still does not work: {reason}");
                    self.choice.probe_failed(now);
                }
                Err(reason) => {
                    tracing::warn!(fingerprint = %candidate.fingerprint, retry_in = ?super::handover::HANDOVER_RETRY, "the stub does not accept the new certificate: {reason}; the connection with {} stays", certificate.fingerprint);
                    handover.refused(candidate, now);
                }
            }
        };
        self.stopped_one();
        self.slots.metrics.set_connection(self.slot, None);
        // The files on disk win for the next connection, accepted before or not.
        if let Some(newest) = handover.settle() {
            *certificate = newest;
        }
        lost
    }

    /// A connection to one of the replicas in `to` (new in the hub) that no slot of this agent
    /// holds yet, dialled from fresh sockets while the current one serves on; `None` if a few
    /// dials all land elsewhere (the current connection then stays).
    async fn rebalance(&self, certificate: &AgentCertificate, transport: Transport, to: &[String]) -> Option<Session> {
        for _ in 0..REBALANCE_DIALS {
            if self.dialer.fresh_socket().is_err() {
                return None;
            }
            let (next, address) = match self.connect(certificate, transport, 0).await {
                Ok(dialled) => dialled,
                Err(reason) => {
                    tracing::debug!("no connection to move to: {reason}");
                    return None;
                }
            };
            let mut replicas = self.slots.replicas();
            if replicas.holds(&next.replica) || !to.contains(&next.replica) {
                drop(replicas);
                next.connection().close(AppCode::Duplicate, "not the replica this agent is moving to");
                continue;
            }
            replicas.release(self.slot);
            replicas.claim(self.slot, &next.replica, address, count(&next.members));
            drop(replicas);
            tracing::info!(connection = next.connection_id, replica = %next.replica, "moved to another replica: draining the old connection");
            return Some(next);
        }
        None
    }

    /// Starts serving a welcomed session on its own task, in a span of its own, and counts it
    /// in readiness and metrics.
    fn start(&mut self, session: Session, certificate: &AgentCertificate) -> Serving {
        let transport = session.transport();
        self.choice.connected(transport, tokio::time::Instant::now());
        // Ready before the log line says so: whoever reads the line may probe at once.
        self.slots.serving.fetch_add(1, Ordering::SeqCst);
        self.slots.readiness.set(true);
        self.slots.metrics.set_connection(self.slot, Some((session.replica.clone(), session.connection().clone())));
        self.slots.metrics.connections.fetch_add(1, Ordering::Relaxed);
        let span =
            tracing::info_span!("connection", id = session.connection_id, %transport, replica = %session.replica);
        let proxy = self.dialer.proxy().filter(|_| transport == Transport::Tcp).map(|p| p.to_string());
        span.in_scope(|| {
            tracing::info!(
                stub = self.dialer.target(),
                fingerprint = %certificate.fingerprint,
                slot = self.slot,
                via_proxy = proxy.as_deref().unwrap_or("no"),
                "connected to stub"
            )
        });
        let stop = CancellationToken::new();
        let slots = self.slots.clone();
        let task = tokio::spawn(
            session::serve(
                session,
                self.slots.forwarder.clone(),
                stop.clone(),
                self.slots.grace,
                move |replicas| slots.members_changed(replicas),
                self.slots.dead_after,
            )
            .instrument(span),
        );
        Serving { task, stop, transport }
    }

    /// A session of this slot stopped serving (lost, or replaced): not ready once none serves.
    fn stopped_one(&self) {
        if self.slots.serving.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.slots.readiness.set(false);
        }
    }
}

/// How many replicas a member list names (at least one: the stub that answered).
fn count(replicas: &[String]) -> u32 {
    replicas.len().max(1) as u32
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
