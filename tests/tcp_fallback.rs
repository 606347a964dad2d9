//! The TCP fallback (TLS 1.3 on the stub's QUIC port over TCP, HTTP/2 streams): the same
//! forwarding, refusals, drain and revocation as over QUIC; and `--transport auto` moving to TCP
//! when UDP is blocked, then back to QUIC once UDP works again.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::BodyExt;
use support::load::{start_load, stop_load};
use support::upstream::{Upstream, pattern};
use support::{Pki, Proc, StubProc, call, front_client, spawn_agent};

fn tcp_agent(pki: &Pki, stub: &StubProc, name: &str, upstream: &Upstream) -> Proc {
    spawn_agent(pki, stub, "dev", name, &upstream.url(), &["--transport", "tcp", "--idle-timeout", "2s"])
}

#[tokio::test]
async fn over_tcp_requests_arrive_byte_exact_and_cancellation_reaches_the_upstream() {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let stub = StubProc::start_with(&pki, &["--audit-log", "off"]).await;
    let mut agent = tcp_agent(&pki, &stub, "agent-0", &upstream);
    let line = agent.wait_for("connected to stub").await;
    assert!(line.contains("transport=tcp"), "{line}");

    for h2 in [false, true] {
        let client = front_client(&pki, h2);
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        let (status, headers, echoed) =
            call(&client, "POST", &format!("{}/clusters/dev/echo/a?b=c", stub.url), body.clone()).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-uri"], "/echo/a?b=c");
        assert_eq!(echoed, body, "the body crossed byte-exact (h2 client: {h2})");
    }
    // A download larger than every window, checked byte by byte.
    let client = front_client(&pki, true);
    let size = 32u64 << 20;
    let (status, _, got) = call(&client, "GET", &format!("{}/clusters/dev/bytes/{size}", stub.url), "").await;
    assert_eq!(status, 200);
    assert_eq!(got.len() as u64, size);
    assert!(got.iter().enumerate().all(|(i, b)| *b == pattern(i as u64)));

    // Many at once share the one TCP connection.
    let requests = (0..300).map(|i| {
        let client = client.clone();
        let url = format!("{}/clusters/dev/echo/{i}", stub.url);
        async move { call(&client, "GET", &url, "").await.0 }
    });
    assert!(futures_util::future::join_all(requests).await.iter().all(|s| *s == 200));

    // A caller that goes away: the upstream's held response is abandoned.
    let held = client.get(format!("{}/clusters/dev/hold", stub.url).parse().unwrap()).await.unwrap();
    let mut body = held.into_body();
    assert!(body.frame().await.is_some(), "the first bytes arrive");
    drop(body);
    upstream.wait_abandoned(1).await;
}

#[tokio::test]
async fn over_tcp_an_agent_outside_the_whitelist_is_refused_and_removal_cuts_it_off() {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let registered = std::fs::read_to_string(pki.dir.whitelist()).unwrap();
    // A certificate from the right CA whose fingerprint is not listed.
    let stranger = pki.signer().issue_agent("dev", "stranger", tether::identity::certs::Validity::days(1)).unwrap();
    pki.install_agent("dev", "stranger", &stranger, None);
    let upstream = Upstream::start().await;
    let mut stub = StubProc::start(&pki).await;
    let mut refused = tcp_agent(&pki, &stub, "stranger", &upstream);
    refused.wait_for("certificate not in the stub's whitelist").await;
    stub.proc.wait_for(&stranger.fingerprint.to_string()).await;
    assert_eq!(call(&front_client(&pki, false), "GET", &format!("{}/clusters/dev/echo", stub.url), "").await.0, 503);
    drop(refused);

    let mut agent = tcp_agent(&pki, &stub, "agent-0", &upstream);
    agent.wait_for("connected to stub").await;
    assert_eq!(call(&front_client(&pki, false), "GET", &format!("{}/clusters/dev/echo", stub.url), "").await.0, 200);
    // (A file that lists no agent at all is refused on a change: keep another cluster's entry.)
    let others = format!("# dev removed\nprod stranger {}\n", stranger.fingerprint);
    tether::identity::files::write_atomic(
        &pki.dir.whitelist(),
        others.as_bytes(),
        tether::identity::files::Mode::Public,
    )
    .unwrap();
    stub.proc.wait_for("closing connection: certificate removed from the whitelist").await;
    agent.wait_for("certificate not in the stub's whitelist").await;
    assert_eq!(upstream.requests(), 1, "nothing from the refused agent reached the upstream");
    tether::identity::files::write_atomic(
        &pki.dir.whitelist(),
        registered.as_bytes(),
        tether::identity::files::Mode::Public,
    )
    .unwrap();
    agent.wait_for_count("connected to stub", 2).await;
}

