//! Following Atlas live migrations: `check_live_migration` is one step (ask Atlas, decide, record,
//! wake the channels), `run` the loop that checks every `[[migration]]` every `[atlas] every`,
//! and at once when a source org's link leaves `SYNCED` (its check nudges it), so that
//! `link_broken_during_migration` follows the link's own event without waiting a period.
//!
//! Live migrations are few (one per replica set being moved), so they are checked together on one
//! timer, apart from the per-org scheduler, which is built for thousands of orgs.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, LiveMigrationOutcome};
use crate::config::{Atlas, Config, LiveMigration};
use crate::detect::Event;
use crate::detect::live_migration::{LinkView, LiveMigrationPolicy, LiveMigrationState, detect_live_migration};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::store::{LiveMigrationCheck, LiveMigrationDecision, Store};

/// What checking a live migration needs from the process around it: the daemon's `App`, or a
/// test's. A trait rather than the `App` itself, so that this step does not depend on the
/// daemon that wires it (as `report::jobs::Host`).
pub trait Host: Send + Sync + 'static {
    fn config(&self) -> &Config;
    fn store(&self) -> &Store;
    /// The Atlas client, when the config has `[atlas]`.
    fn atlas(&self) -> Option<&Client>;
    fn router(&self) -> &Router;
    fn metrics(&self) -> &Metrics;
    /// The wall clock (injectable) that times the checks.
    fn now(&self) -> chrono::DateTime<chrono::Utc>;
    /// Tells these channels' workers that something is due.
    fn wake(&self, channels: &[String]);
}

/// What one check of a migration saw and caused.
#[derive(Debug, Clone)]
pub struct LiveMigrationReport {
    pub outcome: LiveMigrationOutcome,
    pub events: Vec<Event>,
}

/// Checks `migration` now and records what it means.
pub async fn check_live_migration<H: Host + ?Sized>(
    app: &H,
    migration: &LiveMigration,
) -> anyhow::Result<LiveMigrationReport> {
    if !app.store().may_send() {
        return Err(crate::store::StoreError::Fenced(crate::store::Fenced {
            why: "its lease ran out before this check",
        })
        .into());
    }
    let (Some(atlas), Some(client)) = (app.config().atlas.as_ref(), app.atlas()) else {
        anyhow::bail!("no [atlas] in the config");
    };
    let (outcome, deprecation) = client
        .live_migration(
            &migration.group_id,
            &migration.id,
            &migration.endpoint,
            &migration.credential,
        )
        .await;
    if let Some(deprecation) = deprecation {
        // Told apart from the check: a failure to record it is logged, and the next answer
        // carries the headers again.
        if let Err(e) = announce_deprecation(app, migration, deprecation).await {
            crate::log_store_failure!(&e, migration = %migration.name, "cannot record Atlas's deprecation notice: {e:#}");
        }
    }
    let check = LiveMigrationCheck {
        migration,
        at: app.now(),
        outcome: &outcome,
        answered: tokio::time::Instant::now(),
    };
    let Some(decision) = app
        .store()
        .apply_live_migration(&check, |state, link| decide(app, atlas, &check, state, link))
        .await
        .with_context(|| format!("cannot record the check of live migration {}", migration.name))?
    else {
        tracing::debug!(migration = %migration.name, "another writer recorded a newer check meanwhile; this one is dropped");
        return Ok(LiveMigrationReport {
            outcome,
            events: Vec::new(),
        });
    };
    log_check(migration, &outcome, decision.state.consecutive_failures);
    publish(app, migration, &decision.events);
    Ok(LiveMigrationReport {
        outcome,
        events: decision.events.into_iter().map(|(e, _)| e).collect(),
    })
}

/// Says what the check saw: a failure, and any field of the answer that could not be read.
fn log_check(migration: &LiveMigration, outcome: &LiveMigrationOutcome, consecutive_failures: u32) {
    match outcome {
        Ok(r) => {
            tracing::debug!(migration = %migration.name, status = %r.status, ready = r.ready_for_cutover, lag_s = ?r.lag_s, "checked");
            for what in &r.unreadable {
                tracing::warn!(migration = %migration.name, "Atlas's answer has a field linkwatch cannot read, taken as unknown: {what}");
            }
        }
        Err(f) => tracing::warn!(
            migration = %migration.name,
            failures = consecutive_failures,
            "live migration check failed: {}",
            f.explain_atlas()
        ),
    }
}

