//! The cluster inventory: `GET /clusters` on the stub's admin listener (JSON), and the table
//! `tether status --admin URL` prints from it. For each cluster the stub knows (registered in
//! the whitelist, connected here, or held by a peer replica): whether it is reachable, and each
//! agent connection this replica holds (agent, transport, build, connected since, RTT, streams
//! in flight), so that an operator sees at a glance which cluster is down and which agents run
//! another build than the stub.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::state::StubState;

/// Everything `/clusters` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// The replica that answered (`--id`).
    pub replica: String,
    /// Its build; an agent connection whose build differs is flagged.
    pub build: String,
    pub clusters: Vec<Cluster>,
}

/// One cluster as this replica sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub name: String,
    pub state: Reach,
    /// Agent names registered for it in the whitelist.
    pub registered: Vec<String>,
    /// Its agent connections on this replica.
    pub connections: Vec<AgentConnection>,
    /// Peer replicas that hold agent connections of it (requests are forwarded there).
    pub via_replicas: Vec<String>,
}

/// Whether requests for a cluster can be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reach {
    /// An agent connection here takes requests.
    Up,
    /// Only peer replicas hold agent connections; requests go through them.
    ViaPeer,
    /// Connected, but every connection is draining (an agent shutting down or rolling over).
    Draining,
    /// Registered, and no agent connection anywhere this replica knows of: requests get 503.
    Down,
}

/// One agent connection on this replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentConnection {
    /// The agent name of its certificate's whitelist entry.
    pub agent: String,
    /// The stub's id for the connection (the agent logs the same id).
    pub connection: u64,
    /// The agent's address as the stub sees it: tells two replicas of one agent apart.
    pub remote: String,
    /// `quic` or `tcp`.
    pub transport: String,
    /// The build the agent said it runs.
    pub build: String,
    /// Whether that differs from the stub's.
    pub build_differs: bool,
    /// When it was welcomed (RFC 3339, UTC).
    pub connected_since: String,
    pub connected_seconds: u64,
    /// Smoothed round-trip time in milliseconds (QUIC); `null` over TCP, which does not
    /// measure it.
    pub rtt_ms: Option<f64>,
    /// Requests in flight on it now.
    pub streams_in_flight: usize,
    /// Routes nothing new (the agent asked to drain).
    pub draining: bool,
}

/// The inventory as this replica sees it now.
pub fn collect(state: &StubState) -> Inventory {
    let mut connections: BTreeMap<String, Vec<AgentConnection>> = BTreeMap::new();
    let now = std::time::SystemTime::now();
    for hop in state.registry.all() {
        let super::hop::HopTo::Agent { cluster, name, .. } = &hop.to else { continue };
        let rtt = hop.connection.rtt();
        let since = time::OffsetDateTime::from(hop.since);
        connections.entry(cluster.clone()).or_default().push(AgentConnection {
            agent: name.clone(),
            connection: hop.id,
            remote: hop.remote.to_string(),
            transport: hop.connection.transport().to_string(),
            build: hop.build.clone(),
            build_differs: hop.build != crate::BUILD,
            connected_since: since.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            connected_seconds: now.duration_since(hop.since).unwrap_or_default().as_secs(),
            rtt_ms: (!rtt.is_zero()).then(|| (rtt.as_secs_f64() * 1e4).round() / 10.0),
            streams_in_flight: hop.in_flight(),
            draining: !hop.routable(),
        });
    }
    let mut registered: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in state.whitelist.get().entries() {
        registered.entry(entry.cluster.clone()).or_default().insert(entry.name.clone());
    }
    let holders = state.hub.peers.holders();
    let names: BTreeSet<&String> = registered.keys().chain(connections.keys()).chain(holders.keys()).collect();
    let clusters = names
        .into_iter()
        .map(|name| {
            let mut here = connections.get(name).cloned().unwrap_or_default();
            here.sort_by(|a, b| (&a.agent, a.connection).cmp(&(&b.agent, b.connection)));
            let via = holders.get(name).cloned().unwrap_or_default();
            let state = if here.iter().any(|c| !c.draining) {
                Reach::Up
            } else if !via.is_empty() {
                Reach::ViaPeer
            } else if !here.is_empty() {
                Reach::Draining
            } else {
                Reach::Down
            };
            Cluster {
                name: name.clone(),
                state,
                registered: registered.get(name).map(|n| n.iter().cloned().collect()).unwrap_or_default(),
                connections: here,
                via_replicas: via,
            }
        })
        .collect();
    Inventory { replica: state.hub.replica.clone(), build: crate::BUILD.into(), clusters }
}

impl Reach {
    fn word(self) -> &'static str {
        match self {
            Reach::Up => "up",
            Reach::ViaPeer => "via-peer",
            Reach::Draining => "draining",
            Reach::Down => "DOWN",
        }
    }
}

