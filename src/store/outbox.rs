//! The outbox side of the store: what is pending, who sends it, and what became of each attempt.
//! (Which channels are blocked is the dispatcher's to say: the hold counts from a failure it saw.)

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::lease::secs;
use super::sql::{Conn, Dialect, End, List, Sql, Ts, Write, on_conn, opt, read, rows, time};
use super::{Store, StoreError, StoredEvent, cap};

/// Added to a send's timeout for a claim's hold.
const CLAIM_MARGIN: Duration = Duration::from_secs(30);

/// A pending outbox row, without its event: what the dispatcher needs to choose what goes next.
#[derive(Debug, Clone, FromRow)]
pub struct Pending {
    pub outbox_id: i64,
    pub org_id: String,
    pub attempts: i64,
    pub next_attempt_at: String,
    pub created_at: String,
    /// Shown by `/healthz` when the row blocks its channel.
    pub last_error: Option<String>,
}

/// An outbox row about to be sent, with its event.
#[derive(Debug, Clone, FromRow)]
pub struct Delivery {
    pub outbox_id: i64,
    pub attempts: i64,
    pub next_attempt_at: String,
    #[sqlx(flatten)]
    pub event: StoredEvent,
}

/// Rows claimed for one send: only the holder of `token` records their outcome.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub token: String,
    pub ids: Vec<i64>,
    /// When the claim may run out, on the monotonic clock: counted from before it was asked
    /// for, so never later than the database's expiry. A send must be over by then, or another
    /// instance may take the rows and send them too.
    pub until: tokio::time::Instant,
}

/// The columns of [`Pending`], after `FROM outbox AS x JOIN events AS e`.
macro_rules! pending_columns {
    (sqlite) => {
        "SELECT x.id AS outbox_id, e.org_id, x.attempts, x.next_attempt_at, x.created_at, x.last_error
         FROM outbox AS x
         JOIN events AS e ON e.seq = x.event_seq"
    };
    (postgres) => {
        "SELECT x.id AS outbox_id, e.org_id, x.attempts::bigint AS attempts,
                linkwatch_ts(x.next_attempt_at) AS next_attempt_at,
                linkwatch_ts(x.created_at) AS created_at, x.last_error
         FROM outbox AS x
         JOIN events AS e ON e.seq = x.event_seq"
    };
}

/// The skipped orgs are one parameter: SQLite builds the set from a JSON array once per
/// statement; PostgreSQL anti-joins an array, in a statement prepared afresh each time so that
/// it is planned for the array at hand and hashes it (a cached statement may switch to a
/// generic plan after five runs, which guesses ten skipped orgs and compares every row with
/// each of them: 0.1 s instead of 4 ms for 1,500 skipped orgs among 20,000 pending rows).
const PENDING: Sql = Sql::each(
    concat!(
        pending_columns!(sqlite),
        " WHERE x.channel = $1 AND x.state = 'pending'
           AND e.org_id NOT IN (SELECT value FROM json_each($3))
         ORDER BY x.event_seq LIMIT $2"
    ),
    concat!(
        pending_columns!(postgres),
        " WHERE x.channel = $1 AND x.state = 'pending'
           AND NOT EXISTS (SELECT FROM unnest($3::text[]) AS w(org_id) WHERE w.org_id = e.org_id)
         ORDER BY x.event_seq LIMIT $2"
    ),
);

/// Outbox ids are one parameter: a JSON array on SQLite, an array on PostgreSQL.
macro_rules! ids_in {
    (sqlite) => {
        "x.id IN (SELECT value FROM json_each($1))"
    };
    (postgres) => {
        "x.id = ANY($1)"
    };
}

const PENDING_OF: Sql = Sql::each(
    concat!(
        pending_columns!(sqlite),
        " WHERE ",
        ids_in!(sqlite),
        " AND x.state = 'pending' ORDER BY x.event_seq"
    ),
    concat!(
        pending_columns!(postgres),
        " WHERE ",
        ids_in!(postgres),
        " AND x.state = 'pending' ORDER BY x.event_seq"
    ),
);

