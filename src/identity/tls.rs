//! rustls configurations. One crypto provider (ring) for the whole process; TLS 1.3 only between
//! agent and stub (QUIC requires it, and the TCP fallback uses the same configuration), TLS 1.3
//! and 1.2 on the HTTPS front door for older clients.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::verifier::WhitelistVerifier;
use super::whitelist::WhitelistHandle;
use crate::wire::ALPN;

/// The process-wide crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process default. kube's TLS code asks for the default provider and
/// panics if none (or two) are installed, so every entry point calls this first.
pub fn install_default_provider() {
    // Err means one is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA was rejected by rustls.
    #[error("{what}")]
    Rustls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    /// The CA could not be turned into a certificate verifier.
    #[error("cannot build a certificate verifier from the CA")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// A server configuration for TLS 1.3 only (agent and peer listeners), its verifier to come.
pub(crate) fn tls13_server() -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, TlsError> {
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls { what: "TLS 1.3 is not available", source })
}

/// A client configuration for TLS 1.3 only (agents and peer links), its verifier to come.
pub(crate) fn tls13_client(
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsError> {
    ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls { what: "TLS 1.3 is not available", source })
}

/// Whose certificate and key failed to pair, for [`unusable_pair`].
pub(crate) const STUB_PAIR: &str = "the stub certificate and key do not form a usable pair";
pub(crate) const AGENT_PAIR: &str = "the agent certificate and key do not form a usable pair";

/// The error of a certificate and key that do not belong together ([`STUB_PAIR`] or
/// [`AGENT_PAIR`]).
pub(crate) fn unusable_pair(what: &'static str) -> impl FnOnce(rustls::Error) -> TlsError {
    move |source| TlsError::Rustls { what, source }
}

/// A root store holding the tether CA.
pub fn roots(ca: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in ca {
        store
            .add(cert.clone())
            .map_err(|source| TlsError::Rustls { what: "the CA certificate is not usable", source })?;
    }
    Ok(Arc::new(store))
}

/// The stub's TLS toward agents (QUIC and the TCP fallback alike): its certificate, and agents
/// verified by chain and whitelist.
pub fn agent_listener(
    ca: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    whitelist: WhitelistHandle,
    on_refusal: super::verifier::OnRefusal,
) -> Result<ServerConfig, TlsError> {
    let webpki =
        WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider()).build().map_err(TlsError::Verifier)?;
    let verifier = Arc::new(WhitelistVerifier::new(webpki, whitelist, on_refusal));
    let mut config = tls13_server()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(unusable_pair(STUB_PAIR))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // No session resumption: a resumed handshake skips the client-certificate verifier, so an
    // agent removed from the whitelist could come back on an old ticket. Agents reconnect
    // rarely; a full handshake each time is cheap.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The agent's TLS toward the stub (QUIC and the TCP fallback alike): the stub must chain to
/// the tether CA; the agent presents its own certificate.
pub fn agent_dialer(
    ca: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ClientConfig, TlsError> {
    SharedDialerTls::new(ca)?.agent_dialer(chain, key)
}

/// What agents share toward the stub: one crypto provider and one server verifier (the stub
/// must chain to the tether CA). An agent builds one for itself ([`agent_dialer`]); `tether
/// bench --agents` shares one among thousands of simulated agents, each with a certificate of
/// its own but nothing else of its own.
#[derive(Clone)]
pub struct SharedDialerTls {
    provider: Arc<CryptoProvider>,
    verifier: Arc<rustls::client::WebPkiServerVerifier>,
}

impl SharedDialerTls {
    pub fn new(ca: &[CertificateDer<'static>]) -> Result<SharedDialerTls, TlsError> {
        let provider = provider();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider.clone())
            .build()
            .map_err(TlsError::Verifier)?;
        Ok(SharedDialerTls { provider, verifier })
    }

    /// An agent's TLS toward the stub, sharing the provider and verifier, without a session
    /// cache (a few KiB each; the stub sends no tickets anyway, see [`agent_listener`]).
    pub fn agent_dialer(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<ClientConfig, TlsError> {
        let mut config = tls13_client(self.provider.clone())?
            .with_webpki_verifier(self.verifier.clone())
            .with_client_auth_cert(chain, key)
            .map_err(unusable_pair(AGENT_PAIR))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }
}

/// The front door's TLS for users and services: HTTP/2 and HTTP/1.1 by ALPN. A client
/// certificate is optional (users bring tokens); if one is presented it must chain to the tether
/// CA, and a token bound to it (RFC 8705) is then accepted on that connection.
pub fn front_door(
    ca: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(TlsError::Verifier)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls { what: "no TLS versions available", source })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(unusable_pair(STUB_PAIR))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
