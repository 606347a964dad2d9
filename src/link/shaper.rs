//! What a bad link does to each packet, decided in one place and reproducible from a seed: drop
//! it (loss, %), or give it a departure time after a one-way delay with jitter, no earlier than
//! the previous packet's departure (no reordering), and paced by a rate limit (each packet
//! occupies the link for its length at that rate). Pure logic, so it is property-tested apart
//! from any device.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The impairments of one direction of a link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Packets dropped at random, in percent (0 to 100).
    pub loss_percent: f64,
    /// One-way delay.
    pub delay: Duration,
    /// Each packet's delay varies by up to this much either way (never below zero).
    pub jitter: Duration,
    /// Link rate in bits per second; `None`: unlimited.
    pub rate_bps: Option<u64>,
}

/// Decides the fate of packets for one direction. Times are offsets from any fixed start.
#[derive(Debug)]
pub struct Shaper {
    impairment: Impairment,
    rng: StdRng,
    /// When the previous packet leaves (departures never go backwards).
    last_departure: Duration,
    /// When the link is free again after the previous packet (the rate limit).
    busy_until: Duration,
}

impl Shaper {
    pub fn new(impairment: Impairment, seed: u64) -> Shaper {
        Shaper {
            impairment,
            rng: StdRng::seed_from_u64(seed),
            last_departure: Duration::ZERO,
            busy_until: Duration::ZERO,
        }
    }

    /// A packet of `len` bytes arriving at `now`: `None` if it is lost, else when it leaves.
    pub fn admit(&mut self, now: Duration, len: usize) -> Option<Duration> {
        let loss = self.impairment.loss_percent.clamp(0.0, 100.0);
        if loss > 0.0 && self.rng.random::<f64>() * 100.0 < loss {
            return None;
        }
        // The rate limit: the packet is on the wire after the previous one, for len * 8 / rate.
        let sent = match self.impairment.rate_bps.filter(|r| *r > 0) {
            Some(rate) => {
                let start = now.max(self.busy_until);
                self.busy_until = start + Duration::from_nanos((len as u64 * 8).saturating_mul(1_000_000_000) / rate);
                self.busy_until
            }
            None => now,
        };
        let jitter = self.impairment.jitter.as_nanos() as i128;
        let offset = if jitter > 0 { self.rng.random_range(-jitter..=jitter) } else { 0 };
        let delay = (self.impairment.delay.as_nanos() as i128 + offset).max(0) as u64;
        let departure = (sent + Duration::from_nanos(delay)).max(self.last_departure);
        self.last_departure = departure;
        Some(departure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn impairment(loss: f64, delay_ms: u64, jitter_ms: u64, rate: Option<u64>) -> Impairment {
        Impairment {
            loss_percent: loss,
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::from_millis(jitter_ms),
            rate_bps: rate,
        }
    }

    proptest! {
        #[test]
        fn departures_keep_order_and_respect_delay_and_rate(
            delay_ms in 0u64..100,
            jitter_ms in 0u64..20,
            rate in proptest::option::of(10_000u64..1_000_000_000),
            seed: u64,
            gaps in proptest::collection::vec((0u64..5_000_000, 1usize..1500), 1..300),
        ) {
            let mut shaper = Shaper::new(impairment(0.0, delay_ms, jitter_ms, rate), seed);
            let (mut now, mut last, mut bits) = (Duration::ZERO, Duration::ZERO, 0u64);
            for (gap, len) in gaps {
                now += Duration::from_nanos(gap);
                let departure = shaper.admit(now, len).expect("no loss configured");
                prop_assert!(departure >= last, "departures go backwards");
                let earliest = Duration::from_millis(delay_ms.saturating_sub(jitter_ms));
                prop_assert!(departure >= now + earliest);
                bits += len as u64 * 8;
                if let Some(rate) = rate {
                    // Everything admitted so far cannot have left before the rate allows.
                    prop_assert!(departure.as_nanos() + 1 >= (bits as u128 * 1_000_000_000) / rate as u128 + earliest.as_nanos());
                }
                last = departure;
            }
        }

        #[test]
        fn the_same_seed_gives_the_same_link(seed: u64, loss in 0.0f64..50.0) {
            let run = |seed| {
                let mut shaper = Shaper::new(impairment(loss, 10, 3, Some(1_000_000)), seed);
                (0..200u64).map(|i| shaper.admit(Duration::from_micros(i * 100), 1200)).collect::<Vec<_>>()
            };
            prop_assert_eq!(run(seed), run(seed));
        }
    }

    #[test]
    fn loss_drops_about_the_share_asked_for() {
        let mut shaper = Shaper::new(impairment(5.0, 0, 0, None), 42);
        let lost = (0..100_000).filter(|i| shaper.admit(Duration::from_micros(*i), 100).is_none()).count();
        assert!((4_500..5_500).contains(&lost), "lost {lost} of 100000 at 5%");
        let mut none = Shaper::new(impairment(0.0, 0, 0, None), 42);
        assert!((0..10_000).all(|i| none.admit(Duration::from_micros(i), 100).is_some()));
        let mut all = Shaper::new(impairment(100.0, 0, 0, None), 42);
        assert!((0..10_000).all(|i| all.admit(Duration::from_micros(i), 100).is_none()));
    }
}
