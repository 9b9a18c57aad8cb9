//! What the database says at scrape time, for `/metrics`: read by the store, rendered by
//! `metrics`.

/// What the database says at scrape time.
#[derive(Debug, Default)]
pub struct DbGauges {
    /// (org_id, org_name, status)
    pub statuses: Vec<(String, String, Option<String>)>,
    /// channel -> pending rows
    pub outbox_depth: Vec<(String, i64)>,
    /// Age of the oldest pending delivery, in seconds.
    pub oldest_pending_s: Option<f64>,
    /// The configured live migrations (filled by `/metrics`, not by the store).
    pub migrations: Vec<LiveMigrationGauge>,
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
