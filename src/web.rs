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
mod format;
mod html;
mod lag;
mod timeline;
mod view;

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;

pub use auth::{Login, require_login};
pub use view::{ChangesView, ChannelView, LiveMigrationStage, LiveMigrationView, OrgStanding, OrgView, StatusView};

use crate::clock::Clock;
use crate::config::{Config, Org};
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
        })
    }

    /// The configured orgs: (id, name).
    pub fn orgs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.orgs.iter().map(|o| (o.id.as_str(), o.name.as_str()))
    }

    /// Whether the config watches the org with this id.
    pub fn contains(&self, id: &str) -> bool {
        self.by_id
            .binary_search_by(|&i| self.orgs[i as usize].id.as_str().cmp(id))
            .is_ok()
    }

    /// The Cloud Manager or Ops Manager the org with this id is asked at (its base URL).
    pub fn instance_of(&self, id: &str) -> Option<&str> {
        let at = self
            .by_id
            .binary_search_by(|&i| self.orgs[i as usize].id.as_str().cmp(id))
            .ok()?;
        Some(self.orgs[self.by_id[at] as usize].endpoint.label())
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

/// The answer to a path nothing serves.
pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        html::not_found("Nothing is served at this address."),
    )
        .into_response()
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

async fn status_page(State(page): State<Page>) -> Response {
    match view::status(&page).await {
        Ok(v) => html::status_page(&v).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn status_json(State(page): State<Page>) -> Response {
    match view::status(&page).await {
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
        return (StatusCode::NOT_FOUND, html::not_found(&text)).into_response();
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
