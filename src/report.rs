//! Scheduled reports: what one says ([`Report`], built from the store's current status of the
//! configured orgs) and its plain-text rendering. Each channel renders it in its own form
//! (`channels::slack::report`, `channels::email::render_report`, `channels::webhook::body`);
//! `jobs.rs` decides when one is due and enqueues it.

pub mod jobs;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::config::{LiveMigration, Org};
use crate::store::{CurrentStatus, LiveMigrationRow, StoredEvent, ts};
use crate::text::{Message, human_secs};

/// Bumped when the report's JSON (the webhook's `report`) changes incompatibly.
pub const SCHEMA_VERSION: u32 = 1;

/// One report, as stored in its event's payload and as webhooks receive it (`report`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The `[[report]]` name (its cron text when unnamed).
    pub name: String,
    /// The IANA time zone its times are shown in (`[[report]] timezone`); absent: UTC. The
    /// times in the JSON stay ISO-8601 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The cron slot this report stands for (ISO-8601 UTC); for `linkwatch report`, the time it ran.
    pub slot: String,
    /// When it was made; later than `slot` by more than a minute only when `late`.
    pub generated_at: String,
    /// Sent after its slot because linkwatch was not running then.
    pub late: bool,
    /// Configured orgs.
    pub orgs: usize,
    /// Of those, how many links are `SYNCED`.
    pub synced: usize,
    /// The others, longest first.
    pub not_synced: Vec<NotSynced>,
    /// Orgs whose checks are failing (as many in a row as `poll.failures_before_alert`), and why.
    pub failing: Vec<Failing>,
    /// The configured live migrations that are not `COMPLETE`: ready for cutover first (least
    /// time left first), then the rest by name. Absent in reports made before migrations were
    /// followed.
    #[serde(default)]
    pub migrations: Vec<LiveMigrationLine>,
}

/// One live migration in a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveMigrationLine {
    pub name: String,
    pub org_name: String,
    /// `None` when no check of it has succeeded yet.
    pub status: Option<String>,
    pub ready_for_cutover: bool,
    /// Estimated (see the README): when readiness was first seen plus the cutover window.
    pub estimated_deadline: Option<String>,
    /// Seconds left to `estimated_deadline` at `generated_at` (negative once it has passed).
    pub left_s: Option<i64>,
    pub lag_s: Option<i64>,
    /// Why its checks fail, when they do.
    pub failing: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotSynced {
    pub org_id: String,
    pub org_name: String,
    /// `None` when no check of it has succeeded yet.
    pub status: Option<String>,
    /// Since when it has had this status.
    pub since: Option<String>,
    /// For how long, in seconds, at `generated_at`.
    pub for_s: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failing {
    pub org_id: String,
    pub org_name: String,
    pub failures: i64,
    /// The last failure in plain words.
    pub reason: String,
}

/// Where a report is due and what it covers, beside the store's rows.
#[derive(Debug, Clone, Copy)]
pub struct Slot<'a> {
    pub name: &'a str,
    pub at: DateTime<Utc>,
    pub late: bool,
    /// Where the report's times are shown (the zone of its `cron`).
    pub zone: Tz,
}

impl Report {
    /// The report of `orgs` from the store's current status `rows`, at `now`. Pure: rows of
    /// orgs no longer configured are left out, and an org with no row yet is "not checked yet".
    pub fn build(
        slot: Slot<'_>,
        orgs: &[Org],
        rows: &[CurrentStatus],
        failures_before_alert: u32,
        now: DateTime<Utc>,
    ) -> Report {
        let mut synced = 0;
        let mut not_synced = Vec::new();
        let mut failing = Vec::new();
        for org in orgs {
            let row = rows.iter().find(|r| r.org_id == org.id.as_str());
            let status = row.and_then(|r| r.status.clone());
            if status.as_deref() == Some("SYNCED") {
                synced += 1;
            } else {
                let since = row.and_then(|r| r.since.clone());
                let for_s = since
                    .as_deref()
                    .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    .map(|s| (now - s.with_timezone(&Utc)).num_seconds().max(0));
                not_synced.push(NotSynced {
                    org_id: org.id.as_str().to_owned(),
                    org_name: org.name.clone(),
                    status,
                    since,
                    for_s,
                });
            }
            if let Some(r) = row
                && r.consecutive_failures >= i64::from(failures_before_alert)
            {
                failing.push(Failing {
                    org_id: org.id.as_str().to_owned(),
                    org_name: org.name.clone(),
                    failures: r.consecutive_failures,
                    reason: r.last_error.clone().unwrap_or_else(|| "unknown".to_owned()),
                });
            }
        }
        // Longest first; never checked successfully (no time known) last, by name.
        not_synced.sort_by(|a, b| b.for_s.cmp(&a.for_s).then_with(|| a.org_name.cmp(&b.org_name)));
        failing.sort_by(|a, b| b.failures.cmp(&a.failures).then_with(|| a.org_name.cmp(&b.org_name)));
        Report {
            name: slot.name.to_owned(),
            timezone: (slot.zone != Tz::UTC).then(|| slot.zone.name().to_owned()),
            slot: ts(slot.at),
            generated_at: ts(now),
            late: slot.late,
            orgs: orgs.len(),
            synced,
            not_synced,
            failing,
            migrations: Vec::new(),
        }
    }

