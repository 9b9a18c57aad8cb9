//! The TOML configuration: parsed and validated once, into typed values.
//!
//! Parsing happens in two steps. `raw` mirrors the file (serde, `deny_unknown_fields`, with
//! value types that validate themselves so that toml attaches a span to their errors); then
//! [`Config::from_raw`] checks what needs the whole file (duplicates, credentials, secret files)
//! and resolves secrets. Every error carries file, line, column and key.

mod atlas;
mod database;
mod http;
mod instances;
mod notify;
mod raw;
mod recover;
mod reports;
mod smtp;
mod values;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use toml::Spanned;

pub use atlas::{Atlas, DEFAULT_ATLAS_URL, LiveMigration};
pub use database::{Database, PgTarget};
pub use http::BasicAuth;
use instances::Shared;
pub use instances::{Access, Api, Endpoint};
pub use notify::{ChannelConfig, ChannelKind, EmailConfig, Route, WebhookSecret, decode_webhook_secret};
pub use reports::{HeartbeatConfig, ReportConfig};
pub use smtp::{SmtpTarget, TlsMode, parse_smtp_url};
pub use values::{CronExpr, EventKind, HumanDuration, OrgId, OrgIdHasher, Zone};

use crate::secret::Secret;

pub const DEFAULT_PATH: &str = "/etc/linkwatch/linkwatch.toml";
pub const DEFAULT_DATABASE: &str = "/var/lib/linkwatch/linkwatch.db";
pub const DEFAULT_BASE_URL: &str = "https://cloud.mongodb.com/api/public/v1.0";

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages.
    pub source: PathBuf,
    /// What logs, `/metrics` and the page call this instance (`instance_name`, by default the
    /// host's name).
    pub instance_name: String,
    pub database: Database,
    /// How long a PostgreSQL leader's lease lasts without renewal (renewed every third of it).
    pub leader_lease: Duration,
    /// Failed-check rows, finished deliveries and delivered reports older than this are pruned
    /// daily.
    pub retention: Duration,
    /// How long shutdown (and reload) waits for running checks and sends.
    pub shutdown_timeout: Duration,
    /// Where the status page, `/metrics` and `/healthz` are served; off when `None`.
    pub http_listen: Option<std::net::SocketAddr>,
    /// The user and password the status page, its JSON API, `/metrics` and the details of
    /// `/healthz` (`?verbose`) require; open when `None`. `/healthz` itself never asks.
    pub http_auth: Option<BasicAuth>,
    /// Where people reach the status page (`[http] public_url`), for links in messages.
    pub http_public_url: Option<Url>,
    pub cloud_manager: CloudManager,
    pub poll: Poll,
    pub credentials: Vec<Arc<Credential>>,
    /// Shared with the status page and `/metrics`, which follow reloads.
    pub orgs: Arc<[Org]>,
    pub channels: Vec<ChannelConfig>,
    pub routes: Vec<Route>,
    /// `[atlas]`; `None` when the file follows no live migration.
    pub atlas: Option<Atlas>,
    pub migrations: Vec<LiveMigration>,
    /// Scheduled summaries (`[[report]]`), run by the leader.
    pub reports: Vec<ReportConfig>,
    /// A ping to an external monitor after each healthy interval (`[heartbeat]`).
    pub heartbeat: Option<HeartbeatConfig>,
    /// Secrets left unread (`file:line: key: why`), by `Secrets::DatabaseOnly` or
    /// `Secrets::NoteUnreadable`.
    pub unread_secrets: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct CloudManager {
    pub base_url: Url,
    /// Where OAuth service accounts get tokens; defaults to `{origin}/api/oauth/token`.
    pub token_url: Url,
    pub connect_timeout: Duration,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct Poll {
    pub schedule: Schedule,
    pub timeout: Duration,
    pub concurrency: usize,
    pub failures_before_alert: u32,
    pub confirm_checks: u32,
}

/// When an org is checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    Every(Duration),
    Cron(Box<CronExpr>),
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "every {}", humantime::format_duration(*d)),
            Schedule::Cron(c) => write!(f, "cron \"{}\" ({})", c.as_str(), c.zone_name()),
        }
    }
}

/// One way of authenticating to Cloud Manager. Orgs share a credential when they use the same
/// key, so that they share its Digest nonce or OAuth token.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    /// HTTP Digest: username = public key, password = private key.
    ApiKey { public_key: String, private_key: Secret },
    /// OAuth 2.0 client credentials (service account).
    ServiceAccount { client_id: String, client_secret: Secret },
}

