//! The tunnel over a bad link: the stub in a namespace of its own behind `tether link` (5% loss
//! each way, 20 ms RTT), the agent and upstream here. Everything must arrive whole, over QUIC
//! and over the TCP fallback: 200 small GETs and a 20 MB transfer sharing the tunnel at the same
//! time. Needs root (CI is); elsewhere it prints why it skipped.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http_body_util::BodyExt;
use support::link::Link;
use support::upstream::{Upstream, pattern};
use support::{Pki, Proc, StubProc, front_client};

const SMALL_GETS: usize = 200;
const BULK: u64 = 20 * 1024 * 1024;
/// Generous: at 5% loss a loss-based congestion controller moves a few hundred KB/s.
const BULK_PATIENCE: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_5_percent_loss_and_20ms_rtt_small_gets_and_a_20mb_transfer_arrive_whole_over_quic() {
    lossy_run("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_5_percent_loss_and_20ms_rtt_small_gets_and_a_20mb_transfer_arrive_whole_over_tcp() {
    lossy_run("tcp").await;
}

async fn lossy_run(transport: &str) {
    let Some(link) = Link::start(5.0, "10ms", &[]).await else { return };
    let pki = Pki::with_stub_names(&[&link.clean_addr()]);
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let stub = StubProc::start_behind(&pki, &link, &["--audit-log", "off"]).await;
    let certs = pki.path().to_str().unwrap();
    let args = ["agent", "--certs", certs, "--cluster", "dev", "--name", "agent-0", "--stub", &stub.quic];
    let extra = ["--server-name", "localhost", "--upstream", &upstream.url(), "--transport", transport];
    let mut agent = Proc::spawn("agent", &[&args[..], &extra[..]].concat());
    agent.wait_for("connected to stub").await;
    let client = front_client(&pki, true);

    let bulk = {
        let client = client.clone();
        let url: http::Uri = format!("{}/clusters/dev/bytes/{BULK}", stub.url).parse().unwrap();
        tokio::spawn(async move {
            let started = Instant::now();
            let response = client.get(url).await.expect("bulk response");
            assert_eq!(response.status(), 200);
            let mut body = response.into_body();
            let mut offset = 0u64;
            while let Some(frame) = body.frame().await {
                let data = frame.expect("the bulk body arrives whole").into_data().unwrap_or_default();
                assert!(data.iter().enumerate().all(|(i, b)| *b == pattern(offset + i as u64)), "byte-exact");
                offset += data.len() as u64;
            }
            assert_eq!(offset, BULK);
            started.elapsed()
        })
    };

    let latencies: Vec<Duration> = futures_util::stream::iter(0..SMALL_GETS)
        .map(|i| {
            let client = client.clone();
            let url: http::Uri = format!("{}/clusters/dev/bytes/{}", stub.url, 100 + i).parse().unwrap();
            async move {
                let started = Instant::now();
                let response = client.get(url).await.unwrap_or_else(|e| panic!("small GET {i}: {e:?}"));
                assert_eq!(response.status(), 200, "small GET {i}");
                let body = response.into_body().collect().await.expect("whole small body").to_bytes();
                assert_eq!(body.len(), 100 + i);
                assert!(body.iter().enumerate().all(|(j, b)| *b == pattern(j as u64)));
                started.elapsed()
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let bulk_took = tokio::time::timeout(BULK_PATIENCE, bulk).await.expect("the bulk transfer finishes").unwrap();

    let mut sorted = latencies.clone();
    sorted.sort();
    eprintln!(
        "{transport} at 5% loss, 20 ms RTT: {SMALL_GETS} small GETs p50 {:?} p99 {:?}; 20 MB in {bulk_took:.1?} ({:.2} MB/s)",
        sorted[sorted.len() / 2],
        sorted[sorted.len() * 99 / 100],
        BULK as f64 / 1e6 / bulk_took.as_secs_f64()
    );
    assert_eq!(latencies.len(), SMALL_GETS);
}
