//! What one check produced: a status, or a classified failure. The client makes these, `detect`
//! reads them and the store records them; this module depends on none of the three.

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod refusal;

/// The most characters a failure's detail (and its error code) keeps. A server's `detail`, a
/// proxy's error page or a transport error chain can be any length; capped here, where failures
/// are made, everything downstream (the `failed_checks` rows, event payloads, Slack sections
/// limited to 3,000 characters, log lines) inherits a size it can hold.
pub const DETAIL_MAX_CHARS: usize = 300;

/// A status string (any string: `SYNCED` and `NOT_SYNCED` are just the documented ones), or why
/// there is none.
pub type CheckOutcome = Result<String, Failure>;

/// What Atlas says about a live migration. Every field of its answer is optional. Here, with
/// the link's outcome, so that the pure decisions and the store read it without the client.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveMigrationReading {
    /// `NEW`, `WORKING`, `FAILED`, `COMPLETE`, `EXPIRED` or any other word: a state, not an error.
    pub status: String,
    /// `None` when the answer left it out: unknown, not "not ready" (every field of Atlas's
    /// answer is optional, and one answer without it must not look like readiness lost).
    pub ready_for_cutover: Option<bool>,
    /// Replication lag; absent or null outside an active migration before cutover.
    pub lag_s: Option<i64>,
    /// The migration host(s) Atlas uses (`migrationHosts`); empty when not reported.
    pub migration_hosts: Vec<String>,
    /// Fields the answer had but not in the spec's type, each said in a few words: recorded as
    /// unknown (`None`), logged, and never allowed to hide the status.
    pub unreadable: Vec<String>,
}

impl LiveMigrationReading {
    /// A reading of `status` alone, every other field unknown.
    pub fn of_status(status: impl Into<String>) -> Self {
        LiveMigrationReading {
            status: status.into(),
            ready_for_cutover: None,
            lag_s: None,
            migration_hosts: Vec::new(),
            unreadable: Vec::new(),
        }
    }
}

/// An API's announcement that the resource version linkwatch asks for will be retired: the
/// `Deprecation` and `Sunset` response headers (Atlas's "Versioned Atlas Administration API
/// Overview"), whatever the answer's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiDeprecation {
    /// Which API: `atlas`.
    pub api: String,
    /// The API instance (its base URL).
    pub base_url: String,
    /// The resource version asked for (`2023-01-01`).
    pub version: String,
    /// The `Deprecation` header as sent (a date, `@` and a Unix time, or `true`).
    pub deprecation: Option<String>,
    /// The `Sunset` header as sent (an HTTP date).
    pub sunset: Option<String>,
    /// The `Sunset` header read as a time, when it is one.
    pub sunset_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A live migration's reading, or why there is none.
pub type LiveMigrationOutcome = Result<LiveMigrationReading, Failure>;

/// Why a check produced no status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub class: FailureClass,
    pub http_status: Option<u16>,
    /// Cloud Manager's `errorCode` (or OAuth's `error`), when the body had one.
    pub error_code: Option<String>,
    /// The server's `detail`, or the start of a body that was not JSON, or the transport error;
    /// at most [`DETAIL_MAX_CHARS`] characters (see [`Failure::new`]).
    pub detail: String,
    /// The answer's `parameters` (for `ORG_REQUIRES_ACCESS_LIST`, the caller's IP address that
    /// has to be added), each through the gate for outside text; at most [`MAX_PARAMETERS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<String>,
    /// `Retry-After`, when the server sent one: the next check waits at least this long.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

/// The most `parameters` a failure keeps, and the characters of each.
pub const MAX_PARAMETERS: usize = 4;
pub const PARAMETER_MAX_CHARS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    Unauthorized,
    Forbidden,
    /// The org does not exist (or is an Atlas org).
    NotFound,
    /// A 404 that does not name the org: most likely the org has no migration link.
    NoLink,
    RateLimited,
    ServerError,
    Timeout,
    Connection,
    /// An answer we could not read: not JSON, no `status`, too large.
    Malformed,
    /// The API refused the version linkwatch asked for (406 unknown, 410 retired): only a newer
    /// linkwatch can fix it.
    ApiVersion,
    /// Any other HTTP error (400, 402, ...).
    Http,
    /// The OAuth token endpoint issued no token (a wrong `token_url` answers 404): not the
    /// org's fault, whatever code it answered with.
    Token,
}

