//! What an event says to a person: one renderer shared by every channel, so Slack, email and the
//! console never disagree about what happened or what to do.

use std::collections::HashMap;

use reqwest::Url;

use crate::config::Config;
use crate::detect::Event;
use crate::store::StoredEvent;
pub use crate::text::{Link, Message, human_secs};

/// Where the links in messages point: the web consoles behind the configured APIs, and the
/// status page when `[http] public_url` says where people reach it.
#[derive(Debug, Clone, Default)]
pub struct Links {
    /// Cloud Manager's (or Ops Manager's) web console: the API's origin.
    cloud_manager: Option<Url>,
    /// Atlas's web console.
    atlas: Option<Url>,
    page: Option<Url>,
    /// Each `[[migration]]`'s Atlas project and the console of its own Atlas, by its name.
    projects: HashMap<String, (String, Option<Url>)>,
    /// The console of each org asked at another instance than `[cloud_manager]`'s, by id
    /// (only those: the rest share `cloud_manager`).
    consoles: HashMap<String, Url>,
    /// The configured name of each org a `[[migration]]` moves, by its id: a migration's first
    /// event may come before its org's first check has stored the name. Only those orgs: a map
    /// of all 10,000 was a megabyte, and the others' events come from their checks, which store
    /// the name first.
    org_names: HashMap<String, String>,
}

impl Links {
    pub fn of(config: &Config) -> Links {
        Links {
            cloud_manager: console(&config.cloud_manager.base_url, "api/public/v1.0/"),
            atlas: config
                .atlas
                .as_ref()
                .and_then(|a| console(&a.base_url, "api/atlas/v2/")),
            page: config.http_public_url.clone(),
            projects: config
                .migrations
                .iter()
                .map(|m| {
                    let atlas = console(&m.endpoint.base_url, "api/atlas/v2/");
                    (m.name.clone(), (m.group_id.clone(), atlas))
                })
                .collect(),
            consoles: config
                .orgs
                .iter()
                .filter(|o| o.endpoint.base_url != config.cloud_manager.base_url)
                .filter_map(|o| {
                    Some((
                        o.id.as_str().to_owned(),
                        console(&o.endpoint.base_url, "api/public/v1.0/")?,
                    ))
                })
                .collect(),
            org_names: config
                .orgs
                .iter()
                .filter(|o| config.migrations.iter().any(|m| m.org == o.id))
                .map(|o| (o.id.as_str().to_owned(), o.name.clone()))
                .collect(),
        }
    }

    /// The org's page in the Cloud Manager console.
    pub fn cloud_manager_org(&self, org_id: &str) -> Option<String> {
        let console = self.consoles.get(org_id).or(self.cloud_manager.as_ref())?;
        join(console, &format!("v2#/org/{org_id}/projects"))
    }

    /// The Atlas project of the `[[migration]]` named `migration`, where its migration is shown.
    pub fn atlas_project(&self, migration: &str) -> Option<String> {
        let (group, own) = self.projects.get(migration)?;
        join(own.as_ref().or(self.atlas.as_ref())?, &format!("v2/{group}#/clusters"))
    }

    /// The links of an event of org `org_id` (and live migration `migration`, if it is one).
    fn for_event(&self, org_id: &str, migration: Option<&str>) -> Vec<Link> {
        let mut links = Vec::new();
        if let Some(url) = migration.and_then(|m| self.atlas_project(m)) {
            links.push(Link {
                label: "Atlas project",
                url,
            });
        }
        if let Some(url) = self.cloud_manager_org(org_id) {
            links.push(Link {
                label: "Cloud Manager org",
                url,
            });
        }
        if let Some(url) = self.page.as_ref().and_then(|b| join(b, &format!("org/{org_id}"))) {
            links.push(Link {
                label: "status page",
                url,
            });
        }
        links
    }
}

fn join(base: &Url, path: &str) -> Option<String> {
    base.join(path).ok().map(String::from)
}

/// The web console behind an API's `base_url`: the URL without the API's path (an Ops Manager
/// behind a proxy keeps its own path prefix), or the origin when the path is another.
fn console(base_url: &Url, api_path: &str) -> Option<Url> {
    let mut url = base_url.clone();
    // A login written into the URL must not travel in every message and onto the page.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    let path = url.path().to_owned();
    match path.strip_suffix(api_path) {
        Some(prefix) => url.set_path(prefix),
        None => url.set_path("/"),
    }
    Some(url)
}

