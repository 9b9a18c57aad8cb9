//! The only module that speaks SQL. One `Store` over a SQLite pool; migrations applied at open;
//! runtime-checked queries (`query`/`query_as` with `FromRow`), each a small method.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::SqliteConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, FromRow, Row};

use crate::config::OrgId;
use crate::detect::{Event, OrgState};
use crate::outcome::CheckOutcome;

mod outbox;

pub use outbox::{Blocked, Delivery, Pending};

#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

/// ISO-8601 UTC with milliseconds and a `Z`: sorts as text, readable by SQLite's date functions.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_ts(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// One check, with everything it changes, written in one transaction.
pub struct CheckRecord<'a> {
    pub org_id: &'a OrgId,
    pub org_name: &'a str,
    pub at: DateTime<Utc>,
    pub outcome: &'a CheckOutcome,
    pub state: &'a OrgState,
    /// Each event with the channels it is routed to.
    pub events: &'a [(Event, Vec<String>)],
    /// Routes (keys) whose reminder is among `events`: their clock restarts at `at`.
    pub reminded: &'a [String],
}

#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct StatusChange {
    pub org_id: String,
    pub org_name: String,
    pub from_status: Option<String>,
    pub to_status: String,
    pub changed_at: String,
    pub previous_lasted_s: Option<i64>,
}

#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct CurrentStatus {
    pub org_id: String,
    pub org_name: String,
    pub status: Option<String>,
    pub since: Option<String>,
    pub last_checked_at: String,
    pub consecutive_failures: i64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, FromRow)]
pub struct StoredEvent {
    pub id: String,
    pub org_id: String,
    pub org_name: Option<String>,
    pub kind: String,
    pub created_at: String,
    pub payload: String,
}

impl Store {
    /// Opens (creating file and parent directory if missing) and migrates the database.
    pub async fn open(path: &Path) -> anyhow::Result<Store> {
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
        sqlx::migrate!()
            .run(&pool)
            .await
            .with_context(|| format!("cannot migrate database {}", path.display()))?;
        Ok(Store { pool })
    }

    /// A real write, for health checks: fails when the database cannot take writes (read-only
    /// file system, disk full, locked for longer than the busy timeout).
    pub async fn probe_write(&self) -> anyhow::Result<()> {
        let write = self.write(async |conn| {
            sqlx::query(
                "INSERT INTO meta (key, value) VALUES ('health_probe', ?1) ON CONFLICT (key) DO UPDATE SET value = ?1",
            )
            .bind(ts(Utc::now()))
            .execute(conn)
            .await?;
            Ok(())
        });
        // A health check must answer quickly; a write that waits this long is a problem too.
        match tokio::time::timeout(Duration::from_secs(2), write).await {
            Ok(result) => result,
            Err(_) => anyhow::bail!("a write did not complete within 2s (database locked?)"),
        }
    }

    /// Deletes failed-check rows, and sent or failed deliveries, older than `before`; status
    /// changes and events stay. Returns (failed checks, deliveries) deleted.
    pub async fn prune(&self, before: DateTime<Utc>) -> anyhow::Result<(u64, u64)> {
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
        Ok((failures, deliveries))
    }

