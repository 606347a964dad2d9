//! Who the stub replicas are, from Kubernetes Leases (`--members kubernetes:NAMESPACE`). Each
//! replica holds a `coordination.k8s.io/v1` Lease of its own in the hub's namespace, named
//! `tether-stub-ID`, labelled `app.kubernetes.io/name=tether,app.kubernetes.io/component=stub`,
//! with `holderIdentity` = its id, `leaseDurationSeconds`, and its peer address in the
//! annotation `tether.io/peer-address`. It renews the Lease every `renew_every` (server-side
//! apply) and lists the labelled Leases; the members are the Leases that still count, and always
//! this replica itself. When it stops it deletes its Lease, so the others drop it at once.
//!
//! # When a Lease counts
//!
//! The replicas' wall clocks need not agree, so a Lease's `renewTime` is used as a heartbeat
//! counter, not as a time, once this replica has seen it before:
//!
//! - A Lease counts while its `renewTime` has **changed** (to any other value) within its
//!   `leaseDurationSeconds`, as observed on this replica's monotonic clock. A holder whose clock
//!   is hours ahead or behind is treated exactly like one whose clock is right.
//! - On the **first** observation of a Lease (no history yet: this replica just started, or the
//!   Lease just appeared) the only evidence is its wall-clock time, so it counts for what is left
//!   of `renewTime + leaseDurationSeconds` by this replica's wall clock, and never for more than
//!   `leaseDurationSeconds`. The Lease of a replica that died without deleting it is not taken as
//!   a member at start; one written by a clock that runs ahead gains nothing; a live holder whose
//!   clock runs behind is counted at its next renewal.
//! - A Lease missing from a listing is gone at once (it was deleted).
//!
//! Members are recomputed at each listing, so a replica that dies without deleting its Lease
//! leaves the others' member sets between `duration` and `duration + 2 * renew_every` after its
//! last renewal. While the API server cannot be reached or refuses, the last published members
//! stay: the API server's silence says nothing about the replicas (peer links notice dead
//! replicas on their own). Such a failure is logged once as a warning that names the problem
//! and what to do ([`LeaseError`]), then at debug level each round until it changes or ends
//! (which is logged too).
//!
//! The rule is [`LeaseBook`], pure and property-tested; reading a Lease ([`read_lease`]) and
//! naming an API server's refusal ([`LeaseError::from_kube`]) are pure too. [`LeaseMembership`]
//! is the I/O around them.

use std::collections::BTreeMap;
use std::error::Error as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::members::{Members, is_host_port, validate_id};
use crate::identity::names;

/// How long a Lease lasts without renewal, unless configured.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(15);
/// How often a replica renews its Lease and lists the others, unless configured.
pub const DEFAULT_RENEW_EVERY: Duration = Duration::from_secs(3);
/// Every replica's Lease is named this followed by its id.
pub const NAME_PREFIX: &str = "tether-stub-";
/// The annotation that carries a replica's peer address (`HOST:PORT`).
pub const PEER_ADDRESS_ANNOTATION: &str = "tether.io/peer-address";
/// The labels of every replica's Lease, which the listing selects on.
pub const LABELS: [(&str, &str); 2] = [("app.kubernetes.io/name", "tether"), ("app.kubernetes.io/component", "stub")];
/// The server-side apply field manager of the Lease's fields.
const FIELD_MANAGER: &str = "tether-stub";
/// The longest wait for one API request; a renewal that takes longer than this is late anyway.
const REQUEST_LIMIT_MAX: Duration = Duration::from_secs(10);
/// The longest wait for deleting the Lease at shutdown; after it, the Lease simply expires.
const DELETE_LIMIT: Duration = Duration::from_secs(3);
/// What RBAC must allow on Leases in the hub's namespace (the Role `tether hub` prints).
pub const RBAC_VERBS: &str = "get, list, watch, create, update, patch, delete";

/// The name of replica `id`'s Lease.
pub fn lease_name(id: &str) -> String {
    format!("{NAME_PREFIX}{id}")
}

/// The label selector of the replicas' Leases.
pub fn label_selector() -> String {
    LABELS.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Where this replica's Lease lives and what it says.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The hub's namespace, where every replica's Lease is.
    pub namespace: String,
    /// Kubeconfig of the hub's API server; None: in-cluster or the default kubeconfig
    /// (`kube::Config::infer`).
    pub kubeconfig: Option<PathBuf>,
    /// This replica's id (see [`validate_id`]).
    pub id: String,
    /// `HOST:PORT` the other replicas dial for peer links.
    pub peer_address: String,
    /// How long the Lease lasts without renewal (whole seconds; rounded up).
    pub duration: Duration,
    /// How often the Lease is renewed and the others listed; less than `duration`.
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// A configuration with the default duration and renewal interval, from in-cluster or the
    /// default kubeconfig.
    pub fn new(namespace: &str, id: &str, peer_address: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.to_owned(),
            kubeconfig: None,
            id: id.to_owned(),
            peer_address: peer_address.to_owned(),
            duration: DEFAULT_DURATION,
            renew_every: DEFAULT_RENEW_EVERY,
        }
    }

    /// Checks every field; the error names the one at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        names::validate("namespace", &self.namespace).context("the hub's namespace for Leases")?;
        validate_id(&self.id).context("this replica's id")?;
        anyhow::ensure!(
            is_host_port(&self.peer_address),
            "peer address {:?} is not HOST:PORT with a port number",
            self.peer_address
        );
        anyhow::ensure!(
            self.duration >= Duration::from_secs(1),
            "lease duration {:?} is less than a second (Leases count whole seconds)",
            self.duration
        );
        anyhow::ensure!(
            !self.renew_every.is_zero() && self.renew_every < self.duration,
            "a Lease renewed every {:?} would expire (after {:?}) before its renewal; renew more often",
            self.renew_every,
            self.duration
        );
        Ok(())
    }

    /// `leaseDurationSeconds`: the duration in whole seconds, rounded up.
    fn duration_seconds(&self) -> i32 {
        let secs = self.duration.as_secs() + u64::from(self.duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }

    /// The longest wait for one request: half the duration (so one slow request cannot cost
    /// the Lease), at least one second, at most [`REQUEST_LIMIT_MAX`].
    fn request_limit(&self) -> Duration {
        (self.duration / 2).clamp(Duration::from_secs(1), REQUEST_LIMIT_MAX)
    }
}

