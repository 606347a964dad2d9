//! End to end against a real kube-apiserver (v1.20.2 from scripts/dev-cluster.sh): kubectl and a
//! raw HTTPS client talk to the stub with tether tokens; two agents forward as `tether-agent`
//! impersonating the token's user and groups. The API server then authenticates, checks the
//! impersonation, applies RBAC and writes its own audit log, which these tests read to prove
//! who it saw (and which requests it never saw).
//!
//! The tests of this file share one dev cluster (starting one costs about 8 s; see
//! `DevCluster::shared`), each with its own stub and agents. They keep apart by unique object
//! names, which also serve as markers to find a request in either audit log. RBAC needed by a
//! test is granted by that test, under a binding of its own.

mod support;

use http_body_util::BodyExt;
use serde_json::Value;
use support::PATIENCE;
use support::kube::{
    ADMIN_USER, AGENT_USER, CLUSTER, DevCluster, Subject, Tether, effective_user, expect_failure, expect_ok,
    run_tether, str_at, text, token_from, unique,
};
use tether::identity::files::Mode;

/// A stub and two agents in front of the shared dev cluster.
async fn tether() -> Tether {
    Tether::start(DevCluster::shared().await).await
}

/// Gives `user` the `view` ClusterRole in `default` and waits until RBAC applies it.
async fn grant_view(cluster: &DevCluster, user: &str) {
    cluster.bind("default", "ClusterRole", "view", Subject::User(user)).await;
    cluster.wait_until_allowed(user, &[], &["watch", "configmaps", "-n", "default"]).await;
    cluster.wait_until_allowed(user, &[], &["list", "pods", "-n", "default"]).await;
}

/// A Kubernetes `Status` body: (code, reason, message).
fn status_of(body: &Value) -> (u64, &str, &str) {
    assert_eq!(body["kind"], "Status", "not a Status body: {body}");
    (body["code"].as_u64().unwrap_or(0), str_at(body, "reason"), str_at(body, "message"))
}

/// Asserts the event was made by the agent's credential impersonating `user`.
fn assert_impersonated(event: &Value, user: &str) {
    assert_eq!(str_at(event, "user.username"), AGENT_USER, "{event:#}");
    assert_eq!(str_at(event, "impersonatedUser.username"), user, "{event:#}");
}

fn response_code(event: &Value) -> u64 {
    event["responseStatus"]["code"].as_u64().unwrap_or(0)
}

// -------------------------------------------------------------------------------------------------
// The harness itself: works today, with the admin's and agent's kubeconfigs only (no tether).
// -------------------------------------------------------------------------------------------------

#[tokio::test]
async fn dev_cluster_starts_and_admin_can_list_namespaces() {
    let cluster = DevCluster::shared().await;
    for pid in cluster.pids() {
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} of the dev cluster is gone");
    }
    let namespaces = cluster.admin(&["get", "namespaces", "-o", "name"]).await;
    assert!(namespaces.contains("namespace/default") && namespaces.contains("namespace/kube-system"), "{namespaces}");

    // RBAC as the tests use it: `view` (aggregated by the harness, as there is no controller
    // manager) lets a user read ConfigMaps but not Secrets.
    let user = unique("harness-user");
    cluster.bind("default", "ClusterRole", "view", Subject::User(&user)).await;
    cluster.wait_until_allowed(&user, &[], &["list", "configmaps", "-n", "default"]).await;
    let secrets =
        cluster.kubectl(&cluster.admin_kubeconfig(), &["auth", "can-i", "get", "secrets", "--as", &user]).await;
    assert_eq!(String::from_utf8_lossy(&secrets.stdout).trim(), "no", "{}", text(&secrets));

    // What the agents will do, without tether: the agent credential impersonating a user.
    let name = unique("harness");
    cluster.create_configmap("default", &name, &[("e2e", "harness")]).await;
    let agent = cluster.agent_kubeconfig();
    let as_user =
        cluster.kubectl(&agent, &["get", "configmap", &name, "-n", "default", "-o", "name", "--as", &user]).await;
    assert!(expect_ok(&as_user, "agent impersonating a viewer").contains(&format!("configmap/{name}")));
    // The agent's own identity may read nothing.
    let itself = cluster.kubectl(&agent, &["get", "configmap", &name, "-n", "default"]).await;
    assert!(expect_failure(&itself, "agent as itself").contains(&format!("User \"{AGENT_USER}\" cannot get")));

    // The audit log shows all three: the admin, the agent impersonating, the agent refused.
    let events =
        cluster.wait_for_audit_where(&name, "by the agent as itself", |e| effective_user(e) == AGENT_USER).await;
    assert!(events.iter().any(|e| str_at(e, "user.username") == ADMIN_USER && e["verb"] == "create"), "{events:#?}");
    assert!(
        events.iter().any(|e| str_at(e, "impersonatedUser.username") == user
            && str_at(e, "user.username") == AGENT_USER
            && response_code(e) == 200),
        "{events:#?}"
    );
    assert!(events.iter().any(|e| effective_user(e) == AGENT_USER && response_code(e) == 403), "{events:#?}");
    cluster.audit_barrier().await;
}

