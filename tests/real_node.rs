//! A real node: the dev cluster runs containerd and kubelet, `tether register`'s manifest
//! installs the agent as two pods from the tether image (`scripts/image.sh`), and those pods
//! dial a stub on the host through the pod network. Through that tunnel, as users whose RBAC
//! allows it, kubectl reaches real containers: logs (also `-f`), exec (a command, with stdin,
//! `-it` under a pty), attach, cp both ways, port-forward; a user without `pods/exec` gets the
//! API server's own 403. Under load, deleting an agent pod, restarting the Deployment and
//! replacing the agent's Secret (a new certificate) lose no request.
//!
//! Root only (containerd, kubelet, network namespaces): elsewhere each test prints `SKIPPED`
//! and passes. Each test installs its own agent (its own namespace, tether cluster name and
//! stub), so that they share the one node without touching each other.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::Value;
use support::kube::{DevCluster, Subject, expect_failure, expect_ok, node_unavailable, str_at, unique};
use support::{FrontClient, PATIENCE, Pki, StubProc, front_client_with, tether_bin};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

/// The two images, built once for the tests of this binary and loaded into the node.
static IMAGES: OnceCell<()> = OnceCell::const_new();

const BUSYBOX: &str = "localhost/busybox:tether-test";
/// How long a pod may take to start, or a Deployment to roll out, on 2 busy cores.
const POD_PATIENCE: &str = "120s";

fn tether_image() -> String {
    format!("localhost/tether:{}", env!("CARGO_PKG_VERSION"))
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join(name)
}

fn tether(args: &[&str]) -> String {
    let output = std::process::Command::new(tether_bin()).args(args).output().unwrap();
    expect_ok(&output, &format!("tether {}", args.join(" ")))
}

/// The shared dev cluster with its node and the images in it, or `None` (with the reason
/// printed) where no node can run.
async fn node() -> Option<Arc<DevCluster>> {
    if let Some(reason) = node_unavailable() {
        eprintln!("SKIPPED: no real node here: {reason}");
        return None;
    }
    let cluster = DevCluster::shared_with_node().await;
    IMAGES
        .get_or_init(|| async {
            let dir = tempfile::tempdir().unwrap();
            let tether = dir.path().join("tether.tar");
            // The debug binary the tests already have (stripped by image.sh): the same image as
            // the release one, without a release build in the test run.
            let built = std::process::Command::new("bash")
                .arg(script("image.sh"))
                .args(["--binary", tether_bin(), "--out"])
                .arg(&tether)
                .output()
                .unwrap();
            expect_ok(&built, "scripts/image.sh");
            let busybox = dir.path().join("busybox.tar");
            let built =
                std::process::Command::new("bash").arg(script("busybox-image.sh")).arg(&busybox).output().unwrap();
            expect_ok(&built, "scripts/busybox-image.sh");
            cluster.import_image(&tether).await;
            cluster.import_image(&busybox).await;
        })
        .await;
    Some(cluster)
}

/// An agent installed as its manifest says, and the stub on the host it dials.
struct Install {
    cluster: Arc<DevCluster>,
    pki: Pki,
    stub: StubProc,
    /// The tether cluster name (the `/clusters/{name}` of the front door).
    name: String,
    /// Where the agent runs.
    namespace: String,
    tmp: tempfile::TempDir,
}

impl Install {
    /// A stub on the host, reachable from the pods at the node's gateway, and `tether
    /// register`'s manifest applied by the cluster admin; returns once both agent pods are Ready
    /// and the stub has welcomed both.
    async fn new(cluster: Arc<DevCluster>, tag: &str) -> Install {
        let gateway = cluster.env("NODE_GATEWAY").to_owned();
        let pki = Pki::with_stub_names(&[&gateway]);
        let tmp = tempfile::tempdir().unwrap();
        let audit = tmp.path().join("stub-audit.log");
        let mut stub =
            StubProc::start_at(&pki, "0.0.0.0:0", "127.0.0.1:0", &["--audit-log", audit.to_str().unwrap()]).await;
        let port = stub.quic.rsplit(':').next().unwrap().to_owned();
        let (name, namespace) = (unique(tag), unique(&format!("{tag}-agent")));
        let manifest = tether(&[
            "register",
            "--certs",
            pki.path().to_str().unwrap(),
            "--cluster",
            &name,
            "--stub",
            &format!("{gateway}:{port}"),
            "--namespace",
            &namespace,
            "--image",
            &tether_image(),
        ]);
        cluster.apply_as_admin(&manifest).await;
        wait_agents_ready(&cluster, &namespace).await;
        stub.proc.wait_for_count("agent connected", 2).await;
        Install { cluster, pki, stub, name, namespace, tmp }
    }

