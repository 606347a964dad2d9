//! `tether bench --serve ADDR`: a plain HTTP server to put behind an agent (or to hit directly),
//! so that a benchmark measures the tunnel rather than an API server. It is not a Kubernetes
//! API server and does not pretend to be one; its routes fit the default request paths of
//! `tether bench`:
//!
//! - `GET /small`: a short JSON body;
//! - `GET /list?bytes=N`: N bytes (default 1 MiB), streamed in 64 KiB chunks;
//! - `GET /watch`: one event line at once, then nothing until the client goes away;
//! - `POST /upload`: reads the body, answers with its length.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::CancellationToken;

use crate::bridge::{self, Body};

const CHUNK: usize = 64 * 1024;
const DEFAULT_LIST_BYTES: u64 = 1 << 20;
const MAX_LIST_BYTES: u64 = 1 << 34;

fn list_bytes(query: Option<&str>) -> u64 {
    query
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("bytes=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_LIST_BYTES)
        .min(MAX_LIST_BYTES)
}

async fn route(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let mut response = Response::builder();
    let body = match req.uri().path() {
        "/small" => {
            bridge::full(r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"bench"},"data":{"k":"v"}}"#)
        }
        "/list" => {
            let total = list_bytes(req.uri().query());
            let chunk = Bytes::from(vec![b'x'; CHUNK]);
            let chunks = futures_util::stream::iter((0..total.div_ceil(CHUNK as u64)).map(move |i| {
                let len = (total - i * CHUNK as u64).min(CHUNK as u64) as usize;
                Ok::<_, bridge::BoxError>(Frame::data(chunk.slice(..len)))
            }));
            response = response.header("content-length", total);
            StreamBody::new(chunks).boxed_unsync()
        }
        "/watch" => {
            let first = futures_util::stream::once(async {
                Ok::<_, bridge::BoxError>(Frame::data(Bytes::from_static(b"{\"type\":\"ADDED\"}\n")))
            });
            StreamBody::new(first.chain(futures_util::stream::pending())).boxed_unsync()
        }
        "/upload" => {
            let mut total = 0u64;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => total += frame.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            bridge::full(total.to_string())
        }
        _ => {
            response = response.status(StatusCode::NOT_FOUND);
            bridge::full("routes: /small, /list?bytes=N, /watch, /upload\n")
        }
    };
    Ok(response.body(body).expect("valid response"))
}

/// Serves until `shutdown`.
pub async fn serve(addr: SocketAddr, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "bench target listening (/small, /list, /watch, /upload)");
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let stop = CancellationToken::new();
    let serving = crate::accept::accept_loop(listener, stop.clone(), "bench target", |tcp, _| {
        let builder = builder.clone();
        tokio::spawn(async move {
            let _ = builder.serve_connection(TokioIo::new(tcp), service_fn(route)).await;
        });
    });
    tokio::join!(serving, async {
        shutdown.await;
        stop.cancel();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn list_size_comes_from_the_query() {
        assert_eq!(super::list_bytes(None), 1 << 20);
        assert_eq!(super::list_bytes(Some("a=1&bytes=5")), 5);
        assert_eq!(super::list_bytes(Some("bytes=huge")), 1 << 20);
        assert_eq!(super::list_bytes(Some("bytes=99999999999999")), 1 << 34);
    }
}