pub fn render(stored: &StoredEvent, links: &Links) -> Message {
    if stored.kind == crate::report::KIND
        && let Ok(report) = serde_json::from_str::<crate::report::Report>(&stored.payload)
    {
        let mut message = report.message(stored);
        message.links = links
            .page
            .iter()
            .map(|p| Link {
                label: "status page",
                url: p.to_string(),
            })
            .collect();
        return message;
    }
    let org_name = links
        .org_names
        .get(&stored.org_id)
        .cloned()
        .or_else(|| stored.org_name.clone());
    let name = org_name.clone().unwrap_or_else(|| stored.org_id.clone());
    let (title, advice, migration) = match serde_json::from_str::<Event>(&stored.payload) {
        Ok(event) => {
            let (title, advice) = describe(&name, org_name.as_deref(), &event);
            (title, advice, event.live_migration().map(str::to_owned))
        }
        Err(_) => (
            format!("{name}: {} (payload not readable by this version)", stored.kind),
            None,
            None,
        ),
    };
    Message {
        title,
        advice,
        org_name: name,
        org_id: stored.org_id.clone(),
        kind: stored.kind.clone(),
        event_id: stored.id.clone(),
        at: stored.created_at.clone(),
        data: serde_json::from_str(&stored.payload).unwrap_or(serde_json::Value::Null),
        links: links.for_event(&stored.org_id, migration.as_deref()),
    }
}

/// The one line a person reads about `event` of org `name` (the console channel's line, and the
/// daemon's log line for the event).
pub fn summary(name: &str, event: &Event) -> String {
    describe(name, Some(name), event).0
}

fn describe(name: &str, org_name: Option<&str>, event: &Event) -> (String, Option<String>) {
    match event {
        Event::FirstSeen { status } => (
            format!("{name}: migration link is {status} (first check)"),
            advice_for(None, status),
        ),
        Event::StatusChanged { .. } => describe_status_change(name, event),
        Event::CheckFailing { failures, failure, .. } => (
            format!(
                "{name}: status checks failing ({failures} in a row): {}",
                failure.explain()
            ),
            Some("linkwatch cannot see this link's status until this is fixed.".to_owned()),
        ),
        Event::Reminder { .. } => describe_reminder(name, event),
        Event::CheckRecovered { failures, failed_for_s } => (
            format!(
                "{name}: status checks recovered after {} ({failures} failed checks)",
                human_secs(*failed_for_s)
            ),
            None,
        ),
        Event::SilenceEnded { .. } => describe_silence_end(name, event),
        Event::ApiDeprecated { deprecation } => describe_deprecation(deprecation),
        event => describe_live_migration(org_name, event),
    }
}

/// A change of the link's status: back to `SYNCED`, away from it, or between two others.
fn describe_status_change(name: &str, event: &Event) -> (String, Option<String>) {
    let Event::StatusChanged {
        from,
        to,
        from_lasted_s,
        ..
    } = event
    else {
        return (format!("{name}: {}", event.kind()), None);
    };
    let lasted = human_secs(*from_lasted_s);
    let title = if to == "SYNCED" {
        format!("{name}: migration link SYNCED (was {from} for {lasted})")
    } else if from == "SYNCED" {
        format!("{name}: migration link fell back to {to} after {lasted} SYNCED")
    } else {
        format!("{name}: migration link is now {to} (was {from} for {lasted})")
    };
    (title, advice_for(Some(from), to))
}

/// A reminder that a link is still broken, or its checks still failing.
fn describe_reminder(name: &str, event: &Event) -> (String, Option<String>) {
    let Event::Reminder {
        condition,
        status,
        elapsed_s,
        ..
    } = event
    else {
        return (format!("{name}: {}", event.kind()), None);
    };
    let elapsed = human_secs(*elapsed_s);
    match condition {
        crate::detect::Condition::LinkBroken => (
            format!(
                "{name}: reminder: migration link still {} after {elapsed}",
                status.as_deref().unwrap_or("not SYNCED")
            ),
            advice_for(Some("SYNCED"), status.as_deref().unwrap_or("")),
        ),
        crate::detect::Condition::CheckFailing => (
            format!("{name}: reminder: status checks still failing after {elapsed}"),
            Some("linkwatch cannot see this link's status until this is fixed.".to_owned()),
        ),
    }
}

