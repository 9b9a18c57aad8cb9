//! The optional HTTP endpoint (`[http] listen`): `/metrics` for Prometheus and `/healthz` for
//! load balancers, systemd and people, beside the status page ([`crate::web`]). With a login
//! configured, everything but `/healthz` asks for it; `/healthz` says only ok, degraded or
//! failing, and its details (`?verbose`) ask for the login too.
//!
//! `/healthz` writes to the database to know that it can, but at most once every
//! [`PROBE_EVERY`]: one probe runs at a time, and every request and the systemd watchdog share
//! its result. A flood of health checks therefore costs one write, and never takes the
//! connections the checks need.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::BasicAuth;
use crate::leader::Role;
use crate::metrics::Metrics;
use crate::scheduler::Heartbeat;
use crate::store::Store;
use crate::web::{self, Configured};

/// The scheduler wakes at least every 5 s; three missed wake-ups mean it is stuck.
const STALE_HEARTBEAT: Duration = Duration::from_secs(15);

/// How long one write probe's result stands for every `/healthz` and watchdog check.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// What `/metrics`, `/healthz` and the systemd watchdog read. It outlives reloads: `orgs`
/// follows the current config.
#[derive(Clone)]
pub struct Shared {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub heartbeat: Heartbeat,
    /// The orgs (and channels) of the current config: the database may hold other orgs
    /// (removed from the config, kept for their history), which get no gauges and no place on
    /// the status page.
    pub orgs: watch::Receiver<Arc<Configured>>,
    /// Whether this instance leads (checks and sends) or follows (PostgreSQL, another leads).
    pub role: watch::Receiver<Role>,
    /// The wall clock the time left to a migration's estimated deadline is counted on.
    pub clock: crate::clock::Clock,
    probe: Arc<Probe>,
}

impl Shared {
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        heartbeat: Heartbeat,
        orgs: watch::Receiver<Arc<Configured>>,
        role: watch::Receiver<Role>,
        clock: crate::clock::Clock,
    ) -> Shared {
        Shared {
            store,
            metrics,
            heartbeat,
            orgs,
            role,
            clock,
            probe: Arc::default(),
        }
    }
}

/// The last write probe, and the turn to run the next one.
#[derive(Default)]
struct Probe {
    last: Mutex<Option<(Instant, Result<(), String>)>>,
    turn: tokio::sync::Mutex<()>,
}

impl Probe {
    /// The last result, if it is recent enough to stand for now.
    fn recent(&self) -> Option<Result<(), String>> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < PROBE_EVERY)
            .map(|(_, result)| result.clone())
    }

    /// Whether the database takes writes, by a real write at most every [`PROBE_EVERY`].
    async fn takes_writes(&self, store: &Store) -> Result<(), String> {
        if let Some(result) = self.recent() {
            return result;
        }
        // One probe at a time; whoever waited for it takes its result.
        let _turn = self.turn.lock().await;
        if let Some(result) = self.recent() {
            return result;
        }
        let result = store
            .probe_write()
            .await
            .map_err(|e| format!("the database does not take writes: {e}"));
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), result.clone()));
        result
    }
}

/// Why the service is not healthy, or `Ok` when it is. A follower is healthy when it can write
/// to the database: it is ready to take over, and has no scheduler to be stuck.
pub async fn health(shared: &Shared) -> Result<(), String> {
    if !shared.role.borrow().leads() {
        return shared.probe.takes_writes(&shared.store).await;
    }
    match shared.heartbeat.age() {
        None => return Err("the scheduler has not started".into()),
        Some(age) if age > STALE_HEARTBEAT => {
            return Err(format!("the scheduler has not run for {}s", age.as_secs()));
        }
        Some(_) => {}
    }
    shared.probe.takes_writes(&shared.store).await
}

/// Binds `addr`, and returns what serves it until `shutdown`. Binding happens before this
/// returns, so a busy port is reported at start.
pub async fn serve(
    addr: SocketAddr,
    shared: Shared,
    page: web::Page,
    login: Option<BasicAuth>,
    shutdown: CancellationToken,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ([http] listen): {e}"))?;
    tracing::info!(%addr, login = login.is_some(), "serving the status page, /metrics and /healthz");
    if !addr.ip().is_loopback() && login.is_none() {
        tracing::warn!(
            %addr,
            "the status page and /metrics are open to whoever reaches {addr}: set [http] username and a password"
        );
    }
    let mut guarded = Router::new()
        .route("/metrics", get(metrics))
        .with_state(shared.clone())
        .merge(web::routes(page));
    // Load balancers and systemd ask for /healthz without a login; its details ask for it.
    let mut health = Router::new().route("/healthz", get(healthz)).with_state(shared);
    if let Some(login) = login.map(|l| Arc::new(web::Login::new(l))) {
        guarded = guarded.layer(axum::middleware::from_fn_with_state(login.clone(), web::require_login));
        health = health.layer(axum::middleware::from_fn_with_state(login, require_login_for_details));
    }
    let app = health
        .merge(guarded)
        .fallback(web::not_found)
        .layer(axum::middleware::map_response(web::harden));
    Ok(async move {
        // The peer's address, for the log of refused logins.
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(e) = serve.await {
            tracing::error!("HTTP endpoint stopped: {e}");
        }
    })
}

