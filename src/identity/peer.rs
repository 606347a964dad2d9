//! Who may be a peer replica of the hub: a certificate that chains to the tether CA and is a
//! stub's, which is to say it carries the `serverAuth` extended key usage. Agent certificates
//! carry only `clientAuth` (see [`super::certs`]), so an agent can never pass for a replica and
//! be handed requests; and replicas of one hub may run with different stub certificates (a
//! rotation rolling through the Deployment) and still accept each other.
//!
//! Both ends of a peer link check the other the same way ([`PeerVerifier`] is rustls's client
//! *and* server verifier), without a host name: replicas dial each other by pod address, which
//! no certificate names.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

use super::fingerprint::Fingerprint;
use super::tls::{STUB_PAIR, TlsError, provider, tls13_client, tls13_server, unusable_pair};
use crate::wire::PEER_ALPN;

/// The DER contents of the OID id-kp-serverAuth (1.3.6.1.5.5.7.3.1).
const EKU_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];

/// Accepts a certificate that chains to the tether CA and is a stub's (see the module doc).
#[derive(Debug)]
pub struct PeerVerifier {
    anchors: Vec<TrustAnchor<'static>>,
    subjects: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    pub fn new(ca: &[CertificateDer<'static>]) -> Result<Arc<PeerVerifier>, TlsError> {
        let mut anchors = Vec::new();
        let mut subjects = Vec::new();
        for cert in ca {
            let anchor = webpki::anchor_from_trusted_cert(cert).map_err(|_| TlsError::Rustls {
                what: "the CA certificate is not usable",
                source: rustls::Error::InvalidCertificate(CertificateError::BadEncoding),
            })?;
            subjects.push(DistinguishedName::from(anchor.subject.to_vec()));
            anchors.push(anchor.to_owned());
        }
        Ok(Arc::new(PeerVerifier { anchors, subjects, algorithms: provider().signature_verification_algorithms }))
    }

    /// The chain and key-usage check, shared by both directions.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let verified = cert.verify_for_usage(
            self.algorithms.all,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::required(EKU_SERVER_AUTH),
            None,
            None,
        );
        if let Err(e) = verified {
            let fingerprint = Fingerprint::of_der(end_entity);
            tracing::warn!(%fingerprint, error = %e, "refused peer: not a stub certificate of the tether CA");
            return Err(rustls::Error::InvalidCertificate(match e {
                webpki::Error::CertExpired { .. } => CertificateError::Expired,
                webpki::Error::UnknownIssuer => CertificateError::UnknownIssuer,
                _ => CertificateError::ApplicationVerificationFailure,
            }));
        }
        Ok(())
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.subjects
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
        self.verify(end_entity, intermediates, now).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The listening replica's TLS on its peer port: its stub certificate, and peers verified by
/// [`PeerVerifier`]. No session resumption, as on the agent listener.
pub fn listener(
    ca: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, TlsError> {
    let mut config = tls13_server()?
        .with_client_cert_verifier(PeerVerifier::new(ca)?)
        .with_single_cert(chain, key)
        .map_err(unusable_pair(STUB_PAIR))?;
    config.alpn_protocols = vec![PEER_ALPN.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The dialing replica's TLS toward a peer: its stub certificate as the client certificate, and
/// the peer verified by [`PeerVerifier`].
pub fn dialer(
    ca: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ClientConfig, TlsError> {
    let mut config = tls13_client(provider())?
        .dangerous()
        .with_custom_certificate_verifier(PeerVerifier::new(ca)?)
        .with_client_auth_cert(chain, key)
        .map_err(unusable_pair(STUB_PAIR))?;
    config.alpn_protocols = vec![PEER_ALPN.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::certs::{Signer, Validity, new_ca};

    fn der(pem: &str) -> Vec<CertificateDer<'static>> {
        crate::identity::files::parse_certs(std::path::Path::new("test"), pem.as_bytes()).unwrap()
    }

    #[test]
    fn stubs_of_the_ca_pass_agents_and_strangers_do_not() {
        let ca = new_ca("tether test CA", Validity::days(1)).unwrap();
        let signer = Signer::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
        let verifier = PeerVerifier::new(&der(&ca.cert_pem)).unwrap();
        let now = UnixTime::now();

        let stub = signer.issue_stub(&["localhost".into()], Validity::days(1)).unwrap();
        assert!(verifier.verify(&der(&stub.cert_pem)[0], &[], now).is_ok(), "a stub certificate of our CA");

        let agent = signer.issue_agent("dev", "agent-0", Validity::days(1)).unwrap();
        assert!(verifier.verify(&der(&agent.cert_pem)[0], &[], now).is_err(), "an agent is never a peer");

        let other_ca = new_ca("another CA", Validity::days(1)).unwrap();
        let other = Signer::from_pem(&other_ca.cert_pem, &other_ca.key_pem).unwrap();
        let stranger = other.issue_stub(&["localhost".into()], Validity::days(1)).unwrap();
        assert!(verifier.verify(&der(&stranger.cert_pem)[0], &[], now).is_err(), "a stub of another CA");
    }
}
