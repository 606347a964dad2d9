//! Dead peers noticed from the traffic, not from the idle timeout (`docs/design.md`,
//! "Availability"). A request waiting for its response head on a connection whose peer died
//! (`kill -9`, a frozen VM, a cut cable) would otherwise wait for the whole idle timeout. So
//! while anything waits on a connection, it is watched: when nothing has arrived from the peer
//! for [`PROBE_AFTER`], the connection is probed (the peer's transport answers without its
//! application: a QUIC datagram is acknowledged, an HTTP/2 PING is answered); when nothing has
//! arrived for [`suspect_after`] (a second, more on long paths), the connection is *suspect*:
//! it gets no new requests while another connection is there, and requests waiting on it that
//! can be sent again are (see `stub::forward`). Anything heard from the peer clears the
//! suspicion: a false alarm costs one retry, never a request or a connection.
//!
//! Only connections that something waits on are watched, so thousands of idle connections cost
//! nothing; the idle timeout still ends those whose peer is gone.
//!
//! [`Silence`] is the pure part (property-tested); [`Liveness`] is what a connection shares
//! with the requests on it; [`watch`] drives one connection's watch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::transport::Connection;

/// Silence after which the peer is asked to answer.
pub const PROBE_AFTER: Duration = Duration::from_millis(250);
/// Silence after which a connection is suspect, on a short path.
pub const SUSPECT_FLOOR: Duration = Duration::from_secs(1);
/// How often a watched connection is looked at.
pub const TICK: Duration = Duration::from_millis(100);

/// Silence after which a connection with this round-trip time is suspect: a second, or the
/// probe's wait plus eight round trips on a long path (a probe and the retransmissions of a
/// lost one, at 5% loss, all get through well within that).
pub fn suspect_after(rtt: Duration) -> Duration {
    SUSPECT_FLOOR.max(PROBE_AFTER + rtt.saturating_mul(8))
}

/// What a look at the connection calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Something arrived since the last look.
    Heard,
    /// Quiet, but not for long enough to do anything.
    Quiet,
    /// Quiet for [`PROBE_AFTER`] since the last probe (or since last heard): probe now.
    Probe,
    /// Quiet for [`suspect_after`].
    Suspect,
}

/// How long a connection has been silent, from a counter of what arrived on it.
#[derive(Debug, Clone)]
pub struct Silence {
    heard: u64,
    since: Instant,
    probed_at: Option<Instant>,
}

impl Silence {
    /// Starts counting at `now`, with the connection's counter of what arrived so far.
    pub fn new(heard: u64, now: Instant) -> Silence {
        Silence { heard, since: now, probed_at: None }
    }

    /// Looks at the connection: `heard` is its counter now, `rtt` its round-trip time.
    pub fn observe(&mut self, heard: u64, now: Instant, rtt: Duration) -> Verdict {
        if heard != self.heard {
            *self = Silence::new(heard, now);
            return Verdict::Heard;
        }
        let quiet = now.saturating_duration_since(self.since);
        if quiet >= suspect_after(rtt) {
            return Verdict::Suspect;
        }
        let last = self.probed_at.unwrap_or(self.since);
        if now.saturating_duration_since(last) >= PROBE_AFTER {
            self.probed_at = Some(now);
            return Verdict::Probe;
        }
        Verdict::Quiet
    }

    /// How long nothing has arrived.
    pub fn quiet(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.since)
    }
}

/// What a connection shares with the requests on it: how many wait for an answer, and whether
/// the peer is suspect.
#[derive(Debug, Default)]
pub struct Liveness {
    waiting: AtomicUsize,
    /// Woken when the first request starts waiting.
    first_waiter: Notify,
    suspect: AtomicBool,
    /// Woken when the connection becomes suspect.
    became_suspect: Notify,
}

impl Liveness {
    /// Counts a request as waiting for an answer until the guard drops.
    pub fn waiting(self: &Arc<Self>) -> Waiting {
        if self.waiting.fetch_add(1, Ordering::SeqCst) == 0 {
            self.first_waiter.notify_waiters();
        }
        Waiting(self.clone())
    }

