//! `tether hub`: the hub's own manifest (see [`crate::hub::manifest`] for what it holds and why).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;

use crate::hub::manifest::{self, Annotation, HubFiles, HubSpec, KubeVersion, ServiceType};
use crate::identity::files::CertDir;

/// `tether hub --help`: what the manifest holds, and the two things an admin must know.
pub const LONG_ABOUT: &str = "Print the hub's own manifest: N stub replicas spread over nodes, a Service \
for agents (QUIC over UDP and the TCP fallback, port 7443), one for users (HTTPS, 8443), a headless one for \
peer links (UDP 7444), Lease RBAC for the member list, a PodDisruptionBudget, and the stub's certificate, \
key, CA, whitelist and issuer.pub (never the CA key or the issuer key). Apply it with `kubectl apply -f`.

The stub certificate must name the addresses agents and users reach (`tether certs stub --san`). After \
registering agents, run this again and apply: the replicas reload the whitelist from its ConfigMap \
without a restart. A changed CA, stub certificate or issuer.pub rolls the replicas, one at a time.";

#[derive(Args)]
pub struct HubArgs {
    /// Certificate directory to take ca.crt, stub.crt, stub.key, whitelist and issuer.pub from.
    #[arg(long, env = "TETHER_CERTS", value_name = "DIR", default_value = "certs")]
    certs: PathBuf,
    /// Namespace of the hub; its replicas find each other through Leases there.
    #[arg(long)]
    namespace: String,
    /// How many stub replicas to run. Each agent connects to two of them.
    #[arg(long, value_name = "N")]
    replicas: u32,
    /// Container image with the tether binary (`scripts/image.sh` builds this one).
    #[arg(long, default_value = manifest::default_image())]
    image: String,
    /// How agents reach the hub. LoadBalancer keeps clients' source addresses (traffic policy
    /// Local); NodePort uses one node port for UDP and TCP.
    #[arg(long, value_enum, value_name = "TYPE", ignore_case = true, default_value = "LoadBalancer")]
    agent_service_type: ServiceType,
    /// How users and services reach the HTTPS front door.
    #[arg(long, value_enum, value_name = "TYPE", ignore_case = true, default_value = "LoadBalancer")]
    user_service_type: ServiceType,
    /// The cluster's Kubernetes version, MAJOR.MINOR (`kubectl version` shows it). Before 1.26
    /// a LoadBalancer may not mix UDP and TCP, so agents get two Services; before 1.21 the
    /// PodDisruptionBudget is policy/v1beta1. Oldest: 1.19.
    #[arg(long, value_name = "VERSION", default_value_t = KubeVersion::CURRENT)]
    kubernetes_version: KubeVersion,
    /// Two agent Services (UDP, TCP) even where Kubernetes takes one with both, for load
    /// balancers that cannot mix protocols.
    #[arg(long)]
    split_agent_service: bool,
    /// The address to ask the load balancer for, on the agent Service(s): with two of them,
    /// agents need both at one address (the TCP fallback dials the QUIC address).
    #[arg(long, value_name = "IP")]
    agent_load_balancer_ip: Option<IpAddr>,
    /// An annotation for the agent and user Services, such as a cloud load balancer's settings
    /// (service.beta.kubernetes.io/aws-load-balancer-type=nlb) or MetalLB's
    /// metallb.universe.tf/allow-shared-ip=KEY (repeatable).
    #[arg(long = "service-annotation", value_name = "KEY=VALUE")]
    service_annotations: Vec<Annotation>,
}

impl HubArgs {
    /// Reads and checks the certificate directory, then prints the manifest.
    pub fn run(self) -> anyhow::Result<()> {
        let dir = CertDir::new(&self.certs);
        let spec = HubSpec {
            namespace: self.namespace,
            replicas: self.replicas,
            image: self.image,
            agent_service: self.agent_service_type,
            user_service: self.user_service_type,
            kubernetes_version: self.kubernetes_version,
            split_agent_service: self.split_agent_service,
            agent_load_balancer_ip: self.agent_load_balancer_ip,
            service_annotations: self.service_annotations,
        };
        // Inputs first: a bad flag is named before any file is looked at.
        spec.validate()?;
        let files = HubFiles::read(&dir)?;
        print!("{}", manifest::render(&manifest::objects(&spec, &files)?));
        let agents = if spec.splits_agent_service() {
            format!("{} (UDP) and {} (TCP)", manifest::AGENT_SERVICE, manifest::AGENT_TCP_SERVICE)
        } else {
            manifest::AGENT_SERVICE.to_owned()
        };
        eprintln!(
            "hub: {} replica(s) in namespace {}; agents dial Service {agents}, users {} (kubectl -n {} get services)",
            spec.replicas,
            spec.namespace,
            manifest::USER_SERVICE,
            spec.namespace
        );
        Ok(())
    }
}