/// An Atlas API version announced for retirement, and what to do before its sunset.
fn describe_deprecation(deprecation: &crate::outcome::ApiDeprecation) -> (String, Option<String>) {
    (
        deprecation_title(deprecation),
        Some(format!(
            "Atlas removes a deprecated version at its sunset and then answers 410, and every live migration check fails. \
             Set [atlas] api_version to the current version of MongoDB's published v2 specification, or update linkwatch, \
             before {}.",
            deprecation.sunset_at.map_or_else(|| "the sunset".to_owned(), when)
        )),
    )
}

/// What a silence that ended elsewhere than it began says: from what, to what, and what
/// happened in between.
fn describe_silence_end(name: &str, event: &Event) -> (String, Option<String>) {
    let Event::SilenceEnded {
        silence,
        migration,
        reason,
        by,
        began_at,
        from,
        to,
        changes,
        held,
    } = event
    else {
        return (format!("{name}: {}", event.kind()), None);
    };
    let what = match migration {
        Some(m) => format!("{m} (org {name})"),
        None => name.to_owned(),
    };
    let status = |s: &Option<String>| s.clone().unwrap_or_else(|| "not yet checked".to_owned());
    let title = format!(
        "{what}: silence {silence} ended: now {}, was {} when it began",
        status(to),
        status(from)
    );
    let mut said = format!(
        "Silenced by {by} since {} ({reason}).",
        crate::text::shown_at(*began_at)
    );
    if changes.is_empty() {
        said.push_str(" No status change was seen in between.");
    } else {
        let steps: Vec<String> = changes
            .iter()
            .take(10)
            .map(|c| {
                format!(
                    "{} → {} at {}",
                    c.from.as_deref().unwrap_or("(first)"),
                    c.to,
                    crate::text::shown_at(c.at)
                )
            })
            .collect();
        said.push_str(&format!(" In between: {}", steps.join("; ")));
        if changes.len() > steps.len() {
            said.push_str(&format!(" and {} more", changes.len() - steps.len()));
        }
        said.push('.');
    }
    if *held > 0 {
        said.push_str(&format!(
            " {held} event(s) were recorded and not sent (see the deliveries view)."
        ));
    }
    (title, Some(said))
}

/// One line on an API version announced for retirement (messages, logs, `check --online`).
pub fn deprecation_title(d: &crate::outcome::ApiDeprecation) -> String {
    let sunset = match (&d.sunset_at, &d.sunset) {
        (Some(at), _) => format!("; sunset {}", at.format("%Y-%m-%d")),
        (None, Some(raw)) => format!("; sunset {raw:?}"),
        (None, None) => "; no sunset date given yet".to_owned(),
    };
    let since = d
        .deprecation
        .as_deref()
        .and_then(deprecated_since)
        .map_or(String::new(), |t| format!(" since {}", t.format("%Y-%m-%d")));
    format!(
        "Atlas API version {} (live migrations) is deprecated{since}{sunset}",
        d.version
    )
}

/// The date a `Deprecation` header gives: `@` and a Unix time (RFC 9745), or an HTTP date (its
/// drafts); `true` and anything else give none.
fn deprecated_since(raw: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let raw = raw.trim();
    match raw.strip_prefix('@') {
        Some(secs) => chrono::DateTime::from_timestamp(secs.parse().ok()?, 0),
        None => chrono::DateTime::parse_from_rfc2822(raw)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc)),
    }
}

/// The deadline caveat every message that gives one carries: the API shows neither the window's
/// start nor an extension.
const ESTIMATED: &str = "The deadline is estimated by linkwatch from when it first saw the migration ready; an extension made in the Atlas UI is not visible to linkwatch.";

/// What an Atlas live migration's event says. `org` is the source org's name, once its link
/// has been checked.
fn describe_live_migration(org: Option<&str>, event: &Event) -> (String, Option<String>) {
    let m = event.live_migration().unwrap_or("?");
    let who = match org {
        Some(org) => format!("{m} (org {org})"),
        None => m.to_owned(),
    };
    match event {
        Event::MigrationStatusChanged { .. } => describe_migration_status(&who, event),
        Event::ReadyForCutover { .. } | Event::ReadyForCutoverLost { .. } | Event::CutoverDeadline { .. } => {
            describe_cutover(&who, event)
        }
        Event::LagHigh { .. } | Event::LagRecovered { .. } => describe_lag(&who, event),
        Event::LinkBrokenDuringMigration { link_status, .. } => (
            format!("URGENT: {who}: the org's migration link is {link_status} while the live migration is WORKING"),
            Some(
                "The live migration cannot proceed while the link is broken. Check the link in Cloud Manager (its Refresh action), or create a new link token in Atlas."
                    .to_owned(),
            ),
        ),
        Event::MigrationCheckFailing { .. } | Event::MigrationCheckRecovered { .. } => {
            describe_migration_checks(&who, event)
        }
        Event::FirstSeen { .. }
        | Event::StatusChanged { .. }
        | Event::CheckFailing { .. }
        | Event::CheckRecovered { .. }
        | Event::Reminder { .. }
        | Event::SilenceEnded { .. }
        | Event::ApiDeprecated { .. } => (format!("{who}: {}", event.kind()), None),
    }
}

