//! How the agent reaches its API server: from a kubeconfig (address, CA and credential through
//! the `kube` crate) or from `--upstream URL` with `--upstream-ca`. In both, the upstream sees
//! the agent's credential and never the caller's `Authorization` (its tether token) or
//! `Impersonate-*` headers.

mod support;

use support::upstream::Upstream;
use support::{Pki, StubProc, front_client, spawn_agent, spawn_agent_with, start_agent};
use tether::identity::certs::{self, Signer, Validity};

/// An HTTPS upstream whose certificate comes from its own CA ("the cluster's CA").
async fn https_upstream(tmp: &std::path::Path) -> (Upstream, std::path::PathBuf) {
    let ca = certs::new_ca("cluster CA", Validity::days(1)).unwrap();
    let cert = Signer::from_pem(&ca.cert_pem, &ca.key_pem)
        .unwrap()
        .issue_stub(&["127.0.0.1".into()], Validity::days(1))
        .unwrap();
    let ca_file = tmp.join("cluster-ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    (Upstream::start_tls(&cert).await, ca_file)
}

async fn echo_with_caller_identity(pki: &Pki, stub: &StubProc, cluster: &str) -> http::HeaderMap {
    let client = front_client(pki, false);
    let request = http::Request::builder()
        .method("GET")
        .uri(format!("{}/clusters/{cluster}/echo", stub.url))
        .header("Impersonate-User", "system:admin")
        .header("IMPERSONATE-GROUP", "system:masters")
        .body(tether::bridge::empty())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.headers().clone()
}

#[tokio::test]
async fn a_kubeconfig_gives_the_agent_address_ca_and_credential() {
    let tmp = tempfile::tempdir().unwrap();
    let (upstream, ca_file) = https_upstream(tmp.path()).await;
    let kubeconfig = tmp.path().join("agent.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: {}
    certificate-authority: {}
users:
- name: agent
  user:
    token: agent-s3cret
contexts:
- name: ctx
  context: {{cluster: c, user: agent}}
current-context: ctx
",
            upstream.url(),
            ca_file.display()
        ),
    )
    .unwrap();
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let stub = StubProc::start(&pki).await;
    let mut agent = spawn_agent_with(&pki, &stub, "dev", "agent-0", &["--kubeconfig", kubeconfig.to_str().unwrap()]);
    agent.wait_for("connected to stub").await;
    let headers = echo_with_caller_identity(&pki, &stub, "dev").await;
    assert_eq!(headers["x-authorization-seen"], "Bearer agent-s3cret", "the agent's credential, not the caller's");
    assert_eq!(
        headers["x-impersonation-seen"], "impersonate-user=tester,impersonate-group=testers",
        "the token's identity, never the caller's own impersonation headers"
    );
}

#[tokio::test]
async fn an_https_upstream_url_is_verified_against_its_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let (upstream, ca_file) = https_upstream(tmp.path()).await;
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    pki.agent("untrusting", "agent-0");
    let stub = StubProc::start(&pki).await;
    let mut trusting =
        spawn_agent(&pki, &stub, "dev", "agent-0", &upstream.url(), &["--upstream-ca", ca_file.to_str().unwrap()]);
    trusting.wait_for("connected to stub").await;
    let headers = echo_with_caller_identity(&pki, &stub, "dev").await;
    assert_eq!(headers["x-authorization-seen"], "", "no credential configured, and the caller's is dropped");
    assert_eq!(headers["x-impersonation-seen"], "impersonate-user=tester,impersonate-group=testers");

    // Without the cluster's CA the agent refuses the upstream's certificate: 502, nothing sent.
    let before = upstream.requests();
    let _untrusting = start_agent(&pki, &stub, "untrusting", "agent-0", &upstream.url()).await;
    let client = front_client(&pki, false);
    let (status, _, body) = support::call(&client, "GET", &format!("{}/clusters/untrusting/echo", stub.url), "").await;
    assert_eq!(status, 502);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("could not reach its API server") && body.to_lowercase().contains("certificate"), "{body}");
    assert_eq!(upstream.requests(), before);
}