// -------------------------------------------------------------------------------------------------
// Reading and writing a Lease (pure)
// -------------------------------------------------------------------------------------------------

/// What one replica's Lease says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The holder: the replica's id.
    pub id: String,
    /// Its peer address.
    pub address: String,
    /// `renewTime`, by the holder's clock.
    pub renewed: SystemTime,
    /// `leaseDurationSeconds`.
    pub duration: Duration,
}

/// Why a labelled Lease is not taken as a replica's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    /// No `holderIdentity`: nobody holds it.
    #[error("it has no holder (spec.holderIdentity)")]
    NoHolder,
    /// The holder is not a valid replica id.
    #[error("its holder {0:?} is not a valid replica id")]
    BadHolder(String),
    /// The name is not `tether-stub-HOLDER`, so it could shadow another replica's Lease.
    #[error("its holder is {holder:?}, so it should be named {expected:?}")]
    Misnamed { holder: String, expected: String },
    /// No peer-address annotation.
    #[error("it has no {PEER_ADDRESS_ANNOTATION} annotation")]
    NoAddress,
    /// The peer-address annotation is not `HOST:PORT`.
    #[error("its {PEER_ADDRESS_ANNOTATION} annotation {0:?} is not HOST:PORT")]
    BadAddress(String),
    /// No `renewTime`.
    #[error("it has no spec.renewTime")]
    NoRenewTime,
}

/// Reads a listed Lease; `fallback` is the duration when the Lease states none.
pub fn read_lease(lease: &Lease, fallback: Duration) -> Result<Observation, Ignored> {
    let spec = lease.spec.as_ref();
    let holder = spec.and_then(|s| s.holder_identity.as_deref()).filter(|h| !h.is_empty()).ok_or(Ignored::NoHolder)?;
    validate_id(holder).map_err(|_| Ignored::BadHolder(holder.to_owned()))?;
    let expected = lease_name(holder);
    if lease.metadata.name.as_deref() != Some(expected.as_str()) {
        return Err(Ignored::Misnamed { holder: holder.to_owned(), expected });
    }
    let address =
        lease.metadata.annotations.as_ref().and_then(|a| a.get(PEER_ADDRESS_ANNOTATION)).ok_or(Ignored::NoAddress)?;
    if !is_host_port(address) {
        return Err(Ignored::BadAddress(address.clone()));
    }
    let renewed = spec.and_then(|s| s.renew_time.as_ref()).ok_or(Ignored::NoRenewTime)?;
    let duration = match spec.and_then(|s| s.lease_duration_seconds) {
        Some(secs) if secs > 0 => Duration::from_secs(secs.unsigned_abs().into()),
        _ => fallback,
    };
    Ok(Observation { id: holder.to_owned(), address: address.clone(), renewed: to_wall(renewed), duration })
}

/// The Lease this replica applies: renewed `now`, first acquired at `acquired`.
pub fn own_lease(config: &LeaseConfig, now: SystemTime, acquired: SystemTime) -> Lease {
    let labels = LABELS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let annotations = [(PEER_ADDRESS_ANNOTATION.to_owned(), config.peer_address.clone())].into();
    Lease {
        metadata: ObjectMeta {
            name: Some(lease_name(&config.id)),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(config.id.clone()),
            lease_duration_seconds: Some(config.duration_seconds()),
            acquire_time: Some(to_micro(acquired)),
            renew_time: Some(to_micro(now)),
            ..LeaseSpec::default()
        }),
    }
}

/// A `MicroTime` as a wall-clock time (by microseconds, so no jiff feature is assumed).
fn to_wall(time: &MicroTime) -> SystemTime {
    let micros = time.0.as_microsecond();
    let magnitude = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 { SystemTime::UNIX_EPOCH + magnitude } else { SystemTime::UNIX_EPOCH - magnitude }
}

/// A wall-clock time as a `MicroTime` (the API server keeps microseconds).
fn to_micro(time: SystemTime) -> MicroTime {
    let micros = match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_micros()).unwrap_or(i64::MAX),
    };
    let bound = if micros < 0 { k8s_openapi::jiff::Timestamp::MIN } else { k8s_openapi::jiff::Timestamp::MAX };
    let timestamp = k8s_openapi::jiff::Timestamp::from_microsecond(micros).unwrap_or(bound);
    MicroTime(timestamp)
}

// -------------------------------------------------------------------------------------------------
// The expiry rule (pure)
// -------------------------------------------------------------------------------------------------

/// The other replicas' Leases as this replica has seen them, and the rule for which count (see
/// the module header).
#[derive(Debug, Clone)]
pub struct LeaseBook {
    own_id: String,
    own_address: String,
    seen: BTreeMap<String, Seen>,
}

