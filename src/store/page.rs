//! What the status page and its JSON API read: the orgs with when their link left SYNCED, the
//! channels with deliveries waiting or given up, and an org's recent failed checks. Each backend
//! answers them in `sqlite.rs` and `postgres.rs`; times are linkwatch's ISO-8601 UTC text.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{Backend, Store, on_db};
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

impl Store {
    /// Every org in the database, by name.
    pub async fn org_rows(&self) -> anyhow::Result<Vec<OrgRow>> {
        on_db!(self, db => db.org_rows().await)
    }

    /// The channels that have pending or failed deliveries, by name.
    pub async fn channel_deliveries(&self) -> anyhow::Result<Vec<ChannelDeliveries>> {
        on_db!(self, db => db.channel_deliveries().await)
    }

    /// The org's failed checks since `since`, newest first, at most `limit`.
    pub async fn failed_checks(
        &self,
        org: &OrgId,
        since: DateTime<Utc>,
        limit: i64,
    ) -> anyhow::Result<Vec<FailedCheck>> {
        on_db!(self, db => db.failed_checks(org, since, limit).await)
    }
}
