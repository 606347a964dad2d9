//! Errors as Kubernetes `Status` objects. Every error the stub or agent produces itself is one of
//! these, so kubectl and client libraries print the message instead of a parse failure.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::bridge::{self, Body};

/// The `reason` field Kubernetes clients switch on, chosen by status code.
fn reason(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

/// The JSON body of a failure `Status`.
pub fn json(code: StatusCode, message: &str) -> Bytes {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason(code),
        "code": code.as_u16(),
    });
    Bytes::from(body.to_string())
}

/// A complete HTTP response carrying a failure `Status`.
pub fn response(code: StatusCode, message: impl AsRef<str>) -> Response<Body> {
    let mut response = Response::new(bridge::full(json(code, message.as_ref())));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_a_kubernetes_status() {
        let v: serde_json::Value =
            serde_json::from_slice(&json(StatusCode::SERVICE_UNAVAILABLE, "no agent \"x\"")).unwrap();
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["code"], 503);
        assert_eq!(v["reason"], "ServiceUnavailable");
        assert_eq!(v["message"], "no agent \"x\"");
    }
}
