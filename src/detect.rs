//! Event detection: a pure function from (stored state, one check's outcome, policy) to
//! (new state, events). No IO and no clock: `now` is a parameter, so the table-driven tests
//! below cover every transition.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::outcome::{CheckOutcome, Failure};

pub mod live_migration;

/// What linkwatch remembers about one org between checks; lives in the `org_state` table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrgState {
    /// The confirmed status; `None` until the first successful check.
    pub status: Option<String>,
    pub status_since: Option<DateTime<Utc>>,
    /// The status before the current one (the `from` of the last change).
    pub previous_status: Option<String>,
    /// When the link left `SYNCED`; `None` while it is `SYNCED` or never was. A broken link stays
    /// broken through any other statuses until it is `SYNCED` again.
    pub broken_since: Option<DateTime<Utc>>,
    /// A status seen but not yet confirmed (`confirm_checks` > 1).
    pub candidate: Option<String>,
    pub candidate_count: u32,
    pub candidate_since: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    pub failing_since: Option<DateTime<Utc>>,
    /// Whether `check_failing` was emitted for the current run of failures.
    pub failing_alerted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub failures_before_alert: u32,
    pub confirm_checks: u32,
}

/// Something that happened to an org, worth telling people about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    FirstSeen {
        status: String,
    },
    StatusChanged {
        from: String,
        to: String,
        /// When the new status was first observed.
        changed_at: DateTime<Utc>,
        /// How long `from` lasted, in seconds.
        from_lasted_s: i64,
    },
    CheckFailing {
        failures: u32,
        since: DateTime<Utc>,
        #[serde(flatten)]
        failure: Failure,
    },
    CheckRecovered {
        failures: u32,
        /// How long checks failed, in seconds.
        failed_for_s: i64,
    },
    /// A selected bad state persists (a route's `remind_every`).
    Reminder {
        condition: Condition,
        /// The current status, for a broken link.
        status: Option<String>,
        since: DateTime<Utc>,
        elapsed_s: i64,
    },
    // Atlas live migrations (see `live_migration.rs`). Each names its `[[migration]]`; the event
    // belongs to the migration's source org, so routes by org and the per-org order hold.
    /// A migration's status changed; `from` is `None` at the first check.
    MigrationStatusChanged {
        migration: String,
        from: Option<String>,
        to: String,
        /// How long `from` lasted, in seconds.
        from_lasted_s: Option<i64>,
        /// Atlas's `migrationHosts` at the change (none when not reported).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        migration_hosts: Vec<String>,
    },
    /// Atlas says the migration can be cut over; the window to do so runs from now.
    ReadyForCutover {
        migration: String,
        /// Estimated: when readiness was first seen plus the cutover window.
        deadline: DateTime<Utc>,
        lag_s: Option<i64>,
    },
    ReadyForCutoverLost {
        migration: String,
        lag_s: Option<i64>,
    },
    LagHigh {
        migration: String,
        lag_s: i64,
        threshold_s: i64,
    },
    LagRecovered {
        migration: String,
        lag_s: i64,
        threshold_s: i64,
        high_for_s: i64,
    },
    /// A warning before the estimated end of the cutover window.
    CutoverDeadline {
        migration: String,
        deadline: DateTime<Utc>,
        left_s: i64,
    },
    /// The source org's link left `SYNCED` while the migration is `WORKING`.
    LinkBrokenDuringMigration {
        migration: String,
        link_status: String,
        broken_since: DateTime<Utc>,
    },
    MigrationCheckFailing {
        migration: String,
        failures: u32,
        since: DateTime<Utc>,
        #[serde(flatten)]
        failure: Failure,
    },
    MigrationCheckRecovered {
        migration: String,
        failures: u32,
        failed_for_s: i64,
    },
    /// A silence ended with the status elsewhere than where it began (`silence.rs`); one that
    /// ends where it began says nothing.
    SilenceEnded {
        silence: i64,
        /// The `[[migration]]` it silenced; `None`: the org's link (and its migrations).
        migration: Option<String>,
        reason: String,
        by: String,
        began_at: DateTime<Utc>,
        /// The status when it began (`None`: not yet checked then).
        from: Option<String>,
        /// The status when it ended.
        to: Option<String>,
        /// The status changes while it held, oldest first.
        changes: Vec<SilencedChange>,
        /// Events recorded while it held and sent to no one.
        held: i64,
    },
    /// An API announced the retirement of the resource version linkwatch asks for (`Deprecation`
    /// and `Sunset` headers); once per API instance and version. It belongs to the source org
    /// of the migration whose check saw it first.
    ApiDeprecated {
        #[serde(flatten)]
        deprecation: crate::outcome::ApiDeprecation,
    },
}