    pub fn is_suspect(&self) -> bool {
        self.suspect.load(Ordering::SeqCst)
    }

    /// Completes once the connection is suspect (at once if it is).
    pub async fn suspected(&self) {
        loop {
            let notified = self.became_suspect.notified();
            if self.is_suspect() {
                return;
            }
            notified.await;
        }
    }

    /// Returns whether this changed anything.
    fn set_suspect(&self, suspect: bool) -> bool {
        let was = self.suspect.swap(suspect, Ordering::SeqCst);
        if suspect && !was {
            self.became_suspect.notify_waiters();
        }
        was != suspect
    }

    fn watched(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0 || self.is_suspect()
    }

    async fn until_watched(&self) {
        loop {
            let notified = self.first_waiter.notified();
            if self.watched() {
                return;
            }
            notified.await;
        }
    }
}

/// A request waiting for an answer (see [`Liveness::waiting`]).
#[derive(Debug)]
pub struct Waiting(Arc<Liveness>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Told when a connection becomes suspect (with how long it was silent) and when it is heard
/// again.
pub trait Observer: Send + Sync {
    fn suspect(&self, silent: Duration);
    fn heard_again(&self, silent: Duration);
}

/// Watches `conn` until it closes: idle while nothing waits on it, looked at every [`TICK`]
/// while something does (or while it is suspect).
pub async fn watch(liveness: Arc<Liveness>, conn: Connection, observer: impl Observer) {
    loop {
        tokio::select! {
            _ = liveness.until_watched() => {}
            _ = conn.closed() => return,
        }
        let mut silence = Silence::new(conn.heard(), Instant::now());
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while liveness.watched() {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = conn.closed() => return,
            }
            let now = Instant::now();
            let quiet = silence.quiet(now);
            match silence.observe(conn.heard(), now, conn.rtt()) {
                Verdict::Heard => {
                    if liveness.set_suspect(false) {
                        observer.heard_again(quiet);
                    }
                }
                Verdict::Probe => conn.probe(),
                Verdict::Suspect => {
                    if liveness.set_suspect(true) {
                        observer.suspect(quiet);
                    }
                    conn.probe();
                }
                Verdict::Quiet => {}
            }
        }
    }
}

/// How long a peer has been unheard *while the watcher was there to hear it*. A look that comes
/// late (this process busy: thousands of new streams queued ahead of the watcher and of the
/// QUIC driver alike) is no evidence: whatever the peer sent meanwhile may still wait, unread,
/// behind the same queue. So each look counts at most two of its intervals of silence, and a
/// burst of work never convicts a live peer by itself; a dead one is convicted after
/// `silent_for` of looks as usual.
#[derive(Debug, Clone)]
pub struct Unheard {
    heard: u64,
    silent: Duration,
    looked: Instant,
}

impl Unheard {
    /// Starts at `now` with the connection's counter of what arrived so far.
    pub fn new(heard: u64, now: Instant) -> Unheard {
        Unheard { heard, silent: Duration::ZERO, looked: now }
    }

    /// Looks at the connection (`heard` is its counter now; looks are due `every`) and returns
    /// the silence counted so far.
    pub fn observe(&mut self, heard: u64, now: Instant, every: Duration) -> Duration {
        let since_last_look = now.saturating_duration_since(self.looked);
        self.looked = now;
        if heard != self.heard {
            (self.heard, self.silent) = (heard, Duration::ZERO);
        } else {
            self.silent += since_last_look.min(every * 2);
        }
        self.silent
    }
}