    /// This report with its live migrations section, from the `migration_status` rows. Pure,
    /// like [`Report::build`]: only configured migrations, `COMPLETE` ones left out.
    pub fn with_live_migrations(
        mut self,
        migrations: &[LiveMigration],
        orgs: &[Org],
        rows: &[LiveMigrationRow],
        failures_before_alert: u32,
        now: DateTime<Utc>,
    ) -> Report {
        let mut lines: Vec<LiveMigrationLine> = migrations
            .iter()
            .filter_map(|m| {
                let row = rows.iter().find(|r| r.migration_id == m.id);
                let status = row.and_then(|r| r.status.clone());
                if status.as_deref() == Some("COMPLETE") {
                    return None;
                }
                let estimated_deadline = row.and_then(|r| r.estimated_deadline.clone());
                Some(LiveMigrationLine {
                    name: m.name.clone(),
                    org_name: orgs
                        .iter()
                        .find(|o| o.id == m.org)
                        .map_or_else(|| m.org.to_string(), |o| o.name.clone()),
                    status,
                    ready_for_cutover: row.is_some_and(|r| r.ready_for_cutover),
                    left_s: row.and_then(|r| r.left_s(now)),
                    estimated_deadline,
                    lag_s: row.and_then(|r| r.lag_s),
                    failing: row
                        .filter(|r| r.consecutive_failures >= i64::from(failures_before_alert))
                        .map(|r| r.last_error.clone().unwrap_or_else(|| "unknown".to_owned())),
                })
            })
            .collect();
        lines.sort_by(|a, b| {
            b.ready_for_cutover
                .cmp(&a.ready_for_cutover)
                .then_with(|| a.left_s.unwrap_or(i64::MAX).cmp(&b.left_s.unwrap_or(i64::MAX)))
                .then_with(|| a.name.cmp(&b.name))
        });
        self.migrations = lines;
        self
    }

    /// The live migrations, one line each, ready for cutover first.
    pub fn live_migration_lines(&self) -> Vec<String> {
        self.migrations
            .iter()
            .map(|m| format!("{} ({}): {}", m.name, m.org_name, self.where_it_stands(m)))
            .collect()
    }

    /// A live migration's status, readiness, time left, lag and failing checks, in words.
    pub fn where_it_stands(&self, m: &LiveMigrationLine) -> String {
        let mut line = match (&m.status, m.ready_for_cutover) {
            (Some(s), true) => format!("{s}, READY for cutover"),
            (Some(s), false) => s.clone(),
            (None, _) => "no successful check yet".to_owned(),
        };
        if let (true, Some(left), Some(deadline)) = (m.ready_for_cutover, m.left_s, m.estimated_deadline.as_deref()) {
            if left > 0 {
                line.push_str(&format!(
                    ", about {} left (estimated deadline {})",
                    human_secs(left),
                    self.shown(deadline)
                ));
            } else {
                line.push_str(&format!(", the estimated deadline {} has passed", self.shown(deadline)));
            }
        }
        if let Some(lag) = m.lag_s {
            line.push_str(&format!(", lag {}", human_secs(lag)));
        }
        if let Some(why) = &m.failing {
            line.push_str(&format!("; checks failing: {why}"));
        }
        line
    }

