//! The kubeconfig a user gets from `tether kubeconfig`: the stub's front door for one cluster,
//! the tether CA, and a fresh token. kubectl and client libraries use it as it is.

use base64::Engine;

/// Everything a kubeconfig for one user and cluster needs.
pub struct UserKubeconfig<'a> {
    /// `https://HOST:PORT` of the stub's front door.
    pub stub_url: &'a str,
    pub cluster: &'a str,
    pub user: &'a str,
    /// PEM of the CA that signed the stub's certificate.
    pub ca_pem: &'a str,
    pub token: &'a str,
}

/// A YAML string with every special character escaped (JSON strings are valid YAML). Shared by
/// every YAML tether prints.
pub(crate) fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

impl UserKubeconfig<'_> {
    /// The kubeconfig as YAML.
    pub fn render(&self) -> String {
        let server = format!("{}/clusters/{}", self.stub_url.trim_end_matches('/'), self.cluster);
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem);
        let cluster_name = format!("tether-{}", self.cluster);
        let user_name = format!("{}@tether", self.user);
        let context = format!("{}@{}", self.user, self.cluster);
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: {context}
  context:
    cluster: {cluster}
    user: {user}
current-context: {context}
",
            cluster = quoted(&cluster_name),
            server = quoted(&server),
            user = quoted(&user_name),
            token = quoted(self.token),
            context = quoted(&context),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_reads_what_we_write() {
        let yaml = UserKubeconfig {
            stub_url: "https://localhost:8443/",
            cluster: "dev",
            user: "alice \"the\" admin",
            ca_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            token: "a.b.c",
        }
        .render();
        let parsed = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://localhost:8443/clusters/dev"));
        assert!(cluster.certificate_authority_data.is_some());
        let user = parsed.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(
            user.token.as_ref().map(|t| secrecy::ExposeSecret::expose_secret(t).to_owned()),
            Some("a.b.c".into())
        );
        assert_eq!(parsed.current_context.as_deref(), Some("alice \"the\" admin@dev"));
    }
}
