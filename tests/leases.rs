//! Replica membership from Kubernetes Leases, against a real kube-apiserver (v1.20.2 from
//! scripts/dev-cluster.sh): replicas run in-process through the library API, each with its own
//! watch channel, in a namespace of their own test. The tests prove that replicas find each
//! other, that a replica that stops cleanly leaves at once and one that dies leaves after its
//! Lease's duration (and not before), that stale, skewed or malformed Leases written by others
//! follow the rules, that an API server that refuses (RBAC, a missing namespace), cannot be
//! reached or fails TLS is named plainly, once, while the replica keeps itself as a member, and
//! that two replicas sharing an id are named.
//!
//! Membership changes are awaited on the watch channel; log lines and the API server's audit
//! log have no event to wait on and are polled with a deadline.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use support::kube::{AGENT_USER, DevCluster, Subject, eventually, unique};
use tether::hub::leases::{self, LeaseConfig, LeaseMembership};
use tether::hub::members::Members;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A replica's peer address in these tests (never dialled).
fn address(id: &str) -> String {
    format!("{id}.stub.test:7444")
}

fn members(ids: &[&str]) -> Members {
    ids.iter().map(|id| (id.to_string(), address(id))).collect()
}

/// A replica running [`LeaseMembership::run`] on a task of its own.
struct Replica {
    members: watch::Receiver<Members>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Replica {
    async fn start(namespace: &str, kubeconfig: &Path, id: &str, duration: Duration, renew_every: Duration) -> Replica {
        let config = LeaseConfig {
            namespace: namespace.to_owned(),
            kubeconfig: Some(kubeconfig.to_owned()),
            id: id.to_owned(),
            peer_address: address(id),
            duration,
            renew_every,
        };
        Replica::start_with(config).await
    }

    async fn start_with(config: LeaseConfig) -> Replica {
        let membership = LeaseMembership::connect(config).await.expect("connect");
        let (sender, receiver) = watch::channel(Members::new());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(membership.run(sender, cancel.clone()));
        Replica { members: receiver, cancel, task }
    }

    /// Waits until the members satisfy `want`, at most `limit`; returns how long it took.
    async fn wait_for(&mut self, what: &str, limit: Duration, want: impl FnMut(&Members) -> bool) -> Duration {
        let started = Instant::now();
        let result = tokio::time::timeout(limit, self.members.wait_for(want)).await.map(|r| r.is_ok());
        match result {
            Ok(true) => started.elapsed(),
            Ok(false) => panic!("{what}: the replica's task ended"),
            Err(_) => panic!("{what}: not within {limit:?}; members: {:?}", *self.members.borrow()),
        }
    }

    /// Cancels the replica and waits for `run` to return (after deleting its Lease).
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("run returns within 10 s of cancel")
            .expect("run does not panic");
    }
}

/// A fresh namespace on the shared dev cluster.
async fn namespace(cluster: &DevCluster, tag: &str) -> String {
    let namespace = unique(tag);
    cluster.admin(&["create", "namespace", &namespace]).await;
    namespace
}

