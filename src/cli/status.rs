//! `tether status --admin URL`: the cluster inventory of a stub replica (its admin listener's
//! `/clusters`) as a table, or as the JSON itself with `--json`.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use http_body_util::BodyExt;

use crate::stub::inventory::{self, Inventory};

/// How long the admin listener may take to answer.
const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct StatusArgs {
    /// The stub's admin listener (its --admin-listen): http://HOST:PORT, or HOST:PORT.
    #[arg(long, value_name = "URL")]
    admin: String,
    /// Print the JSON the stub answered instead of the table.
    #[arg(long)]
    json: bool,
}

impl StatusArgs {
    pub async fn run(self) -> anyhow::Result<()> {
        let url = clusters_url(&self.admin)?;
        let body = tokio::time::timeout(PATIENCE, fetch(&url))
            .await
            .with_context(|| format!("{url}: no answer within {PATIENCE:?}"))??;
        let inventory: Inventory = serde_json::from_slice(&body).with_context(|| {
            format!(
                "{url}: not a cluster inventory (is this a tether stub's --admin-listen address, of the same version?)"
            )
        })?;
        if self.json {
            println!("{}", String::from_utf8_lossy(&body).trim_end());
        } else {
            print!("{}", inventory::render_table(&inventory));
        }
        Ok(())
    }
}

/// `URL/clusters`, from http://HOST:PORT[/] or HOST:PORT.
fn clusters_url(admin: &str) -> anyhow::Result<http::Uri> {
    let base = if admin.contains("://") { admin.to_owned() } else { format!("http://{admin}") };
    let url = format!("{}/clusters", base.trim_end_matches('/'));
    let uri: http::Uri = url.parse().with_context(|| format!("--admin {admin:?} is not a URL or HOST:PORT"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--admin {admin:?}: the admin listener speaks plain http, not {}", uri.scheme_str().unwrap_or("?"));
    }
    Ok(uri)
}

async fn fetch(url: &http::Uri) -> anyhow::Result<bytes::Bytes> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client.get(url.clone()).await.with_context(|| {
        format!("cannot reach the admin listener at {url} (is the stub running with --admin-listen there?)")
    })?;
    let status = response.status();
    let body = response.into_body().collect().await.with_context(|| format!("{url}: the answer broke off"))?.to_bytes();
    if !status.is_success() {
        bail!(
            "{url}: {status}: {} (an agent's or the console's admin listener has no /clusters)",
            String::from_utf8_lossy(&body).trim()
        );
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_address_may_be_a_url_or_host_port() {
        assert_eq!(clusters_url("127.0.0.1:9090").unwrap().to_string(), "http://127.0.0.1:9090/clusters");
        assert_eq!(clusters_url("http://hub:9090/").unwrap().to_string(), "http://hub:9090/clusters");
        let e = clusters_url("https://hub:9090").unwrap_err().to_string();
        assert!(e.contains("plain http"), "{e}");
    }
}
