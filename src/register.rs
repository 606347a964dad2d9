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
}

impl Registration {
    /// Issues the agent's certificate in `dir` if it has none yet (or reuses it), makes sure its
    /// fingerprint is in the whitelist, and reads every file the manifest carries.
    pub fn prepare(dir: &CertDir, target: Target) -> Result<(Registration, Fingerprint), RegisterError> {
        names::validate("namespace", &target.namespace)?;
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
