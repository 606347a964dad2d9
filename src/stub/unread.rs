//! Responses whose callers do not read them, and why they hold up no one else.
//!
//! The flow-control facts: a response travels from the agent to the stub on a stream of its own
//! (QUIC, or HTTP/2 on the TCP fallback). The stub reads a stream only as fast as its caller
//! takes the bytes, so an unread response fills its stream's window ([`STREAM_WINDOW`], 2 MiB)
//! and stops there: the agent is held back on that stream alone. But every unread byte also
//! counts against the connection's window, which all streams share ([`CONNECTION_WINDOW`],
//! 16 MiB) and which is returned only as the stub reads. Eight unread responses would fill it,
//! and then nothing moves on that agent connection, not even other users' response heads.
//!
//! So a response whose caller leaves a chunk untaken for [`HOLD_AFTER`] is *held*: its agent
//! connection's window grows by one stream window ([`Hop::hold_unread`]), so what it
//! holds back comes out of a grant of its own, and the shared window stays free for everyone
//! else. The grant goes when the response ends. Held responses cost memory (up to a stream
//! window each), so they are limited per user and per agent connection; one beyond a limit is
//! dropped instead of held: its stream is stopped (which returns its bytes to the window), its
//! counts in the limits are released, and its caller's HTTP stream fails. A response left
//! untaken for `--stalled-reader-timeout` is dropped the same way.
//!
//! "Untaken" means the stub handed a chunk to hyper and hyper has not come back for the next
//! one (the caller's TCP or HTTP/2 window is full). A quiet watch is not held: there hyper waits
//! for the agent, not the other way round. One sweeper task looks at every response
//! [`SWEEP_EVERY`]; a response costs a map entry, not a task.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::hop::Hop;
use super::metrics::StubMetrics;
use crate::bridge::{Body, BoxError, ChunkSource};
use crate::transport::{CONNECTION_WINDOW, RecvHalf, STREAM_WINDOW};
use crate::wire::codes::AppCode;

/// A chunk untaken this long makes its response held.
pub const HOLD_AFTER: Duration = Duration::from_millis(500);
/// How often the sweeper looks.
pub const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Limits on held responses; `0` means none.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnreadLimits {
    /// Held responses of one user, over all agent connections.
    pub per_user: usize,
    /// Held responses on one agent connection.
    pub per_connection: usize,
    /// A response with a chunk untaken this long is dropped (`None`: never).
    pub stalled_timeout: Option<Duration>,
}

/// Every response on its way to a caller, and the held ones counted per user.
#[derive(Debug)]
pub struct Unread {
    limits: UnreadLimits,
    responses: Mutex<HashMap<u64, Weak<Watched>>>,
    next_id: AtomicU64,
    held_by_user: Mutex<HashMap<String, usize>>,
    metrics: Arc<StubMetrics>,
}

/// One response: its stream and what lives as long as it, shared by the body and the sweeper.
struct Watched {
    id: u64,
    slot: tokio::sync::Mutex<Option<(RecvHalf, Box<dyn Any + Send>)>>,
    /// When a chunk was handed to hyper and not yet followed by the next poll: milliseconds since
    /// [`epoch`] plus one; 0 while hyper is waiting on us.
    handed_at: AtomicU64,
    held: AtomicBool,
    user: String,
    agent: Arc<Hop>,
    unread: Arc<Unread>,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched").field("id", &self.id).field("user", &self.user).finish_non_exhaustive()
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// Why a response was dropped: the `reason` of `tether_responses_dropped_total`.
#[derive(Debug, Clone, Copy)]
enum DropReason {
    Stalled,
    UserLimit,
    ConnectionLimit,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            DropReason::Stalled => "stalled",
            DropReason::UserLimit => "unread_limit_user",
            DropReason::ConnectionLimit => "unread_limit_connection",
        }
    }
}

impl Unread {
    pub fn limits(&self) -> UnreadLimits {
        self.limits
    }

