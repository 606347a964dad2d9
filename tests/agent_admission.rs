//! Who may connect: an agent whose certificate chains to the tether CA and whose fingerprint is
//! whitelisted is welcomed; every other agent is refused (in the TLS handshake, or by a named
//! close code for a cluster claim mismatch), says why in plain words, and no request it could
//! have carried reaches the upstream.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::upstream::Upstream;
use support::{Pki, StubProc, call, front_client, spawn_agent, start_agent};
use tether::identity::certs::{self, Signer, Validity};

/// A refused agent's cluster: the front door has no agent for it, and the upstream saw nothing.
async fn assert_nothing_reached(pki: &Pki, stub: &StubProc, upstream: &Upstream, cluster: &str) {
    let client = front_client(pki, false);
    let (status, _, body) = call(&client, "GET", &format!("{}/clusters/{cluster}/echo", stub.url), "").await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(upstream.requests(), 0, "a refused agent must never carry a request");
}

#[tokio::test]
async fn a_registered_agent_is_welcomed_and_carries_requests() {
    let pki = Pki::new();
    let fingerprint = pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let mut stub = StubProc::start(&pki).await;
    let _agent = start_agent(&pki, &stub, "dev", "agent-0", &upstream.url()).await;
    let line = stub.proc.wait_for("agent connected").await;
    assert!(line.contains("cluster=dev") && line.contains("name=agent-0"), "{line}");
    let client = front_client(&pki, false);
    let (status, _, body) = call(&client, "POST", &format!("{}/clusters/dev/echo", stub.url), "hi").await;
    assert_eq!((status, &body[..]), (200, &b"hi"[..]));
    assert_eq!(upstream.requests(), 1);
    assert_eq!(stub.proc.count(&fingerprint.to_string()), 0, "no refusal was logged");
}

#[tokio::test]
async fn an_unregistered_agent_is_refused_in_the_handshake() {
    let pki = Pki::new();
    let minted = pki.signer().issue_agent("dev", "agent-0", Validity::days(1)).unwrap();
    let fingerprint = pki.install_agent("dev", "agent-0", &minted, None);
    pki.agent("dev", "other"); // the cluster exists, only this certificate is unknown
    let upstream = Upstream::start().await;
    let mut stub = StubProc::start(&pki).await;
    let mut agent = spawn_agent(&pki, &stub, "dev", "agent-0", &upstream.url(), &[]);
    agent.wait_for("refused by stub: certificate not in the stub's whitelist").await;
    stub.proc.wait_for(&format!("certificate is not in the whitelist fingerprint={fingerprint}")).await;
    assert_nothing_reached(&pki, &stub, &upstream, "dev").await;
    // It keeps retrying with backoff rather than giving up or spinning.
    agent.wait_for("retry_in").await;
}

#[tokio::test]
async fn an_agent_signed_by_another_ca_is_refused_even_if_whitelisted() {
    let pki = Pki::new();
    let other_ca = certs::new_ca("test CA", Validity::days(1)).unwrap();
    let minted = Signer::from_pem(&other_ca.cert_pem, &other_ca.key_pem)
        .unwrap()
        .issue_agent("dev", "agent-0", Validity::days(1))
        .unwrap();
    pki.install_agent("dev", "agent-0", &minted, Some("dev"));
    let upstream = Upstream::start().await;
    let mut stub = StubProc::start(&pki).await;
    let mut agent = spawn_agent(&pki, &stub, "dev", "agent-0", &upstream.url(), &[]);
    agent.wait_for("signed by another CA").await;
    stub.proc.wait_for("does not verify against the tether CA").await;
    assert_nothing_reached(&pki, &stub, &upstream, "dev").await;
}

