//! One user never blocks another. alice, with an ordinary token, starts more large downloads
//! than her unread limit allows and reads none of them; bob's GETs on the same cluster, through
//! the same agent connections, keep being answered at once. Over HTTP/2 (all of alice's
//! downloads on one connection) and HTTP/1.1 (one connection each), with one agent and with two.
//!
//! alice's limit here (ten per agent connection) is above what a connection's shared window can
//! hold (16 MiB: eight unread responses of 2 MiB): without the window that each held response is
//! granted, her unread responses fill the shared window and bob gets no response head at all
//! until the stalled-reader timeout (checked: bob's first GET then times out in every variant).

mod support;

use std::time::{Duration, Instant};

use support::upstream::Upstream;
use support::{Pki, StubProc, front_client_with, spawn_agent};

/// alice's limit of unread responses per agent connection: more than fill its shared window.
const UNREAD_LIMIT_PER_AGENT: usize = 10;
/// Downloads alice starts beyond her limit.
const OVER_LIMIT: usize = 8;
/// What bob may wait for one GET: "about 2 s".
const BOB_PATIENCE: Duration = Duration::from_secs(2);

async fn one_user_never_blocks_another(h2: bool, replicas: usize) {
    let pki = Pki::new();
    let upstream = Upstream::start().await;
    let limit = UNREAD_LIMIT_PER_AGENT * replicas;
    let args = ["--audit-log", "off", "--max-unread-per-user", &limit.to_string()];
    let mut stub = StubProc::start_with(&pki, &args).await;
    let mut agents = Vec::new();
    for i in 0..replicas {
        let name = format!("agent-{i}");
        pki.agent("dev", &name);
        let mut agent = spawn_agent(&pki, &stub, "dev", &name, &upstream.url(), &[]);
        agent.wait_for("connected to stub").await;
        agents.push(agent);
    }
    let alice = front_client_with(&pki, h2, None, Some(pki.token("alice", &[], &["dev"])));
    let bob = front_client_with(&pki, h2, None, Some(pki.token("bob", &[], &["dev"])));

    // alice's downloads, each held (unread) by a task of its own until the test ends. Their
    // heads are not awaited here: without isolation they may never come.
    let downloads = limit + OVER_LIMIT;
    let mut held = Vec::new();
    for _ in 0..downloads {
        let request = alice.get(format!("{}/clusters/dev/bytes/{}", stub.url, 1u64 << 30).parse().unwrap());
        held.push(tokio::spawn(async move {
            let response = request.await;
            std::future::pending::<()>().await;
            drop(response);
        }));
    }
    let sent = upstream.bytes_sent_when_settled().await;

    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        let url = format!("{}/clusters/dev/echo/{i}", stub.url);
        let get = support::call(&bob, "GET", &url, "");
        let (status, _, _) = tokio::time::timeout(BOB_PATIENCE * 2, get).await.unwrap_or_else(|_| {
            panic!("bob's GET {i} got no answer within {:?} while alice holds her downloads", BOB_PATIENCE * 2)
        });
        assert_eq!(status, 200, "bob's GET {i}");
        slowest = slowest.max(started.elapsed());
    }
    let dropped = stub.proc.count("dropped a response its caller leaves unread");
    eprintln!(
        "{} with {replicas} agent(s): alice holds {downloads} unread downloads ({} MiB sent by the upstream, \
         {dropped} dropped over her limit); bob's slowest of 20 GETs: {slowest:.1?}",
        if h2 { "HTTP/2" } else { "HTTP/1.1" },
        sent >> 20
    );
    assert!(slowest < BOB_PATIENCE, "bob waited {slowest:?} for a GET");
    // alice kept what her limit allows; the rest went.
    stub.proc.wait_for_count("dropped a response its caller leaves unread", OVER_LIMIT).await;
    assert_eq!(stub.proc.count("dropped a response its caller leaves unread"), OVER_LIMIT);
    for task in held {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_with_one_agent() {
    one_user_never_blocks_another(true, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_with_two_agents() {
    one_user_never_blocks_another(true, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http1_with_one_agent() {
    one_user_never_blocks_another(false, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http1_with_two_agents() {
    one_user_never_blocks_another(false, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_connection_holds_no_more_unread_responses_than_its_limit() {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let args = ["--audit-log", "off", "--max-unread-per-user", "0", "--max-unread-per-agent", "4"];
    let mut stub = StubProc::start_with(&pki, &args).await;
    let mut agent = spawn_agent(&pki, &stub, "dev", "agent-0", &upstream.url(), &[]);
    agent.wait_for("connected to stub").await;
    // Two users, each below any per-user limit, together beyond the connection's.
    let mut held = Vec::new();
    for user in ["alice", "carol"] {
        let client = front_client_with(&pki, true, None, Some(pki.token(user, &[], &["dev"])));
        for _ in 0..3 {
            let response = client.get(format!("{}/clusters/dev/bytes/{}", stub.url, 1u64 << 30).parse().unwrap());
            held.push(response.await.unwrap());
        }
    }
    stub.proc.wait_for_count("the agent connection holds as many unread responses as allowed", 2).await;
    upstream.bytes_sent_when_settled().await;
    assert_eq!(stub.proc.count("the agent connection holds as many unread responses as allowed"), 2);
    drop(held);
}