/// Completes when nothing has arrived on `conn` for `silent_for` (looked at every sixth of it;
/// see [`Unheard`] for looks that come late). For a side that watches its connections all the
/// time (an agent has a couple): both ends' keep-alives (a third of the idle timeout) make a
/// live peer heard at least that often, so two of them missed says the peer is gone, well
/// before the idle timeout would.
pub async fn silent_for(conn: &Connection, silent_for: Duration) {
    let every = silent_for / 6;
    let mut unheard = Unheard::new(conn.heard(), Instant::now());
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if unheard.observe(conn.heard(), Instant::now(), every) >= silent_for {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn a_silent_peer_is_probed_then_suspect_and_heard_again() {
        let t = Instant::now();
        let rtt = Duration::from_millis(1);
        let mut s = Silence::new(7, t);
        assert_eq!(s.observe(7, at(t, 100), rtt), Verdict::Quiet);
        assert_eq!(s.observe(7, at(t, 250), rtt), Verdict::Probe);
        assert_eq!(s.observe(7, at(t, 300), rtt), Verdict::Quiet);
        assert_eq!(s.observe(7, at(t, 500), rtt), Verdict::Probe);
        assert_eq!(s.observe(7, at(t, 1000), rtt), Verdict::Suspect);
        assert_eq!(s.observe(8, at(t, 1100), rtt), Verdict::Heard);
        assert_eq!(s.observe(8, at(t, 1200), rtt), Verdict::Quiet);
    }

    #[test]
    fn long_paths_wait_longer() {
        assert_eq!(suspect_after(Duration::from_millis(20)), SUSPECT_FLOOR);
        assert_eq!(suspect_after(Duration::from_millis(300)), Duration::from_millis(250 + 2400));
    }

    proptest! {
        /// Silence counts only what the watcher was there to see: never more than the time since
        /// the peer was last heard, exactly that while the looks come on time, and at most two
        /// intervals for any one look, however late.
        #[test]
        fn late_looks_do_not_convict_a_peer(
            steps in proptest::collection::vec((0u64..2_000, proptest::bool::weighted(0.2)), 1..60),
            every_ms in 1u64..500,
        ) {
            let every = Duration::from_millis(every_ms);
            let start = Instant::now();
            let (mut unheard, mut heard, mut now, mut since) = (Unheard::new(0, start), 0u64, start, start);
            let mut on_time = true;
            let mut counted = Duration::ZERO;
            for (advance, arrived) in steps {
                let advance = Duration::from_millis(advance);
                now += advance;
                if arrived {
                    heard += 1;
                }
                let silent = unheard.observe(heard, now, every);
                if arrived {
                    prop_assert_eq!(silent, Duration::ZERO);
                    (since, on_time) = (now, true);
                } else {
                    prop_assert!(silent <= now - since);
                    prop_assert!(silent <= counted + every * 2);
                    on_time &= advance <= every * 2;
                    if on_time {
                        prop_assert_eq!(silent, now - since);
                    }
                }
                counted = silent;
            }
        }
    }

    proptest! {
        /// Whatever the looks, a connection is never suspect before `suspect_after` of
        /// silence, always suspect from then on, and anything heard resets it.
        #[test]
        fn suspicion_follows_the_silence_exactly(
            steps in proptest::collection::vec((0u64..400, proptest::bool::weighted(0.2)), 1..60),
            rtt_ms in 0u64..400,
        ) {
            let rtt = Duration::from_millis(rtt_ms);
            let start = Instant::now();
            let (mut s, mut heard, mut now, mut since) = (Silence::new(0, start), 0u64, start, start);
            let mut last_probe = start;
            for (advance, arrived) in steps {
                now += Duration::from_millis(advance);
                if arrived {
                    heard += 1;
                }
                let verdict = s.observe(heard, now, rtt);
                if arrived {
                    prop_assert_eq!(verdict, Verdict::Heard);
                    since = now;
                    last_probe = now;
                    continue;
                }
                let quiet = now - since;
                if quiet >= suspect_after(rtt) {
                    prop_assert_eq!(verdict, Verdict::Suspect);
                } else if now - last_probe >= PROBE_AFTER {
                    prop_assert_eq!(verdict, Verdict::Probe);
                    last_probe = now;
                } else {
                    prop_assert_eq!(verdict, Verdict::Quiet);
                }
            }
        }
    }
}
