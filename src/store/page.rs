//! What the status page and its JSON API read: the orgs with when their link left SYNCED, the
//! channels with deliveries waiting or given up, an org's recent failed checks, and how long the
//! listed orgs' links were SYNCED lately. Times are linkwatch's ISO-8601 UTC text on both
//! databases.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::sql::{List, Sql, Ts, rows};
use super::{Store, StoreError};
use crate::config::OrgId;

/// One org's row of `current_status`, with when the link left SYNCED (`None` while it is SYNCED
/// or never was), which tells a broken link from one that has not synced yet.
#[derive(Debug, Clone, FromRow)]
pub struct OrgRow {
    pub org_id: String,
    pub org_name: String,
    pub status: Option<String>,
    pub since: Option<String>,
    pub last_checked_at: String,
    pub consecutive_failures: i64,
    pub last_error: Option<String>,
    pub broken_since: Option<String>,
}

/// A channel's deliveries that are not done: waiting (pending) or given up (failed, kept until
/// retention prunes them).
#[derive(Debug, Clone, FromRow)]
pub struct ChannelDeliveries {
    pub channel: String,
    pub pending: i64,
    pub failed: i64,
    pub oldest_pending_at: Option<String>,
    /// The error of the newest of them that has one.
    pub last_error: Option<String>,
}

/// A failed check, with its time.
#[derive(Debug, Clone, FromRow)]
pub struct FailedCheck {
    pub checked_at: String,
    pub class: String,
    pub http_status: Option<i64>,
    pub error_code: Option<String>,
    pub detail: String,
}

/// How long an org's link was SYNCED in each of three windows that end now, and how much of each
/// window its status was known (from its first status on): seconds.
#[derive(Debug, Clone, FromRow)]
pub struct SyncedTime {
    pub org_id: String,
    pub synced_0: f64,
    pub known_0: f64,
    pub synced_1: f64,
    pub known_1: f64,
    pub synced_2: f64,
    pub known_2: f64,
}

/// Each confirmed status lasts from its change to the next (or to now); each window takes the
/// part of those spans after its start. Only the orgs asked for are read: the page lists a
/// hundred of ten thousand.
const SYNCED_TIME: Sql = Sql::each(
    "WITH spans AS (
         SELECT org_id, to_status = 'SYNCED' AS synced, changed_at AS start,
                coalesce(lead(changed_at) OVER (PARTITION BY org_id ORDER BY changed_at, id), $2) AS stop
         FROM transitions
         WHERE org_id IN (SELECT value FROM json_each($1)) AND changed_at < $2
     ), parts AS (
         SELECT org_id, synced,
                max(0, julianday(stop) - julianday(max(start, $3))) * 86400.0 AS in_0,
                max(0, julianday(stop) - julianday(max(start, $4))) * 86400.0 AS in_1,
                max(0, julianday(stop) - julianday(max(start, $5))) * 86400.0 AS in_2
         FROM spans
     )
     SELECT org_id,
            total(CASE WHEN synced THEN in_0 END) AS synced_0, total(in_0) AS known_0,
            total(CASE WHEN synced THEN in_1 END) AS synced_1, total(in_1) AS known_1,
            total(CASE WHEN synced THEN in_2 END) AS synced_2, total(in_2) AS known_2
     FROM parts GROUP BY org_id",
    "WITH spans AS (
         SELECT org_id, to_status = 'SYNCED' AS synced, changed_at AS start,
                coalesce(lead(changed_at) OVER (PARTITION BY org_id ORDER BY changed_at, id), $2) AS stop
         FROM transitions
         WHERE org_id = ANY($1) AND changed_at < $2
     ), parts AS (
         SELECT org_id, synced,
                greatest(0, extract(epoch FROM stop - greatest(start, $3)))::float8 AS in_0,
                greatest(0, extract(epoch FROM stop - greatest(start, $4)))::float8 AS in_1,
                greatest(0, extract(epoch FROM stop - greatest(start, $5)))::float8 AS in_2
         FROM spans
     )
     SELECT org_id,
            coalesce(sum(in_0) FILTER (WHERE synced), 0) AS synced_0, coalesce(sum(in_0), 0) AS known_0,
            coalesce(sum(in_1) FILTER (WHERE synced), 0) AS synced_1, coalesce(sum(in_1), 0) AS known_1,
            coalesce(sum(in_2) FILTER (WHERE synced), 0) AS synced_2, coalesce(sum(in_2), 0) AS known_2
     FROM parts GROUP BY org_id",
);

