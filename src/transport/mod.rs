//! The connection between a **dialer** (an agent) and a **listener** (the hub's stub), over
//! either transport, and its streams: QUIC ([`quic`], the normal case) or TLS on TCP carrying
//! HTTP/2 streams ([`tcp`], the fallback where UDP is blocked). Both give the same model: mutual
//! TLS with the listener's certificate verifier in the handshake, one control stream, and one
//! stream per request that the listener opens. Everything above this module (stub, agent,
//! bridge) is written once, against [`Connection`], [`SendHalf`] and [`RecvHalf`].
//!
//! This module knows transports, not roles: it says "dialer" and "listener", never which
//! program is which, and it imports nothing from the stub or the agent.
//!
//! - [`quic`]: QUIC endpoints and transport tuning (windows, congestion controller, buffers).
//! - [`tcp`]: the TCP fallback (TLS + HTTP/2) as a [`Connection`].
//! - [`dial`]: the dialer's side: one connection over the transport asked for.
//! - [`proxy`]: the TCP fallback's way out through an HTTP proxy (`CONNECT`).
//! - [`listen`]: the listener's side: QUIC and TCP on one port, handshakes, peer fingerprints.
//! - [`echo`]: whether what the dialer sends still reaches the listener (both ways, asked of
//!   the listener's application).
//! - [`explain`]: plain words for a connection that was refused or lost.
//! - [`flow`]: the flow-control windows both transports use.
//! - [`gather`]: a QUIC receive stream that hands on chunks of a useful size.
//! - [`udp_batches`]: the UDP socket under quinn, its offload batches cut to what the kernel
//!   takes.
//! - [`udp_buffers`]: that UDP socket's kernel buffers, and a warning when the kernel grants less.

pub mod dial;
pub mod echo;
pub mod explain;
pub mod flow;
pub mod gather;
pub mod listen;
pub mod proxy;
pub mod quic;
pub mod tcp;
pub mod udp_batches;
pub mod udp_buffers;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::wire::codes::AppCode;
use crate::wire::io::WireError;
pub use flow::{CONNECTION_WINDOW, STREAM_WINDOW};
use gather::QuicRecv;
use tcp::{TcpConnection, TcpRecv, TcpSend};

/// Which transport a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Quic,
    Tcp,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        })
    }
}

/// The host part of `HOST:PORT` (`[::1]:443` -> `::1`): the name the listener's certificate
/// must carry unless another is given.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// One connection between a dialer and a listener.
#[derive(Debug, Clone)]
pub enum Connection {
    Quic(quinn::Connection),
    Tcp(TcpConnection),
}

