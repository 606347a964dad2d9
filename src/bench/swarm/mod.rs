//! `tether bench --agents N`: many simulated agents against one stub or several replicas, to
//! measure what each agent connection costs a stub and, with `--reconnect`, how a fleet heals
//! after a stub restart. Each simulated agent has a certificate of its own (minted in memory with
//! the CA key of `--certs`, and added to that whitelist for the run) and its own QUIC
//! connection; it says hello and waits for the welcome, as a real agent does before it serves,
//! then holds the connection. With `--stub-pid`, each stub's resident memory is read before and
//! after, giving the memory per connection. The whitelist is put back as it was at the end.
//!
//! The harness itself is cheap, so that 20,000 agents fit on a small machine: a simulated agent
//! is a task, a QUIC connection and its certificate, nothing more.
//! - It grants the stub [`SIMULATED_STREAMS`] streams, not a real agent's 16,384: quinn keeps a
//!   record for every stream a peer may open (`StreamsState::new` inserts them all into two hash
//!   maps), which cost about 1.4 MiB per connection. The stub opens no streams to a simulated
//!   agent, and what it grants costs the stub nothing, so the stub's side measures the same.
//! - Agents share the crypto provider, the server verifier and the transport configuration, and
//!   keep no TLS session cache (the stub sends no tickets).
//! - Agents share QUIC endpoints, [`AGENTS_PER_ENDPOINT`] to each by default: one UDP socket and
//!   one endpoint task for all of them would queue every packet of the fleet through one
//!   socket buffer and one task.
//!
//! In a storm (`--reconnect`) a simulated agent whose connection is lost redials as a real one
//! does: capped exponential backoff with jitter ([`Backoff`], reset after a healthy run, and with
//! more room after a refusal for being busy), until welcomed again. The report counts the losses,
//! how long from the first loss until every agent was connected again ([`heal`]), and the failed
//! dials by kind ([`reason`]).

pub mod heal;
pub mod reason;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::session::{self, Session};
use crate::backoff::Backoff;
use crate::identity::certs::{Signer, Validity};
use crate::identity::files::{self, CertDir, Mode};
use crate::identity::tls::SharedDialerTls;
use crate::identity::whitelist::{Entry, Whitelist};
use crate::transport::explain;
use crate::transport::quic::{self, SharedClientTransport, Tuning};
use heal::Heal;

/// Streams a simulated agent lets the stub open: it serves none (see the module header).
pub const SIMULATED_STREAMS: u32 = 8;
/// Simulated agents per QUIC endpoint (UDP socket), unless `--agents-per-endpoint` says.
pub const AGENTS_PER_ENDPOINT: usize = 500;
/// Dials at the start that may be in flight at once: the start fills the stub, the storm is
/// what measures it.
pub const START_DIALS: usize = 64;
/// Dials of one agent at the start before it counts as failed: the first ones may come before
/// the stub has read the whitelist with the simulated agents in it.
const START_ATTEMPTS: u32 = 20;
/// A connection that lasted this long was healthy: the next loss starts backoff afresh (as
/// `agent::dial_loop::HEALTHY_RUN`).
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// How long a healed storm must stay healed before the run ends: a connection whose close
/// packet was lost is only found dead by the idle timeout.
const SETTLE: Duration = Duration::from_secs(5);

/// What `tether bench --agents` needs.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Certificate directory with the CA key (`ca.key`) and the stubs' whitelist.
    pub certs: CertDir,
    /// The stubs' QUIC addresses: agent `i` dials `stubs[i % len]`.
    pub stubs: Vec<String>,
    pub server_name: String,
    pub cluster: String,
    pub agents: usize,
    /// How long to hold the connections once all are up (with `reconnect`: at most, since the
    /// run ends once a storm has healed).
    pub hold: Duration,
    /// The stubs' process ids, in the order of `stubs`.
    pub stub_pids: Vec<u32>,
    pub progress: bool,
    /// Redial lost connections with this backoff (`None`: a lost connection stays lost).
    pub reconnect: Option<(Duration, Duration)>,
    pub agents_per_endpoint: usize,
    /// Dials in flight at once at the start.
    pub start_dials: usize,
}

