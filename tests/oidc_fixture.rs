//! The OpenID Connect provider fixture (`tests/support/oidc.rs`) against the real
//! kube-apiserver v1.20.2: a dev cluster started with the provider's `--oidc-*` flags, the device
//! authorization grant played by hand (the CLI's side with `oidc_browser.py authorize` and
//! `poll`, the user's side with [`OidcProvider::complete_device_login`]), and a TokenReview of
//! the id_token, which the API server must authenticate as alice's email with her group.
//!
//! kube-apiserver v1.20 initialises its OIDC authenticator lazily: it first fetches the
//! provider's discovery about 10 s after it starts (and retries every 10 s), answering
//! "authenticator not initialized" until then. The TokenReview is retried, bounded, while it
//! says so.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::Pki;
use support::kube::{KUBECTL_LIMIT, run, str_at, text};
use support::oidc::{OidcProvider, run_browser};
use tokio::time::Instant;

/// `dev-cluster.sh start` takes about 8 s, but builds the Kubernetes binaries first on a
/// machine that lacks them (5 to 12 minutes), which must not fail the test.
const START_LIMIT: Duration = Duration::from_secs(20 * 60);
/// How long kube-apiserver may take to accept the provider's tokens after it is ready: its
/// first discovery comes about 10 s after it starts, the next ones 10 s apart.
const AUTHENTICATOR_LIMIT: Duration = Duration::from_secs(40);
/// The provider's only user in this test.
const USERS: &str = "alice:secret:alice@example.test:people";

fn dev_cluster_script() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dev-cluster.sh"))
}

/// A dev cluster (etcd, kube-apiserver, controller-manager, scheduler; no node) in a directory of
/// its own, stopped by `dev-cluster.sh stop` when dropped, also when the test fails.
struct Cluster {
    dir: tempfile::TempDir,
    /// HOME and KUBECACHEDIR of kubectl, so nothing touches the real home.
    home: tempfile::TempDir,
}

impl Cluster {
    /// `dev-cluster.sh start --no-node` with each of `apiserver_flags` passed on to
    /// kube-apiserver (`--apiserver-flag`).
    async fn start(apiserver_flags: &[String]) -> Cluster {
        // The guard exists before the start, so that a failed or timed-out start still stops
        // whatever the script launched.
        let cluster = Cluster {
            dir: tempfile::Builder::new().prefix("tether-oidc-cluster-").tempdir().unwrap(),
            home: tempfile::Builder::new().prefix("tether-kubectl-home-").tempdir().unwrap(),
        };
        let mut command = tokio::process::Command::new("bash");
        command.arg(dev_cluster_script()).args(["start", "--no-node"]);
        for flag in apiserver_flags {
            command.arg("--apiserver-flag").arg(flag);
        }
        command.arg(cluster.dir.path());
        let output = run(command, None, START_LIMIT, "scripts/dev-cluster.sh start").await;
        assert!(output.status.success(), "scripts/dev-cluster.sh start failed ({}):\n{}", output.status, text(&output));
        cluster
    }

    /// The TokenReview of `token` by the cluster admin: its `status`.
    async fn token_review(&self, token: &str) -> Value {
        let review = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        });
        let mut command = tokio::process::Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(self.dir.path().join("admin.kubeconfig"))
            .args(["create", "-f", "-", "-o", "json"])
            .env_remove("KUBECONFIG")
            .env("HOME", self.home.path())
            .env("KUBECACHEDIR", self.home.path().join(".kube/cache"));
        let output =
            run(command, Some(review.to_string().as_bytes()), KUBECTL_LIMIT, "kubectl create TokenReview").await;
        assert!(output.status.success(), "kubectl create TokenReview failed ({}):\n{}", output.status, text(&output));
        let answer: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("TokenReview answer is not JSON ({e}):\n{}", text(&output)));
        answer["status"].clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // `stop` signals only the PIDs that `start` recorded in the directory.
        let result =
            std::process::Command::new("bash").arg(dev_cluster_script()).arg("stop").arg(self.dir.path()).output();
        match result {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!("dev-cluster.sh stop {} failed:\n{}", self.dir.path().display(), text(&output)),
            Err(e) => eprintln!("cannot run dev-cluster.sh stop: {e}"),
        }
    }
}

