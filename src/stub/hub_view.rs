//! This replica's view of the hub: its id, the members it sees, the peers linked in and out,
//! and the summary `/readyz` and `/metrics` give of it. A module of its own so that the metrics
//! can render the summary without reaching into the rest of the stub's shared state.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::peer_routes::PeerRoutes;
use super::registry::Registry;
use crate::hub::members::Members;

/// This replica among the hub's replicas (a stub that runs alone is a hub of one).
#[derive(Debug)]
pub struct HubView {
    /// This replica's id (`--id`).
    pub replica: String,
    /// The members as this replica sees them now, itself included: id -> peer address.
    pub members: tokio::sync::watch::Receiver<Members>,
    /// The clusters peer replicas hold, and their links (in: the links they dialled).
    pub peers: PeerRoutes,
    /// The peers this replica's own links are up to (out: it announces its clusters there).
    pub linked_out: Mutex<BTreeSet<String>>,
}

/// What a replica can say of the hub at a glance (`/readyz`, `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSummary {
    pub replica: String,
    pub members: Vec<String>,
    /// Peers linked in (their routes are here), with the clusters each announced.
    pub linked_in: Vec<(String, usize)>,
    pub linked_out: Vec<String>,
    /// Clusters with an agent connection here.
    pub direct: usize,
    /// Clusters some peer holds.
    pub through_peers: usize,
    /// Clusters reachable one way or the other.
    pub reachable: usize,
}

impl HubView {
    /// A peer link of ours came up (`true`) or went down.
    pub fn set_linked_out(&self, replica: &str, up: bool) {
        let mut linked = self.linked_out.lock().unwrap_or_else(|e| e.into_inner());
        if up {
            linked.insert(replica.to_owned());
        } else {
            linked.remove(replica);
        }
    }

    pub fn summary(&self, registry: &Registry) -> HubSummary {
        let direct = registry.held().borrow().clone();
        let through_peers = self.peers.clusters();
        HubSummary {
            replica: self.replica.clone(),
            members: self.members.borrow().keys().cloned().collect(),
            linked_in: self.peers.linked(),
            linked_out: self.linked_out.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect(),
            direct: direct.len(),
            through_peers: through_peers.len(),
            reachable: direct.union(&through_peers).count(),
        }
    }
}

impl std::fmt::Display for HubSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let linked_in: Vec<&str> = self.linked_in.iter().map(|(r, _)| r.as_str()).collect();
        write!(
            f,
            "replica {}; {} members ({}); peers linked in: {}; linked out: {}; clusters: {} direct, {} through peers, {} reachable",
            self.replica,
            self.members.len(),
            self.members.join(" "),
            if linked_in.is_empty() { "none".to_owned() } else { linked_in.join(" ") },
            if self.linked_out.is_empty() { "none".to_owned() } else { self.linked_out.join(" ") },
            self.direct,
            self.through_peers,
            self.reachable,
        )
    }
}
