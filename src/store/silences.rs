//! Silences: planned quiet for an org (with its live migrations) or one live migration. Added,
//! listed and ended from the command line beside a running daemon (unfenced: any instance or
//! shell may), honoured where events are written ([`silence_at`], inside the transaction of
//! what caused them), and concluded by the leader once they are over.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::checks::event_id;
use super::events::insert_org_event;
use super::sql::{End, Sql, Ts, Write, on_conn, read, rows, time};
use super::{Store, StoreError};
use crate::detect::Event;

/// A silence as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silence {
    pub id: i64,
    pub org_id: String,
    /// A `[[migration]]` name; `None`: the org and all its migrations.
    pub migration: Option<String>,
    pub migration_id: Option<String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// Ended early by `linkwatch silence end`.
    pub ended_at: Option<DateTime<Utc>>,
    pub created_by: String,
    pub reason: String,
    /// The link's (or the migration's) status when the silence began.
    pub status_at_start: Option<String>,
    pub concluded_at: Option<DateTime<Utc>>,
}

#[derive(FromRow)]
struct SilenceRow {
    id: i64,
    org_id: String,
    migration: Option<String>,
    migration_id: Option<String>,
    starts_at: Ts,
    ends_at: Ts,
    ended_at: Option<Ts>,
    created_by: String,
    reason: String,
    status_at_start: Option<String>,
    concluded_at: Option<Ts>,
}

impl From<SilenceRow> for Silence {
    fn from(r: SilenceRow) -> Silence {
        Silence {
            id: r.id,
            org_id: r.org_id,
            migration: r.migration,
            migration_id: r.migration_id,
            starts_at: r.starts_at.0,
            ends_at: r.ends_at.0,
            ended_at: time(r.ended_at),
            created_by: r.created_by,
            reason: r.reason,
            status_at_start: r.status_at_start,
            concluded_at: time(r.concluded_at),
        }
    }
}

fn silences(rows: Vec<SilenceRow>) -> Vec<Silence> {
    rows.into_iter().map(Silence::from).collect()
}

impl Silence {
    /// When it stops holding events back: its end, or the moment it was ended.
    pub fn until(&self) -> DateTime<Utc> {
        self.ended_at.map_or(self.ends_at, |e| e.min(self.ends_at))
    }

    /// Ended early, expired, or still running at `now`.
    pub fn state(&self, now: DateTime<Utc>) -> &'static str {
        if self.concluded_at.is_some() || self.until() <= now {
            if self.ended_at.is_some_and(|e| e < self.ends_at) {
                "ended"
            } else {
                "expired"
            }
        } else if self.starts_at > now {
            "scheduled"
        } else {
            "active"
        }
    }

    pub fn active_at(&self, now: DateTime<Utc>) -> bool {
        self.starts_at <= now && now < self.until()
    }
}

/// A silence to add.
#[derive(Debug, Clone)]
pub struct NewSilence<'a> {
    pub org_id: &'a str,
    pub migration: Option<&'a str>,
    /// The migration's `liveMigrationId`, which its status is read by.
    pub migration_id: Option<&'a str>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub created_by: &'a str,
    pub reason: &'a str,
}

/// What happened to a silenced org or migration while it was silenced, read when it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SilencedSpan {
    /// The status now (the org's link, or the migration's).
    pub status: Option<String>,
    /// The status changes in between: (from, to, when), oldest first.
    pub changes: Vec<(Option<String>, String, DateTime<Utc>)>,
    /// Events recorded and held back.
    pub held: i64,
}

