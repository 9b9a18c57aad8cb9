//! The status page and its JSON API, served beside `/metrics` and `/healthz` on `[http] listen`:
//! `GET /` (every org and the channels that need a look), `GET /org/{id or name}` (a 30-day
//! timeline drawn as SVG, the changes, recent failed checks), `GET /api/v1/status` and
//! `GET /api/v1/orgs/{id or name}/changes`, `GET /api/v1/migrations/{id or name}` (a live
//! migration with its changes and lag series). Live migrations are listed on `/` and charted on
//! their source org's page. Read-only: other methods get 405.
//!
//! Each request reads the database once into a view (`view.rs`), which the HTML (`html.rs`,
//! maud: escaped by default) and the JSON are both made from, so the two always agree.

mod auth;
mod filter;
mod format;
mod html;
mod lag;
mod standing;
mod timeline;
mod view;

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::Uri;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;

pub use auth::{Login, require_login};
use filter::{Filter, Shown};
pub use standing::{LiveMigrationStage, OrgStanding};
pub use view::{ChangesView, ChannelView, LiveMigrationView, OrgView, StatusView};

use crate::clock::Clock;
use crate::config::{Config, Org};
use crate::message::Links;
use crate::metrics::Metrics;
use crate::store::Store;

/// How often the page reloads itself, in seconds.
const REFRESH_SECS: u32 = 30;

/// What the current config watches: its orgs, live migrations and channels. It follows
/// reloads. The orgs are the config's own (shared, not copied: at 10,000 orgs a copy of ids
/// and names was a megabyte and more).
#[derive(Debug, Default)]
pub struct Configured {
    orgs: Arc<[Org]>,
    /// Indices into `orgs`, sorted by id, for [`Configured::contains`].
    by_id: Vec<u32>,
    pub migrations: Vec<ConfiguredLiveMigration>,
    pub channels: Vec<String>,
    /// This instance's name (`instance_name`).
    pub instance: String,
    /// The threshold notifications use: fewer failed checks in a row are "retrying".
    pub failures_before_alert: u32,
    /// Each distinct Cloud Manager / Ops Manager the orgs are checked at, as the page shows it
    /// (see [`Configured::instance_of`]): a handful, found by pointer.
    endpoints: Vec<(Arc<crate::config::Endpoint>, String)>,
    /// The consoles' links, as messages give them.
    pub links: Links,
}

/// A `[[migration]]`, as the page needs it.
#[derive(Debug, Clone)]
pub struct ConfiguredLiveMigration {
    pub id: String,
    pub name: String,
    /// The source org's id.
    pub org_id: String,
    pub group_id: String,
    pub lag_alert_s: Option<i64>,
}

impl Configured {
    pub fn of(config: &Config) -> Arc<Configured> {
        let orgs = config.orgs.clone();
        let mut by_id: Vec<u32> = (0..orgs.len()).filter_map(|i| u32::try_from(i).ok()).collect();
        by_id.sort_unstable_by(|&a, &b| orgs[a as usize].id.cmp(&orgs[b as usize].id));
        Arc::new(Configured {
            orgs,
            by_id,
            migrations: config
                .migrations
                .iter()
                .map(|m| ConfiguredLiveMigration {
                    id: m.id.clone(),
                    name: m.name.clone(),
                    org_id: m.org.as_str().to_owned(),
                    group_id: m.group_id.clone(),
                    lag_alert_s: m.lag_alert.map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
                })
                .collect(),
            channels: config.channels.iter().map(|c| c.name.clone()).collect(),
            instance: config.instance_name.clone(),
            failures_before_alert: config.poll.failures_before_alert,
            endpoints: config.sessions().into_iter().fold(Vec::new(), |mut all, (e, _)| {
                if !all
                    .iter()
                    .any(|(x, _): &(Arc<crate::config::Endpoint>, String)| Arc::ptr_eq(x, &e))
                {
                    let shown = shown_url(&e.base_url);
                    all.push((e, shown));
                }
                all
            }),
            links: Links::of(config),
        })
    }

