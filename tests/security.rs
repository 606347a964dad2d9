//! Attacks, each refused: a whitelisted but hostile agent sending malformed and oversized frames;
//! slow-loris and header floods on the front door (bounded time and memory, then closed); path
//! tricks that try to reach another cluster; forged tokens (`alg: none`, wrong key, wrong
//! issuer or audience, `iat` far in the future). Each test also shows the stub keeps serving
//! honest callers. (A flood of one user's requests is limited without hurting others:
//! `caller_identity::a_user_over_the_limit_gets_429_without_hurting_others`.)

mod support;

use std::time::{Duration, Instant};

use support::upstream::Upstream;
use support::{Pki, StubProc, call, front_client, start_agent};
use tether::identity::token::{Claims, TokenIssuer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw QUIC connection presenting `cluster/name`'s whitelisted certificate: it can say
/// anything, which a real agent never would.
async fn hostile_connection(pki: &Pki, stub: &StubProc, cluster: &str, name: &str) -> quinn::Connection {
    use tether::identity::files;
    let ca = files::load_certs(&pki.dir.ca_cert()).unwrap();
    let chain = files::load_certs(&pki.dir.agent_cert(cluster, name)).unwrap();
    let key = files::load_key(&pki.dir.agent_key(cluster, name)).unwrap();
    let tls = tether::identity::tls::agent_dialer(&ca, chain, key).unwrap();
    let config = tether::transport::quic::client_config(tls, &tether::transport::quic::Tuning::default()).unwrap();
    let endpoint = tether::transport::quic::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.connect_with(config, stub.quic.parse().unwrap(), "localhost").unwrap().await.unwrap()
}

/// Waits (bounded) for the stub to close `conn`; returns the close reason.
async fn closed_by_stub(conn: &quinn::Connection) -> String {
    tokio::time::timeout(support::PATIENCE, conn.closed()).await.expect("the stub closes the connection").to_string()
}

#[tokio::test]
async fn a_hostile_agent_cannot_hurt_the_stub_with_bad_frames() {
    let pki = Pki::new();
    pki.agent("dev", "honest");
    pki.agent("dev", "hostile");
    let upstream = Upstream::start().await;
    let mut stub = StubProc::start_with(&pki, &["--audit-log", "off"]).await;
    let _honest = start_agent(&pki, &stub, "dev", "honest", &upstream.url()).await;
    let client = front_client(&pki, true);
    let echo = format!("{}/clusters/dev/echo", stub.url);

    // 1. Garbage where the hello should be.
    let conn = hostile_connection(&pki, &stub, "dev", "hostile").await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 5, 0xff, 0xfe, 0xfd, 0xfc, 0xfb]).await.unwrap();
    assert!(closed_by_stub(&conn).await.contains("bad hello"));

    // 2. A length prefix of 4 GiB: refused from the prefix alone, nothing allocated.
    let before = stub.proc.peak_rss();
    let conn = hostile_connection(&pki, &stub, "dev", "hostile").await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await.unwrap();
    let reason = closed_by_stub(&conn).await;
    assert!(reason.contains("bad hello") && reason.contains("exceeds"), "{reason}");
    assert!(stub.proc.peak_rss() < before + (16 << 20), "the stub did not allocate for the claimed size");

    // 3. A proper hello, then garbage instead of a response head: the caller gets a 502 and the
    // stub drops nothing else. The request goes to the hostile agent while it is the only one.
    let conn = hostile_connection(&pki, &stub, "dev", "hostile").await;
    let (mut control, mut control_recv) = conn.open_bi().await.unwrap();
    let hello = tether::wire::frame::Control::Hello(tether::wire::frame::Hello {
        protocol_version: tether::wire::PROTOCOL_VERSION,
        cluster: "dev".into(),
        agent_name: "hostile".into(),
        build: "hostile".into(),
    });
    tether::wire::io::write_frame(&mut control, &hello).await.unwrap();
    let _welcome: tether::wire::frame::Control = tether::wire::io::read_frame(&mut control_recv).await.unwrap();
    let answer_garbage = {
        let conn = conn.clone();
        tokio::spawn(async move {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let mut head = [0u8; 64];
                let _ = recv.read(&mut head).await;
                let _ = send.write_all(&[0, 0, 0, 3, 0xde, 0xad, 0xbe]).await;
                let _ = send.finish();
            }
        })
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(call(&client, "POST", &echo, "x").await.0);
    }
    assert!(statuses.contains(&502), "the hostile agent's garbage became 502s: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 502), "{statuses:?}");
    stub.proc.wait_for("agent of cluster \"dev\" failed before answering").await;
    answer_garbage.abort();
    conn.close(0u32.into(), b"done");

    // The honest agent served throughout, and still does.
    assert_eq!(call(&client, "GET", &echo, "").await.0, 200);
}

/// Reads until the server closes (or `limit` passes); returns what was read.
async fn read_until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin), limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await.expect("the stub closed the connection");
    out
}

