//! Membership from Kubernetes Leases (a placeholder while the real module is written: it
//! publishes this replica alone).

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::members::Members;

pub struct LeaseConfig {
    pub namespace: String,
    pub kubeconfig: Option<PathBuf>,
    pub id: String,
    pub peer_address: String,
    pub duration: Duration,
    pub renew_every: Duration,
}

pub struct LeaseMembership {
    config: LeaseConfig,
}

impl LeaseMembership {
    pub async fn connect(config: LeaseConfig) -> anyhow::Result<LeaseMembership> {
        Ok(LeaseMembership { config })
    }

    pub async fn run(self, members: tokio::sync::watch::Sender<Members>, cancel: CancellationToken) {
        members.send_replace(Members::from([(self.config.id.clone(), self.config.peer_address.clone())]));
        cancel.cancelled().await;
    }
}
