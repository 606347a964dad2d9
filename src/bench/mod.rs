//! `tether bench`: the load harness users run against their own stub (or, for comparison,
//! straight at an upstream). Workers send a mix of requests ([`mix`]) for a duration or a
//! count, a progress line shows how it goes, and the end prints latency percentiles from HDR
//! histograms, throughput and errors by class ([`report`]), as a table or JSON.
//!
//! - [`mix`]: which kinds of request, in what proportion.
//! - [`report`]: histograms, error classes, the summary.
//! - [`serve`]: a plain HTTP target with routes that fit the default paths.
//! - [`swarm`]: many simulated agents against one stub (`--agents N`), for memory per connection.

pub mod mix;
pub mod report;
pub mod serve;
pub mod swarm;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::{Rng, SeedableRng};

use crate::bridge::{self, Body};
use mix::{Kind, Mix};
use report::{ErrorClass, Report, Tally};

/// The request paths of each kind, appended to the target URL.
#[derive(Debug, Clone)]
pub struct Paths {
    pub small: String,
    pub list: String,
    pub watch: String,
    pub upload: String,
}

/// What `tether bench` needs.
#[derive(Clone)]
pub struct BenchConfig {
    /// Base URL: a stub's `https://HOST:PORT/clusters/C`, or an upstream for comparison.
    pub target: String,
    /// Sent as `Authorization: Bearer` (a stub needs one; see `tether token`).
    pub token: Option<String>,
    /// CA of an https target (the tether CA for a stub).
    pub ca: Option<PathBuf>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Client connections the requests are spread over.
    pub connections: usize,
    /// HTTP/1.1 instead of HTTP/2 (each request in flight then needs its own connection).
    pub http1: bool,
    /// Stop after this long...
    pub duration: Duration,
    /// ...or after this many requests, if given.
    pub requests: Option<u64>,
    pub mix: Mix,
    pub paths: Paths,
    pub upload_size: usize,
    /// A request without a complete answer by then counts as a timeout.
    pub timeout: Duration,
    /// Print the live progress line (stderr).
    pub progress: bool,
    /// Hold each watch open until the end of the run (to measure what open streams cost)
    /// instead of dropping it at its first event.
    pub hold_watches: bool,
}

/// Never prints the token.
impl std::fmt::Debug for BenchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchConfig")
            .field("target", &self.target)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("concurrency", &self.concurrency)
            .field("mix", &self.mix)
            .finish_non_exhaustive()
    }
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

fn client(config: &BenchConfig) -> anyhow::Result<HttpClient> {
    let https = config.target.starts_with("https://");
    let mut roots = rustls::RootCertStore::empty();
    match (&config.ca, https) {
        (Some(ca), _) => {
            for cert in crate::identity::files::load_certs(ca)? {
                roots.add(cert).with_context(|| format!("{}: not a usable CA certificate", ca.display()))?;
            }
        }
        (None, true) => {
            anyhow::bail!("--ca FILE is needed for an https target (for a stub: the tether CA, certs/ca.crt)")
        }
        (None, false) => {}
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::identity::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
    // TCP_NODELAY, as kubectl and client-go have it: with Nagle, a small request over a link with
    // real latency waits a round trip for the previous segment's ACK.
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = if config.http1 {
        builder.enable_http1().wrap_connector(http)
    } else {
        builder.enable_http2().wrap_connector(http)
    };
    let mut client = Client::builder(TokioExecutor::new());
    client.http2_only(!config.http1).pool_max_idle_per_host(if config.http1 { config.concurrency } else { 1 });
    // Windows sized like the stub's own, rather than h2's 64 KiB start.
    client.http2_initial_stream_window_size(2 * 1024 * 1024).http2_initial_connection_window_size(16 * 1024 * 1024);
    Ok(client.build(connector))
}

/// One request of `kind`: `Ok(bytes moved)` or why it failed.
async fn one(
    client: &HttpClient,
    config: &BenchConfig,
    kind: Kind,
    upload: &Bytes,
    deadline: Instant,
) -> Result<u64, ErrorClass> {
    let (method, path, body) = match kind {
        Kind::Small => ("GET", &config.paths.small, bridge::empty()),
        Kind::List => ("GET", &config.paths.list, bridge::empty()),
        Kind::Watch => ("GET", &config.paths.watch, bridge::empty()),
        Kind::Upload => ("POST", &config.paths.upload, bridge::full(upload.clone())),
    };
    let mut request = Request::builder().method(method).uri(format!("{}{path}", config.target));
    if let Some(token) = &config.token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if kind == Kind::Upload {
        request = request.header(http::header::CONTENT_TYPE, "application/octet-stream");
    }
    let request = request.body(body).map_err(|_| ErrorClass::Connect)?;
    let response = client.request(request).await.map_err(|_| ErrorClass::Connect)?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let _ = body.collect().await;
        return Err(ErrorClass::Status(status.as_u16()));
    }
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ErrorClass::Body)?;
        received += frame.data_ref().map_or(0, |d| d.len() as u64);
        // A watch is measured to its first event; then it is dropped (or held to the end).
        if kind == Kind::Watch && received > 0 {
            if config.hold_watches {
                tokio::time::sleep_until(deadline.into()).await;
            }
            return Ok(received);
        }
    }
    if kind == Kind::Watch {
        return Err(ErrorClass::Body);
    }
    Ok(if kind == Kind::Upload { upload.len() as u64 } else { received })
}

