//! The TCP fallback: TLS 1.3 (the same certificates, whitelist verifier and ALPN as QUIC) on a
//! TCP connection the agent dials, carrying HTTP/2 streams, one per request, as QUIC carries its
//! streams. HTTP/2 because it already has what the tunnel relies on in QUIC: flow control per
//! stream and per connection (a slow reader holds back only its own stream's window), stream
//! resets for cancellation, PING for keep-alive, and a mature implementation (`h2`, under hyper)
//! already in the build. yamux would have needed a new dependency with weaker flow control.
//!
//! Only an HTTP/2 client opens streams, and the listener is the one that opens request streams,
//! so here the listener (the stub) is the HTTP/2 client and the dialer (the agent) the server,
//! although the dialer connected. The control stream is therefore the listener's first stream;
//! the dialer answers it at once and from then on both sides use it exactly like QUIC's control
//! stream. Every stream is a `POST` whose body (both ways) carries the same frames and raw bytes
//! as a QUIC stream.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::wire::codes::AppCode;

use super::flow::{CONNECTION_WINDOW, STREAM_WINDOW};

/// HTTP/2 windows cannot exceed this (RFC 9113, 6.9.1).
const MAX_H2_WINDOW: u64 = (1 << 31) - 1;
/// Largest HTTP/2 frame we accept (the default 16 KiB costs more frames per MB).
const MAX_FRAME: u32 = 64 * 1024;

type Accepted = (http::Request<h2::RecvStream>, h2::server::SendResponse<Bytes>);

enum Role {
    /// The listener opens streams.
    Listener(h2::client::SendRequest<Bytes>),
    /// The dialer accepts them, from the task that drives the connection.
    Dialer(tokio::sync::Mutex<mpsc::Receiver<Accepted>>),
}

struct Inner {
    role: Role,
    remote: SocketAddr,
    /// Cancelled when the connection has ended (for any reason).
    ended: CancellationToken,
    /// Cancelled to end the connection from this side.
    close: CancellationToken,
    /// The code to close with, set before `close` is cancelled.
    close_code: Mutex<Option<AppCode>>,
    reason: Mutex<Option<String>>,
    /// The connection's receive window wanted now, for the task that drives the connection.
    window: tokio::sync::watch::Sender<u32>,
    /// Keep-alive pings the peer answered.
    pongs: AtomicU64,
    /// Wakes the keep-alive task to ping now.
    probe: tokio::sync::Notify,
}

/// One TCP connection: cheap to clone.
#[derive(Clone)]
pub struct TcpConnection(Arc<Inner>);

impl std::fmt::Debug for TcpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpConnection").field("remote", &self.0.remote).finish_non_exhaustive()
    }
}

fn h2_error(e: h2::Error) -> io::Error {
    match e.get_io() {
        Some(inner) => io::Error::new(inner.kind(), e),
        None => io::Error::other(e),
    }
}

impl TcpConnection {
    fn new(role: Role, remote: SocketAddr) -> TcpConnection {
        TcpConnection(Arc::new(Inner {
            role,
            remote,
            ended: CancellationToken::new(),
            close: CancellationToken::new(),
            close_code: Mutex::new(None),
            reason: Mutex::new(None),
            window: tokio::sync::watch::Sender::new(CONNECTION_WINDOW),
            pongs: AtomicU64::new(0),
            probe: tokio::sync::Notify::new(),
        }))
    }

    fn end(&self, reason: String) {
        let mut slot = self.0.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        drop(slot);
        self.0.ended.cancel();
    }