impl Credential {
    /// The public half, safe to print.
    pub fn label(&self) -> String {
        match self {
            Credential::ApiKey { public_key, .. } => format!("api key {public_key}"),
            Credential::ServiceAccount { client_id, .. } => format!("service account {client_id}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Org {
    pub id: OrgId,
    pub name: String,
    pub schedule: Schedule,
    /// The Cloud Manager or Ops Manager it is asked at (`[cloud_manager]`'s unless it says).
    pub endpoint: Arc<Endpoint>,
    pub credential: Arc<Credential>,
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cause is part of the message and not a `source`: a report of the error with its
    /// causes would otherwise say it twice.
    #[error("cannot read config file {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("{file}:{line}:{column}: {key}: {message}")]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    /// Every mistake of the file, sorted by line, one per line.
    #[error("{} mistakes in the config:\n{}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

/// How `Config::load_with` treats secrets.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub secrets: Secrets,
    /// Where `${CREDENTIALS_DIRECTORY}` points when the environment does not say (a shell, not
    /// systemd): `--credentials-dir`.
    pub credentials_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Secrets {
    /// Read every secret; one that cannot be read is an error (what `run` needs).
    #[default]
    Read,
    /// Read none but the database password: for commands that only read the database. The
    /// config's other secrets hold a placeholder and must not be used.
    DatabaseOnly,
    /// As `Read`, but a `${CREDENTIALS_DIRECTORY}` that is not set here is noted in
    /// `Config::unread_secrets`, not an error (`check` from a shell).
    NoteUnreadable,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with(path, &LoadOptions::default())
    }

    /// Reads and validates the file at `path`, treating secrets as `options` say.
    pub fn load_with(path: &Path, options: &LoadOptions) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        let config = Self::parse_with(&text, path, options);
        drop(text);
        crate::memory::give_back_freed();
        config
    }

    /// Validates `text` as if read from `path` (used in messages and to resolve relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::parse_with(text, path, &LoadOptions::default())
    }

    fn parse_with(text: &str, path: &Path, options: &LoadOptions) -> Result<Config, ConfigError> {
        let locator = Locator::new(text, path, options);
        let (raw, problems, dropped) = recover::read::<raw::Config>(text);
        for p in problems {
            // "Missing `webhook_url`" would only repeat "did you mean `webhook_url`?".
            if let Some(meant) = p
                .message
                .split("did you mean `")
                .nth(1)
                .and_then(|r| r.split('`').next())
            {
                let table = p.key.rsplit_once('.').map_or("", |(t, _)| t);
                let key = if table.is_empty() {
                    meant.to_owned()
                } else {
                    format!("{table}.{meant}")
                };
                locator.reported.borrow_mut().insert(format!("key:{key}"));
            }
            locator.report(locator.error(p.offset, &p.key, p.message));
        }
        // A table taken out whole is reported; what refers to it by name or id is not wrong too.
        for name in dropped {
            locator.broken(&name);
        }
        match raw {
            Some(raw) => Self::from_raw(raw, &locator),
            None => Err(locator.failure()),
        }
    }

    /// Checks what needs the whole file. Each part goes on past a mistake in another, so that
    /// every mistake is reported at once.
    fn from_raw(mut raw: raw::Config, loc: &Locator<'_>) -> Result<Config, ConfigError> {
        let instance_name = loc.keep(instance_name(raw.instance_name.as_ref(), loc));
        let database = loc.keep(database(&raw, loc));
        let leader_lease = loc.keep(leader_lease(raw.leader_lease.as_ref(), loc));
        let retention = loc.keep(retention(raw.retention.as_ref(), loc));
        let http = http_settings(raw.http.as_ref(), loc);
        let cloud_manager = loc.keep(cloud_manager(&raw.cloud_manager, loc));
        let mut credentials = Credentials::default();
        let default_credential = default_credential(&raw.cloud_manager, &mut credentials, loc);
        // What is read here is taken out of `raw`, which goes on to `tables` whole.
        let sets = instances::credential_sets(std::mem::take(&mut raw.credential_sets), &mut credentials, loc);
        let poll = loc.keep(poll(raw.poll.take().unwrap_or_default(), loc));
        let shutdown_timeout = raw.shutdown_timeout.map_or(Duration::from_secs(10), |d| d.0);
        let tables = tables(
            raw,
            poll.as_ref(),
            cloud_manager.as_ref(),
            &default_credential,
            &sets,
            &mut credentials,
            loc,
        );
        let top = TopLevel {
            instance_name,
            database,
            leader_lease,
            retention,
            shutdown_timeout,
            http,
            cloud_manager,
            poll,
        };
        assemble(top, tables, credentials, loc)
    }
}

/// The settings of the top level, `[http]`, `[cloud_manager]` and `[poll]`; `None` where a
/// mistake was reported.
struct TopLevel {
    instance_name: Option<String>,
    database: Option<Database>,
    leader_lease: Option<Duration>,
    retention: Option<Duration>,
    shutdown_timeout: Duration,
    http: Option<HttpSettings>,
    cloud_manager: Option<CloudManager>,
    poll: Option<Poll>,
}

/// Where `[http]` listens, its login and its public address; all `None` without the table.
type HttpSettings = (Option<std::net::SocketAddr>, Option<BasicAuth>, Option<Url>);

/// The tables that name each other, each with its mistakes left out.
struct Tables {
    orgs: Vec<Org>,
    channels: Vec<ChannelConfig>,
    routes: Vec<Route>,
    atlas: Option<Atlas>,
    migrations: Vec<LiveMigration>,
    reports: Vec<ReportConfig>,
    heartbeat: Option<HeartbeatConfig>,
}

/// The `Config`, when no part of the file had a mistake; else every mistake reported.
fn assemble(top: TopLevel, tables: Tables, credentials: Credentials, loc: &Locator<'_>) -> Result<Config, ConfigError> {
    let TopLevel {
        instance_name: Some(instance_name),
        database: Some(database),
        leader_lease: Some(leader_lease),
        retention: Some(retention),
        shutdown_timeout,
        http: Some((http_listen, http_auth, http_public_url)),
        cloud_manager: Some(cloud_manager),
        poll: Some(poll),
    } = top
    else {
        return Err(loc.failure());
    };
    loc.finish()?;
    Ok(Config {
        source: loc.file.to_owned(),
        instance_name,
        database,
        leader_lease,
        retention,
        shutdown_timeout,
        http_listen,
        http_auth,
        http_public_url,
        cloud_manager,
        poll,
        credentials: credentials.0,
        orgs: tables.orgs.into(),
        channels: tables.channels,
        routes: tables.routes,
        atlas: tables.atlas,
        migrations: tables.migrations,
        reports: tables.reports,
        heartbeat: tables.heartbeat,
        unread_secrets: loc.unread.take(),
    })
}

/// `[[org]]` (with the defaults of `[poll]` and `[cloud_manager]`), `[[channel]]`, `[[route]]`,
/// `[atlas]` with `[[migration]]`, `[[report]]` and `[heartbeat]`, in that order: each checked
/// against those before it.
fn tables(
    raw: raw::Config,
    poll: Option<&Poll>,
    cloud_manager: Option<&CloudManager>,
    default_credential: &Result<Option<Arc<Credential>>, ()>,
    sets: &[instances::CredentialSet],
    credentials: &mut Credentials,
    loc: &Locator<'_>,
) -> Tables {
    let mut endpoints = instances::Endpoints::default();
    let default_schedule = poll.map_or(Schedule::Every(Duration::from_secs(60)), |p| p.schedule.clone());
    let default_endpoint = default_endpoint(cloud_manager);
    let defaults = instances::Defaults {
        api: Api::CloudManager,
        table: "cloud_manager",
        endpoint: &default_endpoint,
        credential: default_credential,
    };
    let mut shared = Shared {
        sets,
        endpoints: &mut endpoints,
        credentials,
    };
    let orgs = orgs(raw.orgs, &default_schedule, &defaults, &mut shared, loc);
    let channels = notify::channels(raw.channels, loc);
    let routes = notify::routes(raw.routes, &channels, &orgs, loc);
    let (atlas, migrations) = loc
        .keep(atlas::atlas(raw.atlas, raw.migrations, &orgs, &mut shared, loc))
        .unwrap_or_default();
    let reports = reports::reports(raw.reports, &channels, loc);
    let heartbeat = loc.keep(reports::heartbeat(raw.heartbeat, loc)).flatten();
    Tables {
        orgs,
        channels,
        routes,
        atlas,
        migrations,
        reports,
        heartbeat,
    }
}

/// `leader_lease`: at least 3 s, by default 15 s.
fn leader_lease(value: Option<&Spanned<HumanDuration>>, loc: &Locator<'_>) -> Result<Duration, ConfigError> {
    at_least(
        value,
        Duration::from_secs(3),
        "3s",
        Duration::from_secs(15),
        "leader_lease",
        loc,
    )
}

/// `retention`: at least a day, by default 90 days.
fn retention(value: Option<&Spanned<HumanDuration>>, loc: &Locator<'_>) -> Result<Duration, ConfigError> {
    at_least(
        value,
        Duration::from_secs(86_400),
        "1d",
        Duration::from_secs(90 * 86_400),
        "retention",
        loc,
    )
}

/// `[http]`; `None` when it has a mistake, reported.
fn http_settings(h: Option<&raw::Http>, loc: &Locator<'_>) -> Option<HttpSettings> {
    match h {
        None => Some((None, None, None)),
        Some(h) => loc
            .keep(http::parse(h, loc))
            .map(|h| (Some(h.listen), h.auth, h.public_url)),
    }
}

/// `[cloud_manager]`'s key, shared with the orgs that have the same one; `Err`: it has a
/// mistake, reported.
fn default_credential(
    cm: &raw::CloudManager,
    credentials: &mut Credentials,
    loc: &Locator<'_>,
) -> Result<Option<Arc<Credential>>, ()> {
    match credential_from(&cm.credential(), "cloud_manager", loc) {
        Ok(c) => Ok(c.map(|c| credentials.share(c))),
        Err(e) => {
            loc.report(e);
            Err(())
        }
    }
}

/// Where orgs are asked unless they say: `[cloud_manager]`'s address and token URL.
fn default_endpoint(cloud_manager: Option<&CloudManager>) -> Endpoint {
    // A mistaken [cloud_manager] base_url is reported; the orgs are still read against the
    // default, for their own mistakes.
    cloud_manager.map_or_else(
        || Endpoint {
            base_url: with_trailing_slash(Url::parse(DEFAULT_BASE_URL).expect("the default base URL is valid")),
            token_url: default_token_url(&Url::parse(DEFAULT_BASE_URL).expect("valid")),
        },
        |cm| Endpoint {
            base_url: cm.base_url.clone(),
            token_url: cm.token_url.clone(),
        },
    )
}

/// `instance_name`: letters, digits, `-`, `_` and `.` (it goes into logs, a label and the lease's
/// holder), or the host's name.
fn instance_name(value: Option<&Spanned<String>>, loc: &Locator<'_>) -> Result<String, ConfigError> {
    let Some(v) = value else {
        return Ok(host_name());
    };
    let name = v.get_ref().trim();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.chars().count() > 64 || !name.chars().all(allowed) {
        return Err(loc.error(
            v.span().start,
            "instance_name",
            "must be 1 to 64 letters, digits, '-', '_' or '.'".into(),
        ));
    }
    Ok(name.to_owned())
}

/// The host's name, as the kernel has it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// `database` (default: the SQLite file), with its password resolved.
fn database(raw: &raw::Config, loc: &Locator<'_>) -> Result<Database, ConfigError> {
    let database = match &raw.database {
        Some(p) => {
            Database::parse(p.get_ref(), loc.base_dir()).map_err(|m| loc.error(p.span().start, "database", m))?
        }
        None => Database::Sqlite(PathBuf::from(DEFAULT_DATABASE)),
    };
    let password = resolve_secret(
        "database_password",
        None,
        raw.database_password_file.as_ref(),
        raw.database_password_env.as_ref(),
        loc,
    )?;
    let at = raw
        .database_password_file
        .as_ref()
        .or(raw.database_password_env.as_ref())
        .map_or(0, |s| s.span().start);
    database
        .with_password(password)
        .map_err(|m| loc.error(at, "database_password", m))
}

/// A duration of at least `min` (written `min_text` in the message), or `default`.
fn at_least(
    value: Option<&Spanned<HumanDuration>>,
    min: Duration,
    min_text: &str,
    default: Duration,
    key: &str,
    loc: &Locator<'_>,
) -> Result<Duration, ConfigError> {
    match value {
        Some(v) if v.get_ref().0 < min => Err(loc.error(v.span().start, key, format!("must be at least {min_text}"))),
        Some(v) => Ok(v.get_ref().0),
        None => Ok(default),
    }
}

/// `[cloud_manager]` but its credential.
fn cloud_manager(cm: &raw::CloudManager, loc: &Locator<'_>) -> Result<CloudManager, ConfigError> {
    let base_url = match &cm.base_url {
        Some(u) => parse_base_url(u, loc)?,
        None => with_trailing_slash(Url::parse(DEFAULT_BASE_URL).expect("the default base URL is valid")),
    };
    let token_url = match &cm.token_url {
        Some(u) => parse_url(u, "cloud_manager.token_url", loc)?,
        None => default_token_url(&base_url),
    };
    Ok(CloudManager {
        base_url,
        token_url,
        connect_timeout: timeout(
            cm.connect_timeout.as_ref(),
            Duration::from_secs(5),
            "cloud_manager.connect_timeout",
            loc,
        )?,
        max_body_bytes: cm.max_body_bytes.unwrap_or(64 * 1024),
    })
}

/// `[poll]`, with its defaults.
fn poll(poll: raw::Poll, loc: &Locator<'_>) -> Result<Poll, ConfigError> {
    let mut schedule = schedule_from(poll.every.as_ref(), poll.cron.as_ref(), "poll", loc)?
        .unwrap_or(Schedule::Every(Duration::from_secs(60)));
    // `timezone` says where `cron`'s hours are; alone it would silently mean nothing.
    if let Some(zone) = &poll.timezone {
        match &mut schedule {
            Schedule::Cron(c) => **c = (**c).clone().in_zone(*zone.get_ref()),
            Schedule::Every(_) => {
                return Err(loc.error(
                    zone.span().start,
                    "poll.timezone",
                    "applies to `cron` only; set `cron` too, or remove `timezone`".into(),
                ));
            }
        }
    }
    Ok(Poll {
        schedule,
        timeout: timeout(poll.timeout.as_ref(), Duration::from_secs(15), "poll.timeout", loc)?,
        concurrency: positive(poll.concurrency.as_ref(), 8, "poll.concurrency", loc)? as usize,
        failures_before_alert: positive(
            poll.failures_before_alert.as_ref(),
            3,
            "poll.failures_before_alert",
            loc,
        )?,
        confirm_checks: positive(poll.confirm_checks.as_ref(), 1, "poll.confirm_checks", loc)?,
    })
}

impl Config {
    /// The distinct (endpoint, credential) pairs of the orgs: one session each.
    pub fn sessions(&self) -> Vec<Access> {
        distinct(self.orgs.iter().map(|o| (&o.endpoint, &o.credential)))
    }

