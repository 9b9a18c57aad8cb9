//! What a store call can fail with, typed so that callers tell a fenced write (this instance no
//! longer leads: stop, quietly) from a busy database (try again) and from a broken one.

use std::time::Duration;

pub use super::fence::Fenced;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A write refused because this instance no longer leads (PostgreSQL).
    #[error(transparent)]
    Fenced(#[from] Fenced),
    /// The database is held by another writer (SQLite's lock, a PostgreSQL lock timeout, no
    /// free connection) for longer than it waits.
    #[error(transparent)]
    Busy(anyhow::Error),
    /// No answer within the store's deadline (see [`super::Store::with_deadline`]).
    #[error("the database did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error(transparent)]
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StoreError {
    fn from(e: anyhow::Error) -> StoreError {
        let e = match e.downcast::<StoreError>() {
            Ok(typed) => return typed,
            Err(e) => e,
        };
        let e = match e.downcast::<Fenced>() {
            Ok(fenced) => return StoreError::Fenced(fenced),
            Err(e) => e,
        };
        if e.chain().any(busy) {
            StoreError::Busy(e)
        } else {
            StoreError::Other(e)
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        anyhow::Error::from(e).into()
    }
}

/// Whether `e` says that another writer holds what this one waited for.
fn busy(e: &(dyn std::error::Error + 'static)) -> bool {
    match e.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::PoolTimedOut) => true,
        // SQLITE_BUSY and SQLITE_LOCKED (with their extended codes); PostgreSQL's
        // lock_not_available (lock_timeout).
        Some(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("5" | "6" | "261" | "262" | "517" | "55P03"))
        }
        _ => false,
    }
}

/// Whether `e` is (or was caused by) a write refused because this instance no longer leads.
pub fn is_fenced(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.is::<Fenced>() || matches!(c.downcast_ref::<StoreError>(), Some(StoreError::Fenced(_))))
}
