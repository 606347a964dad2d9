//! The console as users meet it, against two real clusters: a hub cluster whose API server says
//! who a caller is (its static tokens: alice and bob, group "people") and whose RBAC says which
//! clusters they may reach (verb `proxy` on `clusters.tether.io`), and a target cluster behind
//! the stub and two agents. kubectl reaches the target with `tether credential` as its exec
//! plugin, through tokens that live 10 s, and never sees a 401; each refusal of the console is a
//! Kubernetes Status that says why, and the console down is a plain error, not a hang.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::kube::{DevCluster, Subject, Tether, eventually, expect_ok, run_tether, text, unique};
use support::{Proc, tether_bin};

/// The lifetime of the console's tokens in these tests: several pass during one test. kubectl
/// renews a fifth of it (2 s) before the end, which is how long a token it fetched may take to
/// reach the agent: 1 s (a 3 s lifetime) was too little on two loaded cores.
const TTL: &str = "10s";

/// Grants `user` the verb `proxy` on cluster `cluster` in the hub (what an admin does), and
/// waits until the hub's authorizer says so.
async fn grant(hub: &DevCluster, user: &str, cluster: &str) -> String {
    let binding = unique(&format!("tether-{user}-{cluster}"));
    hub.apply_as_admin(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {binding}
rules:
- apiGroups: [\"tether.io\"]
  resources: [\"clusters\"]
  resourceNames: [\"{cluster}\"]
  verbs: [\"proxy\"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {binding}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {binding}
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: {user}
"
    ))
    .await;
    eventually(&format!("the hub letting {user} proxy cluster {cluster}"), || async {
        if hub_allows(hub, user, cluster).await { Ok(()) } else { Err("not yet".to_owned()) }
    })
    .await;
    binding
}

/// The hub's own answer (a SubjectAccessReview, as the console asks it) to whether `user` of
/// group "people" may reach `cluster`. (`kubectl auth can-i` cannot ask about a resource the
/// server does not serve.)
async fn hub_allows(hub: &DevCluster, user: &str, cluster: &str) -> bool {
    let review = format!(
        "apiVersion: authorization.k8s.io/v1
kind: SubjectAccessReview
spec:
  user: {user}
  groups: [people]
  resourceAttributes: {{group: tether.io, resource: clusters, verb: proxy, name: {cluster}}}
"
    );
    let args = ["create", "-f", "-", "-o", "jsonpath={.status.allowed}"];
    let output = hub.kubectl_with_stdin(&hub.admin_kubeconfig(), &args, Some(&review)).await;
    expect_ok(&output, "a SubjectAccessReview") == "true"
}

/// `tether console` with the hub's admin kubeconfig; the process and its URL.
async fn start_console(certs: &Path, hub: &DevCluster) -> (Proc, String) {
    let hub_kubeconfig = hub.admin_kubeconfig();
    let args = ["console", "--certs", certs.to_str().unwrap(), "--listen", "127.0.0.1:0", "--ttl", TTL];
    let more = ["--hub-kubeconfig", hub_kubeconfig.to_str().unwrap(), "--admin-listen", "127.0.0.1:0"];
    let mut console = Proc::spawn("console", &[&args[..], &more[..]].concat());
    let line = console.wait_for("console listening").await;
    let addr = line.split("https=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    (console, format!("https://{addr}"))
}

/// `HOST:PORT` of a console's admin listener.
async fn admin_of(console: &mut Proc) -> String {
    support::admin::admin_addr(&console.wait_for("admin listening").await)
}

/// The console's audit lines (JSON on its stdout).
fn decisions(console: &Proc) -> Vec<Value> {
    console
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("asked").is_some())
        .collect()
}

fn minted_for(console: &Proc, user: &str) -> usize {
    decisions(console).iter().filter(|d| d["status"] == 200 && d["user"] == user).count()
}

fn token_file(dir: &Path, name: &str, token: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, token).unwrap();
    path
}

/// `tether credential` run as kubectl would run it, with a cache of its own.
async fn credential(
    console_url: &str,
    cluster: &str,
    certs: &Path,
    hub_token: &Path,
    cache: &Path,
) -> std::process::Output {
    let ca = certs.join("ca.crt");
    let output = tokio::process::Command::new(tether_bin())
        .args(["credential", "--console", console_url, "--cluster", cluster, "--ca", ca.to_str().unwrap()])
        .args(["--hub-token-file", hub_token.to_str().unwrap(), "--cache-dir", cache.to_str().unwrap()])
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(support::PATIENCE, output).await.expect("the plugin never hangs").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_with_the_exec_plugin_outlives_its_short_tokens_with_a_watch_and_repeated_gets() {
    let target = DevCluster::shared().await;
    let tether = Tether::start(target.clone()).await;
    let hub = DevCluster::start().await;
    let certs = tether.pki.path().to_owned();
    grant(&hub, "alice", "dev").await;
    // In the target cluster alice (as the hub knows her) may read ConfigMaps.
    target.bind("default", "ClusterRole", "view", Subject::User("alice")).await;
    target.wait_until_allowed("alice", &["people"], &["list", "configmaps", "-n", "default"]).await;
    let (console, console_url) = start_console(&certs, &hub).await;

    let work = tempfile::tempdir().unwrap();
    let alice_token = token_file(work.path(), "alice.hub-token", hub.env("ALICE_TOKEN"));
    let kubeconfig = work.path().join("kubeconfig");
    let args = ["kubeconfig", "--exec", "--console", &console_url, "--stub", &tether.stub.url, "--cluster", "dev"];
    let more =
        ["--certs", certs.to_str().unwrap(), "--user", "alice", "--hub-token-file", alice_token.to_str().unwrap()];
    run_tether(&[&args[..], &more[..], &["--merge", kubeconfig.to_str().unwrap()]].concat()).await;

    // A watch started with the first token, held across several lifetimes.
    let mut watch_command = std::process::Command::new("kubectl");
    watch_command
        .args(["--kubeconfig", kubeconfig.to_str().unwrap(), "get", "configmaps", "-n", "default", "-w", "-o", "name"])
        .env_remove("KUBECONFIG")
        .env("HOME", target.home());
    let mut watch = Proc::spawn_any("kubectl watch", &mut watch_command);

    // Repeated gets until the console has minted three tokens for alice: the gets have spanned
    // at least two expiries, each crossed without a failure.
    let mut gets = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while minted_for(&console, "alice") < 3 {
        let output = target.kubectl(&kubeconfig, &["get", "configmaps", "-n", "default", "-o", "name"]).await;
        expect_ok(&output, "kubectl get configmaps through the stub with the exec plugin");
        gets += 1;
        let minted = minted_for(&console, "alice");
        assert!(std::time::Instant::now() < deadline, "the console minted {minted} tokens in {gets} gets over 40 s");
    }
    let marker = unique("console-watch");
    target.create_configmap("default", &marker, &[]).await;
    watch.wait_for(&format!("configmap/{marker}")).await;
    assert_eq!(watch.count("Unauthorized") + watch.count("error"), 0, "{}", watch.log());
    eprintln!("{gets} gets and a watch over {} tokens of {TTL}", minted_for(&console, "alice"));

    // The stub let every one of alice's requests through: none refused for an expired token.
    let alice_lines: Vec<Value> = tether.stub_audit().into_iter().filter(|l| l["user"] == "alice").collect();
    assert!(alice_lines.len() >= gets, "{} audit lines for {gets} gets", alice_lines.len());
    assert!(alice_lines.iter().all(|l| l["status"] != 401), "{alice_lines:#?}");
    // Every decision names the user, the clusters and the token.
    for decision in decisions(&console) {
        assert_eq!(decision["allowed"], serde_json::json!(["dev"]), "{decision:#}");
        assert!(decision["jti"].is_string(), "{decision:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_refuses_what_the_hub_refuses_and_says_why() {
    let hub = DevCluster::start().await;
    let pki = support::Pki::new();
    let certs = pki.path().to_owned();
    let binding = grant(&hub, "alice", "dev").await;
    let (mut console, console_url) = start_console(&certs, &hub).await;
    let work = tempfile::tempdir().unwrap();
    let alice = token_file(work.path(), "alice", hub.env("ALICE_TOKEN"));
    let stranger = token_file(work.path(), "stranger", "not-a-token-the-hub-knows");
    let cache = |n: &str| work.path().join(n);

    // alice, allowed on dev: an ExecCredential, cached with mode 0600.
    let ok = credential(&console_url, "dev", &certs, &alice, &cache("a")).await;
    let exec: Value = serde_json::from_slice(&ok.stdout).unwrap_or_else(|_| panic!("{}", text(&ok)));
    assert_eq!(exec["kind"], "ExecCredential");
    assert!(exec["status"]["token"].as_str().is_some_and(|t| t.split('.').count() == 3));
    assert!(exec["status"]["expirationTimestamp"].is_string());
    for entry in std::fs::read_dir(cache("a")).unwrap() {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(entry.unwrap().metadata().unwrap().permissions().mode() & 0o777, 0o600);
    }

    // alice asking for prod: 403 naming it, and no token.
    let prod = credential(&console_url, "prod", &certs, &alice, &cache("b")).await;
    assert!(!prod.status.success() && prod.stdout.is_empty(), "{}", text(&prod));
    assert!(text(&prod).contains("403") && text(&prod).contains("may not reach cluster(s) prod"), "{}", text(&prod));

    // A credential the hub does not know: 401.
    let unknown = credential(&console_url, "dev", &certs, &stranger, &cache("c")).await;
    assert!(!unknown.status.success() && text(&unknown).contains("401"), "{}", text(&unknown));
    assert!(text(&unknown).contains("does not know this credential"), "{}", text(&unknown));

    // bob is known but granted nothing.
    let bob = token_file(work.path(), "bob", hub.env("BOB_TOKEN"));
    let refused = credential(&console_url, "dev", &certs, &bob, &cache("d")).await;
    assert!(text(&refused).contains("user \"bob\" may not reach cluster(s) dev"), "{}", text(&refused));

    // The binding revoked: the next minting is refused (once the hub's authorizer has seen it).
    hub.admin(&["delete", "clusterrolebinding", &binding]).await;
    let mut attempt = 0;
    eventually("the console refusing alice after the revocation", || {
        attempt += 1;
        let (url, certs, alice, dir) =
            (console_url.clone(), certs.clone(), alice.clone(), cache(&format!("r{attempt}")));
        async move {
            let output = credential(&url, "dev", &certs, &alice, &dir).await;
            if text(&output).contains("may not reach cluster(s) dev") { Ok(()) } else { Err(text(&output)) }
        }
    })
    .await;

    // Each decision is one audit line with its status.
    let statuses: Vec<u64> = decisions(&console).iter().map(|d| d["status"].as_u64().unwrap()).collect();
    assert!(statuses.starts_with(&[200, 403, 401, 403]), "{statuses:?}");
    assert_eq!(decisions(&console)[2]["user"], Value::Null, "no user for an unknown credential");

    // Its probes and metrics, like the stub's and the agent's.
    let admin = admin_of(&mut console).await;
    assert_eq!(support::admin::admin_get(&admin, "/healthz").await.0, 200);
    assert_eq!(support::admin::admin_get(&admin, "/readyz").await.0, 200);
    let (_, metrics) = support::admin::admin_get(&admin, "/metrics").await;
    let count = |outcome: &str| {
        support::admin::sample(&metrics, &format!("tether_console_decisions_total{{outcome=\"{outcome}\"}}"))
    };
    // A retry above may have minted once more before the authorizer saw the revocation: each
    // minting is an audited 200.
    let minted = statuses.iter().filter(|&&status| status == 200).count();
    assert_eq!(count("minted"), Some(minted as f64), "{statuses:?}\n{metrics}");
    assert_eq!(count("unauthenticated"), Some(1.0), "{metrics}");
    assert!(count("forbidden").is_some_and(|n| n >= 3.0), "{metrics}");

    // A bad body is refused before the hub is asked, naming what is wrong; other paths and
    // methods get a Status too.
    let raw = support::front_client_with(&pki, false, None, Some(hub.env("ALICE_TOKEN").to_owned()));
    let token_url = format!("{console_url}/v1/token");
    let (status, _, body) = support::call(&raw, "POST", &token_url, r#"{"clusters":["Prod/x"]}"#).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("Prod/x"), "{}", String::from_utf8_lossy(&body));
    assert_eq!(support::call(&raw, "GET", &token_url, "").await.0, 405);
    assert_eq!(support::call(&raw, "POST", &format!("{console_url}/v1/other"), "{}").await.0, 404);
    assert_eq!(decisions(&console).last().unwrap()["status"], 400, "the refused body is audited");

    // The console down: a plain error from the plugin at once, not a hang.
    console.signal("TERM");
    console.wait_exit().await;
    let started = std::time::Instant::now();
    let down = credential(&console_url, "dev", &certs, &alice, &cache("e")).await;
    assert!(!down.status.success() && text(&down).contains("cannot reach the console"), "{}", text(&down));
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_kubeconfigs_merged_into_one_reach_each_cluster_with_its_own_credential() {
    let dev = DevCluster::shared().await;
    let tether = Tether::start(dev.clone()).await;
    // A second cluster, "prod", behind an agent of its own on the same stub.
    let prod = DevCluster::start().await;
    tether.pki.agent("prod", "agent-0");
    let prod_kubeconfig = prod.agent_kubeconfig();
    let source = ["--kubeconfig", prod_kubeconfig.to_str().unwrap()];
    let mut prod_agent = support::spawn_agent_with(&tether.pki, &tether.stub, "prod", "agent-0", &source);
    prod_agent.wait_for("connected to stub").await;
    for cluster in [&*dev, &prod] {
        cluster.bind("default", "ClusterRole", "view", Subject::User("alice")).await;
        cluster.wait_until_allowed("alice", &[], &["list", "configmaps", "-n", "default"]).await;
    }

    // One kubeconfig per cluster, merged into the same file one after the other, as a user
    // does with what two admins handed out.
    let work = tempfile::tempdir().unwrap();
    let merged = work.path().join("config");
    let certs = tether.pki.path().to_str().unwrap().to_owned();
    for cluster in ["dev", "prod"] {
        let args =
            ["kubeconfig", "--certs", &certs, "--stub", &tether.stub.url, "--cluster", cluster, "--user", "alice"];
        run_tether(&[&args[..], &["--merge", merged.to_str().unwrap()]].concat()).await;
    }
    let config = kube::config::Kubeconfig::read_from(&merged).unwrap();
    let users: Vec<&str> = config.auth_infos.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(users, ["alice@tether-dev", "alice@tether-prod"], "one user entry per cluster");
    assert_eq!(config.current_context.as_deref(), Some("alice@dev"), "the first merge chose it; the second kept it");

    // Each context reaches its own cluster (a ConfigMap that exists only there).
    for (cluster, context) in [(&*dev, "alice@dev"), (&prod, "alice@prod")] {
        let name = unique("merged");
        cluster.create_configmap("default", &name, &[]).await;
        let output = dev
            .kubectl(&merged, &["--context", context, "get", "configmap", &name, "-n", "default", "-o", "name"])
            .await;
        assert!(expect_ok(&output, context).contains(&name), "{}", text(&output));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_its_certificate_gets_a_token_bound_to_that_certificate() {
    let target = DevCluster::shared().await;
    let tether = Tether::start(target.clone()).await;
    let hub = DevCluster::start().await;
    let certs = tether.pki.path().to_owned();
    run_tether(&["certs", "service", "--dir", certs.to_str().unwrap(), "--name", "ci-bot"]).await;
    let user = "tether:service:ci-bot";
    grant(&hub, user, "dev").await;
    target.bind("default", "ClusterRole", "view", Subject::User(user)).await;
    target.wait_until_allowed(user, &[], &["list", "configmaps", "-n", "default"]).await;
    let (console, console_url) = start_console(&certs, &hub).await;
    let (cert, key) = (certs.join("services/ci-bot.crt"), certs.join("services/ci-bot.key"));

    // No hub token: the service certificate is the credential.
    let service = support::front_client_with(&tether.pki, false, Some((&cert, &key)), None);
    let (status, _, body) =
        support::call(&service, "POST", &format!("{console_url}/v1/token"), r#"{"clusters":["dev"]}"#).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((answer["user"].as_str(), answer["clusters"].clone()), (Some(user), serde_json::json!(["dev"])));
    let token = answer["token"].as_str().unwrap().to_owned();

    // Through the stub: good with the certificate, refused without it.
    let url = tether.url("/api/v1/namespaces/default/configmaps");
    let with_cert = support::front_client_with(&tether.pki, true, Some((&cert, &key)), Some(token.clone()));
    let (status, _, body) = support::call(&with_cert, "GET", &url, "").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let without = support::front_client_with(&tether.pki, true, None, Some(token));
    assert_eq!(support::call(&without, "GET", &url, "").await.0, 401, "a bound token without its certificate");

    // An agent's certificate is no service.
    let agent = (certs.join("agents/dev/agent-0.crt"), certs.join("agents/dev/agent-0.key"));
    let impostor = support::front_client_with(&tether.pki, false, Some((&agent.0, &agent.1)), None);
    let (status, _, body) =
        support::call(&impostor, "POST", &format!("{console_url}/v1/token"), r#"{"clusters":["dev"]}"#).await;
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("not a tether service certificate"));
    assert_eq!(decisions(&console).iter().filter(|d| d["user"] == user && d["status"] == 200).count(), 1);
}
