//! `[heartbeat]`: a GET to an external monitor's URL (Healthchecks, Uptime Kuma push monitors,
//! Cronitor all take a plain GET) after each healthy interval, so the monitor alerts when
//! linkwatch stops, hangs or cannot write. Health is the rule `/healthz` and the systemd
//! watchdog use ([`monitoring::health`]): the scheduler runs on time and the database takes
//! writes. Only the instance that leads pings (on PostgreSQL a follower stays silent): the
//! monitor watches "linkwatch is checking", so a leader whose scheduler is stuck while its lease
//! still renews is noticed, not covered by a healthy follower's pings. After a takeover the new
//! leader pings within `every`. Unhealthy, it does not ping: that silence is what the monitor
//! alerts on. A failed request is
//! logged and counted (`linkwatch_heartbeat_failures_total`); it runs in a task of its own and
//! never holds up a check. The URL is a credential: only its origin is ever shown.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Heartbeat;
use crate::monitoring::{self, Shared};

/// Pings while healthy, following the current config's `[heartbeat]` (a reload may add, change
/// or remove it), until `stop`.
pub async fn run(shared: Shared, mut config: watch::Receiver<Option<Heartbeat>>, stop: CancellationToken) {
    // Redirects are followed: a monitor may move its ping endpoint, and a GET stays a GET.
    let http = match reqwest::Client::builder().build() {
        Ok(http) => http,
        Err(e) => {
            tracing::error!("heartbeat: cannot build an HTTP client: {e}");
            return;
        }
    };
    // The next ping's time, kept across reloads that leave `every` as it was: a reload
    // more often than `every` must not put the ping off for ever.
    let mut next: Option<(tokio::time::Instant, Duration)> = None;
    loop {
        let current = config.borrow_and_update().clone();
        let Some(beat) = current else {
            next = None;
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = config.changed() => if changed.is_err() { return },
            }
            continue;
        };
        let at = match next {
            Some((at, every)) if every == beat.every => at,
            _ => crate::clock::later(tokio::time::Instant::now(), beat.every),
        };
        next = Some((at, beat.every));
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
        next = None;
        if !shared.role.borrow().leads() {
            tracing::debug!(monitor = %beat.shown, "no heartbeat: another instance leads");
            continue;
        }
        match monitoring::health(&shared).await {
            Ok(()) => {
                if let Err(e) = ping(&http, &beat).await {
                    shared.metrics.heartbeat_failed();
                    tracing::warn!(monitor = %beat.shown, "heartbeat failed: {e}");
                }
            }
            Err(reason) => {
                shared.metrics.heartbeat_skipped();
                tracing::warn!(monitor = %beat.shown, "no heartbeat: {reason}");
            }
        }
    }
}

/// One GET, bounded by the heartbeat's timeout; errors never carry the URL.
pub async fn ping(http: &reqwest::Client, beat: &Heartbeat) -> Result<(), String> {
    let sent = http
        .get(beat.url.expose())
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
