//! `[heartbeat]`: a request to an external monitor each interval, following Healthchecks'
//! convention. While linkwatch is healthy, a GET to `url` (Healthchecks, Uptime Kuma push
//! monitors and Cronitor all take a plain GET); while it is not, a POST to the fail URL (by
//! default `url` + `/fail`) with the reason as plain text, so that the monitor alerts at once
//! rather than after its grace period. Unhealthy is the rule of
//! [`monitoring::heartbeat_health`]: what makes `/healthz` fail (the scheduler stalled, the
//! database refusing writes), and a channel that cannot deliver (blocked, or its latest delivery
//! refused for good), since then nobody is being told anything.
//!
//! Only the instance that leads pings (on PostgreSQL a follower stays silent): the monitor
//! watches "linkwatch is checking", so a leader whose scheduler is stuck while its lease still
//! renews is noticed, not covered by a healthy follower's pings. The first ping comes as soon
//! as linkwatch is healthy after start (a fail only if it is not within `every`), then one each
//! `every`; a request that fails is logged, counted (`linkwatch_heartbeat_failures_total`) and
//! sent once more before the next interval. The loop runs in a task of its own and never holds
//! up a check. The URLs are credentials: only their origin is ever shown.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::later;
use crate::config::HeartbeatConfig;
use crate::metrics::Metrics;
use crate::monitoring::{self, Shared};

/// How soon after start (or after a reload adds the heartbeat) the first ping is tried.
const FIRST_AFTER: Duration = Duration::from_secs(1);
/// How often health is looked at again while linkwatch is still starting: the first ping waits
/// for it to be healthy, for up to `every`, so that a start is not reported as a failure.
const STARTING_POLL: Duration = Duration::from_secs(1);
/// The longest wait before a failed request is sent again (half of `every` if that is shorter).
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// The longest reason sent to the monitor (Healthchecks keeps the first 10 KB of a body).
const REASON_MAX: usize = 2000;

/// What one interval reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Ping {
    Healthy,
    /// Not healthy, and why.
    Fail(String),
}

/// What the loop sees when a ping is due.
#[derive(Debug, Clone, PartialEq)]
pub enum Look {
    /// Another instance leads: it pings.
    Follows,
    Health(Result<(), String>),
}

/// Pings following the current config's `[heartbeat]` (a reload may add, change or remove it),
/// until `stop`.
pub async fn run(shared: Shared, config: watch::Receiver<Option<HeartbeatConfig>>, stop: CancellationToken) {
    // Redirects are followed: a monitor may move its ping endpoint.
    let http = match reqwest::Client::builder().build() {
        Ok(http) => http,
        Err(e) => {
            tracing::error!("heartbeat: cannot build an HTTP client: {e}");
            return;
        }
    };
    let look = || {
        let shared = shared.clone();
        async move {
            if !shared.role.borrow().leads() {
                return Look::Follows;
            }
            Look::Health(monitoring::heartbeat_health(&shared).await)
        }
    };
    let send = |beat: HeartbeatConfig, p: Ping| {
        let http = http.clone();
        async move { ping(&http, &beat, &p).await }
    };
    beat(look, send, &shared.metrics, config, stop).await;
}

/// The loop, with what it looks at and how it sends injected: tests run it on paused time.
pub async fn beat<L, LF, S, SF>(
    look: L,
    send: S,
    metrics: &Metrics,
    mut config: watch::Receiver<Option<HeartbeatConfig>>,
    stop: CancellationToken,
) where
    L: Fn() -> LF,
    LF: Future<Output = Look>,
    S: Fn(HeartbeatConfig, Ping) -> SF,
    SF: Future<Output = Result<(), String>>,
{
    let mut pacing = Pacing::default();
    loop {
        let current = config.borrow_and_update().clone();
        let Some(beat) = current else {
            pacing.next = None;
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = config.changed() => if changed.is_err() { return },
            }
            continue;
        };
        let at = pacing.due(&beat);
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = config.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            _ = tokio::time::sleep_until(at) => {}
        }
        let now = Instant::now();
        pacing.next = Some((later(at, beat.every).max(now), beat.every));
        let Some(p) = pacing.ping(look().await, &beat, now, metrics) else {
            continue;
        };
        if !send_twice(&send, &beat, p, metrics, &stop).await {
            return;
        }
    }
}