/// The states worth a reminder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The link left SYNCED and has not come back.
    LinkBroken,
    /// `check_failing` was reported and checks still fail.
    CheckFailing,
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::FirstSeen { .. } => "first_seen",
            Event::StatusChanged { .. } => "status_changed",
            Event::CheckFailing { .. } => "check_failing",
            Event::CheckRecovered { .. } => "check_recovered",
            Event::Reminder { .. } => "reminder",
            Event::MigrationStatusChanged { .. } => "migration_status_changed",
            Event::ReadyForCutover { .. } => "ready_for_cutover",
            Event::ReadyForCutoverLost { .. } => "ready_for_cutover_lost",
            Event::LagHigh { .. } => "lag_high",
            Event::LagRecovered { .. } => "lag_recovered",
            Event::CutoverDeadline { .. } => "cutover_deadline",
            Event::LinkBrokenDuringMigration { .. } => "link_broken_during_migration",
            Event::MigrationCheckFailing { .. } => "migration_check_failing",
            Event::MigrationCheckRecovered { .. } => "migration_check_recovered",
            Event::SilenceEnded { .. } => "silence_ended",
            Event::ApiDeprecated { .. } => "api_deprecated",
        }
    }

    /// The `[[migration]]` this event is about, if it is about one.
    pub fn live_migration(&self) -> Option<&str> {
        match self {
            Event::MigrationStatusChanged { migration, .. }
            | Event::ReadyForCutover { migration, .. }
            | Event::ReadyForCutoverLost { migration, .. }
            | Event::LagHigh { migration, .. }
            | Event::LagRecovered { migration, .. }
            | Event::CutoverDeadline { migration, .. }
            | Event::LinkBrokenDuringMigration { migration, .. }
            | Event::MigrationCheckFailing { migration, .. }
            | Event::MigrationCheckRecovered { migration, .. } => Some(migration),
            Event::SilenceEnded { migration, .. } => migration.as_deref(),
            Event::FirstSeen { .. }
            | Event::StatusChanged { .. }
            | Event::CheckFailing { .. }
            | Event::CheckRecovered { .. }
            | Event::Reminder { .. }
            | Event::ApiDeprecated { .. } => None,
        }
    }

    /// The new status this event reports, if it reports one (what a route's `to` matches).
    pub fn status(&self) -> Option<&str> {
        match self {
            Event::FirstSeen { status } => Some(status),
            Event::StatusChanged { to, .. } => Some(to),
            Event::Reminder { status, .. } => status.as_deref(),
            Event::MigrationStatusChanged { to, .. } => Some(to),
            Event::LinkBrokenDuringMigration { link_status, .. } => Some(link_status),
            Event::SilenceEnded { to, .. } => to.as_deref(),
            _ => None,
        }
    }
}

/// A status change seen while a silence held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SilencedChange {
    pub from: Option<String>,
    pub to: String,
    pub at: DateTime<Utc>,
}

/// A route's request for reminders, as far as one org is concerned.
#[derive(Debug, Clone, PartialEq)]
pub struct ReminderRule {
    pub every: std::time::Duration,
    pub about_link: bool,
    pub about_failing: bool,
    /// Only these statuses count as a broken link (`None`: any status but SYNCED).
    pub to: Option<Vec<String>>,
    /// When this rule last reminded about this org.
    pub last_sent: Option<DateTime<Utc>>,
}

/// The reminders due at `now` for an org in `state`, one per rule at most, with the rule's index.
pub fn due_reminders(state: &OrgState, rules: &[ReminderRule], now: DateTime<Utc>) -> Vec<(usize, Event)> {
    let mut due = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let condition = if rule.about_failing && state.failing_alerted {
            state.failing_since.map(|since| (Condition::CheckFailing, since))
        } else if rule.about_link && link_broken(state, rule.to.as_deref()) {
            state.broken_since.map(|since| (Condition::LinkBroken, since))
        } else {
            None
        };
        let Some((condition, since)) = condition else {
            continue;
        };
        // A reminder from an earlier episode does not count: the clock starts with the state.
        let last = rule.last_sent.filter(|l| *l >= since).unwrap_or(since);
        let every = chrono::Duration::from_std(rule.every).unwrap_or(chrono::Duration::MAX);
        if now - last >= every {
            due.push((
                i,
                Event::Reminder {
                    condition,
                    status: (condition == Condition::LinkBroken)
                        .then(|| state.status.clone())
                        .flatten(),
                    since,
                    elapsed_s: (now - since).num_seconds(),
                },
            ));
        }
    }
    due
}

