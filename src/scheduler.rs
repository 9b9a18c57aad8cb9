//! Decides *when* each org is checked; knows nothing about HTTP or SQL.
//!
//! Every org has one next deadline in a min-heap; the loop sleeps until the earliest (plus
//! [`coalescing`], so that checks due close together start at one wake-up), starts the
//! due checks (bounded by a semaphore, never two of one org at once) and computes each org's next
//! slot. A late wake-up therefore costs one late check, never the schedule itself (the failure
//! mode of tokio-cron-scheduler's issue #113, whose job runner we do not use; we use the same
//! cron grammar through `croner`).
//!
//! Deadlines live on tokio's monotonic clock; the wall clock (`Clock`) only places the slots
//! (see `slots`). An NTP step, in either direction, therefore neither stops nor bunches checks.
//!
//! Interval schedules are spread over the interval by a stable per-org offset, so 1,000 orgs
//! polled every minute make about 17 requests a second, not 1,000 at second zero.
//!
//! A check that panics is recovered: its org is free to be checked again at its next slot, and
//! the panic is reported to the caller's `on_panic` (which logs and counts it).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, later};
use crate::config::{OrgId, Schedule};

mod slots;

use slots::Due;
pub use slots::{MAX_NOT_BEFORE, first_due, next_due};

/// The loop wakes at least this often, so that its heartbeat says it is alive.
const MAX_SLEEP: Duration = Duration::from_secs(5);

/// Checks that fall due within this long of the earliest one start together, at one wake-up of
/// the loop: at most this late, never early, and the next slot still counts from the slot, so
/// the schedule does not drift. 10,000 orgs a minute fall due every 6 ms on average; a wake-up
/// for each was a large part of a check's CPU, and their answers, arriving together too, share
/// the runtime's wake-ups as well. Measured at 1,000 orgs / 10 s (BENCHMARKS.md): 0 ms -> 0.28,
/// 20 ms -> 0.18, 50 ms -> 0.12, 100 ms -> 0.10 ms of CPU per check; on a later machine 100 ms
/// -> 0.077, 250 ms -> 0.068, 500 ms -> 0.062. A quarter of a second is nothing next to an
/// interval of seconds or minutes, or a cron slot's second; [`coalescing`] keeps it to a tenth
/// of the shortest `every`.
pub const COALESCE: Duration = Duration::from_millis(250);

/// The coalescing window for `schedules`: [`COALESCE`], or a tenth of the shortest `every` when
/// that is less, so that no interval check starts later than a tenth of its interval after its
/// slot. Cron lines do not lower it: their slots are whole seconds, so even `* * * * * *` waits
/// at most a quarter of its second.
pub fn coalescing<'a>(schedules: impl IntoIterator<Item = &'a Schedule>) -> Duration {
    schedules
        .into_iter()
        .filter_map(|s| match s {
            Schedule::Every(d) => Some(*d / 10),
            // Cron slots fall on whole seconds, the same second for every org that shares a
            // line: they gather without help.
            Schedule::Cron(_) => None,
        })
        .fold(COALESCE, Duration::min)
}

/// When the scheduler loop last ran, on the monotonic clock; `/healthz` and the systemd watchdog
/// read it.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat(Arc<Mutex<Option<Instant>>>);

impl Heartbeat {
    fn beat(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// How long ago the loop last ran; `None` before it first ran.
    pub fn age(&self) -> Option<Duration> {
        let last = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        last.map(|t| Instant::now().saturating_duration_since(t))
    }
}

/// What a finished check tells the scheduler: wait at least this long before the next one
/// (the server's `Retry-After`; at most [`MAX_NOT_BEFORE`] is honoured).
pub type NotBefore = Option<Duration>;

/// How the loop runs, beyond what it runs.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// At most this many checks at once.
    pub concurrency: usize,
    /// How long to wait at shutdown for the checks already running.
    pub grace: Duration,
    pub heartbeat: Heartbeat,
    /// The wall clock, which places interval offsets and cron slots.
    pub clock: Clock,
}

