//! The SQLite backend: one file, WAL, a small pool. Timestamps are ISO-8601 UTC text
//! ([`ts`]), which sorts as text and which SQLite's date functions read. One writer per file is
//! kept by the `flock` of [`super::WriterLock`], so these writes need no fencing.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Row};

use super::DbGauges;
use super::backend::{Backend, FailureRow, Pruned, QuietRow};
use super::{
    Applied, ChannelDeliveries, Check, CheckRecord, CurrentStatus, Decision, Delivery, FailedCheck,
    LiveMigrationChange, LiveMigrationCheck, LiveMigrationDecision, LiveMigrationRow, OrgRow, Pending, REPORT_ORG_END,
    REPORT_ORG_PREFIX, RemindersSent, ReportRun, StatusChange, StoredEvent, cap, event_id, parse_ts, transition, ts,
};
use crate::config::OrgId;
use crate::detect::OrgState;
use crate::detect::live_migration::{LinkView, LiveMigrationState};

mod live_migration;

#[derive(Debug, Clone)]
pub struct Sqlite {
    pool: SqlitePool,
}

impl Sqlite {
    /// Opens (creating file and parent directory if missing) and migrates the database.
    pub async fn open(path: &Path) -> anyhow::Result<Sqlite> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            // WAL: people reading with the sqlite3 shell never block the daemon, nor it them.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open database {}", path.display()))?;
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .with_context(|| format!("cannot migrate database {}", path.display()))?;
        Ok(Sqlite { pool })
    }

    #[cfg(test)]
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Runs `f` on a connection of its own. When `f` fails, the connection is closed instead of
    /// going back to the pool: after SQLITE_FULL or an I/O error SQLite may leave a transaction
    /// half open on it, and the next user of that connection would write into a transaction that
    /// never commits (and believe it had).
    async fn write<T>(&self, f: impl AsyncFnOnce(&mut SqliteConnection) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let mut conn = self.pool.acquire().await?;
        let result = f(&mut conn).await;
        if result.is_err() {
            let _ = conn.close().await;
        }
        result
    }
}