// -------------------------------------------------------------------------------------------------
// RBAC applies to the token's user, as the API server decides it.
// -------------------------------------------------------------------------------------------------

#[tokio::test]
async fn alice_with_view_lists_pods_and_configmaps_and_sees_what_admin_created() {
    let t = tether().await;
    grant_view(&t.cluster, "alice").await;
    let alice = t.user_kubeconfig("alice", &[]).await;

    let pods = t.kubectl(&alice, &["get", "pods", "-n", "default"]).await;
    expect_ok(&pods, "alice lists pods in default");

    let name = unique("seen-by-alice");
    t.cluster.create_configmap("default", &name, &[]).await;
    let list = t.kubectl(&alice, &["get", "configmaps", "-n", "default", "-o", "name"]).await;
    assert!(expect_ok(&list, "alice lists configmaps").contains(&format!("configmap/{name}")), "{}", text(&list));
    let data = t.kubectl(&alice, &["get", "configmap", &name, "-n", "default", "-o", "jsonpath={.data.made-by}"]).await;
    assert_eq!(expect_ok(&data, "alice reads the admin's configmap"), "admin");

    // The API server saw the agent impersonating alice, not alice's token.
    let events = t.cluster.wait_for_audit_where(&name, "impersonating alice", |e| effective_user(e) == "alice").await;
    for event in events.iter().filter(|e| effective_user(e) == "alice") {
        assert_impersonated(event, "alice");
        assert_eq!(response_code(event), 200, "{event:#}");
    }
}

