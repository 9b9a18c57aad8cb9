//! One step of a channel: write what was decided before, choose what is due (`select`), send it
//! (in the channel's groups; a group a receiver refuses for good is halved until only the
//! offending message fails), decide each outcome, and write it.
//!
//! Delivered is final: once a receiver accepted a message, this process never sends it again.
//! Outcomes are decided in memory first; when the database refuses to record one, only the
//! write is retried (with backoff), and nothing new is sent until it succeeds, since every
//! unrecorded delivery is one a crash would repeat.

use std::collections::{HashSet, VecDeque};
use std::ops::Range;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::select::{self, RetryState};
use super::{DeliverySettings, Outlet};
use crate::channels::{SendError, Sent};
use crate::message::{self, Message};
use crate::metrics::{Blocked, Metrics, Refused};
use crate::store::{Delivery, Pending, Store};

/// How soon to look again at rows another instance has claimed.
const CLAIMED_ELSEWHERE: Duration = Duration::from_secs(5);

/// What a channel's worker keeps in memory between steps.
#[derive(Debug, Default)]
pub(super) struct Memory {
    schedule: RetryState,
    /// Outcomes decided but not yet written, oldest first.
    unrecorded: VecDeque<Outcome>,
    record_failures: u32,
    /// When to try the write again.
    record_at: Option<Instant>,
    /// The first refused write of the current run of refusals, on both clocks: the channel is
    /// said to be blocked while its outcomes cannot be written, since it sends nothing then.
    record_failing_since: Option<(DateTime<Utc>, Instant)>,
    /// The unrecorded outcomes were reported as lost at exit (so it is said once).
    reported: bool,
    /// No send before this: a rate limit (429) and a receiver's `Retry-After` are about the
    /// receiver, not one message (except a `Retry-After` on a row sent alone past the hold,
    /// which delays only that row).
    not_before: Option<Instant>,
    last_send: Option<Instant>,
    /// The claim under which the rows being sent were taken; their outcomes are written under it.
    claim: String,
}

/// What the worker should do after a step.
#[derive(Debug, PartialEq)]
pub(super) enum Next {
    /// This many deliveries were attempted.
    Sent(usize),
    /// Nothing is due; look again then (or when new rows are written).
    Idle(Option<Instant>),
    /// An outcome could not be written: try the write again then, and send nothing meanwhile.
    Unrecorded(Instant),
}

#[derive(Debug)]
enum Outcome {
    Sent {
        claim: String,
        ids: Vec<i64>,
        events: Vec<String>,
        note: Option<String>,
        at: DateTime<Utc>,
    },
    Failed {
        claim: String,
        ids: Vec<i64>,
        error: String,
        retry_at: Option<DateTime<Utc>>,
    },
}

impl Outcome {
    async fn write(&self, store: &Store) -> Result<(), crate::store::StoreError> {
        match self {
            Outcome::Sent {
                claim, ids, note, at, ..
            } => store.mark_sent(ids, claim, *at, note.as_deref()).await,
            Outcome::Failed {
                claim,
                ids,
                error,
                retry_at,
            } => store.mark_attempt_failed(ids, claim, error, *retry_at).await,
        }
    }
}

/// What a step works with.
pub(super) struct Ctx<'a> {
    pub store: &'a Store,
    pub outlet: &'a Outlet,
    pub settings: &'a DeliverySettings,
    pub metrics: &'a Metrics,
}

/// One step; sends nothing once `stop` is cancelled.
pub(super) async fn step(cx: &Ctx<'_>, stop: &CancellationToken) -> anyhow::Result<Next> {
    let mut mem = cx.outlet.memory.lock().await;
    if let Some(at) = record(cx, &mut mem).await {
        return Ok(Next::Unrecorded(at));
    }
    let mono = Instant::now();
    if !cx.store.may_send() {
        // Deposed (on PostgreSQL): nothing to send until this instance leads again; look again
        // later rather than at once (the daemon stops this worker meanwhile).
        return Ok(Next::Idle(mono.checked_add(CLAIMED_ELSEWHERE)));
    }
    if let Some(t) = mem.not_before.filter(|t| *t > mono) {
        return Ok(Next::Idle(Some(t)));
    }
    let rows = scan(cx, &mut mem.schedule, mono).await?;
    publish_blocked(cx, &mem.schedule, mono);
    let limit = usize::try_from(cx.outlet.channel.max_batch()).unwrap_or(1);
    let choice = select::choose(&rows, &mem.schedule, cx.settings.clock.now(), &cx.settings.retry, limit);
    if choice.ids.is_empty() {
        return Ok(Next::Idle(choice.wake_at));
    }
    let due = cx.store.deliveries(&choice.ids).await?;
    send_due(cx, &mut mem, stop, &due, choice.alone).await
}

