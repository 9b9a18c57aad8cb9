//! Which pending rows of a channel go out next: the pure rule, with its tests.
//!
//! Rows go out in event order, and each org's always: a row waiting for its retry holds back
//! its own org's later rows. Holding back the *other* orgs is the channel's budget, one per
//! incident. An incident starts with the first failed attempt while no row of the channel was
//! failing, and ends when no failing row is left (each delivered, or given up); a failure of
//! another org within it starts nothing new. While the incident has made fewer than
//! `HOLD_ATTEMPTS` failed attempts and is younger than `HOLD_TIME`, a failing row waiting for
//! its retry holds back every later row of the channel: a short outage keeps the global order,
//! and the failed batch is retried together. Once the budget is spent, however many orgs fail,
//! each failing row holds back only its own org: the due rows of orgs with nothing failing go
//! first, together, and each failing row goes alone when it is due, so that a message the
//! receiver keeps refusing never takes others down with it (nor does its `Retry-After`, which
//! then delays only that row). A channel whose budget is spent while rows still fail is
//! "blocked".
//!
//! The step reads a bounded number of pending rows. Once the budget is spent it leaves out the
//! orgs known to be waiting ([`RetryState::left_out`]), so that no number of them hides a due
//! row of another org.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::retry::{HOLD_ATTEMPTS, HOLD_TIME, RetryPolicy};
use crate::store::Pending;

/// What this process knows about the channel's rows beyond the database.
#[derive(Debug, Default)]
pub struct RetryState {
    /// The rows waiting for a retry, by outbox id.
    failing: HashMap<i64, Failing>,
    /// The channel's incident, while any row is failing.
    incident: Option<Incident>,
}

#[derive(Debug)]
struct Failing {
    org: String,
    /// When it may be tried again, on the monotonic clock.
    due: Instant,
}

#[derive(Debug)]
struct Incident {
    /// Its first failure, as this process saw it.
    started: Instant,
    /// The channel's failed attempts in it. A row failed before this process saw it brings
    /// its own count: the channel spent those attempts on it.
    attempts: i64,
    /// The latest failure's error (for a row learned from the database, its stored one).
    last_error: Option<String>,
}

impl Incident {
    fn new(started: Instant) -> Incident {
        Incident {
            started,
            attempts: 0,
            last_error: None,
        }
    }
}

/// A channel whose hold is spent while rows still fail.
#[derive(Debug, PartialEq)]
pub struct BlockedRows<'a> {
    /// The incident's start.
    pub since: Instant,
    /// How many rows fail.
    pub rows: usize,
    pub last_error: Option<&'a str>,
}

impl RetryState {
    /// One failed attempt of the channel, on `rows` (outbox id and org), each retried at `due`.
    pub fn failed<'a>(
        &mut self,
        rows: impl IntoIterator<Item = (i64, &'a str)>,
        error: &str,
        due: Instant,
        mono: Instant,
    ) {
        let incident = self.incident.get_or_insert_with(|| Incident::new(mono));
        incident.attempts = incident.attempts.saturating_add(1);
        incident.last_error = Some(error.to_owned());
        for (id, org) in rows {
            self.failing.insert(
                id,
                Failing {
                    org: org.to_owned(),
                    due,
                },
            );
        }
    }

    /// Takes in the failing rows of `rows` that this process does not know (failed by an
    /// earlier process, or by another instance): each is due at its stored retry time (see
    /// [`stored_due`]), and an incident that was not running starts now. Says whether it took
    /// any in (once the hold is spent, the read leaves their orgs out).
    pub fn learn(&mut self, rows: &[Pending], now: DateTime<Utc>, mono: Instant, policy: &RetryPolicy) -> bool {
        let mut learnt = false;
        for row in rows.iter().filter(|r| r.attempts > 0) {
            if self.failing.contains_key(&row.outbox_id) {
                continue;
            }
            let due = stored_due(row, now, mono, policy).unwrap_or(mono);
            learnt = true;
            self.failing.insert(
                row.outbox_id,
                Failing {
                    org: row.org_id.clone(),
                    due,
                },
            );
            let incident = self.incident.get_or_insert_with(|| Incident::new(mono));
            incident.attempts = incident.attempts.max(row.attempts);
            if incident.last_error.is_none() {
                incident.last_error.clone_from(&row.last_error);
            }
        }
        learnt
    }

