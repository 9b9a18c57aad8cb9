//! The daemon: wires config, client, store, scheduler and dispatcher together around one
//! [`Checker`]; `run` is the loop, with reload (a new config, same database) and a bounded
//! shutdown; [`once`] is one pass of it for `linkwatch once`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::channels::ConsoleSink;
use crate::check::{self, Checker};
use crate::client::{self, Client};
use crate::clock::{self, Clock};
use crate::config::Config;
use crate::dispatch::{DeliverySettings, Dispatcher, Memories};
use crate::leader::{self, Leadership, Lease};
use crate::metrics::Metrics;
use crate::monitoring;
use crate::scheduler::{self, Heartbeat};
use crate::store::{Store, WriterLock};
use crate::systemd;
use crate::web;

mod once;

pub use once::{Delivered, OncePass, once};

/// Everything built from one config, around one store, metrics and clock. A reload builds a new
/// `App` around the same store and metrics.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    /// The wall clock for what is recorded; injectable so tests can step it.
    pub clock: Clock,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// One check of an org, and the group commit: what the scheduler and `once` call.
    pub checker: Arc<Checker>,
    /// The Atlas client, when the config follows live migrations.
    pub atlas: Option<Client>,
    pub dispatcher: Arc<Dispatcher>,
}

impl App {
    /// Opens the config's database and builds everything else.
    pub async fn new(config: Config, console: ConsoleSink) -> anyhow::Result<App> {
        let store = Store::open(&config.database).await?;
        App::with_store(config, store, Arc::new(Metrics::default()), console, Clock::system())
    }

    /// Builds everything around `store`, `metrics` and `clock`, which outlive a reload.
    pub fn with_store(
        config: Config,
        store: Store,
        metrics: Arc<Metrics>,
        console: ConsoleSink,
        clock: Clock,
    ) -> anyhow::Result<App> {
        let delivery = DeliverySettings::with_clock(clock);
        App::with_delivery(config, store, metrics, console, delivery)
    }

    /// [`App::with_store`] whose dispatcher has these settings (a test's short retry delays);
    /// the app's clock is theirs.
    pub fn with_delivery(
        config: Config,
        store: Store,
        metrics: Arc<Metrics>,
        console: ConsoleSink,
        delivery: DeliverySettings,
    ) -> anyhow::Result<App> {
        App::following(config, store, metrics, console, delivery, Memories::default())
    }

    /// [`App::with_delivery`] whose channels go on from `memories` (the running app's, at a
    /// reload).
    fn following(
        config: Config,
        store: Store,
        metrics: Arc<Metrics>,
        console: ConsoleSink,
        delivery: DeliverySettings,
        memories: Memories,
    ) -> anyhow::Result<App> {
        let clock = delivery.clock.clone();
        let dispatcher = Arc::new(Dispatcher::with_memories(
            &config,
            &console,
            metrics.clone(),
            delivery,
            memories,
        )?);
        let checker = Checker::new(
            &config,
            store.clone(),
            metrics.clone(),
            clock.clone(),
            dispatcher.clone(),
        )?;
        let atlas = match &config.atlas {
            Some(a) => Some(
                Client::new(
                    client::ClientSettings::for_atlas(a, &config.cloud_manager, &config.poll),
                    std::slice::from_ref(&a.credential),
                )
                .context("cannot build the Atlas HTTP client")?,
            ),
            None => None,
        };
        Ok(App {
            config,
            clock,
            store,
            metrics,
            checker: Arc::new(checker),
            atlas,
            dispatcher,
        })
    }
}

impl crate::report::jobs::Host for App {
    fn config(&self) -> &Config {
        &self.config
    }
    fn store(&self) -> &Store {
        &self.store
    }
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }
    fn wake(&self, channels: &[String]) {
        self.dispatcher.wake(channels);
    }
}

impl crate::live_migration::Host for App {
    fn config(&self) -> &Config {
        &self.config
    }
    fn store(&self) -> &Store {
        &self.store
    }
    fn atlas(&self) -> Option<&Client> {
        self.atlas.as_ref()
    }
    fn router(&self) -> &crate::router::Router {
        &self.checker.routes
    }
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }
    fn wake(&self, channels: &[String]) {
        self.dispatcher.wake(channels);
    }
}

/// How long `run` waits for the database's lock: a `linkwatch once` that holds it delivers for at
/// most its `shutdown_timeout`.
fn lock_patience(config: &Config) -> Duration {
    config.shutdown_timeout.saturating_add(Duration::from_secs(5))
}

/// How `run` is driven, beyond the config.
#[derive(Default)]
pub struct Options {
    /// Where the console channel writes.
    pub console: ConsoleSink,
    /// Each message asks for a reload (SIGHUP).
    pub reload: Option<mpsc::Receiver<()>>,
    /// Reads the config again for a reload.
    pub loader: Option<Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>>,
}