/// Sends `due` in the channel's groups, each claimed first, deciding and writing each group's
/// outcome before the next. `alone`: the one row is failing past the hold (see `select`).
async fn send_due(
    cx: &Ctx<'_>,
    mem: &mut Memory,
    stop: &CancellationToken,
    due: &[Delivery],
    alone: bool,
) -> anyhow::Result<Next> {
    let messages: Vec<Message> = due
        .iter()
        .map(|d| message::render(&d.event, &cx.outlet.links))
        .collect();
    let mut queue: VecDeque<Range<usize>> = VecDeque::new();
    for size in cx.outlet.channel.groups(&messages) {
        let start = queue.back().map_or(0, |r| r.end);
        queue.push_back(start..start + size);
    }
    let mut attempted = 0;
    while let Some(range) = queue.pop_front() {
        // A deposed leader sends nothing more, even what it chose a moment ago.
        if stop.is_cancelled() || !cx.store.may_send() {
            break;
        }
        pace(mem, cx.settings.pace(&cx.outlet.channel)).await;
        let deadline = match claim(cx, mem, &due[range.clone()]).await? {
            Claimed::Until(deadline) => deadline,
            Claimed::Elsewhere(look_again) => return Ok(Next::Idle(look_again)),
            Claimed::RanOut => break,
        };
        if !cx.store.may_send() {
            break;
        }
        let result = cx.outlet.send_by(&messages[range.clone()], deadline).await;
        mem.last_send = Some(Instant::now());
        attempted += range.len();
        let Some(go_on) = decide(cx, mem, &due[range.clone()], result, alone) else {
            let mid = range.start + range.len() / 2;
            queue.push_front(mid..range.end);
            queue.push_front(range.start..mid);
            continue;
        };
        if record(cx, mem).await.is_some() || !go_on {
            break;
        }
    }
    Ok(match mem.record_at {
        Some(at) if !mem.unrecorded.is_empty() => Next::Unrecorded(at),
        _ => Next::Sent(attempted),
    })
}

/// What claiming a group's rows came to.
enum Claimed {
    /// The rows are this instance's; the send must end by then.
    Until(Instant),
    /// Another instance holds some of them: look again then.
    Elsewhere(Option<Instant>),
    /// The claim had no time left for a send; the rows are claimed again at the next step.
    RanOut,
}

/// Claims the rows of one group for its send.
async fn claim(cx: &Ctx<'_>, mem: &mut Memory, rows: &[Delivery]) -> anyhow::Result<Claimed> {
    let group = ids(rows);
    let claimed = cx.store.claim(&group, cx.outlet.send_takes).await?;
    if claimed.ids.len() < group.len() {
        // Another instance (the leader before this one) claimed some of these rows for a
        // send that may still be under way: they wait until its claim expires.
        tracing::info!(channel = %cx.outlet.name, "deliveries claimed by another instance; waiting for its claim to expire");
        return Ok(Claimed::Elsewhere(Instant::now().checked_add(CLAIMED_ELSEWHERE)));
    }
    mem.claim = claimed.token;
    // Checked again now that the rows are claimed: a pause between the claim and the send
    // (a frozen VM) may have outlasted the lease, and with it this instance's right to send.
    // The send must also end while the claim holds, or another instance may send the rows
    // too: it is bounded by the time left on the claim (which a pause may have used up).
    let Some(deadline) = send_until(cx.outlet.send_deadline(), claimed.until, Instant::now()) else {
        tracing::warn!(channel = %cx.outlet.name, "the claim ran out before the send could start; claiming again");
        return Ok(Claimed::RanOut);
    };
    Ok(Claimed::Until(deadline))
}