/// Live counts for the progress line.
#[derive(Default)]
struct Live {
    ok: AtomicU64,
    failed: AtomicU64,
    issued: AtomicU64,
    stop: AtomicBool,
}

/// Runs the benchmark and returns what it measured. `interrupt` (Ctrl-C) ends it early, with
/// the report of what was done so far.
pub async fn run(
    config: BenchConfig,
    interrupt: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Report> {
    anyhow::ensure!(config.concurrency > 0, "--concurrency must be at least 1");
    let connections = config.connections.max(1);
    let clients: Vec<HttpClient> = (0..connections).map(|_| client(&config)).collect::<anyhow::Result<_>>()?;
    let config = Arc::new(config);
    let live = Arc::new(Live::default());
    let upload = Bytes::from(vec![b'u'; config.upload_size]);
    let started = Instant::now();
    let deadline = started + config.duration;
    {
        let live = live.clone();
        tokio::spawn(async move {
            interrupt.await;
            live.stop.store(true, Ordering::Relaxed);
        });
    }

    let workers: Vec<_> = (0..config.concurrency)
        .map(|w| {
            let (client, config, live, upload) =
                (clients[w % connections].clone(), config.clone(), live.clone(), upload.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
                loop {
                    if live.stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                        break;
                    }
                    if let Some(limit) = config.requests
                        && live.issued.fetch_add(1, Ordering::Relaxed) >= limit
                    {
                        break;
                    }
                    let kind = config.mix.pick(rng.random_range(0..config.mix.total()));
                    let begun = Instant::now();
                    let timeout = if config.hold_watches { config.timeout + config.duration } else { config.timeout };
                    let outcome = tokio::time::timeout(timeout, one(&client, &config, kind, &upload, deadline)).await;
                    match outcome.unwrap_or(Err(ErrorClass::Timeout)) {
                        Ok(bytes) => {
                            tally.ok(kind, begun.elapsed(), bytes);
                            live.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(class) => {
                            tally.error(class);
                            live.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                tally
            })
        })
        .collect();

    let progress = config.progress.then(|| {
        let live = live.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let ok = live.ok.load(Ordering::Relaxed);
                eprintln!(
                    "[{:>5.1}s] {ok} ok ({}/s), {} failed",
                    started.elapsed().as_secs_f64(),
                    ok - last,
                    live.failed.load(Ordering::Relaxed)
                );
                last = ok;
            }
        })
    });

    let mut total = Tally::default();
    for worker in workers {
        total.merge(&worker.await.context("a benchmark worker failed")?);
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    Ok(total.report(started.elapsed(), &config.target))
}
