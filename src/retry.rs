//! The one retry policy every channel uses: exponential backoff with full jitter in the upper
//! half, never sooner than the receiver's `Retry-After`, given up after a maximum age; and the
//! hold: how long failing deliveries may hold back the rest of their channel, once per incident
//! (see `dispatch::select`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header;

/// Once a channel has made this many failed attempts in an incident (however many orgs fail),
/// its failing deliveries stop holding back other orgs' deliveries (each org's later deliveries
/// still wait for its failing one).
pub const HOLD_ATTEMPTS: i64 = 3;

/// ... or once this long has passed since the incident's first failed attempt, whichever comes
/// first. With the default backoff three attempts take about 6 to 12 seconds; the time bound
/// matters when a receiver asks for long waits (`Retry-After`).
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
