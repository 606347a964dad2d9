//! `tether register`: the manifest that installs an agent in a cluster, as a console hands it to
//! that cluster's admin. Namespace, service account, a ClusterRole that may only impersonate
//! users and groups, its binding, a Secret with the agent's certificate, key, the tether CA and
//! the token issuer's public key, and a Deployment with two replicas (spread over nodes, ready
//! only while connected to the stub, with resource requests). Both replicas use the one
//! registered certificate; the stub tells their connections apart.

use base64::Engine;

use crate::identity::certs::{self, CertError};
use crate::identity::files::{self, CertDir, FileError};
use crate::identity::fingerprint::Fingerprint;
use crate::identity::names::{self, InvalidName};
use crate::kubeconfig::quoted as q;

/// Where and how the agent is to run: what an admin gives `tether register`.
#[derive(Debug, Clone)]
pub struct Target {
    pub namespace: String,
    pub cluster: String,
    /// The agent name (both replicas share its certificate).
    pub name: String,
    /// The stub's QUIC address, HOST:PORT, as the agent will dial it.
    pub stub: String,
    pub image: String,
}

/// What goes into the manifest: the target and the files the agent's Secret carries.
pub struct Registration {
    pub target: Target,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub issuer_pub_pem: String,
}

/// Why the manifest could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The namespace is not a valid name.
    #[error(transparent)]
    Name(#[from] InvalidName),
    /// The agent certificate could not be issued or whitelisted.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// A file the Secret carries could not be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// `--stub` is not HOST:PORT.
    #[error(
        "--stub {value:?} is not HOST:PORT (a DNS name, an IPv4 address or a [IPv6] address, then a port 1-65535): {problem}"
    )]
    Stub { value: String, problem: &'static str },
    /// `--image` is not an image reference.
    #[error("--image {value:?} is not an image reference: {problem}")]
    Image { value: String, problem: &'static str },
}

/// Checks that `value` is HOST:PORT, as the agent will dial it: nothing else can reach the
/// manifest through it (it is written into a comment and an argument).
pub fn validate_stub(value: &str) -> Result<(), RegisterError> {
    let bad = |problem| RegisterError::Stub { value: value.to_owned(), problem };
    let (host, port) = value.rsplit_once(':').ok_or_else(|| bad("no :PORT"))?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
        return Err(bad("the port is not a number"));
    }
    if !matches!(port.parse::<u32>(), Ok(1..=65_535)) {
        return Err(bad("the port is not within 1-65535"));
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or_else(|| bad("an IPv6 address needs its closing ]"))?;
        return inner.parse::<std::net::Ipv6Addr>().map(|_| ()).map_err(|_| bad("not an IPv6 address inside [ ]"));
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(bad("an IPv6 address must be written in [ ]"));
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(bad("the host is not a DNS name (letters, digits, inner '-', labels joined by '.')"));
    }
    Ok(())
}

