//! Where each org's next check falls: wall-clock slots (the stable per-org offset of an interval,
//! the matches of a cron expression) turned into deadlines on tokio's monotonic clock.
//!
//! The wall clock says which slot is meant; the monotonic clock says when it has come. An interval
//! is placed on the wall clock once, when the loop starts, and then advances on the monotonic
//! timeline by whole periods, so a wall-clock step cannot move it. A cron slot has a meaning on
//! the wall clock ("08:00 UTC"), so each next one is looked up from the wall clock at the time it
//! is scheduled and converted to a delay: after a step back, the next cron check comes at most
//! one cron period later, not an hour later.
//!
//! All arithmetic is checked: no schedule, `Retry-After` or clock value can overflow and panic.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::clock::later;
use crate::config::{OrgId, Schedule};

/// The longest a server's `Retry-After` can postpone a check: a day. A larger value is a
/// mistake (or an attack) and is treated as a day.
pub const MAX_NOT_BEFORE: Duration = Duration::from_secs(86_400);

/// The next check of one org: when (monotonic), and for a cron schedule which wall-clock slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub at: Instant,
    pub cron_slot: Option<DateTime<Utc>>,
}

/// How long from `now` until `slot` on the wall clock; zero for a slot in the past.
fn until(slot: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    slot.signed_duration_since(now).to_std().unwrap_or(Duration::ZERO)
}

/// The first wall-clock slot at or after `now` for an org; `None` when the schedule has none
/// (a cron expression that never matches again).
pub fn first_due(schedule: &Schedule, org: &OrgId, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match schedule {
        Schedule::Every(every) => {
            let period = i128::try_from(every.as_millis()).unwrap_or(i128::MAX).max(1);
            let offset = i128::from(stable_hash(org.as_str())) % period;
            let t = i128::from(now.timestamp_millis());
            // The smallest slot = offset + k * period that is >= now.
            let k = (t - offset + period - 1).div_euclid(period);
            let slot = k.checked_mul(period)?.checked_add(offset)?;
            DateTime::from_timestamp_millis(i64::try_from(slot).ok()?)
        }
        Schedule::Cron(cron) => cron.next_after(now.checked_sub_signed(chrono::Duration::milliseconds(1))?),
    }
}

/// The next wall-clock slot strictly after `after`.
pub fn next_due(schedule: &Schedule, org: &OrgId, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    first_due(
        schedule,
        org,
        after.checked_add_signed(chrono::Duration::milliseconds(1))?,
    )
}

/// FNV-1a: stable across runs and versions, unlike `std`'s randomly seeded hasher.
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The smallest `prev + k * period` (k >= 1) strictly after `t`: whole missed periods are skipped,
/// never stacked.
pub fn next_slot(prev: Instant, period: Duration, t: Instant) -> Instant {
    let period = period.max(Duration::from_millis(1));
    let behind = t.saturating_duration_since(prev);
    let k = behind.as_nanos() / period.as_nanos() + 1;
    let ahead = period.as_nanos().saturating_mul(k);
    later(prev, Duration::from_nanos(u64::try_from(ahead).unwrap_or(u64::MAX)))
}

/// The first check of an org after the loop starts (monotonic `mono`, wall `wall`).
pub fn first(schedule: &Schedule, org: &OrgId, mono: Instant, wall: DateTime<Utc>) -> Option<Due> {
    let slot = first_due(schedule, org, wall)?;
    Some(Due {
        at: later(mono, until(slot, wall)),
        cron_slot: matches!(schedule, Schedule::Cron(_)).then_some(slot),
    })
}

/// The check after `done`, which starts now.
pub fn after(schedule: &Schedule, done: Due, mono: Instant, wall: DateTime<Utc>) -> Option<Due> {
    match schedule {
        Schedule::Every(period) => Some(Due {
            at: next_slot(done.at, *period, mono),
            cron_slot: None,
        }),
        Schedule::Cron(cron) => {
            let mut slot = cron.next_after(wall)?;
            // The monotonic deadline can come a moment before the wall clock reaches the slot
            // (the two drift apart while NTP slews): never run one slot twice in a row.
            if Some(slot) == done.cron_slot {
                slot = cron.next_after(slot)?;
            }
            Some(Due {
                at: later(mono, until(slot, wall)),
                cron_slot: Some(slot),
            })
        }
    }
}