/// An admin client of the dev cluster's Leases in `namespace`.
async fn admin_leases(cluster: &DevCluster, namespace: &str) -> Api<Lease> {
    let kubeconfig = kube::config::Kubeconfig::read_from(cluster.admin_kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    Api::namespaced(kube::Client::try_from(config).unwrap(), namespace)
}

/// The log lines of `tether` (debug and up) written on this test's thread. `#[tokio::test]`
/// runs every task of the test on that thread, so the replicas' lines land here and other
/// tests' do not.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        // While exactly one dispatcher exists in the process, tracing-core 0.1 caches a call
        // site's interest from the default of whichever thread first reaches it: a replica of a
        // test that captures nothing (no subscriber: "never") would silence that line for the
        // capturing test too (tokio-rs/tracing#3611). A second dispatcher that lives as long as
        // the process keeps tracing-core on the path that asks every registered one.
        static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("tether=debug"))
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Lines at `level` ("WARN", "DEBUG", ...) containing `needle`.
    fn count(&self, level: &str, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(level) && l.contains(needle)).count()
    }

    /// Waits (polling, bounded) until at least `n` lines at `level` contain `needle`.
    async fn wait_for(&self, level: &str, needle: &str, n: usize) {
        eventually(&format!("{n} {level} line(s) with {needle:?}"), || async {
            if self.count(level, needle) >= n { Ok(()) } else { Err(format!("log so far:\n{}", self.text())) }
        })
        .await
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

// -------------------------------------------------------------------------------------------------

#[tokio::test]
async fn replicas_see_each_other_and_one_that_stops_leaves_at_once() {
    let cluster = DevCluster::shared().await;
    let namespace = namespace(&cluster, "leases").await;
    let admin = cluster.admin_kubeconfig();
    // A long duration: whatever drops `b` within seconds below is its deleted Lease, not expiry.
    let (duration, renew) = (Duration::from_secs(15), Duration::from_millis(500));
    let mut a = Replica::start(&namespace, &admin, "a", duration, renew).await;
    let mut b = Replica::start(&namespace, &admin, "b", duration, renew).await;

    let both = members(&["a", "b"]);
    let took = a.wait_for("a sees b", Duration::from_secs(10), |m| *m == both).await;
    b.wait_for("b sees a", Duration::from_secs(10), |m| *m == both).await;
    eprintln!("a saw b after {took:?}");

    // The Lease as the API server keeps it.
    let lease = admin_leases(&cluster, &namespace).await.get("tether-stub-b").await.unwrap();
    let labels = lease.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("app.kubernetes.io/name").map(String::as_str), Some("tether"), "{lease:?}");
    assert_eq!(labels.get("app.kubernetes.io/component").map(String::as_str), Some("stub"), "{lease:?}");
    let annotations = lease.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get(leases::PEER_ADDRESS_ANNOTATION), Some(&address("b")), "{lease:?}");
    let spec = lease.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert!(spec.acquire_time.is_some() && spec.renew_time.is_some(), "{spec:?}");
    assert!(spec.acquire_time <= spec.renew_time, "{spec:?}");

    // b stops cleanly: its Lease is gone when `run` returns, and a drops it at its next listing.
    let stopped = Instant::now();
    b.stop().await;
    let gone = admin_leases(&cluster, &namespace).await.get_opt("tether-stub-b").await.unwrap();
    assert!(gone.is_none(), "b's Lease is still there after run returned: {gone:?}");
    let took = a.wait_for("a drops b", Duration::from_secs(10), |m| *m == members(&["a"])).await;
    let since_stop = stopped.elapsed();
    eprintln!("a dropped b {since_stop:?} after b was cancelled ({took:?} after run returned)");
    assert!(took < renew * 4, "a dropped b {took:?} after its Lease was deleted; expected about {renew:?}");
    a.stop().await;
}

#[tokio::test]
async fn a_replica_that_dies_is_dropped_after_its_duration_and_not_before() {
    let cluster = DevCluster::shared().await;
    let namespace = namespace(&cluster, "leases-dead").await;
    let admin = cluster.admin_kubeconfig();
    let (duration, renew) = (Duration::from_secs(3), Duration::from_millis(500));
    let mut a = Replica::start(&namespace, &admin, "a", duration, renew).await;
    let b = Replica::start(&namespace, &admin, "b", duration, renew).await;
    a.wait_for("a sees b", Duration::from_secs(10), |m| *m == members(&["a", "b"])).await;

    // b dies without a word: its Lease stays, unrenewed.
    let died = Instant::now();
    b.task.abort();
    assert!(b.task.await.unwrap_err().is_cancelled());
    assert!(a.members.borrow().contains_key("b"), "b must still be a member right after it died");
    a.wait_for("a drops b", Duration::from_secs(15), |m| *m == members(&["a"])).await;
    let took = died.elapsed();
    eprintln!("a dropped b {took:?} after it died (duration {duration:?}, renewed every {renew:?})");
    // b's last renewal was at most one interval before it died; a counts it for `duration` from
    // when it saw that renewal, and notices at a listing.
    let earliest = duration - renew - Duration::from_millis(300);
    let latest = duration + renew * 2 + Duration::from_secs(2);
    assert!(took >= earliest, "a dropped b after {took:?}, before its Lease could have expired ({earliest:?})");
    assert!(took <= latest, "a dropped b after {took:?}, later than {latest:?}");
    let lease = admin_leases(&cluster, &namespace).await.get_opt("tether-stub-b").await.unwrap();
    assert!(lease.is_some(), "b's Lease is expired, not deleted");
    a.stop().await;
}

