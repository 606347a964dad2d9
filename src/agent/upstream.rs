//! The agent's way to its API server. Every source (a URL, a kubeconfig, the in-cluster service
//! account) becomes a `kube::Config`, so address, CA, client certificate and credential
//! (including exec plugins) are handled by the `kube` crate. The in-cluster token is ours
//! ([`super::token_file`]): kube re-reads token files only once a minute, tether on the first
//! request after the kubelet rotates it. The HTTP client itself is ours too, because kube's own
//! `Client` only sends buffered request bodies and tether streams them.

use std::path::PathBuf;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tower::util::MapRequestLayer;
use tower::{ServiceBuilder, ServiceExt};

use super::token_file::TokenFile;
use crate::bridge::{Body, BoxError};
use crate::identity::files;

/// Where the API server is and how to authenticate to it.
#[derive(Debug, Clone)]
pub enum UpstreamSource {
    /// A plain URL (http or https), optionally with the CA that signed its certificate.
    Url { url: String, ca: Option<PathBuf> },
    /// A kubeconfig file, optionally a context of it.
    Kubeconfig { path: PathBuf, context: Option<String> },
    /// Inside a pod: the API server from `KUBERNETES_SERVICE_HOST`/`_PORT`, the pod's service
    /// account token and CA from `dir` (normally /var/run/secrets/kubernetes.io/serviceaccount).
    /// The token file is re-read as soon as the kubelet rotates it.
    InCluster { dir: PathBuf },
}

/// Why the upstream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The URL is not a valid absolute URL.
    #[error("--upstream {url:?} is not a valid URL (expected e.g. https://10.0.0.1:6443)")]
    BadUrl {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    /// The CA file could not be read.
    #[error(transparent)]
    Ca(#[from] files::FileError),
    /// The kubeconfig could not be read or used.
    #[error("{}: cannot use this kubeconfig", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// In-cluster mode without the environment a pod has.
    #[error("--in-cluster: {0} is not set (it is in every pod; outside one, use --kubeconfig)")]
    NotInCluster(&'static str),
    /// kube could not build TLS or authentication from the configuration.
    #[error("cannot set up TLS or credentials for the API server")]
    Kube(#[source] kube::Error),
}

/// The configuration a pod has: service host and port from the environment, token and CA files.
fn in_cluster(dir: &std::path::Path) -> Result<(kube::Config, TokenFile), UpstreamError> {
    let env = |name: &'static str| std::env::var(name).map_err(|_| UpstreamError::NotInCluster(name));
    let (host, port) = (env("KUBERNETES_SERVICE_HOST")?, env("KUBERNETES_SERVICE_PORT")?);
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let url = format!("https://{host}:{port}");
    let uri = url.parse().map_err(|source| UpstreamError::BadUrl { url: url.clone(), source })?;
    let ca = dir.join("ca.crt");
    let mut config = kube::Config::new(uri);
    config.root_cert = Some(files::load_certs(&ca)?.into_iter().map(|c| c.to_vec()).collect());
    config.root_cert_file = Some(ca);
    let token = TokenFile::open(&dir.join("token"))?;
    if let Ok(namespace) = std::fs::read_to_string(dir.join("namespace")) {
        config.default_namespace = namespace.trim().to_owned();
    }
    Ok((config, token))
}

type Service = tower::util::BoxCloneSyncService<Request<Body>, Response<Incoming>, BoxError>;

/// A shareable client for the API server. Requests carry only path and query; the base URL and
/// credential are added here.
#[derive(Clone)]
pub struct Upstream {
    service: Service,
    url: String,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Upstream {
    /// Builds the client for `source`.
    pub async fn new(source: &UpstreamSource) -> Result<Upstream, UpstreamError> {
        let mut token_file = None;
        let config = match source {
            UpstreamSource::Url { url, ca } => {
                let uri = url.parse().map_err(|source| UpstreamError::BadUrl { url: url.clone(), source })?;
                let mut config = kube::Config::new(uri);
                if let Some(ca) = ca {
                    config.root_cert = Some(files::load_certs(ca)?.into_iter().map(|c| c.to_vec()).collect());
                }
                config
            }
            UpstreamSource::Kubeconfig { path, context } => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|source| UpstreamError::Kubeconfig { path: path.clone(), source })?;
                let options = KubeConfigOptions { context: context.clone(), ..Default::default() };
                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|source| UpstreamError::Kubeconfig { path: path.clone(), source })?
            }
            UpstreamSource::InCluster { dir } => {
                let (config, token) = in_cluster(dir)?;
                token_file = Some(Arc::new(token));
                config
            }
        };
        Upstream::from_config(config, token_file)
    }

    /// Builds the client from a `kube::Config`, with the bearer token of `token_file` if given.
    fn from_config(config: kube::Config, token_file: Option<Arc<TokenFile>>) -> Result<Upstream, UpstreamError> {
        let connector = config.rustls_https_connector().map_err(UpstreamError::Kube)?;
        let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build(connector);
        let service = ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .option_layer(config.auth_layer().map_err(UpstreamError::Kube)?)
            .option_layer(token_file.map(|token| {
                MapRequestLayer::new(move |mut request: Request<Body>| {
                    request.headers_mut().insert(http::header::AUTHORIZATION, token.authorization());
                    request
                })
            }))
            .map_err(BoxError::from)
            .service(client);
        Ok(Upstream { service: Service::new(service), url: config.cluster_url.to_string() })
    }

    /// The API server's base URL (for logs).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends one request; the response body streams.
    pub fn send(
        &self,
        request: Request<Body>,
    ) -> impl Future<Output = Result<Response<Incoming>, BoxError>> + Send + 'static {
        self.service.clone().oneshot(request)
    }
}
