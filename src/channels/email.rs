//! Email over SMTP (lettre): multipart plain text + HTML, one mail per event or one digest,
//! sent to each recipient in a transaction of its own, so that one refused address never stops
//! the mail to the others. Each recipient gets only the events it does not have yet: a recipient
//! deferred with a 4xx is retried alone, and when the retry carries newer events too, the others
//! get just those. The Message-ID comes from the event ids of the mail: the same mail on every
//! retry, so mail clients and people can tell a repeat.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::detect::live_migration::ended_badly;
use crate::report::{LiveMigrationLine, Report};
use crate::text::human_secs;
use anyhow::Context as _;
use lettre::address::Envelope;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use sha2::{Digest as _, Sha256};

use super::relay::{Failed, Relay};
use super::{SendError, Sent};
use crate::config::{self, TlsMode, parse_smtp_url};
use crate::message::Message;

/// Past this many events remembered, the oldest events' progress is forgotten (the cost: a
/// repeat of those events to some recipients). Progress leaves when its event's delivery ends
/// ([`Progress::forget`]), so only events still pending count; the bound is a last resort.
const REMEMBERED_EVENTS: usize = 10_000;

/// For events whose mail reached some recipients but not all yet: event id -> recipient ->
/// `None` (accepted) or the server's refusal. A retry sends each recipient only what it lacks.
/// Shared, so that it outlives the channel across a reload. An event's progress is kept until the
/// dispatcher says its delivery ended (sent, failed or given up), whatever the answer to one
/// send: a digest refused by every recipient is halved, and the halves go only to whoever still
/// lacks their events.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<Mutex<Answers>>);

/// Who has which event, and in which order the events were first remembered.
#[derive(Debug, Default)]
struct Answers {
    /// Event id -> (its place in `order`, recipient -> `None` or the refusal).
    events: HashMap<String, (u64, BTreeMap<String, Option<String>>)>,
    /// Place -> event id, oldest first: what goes first past [`REMEMBERED_EVENTS`].
    order: BTreeMap<u64, String>,
    next: u64,
}

