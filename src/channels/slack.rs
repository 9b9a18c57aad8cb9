//! Slack incoming webhooks: Block Kit with a meaningful top-level `text`, one message per event,
//! or a digest when several are due at once. Slack refuses a whole message (`400
//! invalid_blocks`) that breaks its limits, so every text is shortened to fit and a long digest
//! is split into several posts; no event is ever dropped.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Answer, SendError, Sent, answer, redirect_error};
use crate::message::Message;
use crate::secret::Secret;

/// Slack's limits: blocks per message, characters per section text, header text and field.
const MAX_BLOCKS: usize = 50;
const SECTION_CHARS: usize = 3000;
const HEADER_CHARS: usize = 150;
const FIELD_CHARS: usize = 2000;
/// The top-level `text` (what notifications show): Slack recommends at most 4,000 characters.
const TEXT_CHARS: usize = 3000;
/// One event's line in a digest: a digest is a list to scan, and a shorter line leaves room for
/// more events per post.
const LINE_CHARS: usize = 1000;

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

    pub async fn send(&self, messages: &[Message]) -> Result<Sent, SendError> {
        let body = match messages {
            [one] => match crate::report::Report::of(one) {
                Some(r) => report(&r),
                None => single(one),
            },
            many => digest(many),
        };
        let response = self
            .http
            .post(self.url.expose())
            .timeout(self.timeout)
            .json(&body)
            .send()
            .await;
        match answer(response).await {
            Ok(()) => Ok(None),
            Err(a) => Err(classify(&a)),
        }
    }
}

/// Slack's answers (plain-text error codes): 429 and 5xx are worth another try; a 400 refuses
/// this message (`invalid_blocks`, `invalid_payload`), other 4xx the webhook itself
/// (`no_service`, `channel_not_found`, `channel_is_archived`, `action_prohibited`).
fn classify(a: &Answer) -> SendError {
    let transient = || SendError::Transient {
        error: a.describe(),
        retry_after: match a {
            Answer::Status { retry_after, .. } => *retry_after,
            Answer::None(_) => None,
        },
        rate_limited: matches!(a, Answer::Status { code: 429, .. }),
    };
    match a {
        Answer::None(_) => transient(),
        Answer::Status { code, location, .. } if (300..400).contains(code) => {
            SendError::Closed(redirect_error(*code, location.as_ref(), true))
        }
        Answer::Status { code: 408 | 429, .. } => transient(),
        Answer::Status { code: 400, body, .. } if !body.starts_with("invalid_token") => {
            SendError::Permanent(a.describe())
        }
        Answer::Status { code: 400..500, .. } => SendError::Closed(a.describe()),
        Answer::Status { .. } => transient(),
    }
}

pub fn single(m: &Message) -> Value {
    let field = |text: String| json!({"type": "mrkdwn", "text": fit(&text, FIELD_CHARS)});
    let mut fields = vec![
        field(format!("*Org*\n{} (`{}`)", escape(&m.org_name), escape(&m.org_id))),
        field(format!("*When*\n{}", m.when())),
    ];
    if let (Some(from), Some(to)) = (
        m.data.get("from").and_then(Value::as_str),
        m.data.get("to").and_then(Value::as_str),
    ) {
        fields.push(field(format!("*Status*\n{} → *{}*", escape(from), escape(to))));
        if let Some(s) = m.data.get("from_lasted_s").and_then(Value::as_i64) {
            fields.push(field(format!(
                "*{} lasted*\n{}",
                escape(from),
                crate::message::human_secs(s)
            )));
        }
    }
    let title = fit(&format!("*{}", escape(&m.title)), SECTION_CHARS - 1) + "*";
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": title}}),
        json!({"type": "section", "fields": fields}),
    ];
    if let Some(advice) = &m.advice {
        blocks.push(
            json!({"type": "context", "elements": [{"type": "mrkdwn", "text": fit(&escape(advice), SECTION_CHARS)}]}),
        );
    }
    if !m.links.is_empty() {
        // `<url|label>`: the URL is built from the config and ids; Slack wants `&`, `<` and `>`
        // escaped in it, and `|` would end it (a URL parser leaves none unencoded in a path).
        let links: Vec<String> = m
            .links
            .iter()
            .map(|l| format!("<{}|{}>", escape(&l.url).replace('|', "%7C"), l.label))
            .collect();
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": fit(&links.join(" · "), SECTION_CHARS)}]}));
    }
    json!({"text": fit(&m.title, TEXT_CHARS), "blocks": blocks})
}

