//! `tether link`: an emulated bad link on this machine, for tests and benchmarks. The kernel
//! here has no netem, so the link is a userspace wire between two TUN devices: one inside a
//! network namespace of its own (where a stub runs), one in the namespace `tether link` was
//! started in (where agents run). Every IP packet crossing it, TCP or UDP alike, goes through a
//! [`shaper::Shaper`] per direction: loss, delay, jitter and a rate limit, reproducible from a
//! seed. A second, clean path (a veth pair) reaches the same namespace, so that front-door
//! clients can be measured without the loss.
//!
//! ```text
//!   namespace NAME                          the caller's namespace
//!   10.201.N.1 tlNn ===(lossy wire)=== tlNr 10.201.N.2     agents dial 10.201.N.1
//!   10.202.N.1 tcNn ---(veth, clean)-- tcNr 10.202.N.2     clients dial 10.202.N.1
//! ```
//!
//! The process owns everything it makes: on SIGINT, SIGTERM or the end of `--lifetime` it deletes
//! the namespace (and with it the veth pair); the TUN devices vanish with the process, even
//! after `kill -9` (the namespace then stays until `ip netns del NAME`).
//!
//! - [`shaper`]: the impairment model (pure, property-tested).
//! - [`tun`]: TUN devices.

pub mod shaper;
pub mod tun;

use std::collections::VecDeque;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use shaper::{Impairment, Shaper};
use tun::Tun;

/// What `tether link` needs.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The network namespace to create (where the stub runs).
    pub name: String,
    /// Picks the link's subnets (10.201.N.0/24, 10.202.N.0/24) and device names.
    pub index: u8,
    /// Applied to each direction.
    pub impairment: Impairment,
    pub seed: u64,
    /// Packets queued per direction before the link drops new ones (a router's buffer).
    pub queue_limit: usize,
    /// The link takes itself down after this long, so a forgotten one does not stay.
    pub lifetime: Duration,
}

