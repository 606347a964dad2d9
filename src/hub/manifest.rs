//! `tether hub`: the hub's own Kubernetes manifest, N stub replicas in one namespace. Pure: the
//! objects are built as data ([`serde_json::Value`]) from validated inputs and printed as JSON
//! documents separated by `---` (JSON is YAML), so no input can inject YAML; the only comments
//! are `&'static str`. [`HubFiles::read`] is the one part that touches the disk.
//!
//! What is printed, in order:
//!
//! - the Namespace (unlabelled, so that pruning by the objects' label never deletes it);
//! - ServiceAccount `tether-stub`, and a Role and RoleBinding that allow it Leases only, in this
//!   namespace: each replica holds one Lease of its own (`--members kubernetes:NS`);
//! - Secret `tether-stub` (ca.crt, stub.crt, stub.key) and ConfigMap `tether-stub` (whitelist,
//!   issuer.pub), projected together into `/etc/tether`, which is what `--certs` expects. The CA
//!   key and the issuer key are never read, so they cannot end up here. The whitelist is in the
//!   ConfigMap because it changes whenever an agent is registered: re-running `tether hub` and
//!   applying updates the file in every pod (the kubelet's next sync, about a minute) and the
//!   stubs reload it without a restart. The other files are read only at start, so a checksum of
//!   them on the pod template rolls the replicas when they change, and only then.
//! - Deployment `tether-stub`: N replicas spread over nodes (preferred anti-affinity, so a
//!   one-node cluster still runs them all), hardened like the agent's (`crate::register`),
//!   probes on the admin port, its id and peer address from the downward API; surge one new
//!   replica before stopping an old one.
//! - Service `tether-stub-agents` (QUIC over UDP and the TCP fallback, port 7443), Service
//!   `tether-stub-https` (the front door, TCP 8443), headless Service `tether-stub-peers` (UDP
//!   7444; its DNS name lists every replica, for peers and for agents inside the hub's cluster
//!   that dial distinct replicas).
//! - PodDisruptionBudget `tether-stub`: `maxUnavailable: 1`. Every agent holds connections to
//!   two distinct replicas (K = 2), so evicting one replica at a time leaves each agent one live
//!   connection while the other redials; and unlike `minAvailable: N-1` it stays right when the
//!   Deployment is scaled without re-running `tether hub`.
//!
//! Service types (`--agent-service-type`, `--user-service-type`): LoadBalancer by default, as the
//! hub is one public address for agents and one for users. A LoadBalancer's traffic policy is
//! `Local`: clients keep their source address (the front door's per-source limits and the audit
//! log need it) and the load balancer's health checks skip nodes without a replica. NodePort
//! keeps `Cluster`, since agents may be pointed at any node. No session affinity: an agent
//! reaches distinct replicas by redialing from fresh sockets, which ClientIP affinity would pin.
//!
//! One Service of type LoadBalancer with both UDP and TCP ports is a feature gate before
//! Kubernetes 1.26 (MixedProtocolLBService: alpha and off in 1.20, which answers "may not contain
//! more than 1 protocol when type is 'LoadBalancer'"; on by default from 1.24; GA, always on, from
//! 1.26), and some load balancer controllers refuse it even later. So `--kubernetes-version`
//! (default 1.33, the API this crate is built against) below 1.26, or `--split-agent-service`,
//! prints two agent Services instead: `tether-stub-agents` (UDP) and `tether-stub-agents-tcp`.
//! Each gets its own address unless the load balancer shares one: `--agent-load-balancer-ip` asks
//! for the same address on both (`spec.loadBalancerIP`, which MetalLB and several clouds honour;
//! MetalLB also needs its `allow-shared-ip` annotation, see `--service-annotation`). NodePort and
//! ClusterIP Services mix protocols on every version (a NodePort Service gets one node port for
//! both). `--kubernetes-version` below 1.21 also selects `policy/v1beta1` for the
//! PodDisruptionBudget (`policy/v1` is 1.21 and later); 1.19 is the oldest accepted, for the
//! `seccompProfile` field.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::identity::files::{self, CertDir, FileError};
use crate::identity::names::{self, InvalidName};
use crate::identity::token::{KeyError, TokenVerifier};
use crate::identity::whitelist::{Whitelist, WhitelistError};

/// Name of the Deployment, ServiceAccount, Role, Secret, ConfigMap and PodDisruptionBudget, and
/// the value of the label that selects the replicas.
pub const NAME: &str = "tether-stub";
/// The Service agents dial (UDP, and TCP too unless split).
pub const AGENT_SERVICE: &str = "tether-stub-agents";
/// The agents' TCP Service where one Service may not mix protocols.
pub const AGENT_TCP_SERVICE: &str = "tether-stub-agents-tcp";
/// The front door's Service.
pub const USER_SERVICE: &str = "tether-stub-https";
/// The headless Service of the replicas.
pub const PEER_SERVICE: &str = "tether-stub-peers";
/// Where the Secret and ConfigMap are mounted; the stub's `--certs`.
pub const CERTS_DIR: &str = "/etc/tether";

const LABEL: &str = "app.kubernetes.io/name";
const AGENT_PORT: u16 = 7443;
const HTTPS_PORT: u16 = 8443;
const PEER_PORT: u16 = 7444;
const ADMIN_PORT: u16 = 9090;
/// The user the image runs as (scripts/image.sh names it in /etc/passwd).
const USER: u32 = 65532;
/// Kubernetes counts replicas in an int32.
pub const MAX_REPLICAS: u32 = i32::MAX as u32;
/// What the API server lets a ConfigMap's data hold.
pub const MAX_CONFIGMAP_BYTES: usize = 1 << 20;
/// Longer than any image reference a registry serves.
const MAX_IMAGE_LEN: usize = 512;
/// Pod-template annotation whose value changes exactly when a file the stub reads only at start
/// changes.
const CHECKSUM_ANNOTATION: &str = "tether/identity-sha256";

