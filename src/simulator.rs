//! A simulated Cloud Manager: a real HTTP server that does real Digest authentication (MD5,
//! qop=auth, nonce counts, stale nonces) and OAuth client credentials, and serves the real path
//! and error bodies. `linkwatch demo` runs the daemon against it; the tests use it for failure
//! injection and request counting.

pub(crate) mod digest;
mod oauth;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use digest::REALM;
pub use oauth::TokenBehavior;

/// What the simulated server answers for one org.
#[derive(Debug, Clone, PartialEq)]
pub enum Behavior {
    /// 200 `{"status": ...}`.
    Status(String),
    /// An API error in Cloud Manager's JSON shape.
    Error {
        http: u16,
        error_code: Option<String>,
        detail: String,
        /// The answer's `parameters` (for `ORG_REQUIRES_ACCESS_LIST`, the caller's address).
        parameters: Vec<String>,
    },
    /// Any body with any code and content type (HTML from a proxy, garbage, a huge body).
    Raw {
        http: u16,
        content_type: String,
        body: String,
    },
    /// Never answers (until the client gives up).
    Hang,
}

impl Behavior {
    pub fn status(s: &str) -> Self {
        Behavior::Status(s.to_owned())
    }

    pub fn error(http: u16, error_code: &str, detail: &str) -> Self {
        Behavior::refusal(http, error_code, detail, &[])
    }

    /// An API error with `parameters`, as Cloud Manager sends them.
    pub fn refusal(http: u16, error_code: &str, detail: &str, parameters: &[&str]) -> Self {
        Behavior::Error {
            http,
            error_code: (!error_code.is_empty()).then(|| error_code.to_owned()),
            detail: detail.to_owned(),
            parameters: parameters.iter().map(|p| (*p).to_owned()).collect(),
        }
    }
}

/// A timeline: from each offset (since the simulator started) on, the behavior that follows.
pub type Script = Vec<(Duration, Behavior)>;

/// What the simulated Atlas answers for one live migration.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveMigrationBehavior {
    /// 200 with a `LiveMigrationResponse`; `lag_s: None` leaves `lagTimeSeconds` out.
    State {
        status: String,
        ready: bool,
        lag_s: Option<i64>,
    },
    /// An API error in Atlas's JSON shape.
    Error {
        http: u16,
        error_code: Option<String>,
        detail: String,
    },
    /// 200 with any JSON body: fields of other types than the spec's, say.
    Body(serde_json::Value),
}

impl LiveMigrationBehavior {
    pub fn state(status: &str, ready: bool, lag_s: Option<i64>) -> Self {
        LiveMigrationBehavior::State {
            status: status.to_owned(),
            ready,
            lag_s,
        }
    }
}

/// The version Atlas's live migration read answers to at the start; any other gets 406.
pub const ATLAS_ACCEPT: &str = "application/vnd.atlas.2023-01-01+json";

/// Where a resource version of the simulated Atlas is in its life (Atlas's "Versioned Atlas
/// Administration API Overview": stable, deprecated, sunset).
#[derive(Debug, Clone, PartialEq)]
pub enum AtlasVersion {
    Stable,
    /// Answered, with these `Deprecation` and `Sunset` headers (either may be left out).
    Deprecated {
        deprecation: Option<String>,
        sunset: Option<String>,
    },
    /// Removed: 410.
    Removed,
}

#[derive(Debug, Clone)]
pub struct Tuning {
    /// How long a nonce is accepted; after that the server answers 401 with `stale=true`.
    pub nonce_lifetime: Duration,
    /// Added to every answer (benchmarks).
    pub latency: Duration,
    /// OAuth token lifetime (`expires_in`).
    pub token_lifetime: Duration,
    /// The share of authorized status requests answered 503 at random (benchmarks).
    pub failure_rate: f64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            nonce_lifetime: Duration::from_secs(60),
            latency: Duration::ZERO,
            token_lifetime: Duration::from_secs(3600),
            failure_rate: 0.0,
        }
    }
}

#[derive(Default)]
struct World {
    api_keys: HashMap<String, String>,
    service_accounts: HashMap<String, String>,
    /// Issued tokens and when each stops being accepted (`None`: never).
    tokens: HashMap<String, Option<Instant>>,
    /// Orgs a service account has no access to: they answer 401 to every bearer token.
    token_denied: std::collections::HashSet<String>,
    token_behavior: TokenBehavior,
    orgs: HashMap<String, Script>,
    /// Extra headers for the next answers (e.g. `Retry-After`), per org.
    headers: HashMap<String, Vec<(String, String)>>,
    per_org: HashMap<String, u64>,
    /// Live migrations by id, each a timeline as for orgs.
    migrations: HashMap<String, Vec<(Duration, LiveMigrationBehavior)>>,
    /// The resource versions of the live migration read; `2023-01-01` is stable unless set.
    atlas_versions: HashMap<String, AtlasVersion>,
    nonces: digest::Nonces,
}