/// The CLI's first step: the device authorization request (client tether, scope openid email
/// groups offline_access), as JSON.
async fn device_authorization(provider: &OidcProvider) -> Value {
    let output = run_browser(&["authorize", "--ca", provider.ca.to_str().unwrap(), &provider.issuer]).await;
    assert!(output.status.success(), "device authorization failed:\n{}", text(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The whole device flow for alice: authorization, her sign-in, the token response.
async fn device_flow(provider: &OidcProvider) -> Value {
    let authorization = device_authorization(provider).await;
    provider.complete_device_login(str_at(&authorization, "verification_uri_complete"), "alice", "secret").await;
    // The user has signed in already, so the first poll gets the tokens.
    let interval = authorization["interval"].as_u64().unwrap_or(5).to_string();
    let output = run_browser(&[
        "poll",
        "--ca",
        provider.ca.to_str().unwrap(),
        "--interval",
        &interval,
        "--timeout",
        "20",
        // `--`: a device code is random base64url and may begin with `-`, which argparse would
        // take for an option.
        "--",
        &provider.issuer,
        str_at(&authorization, "device_code"),
    ])
    .await;
    assert!(output.status.success(), "polling the token endpoint failed:\n{}", text(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_accepts_an_id_token_from_the_device_flow() {
    let started = Instant::now();
    let pki = Pki::new();
    let provider = OidcProvider::start(&pki, USERS).await;

    // A wrong password gets no further than the sign-in page.
    let authorization = device_authorization(&provider).await;
    let ca = provider.ca.to_str().unwrap();
    let url = str_at(&authorization, "verification_uri_complete");
    let refused = run_browser(&["login", "--ca", ca, "--user", "alice", "--password", "wrong", url]).await;
    assert!(!refused.status.success(), "a wrong password signed in:\n{}", text(&refused));
    assert!(text(&refused).contains("refused user 'alice'"), "{}", text(&refused));

    // The cluster starts while alice signs in.
    let flags = provider.apiserver_flags();
    let (cluster, tokens) = tokio::join!(Cluster::start(&flags), device_flow(&provider));
    let id_token = str_at(&tokens, "id_token");
    assert!(!id_token.is_empty(), "no id_token in {tokens}");
    assert!(!str_at(&tokens, "refresh_token").is_empty(), "no refresh_token (offline_access) in {tokens}");
    eprintln!("cluster up and tokens issued after {:.1?}", started.elapsed());

    let deadline = Instant::now() + AUTHENTICATOR_LIMIT;
    let status = loop {
        let status = cluster.token_review(id_token).await;
        if status["authenticated"] == json!(true) {
            break status;
        }
        let error = str_at(&status, "error");
        assert!(error.contains("authenticator not initialized"), "TokenReview refused the id_token: {status}");
        assert!(
            Instant::now() < deadline,
            "kube-apiserver's OIDC authenticator not initialized within {AUTHENTICATOR_LIMIT:?}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("TokenReview authenticated after {:.1?}: {status}", started.elapsed());
    assert_eq!(str_at(&status, "user.username"), "alice@example.test", "{status}");
    let groups: Vec<&str> = status["user"]["groups"].as_array().unwrap().iter().map(|g| g.as_str().unwrap()).collect();
    assert!(groups.contains(&"people"), "{status}");

    // A token whose signature does not match is refused (not "not initialized" any more).
    let (head, _signature) = id_token.rsplit_once('.').unwrap();
    let forged = cluster.token_review(&format!("{head}.AAAA")).await;
    assert_ne!(forged["authenticated"], json!(true), "a forged token was accepted: {forged}");
}
