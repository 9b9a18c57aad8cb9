//! Decides *when* each org is checked; knows nothing about HTTP or SQL.
//!
//! Every org has one next-due time in a min-heap; the loop sleeps until the earliest, starts the
//! due checks (bounded by a semaphore, never two of one org at once) and computes each org's next
//! slot from the current time. A late wake-up therefore costs one late check, never the
//! schedule itself (the failure mode of tokio-cron-scheduler's issue #113, whose job runner we do
//! not use; we use the same cron grammar through `croner`).
//!
//! Interval schedules are spread over the interval by a stable per-org offset, so 1,000 orgs
//! polled every minute make about 17 requests a second, not 1,000 at second zero.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{OrgId, Schedule};

/// The first slot at or after `now` for an org.
pub fn first_due(schedule: &Schedule, org: &OrgId, now: DateTime<Utc>) -> DateTime<Utc> {
    match schedule {
        Schedule::Every(every) => {
            let period = every.as_millis().max(1) as i64;
            let offset = (stable_hash(org.as_str()) % period as u64) as i64;
            let t = now.timestamp_millis();
            // The smallest slot = offset + k * period that is >= now.
            let k = (t - offset + period - 1).div_euclid(period);
            DateTime::from_timestamp_millis(offset + k * period).unwrap_or(now)
        }
        Schedule::Cron(cron) => cron.next_after(now - chrono::Duration::milliseconds(1)).unwrap_or(now),
    }
}

/// The next slot strictly after `after`.
pub fn next_due(schedule: &Schedule, org: &OrgId, after: DateTime<Utc>) -> DateTime<Utc> {
    first_due(schedule, org, after + chrono::Duration::milliseconds(1))
}

/// FNV-1a: stable across runs and versions, unlike `std`'s randomly seeded hasher.
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The loop wakes at least this often, so that its heartbeat says it is alive.
const MAX_SLEEP: Duration = Duration::from_secs(5);

/// When the scheduler loop last ran (Unix milliseconds); `/healthz` and the systemd watchdog
/// read it.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat(Arc<std::sync::atomic::AtomicI64>);

impl Heartbeat {
    fn beat(&self) {
        self.0
            .store(Utc::now().timestamp_millis(), std::sync::atomic::Ordering::Relaxed);
    }

    /// How long ago the loop last ran; `None` before it first ran.
    pub fn age(&self) -> Option<Duration> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis((Utc::now().timestamp_millis() - ms).max(0) as u64)),
        }
    }
}

/// What a finished check tells the scheduler: wait at least this long before the next one
/// (the server's `Retry-After`).
pub type NotBefore = Option<Duration>;

