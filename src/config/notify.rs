//! `[[channel]]` and `[[route]]`: validated against each other and against the orgs.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use reqwest::Url;
use toml::Spanned;

use super::raw::{self, ChannelKind as RawKind};
use super::{ConfigError, EventKind, Locator, Org, OrgId, TlsMode, resolve_path, resolve_secret};
use crate::secret::Secret;

#[derive(Debug, Clone)]
pub struct ChannelConfig {
    pub name: String,
    pub kind: ChannelKind,
    /// The longest one send may take.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChannelKind {
    Console,
    /// A Slack incoming webhook; the URL is the credential.
    Slack {
        webhook_url: Secret,
    },
    Email(EmailConfig),
    Webhook {
        url: Url,
        secret: Option<WebhookSecret>,
    },
}

impl ChannelKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ChannelKind::Console => "console",
            ChannelKind::Slack { .. } => "slack",
            ChannelKind::Email(_) => "email",
            ChannelKind::Webhook { .. } => "webhook",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmailConfig {
    /// lettre's URL form; may carry credentials, so it is a secret.
    pub smtp_url: Secret,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Extra trusted CA for relays with a private CA.
    pub ca_file: Option<PathBuf>,
    pub from: String,
    pub to: Vec<String>,
}

/// A Standard Webhooks signing key (`whsec_` + base64), decoded.
#[derive(Clone, PartialEq)]
pub struct WebhookSecret(pub Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Which events go to which channels.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub channels: Vec<String>,
    /// `None`: every kind.
    pub events: Option<Vec<EventKind>>,
    /// `None`: any new status. Events without a status (failing, recovered) never match a `to`;
    /// `migration_status_changed` carries the migration's new status, and
    /// `link_broken_during_migration` the link's.
    pub to: Option<Vec<String>>,
    /// `None`: every org.
    pub orgs: Option<Vec<OrgId>>,
    pub remind_every: Option<Duration>,
}

/// The longest one send may take: no receiver needs longer to accept a message, and a send
/// still running holds its channel (a reload's new worker waits for it, so that nothing it
/// delivers is sent again).
const MAX_SEND: Duration = Duration::from_secs(300);

/// The `[[channel]]` tables; one with a mistake is reported and left out.
pub(super) fn channels(raw: Vec<raw::Channel>, loc: &Locator<'_>) -> Vec<ChannelConfig> {
    let mut channels: Vec<ChannelConfig> = Vec::new();
    for (i, c) in raw.into_iter().enumerate() {
        let name = c.name.get_ref().trim().to_owned();
        match channel(&c, i, &channels, loc) {
            Ok(channel) => channels.push(channel),
            Err(e) => {
                loc.report(e);
                loc.broken(&name);
            }
        }
    }
    channels
}

fn channel(
    c: &raw::Channel,
    i: usize,
    channels: &[ChannelConfig],
    loc: &Locator<'_>,
) -> Result<ChannelConfig, ConfigError> {
    let table = format!("channel[{i}]");
    let name = c.name.get_ref().trim().to_owned();
    if name.is_empty() {
        return Err(loc.error(
            c.name.span().start,
            &format!("{table}.name"),
            "must not be empty".into(),
        ));
    }
    if channels.iter().any(|x| x.name == name) {
        return Err(loc.error(
            c.name.span().start,
            &format!("{table}.name"),
            format!("channel name \"{name}\" is used twice; names must be unique"),
        ));
    }
    let kind = *c.kind.get_ref();
    reject_foreign_keys(c, kind, &table, loc)?;
    let kind = match kind {
        RawKind::Console => ChannelKind::Console,
        RawKind::Slack => slack(c, &table, loc)?,
        RawKind::Email => email(c, &table, loc)?,
        RawKind::Webhook => webhook(c, &table, loc)?,
    };
    let timeout = match &c.timeout {
        None => Duration::from_secs(10),
        Some(t) if t.get_ref().0.is_zero() || t.get_ref().0 > MAX_SEND => {
            return Err(loc.error(
                t.span().start,
                &format!("{table}.timeout"),
                "must be more than 0s and at most 5m".into(),
            ));
        }
        Some(t) => t.get_ref().0,
    };
    Ok(ChannelConfig { name, kind, timeout })
}