/// A Kubernetes Service type, spelled as Kubernetes spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceType {
    /// An address from the cluster's load balancer (a cloud's, MetalLB).
    #[value(name = "LoadBalancer")]
    LoadBalancer,
    /// A port on every node.
    #[value(name = "NodePort")]
    NodePort,
    /// Reachable inside the cluster only (put your own proxy or tunnel in front).
    #[value(name = "ClusterIP")]
    ClusterIp,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::NodePort => "NodePort",
            ServiceType::ClusterIp => "ClusterIP",
        }
    }
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Kubernetes version the manifest is for: `1.MINOR` (only the minor version matters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubeVersion {
    minor: u32,
}

/// A `--kubernetes-version` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKubeVersion {
    /// Not `MAJOR.MINOR`.
    #[error("{0:?} is not a Kubernetes version: expected MAJOR.MINOR, such as 1.33 (v1.33.2 is fine too)")]
    Form(String),
    /// Not 1.x.
    #[error("{0:?}: there is no Kubernetes but 1.x")]
    Major(String),
    /// Older than the manifest supports.
    #[error("Kubernetes 1.{0} is older than 1.19, the oldest this manifest supports (its seccompProfile field)")]
    TooOld(u32),
}

impl KubeVersion {
    /// The oldest version the manifest is valid for.
    pub const OLDEST: KubeVersion = KubeVersion { minor: 19 };
    /// The default: the API this crate is built against (k8s-openapi's `v1_33`).
    pub const CURRENT: KubeVersion = KubeVersion { minor: 33 };

    /// `policy/v1` PodDisruptionBudgets exist from 1.21 (`policy/v1beta1` is gone from 1.25).
    pub fn has_policy_v1(self) -> bool {
        self.minor >= 21
    }

    /// From 1.26 every API server accepts a LoadBalancer Service with UDP and TCP ports.
    pub fn mixes_protocols_in_load_balancers(self) -> bool {
        self.minor >= 26
    }
}

impl FromStr for KubeVersion {
    type Err = InvalidKubeVersion;

    /// `1.20`, `v1.20.2`, `1.20+` (as some providers report the minor version), `v1.27.3-gke.100`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let form = || InvalidKubeVersion::Form(text.to_owned());
        let mut parts = text.strip_prefix('v').unwrap_or(text).splitn(3, '.');
        let (major, minor) = (parts.next().ok_or_else(form)?, parts.next().ok_or_else(form)?);
        let minor = minor.strip_suffix('+').unwrap_or(minor);
        let number =
            |s: &str| (!s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse());
        let (Some(Ok(major)), Some(Ok(minor))) = (number(major), number(minor)) else { return Err(form()) };
        if major != 1u32 {
            return Err(InvalidKubeVersion::Major(text.to_owned()));
        }
        let version = KubeVersion { minor };
        if version < KubeVersion::OLDEST {
            return Err(InvalidKubeVersion::TooOld(minor));
        }
        Ok(version)
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "1.{}", self.minor)
    }
}

/// A `--service-annotation KEY=VALUE`, checked: the key a Kubernetes qualified name, the value
/// free of control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    key: String,
    value: String,
}

/// Why a `--service-annotation` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?}: {problem}")]
pub struct InvalidAnnotation {
    text: String,
    problem: &'static str,
}

impl FromStr for Annotation {
    type Err = InvalidAnnotation;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |problem| InvalidAnnotation { text: text.to_owned(), problem };
        let (key, value) = text.split_once('=').ok_or_else(|| invalid("expected KEY=VALUE"))?;
        let (prefix, name) = match key.rsplit_once('/') {
            Some((prefix, name)) => (Some(prefix), name),
            None => (None, key),
        };
        if let Some(prefix) = prefix
            && !is_dns_subdomain(prefix)
        {
            return Err(invalid("the key's prefix (before '/') must be a DNS subdomain, such as example.com"));
        }
        if !is_qualified_name_part(name) {
            return Err(invalid(concat!(
                "the key's name must be 1-63 letters, digits, '-', '_' or '.', ",
                "starting and ending with a letter or digit",
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(invalid("the value holds a control character"));
        }
        Ok(Annotation { key: key.to_owned(), value: value.to_owned() })
    }
}

fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(|label| names::validate("label", label).is_ok())
}

fn is_qualified_name_part(text: &str) -> bool {
    let bytes = text.as_bytes();
    let edge = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    bytes.len() <= 63
        && edge(bytes.first())
        && edge(bytes.last())
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// How the hub is to run: what an admin gives `tether hub`.
#[derive(Debug, Clone)]
pub struct HubSpec {
    pub namespace: String,
    pub replicas: u32,
    pub image: String,
    pub agent_service: ServiceType,
    pub user_service: ServiceType,
    pub kubernetes_version: KubeVersion,
    /// Two agent Services (UDP, TCP) even where one LoadBalancer may mix protocols.
    pub split_agent_service: bool,
    /// `spec.loadBalancerIP` of the agent Service(s).
    pub agent_load_balancer_ip: Option<IpAddr>,
    /// Annotations of the agent and user Services (a load balancer's settings).
    pub service_annotations: Vec<Annotation>,
}

impl HubSpec {
    /// A spec with the defaults of `tether hub`.
    pub fn new(namespace: &str, replicas: u32) -> HubSpec {
        HubSpec {
            namespace: namespace.to_owned(),
            replicas,
            image: default_image().to_owned(),
            agent_service: ServiceType::LoadBalancer,
            user_service: ServiceType::LoadBalancer,
            kubernetes_version: KubeVersion::CURRENT,
            split_agent_service: false,
            agent_load_balancer_ip: None,
            service_annotations: Vec::new(),
        }
    }

    /// Checks every field, naming the flag of the first that is wrong.
    pub fn validate(&self) -> Result<(), ManifestError> {
        names::validate("--namespace", &self.namespace)?;
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(ManifestError::Replicas(self.replicas));
        }
        let image_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@');
        if self.image.is_empty() || self.image.len() > MAX_IMAGE_LEN || !self.image.chars().all(image_char) {
            return Err(ManifestError::Image(self.image.clone()));
        }
        if self.agent_service != ServiceType::LoadBalancer {
            if self.agent_load_balancer_ip.is_some() {
                return Err(ManifestError::NeedsLoadBalancer("--agent-load-balancer-ip", self.agent_service));
            }
            if self.split_agent_service {
                return Err(ManifestError::NeedsLoadBalancer("--split-agent-service", self.agent_service));
            }
        }
        Ok(())
    }

    /// Whether agents get two Services, one per protocol.
    pub fn splits_agent_service(&self) -> bool {
        self.agent_service == ServiceType::LoadBalancer
            && (self.split_agent_service || !self.kubernetes_version.mixes_protocols_in_load_balancers())
    }
}

/// The default image: the one `scripts/image.sh` builds for this version.
pub fn default_image() -> &'static str {
    concat!("localhost/tether:", env!("CARGO_PKG_VERSION"))
}

