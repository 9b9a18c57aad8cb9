//! Several customers in one file: where each org (Cloud Manager / Ops Manager) and each live
//! migration (Atlas) is asked, and with which key. An `[[org]]` or `[[migration]]` may set its own
//! `base_url`, `token_url` and key, or name a `[[credentials]]` set that holds them for many;
//! what it leaves out comes from `[cloud_manager]` or `[atlas]`. Orgs with the same address and
//! key share one [`Endpoint`] and one credential, and so one Digest session or token; different
//! ones never share.

use std::sync::Arc;

use reqwest::Url;
use toml::Spanned;

use super::{ConfigError, Credential, Credentials, Locator, credential_from, default_token_url, parse_url, raw};

/// Where one Cloud Manager / Ops Manager, or one Atlas, is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Ends in `/api/public/v1.0/` (Cloud/Ops Manager) or `/api/atlas/v2/` (Atlas).
    pub base_url: Url,
    /// Where a service account gets its tokens.
    pub token_url: Url,
}

impl Endpoint {
    /// The base URL as written, for `check`, the page and `/metrics`.
    pub fn label(&self) -> &str {
        self.base_url.as_str().trim_end_matches('/')
    }
}

/// Which API a base URL must point at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    CloudManager,
    Atlas,
}

impl Api {
    /// The path every base URL of this API ends with (after the trailing slash is added).
    pub fn path(self) -> &'static str {
        match self {
            Api::CloudManager => "/api/public/v1.0/",
            Api::Atlas => "/api/atlas/v2/",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Api::CloudManager => "Cloud Manager / Ops Manager",
            Api::Atlas => "Atlas Administration API v2",
        }
    }
}

/// A `base_url`: an http(s) URL ending in the API's path. Without the path every org would
/// read as having no migration link (each answer a 404), so it is a mistake here.
pub(super) fn base_url(u: &Spanned<String>, api: Api, key: &str, loc: &Locator<'_>) -> Result<Url, ConfigError> {
    let url = super::with_trailing_slash(parse_url(u, key, loc)?);
    // A login here would be shown wherever the instance is named (check, logs, the page); the
    // key is the credential.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(loc.error(
            u.span().start,
            key,
            "has a user or password in it; take it out (the API key or service account is the login)".into(),
        ));
    }
    if !url.path().ends_with(api.path()) {
        let trimmed = api.path().trim_end_matches('/');
        return Err(loc.error(
            u.span().start,
            key,
            format!(
                "the {} base URL ends in `{trimmed}` (e.g. \"https://{}{trimmed}\"); this one's path is `{}`",
                api.name(),
                url.host_str().unwrap_or("host"),
                url.path()
            ),
        ));
    }
    Ok(url)
}

/// The distinct endpoints of the file.
#[derive(Default)]
pub(super) struct Endpoints(Vec<Arc<Endpoint>>);

impl Endpoints {
    pub(super) fn share(&mut self, e: Endpoint) -> Arc<Endpoint> {
        if let Some(existing) = self.0.iter().find(|x| ***x == e) {
            return existing.clone();
        }
        let e = Arc::new(e);
        self.0.push(e.clone());
        e
    }
}

/// One `[[credentials]]` set.
pub(super) struct CredentialSet {
    name: String,
    base_url: Option<Spanned<String>>,
    token_url: Option<Spanned<String>>,
    /// `Err`: its key has a mistake, already reported.
    credential: Result<Option<Arc<Credential>>, ()>,
}

