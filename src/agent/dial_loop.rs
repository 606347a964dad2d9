//! The agent's dial loop: dial the stub, serve the welcomed session, and when it is lost dial
//! again with capped backoff. While a session serves, two things may take over from it make
//! before break (a second connection is dialled and welcomed before the first drains): new
//! certificate files ([`Handover`]), and QUIC again after the TCP fallback
//! ([`TransportChoice`]). Readiness and the connection metrics follow the session in use.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::backoff::Backoff;
use super::certificate::AgentCertificate;
use super::forward::Forwarder;
use super::handover::Handover;
use super::metrics::AgentMetrics;
use super::session::{self, Session, SessionEnd};
use super::transport_choice::{QUIC_FAILURES_BEFORE_TCP, TransportChoice};
use crate::admin::Readiness;
use crate::transport::Transport;
use crate::transport::dial::Dialer;

/// A connection that lasted this long was healthy: the next failure starts backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(10);

/// What the loop needs besides its state.
pub struct DialLoop {
    pub dialer: Dialer,
    pub cluster: String,
    pub name: String,
    pub forwarder: Arc<Forwarder>,
    pub readiness: Readiness,
    pub metrics: Arc<AgentMetrics>,
    /// New certificate files that load, from [`super::certificate::watch`].
    pub new_certificates: mpsc::Receiver<AgentCertificate>,
    pub backoff: Backoff,
    pub choice: TransportChoice,
    /// How long a replaced connection may take to finish its requests.
    pub grace: Duration,
    pub cancel: CancellationToken,
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
        while !self.cancel.is_cancelled() {
            let transport = self.choice.next();
            let dialled = tokio::select! {
                dialled = self.connect(&certificate, transport) => dialled,
                _ = self.cancel.cancelled() => break,
            };
            let session = match dialled {
                Ok(session) => session,
                Err(reason) => {
                    let delay = self.backoff.next_delay();
                    tracing::warn!(retry_in = ?delay, fingerprint = %certificate.fingerprint, %transport, "cannot connect to stub: {reason}");
                    if self.choice.dial_failed() {
                        tracing::info!(
                            "QUIC failed {QUIC_FAILURES_BEFORE_TCP} times in a row; trying the TCP fallback"
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        // New certificate files: try them at once.
                        Some(new) = self.new_certificates.recv() => certificate = new,
                        _ = self.cancel.cancelled() => break,
                    }
                    continue;
                }
            };
            let started = Instant::now();
            let Some(reason) = self.serve(session, &mut certificate, &retiring).await else { break };
            if started.elapsed() >= HEALTHY_RUN {
                self.backoff.reset();
            }
            self.choice.lost();
            let delay = self.backoff.next_delay();
            tracing::warn!(retry_in = ?delay, "disconnected from stub: {reason}");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.cancel.cancelled() => break,
            }
        }
        self.readiness.set(false);
        retiring.close();
        let _ = tokio::time::timeout(self.grace, retiring.wait()).await;
    }

    async fn connect(&self, certificate: &AgentCertificate, transport: Transport) -> Result<Session, String> {
        let conn = self.dialer.dial(&certificate.tls, transport).await?;
        session::establish(conn, &self.cluster, &self.name).await
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
        let mut serving = self.start(session, certificate);
        let mut handover = Handover::default();
        let lost = loop {
            // No QUIC probe while new certificate files wait: they go first.
            let probe_at = self.choice.probe_at().filter(|_| !handover.is_waiting());
            let mut probe = false;
            tokio::select! {
                end = &mut serving.task => break Some(match end {
                    Ok(SessionEnd::Lost { reason }) => reason,
                    Ok(SessionEnd::Stopped) => "the session stopped".to_owned(),
                    Err(e) => format!("the session failed: {e}"),
                }),
                _ = self.cancel.cancelled() => {
                    serving.stop.cancel();
                    let _ = (&mut serving.task).await;
                    break None;
                }
                Some(new) = self.new_certificates.recv() => handover.offer(new, tokio::time::Instant::now()),
                _ = sleep_until(handover.due_at()), if handover.is_waiting() => {}
                _ = sleep_until(probe_at), if probe_at.is_some() => probe = true,
            }
            let now = tokio::time::Instant::now();
            // Make before break: new certificate files, or QUIC again after the TCP fallback.
            let (candidate, transport) = match handover.take_due(now) {
                Some(new) => (new, serving.transport),
                None if probe => (certificate.clone(), Transport::Quic),
                None => continue,
            };
            let dialled = tokio::select! {
                dialled = self.connect(&candidate, transport) => dialled,
                _ = self.cancel.cancelled() => continue,
            };
            match dialled {
                Ok(next) => {
                    if probe {
                        tracing::info!(
                            connection = next.connection_id,
                            "QUIC works again: moving off the TCP fallback; draining the TCP connection"
                        );
                    } else {
                        tracing::info!(connection = next.connection_id, from = %certificate.fingerprint, to = %candidate.fingerprint, "certificate rotated: new connection welcomed; draining the old one");
                    }
                    *certificate = candidate;
                    let old = std::mem::replace(&mut serving, self.start(next, certificate));
                    old.stop.cancel();
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
        self.readiness.set(false);
        self.metrics.set_connection(None);
        // The files on disk win for the next connection, accepted before or not.
        if let Some(newest) = handover.settle() {
            *certificate = newest;
        }
        lost
    }

    /// Starts serving a welcomed session on its own task, in a span of its own, and makes it
    /// the one readiness and metrics report.
    fn start(&mut self, session: Session, certificate: &AgentCertificate) -> Serving {
        let transport = session.transport();
        self.choice.connected(transport, tokio::time::Instant::now());
        // Ready before the log line says so: whoever reads the line may probe at once.
        self.readiness.set(true);
        self.metrics.set_connection(Some(session.connection().clone()));
        self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("connection", id = session.connection_id, %transport);
        span.in_scope(
            || tracing::info!(stub = self.dialer.target(), fingerprint = %certificate.fingerprint, "connected to stub"),
        );
        let stop = CancellationToken::new();
        let task =
            tokio::spawn(session::serve(session, self.forwarder.clone(), stop.clone(), self.grace).instrument(span));
        Serving { task, stop, transport }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