    /// The Cloud Manager (or Ops Manager) instance `org` is checked at (its base URL, without
    /// a login), which the page shows and filters on.
    pub fn instance_of(&self, org: &Org) -> &str {
        self.endpoints
            .iter()
            .find(|(e, _)| Arc::ptr_eq(e, &org.endpoint))
            .map_or("", |(_, shown)| shown.as_str())
    }

    /// Every instance some org is checked at, sorted.
    pub fn instances(&self) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        for o in self.orgs.iter() {
            let i = self.instance_of(o);
            if !all.iter().any(|a| a == i) {
                all.push(i.to_owned());
            }
        }
        all.sort();
        all
    }

    /// The configured org with this id.
    fn org_by_id(&self, id: &str) -> Option<&Org> {
        self.by_id
            .binary_search_by(|&i| self.orgs[i as usize].id.as_str().cmp(id))
            .ok()
            .map(|at| &self.orgs[self.by_id[at] as usize])
    }

    /// The configured orgs: (id, name).
    pub fn orgs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.orgs.iter().map(|o| (o.id.as_str(), o.name.as_str()))
    }

    /// Whether the config watches the org with this id.
    pub fn contains(&self, id: &str) -> bool {
        self.org_by_id(id).is_some()
    }

    /// The instance of the org with this id (see [`Configured::instance_of`]).
    pub fn instance_of_id(&self, id: &str) -> Option<&str> {
        let at = self
            .by_id
            .binary_search_by(|&i| self.orgs[i as usize].id.as_str().cmp(id))
            .ok()?;
        Some(self.instance_of(&self.orgs[self.by_id[at] as usize]))
    }

    /// The configured org named by `key`, an id or a name: (id, name).
    fn find(&self, key: &str) -> Option<(&str, &str)> {
        self.orgs()
            .find(|(id, _)| *id == key)
            .or_else(|| self.orgs().find(|(_, name)| *name == key))
    }

    /// The configured migration named by `key`, its `liveMigrationId` or its name.
    fn find_live_migration(&self, key: &str) -> Option<&ConfiguredLiveMigration> {
        self.migrations
            .iter()
            .find(|m| m.id == key)
            .or_else(|| self.migrations.iter().find(|m| m.name == key))
    }
}

/// A URL as the page shows it: without a login written into it, a query or a fragment.
fn shown_url(url: &url::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    // As `check` and `/metrics` write it: the base URL as configured, without the slash added
    // for joining paths.
    url.as_str().trim_end_matches('/').to_owned()
}

/// What the page's handlers read.
#[derive(Clone)]
pub struct Page {
    pub store: Store,
    pub clock: Clock,
    /// For the channels the dispatchers found blocked.
    pub metrics: Arc<Metrics>,
    pub configured: watch::Receiver<Arc<Configured>>,
}

/// The page's routes; the caller adds the login and serves them.
pub fn routes(page: Page) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/org/{org}", get(org_page))
        .route("/api/v1/status", get(status_json))
        .route("/api/v1/orgs/{org}/changes", get(changes_json))
        .route("/api/v1/migrations/{migration}", get(live_migration_json))
        .with_state(page)
}

/// The hardening headers, set on every answer (pages, the JSON API, `/metrics`, `/healthz`,
/// 401, 404 and 405 alike) by one layer around the whole router: the page loads nothing and
/// runs nothing ([`html::content_security_policy`]), may not be framed, is not sniffed as
/// another type, sends no referrer, and is never cached (it is behind the login, and what it
/// shows is only true now).
pub async fn harden(mut response: Response) -> Response {
    static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
        HeaderValue::from_str(&html::content_security_policy())
            // Not reached (a hash is base64): the strictest policy is the safe fallback.
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"))
    });
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, CSP.clone());
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The answer to a path nothing serves. Its link back climbs as many levels as the path has,
/// so that it reaches the status page behind a proxy that serves it under a sub-path too.
pub async fn not_found(uri: Uri) -> Response {
    let depth = uri.path().trim_start_matches('/').matches('/').count();
    (
        StatusCode::NOT_FOUND,
        html::not_found("Nothing is served at this address.", &up(depth)),
    )
        .into_response()
}

/// The relative path from a page `depth` levels below the top back to the status page.
fn up(depth: usize) -> String {
    if depth == 0 { "./".into() } else { "../".repeat(depth) }
}

