//! `[[report]]` (scheduled summaries) and `[heartbeat]` (a ping to an external monitor).

use std::time::Duration;

use reqwest::Url;
use toml::Spanned;

use super::{ChannelConfig, ConfigError, CronExpr, Locator, raw, resolve_secret};
use crate::secret::Secret;

/// A summary of every link, sent to `channels` at each slot of `cron`, in its `timezone` (UTC
/// unless set), which also names the times the report shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportConfig {
    /// What the database records each slot under (`report_runs.report`); the cron text when the
    /// file gives no name, so that reordering reports changes nothing.
    pub name: String,
    pub cron: CronExpr,
    pub channels: Vec<String>,
}

/// A request to an external monitor each interval: to `url` while healthy, to `fail_url` (with
/// the reason) while not.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatConfig {
    /// The whole URL is a credential (Healthchecks' uuid, Uptime Kuma's push token).
    pub url: Secret,
    /// Scheme, host and port only: what logs and errors may show.
    pub shown: String,
    /// Where an unhealthy interval is reported: `fail_url` as configured, by default `url` with
    /// `/fail` added to its path (Healthchecks' convention). A credential too.
    pub fail_url: Secret,
    /// The fail URL's scheme, host and port.
    pub fail_shown: String,
    pub every: Duration,
    pub timeout: Duration,
}

/// The `[[report]]` tables; one with a mistake is reported and left out.
pub(super) fn reports(raw: Vec<raw::RawReport>, channels: &[ChannelConfig], loc: &Locator<'_>) -> Vec<ReportConfig> {
    let mut reports: Vec<ReportConfig> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        if let Some(report) = loc.keep(report(r, i, &reports, channels, loc)) {
            reports.push(report);
        }
    }
    reports
}

fn report(
    r: raw::RawReport,
    i: usize,
    reports: &[ReportConfig],
    channels: &[ChannelConfig],
    loc: &Locator<'_>,
) -> Result<ReportConfig, ConfigError> {
    let table = format!("report[{i}]");
    let name = match &r.name {
        Some(n) if n.get_ref().trim().is_empty() => {
            return Err(loc.error(n.span().start, &format!("{table}.name"), "must not be empty".into()));
        }
        Some(n) => n.get_ref().trim().to_owned(),
        None => r.cron.get_ref().as_str().to_owned(),
    };
    if reports.iter().any(|x| x.name == name) {
        let (at, message) = match &r.name {
            Some(n) => (
                n.span().start,
                format!("report name \"{name}\" is used twice; names must be unique"),
            ),
            None => (
                r.cron.span().start,
                format!("another report has the same cron \"{name}\"; give each a `name`"),
            ),
        };
        return Err(loc.error(at, &format!("{table}.name"), message));
    }
    super::notify::check_channel_names(&r.channels, channels, &table, loc)?;
    // Each channel once, in the order written: a name given twice would be two outbox rows
    // of one report for one channel, which the outbox's unique key refuses.
    let mut names: Vec<String> = Vec::new();
    for c in r.channels.get_ref() {
        if !names.contains(c.get_ref()) {
            names.push(c.get_ref().clone());
        }
    }
    Ok(ReportConfig {
        name,
        cron: match r.timezone {
            Some(zone) => r.cron.into_inner().in_zone(zone.into_inner()),
            None => r.cron.into_inner(),
        },
        channels: names,
    })
}

/// `[heartbeat]`: its URLs, how often it pings and how long a ping may take; `None` without the
/// table.
pub(super) fn heartbeat(
    raw: Option<Spanned<raw::Heartbeat>>,
    loc: &Locator<'_>,
) -> Result<Option<HeartbeatConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let at = raw.span().start;
    let h = raw.into_inner();
    let (url, parsed) = ping_url(&h, at, loc)?;
    let (fail_url, fail_parsed) = fail_url(&h, at, &parsed, loc)?;
    let every = heartbeat_every(&h, loc)?;
    let timeout = heartbeat_timeout(&h, every, loc)?;
    Ok(Some(HeartbeatConfig {
        shown: parsed.origin().ascii_serialization(),
        url,
        fail_shown: fail_parsed.origin().ascii_serialization(),
        fail_url,
        every,
        timeout,
    }))
}

