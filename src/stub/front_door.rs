//! The stub's HTTPS front door for users and services: TLS (HTTP/2 or HTTP/1.1 by ALPN), one task
//! per connection, every request handed to [`super::forward::handle`]. On shutdown it stops
//! accepting and lets open connections finish within the grace period.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::admission::Caller;
use super::forward;
use super::state::StubState;
use crate::errors;
use crate::identity::fingerprint::Fingerprint;

/// A client has this long to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 streams per client connection; kubectl and informers multiplex watches on one.
const MAX_H2_STREAMS: u32 = 1000;
const H2_STREAM_WINDOW: u32 = 1024 * 1024;
const H2_CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// `header_timeout`: an HTTP/1.1 client has this long to send a request's headers (slow-loris).
fn http_builder(header_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    // Windows sized on purpose rather than h2's 64 KiB start: with many concurrent uploads a
    // small connection window makes clients trickle tiny DATA frames, which h2's flood guard
    // answers with GOAWAY (ENHANCE_YOUR_CALM). They also bound what one client connection can
    // have buffered in the stub while its agent is slow.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW);
    builder
}

/// Serves the front door until `cancel`, then drains open connections for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<StubState>,
    cancel: CancellationToken,
    grace: Duration,
    header_timeout: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let builder = http_builder(header_timeout);
    let graceful = GracefulShutdown::new();
    crate::accept::accept_loop(listener, cancel, "front door", |tcp, remote| {
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let state = state.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "front door TLS handshake failed"),
                Err(_) => return tracing::debug!(%remote, "front door TLS handshake timed out"),
            };
            let certificate =
                tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Fingerprint::of_der(c));
            let caller = Arc::new(Caller { remote, certificate });
            let service = service_fn(move |req| forward::handle(state.clone(), caller.clone(), req));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%remote, error = errors::chain(&*e), "front door connection ended with an error");
            }
        });
    })
    .await;
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::info!("front door: grace period over, closing remaining connections");
    }
}
