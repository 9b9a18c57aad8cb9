//! Value types that validate themselves while being deserialized, so that toml reports their
//! errors with the span of the offending value.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::Timelike as _;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// A Cloud Manager organization id: exactly 24 lowercase hex characters. Shared, not copied:
/// the scheduler, the group commit's memory and the metrics each keep the ids of every org.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgId(Arc<str>);

/// The hasher of maps keyed by [`OrgId`] (the group commit's memory, the check counters):
/// the ids come from the config file, not from a peer, so SipHash's defence against chosen keys
/// buys nothing, and foldhash costs less on the check's path.
pub type OrgIdHasher = foldhash::fast::RandomState;

impl OrgId {
    pub fn parse(s: &str) -> Result<OrgId, String> {
        if s.len() == 24 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(OrgId(s.into()))
        } else {
            Err(format!(
                "\"{s}\" is not an org id: expected exactly 24 lowercase hex characters \
                 (Cloud Manager: Organization > Settings)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for OrgId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        OrgId::parse(&s).map_err(D::Error::custom)
    }
}

/// The longest duration any setting accepts. Durations are added to instants and dates (the
/// next check, a reminder, the retention cut-off); bounded here, where the file is read, no such
/// sum can overflow later, and a typo such as "9999999999999d" is reported with its line
/// instead of ending the daemon. No setting means more than a few years.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// A duration written for humans: "30s", "5m", "1h 30m"; at most [`MAX_DURATION`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn parse(s: &str) -> Result<HumanDuration, String> {
        let d = humantime::parse_duration(s.trim())
            .map_err(|e| format!("invalid duration \"{s}\": {e} (write e.g. \"30s\", \"5m\", \"1h\")"))?;
        if d > MAX_DURATION {
            return Err(format!("\"{s}\" is too long: a duration is at most 10 years (3650d)"));
        }
        Ok(HumanDuration(d))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HumanDuration::parse(&s).map_err(D::Error::custom)
    }
}

/// A cron expression with six fields, seconds first, evaluated in a time zone (UTC unless the
/// section sets `timezone`). Its slots are found in that zone's local time, so a 09:00 slot in
/// Europe/Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
#[derive(Clone)]
pub struct CronExpr {
    text: String,
    cron: croner::Cron,
    zone: chrono_tz::Tz,
}

impl CronExpr {
    pub fn parse(text: &str) -> Result<CronExpr, String> {
        let fields = text.split_whitespace().count();
        if fields != 6 {
            return Err(format!(
                "cron \"{text}\" has {fields} fields; linkwatch wants 6, seconds first \
                 (e.g. \"0 */5 * * * *\" for every five minutes)"
            ));
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(text)
            .map_err(|e| format!("invalid cron \"{text}\": {e}"))?;
        Ok(CronExpr {
            text: text.to_owned(),
            cron,
            zone: chrono_tz::Tz::UTC,
        })
    }

    /// This expression, evaluated in `zone`.
    pub fn in_zone(mut self, zone: Zone) -> CronExpr {
        self.zone = zone.0;
        self
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The zone its slots are found in.
    pub fn zone(&self) -> chrono_tz::Tz {
        self.zone
    }

    /// "UTC", or the zone's IANA name: what messages show after the expression.
    pub fn zone_name(&self) -> &'static str {
        self.zone.name()
    }

    /// The first time strictly after `after` that matches, in UTC.
    pub fn next_after(&self, after: chrono::DateTime<chrono::Utc>) -> Option<chrono::DateTime<chrono::Utc>> {
        // croner keeps the sub-second part of its input; slots are whole seconds.
        let whole = after.with_nanosecond(0).unwrap_or(after).with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&whole, false)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    }

    /// The latest time at or before `at` that matches, in UTC.
    pub fn latest_at_or_before(&self, at: chrono::DateTime<chrono::Utc>) -> Option<chrono::DateTime<chrono::Utc>> {
        let whole = at.with_nanosecond(0).unwrap_or(at).with_timezone(&self.zone);
        self.cron
            .find_previous_occurrence(&whole, true)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    }
}

impl PartialEq for CronExpr {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text && self.zone == other.zone
    }
}

impl fmt::Debug for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.zone == chrono_tz::Tz::UTC {
            write!(f, "CronExpr({:?})", self.text)
        } else {
            write!(f, "CronExpr({:?} in {})", self.text, self.zone.name())
        }
    }
}

/// An IANA time zone name (`timezone = "Europe/Berlin"`); a name it does not know is refused
/// with the nearest one it does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Zone(pub chrono_tz::Tz);

impl Zone {
    pub fn parse(text: &str) -> Result<Zone, String> {
        if let Ok(tz) = text.parse::<chrono_tz::Tz>() {
            return Ok(Zone(tz));
        }
        let names: Vec<String> = chrono_tz::TZ_VARIANTS.iter().map(|t| t.name().to_owned()).collect();
        let hint = names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(text))
            .cloned()
            .or_else(|| super::recover::words::nearest(text, &names))
            .map(|best| format!("; did you mean \"{best}\"?"))
            .unwrap_or_else(|| " (an IANA name such as \"Europe/Berlin\" or \"America/New_York\")".into());
        Err(format!("unknown time zone \"{text}\"{hint}"))
    }
}

impl<'de> Deserialize<'de> for Zone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Zone::parse(s.trim()).map_err(D::Error::custom)
    }
}

impl<'de> Deserialize<'de> for CronExpr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CronExpr::parse(s.trim()).map_err(D::Error::custom)
    }
}

/// The kinds of event a route can select.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    FirstSeen,
    StatusChanged,
    CheckFailing,
    CheckRecovered,
    Reminder,
    MigrationStatusChanged,
    ReadyForCutover,
    ReadyForCutoverLost,
    LagHigh,
    LagRecovered,
    CutoverDeadline,
    LinkBrokenDuringMigration,
    MigrationCheckFailing,
    MigrationCheckRecovered,
    SilenceEnded,
    ApiDeprecated,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::FirstSeen => "first_seen",
            EventKind::StatusChanged => "status_changed",
            EventKind::CheckFailing => "check_failing",
            EventKind::CheckRecovered => "check_recovered",
            EventKind::Reminder => "reminder",
            EventKind::MigrationStatusChanged => "migration_status_changed",
            EventKind::ReadyForCutover => "ready_for_cutover",
            EventKind::ReadyForCutoverLost => "ready_for_cutover_lost",
            EventKind::LagHigh => "lag_high",
            EventKind::LagRecovered => "lag_recovered",
            EventKind::CutoverDeadline => "cutover_deadline",
            EventKind::LinkBrokenDuringMigration => "link_broken_during_migration",
            EventKind::MigrationCheckFailing => "migration_check_failing",
            EventKind::MigrationCheckRecovered => "migration_check_recovered",
            EventKind::SilenceEnded => "silence_ended",
            EventKind::ApiDeprecated => "api_deprecated",
        }
    }
}
