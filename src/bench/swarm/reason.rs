//! Short names for why a simulated agent's dial failed or its connection ended, to count them
//! by kind in a storm: `timeout` (no answer within the idle timeout: the stub was down, or
//! too busy to finish the handshake), `refused` (the stub turned the dial away at once, beyond
//! its limit of handshakes in progress), `going_away` (the stub shut down), and so on. The
//! plain-words sentences of [`crate::transport::explain`] are for people; these are for tables.

use quinn::ConnectionError;

use crate::wire::codes::AppCode;

/// The name of a QUIC connection's end, as the dialer saw it.
pub fn of(e: &ConnectionError) -> &'static str {
    match e {
        ConnectionError::TimedOut => "timeout",
        ConnectionError::Reset => "reset",
        e if crate::transport::explain::refused_as_busy(e) => REFUSED,
        ConnectionError::ConnectionClosed(close) if (0x100..0x200).contains(&u64::from(close.error_code)) => {
            "tls_alert"
        }
        ConnectionError::ConnectionClosed(_) => "transport_close",
        ConnectionError::ApplicationClosed(close) => match AppCode::from_varint(close.error_code) {
            Some(AppCode::GoingAway) => "going_away",
            Some(AppCode::Revoked) => "revoked",
            Some(AppCode::Normal) => "closed",
            _ => "closed_by_stub",
        },
        ConnectionError::TransportError(_) => "transport_error",
        ConnectionError::VersionMismatch => "version_mismatch",
        ConnectionError::LocallyClosed => "locally_closed",
        ConnectionError::CidsExhausted => "cids_exhausted",
    }
}

/// The name of a dial the stub refused for being busy (too many handshakes in progress).
pub const REFUSED: &str = "refused";

/// The name of a welcome that did not come on a connection still open (the stub did not
/// answer the hello in time, or answered something else).
pub const NO_WELCOME: &str = "no_welcome";

/// The name of a dial the local endpoint refused to start.
pub const NOT_DIALLED: &str = "not_dialled";

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use quinn::{ApplicationClose, ConnectionClose, TransportErrorCode, VarInt};

    fn transport_close(code: TransportErrorCode) -> ConnectionError {
        ConnectionError::ConnectionClosed(ConnectionClose { error_code: code, frame_type: None, reason: Bytes::new() })
    }

    fn app_close(code: AppCode) -> ConnectionError {
        ConnectionError::ApplicationClosed(ApplicationClose { error_code: code.varint(), reason: Bytes::new() })
    }

    #[test]
    fn each_end_has_its_name() {
        assert_eq!(of(&ConnectionError::TimedOut), "timeout");
        assert_eq!(of(&ConnectionError::Reset), "reset");
        assert_eq!(of(&transport_close(TransportErrorCode::CONNECTION_REFUSED)), "refused");
        assert_eq!(of(&transport_close(TransportErrorCode::crypto(0x31))), "tls_alert");
        assert_eq!(of(&transport_close(TransportErrorCode::PROTOCOL_VIOLATION)), "transport_close");
        assert_eq!(of(&app_close(AppCode::GoingAway)), "going_away");
        assert_eq!(of(&app_close(AppCode::Revoked)), "revoked");
        assert_eq!(of(&app_close(AppCode::Normal)), "closed");
        assert_eq!(of(&app_close(AppCode::Duplicate)), "closed_by_stub");
        let unknown = ApplicationClose { error_code: VarInt::from_u32(9999), reason: Bytes::new() };
        assert_eq!(of(&ConnectionError::ApplicationClosed(unknown)), "closed_by_stub");
        assert_eq!(of(&ConnectionError::LocallyClosed), "locally_closed");
    }
}
