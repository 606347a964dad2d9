//! The front door's connections: how many there may be (per source address and in all), and
//! when an open one has had its time. A TLS connection costs the stub about 18 KiB before it
//! sends a byte, and anyone may open one, token or not, so:
//!
//! - a connection beyond `--max-connections-per-source` (from one IP address) or
//!   `--max-connections` (in all) is closed as soon as it is accepted;
//! - a connection that sends no request within `--header-timeout` of its TLS handshake (never
//!   speaking, over HTTP/1.1 or HTTP/2, with or without the HTTP/2 preface) is closed;
//! - a connection with no request in flight for `--client-idle-timeout` is closed (HTTP/2 with a
//!   GOAWAY, so clients reconnect cleanly).
//!
//! Open watches and upgraded connections (exec, attach, port-forward) are requests in flight:
//! they are never idle.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::metrics::StubMetrics;

/// Limits on front-door connections; a count of `0` means none.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub per_source: usize,
    pub total: usize,
    /// From the TLS handshake to the first request.
    pub first_request: Duration,
    /// With no request in flight.
    pub idle: Duration,
}

/// The open front-door connections, counted per source address.
#[derive(Debug)]
pub struct Connections {
    limits: ConnectionLimits,
    by_source: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
    metrics: Arc<StubMetrics>,
}

/// Why a connection was not taken or was closed: the `reason` label of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Refused at once: its source address has as many connections as allowed.
    SourceLimit,
    /// Refused at once: the front door has as many connections as allowed.
    TotalLimit,
    /// It sent no request in time.
    Silent,
    /// No request in flight for too long.
    Idle,
}

impl Closed {
    pub fn label(self) -> &'static str {
        match self {
            Closed::SourceLimit => "limit_source",
            Closed::TotalLimit => "limit_total",
            Closed::Silent => "silent",
            Closed::Idle => "idle",
        }
    }
}

impl Connections {
    pub fn new(limits: ConnectionLimits, metrics: Arc<StubMetrics>) -> Arc<Connections> {
        Arc::new(Connections { limits, by_source: Mutex::new(HashMap::new()), total: AtomicUsize::new(0), metrics })
    }

    /// Counts a new connection from `source`, or says which limit refuses it.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Open, Closed> {
        let limits = self.limits;
        let mut by_source = self.lock();
        let from_source = by_source.get(&source).copied().unwrap_or(0);
        let refused = if limits.per_source != 0 && from_source >= limits.per_source {
            Some(Closed::SourceLimit)
        } else if limits.total != 0 && self.total.load(Ordering::Relaxed) >= limits.total {
            Some(Closed::TotalLimit)
        } else {
            None
        };
        if let Some(why) = refused {
            drop(by_source);
            self.metrics.front_door_closed.inc(&[why.label()]);
            return Err(why);
        }
        by_source.insert(source, from_source + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Open { connections: self.clone(), source, activity: Arc::new(Activity::new()) })
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.by_source.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An open connection, counted until dropped.
#[derive(Debug)]
pub struct Open {
    connections: Arc<Connections>,
    source: IpAddr,
    pub activity: Arc<Activity>,
}

impl Open {
    /// Completes when the connection has had its time: silent since its handshake, or idle.
    pub async fn expired(&self) -> Closed {
        let limits = self.connections.limits;
        let why = self.activity.expired(limits.first_request, limits.idle).await;
        self.connections.metrics.front_door_closed.inc(&[why.label()]);
        why
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.connections.total.fetch_sub(1, Ordering::Relaxed);
        let mut by_source = self.connections.lock();
        if let Some(count) = by_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                by_source.remove(&self.source);
            }
        }
    }
}

/// What one connection is doing: requests in flight, and since when it has had none.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<ActivityState>,
    changed: tokio::sync::Notify,
}

#[derive(Debug, Clone, Copy)]
struct ActivityState {
    in_flight: usize,
    /// When the last request ended, or when the connection opened.
    idle_since: Instant,
    /// Whether any request came at all.
    spoke: bool,
}

/// A request in flight on its connection while alive.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
        }
        drop(state);
        self.0.changed.notify_waiters();
    }
}

impl Activity {
    fn new() -> Activity {
        let state = ActivityState { in_flight: 0, idle_since: Instant::now(), spoke: false };
        Activity { state: Mutex::new(state), changed: tokio::sync::Notify::new() }
    }

    /// A request arrived; it is in flight until the guard drops (with its response body).
    pub fn request(self: &Arc<Self>) -> InFlight {
        let mut state = self.lock();
        state.in_flight += 1;
        state.spoke = true;
        drop(state);
        self.changed.notify_waiters();
        InFlight(self.clone())
    }

    /// Completes once the connection has sent no request for `first_request` since it opened
    /// (`Silent`), or has had none in flight for `idle` (`Idle`).
    async fn expired(&self, first_request: Duration, idle: Duration) -> Closed {
        loop {
            let changed = self.changed.notified();
            let state = *self.lock();
            if state.in_flight > 0 {
                changed.await;
                continue;
            }
            let (why, after) = if state.spoke { (Closed::Idle, idle) } else { (Closed::Silent, first_request) };
            tokio::select! {
                _ = tokio::time::sleep_until(state.idle_since + after) => return why,
                _ = changed => {}
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections(per_source: usize, total: usize) -> Arc<Connections> {
        let limits =
            ConnectionLimits { per_source, total, first_request: Duration::from_secs(1), idle: Duration::from_secs(5) };
        Connections::new(limits, Arc::new(StubMetrics::default()))
    }

    #[test]
    fn limits_per_source_and_in_all_count_open_connections() {
        let connections = connections(2, 3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = connections.admit(a).unwrap();
        let _a2 = connections.admit(a).unwrap();
        assert_eq!(connections.admit(a).unwrap_err(), Closed::SourceLimit);
        let _b1 = connections.admit(b).unwrap();
        assert_eq!(connections.admit(b).unwrap_err(), Closed::TotalLimit);
        drop(a1);
        assert_eq!(connections.open(), 2);
        let _b2 = connections.admit(b).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn silent_then_idle_and_never_while_a_request_is_in_flight() {
        let connections = connections(0, 0);
        let open = connections.admit("10.0.0.1".parse().unwrap()).unwrap();
        let start = Instant::now();
        assert_eq!(open.expired().await, Closed::Silent);
        assert_eq!(start.elapsed(), Duration::from_secs(1));

        let open = connections.admit("10.0.0.1".parse().unwrap()).unwrap();
        let request = open.activity.request();
        // A request in flight (a watch) for longer than any timeout: not idle.
        let watch = tokio::time::timeout(Duration::from_secs(60), open.expired()).await;
        assert!(watch.is_err(), "expired while a request was in flight");
        let ended = Instant::now();
        drop(request);
        assert_eq!(open.expired().await, Closed::Idle);
        assert_eq!(ended.elapsed(), Duration::from_secs(5));
    }
}
