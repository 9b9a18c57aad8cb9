//! Group commit for quiet checks. Most checks see what was already known: the stored state is
//! quiet (see [`detect::is_quiet`]) and the answer is its status, so the check changes nothing
//! but `last_checked_at`. Writing each of those as its own statement costs a round trip to
//! SQLite's worker thread per check, which dominated the CPU profile. Instead, a check whose org
//! is *known* to be quiet with that status is noted in memory, and [`Store::flush_quiet`] writes
//! all of them in one statement, once per [`QUIET_WINDOW`].
//!
//! What a crash loses: the `last_checked_at` of at most one window of quiet checks. Never a
//! state, an event or a delivery: a check that could change anything takes the immediate path.
//!
//! "Known quiet" is this process's memory of what it last wrote. Another writer on the same
//! database (`linkwatch once`) can change the state meanwhile; the flush's `UPDATE` therefore
//! keeps the quiet conditions, and hands back the checks it did not match, for the caller to
//! apply through the full path (a delay of one window, never a missed event).
//!
//! [`detect::is_quiet`]: crate::detect::is_quiet

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::sql::{Conn, End, Ts, Write};
use super::{Store, StoreError, ts};
use crate::config::{OrgId, OrgIdHasher};

/// How long a quiet check may wait in memory before it is written: the most that
/// `current_status.last_checked_at` lags behind, and the most a crash loses of it.
pub const QUIET_WINDOW: Duration = Duration::from_secs(1);

/// A quiet check for the group commit: the org, the status it is quiet with, the last check's
/// time and how many checks.
#[derive(Debug, Clone)]
pub struct QuietRow {
    pub org_id: OrgId,
    pub status: Arc<str>,
    pub at: DateTime<Utc>,
    pub checks: u32,
}

#[derive(Debug, Default)]
pub(super) struct QuietLog(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// Orgs whose stored state this process last left quiet: (status, org name).
    /// The status is shared among the orgs that have it and the name kept as a fingerprint: at
    /// 10,000 orgs two strings per org were a megabyte.
    known: HashMap<OrgId, (Arc<str>, u64), OrgIdHasher>,
    /// The distinct statuses seen (a handful), shared by `known`.
    statuses: Vec<Arc<str>>,
    /// Quiet checks not yet written, per org: the last one's time (wall clock, and when its
    /// answer came on the monotonic clock) and how many checks.
    pending: HashMap<OrgId, Note, OrgIdHasher>,
}

#[derive(Debug, Clone, Copy)]
struct Note {
    at: DateTime<Utc>,
    answered: Instant,
    checks: u32,
}

impl Note {
    /// Adds `other`, a note of the same org: the later check's times, both counts.
    fn merge(&mut self, other: Note) {
        if other.at > self.at {
            (self.at, self.answered) = (other.at, other.answered);
        }
        self.checks = self.checks.saturating_add(other.checks);
    }
}

/// A quiet check the flush could not match: the stored state changed under it (another
/// writer), or the stored check is newer. Apply it through the full path, which drops it when
/// it is not newer than what is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Unmatched {
    pub org_id: OrgId,
    pub status: String,
    pub at: DateTime<Utc>,
    pub answered: Instant,
}

impl Inner {
    /// `status` as a shared string, allocated once per distinct status (a bound keeps a server
    /// that invents statuses from growing the list).
    fn intern(&mut self, status: &str) -> Arc<str> {
        if let Some(s) = self.statuses.iter().find(|s| &***s == status) {
            return s.clone();
        }
        let s: Arc<str> = status.into();
        if self.statuses.len() < 64 {
            self.statuses.push(s.clone());
        }
        s
    }
}

