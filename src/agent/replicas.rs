//! Which stub replicas the agent's connections hold (`docs/design.md`, "The hub on many
//! machines"). The agent keeps up to K connections (`--connections`, default 2), each in a slot
//! of its own, and wants them on K *distinct* replicas, so that losing one replica costs each
//! cluster at most one connection per agent. `Welcome` names the replica and how many the hub
//! has; a slot whose connection lands on a replica another slot holds closes it and dials again
//! (from a fresh UDP socket, so a load balancer may send it elsewhere); slots beyond the
//! member count hold nothing until the hub grows. Pure: events in, decisions out, so the rules
//! are property-tested.

use std::net::SocketAddr;

/// What a slot is to do with a connection just welcomed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Keep it: its replica is not held by another slot.
    Keep,
    /// Close it: another slot holds this replica.
    Duplicate,
    /// Close it: the hub has fewer replicas than this slot's number, so it is not needed.
    Surplus,
}

/// The replicas held, slot by slot.
#[derive(Debug, Clone)]
pub struct Replicas {
    /// Per slot: the replica id and the address its connection goes to.
    slots: Vec<Option<(String, SocketAddr)>>,
    /// The hub's member count, as last heard (1 until a welcome says otherwise).
    members: u32,
}

impl Replicas {
    /// `k` slots (at least one).
    pub fn new(k: usize) -> Replicas {
        Replicas { slots: vec![None; k.max(1)], members: 1 }
    }

    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Whether slot `slot` should hold a connection now: the first `min(K, members)` do.
    pub fn active(&self, slot: usize) -> bool {
        slot < self.slots.len().min(self.members.max(1) as usize)
    }

    /// The hub's member count changed (a welcome or a `Members` frame said so). Returns whether
    /// that changed which slots are active.
    pub fn set_members(&mut self, members: u32) -> bool {
        let before = self.slots.len().min(self.members.max(1) as usize);
        self.members = members.max(1);
        before != self.slots.len().min(self.members as usize)
    }

    /// Slot `slot` was welcomed by `replica` (at `address`) of a hub of `members`.
    pub fn claim(&mut self, slot: usize, replica: &str, address: SocketAddr, members: u32) -> Claim {
        self.set_members(members);
        if !self.active(slot) {
            return Claim::Surplus;
        }
        let taken = self
            .slots
            .iter()
            .enumerate()
            .any(|(i, held)| i != slot && held.as_ref().is_some_and(|(r, _)| r == replica));
        if taken {
            return Claim::Duplicate;
        }
        self.slots[slot] = Some((replica.to_owned(), address));
        Claim::Keep
    }

    /// Slot `slot` lost (or closed) its connection.
    pub fn release(&mut self, slot: usize) {
        if let Some(held) = self.slots.get_mut(slot) {
            *held = None;
        }
    }

    /// Whether any slot holds `replica`.
    pub fn holds(&self, replica: &str) -> bool {
        self.slots.iter().any(|held| held.as_ref().is_some_and(|(r, _)| r == replica))
    }

    /// The replica slot `slot` holds.
    pub fn held(&self, slot: usize) -> Option<&str> {
        self.slots.get(slot)?.as_ref().map(|(r, _)| r.as_str())
    }

    /// Of the addresses the stub's name resolves to, the one slot `slot` should dial: the first
    /// that no other slot's connection goes to (a headless Service lists every replica), else
    /// the `attempt`-th, so that retries go round.
    pub fn prefer(&self, slot: usize, addresses: &[SocketAddr], attempt: usize) -> Option<SocketAddr> {
        let used = |a: &SocketAddr| {
            self.slots.iter().enumerate().any(|(i, h)| i != slot && h.as_ref().is_some_and(|(_, x)| x == a))
        };
        let n = addresses.len();
        (0..n)
            .map(|i| addresses[(attempt + i) % n])
            .find(|a| !used(a))
            .or_else(|| addresses.get(attempt % n.max(1)).copied())
    }
}

/// When the hub grows from `before` to `after` replicas, the share of connections that should
/// move to the new ones: each slot moves with this probability, so that on average the new
/// replicas end up with as many as the old ones (a load balancer spreads the new dials).
pub fn share_to_move(before: u32, after: u32) -> f64 {
    if after <= before || after == 0 {
        return 0.0;
    }
    f64::from(after - before) / f64::from(after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 7443))
    }

    #[test]
    fn two_slots_end_on_two_replicas() {
        let mut r = Replicas::new(2);
        assert!(r.active(0) && !r.active(1), "until a welcome tells, the hub is one replica");
        assert_eq!(r.claim(0, "a", addr(1), 3), Claim::Keep);
        assert!(r.active(1));
        assert_eq!(r.claim(1, "a", addr(1), 3), Claim::Duplicate);
        assert_eq!(r.claim(1, "b", addr(1), 3), Claim::Keep);
        assert_eq!((r.held(0), r.held(1)), (Some("a"), Some("b")));
        // The hub shrinks to one replica: the second slot is surplus.
        r.release(1);
        assert!(r.set_members(1));
        assert!(!r.active(1));
        assert_eq!(r.claim(1, "c", addr(3), 1), Claim::Surplus);
    }

    #[test]
    fn distinct_addresses_first() {
        let mut r = Replicas::new(2);
        r.claim(0, "a", addr(1), 2);
        let all = [addr(1), addr(2)];
        assert_eq!(r.prefer(1, &all, 0), Some(addr(2)));
        assert_eq!(r.prefer(0, &all, 0), Some(addr(1)), "a slot may keep its own address");
        assert_eq!(r.prefer(1, &[addr(1)], 5), Some(addr(1)), "one address behind a load balancer");
        assert_eq!(r.prefer(1, &[], 0), None);
    }

    #[test]
    fn growing_hubs_move_their_share() {
        assert_eq!(share_to_move(3, 3), 0.0);
        assert_eq!(share_to_move(4, 3), 0.0);
        assert_eq!(share_to_move(3, 4), 0.25);
        assert_eq!(share_to_move(1, 2), 0.5);
    }

    proptest! {
        /// Whatever the welcomes, two slots never keep the same replica, and a kept claim is
        /// always on an active slot.
        #[test]
        fn no_two_slots_hold_one_replica(
            k in 1usize..4,
            events in proptest::collection::vec((0usize..4, 0u8..4, 1u32..5, proptest::bool::weighted(0.3)), 1..60),
        ) {
            let mut r = Replicas::new(k);
            for (slot, replica, members, release) in events {
                let slot = slot % k;
                if release {
                    r.release(slot);
                    continue;
                }
                let replica = format!("r{replica}");
                if r.claim(slot, &replica, addr(1), members) == Claim::Keep {
                    prop_assert!(r.active(slot));
                    prop_assert_eq!(r.held(slot), Some(replica.as_str()));
                }
                let held: Vec<&str> = (0..k).filter_map(|s| r.held(s)).collect();
                let mut distinct = held.clone();
                distinct.sort();
                distinct.dedup();
                prop_assert_eq!(distinct.len(), held.len(), "{:?}", held);
            }
        }
    }
}
