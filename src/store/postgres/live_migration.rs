//! PostgreSQL: a live migration's check, inside the caller's fenced transaction.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};

use super::insert_event;
use crate::detect::Event;
use crate::detect::live_migration::{LinkView, LiveMigrationState};
use crate::store::live_migration::lag_sample_due;
use crate::store::{LiveMigrationCheck, LiveMigrationDecision, event_id, live_migration_subject};

pub(super) async fn apply(
    conn: &mut PgConnection,
    instance: &str,
    check: &LiveMigrationCheck<'_>,
    superseded: impl FnOnce(DateTime<Utc>) -> bool,
    decide: impl FnOnce(&LiveMigrationState, &LinkView) -> LiveMigrationDecision,
) -> anyhow::Result<Option<LiveMigrationDecision>> {
    let m = check.migration;
    // The org's row first, FOR UPDATE: the link's checks and the org's other migrations write
    // events of this org too, and taking their turns on one row keeps the org's events in the
    // order they commit (event numbers come from a sequence when inserted, deliveries go out in
    // that order). Always org before migration, so two writers never wait on each other.
    let link = sqlx::query("SELECT status, broken_since FROM org_state WHERE org_id = $1 FOR UPDATE")
        .bind(m.org.as_str())
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| -> anyhow::Result<LinkView> {
            Ok(LinkView {
                status: r.try_get("status")?,
                broken_since: r.try_get("broken_since")?,
            })
        })
        .transpose()?
        .unwrap_or_default();
    let (state, last_checked) = load(conn, &m.id).await?;
    if last_checked.is_some_and(superseded) {
        return Ok(None);
    }
    let decision = decide(&state, &link);
    write(conn, instance, check, &decision).await?;
    Ok(Some(decision))
}

async fn load(conn: &mut PgConnection, id: &str) -> anyhow::Result<(LiveMigrationState, Option<DateTime<Utc>>)> {
    // FOR UPDATE: the row cannot change between reading it and writing what follows from it.
    let Some(r) = sqlx::query(
        "SELECT status, status_since, ready_for_cutover, ready_since, lag_s, lag_high, lag_high_since,
                lag_streak, warned_s, link_break_reported, consecutive_failures, failing_since,
                failing_alerted, last_checked_at
         FROM migration_state WHERE migration_id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok((LiveMigrationState::default(), None));
    };
    let state = LiveMigrationState {
        status: r.try_get("status")?,
        status_since: r.try_get("status_since")?,
        ready: r.try_get("ready_for_cutover")?,
        ready_since: r.try_get("ready_since")?,
        lag_s: r.try_get("lag_s")?,
        lag_high: r.try_get("lag_high")?,
        lag_high_since: r.try_get("lag_high_since")?,
        lag_streak: r.try_get::<i32, _>("lag_streak")?.try_into().unwrap_or(0),
        warned_s: r.try_get("warned_s")?,
        link_break_reported: r.try_get("link_break_reported")?,
        consecutive_failures: r
            .try_get::<i32, _>("consecutive_failures")?
            .try_into()
            .unwrap_or(u32::MAX),
        failing_since: r.try_get("failing_since")?,
        failing_alerted: r.try_get("failing_alerted")?,
    };
    Ok((state, r.try_get("last_checked_at")?))
}

async fn write(
    conn: &mut PgConnection,
    instance: &str,
    check: &LiveMigrationCheck<'_>,
    decision: &LiveMigrationDecision,
) -> anyhow::Result<()> {
    let m = check.migration;
    let at = check.at;
    let s = &decision.state;
    let (success_at, last_error) = match check.outcome {
        Ok(_) => (Some(at), None),
        Err(f) => (None, Some(f.explain_atlas())),
    };
    let event_count: i64 = sqlx::query_scalar(
        "INSERT INTO migration_state AS ms (migration_id, name, org_id, group_id, status, status_since,
             ready_for_cutover, ready_since, deadline, lag_s, lag_high, lag_high_since, lag_streak,
             warned_s, link_break_reported, consecutive_failures, failing_since, failing_alerted,
             first_checked_at, last_checked_at, last_success_at, last_error, checks, event_count)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                 $19, $19, $20, $21, 1, $22)
         ON CONFLICT (migration_id) DO UPDATE SET
             name = $2, org_id = $3, group_id = $4, status = $5, status_since = $6,
             ready_for_cutover = $7, ready_since = $8, deadline = $9, lag_s = $10, lag_high = $11,
             lag_high_since = $12, lag_streak = $13, warned_s = $14, link_break_reported = $15,
             consecutive_failures = $16, failing_since = $17, failing_alerted = $18,
             last_checked_at = $19, last_success_at = coalesce($20, ms.last_success_at),
             last_error = $21, checks = ms.checks + 1, event_count = ms.event_count + $22
         RETURNING event_count",
    )
    .bind(&m.id)
    .bind(&m.name)
    .bind(m.org.as_str())
    .bind(&m.group_id)
    .bind(&s.status)
    .bind(s.status_since)
    .bind(s.ready)
    .bind(s.ready_since)
    .bind(decision.deadline)
    .bind(s.lag_s)
    .bind(s.lag_high)
    .bind(s.lag_high_since)
    .bind(i32::try_from(s.lag_streak).unwrap_or(i32::MAX))
    .bind(s.warned_s)
    .bind(s.link_break_reported)
    .bind(i32::try_from(s.consecutive_failures).unwrap_or(i32::MAX))
    .bind(s.failing_since)
    .bind(s.failing_alerted)
    .bind(at)
    .bind(success_at)
    .bind(last_error)
    .bind(decision.events.len() as i64)
    .fetch_one(&mut *conn)
    .await?;

    if check.outcome.is_ok() {
        let last: Option<Option<i64>> =
            sqlx::query_scalar("SELECT lag_s FROM migration_lag WHERE migration_id = $1 ORDER BY at DESC LIMIT 1")
                .bind(&m.id)
                .fetch_optional(&mut *conn)
                .await?;
        if lag_sample_due(last, s.lag_s) {
            sqlx::query(
                "INSERT INTO migration_lag (migration_id, at, lag_s) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(&m.id)
            .bind(at)
            .bind(s.lag_s)
            .execute(&mut *conn)
            .await?;
        }
    }

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
            sqlx::query(
                "INSERT INTO migration_transitions (migration_id, from_status, to_status, changed_at, previous_lasted_s)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&m.id)
            .bind(from)
            .bind(to)
            .bind(at)
            .bind(from_lasted_s)
            .execute(&mut *conn)
            .await?;
        }
        let id = event_id(instance, &subject, number, event);
        insert_event(conn, &id, m.org.as_str(), at, event, channels).await?;
    }
    Ok(())
}