impl Progress {
    /// How many events' progress is kept.
    pub fn len(&self) -> usize {
        self.lock().events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the progress of these events: their deliveries ended.
    pub fn forget<'a>(&self, events: impl IntoIterator<Item = &'a str>) {
        let mut all = self.lock();
        for e in events {
            if let Some((place, _)) = all.events.remove(e) {
                all.order.remove(&place);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Answers> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Email {
    relay: Relay,
    from: Mailbox,
    to: Vec<Mailbox>,
    done: Progress,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Email {
    pub fn new(settings: &config::EmailConfig, timeout: Duration) -> anyhow::Result<Email> {
        let target = parse_smtp_url(settings.smtp_url.expose()).map_err(anyhow::Error::msg)?;
        let mut tls = TlsParameters::builder(target.host.clone());
        if let Some(ca) = &settings.ca_file {
            tls = tls.add_root_certificate(read_ca(ca)?);
        }
        let tls = tls.build_rustls().context("cannot set up TLS for SMTP")?;
        let tls = match target.tls {
            TlsMode::None => Tls::None,
            TlsMode::Opportunistic => Tls::Opportunistic(tls),
            TlsMode::Required => Tls::Required(tls),
            TlsMode::Wrapper => Tls::Wrapper(tls),
        };
        let credentials = match (&settings.username, &settings.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.expose().to_owned())),
            _ => target.credentials,
        };
        let relay = Relay {
            host: target.host,
            port: target.port,
            tls,
            credentials: credentials.map(|(user, pass)| Credentials::new(user, pass)),
            timeout,
            hello: ClientId::default(),
        };
        Ok(Email {
            relay,
            from: Mailbox::from_str(&settings.from).context("from")?,
            to: settings
                .to
                .iter()
                .map(|t| Mailbox::from_str(t))
                .collect::<Result<_, _>>()
                .context("to")?,
            done: Progress::default(),
        })
    }

    /// Keeps who has which event in `progress` (shared with the channel this one replaces).
    pub fn remember_in(&mut self, progress: &Progress) {
        self.done = progress.clone();
    }

    /// Sends each recipient in turn the mail of the events it does not have yet (all of them,
    /// unless an earlier try reached it). Delivered when every recipient accepted or refused for
    /// good every event (the refusals are the returned note); a recipient that failed for now is
    /// retried; an event refused by every recipient failed, and with it this send.
    ///
    /// Per recipient rather than one fixed mail for the group: the dispatcher may retry a group
    /// with newer events added, or split it once past the hold, and whatever the grouping, no
    /// recipient gets an event twice.
    pub async fn send(&self, messages: &[Message]) -> Result<Sent, SendError> {
        let events: Vec<&str> = messages.iter().map(|m| m.event_id.as_str()).collect();
        // The mail of each set of events, composed once for every recipient that lacks that set.
        let mut mails: HashMap<Vec<usize>, Vec<u8>> = HashMap::new();
        let (mut waiting, mut error, mut broken) = (Vec::new(), None::<String>, false);
        for to in &self.to {
            let rcpt = to.email.to_string();
            let lacking = self.lacking(&events, &rcpt);
            if lacking.is_empty() {
                continue;
            }
            // After a failure of the connection itself the others would fail the same way.
            if broken {
                waiting.push(rcpt);
                continue;
            }
            let these: Vec<&str> = lacking.iter().map(|i| events[*i]).collect();
            let bytes = match mails.entry(lacking) {
                Entry::Occupied(mail) => mail.into_mut(),
                Entry::Vacant(slot) => {
                    let subset: Vec<Message> = slot.key().iter().map(|i| messages[*i].clone()).collect();
                    let email = self
                        .compose(&subset)
                        .map_err(|e| SendError::Permanent(format!("cannot compose the mail: {e}")))?;
                    slot.insert(email.formatted())
                }
            };
            let envelope = Envelope::new(Some(self.from.email.clone()), vec![to.email.clone()])
                .map_err(|e| SendError::Permanent(format!("SMTP envelope for {rcpt}: {e}")))?;
            match self.relay.send(&envelope, bytes).await {
                Ok(()) => self.remember(&these, &rcpt, None),
                // 5xx: this server refuses this recipient (or this mail) for good.
                Err(Failed::Refused(e)) => self.remember(&these, &rcpt, Some(e)),
                Err(Failed::Client(e)) => return Err(SendError::Permanent(format!("SMTP: {e}"))),
                // A 4xx concerns this recipient; anything else (connection, TLS, the login, no
                // answer in time) the server, and the others would meet it too.
                Err(Failed::Deferred(e)) => {
                    error.get_or_insert(e);
                    waiting.push(rcpt);
                }
                Err(Failed::Relay(e)) => {
                    broken = true;
                    error.get_or_insert(e);
                    waiting.push(rcpt);
                }
            }
        }
        if !waiting.is_empty() {
            return Err(SendError::Transient {
                error: format!(
                    "SMTP: {} (not yet delivered to {})",
                    error.unwrap_or_default(),
                    waiting.join(", ")
                ),
                retry_after: None,
                rate_limited: false,
            });
        }
        self.conclude(&events)
    }

    /// The positions in `events` of those whose mail has not reached `rcpt` yet (nor was refused
    /// for good).
    fn lacking(&self, events: &[&str], rcpt: &str) -> Vec<usize> {
        let done = self.done.lock();
        (0..events.len())
            .filter(|i| !done.events.get(events[*i]).is_some_and(|(_, r)| r.contains_key(rcpt)))
            .collect()
    }

    fn remember(&self, events: &[&str], rcpt: &str, refusal: Option<String>) {
        let mut done = self.done.lock();
        let done = &mut *done;
        for e in events {
            if !done.events.contains_key(*e) {
                // Room for it: the oldest events go first.
                while done.events.len() >= REMEMBERED_EVENTS {
                    let Some((_, oldest)) = done.order.pop_first() else {
                        break;
                    };
                    done.events.remove(&oldest);
                }
                let place = done.next;
                done.next = done.next.saturating_add(1);
                done.order.insert(place, (*e).to_owned());
                done.events.insert((*e).to_owned(), (place, BTreeMap::new()));
            }
            if let Some((_, answers)) = done.events.get_mut(*e) {
                answers.insert(rcpt.to_owned(), refusal.clone());
            }
        }
    }

    /// Every recipient has answered for good: the outcome, decided per event. An event fails
    /// only if every recipient refused it; the mail fails if one of its events did (the
    /// dispatcher then halves it, and nobody gets an event again: the progress stays until the
    /// dispatcher forgets it). Refusals of events that reached someone are the returned note.
    fn conclude(&self, events: &[&str]) -> Result<Sent, SendError> {
        let done = self.done.lock();
        let (mut refused_by_all, mut refusals) = (Vec::new(), BTreeMap::<&str, &str>::new());
        for e in events {
            let answers = done.events.get(*e).map(|(_, a)| a);
            let refused: Vec<(&str, &str)> = answers
                .into_iter()
                .flatten()
                .filter_map(|(rcpt, r)| r.as_deref().map(|r| (rcpt.as_str(), r)))
                .collect();
            let accepted = answers.is_some_and(|a| a.values().any(Option::is_none));
            if !refused.is_empty() && !accepted {
                let why: Vec<String> = refused.iter().map(|(rcpt, r)| format!("{rcpt} ({r})")).collect();
                refused_by_all.push(format!("{e}: {}", why.join("; ")));
            } else {
                refusals.extend(refused);
            }
        }
        if !refused_by_all.is_empty() {
            return Err(SendError::Permanent(format!(
                "SMTP server refused every recipient of {}",
                refused_by_all.join("; of ")
            )));
        }
        if refusals.is_empty() {
            Ok(None)
        } else {
            let refused: Vec<String> = refusals.iter().map(|(rcpt, r)| format!("{rcpt} ({r})")).collect();
            Ok(Some(format!("delivered, but refused for {}", refused.join("; "))))
        }
    }

    /// Forgets who has these events (their deliveries ended).
    pub fn forget(&self, events: &[&str]) {
        self.done.forget(events.iter().copied());
    }

    fn compose(&self, messages: &[Message]) -> Result<lettre::Message, lettre::error::Error> {
        let (subject, text, html) = render(messages);
        let mut builder = lettre::Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(message_id(messages, self.from.email.domain())));
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        builder.multipart(
            MultiPart::alternative()
                .singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(text))
                .singlepart(SinglePart::builder().header(ContentType::TEXT_HTML).body(html)),
        )
    }
}

/// `<evt_….linkwatch@domain>` for one event; for a digest, a hash of its event ids.
fn message_id(messages: &[Message], domain: &str) -> String {
    match messages {
        [one] => format!("<{}.linkwatch@{domain}>", one.event_id),
        many => {
            let mut hash = Sha256::new();
            for m in many {
                hash.update(m.event_id.as_bytes());
                hash.update(b"\n");
            }
            let hex: String = hash.finalize()[..12].iter().map(|b| format!("{b:02x}")).collect();
            format!("<digest.{hex}.linkwatch@{domain}>")
        }
    }
}

fn read_ca(path: &Path) -> anyhow::Result<Certificate> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read ca_file {}", path.display()))?;
    Certificate::from_pem(&pem).with_context(|| format!("ca_file {} is not a PEM certificate", path.display()))
}