/// `value` of `key`, which a channel of `c`'s kind must have.
fn required<T>(
    value: Option<T>,
    c: &raw::Channel,
    table: &str,
    key: &str,
    loc: &Locator<'_>,
) -> Result<T, ConfigError> {
    value.ok_or_else(|| {
        loc.error(
            c.kind.span().start,
            &format!("{table}.{key}"),
            format!("a {} channel needs `{key}`", kind_name(*c.kind.get_ref())),
        )
    })
}

/// A Slack channel: its webhook URL, a secret, over https.
fn slack(c: &raw::Channel, table: &str, loc: &Locator<'_>) -> Result<ChannelKind, ConfigError> {
    let key = format!("{table}.webhook_url");
    let url = resolve_secret(
        &key,
        c.webhook_url.as_ref(),
        c.webhook_url_file.as_ref(),
        c.webhook_url_env.as_ref(),
        loc,
    )?
    .ok_or_else(|| {
        loc.error(
            c.kind.span().start,
            &key,
            "a slack channel needs `webhook_url` (or _file / _env)".into(),
        )
    })?;
    check_http_url(url.expose())
        .and_then(|u| check_https(&u))
        .map_err(|m| {
            let at = c.webhook_url.as_ref().map_or(c.kind.span().start, |s| s.span().start);
            loc.error(at, &key, m)
        })?;
    Ok(ChannelKind::Slack { webhook_url: url })
}

/// An email channel: the relay (a login only over TLS, but to loopback), sender and recipients.
fn email(c: &raw::Channel, table: &str, loc: &Locator<'_>) -> Result<ChannelKind, ConfigError> {
    let smtp_url = c.smtp_url.as_ref().map(|s| s.get_ref().expose().to_owned());
    let smtp_url = required(smtp_url, c, table, "smtp_url", loc)?;
    let at = c.smtp_url.as_ref().map_or(0, |s| s.span().start);
    let target = super::parse_smtp_url(&smtp_url).map_err(|m| loc.error(at, &format!("{table}.smtp_url"), m))?;
    let password = resolve_secret(
        &format!("{table}.password"),
        c.password.as_ref(),
        c.password_file.as_ref(),
        c.password_env.as_ref(),
        loc,
    )?;
    if password.is_some() != c.username.is_some() {
        return Err(loc.error(
            c.kind.span().start,
            &format!("{table}.username"),
            "set both `username` and a password, or neither".into(),
        ));
    }
    if (c.username.is_some() || target.credentials.is_some())
        && matches!(target.tls, TlsMode::None | TlsMode::Opportunistic)
        && !is_loopback(&target.host)
    {
        // Opportunistic STARTTLS counts as none: whoever strips the STARTTLS offer from the
        // server's greeting reads the password.
        return Err(loc.error(
            at,
            &format!("{table}.smtp_url"),
            "a login (username and password) would cross the network unencrypted: use \
             smtp://host:587?tls=required (STARTTLS) or smtps://host:465 (TLS), or no login"
                .into(),
        ));
    }
    let from = required(c.from.as_ref().map(|f| f.get_ref().clone()), c, table, "from", loc)?;
    check_mailbox(&from).map_err(|m| loc.error(span_of(&c.from), &format!("{table}.from"), m))?;
    let to = required_list(c.to.as_ref(), table, "to", c.kind.span().start, loc)?;
    for addr in &to {
        check_mailbox(addr).map_err(|m| loc.error(span_of(&c.to), &format!("{table}.to"), m))?;
    }
    Ok(ChannelKind::Email(EmailConfig {
        smtp_url: Secret::new(smtp_url),
        username: c.username.as_ref().map(|u| u.get_ref().clone()),
        password,
        ca_file: c.ca_file.as_ref().map(|p| resolve_path(loc.base_dir(), p.get_ref())),
        from,
        to,
    }))
}

