//! Two replicas that never drop a request: under steady load, a rolling SIGTERM restart of both
//! agents fails nothing (drain: the stub routes nothing new to a draining agent, which finishes
//! what it has); `kill -9` of one loses no request that had not started on it (idempotent ones
//! whose stream died before any response byte are retried on the other replica); a frozen
//! replica (SIGSTOP) is noticed within the idle timeout.

mod support;

use std::sync::atomic::Ordering;

use http_body_util::BodyExt;

use support::load::{start_load, stop_load};
use support::upstream::Upstream;
use support::{Pki, Proc, StubProc, front_client, spawn_agent};

/// A short idle timeout, so that dead peers are found quickly in these tests.
const IDLE: &str = "2s";

fn agent(pki: &Pki, stub: &StubProc, name: &str, upstream: &Upstream) -> Proc {
    spawn_agent(pki, stub, "dev", name, &upstream.url(), &["--idle-timeout", IDLE])
}

struct Pair {
    pki: Pki,
    upstream: Upstream,
    stub: StubProc,
    agents: Vec<Proc>,
}

async fn pair() -> Pair {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    pki.agent("dev", "agent-1");
    let upstream = Upstream::start().await;
    let stub = StubProc::start_with(&pki, &["--idle-timeout", IDLE, "--audit-log", "off"]).await;
    let mut agents = vec![agent(&pki, &stub, "agent-0", &upstream), agent(&pki, &stub, "agent-1", &upstream)];
    for a in &mut agents {
        a.wait_for("connected to stub").await;
    }
    Pair { pki, upstream, stub, agents }
}

#[tokio::test]
async fn a_rolling_sigterm_restart_of_both_replicas_fails_no_request() {
    let mut p = pair().await;
    let (outcomes, load) = start_load(&p.pki, &p.stub, 6, true);
    outcomes.wait_ok(50).await;
    for i in 0..2 {
        let name = format!("agent-{i}");
        p.agents[i].signal("TERM");
        let status = p.agents[i].wait_exit().await;
        assert!(status.success(), "{name} exits cleanly after draining: {status}");
        assert_eq!(p.agents[i].count("drained: no new requests"), 1, "{}", p.agents[i].log());
        p.agents[i] = agent(&p.pki, &p.stub, &name, &p.upstream);
        p.agents[i].wait_for("connected to stub").await;
        outcomes.wait_more(50).await;
    }
    stop_load(&outcomes, load).await;
    outcomes.assert_all_served();
    assert!(outcomes.ok.load(Ordering::SeqCst) >= 150);
    assert_eq!(p.stub.proc.count("agent draining: routing nothing new to it"), 2);
}

#[tokio::test]
async fn kill_9_of_one_replica_loses_no_request_that_had_not_started_on_it() {
    let mut p = pair().await;
    let (outcomes, load) = start_load(&p.pki, &p.stub, 6, false);
    outcomes.wait_ok(50).await;
    p.agents[0].signal("KILL");
    // The stub notices the silent peer within the idle timeout; until then, requests sent to it
    // wait, and are then retried on agent-1.
    p.stub.proc.wait_for("agent disconnected").await;
    let before = outcomes.ok.load(Ordering::SeqCst);
    outcomes.wait_ok(before + 100).await;
    stop_load(&outcomes, load).await;
    let errors = outcomes.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "{} requests failed without having started: {errors:#?}", errors.len());
    eprintln!(
        "ok {}, cut after their response started {}, retried {}",
        outcomes.ok.load(Ordering::SeqCst),
        outcomes.cut.load(Ordering::SeqCst),
        p.stub.proc.count("retrying on another connection")
    );
}

#[tokio::test]
async fn a_frozen_replica_is_noticed_within_the_idle_timeout() {
    let mut p = pair().await;
    p.agents[0].signal("STOP");
    let line = p.stub.proc.wait_for("agent disconnected").await;
    assert!(line.contains("name=agent-0") && line.contains("timed out"), "{line}");
    // Requests go to the live replica.
    let client = front_client(&p.pki, false);
    for i in 0..20 {
        let (status, _, _) = support::call(&client, "GET", &format!("{}/clusters/dev/echo/{i}", p.stub.url), "").await;
        assert_eq!(status, 200);
    }
    p.agents[0].signal("CONT");
}

#[tokio::test]
async fn a_stub_restart_heals_without_manual_action() {
    let mut p = pair().await;
    let (quic, https) = (p.stub.quic.clone(), p.stub.url.trim_start_matches("https://").to_owned());
    p.stub.proc.signal("TERM");
    assert!(p.stub.proc.wait_exit().await.success());
    for a in &mut p.agents {
        a.wait_for("peer is going away").await;
    }
    // The same addresses, as a restarted stub behind a fixed address would have.
    p.stub = StubProc::start_at(&p.pki, &quic, &https, &["--idle-timeout", IDLE, "--audit-log", "off"]).await;
    for a in &mut p.agents {
        a.wait_for_count("connected to stub", 2).await;
    }
    let client = front_client(&p.pki, false);
    let (status, _, _) = support::call(&client, "GET", &format!("{}/clusters/dev/echo", p.stub.url), "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_watch_survives_the_agent_moving_to_a_new_udp_socket() {
    let mut p = pair().await;
    // Only agent-0, so the watch certainly runs on the agent that moves.
    p.agents.truncate(1);
    let client = front_client(&p.pki, false);
    let response = client.get(format!("{}/clusters/dev/chunks", p.stub.url).parse().unwrap()).await.unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, bytes::Bytes::from_static(b"event-1\n"));

    p.agents[0].signal("USR1");
    p.agents[0].wait_for("rebound UDP socket").await;
    // The next event crosses the migrated path on the same stream.
    p.upstream.seen.release.notify_one();
    let rest = body.collect().await.expect("the watch outlives the move").to_bytes();
    assert_eq!(rest, bytes::Bytes::from_static(b"event-2\n"));
    assert_eq!(p.agents[0].count("connected to stub"), 1, "the same connection throughout");
    let (status, _, _) = support::call(&client, "GET", &format!("{}/clusters/dev/echo", p.stub.url), "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_agent_is_ready_only_while_connected() {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let stub = StubProc::start(&pki).await;
    let mut agent = spawn_agent(&pki, &stub, "dev", "agent-0", &upstream.url(), &["--admin-listen", "127.0.0.1:0"]);
    let line = agent.wait_for("admin listening").await;
    let admin = line.split("admin=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    agent.wait_for("connected to stub").await;
    let probe = |path: &'static str| {
        let url = format!("http://{admin}{path}");
        async move {
            let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<tether::bridge::Body>();
            client.get(url.parse().unwrap()).await.unwrap().status().as_u16()
        }
    };
    assert_eq!(probe("/healthz").await, 200);
    assert_eq!(probe("/readyz").await, 200);
    stub.proc.signal("TERM");
    agent.wait_for("peer is going away").await;
    assert_eq!(probe("/readyz").await, 503, "not ready without a stub");
    assert_eq!(probe("/healthz").await, 200, "but alive");
}
