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
use crate::outcome::LiveMigrationOutcome;

/// The status of a migration that is under way (preparing, syncing, or cutting over).
pub const WORKING: &str = "WORKING";

/// The statuses after which a migration does nothing more (a new migration has a new id).
pub const FINAL: [&str; 3] = ["COMPLETE", "FAILED", "EXPIRED"];

/// A live migration that ended without moving the data: Atlas's `FAILED`, or `EXPIRED` (its
/// cutover window ran out). Messages, mail and the page show it in the failure colour.
pub fn ended_badly(status: &str) -> bool {
    matches!(status, "FAILED" | "EXPIRED")
}

fn is_final(status: &str) -> bool {
    FINAL.contains(&status)
}

/// Lag above the threshold for this many checks in a row is `lag_high`; at or below
/// [`RECOVER_RATIO`] of it for as many, `lag_recovered`.
pub const LAG_CHECKS: u32 = 3;

/// Hysteresis: a lag hovering around the threshold does not alternate alerts and recoveries.
pub const RECOVER_RATIO: f64 = 0.8;

/// What linkwatch remembers about one migration between checks (`migration_state`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveMigrationState {
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

impl LiveMigrationState {
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
pub struct LiveMigrationPolicy<'a> {
    pub failures_before_alert: u32,
    pub lag_alert: Option<Duration>,
    pub cutover_window: Duration,
    /// Time left at which to warn, longest first.
    pub deadline_warnings: &'a [Duration],
}

pub fn detect_live_migration(
    name: &str,
    state: &LiveMigrationState,
    outcome: &LiveMigrationOutcome,
    link: &LinkView,
    now: DateTime<Utc>,
    policy: LiveMigrationPolicy<'_>,
) -> (LiveMigrationState, Vec<Event>) {
    let mut next = state.clone();
    let mut events = Vec::new();
    match outcome {
        Err(failure) => failed(name, state, &mut next, failure, now, &policy, &mut events),
        Ok(reading) => {
            recovered(name, state, &mut next, now, &mut events);
            status(name, state, &mut next, reading, now, &mut events);
            readiness(name, state, &mut next, reading, now, &policy, &mut events);
            lag(name, &mut next, reading, now, &policy, &mut events);
            deadline_warning(name, &mut next, now, &policy, &mut events);
        }
    }
    // What is known of the migration (even when this check failed) meets the link's news.
    link_broken(name, &mut next, link, &mut events);
    (next, events)
}

/// A failed check: counted, and `check_failing` once the policy's number is reached.
fn failed(
    name: &str,
    state: &LiveMigrationState,
    next: &mut LiveMigrationState,
    failure: &crate::outcome::Failure,
    now: DateTime<Utc>,
    policy: &LiveMigrationPolicy<'_>,
    events: &mut Vec<Event>,
) {
    next.consecutive_failures = state.consecutive_failures.saturating_add(1);
    let since = *next.failing_since.get_or_insert(now);
    if next.consecutive_failures >= policy.failures_before_alert && !state.failing_alerted {
        next.failing_alerted = true;
        events.push(Event::MigrationCheckFailing {
            migration: name.to_owned(),
            failures: next.consecutive_failures,
            since,
            failure: failure.clone(),
        });
    }
}

/// A check that answered after an alert of failing ones: `check_recovered`; the count restarts.
fn recovered(
    name: &str,
    state: &LiveMigrationState,
    next: &mut LiveMigrationState,
    now: DateTime<Utc>,
    events: &mut Vec<Event>,
) {
    if state.failing_alerted {
        events.push(Event::MigrationCheckRecovered {
            migration: name.to_owned(),
            failures: state.consecutive_failures,
            failed_for_s: seconds_since(state.failing_since, now),
        });
    }
    next.consecutive_failures = 0;
    next.failing_since = None;
    next.failing_alerted = false;
}

