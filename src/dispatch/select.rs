//! Which pending rows of a channel go out next: the pure rule, with its tests.
//!
//! Rows go out in event order. A row waiting for its retry holds back its own org's later rows
//! always (per-org order), and every later row of the channel while it is within the hold: a
//! short outage keeps the global order, and the failed batch is retried together. Past the hold
//! (`HOLD_ATTEMPTS` failed attempts, or `HOLD_TIME` since its first failure here) it stops
//! holding back other orgs, and is sent alone whenever it is due, so that a message the
//! receiver keeps refusing never takes others down with it (nor does its `Retry-After`, which
//! then delays only that row). Rows past the hold are what makes a channel "blocked".

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::retry::{HOLD_ATTEMPTS, HOLD_TIME, RetryPolicy};
use crate::store::Pending;

/// What this process knows about rows beyond the database.
#[derive(Debug, Default)]
pub struct Schedule {
    /// Retries this process scheduled, on the monotonic clock: outbox id -> due.
    pub retry_at: HashMap<i64, Instant>,
    /// When this process first saw each row failed.
    pub first_failed: HashMap<i64, Instant>,
}

impl Schedule {
    /// Forgets a row that is no longer pending.
    pub fn forget(&mut self, id: i64) {
        self.retry_at.remove(&id);
        self.first_failed.remove(&id);
    }
}

/// The rows to send now, or when to look again.
#[derive(Debug, PartialEq)]
pub struct Choice {
    pub ids: Vec<i64>,
    /// The earliest a row now held back may go (its retry, or the end of its hold).
    pub wake_at: Option<Instant>,
    /// The one row chosen is past the hold, sent alone.
    pub alone: bool,
}

/// When `row` may be tried: `None` when it is due now.
fn due_at(
    row: &Pending,
    schedule: &Schedule,
    now: DateTime<Utc>,
    mono: Instant,
    policy: &RetryPolicy,
) -> Option<Instant> {
    if row.attempts == 0 {
        // Never tried: next_attempt_at is its creation time, whatever the clock says now.
        return None;
    }
    if let Some(at) = schedule.retry_at.get(&row.outbox_id) {
        return (*at > mono).then_some(*at);
    }
    // Scheduled by an earlier process: only the wall-clock time is known. One further ahead
    // than any wait the policy makes was written before the clock stepped back: due now.
    let next = DateTime::parse_from_rfc3339(&row.next_attempt_at)
        .ok()?
        .with_timezone(&Utc);
    let ahead = (next - now).to_std().ok().filter(|d| !d.is_zero())?;
    if ahead > policy.longest_wait() {
        return None;
    }
    Some(mono.checked_add(ahead).unwrap_or(mono))
}

/// Until when a row that failed (and is within the hold) holds back the rest of its channel;
/// `None` when it is past the hold.
fn holding(row: &Pending, schedule: &Schedule, mono: Instant, hold: Duration) -> Option<Instant> {
    if row.attempts >= HOLD_ATTEMPTS {
        return None;
    }
    let first = schedule.first_failed.get(&row.outbox_id).copied().unwrap_or(mono);
    first.checked_add(hold).filter(|end| *end > mono)
}

/// The rows of `rows` that failed and are past the hold: each holds back only its own org.
pub fn past_hold<'a>(rows: &'a [Pending], schedule: &'a Schedule, mono: Instant) -> impl Iterator<Item = &'a Pending> {
    rows.iter()
        .filter(move |r| r.attempts > 0 && holding(r, schedule, mono, HOLD_TIME).is_none())
}

/// Chooses at most `limit` rows of `rows` (pending, in event order) to send together now.
pub fn choose(rows: &[Pending], schedule: &Schedule, now: DateTime<Utc>, policy: &RetryPolicy, limit: usize) -> Choice {
    choose_with_hold(rows, schedule, now, Instant::now(), policy, limit, HOLD_TIME)
}

