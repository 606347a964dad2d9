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
        .header("X-Remote-User", "system:admin")
        .header("X-REMOTE-GROUP", "system:masters")
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

#[tokio::test]
async fn in_cluster_mode_uses_the_pods_service_account_files_and_environment_and_follows_token_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let (upstream, ca_file) = https_upstream(tmp.path()).await;
    let sa = tmp.path().join("serviceaccount");
    std::fs::create_dir(&sa).unwrap();
    std::fs::copy(&ca_file, sa.join("ca.crt")).unwrap();
    std::fs::write(sa.join("token"), "sa-token-1").unwrap(); // as the kubelet writes it: no newline
    std::fs::write(sa.join("namespace"), "tether\n").unwrap();
    let pki = Pki::new();
    pki.agent("dev", "agent-0");
    let stub = StubProc::start(&pki).await;
    let stub_addr = format!("localhost:{}", stub.quic.rsplit(':').next().unwrap());
    let certs = pki.path().to_str().unwrap();
    let args =
        ["agent", "--certs", certs, "--cluster", "dev", "--name", "agent-0", "--stub", &stub_addr, "--in-cluster"];
    let sa_dir = ["--serviceaccount-dir", sa.to_str().unwrap()];
    let port = upstream.addr.port().to_string();
    let env = [("KUBERNETES_SERVICE_HOST", "127.0.0.1"), ("KUBERNETES_SERVICE_PORT", port.as_str())];
    let mut agent = support::Proc::spawn_with_env("agent", &[&args[..], &sa_dir[..]].concat(), &env);
    agent.wait_for("connected to stub").await;
    let headers = echo_with_caller_identity(&pki, &stub, "dev").await;
    assert_eq!(headers["x-authorization-seen"], "Bearer sa-token-1", "the pod's service account token");

    // The kubelet rotates the token (a new file swapped in): the next request carries the new one.
    tether::identity::files::write_atomic(&sa.join("token"), b"sa-token-2", tether::identity::files::Mode::Secret)
        .unwrap();
    let headers = echo_with_caller_identity(&pki, &stub, "dev").await;
    assert_eq!(headers["x-authorization-seen"], "Bearer sa-token-2", "the rotated token");

    // Outside a pod the same flags fail at once, naming what is missing.
    let mut outside = support::Proc::spawn("agent outside", &[&args[..], &sa_dir[..]].concat());
    let status = outside.wait_exit().await;
    assert!(!status.success());
    assert!(outside.log().contains("KUBERNETES_SERVICE_HOST is not set"), "{}", outside.log());
}
