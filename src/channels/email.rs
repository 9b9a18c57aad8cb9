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
use reqwest::Url;

use super::SendError;
use crate::config;
use crate::message::Message;

/// How the connection is secured, from lettre's URL form.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TlsMode {
    /// `smtp://host` : plain text.
    None,
    /// `smtp://host?tls=opportunistic`: STARTTLS when offered.
    Opportunistic,
    /// `smtp://host?tls=required`: STARTTLS or fail.
    Required,
    /// `smtps://host`: TLS from the first byte.
    Wrapper,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// `smtp://user:pass@host`, percent-decoded.
    pub credentials: Option<(String, String)>,
}

/// Parses lettre's URL form; errors never repeat the URL, which may carry a password.
pub fn parse_smtp_url(text: &str) -> Result<SmtpTarget, String> {
    let url = Url::parse(text)
        .map_err(|e| format!("not a URL ({e}); write e.g. smtp://mail.example.com:587?tls=required"))?;
    let host = url
        .host_str()
        .ok_or("the URL has no host")?
        .trim_matches(['[', ']'])
        .to_owned();
    let tls_query = url.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v.into_owned());
    let tls = match (url.scheme(), tls_query.as_deref()) {
        ("smtps", None) => TlsMode::Wrapper,
        ("smtp", None) => TlsMode::None,
        ("smtp", Some("required")) => TlsMode::Required,
        ("smtp", Some("opportunistic")) => TlsMode::Opportunistic,
        ("smtp", Some(other)) => {
            return Err(format!("tls={other} is not one of required, opportunistic"));
        }
        ("smtps", Some(_)) => return Err("smtps:// is always TLS; drop the tls= parameter".into()),
        (other, _) => return Err(format!("the scheme {other}:// is not smtp:// or smtps://")),
    };
    let port = url.port().unwrap_or(match tls {
        TlsMode::Wrapper => 465,
        TlsMode::Required => 587,
        _ => 25,
    });
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    let credentials =
        (!url.username().is_empty()).then(|| (decode(url.username()), decode(url.password().unwrap_or(""))));
    Ok(SmtpTarget {
        host,
        port,
        tls,
        credentials,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_in_lettre_form() {
        let t = parse_smtp_url("smtp://mail.example.com:587?tls=required").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.tls),
            ("mail.example.com", 587, TlsMode::Required)
        );
        assert_eq!(parse_smtp_url("smtps://mail.example.com").unwrap().port, 465);
        assert_eq!(parse_smtp_url("smtp://relay").unwrap().tls, TlsMode::None);
        let t = parse_smtp_url("smtp://user%40x:p%40ss@relay:2525").unwrap();
        assert_eq!(t.credentials, Some(("user@x".into(), "p@ss".into())));
        let e = parse_smtp_url("smtp://user:hunter2@relay?tls=always").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(parse_smtp_url("http://relay").is_err());
    }
}