const DELIVERIES: Sql = Sql::each(
    concat!(
        "SELECT x.id AS outbox_id, x.attempts, x.next_attempt_at, e.id, e.org_id, o.org_name, e.kind,
                e.created_at, e.payload
         FROM outbox AS x
         JOIN events AS e ON e.seq = x.event_seq
         LEFT JOIN org_state AS o ON o.org_id = e.org_id
         WHERE ",
        ids_in!(sqlite),
        " AND x.state = 'pending' ORDER BY x.event_seq"
    ),
    concat!(
        "SELECT x.id AS outbox_id, x.attempts::bigint AS attempts,
                linkwatch_ts(x.next_attempt_at) AS next_attempt_at, e.id, e.org_id, o.org_name,
                e.kind, linkwatch_ts(e.created_at) AS created_at, e.payload::text AS payload
         FROM outbox AS x
         JOIN events AS e ON e.seq = x.event_seq
         LEFT JOIN org_state AS o ON o.org_id = e.org_id
         WHERE ",
        ids_in!(postgres),
        " AND x.state = 'pending' ORDER BY x.event_seq"
    ),
);

/// PostgreSQL only (on SQLite one process sends): SKIP LOCKED, so that a row another instance
/// is claiming right now is simply not ours; this instance's own earlier claims (same holder
/// and epoch) do not keep it out.
const CLAIM: &str = "UPDATE outbox SET claim_token = $2, claimed_by = $3,
         claim_expires_at = now() + make_interval(secs => $4)
     WHERE id IN (SELECT id FROM outbox
                  WHERE id = ANY($1) AND state = 'pending'
                    AND (claim_expires_at IS NULL OR claim_expires_at <= now() OR claimed_by = $3)
                  FOR UPDATE SKIP LOCKED)
     RETURNING id";

const NEXT_DUE: Sql =
    Sql::both("SELECT next_attempt_at FROM outbox WHERE channel = $1 AND state = 'pending' ORDER BY event_seq LIMIT 1");

/// Marked under the claim on PostgreSQL (`$4`); on SQLite every row is this process's.
const MARK_SENT: Sql = Sql::each(
    "UPDATE outbox SET state = 'sent', attempts = attempts + 1, sent_at = $1, last_error = $2
     WHERE id IN (SELECT value FROM json_each($3)) AND state = 'pending'",
    "UPDATE outbox SET state = 'sent', attempts = attempts + 1, sent_at = $1, last_error = $2,
         claim_expires_at = NULL
     WHERE id = ANY($3) AND state = 'pending' AND claim_token = $4",
);

const MARK_FAILED: Sql = Sql::each(
    "UPDATE outbox SET attempts = attempts + 1, last_error = $1,
         state = CASE WHEN $2 IS NULL THEN 'failed' ELSE 'pending' END,
         next_attempt_at = coalesce($2, next_attempt_at)
     WHERE id IN (SELECT value FROM json_each($3)) AND state = 'pending'",
    "UPDATE outbox SET attempts = attempts + 1, last_error = $1,
         state = CASE WHEN $2::timestamptz IS NULL THEN 'failed' ELSE 'pending' END,
         next_attempt_at = coalesce($2, next_attempt_at), claim_expires_at = NULL
     WHERE id = ANY($3) AND state = 'pending' AND claim_token = $4",
);

impl Store {
    /// The oldest `limit` pending rows of `channel`, in event order, leaving out every row of
    /// the orgs in `skip` (the dispatcher's orgs waiting for a retry: however many they are, the
    /// rows of the other orgs are read). `skip` is bound as one parameter, whatever its length.
    pub async fn pending(&self, channel: &str, limit: i64, skip: &[String]) -> Result<Vec<Pending>, StoreError> {
        read!(self, |pool, D| {
            Ok(PENDING
                .query_as::<D, Pending>()
                .bind(channel)
                .bind(limit)
                .bind(List(skip))
                .persistent(!<D as Dialect>::POSTGRES)
                .fetch_all(pool)
                .await?)
        })
        .await
    }

