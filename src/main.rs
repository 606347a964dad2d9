//! The `tether` binary: parses the command line (with flags from `--config FILE` merged in),
//! sets up logging and the process (allocator, crypto provider, open-file limit, async runtime), and
//! dispatches to the command. Everything else is in the library; the commands' flags are in
//! `tether::cli`.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use tether::cli::{Cli, Command};

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

fn main() -> ExitCode {
    // First, before any thread or large buffer exists.
    let allocator_tuned = tether::allocator::tune_for_streaming();
    let args = match tether::config::merged_args(std::env::args_os().collect(), &Cli::command()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    init_tracing();
    tether::identity::tls::install_default_provider();
    tracing::debug!(allocator_tuned, "allocator thresholds for streaming");
    if let Some((soft, hard)) = tether::fd_limit::raise_to_hard_limit() {
        tracing::debug!(soft, hard, "open-file limit");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Certs(certs) => certs.run(),
        Command::Stub(stub) => stub.run().await,
        Command::Agent(agent) => agent.run().await,
        Command::Token(token) => token.run(),
        Command::Kubeconfig(kubeconfig) => kubeconfig.run(),
        Command::Register(register) => register.run(),
        Command::Hub(hub) => hub.run(),
        Command::Bench(bench) => bench.run().await,
        Command::Link(link) => link.run().await,
        Command::Console(console) => console.run().await,
        Command::Credential(credential) => credential.run().await,
        Command::Login(login) => login.run().await,
    }
}
