//! Echoes: whether what the dialer sends still reaches the listener, asked of the listener's
//! application. The dialer sends a QUIC datagram `tether-echo:N`; the listener sends it back.
//!
//! The transport's own signals cannot tell when only the dialer's packets are lost (UDP blocked
//! one way, a NAT that lost its mapping): the listener's packets still arrive, and they carry
//! acknowledgement frames (repeated, not new) until the listener's idle timeout ends the
//! connection. An echo comes back only if both ways work.
//!
//! A listener of an older build does not answer; the dialer then never sees an echo and relies
//! on the idle timeout as before ([`Echoes::answering`]). A dialer of an older build sends
//! none. Over TCP there are none (HTTP/2 PINGs already answer both ways).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};

use super::Connection;

/// What an echo request starts with (the listener's own probes are `?`).
pub const PREFIX: &[u8] = b"tether-echo:";

/// The listener's side: sends every echo request on `conn` back until the connection ends.
pub async fn answer(conn: Connection) {
    let Connection::Quic(quic) = conn else { return };
    while let Ok(datagram) = quic.read_datagram().await {
        if datagram.starts_with(PREFIX) {
            let _ = quic.send_datagram(datagram);
        }
    }
}

/// The dialer's side: echo requests sent, and answers received, on one QUIC connection.
#[derive(Debug, Default)]
pub struct Echoes {
    asked: AtomicU64,
    answered: AtomicU64,
}

impl Echoes {
    /// Starts counting the answers on `conn` (until it ends); `None` over TCP.
    pub fn start(conn: &Connection) -> Option<Arc<Echoes>> {
        let Connection::Quic(quic) = conn else { return None };
        let echoes = Arc::new(Echoes::default());
        let (quic, counted) = (quic.clone(), echoes.clone());
        tokio::spawn(async move {
            // The listener's liveness probes (`?`) arrive here too; only echoes count.
            while let Ok(datagram) = quic.read_datagram().await {
                if datagram.starts_with(PREFIX) {
                    counted.answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Some(echoes)
    }

    /// Sends one echo request on `conn`.
    pub fn ask(&self, conn: &Connection) {
        let Connection::Quic(quic) = conn else { return };
        let n = self.asked.fetch_add(1, Ordering::Relaxed);
        let mut datagram = BytesMut::with_capacity(PREFIX.len() + 20);
        datagram.put_slice(PREFIX);
        datagram.put_slice(n.to_string().as_bytes());
        let _ = quic.send_datagram(Bytes::from(datagram));
    }

    /// Answers received so far: when it stops moving while requests go out, the listener no
    /// longer hears this side.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Whether the listener answers echoes at all (it has, at least once).
    pub fn answering(&self) -> bool {
        self.answered() > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::quic::testing::loopback_pair;

    #[tokio::test]
    async fn the_listener_answers_and_the_dialer_counts_only_echoes() {
        let (dialer, listener) = loopback_pair().await;
        let (dialer, listener) = (Connection::Quic(dialer), Connection::Quic(listener));
        tokio::spawn(answer(listener.clone()));
        let echoes = Echoes::start(&dialer).unwrap();
        // The listener's own probes are no echoes.
        listener.probe();
        for _ in 0..3 {
            echoes.ask(&dialer);
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while echoes.answered() < 3 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("three echoes answered");
        assert!(echoes.answering());
        assert_eq!(echoes.answered(), 3);
    }

    #[tokio::test]
    async fn a_listener_that_does_not_answer_leaves_the_count_at_zero() {
        let (dialer, listener) = loopback_pair().await;
        let dialer = Connection::Quic(dialer);
        let echoes = Echoes::start(&dialer).unwrap();
        echoes.ask(&dialer);
        // The request arrives (the listener reads it), and nothing comes back.
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), listener.read_datagram()).await;
        assert!(got.unwrap().unwrap().starts_with(PREFIX));
        tokio::task::yield_now().await;
        assert!(!echoes.answering());
    }
}
