//! The only module that speaks SQL. One `Store` over a SQLite pool; migrations applied at open;
//! runtime-checked queries (`query`/`query_as` with `FromRow`), each a small method.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::FromRow;
use sqlx::sqlite::SqliteConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::config::OrgId;

mod checks;
mod lock;
mod outbox;
mod quiet;

pub use checks::{Applied, Check, CheckRecord, Decision, RemindersSent, event_id};
pub use lock::{LockError, WriterLock};
pub use outbox::{Delivery, Pending};
pub use quiet::{QUIET_WINDOW, Unmatched};

#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    /// This database's random identity (`meta.instance`), part of every event id.
    instance: Arc<str>,
    /// Quiet checks noted in memory until the next group commit.
    quiet: quiet::SharedQuietLog,
}

/// ISO-8601 UTC with milliseconds and a `Z`: sorts as text, readable by SQLite's date functions.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_ts(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.with_timezone(&Utc))
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
        let instance: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'instance'")
            .fetch_one(&pool)
            .await
            .with_context(|| format!("cannot read the identity of database {}", path.display()))?;
        Ok(Store {
            pool,
            instance: instance.into(),
            quiet: Default::default(),
        })
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
        Ok(crate::metrics::DbGauges {
            statuses,
            outbox_depth,
            oldest_pending_s: parse_ts(oldest).map(|t| (Utc::now() - t).num_milliseconds() as f64 / 1000.0),
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
