//! The only code that sends notifications. Each channel takes a batch of messages and says
//! whether they arrived, or how the failure should be treated (retry or give up).

pub mod console;
pub mod email;
pub mod slack;
pub mod webhook;

use std::time::Duration;

use crate::config;
use crate::message::Message;
use crate::retry::retry_after;

pub use console::ConsoleSink;

/// Why a send failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq)]
pub enum SendError {
    /// Timeouts, connection errors, 5xx, 429, SMTP 4xx: try again later, not before `retry_after`.
    Transient {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The receiver refused for good (a removed webhook, a bad address): stop now.
    Permanent(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Transient { error, .. } => write!(f, "{error} (will retry)"),
            SendError::Permanent(e) => write!(f, "{e} (permanent)"),
        }
    }
}

#[derive(Debug)]
pub enum Channel {
    Console(console::Console),
    Slack(slack::Slack),
    Email(email::Email),
    Webhook(webhook::Webhook),
}

impl Channel {
    pub fn from_config(c: &config::Channel, http: &reqwest::Client, console: &ConsoleSink) -> anyhow::Result<Channel> {
        Ok(match &c.kind {
            config::ChannelKind::Console => Channel::Console(console::Console::new(console.clone())),
            config::ChannelKind::Slack { webhook_url } => {
                Channel::Slack(slack::Slack::new(http.clone(), webhook_url.clone(), c.timeout))
            }
            config::ChannelKind::Email(settings) => Channel::Email(
                email::Email::new(settings, c.timeout).map_err(|e| anyhow::anyhow!("channel {}: {e:#}", c.name))?,
            ),
            config::ChannelKind::Webhook { url, secret } => Channel::Webhook(webhook::Webhook::new(
                http.clone(),
                url.clone(),
                secret.clone(),
                c.timeout,
            )),
        })
    }

    /// Sends `messages` (one, or several due at once) as one delivery: several become one
    /// digest on Slack and email, and separate requests on a webhook.
    pub async fn send(&self, messages: &[Message]) -> Result<(), SendError> {
        match self {
            Channel::Console(c) => c.send(messages),
            Channel::Slack(c) => c.send(messages).await,
            Channel::Email(c) => c.send(messages).await,
            Channel::Webhook(c) => c.send(messages).await,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Channel::Console(_) => "console",
            Channel::Slack(_) => "slack",
            Channel::Email(_) => "email",
            Channel::Webhook(_) => "webhook",
        }
    }

    /// How many due deliveries one send may carry.
    pub fn max_batch(&self) -> i64 {
        match self {
            Channel::Console(_) => 100,
            Channel::Slack(_) | Channel::Email(_) => 100,
            // One request per event; a small batch keeps a slow receiver from holding many.
            Channel::Webhook(_) => 1,
        }
    }
}

/// The outcome of an HTTP delivery. `permanent(code)` says which non-2xx codes are final.
/// Errors never include the URL (a Slack webhook URL is a secret).
async fn http_outcome(
    response: reqwest::Result<reqwest::Response>,
    permanent: impl Fn(u16) -> bool,
) -> Result<(), SendError> {
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            let kind = if e.is_timeout() {
                "timed out"
            } else {
                "could not connect"
            };
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            return Err(SendError::Transient {
                error: format!("{kind}{cause}"),
                retry_after: None,
            });
        }
    };
    let code = response.status().as_u16();
    if response.status().is_success() {
        return Ok(());
    }
    let wait = retry_after(response.headers());
    let body = response.text().await.unwrap_or_default();
    let body: String = body
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(300)
        .collect();
    let error = format!("HTTP {code}: {body}");
    if permanent(code) {
        Err(SendError::Permanent(error))
    } else {
        Err(SendError::Transient {
            error,
            retry_after: wait,
        })
    }
}