/// An org name's fingerprint: the name only has to be recognised as unchanged.
fn fingerprint(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

impl QuietLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers what was just written for `org`: quiet with `status`, or (None) anything else.
    pub(super) fn written(&self, org: &OrgId, name: &str, quiet_status: Option<&str>) {
        let mut inner = self.lock();
        match quiet_status {
            Some(status) => {
                let status = inner.intern(status);
                inner.known.insert(org.clone(), (status, fingerprint(name)));
            }
            None => {
                inner.known.remove(org);
                // A full-path write carries a later check time than any quiet one pending.
                inner.pending.remove(org);
            }
        }
    }
}

impl Store {
    /// Forgets which orgs are known quiet (and drops unwritten notes): another instance may have
    /// written since this process last did.
    pub fn forget_quiet(&self) {
        let mut inner = self.quiet.lock();
        inner.known.clear();
        inner.pending.clear();
    }

    /// Notes a quiet check in memory when `org` is known to be quiet with `status` (and its name
    /// is unchanged); returns `false` otherwise, and the caller takes the immediate path.
    pub fn record_quiet_later(
        &self,
        org: &OrgId,
        name: &str,
        status: &str,
        at: DateTime<Utc>,
        answered: Instant,
    ) -> bool {
        let mut inner = self.quiet.lock();
        let known = inner
            .known
            .get(org)
            .is_some_and(|(s, n)| &**s == status && *n == fingerprint(name));
        if known {
            let note = Note {
                at,
                answered,
                checks: 1,
            };
            // Looked up before inserting: the id is cloned once per window, not per check.
            match inner.pending.get_mut(org) {
                Some(pending) => pending.merge(note),
                None => {
                    inner.pending.insert(org.clone(), note);
                }
            }
        }
        known
    }

    /// Writes the quiet checks noted since the last flush, in one statement. Returns the ones
    /// whose stored state was no longer quiet with their status. On an error nothing is lost:
    /// the checks stay noted for the next flush.
    pub async fn flush_quiet(&self) -> Result<Vec<Unmatched>, StoreError> {
        let (rows, answered) = self.quiet.take_pending();
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let flush = self.write(Write::Transaction, async |conn| {
            Ok(End::Commit(match conn {
                Conn::Sqlite(c) => flush_sqlite(c, &rows).await?,
                Conn::Postgres(c) => flush_postgres(c, &rows).await?,
            }))
        });
        let written = match flush.await {
            Ok(written) => written,
            Err(e) => {
                // Put them back (a newer note of the same org wins) and try again next time.
                self.quiet.put_back(rows, answered);
                return Err(e);
            }
        };
        Ok(self.quiet.unmatched(rows, answered, &written))
    }
}

impl QuietLog {
    /// The rows to write, and beside each when its last answer came (for what is unmatched).
    fn take_pending(&self) -> (Vec<QuietRow>, Vec<Instant>) {
        let mut inner = self.lock();
        let pending = std::mem::take(&mut inner.pending);
        pending
            .into_iter()
            .filter_map(|(org, note)| {
                let status = inner.known.get(&org)?.0.clone();
                let row = QuietRow {
                    org_id: org,
                    status,
                    at: note.at,
                    checks: note.checks,
                };
                Some((row, note.answered))
            })
            .unzip()
    }

    /// Notes again the rows a flush could not write.
    fn put_back(&self, rows: Vec<QuietRow>, answered: Vec<Instant>) {
        let mut inner = self.lock();
        for (row, answered) in rows.into_iter().zip(answered) {
            let note = Note {
                at: row.at,
                answered,
                checks: row.checks,
            };
            match inner.pending.get_mut(&row.org_id) {
                Some(pending) => pending.merge(note),
                None => {
                    inner.pending.insert(row.org_id, note);
                }
            }
        }
    }

    /// The rows the flush did not write (of the orgs not in `written`), each org no longer
    /// known quiet.
    fn unmatched(&self, rows: Vec<QuietRow>, answered: Vec<Instant>, written: &[String]) -> Vec<Unmatched> {
        let written: std::collections::HashSet<&str> = written.iter().map(String::as_str).collect();
        let mut unmatched = Vec::new();
        let mut inner = self.lock();
        for (row, answered) in rows.into_iter().zip(answered) {
            if !written.contains(row.org_id.as_str()) {
                inner.known.remove(&row.org_id);
                unmatched.push(Unmatched {
                    org_id: row.org_id,
                    status: row.status.to_string(),
                    at: row.at,
                    answered,
                });
            }
        }
        unmatched
    }
}

