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

use super::events::insert_org_event;
use super::sql::{Conn, End, Sql, Ts, Write, count, on_conn, opt, rows, time, uncount};
use super::{Store, StoreError, event_id};
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
    /// Atlas's `migrationHosts` as last reported (stored as a JSON array).
    #[sqlx(try_from = "HostsText")]
    pub migration_hosts: Vec<String>,
}

/// The stored JSON array of migration hosts; `NULL` or anything unreadable is none.
#[derive(Debug, Clone, sqlx::Type)]
#[sqlx(transparent)]
pub struct HostsText(Option<String>);

impl From<HostsText> for Vec<String> {
    fn from(text: HostsText) -> Vec<String> {
        text.0.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
    }
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
    ) -> Result<Option<LiveMigrationDecision>, StoreError> {
        let instance = &*self.instance;
        self.write(Write::Transaction, async |mut conn| {
            let m = check.migration;
            // The org's row first, held (SQLite: the immediate transaction; PostgreSQL: FOR
            // UPDATE): the link's checks and the org's other migrations write events of this org
            // too, and taking their turns on one row keeps the org's events in the order they
            // commit (event numbers come from a sequence when inserted, deliveries go out in that
            // order). Always org before migration, so two writers never wait on each other.
            let link: Option<(Option<String>, Option<Ts>)> = on_conn!(conn.re(), |c, D| LINK
                .query_as::<D, _>()
                .bind(m.org.as_str())
                .fetch_optional(c)
                .await?);
            let link = link
                .map(|(status, broken_since)| LinkView {
                    status,
                    broken_since: time(broken_since),
                })
                .unwrap_or_default();
            let (state, last_checked) = load(conn.re(), &m.id).await?;
            if last_checked.is_some_and(|last| super::checks::lost_race(check.at, check.answered, last)) {
                return Ok(End::Rollback(None));
            }
            let decision = decide(&state, &link);
            write(conn, instance, check, &decision).await?;
            Ok(End::Commit(Some(decision)))
        })
        .await
    }

    /// Every followed migration, as the `migration_status` view shows it, by name.
    pub async fn live_migrations(&self) -> Result<Vec<LiveMigrationRow>, StoreError> {
        rows!(self, ROWS, LiveMigrationRow).await
    }

    /// A migration's status changes, oldest first.
    pub async fn live_migration_changes(&self, migration_id: &str) -> Result<Vec<LiveMigrationChange>, StoreError> {
        rows!(self, CHANGES, LiveMigrationChange, migration_id).await
    }

    /// A migration's lag samples since `since`, oldest first (`None`: not reported then).
    pub async fn live_migration_lag(
        &self,
        migration_id: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, Option<i64>)>, StoreError> {
        let rows: Vec<(Ts, Option<i64>)> = rows!(self, LAG, (Ts, Option<i64>), migration_id, Ts(since)).await?;
        Ok(rows.into_iter().map(|(at, lag)| (at.0, lag)).collect())
    }
}

const LINK: Sql = Sql::each(
    "SELECT status, broken_since FROM org_state WHERE org_id = $1",
    "SELECT status, broken_since FROM org_state WHERE org_id = $1 FOR UPDATE",
);

macro_rules! load_sql {
    () => {
        "SELECT status, status_since, ready_for_cutover, ready_since, lag_s, lag_high, lag_high_since,
                CAST(lag_streak AS bigint) AS lag_streak, warned_s, link_break_reported,
                CAST(consecutive_failures AS bigint) AS consecutive_failures, failing_since,
                failing_alerted, last_checked_at
         FROM migration_state WHERE migration_id = $1"
    };
}
/// SQLite holds the row by its immediate transaction; PostgreSQL by `FOR UPDATE`.
const LOAD: Sql = Sql::each(load_sql!(), concat!(load_sql!(), " FOR UPDATE"));

/// A migration's row as [`load`] reads it.
#[derive(FromRow)]
struct StateRow {
    status: Option<String>,
    status_since: Option<Ts>,
    ready_for_cutover: bool,
    ready_since: Option<Ts>,
    lag_s: Option<i64>,
    lag_high: bool,
    lag_high_since: Option<Ts>,
    lag_streak: i64,
    warned_s: Option<i64>,
    link_break_reported: Option<Ts>,
    consecutive_failures: i64,
    failing_since: Option<Ts>,
    failing_alerted: bool,
    last_checked_at: Ts,
}

