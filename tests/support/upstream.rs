//! A real HTTP/1.1 server (hyper, on 127.0.0.1:0) for the agent to forward to. It is the
//! "upstream" of tests that are about the tunnel rather than about Kubernetes, and it records what
//! reached it: how many requests, whether a streaming response was abandoned, when an upload began.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::Digest;
use tether::bridge::{Body, BoxError};
use tokio::sync::Notify;

/// Byte `i` of every `/bytes/N` response, so clients can check content without storing it.
pub fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// What the server saw, shared with the test.
#[derive(Default)]
pub struct Seen {
    pub requests: AtomicUsize,
    pub request_signal: Notify,
    /// `/chunks` sends its second event only after this is notified.
    pub release: Notify,
    /// Responses of `/hold` whose body was dropped before the end (the request was aborted).
    pub abandoned: AtomicUsize,
    pub abandoned_signal: Notify,
    /// Notified when the first bytes of an `/upload` body arrive.
    pub upload_started: Notify,
    /// Bytes of `/bytes/N` bodies handed to the connection so far (the server produces them
    /// only as fast as the connection takes them).
    pub bytes_sent: AtomicU64,
    /// `/watch` responses open now, and a signal when that changes.
    pub watching: AtomicUsize,
    pub watching_signal: Notify,
    /// The last event number: every open `/watch` sends `event-K` for each K up to it.
    pub events: tokio::sync::watch::Sender<u64>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    scheme: &'static str,
}

impl Upstream {
    /// Plain HTTP.
    pub async fn start() -> Upstream {
        Upstream::launch("127.0.0.1:0", None).await
    }

    /// Plain HTTP on `addr` (an address of this machine, port 0).
    pub async fn start_on(addr: &str) -> Upstream {
        Upstream::launch(addr, None).await
    }

    /// HTTPS with this certificate (issued for 127.0.0.1).
    pub async fn start_tls(cert: &tether::identity::certs::Minted) -> Upstream {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(tether::identity::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der.clone()], key)
            .unwrap();
        Upstream::launch("127.0.0.1:0", Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn launch(addr: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let state = seen.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (state, tls) = (state.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| serve(state.clone(), req));
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service).await;
                        }
                        Some(tls) => {
                            let Ok(stream) = tls.accept(tcp).await else { return };
                            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Upstream { addr, seen, scheme }
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Waits (bounded) until at least `n` held responses were abandoned.
    pub async fn wait_abandoned(&self, n: usize) {
        wait_count(&self.seen.abandoned, &self.seen.abandoned_signal, n, "abandoned requests").await
    }

    /// Waits (bounded) until at least `n` requests have arrived.
    pub async fn wait_requests(&self, n: usize) {
        wait_count(&self.seen.requests, &self.seen.request_signal, n, "requests").await
    }

    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    /// Waits (at most `patience`) until at least `n` `/watch` responses are open.
    pub async fn wait_watching(&self, n: usize, patience: std::time::Duration) {
        wait_count_within(&self.seen.watching, &self.seen.watching_signal, n, "open watches", patience).await
    }

    pub fn watching(&self) -> usize {
        self.seen.watching.load(Ordering::SeqCst)
    }

    /// Makes every open `/watch` send its next event.
    pub fn send_event(&self) {
        self.seen.events.send_modify(|n| *n += 1);
    }

    pub fn bytes_sent(&self) -> u64 {
        self.seen.bytes_sent.load(Ordering::SeqCst)
    }

    /// Bytes sent once the upstream stops sending: polled until unchanged for a second
    /// (bounded). For clients that never read, whose flow control must stop it.
    pub async fn bytes_sent_when_settled(&self) -> u64 {
        let deadline = tokio::time::Instant::now() + super::PATIENCE;
        let (mut last, mut unchanged_since) = (self.bytes_sent(), tokio::time::Instant::now());
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let now = self.bytes_sent();
            if now != last {
                (last, unchanged_since) = (now, tokio::time::Instant::now());
            } else if unchanged_since.elapsed() >= std::time::Duration::from_secs(1) {
                return now;
            }
            assert!(tokio::time::Instant::now() < deadline, "the upstream never stopped sending: {now} bytes");
        }
    }
}

/// Counts an open `/watch` response until dropped.
struct Watching(Arc<Seen>);

impl Watching {
    fn new(seen: Arc<Seen>) -> Watching {
        seen.watching.fetch_add(1, Ordering::SeqCst);
        seen.watching_signal.notify_waiters();
        Watching(seen)
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.watching.fetch_sub(1, Ordering::SeqCst);
        self.0.watching_signal.notify_waiters();
    }
}

async fn wait_count(count: &AtomicUsize, signal: &Notify, n: usize, what: &str) {
    wait_count_within(count, signal, n, what, super::PATIENCE).await
}

async fn wait_count_within(count: &AtomicUsize, signal: &Notify, n: usize, what: &str, patience: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        // Created before the check, so a notification in between is not lost.
        let notified = signal.notified();
        if count.load(Ordering::SeqCst) >= n {
            return;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            panic!("upstream: {} {what} after {patience:?}, expected {n}", count.load(Ordering::SeqCst));
        }
    }
}

fn stream_body<S>(stream: S) -> Body
where
    S: futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + 'static,
{
    StreamBody::new(stream).boxed_unsync()
}

/// Counts a `/hold` response as abandoned when dropped.
struct Abandoned(Arc<Seen>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.abandoned.fetch_add(1, Ordering::SeqCst);
        self.0.abandoned_signal.notify_waiters();
    }
}