/// Runs `check(i)` for each of `schedules` on its schedule until `shutdown`. A check task that
/// panics is reported to `on_panic(i, message)`, and its org stays on its schedule. Returns when
/// the checks that were running have finished, or after `settings.grace`, abandoning them (an
/// unfinished check has committed nothing).
pub async fn run<F, Fut, P>(
    schedules: Vec<(OrgId, Schedule)>,
    settings: SchedulerSettings,
    check: F,
    on_panic: P,
    shutdown: CancellationToken,
) where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = NotBefore> + Send + 'static,
    P: Fn(usize, &str),
{
    let SchedulerSettings {
        concurrency,
        grace,
        heartbeat,
        clock,
    } = settings;
    let window = coalescing(schedules.iter().map(|(_, s)| s));
    let mut board = Board::new(&schedules, concurrency, clock);

    loop {
        heartbeat.beat();
        let wake = board.wake(window);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(joined) = board.tasks.join_next_with_id() => board.on_finished(joined, &on_panic),
            _ = tokio::time::sleep_until(wake) => board.start_due(&check),
        }
    }
    board.drain(grace, &on_panic).await;
}

/// The loop's state: each org's next slot, the heap that orders them, and the checks running.
struct Board<'a> {
    schedules: &'a [(OrgId, Schedule)],
    clock: Clock,
    due: Vec<Option<Due>>,
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    running: Vec<bool>,
    permits: Arc<Semaphore>,
    tasks: JoinSet<(usize, NotBefore)>,
    /// Which org each task checks, so that a panicked task (which returns nothing) can be named.
    orgs_of_tasks: HashMap<tokio::task::Id, usize>,
}

impl<'a> Board<'a> {
    /// Each org's first slot; an org whose schedule has none is said once and never checked.
    fn new(schedules: &'a [(OrgId, Schedule)], concurrency: usize, clock: Clock) -> Board<'a> {
        let (mono, wall) = (Instant::now(), clock.now());
        let due: Vec<Option<Due>> = schedules
            .iter()
            .map(|(org, schedule)| {
                let first = slots::first(schedule, org, mono, wall);
                if first.is_none() {
                    tracing::warn!(%org, "the schedule ({schedule}) has no slot to come; this org is not checked");
                }
                first
            })
            .collect();
        let heap = due
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.map(|d| Reverse((d.at, i))))
            .collect();
        Board {
            schedules,
            clock,
            due,
            heap,
            running: vec![false; schedules.len()],
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            tasks: JoinSet::new(),
            orgs_of_tasks: HashMap::new(),
        }
    }

    /// When the loop wakes next: at the earliest slot plus `window`, and at least every
    /// [`MAX_SLEEP`].
    fn wake(&self, window: Duration) -> Instant {
        let now = Instant::now();
        match self.heap.peek() {
            Some(Reverse((t, _))) => later(*t, window).min(later(now, MAX_SLEEP)),
            None => later(now, MAX_SLEEP),
        }
    }

    /// A check finished: its org is free again, and its next slot moves when it asked to wait.
    fn on_finished(
        &mut self,
        joined: Result<(tokio::task::Id, (usize, NotBefore)), JoinError>,
        on_panic: &impl Fn(usize, &str),
    ) {
        let Some((i, not_before)) = finished(joined, &mut self.orgs_of_tasks, on_panic) else {
            return;
        };
        self.running[i] = false;
        let (Some(wait), Some(current)) = (not_before, self.due[i]) else {
            return;
        };
        let schedules = self.schedules;
        if wait > MAX_NOT_BEFORE {
            tracing::warn!(org = %schedules[i].0, "asked to wait {wait:?} before the next check; waiting {MAX_NOT_BEFORE:?}");
        }
        if let Some(moved) = slots::postponed(&schedules[i].1, current, wait, Instant::now(), self.clock.now()) {
            self.due[i] = Some(moved);
            self.heap.push(Reverse((moved.at, i)));
        }
    }

