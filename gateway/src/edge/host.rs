//! The `Host` rule of RFC 9112 §3.2: a server answers 400 to an HTTP/1.1 request without a
//! `Host` header and to any request with more than one. Both listeners check it first (hyper
//! does not); an HTTP/2 request names its authority in `:authority` instead.

use axum::extract::Request;
use axum::http::{header, HeaderValue, Version};
use axum::response::{IntoResponse, Response};

use crate::edge::ids::{RequestId, REQUEST_ID_HEADER};
use crate::error::{ErrorKind, GatewayError};

/// Why `request` breaks the rule, if it does. One header lookup; nothing allocated.
pub fn refusal<B>(request: &axum::http::Request<B>) -> Option<&'static str> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => Some("the request has more than one Host header"),
        (None, None) if request.version() == Version::HTTP_11 => {
            Some("an HTTP/1.1 request must have a Host header")
        }
        _ => None,
    }
}

/// The 400 problem for a [`refusal`], with its request id.
pub fn refused(why: &'static str) -> Response {
    let id = RequestId::fresh();
    let mut response = GatewayError::from(ErrorKind::InvalidHost(why))
        .with_request(id.as_str())
        .into_response();
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// Middleware of a router (the admin listener): refuses what breaks the rule.
pub async fn require_host(request: Request, next: axum::middleware::Next) -> Response {
    match refusal(&request) {
        Some(why) => refused(why),
        None => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, hosts: &[&str]) -> axum::http::Request<()> {
        let mut builder = axum::http::Request::get("/").version(version);
        for host in hosts {
            builder = builder.header(header::HOST, *host);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn one_host_or_an_older_version_passes() {
        assert!(refusal(&request(Version::HTTP_11, &["a"])).is_none());
        assert!(refusal(&request(Version::HTTP_10, &[])).is_none());
        assert!(refusal(&request(Version::HTTP_2, &[])).is_none());
        assert!(refusal(&request(Version::HTTP_11, &[])).is_some());
        assert!(refusal(&request(Version::HTTP_11, &["a", "b"])).is_some());
        assert!(refusal(&request(Version::HTTP_2, &["a", "a"])).is_some());
        assert!(refusal(&request(Version::HTTP_10, &["a", "a"])).is_some());
    }
}
