//! What one check of an Atlas live migration means: a pure function from (stored state, the
//! answer, the source org's link, now, policy) to (new state, events), like [`super::detect`]
//! for the link.
//!
//! The cutover deadline is an estimate. Atlas gives neither a deadline nor a "ready since"; it
//! starts its cutover window (120 h) when the migration first becomes ready, which linkwatch sees
//! at most one check late, and an extension made in the Atlas UI is invisible to the API. The
//! window is therefore counted from the *first* time readiness was seen in this migration, even
//! if readiness was lost and came back: a warning too early costs less than one too late.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Event, seconds_since};
use crate::client::MigrationOutcome;

/// The status of a migration that is under way (preparing, syncing, or cutting over).
pub const WORKING: &str = "WORKING";

/// Lag above the threshold for this many checks in a row is `lag_high`; at or below
/// [`RECOVER_RATIO`] of it for as many, `lag_recovered`.
pub const LAG_CHECKS: u32 = 3;

/// Hysteresis: a lag hovering around the threshold does not alternate alerts and recoveries.
pub const RECOVER_RATIO: f64 = 0.8;

/// What linkwatch remembers about one migration between checks (`migration_state`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MigrationState {
    /// The last status seen; `None` until the first successful check.
    pub status: Option<String>,
    pub status_since: Option<DateTime<Utc>>,
    pub ready: bool,
    /// When readiness was first seen while this migration was `WORKING`: the estimated start of
    /// the cutover window.
    pub ready_since: Option<DateTime<Utc>>,
    pub lag_s: Option<i64>,
    pub lag_high: bool,
    pub lag_high_since: Option<DateTime<Utc>>,
    /// Checks in a row on the far side of the threshold (above it while not high, below the
    /// recovery level while high).
    pub lag_streak: u32,
    /// The smallest deadline warning (in seconds left) already sent.
    pub warned_s: Option<i64>,
    /// The link break (its `broken_since`) already reported as `link_broken_during_migration`.
    pub link_break_reported: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    pub failing_since: Option<DateTime<Utc>>,
    pub failing_alerted: bool,
}

impl MigrationState {
    /// The estimated end of the cutover window, while one runs.
    pub fn deadline(&self, window: Duration) -> Option<DateTime<Utc>> {
        let since = self.ready_since.filter(|_| self.status.as_deref() == Some(WORKING))?;
        since.checked_add_signed(chrono::Duration::from_std(window).ok()?)
    }
}

/// The source org's link, as stored when the migration is checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkView {
    pub status: Option<String>,
    /// When the link left `SYNCED` (see `OrgState::broken_since`).
    pub broken_since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MigrationPolicy<'a> {
    pub failures_before_alert: u32,
    pub lag_alert: Option<Duration>,
    pub cutover_window: Duration,
    /// Time left at which to warn, longest first.
    pub deadline_warnings: &'a [Duration],
}

