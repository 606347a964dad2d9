//! A client of the hub's own API server, for whatever the hub asks of it (Leases, token and
//! access reviews): from a kubeconfig file, or else in-cluster or the default kubeconfig
//! (`kube::Config::infer`). Building it sends nothing, so the API server may come up later.

use std::path::Path;

use anyhow::Context;

/// The client and the API server's URL (for messages).
pub async fn hub_client(kubeconfig: Option<&Path>) -> anyhow::Result<(kube::Client, String)> {
    crate::identity::tls::install_default_provider();
    let kube_config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("{}: cannot read the hub's kubeconfig", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("{}: cannot use the hub's kubeconfig", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no way to the hub's API server: not in a pod with a service account, and no $KUBECONFIG or \
             ~/.kube/config; give the hub's kubeconfig",
        )?,
    };
    let server = kube_config.cluster_url.to_string();
    let client = kube::Client::try_from(kube_config)
        .with_context(|| format!("cannot set up TLS or credentials for the hub's API server at {server}"))?;
    Ok((client, server))
}
