//! The outbox side of the store: what is pending, who sends it, and what became of each attempt.
//! (Which channels are blocked is the dispatcher's to say: the hold counts from a failure it saw.)

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{Backend as _, Store, StoredEvent, on_db};

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

impl Store {
    /// The oldest `limit` pending rows of `channel`, in event order, leaving out every row of
    /// the orgs in `skip` (the dispatcher's orgs waiting for a retry: however many they are, the
    /// rows of the other orgs are read). `skip` is bound as one parameter, whatever its length.
    pub async fn pending(&self, channel: &str, limit: i64, skip: &[String]) -> anyhow::Result<Vec<Pending>> {
        on_db!(self, db => db.pending(channel, limit, skip).await)
    }

    /// Those of these outbox rows that are still pending, in event order: the dispatcher's
    /// failing rows that fall due, which its read of `pending` leaves out with their orgs.
    pub async fn pending_of(&self, outbox_ids: &[i64]) -> anyhow::Result<Vec<Pending>> {
        on_db!(self, db => db.pending_of(outbox_ids).await)
    }

    /// These pending outbox rows with their events, in event order.
    pub async fn deliveries(&self, outbox_ids: &[i64]) -> anyhow::Result<Vec<Delivery>> {
        on_db!(self, db => db.deliveries(outbox_ids).await)
    }

    /// Claims these pending rows for one send that takes at most `send_timeout`, and returns the
    /// ones this instance got. On PostgreSQL another instance's unexpired claim keeps a row out;
    /// on SQLite one process sends (the file lock) and every row is this one's.
    pub async fn claim(&self, outbox_ids: &[i64], send_timeout: Duration) -> anyhow::Result<Claimed> {
        let token = format!("{:032x}", rand::random::<u128>());
        // Longer than the send, plus a margin for the time between claiming and sending: an
        // instance that stopped leading in the middle of a send has finished or given up before
        // another takes the row.
        let hold = send_timeout.saturating_add(CLAIM_MARGIN);
        let asked = tokio::time::Instant::now();
        let ids = on_db!(self, db => db.claim(outbox_ids, &token, hold).await)?;
        Ok(Claimed {
            token,
            ids,
            until: asked.checked_add(hold).unwrap_or(asked),
        })
    }

    /// When the oldest pending row of `channel` falls due, if there is one.
    pub async fn next_due(&self, channel: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        on_db!(self, db => db.next_due(channel).await)
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
    ) -> anyhow::Result<()> {
        on_db!(self, db => db.mark_sent(outbox_ids, token, now, note).await)
    }

    /// Records a failed attempt: retried at `retry_at`, or given up when `retry_at` is `None`.
    pub async fn mark_attempt_failed(
        &self,
        outbox_ids: &[i64],
        token: &str,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> anyhow::Result<()> {
        on_db!(self, db => db.mark_attempt_failed(outbox_ids, token, error, retry_at).await)
    }
}