#[tokio::test]
async fn an_expired_agent_certificate_is_refused() {
    let pki = Pki::new();
    let now = time::OffsetDateTime::now_utc();
    let expired =
        Validity { not_before: now - Duration::from_secs(2 * 86_400), not_after: now - Duration::from_secs(86_400) };
    let minted = pki.signer().issue_agent("dev", "agent-0", expired).unwrap();
    pki.install_agent("dev", "agent-0", &minted, Some("dev"));
    let upstream = Upstream::start().await;
    let stub = StubProc::start(&pki).await;
    let mut agent = spawn_agent(&pki, &stub, "dev", "agent-0", &upstream.url(), &[]);
    agent.wait_for("certificate has expired").await;
    assert_nothing_reached(&pki, &stub, &upstream, "dev").await;
}

#[tokio::test]
async fn an_agent_claiming_another_cluster_is_closed_with_a_named_code() {
    let pki = Pki::new();
    // Registered for "dev", but run as an agent of "prod" with that certificate.
    let minted = pki.signer().issue_agent("dev", "agent-0", Validity::days(1)).unwrap();
    let fingerprint = pki.install_agent("prod", "agent-0", &minted, Some("dev"));
    let upstream = Upstream::start().await;
    let mut stub = StubProc::start(&pki).await;
    let mut agent = spawn_agent(&pki, &stub, "prod", "agent-0", &upstream.url(), &[]);
    let line = agent.wait_for("refused by stub").await;
    assert!(
        line.contains(&format!(
            r#"certificate {fingerprint} is registered for cluster "dev", but the agent claims cluster "prod""#
        )),
        "{line}"
    );
    stub.proc.wait_for("refused agent: certificate").await;
    assert_nothing_reached(&pki, &stub, &upstream, "prod").await;
    assert_nothing_reached(&pki, &stub, &upstream, "dev").await;
}

#[tokio::test]
async fn a_client_without_a_certificate_gets_no_connection() {
    // The agent binary always presents its certificate, so this client is built here: a real
    // QUIC client with the right CA and ALPN, but no client certificate.
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let mut stub = StubProc::start_with(&pki, &["--admin-listen", "127.0.0.1:0"]).await;
    let admin = support::admin::admin_addr(&stub.proc.wait_for("admin listening").await);
    let ca = tether::identity::files::load_certs(&pki.dir.ca_cert()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(tether::identity::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(tether::identity::tls::roots(&ca).unwrap())
        .with_no_client_auth();
    tls.alpn_protocols = vec![tether::wire::ALPN.to_vec()];
    let tuning = tether::transport::quic::Tuning::default();
    let endpoint = tether::transport::quic::client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = tether::transport::quic::client_config(tls.clone(), &tuning).unwrap();
    let conn = endpoint.connect_with(config, stub.quic.parse().unwrap(), "localhost").unwrap().await;
    // TLS 1.3: our side may finish before the stub judges us; the refusal then arrives on the
    // first stream operation, or even before it (opening the stream fails with it).
    let err = match conn {
        Err(e) => e,
        Ok(conn) => match conn.open_bi().await {
            Err(e) => e,
            Ok((mut send, mut recv)) => {
                let _ = send.write_all(b"hello?").await;
                let _ = recv.read_to_end(1024).await;
                conn.close_reason().expect("the stub closed the connection")
            }
        },
    };
    let explained = tether::transport::explain::closed(&err);
    assert!(explained.contains("requires a client certificate"), "{explained}");
    // The same over the TCP fallback: TLS without a client certificate.
    let tcp = tokio::net::TcpStream::connect(&stub.quic).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut over_tcp = tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await.unwrap();
    let mut nothing = Vec::new();
    let refused = tokio::io::AsyncReadExt::read_to_end(&mut over_tcp, &mut nothing).await;
    assert!(refused.is_err() || nothing.is_empty(), "the stub answered a client without a certificate");
    // Both refusals are counted, with their reason.
    let series = r#"tether_agent_refusals_total{reason="no_certificate"}"#;
    let metrics =
        support::admin::scrape_until(&admin, series, |m| support::admin::sample(m, series) == Some(2.0)).await;
    assert_eq!(support::admin::sample(&metrics, series), Some(2.0));
    assert_nothing_reached(&pki, &stub, &upstream, "dev").await;
    let _ = Arc::new(endpoint);
}
