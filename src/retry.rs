//! The one retry policy every channel uses: exponential backoff with full jitter in the upper
//! half, never sooner than the receiver's `Retry-After`, given up after a maximum age; and the
//! hold: how long a delivery that keeps failing may hold back the rest of its channel.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header;

/// A delivery that has failed this many times stops holding back other orgs' deliveries on its
/// channel (its own org's later deliveries still wait for it).
pub const HOLD_ATTEMPTS: i64 = 3;

/// ... or once this long has passed since its first failed attempt, whichever comes first. With
/// the default backoff three attempts take about 6 to 12 seconds; the time bound matters when a
/// receiver asks for long waits (`Retry-After`).
pub const HOLD_TIME: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// A delivery older than this is marked failed instead of retried.
    pub max_age: Duration,
    /// The longest `Retry-After` honoured; a receiver asking for more is retried after this.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(600),
            max_age: Duration::from_secs(24 * 3600),
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

impl RetryPolicy {
    /// How long to wait after `attempts` failed attempts (counting the one that just failed):
    /// exponential with jitter, and never sooner than `retry_after` (itself bounded by
    /// `max_retry_after`).
    pub fn delay(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .first_delay
            .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1)))
            .min(self.max_delay);
        // Jitter spreads retries of many deliveries that failed together.
        let jittered = Duration::try_from_secs_f64(exp.as_secs_f64() * rand::random_range(0.5..=1.0)).unwrap_or(exp);
        jittered.max(retry_after.unwrap_or_default().min(self.max_retry_after))
    }

    /// The longest wait [`delay`](Self::delay) can return. A stored retry time further ahead
    /// than this was written before the wall clock stepped back, and counts as due.
    pub fn longest_wait(&self) -> Duration {
        self.max_delay.max(self.max_retry_after)
    }

    /// Whether a delivery created at `created` may still be tried at `at`.
    pub fn within_max_age(&self, created: DateTime<Utc>, at: DateTime<Utc>) -> bool {
        chrono::Duration::from_std(self.max_age)
            .ok()
            .and_then(|age| created.checked_add_signed(age))
            .is_none_or(|deadline| at <= deadline)
    }
}

/// `Retry-After` in its seconds form; the HTTP-date form is rare enough on these APIs that a
/// default backoff serves it.
pub fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_capped_and_honours_retry_after() {
        let p = RetryPolicy::default();
        for attempts in 1..40 {
            let secs = p.delay(attempts, None).as_secs_f64();
            let exp = (2u64 << (attempts - 1).min(20)).min(600) as f64;
            assert!(
                secs >= exp / 2.0 - 0.01 && secs <= exp + 0.01,
                "attempt {attempts}: {secs}s"
            );
        }
        assert!(p.delay(1, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
        assert!(p.delay(u32::MAX, None) <= p.max_delay);
    }

    #[test]
    fn a_huge_retry_after_is_bounded() {
        let p = RetryPolicy::default();
        let huge = Some(Duration::from_secs(10_000_000_000_000));
        assert_eq!(p.delay(1, huge), p.max_retry_after);
        assert_eq!(p.longest_wait(), Duration::from_secs(3600));
    }

    #[test]
    fn gives_up_after_max_age() {
        let p = RetryPolicy::default();
        let now = Utc::now();
        assert!(!p.within_max_age(now - chrono::Duration::hours(24), now + chrono::Duration::seconds(1)));
        assert!(p.within_max_age(now - chrono::Duration::hours(1), now));
        assert!(p.within_max_age(DateTime::<Utc>::MAX_UTC, now));
        let forever = RetryPolicy {
            max_age: Duration::MAX,
            ..p
        };
        assert!(forever.within_max_age(now - chrono::Duration::days(10_000), now));
    }
}