    /// A kubeconfig for `user` reaching this cluster through the stub.
    fn kubeconfig(&self, user: &str) -> PathBuf {
        let yaml = tether(&[
            "kubeconfig",
            "--certs",
            self.pki.path().to_str().unwrap(),
            "--stub",
            &self.stub.url,
            "--cluster",
            &self.name,
            "--user",
            user,
        ]);
        let path = self.tmp.path().join(format!("{user}.kubeconfig"));
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// A front-door client with a token of `user` for this cluster.
    fn client(&self, user: &str) -> FrontClient {
        front_client_with(&self.pki, true, None, Some(self.pki.token(user, &[], &[&self.name])))
    }

    fn url(&self, path: &str) -> String {
        format!("{}/clusters/{}{path}", self.stub.url, self.name)
    }

    /// The agent pods now (not those on their way out), as JSON.
    async fn pods(&self) -> Vec<Value> {
        let json = self
            .cluster
            .admin(&["get", "pods", "-n", &self.namespace, "-l", "app.kubernetes.io/name=tether-agent", "-o", "json"])
            .await;
        let list: Value = serde_json::from_str(&json).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .cloned()
            .collect()
    }
}

/// Waits until the agent Deployment has exactly its two pods, both Ready and none on its way
/// out (`kubectl wait` would wait on a terminating pod that is deleted meanwhile).
async fn wait_agents_ready(cluster: &DevCluster, namespace: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let json = cluster
            .admin(&["get", "pods", "-n", namespace, "-l", "app.kubernetes.io/name=tether-agent", "-o", "json"])
            .await;
        let list: Value = serde_json::from_str(&json).unwrap();
        let pods = list["items"].as_array().unwrap();
        let ready = |pod: &Value| {
            pod["metadata"]["deletionTimestamp"].is_null()
                && pod["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        };
        if pods.len() == 2 && pods.iter().all(ready) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the agent pods did not become Ready: {json}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_as_two_pods_and_users_arrive_at_the_api_server_as_themselves() {
    let Some(cluster) = node().await else { return };
    let install = Install::new(cluster.clone(), "pods").await;

    let pods = install.pods().await;
    assert_eq!(pods.len(), 2, "two replicas");
    for pod in &pods {
        assert_eq!(str_at(pod, "status.phase"), "Running");
        let spec = &pod["spec"];
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        assert_eq!(spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        let container = &spec["containers"][0];
        assert_eq!(container["image"], tether_image());
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(container["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"]));
    }

    // alice may view `default`; through the tunnel the API server sees the agent's service
    // account impersonating her.
    let alice = unique("alice");
    cluster.bind("default", "ClusterRole", "view", Subject::User(&alice)).await;
    cluster.wait_until_allowed(&alice, &[], &["get", "configmaps", "-n", "default"]).await;
    let marker = unique("seen-through-pods");
    cluster.create_configmap("default", &marker, &[]).await;
    let kubeconfig = install.kubeconfig(&alice);
    let got = cluster.kubectl(&kubeconfig, &["get", "configmap", &marker, "-n", "default", "-o", "name"]).await;
    assert_eq!(expect_ok(&got, "alice gets a ConfigMap").trim(), format!("configmap/{marker}"));
    let as_alice = |e: &Value| str_at(e, "impersonatedUser.username") == alice;
    let events = cluster.wait_for_audit_where(&marker, "alice's GET", as_alice).await;
    let service_account = format!("system:serviceaccount:{}:tether-agent", install.namespace);
    // Every request that named the ConfigMap, but the admin's own creating it.
    for event in events.iter().filter(|e| str_at(e, "user.username") != support::kube::ADMIN_USER) {
        assert_eq!(str_at(event, "user.username"), service_account, "{event:#}");
        assert_eq!(str_at(event, "impersonatedUser.username"), alice, "{event:#}");
    }
}

/// A pod of the busybox image in `namespace`, Ready.
async fn busybox_pod(cluster: &DevCluster, namespace: &str, name: &str, command: &str, stdin: bool) {
    cluster
        .apply_as_admin(&format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    stdin: {stdin}
    command: [\"sh\", \"-c\", {command:?}]
"
        ))
        .await;
    let timeout = format!("--timeout={POD_PATIENCE}");
    let output = cluster
        .kubectl(
            &cluster.admin_kubeconfig(),
            &["wait", "--for=condition=Ready", "-n", namespace, &format!("pod/{name}"), &timeout],
        )
        .await;
    expect_ok(&output, &format!("pod {name} becomes Ready"));
}

/// Reads `child`'s stdout until a line contains `needle`; returns it.
async fn line_with(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    needle: &str,
) -> String {
    let found = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("output ended without a line containing {needle:?}");
    });
    found.await.unwrap_or_else(|_| panic!("no line containing {needle:?} within {PATIENCE:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_logs_attach_cp_and_port_forward_reach_a_real_container_through_the_tunnel() {
    let Some(cluster) = node().await else { return };
    let install = Install::new(cluster.clone(), "tools").await;
    let namespace = unique("workload");
    cluster.admin(&["create", "namespace", &namespace]).await;
    busybox_pod(
        &cluster,
        &namespace,
        "web",
        "mkdir -p /tmp/www && echo hello from a real container > /tmp/www/index.html && echo started && exec httpd -f -p 8080 -h /tmp/www",
        false,
    )
    .await;
    busybox_pod(&cluster, &namespace, "reader", "while read -r line; do echo \"got: $line\"; done", true).await;
    // alice may edit (exec, attach, port-forward included); bob may only view.
    let (alice, bob) = (unique("alice"), unique("bob"));
    cluster.bind(&namespace, "ClusterRole", "edit", Subject::User(&alice)).await;
    cluster.bind(&namespace, "ClusterRole", "view", Subject::User(&bob)).await;
    cluster.wait_until_allowed(&alice, &[], &["create", "pods/exec", "-n", &namespace]).await;
    cluster.wait_until_allowed(&bob, &[], &["get", "pods", "-n", &namespace]).await;
    let as_alice = install.kubeconfig(&alice);
    let kubectl = |args: Vec<String>| {
        let cluster = cluster.clone();
        let (kubeconfig, namespace) = (as_alice.clone(), namespace.clone());
        async move {
            let mut all = vec!["-n".to_owned(), namespace];
            all.extend(args);
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            cluster.kubectl(&kubeconfig, &all).await
        }
    };
    let args = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();

    // logs, and logs -f (a stream that stays open)
    let logs = expect_ok(&kubectl(args(&["logs", "web"])).await, "kubectl logs");
    assert_eq!(logs.trim(), "started");
    let mut follow = cluster
        .kubectl_command(&as_alice, &["-n", &namespace, "logs", "-f", "web"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut followed = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    line_with(&mut followed, "started").await;
    drop(follow);

    // exec: a command, with stdin, and -it under a pty
    let said = expect_ok(&kubectl(args(&["exec", "web", "--", "sh", "-c", "echo hi from $(hostname)"])).await, "exec");
    assert_eq!(said.trim(), "hi from web");
    let output = cluster
        .kubectl_with_stdin(
            &as_alice,
            &["-n", &namespace, "exec", "-i", "web", "--", "cat"],
            Some("through the tunnel\n"),
        )
        .await;
    assert_eq!(expect_ok(&output, "exec -i"), "through the tunnel\n");
    let kubectl_line = format!(
        "kubectl --kubeconfig {} -n {namespace} exec -it web -- sh -c 'tty; echo width $(stty size)'",
        as_alice.display()
    );
    let pty = cluster
        .kubectl_command(&as_alice, &["version", "--client"])
        .as_std()
        .get_envs()
        .map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned)))
        .collect::<Vec<_>>();
    let mut script_command = tokio::process::Command::new("script");
    script_command.args(["-qec", &kubectl_line, "/dev/null"]).stdin(Stdio::null()).kill_on_drop(true);
    for (key, value) in pty {
        match value {
            Some(value) => script_command.env(key, value),
            None => script_command.env_remove(key),
        };
    }
    let output = tokio::time::timeout(PATIENCE, script_command.output()).await.unwrap().unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("/dev/pts/"), "exec -it ran without a terminal: {said}");

    // attach: to a container reading its stdin
    let mut attach = cluster
        .kubectl_command(&as_alice, &["-n", &namespace, "attach", "-i", "reader"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut attach_in = attach.stdin.take().unwrap();
    let mut attached = tokio::io::BufReader::new(attach.stdout.take().unwrap()).lines();
    // (kubectl may miss a line written before its stream is up: say it until heard)
    let saying = tokio::spawn(async move {
        for _ in 0..60 {
            if attach_in.write_all(b"ping\n").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    line_with(&mut attached, "got: ping").await;
    saying.abort();
    drop(attach);

    // cp both ways (kubectl cp runs tar in the container)
    let local = install.tmp.path().join("up.txt");
    std::fs::write(&local, "copied up through tether\n").unwrap();
    let to = format!("{namespace}/web:/tmp/up.txt");
    expect_ok(&kubectl(args(&["cp", local.to_str().unwrap(), &to])).await, "kubectl cp to the pod");
    let back = expect_ok(&kubectl(args(&["exec", "web", "--", "cat", "/tmp/up.txt"])).await, "cat");
    assert_eq!(back, "copied up through tether\n");
    let down = install.tmp.path().join("index.html");
    let from = format!("{namespace}/web:/tmp/www/index.html");
    expect_ok(&kubectl(args(&["cp", &from, down.to_str().unwrap()])).await, "kubectl cp from the pod");
    assert_eq!(std::fs::read_to_string(&down).unwrap(), "hello from a real container\n");

    // port-forward, and an HTTP request through the forwarded port
    let mut forward = cluster
        .kubectl_command(&as_alice, &["-n", &namespace, "port-forward", "pod/web", ":8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut forwarded = tokio::io::BufReader::new(forward.stdout.take().unwrap()).lines();
    let line = line_with(&mut forwarded, "Forwarding from 127.0.0.1:").await;
    let port = line.split("127.0.0.1:").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    let curl = tokio::process::Command::new("curl")
        .args(["-fsS", "--max-time", "10", &format!("http://127.0.0.1:{port}/")])
        .output();
    let page = tokio::time::timeout(PATIENCE, curl).await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&page.stdout), "hello from a real container\n", "{page:?}");
    drop(forward);

    // bob may view, not exec: the API server's own 403, naming him
    let as_bob = install.kubeconfig(&bob);
    let refused = cluster.kubectl(&as_bob, &["-n", &namespace, "exec", "web", "--", "true"]).await;
    let said = expect_failure(&refused, "bob's exec");
    assert!(said.contains("forbidden") && said.contains(&bob) && said.contains("pods/exec"), "{said}");
}

/// Steady load through the stub: GET workers, and watches that watch again when the agent
/// carrying them ends them cleanly (as a draining agent does). Every error is kept.
struct Load {
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    ok: Arc<AtomicUsize>,
    rewatched: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(install: &Install, user: &str) -> Load {
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (ok, rewatched, stop) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let mut tasks = Vec::new();
        for w in 0..4 {
            let (client, url) = (install.client(user), install.url("/api/v1/namespaces/default/configmaps?limit=1"));
            let (errors, ok, stop) = (errors.clone(), ok.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let outcome = match client.get(url.parse().unwrap()).await {
                        Err(e) => Err(format!("worker {w}: no response: {e:?}")),
                        Ok(response) => {
                            let status = response.status();
                            match response.into_body().collect().await {
                                Ok(_) if status == 200 => Ok(()),
                                Ok(body) => {
                                    Err(format!("worker {w}: {status}: {}", String::from_utf8_lossy(&body.to_bytes())))
                                }
                                Err(e) => Err(format!("worker {w}: body cut: {e}")),
                            }
                        }
                    };
                    match outcome {
                        Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            errors.lock().unwrap().push(e);
                            0
                        }
                    };
                }
            }));
        }
        for w in 0..2 {
            let (client, url) = (install.client(user), install.url("/api/v1/namespaces/default/configmaps?watch=true"));
            let (errors, rewatched, stop) = (errors.clone(), rewatched.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let response = match client.get(url.parse().unwrap()).await {
                        Ok(response) if response.status() == 200 => response,
                        Ok(response) => {
                            errors.lock().unwrap().push(format!("watch {w}: status {}", response.status()));
                            continue;
                        }
                        Err(e) => {
                            errors.lock().unwrap().push(format!("watch {w}: no response: {e:?}"));
                            continue;
                        }
                    };
                    let mut body = response.into_body();
                    loop {
                        match body.frame().await {
                            Some(Ok(_)) => {}
                            // A clean end: the agent drained; a client watches again.
                            None => {
                                rewatched.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            Some(Err(e)) => {
                                errors.lock().unwrap().push(format!("watch {w}: cut: {e}"));
                                break;
                            }
                        }
                    }
                }
            }));
        }
        Load { errors, ok, rewatched, stop, tasks }
    }

    /// Waits (bounded) until `n` more GETs have succeeded.
    async fn more(&self, n: usize) {
        let target = self.ok.load(Ordering::SeqCst) + n;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.ok.load(Ordering::SeqCst) < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the load stopped making progress: {:?}",
                self.errors.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn assert_nothing_lost(&self, what: &str) {
        let errors = self.errors.lock().unwrap();
        assert!(errors.is_empty(), "{what}: {} requests failed: {errors:#?}", errors.len());
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_agent_pod_restarting_the_deployment_or_replacing_its_secret_loses_no_request() {
    let Some(cluster) = node().await else { return };
    let mut install = Install::new(cluster.clone(), "rollout").await;
    let user = unique("loader");
    cluster.bind("default", "ClusterRole", "view", Subject::User(&user)).await;
    cluster.wait_until_allowed(&user, &[], &["watch", "configmaps", "-n", "default"]).await;
    let load = Load::start(&install, &user);
    load.more(50).await;

    // 1. One agent pod deleted (SIGTERM: it drains); the Deployment replaces it.
    let pods = install.pods().await;
    let victim = str_at(&pods[0], "metadata.name").to_owned();
    cluster.admin(&["delete", "pod", &victim, "-n", &install.namespace, "--wait=false"]).await;
    install.stub.proc.wait_for_count("agent connected", 3).await;
    wait_agents_ready(&cluster, &install.namespace).await;
    load.more(50).await;
    load.assert_nothing_lost("deleting an agent pod");

    // 2. kubectl rollout restart: both replaced, one at a time, each drained.
    cluster.admin(&["rollout", "restart", "deployment/tether-agent", "-n", &install.namespace]).await;
    let timeout = format!("--timeout={POD_PATIENCE}");
    cluster.admin(&["rollout", "status", "deployment/tether-agent", "-n", &install.namespace, &timeout]).await;
    wait_agents_ready(&cluster, &install.namespace).await;
    install.stub.proc.wait_for_count("agent connected", 5).await;
    load.more(50).await;
    load.assert_nothing_lost("a rollout restart");

    // 3. A new certificate in the Secret: whitelisted first, then the Secret replaced; the
    // kubelet swaps the mounted files and each agent moves to it make-before-break.
    let certs = install.pki.path().to_str().unwrap().to_owned();
    let old =
        tether::identity::certs::fingerprint_of_file(&install.pki.dir.agent_cert(&install.name, "agent")).unwrap();
    let new = tether(&[
        "certs",
        "agent",
        "--dir",
        &certs,
        "--cluster",
        &install.name,
        "--name",
        "agent",
        "--force",
        "--register",
    ]);
    let dir = &install.pki.dir;
    let secret = cluster
        .kubectl(
            &cluster.admin_kubeconfig(),
            &[
                "create",
                "secret",
                "generic",
                "tether-agent",
                "-n",
                &install.namespace,
                "--dry-run=client",
                "-o",
                "yaml",
                &format!("--from-file=agent.crt={}", dir.agent_cert(&install.name, "agent").display()),
                &format!("--from-file=agent.key={}", dir.agent_key(&install.name, "agent").display()),
                &format!("--from-file=ca.crt={}", dir.ca_cert().display()),
                &format!("--from-file=issuer.pub={}", dir.issuer_pub().display()),
            ],
        )
        .await;
    cluster.apply_as_admin(&expect_ok(&secret, "the new Secret")).await;
    for pod in install.pods().await {
        let name = str_at(&pod, "metadata.name").to_owned();
        support::kube::eventually(&format!("{name} logs its certificate rotation"), || {
            let (cluster, namespace, name, new) =
                (cluster.clone(), install.namespace.clone(), name.clone(), new.trim().to_owned());
            async move {
                let logs = cluster.admin(&["logs", &name, "-n", &namespace]).await;
                if logs.contains("certificate rotated") && logs.contains(&new) { Ok(()) } else { Err(logs) }
            }
        })
        .await;
    }
    // The old fingerprint goes; the agents, already on the new one, stay.
    let whitelist = std::fs::read_to_string(dir.whitelist()).unwrap();
    let kept: String = whitelist.lines().filter(|l| !l.contains(&old.to_string())).map(|l| format!("{l}\n")).collect();
    tether::identity::files::write_atomic(&dir.whitelist(), kept.as_bytes(), tether::identity::files::Mode::Public)
        .unwrap();
    install.stub.proc.wait_for_count("whitelist reloaded", 2).await;
    load.more(50).await;
    load.assert_nothing_lost("a certificate rotation through the Secret");
    eprintln!(
        "under load: {} GETs served, watches ended cleanly and watched again {} times, nothing lost",
        load.ok.load(Ordering::SeqCst),
        load.rewatched.load(Ordering::SeqCst)
    );
    load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_cluster_with_a_node_is_refused_and_the_first_one_runs_on() {
    let Some(cluster) = node().await else { return };
    let second = tempfile::tempdir().unwrap();
    let start = tokio::process::Command::new("bash")
        .arg(script("dev-cluster.sh"))
        .arg("start")
        .arg(second.path())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), start).await.unwrap().unwrap();
    let said = support::kube::text(&output);
    assert!(!output.status.success(), "a second node started: {said}");
    let first = cluster.dir().canonicalize().unwrap();
    assert!(said.contains(&format!("a node already runs here, for the dev cluster in {}", first.display())), "{said}");
    assert!(said.contains("--no-node"), "the refusal says what to do instead: {said}");
    // The refused start left nothing running, and the first cluster's node is still Ready.
    let status = std::process::Command::new("bash")
        .arg(script("dev-cluster.sh"))
        .arg("status")
        .arg(second.path())
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(3), "{}", support::kube::text(&status));
    let node = cluster.env("NODE_NAME").to_owned();
    let ready = cluster
        .admin(&["get", "node", &node, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"])
        .await;
    assert_eq!(ready.trim(), "True");
}

/// `tether hub`'s manifest as real pods: two stub replicas from the tether image, ready by their
/// own `/readyz`, each holding a Lease in the hub's namespace (in-cluster credentials, the Role
/// the manifest grants) and linked to the other over the pod network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_manifest_runs_two_replicas_that_find_each_other_through_leases() {
    let Some(cluster) = node().await else { return };
    let pki = Pki::new();
    let namespace = unique("hub");
    let manifest = tether(&[
        "hub",
        "--certs",
        pki.path().to_str().unwrap(),
        "--namespace",
        &namespace,
        "--replicas",
        "2",
        "--image",
        &tether_image(),
        "--kubernetes-version",
        "1.20",
        "--agent-service-type",
        "ClusterIP",
        "--user-service-type",
        "ClusterIP",
    ]);
    cluster.apply_as_admin(&manifest).await;
    let rollout = cluster
        .admin(&["rollout", "status", "-n", &namespace, "deployment/tether-stub", &format!("--timeout={POD_PATIENCE}")])
        .await;
    assert!(rollout.contains("successfully rolled out"), "{rollout}");
    // Each replica's Lease, named after its pod, with the pod's address as its peer address.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let (pods, leases) = loop {
        let pods: Value = serde_json::from_str(
            &cluster
                .admin(&["get", "pods", "-n", &namespace, "-l", "app.kubernetes.io/name=tether-stub", "-o", "json"])
                .await,
        )
        .unwrap();
        let leases: Value =
            serde_json::from_str(&cluster.admin(&["get", "leases", "-n", &namespace, "-o", "json"]).await).unwrap();
        if leases["items"].as_array().unwrap().len() == 2 {
            break (pods, leases);
        }
        assert!(tokio::time::Instant::now() < deadline, "two Leases never appeared: {leases}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for pod in pods["items"].as_array().unwrap().iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()) {
        let name = str_at(pod, "metadata.name");
        let lease = leases["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["spec"]["holderIdentity"] == name)
            .unwrap_or_else(|| panic!("no Lease held by {name}: {leases}"));
        assert_eq!(
            lease["metadata"]["annotations"]["tether.io/peer-address"],
            format!("{}:7444", str_at(pod, "status.podIP")),
            "{lease}"
        );
        // Linked both ways with the other replica, as its log says.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let logs = cluster.admin(&["logs", "-n", &namespace, name]).await;
            if logs.contains("peer link up") && logs.contains("peer linked in") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{name} never linked to its peer:\n{logs}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    cluster.admin(&["delete", "namespace", &namespace, "--wait=false"]).await;
}
