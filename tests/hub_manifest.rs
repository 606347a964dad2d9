//! `tether hub` against a real API server: the real binary prints the hub's manifest from a
//! certificate directory made by `tether certs`, and the dev cluster (kube-apiserver v1.20.2)
//! takes every object in a server-side dry run, which runs its validation and admission but
//! stores nothing. The manifest for current clusters (one mixed-protocol LoadBalancer,
//! `policy/v1`) is refused by 1.20 for exactly those two reasons, which is what
//! `--kubernetes-version` is for. Hostile flag values are refused before anything is printed.

mod support;

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use support::kube::{DevCluster, expect_failure, expect_ok, run_tether, text, unique};
use support::tether_bin;

/// A certificate directory as an admin makes one: CA, stub certificate, issuer key pair, and one
/// registered agent (so the whitelist exists).
async fn certs_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    run_tether(&["certs", "init", "--dir", dir]).await;
    run_tether(&["certs", "stub", "--dir", dir, "--san", "hub.example.com"]).await;
    run_tether(&["certs", "issuer", "--dir", dir]).await;
    run_tether(&["certs", "agent", "--dir", dir, "--cluster", "dev", "--name", "agent", "--register"]).await;
    tmp
}

/// `tether hub` with `args`, to completion.
async fn hub(args: &[&str]) -> Output {
    tokio::process::Command::new(tether_bin()).arg("hub").args(args).output().await.unwrap()
}

/// The manifest's documents, each parsed (a comment line, then one JSON object).
fn documents(manifest: &str) -> Vec<Value> {
    manifest
        .split("\n---\n")
        .skip(1)
        .map(|doc| {
            let (comment, json) = doc.split_once('\n').unwrap();
            assert!(comment.starts_with("# "), "{doc}");
            serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {doc}"))
        })
        .collect()
}

/// `kubectl apply --dry-run=server -f -` of `manifest` as the cluster admin.
async fn dry_run(cluster: &DevCluster, manifest: &str) -> Output {
    let args = ["apply", "--dry-run=server", "-f", "-"];
    cluster.kubectl_with_stdin(&cluster.admin_kubeconfig(), &args, Some(manifest)).await
}

/// What `kubectl apply` says of each object that a dry run would create.
fn created(documents: &[Value]) -> Vec<String> {
    documents
        .iter()
        .filter(|d| d["kind"] != "Namespace")
        .map(|d| {
            let kind = d["kind"].as_str().unwrap().to_lowercase();
            let group = d["apiVersion"].as_str().unwrap().split_once('/').map(|(group, _)| group);
            let resource = match group {
                Some(group) => format!("{kind}.{group}"),
                None => kind,
            };
            format!("{resource}/{} created (server dry run)", d["metadata"]["name"].as_str().unwrap())
        })
        .collect()
}

fn file(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

#[tokio::test]
async fn the_hub_manifest_passes_a_server_side_dry_run_on_kubernetes_1_20() {
    let cluster = DevCluster::shared().await;
    let certs = certs_dir().await;
    let dir = certs.path().to_str().unwrap();
    let namespace = unique("hub");
    // A dry run stores nothing, so the namespaced objects need their namespace already (as
    // they would have it after the first document of a real apply).
    cluster.admin(&["create", "namespace", &namespace]).await;
    // What an admin does: pass the cluster's version as `kubectl version` reports it.
    let version = cluster.env("KUBE_VERSION").to_owned();
    assert!(version.starts_with("v1.20."), "{version}");

    let common = ["--certs", dir, "--namespace", &namespace, "--replicas", "3", "--kubernetes-version", &version];
    let variants: [&[&str]; 3] = [
        &[],
        &["--agent-load-balancer-ip", "192.0.2.10", "--service-annotation", "metallb.universe.tf/allow-shared-ip=hub"],
        &["--agent-service-type", "NodePort", "--user-service-type", "ClusterIP"],
    ];
    for extra in variants {
        let args: Vec<&str> = common.iter().chain(extra).copied().collect();
        let output = hub(&args).await;
        let manifest = expect_ok(&output, &format!("tether hub {}", args.join(" ")));
        let documents = documents(&manifest);
        let said = expect_ok(&dry_run(&cluster, &manifest).await, &format!("dry run of\n{manifest}"));
        assert!(said.contains(&format!("namespace/{namespace} ")), "{said}");
        for object in created(&documents) {
            assert!(said.contains(&object), "{object} missing from:\n{said}");
        }
        let kinds: Vec<&str> = documents.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        let services = kinds.iter().filter(|k| **k == "Service").count();
        // 1.20: a LoadBalancer for agents is split in two (UDP, TCP); a NodePort is one.
        assert_eq!(services, if extra.contains(&"NodePort") { 3 } else { 4 }, "{kinds:?}");
        let pdb = documents.iter().find(|d| d["kind"] == "PodDisruptionBudget").unwrap();
        assert_eq!(pdb["apiVersion"], "policy/v1beta1");
    }

    // The Secret and ConfigMap carry the five files as they are, and no other key.
    let manifest = expect_ok(&hub(&common).await, "tether hub");
    let documents = documents(&manifest);
    let data = |kind: &str| documents.iter().find(|d| d["kind"] == kind).unwrap()["data"].clone();
    let base64 = |text: String| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(text)
    };
    assert_eq!(
        data("Secret"),
        serde_json::json!({
            "ca.crt": base64(file(certs.path(), "ca.crt")),
            "stub.crt": base64(file(certs.path(), "stub.crt")),
            "stub.key": base64(file(certs.path(), "stub.key")),
        })
    );
    let (whitelist, issuer_pub) = (file(certs.path(), "whitelist"), file(certs.path(), "issuer.pub"));
    assert_eq!(data("ConfigMap"), serde_json::json!({ "whitelist": whitelist, "issuer.pub": issuer_pub }));
    for private in ["ca.key", "issuer.key"] {
        let pem = file(certs.path(), private);
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!manifest.contains(&body) && !manifest.contains(&base64(pem)), "{private} is in the manifest");
    }
}

