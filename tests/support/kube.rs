//! A real kube-apiserver for end-to-end tests, and tether in front of it.
//!
//! - [`DevCluster`]: `scripts/dev-cluster.sh start` in a temporary directory (etcd,
//!   kube-apiserver, kube-controller-manager and kube-scheduler v1.20.2 on loopback, and with
//!   [`DevCluster::shared_with_node`] a real node: containerd and kubelet), its kubeconfigs and
//!   audit log, `kubectl` with a private HOME, RBAC helpers. Dropping it runs `dev-cluster.sh
//!   stop`, which stops exactly the processes that `start` recorded and undoes what the node
//!   changed. [`DevCluster::shared`] lets the tests of one binary share one cluster (starting one
//!   costs about 8 s, 25 s with a node); it stops when the last test holding it ends.
//! - [`Tether`]: a certificate directory with the token issuer key, a stub with an audit log, and
//!   two agents of cluster `dev` whose upstream is the dev cluster's `agent.kubeconfig` (a user
//!   that may only impersonate), plus user tokens and kubeconfigs minted by the real binary.
//!
//! Every wait is bounded. Processes are awaited through their log lines; only the API server's
//! audit log, RBAC propagation and the stub's audit file have no event to wait on, so those are
//! polled with a deadline.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::{FrontClient, PATIENCE, Pki, Proc, StubProc, front_client, spawn_agent_with, tether_bin};

/// The cluster name the agents serve.
pub const CLUSTER: &str = "dev";
/// The API server user whose credential the agents forward with (see dev-cluster.sh).
pub const AGENT_USER: &str = "tether-agent";
/// The dev cluster's administrator (system:masters).
pub const ADMIN_USER: &str = "tether-admin";

/// `dev-cluster.sh start` normally takes about 8 s (25 s with a node); on a machine without the
/// cached binaries it first builds them (5 to 12 minutes on 2 busy cores), which must not fail
/// the tests.
const START_LIMIT: Duration = Duration::from_secs(20 * 60);
/// One kubectl invocation (the dispatcher's /version probe, discovery, the request itself) on a
/// machine that may be compiling at the same time.
pub const KUBECTL_LIMIT: Duration = Duration::from_secs(60);
/// Interval between two looks at something that has no event to wait on.
const POLL: Duration = Duration::from_millis(150);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn dev_cluster_script() -> PathBuf {
    manifest_dir().join("scripts/dev-cluster.sh")
}

/// A name no other test (nor an earlier run) uses: `e2e-<tag>-<8 hex digits>`, valid as a
/// Kubernetes object name, so it can mark one request in both audit logs.
pub fn unique(tag: &str) -> String {
    format!("e2e-{tag}-{:08x}", rand::random::<u32>())
}

