//! The clusters this replica can reach through its peers: for every peer replica that has
//! linked in ([`super::peer_links`]), its link (a [`Hop`]) and the clusters it announced it
//! holds agent connections for. Soft state: each replica is the only authority on its own
//! connections, and everything a peer announced goes with its link.
//!
//! A front-door request for a cluster that has no agent connection here goes to the least busy
//! link of a replica that holds one ([`PeerRoutes::pick`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::hop::{Hop, Pick, least_busy};

#[derive(Debug, Default)]
struct Table {
    /// Replica id -> its link.
    links: HashMap<String, Arc<Hop>>,
    /// Cluster -> the links of the replicas that hold it.
    clusters: HashMap<String, Vec<Arc<Hop>>>,
    /// Link id -> the clusters announced on it.
    announced: HashMap<u64, BTreeSet<String>>,
}

/// See the module doc.
#[derive(Debug, Default)]
pub struct PeerRoutes {
    table: Mutex<Table>,
    next_pick: AtomicUsize,
}

impl PeerRoutes {
    /// A peer's link joins, with nothing announced yet; returns the link it replaces (the
    /// replica linked again before its old link was seen to end), which the caller closes.
    pub fn add_link(&self, link: Arc<Hop>) -> Option<Arc<Hop>> {
        let replica = link.peer()?.to_owned();
        let mut table = self.lock();
        table.announced.insert(link.id, BTreeSet::new());
        let old = table.links.insert(replica, link);
        if let Some(old) = &old {
            table.forget(old.id);
        }
        old
    }

    /// Clusters the replica behind `link` now holds, and clusters it no longer holds.
    pub fn announce(&self, link: &Arc<Hop>, added: Vec<String>, removed: Vec<String>) {
        let mut table = self.lock();
        let Table { clusters, announced, .. } = &mut *table;
        let Some(held) = announced.get_mut(&link.id) else { return };
        for cluster in removed {
            if held.remove(&cluster) {
                drop_link(clusters, &cluster, link.id);
            }
        }
        for cluster in added {
            if held.insert(cluster.clone()) {
                clusters.entry(cluster).or_default().push(link.clone());
            }
        }
    }

    /// A link ended: whatever it announced goes with it.
    pub fn remove_link(&self, link: &Hop) {
        let mut table = self.lock();
        table.forget(link.id);
        if let Some(replica) = link.peer()
            && table.links.get(replica).is_some_and(|l| l.id == link.id)
        {
            table.links.remove(replica);
        }
    }

    /// The least busy routable link of a replica that holds `cluster` (not `excluding`).
    pub fn pick(&self, cluster: &str, excluding: Option<u64>, limit: usize) -> Pick {
        let table = self.lock();
        let Some(links) = table.clusters.get(cluster) else { return Pick::None };
        least_busy(links, excluding, limit, self.next_pick.fetch_add(1, Ordering::Relaxed))
    }

    /// The peer replicas linked in now, with how many clusters each announced.
    pub fn linked(&self) -> Vec<(String, usize)> {
        let table = self.lock();
        let mut linked: Vec<(String, usize)> = table
            .links
            .iter()
            .map(|(replica, link)| (replica.clone(), table.announced.get(&link.id).map_or(0, BTreeSet::len)))
            .collect();
        linked.sort();
        linked
    }

    /// The links, to close them (shutdown, a replica that left the hub).
    pub fn links(&self) -> Vec<Arc<Hop>> {
        self.lock().links.values().cloned().collect()
    }

    /// Each cluster some peer holds, with the replicas that hold it.
    pub fn holders(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let table = self.lock();
        table
            .clusters
            .iter()
            .map(|(cluster, links)| {
                let mut replicas: Vec<String> = links.iter().map(|l| l.name().to_owned()).collect();
                replicas.sort();
                (cluster.clone(), replicas)
            })
            .collect()
    }