/// Runs the daemon until `shutdown` is cancelled: checks on schedule, delivers events.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(config, shutdown, Options::default()).await
}

/// [`run`] with a `App` the caller built (tests choose the console sink); no reload.
pub async fn run_app(app: Arc<App>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _lock = WriterLock::to_send(&app.config.database, "run", lock_patience(&app.config)).await?;
    lead_and_serve(app, shutdown, None, None).await
}

pub async fn run_with(config: Config, shutdown: CancellationToken, mut options: Options) -> anyhow::Result<()> {
    // One daemon per SQLite file: the file lock, held until the daemon returns. (On PostgreSQL
    // several run; the lease decides which one leads.)
    let _lock = WriterLock::to_send(&config.database, "run", lock_patience(&config)).await?;
    let store = Store::open(&config.database).await?;
    let app = Arc::new(App::with_store(
        config,
        store,
        Arc::new(Metrics::default()),
        options.console.clone(),
        Clock::system(),
    )?);
    let reload = options.reload.take().zip(options.loader.take());
    lead_and_serve(app, shutdown, reload, Some(options.console)).await
}

/// Serves `app` while this instance leads: always on SQLite, while it holds the lease on
/// PostgreSQL. The lease is given up only after the last sends, so that the next leader does
/// not send what this one is still sending.
async fn lead_and_serve(
    app: Arc<App>,
    shutdown: CancellationToken,
    reload: Option<Reload>,
    console: Option<ConsoleSink>,
) -> anyhow::Result<()> {
    let store = app.store.clone();
    let lease = Lease::start(&store, app.config.leader_lease);
    let result = serve(app, shutdown, reload, console, lease.leadership.clone()).await;
    lease.release().await;
    store.close().await;
    result
}

type Reload = (
    mpsc::Receiver<()>,
    Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>,
);