    /// Starts the checks whose slots have come, each org's next slot placed as it starts.
    fn start_due<F, Fut>(&mut self, check: &F)
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = NotBefore> + Send + 'static,
    {
        let schedules = self.schedules;
        let (mono, wall) = (Instant::now(), self.clock.now());
        while let Some(Reverse((t, i))) = self.heap.peek().copied() {
            if t > mono {
                break;
            }
            self.heap.pop();
            let Some(slot) = self.due[i].filter(|d| d.at == t) else {
                continue; // superseded by a Retry-After postponement
            };
            self.due[i] = slots::after(&schedules[i].1, slot, mono, wall);
            match self.due[i] {
                Some(next) => self.heap.push(Reverse((next.at, i))),
                None => {
                    tracing::warn!(org = %schedules[i].0, "the schedule has no slot to come; this was the last check")
                }
            }
            if self.running[i] {
                tracing::warn!(org = %schedules[i].0, "previous check still running; skipping this slot");
                continue;
            }
            self.running[i] = true;
            let permits = self.permits.clone();
            let fut = check(i);
            let task = self.tasks.spawn(async move {
                // Waiting here, not in the loop, keeps the loop on time when checks are slow.
                let _permit = permits.acquire_owned().await;
                (i, fut.await)
            });
            self.orgs_of_tasks.insert(task.id(), i);
        }
    }