/// The database could not be read: 503, so a monitor of the page sees it too.
fn unavailable(e: anyhow::Error) -> Response {
    tracing::warn!("status page: cannot read the database: {e:#}");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cannot read the database: {e}\n"),
    )
        .into_response()
}

/// The filters of a request, or why they cannot be used: an unknown value, or an instance no
/// org is checked at (listing none would look like all is well there).
fn filters(page: &Page, query: Option<&str>) -> Result<Filter, String> {
    let filter = Filter::parse(query.unwrap_or(""))?;
    if let Some(instance) = &filter.instance {
        let instances = page.configured.borrow().instances();
        if !instances.contains(instance) {
            return Err(format!(
                "No org is checked at instance \"{instance}\"; the instances are: {}.",
                instances.join(", ")
            ));
        }
    }
    Ok(filter)
}

/// `GET /`: without filters, what needs attention, one page at a time.
async fn status_page(State(page): State<Page>, RawQuery(query): RawQuery) -> Response {
    let filter = match filters(&page, query.as_deref()) {
        Ok(f) => f,
        Err(why) => return (StatusCode::BAD_REQUEST, html::bad_request(&why)).into_response(),
    };
    match view::status(&page, &filter, Shown::Attention, true).await {
        Ok(v) => html::status_page(&v, &filter).into_response(),
        Err(e) => unavailable(e),
    }
}

/// `GET /api/v1/status`: without filters every org, as before the filters came; paged only
/// when asked for a page.
async fn status_json(State(page): State<Page>, RawQuery(query): RawQuery) -> Response {
    let filter = match filters(&page, query.as_deref()) {
        Ok(f) => f,
        Err(why) => {
            return (StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({ "error": why }))).into_response();
        }
    };
    match view::status(&page, &filter, Shown::All, false).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn org_page(State(page): State<Page>, Path(key): Path<String>) -> Response {
    let org = page
        .configured
        .borrow()
        .find(&key)
        .map(|(id, name)| (id.to_owned(), name.to_owned()));
    let Some((id, name)) = org else {
        let text = format!("No org with the id or name \"{key}\" is configured.");
        return (StatusCode::NOT_FOUND, html::not_found(&text, "../")).into_response();
    };
    match view::org(&page, &id, &name).await {
        Ok(v) => html::org_page(&v).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn changes_json(State(page): State<Page>, Path(key): Path<String>) -> Response {
    let org = page
        .configured
        .borrow()
        .find(&key)
        .map(|(id, name)| (id.to_owned(), name.to_owned()));
    let Some((id, name)) = org else {
        let error = serde_json::json!({ "error": format!("no org with the id or name \"{key}\" is configured") });
        return (StatusCode::NOT_FOUND, axum::Json(error)).into_response();
    };
    match view::changes(&page, &id, &name).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn live_migration_json(State(page): State<Page>, Path(key): Path<String>) -> Response {
    let migration = page.configured.borrow().find_live_migration(&key).cloned();
    let Some(m) = migration else {
        let error = serde_json::json!({ "error": format!("no migration with the id or name \"{key}\" is configured") });
        return (StatusCode::NOT_FOUND, axum::Json(error)).into_response();
    };
    match view::live_migration(&page, &m).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => unavailable(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token written into `base_url`'s query reaches neither the instance the page shows and
    /// filters on nor the console links (a login there is refused by the config).
    #[test]
    fn a_login_in_base_url_stays_off_the_page() {
        let config = Config::parse(
            "[cloud_manager]\nbase_url = \"https://cm.example.com/api/public/v1.0/?token=s3cret\"\n\
             public_key = \"p\"\nprivate_key = \"k\"\n[[org]]\nid = \"5f0c1234567890abcdef1234\"\nname = \"payments\"\n",
            std::path::Path::new("linkwatch.toml"),
        )
        .unwrap();
        let c = Configured::of(&config);
        assert_eq!(c.instances(), ["https://cm.example.com/api/public/v1.0"]);
        let console = c.links.cloud_manager_org("5f0c1234567890abcdef1234").unwrap();
        assert_eq!(
            console,
            "https://cm.example.com/v2#/org/5f0c1234567890abcdef1234/projects"
        );
    }
}
