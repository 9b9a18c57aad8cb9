//! OAuth 2.0 client credentials for service accounts. One token per credential is kept until
//! shortly before it expires: the token endpoint allows about ten requests a minute, so minting
//! one per check would soon be rate limited.
//!
//! Three rules keep the token endpoint quiet, all under one lock per service account:
//! - one token request at a time: checks that find no valid token wait for the one request in
//!   flight and share its answer;
//! - a 401 renews the token only if the token that failed is still the cached one (another check
//!   may already have renewed it);
//! - a refused token request is remembered, and until its backoff has passed every check gets the
//!   remembered failure without asking again.

use std::time::Duration;

use reqwest::{Url, header};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{classify, read_capped, retry_after, transport_error};
use crate::outcome::{Failure, FailureClass};
use crate::secret::Secret;

/// Renew this long before `expires_in` runs out, so a token never expires mid-request.
const EARLY: Duration = Duration::from_secs(60);

/// The longest a token is trusted, whatever `expires_in` says: a server's number must not
/// overflow the clock, and a token renewed daily costs nothing.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// When `expires_in` is missing: the usual lifetime of a service account token.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// The wait after the first refused token request, doubling with each refusal in a row up to
/// [`MAX_BACKOFF`]. Starting at a second keeps recovery quick after a blip, and the doubling
/// stays under the endpoint's limit of about ten requests a minute from the first minute on.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Limits how much of a token answer is read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

pub struct TokenCache {
    client_id: String,
    client_secret: Secret,
    // A tokio mutex held across the token request: concurrent checks wait for one request
    // instead of each asking for a token.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The current token and when to stop using it.
    token: Option<(Secret, Instant)>,
    /// The last token request failed: how, how many times in a row, and until when it is not
    /// repeated.
    refused: Option<Refusal>,
}

struct Refusal {
    failure: Failure,
    in_a_row: u32,
    until: Instant,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    /// A number of seconds; some servers send it as a string.
    expires_in: Option<serde_json::Value>,
}

impl TokenCache {
    pub fn new(client_id: String, client_secret: Secret) -> Self {
        TokenCache {
            client_id,
            client_secret,
            state: Mutex::new(State::default()),
        }
    }

    /// A valid token: the cached one, or a new one.
    pub async fn token(&self, http: &reqwest::Client, token_url: &Url) -> Result<Secret, Failure> {
        let mut state = self.state.lock().await;
        if let Some((token, valid_until)) = &state.token
            && Instant::now() < *valid_until
        {
            return Ok(token.clone());
        }
        self.fetch(&mut state, http, token_url).await
    }

    /// A token to use instead of `rejected`, which Cloud Manager answered with 401: a new one,
    /// unless another check has already replaced `rejected` (then that replacement).
    pub async fn renew(&self, rejected: &Secret, http: &reqwest::Client, token_url: &Url) -> Result<Secret, Failure> {
        let mut state = self.state.lock().await;
        if let Some((token, valid_until)) = &state.token
            && token != rejected
            && Instant::now() < *valid_until
        {
            return Ok(token.clone());
        }
        state.token = None;
        self.fetch(&mut state, http, token_url).await
    }

    /// Asks for a new token, unless a recent refusal says to wait.
    async fn fetch(&self, state: &mut State, http: &reqwest::Client, token_url: &Url) -> Result<Secret, Failure> {
        let now = Instant::now();
        if let Some(r) = &state.refused
            && now < r.until
        {
            return Err(Failure {
                retry_after: Some(r.until - now),
                ..r.failure.clone()
            });
        }
        let in_a_row = state.refused.as_ref().map_or(0, |r| r.in_a_row).saturating_add(1);
        // A check that times out drops this future in the middle of the request. Remember the
        // attempt as failed before sending, so that an endpoint that never answers is backed off
        // like one that refuses; an answer overwrites this.
        state.refused = Some(Refusal {
            failure: Failure::new(
                FailureClass::Timeout,
                None,
                None,
                "token request failed: no answer in time",
            ),
            in_a_row,
            until: later(now, backoff(in_a_row, None)),
        });
        match self.request(http, token_url).await {
            Ok((token, lifetime)) => {
                // Renew a little early, but never later than halfway through a short lifetime.
                let use_for = lifetime.saturating_sub(EARLY.min(lifetime / 2));
                state.token = Some((token.clone(), later(Instant::now(), use_for)));
                state.refused = None;
                Ok(token)
            }
            Err(mut failure) => {
                let wait = backoff(in_a_row, failure.retry_after);
                failure.retry_after = Some(wait);
                tracing::debug!(
                    client_id = %self.client_id,
                    in_a_row,
                    "token request failed; not asking again for {}",
                    humantime::format_duration(wait)
                );
                state.refused = Some(Refusal {
                    failure: failure.clone(),
                    in_a_row,
                    until: later(Instant::now(), wait),
                });
                Err(failure)
            }
        }
    }

