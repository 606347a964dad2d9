//! Who the hub's stub replicas are. Each replica has a stable id (default: its hostname) and a
//! peer address that the others dial. The set comes from `--members`:
//!
//! - `static:ID=HOST:PORT,ID=HOST:PORT,...`: a fixed list, the same on every replica (which
//!   must find its own id in it);
//! - `kubernetes:NAMESPACE`: one `coordination.k8s.io` Lease per replica in that namespace
//!   (see [`super::leases`]).
//!
//! Parsing is pure and property-tested: whatever the text, the result is a valid spec or an
//! error that names the part at fault.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::identity::names;

/// The members as one replica sees them now: replica id -> peer address (`HOST:PORT`).
pub type Members = BTreeMap<String, String>;

/// Where the members come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembersSpec {
    /// A fixed list.
    Static(Members),
    /// Leases in this namespace of the hub's Kubernetes.
    Kubernetes { namespace: String },
}

/// Why `--members` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembersError {
    #[error("--members {0:?}: expected static:ID=HOST:PORT,... or kubernetes:NAMESPACE")]
    Form(String),
    #[error("--members: {0:?} is not ID=HOST:PORT")]
    Entry(String),
    #[error("--members: {0}")]
    Id(#[from] names::InvalidName),
    #[error("--members: replica {id:?} has the address {address:?}, which is not HOST:PORT with a port number")]
    Address { id: String, address: String },
    #[error("--members: replica {0:?} is listed twice")]
    Duplicate(String),
    #[error("--members: the namespace {0:?} is not a valid Kubernetes namespace name")]
    Namespace(String),
    #[error("--members static list does not hold this replica's --id {0:?}")]
    NotListed(String),
}

impl FromStr for MembersSpec {
    type Err = MembersError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(namespace) = text.strip_prefix("kubernetes:") {
            if names::validate("namespace", namespace).is_err() {
                return Err(MembersError::Namespace(namespace.to_owned()));
            }
            return Ok(MembersSpec::Kubernetes { namespace: namespace.to_owned() });
        }
        let list = text.strip_prefix("static:").ok_or_else(|| MembersError::Form(text.to_owned()))?;
        let mut members = Members::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, address) = entry.split_once('=').ok_or_else(|| MembersError::Entry(entry.to_owned()))?;
            validate_id(id)?;
            if !is_host_port(address) {
                return Err(MembersError::Address { id: id.to_owned(), address: address.to_owned() });
            }
            if members.insert(id.to_owned(), address.to_owned()).is_some() {
                return Err(MembersError::Duplicate(id.to_owned()));
            }
        }
        if members.is_empty() {
            return Err(MembersError::Form(text.to_owned()));
        }
        Ok(MembersSpec::Static(members))
    }
}

impl MembersSpec {
    /// Checks the spec against this replica's id: a static list must hold it.
    pub fn check_own(&self, own: &str) -> Result<(), MembersError> {
        match self {
            MembersSpec::Static(members) if !members.contains_key(own) => Err(MembersError::NotListed(own.to_owned())),
            _ => Ok(()),
        }
    }
}

/// Longest replica id: the Lease is named `tether-stub-ID`, and ids appear in labels.
pub const MAX_ID_LEN: usize = 50;

/// A replica id is a DNS-1123 label of at most [`MAX_ID_LEN`] bytes.
pub fn validate_id(id: &str) -> Result<(), names::InvalidName> {
    names::validate("replica id", id)?;
    if id.len() > MAX_ID_LEN {
        return Err(names::InvalidName { what: "replica id", name: id.to_owned() });
    }
    Ok(())
}

/// This machine's host name as a replica id (lowercase, cut at the first dot), or `None` when
/// that is not a valid id (then `--id` must be given).
pub fn default_id() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let id = name.trim().split('.').next()?.to_ascii_lowercase();
    validate_id(&id).is_ok().then_some(id)
}

/// `HOST:PORT` with a non-empty host and a port number (`[::1]:7444` too).
pub fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else { return false };
    let host_ok =
        !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn both_forms_parse() {
        let spec: MembersSpec = "static:a=127.0.0.1:7444,b=stub-b.hub.svc:7444".parse().unwrap();
        let MembersSpec::Static(members) = &spec else { panic!() };
        assert_eq!(members["a"], "127.0.0.1:7444");
        assert_eq!(members["b"], "stub-b.hub.svc:7444");
        assert!(spec.check_own("a").is_ok());
        assert_eq!(spec.check_own("c"), Err(MembersError::NotListed("c".into())));
        assert_eq!("kubernetes:hub".parse(), Ok(MembersSpec::Kubernetes { namespace: "hub".into() }));
    }

    #[test]
    fn errors_name_the_part_at_fault() {
        let err = |s: &str| s.parse::<MembersSpec>().unwrap_err().to_string();
        assert!(err("leases:hub").contains("expected static:"));
        assert!(err("static:").contains("expected static:"));
        assert!(err("static:a").contains("\"a\" is not ID=HOST:PORT"));
        assert!(err("static:A=x:1").contains("replica id \"A\""));
        assert!(err("static:a=x").contains("replica \"a\" has the address \"x\""));
        assert!(err("static:a=x:0").contains("\"x:0\""));
        assert!(err("static:a=x:1,a=y:2").contains("\"a\" is listed twice"));
        assert!(err("kubernetes:Hub").contains("namespace \"Hub\""));
    }

    proptest! {
        #[test]
        fn anything_parses_or_fails_cleanly(text in "\\PC{0,80}") {
            if let Ok(MembersSpec::Static(members)) = text.parse::<MembersSpec>() {
                prop_assert!(!members.is_empty());
                for (id, address) in &members {
                    prop_assert!(validate_id(id).is_ok());
                    prop_assert!(is_host_port(address));
                }
            }
        }

        #[test]
        fn static_lists_round_trip(entries in proptest::collection::btree_map("[a-z][a-z0-9]{0,10}", ("[a-z0-9.]{1,20}", 1u16..), 1..8)) {
            let text = entries.iter().map(|(id, (host, port))| format!("{id}={host}:{port}")).collect::<Vec<_>>().join(",");
            let MembersSpec::Static(members) = format!("static:{text}").parse::<MembersSpec>().unwrap() else {
                return Err(TestCaseError::fail("not static"));
            };
            prop_assert_eq!(members.len(), entries.len());
            for (id, (host, port)) in &entries {
                prop_assert_eq!(&members[id], &format!("{host}:{port}"));
            }
        }
    }
}
