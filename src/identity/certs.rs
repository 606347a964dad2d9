//! Minting certificates with rcgen: the tether CA, the stub's server certificate, agent client
//! certificates, and the Ed25519 issuer key pair that signs user tokens. The `*_in_dir`
//! functions are what `tether certs ...` does: they write into a [`CertDir`], refuse to replace
//! files without `force`, and report fingerprints.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

use super::files::{self, CertDir, FileError, Mode};
use super::fingerprint::Fingerprint;
use super::names::{self, InvalidName};
use super::whitelist::{self, Entry, Registered, WhitelistError};

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or the key.
    #[error("{what}")]
    Rcgen {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    /// A certificate or key file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// A cluster or agent name is not a DNS label.
    #[error(transparent)]
    Name(#[from] InvalidName),
    /// Registering in the whitelist failed.
    #[error(transparent)]
    Whitelist(#[from] WhitelistError),
    /// A subject alternative name is neither a DNS name nor an IP address.
    #[error("--san {0:?} is neither a DNS name nor an IP address")]
    BadSan(String),
}

fn rcgen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertError {
    let what = what.into();
    move |source| CertError::Rcgen { what, source }
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew between hub and cluster) for `days` days.
    pub fn days(days: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }
}

/// A freshly minted certificate and its key, in PEM, with the leaf's DER and fingerprint.
pub struct Minted {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub fingerprint: Fingerprint,
}

impl Minted {
    /// Writes the certificate and key (the key 0600).
    pub fn save(&self, cert: &std::path::Path, key: &std::path::Path) -> Result<(), FileError> {
        files::save(key, self.key_pem.as_bytes(), Mode::Secret)?;
        files::save(cert, self.cert_pem.as_bytes(), Mode::Public)
    }
}

fn params(common_name: &str, validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "tether");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params
}

fn minted(cert: rcgen::Certificate, key: &KeyPair) -> Minted {
    let der = cert.der().clone();
    Minted { cert_pem: cert.pem(), key_pem: key.serialize_pem(), fingerprint: Fingerprint::of_der(&der), der }
}

/// Makes a self-signed CA.
pub fn new_ca(common_name: &str, validity: Validity) -> Result<Minted, CertError> {
    let key = KeyPair::generate().map_err(rcgen_err("generating the CA key"))?;
    let mut params = params(common_name, validity);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).map_err(rcgen_err("self-signing the CA"))?;
    Ok(minted(cert, &key))
}

/// A CA that can sign leaf certificates.
pub struct Signer {
    issuer: Issuer<'static, KeyPair>,
}

impl Signer {
    /// From a CA certificate and key in PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Signer, CertError> {
        let key = KeyPair::from_pem(key_pem).map_err(rcgen_err("reading the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(rcgen_err("reading the CA certificate"))?;
        Ok(Signer { issuer })
    }

    /// From `ca.crt` and `ca.key` of a certificate directory.
    pub fn load(dir: &CertDir) -> Result<Signer, CertError> {
        let cert = files::load_text(&dir.ca_cert(), "cannot read the CA certificate (run `tether certs init` first)")?;
        let key = files::load_text(&dir.ca_key(), "cannot read the CA key")?;
        Signer::from_pem(&cert, &key)
    }

    fn sign(&self, params: CertificateParams, what: &str) -> Result<Minted, CertError> {
        let key = KeyPair::generate().map_err(rcgen_err(format!("generating the {what} key")))?;
        let cert =
            params.signed_by(&key, &self.issuer).map_err(rcgen_err(format!("signing the {what} certificate")))?;
        Ok(minted(cert, &key))
    }

    /// The stub's server certificate, valid for each of `sans` (DNS names or IP addresses).
    pub fn issue_stub(&self, sans: &[String], validity: Validity) -> Result<Minted, CertError> {
        let mut params = params("tether stub", validity);
        for san in sans {
            let entry = match san.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(san.clone().try_into().map_err(|_| CertError::BadSan(san.clone()))?),
            };
            params.subject_alt_names.push(entry);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, "stub")
    }

