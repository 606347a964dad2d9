//! The stub's client-certificate verifier: the WebPKI chain check against the tether CA, then
//! the fingerprint whitelist. Both happen inside the TLS handshake, so an agent that is not
//! whitelisted never gets a connection: it receives the TLS alert `access_denied`.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::fingerprint::Fingerprint;
use super::whitelist::WhitelistHandle;

/// Told the reason of every refused agent, for metrics: `"chain"` or `"whitelist"` from the
/// verifier; the listener adds the refusals the verifier never sees (`"no_certificate"`, ...).
pub type OnRefusal = Arc<dyn Fn(&'static str) + Send + Sync>;

/// Chain check plus whitelist check. See the module doc.
pub struct WhitelistVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    whitelist: WhitelistHandle,
    on_refusal: OnRefusal,
}

impl std::fmt::Debug for WhitelistVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhitelistVerifier").field("whitelist", &self.whitelist).finish_non_exhaustive()
    }
}

impl WhitelistVerifier {
    /// `chain` must require a client certificate (it is built from the tether CA).
    pub fn new(
        chain: Arc<dyn ClientCertVerifier>,
        whitelist: WhitelistHandle,
        on_refusal: OnRefusal,
    ) -> WhitelistVerifier {
        WhitelistVerifier { chain, whitelist, on_refusal }
    }
}

impl ClientCertVerifier for WhitelistVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fingerprint = Fingerprint::of_der(end_entity);
        if let Err(e) = self.chain.verify_client_cert(end_entity, intermediates, now) {
            tracing::warn!(%fingerprint, error = %e, "refused agent: certificate does not verify against the tether CA");
            (self.on_refusal)("chain");
            return Err(e);
        }
        if self.whitelist.get().lookup(&fingerprint).is_none() {
            tracing::warn!(%fingerprint, "refused agent: certificate is not in the whitelist");
            (self.on_refusal)("whitelist");
            // Maps to the TLS alert access_denied, which the agent reports in plain words.
            return Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}