const INSERT: Sql = Sql::each(
    "INSERT INTO silences (org_id, migration, migration_id, starts_at, ends_at, created_by, reason, status_at_start)
     VALUES ($1, $2, $7, $3, $4, $5, $6,
             CASE WHEN $7 IS NULL THEN (SELECT status FROM org_state WHERE org_id = $1)
                  ELSE (SELECT status FROM migration_state WHERE migration_id = $7) END)
     RETURNING id",
    "INSERT INTO silences (org_id, migration, migration_id, starts_at, ends_at, created_by, reason, status_at_start)
     VALUES ($1, $2, $7, $3, $4, $5, $6,
             CASE WHEN $7::text IS NULL THEN (SELECT status FROM org_state WHERE org_id = $1)
                  ELSE (SELECT status FROM migration_state WHERE migration_id = $7::text) END)
     RETURNING id",
);

const BY_ID: Sql = Sql::both(
    "SELECT id, org_id, migration, migration_id, starts_at, ends_at, ended_at, created_by, reason, status_at_start, concluded_at
     FROM silences WHERE id = $1",
);

/// Not yet over at `$1`, or over but not yet concluded: what `silence list` shows by default.
const OPEN: Sql = Sql::both(
    "SELECT id, org_id, migration, migration_id, starts_at, ends_at, ended_at, created_by, reason, status_at_start, concluded_at
     FROM silences WHERE concluded_at IS NULL OR (ended_at IS NULL AND ends_at > $1)
     ORDER BY id",
);

const ALL: Sql = Sql::both(
    "SELECT id, org_id, migration, migration_id, starts_at, ends_at, ended_at, created_by, reason, status_at_start, concluded_at
     FROM silences ORDER BY id",
);

const END: Sql = Sql::both("UPDATE silences SET ended_at = $2 WHERE id = $1 AND ended_at IS NULL AND ends_at > $2");

const DUE: Sql = Sql::both(
    "SELECT id, org_id, migration, migration_id, starts_at, ends_at, ended_at, created_by, reason, status_at_start, concluded_at
     FROM silences WHERE concluded_at IS NULL AND (ends_at <= $1 OR ended_at <= $1) ORDER BY id",
);

/// (from, to, when) of a status change.
type ChangeRow = (Option<String>, String, Ts);

const ORG_STATUS: Sql = Sql::both("SELECT status FROM org_state WHERE org_id = $1");
const MIGRATION_STATUS: Sql = Sql::both("SELECT status FROM migration_state WHERE migration_id = $1");
const ORG_CHANGES: Sql = Sql::both(
    "SELECT from_status, to_status, changed_at FROM transitions
     WHERE org_id = $1 AND changed_at >= $2 AND changed_at < $3 ORDER BY changed_at, id",
);
const MIGRATION_CHANGES: Sql = Sql::both(
    "SELECT from_status, to_status, changed_at FROM migration_transitions
     WHERE migration_id = $1 AND changed_at >= $2 AND changed_at < $3 ORDER BY changed_at, id",
);
const HELD: Sql = Sql::both("SELECT count(DISTINCT event_seq) FROM silenced_deliveries WHERE silence_id = $1");
const CONCLUDE: Sql = Sql::both("UPDATE silences SET concluded_at = $2 WHERE id = $1 AND concluded_at IS NULL");

impl Store {
    /// Adds a silence, noting the status it begins with; its id.
    pub async fn add_silence(&self, s: &NewSilence<'_>) -> Result<i64, StoreError> {
        self.write(Write::Unfenced, async |conn| {
            let id: i64 = on_conn!(conn, |c, D| INSERT
                .query_scalar::<D, i64>()
                .bind(s.org_id)
                .bind(s.migration)
                .bind(Ts(s.starts_at))
                .bind(Ts(s.ends_at))
                .bind(s.created_by)
                .bind(s.reason)
                .bind(s.migration_id)
                .fetch_one(c)
                .await?);
            Ok(End::Commit(id))
        })
        .await
    }

    pub async fn silence(&self, id: i64) -> Result<Option<Silence>, StoreError> {
        let row = read!(self, |pool, D| Ok(BY_ID
            .query_as::<D, SilenceRow>()
            .bind(id)
            .fetch_optional(pool)
            .await?))
        .await?;
        Ok(row.map(Silence::from))
    }

