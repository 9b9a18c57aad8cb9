//! What `linkwatch history` and `status` read: status changes, the current status of each org,
//! an org's failed checks. Times are linkwatch's ISO-8601 UTC text on both databases.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::sql::{Sql, opt, rows};
use super::{Store, StoreError};
use crate::config::OrgId;

#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct StatusChange {
    pub org_id: String,
    pub org_name: String,
    pub from_status: Option<String>,
    pub to_status: String,
    pub changed_at: String,
    pub previous_lasted_s: Option<i64>,
}

#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct CurrentStatus {
    pub org_id: String,
    pub org_name: String,
    pub status: Option<String>,
    pub since: Option<String>,
    pub last_checked_at: String,
    pub consecutive_failures: i64,
    pub last_error: Option<String>,
}

/// A failed-check row: (class, http_status, error_code, detail).
pub type FailureRow = (String, Option<i64>, Option<String>, String);

const HISTORY: Sql = Sql::each(
    "SELECT org_id, org_name, from_status, to_status, changed_at, previous_lasted_s
     FROM status_changes
     WHERE ($1 IS NULL OR org_id = $1 OR org_name = $1) AND ($2 IS NULL OR changed_at >= $2)
     ORDER BY changed_at, org_id",
    "SELECT org_id, org_name, from_status, to_status, linkwatch_ts(changed_at) AS changed_at,
            previous_lasted_s
     FROM status_changes
     WHERE ($1::text IS NULL OR org_id = $1 OR org_name = $1)
       AND ($2::timestamptz IS NULL OR changed_at >= $2)
     ORDER BY status_changes.changed_at, org_id",
);

const CURRENT: Sql = Sql::each(
    "SELECT org_id, org_name, status, since, last_checked_at, consecutive_failures, last_error
     FROM current_status ORDER BY org_name",
    "SELECT org_id, org_name, status, linkwatch_ts(since) AS since,
            linkwatch_ts(last_checked_at) AS last_checked_at,
            consecutive_failures::bigint AS consecutive_failures, last_error
     FROM current_status ORDER BY org_name",
);

const FAILURES: Sql = Sql::both(
    "SELECT class, CAST(http_status AS bigint), error_code, detail FROM check_failures WHERE org_id = $1 ORDER BY id",
);

impl Store {
    /// Status changes, oldest first. `org` matches an id or a name.
    pub async fn history(
        &self,
        org: Option<&str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<StatusChange>, StoreError> {
        rows!(self, HISTORY, StatusChange, org, opt(since)).await
    }

    pub async fn current(&self) -> Result<Vec<CurrentStatus>, StoreError> {
        rows!(self, CURRENT, CurrentStatus).await
    }

    /// Failed-check rows for one org, oldest first: (class, http_status, error_code, detail).
    pub async fn failures(&self, org: &OrgId) -> Result<Vec<FailureRow>, StoreError> {
        rows!(self, FAILURES, FailureRow, org.as_str()).await
    }
}