    /// The gauges `/metrics` reads from the database.
    pub async fn gauges(&self) -> anyhow::Result<crate::metrics::DbGauges> {
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
        let blocked = self
            .blocked_channels(Utc::now())
            .await?
            .into_iter()
            .map(|b| (b.channel, (Utc::now() - b.since).num_milliseconds() as f64 / 1000.0))
            .collect();
        Ok(crate::metrics::DbGauges {
            statuses,
            outbox_depth,
            oldest_pending_s: parse_ts(oldest).map(|t| (Utc::now() - t).num_milliseconds() as f64 / 1000.0),
            blocked,
        })
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

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn load_state(&self, org: &OrgId) -> anyhow::Result<OrgState> {
        let row = sqlx::query(
            "SELECT status, status_since, previous_status, candidate_status, candidate_count,
                    candidate_since, consecutive_failures, failing_since, failing_alerted
             FROM org_state WHERE org_id = ?",
        )
        .bind(org.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(OrgState::default());
        };
        Ok(OrgState {
            status: r.try_get("status")?,
            status_since: parse_ts(r.try_get("status_since")?),
            previous_status: r.try_get("previous_status")?,
            candidate: r.try_get("candidate_status")?,
            candidate_count: r.try_get::<i64, _>("candidate_count")?.try_into().unwrap_or(0),
            candidate_since: parse_ts(r.try_get("candidate_since")?),
            consecutive_failures: r
                .try_get::<i64, _>("consecutive_failures")?
                .try_into()
                .unwrap_or(u32::MAX),
            failing_since: parse_ts(r.try_get("failing_since")?),
            failing_alerted: r.try_get("failing_alerted")?,
        })
    }

    /// When each route last reminded about `org`, by route key.
    pub async fn reminders_sent(&self, org: &OrgId) -> anyhow::Result<Vec<(String, DateTime<Utc>)>> {
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT route, last_sent_at FROM reminders WHERE org_id = ?")
            .bind(org.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(route, at)| parse_ts(Some(at)).map(|t| (route, t)))
            .collect())
    }