impl LinkConfig {
    /// The address agents dial: the stub's end of the lossy wire.
    pub fn lossy_addr(&self) -> String {
        format!("10.201.{}.1", self.index)
    }
    /// The address clients dial: the stub's end of the clean path.
    pub fn clean_addr(&self) -> String {
        format!("10.202.{}.1", self.index)
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip").args(args).output().context("running `ip` (iproute2)")?;
    if !output.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// The namespace and devices of a link; deleting the namespace undoes the rest.
struct Made {
    name: String,
    clean_root: String,
}

impl Drop for Made {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        // Gone with its peer already, normally.
        let _ = Command::new("ip").args(["link", "del", &self.clean_root]).output();
    }
}

fn set_up(config: &LinkConfig) -> anyhow::Result<(Made, Tun, Tun)> {
    let n = config.index;
    let ns = config.name.as_str();
    let (tun_ns, tun_root, veth_root, veth_ns) =
        (format!("tl{n}n"), format!("tl{n}r"), format!("tc{n}r"), format!("tc{n}n"));
    ip(&["netns", "add", ns]).with_context(|| {
        format!("creating network namespace {ns} (needs root; if it exists from an earlier link, `ip netns del {ns}`)")
    })?;
    let made = Made { name: ns.to_owned(), clean_root: veth_root.clone() };
    let inside = Tun::create(&tun_ns).with_context(|| format!("creating TUN device {tun_ns} (needs /dev/net/tun)"))?;
    let outside = Tun::create(&tun_root).with_context(|| format!("creating TUN device {tun_root}"))?;
    let lossy = |side: u8| format!("10.201.{n}.{side}/24");
    let clean = |side: u8| format!("10.202.{n}.{side}/24");
    ip(&["link", "set", &tun_ns, "netns", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&["-n", ns, "addr", "add", &lossy(1), "dev", &tun_ns])?;
    ip(&["-n", ns, "link", "set", &tun_ns, "up"])?;
    ip(&["addr", "add", &lossy(2), "dev", &tun_root])?;
    ip(&["link", "set", &tun_root, "up"])?;
    ip(&["link", "add", &veth_root, "type", "veth", "peer", "name", &veth_ns, "netns", ns])?;
    ip(&["addr", "add", &clean(2), "dev", &veth_root])?;
    ip(&["link", "set", &veth_root, "up"])?;
    ip(&["-n", ns, "addr", "add", &clean(1), "dev", &veth_ns])?;
    ip(&["-n", ns, "link", "set", &veth_ns, "up"])?;
    Ok((made, inside, outside))
}

/// Counts of one direction, logged at the end.
#[derive(Debug, Default)]
struct Tally {
    forwarded: u64,
    lost: u64,
    overflowed: u64,
}

/// How long a direction's thread waits at most before it looks at the stop flag again.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// Packets read per wake-up at most, so that a flood cannot keep a direction from its stop flag.
const READ_BATCH: usize = 256;

/// How late a delayed packet may leave, so that one wake-up sends the packets due close
/// together (at 35,000 packets a second, three or four) instead of one each.
const RELEASE_SLACK: Duration = Duration::from_micros(100);

/// Moves packets from `from` to `to` through `shaper` until `stop` is set (or a device fails),
/// on a thread of its own.
///
/// Every packet leaves when it is due: at once if the shaper adds nothing, otherwise within
/// [`RELEASE_SLACK`] of its departure time, waited for with ppoll(2)'s nanosecond timeout. The
/// runtime's timers tick in whole milliseconds, and the link used them once: "no delay" then
/// meant 0-1 ms each way (`ping` across it 2.3 ms; now about 0.15), and a packet given 1 ms left
/// 1 to 2 ms after it came, released in bursts, one per tick (`ping` across 1 ms each way averaged
/// 4.35 ms; now 2.5). Round trips that vary by 2 ms on a 2 ms path are not a link of that length:
/// they flattered every latency measured across it and misled the endpoints' congestion control.
fn carry(from: &Tun, to: &Tun, mut shaper: Shaper, queue_limit: usize, stop: &AtomicBool) -> Tally {
    let start = Instant::now();
    let mut queue: VecDeque<(Duration, Vec<u8>)> = VecDeque::new();
    let mut tally = Tally::default();
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        match from.wait_readable(wait_for(queue.front().map(|(at, _)| *at), start.elapsed())) {
            Err(_) => return tally,
            Ok(false) => {}
            Ok(true) => {
                for _ in 0..READ_BATCH {
                    let len = match from.try_recv(&mut buf) {
                        Err(_) => return tally,
                        Ok(None) => break,
                        Ok(Some(len)) => len,
                    };
                    let now = start.elapsed();
                    match shaper.admit(now, len) {
                        None => tally.lost += 1,
                        Some(_) if queue.len() >= queue_limit => tally.overflowed += 1,
                        Some(at) => queue.push_back((at, buf[..len].to_vec())),
                    }
                    // Due packets go out between reads, so a long burst in does not hold them.
                    if send_due(&mut queue, now, |packet| to.send(packet), &mut tally).is_err() {
                        return tally;
                    }
                }
            }
        }
        if send_due(&mut queue, start.elapsed(), |packet| to.send(packet), &mut tally).is_err() {
            return tally;
        }
    }
    tally
}

/// How long a direction waits for the next packet in, at `now`, when the packet at the head of
/// its queue is due at `head` (both offsets from the link's start): until `head` plus
/// [`RELEASE_SLACK`], and never longer than [`STOP_CHECK`].
fn wait_for(head: Option<Duration>, now: Duration) -> Duration {
    head.map_or(STOP_CHECK, |at| (at + RELEASE_SLACK).saturating_sub(now).min(STOP_CHECK))
}

/// Sends (through `send`) the packets at the head of `queue` whose departure time, an offset
/// like `now`, has come, in order; the first failure stops it and is returned.
fn send_due(
    queue: &mut VecDeque<(Duration, Vec<u8>)>,
    now: Duration,
    mut send: impl FnMut(&[u8]) -> std::io::Result<()>,
    tally: &mut Tally,
) -> std::io::Result<()> {
    while queue.front().is_some_and(|(at, _)| *at <= now) {
        let (_, packet) = queue.pop_front().expect("front exists");
        send(&packet)?;
        tally.forwarded += 1;
    }
    Ok(())
}

/// Runs the link until `shutdown` or the end of its lifetime, then takes it down.
pub async fn run(config: LinkConfig, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let (made, inside, outside) = set_up(&config)?;
    let (inside, outside) = (Arc::new(inside), Arc::new(outside));
    let i = config.impairment;
    tracing::info!(
        netns = %config.name,
        lossy = %format!("{} (in {}) <-> 10.201.{}.2", config.lossy_addr(), config.name, config.index),
        clean = %format!("{} (in {}) <-> 10.202.{}.2", config.clean_addr(), config.name, config.index),
        loss_percent = i.loss_percent, delay = ?i.delay, jitter = ?i.jitter, rate_bps = ?i.rate_bps, seed = config.seed,
        "link up"
    );
    // Each direction has its own random stream, both from the one seed.
    let stop = Arc::new(AtomicBool::new(false));
    let direction = |from: &Arc<Tun>, to: &Arc<Tun>, shaper: Shaper| {
        let (from, to, stop, limit) = (from.clone(), to.clone(), stop.clone(), config.queue_limit);
        tokio::task::spawn_blocking(move || carry(&from, &to, shaper, limit, &stop))
    };
    let outbound = direction(&inside, &outside, Shaper::new(i, config.seed));
    let inbound = direction(&outside, &inside, Shaper::new(i, config.seed ^ 0x9e37_79b9_7f4a_7c15));
    tokio::select! {
        _ = shutdown => {}
        _ = tokio::time::sleep(config.lifetime) => tracing::warn!(lifetime = ?config.lifetime, "link lifetime over"),
    }
    stop.store(true, Ordering::Relaxed);
    if let (Ok(to_agents), Ok(to_stub)) = (outbound.await, inbound.await) {
        tracing::info!(?to_agents, ?to_stub, "link tally");
    }
    drop(made);
    tracing::info!(netns = %config.name, "link down");
    Ok(())
}

/// Parses a rate: bits per second, with an optional `k`, `m` or `g` (powers of 1000) and an
/// optional `bit` suffix: `100mbit`, `2.5g`, `64000`. `0` means unlimited.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let number = lower.strip_suffix("bit").unwrap_or(&lower);
    let (digits, scale) = match number.chars().last() {
        Some('k') => (&number[..number.len() - 1], 1e3),
        Some('m') => (&number[..number.len() - 1], 1e6),
        Some('g') => (&number[..number.len() - 1], 1e9),
        _ => (number, 1.0),
    };
    let value: f64 = digits
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("{text:?} is not a rate (examples: 100mbit, 2.5gbit, 64000)"))?;
    let bps = value * scale;
    if bps > u64::MAX as f64 {
        return Err(format!("{text:?} is too large a rate"));
    }
    Ok(bps as u64)
}