    /// Lets the checks already started finish (each is bounded by the poll timeout), but no
    /// longer than `grace`.
    async fn drain(mut self, grace: Duration, on_panic: &impl Fn(usize, &str)) {
        let drain = async {
            while let Some(joined) = self.tasks.join_next_with_id().await {
                finished(joined, &mut self.orgs_of_tasks, on_panic);
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!("checks still running after {grace:?}; abandoning them");
            self.tasks.abort_all();
        }
    }
}

/// Which org a finished check task was for, and what it returned. A task that panicked is
/// reported to `on_panic` with its org, and counts as a check that asked for nothing; `None`
/// only for a task aborted at shutdown.
fn finished(
    joined: Result<(tokio::task::Id, (usize, NotBefore)), JoinError>,
    orgs_of_tasks: &mut HashMap<tokio::task::Id, usize>,
    on_panic: &impl Fn(usize, &str),
) -> Option<(usize, NotBefore)> {
    match joined {
        Ok((id, result)) => {
            orgs_of_tasks.remove(&id);
            Some(result)
        }
        Err(e) => {
            let i = orgs_of_tasks.remove(&e.id());
            if let (Some(i), true) = (i, e.is_panic()) {
                let payload = e.into_panic();
                let message = payload
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(no message)");
                on_panic(i, message);
                // The org is free again; its next slot is already in the heap.
                return Some((i, None));
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chrono::{DateTime, Utc};

    use super::*;
    use crate::config::CronExpr;

    fn org(n: u8) -> OrgId {
        OrgId::parse(&format!("{:024x}", n)).unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn settings(clock: &Clock) -> SchedulerSettings {
        SchedulerSettings {
            concurrency: 4,
            grace: Duration::from_secs(10),
            heartbeat: Heartbeat::default(),
            clock: clock.clone(),
        }
    }

    /// Which org was checked when: (org index, tokio time, wall time).
    type Log = Arc<Mutex<Vec<(usize, Instant, DateTime<Utc>)>>>;

    /// A check that records itself in `log` and returns what `answer(i, n)` says for the n-th
    /// check (from 0) of org i.
    fn recording<A>(
        log: &Log,
        clock: &Clock,
        answer: A,
    ) -> impl Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = NotBefore> + Send>> + use<A>
    where
        A: Fn(usize, usize) -> NotBefore + Send + Sync + 'static,
    {
        let (log, clock, answer) = (log.clone(), clock.clone(), Arc::new(answer));
        move |i| {
            let (log, clock, answer) = (log.clone(), clock.clone(), answer.clone());
            Box::pin(async move {
                let n = {
                    let mut log = log.lock().unwrap();
                    let n = log.iter().filter(|c| c.0 == i).count();
                    log.push((i, Instant::now(), clock.now()));
                    n
                };
                answer(i, n)
            })
        }
    }

    fn checks_of(log: &Log, i: usize) -> Vec<(Instant, DateTime<Utc>)> {
        log.lock()
            .unwrap()
            .iter()
            .filter(|c| c.0 == i)
            .map(|c| (c.1, c.2))
            .collect()
    }

    /// The longest time without a check, from `from` until now.
    fn longest_gap(checks: &[(Instant, DateTime<Utc>)], from: Instant) -> Duration {
        let mut previous = from;
        let mut longest = Duration::ZERO;
        for (at, _) in checks.iter().filter(|c| c.0 >= from) {
            longest = longest.max(at.duration_since(previous));
            previous = *at;
        }
        longest.max(Instant::now().duration_since(previous))
    }

    #[tokio::test(start_paused = true)]
    async fn never_two_checks_of_one_org_at_once_and_concurrency_is_bounded() {
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
        let settings = SchedulerSettings {
            concurrency: 2,
            ..settings(&Clock::simulated(at("2026-11-29T08:00:00Z")))
        };
        let run = run(schedules, settings, check, |_, _| {}, shutdown);
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

    #[test]
    fn the_coalescing_window_is_a_quarter_second_or_a_tenth_of_the_shortest_interval() {
        let every = |s: u64| Schedule::Every(Duration::from_secs(s));
        let cron = Schedule::Cron(Box::new(crate::config::CronExpr::parse("0 */5 * * * *").unwrap()));
        assert_eq!(coalescing([&every(60), &every(10)]), Duration::from_millis(250));
        assert_eq!(coalescing([&cron]), Duration::from_millis(250));
        assert_eq!(coalescing([&every(60), &cron, &every(2)]), Duration::from_millis(200));
        assert_eq!(coalescing([&every(1)]), Duration::from_millis(100));
        assert_eq!(coalescing([]), COALESCE);
    }

    #[tokio::test(start_paused = true)]
    async fn checks_due_close_together_start_together_never_early_and_keep_their_slots() {
        let clock = Clock::simulated(at("2026-11-29T08:00:00Z"));
        let every = Duration::from_secs(1);
        // 200 orgs a second: one falls due every 5 ms on average.
        let schedules: Vec<_> = (0..200).map(|n| (org(n), Schedule::Every(every))).collect();
        let (t0, wall0) = (Instant::now(), clock.now());
        let firsts: Vec<Instant> = schedules
            .iter()
            .map(|(o, s)| slots::first(s, o, t0, wall0).unwrap().at)
            .collect();
        let log: Log = Arc::default();
        let shutdown = CancellationToken::new();
        let settings = SchedulerSettings {
            concurrency: 200,
            ..settings(&clock)
        };
        let running = tokio::spawn(run(
            schedules,
            settings,
            recording(&log, &clock, |_, _| None),
            |_, _| {},
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(10)).await;
        shutdown.cancel();
        running.await.unwrap();

        // Every check of every org comes in its own slot: not before it, at most a tenth of the
        // interval after.
        let window = coalescing([&Schedule::Every(every)]);
        assert_eq!(window, Duration::from_millis(100));
        for (i, first) in firsts.iter().enumerate() {
            let checks = checks_of(&log, i);
            assert!(checks.len() >= 9, "org {i}: {} checks in 10 s", checks.len());
            for (k, (started, _)) in checks.iter().enumerate() {
                let slot = *first + every * k as u32;
                assert!(
                    *started >= slot && *started <= slot + window,
                    "org {i}, check {k}: started {:?} after its slot",
                    started.checked_duration_since(slot)
                );
            }
        }
        // ... and the loop woke far less often than once per check.
        let log = log.lock().unwrap();
        let wake_ups: std::collections::HashSet<Instant> = log.iter().map(|c| c.1).collect();
        assert!(
            wake_ups.len() * 2 < log.len(),
            "{} checks started at {} distinct instants",
            log.len(),
            wake_ups.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wall_clock_step_back_stops_no_check() {
        let clock = Clock::simulated(at("2026-11-29T08:00:00Z"));
        let schedules = vec![
            (org(1), Schedule::Every(Duration::from_secs(60))),
            (
                org(2),
                Schedule::Cron(Box::new(CronExpr::parse("0 */5 * * * *").unwrap())),
            ),
        ];
        let log: Log = Arc::default();
        let shutdown = CancellationToken::new();
        let settings = settings(&clock);
        let heartbeat = settings.heartbeat.clone();
        let running = tokio::spawn(run(
            schedules,
            settings,
            recording(&log, &clock, |_, _| None),
            |_, _| {},
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(600)).await;
        // NTP steps the wall clock back by an hour.
        clock.step(chrono::Duration::hours(-1));
        let stepped = Instant::now();
        // Half a minute past the 07:40 mark, so that its check is not a tie with the wake-up.
        tokio::time::sleep(Duration::from_secs(1830)).await;
        assert!(heartbeat.age().is_some_and(|age| age <= MAX_SLEEP));
        shutdown.cancel();
        running.await.unwrap();

        // The interval org goes on every minute, the cron org every five minutes.
        let every = checks_of(&log, 0);
        let gap = longest_gap(&every, stepped);
        assert!(
            gap <= Duration::from_secs(60),
            "no check of the interval org for {gap:?}"
        );
        let cron = checks_of(&log, 1);
        let gap = longest_gap(&cron, stepped);
        assert!(gap <= Duration::from_secs(300), "no check of the cron org for {gap:?}");
        // What is recorded follows the stepped wall clock.
        let (_, last) = every.last().unwrap();
        assert!(*last < at("2026-11-29T08:00:00Z"), "{last}");
        // The cron org is checked on the five-minute marks of the stepped wall clock, once each.
        let after: Vec<_> = cron.iter().filter(|c| c.0 > stepped).map(|c| c.1).collect();
        assert!(after.len() >= 6, "{after:?}");
        for (w, pair) in after.iter().zip(after.iter().skip(1)) {
            assert_eq!(*pair - *w, chrono::Duration::minutes(5), "{after:?}");
        }
        assert!(after.iter().all(|t| t.timestamp() % 300 == 0), "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wall_clock_step_forward_bunches_no_checks() {
        let clock = Clock::simulated(at("2026-11-29T08:00:00Z"));
        let schedules = vec![(org(1), Schedule::Every(Duration::from_secs(60)))];
        let log: Log = Arc::default();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(run(
            schedules,
            settings(&clock),
            recording(&log, &clock, |_, _| None),
            |_, _| {},
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(600)).await;
        clock.step(chrono::Duration::hours(1));
        tokio::time::sleep(Duration::from_secs(600)).await;
        shutdown.cancel();
        running.await.unwrap();
        // One check a minute, before and after the step: the hour skipped is not caught up.
        let checks = checks_of(&log, 0);
        assert!(
            (20..=21).contains(&checks.len()),
            "{} checks in 20 minutes",
            checks.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_check_is_recovered_and_its_org_stays_on_schedule() {
        let clock = Clock::simulated(at("2026-11-29T08:00:00Z"));
        let schedules: Vec<_> = (0..3)
            .map(|n| (org(n), Schedule::Every(Duration::from_secs(60))))
            .collect();
        let log: Log = Arc::default();
        let check = recording(&log, &clock, |i, n| {
            if i == 0 && n == 0 {
                panic!("boom in the first check of org 0");
            }
            None
        });
        let panics: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
        let on_panic = {
            let panics = panics.clone();
            move |i: usize, message: &str| panics.lock().unwrap().push((i, message.to_owned()))
        };
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(run(schedules, settings(&clock), check, on_panic, shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(600)).await;
        shutdown.cancel();
        running.await.expect("the scheduler survives a panicking check");

        for i in 0..3 {
            let checks = checks_of(&log, i);
            assert!(
                checks.len() >= 10,
                "org {i} was checked {} times in 10 minutes",
                checks.len()
            );
            let gap = longest_gap(&checks, checks[0].0);
            assert!(gap <= Duration::from_secs(60), "org {i}: no check for {gap:?}");
        }
        assert_eq!(
            *panics.lock().unwrap(),
            [(0, "boom in the first check of org 0".to_owned())]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_not_before_is_clamped_and_panics_nothing() {
        let clock = Clock::simulated(at("2026-11-29T08:00:00Z"));
        let schedules: Vec<_> = (0..2)
            .map(|n| (org(n), Schedule::Every(Duration::from_secs(3600))))
            .collect();
        let log: Log = Arc::default();
        // Org 0's server answers `Retry-After: 10000000000000` every time.
        let check = recording(&log, &clock, |i, _| {
            (i == 0).then_some(Duration::from_secs(10_000_000_000_000))
        });
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(run(schedules, settings(&clock), check, |_, _| {}, shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(3 * 86_400)).await;
        shutdown.cancel();
        running.await.expect("the scheduler survives a huge Retry-After");
        // The other org was never disturbed; the one told to wait "forever" waited a day.
        assert!(checks_of(&log, 1).len() >= 72);
        let waited = checks_of(&log, 0);
        assert_eq!(waited.len(), 3, "{waited:?}");
        for pair in waited.windows(2) {
            let gap = pair[1].0.duration_since(pair[0].0);
            assert!(gap >= MAX_NOT_BEFORE && gap <= MAX_NOT_BEFORE + Duration::from_secs(3600));
        }
    }
}
