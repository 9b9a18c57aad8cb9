//! The only module that speaks SQL. [`Store`] is what the rest of linkwatch uses; behind it one
//! [`Backend`] per database: SQLite (a file, the default) or PostgreSQL (several instances, one
//! leader). Schema migrations are per backend and applied at open; queries are runtime-checked
//! (`query`/`query_as` with `FromRow`), each a small method.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::FromRow;

use crate::config::{Database, OrgId};

mod backend;
mod checks;
mod gauges;
mod live_migration;
mod lock;
mod outbox;
mod page;
pub mod postgres;
mod quiet;
mod roles;
mod sqlite;

pub(crate) use backend::Backend;
pub use backend::{FailureRow, Pruned, QuietRow};
use checks::transition;
pub use checks::{Applied, Check, CheckRecord, Decision, RemindersSent, event_id};
pub use gauges::{DbGauges, LiveMigrationGauge};
pub use live_migration::{
    LiveMigrationChange, LiveMigrationCheck, LiveMigrationDecision, LiveMigrationRow, live_migration_subject,
};
pub use lock::{LockError, WriterLock};
pub use outbox::{Claimed, Delivery, Pending};
pub use page::{ChannelDeliveries, FailedCheck, OrgRow};
pub use postgres::{Fence, Fenced, LeaseHolder, Postgres, Term};
pub use quiet::{QUIET_WINDOW, Unmatched};

#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    /// This database's random identity (`meta.instance`), part of every event id.
    instance: Arc<str>,
    /// Quiet checks noted in memory until the next group commit.
    quiet: quiet::SharedQuietLog,
}

#[derive(Clone, Debug)]
enum Db {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// Calls the same [`Backend`] method on whichever database this is.
macro_rules! on_db {
    ($store:expr, $db:ident => $call:expr) => {
        match &$store.db {
            $crate::store::Db::Sqlite($db) => $call,
            $crate::store::Db::Postgres($db) => $call,
        }
    };
}
use on_db;

/// ISO-8601 UTC with milliseconds and a `Z`: sorts as text, readable by SQLite's date functions.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_ts(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// The most characters of an error kept in `last_error`: enough to read, never a whole body.
const ERROR_CHARS: usize = 1000;

/// An error as stored: through the gate for outside text, at most [`ERROR_CHARS`] characters.
/// Errors are made from receivers' answers, so this is the last place a NUL could still be
/// caught before PostgreSQL refuses the row (and with it the record of the attempt).
fn cap(text: &str) -> String {
    crate::outside::text(text, ERROR_CHARS)
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

/// One slot of a scheduled report, as [`Store::enqueue_report`] writes it.
#[derive(Debug)]
pub struct ReportRun<'a> {
    pub report: &'a str,
    pub slot: DateTime<Utc>,
    pub late: bool,
    pub at: DateTime<Utc>,
    pub event_id: &'a str,
    pub payload: &'a str,
    pub channels: &'a [String],
}

impl ReportRun<'_> {
    /// The `events.org_id` of a report: reports belong to no org, and each report's slots are
    /// delivered in order among themselves, apart from every org's events.
    pub fn org_id(&self) -> String {
        format!("{REPORT_ORG_PREFIX}{}", self.report)
    }
}

/// What `events.org_id` starts with for a report's event.
pub const REPORT_ORG_PREFIX: &str = "report:";

/// The first `org_id` past every report's (the prefix's `:` stepped to `;`): with the prefix, a
/// range that the `(org_id, created_at)` index answers, for retention's delete of reports.
pub(super) const REPORT_ORG_END: &str = "report;";