fn link_broken(state: &OrgState, to: Option<&[String]>) -> bool {
    let Some(status) = state.status.as_deref() else {
        return false;
    };
    state.broken_since.is_some() && to.is_none_or(|t| t.iter().any(|s| s == status))
}

/// Whether a successful check that sees `status` can change nothing in `state`: the status is
/// the confirmed one, nothing awaits confirmation, no failure is being counted. The store's
/// one-statement fast path (`Store::record_if_quiet`) tests exactly this in SQL.
pub fn is_quiet(state: &OrgState, status: &str) -> bool {
    state.status.as_deref() == Some(status)
        && state.candidate.is_none()
        && state.consecutive_failures == 0
        && !state.failing_alerted
}

pub fn detect(state: &OrgState, outcome: &CheckOutcome, now: DateTime<Utc>, policy: Policy) -> (OrgState, Vec<Event>) {
    let mut next = state.clone();
    let mut events = Vec::new();
    match outcome {
        Ok(status) => {
            if state.failing_alerted {
                events.push(Event::CheckRecovered {
                    failures: state.consecutive_failures,
                    failed_for_s: seconds_since(state.failing_since, now),
                });
            }
            next.consecutive_failures = 0;
            next.failing_since = None;
            next.failing_alerted = false;
            observe_status(state, &mut next, status, now, policy, &mut events);
        }
        Err(failure) => {
            next.consecutive_failures = state.consecutive_failures.saturating_add(1);
            let since = *next.failing_since.get_or_insert(now);
            if !state.failing_alerted && next.consecutive_failures >= policy.failures_before_alert {
                next.failing_alerted = true;
                events.push(Event::CheckFailing {
                    failures: next.consecutive_failures,
                    since,
                    failure: failure.clone(),
                });
            }
        }
    }
    (next, events)
}

fn observe_status(
    state: &OrgState,
    next: &mut OrgState,
    status: &str,
    now: DateTime<Utc>,
    policy: Policy,
    events: &mut Vec<Event>,
) {
    let clear_candidate = |next: &mut OrgState| {
        next.candidate = None;
        next.candidate_count = 0;
        next.candidate_since = None;
    };
    match &state.status {
        None => {
            next.status = Some(status.to_owned());
            next.status_since = Some(now);
            clear_candidate(next);
            events.push(Event::FirstSeen {
                status: status.to_owned(),
            });
        }
        Some(current) if current == status => clear_candidate(next),
        Some(current) => {
            let (count, since) = match (&state.candidate, state.candidate_since) {
                (Some(c), Some(since)) if c == status => (state.candidate_count + 1, since),
                _ => (1, now),
            };
            if count >= policy.confirm_checks {
                events.push(Event::StatusChanged {
                    from: current.clone(),
                    to: status.to_owned(),
                    changed_at: since,
                    from_lasted_s: seconds_since(state.status_since, since),
                });
                next.previous_status = Some(current.clone());
                next.status = Some(status.to_owned());
                next.status_since = Some(since);
                next.broken_since = match (current.as_str(), status) {
                    (_, "SYNCED") => None,
                    ("SYNCED", _) => Some(since),
                    _ => state.broken_since,
                };
                clear_candidate(next);
            } else {
                next.candidate = Some(status.to_owned());
                next.candidate_count = count;
                next.candidate_since = Some(since);
            }
        }
    }
}

