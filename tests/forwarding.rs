//! Forwarding through the tunnel to a real upstream HTTP server: methods and bodies byte-exact
//! over HTTP/1.1 and HTTP/2, a 256 MB download with bounded memory, streamed responses and
//! uploads, 1,000 concurrent requests on one agent connection, cancellation, upstream failures.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use support::upstream::{Upstream, pattern};
use support::{PATIENCE, Pki, StubProc, call, front_client, start_agent};

struct Tunnel {
    pki: Pki,
    upstream: Upstream,
    stub: StubProc,
    agent: support::Proc,
}

impl Tunnel {
    async fn start() -> Tunnel {
        Tunnel::start_with(&[]).await
    }

    /// A tunnel for cluster `dev`, with agents of `more_clusters` registered but not started.
    async fn start_with(more_clusters: &[&str]) -> Tunnel {
        let pki = Pki::new();
        pki.agent("dev", "agent-0");
        for cluster in more_clusters {
            pki.agent(cluster, "agent-0");
        }
        let upstream = Upstream::start().await;
        let stub = StubProc::start(&pki).await;
        let agent = start_agent(&pki, &stub, "dev", "agent-0", &upstream.url()).await;
        Tunnel { pki, upstream, stub, agent }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/clusters/dev{path}", self.stub.url)
    }
}

fn noise(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect()
}

#[tokio::test]
async fn methods_headers_and_bodies_arrive_byte_exact_over_http1_and_http2() {
    let t = Tunnel::start().await;
    for h2 in [false, true] {
        let client = front_client(&t.pki, h2);
        for (i, method) in ["GET", "POST", "PUT", "DELETE", "PATCH"].into_iter().enumerate() {
            let body = if method == "GET" { Vec::new() } else { noise(100_000 + i, i as u8) };
            let request = http::Request::builder()
                .method(method)
                .uri(t.url("/echo/x?watch=1&label=a%2Fb"))
                .header("x-test", format!("h2={h2}"))
                .body(tether::bridge::full(body.clone()))
                .unwrap();
            let response = client.request(request).await.unwrap();
            assert_eq!(response.status(), 200, "{method} h2={h2}");
            let headers = response.headers().clone();
            assert_eq!(headers["x-method"], method);
            assert_eq!(headers["x-uri"], "/echo/x?watch=1&label=a%2Fb", "prefix stripped, query kept");
            assert_eq!(headers["x-test-seen"], format!("h2={h2}").as_str());
            assert_eq!(headers["x-tether-request-id"].len(), 16);
            let got = response.into_body().collect().await.unwrap().to_bytes();
            assert!(got == body, "{method} h2={h2}: body differs ({} vs {} bytes)", got.len(), body.len());
        }
    }
    assert_eq!(t.upstream.requests(), 10);
}

/// Bound on the peak resident memory of the stub and of the agent while 256 MB pass through:
/// far below the size of the transfer, so a design that buffers bodies whole fails.
const MEMORY_BOUND: u64 = 96 * 1024 * 1024;

#[tokio::test]
async fn a_256_mb_download_streams_through_with_bounded_memory() {
    let t = Tunnel::start().await;
    let total: u64 = 256 * 1024 * 1024;
    let client = front_client(&t.pki, false);
    let response = client.get(t.url(&format!("/bytes/{total}")).parse().unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], total.to_string().as_str());
    let mut frames = std::pin::pin!(BodyStream::new(response.into_body()));
    let mut offset = 0u64;
    while let Some(frame) = frames.next().await {
        let Ok(data) = frame.unwrap().into_data() else { continue };
        for (i, byte) in data.iter().enumerate() {
            assert_eq!(*byte, pattern(offset + i as u64), "byte {} differs", offset + i as u64);
        }
        offset += data.len() as u64;
    }
    assert_eq!(offset, total);
    let (stub_peak, agent_peak) = (t.stub.proc.peak_rss(), t.agent.peak_rss());
    eprintln!("peak RSS: stub {} MiB, agent {} MiB", stub_peak >> 20, agent_peak >> 20);
    assert!(stub_peak < MEMORY_BOUND, "stub peaked at {} MiB", stub_peak >> 20);
    assert!(agent_peak < MEMORY_BOUND, "agent peaked at {} MiB", agent_peak >> 20);
}

