//! Which transport the agent dials, and when it moves. Pure: events in, decisions out, so the
//! rules are property-tested.
//!
//! With `--transport auto` every dial is a **race**, the way browsers race IPv6 and IPv4: the
//! preferred transport starts, the other starts [`HEAD_START`] later if the first has not been
//! welcomed by then, and the first to be welcomed serves (QUIC if both are at once). A network
//! that blocks UDP therefore costs a quarter of a second, not two handshake timeouts. The
//! preferred transport is QUIC, unless the last connection that worked was TCP (UDP is probably
//! still blocked: TCP starts first and QUIC follows) or TCP goes through an HTTP proxy (the way
//! out of this network). While connected over TCP, QUIC is tried again beside it every
//! `--quic-retry`, and a QUIC connection that is welcomed takes over (make before break); so
//! does a TCP connection when a QUIC one goes silent ([`TransportChoice::quic_went_silent`]).
//!
//! `--transport quic` and `--transport tcp` dial only that transport.

use std::time::Duration;

use tokio::time::Instant;

use crate::transport::Transport;

/// Which transports the agent may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportMode {
    /// Both, raced; QUIC preferred, and returned to as soon as it works again.
    Auto,
    Quic,
    Tcp,
}

/// How long the preferred transport of a race has before the other starts too (Happy
/// Eyeballs' connection attempt delay).
pub const HEAD_START: Duration = Duration::from_millis(250);

/// Why a connection uses its transport: the agent's log and metrics say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `--transport quic` or `--transport tcp`: the only one allowed.
    Only,
    /// Won the race, having started first.
    Preferred,
    /// Won the race, having started [`HEAD_START`] after the other, which had not been
    /// welcomed by then.
    Raced,
    /// QUIC worked again while on TCP and took over.
    QuicBack,
    /// The QUIC connection went silent (UDP stopped getting through); TCP took over before it
    /// was declared dead.
    QuicSilent,
}

impl Reason {
    /// For logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Only => "the only transport allowed",
            Reason::Preferred => "preferred, and welcomed first",
            Reason::Raced => "the preferred one was not welcomed in time",
            Reason::QuicBack => "QUIC works again",
            Reason::QuicSilent => "the QUIC connection went silent",
        }
    }

    /// Short, for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Only => "only",
            Reason::Preferred => "preferred",
            Reason::Raced => "raced",
            Reason::QuicBack => "quic-back",
            Reason::QuicSilent => "quic-silent",
        }
    }
}

/// How the next dial goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// One transport.
    Only(Transport),
    /// `first`, then the other after [`HEAD_START`] unless `first` was welcomed.
    Race { first: Transport },
}

/// The state of the choice.
#[derive(Debug, Clone)]
pub struct TransportChoice {
    mode: TransportMode,
    /// TCP dials go through an HTTP proxy.
    proxied: bool,
    quic_retry: Duration,
    /// The transport of the last connection welcomed (auto mode's memory).
    worked: Option<Transport>,
    /// While connected over TCP in `auto` mode: when to try QUIC again.
    probe_at: Option<Instant>,
}

impl TransportChoice {
    /// `proxied`: TCP dials go through an HTTP proxy, the way out of this network.
    pub fn new(mode: TransportMode, quic_retry: Duration, proxied: bool) -> TransportChoice {
        TransportChoice { mode, proxied, quic_retry, worked: None, probe_at: None }
    }

    /// How to dial next.
    pub fn plan(&self) -> Plan {
        match self.mode {
            TransportMode::Quic => Plan::Only(Transport::Quic),
            TransportMode::Tcp => Plan::Only(Transport::Tcp),
            TransportMode::Auto => Plan::Race { first: self.preferred() },
        }
    }

    /// What a race starts with: TCP behind a proxy or after TCP was what worked last, else QUIC.
    fn preferred(&self) -> Transport {
        if self.proxied || self.worked == Some(Transport::Tcp) { Transport::Tcp } else { Transport::Quic }
    }

    /// A connection over `transport` was welcomed at `now` (a first one, or one that took over).
    pub fn connected(&mut self, transport: Transport, now: Instant) {
        let auto = self.mode == TransportMode::Auto;
        if auto {
            self.worked = Some(transport);
        }
        self.probe_at = (auto && transport == Transport::Tcp).then_some(now + self.quic_retry);
    }