async fn serve(
    mut app: Arc<App>,
    shutdown: CancellationToken,
    mut reload: Option<Reload>,
    console: Option<ConsoleSink>,
    leadership: Leadership,
) -> anyhow::Result<()> {
    let heartbeat = Heartbeat::default();
    let mut role = leadership.role.clone();
    // What outlives a generation (the HTTP endpoint, the watchdog, retention) follows the
    // current config through these.
    let (orgs, orgs_rx) = watch::channel(org_ids(&app.config));
    let (keep, keep_rx) = watch::channel(app.config.retention);
    let (beat, beat_rx) = watch::channel(app.config.heartbeat.clone());
    let shared = monitoring::Shared::new(
        app.store.clone(),
        app.metrics.clone(),
        heartbeat.clone(),
        orgs_rx,
        leadership.role.clone(),
        app.clock.clone(),
    );
    let services_stop = CancellationToken::new();
    let http_task = match app.config.http_listen {
        Some(addr) => {
            let page = web::Page {
                store: app.store.clone(),
                clock: app.clock.clone(),
                metrics: app.metrics.clone(),
                configured: shared.orgs.clone(),
            };
            let login = app.config.http_auth.clone();
            Some(monitoring::serve(addr, shared.clone(), page, login, services_stop.clone()).await?)
        }
        None => None,
    };
    let watchdog = systemd::spawn_watchdog(shared.clone(), services_stop.clone());
    let heartbeat_task = crate::heartbeat::spawn(shared, beat_rx, services_stop.clone());
    let housekeeping = tokio::spawn(crate::retention::run(
        app.store.clone(),
        keep_rx,
        app.clock.clone(),
        services_stop.clone(),
    ));

    tracing::info!(
        orgs = app.config.orgs.len(),
        channels = app.config.channels.len(),
        database = %app.config.database,
        instance = %leadership.holder,
        "linkwatch running"
    );
    systemd::ready();
    loop {
        // Checks and sends run only while this instance leads, with the epoch they run under.
        let mut generation = start_if_leading(&app, &heartbeat, &role.borrow_and_update());
        let next = loop {
            let asked = async {
                match reload.as_mut() {
                    Some((rx, loader)) => match rx.recv().await {
                        Some(()) => Some(&*loader),
                        None => std::future::pending().await,
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break None,
                Some(loader) = asked => {
                    match rebuild(&app, loader(), console.clone().unwrap_or_default()) {
                        Ok(new) => break Some(new),
                        Err(e) => tracing::error!("reload rejected, still running the previous config: {e:#}"),
                    }
                }
                Ok(()) = role.changed() => {
                    let now = role.borrow_and_update().clone();
                    if generation.as_ref().map(|(_, epoch)| *epoch) != now.epoch {
                        if let Some((old, _)) = generation.take() {
                            // Deposed: another instance may be checking and sending already, so
                            // this one checks nothing more and starts no new send.
                            old.abandon(&app).await;
                        }
                        generation = start_if_leading(&app, &heartbeat, &now);
                    }
                }
            }
        };
        match next {
            None => {
                systemd::stopping();
                tracing::info!(
                    "stopping: waiting up to {:?} for running checks and sends",
                    app.config.shutdown_timeout
                );
                if let Some((generation, _)) = generation {
                    generation.stop(&app, true).await;
                }
                break;
            }
            Some(new) => {
                systemd::reloading();
                if let Some((generation, _)) = generation {
                    generation.stop(&app, false).await;
                }
                tracing::info!(
                    orgs = new.config.orgs.len(),
                    channels = new.config.channels.len(),
                    "config reloaded"
                );
                orgs.send_replace(org_ids(&new.config));
                keep.send_replace(new.config.retention);
                beat.send_replace(new.config.heartbeat.clone());
                app = Arc::new(new);
                systemd::ready();
            }
        }
    }
    services_stop.cancel();
    for task in [Some(housekeeping), Some(heartbeat_task), http_task, watchdog]
        .into_iter()
        .flatten()
    {
        let _ = task.await;
    }
    tracing::info!("linkwatch stopped");
    Ok(())
}

/// Starts checking and sending when `role` leads, with its epoch.
fn start_if_leading(app: &Arc<App>, heartbeat: &Heartbeat, role: &leader::Role) -> Option<(Generation, i64)> {
    app.metrics.set_role(role.epoch);
    let epoch = role.epoch?;
    // What this process remembers of quiet orgs may be stale: another instance led meanwhile.
    app.store.forget_quiet();
    Some((Generation::start(app.clone(), heartbeat.clone()), epoch))
}

/// The orgs and channels `config` watches.
fn org_ids(config: &Config) -> Arc<web::Configured> {
    web::Configured::of(config)
}

/// A new `App` for `loaded`, around the running one's store, metrics, clock and what its
/// channels remember (outcomes not yet written, retry times, mail recipients' progress), so that
/// a reload never sends a delivered event again.
fn rebuild(current: &App, loaded: anyhow::Result<Config>, console: ConsoleSink) -> anyhow::Result<App> {
    let config = loaded?;
    if config.database != current.config.database && config.database.same_place(&current.config.database) {
        tracing::warn!("the database password changed; new connections use it after the next restart");
    }
    if !config.database.same_place(&current.config.database) {
        anyhow::bail!(
            "the database moved from {} to {}; that needs a restart",
            current.config.database,
            config.database
        );
    }
    if config.http_listen != current.config.http_listen || config.http_auth != current.config.http_auth {
        tracing::warn!("[http] changed; it takes effect at the next restart");
    }
    let gone: Vec<&str> = current
        .config
        .channels
        .iter()
        .filter(|c| !config.channels.iter().any(|n| n.name == c.name))
        .map(|c| c.name.as_str())
        .collect();
    if !gone.is_empty() {
        tracing::warn!(
            "channels removed: {}; their pending deliveries wait until a channel of that name returns",
            gone.join(", ")
        );
    }
    App::following(
        config,
        current.store.clone(),
        current.metrics.clone(),
        console,
        DeliverySettings::with_clock(current.clock.clone()),
        current.dispatcher.memories(),
    )
}

/// The scheduler, report jobs and channel workers of one config.
struct Generation {
    checks_stop: CancellationToken,
    scheduler: tokio::task::JoinHandle<()>,
    reports_stop: CancellationToken,
    reports: tokio::task::JoinHandle<()>,
    commits_stop: CancellationToken,
    group_commit: tokio::task::JoinHandle<()>,
    /// The live migrations' loop; stopped with the checks.
    migrations: tokio::task::JoinHandle<()>,
    sends_stop: CancellationToken,
    workers: JoinSet<()>,
}

impl Generation {
    fn start(app: Arc<App>, heartbeat: Heartbeat) -> Generation {
        let checks_stop = CancellationToken::new();
        let sends_stop = CancellationToken::new();
        let mut workers = JoinSet::new();
        app.dispatcher
            .spawn(app.store.clone(), sends_stop.clone(), &mut workers);
        let schedules = app
            .config
            .orgs
            .iter()
            .map(|o| (o.id.clone(), o.schedule.clone()))
            .collect();
        let check = {
            let checker = app.checker.clone();
            move |i: usize| {
                let checker = checker.clone();
                async move { checker.scheduled(i).await }
            }
        };
        let on_panic = {
            let checker = app.checker.clone();
            move |i: usize, message: &str| checker.panicked(i, message)
        };
        let settings = scheduler::SchedulerSettings {
            concurrency: app.config.poll.concurrency,
            grace: app.config.shutdown_timeout,
            heartbeat,
            clock: app.clock.clone(),
        };
        let scheduler = tokio::spawn(scheduler::run(
            schedules,
            settings,
            check,
            on_panic,
            checks_stop.clone(),
        ));
        let commits_stop = CancellationToken::new();
        let group_commit = tokio::spawn(check::group_commit(app.checker.clone(), commits_stop.clone()));
        let migrations = tokio::spawn(crate::live_migration::run(
            app.clone(),
            app.checker.live_migration_nudge().notified(),
            checks_stop.clone(),
        ));
        // Reports run only while leading, like checks, and with this config's [[report]]s.
        let reports_stop = CancellationToken::new();
        let reports = tokio::spawn(crate::report::jobs::run(app.clone(), reports_stop.clone()));
        Generation {
            checks_stop,
            scheduler,
            reports_stop,
            reports,
            commits_stop,
            group_commit,
            migrations,
            sends_stop,
            workers,
        }
    }

    /// Stops scheduling, lets running checks finish, then the channel workers; all within the
    /// config's `shutdown_timeout`. On shutdown (`last`), what the last checks produced is sent
    /// if there is time; anything still pending goes out after the next start.
    /// Stops at once after losing the lease: checks (whose writes would be refused anyway) and
    /// the group commit are cut off, and no new send starts. A send already under way finishes
    /// (its rows are claimed for longer than it can take, so no other instance sends them
    /// meanwhile) and its outcome is written (outcomes are guarded by the claim, not the lease),
    /// so that what a receiver accepted is not sent again by the next leader.
    async fn abandon(mut self, app: &App) {
        self.checks_stop.cancel();
        self.reports_stop.cancel();
        self.reports.abort();
        let _ = self.reports.await;
        self.commits_stop.cancel();
        self.sends_stop.cancel();
        self.scheduler.abort();
        self.group_commit.abort();
        self.migrations.abort();
        let _ = self.scheduler.await;
        let _ = self.group_commit.await;
        let _ = self.migrations.await;
        let drain = async { while self.workers.join_next().await.is_some() {} };
        if tokio::time::timeout(app.config.shutdown_timeout, drain).await.is_err() {
            self.workers.shutdown().await;
        }
        app.dispatcher.report_unrecorded();
    }

    async fn stop(mut self, app: &App, last: bool) {
        let deadline = clock::later(tokio::time::Instant::now(), app.config.shutdown_timeout);
        self.checks_stop.cancel();
        self.reports_stop.cancel();
        let _ = self.scheduler.await;
        // The migration loop stops at once: a check cut off writes nothing (its transaction
        // rolls back) and is simply repeated after the next start.
        let _ = self.migrations.await;
        let _ = self.reports.await;
        // The last checks' quiet notes are written before this generation ends.
        self.commits_stop.cancel();
        let _ = self.group_commit.await;
        // Workers finish the send they are in; none starts another.
        self.sends_stop.cancel();
        let drain = async { while self.workers.join_next().await.is_some() {} };
        if tokio::time::timeout_at(deadline, drain).await.is_err() {
            if !last {
                // Cut off, the send could reach its receiver unrecorded, and go again from the
                // new generation. It finishes instead, holding its channel's memory (shared with
                // the new dispatcher), whose new worker waits for it.
                tracing::warn!(
                    "a send was still running at the reload deadline; it finishes in the background before its channel sends again"
                );
                let mut workers = std::mem::take(&mut self.workers);
                tokio::spawn(async move { while workers.join_next().await.is_some() {} });
                return;
            }
            tracing::warn!(
                "a send was still running at the shutdown deadline; it stays pending and is retried after the next start"
            );
            self.workers.shutdown().await;
            app.dispatcher.report_unrecorded();
            return;
        }
        if last {
            // The workers are gone, so this cannot send a row twice.
            app.dispatcher.final_delivery(&app.store, deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reload_keeps_the_wall_clock_of_the_running_app() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "database = \"{}\"\n[cloud_manager]\npublic_key = \"pub\"\nprivate_key = \"key\"\n\n\
             [[org]]\nid = \"5f0c1234567890abcdef1234\"\nname = \"payments\"\n",
            dir.path().join("linkwatch.db").display()
        );
        let config = || Config::parse(&text, std::path::Path::new("linkwatch.toml")).map_err(Into::into);
        let app = App::new(config().unwrap(), ConsoleSink::default()).await.unwrap();
        app.clock.step(chrono::Duration::hours(-1));
        let reloaded = rebuild(&app, config(), ConsoleSink::default()).unwrap();
        let behind = chrono::Utc::now() - reloaded.clock.now();
        assert!(behind > chrono::Duration::minutes(59), "{behind}");
        app.store.close().await;
    }
}