    pub fn new(limits: UnreadLimits, metrics: Arc<StubMetrics>) -> Arc<Unread> {
        Arc::new(Unread {
            limits,
            responses: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            held_by_user: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// The bytes left on `recv` as the body of a response to `user` through `agent`. `keep`
    /// (in-flight counts) is released with the stream.
    pub fn response_body<K: Send + 'static>(
        self: &Arc<Self>,
        recv: RecvHalf,
        keep: K,
        user: &str,
        agent: Arc<Hop>,
    ) -> Body {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let watched = Arc::new(Watched {
            id,
            slot: tokio::sync::Mutex::new(Some((recv, Box::new(keep)))),
            handed_at: AtomicU64::new(0),
            held: AtomicBool::new(false),
            user: user.to_owned(),
            agent,
            unread: self.clone(),
        });
        self.lock_responses().insert(id, Arc::downgrade(&watched));
        crate::bridge::body_from(Guard(watched))
    }

    /// Looks at every response each [`SWEEP_EVERY`] until `cancel`.
    pub async fn sweep(self: Arc<Self>, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(SWEEP_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.sweep_once(),
                _ = cancel.cancelled() => return,
            }
        }
    }

    fn sweep_once(&self) {
        let now = now_ms();
        let hold_after = HOLD_AFTER.as_millis() as u64;
        let stalled_after = self.limits.stalled_timeout.map(|t| t.as_millis() as u64);
        // Looked at outside the lock: the last reference to a response may go here, and its
        // drop takes the lock.
        let responses: Vec<Weak<Watched>> = self.lock_responses().values().cloned().collect();
        for watched in responses.iter().filter_map(Weak::upgrade) {
            let handed_at = watched.handed_at.load(Ordering::Relaxed);
            let untaken = if handed_at == 0 { 0 } else { now.saturating_sub(handed_at) };
            if stalled_after.is_some_and(|after| untaken >= after) {
                self.drop_response(&watched, DropReason::Stalled);
            } else if untaken >= hold_after && !watched.held.load(Ordering::Relaxed) {
                self.hold(&watched);
            }
        }
    }

    /// Makes `watched` held, or drops it if that would go beyond a limit.
    fn hold(&self, watched: &Watched) {
        let limits = self.limits;
        let mut users = self.lock_users();
        let user_held = users.get(&watched.user).copied().unwrap_or(0);
        let over = if limits.per_user != 0 && user_held >= limits.per_user {
            Some(DropReason::UserLimit)
        } else if limits.per_connection != 0 && watched.agent.unread() >= limits.per_connection {
            Some(DropReason::ConnectionLimit)
        } else {
            None
        };
        if let Some(why) = over {
            drop(users);
            self.drop_response(watched, why);
            return;
        }
        if watched.held.swap(true, Ordering::Relaxed) {
            return;
        }
        *users.entry(watched.user.clone()).or_default() += 1;
        drop(users);
        let held = watched.agent.hold_unread();
        tracing::debug!(user = %watched.user, connection = watched.agent.id, held, "a caller leaves its response unread; it holds its own window now");
    }

    /// Releases what `watched` held, once.
    fn release(&self, watched: &Watched) {
        if !watched.held.swap(false, Ordering::Relaxed) {
            return;
        }
        let mut users = self.lock_users();
        if let Some(count) = users.get_mut(&watched.user) {
            *count -= 1;
            if *count == 0 {
                users.remove(&watched.user);
            }
        }
        drop(users);
        watched.agent.release_unread();
    }

    /// Stops the response's stream (returning what it holds to the window), releases its counts,
    /// and makes its body fail. Does nothing while the body is being polled (not untaken).
    fn drop_response(&self, watched: &Watched, why: DropReason) {
        let Ok(mut slot) = watched.slot.try_lock() else { return };
        let Some((mut recv, keep)) = slot.take() else { return };
        recv.stop(AppCode::Cancelled);
        drop(keep);
        drop(slot);
        self.release(watched);
        self.metrics.responses_dropped.inc(&[why.label()]);
        match why {
            DropReason::Stalled => {
                tracing::warn!(user = %watched.user, stalled_for = ?self.limits.stalled_timeout, "the caller stopped reading its response; dropped it to free the agent connection")
            }
            DropReason::UserLimit => {
                tracing::warn!(user = %watched.user, limit = self.limits.per_user, "dropped a response its caller leaves unread: the user holds as many unread responses as allowed (--max-unread-per-user)")
            }
            DropReason::ConnectionLimit => {
                tracing::warn!(user = %watched.user, connection = watched.agent.id, limit = self.limits.per_connection, "dropped a response its caller leaves unread: the agent connection holds as many unread responses as allowed (--max-unread-per-agent)")
            }
        }
    }

    fn lock_responses(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Weak<Watched>>> {
        self.responses.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_users(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.held_by_user.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::ops::Drop for Watched {
    fn drop(&mut self) {
        self.unread.release(self);
        self.unread.lock_responses().remove(&self.id);
    }
}

/// The body's side of a watched response: reads it, and stops it if dropped before its end.
struct Guard(Arc<Watched>);

impl ChunkSource for Guard {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, BoxError>> {
        // Polled again: whatever was handed out has been taken.
        self.0.handed_at.store(0, Ordering::Relaxed);
        let mut slot = self.0.slot.lock().await;
        let Some((stream, _)) = slot.as_mut() else {
            return Some(Err(BoxError::from("response dropped: the caller stopped reading it")));
        };
        let chunk = match stream.read_chunk().await {
            Ok(Some(chunk)) => Ok(chunk),
            // Fully read: nothing to stop.
            Ok(None) => {
                *slot = None;
                return None;
            }
            Err(e) => {
                *slot = None;
                Err(BoxError::from(e))
            }
        };
        drop(slot);
        self.0.handed_at.store(now_ms(), Ordering::Relaxed);
        Some(chunk)
    }
}

impl std::ops::Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.0.slot.try_lock()
            && let Some((mut recv, _)) = slot.take()
        {
            recv.stop(AppCode::Cancelled);
        }
    }
}

// The windows this module reasons about, kept in sight of it.
const _: () = assert!(CONNECTION_WINDOW >= 4 * STREAM_WINDOW);