/// A live migration's new status (`who` names it), from what and on which migration hosts;
/// a failed or expired one is urgent and says what to do.
fn describe_migration_status(who: &str, event: &Event) -> (String, Option<String>) {
    let Event::MigrationStatusChanged {
        from,
        to,
        from_lasted_s,
        migration_hosts,
        ..
    } = event
    else {
        return (format!("{who}: {}", event.kind()), None);
    };
    let mut was = match (from, from_lasted_s) {
        (Some(f), Some(s)) => format!(" (was {f} for {})", human_secs(*s)),
        (Some(f), None) => format!(" (was {f})"),
        (None, _) => " (first check)".to_owned(),
    };
    match migration_hosts.as_slice() {
        [] => {}
        [one] => was.push_str(&format!(" on migration host {one}")),
        many => was.push_str(&format!(" on migration hosts {}", many.join(", "))),
    }
    let (title, advice) = match to.as_str() {
        "FAILED" => (
            format!("URGENT: {who}: live migration FAILED{was}"),
            Some(
                "Atlas stopped the live migration. Look at the migration in the Atlas UI, fix the cause (often the source oplog window), and start a new live migration.",
            ),
        ),
        "EXPIRED" => (
            format!("URGENT: {who}: live migration EXPIRED{was}"),
            Some("The cutover window ran out and Atlas stopped syncing: the migration must be started again."),
        ),
        "COMPLETE" => (format!("{who}: live migration COMPLETE{was}"), None),
        _ => (format!("{who}: live migration is {to}{was}"), None),
    };
    (title, advice.map(str::to_owned))
}

/// The cutover: ready for it (with the estimated deadline), no longer ready, and the warnings
/// as the deadline comes near or passes.
fn describe_cutover(who: &str, event: &Event) -> (String, Option<String>) {
    match event {
        Event::ReadyForCutover { deadline, lag_s, .. } => (
            format!(
                "{who}: ready for cutover{}; cut over before about {} (estimated)",
                lag(*lag_s),
                when(*deadline)
            ),
            Some(format!(
                "Cut over in the Atlas UI (or the API) before the window closes, or the migration expires and starts over. {ESTIMATED}"
            )),
        ),
        Event::ReadyForCutoverLost { lag_s, .. } => (
            format!("{who}: no longer ready for cutover{}", lag(*lag_s)),
            Some(
                "Wait until Atlas reports it ready again before cutting over (during a cutover this is expected)."
                    .to_owned(),
            ),
        ),
        Event::CutoverDeadline { deadline, left_s, .. } => {
            let title = if *left_s > 0 {
                format!(
                    "{who}: about {} left to cut over (estimated deadline {})",
                    human_secs(*left_s),
                    when(*deadline)
                )
            } else {
                format!(
                    "URGENT: {who}: the estimated cutover deadline {} has passed",
                    when(*deadline)
                )
            };
            (
                title,
                Some(format!(
                    "Cut over now, or extend the window in the Atlas UI, or the migration expires (if the cutover \
                     has started, nothing more is needed). {ESTIMATED}"
                )),
            )
        }
        _ => (format!("{who}: {}", event.kind()), None),
    }
}

/// Replication lag above the migration's `lag_alert`, and back below it.
fn describe_lag(who: &str, event: &Event) -> (String, Option<String>) {
    match event {
        Event::LagHigh { lag_s, threshold_s, .. } => (
            format!(
                "{who}: replication lag is {} (above {} for {} checks)",
                human_secs(*lag_s),
                human_secs(*threshold_s),
                crate::detect::live_migration::LAG_CHECKS
            ),
            Some(
                "A lag that keeps rising toward the source's oplog window makes the sync fail: check the source's write load and oplog size."
                    .to_owned(),
            ),
        ),
        Event::LagRecovered { lag_s, high_for_s, .. } => (
            format!(
                "{who}: replication lag back to {} after {} high",
                human_secs(*lag_s),
                human_secs(*high_for_s)
            ),
            None,
        ),
        _ => (format!("{who}: {}", event.kind()), None),
    }
}

