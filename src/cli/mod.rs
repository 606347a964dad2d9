//! The command line: clap's types for every command, and how each becomes that command's
//! configuration and runs. `main.rs` parses with [`Cli`] and dispatches to one of these.
//!
//! - [`stub`], [`agent`]: the two sides of the tunnel.
//! - [`certs`]: `tether certs ...`, the CA and every certificate.
//! - [`credentials`]: `tether token` and `tether kubeconfig`, for users and services.
//! - [`console`]: `tether console`, `tether credential` (kubectl's exec plugin) and `tether login`.
//! - [`register`]: `tether register`, the manifest that installs an agent.
//! - [`status`]: `tether status`, a stub's cluster inventory as a table.
//! - [`hub`]: `tether hub`, the hub's own manifest (stub replicas, Services, Lease RBAC).
//! - [`bench`]: `tether bench`, the load harness.
//! - [`link`]: `tether link`, an emulated bad link.
//!
//! Every flag of every command can also come from the environment: [`command`] gives each flag
//! that names no variable of its own `TETHER_` and its long name (`--hub-token-file` is
//! `TETHER_HUB_TOKEN_FILE`). [`crate::config`] adds flags from a TOML file before clap parses.

pub mod agent;
pub mod bench;
pub mod certs;
pub mod console;
pub mod credentials;
pub mod hub;
pub mod link;
pub mod register;
pub mod status;
pub mod stub;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use crate::logging::LogFormat;
use crate::transport::quic::Congestion;

/// A QUIC reverse tunnel from a hub to the Kubernetes API servers of clusters it cannot dial.
#[derive(Parser)]
#[command(name = "tether", version, about)]
pub struct Cli {
    /// Take flags from this TOML file too, one [section] per command (see the README); the
    /// command line and the environment win over it.
    #[arg(long, global = true, env = "TETHER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How log lines are written to stderr: text for people, json for log collectors (one object
    /// per line).
    #[arg(long, global = true, env = "TETHER_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The command line as clap parses it: [`Cli`], with a `TETHER_*` variable for every flag.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    with_environment(Cli::command())
}

/// The variable a flag without one of its own gets: `TETHER_` and its long name.
pub fn variable_for(long: &str) -> String {
    format!("TETHER_{}", long.to_ascii_uppercase().replace('-', "_"))
}

fn with_environment(mut command: clap::Command) -> clap::Command {
    let missing: Vec<(clap::Id, String)> = command
        .get_arguments()
        .filter(|a| a.get_env().is_none() && !a.is_positional())
        .filter(|a| !matches!(a.get_action(), clap::ArgAction::Help | clap::ArgAction::Version))
        .filter_map(|a| a.get_long().map(|long| (a.get_id().clone(), variable_for(long))))
        .collect();
    for (id, variable) in missing {
        command = command.mut_arg(id, |a| a.env(variable));
    }
    let subcommands: Vec<String> = command.get_subcommands().map(|c| c.get_name().to_owned()).collect();
    for name in subcommands {
        command = command.mut_subcommand(name, with_environment);
    }
    command
}

#[derive(Subcommand)]
pub enum Command {
    /// Make the CA, stub and agent certificates and the token issuer key.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Run the hub side: QUIC listener for agents and HTTPS front door for users.
    Stub(Box<stub::StubArgs>),
    /// Run the cluster side: dial the stub and forward its requests to the API server.
    Agent(Box<agent::AgentArgs>),
    /// Print a token for a user or service (signed with the issuer key).
    Token(credentials::TokenArgs),
    /// Print a kubeconfig that points kubectl at one cluster through the stub.
    Kubeconfig(credentials::KubeconfigArgs),
    /// Show a stub's clusters and agent connections (from its admin listener's /clusters).
    Status(status::StatusArgs),
    /// Print the manifest that installs an agent in a cluster (issuing and registering its
    /// certificate if it has none yet).
    Register(register::RegisterArgs),
    /// Print the hub's own manifest: N stub replicas, their Services, Lease RBAC and
    /// certificates.
    #[command(long_about = hub::LONG_ABOUT)]
    Hub(Box<hub::HubArgs>),
    /// Load-test a stub (or an upstream directly, for comparison); or serve a target to test.
    Bench(Box<bench::BenchArgs>),
    /// Emulate a bad link on this machine (root): a network namespace for the stub, reached over
    /// a wire with loss, delay, jitter and a rate limit, plus a clean path for clients.
    Link(link::LinkArgs),
    /// Hand users and services short-lived tokens, the hub's Kubernetes RBAC deciding.
    Console(Box<console::ConsoleArgs>),
    /// kubectl's exec credential plugin: a token from the console, cached and refreshed.
    Credential(console::CredentialArgs),
    /// Sign in at the hub's OpenID Connect provider (device grant), for tether credential --login.
    Login(console::LoginArgs),
}

#[derive(Args)]
pub struct QuicArgs {
    /// A peer silent this long is considered dead (keep-alives go out at a third of it).
    #[arg(long, env = "TETHER_IDLE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Congestion controller for what this side sends: bbr keeps its pace on links that lose
    /// packets; cubic and new-reno slow down at every loss.
    #[arg(long, env = "TETHER_CONGESTION", value_enum, default_value = "bbr")]
    congestion: Congestion,
}

impl QuicArgs {
    /// The transport tuning these flags give (other knobs at their defaults).
    pub fn tuning(&self) -> crate::transport::quic::Tuning {
        crate::transport::quic::Tuning {
            idle_timeout: self.idle_timeout,
            congestion: self.congestion,
            ..Default::default()
        }
    }
}