/// The files the replicas get, as read from the certificate directory.
#[derive(Debug, Clone)]
pub struct HubFiles {
    pub ca_pem: String,
    pub stub_cert_pem: String,
    pub stub_key_pem: String,
    pub whitelist: String,
    pub issuer_pub_pem: String,
}

impl HubFiles {
    /// Reads and checks the five files the stub needs, so that a missing or broken one fails
    /// here, naming it and what makes it, rather than in a crash-looping pod. Never reads the CA
    /// key or the issuer key.
    pub fn read(dir: &CertDir) -> Result<HubFiles, ManifestError> {
        let (ca, cert, key) = (dir.ca_cert(), dir.stub_cert(), dir.stub_key());
        let ca_pem = files::load_text(&ca, "cannot read the CA certificate (make the CA with `tether certs init`)")?;
        files::parse_certs(&ca, ca_pem.as_bytes())?;
        let stub_cert_pem =
            files::load_text(&cert, "cannot read the stub certificate (issue it with `tether certs stub --san NAME`)")?;
        files::parse_certs(&cert, stub_cert_pem.as_bytes())?;
        let stub_key_pem =
            files::load_text(&key, "cannot read the stub key (issue it with `tether certs stub --san NAME`)")?;
        files::parse_key(&key, stub_key_pem.as_bytes())?;
        // Whitelist::load refuses what is not a regular file or is too large, then parses it;
        // its error for a missing file says how to register agents.
        let whitelist_path = dir.whitelist();
        Whitelist::load(&whitelist_path)?;
        let whitelist = files::load_text(&whitelist_path, "cannot read the whitelist")?;
        let issuer_pub_pem = files::load_text(
            &dir.issuer_pub(),
            "cannot read the token issuer's public key (make the pair with `tether certs issuer`)",
        )?;
        TokenVerifier::load(&dir.issuer_pub())?;
        Ok(HubFiles { ca_pem, stub_cert_pem, stub_key_pem, whitelist, issuer_pub_pem })
    }
}

/// Why the manifest could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// `--namespace` is not a DNS label.
    #[error(transparent)]
    Namespace(#[from] InvalidName),
    /// `--replicas` out of range.
    #[error("--replicas {0}: run at least 1 replica (and at most {MAX_REPLICAS})")]
    Replicas(u32),
    /// `--image` is not an image reference.
    #[error(
        "--image {0:?} is not an image reference: use 1-{MAX_IMAGE_LEN} letters, digits and . _ - / : @ (no spaces)"
    )]
    Image(String),
    /// A flag that only a LoadBalancer agent Service takes.
    #[error("{0} is only for --agent-service-type LoadBalancer, not {1}")]
    NeedsLoadBalancer(&'static str, ServiceType),
    /// The ConfigMap would be larger than the API server accepts.
    #[error(
        "the whitelist and issuer.pub come to {0} bytes, more than the {MAX_CONFIGMAP_BYTES} a ConfigMap \
         may hold (about 9,000 agents)"
    )]
    ConfigMapTooLarge(usize),
    /// A file could not be read or holds no usable PEM.
    #[error(transparent)]
    File(#[from] FileError),
    /// The whitelist could not be read or parsed.
    #[error(transparent)]
    Whitelist(#[from] WhitelistError),
    /// The issuer's public key is not one.
    #[error(transparent)]
    IssuerKey(#[from] KeyError),
}

/// One document of the manifest: a fixed comment and the object.
#[derive(Debug, Clone)]
pub struct Object {
    pub comment: &'static str,
    pub value: Value,
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// SHA-256 over the files a stub reads only at start, each length-prefixed. The stub's key is
/// left out: it cannot change without its certificate changing.
fn identity_checksum(files: &HubFiles) -> String {
    let mut hash = Sha256::new();
    for text in [&files.ca_pem, &files.stub_cert_pem, &files.issuer_pub_pem] {
        hash.update((text.len() as u64).to_be_bytes());
        hash.update(text.as_bytes());
    }
    hex::encode(hash.finalize())
}

/// The manifest's objects, in the order they are to be applied.
pub fn objects(spec: &HubSpec, files: &HubFiles) -> Result<Vec<Object>, ManifestError> {
    spec.validate()?;
    let configmap_bytes = "whitelist".len() + files.whitelist.len() + "issuer.pub".len() + files.issuer_pub_pem.len();
    if configmap_bytes > MAX_CONFIGMAP_BYTES {
        return Err(ManifestError::ConfigMapTooLarge(configmap_bytes));
    }
    let ns = spec.namespace.as_str();
    let labels = json!({ LABEL: NAME });
    let meta = |name: &str| json!({ "name": name, "namespace": ns, "labels": labels });
    let mut objects = vec![
        Object {
            comment: "The hub's namespace.",
            value: json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns } }),
        },
        Object {
            comment: "The replicas' identity towards the API server.",
            value: json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(NAME) }),
        },
        Object {
            comment: "The replicas' only right: Leases in this namespace, one per replica, which make the member list.",
            value: json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": meta(NAME),
                "rules": [{
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
                }],
            }),
        },
        Object {
            comment: "Binds the Lease role to the replicas' service account.",
            value: json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": meta(NAME),
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME },
                "subjects": [{ "kind": "ServiceAccount", "name": NAME, "namespace": ns }],
            }),
        },
        Object {
            comment: "The stub's certificate and key and the tether CA (never the CA's key).",
            value: json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": meta(NAME),
                "type": "Opaque",
                "data": {
                    "ca.crt": b64(&files.ca_pem),
                    "stub.crt": b64(&files.stub_cert_pem),
                    "stub.key": b64(&files.stub_key_pem),
                },
            }),
        },
        Object {
            comment: "The agent whitelist (the replicas reload it when it changes) and the issuer's public key.",
            value: json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": meta(NAME),
                "data": { "whitelist": files.whitelist, "issuer.pub": files.issuer_pub_pem },
            }),
        },
        Object { comment: "The stub replicas.", value: deployment(spec, files, &labels) },
    ];
    objects.extend(services(spec, &labels, &meta));
    let (pdb_version, pdb_comment) = if spec.kubernetes_version.has_policy_v1() {
        ("policy/v1", "At most one replica evicted at a time: each agent keeps one of its two connections.")
    } else {
        (
            "policy/v1beta1",
            concat!(
                "At most one replica evicted at a time: each agent keeps one of its two connections. ",
                "(policy/v1beta1: before Kubernetes 1.21)",
            ),
        )
    };
    objects.push(Object {
        comment: pdb_comment,
        value: json!({
            "apiVersion": pdb_version,
            "kind": "PodDisruptionBudget",
            "metadata": meta(NAME),
            "spec": { "maxUnavailable": 1, "selector": { "matchLabels": labels } },
        }),
    });
    Ok(objects)
}

