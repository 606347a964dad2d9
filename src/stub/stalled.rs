//! Responses whose caller stopped reading. QUIC returns a connection's flow-control credit only
//! as the stub reads, so a few responses that nobody reads would hold a whole agent connection's
//! window and stall every other response on it: one stuck client could stick the tunnel. A
//! response whose bytes sat unread for longer than `--stalled-reader-timeout` is therefore
//! dropped: its stream is stopped (quinn discards what it buffered and returns the credit), its
//! counts in the limits are released, and the caller's HTTP stream fails.
//!
//! "Unread" means the stub handed a chunk to hyper and hyper has not come back for the next one
//! (the caller's TCP or HTTP/2 window is full). A quiet watch is not stalled: there hyper waits
//! for the agent, not the other way round.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::bridge::{Body, BoxError, ChunkSource};
use crate::transport::RecvHalf;
use crate::wire::codes::AppCode;

/// The stream and what lives as long as the response, shared with the watchdog.
struct Watched<K> {
    slot: tokio::sync::Mutex<Option<(RecvHalf, K)>>,
    /// When a chunk was handed to hyper and not yet followed by the next poll: milliseconds
    /// since [`epoch`] plus one; 0 while hyper is waiting on us.
    handed_at: AtomicU64,
    /// Cancelled when the body goes, so the watchdog ends with it.
    done: CancellationToken,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// The bytes left on `recv` as the response body (like [`crate::bridge::recv_body`]), dropped
/// if its caller leaves a chunk unread for `timeout`. `keep` is released with the stream.
pub fn response_body<K: Send + 'static>(recv: RecvHalf, keep: K, timeout: Option<Duration>) -> Body {
    let Some(timeout) = timeout else { return crate::bridge::recv_body(recv, keep) };
    let done = CancellationToken::new();
    let watched = Arc::new(Watched {
        slot: tokio::sync::Mutex::new(Some((recv, keep))),
        handed_at: AtomicU64::new(0),
        done: done.clone(),
    });
    tokio::spawn(watchdog(Arc::downgrade(&watched), done, timeout));
    crate::bridge::body_from(Guard(watched))
}

/// The body's side of a watched stream: reads it, and stops it if dropped before its end.
struct Guard<K>(Arc<Watched<K>>);

impl<K: Send + 'static> ChunkSource for Guard<K> {
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

impl<K> Drop for Guard<K> {
    fn drop(&mut self) {
        self.0.done.cancel();
        if let Ok(mut slot) = self.0.slot.try_lock()
            && let Some((mut recv, _)) = slot.take()
        {
            recv.stop(AppCode::Cancelled);
        }
    }
}

async fn watchdog<K>(watched: Weak<Watched<K>>, done: CancellationToken, timeout: Duration) {
    let tick = (timeout / 4).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = done.cancelled() => return,
        }
        let Some(watched) = watched.upgrade() else { return };
        let handed_at = watched.handed_at.load(Ordering::Relaxed);
        if handed_at == 0 || now_ms().saturating_sub(handed_at) < timeout.as_millis() as u64 {
            continue;
        }
        // Locked means the body is being polled right now: not stalled after all.
        let Ok(mut slot) = watched.slot.try_lock() else { continue };
        match slot.take() {
            Some((mut recv, keep)) => {
                recv.stop(AppCode::Cancelled);
                drop(keep);
                tracing::warn!(stalled_for = ?timeout, "the caller stopped reading its response; dropped it to free the agent connection");
            }
            None => return,
        }
        return;
    }
}