#[tokio::test]
async fn stale_skewed_and_malformed_leases_follow_the_rules() {
    let (logs, _guard) = Logs::capture();
    let cluster = DevCluster::shared().await;
    let namespace = namespace(&cluster, "leases-odd").await;
    let api = admin_leases(&cluster, &namespace).await;
    let now = std::time::SystemTime::now();
    let write = |id: &str, renewed: std::time::SystemTime, seconds: i32, edit: fn(&mut Lease)| {
        let mut lease = leases::own_lease(&LeaseConfig::new(&namespace, id, &address(id)), renewed, renewed);
        lease.spec.as_mut().unwrap().lease_duration_seconds = Some(seconds);
        edit(&mut lease);
        let api = api.clone();
        async move { api.create(&PostParams::default(), &lease).await.unwrap() }
    };
    // A replica that died a minute ago without deleting its Lease.
    write("stale", now - Duration::from_secs(60), 15, |_| {}).await;
    // A replica whose clock runs an hour ahead, and which renews no more.
    write("ahead", now + Duration::from_secs(3600), 3, |_| {}).await;
    // Leases that are not a replica's: no peer address, a holder that does not match the name.
    write("noaddr", now, 15, |l| l.metadata.annotations = None).await;
    write("misnamed", now, 15, |l| l.spec.as_mut().unwrap().holder_identity = Some("other".into())).await;

    let (duration, renew) = (Duration::from_secs(3), Duration::from_millis(300));
    let mut a = Replica::start(&namespace, &cluster.admin_kubeconfig(), "a", duration, renew).await;
    let only = |m: &Members| {
        for id in ["stale", "noaddr", "misnamed", "other"] {
            assert!(!m.contains_key(id), "{id} taken as a member: {m:?}");
        }
    };
    a.wait_for("a counts ahead", Duration::from_secs(10), |m| {
        only(m);
        *m == members(&["a", "ahead"])
    })
    .await;
    // Counted at first sight, for no more than its duration, although its renewTime is an hour
    // away.
    let seen = Instant::now();
    a.wait_for("a drops ahead", Duration::from_secs(15), |m| {
        only(m);
        *m == members(&["a"])
    })
    .await;
    let took = seen.elapsed();
    assert!(took <= duration + renew * 2 + Duration::from_secs(2), "ahead counted for {took:?}");
    assert!(took >= duration - renew * 2, "ahead dropped after only {took:?}");

    // Each odd Lease is named once, with its reason, however many listings it was in.
    for (name, reason) in [
        ("tether-stub-noaddr", "no tether.io/peer-address annotation"),
        ("tether-stub-misnamed", "should be named \"tether-stub-other\""),
    ] {
        let needle = format!("ignoring the Lease \"{name}\"");
        assert_eq!(logs.count("WARN", &needle), 1, "{}", logs.text());
        assert!(logs.text().lines().any(|l| l.contains(&needle) && l.contains(reason)), "{}", logs.text());
    }
    a.stop().await;
}

#[tokio::test]
async fn a_replica_without_rbac_names_leases_and_the_namespace_once_and_recovers() {
    let (logs, _guard) = Logs::capture();
    let cluster = DevCluster::shared().await;
    let namespace = namespace(&cluster, "leases-rbac").await;
    // tether-agent may only impersonate: nothing on Leases.
    let agent = cluster.agent_kubeconfig();
    let mut a = Replica::start(&namespace, &agent, "a", Duration::from_secs(3), Duration::from_millis(300)).await;
    a.wait_for("a has itself", Duration::from_secs(5), |m| *m == members(&["a"])).await;

    // Several refused rounds (the API server's audit log counts them), one warning.
    cluster.wait_for_audit(&format!("/namespaces/{namespace}/leases"), 6).await;
    let warning = format!("may not patch leases in namespace \"{namespace}\"");
    logs.wait_for("WARN", &warning, 1).await;
    logs.wait_for("DEBUG", "still failing", 2).await;
    assert_eq!(logs.count("WARN", &warning), 1, "{}", logs.text());
    let line = logs.text().lines().find(|l| l.contains(&warning)).unwrap().to_owned();
    for needed in ["leases.coordination.k8s.io", leases::RBAC_VERBS, "tether hub", AGENT_USER] {
        assert!(line.contains(needed), "the warning does not mention {needed:?}: {line}");
    }
    assert_eq!(*a.members.borrow(), members(&["a"]), "a keeps publishing itself");
    let lease = admin_leases(&cluster, &namespace).await.get_opt("tether-stub-a").await.unwrap();
    assert!(lease.is_none(), "{lease:?}");

    // Without `create`, an apply that would create the Lease is refused too (with no reason
    // from the API server): named as such, as a new problem.
    let role = |verbs: &[&str]| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: tether-stub
  namespace: {namespace}
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: {verbs:?}
"
        )
    };
    cluster.apply_as_admin(&role(&["patch", "list", "delete"])).await;
    cluster.bind(&namespace, "Role", "tether-stub", Subject::User(AGENT_USER)).await;
    cluster.wait_until_allowed(AGENT_USER, &[], &["patch", "leases.coordination.k8s.io", "-n", &namespace]).await;
    logs.wait_for("WARN", &format!("may not create leases in namespace \"{namespace}\""), 1).await;

    // The Role the warning asks for is enough: the next round succeeds, and says so.
    cluster.apply_as_admin(&role(&leases::RBAC_VERBS.split(", ").collect::<Vec<_>>())).await;
    cluster.wait_until_allowed(AGENT_USER, &[], &["create", "leases.coordination.k8s.io", "-n", &namespace]).await;
    logs.wait_for("INFO", "the hub's API server answers again", 1).await;
    let lease = admin_leases(&cluster, &namespace).await.get("tether-stub-a").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("a"));
    a.stop().await;
    // Stopping deletes the Lease: asked of the API server, not of the log (its line once went
    // missing in a run on a loaded machine; the Lease is what the other replicas see).
    let lease = admin_leases(&cluster, &namespace).await.get_opt("tether-stub-a").await.unwrap();
    assert!(lease.is_none(), "the stopped replica's Lease stayed: {lease:?}\n{}", logs.text());
}

