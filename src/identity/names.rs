//! Cluster and agent names. They appear in URL paths, file names and the whitelist, so they are
//! restricted to DNS-1123 labels: lowercase letters, digits and inner dashes, at most 63 bytes.

/// A name that is not a DNS-1123 label.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{what} {name:?} is not valid: use 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
)]
pub struct InvalidName {
    /// Which kind of name ("cluster", "agent name").
    pub what: &'static str,
    pub name: String,
}

/// Checks that `name` is a DNS-1123 label.
pub fn validate(what: &'static str, name: &str) -> Result<(), InvalidName> {
    let bytes = name.as_bytes();
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && edge_ok(bytes.first())
        && edge_ok(bytes.last())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if ok { Ok(()) } else { Err(InvalidName { what, name: name.to_owned() }) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_labels_and_refuses_the_rest() {
        for good in ["dev", "a", "prod-eu-1", "0a"] {
            assert!(validate("cluster", good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a/b", "..", "a b", "a%2fb", &"x".repeat(64)] {
            assert!(validate("cluster", bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn a_valid_name_never_holds_path_or_space_characters(s in "\\PC{0,70}") {
            if validate("cluster", &s).is_ok() {
                prop_assert!(!s.contains(['/', '.', '%', ' ', '\t', '#']));
            }
        }
    }
}
