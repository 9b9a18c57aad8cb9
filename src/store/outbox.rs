//! The outbox side of the store: what is pending, and what became of each attempt. (Which
//! channels are blocked is the dispatcher's to say: the hold counts from a failure it saw.)

use chrono::{DateTime, Utc};
use sqlx::{Connection, FromRow};

use super::{Store, StoredEvent, parse_ts, ts};

/// The most characters of an error kept in `last_error`: enough to read, never a whole body.
const ERROR_CHARS: usize = 1000;

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

impl Store {
    /// The oldest `limit` pending rows of `channel`, in event order.
    pub async fn pending(&self, channel: &str, limit: i64) -> anyhow::Result<Vec<Pending>> {
        Ok(sqlx::query_as::<_, Pending>(
            "SELECT x.id AS outbox_id, e.org_id, x.attempts, x.next_attempt_at, x.created_at, x.last_error
             FROM outbox AS x
             JOIN events AS e ON e.seq = x.event_seq
             WHERE x.channel = ? AND x.state = 'pending'
             ORDER BY x.event_seq LIMIT ?",
        )
        .bind(channel)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// These pending outbox rows with their events, in event order.
    pub async fn deliveries(&self, outbox_ids: &[i64]) -> anyhow::Result<Vec<Delivery>> {
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

    /// When the oldest pending row of `channel` falls due, if there is one.
    pub async fn next_due(&self, channel: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        let next: Option<String> = sqlx::query_scalar(
            "SELECT next_attempt_at FROM outbox WHERE channel = ? AND state = 'pending' ORDER BY event_seq LIMIT 1",
        )
        .bind(channel)
        .fetch_optional(&self.pool)
        .await?;
        Ok(parse_ts(next))
    }

    /// Records deliveries the receiver accepted. `note` says what did not go as asked (a mail
    /// recipient refused) and lands in `last_error`. Rows already final are left alone, so that
    /// writing the same outcome twice changes nothing.
    pub async fn mark_sent(&self, outbox_ids: &[i64], now: DateTime<Utc>, note: Option<&str>) -> anyhow::Result<()> {
        let note = note.map(cap);
        self.write(async |conn| {
            let mut tx = conn.begin().await?;
            for id in outbox_ids {
                sqlx::query(
                    "UPDATE outbox SET state = 'sent', attempts = attempts + 1, sent_at = ?, last_error = ?
                     WHERE id = ? AND state = 'pending'",
                )
                .bind(ts(now))
                .bind(&note)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Records a failed attempt: retried at `retry_at`, or given up when `retry_at` is `None`.
    pub async fn mark_attempt_failed(
        &self,
        outbox_ids: &[i64],
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> anyhow::Result<()> {
        let error = cap(error);
        self.write(async |conn| {
            let mut tx = conn.begin().await?;
            for id in outbox_ids {
                sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?1,
                         state = CASE WHEN ?2 IS NULL THEN 'failed' ELSE 'pending' END,
                         next_attempt_at = coalesce(?2, next_attempt_at)
                     WHERE id = ?3 AND state = 'pending'",
                )
                .bind(&error)
                .bind(retry_at.map(ts))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}

/// An error as stored: at most [`ERROR_CHARS`] characters.
fn cap(text: &str) -> String {
    match text.char_indices().nth(ERROR_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}
