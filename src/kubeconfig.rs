//! The kubeconfigs `tether kubeconfig` writes, built with the `kube` crate's kubeconfig types:
//! for each cluster, a cluster entry (the stub's front door for it, the tether CA), a user entry
//! and a context, all named after the cluster, so that two of them merged never share a user
//! (a cluster reached with another cluster's token gets 403). The user either holds a token
//! ([`Credential::Token`]) or runs `tether credential` as kubectl's exec plugin
//! ([`Credential::Exec`]), which fetches short-lived tokens from the console and refreshes them.
//! [`merge_into`] adds them to an existing kubeconfig without touching its other entries.

use base64::Engine;
use kube::config::{
    AuthInfo, Cluster, Context, ExecConfig, ExecInteractiveMode, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};

/// A YAML string with every special character escaped (JSON strings are valid YAML). Shared by
/// every YAML tether prints.
pub(crate) fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// How the user of a cluster's entry authenticates.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A token minted now.
    Token(String),
    /// `COMMAND ARGS...` prints an `ExecCredential` (`tether credential ...`).
    Exec { command: String, args: Vec<String> },
}

/// One cluster's entries.
#[derive(Debug, Clone)]
pub struct Entry {
    pub cluster: String,
    pub credential: Credential,
}

/// Everything a kubeconfig for one user and some clusters needs.
#[derive(Debug, Clone)]
pub struct UserKubeconfig {
    /// `https://HOST:PORT` of the stub's front door.
    pub stub_url: String,
    /// The name in the entries' names: the user (token) or whoever runs the plugin.
    pub user: String,
    /// PEM of the CA that signed the stub's certificate.
    pub ca_pem: String,
    pub entries: Vec<Entry>,
}

/// The names of one cluster's entries: cluster `tether-C`, user `USER@tether-C`, context
/// `USER@C`.
pub fn names(user: &str, cluster: &str) -> (String, String, String) {
    (format!("tether-{cluster}"), format!("{user}@tether-{cluster}"), format!("{user}@{cluster}"))
}

impl UserKubeconfig {
    /// The kubeconfig; its current context is the first cluster's.
    pub fn build(&self) -> Kubeconfig {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let mut config =
            Kubeconfig { api_version: Some("v1".into()), kind: Some("Config".into()), ..Default::default() };
        for entry in &self.entries {
            let (cluster_name, user_name, context_name) = names(&self.user, &entry.cluster);
            let server = format!("{}/clusters/{}", self.stub_url.trim_end_matches('/'), entry.cluster);
            config.clusters.push(NamedCluster {
                name: cluster_name.clone(),
                cluster: Some(Cluster {
                    server: Some(server),
                    certificate_authority_data: Some(ca.clone()),
                    ..Default::default()
                }),
                other: Default::default(),
            });
            let auth_info = match &entry.credential {
                Credential::Token(token) => AuthInfo { token: Some(token.clone().into()), ..Default::default() },
                Credential::Exec { command, args } => AuthInfo {
                    exec: Some(ExecConfig {
                        api_version: Some("client.authentication.k8s.io/v1".into()),
                        command: Some(command.clone()),
                        args: Some(args.clone()),
                        env: None,
                        drop_env: None,
                        install_hint: Some("tether credential is part of the tether binary".into()),
                        interactive_mode: Some(ExecInteractiveMode::Never),
                        provide_cluster_info: false,
                        cluster: None,
                        other: Default::default(),
                    }),
                    ..Default::default()
                },
            };
            config.auth_infos.push(NamedAuthInfo {
                name: user_name.clone(),
                auth_info: Some(auth_info),
                other: Default::default(),
            });
            config.contexts.push(NamedContext {
                name: context_name.clone(),
                context: Some(Context { cluster: cluster_name, user: Some(user_name), ..Default::default() }),
                other: Default::default(),
            });
        }
        config.current_context = config.contexts.first().map(|c| c.name.clone());
        config
    }
}

