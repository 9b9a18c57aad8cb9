//! One check of an org: ask Cloud Manager, decide what the answer means against the stored
//! state, record it in one transaction, wake the channels. [`Checker::check_org`] is the step
//! that the scheduler, `linkwatch once` and the tests call; [`Checker::flush_quiet`] is the
//! group commit's step and [`group_commit`] its loop.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Client};
use crate::clock::Clock;
use crate::config::{Config, Org, OrgId};
use crate::detect::{self, Event, OrgState, Policy};
use crate::metrics::Metrics;
use crate::outcome::CheckOutcome;
use crate::router::Router;
use crate::scheduler::NotBefore;
use crate::store::{Applied, Check, Decision, QUIET_WINDOW, RemindersSent, Silenced, Store};

/// Tells channels' workers that rows are due for them; the dispatcher is one. A trait, so that a
/// check knows nothing of how channels send.
pub trait Wake: Send + Sync + std::fmt::Debug {
    fn wake(&self, channels: &[String]);
}

/// What one check saw and caused.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub outcome: CheckOutcome,
    pub events: Vec<Event>,
}

/// Everything one check of an org needs, built from one config around the store, metrics and
/// clock that outlive a reload.
#[derive(Debug)]
pub struct Checker {
    pub client: Client,
    pub store: Store,
    pub policy: Policy,
    /// Which channels hear about an event, decided when it is written.
    pub routes: Router,
    /// The wall clock for what is recorded; injectable so tests can step it.
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    wake: Arc<dyn Wake>,
    orgs: Arc<[Org]>,
    concurrency: usize,
    nudge: LiveMigrationNudge,
}

/// Wakes the live migrations' loop when the link of an org that one of them moves leaves
/// `SYNCED`, so that a migration in flight is reported at once.
#[derive(Debug, Clone, Default)]
pub struct LiveMigrationNudge {
    sources: Vec<OrgId>,
    notify: Arc<Notify>,
}

impl LiveMigrationNudge {
    /// What the live migrations' loop waits on.
    pub fn notified(&self) -> Arc<Notify> {
        self.notify.clone()
    }
}

/// When an answer came, and how it may be recorded (see [`Check`]).
#[derive(Debug, Clone, Copy)]
struct Answer {
    at: chrono::DateTime<chrono::Utc>,
    answered: tokio::time::Instant,
    quiet_path: bool,
    quiet_note: bool,
}

impl Checker {
    /// The checker of `config`'s orgs, waking channels through `wake`.
    pub fn new(
        config: &Config,
        store: Store,
        metrics: Arc<Metrics>,
        clock: Clock,
        wake: Arc<dyn Wake>,
    ) -> anyhow::Result<Checker> {
        let client = Client::new(
            client::ClientSettings::from_config(&config.cloud_manager, &config.poll),
            &config.sessions(),
        )
        .context("cannot build the HTTP client")?;
        Ok(Checker {
            client,
            store,
            policy: Policy {
                failures_before_alert: config.poll.failures_before_alert,
                confirm_checks: config.poll.confirm_checks,
            },
            routes: Router::new(config),
            clock,
            metrics,
            wake,
            orgs: config.orgs.clone(),
            concurrency: config.poll.concurrency,
            nudge: LiveMigrationNudge {
                sources: config.migrations.iter().map(|m| m.org.clone()).collect(),
                notify: Arc::default(),
            },
        })
    }

    /// Tells the workers of `channels` that rows are due for them.
    pub fn wake_channels(&self, channels: &[String]) {
        self.wake.wake(channels);
    }

    /// The configured org with this id.
    pub fn org(&self, id: &str) -> Option<&Org> {
        self.orgs.iter().find(|o| o.id.as_str() == id)
    }

    /// What wakes the live migrations' loop.
    pub fn live_migration_nudge(&self) -> &LiveMigrationNudge {
        &self.nudge
    }