async fn serve(seen: Arc<Seen>, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    seen.request_signal.notify_waiters();
    let path = req.uri().path().to_owned();
    let mut response = Response::builder();
    let body: Body = if path.starts_with("/echo") {
        let method = req.method().to_string();
        let uri = req.uri().to_string();
        let seen_header = |name: &str| {
            let values: Vec<&str> = req.headers().get_all(name).iter().map(|v| v.to_str().unwrap()).collect();
            values.join(",")
        };
        let header = seen_header("x-test");
        let authorization = seen_header("authorization");
        let impersonation: Vec<String> = req
            .headers()
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("impersonate-"))
            .map(|(name, value)| format!("{name}={}", value.to_str().unwrap()))
            .collect();
        // Headers that claim who the caller is or where it comes from, as the API server reads them.
        let identity: Vec<String> = req
            .headers()
            .iter()
            .filter(|(name, _)| {
                let name = name.as_str();
                name.starts_with("x-remote-") || ["x-forwarded-for", "x-real-ip", "forwarded"].contains(&name)
            })
            .map(|(name, value)| format!("{name}={}", value.to_str().unwrap()))
            .collect();
        // A body cut off (its caller or a replica on the way killed) ends the request here.
        let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
            return Ok(Response::new(tether::bridge::empty()));
        };
        response = response
            .header("x-method", method)
            .header("x-uri", uri)
            .header("x-test-seen", header)
            .header("x-authorization-seen", authorization)
            .header("x-impersonation-seen", impersonation.join(","))
            .header("x-identity-seen", identity.join(","));
        tether::bridge::full(body)
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let total: u64 = n.parse().unwrap();
        const CHUNK: u64 = 64 * 1024;
        let seen = seen.clone();
        let chunks = futures_util::stream::iter((0..total.div_ceil(CHUNK)).map(move |c| {
            let start = c * CHUNK;
            let bytes: Vec<u8> = (start..(start + CHUNK).min(total)).map(pattern).collect();
            seen.bytes_sent.fetch_add(bytes.len() as u64, Ordering::SeqCst);
            Ok(Frame::data(Bytes::from(bytes)))
        }));
        response = response.header("content-length", total);
        stream_body(chunks)
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        // A slow answer: nothing at all for `ms` milliseconds, then the head and a short body.
        tokio::time::sleep(std::time::Duration::from_millis(ms.parse().unwrap())).await;
        tether::bridge::full("late\n")
    } else if path == "/chunks" {
        let seen = seen.clone();
        let events = futures_util::stream::unfold(0, move |step| {
            let seen = seen.clone();
            async move {
                match step {
                    0 => Some((Ok(Frame::data(Bytes::from_static(b"event-1\n"))), 1)),
                    1 => {
                        seen.release.notified().await;
                        Some((Ok(Frame::data(Bytes::from_static(b"event-2\n"))), 2))
                    }
                    _ => None,
                }
            }
        });
        stream_body(events)
    } else if path == "/watch" {
        // A watch: open until the client goes away, one line per event the test sends.
        let guard = Watching::new(seen.clone());
        let events = futures_util::stream::unfold((seen.events.subscribe(), 0u64), move |(mut rx, sent)| {
            let _keep = &guard;
            async move {
                let next = sent + 1;
                rx.wait_for(|n| *n >= next).await.ok()?;
                Some((Ok(Frame::data(Bytes::from(format!("event-{next}\n")))), (rx, next)))
            }
        });
        stream_body(events)
    } else if path == "/hold" {
        let guard = Abandoned(seen.clone());
        let first = futures_util::stream::once(async { Ok(Frame::data(Bytes::from_static(b"held\n"))) });
        let forever = futures_util::stream::pending().map(move |x: Result<Frame<Bytes>, BoxError>| {
            let _keep = &guard;
            x
        });
        stream_body(first.chain(forever))
    } else if path == "/hold-head" {
        // Never answers: only an aborted request ends it (hyper then drops this future).
        let _guard = Abandoned(seen.clone());
        std::future::pending::<()>().await;
        unreachable!()
    } else if path == "/ws" {
        // A real WebSocket echo server (tungstenite) behind a real HTTP/1.1 upgrade.
        let key = req.headers().get("sec-websocket-key").map(|k| k.as_bytes().to_vec()).unwrap_or_default();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else { return };
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            let (sink, stream) = ws.split();
            let _ = stream.forward(sink).await;
        });
        response = response
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key));
        tether::bridge::empty()
    } else if path == "/upload" {
        let mut frames = std::pin::pin!(BodyStream::new(req.into_body()));
        let (mut hasher, mut total, mut first) = (sha2::Sha256::new(), 0u64, true);
        while let Some(frame) = frames.next().await {
            let Ok(data) = frame.unwrap().into_data() else { continue };
            if first && !data.is_empty() {
                seen.upload_started.notify_one();
                first = false;
            }
            total += data.len() as u64;
            hasher.update(&data);
        }
        tether::bridge::full(format!("{total} {}", hex::encode(hasher.finalize())))
    } else if path == "/truncate" {
        // Promises 100000 bytes, sends 10, and once released fails: the connection is cut
        // mid-body, after the head and the first bytes have reached the client.
        response = response.header("content-length", 100_000);
        let seen = seen.clone();
        let frames = futures_util::stream::unfold(0, move |step| {
            let seen = seen.clone();
            async move {
                match step {
                    0 => Some((Ok(Frame::data(Bytes::from_static(b"0123456789"))), 1)),
                    1 => {
                        seen.release.notified().await;
                        Some((Err(BoxError::from("upstream broke")), 2))
                    }
                    _ => None,
                }
            }
        });
        stream_body(frames)
    } else if let Some(code) = path.strip_prefix("/status/") {
        response = response.status(code.parse::<u16>().unwrap());
        tether::bridge::empty()
    } else {
        response = response.status(404);
        tether::bridge::full("no such test route")
    };
    Ok(response.body(body).unwrap())
}