/// What a token endpoint's failure means, for both APIs.
const TOKEN: &str = "the OAuth token endpoint issued no token for the service account: check token_url \
                     (by default the base URL's origin + /api/oauth/token)";

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Unauthorized => "unauthorized",
            FailureClass::Forbidden => "forbidden",
            FailureClass::NotFound => "not_found",
            FailureClass::NoLink => "no_link",
            FailureClass::RateLimited => "rate_limited",
            FailureClass::ServerError => "server_error",
            FailureClass::Timeout => "timeout",
            FailureClass::Connection => "connection",
            FailureClass::Malformed => "malformed",
            FailureClass::ApiVersion => "api_version",
            FailureClass::Http => "http",
            FailureClass::Token => "token",
        }
    }
}

impl Failure {
    /// A failure whose `detail` and `error_code` are cut to [`DETAIL_MAX_CHARS`] characters.
    pub fn new(
        class: FailureClass,
        http_status: Option<u16>,
        error_code: Option<String>,
        detail: impl Into<String>,
    ) -> Self {
        Failure {
            class,
            http_status,
            error_code: error_code.map(cap),
            detail: cap(detail.into()),
            parameters: Vec::new(),
            retry_after: None,
        }
    }

    /// This failure with the answer's `parameters`, each gated and cut.
    pub fn with_parameters<'a>(mut self, parameters: impl IntoIterator<Item = &'a str>) -> Self {
        self.parameters = parameters
            .into_iter()
            .map(|p| crate::outside::text(p, PARAMETER_MAX_CHARS))
            .filter(|p| !p.trim().is_empty())
            .take(MAX_PARAMETERS)
            .collect();
        self
    }

    /// Puts `prefix` before the detail, keeping the cap.
    pub fn prefix_detail(&mut self, prefix: &str) {
        self.detail = cap(format!("{prefix}{}", self.detail));
    }

    /// What the failure means, in plain words, for logs and messages: by its `errorCode` first,
    /// its HTTP code second.
    pub fn explain(&self) -> String {
        if let Some(text) = self.explain_code("Cloud Manager") {
            return text;
        }
        let what = match self.class {
            FailureClass::Unauthorized => {
                "Cloud Manager rejected the credentials: wrong key, or the key lacks the Organization Owner role"
            }
            // Without an errorCode a 403 says little; an access list is the usual cause.
            FailureClass::Forbidden => {
                "Cloud Manager refused access, most often because this host's IP address is not on the API key's access list"
            }
            FailureClass::NotFound => "Cloud Manager does not know this org (wrong id, or an Atlas org id)",
            FailureClass::NoLink => "the org has no migration link (was it removed?)",
            FailureClass::RateLimited => "Cloud Manager is rate limiting this key",
            FailureClass::ServerError => "Cloud Manager had a server error",
            FailureClass::Timeout => "Cloud Manager did not answer in time",
            FailureClass::Connection => "could not connect to Cloud Manager",
            FailureClass::Malformed => "Cloud Manager's answer could not be read",
            FailureClass::ApiVersion => "Cloud Manager refused the API version linkwatch asks for",
            FailureClass::Http => "Cloud Manager refused the request",
            FailureClass::Token => TOKEN,
        };
        self.with_codes(what)
    }

    /// The failure of a live migration's check, in plain words, with its codes and detail.
    pub fn explain_atlas(&self) -> String {
        if let Some(text) = self.explain_code("Atlas") {
            return text;
        }
        let what = match self.class {
            FailureClass::Unauthorized => {
                "Atlas rejected the credentials ([atlas]): wrong key, or the key is not a member of the project's organization"
            }
            FailureClass::Forbidden => {
                "Atlas refused access: this host's IP address is not on the API key's access list, or the key lacks access to the project"
            }
            FailureClass::NotFound | FailureClass::NoLink => {
                "Atlas does not know this live migration: check group_id and id (the migration may have been deleted)"
            }
            FailureClass::RateLimited => "Atlas is rate limiting this key",
            FailureClass::ServerError => "Atlas had a server error",
            FailureClass::Timeout => "Atlas did not answer in time",
            FailureClass::Connection => "could not connect to Atlas",
            FailureClass::Malformed => "Atlas's answer could not be read",
            // 410: the version was retired; 406: it was not recognised, which for a pinned
            // version means something between (a proxy) changed the Accept header.
            FailureClass::ApiVersion if self.http_status == Some(410) => {
                "Atlas has retired the API version linkwatch asks for ([atlas] api_version): set a current one, or update linkwatch"
            }
            FailureClass::ApiVersion => {
                "Atlas did not accept the API version linkwatch asks for ([atlas] api_version): \
                 check the version and that no proxy rewrites the Accept header"
            }
            FailureClass::Http => "Atlas refused the request",
            FailureClass::Token => TOKEN,
        };
        self.with_codes(what)
    }

    /// The explanation of a refusal by its `errorCode`: the table's words for a documented code,
    /// the code and detail as sent for another. `None` without a code, and for OAuth's own
    /// lowercase `error` codes (RFC 6749: `invalid_client`, ...), which the class explains.
    fn explain_code(&self, api: &str) -> Option<String> {
        let code = self.error_code.as_deref()?;
        if !code.chars().any(|c| c.is_ascii_uppercase()) {
            return None;
        }
        // A version refusal is explained by what linkwatch asked for, whatever its code, and so
        // are the codes whose meaning depends on what was asked.
        if self.class == FailureClass::ApiVersion || refusal::EXPLAINED_BY_WHAT_WAS_ASKED.contains(&code) {
            return None;
        }
        let what = match refusal::find(code) {
            Some(r) => format!(
                "{api} refused the request: {}; {}",
                r.what_with(self.parameters.first().map(String::as_str)),
                r.todo
            ),
            None if self.parameters.is_empty() => {
                format!("{api} refused the request with an error code linkwatch does not know")
            }
            None => format!(
                "{api} refused the request with an error code linkwatch does not know (parameters: {})",
                self.parameters.join(", ")
            ),
        };
        Some(self.with_codes(&what))
    }

    fn with_codes(&self, what: &str) -> String {
        let mut s = what.to_owned();
        match (self.http_status, &self.error_code) {
            (Some(code), Some(ec)) => s.push_str(&format!(" (HTTP {code} {ec})")),
            (Some(code), None) => s.push_str(&format!(" (HTTP {code})")),
            (None, Some(ec)) => s.push_str(&format!(" ({ec})")),
            (None, None) => {}
        }
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

/// `text` through the gate for outside text ([`crate::outside::text`]): no NUL or control
/// characters, at most [`DETAIL_MAX_CHARS`] characters, a cut marked with "…".
pub fn cap(text: String) -> String {
    crate::outside::text(&text, DETAIL_MAX_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_and_error_codes_are_capped_on_character_boundaries() {
        let f = Failure::new(
            FailureClass::ServerError,
            Some(500),
            Some("E".repeat(10_000)),
            "é".repeat(10_000),
        );
        assert_eq!(f.detail.chars().count(), DETAIL_MAX_CHARS);
        assert!(f.detail.starts_with("éé") && f.detail.ends_with('…'));
        assert_eq!(f.error_code.unwrap().chars().count(), DETAIL_MAX_CHARS);
        let exact = "x".repeat(DETAIL_MAX_CHARS);
        assert_eq!(cap(exact.clone()), exact, "at the cap, nothing is cut");
        let mut f = Failure::new(FailureClass::Http, None, None, "y".repeat(DETAIL_MAX_CHARS));
        f.prefix_detail("token request failed: ");
        assert!(f.detail.starts_with("token request failed: yyy"));
        assert_eq!(f.detail.chars().count(), DETAIL_MAX_CHARS);
        let f = Failure::new(FailureClass::ServerError, Some(500), Some("E\0X".into()), "a\0b");
        assert_eq!(
            (f.error_code.as_deref(), f.detail.as_str()),
            (Some("EX"), "ab"),
            "through the gate"
        );
    }
}
