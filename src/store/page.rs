//! What the status page and its JSON API read: the orgs with when their link left SYNCED, the
//! channels with deliveries waiting or given up, and an org's recent failed checks. Times are
//! linkwatch's ISO-8601 UTC text on both databases.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::sql::{Sql, Ts, rows};
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
