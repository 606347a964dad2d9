//! `tether certs ...`: the CA, the stub's and agents' certificates, the whitelist entries and
//! the token issuer key pair.

use std::path::PathBuf;

use clap::Subcommand;

use crate::identity::certs;
use crate::identity::files::CertDir;
use crate::identity::whitelist::Registered;

#[derive(Subcommand)]
pub enum CertsCommand {
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
    /// Issue a service's client certificate (DIR/services/NAME.crt): with it a service gets
    /// certificate-bound tokens from the console, as the hub user tether:service:NAME.
    Service {
        #[arg(long, env = "TETHER_CERTS", default_value = "certs")]
        dir: PathBuf,
        #[arg(long)]
        name: String,
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

impl CertsCommand {
    /// Makes what the subcommand says, and prints where it went and its fingerprint.
    pub fn run(self) -> anyhow::Result<()> {
        match self {
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
                    Some(Registered::Added) => {
                        eprintln!("registered {cluster}/{name} in {}", dir.whitelist().display())
                    }
                    Some(Registered::AlreadyPresent) => eprintln!("{cluster}/{name} was already registered"),
                    None => eprintln!("not registered: add `{cluster} {name} {fp}` to the stub's whitelist"),
                }
            }
            CertsCommand::Service { dir, name, days, force } => {
                let dir = CertDir::new(dir);
                let fp = certs::service_in_dir(&dir, &name, days, force)?;
                println!("{fp}");
                eprintln!(
                    "service certificate written to {} (the hub user tether:service:{name})",
                    dir.service_cert(&name).display()
                );
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
                println!(
                    "issuer key pair written to {} and {}",
                    dir.issuer_key().display(),
                    dir.issuer_pub().display()
                );
            }
            CertsCommand::Fingerprint { file } => println!("{}", certs::fingerprint_of_file(&file)?),
        }
        Ok(())
    }
}