fn deployment(spec: &HubSpec, files: &HubFiles, labels: &Value) -> Value {
    let ns = spec.namespace.as_str();
    let args = [
        "stub".to_owned(),
        "--certs".to_owned(),
        CERTS_DIR.to_owned(),
        "--quic-listen".to_owned(),
        format!("0.0.0.0:{AGENT_PORT}"),
        "--https-listen".to_owned(),
        format!("0.0.0.0:{HTTPS_PORT}"),
        "--admin-listen".to_owned(),
        format!("0.0.0.0:{ADMIN_PORT}"),
        // $(VAR) is expanded by the kubelet from the container's env below.
        "--id".to_owned(),
        "$(POD_NAME)".to_owned(),
        "--peer-listen".to_owned(),
        format!("0.0.0.0:{PEER_PORT}"),
        "--peer-advertise".to_owned(),
        format!("$(POD_IP):{PEER_PORT}"),
        "--members".to_owned(),
        format!("kubernetes:{ns}"),
        "--audit-log".to_owned(),
        "-".to_owned(),
    ];
    let field = |path: &str| json!({ "fieldRef": { "fieldPath": path } });
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": NAME, "namespace": ns, "labels": labels },
        "spec": {
            "replicas": spec.replicas,
            "selector": { "matchLabels": labels },
            // A new replica is ready before an old one stops: capacity never drops in a rollout.
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 1 } },
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": { CHECKSUM_ANNOTATION: identity_checksum(files) },
                },
                "spec": {
                    "serviceAccountName": NAME,
                    // Service links would put TETHER_*-looking variables (from Service names)
                    // into an environment whose TETHER_* variables are the stub's flags.
                    "enableServiceLinks": false,
                    // SIGTERM: agents are told to go elsewhere, open requests get TETHER_GRACE.
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": USER,
                        "runAsGroup": USER,
                        "fsGroup": USER,
                        "seccompProfile": { "type": "RuntimeDefault" },
                    },
                    "affinity": {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [{
                                "weight": 100,
                                "podAffinityTerm": {
                                    "topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": { "matchLabels": labels },
                                },
                            }],
                        },
                    },
                    "containers": [{
                        "name": "stub",
                        "image": spec.image,
                        "imagePullPolicy": "IfNotPresent",
                        "args": args,
                        "env": [
                            { "name": "POD_NAME", "valueFrom": field("metadata.name") },
                            { "name": "POD_IP", "valueFrom": field("status.podIP") },
                            { "name": "TETHER_GRACE", "value": "20s" },
                        ],
                        "ports": [
                            { "name": "agent-udp", "containerPort": AGENT_PORT, "protocol": "UDP" },
                            { "name": "agent-tcp", "containerPort": AGENT_PORT, "protocol": "TCP" },
                            { "name": "https", "containerPort": HTTPS_PORT, "protocol": "TCP" },
                            { "name": "peer", "containerPort": PEER_PORT, "protocol": "UDP" },
                            { "name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP" },
                        ],
                        "readinessProbe": { "httpGet": { "path": "/readyz", "port": "admin" }, "periodSeconds": 5 },
                        "livenessProbe": { "httpGet": { "path": "/healthz", "port": "admin" }, "periodSeconds": 10 },
                        // The limit makes a replica under a memory flood restart (its agents
                        // redial others) rather than starve its node; it is far above the
                        // working set measured with 10,000 watches (about 100 MiB).
                        "resources": {
                            "requests": { "cpu": "250m", "memory": "256Mi" },
                            "limits": { "memory": "2Gi" },
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true,
                            "capabilities": { "drop": ["ALL"] },
                        },
                        "volumeMounts": [{ "name": "tether", "mountPath": CERTS_DIR, "readOnly": true }],
                    }],
                    // One directory from two objects; readable by the group (fsGroup), as the
                    // key must be.
                    "volumes": [{
                        "name": "tether",
                        "projected": {
                            "defaultMode": 0o440,
                            "sources": [{ "secret": { "name": NAME } }, { "configMap": { "name": NAME } }],
                        },
                    }],
                },
            },
        },
    })
}