/// A webhook channel: its URL and the optional signing secret.
fn webhook(c: &raw::Channel, table: &str, loc: &Locator<'_>) -> Result<ChannelKind, ConfigError> {
    let url_text = required(c.url.as_ref().map(|u| u.get_ref().clone()), c, table, "url", loc)?;
    let url = check_http_url(&url_text).map_err(|m| loc.error(span_of(&c.url), &format!("{table}.url"), m))?;
    let key = format!("{table}.secret");
    let secret = resolve_secret(
        &key,
        c.secret.as_ref(),
        c.secret_file.as_ref(),
        c.secret_env.as_ref(),
        loc,
    )?
    // An unread secret (`Secrets::DatabaseOnly`) is no webhook secret; its form is not checked.
    .map(|s| {
        decode_webhook_secret(if s.expose() == super::UNREAD {
            "whsec_dW5yZWFk"
        } else {
            s.expose()
        })
    })
    .transpose()
    .map_err(|m| {
        loc.error(
            c.secret.as_ref().map_or(c.kind.span().start, |s| s.span().start),
            &key,
            m,
        )
    })?;
    Ok(ChannelKind::Webhook { url, secret })
}

/// The `[[route]]` tables; one with a mistake is reported and left out.
pub(super) fn routes(raw: Vec<raw::Route>, channels: &[ChannelConfig], orgs: &[Org], loc: &Locator<'_>) -> Vec<Route> {
    raw.into_iter()
        .enumerate()
        .filter_map(|(i, r)| loc.keep(route(r, i, channels, orgs, loc)))
        .collect()
}

fn route(
    r: raw::Route,
    i: usize,
    channels: &[ChannelConfig],
    orgs: &[Org],
    loc: &Locator<'_>,
) -> Result<Route, ConfigError> {
    let table = format!("route[{i}]");
    check_channel_names(&r.channels, channels, &table, loc)?;
    let events = route_events(&r, &table, loc)?;
    let to = route_to(&r, events.as_ref(), &table, loc)?;
    let orgs_filter = route_orgs(r.orgs.as_ref(), orgs, &table, loc)?;
    let remind_every = route_remind_every(&r, events.as_ref(), &table, loc)?;
    Ok(Route {
        channels: r.channels.get_ref().iter().map(|c| c.get_ref().clone()).collect(),
        events,
        to,
        orgs: orgs_filter,
        remind_every,
    })
}

/// A route's `events`; an empty list is a mistake, not "every kind".
fn route_events(r: &raw::Route, table: &str, loc: &Locator<'_>) -> Result<Option<Vec<EventKind>>, ConfigError> {
    let events = r.events.as_ref().map(|e| e.get_ref().clone());
    if let Some(e) = &r.events
        && e.get_ref().is_empty()
    {
        return Err(loc.error(
            e.span().start,
            &format!("{table}.events"),
            "an empty list matches nothing; leave `events` out to match every kind".into(),
        ));
    }
    Ok(events)
}

/// A route's `to`: it needs `events` that carry a new status, and at least one status.
fn route_to(
    r: &raw::Route,
    events: Option<&Vec<EventKind>>,
    table: &str,
    loc: &Locator<'_>,
) -> Result<Option<Vec<String>>, ConfigError> {
    let to = r.to.as_ref().map(|t| t.get_ref().clone());
    if let (Some(t), Some(e)) = (&r.to, events)
        && !e.iter().any(|k| {
            matches!(
                k,
                EventKind::FirstSeen
                    | EventKind::StatusChanged
                    | EventKind::Reminder
                    | EventKind::MigrationStatusChanged
                    | EventKind::LinkBrokenDuringMigration
            )
        })
    {
        return Err(loc.error(
            t.span().start,
            &format!("{table}.to"),
            "this route can never match: `to` selects a new status, and none of its `events` carries one".into(),
        ));
    }
    if let Some(t) = &r.to
        && t.get_ref().is_empty()
    {
        return Err(loc.error(
            t.span().start,
            &format!("{table}.to"),
            "an empty list matches nothing".into(),
        ));
    }
    Ok(to)
}

