//! The daemon: wires config, client, store, scheduler and dispatcher together. `check_org` is
//! one step (what the scheduler, `linkwatch once` and the tests call); `run` is the loop, with
//! reload (a new config, same database) and a bounded shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::channels::ConsoleSink;
use crate::client::{self, Client};
use crate::clock::Clock;
use crate::config::{Config, Org};
use crate::detect::{self, Event, Policy};
use crate::dispatch::{Dispatcher, Settings};
use crate::metrics::Metrics;
use crate::monitoring;
use crate::outcome::CheckOutcome;
use crate::scheduler::{self, Heartbeat};
use crate::store::{CheckRecord, Store};
use crate::systemd;

/// Everything a check needs, built from one config. A reload builds a new `App` around the same
/// store and metrics.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    /// The wall clock for what is recorded; injectable so tests can step it.
    pub clock: Clock,
    pub store: Store,
    pub client: Client,
    pub dispatcher: Dispatcher,
    pub metrics: Arc<Metrics>,
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
        App::with_store(config, store, Arc::new(Metrics::default()), console)
    }

    pub fn with_store(
        config: Config,
        store: Store,
        metrics: Arc<Metrics>,
        console: ConsoleSink,
    ) -> anyhow::Result<App> {
        let client = Client::new(
            client::Settings::from_config(&config.cloud_manager, &config.poll),
            &config.credentials,
        )
        .context("cannot build the HTTP client")?;
        let clock = Clock::system();
        let dispatcher = Dispatcher::new(&config, &console, metrics.clone(), Settings::with_clock(clock.clone()))?;
        Ok(App {
            config,
            clock,
            store,
            client,
            dispatcher,
            metrics,
        })
    }

    fn policy(&self) -> Policy {
        Policy {
            failures_before_alert: self.config.poll.failures_before_alert,
            confirm_checks: self.config.poll.confirm_checks,
        }
    }
}

/// Checks one org now: asks Cloud Manager, decides events, records everything in one
/// transaction, then wakes the channels that have something to send.
pub async fn check_org(app: &App, org: &Org) -> anyhow::Result<CheckReport> {
    let started = Instant::now();
    let (outcome, requests) = app.client.check_counted(&org.id, &org.credential).await;
    let took = started.elapsed();
    let now = app.clock.now();
    let router = &app.dispatcher.router;

    // Most checks see what was already known: one UPDATE, when the stored state is quiet (see
    // `detect::is_quiet`), instead of a read and a transaction. Round trips to SQLite's thread
    // dominate the CPU cost of a check. Reminders need the full state, so routes with
    // `remind_every` take the full path.
    if let Ok(status) = &outcome
        && !router.has_reminders()
        && app
            .store
            .record_if_quiet(&org.id, &org.name, status, now)
            .await
            .with_context(|| format!("cannot record the check of org {}", org.name))?
    {
        tracing::debug!(org = %org.name, %status, requests, "checked, nothing new");
        app.metrics.check(org.id.as_str(), &org.name, "ok", took, requests);
        return Ok(CheckReport {
            outcome,
            events: Vec::new(),
        });
    }

    let state = app.store.load_state(&org.id).await?;
    let (next, mut events) = detect::detect(&state, &outcome, now, app.policy());
    let mut routed: Vec<(Event, Vec<String>)> = events.iter().map(|e| (e.clone(), router.route(&org.id, e))).collect();

    // Reminders go to the route that asked for them, and restart its clock.
    let mut reminded = Vec::new();
    if router.has_reminders() {
        let rules = router.reminder_rules(&org.id, &app.store.reminders_sent(&org.id).await?);
        let plain: Vec<_> = rules.iter().map(|(_, r, _)| r.clone()).collect();
        for (i, reminder) in detect::due_reminders(&next, &plain, now) {
            let (key, _, channels) = &rules[i];
            reminded.push(key.clone());
            events.push(reminder.clone());
            routed.push((reminder, channels.clone()));
        }
    }
    {
        app.store
            .record_check(&CheckRecord {
                org_id: &org.id,
                org_name: &org.name,
                at: now,
                outcome: &outcome,
                state: &next,
                events: &routed,
                reminded: &reminded,
            })
            .await
            .with_context(|| format!("cannot record the check of org {}", org.name))?;
    }

    let outcome_label = match &outcome {
        Ok(status) => {
            tracing::debug!(org = %org.name, %status, requests, "checked");
            "ok"
        }
        Err(f) => {
            tracing::warn!(org = %org.name, failures = next.consecutive_failures, "check failed: {}", f.explain());
            f.class.as_str()
        }
    };
    app.metrics
        .check(org.id.as_str(), &org.name, outcome_label, took, requests);
    for e in &events {
        app.metrics.event(e.kind());
        let detail = serde_json::to_string(e).unwrap_or_default();
        tracing::info!(org = %org.name, org_id = %org.id, event = e.kind(), "{detail}");
    }
    let channels: Vec<String> = routed.into_iter().flat_map(|(_, c)| c).collect();
    app.dispatcher.wake(&channels);
    Ok(CheckReport { outcome, events })
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
    let store = app.store.clone();
    let result = serve(app, shutdown, None, None).await;
    store.close().await;
    result
}

