//! The hub on many machines, as it runs: three stub replicas (front doors, peer links and admin
//! on 127.0.0.1, 127.0.0.2 and 127.0.0.3) whose members are Kubernetes Leases in the real dev
//! cluster; agents that reach them through one virtual address made the way kube-proxy makes a
//! Service (an nftables DNAT with a random choice, in a network namespace of the test's own);
//! users through haproxy checking each replica's `/readyz`.
//!
//! - Every agent ends up with its two connections on two distinct replicas, and every cluster
//!   answers through every replica's front door and through haproxy (a cluster held by one
//!   replica only is forwarded by the others).
//! - `kill -9` of a replica under load (GETs, watches, POSTs through haproxy): only requests in
//!   flight on it fail, retried requests succeed, its agents reconnect to the others within a
//!   few seconds; started again, it rejoins.
//! - A fourth replica (a fourth Lease): peers link to it and agents move connections to it
//!   within about 15 s; stopped again, everyone forgets it.
//!
//! Needs root (namespaces, nftables) and haproxy; elsewhere it prints why it skipped.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::hub::Replica;
use support::kube::{DevCluster, unique};
use support::lb::{AgentLb, UserLb};
use support::load::{start_load_at, stop_load};
use support::upstream::Upstream;
use support::{FrontClient, PATIENCE, Pki, Proc, front_client};

const IPS: [&str; 4] = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"];
/// Clusters with two agents each, and one with a single agent holding a single connection.
const CLUSTERS: [&str; 8] = ["dev", "c2", "c3", "c4", "c5", "c6", "c7", "c8"];

struct Hub {
    pki: Pki,
    cluster: Arc<DevCluster>,
    namespace: String,
    lb: AgentLb,
    replicas: BTreeMap<String, Replica>,
    agents: Vec<Agent>,
    _upstream: Upstream,
}

struct Agent {
    /// Killed (by PID) when the test ends.
    _proc: Proc,
    admin: String,
}

impl Hub {
    async fn start_replica(&mut self, i: usize) {
        let id = format!("r{}", i + 1);
        let quic = format!("{}:{}", self.lb.backend(i), self.lb.port);
        let members = format!("kubernetes:{}", self.namespace);
        let kubeconfig = self.cluster.admin_kubeconfig();
        let extra = ["--hub-kubeconfig", kubeconfig.to_str().unwrap(), "--audit-log", "-"];
        let replica = Replica::start_with_agents_on(&self.pki, &id, IPS[i], &quic, &members, 0, &extra).await;
        self.replicas.insert(id, replica);
    }

    /// What replica `id` says on `/readyz`.
    async fn ready(&self, id: &str) -> String {
        support::admin::admin_get(&self.replicas[id].admin, "/readyz").await.1
    }