    /// The distinct (endpoint, credential) pairs of the live migrations.
    pub fn atlas_sessions(&self) -> Vec<Access> {
        distinct(self.migrations.iter().map(|m| (&m.endpoint, &m.credential)))
    }
}

/// Pairs shared by `Arc` (the config shares equal ones), found by pointer: 10,000 orgs of a
/// handful of instances cost one comparison each against that handful.
fn distinct<'a>(pairs: impl Iterator<Item = (&'a Arc<Endpoint>, &'a Arc<Credential>)>) -> Vec<Access> {
    let mut out: Vec<Access> = Vec::new();
    for (e, c) in pairs {
        if !out.iter().any(|(oe, oc)| Arc::ptr_eq(oe, e) && Arc::ptr_eq(oc, c)) {
            out.push((e.clone(), c.clone()));
        }
    }
    out
}

/// The distinct credentials of the file: orgs with the same key share one (and so one Digest
/// session or one token).
#[derive(Default)]
struct Credentials(Vec<Arc<Credential>>);

impl Credentials {
    fn share(&mut self, c: Credential) -> Arc<Credential> {
        if let Some(existing) = self.0.iter().find(|e| ***e == c) {
            return existing.clone();
        }
        let c = Arc::new(c);
        self.0.push(c.clone());
        c
    }
}

