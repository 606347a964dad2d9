//! The cluster inventory as an operator reads it: `/clusters` on the stub's admin listener and
//! `tether status --admin URL`, with two clusters served by real agents (two replicas of one
//! agent in `dev`), an agent of another build in `prod`, and a registered cluster with no agent
//! (down). The stub warns about the other build when it connects.
//!
//! "Another build": only one build of tether exists on this machine, so that agent is the
//! test's own QUIC connection with a registered certificate, saying hello with another build
//! string, as an older agent's hello would (see `support::raw_agent_connection`).

mod support;

use std::process::Command;

use support::upstream::Upstream;
use support::{Pki, StubProc, spawn_agent, tether_bin};
use tether::wire::frame::{Control, Hello};

fn status(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(tether_bin()).arg("status").args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn the_inventory_shows_each_cluster_its_connections_and_builds_and_what_is_down() {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    pki.agent("prod", "agent-0");
    pki.agent("prod", "old");
    pki.agent("staging", "agent-0");
    let upstream = Upstream::start().await;
    let mut stub = StubProc::start_with(&pki, &["--admin-listen", "127.0.0.1:0"]).await;
    let admin = support::admin::admin_addr(&stub.proc.wait_for("admin listening").await);

    // dev: two replicas of one agent (one certificate); prod: one agent.
    let mut agents = Vec::new();
    for (cluster, replica) in [("dev", 0), ("dev", 1), ("prod", 0)] {
        let mut agent = spawn_agent(&pki, &stub, cluster, "agent-0", &upstream.url(), &[]);
        agent.wait_for("connected to stub").await;
        agents.push((cluster, replica, agent));
    }
    // prod: an agent of another build.
    let old = support::raw_agent_connection(&pki, &stub, "prod", "old").await;
    let (mut control, mut control_recv) = old.open_bi().await.unwrap();
    let hello = Control::Hello(Hello {
        protocol_version: tether::wire::PROTOCOL_VERSION,
        cluster: "prod".into(),
        agent_name: "old".into(),
        build: "tether 0.0.1".into(),
    });
    tether::wire::io::write_frame(&mut control, &hello).await.unwrap();
    let welcome: Control = tether::wire::io::read_frame(&mut control_recv).await.unwrap();
    let Control::Welcome(welcome) = welcome else { panic!("not welcomed: {welcome:?}") };
    let warning = stub.proc.wait_for("agent runs another build than this stub").await;
    assert!(warning.contains("tether 0.0.1") && warning.contains(tether::BUILD), "{warning}");
    assert_eq!(stub.proc.count("agent runs another build"), 1, "only the other build is warned about");

    // The JSON, through the real command.
    let (ok, json, stderr) = status(&["--admin", &admin, "--json"]);
    assert!(ok, "{stderr}");
    let inventory: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(inventory["build"], tether::BUILD);
    let cluster = |name: &str| {
        inventory["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no cluster {name} in {json}"))
    };
    let dev = cluster("dev");
    assert_eq!(dev["state"], "up");
    let dev_connections = dev["connections"].as_array().unwrap();
    assert_eq!(dev_connections.len(), 2, "both replicas: {dev}");
    assert_ne!(dev_connections[0]["remote"], dev_connections[1]["remote"], "the replicas are told apart");
    for c in dev_connections {
        assert_eq!(c["agent"], "agent-0");
        assert_eq!(c["transport"], "quic");
        assert_eq!(c["build"], tether::BUILD);
        assert_eq!(c["build_differs"], false);
        // (A number, not null: measured. It is rounded to 0.1 ms, so a fast loopback may read 0.0.)
        assert!(c["rtt_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "QUIC measures the RTT: {c}");
        assert_eq!(c["streams_in_flight"], 0);
        assert!(c["connected_since"].as_str().unwrap().ends_with('Z'), "{c}");
    }
    let prod = cluster("prod");
    assert_eq!(prod["state"], "up");
    let old_entry = prod["connections"].as_array().unwrap().iter().find(|c| c["agent"] == "old").unwrap().clone();
    assert_eq!(old_entry["build"], "tether 0.0.1");
    assert_eq!(old_entry["build_differs"], true);
    assert_eq!(old_entry["connection"], welcome.connection_id, "the id the agent was welcomed with");
    let staging = cluster("staging");
    assert_eq!(staging["state"], "down");
    assert_eq!(staging["registered"], serde_json::json!(["agent-0"]));
    assert!(staging["connections"].as_array().unwrap().is_empty());

    // The table.
    let (ok, table, stderr) = status(&["--admin", &format!("http://{admin}")]);
    assert!(ok, "{stderr}");
    assert_eq!(table.lines().filter(|l| l.starts_with("dev ")).count(), 2, "{table}");
    assert!(table.lines().any(|l| l.starts_with("prod ") && l.contains("tether 0.0.1 (!)")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("staging ") && l.contains("DOWN")), "{table}");
    assert!(table.contains("DOWN: staging"), "{table}");
    assert!(table.contains("1 agent connection(s) run another build than this stub"), "{table}");

    // One dev replica goes: dev stays up on the other; the inventory follows.
    let (_, _, replica) = agents.remove(0);
    drop(replica);
    stub.proc.wait_for("agent disconnected").await;
    let (_, body) = support::admin::admin_get(&admin, "/clusters").await;
    let now: serde_json::Value = serde_json::from_str(&body).unwrap();
    let dev = now["clusters"].as_array().unwrap().iter().find(|c| c["name"] == "dev").unwrap().clone();
    assert_eq!(dev["connections"].as_array().unwrap().len(), 1, "the killed replica is gone: {dev}");
    assert_eq!(dev["state"], "up");
    old.close(0u32.into(), b"done");
}

#[tokio::test]
async fn status_says_what_to_do_when_it_cannot_read_an_inventory() {
    // Nothing listens there (a port that was free a moment ago).
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (ok, _, stderr) = status(&["--admin", &free.to_string()]);
    assert!(!ok);
    assert!(stderr.contains("cannot reach the admin listener") && stderr.contains("--admin-listen"), "{stderr}");

    // An agent's admin listener has no inventory.
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let stub = StubProc::start(&pki).await;
    let mut agent = spawn_agent(&pki, &stub, "dev", "agent-0", &upstream.url(), &["--admin-listen", "127.0.0.1:0"]);
    let admin = support::admin::admin_addr(&agent.wait_for("admin listening").await);
    let (ok, _, stderr) = status(&["--admin", &admin]);
    assert!(!ok);
    assert!(stderr.contains("404") && stderr.contains("has no /clusters"), "{stderr}");

    let (ok, _, stderr) = status(&["--admin", "https://hub:9090"]);
    assert!(!ok);
    assert!(stderr.contains("plain http"), "{stderr}");
}