/// The URL pinged while healthy (`url`, `url_file` or `url_env`; one is required), and its
/// parsed form. `at` is where `[heartbeat]` starts.
fn ping_url(h: &raw::Heartbeat, at: usize, loc: &Locator<'_>) -> Result<(Secret, Url), ConfigError> {
    let url = resolve_secret(
        "heartbeat.url",
        h.url.as_ref(),
        h.url_file.as_ref(),
        h.url_env.as_ref(),
        loc,
    )?
    .ok_or_else(|| loc.error(at, "heartbeat.url", "is required (or url_file, url_env)".into()))?;
    let url_at = first_span(
        [
            &h.url.as_ref().map(|s| s.span()),
            &h.url_file.as_ref().map(|s| s.span()),
            &h.url_env.as_ref().map(|s| s.span()),
        ],
        at,
    );
    let parsed = http_url(&url, url_at, "heartbeat.url", loc)?;
    Ok((url, parsed))
}

/// The URL pinged while unhealthy: `fail_url` (or its `_file`, `_env`) as configured, else the
/// ping URL (`parsed`) with `/fail` added to its path; and its parsed form.
fn fail_url(h: &raw::Heartbeat, at: usize, parsed: &Url, loc: &Locator<'_>) -> Result<(Secret, Url), ConfigError> {
    let fail = resolve_secret(
        "heartbeat.fail_url",
        h.fail_url.as_ref(),
        h.fail_url_file.as_ref(),
        h.fail_url_env.as_ref(),
        loc,
    )?;
    Ok(match fail {
        Some(fail) => {
            let fail_at = first_span(
                [
                    &h.fail_url.as_ref().map(|s| s.span()),
                    &h.fail_url_file.as_ref().map(|s| s.span()),
                    &h.fail_url_env.as_ref().map(|s| s.span()),
                ],
                at,
            );
            let parsed = http_url(&fail, fail_at, "heartbeat.fail_url", loc)?;
            (fail, parsed)
        }
        None => {
            // `/fail` after the path, the query kept: https://hc-ping.com/<uuid>/fail.
            let mut fail = parsed.clone();
            fail.set_path(&format!("{}/fail", parsed.path().trim_end_matches('/')));
            (Secret::new(fail.as_str()), fail)
        }
    })
}

/// `[heartbeat] every`: at least a second, by default a minute.
fn heartbeat_every(h: &raw::Heartbeat, loc: &Locator<'_>) -> Result<Duration, ConfigError> {
    match &h.every {
        None => Ok(Duration::from_secs(60)),
        Some(e) if e.get_ref().0 < Duration::from_secs(1) => {
            Err(loc.error(e.span().start, "heartbeat.every", "must be at least 1s".into()))
        }
        Some(e) => Ok(e.get_ref().0),
    }
}

/// `[heartbeat] timeout`: more than zero and at most `every`, by default 10 s (or `every`, if
/// shorter).
fn heartbeat_timeout(h: &raw::Heartbeat, every: Duration, loc: &Locator<'_>) -> Result<Duration, ConfigError> {
    match &h.timeout {
        None => Ok(Duration::from_secs(10).min(every)),
        Some(t) if t.get_ref().0.is_zero() || t.get_ref().0 > every => Err(loc.error(
            t.span().start,
            "heartbeat.timeout",
            "must be more than 0s and at most `every`".into(),
        )),
        Some(t) => Ok(t.get_ref().0),
    }
}

/// Where the first of a secret's three keys that is set starts, or `at`.
fn first_span(spans: [&Option<std::ops::Range<usize>>; 3], at: usize) -> usize {
    spans.into_iter().flatten().next().map_or(at, |s| s.start)
}

/// `url` parsed, if it is http:// or https://. The error never repeats the URL: its path is the
/// credential.
fn http_url(url: &Secret, at: usize, key: &str, loc: &Locator<'_>) -> Result<Url, ConfigError> {
    let parsed = Url::parse(url.expose()).map_err(|e| loc.error(at, key, format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(loc.error(at, key, "must be an http:// or https:// URL".into()));
    }
    Ok(parsed)
}
