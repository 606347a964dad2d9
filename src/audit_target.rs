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

    #[test]
    fn the_words_are_off_and_stdout() {
        assert_eq!("off".parse::<AuditTarget>().unwrap(), AuditTarget::Off);
        assert_eq!("".parse::<AuditTarget>().unwrap(), AuditTarget::Off);
        assert_eq!("-".parse::<AuditTarget>().unwrap(), AuditTarget::Stdout);
    }

    proptest! {
        /// Anything but those words is a file, its path exactly as given.
        #[test]
        fn anything_else_is_a_file_path_as_given(value in ".{1,40}") {
            prop_assume!(value != "off" && value != "-");
            prop_assert_eq!(value.parse::<AuditTarget>().unwrap(), AuditTarget::File(value.clone().into()));
        }
    }
}