const ORG_ROWS: Sql = Sql::each(
    "SELECT org_id, org_name, status, status_since AS since, last_checked_at, consecutive_failures,
            last_error, broken_since
     FROM org_state ORDER BY org_name, org_id",
    "SELECT org_id, org_name, status, linkwatch_ts(status_since) AS since,
            linkwatch_ts(last_checked_at) AS last_checked_at,
            consecutive_failures::bigint AS consecutive_failures, last_error,
            linkwatch_ts(broken_since) AS broken_since
     FROM org_state ORDER BY org_name, org_id",
);

const CHANNEL_DELIVERIES: Sql = Sql::each(
    "SELECT channel, sum(state = 'pending') AS pending, sum(state = 'failed') AS failed,
            min(CASE WHEN state = 'pending' THEN created_at END) AS oldest_pending_at,
            (SELECT l.last_error FROM outbox AS l
             WHERE l.channel = o.channel AND l.state IN ('pending', 'failed') AND l.last_error IS NOT NULL
             ORDER BY l.id DESC LIMIT 1) AS last_error
     FROM outbox AS o WHERE state IN ('pending', 'failed') GROUP BY channel ORDER BY channel",
    "SELECT channel, count(*) FILTER (WHERE state = 'pending') AS pending,
            count(*) FILTER (WHERE state = 'failed') AS failed,
            linkwatch_ts(min(created_at) FILTER (WHERE state = 'pending')) AS oldest_pending_at,
            (SELECT l.last_error FROM outbox AS l
             WHERE l.channel = o.channel AND l.state IN ('pending', 'failed') AND l.last_error IS NOT NULL
             ORDER BY l.id DESC LIMIT 1) AS last_error
     FROM outbox AS o WHERE state IN ('pending', 'failed') GROUP BY channel ORDER BY channel",
);

const FAILED_CHECKS: Sql = Sql::each(
    "SELECT checked_at, class, http_status, error_code, detail FROM check_failures
     WHERE org_id = $1 AND checked_at >= $2 ORDER BY checked_at DESC, id DESC LIMIT $3",
    "SELECT linkwatch_ts(checked_at) AS checked_at, class, http_status::bigint AS http_status, error_code,
            detail
     FROM check_failures
     WHERE org_id = $1 AND checked_at >= $2 ORDER BY check_failures.checked_at DESC, id DESC LIMIT $3",
);

impl Store {
    /// Every org in the database, by name.
    pub async fn org_rows(&self) -> Result<Vec<OrgRow>, StoreError> {
        rows!(self, ORG_ROWS, OrgRow).await
    }

    /// How long each of `orgs` was SYNCED in the windows from `starts` to `now`; an org without
    /// a status yet has no row.
    pub async fn synced_time(
        &self,
        orgs: &[String],
        now: DateTime<Utc>,
        starts: [DateTime<Utc>; 3],
    ) -> Result<Vec<SyncedTime>, StoreError> {
        let [s0, s1, s2] = starts.map(Ts);
        rows!(self, SYNCED_TIME, SyncedTime, List(orgs), Ts(now), s0, s1, s2).await
    }

    /// The channels that have pending or failed deliveries, by name.
    pub async fn channel_deliveries(&self) -> Result<Vec<ChannelDeliveries>, StoreError> {
        rows!(self, CHANNEL_DELIVERIES, ChannelDeliveries).await
    }

    /// The org's failed checks since `since`, newest first, at most `limit`.
    pub async fn failed_checks(
        &self,
        org: &OrgId,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<FailedCheck>, StoreError> {
        rows!(self, FAILED_CHECKS, FailedCheck, org.as_str(), Ts(since), limit).await
    }
}
