//! Plain words for a connection that the listener refused or that was lost, as the dialer
//! reports them: TLS alerts from the listener's certificate verifier, tether's application
//! codes ([`AppCode`]), and QUIC, HTTP/2 and TLS errors. The listener is always a tether stub,
//! so the words name it.
//!
//! In TLS 1.3 the dialer's handshake completes before the listener has judged its
//! certificate, so a refusal arrives later, on the first stream operation, as a closed
//! connection carrying a TLS alert (QUIC crypto error `0x100 + alert`, or a TLS alert record on
//! TCP). These functions turn each form into the same sentence.

use std::io;

use quinn::{ConnectionError, TransportErrorCode};

use crate::errors;
use crate::wire::codes::AppCode;

/// Whether the stub refused a QUIC dial for being busy (too many handshakes in progress): it
/// answers such a dial at once with `CONNECTION_REFUSED`, before any Retry.
pub fn refused_as_busy(e: &ConnectionError) -> bool {
    matches!(e, ConnectionError::ConnectionClosed(close) if close.error_code == TransportErrorCode::CONNECTION_REFUSED)
}

/// A lost or refused QUIC connection.
pub fn closed(e: &ConnectionError) -> String {
    match e {
        e if refused_as_busy(e) => {
            "the stub is busy: too many agents are connecting to it at once, so it refused this one \
             before any handshake (the agent waits longer before it dials again)"
                .into()
        }
        ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            match code.checked_sub(0x100).filter(|a| *a < 0x100) {
                Some(alert) => format!("refused by stub: {}", tls_alert(alert as u8)),
                None => format!("stub closed the connection: {close}"),
            }
        }
        ConnectionError::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason);
            match AppCode::from_varint(close.error_code) {
                Some(AppCode::IdentityMismatch) => format!("refused by stub: {reason}"),
                Some(code) => format!("stub closed the connection: {} ({reason})", code.describe()),
                None => format!("stub closed the connection with code {} ({reason})", close.error_code),
            }
        }
        ConnectionError::TransportError(t) if is_crypto(t.code) => {
            format!(
                "cannot trust the stub: {t} (check --server-name and that the stub's certificate is signed by this CA)"
            )
        }
        ConnectionError::TimedOut => "stub did not answer (timed out); is it running and reachable over UDP?".into(),
        other => format!("connection lost: {other}"),
    }
}

/// A failed TCP dial, TLS handshake or HTTP/2 handshake.
pub fn tcp_failure(e: &io::Error) -> String {
    match rustls_error_in(e) {
        Some(rustls::Error::AlertReceived(alert)) => {
            return format!("refused by stub: {}", tls_alert(u8::from(*alert)));
        }
        Some(rustls::Error::InvalidCertificate(problem)) => {
            return format!(
                "cannot trust the stub: {problem:?} (check --server-name and that the stub's certificate is signed by this CA)"
            );
        }
        _ => {}
    }
    format!("connection failed: {}", errors::chain(e))
}

/// Why an HTTP/2 connection ended, for the TCP fallback.
pub fn h2_end(e: &h2::Error) -> String {
    if let Some(reason) = e.reason().and_then(AppCode::from_h2_reason) {
        return format!("peer closed the connection: {}", reason.describe());
    }
    format!("connection lost: {e}")
}

/// The rustls error somewhere inside `e`. `io::Error::source` skips the error it wraps, and h2
/// keeps its I/O error to itself, so each layer is opened by hand.
fn rustls_error_in(e: &io::Error) -> Option<&rustls::Error> {
    let mut node: &(dyn std::error::Error + 'static) = e.get_ref()?;
    for _ in 0..8 {
        if let Some(found) = node.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        node = if let Some(io) = node.downcast_ref::<io::Error>() {
            io.get_ref()?
        } else if let Some(h2) = node.downcast_ref::<h2::Error>() {
            h2.get_io()?.get_ref()?
        } else {
            node.source()?
        };
    }
    None
}

fn is_crypto(code: TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

/// The TLS alerts the stub's verifier sends, and what the dialer should do about each.
fn tls_alert(alert: u8) -> String {
    match alert {
        0x31 => "certificate not in the stub's whitelist (TLS alert access_denied); register its fingerprint with `tether certs agent --register` or add it to the whitelist".into(),
        0x30 => "certificate is not signed by the stub's CA (TLS alert unknown_ca)".into(),
        0x2d => "certificate has expired or is not yet valid (TLS alert certificate_expired)".into(),
        0x2a | 0x2b | 0x2e => "certificate was rejected (TLS alert bad_certificate)".into(),
        0x33 => "certificate's signature does not verify: it was signed by another CA than the stub's (TLS alert decrypt_error)".into(),
        0x74 => "the stub requires a client certificate (TLS alert certificate_required)".into(),
        0x78 => "the stub does not speak tether/1 (TLS alert no_application_protocol)".into(),
        other => format!("TLS alert {other:#x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_and_codes_read_as_words() {
        let refused = ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: TransportErrorCode::crypto(0x31),
            frame_type: None,
            reason: bytes::Bytes::new(),
        });
        assert!(closed(&refused).starts_with("refused by stub: certificate not in the stub's whitelist"));
        let revoked = ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: AppCode::Revoked.varint(),
            reason: bytes::Bytes::from_static(b"certificate removed from the whitelist"),
        });
        assert_eq!(
            closed(&revoked),
            "stub closed the connection: certificate was removed from the stub's whitelist (certificate removed from the whitelist)"
        );
        assert!(closed(&ConnectionError::TimedOut).contains("timed out"));
        let busy = ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: TransportErrorCode::CONNECTION_REFUSED,
            frame_type: None,
            reason: bytes::Bytes::new(),
        });
        assert!(closed(&busy).starts_with("the stub is busy"), "{}", closed(&busy));
    }
}