/// A route's `orgs`, by id or name, as ids; a name of an org that was reported is left out.
fn route_orgs(
    list: Option<&Spanned<Vec<Spanned<String>>>>,
    orgs: &[Org],
    table: &str,
    loc: &Locator<'_>,
) -> Result<Option<Vec<OrgId>>, ConfigError> {
    let Some(list) = list else {
        return Ok(None);
    };
    let mut ids = Vec::new();
    for o in list.get_ref() {
        let found = orgs
            .iter()
            .find(|x| x.id.as_str() == o.get_ref() || x.name == *o.get_ref());
        match found {
            Some(org) => ids.push(org.id.clone()),
            // Reported where the org is.
            None if loc.was_reported(o.get_ref()) => {}
            None => {
                return Err(loc.error(
                    o.span().start,
                    &format!("{table}.orgs"),
                    format!(
                        "no [[org]] has the id or name \"{}\"; this route could never match it",
                        o.get_ref()
                    ),
                ));
            }
        }
    }
    Ok(Some(ids))
}

/// A route's `remind_every`: only for events a reminder is about, and at least a minute.
fn route_remind_every(
    r: &raw::Route,
    events: Option<&Vec<EventKind>>,
    table: &str,
    loc: &Locator<'_>,
) -> Result<Option<Duration>, ConfigError> {
    let remind_every = r.remind_every.as_ref().map(|d| d.get_ref().0);
    if let (Some(d), Some(e)) = (&r.remind_every, events)
        && !e.iter().any(|k| {
            matches!(
                k,
                EventKind::StatusChanged | EventKind::CheckFailing | EventKind::Reminder
            )
        })
    {
        return Err(loc.error(
            d.span().start,
            &format!("{table}.remind_every"),
            "reminders are about a broken link (status_changed) or failing checks (check_failing); this route selects neither".into(),
        ));
    }
    if let Some(d) = &r.remind_every
        && d.get_ref().0 < Duration::from_secs(60)
    {
        return Err(loc.error(
            d.span().start,
            &format!("{table}.remind_every"),
            "must be at least 1m".into(),
        ));
    }
    Ok(remind_every)
}