    /// Forgets a row that is no longer pending; the incident ends with its last failing row.
    pub fn forget(&mut self, id: i64) {
        self.failing.remove(&id);
        self.end_incident_when_over();
    }

    /// Forgets the failing rows for which `keep(id, org)` is false (rows that left the outbox
    /// without this process).
    pub fn retain(&mut self, mut keep: impl FnMut(i64, &str) -> bool) {
        self.failing.retain(|id, f| keep(*id, &f.org));
        self.end_incident_when_over();
    }

    fn end_incident_when_over(&mut self) {
        if self.failing.is_empty() {
            self.incident = None;
        }
    }

    /// Whether the channel's hold is over for this incident: its failing rows hold back only
    /// their own orgs.
    pub fn spent(&self, mono: Instant) -> bool {
        self.spent_within(mono, HOLD_TIME)
    }

    fn spent_within(&self, mono: Instant, hold: Duration) -> bool {
        self.incident
            .as_ref()
            .is_some_and(|i| i.attempts >= HOLD_ATTEMPTS || i.started.checked_add(hold).is_none_or(|end| end <= mono))
    }

    /// When the hold ends by time, during an incident.
    fn hold_ends(&self, hold: Duration) -> Option<Instant> {
        self.incident.as_ref().and_then(|i| i.started.checked_add(hold))
    }

    /// What the step's read leaves out: once the hold is spent, every org with a failing row,
    /// due or not (sorted; their due rows are read by id, [`RetryState::due_failing`]), so that
    /// however many orgs fail, the read reaches the rows of the others; within the hold,
    /// nothing, since a waiting row holds back every row after it and must be seen to do so.
    pub fn left_out(&self, mono: Instant) -> Vec<String> {
        if !self.spent(mono) {
            return Vec::new();
        }
        let mut orgs: Vec<String> = self.failing.values().map(|f| f.org.clone()).collect();
        orgs.sort_unstable();
        orgs.dedup();
        orgs
    }

    /// The failing rows due by `mono`, earliest due first, at most `n`: past the hold, what the
    /// step reads by id beside the rows of the orgs with nothing failing.
    pub fn due_failing(&self, mono: Instant, n: usize) -> Vec<i64> {
        let mut due: Vec<(Instant, i64)> = self
            .failing
            .iter()
            .filter(|(_, f)| f.due <= mono)
            .map(|(id, f)| (f.due, *id))
            .collect();
        due.sort_unstable();
        due.into_iter().take(n).map(|(_, id)| id).collect()
    }

    /// The earliest retry still ahead.
    fn next_due(&self, mono: Instant) -> Option<Instant> {
        self.failing.values().map(|f| f.due).filter(|d| *d > mono).min()
    }

    /// Whether the channel is blocked: its hold spent while rows still fail.
    pub fn blocked(&self, mono: Instant) -> Option<BlockedRows<'_>> {
        let incident = self.incident.as_ref().filter(|_| self.spent(mono))?;
        (!self.failing.is_empty()).then_some(BlockedRows {
            since: incident.started,
            rows: self.failing.len(),
            last_error: incident.last_error.as_deref(),
        })
    }
}

/// The rows to send now, or when to look again.
#[derive(Debug, PartialEq)]
pub struct Choice {
    pub ids: Vec<i64>,
    /// The earliest a row now held back may go (its retry, or the end of the hold).
    pub wake_at: Option<Instant>,
    /// The one row chosen is failing past the hold, sent alone.
    pub alone: bool,
}

/// When a failing row is due by its stored (wall-clock) retry time: `None` when due now. One
/// further ahead than any wait the policy makes was written before the clock stepped back: due
/// now.
fn stored_due(row: &Pending, now: DateTime<Utc>, mono: Instant, policy: &RetryPolicy) -> Option<Instant> {
    let next = DateTime::parse_from_rfc3339(&row.next_attempt_at)
        .ok()?
        .with_timezone(&Utc);
    let ahead = (next - now).to_std().ok().filter(|d| !d.is_zero())?;
    if ahead > policy.longest_wait() {
        return None;
    }
    Some(mono.checked_add(ahead).unwrap_or(mono))
}

