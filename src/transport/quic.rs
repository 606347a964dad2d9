//! QUIC endpoints for both sides: transport parameters sized on purpose and UDP sockets with
//! large kernel buffers (see `docs/design.md`, "Performance").

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, EndpointConfig, IdleTimeout, TransportConfig, VarInt};

use super::flow::{CONNECTION_WINDOW, STREAM_WINDOW};
use super::udp_batches::BoundedBatches;
use super::udp_buffers;

/// Knobs of a QUIC connection that an operator may need to turn.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// A peer silent for this long is dead; keep-alives go out at a third of it.
    pub idle_timeout: Duration,
    /// Request streams the *listener* may have open on one connection at once (the dialer grants
    /// them). Long watches each hold one, so this is far above the expected number of concurrent
    /// watches. quinn keeps a small record per allowed stream, so it also bounds memory.
    pub max_request_streams: u32,
    /// How the sender paces itself.
    pub congestion: Congestion,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning { idle_timeout: Duration::from_secs(5), max_request_streams: 16_384, congestion: Congestion::Bbr }
    }
}

/// The congestion controller. Loss-based ones (Cubic, NewReno) read every lost packet as
/// congestion and slow down, so on a link that simply loses packets (radio, a bad tunnel) they
/// crawl: at 5% loss and 20 ms RTT Cubic moved about 0.3 MB/s in our test. BBR sizes its window
/// from the measured bandwidth and RTT instead and does not slow down for loss, which is what a
/// lossy link needs. Its cost in quinn 0.11: the bandwidth estimate runs high when
/// acknowledgements arrive in batches (150-380 MB/s on a 50 MB/s link), quinn's pacer follows the
/// window rather than BBR's pacing rate, and so a bulk transfer keeps several times the path's
/// capacity in flight, queued at a bottleneck in front of everything else (`docs/design.md`
/// section 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Congestion {
    Bbr,
    Cubic,
    NewReno,
}

const SEND_WINDOW: u64 = 16 * 1024 * 1024;

/// Bytes of datagrams (liveness probes) buffered each way.
const PROBE_BUFFER: usize = 1024;

/// Connection attempts the endpoint holds before the listener has answered them.
const MAX_INCOMING: usize = 4096;

/// The largest QUIC packet an endpoint accepts, and the largest a real agent sends once MTU
/// discovery has found that the path carries it: the most a UDP datagram can hold. Where the
/// path allows (loopback, jumbo frames), fewer and larger packets cost far less CPU per byte:
/// quinn's work, the packet protection and the system calls are all per packet. On an Ethernet
/// path discovery settles at about 1,450 bytes as before; a probe larger than the path is lost
/// (the kernel refuses to fragment it), which costs a few probes per connection and nothing else.
const MAX_UDP_PAYLOAD: u16 = 65_527;

/// The largest packet the listener (and the bench's simulated agents) send: Ethernet-sized,
/// quinn's default. Each connection keeps a send buffer of ten packets of its path's size and
/// writes whole probes into it while discovering the MTU, so 65 KB packets would cost a stub
/// about 64 KiB more per agent connection; what the listener sends (requests, uploads) is little
/// next to what the agents send back.
const LISTENER_MAX_PACKET: u16 = 1_452;

/// Streams the dialer opens: the control stream only, plus headroom.
const DIALER_OPENED_STREAMS: u32 = 4;

/// The transport configuration: `peer_may_open_bidi` request streams granted to the peer, and
/// MTU discovery up to `largest_packet` bytes of UDP payload.
fn transport(tuning: &Tuning, peer_may_open_bidi: u32, largest_packet: u16) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    let idle = IdleTimeout::try_from(tuning.idle_timeout).unwrap_or(IdleTimeout::from(VarInt::from_u32(5_000)));
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(tuning.idle_timeout / 3));
    t.max_concurrent_bidi_streams(VarInt::from_u32(peer_may_open_bidi));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(VarInt::from_u32(CONNECTION_WINDOW));
    t.send_window(SEND_WINDOW);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(largest_packet);
    t.mtu_discovery_config(Some(mtu));
    // Datagrams carry only liveness probes (see `crate::liveness`), which no application reads:
    // a few are buffered and the oldest dropped, instead of quinn's default of a megabyte.
    t.datagram_receive_buffer_size(Some(PROBE_BUFFER));
    t.datagram_send_buffer_size(PROBE_BUFFER);
    match tuning.congestion {
        Congestion::Bbr => t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default())),
        Congestion::Cubic => t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default())),
        Congestion::NewReno => t.congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default())),
    };
    Arc::new(t)
}

