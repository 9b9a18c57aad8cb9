//! The check side of the store: a check's result, the state it leads to, its events and their
//! outbox rows, decided and written in one transaction that holds the org's row.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::events::{insert_org_event, silence_at};
use super::sql::{Conn, End, Sql, Ts, Write, count, on_conn, opt, read, time, uncount};
use super::{Store, StoreError};
use crate::config::OrgId;
use crate::detect::{Event, OrgState};
use crate::outcome::CheckOutcome;

/// One check's result, before anyone knows what it means.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    pub org_id: &'a OrgId,
    pub org_name: &'a str,
    pub at: DateTime<Utc>,
    pub outcome: &'a CheckOutcome,
    /// Whether a quiet check (nothing new, see [`detect::is_quiet`]) may take the one-statement
    /// path. Reminders need the full state, so routes with `remind_every` turn this off.
    ///
    /// [`detect::is_quiet`]: crate::detect::is_quiet
    pub quiet_path: bool,
    /// When the answer came, on the monotonic clock. A check that is older (by `at`) than the
    /// last one recorded, by no more than its answer has waited since, lost a race with another
    /// writer (`linkwatch once`) and is dropped, so that an older answer never undoes a newer one.
    /// Older by more, the wall clock stepped back since, and it counts.
    pub answered: tokio::time::Instant,
    /// A quiet check noted for the group commit, applied because the stored state changed under
    /// it. It carries no news when it is not newer than the last check recorded, and is dropped
    /// then (if the wall clock stepped back, the next check says the same through the full path).
    pub quiet_note: bool,
}

/// Some slack for the comparison of two processes' answers by wall-clock time.
const RACE_SLACK: std::time::Duration = std::time::Duration::from_secs(1);

/// What [`Store::apply`] did with a check.
#[derive(Debug, Clone)]
pub enum Applied {
    /// Nothing new: only the check's time was written.
    Quiet,
    /// Another writer recorded a newer check of the org meanwhile; this one was dropped.
    Superseded,
    Recorded(Decision),
}

/// What a check caused, decided from the stored state.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    pub state: OrgState,
    /// Each event with the channels it is routed to.
    pub events: Vec<(Event, Vec<String>)>,
    /// Routes (keys) whose reminder is among `events`: their clock restarts now.
    pub reminded: Vec<String>,
}

/// Whether a silence covers the org's link now: its events are held, and reminders pause.
pub type Silenced = bool;

/// When each route last reminded about one org, by route key.
pub type RemindersSent = [(String, DateTime<Utc>)];

/// One check with everything it changes, for [`Store::record_check`].
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

impl<'a> Check<'a> {
    /// This check with what `decision` says it caused, to write.
    pub(super) fn record(&self, decision: &'a Decision) -> CheckRecord<'a> {
        CheckRecord {
            org_id: self.org_id,
            org_name: self.org_name,
            at: self.at,
            outcome: self.outcome,
            state: &decision.state,
            events: &decision.events,
            reminded: &decision.reminded,
        }
    }
}

/// A row of `transitions`: a confirmed status, the one before it and how long that lasted.
pub(super) struct Transition<'e> {
    pub from: Option<&'e str>,
    pub to: &'e str,
    pub changed_at: DateTime<Utc>,
    pub previous_lasted_s: Option<i64>,
}

/// The transition `event` records, if it is one (the first status seen, or a change), written
/// at `at`.
pub(super) fn transition(event: &Event, at: DateTime<Utc>) -> Option<Transition<'_>> {
    match event {
        Event::FirstSeen { status } => Some(Transition {
            from: None,
            to: status,
            changed_at: at,
            previous_lasted_s: None,
        }),
        Event::StatusChanged {
            from,
            to,
            changed_at,
            from_lasted_s,
        } => Some(Transition {
            from: Some(from),
            to,
            changed_at: *changed_at,
            previous_lasted_s: Some(*from_lasted_s),
        }),
        // Everything else, the migrations' events included (they have their own history).
        _ => None,
    }
}

