//! When reports go out. The leader runs [`run`]: tokio-cron-scheduler ticks each UTC report at
//! its cron slots ([`crate::cron::CronTicker`]); a report with a `timezone` is woken by a timer
//! on tokio's clock set to its next slot as [`CronExpr`] finds it in that zone (the scheduler's
//! own zones keep the offset of the day the job was made, its bug #87, so they go wrong at the
//! next DST change); and a guard looks again every [`GUARD_EVERY`]. Either way [`run_due`] decides from the store: the report's latest slot is
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
/// The latest slot missed while linkwatch was down is sent late, once, if it is less than this
/// old, whether or not the slots before it were sent; older slots are skipped. A report that
/// has never run (new, or renamed) missed nothing: it starts at its next slot.
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
    // Late: the latest slot only, never a backlog, and only if less than a day old. Down for one
    // slot or several, it sends the latest once, whatever became of the slots before it (the
    // record says only that this one was not sent). A report with no record at all has never
    // run: a first start at 08:59 is no reason to send yesterday's 09:00 report.
    (last.is_some() && age < LATE_LIMIT).then_some((slot, true))
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
            zone: report.cron.zone(),
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
    let (jobs, zoned) = by_zone(&reports);
    let ticks = settings.ticker && !jobs.is_empty();
    let mut seen: HashMap<usize, DateTime<Utc>> = HashMap::new();
    for (i, report) in reports.iter().enumerate() {
        step(&*host, i, report, &mut seen).await;
    }
    let mut ticker = if ticks { start_ticker(&jobs).await } else { None };
    let mut ticking_since = host.now();
    let every = settings.guard_every;
    let mut guard = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    guard.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let timer = next_zoned_slot(host.now(), zoned.iter().map(|i| &reports[*i].cron), every);
        tokio::select! {
            _ = stop.cancelled() => break,
            i = cron::next(&mut ticker) => {
                if let Some(report) = reports.get(i) {
                    step(&*host, i, report, &mut seen).await;
                }
            }
            _ = tokio::time::sleep(timer), if !zoned.is_empty() => {
                for i in &zoned {
                    step(&*host, *i, &reports[*i], &mut seen).await;
                }
            }
            _ = guard.tick() => {
                let ticker_gone = ticks && ticker.is_none();
                let slot_missed = guard_pass(&*host, &reports, &mut seen, ticking_since).await;
                if (ticker_gone || slot_missed) && ticks {
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

/// The reports whose cron runs in UTC, as the ticker's jobs (cron line, index), and the
/// indexes of the others, which the loop times itself on the wall clock.
fn by_zone(reports: &[config::ReportConfig]) -> (Vec<(String, usize)>, Vec<usize>) {
    let jobs: Vec<(String, usize)> = reports
        .iter()
        .enumerate()
        .filter(|(_, r)| utc(r))
        .map(|(i, r)| (r.cron.as_str().to_owned(), i))
        .collect();
    let zoned: Vec<usize> = (0..reports.len()).filter(|i| !utc(&reports[*i])).collect();
    (jobs, zoned)
}

fn utc(r: &config::ReportConfig) -> bool {
    r.cron.zone() == chrono_tz::Tz::UTC
}

/// One guard period's step of every report: whether the ticker missed a UTC slot since
/// `ticking_since` (the guard sent it), so that the ticker is started again.
async fn guard_pass(
    host: &impl Host,
    reports: &[config::ReportConfig],
    seen: &mut HashMap<usize, DateTime<Utc>>,
    ticking_since: DateTime<Utc>,
) -> bool {
    let mut missed = false;
    for (i, report) in reports.iter().enumerate() {
        if let Some(Outcome::Enqueued { slot, late: false, .. }) = step(host, i, report, seen).await
            && utc(report)
            && slot > ticking_since
            && (host.now() - slot).to_std().unwrap_or_default() > TICKER_SLACK
        {
            tracing::warn!(report = %report.name, %slot, "the cron scheduler did not fire this slot; the guard sent it, and the scheduler is started again");
            missed = true;
        }
    }
    missed
}

/// How long until the next slot of any of `crons` after `now`, on the wall clock; at most
/// `every`, so that a wall-clock step is caught up with within the guard's period. Pure.
pub fn next_zoned_slot<'a>(now: DateTime<Utc>, crons: impl Iterator<Item = &'a CronExpr>, every: Duration) -> Duration {
    crons
        .filter_map(|c| c.next_after(now))
        .filter_map(|next| (next - now).to_std().ok())
        .fold(every, Duration::min)
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
    fn a_slot_is_due_on_time_once_and_late_once_within_a_day_if_the_report_ever_ran() {
        let daily = CronExpr::parse("0 0 9 * * *").unwrap();
        let nine = at("2026-11-30T09:00:00Z");
        // On time, whatever the record says about earlier slots.
        assert_eq!(due(&daily, at("2026-11-30T09:00:30Z"), None), Some((nine, false)));
        // Recorded: nothing.
        assert_eq!(due(&daily, at("2026-11-30T09:00:30Z"), Some(nine)), None);
        // Down at 09:00, back at 15:00: sent once, late; a report that never ran missed nothing.
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
        // Less than a day old, not a day or more.
        assert_eq!(
            due(&daily, at("2026-12-01T08:59:59Z"), Some(yesterday)),
            Some((nine, true))
        );
        assert_eq!(
            due(&daily, at("2026-12-01T09:00:00Z"), Some(nine)),
            Some((at("2026-12-01T09:00:00Z"), false))
        );
        let noon = CronExpr::parse("0 0 12 * * Mon").unwrap();
        assert_eq!(
            due(&noon, at("2026-12-01T12:00:00Z"), Some(at("2026-11-23T12:00:00Z"))),
            None,
            "24 h old"
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
        // A report moved from 09:00 to 08:00 at noon: today's 08:00 slot was not sent, is less
        // than a day old, and the report has run: it goes, late.
        let eight = CronExpr::parse("0 0 8 * * *").unwrap();
        assert_eq!(
            due(&eight, at("2026-11-30T12:00:00Z"), Some(yesterday)),
            Some((at("2026-11-30T08:00:00Z"), true))
        );
    }

    fn berlin(text: &str) -> CronExpr {
        CronExpr::parse(text)
            .unwrap()
            .in_zone(crate::config::Zone::parse("Europe/Berlin").unwrap())
    }

    /// Europe/Berlin went to summer time on 2026-03-29 at 01:00 UTC and back on 2026-10-25.
    #[test]
    fn a_slot_in_a_zone_keeps_its_local_hour_across_dst_changes() {
        let daily = berlin("0 0 9 * * *");
        let ran = Some(at("2026-03-01T08:00:00Z"));
        for (now, slot) in [
            ("2026-03-28T08:00:30Z", "2026-03-28T08:00:00Z"), // 09:00 CET
            ("2026-03-29T07:00:30Z", "2026-03-29T07:00:00Z"), // 09:00 CEST, the day of the change
            ("2026-10-24T07:00:30Z", "2026-10-24T07:00:00Z"),
            ("2026-10-25T08:00:30Z", "2026-10-25T08:00:00Z"), // CET again
        ] {
            assert_eq!(due(&daily, at(now), ran), Some((at(slot), false)), "{now}");
        }
        // At 09:00 CEST the winter hour (08:00 UTC) is past, not due again.
        assert_eq!(
            due(&daily, at("2026-03-29T08:00:30Z"), Some(at("2026-03-29T07:00:00Z"))),
            None
        );
        assert_eq!(
            daily.next_after(at("2026-03-28T08:00:00Z")),
            Some(at("2026-03-29T07:00:00Z")),
            "23 hours later"
        );
        // The timer waits for the zone's next slot, at most the guard's period.
        let wait = next_zoned_slot(at("2026-03-29T06:59:50Z"), [&daily].into_iter(), GUARD_EVERY);
        assert_eq!(wait, Duration::from_secs(10));
        let wait = next_zoned_slot(at("2026-03-29T05:00:00Z"), [&daily].into_iter(), GUARD_EVERY);
        assert_eq!(wait, GUARD_EVERY);
    }

    /// What README says of the local times a DST change skips or repeats.
    #[test]
    fn a_skipped_local_time_comes_at_the_end_of_the_gap_and_a_repeated_one_once() {
        let night = berlin("0 30 2 * * *");
        let slots: Vec<_> =
            std::iter::successors(night.next_after(at("2026-03-27T12:00:00Z")), |t| night.next_after(*t))
                .take(3)
                .collect();
        // 2026-03-29 has no 02:30 in Berlin: that night's slot is 03:00 CEST.
        let spring = ["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"];
        assert_eq!(slots, spring.map(at));
        let slots: Vec<_> =
            std::iter::successors(night.next_after(at("2026-10-23T12:00:00Z")), |t| night.next_after(*t))
                .take(4)
                .collect();
        // 2026-10-25 has 02:30 twice (CEST, then CET): one slot, the first.
        let autumn = [
            "2026-10-24T00:30:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-26T01:30:00Z",
            "2026-10-27T01:30:00Z",
        ];
        assert_eq!(slots, autumn.map(at));
    }

    #[test]
    fn an_hourly_report_down_for_two_hours_sends_the_latest_hour_once() {
        let hourly = berlin("0 0 * * * *");
        let ran = at("2026-03-29T00:00:00Z"); // 01:00 CET; 02:00 local does not exist that night
        let back = at("2026-03-29T02:10:00Z"); // 04:10 CEST
        assert_eq!(due(&hourly, back, Some(ran)), Some((at("2026-03-29T02:00:00Z"), true)));
        assert_eq!(due(&hourly, back, Some(at("2026-03-29T02:00:00Z"))), None);
    }
}
