//! The admin listener (`--admin-listen ADDR`) of stub and agent: `/healthz` (the process runs),
//! `/readyz` (ready to serve: for an agent, connected to the stub and welcomed), `/metrics`
//! (Prometheus text) and, on a stub, `/clusters` (the cluster inventory, JSON), until the
//! process shuts down. Plain HTTP on purpose: it is for the
//! kubelet's probes, Prometheus and local tooling, and carries nothing secret (no tokens, no
//! keys; cluster and agent names).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bridge::{self, Body};

/// Whether the process is ready; shared with whatever decides it.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Ready from the start (the stub: it serves as soon as it listens).
    pub fn ready() -> Readiness {
        let readiness = Readiness::default();
        readiness.set(true);
        readiness
    }

    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

fn answer(code: StatusCode, text: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut response = Response::new(bridge::full(text));
    *response.status_mut() = code;
    response
}

/// Renders `/metrics`.
pub type Metrics = Arc<dyn Fn() -> String + Send + Sync>;

/// What the admin listener answers with.
#[derive(Clone)]
pub struct Site {
    pub readiness: Readiness,
    /// What `/readyz` says while not ready.
    pub not_ready: &'static str,
    /// What `/readyz` says while ready, after "ready" (a stub replica: its view of the hub).
    pub ready_detail: Option<Metrics>,
    pub metrics: Metrics,
    /// `/clusters` (JSON), where there is one (a stub).
    pub clusters: Option<Metrics>,
}

/// Binds `--admin-listen`, if given; the error names the address.
pub async fn bind(addr: Option<std::net::SocketAddr>) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = TcpListener::bind(addr).await;
    Ok(Some(anyhow::Context::with_context(listener, || format!("binding the admin listener on {addr}"))?))
}

/// Serves the probes and metrics on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, site: Site, shutdown: CancellationToken) {
    crate::accept::accept_loop(listener, shutdown, "admin", move |tcp, _| {
        let site = site.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let site = site.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&site, req.uri().path())) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    })
    .await
}

fn route(site: &Site, path: &str) -> Response<Body> {
    match path {
        "/healthz" => answer(StatusCode::OK, "ok\n"),
        "/readyz" if site.readiness.get() => match &site.ready_detail {
            Some(detail) => answer(StatusCode::OK, format!("ready: {}\n", detail())),
            None => answer(StatusCode::OK, "ready\n"),
        },
        "/readyz" => answer(StatusCode::SERVICE_UNAVAILABLE, site.not_ready),
        "/metrics" => {
            let mut response = Response::new(bridge::full((site.metrics)()));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/clusters" if site.clusters.is_some() => {
            let render = site.clusters.as_ref().expect("checked");
            let mut response = Response::new(bridge::full(render()));
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            response
        }
        _ if site.clusters.is_some() => answer(StatusCode::NOT_FOUND, "try /healthz, /readyz, /metrics or /clusters\n"),
        _ => answer(StatusCode::NOT_FOUND, "try /healthz, /readyz or /metrics\n"),
    }
}