pub fn detect_migration(
    name: &str,
    state: &MigrationState,
    outcome: &MigrationOutcome,
    link: &LinkView,
    now: DateTime<Utc>,
    policy: MigrationPolicy<'_>,
) -> (MigrationState, Vec<Event>) {
    let mut next = state.clone();
    let mut events = Vec::new();
    let migration = || name.to_owned();
    let reading = match outcome {
        Err(failure) => {
            next.consecutive_failures = state.consecutive_failures.saturating_add(1);
            let since = *next.failing_since.get_or_insert(now);
            if next.consecutive_failures >= policy.failures_before_alert && !state.failing_alerted {
                next.failing_alerted = true;
                events.push(Event::MigrationCheckFailing {
                    migration: migration(),
                    failures: next.consecutive_failures,
                    since,
                    failure: failure.clone(),
                });
            }
            // What is known of the migration still meets the link's news.
            link_broken(name, &mut next, link, &mut events);
            return (next, events);
        }
        Ok(reading) => reading,
    };

    if state.failing_alerted {
        events.push(Event::MigrationCheckRecovered {
            migration: migration(),
            failures: state.consecutive_failures,
            failed_for_s: seconds_since(state.failing_since, now),
        });
    }
    next.consecutive_failures = 0;
    next.failing_since = None;
    next.failing_alerted = false;

    if state.status.as_deref() != Some(reading.status.as_str()) {
        events.push(Event::MigrationStatusChanged {
            migration: migration(),
            from: state.status.clone(),
            to: reading.status.clone(),
            from_lasted_s: state.status.as_ref().map(|_| seconds_since(state.status_since, now)),
        });
        next.status = Some(reading.status.clone());
        next.status_since = Some(now);
        if reading.status != WORKING {
            // Readiness, lag and the window belong to a running migration; a finished or failed
            // one has said all it will in its status change.
            next.ready_since = None;
            next.warned_s = None;
            next.lag_high = false;
            next.lag_high_since = None;
            next.lag_streak = 0;
        }
    }
    let working = reading.status == WORKING;

    next.ready = reading.ready_for_cutover;
    if working && reading.ready_for_cutover && !state.ready {
        let since = *next.ready_since.get_or_insert(now);
        events.push(Event::ReadyForCutover {
            migration: migration(),
            deadline: add(since, policy.cutover_window),
            lag_s: reading.lag_s,
        });
    } else if working && state.ready && !reading.ready_for_cutover {
        events.push(Event::ReadyForCutoverLost {
            migration: migration(),
            lag_s: reading.lag_s,
        });
    }

    next.lag_s = reading.lag_s;
    if let (Some(threshold), Some(lag), true) = (policy.lag_alert, reading.lag_s, working) {
        let threshold_s = threshold.as_secs() as i64;
        let beyond = if next.lag_high {
            (lag as f64) <= threshold_s as f64 * RECOVER_RATIO
        } else {
            lag > threshold_s
        };
        next.lag_streak = if beyond { next.lag_streak + 1 } else { 0 };
        if next.lag_streak >= LAG_CHECKS {
            next.lag_streak = 0;
            if next.lag_high {
                events.push(Event::LagRecovered {
                    migration: migration(),
                    lag_s: lag,
                    threshold_s,
                    high_for_s: seconds_since(next.lag_high_since, now),
                });
                next.lag_high = false;
                next.lag_high_since = None;
            } else {
                events.push(Event::LagHigh {
                    migration: migration(),
                    lag_s: lag,
                    threshold_s,
                });
                next.lag_high = true;
                next.lag_high_since = Some(now);
            }
        }
    }

    if let Some(deadline) = next.deadline(policy.cutover_window) {
        let left_s = (deadline - now).num_seconds();
        // After a restart or a long outage several warnings may be due at once: send the most
        // urgent one only.
        let due = policy
            .deadline_warnings
            .iter()
            .map(|w| w.as_secs() as i64)
            .filter(|w| left_s <= *w && next.warned_s.is_none_or(|sent| *w < sent))
            .min();
        if let Some(warning_s) = due {
            next.warned_s = Some(warning_s);
            events.push(Event::CutoverDeadline {
                migration: migration(),
                deadline,
                left_s,
            });
        }
    }

    link_broken(name, &mut next, link, &mut events);
    (next, events)
}

/// `link_broken_during_migration`, once per break of the link, while the migration works.
fn link_broken(name: &str, next: &mut MigrationState, link: &LinkView, events: &mut Vec<Event>) {
    let broken = link.status.as_deref().is_some_and(|s| s != "SYNCED") && link.broken_since.is_some();
    if next.status.as_deref() == Some(WORKING) && broken && next.link_break_reported != link.broken_since {
        next.link_break_reported = link.broken_since;
        events.push(Event::LinkBrokenDuringMigration {
            migration: name.to_owned(),
            link_status: link.status.clone().unwrap_or_default(),
            broken_since: link.broken_since.unwrap_or_default(),
        });
    }
}

fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}