/// The `[[org]]` tables: unique ids and names (checked in one pass, for files of 10,000 orgs),
/// each with its schedule and credential (its own, or `[cloud_manager]`'s, `Err` when that one
/// was already reported). An org with a mistake is reported and left out.
fn orgs(
    raw: Vec<raw::Org>,
    default_schedule: &Schedule,
    defaults: &instances::Defaults<'_>,
    shared: &mut Shared<'_>,
    loc: &Locator<'_>,
) -> Vec<Org> {
    let mut orgs: Vec<Org> = Vec::with_capacity(raw.len());
    // Where each id was first used, and every name.
    let mut ids: HashMap<OrgId, usize> = HashMap::with_capacity(raw.len());
    let mut names: HashSet<String> = HashSet::with_capacity(raw.len());
    for (i, o) in raw.into_iter().enumerate() {
        let key = format!("org[{i}]");
        let name = o.name.get_ref().trim().to_owned();
        let id = o.id.get_ref().as_str().to_owned();
        let checked = org(
            o,
            &key,
            &ids,
            &mut names,
            &orgs,
            default_schedule,
            defaults,
            shared,
            loc,
        );
        match checked {
            Ok(Some(org)) => {
                ids.insert(org.id.clone(), orgs.len());
                orgs.push(org);
            }
            Ok(None) => {
                loc.broken(&name);
                loc.broken(&id);
            }
            Err(e) => {
                loc.report(e);
                loc.broken(&name);
                loc.broken(&id);
            }
        }
    }
    orgs
}