/// When `row` may be tried: `None` when it is due now.
fn due_at(
    row: &Pending,
    schedule: &RetryState,
    now: DateTime<Utc>,
    mono: Instant,
    policy: &RetryPolicy,
) -> Option<Instant> {
    if row.attempts == 0 {
        // Never tried: next_attempt_at is its creation time, whatever the clock says now.
        return None;
    }
    match schedule.failing.get(&row.outbox_id) {
        Some(f) => (f.due > mono).then_some(f.due),
        None => stored_due(row, now, mono, policy),
    }
}

/// Chooses at most `limit` rows of `rows` (pending, in event order) to send together now.
pub fn choose(
    rows: &[Pending],
    schedule: &RetryState,
    now: DateTime<Utc>,
    policy: &RetryPolicy,
    limit: usize,
) -> Choice {
    choose_within(rows, schedule, now, Instant::now(), policy, limit, HOLD_TIME)
}

fn choose_within(
    rows: &[Pending],
    schedule: &RetryState,
    now: DateTime<Utc>,
    mono: Instant,
    policy: &RetryPolicy,
    limit: usize,
    hold: Duration,
) -> Choice {
    let spent = schedule.spent_within(mono, hold);
    let mut ids = Vec::new();
    let mut lone = None;
    let mut waiting_orgs: HashSet<&str> = HashSet::new();
    let mut wake_at: Option<Instant> = None;
    let mut wake = |at: Instant| wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
    if let Some(at) = schedule.next_due(mono).filter(|_| spent) {
        // The rows of the orgs the step left out are not in `rows`.
        wake(at);
    }
    for row in rows {
        if waiting_orgs.contains(row.org_id.as_str()) {
            continue;
        }
        match due_at(row, schedule, now, mono, policy) {
            Some(at) => {
                waiting_orgs.insert(&row.org_id);
                wake(at);
                if !spent {
                    // Within the channel's hold: everything after it waits too.
                    if let Some(end) = schedule.hold_ends(hold) {
                        wake(end);
                    }
                    break;
                }
            }
            None if spent && row.attempts > 0 => {
                // Past the hold: alone, so that whatever makes it fail fails nothing else, and
                // after the orgs with nothing failing, so that none of them waits for it.
                waiting_orgs.insert(&row.org_id);
                lone.get_or_insert(row.outbox_id);
            }
            None => {
                ids.push(row.outbox_id);
                if ids.len() >= limit {
                    break;
                }
            }
        }
    }
    Choice::of(ids, lone, wake_at)
}