/// Decides the outcome of sending `rows` (in memory; `record` writes it): whether to go on
/// with the next group, or `None` when the group is to be sent again in halves.
fn decide(
    cx: &Ctx<'_>,
    mem: &mut Memory,
    rows: &[Delivery],
    result: Result<Sent, SendError>,
    alone: bool,
) -> Option<bool> {
    match result {
        Ok(note) => {
            sent(cx, mem, rows, note);
            Some(true)
        }
        Err(SendError::Permanent(error)) if rows.len() > 1 => {
            // One message of the group is refused for good: halve the group until only it
            // fails. Cheaper than one by one for a long digest (Slack paces posts).
            tracing::info!(channel = %cx.outlet.name, deliveries = rows.len(), %error, "a digest was refused; sending it in halves");
            None
        }
        Err(SendError::Permanent(error)) => {
            failed(cx, mem, rows, &error, "delivery refused; not retrying");
            Some(true)
        }
        Err(SendError::Closed(error)) => {
            // The rest would meet the same answer; they stay pending for the next step.
            failed(cx, mem, rows, &error, "delivery refused; not retrying");
            Some(false)
        }
        Err(SendError::Transient {
            error,
            retry_after,
            rate_limited,
        }) => {
            // A rate limit (429) is about the whole destination: the channel pauses, whatever
            // was sent. Another `Retry-After` pauses it too, except on a row past the hold:
            // that row goes alone because the receiver may be refusing that very message, so
            // its `Retry-After` delays only it, or it would pause every org's events again
            // each time it falls due.
            let pause_channel = rate_limited || (retry_after.is_some() && !alone);
            retry(cx, mem, rows, &error, retry_after, pause_channel);
            Some(false)
        }
    }
}

/// The latest a send may end: its own bound, and never past its claim (another instance may take
/// the rows then). `None` when the claim has no time left: a pause since the claim used it up.
fn send_until(own: Instant, claim_until: Instant, now: Instant) -> Option<Instant> {
    let until = own.min(claim_until);
    (until > now).then_some(until)
}

/// Reads the pending rows to choose from: the oldest `scan` of the channel, without the orgs
/// known to be waiting for a retry once the channel's hold is spent (they hold back only their
/// own rows), so that however many orgs wait, a due row of another org is read. Failing rows
/// this process did not know are taken into the schedule; when that leaves more orgs out and
/// the read was full (as after a restart amid many failing orgs), it reads again. Each read
/// leaves out at least one more org than the one before, so this ends.
async fn scan(cx: &Ctx<'_>, schedule: &mut RetryState, mono: Instant) -> anyhow::Result<Vec<Pending>> {
    let limit = cx.settings.scan;
    let full = usize::try_from(limit).unwrap_or(usize::MAX);
    loop {
        let skip = schedule.left_out(mono);
        let rows = cx.store.pending(&cx.outlet.name, limit, &skip).await?;
        if rows.len() < full {
            // Every pending row but the skipped orgs' was read: a failing row of another org
            // that is not among them has left the outbox without this process.
            let live: HashSet<i64> = rows.iter().map(|r| r.outbox_id).collect();
            let skipped: HashSet<&str> = skip.iter().map(String::as_str).collect();
            schedule.retain(|id, org| live.contains(&id) || skipped.contains(org));
        }
        let learnt = schedule.learn(&rows, cx.settings.clock.now(), mono, &cx.settings.retry);
        if rows.len() < full || !learnt || !schedule.spent(mono) {
            return with_due_failing(cx, schedule, rows, mono).await;
        }
    }
}

/// How many failing rows that fell due one step reads by id: each goes alone, after the rows of
/// the orgs with nothing failing, so a few are enough.
const DUE_FAILING: usize = 16;

/// `rows` (which leave out every failing org once the hold is spent) with the failing rows that
/// are due, read by id, in event order; a failing row no longer pending (sent by another
/// instance, or given up) is forgotten.
async fn with_due_failing(
    cx: &Ctx<'_>,
    schedule: &mut RetryState,
    mut rows: Vec<Pending>,
    mono: Instant,
) -> anyhow::Result<Vec<Pending>> {
    if !schedule.spent(mono) {
        return Ok(rows);
    }
    let read: HashSet<i64> = rows.iter().map(|r| r.outbox_id).collect();
    let due: Vec<i64> = schedule
        .due_failing(mono, DUE_FAILING)
        .into_iter()
        .filter(|id| !read.contains(id))
        .collect();
    if due.is_empty() {
        return Ok(rows);
    }
    let failing = cx.store.pending_of(&due).await?;
    let still: HashSet<i64> = failing.iter().map(|r| r.outbox_id).collect();
    due.iter()
        .filter(|id| !still.contains(id))
        .for_each(|id| schedule.forget(*id));
    rows.extend(failing);
    // Outbox rows are written in event order, so their ids are in event order too.
    rows.sort_unstable_by_key(|r| r.outbox_id);
    Ok(rows)
}

/// Waits until the channel's pacing allows the next send.
async fn pace(mem: &mut Memory, interval: Duration) {
    if let Some(at) = mem.last_send.and_then(|l| l.checked_add(interval)) {
        tokio::time::sleep_until(at).await;
    }
}

fn ids(rows: &[Delivery]) -> Vec<i64> {
    rows.iter().map(|d| d.outbox_id).collect()
}

