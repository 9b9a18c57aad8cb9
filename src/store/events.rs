//! Events and their outbox rows: written inside the transaction of what caused them (a check,
//! a live migration's check, a report's slot), one outbox row per channel it is routed to; and
//! read back, oldest first.

use sqlx::FromRow;

use super::sql::{Conn, List, Sql, Ts, on_conn, rows};
use super::{Store, StoreError};
use crate::config::OrgId;
use crate::detect::Event;

#[derive(Debug, Clone, FromRow)]
pub struct StoredEvent {
    pub id: String,
    pub org_id: String,
    pub org_name: Option<String>,
    pub kind: String,
    pub created_at: String,
    pub payload: String,
}

const INSERT_EVENT: Sql = Sql::each(
    "INSERT INTO events (id, org_id, kind, created_at, payload) VALUES ($1, $2, $3, $4, $5) RETURNING seq",
    "INSERT INTO events (id, org_id, kind, created_at, payload) VALUES ($1, $2, $3, $4, $5::jsonb)
     RETURNING seq",
);

/// One outbox row per channel; the channels are one parameter (SQLite: a JSON array).
const INSERT_OUTBOX: Sql = Sql::each(
    "INSERT INTO outbox (event_seq, channel, next_attempt_at, created_at)
     SELECT $1, value, $2, $2 FROM json_each($3)",
    "INSERT INTO outbox (event_seq, channel, next_attempt_at, created_at)
     SELECT $1, channel, $2, $2 FROM unnest($3::text[]) AS channel",
);

/// Which silences may hold an event back.
#[derive(Debug, Clone, Copy)]
pub(super) enum Holdable<'a> {
    /// One of its org's, or, for a live migration's event (`Some(name)`), one of that
    /// migration's.
    ByOrg(Option<&'a str>),
    /// None: a scheduled report, or an API's notice, which no org's planned work is about (and
    /// which is said once: held, it would be lost).
    Never,
}

/// An event (its payload already JSON) and one outbox row per channel, inside the caller's
/// transaction; or, while a silence covers it (see [`Holdable`]), a held row per channel
/// instead, which no worker sends.
#[allow(clippy::too_many_arguments)]
pub(super) async fn insert_event(
    mut conn: Conn<'_>,
    id: &str,
    org_id: &str,
    kind: &str,
    holdable: Holdable<'_>,
    at: Ts,
    payload: &str,
    channels: &[String],
) -> anyhow::Result<()> {
    let seq: i64 = on_conn!(conn.re(), |c, D| INSERT_EVENT
        .query_scalar::<D, i64>()
        .bind(id)
        .bind(org_id)
        .bind(kind)
        .bind(at)
        .bind(payload)
        .fetch_one(c)
        .await?);
    if channels.is_empty() {
        return Ok(());
    }
    if let Holdable::ByOrg(migration) = holdable
        && let Some(silence) = silence_at(conn.re(), org_id, migration, at).await?
    {
        return hold(conn, seq, silence, at, channels).await;
    }
    on_conn!(conn, |c, D| INSERT_OUTBOX
        .query::<D>()
        .bind(seq)
        .bind(at)
        .bind(List(channels))
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// The silence that holds back an event of org `$1` (about migration `$2`, or the link) at `$3`.
const AT: Sql = Sql::each(
    "SELECT id FROM silences
     WHERE org_id = $1 AND ends_at > $3 AND starts_at <= $3 AND (ended_at IS NULL OR ended_at > $3)
       AND (migration IS NULL OR migration = $2)
     ORDER BY id LIMIT 1",
    "SELECT id FROM silences
     WHERE org_id = $1 AND ends_at > $3 AND starts_at <= $3 AND (ended_at IS NULL OR ended_at > $3)
       AND (migration IS NULL OR migration = $2::text)
     ORDER BY id LIMIT 1",
);

const INSERT_HELD: Sql = Sql::each(
    "INSERT INTO silenced_deliveries (event_seq, channel, silence_id, created_at)
     SELECT $1, value, $2, $3 FROM json_each($4)",
    "INSERT INTO silenced_deliveries (event_seq, channel, silence_id, created_at)
     SELECT $1, channel, $2, $3 FROM unnest($4::text[]) AS channel",
);

/// The silence holding back an event of `org_id` (about `migration`, or the link) at `at`.
pub(super) async fn silence_at(
    conn: Conn<'_>,
    org_id: &str,
    migration: Option<&str>,
    at: Ts,
) -> anyhow::Result<Option<i64>> {
    Ok(on_conn!(conn, |c, D| AT
        .query_scalar::<D, i64>()
        .bind(org_id)
        .bind(migration)
        .bind(at)
        .fetch_optional(c)
        .await?))
}

/// Where a held event would have gone, instead of outbox rows.
async fn hold(conn: Conn<'_>, seq: i64, silence: i64, at: Ts, channels: &[String]) -> anyhow::Result<()> {
    on_conn!(conn, |c, D| INSERT_HELD
        .query::<D>()
        .bind(seq)
        .bind(silence)
        .bind(at)
        .bind(List(channels))
        .execute(c)
        .await?
        .rows_affected());
    Ok(())
}

/// An org's event (a check's, a live migration's, the end of a silence): its kind, payload and
/// the silences that may hold it follow from the event itself.
pub(super) async fn insert_org_event(
    conn: Conn<'_>,
    id: &str,
    org_id: &str,
    event: &Event,
    at: Ts,
    channels: &[String],
) -> anyhow::Result<()> {
    let payload = serde_json::to_string(event)?;
    let holdable = Holdable::ByOrg(event.live_migration());
    insert_event(conn, id, org_id, event.kind(), holdable, at, &payload, channels).await
}

const EVENTS: Sql = Sql::each(
    "SELECT e.id, e.org_id, o.org_name, e.kind, e.created_at, e.payload
     FROM events AS e LEFT JOIN org_state AS o USING (org_id)
     WHERE $1 IS NULL OR e.org_id = $1 ORDER BY e.seq",
    "SELECT e.id, e.org_id, o.org_name, e.kind, linkwatch_ts(e.created_at) AS created_at,
            e.payload::text AS payload
     FROM events AS e LEFT JOIN org_state AS o USING (org_id)
     WHERE $1::text IS NULL OR e.org_id = $1 ORDER BY e.seq",
);

impl Store {
    /// Events, oldest first, optionally for one org (id).
    pub async fn events(&self, org: Option<&OrgId>) -> Result<Vec<StoredEvent>, StoreError> {
        rows!(self, EVENTS, StoredEvent, org.map(OrgId::as_str)).await
    }
}