/// A report slot's event id: the same for the same database, report and slot, so a receiver
/// can drop a repeat (the one duplicate a crash between send and mark can cause).
pub fn report_event_id(instance: &str, report: &str, slot: DateTime<Utc>) -> String {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::new()
        .chain_update(instance)
        .chain_update(b"/report/")
        .chain_update(report)
        .chain_update(b"/")
        .chain_update(ts(slot))
        .finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("rpt_{hex}")
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
    /// Opens and migrates the database: a SQLite file (created with its directory if missing)
    /// or a PostgreSQL database.
    pub async fn open(database: &Database) -> anyhow::Result<Store> {
        let db = match database {
            Database::Sqlite(path) => Db::Sqlite(sqlite::Sqlite::open(path).await?),
            Database::Postgres(target) => Db::Postgres(postgres::Postgres::open(target).await?),
        };
        let store = Store {
            db,
            instance: "".into(),
            quiet: Default::default(),
        };
        let instance = on_db!(store, db => db.instance().await)
            .with_context(|| format!("cannot read the identity of database {database}"))?;
        Ok(Store {
            instance: instance.into(),
            ..store
        })
    }

    /// The PostgreSQL side, for leadership; `None` on SQLite (one process, the file lock).
    pub fn postgres(&self) -> Option<&postgres::Postgres> {
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
    /// file system, disk full, locked for longer than the busy timeout, server gone).
    pub async fn probe_write(&self) -> anyhow::Result<()> {
        let write = async { on_db!(self, db => db.probe_write().await) };
        // A health check must answer quickly; a write that waits this long is a problem too.
        match tokio::time::timeout(Duration::from_secs(2), write).await {
            Ok(result) => result,
            Err(_) => anyhow::bail!("a write did not complete within 2s (database locked?)"),
        }
    }

    /// Deletes failed-check rows, and sent or failed deliveries, older than `before`; status
    /// changes and events stay. Returns (failed checks, deliveries) deleted.
    /// Records the slot of a scheduled report and enqueues its delivery to its channels, in one
    /// transaction (fenced on PostgreSQL): `Some(event id)` when this call enqueued it, `None`
    /// when the slot was already recorded (a restart, or another writer got there first).
    pub async fn enqueue_report(
        &self,
        report: &str,
        slot: DateTime<Utc>,
        late: bool,
        at: DateTime<Utc>,
        payload: &str,
        channels: &[String],
    ) -> anyhow::Result<Option<String>> {
        let event_id = report_event_id(&self.instance, report, slot);
        let run = ReportRun {
            report,
            slot,
            late,
            at,
            event_id: &event_id,
            payload,
            channels,
        };
        let enqueued = on_db!(self, db => db.enqueue_report(&run).await)?;
        Ok(enqueued.then_some(event_id))
    }

    /// The latest slot recorded for `report`: none for a report that never ran.
    pub async fn last_report_slot(&self, report: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        on_db!(self, db => db.last_report_slot(report).await)
    }

    /// Deletes what retention lets go of, older than `before`: failed checks, finished
    /// deliveries, and the events of scheduled reports that have no delivery left.
    pub async fn prune(&self, before: DateTime<Utc>) -> anyhow::Result<Pruned> {
        on_db!(self, db => db.prune(before).await)
    }

    /// The gauges `/metrics` reads from the database.
    pub async fn gauges(&self) -> anyhow::Result<DbGauges> {
        on_db!(self, db => db.gauges().await)
    }

    pub async fn close(&self) {
        on_db!(self, db => db.close().await)
    }

    /// Status changes, oldest first. `org` matches an id or a name.
    pub async fn history(&self, org: Option<&str>, since: Option<DateTime<Utc>>) -> anyhow::Result<Vec<StatusChange>> {
        on_db!(self, db => db.history(org, since).await)
    }

    pub async fn current(&self) -> anyhow::Result<Vec<CurrentStatus>> {
        on_db!(self, db => db.current().await)
    }

    /// Events, oldest first, optionally for one org (id).
    pub async fn events(&self, org: Option<&OrgId>) -> anyhow::Result<Vec<StoredEvent>> {
        on_db!(self, db => db.events(org).await)
    }

    /// Failed-check rows for one org, oldest first: (class, http_status, error_code, detail).
    pub async fn failures(&self, org: &OrgId) -> anyhow::Result<Vec<FailureRow>> {
        on_db!(self, db => db.failures(org).await)
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
