//! The optional basic-auth login (`[http] username` and a password) in front of the page, the
//! JSON API and `/metrics`. Answers 401 with a `WWW-Authenticate` challenge, so browsers ask.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::BasicAuth;

/// The middleware: passes the request on only with the configured login.
pub async fn require_login(State(login): State<Arc<BasicAuth>>, request: Request, next: Next) -> Response {
    if authorized(&login, request.headers()) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"linkwatch\", charset=\"UTF-8\""),
        )],
        "a login is required\n",
    )
        .into_response()
}

fn authorized(login: &BasicAuth, headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let expected = format!("{}:{}", login.username, login.password.expose());
    // Digests have one length whatever was sent, and are compared in constant time: how long
    // the comparison takes says nothing about how much of the login was right.
    Sha256::digest(&given)
        .ct_eq(&Sha256::digest(expected.as_bytes()))
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn only_the_configured_login_passes() {
        let login = BasicAuth {
            username: "ops".into(),
            password: Secret::new("pa:ss"),
        };
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert!(authorized(&login, &with(&format!("Basic {}", b64("ops:pa:ss")))));
        assert!(authorized(&login, &with(&format!("basic {}", b64("ops:pa:ss")))));
        assert!(!authorized(&login, &with(&format!("Basic {}", b64("ops:pa:s")))));
        assert!(!authorized(&login, &with(&format!("Basic {}", b64("ops:pa:ssx")))));
        assert!(!authorized(&login, &with(&format!("Bearer {}", b64("ops:pa:ss")))));
        assert!(!authorized(&login, &with("Basic not-base64!")));
        assert!(!authorized(&login, &HeaderMap::new()));
    }
}
