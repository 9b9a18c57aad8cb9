//! `[atlas]` and `[[migration]]`: the Atlas live migrations to follow after a link is `SYNCED`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use toml::Spanned;

use super::instances::{self, Api, Endpoint};
use super::{ConfigError, Credential, Locator, Org, OrgId, Shared, credential_from, default_token_url, parse_url, raw};
use super::{at_least, with_trailing_slash};

pub const DEFAULT_ATLAS_URL: &str = "https://cloud.mongodb.com/api/atlas/v2";

/// The resource version of the live-migration read (`getPushMigration`, "Return One Migration
/// Job") that linkwatch asks for unless `[atlas] api_version` says otherwise. The published v2
/// specification, as the Atlas CLI's generated `atlas api cloudMigrationService
/// getPushMigration` reference prints it (v1.38 to v1.45: `--version` options "2023-01-01",
/// default "2023-01-01"), and the spec in MongoDB's Go SDK (`atlas-sdk-go`,
/// `openapi/atlas-api-transformed.yaml`) list no newer version of this read: the current one
/// is still 2023-01-01. When Atlas announces its retirement (`Deprecation`/`Sunset` headers)
/// linkwatch says so (`api_deprecated`), and the key lets a team move before an update.
pub const DEFAULT_API_VERSION: &str = "2023-01-01";

/// How Atlas is asked about live migrations.
#[derive(Debug, Clone)]
pub struct Atlas {
    pub base_url: Url,
    /// The resource version asked for (`Accept: application/vnd.atlas.{api_version}+json`);
    /// [`DEFAULT_API_VERSION`] unless set.
    pub api_version: String,
    /// Where a service account gets tokens; defaults to `{origin}/api/oauth/token`.
    pub token_url: Url,
    /// The key of migrations that set none (nor a `[[credentials]]` set).
    pub credential: Option<Arc<Credential>>,
    /// How often each migration is checked.
    pub every: Duration,
    /// How long Atlas waits for a cutover once a migration is ready (120 h unless extended in
    /// the Atlas UI, which the API does not show).
    pub cutover_window: Duration,
    /// How much time left to the estimated deadline each warning is sent at, longest first.
    pub deadline_warnings: Vec<Duration>,
}

/// One live migration: which org's link it follows, and where Atlas keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveMigration {
    pub name: String,
    /// The source org (its link is the one the migration pushes through).
    pub org: OrgId,
    /// The Atlas project (24 hex).
    pub group_id: String,
    /// The `liveMigrationId` that create returned (24 hex).
    pub id: String,
    /// Lag above this for 3 checks in a row is `lag_high`; `None`: no lag alerts.
    pub lag_alert: Option<Duration>,
    /// The Atlas it is read at (`[atlas]`'s unless it says).
    pub endpoint: Arc<Endpoint>,
    /// The Atlas key of its target organization (`[atlas]`'s unless it says).
    pub credential: Arc<Credential>,
}

pub(super) fn atlas(
    raw: Option<raw::Atlas>,
    migrations: Vec<raw::LiveMigration>,
    orgs: &[Org],
    shared: &mut Shared<'_>,
    loc: &Locator<'_>,
) -> Result<(Option<Atlas>, Vec<LiveMigration>), ConfigError> {
    // Without [atlas], migrations that carry their own key (or name a set) use its defaults.
    let a = match raw {
        Some(a) => a,
        None if migrations.is_empty() => return Ok((None, Vec::new())),
        None => raw::Atlas::default(),
    };
    let (atlas, credential) = atlas_table(&a, loc)?;
    let endpoint = Endpoint {
        base_url: atlas.base_url.clone(),
        token_url: atlas.token_url.clone(),
    };
    let defaults = instances::Defaults {
        api: Api::Atlas,
        table: "atlas",
        endpoint: &endpoint,
        credential: &credential,
    };
    let mut out: Vec<LiveMigration> = Vec::with_capacity(migrations.len());
    for (i, m) in migrations.into_iter().enumerate() {
        let key = format!("migration[{i}]");
        match live_migration(&key, m, orgs, &out, &defaults, shared, loc) {
            Ok(Some(migration)) => out.push(migration),
            Ok(None) => {}
            Err(e) => loc.report(e),
        }
    }
    Ok((Some(atlas), out))
}