/// `list` (a route's or a report's `channels`) names at least one channel, and only channels
/// that exist.
pub(super) fn check_channel_names(
    list: &Spanned<Vec<Spanned<String>>>,
    channels: &[ChannelConfig],
    table: &str,
    loc: &Locator<'_>,
) -> Result<(), ConfigError> {
    if list.get_ref().is_empty() {
        return Err(loc.error(
            list.span().start,
            &format!("{table}.channels"),
            "names no channel".into(),
        ));
    }
    for c in list.get_ref() {
        // A channel with a mistake of its own is reported where it is.
        if !channels.iter().any(|x| x.name == *c.get_ref()) && !loc.was_reported(c.get_ref()) {
            let mut known: Vec<&str> = channels.iter().map(|x| x.name.as_str()).collect();
            if known.is_empty() {
                known.push("none valid");
            }
            return Err(loc.error(
                c.span().start,
                &format!("{table}.channels"),
                format!(
                    "no channel is named \"{}\" (channels: {})",
                    c.get_ref(),
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn kind_name(kind: RawKind) -> &'static str {
    match kind {
        RawKind::Console => "console",
        RawKind::Slack => "slack",
        RawKind::Email => "email",
        RawKind::Webhook => "webhook",
    }
}

fn span_of<T>(v: &Option<Spanned<T>>) -> usize {
    v.as_ref().map_or(0, |s| s.span().start)
}

/// Where a key is set; `None` when it is not.
fn set_at<T>(v: &Option<Spanned<T>>) -> Option<usize> {
    v.as_ref().map(|s| s.span().start)
}

/// A key set on the wrong kind of channel is a mistake worth reporting, not ignoring.
fn reject_foreign_keys(c: &raw::Channel, kind: RawKind, table: &str, loc: &Locator<'_>) -> Result<(), ConfigError> {
    for (key, at, kinds) in kind_keys(c) {
        if let Some(at) = at
            && !kinds.contains(&kind)
        {
            return Err(loc.error(
                at,
                &format!("{table}.{key}"),
                format!("`{key}` is not a setting of a {} channel", kind_name(kind)),
            ));
        }
    }
    Ok(())
}

/// The keys that belong to one kind of channel: each with where it is set (`None`: not set)
/// and the kinds it belongs to.
fn kind_keys(c: &raw::Channel) -> [(&'static str, Option<usize>, &'static [RawKind]); 15] {
    [
        ("webhook_url", set_at(&c.webhook_url), &[RawKind::Slack]),
        ("webhook_url_file", set_at(&c.webhook_url_file), &[RawKind::Slack]),
        ("webhook_url_env", set_at(&c.webhook_url_env), &[RawKind::Slack]),
        ("smtp_url", set_at(&c.smtp_url), &[RawKind::Email]),
        ("username", set_at(&c.username), &[RawKind::Email]),
        ("password", set_at(&c.password), &[RawKind::Email]),
        ("password_file", set_at(&c.password_file), &[RawKind::Email]),
        ("password_env", set_at(&c.password_env), &[RawKind::Email]),
        ("ca_file", set_at(&c.ca_file), &[RawKind::Email]),
        ("from", set_at(&c.from), &[RawKind::Email]),
        ("to", set_at(&c.to), &[RawKind::Email]),
        ("url", set_at(&c.url), &[RawKind::Webhook]),
        ("secret", set_at(&c.secret), &[RawKind::Webhook]),
        ("secret_file", set_at(&c.secret_file), &[RawKind::Webhook]),
        ("secret_env", set_at(&c.secret_env), &[RawKind::Webhook]),
    ]
}

fn required_list(
    v: Option<&Spanned<Vec<String>>>,
    table: &str,
    key: &str,
    fallback: usize,
    loc: &Locator<'_>,
) -> Result<Vec<String>, ConfigError> {
    match v {
        None => Err(loc.error(
            fallback,
            &format!("{table}.{key}"),
            format!("an email channel needs `{key}`"),
        )),
        Some(l) if l.get_ref().is_empty() => Err(loc.error(
            l.span().start,
            &format!("{table}.{key}"),
            "needs at least one address".into(),
        )),
        Some(l) => Ok(l.get_ref().clone()),
    }
}

fn check_http_url(text: &str) -> Result<Url, String> {
    // The message must not repeat the URL: a Slack webhook URL is a secret.
    let url = Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    Ok(url)
}

/// Slack webhook URLs carry their own credential: only over TLS, except to this machine (a
/// local sink, a test receiver).
fn check_https(url: &Url) -> Result<Url, String> {
    if url.scheme() == "https" || url.host_str().is_some_and(is_loopback) {
        Ok(url.clone())
    } else {
        Err(
            "must be an https:// URL (the URL is the credential); http:// only to a loopback host such as 127.0.0.1"
                .into(),
        )
    }
}

/// 127.0.0.0/8, ::1 and localhost: traffic that never leaves this machine.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_matches(['[', ']']);
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn check_mailbox(text: &str) -> Result<(), String> {
    lettre::message::Mailbox::from_str(text)
        .map(|_| ())
        .map_err(|e| format!("\"{text}\" is not an email address ({e})"))
}

/// Standard Webhooks secrets are `whsec_` followed by base64; a bare base64 key is accepted too.
pub fn decode_webhook_secret(text: &str) -> Result<WebhookSecret, String> {
    use base64::Engine as _;
    let b64 = text.strip_prefix("whsec_").unwrap_or(text);
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map(WebhookSecret)
        .map_err(|_| "a webhook secret is `whsec_` followed by base64 (e.g. from `openssl rand -base64 32`)".into())
}
