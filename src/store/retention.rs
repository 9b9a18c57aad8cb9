//! What retention lets go of: failed checks, finished (and silenced) deliveries, and the events of scheduled
//! reports that have no delivery left. Status changes and the links' events stay.

use chrono::{DateTime, Utc};

use super::reports::{REPORT_ORG_END, REPORT_ORG_PREFIX};
use super::sql::{Sql, Ts, read};
use super::{Store, StoreError};

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

const PRUNE_FAILURES: Sql = Sql::both("DELETE FROM check_failures WHERE checked_at < $1");

const PRUNE_DELIVERIES: Sql =
    Sql::both("DELETE FROM outbox WHERE (state = 'sent' AND sent_at < $1) OR (state = 'failed' AND created_at < $1)");

/// Held deliveries are finished ones too: a silence sent them nowhere.
const PRUNE_HELD: Sql = Sql::both("DELETE FROM silenced_deliveries WHERE created_at < $1");

/// After the deliveries: a report still being delivered (or retried) keeps its event. The
/// org_id range reads the index on (org_id, created_at), not every event.
const PRUNE_REPORTS: Sql = Sql::both(
    "DELETE FROM events WHERE org_id >= $2 AND org_id < $3 AND kind = 'report' AND created_at < $1
         AND NOT EXISTS (SELECT 1 FROM outbox AS x WHERE x.event_seq = events.seq)",
);

impl Store {
    /// Deletes what retention lets go of, older than `before`: failed checks, finished
    /// deliveries, and the events of scheduled reports that have no delivery left.
    pub async fn prune(&self, before: DateTime<Utc>) -> Result<Pruned, StoreError> {
        let before = Ts(before);
        read!(self, |pool, D| {
            let failures = PRUNE_FAILURES
                .query::<D>()
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected();
            let deliveries = PRUNE_DELIVERIES
                .query::<D>()
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected()
                + PRUNE_HELD
                    .query::<D>()
                    .bind(before)
                    .execute(pool)
                    .await?
                    .rows_affected();
            let reports = PRUNE_REPORTS
                .query::<D>()
                .bind(before)
                .bind(REPORT_ORG_PREFIX)
                .bind(REPORT_ORG_END)
                .execute(pool)
                .await?
                .rows_affected();
            Ok(Pruned {
                failures,
                deliveries,
                reports,
            })
        })
        .await
    }
}
