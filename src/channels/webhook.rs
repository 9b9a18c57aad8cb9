//! Generic webhooks: one POST per event with a documented, versioned JSON body, signed per the
//! Standard Webhooks spec when a secret is set. The `webhook-id` is the event id, the same on
//! every retry, so receivers can drop duplicates.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{Answer, SendError, Sent, answer, redirect_error};
use crate::config::WebhookSecret;
use crate::message::Message;

/// Bumped when the body changes incompatibly; documented in the README.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug)]
pub struct Webhook {
    http: reqwest::Client,
    url: reqwest::Url,
    secret: Option<WebhookSecret>,
    timeout: Duration,
}

impl Webhook {
    pub fn new(http: reqwest::Client, url: reqwest::Url, secret: Option<WebhookSecret>, timeout: Duration) -> Self {
        Webhook {
            http,
            url,
            secret,
            timeout,
        }
    }

    /// One request per message, in order, stopping at the first failure (the dispatcher sends
    /// them one at a time anyway, see `Channel::groups`).
    pub async fn send(&self, messages: &[Message]) -> Result<Sent, SendError> {
        for m in messages {
            self.send_one(m).await?;
        }
        Ok(None)
    }

    async fn send_one(&self, m: &Message) -> Result<(), SendError> {
        let body = body(m).to_string();
        let mut request = self
            .http
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &m.event_id);
        if let Some(secret) = &self.secret {
            let timestamp = chrono::Utc::now().timestamp();
            request = request
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", sign(secret, &m.event_id, timestamp, &body));
        }
        let response = request.body(body).send().await;
        answer(response).await.map_err(|a| classify(&a))
    }
}

/// 408, 429 and 5xx ask for a retry; 400, 413, 415 and 422 refuse this event's body; any other
/// 4xx (401, 403, 404, 410, ...) and a redirect refuse the endpoint itself.
fn classify(a: &Answer) -> SendError {
    match a {
        Answer::Status { code, location, .. } if (300..400).contains(code) => {
            SendError::Closed(redirect_error(*code, location.as_ref(), false))
        }
        Answer::Status {
            code: 400 | 413 | 415 | 422,
            ..
        } => SendError::Permanent(a.describe()),
        Answer::Status { code, .. } if (400..500).contains(code) && *code != 408 && *code != 429 => {
            SendError::Closed(a.describe())
        }
        Answer::Status { code, retry_after, .. } => SendError::Transient {
            error: a.describe(),
            retry_after: *retry_after,
            rate_limited: *code == 429,
        },
        Answer::None(e) => SendError::Transient {
            error: e.clone(),
            retry_after: None,
            rate_limited: false,
        },
    }
}

/// The event as receivers get it (schema version 1); a report carries `report` (see
/// `report::Report`) instead of `org` and `data`.
pub fn body(m: &Message) -> Value {
    if let Some(report) = crate::report::Report::of(m) {
        return json!({
            "version": SCHEMA_VERSION,
            "id": m.event_id,
            "type": m.kind,
            "timestamp": m.at,
            "report": report,
            "summary": m.title,
        });
    }
    json!({
        "version": SCHEMA_VERSION,
        "id": m.event_id,
        "type": m.kind,
        "timestamp": m.at,
        "org": {"id": m.org_id, "name": m.org_name},
        "data": m.data,
        "summary": m.title,
        "advice": m.advice,
    })
}

/// `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), per the Standard Webhooks spec.
pub fn sign(secret: &WebhookSecret, id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC takes keys of any length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::decode_webhook_secret;

    /// The test vector published with the Standard Webhooks specification.
    #[test]
    fn standard_webhooks_test_vector() {
        let secret = decode_webhook_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = sign(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    /// A 429 limits the whole endpoint; a 503 with Retry-After may be about this one event.
    #[test]
    fn only_a_429_is_a_rate_limit() {
        let status = |code| Answer::Status {
            code,
            body: String::new(),
            retry_after: Some(std::time::Duration::from_secs(5)),
            location: None,
        };
        let limited = |a: &Answer| matches!(classify(a), SendError::Transient { rate_limited, .. } if rate_limited);
        assert!(limited(&status(429)));
        assert!(!limited(&status(503)));
        assert!(!limited(&Answer::None("timed out".into())));
    }
}
