//! When reports go out. The leader runs [`run`]: tokio-cron-scheduler ticks each report at its
//! cron slots ([`crate::cron::CronTicker`]), and a guard on tokio's clock looks again every
//! [`GUARD_EVERY`]. Either way [`run_due`] decides from the store: the report's latest slot is
//! enqueued once (the `report_runs` row and its outbox rows in one transaction), so a tick that
//! comes twice, late or not at all never sends a slot twice, and misses it at most by the guard's
//! period. A guard that finds a slot the ticker should have fired re-creates the ticker (the
//! scheduler's bug #113 stops repeated jobs for good).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{Report, Slot};
use crate::config::{self, Config, CronExpr};
use crate::cron::{self, CronTicker};
use crate::store::Store;

/// A slot is on time while it is at most this old.
pub const ON_TIME: Duration = Duration::from_secs(60);
/// The latest slot missed while linkwatch was down is sent late, once, if it is at most this old
/// and the report had run before by the same schedule; older slots (and a new report's past
/// slots) are skipped.
pub const LATE_LIMIT: Duration = Duration::from_secs(24 * 3600);
/// How often the guard looks for due slots, whatever the ticker does.
pub const GUARD_EVERY: Duration = Duration::from_secs(30);
/// A slot this much past that the ticker did not fire means the ticker is stuck.
const TICKER_SLACK: Duration = Duration::from_secs(5);

/// What the jobs need from the daemon.
pub trait Host: Send + Sync + 'static {
    fn config(&self) -> &Config;
    fn store(&self) -> &Store;
    /// The wall clock (injectable) that names slots and times.
    fn now(&self) -> DateTime<Utc>;
    /// Tells these channels' workers that something is due.
    fn wake(&self, channels: &[String]);
}

/// Which slot of `cron` is due at `now`, and whether it is late, given the latest slot recorded
/// for the report (`last`). Pure.
pub fn due(cron: &CronExpr, now: DateTime<Utc>, last: Option<DateTime<Utc>>) -> Option<(DateTime<Utc>, bool)> {
    let slot = cron.latest_at_or_before(now)?;
    if last.is_some_and(|l| l >= slot) {
        return None;
    }
    let age = (now - slot).to_std().unwrap_or_default();
    if age <= ON_TIME {
        return Some((slot, false));
    }
    // Late: the latest slot only, never a backlog, within a day, and only for a report that ran
    // before by this cron (its last run is a slot of it): down for one slot or several, it
    // sends the latest once; a new or renamed report, or one given another schedule, starts at
    // its next slot.
    let ran_by_this_cron = last.is_some_and(|l| cron.latest_at_or_before(l) == Some(l));
    (ran_by_this_cron && age <= LATE_LIMIT).then_some((slot, true))
}

/// What [`run_due`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// This call recorded the slot and enqueued the report.
    Enqueued {
        slot: DateTime<Utc>,
        late: bool,
        event_id: String,
    },
    /// The slot was already recorded (a restart, another writer): nothing sent again.
    AlreadySent { slot: DateTime<Utc> },
    /// Nothing due: the latest slot is recorded, or too old to send late.
    NotDue,
}

/// Enqueues `report`'s latest slot if it is due and not yet recorded.
pub async fn run_due(host: &impl Host, report: &config::ReportConfig) -> anyhow::Result<Outcome> {
    let now = host.now();
    let store = host.store();
    // Only an old slot needs the record to decide; the unique key settles the rest.
    let last = match due(&report.cron, now, None) {
        Some((_, false)) => None,
        _ => store.last_report_slot(&report.name).await?,
    };
    let Some((slot, late)) = due(&report.cron, now, last) else {
        return Ok(Outcome::NotDue);
    };
    let content = build(
        host,
        Slot {
            name: &report.name,
            at: slot,
            late,
        },
    )
    .await?;
    let payload = serde_json::to_string(&content)?;
    match store
        .enqueue_report(&report.name, slot, late, now, &payload, &report.channels)
        .await?
    {
        Some(event_id) => {
            host.wake(&report.channels);
            Ok(Outcome::Enqueued { slot, late, event_id })
        }
        None => Ok(Outcome::AlreadySent { slot }),
    }
}