/// `[atlas]`: where, with which key (`Err`: a mistake in it, reported), how often, and the
/// cutover window with its warnings.
#[allow(clippy::type_complexity)]
fn atlas_table(a: &raw::Atlas, loc: &Locator<'_>) -> Result<(Atlas, Result<Option<Arc<Credential>>, ()>), ConfigError> {
    let base_url = match &a.base_url {
        Some(u) => instances::base_url(u, Api::Atlas, "atlas.base_url", loc)?,
        None => with_trailing_slash(Url::parse(DEFAULT_ATLAS_URL).expect("the default Atlas URL is valid")),
    };
    let token_url = match &a.token_url {
        Some(u) => parse_url(u, "atlas.token_url", loc)?,
        None => default_token_url(&base_url),
    };
    let credential = match credential_from(&a.credential(), "atlas", loc) {
        Ok(c) => Ok(c.map(Arc::new)),
        Err(e) => {
            loc.report(e);
            Err(())
        }
    };
    let second = Duration::from_secs(1);
    let every = at_least(
        a.every.as_ref(),
        second,
        "1s",
        Duration::from_secs(60),
        "atlas.every",
        loc,
    )?;
    let cutover_window = at_least(
        a.cutover_window.as_ref(),
        second,
        "1s",
        Duration::from_secs(120 * 3600),
        "atlas.cutover_window",
        loc,
    )?;
    let api_version = api_version(a, loc)?;
    let atlas = Atlas {
        base_url,
        api_version,
        token_url,
        credential: credential.clone().ok().flatten(),
        every,
        deadline_warnings: deadline_warnings(a, cutover_window, loc)?,
        cutover_window,
    };
    Ok((atlas, credential))
}

/// `[atlas] api_version`, or [`DEFAULT_API_VERSION`].
fn api_version(a: &raw::Atlas, loc: &Locator<'_>) -> Result<String, ConfigError> {
    Ok(match &a.api_version {
        None => DEFAULT_API_VERSION.to_owned(),
        Some(v) => {
            let text = v.get_ref().trim();
            // A version is a date; anything else would make a header Atlas answers with 406.
            if chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_err() || text.len() != 10 {
                return Err(loc.error(
                    v.span().start,
                    "atlas.api_version",
                    format!(
                        "an Atlas API version is a date such as \"{DEFAULT_API_VERSION}\", not {:?}",
                        crate::outside::text(text, 40)
                    ),
                ));
            }
            text.to_owned()
        }
    })
}

/// The warnings before a cutover deadline, longest first (default 24 h, 6 h, 1 h), each within
/// the window.
fn deadline_warnings(
    a: &raw::Atlas,
    cutover_window: Duration,
    loc: &Locator<'_>,
) -> Result<Vec<Duration>, ConfigError> {
    let mut warnings = match &a.deadline_warnings {
        None => [24, 6, 1].iter().map(|h| Duration::from_secs(h * 3600)).collect(),
        Some(list) => {
            let mut out = Vec::new();
            for w in list.get_ref() {
                if w.get_ref().0.is_zero() || w.get_ref().0 >= cutover_window {
                    return Err(loc.error(
                        w.span().start,
                        "atlas.deadline_warnings",
                        format!(
                            "each warning must be more than 0s and less than cutover_window ({})",
                            humantime::format_duration(cutover_window)
                        ),
                    ));
                }
                out.push(w.get_ref().0);
            }
            out
        }
    };
    warnings.sort_by(|a, b| b.cmp(a));
    warnings.dedup();
    Ok(warnings)
}