/// When the loop pings next.
#[derive(Debug, Default)]
struct Pacing {
    /// The next ping's time, kept across reloads that leave `every` as it was: a reload
    /// more often than `every` must not put the ping off for ever.
    next: Option<(Instant, Duration)>,
    /// Until the first ping of this heartbeat: how long it may wait for linkwatch to be healthy.
    starting: Option<Instant>,
}

impl Pacing {
    /// When the next ping of `beat` is due (a new `every` starts over).
    fn due(&mut self, beat: &HeartbeatConfig) -> Instant {
        let at = match self.next {
            Some((at, every)) if every == beat.every => at,
            _ => {
                let now = Instant::now();
                self.starting = Some(later(now, beat.every));
                later(now, FIRST_AFTER.min(beat.every))
            }
        };
        self.next = Some((at, beat.every));
        at
    }

    /// The ping that what the loop saw at `now` calls for; `None` for none now.
    fn ping(&mut self, seen: Look, beat: &HeartbeatConfig, now: Instant, metrics: &Metrics) -> Option<Ping> {
        let p = match seen {
            Look::Follows => {
                tracing::debug!(monitor = %beat.shown, "no heartbeat: another instance leads");
                return None;
            }
            Look::Health(Ok(())) => Ping::Healthy,
            Look::Health(Err(reason)) => {
                if self.starting.is_some_and(|until| now < until) {
                    tracing::debug!(monitor = %beat.shown, "first heartbeat waits: {reason}");
                    self.next = Some((later(now, STARTING_POLL), beat.every));
                    return None;
                }
                metrics.heartbeat_unhealthy();
                tracing::warn!(monitor = %beat.fail_shown, "heartbeat says fail: {reason}");
                Ping::Fail(crate::outside::text(&reason, REASON_MAX))
            }
        };
        self.starting = None;
        Some(p)
    }
}

/// Sends `p`, and once more after a short wait when that fails; `false` when `stop` came
/// during the wait.
async fn send_twice<S, SF>(
    send: &S,
    beat: &HeartbeatConfig,
    p: Ping,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> bool
where
    S: Fn(HeartbeatConfig, Ping) -> SF,
    SF: Future<Output = Result<(), String>>,
{
    if let Err(e) = send(beat.clone(), p.clone()).await {
        metrics.heartbeat_failed();
        tracing::warn!(monitor = %beat.shown, "heartbeat failed (trying once more): {e}");
        let again = later(Instant::now(), RETRY_AFTER.min(beat.every / 2));
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep_until(again) => {}
        }
        if let Err(e) = send(beat.clone(), p).await {
            metrics.heartbeat_failed();
            tracing::warn!(monitor = %beat.shown, "heartbeat failed again: {e}");
        }
    }
    true
}

/// One request, bounded by the heartbeat's timeout: a GET to `url` for [`Ping::Healthy`], a POST
/// of the reason to the fail URL for [`Ping::Fail`]. Errors never carry the URL.
pub async fn ping(http: &reqwest::Client, beat: &HeartbeatConfig, ping: &Ping) -> Result<(), String> {
    let request = match ping {
        Ping::Healthy => http.get(beat.url.expose()),
        Ping::Fail(reason) => http
            .post(beat.fail_url.expose())
            .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(format!("{reason}\n")),
    };
    let sent = request
        .timeout(beat.timeout)
        .send()
        .await
        .map_err(|e| describe(e.without_url(), beat.timeout))?;
    let status = sent.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", status.as_u16()))
    }
}

fn describe(e: reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("no answer within {timeout:?}")
    } else {
        let cause = std::error::Error::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        // Through the gate: the cause may quote what the monitor's side said.
        crate::outside::text(&format!("could not connect{cause}"), 300)
    }
}

#[cfg(test)]
mod tests;
