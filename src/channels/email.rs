//! Email over SMTP (lettre): multipart plain text + HTML, one mail per event or one digest.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::SendError;
use crate::config::{self, TlsMode, parse_smtp_url};
use crate::message::Message;

pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
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
        })
    }

    pub async fn send(&self, messages: &[Message]) -> Result<(), SendError> {
        let email = self
            .compose(messages)
            .map_err(|e| SendError::Permanent(format!("cannot compose the mail: {e}")))?;
        match self.transport.send(email).await {
            Ok(_) => Ok(()),
            // 5xx: the server refuses this mail for good (bad recipient, relay denied).
            Err(e) if e.is_permanent() => Err(SendError::Permanent(format!("SMTP server refused: {e}"))),
            Err(e) => Err(SendError::Transient {
                error: format!("SMTP: {e}"),
                retry_after: None,
            }),
        }
    }

    fn compose(&self, messages: &[Message]) -> Result<lettre::Message, lettre::error::Error> {
        let (subject, text, html) = render(messages);
        let mut builder = lettre::Message::builder().from(self.from.clone()).subject(subject);
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
