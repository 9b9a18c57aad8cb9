//! Slack incoming webhooks: Block Kit with a meaningful top-level `text`, one message per event,
//! or one digest when several are due at once.

use std::time::Duration;

use serde_json::{Value, json};

use super::{SendError, http_outcome};
use crate::message::Message;
use crate::secret::Secret;

/// Slack allows at most 50 blocks and 3,000 characters per section text.
const SECTION_CHARS: usize = 2900;

#[derive(Debug)]
pub struct Slack {
    http: reqwest::Client,
    url: Secret,
    timeout: Duration,
}

impl Slack {
    pub fn new(http: reqwest::Client, url: Secret, timeout: Duration) -> Self {
        Slack { http, url, timeout }
    }

    pub async fn send(&self, messages: &[Message]) -> Result<(), SendError> {
        let body = match messages {
            [one] => single(one),
            many => digest(many),
        };
        let response = self
            .http
            .post(self.url.expose())
            .timeout(self.timeout)
            .json(&body)
            .send()
            .await;
        // Slack's 400/403/404/410 (invalid_payload, channel_not_found, ...) are final; 429 and 5xx
        // are worth another try.
        http_outcome(response, |code| {
            (400..500).contains(&code) && code != 408 && code != 429
        })
        .await
    }
}

pub fn single(m: &Message) -> Value {
    let mut fields = vec![
        json!({"type": "mrkdwn", "text": format!("*Org*\n{} (`{}`)", m.org_name, m.org_id)}),
        json!({"type": "mrkdwn", "text": format!("*When (UTC)*\n{}", m.at)}),
    ];
    if let (Some(from), Some(to)) = (
        m.data.get("from").and_then(Value::as_str),
        m.data.get("to").and_then(Value::as_str),
    ) {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Status*\n{from} → *{to}*")}));
        if let Some(s) = m.data.get("from_lasted_s").and_then(Value::as_i64) {
            fields
                .push(json!({"type": "mrkdwn", "text": format!("*{from} lasted*\n{}", crate::message::human_secs(s))}));
        }
    }
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*", escape(&m.title))}}),
        json!({"type": "section", "fields": fields}),
    ];
    if let Some(advice) = &m.advice {
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": escape(advice)}]}));
    }
    json!({"text": m.title, "blocks": blocks})
}

pub fn digest(messages: &[Message]) -> Value {
    let text = format!("linkwatch: {} events ({})", messages.len(), counts(messages));
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": text.chars().take(150).collect::<String>()}}),
    ];
    let mut section = String::new();
    for m in messages {
        let line = format!("• `{}` {}\n", &m.at.get(11..19).unwrap_or(&m.at), escape(&m.title));
        if section.len() + line.len() > SECTION_CHARS {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": section}}));
            section = String::new();
        }
        section.push_str(&line);
    }
    if !section.is_empty() {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": section}}));
    }
    blocks.truncate(50);
    json!({"text": text, "blocks": blocks})
}

/// "3 status_changed, 1 check_failing".
fn counts(messages: &[Message]) -> String {
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for m in messages {
        match kinds.iter_mut().find(|(k, _)| *k == m.kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((&m.kind, 1)),
        }
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Slack's mrkdwn treats &, < and > as control characters.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
