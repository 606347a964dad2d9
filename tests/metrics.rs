//! The admin listeners: `/healthz`, `/readyz` and `/metrics` (Prometheus text) on stub and agent.
//! The metrics count what happened, by the labels an operator filters on: agents connected per
//! cluster and transport, requests by cluster and code, refusals by reason (front door and agent
//! handshakes), request durations, and link quality per QUIC agent connection.

mod support;

use std::time::Duration;

use support::admin::{admin_addr, admin_get, sample, scrape_until};
use support::upstream::Upstream;
use support::{Pki, StubProc, call, front_client, spawn_agent};

#[tokio::test]
async fn stub_and_agent_expose_health_and_metrics_that_count_what_happened() {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    pki.agent("dev", "agent-1");
    let stranger = pki.signer().issue_agent("dev", "stranger", tether::identity::certs::Validity::days(1)).unwrap();
    pki.install_agent("dev", "stranger", &stranger, None);
    let upstream = Upstream::start().await;
    let mut stub = StubProc::start_with(&pki, &["--admin-listen", "127.0.0.1:0", "--audit-log", "off"]).await;
    let stub_admin = admin_addr(&stub.proc.wait_for("admin listening").await);
    let mut quic_agent = spawn_agent(
        &pki,
        &stub,
        "dev",
        "agent-0",
        &upstream.url(),
        &["--admin-listen", "127.0.0.1:0", "--transport", "quic"],
    );
    let mut tcp_agent = spawn_agent(&pki, &stub, "dev", "agent-1", &upstream.url(), &["--transport", "tcp"]);
    quic_agent.wait_for("connected to stub").await;
    tcp_agent.wait_for("connected to stub").await;
    let agent_admin = admin_addr(&quic_agent.wait_for("admin listening").await);
    let mut refused = spawn_agent(&pki, &stub, "dev", "stranger", &upstream.url(), &["--transport", "quic"]);
    refused.wait_for("certificate not in the stub's whitelist").await;
    drop(refused);

    assert_eq!(admin_get(&stub_admin, "/healthz").await.0, 200);
    assert_eq!(admin_get(&stub_admin, "/readyz").await.0, 200);
    assert_eq!(admin_get(&agent_admin, "/readyz").await.0, 200);

    let client = front_client(&pki, true);
    for i in 0..6 {
        assert_eq!(call(&client, "GET", &format!("{}/clusters/dev/echo/{i}", stub.url), "").await.0, 200);
    }
    let stranger_client = client.with_token(Some("not-a-token".into()));
    assert_eq!(call(&stranger_client, "GET", &format!("{}/clusters/dev/echo", stub.url), "").await.0, 401);
    let dev_only = client.with_token(Some(pki.token("dora", &[], &["dev"])));
    assert_eq!(call(&dev_only, "GET", &format!("{}/clusters/prod/echo", stub.url), "").await.0, 403);

    let metrics = scrape_until(&stub_admin, "six 200s of cluster dev", |m| {
        sample(m, r#"tether_requests_total{cluster="dev",code="200"}"#) == Some(6.0)
    })
    .await;
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&metrics, series), Some(value), "{series} in:\n{metrics}");
    };
    expect(r#"tether_agents_connected{cluster="dev",transport="quic"}"#, 1.0);
    expect(r#"tether_agents_connected{cluster="dev",transport="tcp"}"#, 1.0);
    expect(r#"tether_refusals_total{reason="bad_token"}"#, 1.0);
    expect(r#"tether_refusals_total{reason="cluster_not_allowed"}"#, 1.0);
    // An unauthenticated request never labels metrics with the cluster it named.
    expect(r#"tether_requests_total{cluster="unknown",code="401"}"#, 1.0);
    expect(r#"tether_request_duration_seconds_count{cluster="dev"}"#, 6.0);
    expect(r#"tether_request_duration_seconds_bucket{cluster="dev",le="+Inf"}"#, 6.0);
    assert!(sample(&metrics, r#"tether_agent_refusals_total{reason="whitelist"}"#).unwrap_or(0.0) >= 1.0, "{metrics}");
    let rtt_line = metrics.lines().find(|l| l.starts_with(r#"tether_link_rtt_seconds{cluster="dev",agent="agent-0""#));
    let rtt: f64 = rtt_line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).expect("link RTT of the QUIC agent");
    assert!(rtt > 0.0 && rtt < 1.0, "{rtt}");

    let agent_metrics = admin_get(&agent_admin, "/metrics").await.1;
    assert_eq!(sample(&agent_metrics, r#"tether_agent_connected{transport="quic"}"#), Some(1.0), "{agent_metrics}");
    let answered = sample(&agent_metrics, r#"tether_agent_requests_total{code="200"}"#).unwrap_or(0.0);
    assert!((1.0..=6.0).contains(&answered), "agent-0 answered its share of the six: {agent_metrics}");
    assert!(agent_metrics.contains("tether_agent_upstream_seconds_bucket{le=\"+Inf\"}"), "{agent_metrics}");
}

/// CPU time the process has used so far (user and system).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

#[tokio::test]
async fn out_of_file_descriptors_the_admin_listener_pauses_instead_of_spinning_and_recovers() {
    let pki = Pki::new();
    let certs = pki.path().to_str().unwrap();
    let args = ["stub", "--certs", certs, "--quic-listen", "127.0.0.1:0", "--https-listen", "127.0.0.1:0"];
    let admin_args = ["--admin-listen", "127.0.0.1:0", "--audit-log", "off"];
    let mut stub = support::Proc::spawn_with_file_limit("stub", &[&args[..], &admin_args[..]].concat(), 64);
    let admin = admin_addr(&stub.wait_for("admin listening").await);
    // Connections that never send a request: each one the stub accepts holds a descriptor, and
    // the rest wait in the kernel's queue, so `accept` fails with EMFILE again and again.
    let mut held = Vec::new();
    for _ in 0..128 {
        held.push(tokio::net::TcpStream::connect(&admin).await.unwrap());
    }
    stub.wait_for("accept failed; pausing").await;
    let (before, since) = (cpu_time(stub.pid()), std::time::Instant::now());
    // A window to measure over, not a wait for anything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let share = (cpu_time(stub.pid()) - before).as_secs_f64() / since.elapsed().as_secs_f64();
    assert!(share < 0.25, "the stub used {:.0}% of a core while accept kept failing", share * 100.0);
    // Descriptors free again: the queued connections are taken, and /healthz answers.
    drop(held);
    let answered = tokio::time::timeout(support::PATIENCE, admin_get(&admin, "/healthz")).await;
    assert_eq!(answered.expect("/healthz answers once descriptors are free"), (200, "ok\n".to_owned()));
}
