//! Moving to a new certificate without a gap: new certificate files that load are offered at
//! once (the agent dials a second connection with them while the old one serves), and if the
//! stub refuses them they wait [`HANDOVER_RETRY`] before the next offer. Newer files replace
//! older ones still waiting. When the connection is lost meanwhile, the files on disk win: the
//! next connection uses the newest ones, accepted before or not. Pure, so property-tested.

use std::time::Duration;

use tokio::time::Instant;

/// How long new certificate files that the stub refused wait before they are offered again
/// (while the old certificate still works).
pub const HANDOVER_RETRY: Duration = Duration::from_secs(5);

/// Certificate files waiting to take over, and when to offer them.
#[derive(Debug, Clone)]
pub struct Handover<C> {
    waiting: Option<(C, Instant)>,
}

impl<C> Default for Handover<C> {
    fn default() -> Self {
        Handover { waiting: None }
    }
}

impl<C> Handover<C> {
    /// New files loaded at `now`: offered at once, in place of any still waiting.
    pub fn offer(&mut self, new: C, now: Instant) {
        self.waiting = Some((new, now));
    }

    /// Whether files are waiting to take over.
    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// When the waiting files are to be offered next.
    pub fn due_at(&self) -> Option<Instant> {
        self.waiting.as_ref().map(|(_, at)| *at)
    }

    /// The files to dial with, if they are due at `now`.
    pub fn take_due(&mut self, now: Instant) -> Option<C> {
        match self.waiting {
            Some((_, at)) if at <= now => self.waiting.take().map(|(c, _)| c),
            _ => None,
        }
    }

    /// The stub refused `candidate` at `now`: offer it again after [`HANDOVER_RETRY`], unless
    /// newer files arrived meanwhile.
    pub fn refused(&mut self, candidate: C, now: Instant) {
        if self.waiting.is_none() {
            self.waiting = Some((candidate, now + HANDOVER_RETRY));
        }
    }

    /// The connection was lost: the files waiting (if any) are the ones to connect with next.
    pub fn settle(&mut self) -> Option<C> {
        self.waiting.take().map(|(c, _)| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, Copy)]
    enum Event {
        /// New files (numbered in arrival order) loaded.
        Offer,
        /// Time passes, this many milliseconds.
        Wait(u64),
        /// The due files were dialled and refused.
        DialRefused,
        /// The due files were dialled and welcomed.
        DialWelcomed,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(Event::Offer),
            (0u64..8_000).prop_map(Event::Wait),
            Just(Event::DialRefused),
            Just(Event::DialWelcomed),
        ]
    }

    #[test]
    fn refused_files_wait_then_come_back() {
        let mut handover = Handover::default();
        let t0 = Instant::now();
        handover.offer("new", t0);
        let candidate = handover.take_due(t0).expect("offered at once");
        handover.refused(candidate, t0);
        assert_eq!(handover.take_due(t0 + HANDOVER_RETRY - Duration::from_millis(1)), None);
        assert_eq!(handover.take_due(t0 + HANDOVER_RETRY), Some("new"));
    }

    proptest! {
        #[test]
        fn the_newest_files_always_win_and_refusals_wait(events in proptest::collection::vec(event(), 0..80)) {
            let mut handover = Handover::default();
            let mut now = Instant::now();
            let mut newest = None::<u32>;
            let mut in_use = None::<u32>;
            let mut offered = 0u32;
            for event in events {
                match event {
                    Event::Offer => {
                        offered += 1;
                        newest = Some(offered);
                        handover.offer(offered, now);
                        prop_assert_eq!(handover.due_at(), Some(now), "new files are offered at once");
                    }
                    Event::Wait(ms) => now += Duration::from_millis(ms),
                    Event::DialRefused => {
                        if let Some(candidate) = handover.take_due(now) {
                            handover.refused(candidate, now);
                            prop_assert_eq!(handover.due_at(), Some(now + HANDOVER_RETRY));
                            prop_assert_eq!(handover.take_due(now), None, "not again before the retry");
                        }
                    }
                    Event::DialWelcomed => {
                        if let Some(candidate) = handover.take_due(now) {
                            prop_assert_eq!(Some(candidate), newest, "only the newest files are ever dialled");
                            in_use = Some(candidate);
                        }
                    }
                }
                // Whatever waits is the newest files; nothing waits only once they are in use.
                if let Some(due) = handover.due_at() {
                    prop_assert!(due <= now + HANDOVER_RETRY);
                    prop_assert_eq!(handover.clone().settle(), newest);
                } else {
                    prop_assert_eq!(newest, in_use);
                }
            }
            // A lost connection reconnects with the newest files.
            let settled = handover.settle();
            prop_assert!(settled.is_none() || settled == newest);
            prop_assert!(!handover.is_waiting());
        }
    }
}
