//! Dead peers noticed from the traffic, at the default timeouts: two agent replicas under steady
//! GET load, one killed with `kill -9` (or frozen with SIGSTOP, over the TCP fallback): no
//! request that had not started on it fails, and none waits more than about 2 s (without the
//! liveness watch they waited for the idle timeout, 5 s and more). And the other side of the
//! coin: on a link with 5% loss and 20 ms RTT, slow requests (long silences while the upstream
//! thinks) never make the stub suspect a live agent.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use support::link::Link;
use support::load::{start_load, stop_load};
use support::upstream::Upstream;
use support::{Pki, Proc, StubProc, front_client, spawn_agent};

/// What "no request stalls more than about 2 s" is held to.
const MAX_STALL: Duration = Duration::from_secs(2);

async fn two_replicas(transport: &str) -> (Pki, Upstream, StubProc, Vec<Proc>) {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    pki.agent("dev", "agent-1");
    let upstream = Upstream::start().await;
    let stub = StubProc::start_with(&pki, &["--audit-log", "off"]).await;
    let mut agents: Vec<Proc> = ["agent-0", "agent-1"]
        .iter()
        .map(|name| spawn_agent(&pki, &stub, "dev", name, &upstream.url(), &["--transport", transport]))
        .collect();
    for a in &mut agents {
        a.wait_for("connected to stub").await;
    }
    (pki, upstream, stub, agents)
}

/// Steady GETs; `fault` hits agent-0; then the load must go on with nothing failed and no
/// request slower than [`MAX_STALL`].
async fn no_stall_when(transport: &str, fault: &str) {
    let (pki, _upstream, mut stub, agents) = two_replicas(transport).await;
    let (outcomes, load) = start_load(&pki, &stub, 6, false);
    outcomes.wait_ok(100).await;
    outcomes.reset_slowest();
    agents[0].signal(fault);
    // The connection's own suspicion (its span names the agent), not a request's retry line,
    // which may be logged first.
    let line = stub.proc.wait_for("agent connection silent: routing around it").await;
    assert!(line.contains("name=agent-0"), "{line}");
    let before = outcomes.ok.load(Ordering::SeqCst);
    outcomes.wait_ok(before + 300).await;
    stop_load(&outcomes, load).await;
    let errors = outcomes.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "{} requests failed without having started: {errors:#?}", errors.len());
    let (slowest, which) = outcomes.slowest.lock().unwrap().clone();
    let retried = stub.proc.count("retrying on another connection");
    eprintln!(
        "{transport}, SIG{fault}: slowest request {slowest:?} ({which}); {} ok, {} cut after their response started, {retried} retried",
        outcomes.ok.load(Ordering::SeqCst),
        outcomes.cut.load(Ordering::SeqCst),
    );
    assert!(slowest <= MAX_STALL, "a request waited {slowest:?} ({which}) after agent-0 died");
    assert!(retried >= 1, "the reads waiting on the dead agent were sent again:\n{}", stub.proc.log());
    if fault == "STOP" {
        agents[0].signal("CONT");
    }
}

#[tokio::test]
async fn kill_9_of_a_replica_stalls_no_request_more_than_about_2_seconds() {
    no_stall_when("quic", "KILL").await;
}

#[tokio::test]
async fn a_frozen_replica_over_the_tcp_fallback_stalls_no_request_more_than_about_2_seconds() {
    no_stall_when("tcp", "STOP").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_5_percent_loss_and_20ms_rtt_slow_requests_raise_no_false_alarm() {
    let Some(link) = Link::start(5.0, "10ms", &[]).await else { return };
    let pki = Pki::with_stub_names(&[&link.clean_addr()]);
    pki.agent("dev", "agent-0");
    pki.agent("dev", "agent-1");
    let upstream = Upstream::start().await;
    let stub = StubProc::start_behind(&pki, &link, &["--audit-log", "off"]).await;
    let certs = pki.path().to_str().unwrap();
    let mut agents: Vec<Proc> = ["agent-0", "agent-1"]
        .iter()
        .map(|name| {
            let args = ["agent", "--certs", certs, "--cluster", "dev", "--name", name, "--stub", &stub.quic];
            let extra = ["--server-name", "localhost", "--upstream", &upstream.url()];
            Proc::spawn(name, &[&args[..], &extra[..]].concat())
        })
        .collect();
    for a in &mut agents {
        a.wait_for("connected to stub").await;
    }
    let client = front_client(&pki, true);
    // Each request waits 1.5 s for its answer, in silence: the stub probes the agent about six
    // times in each, and would call a live agent silent if a few lost packets could make it so.
    let requests = 120;
    let statuses: Vec<u16> = futures_util::stream::iter(0..requests)
        .map(|i| {
            let client = client.clone();
            let url: http::Uri = format!("{}/clusters/dev/delay/1500?i={i}", stub.url).parse().unwrap();
            async move { client.get(url).await.map(|r| r.status().as_u16()).unwrap_or(0) }
        })
        .buffer_unordered(12)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "every slow request answered: {statuses:?}");
    let (suspected, probes) = (stub.proc.count("agent connection silent"), requests * 6);
    eprintln!("{requests} requests of 1.5 s at 5% loss (about {probes} probes): {suspected} suspicions");
    assert_eq!(suspected, 0, "no live agent was suspected:\n{}", stub.proc.log());
    assert_eq!(stub.proc.count("retrying on another connection"), 0, "{}", stub.proc.log());
}