fn quic_io(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The path of a QUIC connection as quinn measures it (TCP connections have none here).
#[derive(Debug, Clone, Copy)]
pub struct PathStats {
    pub rtt: std::time::Duration,
    pub cwnd: u64,
    pub sent_packets: u64,
    pub lost_packets: u64,
    /// The largest packet the path carries, as MTU discovery has found it so far (bytes of UDP
    /// payload).
    pub mtu: u16,
}

impl Connection {
    pub fn transport(&self) -> Transport {
        match self {
            Connection::Quic(_) => Transport::Quic,
            Connection::Tcp(_) => Transport::Tcp,
        }
    }

    pub fn remote_address(&self) -> SocketAddr {
        match self {
            Connection::Quic(c) => c.remote_address(),
            Connection::Tcp(c) => c.remote_address(),
        }
    }

    /// RTT, congestion window and packet counts of a QUIC connection; `None` over TCP.
    pub fn path_stats(&self) -> Option<PathStats> {
        match self {
            Connection::Quic(c) => {
                let path = c.stats().path;
                Some(PathStats {
                    rtt: path.rtt,
                    cwnd: path.cwnd,
                    sent_packets: path.sent_packets,
                    lost_packets: path.lost_packets,
                    mtu: path.current_mtu,
                })
            }
            Connection::Tcp(_) => None,
        }
    }

    /// A counter of what has arrived from the peer (QUIC: datagrams; TCP: answered keep-alive
    /// pings): when it stops moving, the peer is silent (see [`crate::liveness`]).
    pub fn heard(&self) -> u64 {
        match self {
            Connection::Quic(c) => c.stats().udp_rx.datagrams,
            Connection::Tcp(c) => c.pongs(),
        }
    }

    /// Asks the peer's transport for an answer now, without its application: a QUIC datagram
    /// (acknowledged like any packet) or an HTTP/2 PING.
    pub fn probe(&self) {
        match self {
            Connection::Quic(c) => {
                // A peer that takes no datagrams still acknowledges the packet it came in.
                let _ = c.send_datagram(Bytes::from_static(b"?"));
            }
            Connection::Tcp(c) => c.probe(),
        }
    }

    /// The smoothed round-trip time (QUIC); zero over TCP, where probes are answered by the
    /// peer's HTTP/2 stack as soon as they arrive and the floor of [`crate::liveness`] applies.
    pub fn rtt(&self) -> std::time::Duration {
        match self {
            Connection::Quic(c) => c.rtt(),
            Connection::Tcp(_) => std::time::Duration::ZERO,
        }
    }

    /// A new request stream (the listener's side: the listener opens request streams).
    pub async fn open_stream(&self) -> io::Result<(SendHalf, RecvHalf)> {
        match self {
            Connection::Quic(c) => {
                let (send, recv) = c.open_bi().await.map_err(quic_io)?;
                Ok((SendHalf::Quic(send), RecvHalf::Quic(QuicRecv::new(recv))))
            }
            Connection::Tcp(c) => {
                let (send, recv) = c.open_stream().await?;
                Ok((SendHalf::Tcp(send), RecvHalf::Tcp(recv)))
            }
        }
    }

    /// The next stream the listener opened (the dialer's side); `Err` with the reason in plain
    /// words once the connection has ended.
    pub async fn accept_stream(&self) -> Result<(SendHalf, RecvHalf), String> {
        match self {
            Connection::Quic(c) => {
                let (send, recv) = c.accept_bi().await.map_err(|e| explain::closed(&e))?;
                Ok((SendHalf::Quic(send), RecvHalf::Quic(QuicRecv::new(recv))))
            }
            Connection::Tcp(c) => {
                let (send, recv) = c.accept_stream().await?;
                Ok((SendHalf::Tcp(send), RecvHalf::Tcp(recv)))
            }
        }
    }

    /// The control stream, from the dialer's side: on QUIC the dialer opens it, on TCP the
    /// listener does (only an HTTP/2 client opens streams, and there the listener is the client).
    pub async fn dialer_control(&self) -> Result<(SendHalf, RecvHalf), String> {
        match self {
            Connection::Quic(c) => {
                let (send, recv) = c.open_bi().await.map_err(|e| explain::closed(&e))?;
                Ok((SendHalf::Quic(send), RecvHalf::Quic(QuicRecv::new(recv))))
            }
            Connection::Tcp(_) => self.accept_stream().await,
        }
    }

    /// The control stream, from the listener's side (see [`Connection::dialer_control`]).
    pub async fn listener_control(&self) -> io::Result<(SendHalf, RecvHalf)> {
        match self {
            Connection::Quic(c) => {
                let (send, recv) = c.accept_bi().await.map_err(quic_io)?;
                Ok((SendHalf::Quic(send), RecvHalf::Quic(QuicRecv::new(recv))))
            }
            Connection::Tcp(_) => self.open_stream().await,
        }
    }

    pub fn close(&self, code: AppCode, reason: &str) {
        match self {
            Connection::Quic(c) => c.close(code.varint(), reason.as_bytes()),
            Connection::Tcp(c) => c.close(code, reason),
        }
    }

    /// Why the connection ended, once it has (as the transport says it; [`explain`] puts a
    /// dialer's refusal into plain words).
    pub fn close_reason(&self) -> Option<String> {
        match self {
            Connection::Quic(c) => c.close_reason().map(|e| e.to_string()),
            Connection::Tcp(c) => c.close_reason(),
        }
    }

    /// Whether the connection has ended (cheap: asked for every request routed).
    pub fn is_closed(&self) -> bool {
        match self {
            Connection::Quic(c) => c.close_reason().is_some(),
            Connection::Tcp(c) => c.is_closed(),
        }
    }

    /// Sets how many bytes the peer may send on this connection beyond what has been read
    /// (flow control of the whole connection; each stream also has its [`STREAM_WINDOW`]).
    /// Growing takes effect at once; shrinking as the excess is read.
    pub fn set_receive_window(&self, bytes: u64) {
        match self {
            Connection::Quic(c) => c.set_receive_window(quinn::VarInt::from_u64(bytes).unwrap_or(quinn::VarInt::MAX)),
            Connection::Tcp(c) => c.set_receive_window(bytes),
        }
    }

    /// Plain words for a control stream that failed on this connection: the connection's own
    /// end is the better reason when there is one (a refusal arrives as the connection closing
    /// under the stream).
    pub fn explain_failure(&self, e: &WireError) -> String {
        match self {
            Connection::Quic(c) => match c.close_reason() {
                Some(reason) => explain::closed(&reason),
                None => format!("control stream failed: {e}"),
            },
            Connection::Tcp(c) => match (c.close_reason(), e) {
                (Some(reason), _) => reason,
                (None, WireError::Io(io)) => explain::tcp_failure(io),
                (None, other) => format!("control stream failed: {other}"),
            },
        }
    }

    /// Completes when the connection has ended.
    pub async fn closed(&self) {
        match self {
            Connection::Quic(c) => {
                c.closed().await;
            }
            Connection::Tcp(c) => c.closed().await,
        }
    }
}

/// The priority of a stream that lets the others go first (quinn's default is 0; higher first).
const YIELDING: i32 = -1;

/// The sending half of a stream.
pub enum SendHalf {
    Quic(quinn::SendStream),
    Tcp(TcpSend),
}

impl SendHalf {
    /// Sends all of `data`, waiting while the peer's window is full.
    pub async fn write_chunk(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            SendHalf::Quic(s) => s.write_chunk(data).await.map_err(io::Error::from),
            SendHalf::Tcp(s) => s.write_chunk(data).await,
        }
    }

    /// Lets every other stream of the connection that has data to send go first (QUIC); the
    /// TCP fallback's HTTP/2 has no such order, and there this does nothing.
    pub fn yield_to_others(&mut self) {
        if let SendHalf::Quic(s) = self {
            let _ = s.set_priority(YIELDING);
        }
    }

    /// Whether [`SendHalf::yield_to_others`] was called (QUIC; always `false` over TCP).
    pub fn yields_to_others(&self) -> bool {
        matches!(self, SendHalf::Quic(s) if s.priority().is_ok_and(|p| p == YIELDING))
    }

    /// Ends the stream cleanly.
    pub fn finish(&mut self) {
        match self {
            SendHalf::Quic(s) => {
                let _ = s.finish();
            }
            SendHalf::Tcp(s) => s.finish(),
        }
    }

    /// Abandons the stream with `code`.
    pub fn reset(&mut self, code: AppCode) {
        match self {
            SendHalf::Quic(s) => {
                let _ = s.reset(code.varint());
            }
            SendHalf::Tcp(s) => s.reset(code),
        }
    }

    /// Completes when the peer no longer wants this stream (its caller went away). A
    /// cancellation signal, not a wait for acknowledgements; it does not borrow the stream, so
    /// the same task may go on writing while it waits.
    pub fn stopped(&self) -> Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>> {
        match self {
            SendHalf::Quic(s) => {
                let stopped = s.stopped();
                Box::pin(async move {
                    let _ = stopped.await;
                })
            }
            SendHalf::Tcp(s) => Box::pin(s.stopped()),
        }
    }
}