fn seconds_since(start: Option<DateTime<Utc>>, end: DateTime<Utc>) -> i64 {
    start.map_or(0, |s| (end - s).num_seconds().max(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::FailureClass;

    const POLICY: Policy = Policy {
        failures_before_alert: 3,
        confirm_checks: 1,
    };

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn fail() -> CheckOutcome {
        Err(Failure::new(FailureClass::ServerError, Some(500), None, "boom"))
    }

    fn ok(s: &str) -> CheckOutcome {
        Ok(s.to_owned())
    }

    /// Runs `outcomes` (one per second) from a fresh state and returns the event kinds per step,
    /// written compactly: "first_seen" or "status_changed:A->B", "-" for none.
    fn check(policy: Policy, outcomes: &[CheckOutcome], expected: &[&str]) {
        let mut state = OrgState::default();
        let mut got = Vec::new();
        for (i, o) in outcomes.iter().enumerate() {
            let (next, events) = detect(&state, o, t(i as i64), policy);
            state = next;
            let step: Vec<String> = events
                .iter()
                .map(|e| match e {
                    Event::StatusChanged { from, to, .. } => format!("status_changed:{from}->{to}"),
                    e => e.kind().to_owned(),
                })
                .collect();
            got.push(if step.is_empty() {
                "-".to_owned()
            } else {
                step.join("+")
            });
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn first_success_is_first_seen_then_quiet() {
        check(POLICY, &[ok("NOT_SYNCED"), ok("NOT_SYNCED")], &["first_seen", "-"]);
    }

    #[test]
    fn a_change_is_reported_once() {
        check(
            POLICY,
            &[ok("NOT_SYNCED"), ok("SYNCED"), ok("SYNCED"), ok("NOT_SYNCED")],
            &[
                "first_seen",
                "status_changed:NOT_SYNCED->SYNCED",
                "-",
                "status_changed:SYNCED->NOT_SYNCED",
            ],
        );
    }

    #[test]
    fn unknown_status_is_a_state_like_any_other() {
        check(
            POLICY,
            &[ok("SYNCED"), ok("RESYNCING")],
            &["first_seen", "status_changed:SYNCED->RESYNCING"],
        );
    }

    #[test]
    fn confirm_checks_waits_for_identical_results() {
        let policy = Policy {
            confirm_checks: 3,
            ..POLICY
        };
        check(
            policy,
            &[
                ok("NOT_SYNCED"),
                ok("SYNCED"),
                ok("NOT_SYNCED"), // flapped back: the candidate is forgotten
                ok("SYNCED"),
                ok("SYNCED"),
                fail(), // failures neither confirm nor reset a candidate
                ok("SYNCED"),
            ],
            &[
                "first_seen",
                "-",
                "-",
                "-",
                "-",
                "-",
                "status_changed:NOT_SYNCED->SYNCED",
            ],
        );
    }

    #[test]
    fn confirmed_change_is_dated_from_its_first_sighting() {
        let policy = Policy {
            confirm_checks: 2,
            ..POLICY
        };
        let (s, _) = detect(&OrgState::default(), &ok("NOT_SYNCED"), t(0), policy);
        let (s, e) = detect(&s, &ok("SYNCED"), t(100), policy);
        assert!(e.is_empty());
        let (s, e) = detect(&s, &ok("SYNCED"), t(160), policy);
        assert_eq!(
            e,
            vec![Event::StatusChanged {
                from: "NOT_SYNCED".into(),
                to: "SYNCED".into(),
                changed_at: t(100),
                from_lasted_s: 100,
            }]
        );
        assert_eq!(s.status_since, Some(t(100)));
    }

    #[test]
    fn failing_after_n_then_recovered() {
        check(
            POLICY,
            &[ok("SYNCED"), fail(), fail(), fail(), fail(), ok("SYNCED")],
            &["first_seen", "-", "-", "check_failing", "-", "check_recovered"],
        );
    }

    #[test]
    fn recovery_into_a_new_status_reports_both() {
        check(
            POLICY,
            &[ok("SYNCED"), fail(), fail(), fail(), ok("NOT_SYNCED")],
            &[
                "first_seen",
                "-",
                "-",
                "check_failing",
                "check_recovered+status_changed:SYNCED->NOT_SYNCED",
            ],
        );
    }

    #[test]
    fn short_failure_runs_stay_silent() {
        check(
            POLICY,
            &[ok("SYNCED"), fail(), fail(), ok("SYNCED"), fail(), fail(), ok("SYNCED")],
            &["first_seen", "-", "-", "-", "-", "-", "-"],
        );
    }

    #[test]
    fn failing_before_any_success() {
        check(
            POLICY,
            &[fail(), fail(), fail(), ok("SYNCED")],
            &["-", "-", "check_failing", "check_recovered+first_seen"],
        );
    }

    #[test]
    fn a_quiet_state_is_left_as_it_is() {
        let quiet = OrgState {
            status: Some("SYNCED".into()),
            status_since: Some(t(0)),
            previous_status: Some("NOT_SYNCED".into()),
            ..OrgState::default()
        };
        assert!(is_quiet(&quiet, "SYNCED"));
        let strict = Policy {
            confirm_checks: 3,
            failures_before_alert: 1,
        };
        for policy in [POLICY, strict] {
            assert_eq!(detect(&quiet, &ok("SYNCED"), t(100), policy), (quiet.clone(), vec![]));
        }
        // Anything else is not quiet, and detect may change it.
        assert!(!is_quiet(&quiet, "NOT_SYNCED"));
        let counting = OrgState {
            consecutive_failures: 1,
            ..quiet.clone()
        };
        assert!(!is_quiet(&counting, "SYNCED"));
        assert_ne!(detect(&counting, &ok("SYNCED"), t(100), POLICY).0, counting);
        let candidate = OrgState {
            candidate: Some("NOT_SYNCED".into()),
            candidate_count: 1,
            candidate_since: Some(t(50)),
            ..quiet.clone()
        };
        assert!(!is_quiet(&candidate, "SYNCED"));
        assert_ne!(detect(&candidate, &ok("SYNCED"), t(100), POLICY).0, candidate);
    }

    fn rule(about_link: bool, about_failing: bool, last_sent: Option<DateTime<Utc>>) -> ReminderRule {
        ReminderRule {
            every: std::time::Duration::from_secs(3600),
            about_link,
            about_failing,
            to: None,
            last_sent,
        }
    }

    #[test]
    fn reminders_while_a_link_stays_broken() {
        let (s, _) = detect(&OrgState::default(), &ok("NOT_SYNCED"), t(0), POLICY);
        // NOT_SYNCED before ever being SYNCED is the normal wait, not a broken link.
        assert!(due_reminders(&s, &[rule(true, false, None)], t(100_000)).is_empty());
        let (s, _) = detect(&s, &ok("SYNCED"), t(10), POLICY);
        let (s, _) = detect(&s, &ok("NOT_SYNCED"), t(100), POLICY);
        assert!(due_reminders(&s, &[rule(true, false, None)], t(100 + 3599)).is_empty());
        let due = due_reminders(&s, &[rule(true, false, None)], t(100 + 3600));
        assert_eq!(
            due,
            vec![(
                0,
                Event::Reminder {
                    condition: Condition::LinkBroken,
                    status: Some("NOT_SYNCED".into()),
                    since: t(100),
                    elapsed_s: 3600
                }
            )]
        );
        // Sent an hour ago: the next one is an hour after that.
        assert!(due_reminders(&s, &[rule(true, false, Some(t(3700)))], t(3700 + 3000)).is_empty());
        assert_eq!(
            due_reminders(&s, &[rule(true, false, Some(t(3700)))], t(3700 + 3600)).len(),
            1
        );
        // A rule that only cares about failing checks stays quiet; so does a `to` that excludes it.
        assert!(due_reminders(&s, &[rule(false, true, None)], t(100_000)).is_empty());
        let only_paused = ReminderRule {
            to: Some(vec!["PAUSED".into()]),
            ..rule(true, false, None)
        };
        assert!(due_reminders(&s, &[only_paused], t(100_000)).is_empty());
        // Through another status that is not SYNCED either: still the same broken link.
        let (s, _) = detect(&s, &ok("PENDING_RESYNC"), t(5000), POLICY);
        let due = due_reminders(&s, &[rule(true, false, None)], t(8000));
        assert!(
            matches!(&due[..], [(0, Event::Reminder { since, .. })] if *since == t(100)),
            "{due:?}"
        );
        // Back to SYNCED: the reminders stop.
        let (s, _) = detect(&s, &ok("SYNCED"), t(9000), POLICY);
        assert_eq!(s.broken_since, None);
        assert!(due_reminders(&s, &[rule(true, true, None)], t(100_000)).is_empty());
    }

    #[test]
    fn reminders_while_checks_keep_failing() {
        let mut s = OrgState::default();
        for i in 0..3 {
            s = detect(&s, &fail(), t(i), POLICY).0;
        }
        let due = due_reminders(&s, &[rule(false, true, None)], t(7200));
        assert!(
            matches!(&due[..], [(0, Event::Reminder { condition: Condition::CheckFailing, since, .. })] if *since == t(0))
        );
        // A reminder sent in an earlier episode does not delay this one.
        assert_eq!(due_reminders(&s, &[rule(false, true, Some(t(-50)))], t(3600)).len(), 1);
        let s = detect(&s, &ok("SYNCED"), t(8000), POLICY).0;
        assert!(due_reminders(&s, &[rule(false, true, None)], t(100_000)).is_empty());
    }

    #[test]
    fn recovered_carries_how_long_checks_failed() {
        let (s, _) = detect(&OrgState::default(), &fail(), t(0), POLICY);
        let (s, _) = detect(&s, &fail(), t(60), POLICY);
        let (s, e) = detect(&s, &fail(), t(120), POLICY);
        assert!(matches!(&e[..], [Event::CheckFailing { failures: 3, since, .. }] if *since == t(0)));
        let (_, e) = detect(&s, &ok("SYNCED"), t(180), POLICY);
        assert_eq!(
            e[0],
            Event::CheckRecovered {
                failures: 3,
                failed_for_s: 180
            }
        );
    }
}
