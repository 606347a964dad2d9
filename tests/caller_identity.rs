//! Who may call: the stub authenticates every front-door request by its token (401) and checks
//! the cluster against the token's `clusters` (403); the agent verifies the token again; a
//! certificate-bound token needs its certificate; every request leaves an audit line; and
//! `tether token` / `tether kubeconfig` mint what the stub accepts. No refused request reaches
//! the upstream.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::upstream::Upstream;
use support::{Pki, StubProc, call, front_client, front_client_with, spawn_agent, start_agent, tether_bin};
use tether::identity::certs::{Signer, Validity};
use tether::identity::files::CertDir;
use tether::identity::token::{Claims, Confirmation, TokenIssuer, TokenVerifier};

struct Tunnel {
    pki: Pki,
    upstream: Upstream,
    stub: StubProc,
    _agent: support::Proc,
}

async fn tunnel(stub_args: &[&str]) -> Tunnel {
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let upstream = Upstream::start().await;
    let stub = StubProc::start_with(&pki, stub_args).await;
    let agent = start_agent(&pki, &stub, "dev", "agent-0", &upstream.url()).await;
    Tunnel { pki, upstream, stub, _agent: agent }
}

fn sign(pki: &Pki, claims: &Claims) -> String {
    TokenIssuer::load(&pki.dir.issuer_key()).unwrap().sign(claims)
}

fn claims(user: &str, clusters: &[&str]) -> Claims {
    let clusters: Vec<String> = clusters.iter().map(|c| c.to_string()).collect();
    Claims::new(user, &["devs".into()], &clusters, Duration::from_secs(600))
}