/// What the swarm measured.
#[derive(Debug, Clone, Serialize)]
pub struct SwarmReport {
    pub agents: usize,
    /// Agents welcomed at the start.
    pub connected: usize,
    /// Agents that never got a welcome at the start, by reason (plain words).
    pub failed: BTreeMap<String, u64>,
    /// From the first dial until the last welcome at the start.
    pub connect_s: f64,
    /// Sums over the stubs given with `--stub-pid`.
    pub stub_rss_before_kib: Option<u64>,
    pub stub_rss_after_kib: Option<u64>,
    /// (after - before) / connected, over the stubs given with `--stub-pid`.
    pub stub_kib_per_agent: Option<f64>,
    /// Each stub: its agents and, with its pid, its memory per agent connection.
    pub stubs: Vec<StubShare>,
    /// One dial's time from the first packet to the welcome, at the start.
    pub dial_p50_ms: f64,
    pub dial_p99_ms: f64,
    /// The harness's own resident memory with every agent connected, and what it grew by per
    /// agent since it started (certificates, connections, tasks).
    pub harness_rss_kib: u64,
    pub harness_kib_per_agent: f64,
    /// QUIC endpoints (UDP sockets) the agents shared.
    pub endpoints: usize,
    /// Connections lost while held, by kind ([`reason`]).
    pub lost: BTreeMap<String, u64>,
    /// With `--reconnect`: how the swarm healed.
    pub storm: Option<StormReport>,
}

/// One stub's share of the swarm.
#[derive(Debug, Clone, Serialize)]
pub struct StubShare {
    pub stub: String,
    /// The replica id its welcome named.
    pub replica: Option<String>,
    pub connected: usize,
    pub pid: Option<u32>,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub kib_per_agent: Option<f64>,
}

/// How a swarm that redials healed.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    /// Connections lost after the start.
    pub disconnections: u64,
    /// From the first loss until every agent was connected again; `None`: it never healed.
    pub heal_s: Option<f64>,
    /// Agents connected when the run ended.
    pub connected_at_end: usize,
    /// Dials after a loss, and those that failed, by kind ([`reason`]).
    pub redials: u64,
    pub handshake_failures: BTreeMap<String, u64>,
    /// One agent's time from its loss to its welcome again.
    pub reconnect_p50_ms: f64,
    pub reconnect_p99_ms: f64,
    pub reconnect_max_ms: f64,
}

impl SwarmReport {
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} of {} simulated agents connected in {:.1} s (a dial: p50 {:.1} ms, p99 {:.1} ms)\n",
            self.connected, self.agents, self.connect_s, self.dial_p50_ms, self.dial_p99_ms
        );
        if let (Some(before), Some(after), Some(each)) =
            (self.stub_rss_before_kib, self.stub_rss_after_kib, self.stub_kib_per_agent)
        {
            out += &format!("stub resident memory: {before} KiB before, {after} KiB after: {each:.1} KiB per agent\n");
        }
        if self.stubs.len() > 1 {
            for s in &self.stubs {
                let memory = s.kib_per_agent.map(|k| format!(", {k:.1} KiB per agent")).unwrap_or_default();
                let replica = s.replica.as_deref().unwrap_or("?");
                out += &format!("  {} (replica {replica}): {} agents{memory}\n", s.stub, s.connected);
            }
        }
        out += &format!(
            "harness: {} KiB resident, {:.1} KiB per agent, {} endpoints\n",
            self.harness_rss_kib, self.harness_kib_per_agent, self.endpoints
        );
        for (reason, n) in &self.failed {
            out += &format!("failed: {n} x {reason}\n");
        }
        for (reason, n) in &self.lost {
            out += &format!("lost: {n} x {reason}\n");
        }
        if let Some(s) = &self.storm {
            let heal = s.heal_s.map_or("never healed".to_owned(), |h| format!("healed in {h:.2} s"));
            out += &format!(
                "storm: {} disconnections, {heal}; {} of {} connected at the end; {} redials\n",
                s.disconnections, s.connected_at_end, self.connected, s.redials
            );
            out += &format!(
                "reconnect per agent: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms\n",
                s.reconnect_p50_ms, s.reconnect_p99_ms, s.reconnect_max_ms
            );
            for (reason, n) in &s.handshake_failures {
                out += &format!("failed dial: {n} x {reason}\n");
            }
        }
        out
    }
}