    /// Waits (bounded by `limit`) until every running replica sees all the running ones as
    /// members and has a peer link with each of the others both ways.
    async fn until_all_linked(&self, limit: Duration) -> Duration {
        let ids: Vec<&str> = self.replicas.keys().map(String::as_str).collect();
        let started = Instant::now();
        loop {
            let mut all = true;
            for id in &ids {
                let others: Vec<&str> = ids.iter().copied().filter(|r| r != id).collect();
                let said = self.ready(id).await;
                let expected = [
                    format!("{} members ({})", ids.len(), ids.join(" ")),
                    format!("peers linked in: {};", others.join(" ")),
                    format!("linked out: {};", others.join(" ")),
                ];
                all &= expected.iter().all(|e| said.contains(e.as_str()));
            }
            if all {
                return started.elapsed();
            }
            assert!(started.elapsed() < limit, "replicas {ids:?} not all linked within {limit:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Per agent, the replicas its connections are on now (from its own metrics).
    async fn agent_replicas(&self) -> Vec<Vec<String>> {
        let mut all = Vec::new();
        for agent in &self.agents {
            let (_, metrics) = support::admin::admin_get(&agent.admin, "/metrics").await;
            let replicas = metrics
                .lines()
                .filter_map(|l| l.strip_prefix("tether_agent_stub_connections{replica=\""))
                .filter_map(|l| l.split('"').next())
                .map(str::to_owned)
                .collect();
            all.push(replicas);
        }
        all
    }

    /// Waits (bounded by `limit`) until every agent holds `k` connections on distinct replicas,
    /// all in `allowed`; returns how long that took.
    async fn until_agents_on(&self, k: &[usize], allowed: &[&str], limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let now = self.agent_replicas().await;
            let ok = now.iter().zip(k).all(|(replicas, k)| {
                let distinct: BTreeSet<&String> = replicas.iter().collect();
                replicas.len() == *k && distinct.len() == *k && replicas.iter().all(|r| allowed.contains(&r.as_str()))
            });
            if ok {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "agents not on {k:?} distinct replicas of {allowed:?} within {limit:?}: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn hub() -> Option<Hub> {
    if let Some(reason) = support::lb::unavailable() {
        eprintln!("SKIPPED: cannot make the hub's load balancers here: {reason}");
        return None;
    }
    let cluster = DevCluster::shared().await;
    let namespace = unique("hub");
    cluster.admin(&["create", "namespace", &namespace]).await;
    let lb = AgentLb::start(4)?;
    lb.set_backends(&[0, 1, 2]);
    let pki = Pki::with_stub_names(&IPS[1..]);
    let upstream = Upstream::start().await;
    let mut hub =
        Hub { pki, cluster, namespace, lb, replicas: BTreeMap::new(), agents: Vec::new(), _upstream: upstream };
    for i in 0..3 {
        hub.start_replica(i).await;
    }
    hub.until_all_linked(PATIENCE).await;
    // Agents: two per cluster, each with two connections; and "solo" with one of one.
    let certs = hub.pki.path().to_str().unwrap().to_owned();
    let target = hub.lb.target();
    let upstream_url = hub._upstream.url();
    let spawn = |cluster: &str, name: &str, k: &str| {
        hub.pki.agent(cluster, name);
        let args = [
            "agent",
            "--certs",
            &certs,
            "--cluster",
            cluster,
            "--name",
            name,
            "--stub",
            &target,
            "--server-name",
            "localhost",
            "--upstream",
            &upstream_url,
            "--connections",
            k,
            "--admin-listen",
            "127.0.0.1:0",
        ];
        Proc::spawn(&format!("{cluster}/{name}"), &args)
    };
    let mut procs = Vec::new();
    for cluster in CLUSTERS {
        procs.push(spawn(cluster, "agent-0", "2"));
        procs.push(spawn(cluster, "agent-1", "2"));
    }
    procs.push(spawn("solo", "agent-0", "1"));
    for mut proc in procs {
        let line = proc.wait_for("admin listening").await;
        let admin = support::admin::admin_addr(&line);
        hub.agents.push(Agent { _proc: proc, admin });
    }
    Some(hub)
}

/// Ks of the agents, in order.
fn ks() -> Vec<usize> {
    CLUSTERS.iter().flat_map(|_| [2, 2]).chain([1]).collect()
}

async fn every_cluster_answers(client: &FrontClient, base: &str) {
    for cluster in CLUSTERS.iter().chain(&["solo"]) {
        let url = format!("{base}/clusters/{cluster}/echo/through");
        let (status, _, body) = support::call(client, "GET", &url, "").await;
        assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&body));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_behind_load_balancers_share_agents_forward_and_survive_a_kill_and_a_scale_out() {
    let Some(mut hub) = hub().await else { return };
    let took = hub.until_agents_on(&ks(), &["r1", "r2", "r3"], PATIENCE).await;
    eprintln!("all {} agents on distinct replicas after {took:?}", hub.agents.len());

    // Every cluster through every front door, and through haproxy.
    let everywhere: Vec<&str> = CLUSTERS.iter().copied().chain(["solo"]).collect();
    let client = front_client(&hub.pki, false).with_token(Some(hub.pki.token("tester", &[], &everywhere)));
    for replica in hub.replicas.values() {
        every_cluster_answers(&client, &replica.stub.url).await;
    }
    let users = UserLb::start(
        &hub.replicas
            .values()
            .map(|r| (r.id.clone(), r.stub.url.trim_start_matches("https://").to_owned(), r.admin.clone()))
            .collect::<Vec<_>>(),
    )
    .await;
    every_cluster_answers(&client, &users.url()).await;
    // "solo" is held by one replica: the two others forwarded it, as their audit lines say.
    let forwarded: usize = hub
        .replicas
        .values()
        .map(|r| r.audit_lines_with("cluster", "solo").iter().filter(|l| l.get("peer").is_some()).count())
        .sum();
    assert!(forwarded >= 2, "solo was forwarded by the replicas that do not hold it");

    // kill -9 of the replica holding "solo", under load through haproxy.
    let solo_on = hub.agent_replicas().await.last().unwrap()[0].clone();
    let victim_index: usize = solo_on[1..].parse::<usize>().unwrap() - 1;
    let (outcomes, load) = start_load_at(&hub.pki, &format!("{}/clusters/dev/echo", users.url()), 6, true);
    let watches = start_watches(&client, &users.url(), 4);
    outcomes.wait_ok(100).await;
    let killed_at = Instant::now();
    hub.replicas[&solo_on].stub.proc.signal("KILL");
    // As kube-proxy does once the endpoint is gone.
    hub.lb.set_backends(&(0..3).filter(|i| *i != victim_index).collect::<Vec<_>>());
    let live: Vec<&str> = ["r1", "r2", "r3"].into_iter().filter(|r| *r != solo_on).collect();
    let reconnected = hub.until_agents_on(&ks(), &live, Duration::from_secs(20)).await;
    let before = outcomes.ok.load(Ordering::SeqCst);
    outcomes.wait_ok(before + 200).await;
    stop_load(&outcomes, load).await;
    let failed = outcomes.errors.lock().unwrap().clone();
    let cut = outcomes.cut.load(Ordering::SeqCst);
    let watches_cut = watches.iter().filter(|w| w.is_finished()).count();
    eprintln!(
        "kill -9 of {solo_on}: agents on live replicas after {reconnected:?} (since the kill {:?}); {} ok, {} failed, {cut} cut, {watches_cut} of {} watches ended",
        killed_at.elapsed(),
        outcomes.ok.load(Ordering::SeqCst),
        failed.len(),
        watches.len()
    );
    // Only what was in flight on it: at most one request per worker, and the watches.
    assert!(failed.len() + cut <= 6, "only requests in flight on the killed replica fail: {failed:#?}");
    every_cluster_answers(&client, &users.url()).await;
    for w in watches {
        w.abort();
    }

    // Started again, it rejoins: peers link to it, the load balancer sends agents to it again.
    hub.replicas.remove(&solo_on);
    hub.start_replica(victim_index).await;
    hub.lb.set_backends(&[0, 1, 2]);
    let rejoined = hub.until_all_linked(PATIENCE).await;
    eprintln!("{solo_on} rejoined (members and peer links both ways) after {rejoined:?}");

    // Scale out to four: a fourth Lease; peers and agents follow within about 15 s.
    hub.start_replica(3).await;
    hub.lb.set_backends(&[0, 1, 2, 3]);
    let grown = hub.until_all_linked(Duration::from_secs(15)).await;
    let started = Instant::now();
    loop {
        let on_r4 = hub.agent_replicas().await.iter().filter(|r| r.contains(&"r4".to_owned())).count();
        if on_r4 > 0 {
            eprintln!("scale to 4: members after {grown:?}, {on_r4} agents on r4 after {:?}", started.elapsed());
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no agent moved a connection to r4");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And back to three: r4 gives up its Lease; everyone forgets it, its agents move.
    hub.lb.set_backends(&[0, 1, 2]);
    let mut r4 = hub.replicas.remove("r4").unwrap();
    r4.stub.proc.signal("TERM");
    assert!(r4.stub.proc.wait_exit().await.success(), "r4 stops cleanly");
    let forgotten = hub.until_all_linked(Duration::from_secs(15)).await;
    let moved = hub.until_agents_on(&ks(), &["r1", "r2", "r3"], Duration::from_secs(20)).await;
    eprintln!("scale back to 3: members after {forgotten:?}, agents off r4 after {moved:?}");
    every_cluster_answers(&client, &users.url()).await;
    drop(users);
}

/// Watches through haproxy, each on a task that ends when its watch does.
fn start_watches(client: &FrontClient, base: &str, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let client = client.clone();
            let url: http::Uri =
                format!("{base}/clusters/{}/watch?watch=1", CLUSTERS[i % CLUSTERS.len()]).parse().unwrap();
            tokio::spawn(async move {
                if let Ok(response) = client.get(url).await {
                    let mut body = response.into_body();
                    use http_body_util::BodyExt;
                    while let Some(Ok(_)) = body.frame().await {}
                }
            })
        })
        .collect()
}
