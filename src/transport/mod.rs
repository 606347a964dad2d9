//! The link between an agent and the stub, over either transport, and its streams: QUIC (the
//! normal case) or TLS on TCP with HTTP/2 streams ([`h2link`], the fallback where UDP is
//! blocked). Both give the same model: mutual TLS with the whitelist checked in the handshake, a
//! control stream, and one stream per request that the stub opens; so the stub and the agent
//! are written once, against [`Link`], [`SendHalf`] and [`RecvHalf`].

pub mod h2link;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::wire::codes::AppCode;
use h2link::{H2Link, H2Recv, H2Send};

/// Which transport a link uses.
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

/// One agent connection.
#[derive(Debug, Clone)]
pub enum Link {
    Quic(quinn::Connection),
    Tcp(H2Link),
}

fn quic_io(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Link {
    pub fn transport(&self) -> Transport {
        match self {
            Link::Quic(_) => Transport::Quic,
            Link::Tcp(_) => Transport::Tcp,
        }
    }

    pub fn remote_address(&self) -> SocketAddr {
        match self {
            Link::Quic(c) => c.remote_address(),
            Link::Tcp(l) => l.remote_address(),
        }
    }

    /// A new request stream (the stub's side).
    pub async fn open_stream(&self) -> io::Result<(SendHalf, RecvHalf)> {
        match self {
            Link::Quic(c) => {
                let (send, recv) = c.open_bi().await.map_err(quic_io)?;
                Ok((SendHalf::Quic(send), RecvHalf::Quic(recv)))
            }
            Link::Tcp(l) => {
                let (send, recv) = l.open_stream().await?;
                Ok((SendHalf::Tcp(send), RecvHalf::Tcp(recv)))
            }
        }
    }

    /// The next stream the stub opened (the agent's side); `Err` with the reason once the link
    /// has ended.
    pub async fn accept_stream(&self) -> Result<(SendHalf, RecvHalf), String> {
        match self {
            Link::Quic(c) => {
                let (send, recv) = c.accept_bi().await.map_err(|e| crate::agent::session::explain(&e))?;
                Ok((SendHalf::Quic(send), RecvHalf::Quic(recv)))
            }
            Link::Tcp(l) => {
                let (send, recv) = l.accept_stream().await?;
                Ok((SendHalf::Tcp(send), RecvHalf::Tcp(recv)))
            }
        }
    }

    /// The control stream, from the agent's side: on QUIC the agent opens it, on TCP the stub
    /// does (only an HTTP/2 client opens streams).
    pub async fn agent_control(&self) -> Result<(SendHalf, RecvHalf), String> {
        match self {
            Link::Quic(c) => {
                let (send, recv) = c.open_bi().await.map_err(|e| crate::agent::session::explain(&e))?;
                Ok((SendHalf::Quic(send), RecvHalf::Quic(recv)))
            }
            Link::Tcp(_) => self.accept_stream().await,
        }
    }

    /// The control stream, from the stub's side (see [`Link::agent_control`]).
    pub async fn stub_control(&self) -> io::Result<(SendHalf, RecvHalf)> {
        match self {
            Link::Quic(c) => {
                let (send, recv) = c.accept_bi().await.map_err(quic_io)?;
                Ok((SendHalf::Quic(send), RecvHalf::Quic(recv)))
            }
            Link::Tcp(_) => self.open_stream().await,
        }
    }

    pub fn close(&self, code: AppCode, reason: &str) {
        match self {
            Link::Quic(c) => c.close(code.varint(), reason.as_bytes()),
            Link::Tcp(l) => l.close(code, reason),
        }
    }

    /// Why the link ended, once it has.
    pub fn close_reason(&self) -> Option<String> {
        match self {
            Link::Quic(c) => c.close_reason().map(|r| r.to_string()),
            Link::Tcp(l) => l.close_reason(),
        }
    }

    /// Whether the link has ended (cheap: asked for every request routed).
    pub fn is_closed(&self) -> bool {
        match self {
            Link::Quic(c) => c.close_reason().is_some(),
            Link::Tcp(l) => l.is_closed(),
        }
    }

    /// Completes when the link has ended.
    pub async fn closed(&self) {
        match self {
            Link::Quic(c) => {
                c.closed().await;
            }
            Link::Tcp(l) => l.closed().await,
        }
    }
}

/// The sending half of a stream.
pub enum SendHalf {
    Quic(quinn::SendStream),
    Tcp(H2Send),
}

impl SendHalf {
    /// Sends all of `data`, waiting while the peer's window is full.
    pub async fn write_chunk(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            SendHalf::Quic(s) => s.write_chunk(data).await.map_err(io::Error::from),
            SendHalf::Tcp(s) => s.write_chunk(data).await,
        }
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
    Quic(quinn::RecvStream),
    Tcp(H2Recv),
}

impl RecvHalf {
    /// The next chunk, as it arrived; `None` at the end of the stream.
    pub async fn read_chunk(&mut self) -> io::Result<Option<Bytes>> {
        match self {
            RecvHalf::Quic(s) => match s.read_chunk(usize::MAX, true).await {
                Ok(chunk) => Ok(chunk.map(|c| c.bytes)),
                Err(e) => Err(io::Error::from(e)),
            },
            RecvHalf::Tcp(s) => s.read_chunk().await,
        }
    }

    /// Takes nothing more from the peer (`code` says why).
    pub fn stop(&mut self, code: AppCode) {
        match self {
            RecvHalf::Quic(s) => {
                let _ = s.stop(code.varint());
            }
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