impl Store {
    /// Records `check`: reads the org's state, lets `decide` say what it means, and writes the new
    /// state, the events and their outbox rows, all in one immediate transaction. Two writers on
    /// one database (a daemon and `linkwatch once`) therefore never both act on the same old
    /// state: the second reads what the first wrote.
    pub async fn apply(
        &self,
        check: &Check<'_>,
        decide: impl FnOnce(&OrgState, &RemindersSent, Silenced) -> Decision,
    ) -> Result<Applied, StoreError> {
        if let Ok(status) = check.outcome
            && check.quiet_path
            && self
                .record_if_quiet(check.org_id, check.org_name, status, check.at)
                .await?
        {
            return Ok(Applied::Quiet);
        }
        let instance = &*self.instance;
        let decision = self
            .write(Write::Transaction, async |mut conn| {
                // The row is held from here to the commit (SQLite: the immediate transaction's
                // lock; PostgreSQL: FOR UPDATE), so it cannot change between reading it and
                // writing what follows from it.
                let (state, last_checked) = load_state(conn.re(), check.org_id, true).await?;
                if last_checked.is_some_and(|last| superseded(check, last)) {
                    return Ok(End::Rollback(Applied::Superseded));
                }
                let sent = reminders_sent(conn.re(), check.org_id).await?;
                let silenced = silence_at(conn.re(), check.org_id.as_str(), None, Ts(check.at))
                    .await?
                    .is_some();
                let decision = decide(&state, &sent, silenced);
                write_record(conn, instance, &check.record(&decision)).await?;
                Ok(End::Commit(Applied::Recorded(decision)))
            })
            .await?;
        if let Applied::Recorded(d) = &decision {
            self.quiet
                .written(check.org_id, check.org_name, quiet_status(check.outcome, &d.state));
        }
        Ok(decision)
    }

    /// Writes a check whose consequences are already decided, in one transaction (the benchmark
    /// harness and tests seed the database with it).
    pub async fn record_check(&self, rec: &CheckRecord<'_>) -> Result<(), StoreError> {
        let instance = &*self.instance;
        self.write(Write::Transaction, async |conn| {
            write_record(conn, instance, rec).await?;
            Ok(End::Commit(()))
        })
        .await?;
        self.quiet
            .written(rec.org_id, rec.org_name, quiet_status(rec.outcome, rec.state));
        Ok(())
    }

    pub async fn load_state(&self, org: &OrgId) -> Result<OrgState, StoreError> {
        read!(self, |pool, D| {
            let mut conn = pool.acquire().await?;
            let conn: Conn<'_> = (&mut *conn).into();
            Ok(load_state(conn, org, false).await?.0)
        })
        .await
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
    ) -> Result<bool, StoreError> {
        let updated = self
            .write(Write::Statement, async |conn| {
                let updated = on_conn!(conn, |c, D| RECORD_IF_QUIET
                    .query::<D>()
                    .bind(org.as_str())
                    .bind(org_name)
                    .bind(status)
                    .bind(Ts(at))
                    .execute(c)
                    .await?
                    .rows_affected());
                Ok(End::Commit(updated == 1))
            })
            .await?;
        if updated {
            self.quiet.written(org, org_name, Some(status));
        }
        Ok(updated)
    }
}

const RECORD_IF_QUIET: Sql = Sql::both(
    "UPDATE org_state SET org_name = $2, last_checked_at = $4, last_success_at = $4,
         last_error = NULL, checks = checks + 1
     WHERE org_id = $1 AND status = $3 AND candidate_status IS NULL
       AND consecutive_failures = 0 AND NOT failing_alerted",
);

/// An org's row as [`load_state`] reads it.
#[derive(sqlx::FromRow)]
struct StateRow {
    status: Option<String>,
    status_since: Option<Ts>,
    previous_status: Option<String>,
    broken_since: Option<Ts>,
    candidate_status: Option<String>,
    candidate_count: i64,
    candidate_since: Option<Ts>,
    consecutive_failures: i64,
    failing_since: Option<Ts>,
    failing_alerted: bool,
    last_checked_at: Ts,
}

macro_rules! load_state_sql {
    () => {
        "SELECT status, status_since, previous_status, broken_since, candidate_status,
                CAST(candidate_count AS bigint) AS candidate_count, candidate_since,
                CAST(consecutive_failures AS bigint) AS consecutive_failures, failing_since, failing_alerted,
                last_checked_at
         FROM org_state WHERE org_id = $1"
    };
}
const LOAD_STATE: Sql = Sql::both(load_state_sql!());
/// SQLite holds the row by its immediate transaction; PostgreSQL by `FOR UPDATE`.
const LOAD_STATE_LOCKED: Sql = Sql::each(load_state_sql!(), concat!(load_state_sql!(), " FOR UPDATE"));

