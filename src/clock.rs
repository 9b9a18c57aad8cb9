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
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// What time it is now, by the wall clock (with any step applied).
    pub fn now(&self) -> DateTime<Utc> {
        let offset = chrono::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed));
        let now = Utc::now();
        now.checked_add_signed(offset).unwrap_or(now)
    }

    /// Steps this clock (and every copy of it) by `by`, as an NTP correction would: negative
    /// steps go back in time.
    pub fn step(&self, by: chrono::Duration) {
        self.offset_ms.fetch_add(by.num_milliseconds(), Ordering::Relaxed);
    }
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
}