/// Subject, plain text and HTML for one event or a digest of several.
pub fn render(messages: &[Message]) -> (String, String, String) {
    if let [one] = messages
        && let Some(report) = Report::of(one)
    {
        return render_report(&report);
    }
    let subject = match messages {
        [one] => format!("[linkwatch] {}", one.title),
        many => {
            let mut orgs: Vec<&str> = many.iter().map(|m| m.org_name.as_str()).collect();
            orgs.dedup();
            let shown: Vec<&str> = orgs.iter().take(3).copied().collect();
            let more = if orgs.len() > 3 {
                format!(" and {} more", orgs.len() - 3)
            } else {
                String::new()
            };
            format!("[linkwatch] {} events: {}{more}", many.len(), shown.join(", "))
        }
    };
    let mut text = String::new();
    let mut html = String::from(BODY);
    for m in messages {
        text.push_str(&format!("{}\n  org: {} ({})\n", m.title, m.org_name, m.org_id));
        if let Some((from, to)) = change(m) {
            text.push_str(&format!("  status: {from} -> {to}\n"));
        }
        text.push_str(&format!("  time: {}\n", m.when()));
        if let Some(a) = &m.advice {
            text.push_str(&format!("  {a}\n"));
        }
        for l in &m.links {
            text.push_str(&format!("  {}: {}\n", l.label, l.url));
        }
        text.push('\n');
        html.push_str(&card(m));
    }
    text.push_str("-- \nlinkwatch\n");
    html.push_str("<p style=\"color:#777;font-size:.9em\">linkwatch</p>\n</body></html>\n");
    (subject, text, html)
}

