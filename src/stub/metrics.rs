//! The stub's metrics, served at `/metrics` on its admin listener: agents connected per cluster,
//! requests in flight, requests by cluster and code with their durations and bytes, refusals by
//! reason (front door and agent handshakes), and for every agent connection over QUIC its path
//! as quinn measures it (RTT, congestion window, packets sent and lost): link quality per agent.

use super::registry::Registry;
use crate::metrics::{self, CounterVec, DURATION_BUCKETS, HistogramVec, Text};

/// Counters kept as requests happen; gauges are read from the registry at scrape time.
#[derive(Debug)]
pub struct StubMetrics {
    /// cluster, code
    pub requests: CounterVec,
    /// cluster: from the request's arrival to the end of its response
    pub duration: HistogramVec,
    /// cluster
    pub response_bytes: CounterVec,
    /// reason: front-door requests refused before reaching an agent
    pub refusals: CounterVec,
    /// reason: agent handshakes refused (certificate chain, whitelist)
    pub agent_refusals: CounterVec,
}

impl Default for StubMetrics {
    fn default() -> Self {
        StubMetrics {
            requests: CounterVec::new(&["cluster", "code"]),
            duration: HistogramVec::new(&["cluster"], DURATION_BUCKETS),
            response_bytes: CounterVec::new(&["cluster"]),
            refusals: CounterVec::new(&["reason"]),
            agent_refusals: CounterVec::new(&["reason"]),
        }
    }
}

impl StubMetrics {
    /// The whole exposition.
    pub fn render(&self, registry: &Registry) -> String {
        let mut text = Text::default();
        let agents = registry.all();

        text.family("tether_agents_connected", "gauge", "Agent connections welcomed, by cluster and transport.");
        let mut connected = std::collections::BTreeMap::<(String, String), u64>::new();
        let mut in_flight = std::collections::BTreeMap::<String, u64>::new();
        for agent in &agents {
            *connected.entry((agent.cluster.clone(), agent.connection.transport().to_string())).or_default() += 1;
            *in_flight.entry(agent.cluster.clone()).or_default() += agent.in_flight() as u64;
        }
        for ((cluster, transport), n) in &connected {
            text.sample("tether_agents_connected", &[("cluster", cluster), ("transport", transport)], *n as f64);
        }
        text.family("tether_streams_in_flight", "gauge", "Requests in flight on agent connections, by cluster.");
        for (cluster, n) in &in_flight {
            text.sample("tether_streams_in_flight", &[("cluster", cluster)], *n as f64);
        }

        self.requests.render(&mut text, "tether_requests_total", "Front-door requests by cluster and status code.");
        self.duration.render(
            &mut text,
            "tether_request_duration_seconds",
            "From a request's arrival to the end of its response (watches included), by cluster.",
        );
        self.response_bytes.render(&mut text, "tether_response_bytes_total", "Response body bytes sent to callers.");
        self.refusals.render(
            &mut text,
            "tether_refusals_total",
            "Requests refused before reaching an agent, by reason.",
        );
        self.agent_refusals.render(&mut text, "tether_agent_refusals_total", "Agent handshakes refused, by reason.");

        // Link quality, per QUIC agent connection.
        let ids: Vec<String> = agents.iter().map(|a| a.id.to_string()).collect();
        let paths: Vec<_> = agents
            .iter()
            .zip(&ids)
            .filter_map(|(agent, id)| {
                let labels = vec![
                    ("cluster", agent.cluster.as_str()),
                    ("agent", agent.name.as_str()),
                    ("connection", id.as_str()),
                ];
                Some((labels, agent.connection.path_stats()?))
            })
            .collect();
        metrics::render_paths(&mut text, &paths);
        text.into_string()
    }
}