/// The org's state, and when it was last checked (`None` for an org never checked); with
/// `lock`, the row stays held until the transaction ends.
async fn load_state(conn: Conn<'_>, org: &OrgId, lock: bool) -> anyhow::Result<(OrgState, Option<DateTime<Utc>>)> {
    let sql = if lock { LOAD_STATE_LOCKED } else { LOAD_STATE };
    let row: Option<StateRow> = on_conn!(conn, |c, D| sql
        .query_as::<D, StateRow>()
        .bind(org.as_str())
        .fetch_optional(c)
        .await?);
    let Some(r) = row else {
        return Ok((OrgState::default(), None));
    };
    let state = OrgState {
        status: r.status,
        status_since: time(r.status_since),
        previous_status: r.previous_status,
        broken_since: time(r.broken_since),
        candidate: r.candidate_status,
        candidate_count: r.candidate_count.try_into().unwrap_or(0),
        candidate_since: time(r.candidate_since),
        consecutive_failures: uncount(r.consecutive_failures),
        failing_since: time(r.failing_since),
        failing_alerted: r.failing_alerted,
    };
    Ok((state, Some(r.last_checked_at.0)))
}

const REMINDERS_SENT: Sql = Sql::both("SELECT route, last_sent_at FROM reminders WHERE org_id = $1");

async fn reminders_sent(conn: Conn<'_>, org: &OrgId) -> anyhow::Result<Vec<(String, DateTime<Utc>)>> {
    let rows: Vec<(String, Ts)> = on_conn!(conn, |c, D| REMINDERS_SENT
        .query_as::<D, (String, Ts)>()
        .bind(org.as_str())
        .fetch_all(c)
        .await?);
    Ok(rows.into_iter().map(|(route, at)| (route, at.0)).collect())
}

/// The org's row after a check: inserted, or updated in place. The org's event count moves
/// with its events, so the n-th event of an org is numbered n whether it is detected for the
/// first time or again after a lost commit.
const WRITE_ORG: Sql = Sql::both(
    "INSERT INTO org_state AS os (org_id, org_name, status, status_since, candidate_status,
         candidate_count, candidate_since, consecutive_failures, failing_since,
         failing_alerted, first_checked_at, last_checked_at, last_success_at, last_error, checks,
         previous_status, broken_since, event_count)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, 1, $14, $15, $16)
     ON CONFLICT (org_id) DO UPDATE SET
         org_name = $2, status = $3, status_since = $4, previous_status = $14, candidate_status = $5,
         candidate_count = $6, candidate_since = $7, consecutive_failures = $8,
         failing_since = $9, failing_alerted = $10, last_checked_at = $11,
         last_success_at = coalesce($12, os.last_success_at), last_error = $13,
         checks = os.checks + 1, broken_since = $15, event_count = os.event_count + $16
     RETURNING event_count",
);

const WRITE_REMINDER: Sql = Sql::both(
    "INSERT INTO reminders (org_id, route, last_sent_at) VALUES ($1, $2, $3)
     ON CONFLICT (org_id, route) DO UPDATE SET last_sent_at = $3",
);

const WRITE_FAILURE: Sql = Sql::both(
    "INSERT INTO check_failures (org_id, checked_at, class, http_status, error_code, detail)
     VALUES ($1, $2, $3, $4, $5, $6)",
);

const WRITE_TRANSITION: Sql = Sql::both(
    "INSERT INTO transitions (org_id, from_status, to_status, changed_at, previous_lasted_s)
     VALUES ($1, $2, $3, $4, $5)",
);

/// Writes `rec` inside the caller's transaction.
async fn write_record(mut conn: Conn<'_>, instance: &str, rec: &CheckRecord<'_>) -> anyhow::Result<()> {
    let at = Ts(rec.at);
    let event_count = write_org(conn.re(), rec).await?;

    for route in rec.reminded {
        on_conn!(conn.re(), |c, D| WRITE_REMINDER
            .query::<D>()
            .bind(rec.org_id.as_str())
            .bind(route)
            .bind(at)
            .execute(c)
            .await?
            .rows_affected());
    }

    if let Err(f) = rec.outcome {
        on_conn!(conn.re(), |c, D| WRITE_FAILURE
            .query::<D>()
            .bind(rec.org_id.as_str())
            .bind(at)
            .bind(f.class.as_str())
            .bind(f.http_status.map(i64::from))
            .bind(&f.error_code)
            .bind(&f.detail)
            .execute(c)
            .await?
            .rows_affected());
    }

    let first_number = event_count - rec.events.len() as i64 + 1;
    for (number, (event, channels)) in (first_number..).zip(rec.events) {
        if let Some(t) = transition(event, rec.at) {
            on_conn!(conn.re(), |c, D| WRITE_TRANSITION
                .query::<D>()
                .bind(rec.org_id.as_str())
                .bind(t.from)
                .bind(t.to)
                .bind(Ts(t.changed_at))
                .bind(t.previous_lasted_s)
                .execute(c)
                .await?
                .rows_affected());
        }
        let id = event_id(instance, rec.org_id.as_str(), number, event);
        insert_org_event(conn.re(), &id, rec.org_id.as_str(), event, at, channels).await?;
    }
    Ok(())
}

