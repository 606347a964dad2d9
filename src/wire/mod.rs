//! The wire protocol between agent and stub (ALPN `tether/1`, over QUIC or the TCP fallback).
//!
//! - [`frame`]: the messages and their pure encoding (length prefix + bincode, hard size limit).
//!   It is the only module that knows the codec.
//! - [`io`]: reading and writing one frame on a stream, with a timeout for the first frame.
//! - [`codes`]: the application error codes that stub and agent close connections and reset
//!   streams with (QUIC codes, and HTTP/2 codes of their own on the TCP fallback).
//!
//! A connection carries one control stream (`Hello` -> `Welcome`, `Members` when the hub's
//! replicas change, later `Drain` -> `DrainAck`)
//! and one bidirectional stream per API request, opened by the stub (`RequestHead`, raw request
//! body until FIN; `ResponseHead`, raw response body until FIN). Over QUIC the agent opens the
//! control stream; over the TCP fallback the stub does, because there the stub is the HTTP/2
//! client and only a client opens streams. Either way the agent speaks first on it.
//!
//! A peer link between two stub replicas (ALPN `tether-peer/1`) has the same shape, with the
//! replica that holds agent connections in the agent's place: `PeerControl` frames on its
//! control stream, and one request stream per forwarded request, carrying the same frames.

pub mod codes;
pub mod frame;
pub mod io;

/// The ALPN protocol id both ends require; a peer that speaks anything else fails the handshake.
pub const ALPN: &[u8] = b"tether/1";

/// The ALPN protocol id of peer links between stub replicas: an agent that dials a peer port by
/// mistake (or a replica that dials an agent port) fails the handshake.
pub const PEER_ALPN: &[u8] = b"tether-peer/1";

/// Version carried in `Hello`/`Welcome` (and on peer links). Bumped on any incompatible change
/// of the frames: 2 added the replica and member count to `Welcome`.
pub const PROTOCOL_VERSION: u32 = 2;