fn sent(cx: &Ctx<'_>, mem: &mut Memory, rows: &[Delivery], note: Sent) {
    let name = &cx.outlet.name;
    match &note {
        Some(note) => tracing::warn!(channel = %name, deliveries = rows.len(), "delivered: {note}"),
        None => tracing::debug!(channel = %name, deliveries = rows.len(), "delivered"),
    }
    cx.metrics.delivery(name, "sent", rows.len() as u64);
    cx.outlet.publish_refused(None, cx.metrics);
    end(cx, mem, rows);
    mem.unrecorded.push_back(Outcome::Sent {
        claim: mem.claim.clone(),
        ids: ids(rows),
        events: rows.iter().map(|d| d.event.id.clone()).collect(),
        note,
        at: cx.settings.clock.now(),
    });
}

fn failed(cx: &Ctx<'_>, mem: &mut Memory, rows: &[Delivery], error: &str, why: &str) {
    let name = &cx.outlet.name;
    let events: Vec<&str> = rows.iter().map(|d| d.event.id.as_str()).collect();
    tracing::error!(channel = %name, events = %events.join(","), %error, "{why}");
    cx.metrics.delivery(name, "failed", rows.len() as u64);
    let refused = Refused {
        at: cx.settings.clock.now(),
        error: crate::outside::text(error, 1000),
    };
    cx.outlet.publish_refused(Some(refused), cx.metrics);
    end(cx, mem, rows);
    mem.unrecorded.push_back(Outcome::Failed {
        claim: mem.claim.clone(),
        ids: ids(rows),
        error: error.to_owned(),
        retry_at: None,
    });
}

/// These rows' deliveries ended (the outcome is decided, if not yet written): neither the
/// dispatcher nor the channel needs to remember anything about them.
fn end(cx: &Ctx<'_>, mem: &mut Memory, rows: &[Delivery]) {
    rows.iter().for_each(|d| mem.schedule.forget(d.outbox_id));
    let events: Vec<&str> = rows.iter().map(|d| d.event.id.as_str()).collect();
    cx.outlet.channel.forget(&events);
}

/// Schedules the group's retry together, on the backoff of its most-tried row (never sooner than
/// `retry_after`), and gives up rows past the maximum age; `pause_channel` stops the whole
/// channel for the `retry_after` (or, without one, the wait chosen). The wait is kept on the
/// monotonic clock for this process, and as a wall-clock time in the database for people and for
/// the next start.
fn retry(
    cx: &Ctx<'_>,
    mem: &mut Memory,
    rows: &[Delivery],
    error: &str,
    retry_after: Option<Duration>,
    pause_channel: bool,
) {
    let policy = &cx.settings.retry;
    let attempts = rows.iter().map(|d| d.attempts).max().unwrap_or(0).saturating_add(1);
    let delay = policy.delay(u32::try_from(attempts).unwrap_or(u32::MAX), retry_after);
    let (now, mono) = (cx.settings.clock.now(), Instant::now());
    if pause_channel {
        let wait = retry_after.unwrap_or(delay).min(policy.max_retry_after);
        mem.not_before = mono.checked_add(wait);
    }
    let at = chrono::Duration::from_std(delay)
        .ok()
        .and_then(|d| now.checked_add_signed(d));
    let (keep, expired): (Vec<&Delivery>, Vec<&Delivery>) = rows.iter().partition(|d| {
        let created = DateTime::parse_from_rfc3339(&d.event.created_at).map_or(now, |t| t.with_timezone(&Utc));
        at.is_some_and(|at| policy.within_max_age(created, at))
    });
    if !expired.is_empty() {
        let expired: Vec<Delivery> = expired.into_iter().cloned().collect();
        failed(cx, mem, &expired, error, "delivery given up after the maximum age");
    }
    if keep.is_empty() {
        return;
    }
    let name = &cx.outlet.name;
    tracing::warn!(channel = %name, deliveries = keep.len(), %error, "delivery failed; will retry in {delay:?}");
    cx.metrics.delivery(name, "retry", keep.len() as u64);
    let due = mono.checked_add(delay).unwrap_or(mono);
    let failing = keep.iter().map(|d| (d.outbox_id, d.event.org_id.as_str()));
    mem.schedule.failed(failing, error, due, mono);
    mem.unrecorded.push_back(Outcome::Failed {
        claim: mem.claim.clone(),
        ids: keep.iter().map(|d| d.outbox_id).collect(),
        error: error.to_owned(),
        retry_at: at,
    });
}

