//! OAuth 2.0 client credentials for service accounts. One token per credential is kept until
//! shortly before it expires: the token endpoint allows about ten requests a minute, so minting
//! one per check would soon be rate limited.

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

pub struct TokenCache {
    client_id: String,
    client_secret: Secret,
    // A tokio mutex held across the token request: concurrent checks wait for one request
    // instead of each asking for a token.
    current: Mutex<Option<(Secret, Instant)>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

impl TokenCache {
    pub fn new(client_id: String, client_secret: Secret) -> Self {
        TokenCache {
            client_id,
            client_secret,
            current: Mutex::new(None),
        }
    }

    /// A valid token; `renew` forces a new one (after a 401).
    pub async fn token(&self, http: &reqwest::Client, token_url: &Url, renew: bool) -> Result<Secret, Failure> {
        let mut current = self.current.lock().await;
        if let Some((token, valid_until)) = &*current
            && !renew
            && Instant::now() < *valid_until
        {
            return Ok(token.clone());
        }
        *current = None;
        let mut response = http
            .post(token_url.clone())
            .basic_auth(&self.client_id, Some(self.client_secret.expose()))
            .header(header::ACCEPT, "application/json")
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(transport_error)?;
        let code = response.status().as_u16();
        let retry = retry_after(response.headers());
        let (body, truncated) = read_capped(&mut response, 64 * 1024).await.map_err(transport_error)?;
        if !response.status().is_success() || truncated {
            // Error bodies are OAuth shaped ({error, error_description}); classify reads both.
            let mut failure = match classify(code, retry, &body, truncated.then_some(64 * 1024)) {
                Err(f) => f,
                Ok(_) => Failure::new(FailureClass::Malformed, Some(code), None, "unexpected token answer"),
            };
            // 400 invalid_client is a credential problem, not a request problem.
            if failure.error_code.as_deref() == Some("invalid_client") {
                failure.class = FailureClass::Unauthorized;
            }
            failure.detail = format!("token request failed: {}", failure.detail);
            return Err(failure);
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            Failure::new(
                FailureClass::Malformed,
                Some(code),
                None,
                format!("token answer without access_token: {e}"),
            )
        })?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600));
        let valid_until = Instant::now() + lifetime.saturating_sub(EARLY.min(lifetime / 2));
        let token = Secret::new(answer.access_token);
        *current = Some((token.clone(), valid_until));
        Ok(token)
    }
}
