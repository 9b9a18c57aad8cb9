//! The daemon: wires config, client, store, scheduler and dispatcher together. `check_org` is
//! one step (what the scheduler, `linkwatch once` and the tests call); `run` is the loop, with
//! reload (a new config, same database) and a bounded shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::channels::ConsoleSink;
use crate::client::{self, Client};
use crate::clock::{self, Clock};
use crate::config::{Config, Org};
use crate::detect::{self, Event, OrgState, Policy};
use crate::dispatch::{DeliverySettings, Dispatcher, Memories};
use crate::leader::{self, Leadership};
use crate::metrics::Metrics;
use crate::monitoring;
use crate::outcome::CheckOutcome;
use crate::scheduler::{self, Heartbeat};
use crate::store::{Applied, Check, Decision, QUIET_WINDOW, RemindersSent, Store, WriterLock};
use crate::systemd;
use crate::web;

/// Everything a check needs, built from one config. A reload builds a new `App` around the same
/// store and metrics.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    /// The wall clock for what is recorded; injectable so tests can step it.
    pub clock: Clock,
    pub store: Store,
    pub client: Client,
    /// The Atlas client, when the config follows live migrations.
    pub atlas: Option<Client>,
    pub dispatcher: Dispatcher,
    pub metrics: Arc<Metrics>,
    /// Wakes the migration loop at once (a source org's link left `SYNCED`).
    pub live_migration_nudge: Arc<tokio::sync::Notify>,
}