impl Backend for Sqlite {
    async fn instance(&self) -> anyhow::Result<String> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = 'instance'")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn apply(
        &self,
        instance: &str,
        check: &Check<'_>,
        superseded: impl FnOnce(DateTime<Utc>) -> bool,
        decide: impl FnOnce(&OrgState, &RemindersSent) -> Decision,
    ) -> anyhow::Result<Applied> {
        self.write(async |conn| {
            // IMMEDIATE takes the write lock before the read, so the state cannot change between
            // reading it and writing what follows from it.
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let (state, last_checked) = load_state(&mut tx, check.org_id).await?;
            if last_checked.is_some_and(superseded) {
                return Ok(Applied::Superseded);
            }
            let sent = reminders_sent(&mut tx, check.org_id).await?;
            let decision = decide(&state, &sent);
            write_record(&mut tx, instance, &check.record(&decision)).await?;
            tx.commit().await?;
            Ok(Applied::Recorded(decision))
        })
        .await
    }

    async fn record_if_quiet(&self, org: &OrgId, name: &str, status: &str, at: DateTime<Utc>) -> anyhow::Result<bool> {
        let at = ts(at);
        let updated = self
            .write(async |conn| {
                Ok(sqlx::query(
                    "UPDATE org_state SET org_name = ?2, last_checked_at = ?4, last_success_at = ?4,
                         last_error = NULL, checks = checks + 1
                     WHERE org_id = ?1 AND status = ?3 AND candidate_status IS NULL
                       AND consecutive_failures = 0 AND failing_alerted = 0",
                )
                .bind(org.as_str())
                .bind(name)
                .bind(status)
                .bind(&at)
                .execute(conn)
                .await?
                .rows_affected())
            })
            .await?;
        Ok(updated == 1)
    }

    async fn apply_live_migration(
        &self,
        instance: &str,
        check: &LiveMigrationCheck<'_>,
        superseded: impl FnOnce(DateTime<Utc>) -> bool,
        decide: impl FnOnce(&LiveMigrationState, &LinkView) -> LiveMigrationDecision,
    ) -> anyhow::Result<Option<LiveMigrationDecision>> {
        self.write(async |conn| {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let decision = live_migration::apply(&mut tx, instance, check, superseded, decide).await?;
            tx.commit().await?;
            Ok(decision)
        })
        .await
    }

    async fn live_migrations(&self) -> anyhow::Result<Vec<LiveMigrationRow>> {
        Ok(sqlx::query_as::<_, LiveMigrationRow>(
            "SELECT migration, migration_id, org_id, org_name, group_id, status, since, ready_for_cutover,
                    ready_since, estimated_deadline, lag_s, last_checked_at, consecutive_failures, last_error
             FROM migration_status ORDER BY migration",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn live_migration_changes(&self, migration_id: &str) -> anyhow::Result<Vec<LiveMigrationChange>> {
        Ok(sqlx::query_as::<_, LiveMigrationChange>(
            "SELECT from_status, to_status, changed_at, previous_lasted_s
             FROM migration_changes WHERE migration_id = ? ORDER BY changed_at",
        )
        .bind(migration_id)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn live_migration_lag(
        &self,
        migration_id: &str,
        since: DateTime<Utc>,
    ) -> anyhow::Result<Vec<(DateTime<Utc>, Option<i64>)>> {
        let rows: Vec<(String, Option<i64>)> =
            sqlx::query_as("SELECT at, lag_s FROM migration_lag WHERE migration_id = ? AND at >= ? ORDER BY at")
                .bind(migration_id)
                .bind(ts(since))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(at, lag)| parse_ts(Some(at)).map(|t| (t, lag)))
            .collect())
    }

    async fn record_check(&self, instance: &str, rec: &CheckRecord<'_>) -> anyhow::Result<()> {
        self.write(async |conn| {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            write_record(&mut tx, instance, rec).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn load_state(&self, org: &OrgId) -> anyhow::Result<OrgState> {
        let mut conn = self.pool.acquire().await?;
        Ok(load_state(&mut conn, org).await?.0)
    }

    async fn flush_quiet(&self, rows: &[QuietRow]) -> anyhow::Result<Vec<String>> {
        let times: Vec<String> = rows.iter().map(|r| ts(r.at)).collect();
        self.write(async |conn| {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let mut written = Vec::with_capacity(rows.len());
            for (rows, times) in rows.chunks(QUIET_CHUNK).zip(times.chunks(QUIET_CHUNK)) {
                let mut query = sqlx::query_scalar(quiet_update_sql());
                for (row, t) in rows.iter().zip(times) {
                    query = query
                        .bind(row.org_id.as_str())
                        .bind(&*row.status)
                        .bind(t.as_str())
                        .bind(i64::from(row.checks));
                }
                // A short last chunk is padded with rows of NULLs, which match no org: one
                // statement text, prepared once, whatever the batch's size.
                for _ in rows.len()..QUIET_CHUNK {
                    query = query
                        .bind(None::<&str>)
                        .bind(None::<&str>)
                        .bind(None::<&str>)
                        .bind(None::<i64>);
                }
                written.extend(query.fetch_all(&mut *tx).await?);
            }
            tx.commit().await?;
            Ok(written)
        })
        .await
    }

    async fn pending(&self, channel: &str, limit: i64, skip: &[String]) -> anyhow::Result<Vec<Pending>> {
        // The skipped orgs come as one JSON array: SQLite builds the set once per statement.
        Ok(sqlx::query_as::<_, Pending>(
            "SELECT x.id AS outbox_id, e.org_id, x.attempts, x.next_attempt_at, x.created_at, x.last_error
             FROM outbox AS x
             JOIN events AS e ON e.seq = x.event_seq
             WHERE x.channel = ? AND x.state = 'pending'
               AND e.org_id NOT IN (SELECT value FROM json_each(?))
             ORDER BY x.event_seq LIMIT ?",
        )
        .bind(channel)
        .bind(serde_json::to_string(skip)?)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn pending_of(&self, outbox_ids: &[i64]) -> anyhow::Result<Vec<Pending>> {
        Ok(sqlx::query_as::<_, Pending>(
            "SELECT x.id AS outbox_id, e.org_id, x.attempts, x.next_attempt_at, x.created_at, x.last_error
             FROM outbox AS x
             JOIN events AS e ON e.seq = x.event_seq
             WHERE x.id IN (SELECT value FROM json_each(?)) AND x.state = 'pending'
             ORDER BY x.event_seq",
        )
        .bind(serde_json::to_string(outbox_ids)?)
        .fetch_all(&self.pool)
        .await?)
    }

    /// One process sends (the file lock): every row is this one's to send.
    async fn claim(&self, outbox_ids: &[i64], _token: &str, _hold: Duration) -> anyhow::Result<Vec<i64>> {
        Ok(outbox_ids.to_vec())
    }

    async fn deliveries(&self, outbox_ids: &[i64]) -> anyhow::Result<Vec<Delivery>> {
        Ok(sqlx::query_as::<_, Delivery>(
            "SELECT x.id AS outbox_id, x.attempts, x.next_attempt_at, e.id, e.org_id, o.org_name, e.kind,
                    e.created_at, e.payload
             FROM outbox AS x
             JOIN events AS e ON e.seq = x.event_seq
             LEFT JOIN org_state AS o ON o.org_id = e.org_id
             WHERE x.id IN (SELECT value FROM json_each(?)) AND x.state = 'pending'
             ORDER BY x.event_seq",
        )
        .bind(serde_json::to_string(outbox_ids)?)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn next_due(&self, channel: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        let next: Option<String> = sqlx::query_scalar(
            "SELECT next_attempt_at FROM outbox WHERE channel = ? AND state = 'pending' ORDER BY event_seq LIMIT 1",
        )
        .bind(channel)
        .fetch_optional(&self.pool)
        .await?;
        Ok(parse_ts(next))
    }

    async fn mark_sent(
        &self,
        outbox_ids: &[i64],
        _token: &str,
        now: DateTime<Utc>,
        note: Option<&str>,
    ) -> anyhow::Result<()> {
        let note = note.map(cap);
        self.write(async |conn| {
            sqlx::query(
                "UPDATE outbox SET state = 'sent', attempts = attempts + 1, sent_at = ?1, last_error = ?2
                 WHERE id IN (SELECT value FROM json_each(?3)) AND state = 'pending'",
            )
            .bind(ts(now))
            .bind(&note)
            .bind(serde_json::to_string(outbox_ids)?)
            .execute(&mut *conn)
            .await?;
            Ok(())
        })
        .await
    }

    async fn mark_attempt_failed(
        &self,
        outbox_ids: &[i64],
        _token: &str,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> anyhow::Result<()> {
        let error = cap(error);
        self.write(async |conn| {
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?1,
                     state = CASE WHEN ?2 IS NULL THEN 'failed' ELSE 'pending' END,
                     next_attempt_at = coalesce(?2, next_attempt_at)
                 WHERE id IN (SELECT value FROM json_each(?3)) AND state = 'pending'",
            )
            .bind(&error)
            .bind(retry_at.map(ts))
            .bind(serde_json::to_string(outbox_ids)?)
            .execute(&mut *conn)
            .await?;
            Ok(())
        })
        .await
    }

    async fn enqueue_report(&self, run: &ReportRun<'_>) -> anyhow::Result<bool> {
        self.write(async |conn| {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let at = ts(run.at);
            let recorded = sqlx::query(
                "INSERT INTO report_runs (report, slot, event_id, late, created_at) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (report, slot) DO NOTHING",
            )
            .bind(run.report)
            .bind(ts(run.slot))
            .bind(run.event_id)
            .bind(run.late)
            .bind(&at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if recorded == 0 {
                return Ok(false);
            }
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO events (id, org_id, kind, created_at, payload) VALUES (?, ?, 'report', ?, ?) RETURNING seq",
            )
            .bind(run.event_id)
            .bind(run.org_id())
            .bind(&at)
            .bind(run.payload)
            .fetch_one(&mut *tx)
            .await?;
            for channel in run.channels {
                sqlx::query("INSERT INTO outbox (event_seq, channel, next_attempt_at, created_at) VALUES (?, ?, ?, ?)")
                    .bind(seq)
                    .bind(channel)
                    .bind(&at)
                    .bind(&at)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn last_report_slot(&self, report: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        let slot: Option<String> = sqlx::query_scalar("SELECT max(slot) FROM report_runs WHERE report = ?")
            .bind(report)
            .fetch_one(&self.pool)
            .await?;
        Ok(parse_ts(slot))
    }

    async fn probe_write(&self) -> anyhow::Result<()> {
        self.write(async |conn| {
            sqlx::query(
                "INSERT INTO meta (key, value) VALUES ('health_probe', ?1) ON CONFLICT (key) DO UPDATE SET value = ?1",
            )
            .bind(ts(Utc::now()))
            .execute(conn)
            .await?;
            Ok(())
        })
        .await
    }

    async fn prune(&self, before: DateTime<Utc>) -> anyhow::Result<Pruned> {
        let before = ts(before);
        let failures = sqlx::query("DELETE FROM check_failures WHERE checked_at < ?")
            .bind(&before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let deliveries = sqlx::query(
            "DELETE FROM outbox WHERE (state = 'sent' AND sent_at < ?1) OR (state = 'failed' AND created_at < ?1)",
        )
        .bind(&before)
        .execute(&self.pool)
        .await?
        .rows_affected();
        // After the deliveries: a report still being delivered (or retried) keeps its event.
        let reports = sqlx::query(
            // The org_id range reads `events_by_org`, not every event.
            "DELETE FROM events WHERE org_id >= ?2 AND org_id < ?3 AND kind = 'report'
                 AND created_at < ?1
                 AND NOT EXISTS (SELECT 1 FROM outbox AS x WHERE x.event_seq = events.seq)",
        )
        .bind(&before)
        .bind(REPORT_ORG_PREFIX)
        .bind(REPORT_ORG_END)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(Pruned {
            failures,
            deliveries,
            reports,
        })
    }

    async fn gauges(&self) -> anyhow::Result<DbGauges> {
        let statuses = sqlx::query_as("SELECT org_id, org_name, status FROM current_status ORDER BY org_id")
            .fetch_all(&self.pool)
            .await?;
        let outbox_depth = sqlx::query_as(
            "SELECT channel, count(*) FROM outbox WHERE state = 'pending' GROUP BY channel ORDER BY channel",
        )
        .fetch_all(&self.pool)
        .await?;
        let oldest: Option<String> = sqlx::query_scalar("SELECT min(created_at) FROM outbox WHERE state = 'pending'")
            .fetch_one(&self.pool)
            .await?;
        Ok(DbGauges {
            statuses,
            outbox_depth,
            oldest_pending_s: parse_ts(oldest).map(|t| (Utc::now() - t).num_milliseconds() as f64 / 1000.0),
            migrations: Vec::new(),
        })
    }

    async fn history(&self, org: Option<&str>, since: Option<DateTime<Utc>>) -> anyhow::Result<Vec<StatusChange>> {
        Ok(sqlx::query_as::<_, StatusChange>(
            "SELECT org_id, org_name, from_status, to_status, changed_at, previous_lasted_s
             FROM status_changes
             WHERE (?1 IS NULL OR org_id = ?1 OR org_name = ?1) AND (?2 IS NULL OR changed_at >= ?2)
             ORDER BY changed_at, org_id",
        )
        .bind(org)
        .bind(since.map(ts))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn current(&self) -> anyhow::Result<Vec<CurrentStatus>> {
        Ok(sqlx::query_as::<_, CurrentStatus>(
            "SELECT org_id, org_name, status, since, last_checked_at, consecutive_failures, last_error
             FROM current_status ORDER BY org_name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn events(&self, org: Option<&OrgId>) -> anyhow::Result<Vec<StoredEvent>> {
        Ok(sqlx::query_as::<_, StoredEvent>(
            "SELECT e.id, e.org_id, o.org_name, e.kind, e.created_at, e.payload
             FROM events AS e LEFT JOIN org_state AS o USING (org_id)
             WHERE ?1 IS NULL OR e.org_id = ?1 ORDER BY e.seq",
        )
        .bind(org.map(OrgId::as_str))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn failures(&self, org: &OrgId) -> anyhow::Result<Vec<FailureRow>> {
        Ok(sqlx::query_as(
            "SELECT class, http_status, error_code, detail FROM check_failures WHERE org_id = ? ORDER BY id",
        )
        .bind(org.as_str())
        .fetch_all(&self.pool)
        .await?)
    }

    async fn org_rows(&self) -> anyhow::Result<Vec<OrgRow>> {
        Ok(sqlx::query_as::<_, OrgRow>(
            "SELECT org_id, org_name, status, status_since AS since, last_checked_at, consecutive_failures,
                    last_error, broken_since
             FROM org_state ORDER BY org_name, org_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn channel_deliveries(&self) -> anyhow::Result<Vec<ChannelDeliveries>> {
        Ok(sqlx::query_as::<_, ChannelDeliveries>(
            "SELECT channel, sum(state = 'pending') AS pending, sum(state = 'failed') AS failed,
                    min(CASE WHEN state = 'pending' THEN created_at END) AS oldest_pending_at,
                    (SELECT l.last_error FROM outbox AS l
                     WHERE l.channel = o.channel AND l.state IN ('pending', 'failed') AND l.last_error IS NOT NULL
                     ORDER BY l.id DESC LIMIT 1) AS last_error
             FROM outbox AS o WHERE state IN ('pending', 'failed') GROUP BY channel ORDER BY channel",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn failed_checks(&self, org: &OrgId, since: DateTime<Utc>, limit: i64) -> anyhow::Result<Vec<FailedCheck>> {
        Ok(sqlx::query_as::<_, FailedCheck>(
            "SELECT checked_at, class, http_status, error_code, detail FROM check_failures
             WHERE org_id = ?1 AND checked_at >= ?2 ORDER BY checked_at DESC, id DESC LIMIT ?3",
        )
        .bind(org.as_str())
        .bind(ts(since))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// The org's state, and when it was last checked (`None` for an org never checked).
async fn load_state(conn: &mut SqliteConnection, org: &OrgId) -> anyhow::Result<(OrgState, Option<DateTime<Utc>>)> {
    let row = sqlx::query(
        "SELECT status, status_since, previous_status, broken_since, candidate_status, candidate_count,
                candidate_since, consecutive_failures, failing_since, failing_alerted, last_checked_at
         FROM org_state WHERE org_id = ?",
    )
    .bind(org.as_str())
    .fetch_optional(conn)
    .await?;
    let Some(r) = row else {
        return Ok((OrgState::default(), None));
    };
    let state = OrgState {
        status: r.try_get("status")?,
        status_since: parse_ts(r.try_get("status_since")?),
        previous_status: r.try_get("previous_status")?,
        broken_since: parse_ts(r.try_get("broken_since")?),
        candidate: r.try_get("candidate_status")?,
        candidate_count: r.try_get::<i64, _>("candidate_count")?.try_into().unwrap_or(0),
        candidate_since: parse_ts(r.try_get("candidate_since")?),
        consecutive_failures: r
            .try_get::<i64, _>("consecutive_failures")?
            .try_into()
            .unwrap_or(u32::MAX),
        failing_since: parse_ts(r.try_get("failing_since")?),
        failing_alerted: r.try_get("failing_alerted")?,
    };
    Ok((state, parse_ts(r.try_get("last_checked_at")?)))
}

async fn reminders_sent(conn: &mut SqliteConnection, org: &OrgId) -> anyhow::Result<Vec<(String, DateTime<Utc>)>> {
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT route, last_sent_at FROM reminders WHERE org_id = ?")
        .bind(org.as_str())
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(route, at)| parse_ts(Some(at)).map(|t| (route, t)))
        .collect())
}

/// Quiet checks written per statement by [`Backend::flush_quiet`]: 4 parameters each, far
/// below SQLite's limit of 32,766, and few statements per window even at 10,000 orgs.
const QUIET_CHUNK: usize = 64;

/// The group commit's statement for [`QUIET_CHUNK`] rows, bound as values rather than packed in
/// JSON: unpacking JSON in SQL cost more than the rest of the flush together.
fn quiet_update_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let values = vec!["(?, ?, ?, ?)"; QUIET_CHUNK].join(", ");
        format!(
            "WITH q (o, s, t, n) AS (VALUES {values})
             UPDATE org_state SET last_checked_at = q.t, last_success_at = q.t, last_error = NULL,
                 checks = checks + q.n
             FROM q
             WHERE org_state.org_id = q.o AND org_state.status = q.s
               AND org_state.candidate_status IS NULL AND org_state.consecutive_failures = 0
               AND org_state.failing_alerted = 0 AND org_state.last_checked_at < q.t
             RETURNING org_state.org_id"
        )
    })
}

/// Writes `rec` inside the caller's transaction.
async fn write_record(conn: &mut SqliteConnection, instance: &str, rec: &CheckRecord<'_>) -> anyhow::Result<()> {
    let at = ts(rec.at);
    let s = rec.state;
    let (success_at, last_error) = match rec.outcome {
        Ok(_) => (Some(at.clone()), None),
        Err(f) => (None, Some(f.explain())),
    };
    // The org's event count moves with its events, so the n-th event of an org is numbered n
    // whether it is detected for the first time or again after a power cut.
    let event_count: i64 = sqlx::query_scalar(
        "INSERT INTO org_state (org_id, org_name, status, status_since, candidate_status,
             candidate_count, candidate_since, consecutive_failures, failing_since,
             failing_alerted, first_checked_at, last_checked_at, last_success_at, last_error, checks,
             previous_status, broken_since, event_count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13, 1, ?14, ?15, ?16)
         ON CONFLICT (org_id) DO UPDATE SET
             org_name = ?2, status = ?3, status_since = ?4, previous_status = ?14, candidate_status = ?5,
             candidate_count = ?6, candidate_since = ?7, consecutive_failures = ?8,
             failing_since = ?9, failing_alerted = ?10, last_checked_at = ?11,
             last_success_at = coalesce(?12, last_success_at), last_error = ?13,
             checks = checks + 1, broken_since = ?15, event_count = event_count + ?16
         RETURNING event_count",
    )
    .bind(rec.org_id.as_str())
    .bind(rec.org_name)
    .bind(&s.status)
    .bind(s.status_since.map(ts))
    .bind(&s.candidate)
    .bind(i64::from(s.candidate_count))
    .bind(s.candidate_since.map(ts))
    .bind(i64::from(s.consecutive_failures))
    .bind(s.failing_since.map(ts))
    .bind(s.failing_alerted)
    .bind(&at)
    .bind(success_at)
    .bind(last_error)
    .bind(&s.previous_status)
    .bind(s.broken_since.map(ts))
    .bind(rec.events.len() as i64)
    .fetch_one(&mut *conn)
    .await?;

    for route in rec.reminded {
        sqlx::query(
            "INSERT INTO reminders (org_id, route, last_sent_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (org_id, route) DO UPDATE SET last_sent_at = ?3",
        )
        .bind(rec.org_id.as_str())
        .bind(route)
        .bind(&at)
        .execute(&mut *conn)
        .await?;
    }

    if let Err(f) = rec.outcome {
        sqlx::query(
            "INSERT INTO check_failures (org_id, checked_at, class, http_status, error_code, detail)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(rec.org_id.as_str())
        .bind(&at)
        .bind(f.class.as_str())
        .bind(f.http_status.map(i64::from))
        .bind(&f.error_code)
        .bind(&f.detail)
        .execute(&mut *conn)
        .await?;
    }

    let first_number = event_count - rec.events.len() as i64 + 1;
    for (number, (event, channels)) in (first_number..).zip(rec.events) {
        if let Some(t) = transition(event, rec.at) {
            sqlx::query(
                "INSERT INTO transitions (org_id, from_status, to_status, changed_at, previous_lasted_s)
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(rec.org_id.as_str())
            .bind(t.from)
            .bind(t.to)
            .bind(ts(t.changed_at))
            .bind(t.previous_lasted_s)
            .execute(&mut *conn)
            .await?;
        }
        let id = event_id(instance, rec.org_id.as_str(), number, event);
        insert_event(conn, &id, rec.org_id.as_str(), &at, event, channels).await?;
    }
    Ok(())
}

/// An event and one outbox row per channel, inside the caller's transaction.
async fn insert_event(
    conn: &mut SqliteConnection,
    id: &str,
    org_id: &str,
    at: &str,
    event: &crate::detect::Event,
    channels: &[String],
) -> anyhow::Result<()> {
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO events (id, org_id, kind, created_at, payload) VALUES (?, ?, ?, ?, ?) RETURNING seq",
    )
    .bind(id)
    .bind(org_id)
    .bind(event.kind())
    .bind(at)
    .bind(serde_json::to_string(event)?)
    .fetch_one(&mut *conn)
    .await?;
    for channel in channels {
        sqlx::query("INSERT INTO outbox (event_seq, channel, next_attempt_at, created_at) VALUES (?, ?, ?, ?)")
            .bind(seq)
            .bind(channel)
            .bind(at)
            .bind(at)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