impl AsyncWrite for SendHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SendHalf::Quic(s) => Pin::new(s).poll_write(cx, buf).map_err(io::Error::from),
            SendHalf::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SendHalf::Quic(s) => Pin::new(s).poll_flush(cx),
            SendHalf::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SendHalf::Quic(s) => Pin::new(s).poll_shutdown(cx),
            SendHalf::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The receiving half of a stream.
pub enum RecvHalf {
    Quic(QuicRecv),
    Tcp(TcpRecv),
}

impl RecvHalf {
    /// The next chunk, as large as what is ready at once allows (see [`gather`]); `None` at the
    /// end of the stream.
    pub async fn read_chunk(&mut self) -> io::Result<Option<Bytes>> {
        match self {
            RecvHalf::Quic(s) => s.read_chunk().await,
            RecvHalf::Tcp(s) => s.read_chunk().await,
        }
    }

    /// Takes nothing more from the peer (`code` says why).
    pub fn stop(&mut self, code: AppCode) {
        match self {
            RecvHalf::Quic(s) => s.stop(code.varint()),
            RecvHalf::Tcp(s) => s.stop(),
        }
    }
}

impl AsyncRead for RecvHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RecvHalf::Quic(s) => Pin::new(s).poll_read(cx, buf),
            RecvHalf::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(super::host_of("localhost:7443"), "localhost");
        assert_eq!(super::host_of("[::1]:7443"), "::1");
        assert_eq!(super::host_of("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(super::host_of("stub.example"), "stub.example");
    }
}
