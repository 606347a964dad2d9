//! Between HTTP and tunnel streams, for both ends of the tunnel: the body type, which headers
//! cross the tunnel (never hop-by-hop ones), raw body bytes flowing from an HTTP body into a
//! send stream or out of a receive stream into an HTTP body, one chunk at a time, and the raw
//! pipe after an upgrade. Nothing here buffers a whole body: the transport's flow control
//! pushes back on a slow reader.

use crate::transport::{RecvHalf, SendHalf};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Empty, Full, StreamBody};

use crate::wire::codes::AppCode;
use crate::wire::frame::Header;

/// Boxed error of a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response tether produces.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body with these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Headers that describe one connection, not the message (RFC 9110 7.6.1): they never cross the
/// tunnel. `Upgrade` is handled apart, by the upgrade path.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` must not be forwarded, given the message's own `Connection` header tokens.
fn is_hop_by_hop(name: &HeaderName, connection_tokens: &[String]) -> bool {
    let name = name.as_str();
    HOP_BY_HOP.contains(&name) || connection_tokens.iter().any(|t| t == name)
}

fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether `name` (lowercase) is a header by which a caller could speak for someone at the API
/// server: its own credential, impersonation, or the `X-Remote-*` headers of the API server's
/// request-header authenticator. Neither stub nor agent ever forwards one from a caller.
pub fn speaks_for_someone(name: &str) -> bool {
    name == "authorization"
        || name.starts_with("impersonate-")
        || name.starts_with("x-remote-")
        || name == AS_USER_HEADER
        || name == AS_GROUP_HEADER
}

/// The user a caller asked to act as (`kubectl --as`), carried from the stub to the agent under
/// a name of tether's own: the stub drops a caller's own header of this name, and the agent
/// acts on it only after the cluster's API server says the caller may impersonate that user.
pub const AS_USER_HEADER: &str = "x-tether-as-user";
/// A group a caller asked to act as (`kubectl --as-group`), one header each.
pub const AS_GROUP_HEADER: &str = "x-tether-as-group";

/// The impersonation a caller asked for with its own `Impersonate-*` headers (kubectl's
/// `--as` and `--as-group`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AskedImpersonation {
    pub user: Option<String>,
    pub groups: Vec<String>,
}

/// What a caller's `Impersonate-*` headers ask for; `Err` names a header tether cannot carry
/// (`Impersonate-Uid`, `Impersonate-Extra-*`, a value that is not text, or groups without a
/// user, which the API server refuses too).
pub fn asked_impersonation(headers: &HeaderMap) -> Result<AskedImpersonation, String> {
    let mut asked = AskedImpersonation::default();
    for (name, value) in headers {
        let name = name.as_str();
        if !name.starts_with("impersonate-") {
            continue;
        }
        let value = value.to_str().map_err(|_| format!("{name}: the value is not text"))?.to_owned();
        match name {
            "impersonate-user" if asked.user.is_some() => return Err("impersonate-user: given twice".into()),
            "impersonate-user" => asked.user = Some(value),
            "impersonate-group" => asked.groups.push(value),
            other => {
                return Err(format!(
                    "{other}: tether carries only Impersonate-User and Impersonate-Group (kubectl --as, --as-group)"
                ));
            }
        }
    }
    if asked.user.is_none() && !asked.groups.is_empty() {
        return Err("impersonate-group without impersonate-user: give --as as well as --as-group".into());
    }
    Ok(asked)
}

/// Puts what a caller asked to act as into a request head's headers, under tether's own names
/// (the stub, for the agent to ask its API server about); [`asked_on_the_wire`] reads it back.
pub fn asked_to_wire(asked: &AskedImpersonation, headers: &mut Vec<Header>) {
    if let Some(user) = &asked.user {
        headers.push(Header { name: AS_USER_HEADER.into(), value: user.clone().into_bytes() });
    }
    for group in &asked.groups {
        headers.push(Header { name: AS_GROUP_HEADER.into(), value: group.clone().into_bytes() });
    }
}