async fn metrics(State(shared): State<Shared>) -> Response {
    let read = async {
        let gauges = shared.store.gauges().await?;
        let migrations = shared.store.live_migrations().await?;
        let silences = shared.store.active_silences(shared.clock.now()).await?;
        anyhow::Ok((gauges, migrations, silences))
    };
    match read.await {
        Ok((mut gauges, migrations, silences)) => {
            let orgs = shared.orgs.borrow().clone();
            gauges.statuses.retain(|(id, _, _)| orgs.contains(id));
            gauges.instances = gauges
                .statuses
                .iter()
                .map(|(id, _, _)| orgs.instance_of_id(id).unwrap_or_default().to_owned())
                .collect();
            gauges.silences = silences
                .into_iter()
                .filter_map(|s| {
                    let name = orgs.orgs().find(|(id, _)| *id == s.org_id)?.1.to_owned();
                    Some((s, name))
                })
                .collect();
            let now = shared.clock.now();
            gauges.migrations = migrations
                .into_iter()
                .filter(|m| orgs.migrations.iter().any(|c| c.id == m.migration_id))
                .map(|m| crate::store::LiveMigrationGauge::of(m, now))
                .collect();
            (
                [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                shared.metrics.render(&gauges),
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the database: {e}\n"),
        )
            .into_response(),
    }
}

/// `/healthz?verbose` (or `?verbose=...`) asks for the details.
fn verbose(uri: &Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|p| p == "verbose" || p.starts_with("verbose=")))
}

/// The login in front of `/healthz?verbose` only: the word stays open to load balancers.
async fn require_login_for_details(
    login: State<Arc<web::Login>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if verbose(request.uri()) {
        web::require_login(login, request, next).await
    } else {
        next.run(request).await
    }
}

/// "ok" or "degraded" (200), or "failing" (503), and nothing more: `/healthz` is open, and the
/// details quote what came from outside (a receiver's answer, a mail address in an SMTP reply,
/// a database error) and name the leader's host and pid. With `?verbose`, behind the login,
/// the details follow the word.
async fn healthz(State(shared): State<Shared>, uri: Uri) -> Response {
    let health = health(&shared).await;
    let channels = channel_trouble(&shared.metrics);
    let word = match (&health, channels.is_empty()) {
        (Err(_), _) => "failing",
        (Ok(()), true) => "ok",
        (Ok(()), false) => "degraded",
    };
    let code = if health.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut text = format!("{word}\n");
    if verbose(&uri) {
        details(&shared, health.err(), &channels, &mut text);
    }
    (code, text).into_response()
}

/// What the external heartbeat reports ([`crate::heartbeat`]): [`health`], and beyond it every
/// channel in trouble. `/healthz` calls those "degraded", not failing, because a restart would
/// not fix a receiver; but nobody is being told anything, and an external monitor is there to
/// say so. The reason is one line per cause.
pub async fn heartbeat_health(shared: &Shared) -> Result<(), String> {
    health(shared).await?;
    let channels = channel_trouble(&shared.metrics);
    if channels.is_empty() {
        Ok(())
    } else {
        Err(channels.join("\n"))
    }
}

/// The channels that cannot deliver now, one line each: blocked (deliveries that keep failing
/// past the hold), or whose latest delivery the receiver refused for good. Read from what the
/// dispatchers last saw, not the database: a request costs no query, and the answer follows
/// the dispatcher's own hold.
pub fn channel_trouble(metrics: &Metrics) -> Vec<String> {
    let blocked = metrics.blocked().into_iter().map(|(channel, b)| {
        format!(
            "channel \"{}\" blocked since {}: {} deliveries keep failing (other orgs' events pass); last error: {}",
            channel,
            crate::store::ts(b.since),
            b.deliveries,
            b.last_error.as_deref().unwrap_or("none recorded")
        )
    });
    let refused = metrics.refused().into_iter().map(|(channel, r)| {
        format!(
            "channel \"{}\": its latest delivery was refused for good at {} (not retried): {}",
            channel,
            crate::store::ts(r.at),
            r.error
        )
    });
    blocked.chain(refused).collect()
}

/// Why it is failing, which instance this is, and the channels in trouble. A channel in
/// trouble is not a reason for 503: the watchdog and orchestrators would restart the daemon,
/// which does not fix a receiver and would pause every check; the process is healthy and says
/// what is wrong.
fn details(shared: &Shared, failing: Option<String>, channels: &[String], text: &mut String) {
    if let Some(reason) = failing {
        text.push_str(&reason);
        text.push('\n');
    }
    // Several instances share a PostgreSQL database: say which one this is.
    if shared.store.needs_lease() {
        text.push_str(&shared.role.borrow().describe());
        text.push('\n');
    }
    for line in channels {
        text.push_str(line);
        text.push('\n');
    }
}