/// Counters, readable while the server runs.
#[derive(Default, Debug)]
pub struct Counters {
    /// Every request to the status path.
    pub requests: AtomicU64,
    /// 401 answers that carried a challenge because the request had no usable Authorization.
    pub challenges: AtomicU64,
    /// 401 answers with `stale=true`.
    pub stale: AtomicU64,
    /// Requests whose Digest or bearer credentials were checked and accepted.
    pub authorized: AtomicU64,
    /// Requests to the OAuth token endpoint.
    pub token_requests: AtomicU64,
    /// Authorized requests for live migrations.
    pub live_migration_requests: AtomicU64,
}

struct Shared {
    world: Mutex<World>,
    counters: Counters,
    options: Tuning,
    started: Instant,
}

impl Shared {
    fn world(&self) -> MutexGuard<'_, World> {
        // A panic while holding the lock cannot leave the world inconsistent in a way that
        // matters to a simulator; keep serving.
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running simulator. Dropping it does not stop it; call [`Simulator::stop`].
pub struct Simulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Simulator {
    /// Listens on `addr` (use port 0 for any free port).
    pub async fn start(addr: SocketAddr, options: Tuning) -> std::io::Result<Simulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            world: Mutex::new(World::default()),
            counters: Counters::default(),
            options,
            started: Instant::now(),
        });
        let app = Router::new()
            .route(
                "/api/public/v1.0/orgs/{org_id}/liveExport/migrationLink/status",
                get(status),
            )
            .route(
                "/api/atlas/v2/groups/{group_id}/liveMigrations/{migration_id}",
                get(live_migration),
            )
            .route("/api/oauth/token", post(oauth::token))
            .with_state(shared.clone());
        let stop = CancellationToken::new();
        let graceful = stop.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move { graceful.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!("simulator stopped: {e}");
            }
        });
        Ok(Simulator {
            addr,
            shared,
            stop,
            task,
        })
    }

    pub async fn stop(self) {
        self.stop.cancel();
        // Hanging requests would hold graceful shutdown forever; give them a moment, then go.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }

    /// The `base_url` to put in linkwatch's config.
    pub fn base_url(&self) -> String {
        format!("http://{}/api/public/v1.0", self.addr)
    }

    /// The `[atlas] base_url` to put in linkwatch's config (same server, same keys).
    pub fn atlas_base_url(&self) -> String {
        format!("http://{}/api/atlas/v2", self.addr)
    }

    /// From now on, live migration `id` answers with `behavior`.
    pub fn set_live_migration(&self, id: &str, behavior: LiveMigrationBehavior) {
        let at = self.shared.started.elapsed();
        let mut w = self.shared.world();
        let script = w.migrations.entry(id.into()).or_default();
        script.retain(|(t, _)| *t < at);
        script.push((at, behavior));
    }

    /// Replaces live migration `id`'s timeline (offsets count from the simulator's start).
    pub fn script_live_migration(&self, id: &str, script: Vec<(Duration, LiveMigrationBehavior)>) {
        self.shared.world().migrations.insert(id.into(), script);
    }

    /// Authorized requests for live migrations.
    /// Where resource `version` (`2023-01-01`) of the live migration read is in its life.
    pub fn set_atlas_version(&self, version: &str, life: AtlasVersion) {
        self.shared.world().atlas_versions.insert(version.to_owned(), life);
    }

    pub fn live_migration_requests(&self) -> u64 {
        self.shared.counters.live_migration_requests.load(Ordering::SeqCst)
    }

    pub fn add_api_key(&self, public_key: &str, private_key: &str) {
        self.shared
            .world()
            .api_keys
            .insert(public_key.into(), private_key.into());
    }

    pub fn add_service_account(&self, client_id: &str, client_secret: &str) {
        self.shared
            .world()
            .service_accounts
            .insert(client_id.into(), client_secret.into());
    }

    /// From now on, `org` answers with `behavior`.
    pub fn set(&self, org: &str, behavior: Behavior) {
        let at = self.shared.started.elapsed();
        let mut w = self.shared.world();
        let script = w.orgs.entry(org.into()).or_default();
        script.retain(|(t, _)| *t < at);
        script.push((at, behavior));
    }

    /// Replaces `org`'s timeline (offsets count from the simulator's start).
    pub fn script(&self, org: &str, script: Script) {
        self.shared.world().orgs.insert(org.into(), script);
    }

    /// Adds a header to every answer for `org` (e.g. `Retry-After`).
    pub fn add_header(&self, org: &str, name: &str, value: &str) {
        self.shared
            .world()
            .headers
            .entry(org.into())
            .or_default()
            .push((name.into(), value.into()));
    }

    /// Declares every nonce issued so far stale, as if its lifetime had passed.
    pub fn expire_nonces(&self) {
        self.shared.world().nonces.expire_all();
    }

    /// From now on, the token endpoint answers with `behavior`.
    pub fn set_token_behavior(&self, behavior: TokenBehavior) {
        self.shared.world().token_behavior = behavior;
    }

    /// From now on, `org` answers 401 to every bearer token, however fresh, as Cloud Manager does
    /// for an org the service account has no access to. Digest requests are not affected.
    pub fn deny_tokens(&self, org: &str) {
        self.shared.world().token_denied.insert(org.into());
    }

    /// Revokes every OAuth token issued so far.
    pub fn revoke_tokens(&self) {
        self.shared.world().tokens.clear();
    }

    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    pub fn requests(&self) -> u64 {
        self.shared.counters.requests.load(Ordering::SeqCst)
    }

    /// Authorized requests for one org.
    pub fn requests_for(&self, org: &str) -> u64 {
        self.shared.world().per_org.get(org).copied().unwrap_or(0)
    }
}

