//! The only code that sends notifications. Each channel takes a batch of messages and says
//! whether they arrived, or how the failure should be treated (retry or give up).

pub mod console;
pub mod email;
mod relay;
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
        /// The receiver limits the rate of the whole destination (HTTP 429), rather than
        /// refusing this message for now: nothing may go there before `retry_after`, whatever
        /// was sent. Slack may disable an app that keeps posting after a 429.
        rate_limited: bool,
    },
    /// The receiver refused this message for good (Slack's `invalid_blocks`, a webhook's 400 or
    /// 422): other messages may still pass, so a digest that gets this is split up.
    Permanent(String),
    /// The destination refuses everything for good (a removed webhook, an archived channel, a
    /// redirect to a login page): every message of the send fails, none is tried alone.
    Closed(String),
}

impl SendError {
    /// What went wrong, without what the dispatcher would do about it: for callers that do not
    /// retry (`notify-test`).
    pub fn reason(&self) -> &str {
        match self {
            SendError::Transient { error, .. } | SendError::Permanent(error) | SendError::Closed(error) => error,
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Transient { error, .. } => write!(f, "{error} (will retry)"),
            SendError::Permanent(e) | SendError::Closed(e) => write!(f, "{e} (permanent)"),
        }
    }
}

/// A send that arrived; `Some` says what did not go as asked (a mail recipient refused).
pub type Sent = Option<String>;

#[derive(Debug)]
pub enum Channel {
    Console(console::Console),
    Slack(slack::Slack),
    Email(email::Email),
    Webhook(webhook::Webhook),
}

impl Channel {
    pub fn from_config(
        c: &config::ChannelConfig,
        http: &reqwest::Client,
        console: &ConsoleSink,
    ) -> anyhow::Result<Channel> {
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

    /// Keeps what this channel learns about its recipients in `progress`, which outlives it (a
    /// reload builds the channel again). Only email has any: who already has which event.
    pub fn remember_in(&mut self, progress: &email::Progress) {
        if let Channel::Email(e) = self {
            e.remember_in(progress);
        }
    }

    /// Forgets what this channel learnt about these events' recipients: their deliveries ended
    /// (sent, failed or given up), and none is sent again.
    pub fn forget(&self, events: &[&str]) {
        if let Channel::Email(e) = self {
            e.forget(events);
        }
    }

    /// Sends `messages` (one, or several due at once) as one delivery: several become one
    /// digest on Slack and email, and separate requests on a webhook. Callers send one of
    /// [`groups`](Self::groups) at a time.
    ///
    /// Unbounded in time as a whole: the caller sets the bound (`dispatch::Outlet::send_by`).
    /// What a receiver said is in the error only through the gate for outside text
    /// ([`answer`] for HTTP, `relay` for SMTP).
    pub async fn send(&self, messages: &[Message]) -> Result<Sent, SendError> {
        match self {
            Channel::Console(c) => c.send(messages).map(|()| None),
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

    /// How `messages` split into sends, as the number of messages in each, in order: Slack
    /// posts that stay within its limits, one request per event on a webhook, one mail.
    /// A report always goes alone: it is a message of its own, never a line in a digest.
    pub fn groups(&self, messages: &[Message]) -> Vec<usize> {
        let mut groups = Vec::new();
        let mut start = 0;
        for (i, m) in messages.iter().enumerate() {
            if m.kind == crate::report::KIND {
                groups.extend(self.event_groups(&messages[start..i]));
                groups.push(1);
                start = i + 1;
            }
        }
        groups.extend(self.event_groups(&messages[start..]));
        groups
    }

    fn event_groups(&self, messages: &[Message]) -> Vec<usize> {
        if messages.is_empty() {
            return Vec::new();
        }
        match self {
            Channel::Slack(_) => slack::groups(messages),
            Channel::Webhook(_) => vec![1; messages.len()],
            Channel::Console(_) | Channel::Email(_) => vec![messages.len()],
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

/// The most of an error body read from a receiver; the rest is never downloaded.
const BODY_CAP: usize = 64 * 1024;
/// The most of it kept in an error message.
const BODY_CHARS: usize = 300;

/// A non-2xx answer to an HTTP delivery, or none at all.
#[derive(Debug)]
enum Answer {
    /// No answer: a timeout or a connection error.
    None(String),
    /// An HTTP status other than 2xx.
    Status {
        code: u16,
        /// The start of the body, whitespace collapsed.
        body: String,
        retry_after: Option<Duration>,
        /// Where a 3xx pointed, resolved against the request URL.
        location: Option<reqwest::Url>,
    },
}

impl Answer {
    /// What happened, in words; never the request URL (a Slack webhook URL is a secret).
    fn describe(&self) -> String {
        match self {
            Answer::None(e) => e.clone(),
            Answer::Status { code, body, .. } => format!("HTTP {code}: {body}"),
        }
    }
}

/// Reads a response as far as needed: nothing of a 2xx, at most [`BODY_CAP`] bytes of anything
/// else (a body that never ends must not hold the worker until the timeout).
async fn answer(response: reqwest::Result<reqwest::Response>) -> Result<(), Answer> {
    let mut response = match response {
        Ok(r) => r,
        Err(e) => {
            let kind = if e.is_timeout() {
                "timed out"
            } else {
                "could not connect"
            };
            // Where, by host and port only (a Slack URL's path is its secret), and the deepest
            // cause ("Connection refused"), not the wrappers above it ("client error (Connect)").
            let place = e
                .url()
                .and_then(|u| Some(format!(" to {}:{}", u.host_str()?, u.port_or_known_default()?)))
                .unwrap_or_default();
            let mut cause = std::error::Error::source(&e);
            while let Some(deeper) = cause.and_then(std::error::Error::source) {
                cause = Some(deeper);
            }
            let cause = cause.map(|c| format!(": {c}")).unwrap_or_default();
            return Err(Answer::None(crate::outside::text(
                &format!("{kind}{place}{cause}"),
                BODY_CHARS,
            )));
        }
    };
    if response.status().is_success() {
        return Ok(());
    }
    let code = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .and_then(|l| response.url().join(l).ok());
    let mut bytes = Vec::new();
    while bytes.len() < BODY_CAP {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk[..chunk.len().min(BODY_CAP - bytes.len())]),
            Ok(None) | Err(_) => break,
        }
    }
    // Through the gate for outside text (a NUL in a proxy's page, escape codes), then
    // whitespace collapsed and cut to what a message can hold.
    let clean = crate::outside::bytes(&bytes, BODY_CAP);
    let body = crate::outside::text(&clean.split_whitespace().collect::<Vec<_>>().join(" "), BODY_CHARS);
    Err(Answer::Status {
        code,
        body,
        retry_after,
        location,
    })
}

/// The error for a 3xx: a redirect is not a delivery (a POST redirected becomes a GET of a
/// login page). It names where it pointed without the query, fragment or credentials; with
/// `origin_only` only the scheme, host and port (a path could echo a secret URL).
fn redirect_error(code: u16, location: Option<&reqwest::Url>, origin_only: bool) -> String {
    let target = location.map(|l| {
        if origin_only {
            l.origin().ascii_serialization()
        } else {
            let mut l = l.clone();
            l.set_query(None);
            l.set_fragment(None);
            let _ = l.set_username("");
            let _ = l.set_password(None);
            l.to_string()
        }
    });
    match target {
        Some(t) => format!(
            "HTTP {code}: redirected to {t}; a redirect is not a delivery (is the URL behind a login page, or moved?)"
        ),
        None => format!("HTTP {code}: a redirect without a Location; a redirect is not a delivery"),
    }
}
