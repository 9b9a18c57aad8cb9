//! The one retry policy every channel uses: exponential backoff with full jitter in the upper
//! half, never sooner than the receiver's `Retry-After`, given up after a maximum age.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header;

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
    /// When to try again after `attempts` failed attempts (counting the one that just failed),
    /// or `None` when the delivery created at `created` is too old to keep trying.
    pub fn next_attempt(
        &self,
        attempts: u32,
        created: DateTime<Utc>,
        now: DateTime<Utc>,
        retry_after: Option<Duration>,
    ) -> Option<DateTime<Utc>> {
        let exp = self
            .first_delay
            .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1)))
            .min(self.max_delay);
        // Jitter spreads retries of many deliveries that failed together.
        let jittered = exp.mul_f64(rand::random_range(0.5..=1.0));
        let delay = jittered.max(retry_after.unwrap_or_default());
        let at = now + chrono::Duration::from_std(delay).ok()?;
        let deadline = created + chrono::Duration::from_std(self.max_age).ok()?;
        (at <= deadline).then_some(at)
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
        let now = Utc::now();
        for attempts in 1..20 {
            let at = p.next_attempt(attempts, now, now, None).unwrap();
            let exp = (2u64 << (attempts - 1).min(20)).min(600) as f64;
            let secs = (at - now).num_milliseconds() as f64 / 1000.0;
            assert!(
                secs >= exp / 2.0 - 0.01 && secs <= exp + 0.01,
                "attempt {attempts}: {secs}s"
            );
        }
        let at = p.next_attempt(1, now, now, Some(Duration::from_secs(30))).unwrap();
        assert!((at - now).num_seconds() >= 30);
    }

    #[test]
    fn gives_up_after_max_age() {
        let p = RetryPolicy::default();
        let now = Utc::now();
        let created = now - chrono::Duration::hours(24);
        assert_eq!(p.next_attempt(3, created, now, None), None);
        assert!(p.next_attempt(3, now - chrono::Duration::hours(1), now, None).is_some());
    }
}
