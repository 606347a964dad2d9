//! The admin listener (`--admin-listen ADDR`) of stub and agent: `/healthz` (the process runs),
//! `/readyz` (ready to serve: for an agent, connected to the stub and welcomed) and `/metrics`
//! (Prometheus text). Plain HTTP on purpose: it is for the kubelet's probes, Prometheus and
//! local tooling, and carries nothing secret (no tokens, no keys; cluster and agent names).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::bridge::{self, Body};

/// Whether the process is ready; shared with whatever decides it.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

fn answer(code: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(bridge::full(text));
    *response.status_mut() = code;
    response
}

/// Renders `/metrics`.
pub type Metrics = Arc<dyn Fn() -> String + Send + Sync>;

/// Binds `addr` and serves the probes and metrics for the life of the process; returns the
/// bound address. `not_ready` is what `/readyz` says while not ready.
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    not_ready: &'static str,
    metrics: Metrics,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let (readiness, metrics) = (readiness.clone(), metrics.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let ready = readiness.get();
                    let metrics = metrics.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(match req.uri().path() {
                            "/healthz" => answer(StatusCode::OK, "ok\n"),
                            "/readyz" if ready => answer(StatusCode::OK, "ready\n"),
                            "/readyz" => answer(StatusCode::SERVICE_UNAVAILABLE, not_ready),
                            "/metrics" => {
                                let mut response = Response::new(bridge::full(metrics()));
                                response.headers_mut().insert(
                                    http::header::CONTENT_TYPE,
                                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                                );
                                response
                            }
                            _ => answer(StatusCode::NOT_FOUND, "try /healthz, /readyz or /metrics\n"),
                        })
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(local)
}