impl Choice {
    /// The rows chosen together, or else the one failing row past the hold (`lone`), alone.
    fn of(ids: Vec<i64>, lone: Option<i64>, wake_at: Option<Instant>) -> Choice {
        match lone {
            Some(id) if ids.is_empty() => Choice {
                ids: vec![id],
                wake_at,
                alone: true,
            },
            _ => Choice {
                ids,
                wake_at,
                alone: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

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

    /// One failed attempt of the channel on row `id` of `org` at `mono`, retried `after` it.
    fn fail(s: &mut RetryState, id: i64, org: &str, mono: Instant, after: Duration) {
        s.failed([(id, org)], "HTTP 500", mono + after, mono);
    }

    fn pick(rows: &[Pending], schedule: &RetryState, now: DateTime<Utc>) -> Vec<i64> {
        choice(rows, schedule, now, Instant::now()).ids
    }

    fn choice(rows: &[Pending], schedule: &RetryState, now: DateTime<Utc>, mono: Instant) -> Choice {
        choose_within(rows, schedule, now, mono, &RetryPolicy::default(), 100, HOLD_TIME)
    }

    #[test]
    fn new_rows_go_together_in_order() {
        let now = Utc::now();
        let rows = [row(1, "a", 0, now), row(2, "b", 0, now), row(3, "a", 0, now)];
        assert_eq!(pick(&rows, &RetryState::default(), now), [1, 2, 3]);
    }

    #[test]
    fn a_retry_within_the_hold_holds_back_everything_after_it() {
        let (now, mono) = (Utc::now(), Instant::now());
        let mut s = RetryState::default();
        fail(&mut s, 1, "a", mono, 5 * SECOND);
        let rows = [row(0, "c", 0, now), row(1, "a", 1, now), row(2, "b", 0, now)];
        let held = choice(&rows, &s, now, mono);
        assert_eq!(
            held,
            Choice {
                ids: vec![0],
                wake_at: Some(mono + 5 * SECOND),
                alone: false
            }
        );
        // Within the hold it is not blocking: it holds everything, as an outage does.
        assert_eq!(s.blocked(mono), None);
        assert_eq!(
            s.left_out(mono),
            Vec::<String>::new(),
            "nothing is left out of the read"
        );
        // Due again: retried together with what it held back.
        let due = choice(&rows, &s, now, mono + 5 * SECOND);
        assert_eq!((due.ids, due.alone), (vec![0, 1, 2], false));
    }

    #[test]
    fn past_the_hold_a_failing_row_holds_back_only_its_org_and_goes_alone() {
        let (now, mono) = (Utc::now(), Instant::now());
        let mut s = RetryState::default();
        for _ in 0..HOLD_ATTEMPTS {
            fail(&mut s, 1, "a", mono, 5 * SECOND);
        }
        let rows = [
            row(1, "a", 3, now),
            row(2, "b", 0, now),
            row(3, "a", 0, now),
            row(4, "c", 0, now),
        ];
        let others = choice(&rows, &s, now, mono);
        assert_eq!((others.ids, others.alone), (vec![2, 4], false));
        assert_eq!(others.wake_at, Some(mono + 5 * SECOND));
        assert_eq!(s.left_out(mono), ["a"], "left out of the read");
        let blocked = s.blocked(mono).expect("blocked");
        assert_eq!(
            (blocked.since, blocked.rows, blocked.last_error),
            (mono, 1, Some("HTTP 500"))
        );
        // Due again: alone (so that a Retry-After it gets delays only it), and only once no
        // org with nothing failing has a due row, whatever their order.
        let later = mono + 5 * SECOND;
        // Still left out of the read, and read by id now that it is due.
        assert_eq!(s.left_out(later), ["a"]);
        assert_eq!(s.due_failing(later, 16), [1]);
        assert_eq!(s.due_failing(mono, 16), Vec::<i64>::new(), "not before it is due");
        let lone = choice(&[row(1, "a", 3, now), row(3, "a", 0, now)], &s, now, later);
        assert_eq!((lone.ids, lone.alone), (vec![1], true));
        let first = choice(&rows, &s, now, later);
        assert_eq!((first.ids, first.alone), (vec![2, 4], false));
    }

    #[test]
    fn the_hold_is_the_channels_budget_not_each_orgs() {
        let (now, mono) = (Utc::now(), Instant::now());
        let mut s = RetryState::default();
        for _ in 0..HOLD_ATTEMPTS {
            fail(&mut s, 1, "a", mono, 5 * SECOND);
        }
        // Another org fails for the first time in the same incident: it holds back only itself.
        fail(&mut s, 2, "b", mono, 5 * SECOND);
        let rows = [row(1, "a", 3, now), row(2, "b", 1, now), row(3, "c", 0, now)];
        assert_eq!(choice(&rows, &s, now, mono).ids, [3]);
        assert_eq!(s.left_out(mono), ["a", "b"]);
        assert_eq!(s.blocked(mono).map(|b| (b.since, b.rows)), Some((mono, 2)));
    }

    #[test]
    fn the_hold_also_ends_with_time_counted_from_the_incidents_first_failure() {
        let (now, mono) = (Utc::now(), Instant::now());
        let policy = RetryPolicy::default();
        let mut s = RetryState::default();
        fail(&mut s, 1, "a", mono, 60 * SECOND);
        let rows = [row(1, "a", 1, now), row(2, "b", 0, now), row(3, "c", 0, now)];
        let hold = 300 * SECOND;
        let held = choose_within(&rows, &s, now, mono, &policy, 100, hold);
        assert_eq!((held.ids, held.wake_at), (vec![], Some(mono + 60 * SECOND)));
        // A new failure within the incident does not start the hold again.
        let later = mono + 200 * SECOND;
        fail(&mut s, 2, "b", later, 200 * SECOND);
        let rows = [row(1, "a", 1, now), row(2, "b", 1, now), row(3, "c", 0, now)];
        // a's retry is due and goes; b's waits, and holds back c until the hold ends.
        let held = choose_within(&rows, &s, now, later + 60 * SECOND, &policy, 100, hold);
        assert_eq!((held.ids, held.wake_at), (vec![1], Some(mono + hold)));
        let past = choose_within(&rows, &s, now, mono + hold, &policy, 100, hold);
        assert_eq!(past.ids, [3]);
        assert!(s.spent(mono + HOLD_TIME));
    }

    #[test]
    fn an_incident_ends_when_no_row_fails_and_the_next_one_has_its_own_hold() {
        let (now, mono) = (Utc::now(), Instant::now());
        let mut s = RetryState::default();
        for _ in 0..HOLD_ATTEMPTS {
            fail(&mut s, 1, "a", mono, 5 * SECOND);
        }
        fail(&mut s, 2, "b", mono, 5 * SECOND);
        s.forget(1);
        assert!(s.spent(mono), "b still fails: the same incident");
        s.retain(|id, _| id != 2);
        assert!(
            !s.spent(mono) && s.blocked(mono).is_none(),
            "nothing fails: the incident is over"
        );
        let later = mono + 10 * SECOND;
        fail(&mut s, 3, "c", later, 5 * SECOND);
        let rows = [row(3, "c", 1, now), row(4, "d", 0, now)];
        assert_eq!(choice(&rows, &s, now, later).ids, Vec::<i64>::new(), "a new hold");
    }

    #[test]
    fn rows_failed_before_this_process_bring_their_attempts_and_retry_times() {
        // Whole seconds, as stored times are written to the millisecond.
        let (now, mono): (DateTime<Utc>, _) = ("2026-11-29T08:00:00Z".parse().unwrap(), Instant::now());
        let policy = RetryPolicy::default();
        let later = now + chrono::Duration::seconds(30);
        let mut s = RetryState::default();
        let rows = [row(1, "a", 1, later), row(2, "b", 0, now)];
        assert!(s.learn(&rows, now, mono, &policy), "a waits");
        assert!(!s.spent(mono), "one attempt so far: the hold begins now");
        assert_eq!(choice(&rows, &s, now, mono).ids, Vec::<i64>::new());
        assert!(!s.learn(&rows, now, mono, &policy), "known already");
        let mut s = RetryState::default();
        let rows = [row(1, "a", 3, later), row(2, "b", 2, now), row(3, "c", 0, now)];
        assert!(s.learn(&rows, now, mono, &policy));
        assert!(s.spent(mono), "three attempts were made on a: the hold is over");
        // Every failing org is left out of the read; b's row, due, is read by id.
        assert_eq!(s.left_out(mono), ["a", "b"]);
        assert_eq!(s.due_failing(mono, 16), [2]);
        let c = choice(&rows, &s, now, mono);
        assert_eq!((c.ids, c.wake_at), (vec![3], Some(mono + 30 * SECOND)));
        assert_eq!(s.blocked(mono).map(|b| b.rows), Some(2));
    }

    #[test]
    fn wall_clock_times_count_only_when_this_process_has_none() {
        let now = Utc::now();
        let s = RetryState::default();
        let later = now + chrono::Duration::seconds(30);
        assert_eq!(pick(&[row(1, "a", 1, later)], &s, now), Vec::<i64>::new());
        assert_eq!(pick(&[row(1, "a", 1, now)], &s, now), [1]);
        // Further ahead than any wait the policy makes: the clock stepped back since.
        let stepped = now + chrono::Duration::hours(2);
        assert_eq!(pick(&[row(1, "a", 1, stepped)], &s, now), [1]);
        let mut learned = RetryState::default();
        let mono = Instant::now();
        assert!(learned.learn(&[row(1, "a", 3, stepped)], now, mono, &RetryPolicy::default()));
        assert_eq!(learned.due_failing(mono, 16), [1], "learned as due now");
        assert_eq!(pick(&[row(1, "a", 3, later)], &learned, now), [1]);
        // This process's own schedule wins over the stored time.
        let mut mine = RetryState::default();
        fail(&mut mine, 1, "a", Instant::now(), Duration::ZERO);
        assert_eq!(pick(&[row(1, "a", 1, later)], &mine, now), [1]);
    }

    #[test]
    fn at_most_limit_rows() {
        let now = Utc::now();
        let rows: Vec<Pending> = (0..10).map(|i| row(i, "a", 0, now)).collect();
        let c = choose_within(
            &rows,
            &RetryState::default(),
            now,
            Instant::now(),
            &RetryPolicy::default(),
            4,
            HOLD_TIME,
        );
        assert_eq!(c.ids, [0, 1, 2, 3]);
    }
}