/// A scheduled report: a header, the SYNCED count, then the links not SYNCED and the failing
/// checks as lists packed into sections. A very long list is cut with a line saying how many
/// more there are, so the post stays within [`MAX_BLOCKS`].
pub fn report(r: &crate::report::Report) -> Value {
    let title = r.title();
    let mut blocks = vec![json!({"type": "header", "text": {"type": "plain_text", "text": fit(&title, HEADER_CHARS)}})];
    let mut intro = format!("*SYNCED:* {} of {}", r.synced, r.orgs);
    if let Some(note) = r.late_note() {
        intro = format!("{}\n{intro}", escape(&note));
    }
    blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": fit(&intro, SECTION_CHARS)}}));
    // Room for three headings with their lists, the deadline note and the closing context,
    // within MAX_BLOCKS.
    let per_list = (MAX_BLOCKS - 5) / 3 - 1;
    for (heading, lines) in [
        ("*Not SYNCED* (longest first)", r.not_synced_lines()),
        ("*Checks failing*", r.failing_lines()),
        ("*Live migrations* (ready for cutover first)", r.live_migration_lines()),
    ] {
        if lines.is_empty() {
            continue;
        }
        let total = lines.len();
        let lines = std::iter::once(format!("{heading}\n")).chain(
            lines
                .iter()
                .map(|l| fit(&format!("• {}", escape(l)), LINE_CHARS) + "\n"),
        );
        let mut sections = sections(lines);
        if sections.len() > per_list {
            sections.truncate(per_list - 1);
            // Each kept line ends in a newline; the heading is one of them.
            let shown = sections
                .iter()
                .map(|s| s.matches('\n').count())
                .sum::<usize>()
                .saturating_sub(1);
            sections.push(format!(
                "… and {} more (`linkwatch check` lists them all)",
                total - shown
            ));
        }
        for s in sections {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": s}}));
        }
    }
    if let Some(note) = r.live_migrations_note() {
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": escape(note)}]}));
    }
    blocks.push(
        json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("As of {}", r.shown(&r.generated_at))}]}),
    );
    json!({"text": fit(&title, TEXT_CHARS), "blocks": blocks})
}

/// A digest of `messages`: a header, then the events' lines packed into sections. The caller
/// keeps it within [`MAX_BLOCKS`] by sending [`groups`] one at a time.
pub fn digest(messages: &[Message]) -> Value {
    let text = format!("linkwatch: {} events ({})", messages.len(), counts(messages));
    let mut blocks = vec![json!({"type": "header", "text": {"type": "plain_text", "text": fit(&text, HEADER_CHARS)}})];
    for section in sections(messages.iter().map(line)) {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": section}}));
    }
    json!({"text": fit(&text, TEXT_CHARS), "blocks": blocks})
}

/// How many messages go in each post: as many as fit [`MAX_BLOCKS`] (a header plus sections),
/// in order. One message alone is a full message of its own, always within the limits.
pub fn groups(messages: &[Message]) -> Vec<usize> {
    let mut groups = Vec::new();
    let (mut in_group, mut sections, mut section_chars) = (0usize, 0usize, 0usize);
    for m in messages {
        let chars = line(m).chars().count();
        let starts_section = in_group == 0 || section_chars + chars > SECTION_CHARS;
        if starts_section && in_group > 0 && sections + 1 >= MAX_BLOCKS {
            groups.push(in_group);
            (in_group, sections, section_chars) = (0, 0, 0);
        }
        if in_group == 0 || section_chars + chars > SECTION_CHARS {
            sections += 1;
            section_chars = 0;
        }
        section_chars += chars;
        in_group += 1;
    }
    if in_group > 0 {
        groups.push(in_group);
    }
    groups
}

/// One event in a digest, with its newline.
fn line(m: &Message) -> String {
    let line = format!("• `{}` {}", m.at.get(11..19).unwrap_or(&m.at), escape(&m.title));
    fit(&line, LINE_CHARS) + "\n"
}