/// What the stub passed on of a caller's `--as` and `--as-group`, read back from a request head's
/// headers (tether's own names, [`AS_USER_HEADER`]): for the agent, which asks its API server
/// whether the caller may, and for the audit line of a replica serving a forwarded request.
pub fn asked_on_the_wire(headers: &[Header]) -> AskedImpersonation {
    let text = |h: &Header| String::from_utf8_lossy(&h.value).into_owned();
    AskedImpersonation {
        user: headers.iter().find(|h| h.name.eq_ignore_ascii_case(AS_USER_HEADER)).map(text),
        groups: headers.iter().filter(|h| h.name.eq_ignore_ascii_case(AS_GROUP_HEADER)).map(text).collect(),
    }
}

/// Whether `name` (lowercase) says where a request came from. The API server records
/// `X-Forwarded-For` first in its audit events' `sourceIPs`, so a caller must not choose it: the
/// stub drops these and sets `X-Forwarded-For` to the address it saw. The hub's own
/// [`FORWARDED_BY_HEADER`] is one of them: only a replica sets it, never a caller.
pub fn says_where_from(name: &str) -> bool {
    matches!(name, "x-forwarded-for" | "x-real-ip" | "forwarded" | FORWARDED_BY_HEADER)
}

/// Names the stub replica that forwarded a request to the replica holding the agent
/// connection (the hub on many machines), for the agent's log; the agent removes it.
pub const FORWARDED_BY_HEADER: &str = "x-tether-forwarded-by";

/// Whether a request or response switches protocols (HTTP/1.1 `Upgrade`, as kubectl exec,
/// attach and port-forward do with SPDY/3.1 or WebSocket).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::UPGRADE) && connection_tokens(headers).iter().any(|t| t == "upgrade")
}

/// The end-to-end headers of a message, for a wire head. `Host` is dropped too: the receiving
/// side addresses its own upstream. With `upgrade`, the `Upgrade` header crosses as well: the
/// other side re-creates `Connection: Upgrade` around it.
pub fn headers_to_wire(headers: &HeaderMap, upgrade: bool) -> Vec<Header> {
    let tokens = connection_tokens(headers);
    headers
        .iter()
        .filter(|(name, _)| {
            (upgrade && *name == http::header::UPGRADE)
                || (!is_hop_by_hop(name, &tokens) && *name != http::header::HOST)
        })
        .map(|(name, value)| Header { name: name.as_str().to_owned(), value: value.as_bytes().to_vec() })
        .collect()
}

/// Headers from a wire head. Invalid names or values and hop-by-hop headers are dropped: the
/// peer built them from a valid message, so such a header is noise, never something to forward.
/// With `upgrade`, `Upgrade` is kept and `Connection: Upgrade` added.
pub fn headers_from_wire(headers: &[Header], upgrade: bool) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(headers.len() + 1);
    for h in headers {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(&h.value))
        else {
            continue;
        };
        let keep =
            (upgrade && name == http::header::UPGRADE) || (!is_hop_by_hop(&name, &[]) && name != http::header::HOST);
        if keep {
            map.append(name, value);
        }
    }
    if upgrade && map.contains_key(http::header::UPGRADE) {
        map.insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    map
}

/// After a `101 Switching Protocols`, the stream is a raw byte pipe: `io` (the upgraded HTTP
/// connection) to `send` and `recv` to `io`. A clean end of one direction is passed on as a
/// half-close; a failure of either aborts both, so neither side waits on a dead peer.
pub async fn pipe<IO>(io: IO, mut send: SendHalf, mut recv: RecvHalf)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let (mut from_io, mut to_io) = tokio::io::split(io);
    let failed = {
        let outbound = async {
            match tokio::io::copy(&mut from_io, &mut send).await {
                Ok(_) => {
                    send.finish();
                    true
                }
                Err(_) => false,
            }
        };
        let inbound = async {
            let copied = tokio::io::copy(&mut recv, &mut to_io).await;
            copied.is_ok() && to_io.shutdown().await.is_ok()
        };
        let mut outbound = std::pin::pin!(outbound);
        let mut inbound = std::pin::pin!(inbound);
        // Run both; the first failure ends the pipe.
        tokio::select! {
            ok = &mut outbound => !ok || !inbound.await,
            ok = &mut inbound => !ok || !outbound.await,
        }
    };
    if failed {
        send.reset(AppCode::Cancelled);
        recv.stop(AppCode::Cancelled);
    }
}