    /// The connection was lost. What worked is remembered for the next race.
    pub fn lost(&mut self) {
        self.probe_at = None;
    }

    /// When to try QUIC beside the connection in use; `None` when not on TCP in `auto` mode.
    pub fn probe_at(&self) -> Option<Instant> {
        self.probe_at
    }

    /// QUIC was tried at `now` and still does not work: try again after `--quic-retry`.
    pub fn probe_failed(&mut self, now: Instant) {
        if self.probe_at.is_some() {
            self.probe_at = Some(now + self.quic_retry);
        }
    }

    /// The QUIC connection in use has been silent long enough to be suspect: whether to dial
    /// TCP beside it now (auto mode only; a fixed mode waits for QUIC to come back or die).
    pub fn quic_went_silent(&self) -> bool {
        self.mode == TransportMode::Auto
    }

    pub fn quic_retry(&self) -> Duration {
        self.quic_retry
    }
}

/// The transport a race starts second.
pub fn other(transport: Transport) -> Transport {
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
        Connected(Transport),
        Lost,
        ProbeFailed,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(Event::Connected(Transport::Quic)),
            Just(Event::Connected(Transport::Tcp)),
            Just(Event::Lost),
            Just(Event::ProbeFailed),
        ]
    }

    fn mode() -> impl Strategy<Value = TransportMode> {
        prop_oneof![Just(TransportMode::Auto), Just(TransportMode::Quic), Just(TransportMode::Tcp)]
    }

    #[test]
    fn auto_races_quic_first_then_remembers_that_tcp_worked() {
        let mut choice = TransportChoice::new(TransportMode::Auto, Duration::from_secs(30), false);
        assert_eq!(choice.plan(), Plan::Race { first: Transport::Quic });
        let t0 = Instant::now();
        choice.connected(Transport::Tcp, t0);
        choice.lost();
        assert_eq!(choice.plan(), Plan::Race { first: Transport::Tcp }, "UDP was blocked last time");
        choice.connected(Transport::Quic, t0);
        choice.lost();
        assert_eq!(choice.plan(), Plan::Race { first: Transport::Quic });
    }

    #[test]
    fn behind_a_proxy_auto_races_tcp_first_and_still_tries_quic_beside_it() {
        let mut choice = TransportChoice::new(TransportMode::Auto, Duration::from_secs(30), true);
        assert_eq!(choice.plan(), Plan::Race { first: Transport::Tcp });
        let t0 = Instant::now();
        choice.connected(Transport::Tcp, t0);
        assert_eq!(choice.probe_at(), Some(t0 + Duration::from_secs(30)));
        choice.connected(Transport::Quic, t0);
        choice.lost();
        assert_eq!(choice.plan(), Plan::Race { first: Transport::Tcp }, "the proxy is still the way out");
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
            let start = Instant::now();
            let mut last_worked = None;
            for (i, event) in events.into_iter().enumerate() {
                let now = start + Duration::from_secs(i as u64);
                // Fixed modes dial their one transport; auto races, preferring QUIC unless the
                // proxy or the last connection says TCP.
                let expected = match mode {
                    TransportMode::Quic => Plan::Only(Transport::Quic),
                    TransportMode::Tcp => Plan::Only(Transport::Tcp),
                    TransportMode::Auto if proxied || last_worked == Some(Transport::Tcp) => Plan::Race { first: Transport::Tcp },
                    TransportMode::Auto => Plan::Race { first: Transport::Quic },
                };
                prop_assert_eq!(choice.plan(), expected);
                prop_assert_eq!(choice.quic_went_silent(), mode == TransportMode::Auto);
                match event {
                    Event::Connected(transport) => {
                        let transport = match mode {
                            TransportMode::Quic => Transport::Quic,
                            TransportMode::Tcp => Transport::Tcp,
                            TransportMode::Auto => transport,
                        };
                        choice.connected(transport, now);
                        if mode == TransportMode::Auto {
                            last_worked = Some(transport);
                        }
                        let probes = mode == TransportMode::Auto && transport == Transport::Tcp;
                        prop_assert_eq!(choice.probe_at(), probes.then_some(now + retry));
                    }
                    Event::Lost => {
                        choice.lost();
                        prop_assert_eq!(choice.probe_at(), None);
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
            }
        }
    }
}
