//! The HTTPS client of the console's own clients (`tether credential`, `tether login`): one
//! request at a time to the console or an OpenID Connect provider, trusting a given CA, JSON or
//! form bodies in, JSON out, each bounded by [`REQUEST_TIMEOUT`].

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::bridge::{self, Body};
use crate::identity::files;

/// A request that takes longer has failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

type Https = Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Body>;

/// An HTTPS-only client trusting the certificates in `ca`.
#[derive(Clone)]
pub struct HttpsClient {
    client: Https,
}

/// An answer: its status and body, parsed as JSON when it is JSON (else the text as a string).
pub struct Answer {
    pub status: http::StatusCode,
    pub body: serde_json::Value,
}

impl Answer {
    /// The `message` of a Kubernetes Status, the `error_description`/`error` of an OAuth error,
    /// or the body itself.
    pub fn message(&self) -> String {
        for key in ["message", "error_description", "error"] {
            if let Some(text) = self.body.get(key).and_then(|m| m.as_str()) {
                return text.to_owned();
            }
        }
        match &self.body {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        }
    }
}

impl HttpsClient {
    pub fn new(ca: &Path) -> anyhow::Result<HttpsClient> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in files::load_certs(ca)? {
            roots.add(cert).with_context(|| format!("{}: not a usable CA certificate", ca.display()))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::identity::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
        Ok(HttpsClient { client: Client::builder(TokioExecutor::new()).build(connector) })
    }

    /// Sends `request`; a failure to connect or a timeout names `what` and the URL.
    pub async fn send(&self, what: &str, request: http::Request<Body>) -> anyhow::Result<Answer> {
        let url = request.uri().to_string();
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| anyhow::anyhow!("cannot reach {what} at {url}: {}", crate::errors::chain(&e)))?;
            let status = response.status();
            let bytes = response.into_body().collect().await.with_context(|| format!("reading {what}'s answer"))?;
            let bytes = bytes.to_bytes();
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            Ok(Answer { status, body })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("{what} at {url} did not answer within {REQUEST_TIMEOUT:?}"))?
    }

    pub async fn get(&self, what: &str, url: &str) -> anyhow::Result<Answer> {
        let request = http::Request::get(url).body(bridge::empty()).with_context(|| format!("{url:?}: not a URL"))?;
        self.send(what, request).await
    }

    /// A POST of `form` (application/x-www-form-urlencoded), as OAuth endpoints take it.
    pub async fn post_form(&self, what: &str, url: &str, form: &[(&str, &str)]) -> anyhow::Result<Answer> {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let request = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(bridge::full(body))
            .with_context(|| format!("{url:?}: not a URL"))?;
        self.send(what, request).await
    }
}