/// Resident memory of a process, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    rss_kib_of(&format!("/proc/{pid}/status"))
}

fn rss_kib_of(path: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// The name of simulated agent `i`.
fn agent_name(i: usize) -> String {
    format!("sim-{i:05}")
}

/// Runs the swarm and puts the whitelist back.
pub async fn run(config: SwarmConfig) -> anyhow::Result<SwarmReport> {
    anyhow::ensure!(!config.stubs.is_empty(), "--stub: at least one stub address is needed");
    anyhow::ensure!(
        config.stub_pids.is_empty() || config.stub_pids.len() == config.stubs.len(),
        "--stub-pid: give one per --stub ({} stubs, {} pids)",
        config.stubs.len(),
        config.stub_pids.len()
    );
    let harness_start = rss_kib_of("/proc/self/status")?;
    let dir = &config.certs;
    let signer = Signer::from_pem(
        &files::load_text(&dir.ca_cert(), "cannot read the CA certificate")?,
        &files::load_text(&dir.ca_key(), "cannot read the CA key (the swarm mints its agents' certificates)")?,
    )?;
    let tls = SharedDialerTls::new(&files::load_certs(&dir.ca_cert())?)?;
    let transport = SharedClientTransport::new(&Tuning { max_request_streams: SIMULATED_STREAMS, ..Tuning::default() });
    let whitelist_path = dir.whitelist();
    let original = files::load_text(&whitelist_path, "cannot read the whitelist")?;
    Whitelist::parse(&original, &whitelist_path)?;

    let started_minting = Instant::now();
    let mut clients = Vec::with_capacity(config.agents);
    let mut text = original.clone();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text += "# tether bench --agents: simulated agents, removed when the run ends\n";
    for i in 0..config.agents {
        let name = agent_name(i);
        let minted = signer.issue_agent(&config.cluster, &name, Validity::days(1))?;
        let key = files::parse_key(&dir.ca_key(), minted.key_pem.as_bytes())?;
        clients.push(transport.client_config(tls.agent_dialer(vec![minted.der.clone()], key)?)?);
        text += &format!("{}\n", Entry { cluster: config.cluster.clone(), name, fingerprint: minted.fingerprint });
        if config.progress && (i + 1) % 2000 == 0 {
            eprintln!(
                "[{:>5.1}s] minted {} of {} certificates",
                started_minting.elapsed().as_secs_f64(),
                i + 1,
                config.agents
            );
        }
    }
    Whitelist::parse(&text, &whitelist_path)?;
    files::save(&whitelist_path, text.as_bytes(), Mode::Public)?;
    tracing::info!(agents = config.agents, took = ?started_minting.elapsed(), "minted and whitelisted the simulated agents");

    let result = swarm(&config, clients, harness_start).await;
    files::save(&whitelist_path, original.as_bytes(), Mode::Public).context("putting the whitelist back")?;
    result
}

/// A dial that did not end in a welcome.
struct Failure {
    /// For the storm's table ([`reason`]).
    kind: &'static str,
    /// For people.
    words: String,
}

/// Dials, hellos and waits for the welcome.
async fn dial(
    endpoint: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    addr: SocketAddr,
    config: &SwarmConfig,
    name: &str,
) -> Result<(Session, quinn::Connection), Failure> {
    let connecting = endpoint
        .connect_with(client.clone(), addr, &config.server_name)
        .map_err(|e| Failure { kind: reason::NOT_DIALLED, words: format!("cannot dial {addr}: {e}") })?;
    let conn = connecting.await.map_err(|e| Failure { kind: reason::of(&e), words: explain::closed(&e) })?;
    match session::establish(crate::transport::Connection::Quic(conn.clone()), &config.cluster, name).await {
        Ok(session) => Ok((session, conn)),
        Err(words) => Err(Failure { kind: conn.close_reason().map_or(reason::NO_WELCOME, |e| reason::of(&e)), words }),
    }
}

/// Everything the agents' tasks share.
struct Swarm {
    config: SwarmConfig,
    addrs: Vec<SocketAddr>,
    endpoints: Vec<quinn::Endpoint>,
    started: Instant,
    stop: CancellationToken,
    start_dials: tokio::sync::Semaphore,
    tally: Mutex<Tally>,
}

/// What the agents' tasks count.
struct Tally {
    heal: Heal,
    /// Agents done with the start (welcomed or failed).
    started: usize,
    /// Welcomed at the start, per stub; the replica id each stub's welcome named.
    per_stub: Vec<usize>,
    replicas: Vec<Option<String>>,
    last_start_welcome: Duration,
    dial_ms: Histogram<u64>,
    failed: BTreeMap<String, u64>,
    lost: BTreeMap<String, u64>,
    redials: u64,
    handshake_failures: BTreeMap<String, u64>,
    reconnect_ms: Histogram<u64>,
}

fn millis() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000, 3).expect("valid histogram bounds")
}

