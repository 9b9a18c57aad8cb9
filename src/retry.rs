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
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(600),
            max_age: Duration::from_secs(24 * 3600),
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

/// The longest wait a `Retry-After` header can impose. A server may send anything (a buggy
/// proxy sent 10^13 seconds, which overflows every date type); an hour honours any sensible rate
/// limit, and the next answer can ask for another hour if it really means it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The wait a `Retry-After` header asks for, in either form: seconds, or an HTTP date (relative to
/// now; a date in the past asks for no wait). Clamped to [`MAX_RETRY_AFTER`], so callers can add
/// it to any instant; `None` when absent or unreadable (the caller's own backoff applies).
pub fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    retry_after_at(headers, Utc::now())
}

/// [`retry_after`] relative to `now`.
pub fn retry_after_at(headers: &header::HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let asked = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits beyond u64 are still a number of seconds, only a very large one.
        value.parse::<u64>().map_or(Duration::MAX, Duration::from_secs)
    } else {
        let at = DateTime::parse_from_rfc2822(value).ok()?.with_timezone(&Utc);
        (at - now).to_std().unwrap_or(Duration::ZERO)
    };
    if asked > MAX_RETRY_AFTER {
        // Logged here, once per answer: the caller then waits the clamped hour, so this cannot
        // flood the log. The value is a server's number, never a secret.
        let max = humantime::format_duration(MAX_RETRY_AFTER);
        tracing::warn!(
            retry_after = value,
            "Retry-After asks for more than {max}; waiting {max}"
        );
        return Some(MAX_RETRY_AFTER);
    }
    Some(asked)
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

    fn headers(value: &str) -> header::HeaderMap {
        let mut h = header::HeaderMap::new();
        h.insert(header::RETRY_AFTER, header::HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_clamps_huge_values() {
        let now: DateTime<Utc> = "2026-11-29T08:00:00Z".parse().unwrap();
        let at = |v: &str| retry_after_at(&headers(v), now);
        assert_eq!(at("42"), Some(Duration::from_secs(42)));
        assert_eq!(at(" 0 "), Some(Duration::ZERO));
        assert_eq!(at("10000000000000"), Some(MAX_RETRY_AFTER));
        assert_eq!(at("99999999999999999999999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(at("Sun, 29 Nov 2026 08:02:00 GMT"), Some(Duration::from_secs(120)));
        assert_eq!(at("Sun, 29 Nov 2026 07:00:00 GMT"), Some(Duration::ZERO), "a past date");
        assert_eq!(at("Fri, 31 Dec 9999 23:59:59 GMT"), Some(MAX_RETRY_AFTER));
        assert_eq!(at("-5"), None);
        assert_eq!(at("1.5"), None);
        assert_eq!(at("soon"), None);
        assert_eq!(retry_after_at(&header::HeaderMap::new(), now), None);
    }
}
