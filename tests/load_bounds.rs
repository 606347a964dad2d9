//! What one agent connection carries, and what it may cost: 10,000 concurrent watches stay open
//! on one connection and each receives its events; quiet watches outlive several idle timeouts;
//! clients that never read their responses make neither the stub nor the agent buffer without
//! bound, because flow control pushes back all the way to the upstream, and the connection keeps
//! serving everyone else meanwhile.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use support::upstream::Upstream;
use support::{Pki, Proc, StubProc, front_client, spawn_agent};

/// Bounds the waits of the 10,000-watch test: on 2 busy cores (the other tests of this file run
/// beside it) opening them all can take far longer than the usual patience.
const SCALE_PATIENCE: Duration = Duration::from_secs(120);

/// Counts watches that have seen an event, and wakes the test when that changes.
#[derive(Default)]
struct Progress {
    saw: [AtomicUsize; 2],
    failed: AtomicUsize,
    changed: tokio::sync::Notify,
}

impl Progress {
    async fn wait(&self, event: usize, n: usize) {
        let deadline = tokio::time::Instant::now() + SCALE_PATIENCE;
        loop {
            let notified = self.changed.notified();
            assert_eq!(self.failed.load(Ordering::SeqCst), 0, "a watch failed");
            if self.saw[event].load(Ordering::SeqCst) >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("only {} of {n} watches saw event {}", self.saw[event].load(Ordering::SeqCst), event + 1);
            }
        }
    }

    fn note(&self, event: usize) {
        self.saw[event].fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn fail(&self) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

/// Reads `body` until it has seen `event-1` and `event-2`, counting each in `progress`.
async fn follow(mut body: hyper::body::Incoming, progress: Arc<Progress>) {
    let mut text = String::new();
    let mut next = 0;
    while next < 2 {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    text.push_str(std::str::from_utf8(&data).unwrap());
                }
            }
            _ => return progress.fail(),
        }
        while next < 2 && text.contains(&format!("event-{}\n", next + 1)) {
            progress.note(next);
            next += 1;
        }
    }
}

/// `n` watches through one stub and one agent (both given `transport_args`), open at the
/// upstream and each having seen the first event.
struct Watches {
    n: usize,
    upstream: Upstream,
    stub: StubProc,
    agent: Proc,
    progress: Arc<Progress>,
    _pki: Pki,
}

impl Watches {
    async fn open(n: usize, transport_args: &[&str]) -> Watches {
        // The front door allows 1,000 streams per HTTP/2 connection.
        let clients = n.div_ceil(900);
        let pki = Pki::new();
        pki.agent("dev", "agent-0");
        let upstream = Upstream::start().await;
        let args = [&["--audit-log", "off", "--max-requests-per-user", "0"][..], transport_args].concat();
        let stub = StubProc::start_with(&pki, &args).await;
        let mut agent = spawn_agent(&pki, &stub, "dev", "agent-0", &upstream.url(), transport_args);
        agent.wait_for("connected to stub").await;

        let progress = Arc::new(Progress::default());
        let clients: Vec<_> = (0..clients).map(|_| front_client(&pki, true)).collect();
        let url: http::Uri = format!("{}/clusters/dev/watch?watch=true", stub.url).parse().unwrap();
        for i in 0..n {
            let (client, url, progress) = (clients[i % clients.len()].clone(), url.clone(), progress.clone());
            tokio::spawn(async move {
                match client.get(url).await {
                    Ok(response) if response.status() == 200 => follow(response.into_body(), progress).await,
                    other => {
                        eprintln!("watch {i}: {other:?}");
                        progress.fail();
                    }
                }
            });
        }
        upstream.wait_watching(n, SCALE_PATIENCE).await;
        upstream.send_event();
        progress.wait(0, n).await;
        Watches { n, upstream, stub, agent, progress, _pki: pki }
    }

    /// Every watch is still open at the upstream and sees the second event; all of it went
    /// over the agent's one connection.
    async fn all_see_the_second_event(&self) {
        assert_eq!(self.upstream.watching(), self.n, "every watch is still open at the upstream");
        self.upstream.send_event();
        self.progress.wait(1, self.n).await;
        assert_eq!(self.agent.count("connected to stub"), 1, "all of it on one agent connection");
    }
}

