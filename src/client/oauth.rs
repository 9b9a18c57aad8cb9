//! OAuth 2.0 client credentials for service accounts. One token per credential is kept until
//! shortly before it expires: the token endpoint allows about ten requests a minute, so minting
//! one per check would soon be rate limited.
//!
//! Four rules keep the token endpoint quiet, all under one lock per service account:
//! - one token request at a time: checks that find no valid token wait for the one request in
//!   flight and share its answer;
//! - a 401 renews the token only if the token that failed is still the cached one (another check
//!   may already have renewed it);
//! - an org that refuses the token it was just handed after a 401 (a renewed one, or the one
//!   another check had just renewed) lacks access: its 401s are reported as such without
//!   renewing, for [`DENIAL_MEMORY`], whichever token is current. The denial belongs to the
//!   service account, not to a token: were it forgotten when the token changes, the renewal one
//!   unreachable org asks for would make the others forget theirs, and with two such orgs every
//!   check would cost a token request. A revoked token is still renewed by the first 401 of any
//!   org that has not refused a new one;
//! - a refused token request is remembered, and until its backoff has passed every check gets the
//!   remembered failure without asking again.
//!
//! The cached token is only ever replaced, never dropped: while a renewal fails, the old token
//! serves the orgs it works for, until the lifetime its answer gave it runs out.

use std::collections::HashMap;
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

/// When `expires_in` is missing, unreadable or not positive: the usual lifetime of a service
/// account token.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// The wait after the first refused token request, doubling with each refusal in a row up to
/// [`MAX_BACKOFF`]. Starting at a second keeps recovery quick after a blip, and the doubling
/// stays under the endpoint's limit of about ten requests a minute from the first minute on.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How long an org that refused a just-handed token is believed to lack access, counted from its
/// own refusal whichever token is current. Bounded, so that a token revoked while only such orgs
/// use it is still renewed within minutes, at the cost of one token request per org and period
/// at most.
const DENIAL_MEMORY: Duration = Duration::from_secs(600);

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
    /// The current token; replaced by a new one, never dropped.
    token: Option<Cached>,
    /// The last token request failed: how, how many times in a row, and until when it is not
    /// repeated.
    refused: Option<Refusal>,
    /// Orgs that refused a token handed to them fresh after a 401, and until when they are
    /// believed to lack access. Kept across token changes; bounded by the configured orgs, and
    /// lapsed entries are dropped whenever one is added.
    denied: HashMap<String, Instant>,
}

struct Cached {
    secret: Secret,
    /// From then on, a new token is asked for before use.
    renew_at: Instant,
    /// Until then the token works by its answer's `expires_in`: it is used while renewals fail.
    expires_at: Instant,
}

/// What a check does after Cloud Manager answered its token with 401.
pub enum AfterUnauthorized {
    /// Try once more with this token.
    Retry(Secret),
    /// The org refuses tokens however new: a permission problem, not the token's.
    NoAccess,
}