/// Quiet checks written per statement on SQLite: 4 parameters each, far below SQLite's limit
/// of 32,766, and few statements per window even at 10,000 orgs.
const QUIET_CHUNK: usize = 64;

/// The group commit's statement on SQLite for [`QUIET_CHUNK`] rows, bound as values rather than
/// packed in JSON: unpacking JSON in SQL cost more than the rest of the flush together.
fn quiet_update_sqlite() -> &'static str {
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

/// The group commit's statement on PostgreSQL: the batch is one JSON parameter. `org_id =
/// ANY($2)` lets the primary key find the rows whatever the planner believes of the table:
/// before the first ANALYZE it estimated the quiet conditions to match one row and joined every
/// row of org_state against the batch, a third of a core at 10,000 orgs.
const QUIET_UPDATE_POSTGRES: &str = "UPDATE org_state AS os SET last_checked_at = q.t, last_success_at = q.t,
         last_error = NULL, checks = os.checks + q.n
     FROM jsonb_to_recordset($1::jsonb) AS q(o text, s text, t timestamptz, n bigint)
     WHERE os.org_id = ANY($2) AND os.org_id = q.o AND os.status = q.s
       AND os.candidate_status IS NULL AND os.consecutive_failures = 0
       AND NOT os.failing_alerted AND os.last_checked_at < q.t
     RETURNING os.org_id";

/// The group commit on SQLite: one statement per [`QUIET_CHUNK`] rows, each applied only when
/// the stored state is still quiet with its status and its stored check is older. Returns the
/// org ids written.
async fn flush_sqlite(conn: &mut sqlx::SqliteConnection, rows: &[QuietRow]) -> anyhow::Result<Vec<String>> {
    let mut written = Vec::with_capacity(rows.len());
    for rows in rows.chunks(QUIET_CHUNK) {
        let mut query = sqlx::query_scalar(quiet_update_sqlite());
        for row in rows {
            query = query
                .bind(row.org_id.as_str())
                .bind(&*row.status)
                .bind(Ts(row.at))
                .bind(i64::from(row.checks));
        }
        // A short last chunk is padded with rows of NULLs, which match no org: one statement
        // text, prepared once, whatever the batch's size.
        for _ in rows.len()..QUIET_CHUNK {
            query = query
                .bind(None::<&str>)
                .bind(None::<&str>)
                .bind(None::<&str>)
                .bind(None::<i64>);
        }
        written.extend(query.fetch_all(&mut *conn).await?);
    }
    Ok(written)
}

/// The group commit on PostgreSQL: one statement for all `rows`, with the same conditions.
async fn flush_postgres(conn: &mut sqlx::PgConnection, rows: &[QuietRow]) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(QUIET_UPDATE_POSTGRES)
        .bind(batch_json(rows)?)
        .bind(rows.iter().map(|r| r.org_id.as_str()).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?)
}

/// The group commit's rows as one JSON array, `[{"o": org, "s": status, "t": time, "n": checks}]`,
/// for `jsonb_to_recordset` to unpack (one parameter, whatever the batch's size).
fn batch_json(rows: &[QuietRow]) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let mut json = String::with_capacity(rows.len() * 110);
    json.push('[');
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let status = serde_json::to_string(&*row.status)?;
        let (org, t, n) = (&row.org_id, ts(row.at), row.checks);
        let _ = write!(json, r#"{{"o":"{org}","s":{status},"t":"{t}","n":{n}}}"#);
    }
    json.push(']');
    Ok(json)
}

/// Shared by every clone of a `Store`.
pub(super) type SharedQuietLog = Arc<QuietLog>;