    /// The common case in one statement: a check that saw the status already confirmed, with no
    /// candidate and no failures, changes nothing but the check time ([`detect::is_quiet`]
    /// states the same rule in Rust, and a test holds the two together). Returns `false` when
    /// the stored state is anything else; the caller then runs the full path.
    ///
    /// [`detect::is_quiet`]: crate::detect::is_quiet
    pub async fn record_if_quiet(
        &self,
        org: &OrgId,
        org_name: &str,
        status: &str,
        at: DateTime<Utc>,
    ) -> anyhow::Result<bool> {
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
                .bind(org_name)
                .bind(status)
                .bind(&at)
                .execute(conn)
                .await?
                .rows_affected())
            })
            .await?;
        Ok(updated == 1)
    }

    /// Writes the check's result, the new state, its events and their outbox rows atomically:
    /// either all of it is stored or none, so a crash can neither lose nor repeat an event.
    pub async fn record_check(&self, rec: &CheckRecord<'_>) -> anyhow::Result<()> {
        let at = ts(rec.at);
        let s = rec.state;
        let (success_at, last_error) = match rec.outcome {
            Ok(_) => (Some(at.clone()), None),
            Err(f) => (None, Some(f.explain())),
        };
        self.write(async |conn| {
            let mut tx = conn.begin().await?;
            sqlx::query(
                "INSERT INTO org_state (org_id, org_name, status, status_since, candidate_status,
                 candidate_count, candidate_since, consecutive_failures, failing_since,
                 failing_alerted, first_checked_at, last_checked_at, last_success_at, last_error, checks,
                 previous_status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13, 1, ?14)
             ON CONFLICT (org_id) DO UPDATE SET
                 org_name = ?2, status = ?3, status_since = ?4, previous_status = ?14, candidate_status = ?5,
                 candidate_count = ?6, candidate_since = ?7, consecutive_failures = ?8,
                 failing_since = ?9, failing_alerted = ?10, last_checked_at = ?11,
                 last_success_at = coalesce(?12, last_success_at), last_error = ?13,
                 checks = checks + 1",
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
            .execute(&mut *tx)
            .await?;

            for route in rec.reminded {
                sqlx::query(
                    "INSERT INTO reminders (org_id, route, last_sent_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (org_id, route) DO UPDATE SET last_sent_at = ?3",
                )
                .bind(rec.org_id.as_str())
                .bind(route)
                .bind(&at)
                .execute(&mut *tx)
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
                .execute(&mut *tx)
                .await?;
            }

            for (event, channels) in rec.events {
                match event {
                    Event::FirstSeen { status } => {
                        insert_transition(&mut tx, rec.org_id, None, status, &at, None).await?;
                    }
                    Event::StatusChanged {
                        from,
                        to,
                        changed_at,
                        from_lasted_s,
                    } => {
                        insert_transition(
                            &mut tx,
                            rec.org_id,
                            Some(from),
                            to,
                            &ts(*changed_at),
                            Some(*from_lasted_s),
                        )
                        .await?;
                    }
                    Event::CheckFailing { .. } | Event::CheckRecovered { .. } | Event::Reminder { .. } => {}
                }
                let id = format!("evt_{:032x}", rand::random::<u128>());
                let seq: i64 = sqlx::query_scalar(
                    "INSERT INTO events (id, org_id, kind, created_at, payload) VALUES (?, ?, ?, ?, ?) RETURNING seq",
                )
                .bind(&id)
                .bind(rec.org_id.as_str())
                .bind(event.kind())
                .bind(&at)
                .bind(serde_json::to_string(event)?)
                .fetch_one(&mut *tx)
                .await?;
                for channel in channels {
                    sqlx::query(
                        "INSERT INTO outbox (event_seq, channel, next_attempt_at, created_at) VALUES (?, ?, ?, ?)",
                    )
                    .bind(seq)
                    .bind(channel)
                    .bind(&at)
                    .bind(&at)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Status changes, oldest first. `org` matches an id or a name.
    pub async fn history(&self, org: Option<&str>, since: Option<DateTime<Utc>>) -> anyhow::Result<Vec<StatusChange>> {
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

    pub async fn current(&self) -> anyhow::Result<Vec<CurrentStatus>> {
        Ok(sqlx::query_as::<_, CurrentStatus>(
            "SELECT org_id, org_name, status, since, last_checked_at, consecutive_failures, last_error
             FROM current_status ORDER BY org_name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Events, oldest first, optionally for one org (id).
    pub async fn events(&self, org: Option<&OrgId>) -> anyhow::Result<Vec<StoredEvent>> {
        Ok(sqlx::query_as::<_, StoredEvent>(
            "SELECT e.id, e.org_id, o.org_name, e.kind, e.created_at, e.payload
             FROM events AS e LEFT JOIN org_state AS o USING (org_id)
             WHERE ?1 IS NULL OR e.org_id = ?1 ORDER BY e.seq",
        )
        .bind(org.map(OrgId::as_str))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Failed-check rows for one org, oldest first: (class, http_status, error_code, detail).
    pub async fn failures(&self, org: &OrgId) -> anyhow::Result<Vec<(String, Option<i64>, Option<String>, String)>> {
        Ok(sqlx::query_as(
            "SELECT class, http_status, error_code, detail FROM check_failures WHERE org_id = ? ORDER BY id",
        )
        .bind(org.as_str())
        .fetch_all(&self.pool)
        .await?)
    }
}

async fn insert_transition(
    conn: &mut SqliteConnection,
    org: &OrgId,
    from: Option<&String>,
    to: &str,
    at: &str,
    lasted: Option<i64>,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO transitions (org_id, from_status, to_status, changed_at, previous_lasted_s)
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(org.as_str())
    .bind(from)
    .bind(to)
    .bind(at)
    .bind(lasted)
    .execute(conn)
    .await?;
    Ok(())
}

/// Parses "7d", "12h", "30m" or an ISO date/time into an instant before `now`.
pub fn since_from(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(d) = humantime::parse_duration(text) {
        return chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .ok_or_else(|| format!("--since {text} reaches before the calendar starts"));
    }
    if let Ok(t) = DateTime::<Utc>::from_str(text) {
        return Ok(t);
    }
    if let Ok(d) = chrono::NaiveDate::from_str(text) {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    Err(format!(
        "--since \"{text}\" is neither a duration (7d, 12h) nor a date (2026-11-01) or UTC time (2026-11-01T08:00:00Z)"
    ))
}
