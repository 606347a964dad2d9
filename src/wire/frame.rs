//! Frames and their pure encoding: a 4-byte big-endian payload length, then the payload in
//! bincode (serde). Nothing here does I/O, so every property of the codec is testable with
//! proptest: round trips, arbitrary input never panics, oversize is refused, any split decodes.
//!
//! This is the only module that names the codec (bincode 2.0.1, see RUSTSEC-2025-0141): moving
//! to another serde codec such as postcard changes this file and nothing else.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Hard limit on one frame's payload. Heads carry a method, a path and headers; the front door
/// caps headers well below this, so a larger frame is a broken or hostile peer.
pub const MAX_FRAME_LEN: usize = 256 * 1024;

/// Bytes of the length prefix.
pub const PREFIX_LEN: usize = 4;

/// Messages on the control stream (the first stream of a connection; the agent speaks first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Agent -> stub, first frame of a connection: who the agent says it is.
    Hello(Hello),
    /// Stub -> agent: the hello was accepted; the agent is now routable.
    Welcome(Welcome),
    /// Agent -> stub: route nothing new to this connection; in-flight streams finish.
    Drain,
    /// Stub -> agent: no new stream will be routed to this connection. Streams opened before
    /// this frame may still arrive and are served; after it the agent can count down to zero.
    DrainAck,
    /// Stub -> agent: the hub's replicas now (sent when they change), so the agent knows how
    /// many distinct replicas it can be connected to, and which ones are new.
    Members { replicas: Vec<String> },
}

/// The agent's introduction. The stub checks `cluster` against the certificate's whitelist entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub cluster: String,
    pub agent_name: String,
    /// Free text (binary version), for logs only.
    pub build: String,
}

/// The stub's acceptance of a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u32,
    /// The stub's id for this connection, so both ends' logs name the same thing.
    pub connection_id: u64,
    pub build: String,
    /// The id of the stub replica that welcomed the agent: an agent holds connections to
    /// distinct replicas, and closes a second one to the same replica.
    pub replica: String,
    /// The hub's replicas now (the one that welcomed alone, for a stub that runs alone).
    pub members: Vec<String>,
}

/// Messages on a peer link's control stream. A peer link is dialled by the replica that holds
/// agent connections and carries requests *to* it, just as an agent connection does: the
/// dialing replica speaks first and announces its clusters; the listening replica opens a
/// request stream on the link for each request it forwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerControl {
    /// Dialer -> listener, first frame: who the dialer is. Its clusters follow in `Announce`
    /// frames (a hub with thousands of clusters does not fit one frame).
    Hello { protocol_version: u32, replica: String, build: String },
    /// Listener -> dialer: accepted, and the listener's own id (so the dialer knows it reached
    /// the member it meant to).
    Welcome { protocol_version: u32, replica: String },
    /// Dialer -> listener: clusters the dialer now holds agent connections for, and clusters it
    /// no longer does.
    Announce { added: Vec<String>, removed: Vec<String> },
}

/// First frame of a request stream on a peer link (the forwarding replica -> the replica that
/// holds an agent connection of the cluster); the `RequestHead` and body follow as on an agent
/// connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRequest {
    pub cluster: String,
    /// The request has no body and may be sent again (GET, HEAD, OPTIONS): the holder may retry
    /// it on another of its agent connections if the first fails or goes silent before any
    /// response byte.
    pub replayable: bool,
}

/// One HTTP header. Values are bytes: HTTP allows non-UTF-8 (obs-text) values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

/// First frame of a request stream (stub -> agent). The request body follows as raw bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHead {
    /// Assigned by the stub; both ends log it so one request can be followed across the tunnel.
    pub request_id: String,
    pub method: String,
    /// Path and query as the upstream should see them (the `/clusters/{c}` prefix removed).
    pub path_and_query: String,
    /// End-to-end headers of the caller (hop-by-hop headers already removed by the stub).
    pub headers: Vec<Header>,
    /// The caller's credential, which the agent verifies again before forwarding.
    pub credential: Option<String>,
}

