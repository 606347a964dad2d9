//! The agent's metrics, served at `/metrics` on its admin listener: whether it is connected (and
//! to which stub replicas, over which transport), requests by status code, the API server's time
//! to answer, requests in flight, connections made (and why over their transport), and each QUIC connection's path as quinn
//! measures it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::metrics::{self, CounterVec, DURATION_BUCKETS, HistogramVec, Text};
use crate::transport::Connection;

#[derive(Debug)]
pub struct AgentMetrics {
    /// code: what the agent answered on the stream
    pub requests: CounterVec,
    /// From sending a request to the API server to its response head.
    pub upstream: HistogramVec,
    pub in_flight: AtomicI64,
    /// Request streams started since start (activity, for the echo watch).
    pub streams_started: AtomicU64,
    pub connections: AtomicU64,
    /// transport, why: connections welcomed, by transport and why it was that one.
    pub chosen: CounterVec,
    /// Per slot, the connection in use (the newest, while an old one drains) and the stub
    /// replica it goes to.
    pub connections_in_use: Mutex<BTreeMap<usize, (String, Connection)>>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics {
            requests: CounterVec::new(&["code"]),
            upstream: HistogramVec::new(&[], DURATION_BUCKETS),
            in_flight: AtomicI64::new(0),
            streams_started: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            chosen: CounterVec::new(&["transport", "why"]),
            connections_in_use: Mutex::new(BTreeMap::new()),
        }
    }
}

/// Counts a stream as in flight while alive.
pub struct InFlight(std::sync::Arc<AgentMetrics>);

impl InFlight {
    pub fn new(metrics: std::sync::Arc<AgentMetrics>) -> InFlight {
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        metrics.streams_started.fetch_add(1, Ordering::Relaxed);
        InFlight(metrics)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AgentMetrics {
    /// A connection over `transport` was welcomed and serves, for `reason`.
    pub fn chosen(&self, transport: crate::transport::Transport, reason: super::transport_choice::Reason) {
        self.chosen.inc(&[&transport.to_string(), reason.label()]);
    }

    /// The connection slot `slot` uses now, and its replica (`None` while disconnected).
    pub fn set_connection(&self, slot: usize, connection: Option<(String, Connection)>) {
        let mut in_use = self.connections_in_use.lock().unwrap_or_else(|e| e.into_inner());
        match connection {
            Some(connection) => in_use.insert(slot, connection),
            None => in_use.remove(&slot),
        };
    }

    pub fn render(&self, ready: bool) -> String {
        let mut text = Text::default();
        let in_use: Vec<(String, Connection)> =
            self.connections_in_use.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        text.family(
            "tether_agent_connected",
            "gauge",
            "1 while connected to the stub and welcomed (any replica), by the transport of the first connection.",
        );
        let transport = in_use.first().map(|(_, c)| c.transport().to_string()).unwrap_or_else(|| "none".into());
        text.sample("tether_agent_connected", &[("transport", &transport)], if ready { 1.0 } else { 0.0 });
        text.family("tether_agent_stub_connections", "gauge", "Connections in use, by stub replica and transport.");
        for (replica, connection) in &in_use {
            let transport = connection.transport().to_string();
            text.sample("tether_agent_stub_connections", &[("replica", replica), ("transport", &transport)], 1.0);
        }
        text.family("tether_agent_connections_total", "counter", "Connections to the stub welcomed since start.");
        text.sample("tether_agent_connections_total", &[], self.connections.load(Ordering::Relaxed) as f64);
        self.chosen.render(
            &mut text,
            "tether_agent_transport_chosen_total",
            "Connections welcomed, by transport and why that one: only (--transport quic|tcp), preferred (started first in the race and won), raced (started second and won), quic-back (QUIC took over from TCP), quic-silent (TCP took over from a silent QUIC connection).",
        );
        text.family("tether_agent_streams_in_flight", "gauge", "Request streams being served.");
        text.sample("tether_agent_streams_in_flight", &[], self.in_flight.load(Ordering::Relaxed) as f64);
        self.requests.render(&mut text, "tether_agent_requests_total", "Requests answered, by status code.");
        self.upstream.render(
            &mut text,
            "tether_agent_upstream_seconds",
            "From sending a request to the API server to its response head.",
        );
        let paths: Vec<_> = in_use
            .iter()
            .filter_map(|(replica, c)| Some((vec![("replica", replica.as_str())], c.path_stats()?)))
            .collect();
        metrics::render_paths(&mut text, &paths);
        text.into_string()
    }
}