/// Lines packed into section texts of at most [`SECTION_CHARS`] characters.
fn sections(lines: impl Iterator<Item = String>) -> Vec<String> {
    let mut sections: Vec<String> = Vec::new();
    let mut chars = 0;
    for l in lines {
        let n = l.chars().count();
        match sections.last_mut() {
            Some(s) if chars + n <= SECTION_CHARS => s.push_str(&l),
            _ => {
                sections.push(l);
                chars = 0;
            }
        }
        chars += n;
    }
    sections
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

/// `text` in at most `max` characters: cut on a character boundary, never inside an entity that
/// [`escape`] made, and ended with "…" when cut.
fn fit(text: &str, max: usize) -> String {
    let Some((end, _)) = text.char_indices().nth(max.saturating_sub(1)) else {
        return text.to_owned();
    };
    if text[end..].chars().count() <= 1 {
        return text.to_owned();
    }
    let mut cut = &text[..end];
    if let Some(amp) = cut.rfind('&')
        && !cut[amp..].contains(';')
    {
        cut = &cut[..amp];
    }
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two thousand links not SYNCED, as many failing and as many live migrations, with long
    /// names: one post within Slack's limits, saying how many lines it left out.
    #[test]
    fn a_report_of_many_links_stays_within_slacks_limits() {
        use crate::report::{Failing, LiveMigrationLine, NotSynced, Report};
        let name = |i: usize| format!("org-{i}-{}", "n".repeat(300));
        let r = Report {
            name: "daily".into(),
            timezone: None,
            slot: "2026-11-30T09:00:00.000Z".into(),
            generated_at: "2026-11-30T09:00:00.100Z".into(),
            late: false,
            orgs: 4_000,
            synced: 0,
            not_synced: (0..2_000)
                .map(|i| NotSynced {
                    org_id: format!("{i:024x}"),
                    org_name: name(i),
                    status: Some("NOT_SYNCED".into()),
                    since: None,
                    for_s: Some(3600),
                })
                .collect(),
            failing: (0..2_000)
                .map(|i| Failing {
                    org_id: format!("{i:024x}"),
                    org_name: name(i),
                    failures: 3,
                    reason: "<&>".repeat(2000),
                })
                .collect(),
            migrations: (0..2_000)
                .map(|i| LiveMigrationLine {
                    name: name(i),
                    org_name: name(i),
                    status: Some("WORKING".into()),
                    ready_for_cutover: true,
                    estimated_deadline: Some("2026-12-01T09:00:00.000Z".into()),
                    left_s: Some(86_400),
                    lag_s: Some(5),
                    failing: None,
                })
                .collect(),
        };
        let post = report(&r);
        let blocks = post["blocks"].as_array().unwrap();
        assert!(blocks.len() <= MAX_BLOCKS, "{} blocks", blocks.len());
        for b in blocks {
            if let Some(text) = b["text"]["text"].as_str() {
                assert!(text.chars().count() <= SECTION_CHARS);
            }
        }
        assert!(post["text"].as_str().unwrap().chars().count() <= TEXT_CHARS);
        let all = post.to_string();
        assert_eq!(
            all.matches("more (`linkwatch check` lists them all)").count(),
            3,
            "{all}"
        );
        assert!(all.contains("Live migrations"), "{all}");
        assert!(!all.contains("<&>"), "mrkdwn control characters are escaped");
    }

    fn message(title: &str) -> Message {
        Message {
            title: title.into(),
            advice: Some("a".repeat(5000)),
            org_name: "o".repeat(3000),
            org_id: "5f0c1234567890abcdef1234".into(),
            kind: "status_changed".into(),
            event_id: "evt_1".into(),
            at: "2026-11-29T08:00:00.000Z".into(),
            data: json!({"from": "x".repeat(3000), "to": "SYNCED", "from_lasted_s": 5}),
            links: Vec::new(),
        }
    }

    #[test]
    fn fit_cuts_on_characters_and_entities() {
        assert_eq!(fit("short", 10), "short");
        assert_eq!(fit("exactly10!", 10), "exactly10!");
        assert_eq!(fit("ééééééé", 4), "ééé…");
        assert_eq!(fit("ab&amp;cd", 5), "ab…");
        assert_eq!(fit("ab&amp;cd", 8), "ab&amp;…");
        assert_eq!(fit("anything", 0), "…");
    }

    #[test]
    fn every_text_fits_slack_limits() {
        let long = message(&"é&".repeat(4000));
        let body = single(&long);
        for b in body["blocks"].as_array().unwrap() {
            if let Some(t) = b["text"]["text"].as_str() {
                assert!(t.chars().count() <= SECTION_CHARS);
            }
            for f in b["fields"].as_array().into_iter().flatten() {
                assert!(f["text"].as_str().unwrap().chars().count() <= FIELD_CHARS);
            }
            for e in b["elements"].as_array().into_iter().flatten() {
                assert!(e["text"].as_str().unwrap().chars().count() <= SECTION_CHARS);
            }
        }
        assert!(body["text"].as_str().unwrap().chars().count() <= TEXT_CHARS);
    }

    #[test]
    fn groups_cover_every_message_within_fifty_blocks() {
        for (n, len) in [(1, 10), (100, 50), (120, 1400), (200, 5000), (7, 2990)] {
            let messages: Vec<Message> = (0..n).map(|i| message(&format!("{i}{}", "x".repeat(len)))).collect();
            let groups = groups(&messages);
            assert_eq!(groups.iter().sum::<usize>(), n, "{n} messages of {len}");
            let mut at = 0;
            for g in groups {
                let body = if g == 1 {
                    single(&messages[at])
                } else {
                    digest(&messages[at..at + g])
                };
                let blocks = body["blocks"].as_array().unwrap();
                assert!(blocks.len() <= MAX_BLOCKS, "{} blocks", blocks.len());
                for b in blocks.iter().filter(|b| b["type"] == "section") {
                    if let Some(t) = b["text"]["text"].as_str() {
                        assert!(t.chars().count() <= SECTION_CHARS);
                    }
                }
                at += g;
            }
        }
    }
}
