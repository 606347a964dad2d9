//! `tether register`: the manifest that installs an agent in a cluster.

use std::path::PathBuf;

use clap::Args;

use crate::identity::files::CertDir;
use crate::register::{Registration, Target};

#[derive(Args)]
pub struct RegisterArgs {
    #[arg(long, env = "TETHER_CERTS", default_value = "certs")]
    certs: PathBuf,
    #[arg(long)]
    cluster: String,
    /// Agent name (both replicas share its certificate).
    #[arg(long, default_value = "agent")]
    name: String,
    /// The stub's agent address (UDP and TCP) as the cluster's pods reach it, HOST:PORT.
    #[arg(long)]
    stub: String,
    /// Container image with the tether binary (`scripts/image.sh` builds this one).
    #[arg(long, default_value = concat!("localhost/tether:", env!("CARGO_PKG_VERSION")))]
    image: String,
    #[arg(long, default_value = "tether-system")]
    namespace: String,
}

impl RegisterArgs {
    /// Issues (or reuses) and whitelists the agent's certificate, then prints the manifest.
    pub fn run(self) -> anyhow::Result<()> {
        let dir = CertDir::new(&self.certs);
        let target = Target {
            namespace: self.namespace,
            cluster: self.cluster,
            name: self.name,
            stub: self.stub,
            image: self.image,
        };
        let (registration, fingerprint) = Registration::prepare(&dir, target)?;
        let target = &registration.target;
        eprintln!(
            "agent {}/{} ({fingerprint}) is registered in {}",
            target.cluster,
            target.name,
            dir.whitelist().display()
        );
        print!("{}", registration.render());
        Ok(())
    }
}