#[tokio::test]
async fn slow_loris_and_header_floods_are_cut_off_quickly() {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let stub = StubProc::start_with(&pki, &["--audit-log", "off", "--header-timeout", "1s"]).await;
    let _agent = start_agent(&pki, &stub, "dev", "agent-0", &upstream.url()).await;

    // Slow-loris: headers a byte at a time, never finished. Closed after the header timeout.
    let started = Instant::now();
    let mut slow = support::front_door_tls(&pki, &stub).await;
    slow.write_all(b"GET /clusters/dev/echo HTTP/1.1\r\nhost: stub\r\n").await.unwrap();
    let trickle = async {
        for _ in 0..100 {
            if slow.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), trickle).await;
    let _ = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "the slow client was cut off after {took:?}");

    // A header flood: 4 MiB of one header. Refused with 431 (or closed), memory bounded.
    let before = stub.proc.peak_rss();
    let mut flood = support::front_door_tls(&pki, &stub).await;
    flood.write_all(b"GET /clusters/dev/echo HTTP/1.1\r\nhost: stub\r\nx-flood: ").await.unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..64 {
        if flood.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let answer = read_until_closed(&mut flood, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(stub.proc.peak_rss() < before + (32 << 20), "the flood did not grow the stub's memory");
    assert_eq!(upstream.requests(), 0, "neither reached the upstream");

    // Honest callers are served all along.
    assert_eq!(call(&front_client(&pki, false), "GET", &format!("{}/clusters/dev/echo", stub.url), "").await.0, 200);
}

#[tokio::test]
async fn path_tricks_never_reach_another_cluster() {
    let pki = Pki::new();
    pki.agent("alpha", "agent-0");
    pki.agent("beta", "agent-0");
    let (alpha_upstream, beta_upstream) = (Upstream::start().await, Upstream::start().await);
    let stub = StubProc::start_with(&pki, &["--audit-log", "off"]).await;
    let _alpha = start_agent(&pki, &stub, "alpha", "agent-0", &alpha_upstream.url()).await;
    let _beta = start_agent(&pki, &stub, "beta", "agent-0", &beta_upstream.url()).await;
    // A token for alpha only.
    let client = front_client(&pki, false).with_token(Some(pki.token("mallory", &[], &["alpha"])));
    let tricks = [
        "/clusters/alpha/../beta/echo",
        "/clusters/alpha/..%2Fbeta/echo",
        "/clusters/alpha%2F..%2Fbeta/echo",
        "/clusters/alpha%2fbeta/echo",
        "/clusters/%2e%2e/clusters/beta/echo",
        "/clusters/../clusters/beta/echo",
        "/clusters//beta/echo",
        "/clusters/ALPHA/../beta/echo",
        "/clusters/beta/echo",
        "/clusters/beta%00/echo",
        "//clusters/beta/echo",
    ];
    for trick in tricks {
        let (status, _, _) = call(&client, "GET", &format!("{}{trick}", stub.url), "").await;
        assert!([200, 400, 403, 404].contains(&status), "{trick}: {status}");
    }
    assert_eq!(beta_upstream.requests(), 0, "nothing reached cluster beta");
    // What reached alpha stayed in alpha, with the path as given (alpha's API server judges it).
    assert!(alpha_upstream.requests() >= 2);
}

#[tokio::test]
async fn forged_tokens_are_refused_with_401() {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let stub = StubProc::start_with(&pki, &["--audit-log", "off"]).await;
    let _agent = start_agent(&pki, &stub, "dev", "agent-0", &upstream.url()).await;
    let issuer = TokenIssuer::load(&pki.dir.issuer_key()).unwrap();
    let claims = || Claims::new("mallory", &["system:masters".into()], &["dev".into()], Duration::from_secs(600));
    let b64 = |bytes: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    };
    let payload = b64(&serde_json::to_vec(&claims()).unwrap());
    let other_key = {
        let dir = tempfile::tempdir().unwrap();
        let certs = tether::identity::files::CertDir::new(dir.path());
        tether::identity::certs::issuer_in_dir(&certs, false).unwrap();
        TokenIssuer::load(&certs.issuer_key()).unwrap().sign(&claims())
    };
    let mut wrong_issuer = claims();
    wrong_issuer.iss = "someone-else".into();
    let mut wrong_audience = claims();
    wrong_audience.aud = "kubernetes".into();
    let mut future = claims();
    future.iat += 86_400 * 365;
    future.exp += 86_400 * 365;
    let cases = [
        ("alg none", format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#))),
        ("alg HS256 keyed with the public key", format!("{}.{payload}.{}", b64(br#"{"alg":"HS256"}"#), b64(b"sig"))),
        ("another key", other_key),
        ("wrong issuer", issuer.sign(&wrong_issuer)),
        ("wrong audience", issuer.sign(&wrong_audience)),
        ("issued a year from now", issuer.sign(&future)),
    ];
    for (what, token) in cases {
        let client = front_client(&pki, false).with_token(Some(token));
        let (status, _, body) = call(&client, "GET", &format!("{}/clusters/dev/echo", stub.url), "").await;
        assert_eq!(status, 401, "{what}: {}", String::from_utf8_lossy(&body));
    }
    assert_eq!(upstream.requests(), 0, "no forged token reached the upstream");
}
