//! What an event says to a person: one renderer shared by every channel, so Slack, email and the
//! console never disagree about what happened or what to do.

use crate::detect::Event;
use crate::store::StoredEvent;

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
}

pub fn render(stored: &StoredEvent) -> Message {
    if stored.kind == crate::report::KIND
        && let Ok(report) = serde_json::from_str::<crate::report::Report>(&stored.payload)
    {
        return report.message(stored);
    }
    let name = stored.org_name.clone().unwrap_or_else(|| stored.org_id.clone());
    let (title, advice) = match serde_json::from_str::<Event>(&stored.payload) {
        Ok(event) => describe(&name, &event),
        Err(_) => (
            format!("{name}: {} (payload not readable by this version)", stored.kind),
            None,
        ),
    };
    Message {
        title,
        advice,
        org_name: name,
        org_id: stored.org_id.clone(),
        kind: stored.kind.clone(),
        event_id: stored.id.clone(),
        at: stored.created_at.clone(),
        data: serde_json::from_str(&stored.payload).unwrap_or(serde_json::Value::Null),
    }
}

fn describe(name: &str, event: &Event) -> (String, Option<String>) {
    match event {
        Event::FirstSeen { status } => (
            format!("{name}: migration link is {status} (first check)"),
            advice_for(None, status),
        ),
        Event::StatusChanged {
            from,
            to,
            from_lasted_s,
            ..
        } => {
            let lasted = human_secs(*from_lasted_s);
            let title = if to == "SYNCED" {
                format!("{name}: migration link SYNCED (was {from} for {lasted})")
            } else if from == "SYNCED" {
                format!("{name}: migration link fell back to {to} after {lasted} SYNCED")
            } else {
                format!("{name}: migration link is now {to} (was {from} for {lasted})")
            };
            (title, advice_for(Some(from), to))
        }
        Event::CheckFailing { failures, failure, .. } => (
            format!(
                "{name}: status checks failing ({failures} in a row): {}",
                failure.explain()
            ),
            Some("linkwatch cannot see this link's status until this is fixed.".to_owned()),
        ),
        Event::Reminder {
            condition,
            status,
            elapsed_s,
            ..
        } => {
            let elapsed = human_secs(*elapsed_s);
            match condition {
                crate::detect::Condition::LinkBroken => (
                    format!(
                        "{name}: reminder: migration link still {} after {elapsed}",
                        status.as_deref().unwrap_or("not SYNCED")
                    ),
                    advice_for(Some("SYNCED"), status.as_deref().unwrap_or("")),
                ),
                crate::detect::Condition::CheckFailing => (
                    format!("{name}: reminder: status checks still failing after {elapsed}"),
                    Some("linkwatch cannot see this link's status until this is fixed.".to_owned()),
                ),
            }
        }
        Event::CheckRecovered { failures, failed_for_s } => (
            format!(
                "{name}: status checks recovered after {} ({failures} failed checks)",
                human_secs(*failed_for_s)
            ),
            None,
        ),
    }
}

fn advice_for(from: Option<&str>, to: &str) -> Option<String> {
    match (from, to) {
        (_, "SYNCED") => Some("The org is ready for live migration to Atlas.".to_owned()),
        (Some("SYNCED"), _) => Some(
            "The link to the Atlas org broke: live migrations from this org cannot proceed until it \
             is SYNCED again. Check the link in Cloud Manager, or create a new link token in Atlas."
                .to_owned(),
        ),
        _ => None,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_wrote_them() {
        assert_eq!(human_secs(0), "0s");
        assert_eq!(human_secs(200), "3m 20s");
        assert_eq!(human_secs(120), "2m");
        assert_eq!(human_secs(7500), "2h 5m");
        assert_eq!(human_secs(3600), "1h");
        assert_eq!(human_secs(90_000), "1d 1h");
    }

    fn stored(event: &Event) -> StoredEvent {
        StoredEvent {
            id: "evt_1".into(),
            org_id: "5f0c1234567890abcdef1234".into(),
            org_name: Some("payments".into()),
            kind: event.kind().into(),
            created_at: "2026-11-29T08:00:00.000Z".into(),
            payload: serde_json::to_string(event).unwrap(),
        }
    }

    #[test]
    fn synced_and_broken_links_say_what_to_do() {
        let m = render(&stored(&Event::StatusChanged {
            from: "NOT_SYNCED".into(),
            to: "SYNCED".into(),
            changed_at: chrono::Utc::now(),
            from_lasted_s: 200,
        }));
        assert_eq!(m.title, "payments: migration link SYNCED (was NOT_SYNCED for 3m 20s)");
        assert!(m.advice.unwrap().contains("ready for live migration"));
        let m = render(&stored(&Event::StatusChanged {
            from: "SYNCED".into(),
            to: "NOT_SYNCED".into(),
            changed_at: chrono::Utc::now(),
            from_lasted_s: 7500,
        }));
        assert_eq!(
            m.title,
            "payments: migration link fell back to NOT_SYNCED after 2h 5m SYNCED"
        );
        assert!(m.advice.unwrap().contains("link to the Atlas org broke"));
    }
}