#[tokio::test]
async fn a_chunked_response_reaches_the_client_event_by_event() {
    let t = Tunnel::start().await;
    for h2 in [false, true] {
        let client = front_client(&t.pki, h2);
        let response = client.get(t.url("/chunks").parse().unwrap()).await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        // The upstream holds its second event until released, so the first one can only be
        // here if the tunnel streamed it while the response was still open.
        let first = tokio::time::timeout(PATIENCE, body.frame()).await.expect("first event in time").unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"event-1\n"));
        t.upstream.seen.release.notify_one();
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, Bytes::from_static(b"event-2\n"));
    }
}

#[tokio::test]
async fn an_upload_streams_to_the_upstream_before_it_ends() {
    let t = Tunnel::start().await;
    for h2 in [false, true] {
        let client = front_client(&t.pki, h2);
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let frames = tokio_stream_from(rx);
        let request = http::Request::builder()
            .method("POST")
            .uri(t.url("/upload"))
            .body(StreamBody::new(frames).boxed_unsync())
            .unwrap();
        let pending = tokio::spawn(client.request(request));
        let mut expected = sha2::Sha256::default();
        let first = Bytes::from(noise(64 * 1024, 1));
        sha2::Digest::update(&mut expected, &first);
        tx.send(first).await.unwrap();
        // The rest of the body is not sent until the upstream has seen the beginning.
        tokio::time::timeout(PATIENCE, t.upstream.seen.upload_started.notified()).await.expect("upload streamed");
        let mut total = 64 * 1024;
        for i in 0..160u32 {
            let chunk = Bytes::from(noise(128 * 1024, i as u8));
            sha2::Digest::update(&mut expected, &chunk);
            total += chunk.len();
            tx.send(chunk).await.unwrap();
        }
        drop(tx);
        let response = pending.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        let summary = response.into_body().collect().await.unwrap().to_bytes();
        let want = format!("{total} {}", hex::encode(sha2::Digest::finalize(expected)));
        assert_eq!(std::str::from_utf8(&summary).unwrap(), want, "h2={h2}");
    }
}

fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> impl futures_util::Stream<Item = Result<hyper::body::Frame<Bytes>, tether::bridge::BoxError>> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok(hyper::body::Frame::data(chunk)), rx))
    })
}

#[tokio::test]
async fn a_thousand_concurrent_requests_share_one_agent_connection() {
    let t = Tunnel::start().await;
    let client = front_client(&t.pki, true);
    let requests = (0..1000).map(|i| {
        let client = client.clone();
        let url = t.url(&format!("/echo/{i}"));
        async move {
            let body = format!("request {i} ").repeat(50);
            let (status, headers, got) = call(&client, "POST", &url, body.clone()).await;
            assert_eq!(status, 200, "request {i}");
            assert_eq!(headers["x-uri"], format!("/echo/{i}").as_str());
            assert_eq!(got, Bytes::from(body), "request {i}");
        }
    });
    futures_util::stream::iter(requests).buffer_unordered(1000).collect::<Vec<()>>().await;
    assert_eq!(t.upstream.requests(), 1000);
    assert_eq!(t.agent.count("connected to stub"), 1, "all on one connection:\n{}", t.agent.log());
}