    /// What a report says about deadlines, when it lists a migration ready for cutover.
    pub fn live_migrations_note(&self) -> Option<&'static str> {
        self.migrations.iter().any(|m| m.ready_for_cutover).then_some(
            "Deadlines are estimated from when linkwatch first saw a migration ready; an extension made in \
             the Atlas UI is not visible to linkwatch.",
        )
    }

    /// One line that stands on its own (Slack's `text`, the mail's subject, the console).
    pub fn title(&self) -> String {
        let mut title = format!("linkwatch report: {} of {} links SYNCED", self.synced, self.orgs);
        if !self.failing.is_empty() {
            title.push_str(&format!(", checks failing for {}", self.failing.len()));
        }
        let ready = self.migrations.iter().filter(|m| m.ready_for_cutover).count();
        if ready > 0 {
            title.push_str(&format!(", {ready} migration(s) ready for cutover"));
        }
        if self.late {
            title.push_str(&format!(" (late: for {})", self.shown(&self.slot)));
        }
        title
    }

    /// Why it is late, in words.
    pub fn late_note(&self) -> Option<String> {
        self.late.then(|| {
            format!(
                "This is the report due at {}, sent at {}: linkwatch was not running at its time.",
                self.shown(&self.slot),
                self.shown(&self.generated_at)
            )
        })
    }

    /// The links that are not SYNCED, one line each, longest first.
    pub fn not_synced_lines(&self) -> Vec<String> {
        self.not_synced
            .iter()
            .map(|n| match (&n.status, n.for_s) {
                (Some(s), Some(f)) => format!("{}: {s} for {}", n.org_name, human_secs(f)),
                (Some(s), None) => format!("{}: {s}", n.org_name),
                (None, _) => format!("{}: no successful check yet", n.org_name),
            })
            .collect()
    }

    /// The failing checks, one line each.
    pub fn failing_lines(&self) -> Vec<String> {
        self.failing
            .iter()
            .map(|f| format!("{}: {} failed checks in a row: {}", f.org_name, f.failures, f.reason))
            .collect()
    }

    /// The whole report as plain text (email, console).
    pub fn text(&self) -> String {
        let mut text = format!("{}\n", self.title());
        if let Some(note) = self.late_note() {
            text.push_str(&format!("\n{note}\n"));
        }
        text.push_str(&format!("\nSYNCED: {} of {}\n", self.synced, self.orgs));
        let section = |text: &mut String, heading: &str, lines: Vec<String>| {
            if !lines.is_empty() {
                text.push_str(&format!("\n{heading}:\n"));
                for l in lines {
                    text.push_str(&format!("  - {l}\n"));
                }
            }
        };
        section(&mut text, "Not SYNCED (longest first)", self.not_synced_lines());
        section(&mut text, "Checks failing", self.failing_lines());
        section(
            &mut text,
            "Live migrations (ready for cutover first)",
            self.live_migration_lines(),
        );
        if let Some(note) = self.live_migrations_note() {
            text.push_str(&format!("  {note}\n"));
        }
        text.push_str(&format!("\nAs of {}.\n", self.shown(&self.generated_at)));
        text
    }

    /// The message the channels send for this report's event.
    pub fn message(&self, stored: &StoredEvent) -> Message {
        Message {
            title: self.title(),
            advice: self.late_note(),
            org_name: self.name.clone(),
            org_id: stored.org_id.clone(),
            kind: stored.kind.clone(),
            event_id: stored.id.clone(),
            at: stored.created_at.clone(),
            data: serde_json::to_value(self).unwrap_or(serde_json::Value::Null),
            links: Vec::new(),
        }
    }

    /// The report a [`Message`] of kind `report` carries; `None` for any other message.
    pub fn of(m: &Message) -> Option<Report> {
        (m.kind == KIND)
            .then(|| serde_json::from_value(m.data.clone()).ok())
            .flatten()
    }
}

/// The event kind of a report in `events` and the outbox.
pub const KIND: &str = "report";

impl Report {
    /// The zone its times are shown in: its `timezone`, UTC when absent (or unknown to this
    /// build, for a report stored by another).
    pub fn zone(&self) -> Tz {
        self.timezone.as_deref().and_then(|z| z.parse().ok()).unwrap_or(Tz::UTC)
    }