/// Never prints the credential: a head in a log line must not hand out the caller's token.
impl std::fmt::Debug for RequestHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHead")
            .field("request_id", &self.request_id)
            .field("method", &self.method)
            .field("path_and_query", &self.path_and_query)
            .field("headers", &self.headers)
            .field("credential", &self.credential.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// First frame of a response (agent -> stub). The response body follows as raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<Header>,
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix (or an encoded message) exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME_LEN} bytes")]
    TooLarge { len: usize },
    /// The payload is not a valid encoding of the expected message.
    #[error("malformed frame payload")]
    Malformed(#[source] bincode::error::DecodeError),
    /// The payload decoded but left bytes over: the peer and we disagree on the message.
    #[error("frame payload has {extra} trailing bytes")]
    TrailingBytes { extra: usize },
    /// The message could not be serialised (cannot happen for the types above).
    #[error("cannot encode frame")]
    Encode(#[source] bincode::error::EncodeError),
}

fn codec() -> impl bincode::config::Config {
    // The limit stops a lying length inside the payload (a Vec that claims 2^60 items) from
    // allocating before decoding fails.
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Encodes `msg` as one frame (prefix + payload).
pub fn encode<T: Serialize>(msg: &T) -> Result<Bytes, FrameError> {
    let payload = bincode::serde::encode_to_vec(msg, bincode::config::standard()).map_err(FrameError::Encode)?;
    if payload.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len: payload.len() });
    }
    let mut out = BytesMut::with_capacity(PREFIX_LEN + payload.len());
    out.put_u32(payload.len() as u32);
    out.put_slice(&payload);
    Ok(out.freeze())
}

/// Reads the payload length from a prefix, refusing oversize frames before anything is read.
pub fn payload_len(prefix: [u8; PREFIX_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    Ok(len)
}

/// Decodes exactly one payload (the bytes after the prefix).
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len: payload.len() });
    }
    let (msg, used) = bincode::serde::decode_from_slice(payload, codec()).map_err(FrameError::Malformed)?;
    if used != payload.len() {
        return Err(FrameError::TrailingBytes { extra: payload.len() - used });
    }
    Ok(msg)
}