#[derive(Debug, Clone)]
struct Seen {
    address: String,
    /// `renewTime` at the last observation: compared, never read as a time after the first.
    renewed: SystemTime,
    /// Until when (monotonic) the Lease counts without another change of `renewed`.
    until: Instant,
}

impl LeaseBook {
    /// An empty book of the replica `own_id`, whose peer address is `own_address`.
    pub fn new(own_id: &str, own_address: &str) -> LeaseBook {
        LeaseBook { own_id: own_id.to_owned(), own_address: own_address.to_owned(), seen: BTreeMap::new() }
    }

    /// Takes a whole listing, made when this replica's wall clock read `wall` and its monotonic
    /// clock `now`. This replica's own Lease is skipped (it is always a member).
    pub fn observe(&mut self, listing: impl IntoIterator<Item = Observation>, wall: SystemTime, now: Instant) {
        let mut next = BTreeMap::new();
        for lease in listing {
            if lease.id == self.own_id {
                continue;
            }
            let until = match self.seen.remove(&lease.id) {
                Some(seen) if seen.renewed == lease.renewed => seen.until,
                // A change, in either direction: the holder is alive now, whatever its clock says.
                Some(_) => now + lease.duration,
                // First sight: what is left by the wall clock, never more than the duration.
                None => {
                    let end = lease.renewed.checked_add(lease.duration);
                    let left = end.and_then(|end| end.duration_since(wall).ok()).unwrap_or(Duration::ZERO);
                    now + left.min(lease.duration)
                }
            };
            next.insert(lease.id, Seen { address: lease.address, renewed: lease.renewed, until });
        }
        // Whatever was not listed is gone: deleted by its replica, or by an operator.
        self.seen = next;
    }

    /// The members at `now`: this replica and every Lease that still counts.
    pub fn members(&self, now: Instant) -> Members {
        let mut members: Members =
            self.seen.iter().filter(|(_, s)| s.until > now).map(|(id, s)| (id.clone(), s.address.clone())).collect();
        members.insert(self.own_id.clone(), self.own_address.clone());
        members
    }
}

/// What changed between two member sets, for the log: `id@address` of those who joined (or
/// moved to a new address), ids of those who left.
pub fn changes(old: &Members, new: &Members) -> (Vec<String>, Vec<String>) {
    let joined = new
        .iter()
        .filter(|(id, address)| old.get(*id) != Some(address))
        .map(|(id, address)| format!("{id}@{address}"))
        .collect();
    let left = old.keys().filter(|id| !new.contains_key(*id)).cloned().collect();
    (joined, left)
}

// -------------------------------------------------------------------------------------------------
// Naming the API server's refusals (pure)
// -------------------------------------------------------------------------------------------------

/// Why renewing or listing the Leases failed. The text is for the operator: it names the
/// problem and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// RBAC does not let the stub's identity do `verb` on Leases (403).
    #[error(
        "the stub's identity may not {verb} leases in namespace {namespace:?}: grant {RBAC_VERBS} on \
         leases.coordination.k8s.io in that namespace (`tether hub` prints that Role); the API server said: {said}"
    )]
    Forbidden { verb: String, namespace: String, said: String },
    /// The namespace does not exist (404 naming the namespace).
    #[error(
        "namespace {namespace:?} does not exist on the hub's API server, so no Lease can be written there: \
         create it (`tether hub` does) or name the hub's namespace in --members kubernetes:NAMESPACE"
    )]
    NoNamespace { namespace: String },
    /// The API server does not serve `coordination.k8s.io/v1` Leases (any other 404).
    #[error(
        "the hub's API server does not serve leases.coordination.k8s.io/v1 (Kubernetes 1.14 and later do); \
         the API server said: {said}"
    )]
    NoLeaseApi { said: String },
    /// The credential is refused (401).
    #[error(
        "the hub's API server does not accept the stub's credential (401 Unauthorized): check the token or \
         client certificate of the hub's kubeconfig, or the pod's service account token"
    )]
    Unauthorized,
    /// Any other refusal by the API server.
    #[error("the hub's API server refused to {verb} leases in namespace {namespace:?}: {code} {reason}: {said}")]
    Refused { verb: String, namespace: String, code: u16, reason: String, said: String },
    /// The TLS handshake failed: the CA does not match the server's certificate, or the name.
    #[error(
        "no TLS connection to the hub's API server at {server}: {cause}; check the CA (certificate-authority-data) \
         and server address of the hub's kubeconfig, or the pod's service account CA"
    )]
    Tls { server: String, cause: String },
    /// The API server could not be reached.
    #[error(
        "cannot reach the hub's API server at {server}: {cause}; check the server address of the hub's kubeconfig \
         and that the API server runs"
    )]
    Unreachable { server: String, cause: String },
    /// No answer in time.
    #[error(
        "the hub's API server did not answer a request to {verb} leases in namespace {namespace:?} within {limit:?}"
    )]
    Timeout { verb: String, namespace: String, limit: Duration },
}

