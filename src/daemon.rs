//! The daemon: wires config, client, store, scheduler and dispatcher together. `check_org` is
//! one step (what the scheduler, `linkwatch once` and the tests call); `run` is the loop.

use std::sync::Arc;

use anyhow::Context as _;
use chrono::Utc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::channels::ConsoleSink;
use crate::client::{self, CheckOutcome, Client};
use crate::config::{Config, Org};
use crate::detect::{self, Event, Policy};
use crate::dispatch::Dispatcher;
use crate::scheduler;
use crate::store::{CheckRecord, Store};

/// Everything a check needs, built once from a config.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub store: Store,
    pub client: Client,
    pub dispatcher: Dispatcher,
}

/// What one check saw and caused.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub outcome: CheckOutcome,
    pub events: Vec<Event>,
}

impl App {
    pub async fn new(config: Config, console: ConsoleSink) -> anyhow::Result<App> {
        let store = Store::open(&config.database).await?;
        let client = Client::new(
            client::Settings::from_config(&config.cloud_manager, &config.poll),
            &config.credentials,
        )
        .context("cannot build the HTTP client")?;
        let dispatcher = Dispatcher::new(&config, &console)?;
        Ok(App {
            config,
            store,
            client,
            dispatcher,
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
    let outcome = app.client.check(&org.id, &org.credential).await;
    let state = app.store.load_state(&org.id).await?;
    let now = Utc::now();
    let (next, mut events) = detect::detect(&state, &outcome, now, app.policy());
    let router = &app.dispatcher.router;
    let mut routed: Vec<(Event, Vec<String>)> = events
        .iter()
        .map(|e| (e.clone(), router.route(&org.id, e)))
        .collect();

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

    match &outcome {
        Ok(status) => tracing::debug!(org = %org.name, %status, "checked"),
        Err(f) => {
            tracing::warn!(org = %org.name, failures = next.consecutive_failures, "check failed: {}", f.explain())
        }
    }
    for e in &events {
        tracing::info!(org = %org.name, org_id = %org.id, event = e.kind(), "{}", serde_json::to_string(e).unwrap_or_default());
    }
    let channels: Vec<String> = routed.into_iter().flat_map(|(_, c)| c).collect();
    app.dispatcher.wake(&channels);
    Ok(CheckReport { outcome, events })
}

/// Runs the daemon until `shutdown` is cancelled: checks on schedule, delivers events.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let app = Arc::new(App::new(config, ConsoleSink::Stdout).await?);
    run_app(app, shutdown).await
}

/// [`run`] with an `App` the caller built (tests choose the console sink).
pub async fn run_app(app: Arc<App>, shutdown: CancellationToken) -> anyhow::Result<()> {
    tracing::info!(
        orgs = app.config.orgs.len(),
        channels = app.config.channels.len(),
        database = %app.config.database.display(),
        "linkwatch running"
    );
    let mut workers = JoinSet::new();
    let dispatch_stop = CancellationToken::new();
    app.dispatcher
        .spawn(app.store.clone(), dispatch_stop.clone(), &mut workers);

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
    scheduler::run(schedules, app.config.poll.concurrency, check, shutdown).await;

    // Checks have finished; let the workers send what those checks produced, then stop them.
    // Anything still pending stays in the outbox and goes out after the next start.
    if let Err(e) = app.dispatcher.dispatch_all_due(&app.store).await {
        tracing::warn!("final dispatch: {e:#}");
    }
    dispatch_stop.cancel();
    while workers.join_next().await.is_some() {}
    app.store.close().await;
    tracing::info!("linkwatch stopped");
    Ok(())
}