/// `current` postponed, if needed, so that it comes no sooner than `wait` from now (a server's
/// `Retry-After`, at most [`MAX_NOT_BEFORE`]); `None` when `current` is late enough already.
pub fn postponed(schedule: &Schedule, current: Due, wait: Duration, mono: Instant, wall: DateTime<Utc>) -> Option<Due> {
    let wait = wait.min(MAX_NOT_BEFORE);
    let earliest = later(mono, wait);
    if current.at >= earliest {
        return None;
    }
    match schedule {
        Schedule::Every(period) => Some(Due {
            at: next_slot(current.at, *period, earliest),
            cron_slot: None,
        }),
        Schedule::Cron(cron) => {
            let from = wall.checked_add_signed(chrono::Duration::from_std(wait).ok()?)?;
            let slot = cron.next_after(from)?;
            Some(Due {
                at: later(mono, until(slot, wall)).max(earliest),
                cron_slot: Some(slot),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CronExpr;

    fn org(n: u8) -> OrgId {
        OrgId::parse(&format!("{:024x}", n)).unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn cron(text: &str) -> Schedule {
        Schedule::Cron(Box::new(CronExpr::parse(text).unwrap()))
    }

    /// `[poll] cron` with `timezone`: the checks keep their local hour across a DST change.
    #[test]
    fn cron_slots_in_a_zone_keep_their_local_hour() {
        let zone = crate::config::Zone::parse("Europe/Berlin").unwrap();
        let nine = Schedule::Cron(Box::new(CronExpr::parse("0 0 9 * * *").unwrap().in_zone(zone)));
        let first = first_due(&nine, &org(1), at("2026-03-28T00:00:00Z")).unwrap();
        assert_eq!(first, at("2026-03-28T08:00:00Z"), "09:00 CET");
        assert_eq!(
            next_due(&nine, &org(1), first),
            Some(at("2026-03-29T07:00:00Z")),
            "09:00 CEST"
        );
    }

    #[test]
    fn interval_slots_are_stable_and_spread() {
        let every = Schedule::Every(Duration::from_secs(60));
        let now = at("2026-11-29T08:00:00Z");
        let mut seconds = std::collections::HashSet::new();
        for n in 0..50 {
            let first = first_due(&every, &org(n), now).unwrap();
            assert!(first >= now && first < now + chrono::Duration::seconds(60));
            // The same org lands on the same offset in every minute and on every start.
            let again = first_due(&every, &org(n), now + chrono::Duration::seconds(600)).unwrap();
            assert_eq!((again - first).num_milliseconds() % 60_000, 0);
            assert_eq!(
                next_due(&every, &org(n), first),
                Some(first + chrono::Duration::seconds(60))
            );
            seconds.insert((first - now).num_seconds());
        }
        assert!(
            seconds.len() > 20,
            "50 orgs fell on only {} distinct seconds",
            seconds.len()
        );
    }

    #[test]
    fn cron_slots_follow_the_expression_in_utc() {
        let cron = cron("0 */5 * * * *");
        let first = |s| first_due(&cron, &org(1), at(s));
        assert_eq!(first("2026-11-29T08:00:00Z"), Some(at("2026-11-29T08:00:00Z")));
        assert_eq!(first("2026-11-29T08:00:01Z"), Some(at("2026-11-29T08:05:00Z")));
        assert_eq!(
            next_due(&cron, &org(1), at("2026-11-29T08:05:00Z")),
            Some(at("2026-11-29T08:10:00Z"))
        );
    }

    #[test]
    fn a_late_wake_up_skips_whole_periods_and_never_stacks() {
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        assert_eq!(next_slot(t0, minute, t0), t0 + minute);
        // Woken ten and a half minutes late: the next slot is the one within the coming minute.
        let late = t0 + Duration::from_secs(630);
        assert_eq!(next_slot(t0, minute, late), t0 + Duration::from_secs(660));
        // Exactly on a later slot: that slot is being run now; the next is one period on.
        assert_eq!(next_slot(t0, minute, t0 + 3 * minute), t0 + 4 * minute);
    }

    #[test]
    fn no_value_overflows() {
        let t0 = Instant::now();
        let wall = at("2026-11-29T08:00:00Z");
        let huge = Duration::from_secs(u64::MAX);
        let every = Schedule::Every(huge);
        assert!(next_slot(t0, huge, t0) > t0);
        assert!(next_slot(t0, Duration::ZERO, t0) > t0);
        // A slot too far away to name on the wall clock is no slot at all, and no panic.
        if let Some(due) = first(&every, &org(1), t0, wall) {
            assert!(due.at >= t0);
            assert!(after(&every, due, t0, wall).is_some());
        }
        let far_wall = DateTime::<Utc>::MAX_UTC;
        assert_eq!(first_due(&cron("0 */5 * * * *"), &org(1), far_wall), None);
        let _ = first_due(&every, &org(1), far_wall);
        let _ = first_due(&Schedule::Every(Duration::from_secs(60)), &org(1), far_wall);
        let _ = first_due(
            &Schedule::Every(Duration::from_secs(60)),
            &org(1),
            DateTime::<Utc>::MIN_UTC,
        );
        let minute = Schedule::Every(Duration::from_secs(60));
        let due = first(&minute, &org(1), t0, wall).unwrap();
        let moved = postponed(&minute, due, huge, t0, wall).unwrap();
        assert!(moved.at >= t0 + MAX_NOT_BEFORE && moved.at <= t0 + MAX_NOT_BEFORE + Duration::from_secs(60));
    }

    #[test]
    fn after_a_step_back_the_next_cron_slot_is_at_most_one_period_away() {
        let cron = cron("0 */5 * * * *");
        let t0 = Instant::now();
        let slot = at("2026-11-29T08:00:00Z");
        let done = Due {
            at: t0,
            cron_slot: Some(slot),
        };
        // The wall clock reads an hour earlier than when the slot was scheduled.
        let next = after(&cron, done, t0, slot - chrono::Duration::hours(1)).unwrap();
        assert_eq!(next.cron_slot, Some(at("2026-11-29T07:05:00Z")));
        assert_eq!(next.at, t0 + Duration::from_secs(300));
        // The deadline came a moment before the wall clock reached the slot: the slot is not
        // run twice, the next one is five minutes on.
        let next = after(&cron, done, t0, slot - chrono::Duration::milliseconds(3)).unwrap();
        assert_eq!(next.cron_slot, Some(at("2026-11-29T08:05:00Z")));
    }

    #[test]
    fn a_retry_after_postpones_to_a_slot_no_sooner_than_asked() {
        let t0 = Instant::now();
        let wall = at("2026-11-29T08:00:00Z");
        let minute = Schedule::Every(Duration::from_secs(60));
        let due = Due {
            at: t0 + Duration::from_secs(60),
            cron_slot: None,
        };
        assert_eq!(postponed(&minute, due, Duration::from_secs(30), t0, wall), None);
        let moved = postponed(&minute, due, Duration::from_secs(150), t0, wall).unwrap();
        assert_eq!(moved.at, t0 + Duration::from_secs(180));
        let cron = cron("0 */5 * * * *");
        let due = first(&cron, &org(1), t0, wall).unwrap();
        assert_eq!(due.at, t0);
        let moved = postponed(&cron, due, Duration::from_secs(400), t0, wall).unwrap();
        assert_eq!(moved.cron_slot, Some(at("2026-11-29T08:10:00Z")));
        assert_eq!(moved.at, t0 + Duration::from_secs(600));
    }
}