#[tokio::test]
async fn kubernetes_1_20_refuses_the_manifest_for_current_clusters_for_the_two_known_reasons() {
    let cluster = DevCluster::shared().await;
    let certs = certs_dir().await;
    let namespace = unique("hub-new");
    cluster.admin(&["create", "namespace", &namespace]).await;
    let args = ["--certs", certs.path().to_str().unwrap(), "--namespace", &namespace, "--replicas", "2"];
    let manifest = expect_ok(&hub(&args).await, "tether hub (default version)");
    let said = expect_failure(&dry_run(&cluster, &manifest).await, "a dry run of the 1.33 manifest on 1.20");
    assert!(said.contains("may not contain more than 1 protocol when type is 'LoadBalancer'"), "{said}");
    assert!(said.contains(r#"no matches for kind "PodDisruptionBudget" in version "policy/v1""#), "{said}");
    // Everything else is accepted.
    for object in
        ["deployment.apps/tether-stub created", "service/tether-stub-https created", "secret/tether-stub created"]
    {
        assert!(said.contains(object), "{object} missing from:\n{said}");
    }
}

#[tokio::test]
async fn hostile_or_wrong_values_are_refused_naming_the_flag_and_print_nothing() {
    let certs = certs_dir().await;
    let dir = certs.path().to_str().unwrap();
    let cases: [(&[&str], &str); 8] = [
        (
            &["--namespace", "hub\nkind: ClusterRoleBinding", "--replicas", "2"],
            "--namespace \"hub\\nkind: ClusterRoleBinding\" is not valid",
        ),
        (&["--namespace", "Hub", "--replicas", "2"], "--namespace \"Hub\" is not valid"),
        (&["--namespace", "hub", "--replicas", "0"], "--replicas 0: run at least 1 replica"),
        (
            &["--namespace", "hub", "--replicas", "2", "--image", "x\n---\nkind: Secret"],
            "--image \"x\\n---\\nkind: Secret\" is not an image reference",
        ),
        (
            &["--namespace", "hub", "--replicas", "2", "--kubernetes-version", "1.18"],
            "'--kubernetes-version <VERSION>': Kubernetes 1.18 is older than 1.19",
        ),
        (
            &["--namespace", "hub", "--replicas", "2", "--service-annotation", "a=b\nc"],
            "'--service-annotation <KEY=VALUE>'",
        ),
        (
            &[
                "--namespace",
                "hub",
                "--replicas",
                "2",
                "--agent-service-type",
                "NodePort",
                "--agent-load-balancer-ip",
                "192.0.2.1",
            ],
            "--agent-load-balancer-ip is only for --agent-service-type LoadBalancer, not NodePort",
        ),
        (
            &["--namespace", "hub", "--replicas", "2", "--agent-service-type", "Ingress"],
            "'--agent-service-type <TYPE>'",
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = ["--certs", dir].iter().chain(args).copied().collect();
        let output = hub(&args).await;
        let said = expect_failure(&output, &format!("tether hub {args:?}"));
        assert!(said.contains(expected), "tether hub {args:?} said:\n{said}");
        assert!(output.stdout.is_empty(), "printed a manifest anyway: {}", text(&output));
    }

    // A certificate directory without the CA: the file is named, and what makes it.
    let empty = tempfile::tempdir().unwrap();
    let output = hub(&["--certs", empty.path().to_str().unwrap(), "--namespace", "hub", "--replicas", "2"]).await;
    let said = expect_failure(&output, "tether hub on an empty directory");
    let ca = empty.path().join("ca.crt");
    assert!(said.contains(&format!("{}: cannot read the CA certificate", ca.display())), "{said}");
    assert!(said.contains("tether certs init"), "{said}");
    // Without a whitelist yet: named, with how to register an agent.
    std::fs::remove_file(certs.path().join("whitelist")).unwrap();
    let said = expect_failure(&hub(&["--certs", dir, "--namespace", "hub", "--replicas", "2"]).await, "no whitelist");
    assert!(said.contains("whitelist") && said.contains("tether certs agent --register"), "{said}");
}
