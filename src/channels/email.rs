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

use anyhow::Context as _;
use lettre::address::Envelope;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use sha2::{Digest as _, Sha256};

use super::{SendError, Sent};
use crate::config::{self, TlsMode, parse_smtp_url};
use crate::message::Message;

/// Past this many events remembered, the memory of who already has which mail is dropped (the
/// cost: a repeat to some recipients).
const REMEMBERED_EVENTS: usize = 10_000;

/// For events whose mail reached some recipients but not all yet: event id -> recipient ->
/// `None` (accepted) or the server's refusal. A retry sends each recipient only what it lacks.
/// Shared, so that it outlives the channel across a reload.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<Mutex<Answers>>);

/// Event id -> recipient -> `None` (accepted) or the server's refusal.
type Answers = HashMap<String, BTreeMap<String, Option<String>>>;

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, Answers> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
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
    pub fn new(settings: &config::Email, timeout: Duration) -> anyhow::Result<Email> {
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
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(target.host)
            .port(target.port)
            .tls(tls)
            .timeout(Some(timeout));
        let credentials = match (&settings.username, &settings.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.expose().to_owned())),
            _ => target.credentials,
        };
        if let Some((user, pass)) = credentials {
            builder = builder.credentials(Credentials::new(user, pass));
        }
        Ok(Email {
            transport: builder.build(),
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
    /// retried; refused by all, it failed.
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
            match self.transport.send_raw(&envelope, bytes).await {
                Ok(_) => self.remember(&these, &rcpt, None),
                // 5xx: this server refuses this recipient (or this mail) for good.
                Err(e) if e.is_permanent() => self.remember(&these, &rcpt, Some(e.to_string())),
                // lettre refused to send it at all (e.g. 8-bit text to a 7-bit server).
                Err(e) if e.is_client() => return Err(SendError::Permanent(format!("SMTP: {e}"))),
                Err(e) => {
                    // A 4xx concerns this recipient; anything else (connection, TLS, timeout)
                    // the server.
                    broken = !e.is_transient();
                    error.get_or_insert_with(|| e.to_string());
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
            });
        }
        self.conclude(&events)
    }

    /// The positions in `events` of those whose mail has not reached `rcpt` yet (nor was refused
    /// for good).
    fn lacking(&self, events: &[&str], rcpt: &str) -> Vec<usize> {
        let done = self.done.lock();
        (0..events.len())
            .filter(|i| !done.get(events[*i]).is_some_and(|r| r.contains_key(rcpt)))
            .collect()
    }

    fn remember(&self, events: &[&str], rcpt: &str, refusal: Option<String>) {
        let mut done = self.done.lock();
        if done.len() > REMEMBERED_EVENTS {
            done.clear();
        }
        for e in events {
            done.entry((*e).to_owned())
                .or_default()
                .insert(rcpt.to_owned(), refusal.clone());
        }
    }

    /// Every recipient has answered for good: the outcome, and the events forgotten.
    fn conclude(&self, events: &[&str]) -> Result<Sent, SendError> {
        let mut done = self.done.lock();
        let mut answers: BTreeMap<String, Option<String>> = BTreeMap::new();
        for e in events {
            for (rcpt, refusal) in done.remove(*e).unwrap_or_default() {
                let entry = answers.entry(rcpt).or_default();
                if entry.is_none() {
                    *entry = refusal;
                }
            }
        }
        let refused: Vec<String> = answers
            .iter()
            .filter_map(|(rcpt, r)| r.as_ref().map(|r| format!("{rcpt} ({r})")))
            .collect();
        if refused.is_empty() {
            Ok(None)
        } else if refused.len() == answers.len() {
            Err(SendError::Permanent(format!(
                "SMTP server refused every recipient: {}",
                refused.join("; ")
            )))
        } else {
            Ok(Some(format!("delivered, but refused for {}", refused.join("; "))))
        }
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
    let mut html = String::from("<html><body style=\"font-family: sans-serif\">\n");
    for m in messages {
        text.push_str(&format!(
            "{}\n  org: {} ({})\n  time: {} UTC\n",
            m.title, m.org_name, m.org_id, m.at
        ));
        if let Some(a) = &m.advice {
            text.push_str(&format!("  {a}\n"));
        }
        text.push('\n');
        html.push_str(&format!(
            "<p><strong>{}</strong><br>org: {} (<code>{}</code>)<br>time: {} UTC",
            escape(&m.title),
            escape(&m.org_name),
            escape(&m.org_id),
            escape(&m.at)
        ));
        if let Some(a) = &m.advice {
            html.push_str(&format!("<br><em>{}</em>", escape(a)));
        }
        html.push_str("</p>\n");
    }
    text.push_str("-- \nlinkwatch\n");
    html.push_str("<p style=\"color:#888\">linkwatch</p>\n</body></html>\n");
    (subject, text, html)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