    /// The clusters some peer holds.
    pub fn clusters(&self) -> BTreeSet<String> {
        self.lock().clusters.keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Table {
    fn forget(&mut self, link: u64) {
        for cluster in self.announced.remove(&link).unwrap_or_default() {
            drop_link(&mut self.clusters, &cluster, link);
        }
    }
}

fn drop_link(clusters: &mut HashMap<String, Vec<Arc<Hop>>>, cluster: &str, link: u64) {
    if let Some(links) = clusters.get_mut(cluster) {
        links.retain(|l| l.id != link);
        if links.is_empty() {
            clusters.remove(cluster);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stub::hop::HopTo;
    use proptest::prelude::*;

    /// A link with no connection behind it: the table needs connection objects, not traffic.
    fn link(id: u64, replica: &str) -> Arc<Hop> {
        let conn = crate::transport::tcp::TcpConnection::detached_for_tests();
        Arc::new(Hop::new(id, HopTo::Peer { replica: replica.into() }, crate::transport::Connection::Tcp(conn), "test"))
    }

    fn names(routes: &PeerRoutes, cluster: &str) -> Vec<String> {
        let table = routes.lock();
        let mut names: Vec<String> =
            table.clusters.get(cluster).into_iter().flatten().map(|l| l.name().to_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn announcements_follow_their_link() {
        let routes = PeerRoutes::default();
        let (b, c) = (link(1, "b"), link(2, "c"));
        routes.add_link(b.clone());
        routes.add_link(c.clone());
        routes.announce(&b, vec!["dev".into(), "prod".into()], vec![]);
        routes.announce(&c, vec!["dev".into()], vec![]);
        assert_eq!(names(&routes, "dev"), ["b", "c"]);
        routes.announce(&b, vec![], vec!["dev".into()]);
        assert_eq!(names(&routes, "dev"), ["c"]);
        routes.remove_link(&c);
        assert!(names(&routes, "dev").is_empty());
        assert_eq!(names(&routes, "prod"), ["b"]);
        assert!(matches!(routes.pick("dev", None, 0), Pick::None));
        assert!(matches!(routes.pick("prod", None, 0), Pick::Picked(_)));
        // b links again: the old link and its announcements go.
        let b2 = link(3, "b");
        assert_eq!(routes.add_link(b2.clone()).map(|l| l.id), Some(1));
        assert!(names(&routes, "prod").is_empty());
        routes.remove_link(&b);
        assert_eq!(routes.linked(), [("b".to_owned(), 0)]);
    }

    proptest! {
        /// Whatever the sequence of joins, announcements and departures, the index holds
        /// exactly the clusters each live link announced last.
        #[test]
        fn the_index_matches_what_live_links_announced(
            steps in proptest::collection::vec((0u8..4, 0u8..3, proptest::collection::vec(0u8..5, 0..4), proptest::collection::vec(0u8..5, 0..4)), 1..40)
        ) {
            let routes = PeerRoutes::default();
            let mut next_id = 0;
            let mut live: HashMap<String, (Arc<Hop>, BTreeSet<String>)> = HashMap::new();
            for (action, replica, added, removed) in steps {
                let replica = format!("r{replica}");
                let added: Vec<String> = added.iter().map(|c| format!("c{c}")).collect();
                let removed: Vec<String> = removed.iter().map(|c| format!("c{c}")).collect();
                match action {
                    0 => {
                        next_id += 1;
                        let l = link(next_id, &replica);
                        routes.add_link(l.clone());
                        live.insert(replica, (l, BTreeSet::new()));
                    }
                    1 | 2 => if let Some((l, held)) = live.get_mut(&replica) {
                        routes.announce(l, added.clone(), removed.clone());
                        for c in &removed { held.remove(c); }
                        for c in added { held.insert(c); }
                    },
                    _ => if let Some((l, _)) = live.remove(&replica) {
                        routes.remove_link(&l);
                    },
                }
            }
            for c in 0..5 {
                let cluster = format!("c{c}");
                let mut expected: Vec<String> = live.iter().filter(|(_, (_, held))| held.contains(&cluster)).map(|(r, _)| r.clone()).collect();
                expected.sort();
                prop_assert_eq!(names(&routes, &cluster), expected);
            }
        }
    }
}
