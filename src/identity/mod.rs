//! Who is who: the tether CA and its certificates, SHA-256 fingerprints, the agent whitelist,
//! and the TLS configurations that enforce them.
//!
//! - [`names`]: what a cluster or agent name may look like (they appear in paths and files).
//! - [`fingerprint`]: `sha256:<hex>` of a certificate's DER, the key of the whitelist.
//! - [`whitelist`]: the operator-editable file mapping fingerprint -> cluster and agent name.
//! - [`files`]: where a certificate directory keeps what, and safe (atomic, no-clobber) writes.
//! - [`certs`]: minting the CA, stub and agent certificates and the issuer key pair (rcgen).
//! - [`verifier`]: the rustls client-certificate verifier that checks chain *and* whitelist.
//! - [`peer`]: who may be a peer replica of the hub (a stub certificate of the CA), both ways.
//! - [`tls`]: rustls configurations for the agent listener (QUIC and TCP), the agent and the
//!   front door.
//! - [`token`]: user and service tokens (JWT, EdDSA): minting and verification.
//! - [`authorize`]: whether a token lets its bearer reach a cluster, decided alike by stub and
//!   agent.

pub mod authorize;
pub mod certs;
pub mod files;
pub mod fingerprint;
pub mod names;
pub mod peer;
pub mod tls;
pub mod token;
pub mod verifier;
pub mod whitelist;
