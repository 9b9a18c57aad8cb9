//! What the database says at scrape time, for `/metrics`: read by the store, rendered by
//! `metrics`.

use chrono::Utc;

use super::sql::{Sql, Ts, read};
use super::{Store, StoreError};

/// What the database says at scrape time.
#[derive(Debug, Default)]
pub struct DbGauges {
    /// (org_id, org_name, status)
    pub statuses: Vec<(String, String, Option<String>)>,
    /// The instance (base URL) of each of `statuses`, in the same order (filled by `/metrics`).
    pub instances: Vec<String>,
    /// channel -> pending rows
    pub outbox_depth: Vec<(String, i64)>,
    /// Age of the oldest pending delivery, in seconds.
    pub oldest_pending_s: Option<f64>,
    /// The configured live migrations (filled by `/metrics`, not by the store).
    pub migrations: Vec<LiveMigrationGauge>,
    /// The silences holding events back now, with the org's configured name (filled by
    /// `/metrics`).
    pub silences: Vec<(super::Silence, String)>,
    /// The API versions announced for retirement.
    pub api_deprecations: Vec<super::DeprecationRow>,
}

/// A live migration's gauges.
#[derive(Debug, Clone, Default)]
pub struct LiveMigrationGauge {
    pub name: String,
    pub org_id: String,
    pub status: Option<String>,
    pub ready_for_cutover: bool,
    pub lag_s: Option<i64>,
    /// Seconds left to the estimated deadline, while a cutover window runs.
    pub left_s: Option<i64>,
}

impl LiveMigrationGauge {
    pub fn of(row: super::LiveMigrationRow, now: chrono::DateTime<chrono::Utc>) -> LiveMigrationGauge {
        let left_s = row.left_s(now);
        LiveMigrationGauge {
            name: row.migration,
            org_id: row.org_id,
            status: row.status,
            ready_for_cutover: row.ready_for_cutover,
            lag_s: row.lag_s,
            left_s,
        }
    }
}

const STATUSES: Sql = Sql::both("SELECT org_id, org_name, status FROM current_status ORDER BY org_id");
const OUTBOX_DEPTH: Sql =
    Sql::both("SELECT channel, count(*) FROM outbox WHERE state = 'pending' GROUP BY channel ORDER BY channel");
const OLDEST_PENDING: Sql = Sql::both("SELECT min(created_at) FROM outbox WHERE state = 'pending'");

impl Store {
    /// The gauges `/metrics` reads from the database.
    pub async fn gauges(&self) -> Result<DbGauges, StoreError> {
        let gauges = read!(self, |pool, D| {
            let statuses = STATUSES.query_as::<D, _>().fetch_all(pool).await?;
            let outbox_depth = OUTBOX_DEPTH.query_as::<D, _>().fetch_all(pool).await?;
            let oldest: Option<Ts> = OLDEST_PENDING.query_scalar::<D, _>().fetch_one(pool).await?;
            Ok(DbGauges {
                statuses,
                instances: Vec::new(),
                outbox_depth,
                oldest_pending_s: oldest.map(|t| (Utc::now() - t.0).num_milliseconds() as f64 / 1000.0),
                migrations: Vec::new(),
                silences: Vec::new(),
                api_deprecations: Vec::new(),
            })
        })
        .await?;
        Ok(DbGauges {
            api_deprecations: self.api_deprecations().await?,
            ..gauges
        })
    }
}