/// stdout and stderr of a finished command, for assertions and failure messages.
pub fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Panics unless `output` succeeded; returns its stdout.
pub fn expect_ok(output: &Output, what: &str) -> String {
    assert!(output.status.success(), "{what} failed ({}):\n{}", output.status, text(output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Panics unless `output` failed; returns its stdout and stderr.
pub fn expect_failure(output: &Output, what: &str) -> String {
    assert!(!output.status.success(), "{what} should have failed, but succeeded:\n{}", text(output));
    text(output)
}

/// Runs `command` to completion within `limit` (killed if it takes longer), feeding it `stdin`.
pub async fn run(mut command: tokio::process::Command, stdin: Option<&[u8]>, limit: Duration, what: &str) -> Output {
    command
        .kill_on_drop(true) // a timed-out child is killed (by its PID) when the future is dropped
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    if let Some(input) = stdin {
        // Written from a task so that a child which answers before reading all its input
        // cannot deadlock against us.
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        tokio::spawn(async move {
            let _ = pipe.write_all(&input).await;
        });
    }
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => panic!("{what}: did not finish within {limit:?}"),
    }
}

/// Calls `probe` until it returns `Ok`, at most [`PATIENCE`]; panics with the last `Err`.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => panic!("{what}: not within {PATIENCE:?}; last: {last}"),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Parses JSON lines, skipping a torn last line (a writer may be half way through it).
fn json_lines(content: &str) -> Vec<Value> {
    content.lines().filter(|l| !l.trim().is_empty()).filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// A string field of a JSON value by path (`"user.username"`), or "" if absent.
pub fn str_at<'a>(value: &'a Value, path: &str) -> &'a str {
    path.split('.').try_fold(value, |v, key| v.get(key)).and_then(Value::as_str).unwrap_or("")
}

/// Whether an audit event's request URI or object name contains `marker`.
pub fn mentions(event: &Value, marker: &str) -> bool {
    str_at(event, "requestURI").contains(marker) || str_at(event, "objectRef.name").contains(marker)
}

/// The user the API server acted as for this event: the impersonated user if any, else the
/// authenticated one.
pub fn effective_user(event: &Value) -> &str {
    match str_at(event, "impersonatedUser.username") {
        "" => str_at(event, "user.username"),
        user => user,
    }
}

/// A subject of a RoleBinding.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    User(&'a str),
    Group(&'a str),
}

/// A running dev cluster (etcd + kube-apiserver), stopped on drop.
pub struct DevCluster {
    /// The cluster's directory: env, kubeconfigs, pid files, logs, etcd data.
    dir: tempfile::TempDir,
    /// HOME and KUBECACHEDIR of every kubectl run here, so nothing touches the real home.
    home: tempfile::TempDir,
    /// DIR/env, parsed.
    env: HashMap<String, String>,
}

/// The cluster the tests of this binary share, while at least one of them holds it.
static SHARED: tokio::sync::Mutex<Weak<DevCluster>> = tokio::sync::Mutex::const_new(Weak::new());

impl DevCluster {
    /// The cluster shared by the tests of this test binary: started by the first test that asks,
    /// stopped when the last test holding it ends (so a later test may start a fresh one).
    /// Tests sharing it keep apart by unique object names, users and bindings.
    pub async fn shared() -> Arc<DevCluster> {
        DevCluster::shared_as(false).await
    }

    /// Like [`DevCluster::shared`], with a node that runs real pods (root only: see
    /// [`node_unavailable`]). A test binary uses one or the other.
    pub async fn shared_with_node() -> Arc<DevCluster> {
        DevCluster::shared_as(true).await
    }

    async fn shared_as(node: bool) -> Arc<DevCluster> {
        // An async mutex, so that concurrent tests wait for the one start instead of racing.
        let mut slot = SHARED.lock().await;
        if let Some(cluster) = slot.upgrade() {
            return cluster;
        }
        let cluster = Arc::new(DevCluster::start_as(node).await);
        *slot = Arc::downgrade(&cluster);
        cluster
    }

    /// Starts a cluster of its own, without a node.
    pub async fn start() -> DevCluster {
        DevCluster::start_as(false).await
    }

    /// A cluster of its own whose kube-apiserver gets `flags` as well (`dev-cluster.sh
    /// --apiserver-flag`), such as the `--oidc-*` flags of a hub that trusts an identity provider.
    pub async fn start_with_apiserver_flags(flags: &[String]) -> DevCluster {
        DevCluster::start_with(false, flags).await
    }

    async fn start_as(node: bool) -> DevCluster {
        DevCluster::start_with(node, &[]).await
    }

    async fn start_with(node: bool, apiserver_flags: &[String]) -> DevCluster {
        let dir = tempfile::Builder::new().prefix("tether-dev-cluster-").tempdir().unwrap();
        let home = tempfile::Builder::new().prefix("tether-kubectl-home-").tempdir().unwrap();
        // Built before starting, so that a failed or timed-out start still runs `stop` (Drop)
        // on whatever the script managed to launch.
        let mut cluster = DevCluster { dir, home, env: HashMap::new() };
        let mut command = tokio::process::Command::new("bash");
        command.arg(dev_cluster_script()).arg("start");
        if !node {
            command.arg("--no-node");
        }
        for flag in apiserver_flags {
            command.arg("--apiserver-flag").arg(flag);
        }
        command.arg(cluster.dir.path());
        let started = Instant::now();
        let output = run(command, None, START_LIMIT, "scripts/dev-cluster.sh start").await;
        assert!(output.status.success(), "scripts/dev-cluster.sh start failed ({}):\n{}", output.status, text(&output));
        cluster.env = parse_env(&std::fs::read_to_string(cluster.dir.path().join("env")).unwrap());
        eprintln!(
            "dev cluster up at {} in {:.1?} (dir {})",
            cluster.apiserver_url(),
            started.elapsed(),
            cluster.dir.path().display()
        );
        cluster
    }

    /// Loads an OCI image archive into the node (`dev-node.sh import`).
    pub async fn import_image(&self, archive: &Path) {
        let mut command = tokio::process::Command::new("bash");
        command.arg(manifest_dir().join("scripts/dev-node.sh")).arg("import").arg(self.dir.path()).arg(archive);
        let output = run(command, None, KUBECTL_LIMIT, "scripts/dev-node.sh import").await;
        expect_ok(&output, "dev-node.sh import");
    }

    /// A variable of DIR/env.
    pub fn env(&self, key: &str) -> &str {
        self.env.get(key).unwrap_or_else(|| panic!("{key} missing in the dev cluster's env file"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The private HOME kubectl runs with (its caches; an exec plugin's token cache).
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn apiserver_url(&self) -> &str {
        self.env("APISERVER_URL")
    }

    /// Kubeconfig of the cluster admin (system:masters), straight to the API server.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.env("ADMIN_KUBECONFIG").into()
    }

    /// Kubeconfig of `tether-agent`, which may only impersonate users and groups.
    pub fn agent_kubeconfig(&self) -> PathBuf {
        self.env("AGENT_KUBECONFIG").into()
    }

    pub fn audit_log(&self) -> PathBuf {
        self.env("AUDIT_LOG").into()
    }

    /// PIDs of etcd and kube-apiserver.
    pub fn pids(&self) -> [u32; 2] {
        [self.env("ETCD_PID").parse().unwrap(), self.env("APISERVER_PID").parse().unwrap()]
    }

    /// Runs kubectl with `kubeconfig` and `args` (bounded; never panics on kubectl's own failure).
    pub async fn kubectl(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        self.kubectl_with_stdin(kubeconfig, args, None).await
    }

    /// Like [`DevCluster::kubectl`], with `stdin` as kubectl's input (for `apply -f -`).
    pub async fn kubectl_with_stdin(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let what = format!("kubectl {}", args.join(" "));
        run(self.kubectl_command(kubeconfig, args), stdin.map(str::as_bytes), KUBECTL_LIMIT, &what).await
    }

    /// The kubectl command line for `kubeconfig` and `args` with the private HOME, for a test
    /// that talks to kubectl while it runs (logs -f, port-forward, attach). It is killed (by
    /// its PID) when dropped.
    pub fn kubectl_command(&self, kubeconfig: &Path, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .env_remove("KUBECONFIG")
            // An exec plugin's cache (tether credential) then lives under this HOME too.
            .env_remove("XDG_CACHE_HOME")
            .env("HOME", self.home.path())
            .env("KUBECACHEDIR", self.home.path().join(".kube/cache"))
            .kill_on_drop(true);
        command
    }

    /// kubectl as the cluster admin, which must succeed; returns stdout.
    pub async fn admin(&self, args: &[&str]) -> String {
        let output = self.kubectl(&self.admin_kubeconfig(), args).await;
        expect_ok(&output, &format!("kubectl (admin) {}", args.join(" ")))
    }

    /// `kubectl apply -f -` as the cluster admin.
    pub async fn apply_as_admin(&self, yaml: &str) -> String {
        let output = self.kubectl_with_stdin(&self.admin_kubeconfig(), &["apply", "-f", "-"], Some(yaml)).await;
        expect_ok(&output, &format!("kubectl (admin) apply of\n{yaml}"))
    }

    /// A ConfigMap in `namespace`, created (or updated) by the admin, with `labels`.
    pub async fn create_configmap(&self, namespace: &str, name: &str, labels: &[(&str, &str)]) {
        let mut yaml =
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {namespace}\n");
        if !labels.is_empty() {
            yaml.push_str("  labels:\n");
            for (key, value) in labels {
                yaml.push_str(&format!("    {key}: {value:?}\n"));
            }
        }
        yaml.push_str("data:\n  made-by: admin\n");
        self.apply_as_admin(&yaml).await;
    }

    /// Binds `role` (a ClusterRole, or a Role of `namespace`) to `subject` in `namespace`, under a
    /// binding name of its own (so tests sharing the cluster never fight over one object);
    /// returns the binding's name. RBAC takes effect a moment later: see
    /// [`DevCluster::wait_until_allowed`].
    pub async fn bind(&self, namespace: &str, role_kind: &str, role: &str, subject: Subject<'_>) -> String {
        let (kind, name) = match subject {
            Subject::User(name) => ("User", name),
            Subject::Group(name) => ("Group", name),
        };
        let binding = unique(&format!("{}-{}", role.replace(':', "-"), kind.to_lowercase()));
        self.apply_as_admin(&format!(
            "apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {binding}
  namespace: {namespace}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: {role_kind}
  name: {role:?}
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: {kind}
  name: {name:?}
"
        ))
        .await;
        binding
    }

    /// Waits until the API server's authorizer lets `user` (with `groups`) do `can_i` (the
    /// arguments of `kubectl auth can-i`, e.g. `["list", "configmaps", "-n", "default"]`).
    /// The RBAC authorizer reads bindings from an informer cache, so a binding applied a moment
    /// ago may not count yet; there is no event to wait on, so this polls `auth can-i` as admin.
    pub async fn wait_until_allowed(&self, user: &str, groups: &[&str], can_i: &[&str]) {
        let mut args = vec!["auth", "can-i"];
        args.extend_from_slice(can_i);
        let as_user = format!("--as={user}");
        args.push(&as_user);
        let as_groups: Vec<String> = groups.iter().map(|g| format!("--as-group={g}")).collect();
        args.extend(as_groups.iter().map(String::as_str));
        let what = format!("RBAC allowing {user} {groups:?} to {}", can_i.join(" "));
        eventually(&what, || async {
            let output = self.kubectl(&self.admin_kubeconfig(), &args).await;
            if output.status.success() { Ok(()) } else { Err(text(&output)) }
        })
        .await
    }

    /// Every event of the API server's audit log (all stages, including its own internal requests).
    pub fn audit_lines(&self) -> Vec<Value> {
        json_lines(&std::fs::read_to_string(self.audit_log()).unwrap_or_default())
    }

    /// The audit log's `ResponseComplete` events: one per finished request, with `user`,
    /// `impersonatedUser`, `verb`, `requestURI`, `objectRef` and `responseStatus.code`.
    pub fn audit_events(&self) -> Vec<Value> {
        self.audit_lines().into_iter().filter(|e| e["stage"] == "ResponseComplete").collect()
    }

    /// The `ResponseComplete` events whose request URI or object name contains `marker` (a
    /// create's URI names only the collection; its `objectRef.name` names the object).
    pub fn audit_events_with(&self, marker: &str) -> Vec<Value> {
        self.audit_events().into_iter().filter(|e| mentions(e, marker)).collect()
    }

    /// Waits until some finished request mentioning `marker` satisfies `want` (for example "made
    /// by tether-agent impersonating alice"); returns every event mentioning `marker`.
    pub async fn wait_for_audit_where(&self, marker: &str, what: &str, want: impl Fn(&Value) -> bool) -> Vec<Value> {
        eventually(&format!("an audit event for {marker:?} {what}"), || async {
            let events = self.audit_events_with(marker);
            if events.iter().any(&want) { Ok(events) } else { Err(format!("events so far: {events:#?}")) }
        })
        .await
    }

    /// Waits until at least `count` finished requests whose URI contains `marker` are in the
    /// audit log; returns all of them. The log backend writes an event as the request ends, in
    /// the request's own goroutine, so it may land just after the client has its answer.
    pub async fn wait_for_audit(&self, marker: &str, count: usize) -> Vec<Value> {
        eventually(&format!("{count} audit event(s) for {marker:?}"), || async {
            let events = self.audit_events_with(marker);
            if events.len() >= count { Ok(events) } else { Err(format!("{} so far", events.len())) }
        })
        .await
    }

    /// Makes sure every request the API server finished before this call is in its audit log:
    /// the admin asks for a ConfigMap of a unique name and this waits for that request's event.
    /// Events are appended as requests finish, so once the barrier's is there, an earlier
    /// request that had reached the API server would be there too. Tests that assert a request
    /// never arrived call this first.
    pub async fn audit_barrier(&self) {
        let marker = unique("barrier");
        self.admin(&["get", "configmap", &marker, "-n", "default", "--ignore-not-found"]).await;
        self.wait_for_audit(&marker, 1).await;
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        // `stop` signals only the PIDs that `start` recorded in DIR, after checking that each is
        // still the binary it started.
        let result = std::process::Command::new("bash")
            .arg(dev_cluster_script())
            .arg("stop")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .output();
        match result {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!("dev-cluster.sh stop {} failed:\n{}", self.dir.path().display(), text(&output)),
            Err(e) => eprintln!("cannot run dev-cluster.sh stop: {e}"),
        }
    }
}

/// Why this machine cannot run a node, if it cannot (not root, or the node's Debian packages
/// missing: `scripts/test.sh` installs them as root).
pub fn node_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (containerd and kubelet need it)".into());
    }
    for command in ["containerd", "runc", "umoci", "iptables", "busybox"] {
        if std::process::Command::new("sh")
            .args(["-c", &format!("command -v {command}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            return Some(format!("no `{command}` (scripts/test.sh installs the node's packages as root)"));
        }
    }
    None
}

/// Parses the `KEY=VALUE` lines `dev-cluster.sh` writes (values quoted with `printf %q`, which
/// leaves the plain paths, URLs and numbers it writes unquoted).
fn parse_env(content: &str) -> HashMap<String, String> {
    content
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            assert!(
                !v.contains(['\'', '"', '\\', '$']),
                "{k}={v}: quoted values are not expected in the dev cluster's env (a temporary path with odd characters?)"
            );
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// tether in front of a dev cluster: issuer keys, a stub with its audit log, agents `agent-0` and
/// `agent-1` of cluster `dev` forwarding with the dev cluster's agent credential.
pub struct Tether {
    // Fields drop in this order: agents and stub first, the cluster (maybe) last.
    pub agents: Vec<Proc>,
    pub stub: StubProc,
    pub pki: Pki,
    /// The stub's `--audit-log` file.
    pub audit_log: PathBuf,
    /// User kubeconfigs and the audit log live here.
    tmp: tempfile::TempDir,
    pub cluster: Arc<DevCluster>,
}

impl Tether {
    /// Starts a stub and two agents in front of `cluster`; returns once both agents are welcomed.
    pub async fn start(cluster: Arc<DevCluster>) -> Tether {
        let pki = Pki::new();
        pki.agent(CLUSTER, "agent-0");
        pki.agent(CLUSTER, "agent-1");
        // The token issuer key pair, made by the binary as an operator would, unless the test
        // Pki already minted one.
        if !pki.dir.issuer_pub().exists() {
            run_tether(&["certs", "issuer", "--dir", pki.path().to_str().unwrap()]).await;
        }

        let tmp = tempfile::Builder::new().prefix("tether-e2e-").tempdir().unwrap();
        let audit_log = tmp.path().join("stub-audit.log");
        let stub = StubProc::start_with(&pki, &["--audit-log", audit_log.to_str().unwrap()]).await;

        let kubeconfig = cluster.agent_kubeconfig();
        let source = ["--kubeconfig", kubeconfig.to_str().unwrap()];
        let mut agents: Vec<Proc> =
            ["agent-0", "agent-1"].iter().map(|name| spawn_agent_with(&pki, &stub, CLUSTER, name, &source)).collect();
        for agent in &mut agents {
            agent.wait_for("connected to stub").await;
        }
        Tether { agents, stub, pki, audit_log, tmp, cluster }
    }

    /// `tether token`: a bearer token for `user` in `groups`, allowed to reach `clusters`, valid
    /// for `ttl` (humantime, e.g. "1h"; "0s" is already expired).
    pub async fn token(&self, user: &str, groups: &[&str], clusters: &[&str], ttl: &str) -> String {
        token_from(&self.pki.path().to_string_lossy(), user, groups, clusters, ttl).await
    }

    /// `tether kubeconfig` for `user` in `groups`, reaching cluster `dev` through this stub,
    /// written to a file of its own.
    pub async fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> PathBuf {
        let certs = self.pki.path().to_str().unwrap();
        let mut args = vec!["kubeconfig", "--certs", certs, "--stub", &self.stub.url, "--cluster", CLUSTER];
        args.extend_from_slice(&["--user", user, "--ttl", "1h"]);
        for group in groups {
            args.extend_from_slice(&["--group", group]);
        }
        let yaml = run_tether(&args).await;
        let path = self.tmp.path().join(format!("{}.kubeconfig", unique(user)));
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// kubectl with a kubeconfig (a user's, through the stub).
    pub async fn kubectl(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        self.cluster.kubectl(kubeconfig, args).await
    }

    /// The front-door URL of `path` on cluster `dev`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/clusters/{CLUSTER}{path}", self.stub.url)
    }

    /// An HTTPS client of the front door (HTTP/2 if `h2`), trusting the tether CA, that sends
    /// no token of its own: each request carries exactly the `Authorization` a test gives it.
    pub fn client(&self, h2: bool) -> FrontClient {
        front_client(&self.pki, h2).with_token(None)
    }

    /// A GET of `path` on cluster `dev` with `Authorization: Bearer <token>` (if any) and
    /// `headers`; the whole answer.
    pub async fn get(
        &self,
        h2: bool,
        token: Option<&str>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, http::HeaderMap, Value) {
        let mut request = http::Request::builder().method("GET").uri(self.url(path));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(tether::bridge::full(bytes::Bytes::new())).unwrap();
        let response = tokio::time::timeout(PATIENCE, self.client(h2).request(request))
            .await
            .unwrap_or_else(|_| panic!("GET {path}: no answer within {PATIENCE:?}"))
            .expect("the front door answers");
        let (parts, body) = response.into_parts();
        let bytes = http_body_util::BodyExt::collect(body).await.expect("whole body").to_bytes();
        let json =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (parts.status.as_u16(), parts.headers, json)
    }

    /// The stub's audit log, one JSON value per line.
    pub fn stub_audit(&self) -> Vec<Value> {
        json_lines(&std::fs::read_to_string(&self.audit_log).unwrap_or_default())
    }

    /// Waits until the stub's audit log has a line whose `path` contains `marker` (lines are
    /// written when a response ends, by a writer thread); returns all such lines.
    pub async fn wait_for_stub_audit(&self, marker: &str) -> Vec<Value> {
        eventually(&format!("a stub audit line for {marker:?}"), || async {
            let lines: Vec<Value> =
                self.stub_audit().into_iter().filter(|l| str_at(l, "path").contains(marker)).collect();
            if lines.is_empty() {
                Err(format!("stub audit log so far:\n{}", self.stub_audit_text()))
            } else {
                Ok(lines)
            }
        })
        .await
    }

    fn stub_audit_text(&self) -> String {
        std::fs::read_to_string(&self.audit_log).unwrap_or_else(|e| format!("({}: {e})", self.audit_log.display()))
    }
}

/// `tether token` against the issuer key in `certs`.
pub async fn token_from(certs: &str, user: &str, groups: &[&str], clusters: &[&str], ttl: &str) -> String {
    let mut args = vec!["token", "--certs", certs, "--user", user, "--ttl", ttl];
    for group in groups {
        args.extend_from_slice(&["--group", group]);
    }
    for cluster in clusters {
        args.extend_from_slice(&["--cluster", cluster]);
    }
    run_tether(&args).await.trim().to_owned()
}

/// Runs the tether binary to completion; returns its stdout, panics if it fails.
pub async fn run_tether(args: &[&str]) -> String {
    let mut command = tokio::process::Command::new(tether_bin());
    command.args(args);
    let what = format!("tether {}", args.join(" "));
    let output = run(command, None, PATIENCE, &what).await;
    expect_ok(&output, &what)
}