#[tokio::test]
async fn rbac_denials_are_the_api_servers_own_403_naming_the_user() {
    let t = tether().await;
    grant_view(&t.cluster, "alice").await;
    let alice = t.user_kubeconfig("alice", &[]).await;
    let bob = t.user_kubeconfig("bob", &[]).await;

    let secrets = t.kubectl(&alice, &["get", "secrets", "-n", "kube-system"]).await;
    let said = expect_failure(&secrets, "alice lists secrets in kube-system");
    assert!(
        said.contains("Forbidden")
            && said.contains(
                r#"User "alice" cannot list resource "secrets" in API group "" in the namespace "kube-system""#
            ),
        "{said}"
    );

    let namespaces = t.kubectl(&alice, &["get", "namespaces"]).await;
    let said = expect_failure(&namespaces, "alice lists namespaces");
    assert!(said.contains(r#"User "alice" cannot list resource "namespaces""#), "{said}");

    let configmaps = t.kubectl(&bob, &["get", "configmaps", "-n", "default"]).await;
    let said = expect_failure(&configmaps, "bob (no bindings) lists configmaps");
    assert!(said.contains(r#"User "bob" cannot list resource "configmaps""#), "{said}");

    // The raw answer is the API server's Status (with its `details`), passed through unchanged.
    let token = t.token("alice", &[], &[CLUSTER], "1h").await;
    let marker = unique("secret");
    let (status, headers, body) =
        t.get(false, Some(&token), &format!("/api/v1/namespaces/kube-system/secrets/{marker}"), &[]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    let (code, reason, message) = status_of(&body);
    assert_eq!((code, reason), (403, "Forbidden"), "{body}");
    assert!(message.contains(r#"User "alice" cannot get resource "secrets""#), "{body}");
    assert_eq!(body["details"]["name"], marker.as_str(), "{body}");
    let events = t.cluster.wait_for_audit(&marker, 1).await;
    assert_impersonated(&events[0], "alice");
    assert_eq!(response_code(&events[0]), 403);
}

#[tokio::test]
async fn groups_in_the_token_reach_rbac_as_impersonated_groups() {
    let t = tether().await;
    let group = unique("viewers");
    let user = unique("erin");
    t.cluster.bind("default", "ClusterRole", "view", Subject::Group(&group)).await;
    t.cluster.wait_until_allowed(&user, &[&group], &["get", "configmaps", "-n", "default"]).await;
    let name = unique("for-a-group");
    t.cluster.create_configmap("default", &name, &[]).await;

    let in_group = t.user_kubeconfig(&user, &[&group]).await;
    let got = t.kubectl(&in_group, &["get", "configmap", &name, "-n", "default", "-o", "name"]).await;
    assert!(expect_ok(&got, "a member of the group reads").contains(&format!("configmap/{name}")));

    let without = t.user_kubeconfig(&user, &[]).await;
    let got = t.kubectl(&without, &["get", "configmap", &name, "-n", "default"]).await;
    assert!(expect_failure(&got, "the same user outside the group").contains(&format!("User \"{user}\" cannot get")));

    let events = t.cluster.wait_for_audit_where(&name, "with the group", |e| effective_user(e) == user).await;
    let with_group = events
        .iter()
        .find(|e| e["impersonatedUser"]["groups"].as_array().is_some_and(|g| g.iter().any(|g| g == group.as_str())))
        .unwrap_or_else(|| panic!("no event impersonating group {group}: {events:#?}"));
    assert_impersonated(with_group, &user);
    assert_eq!(response_code(with_group), 200);
}

// -------------------------------------------------------------------------------------------------
// Watches, writes, exec.
// -------------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_watch_through_the_tunnel_delivers_a_configmap_created_after_it_started() {
    let t = tether().await;
    grant_view(&t.cluster, "alice").await;
    let token = t.token("alice", &[], &[CLUSTER], "1h").await;
    for h2 in [false, true] {
        let marker = unique("watched");
        // Only this ConfigMap matches the selector, so other tests' objects never show up here.
        let query = format!("labelSelector=e2e-watch%3D{marker}");
        let collection = "/api/v1/namespaces/default/configmaps";
        let (status, _, list) = t.get(h2, Some(&token), &format!("{collection}?{query}"), &[]).await;
        assert_eq!(status, 200, "list (h2={h2}): {list}");
        let version = list["metadata"]["resourceVersion"].as_str().expect("list resourceVersion");

        let request = http::Request::get(
            t.url(&format!("{collection}?{query}&watch=1&resourceVersion={version}&timeoutSeconds=120")),
        )
        .header("authorization", format!("Bearer {token}"))
        .body(tether::bridge::full(bytes::Bytes::new()))
        .unwrap();
        let client = t.client(h2);
        // The API server sends the response head as soon as the watch is registered, so once
        // it is here the watch has started.
        let response = tokio::time::timeout(PATIENCE, client.request(request))
            .await
            .unwrap_or_else(|_| panic!("watch (h2={h2}): no response head within {PATIENCE:?}"))
            .expect("watch answers");
        assert_eq!(response.status(), 200, "watch (h2={h2})");

        t.cluster.create_configmap("default", &marker, &[("e2e-watch", &marker)]).await;

        let mut body = response.into_body();
        let mut received = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let event: Value = loop {
            let frame = tokio::time::timeout_at(deadline, body.frame())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "watch (h2={h2}): no event within {PATIENCE:?}; got {:?}",
                        String::from_utf8_lossy(&received)
                    )
                })
                .expect("the watch stays open until its event")
                .expect("watch body frame");
            if let Ok(data) = frame.into_data() {
                received.extend_from_slice(&data);
            }
            let text = String::from_utf8_lossy(&received);
            if let Some(line) = text.lines().find(|l| l.contains(&marker) && l.trim_end().ends_with('}')) {
                break serde_json::from_str(line).expect("a watch event is one JSON line");
            }
        };
        assert_eq!(event["type"], "ADDED", "{event:#}");
        assert_eq!(event["object"]["metadata"]["name"], marker.as_str(), "{event:#}");
        // Dropping the body ends the watch (the stub resets the stream, the agent cancels).
    }
}

#[tokio::test]
async fn carol_with_edit_applies_and_deletes_a_configmap() {
    let t = tether().await;
    t.cluster.bind("default", "ClusterRole", "edit", Subject::User("carol")).await;
    t.cluster.wait_until_allowed("carol", &[], &["create", "configmaps", "-n", "default"]).await;
    t.cluster.wait_until_allowed("carol", &[], &["delete", "configmaps", "-n", "default"]).await;
    let carol = t.user_kubeconfig("carol", &[]).await;

    let name = unique("by-carol");
    let manifest = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default\ndata:\n  owner: carol\n"
    );
    let applied = t.cluster.kubectl_with_stdin(&carol, &["apply", "-f", "-"], Some(&manifest)).await;
    assert!(expect_ok(&applied, "carol applies").contains("created"), "{}", text(&applied));
    let owner = t.cluster.admin(&["get", "configmap", &name, "-n", "default", "-o", "jsonpath={.data.owner}"]).await;
    assert_eq!(owner, "carol", "the admin sees carol's configmap");

    // Outside her binding's namespace she may not write.
    let elsewhere = manifest.replace("namespace: default", "namespace: kube-system");
    let refused = t.cluster.kubectl_with_stdin(&carol, &["apply", "-f", "-"], Some(&elsewhere)).await;
    assert!(expect_failure(&refused, "carol applies in kube-system").contains(r#"User "carol" cannot"#));

    let deleted = t.kubectl(&carol, &["delete", "configmap", &name, "-n", "default"]).await;
    assert!(expect_ok(&deleted, "carol deletes").contains("deleted"), "{}", text(&deleted));
    let gone = t.cluster.admin(&["get", "configmap", &name, "-n", "default", "--ignore-not-found", "-o", "name"]).await;
    assert_eq!(gone.trim(), "", "the configmap is gone");

    let events = t
        .cluster
        .wait_for_audit_where(&name, "deleted as carol", |e| effective_user(e) == "carol" && e["verb"] == "delete")
        .await;
    let carols: Vec<&Value> = events.iter().filter(|e| effective_user(e) == "carol").collect();
    for event in &carols {
        assert_impersonated(event, "carol");
    }
    let verb_code = |verb: &str, namespace: &str| {
        carols
            .iter()
            .any(|e| e["verb"] == verb && str_at(e, "objectRef.namespace") == namespace && response_code(e) < 300)
    };
    assert!(verb_code("create", "default") && verb_code("delete", "default"), "{carols:#?}");
    assert!(!verb_code("create", "kube-system"), "{carols:#?}");
}

#[tokio::test]
async fn exec_is_forbidden_without_the_right_and_reaches_the_api_server_with_it() {
    let t = tether().await;
    let pod = unique("exec");
    // This cluster has no node, so the pod is never scheduled: a permitted exec gets the API
    // server's 400 "does not have a host assigned", which proves the request reached it as that
    // user. (tests/real_node.rs execs into real containers.)
    t.cluster
        .apply_as_admin(&format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: {pod}
  namespace: default
spec:
  automountServiceAccountToken: false
  containers:
  - name: main
    image: busybox
    command: [sleep, '3600']
"
        ))
        .await;

    // alice may view pods, but `view` has no pods/exec.
    grant_view(&t.cluster, "alice").await;
    let alice = t.user_kubeconfig("alice", &[]).await;
    let denied = t.kubectl(&alice, &["exec", &pod, "-n", "default", "--", "true"]).await;
    let said = expect_failure(&denied, "alice execs");
    assert!(said.contains(r#"User "alice" cannot"#) && said.contains("pods/exec"), "{said}");

    let role = unique("pod-exec");
    t.cluster
        .apply_as_admin(&format!(
            "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {role}
  namespace: default
rules:
- apiGroups: ['']
  resources: [pods]
  verbs: [get]
- apiGroups: ['']
  resources: [pods/exec]
  verbs: [create, get]
"
        ))
        .await;
    t.cluster.bind("default", "Role", &role, Subject::User("dave")).await;
    t.cluster.wait_until_allowed("dave", &[], &["create", "pods", "--subresource=exec", "-n", "default"]).await;
    let dave = t.user_kubeconfig("dave", &[]).await;
    let exec = t.kubectl(&dave, &["exec", &pod, "-n", "default", "--", "true"]).await;
    let said = expect_failure(&exec, "dave execs into an unscheduled pod");
    assert!(said.contains("does not have a host assigned"), "{said}");

    let is_exec = |e: &Value| str_at(e, "objectRef.subresource") == "exec";
    let events =
        t.cluster.wait_for_audit_where(&pod, "exec as dave", |e| is_exec(e) && effective_user(e) == "dave").await;
    let execs: Vec<&Value> = events.iter().filter(|e| is_exec(e)).collect();
    for event in &execs {
        assert_eq!(str_at(event, "user.username"), AGENT_USER, "{event:#}");
    }
    assert!(execs.iter().any(|e| effective_user(e) == "alice" && response_code(e) == 403), "{execs:#?}");
    assert!(execs.iter().any(|e| effective_user(e) == "dave" && response_code(e) == 400), "{execs:#?}");
}

// -------------------------------------------------------------------------------------------------
// The stub refuses what it must, before anything reaches the API server.
// -------------------------------------------------------------------------------------------------

/// A JWT's three parts.
fn parts(token: &str) -> [&str; 3] {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWT: {token}");
    [parts[0], parts[1], parts[2]]
}

/// Asserts that no event at all (any stage) of the API server's audit log mentions `markers`.
/// Call after a request that did reach the API server and whose event is already logged.
fn assert_never_reached(cluster: &DevCluster, markers: &[(String, &str)]) {
    let lines = cluster.audit_lines();
    for (marker, case) in markers {
        let seen: Vec<&Value> = lines.iter().filter(|e| support::kube::mentions(e, marker)).collect();
        assert!(seen.is_empty(), "{case}: the request reached the API server: {seen:#?}");
    }
}

/// A request that must reach the API server (alice's valid token, for an object that does not
/// exist, so a 404 of the API server), and whose audit event proves that everything sent before
/// it was logged by now (events are appended as requests finish).
async fn control_request(t: &Tether, token: &str) {
    let control = unique("control");
    let (status, _, body) =
        t.get(false, Some(token), &format!("/api/v1/namespaces/default/configmaps/{control}"), &[]).await;
    assert_eq!(status, 404, "the control request reaches the API server: {body}");
    let events = t.cluster.wait_for_audit(&control, 1).await;
    assert_impersonated(&events[0], "alice");
}

#[tokio::test]
async fn missing_malformed_forged_and_expired_tokens_get_the_stubs_401_and_never_reach_the_api_server() {
    let t = tether().await;
    grant_view(&t.cluster, "alice").await;
    let good = t.token("alice", &[], &[CLUSTER], "1h").await;
    let admin = t.token("system:admin", &["system:masters"], &[CLUSTER], "1h").await;
    let [good_head, good_claims, good_signature] = parts(&good);
    let [admin_head, admin_claims, _] = parts(&admin);

    // Claims of an admin token under alice's signature: the signature binds the claims.
    let forged_claims = format!("{admin_head}.{admin_claims}.{good_signature}");
    // One character of the signature changed (a middle base64url character: all 6 bits count).
    let mut signature: Vec<char> = good_signature.chars().collect();
    let middle = signature.len() / 2;
    signature[middle] = if signature[middle] == 'A' { 'B' } else { 'A' };
    let altered_signature = format!("{good_head}.{good_claims}.{}", signature.iter().collect::<String>());
    // `{"alg":"none","typ":"JWT"}` with alice's claims and no signature.
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{good_claims}.");
    // A well-formed token signed by an issuer key the stub does not trust.
    let other = tempfile::tempdir().unwrap();
    run_tether(&["certs", "issuer", "--dir", other.path().to_str().unwrap()]).await;
    let foreign = token_from(other.path().to_str().unwrap(), "alice", &[], &[CLUSTER], "1h").await;
    // exp == iat == now: expired on arrival.
    let expired = t.token("alice", &[], &[CLUSTER], "0s").await;

    let cases: [(&str, Option<&str>); 7] = [
        ("no token", None),
        ("malformed token", Some("not-a-jwt")),
        ("claims of another token", Some(&forged_claims)),
        ("altered signature", Some(&altered_signature)),
        ("alg none", Some(&alg_none)),
        ("signed by a foreign issuer key", Some(&foreign)),
        ("expired token", Some(&expired)),
    ];
    let mut markers = Vec::new();
    for h2 in [false, true] {
        for (case, token) in cases {
            let marker = unique("rejected");
            let (status, headers, body) =
                t.get(h2, token, &format!("/api/v1/namespaces/default/configmaps/{marker}"), &[]).await;
            assert_eq!(status, 401, "{case} (h2={h2}): {body}");
            assert_eq!(headers["content-type"], "application/json", "{case} (h2={h2})");
            let (code, _, message) = status_of(&body);
            assert_eq!(code, 401, "{case} (h2={h2}): {body}");
            // The stub's own Status: it says what is wrong with the token (an API server 401
            // would just say "Unauthorized").
            assert!(message.to_lowercase().contains("token"), "{case} (h2={h2}): {body}");
            markers.push((marker, case));
        }
    }

    control_request(&t, &good).await;
    assert_never_reached(&t.cluster, &markers);
}

#[tokio::test]
async fn a_token_for_other_clusters_gets_the_stubs_403_and_never_reaches_the_api_server() {
    let t = tether().await;
    grant_view(&t.cluster, "alice").await;
    let good = t.token("alice", &[], &[CLUSTER], "1h").await;
    let prod = t.token("alice", &[], &["prod"], "1h").await;
    let several = t.token("alice", &["system:masters"], &["prod", "staging"], "1h").await;

    let mut markers = Vec::new();
    for (case, token) in [("token for prod", &prod), ("token for prod and staging", &several)] {
        let marker = unique("other-cluster");
        let (status, headers, body) =
            t.get(false, Some(token), &format!("/api/v1/namespaces/default/configmaps/{marker}"), &[]).await;
        assert_eq!(status, 403, "{case}: {body}");
        assert_eq!(headers["content-type"], "application/json", "{case}");
        let (code, _, message) = status_of(&body);
        assert_eq!(code, 403, "{case}: {body}");
        // The stub's Status names the cluster; the API server's 403 would name a resource.
        assert!(message.contains(CLUSTER) && !message.contains("cannot get resource"), "{case}: {body}");
        markers.push((marker, case));
    }

    control_request(&t, &good).await;
    assert_never_reached(&t.cluster, &markers);
}

// -------------------------------------------------------------------------------------------------
// Callers never choose their own identity at the API server.
// -------------------------------------------------------------------------------------------------

#[tokio::test]
async fn kubectl_as_is_refused_with_a_403_that_says_why_and_nothing_reaches_the_api_server_as_anyone_else() {
    let t = tether().await;
    grant_view(&t.cluster, "alice").await;
    let alice = t.user_kubeconfig("alice", &[]).await;
    let mut markers = Vec::new();

    // kubectl --as: the cluster does not let alice impersonate system:admin, so the agent
    // refuses, saying which permission is missing.
    let name = unique("as-admin");
    let as_admin = ["--as=system:admin", "--as-group=system:masters"];
    let mut args = vec!["get", "configmap", &name, "-n", "default", "-o", "name"];
    args.extend_from_slice(&as_admin);
    let refused = t.kubectl(&alice, &args).await;
    let said = expect_failure(&refused, "kubectl --as=system:admin as alice");
    // (kubectl's discovery fails first and prints only "Forbidden": the same as against an API
    // server directly; the raw requests below show the agent's message.)
    assert!(said.contains("Error from server (Forbidden)"), "{said}");
    markers.push((name, "kubectl --as=system:admin"));

    // Raw Impersonate-* headers, in any spelling, over HTTP/1.1 and HTTP/2: user and groups are
    // a question to the cluster (403 here), uid and extras are refused by name (400).
    let token = t.token("alice", &[], &[CLUSTER], "1h").await;
    let asked = [
        ("Impersonate-User", "system:admin"),
        ("impersonate-group", "system:masters"),
        ("IMPERSONATE-GROUP", "system:nodes"),
    ];
    for h2 in [false, true] {
        let secret = unique("raw-impersonate");
        let (status, _, body) =
            t.get(h2, Some(&token), &format!("/api/v1/namespaces/kube-system/secrets/{secret}"), &asked).await;
        assert_eq!(status, 403, "h2={h2}: {body}");
        assert!(status_of(&body).2.contains("may not impersonate user \"system:admin\""), "h2={h2}: {body}");
        markers.push((secret, "raw Impersonate-User and -Group"));
        for extra in [("Impersonate-Extra-Scopes", "all"), ("Impersonate-Uid", "0")] {
            let secret = unique("raw-impersonate-extra");
            let headers = [asked[0], extra];
            let (status, _, body) =
                t.get(h2, Some(&token), &format!("/api/v1/namespaces/kube-system/secrets/{secret}"), &headers).await;
            assert_eq!(status, 400, "h2={h2} {extra:?}: {body}");
            assert!(status_of(&body).2.starts_with(&extra.0.to_ascii_lowercase()), "h2={h2}: {body}");
            markers.push((secret, "Impersonate-Extra or -Uid"));
        }
    }

    // None of them reached the API server, and nothing ever acted as system:admin.
    control_request(&t, &token).await;
    let markers: Vec<(String, &str)> = markers.into_iter().collect();
    assert_never_reached(&t.cluster, &markers);
    for event in t.cluster.audit_events() {
        assert_ne!(str_at(&event, "impersonatedUser.username"), "system:admin", "{event:#}");
        assert_ne!(str_at(&event, "user.username"), "alice", "{event:#}");
    }
}

#[tokio::test]
async fn kubectl_as_arrives_as_the_asked_for_user_when_the_cluster_lets_the_caller_impersonate() {
    let t = tether().await;
    let (caller, target) = (unique("caller"), unique("target"));
    grant_view(&t.cluster, &target).await;
    // The cluster's admin lets the caller impersonate that one user, and nothing else.
    t.cluster
        .apply_as_admin(&format!(
            "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {caller}
rules:
- apiGroups: [\"\"]
  resources: [\"users\"]
  resourceNames: [\"{target}\"]
  verbs: [\"impersonate\"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {caller}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {caller}}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: {caller}}}
"
        ))
        .await;
    t.cluster.wait_until_allowed(&caller, &[], &["impersonate", &format!("users/{target}")]).await;
    let kubeconfig = t.user_kubeconfig(&caller, &[]).await;

    let name = unique("as-target");
    t.cluster.create_configmap("default", &name, &[]).await;
    let as_target = format!("--as={target}");
    let got = t.kubectl(&kubeconfig, &["get", "configmap", &name, "-n", "default", "-o", "name", &as_target]).await;
    assert!(expect_ok(&got, "kubectl --as").contains(&format!("configmap/{name}")));
    // The API server saw the agent impersonating the target, with the caller recorded.
    let events = t.cluster.wait_for_audit_where(&name, "as the target", |e| effective_user(e) == target).await;
    let event = events.iter().find(|e| str_at(e, "user.username") == AGENT_USER).expect("an event of the agent");
    assert_impersonated(event, &target);
    assert_eq!(event["impersonatedUser"]["extra"]["tether-caller"], serde_json::json!([caller]), "{event:#}");
    // And the stub's audit line names both.
    let line = t.wait_for_stub_audit(&name).await.pop().unwrap();
    assert_eq!(
        (line["user"].as_str(), line["as_user"].as_str()),
        (Some(caller.as_str()), Some(target.as_str())),
        "{line:#}"
    );

    // A group the cluster does not let the caller take: refused, naming the group.
    let denied = t
        .kubectl(&kubeconfig, &["get", "configmap", &name, "-n", "default", &as_target, "--as-group=system:masters"])
        .await;
    let said = expect_failure(&denied, "kubectl --as --as-group=system:masters");
    assert!(said.contains("may not impersonate group") && said.contains("system:masters"), "{said}");
}

// -------------------------------------------------------------------------------------------------
// The stub's own audit log.
// -------------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_stub_audit_log_has_a_line_per_request_with_the_user() {
    let t = tether().await;
    grant_view(&t.cluster, "alice").await;
    let name = unique("audited");
    t.cluster.create_configmap("default", &name, &[]).await;
    let path = |marker: &str| format!("/api/v1/namespaces/default/configmaps/{marker}");

    let alice = t.token("alice", &["e2e-auditors"], &[CLUSTER], "1h").await;
    let (status, headers, body) = t.get(false, Some(&alice), &path(&name), &[]).await;
    assert_eq!(status, 200, "{body}");
    let request_id = headers.get("x-tether-request-id").map(|v| v.to_str().unwrap().to_owned());

    let bob = t.token("bob", &[], &[CLUSTER], "1h").await;
    let bobs = unique("audited-bob");
    let (status, _, body) = t.get(false, Some(&bob), &path(&bobs), &[]).await;
    assert_eq!(status, 403, "bob has no binding: {body}");

    let anonymous = unique("audited-anonymous");
    let (status, _, body) = t.get(false, None, &path(&anonymous), &[]).await;
    assert_eq!(status, 401, "{body}");

    // kubectl through a kubeconfig is audited the same way.
    let kubeconfig = t.user_kubeconfig("alice", &[]).await;
    let by_kubectl = unique("audited-kubectl");
    t.cluster.create_configmap("default", &by_kubectl, &[]).await;
    let got = t.kubectl(&kubeconfig, &["get", "configmap", &by_kubectl, "-n", "default"]).await;
    expect_ok(&got, "alice's kubectl");

    let line = single(t.wait_for_stub_audit(&name).await, "alice's request");
    assert_eq!(line["user"], "alice", "{line:#}");
    assert!(line["groups"].as_array().is_some_and(|g| g.iter().any(|g| g == "e2e-auditors")), "{line:#}");
    assert_eq!(line["cluster"], CLUSTER, "{line:#}");
    assert!(["agent-0", "agent-1"].contains(&str_at(&line, "agent")), "{line:#}");
    assert_eq!(line["status"], 200, "{line:#}");
    assert!(line["bytes"].as_u64().is_some_and(|b| b > 0), "{line:#}");
    assert!(line["duration_ms"].as_u64().is_some(), "{line:#}");
    assert!(!str_at(&line, "time").is_empty() && !str_at(&line, "verb").is_empty(), "{line:#}");
    assert!(!str_at(&line, "request_id").is_empty(), "{line:#}");
    if let Some(id) = request_id {
        assert_eq!(str_at(&line, "request_id"), id, "the audit line carries the response's request id");
    }

    let line = single(t.wait_for_stub_audit(&bobs).await, "bob's request");
    assert_eq!((&line["user"], &line["status"]), (&Value::from("bob"), &Value::from(403)), "{line:#}");

    let line = single(t.wait_for_stub_audit(&anonymous).await, "the request without a token");
    assert_eq!(line["status"], 401, "{line:#}");
    assert!(line["user"].is_null() || line["user"] == "", "no user without a token: {line:#}");

    let line = single(t.wait_for_stub_audit(&by_kubectl).await, "alice's kubectl request");
    assert_eq!((&line["user"], &line["status"]), (&Value::from("alice"), &Value::from(200)), "{line:#}");
}

/// The one line of `lines`, or a failure saying how many there were.
fn single(mut lines: Vec<Value>, what: &str) -> Value {
    assert_eq!(lines.len(), 1, "{what}: expected one stub audit line, got {lines:#?}");
    lines.pop().unwrap()
}

#[tokio::test]
async fn the_register_manifest_passes_a_server_side_dry_run() {
    let cluster = DevCluster::shared().await;
    let pki = support::Pki::new();
    let out = std::process::Command::new(support::tether_bin())
        .args(["register", "--certs", pki.path().to_str().unwrap(), "--cluster", "dev", "--stub", "hub.example:7443"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let manifest = String::from_utf8(out.stdout).unwrap();
    // Registering issued and whitelisted the certificate the manifest carries.
    let fingerprint = tether::identity::certs::fingerprint_of_file(&pki.dir.agent_cert("dev", "agent")).unwrap();
    let whitelist = std::fs::read_to_string(pki.dir.whitelist()).unwrap();
    assert!(whitelist.contains(&format!("dev agent {fingerprint}")), "{whitelist}");

    // A server-side dry run creates nothing, so the namespaced objects need their namespace to
    // exist already (as it would after a real apply of the first document).
    cluster.apply_as_admin("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: tether-system\n").await;
    let output = cluster
        .kubectl_with_stdin(&cluster.admin_kubeconfig(), &["apply", "--dry-run=server", "-f", "-"], Some(&manifest))
        .await;
    let said = expect_ok(&output, "kubectl apply --dry-run=server of the register manifest");
    for object in [
        "namespace/tether-system",
        "serviceaccount/tether-agent created",
        "clusterrole.rbac.authorization.k8s.io/tether:tether-system:impersonator created",
        "clusterrolebinding.rbac.authorization.k8s.io/tether:tether-system:impersonator created",
        "secret/tether-agent created",
        "deployment.apps/tether-agent created",
    ] {
        assert!(said.contains(object), "{object} missing from:\n{said}");
    }
    assert!(manifest.contains("replicas: 2") && manifest.contains("path: /readyz"), "{manifest}");
    // The agent's only verb is impersonate (users, groups, and the tether-caller extra).
    let impersonate = manifest.matches(r#"verbs: ["impersonate"]"#).count();
    assert!(impersonate == 2 && manifest.matches("verbs:").count() == impersonate, "{manifest}");
}

#[tokio::test]
async fn an_in_cluster_agent_acts_as_its_manifests_service_account_and_follows_token_rotation() {
    let cluster = DevCluster::shared().await;
    let pki = support::Pki::new();
    let certs = pki.path().to_str().unwrap();
    let namespace = unique("ic");
    // What an admin does: apply the manifest for real (its pods stay Pending here: this dev
    // cluster has no node; tests/real_node.rs runs them), then run the agent as its pod would.
    let manifest = run_tether(&[
        "register",
        "--certs",
        certs,
        "--cluster",
        CLUSTER,
        "--stub",
        "hub.example:7443",
        "--namespace",
        &namespace,
    ])
    .await;
    cluster.apply_as_admin(&manifest).await;
    let agent_token = cluster.admin(&["create", "token", "tether-agent", "-n", &namespace]).await;
    // A second account without the impersonation role, whose token the rotation swaps in.
    cluster.admin(&["create", "serviceaccount", "bystander", "-n", &namespace]).await;
    let bystander_token = cluster.admin(&["create", "token", "bystander", "-n", &namespace]).await;

    let pod = tempfile::tempdir().unwrap();
    std::fs::copy(cluster.env("CA_FILE"), pod.path().join("ca.crt")).unwrap();
    std::fs::write(pod.path().join("token"), agent_token.trim()).unwrap();
    std::fs::write(pod.path().join("namespace"), &namespace).unwrap();
    let stub = support::StubProc::start(&pki).await;
    let stub_addr = format!("localhost:{}", stub.quic.rsplit(':').next().unwrap());
    let pod_dir = pod.path().to_str().unwrap();
    let args = [
        "agent",
        "--certs",
        certs,
        "--cluster",
        CLUSTER,
        "--name",
        "agent",
        "--stub",
        &stub_addr,
        "--in-cluster",
        "--serviceaccount-dir",
        pod_dir,
    ];
    let env = [("KUBERNETES_SERVICE_HOST", "127.0.0.1"), ("KUBERNETES_SERVICE_PORT", cluster.env("APISERVER_PORT"))];
    let mut agent = support::Proc::spawn_with_env("agent in-cluster", &args, &env);
    agent.wait_for("connected to stub").await;

    let user = unique("ic-user");
    grant_view(&cluster, &user).await;
    let client = support::front_client(&pki, true).with_token(Some(pki.token(&user, &[], &[CLUSTER])));
    let list = |marker: &str| {
        format!("{}/clusters/{CLUSTER}/api/v1/namespaces/default/configmaps?labelSelector=marker%3D{marker}", stub.url)
    };
    let service_account = format!("system:serviceaccount:{namespace}:tether-agent");

    let first = unique("ic-first");
    let (status, _, body) = support::call(&client, "GET", &list(&first), "").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let events = cluster.wait_for_audit(&first, 1).await;
    assert!(
        events
            .iter()
            .all(|e| str_at(e, "user.username") == service_account && str_at(e, "impersonatedUser.username") == user),
        "the API server saw the service account impersonating {user}: {events:#?}"
    );

    // The kubelet rotates the token file: the very next request uses the new token. (Here the
    // new token is another account's, without the impersonation role, so the change shows.)
    let token_file = pod.path().join("token");
    tether::identity::files::write_atomic(&token_file, bystander_token.trim().as_bytes(), Mode::Secret).unwrap();
    let (status, _, body) = support::call(&client, "GET", &list(&unique("ic-second")), "").await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(&format!("system:serviceaccount:{namespace}:bystander")) && body.contains("impersonate"),
        "{body}"
    );

    tether::identity::files::write_atomic(&token_file, agent_token.trim().as_bytes(), Mode::Secret).unwrap();
    assert_eq!(support::call(&client, "GET", &list(&unique("ic-third")), "").await.0, 200);
}

/// kube-apiserver pretty-prints JSON for a client whose user agent starts with `curl`, and the
/// vendored reflect2 1.0.1 crashed it there on Go 1.19 (`fatal error: fault`): kube-build.sh
/// builds it against Debian's reflect2 1.0.2 instead.
#[tokio::test]
async fn curl_lists_configmaps_directly_and_through_the_tunnel_and_the_api_server_lives_on() {
    let t = tether().await;
    let marker = unique("curl");
    t.cluster.create_configmap("default", &marker, &[]).await;
    let user = unique("curl-user");
    grant_view(&t.cluster, &user).await;
    let token = t.token(&user, &[], &[CLUSTER], "10m").await;
    let curl = |url: String, ca: String, token: String| async move {
        // curl's own user agent, as a person would run it.
        let output = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "--fail",
                "--max-time",
                "20",
                "--cacert",
                &ca,
                "-H",
                &format!("Authorization: Bearer {token}"),
                &url,
            ])
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "curl {url}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let path = "/api/v1/namespaces/default/configmaps";
    let direct = curl(
        format!("{}{path}", t.cluster.apiserver_url()),
        t.cluster.env("CA_FILE").to_owned(),
        t.cluster.env("ADMIN_TOKEN").to_owned(),
    )
    .await;
    let tunnelled = curl(t.url(path), t.pki.dir.ca_cert().to_str().unwrap().to_owned(), token).await;
    for (how, body) in [("directly", &direct), ("through the tunnel", &tunnelled)] {
        assert!(body.starts_with("{\n  \"kind\": \"ConfigMapList\""), "{how}: not the pretty-printed list: {body}");
        assert!(body.contains(&marker), "{how}: {body}");
    }
    // Still up: another request, and the process.
    let [_, apiserver] = t.cluster.pids();
    assert!(std::path::Path::new(&format!("/proc/{apiserver}")).exists(), "kube-apiserver died");
    expect_ok(
        &t.cluster.kubectl(&t.cluster.admin_kubeconfig(), &["get", "configmap", &marker]).await,
        "the API server answers",
    );
}
