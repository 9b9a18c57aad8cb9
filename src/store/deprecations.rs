//! API versions announced for retirement: recorded once per API instance and version, with
//! their `api_deprecated` event and its outbox rows, in one transaction (as a report's slot), so
//! neither a restart nor a new leader announces one twice; and read back for `/metrics`.

use chrono::{DateTime, Utc};

use super::events::{Holdable, insert_event};
use super::sql::{End, Sql, Ts, Write, on_conn, rows, time};
use super::{Store, StoreError};
use crate::outcome::ApiDeprecation;

/// The event id of `deprecation`'s announcement: the same for the same database, API instance
/// and version, so a receiver can drop a repeat.
pub fn deprecation_event_id(instance: &str, deprecation: &ApiDeprecation) -> String {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::new()
        .chain_update(instance)
        .chain_update(b"/api_deprecated/")
        .chain_update(&deprecation.api)
        .chain_update(b"/")
        .chain_update(&deprecation.base_url)
        .chain_update(b"/")
        .chain_update(&deprecation.version)
        .finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("evt_{hex}")
}

const RECORD: Sql = Sql::both(
    "INSERT INTO api_deprecations (api, base_url, version, deprecation, sunset, sunset_at, first_seen_at, event_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (api, base_url, version) DO NOTHING",
);

const ALL: Sql = Sql::both("SELECT api, version, sunset, sunset_at FROM api_deprecations ORDER BY api, version");

/// A recorded deprecation, as `/metrics` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeprecationRow {
    pub api: String,
    pub version: String,
    /// The `Sunset` header as sent.
    pub sunset: Option<String>,
    pub sunset_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Records `deprecation` and enqueues its event (`payload`, of org `org_id`) to `channels`,
    /// in one transaction (fenced on PostgreSQL): `Some(event id)` when this call recorded it,
    /// `None` when it was known already.
    pub async fn record_api_deprecation(
        &self,
        deprecation: &ApiDeprecation,
        org_id: &str,
        at: DateTime<Utc>,
        payload: &str,
        channels: &[String],
    ) -> Result<Option<String>, StoreError> {
        let event_id = deprecation_event_id(&self.instance, deprecation);
        let id = event_id.as_str();
        let recorded = self
            .write(Write::Transaction, async |mut conn| {
                let at = Ts(at);
                let d = deprecation;
                let inserted = on_conn!(conn.re(), |c, D| RECORD
                    .query::<D>()
                    .bind(&d.api)
                    .bind(&d.base_url)
                    .bind(&d.version)
                    .bind(&d.deprecation)
                    .bind(&d.sunset)
                    .bind(d.sunset_at.map(Ts))
                    .bind(at)
                    .bind(id)
                    .execute(c)
                    .await?
                    .rows_affected());
                if inserted == 0 {
                    return Ok(End::Rollback(false));
                }
                insert_event(
                    conn,
                    id,
                    org_id,
                    "api_deprecated",
                    Holdable::Never,
                    at,
                    payload,
                    channels,
                )
                .await?;
                Ok(End::Commit(true))
            })
            .await?;
        Ok(recorded.then_some(event_id))
    }

    /// Every deprecation recorded, by API and version.
    pub async fn api_deprecations(&self) -> Result<Vec<DeprecationRow>, StoreError> {
        let rows: Vec<(String, String, Option<String>, Option<Ts>)> =
            rows!(self, ALL, (String, String, Option<String>, Option<Ts>)).await?;
        Ok(rows
            .into_iter()
            .map(|(api, version, sunset, sunset_at)| DeprecationRow {
                api,
                version,
                sunset,
                sunset_at: time(sunset_at),
            })
            .collect())
    }
}