/// The status an event moved from and to, when it is a change.
fn change(m: &Message) -> Option<(&str, &str)> {
    Some((m.data.get("from")?.as_str()?, m.data.get("to")?.as_str()?))
}

/// The status page's colours: green for SYNCED and recoveries, orange for a link that left
/// SYNCED, red for failing checks and failed migrations, amber for the rest.
fn colour(m: &Message) -> (&'static str, &'static str) {
    let to = m
        .data
        .get("to")
        .and_then(|v| v.as_str())
        .or_else(|| m.data.get("status").and_then(|v| v.as_str()));
    match (m.kind.as_str(), change(m), to) {
        ("check_failing", _, _) => RED,
        ("check_recovered", _, _) => GREEN,
        (_, _, Some(s)) if ended_badly(s) => RED,
        (_, _, Some("SYNCED" | "COMPLETE")) => GREEN,
        (_, Some(("SYNCED", _)), _) => ORANGE,
        _ => AMBER,
    }
}

/// One event as a short table under a band of its status's colour.
fn card(m: &Message) -> String {
    let (background, foreground) = colour(m);
    let row = |k: &str, v: String| {
        format!(
            "<tr><td style=\"padding:4px 12px;color:#555;vertical-align:top\">{k}</td>\
             <td style=\"padding:4px 12px\">{v}</td></tr>\n"
        )
    };
    let mut h = format!(
        "<table style=\"{TABLE}\">\n\
         <tr><td colspan=\"2\" style=\"padding:8px 12px;background:{background};color:{foreground};font-weight:600\">{}</td></tr>\n",
        escape(&m.title)
    );
    h.push_str(&row(
        "Org",
        format!("{} <code>{}</code>", escape(&m.org_name), escape(&m.org_id)),
    ));
    if let Some((from, to)) = change(m) {
        h.push_str(&row(
            "Status",
            format!("{} &rarr; <strong>{}</strong>", escape(from), escape(to)),
        ));
        if let Some(s) = m.data.get("from_lasted_s").and_then(|v| v.as_i64()) {
            h.push_str(&row(&format!("{} lasted", escape(from)), crate::text::human_secs(s)));
        }
    }
    h.push_str(&row("When", escape(&m.when())));
    if let Some(a) = &m.advice {
        h.push_str(&row("What to do", escape(a)));
    }
    if !m.links.is_empty() {
        let links: Vec<String> = m
            .links
            .iter()
            .map(|l| format!("<a href=\"{}\">{}</a>", escape(&l.url), l.label))
            .collect();
        h.push_str(&row("Open", links.join(" &middot; ")));
    }
    h.push_str("</table>\n");
    h
}