/// Decodes one frame from the front of `buf`. `Ok(None)` means "incomplete, read more";
/// `Ok(Some((msg, n)))` means the frame used the first `n` bytes.
pub fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(prefix) = buf.first_chunk::<PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = payload_len(*prefix)?;
    let Some(payload) = buf[PREFIX_LEN..].get(..len) else {
        return Ok(None);
    };
    Ok(Some((decode_payload(payload)?, PREFIX_LEN + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> impl Strategy<Value = Header> {
        ("[a-z-]{1,20}", proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(name, value)| Header { name, value })
    }

    fn request_head() -> impl Strategy<Value = RequestHead> {
        (
            "[a-z0-9]{0,16}",
            "[A-Z]{1,8}",
            "/[ -~]{0,80}",
            proptest::collection::vec(header(), 0..16),
            proptest::option::of("[ -~]{0,200}"),
        )
            .prop_map(|(request_id, method, path_and_query, headers, credential)| RequestHead {
                request_id,
                method,
                path_and_query,
                headers,
                credential,
            })
    }

    fn response_head() -> impl Strategy<Value = ResponseHead> {
        (100u16..600, proptest::collection::vec(header(), 0..16))
            .prop_map(|(status, headers)| ResponseHead { status, headers })
    }

    fn control() -> impl Strategy<Value = Control> {
        prop_oneof![
            (any::<u32>(), ".{0,40}", ".{0,40}", ".{0,40}").prop_map(|(v, c, n, b)| Control::Hello(Hello {
                protocol_version: v,
                cluster: c,
                agent_name: n,
                build: b
            })),
            (any::<u32>(), any::<u64>(), ".{0,40}", ".{0,40}", proptest::collection::vec("[a-z0-9-]{1,20}", 0..8))
                .prop_map(|(v, id, b, r, m)| {
                    Control::Welcome(Welcome {
                        protocol_version: v,
                        connection_id: id,
                        build: b,
                        replica: r,
                        members: m,
                    })
                }),
            Just(Control::Drain),
            Just(Control::DrainAck),
            proptest::collection::vec("[a-z0-9-]{1,20}", 0..8).prop_map(|replicas| Control::Members { replicas }),
        ]
    }

    fn peer_control() -> impl Strategy<Value = PeerControl> {
        let names = || proptest::collection::vec("[a-z0-9-]{1,20}", 0..50);
        prop_oneof![
            (any::<u32>(), ".{0,40}", ".{0,40}").prop_map(|(v, r, b)| PeerControl::Hello {
                protocol_version: v,
                replica: r,
                build: b
            }),
            (any::<u32>(), ".{0,40}").prop_map(|(v, r)| PeerControl::Welcome { protocol_version: v, replica: r }),
            (names(), names()).prop_map(|(added, removed)| PeerControl::Announce { added, removed }),
        ]
    }

    proptest! {
        #[test]
        fn request_heads_round_trip(head in request_head()) {
            let bytes = encode(&head).unwrap();
            let (back, used) = decode::<RequestHead>(&bytes).unwrap().unwrap();
            prop_assert_eq!(back, head);
            prop_assert_eq!(used, bytes.len());
        }

        #[test]
        fn response_heads_round_trip(head in response_head()) {
            let bytes = encode(&head).unwrap();
            prop_assert_eq!(decode::<ResponseHead>(&bytes).unwrap().unwrap().0, head);
        }

        #[test]
        fn control_frames_round_trip(msg in control()) {
            let bytes = encode(&msg).unwrap();
            prop_assert_eq!(decode::<Control>(&bytes).unwrap().unwrap().0, msg);
        }

        #[test]
        fn peer_requests_round_trip(cluster in "[a-z0-9-]{0,63}", replayable in any::<bool>()) {
            let msg = PeerRequest { cluster, replayable };
            let bytes = encode(&msg).unwrap();
            prop_assert_eq!(decode::<PeerRequest>(&bytes).unwrap().unwrap().0, msg);
        }

        #[test]
        fn peer_control_frames_round_trip(msg in peer_control()) {
            let bytes = encode(&msg).unwrap();
            prop_assert_eq!(decode::<PeerControl>(&bytes).unwrap().unwrap().0, msg);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode::<RequestHead>(&bytes);
            let _ = decode::<ResponseHead>(&bytes);
            let _ = decode::<Control>(&bytes);
            let _ = decode::<PeerControl>(&bytes);
            let _ = decode::<PeerRequest>(&bytes);
            let _ = decode_payload::<RequestHead>(&bytes);
        }

        #[test]
        fn a_frame_split_anywhere_decodes_once_whole(head in request_head(), split in any::<prop::sample::Index>()) {
            let bytes = encode(&head).unwrap();
            let at = split.index(bytes.len());
            // Every strict prefix is "incomplete", never an error and never a wrong message.
            prop_assert!(decode::<RequestHead>(&bytes[..at]).unwrap().is_none());
            // Feeding the rest completes it, with following bytes left alone.
            let mut stream = bytes.to_vec();
            stream.extend_from_slice(b"body bytes");
            let (back, used) = decode::<RequestHead>(&stream).unwrap().unwrap();
            prop_assert_eq!(back, head);
            prop_assert_eq!(&stream[used..], b"body bytes");
        }

        #[test]
        fn oversize_prefixes_are_refused_before_reading(len in (MAX_FRAME_LEN as u32 + 1)..=u32::MAX) {
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[0u8; 16]);
            let refused = matches!(decode::<RequestHead>(&bytes), Err(FrameError::TooLarge { .. }));
            prop_assert!(refused);
        }
    }

    #[test]
    fn oversize_messages_are_refused_on_encode() {
        let head = RequestHead {
            request_id: String::new(),
            method: "GET".into(),
            path_and_query: "/".into(),
            headers: vec![Header { name: "x-big".into(), value: vec![b'a'; MAX_FRAME_LEN] }],
            credential: None,
        };
        assert!(matches!(encode(&head), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn trailing_bytes_inside_a_payload_are_refused() {
        let mut payload = encode(&Control::Drain).unwrap()[PREFIX_LEN..].to_vec();
        payload.push(0);
        assert!(matches!(decode_payload::<Control>(&payload), Err(FrameError::TrailingBytes { extra: 1 })));
    }

    #[test]
    fn debug_output_never_shows_the_credential() {
        let head = RequestHead {
            request_id: "1".into(),
            method: "GET".into(),
            path_and_query: "/".into(),
            headers: vec![],
            credential: Some("eyJ.secret.token".into()),
        };
        let shown = format!("{head:?}");
        assert!(!shown.contains("secret") && shown.contains("<redacted>"), "{shown}");
    }
}
