//! Time, in its two roles. The wall clock (`Clock::now`) says *what time it was*: every timestamp
//! that is recorded or shown. Tokio's monotonic clock (`tokio::time::Instant`, `sleep`) decides
//! *when things run*: due checks, retry waits, pacing, heartbeats. A wall-clock step (NTP, a VM
//! resumed from a snapshot, someone running `date -s`) therefore changes what is written down,
//! never whether the next check or retry happens.
//!
//! The wall clock is injectable: a `Clock` can be stepped, so a test can move it an hour back
//! the way NTP would, and watch checks and retries go on. Tests drive the monotonic side with
//! tokio's paused time where they need to.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

/// The wall clock, plus an offset that only tests and simulations ever change.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
    /// For a simulated clock: the wall time it started at, and when (by tokio's clock).
    simulated: Option<(DateTime<Utc>, tokio::time::Instant)>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A wall clock that reads `start` now and then advances with tokio's clock: under paused
    /// time (`#[tokio::test(start_paused = true)]`) hours pass in milliseconds, and the wall
    /// clock keeps pace with the timers, as it does in a real process.
    pub fn simulated(start: DateTime<Utc>) -> Clock {
        Clock {
            offset_ms: Arc::default(),
            simulated: Some((start, tokio::time::Instant::now())),
        }
    }

    /// What time it is now, by the wall clock (with any step applied).
    pub fn now(&self) -> DateTime<Utc> {
        let now = match self.simulated {
            None => Utc::now(),
            Some((start, at)) => chrono::Duration::from_std(at.elapsed())
                .ok()
                .and_then(|elapsed| start.checked_add_signed(elapsed))
                .unwrap_or(start),
        };
        let offset = chrono::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed));
        now.checked_add_signed(offset).unwrap_or(now)
    }

    /// Steps this clock (and every copy of it) by `by`, as an NTP correction would: negative
    /// steps go back in time.
    pub fn step(&self, by: chrono::Duration) {
        let by = by.num_milliseconds();
        // Saturating, so that no step, however absurd, can wrap the clock around.
        let _ = self
            .offset_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| Some(o.saturating_add(by)));
    }
}

/// Far enough to mean "not in the life of this process", near enough that adding it to an
/// `Instant` cannot overflow.
const FAR: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 86_400);

/// `at + by` on the monotonic clock, never overflowing (and so never panicking): a wait longer
/// than ten years is cut to ten years.
pub fn later(at: tokio::time::Instant, by: std::time::Duration) -> tokio::time::Instant {
    at.checked_add(by.min(FAR)).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_moves_every_copy() {
        let clock = Clock::system();
        let copy = clock.clone();
        let before = copy.now();
        clock.step(chrono::Duration::hours(-1));
        let after = copy.now();
        let moved = before - after;
        assert!(
            moved >= chrono::Duration::minutes(59) && moved <= chrono::Duration::minutes(61),
            "{moved}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_simulated_clock_keeps_pace_with_paused_time_and_can_be_stepped() {
        let start: DateTime<Utc> = "2026-11-29T08:00:00Z".parse().unwrap();
        let clock = Clock::simulated(start);
        assert_eq!(clock.now(), start);
        tokio::time::sleep(std::time::Duration::from_secs(90)).await;
        assert_eq!(clock.now(), start + chrono::Duration::seconds(90));
        clock.step(chrono::Duration::hours(-1));
        assert_eq!(
            clock.now(),
            start + chrono::Duration::seconds(90) - chrono::Duration::hours(1)
        );
    }

    #[test]
    fn later_never_overflows() {
        let now = tokio::time::Instant::now();
        assert!(later(now, std::time::Duration::MAX) > now);
        assert_eq!(
            later(now, std::time::Duration::from_secs(5)),
            now + std::time::Duration::from_secs(5)
        );
    }
}