async fn load(conn: Conn<'_>, id: &str) -> anyhow::Result<(LiveMigrationState, Option<DateTime<Utc>>)> {
    let row: Option<StateRow> = on_conn!(conn, |c, D| LOAD
        .query_as::<D, StateRow>()
        .bind(id)
        .fetch_optional(c)
        .await?);
    let Some(r) = row else {
        return Ok((LiveMigrationState::default(), None));
    };
    let state = LiveMigrationState {
        status: r.status,
        status_since: time(r.status_since),
        ready: r.ready_for_cutover,
        ready_since: time(r.ready_since),
        lag_s: r.lag_s,
        lag_high: r.lag_high,
        lag_high_since: time(r.lag_high_since),
        lag_streak: r.lag_streak.try_into().unwrap_or(0),
        warned_s: r.warned_s,
        link_break_reported: time(r.link_break_reported),
        consecutive_failures: uncount(r.consecutive_failures),
        failing_since: time(r.failing_since),
        failing_alerted: r.failing_alerted,
    };
    Ok((state, Some(r.last_checked_at.0)))
}

const WRITE_STATE: Sql = Sql::both(
    "INSERT INTO migration_state AS ms (migration_id, name, org_id, group_id, status, status_since,
         ready_for_cutover, ready_since, deadline, lag_s, lag_high, lag_high_since, lag_streak,
         warned_s, link_break_reported, consecutive_failures, failing_since, failing_alerted,
         first_checked_at, last_checked_at, last_success_at, last_error, checks, event_count,
         migration_hosts)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
             $19, $19, $20, $21, 1, $22, $23)
     ON CONFLICT (migration_id) DO UPDATE SET
         name = $2, org_id = $3, group_id = $4, status = $5, status_since = $6,
         ready_for_cutover = $7, ready_since = $8, deadline = $9, lag_s = $10, lag_high = $11,
         lag_high_since = $12, lag_streak = $13, warned_s = $14, link_break_reported = $15,
         consecutive_failures = $16, failing_since = $17, failing_alerted = $18,
         last_checked_at = $19, last_success_at = coalesce($20, ms.last_success_at),
         last_error = $21, checks = ms.checks + 1, event_count = ms.event_count + $22,
         migration_hosts = coalesce($23, ms.migration_hosts)
     RETURNING event_count",
);

const LAST_LAG: Sql = Sql::both("SELECT lag_s FROM migration_lag WHERE migration_id = $1 ORDER BY at DESC LIMIT 1");

const WRITE_LAG: Sql =
    Sql::both("INSERT INTO migration_lag (migration_id, at, lag_s) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING");

const WRITE_TRANSITION: Sql = Sql::both(
    "INSERT INTO migration_transitions (migration_id, from_status, to_status, changed_at, previous_lasted_s)
     VALUES ($1, $2, $3, $4, $5)",
);

async fn write(
    mut conn: Conn<'_>,
    instance: &str,
    check: &LiveMigrationCheck<'_>,
    decision: &LiveMigrationDecision,
) -> anyhow::Result<()> {
    let event_count = write_state(conn.re(), check, decision).await?;
    if check.outcome.is_ok() {
        sample_lag(conn.re(), check, &decision.state).await?;
    }
    write_events(conn, instance, check, decision, event_count).await
}