/// Checks that `value` could be a container image reference: printable, no spaces, no quotes.
/// (The manifest quotes it anyway; this catches a mistyped one before a cluster does.)
pub fn validate_image(value: &str) -> Result<(), RegisterError> {
    let bad = |problem| RegisterError::Image { value: value.to_owned(), problem };
    if value.is_empty() {
        return Err(bad("it is empty"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '#' | '`')) {
        return Err(bad("it holds white space, a control character, a quote or '#'"));
    }
    Ok(())
}

impl Registration {
    /// Issues the agent's certificate in `dir` if it has none yet (or reuses it), makes sure its
    /// fingerprint is in the whitelist, and reads every file the manifest carries.
    pub fn prepare(dir: &CertDir, target: Target) -> Result<(Registration, Fingerprint), RegisterError> {
        // Everything that reaches the manifest is checked before anything is issued or written.
        names::validate("namespace", &target.namespace)?;
        names::validate("cluster", &target.cluster)?;
        names::validate("agent name", &target.name)?;
        validate_stub(&target.stub)?;
        validate_image(&target.image)?;
        let (cluster, name) = (&target.cluster, &target.name);
        let cert = dir.agent_cert(cluster, name);
        let fingerprint = if cert.exists() {
            certs::register_in_dir(dir, cluster, name, &cert)?.0
        } else {
            certs::agent_in_dir(dir, cluster, name, 365, false, true)?.0
        };
        let registration = Registration {
            ca_pem: files::load_text(&dir.ca_cert(), "cannot read the CA certificate")?,
            cert_pem: files::load_text(&cert, "cannot read the agent certificate")?,
            key_pem: files::load_text(&dir.agent_key(cluster, name), "cannot read the agent key")?,
            issuer_pub_pem: files::load_text(
                &dir.issuer_pub(),
                "cannot read the issuer public key (run `tether certs issuer`)",
            )?,
            target,
        };
        Ok((registration, fingerprint))
    }
}

/// Port of the agent's admin listener (probes).
const ADMIN_PORT: u16 = 8080;

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

impl Registration {
    /// The manifest, as YAML documents.
    pub fn render(&self) -> String {
        let target = &self.target;
        let ns = q(&target.namespace);
        let args = [
            "agent",
            "--cluster",
            &target.cluster,
            "--name",
            &target.name,
            "--stub",
            &target.stub,
            "--in-cluster",
            "--cert",
            "/etc/tether/agent.crt",
            "--key",
            "/etc/tether/agent.key",
            "--ca",
            "/etc/tether/ca.crt",
            "--issuer-pub",
            "/etc/tether/issuer.pub",
            "--admin-listen",
            &format!("0.0.0.0:{ADMIN_PORT}"),
        ];
        let args: Vec<String> = args.iter().map(|a| q(a)).collect();
        format!(
            r#"# tether agent for cluster {cluster} (stub {stub}). Apply with: kubectl apply -f <this file>
apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: tether-agent
  namespace: {ns}
---
# The agent's only right: to impersonate the users and groups the hub vouches for. Every request
# is then authorized (RBAC) and audited as that user. For a kubectl --as that this cluster lets
# the caller make, the caller is named in the extra field tether-caller.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {role}
rules:
- apiGroups: [""]
  resources: ["users", "groups"]
  verbs: ["impersonate"]
- apiGroups: ["authentication.k8s.io"]
  resources: ["userextras/tether-caller"]
  verbs: ["impersonate"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {role}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {role}
subjects:
- kind: ServiceAccount
  name: tether-agent
  namespace: {ns}
---
apiVersion: v1
kind: Secret
metadata:
  name: tether-agent
  namespace: {ns}
type: Opaque
data:
  agent.crt: {cert}
  agent.key: {key}
  ca.crt: {ca}
  issuer.pub: {issuer}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: tether-agent
  namespace: {ns}
  labels:
    app.kubernetes.io/name: tether-agent
spec:
  replicas: 2
  selector:
    matchLabels:
      app.kubernetes.io/name: tether-agent
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
  template:
    metadata:
      labels:
        app.kubernetes.io/name: tether-agent
    spec:
      serviceAccountName: tether-agent
      # SIGTERM drains (the stub routes nothing new, in-flight requests finish): give it time.
      terminationGracePeriodSeconds: 30
      # Not root, nothing to escalate to, the runtime's default syscall filter; the Secret's
      # files are readable through the group.
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        runAsGroup: 65532
        fsGroup: 65532
        seccompProfile:
          type: RuntimeDefault
      # Preferred, not required: on a one-node cluster the second replica runs beside the first.
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              topologyKey: kubernetes.io/hostname
              labelSelector:
                matchLabels:
                  app.kubernetes.io/name: tether-agent
      containers:
      - name: agent
        image: {image}
        imagePullPolicy: IfNotPresent
        args: [{args}]
        env:
        - name: TETHER_GRACE
          value: "20s"
        ports:
        - name: admin
          containerPort: {ADMIN_PORT}
        readinessProbe:
          httpGet:
            path: /readyz
            port: admin
          periodSeconds: 2
        livenessProbe:
          httpGet:
            path: /healthz
            port: admin
          periodSeconds: 10
        resources:
          requests:
            cpu: 50m
            memory: 64Mi
          limits:
            memory: 512Mi
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          runAsNonRoot: true
          capabilities:
            drop: ["ALL"]
        volumeMounts:
        - name: tether
          mountPath: /etc/tether
          readOnly: true
      volumes:
      - name: tether
        secret:
          secretName: tether-agent
          defaultMode: 0440
"#,
            cluster = target.cluster,
            stub = target.stub,
            cert = b64(&self.cert_pem),
            key = b64(&self.key_pem),
            ca = b64(&self.ca_pem),
            issuer = b64(&self.issuer_pub_pem),
            image = q(&target.image),
            // Cluster-scoped, so named after the namespace: two installs never share them.
            role = q(&format!("tether:{}:impersonator", target.namespace)),
            args = args.join(", "),
        )
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn addresses_an_agent_can_dial_are_taken() {
        for ok in ["hub.example.com:7443", "localhost:1", "10.0.0.1:65535", "[::1]:7443", "[fd00::7]:443", "hub.:7443"]
        {
            validate_stub(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn hostile_or_mistyped_addresses_are_refused_with_the_reason() {
        let cases = [
            ("hub:7443\nkind: Secret", "the port is not a number"),
            ("hub\n---\nkind: ClusterRoleBinding:7443", "not a DNS name"),
            ("hub # comment:7443", "not a DNS name"),
            ("hub", "no :PORT"),
            ("hub:0", "within 1-65535"),
            ("hub:65536", "within 1-65535"),
            ("fd00::1:7443", "must be written in [ ]"),
            ("[::1:7443", "closing ]"),
            ("[hub]:7443", "not an IPv6 address"),
            (":7443", "not a DNS name"),
            ("-hub:7443", "not a DNS name"),
        ];
        for (value, reason) in cases {
            let message = validate_stub(value).expect_err(value).to_string();
            assert!(message.contains(reason), "{value:?}: {message}");
            assert!(message.contains("--stub"), "{message}");
        }
    }

    #[test]
    fn images_with_spaces_quotes_or_newlines_are_refused() {
        validate_image("registry.local:5000/tether@sha256:0123").unwrap();
        for bad in ["", "a b", "img\nkind: Pod", "img\"", "img#x"] {
            assert!(validate_image(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        /// Whatever is taken is one line of harmless characters, so it cannot add manifest lines.
        #[test]
        fn a_taken_address_is_one_line_of_plain_characters(value in ".{0,40}") {
            if validate_stub(&value).is_ok() {
                prop_assert!(value.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)), "{value:?}");
            }
        }

        /// Every host:port built from valid parts is taken.
        #[test]
        fn valid_parts_make_a_valid_address(
            labels in proptest::collection::vec("[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", 1..4),
            port in 1u16..,
        ) {
            let value = format!("{}:{port}", labels.join("."));
            prop_assert!(validate_stub(&value).is_ok(), "{value}");
        }
    }
}