    /// Checks one org now: asks Cloud Manager, applies the answer (decides the events from the
    /// stored state and records everything, in one transaction), then wakes the channels that
    /// have something to send. A check that can change nothing is only noted, for the next group
    /// commit ([`Checker::flush_quiet`]).
    pub async fn check_org(&self, org: &Org) -> anyhow::Result<CheckReport> {
        // A leader that lost its lease (found on waking from a pause, say) asks Cloud Manager
        // nothing more: its answer could not be recorded.
        if !self.store.may_send() {
            return Err(crate::store::StoreError::Fenced(crate::store::Fenced {
                why: "its lease ran out before this check",
            })
            .into());
        }
        let started = Instant::now();
        let (outcome, requests) = self.client.check_counted(&org.id, &org.endpoint, &org.credential).await;
        let took = started.elapsed();
        let answer = Answer {
            at: self.clock.now(),
            answered: tokio::time::Instant::now(),
            quiet_path: !self.routes.has_reminders(),
            quiet_note: false,
        };
        if let Ok(status) = &outcome
            && answer.quiet_path
            && self
                .store
                .record_quiet_later(&org.id, &org.name, status, answer.at, answer.answered)
        {
            tracing::trace!(org = %org.name, requests, "checked, nothing new");
            self.metrics.check(&org.id, &org.name, "ok", took, requests);
            return Ok(CheckReport {
                outcome,
                events: Vec::new(),
            });
        }
        let label = match &outcome {
            Ok(_) => "ok",
            Err(f) => f.class.as_str(),
        };
        // Counted before it is written: a check whose record the database refuses still
        // happened, and /metrics must not look as if the checks had stopped.
        self.metrics.check(&org.id, &org.name, label, took, requests);
        // Boxed: the full path's future (sqlx's transaction) is five times the size of the rest,
        // and unboxed it made every check's task that size, moved and copied whole on each spawn.
        let events = Box::pin(self.apply(org, &outcome, answer)).await?;
        Ok(CheckReport { outcome, events })
    }

