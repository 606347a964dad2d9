//! Attacks, each refused: a whitelisted but hostile agent sending malformed and oversized frames;
//! slow-loris and header floods on the front door (bounded time and memory, then closed); path
//! tricks that try to reach another cluster; forged tokens (`alg: none`, wrong key, wrong
//! issuer or audience, `iat` far in the future); a flood of dialers on the agent port that never
//! finish their handshakes (capped, then timed out). Each test also shows the stub keeps serving
//! honest callers. (A flood of one user's requests is limited without hurting others:
//! `caller_identity::a_user_over_the_limit_gets_429_without_hurting_others`.)

mod support;

use std::time::{Duration, Instant};

use support::upstream::Upstream;
use support::{Pki, StubProc, call, front_client, start_agent};
use tether::identity::token::{Claims, TokenIssuer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Held by the three flood tests, so that no two of them run at once. The handshake cap's test
/// must hold 1,024 handshakes at once, all set up within one handshake timeout (5 s); beside
/// another flood, on two cores, that failed once in CI (every slot timed out, none refused).
static ONE_FLOOD_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let conn = support::raw_agent_connection(&pki, &stub, "dev", "hostile").await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 5, 0xff, 0xfe, 0xfd, 0xfc, 0xfb]).await.unwrap();
    assert!(closed_by_stub(&conn).await.contains("bad hello"));

    // 2. A length prefix of 4 GiB: refused from the prefix alone, nothing allocated.
    let before = stub.proc.peak_rss();
    let conn = support::raw_agent_connection(&pki, &stub, "dev", "hostile").await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await.unwrap();
    let reason = closed_by_stub(&conn).await;
    assert!(reason.contains("bad hello") && reason.contains("exceeds"), "{reason}");
    assert!(stub.proc.peak_rss() < before + (16 << 20), "the stub did not allocate for the claimed size");

    // 3. A proper hello, then garbage instead of a response head: the caller gets a 502 and the
    // stub drops nothing else. The request goes to the hostile agent while it is the only one.
    let conn = support::raw_agent_connection(&pki, &stub, "dev", "hostile").await;
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
async fn read_until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin + ?Sized), limit: Duration) -> Vec<u8> {
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
    // Signed by the real issuer, as a careless one might: an empty user would be no
    // impersonation at all (the agent's own identity), a padded one trimmed by the API server.
    let named = |user: &str| Claims::new(user, &[], &["dev".into()], Duration::from_secs(600));
    let cases = [
        ("alg none", format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#))),
        ("alg HS256 keyed with the public key", format!("{}.{payload}.{}", b64(br#"{"alg":"HS256"}"#), b64(b"sig"))),
        ("another key", other_key),
        ("wrong issuer", issuer.sign(&wrong_issuer)),
        ("wrong audience", issuer.sign(&wrong_audience)),
        ("issued a year from now", issuer.sign(&future)),
        ("an empty user", issuer.sign(&named(""))),
        ("a padded user", issuer.sign(&named(" alice"))),
    ];
    for (what, token) in cases {
        let client = front_client(&pki, false).with_token(Some(token));
        let (status, _, body) = call(&client, "GET", &format!("{}/clusters/dev/echo", stub.url), "").await;
        assert_eq!(status, 401, "{what}: {}", String::from_utf8_lossy(&body));
    }
    assert_eq!(upstream.requests(), 0, "no forged token reached the upstream");
}

#[tokio::test]
async fn identity_looking_headers_never_reach_the_api_server_and_the_stub_says_where_the_caller_is() {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let stub = StubProc::start_with(&pki, &["--audit-log", "off"]).await;
    let _agent = start_agent(&pki, &stub, "dev", "agent-0", &upstream.url()).await;
    for h2 in [false, true] {
        let client = front_client(&pki, h2);
        let mut request = http::Request::get(format!("{}/clusters/dev/echo", stub.url));
        for (name, value) in [
            ("X-Remote-User", "system:admin"),
            ("x-remote-group", "system:masters"),
            ("X-Remote-Extra-Scopes", "everything"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Real-Ip", "6.6.6.6"),
            ("Forwarded", "for=6.6.6.6"),
        ] {
            request = request.header(name, value);
        }
        let response = client.request(request.body(tether::bridge::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), 200);
        // Only what the stub itself set: the address it saw the caller at.
        assert_eq!(response.headers()["x-identity-seen"], "x-forwarded-for=127.0.0.1", "h2={h2}");
    }
}

/// Real QUIC Initial packets, each with a fresh connection id: quinn clients dialling a socket
/// that never answers, which captures them.
async fn captured_initials(pki: &Pki, count: usize) -> Vec<Vec<u8>> {
    use tether::identity::files;
    let ca = files::load_certs(&pki.dir.ca_cert()).unwrap();
    let chain = files::load_certs(&pki.dir.agent_cert("dev", "agent-0")).unwrap();
    let key = files::load_key(&pki.dir.agent_key("dev", "agent-0")).unwrap();
    let tls = tether::identity::tls::agent_dialer(&ca, chain, key).unwrap();
    let config = tether::transport::quic::client_config(tls, &tether::transport::quic::Tuning::default()).unwrap();
    let endpoint = tether::transport::quic::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let capture = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut initials = Vec::with_capacity(count);
    let mut dialling = Vec::new();
    let mut buf = vec![0u8; 65536];
    while initials.len() < count {
        // A batch at a time, so that the capture socket's buffer never overflows.
        for _ in 0..50 {
            dialling.push(endpoint.connect_with(config.clone(), capture.local_addr().unwrap(), "localhost").unwrap());
        }
        for _ in 0..50 {
            let n = tokio::time::timeout(support::PATIENCE, capture.recv(&mut buf)).await.unwrap().unwrap();
            initials.push(buf[..n].to_vec());
        }
    }
    initials.truncate(count);
    drop(dialling);
    endpoint.close(0u32.into(), b"");
    initials
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_quic_initials_keeps_no_state_and_is_not_amplified() {
    let _flood = ONE_FLOOD_AT_A_TIME.lock().await;
    const FLOOD: usize = 2000;
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let mut stub = StubProc::start_with(&pki, &["--audit-log", "off", "--admin-listen", "127.0.0.1:0"]).await;
    let admin = support::admin::admin_addr(&stub.proc.wait_for("admin listening").await);
    let initials = captured_initials(&pki, FLOOD).await;
    let rss = |pid: u32| tether::bench::swarm::rss_kib(pid).unwrap() << 10;
    let before = rss(stub.proc.pid());

    // From 64 addresses (ports) that never answer: each Initial once, as fast as it goes.
    let mut flooders = Vec::new();
    for _ in 0..64 {
        flooders.push(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let mut sent = 0;
    for (i, initial) in initials.iter().enumerate() {
        sent += flooders[i % flooders.len()].send_to(initial, &stub.quic).await.unwrap();
    }
    // What comes back to each address, until the stub has been quiet for a second.
    let mut listening = Vec::new();
    for socket in flooders {
        listening.push(tokio::spawn(async move {
            let (mut answered, mut buf) = (0, vec![0u8; 65536]);
            while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await {
                answered += n;
            }
            answered
        }));
    }
    let mut answered = 0;
    for listener in listening {
        answered += listener.await.unwrap();
    }
    let grown = rss(stub.proc.pid()).saturating_sub(before);
    // What the stub handled: the kernel drops what overflows its socket buffer (a quarter of
    // the flood on an idle machine, half on a busy one), and every Initial it handled got a
    // Retry. At least a quarter must have reached it for this to be a flood.
    let retries = "tether_quic_retries_total";
    let metrics = support::admin::scrape_until(&admin, retries, |m| {
        support::admin::sample(m, retries) >= Some((FLOOD / 4) as f64)
    })
    .await;
    let handled = support::admin::sample(&metrics, retries).unwrap() as usize;
    let handled_bytes = sent * handled / FLOOD;
    eprintln!(
        "{FLOOD} Initials ({} KiB) from 64 silent addresses, {handled} handled: {} KiB sent back ({:.2}x of what it \
         handled), stub memory +{} KiB",
        sent >> 10,
        answered >> 10,
        answered as f64 / handled_bytes as f64,
        grown >> 10
    );
    assert!(answered < handled_bytes / 2, "the stub answered {answered} bytes to {handled_bytes}: amplification");
    assert!(grown < 16 << 20, "the stub grew by {} MiB", grown >> 20);
    // A real agent still gets in (through its own Retry) and serves.
    let _agent = start_agent(&pki, &stub, "dev", "agent-0", &upstream.url()).await;
    let (status, _, _) = call(&front_client(&pki, false), "GET", &format!("{}/clusters/dev/echo", stub.url), "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn silent_and_idle_front_door_connections_are_closed_but_a_watch_is_not() {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    // (HTTP/1.1 closes a kept-alive connection after the header timeout by itself: the idle
    // timeout is the shorter one here, so that the stub's own is what closes it.)
    let args = ["--audit-log", "off", "--header-timeout", "3s", "--client-idle-timeout", "1s"];
    let mut stub = StubProc::start_with(&pki, &[&args[..], &["--admin-listen", "127.0.0.1:0"]].concat()).await;
    let admin = support::admin::admin_addr(&stub.proc.wait_for("admin listening").await);
    let _agent = start_agent(&pki, &stub, "dev", "agent-0", &upstream.url()).await;
    let token = pki.token("tester", &[], &["dev"]);

    // A watch open for longer than the idle timeout: a request in flight, never idle.
    let watcher = front_client(&pki, true);
    let watch = watcher.get(format!("{}/clusters/dev/watch", stub.url).parse().unwrap()).await.unwrap();
    assert_eq!(watch.status(), 200);

    let started = Instant::now();
    // Silent after the TLS handshake: over HTTP/1.1, HTTP/2 with its preface, HTTP/2 without.
    let mut silent_h1 = support::front_door_tls_from(&pki, &stub, b"http/1.1", "127.0.0.1").await;
    let mut silent_h2 = support::front_door_tls_from(&pki, &stub, b"h2", "127.0.0.1").await;
    silent_h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    let mut silent_bare = support::front_door_tls_from(&pki, &stub, b"h2", "127.0.0.1").await;
    // Idle after one request on a kept-alive connection.
    let mut idle = support::front_door_tls(&pki, &stub).await;
    let request = format!("GET /clusters/dev/echo HTTP/1.1\r\nhost: stub\r\nauthorization: Bearer {token}\r\n\r\n");
    idle.write_all(request.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    let idle_closed = started.elapsed();
    for (what, stream) in [
        ("silent HTTP/1.1", &mut silent_h1 as &mut (dyn tokio::io::AsyncRead + Unpin + Send)),
        ("silent HTTP/2 with its preface", &mut silent_h2),
        ("silent HTTP/2 without", &mut silent_bare),
    ] {
        read_until_closed(stream, Duration::from_secs(10)).await;
        eprintln!("{what}: closed after {:.1?}", started.elapsed());
    }
    eprintln!("idle after a request: closed after {idle_closed:.1?}");
    assert!(idle_closed < Duration::from_secs(3), "the idle one closed after {idle_closed:?}");
    assert!(started.elapsed() < Duration::from_secs(8), "the silent ones closed after {:?}", started.elapsed());
    let silent = r#"tether_front_door_closed_total{reason="silent"}"#;
    let idle_series = r#"tether_front_door_closed_total{reason="idle"}"#;
    let metrics = support::admin::scrape_until(&admin, "silent and idle closes", |m| {
        support::admin::sample(m, silent) == Some(3.0) && support::admin::sample(m, idle_series) == Some(1.0)
    })
    .await;
    assert_eq!(support::admin::sample(&metrics, "tether_front_door_connections"), Some(1.0), "the watch's");

    // The watch outlived them all and still gets its events.
    upstream.send_event();
    let mut body = watch.into_body();
    let event = tokio::time::timeout(support::PATIENCE, http_body_util::BodyExt::frame(&mut body));
    let event = event.await.unwrap().unwrap().unwrap();
    assert_eq!(event.into_data().unwrap(), "event-1\n");
}

#[tokio::test]
async fn connections_beyond_the_limits_are_closed_at_once_and_other_sources_still_get_in() {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let args = ["--audit-log", "off", "--max-connections-per-source", "50", "--max-connections", "80"];
    let mut stub = StubProc::start_with(&pki, &[&args[..], &["--admin-listen", "127.0.0.1:0"]].concat()).await;
    let admin = support::admin::admin_addr(&stub.proc.wait_for("admin listening").await);
    let _agent = start_agent(&pki, &stub, "dev", "agent-0", &upstream.url()).await;

    /// Opens `n` TCP connections from `source` that never speak; returns them and how many the
    /// stub closed at once. Waits first until the stub has counted `refusals` closes of the
    /// series `limit` (its accept loop may lag behind the connects on two busy cores).
    async fn flood(
        stub: &StubProc,
        admin: &str,
        source: &str,
        n: usize,
        (limit, refusals): (&str, f64),
    ) -> (Vec<tokio::net::TcpStream>, usize) {
        let mut open = Vec::new();
        for _ in 0..n {
            open.push(support::front_door_tcp(stub, source).await);
        }
        let series = format!(r#"tether_front_door_closed_total{{reason="{limit}"}}"#);
        support::admin::scrape_until(admin, &series, |m| {
            support::admin::sample(m, &series).is_some_and(|closed| closed >= refusals)
        })
        .await;
        // Taken ones wait for a TLS ClientHello: silence. Refused ones read end of stream.
        let reads = open.iter_mut().map(|stream| async move {
            let mut byte = [0u8; 1];
            matches!(tokio::time::timeout(Duration::from_millis(500), stream.read(&mut byte)).await, Ok(Ok(0)))
        });
        let closed = futures_util::future::join_all(reads).await.into_iter().filter(|closed| *closed).count();
        (open, closed)
    }
    let (_first, closed) = flood(&stub, &admin, "127.0.0.1", 60, ("limit_source", 10.0)).await;
    assert_eq!(closed, 10, "the per-source limit");
    // Another address is not held back by the first one's limit, only by the total.
    let (_second, closed) = flood(&stub, &admin, "127.0.0.2", 40, ("limit_total", 10.0)).await;
    assert_eq!(closed, 10, "the total limit");
    let metrics = support::admin::scrape_until(&admin, "limit closes", |m| {
        support::admin::sample(m, r#"tether_front_door_closed_total{reason="limit_total"}"#) == Some(10.0)
    })
    .await;
    assert_eq!(
        support::admin::sample(&metrics, r#"tether_front_door_closed_total{reason="limit_source"}"#),
        Some(10.0)
    );
    assert_eq!(support::admin::sample(&metrics, "tether_front_door_connections"), Some(80.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_tls_connections_stays_bounded_and_goes_away() {
    let _flood = ONE_FLOOD_AT_A_TIME.lock().await;
    const FLOOD: usize = 600;
    let pki = Pki::new();
    // The header timeout must outlast the flood's 600 handshakes (one after another, debug build,
    // two shared cores) and the scrape after them: a connection closed before the count is read
    // lets a later one in, and the count never reads the limit.
    let args = ["--audit-log", "off", "--header-timeout", "10s", "--admin-listen", "127.0.0.1:0"];
    let mut stub = StubProc::start_with(&pki, &args).await;
    let admin = support::admin::admin_addr(&stub.proc.wait_for("admin listening").await);
    let fds = |pid: u32| std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let rss = |pid: u32| tether::bench::swarm::rss_kib(pid).unwrap() << 10;
    let (fds_before, rss_before) = (fds(stub.proc.pid()), rss(stub.proc.pid()));
    // TLS handshakes done, then nothing: what costs the stub most per connection.
    let mut flood = Vec::new();
    let started = std::time::Instant::now();
    for _ in 0..FLOOD {
        let tcp = support::front_door_tcp(&stub, "127.0.0.1").await;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let roots = tether::identity::tls::roots(&tether::identity::files::load_certs(&pki.dir.ca_cert()).unwrap());
        let tls = rustls::ClientConfig::builder_with_provider(tether::identity::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.unwrap())
            .with_no_client_auth();
        // A refused connection fails its handshake: that is the point.
        if let Ok(stream) = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls)).connect(name, tcp).await {
            flood.push(stream);
        }
    }
    let (fds_during, rss_during) = (fds(stub.proc.pid()), rss(stub.proc.pid()));
    let metrics = support::admin::scrape_until(&admin, "open connections", |m| {
        support::admin::sample(m, "tether_front_door_connections") == Some(512.0)
    })
    .await;
    eprintln!(
        "{FLOOD} silent TLS connections in {:?}: {} taken, stub +{} descriptors, +{} KiB",
        started.elapsed(),
        support::admin::sample(&metrics, "tether_front_door_connections").unwrap(),
        fds_during - fds_before,
        (rss_during.saturating_sub(rss_before)) >> 10
    );
    assert!(fds_during - fds_before <= 512 + 8, "descriptors beyond the per-source limit");
    assert!(
        rss_during.saturating_sub(rss_before) < 48 << 20,
        "the stub grew by {} MiB",
        (rss_during - rss_before) >> 20
    );
    // The header timeout closes them all; their descriptors go.
    support::admin::scrape_until(&admin, "all closed", |m| {
        support::admin::sample(m, "tether_front_door_connections") == Some(0.0)
    })
    .await;
    assert!(fds(stub.proc.pid()) <= fds_before + 8);
    drop(flood);
}

/// The agent port (QUIC and the TCP fallback share it and one count): dialers that connect and
/// never finish a handshake hold at most MAX_PENDING_HANDSHAKES of them. One more is closed at
/// once and counted, a QUIC agent dialling now hears that the stub is busy, and once the flood's
/// handshakes time out the agent gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_in_progress_are_capped_and_a_refused_agent_gets_in_after_the_flood() {
    let _flood = ONE_FLOOD_AT_A_TIME.lock().await;
    use tether::transport::listen::MAX_PENDING_HANDSHAKES;
    let (open_files, hard) = tether::fd_limit::raise_to_hard_limit().unwrap();
    assert!(
        open_files >= MAX_PENDING_HANDSHAKES as u64 + 256,
        "this test needs {} open files; the hard limit is {hard} (raise `ulimit -Hn`)",
        MAX_PENDING_HANDSHAKES + 256
    );
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let args = ["--audit-log", "off", "--admin-listen", "127.0.0.1:0"];
    let mut stub = StubProc::start_with(&pki, &args).await;
    let admin = support::admin::admin_addr(&stub.proc.wait_for("admin listening").await);
    let refused = |reason: &str| format!(r#"tether_agent_refusals_total{{reason="{reason}"}}"#);

    // TCP connections to the agent port that never say a word: each a handshake in progress
    // until its timeout.
    let mut flood = Vec::new();
    for _ in 0..MAX_PENDING_HANDSHAKES {
        flood.push(tokio::net::TcpStream::connect(&stub.quic).await.unwrap());
    }
    // Accepted after all of them (the kernel's queue is first come, first served): closed at
    // once, without a TLS handshake.
    let mut extra = tokio::net::TcpStream::connect(&stub.quic).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(support::PATIENCE, extra.read(&mut byte)).await.expect("the stub closes it");
    assert!(matches!(read, Ok(0) | Err(_)), "the stub answered a dialer beyond the cap: {read:?}");
    let limit = refused("handshake_limit");
    support::admin::scrape_until(&admin, &limit, |m| support::admin::sample(m, &limit) >= Some(1.0)).await;

    // A real agent over QUIC meanwhile: refused before any Retry, and told why.
    let mut agent = support::spawn_agent(&pki, &stub, "dev", "agent-0", &upstream.url(), &["--transport", "quic"]);
    let line = agent.wait_for("cannot connect to stub").await;
    assert!(line.contains("the stub is busy"), "{line}");
    assert_eq!(agent.count("connected to stub"), 0);

    // The flood's handshakes time out; the agent gets in and carries a request.
    agent.wait_for("connected to stub").await;
    let timeouts = refused("timeout");
    let metrics = support::admin::scrape_until(&admin, &timeouts, |m| {
        support::admin::sample(m, &timeouts) >= Some(MAX_PENDING_HANDSHAKES as f64)
    })
    .await;
    assert!(support::admin::sample(&metrics, &limit) >= Some(2.0), "the agent's QUIC dial was counted too: {metrics}");
    let (status, _, _) = call(&front_client(&pki, true), "GET", &format!("{}/clusters/dev/echo", stub.url), "").await;
    assert_eq!(status, 200);
    drop(flood);
}
