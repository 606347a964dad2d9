//! The dialer's side: one connection to a listener, over QUIC or over the TCP fallback (TCP,
//! TLS 1.3 with the dialer's certificate, then HTTP/2 with the dialer as its server). The
//! listener's address is resolved again on every dial, so a name that moves is followed.
//! Failures come back in plain words ([`super::explain`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::proxy::Proxy;
use super::quic::{self, Tuning};
use super::tcp::TcpConnection;
use super::{Connection, Transport, explain};

/// A TCP dial (connect and both handshakes) that takes longer has failed.
const TCP_DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A dial that failed: the reason in plain words, and whether the listener refused it for
/// being busy (too many handshakes in progress), which calls for a longer wait before the next
/// ([`crate::backoff::Backoff::next_busy_delay`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialFailure {
    pub words: String,
    pub busy: bool,
}

impl DialFailure {
    /// The failure a QUIC dial ended with.
    pub fn of_quic(e: &quinn::ConnectionError) -> DialFailure {
        DialFailure { words: explain::closed(e), busy: explain::refused_as_busy(e) }
    }
}

impl From<String> for DialFailure {
    fn from(words: String) -> DialFailure {
        DialFailure { words, busy: false }
    }
}

impl From<DialFailure> for String {
    fn from(failure: DialFailure) -> String {
        failure.words
    }
}

impl std::fmt::Display for DialFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.words)
    }
}

/// What a dialer presents: one certificate, configured for each transport.
#[derive(Clone)]
pub struct ClientTls {
    pub quic: quinn::ClientConfig,
    pub tcp: Arc<rustls::ClientConfig>,
}

impl ClientTls {
    /// Both configurations from one rustls client configuration (ALPN and certificate set).
    pub fn new(tls: rustls::ClientConfig, tuning: &Tuning) -> std::io::Result<ClientTls> {
        Ok(ClientTls { quic: quic::client_config(tls.clone(), tuning)?, tcp: Arc::new(tls) })
    }
}

/// Dials one listener address (a name may resolve to several: each dial may pick one).
#[derive(Debug)]
pub struct Dialer {
    /// The endpoint new QUIC dials go out of; replaced by [`Dialer::fresh_socket`] (connections
    /// on an older one keep it alive while they last).
    endpoint: std::sync::Mutex<quinn::Endpoint>,
    /// `HOST:PORT` of the listener.
    target: String,
    /// The name the listener's certificate must carry.
    server_name: String,
    tuning: Tuning,
    /// The HTTP proxy TCP dials go through (none where `NO_PROXY` bypasses the listener).
    proxy: Option<Proxy>,
}

impl Dialer {
    /// A dialer with a UDP socket of its own (IPv6 and IPv4, or IPv4 only on a host without
    /// IPv6).
    pub fn new(target: &str, server_name: &str, tuning: &Tuning) -> std::io::Result<Dialer> {
        Ok(Dialer {
            endpoint: std::sync::Mutex::new(any_endpoint()?),
            target: target.to_owned(),
            server_name: server_name.to_owned(),
            tuning: tuning.clone(),
            proxy: None,
        })
    }

    /// TCP dials go through `proxy` (QUIC ones cannot).
    pub fn with_proxy(mut self, proxy: Option<Proxy>) -> Dialer {
        self.proxy = proxy;
        self
    }

    /// The proxy TCP dials go through, if any.
    pub fn proxy(&self) -> Option<&Proxy> {
        self.proxy.as_ref()
    }

