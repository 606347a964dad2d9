//! `tether bench`: the load harness, its plain target (`--serve`) and simulated agents
//! (`--agents`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::bench::mix::Mix;
use crate::bench::swarm::SwarmConfig;
use crate::bench::{BenchConfig, Paths};
use crate::identity::files::CertDir;

#[derive(Args)]
pub struct BenchArgs {
    /// Base URL of the target: a stub's https://HOST:PORT/clusters/CLUSTER, or an upstream.
    #[arg(long, required_unless_present_any = ["serve", "agents"])]
    target: Option<String>,
    /// Bearer token (a stub needs one: `tether token --user bench --cluster C`).
    #[arg(long, env = "TETHER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA of an https target (for a stub: the tether CA).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Requests in flight at once.
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// Client connections to spread them over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Use HTTP/1.1 (one connection per request in flight) instead of HTTP/2.
    #[arg(long)]
    http1: bool,
    /// How long to run (with --agents: how long to hold the connections, --hold).
    #[arg(long, short = 'd', visible_alias = "hold", default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after this many requests instead (within --duration).
    #[arg(long, short = 'n')]
    requests: Option<u64>,
    /// Request kinds and weights: small, list, watch, upload, e.g. small=80,list=10,watch=5,upload=5.
    #[arg(long, default_value = "small", value_parser = Mix::parse)]
    mix: Mix,
    #[arg(long, default_value = "/small")]
    small_path: String,
    #[arg(long, default_value = "/list?bytes=1048576")]
    list_path: String,
    #[arg(long, default_value = "/watch")]
    watch_path: String,
    #[arg(long, default_value = "/upload")]
    upload_path: String,
    /// Body size of an upload, in bytes.
    #[arg(long, default_value_t = 65536)]
    upload_size: usize,
    /// A request not answered in full by then counts as a timeout.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print the report as JSON (stdout).
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Hold every watch open until the end of the run (what open streams cost), instead of
    /// dropping it at its first event (how fast watches start).
    #[arg(long)]
    hold_watches: bool,
    /// Instead of a benchmark, serve a plain HTTP target with routes for the default paths
    /// (/small, /list?bytes=N, /watch, /upload) on this address, to put behind an agent.
    #[arg(long, conflicts_with_all = ["target", "agents"])]
    serve: Option<SocketAddr>,
    /// Instead of requests, connect this many simulated agents (each its own certificate and
    /// QUIC connection) to --stub and hold them for --duration, to measure the stub's memory per
    /// agent connection. Needs --certs with the CA key; the whitelist is restored afterwards.
    #[arg(long, conflicts_with = "target", requires_all = ["certs", "stub"])]
    agents: Option<usize>,
    /// Certificate directory of the stub (ca.crt, ca.key, whitelist), for --agents.
    #[arg(long)]
    certs: Option<PathBuf>,
    /// The stub's QUIC address HOST:PORT, for --agents; several (repeated or comma-separated)
    /// spread the agents over them in turn.
    #[arg(long, value_delimiter = ',')]
    stub: Vec<String>,
    /// With --agents: redial lost connections with backoff, as real agents do, and report how
    /// the swarm healed (for a stub restart under load). The run ends once every agent is
    /// connected again after a loss and stays so for 5 s, or at the end of --hold.
    #[arg(long, requires = "agents")]
    reconnect: bool,
    /// With --reconnect: first redial delay (doubles up to --backoff-max, with jitter).
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    backoff_min: Duration,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    backoff_max: Duration,
    /// With --agents: simulated agents sharing one QUIC endpoint (UDP socket).
    #[arg(long, default_value_t = crate::bench::swarm::AGENTS_PER_ENDPOINT, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    agents_per_endpoint: usize,
    /// With --agents: dials in flight at once while the agents first connect.
    #[arg(long, default_value_t = crate::bench::swarm::START_DIALS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    start_dials: usize,
    /// Cluster of the simulated agents.
    #[arg(long, default_value = "swarm")]
    cluster: String,
    /// Name the stub's certificate carries (default: the host of --stub).
    #[arg(long)]
    server_name: Option<String>,
    /// The stub's process id: its resident memory is read before and after the agents connect.
    /// With several --stub, one per stub in the same order.
    #[arg(long, value_delimiter = ',')]
    stub_pid: Vec<u32>,
}

impl BenchArgs {
    /// Serves the target, runs the swarm, or runs the load, as the flags say.
    pub async fn run(self) -> anyhow::Result<()> {
        if let Some(addr) = self.serve {
            return crate::bench::serve::serve(addr, crate::shutdown::signal()).await;
        }
        let json = self.json;
        if let Some(agents) = self.agents {
            let config = SwarmConfig {
                certs: CertDir::new(self.certs.expect("clap requires --certs")),
                server_name: self.server_name.unwrap_or_else(|| crate::transport::host_of(&self.stub[0]).to_owned()),
                stubs: self.stub,
                cluster: self.cluster,
                agents,
                hold: self.duration,
                stub_pids: self.stub_pid,
                progress: !self.quiet,
                reconnect: self.reconnect.then_some((self.backoff_min, self.backoff_max)),
                agents_per_endpoint: self.agents_per_endpoint,
                start_dials: self.start_dials,
            };
            let report = crate::bench::swarm::run(config).await?;
            return print_report(json, &report, report.table());
        }
        let config = BenchConfig {
            target: self.target.expect("clap requires --target").trim_end_matches('/').to_owned(),
            token: self.token,
            ca: self.ca,
            concurrency: self.concurrency,
            connections: self.connections,
            http1: self.http1,
            duration: self.duration,
            requests: self.requests,
            mix: self.mix,
            paths: Paths {
                small: self.small_path,
                list: self.list_path,
                watch: self.watch_path,
                upload: self.upload_path,
            },
            upload_size: self.upload_size,
            timeout: self.timeout,
            progress: !self.quiet,
            hold_watches: self.hold_watches,
        };
        let report = crate::bench::run(config, crate::shutdown::signal()).await?;
        print_report(json, &report, report.table())
    }
}

/// A report on stdout, as JSON or as its table.
fn print_report(json: bool, report: &impl serde::Serialize, table: String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{table}");
    }
    Ok(())
}