/// A new status: `status_changed`; a final one ends what belongs to a running migration.
fn status(
    name: &str,
    state: &LiveMigrationState,
    next: &mut LiveMigrationState,
    reading: &crate::outcome::LiveMigrationReading,
    now: DateTime<Utc>,
    events: &mut Vec<Event>,
) {
    if state.status.as_deref() == Some(reading.status.as_str()) {
        return;
    }
    events.push(Event::MigrationStatusChanged {
        migration: name.to_owned(),
        from: state.status.clone(),
        to: reading.status.clone(),
        from_lasted_s: state.status.as_ref().map(|_| seconds_since(state.status_since, now)),
        migration_hosts: reading.migration_hosts.clone(),
    });
    next.status = Some(reading.status.clone());
    next.status_since = Some(now);
    if is_final(&reading.status) {
        // Readiness, lag and the window belong to a running migration; a finished or failed
        // one has said all it will in its status change. Any other status (an undocumented
        // one, say) may be a passing state: the window keeps counting from the first
        // readiness.
        next.ready_since = None;
        next.warned_s = None;
        next.lag_high = false;
        next.lag_high_since = None;
        next.lag_streak = 0;
    }
}

/// Ready for cutover, or no longer: the window counts from the first readiness.
fn readiness(
    name: &str,
    state: &LiveMigrationState,
    next: &mut LiveMigrationState,
    reading: &crate::outcome::LiveMigrationReading,
    now: DateTime<Utc>,
    policy: &LiveMigrationPolicy<'_>,
    events: &mut Vec<Event>,
) {
    let working = reading.status == WORKING;
    // An answer without `readyForCutover` says nothing about it: the last known value stands.
    let ready = reading.ready_for_cutover.unwrap_or(state.ready);
    next.ready = ready;
    if working && ready && next.ready_since.is_none() {
        next.ready_since = Some(now);
    }
    if working && ready && !state.ready {
        let since = next.ready_since.unwrap_or(now);
        events.push(Event::ReadyForCutover {
            migration: name.to_owned(),
            deadline: add(since, policy.cutover_window),
            lag_s: reading.lag_s,
        });
    } else if working && state.ready && !ready {
        events.push(Event::ReadyForCutoverLost {
            migration: name.to_owned(),
            lag_s: reading.lag_s,
        });
    }
}

/// The lag against `lag_alert`, with hysteresis: high after [`LAG_CHECKS`] checks above it,
/// recovered after as many at or below [`RECOVER_RATIO`] of it.
fn lag(
    name: &str,
    next: &mut LiveMigrationState,
    reading: &crate::outcome::LiveMigrationReading,
    now: DateTime<Utc>,
    policy: &LiveMigrationPolicy<'_>,
    events: &mut Vec<Event>,
) {
    next.lag_s = reading.lag_s;
    let working = reading.status == WORKING;
    let (Some(threshold), Some(lag), true) = (policy.lag_alert, reading.lag_s, working) else {
        return;
    };
    let threshold_s = threshold.as_secs() as i64;
    let beyond = if next.lag_high {
        (lag as f64) <= threshold_s as f64 * RECOVER_RATIO
    } else {
        lag > threshold_s
    };
    next.lag_streak = if beyond { next.lag_streak + 1 } else { 0 };
    if next.lag_streak < LAG_CHECKS {
        return;
    }
    next.lag_streak = 0;
    if next.lag_high {
        events.push(Event::LagRecovered {
            migration: name.to_owned(),
            lag_s: lag,
            threshold_s,
            high_for_s: seconds_since(next.lag_high_since, now),
        });
        next.lag_high = false;
        next.lag_high_since = None;
    } else {
        events.push(Event::LagHigh {
            migration: name.to_owned(),
            lag_s: lag,
            threshold_s,
        });
        next.lag_high = true;
        next.lag_high_since = Some(now);
    }
}

/// The most urgent warning due before the estimated cutover deadline, while a cutover is
/// possible: "cut over now" to a migration that is not ready would be advice nobody can follow
/// (one due meanwhile comes when it is ready again).
fn deadline_warning(
    name: &str,
    next: &mut LiveMigrationState,
    now: DateTime<Utc>,
    policy: &LiveMigrationPolicy<'_>,
    events: &mut Vec<Event>,
) {
    let Some(deadline) = next.deadline(policy.cutover_window).filter(|_| next.ready) else {
        return;
    };
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
            migration: name.to_owned(),
            deadline,
            left_s,
        });
    }
}