#[tokio::test]
async fn over_tcp_a_rolling_sigterm_restart_fails_no_request() {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    pki.agent("dev", "agent-1");
    let upstream = Upstream::start().await;
    let stub = StubProc::start_with(&pki, &["--audit-log", "off"]).await;
    let mut agents = vec![tcp_agent(&pki, &stub, "agent-0", &upstream), tcp_agent(&pki, &stub, "agent-1", &upstream)];
    for agent in &mut agents {
        agent.wait_for("connected to stub").await;
    }
    let (outcomes, load) = start_load(&pki, &stub, 6, true);
    outcomes.wait_ok(50).await;
    for (i, agent) in agents.iter_mut().enumerate() {
        let name = format!("agent-{i}");
        agent.signal("TERM");
        assert!(agent.wait_exit().await.success(), "{name} exits cleanly after draining");
        assert_eq!(agent.count("drained: no new requests"), 1, "{}", agent.log());
        *agent = tcp_agent(&pki, &stub, &name, &upstream);
        agent.wait_for("connected to stub").await;
        outcomes.wait_more(50).await;
    }
    stop_load(&outcomes, load).await;
    outcomes.assert_all_served();
}

/// A stand-in for a network between agent and stub: TCP to `port` is passed to the stub's TCP
/// fallback; UDP to `port` is dropped until `udp_open` is set, then relayed to the stub's QUIC
/// port. Made of real sockets on loopback; it is the only way here to block UDP but not TCP
/// without root.
struct Firewall {
    port: u16,
    udp_open: Arc<AtomicBool>,
}

async fn firewall(stub_port: u16) -> Firewall {
    let (udp, tcp) = loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            break (udp, tcp);
        }
    };
    let port = udp.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(("127.0.0.1", stub_port)).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    let udp_open = Arc::new(AtomicBool::new(false));
    let open = udp_open.clone();
    tokio::spawn(async move {
        let udp = Arc::new(udp);
        let to_stub = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        to_stub.connect(("127.0.0.1", stub_port)).await.unwrap();
        let agent_addr = Arc::new(std::sync::Mutex::new(None));
        {
            let (udp, to_stub, agent_addr) = (udp.clone(), to_stub.clone(), agent_addr.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = to_stub.recv(&mut buf).await {
                    let to = *agent_addr.lock().unwrap();
                    if let Some(to) = to {
                        let _ = udp.send_to(&buf[..n], to).await;
                    }
                }
            });
        }
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            if open.load(Ordering::SeqCst) {
                *agent_addr.lock().unwrap() = Some(from);
                let _ = to_stub.send(&buf[..n]).await;
            }
        }
    });
    Firewall { port, udp_open }
}

#[tokio::test]
async fn auto_falls_back_to_tcp_where_udp_is_blocked_and_returns_to_quic_when_it_is_not() {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let mut stub = StubProc::start_with(&pki, &["--audit-log", "off"]).await;
    let stub_port: u16 = stub.quic.rsplit(':').next().unwrap().parse().unwrap();
    let wall = firewall(stub_port).await;
    let certs = pki.path().to_str().unwrap();
    let stub_addr = format!("localhost:{}", wall.port);
    let mut agent = Proc::spawn(
        "agent",
        &[
            "agent",
            "--certs",
            certs,
            "--cluster",
            "dev",
            "--name",
            "agent-0",
            "--stub",
            &stub_addr,
            "--upstream",
            &upstream.url(),
            "--transport",
            "auto",
            "--idle-timeout",
            "1s",
            "--quic-retry",
            "1s",
        ],
    );
    let line = agent.wait_for("connected to stub").await;
    assert!(line.contains("transport=tcp"), "{line}");
    assert!(line.contains("the preferred one was not welcomed in time"), "TCP won the race: {line}");
    let client = front_client(&pki, true);
    assert_eq!(call(&client, "GET", &format!("{}/clusters/dev/echo", stub.url), "").await.0, 200);

    // UDP gets through again: QUIC takes over, and the TCP connection drains away.
    wall.udp_open.store(true, Ordering::SeqCst);
    agent.wait_for("QUIC works again").await;
    agent.wait_for_count("connected to stub", 2).await;
    let log = agent.log();
    let line = log.lines().rfind(|l| l.contains("connected to stub")).unwrap();
    assert!(line.contains("transport=quic"), "{line}");
    stub.proc.wait_for("agent disconnected").await;
    assert_eq!(call(&client, "GET", &format!("{}/clusters/dev/echo", stub.url), "").await.0, 200);
    assert_eq!(agent.count("disconnected from stub"), 0, "no gap while moving");
}