/// One `[[org]]`; `None` when its only fault is the shared credential, already reported.
#[allow(clippy::too_many_arguments)]
fn org(
    o: raw::Org,
    key: &str,
    ids: &HashMap<OrgId, usize>,
    names: &mut HashSet<String>,
    orgs: &[Org],
    default_schedule: &Schedule,
    defaults: &instances::Defaults<'_>,
    shared: &mut Shared<'_>,
    loc: &Locator<'_>,
) -> Result<Option<Org>, ConfigError> {
    if let Some(dup) = ids.get(o.id.get_ref()).map(|&at| &orgs[at]) {
        return Err(loc.error(
            o.id.span().start,
            &format!("{key}.id"),
            format!("org id {} is already used by org \"{}\"", dup.id, dup.name),
        ));
    }
    let name = o.name.get_ref().trim().to_owned();
    if name.is_empty() {
        return Err(loc.error(o.name.span().start, &format!("{key}.name"), "must not be empty".into()));
    }
    if !names.insert(name.clone()) {
        return Err(loc.error(
            o.name.span().start,
            &format!("{key}.name"),
            format!("org name \"{name}\" is used twice; names must be unique"),
        ));
    }
    let schedule =
        schedule_from(o.every.as_ref(), o.cron.as_ref(), key, loc)?.unwrap_or_else(|| default_schedule.clone());
    let own = instances::Own {
        base_url: o.base_url.as_deref(),
        token_url: o.token_url.as_deref(),
        credentials: o.credentials.as_deref(),
        credential: credential_from(&o.credential(), key, loc)?,
    };
    let Some((endpoint, credential)) = shared.resolve(key, o.id.span().start, own, defaults, loc)? else {
        return Ok(None);
    };
    Ok(Some(Org {
        id: o.id.into_inner(),
        name,
        schedule,
        endpoint,
        credential,
    }))
}