#[tokio::test]
async fn a_caller_that_goes_away_aborts_the_upstream_request() {
    let mut t = Tunnel::start().await;
    for (round, h2) in [false, true].into_iter().enumerate() {
        let client = front_client(&t.pki, h2);
        let response = client.get(t.url("/hold").parse().unwrap()).await.unwrap();
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, Bytes::from_static(b"held\n"));
        assert_eq!(t.upstream.seen.abandoned.load(Ordering::SeqCst), round, "still held");
        drop(body);
        drop(client);
        t.upstream.wait_abandoned(round + 1).await;
        assert_eq!(t.upstream.seen.abandoned.load(Ordering::SeqCst), round + 1, "h2={h2}");
    }
    t.agent.wait_for("stub stopped the response; upstream request aborted").await;

    // A caller that gives up before the upstream has even answered.
    let client = front_client(&t.pki, true);
    let request = client.get(t.url("/hold-head").parse().unwrap());
    let waiting = tokio::spawn(request);
    t.upstream.wait_requests(3).await;
    waiting.abort();
    drop(client);
    t.upstream.wait_abandoned(3).await;
    t.agent.wait_for("stub cancelled the request before the upstream answered").await;
}

#[tokio::test]
async fn upstream_failures_become_502_or_a_reset_and_the_connection_lives_on() {
    let t = Tunnel::start_with(&["broken", "idle"]).await;
    let client = front_client(&t.pki, false);

    // Mid-body failure: the client sees an error, never a short body presented as complete.
    let response = client.get(t.url("/truncate").parse().unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, Bytes::from_static(b"0123456789"));
    t.upstream.seen.release.notify_one();
    assert!(body.collect().await.is_err(), "a truncated body must fail, not look complete");

    // The same agent connection keeps serving.
    let (status, _, body) = call(&client, "POST", &t.url("/echo/after"), "still here").await;
    assert_eq!((status, body), (200, Bytes::from_static(b"still here")));
    assert_eq!(t.agent.count("connected to stub"), 1);

    // An API server the agent cannot reach: 502 with a Status body.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_upstream = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let _broken = start_agent(&t.pki, &t.stub, "broken", "agent-0", &dead_upstream).await;
    let (status, headers, body) = call(&client, "GET", &format!("{}/clusters/broken/api", t.stub.url), "").await;
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "application/json");
    let status_body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status_body["kind"], "Status");
    assert!(status_body["message"].as_str().unwrap().contains("could not reach its API server"), "{status_body}");

    // Unknown clusters and clusters without an agent: 503 naming which.
    let (status, _, body) = call(&client, "GET", &format!("{}/clusters/nowhere/api", t.stub.url), "").await;
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).contains(r#"cluster \"nowhere\" is not registered"#));
    let (status, _, body) = call(&client, "GET", &format!("{}/clusters/idle/api", t.stub.url), "").await;
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).contains(r#"no agent of cluster \"idle\" is connected"#));
}

#[tokio::test]
async fn requests_wait_for_nothing_after_the_agent_answers() {
    // A HEAD and a 204 carry no body; the tunnel must end them at once rather than wait.
    let t = Tunnel::start().await;
    let client = front_client(&t.pki, true);
    let (status, _, body) =
        tokio::time::timeout(Duration::from_secs(10), call(&client, "GET", &t.url("/status/204"), "")).await.unwrap();
    assert_eq!((status, body.len()), (204, 0));
    let (status, headers, body) = call(&client, "HEAD", &t.url("/bytes/1000"), "").await;
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(headers["content-length"], "1000");
}

#[tokio::test]
async fn one_request_can_be_followed_by_its_id_through_stub_and_agent_logs() {
    let mut t = Tunnel::start().await;
    let (status, headers, _) = call(&front_client(&t.pki, true), "GET", &t.url("/echo/follow-me"), "").await;
    assert_eq!(status, 200);
    let id = headers["x-tether-request-id"].to_str().unwrap().to_owned();
    // The same id in the request span of both processes' log lines, and in the audit line.
    let needle = format!("id={id}");
    let stub_line = t.stub.proc.wait_for(&needle).await;
    assert!(stub_line.contains("request{"), "{stub_line}");
    let agent_line = t.agent.wait_for(&needle).await;
    assert!(agent_line.contains("request{") && agent_line.contains("/echo/follow-me"), "{agent_line}");
    t.stub.proc.wait_for(&format!("\"request_id\":\"{id}\"")).await;
}