fn json(code: StatusCode, body: serde_json::Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Cloud Manager's error body: `{detail, error, errorCode, parameters, reason}`.
fn api_error(code: u16, error_code: Option<&str>, detail: &str) -> Response {
    api_error_with(code, error_code, detail, &[])
}

fn api_error_with(code: u16, error_code: Option<&str>, detail: &str, parameters: &[String]) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = serde_json::json!({
        "detail": detail,
        "error": code,
        "parameters": parameters,
        "reason": status.canonical_reason().unwrap_or("Error"),
    });
    if let Some(ec) = error_code {
        body["errorCode"] = ec.into();
    }
    json(status, body)
}

fn unauthorized(shared: &Shared, stale: bool) -> Response {
    let nonce = shared.world().nonces.issue(shared.options.nonce_lifetime);
    let challenge = digest::challenge(&nonce, stale);
    if stale {
        shared.counters.stale.fetch_add(1, Ordering::SeqCst);
    } else {
        shared.counters.challenges.fetch_add(1, Ordering::SeqCst);
    }
    let mut r = api_error(401, None, "You are not authorized for this resource.");
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

async fn status(
    State(shared): State<Arc<Shared>>,
    Path(org_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    shared.counters.requests.fetch_add(1, Ordering::SeqCst);
    if !shared.options.latency.is_zero() {
        tokio::time::sleep(shared.options.latency).await;
    }
    if let Err(refused) = authorize(&shared, &headers, &uri, &org_id) {
        return refused;
    }
    shared.counters.authorized.fetch_add(1, Ordering::SeqCst);

    let (behavior, extra) = {
        let mut w = shared.world();
        *w.per_org.entry(org_id.clone()).or_default() += 1;
        let at = shared.started.elapsed();
        let behavior = w
            .orgs
            .get(&org_id)
            .and_then(|s| s.iter().rev().find(|(t, _)| *t <= at).map(|(_, b)| b.clone()));
        (behavior, w.headers.get(&org_id).cloned().unwrap_or_default())
    };
    if shared.options.failure_rate > 0.0 && rand::random::<f64>() < shared.options.failure_rate {
        return api_error(503, Some("UNEXPECTED_ERROR"), "Simulated failure.");
    }
    let envelope = query.get("envelope").is_some_and(|v| v == "true");
    let mut response = match behavior {
        None => api_error(
            404,
            Some("ORG_NOT_FOUND"),
            &format!("No organization with ID {org_id} exists."),
        ),
        Some(Behavior::Status(s)) if envelope => json(
            StatusCode::OK,
            serde_json::json!({"status": 200, "content": {"status": s}}),
        ),
        Some(Behavior::Status(s)) => json(StatusCode::OK, serde_json::json!({ "status": s })),
        Some(Behavior::Error {
            http,
            error_code,
            detail,
            parameters,
        }) => api_error_with(http, error_code.as_deref(), &detail, &parameters),
        Some(Behavior::Raw {
            http,
            content_type,
            body,
        }) => (
            StatusCode::from_u16(http).unwrap_or(StatusCode::OK),
            [(header::CONTENT_TYPE, content_type)],
            body,
        )
            .into_response(),
        Some(Behavior::Hang) => {
            std::future::pending::<()>().await;
            unreachable!("pending() never completes")
        }
    };
    for (k, v) in extra {
        if let (Ok(k), Ok(v)) = (header::HeaderName::try_from(k), HeaderValue::from_str(&v)) {
            response.headers_mut().insert(k, v);
        }
    }
    response
}

/// Checks the request's Digest answer or bearer token; `Err` is the 401 to send. `key` is what
/// a service account may be denied (an org id).
#[allow(clippy::result_large_err)]
fn authorize(shared: &Shared, headers: &HeaderMap, uri: &axum::http::Uri, key: &str) -> Result<(), Response> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let verdict = if let Some(token) = auth.strip_prefix("Bearer ") {
        let w = shared.world();
        match w.tokens.get(token) {
            _ if w.token_denied.contains(key) => digest::Verdict::Rejected,
            Some(None) => digest::Verdict::Ok,
            Some(Some(exp)) if *exp > Instant::now() => digest::Verdict::Ok,
            _ => digest::Verdict::Rejected,
        }
    } else {
        let mut w = shared.world();
        let World { api_keys, nonces, .. } = &mut *w;
        digest::verify(auth, "GET", path, api_keys, nonces)
    };
    match verdict {
        digest::Verdict::Ok => {}
        digest::Verdict::Missing | digest::Verdict::Rejected => {
            return Err(unauthorized(shared, false));
        }
        digest::Verdict::Stale => return Err(unauthorized(shared, true)),
    }
    Ok(())
}

async fn live_migration(
    State(shared): State<Arc<Shared>>,
    Path((_group_id, migration_id)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    if !shared.options.latency.is_zero() {
        tokio::time::sleep(shared.options.latency).await;
    }
    if let Err(refused) = authorize(&shared, &headers, &uri, &migration_id) {
        return refused;
    }
    // Atlas's versioned API: an unknown version is refused before anything else is looked at.
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let version = accept
        .strip_prefix("application/vnd.atlas.")
        .and_then(|v| v.strip_suffix("+json"))
        .unwrap_or("");
    let life = {
        let w = shared.world();
        match w.atlas_versions.get(version) {
            Some(life) => Some(life.clone()),
            None if accept == ATLAS_ACCEPT => Some(AtlasVersion::Stable),
            None => None,
        }
    };
    let retirement = match life {
        None => {
            return api_error(
                406,
                Some("INVALID_VERSION_DATE"),
                "Invalid accept header or version date.",
            );
        }
        Some(AtlasVersion::Removed) => {
            return api_error(410, None, &format!("API version {version} has been removed."));
        }
        Some(AtlasVersion::Stable) => None,
        Some(AtlasVersion::Deprecated { deprecation, sunset }) => Some((deprecation, sunset)),
    };
    let mut response = live_migration_answer(&shared, &migration_id);
    if let Some((deprecation, sunset)) = retirement {
        for (name, value) in [("deprecation", deprecation), ("sunset", sunset)] {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                response.headers_mut().insert(name, v);
            }
        }
    }
    response
}

fn live_migration_answer(shared: &Shared, migration_id: &str) -> Response {
    shared.counters.live_migration_requests.fetch_add(1, Ordering::SeqCst);
    let behavior = {
        let w = shared.world();
        let at = shared.started.elapsed();
        w.migrations
            .get(migration_id)
            .and_then(|s| s.iter().rev().find(|(t, _)| *t <= at).map(|(_, b)| b.clone()))
    };
    match behavior {
        None => api_error(
            404,
            Some("RESOURCE_NOT_FOUND"),
            &format!("Cannot find resource live migration {migration_id}."),
        ),
        Some(LiveMigrationBehavior::State { status, ready, lag_s }) => {
            let mut body = serde_json::json!({
                "_id": migration_id,
                "status": status,
                "readyForCutover": ready,
                "migrationHosts": ["atlas-migration-host-0.mongodb.net"],
            });
            if let Some(lag) = lag_s {
                body["lagTimeSeconds"] = lag.into();
            }
            json(StatusCode::OK, body)
        }
        Some(LiveMigrationBehavior::Error {
            http,
            error_code,
            detail,
        }) => api_error(http, error_code.as_deref(), &detail),
        Some(LiveMigrationBehavior::Body(body)) => json(StatusCode::OK, body),
    }
}
