//! The end of a silence: once one is over (its time ran out, or `linkwatch silence end`), the
//! leader compares the status of what it silenced with the status it began with and, if they
//! differ, sends one `silence_ended` message (from what, to what, what happened in between).
//! Back where it was, nothing is sent. Holding events back is the store's part: it writes held
//! rows instead of outbox rows while a silence covers the org (`store/silences.rs`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::check::Checker;
use crate::detect::{Event, SilencedChange};
use crate::store::Silence;

/// How often the leader looks for silences that ended: the longest a `silence_ended` message
/// waits after `linkwatch silence end`.
pub const LOOK_EVERY: Duration = Duration::from_secs(2);

/// Concludes every silence over by now; the number concluded.
pub async fn conclude_due(checker: &Checker) -> anyhow::Result<usize> {
    let now = checker.clock.now();
    let mut concluded = 0;
    for s in checker.store.silences_due(now).await? {
        let span = checker.store.silenced_span(&s).await?;
        // An org taken out of the config meanwhile has no one to tell.
        let org = checker.org(&s.org_id);
        let event = (span.status != s.status_at_start && org.is_some()).then(|| ended(&s, span));
        let channels = match (&event, org) {
            (Some(e), Some(org)) => checker.routes.route(&org.id, e),
            _ => Vec::new(),
        };
        let said = event.as_ref().map(|e| (e, channels.as_slice()));
        if checker.store.conclude_silence(&s, now, said).await? {
            concluded += 1;
            let name = org.map_or(s.org_id.as_str(), |o| o.name.as_str());
            match &event {
                Some(e) => {
                    let summary = crate::message::summary(name, e);
                    checker.metrics.event(e.kind());
                    tracing::info!(org = %name, org_id = %s.org_id, silence = s.id, event = e.kind(), "{summary}");
                    checker.wake_channels(&channels);
                }
                None => tracing::info!(
                    org = %name,
                    silence = s.id,
                    "silence {} ended with the status where it began; nothing to say",
                    s.id
                ),
            }
        }
    }
    Ok(concluded)
}

fn ended(s: &Silence, span: crate::store::SilencedSpan) -> Event {
    Event::SilenceEnded {
        silence: s.id,
        migration: s.migration.clone(),
        reason: s.reason.clone(),
        by: s.created_by.clone(),
        began_at: s.starts_at,
        from: s.status_at_start.clone(),
        to: span.status,
        changes: span
            .changes
            .into_iter()
            .map(|(from, to, at)| SilencedChange { from, to, at })
            .collect(),
        held: span.held,
    }
}

/// Concludes silences every [`LOOK_EVERY`] until `stop`.
pub async fn run(checker: Arc<Checker>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = conclude_due(&checker).await {
            // Fenced (another instance leads now) or the database is away: the next look, here
            // or on the new leader, concludes it.
            crate::log_store_failure!(&e, "cannot conclude the silences that ended: {e:#}");
        }
    }
}
