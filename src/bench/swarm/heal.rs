//! How a swarm of simulated agents heals after losing connections (pure: times are offsets from
//! the start of the run, so the arithmetic is tested without a clock). A storm begins with the
//! first loss; the swarm has healed once every agent that should be connected is connected
//! again, and a loss after that starts the wait anew (heal time stays measured from the first
//! loss: what an operator sees is how long the fleet was incomplete after the trouble began).

use std::time::Duration;

/// Connections up and down over time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heal {
    /// Agents connected now.
    connected: usize,
    /// How many should be connected: those that connected at the start. `None` until the
    /// start is over.
    target: Option<usize>,
    /// Connections lost, in all.
    disconnections: u64,
    first_loss: Option<Duration>,
    last_loss: Option<Duration>,
    /// When every agent was connected again after the last loss.
    healed: Option<Duration>,
}

impl Heal {
    /// An agent was welcomed (first time or again) at `at`.
    pub fn connected(&mut self, at: Duration) {
        self.connected += 1;
        self.check(at);
    }

    /// An agent lost its connection at `at`.
    pub fn lost(&mut self, at: Duration) {
        self.connected = self.connected.saturating_sub(1);
        self.disconnections += 1;
        self.first_loss.get_or_insert(at);
        self.last_loss = Some(at);
        self.healed = None;
    }

    /// The start is over at `at`: `target` agents connected and should stay so.
    pub fn set_target(&mut self, target: usize, at: Duration) {
        self.target = Some(target);
        self.check(at);
    }

    fn check(&mut self, at: Duration) {
        if self.first_loss.is_some() && self.healed.is_none() && self.target.is_some_and(|t| self.connected >= t) {
            self.healed = Some(at);
        }
    }

    pub fn connected_now(&self) -> usize {
        self.connected
    }

    pub fn disconnections(&self) -> u64 {
        self.disconnections
    }

    /// When the first connection was lost.
    pub fn first_loss(&self) -> Option<Duration> {
        self.first_loss
    }

    /// From the first loss until every agent was connected again; `None` while some are not
    /// (or nothing was lost).
    pub fn heal_time(&self) -> Option<Duration> {
        Some(self.healed?.saturating_sub(self.first_loss?))
    }

    /// Healed, and nothing lost for `settle` since: the storm is over.
    pub fn settled(&self, now: Duration, settle: Duration) -> bool {
        self.healed.is_some_and(|healed| now >= healed + settle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_restart_heals_when_the_last_agent_is_back() {
        let mut heal = Heal::default();
        for i in 0..3 {
            heal.connected(MS(i));
        }
        heal.set_target(3, MS(10));
        assert_eq!(heal.heal_time(), None, "nothing lost: no storm");
        heal.lost(MS(100));
        heal.lost(MS(105));
        heal.connected(MS(300));
        heal.lost(MS(400));
        heal.connected(MS(900));
        assert_eq!(heal.heal_time(), None, "one of three still away");
        heal.connected(MS(1_400));
        assert_eq!(heal.heal_time(), Some(MS(1_300)), "from the first loss to the last return");
        assert_eq!(heal.disconnections(), 3);
        assert!(!heal.settled(MS(2_000), MS(1_000)) && heal.settled(MS(2_400), MS(1_000)));
        heal.lost(MS(2_500));
        assert!(!heal.settled(MS(9_000), MS(1_000)), "a new loss undoes the heal");
    }

    #[test]
    fn losses_before_the_target_is_known_count_once_it_is() {
        let mut heal = Heal::default();
        heal.connected(MS(1));
        heal.lost(MS(2));
        heal.connected(MS(3));
        assert_eq!(heal.heal_time(), None);
        heal.set_target(1, MS(5));
        assert_eq!(heal.heal_time(), Some(MS(3)));
    }

    proptest! {
        /// Whatever the order of events, the heal time is the span from the first loss to a
        /// moment when all were back, and the swarm is healed exactly when all are connected.
        #[test]
        fn heal_time_is_first_loss_to_all_back(
            agents in 1usize..20,
            events in proptest::collection::vec((any::<bool>(), 0usize..20), 0..200),
        ) {
            let mut heal = Heal::default();
            let mut up = vec![true; agents];
            for i in 0..agents {
                heal.connected(MS(i as u64));
            }
            heal.set_target(agents, MS(agents as u64));
            let mut now = agents as u64;
            for (goes_down, which) in events {
                now += 1;
                let i = which % agents;
                if goes_down && up[i] {
                    up[i] = false;
                    heal.lost(MS(now));
                } else if !goes_down && !up[i] {
                    up[i] = true;
                    heal.connected(MS(now));
                }
                let all_up = up.iter().all(|u| *u);
                prop_assert_eq!(heal.connected_now(), up.iter().filter(|u| **u).count());
                match heal.heal_time() {
                    Some(t) => {
                        prop_assert!(all_up);
                        let first = heal.first_loss().unwrap();
                        prop_assert!(first + t <= MS(now));
                    }
                    None => prop_assert!(!all_up || heal.first_loss().is_none()),
                }
            }
        }
    }
}