    /// Silences not over at `now` or not yet concluded; with `all`, every one ever added.
    pub async fn silences(&self, now: DateTime<Utc>, all: bool) -> Result<Vec<Silence>, StoreError> {
        let rows = if all {
            rows!(self, ALL, SilenceRow).await?
        } else {
            rows!(self, OPEN, SilenceRow, Ts(now)).await?
        };
        Ok(silences(rows))
    }

    /// The silences holding events back at `now`.
    pub async fn active_silences(&self, now: DateTime<Utc>) -> Result<Vec<Silence>, StoreError> {
        let open = self.silences(now, false).await?;
        Ok(open.into_iter().filter(|s| s.active_at(now)).collect())
    }

    /// Ends silence `id` at `now`; `false` when it was already over (or never was).
    pub async fn end_silence(&self, id: i64, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let ended = self
            .write(Write::Unfenced, async |conn| {
                let n = on_conn!(conn, |c, D| END
                    .query::<D>()
                    .bind(id)
                    .bind(Ts(now))
                    .execute(c)
                    .await?
                    .rows_affected());
                Ok(End::Commit(n))
            })
            .await?;
        Ok(ended == 1)
    }

    /// Silences over at `now` and not yet concluded.
    pub async fn silences_due(&self, now: DateTime<Utc>) -> Result<Vec<Silence>, StoreError> {
        Ok(silences(rows!(self, DUE, SilenceRow, Ts(now)).await?))
    }

    /// What became of the org (or migration) of `s` while it was silenced.
    pub async fn silenced_span(&self, s: &Silence) -> Result<SilencedSpan, StoreError> {
        let (from, to) = (Ts(s.starts_at), Ts(s.until()));
        read!(self, |pool, D| {
            let (status, changes): (Option<Option<String>>, Vec<ChangeRow>) = match &s.migration_id {
                None => (
                    ORG_STATUS
                        .query_scalar::<D, Option<String>>()
                        .bind(&s.org_id)
                        .fetch_optional(pool)
                        .await?,
                    ORG_CHANGES
                        .query_as::<D, _>()
                        .bind(&s.org_id)
                        .bind(from)
                        .bind(to)
                        .fetch_all(pool)
                        .await?,
                ),
                Some(m) => (
                    MIGRATION_STATUS
                        .query_scalar::<D, Option<String>>()
                        .bind(m)
                        .fetch_optional(pool)
                        .await?,
                    MIGRATION_CHANGES
                        .query_as::<D, _>()
                        .bind(m)
                        .bind(from)
                        .bind(to)
                        .fetch_all(pool)
                        .await?,
                ),
            };
            let held: i64 = HELD.query_scalar::<D, i64>().bind(s.id).fetch_one(pool).await?;
            Ok(SilencedSpan {
                status: status.flatten(),
                changes: changes.into_iter().map(|(f, t, at)| (f, t, at.0)).collect(),
                held,
            })
        })
        .await
    }

    /// Marks silence `s` concluded at `now`, with the event that says how it ended and the
    /// channels it goes to, if any: one fenced transaction, so that only the leader says it,
    /// and says it once.
    pub async fn conclude_silence(
        &self,
        s: &Silence,
        now: DateTime<Utc>,
        event: Option<(&Event, &[String])>,
    ) -> Result<bool, StoreError> {
        let id = s.id;
        let instance = &*self.instance;
        self.write(Write::Transaction, async |mut conn| {
            let n = on_conn!(conn.re(), |c, D| CONCLUDE
                .query::<D>()
                .bind(id)
                .bind(Ts(now))
                .execute(c)
                .await?
                .rows_affected());
            if n == 0 {
                // Another instance concluded it first.
                return Ok(End::Rollback(false));
            }
            if let Some((e, channels)) = event {
                let event_id = event_id(instance, &format!("silence/{id}"), 0, e);
                insert_org_event(conn, &event_id, &s.org_id, e, Ts(now), channels).await?;
            }
            Ok(End::Commit(true))
        })
        .await
    }
}
