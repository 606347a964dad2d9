//! `tether login` as a person uses it: the hub's API server trusts a real OpenID Connect
//! provider (the `oidc-provider` package, `scripts/oidc-provider/`), the console names that
//! provider, `tether login` starts the device grant and prints where to go, the person signs in
//! in a browser (here a scripted one that fills in the provider's forms: code, login, consent),
//! and from then on kubectl's exec plugin (`tether credential --login`) turns the id token into
//! tether tokens through the console, the hub's RBAC deciding on the provider's user and groups.

mod support;

use serde_json::Value;
use support::Proc;
use support::kube::{DevCluster, Subject, Tether, eventually, run_tether, text, unique};
use support::oidc::OidcProvider;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_with_the_device_grant_and_kubectl_uses_the_id_token_through_the_console() {
    let target = DevCluster::shared().await;
    let tether = Tether::start(target.clone()).await;
    let certs = tether.pki.path().to_owned();
    let provider = OidcProvider::start(&tether.pki, "alice:correct-horse:alice@example.test:people").await;
    let hub = DevCluster::start_with_apiserver_flags(&provider.apiserver_flags()).await;
    let user = "alice@example.test";

    // The hub grants the provider's alice cluster dev; the target lets her read ConfigMaps.
    let binding = unique("oidc-alice");
    hub.apply_as_admin(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {binding}}}
rules:
- {{apiGroups: [tether.io], resources: [clusters], resourceNames: [dev], verbs: [proxy]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {binding}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {binding}}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: Group, name: people}}]
"
    ))
    .await;
    target.bind("default", "ClusterRole", "view", Subject::User(user)).await;
    target.wait_until_allowed(user, &["people"], &["list", "configmaps", "-n", "default"]).await;

    let hub_kubeconfig = hub.admin_kubeconfig();
    let console_args = ["console", "--certs", certs.to_str().unwrap(), "--listen", "127.0.0.1:0"];
    let oidc = ["--oidc-issuer", &provider.issuer, "--hub-kubeconfig", hub_kubeconfig.to_str().unwrap()];
    let mut console = Proc::spawn("console", &[&console_args[..], &oidc[..]].concat());
    let line = console.wait_for("console listening").await;
    let console_url = format!("https://{}", line.split("https=").nth(1).unwrap().split_whitespace().next().unwrap());

    // tether login, with the HOME kubectl runs with: the plugin finds the sign-in there.
    let ca = certs.join("ca.crt");
    let home = target.home().to_str().unwrap().to_owned();
    let mut login = Proc::spawn_with_env(
        "tether login",
        &["login", "--console", &console_url, "--ca", ca.to_str().unwrap()],
        &[("HOME", &home), ("XDG_CACHE_HOME", "")],
    );
    let line = login.wait_for("(or open ").await;
    let complete = line.split("(or open ").nth(1).unwrap().trim_end_matches(')').trim().to_owned();
    assert!(login.log().contains("enter the code"), "{}", login.log());
    provider.complete_device_login(&complete, "alice", "correct-horse").await;
    let signed_in = login.wait_for("signed in to").await;
    assert!(signed_in.contains(user), "{signed_in}");
    assert!(login.wait_exit().await.success(), "{}", login.log());

    // A kubeconfig whose user runs the plugin with that sign-in.
    let work = tempfile::tempdir().unwrap();
    let kubeconfig = work.path().join("config");
    let args = ["kubeconfig", "--exec", "--login", "--console", &console_url, "--stub", &tether.stub.url];
    let more = ["--cluster", "dev", "--user", "alice", "--certs", certs.to_str().unwrap()];
    run_tether(&[&args[..], &more[..], &["--merge", kubeconfig.to_str().unwrap()]].concat()).await;

    // The hub's API server fetches the provider's keys about 10 s after it starts; until then
    // the console's TokenReview says no, and kubectl says why.
    let name = unique("oidc");
    target.create_configmap("default", &name, &[]).await;
    let got: String = eventually("kubectl through the console with the signed-in id token", || async {
        let output = target.kubectl(&kubeconfig, &["get", "configmap", &name, "-n", "default", "-o", "name"]).await;
        if output.status.success() { Ok(text(&output)) } else { Err(text(&output)) }
    })
    .await;
    assert!(got.contains(&name), "{got}");

    // The console saw the provider's user and groups (from the hub's TokenReview of the id token).
    let minted: Vec<Value> = console
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|d| d["status"] == 200)
        .collect();
    assert!(!minted.is_empty(), "{}", console.log());
    assert_eq!(minted[0]["user"], user, "{:#}", minted[0]);
    assert!(minted[0]["groups"].as_array().unwrap().iter().any(|g| g == "people"), "{:#}", minted[0]);
}
