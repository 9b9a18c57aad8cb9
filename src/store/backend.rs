//! What a database must do for linkwatch: one trait, one implementation per backend
//! ([`super::sqlite`], [`super::postgres`]). The rules that do not depend on the database (which
//! check is stale, what is quiet, event ids, the group commit's memory) live in [`super::Store`]
//! and its siblings; a backend only reads and writes.
//!
//! Every method that writes is one transaction. On PostgreSQL each of them is also fenced: it
//! first checks that this instance still holds the lease with the epoch it was given, and fails
//! with [`super::Fenced`] when it does not (see `store/postgres/lease.rs`).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::DbGauges;
use super::{
    Applied, ChannelDeliveries, Check, CheckRecord, CurrentStatus, Decision, Delivery, FailedCheck, OrgRow, Pending,
    ReportRun, StatusChange, StoredEvent,
};
use super::{LiveMigrationChange, LiveMigrationCheck, LiveMigrationDecision, LiveMigrationRow};
use crate::config::OrgId;
use crate::detect::OrgState;
use crate::detect::live_migration::{LinkView, LiveMigrationState};
use crate::store::RemindersSent;

/// What one pass of retention deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub failures: u64,
    pub deliveries: u64,
    /// Scheduled reports' events whose deliveries were all pruned: each holds a whole report,
    /// so a frequent report would otherwise grow `events` by its size per slot, for ever. Their
    /// `report_runs` rows stay, so a slot is never sent again.
    pub reports: u64,
}

/// A quiet check for the group commit: the org, the status it is quiet with, the last check's
/// time and how many checks.
#[derive(Debug, Clone)]
pub struct QuietRow {
    pub org_id: OrgId,
    pub status: std::sync::Arc<str>,
    pub at: DateTime<Utc>,
    pub checks: u32,
}

/// A failed-check row: (class, http_status, error_code, detail).
pub type FailureRow = (String, Option<i64>, Option<String>, String);

pub(crate) trait Backend {
    /// This database's random identity, made by the first migration.
    async fn instance(&self) -> anyhow::Result<String>;

    /// The full path of a check, in one transaction that holds the org's row from the read to
    /// the write: reads the state (and when it was last checked), drops the check when
    /// `superseded` says so, lets `decide` say what it means, writes the result.
    async fn apply(
        &self,
        instance: &str,
        check: &Check<'_>,
        superseded: impl FnOnce(DateTime<Utc>) -> bool,
        decide: impl FnOnce(&OrgState, &RemindersSent) -> Decision,
    ) -> anyhow::Result<Applied>;

    /// The one-statement quiet path: updates the check time when the stored state is quiet
    /// with `status`; `false` when it is anything else.
    async fn record_if_quiet(&self, org: &OrgId, name: &str, status: &str, at: DateTime<Utc>) -> anyhow::Result<bool>;

    /// A migration's check in one transaction: reads its state and its org's link, lets
    /// `decide` say what it means, writes the state, the status change, a lag sample when
    /// [`super::live_migration::lag_sample_due`], the events and their outbox rows.
    async fn apply_live_migration(
        &self,
        instance: &str,
        check: &LiveMigrationCheck<'_>,
        superseded: impl FnOnce(DateTime<Utc>) -> bool,
        decide: impl FnOnce(&LiveMigrationState, &LinkView) -> LiveMigrationDecision,
    ) -> anyhow::Result<Option<LiveMigrationDecision>>;

    async fn live_migrations(&self) -> anyhow::Result<Vec<LiveMigrationRow>>;

    async fn live_migration_changes(&self, migration_id: &str) -> anyhow::Result<Vec<LiveMigrationChange>>;
    async fn live_migration_lag(
        &self,
        migration_id: &str,
        since: DateTime<Utc>,
    ) -> anyhow::Result<Vec<(DateTime<Utc>, Option<i64>)>>;

    /// Writes a check whose consequences are already decided.
    async fn record_check(&self, instance: &str, rec: &CheckRecord<'_>) -> anyhow::Result<()>;

    async fn load_state(&self, org: &OrgId) -> anyhow::Result<OrgState>;

    /// The group commit: one statement for all `rows`, each applied only when the stored state
    /// is still quiet with its status and its stored check is older. Returns the org ids written.
    async fn flush_quiet(&self, rows: &[QuietRow]) -> anyhow::Result<Vec<String>>;

    /// The oldest `limit` pending rows of `channel`, in event order, without the rows of the
    /// orgs in `skip` (bound as one parameter).
    async fn pending(&self, channel: &str, limit: i64, skip: &[String]) -> anyhow::Result<Vec<Pending>>;

    /// Those of these outbox rows that are still pending, in event order.
    async fn pending_of(&self, outbox_ids: &[i64]) -> anyhow::Result<Vec<Pending>>;

    /// These pending outbox rows with their events, in event order.
    async fn deliveries(&self, outbox_ids: &[i64]) -> anyhow::Result<Vec<Delivery>>;

    /// Claims these pending rows for one send under `token`, for `hold`, and returns the ids it
    /// got. A row claimed by another token whose claim has not expired is skipped.
    async fn claim(&self, outbox_ids: &[i64], token: &str, hold: Duration) -> anyhow::Result<Vec<i64>>;

    async fn next_due(&self, channel: &str) -> anyhow::Result<Option<DateTime<Utc>>>;

    /// Records deliveries the receiver accepted (rows still pending and claimed under `token`).
    async fn mark_sent(
        &self,
        outbox_ids: &[i64],
        token: &str,
        now: DateTime<Utc>,
        note: Option<&str>,
    ) -> anyhow::Result<()>;

    /// Records a failed attempt: retried at `retry_at`, or given up when it is `None`.
    async fn mark_attempt_failed(
        &self,
        outbox_ids: &[i64],
        token: &str,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> anyhow::Result<()>;

    /// A real write that proves the database takes writes (not fenced: a follower is healthy).
    /// Records `run`'s slot and enqueues its event and outbox rows, in one transaction; false
    /// (and nothing written) when the slot is already recorded.
    async fn enqueue_report(&self, run: &ReportRun<'_>) -> anyhow::Result<bool>;

    /// The latest slot recorded for `report`, if any.
    async fn last_report_slot(&self, report: &str) -> anyhow::Result<Option<DateTime<Utc>>>;

    async fn probe_write(&self) -> anyhow::Result<()>;

    async fn prune(&self, before: DateTime<Utc>) -> anyhow::Result<Pruned>;
    async fn gauges(&self) -> anyhow::Result<DbGauges>;
    async fn history(&self, org: Option<&str>, since: Option<DateTime<Utc>>) -> anyhow::Result<Vec<StatusChange>>;
    async fn current(&self) -> anyhow::Result<Vec<CurrentStatus>>;
    async fn events(&self, org: Option<&OrgId>) -> anyhow::Result<Vec<StoredEvent>>;
    async fn failures(&self, org: &OrgId) -> anyhow::Result<Vec<FailureRow>>;
    async fn org_rows(&self) -> anyhow::Result<Vec<OrgRow>>;
    async fn channel_deliveries(&self) -> anyhow::Result<Vec<ChannelDeliveries>>;
    async fn failed_checks(&self, org: &OrgId, since: DateTime<Utc>, limit: i64) -> anyhow::Result<Vec<FailedCheck>>;
    async fn close(&self);
}