    /// An ISO time of this report to the minute, in its zone and named by it: "2026-03-28
    /// 09:00 CET", "2026-11-29 09:00 UTC". The zone's abbreviation says which side of a DST
    /// change a time is on.
    pub fn shown(&self, iso: &str) -> String {
        match DateTime::parse_from_rfc3339(iso) {
            Ok(t) => t.with_timezone(&self.zone()).format("%Y-%m-%d %H:%M %Z").to_string(),
            Err(_) => iso.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Credential, OrgId, Schedule};
    use std::sync::Arc;

    fn org(id: &str, name: &str) -> Org {
        Org {
            id: OrgId::parse(id).unwrap(),
            name: name.into(),
            schedule: Schedule::Every(std::time::Duration::from_secs(60)),
            endpoint: endpoint(),
            credential: credential(),
        }
    }

    fn endpoint() -> Arc<crate::config::Endpoint> {
        let base_url = reqwest::Url::parse("https://cloud.mongodb.com/api/public/v1.0/").unwrap();
        Arc::new(crate::config::Endpoint {
            token_url: base_url.join("/api/oauth/token").unwrap(),
            base_url,
        })
    }

    fn credential() -> Arc<Credential> {
        Arc::new(Credential::ApiKey {
            public_key: "p".into(),
            private_key: crate::secret::Secret::new("k"),
        })
    }

    fn row(id: &str, status: Option<&str>, since: &str, failures: i64, error: Option<&str>) -> CurrentStatus {
        CurrentStatus {
            org_id: id.into(),
            org_name: "stale name".into(),
            status: status.map(Into::into),
            since: Some(since.into()),
            last_checked_at: since.into(),
            consecutive_failures: failures,
            last_error: error.map(Into::into),
        }
    }

    #[test]
    fn counts_synced_lists_the_rest_longest_first_and_the_failing_with_their_reason() {
        let (a, b, c, d) = (
            "5f0c1234567890abcdef0001",
            "5f0c1234567890abcdef0002",
            "5f0c1234567890abcdef0003",
            "5f0c1234567890abcdef0004",
        );
        let orgs = [org(a, "alpha"), org(b, "beta"), org(c, "gamma"), org(d, "delta")];
        let rows = [
            row(a, Some("SYNCED"), "2026-11-29T00:00:00.000Z", 0, None),
            row(b, Some("NOT_SYNCED"), "2026-11-29T07:00:00.000Z", 0, None),
            row(
                c,
                Some("PENDING"),
                "2026-11-28T09:00:00.000Z",
                4,
                Some("HTTP 401: unauthorized"),
            ),
            row(
                "5f0c1234567890abcdef9999",
                Some("NOT_SYNCED"),
                "2026-01-01T00:00:00.000Z",
                0,
                None,
            ),
        ];
        let now = "2026-11-29T09:00:00Z".parse().unwrap();
        let slot = Slot {
            zone: Tz::UTC,
            name: "daily",
            at: now,
            late: false,
        };
        let r = Report::build(slot, &orgs, &rows, 3, now);
        assert_eq!((r.orgs, r.synced), (4, 1));
        assert_eq!(
            r.not_synced_lines(),
            [
                "gamma: PENDING for 1d",
                "beta: NOT_SYNCED for 2h",
                "delta: no successful check yet"
            ]
        );
        assert_eq!(
            r.failing_lines(),
            ["gamma: 4 failed checks in a row: HTTP 401: unauthorized"]
        );
        assert_eq!(r.title(), "linkwatch report: 1 of 4 links SYNCED, checks failing for 1");
        assert!(r.late_note().is_none());
        let late = Report::build(
            Slot { late: true, ..slot },
            &orgs,
            &rows,
            3,
            now + chrono::Duration::hours(3),
        );
        assert!(
            late.title().ends_with("(late: for 2026-11-29 09:00 UTC)"),
            "{}",
            late.title()
        );
        assert!(late.text().contains("sent at 2026-11-29 12:00 UTC"));
    }

    #[test]
    fn migrations_ready_for_cutover_come_first_least_time_left_first_and_complete_ones_leave() {
        let a = "5f0c1234567890abcdef0001";
        let orgs = [org(a, "alpha")];
        let now = DateTime::parse_from_rfc3339("2026-11-30T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let migration = |name: &str, id: &str| LiveMigration {
            name: name.into(),
            org: OrgId::parse(a).unwrap(),
            group_id: "6f0c00000000000000000c01".into(),
            id: id.into(),
            lag_alert: None,
            endpoint: endpoint(),
            credential: credential(),
        };
        let m = [
            migration("rs-working", "6f1d00000000000000000001"),
            migration("rs-ready-later", "6f1d00000000000000000002"),
            migration("rs-ready-soon", "6f1d00000000000000000003"),
            migration("rs-done", "6f1d00000000000000000004"),
            migration("rs-unchecked", "6f1d00000000000000000005"),
        ];
        let row = |id: &str, status: &str, ready: bool, deadline: Option<&str>, failures: i64| LiveMigrationRow {
            migration: "stale".into(),
            migration_id: id.into(),
            org_id: a.into(),
            org_name: Some("alpha".into()),
            group_id: "6f0c00000000000000000c01".into(),
            status: Some(status.into()),
            since: None,
            ready_for_cutover: ready,
            ready_since: None,
            estimated_deadline: deadline.map(Into::into),
            lag_s: Some(30),
            last_checked_at: "2026-11-30T08:59:00.000Z".into(),
            consecutive_failures: failures,
            last_error: (failures > 0).then(|| "Atlas rejected the credentials".into()),
            migration_hosts: Vec::new(),
        };
        let rows = [
            row("6f1d00000000000000000001", "WORKING", false, None, 3),
            row(
                "6f1d00000000000000000002",
                "WORKING",
                true,
                Some("2026-12-03T09:00:00.000Z"),
                0,
            ),
            row(
                "6f1d00000000000000000003",
                "WORKING",
                true,
                Some("2026-11-30T10:00:00.000Z"),
                0,
            ),
            row("6f1d00000000000000000004", "COMPLETE", false, None, 0),
        ];
        let slot = Slot {
            zone: Tz::UTC,
            name: "daily",
            at: now,
            late: false,
        };
        let r = Report::build(slot, &orgs, &[], 3, now).with_live_migrations(&m, &orgs, &rows, 3, now);
        let names: Vec<&str> = r.migrations.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["rs-ready-soon", "rs-ready-later", "rs-unchecked", "rs-working"]);
        let lines = r.live_migration_lines();
        assert_eq!(
            lines[0],
            "rs-ready-soon (alpha): WORKING, READY for cutover, about 1h left (estimated deadline 2026-11-30 10:00 UTC), lag 30s"
        );
        assert_eq!(lines[2], "rs-unchecked (alpha): no successful check yet");
        assert!(
            lines[3].ends_with("; checks failing: Atlas rejected the credentials"),
            "{}",
            lines[3]
        );
        assert!(
            r.title().ends_with(", 2 migration(s) ready for cutover"),
            "{}",
            r.title()
        );
        assert!(r.text().contains("not visible to linkwatch"));
    }