/// The org's row: its state after this check; returns its count of events, these included.
async fn write_org(mut conn: Conn<'_>, rec: &CheckRecord<'_>) -> anyhow::Result<i64> {
    let at = Ts(rec.at);
    let s = rec.state;
    let (success_at, last_error) = match rec.outcome {
        Ok(_) => (Some(at), None),
        Err(f) => (None, Some(f.explain())),
    };
    Ok(on_conn!(conn.re(), |c, D| WRITE_ORG
        .query_scalar::<D, i64>()
        .bind(rec.org_id.as_str())
        .bind(rec.org_name)
        .bind(&s.status)
        .bind(opt(s.status_since))
        .bind(&s.candidate)
        .bind(count(s.candidate_count))
        .bind(opt(s.candidate_since))
        .bind(count(s.consecutive_failures))
        .bind(opt(s.failing_since))
        .bind(s.failing_alerted)
        .bind(at)
        .bind(success_at)
        .bind(&last_error)
        .bind(&s.previous_status)
        .bind(opt(s.broken_since))
        .bind(rec.events.len() as i64)
        .fetch_one(c)
        .await?))
}

/// Whether `check` lost a race with the one recorded at `last` (see [`Check::answered`]).
fn superseded(check: &Check<'_>, last: DateTime<Utc>) -> bool {
    if check.quiet_note {
        return last >= check.at;
    }
    lost_race(check.at, check.answered, last)
}

/// Whether an answer stamped `at` (wall clock) that came at `answered` (monotonic) is older than
/// the one recorded at `last` by no more than it has waited since: another writer recorded a
/// newer answer meanwhile. Older by more, the wall clock stepped back, and it counts.
pub(super) fn lost_race(at: DateTime<Utc>, answered: tokio::time::Instant, last: DateTime<Utc>) -> bool {
    let waited = answered.elapsed().saturating_add(RACE_SLACK);
    last > at && (last - at).to_std().is_ok_and(|behind| behind <= waited)
}

/// The status that keeps `state` quiet after a check with `outcome`, if it is quiet.
fn quiet_status<'a>(outcome: &'a CheckOutcome, state: &OrgState) -> Option<&'a str> {
    outcome.as_deref().ok().filter(|s| crate::detect::is_quiet(state, s))
}