fn choose_with_hold(
    rows: &[Pending],
    schedule: &Schedule,
    now: DateTime<Utc>,
    mono: Instant,
    policy: &RetryPolicy,
    limit: usize,
    hold: Duration,
) -> Choice {
    let mut ids = Vec::new();
    let mut alone = false;
    let mut waiting_orgs: HashSet<&str> = HashSet::new();
    let mut wake_at: Option<Instant> = None;
    let mut wake = |at: Instant| wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
    for row in rows {
        if waiting_orgs.contains(row.org_id.as_str()) {
            continue;
        }
        let held = holding(row, schedule, mono, hold);
        match due_at(row, schedule, now, mono, policy) {
            None if row.attempts > 0 && held.is_none() => {
                // Past the hold: alone, so that whatever makes it fail fails nothing else.
                if ids.is_empty() {
                    ids.push(row.outbox_id);
                    alone = true;
                }
                break;
            }
            None => {
                ids.push(row.outbox_id);
                if ids.len() >= limit {
                    break;
                }
            }
            Some(at) => {
                waiting_orgs.insert(&row.org_id);
                wake(at);
                if let Some(end) = held {
                    // Within the hold: everything after it waits too.
                    wake(end);
                    break;
                }
            }
        }
    }
    Choice { ids, wake_at, alone }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, org: &str, attempts: i64, next: DateTime<Utc>) -> Pending {
        Pending {
            outbox_id: id,
            org_id: org.into(),
            attempts,
            next_attempt_at: crate::store::ts(next),
            created_at: crate::store::ts(next),
            last_error: None,
        }
    }

    fn pick(rows: &[Pending], schedule: &Schedule, now: DateTime<Utc>) -> Vec<i64> {
        choice(rows, schedule, now).ids
    }

    fn choice(rows: &[Pending], schedule: &Schedule, now: DateTime<Utc>) -> Choice {
        choose_with_hold(
            rows,
            schedule,
            now,
            Instant::now(),
            &RetryPolicy::default(),
            100,
            HOLD_TIME,
        )
    }

    #[test]
    fn new_rows_go_together_in_order() {
        let now = Utc::now();
        let rows = [row(1, "a", 0, now), row(2, "b", 0, now), row(3, "a", 0, now)];
        assert_eq!(pick(&rows, &Schedule::default(), now), [1, 2, 3]);
    }

    #[test]
    fn a_retry_within_the_hold_holds_back_everything_after_it() {
        let now = Utc::now();
        let mut s = Schedule::default();
        s.retry_at.insert(1, Instant::now() + Duration::from_secs(5));
        s.first_failed.insert(1, Instant::now());
        let rows = [row(0, "c", 0, now), row(1, "a", 1, now), row(2, "b", 0, now)];
        let choice = choose(&rows, &s, now, &RetryPolicy::default(), 100);
        assert_eq!((choice.ids, choice.alone), (vec![0], false));
        assert!(choice.wake_at.is_some());
        // Within the hold it is not blocking: it holds everything, as an outage does.
        assert_eq!(past_hold(&rows, &s, Instant::now()).count(), 0);
    }

    #[test]
    fn past_the_hold_it_holds_back_only_its_org_and_goes_alone() {
        let now = Utc::now();
        let mut s = Schedule::default();
        s.retry_at.insert(1, Instant::now() + Duration::from_secs(5));
        let rows = [
            row(1, "a", 3, now),
            row(2, "b", 0, now),
            row(3, "a", 0, now),
            row(4, "c", 0, now),
        ];
        let others = choice(&rows, &s, now);
        assert_eq!((others.ids, others.alone), (vec![2, 4], false));
        assert_eq!(
            past_hold(&rows, &s, Instant::now())
                .map(|r| r.outbox_id)
                .collect::<Vec<_>>(),
            [1]
        );
        // Due again: alone (so that a Retry-After it gets delays only it).
        s.retry_at.insert(1, Instant::now());
        let lone = choice(&rows, &s, now);
        assert_eq!((lone.ids, lone.alone), (vec![1], true));
        let rows = [row(2, "b", 0, now), row(1, "a", 3, now), row(3, "c", 0, now)];
        let before = choice(&rows, &s, now);
        assert_eq!((before.ids, before.alone), (vec![2], false));
    }

    #[test]
    fn the_hold_also_ends_with_time() {
        let now = Utc::now();
        let mono = Instant::now();
        let mut s = Schedule::default();
        s.retry_at.insert(1, mono + Duration::from_secs(60));
        s.first_failed.insert(1, mono);
        let rows = [row(1, "a", 1, now), row(2, "b", 0, now)];
        let policy = RetryPolicy::default();
        let held = choose_with_hold(&rows, &s, now, mono, &policy, 100, Duration::from_secs(300));
        assert_eq!(held.ids, Vec::<i64>::new());
        assert_eq!(held.wake_at, Some(mono + Duration::from_secs(60)));
        let past = choose_with_hold(&rows, &s, now, mono, &policy, 100, Duration::ZERO);
        assert_eq!(past.ids, [2]);
    }

    #[test]
    fn wall_clock_times_count_only_when_this_process_has_none() {
        let now = Utc::now();
        let s = Schedule::default();
        let later = now + chrono::Duration::seconds(30);
        assert_eq!(pick(&[row(1, "a", 1, later)], &s, now), Vec::<i64>::new());
        assert_eq!(pick(&[row(1, "a", 1, now)], &s, now), [1]);
        // Further ahead than any wait the policy makes: the clock stepped back since.
        let stepped = now + chrono::Duration::hours(2);
        assert_eq!(pick(&[row(1, "a", 1, stepped)], &s, now), [1]);
        // This process's own schedule wins over the stored time.
        let mut mine = Schedule::default();
        mine.retry_at.insert(1, Instant::now());
        assert_eq!(pick(&[row(1, "a", 1, later)], &mine, now), [1]);
    }

    #[test]
    fn at_most_limit_rows() {
        let now = Utc::now();
        let rows: Vec<Pending> = (0..10).map(|i| row(i, "a", 0, now)).collect();
        let c = choose_with_hold(
            &rows,
            &Schedule::default(),
            now,
            Instant::now(),
            &RetryPolicy::default(),
            4,
            HOLD_TIME,
        );
        assert_eq!(c.ids, [0, 1, 2, 3]);
    }
}