/// What one check saw and caused.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub outcome: CheckOutcome,
    pub events: Vec<Event>,
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
        App::following(config, store, metrics, console, clock, Memories::default())
    }

    /// [`App::with_store`] whose channels go on from `memories` (the running app's, at a reload).
    fn following(
        config: Config,
        store: Store,
        metrics: Arc<Metrics>,
        console: ConsoleSink,
        clock: Clock,
        memories: Memories,
    ) -> anyhow::Result<App> {
        let client = Client::new(
            client::ClientSettings::from_config(&config.cloud_manager, &config.poll),
            &config.credentials,
        )
        .context("cannot build the HTTP client")?;
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
        let settings = DeliverySettings::with_clock(clock.clone());
        let dispatcher = Dispatcher::with_memories(&config, &console, metrics.clone(), settings, memories)?;
        Ok(App {
            config,
            clock,
            store,
            client,
            atlas,
            dispatcher,
            metrics,
            live_migration_nudge: Arc::default(),
        })
    }

    fn policy(&self) -> Policy {
        Policy {
            failures_before_alert: self.config.poll.failures_before_alert,
            confirm_checks: self.config.poll.confirm_checks,
        }
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
        &self.dispatcher.router
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

/// Checks one org now: asks Cloud Manager, applies the answer (decides the events from the
/// stored state and records everything, in one transaction), then wakes the channels that have
/// something to send. A check that can change nothing is only noted, for the next group commit
/// ([`flush_quiet`]).
pub async fn check_org(app: &App, org: &Org) -> anyhow::Result<CheckReport> {
    // A leader that lost its lease (found on waking from a pause, say) asks Cloud Manager
    // nothing more: its answer could not be recorded.
    if !app.store.may_send() {
        return Err(crate::store::Fenced {
            why: "its lease ran out before this check",
        }
        .into());
    }
    let started = Instant::now();
    let (outcome, requests) = app.client.check_counted(&org.id, &org.credential).await;
    let took = started.elapsed();
    let answer = Answer {
        at: app.clock.now(),
        answered: tokio::time::Instant::now(),
        quiet_path: !app.dispatcher.router.has_reminders(),
        quiet_note: false,
    };
    if let Ok(status) = &outcome
        && answer.quiet_path
        && app
            .store
            .record_quiet_later(&org.id, &org.name, status, answer.at, answer.answered)
    {
        tracing::trace!(org = %org.name, requests, "checked, nothing new");
        app.metrics.check(&org.id, &org.name, "ok", took, requests);
        return Ok(CheckReport {
            outcome,
            events: Vec::new(),
        });
    }
    // Boxed: the full path's future (sqlx's transaction) is five times the size of the rest,
    // and unboxed it made every check's task that size, moved and copied whole on each spawn.
    let label = match &outcome {
        Ok(_) => "ok",
        Err(f) => f.class.as_str(),
    };
    // Counted before it is written: a check whose record the database refuses still happened,
    // and /metrics must not look as if the checks had stopped.
    app.metrics.check(&org.id, &org.name, label, took, requests);
    let events = Box::pin(apply(app, org, &outcome, answer)).await?;
    Ok(CheckReport { outcome, events })
}

/// When an answer came, and how it may be recorded (see [`Check`]).
#[derive(Debug, Clone, Copy)]
struct Answer {
    at: chrono::DateTime<chrono::Utc>,
    answered: tokio::time::Instant,
    quiet_path: bool,
    quiet_note: bool,
}

/// Records `outcome` through the full path (or the one-statement quiet one), logs and counts
/// its events and wakes their channels.
async fn apply(app: &App, org: &Org, outcome: &CheckOutcome, answer: Answer) -> anyhow::Result<Vec<Event>> {
    let check = Check {
        org_id: &org.id,
        org_name: &org.name,
        at: answer.at,
        outcome,
        quiet_path: answer.quiet_path,
        answered: answer.answered,
        quiet_note: answer.quiet_note,
    };
    let applied = app
        .store
        .apply(&check, |state, sent| decide(app, org, &check, state, sent))
        .await
        .with_context(|| format!("cannot record the check of org {}", org.name))?;
    let decision = match applied {
        Applied::Recorded(decision) => decision,
        Applied::Quiet => {
            tracing::trace!(org = %org.name, "checked, nothing new");
            return Ok(Vec::new());
        }
        Applied::Superseded => {
            tracing::debug!(org = %org.name, "another writer recorded a newer check meanwhile; this one is dropped");
            return Ok(Vec::new());
        }
    };
    match outcome {
        Ok(status) => tracing::debug!(org = %org.name, %status, "checked"),
        Err(f) => {
            let failures = decision.state.consecutive_failures;
            tracing::warn!(org = %org.name, failures, "check failed: {}", f.explain());
        }
    }
    for (e, _) in &decision.events {
        app.metrics.event(e.kind());
        // The line the console channel prints, with the structured fields beside it.
        let summary = crate::message::summary(&org.name, e);
        tracing::info!(org = %org.name, org_id = %org.id, event = e.kind(), "{summary}");
    }
    let channels: Vec<String> = decision.events.iter().flat_map(|(_, c)| c.iter().cloned()).collect();
    app.dispatcher.wake(&channels);
    if decision.state.broken_since.is_some()
        && decision
            .events
            .iter()
            .any(|(e, _)| matches!(e, Event::StatusChanged { .. }))
        && app.config.migrations.iter().any(|m| m.org == org.id)
    {
        // The link left SYNCED (or moved on while broken): the org's live migrations are
        // checked now, so that a migration in flight is reported at once.
        app.live_migration_nudge.notify_one();
    }
    Ok(decision.events.into_iter().map(|(e, _)| e).collect())
}

/// The group commit: writes the quiet checks noted since the last call in one statement, and
/// applies through the full path the few whose stored state changed meanwhile (another writer on
/// the same database), so that nothing they mean is lost, only delayed by one window.
pub async fn flush_quiet(app: &App) -> anyhow::Result<()> {
    for unmatched in app.store.flush_quiet().await? {
        let Some(org) = app.config.orgs.iter().find(|o| o.id == unmatched.org_id) else {
            continue; // removed from the config by a reload meanwhile
        };
        let outcome: CheckOutcome = Ok(unmatched.status);
        let answer = Answer {
            at: unmatched.at,
            answered: unmatched.answered,
            quiet_path: false,
            quiet_note: true,
        };
        apply(app, org, &outcome, answer).await?;
    }
    Ok(())
}

/// Runs [`flush_quiet`] every [`QUIET_WINDOW`] until `stop`, then once more.
async fn group_commit(app: Arc<App>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(QUIET_WINDOW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        if let Err(e) = flush_quiet(&app).await {
            // The checks stay noted; the next tick tries again. /healthz shows a database that
            // refuses writes through its own probe.
            tracing::warn!("cannot record quiet checks yet: {e:#}");
        }
        if stopping {
            return;
        }
    }
}

/// What `check` means given the stored `state`: the new state, the events routed to their
/// channels, and the reminders due (each to the route that asked for it). Pure: it runs inside
/// the store's transaction.
fn decide(app: &App, org: &Org, check: &Check<'_>, state: &OrgState, sent: &RemindersSent) -> Decision {
    let router = &app.dispatcher.router;
    let (next, events) = detect::detect(state, check.outcome, check.at, app.policy());
    let mut events: Vec<(Event, Vec<String>)> = events
        .into_iter()
        .map(|e| {
            let channels = router.route(&org.id, &e);
            (e, channels)
        })
        .collect();
    let mut reminded = Vec::new();
    if router.has_reminders() {
        let rules = router.reminder_rules(&org.id, sent);
        let plain: Vec<_> = rules.iter().map(|(_, r, _)| r.clone()).collect();
        for (i, reminder) in detect::due_reminders(&next, &plain, check.at) {
            let (key, _, channels) = &rules[i];
            reminded.push(key.clone());
            events.push((reminder, channels.clone()));
        }
    }
    Decision {
        state: next,
        events,
        reminded,
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
    let _lock = lock_sqlite(&app.config).await?;
    lead_and_serve(app, shutdown, None, None).await
}

pub async fn run_with(config: Config, shutdown: CancellationToken, mut options: Options) -> anyhow::Result<()> {
    let _lock = lock_sqlite(&config).await?;
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

/// One daemon per SQLite file: the file lock, held until the daemon returns. (On PostgreSQL
/// several run; the lease decides which one leads.)
async fn lock_sqlite(config: &Config) -> anyhow::Result<Option<WriterLock>> {
    match config.database.sqlite_path() {
        Some(path) => Ok(Some(
            WriterLock::acquire_patiently(path, "run", lock_patience(config)).await?,
        )),
        None => Ok(None),
    }
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
    let lease_stop = CancellationToken::new();
    let (leadership, lease) = match store.postgres() {
        Some(pg) => {
            let timing = leader::LeaseTiming {
                ttl: app.config.leader_lease,
            };
            let (leadership, task) = leader::spawn(pg.clone(), timing, lease_stop.clone());
            (leadership, Some(task))
        }
        None => (Leadership::sole(), None),
    };
    let result = serve(app, shutdown, reload, console, leadership).await;
    lease_stop.cancel();
    if let Some(task) = lease {
        let _ = task.await;
    }
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
    let housekeeping = tokio::spawn(retention(
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
        current.clock.clone(),
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
            let app = app.clone();
            move |i: usize| {
                let app = app.clone();
                async move {
                    let org = app.config.orgs.get(i)?;
                    match check_org(&app, org).await {
                        Ok(report) => report.outcome.err().and_then(|f| f.retry_after),
                        Err(e) => {
                            tracing::error!(org = %org.name, "{e:#}");
                            None
                        }
                    }
                }
            }
        };
        // A check that panicked is logged and counted here, where the org has a name; the
        // scheduler has already freed the org for its next slot.
        let on_panic = {
            let app = app.clone();
            move |i: usize, message: &str| {
                if let Some(org) = app.config.orgs.get(i) {
                    tracing::error!(org = %org.name, org_id = %org.id, "the check panicked: {message}; the org stays on its schedule");
                    app.metrics.panicked("check", &org.name);
                }
            }
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
        let group_commit = tokio::spawn(group_commit(app.clone(), commits_stop.clone()));
        let migrations = tokio::spawn(crate::live_migration::run(
            app.clone(),
            app.live_migration_nudge.clone(),
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

/// When retention runs each day (UTC), besides at start.
pub const RETENTION_CRON: &str = "0 0 4 * * *";

/// Prunes old failed checks and sent deliveries at start and then daily at [`RETENTION_CRON`]
/// (tokio-cron-scheduler), older than the current config's retention (by the wall clock). If
/// the scheduler stops firing (its bug #113), a fallback on tokio's clock runs it 25 hours after
/// the last run and starts the scheduler again.
async fn retention(store: Store, keep: watch::Receiver<Duration>, clock: Clock, stop: CancellationToken) {
    const FALLBACK: Duration = Duration::from_secs(25 * 3600);
    let jobs = [(RETENTION_CRON.to_owned(), ())];
    let start = || async {
        crate::cron::CronTicker::start(&jobs)
            .await
            .map_err(|e| {
                tracing::error!("cannot start the cron scheduler for retention: {e}; it runs every 25h instead")
            })
            .ok()
    };
    let mut ticker = start().await;
    loop {
        let keep = *keep.borrow();
        // A retention too long to subtract from now keeps everything.
        let before = chrono::Duration::from_std(keep)
            .ok()
            .and_then(|keep| clock.now().checked_sub_signed(keep));
        match before.map(|before| store.prune(before)) {
            None => {}
            Some(prune) => match prune.await {
                Ok(pruned) if pruned == crate::store::Pruned::default() => {}
                Ok(crate::store::Pruned {
                    failures,
                    deliveries,
                    reports,
                }) => {
                    tracing::info!(failures, deliveries, reports, "pruned rows older than the retention")
                }
                Err(e) => tracing::warn!("retention: {e:#}"),
            },
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            () = crate::cron::next(&mut ticker) => {}
            _ = tokio::time::sleep(FALLBACK) => {
                tracing::warn!("the cron scheduler did not run retention for 25h; ran it and started the scheduler again");
                if let Some((old, _)) = ticker.take() {
                    old.stop().await;
                }
                ticker = start().await;
            }
        }
    }
    if let Some((ticker, _)) = ticker {
        ticker.stop().await;
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
