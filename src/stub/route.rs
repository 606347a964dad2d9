//! Front-door routing: `/clusters/{cluster}/{path}` -> the cluster and the path its API server
//! should see. Pure, so that path tricks are property-tested: whatever the path, the request
//! goes to the cluster named by the first segment or nowhere.

use crate::identity::names;

/// A routed request target.
#[derive(Debug, PartialEq, Eq)]
pub struct Route<'a> {
    pub cluster: &'a str,
    /// Path and query for the upstream, always starting with `/`.
    pub path_and_query: String,
}

/// Why a path cannot be routed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The path does not start with `/clusters/`.
    #[error("path {0:?} is not under /clusters/{{cluster}}/")]
    NotClusterPath(String),
    /// The cluster segment is not a valid cluster name (this also refuses encoded tricks such
    /// as `%2F` or `..`).
    #[error(transparent)]
    BadCluster(#[from] names::InvalidName),
}

/// Splits `path` (and `query`) into cluster and upstream target.
pub fn route<'a>(path: &'a str, query: Option<&str>) -> Result<Route<'a>, RouteError> {
    let rest = path.strip_prefix("/clusters/").ok_or_else(|| RouteError::NotClusterPath(path.to_owned()))?;
    let (cluster, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    names::validate("cluster", cluster)?;
    let mut path_and_query = tail.to_owned();
    if let Some(q) = query {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    Ok(Route { cluster, path_and_query })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strips_the_prefix_and_keeps_the_query() {
        let r = route("/clusters/dev/api/v1/pods", Some("watch=1&x=%2F")).unwrap();
        assert_eq!(r, Route { cluster: "dev", path_and_query: "/api/v1/pods?watch=1&x=%2F".into() });
        assert_eq!(route("/clusters/dev", None).unwrap().path_and_query, "/");
        assert_eq!(route("/clusters/dev/", None).unwrap().path_and_query, "/");
    }

    #[test]
    fn refuses_other_paths_and_tricky_cluster_names() {
        assert!(matches!(route("/api/v1", None), Err(RouteError::NotClusterPath(_))));
        for bad in
            ["/clusters/", "/clusters//x", "/clusters/../b/x", "/clusters/a%2Fb/x", "/clusters/A/x", "/clusters/./x"]
        {
            assert!(matches!(route(bad, None), Err(RouteError::BadCluster(_))), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn the_cluster_is_always_the_first_segment(path in "/clusters/[a-z0-9./%-]{0,30}(/[ -~]{0,40})?") {
            if let Ok(r) = route(&path, None) {
                let first = path["/clusters/".len()..].split('/').next().unwrap();
                prop_assert_eq!(r.cluster, first);
                prop_assert!(names::validate("cluster", r.cluster).is_ok());
                prop_assert!(r.path_and_query.starts_with('/'));
            }
        }

        #[test]
        fn arbitrary_paths_never_panic(path in "\\PC{0,80}", query in proptest::option::of("\\PC{0,20}")) {
            let _ = route(&path, query.as_deref());
        }
    }
}