impl LeaseError {
    /// Names the failure of a request to `verb` (the RBAC verb: patch, list, delete) Leases in
    /// `namespace` of the API server at `server`.
    pub fn from_kube(error: &kube::Error, verb: &str, namespace: &str, server: &str) -> LeaseError {
        let server = server.trim_end_matches('/').to_owned();
        let status = match error {
            kube::Error::Api(status) => status,
            other => {
                // kube's own layer ("ServiceError: ...") says nothing the causes do not.
                let cause = other.source().map_or_else(|| crate::errors::chain(other), crate::errors::chain);
                return if is_tls(other) {
                    LeaseError::Tls { server, cause }
                } else {
                    LeaseError::Unreachable { server, cause }
                };
            }
        };
        let said = status.message.clone();
        match status.code {
            401 => LeaseError::Unauthorized,
            403 => {
                // RBAC names the verb it refused ("User X cannot patch resource ..."), except
                // where an apply would create the Lease: the API server then checks `create`
                // too and refuses with no reason ("... is forbidden: ").
                let named = said.split_once(" cannot ").and_then(|(_, rest)| rest.split_whitespace().next());
                let verb = match named {
                    Some(named) => named,
                    None if verb == "patch" => "create",
                    None => verb,
                };
                LeaseError::Forbidden { verb: verb.to_owned(), namespace: namespace.to_owned(), said }
            }
            404 if status.details.as_ref().is_some_and(|d| d.kind == "namespaces") => {
                LeaseError::NoNamespace { namespace: namespace.to_owned() }
            }
            404 => LeaseError::NoLeaseApi { said },
            code => LeaseError::Refused {
                verb: verb.to_owned(),
                namespace: namespace.to_owned(),
                code,
                reason: status.reason.clone(),
                said,
            },
        }
    }
}

/// Whether a transport error is a failed TLS handshake. The rustls error arrives wrapped in
/// `io::Error`s (tokio-rustls wraps it, hyper-rustls wraps that), whose `source()` skips what
/// they wrap, so each one is opened with `get_ref`.
fn is_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        let mut inner = e;
        loop {
            if inner.is::<rustls::Error>() {
                return true;
            }
            match inner.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
                Some(wrapped) => inner = wrapped,
                None => break,
            }
        }
        next = e.source();
    }
    false
}

/// Which failure was logged last, so that one failing every few seconds is logged once, and
/// its end too.
#[derive(Debug, Default, Clone)]
pub struct Complaints {
    current: Option<String>,
}

impl Complaints {
    /// Whether `problem` is news (not the one logged last); it becomes the current one.
    pub fn failed(&mut self, problem: &str) -> bool {
        if self.current.as_deref() == Some(problem) {
            return false;
        }
        self.current = Some(problem.to_owned());
        true
    }

    /// The problem that this success ends, if any.
    pub fn succeeded(&mut self) -> Option<String> {
        self.current.take()
    }
}

// -------------------------------------------------------------------------------------------------
// The I/O
// -------------------------------------------------------------------------------------------------

/// This replica's Lease and its view of the others'.
pub struct LeaseMembership {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The API server's URL, for messages.
    server: String,
}

impl std::fmt::Debug for LeaseMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseMembership").field("config", &self.config).field("server", &self.server).finish()
    }
}

impl LeaseMembership {
    /// Checks the configuration and builds the client (fails with a clear error if the
    /// kubeconfig cannot be read). Nothing is sent yet: the API server may be down now and
    /// come up later.
    pub async fn connect(config: LeaseConfig) -> anyhow::Result<LeaseMembership> {
        config.validate()?;
        let (client, server) = super::client::hub_client(config.kubeconfig.as_deref()).await?;
        let api = Api::namespaced(client, &config.namespace);
        Ok(LeaseMembership { api, config, server })
    }

    /// Renews this replica's Lease every `renew_every` and lists the namespace's stub Leases,
    /// publishing the members (always including this replica itself) on `members` whenever they
    /// change. Runs until `cancel`, then deletes its own Lease (bounded wait, best effort) so
    /// peers drop it at once.
    pub async fn run(self, members: watch::Sender<Members>, cancel: CancellationToken) {
        let span = info_span!("leases", namespace = %self.config.namespace, id = %self.config.id);
        self.run_inner(members, cancel).instrument(span).await
    }

    async fn run_inner(self, members: watch::Sender<Members>, cancel: CancellationToken) {
        let mut runner = Runner::new(self);
        runner.publish(&members, runner.book.members(Instant::now()));
        info!(server = %runner.membership.server, every = ?runner.membership.config.renew_every, "holding a Lease");
        let mut ticks = tokio::time::interval(runner.membership.config.renew_every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = ticks.tick() => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = runner.round(&members) => {}
            }
        }
        runner.release().await;
    }
}

/// The state of [`LeaseMembership::run`].
struct Runner {
    membership: LeaseMembership,
    book: LeaseBook,
    complaints: Complaints,
    /// Leases not taken, by name, with the reason last logged.
    ignored: BTreeMap<String, Ignored>,
    /// When this process first wrote its Lease (`acquireTime`).
    acquired: Option<SystemTime>,
    /// Whether another replica's address in our Lease (a shared id) was logged.
    shared_id_logged: bool,
}

impl Runner {
    fn new(membership: LeaseMembership) -> Runner {
        let book = LeaseBook::new(&membership.config.id, &membership.config.peer_address);
        Runner {
            membership,
            book,
            complaints: Complaints::default(),
            ignored: BTreeMap::new(),
            acquired: None,
            shared_id_logged: false,
        }
    }

    fn config(&self) -> &LeaseConfig {
        &self.membership.config
    }

    /// Bounds one request and names its failure.
    async fn bounded<T>(
        &self,
        verb: &str,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        let (namespace, limit) = (&self.config().namespace, self.config().request_limit());
        match tokio::time::timeout(limit, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(LeaseError::from_kube(&e, verb, namespace, &self.membership.server)),
            Err(_) => Err(LeaseError::Timeout { verb: verb.to_owned(), namespace: namespace.clone(), limit }),
        }
    }

