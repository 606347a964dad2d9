//! The hub on many machines, with a static member list (no Kubernetes, no root): three stub
//! replicas on 127.0.0.1, 127.0.0.2 and 127.0.0.3, each linked to the others. A cluster whose
//! agent holds a connection to one replica only is reached through every replica's front door:
//! the others forward over their peer links, and the agent's log and both audit lines name the
//! replica that forwarded. The replica holding it gone, the others answer 503 (no agent), and
//! find it again when the agent reconnects elsewhere.

mod support;

use support::hub::{Replica, free_port};
use support::upstream::Upstream;
use support::{Pki, front_client, spawn_agent};

const IPS: [&str; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];

/// Three replicas `r1`, `r2`, `r3`, with a static member list.
async fn three_replicas(pki: &Pki) -> Vec<Replica> {
    let ports: Vec<u16> = IPS.iter().map(|ip| free_port(ip)).collect();
    let members = format!(
        "static:{}",
        IPS.iter()
            .zip(&ports)
            .enumerate()
            .map(|(i, (ip, port))| format!("r{}={ip}:{port}", i + 1))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut replicas = Vec::new();
    for (i, (ip, port)) in IPS.iter().zip(&ports).enumerate() {
        replicas.push(Replica::start(pki, &format!("r{}", i + 1), ip, &members, *port, &[]).await);
    }
    for r in &mut replicas {
        r.stub.proc.wait_for_count("peer linked in", 2).await;
    }
    replicas
}

#[tokio::test]
async fn a_cluster_held_by_one_replica_is_reached_through_every_front_door() {
    let pki = Pki::with_stub_names(&IPS[1..]);
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let mut replicas = three_replicas(&pki).await;
    // The agent dials r1 directly and holds one connection: only r1 has the cluster.
    let mut agent = spawn_agent(&pki, &replicas[0].stub, "dev", "agent-0", &upstream.url(), &["--connections", "1"]);
    let line = agent.wait_for("connected to stub").await;
    assert!(line.contains("replica=r1"), "{line}");

    let client = front_client(&pki, false);
    for r in &replicas {
        r.until_ok(&client, "/clusters/dev/echo/through").await;
    }
    // r2 forwarded to r1; r1 served it as forwarded by r2; the agent saw who forwarded.
    let via_peer = replicas[1].audit_lines_with("peer", "r1");
    assert!(!via_peer.is_empty(), "r2's audit names r1:\n{}", replicas[1].stub.proc.log());
    assert_eq!(via_peer[0]["status"], 200);
    let forwarded = replicas[0].audit_lines_with("forwarded_by", "r2");
    assert!(!forwarded.is_empty(), "r1's audit names r2:\n{}", replicas[0].stub.proc.log());
    assert_eq!(forwarded[0]["agent"], "agent-0");
    assert_eq!(forwarded[0]["user"], via_peer[0]["user"]);
    assert!(agent.count("forwarded_by=r2") >= 1, "the agent's log names r2:\n{}", agent.log());
    assert!(agent.count("forwarded_by=r3") >= 1, "the agent's log names r3:\n{}", agent.log());
    assert!(replicas[0].audit_lines_with("peer", "r2").is_empty(), "r1 holds the cluster: nothing forwarded from it");

    // kubectl --as through r2: the audit lines of both replicas say whom the caller asked for.
    let path = "/clusters/dev/echo/as-bob";
    let request = http::Request::builder()
        .uri(format!("{}{path}", replicas[1].stub.url))
        .header("impersonate-user", "bob")
        .header("impersonate-group", "devs")
        .body(tether::bridge::full(bytes::Bytes::new()))
        .unwrap();
    http_body_util::BodyExt::collect(client.request(request).await.unwrap().into_body()).await.unwrap();
    let deadline = tokio::time::Instant::now() + support::PATIENCE;
    let lines = loop {
        let lines = [&replicas[1], &replicas[0]].map(|r| r.audit_lines_with("path", path));
        if lines.iter().all(|l| !l.is_empty()) {
            break lines;
        }
        assert!(tokio::time::Instant::now() < deadline, "no audit line of {path} on r2 and r1: {lines:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    for (line, replica) in [(&lines[0][0], "r2"), (&lines[1][0], "r1")] {
        assert_eq!(line["as_user"], "bob", "{replica}: {line}");
        assert_eq!(line["as_groups"], serde_json::json!(["devs"]), "{replica}: {line}");
    }
    assert_eq!(lines[1][0]["forwarded_by"], "r2", "{}", lines[1][0]);

    // Each replica says what it sees: members, peers linked both ways, clusters by route.
    let (status, ready) = support::admin::admin_get(&replicas[1].admin, "/readyz").await;
    assert_eq!(status, 200);
    for expected in [
        "replica r2",
        "3 members (r1 r2 r3)",
        "peers linked in: r1 r3",
        "linked out: r1 r3",
        "clusters: 0 direct, 1 through peers, 1 reachable",
    ] {
        assert!(ready.contains(expected), "r2's /readyz says {expected:?}: {ready}");
    }
    let (_, ready) = support::admin::admin_get(&replicas[0].admin, "/readyz").await;
    assert!(ready.contains("clusters: 1 direct, 0 through peers, 1 reachable"), "{ready}");
    let (_, metrics) = support::admin::admin_get(&replicas[2].admin, "/metrics").await;
    assert_eq!(support::admin::sample(&metrics, "tether_hub_members"), Some(3.0));
    assert_eq!(support::admin::sample(&metrics, r#"tether_hub_peer_links{peer="r1",direction="in"}"#), Some(1.0));
    assert_eq!(support::admin::sample(&metrics, r#"tether_hub_clusters{via="peer"}"#), Some(1.0));

    // A POST with a body, and a streamed response, cross the peer link whole.
    let (status, _, body) =
        support::call(&client, "POST", &format!("{}/clusters/dev/echo/post", replicas[2].stub.url), "a body").await;
    assert_eq!((status, &body[..]), (200, &b"a body"[..]));
    let (status, _, body) =
        support::call(&client, "GET", &format!("{}/clusters/dev/bytes/3000000", replicas[2].stub.url), "").await;
    assert_eq!((status, body.len()), (200, 3_000_000));
    assert!(body.iter().enumerate().all(|(i, b)| *b == support::upstream::pattern(i as u64)));

    // r1 goes: its agent connection with it; r2 and r3 hold no route to dev.
    replicas[0].stub.proc.signal("KILL");
    let (status, _, body) =
        support::call(&client, "GET", &format!("{}/clusters/dev/echo/gone", replicas[1].stub.url), "").await;
    assert!(status == 503 || status == 502, "{status} {}", String::from_utf8_lossy(&body));
    drop(replicas.remove(0));
}