/// The failure of a check whose org refuses the service account's tokens however new.
pub fn no_access() -> Failure {
    Failure::new(
        FailureClass::Unauthorized,
        Some(401),
        None,
        "the service account has no access to this org: Cloud Manager refused a newly issued token \
         too, so no new token is asked for on this org's behalf",
    )
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

    /// A valid token: the cached one, or a new one; the cached one, still, if it is due for
    /// renewal but the renewal failed and it has not expired yet.
    pub async fn token(&self, http: &reqwest::Client, token_url: &Url) -> Result<Secret, Failure> {
        let mut state = self.state.lock().await;
        if let Some(cached) = &state.token
            && Instant::now() < cached.renew_at
        {
            return Ok(cached.secret.clone());
        }
        let failure = match self.fetch(&mut state, http, token_url).await {
            Ok(token) => return Ok(token),
            Err(failure) => failure,
        };
        match &state.token {
            // `fetch` has logged the failure; the old token still has its last minute or so.
            Some(cached) if Instant::now() < cached.expires_at => Ok(cached.secret.clone()),
            _ => Err(failure),
        }
    }

    /// What to do after Cloud Manager answered `rejected` with 401 for `org`: retry with a new
    /// token, or with the one another check has already put in place of `rejected`; or nothing,
    /// when `org` has refused the current token before (see [`AfterUnauthorized`]). A failed
    /// renewal leaves the cached token in place for the orgs it works for.
    pub async fn unauthorized(
        &self,
        org: &str,
        rejected: &Secret,
        http: &reqwest::Client,
        token_url: &Url,
    ) -> Result<AfterUnauthorized, Failure> {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        match state.denied.get(org) {
            Some(until) if now < *until => return Ok(AfterUnauthorized::NoAccess),
            Some(_) => {
                state.denied.remove(org);
            }
            None => {}
        }
        if let Some(cached) = &state.token
            && cached.secret != *rejected
            && now < cached.renew_at
        {
            return Ok(AfterUnauthorized::Retry(cached.secret.clone()));
        }
        self.fetch(&mut state, http, token_url)
            .await
            .map(AfterUnauthorized::Retry)
    }

    /// Remembers that `org` refused `token`, which [`TokenCache::unauthorized`] handed it: the
    /// org lacks access, and for [`DENIAL_MEMORY`] its 401s renew no token, whichever is current.
    /// Believed only while `token` is still the current one: if another check has replaced it in
    /// the meantime, it may have been revoked, and the refusal says nothing about the org.
    pub async fn refused_after_renewal(&self, org: &str, token: &Secret) {
        let mut state = self.state.lock().await;
        if state.token.as_ref().is_none_or(|cached| cached.secret != *token) {
            return;
        }
        let now = Instant::now();
        state.denied.retain(|_, until| now < *until);
        if !state.denied.contains_key(org) {
            tracing::debug!(client_id = %self.client_id, %org, "org refuses a new token: no access");
            state.denied.insert(org.to_owned(), later(now, DENIAL_MEMORY));
        }
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
                let now = Instant::now();
                state.token = Some(Cached {
                    secret: token.clone(),
                    renew_at: later(now, use_for),
                    expires_at: later(now, lifetime),
                });
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
            f.prefix_detail(&format!("token request to {token_url} failed: "));
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
            // 400 invalid_client is a credential problem, not a request problem; a 429 or a 5xx
            // is waited out as any; anything else (a 404 from a wrong token_url) is the token
            // endpoint's, never read as the org having no link.
            match failure.class {
                _ if failure.error_code.as_deref() == Some("invalid_client") => {
                    failure.class = FailureClass::Unauthorized;
                }
                FailureClass::Unauthorized | FailureClass::RateLimited | FailureClass::ServerError => {}
                _ => failure.class = FailureClass::Token,
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

/// How long a token may be used according to `expires_in`, bounded to (0, `MAX_LIFETIME`].
fn lifetime(expires_in: Option<&serde_json::Value>) -> Duration {
    let seconds = match expires_in {
        None | Some(serde_json::Value::Null) => return DEFAULT_LIFETIME,
        Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(v) => v.as_f64(),
    };
    match seconds {
        // Unreadable: trust it for as long as a token usually lives; a 401 renews it anyway.
        None => DEFAULT_LIFETIME,
        // A token that lives no time at all was never meant: taken literally, every check would
        // ask for a new token and the endpoint would soon rate limit the account.
        Some(s) if s.is_nan() || s <= 0.0 => {
            tracing::debug!(expires_in = s, "token lifetime not positive; taken as unknown");
            DEFAULT_LIFETIME
        }
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
        assert_eq!(lifetime(Some(&json!(-5))), DEFAULT_LIFETIME);
        assert_eq!(lifetime(Some(&json!(0))), DEFAULT_LIFETIME);
        assert_eq!(lifetime(Some(&json!("-0"))), DEFAULT_LIFETIME);
        assert_eq!(lifetime(Some(&json!(1e-6))), Duration::from_micros(1));
        assert_eq!(lifetime(Some(&json!("soon"))), DEFAULT_LIFETIME);
    }

    /// A token endpoint that refuses connections.
    async fn closed_token_url() -> Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        Url::parse(&format!("http://127.0.0.1:{port}/api/oauth/token")).unwrap()
    }

    #[tokio::test]
    async fn a_denial_is_believed_for_a_while_and_a_failed_renewal_keeps_the_token() {
        let org = String::from("5f0c00000000000000000a01");
        let token = Secret::new("the-token".to_owned());
        let cache = TokenCache::new("id".into(), Secret::new("secret".to_owned()));
        let now = Instant::now();
        *cache.state.lock().await = State {
            token: Some(Cached {
                secret: token.clone(),
                renew_at: later(now, Duration::from_secs(3000)),
                expires_at: later(now, Duration::from_secs(3600)),
            }),
            refused: None,
            denied: HashMap::from([(org.clone(), later(now, DENIAL_MEMORY))]),
        };
        let http = reqwest::Client::new();
        let url = closed_token_url().await;
        let next = cache.unauthorized(&org, &token, &http, &url).await.unwrap();
        assert!(matches!(next, AfterUnauthorized::NoAccess));

        // Once the denial has lapsed, a 401 renews again; the renewal fails, the token stays.
        cache.state.lock().await.denied.insert(org.clone(), now);
        let failure = cache.unauthorized(&org, &token, &http, &url).await.err().unwrap();
        assert_eq!(failure.class, FailureClass::Connection);
        assert!(cache.token(&http, &url).await.unwrap() == token);
    }

    /// Each org's denial outlives the token it was learned with and ends after its own
    /// [`DENIAL_MEMORY`], not with another org's.
    #[tokio::test(start_paused = true)]
    async fn each_denial_outlives_token_changes_and_lapses_on_its_own() {
        let a = String::from("5f0c00000000000000000a01");
        let b = String::from("5f0c00000000000000000b02");
        let cache = TokenCache::new("id".into(), Secret::new("secret".to_owned()));
        let install = |state: &mut State, name: &str| {
            let now = Instant::now();
            state.token = Some(Cached {
                secret: Secret::new(name.to_owned()),
                renew_at: later(now, Duration::from_secs(3000)),
                expires_at: later(now, Duration::from_secs(3600)),
            });
        };
        let first = Secret::new("first".to_owned());
        install(&mut *cache.state.lock().await, "first");
        cache.refused_after_renewal(&a, &first).await;
        tokio::time::advance(Duration::from_secs(300)).await;
        let second = Secret::new("second".to_owned());
        install(&mut *cache.state.lock().await, "second");
        // A refusal of a token that is no longer current says nothing about the org.
        cache.refused_after_renewal(&b, &first).await;
        assert!(!cache.state.lock().await.denied.contains_key(&b));
        cache.refused_after_renewal(&b, &second).await;

        let http = reqwest::Client::new();
        let url = closed_token_url().await;
        for org in [&a, &b] {
            let next = cache.unauthorized(org, &second, &http, &url).await.unwrap();
            assert!(matches!(next, AfterUnauthorized::NoAccess), "{org}");
        }
        // Alpha's ten minutes are up, beta's are not: only alpha's 401 asks for a token.
        tokio::time::advance(DENIAL_MEMORY - Duration::from_secs(300)).await;
        let next = cache.unauthorized(&b, &second, &http, &url).await.unwrap();
        assert!(matches!(next, AfterUnauthorized::NoAccess));
        let failure = cache.unauthorized(&a, &second, &http, &url).await.err().unwrap();
        assert_eq!(failure.class, FailureClass::Connection);
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