    /// Moves new dials to a new UDP socket (a new local port), so that a load balancer that
    /// hashes on addresses and ports may send the next connection to another backend.
    /// Connections already made stay where they are.
    pub fn fresh_socket(&self) -> std::io::Result<()> {
        let fresh = any_endpoint()?;
        *self.endpoint.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// The listener's `HOST:PORT`, as given.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The QUIC endpoint new dials go out of (to move it to a new socket, or close it).
    pub fn endpoint(&self) -> quinn::Endpoint {
        self.endpoint.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every address the listener's name resolves to now.
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>, String> {
        let target = &self.target;
        let addresses: Vec<SocketAddr> =
            tokio::net::lookup_host(target).await.map_err(|e| format!("cannot resolve {target}: {e}"))?.collect();
        if addresses.is_empty() {
            return Err(format!("{target} resolves to no address"));
        }
        Ok(addresses)
    }

    /// One connection over `transport` to the first address the name resolves to, its
    /// handshakes done. In TLS 1.3 that does not yet mean the listener accepted the
    /// certificate: the first frame on the control stream tells.
    pub async fn dial(&self, tls: &ClientTls, transport: Transport) -> Result<Connection, DialFailure> {
        let addr = self.resolve().await?[0];
        self.dial_to(addr, tls, transport).await
    }

    /// One connection over `transport` to `addr` (one of [`Dialer::resolve`]'s).
    pub async fn dial_to(
        &self,
        addr: SocketAddr,
        tls: &ClientTls,
        transport: Transport,
    ) -> Result<Connection, DialFailure> {
        match transport {
            Transport::Quic => {
                let connecting = self
                    .endpoint()
                    .connect_with(tls.quic.clone(), addr, &self.server_name)
                    .map_err(|e| format!("cannot dial {addr}: {e}"))?;
                Ok(Connection::Quic(connecting.await.map_err(|e| DialFailure::of_quic(&e))?))
            }
            Transport::Tcp => Ok(tokio::time::timeout(TCP_DIAL_TIMEOUT, self.dial_tcp(tls, addr))
                .await
                .map_err(|_| format!("no answer over TCP from {addr} within {TCP_DIAL_TIMEOUT:?}"))??),
        }
    }

    /// TLS and HTTP/2 over TCP to `addr`, or, through a proxy, to the listener's name as given
    /// (the proxy resolves it, and its rules are written for names).
    async fn dial_tcp(&self, tls: &ClientTls, addr: SocketAddr) -> Result<Connection, String> {
        let (tcp, addr) = match &self.proxy {
            None => {
                let tcp = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("cannot dial {addr} over TCP: {e}"))?;
                (tcp, addr)
            }
            Some(proxy) => {
                let tcp = proxy.connect(&self.target, TCP_DIAL_TIMEOUT).await?;
                // The connection's far end is the proxy; logs and metrics say so.
                let via = tcp.peer_addr().unwrap_or(addr);
                (tcp, via)
            }
        };
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(self.server_name.clone())
            .map_err(|e| format!("--server-name {:?}: {e}", self.server_name))?;
        let offered = tls.tcp.alpn_protocols.first().cloned().unwrap_or_default();
        let tls = tokio_rustls::TlsConnector::from(tls.tcp.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| explain::tcp_failure(&e))?;
        if tls.get_ref().1.alpn_protocol() != Some(&offered[..]) {
            return Err(format!("{addr} does not speak {} over TCP", String::from_utf8_lossy(&offered)));
        }
        let conn = TcpConnection::dialer(tls, addr, self.tuning.idle_timeout, self.tuning.max_request_streams)
            .await
            .map_err(|e| explain::tcp_failure(&e))?;
        Ok(Connection::Tcp(conn))
    }
}

/// A client endpoint on a new UDP socket: IPv6 and IPv4, or IPv4 only on a host without IPv6.
fn any_endpoint() -> std::io::Result<quinn::Endpoint> {
    match quic::client_endpoint("[::]:0".parse().expect("valid address")) {
        Ok(endpoint) => Ok(endpoint),
        Err(_) => quic::client_endpoint("0.0.0.0:0".parse().expect("valid address")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::{ConnectionClose, ConnectionError, TransportErrorCode};

    fn closed(code: TransportErrorCode) -> ConnectionError {
        ConnectionError::ConnectionClosed(ConnectionClose {
            error_code: code,
            frame_type: None,
            reason: Default::default(),
        })
    }

    #[test]
    fn only_a_refusal_says_the_listener_is_busy() {
        let refused = DialFailure::of_quic(&closed(TransportErrorCode::CONNECTION_REFUSED));
        assert!(refused.busy, "{refused:?}");
        assert!(!refused.words.is_empty());
        for other in [
            ConnectionError::TimedOut,
            ConnectionError::Reset,
            closed(TransportErrorCode::PROTOCOL_VIOLATION),
            closed(TransportErrorCode::crypto(42)),
        ] {
            assert!(!DialFailure::of_quic(&other).busy, "{other:?}");
        }
        assert!(!DialFailure::from("no address".to_owned()).busy);
    }
}
