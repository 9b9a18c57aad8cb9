//! Retention: what the database lets go of once it is older than the config's `retention`, by
//! the wall clock. [`run_once`] is one step, which the loop and the tests call; [`run`] is the
//! loop: at start, then daily at [`RETENTION_CRON`] from tokio-cron-scheduler, with a fallback
//! on tokio's clock for when the scheduler stops firing (its bug #113).

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::cron::{self, CronTicker};
use crate::store::{Pruned, Store};

/// When retention runs each day (UTC), besides at start.
pub const RETENTION_CRON: &str = "0 0 4 * * *";

/// Runs retention this long after the last run if the cron scheduler did not.
const FALLBACK: Duration = Duration::from_secs(25 * 3600);

/// Prunes failed checks, finished deliveries and delivered reports older than `keep` at `now`.
/// A retention too long to subtract from `now` keeps everything.
pub async fn run_once(store: &Store, keep: Duration, now: DateTime<Utc>) -> anyhow::Result<Pruned> {
    let before = chrono::Duration::from_std(keep)
        .ok()
        .and_then(|keep| now.checked_sub_signed(keep));
    match before {
        Some(before) => Ok(store.prune(before).await?),
        None => Ok(Pruned::default()),
    }
}

/// Runs [`run_once`] with the current config's retention (`keep`) at start and then daily until
/// `stop`.
pub async fn run(store: Store, keep: watch::Receiver<Duration>, clock: Clock, stop: CancellationToken) {
    let jobs = [(RETENTION_CRON.to_owned(), ())];
    let mut ticker = start(&jobs).await;
    loop {
        let keep = *keep.borrow();
        match run_once(&store, keep, clock.now()).await {
            Ok(pruned) if pruned == Pruned::default() => {}
            Ok(Pruned {
                failures,
                deliveries,
                reports,
            }) => tracing::info!(failures, deliveries, reports, "pruned rows older than the retention"),
            Err(e) => crate::log_store_failure!(&e, "retention: {e:#}"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            () = cron::next(&mut ticker) => {}
            _ = tokio::time::sleep(FALLBACK) => {
                tracing::warn!("the cron scheduler did not run retention for 25h; ran it and started the scheduler again");
                if let Some((old, _)) = ticker.take() {
                    old.stop().await;
                }
                ticker = start(&jobs).await;
            }
        }
    }
    if let Some((ticker, _)) = ticker {
        ticker.stop().await;
    }
}

/// The daily tick, or `None` (and the fallback alone) when the cron scheduler cannot start.
async fn start(jobs: &[(String, ())]) -> Option<(CronTicker, tokio::sync::mpsc::Receiver<()>)> {
    CronTicker::start(jobs)
        .await
        .map_err(|e| tracing::error!("cannot start the cron scheduler for retention: {e}; it runs every 25h instead"))
        .ok()
}
