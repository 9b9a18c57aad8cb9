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

/// What a failed store call means to a loop that logs it and carries on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// This instance stepped down: nothing to fix here (the lease's loop says why, once).
    Fenced,
    /// Another writer held the database, or it answered too slowly: the next round tries again.
    Busy,
    /// Anything else: the database is broken or refuses.
    Broken,
}

/// Which [`Why`] `e` is.
pub fn why(e: &anyhow::Error) -> Why {
    if is_fenced(e) {
        return Why::Fenced;
    }
    let busy = e.chain().any(|c| {
        busy(c)
            || matches!(
                c.downcast_ref::<StoreError>(),
                Some(StoreError::Busy(_) | StoreError::Timeout(_))
            )
    });
    if busy { Why::Busy } else { Why::Broken }
}

/// Logs a store failure of a loop that carries on at the level its [`Why`] deserves: a
/// fenced write at info (a failover must not fill the journal with one error per org), a busy
/// or slow database as a warning, anything else as an error. The first argument is the
/// `anyhow::Error`; the rest is what `tracing::error!` takes.
#[macro_export]
macro_rules! log_store_failure {
    ($e:expr, $($arg:tt)+) => {
        match $crate::store::why($e) {
            $crate::store::Why::Fenced => tracing::info!($($arg)+),
            $crate::store::Why::Busy => tracing::warn!($($arg)+),
            $crate::store::Why::Broken => tracing::error!($($arg)+),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_told_by_what_it_is_however_deep() {
        let fenced = anyhow::Error::from(StoreError::Fenced(Fenced { why: "test" })).context("checking alpha");
        assert_eq!(why(&fenced), Why::Fenced);
        let slow = anyhow::Error::from(StoreError::Timeout(Duration::from_secs(30))).context("checking alpha");
        assert_eq!(why(&slow), Why::Busy);
        let busy = anyhow::Error::from(StoreError::Busy(anyhow::anyhow!("database is locked")));
        assert_eq!(why(&busy), Why::Busy);
        assert_eq!(why(&anyhow::anyhow!("disk I/O error")), Why::Broken);
    }
}
