//! The words every notification is made of: a [`Message`] and how long things lasted. A leaf,
//! so that both what an event says (`message`) and a report (`report`) can use it without
//! needing each other.

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// One line that stands on its own (Slack's `text`, an email subject, a console line).
    pub title: String,
    /// What to do about it, when there is something to do.
    pub advice: Option<String>,
    pub org_name: String,
    pub org_id: String,
    pub kind: String,
    pub event_id: String,
    /// ISO-8601 UTC.
    pub at: String,
    /// The event's own fields (from, to, failure, ...), for machine-readable channels.
    pub data: serde_json::Value,
    /// Where a person acts on it: the org in Cloud Manager, the migration in Atlas, the org's
    /// status page.
    pub links: Vec<Link>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub label: &'static str,
    pub url: String,
}

impl Message {
    /// When it happened, written once: `2026-12-04 22:34:58 UTC`.
    pub fn when(&self) -> String {
        shown_time(&self.at)
    }
}

/// A stored time (RFC 3339, UTC) as a person reads it: to the second, with its zone named once.
pub fn shown_time(at: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(at) {
        Ok(t) => t
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string(),
        Err(_) => at.to_owned(),
    }
}

/// A time as [`shown_time`] shows it.
pub fn shown_at(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// "3m 20s", "2h 5m", "4d 1h": two units at most; a person wants the size, not the seconds.
pub fn human_secs(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) if sec == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h {m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d {h}h"),
    }
}
