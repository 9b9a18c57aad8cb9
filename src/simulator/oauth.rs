//! The simulated OAuth 2.0 token endpoint (client credentials, Basic client authentication), with
//! the ways a real one misbehaves: refusals with or without `Retry-After`, and `expires_in`
//! values a client must not trust blindly.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use tokio::time::Instant;

use super::{Shared, digest, json};

/// What the token endpoint answers.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenBehavior {
    /// Grants a token to a known service account (the default). The token is accepted for
    /// `Options::token_lifetime`; `expires_in`, when set, is what the answer claims instead (any
    /// JSON: a negative number, a fraction, a string).
    Grant { expires_in: Option<serde_json::Value> },
    /// Refuses every request with `http` and an OAuth error body (`{"error": error}`), plus a
    /// `Retry-After` header when given.
    Refuse {
        http: u16,
        error: String,
        retry_after: Option<String>,
    },
}

impl Default for TokenBehavior {
    fn default() -> Self {
        TokenBehavior::Grant { expires_in: None }
    }
}

impl TokenBehavior {
    pub fn refuse(http: u16, error: &str) -> Self {
        TokenBehavior::Refuse {
            http,
            error: error.to_owned(),
            retry_after: None,
        }
    }
}

fn oauth_error(code: StatusCode, error: &str, description: &str) -> Response {
    json(
        code,
        serde_json::json!({"error": error, "error_description": description}),
    )
}

pub(super) async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: String) -> Response {
    shared.counters.token_requests.fetch_add(1, Ordering::SeqCst);
    let behavior = shared.world().token_behavior.clone();
    let expires_in = match behavior {
        TokenBehavior::Grant { expires_in } => expires_in,
        TokenBehavior::Refuse {
            http,
            error,
            retry_after,
        } => {
            let code = StatusCode::from_u16(http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = oauth_error(code, &error, "Refused by the simulator.");
            if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return response;
        }
    };
    if !body.split('&').any(|kv| kv == "grant_type=client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(digest::decode_basic);
    let Some((id, secret)) = basic else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Basic client authentication required",
        );
    };
    let mut w = shared.world();
    if w.service_accounts.get(&id) != Some(&secret) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Invalid client credentials");
    }
    let token = format!("sim_{:032x}", rand::random::<u128>());
    // A lifetime too long for the clock means "never expires" here.
    let lifetime = shared.options.token_lifetime;
    w.tokens.insert(token.clone(), Instant::now().checked_add(lifetime));
    json(
        StatusCode::OK,
        serde_json::json!({
            "access_token": token,
            "expires_in": expires_in.unwrap_or_else(|| lifetime.as_secs().into()),
            "token_type": "Bearer",
        }),
    )
}
