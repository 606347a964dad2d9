//! Reconnect delays: capped exponential backoff with "equal jitter" (half fixed, half random),
//! so a fleet of agents that lost the stub at once does not come back in lockstep.

use std::time::Duration;

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
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.checked_mul(factor).map_or(self.max, |d| d.min(self.max))
    }

    /// The next delay, in `[ceiling/2, ceiling]`; `unit` is a random number in `[0, 1)`.
    pub fn next_with(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The next delay with a random jitter.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random::<f64>())
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

    proptest! {
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
