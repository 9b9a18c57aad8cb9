//! The Atlas live migrations' side of the store: a check read, decided and written in one
//! transaction (the migration's row, its status change, a lag sample, its events and their
//! outbox rows), and the reads behind the `migration_status` and `migration_changes` views and
//! the lag chart.
//!
//! A migration's events belong to its source org (`events.org_id`), so routes by org and the
//! per-org delivery order hold; they are numbered per migration (`migration_state.event_count`)
//! and their ids are made from [`live_migration_subject`], never from the org's numbering.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{Backend as _, Store, on_db};
use crate::config::LiveMigration;
use crate::detect::Event;
use crate::detect::live_migration::{LinkView, LiveMigrationState};
use crate::outcome::LiveMigrationOutcome;

/// One check of a migration, before anyone knows what it means.
#[derive(Debug, Clone, Copy)]
pub struct LiveMigrationCheck<'a> {
    pub migration: &'a LiveMigration,
    pub at: DateTime<Utc>,
    pub outcome: &'a LiveMigrationOutcome,
    /// When the answer came, on the monotonic clock: as for a link's check, an answer older than
    /// the last one recorded by no more than it has waited since lost a race with another
    /// writer (`linkwatch once` beside the daemon) and is dropped.
    pub answered: tokio::time::Instant,
}

/// What a migration's check caused, decided from the stored state and the org's link.
#[derive(Debug, Clone, Default)]
pub struct LiveMigrationDecision {
    pub state: LiveMigrationState,
    /// Each event with the channels it is routed to.
    pub events: Vec<(Event, Vec<String>)>,
    /// The estimated end of the cutover window, while one runs (stored for the view).
    pub deadline: Option<DateTime<Utc>>,
}

/// A row of the `migration_status` view.
#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct LiveMigrationRow {
    pub migration: String,
    pub migration_id: String,
    pub org_id: String,
    pub org_name: Option<String>,
    pub group_id: String,
    pub status: Option<String>,
    pub since: Option<String>,
    pub ready_for_cutover: bool,
    pub ready_since: Option<String>,
    pub estimated_deadline: Option<String>,
    pub lag_s: Option<i64>,
    pub last_checked_at: String,
    pub consecutive_failures: i64,
    pub last_error: Option<String>,
}

/// A migration's status change, as the `migration_changes` view shows it.
#[derive(Debug, Clone, FromRow)]
pub struct LiveMigrationChange {
    pub from_status: Option<String>,
    pub to_status: String,
    pub changed_at: String,
    pub previous_lasted_s: Option<i64>,
}

impl LiveMigrationRow {
    /// Seconds from `now` to the estimated deadline, while a cutover window runs (negative once
    /// it has passed).
    pub fn left_s(&self, now: DateTime<Utc>) -> Option<i64> {
        let deadline = DateTime::parse_from_rfc3339(self.estimated_deadline.as_deref()?).ok()?;
        Some((deadline.with_timezone(&Utc) - now).num_seconds())
    }
}

/// What a migration's event ids are made from: never an org id (those are bare hex).
pub fn live_migration_subject(migration_id: &str) -> String {
    format!("migration/{migration_id}")
}

/// How far the lag must move from the last sample to be worth another: fine where a small lag
/// matters (5 s under a minute), coarse where it does not (10 minutes above an hour). Measured
/// from the last sample's value, not by fixed buckets, so a lag that jitters around a bucket's
/// edge (a ready migration sits at a few seconds for days) adds no rows.
pub fn lag_step(lag_s: i64) -> i64 {
    match lag_s {
        ..60 => 5,
        60..600 => 30,
        600..3600 => 120,
        _ => 600,
    }
}

/// Whether a check that saw `lag_s` adds a sample after the `last` one (`None`: no sample yet;
/// `Some(None)`: the last sample said no lag was reported).
pub fn lag_sample_due(last: Option<Option<i64>>, lag_s: Option<i64>) -> bool {
    match (last, lag_s) {
        (None, lag) => lag.is_some(),
        (Some(Some(last)), Some(lag)) => (lag - last).abs() >= lag_step(last),
        (Some(last), lag) => last.is_some() != lag.is_some(),
    }
}

impl Store {
    /// Records a migration's check: reads its state and its org's link, lets `decide` say what
    /// it means, and writes the new state, the status change, a lag sample when the lag moved,
    /// the events and their outbox rows, in one transaction (fenced on PostgreSQL). `None`: a
    /// newer answer was recorded meanwhile, and this one is dropped.
    pub async fn apply_live_migration(
        &self,
        check: &LiveMigrationCheck<'_>,
        decide: impl FnOnce(&LiveMigrationState, &LinkView) -> LiveMigrationDecision,
    ) -> anyhow::Result<Option<LiveMigrationDecision>> {
        let instance = self.instance.clone();
        let superseded = |last| super::checks::lost_race(check.at, check.answered, last);
        on_db!(self, db => db.apply_live_migration(&instance, check, superseded, decide).await)
    }

    /// Every followed migration, as the `migration_status` view shows it, by name.
    pub async fn live_migrations(&self) -> anyhow::Result<Vec<LiveMigrationRow>> {
        on_db!(self, db => db.live_migrations().await)
    }

    /// A migration's status changes, oldest first.
    pub async fn live_migration_changes(&self, migration_id: &str) -> anyhow::Result<Vec<LiveMigrationChange>> {
        on_db!(self, db => db.live_migration_changes(migration_id).await)
    }

    /// A migration's lag samples since `since`, oldest first (`None`: not reported then).
    pub async fn live_migration_lag(
        &self,
        migration_id: &str,
        since: DateTime<Utc>,
    ) -> anyhow::Result<Vec<(DateTime<Utc>, Option<i64>)>> {
        on_db!(self, db => db.live_migration_lag(migration_id, since).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_lag_adds_no_samples_and_a_moving_one_does() {
        assert!(lag_sample_due(None, Some(40)));
        assert!(!lag_sample_due(None, None));
        assert!(!lag_sample_due(Some(Some(41)), Some(44)));
        // A lag jittering across a multiple of the step adds nothing.
        assert!(!lag_sample_due(Some(Some(4)), Some(6)));
        assert!(!lag_sample_due(Some(Some(4)), Some(8)));
        assert!(lag_sample_due(Some(Some(4)), Some(9)));
        assert!(lag_sample_due(Some(Some(44)), Some(39)));
        assert!(!lag_sample_due(Some(Some(4000)), Some(4500)));
        assert!(lag_sample_due(Some(Some(4000)), Some(4600)));
        assert!(lag_sample_due(Some(Some(30)), None));
        assert!(lag_sample_due(Some(None), Some(30)));
        assert!(!lag_sample_due(Some(None), None));
    }
}
