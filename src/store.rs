//! The only module that speaks SQL. [`Store`] is what the rest of linkwatch uses, over SQLite
//! (a file, the default) or PostgreSQL (several instances, one leader). The SQL is arranged by
//! what it keeps, one file per concern, each with both dialects side by side; [`sql`] is what
//! lets one body of code run on either. Schema migrations are per backend and applied at open;
//! queries are runtime-checked (`query`/`query_as` with `FromRow`), each a small method.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::config::Database;

mod checks;
pub mod copy;
mod deprecations;
mod error;
mod events;
mod fence;
mod gauges;
mod history;
mod lease;
mod live_migration;
mod lock;
mod open;
mod outbox;
mod page;
mod quiet;
mod reports;
mod retention;
mod roles;
mod silences;
mod sql;

pub use checks::{Applied, Check, CheckRecord, Decision, RemindersSent, Silenced, event_id};
pub use deprecations::{DeprecationRow, deprecation_event_id};
pub use error::{StoreError, Why, is_fenced, why};
pub use events::StoredEvent;
pub use fence::{Fence, Fenced, Term};
pub use gauges::{DbGauges, LiveMigrationGauge};
pub use history::{CurrentStatus, FailureRow, StatusChange};
pub use lease::{LeaseHolder, Postgres};
pub use live_migration::{
    LiveMigrationChange, LiveMigrationCheck, LiveMigrationDecision, LiveMigrationRow, live_migration_subject,
};
pub use lock::{LockError, WriterLock};
pub use outbox::{Claimed, Delivery, Pending};
pub use page::{ChannelDeliveries, FailedCheck, OrgRow, SyncedTime};
pub use quiet::{QUIET_WINDOW, QuietRow, Unmatched};
pub use reports::{REPORT_ORG_PREFIX, ReportRun, report_event_id};
pub use retention::Pruned;
pub use silences::{NewSilence, Silence, SilencedSpan};
pub use sql::DEADLINE;
use sql::{Db, Sql, Ts, Write, read};

#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    /// This database's random identity (`meta.instance`), part of every event id.
    instance: Arc<str>,
    /// Quiet checks noted in memory until the next group commit.
    quiet: quiet::SharedQuietLog,
    /// How long any one call may wait for the database ([`DEADLINE`]).
    deadline: Duration,
}

/// ISO-8601 UTC with milliseconds and a `Z`: sorts as text, readable by SQLite's date functions.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The most characters of an error kept in `last_error`: enough to read, never a whole body.
const ERROR_CHARS: usize = 1000;

/// An error as stored: through the gate for outside text, at most [`ERROR_CHARS`] characters.
/// Errors are made from receivers' answers, so this is the last place a NUL could still be
/// caught before PostgreSQL refuses the row (and with it the record of the attempt).
fn cap(text: &str) -> String {
    crate::outside::text(text, ERROR_CHARS)
}

const INSTANCE: Sql = Sql::both("SELECT value FROM meta WHERE key = 'instance'");

const PROBE: Sql = Sql::each(
    "INSERT INTO meta (key, value) VALUES ('health_probe', $1) ON CONFLICT (key) DO UPDATE SET value = $1",
    "INSERT INTO meta (key, value) VALUES ('health_probe', linkwatch_ts($1))
     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
);

impl Store {
    /// Opens and migrates the database: a SQLite file (created with its directory if missing)
    /// or a PostgreSQL database.
    pub async fn open(database: &Database) -> anyhow::Result<Store> {
        let db = match database {
            Database::Sqlite(path) => Db::Sqlite(open::sqlite(path).await?),
            Database::Postgres(target) => Db::Postgres(open::postgres(target).await?),
        };
        let store = Store {
            db,
            instance: "".into(),
            quiet: Default::default(),
            deadline: DEADLINE,
        };
        let instance: String = read!(store, |pool, D| Ok(INSTANCE
            .query_scalar::<D, String>()
            .fetch_one(pool)
            .await?))
        .await
        .with_context(|| format!("cannot read the identity of database {database}"))?;
        Ok(Store {
            instance: instance.into(),
            ..store
        })
    }

    /// This store with another deadline for each call (tests shorten it).
    pub fn with_deadline(self, deadline: Duration) -> Store {
        Store { deadline, ..self }
    }

    /// The PostgreSQL side, for leadership; `None` on SQLite (one process, the file lock).
    pub fn postgres(&self) -> Option<&Postgres> {
        match &self.db {
            Db::Postgres(pg) => Some(pg),
            Db::Sqlite(_) => None,
        }
    }

    /// Whether this instance may send now: on PostgreSQL only while it leads by its own clock
    /// (checked before each send, so that a deposed leader stops at once); on SQLite always
    /// (the file lock).
    pub fn may_send(&self) -> bool {
        self.postgres().is_none_or(|pg| pg.fence().leads())
    }

    /// A real write, for health checks: fails when the database cannot take writes (read-only
    /// file system, disk full, locked for longer than the busy timeout, server gone). Not
    /// fenced: a follower is healthy.
    pub async fn probe_write(&self) -> anyhow::Result<()> {
        let now = Ts(Utc::now());
        let write = self.write(Write::Unfenced, async |mut conn| {
            sql::on_conn!(conn.re(), |c, D| PROBE
                .query::<D>()
                .bind(now)
                .execute(c)
                .await?
                .rows_affected());
            Ok(sql::End::Commit(()))
        });
        // A health check must answer quickly; a write that waits this long is a problem too.
        match tokio::time::timeout(Duration::from_secs(2), write).await {
            Ok(result) => Ok(result?),
            Err(_) => anyhow::bail!("a write did not complete within 2s (database locked?)"),
        }
    }

    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pg) => {
                pg.pool.close().await;
                pg.lease.close().await;
            }
        }
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_stored_error_has_passed_the_gate() {
        assert_eq!(super::cap("HTTP 500: a\0b\u{1b}[2J"), "HTTP 500: ab[2J");
        assert_eq!(super::cap(&"x".repeat(5000)).chars().count(), super::ERROR_CHARS);
    }
}
