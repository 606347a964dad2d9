//! The live agent connections of every cluster, and the choice of one for a new request: the
//! least busy connection that is not draining and not at its limit of requests in flight, and
//! not suspect of a dead peer (see [`crate::liveness`]) while another one is there.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::identity::fingerprint::Fingerprint;
use crate::liveness::Liveness;
use crate::transport::{CONNECTION_WINDOW, Connection, STREAM_WINDOW};

/// One welcomed agent connection.
#[derive(Debug)]
pub struct AgentConnection {
    pub id: u64,
    pub cluster: String,
    /// The agent name of the certificate's whitelist entry.
    pub name: String,
    pub fingerprint: Fingerprint,
    pub remote: SocketAddr,
    pub connection: Connection,
    in_flight: AtomicUsize,
    /// Responses on this connection that their callers leave unread (see [`super::unread`]);
    /// locked while the window that follows from it is set, so grants apply in order.
    unread: Mutex<usize>,
    draining: AtomicBool,
    /// Notified when `in_flight` drops to zero.
    idle: tokio::sync::Notify,
    /// Requests waiting for an answer, and whether the agent has gone silent.
    pub liveness: Arc<Liveness>,
}

impl AgentConnection {
    pub fn new(
        id: u64,
        cluster: String,
        name: String,
        fingerprint: Fingerprint,
        connection: Connection,
    ) -> AgentConnection {
        AgentConnection {
            id,
            cluster,
            name,
            fingerprint,
            remote: connection.remote_address(),
            connection,
            in_flight: AtomicUsize::new(0),
            unread: Mutex::new(0),
            draining: AtomicBool::new(false),
            idle: tokio::sync::Notify::new(),
            liveness: Arc::default(),
        }
    }

    /// Routes nothing new to this connection; its open streams finish.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Responses on this connection held back by callers that do not read them.
    pub fn unread(&self) -> usize {
        *self.unread.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more response is held back by its caller: the connection's receive window grows by
    /// a stream's window, so that what that response holds comes out of a grant of its own,
    /// not out of the window every other response shares. Returns the new count.
    pub fn hold_unread(&self) -> usize {
        self.change_unread(|held| held + 1)
    }

    /// A held-back response ended (read to its end, or dropped): its grant goes.
    pub fn release_unread(&self) {
        self.change_unread(|held| held.saturating_sub(1));
    }

    fn change_unread(&self, change: impl FnOnce(usize) -> usize) -> usize {
        let mut held = self.unread.lock().unwrap_or_else(|e| e.into_inner());
        *held = change(*held);
        let window = u64::from(CONNECTION_WINDOW) + *held as u64 * u64::from(STREAM_WINDOW);
        self.connection.set_receive_window(window);
        *held
    }

    /// Completes once no request is in flight on this connection (all responses fully received).
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts a request against its agent connection while alive.
#[derive(Debug)]
pub struct InFlight(pub Arc<AgentConnection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The outcome of [`Registry::pick`].
#[derive(Debug)]
pub enum Pick {
    Picked(InFlight),
    /// Every routable connection is at its limit of requests in flight.
    Full {
        connections: usize,
    },
    /// No routable connection.
    None,
}

/// Every cluster's live agent connections.
#[derive(Debug, Default)]
pub struct Registry {
    clusters: Mutex<HashMap<String, Vec<Arc<AgentConnection>>>>,
    next_id: AtomicU64,
    next_pick: AtomicUsize,
}

impl Registry {
    /// A fresh connection id (shared with the agent in `Welcome`, so logs match).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn add(&self, agent: Arc<AgentConnection>) {
        self.lock().entry(agent.cluster.clone()).or_default().push(agent);
    }

    pub fn remove(&self, agent: &AgentConnection) {
        let mut clusters = self.lock();
        if let Some(agents) = clusters.get_mut(&agent.cluster) {
            agents.retain(|a| a.id != agent.id);
            if agents.is_empty() {
                clusters.remove(&agent.cluster);
            }
        }
    }

    /// The least busy routable connection of `cluster` (not `excluding`, if given) with fewer
    /// than `limit` requests in flight (`0`: no limit), counted as busy until the guard drops.
    pub fn pick(&self, cluster: &str, excluding: Option<u64>, limit: usize) -> Pick {
        let clusters = self.lock();
        let Some(agents) = clusters.get(cluster) else { return Pick::None };
        let routable = |a: &&Arc<AgentConnection>| {
            Some(a.id) != excluding && !a.draining.load(Ordering::Relaxed) && !a.connection.is_closed()
        };
        // Ties (often: all idle) go round-robin, so sequential requests spread over the replicas:
        // the scan starts one connection further each time. No allocation on this per-request
        // path.
        // A suspect connection (silent peer) comes last: it is used only when nothing else is.
        let start = self.next_pick.fetch_add(1, Ordering::Relaxed) % agents.len().max(1);
        let rotated = agents[start..].iter().chain(&agents[..start]);
        let Some(least) = rotated.filter(routable).min_by_key(|a| (a.liveness.is_suspect(), a.in_flight())) else {
            return Pick::None;
        };
        if limit != 0 && least.in_flight() >= limit {
            return Pick::Full { connections: agents.iter().filter(routable).count() };
        }
        // Counted while the registry lock is held, so two requests cannot both take the last slot.
        least.in_flight.fetch_add(1, Ordering::Relaxed);
        Pick::Picked(InFlight(Arc::clone(least)))
    }

    /// Every live agent connection.
    pub fn all(&self) -> Vec<Arc<AgentConnection>> {
        self.lock().values().flatten().cloned().collect()
    }

    /// Number of live agent connections of `cluster` (draining ones included).
    pub fn count(&self, cluster: &str) -> usize {
        self.lock().get(cluster).map_or(0, Vec::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<AgentConnection>>>> {
        self.clusters.lock().unwrap_or_else(|e| e.into_inner())
    }
}