/// A Service port aimed at the container port of the same name.
fn port(name: &str, number: u16, protocol: &str) -> Value {
    json!({ "name": name, "port": number, "targetPort": name, "protocol": protocol })
}

/// The agent Service(s), the front door's, and the headless one.
fn services(spec: &HubSpec, labels: &Value, meta: &dyn Fn(&str) -> Value) -> Vec<Object> {
    let annotations: serde_json::Map<String, Value> =
        spec.service_annotations.iter().map(|a| (a.key.clone(), Value::from(a.value.clone()))).collect();
    let service = |name: &str, kind: ServiceType, ports: Vec<Value>, load_balancer_ip: Option<IpAddr>| {
        let mut metadata = meta(name);
        if !annotations.is_empty() {
            metadata["annotations"] = Value::Object(annotations.clone());
        }
        let mut service_spec = json!({ "type": kind.as_str(), "selector": labels, "ports": ports });
        match kind {
            ServiceType::LoadBalancer => service_spec["externalTrafficPolicy"] = "Local".into(),
            ServiceType::NodePort => service_spec["externalTrafficPolicy"] = "Cluster".into(),
            ServiceType::ClusterIp => {}
        }
        if let Some(ip) = load_balancer_ip {
            service_spec["loadBalancerIP"] = ip.to_string().into();
        }
        json!({ "apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": service_spec })
    };
    let (udp, tcp) = (port("agent-udp", AGENT_PORT, "UDP"), port("agent-tcp", AGENT_PORT, "TCP"));
    let ip = spec.agent_load_balancer_ip;
    let mut objects = if spec.splits_agent_service() {
        vec![
            Object {
                comment: concat!(
                    "Agents: QUIC over UDP. One LoadBalancer may not mix UDP and TCP here, so the TCP fallback ",
                    "has a Service of its own; agents dial one HOST:PORT for both, so give both one address ",
                    "(--agent-load-balancer-ip).",
                ),
                value: service(AGENT_SERVICE, spec.agent_service, vec![udp], ip),
            },
            Object {
                comment: "Agents: the TCP fallback (TLS over TCP on the same port), for networks that block UDP.",
                value: service(AGENT_TCP_SERVICE, spec.agent_service, vec![tcp], ip),
            },
        ]
    } else {
        vec![Object {
            comment: "Agents: QUIC over UDP, and the TCP fallback on the same port.",
            value: service(AGENT_SERVICE, spec.agent_service, vec![udp, tcp], ip),
        }]
    };
    objects.push(Object {
        comment: "Users and services: the HTTPS front door.",
        value: service(USER_SERVICE, spec.user_service, vec![port("https", HTTPS_PORT, "TCP")], None),
    });
    objects.push(Object {
        comment: concat!(
            "Every replica's own address (headless): peer links, and agents in this cluster that dial ",
            "distinct replicas.",
        ),
        value: json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(PEER_SERVICE),
            "spec": { "clusterIP": "None", "selector": labels, "ports": [port("peer", PEER_PORT, "UDP")] },
        }),
    });
    objects
}