    /// The listener's side, on a TLS stream a dialer connected: HTTP/2 client.
    pub async fn listener<T>(io: T, remote: SocketAddr, idle: Duration) -> io::Result<TcpConnection>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send_request, mut connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(h2_error)?;
        let ping = connection.ping_pong();
        let conn = TcpConnection::new(Role::Listener(send_request), remote);
        let driver = conn.clone();
        let mut window = conn.0.window.subscribe();
        tokio::spawn(async move {
            let reason = loop {
                tokio::select! {
                    result = &mut connection => break match result {
                        Ok(()) => "peer closed the connection".to_owned(),
                        Err(e) => super::explain::h2_end(&e),
                    },
                    _ = driver.0.close.cancelled() => break "closed locally".to_owned(),
                    Ok(()) = window.changed() => connection.set_target_window_size(*window.borrow_and_update()),
                }
            };
            driver.end(reason);
        });
        if let Some(ping) = ping {
            tokio::spawn(keep_alive(conn.clone(), ping, idle));
        }
        Ok(conn)
    }

    /// The dialer's side, on the TLS stream it connected: HTTP/2 server.
    pub async fn dialer<T>(io: T, remote: SocketAddr, idle: Duration, max_streams: u32) -> io::Result<TcpConnection>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut connection = h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_concurrent_streams(max_streams)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(h2_error)?;
        let ping = connection.ping_pong();
        let (tx, rx) = mpsc::channel(64);
        let conn = TcpConnection::new(Role::Dialer(tokio::sync::Mutex::new(rx)), remote);
        let driver = conn.clone();
        let mut window = conn.0.window.subscribe();
        tokio::spawn(async move {
            let reason = loop {
                tokio::select! {
                    Ok(()) = window.changed() => connection.set_target_window_size(*window.borrow_and_update()),
                    accepted = connection.accept() => match accepted {
                        Some(Ok(stream)) => {
                            if tx.send(stream).await.is_err() {
                                break "closed locally".to_owned();
                            }
                        }
                        Some(Err(e)) => break super::explain::h2_end(&e),
                        None => break "peer closed the connection".to_owned(),
                    },
                    _ = driver.0.close.cancelled() => {
                        let code = driver.0.close_code.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or(AppCode::Normal);
                        connection.abrupt_shutdown(code.h2_reason());
                        // Keep driving briefly so that the GOAWAY goes out.
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            while connection.accept().await.is_some() {}
                        })
                        .await;
                        break "closed locally".to_owned();
                    }
                }
            };
            driver.end(reason);
        });
        if let Some(ping) = ping {
            tokio::spawn(keep_alive(conn.clone(), ping, idle));
        }
        Ok(conn)
    }

    pub fn remote_address(&self) -> SocketAddr {
        self.0.remote
    }

    /// A connection object with no connection behind it (it never ends, accepts nothing), for
    /// unit tests of what holds connections.
    #[cfg(test)]
    pub fn detached_for_tests() -> TcpConnection {
        let (_tx, rx) = mpsc::channel(1);
        TcpConnection::new(Role::Dialer(tokio::sync::Mutex::new(rx)), SocketAddr::from(([127, 0, 0, 1], 9)))
    }

    /// Opens a request stream (listener side).
    pub async fn open_stream(&self) -> io::Result<(TcpSend, TcpRecv)> {
        let Role::Listener(send_request) = &self.0.role else {
            return Err(io::Error::other("only the listener opens streams on a TCP connection"));
        };
        if let Some(reason) = self.close_reason() {
            return Err(io::Error::new(io::ErrorKind::NotConnected, reason));
        }
        let mut ready = send_request.clone().ready().await.map_err(h2_error)?;
        let request =
            http::Request::post("https://tether/stream").body(()).map_err(|e| io::Error::other(e.to_string()))?;
        let (response, send) = ready.send_request(request, false).map_err(h2_error)?;
        Ok((TcpSend::new(send), TcpRecv { state: RecvState::Pending(response), leftover: Bytes::new() }))
    }

    /// Accepts the next stream the listener opened (dialer side); `Err` with the reason once the
    /// connection has ended.
    pub async fn accept_stream(&self) -> Result<(TcpSend, TcpRecv), String> {
        let Role::Dialer(rx) = &self.0.role else {
            return Err("only the dialer accepts streams on a TCP connection".into());
        };
        let next = tokio::select! {
            next = async { rx.lock().await.recv().await } => next,
            _ = self.0.ended.cancelled() => None,
        };
        let Some((request, mut respond)) = next else {
            return Err(self.close_reason().unwrap_or_else(|| "connection ended".into()));
        };
        let send = respond.send_response(http::Response::new(()), false).map_err(|e| e.to_string())?;
        Ok((TcpSend::new(send), TcpRecv { state: RecvState::Body(request.into_body()), leftover: Bytes::new() }))
    }

    /// Ends the connection (the dialer's GOAWAY carries `code`; h2's client API has no way to
    /// send a GOAWAY, so the listener's side just closes, and a dialer on TCP learns no code).
    pub fn close(&self, code: AppCode, reason: &str) {
        *self.0.close_code.lock().unwrap_or_else(|e| e.into_inner()) = Some(code);
        self.end(format!("closed locally: {} ({reason})", code.describe()));
        self.0.close.cancel();
    }

    /// The connection's receive window (HTTP/2 caps it at 2 GiB).
    pub fn set_receive_window(&self, bytes: u64) {
        let bytes = bytes.min(MAX_H2_WINDOW) as u32;
        self.0.window.send_if_modified(|wanted| std::mem::replace(wanted, bytes) != bytes);
    }

    /// Keep-alive pings the peer has answered so far.
    pub fn pongs(&self) -> u64 {
        self.0.pongs.load(Ordering::Relaxed)
    }

    /// Pings the peer now (unless a ping is out already).
    pub fn probe(&self) {
        self.0.probe.notify_one();
    }

    pub fn close_reason(&self) -> Option<String> {
        self.0.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_closed(&self) -> bool {
        self.0.ended.is_cancelled()
    }

    pub async fn closed(&self) {
        self.0.ended.cancelled().await;
    }
}