/// Subject, plain text and HTML of a scheduled report: a band of the colour of the worst news in
/// it, then one short table per section, each status in its colour, as on the page.
pub fn render_report(r: &Report) -> (String, String, String) {
    let subject = format!("[linkwatch] {}", r.title());
    let text = format!("{}\n-- \nlinkwatch\n", r.text());
    let mut html = String::from(BODY);
    report_summary(&mut html, r);
    report_sections(&mut html, r);
    if let Some(note) = r.live_migrations_note() {
        html.push_str(&format!("<p style=\"color:#555\">{}</p>\n", escape(note)));
    }
    html.push_str(&format!(
        "<p style=\"color:#777;font-size:.9em\">As of {}. linkwatch</p>\n</body></html>\n",
        escape(&r.shown(&r.generated_at))
    ));
    (subject, text, html)
}

/// A live migration that failed, or whose checks are failing: red, as on the page.
fn failed(m: &LiveMigrationLine) -> bool {
    m.status.as_deref().is_some_and(ended_badly) || m.failing.is_some()
}

/// The title under a band of the worst news's colour (red: checks failing, or a migration
/// failed or failing to be checked; amber: links not SYNCED; green: all well), then how many links are SYNCED.
fn report_summary(html: &mut String, r: &Report) {
    let (background, foreground) = if !r.failing.is_empty() || r.migrations.iter().any(failed) {
        RED
    } else if !r.not_synced.is_empty() {
        AMBER
    } else {
        GREEN
    };
    html.push_str(&format!(
        "<table style=\"{TABLE}\">\n<tr><td colspan=\"2\" style=\"padding:8px 12px;background:{background};\
         color:{foreground};font-weight:600\">{}</td></tr>\n",
        escape(&r.title())
    ));
    if let Some(note) = r.late_note() {
        html.push_str(&format!(
            "<tr><td colspan=\"2\" style=\"padding:4px 12px;color:#555\">{}</td></tr>\n",
            escape(&note)
        ));
    }
    html.push_str(&cells(&["SYNCED".into(), format!("{} of {}", r.synced, r.orgs)], None));
    html.push_str("</table>\n");
}

/// The links not SYNCED, the failing checks and the live migrations, a table each.
fn report_sections(html: &mut String, r: &Report) {
    let not_synced = r.not_synced.iter().map(|n| {
        let status = n.status.as_deref().unwrap_or("no successful check yet");
        let shown = [
            escape(&n.org_name),
            escape(status),
            n.for_s.map(human_secs).unwrap_or_default(),
        ];
        (shown, Some(AMBER.0))
    });
    section(
        html,
        "Not SYNCED (longest first)",
        &["Org", "Status", "For"],
        not_synced,
    );
    let failing = r.failing.iter().map(|f| {
        let shown = [escape(&f.org_name), f.failures.to_string(), escape(&f.reason)];
        (shown, Some(RED.0))
    });
    section(html, "Checks failing", &["Org", "Failed in a row", "Why"], failing);
    let migrations = r.migrations.iter().map(|m| {
        let colour = match (failed(m), m.ready_for_cutover) {
            (true, _) => RED.0,
            (false, true) => BLUE,
            (false, false) => AMBER.0,
        };
        let shown = [escape(&m.name), escape(&m.org_name), escape(&r.where_it_stands(m))];
        (shown, Some(colour))
    });
    let header = ["Migration", "Org", "Where it stands"];
    section(html, "Live migrations (ready for cutover first)", &header, migrations);
}

/// The page's colours (background, text) for the bands.
const GREEN: (&str, &str) = ("#2e7d32", "#fff");
const RED: (&str, &str) = ("#c62828", "#fff");
const ORANGE: (&str, &str) = ("#ef6c00", "#fff");
const AMBER: (&str, &str) = ("#f9a825", "#222");
/// The page's "ready for cutover".
const BLUE: &str = "#1565c0";
const BODY: &str = "<html><body style=\"font-family:system-ui,sans-serif;color:#222\">\n";
const TABLE: &str = "border-collapse:collapse;margin:0 0 18px;border:1px solid #e0e0e0;min-width:24em";

