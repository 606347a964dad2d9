//! The `tether` binary: parses the command line (with flags from `--config FILE` merged in),
//! sets up logging and the process (allocator, crypto provider, open-file limit, async runtime), and
//! dispatches to the command. Everything else is in the library; the commands' flags are in
//! `tether::cli`.

use std::process::ExitCode;

use clap::FromArgMatches;

use tether::cli::{Cli, Command};

fn main() -> ExitCode {
    // First, before any thread or large buffer exists.
    let allocator_tuned = tether::allocator::tune_for_streaming();
    let mut command = tether::cli::command();
    command.build(); // global flags (--log-format) become keys of every [section] of --config
    let args = match tether::config::merged_args(std::env::args_os().collect(), &command) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = match command.try_get_matches_from(args).and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    tether::logging::init(cli.log_format);
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
        Command::Status(status) => status.run().await,
        Command::Hub(hub) => hub.run(),
        Command::Bench(bench) => bench.run().await,
        Command::Link(link) => link.run().await,
        Command::Console(console) => console.run().await,
        Command::Credential(credential) => credential.run().await,
        Command::Login(login) => login.run().await,
    }
}
