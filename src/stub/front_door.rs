//! The stub's HTTPS front door for users and services: TLS (HTTP/2 or HTTP/1.1 by ALPN), one task
//! per connection, every request handed to [`super::forward::handle`]. Connections are limited
//! and closed when silent or idle ([`super::connections`]). On shutdown it stops accepting and
//! lets open connections finish within the grace period.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::Caller;
use super::connections::{Closed, Connections};
use super::forward;
use super::state::StubState;
use crate::errors;
use crate::identity::fingerprint::Fingerprint;

/// A client has this long to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection told to close (idle or silent) has this long to do so before it is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
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
    connections: Arc<Connections>,
    cancel: CancellationToken,
    grace: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let builder = http_builder(connections.limits().first_request);
    let open = TaskTracker::new();
    crate::accept::accept_loop(listener, cancel.clone(), "front door", |tcp, remote| {
        let slot = match connections.admit(remote.ip()) {
            Ok(slot) => slot,
            Err(why) => return tracing::debug!(%remote, reason = why.label(), "front door connection refused"),
        };
        let (acceptor, builder, state, cancel) = (acceptor.clone(), builder.clone(), state.clone(), cancel.clone());
        open.spawn(async move {
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "front door TLS handshake failed"),
                Err(_) => return tracing::debug!(%remote, "front door TLS handshake timed out"),
            };
            let certificate =
                tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Fingerprint::of_der(c));
            let caller = Arc::new(Caller { remote, certificate });
            let activity = slot.activity.clone();
            let service = service_fn(move |req| {
                // In flight until its response body is done (or dropped).
                let in_flight = activity.request();
                let response = forward::handle(state.clone(), caller.clone(), req);
                async move {
                    let response = response.await?;
                    Ok::<_, std::convert::Infallible>(response.map(|body| {
                        body.map_frame(move |frame| {
                            let _ = &in_flight;
                            frame
                        })
                        .boxed_unsync()
                    }))
                }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                why = slot.expired() => {
                    tracing::debug!(%remote, reason = why.label(), "closing a front door connection that had its time");
                    if why == Closed::Silent {
                        // Nothing to finish: dropped at once (HTTP/2's graceful close would wait
                        // for a PING answer that a silent client never sends).
                        return;
                    }
                    // Idle: HTTP/2 says GOAWAY, so the client reconnects without a failure.
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(CLOSE_TIMEOUT, conn.as_mut()).await.unwrap_or(Ok(()))
                }
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%remote, error = errors::chain(&*e), "front door connection ended with an error");
            }
        });
    })
    .await;
    open.close();
    if tokio::time::timeout(grace, open.wait()).await.is_err() {
        tracing::info!("front door: grace period over, closing remaining connections");
    }
}
