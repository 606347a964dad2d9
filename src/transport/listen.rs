//! The listener's side: one port for both transports, UDP (QUIC) and TCP (the fallback), so
//! that one firewall rule serves dialers whether or not their network lets UDP through. Each
//! dialer's handshakes run on a task of their own (the certificate verifier in the TLS
//! configuration judges the dialer there); a connection that completes them is handed over with
//! the fingerprint of the certificate it presented. Handshakes that fail for a reason the
//! verifier did not see (no certificate at all, a TLS failure, a timeout, another protocol) are
//! reported to [`ListenerEvents`], like the verifier's own refusals.
//!
//! A flood of QUIC Initials from addresses that never answer costs nothing: every dialer first
//! gets a Retry (QUIC address validation: a small stateless packet with a token, which a real
//! dialer echoes one round trip later), so no state is kept and nothing larger than what was
//! received is sent to an address not proven to be the sender's. Validated handshakes in
//! progress are capped at [`MAX_PENDING_HANDSHAKES`] and given [`HANDSHAKE_TIMEOUT`] each; at
//! the cap a new dialer is refused with one small packet before any Retry, so that the dialers
//! of a storm back off instead of queueing handshakes that would time out.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Connection;
use super::quic::{self, Tuning};
use super::tcp::TcpConnection;
use crate::identity::fingerprint::Fingerprint;

/// How long a dialer may take for its handshake, over either transport.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress (after address validation) beyond which new ones are refused: a
/// QUIC handshake holds about 40 KiB, so this bounds them to about 40 MiB.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;
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
    events: Arc<dyn ListenerEvents>,
}

/// What the listener tells whoever counts (the stub's metrics).
pub trait ListenerEvents: Send + Sync + 'static {
    /// A dialer's handshake failed for `reason`, outside the certificate verifier:
    /// `no_certificate`, `tls`, `handshake`, `timeout`, `alpn`, `handshake_limit`.
    fn refused(&self, reason: &'static str);
    /// A QUIC dialer was sent a Retry to prove its address.
    fn retried(&self);
}

/// TLS alert `certificate_required`: the dialer presented no certificate.
const ALERT_CERTIFICATE_REQUIRED: u8 = 0x74;

/// The refusal reason of a failed TLS handshake, or `None` when the certificate verifier
/// refused it (and counted it already).
fn tls_refusal(e: &rustls::Error) -> Option<&'static str> {
    match e {
        rustls::Error::NoCertificatesPresented => Some("no_certificate"),
        rustls::Error::InvalidCertificate(_) => None,
        _ => Some("tls"),
    }
}