/// Why a body could not be moved into a stream.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    /// The HTTP body failed (its sender went away or broke).
    #[error("body source failed")]
    Source(#[source] BoxError),
    /// The stream refused the bytes (the peer stopped it, or the connection is gone).
    #[error("stream closed by the peer")]
    Sink(#[source] std::io::Error),
}

/// Moves an HTTP body into `send` chunk by chunk, returning the bytes moved. It does not finish
/// the stream: the caller decides between finish (success) and reset (failure).
pub async fn pump_body<B>(body: B, send: &mut SendHalf) -> Result<u64, PumpError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut frames = std::pin::pin!(BodyStream::new(body));
    let mut moved = 0u64;
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|e| PumpError::Source(e.into()))?;
        // Trailers cannot cross the tunnel (raw bytes until FIN); Kubernetes does not use them.
        if let Ok(data) = frame.into_data()
            && !data.is_empty()
        {
            moved += data.len() as u64;
            send.write_chunk(data).await.map_err(PumpError::Sink)?;
        }
    }
    Ok(moved)
}

/// Where the chunks of a body come from (a receive stream, or one watched for stalls).
pub trait ChunkSource: Send + 'static {
    /// The next chunk; `None` at the end. After an error the body ends.
    fn next_chunk(&mut self) -> impl Future<Output = Option<Result<Bytes, BoxError>>> + Send;
}

/// The HTTP body of the chunks `source` gives, one data frame each. The source lives as long as
/// the body and is dropped at its end, after an error, or with the body.
pub fn body_from<S: ChunkSource>(source: S) -> Body {
    let frames = futures_util::stream::unfold(Some(source), |source| async move {
        let mut source = source?;
        match source.next_chunk().await? {
            Ok(chunk) => Some((Ok(hyper::body::Frame::data(chunk)), Some(source))),
            Err(e) => Some((Err(e), None)),
        }
    });
    StreamBody::new(frames).boxed_unsync()
}

/// The raw bytes left on `recv` as an HTTP body. `keep` lives exactly as long as the body (an
/// in-flight counter, a cancellation guard). A stream reset by the peer becomes a body error,
/// so the HTTP side aborts instead of presenting a truncated body as complete. If the body is
/// dropped before the end, the stream is stopped with [`AppCode::Cancelled`].
pub fn recv_body<K: Send + 'static>(recv: RecvHalf, keep: K) -> Body {
    body_from(StreamSource { recv: Some(recv), _keep: keep })
}

/// A receive stream as a [`ChunkSource`]; stopped with a code the peer can log if dropped
/// before its end.
struct StreamSource<K> {
    recv: Option<RecvHalf>,
    _keep: K,
}

impl<K: Send + 'static> ChunkSource for StreamSource<K> {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, BoxError>> {
        let recv = self.recv.as_mut()?;
        match recv.read_chunk().await {
            Ok(Some(chunk)) => Some(Ok(chunk)),
            // Fully read: nothing to stop.
            Ok(None) => {
                self.recv = None;
                None
            }
            Err(e) => {
                self.recv = None;
                Some(Err(BoxError::from(e)))
            }
        }
    }
}

