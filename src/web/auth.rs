//! The optional basic-auth login (`[http] username` and a password) in front of the page, the
//! JSON API, `/metrics` and `/healthz?verbose`. Answers 401 with a `WWW-Authenticate`
//! challenge, so browsers ask. A wrong login is logged (the remote address and the user name
//! given, never the password), at most once per [`LOG_EVERY`] with the count of those left out,
//! so that someone guessing cannot fill the log.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::BasicAuth;

/// At most one line about refused logins per this long.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The longest user name the log shows (it comes from whoever asks).
const USER_CHARS: usize = 64;

/// The configured login, and what the log has said about refused ones.
pub struct Login {
    auth: BasicAuth,
    refused: Refused,
}

impl Login {
    pub fn new(auth: BasicAuth) -> Login {
        Login {
            auth,
            refused: Refused::default(),
        }
    }
}

/// When the last line about a refused login was written, and how many were refused since
/// without a line of their own.
#[derive(Default)]
struct Refused(Mutex<(Option<Instant>, u64)>);

impl Refused {
    /// A login was refused at `now`: `Some(left out since the last line)` when this one gets a
    /// line, `None` when it is only counted.
    fn note(&self, now: Instant) -> Option<u64> {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (last, left_out) = &mut *state;
        match last {
            Some(at) if now.saturating_duration_since(*at) < LOG_EVERY => {
                *left_out += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(left_out))
            }
        }
    }
}

/// The middleware: passes the request on only with the configured login.
pub async fn require_login(State(login): State<Arc<Login>>, request: Request, next: Next) -> Response {
    if authorized(&login.auth, request.headers()) {
        return next.run(request).await;
    }
    // A request without a login is how a browser starts (it asks the user after this 401):
    // only a login given and refused is worth a line.
    if request.headers().contains_key(header::AUTHORIZATION)
        && let Some(left_out) = login.refused.note(Instant::now())
    {
        let remote = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| "unknown".to_owned(), |c| c.0.to_string());
        let user = given_user(request.headers());
        tracing::warn!(
            %remote,
            user = ?user,
            refused_since_last_line = left_out,
            "a login to the status page was refused (wrong user name or password)"
        );
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

/// The user name a refused request gave, for the log: what comes before the first `:` of its
/// basic credentials (the password after it is never looked at), without control characters,
/// at most [`USER_CHARS`] long; empty when there is none to read.
fn given_user(headers: &HeaderMap) -> String {
    let decoded = basic_credentials(headers).unwrap_or_default();
    let user = decoded.split(|&b| b == b':').next().unwrap_or_default();
    String::from_utf8_lossy(user)
        .chars()
        .filter(|c| !c.is_control())
        .take(USER_CHARS)
        .collect()
}

/// The decoded `user:password` of a `Basic` authorization header.
fn basic_credentials(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()
}

fn authorized(login: &BasicAuth, headers: &HeaderMap) -> bool {
    let Some(given) = basic_credentials(headers) else {
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

    #[test]
    fn the_log_gets_the_user_name_given_never_the_password() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(given_user(&with(&format!("Basic {}", b64("mallory:pa:ss")))), "mallory");
        assert_eq!(
            given_user(&with(&format!("Basic {}", b64("mal\nlory\u{1b}[31m:x")))),
            "mallory[31m"
        );
        assert_eq!(
            given_user(&with(&format!("Basic {}", b64(&"u".repeat(500))))).len(),
            USER_CHARS
        );
        assert_eq!(
            given_user(&with(&format!("Basic {}", b64("no-colon-secret")))),
            "no-colon-secret"
        );
        assert_eq!(given_user(&with("Bearer abc")), "");
        assert_eq!(given_user(&with("Basic not-base64!")), "");
    }

    /// One line per [`LOG_EVERY`] however many logins are refused, each line with the number
    /// refused since the last one.
    #[test]
    fn refused_logins_make_one_line_per_window_with_the_count_left_out() {
        let refused = Refused::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(refused.note(at(0)), Some(0));
        assert_eq!(refused.note(at(1)), None);
        assert_eq!(refused.note(at(9_999)), None);
        assert_eq!(refused.note(at(10_000)), Some(2));
        for ms in 10_001..10_101 {
            assert_eq!(refused.note(at(ms)), None);
        }
        assert_eq!(refused.note(at(60_000)), Some(100));
        assert_eq!(refused.note(at(70_000)), Some(0));
    }
}