/// Counts and logs the check's events, and wakes the channels they go to.
fn publish<H: Host + ?Sized>(app: &H, migration: &LiveMigration, events: &[(Event, Vec<String>)]) {
    for (e, _) in events {
        app.metrics().event(e.kind());
        let org = app.config().orgs.iter().find(|o| o.id == migration.org);
        let summary = crate::message::summary(org.map_or(migration.org.as_str(), |o| o.name.as_str()), e);
        tracing::info!(migration = %migration.name, org_id = %migration.org, event = e.kind(), "{summary}");
    }
    let channels: Vec<String> = events.iter().flat_map(|(_, c)| c.iter().cloned()).collect();
    app.wake(&channels);
}

/// Records that Atlas announced the retirement of the version asked for, and sends
/// `api_deprecated` to the routes of the migration's source org, once per Atlas and version.
async fn announce_deprecation<H: Host + ?Sized>(
    app: &H,
    migration: &LiveMigration,
    deprecation: crate::outcome::ApiDeprecation,
) -> anyhow::Result<()> {
    let event = Event::ApiDeprecated {
        deprecation: deprecation.clone(),
    };
    let channels = app.router().route(&migration.org, &event);
    let payload = serde_json::to_string(&event)?;
    let recorded = app
        .store()
        .record_api_deprecation(&deprecation, migration.org.as_str(), app.now(), &payload, &channels)
        .await?;
    if recorded.is_some() {
        app.metrics().event(event.kind());
        let org = app.config().orgs.iter().find(|o| o.id == migration.org);
        let summary = crate::message::summary(org.map_or(migration.org.as_str(), |o| o.name.as_str()), &event);
        tracing::warn!(migration = %migration.name, org_id = %migration.org, event = event.kind(), "{summary}");
        app.wake(&channels);
    }
    Ok(())
}

/// What `check` means given the stored state and the org's link; pure, it runs inside the
/// store's transaction.
fn decide<H: Host + ?Sized>(
    app: &H,
    atlas: &Atlas,
    check: &LiveMigrationCheck<'_>,
    state: &LiveMigrationState,
    link: &LinkView,
) -> LiveMigrationDecision {
    let m = check.migration;
    let policy = LiveMigrationPolicy {
        failures_before_alert: app.config().poll.failures_before_alert,
        lag_alert: m.lag_alert,
        cutover_window: atlas.cutover_window,
        deadline_warnings: &atlas.deadline_warnings,
    };
    let (next, events) = detect_live_migration(&m.name, state, check.outcome, link, check.at, policy);
    let router = app.router();
    LiveMigrationDecision {
        deadline: next.deadline(atlas.cutover_window),
        state: next,
        events: events
            .into_iter()
            .map(|e| {
                let channels = router.route(&m.org, &e);
                (e, channels)
            })
            .collect(),
    }
}

/// Checks every migration of the config at once; the results in the config's order.
pub async fn check_all<H: Host + ?Sized>(app: &H) -> Vec<anyhow::Result<LiveMigrationReport>> {
    let checks = app.config().migrations.iter().map(|m| check_live_migration(app, m));
    futures_util::future::join_all(checks).await
}

/// Checks every migration every `[atlas] every`, and when `nudge` is notified, until `stop`.
pub async fn run<H: Host>(app: Arc<H>, nudge: Arc<Notify>, stop: CancellationToken) {
    let Some(atlas) = app.config().atlas.as_ref() else {
        return;
    };
    if app.config().migrations.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(atlas.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = nudge.notified() => {}
        }
        let results = tokio::select! {
            _ = stop.cancelled() => return,
            results = check_all(&*app) => results,
        };
        for (m, result) in app.config().migrations.iter().zip(results) {
            if let Err(e) = result {
                crate::log_store_failure!(&e, migration = %m.name, "{e:#}");
            }
        }
    }
}
