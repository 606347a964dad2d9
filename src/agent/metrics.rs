//! The agent's metrics, served at `/metrics` on its admin listener: whether it is connected (and
//! over which transport), requests by status code, the API server's time to answer, requests in
//! flight, connections made, and its QUIC connection's path as quinn measures it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::metrics::{CounterVec, DURATION_BUCKETS, HistogramVec, Text};
use crate::transport::Link;

#[derive(Debug)]
pub struct AgentMetrics {
    /// code: what the agent answered on the stream
    pub requests: CounterVec,
    /// From sending a request to the API server to its response head.
    pub upstream: HistogramVec,
    pub in_flight: AtomicI64,
    pub connections: AtomicU64,
    /// The connection in use (the newest, while an old one drains).
    pub link: Mutex<Option<Link>>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics {
            requests: CounterVec::new(&["code"]),
            upstream: HistogramVec::new(&[], DURATION_BUCKETS),
            in_flight: AtomicI64::new(0),
            connections: AtomicU64::new(0),
            link: Mutex::new(None),
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
    pub fn set_link(&self, link: Option<Link>) {
        *self.link.lock().unwrap_or_else(|e| e.into_inner()) = link;
    }

    pub fn render(&self, ready: bool) -> String {
        let mut text = Text::default();
        let link = self.link.lock().unwrap_or_else(|e| e.into_inner()).clone();
        text.family("tether_agent_connected", "gauge", "1 while connected to the stub and welcomed, by transport.");
        let transport = link.as_ref().map(|l| l.transport().to_string()).unwrap_or_else(|| "none".into());
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
        if let Some(Link::Quic(conn)) = &link {
            let stats = conn.stats();
            let samples = [
                (
                    "tether_link_rtt_seconds",
                    "gauge",
                    "Smoothed RTT of the QUIC connection.",
                    stats.path.rtt.as_secs_f64(),
                ),
                (
                    "tether_link_cwnd_bytes",
                    "gauge",
                    "Congestion window of the QUIC connection.",
                    stats.path.cwnd as f64,
                ),
                ("tether_link_sent_packets_total", "counter", "Packets sent.", stats.path.sent_packets as f64),
                ("tether_link_lost_packets_total", "counter", "Packets lost.", stats.path.lost_packets as f64),
            ];
            for (name, kind, help, value) in samples {
                text.family(name, kind, help);
                text.sample(name, &[], value);
            }
        }
        text.into_string()
    }
}