/// One `[[migration]]` (`key` is where it is), given the ones before it (`earlier`): a unique
/// name and id, a configured source org, 24-hex ids, where and with which key it is read.
/// `None`: its only fault was reported already.
fn live_migration(
    key: &str,
    m: raw::LiveMigration,
    orgs: &[Org],
    earlier: &[LiveMigration],
    defaults: &instances::Defaults<'_>,
    shared: &mut Shared<'_>,
    loc: &Locator<'_>,
) -> Result<Option<LiveMigration>, ConfigError> {
    let name = migration_name(&m.name, key, earlier, loc)?;
    let org = source_org(&m.org, key, orgs, loc)?;
    let group_id = hex_id(&m.group_id, key, "group_id", "an Atlas project id", loc)?;
    let id = migration_id(&m.id, key, earlier, loc)?;
    let lag_alert = lag_alert(m.lag_alert.as_ref(), key, loc)?;
    let own = instances::Own {
        base_url: m.base_url.as_ref(),
        token_url: m.token_url.as_ref(),
        credentials: m.credentials.as_ref(),
        credential: credential_from(&m.credential(), key, loc)?,
    };
    let Some((endpoint, credential)) = shared.resolve(key, m.name.span().start, own, defaults, loc)? else {
        return Ok(None);
    };
    Ok(Some(LiveMigration {
        name,
        org: org.id.clone(),
        group_id,
        id,
        lag_alert,
        endpoint,
        credential,
    }))
}

/// A migration's name: not empty, and not one an earlier migration has.
fn migration_name(
    name: &Spanned<String>,
    key: &str,
    earlier: &[LiveMigration],
    loc: &Locator<'_>,
) -> Result<String, ConfigError> {
    let name_text = name.get_ref().trim().to_owned();
    if name_text.is_empty() {
        return Err(loc.error(name.span().start, &format!("{key}.name"), "must not be empty".into()));
    }
    if earlier.iter().any(|x| x.name == name_text) {
        return Err(loc.error(
            name.span().start,
            &format!("{key}.name"),
            format!("migration name \"{name_text}\" is used twice; names must be unique"),
        ));
    }
    Ok(name_text)
}

/// The configured org (by name or id) whose link the migration pushes through; an org that
/// was reported is not reported again here.
fn source_org<'o>(
    wanted: &Spanned<String>,
    key: &str,
    orgs: &'o [Org],
    loc: &Locator<'_>,
) -> Result<&'o Org, ConfigError> {
    let text = wanted.get_ref().trim();
    orgs.iter()
        .find(|o| o.name == text || o.id.as_str() == text)
        .ok_or_else(|| {
            if loc.was_reported(text) {
                return loc.already_reported();
            }
            loc.error(
                wanted.span().start,
                &format!("{key}.org"),
                format!("no [[org]] has the name or id \"{text}\""),
            )
        })
}

/// An Atlas id (`what`, at `key.field`): 24 hex characters, lower-cased.
fn hex_id(v: &Spanned<String>, key: &str, field: &str, what: &str, loc: &Locator<'_>) -> Result<String, ConfigError> {
    let s = v.get_ref().trim();
    if s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(loc.error(
            v.span().start,
            &format!("{key}.{field}"),
            format!("\"{s}\" is not {what}: expected 24 hex characters"),
        ))
    }
}

/// The `liveMigrationId`: an Atlas id that no earlier migration follows.
fn migration_id(
    id: &Spanned<String>,
    key: &str,
    earlier: &[LiveMigration],
    loc: &Locator<'_>,
) -> Result<String, ConfigError> {
    let text = hex_id(
        id,
        key,
        "id",
        "a live migration id (the `_id` that creating the migration returned)",
        loc,
    )?;
    if let Some(dup) = earlier.iter().find(|x| x.id == text) {
        return Err(loc.error(
            id.span().start,
            &format!("{key}.id"),
            format!("live migration {text} is already followed as \"{}\"", dup.name),
        ));
    }
    Ok(text)
}

/// `lag_alert`: at least a second, or `None` for no lag alerts.
fn lag_alert(
    value: Option<&Spanned<super::HumanDuration>>,
    key: &str,
    loc: &Locator<'_>,
) -> Result<Option<Duration>, ConfigError> {
    match value {
        Some(l) if l.get_ref().0 < Duration::from_secs(1) => Err(loc.error(
            l.span().start,
            &format!("{key}.lag_alert"),
            "must be at least 1s (the lag is never 0 in practice)".into(),
        )),
        Some(l) => Ok(Some(l.get_ref().0)),
        None => Ok(None),
    }
}