/// The `[[credentials]]` sets, by unique name; a set with a mistake in its key is kept (so that
/// what names it is not reported again) and fails what uses it.
pub(super) fn credential_sets(
    raw: Vec<raw::CredentialSet>,
    credentials: &mut Credentials,
    loc: &Locator<'_>,
) -> Vec<CredentialSet> {
    let mut sets: Vec<CredentialSet> = Vec::with_capacity(raw.len());
    for (i, s) in raw.into_iter().enumerate() {
        let key = format!("credentials[{i}]");
        let name = s.name.get_ref().trim().to_owned();
        if name.is_empty() || sets.iter().any(|x| x.name == name) {
            let why = if name.is_empty() {
                "must not be empty".to_owned()
            } else {
                format!("[[credentials]] name \"{name}\" is used twice; names must be unique")
            };
            loc.report(loc.error(s.name.span().start, &format!("{key}.name"), why));
            loc.broken(&format!("credentials:{name}"));
            continue;
        }
        let credential = match credential_from(&s.credential(), &key, loc) {
            Ok(c) => Ok(c.map(|c| credentials.share(c))),
            Err(e) => {
                loc.report(e);
                Err(())
            }
        };
        sets.push(CredentialSet {
            name,
            base_url: s.base_url,
            token_url: s.token_url,
            credential,
        });
    }
    sets
}

/// What an `[[org]]` or `[[migration]]` says about where and how it is asked.
pub(super) struct Own<'r> {
    pub base_url: Option<&'r Spanned<String>>,
    pub token_url: Option<&'r Spanned<String>>,
    pub credentials: Option<&'r Spanned<String>>,
    pub credential: Option<Credential>,
}

/// The defaults of `[cloud_manager]` or `[atlas]`.
pub(super) struct Defaults<'d> {
    pub api: Api,
    /// `cloud_manager` or `atlas`, for messages.
    pub table: &'static str,
    pub endpoint: &'d Endpoint,
    pub credential: &'d Result<Option<Arc<Credential>>, ()>,
}

/// Where an org or a migration is asked, and with which key: one session each.
pub type Access = (Arc<Endpoint>, Arc<Credential>);

/// What orgs and migrations share while they are read: the `[[credentials]]` sets, and the
/// distinct endpoints and credentials.
pub(super) struct Shared<'a> {
    pub sets: &'a [CredentialSet],
    pub endpoints: &'a mut Endpoints,
    pub credentials: &'a mut Credentials,
}

impl Shared<'_> {
    /// Where and with which key `key` (an org or a migration) is asked: its own keys, else its
    /// set's, else the defaults. `Ok(None)`: its only fault was reported already (a set or
    /// default key with a mistake).
    pub(super) fn resolve(
        &mut self,
        key: &str,
        at: usize,
        own: Own<'_>,
        defaults: &Defaults<'_>,
        loc: &Locator<'_>,
    ) -> Result<Option<Access>, ConfigError> {
        resolve(key, at, own, self, defaults, loc)
    }
}

fn resolve(
    key: &str,
    at: usize,
    own: Own<'_>,
    shared: &mut Shared<'_>,
    defaults: &Defaults<'_>,
    loc: &Locator<'_>,
) -> Result<Option<Access>, ConfigError> {
    let set = match own.credentials {
        None => None,
        Some(name) => match named_set(name, shared.sets, key, loc)? {
            Some(s) => Some(s),
            None => return Ok(None),
        },
    };
    let (base, token, where_) = address(key, &own, set);
    let endpoint = endpoint(base, token, &where_, key, defaults, loc)?;
    let credential = match (own.credential, set.map(|s| &s.credential)) {
        (Some(c), _) => shared.credentials.share(c),
        (None, Some(Ok(Some(c)))) => c.clone(),
        (None, Some(Err(()))) => return Ok(None),
        // Another instance never gets the default key: it belongs to the default's instance,
        // and a service account would post its secret to the other's token endpoint.
        (None, Some(Ok(None)) | None) if base.is_some() => {
            return Err(no_own_key(key, at, &endpoint, defaults, loc));
        }
        (None, Some(Ok(None)) | None) => match defaults.credential {
            Ok(Some(c)) => c.clone(),
            Err(()) => return Ok(None),
            Ok(None) => return Err(no_credential(key, at, defaults, loc)),
        },
    };
    Ok(Some((shared.endpoints.share(endpoint), credential)))
}

