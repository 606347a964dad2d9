//! Names. Cluster and agent names appear in URL paths, file names and the whitelist, so they are
//! restricted to DNS-1123 labels: lowercase letters, digits and inner dashes, at most 63 bytes.
//! User and group names are the API server's to judge, but it would take an empty user as no
//! impersonation at all (the request would run as the agent) and trim a padded one (while the
//! stub audits it padded), so those are refused wherever a token is minted or verified.

/// A name that is not a DNS-1123 label.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
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

/// A user or group name that would not reach the API server as itself.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum InvalidIdentity {
    /// Empty: as `Impersonate-User` the API server reads it as no impersonation.
    #[error("{what} name is empty")]
    Empty { what: &'static str },
    /// Leading or trailing white space, which the API server trims.
    #[error("{what} name {name:?} begins or ends with white space")]
    Padded { what: &'static str, name: String },
    /// A control character, which no header value may carry.
    #[error("{what} name {name:?} holds a control character")]
    Control { what: &'static str, name: String },
}

/// Checks that `name` can be sent as `Impersonate-User` or `Impersonate-Group` and arrive as it
/// is. `what` is "user" or "group".
pub fn validate_identity(what: &'static str, name: &str) -> Result<(), InvalidIdentity> {
    if name.is_empty() {
        return Err(InvalidIdentity::Empty { what });
    }
    if name.trim() != name {
        return Err(InvalidIdentity::Padded { what, name: name.to_owned() });
    }
    if name.chars().any(char::is_control) {
        return Err(InvalidIdentity::Control { what, name: name.to_owned() });
    }
    Ok(())
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

    #[test]
    fn user_names_arrive_as_they_are_or_are_refused() {
        for good in ["alice", "system:serviceaccount:ns:sa", "Jane Doe", "ünïcode@example.com"] {
            assert_eq!(validate_identity("user", good), Ok(()), "{good}");
        }
        assert_eq!(validate_identity("user", ""), Err(InvalidIdentity::Empty { what: "user" }));
        for padded in [" alice", "alice ", "\talice", "alice\u{a0}"] {
            assert!(matches!(validate_identity("user", padded), Err(InvalidIdentity::Padded { .. })), "{padded:?}");
        }
        assert!(matches!(validate_identity("group", "a\u{7}b"), Err(InvalidIdentity::Control { .. })));
    }

    proptest! {
        #[test]
        fn a_valid_identity_is_never_empty_padded_or_controlled(s in "\\PC{0,20}|[ \t\n\r\u{a0}a-z]{0,6}") {
            if validate_identity("user", &s).is_ok() {
                prop_assert!(!s.is_empty() && s.trim() == s && !s.chars().any(char::is_control));
            }
        }

        #[test]
        fn a_valid_name_never_holds_path_or_space_characters(s in "\\PC{0,70}") {
            if validate("cluster", &s).is_ok() {
                prop_assert!(!s.contains(['/', '.', '%', ' ', '\t', '#']));
            }
        }
    }
}
