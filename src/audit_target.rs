//! Where an audit log goes (`--audit-log FILE|-|off`), for the stub's request log and the
//! console's decision log alike.

use std::path::PathBuf;

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    /// No audit log.
    Off,
    Stdout,
    /// Appended to this file.
    File(PathBuf),
}

impl std::str::FromStr for AuditTarget {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "" | "off" => AuditTarget::Off,
            "-" => AuditTarget::Stdout,
            path => AuditTarget::File(path.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// "off", "" and "-" are words; anything else is a file path, kept as given.
        #[test]
        fn every_value_is_a_target(value in ".{0,40}") {
            let target: AuditTarget = value.parse().unwrap();
            let expected = match value.as_str() {
                "" | "off" => AuditTarget::Off,
                "-" => AuditTarget::Stdout,
                path => AuditTarget::File(path.into()),
            };
            prop_assert_eq!(target, expected);
        }
    }
}