/// An event's id: the same for the same event of the same org in the same database, so that an
/// event re-detected after a power cut took back its commit reaches receivers under the id they
/// already deduplicate by; and different across databases (`instance` is random per database).
/// The kind and the status it reports are part of it, so that a *different* event taking the
/// rolled-back one's number (the link synced, the commit was lost, now checks fail) is not
/// dropped by receivers as a repeat. `subject` is the org's id for the link's events, and
/// [`live_migration_subject`](super::live_migration::live_migration_subject) for a migration's.
pub fn event_id(instance: &str, subject: &str, number: i64, event: &Event) -> String {
    let digest = Sha256::new()
        .chain_update(instance)
        .chain_update(b"/")
        .chain_update(subject)
        .chain_update(b"/")
        .chain_update(number.to_string())
        .chain_update(b"/")
        .chain_update(event.kind())
        .chain_update(b"/")
        .chain_update(event.status().unwrap_or(""))
        .finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("evt_{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_stable_per_org_number_and_event_and_differ_across_databases() {
        let org = OrgId::parse("5f0c00000000000000000a01").unwrap();
        let other = OrgId::parse("5f0c00000000000000000b02").unwrap();
        let synced = Event::FirstSeen {
            status: "SYNCED".into(),
        };
        let not_synced = Event::FirstSeen {
            status: "NOT_SYNCED".into(),
        };
        let recovered = Event::CheckRecovered {
            failures: 3,
            failed_for_s: 60,
        };
        let id = event_id("db1", org.as_str(), 7, &synced);
        assert_eq!(id, event_id("db1", org.as_str(), 7, &synced));
        assert_eq!(id.len(), "evt_".len() + 32);
        for different in [
            event_id("db1", org.as_str(), 8, &synced),
            event_id("db2", org.as_str(), 7, &synced),
            event_id("db1", other.as_str(), 7, &synced),
            event_id("db1", org.as_str(), 7, &not_synced),
            event_id("db1", org.as_str(), 7, &recovered),
        ] {
            assert_ne!(id, different);
        }
    }

    /// A database written by the previous version keeps its events' numbering and its broken
    /// links when it is upgraded.
    #[tokio::test]
    async fn upgrading_numbers_existing_events_and_finds_broken_links() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        let mut previous = sqlx::migrate!("migrations/sqlite");
        previous.migrations = std::borrow::Cow::Owned(previous.migrations[..3].to_vec());
        previous.run(&pool).await.unwrap();
        sqlx::raw_sql(
            "INSERT INTO org_state (org_id, org_name, status, status_since, previous_status, first_checked_at,
                 last_checked_at)
             VALUES ('5f0c00000000000000000a01', 'alpha', 'PENDING', '2026-11-03T00:00:00.000Z', 'NOT_SYNCED',
                     '2026-10-01T00:00:00.000Z', '2026-11-04T00:00:00.000Z');
             INSERT INTO transitions (org_id, from_status, to_status, changed_at) VALUES
                 ('5f0c00000000000000000a01', NULL, 'SYNCED', '2026-10-01T00:00:00.000Z'),
                 ('5f0c00000000000000000a01', 'SYNCED', 'NOT_SYNCED', '2026-11-01T00:00:00.000Z'),
                 ('5f0c00000000000000000a01', 'NOT_SYNCED', 'PENDING', '2026-11-03T00:00:00.000Z');
             INSERT INTO events (id, org_id, kind, created_at, payload) VALUES
                 ('evt_a', '5f0c00000000000000000a01', 'first_seen', '2026-10-01T00:00:00.000Z', '{}'),
                 ('evt_b', '5f0c00000000000000000a01', 'status_changed', '2026-11-01T00:00:00.000Z', '{}');",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;

        let store = Store::open(&crate::config::Database::Sqlite(path.clone()))
            .await
            .unwrap();
        let org = OrgId::parse("5f0c00000000000000000a01").unwrap();
        let state = store.load_state(&org).await.unwrap();
        assert_eq!(
            state.broken_since.map(crate::store::ts).as_deref(),
            Some("2026-11-01T00:00:00.000Z")
        );
        let crate::store::Db::Sqlite(pool) = &store.db else {
            unreachable!()
        };
        let count: i64 = sqlx::query_scalar("SELECT event_count FROM org_state")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(count, 2, "the next event of alpha is its third");
        store.close().await;
    }

    /// An answer that waited long for its record (a locked database) is still recognised as
    /// older than what another writer recorded meanwhile; an answer that is older only because
    /// the wall clock stepped back is not.
    #[tokio::test]
    async fn an_answer_that_waited_is_superseded_but_a_clock_step_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&crate::config::Database::Sqlite(dir.path().join("linkwatch.db")))
            .await
            .unwrap();
        let org = OrgId::parse("5f0c00000000000000000a01").unwrap();
        let t0: DateTime<Utc> = "2026-11-29T08:00:00Z".parse().unwrap();
        let record = |at: DateTime<Utc>, answered: tokio::time::Instant, status: &'static str| {
            let store = store.clone();
            let org = org.clone();
            async move {
                let outcome: CheckOutcome = Ok(status.to_owned());
                let check = Check {
                    org_id: &org,
                    org_name: "alpha",
                    at,
                    outcome: &outcome,
                    quiet_path: false,
                    answered,
                    quiet_note: false,
                };
                let applied = store
                    .apply(&check, |state, _, _| Decision {
                        state: OrgState {
                            status: Some(status.to_owned()),
                            ..state.clone()
                        },
                        ..Decision::default()
                    })
                    .await
                    .unwrap();
                matches!(applied, Applied::Recorded(_))
            }
        };
        let now = tokio::time::Instant::now();
        assert!(record(t0 + chrono::Duration::seconds(40), now, "SYNCED").await);
        // Answered 40 s before the other writer's record, and waited 45 s for the database.
        let long_ago = now.checked_sub(std::time::Duration::from_secs(45)).unwrap();
        assert!(!record(t0, long_ago, "NOT_SYNCED").await, "a stale answer was recorded");
        // Answered just now, but an hour "earlier": the wall clock stepped back.
        assert!(record(t0 - chrono::Duration::hours(1), now, "NOT_SYNCED").await);
        store.close().await;
    }
}
