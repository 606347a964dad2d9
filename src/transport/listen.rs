//! The listener's side: one port for both transports, UDP (QUIC) and TCP (the fallback), so
//! that one firewall rule serves dialers whether or not their network lets UDP through. Each
//! dialer's handshakes run on a task of their own (the certificate verifier in the TLS
//! configuration judges the dialer there); a connection that completes them is handed over with
//! the fingerprint of the certificate it presented.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Connection;
use super::quic::{self, Tuning};
use super::tcp::TcpConnection;
use crate::identity::fingerprint::Fingerprint;
use crate::wire::ALPN;

/// How long a TCP dialer may take for its TLS handshake.
const TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// Ports tried when the kernel's pick for UDP is taken over TCP.
const BIND_ATTEMPTS: u32 = 50;

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The UDP socket could not be bound.
    #[error("binding {addr} (UDP, for QUIC)")]
    Udp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The TCP socket on the same port could not be bound.
    #[error("binding {addr} (TCP, the fallback on the QUIC port)")]
    Tcp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// quinn refused the TLS configuration or the socket.
    #[error("starting the QUIC endpoint on {addr}")]
    Quic {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Both sockets of one port, bound but not yet accepting.
pub struct Listener {
    endpoint: quinn::Endpoint,
    tcp: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    idle_timeout: Duration,
}

/// Binds `addr` over UDP and TCP. With port 0 the kernel picks a UDP port, and another is
/// tried if that port is taken over TCP.
async fn bind_both(addr: SocketAddr) -> Result<(std::net::UdpSocket, TcpListener), ListenError> {
    let mut attempts = 0;
    loop {
        let udp = quic::bind_udp(addr).map_err(|source| ListenError::Udp { addr, source })?;
        let bound = udp.local_addr().map_err(|source| ListenError::Udp { addr, source })?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && addr.port() == 0 && attempts < BIND_ATTEMPTS => {
                attempts += 1
            }
            Err(source) => return Err(ListenError::Tcp { addr: bound, source }),
        }
    }
}

impl Listener {
    /// Binds `addr` for both transports, with `tls` (its verifier judges every dialer).
    pub async fn bind(addr: SocketAddr, tls: rustls::ServerConfig, tuning: &Tuning) -> Result<Listener, ListenError> {
        let (udp, tcp) = bind_both(addr).await?;
        let endpoint =
            quic::server_endpoint(udp, tls.clone(), tuning).map_err(|source| ListenError::Quic { addr, source })?;
        Ok(Listener { endpoint, tcp, tls: Arc::new(tls), idle_timeout: tuning.idle_timeout })
    }

    /// The bound address (the same port over UDP and TCP).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The QUIC endpoint, to close every connection at once and wait until it is idle.
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// Accepts dialers on both transports until `shutdown`. Every connection that completes
    /// its handshakes is given to `serve`, with its certificate's fingerprint, on a task of
    /// `tracker`.
    pub async fn run<F, Fut>(self, shutdown: CancellationToken, tracker: TaskTracker, serve: F)
    where
        F: Fn(Connection, Option<Fingerprint>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Listener { endpoint, tcp, tls, idle_timeout } = self;
        let quic = accept_quic(endpoint, shutdown.clone(), tracker.clone(), serve.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let tcp = crate::accept::accept_loop(tcp, shutdown, "agents (TCP)", move |tcp, remote| {
            let (acceptor, serve) = (acceptor.clone(), serve.clone());
            tracker.spawn(async move {
                let tls = match tokio::time::timeout(TLS_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    // The verifier has logged why, with the fingerprint.
                    Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "TCP dialer's TLS handshake failed"),
                    Err(_) => return tracing::debug!(%remote, "TCP dialer's TLS handshake timed out"),
                };
                let (_, session) = tls.get_ref();
                if session.alpn_protocol() != Some(ALPN) {
                    return tracing::debug!(%remote, "TCP dialer does not speak tether/1");
                }
                let fingerprint = session.peer_certificates().and_then(|c| c.first()).map(|c| Fingerprint::of_der(c));
                match TcpConnection::listener(tls, remote, idle_timeout).await {
                    Ok(conn) => serve(Connection::Tcp(conn), fingerprint).await,
                    Err(e) => tracing::debug!(%remote, error = %e, "TCP dialer's HTTP/2 handshake failed"),
                }
            });
        });
        tokio::join!(quic, tcp);
    }
}

async fn accept_quic<F, Fut>(endpoint: quinn::Endpoint, shutdown: CancellationToken, tracker: TaskTracker, serve: F)
where
    F: Fn(Connection, Option<Fingerprint>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = shutdown.cancelled() => return,
        };
        // None: the endpoint was closed.
        let Some(incoming) = incoming else { return };
        let remote = incoming.remote_address();
        let serve = serve.clone();
        tracker.spawn(async move {
            match incoming.await {
                Ok(conn) => {
                    let fingerprint = peer_fingerprint(&conn);
                    serve(Connection::Quic(conn), fingerprint).await;
                }
                // The verifier has logged why, with the fingerprint.
                Err(e) => tracing::debug!(%remote, error = %e, "QUIC dialer's handshake failed"),
            }
        });
    }
}

/// The certificate fingerprint of a connected QUIC peer.
fn peer_fingerprint(conn: &quinn::Connection) -> Option<Fingerprint> {
    let certs = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    certs.first().map(|leaf| Fingerprint::of_der(leaf))
}
