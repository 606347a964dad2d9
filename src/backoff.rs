//! Reconnect delays: capped exponential backoff with "equal jitter" (half fixed, half random),
//! so a fleet of agents that lost the stub at once does not come back in lockstep.
//!
//! A listener that refuses a dial because it is busy (too many handshakes in progress: a
//! restart under thousands of agents) is given more room: the ceiling keeps doubling past the
//! usual cap, up to [`BUSY_CAP`]. With a 1 s cap, 10,000 refused agents would come back 10,000
//! times a second and spend the listener's CPU on refusals instead of handshakes; doubling
//! spreads them until what they offer is about what it can take.

use std::time::Duration;

/// The cap of the delay after a dial refused for being busy, unless the usual cap is higher.
pub const BUSY_CAP: Duration = Duration::from_secs(8);

/// Backoff state of one dial loop (an agent's, or a replica's toward a peer).
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// `min` is the first delay's ceiling, `max` the cap of every delay.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min: min.min(max), max, attempt: 0 }
    }

    /// The ceiling of the next delay: `min * 2^attempt`, capped at `max`.
    pub fn ceiling(&self) -> Duration {
        self.ceiling_under(self.max)
    }

    fn ceiling_under(&self, cap: Duration) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.checked_mul(factor).map_or(cap, |d| d.min(cap))
    }

    /// The next delay, in `[ceiling/2, ceiling]`; `unit` is a random number in `[0, 1)`.
    pub fn next_with(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.jittered(ceiling, unit)
    }

    /// The next delay after a dial refused for being busy: as [`Backoff::next_with`], with the
    /// cap raised to [`BUSY_CAP`].
    pub fn next_busy_with(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling_under(self.max.max(BUSY_CAP));
        self.jittered(ceiling, unit)
    }

    fn jittered(&mut self, ceiling: Duration, unit: f64) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The next delay with a random jitter.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random::<f64>())
    }

    /// The next delay after a dial refused for being busy, with a random jitter.
    pub fn next_busy_delay(&mut self) -> Duration {
        self.next_busy_with(rand::random::<f64>())
    }

    /// Back to the shortest delay, after a healthy run.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings: Vec<u128> = (0..6)
            .map(|_| {
                let c = b.ceiling().as_millis();
                b.next_with(0.0);
                c
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn refusals_for_being_busy_double_past_the_cap_up_to_the_busy_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings: Vec<u128> = (0..9).map(|_| b.next_busy_with(1.0).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200, 6400, 8000, 8000]);
        // After the stub took the agent again and lost it, the usual cap is back.
        assert_eq!(b.next_with(1.0), Duration::from_secs(1));
        b.reset();
        assert_eq!(b.next_busy_with(0.0), Duration::from_millis(50));
    }

    proptest! {
        /// Whatever mix of ordinary and busy failures, no delay exceeds the cap in force for
        /// it, and none is shorter than half the ordinary ceiling.
        #[test]
        fn busy_delays_stay_under_the_busy_cap(
            min_ms in 1u64..5_000,
            max_ms in 1u64..20_000,
            failures in proptest::collection::vec((any::<bool>(), 0.0f64..1.0), 1..60),
        ) {
            let (min, max) = (Duration::from_millis(min_ms), Duration::from_millis(max_ms));
            let mut b = Backoff::new(min, max);
            for (busy, unit) in failures {
                let ordinary = b.ceiling();
                let d = if busy { b.next_busy_with(unit) } else { b.next_with(unit) };
                let cap = if busy { max.max(BUSY_CAP) } else { max };
                prop_assert!(d <= cap, "{d:?} over {cap:?}");
                prop_assert!(d >= ordinary / 2, "{d:?} under half of {ordinary:?}");
            }
        }

        #[test]
        fn every_delay_is_within_bounds(
            min_ms in 1u64..5_000,
            max_ms in 1u64..120_000,
            units in proptest::collection::vec(0.0f64..1.0, 1..100),
        ) {
            let (min, max) = (Duration::from_millis(min_ms), Duration::from_millis(max_ms));
            let mut b = Backoff::new(min, max);
            let mut last_ceiling = Duration::ZERO;
            for u in units {
                let ceiling = b.ceiling();
                prop_assert!(ceiling >= last_ceiling, "ceilings never shrink without reset");
                prop_assert!(ceiling <= max);
                let d = b.next_with(u);
                prop_assert!(d <= ceiling && d >= ceiling / 2, "{d:?} outside [{:?}, {ceiling:?}]", ceiling / 2);
                last_ceiling = ceiling;
            }
        }
    }
}