    /// One token request: the token and how long it may be used, or why there is none.
    async fn request(&self, http: &reqwest::Client, token_url: &Url) -> Result<(Secret, Duration), Failure> {
        let refused = |mut f: Failure| {
            f.prefix_detail("token request failed: ");
            f
        };
        let mut response = http
            .post(token_url.clone())
            .basic_auth(&self.client_id, Some(self.client_secret.expose()))
            .header(header::ACCEPT, "application/json")
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| refused(transport_error(e)))?;
        let code = response.status().as_u16();
        let retry = retry_after(response.headers());
        let (body, truncated) = read_capped(&mut response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| refused(transport_error(e)))?;
        if !response.status().is_success() || truncated {
            // Error bodies are OAuth shaped ({error, error_description}); classify reads both.
            let mut failure = match classify(code, retry, &body, truncated.then_some(MAX_ANSWER_BYTES)) {
                Err(f) => f,
                Ok(_) => Failure::new(FailureClass::Malformed, Some(code), None, "unexpected token answer"),
            };
            // 400 invalid_client is a credential problem, not a request problem.
            if failure.error_code.as_deref() == Some("invalid_client") {
                failure.class = FailureClass::Unauthorized;
            }
            return Err(refused(failure));
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            Failure::new(
                FailureClass::Malformed,
                Some(code),
                None,
                format!("token answer without access_token: {e}"),
            )
        })?;
        Ok((Secret::new(answer.access_token), lifetime(answer.expires_in.as_ref())))
    }
}

/// How long a token may be used according to `expires_in`, bounded to [0, `MAX_LIFETIME`].
fn lifetime(expires_in: Option<&serde_json::Value>) -> Duration {
    let seconds = match expires_in {
        None | Some(serde_json::Value::Null) => return DEFAULT_LIFETIME,
        Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(v) => v.as_f64(),
    };
    match seconds {
        // Unreadable: trust it for as long as a token usually lives; a 401 renews it anyway.
        None => DEFAULT_LIFETIME,
        Some(s) if s.is_nan() || s <= 0.0 => Duration::ZERO,
        Some(s) if s >= MAX_LIFETIME.as_secs_f64() => {
            tracing::debug!(expires_in = s, "token lifetime capped at 24h");
            MAX_LIFETIME
        }
        Some(s) => Duration::from_secs_f64(s),
    }
}

/// The wait after `in_a_row` refusals: doubling from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`], and
/// never shorter than the endpoint's own `Retry-After` (itself at most an hour).
fn backoff(in_a_row: u32, retry_after: Option<Duration>) -> Duration {
    let doubled = FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(in_a_row.saturating_sub(1)))
        .min(MAX_BACKOFF);
    doubled.max(retry_after.unwrap_or_default())
}

/// `now + d`, or `now` in the impossible case that the clock cannot count that far (every `d`
/// here is bounded to a day at most).
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_bounded() {
        use serde_json::json;
        assert_eq!(lifetime(None), DEFAULT_LIFETIME);
        assert_eq!(lifetime(Some(&json!(3600))), Duration::from_secs(3600));
        assert_eq!(lifetime(Some(&json!("120"))), Duration::from_secs(120));
        assert_eq!(lifetime(Some(&json!(u64::MAX))), MAX_LIFETIME);
        assert_eq!(lifetime(Some(&json!(1e300))), MAX_LIFETIME);
        assert_eq!(lifetime(Some(&json!(-5))), Duration::ZERO);
        assert_eq!(lifetime(Some(&json!("soon"))), DEFAULT_LIFETIME);
    }

    #[test]
    fn backoff_doubles_to_five_minutes_and_honours_retry_after() {
        let secs = |n, r: Option<u64>| backoff(n, r.map(Duration::from_secs)).as_secs();
        assert_eq!([1, 2, 3, 4].map(|n| secs(n, None)), [1, 2, 4, 8]);
        assert_eq!(secs(10, None), 300);
        assert_eq!(secs(u32::MAX, None), 300);
        assert_eq!(secs(1, Some(30)), 30);
        assert_eq!(secs(10, Some(3600)), 3600);
    }
}