/// Turns byte offsets into file:line:column errors, and gathers them: validation goes on past
/// a mistake, so that one run shows every mistake of the file.
struct Locator<'a> {
    text: &'a str,
    file: &'a Path,
    options: &'a LoadOptions,
    problems: RefCell<Vec<ConfigError>>,
    /// The document as written, to name `[[org]]`s and the like by their place in it; parsed at
    /// the first error (a valid file never needs it).
    written: std::cell::OnceCell<Option<Spanned<toml::de::DeTable<'a>>>>,
    /// Names of `[[org]]`s and `[[channel]]`s that were reported, and keys that a "did you
    /// mean" named: a reference to one of them is not a second mistake.
    reported: RefCell<HashSet<String>>,
    unread: RefCell<Vec<String>>,
}

impl<'a> Locator<'a> {
    fn new(text: &'a str, file: &'a Path, options: &'a LoadOptions) -> Self {
        Locator {
            text,
            file,
            options,
            problems: RefCell::default(),
            written: std::cell::OnceCell::new(),
            reported: RefCell::default(),
            unread: RefCell::default(),
        }
    }

    fn base_dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }

    fn report(&self, e: ConfigError) {
        if let ConfigError::Invalid { key, message, .. } = &e
            && (message.is_empty() || self.reported.borrow().contains(&format!("key:{key}")))
        {
            return;
        }
        self.problems.borrow_mut().push(e);
    }

    /// An error that says nothing new: what it would say was reported where the cause is.
    fn already_reported(&self) -> ConfigError {
        self.error(0, "", String::new())
    }

    /// The value, or `None` with its error reported.
    fn keep<T>(&self, r: Result<T, ConfigError>) -> Option<T> {
        r.map_err(|e| self.report(e)).ok()
    }

    /// Marks an `[[org]]` or `[[channel]]` (its name, or an org's id) as already reported: a
    /// table that refers to it is not wrong too.
    fn broken(&self, name: &str) {
        self.reported.borrow_mut().insert(format!("table:{name}"));
    }

    fn was_reported(&self, name: &str) -> bool {
        self.reported.borrow().contains(&format!("table:{name}"))
    }

    /// Every error reported, sorted by position; `Ok` when there is none.
    fn finish(&self) -> Result<(), ConfigError> {
        let mut problems = self.problems.take();
        if problems.is_empty() {
            return Ok(());
        }
        let at = |e: &ConfigError| match e {
            ConfigError::Invalid { line, column, .. } => (*line, *column),
            _ => (0, 0),
        };
        problems.sort_by_key(at);
        problems.dedup_by(|a, b| a.to_string() == b.to_string());
        Err(if problems.len() == 1 {
            problems.remove(0)
        } else {
            ConfigError::Several(problems)
        })
    }

    /// The reported errors; only called after one was reported.
    fn failure(&self) -> ConfigError {
        self.finish().expect_err("an error was reported")
    }

    fn error(&self, offset: usize, key: &str, message: String) -> ConfigError {
        // `org[1]` as written, also when an earlier `[[org]]` was taken out for its mistakes.
        let written = self.written.get_or_init(|| toml::de::DeTable::parse(self.text).ok());
        let key = match (key.split_once('['), written) {
            (Some((table, rest)), Some(doc)) if !table.contains('.') => {
                match (rest.split_once(']'), recover::index_at(doc, table, offset)) {
                    (Some((_, tail)), Some(i)) => format!("{table}[{i}]{tail}"),
                    _ => key.to_owned(),
                }
            }
            _ => key.to_owned(),
        };
        let key = key.as_str();
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line,
            column,
            key: if key.is_empty() {
                "(top level)".into()
            } else {
                key.into()
            },
            message,
        }
    }
}

fn positive(value: Option<&Spanned<u32>>, default: u32, key: &str, loc: &Locator<'_>) -> Result<u32, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if *v.get_ref() > 0 => Ok(*v.get_ref()),
        Some(v) => Err(loc.error(v.span().start, key, "must be at least 1".into())),
    }
}

/// A timeout for talking to Cloud Manager: zero would fail every check, and a check that needs
/// more than an hour is no check.
fn timeout(
    value: Option<&Spanned<HumanDuration>>,
    default: Duration,
    key: &str,
    loc: &Locator<'_>,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if v.get_ref().0.is_zero() => Err(loc.error(v.span().start, key, "must be more than 0s".into())),
        Some(v) if v.get_ref().0 > Duration::from_secs(3600) => {
            Err(loc.error(v.span().start, key, "must be at most 1h".into()))
        }
        Some(v) => Ok(v.get_ref().0),
    }
}