/// The report for `slot`, from the store's current status of the configured orgs.
pub async fn build(host: &impl Host, slot: Slot<'_>) -> anyhow::Result<Report> {
    let rows = host.store().current().await?;
    let migrations = host.store().live_migrations().await?;
    let config = host.config();
    let now = host.now();
    let failures = config.poll.failures_before_alert;
    Ok(
        Report::build(slot, &config.orgs, &rows, failures, now).with_live_migrations(
            &config.migrations,
            &config.orgs,
            &migrations,
            failures,
            now,
        ),
    )
}

/// How [`run_with`] runs; [`run`] takes the defaults.
#[derive(Debug, Clone, Copy)]
pub struct ReportJobSettings {
    /// How often the guard looks for due slots.
    pub guard_every: Duration,
    /// Whether to start tokio-cron-scheduler at all; off, the guard alone sends every report
    /// (what happens when the scheduler's jobs stop firing, bug #113), which tests show.
    pub ticker: bool,
}

impl Default for ReportJobSettings {
    fn default() -> Self {
        ReportJobSettings {
            guard_every: GUARD_EVERY,
            ticker: true,
        }
    }
}

/// Runs the reports of `host`'s config until `stop`: at start (a slot due now, or one missed
/// while down), at each tick, and at each guard period.
pub async fn run(host: Arc<impl Host>, stop: CancellationToken) {
    run_with(host, stop, ReportJobSettings::default()).await
}

/// [`run`] with its guard period and ticker chosen.
pub async fn run_with(host: Arc<impl Host>, stop: CancellationToken, settings: ReportJobSettings) {
    let reports = host.config().reports.clone();
    if reports.is_empty() {
        return;
    }
    let jobs: Vec<(String, usize)> = reports
        .iter()
        .enumerate()
        .map(|(i, r)| (r.cron.as_str().to_owned(), i))
        .collect();
    let mut seen: HashMap<usize, DateTime<Utc>> = HashMap::new();
    for (i, report) in reports.iter().enumerate() {
        step(&*host, i, report, &mut seen).await;
    }
    let mut ticker = if settings.ticker {
        start_ticker(&jobs).await
    } else {
        None
    };
    let mut ticking_since = host.now();
    let every = settings.guard_every;
    let mut guard = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    guard.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            i = cron::next(&mut ticker) => {
                if let Some(report) = reports.get(i) {
                    step(&*host, i, report, &mut seen).await;
                }
            }
            _ = guard.tick() => {
                let mut missed = settings.ticker && ticker.is_none();
                for (i, report) in reports.iter().enumerate() {
                    if let Some(Outcome::Enqueued { slot, late: false, .. }) = step(&*host, i, report, &mut seen).await
                        && slot > ticking_since
                        && (host.now() - slot).to_std().unwrap_or_default() > TICKER_SLACK
                    {
                        tracing::warn!(report = %report.name, %slot, "the cron scheduler did not fire this slot; the guard sent it, and the scheduler is started again");
                        missed = true;
                    }
                }
                if missed && settings.ticker {
                    if let Some((old, _)) = ticker.take() {
                        old.stop().await;
                    }
                    ticker = start_ticker(&jobs).await;
                    ticking_since = host.now();
                }
            }
        }
    }
    if let Some((ticker, _)) = ticker {
        ticker.stop().await;
    }
}

async fn start_ticker(jobs: &[(String, usize)]) -> Option<(CronTicker, tokio::sync::mpsc::Receiver<usize>)> {
    match CronTicker::start(jobs).await {
        Ok(t) => Some(t),
        Err(e) => {
            // The guard still sends every report, within its period.
            tracing::error!(
                "cannot start the cron scheduler for reports: {e}; the guard sends them within {GUARD_EVERY:?}"
            );
            None
        }
    }
}

