//! `tether bench` as users run it: against a stub (agent in front of `tether bench --serve`) and
//! straight at the target, with JSON output that counts every request; errors are counted by
//! class (a bad token gives `status 401`, not a crash); bad flags are refused by name.

mod support;

use serde_json::Value;
use support::{Pki, Proc, StubProc, spawn_agent, tether_bin};

/// `tether bench --serve 127.0.0.1:0`; returns the process and its URL.
async fn bench_target() -> (Proc, String) {
    let mut target = Proc::spawn("bench target", &["bench", "--serve", "127.0.0.1:0"]);
    let line = target.wait_for("bench target listening").await;
    let addr = line.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    (target, format!("http://{addr}"))
}

async fn bench(args: &[&str]) -> std::process::Output {
    let output = tokio::process::Command::new(tether_bin()).arg("bench").args(args).output();
    tokio::time::timeout(support::PATIENCE, output).await.expect("bench finishes").unwrap()
}

fn report(output: &std::process::Output) -> Value {
    assert!(output.status.success(), "bench failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("--json prints JSON")
}

#[tokio::test]
async fn bench_measures_the_tunnel_and_the_target_directly() {
    let (_target, target_url) = bench_target().await;
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let stub = StubProc::start_with(&pki, &["--audit-log", "off"]).await;
    let mut agent = spawn_agent(&pki, &stub, "dev", "agent-0", &target_url, &[]);
    agent.wait_for("connected to stub").await;
    let token = pki.token("bench", &[], &["dev"]);
    let ca = pki.dir.ca_cert();
    let through = format!("{}/clusters/dev", stub.url);
    let mix = "small=70,list=10,watch=10,upload=10";
    let common = ["-n", "300", "-c", "8", "--mix", mix, "--list-path", "/list?bytes=100000", "--json", "--quiet"];

    let tunnel = report(
        &bench(&[&["--target", &through, "--token", &token, "--ca", ca.to_str().unwrap()][..], &common[..]].concat())
            .await,
    );
    assert_eq!(tunnel["ok"], 300, "{tunnel:#}");
    assert_eq!(tunnel["errors"], serde_json::json!({}));
    for kind in ["small", "list", "watch", "upload"] {
        let k = &tunnel["kinds"][kind];
        assert!(k["count"].as_u64().unwrap() > 0, "{kind} was sent: {tunnel:#}");
        let (p50, p99, max) =
            (k["p50_ms"].as_f64().unwrap(), k["p99_ms"].as_f64().unwrap(), k["max_ms"].as_f64().unwrap());
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{kind}: {k}");
    }
    let lists = tunnel["kinds"]["list"]["count"].as_u64().unwrap();
    assert_eq!(tunnel["kinds"]["list"]["bytes"].as_u64().unwrap(), lists * 100_000, "every list arrived whole");

    let direct = report(&bench(&[&["--target", &target_url][..], &common[..]].concat()).await);
    assert_eq!(direct["ok"], 300, "{direct:#}");

    // A refused request is an error of its class, counted, and the run goes on.
    let refused = report(
        &bench(&[
            "--target",
            &through,
            "--token",
            "not-a-token",
            "--ca",
            ca.to_str().unwrap(),
            "-n",
            "20",
            "--json",
            "--quiet",
        ])
        .await,
    );
    assert_eq!(refused["ok"], 0);
    assert_eq!(refused["errors"]["status 401"], 20, "{refused:#}");
}

#[tokio::test]
async fn bench_refuses_bad_flags_by_name() {
    let bad_mix = bench(&["--target", "http://127.0.0.1:1", "--mix", "small=1,lsit=2"]).await;
    assert!(!bad_mix.status.success());
    assert!(String::from_utf8_lossy(&bad_mix.stderr).contains(r#"unknown request kind "lsit""#));

    let no_ca = bench(&["--target", "https://127.0.0.1:1/clusters/dev", "-n", "1"]).await;
    assert!(!no_ca.status.success());
    assert!(String::from_utf8_lossy(&no_ca.stderr).contains("--ca FILE is needed for an https target"));
}

#[tokio::test]
async fn bench_agents_connects_simulated_agents_and_puts_the_whitelist_back() {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let original = std::fs::read_to_string(pki.dir.whitelist()).unwrap();
    let mut stub = StubProc::start_with(&pki, &["--audit-log", "off"]).await;
    let pid = stub.proc.pid().to_string();
    let output = bench(&[
        "--agents",
        "50",
        "--certs",
        pki.path().to_str().unwrap(),
        "--stub",
        &stub.quic,
        "--server-name",
        "localhost",
        "--stub-pid",
        &pid,
        "-d",
        "0s",
        "--json",
        "--quiet",
    ])
    .await;
    let swarm = report(&output);
    assert_eq!(swarm["connected"], 50, "{swarm:#}");
    assert_eq!(swarm["failed"], serde_json::json!({}));
    assert!(swarm["stub_kib_per_agent"].as_f64().is_some(), "{swarm:#}");
    stub.proc.wait_for_count("agent connected", 50).await;
    assert_eq!(std::fs::read_to_string(pki.dir.whitelist()).unwrap(), original, "the whitelist is as it was");
}

#[tokio::test]
async fn bench_agents_with_reconnect_reports_how_the_swarm_healed_after_a_stub_restart() {
    let pki = Pki::new();
    let original = std::fs::read_to_string(pki.dir.whitelist()).unwrap();
    let mut stub = StubProc::start_with(&pki, &["--audit-log", "off"]).await;
    let agents = 40;
    let certs = pki.path().to_str().unwrap().to_owned();
    let args = ["bench", "--agents", &agents.to_string(), "--certs", &certs, "--stub", &stub.quic];
    let extra = ["--server-name", "localhost", "--reconnect", "-d", "60s", "--json", "--quiet"];
    let bench = tokio::process::Command::new(tether_bin())
        .args(args.iter().chain(&extra))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    let bench = tokio::spawn(bench);
    stub.proc.wait_for_count("agent connected", agents).await;

    // The restart: SIGTERM (each agent is told the stub is going away), then a new stub where
    // the old one was. The swarm ends by itself once every agent is back and stays so for 5 s.
    stub.proc.signal("TERM");
    stub.proc.wait_exit().await;
    let mut again = StubProc::start_at(&pki, &stub.quic, "127.0.0.1:0", &["--audit-log", "off"]).await;
    again.proc.wait_for_count("agent connected", agents).await;
    let output =
        tokio::time::timeout(support::PATIENCE, bench).await.expect("the swarm ends once healed").unwrap().unwrap();
    let swarm = report(&output);

    let storm = &swarm["storm"];
    assert_eq!(storm["disconnections"], agents as u64, "{swarm:#}");
    assert_eq!(storm["connected_at_end"], agents as u64, "{swarm:#}");
    assert!(storm["heal_s"].as_f64().is_some_and(|s| s > 0.0 && s < 30.0), "{swarm:#}");
    assert_eq!(swarm["lost"], serde_json::json!({"going_away": agents}), "each loss named by its kind");
    assert!(storm["redials"].as_u64().unwrap() >= agents as u64, "{swarm:#}");
    assert_eq!(std::fs::read_to_string(pki.dir.whitelist()).unwrap(), original, "the whitelist is as it was");
}
