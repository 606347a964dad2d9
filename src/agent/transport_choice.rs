//! Which transport the agent dials next: with `--transport auto`, QUIC first; after
//! [`QUIC_FAILURES_BEFORE_TCP`] failed QUIC dials in a row, TCP once, and so on while nothing
//! works; a lost connection starts over with QUIC. While connected over TCP in `auto` mode,
//! QUIC is tried again every `--quic-retry`, and a QUIC connection that is welcomed takes over
//! (make before break). Behind an HTTP proxy (`--proxy`, `HTTPS_PROXY`), the way out is the
//! proxy, so `auto` starts with TCP through it instead, and turns to QUIC after as many failed
//! TCP dials; on TCP it still tries QUIC every `--quic-retry`, in case UDP does get out.
//! Pure: events in, decisions out, so the rules are property-tested.

use std::time::Duration;

use tokio::time::Instant;

use crate::transport::Transport;

/// Which transports the agent may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportMode {
    /// QUIC; after repeated failures TLS over TCP, and back to QUIC as soon as it works again.
    Auto,
    Quic,
    Tcp,
}

/// In `auto` mode, QUIC dials that fail in a row before the next dial is over TCP.
pub const QUIC_FAILURES_BEFORE_TCP: u32 = 2;

/// The state of the choice.
#[derive(Debug, Clone)]
pub struct TransportChoice {
    mode: TransportMode,
    /// What `auto` dials first, and starts over with: QUIC, or TCP behind a proxy.
    first: Transport,
    quic_retry: Duration,
    next: Transport,
    quic_failures: u32,
    /// While connected over TCP in `auto` mode: when to try QUIC again.
    probe_at: Option<Instant>,
}

impl TransportChoice {
    /// `proxied`: TCP dials go through an HTTP proxy, the way out of this network.
    pub fn new(mode: TransportMode, quic_retry: Duration, proxied: bool) -> TransportChoice {
        let first = match mode {
            TransportMode::Tcp => Transport::Tcp,
            TransportMode::Quic => Transport::Quic,
            TransportMode::Auto if proxied => Transport::Tcp,
            TransportMode::Auto => Transport::Quic,
        };
        TransportChoice { mode, first, quic_retry, next: first, quic_failures: 0, probe_at: None }
    }

    /// What `auto` dials first (QUIC, or TCP behind a proxy).
    pub fn first(&self) -> Transport {
        self.first
    }

    /// The transport of the next dial.
    pub fn next(&self) -> Transport {
        self.next
    }

    /// The last dial (over [`Self::next`]) failed. True when that moves `auto` mode to the
    /// other transport (TCP; QUIC behind a proxy).
    pub fn dial_failed(&mut self) -> bool {
        if self.mode != TransportMode::Auto {
            return false;
        }
        if self.next == self.first {
            self.quic_failures += 1;
            if self.quic_failures >= QUIC_FAILURES_BEFORE_TCP {
                self.next = other(self.first);
                return true;
            }
        } else {
            self.next = self.first;
            self.quic_failures = 0;
        }
        false
    }

    /// A connection over `transport` was welcomed at `now` (a first one, or one that took over).
    pub fn connected(&mut self, transport: Transport, now: Instant) {
        self.quic_failures = 0;
        self.probe_at =
            (self.mode == TransportMode::Auto && transport == Transport::Tcp).then_some(now + self.quic_retry);
    }

    /// The connection was lost: `auto` mode starts over with its first transport.
    pub fn lost(&mut self) {
        self.probe_at = None;
        if self.mode == TransportMode::Auto {
            self.next = self.first;
            self.quic_failures = 0;
        }
    }

    /// When to try QUIC beside the connection in use; `None` when not on the TCP fallback.
    pub fn probe_at(&self) -> Option<Instant> {
        self.probe_at
    }

    /// QUIC was tried at `now` and still does not work: try again after `--quic-retry`.
    pub fn probe_failed(&mut self, now: Instant) {
        if self.probe_at.is_some() {
            self.probe_at = Some(now + self.quic_retry);
        }
    }

    pub fn quic_retry(&self) -> Duration {
        self.quic_retry
    }
}

