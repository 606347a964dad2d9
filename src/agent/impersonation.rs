//! Whom the agent impersonates: the verified caller ([`impersonate`], after removing every
//! caller-chosen identity header, [`scrub_caller_identity`]), or, for `kubectl --as` and
//! `--as-group`, whom the caller asked for once the cluster says the caller may.
//!
//! `kubectl --as` and `--as-group` through the tunnel. The stub passes what a caller asked to
//! act as under tether's own header names ([`bridge::AS_USER_HEADER`]); the agent never takes it
//! on trust. It asks its API server, as the caller (a `SelfSubjectAccessReview` sent with the
//! agent's credential impersonating the verified caller), whether the caller may impersonate
//! that user and each of those groups, which is the very rule the API server applies to
//! `--as` when called directly. Allowed: the request goes as the asked-for user and groups,
//! with the caller recorded in the impersonated user's extra field [`CALLER_EXTRA`] (the API
//! server's audit event shows it). Refused: a 403 Status that says which permission was
//! missing, and nothing is sent as anyone else.

use http::{HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;

use super::upstream::Upstream;
use crate::bridge::{self, AskedImpersonation};
use crate::identity::token::Claims;

/// The extra field (`Impersonate-Extra-tether-caller`) that names the caller who asked to act
/// as someone else. The agent's RBAC needs `impersonate` on `userextras/tether-caller`.
pub const CALLER_EXTRA: &str = "tether-caller";

/// The questions to ask: `(resource, name)` of each `impersonate` permission needed.
pub fn permissions(asked: &AskedImpersonation) -> Vec<(&'static str, String)> {
    let mut needed: Vec<(&'static str, String)> = asked.user.iter().map(|u| ("users", u.clone())).collect();
    needed.extend(asked.groups.iter().map(|g| ("groups", g.clone())));
    needed
}

/// Removes every header by which a caller could speak for someone at the API server
/// ([`bridge::speaks_for_someone`]): its own `Authorization` (the agent sends its own
/// credential), all `Impersonate-*` headers (the agent alone decides whom to impersonate) and
/// `X-Remote-*`. Header names are lowercase here, so this also catches `IMPERSONATE-USER` and
/// friends. The stub has dropped them already; this is the agent's own check.
pub fn scrub_caller_identity(headers: &mut http::HeaderMap) {
    let names: Vec<http::HeaderName> =
        headers.keys().filter(|name| bridge::speaks_for_someone(name.as_str())).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// Sets `Impersonate-User` and one `Impersonate-Group` per group from verified claims. A value
/// that cannot be a header refuses the request rather than impersonating someone else.
pub fn impersonate(headers: &mut http::HeaderMap, claims: &Claims) -> Result<(), http::header::InvalidHeaderValue> {
    scrub_caller_identity(headers);
    headers.insert("impersonate-user", HeaderValue::from_str(&claims.sub)?);
    for group in &claims.groups {
        headers.append("impersonate-group", HeaderValue::from_str(group)?);
    }
    Ok(())
}

/// Whether `claims`' caller may impersonate as `asked`: `Ok(None)` yes, `Ok(Some(why))` no (a
/// message for the 403), `Err` the API server did not answer.
pub async fn check(upstream: &Upstream, claims: &Claims, asked: &AskedImpersonation) -> Result<Option<String>, String> {
    for (resource, name) in permissions(asked) {
        let review = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"verb": "impersonate", "resource": resource, "name": name}},
        });
        let mut request = Request::post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(bridge::full(review.to_string()))
            .map_err(|e| e.to_string())?;
        impersonate(request.headers_mut(), claims).map_err(|e| e.to_string())?;
        let response = upstream.send(request).await.map_err(|e| crate::errors::chain(&*e))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        if status != StatusCode::CREATED && status != StatusCode::OK {
            return Err(format!(
                "the API server answered the access review with {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let answer: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if answer["status"]["allowed"] != true {
            let kind = if resource == "users" { "user" } else { "group" };
            let reason =
                answer["status"]["reason"].as_str().filter(|r| !r.is_empty()).unwrap_or("no RBAC rule allows it");
            return Ok(Some(format!(
                "user {:?} may not impersonate {kind} {name:?} in this cluster ({reason}); an admin of the cluster grants \
                 verb impersonate on {resource} {name:?}. Nothing was sent as {name:?}.",
                claims.sub
            )));
        }
    }
    Ok(None)
}

/// Sets the impersonation of an allowed `--as`: the asked-for user and groups, and the caller
/// in [`CALLER_EXTRA`]. Every caller-chosen identity header is gone first.
pub fn apply(headers: &mut http::HeaderMap, claims: &Claims, asked: &AskedImpersonation) -> Result<(), String> {
    scrub_caller_identity(headers);
    let value = |v: &str| HeaderValue::from_str(v).map_err(|_| format!("{v:?} is not a valid header value"));
    let user = asked.user.as_deref().ok_or("--as-group without --as")?;
    headers.insert("impersonate-user", value(user)?);
    for group in &asked.groups {
        headers.append("impersonate-group", value(group)?);
    }
    headers.insert(
        http::HeaderName::from_bytes(format!("impersonate-extra-{CALLER_EXTRA}").as_bytes()).expect("valid name"),
        value(&claims.sub)?,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::Header;
    use std::time::Duration;

    #[test]
    fn the_stubs_headers_become_questions_and_then_impersonation() {
        let headers = vec![
            Header { name: bridge::AS_USER_HEADER.into(), value: b"bob".to_vec() },
            Header { name: bridge::AS_GROUP_HEADER.into(), value: b"devs".to_vec() },
            Header { name: "accept".into(), value: b"*/*".to_vec() },
        ];
        let asked = bridge::asked_on_the_wire(&headers);
        assert_eq!(permissions(&asked), [("users", "bob".to_owned()), ("groups", "devs".to_owned())]);
        let claims = Claims::new("alice", &["people".into()], &["dev".into()], Duration::from_secs(60));
        let mut out = http::HeaderMap::new();
        out.insert("impersonate-user", "mallory".parse().unwrap());
        out.insert(bridge::AS_USER_HEADER, "mallory".parse().unwrap());
        apply(&mut out, &claims, &asked).unwrap();
        assert_eq!(out["impersonate-user"], "bob");
        assert_eq!(out.get_all("impersonate-group").iter().collect::<Vec<_>>(), ["devs"]);
        assert_eq!(out["impersonate-extra-tether-caller"], "alice");
        assert!(out.get(bridge::AS_USER_HEADER).is_none());
        assert!(permissions(&AskedImpersonation::default()).is_empty());
    }
}
