//! A connection that requests are sent on, whoever is at the other end: an agent of this
//! replica ([`super::agents`]), or a peer replica that holds agent connections of the cluster
//! ([`super::peers`]). The request path needs the same of both: count requests in flight,
//! route nothing new once draining, give a response its caller leaves unread a window of its
//! own ([`super::unread`]), notice a silent peer ([`crate::liveness`]); and the same choice
//! among several: the least busy routable one ([`least_busy`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::identity::fingerprint::Fingerprint;
use crate::liveness::Liveness;
use crate::transport::{CONNECTION_WINDOW, Connection, STREAM_WINDOW};

/// Who is at the other end of a hop.
#[derive(Debug, Clone)]
pub enum HopTo {
    /// A welcomed agent connection of this replica.
    Agent {
        cluster: String,
        /// The agent name of the certificate's whitelist entry.
        name: String,
        fingerprint: Fingerprint,
    },
    /// A peer link to another replica of the hub, which passes requests on to its agents.
    Peer { replica: String },
}

/// One connection requests can be sent on.
#[derive(Debug)]
pub struct Hop {
    /// Unique in this process (agents and peer links alike); the agent's `Welcome` carries it,
    /// so both ends' logs name the same connection.
    pub id: u64,
    pub to: HopTo,
    pub remote: SocketAddr,
    pub connection: Connection,
    in_flight: AtomicUsize,
    /// Responses on this connection that their callers leave unread (see [`super::unread`]);
    /// locked while the window that follows from it is set, so grants apply in order.
    unread: Mutex<usize>,
    draining: AtomicBool,
    /// Notified when `in_flight` drops to zero.
    idle: tokio::sync::Notify,
    /// Requests waiting for an answer, and whether the peer has gone silent.
    pub liveness: Arc<Liveness>,
    /// The build the other end said it runs (its hello), for the inventory.
    pub build: String,
    /// When the connection was welcomed.
    pub since: std::time::SystemTime,
}

impl Hop {
    /// A hop whose other end runs `build`.
    pub fn new(id: u64, to: HopTo, connection: Connection, build: impl Into<String>) -> Hop {
        Hop {
            id,
            to,
            remote: connection.remote_address(),
            connection,
            in_flight: AtomicUsize::new(0),
            unread: Mutex::new(0),
            draining: AtomicBool::new(false),
            idle: tokio::sync::Notify::new(),
            liveness: Arc::default(),
            build: build.into(),
            since: std::time::SystemTime::now(),
        }
    }

    /// The agent's name, or the peer replica's id: for logs and the audit line.
    pub fn name(&self) -> &str {
        match &self.to {
            HopTo::Agent { name, .. } => name,
            HopTo::Peer { replica } => replica,
        }
    }

    /// The peer replica this hop goes through, if it is a peer link.
    pub fn peer(&self) -> Option<&str> {
        match &self.to {
            HopTo::Peer { replica } => Some(replica),
            HopTo::Agent { .. } => None,
        }
    }

    /// Routes nothing new to this connection; its open streams finish.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether a new request may go here at all: not draining, not closed.
    pub fn routable(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && !self.connection.is_closed()
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

    /// Counts one more request in flight here, until the guard drops.
    fn count(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// Counts a request against its hop while alive.
#[derive(Debug)]
pub struct InFlight(pub Arc<Hop>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The outcome of a choice among hops.
#[derive(Debug)]
pub enum Pick {
    Picked(InFlight),
    /// Every routable hop is at its limit of requests in flight.
    Full {
        connections: usize,
    },
    /// No routable hop.
    None,
}

/// The least busy routable hop of `hops` (not `excluding`, if given) with fewer than `limit`
/// requests in flight (`0`: no limit), counted as busy until the guard drops. A suspect hop
/// (silent peer) comes last: it is taken only when nothing else is there. Ties (often: all
/// idle) are broken by scanning from `start` on, so that sequential requests spread. The
/// caller holds the lock that guards `hops`, so two requests cannot both take a last slot.
pub fn least_busy(hops: &[Arc<Hop>], excluding: Option<u64>, limit: usize, start: usize) -> Pick {
    let routable = |h: &&Arc<Hop>| Some(h.id) != excluding && h.routable();
    let start = start % hops.len().max(1);
    let rotated = hops[start..].iter().chain(&hops[..start]);
    let Some(least) = rotated.filter(routable).min_by_key(|h| (h.liveness.is_suspect(), h.in_flight())) else {
        return Pick::None;
    };
    if limit != 0 && least.in_flight() >= limit {
        return Pick::Full { connections: hops.iter().filter(routable).count() };
    }
    Pick::Picked(least.count())
}