/// Sends GET /echo with `token` (or none) and returns status and the Status message.
async fn status_with(t: &Tunnel, token: Option<String>) -> (u16, String) {
    let client = front_client(&t.pki, false).with_token(token);
    let (status, _, body) = call(&client, "GET", &format!("{}/clusters/dev/echo", t.stub.url), "").await;
    if status == 200 {
        return (status, String::new());
    }
    let json: serde_json::Value = serde_json::from_slice(&body).expect("errors are Status JSON");
    assert_eq!(json["kind"], "Status");
    assert_eq!(json["code"], status);
    (status, json["message"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn the_stub_refuses_bad_tokens_with_401_and_foreign_clusters_with_403() {
    let t = tunnel(&[]).await;
    let other_issuer = {
        let dir = tempfile::tempdir().unwrap();
        tether::identity::certs::issuer_in_dir(&CertDir::new(dir.path()), false).unwrap();
        TokenIssuer::load(&CertDir::new(dir.path()).issuer_key()).unwrap()
    };
    let mut expired = claims("alice", &["dev"]);
    expired.iat -= 7200;
    expired.exp -= 7200;
    let mut early = claims("alice", &["dev"]);
    early.iat += 3600;
    let good = sign(&t.pki, &claims("alice", &["dev"]));
    let mut tampered = good.clone();
    tampered.insert(good.find('.').unwrap() + 5, 'x');

    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "no bearer token"),
        ("garbage", Some("garbage".into()), "malformed token"),
        ("tampered", Some(tampered), "signature does not verify"),
        ("forged", Some(other_issuer.sign(&claims("alice", &["dev"]))), "signature does not verify"),
        ("expired", Some(sign(&t.pki, &expired)), "expired"),
        ("not yet valid", Some(sign(&t.pki, &early)), "not valid yet"),
    ];
    for (what, token, message) in cases {
        let (status, got) = status_with(&t, token).await;
        assert_eq!(status, 401, "{what}: {got}");
        assert!(got.contains(message), "{what}: {got:?} should mention {message:?}");
    }
    let (status, got) = status_with(&t, Some(sign(&t.pki, &claims("alice", &["prod"])))).await;
    assert_eq!(status, 403);
    assert!(got.contains(r#"user "alice" may not reach cluster "dev""#), "{got}");
    assert_eq!(t.upstream.requests(), 0, "no refused request reaches the upstream");

    assert_eq!(status_with(&t, Some(good)).await.0, 200);
    assert_eq!(t.upstream.requests(), 1);
}

#[tokio::test]
async fn the_agent_verifies_the_token_again() {
    // A stub that accepts tokens of an issuer the agent does not trust: the agent refuses them,
    // as it would the tokens of a compromised stub.
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let other = tempfile::tempdir().unwrap();
    tether::identity::certs::issuer_in_dir(&CertDir::new(other.path()), false).unwrap();
    let other_pub = CertDir::new(other.path()).issuer_pub();
    let upstream = Upstream::start().await;
    let stub = StubProc::start(&pki).await;
    let mut agent =
        spawn_agent(&pki, &stub, "dev", "agent-0", &upstream.url(), &["--issuer-pub", other_pub.to_str().unwrap()]);
    agent.wait_for("connected to stub").await;
    let client = front_client(&pki, false);
    let (status, _, body) = call(&client, "GET", &format!("{}/clusters/dev/echo", stub.url), "").await;
    assert_eq!(status, 401);
    assert!(String::from_utf8_lossy(&body).contains("the agent refused the caller's token"));
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test]
async fn a_certificate_bound_token_is_accepted_only_with_its_certificate() {
    let t = tunnel(&[]).await;
    let signer: Signer = t.pki.signer();
    let dir = tempfile::tempdir().unwrap();
    let mut service_certs = Vec::new();
    for name in ["ci-bot", "impostor"] {
        let minted = signer.issue_agent("services", name, Validity::days(1)).unwrap();
        let (cert, key) = (dir.path().join(format!("{name}.crt")), dir.path().join(format!("{name}.key")));
        minted.save(&cert, &key).unwrap();
        service_certs.push((cert, key, minted.fingerprint));
    }
    let mut bound = claims("ci-bot", &["dev"]);
    bound.cnf = Some(Confirmation::for_certificate(&service_certs[0].2));
    let token = Some(sign(&t.pki, &bound));
    let url = format!("{}/clusters/dev/echo", t.stub.url);

    let without = front_client_with(&t.pki, false, None, token.clone());
    assert_eq!(call(&without, "GET", &url, "").await.0, 401, "bound token without a certificate");
    let impostor = front_client_with(&t.pki, false, Some((&service_certs[1].0, &service_certs[1].1)), token.clone());
    assert_eq!(call(&impostor, "GET", &url, "").await.0, 401, "bound token with another certificate");
    assert_eq!(t.upstream.requests(), 0);
    let owner = front_client_with(&t.pki, true, Some((&service_certs[0].0, &service_certs[0].1)), token);
    let (status, headers, _) = call(&owner, "GET", &url, "").await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-impersonation-seen"], "impersonate-user=ci-bot,impersonate-group=devs");
}

#[tokio::test]
async fn every_request_leaves_one_audit_line() {
    let mut t = tunnel(&["--audit-log", "-"]).await;
    let client = front_client(&t.pki, false);
    let (status, _, body) =
        call(&client, "POST", &format!("{}/clusters/dev/echo/x?watch=1", t.stub.url), "12345").await;
    assert_eq!((status, body.len()), (200, 5));
    assert_eq!(status_with(&t, None).await.0, 401);
    // Lines are written when a response ends.
    let ok: serde_json::Value = serde_json::from_str(&t.stub.proc.wait_for(r#""status":200"#).await).unwrap();
    let refused: serde_json::Value = serde_json::from_str(&t.stub.proc.wait_for(r#""status":401"#).await).unwrap();
    assert_eq!(t.stub.proc.count(r#"{"time":"#), 2, "one line per request");
    assert_eq!(ok["user"], "tester");
    assert_eq!(ok["groups"], serde_json::json!(["testers"]));
    assert_eq!((ok["cluster"].as_str(), ok["agent"].as_str()), (Some("dev"), Some("agent-0")));
    assert_eq!((ok["verb"].as_str(), ok["path"].as_str()), (Some("watch"), Some("/clusters/dev/echo/x")));
    assert_eq!(ok["bytes"], 5);
    assert!(ok["request_id"].as_str().unwrap().len() == 16 && ok["time"].as_str().unwrap().ends_with('Z'));
    assert!(ok["duration_ms"].is_u64());
    assert_eq!(refused["user"], serde_json::Value::Null);
    assert_eq!(refused["cluster"], "dev");
}

#[tokio::test]
async fn token_and_kubeconfig_commands_mint_what_the_stub_accepts() {
    let t = tunnel(&[]).await;
    let certs = t.pki.path().to_str().unwrap();
    let out = std::process::Command::new(tether_bin())
        .args(["token", "--certs", certs, "--user", "dave", "--group", "ops", "--group", "devs", "--cluster", "dev"])
        .args(["--cluster", "prod", "--ttl", "10m"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let verifier = TokenVerifier::load(&t.pki.dir.issuer_pub()).unwrap();
    let claims = verifier.verify(&token, tether::identity::token::unix_now()).unwrap();
    assert_eq!((claims.sub.as_str(), claims.groups.clone()), ("dave", vec!["ops".to_owned(), "devs".to_owned()]));
    assert_eq!(claims.clusters, ["dev", "prod"]);
    assert!((590..=600).contains(&(claims.exp - claims.iat)));
    assert_eq!(status_with(&t, Some(token)).await.0, 200);

    let out = std::process::Command::new(tether_bin())
        .args(["kubeconfig", "--certs", certs, "--stub", &t.stub.url, "--cluster", "dev", "--user", "erin"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let kubeconfig = kube::config::Kubeconfig::from_yaml(std::str::from_utf8(&out.stdout).unwrap()).unwrap();
    let server = kubeconfig.clusters[0].cluster.as_ref().unwrap().server.clone().unwrap();
    assert_eq!(server, format!("{}/clusters/dev", t.stub.url));
    let token = kubeconfig.auth_infos[0].auth_info.as_ref().unwrap().token.clone().unwrap();
    let token = secrecy::ExposeSecret::expose_secret(&token).to_owned();
    let client = front_client(&t.pki, true).with_token(Some(token));
    let (status, headers, _) = call(&client, "GET", &format!("{server}/echo"), "").await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-impersonation-seen"], "impersonate-user=erin");

    let missing_key = std::process::Command::new(tether_bin())
        .args(["token", "--certs", "/nonexistent", "--user", "x", "--cluster", "dev"])
        .output()
        .unwrap();
    assert!(!missing_key.status.success());
    assert!(String::from_utf8_lossy(&missing_key.stderr).contains("/nonexistent/issuer.key"));
}

type WebSocket = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to the upstream's `/ws` echo through the tunnel, as `user`.
async fn open_websocket(t: &Tunnel, user: &str) -> WebSocket {
    let addr = t.stub.url.trim_start_matches("https://").to_owned();
    let stream = support::front_door_tls(&t.pki, &t.stub).await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("wss://{addr}/clusters/dev/ws").into_client_request().unwrap();
    let token = t.pki.token(user, &[], &["dev"]);
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, response) = tokio_tungstenite::client_async(request, stream).await.expect("upgrade through the tunnel");
    assert_eq!(response.status(), 101);
    ws
}

#[tokio::test]
async fn a_websocket_upgrade_becomes_a_raw_pipe_both_ways() {
    let t = tunnel(&[]).await;
    let mut ws = open_websocket(&t, "wendy").await;
    use tokio_tungstenite::tungstenite::Message;
    for i in 0..20u32 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn a_user_over_the_limit_gets_429_without_hurting_others() {
    let t = tunnel(&["--max-requests-per-user", "2"]).await;
    let client = front_client(&t.pki, false).with_token(Some(t.pki.token("flood", &[], &["dev"])));
    // Two held responses use up the allowance of user "flood"...
    let mut held = Vec::new();
    for _ in 0..2 {
        let response = client.get(format!("{}/clusters/dev/hold", t.stub.url).parse().unwrap()).await.unwrap();
        assert_eq!(response.status(), 200);
        held.push(response);
    }
    let (status, _, body) = call(&client, "GET", &format!("{}/clusters/dev/echo", t.stub.url), "").await;
    assert_eq!(status, 429);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["reason"], "TooManyRequests");
    assert!(json["message"].as_str().unwrap().contains(r#"user "flood" already has 2 requests in flight"#), "{json}");
    // ...while another user is served.
    let other = front_client(&t.pki, false).with_token(Some(t.pki.token("calm", &[], &["dev"])));
    assert_eq!(call(&other, "GET", &format!("{}/clusters/dev/echo", t.stub.url), "").await.0, 200);
    // A finished request frees its place.
    drop(held.pop());
    t.upstream.wait_abandoned(1).await;
    assert_eq!(call(&client, "GET", &format!("{}/clusters/dev/echo", t.stub.url), "").await.0, 200);
}

#[tokio::test]
async fn an_open_upgraded_connection_counts_against_the_limits_until_it_closes() {
    let mut t = tunnel(&["--max-requests-per-user", "1"]).await;
    let mut ws = open_websocket(&t, "wendy").await;
    let wendy = front_client(&t.pki, false).with_token(Some(t.pki.token("wendy", &[], &["dev"])));
    let (status, _, body) = call(&wendy, "GET", &format!("{}/clusters/dev/echo", t.stub.url), "").await;
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
    ws.close(None).await.unwrap();
    // Both directions closed: the stub's pipe ends and gives back the place.
    while ws.next().await.is_some() {}
    drop(ws);
    t.stub.proc.wait_for("upgraded stream closed").await;
    assert_eq!(call(&wendy, "GET", &format!("{}/clusters/dev/echo", t.stub.url), "").await.0, 200);
}

#[tokio::test]
async fn a_full_agent_connection_gives_429_and_a_second_replica_adds_room() {
    let t = tunnel(&["--max-requests-per-agent", "2"]).await;
    let client = front_client(&t.pki, true);
    let hold = || client.get(format!("{}/clusters/dev/hold", t.stub.url).parse().unwrap());
    let held = [hold().await.unwrap(), hold().await.unwrap()];
    assert!(held.iter().all(|r| r.status() == 200));
    let (status, _, body) = call(&client, "GET", &format!("{}/clusters/dev/echo", t.stub.url), "").await;
    assert_eq!(status, 429);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["reason"], "TooManyRequests");
    let message = json["message"].as_str().unwrap();
    assert!(message.contains(r#"every agent connection of cluster "dev" (1) already carries 2 requests"#), "{message}");
    assert_eq!(t.upstream.requests(), 2, "a refused request never reaches the upstream");

    // The second replica's connection has room of its own.
    t.pki.agent("dev", "agent-1");
    let _second = start_agent(&t.pki, &t.stub, "dev", "agent-1", &t.upstream.url()).await;
    assert_eq!(call(&client, "GET", &format!("{}/clusters/dev/echo", t.stub.url), "").await.0, 200);
    drop(held);
}