    /// One renewal and one listing. A listing is used even when the renewal failed: what the
    /// others' Leases say is true whether or not ours could be written.
    async fn round(&mut self, members: &watch::Sender<Members>) {
        let renewal = self.renew().await;
        let listing = self.list().await;
        if let Ok(leases) = &listing {
            self.take(leases, renewal.is_ok(), members);
        }
        match renewal.and(listing.map(drop)) {
            Ok(()) => {
                if let Some(problem) = self.complaints.succeeded() {
                    info!(was = %problem, "the hub's API server answers again: Lease renewed, members listed");
                }
            }
            Err(error) => {
                let text = error.to_string();
                if self.complaints.failed(&text) {
                    warn!("{text}; keeping the last members and retrying every {:?}", self.config().renew_every);
                } else {
                    debug!("still failing: {text}");
                }
            }
        }
    }

    async fn renew(&mut self) -> Result<(), LeaseError> {
        let now = SystemTime::now();
        let acquired = *self.acquired.get_or_insert(now);
        let lease = own_lease(self.config(), now, acquired);
        let name = lease_name(&self.config().id);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let api = self.membership.api.clone();
        self.bounded("patch", async move { api.patch(&name, &params, &Patch::Apply(&lease)).await }).await.map(drop)
    }

    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        let params = ListParams::default().labels(&label_selector());
        let api = self.membership.api.clone();
        self.bounded("list", async move { api.list(&params).await }).await.map(|list| list.items)
    }

    /// Takes a listing into the book and publishes the members if they changed.
    fn take(&mut self, leases: &[Lease], renewed: bool, members: &watch::Sender<Members>) {
        let (wall, now) = (SystemTime::now(), Instant::now());
        let fallback = self.config().duration;
        let mut listing = Vec::with_capacity(leases.len());
        let mut ignored = BTreeMap::new();
        for lease in leases {
            let name = lease.metadata.name.clone().unwrap_or_default();
            match read_lease(lease, fallback) {
                Ok(observation) => listing.push(observation),
                Err(why) => {
                    if self.ignored.get(&name) != Some(&why) {
                        warn!(lease = %name, "ignoring the Lease {name:?}: {why}");
                    }
                    ignored.insert(name, why);
                }
            }
        }
        self.ignored = ignored;
        if renewed {
            self.check_own(&listing);
        }
        self.book.observe(listing, wall, now);
        self.publish(members, self.book.members(now));
    }

    /// Warns (once) when the listing, made just after this replica renewed its Lease, shows
    /// another peer address in it: another replica with the same id wrote it in between.
    fn check_own(&mut self, listing: &[Observation]) {
        let Some(own) = listing.iter().find(|o| o.id == self.config().id) else { return };
        if own.address != self.config().peer_address && !self.shared_id_logged {
            self.shared_id_logged = true;
            warn!(
                "another replica renews the Lease {:?} with the peer address {}: two replicas share the id {:?}; \
                 give each its own id",
                lease_name(&own.id),
                own.address,
                own.id
            );
        }
    }

    fn publish(&self, members: &watch::Sender<Members>, new: Members) {
        members.send_if_modified(|current| {
            if *current == new {
                return false;
            }
            let (joined, left) = changes(current, &new);
            info!(joined = ?joined, left = ?left, members = new.len(), "stub replicas changed");
            *current = new;
            true
        });
    }

    /// Deletes this replica's Lease so the others drop it at once; bounded, best effort (if it
    /// fails the Lease expires on its own).
    async fn release(&self) {
        let name = lease_name(&self.config().id);
        let api = self.membership.api.clone();
        let request = async move { api.delete(&name, &DeleteParams::default()).await };
        match tokio::time::timeout(DELETE_LIMIT, request).await {
            Ok(Ok(_)) => info!("Lease deleted"),
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => debug!("Lease already gone"),
            Ok(Err(e)) => {
                let error = LeaseError::from_kube(&e, "delete", &self.config().namespace, &self.membership.server);
                warn!("cannot delete the Lease, so the others drop this replica only when it expires: {error}");
            }
            Err(_) => {
                warn!("the Lease was not deleted within {DELETE_LIMIT:?}; the others drop this replica when it expires")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: Duration = Duration::from_secs(15);

    fn obs(id: &str, renewed: SystemTime, duration: Duration) -> Observation {
        Observation { id: id.into(), address: format!("{id}.hub:7444"), renewed, duration }
    }

    fn ids(members: &Members) -> Vec<&str> {
        members.keys().map(String::as_str).collect()
    }

    #[test]
    fn first_sight_counts_what_is_left_by_the_wall_clock() {
        let (wall, t0) = (SystemTime::now(), Instant::now());
        let mut book = LeaseBook::new("me", "me.hub:7444");
        book.observe(
            [
                obs("fresh", wall - Duration::from_secs(5), D),
                obs("stale", wall - Duration::from_secs(60), D),
                obs("ahead", wall + Duration::from_secs(3600), D),
            ],
            wall,
            t0,
        );
        assert_eq!(ids(&book.members(t0)), ["ahead", "fresh", "me"]);
        // "fresh" had 10 s left; "ahead" (a clock an hour fast) gets no more than the duration.
        assert_eq!(ids(&book.members(t0 + Duration::from_secs(11))), ["ahead", "me"]);
        assert_eq!(ids(&book.members(t0 + D)), ["me"]);
    }

    #[test]
    fn a_changed_renew_time_counts_from_when_it_was_seen() {
        let (wall, t0) = (SystemTime::now(), Instant::now());
        let behind = wall - Duration::from_secs(3600); // a clock an hour slow
        let mut book = LeaseBook::new("me", "me.hub:7444");
        book.observe([obs("slow", behind, D)], wall, t0);
        assert_eq!(ids(&book.members(t0)), ["me"], "an hour old by our clock");
        let t1 = t0 + Duration::from_secs(3);
        book.observe([obs("slow", behind + Duration::from_secs(3), D)], wall, t1);
        assert_eq!(ids(&book.members(t1)), ["me", "slow"], "it renewed, so it is alive");
        // Unchanged from now on: it counts for D after the change was seen, not after.
        let t2 = t1 + D - Duration::from_millis(1);
        book.observe([obs("slow", behind + Duration::from_secs(3), D)], wall + D, t2);
        assert_eq!(ids(&book.members(t2)), ["me", "slow"]);
        assert_eq!(ids(&book.members(t1 + D)), ["me"]);
    }

    #[test]
    fn unlisted_leases_leave_at_once_and_addresses_follow_the_annotation() {
        let (wall, t0) = (SystemTime::now(), Instant::now());
        let mut book = LeaseBook::new("me", "me.hub:7444");
        book.observe([obs("a", wall, D), obs("b", wall, D)], wall, t0);
        assert_eq!(ids(&book.members(t0)), ["a", "b", "me"]);
        let mut moved = obs("a", wall, D);
        moved.address = "10.0.0.9:7444".into();
        book.observe([moved], wall, t0);
        let members = book.members(t0);
        assert_eq!(ids(&members), ["a", "me"]);
        assert_eq!(members["a"], "10.0.0.9:7444");
        // Our own Lease, even one claiming another address, never replaces what we know of us.
        book.observe([obs("me", wall, D)], wall, t0);
        assert_eq!(book.members(t0)["me"], "me.hub:7444");
    }

    #[test]
    fn changes_name_who_joined_moved_and_left() {
        let old: Members = [("a".into(), "a:1".into()), ("b".into(), "b:1".into())].into();
        let new: Members = [("a".into(), "a:2".into()), ("c".into(), "c:1".into())].into();
        assert_eq!(changes(&old, &new), (vec!["a@a:2".to_owned(), "c@c:1".to_owned()], vec!["b".to_owned()]));
        assert_eq!(changes(&new, &new), (vec![], vec![]));
    }

    fn sample_config() -> LeaseConfig {
        LeaseConfig::new("hub", "a", "10.0.0.1:7444")
    }

    #[test]
    fn own_lease_reads_back() {
        let config = sample_config();
        let now = to_wall(&to_micro(SystemTime::now()));
        let lease = own_lease(&config, now, now - Duration::from_secs(60));
        let json = serde_json::to_value(&lease).unwrap();
        assert_eq!(json["apiVersion"], "coordination.k8s.io/v1");
        assert_eq!(json["kind"], "Lease");
        assert_eq!(json["metadata"]["name"], "tether-stub-a");
        assert_eq!(json["metadata"]["labels"]["app.kubernetes.io/component"], "stub");
        assert_eq!(json["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(
            read_lease(&lease, Duration::ZERO),
            Ok(Observation { id: "a".into(), address: "10.0.0.1:7444".into(), renewed: now, duration: D })
        );
    }

    #[test]
    fn odd_leases_are_ignored_with_a_reason() {
        let config = sample_config();
        let now = SystemTime::now();
        let read = |edit: &dyn Fn(&mut Lease)| {
            let mut lease = own_lease(&config, now, now);
            edit(&mut lease);
            read_lease(&lease, D).map_err(|e| e.to_string())
        };
        fn spec(lease: &mut Lease) -> &mut LeaseSpec {
            lease.spec.as_mut().unwrap()
        }
        assert!(read(&|l| spec(l).holder_identity = None).unwrap_err().contains("no holder"));
        assert!(read(&|l| spec(l).holder_identity = Some("A B".into())).unwrap_err().contains("\"A B\""));
        assert!(read(&|l| spec(l).holder_identity = Some("b".into())).unwrap_err().contains("\"tether-stub-b\""));
        assert!(read(&|l| l.metadata.annotations = None).unwrap_err().contains(PEER_ADDRESS_ANNOTATION));
        let bad_address = |l: &mut Lease| {
            l.metadata.annotations = Some([(PEER_ADDRESS_ANNOTATION.into(), "nowhere".into())].into());
        };
        assert!(read(&bad_address).unwrap_err().contains("\"nowhere\" is not HOST:PORT"));
        assert!(read(&|l| spec(l).renew_time = None).unwrap_err().contains("renewTime"));
        let no_duration = read(&|l| spec(l).lease_duration_seconds = None).unwrap();
        assert_eq!(no_duration.duration, D, "the configured duration stands in");
    }

    #[test]
    fn configurations_are_checked_field_by_field() {
        let check = |edit: &dyn Fn(&mut LeaseConfig)| {
            let mut config = sample_config();
            edit(&mut config);
            config.validate().map_err(|e| format!("{e:#}"))
        };
        assert!(check(&|_| {}).is_ok());
        assert!(check(&|c| c.namespace = "Hub".into()).unwrap_err().contains("namespace \"Hub\""));
        assert!(check(&|c| c.id = "-x".into()).unwrap_err().contains("replica id \"-x\""));
        assert!(check(&|c| c.peer_address = "host".into()).unwrap_err().contains("peer address \"host\""));
        assert!(check(&|c| c.duration = Duration::from_millis(500)).unwrap_err().contains("less than a second"));
        assert!(check(&|c| c.renew_every = c.duration).unwrap_err().contains("renew more often"));
        let mut config = sample_config();
        config.duration = Duration::from_millis(2500);
        assert_eq!(config.duration_seconds(), 3, "rounded up, never shorter than configured");
    }

    #[tokio::test]
    async fn an_unreadable_kubeconfig_is_named() {
        let mut config = sample_config();
        config.kubeconfig = Some("/nonexistent/hub.kubeconfig".into());
        let error = format!("{:#}", LeaseMembership::connect(config).await.unwrap_err());
        assert!(error.contains("/nonexistent/hub.kubeconfig: cannot read the hub's kubeconfig"), "{error}");
    }

    fn api_error(code: u16, reason: &str, message: &str, details_kind: Option<&str>) -> kube::Error {
        let mut status = kube::core::Status::failure(message, reason).with_code(code);
        if let Some(kind) = details_kind {
            let details = serde_json::from_value(serde_json::json!({ "name": "hub", "kind": kind })).unwrap();
            status = status.with_details(details);
        }
        kube::Error::Api(status.boxed())
    }

    #[test]
    fn refusals_say_what_to_do() {
        let explain =
            |e: kube::Error, verb| LeaseError::from_kube(&e, verb, "hub", "https://10.0.0.1:6443/").to_string();
        let forbidden = explain(
            api_error(
                403,
                "Forbidden",
                "leases.coordination.k8s.io \"tether-stub-a\" is forbidden: User \"x\" cannot create resource \"leases\" \
                 in API group \"coordination.k8s.io\" in the namespace \"hub\"",
                None,
            ),
            "patch",
        );
        assert!(forbidden.starts_with("the stub's identity may not create leases in namespace \"hub\""), "{forbidden}");
        assert!(forbidden.contains(RBAC_VERBS) && forbidden.contains("tether hub") && forbidden.contains("User \"x\""));
        let forbidden = explain(api_error(403, "Forbidden", "no", None), "list");
        assert!(forbidden.contains("may not list leases in namespace \"hub\""), "{forbidden}");
        // What kube-apiserver 1.20 says when patch is allowed but an apply would create the Lease.
        let forbidden = explain(
            api_error(403, "Forbidden", "leases.coordination.k8s.io \"tether-stub-a\" is forbidden: ", None),
            "patch",
        );
        assert!(forbidden.contains("may not create leases in namespace \"hub\""), "{forbidden}");

        let missing = explain(api_error(404, "NotFound", "namespaces \"hub\" not found", Some("namespaces")), "patch");
        assert!(missing.starts_with("namespace \"hub\" does not exist"), "{missing}");
        let no_api =
            explain(api_error(404, "NotFound", "the server could not find the requested resource", None), "list");
        assert!(no_api.contains("does not serve leases.coordination.k8s.io/v1"), "{no_api}");
        assert!(explain(api_error(401, "Unauthorized", "Unauthorized", None), "list").contains("credential"));
        let other = explain(api_error(500, "InternalError", "etcd is sad", None), "list");
        assert_eq!(
            other,
            "the hub's API server refused to list leases in namespace \"hub\": 500 InternalError: etcd is sad"
        );

        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let unreachable = explain(kube::Error::Service(Box::new(refused)), "patch");
        assert!(
            unreachable.starts_with("cannot reach the hub's API server at https://10.0.0.1:6443: "),
            "{unreachable}"
        );
        assert!(unreachable.contains("connection refused"), "{unreachable}");
        // As hyper-rustls hands it over: tokio-rustls's io::Error inside another.
        let bad_ca = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        let tls = explain(kube::Error::Service(Box::new(bad_ca)), "patch");
        assert!(tls.starts_with("no TLS connection to the hub's API server at https://10.0.0.1:6443"), "{tls}");
        assert!(tls.contains("UnknownIssuer") && tls.contains("certificate-authority-data"), "{tls}");
    }

    #[test]
    fn a_failure_is_logged_once_and_its_end_too() {
        let mut complaints = Complaints::default();
        assert_eq!(complaints.succeeded(), None);
        assert!(complaints.failed("403"));
        assert!(!complaints.failed("403"));
        assert!(complaints.failed("timeout"), "a different problem is news");
        assert!(complaints.failed("403"));
        assert_eq!(complaints.succeeded(), Some("403".into()));
        assert_eq!(complaints.succeeded(), None);
        assert!(complaints.failed("403"), "the same problem after a recovery is news again");
    }

    #[test]
    fn micro_times_round_trip() {
        for micros in [0i64, 1, -1, 1_700_000_000_123_456, -86_400_000_000] {
            let time = MicroTime(k8s_openapi::jiff::Timestamp::from_microsecond(micros).unwrap());
            assert_eq!(to_micro(to_wall(&time)), time);
        }
    }

    // --- Properties of the expiry rule ------------------------------------------------------------

    /// What one replica's Lease looks like in one listing.
    #[derive(Debug, Clone)]
    enum Shown {
        /// Not listed.
        Absent,
        /// Listed with the same renewTime as last time (the offset is used if there is none).
        Same(i64),
        /// Listed with renewTime = our wall clock + this many ms (the holder's clock may be off).
        At(i64),
    }

    fn shown() -> impl Strategy<Value = Shown> {
        prop_oneof![
            Just(Shown::Absent),
            (-60_000i64..60_000).prop_map(Shown::Same),
            (-60_000i64..60_000).prop_map(Shown::At)
        ]
    }

    /// A listing: how far both clocks moved since the last one (ms), and each of 3 replicas.
    fn script() -> impl Strategy<Value = Vec<(u64, Vec<Shown>)>> {
        proptest::collection::vec((0u64..8_000, proptest::collection::vec(shown(), 3)), 1..40)
    }

    fn at(base: SystemTime, ms: i64) -> SystemTime {
        if ms >= 0 { base + Duration::from_millis(ms as u64) } else { base - Duration::from_millis(ms.unsigned_abs()) }
    }

    /// Plays `script` into a book; the renewTimes of replica `r` are shifted by `skew[r]` ms.
    /// Calls `check(book, now, news)` after each listing, where `news[r]` is when (monotonic)
    /// r's renewTime was last seen new in its current run of presence (None if not listed), and
    /// whether that was a change rather than the first sight.
    fn play(
        script: &[(u64, Vec<Shown>)],
        durations: &[Duration],
        skew: &[i64],
        mut check: impl FnMut(&LeaseBook, Instant, &[Option<(Instant, bool)>]),
    ) {
        let (wall0, t0) = (SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000), Instant::now());
        let mut book = LeaseBook::new("me", "me.hub:7444");
        let mut elapsed = Duration::ZERO;
        let mut last: Vec<Option<SystemTime>> = vec![None; 3];
        let mut news: Vec<Option<(Instant, bool)>> = vec![None; 3];
        for (advance, shown) in script {
            elapsed += Duration::from_millis(*advance);
            let (wall, now) = (wall0 + elapsed, t0 + elapsed);
            let mut listing = Vec::new();
            for (r, s) in shown.iter().enumerate() {
                let renewed = match (s, last[r]) {
                    (Shown::Absent, _) => {
                        (last[r], news[r]) = (None, None);
                        continue;
                    }
                    (Shown::Same(_), Some(previous)) => previous,
                    (Shown::Same(ms) | Shown::At(ms), _) => at(wall, ms + skew[r]),
                };
                news[r] = match (last[r], news[r]) {
                    (Some(previous), Some(seen)) if previous == renewed => Some(seen),
                    (Some(_), _) => Some((now, true)),
                    (None, _) => Some((now, false)),
                };
                last[r] = Some(renewed);
                listing.push(Observation {
                    id: format!("r{r}"),
                    address: format!("r{r}.hub:7444"),
                    renewed,
                    duration: durations[r],
                });
            }
            // Our own Lease is listed too, with whatever it says.
            listing.push(Observation { id: "me".into(), address: "x:1".into(), renewed: wall0, duration: D });
            listing.reverse(); // the order of a listing does not matter
            book.observe(listing, wall, now);
            check(&book, now, &news);
        }
    }

    fn durations() -> impl Strategy<Value = Vec<Duration>> {
        proptest::collection::vec((1u64..20).prop_map(Duration::from_secs), 3)
    }

    proptest! {
        #[test]
        fn members_are_always_self_and_only_listed_replicas(script in script(), durations in durations()) {
            play(&script, &durations, &[0, 0, 0], |book, now, news| {
                let members = book.members(now);
                assert_eq!(members.get("me").map(String::as_str), Some("me.hub:7444"));
                for id in members.keys().filter(|id| *id != "me") {
                    let r: usize = id[1..].parse().unwrap();
                    assert!(news[r].is_some(), "{id} is a member but was not listed");
                }
            });
        }

        #[test]
        fn a_lease_counts_exactly_while_its_renewal_is_recent(script in script(), durations in durations()) {
            // Once a change was seen, the rule is exact: a member iff the last change was seen
            // less than the duration ago. Before any change, never longer than the duration.
            play(&script, &durations, &[0, 0, 0], |book, now, news| {
                let members = book.members(now);
                for (r, seen) in news.iter().enumerate() {
                    let member = members.contains_key(&format!("r{r}"));
                    match seen {
                        None => assert!(!member),
                        Some((at, true)) => assert_eq!(member, now < *at + durations[r], "r{r}"),
                        Some((at, false)) => assert!(!member || now < *at + durations[r], "r{r} outlived its duration"),
                    }
                }
            });
        }

        #[test]
        fn clock_skew_does_not_matter_once_a_renewal_was_seen(
            script in script(),
            durations in durations(),
            skew in proptest::collection::vec(-7_200_000i64..7_200_000, 3),
        ) {
            let mut straight = Vec::new();
            play(&script, &durations, &[0, 0, 0], |book, now, news| straight.push((book.members(now), news.to_vec())));
            let mut step = 0;
            play(&script, &durations, &skew, |book, now, news| {
                let (expected, _) = &straight[step];
                let members = book.members(now);
                for (r, seen) in news.iter().enumerate() {
                    if let Some((_, true)) = seen {
                        let id = format!("r{r}");
                        assert_eq!(members.contains_key(&id), expected.contains_key(&id), "{id} at step {step}");
                    }
                }
                step += 1;
            });
        }

        #[test]
        fn a_first_sight_grants_at_most_what_the_wall_clock_leaves(
            renewed_ms in -120_000i64..7_200_000,
            duration_s in 1u64..30,
            later_ms in 0u64..60_000,
        ) {
            let (wall, t0) = (SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000), Instant::now());
            let duration = Duration::from_secs(duration_s);
            let renewed = at(wall, renewed_ms);
            let mut book = LeaseBook::new("me", "me.hub:7444");
            book.observe([obs("r", renewed, duration)], wall, t0);
            let later = Duration::from_millis(later_ms);
            let member = book.members(t0 + later).contains_key("r");
            let by_wall = renewed + duration > wall + later;
            prop_assert_eq!(member, by_wall && later < duration);
        }
    }
}