fn schedule_from(
    every: Option<&Spanned<HumanDuration>>,
    cron: Option<&Spanned<CronExpr>>,
    table: &str,
    loc: &Locator<'_>,
) -> Result<Option<Schedule>, ConfigError> {
    match (every, cron) {
        (Some(_), Some(c)) => Err(loc.error(
            c.span().start,
            &format!("{table}.cron"),
            "set either `every` or `cron`, not both".into(),
        )),
        (Some(e), None) if e.get_ref().0 < Duration::from_secs(1) => {
            Err(loc.error(e.span().start, &format!("{table}.every"), "must be at least 1s".into()))
        }
        (Some(e), None) => Ok(Some(Schedule::Every(e.get_ref().0))),
        (None, Some(c)) => Ok(Some(Schedule::Cron(Box::new(c.get_ref().clone())))),
        (None, None) => Ok(None),
    }
}

/// The key a table (`table`: `cloud_manager`, `org[1]`, ...) sets: an API key or a service
/// account, `None` when it sets neither.
fn credential_from(
    raw: &raw::CredentialFields,
    table: &str,
    loc: &Locator<'_>,
) -> Result<Option<Credential>, ConfigError> {
    let private_key = resolve_secret(
        &format!("{table}.private_key"),
        raw.private_key.as_ref(),
        raw.private_key_file.as_ref(),
        raw.private_key_env.as_ref(),
        loc,
    )?;
    let client_secret = resolve_secret(
        &format!("{table}.client_secret"),
        raw.client_secret.as_ref(),
        raw.client_secret_file.as_ref(),
        raw.client_secret_env.as_ref(),
        loc,
    )?;
    match (&raw.public_key, &raw.client_id) {
        (Some(_), Some(id)) => Err(loc.error(
            id.span().start,
            &format!("{table}.client_id"),
            "set either an API key (public_key) or a service account (client_id), not both".into(),
        )),
        (Some(pk), None) => api_key(pk, private_key, client_secret, table, loc).map(Some),
        (None, Some(id)) => service_account(id, private_key, client_secret, table, loc).map(Some),
        (None, None) if private_key.is_some() || client_secret.is_some() => Err(loc.error(
            0,
            table,
            "a secret is set without its public half (public_key or client_id)".into(),
        )),
        (None, None) => Ok(None),
    }
}

/// An API key: `public_key` with its `private_key`, and no `client_secret`.
fn api_key(
    pk: &Spanned<String>,
    private_key: Option<Secret>,
    client_secret: Option<Secret>,
    table: &str,
    loc: &Locator<'_>,
) -> Result<Credential, ConfigError> {
    match (private_key, client_secret) {
        (_, Some(_)) => Err(loc.error(
            pk.span().start,
            &format!("{table}.client_secret"),
            "client_secret belongs to a service account (client_id), not to an API key".into(),
        )),
        (Some(private_key), None) => Ok(Credential::ApiKey {
            public_key: pk.get_ref().clone(),
            private_key,
        }),
        (None, None) => Err(loc.error(
            pk.span().start,
            &format!("{table}.private_key"),
            "public_key is set but private_key (or private_key_file / private_key_env) is missing".into(),
        )),
    }
}

/// A service account: `client_id` with its `client_secret`, and no `private_key`.
fn service_account(
    id: &Spanned<String>,
    private_key: Option<Secret>,
    client_secret: Option<Secret>,
    table: &str,
    loc: &Locator<'_>,
) -> Result<Credential, ConfigError> {
    match (private_key, client_secret) {
        (Some(_), _) => Err(loc.error(
            id.span().start,
            &format!("{table}.private_key"),
            "private_key belongs to an API key (public_key), not to a service account".into(),
        )),
        (None, Some(client_secret)) => Ok(Credential::ServiceAccount {
            client_id: id.get_ref().clone(),
            client_secret,
        }),
        (None, None) => Err(loc.error(
            id.span().start,
            &format!("{table}.client_secret"),
            "client_id is set but client_secret (or client_secret_file / client_secret_env) is missing".into(),
        )),
    }
}

/// What a secret that was not read holds: shaped as a URL so that the checks of a URL's form
/// pass, and on a name that never resolves. A config holding it is only shown (`check`) or used
/// for its database (`history`).
pub(crate) const UNREAD: &str = "https://secret-not-read.invalid/";

/// Why the secrets of `Config::unread_secrets` were not read, and how to read them.
pub const UNREAD_WHY: &str = "${CREDENTIALS_DIRECTORY} is set by systemd for the service (from its \
     LoadCredential= lines), not in a shell: add --credentials-dir DIR (e.g. /etc/linkwatch/credentials) \
     to read these files here";