fn other(transport: Transport) -> Transport {
    match transport {
        Transport::Quic => Transport::Tcp,
        Transport::Tcp => Transport::Quic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, Copy)]
    enum Event {
        DialFailed,
        Connected,
        Lost,
        ProbeFailed,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            3 => Just(Event::DialFailed),
            1 => Just(Event::Connected),
            1 => Just(Event::Lost),
            1 => Just(Event::ProbeFailed),
        ]
    }

    fn mode() -> impl Strategy<Value = TransportMode> {
        prop_oneof![Just(TransportMode::Auto), Just(TransportMode::Quic), Just(TransportMode::Tcp)]
    }

    #[test]
    fn auto_tries_quic_twice_then_tcp_once_while_nothing_works() {
        let mut choice = TransportChoice::new(TransportMode::Auto, Duration::from_secs(30), false);
        let mut dialled = Vec::new();
        for _ in 0..6 {
            dialled.push(choice.next());
            choice.dial_failed();
        }
        use Transport::{Quic, Tcp};
        assert_eq!(dialled, [Quic, Quic, Tcp, Quic, Quic, Tcp]);
    }

    #[test]
    fn behind_a_proxy_auto_tries_tcp_first_and_quic_after_two_failures() {
        let mut choice = TransportChoice::new(TransportMode::Auto, Duration::from_secs(30), true);
        let mut dialled = Vec::new();
        for _ in 0..6 {
            dialled.push(choice.next());
            choice.dial_failed();
        }
        use Transport::{Quic, Tcp};
        assert_eq!(dialled, [Tcp, Tcp, Quic, Tcp, Tcp, Quic]);
        // Connected over TCP through the proxy: QUIC is still tried beside it.
        let t0 = Instant::now();
        choice.connected(Tcp, t0);
        assert_eq!(choice.probe_at(), Some(t0 + Duration::from_secs(30)));
        choice.lost();
        assert_eq!(choice.next(), Tcp);
    }

    #[test]
    fn on_tcp_quic_is_tried_again_every_retry_period() {
        let retry = Duration::from_secs(30);
        let mut choice = TransportChoice::new(TransportMode::Auto, retry, false);
        let t0 = Instant::now();
        choice.connected(Transport::Tcp, t0);
        assert_eq!(choice.probe_at(), Some(t0 + retry));
        choice.probe_failed(t0 + retry);
        assert_eq!(choice.probe_at(), Some(t0 + 2 * retry));
        choice.connected(Transport::Quic, t0 + 2 * retry);
        assert_eq!(choice.probe_at(), None, "back on QUIC: nothing to probe");
    }

    proptest! {
        #[test]
        fn the_rules_hold_for_any_sequence_of_events(
            mode in mode(),
            proxied in any::<bool>(),
            events in proptest::collection::vec(event(), 0..60),
        ) {
            let retry = Duration::from_secs(30);
            let mut choice = TransportChoice::new(mode, retry, proxied);
            // Auto dials QUIC first, TCP first behind a proxy; the fixed modes ignore the proxy.
            let first = match mode {
                TransportMode::Auto if proxied => Transport::Tcp,
                TransportMode::Tcp => Transport::Tcp,
                _ => Transport::Quic,
            };
            prop_assert_eq!(choice.next(), first);
            let start = Instant::now();
            // Transports dialled since the last welcome or loss.
            let mut failing: Vec<Transport> = Vec::new();
            for (i, event) in events.into_iter().enumerate() {
                let now = start + Duration::from_secs(i as u64);
                let next = choice.next();
                match mode {
                    TransportMode::Quic => prop_assert_eq!(next, Transport::Quic),
                    TransportMode::Tcp => prop_assert_eq!(next, Transport::Tcp),
                    TransportMode::Auto => {}
                }
                match event {
                    Event::DialFailed => {
                        failing.push(next);
                        choice.dial_failed();
                    }
                    Event::Connected => {
                        failing.clear();
                        choice.connected(next, now);
                        let probes = mode == TransportMode::Auto && next == Transport::Tcp;
                        prop_assert_eq!(choice.probe_at(), probes.then_some(now + retry));
                    }
                    Event::Lost => {
                        failing.clear();
                        choice.lost();
                        prop_assert_eq!(choice.probe_at(), None);
                        if mode == TransportMode::Auto {
                            prop_assert_eq!(choice.next(), first, "a lost connection starts over with the first");
                        }
                    }
                    Event::ProbeFailed => {
                        let probing = choice.probe_at().is_some();
                        choice.probe_failed(now);
                        prop_assert_eq!(choice.probe_at().is_some(), probing);
                        if probing {
                            prop_assert_eq!(choice.probe_at(), Some(now + retry));
                        }
                    }
                }
                if mode == TransportMode::Auto {
                    // While failing: never two dials of the second transport in a row, and never
                    // more of the first in a row than the limit.
                    let second = other(first);
                    prop_assert!(!failing.windows(2).any(|w| w == [second, second]));
                    let first_run = failing.iter().rev().take_while(|t| **t == first).count();
                    prop_assert!(first_run <= QUIC_FAILURES_BEFORE_TCP as usize);
                }
            }
        }
    }
}
