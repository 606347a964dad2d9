//! QUIC application error codes: the one list of reasons a stub or agent closes a connection or
//! resets a stream. Both ends log the name, so a refusal reads as words, not as a number.

use quinn::VarInt;

/// Where tether's codes start among HTTP/2 error codes ("te7e" plus the code).
const H2_BASE: u32 = 0x7e7e_0000;

/// Why a connection was closed or a stream reset. The numbers are part of the wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum AppCode {
    /// Orderly close with nothing wrong.
    Normal = 0,
    /// The peer sent something the protocol does not allow (bad frame, wrong order, oversize).
    ProtocolViolation = 1,
    /// The agent's hello claims a cluster other than its certificate's whitelist entry.
    IdentityMismatch = 2,
    /// The agent speaks a protocol version this stub does not.
    VersionMismatch = 3,
    /// The stub is shutting down; reconnect (to it or another replica) later.
    GoingAway = 4,
    /// The agent's fingerprint was removed from the whitelist.
    Revoked = 5,
    /// The agent is draining: it finishes what it has and takes nothing new.
    Draining = 6,
    /// Stream level: the caller went away, so the request is abandoned.
    Cancelled = 7,
    /// Stream level: the upstream API server failed in the middle of a response.
    UpstreamFailed = 8,
    /// The peer did not send its first frame in time.
    Timeout = 9,
    /// An unexpected internal failure.
    Internal = 10,
    /// The agent already holds a connection to this stub replica (it wants distinct ones).
    Duplicate = 11,
    /// A peer link from a replica that is not a member of the hub (or no longer is).
    NotMember = 12,
}

impl AppCode {
    const ALL: [AppCode; 13] = [
        AppCode::Normal,
        AppCode::ProtocolViolation,
        AppCode::IdentityMismatch,
        AppCode::VersionMismatch,
        AppCode::GoingAway,
        AppCode::Revoked,
        AppCode::Draining,
        AppCode::Cancelled,
        AppCode::UpstreamFailed,
        AppCode::Timeout,
        AppCode::Internal,
        AppCode::Duplicate,
        AppCode::NotMember,
    ];

    /// The code as QUIC carries it.
    pub fn varint(self) -> VarInt {
        VarInt::from_u32(self as u32)
    }

    /// The code a peer sent, if it is one of ours.
    pub fn from_varint(code: VarInt) -> Option<AppCode> {
        Self::ALL.into_iter().find(|c| c.varint() == code)
    }

    /// The code as an HTTP/2 error code (TCP fallback), in a range of its own so that it is
    /// never mistaken for one of HTTP/2's standard codes.
    pub fn h2_reason(self) -> h2::Reason {
        h2::Reason::from(H2_BASE + self as u32)
    }

    /// The code an HTTP/2 peer sent, if it is one of ours.
    pub fn from_h2_reason(reason: h2::Reason) -> Option<AppCode> {
        Self::ALL.into_iter().find(|c| c.h2_reason() == reason)
    }

    /// Plain words for logs and for the agent's report of a refusal.
    pub fn describe(self) -> &'static str {
        match self {
            AppCode::Normal => "closed normally",
            AppCode::ProtocolViolation => "protocol violation",
            AppCode::IdentityMismatch => "cluster claim does not match the certificate's whitelist entry",
            AppCode::VersionMismatch => "protocol version not supported by the peer",
            AppCode::GoingAway => "peer is going away (shutting down)",
            AppCode::Revoked => "certificate was removed from the stub's whitelist",
            AppCode::Draining => "agent is draining",
            AppCode::Cancelled => "request cancelled by the caller",
            AppCode::UpstreamFailed => "upstream failed mid-response",
            AppCode::Timeout => "peer did not send its first frame in time",
            AppCode::Internal => "internal error",
            AppCode::Duplicate => "already connected to this stub replica",
            AppCode::NotMember => "not a member of the hub",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_is_distinct() {
        for (i, code) in AppCode::ALL.iter().enumerate() {
            assert_eq!(AppCode::from_varint(code.varint()), Some(*code));
            assert_eq!(*code as usize, i, "codes are dense and listed in order");
        }
        assert_eq!(AppCode::from_varint(VarInt::from_u32(9999)), None);
    }
}