    /// A service's client certificate, for the console: it names the service in a URI
    /// ([`service_name_of`]), and the console gets the hub's RBAC decision for the user
    /// `tether:service:NAME`.
    pub fn issue_service(&self, name: &str, validity: Validity) -> Result<Minted, CertError> {
        names::validate("service name", name)?;
        let mut params = params(&format!("tether service {name}"), validity);
        let uri = format!("{SERVICE_URI_PREFIX}{name}");
        params.subject_alt_names.push(SanType::URI(uri.clone().try_into().map_err(|_| CertError::BadSan(uri))?));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, "service")
    }

    /// An agent's client certificate. The subject names cluster and agent for humans; the stub
    /// trusts only the whitelist entry of its fingerprint.
    pub fn issue_agent(&self, cluster: &str, name: &str, validity: Validity) -> Result<Minted, CertError> {
        names::validate("cluster", cluster)?;
        names::validate("agent name", name)?;
        let mut params = params(&format!("tether agent {cluster}/{name}"), validity);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, "agent")
    }
}

/// The URI a service certificate names its service by, `tether://service/NAME`; agent and stub
/// certificates carry none, so neither can pass for a service.
const SERVICE_URI_PREFIX: &str = "tether://service/";

/// The service a client certificate names (`tether certs service`), if it is a service
/// certificate. The caller has already verified that it chains to the tether CA.
pub fn service_name_of(der: &rustls::pki_types::CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let sans = cert.subject_alternative_name().ok()??;
    sans.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => uri
            .strip_prefix(SERVICE_URI_PREFIX)
            .filter(|n| names::validate("service name", n).is_ok())
            .map(str::to_owned),
        _ => None,
    })
}

/// The Ed25519 key pair that signs user tokens: (private PKCS#8 PEM, public SPKI PEM).
pub fn new_issuer_keypair() -> Result<(String, String), CertError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(rcgen_err("generating the issuer key"))?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

/// `tether certs init`: a new CA in `dir`.
pub fn init_ca_in_dir(dir: &CertDir, days: u32, force: bool) -> Result<Fingerprint, CertError> {
    files::refuse_overwrite(&[&dir.ca_cert(), &dir.ca_key()], force)?;
    let ca = new_ca("tether CA", Validity::days(days))?;
    ca.save(&dir.ca_cert(), &dir.ca_key())?;
    Ok(ca.fingerprint)
}

/// `tether certs stub`: the stub's certificate in `dir`.
pub fn stub_in_dir(dir: &CertDir, sans: &[String], days: u32, force: bool) -> Result<Fingerprint, CertError> {
    files::refuse_overwrite(&[&dir.stub_cert(), &dir.stub_key()], force)?;
    let minted = Signer::load(dir)?.issue_stub(sans, Validity::days(days))?;
    minted.save(&dir.stub_cert(), &dir.stub_key())?;
    Ok(minted.fingerprint)
}

/// `tether certs service`: a service's client certificate in `dir`.
pub fn service_in_dir(dir: &CertDir, name: &str, days: u32, force: bool) -> Result<Fingerprint, CertError> {
    names::validate("service name", name)?;
    let (cert, key) = (dir.service_cert(name), dir.service_key(name));
    files::refuse_overwrite(&[&cert, &key], force)?;
    let minted = Signer::load(dir)?.issue_service(name, Validity::days(days))?;
    minted.save(&cert, &key)?;
    Ok(minted.fingerprint)
}

/// `tether certs agent`: an agent certificate in `dir`, optionally registered in the whitelist.
pub fn agent_in_dir(
    dir: &CertDir,
    cluster: &str,
    name: &str,
    days: u32,
    force: bool,
    register: bool,
) -> Result<(Fingerprint, Option<Registered>), CertError> {
    names::validate("cluster", cluster)?;
    names::validate("agent name", name)?;
    let (cert, key) = (dir.agent_cert(cluster, name), dir.agent_key(cluster, name));
    files::refuse_overwrite(&[&cert, &key], force)?;
    let minted = Signer::load(dir)?.issue_agent(cluster, name, Validity::days(days))?;
    minted.save(&cert, &key)?;
    let registered = if register {
        let entry = Entry { cluster: cluster.into(), name: name.into(), fingerprint: minted.fingerprint };
        Some(whitelist::register(&dir.whitelist(), &entry)?)
    } else {
        None
    };
    Ok((minted.fingerprint, registered))
}