/// `link_broken_during_migration`, once per break of the link, while the migration works.
fn link_broken(name: &str, next: &mut LiveMigrationState, link: &LinkView, events: &mut Vec<Event>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::LiveMigrationReading;
    use crate::outcome::{Failure, FailureClass};

    const H: i64 = 3600;
    const WARNINGS: [Duration; 3] = [
        Duration::from_secs(24 * 3600),
        Duration::from_secs(6 * 3600),
        Duration::from_secs(3600),
    ];

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn policy() -> LiveMigrationPolicy<'static> {
        LiveMigrationPolicy {
            failures_before_alert: 2,
            lag_alert: Some(Duration::from_secs(600)),
            cutover_window: Duration::from_secs(120 * 3600),
            deadline_warnings: &WARNINGS,
        }
    }

    fn ok(status: &str, ready: bool, lag: Option<i64>) -> LiveMigrationOutcome {
        Ok(LiveMigrationReading {
            ready_for_cutover: Some(ready),
            lag_s: lag,
            ..LiveMigrationReading::of_status(status)
        })
    }

    fn fail() -> LiveMigrationOutcome {
        Err(Failure::new(FailureClass::NotFound, Some(404), None, "gone"))
    }

    /// Runs `steps` (seconds since the start, outcome, link) from an empty state and returns the
    /// event kinds of each step.
    fn run(steps: &[(i64, LiveMigrationOutcome, LinkView)]) -> (LiveMigrationState, Vec<Vec<&'static str>>) {
        let mut state = LiveMigrationState::default();
        let mut kinds = Vec::new();
        for (at, outcome, link) in steps {
            let (next, events) = detect_live_migration("m", &state, outcome, link, t(*at), policy());
            kinds.push(events.iter().map(Event::kind).collect());
            state = next;
        }
        (state, kinds)
    }

    fn synced() -> LinkView {
        LinkView {
            status: Some("SYNCED".into()),
            broken_since: None,
        }
    }

    #[test]
    fn the_path_to_cutover_with_each_deadline_warning_once() {
        let link = synced;
        let (state, kinds) = run(&[
            (0, ok("NEW", false, None), link()),
            (60, ok("WORKING", false, Some(900)), link()),
            (120, ok("WORKING", true, Some(20)), link()),
            // Ready at 120 s: the estimated deadline is 120 h later.
            (96 * H + 60, ok("WORKING", true, Some(20)), link()),
            (96 * H + 120, ok("WORKING", true, Some(20)), link()),
            (96 * H + 180, ok("WORKING", true, Some(20)), link()),
            (114 * H + 120, ok("WORKING", true, Some(20)), link()),
            (119 * H + 120, ok("WORKING", true, Some(20)), link()),
            (119 * H + 180, ok("WORKING", true, Some(20)), link()),
            (119 * H + 600, ok("COMPLETE", false, None), link()),
        ]);
        assert_eq!(
            kinds,
            vec![
                vec!["migration_status_changed"],
                vec!["migration_status_changed"],
                vec!["ready_for_cutover"],
                vec![],                   // 24 h 1 min left
                vec!["cutover_deadline"], // 24 h
                vec![],
                vec!["cutover_deadline"], // 6 h
                vec!["cutover_deadline"], // 1 h
                vec![],
                vec!["migration_status_changed"],
            ]
        );
        assert_eq!(state.ready_since, None, "a finished migration has no window");
    }

    #[test]
    fn the_deadline_counts_from_the_first_readiness_and_after_an_outage_warns_once() {
        let (_, kinds) = run(&[
            (0, ok("WORKING", true, Some(20)), synced()),
            (60, ok("WORKING", false, Some(700)), synced()),
            (120, ok("WORKING", true, Some(20)), synced()),
            // Linkwatch was down until 30 min before the deadline: one warning, not three.
            (120 * H - 1800, ok("WORKING", true, Some(20)), synced()),
        ]);
        assert_eq!(
            kinds,
            vec![
                vec!["migration_status_changed", "ready_for_cutover"],
                vec!["ready_for_cutover_lost"],
                vec!["ready_for_cutover"],
                vec!["cutover_deadline"],
            ]
        );
        let state = LiveMigrationState {
            status: Some(WORKING.into()),
            ready: true,
            ready_since: Some(t(0)),
            ..LiveMigrationState::default()
        };
        assert_eq!(state.deadline(policy().cutover_window), Some(t(120 * H)));
        let (_, events) = detect_live_migration("m", &state, &ok("WORKING", true, None), &synced(), t(0), policy());
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn lag_alerts_need_three_checks_and_recover_below_the_hysteresis() {
        let w = |lag| ok("WORKING", false, Some(lag));
        let (_, kinds) = run(&[
            (0, w(700), synced()),
            (60, w(700), synced()),
            (120, w(500), synced()), // one below: the streak starts over
            (180, w(700), synced()),
            (240, w(700), synced()),
            (300, w(700), synced()),
            (360, w(590), synced()), // below the threshold, above 80 % of it: still high
            (420, w(590), synced()),
            (480, w(590), synced()),
            (540, w(400), synced()),
            (600, w(400), synced()),
            (660, w(400), synced()),
        ]);
        let flat: Vec<&str> = kinds.into_iter().flatten().collect();
        assert_eq!(flat, vec!["migration_status_changed", "lag_high", "lag_recovered"]);
    }

    #[test]
    fn failures_alert_after_the_threshold_and_recover() {
        let (state, kinds) = run(&[
            (0, ok("WORKING", false, Some(30)), synced()),
            (60, fail(), synced()),
            (120, fail(), synced()),
            (180, fail(), synced()),
            (240, ok("WORKING", false, Some(30)), synced()),
        ]);
        assert_eq!(
            kinds,
            vec![
                vec!["migration_status_changed"],
                vec![],
                vec!["migration_check_failing"],
                vec![],
                vec!["migration_check_recovered"],
            ]
        );
        assert_eq!(state.consecutive_failures, 0);
    }

    #[test]
    fn a_link_break_while_working_is_reported_once_per_break() {
        let broken = |since| LinkView {
            status: Some("NOT_SYNCED".into()),
            broken_since: Some(t(since)),
        };
        let (_, kinds) = run(&[
            (0, ok("WORKING", false, Some(30)), synced()),
            (60, ok("WORKING", false, Some(30)), broken(50)),
            (120, fail(), broken(50)),
            (180, ok("WORKING", false, Some(30)), broken(50)),
            (240, ok("WORKING", false, Some(30)), synced()),
            (300, ok("WORKING", false, Some(30)), broken(290)),
            (360, ok("COMPLETE", false, None), broken(290)),
        ]);
        let flat: Vec<&str> = kinds.into_iter().flatten().collect();
        assert_eq!(
            flat,
            vec![
                "migration_status_changed",
                "link_broken_during_migration",
                "link_broken_during_migration",
                "migration_status_changed"
            ]
        );
        // A link that was never SYNCED has not broken, and a migration not WORKING is not hurt.
        let never = LinkView {
            status: Some("NOT_SYNCED".into()),
            broken_since: None,
        };
        let (_, kinds) = run(&[
            (0, ok("WORKING", false, None), never),
            (60, ok("NEW", false, None), broken(50)),
        ]);
        assert_eq!(
            kinds,
            vec![vec!["migration_status_changed"], vec!["migration_status_changed"]]
        );
    }

    #[test]
    fn a_passing_status_keeps_the_window_and_an_absent_readiness_is_unknown() {
        let absent = Ok(LiveMigrationReading::of_status(WORKING));
        let (state, kinds) = run(&[
            (0, ok("WORKING", true, Some(20)), synced()),
            (60, ok("PAUSED_BY_ATLAS", true, None), synced()),
            (120, ok("WORKING", true, Some(20)), synced()),
            (180, absent, synced()),
            (96 * H, ok("WORKING", true, Some(20)), synced()),
        ]);
        assert_eq!(
            kinds,
            vec![
                vec!["migration_status_changed", "ready_for_cutover"],
                vec!["migration_status_changed"],
                vec!["migration_status_changed"],
                vec![],
                vec!["cutover_deadline"],
            ]
        );
        assert_eq!(
            state.ready_since,
            Some(t(0)),
            "the window counts from the first readiness"
        );
    }

    #[test]
    fn no_deadline_warning_while_not_ready_and_the_due_one_when_ready_again() {
        let (_, kinds) = run(&[
            (0, ok("WORKING", true, Some(20)), synced()),
            (100 * H, ok("WORKING", false, None), synced()),
            (115 * H, ok("WORKING", false, None), synced()),
            (116 * H, ok("WORKING", true, Some(20)), synced()),
        ]);
        assert_eq!(
            kinds,
            vec![
                vec!["migration_status_changed", "ready_for_cutover"],
                vec!["ready_for_cutover_lost"],
                vec![],
                vec!["ready_for_cutover", "cutover_deadline"],
            ]
        );
    }

    #[test]
    fn unknown_statuses_are_states() {
        let (state, kinds) = run(&[(0, ok("PAUSED_BY_ATLAS", false, None), synced())]);
        assert_eq!(kinds, vec![vec!["migration_status_changed"]]);
        assert_eq!(state.status.as_deref(), Some("PAUSED_BY_ATLAS"));
    }
}
