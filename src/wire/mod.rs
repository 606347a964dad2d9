//! The wire protocol between agent and stub (QUIC, ALPN `tether/1`).
//!
//! - [`frame`]: the messages and their pure encoding (length prefix + bincode, hard size limit).
//!   It is the only module that knows the codec.
//! - [`io`]: reading and writing one frame on a stream, with a timeout for the first frame.
//! - [`codes`]: the QUIC application error codes that stub and agent close connections and
//!   reset streams with.
//!
//! A connection carries one control stream (opened by the agent: `Hello` -> `Welcome`, later
//! `Drain`) and one bidirectional stream per API request (opened by the stub: `RequestHead`,
//! raw request body until FIN; `ResponseHead`, raw response body until FIN).

pub mod codes;
pub mod frame;
pub mod io;

/// The ALPN protocol id both ends require; a peer that speaks anything else fails the handshake.
pub const ALPN: &[u8] = b"tether/1";

/// Version carried in `Hello`/`Welcome`. Bumped on any incompatible change of the frames.
pub const PROTOCOL_VERSION: u32 = 1;
