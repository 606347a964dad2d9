//! The console's two questions to the hub's API server, whose answers are the policy: who is
//! this credential (`TokenReview`), and may that user reach this cluster (`SubjectAccessReview`:
//! verb `proxy` on resource `clusters` of API group `tether.io`, name = the cluster). So an
//! admin grants a user a cluster with one RoleBinding in the hub, in the RBAC they already know,
//! and the hub's own authenticators (tokens, OIDC, service accounts) decide who is who. The
//! console's own credential needs `create` on both review kinds (ClusterRole
//! `system:auth-delegator`).

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};

/// The API group, resource and verb a user needs on a cluster's name to get a token for it.
pub const GROUP: &str = "tether.io";
pub const RESOURCE: &str = "clusters";
pub const VERB: &str = "proxy";

/// Who the hub's API server says a caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub groups: Vec<String>,
}

/// A question the hub's API server did not answer.
#[derive(Debug, thiserror::Error)]
#[error("the hub's API server at {server} did not answer the {what}: {source}")]
pub struct Unanswered {
    what: &'static str,
    server: String,
    #[source]
    source: kube::Error,
}

/// Asks the hub's API server; holds the console's own client.
#[derive(Clone)]
pub struct Reviewer {
    client: kube::Client,
    server: String,
}

impl Reviewer {
    pub fn new(client: kube::Client, server: String) -> Reviewer {
        Reviewer { client, server }
    }

    /// Who `credential` (a bearer token the hub accepts) is; `Ok(Err(why))` when the hub does
    /// not know it.
    pub async fn who(&self, credential: &str) -> Result<Result<Caller, String>, Unanswered> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(credential.to_owned()), ..Default::default() },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api.create(&PostParams::default(), &review).await.map_err(|source| Unanswered {
            what: "TokenReview",
            server: self.server.clone(),
            source,
        })?;
        let status = answer.status.unwrap_or_default();
        match (status.authenticated, status.user) {
            (Some(true), Some(user)) if user.username.as_deref().is_some_and(|u| !u.is_empty()) => {
                Ok(Ok(Caller { user: user.username.unwrap_or_default(), groups: user.groups.unwrap_or_default() }))
            }
            _ => Ok(Err(status.error.unwrap_or_else(|| "the credential is not valid".to_owned()))),
        }
    }

    /// Whether `caller` may reach `cluster`; the API server's reason with the answer.
    pub async fn may_reach(&self, caller: &Caller, cluster: &str) -> Result<(bool, String), Unanswered> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.user.clone()),
                groups: Some(caller.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(GROUP.to_owned()),
                    resource: Some(RESOURCE.to_owned()),
                    verb: Some(VERB.to_owned()),
                    name: Some(cluster.to_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api.create(&PostParams::default(), &review).await.map_err(|source| Unanswered {
            what: "SubjectAccessReview",
            server: self.server.clone(),
            source,
        })?;
        let status = answer.status.unwrap_or_default();
        Ok((status.allowed && !status.denied.unwrap_or(false), status.reason.unwrap_or_default()))
    }
}
