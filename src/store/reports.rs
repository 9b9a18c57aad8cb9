//! Scheduled reports: a slot recorded once (`report_runs`) with its event and outbox rows, in
//! one transaction; and the latest slot a report ran for.

use chrono::{DateTime, Utc};

use super::events::{Holdable, insert_event};
use super::sql::{End, Sql, Ts, Write, on_conn, read, time};
use super::{Store, StoreError, ts};

/// One slot of a scheduled report, as [`Store::enqueue_report`] writes it.
#[derive(Debug)]
pub struct ReportRun<'a> {
    pub report: &'a str,
    pub slot: DateTime<Utc>,
    pub late: bool,
    pub at: DateTime<Utc>,
    pub event_id: &'a str,
    pub payload: &'a str,
    pub channels: &'a [String],
}

impl ReportRun<'_> {
    /// The `events.org_id` of a report: reports belong to no org, and each report's slots are
    /// delivered in order among themselves, apart from every org's events.
    pub fn org_id(&self) -> String {
        format!("{REPORT_ORG_PREFIX}{}", self.report)
    }
}

/// What `events.org_id` starts with for a report's event.
pub const REPORT_ORG_PREFIX: &str = "report:";

/// The first `org_id` past every report's (the prefix's `:` stepped to `;`): with the prefix, a
/// range that the `(org_id, created_at)` index answers, for retention's delete of reports.
pub(super) const REPORT_ORG_END: &str = "report;";

/// A report slot's event id: the same for the same database, report and slot, so a receiver
/// can drop a repeat (the one duplicate a crash between send and mark can cause).
pub fn report_event_id(instance: &str, report: &str, slot: DateTime<Utc>) -> String {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::new()
        .chain_update(instance)
        .chain_update(b"/report/")
        .chain_update(report)
        .chain_update(b"/")
        .chain_update(ts(slot))
        .finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("rpt_{hex}")
}

const RECORD_SLOT: Sql = Sql::both(
    "INSERT INTO report_runs (report, slot, event_id, late, created_at) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (report, slot) DO NOTHING",
);

const LAST_SLOT: Sql = Sql::both("SELECT max(slot) FROM report_runs WHERE report = $1");

impl Store {
    /// Records the slot of a scheduled report and enqueues its delivery to its channels, in one
    /// transaction (fenced on PostgreSQL): `Some(event id)` when this call enqueued it, `None`
    /// when the slot was already recorded (a restart, or another writer got there first).
    pub async fn enqueue_report(
        &self,
        report: &str,
        slot: DateTime<Utc>,
        late: bool,
        at: DateTime<Utc>,
        payload: &str,
        channels: &[String],
    ) -> Result<Option<String>, StoreError> {
        let event_id = report_event_id(&self.instance, report, slot);
        let run = ReportRun {
            report,
            slot,
            late,
            at,
            event_id: &event_id,
            payload,
            channels,
        };
        let enqueued = self
            .write(Write::Transaction, async |mut conn| {
                let at = Ts(run.at);
                let recorded = on_conn!(conn.re(), |c, D| RECORD_SLOT
                    .query::<D>()
                    .bind(run.report)
                    .bind(Ts(run.slot))
                    .bind(run.event_id)
                    .bind(run.late)
                    .bind(at)
                    .execute(c)
                    .await?
                    .rows_affected());
                if recorded == 0 {
                    return Ok(End::Rollback(false));
                }
                let org_id = run.org_id();
                insert_event(
                    conn,
                    run.event_id,
                    &org_id,
                    "report",
                    Holdable::Never,
                    at,
                    run.payload,
                    run.channels,
                )
                .await?;
                Ok(End::Commit(true))
            })
            .await?;
        Ok(enqueued.then_some(event_id))
    }

    /// The latest slot recorded for `report`: none for a report that never ran.
    pub async fn last_report_slot(&self, report: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        read!(self, |pool, D| Ok(time(
            LAST_SLOT
                .query_scalar::<D, Option<Ts>>()
                .bind(report)
                .fetch_one(pool)
                .await?
        )))
        .await
    }
}