impl<K> Drop for StreamSource<K> {
    fn drop(&mut self) {
        if let Some(mut recv) = self.recv.take() {
            recv.stop(AppCode::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn with(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        h
    }

    #[test]
    fn kubectl_as_and_as_group_are_read_and_the_rest_is_refused_by_name() {
        let asked = asked_impersonation(&with(&[
            ("Impersonate-User", "bob"),
            ("impersonate-group", "devs"),
            ("IMPERSONATE-GROUP", "ops"),
            ("accept", "*/*"),
        ]))
        .unwrap();
        assert_eq!(asked, AskedImpersonation { user: Some("bob".into()), groups: vec!["devs".into(), "ops".into()] });
        assert_eq!(asked_impersonation(&with(&[("accept", "*/*")])).unwrap(), AskedImpersonation::default());
        let uid = asked_impersonation(&with(&[("impersonate-user", "bob"), ("impersonate-uid", "1")])).unwrap_err();
        assert!(uid.starts_with("impersonate-uid"), "{uid}");
        let extra = asked_impersonation(&with(&[("impersonate-user", "bob"), ("impersonate-extra-scopes", "x")]));
        assert!(extra.unwrap_err().starts_with("impersonate-extra-scopes"));
        assert!(asked_impersonation(&with(&[("impersonate-group", "devs")])).unwrap_err().contains("--as"));
        let twice = with(&[("impersonate-user", "bob"), ("impersonate-user", "carol")]);
        assert!(asked_impersonation(&twice).unwrap_err().contains("twice"));
        // The stub strips a caller's own tether headers with the rest.
        assert!(speaks_for_someone(AS_USER_HEADER) && speaks_for_someone(AS_GROUP_HEADER));
    }

    proptest! {
        /// Whatever user and groups a caller names, they come back as named, in order.
        #[test]
        fn asked_impersonation_round_trips(
            user in "[a-zA-Z0-9:@._-]([a-zA-Z0-9:@. _-]{0,38}[a-zA-Z0-9:@._-])?",
            groups in proptest::collection::vec("[a-zA-Z0-9:@._-]{1,30}", 0..6),
        ) {
            let mut h = HeaderMap::new();
            h.insert("impersonate-user", user.parse().unwrap());
            for g in &groups {
                h.append("impersonate-group", g.parse().unwrap());
            }
            let asked = asked_impersonation(&h).unwrap();
            prop_assert_eq!(&asked.user, &Some(user));
            prop_assert_eq!(&asked.groups, &groups);
            // And through a request head, among other headers, to the agent or a peer replica.
            let mut wire = vec![Header { name: "accept".into(), value: b"*/*".to_vec() }];
            asked_to_wire(&asked, &mut wire);
            wire.push(Header { name: "x-forwarded-for".into(), value: b"127.0.0.1".to_vec() });
            prop_assert_eq!(asked_on_the_wire(&wire), asked);
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_stay_behind() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-private".parse().unwrap());
        h.insert("keep-alive", "5".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("host", "stub".parse().unwrap());
        h.insert("accept", "application/json".parse().unwrap());
        h.append("x-multi", "a".parse().unwrap());
        h.append("x-multi", "b".parse().unwrap());
        let wire = headers_to_wire(&h, false);
        let names: Vec<&str> = wire.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["accept", "x-multi", "x-multi"]);
        let back = headers_from_wire(&wire, false);
        assert_eq!(back.get_all("x-multi").iter().count(), 2);
    }

    #[test]
    fn upgrades_keep_their_upgrade_header_only_when_asked() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "SPDY/3.1".parse().unwrap());
        h.insert("x-stream-protocol-version", "v4.channel.k8s.io".parse().unwrap());
        assert!(is_upgrade(&h));
        assert!(!headers_to_wire(&h, false).iter().any(|h| h.name == "upgrade"));
        let back = headers_from_wire(&headers_to_wire(&h, true), true);
        assert_eq!(back["upgrade"], "SPDY/3.1");
        assert_eq!(back["connection"], "upgrade");
        assert_eq!(back["x-stream-protocol-version"], "v4.channel.k8s.io");
        h.remove("connection");
        assert!(!is_upgrade(&h), "Upgrade without Connection: upgrade is not an upgrade");
    }

    #[test]
    fn invalid_wire_headers_are_dropped() {
        let wire = vec![
            Header { name: "bad name".into(), value: b"x".to_vec() },
            Header { name: "x-ok".into(), value: b"fine".to_vec() },
            Header { name: "x-bad-value".into(), value: b"a\nb".to_vec() },
            Header { name: "Transfer-Encoding".into(), value: b"chunked".to_vec() },
        ];
        let map = headers_from_wire(&wire, false);
        assert_eq!(map.len(), 1);
        assert_eq!(map["x-ok"], "fine");
    }
}
