//! Concurrency limits on the front door: requests in flight per user, per cluster and per agent
//! connection. A request over a limit is refused at once with `429` (a Kubernetes `Status` with
//! reason `TooManyRequests`), so one user's flood of watches cannot take a cluster's capacity
//! from everyone else. Upgraded connections (exec, attach, port-forward) count until they close.
//!
//! The per-connection count lives on each agent connection (see [`super::registry`]). Keep it
//! below the stream limit the agent grants (`tether agent --max-streams`; the defaults are 16,000
//! and 16,384), so that a full connection answers 429 at once instead of making new streams wait
//! for a free one. Nothing checks this across the two processes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Limits in force; `0` means unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub per_user: usize,
    pub per_cluster: usize,
    pub per_connection: usize,
}

/// Counts of requests in flight.
#[derive(Debug, Default)]
pub struct Counters {
    limits: Limits,
    users: Mutex<HashMap<String, usize>>,
    clusters: Mutex<HashMap<String, usize>>,
}

/// Which limit a request hit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("user {user:?} already has {limit} requests in flight (the per-user limit); retry later")]
    User { user: String, limit: usize },
    #[error("cluster {cluster:?} already has {limit} requests in flight (the per-cluster limit); retry later")]
    Cluster { cluster: String, limit: usize },
    #[error(
        "every agent connection of cluster {cluster:?} ({connections}) already carries {limit} requests (the per-connection limit); retry later"
    )]
    Connection { cluster: String, connections: usize, limit: usize },
}

/// A request counted against its user and cluster until dropped.
#[derive(Debug)]
pub struct Counted {
    counters: Arc<Counters>,
    user: String,
    cluster: String,
}

fn acquire(map: &Mutex<HashMap<String, usize>>, key: &str, limit: usize) -> bool {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    let count = map.entry(key.to_owned()).or_default();
    if limit != 0 && *count >= limit {
        return false;
    }
    *count += 1;
    true
}

fn release(map: &Mutex<HashMap<String, usize>>, key: &str) {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(count) = map.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            map.remove(key);
        }
    }
}

impl Counters {
    pub fn new(limits: Limits) -> Arc<Counters> {
        Arc::new(Counters { limits, ..Counters::default() })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Counts a request of `user` to `cluster`, or says which limit it would exceed.
    pub fn admit(self: &Arc<Self>, user: &str, cluster: &str) -> Result<Counted, LimitError> {
        if !acquire(&self.users, user, self.limits.per_user) {
            return Err(LimitError::User { user: user.into(), limit: self.limits.per_user });
        }
        if !acquire(&self.clusters, cluster, self.limits.per_cluster) {
            release(&self.users, user);
            return Err(LimitError::Cluster { cluster: cluster.into(), limit: self.limits.per_cluster });
        }
        Ok(Counted { counters: self.clone(), user: user.into(), cluster: cluster.into() })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        release(&self.counters.users, &self.user);
        release(&self.counters.clusters, &self.cluster);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_in_flight_requests_and_free_them_on_drop() {
        let counters = Counters::new(Limits { per_user: 2, per_cluster: 3, per_connection: 0 });
        let a1 = counters.admit("alice", "dev").unwrap();
        let _a2 = counters.admit("alice", "dev").unwrap();
        assert!(matches!(counters.admit("alice", "prod"), Err(LimitError::User { .. })));
        let _b1 = counters.admit("bob", "dev").unwrap();
        assert!(matches!(counters.admit("bob", "dev"), Err(LimitError::Cluster { .. })));
        // bob's refused attempt took nothing: he can still go to another cluster.
        let _b2 = counters.admit("bob", "prod").unwrap();
        drop(a1);
        let _a3 = counters.admit("alice", "dev").unwrap();
        assert!(counters.users.lock().unwrap()["alice"] == 2);
    }

    #[test]
    fn zero_means_unlimited() {
        let counters = Counters::new(Limits::default());
        let held: Vec<_> = (0..1000).map(|_| counters.admit("u", "c").unwrap()).collect();
        drop(held);
        assert!(counters.users.lock().unwrap().is_empty() && counters.clusters.lock().unwrap().is_empty());
    }
}
