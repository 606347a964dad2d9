//! The `tether` binary: parses the command line, sets up logging, and calls into the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use tether::agent::{self, AgentConfig, upstream::UpstreamSource};
use tether::identity::certs;
use tether::identity::files::CertDir;
use tether::identity::tls;
use tether::identity::token::{Claims, Confirmation, TokenIssuer};
use tether::identity::whitelist::Registered;
use tether::kubeconfig::UserKubeconfig;
use tether::quic::{Congestion, Tuning};
use tether::register::Registration;
use tether::stub::audit::AuditTarget;
use tether::stub::limits::Limits;
use tether::stub::{Stub, StubConfig};

/// A QUIC reverse tunnel from a hub to the Kubernetes API servers of clusters it cannot dial.
#[derive(Parser)]
#[command(name = "tether", version, about)]
struct Cli {
    /// Take flags from this TOML file too, one [section] per command (see the README); the
    /// command line and the environment win over it.
    #[arg(long, global = true, env = "TETHER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make the CA, stub and agent certificates and the token issuer key.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Run the hub side: QUIC listener for agents and HTTPS front door for users.
    Stub(StubArgs),
    /// Run the cluster side: dial the stub and forward its requests to the API server.
    Agent(Box<AgentArgs>),
    /// Print a token for a user or service (signed with the issuer key).
    Token(TokenArgs),
    /// Print a kubeconfig that points kubectl at one cluster through the stub.
    Kubeconfig(KubeconfigArgs),
    /// Print the manifest that installs an agent in a cluster (issuing and registering its
    /// certificate if it has none yet).
    Register(RegisterArgs),
    /// Load-test a stub (or an upstream directly, for comparison); or serve a target to test.
    Bench(Box<BenchArgs>),
    /// Emulate a bad link on this machine (root): a network namespace for the stub, reached over
    /// a wire with loss, delay, jitter and a rate limit, plus a clean path for clients.
    Link(LinkArgs),
}

#[derive(Args)]
struct BenchArgs {
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
    /// How long to run.
    #[arg(long, short = 'd', default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after this many requests instead (within --duration).
    #[arg(long, short = 'n')]
    requests: Option<u64>,
    /// Request kinds and weights: small, list, watch, upload, e.g. small=80,list=10,watch=5,upload=5.
    #[arg(long, default_value = "small", value_parser = tether::bench::mix::Mix::parse)]
    mix: tether::bench::mix::Mix,
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
    /// The stub's QUIC address HOST:PORT, for --agents.
    #[arg(long)]
    stub: Option<String>,
    /// Cluster of the simulated agents.
    #[arg(long, default_value = "swarm")]
    cluster: String,
    /// Name the stub's certificate carries (default: the host of --stub).
    #[arg(long)]
    server_name: Option<String>,
    /// The stub's process id: its resident memory is read before and after the agents connect.
    #[arg(long)]
    stub_pid: Option<u32>,
}

#[derive(Args)]
struct LinkArgs {
    /// The network namespace to create; the stub runs in it (`ip netns exec NAME tether stub`).
    #[arg(long)]
    name: String,
    /// Picks the subnets 10.201.N.0/24 (lossy) and 10.202.N.0/24 (clean), 1 to 254.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=254))]
    index: u8,
    /// Packets lost at random in each direction, in percent.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// One-way delay (RTT is twice this).
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// Each packet's delay varies by up to this much either way.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    jitter: Duration,
    /// Rate limit per direction, e.g. 100mbit; 0: none.
    #[arg(long, default_value = "0", value_parser = tether::link::parse_rate)]
    rate: u64,
    /// Seed of the loss and jitter: the same seed gives the same link.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Packets queued per direction before new ones are dropped.
    #[arg(long, default_value_t = 1000)]
    queue_limit: usize,
    /// Take the link down after this long.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    lifetime: Duration,
}

#[derive(Args)]
struct RegisterArgs {
    #[arg(long, env = "TETHER_CERTS", default_value = "certs")]
    certs: PathBuf,
    #[arg(long)]
    cluster: String,
    /// Agent name (both replicas share its certificate).
    #[arg(long, default_value = "agent")]
    name: String,
    /// The stub's QUIC address as the cluster reaches it, HOST:PORT.
    #[arg(long)]
    stub: String,
    /// Container image with the tether binary.
    #[arg(long, default_value = concat!("tether:", env!("CARGO_PKG_VERSION")))]
    image: String,
    #[arg(long, default_value = "tether-system")]
    namespace: String,
}