fn record_ms(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_millis() as u64).max(1));
}

impl Swarm {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Agent `i`: connects at the start, holds its connection, and (with `--reconnect`)
    /// redials it when lost, until the run stops.
    async fn agent(self: Arc<Self>, i: usize, client: quinn::ClientConfig) {
        let stub = i % self.addrs.len();
        let (addr, endpoint, name) = (self.addrs[stub], &self.endpoints[i % self.endpoints.len()], agent_name(i));
        let first = {
            let Ok(_permit) = self.start_dials.acquire().await else { return };
            self.first_dial(endpoint, &client, addr, &name).await
        };
        let (mut session, mut conn) = match first {
            Ok((session, conn, took)) => {
                let mut tally = self.tally();
                let now = self.now();
                tally.started += 1;
                tally.per_stub[stub] += 1;
                tally.replicas[stub].get_or_insert_with(|| session.replica.clone());
                tally.last_start_welcome = now;
                record_ms(&mut tally.dial_ms, took);
                tally.heal.connected(now);
                (session, conn)
            }
            Err(words) => {
                let mut tally = self.tally();
                tally.started += 1;
                *tally.failed.entry(words).or_default() += 1;
                return;
            }
        };
        // Without redials, what a held connection costs is what is measured: no certificate.
        let client = self.config.reconnect.is_some().then_some(client);
        let (min, max) = self.config.reconnect.unwrap_or((Duration::from_millis(100), Duration::from_secs(1)));
        let mut backoff = Backoff::new(min, max);
        loop {
            let up_since = Instant::now();
            let end = tokio::select! {
                end = conn.closed() => end,
                _ = self.stop.cancelled() => return,
            };
            drop(session);
            {
                let mut tally = self.tally();
                let now = self.now();
                tally.heal.lost(now);
                *tally.lost.entry(reason::of(&end).to_owned()).or_default() += 1;
            }
            let Some(client) = &client else { return };
            if up_since.elapsed() >= HEALTHY_RUN {
                backoff.reset();
            }
            let lost_at = Instant::now();
            // As a real agent: a stub too busy to take the dial gets more room.
            let mut busy = false;
            (session, conn) = loop {
                let delay = if busy { backoff.next_busy_delay() } else { backoff.next_delay() };
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.stop.cancelled() => return,
                }
                let dialled = tokio::select! {
                    dialled = dial(endpoint, client, addr, &self.config, &name) => dialled,
                    _ = self.stop.cancelled() => return,
                };
                let mut tally = self.tally();
                tally.redials += 1;
                match dialled {
                    Ok(up) => {
                        record_ms(&mut tally.reconnect_ms, lost_at.elapsed());
                        let now = self.now();
                        tally.heal.connected(now);
                        break up;
                    }
                    Err(failure) => {
                        busy = failure.kind == reason::REFUSED;
                        *tally.handshake_failures.entry(failure.kind.to_owned()).or_default() += 1;
                    }
                }
            };
        }
    }

    /// The first connection, retried with backoff while the stub may not yet have read the
    /// whitelist with this agent in it; the plain-words reason of the last failure if none.
    async fn first_dial(
        &self,
        endpoint: &quinn::Endpoint,
        client: &quinn::ClientConfig,
        addr: SocketAddr,
        name: &str,
    ) -> Result<(Session, quinn::Connection, Duration), String> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut last = String::new();
        for attempt in 0..START_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            let begun = Instant::now();
            match dial(endpoint, client, addr, &self.config, name).await {
                Ok((session, conn)) => return Ok((session, conn, begun.elapsed())),
                Err(failure) => last = failure.words,
            }
        }
        Err(last)
    }
}