/// Writes the outcomes not yet written, oldest first. On failure, returns when to try again.
async fn record(cx: &Ctx<'_>, mem: &mut Memory) -> Option<Instant> {
    let name = &cx.outlet.name;
    while let Some(outcome) = mem.unrecorded.front() {
        match outcome.write(cx.store).await {
            Ok(()) => {
                mem.unrecorded.pop_front();
            }
            Err(e) => {
                mem.record_failures = mem.record_failures.saturating_add(1);
                cx.metrics.record_failed(name);
                let s = cx.settings;
                let delay = s
                    .record_first_delay
                    .saturating_mul(2u32.saturating_pow(mem.record_failures - 1))
                    .min(s.record_max_delay);
                let at = Instant::now().checked_add(delay).unwrap_or_else(Instant::now);
                mem.record_at = Some(at);
                let since = *mem
                    .record_failing_since
                    .get_or_insert_with(|| (s.clock.now(), Instant::now()));
                if i64::from(mem.record_failures) >= crate::retry::HOLD_ATTEMPTS {
                    // Nothing is sent while an outcome is unrecorded: as blocked as a channel
                    // whose receiver refuses, and said the same way.
                    let blocked = Blocked {
                        since: since.0,
                        since_mono: since.1,
                        deliveries: mem.unrecorded.len(),
                        last_error: Some(crate::outside::text(
                            &format!("cannot record what became of a delivery: {e:#}"),
                            1000,
                        )),
                    };
                    cx.outlet.publish_blocked(Some(blocked), cx.metrics);
                }
                tracing::warn!(
                    channel = %name,
                    failures = mem.record_failures,
                    "cannot record what became of a delivery (it is not sent again; the write is retried in {delay:?}): {e:#}"
                );
                return Some(at);
            }
        }
    }
    if mem.record_failures > 0 {
        tracing::info!(channel = %name, failures = mem.record_failures, "delivery outcomes recorded after all");
        (mem.record_failures, mem.record_at, mem.reported) = (0, None, false);
        mem.record_failing_since = None;
    }
    None
}

/// When a worker stops: one more try to write what was decided. What fails stays in memory.
pub(super) async fn flush(cx: &Ctx<'_>) {
    let mut mem = cx.outlet.memory.lock().await;
    let _ = record(cx, &mut mem).await;
}

/// At exit: one more try to write what was decided, and if that fails too, says which
/// delivered events the next start will send again (with the same event ids).
pub(super) async fn finish(cx: &Ctx<'_>) {
    let mut mem = cx.outlet.memory.lock().await;
    if record(cx, &mut mem).await.is_some() {
        report_unrecorded(&cx.outlet.name, &mut mem);
    }
}

/// Logs, once, the delivered events whose outcome was never written.
pub(super) fn report_unrecorded(channel: &str, mem: &mut Memory) {
    if mem.reported {
        return;
    }
    let delivered: Vec<&str> = mem
        .unrecorded
        .iter()
        .flat_map(|o| match o {
            Outcome::Sent { events, .. } => events.iter().map(String::as_str).collect(),
            Outcome::Failed { .. } => Vec::new(),
        })
        .collect();
    if !delivered.is_empty() {
        tracing::error!(
            %channel,
            events = %delivered.join(","),
            "stopping with deliveries the database never recorded: these events reached the receiver and will be sent again after the next start, with the same event ids"
        );
        mem.reported = true;
    }
}

/// Tells the metrics and `/healthz` whether the channel is blocked: its hold spent for this
/// incident while rows still fail, by the same rule and clock as [`select::choose`], with since
/// when (the incident's first failure seen by this process), how many rows fail, and the latest
/// error.
fn publish_blocked(cx: &Ctx<'_>, schedule: &RetryState, mono: Instant) {
    let blocked = schedule.blocked(mono).map(|b| {
        let ago = chrono::Duration::from_std(mono.saturating_duration_since(b.since)).unwrap_or_default();
        let now = cx.settings.clock.now();
        Blocked {
            since: now.checked_sub_signed(ago).unwrap_or(now),
            since_mono: b.since,
            deliveries: b.rows,
            last_error: b.last_error.map(str::to_owned),
        }
    });
    cx.outlet.publish_blocked(blocked, cx.metrics);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_ends_within_its_own_bound_and_within_its_claim() {
        let now = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(send_until(now + s(11), now + s(40), now), Some(now + s(11)));
        // A pause after the claim left it less time than the send's own bound.
        assert_eq!(send_until(now + s(11), now + s(5), now), Some(now + s(5)));
        assert_eq!(send_until(now + s(11), now, now), None, "the claim ran out: no send");
    }
}
