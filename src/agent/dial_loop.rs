//! The agent's dial loops, one per connection slot (`--connections K`): dial the stub, serve the
//! welcomed session, and when it is lost dial again with capped backoff. The slots want K
//! distinct stub replicas ([`Replicas`]): a connection welcomed by a replica another slot holds
//! is closed and dialled again from a fresh UDP socket, and slots beyond the hub's member count
//! wait until it grows. Each dial in `--transport auto` races QUIC and TCP ([`TransportChoice`]).
//! While a session serves, three things may take over from it make before break (a second
//! connection is dialled and welcomed before the first drains): new certificate files
//! ([`Handover`]), QUIC again after the TCP fallback, and TCP beside a QUIC connection whose
//! echoes go unanswered ([`Echoes`]). Readiness (any slot connected) and the connection metrics
//! follow the sessions in use.

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
use super::transport_choice::{HEAD_START, Plan, Reason, TransportChoice, other};
use crate::admin::Readiness;
use crate::backoff::Backoff;
use crate::liveness::{Silence, Verdict};
use crate::transport::dial::{DialFailure, Dialer};
use crate::transport::echo::Echoes;
use crate::transport::{Connection, Transport};
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
    connection: Connection,
    connection_id: u64,
    /// The stub replica that welcomed it, the address dialled, and how many replicas the hub
    /// had then: what the slot claims while it serves.
    replica: String,
    address: SocketAddr,
    members: u32,
    /// Why it uses its transport.
    reason: Reason,
    /// The stub's answers to this side's echoes (QUIC), see [`crate::transport::echo`].
    echoes: Option<Arc<Echoes>>,
    /// Whether an echo has gone out on it yet (the first asks whether the stub answers any).
    asked_once: bool,
}

impl Serving {
    /// Echo answers so far (zero over TCP).
    fn answered(&self) -> u64 {
        self.echoes.as_ref().map_or(0, |e| e.answered())
    }