    #[test]
    fn times_are_shown_in_the_report_s_zone_and_named() {
        let zoned = |zone: Tz, late: bool| {
            let slot = Slot {
                zone,
                name: "morning",
                at: "2026-03-28T08:00:00Z".parse().unwrap(),
                late,
            };
            Report::build(slot, &[], &[], 3, "2026-03-29T07:00:05Z".parse().unwrap())
        };
        let berlin = zoned(chrono_tz::Europe::Berlin, true);
        assert_eq!(berlin.timezone.as_deref(), Some("Europe/Berlin"));
        assert!(
            berlin.title().ends_with("(late: for 2026-03-28 09:00 CET)"),
            "{}",
            berlin.title()
        );
        let text = berlin.text();
        assert!(text.contains("sent at 2026-03-29 09:00 CEST"), "{text}");
        assert!(text.contains("As of 2026-03-29 09:00 CEST."), "{text}");
        // The JSON's times stay UTC; a report without a zone says nothing of one.
        assert_eq!(berlin.slot, "2026-03-28T08:00:00.000Z");
        let utc = zoned(Tz::UTC, false);
        assert!(utc.text().contains("As of 2026-03-29 07:00 UTC."));
        assert!(!serde_json::to_string(&utc).unwrap().contains("timezone"));
    }
}