    /// Checks every org of the config at once, at most `poll.concurrency` at a time, each in a
    /// task of its own; the results in the config's order.
    pub async fn check_all(self: &Arc<Self>) -> anyhow::Result<Vec<anyhow::Result<CheckReport>>> {
        let permits = Arc::new(tokio::sync::Semaphore::new(self.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..self.orgs.len() {
            let (checker, permits) = (self.clone(), permits.clone());
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                (i, checker.check_org(&checker.orgs[i]).await)
            });
        }
        let mut results = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            results.push(joined.context("a check task failed")?);
        }
        results.sort_by_key(|(i, _)| *i);
        Ok(results.into_iter().map(|(_, result)| result).collect())
    }

    /// The scheduler's check of the config's org `i`: errors are logged here, where the org has
    /// a name, and a `Retry-After` the answer asked for is handed back.
    pub async fn scheduled(&self, i: usize) -> NotBefore {
        let org = self.orgs.get(i)?;
        match self.check_org(org).await {
            Ok(report) => report.outcome.err().and_then(|f| f.retry_after),
            Err(e) => {
                crate::log_store_failure!(&e, org = %org.name, "{e:#}");
                None
            }
        }
    }

    /// A scheduled check of org `i` panicked: logged and counted here, where the org has a name;
    /// the scheduler has already freed the org for its next slot.
    pub fn panicked(&self, i: usize, message: &str) {
        if let Some(org) = self.orgs.get(i) {
            tracing::error!(org = %org.name, org_id = %org.id, "the check panicked: {message}; the org stays on its schedule");
            self.metrics.panicked("check", &org.name);
        }
    }

    /// The group commit: writes the quiet checks noted since the last call in one statement,
    /// and applies through the full path the few whose stored state changed meanwhile (another
    /// writer on the same database), so that nothing they mean is lost, only delayed by one
    /// window.
    pub async fn flush_quiet(&self) -> anyhow::Result<()> {
        for unmatched in self.store.flush_quiet().await? {
            let Some(org) = self.orgs.iter().find(|o| o.id == unmatched.org_id) else {
                continue; // removed from the config by a reload meanwhile
            };
            let outcome: CheckOutcome = Ok(unmatched.status);
            let answer = Answer {
                at: unmatched.at,
                answered: unmatched.answered,
                quiet_path: false,
                quiet_note: true,
            };
            self.apply(org, &outcome, answer).await?;
        }
        Ok(())
    }

    /// Records `outcome` through the full path (or the one-statement quiet one), logs and counts
    /// its events and wakes their channels.
    async fn apply(&self, org: &Org, outcome: &CheckOutcome, answer: Answer) -> anyhow::Result<Vec<Event>> {
        let check = Check {
            org_id: &org.id,
            org_name: &org.name,
            at: answer.at,
            outcome,
            quiet_path: answer.quiet_path,
            answered: answer.answered,
            quiet_note: answer.quiet_note,
        };
        let applied = self
            .store
            .apply(&check, |state, sent, silenced| {
                decide(&self.routes, self.policy, &check, state, sent, silenced)
            })
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
        self.tell(org, outcome, &decision);
        let channels: Vec<String> = decision.events.iter().flat_map(|(_, c)| c.iter().cloned()).collect();
        self.wake.wake(&channels);
        if decision.state.broken_since.is_some()
            && decision
                .events
                .iter()
                .any(|(e, _)| matches!(e, Event::StatusChanged { .. }))
            && self.nudge.sources.contains(&org.id)
        {
            // The link left SYNCED (or moved on while broken): the org's live migrations are
            // checked now, so that a migration in flight is reported at once.
            self.nudge.notify.notify_one();
        }
        Ok(decision.events.into_iter().map(|(e, _)| e).collect())
    }

    /// Logs a recorded check and its events, and counts the events.
    fn tell(&self, org: &Org, outcome: &CheckOutcome, decision: &Decision) {
        match outcome {
            Ok(status) => tracing::debug!(org = %org.name, %status, "checked"),
            Err(f) => {
                let failures = decision.state.consecutive_failures;
                tracing::warn!(org = %org.name, failures, "check failed: {}", f.explain());
            }
        }
        for (e, _) in &decision.events {
            self.metrics.event(e.kind());
            // The line the console channel prints, with the structured fields beside it.
            let summary = crate::message::summary(&org.name, e);
            tracing::info!(org = %org.name, org_id = %org.id, event = e.kind(), "{summary}");
        }
    }
}

/// What `check` means given the stored `state`: the new state, the events routed to their
/// channels, and the reminders due (each to the route that asked for it; none while `silenced`,
/// so that a long silence does not end in a burst of them). Pure: it runs inside the store's
/// transaction.
pub fn decide(
    routes: &Router,
    policy: Policy,
    check: &Check<'_>,
    state: &OrgState,
    sent: &RemindersSent,
    silenced: Silenced,
) -> Decision {
    let (next, events) = detect::detect(state, check.outcome, check.at, policy);
    let mut events: Vec<(Event, Vec<String>)> = events
        .into_iter()
        .map(|e| {
            let channels = routes.route(check.org_id, &e);
            (e, channels)
        })
        .collect();
    let mut reminded = Vec::new();
    if routes.has_reminders() && !silenced {
        let rules = routes.reminder_rules(check.org_id, sent);
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

/// The group commit's loop: [`Checker::flush_quiet`] every [`QUIET_WINDOW`] until `stop`, then
/// once more.
pub async fn group_commit(checker: Arc<Checker>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(QUIET_WINDOW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        if let Err(e) = checker.flush_quiet().await {
            // The checks stay noted; the next tick tries again. /healthz shows a database that
            // refuses writes through its own probe.
            crate::log_store_failure!(&e, "cannot record quiet checks yet: {e:#}");
        }
        if stopping {
            return;
        }
    }
}