/// `tether certs register`: adds an existing agent certificate to the whitelist in `dir`.
pub fn register_in_dir(
    dir: &CertDir,
    cluster: &str,
    name: &str,
    cert: &std::path::Path,
) -> Result<(Fingerprint, Registered), CertError> {
    names::validate("cluster", cluster)?;
    names::validate("agent name", name)?;
    let fingerprint = fingerprint_of_file(cert)?;
    let entry = Entry { cluster: cluster.into(), name: name.into(), fingerprint };
    Ok((fingerprint, whitelist::register(&dir.whitelist(), &entry)?))
}

/// `tether certs issuer`: the token issuer key pair in `dir`.
pub fn issuer_in_dir(dir: &CertDir, force: bool) -> Result<(), CertError> {
    files::refuse_overwrite(&[&dir.issuer_key(), &dir.issuer_pub()], force)?;
    let (private, public) = new_issuer_keypair()?;
    files::save(&dir.issuer_key(), private.as_bytes(), Mode::Secret)?;
    files::save(&dir.issuer_pub(), public.as_bytes(), Mode::Public)?;
    Ok(())
}

/// `tether certs fingerprint`: the fingerprint of the first certificate of a PEM file.
pub fn fingerprint_of_file(path: &std::path::Path) -> Result<Fingerprint, FileError> {
    Ok(Fingerprint::of_der(&files::load_certs(path)?[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_service_certificate_names_a_service() {
        let ca = new_ca("tether CA", Validity::days(1)).unwrap();
        let signer = Signer::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
        let service = signer.issue_service("ci-bot", Validity::days(1)).unwrap();
        assert_eq!(service_name_of(&service.der).as_deref(), Some("ci-bot"));
        let agent = signer.issue_agent("dev", "agent-0", Validity::days(1)).unwrap();
        assert_eq!(service_name_of(&agent.der), None, "an agent certificate is no service");
        let stub = signer.issue_stub(&["localhost".into()], Validity::days(1)).unwrap();
        assert_eq!(service_name_of(&stub.der), None);
        assert!(matches!(signer.issue_service("CI Bot", Validity::days(1)), Err(CertError::Name(_))));
    }

    #[test]
    fn a_directory_bootstraps_and_refuses_to_clobber() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CertDir::new(tmp.path());
        init_ca_in_dir(&dir, 30, false).unwrap();
        let ca_before = std::fs::read(dir.ca_cert()).unwrap();
        assert!(matches!(init_ca_in_dir(&dir, 30, false), Err(CertError::File(FileError::Exists(_)))));
        assert_eq!(std::fs::read(dir.ca_cert()).unwrap(), ca_before, "a refused init leaves the CA alone");

        stub_in_dir(&dir, &["localhost".into(), "127.0.0.1".into()], 30, false).unwrap();
        let (fp, registered) = agent_in_dir(&dir, "dev", "agent-0", 30, false, true).unwrap();
        assert_eq!(registered, Some(Registered::Added));
        assert_eq!(fingerprint_of_file(&dir.agent_cert("dev", "agent-0")).unwrap(), fp);
        let list = whitelist::Whitelist::load(&dir.whitelist()).unwrap();
        assert_eq!(list.lookup(&fp).unwrap().cluster, "dev");

        assert!(matches!(agent_in_dir(&dir, "Dev", "agent-0", 30, false, true), Err(CertError::Name(_))));
        issuer_in_dir(&dir, false).unwrap();
        assert!(files::load_text(&dir.issuer_pub(), "x").unwrap().contains("PUBLIC KEY"));
    }
}