/// "3m12s" for a number of seconds: how long ago, in the table.
fn age(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The inventory as a table for people: a row per agent connection (a cluster without one gets
/// a row of its own), then a line for each thing to look at (a cluster down, another build).
pub fn render_table(inventory: &Inventory) -> String {
    let header = ["CLUSTER", "STATE", "AGENT", "CONN", "TRANSPORT", "REMOTE", "BUILD", "UP FOR", "RTT", "STREAMS"];
    let mut rows: Vec<[String; 10]> = Vec::new();
    for cluster in &inventory.clusters {
        let state = cluster.state.word().to_owned();
        if cluster.connections.is_empty() {
            let via = if cluster.via_replicas.is_empty() {
                "-".to_owned()
            } else {
                format!("via {}", cluster.via_replicas.join(","))
            };
            let dash = || "-".to_owned();
            rows.push([cluster.name.clone(), state, via, dash(), dash(), dash(), dash(), dash(), dash(), dash()]);
            continue;
        }
        for c in &cluster.connections {
            let build = if c.build_differs { format!("{} (!)", c.build) } else { c.build.clone() };
            let agent = if c.draining { format!("{} (draining)", c.agent) } else { c.agent.clone() };
            let rtt = c.rtt_ms.map_or("-".to_owned(), |ms| format!("{ms:.1}ms"));
            rows.push([
                cluster.name.clone(),
                state.clone(),
                agent,
                c.connection.to_string(),
                c.transport.clone(),
                c.remote.clone(),
                build,
                age(c.connected_seconds),
                rtt,
                c.streams_in_flight.to_string(),
            ]);
        }
    }
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!("replica {} ({})\n", inventory.replica, inventory.build);
    let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut String| {
        let text: Vec<String> = cells.zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(&mut header.iter().copied(), &mut out);
    for row in &rows {
        line(&mut row.iter().map(String::as_str), &mut out);
    }
    let down: Vec<&str> =
        inventory.clusters.iter().filter(|c| c.state == Reach::Down).map(|c| c.name.as_str()).collect();
    if !down.is_empty() {
        let _ = writeln!(out, "\nDOWN: {} (no agent connection: requests get 503)", down.join(", "));
    }
    let other: Vec<String> = inventory
        .clusters
        .iter()
        .flat_map(|cl| cl.connections.iter().filter(|c| c.build_differs).map(move |c| (cl, c)))
        .map(|(cl, c)| format!("{}/{} (connection {}: {})", cl.name, c.agent, c.connection, c.build))
        .collect();
    if !other.is_empty() {
        let _ = writeln!(
            out,
            "\n(!) {} agent connection(s) run another build than this stub ({}): {}",
            other.len(),
            inventory.build,
            other.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(agent: &str, id: u64, build: &str) -> AgentConnection {
        AgentConnection {
            agent: agent.into(),
            connection: id,
            remote: format!("10.0.0.{id}:4000"),
            transport: "quic".into(),
            build: build.into(),
            build_differs: build != "tether 1.0.0",
            connected_since: "2026-12-01T17:00:00Z".into(),
            connected_seconds: 192,
            rtt_ms: Some(0.4),
            streams_in_flight: 2,
            draining: false,
        }
    }

    fn sample() -> Inventory {
        Inventory {
            replica: "hub-0".into(),
            build: "tether 1.0.0".into(),
            clusters: vec![
                Cluster {
                    name: "dev".into(),
                    state: Reach::Up,
                    registered: vec!["agent-0".into()],
                    connections: vec![
                        connection("agent-0", 1, "tether 1.0.0"),
                        connection("agent-0", 2, "tether 0.9.0"),
                    ],
                    via_replicas: vec![],
                },
                Cluster {
                    name: "edge".into(),
                    state: Reach::ViaPeer,
                    registered: vec!["agent".into()],
                    connections: vec![],
                    via_replicas: vec!["hub-1".into()],
                },
                Cluster {
                    name: "prod".into(),
                    state: Reach::Down,
                    registered: vec!["agent".into()],
                    connections: vec![],
                    via_replicas: vec![],
                },
            ],
        }
    }

    #[test]
    fn the_table_has_a_row_per_connection_and_names_what_to_look_at() {
        let table = render_table(&sample());
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("replica hub-0 (tether 1.0.0)"), "{table}");
        assert!(lines[1].starts_with("CLUSTER  STATE     AGENT"), "{table}");
        let dev: Vec<&&str> = lines.iter().filter(|l| l.starts_with("dev ")).collect();
        assert_eq!(dev.len(), 2, "{table}");
        assert!(dev[1].contains("tether 0.9.0 (!)") && dev[1].contains("3m12s") && dev[1].contains("0.4ms"), "{table}");
        assert!(lines.iter().any(|l| l.starts_with("edge") && l.contains("via hub-1")), "{table}");
        assert!(table.contains("DOWN: prod (no agent connection"), "{table}");
        assert!(table.contains("1 agent connection(s) run another build than this stub (tether 1.0.0): dev/agent-0 (connection 2: tether 0.9.0)"), "{table}");
    }

    #[test]
    fn the_json_round_trips_with_kebab_case_states() {
        let inventory = sample();
        let text = serde_json::to_string(&inventory).unwrap();
        assert!(text.contains("\"state\":\"via-peer\""), "{text}");
        assert_eq!(serde_json::from_str::<Inventory>(&text).unwrap(), inventory);
    }

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(192), "3m12s");
        assert_eq!(age(7_260), "2h01m");
        assert_eq!(age(90_000), "1d01h");
    }
}