/// A kubeconfig for `server` that trusts `ca_pem` and sends a made-up token.
fn kubeconfig(dir: &Path, name: &str, server: &str, ca_pem: &str) -> PathBuf {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: hub
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: stub
  user:
    token: not-a-real-token
contexts:
- name: hub
  context:
    cluster: hub
    user: stub
current-context: hub
"
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn unreachable_untrusted_and_missing_places_are_named_once() {
    let (logs, _guard) = Logs::capture();
    let cluster = DevCluster::shared().await;
    let tmp = tempfile::tempdir().unwrap();
    let stranger =
        tether::identity::certs::new_ca("not the API server's CA", tether::identity::certs::Validity::days(1))
            .unwrap()
            .cert_pem;
    // A port nobody listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let nowhere = format!("https://{closed}");
    let missing = unique("leases-missing");
    let cases = [
        (
            "hub",
            kubeconfig(tmp.path(), "closed", &nowhere, &stranger),
            format!("cannot reach the hub's API server at {nowhere}: "),
        ),
        (
            "hub",
            kubeconfig(tmp.path(), "untrusted", cluster.apiserver_url(), &stranger),
            format!("no TLS connection to the hub's API server at {}: ", cluster.apiserver_url().trim_end_matches('/')),
        ),
        (missing.as_str(), cluster.admin_kubeconfig(), format!("namespace \"{missing}\" does not exist")),
    ];
    for (namespace, kubeconfig, warning) in cases {
        let (duration, renew) = (Duration::from_secs(3), Duration::from_millis(200));
        let mut a = Replica::start(namespace, &kubeconfig, "a", duration, renew).await;
        logs.wait_for("WARN", &warning, 1).await;
        let rounds = logs.count("DEBUG", "still failing");
        logs.wait_for("DEBUG", "still failing", rounds + 3).await;
        assert_eq!(logs.count("WARN", &warning), 1, "{}", logs.text());
        a.wait_for("a has itself", Duration::from_secs(5), |m| *m == members(&["a"])).await;
        a.stop().await;
    }
}

#[tokio::test]
async fn two_replicas_with_one_id_are_named() {
    let (logs, _guard) = Logs::capture();
    let cluster = DevCluster::shared().await;
    let namespace = namespace(&cluster, "leases-dup").await;
    let mut config = LeaseConfig::new(&namespace, "twin", "10.0.0.1:7444");
    (config.kubeconfig, config.duration, config.renew_every) =
        (Some(cluster.admin_kubeconfig()), Duration::from_secs(3), Duration::from_millis(200));
    let first = Replica::start_with(config.clone()).await;
    config.peer_address = "10.0.0.2:7444".into();
    let second = Replica::start_with(config).await;
    logs.wait_for("WARN", "two replicas share the id \"twin\"", 1).await;
    first.stop().await;
    second.stop().await;
}