/// A secret may be written inline, read from a file (systemd `LoadCredential=`), or taken from an
/// environment variable. Exactly one of the three may be set.
fn resolve_secret(
    key: &str,
    inline: Option<&Spanned<Secret>>,
    file: Option<&Spanned<String>>,
    env: Option<&Spanned<String>>,
    loc: &Locator<'_>,
) -> Result<Option<Secret>, ConfigError> {
    let set = [inline.map(|s| s.span()), file.map(|s| s.span()), env.map(|s| s.span())];
    if set.iter().flatten().count() > 1 {
        let span = set.iter().flatten().nth(1).map_or(0, |s| s.start);
        return Err(loc.error(span, key, format!("set only one of {key}, {key}_file and {key}_env")));
    }
    if let Some(s) = inline {
        return non_empty(s.get_ref().clone(), s.span().start, key, loc).map(Some);
    }
    let needed = loc.options.secrets != Secrets::DatabaseOnly || key == "database_password";
    if (file.is_some() || env.is_some()) && !needed {
        return Ok(Some(Secret::new(UNREAD)));
    }
    if let Some(f) = file {
        let key = format!("{key}_file");
        let path = match expand_credentials_dir(f.get_ref(), loc.options.credentials_dir.as_deref()) {
            Ok(path) => path,
            Err(_) if loc.options.secrets == Secrets::NoteUnreadable => {
                let ConfigError::Invalid { file, line, .. } = loc.error(f.span().start, &key, String::new()) else {
                    unreachable!("Locator::error makes Invalid")
                };
                // Why is said once, under the list (`UNREAD_WHY`).
                loc.unread
                    .borrow_mut()
                    .push(format!("{}:{line}: {key}: {}", file.display(), f.get_ref()));
                return Ok(Some(Secret::new(UNREAD)));
            }
            Err(m) => return Err(loc.error(f.span().start, &key, m)),
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| loc.error(f.span().start, &key, format!("cannot read {}: {e}", path.display())))?;
        // Files written by `echo` or editors end in a newline that is not part of the secret.
        return non_empty(
            Secret::new(text.trim_end_matches(['\n', '\r'])),
            f.span().start,
            &key,
            loc,
        )
        .map(Some);
    }
    if let Some(v) = env {
        let key = format!("{key}_env");
        let value = std::env::var(v.get_ref()).map_err(|_| {
            loc.error(
                v.span().start,
                &key,
                format!("environment variable {} is not set", v.get_ref()),
            )
        })?;
        return non_empty(Secret::new(value), v.span().start, &key, loc).map(Some);
    }
    Ok(None)
}

fn non_empty(s: Secret, offset: usize, key: &str, loc: &Locator<'_>) -> Result<Secret, ConfigError> {
    if s.expose().trim().is_empty() {
        return Err(loc.error(offset, key, "the secret is empty".into()));
    }
    Ok(s)
}

/// systemd's `LoadCredential=` puts secrets in `$CREDENTIALS_DIRECTORY`; let `_file` keys say so.
/// From a shell, `--credentials-dir` says where the files are.
fn expand_credentials_dir(path: &str, given: Option<&Path>) -> Result<PathBuf, String> {
    const VAR: &str = "${CREDENTIALS_DIRECTORY}";
    if !path.contains(VAR) {
        return Ok(PathBuf::from(path));
    }
    let dir = match (given, std::env::var_os("CREDENTIALS_DIRECTORY")) {
        (Some(dir), _) => dir.to_owned(),
        (None, Some(dir)) => PathBuf::from(dir),
        (None, None) => {
            return Err(format!(
                "{path} uses {VAR}, which is not set here (systemd sets it for the service, \
                 from LoadCredential=); to read these files from a shell, add \
                 --credentials-dir DIR (e.g. /etc/linkwatch/credentials)"
            ));
        }
    };
    Ok(PathBuf::from(path.replace(VAR, &dir.to_string_lossy())))
}

fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() { p.to_owned() } else { base.join(p) }
}

fn parse_url(u: &Spanned<String>, key: &str, loc: &Locator<'_>) -> Result<Url, ConfigError> {
    let url = Url::parse(u.get_ref()).map_err(|e| loc.error(u.span().start, key, format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(loc.error(u.span().start, key, "must be an http:// or https:// URL".into()));
    }
    Ok(url)
}

fn parse_base_url(u: &Spanned<String>, loc: &Locator<'_>) -> Result<Url, ConfigError> {
    instances::base_url(u, Api::CloudManager, "cloud_manager.base_url", loc)
}

/// Joining paths onto a base needs a trailing slash, and users write it both ways.
fn with_trailing_slash(mut url: Url) -> Url {
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    url
}

fn default_token_url(base: &Url) -> Url {
    let mut url = base.clone();
    url.set_path("/api/oauth/token");
    url.set_query(None);
    url
}

#[cfg(test)]
mod tests;