/// One row of already escaped cells; `mark`, a colour for the left edge of the row.
fn cells(values: &[String], mark: Option<&str>) -> String {
    let mut row = String::from("<tr>");
    for (i, v) in values.iter().enumerate() {
        let edge = match (i, mark) {
            (0, Some(c)) => format!("border-left:4px solid {c};"),
            _ => String::new(),
        };
        row.push_str(&format!(
            "<td style=\"{edge}padding:4px 12px;vertical-align:top\">{v}</td>"
        ));
    }
    row.push_str("</tr>\n");
    row
}

/// A report's section as a table under its heading; nothing when it has no rows.
fn section<'a, const N: usize>(
    html: &mut String,
    heading: &str,
    header: &[&str; N],
    rows: impl Iterator<Item = ([String; N], Option<&'a str>)>,
) {
    let mut rows = rows.peekable();
    if rows.peek().is_none() {
        return;
    }
    html.push_str(&format!(
        "<p style=\"font-weight:600;margin:12px 0 4px\">{heading}</p>\n<table style=\"{TABLE}\">\n<tr>"
    ));
    for h in header {
        html.push_str(&format!(
            "<th style=\"text-align:left;padding:4px 12px;color:#555\">{h}</th>"
        ));
    }
    html.push_str("</tr>\n");
    for (values, mark) in rows {
        html.push_str(&cells(&values, mark));
    }
    html.push_str("</table>\n");
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    /// A report whose links are all SYNCED but whose one live migration cannot be checked, sent
    /// late: the band is red (the page's colour for failing checks), and the late note spans
    /// the table.
    #[test]
    fn a_report_with_a_migration_failing_to_be_checked_is_red() {
        let report = Report {
            name: "daily".into(),
            timezone: None,
            slot: "2026-12-05T09:00:00.000Z".into(),
            generated_at: "2026-12-05T09:20:00.000Z".into(),
            late: true,
            orgs: 1,
            synced: 1,
            not_synced: Vec::new(),
            failing: Vec::new(),
            migrations: vec![LiveMigrationLine {
                name: "payments-rs0".into(),
                org_name: "payments".into(),
                status: Some("WORKING".into()),
                ready_for_cutover: false,
                estimated_deadline: None,
                left_s: None,
                lag_s: None,
                failing: Some("Atlas refused the key".into()),
            }],
        };
        let (_, _, html) = render_report(&report);
        assert!(html.contains(&format!("background:{}", RED.0)), "{html}");
        assert!(html.contains(&format!("border-left:4px solid {}", RED.0)), "{html}");
        assert!(
            html.contains("<td colspan=\"2\" style=\"padding:4px 12px;color:#555\">"),
            "{html}"
        );
    }

    fn email() -> Email {
        let settings = config::EmailConfig {
            smtp_url: Secret::new("smtp://127.0.0.1:25"),
            username: None,
            password: None,
            ca_file: None,
            from: "linkwatch@example.com".into(),
            to: vec!["dba@example.com".into()],
        };
        Email::new(&settings, Duration::from_secs(5)).unwrap()
    }

    // A tokio runtime: lettre's transport is built on one.
    /// Past the bound, the oldest events' progress goes, not everyone's: a recipient that has a
    /// recent event does not get it again.
    #[tokio::test]
    async fn past_the_bound_the_oldest_progress_is_forgotten_first() {
        let e = email();
        let ids: Vec<String> = (0..REMEMBERED_EVENTS + 2).map(|i| format!("evt_{i}")).collect();
        for id in &ids {
            e.remember(&[id.as_str()], "dba@example.com", None);
        }
        let has = |id: &str| e.lacking(&[id], "dba@example.com").is_empty();
        assert!(!has(&ids[0]), "the oldest is forgotten");
        assert!(has(&ids[REMEMBERED_EVENTS]), "a recent one was forgotten too");
        assert!(has(&ids[REMEMBERED_EVENTS + 1]));
    }
}
