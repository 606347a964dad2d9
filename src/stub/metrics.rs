//! The stub's metrics, served at `/metrics` on its admin listener: agents connected per cluster,
//! requests in flight, requests by cluster and code with their durations and bytes, refusals by
//! reason (front door and agent handshakes), and for every agent connection over QUIC its path
//! as quinn measures it (RTT, congestion window, packets sent and lost): link quality per agent.

use super::hop::HopTo;
use super::hub_view::HubSummary;
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
    /// reason: responses dropped because their callers left them unread
    pub responses_dropped: CounterVec,
    /// result: whitelist reloads applied or refused
    pub whitelist_reloads: CounterVec,
    /// reason: audit records lost (`write` failed, `queue_full`)
    pub audit_failures: CounterVec,
    /// QUIC Retries sent to agents' first packets (address validation)
    pub quic_retries: CounterVec,
    /// reason: front-door connections refused or closed by the stub (limits, silent, idle)
    pub front_door_closed: CounterVec,
    /// cluster: agent connections found silent while requests waited on them
    pub agents_suspected: CounterVec,
    /// cluster: requests sent again on another connection, their first one having failed or
    /// gone silent before any response byte
    pub retries: CounterVec,
}

/// The agent listener's handshake failures count as agent refusals, beside the verifier's.
impl crate::transport::listen::ListenerEvents for StubMetrics {
    fn refused(&self, reason: &'static str) {
        self.agent_refusals.inc(&[reason]);
    }

    fn retried(&self) {
        self.quic_retries.inc(&[]);
    }
}

impl Default for StubMetrics {
    fn default() -> Self {
        StubMetrics {
            requests: CounterVec::new(&["cluster", "code"]),
            duration: HistogramVec::new(&["cluster"], DURATION_BUCKETS),
            response_bytes: CounterVec::new(&["cluster"]),
            refusals: CounterVec::new(&["reason"]),
            agent_refusals: CounterVec::new(&["reason"]),
            responses_dropped: CounterVec::new(&["reason"]),
            whitelist_reloads: CounterVec::new(&["result"]),
            audit_failures: CounterVec::new(&["reason"]),
            quic_retries: CounterVec::new(&[]),
            front_door_closed: CounterVec::new(&["reason"]),
            agents_suspected: CounterVec::new(&["cluster"]),
            retries: CounterVec::new(&["cluster"]),
        }
    }
}

impl StubMetrics {
    /// The whole exposition.
    /// The whole exposition; `front_door_open` is the number of open front-door connections.
    pub fn render(&self, registry: &Registry, front_door_open: usize, hub: &HubSummary) -> String {
        let mut text = Text::default();
        text.family("tether_hub_members", "gauge", "Replicas of the hub as this one sees them (itself included).");
        text.sample("tether_hub_members", &[], hub.members.len() as f64);
        text.family(
            "tether_hub_peer_links",
            "gauge",
            "Peer links up, by peer and direction (in: the peer's routes are here; out: this replica's clusters are announced there).",
        );
        for (peer, _) in &hub.linked_in {
            text.sample("tether_hub_peer_links", &[("peer", peer), ("direction", "in")], 1.0);
        }
        for peer in &hub.linked_out {
            text.sample("tether_hub_peer_links", &[("peer", peer), ("direction", "out")], 1.0);
        }
        text.family(
            "tether_hub_clusters",
            "gauge",
            "Clusters this replica can reach: direct (an agent connection here), peer (some peer holds one), reachable (either).",
        );
        text.sample("tether_hub_clusters", &[("via", "direct")], hub.direct as f64);
        text.sample("tether_hub_clusters", &[("via", "peer")], hub.through_peers as f64);
        text.sample("tether_hub_clusters", &[("via", "reachable")], hub.reachable as f64);
        text.family("tether_front_door_connections", "gauge", "Open front-door connections (users and services).");
        text.sample("tether_front_door_connections", &[], front_door_open as f64);
        let agents = registry.all();

        text.family("tether_agents_connected", "gauge", "Agent connections welcomed, by cluster and transport.");
        let mut connected = std::collections::BTreeMap::<(String, String), u64>::new();
        let mut in_flight = std::collections::BTreeMap::<String, u64>::new();
        let mut unread = std::collections::BTreeMap::<String, u64>::new();
        for agent in &agents {
            let HopTo::Agent { cluster, .. } = &agent.to else { continue };
            *connected.entry((cluster.clone(), agent.connection.transport().to_string())).or_default() += 1;
            *in_flight.entry(cluster.clone()).or_default() += agent.in_flight() as u64;
            *unread.entry(cluster.clone()).or_default() += agent.unread() as u64;
        }
        for ((cluster, transport), n) in &connected {
            text.sample("tether_agents_connected", &[("cluster", cluster), ("transport", transport)], *n as f64);
        }
        text.family("tether_streams_in_flight", "gauge", "Requests in flight on agent connections, by cluster.");
        for (cluster, n) in &in_flight {
            text.sample("tether_streams_in_flight", &[("cluster", cluster)], *n as f64);
        }
        text.family(
            "tether_unread_responses",
            "gauge",
            "Responses their callers leave unread, each holding a window of its own, by cluster.",
        );
        for (cluster, n) in &unread {
            text.sample("tether_unread_responses", &[("cluster", cluster)], *n as f64);
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
        self.front_door_closed.render(
            &mut text,
            "tether_front_door_closed_total",
            "Front-door connections the stub refused (limit_source, limit_total) or closed (silent, idle).",
        );
        self.quic_retries.render(
            &mut text,
            "tether_quic_retries_total",
            "QUIC Retries sent: every agent proves its address before the stub keeps any state for it.",
        );
        self.audit_failures.render(
            &mut text,
            "tether_audit_failures_total",
            "Audit records lost: the write failed (a full disk, say) or the queue to the writer was full.",
        );
        self.whitelist_reloads.render(
            &mut text,
            "tether_whitelist_reloads_total",
            "Whitelist reloads, applied or refused (a file that does not parse, is not a regular file, is too \
             large, or would drop every agent).",
        );
        self.agents_suspected.render(
            &mut text,
            "tether_agent_connections_suspected_total",
            "Agent connections found silent (no packet for a second or more) while requests waited on them; \
             their waiting reads went to another connection.",
        );
        self.retries.render(
            &mut text,
            "tether_retries_total",
            "Requests sent again on another connection before any response byte (stream failed, or peer silent).",
        );
        self.responses_dropped.render(
            &mut text,
            "tether_responses_dropped_total",
            "Responses dropped because their callers left them unread, by reason.",
        );

        // Link quality, per QUIC agent connection.
        let ids: Vec<String> = agents.iter().map(|a| a.id.to_string()).collect();
        let paths: Vec<_> = agents
            .iter()
            .zip(&ids)
            .filter_map(|(agent, id)| {
                let HopTo::Agent { cluster, name, .. } = &agent.to else { return None };
                let labels = vec![("cluster", cluster.as_str()), ("agent", name.as_str()), ("connection", id.as_str())];
                Some((labels, agent.connection.path_stats()?))
            })
            .collect();
        metrics::render_paths(&mut text, &paths);
        text.into_string()
    }
}