    /// Those of these outbox rows that are still pending, in event order: the dispatcher's
    /// failing rows that fall due, which its read of `pending` leaves out with their orgs.
    pub async fn pending_of(&self, outbox_ids: &[i64]) -> Result<Vec<Pending>, StoreError> {
        rows!(self, PENDING_OF, Pending, List(outbox_ids)).await
    }

    /// These pending outbox rows with their events, in event order.
    pub async fn deliveries(&self, outbox_ids: &[i64]) -> Result<Vec<Delivery>, StoreError> {
        rows!(self, DELIVERIES, Delivery, List(outbox_ids)).await
    }

    /// Claims these pending rows for one send that takes at most `send_timeout`, and returns the
    /// ones this instance got. On PostgreSQL another instance's unexpired claim keeps a row out;
    /// on SQLite one process sends (the file lock) and every row is this one's.
    pub async fn claim(&self, outbox_ids: &[i64], send_timeout: Duration) -> Result<Claimed, StoreError> {
        let token = format!("{:032x}", rand::random::<u128>());
        // Longer than the send, plus a margin for the time between claiming and sending: an
        // instance that stopped leading in the middle of a send has finished or given up before
        // another takes the row.
        let hold = send_timeout.saturating_add(CLAIM_MARGIN);
        let asked = tokio::time::Instant::now();
        let ids = match self.postgres() {
            None => outbox_ids.to_vec(),
            Some(pg) => {
                let term = pg.fence().current()?;
                let claimed_by = format!("{} (epoch {})", term.holder, term.epoch);
                self.write(Write::Transaction, async |conn| {
                    let Conn::Postgres(c) = conn else {
                        unreachable!("a PostgreSQL store writes on PostgreSQL")
                    };
                    let claimed = sqlx::query_scalar(CLAIM)
                        .bind(outbox_ids)
                        .bind(&token)
                        .bind(&claimed_by)
                        .bind(secs(hold))
                        .fetch_all(c)
                        .await?;
                    Ok(End::Commit(claimed))
                })
                .await?
            }
        };
        Ok(Claimed {
            token,
            ids,
            until: asked.checked_add(hold).unwrap_or(asked),
        })
    }

    /// When the oldest pending row of `channel` falls due, if there is one.
    pub async fn next_due(&self, channel: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        read!(self, |pool, D| Ok(time(
            NEXT_DUE
                .query_scalar::<D, Ts>()
                .bind(channel)
                .fetch_optional(pool)
                .await?
        )))
        .await
    }

    /// Records deliveries the receiver accepted. `note` says what did not go as asked (a mail
    /// recipient refused) and lands in `last_error`. Rows already final, or claimed since by
    /// another instance, are left alone, so that writing the same outcome twice changes nothing.
    pub async fn mark_sent(
        &self,
        outbox_ids: &[i64],
        token: &str,
        now: DateTime<Utc>,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        let note = note.map(cap);
        self.write(Write::Unfenced, async |conn| {
            on_conn!(conn, |c, D| MARK_SENT
                .query::<D>()
                .bind(Ts(now))
                .bind(&note)
                .bind(List(outbox_ids))
                .bind(token)
                .execute(c)
                .await?
                .rows_affected());
            Ok(End::Commit(()))
        })
        .await
    }

    /// Records a failed attempt: retried at `retry_at`, or given up when `retry_at` is `None`.
    pub async fn mark_attempt_failed(
        &self,
        outbox_ids: &[i64],
        token: &str,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let error = cap(error);
        self.write(Write::Unfenced, async |conn| {
            on_conn!(conn, |c, D| MARK_FAILED
                .query::<D>()
                .bind(&error)
                .bind(opt(retry_at))
                .bind(List(outbox_ids))
                .bind(token)
                .execute(c)
                .await?
                .rows_affected());
            Ok(End::Commit(()))
        })
        .await
    }
}
