//! tokio-cron-scheduler as a ticker, and only that. Each cron job just sends its tick on a
//! channel; the owner decides what is due from its own record (the database for reports, a
//! monotonic fallback for retention), so a tick that comes late, twice or never (its open bug
//! #113: repeated jobs can stop for good after its loop falls behind) costs a delay, never a
//! duplicate or a missed report. Its loop sleeps 500 ms at a time on tokio's clock and compares
//! against the system's wall clock: schedules are in UTC, and tests drive it with real time.

use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

/// Ticks queued beyond this are dropped: a tick is a hint, and the owner catches up anyway.
const QUEUE: usize = 16;

pub struct CronTicker {
    scheduler: JobScheduler,
}

impl std::fmt::Debug for CronTicker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CronTicker")
    }
}

impl CronTicker {
    /// Starts one job per `(cron, tick)` (six fields, UTC); each firing sends its tick.
    pub async fn start<T>(jobs: &[(String, T)]) -> Result<(CronTicker, mpsc::Receiver<T>), JobSchedulerError>
    where
        T: Clone + Send + Sync + 'static,
    {
        let (tx, rx) = mpsc::channel(QUEUE);
        let scheduler = JobScheduler::new().await?;
        for (cron, tick) in jobs {
            let (tx, tick) = (tx.clone(), tick.clone());
            let job = Job::new_async(cron.as_str(), move |_, _| {
                // Never waits: the scheduler's loop must not fall behind because of us.
                let _ = tx.try_send(tick.clone());
                Box::pin(async {})
            })?;
            scheduler.add(job).await?;
        }
        scheduler.start().await?;
        Ok((CronTicker { scheduler }, rx))
    }

    /// Stops its loop (it ends within its next 500 ms sleep). Its actor tasks stay behind, idle:
    /// they hold senders of their own channels, so they never see them close. That is a few
    /// idle tasks per ticker; tickers are made per leading generation (a start, a reload, a
    /// takeover) and when a guard finds one stuck, so they stay few.
    pub async fn stop(mut self) {
        if let Err(e) = self.scheduler.shutdown().await {
            tracing::debug!("the cron ticker did not shut down cleanly: {e}");
        }
    }
}

/// Receives the next tick of `ticker`, or waits forever when there is none.
pub async fn next<T>(ticker: &mut Option<(CronTicker, mpsc::Receiver<T>)>) -> T {
    match ticker.as_mut() {
        Some((_, rx)) => match rx.recv().await {
            Some(t) => t,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