/// At the default idle timeout: how many watches one connection carries is the claim here;
/// how long a quiet one lives is the next test's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_watches_share_one_agent_connection_and_each_gets_its_events() {
    const WATCHES: usize = 10_000;
    // The upstream (in this process) holds one socket per watch, and so does the agent.
    let (open_files, hard) = tether::fd_limit::raise_to_hard_limit().unwrap();
    assert!(
        open_files >= WATCHES as u64 + 1000,
        "this test needs {} open files per process; the hard limit is {hard} (raise `ulimit -Hn`)",
        WATCHES + 1000
    );
    let watches = Watches::open(WATCHES, &[]).await;
    watches.all_see_the_second_event().await;
    eprintln!(
        "{WATCHES} watches: peak RSS stub {} MiB, agent {} MiB",
        watches.stub.proc.peak_rss() >> 20,
        watches.agent.peak_rss() >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_watches_outlive_several_idle_timeouts() {
    // Short, so that the quiet time spans several keep-alive rounds.
    const IDLE: Duration = Duration::from_secs(1);
    let idle = format!("{}ms", IDLE.as_millis());
    let watches = Watches::open(200, &["--idle-timeout", &idle]).await;
    // The thing under test, not a synchronisation: the watches stay quiet for three idle
    // timeouts. QUIC keep-alives, and the agent's echoes while requests are open, hold the
    // connection; nothing times the streams out. (A connection that times out fails this.)
    tokio::time::sleep(IDLE * 3).await;
    watches.all_see_the_second_event().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_do_not_grow_stub_or_agent_memory() {
    const SLOW_READERS: usize = 4;
    const SIZE: u64 = 1 << 30;
    /// Per stalled response: QUIC stream window (2 MiB) plus socket and HTTP buffers on the way.
    const SENT_BOUND_EACH: u64 = 32 << 20;
    const MEMORY_BOUND: u64 = 96 << 20;
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let stub = StubProc::start_with(&pki, &["--audit-log", "off"]).await;
    let mut agent = spawn_agent(&pki, &stub, "dev", "agent-0", &upstream.url(), &[]);
    agent.wait_for("connected to stub").await;

    // Half over HTTP/1.1, half over HTTP/2, each client its own connection; none reads a byte.
    let mut stalled = Vec::new();
    for i in 0..SLOW_READERS {
        let client = front_client(&pki, i % 2 == 0);
        let response = client.get(format!("{}/clusters/dev/bytes/{SIZE}", stub.url).parse().unwrap()).await.unwrap();
        assert_eq!(response.status(), 200);
        stalled.push((client, response));
    }
    let sent = upstream.bytes_sent_when_settled().await;
    eprintln!("{SLOW_READERS} clients that never read: the upstream stopped after {} MiB", sent >> 20);
    assert!(sent < SLOW_READERS as u64 * SENT_BOUND_EACH, "the upstream sent {} MiB", sent >> 20);

    // The same agent connection still serves others in full.
    let client = front_client(&pki, true);
    let body = client
        .get(format!("{}/clusters/dev/bytes/{}", stub.url, 4 << 20).parse().unwrap())
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body.len(), 4 << 20);
    assert!(body.iter().enumerate().all(|(i, b)| *b == support::upstream::pattern(i as u64)));

    let (stub_peak, agent_peak) = (stub.proc.peak_rss(), agent.peak_rss());
    eprintln!("peak RSS with stalled readers: stub {} MiB, agent {} MiB", stub_peak >> 20, agent_peak >> 20);
    assert!(stub_peak < MEMORY_BOUND, "stub peaked at {} MiB", stub_peak >> 20);
    assert!(agent_peak < MEMORY_BOUND, "agent peaked at {} MiB", agent_peak >> 20);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_left_unread_past_the_stalled_reader_timeout_are_dropped() {
    // Twelve unread responses, each given a window of its own (no unread limits here): the
    // connection serves others meanwhile, and the timeout drops every one of them.
    const SLOW_READERS: usize = 12;
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let timeout = std::env::var("TETHER_TEST_STALLED_TIMEOUT").unwrap_or_else(|_| "2s".into());
    let unlimited = ["--max-unread-per-user", "0", "--max-unread-per-agent", "0"];
    let args = [&["--audit-log", "off", "--stalled-reader-timeout", &timeout][..], &unlimited[..]].concat();
    let mut stub = StubProc::start_with(&pki, &args).await;
    let mut agent = spawn_agent(&pki, &stub, "dev", "agent-0", &upstream.url(), &[]);
    agent.wait_for("connected to stub").await;

    let mut stalled = Vec::new();
    for i in 0..SLOW_READERS {
        let client = front_client(&pki, i % 2 == 0);
        let request = client.get(format!("{}/clusters/dev/bytes/{}", stub.url, 1u64 << 30).parse().unwrap());
        let response = tokio::time::timeout(support::PATIENCE, request).await.expect("a response head arrives");
        assert_eq!(response.as_ref().unwrap().status(), 200);
        stalled.push((client, response));
    }
    let started = tokio::time::Instant::now();
    let client = front_client(&pki, true);
    let download = async {
        let response = client.get(format!("{}/clusters/dev/bytes/{}", stub.url, 4 << 20).parse().unwrap()).await;
        response.unwrap().into_body().collect().await.unwrap().to_bytes()
    };
    let body = tokio::time::timeout(support::PATIENCE, download).await.expect("the agent connection is not stuck");
    assert_eq!(body.len(), 4 << 20);
    assert!(body.iter().enumerate().all(|(i, b)| *b == support::upstream::pattern(i as u64)));
    eprintln!(
        "served after {:.1?}, with {} unread responses dropped so far",
        started.elapsed(),
        stub.proc.count("the caller stopped reading its response")
    );
    // Every unread response goes, and its caller sees an error, not a short body presented as
    // whole.
    stub.proc.wait_for_count("the caller stopped reading its response", SLOW_READERS).await;
    for (_, response) in stalled {
        assert!(response.unwrap().into_body().collect().await.is_err());
    }
}