/// `ours` added to `existing`: an entry of the same name is replaced where it stands, a new one
/// goes at the end, every other entry stays as it was, and so does the current context if
/// `existing` has one.
pub fn merge_into(mut existing: Kubeconfig, ours: Kubeconfig) -> Kubeconfig {
    fn upsert<T>(into: &mut Vec<T>, new: Vec<T>, name: impl Fn(&T) -> &str) {
        for item in new {
            match into.iter().position(|x| name(x) == name(&item)) {
                Some(i) => into[i] = item,
                None => into.push(item),
            }
        }
    }
    upsert(&mut existing.clusters, ours.clusters, |c| &c.name);
    upsert(&mut existing.auth_infos, ours.auth_infos, |u| &u.name);
    upsert(&mut existing.contexts, ours.contexts, |c| &c.name);
    existing.current_context = existing.current_context.or(ours.current_context);
    existing.api_version.get_or_insert_with(|| "v1".into());
    existing.kind.get_or_insert_with(|| "Config".into());
    existing
}

/// The kubeconfig as YAML.
pub fn to_yaml(config: &Kubeconfig) -> anyhow::Result<String> {
    serde_saphyr::to_string(config).map_err(|e| anyhow::anyhow!("cannot write the kubeconfig as YAML: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn user(config: &Kubeconfig, name: &str) -> AuthInfo {
        config.auth_infos.iter().find(|u| u.name == name).unwrap().auth_info.clone().unwrap()
    }

    fn two_clusters() -> UserKubeconfig {
        UserKubeconfig {
            stub_url: "https://localhost:8443/".into(),
            user: "alice \"the\" admin".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            entries: vec![
                Entry { cluster: "dev".into(), credential: Credential::Token("a.b.c".into()) },
                Entry {
                    cluster: "prod".into(),
                    credential: Credential::Exec { command: "/bin/tether".into(), args: vec!["credential".into()] },
                },
            ],
        }
    }

    #[test]
    fn kube_reads_what_we_write_and_each_cluster_has_its_own_user() {
        let yaml = to_yaml(&two_clusters().build()).unwrap();
        let parsed = Kubeconfig::from_yaml(&yaml).unwrap();
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://localhost:8443/clusters/dev"));
        assert!(cluster.certificate_authority_data.is_some());
        let dev = user(&parsed, "alice \"the\" admin@tether-dev");
        assert_eq!(dev.token.map(|t| t.expose_secret().to_owned()), Some("a.b.c".into()));
        let prod = user(&parsed, "alice \"the\" admin@tether-prod");
        let exec = prod.exec.unwrap();
        assert_eq!(exec.api_version.as_deref(), Some("client.authentication.k8s.io/v1"));
        assert_eq!(exec.command.as_deref(), Some("/bin/tether"));
        assert_eq!(parsed.current_context.as_deref(), Some("alice \"the\" admin@dev"));
        let contexts: Vec<_> = parsed.contexts.iter().map(|c| c.context.clone().unwrap().user.unwrap()).collect();
        assert_eq!(contexts, ["alice \"the\" admin@tether-dev", "alice \"the\" admin@tether-prod"]);
    }

    #[test]
    fn merging_replaces_our_entries_and_keeps_the_rest() {
        let existing = Kubeconfig::from_yaml(
            "apiVersion: v1\nkind: Config\ncurrent-context: other\nclusters:\n- name: other\n  cluster: {server: https://x}\n- name: tether-dev\n  cluster: {server: https://old}\nusers:\n- name: me\n  user: {token: mine}\ncontexts:\n- name: other\n  context: {cluster: other, user: me}\n",
        )
        .unwrap();
        let merged = merge_into(existing, two_clusters().build());
        let names: Vec<_> = merged.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["other", "tether-dev", "tether-prod"]);
        let dev = merged.clusters.iter().find(|c| c.name == "tether-dev").unwrap();
        assert_eq!(dev.cluster.as_ref().unwrap().server.as_deref(), Some("https://localhost:8443/clusters/dev"));
        assert!(merged.auth_infos.iter().any(|u| u.name == "me"));
        assert_eq!(merged.current_context.as_deref(), Some("other"), "the user's current context stays");
        let yaml = to_yaml(&merged).unwrap();
        assert_eq!(Kubeconfig::from_yaml(&yaml).unwrap().contexts.len(), 3);
    }
}