/// An endpoint on `socket`, as both sides have them: it accepts packets as large as a datagram
/// can be, and sends its batches through [`BoundedBatches`].
fn endpoint(socket: std::net::UdpSocket, server: Option<quinn::ServerConfig>) -> std::io::Result<Endpoint> {
    use quinn::Runtime;
    let mut config = EndpointConfig::default();
    config.max_udp_payload_size(MAX_UDP_PAYLOAD).expect("65,527 is within QUIC's limits");
    let socket = Arc::new(BoundedBatches::new(quinn::TokioRuntime.wrap_udp_socket(socket)?));
    Endpoint::new_with_abstract_socket(config, server, socket, Arc::new(quinn::TokioRuntime))
}

/// Binds a UDP socket with large kernel buffers (see [`udp_buffers`]).
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    // Best effort: a smaller buffer still works, just drops more under bursts.
    udp_buffers::size(&socket);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The listener's endpoint on a bound UDP socket: a QUIC server.
pub fn server_endpoint(
    socket: std::net::UdpSocket,
    tls: rustls::ServerConfig,
    tuning: &Tuning,
) -> std::io::Result<Endpoint> {
    let crypto = QuicServerConfig::try_from(tls).map_err(std::io::Error::other)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(tuning, DIALER_OPENED_STREAMS, LISTENER_MAX_PACKET));
    // Connection attempts not yet answered (each is answered at once, with a Retry or a
    // handshake): bounded, and so is what they may buffer.
    config.max_incoming(MAX_INCOMING).incoming_buffer_size(64 * 1024).incoming_buffer_size_total(16 << 20);
    endpoint(socket, Some(config))
}

/// The dialer's endpoint (a QUIC client only).
pub fn client_endpoint(bind: SocketAddr) -> std::io::Result<Endpoint> {
    let socket = bind_udp(bind)?;
    endpoint(socket, None)
}

/// The configuration a dialer connects with: its TLS identity and the transport tuning.
pub fn client_config(tls: rustls::ClientConfig, tuning: &Tuning) -> std::io::Result<quinn::ClientConfig> {
    let crypto = QuicClientConfig::try_from(tls).map_err(std::io::Error::other)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(tuning, tuning.max_request_streams, MAX_UDP_PAYLOAD));
    Ok(config)
}

/// Client configurations that share one transport configuration: for many dialers in one
/// process, each with a certificate of its own (`tether bench --agents`). Their packets stay
/// Ethernet-sized ([`LISTENER_MAX_PACKET`]), so that a simulated agent stays small.
#[derive(Clone)]
pub struct SharedClientTransport(Arc<TransportConfig>);

impl SharedClientTransport {
    pub fn new(tuning: &Tuning) -> SharedClientTransport {
        SharedClientTransport(transport(tuning, tuning.max_request_streams, LISTENER_MAX_PACKET))
    }

    /// What [`client_config`] gives, with the shared transport configuration.
    pub fn client_config(&self, tls: rustls::ClientConfig) -> std::io::Result<quinn::ClientConfig> {
        let crypto = QuicClientConfig::try_from(tls).map_err(std::io::Error::other)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.0.clone());
        Ok(config)
    }
}

/// A QUIC connection on loopback for unit tests: a stub-like listener (no client
/// authentication) and a dialer with the same transport settings as the real ones.
#[cfg(test)]
pub(crate) mod testing {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;

    use super::*;
    use crate::identity::certs::{Signer, Validity, new_ca};

    /// (dialer's side, listener's side) of one connection.
    pub async fn loopback_pair() -> (quinn::Connection, quinn::Connection) {
        let ca = new_ca("test CA", Validity::days(1)).unwrap();
        let signer = Signer::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
        let stub = signer.issue_stub(&["localhost".into()], Validity::days(1)).unwrap();
        let agent = signer.issue_agent("dev", "agent-0", Validity::days(1)).unwrap();
        let key = |pem: &str| PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        let mut server_tls = crate::identity::tls::tls13_server()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![stub.der.clone()], key(&stub.key_pem))
            .unwrap();
        server_tls.alpn_protocols = vec![crate::wire::ALPN.to_vec()];
        let tuning = Tuning::default();
        let server = server_endpoint(bind_udp("127.0.0.1:0".parse().unwrap()).unwrap(), server_tls, &tuning).unwrap();
        let client = client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let client_tls = crate::identity::tls::agent_dialer(
            std::slice::from_ref(&ca.der),
            vec![agent.der.clone()],
            key(&agent.key_pem),
        )
        .unwrap();
        let connecting = client
            .connect_with(client_config(client_tls, &tuning).unwrap(), server.local_addr().unwrap(), "localhost")
            .unwrap();
        let (dialer, listener) = tokio::join!(connecting, async { server.accept().await.unwrap().await });
        (dialer.unwrap(), listener.unwrap())
    }
}
