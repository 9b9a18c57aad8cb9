//! lettre's SMTP URL form (`smtp://user:pass@host:587?tls=required`), parsed once for validation
//! and again by the email channel.

use reqwest::Url;

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
