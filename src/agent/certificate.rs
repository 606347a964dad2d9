//! The agent's certificate toward the stub: certificate, key and the CA it trusts, loaded from
//! files, and watched so that new files (a rotated certificate) are picked up while the agent
//! runs. A new set is used only once it loads as a whole: a certificate written before its key,
//! or a key that does not match, is reported (naming the file) and waited out, and the
//! certificate in use stays in force.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::errors;
use crate::identity::files::{self, FileError};
use crate::identity::fingerprint::Fingerprint;
use crate::identity::tls::{self, TlsError};
use crate::transport::dial::ClientTls;
use crate::transport::quic::Tuning;

/// How often the files are checked for changes (besides on SIGHUP).
pub const POLL: Duration = Duration::from_secs(1);

/// Where the certificate comes from.
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The raw bytes of the three files, to notice any change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Contents {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// A loaded certificate: what the agent dials with, over either transport.
#[derive(Clone)]
pub struct AgentCertificate {
    pub tls: ClientTls,
    /// SHA-256 of the certificate: the whitelist entry the stub must have.
    pub fingerprint: Fingerprint,
    contents: Contents,
}

impl std::fmt::Debug for AgentCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCertificate").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

/// Why the files do not form a usable certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// A file could not be read or holds no usable PEM.
    #[error(transparent)]
    File(#[from] FileError),
    /// rustls refused the certificate, key or CA (a key that does not match, say).
    #[error("{} and {}: {source}", cert.display(), key.display())]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: Box<TlsError>,
    },
    /// quinn refused the TLS configuration.
    #[error("cannot build the QUIC client configuration")]
    Quic(#[source] std::io::Error),
}

impl CertificateFiles {
    fn read(&self) -> Result<Contents, FileError> {
        Ok(Contents {
            ca: files::read(&self.ca, "cannot read CA certificate")?,
            cert: files::read(&self.cert, "cannot read certificate")?,
            key: files::read(&self.key, "cannot read private key")?,
        })
    }

    /// Reads and checks the files now.
    pub fn load(&self, tuning: &Tuning) -> Result<AgentCertificate, CertificateError> {
        self.build(self.read()?, tuning)
    }

    fn build(&self, contents: Contents, tuning: &Tuning) -> Result<AgentCertificate, CertificateError> {
        let ca = files::parse_certs(&self.ca, &contents.ca)?;
        let chain = files::parse_certs(&self.cert, &contents.cert)?;
        let key = files::parse_key(&self.key, &contents.key)?;
        let fingerprint = Fingerprint::of_der(&chain[0]);
        let tls = tls::agent_dialer(&ca, chain, key).map_err(|source| CertificateError::Tls {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source: Box::new(source),
        })?;
        let tls = ClientTls::new(tls, tuning).map_err(CertificateError::Quic)?;
        Ok(AgentCertificate { tls, fingerprint, contents })
    }
}

/// Checks the files every [`POLL`] and on SIGHUP; sends every new certificate that loads. A
/// set that does not load is reported once (until it changes again) and skipped.
pub async fn watch(
    files: CertificateFiles,
    tuning: Tuning,
    current: AgentCertificate,
    tx: mpsc::Sender<AgentCertificate>,
    cancel: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).ok();
    let mut seen = current.contents;
    loop {
        let sighup = async {
            match hangup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = sighup => tracing::info!("SIGHUP: checking the certificate files"),
            _ = cancel.cancelled() => return,
        }
        let contents = match files.read() {
            Ok(contents) => contents,
            Err(e) => {
                tracing::debug!(error = %e, "certificate files not readable now");
                continue;
            }
        };
        if contents == seen {
            continue;
        }
        seen = contents.clone();
        match files.build(contents, &tuning) {
            Ok(certificate) => {
                tracing::info!(fingerprint = %certificate.fingerprint, cert = %files.cert.display(), "new certificate files");
                if tx.send(certificate).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(
                "new certificate files are not usable ({}); keeping the certificate in use",
                errors::chain(&e)
            ),
        }
    }
}