/// Writes the migration's row; the number of events it has had, these included.
async fn write_state(
    mut conn: Conn<'_>,
    check: &LiveMigrationCheck<'_>,
    decision: &LiveMigrationDecision,
) -> anyhow::Result<i64> {
    let m = check.migration;
    let at = Ts(check.at);
    let s = &decision.state;
    let (success_at, last_error) = match check.outcome {
        Ok(_) => (Some(at), None),
        Err(f) => (None, Some(f.explain_atlas())),
    };
    // What the last answer said of the hosts; a failed check keeps what was known.
    let hosts = match check.outcome {
        Ok(r) => Some(serde_json::to_string(&r.migration_hosts)?),
        Err(_) => None,
    };
    let event_count: i64 = on_conn!(conn.re(), |c, D| WRITE_STATE
        .query_scalar::<D, i64>()
        .bind(&m.id)
        .bind(&m.name)
        .bind(m.org.as_str())
        .bind(&m.group_id)
        .bind(&s.status)
        .bind(opt(s.status_since))
        .bind(s.ready)
        .bind(opt(s.ready_since))
        .bind(opt(decision.deadline))
        .bind(s.lag_s)
        .bind(s.lag_high)
        .bind(opt(s.lag_high_since))
        .bind(count(s.lag_streak))
        .bind(s.warned_s)
        .bind(opt(s.link_break_reported))
        .bind(count(s.consecutive_failures))
        .bind(opt(s.failing_since))
        .bind(s.failing_alerted)
        .bind(at)
        .bind(success_at)
        .bind(&last_error)
        .bind(decision.events.len() as i64)
        .bind(&hosts)
        .fetch_one(c)
        .await?);
    Ok(event_count)
}

/// Adds a lag sample after an answer, when the lag moved since the last one.
async fn sample_lag(mut conn: Conn<'_>, check: &LiveMigrationCheck<'_>, s: &LiveMigrationState) -> anyhow::Result<()> {
    let m = check.migration;
    let at = Ts(check.at);
    let last: Option<Option<i64>> = on_conn!(conn.re(), |c, D| LAST_LAG
        .query_scalar::<D, Option<i64>>()
        .bind(&m.id)
        .fetch_optional(c)
        .await?);
    if lag_sample_due(last, s.lag_s) {
        on_conn!(conn.re(), |c, D| WRITE_LAG
            .query::<D>()
            .bind(&m.id)
            .bind(at)
            .bind(s.lag_s)
            .execute(c)
            .await?
            .rows_affected());
    }
    Ok(())
}

/// Writes the decision's events (numbered on from the migration's count before them) with
/// their outbox rows, and a transition for each change of status.
async fn write_events(
    mut conn: Conn<'_>,
    instance: &str,
    check: &LiveMigrationCheck<'_>,
    decision: &LiveMigrationDecision,
    event_count: i64,
) -> anyhow::Result<()> {
    let m = check.migration;
    let at = Ts(check.at);
    let subject = live_migration_subject(&m.id);
    let first_number = event_count - decision.events.len() as i64 + 1;
    for (number, (event, channels)) in (first_number..).zip(&decision.events) {
        if let Event::MigrationStatusChanged {
            from,
            to,
            from_lasted_s,
            ..
        } = event
        {
            on_conn!(conn.re(), |c, D| WRITE_TRANSITION
                .query::<D>()
                .bind(&m.id)
                .bind(from)
                .bind(to)
                .bind(at)
                .bind(from_lasted_s)
                .execute(c)
                .await?
                .rows_affected());
        }
        let id = event_id(instance, &subject, number, event);
        insert_org_event(conn.re(), &id, m.org.as_str(), event, at, channels).await?;
    }
    Ok(())
}

const ROWS: Sql = Sql::each(
    "SELECT migration, migration_id, org_id, org_name, group_id, status, since, ready_for_cutover,
            ready_since, estimated_deadline, lag_s, last_checked_at, consecutive_failures, last_error,
            migration_hosts
     FROM migration_status ORDER BY migration",
    "SELECT migration, migration_id, org_id, org_name, group_id, status, linkwatch_ts(since) AS since,
            ready_for_cutover, linkwatch_ts(ready_since) AS ready_since,
            linkwatch_ts(estimated_deadline) AS estimated_deadline, lag_s,
            linkwatch_ts(last_checked_at) AS last_checked_at,
            consecutive_failures::bigint AS consecutive_failures, last_error, migration_hosts
     FROM migration_status ORDER BY migration",
);

const CHANGES: Sql = Sql::each(
    "SELECT from_status, to_status, changed_at, previous_lasted_s
     FROM migration_changes WHERE migration_id = $1 ORDER BY changed_at",
    "SELECT from_status, to_status, linkwatch_ts(changed_at) AS changed_at, previous_lasted_s
     FROM migration_changes WHERE migration_id = $1 ORDER BY migration_changes.changed_at",
);

const LAG: Sql = Sql::both("SELECT at, lag_s FROM migration_lag WHERE migration_id = $1 AND at >= $2 ORDER BY at");

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