/// The `[[credentials]]` set that `name` names; `Ok(None)` when that set was reported already.
fn named_set<'s>(
    name: &Spanned<String>,
    sets: &'s [CredentialSet],
    key: &str,
    loc: &Locator<'_>,
) -> Result<Option<&'s CredentialSet>, ConfigError> {
    let wanted = name.get_ref().trim();
    match sets.iter().find(|s| s.name == wanted) {
        Some(s) => Ok(Some(s)),
        None if loc.was_reported(&format!("credentials:{wanted}")) => Ok(None),
        None => {
            let names: Vec<&str> = sets.iter().map(|s| s.name.as_str()).collect();
            Err(loc.error(
                name.span().start,
                &format!("{key}.credentials"),
                format!(
                    "no [[credentials]] named \"{wanted}\" ({})",
                    if names.is_empty() {
                        "the file has none".to_owned()
                    } else {
                        format!("sets: {}", names.join(", "))
                    }
                ),
            ))
        }
    }
}

/// The address: the org's own, else its set's, else the default (`None`); a token URL from the
/// same place, else derived from that address. With the key a mistaken address is reported at.
fn address<'r>(
    key: &str,
    own: &Own<'r>,
    set: Option<&'r CredentialSet>,
) -> (Option<&'r Spanned<String>>, Option<&'r Spanned<String>>, String) {
    match (own.base_url, set.and_then(|s| s.base_url.as_ref())) {
        (Some(u), _) => (Some(u), own.token_url, format!("{key}.base_url")),
        (None, Some(u)) => (
            Some(u),
            own.token_url.or(set.and_then(|s| s.token_url.as_ref())),
            format!("credentials \"{}\".base_url", set.map_or("", |s| s.name.as_str())),
        ),
        (None, None) => (
            None,
            own.token_url.or(set.and_then(|s| s.token_url.as_ref())),
            String::new(),
        ),
    }
}

/// The endpoint of an address and token URL chosen by [`address`]; what they leave out is the
/// default's.
fn endpoint(
    base: Option<&Spanned<String>>,
    token: Option<&Spanned<String>>,
    where_: &str,
    key: &str,
    defaults: &Defaults<'_>,
    loc: &Locator<'_>,
) -> Result<Endpoint, ConfigError> {
    Ok(match base {
        Some(u) => {
            let base_url = base_url(u, defaults.api, where_, loc)?;
            let token_url = match token {
                Some(t) => parse_url(t, &format!("{key}.token_url"), loc)?,
                None => default_token_url(&base_url),
            };
            Endpoint { base_url, token_url }
        }
        None => match token {
            Some(t) => Endpoint {
                base_url: defaults.endpoint.base_url.clone(),
                token_url: parse_url(t, &format!("{key}.token_url"), loc)?,
            },
            None => defaults.endpoint.clone(),
        },
    })
}

/// `key` is asked at an instance of its own but names no key for it.
fn no_own_key(key: &str, at: usize, endpoint: &Endpoint, defaults: &Defaults<'_>, loc: &Locator<'_>) -> ConfigError {
    loc.error(
        at,
        key,
        format!(
            "is asked at {} but names no key of its own: set public_key and private_key (or client_id \
             and client_secret) here or in its [[credentials]] set; [{}]'s key is for {}",
            endpoint.base_url.as_str().trim_end_matches('/'),
            defaults.table,
            defaults.endpoint.label()
        ),
    )
}

/// `key` names no key, and the defaults have none either.
fn no_credential(key: &str, at: usize, defaults: &Defaults<'_>, loc: &Locator<'_>) -> ConfigError {
    loc.error(
        at,
        key,
        format!(
            "no credential: set public_key and private_key (or client_id and client_secret) \
             in [{}], in a [[credentials]] set it names, or in this table",
            defaults.table
        ),
    )
}