async fn swarm(
    config: &SwarmConfig,
    clients: Vec<quinn::ClientConfig>,
    harness_start: u64,
) -> anyhow::Result<SwarmReport> {
    let mut addrs = Vec::new();
    for stub in &config.stubs {
        let addr = tokio::net::lookup_host(stub)
            .await
            .with_context(|| format!("resolving {stub}"))?
            .next()
            .with_context(|| format!("{stub} resolves to no address"))?;
        addrs.push(addr);
    }
    let bind: SocketAddr = if addrs[0].is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("valid address");
    let count = config.agents.div_ceil(config.agents_per_endpoint.max(1)).max(1);
    let endpoints = (0..count).map(|_| quic::client_endpoint(bind)).collect::<std::io::Result<Vec<_>>>()?;
    let before: Vec<Option<u64>> =
        config.stub_pids.iter().map(|pid| rss_kib(*pid).map(Some)).collect::<anyhow::Result<_>>()?;
    let swarm = Arc::new(Swarm {
        config: config.clone(),
        addrs,
        endpoints,
        started: Instant::now(),
        stop: CancellationToken::new(),
        start_dials: tokio::sync::Semaphore::new(config.start_dials.max(1)),
        tally: Mutex::new(Tally {
            heal: Heal::default(),
            started: 0,
            per_stub: vec![0; config.stubs.len()],
            replicas: vec![None; config.stubs.len()],
            last_start_welcome: Duration::ZERO,
            dial_ms: millis(),
            failed: BTreeMap::new(),
            lost: BTreeMap::new(),
            redials: 0,
            handshake_failures: BTreeMap::new(),
            reconnect_ms: millis(),
        }),
    });
    let tasks = TaskTracker::new();
    for (i, client) in clients.into_iter().enumerate() {
        tasks.spawn(swarm.clone().agent(i, client));
    }
    tasks.close();

    // The start: every agent welcomed or failed.
    let mut last_progress = Instant::now();
    loop {
        let (started, connected) = {
            let tally = swarm.tally();
            (tally.started, tally.heal.connected_now())
        };
        if started == config.agents {
            break;
        }
        if config.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            eprintln!("[{:>5.1}s] {connected} of {} agents connected", swarm.now().as_secs_f64(), config.agents);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after: Vec<Option<u64>> =
        config.stub_pids.iter().map(|pid| rss_kib(*pid).map(Some)).collect::<anyhow::Result<_>>()?;
    let harness_rss = rss_kib_of("/proc/self/status")?;
    let (connected, connect_s) = {
        let mut tally = swarm.tally();
        let connected: usize = tally.per_stub.iter().sum();
        let now = swarm.now();
        tally.heal.set_target(connected, now);
        (connected, tally.last_start_welcome.as_secs_f64())
    };
    tracing::info!(connected, hold = ?config.hold, "simulated agents connected; holding");

    let deadline = Instant::now() + config.hold;
    let mut last_progress = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50).min(config.hold)).await;
        if config.reconnect.is_none() {
            continue;
        }
        let tally = swarm.tally();
        if tally.heal.settled(swarm.now(), SETTLE) {
            break;
        }
        if config.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            eprintln!(
                "[{:>5.1}s] {} of {connected} agents connected; {} disconnections, {} redials, failed dials: {:?}",
                swarm.now().as_secs_f64(),
                tally.heal.connected_now(),
                tally.heal.disconnections(),
                tally.redials,
                tally.handshake_failures
            );
        }
    }
    swarm.stop.cancel();
    if tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await.is_err() {
        tracing::warn!("simulated agents still running 10 s after the end; leaving them");
    }

    let report = {
        let tally = swarm.tally();
        let stubs: Vec<StubShare> = config
            .stubs
            .iter()
            .enumerate()
            .map(|(i, stub)| {
                let (before, after) = (before.get(i).copied().flatten(), after.get(i).copied().flatten());
                StubShare {
                    stub: stub.clone(),
                    replica: tally.replicas[i].clone(),
                    connected: tally.per_stub[i],
                    pid: config.stub_pids.get(i).copied(),
                    rss_before_kib: before,
                    rss_after_kib: after,
                    kib_per_agent: per_agent(before, after, tally.per_stub[i]),
                }
            })
            .collect();
        let sum = |v: &[Option<u64>]| (!v.is_empty()).then(|| v.iter().map(|x| x.unwrap_or(0)).sum::<u64>());
        let (before_sum, after_sum) = (sum(&before), sum(&after));
        let heal = &tally.heal;
        let quantile = |h: &Histogram<u64>, q: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 };
        SwarmReport {
            agents: config.agents,
            connected,
            failed: tally.failed.clone(),
            connect_s,
            stub_rss_before_kib: before_sum,
            stub_rss_after_kib: after_sum,
            stub_kib_per_agent: per_agent(before_sum, after_sum, connected),
            stubs,
            dial_p50_ms: quantile(&tally.dial_ms, 0.5),
            dial_p99_ms: quantile(&tally.dial_ms, 0.99),
            harness_rss_kib: harness_rss,
            harness_kib_per_agent: harness_rss.saturating_sub(harness_start) as f64 / config.agents.max(1) as f64,
            endpoints: swarm.endpoints.len(),
            lost: tally.lost.clone(),
            storm: config.reconnect.map(|_| StormReport {
                disconnections: heal.disconnections(),
                heal_s: heal.heal_time().map(|d| d.as_secs_f64()),
                connected_at_end: heal.connected_now(),
                redials: tally.redials,
                handshake_failures: tally.handshake_failures.clone(),
                reconnect_p50_ms: quantile(&tally.reconnect_ms, 0.5),
                reconnect_p99_ms: quantile(&tally.reconnect_ms, 0.99),
                reconnect_max_ms: tally.reconnect_ms.max() as f64,
            }),
        }
    };
    for endpoint in &swarm.endpoints {
        endpoint.close(crate::wire::codes::AppCode::Normal.varint(), b"bench over");
    }
    for endpoint in &swarm.endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    }
    Ok(report)
}

/// KiB per agent from resident memory before and after `agents` connected.
fn per_agent(before: Option<u64>, after: Option<u64>, agents: usize) -> Option<f64> {
    match (before, after) {
        (Some(b), Some(a)) if agents > 0 => Some(a.saturating_sub(b) as f64 / agents as f64),
        _ => None,
    }
}
