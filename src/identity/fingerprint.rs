//! Certificate fingerprints: SHA-256 of the leaf certificate's DER, written `sha256:<64 hex>`.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The SHA-256 fingerprint of a certificate (DER).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// The raw digest (as used by RFC 8705 `x5t#S256`).
    pub fn digest(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Text that is not `sha256:` followed by 64 hex digits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a fingerprint: expected sha256: followed by 64 hex digits")]
pub struct InvalidFingerprint(pub String);

impl FromStr for Fingerprint {
    type Err = InvalidFingerprint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidFingerprint(s.to_owned());
        let hex_part = s.strip_prefix("sha256:").ok_or_else(invalid)?;
        // Operators paste fingerprints from other tools, which print them with colons.
        let hex_part: String = hex_part.chars().filter(|c| *c != ':').collect();
        if hex_part.len() != 64 {
            return Err(invalid());
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hex_part.to_ascii_lowercase(), &mut digest).map_err(|_| invalid())?;
        Ok(Fingerprint(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_digest() {
        let fp = Fingerprint::of_der(b"abc");
        assert_eq!(fp.to_string(), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn refuses_near_misses() {
        for bad in ["", "sha256:", "sha1:00", "ba7816bf", &format!("sha256:{}", "g".repeat(64))] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn display_and_parse_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let fp = Fingerprint::of_der(&bytes);
            prop_assert_eq!(fp.to_string().parse::<Fingerprint>().unwrap(), fp);
            prop_assert_eq!(fp.to_string().to_uppercase().replace("SHA256", "sha256").parse::<Fingerprint>().unwrap(), fp);
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,100}") {
            let _ = s.parse::<Fingerprint>();
        }
    }
}