/// The same for a failed QUIC handshake, which carries the TLS alert as its error code.
fn quic_refusal(e: &quinn::ConnectionError) -> Option<&'static str> {
    let quinn::ConnectionError::TransportError(t) = e else { return Some("handshake") };
    let code = u64::from(t.code);
    match code.checked_sub(0x100).filter(|alert| *alert < 0x100).map(|alert| alert as u8) {
        Some(ALERT_CERTIFICATE_REQUIRED) => Some("no_certificate"),
        // The alerts rustls sends for a certificate the verifier refused: bad, unsupported,
        // revoked, expired, unknown, unknown CA, access denied (the whitelist), bad signature.
        Some(0x2a..=0x2e | 0x30 | 0x31 | 0x33) => None,
        Some(_) => Some("tls"),
        None => Some("handshake"),
    }
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
    /// `events` is told of every handshake that fails outside the verifier, and of Retries.
    pub async fn bind(
        addr: SocketAddr,
        tls: rustls::ServerConfig,
        tuning: &Tuning,
        events: Arc<dyn ListenerEvents>,
    ) -> Result<Listener, ListenError> {
        let (udp, tcp) = bind_both(addr).await?;
        let endpoint =
            quic::server_endpoint(udp, tls.clone(), tuning).map_err(|source| ListenError::Quic { addr, source })?;
        Ok(Listener { endpoint, tcp, tls: Arc::new(tls), idle_timeout: tuning.idle_timeout, events })
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
        let Listener { endpoint, tcp, tls, idle_timeout, events } = self;
        let pending = Arc::new(AtomicUsize::new(0));
        let quic =
            accept_quic(endpoint, shutdown.clone(), tracker.clone(), serve.clone(), events.clone(), pending.clone());
        // The one protocol this listener speaks (agents', or peer replicas').
        let alpn: Arc<[u8]> = tls.alpn_protocols.first().cloned().unwrap_or_default().into();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let tcp = crate::accept::accept_loop(tcp, shutdown, "agents (TCP)", move |tcp, remote| {
            let Some(handshaking) = Pending::start(&pending) else {
                events.refused("handshake_limit");
                return tracing::debug!(%remote, "too many handshakes in progress: refused a TCP dialer");
            };
            let (acceptor, serve, events, alpn) = (acceptor.clone(), serve.clone(), events.clone(), alpn.clone());
            tracker.spawn(async move {
                let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(handshaking);
                let tls = match accepted {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        let rustls_error = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
                        if let Some(reason) = rustls_error.map_or(Some("tls"), tls_refusal) {
                            events.refused(reason);
                        }
                        // The verifier has logged its refusals, with the fingerprint.
                        return tracing::debug!(%remote, error = %e, "TCP dialer's TLS handshake failed");
                    }
                    Err(_) => {
                        events.refused("timeout");
                        return tracing::debug!(%remote, "TCP dialer's TLS handshake timed out");
                    }
                };
                let (_, session) = tls.get_ref();
                if session.alpn_protocol() != Some(&alpn[..]) {
                    events.refused("alpn");
                    return tracing::debug!(%remote, "TCP dialer does not speak {}", String::from_utf8_lossy(&alpn));
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

/// A handshake in progress, counted against [`MAX_PENDING_HANDSHAKES`] while alive.
struct Pending(Arc<AtomicUsize>);

impl Pending {
    fn start(count: &Arc<AtomicUsize>) -> Option<Pending> {
        let started = count.fetch_add(1, Ordering::Relaxed);
        let pending = Pending(count.clone());
        (started < MAX_PENDING_HANDSHAKES).then_some(pending)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_quic<F, Fut>(
    endpoint: quinn::Endpoint,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    serve: F,
    events: Arc<dyn ListenerEvents>,
    pending: Arc<AtomicUsize>,
) where
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
        // Full: refuse at once, before the Retry. In a storm (a restart under thousands of
        // agents) a dialer that would be refused anyway then costs one small packet, not a Retry
        // and a second Initial; the refusal is smaller than the padded Initial it answers.
        if pending.load(Ordering::Relaxed) >= MAX_PENDING_HANDSHAKES {
            incoming.refuse();
            events.refused("handshake_limit");
            tracing::debug!(%remote, "too many handshakes in progress: refused a QUIC dialer");
            continue;
        }
        // Prove the address first: a Retry is stateless, and no bigger than what came in.
        if !incoming.remote_address_validated() {
            if incoming.retry().is_ok() {
                events.retried();
            }
            continue;
        }
        let Some(handshaking) = Pending::start(&pending) else {
            incoming.refuse();
            events.refused("handshake_limit");
            tracing::debug!(%remote, "too many handshakes in progress: refused a QUIC dialer");
            continue;
        };
        let (serve, events) = (serve.clone(), events.clone());
        tracker.spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await;
            drop(handshaking);
            match handshake {
                Ok(Ok(conn)) => {
                    let fingerprint = peer_fingerprint(&conn);
                    serve(Connection::Quic(conn), fingerprint).await;
                }
                Ok(Err(e)) => {
                    if let Some(reason) = quic_refusal(&e) {
                        events.refused(reason);
                    }
                    // The verifier has logged its refusals, with the fingerprint.
                    tracing::debug!(%remote, error = %e, "QUIC dialer's handshake failed");
                }
                // Dropping the handshake closes the connection.
                Err(_) => {
                    events.refused("timeout");
                    tracing::debug!(%remote, "QUIC dialer's handshake timed out");
                }
            }
        });
    }
}

/// The certificate fingerprint of a connected QUIC peer.
fn peer_fingerprint(conn: &quinn::Connection) -> Option<Fingerprint> {
    let certs = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    certs.first().map(|leaf| Fingerprint::of_der(leaf))
}
