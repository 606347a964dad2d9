//! The live agent connections of this replica, by cluster, and the choice of one for a new
//! request ([`super::hop::least_busy`]: the least busy connection that is not draining, not at
//! its limit of requests in flight, and not suspect of a dead peer while another one is there).
//! Changes of the set of clusters held are published, for the peer replicas' routes.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::hop::{Hop, HopTo, Pick, least_busy};

/// Every cluster's live agent connections.
#[derive(Debug)]
pub struct Registry {
    clusters: Mutex<HashMap<String, Vec<Arc<Hop>>>>,
    next_id: AtomicU64,
    next_pick: AtomicUsize,
    /// The clusters with at least one agent connection here, published on every change.
    held: tokio::sync::watch::Sender<BTreeSet<String>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            clusters: Mutex::default(),
            next_id: AtomicU64::new(0),
            next_pick: AtomicUsize::new(0),
            held: tokio::sync::watch::Sender::new(BTreeSet::new()),
        }
    }
}

impl Registry {
    /// A fresh id for a hop (shared with the agent in `Welcome`, so logs match).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Adds a welcomed agent connection (a hop to an agent; other hops are not kept here).
    pub fn add(&self, agent: Arc<Hop>) {
        let HopTo::Agent { cluster, .. } = &agent.to else { return };
        let cluster = cluster.clone();
        let mut clusters = self.lock();
        let first = !clusters.contains_key(&cluster);
        clusters.entry(cluster.clone()).or_default().push(agent);
        if first {
            self.held.send_modify(|held| {
                held.insert(cluster);
            });
        }
    }

    pub fn remove(&self, agent: &Hop) {
        let HopTo::Agent { cluster, .. } = &agent.to else { return };
        let mut clusters = self.lock();
        if let Some(agents) = clusters.get_mut(cluster) {
            agents.retain(|a| a.id != agent.id);
            if agents.is_empty() {
                clusters.remove(cluster);
                self.held.send_modify(|held| {
                    held.remove(cluster);
                });
            }
        }
    }

    /// The least busy routable connection of `cluster` (not `excluding`, if given) with fewer
    /// than `limit` requests in flight (`0`: no limit), counted as busy until the guard drops.
    pub fn pick(&self, cluster: &str, excluding: Option<u64>, limit: usize) -> Pick {
        let clusters = self.lock();
        let Some(agents) = clusters.get(cluster) else { return Pick::None };
        // Counted while the registry lock is held, so two requests cannot both take the last slot.
        least_busy(agents, excluding, limit, self.next_pick.fetch_add(1, Ordering::Relaxed))
    }

    /// Every live agent connection, with its cluster.
    pub fn all(&self) -> Vec<Arc<Hop>> {
        self.lock().values().flatten().cloned().collect()
    }

    /// The clusters with at least one agent connection here: now, and on every change.
    pub fn held(&self) -> tokio::sync::watch::Receiver<BTreeSet<String>> {
        self.held.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<Hop>>>> {
        self.clusters.lock().unwrap_or_else(|e| e.into_inner())
    }
}
