//! `tether bench --agents N`: many simulated agents against one stub, to measure what each
//! agent connection costs it. Each simulated agent has a certificate of its own (minted in
//! memory with the CA key of `--certs`, and added to that whitelist for the run) and its own
//! QUIC connection; it says hello and waits for the welcome, as a real agent does before it
//! serves, then holds the connection. With `--stub-pid`, the stub's resident memory is read
//! before and after, giving the memory per connection. The whitelist is put back as it was at
//! the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use serde::Serialize;

use crate::agent::session::{self, Session};
use crate::identity::certs::{Signer, Validity};
use crate::identity::files::{self, CertDir, Mode};
use crate::identity::tls;
use crate::identity::whitelist::{Entry, Whitelist};
use crate::transport::explain;
use crate::transport::quic::{self, Tuning};

/// What `tether bench --agents` needs.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Certificate directory with the CA key (`ca.key`) and the stub's whitelist.
    pub certs: CertDir,
    /// The stub's QUIC address.
    pub stub: String,
    pub server_name: String,
    pub cluster: String,
    pub agents: usize,
    /// How long to hold the connections once all are up.
    pub hold: Duration,
    pub stub_pid: Option<u32>,
    pub progress: bool,
}

/// What the swarm measured.
#[derive(Debug, Clone, Serialize)]
pub struct SwarmReport {
    pub agents: usize,
    pub connected: usize,
    /// Agents that never got a welcome, by reason.
    pub failed: BTreeMap<String, u64>,
    /// From the first dial until the last welcome.
    pub connect_s: f64,
    pub stub_rss_before_kib: Option<u64>,
    pub stub_rss_after_kib: Option<u64>,
    /// (after - before) / connected.
    pub stub_kib_per_agent: Option<f64>,
}

impl SwarmReport {
    pub fn table(&self) -> String {
        let mut out =
            format!("{} of {} simulated agents connected in {:.1} s\n", self.connected, self.agents, self.connect_s);
        if let (Some(before), Some(after), Some(each)) =
            (self.stub_rss_before_kib, self.stub_rss_after_kib, self.stub_kib_per_agent)
        {
            out += &format!("stub resident memory: {before} KiB before, {after} KiB after: {each:.1} KiB per agent\n");
        }
        for (reason, n) in &self.failed {
            out += &format!("failed: {n} x {reason}\n");
        }
        out
    }
}

/// Resident memory of a process, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// Dials, hellos and waits for the welcome, retrying while the stub has not reloaded the
/// whitelist yet (bounded).
async fn connect(
    endpoint: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    addr: std::net::SocketAddr,
    config: &SwarmConfig,
    name: &str,
) -> Result<Session, String> {
    let mut last = String::new();
    for attempt in 0..20u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10)))).await;
        }
        let connecting = endpoint.connect_with(client.clone(), addr, &config.server_name).map_err(|e| e.to_string())?;
        match connecting.await {
            Ok(conn) => match session::establish(crate::transport::Connection::Quic(conn), &config.cluster, name).await
            {
                Ok(session) => return Ok(session),
                Err(reason) => last = reason,
            },
            Err(e) => last = explain::closed(&e),
        }
    }
    Err(last)
}

/// Runs the swarm and puts the whitelist back.
pub async fn run(config: SwarmConfig) -> anyhow::Result<SwarmReport> {
    let dir = &config.certs;
    let signer = Signer::from_pem(
        &files::load_text(&dir.ca_cert(), "cannot read the CA certificate")?,
        &files::load_text(&dir.ca_key(), "cannot read the CA key (the swarm mints its agents' certificates)")?,
    )?;
    let ca = files::load_certs(&dir.ca_cert())?;
    let whitelist_path = dir.whitelist();
    let original = files::load_text(&whitelist_path, "cannot read the whitelist")?;
    Whitelist::parse(&original, &whitelist_path)?;

    let started_minting = Instant::now();
    let mut identities = Vec::with_capacity(config.agents);
    let mut text = original.clone();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text += "# tether bench --agents: simulated agents, removed when the run ends\n";
    for i in 0..config.agents {
        let name = format!("sim-{i:05}");
        let minted = signer.issue_agent(&config.cluster, &name, Validity::days(1))?;
        let key = files::parse_key(&dir.ca_key(), minted.key_pem.as_bytes())?;
        let client = quic::client_config(tls::agent_dialer(&ca, vec![minted.der.clone()], key)?, &Tuning::default())?;
        text += &format!(
            "{}\n",
            Entry { cluster: config.cluster.clone(), name: name.clone(), fingerprint: minted.fingerprint }
        );
        identities.push((name, client));
    }
    Whitelist::parse(&text, &whitelist_path)?;
    files::save(&whitelist_path, text.as_bytes(), Mode::Public)?;
    tracing::info!(agents = config.agents, took = ?started_minting.elapsed(), "minted and whitelisted the simulated agents");

    let result = swarm(&config, identities).await;
    files::save(&whitelist_path, original.as_bytes(), Mode::Public).context("putting the whitelist back")?;
    result
}

async fn swarm(config: &SwarmConfig, identities: Vec<(String, quinn::ClientConfig)>) -> anyhow::Result<SwarmReport> {
    let addr = tokio::net::lookup_host(&config.stub)
        .await
        .with_context(|| format!("resolving {}", config.stub))?
        .next()
        .with_context(|| format!("{} resolves to no address", config.stub))?;
    let bind = if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
    let endpoint = quic::client_endpoint(bind.parse().expect("valid address"))?;
    let before = config.stub_pid.map(rss_kib).transpose()?;
    let started = Instant::now();
    let endpoint_ref = &endpoint;
    let connected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results: Vec<Result<Session, String>> = futures_util::stream::iter(identities)
        .map(|(name, client)| {
            let connected = connected.clone();
            async move {
                let result = connect(endpoint_ref, &client, addr, config, &name).await;
                let n = connected.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if config.progress && n.is_multiple_of(100) {
                    eprintln!("[{:>5.1}s] {n} of {} agents dialled", started.elapsed().as_secs_f64(), config.agents);
                }
                result
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let connect_s = started.elapsed().as_secs_f64();
    let mut sessions = Vec::new();
    let mut failed = BTreeMap::new();
    for result in results {
        match result {
            Ok(session) => sessions.push(session),
            Err(reason) => *failed.entry(reason).or_insert(0) += 1,
        }
    }
    let after = config.stub_pid.map(rss_kib).transpose()?;
    tracing::info!(connected = sessions.len(), hold = ?config.hold, "simulated agents connected; holding");
    tokio::time::sleep(config.hold).await;
    let report = SwarmReport {
        agents: config.agents,
        connected: sessions.len(),
        failed,
        connect_s,
        stub_rss_before_kib: before,
        stub_rss_after_kib: after,
        stub_kib_per_agent: match (before, after) {
            (Some(b), Some(a)) if !sessions.is_empty() => Some(a.saturating_sub(b) as f64 / sessions.len() as f64),
            _ => None,
        },
    };
    drop(sessions);
    endpoint.close(crate::wire::codes::AppCode::Normal.varint(), b"bench over");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(report)
}
