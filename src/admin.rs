//! The admin listener (`--admin-listen ADDR`): `/healthz` (the process runs) and `/readyz`
//! (ready to serve: for an agent, connected to the stub and welcomed). Plain HTTP on purpose: it
//! is for the kubelet's probes and local tooling, and carries nothing secret.

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

/// Binds `addr` and serves the probes for the life of the process; returns the bound address.
pub async fn serve(addr: SocketAddr, readiness: Readiness) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let readiness = readiness.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let ready = readiness.get();
                    async move {
                        Ok::<_, std::convert::Infallible>(match req.uri().path() {
                            "/healthz" => answer(StatusCode::OK, "ok\n"),
                            "/readyz" if ready => answer(StatusCode::OK, "ready\n"),
                            "/readyz" => answer(StatusCode::SERVICE_UNAVAILABLE, "not connected to the stub\n"),
                            _ => answer(StatusCode::NOT_FOUND, "try /healthz or /readyz\n"),
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