pub async fn run_with(config: Config, shutdown: CancellationToken, mut options: Options) -> anyhow::Result<()> {
    let store = Store::open(&config.database).await?;
    let app = Arc::new(App::with_store(
        config,
        store.clone(),
        Arc::new(Metrics::default()),
        options.console.clone(),
    )?);
    let reload = options.reload.take().zip(options.loader.take());
    let result = serve(app, shutdown, reload, Some(options.console)).await;
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
) -> anyhow::Result<()> {
    let heartbeat = Heartbeat::default();
    let shared = monitoring::Shared {
        store: app.store.clone(),
        metrics: app.metrics.clone(),
        heartbeat: heartbeat.clone(),
    };
    let services_stop = CancellationToken::new();
    let http_task = match app.config.http_listen {
        Some(addr) => Some(monitoring::serve(addr, shared.clone(), services_stop.clone()).await?),
        None => None,
    };
    let watchdog = systemd::spawn_watchdog(shared, services_stop.clone());
    let housekeeping = tokio::spawn(retention(
        app.store.clone(),
        app.config.retention,
        services_stop.clone(),
    ));

    tracing::info!(
        orgs = app.config.orgs.len(),
        channels = app.config.channels.len(),
        database = %app.config.database.display(),
        "linkwatch running"
    );
    systemd::ready();
    loop {
        let generation = Generation::start(app.clone(), heartbeat.clone());
        let next = loop {
            let asked = async {
                match reload.as_mut() {
                    Some((rx, _)) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break None,
                Some(()) = asked => {
                    let (_, loader) = reload.as_ref().expect("a reload was asked for, so there is a loader");
                    match rebuild(&app, loader(), console.clone().unwrap_or_default()) {
                        Ok(new) => break Some(new),
                        Err(e) => tracing::error!("reload rejected, still running the previous config: {e:#}"),
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
                generation.stop(&app, true).await;
                break;
            }
            Some(new) => {
                systemd::reloading();
                generation.stop(&app, false).await;
                tracing::info!(
                    orgs = new.config.orgs.len(),
                    channels = new.config.channels.len(),
                    "config reloaded"
                );
                app = Arc::new(new);
                systemd::ready();
            }
        }
    }
    services_stop.cancel();
    for task in [Some(housekeeping), http_task, watchdog].into_iter().flatten() {
        let _ = task.await;
    }
    tracing::info!("linkwatch stopped");
    Ok(())
}

/// A new `App` for `loaded`, around the running one's store and metrics.
fn rebuild(current: &App, loaded: anyhow::Result<Config>, console: ConsoleSink) -> anyhow::Result<App> {
    let config = loaded?;
    if config.database != current.config.database {
        anyhow::bail!(
            "the database moved from {} to {}; that needs a restart",
            current.config.database.display(),
            config.database.display()
        );
    }
    if config.http_listen != current.config.http_listen {
        tracing::warn!("[http] listen changed; it takes effect at the next restart");
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
    App::with_store(config, current.store.clone(), current.metrics.clone(), console)
}

/// The scheduler and channel workers of one config.
struct Generation {
    checks_stop: CancellationToken,
    scheduler: tokio::task::JoinHandle<()>,
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
                    let org = &app.config.orgs[i];
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
        let scheduler = tokio::spawn(scheduler::run(
            schedules,
            app.config.poll.concurrency,
            check,
            heartbeat,
            checks_stop.clone(),
            app.config.shutdown_timeout,
        ));
        Generation {
            checks_stop,
            scheduler,
            sends_stop,
            workers,
        }
    }

    /// Stops scheduling, lets running checks finish, then the channel workers; all within the
    /// config's `shutdown_timeout`. On shutdown (`last`), what the last checks produced is sent
    /// if there is time; anything still pending goes out after the next start.
    async fn stop(mut self, app: &App, last: bool) {
        let deadline = tokio::time::Instant::now() + app.config.shutdown_timeout;
        self.checks_stop.cancel();
        let _ = self.scheduler.await;
        // Workers finish the send they are in; none starts another.
        self.sends_stop.cancel();
        let drain = async { while self.workers.join_next().await.is_some() {} };
        if tokio::time::timeout_at(deadline, drain).await.is_err() {
            tracing::warn!(
                "a send was still running at the shutdown deadline; it stays pending and is retried after the next start"
            );
            self.workers.abort_all();
            return;
        }
        if last {
            // The workers are gone, so this cannot send a row twice.
            let flush = app.dispatcher.dispatch_all_due(&app.store);
            match tokio::time::timeout_at(deadline, flush).await {
                Ok(Err(e)) => tracing::warn!("final delivery: {e:#}"),
                Err(_) => {
                    tracing::warn!("shutdown deadline reached; undelivered events stay pending for the next start")
                }
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Prunes old failed checks and sent deliveries at start and then daily.
async fn retention(store: Store, keep: Duration, stop: CancellationToken) {
    loop {
        let before = Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        match store.prune(before).await {
            Ok((0, 0)) => {}
            Ok((failures, deliveries)) => {
                tracing::info!(failures, deliveries, "pruned rows older than the retention")
            }
            Err(e) => tracing::warn!("retention: {e:#}"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(86_400)) => {}
        }
    }
}