    fn ask_echo(&mut self) {
        if let Some(echoes) = &self.echoes {
            echoes.ask(&self.connection);
            self.asked_once = true;
        }
    }
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
            let plan = self.choice.plan();
            let dialled = tokio::select! {
                dialled = self.dial(&certificate, plan, attempt) => dialled,
                _ = cancel.cancelled() => break,
            };
            attempt += 1;
            let (session, address, reason) = match dialled {
                Ok(dialled) => dialled,
                Err(failure) => {
                    // A stub too busy to take the dial gets more room (see `backoff`).
                    let delay = if failure.busy { self.backoff.next_busy_delay() } else { self.backoff.next_delay() };
                    let transport = match plan {
                        Plan::Only(transport) => transport.to_string(),
                        Plan::Race { first } => format!("{first} and {}", other(first)),
                    };
                    tracing::warn!(retry_in = ?delay, fingerprint = %certificate.fingerprint, %transport, slot = self.slot, "cannot connect to stub: {failure}");
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
            let lost = self.serve(session, address, reason, &mut certificate, &retiring).await;
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

    /// One connection as `plan` says: one transport, or a race of both (see
    /// [`super::transport_choice`]); with why it uses its transport.
    async fn dial(
        &self,
        certificate: &AgentCertificate,
        plan: Plan,
        attempt: usize,
    ) -> Result<(Session, SocketAddr, Reason), DialFailure> {
        match plan {
            Plan::Only(transport) => {
                let (session, address) = self.connect(certificate, transport, attempt).await?;
                Ok((session, address, Reason::Only))
            }
            Plan::Race { first } => self.race(certificate, first, attempt).await,
        }
    }

    /// `first`, and the other transport [`HEAD_START`] later unless `first` was welcomed by
    /// then; the first welcomed wins (`first` if both are at once) and the other is closed, so
    /// that the stub never routes to a connection nobody serves. Fails when both fail.
    async fn race(
        &self,
        certificate: &AgentCertificate,
        first: Transport,
        attempt: usize,
    ) -> Result<(Session, SocketAddr, Reason), DialFailure> {
        let second = other(first);
        let (first_conn, second_conn) = (Mutex::new(None), Mutex::new(None));
        // Ends the second's head-start wait early when the first fails outright.
        let first_failed = tokio::sync::Notify::new();
        let a = self.connect_noting(certificate, first, attempt, &first_conn);
        let b = async {
            tokio::select! {
                _ = tokio::time::sleep(HEAD_START) => {}
                _ = first_failed.notified() => {}
            }
            self.connect_noting(certificate, second, attempt, &second_conn).await
        };
        tokio::pin!(a, b);
        let (mut a_failed, mut b_failed): (Option<DialFailure>, Option<DialFailure>) = (None, None);
        let (winner, reason) = loop {
            tokio::select! {
                biased;
                done = &mut a, if a_failed.is_none() => match done {
                    Ok(won) => break (won, Reason::Preferred),
                    Err(failure) => {
                        // Nothing to wait for: the other starts at once if it has not.
                        tracing::debug!(transport = %first, "{failure}");
                        first_failed.notify_one();
                        a_failed = Some(failure);
                    }
                },
                done = &mut b, if b_failed.is_none() => match done {
                    Ok(won) => break (won, Reason::Raced),
                    Err(failure) => {
                        tracing::debug!(transport = %second, "{failure}");
                        b_failed = Some(failure);
                    }
                },
            }
            if let (Some(a), Some(b)) = (&a_failed, &b_failed) {
                return Err(DialFailure { words: format!("{first}: {a}; {second}: {b}"), busy: a.busy || b.busy });
            }
        };
        let loser = if reason == Reason::Preferred { &second_conn } else { &first_conn };
        if let Some(conn) = loser.lock().unwrap_or_else(|e| e.into_inner()).take() {
            conn.close(AppCode::Normal, "the other transport was welcomed first");
        }
        Ok((winner.0, winner.1, reason))
    }

    /// Dials (an address no other slot's connection goes to, if the name has several) and
    /// waits for the welcome.
    async fn connect(
        &self,
        certificate: &AgentCertificate,
        transport: Transport,
        attempt: usize,
    ) -> Result<(Session, SocketAddr), DialFailure> {
        self.connect_noting(certificate, transport, attempt, &Mutex::new(None)).await
    }

    /// [`Self::connect`], leaving the connection in `dialled` as soon as it is made (before the
    /// welcome), so that a race's loser can be closed.
    async fn connect_noting(
        &self,
        certificate: &AgentCertificate,
        transport: Transport,
        attempt: usize,
        dialled: &Mutex<Option<Connection>>,
    ) -> Result<(Session, SocketAddr), DialFailure> {
        let addresses = self.dialer.resolve().await?;
        let address = self.slots.replicas().prefer(self.slot, &addresses, attempt).unwrap_or(addresses[0]);
        let conn = self.dialer.dial_to(address, &certificate.tls, transport).await?;
        *dialled.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        let session = session::establish(conn, &self.slots.cluster, &self.slots.name).await?;
        Ok((session, address))
    }

    /// Serves `session` and whatever takes over from it, until the connection in use is lost
    /// (its reason) or the agent stops (`None`). `certificate` follows the one in use, and on
    /// loss becomes the newest files on disk.
    async fn serve(
        &mut self,
        session: Session,
        address: SocketAddr,
        reason: Reason,
        certificate: &mut AgentCertificate,
        retiring: &TaskTracker,
    ) -> Option<String> {
        let cancel = self.slots.cancel.clone();
        let mut serving = self.start(session, address, certificate, reason);
        // The QUIC connection in use is watched: UDP that stops getting through (a middlebox, a
        // NAT that lost its mapping, one way or both) shows as the stub no longer answering the
        // agent's echoes, long before the idle timeout, and TCP is dialled beside it then (make
        // before break). See `unanswered`.
        let mut silence = Silence::new(serving.answered(), tokio::time::Instant::now());
        let mut look = tokio::time::interval(crate::liveness::TICK);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // TCP dials beside the silent QUIC connection in this silence (see `STANDBY_TRIES`).
        let mut standby_tries = 0;
        // A TCP connection serving beside the QUIC one while that is silent: it takes over if
        // the QUIC connection ends, and drains if QUIC answers again (a false alarm costs a
        // connection, never a move).
        let mut beside: Option<Serving> = None;
        let mut activity = Activity::default();
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
            let mut standby = false;
            let watch_silence = serving.transport == Transport::Quic && self.choice.quic_went_silent();
            tokio::select! {
                _ = look.tick(), if watch_silence => {
                    let now = tokio::time::Instant::now();
                    let busy = activity.busy(&self.slots.metrics, now);
                    let answering = serving.echoes.as_ref().is_some_and(|e| e.answering());
                    if !busy || !answering {
                        // Nothing to watch: the clock starts when requests do. The first echo
                        // asks whether this stub answers echoes at all.
                        silence = Silence::new(serving.answered(), now);
                        if !answering && !serving.asked_once {
                            serving.ask_echo();
                        }
                        continue;
                    }
                    match silence.observe(serving.answered(), now, serving.connection.rtt()) {
                        Verdict::Heard => {
                            standby_tries = 0;
                            if let Some(tcp) = beside.take() {
                                tracing::info!(connection = tcp.connection_id, "QUIC answers again: draining the TCP connection beside it");
                                self.retire(tcp, retiring);
                                self.show_in_metrics(&serving);
                            }
                        }
                        Verdict::Quiet => {}
                        Verdict::Probe => serving.ask_echo(),
                        Verdict::Suspect => {
                            // Still asking: an answer ends the silence (and the TCP beside it).
                            serving.ask_echo();
                            let long_enough = silence.quiet(now) >= echo_suspect_after(serving.connection.rtt())
                                && activity.no_new_requests_for(crate::liveness::SUSPECT_FLOOR, now);
                            if long_enough && beside.is_none() && standby_tries < STANDBY_TRIES && !handover.is_waiting() {
                                standby_tries += 1;
                                standby = true;
                            }
                        }
                    }
                    if !standby {
                        continue;
                    }
                }
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
                end = &mut serving.task => {
                    let reason = match end {
                        Ok(SessionEnd::Lost { reason }) => reason,
                        Ok(SessionEnd::Stopped) => "the session stopped".to_owned(),
                        Err(e) => format!("the session failed: {e}"),
                    };
                    let Some(tcp) = beside.take() else { break Some(reason) };
                    // Make before break, completed: the TCP connection was serving already.
                    tracing::info!(connection = tcp.connection_id, "the QUIC connection ended ({reason}); the TCP connection beside it serves on");
                    self.stopped_one();
                    self.slots.replicas().release(self.slot);
                    self.slots.replicas().claim(self.slot, &tcp.replica, tcp.address, tcp.members);
                    self.choice.connected(Transport::Tcp, tokio::time::Instant::now());
                    self.show_in_metrics(&tcp);
                    serving = tcp;
                    silence = Silence::new(serving.answered(), tokio::time::Instant::now());
                    standby_tries = 0;
                    continue;
                }
                end = async { (&mut beside.as_mut().expect("guarded").task).await }, if beside.is_some() => {
                    tracing::debug!(?end, "the TCP connection beside the QUIC one ended");
                    beside = None;
                    self.stopped_one();
                    self.show_in_metrics(&serving);
                    continue;
                }
                _ = cancel.cancelled() => {
                    serving.stop.cancel();
                    let _ = (&mut serving.task).await;
                    if let Some(tcp) = beside.take() {
                        tcp.stop.cancel();
                        let _ = tcp.task.await;
                        self.stopped_one();
                    }
                    break None;
                }
                Some(new) = self.new_certificates.recv() => handover.offer(new, tokio::time::Instant::now()),
                _ = sleep_until(handover.due_at()), if handover.is_waiting() => {}
                _ = sleep_until(probe_at), if probe_at.is_some() => probe = true,
            }
            let now = tokio::time::Instant::now();
            if rebalance && let Some((_, to)) = rebalance_at.take() {
                if let Some((next, address)) = self.rebalance(certificate, serving.transport, &to).await {
                    if let Some(tcp) = beside.take() {
                        self.retire(tcp, retiring);
                    }
                    // The same transport, for the same reason, on another replica.
                    let reason = serving.reason;
                    let old = std::mem::replace(&mut serving, self.start(next, address, certificate, reason));
                    self.retire(old, retiring);
                    silence = Silence::new(serving.answered(), tokio::time::Instant::now());
                }
                continue;
            }
            // Make before break: new certificate files, QUIC again after the TCP fallback, or
            // TCP beside a QUIC connection gone silent.
            let (candidate, transport) = match handover.take_due(now) {
                Some(new) => (new, serving.transport),
                None if standby => {
                    tracing::warn!(
                        connection = serving.connection_id,
                        silent_for = ?silence.quiet(now),
                        "the QUIC connection has gone silent: dialling TCP beside it"
                    );
                    (certificate.clone(), Transport::Tcp)
                }
                None if probe => (certificate.clone(), Transport::Quic),
                None => continue,
            };
            let dialled = tokio::select! {
                dialled = self.connect(&candidate, transport, 0) => dialled,
                _ = cancel.cancelled() => continue,
            };
            match dialled {
                Ok((next, _)) if (standby || probe) && self.held_by_another(&next.replica) => {
                    // Behind a load balancer a new connection lands on any replica; one another
                    // slot holds already is no place to move this slot to.
                    tracing::debug!(
                        connection = next.connection_id,
                        replica = %next.replica,
                        "the new connection landed on a replica another slot holds; closing it"
                    );
                    next.connection()
                        .close(AppCode::Duplicate, "this agent holds a connection to this replica already");
                    // A standby dial is tried again at the next look (up to `STANDBY_TRIES`).
                    if probe {
                        self.choice.probe_failed(now);
                    }
                }
                Ok((next, address)) if standby => {
                    tracing::info!(
                        connection = next.connection_id,
                        "TCP welcomed beside the silent QUIC connection: both serve until QUIC answers again or ends"
                    );
                    beside = Some(self.start_beside(next, address, certificate));
                }
                Ok((next, address)) => {
                    // Whatever replaces the connection in use replaces a TCP one beside it too.
                    if let Some(tcp) = beside.take() {
                        self.retire(tcp, retiring);
                    }
                    let reason = if probe {
                        tracing::info!(
                            connection = next.connection_id,
                            "QUIC works again: moving off the TCP fallback; draining the TCP connection"
                        );
                        Reason::QuicBack
                    } else {
                        tracing::info!(connection = next.connection_id, from = %certificate.fingerprint, to = %candidate.fingerprint, "certificate rotated: new connection welcomed; draining the old one");
                        reason
                    };
                    // The new connection may have landed on another replica: it is this slot's now.
                    self.slots.replicas().release(self.slot);
                    self.slots.replicas().claim(self.slot, &next.replica, address, count(&next.members));
                    *certificate = candidate;
                    let old = std::mem::replace(&mut serving, self.start(next, address, certificate, reason));
                    silence = Silence::new(serving.answered(), tokio::time::Instant::now());
                    standby_tries = 0;
                    self.retire(old, retiring);
                }
                Err(reason) if standby => {
                    tracing::warn!("no TCP connection beside the silent QUIC one: {reason}");
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
        if let Some(tcp) = beside.take() {
            self.retire(tcp, retiring);
        }
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
    async fn rebalance(
        &self,
        certificate: &AgentCertificate,
        transport: Transport,
        to: &[String],
    ) -> Option<(Session, SocketAddr)> {
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
            return Some((next, address));
        }
        None
    }

    /// Starts serving a welcomed session on its own task, in a span of its own, and counts it
    /// in readiness and metrics.
    fn start(
        &mut self,
        session: Session,
        address: SocketAddr,
        certificate: &AgentCertificate,
        reason: Reason,
    ) -> Serving {
        self.choice.connected(session.transport(), tokio::time::Instant::now());
        self.spawn_serving(session, address, certificate, reason)
    }

    /// Starts serving a TCP session beside the silent QUIC one in use: it serves, and the
    /// slot's metrics show it (new requests go there), but the transport choice stays with the
    /// QUIC one until that ends; the metrics return to QUIC if it answers again.
    fn start_beside(&mut self, session: Session, address: SocketAddr, certificate: &AgentCertificate) -> Serving {
        self.spawn_serving(session, address, certificate, Reason::QuicSilent)
    }

    /// The slot's metrics (connection, RTT, window) follow `serving`.
    fn show_in_metrics(&self, serving: &Serving) {
        self.slots.metrics.set_connection(self.slot, Some((serving.replica.clone(), serving.connection.clone())));
    }

    /// A session served no more: it drains (its requests finish within the grace period).
    fn retire(&self, old: Serving, retiring: &TaskTracker) {
        old.stop.cancel();
        self.stopped_one();
        retiring.spawn(old.task);
    }

    fn spawn_serving(
        &mut self,
        session: Session,
        address: SocketAddr,
        certificate: &AgentCertificate,
        reason: Reason,
    ) -> Serving {
        let transport = session.transport();
        let (connection, connection_id) = (session.connection().clone(), session.connection_id);
        let (replica, members) = (session.replica.clone(), count(&session.members));
        // The slot's metrics show the new connection (a connection beside a silent one too: new
        // requests go there) before the log line says it serves.
        self.slots.metrics.set_connection(self.slot, Some((replica.clone(), connection.clone())));
        self.slots.metrics.chosen(transport, reason);
        // Ready before the log line says so: whoever reads the line may probe at once.
        self.slots.serving.fetch_add(1, Ordering::SeqCst);
        self.slots.readiness.set(true);
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
                why = reason.as_str(),
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
        let echoes = Echoes::start(&connection);
        Serving {
            task,
            stop,
            transport,
            connection,
            connection_id,
            replica,
            address,
            members,
            reason,
            echoes,
            asked_once: false,
        }
    }

    /// Whether a slot other than this one holds a connection to `replica`.
    fn held_by_another(&self, replica: &str) -> bool {
        let replicas = self.slots.replicas();
        replicas.held(self.slot) != Some(replica) && replicas.holds(replica)
    }

    /// A session of this slot stopped serving (lost, or replaced): not ready once none serves.
    fn stopped_one(&self) {
        if self.slots.serving.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.slots.readiness.set(false);
        }
    }
}

/// Whether the agent has been serving requests lately: the echo watch runs only then, so that
/// thousands of idle agents send the hub nothing beyond quinn's keep-alives. "Lately", because
/// when UDP stops getting through, new requests stop reaching the agent too (the stub's
/// congestion window fills with what is never acknowledged): requests in flight now are no
/// sign of a working connection, nor their absence of an idle one.
#[derive(Debug, Default)]
struct Activity {
    /// Streams started as last seen, when a stream last started or was in flight, and when one
    /// last started.
    started: u64,
    last: Option<tokio::time::Instant>,
    last_new: Option<tokio::time::Instant>,
}

/// Echoes unanswered this long mean UDP is not getting through: twice the stub's own suspicion
/// floor ([`crate::liveness::suspect_after`]), because an echo waits for the stub's application
/// as well as its transport, and a stub busy setting up thousands of streams answered late by
/// more than a second in `tests/load_bounds.rs`. Still well before the idle timeout declares
/// the connection dead; and a false alarm costs a TCP connection beside, never a move.
fn echo_suspect_after(rtt: Duration) -> Duration {
    crate::liveness::suspect_after(rtt).max(2 * crate::liveness::SUSPECT_FLOOR)
}

/// TCP dials beside a silent QUIC connection in one silence: behind a load balancer each lands on
/// any replica, and one that lands where another slot is connected is closed and tried again.
const STANDBY_TRIES: u32 = 3;

/// How long after its last request an agent still watches its QUIC connection.
const ACTIVE_WINDOW: Duration = Duration::from_secs(3);

impl Activity {
    /// Whether new requests have stopped arriving for `quiet`. They arrive only while what the
    /// agent sends gets through (the stub's window and congestion window need its
    /// acknowledgements), so a stub that answers echoes late while it opens stream after stream
    /// (busy, not cut off) is no alarm.
    fn no_new_requests_for(&self, quiet: Duration, now: tokio::time::Instant) -> bool {
        self.last_new.is_none_or(|last| now.saturating_duration_since(last) >= quiet)
    }

    fn busy(&mut self, metrics: &AgentMetrics, now: tokio::time::Instant) -> bool {
        let started = metrics.streams_started.load(Ordering::Relaxed);
        if started != self.started {
            self.last_new = Some(now);
        }
        if started != self.started || metrics.in_flight.load(Ordering::Relaxed) > 0 {
            self.started = started;
            self.last = Some(now);
        }
        self.last.is_some_and(|last| now.saturating_duration_since(last) < ACTIVE_WINDOW)
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