/// Runs `check(i)` for each of `schedules` on its schedule until `shutdown`, with at most
/// `concurrency` checks at once. Returns when the checks that were running have finished, or
/// after `grace`, abandoning them (an unfinished check has committed nothing).
pub async fn run<F, Fut>(
    schedules: Vec<(OrgId, Schedule)>,
    concurrency: usize,
    check: F,
    heartbeat: Heartbeat,
    shutdown: CancellationToken,
    grace: Duration,
) where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = NotBefore> + Send + 'static,
{
    let now = Utc::now();
    let mut due: Vec<DateTime<Utc>> = schedules.iter().map(|(org, s)| first_due(s, org, now)).collect();
    let mut heap: BinaryHeap<Reverse<(DateTime<Utc>, usize)>> =
        due.iter().enumerate().map(|(i, t)| Reverse((*t, i))).collect();
    let mut running = vec![false; schedules.len()];
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks: JoinSet<(usize, NotBefore)> = JoinSet::new();

    loop {
        heartbeat.beat();
        let sleep_for = heap
            .peek()
            .map(|Reverse((t, _))| (*t - Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(joined) = tasks.join_next() => {
                match joined {
                    Ok((i, not_before)) => {
                        running[i] = false;
                        if let Some(wait) = not_before {
                            let earliest = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                            if due[i] < earliest {
                                due[i] = next_due(&schedules[i].1, &schedules[i].0, earliest);
                                heap.push(Reverse((due[i], i)));
                            }
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "a check task panicked"),
                }
            }
            _ = tokio::time::sleep(sleep_for) => {
                let now = Utc::now();
                while let Some(Reverse((t, i))) = heap.peek().copied() {
                    if t > now {
                        break;
                    }
                    heap.pop();
                    if t != due[i] {
                        continue; // superseded by a Retry-After postponement
                    }
                    due[i] = next_due(&schedules[i].1, &schedules[i].0, now);
                    heap.push(Reverse((due[i], i)));
                    if running[i] {
                        tracing::warn!(org = %schedules[i].0, "previous check still running; skipping this slot");
                        continue;
                    }
                    running[i] = true;
                    let permits = permits.clone();
                    let fut = check(i);
                    tasks.spawn(async move {
                        // Waiting here, not in the loop, keeps the loop on time when checks are slow.
                        let _permit = permits.acquire_owned().await;
                        (i, fut.await)
                    });
                }
            }
        }
    }
    // Let the checks already started finish (each is bounded by the poll timeout), but no longer
    // than the grace period.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!("checks still running after {grace:?}; abandoning them");
        tasks.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CronExpr;

    fn org(n: u8) -> OrgId {
        OrgId::parse(&format!("{:024x}", n)).unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn interval_slots_are_stable_and_spread() {
        let every = Schedule::Every(Duration::from_secs(60));
        let now = at("2026-11-29T08:00:00Z");
        let mut seconds = std::collections::HashSet::new();
        for n in 0..50 {
            let first = first_due(&every, &org(n), now);
            assert!(first >= now && first < now + chrono::Duration::seconds(60));
            // The same org lands on the same offset in every minute and on every start.
            let again = first_due(&every, &org(n), now + chrono::Duration::seconds(600));
            assert_eq!((again - first).num_milliseconds() % 60_000, 0);
            assert_eq!(next_due(&every, &org(n), first), first + chrono::Duration::seconds(60));
            seconds.insert((first - now).num_seconds());
        }
        assert!(
            seconds.len() > 20,
            "50 orgs fell on only {} distinct seconds",
            seconds.len()
        );
    }

    #[test]
    fn a_late_wake_up_skips_to_the_next_future_slot() {
        let every = Schedule::Every(Duration::from_secs(60));
        let first = first_due(&every, &org(1), at("2026-11-29T08:00:00Z"));
        // Woken ten minutes late: the next slot is within a minute of now, not in the past.
        let late = first + chrono::Duration::seconds(600) + chrono::Duration::milliseconds(1);
        let next = next_due(&every, &org(1), late);
        assert!(next > late && next <= late + chrono::Duration::seconds(60));
    }

    #[test]
    fn cron_slots_follow_the_expression_in_utc() {
        let cron = Schedule::Cron(Box::new(CronExpr::parse("0 */5 * * * *").unwrap()));
        assert_eq!(
            first_due(&cron, &org(1), at("2026-11-29T08:00:00Z")),
            at("2026-11-29T08:00:00Z")
        );
        assert_eq!(
            first_due(&cron, &org(1), at("2026-11-29T08:00:01Z")),
            at("2026-11-29T08:05:00Z")
        );
        assert_eq!(
            next_due(&cron, &org(1), at("2026-11-29T08:05:00Z")),
            at("2026-11-29T08:10:00Z")
        );
    }

    #[tokio::test]
    async fn never_two_checks_of_one_org_at_once_and_concurrency_is_bounded() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let every = Schedule::Every(Duration::from_secs(1));
        let schedules: Vec<_> = (0..6).map(|n| (org(n), every.clone())).collect();
        let active = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let per_org: Arc<Vec<AtomicUsize>> = Arc::new((0..6).map(|_| AtomicUsize::new(0)).collect());
        let per_org_peak = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let check = {
            let (active, peak, started, shutdown) = (active.clone(), peak.clone(), started.clone(), shutdown.clone());
            let (per_org, per_org_peak) = (per_org.clone(), per_org_peak.clone());
            move |i: usize| {
                let (active, peak, started, shutdown) =
                    (active.clone(), peak.clone(), started.clone(), shutdown.clone());
                let (per_org, per_org_peak) = (per_org.clone(), per_org_peak.clone());
                async move {
                    let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    per_org_peak.fetch_max(per_org[i].fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    // Each check outlives its interval, so slots must be skipped, not stacked.
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    active.fetch_sub(1, Ordering::SeqCst);
                    per_org[i].fetch_sub(1, Ordering::SeqCst);
                    if started.fetch_add(1, Ordering::SeqCst) + 1 >= 8 {
                        shutdown.cancel();
                    }
                    None
                }
            }
        };
        let run = run(
            schedules,
            2,
            check,
            Heartbeat::default(),
            shutdown,
            Duration::from_secs(10),
        );
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the scheduler stops after shutdown");
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(
            per_org_peak.load(Ordering::SeqCst),
            1,
            "two checks of one org overlapped"
        );
        assert_eq!(
            active.load(Ordering::SeqCst),
            0,
            "run() returned before its checks finished"
        );
    }
}