/// The manifest as text: YAML documents, each one JSON object under its comment.
pub fn render(objects: &[Object]) -> String {
    let mut out = format!(
        "# tether hub (tether {}): stub replicas, their Services and Lease RBAC.\n\
         # Each document is JSON, which is YAML. Apply with: kubectl apply -f <this file>\n",
        env!("CARGO_PKG_VERSION")
    );
    for object in objects {
        out.push_str("---\n# ");
        out.push_str(object.comment);
        out.push('\n');
        out.push_str(&serde_json::to_string_pretty(&object.value).expect("a JSON value serialises"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::certs;
    use k8s_openapi::api;
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    /// A certificate directory made by the same functions as `tether certs`, plus the files.
    fn fresh_dir() -> (tempfile::TempDir, CertDir, HubFiles) {
        crate::identity::tls::install_default_provider();
        let tmp = tempfile::tempdir().unwrap();
        let dir = CertDir::new(tmp.path());
        certs::init_ca_in_dir(&dir, 1, false).unwrap();
        certs::stub_in_dir(&dir, &["hub.example".into()], 1, false).unwrap();
        certs::issuer_in_dir(&dir, false).unwrap();
        certs::agent_in_dir(&dir, "dev", "agent", 1, false, true).unwrap();
        let files = HubFiles::read(&dir).unwrap();
        (tmp, dir, files)
    }

    fn files() -> HubFiles {
        HubFiles {
            ca_pem: "CA PEM\n".into(),
            stub_cert_pem: "STUB CERT PEM\n".into(),
            stub_key_pem: "STUB KEY PEM\n".into(),
            whitelist: "# none yet\n".into(),
            issuer_pub_pem: "ISSUER PUB PEM\n".into(),
        }
    }

    fn build(spec: &HubSpec) -> Vec<Value> {
        objects(spec, &files()).unwrap().into_iter().map(|o| o.value).collect()
    }

    fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in {objects:#?}"))
    }

    fn kinds(objects: &[Value]) -> Vec<String> {
        objects
            .iter()
            .map(|o| format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap()))
            .collect()
    }

    #[test]
    fn every_object_is_there_in_order() {
        let objects = build(&HubSpec::new("hub", 3));
        assert_eq!(
            kinds(&objects),
            [
                "Namespace/hub",
                "ServiceAccount/tether-stub",
                "Role/tether-stub",
                "RoleBinding/tether-stub",
                "Secret/tether-stub",
                "ConfigMap/tether-stub",
                "Deployment/tether-stub",
                "Service/tether-stub-agents",
                "Service/tether-stub-https",
                "Service/tether-stub-peers",
                "PodDisruptionBudget/tether-stub",
            ]
        );
        for object in &objects[1..] {
            assert_eq!(object["metadata"]["namespace"], "hub", "{object:#}");
            assert_eq!(object["metadata"]["labels"][LABEL], NAME, "{object:#}");
        }
        assert!(objects[0]["metadata"].get("labels").is_none(), "the namespace is never pruned by label");
    }

    #[test]
    fn the_deployment_runs_n_hardened_replicas_with_the_stub_flags() {
        let objects = build(&HubSpec::new("hub", 3));
        let deployment = find(&objects, "Deployment", NAME);
        assert_eq!(deployment["spec"]["replicas"], 3);
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(
            args.join(" "),
            "stub --certs /etc/tether --quic-listen 0.0.0.0:7443 --https-listen 0.0.0.0:8443 \
             --admin-listen 0.0.0.0:9090 --id $(POD_NAME) --peer-listen 0.0.0.0:7444 \
             --peer-advertise $(POD_IP):7444 --members kubernetes:hub --audit-log -"
        );
        // The flags are the stub's own: as the kubelet expands them, the real command line takes them.
        let expanded = args
            .iter()
            .map(|a| a.replace("$(POD_NAME)", "tether-stub-5d8f7c9b4-x2v4q").replace("$(POD_IP)", "10.244.0.7"));
        let parsed =
            <crate::cli::Cli as clap::Parser>::try_parse_from(std::iter::once("tether".to_owned()).chain(expanded));
        assert!(parsed.is_ok(), "the stub refuses the manifest's flags: {}", parsed.err().unwrap());
        assert_eq!(container["image"], default_image());
        assert!(
            default_image().starts_with("localhost/tether:") && default_image().ends_with(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(container["imagePullPolicy"], "IfNotPresent");
        assert_eq!(container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
        assert_eq!(container["env"][1]["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
        assert_eq!(container["readinessProbe"]["httpGet"], json!({ "path": "/readyz", "port": "admin" }));
        assert_eq!(container["livenessProbe"]["httpGet"], json!({ "path": "/healthz", "port": "admin" }));
        assert!(
            container["ports"]
                .as_array()
                .unwrap()
                .contains(&json!({ "name": "admin", "containerPort": 9090, "protocol": "TCP" }))
        );
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(container["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert!(container["resources"]["requests"]["cpu"].is_string());
        assert!(container["resources"]["requests"]["memory"].is_string());
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["runAsUser"], 65532);
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        let spread = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
        assert_eq!(spread["podAffinityTerm"]["topologyKey"], "kubernetes.io/hostname");
        assert_eq!(pod["enableServiceLinks"], false);
        // One directory holding what `--certs /etc/tether` looks for.
        assert_eq!(container["volumeMounts"][0]["mountPath"], CERTS_DIR);
        let sources = &pod["volumes"][0]["projected"]["sources"];
        assert_eq!(sources[0]["secret"]["name"], NAME);
        assert_eq!(sources[1]["configMap"]["name"], NAME);
        let secret = find(&objects, "Secret", NAME);
        let configmap = find(&objects, "ConfigMap", NAME);
        let mut mounted: Vec<&str> = [secret, configmap]
            .iter()
            .flat_map(|o| o["data"].as_object().unwrap().keys().map(String::as_str))
            .collect();
        mounted.sort_unstable();
        let dir = CertDir::new(CERTS_DIR);
        let mut wanted: Vec<String> =
            [dir.ca_cert(), dir.stub_cert(), dir.stub_key(), dir.whitelist(), dir.issuer_pub()]
                .iter()
                .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
                .collect();
        wanted.sort_unstable();
        assert_eq!(mounted, wanted);
    }

    #[test]
    fn the_role_allows_leases_in_the_namespace_and_nothing_else() {
        let objects = build(&HubSpec::new("hub", 1));
        let role = find(&objects, "Role", NAME);
        assert_eq!(
            role["rules"],
            json!([{
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
            }])
        );
        let binding = find(&objects, "RoleBinding", NAME);
        assert_eq!(binding["subjects"], json!([{ "kind": "ServiceAccount", "name": NAME, "namespace": "hub" }]));
        assert!(!objects.iter().any(|o| o["kind"].as_str().unwrap().starts_with("Cluster")));
    }

    #[test]
    fn no_private_key_but_the_stubs_own_reaches_the_manifest() {
        let (_tmp, dir, files) = fresh_dir();
        let text = render(&objects(&HubSpec::new("hub", 2), &files).unwrap());
        for private in [dir.ca_key(), dir.issuer_key()] {
            let pem = std::fs::read_to_string(&private).unwrap();
            let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            assert!(!text.contains(&body[..40]) && !text.contains(&b64(&pem)), "{} leaked", private.display());
        }
        assert!(!text.contains("PRIVATE KEY"), "only base64 of stub.key, in the Secret");
        assert!(text.contains(&b64(&files.stub_key_pem)));
        assert!(text.contains(&serde_json::to_string(&files.whitelist).unwrap()));
    }

    #[test]
    fn a_missing_file_is_named_with_what_makes_it() {
        let (_tmp, dir, _) = fresh_dir();
        // Removed in the reverse of the reading order, so that each is the first one missing.
        for (path, hint) in [
            (dir.issuer_pub(), "tether certs issuer"),
            (dir.whitelist(), "tether certs agent --register"),
            (dir.stub_key(), "tether certs stub"),
            (dir.ca_cert(), "tether certs init"),
        ] {
            std::fs::remove_file(&path).unwrap();
            let err = HubFiles::read(&dir).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()) && err.contains(hint), "{err}");
        }
        // A broken file is named too, before it could crash-loop a pod.
        let (_tmp, dir, _) = fresh_dir();
        std::fs::write(dir.whitelist(), "dev agent not-a-fingerprint\n").unwrap();
        let err = HubFiles::read(&dir).unwrap_err().to_string();
        assert!(err.contains("whitelist:1:"), "{err}");
    }

    #[test]
    fn inputs_are_validated_naming_the_flag() {
        let error = |spec: HubSpec| objects(&spec, &files()).unwrap_err().to_string();
        for hostile in ["hub\nkind: ClusterRoleBinding", "Hub", "", "a.b", "hub\"", &"x".repeat(64)] {
            let err = error(HubSpec::new(hostile, 1));
            assert!(err.starts_with("--namespace "), "{err}");
        }
        assert!(error(HubSpec::new("hub", 0)).starts_with("--replicas 0"));
        assert!(error(HubSpec::new("hub", MAX_REPLICAS + 1)).starts_with("--replicas "));
        for image in ["", "a b", "img\n---\nkind: Secret", "img\t", "img\"", &"i".repeat(513)] {
            let err = error(HubSpec { image: image.into(), ..HubSpec::new("hub", 1) });
            assert!(err.starts_with("--image "), "{err}");
        }
        for image in ["localhost/tether:0.1.0", "registry.example:5000/team/tether@sha256:0123abcdef", "tether"] {
            assert!(HubSpec { image: image.into(), ..HubSpec::new("hub", 1) }.validate().is_ok(), "{image}");
        }
        let node_port = HubSpec { agent_service: ServiceType::NodePort, ..HubSpec::new("hub", 1) };
        let err = error(HubSpec { agent_load_balancer_ip: Some("192.0.2.7".parse().unwrap()), ..node_port.clone() });
        assert_eq!(err, "--agent-load-balancer-ip is only for --agent-service-type LoadBalancer, not NodePort");
        let err = error(HubSpec { split_agent_service: true, ..node_port });
        assert!(err.starts_with("--split-agent-service "), "{err}");
        let huge = HubFiles { whitelist: "#".repeat(MAX_CONFIGMAP_BYTES), ..files() };
        let err = objects(&HubSpec::new("hub", 1), &huge).unwrap_err().to_string();
        assert!(err.contains("ConfigMap"), "{err}");
    }

    #[test]
    fn hostile_file_contents_stay_data() {
        let hostile = "---\nkind: ClusterRoleBinding\n\"}]\n";
        let files = HubFiles { whitelist: hostile.into(), ..files() };
        let text = render(&objects(&HubSpec::new("hub", 1), &files).unwrap());
        // Every document is one JSON object, and the whitelist comes back as it went in.
        let documents: Vec<Value> = text
            .split("\n---\n")
            .skip(1)
            .map(|doc| serde_json::from_str(doc.split_once('\n').unwrap().1).expect("a JSON document"))
            .collect();
        assert_eq!(documents.len(), 11);
        assert_eq!(find(&documents, "ConfigMap", NAME)["data"]["whitelist"], hostile);
        assert!(!text.lines().any(|l| l.starts_with("kind:")));
    }

    #[test]
    fn kubernetes_versions_parse_and_choose_the_objects() {
        for (text, minor) in [("1.20", 20), ("v1.20.2", 20), ("1.33", 33), ("1.27+", 27), ("v1.27.3-gke.100", 27)] {
            assert_eq!(text.parse::<KubeVersion>(), Ok(KubeVersion { minor }), "{text}");
        }
        assert_eq!("1.18".parse::<KubeVersion>(), Err(InvalidKubeVersion::TooOld(18)));
        assert!(matches!("2.1".parse::<KubeVersion>(), Err(InvalidKubeVersion::Major(_))));
        for bad in ["", "1", "one.twenty", "1.", ".20", "1.2x", "1.20\n", "v", "1.99999"] {
            assert!(matches!(bad.parse::<KubeVersion>(), Err(InvalidKubeVersion::Form(_))), "{bad:?}");
        }

        let at =
            |version: &str| build(&HubSpec { kubernetes_version: version.parse().unwrap(), ..HubSpec::new("hub", 2) });
        let old = at("1.20");
        assert_eq!(find(&old, "PodDisruptionBudget", NAME)["apiVersion"], "policy/v1beta1");
        let udp = find(&old, "Service", AGENT_SERVICE);
        let tcp = find(&old, "Service", AGENT_TCP_SERVICE);
        assert_eq!(
            udp["spec"]["ports"],
            json!([{ "name": "agent-udp", "port": 7443, "targetPort": "agent-udp", "protocol": "UDP" }])
        );
        assert_eq!(
            tcp["spec"]["ports"],
            json!([{ "name": "agent-tcp", "port": 7443, "targetPort": "agent-tcp", "protocol": "TCP" }])
        );
        assert_eq!(find(&at("1.21"), "PodDisruptionBudget", NAME)["apiVersion"], "policy/v1");
        assert_eq!(kinds(&at("1.25")).iter().filter(|k| k.starts_with("Service/tether-stub-agents")).count(), 2);

        let current = at("1.33");
        assert_eq!(find(&current, "PodDisruptionBudget", NAME)["spec"]["maxUnavailable"], 1);
        let agents = find(&current, "Service", AGENT_SERVICE);
        assert_eq!(agents["spec"]["type"], "LoadBalancer");
        assert_eq!(agents["spec"]["externalTrafficPolicy"], "Local");
        assert_eq!(agents["spec"]["ports"].as_array().unwrap().len(), 2);
        assert!(agents["spec"].get("sessionAffinity").is_none());
        assert!(!kinds(&current).contains(&format!("Service/{AGENT_TCP_SERVICE}")));
        let split = build(&HubSpec { split_agent_service: true, ..HubSpec::new("hub", 2) });
        assert!(kinds(&split).contains(&format!("Service/{AGENT_TCP_SERVICE}")));

        // NodePort and ClusterIP mix protocols on every version.
        for kind in [ServiceType::NodePort, ServiceType::ClusterIp] {
            let objects = build(&HubSpec {
                agent_service: kind,
                kubernetes_version: "1.20".parse().unwrap(),
                ..HubSpec::new("hub", 2)
            });
            let agents = find(&objects, "Service", AGENT_SERVICE);
            assert_eq!(
                (agents["spec"]["type"].as_str(), agents["spec"]["ports"].as_array().unwrap().len()),
                (Some(kind.as_str()), 2)
            );
            assert_eq!(agents["spec"].get("externalTrafficPolicy").is_some(), kind == ServiceType::NodePort);
        }
        let peers = find(&current, "Service", PEER_SERVICE);
        assert_eq!(peers["spec"]["clusterIP"], "None");
        assert_eq!(peers["spec"]["ports"][0]["protocol"], "UDP");
        assert_eq!(peers["spec"]["ports"][0]["port"], 7444);
        let https = find(&current, "Service", USER_SERVICE);
        assert_eq!(https["spec"]["ports"][0]["port"], 8443);
    }

    #[test]
    fn load_balancer_address_and_annotations_reach_the_services() {
        let spec = HubSpec {
            kubernetes_version: "1.20".parse().unwrap(),
            agent_load_balancer_ip: Some("192.0.2.7".parse().unwrap()),
            service_annotations: vec!["metallb.universe.tf/allow-shared-ip=tether".parse().unwrap()],
            ..HubSpec::new("hub", 2)
        };
        let objects = build(&spec);
        for name in [AGENT_SERVICE, AGENT_TCP_SERVICE] {
            let service = find(&objects, "Service", name);
            assert_eq!(service["spec"]["loadBalancerIP"], "192.0.2.7");
            assert_eq!(service["metadata"]["annotations"]["metallb.universe.tf/allow-shared-ip"], "tether");
        }
        assert!(find(&objects, "Service", USER_SERVICE)["spec"].get("loadBalancerIP").is_none());
        assert!(find(&objects, "Service", PEER_SERVICE)["metadata"].get("annotations").is_none());

        for good in ["a=b", "service.beta.kubernetes.io/aws-load-balancer-type=nlb", "k=", "x/y.z_1=v=w"] {
            assert!(good.parse::<Annotation>().is_ok(), "{good}");
        }
        for bad in [
            "novalue",
            "=v",
            "Bad_Prefix/k=v",
            "/k=v",
            "k-=v",
            "a/b/c=v",
            "k=line\nbreak",
            &format!("{}=v", "k".repeat(64)),
        ] {
            assert!(bad.parse::<Annotation>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_checksum_follows_what_the_stub_reads_at_start_only() {
        let checksum = |files: &HubFiles| {
            let objects: Vec<Value> =
                objects(&HubSpec::new("hub", 1), files).unwrap().into_iter().map(|o| o.value).collect();
            find(&objects, "Deployment", NAME)["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
                .clone()
        };
        let base = checksum(&files());
        assert_eq!(checksum(&HubFiles { whitelist: "dev agent sha256:00\n".into(), ..files() }), base);
        assert_ne!(checksum(&HubFiles { stub_cert_pem: "ROTATED\n".into(), ..files() }), base);
        assert_ne!(checksum(&HubFiles { issuer_pub_pem: "ROTATED\n".into(), ..files() }), base);
        assert_ne!(checksum(&HubFiles { ca_pem: "ROTATED\n".into(), ..files() }), base);
    }

    /// Deserialises `value` as the k8s-openapi type of its kind and serialises it again: a
    /// misspelt or unknown field (which k8s-openapi skips) or a wrong type makes them differ.
    fn round_trip<K: Serialize + DeserializeOwned>(value: &Value) -> Value {
        let typed: K = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{e}: {value:#}"));
        serde_json::to_value(typed).unwrap()
    }

    #[test]
    fn every_object_matches_the_kubernetes_api_types() {
        let (_tmp, _dir, files) = fresh_dir();
        for spec in [
            HubSpec::new("hub", 3),
            HubSpec {
                kubernetes_version: "1.20".parse().unwrap(),
                agent_load_balancer_ip: Some("2001:db8::1".parse().unwrap()),
                service_annotations: vec!["a=b".parse().unwrap()],
                ..HubSpec::new("hub", 3)
            },
            HubSpec {
                agent_service: ServiceType::NodePort,
                user_service: ServiceType::ClusterIp,
                ..HubSpec::new("hub", 1)
            },
        ] {
            for object in objects(&spec, &files).unwrap() {
                let value = &object.value;
                let again = match value["kind"].as_str().unwrap() {
                    "Namespace" => round_trip::<api::core::v1::Namespace>(value),
                    "ServiceAccount" => round_trip::<api::core::v1::ServiceAccount>(value),
                    "Role" => round_trip::<api::rbac::v1::Role>(value),
                    "RoleBinding" => round_trip::<api::rbac::v1::RoleBinding>(value),
                    "Secret" => round_trip::<api::core::v1::Secret>(value),
                    "ConfigMap" => round_trip::<api::core::v1::ConfigMap>(value),
                    "Deployment" => round_trip::<api::apps::v1::Deployment>(value),
                    "Service" => round_trip::<api::core::v1::Service>(value),
                    "PodDisruptionBudget" => {
                        // policy/v1beta1 has the same fields as policy/v1, the only one k8s-openapi has.
                        let mut as_v1 = value.clone();
                        as_v1["apiVersion"] = "policy/v1".into();
                        let mut again = round_trip::<api::policy::v1::PodDisruptionBudget>(&as_v1);
                        again["apiVersion"] = value["apiVersion"].clone();
                        again
                    }
                    other => panic!("no check for kind {other}"),
                };
                assert_eq!(&again, value, "{} is not what Kubernetes' types make of it", value["kind"]);
            }
        }
    }
}