#[derive(Args)]
struct IdentityArgs {
    /// Certificate directory holding issuer.key (only the console, which mints tokens, needs it).
    #[arg(long, env = "TETHER_CERTS", default_value = "certs")]
    certs: PathBuf,
    /// The user name the API server will see.
    #[arg(long)]
    user: String,
    /// A group of the user (repeatable).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// How long the token is valid (e.g. 1h, 30m, 7d).
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Bind the token to this client certificate (RFC 8705): the stub then accepts it only on a
    /// connection that presents that certificate.
    #[arg(long)]
    bind_cert: Option<PathBuf>,
}

#[derive(Args)]
struct TokenArgs {
    #[command(flatten)]
    identity: IdentityArgs,
    /// A cluster the caller may reach (repeatable).
    #[arg(long = "cluster", required = true)]
    clusters: Vec<String>,
}

#[derive(Args)]
struct KubeconfigArgs {
    #[command(flatten)]
    identity: IdentityArgs,
    /// The stub's front door, https://HOST:PORT.
    #[arg(long, env = "TETHER_STUB_URL")]
    stub: String,
    /// The cluster this kubeconfig reaches.
    #[arg(long)]
    cluster: String,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create the CA (DIR/ca.crt, DIR/ca.key).
    Init {
        #[arg(long, env = "TETHER_CERTS", default_value = "certs")]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace an existing CA (every certificate it signed stops working).
        #[arg(long)]
        force: bool,
    },
    /// Issue the stub's server certificate (DIR/stub.crt, DIR/stub.key).
    Stub {
        #[arg(long, env = "TETHER_CERTS", default_value = "certs")]
        dir: PathBuf,
        /// DNS name or IP address agents and users reach the stub by (repeatable).
        #[arg(long = "san", required = true, num_args = 1..)]
        sans: Vec<String>,
        #[arg(long, default_value_t = 365)]
        days: u32,
        #[arg(long)]
        force: bool,
    },
    /// Issue an agent client certificate (DIR/agents/CLUSTER/NAME.crt) and print its fingerprint.
    Agent {
        #[arg(long, env = "TETHER_CERTS", default_value = "certs")]
        dir: PathBuf,
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        name: String,
        /// Also add the fingerprint to the stub's whitelist (DIR/whitelist).
        #[arg(long)]
        register: bool,
        #[arg(long, default_value_t = 365)]
        days: u32,
        #[arg(long)]
        force: bool,
    },
    /// Add an existing agent certificate's fingerprint to the stub's whitelist (DIR/whitelist).
    Register {
        #[arg(long, env = "TETHER_CERTS", default_value = "certs")]
        dir: PathBuf,
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        name: String,
        /// The agent's certificate (PEM).
        cert: PathBuf,
    },
    /// Create the Ed25519 key pair that signs user tokens (DIR/issuer.key, DIR/issuer.pub).
    Issuer {
        #[arg(long, env = "TETHER_CERTS", default_value = "certs")]
        dir: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Print the SHA-256 fingerprint of a certificate file (PEM).
    Fingerprint { file: PathBuf },
}

#[derive(Args)]
struct QuicArgs {
    /// A peer silent this long is considered dead (keep-alives go out at a third of it).
    #[arg(long, env = "TETHER_IDLE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Congestion controller for what this side sends: bbr keeps its pace on links that lose
    /// packets; cubic and new-reno slow down at every loss.
    #[arg(long, env = "TETHER_CONGESTION", value_enum, default_value = "bbr")]
    congestion: Congestion,
}

#[derive(Args)]
struct StubArgs {
    /// Certificate directory (ca.crt, stub.crt, stub.key, whitelist).
    #[arg(long, env = "TETHER_CERTS", default_value = "certs")]
    certs: PathBuf,
    /// UDP address for agents (QUIC).
    #[arg(long, env = "TETHER_QUIC_LISTEN", default_value = "0.0.0.0:7443")]
    quic_listen: SocketAddr,
    /// TCP address for users and services (HTTPS).
    #[arg(long, env = "TETHER_HTTPS_LISTEN", default_value = "0.0.0.0:8443")]
    https_listen: SocketAddr,
    /// How long open requests may take to finish on shutdown.
    #[arg(long, env = "TETHER_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// The token issuer's public key (default: CERTS/issuer.pub).
    #[arg(long, env = "TETHER_ISSUER_PUB")]
    issuer_pub: Option<PathBuf>,
    /// Audit log: a file to append one JSON line per request to, `-` for stdout, `off` for none.
    #[arg(long, env = "TETHER_AUDIT_LOG", default_value = "-")]
    audit_log: AuditTarget,
    /// Requests one user may have in flight at once (watches count); beyond it, 429. 0: no limit.
    #[arg(long, env = "TETHER_MAX_REQUESTS_PER_USER", default_value_t = 2000)]
    max_requests_per_user: usize,
    /// Requests one cluster may have in flight at once; beyond it, 429. 0: no limit.
    #[arg(long, env = "TETHER_MAX_REQUESTS_PER_CLUSTER", default_value_t = 30000)]
    max_requests_per_cluster: usize,
    /// Requests one agent connection may carry at once; a cluster whose connections are all
    /// this busy answers 429. Keep it below the agents' --max-streams. 0: no limit.
    #[arg(long, env = "TETHER_MAX_REQUESTS_PER_AGENT", default_value_t = 16000)]
    max_requests_per_agent: usize,
    /// A response whose caller leaves it unread this long is dropped, so that it cannot hold
    /// the agent connection's flow-control window. 0s: never.
    #[arg(long, env = "TETHER_STALLED_READER_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    stalled_reader_timeout: Duration,
    /// Serve /healthz, /readyz and /metrics (Prometheus) on this address.
    #[arg(long, env = "TETHER_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// A front-door client must send a request's headers within this time (HTTP/1.1), or is
    /// disconnected: slow-loris protection.
    #[arg(long, env = "TETHER_HEADER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// Reload the whitelist only on SIGHUP, not also when the file changes.
    #[arg(long, env = "TETHER_NO_WATCH_WHITELIST")]
    no_watch_whitelist: bool,
    #[command(flatten)]
    quic: QuicArgs,
}

#[derive(Args)]
struct AgentArgs {
    /// Certificate directory (ca.crt and agents/CLUSTER/NAME.{crt,key}).
    #[arg(long, env = "TETHER_CERTS", default_value = "certs")]
    certs: PathBuf,
    #[arg(long, env = "TETHER_CLUSTER")]
    cluster: String,
    #[arg(long, env = "TETHER_NAME")]
    name: String,
    /// The stub's QUIC address, HOST:PORT.
    #[arg(long, env = "TETHER_STUB")]
    stub: String,
    /// Name to verify the stub's certificate against (default: the host of --stub).
    #[arg(long, env = "TETHER_SERVER_NAME")]
    server_name: Option<String>,
    /// Agent certificate (default: CERTS/agents/CLUSTER/NAME.crt).
    #[arg(long, env = "TETHER_CERT")]
    cert: Option<PathBuf>,
    /// Agent key (default: CERTS/agents/CLUSTER/NAME.key).
    #[arg(long, env = "TETHER_KEY")]
    key: Option<PathBuf>,
    /// CA that signed the stub's certificate (default: CERTS/ca.crt).
    #[arg(long, env = "TETHER_CA")]
    ca: Option<PathBuf>,
    /// The token issuer's public key, to verify callers again (default: CERTS/issuer.pub).
    #[arg(long, env = "TETHER_ISSUER_PUB")]
    issuer_pub: Option<PathBuf>,
    /// The API server (or any HTTP(S) server) to forward to.
    #[arg(
        long,
        env = "TETHER_UPSTREAM",
        conflicts_with_all = ["kubeconfig", "in_cluster"],
        required_unless_present_any = ["kubeconfig", "in_cluster"]
    )]
    upstream: Option<String>,
    /// Running in a pod: use its service account (token and CA files) and KUBERNETES_SERVICE_*.
    #[arg(long, env = "TETHER_IN_CLUSTER", conflicts_with = "kubeconfig")]
    in_cluster: bool,
    /// Where the pod's service account files are (with --in-cluster).
    #[arg(long, env = "TETHER_SERVICEACCOUNT_DIR", default_value = "/var/run/secrets/kubernetes.io/serviceaccount")]
    serviceaccount_dir: PathBuf,
    /// CA of the --upstream server's certificate.
    #[arg(long, env = "TETHER_UPSTREAM_CA", requires = "upstream")]
    upstream_ca: Option<PathBuf>,
    /// Take the API server's address, CA and credential from this kubeconfig.
    #[arg(long, env = "TETHER_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Context of the kubeconfig (default: its current context).
    #[arg(long, env = "TETHER_CONTEXT", requires = "kubeconfig")]
    context: Option<String>,
    /// Streams the stub may have open on this connection at once (watches each hold one). Keep
    /// it above the stub's --max-requests-per-agent, so a full connection is answered with 429
    /// rather than made to wait.
    #[arg(long, env = "TETHER_MAX_STREAMS", default_value_t = Tuning::default().max_request_streams)]
    max_streams: u32,
    /// First reconnect delay (doubles up to --backoff-max, with jitter).
    #[arg(long, env = "TETHER_BACKOFF_MIN", default_value = "100ms", value_parser = humantime::parse_duration)]
    backoff_min: Duration,
    #[arg(long, env = "TETHER_BACKOFF_MAX", default_value = "1s", value_parser = humantime::parse_duration)]
    backoff_max: Duration,
    /// How long in-flight requests may take to finish on shutdown.
    #[arg(long, env = "TETHER_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Serve /healthz and /readyz (ready while connected to the stub) on this address.
    #[arg(long, env = "TETHER_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// quic, tcp (TLS over TCP to the same port, for networks that block UDP), or auto: QUIC,
    /// falling back to TCP after repeated failures and returning to QUIC when it works again.
    #[arg(long, env = "TETHER_TRANSPORT", value_enum, default_value = "auto")]
    transport: tether::agent::TransportMode,
    /// With --transport auto, while on TCP: how often to try QUIC again.
    #[arg(long, env = "TETHER_QUIC_RETRY", default_value = "30s", value_parser = humantime::parse_duration)]
    quic_retry: Duration,
    #[command(flatten)]
    quic: QuicArgs,
}

fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TETHER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> std::process::ExitCode {
    use clap::CommandFactory;
    let args = match tether::config::merged_args(std::env::args_os().collect(), &Cli::command()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    init_tracing();
    tls::install_default_provider();
    if let Some((soft, hard)) = tether::fd_limit::raise_to_hard_limit() {
        tracing::debug!(soft, hard, "open-file limit");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Certs(c) => run_certs(c),
        Command::Stub(args) => {
            let dir = CertDir::new(args.certs);
            let config = StubConfig {
                issuer_pub: args.issuer_pub.unwrap_or_else(|| dir.issuer_pub()),
                audit: args.audit_log,
                watch_whitelist: !args.no_watch_whitelist,
                stalled_reader_timeout: Some(args.stalled_reader_timeout).filter(|t| !t.is_zero()),
                admin_listen: args.admin_listen,
                header_timeout: args.header_timeout,
                limits: Limits {
                    per_user: args.max_requests_per_user,
                    per_cluster: args.max_requests_per_cluster,
                    per_connection: args.max_requests_per_agent,
                },
                certs: dir,
                quic_listen: args.quic_listen,
                https_listen: args.https_listen,
                tuning: Tuning {
                    idle_timeout: args.quic.idle_timeout,
                    congestion: args.quic.congestion,
                    ..Tuning::default()
                },
                grace: args.grace,
            };
            let stub = Stub::bind(config).await.context("starting the stub")?;
            tracing::info!(quic = %stub.quic_addr()?, https = %stub.https_addr()?, "stub listening");
            stub.serve(tether::shutdown::signal()).await
        }
        Command::Agent(args) => {
            let dir = CertDir::new(&args.certs);
            let upstream = match (args.upstream, args.kubeconfig) {
                (Some(url), _) => UpstreamSource::Url { url, ca: args.upstream_ca },
                (None, Some(path)) => UpstreamSource::Kubeconfig { path, context: args.context },
                (None, None) if args.in_cluster => UpstreamSource::InCluster { dir: args.serviceaccount_dir },
                (None, None) => anyhow::bail!("give --upstream URL, --kubeconfig FILE or --in-cluster"),
            };
            let config = AgentConfig {
                cert: args.cert.unwrap_or_else(|| dir.agent_cert(&args.cluster, &args.name)),
                key: args.key.unwrap_or_else(|| dir.agent_key(&args.cluster, &args.name)),
                ca: args.ca.unwrap_or_else(|| dir.ca_cert()),
                issuer_pub: args.issuer_pub.unwrap_or_else(|| dir.issuer_pub()),
                cluster: args.cluster,
                name: args.name,
                stub: args.stub,
                server_name: args.server_name,
                upstream,
                tuning: Tuning {
                    idle_timeout: args.quic.idle_timeout,
                    max_request_streams: args.max_streams,
                    congestion: args.quic.congestion,
                },
                backoff_min: args.backoff_min,
                backoff_max: args.backoff_max,
                grace: args.grace,
                admin_listen: args.admin_listen,
                transport: args.transport,
                quic_retry: args.quic_retry,
            };
            agent::run(config, tether::shutdown::signal()).await
        }
        Command::Bench(args) => {
            if let Some(addr) = args.serve {
                return tether::bench::serve::serve(addr, tether::shutdown::signal()).await;
            }
            if let Some(agents) = args.agents {
                let stub = args.stub.expect("clap requires --stub");
                let host = stub.rsplit_once(':').map_or(stub.as_str(), |(h, _)| h).trim_matches(['[', ']']).to_owned();
                let config = tether::bench::swarm::SwarmConfig {
                    certs: CertDir::new(args.certs.expect("clap requires --certs")),
                    server_name: args.server_name.unwrap_or(host),
                    stub,
                    cluster: args.cluster,
                    agents,
                    hold: args.duration,
                    stub_pid: args.stub_pid,
                    progress: !args.quiet,
                };
                let report = tether::bench::swarm::run(config).await?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", report.table());
                }
                return Ok(());
            }
            let config = tether::bench::BenchConfig {
                target: args.target.expect("clap requires --target").trim_end_matches('/').to_owned(),
                token: args.token,
                ca: args.ca,
                concurrency: args.concurrency,
                connections: args.connections,
                http1: args.http1,
                duration: args.duration,
                requests: args.requests,
                mix: args.mix,
                paths: tether::bench::Paths {
                    small: args.small_path,
                    list: args.list_path,
                    watch: args.watch_path,
                    upload: args.upload_path,
                },
                upload_size: args.upload_size,
                timeout: args.timeout,
                progress: !args.quiet,
                hold_watches: args.hold_watches,
            };
            let report = tether::bench::run(config, tether::shutdown::signal()).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
        Command::Link(args) => {
            if !(0.0..=100.0).contains(&args.loss) {
                anyhow::bail!("--loss {} is not a percentage (0 to 100)", args.loss);
            }
            let config = tether::link::LinkConfig {
                name: args.name,
                index: args.index,
                impairment: tether::link::shaper::Impairment {
                    loss_percent: args.loss,
                    delay: args.delay,
                    jitter: args.jitter,
                    rate_bps: Some(args.rate).filter(|r| *r > 0),
                },
                seed: args.seed,
                queue_limit: args.queue_limit,
                lifetime: args.lifetime,
            };
            tether::link::run(config, tether::shutdown::signal()).await
        }
        Command::Token(args) => {
            for cluster in &args.clusters {
                tether::identity::names::validate("cluster", cluster)?;
            }
            println!("{}", mint_token(&args.identity, &args.clusters)?);
            Ok(())
        }
        Command::Register(args) => {
            let dir = CertDir::new(&args.certs);
            tether::identity::names::validate("namespace", &args.namespace)?;
            let cert = dir.agent_cert(&args.cluster, &args.name);
            let fingerprint = if cert.exists() {
                certs::register_in_dir(&dir, &args.cluster, &args.name, &cert)?.0
            } else {
                certs::agent_in_dir(&dir, &args.cluster, &args.name, 365, false, true)?.0
            };
            eprintln!(
                "agent {}/{} ({fingerprint}) is registered in {}",
                args.cluster,
                args.name,
                dir.whitelist().display()
            );
            let text = |path: PathBuf, what| tether::identity::files::load_text(&path, what);
            let manifest = Registration {
                namespace: &args.namespace,
                cluster: &args.cluster,
                name: &args.name,
                stub: &args.stub,
                image: &args.image,
                ca_pem: &text(dir.ca_cert(), "cannot read the CA certificate")?,
                cert_pem: &text(cert, "cannot read the agent certificate")?,
                key_pem: &text(dir.agent_key(&args.cluster, &args.name), "cannot read the agent key")?,
                issuer_pub_pem: &text(
                    dir.issuer_pub(),
                    "cannot read the issuer public key (run `tether certs issuer`)",
                )?,
            };
            print!("{}", manifest.render());
            Ok(())
        }
        Command::Kubeconfig(args) => {
            tether::identity::names::validate("cluster", &args.cluster)?;
            let token = mint_token(&args.identity, std::slice::from_ref(&args.cluster))?;
            let ca_path = CertDir::new(&args.identity.certs).ca_cert();
            let ca_pem = tether::identity::files::load_text(&ca_path, "cannot read the CA certificate")?;
            let kubeconfig = UserKubeconfig {
                stub_url: &args.stub,
                cluster: &args.cluster,
                user: &args.identity.user,
                ca_pem: &ca_pem,
                token: &token,
            };
            print!("{}", kubeconfig.render());
            Ok(())
        }
    }
}

fn mint_token(identity: &IdentityArgs, clusters: &[String]) -> anyhow::Result<String> {
    let dir = CertDir::new(&identity.certs);
    let issuer = TokenIssuer::load(&dir.issuer_key())?;
    let mut claims = Claims::new(&identity.user, &identity.groups, clusters, identity.ttl);
    if let Some(cert) = &identity.bind_cert {
        claims.cnf = Some(Confirmation::for_certificate(&certs::fingerprint_of_file(cert)?));
    }
    Ok(issuer.sign(&claims))
}

fn run_certs(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init { dir, days, force } => {
            let dir = CertDir::new(dir);
            let fp = certs::init_ca_in_dir(&dir, days, force)?;
            println!("CA written to {} ({fp})", dir.ca_cert().display());
        }
        CertsCommand::Stub { dir, sans, days, force } => {
            let dir = CertDir::new(dir);
            let fp = certs::stub_in_dir(&dir, &sans, days, force)?;
            println!("stub certificate written to {} for {} ({fp})", dir.stub_cert().display(), sans.join(", "));
        }
        CertsCommand::Agent { dir, cluster, name, register, days, force } => {
            let dir = CertDir::new(dir);
            let (fp, registered) = certs::agent_in_dir(&dir, &cluster, &name, days, force, register)?;
            // The fingerprint alone on stdout, so scripts can capture it; the rest on stderr.
            println!("{fp}");
            eprintln!("agent certificate written to {}", dir.agent_cert(&cluster, &name).display());
            match registered {
                Some(Registered::Added) => eprintln!("registered {cluster}/{name} in {}", dir.whitelist().display()),
                Some(Registered::AlreadyPresent) => eprintln!("{cluster}/{name} was already registered"),
                None => eprintln!("not registered: add `{cluster} {name} {fp}` to the stub's whitelist"),
            }
        }
        CertsCommand::Register { dir, cluster, name, cert } => {
            let dir = CertDir::new(dir);
            let (fp, registered) = certs::register_in_dir(&dir, &cluster, &name, &cert)?;
            println!("{fp}");
            match registered {
                Registered::Added => eprintln!("registered {cluster}/{name} in {}", dir.whitelist().display()),
                Registered::AlreadyPresent => eprintln!("{cluster}/{name} was already registered"),
            }
        }
        CertsCommand::Issuer { dir, force } => {
            let dir = CertDir::new(dir);
            certs::issuer_in_dir(&dir, force)?;
            println!("issuer key pair written to {} and {}", dir.issuer_key().display(), dir.issuer_pub().display());
        }
        CertsCommand::Fingerprint { file } => println!("{}", certs::fingerprint_of_file(&file)?),
    }
    Ok(())
}