/// The checks of a live migration failing, and recovering.
fn describe_migration_checks(who: &str, event: &Event) -> (String, Option<String>) {
    match event {
        Event::MigrationCheckFailing { failures, failure, .. } => (
            format!(
                "{who}: live migration checks failing ({failures} in a row): {}",
                failure.explain_atlas()
            ),
            Some("linkwatch cannot see this live migration until this is fixed.".to_owned()),
        ),
        Event::MigrationCheckRecovered {
            failures, failed_for_s, ..
        } => (
            format!(
                "{who}: live migration checks recovered after {} ({failures} failed checks)",
                human_secs(*failed_for_s)
            ),
            None,
        ),
        _ => (format!("{who}: {}", event.kind()), None),
    }
}

/// A deadline as a person reads it: to the minute, in UTC (an estimate has no seconds to give).
fn when(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn lag(lag_s: Option<i64>) -> String {
    lag_s.map_or(String::new(), |s| format!(" (lag {})", human_secs(s)))
}

fn advice_for(from: Option<&str>, to: &str) -> Option<String> {
    match (from, to) {
        (_, "SYNCED") => Some("The org is ready for live migration to Atlas.".to_owned()),
        (Some("SYNCED"), _) => Some(
            "The link to the Atlas org broke: live migrations from this org cannot proceed until it \
             is SYNCED again. Check the link in Cloud Manager, or create a new link token in Atlas."
                .to_owned(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_point_at_the_consoles_and_the_page_under_its_path() {
        let config = Config::parse(
            "[http]\nlisten = \"127.0.0.1:9187\"\npublic_url = \"https://ops.example.com/lw\"\n\
             [cloud_manager]\nbase_url = \"https://opsmanager.example.com:8443/om/api/public/v1.0\"\n\
             public_key = \"p\"\nprivate_key = \"k\"\n[[org]]\nid = \"5f0c1234567890abcdef1234\"\nname = \"payments\"\n\
             [atlas]\npublic_key = \"p\"\nprivate_key = \"k\"\n[[migration]]\nname = \"rs0\"\norg = \"payments\"\n\
             group_id = \"6f0c00000000000000000c01\"\nid = \"6f1d00000000000000000d01\"\n",
            std::path::Path::new("linkwatch.toml"),
        )
        .unwrap();
        let links = Links::of(&config);
        let urls: Vec<(&str, String)> = links
            .for_event("5f0c1234567890abcdef1234", Some("rs0"))
            .into_iter()
            .map(|l| (l.label, l.url))
            .collect();
        assert_eq!(
            urls,
            vec![
                (
                    "Atlas project",
                    "https://cloud.mongodb.com/v2/6f0c00000000000000000c01#/clusters".to_owned()
                ),
                (
                    "Cloud Manager org",
                    "https://opsmanager.example.com:8443/om/v2#/org/5f0c1234567890abcdef1234/projects".to_owned()
                ),
                (
                    "status page",
                    "https://ops.example.com/lw/org/5f0c1234567890abcdef1234".to_owned()
                ),
            ]
        );
        assert!(Links::default().for_event("5f0c1234567890abcdef1234", None).is_empty());
    }

    #[test]
    fn migration_messages_read_cleanly() {
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let failure = crate::outcome::Failure::new(crate::outcome::FailureClass::NotFound, Some(404), None, "gone");
        let m = || "rs0".to_owned();
        let events = [
            Event::MigrationStatusChanged {
                migration: m(),
                from: None,
                to: "NEW".into(),
                from_lasted_s: None,
                migration_hosts: vec!["mh-1.example.net".into()],
            },
            Event::MigrationStatusChanged {
                migration: m(),
                from: Some("WORKING".into()),
                to: "FAILED".into(),
                from_lasted_s: Some(60),
                migration_hosts: Vec::new(),
            },
            Event::MigrationStatusChanged {
                migration: m(),
                from: Some("WORKING".into()),
                to: "EXPIRED".into(),
                from_lasted_s: Some(60),
                migration_hosts: Vec::new(),
            },
            Event::ReadyForCutover {
                migration: m(),
                deadline: at,
                lag_s: Some(4),
            },
            Event::ReadyForCutoverLost {
                migration: m(),
                lag_s: None,
            },
            Event::LagHigh {
                migration: m(),
                lag_s: 700,
                threshold_s: 600,
            },
            Event::LagRecovered {
                migration: m(),
                lag_s: 100,
                threshold_s: 600,
                high_for_s: 900,
            },
            Event::CutoverDeadline {
                migration: m(),
                deadline: at,
                left_s: 3600,
            },
            Event::CutoverDeadline {
                migration: m(),
                deadline: at,
                left_s: -5,
            },
            Event::LinkBrokenDuringMigration {
                migration: m(),
                link_status: "NOT_SYNCED".into(),
                broken_since: at,
            },
            Event::MigrationCheckFailing {
                migration: m(),
                failures: 3,
                since: at,
                failure,
            },
            Event::MigrationCheckRecovered {
                migration: m(),
                failures: 3,
                failed_for_s: 60,
            },
        ];
        for event in &events {
            let (title, advice) = describe("payments", Some("payments"), event);
            for text in std::iter::once(&title).chain(advice.as_ref()) {
                assert!(!text.contains("  ") && !text.contains('\n'), "{text:?}");
            }
            assert!(title.contains("rs0 (org payments)"), "{title}");
        }
        let (title, advice) = describe("payments", Some("payments"), &events[3]);
        assert!(
            title.ends_with("cut over before about 2027-01-15 08:00 UTC (estimated)"),
            "{title}"
        );
        assert!(advice.unwrap().contains("not visible to linkwatch"));
        assert!(
            describe("p", None, &events[1])
                .0
                .starts_with("URGENT: rs0: live migration FAILED")
        );
    }

    #[test]
    fn a_deprecation_says_since_when_and_until_when_as_far_as_atlas_said() {
        let d = |deprecation: Option<&str>, sunset: Option<&str>| {
            crate::client::atlas::deprecation(
                "https://cloud.mongodb.com/api/atlas/v2/",
                "2023-01-01",
                deprecation.map(str::to_owned),
                sunset.map(str::to_owned),
            )
        };
        let title = |dep| deprecation_title(&dep);
        let base = "Atlas API version 2023-01-01 (live migrations) is deprecated";
        assert_eq!(
            title(d(Some("@1767225600"), Some("Fri, 01 Jan 2027 00:00:00 GMT"))),
            format!("{base} since 2026-01-01; sunset 2027-01-01")
        );
        assert_eq!(
            title(d(Some("Thu, 01 Jan 2026 00:00:00 GMT"), None)),
            format!("{base} since 2026-01-01; no sunset date given yet")
        );
        assert_eq!(title(d(Some("true"), Some("soon"))), format!("{base}; sunset \"soon\""));
        assert_eq!(
            title(d(Some("@99999999999999999999"), None)),
            format!("{base}; no sunset date given yet")
        );
    }

    #[test]
    fn durations_read_like_a_person_wrote_them() {
        assert_eq!(human_secs(0), "0s");
        assert_eq!(human_secs(200), "3m 20s");
        assert_eq!(human_secs(120), "2m");
        assert_eq!(human_secs(7500), "2h 5m");
        assert_eq!(human_secs(3600), "1h");
        assert_eq!(human_secs(90_000), "1d 1h");
    }

    fn stored(event: &Event) -> StoredEvent {
        StoredEvent {
            id: "evt_1".into(),
            org_id: "5f0c1234567890abcdef1234".into(),
            org_name: Some("payments".into()),
            kind: event.kind().into(),
            created_at: "2026-11-29T08:00:00.000Z".into(),
            payload: serde_json::to_string(event).unwrap(),
        }
    }

    #[test]
    fn synced_and_broken_links_say_what_to_do() {
        let m = render(
            &stored(&Event::StatusChanged {
                from: "NOT_SYNCED".into(),
                to: "SYNCED".into(),
                changed_at: chrono::Utc::now(),
                from_lasted_s: 200,
            }),
            &Links::default(),
        );
        assert_eq!(m.title, "payments: migration link SYNCED (was NOT_SYNCED for 3m 20s)");
        assert!(m.advice.unwrap().contains("ready for live migration"));
        let m = render(
            &stored(&Event::StatusChanged {
                from: "SYNCED".into(),
                to: "NOT_SYNCED".into(),
                changed_at: chrono::Utc::now(),
                from_lasted_s: 7500,
            }),
            &Links::default(),
        );
        assert_eq!(
            m.title,
            "payments: migration link fell back to NOT_SYNCED after 2h 5m SYNCED"
        );
        assert!(m.advice.unwrap().contains("link to the Atlas org broke"));
    }
}
