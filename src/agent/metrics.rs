//! The agent's metrics, served at `/metrics` on its admin listener: whether it is connected (and
//! over which transport), requests by status code, the API server's time to answer, requests in
//! flight, connections made, and its QUIC connection's path as quinn measures it.

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
    pub connections: AtomicU64,
    /// The connection in use (the newest, while an old one drains).
    pub connection: Mutex<Option<Connection>>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics {
            requests: CounterVec::new(&["code"]),
            upstream: HistogramVec::new(&[], DURATION_BUCKETS),
            in_flight: AtomicI64::new(0),
            connections: AtomicU64::new(0),
            connection: Mutex::new(None),
        }
    }
}

/// Counts a stream as in flight while alive.
pub struct InFlight(std::sync::Arc<AgentMetrics>);

impl InFlight {
    pub fn new(metrics: std::sync::Arc<AgentMetrics>) -> InFlight {
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(metrics)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AgentMetrics {
    /// The connection in use now (`None` while disconnected).
    pub fn set_connection(&self, connection: Option<Connection>) {
        *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = connection;
    }

    pub fn render(&self, ready: bool) -> String {
        let mut text = Text::default();
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner()).clone();
        text.family("tether_agent_connected", "gauge", "1 while connected to the stub and welcomed, by transport.");
        let transport = connection.as_ref().map(|c| c.transport().to_string()).unwrap_or_else(|| "none".into());
        text.sample("tether_agent_connected", &[("transport", &transport)], if ready { 1.0 } else { 0.0 });
        text.family("tether_agent_connections_total", "counter", "Connections to the stub welcomed since start.");
        text.sample("tether_agent_connections_total", &[], self.connections.load(Ordering::Relaxed) as f64);
        text.family("tether_agent_streams_in_flight", "gauge", "Request streams being served.");
        text.sample("tether_agent_streams_in_flight", &[], self.in_flight.load(Ordering::Relaxed) as f64);
        self.requests.render(&mut text, "tether_agent_requests_total", "Requests answered, by status code.");
        self.upstream.render(
            &mut text,
            "tether_agent_upstream_seconds",
            "From sending a request to the API server to its response head.",
        );
        let path = connection.as_ref().and_then(Connection::path_stats);
        metrics::render_paths(&mut text, &path.map(|stats| (Vec::new(), stats)).into_iter().collect::<Vec<_>>());
        text.into_string()
    }
}