/// One look at one report; logs what happened. `seen` remembers the last slot handled per
/// report, so the guard does not ask the database again about a slot already settled.
async fn step(
    host: &impl Host,
    i: usize,
    report: &config::ReportConfig,
    seen: &mut HashMap<usize, DateTime<Utc>>,
) -> Option<Outcome> {
    let latest = report.cron.latest_at_or_before(host.now());
    if latest.is_some() && seen.get(&i) == latest.as_ref() {
        return None;
    }
    match run_due(host, report).await {
        Ok(outcome) => {
            match &outcome {
                Outcome::Enqueued { slot, late, event_id } => {
                    tracing::info!(report = %report.name, %slot, late, event_id, "report enqueued")
                }
                Outcome::AlreadySent { slot } => {
                    tracing::debug!(report = %report.name, %slot, "report slot already sent")
                }
                Outcome::NotDue => {}
            }
            if let Some(latest) = latest {
                seen.insert(i, latest);
            }
            Some(outcome)
        }
        Err(e) => {
            // Not remembered: the guard tries again.
            tracing::warn!(report = %report.name, "cannot send the report yet: {e:#}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_slot_is_due_on_time_once_and_late_only_after_earlier_runs_and_within_a_day() {
        let daily = CronExpr::parse("0 0 9 * * *").unwrap();
        let nine = at("2026-11-30T09:00:00Z");
        // On time, whatever the record says about earlier slots.
        assert_eq!(due(&daily, at("2026-11-30T09:00:30Z"), None), Some((nine, false)));
        // Recorded: nothing.
        assert_eq!(due(&daily, at("2026-11-30T09:00:30Z"), Some(nine)), None);
        // Down at 09:00, back at 15:00: sent once, late, if the report ran before.
        let yesterday = at("2026-11-29T09:00:00Z");
        assert_eq!(
            due(&daily, at("2026-11-30T15:00:00Z"), Some(yesterday)),
            Some((nine, true))
        );
        assert_eq!(due(&daily, at("2026-11-30T15:00:00Z"), None), None);
        // Only the latest slot, never a backlog, and not past a day; after one missed slot or
        // several alike (an hourly report down for two hours sends the latest hour, once).
        let weekday = CronExpr::parse("0 0 9 * * Mon-Fri").unwrap();
        let friday = at("2026-11-27T09:00:00Z");
        assert_eq!(
            due(&weekday, at("2026-11-30T09:30:00Z"), Some(friday)),
            Some((nine, true))
        );
        let hourly = CronExpr::parse("0 0 * * * *").unwrap();
        assert_eq!(
            due(&hourly, at("2026-11-30T12:30:00Z"), Some(at("2026-11-30T10:00:00Z"))),
            Some((at("2026-11-30T12:00:00Z"), true))
        );
        assert_eq!(
            due(&hourly, at("2026-11-30T12:30:00Z"), Some(at("2026-11-30T12:00:00Z"))),
            None,
            "sent once"
        );
        let long_ago = at("2026-11-02T09:00:00Z");
        assert_eq!(
            due(&weekday, at("2026-11-30T09:30:00Z"), Some(long_ago)),
            Some((nine, true)),
            "the slot is recent, whenever the report last ran"
        );
        assert_eq!(
            due(&weekday, at("2026-12-05T12:00:00Z"), Some(long_ago)),
            None,
            "over a day late"
        );
        // A report moved from 09:00 to 08:00 at noon: its last run is no slot of the new
        // schedule, so today's 08:00 slot was never missed by a running linkwatch and is not
        // sent "late".
        let eight = CronExpr::parse("0 0 8 * * *").unwrap();
        assert_eq!(due(&eight, at("2026-11-30T12:00:00Z"), Some(yesterday)), None);
    }
}