/// Pings every third of `idle`, and at once when probed; a peer that does not answer within
/// `idle` is dead.
async fn keep_alive(conn: TcpConnection, mut ping: h2::PingPong, idle: Duration) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(idle / 3) => {}
            _ = conn.0.probe.notified() => {}
            _ = conn.closed() => return,
        }
        match tokio::time::timeout(idle, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {
                conn.0.pongs.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(_)) => return,
            Err(_) => {
                conn.end(format!("peer did not answer keep-alives for {idle:?} (timed out)"));
                conn.0.close.cancel();
                return;
            }
        }
    }
}

/// The sending half of a TCP stream. Data goes out only as the peer's window allows, so a
/// slow reader makes the writer wait instead of buffering. Shared (behind a lock taken only
/// inside a poll) so that a cancellation watcher can wait for the peer's reset while the
/// same task writes, as QUIC's `stopped()` allows.
pub struct TcpSend {
    inner: Arc<Mutex<h2::SendStream<Bytes>>>,
}

impl TcpSend {
    fn new(inner: h2::SendStream<Bytes>) -> TcpSend {
        TcpSend { inner: Arc::new(Mutex::new(inner)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, h2::SendStream<Bytes>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends all of `data` (waiting for window as needed).
    pub async fn write_chunk(&mut self, mut data: Bytes) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_send(cx, &mut data)).await
    }

    fn poll_capacity(&self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let mut inner = self.lock();
        loop {
            let capacity = inner.capacity();
            if capacity > 0 {
                return Poll::Ready(Ok(capacity));
            }
            inner.reserve_capacity(want);
            match ready!(inner.poll_capacity(cx)) {
                None => return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "stream closed"))),
                Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                Some(Ok(_)) => {}
            }
        }
    }

    fn poll_send(&self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<()>> {
        while !data.is_empty() {
            let capacity = ready!(self.poll_capacity(cx, data.len()))?;
            let chunk = data.split_to(capacity.min(data.len()));
            self.lock().send_data(chunk, false).map_err(h2_error)?;
        }
        Poll::Ready(Ok(()))
    }

    /// Ends the stream cleanly (END_STREAM).
    pub fn finish(&mut self) {
        let _ = self.lock().send_data(Bytes::new(), true);
    }

    pub fn reset(&mut self, code: AppCode) {
        self.lock().send_reset(code.h2_reason());
    }

    /// Completes when the peer resets the stream (its caller went away).
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            let _ = std::future::poll_fn(|cx| inner.lock().unwrap_or_else(|e| e.into_inner()).poll_reset(cx)).await;
        }
    }
}

impl AsyncWrite for TcpSend {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let capacity = ready!(self.poll_capacity(cx, buf.len()))?;
        let n = capacity.min(buf.len());
        self.lock().send_data(Bytes::copy_from_slice(&buf[..n]), false).map_err(h2_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.finish();
        Poll::Ready(Ok(()))
    }
}

enum RecvState {
    /// The listener's side: the dialer's answer to the stream, whose body is the data.
    Pending(h2::client::ResponseFuture),
    Body(h2::RecvStream),
    Done,
}

/// The receiving half of a TCP stream. Window is given back as data is taken.
pub struct TcpRecv {
    state: RecvState,
    leftover: Bytes,
}

impl TcpRecv {
    /// The next chunk; `None` at the end of the stream.
    pub async fn read_chunk(&mut self) -> io::Result<Option<Bytes>> {
        if !self.leftover.is_empty() {
            return Ok(Some(std::mem::take(&mut self.leftover)));
        }
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            match &mut self.state {
                RecvState::Pending(response) => {
                    let response = ready!(Pin::new(response).poll(cx)).map_err(h2_error)?;
                    self.state = RecvState::Body(response.into_body());
                }
                RecvState::Body(body) => match ready!(body.poll_data(cx)) {
                    Some(Ok(data)) => {
                        let _ = body.flow_control().release_capacity(data.len());
                        if !data.is_empty() {
                            return Poll::Ready(Ok(Some(data)));
                        }
                    }
                    Some(Err(e)) => {
                        self.state = RecvState::Done;
                        return Poll::Ready(Err(h2_error(e)));
                    }
                    None => {
                        self.state = RecvState::Done;
                        return Poll::Ready(Ok(None));
                    }
                },
                RecvState::Done => return Poll::Ready(Ok(None)),
            }
        }
    }

    /// Takes nothing more; the stream is reset once its sending half is gone too.
    pub fn stop(&mut self) {
        self.state = RecvState::Done;
        self.leftover = Bytes::new();
    }
}

impl AsyncRead for TcpRecv {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.leftover.is_empty() {
            match ready!(self.poll_chunk(cx))? {
                Some(data) => self.leftover = data,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.leftover.len().min(buf.remaining());
        buf.put_slice(&self.leftover[..n]);
        self.leftover.advance(n);
        Poll::Ready(Ok(()))
    }
}
