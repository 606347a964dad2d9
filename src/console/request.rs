//! What a caller asks the console for, `POST /v1/token` with `{"clusters": ["dev", ...]}`, and
//! what it gets back. The request is checked before anything is asked of the hub's API server:
//! every cluster a valid name, at least one, at most [`MAX_CLUSTERS`], none twice; the error
//! names what is wrong. Pure, property-tested.

use serde::{Deserialize, Serialize};

use crate::identity::names;

/// Clusters one request may ask for: each costs one access review on the hub's API server.
pub const MAX_CLUSTERS: usize = 64;
/// Bytes of request body the console reads at most.
pub const MAX_BODY: usize = 16 * 1024;

/// The body of `POST /v1/token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub clusters: Vec<String>,
}

/// The answer to a request with at least one cluster allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    /// A tether token for `clusters`.
    pub token: String,
    /// The clusters the token reaches: those asked for that the hub's RBAC allows.
    pub clusters: Vec<String>,
    /// Those asked for that it does not.
    pub refused: Vec<String>,
    /// The user and groups the hub's API server said the caller is (in the token).
    pub user: String,
    pub groups: Vec<String>,
    /// When the token expires, RFC 3339 (UTC).
    pub expiration_timestamp: String,
}

/// Why a request body was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("the body is not {{\"clusters\": [\"NAME\", ...]}}: {0}")]
    NotJson(String),
    #[error("\"clusters\" is empty: name at least one cluster")]
    NoCluster,
    #[error("\"clusters\" names {0} clusters; at most {MAX_CLUSTERS} in one request")]
    TooMany(usize),
    #[error("\"clusters\": {0}")]
    Name(#[from] names::InvalidName),
    #[error("\"clusters\" names {0:?} twice")]
    Twice(String),
}

/// Parses and checks a request body.
pub fn parse(body: &[u8]) -> Result<TokenRequest, BadRequest> {
    let request: TokenRequest = serde_json::from_slice(body).map_err(|e| BadRequest::NotJson(e.to_string()))?;
    if request.clusters.is_empty() {
        return Err(BadRequest::NoCluster);
    }
    if request.clusters.len() > MAX_CLUSTERS {
        return Err(BadRequest::TooMany(request.clusters.len()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for cluster in &request.clusters {
        names::validate("cluster", cluster)?;
        if !seen.insert(cluster.as_str()) {
            return Err(BadRequest::Twice(cluster.clone()));
        }
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_fault_is_named() {
        assert_eq!(parse(br#"{"clusters":["dev","prod"]}"#).unwrap().clusters, ["dev", "prod"]);
        assert!(matches!(parse(b"clusters=dev"), Err(BadRequest::NotJson(_))));
        assert!(
            matches!(parse(br#"{"clusters":["dev"],"ttl":"1y"}"#), Err(BadRequest::NotJson(e)) if e.contains("ttl"))
        );
        assert_eq!(parse(br#"{"clusters":[]}"#), Err(BadRequest::NoCluster));
        let e = parse(br#"{"clusters":["dev","Prod/x"]}"#).unwrap_err();
        assert!(e.to_string().contains("Prod/x"), "{e}");
        assert_eq!(parse(br#"{"clusters":["dev","dev"]}"#), Err(BadRequest::Twice("dev".into())));
        let many: Vec<String> = (0..=MAX_CLUSTERS).map(|i| format!("c{i}")).collect();
        let body = serde_json::to_vec(&TokenRequest { clusters: many }).unwrap();
        assert_eq!(parse(&body), Err(BadRequest::TooMany(MAX_CLUSTERS + 1)));
    }

    proptest! {
        /// Any list of distinct valid names goes through as it is.
        #[test]
        fn distinct_valid_names_round_trip(names in proptest::collection::btree_set("[a-z][a-z0-9-]{0,20}[a-z0-9]", 1..MAX_CLUSTERS)) {
            let clusters: Vec<String> = names.into_iter().collect();
            let body = serde_json::to_vec(&TokenRequest { clusters: clusters.clone() }).unwrap();
            prop_assert_eq!(parse(&body).unwrap().clusters, clusters);
        }

        /// Whatever the bytes, parsing answers (never panics), and what it accepts is valid.
        #[test]
        fn any_body_is_judged(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(request) = parse(&body) {
                prop_assert!(!request.clusters.is_empty() && request.clusters.len() <= MAX_CLUSTERS);
                for c in &request.clusters {
                    prop_assert!(names::validate("cluster", c).is_ok());
                }
            }
        }
    }
}
