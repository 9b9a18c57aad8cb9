//! The outbox side of the store: which deliveries are due, and what became of each attempt.

use chrono::{DateTime, Utc};
use sqlx::{Connection, FromRow};

use super::{Store, StoredEvent, parse_ts, ts};

/// An outbox row that is due, with its event.
#[derive(Debug, Clone, FromRow)]
pub struct Delivery {
    pub outbox_id: i64,
    pub attempts: i64,
    pub next_attempt_at: String,
    #[sqlx(flatten)]
    pub event: StoredEvent,
}

impl Store {
    /// The oldest pending outbox rows of `channel`, if the oldest of them is due at `now`.
    /// Rows go out in event order: while the oldest waits for its retry, newer ones wait too.
    pub async fn due_deliveries(&self, channel: &str, now: DateTime<Utc>, limit: i64) -> anyhow::Result<Vec<Delivery>> {
        let rows = sqlx::query_as::<_, Delivery>(
            "SELECT x.id AS outbox_id, x.attempts, x.next_attempt_at, e.id, e.org_id, o.org_name, e.kind,
                    e.created_at, e.payload
             FROM outbox AS x
             JOIN events AS e ON e.seq = x.event_seq
             LEFT JOIN org_state AS o ON o.org_id = e.org_id
             WHERE x.channel = ? AND x.state = 'pending'
             ORDER BY x.event_seq LIMIT ?",
        )
        .bind(channel)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let head_due = rows.first().is_some_and(|r| r.next_attempt_at <= ts(now));
        Ok(if head_due { rows } else { Vec::new() })
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

    pub async fn mark_sent(&self, outbox_ids: &[i64], now: DateTime<Utc>) -> anyhow::Result<()> {
        self.write(async |conn| {
            let mut tx = conn.begin().await?;
            for id in outbox_ids {
                sqlx::query(
                    "UPDATE outbox SET state = 'sent', attempts = attempts + 1, sent_at = ?, last_error = NULL
                     WHERE id = ?",
                )
                .bind(ts(now))
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
        self.write(async |conn| {
            let mut tx = conn.begin().await?;
            for id in outbox_ids {
                sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?,
                         state = CASE WHEN ?2 IS NULL THEN 'failed' ELSE 'pending' END,
                         next_attempt_at = coalesce(?2, next_attempt_at)
                     WHERE id = ?3",
                )
                .bind(error)
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