#[cfg(test)]
mod tests {
    use super::{RELEASE_SLACK, STOP_CHECK, Tally, parse_rate, send_due, wait_for};
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::time::Duration;

    #[test]
    fn rates_in_the_forms_people_write() {
        assert_eq!(parse_rate("100mbit"), Ok(100_000_000));
        assert_eq!(parse_rate("2.5G"), Ok(2_500_000_000));
        assert_eq!(parse_rate("64000"), Ok(64_000));
        assert_eq!(parse_rate("0"), Ok(0));
        assert!(parse_rate("fast").unwrap_err().contains("\"fast\" is not a rate"));
        assert!(parse_rate("-1mbit").is_err());
    }

    proptest! {
        #[test]
        fn every_written_rate_reads_back(bps in 1u64..1_000_000_000_000, unit in 0usize..4) {
            let (suffix, scale) = [("", 1), ("k", 1_000), ("m", 1_000_000), ("g", 1_000_000_000)][unit];
            let whole = bps / scale;
            prop_assume!(whole > 0);
            prop_assert_eq!(parse_rate(&format!("{whole}{suffix}bit")), Ok(whole * scale));
        }

        #[test]
        fn any_text_gives_a_rate_or_an_error_naming_it(text in "\\PC{0,12}") {
            if let Err(message) = parse_rate(&text) {
                let quoted = format!("{:?}", text);
                prop_assert!(message.contains(&quoted));
            }
        }

        /// A direction wakes by the time its head packet is due (plus the slack), at once for one
        /// overdue, and looks at its stop flag at least every STOP_CHECK.
        #[test]
        fn a_direction_wakes_when_its_head_packet_is_due(
            head_us in proptest::option::of(0u64..200_000),
            now_us in 0u64..200_000,
        ) {
            let (head, now) = (head_us.map(Duration::from_micros), Duration::from_micros(now_us));
            let wait = wait_for(head, now);
            prop_assert!(wait <= STOP_CHECK);
            match head {
                None => prop_assert_eq!(wait, STOP_CHECK),
                Some(at) if at + RELEASE_SLACK <= now => prop_assert_eq!(wait, Duration::ZERO),
                Some(at) => prop_assert_eq!(now + wait, (at + RELEASE_SLACK).min(now + STOP_CHECK)),
            }
        }

        /// Everything due leaves in the same pass, in order, and nothing leaves early: with no
        /// added delay every packet is due as it is read, so none waits for a timer tick.
        #[test]
        fn due_packets_leave_at_once_and_in_order(
            mut departures_us in proptest::collection::vec(0u64..10_000, 0..50),
            now_us in 0u64..12_000,
            fail_at in proptest::option::of(0usize..50),
        ) {
            departures_us.sort_unstable();
            let mut queue: VecDeque<(Duration, Vec<u8>)> = departures_us
                .iter()
                .enumerate()
                .map(|(i, at)| (Duration::from_micros(*at), (i as u32).to_be_bytes().to_vec()))
                .collect();
            let now = Duration::from_micros(now_us);
            let due = departures_us.iter().filter(|at| **at <= now_us).count();
            let mut sent = Vec::new();
            let mut tally = Tally::default();
            let result = send_due(&mut queue, now, |packet| {
                if fail_at == Some(sent.len()) {
                    return Err(std::io::Error::other("device gone"));
                }
                sent.push(u32::from_be_bytes(packet.try_into().expect("four bytes")) as usize);
                Ok(())
            }, &mut tally);
            let expected = fail_at.map_or(due, |f| f.min(due));
            prop_assert_eq!(sent, (0..expected).collect::<Vec<_>>());
            prop_assert_eq!(tally.forwarded, expected as u64);
            prop_assert_eq!(result.is_err(), fail_at.is_some_and(|f| f < due));
            // What stays is what was not due (after a failure, what was not yet tried).
            let left = departures_us.len() - expected - usize::from(result.is_err());
            prop_assert_eq!(queue.len(), left);
            if result.is_ok() {
                prop_assert!(queue.front().is_none_or(|(at, _)| *at > now));
            }
        }
    }
}
