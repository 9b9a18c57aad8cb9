//! What the page shows, read from the store in one place: the HTML and the JSON are both made
//! from these structs. One struct per section: orgs, live migrations, channels.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::lag::LagChart;
use super::timeline::Timeline;
use super::{Configured, ConfiguredLiveMigration, Page};
use crate::config::OrgId;
use crate::store::{self, LiveMigrationRow, OrgRow};

/// How far back an org's page looks.
pub const WINDOW_DAYS: i64 = 30;

/// The most failed checks an org's page lists.
const FAILURES_SHOWN: i64 = 50;

/// `GET /` and `GET /api/v1/status`.
#[derive(Debug, Serialize)]
pub struct StatusView {
    pub generated_at: String,
    /// The instance that served it (`instance_name`).
    pub instance: String,
    /// Every configured org, what needs action first (see [`OrgStanding`]), then by name.
    pub orgs: Vec<OrgView>,
    /// Every configured live migration, what needs action first (see [`LiveMigrationStage`]), then
    /// the least time left to cut over, then by name.
    pub migrations: Vec<LiveMigrationView>,
    /// The channels with deliveries waiting or given up, by name.
    pub channels: Vec<ChannelView>,
}

/// Where an org stands, in the order the page sorts by: what needs action comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrgStanding {
    /// The last check failed (the reason is in `last_error`).
    Failing,
    /// The link was SYNCED and left it.
    Broken,
    /// The link has a status other than SYNCED and never was SYNCED since it left it.
    NotSynced,
    /// No successful check yet.
    Unchecked,
    Synced,
}

impl OrgStanding {
    /// Its name in the JSON, which is also its CSS class.
    pub fn as_str(self) -> &'static str {
        match self {
            OrgStanding::Failing => "failing",
            OrgStanding::Broken => "broken",
            OrgStanding::NotSynced => "not_synced",
            OrgStanding::Unchecked => "unchecked",
            OrgStanding::Synced => "synced",
        }
    }

    /// What the badge says.
    pub fn label(self) -> &'static str {
        match self {
            OrgStanding::Failing => "check failing",
            OrgStanding::Broken => "broken",
            OrgStanding::NotSynced => "not synced",
            OrgStanding::Unchecked => "not checked yet",
            OrgStanding::Synced => "synced",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OrgView {
    pub id: String,
    pub name: String,
    pub state: OrgStanding,
    /// The confirmed link status (`SYNCED`, `NOT_SYNCED` or whatever Cloud Manager says).
    pub status: Option<String>,
    pub since: Option<String>,
    pub last_checked_at: Option<String>,
    pub consecutive_failures: i64,
    pub last_error: Option<String>,
    /// When the link left SYNCED, while it has not come back.
    pub broken_since: Option<String>,
}

/// Where a live migration stands, in the order the page sorts by: what needs action comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveMigrationStage {
    /// The last check of the migration failed (the reason is in `last_error`).
    Failing,
    /// Atlas says `FAILED` or `EXPIRED`: it must be started again.
    Failed,
    /// Ready for cutover: someone must cut over before the estimated deadline.
    Ready,
    /// Under way (`NEW`, `WORKING`, or another status Atlas uses), not ready for cutover.
    InProgress,
    /// No successful check yet.
    Unchecked,
    /// `COMPLETE`.
    Complete,
}

impl LiveMigrationStage {
    /// Its name in the JSON, which is also its CSS class.
    pub fn as_str(self) -> &'static str {
        match self {
            LiveMigrationStage::Failing => "failing",
            LiveMigrationStage::Failed => "failed",
            LiveMigrationStage::Ready => "ready",
            LiveMigrationStage::InProgress => "in_progress",
            LiveMigrationStage::Unchecked => "unchecked",
            LiveMigrationStage::Complete => "complete",
        }
    }

    /// What the badge says.
    pub fn label(self) -> &'static str {
        match self {
            LiveMigrationStage::Failing => "check failing",
            LiveMigrationStage::Failed => "failed",
            LiveMigrationStage::Ready => "ready for cutover",
            LiveMigrationStage::InProgress => "in progress",
            LiveMigrationStage::Unchecked => "not checked yet",
            LiveMigrationStage::Complete => "complete",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveMigrationView {
    /// Atlas's `liveMigrationId`.
    pub id: String,
    pub name: String,
    /// The source org.
    pub org_id: String,
    pub org_name: String,
    pub group_id: String,
    pub stage: LiveMigrationStage,
    /// What Atlas says (`NEW`, `WORKING`, `COMPLETE`, `FAILED`, `EXPIRED`, ...).
    pub status: Option<String>,
    pub since: Option<String>,
    pub ready_for_cutover: bool,
    /// When readiness was first seen: the estimated cutover window's start.
    pub ready_since: Option<String>,
    /// The estimated end of the cutover window, while one runs.
    pub estimated_deadline: Option<String>,
    /// Seconds from now to `estimated_deadline` (negative once it has passed).
    pub time_left_s: Option<i64>,
    pub lag_s: Option<i64>,
    /// The migration's `lag_alert`, in seconds.
    pub lag_alert_s: Option<i64>,
    pub last_checked_at: Option<String>,
    pub consecutive_failures: i64,
    pub last_error: Option<String>,
    /// Atlas's `migrationHosts`, as last reported.
    pub migration_hosts: Vec<String>,
}

impl LiveMigrationView {
    /// Whether the last lag is above the migration's `lag_alert`.
    pub fn lag_high(&self) -> bool {
        self.lag_s.zip(self.lag_alert_s).is_some_and(|(lag, alert)| lag > alert)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelView {
    pub name: String,
    pub pending: i64,
    pub failed: i64,
    pub oldest_pending_at: Option<String>,
    pub last_error: Option<String>,
    /// Since when its deliveries keep failing past the hold (their org's later events wait).
    pub blocked_since: Option<String>,
    /// False for a channel no longer in the config: its deliveries wait for it to return.
    pub configured: bool,
}

/// `GET /api/v1/orgs/{id}/changes`.
#[derive(Debug, Serialize)]
pub struct ChangesView {
    pub org_id: String,
    pub org_name: String,
    /// Every confirmed status, oldest first; the first has no `from`.
    pub changes: Vec<ChangeView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChangeView {
    pub at: String,
    pub from: Option<String>,
    pub to: String,
    /// How long `from` lasted, in seconds.
    pub previous_lasted_s: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailureView {
    pub checked_at: String,
    pub class: String,
    pub http_status: Option<i64>,
    pub error_code: Option<String>,
    pub detail: String,
}

/// `GET /org/{id or name}`.
#[derive(Debug)]
pub struct OrgDetail {
    pub generated_at: String,
    pub org: OrgView,
    pub changes: Vec<ChangeView>,
    pub failures: Vec<FailureView>,
    pub timeline: Timeline,
    /// The live migrations from this org, by name.
    pub migrations: Vec<LiveMigrationDetail>,
}

/// A live migration on its source org's page: where it stands, its changes and its lag chart.
#[derive(Debug)]
pub struct LiveMigrationDetail {
    pub migration: LiveMigrationView,
    pub changes: Vec<ChangeView>,
    pub chart: LagChart,
}

/// `GET /api/v1/migrations/{id or name}`.
#[derive(Debug, Serialize)]
pub struct LiveMigrationJson {
    pub generated_at: String,
    pub migration: LiveMigrationView,
    /// Every status Atlas reported, oldest first; the first has no `from`.
    pub changes: Vec<ChangeView>,
    /// The lag series of the last 30 days, oldest first, and the sample before them (where the
    /// window starts). A sample is kept only when the lag moved a step; it holds until the next.
    pub lag: Vec<LagSample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LagSample {
    pub at: String,
    /// `null`: Atlas reported no lag from then on (cutover, or the migration ended).
    pub lag_s: Option<i64>,
}

/// Reads each section.
pub async fn status(page: &Page) -> anyhow::Result<StatusView> {
    let configured = page.configured.borrow().clone();
    let now = page.clock.now();
    let mut migrations = live_migrations(page, &configured, now, |_| true).await?;
    migrations.sort_by(|a, b| {
        // The least time left first; none left to count comes last.
        let left = |m: &LiveMigrationView| (m.time_left_s.is_none(), m.time_left_s);
        (a.stage, left(a), !a.lag_high(), &a.name).cmp(&(b.stage, left(b), !b.lag_high(), &b.name))
    });
    Ok(StatusView {
        generated_at: store::ts(now),
        instance: configured.instance.clone(),
        orgs: orgs(page, &configured).await?,
        migrations,
        channels: channels(page, &configured).await?,
    })
}

/// The configured live migrations that `keep` selects, in the config's order.
async fn live_migrations(
    page: &Page,
    configured: &Configured,
    now: DateTime<Utc>,
    keep: impl Fn(&ConfiguredLiveMigration) -> bool,
) -> anyhow::Result<Vec<LiveMigrationView>> {
    let mut rows: HashMap<String, LiveMigrationRow> = page
        .store
        .live_migrations()
        .await?
        .into_iter()
        .map(|r| (r.migration_id.clone(), r))
        .collect();
    Ok(configured
        .migrations
        .iter()
        .filter(|m| keep(m))
        .map(|m| {
            let org_name = configured.find(&m.org_id).map_or(m.org_id.as_str(), |(_, name)| name);
            live_migration_view(m, org_name, rows.remove(&m.id), now)
        })
        .collect())
}

/// One migration's changes and lag samples: those of the window and the one before it.
async fn live_migration_history(
    page: &Page,
    id: &str,
    from: DateTime<Utc>,
) -> anyhow::Result<(Vec<ChangeView>, Vec<(DateTime<Utc>, Option<i64>)>)> {
    let changes = page
        .store
        .live_migration_changes(id)
        .await?
        .into_iter()
        .map(|c| ChangeView {
            at: c.changed_at,
            from: c.from_status,
            to: c.to_status,
            previous_lasted_s: c.previous_lasted_s,
        })
        .collect();
    // The series is compact (a sample per step the lag moved), so reading it whole is cheap.
    let mut lag = page.store.live_migration_lag(id, DateTime::UNIX_EPOCH).await?;
    let before = lag.iter().filter(|(at, _)| *at < from).count();
    lag.drain(..before.saturating_sub(1));
    Ok((changes, lag))
}

pub async fn live_migration(page: &Page, m: &ConfiguredLiveMigration) -> anyhow::Result<LiveMigrationJson> {
    let configured = page.configured.borrow().clone();
    let now = page.clock.now();
    let view = live_migrations(page, &configured, now, |c| c.id == m.id)
        .await?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("migration {} left the config", m.name))?;
    let (changes, lag) = live_migration_history(page, &m.id, now - Duration::days(WINDOW_DAYS)).await?;
    Ok(LiveMigrationJson {
        generated_at: store::ts(now),
        migration: view,
        changes,
        lag: lag
            .into_iter()
            .map(|(at, lag_s)| LagSample {
                at: store::ts(at),
                lag_s,
            })
            .collect(),
    })
}

/// Every configured org, what needs action first.
async fn orgs(page: &Page, configured: &Configured) -> anyhow::Result<Vec<OrgView>> {
    let mut rows: HashMap<String, OrgRow> = page
        .store
        .org_rows()
        .await?
        .into_iter()
        .map(|r| (r.org_id.clone(), r))
        .collect();
    let mut orgs: Vec<OrgView> = configured
        .orgs()
        .map(|(id, name)| org_view(id, name, rows.remove(id)))
        .collect();
    orgs.sort_by(|a, b| (a.state, &a.name, &a.id).cmp(&(b.state, &b.name, &b.id)));
    Ok(orgs)
}

/// The channels with deliveries waiting or given up, and whether their dispatcher holds them.
async fn channels(page: &Page, configured: &Configured) -> anyhow::Result<Vec<ChannelView>> {
    let blocked = page.metrics.blocked();
    Ok(page
        .store
        .channel_deliveries()
        .await?
        .into_iter()
        .map(|c| ChannelView {
            blocked_since: blocked
                .iter()
                .find(|(name, _)| *name == c.channel)
                .map(|(_, b)| store::ts(b.since)),
            configured: configured.channels.contains(&c.channel),
            name: c.channel,
            pending: c.pending,
            failed: c.failed,
            oldest_pending_at: c.oldest_pending_at,
            last_error: c.last_error,
        })
        .collect())
}

pub async fn changes(page: &Page, id: &str, name: &str) -> anyhow::Result<ChangesView> {
    Ok(ChangesView {
        org_id: id.to_owned(),
        org_name: name.to_owned(),
        changes: read_changes(page, id).await?,
    })
}

pub async fn org(page: &Page, id: &str, name: &str) -> anyhow::Result<OrgDetail> {
    let now = page.clock.now();
    let from = now - Duration::days(WINDOW_DAYS);
    let row = page.store.org_rows().await?.into_iter().find(|r| r.org_id == id);
    let changes = read_changes(page, id).await?;
    let org_id = OrgId::parse(id).map_err(|e| anyhow::anyhow!("org id {id}: {e}"))?;
    let failures: Vec<FailureView> = page
        .store
        .failed_checks(&org_id, from, FAILURES_SHOWN)
        .await?
        .into_iter()
        .map(|f| FailureView {
            checked_at: f.checked_at,
            class: f.class,
            http_status: f.http_status,
            error_code: f.error_code,
            detail: f.detail,
        })
        .collect();
    let timeline = Timeline::new(
        from,
        now,
        changes.iter().filter_map(|c| Some((parse(&c.at)?, c.to.clone()))),
        failures.iter().filter_map(|f| parse(&f.checked_at)),
    );
    let configured = page.configured.borrow().clone();
    let mut migration_details = Vec::new();
    for m in live_migrations(page, &configured, now, |m| m.org_id == id).await? {
        let (changes, lag) = live_migration_history(page, &m.id, from).await?;
        migration_details.push(LiveMigrationDetail {
            chart: LagChart::new(from, now, &lag, m.lag_alert_s),
            migration: m,
            changes,
        });
    }
    migration_details.sort_by(|a, b| a.migration.name.cmp(&b.migration.name));
    Ok(OrgDetail {
        generated_at: store::ts(now),
        org: org_view(id, name, row),
        changes,
        failures,
        timeline,
        migrations: migration_details,
    })
}

async fn read_changes(page: &Page, id: &str) -> anyhow::Result<Vec<ChangeView>> {
    Ok(page
        .store
        .history(Some(id), None)
        .await?
        .into_iter()
        // `history` matches names too; another org may be named like this one's id.
        .filter(|c| c.org_id == id)
        .map(|c| ChangeView {
            at: c.changed_at,
            from: c.from_status,
            to: c.to_status,
            previous_lasted_s: c.previous_lasted_s,
        })
        .collect())
}

/// The config names the org; the database knows it once it has been checked.
fn org_view(id: &str, name: &str, row: Option<OrgRow>) -> OrgView {
    let Some(r) = row else {
        return OrgView {
            id: id.to_owned(),
            name: name.to_owned(),
            state: OrgStanding::Unchecked,
            status: None,
            since: None,
            last_checked_at: None,
            consecutive_failures: 0,
            last_error: None,
            broken_since: None,
        };
    };
    let state = if r.consecutive_failures > 0 {
        OrgStanding::Failing
    } else {
        match r.status.as_deref() {
            None => OrgStanding::Unchecked,
            Some("SYNCED") => OrgStanding::Synced,
            Some(_) if r.broken_since.is_some() => OrgStanding::Broken,
            Some(_) => OrgStanding::NotSynced,
        }
    };
    OrgView {
        id: id.to_owned(),
        // The config's name is the current one; the database keeps the name of the last check.
        name: name.to_owned(),
        state,
        status: r.status,
        since: r.since,
        last_checked_at: Some(r.last_checked_at),
        consecutive_failures: r.consecutive_failures,
        last_error: r.last_error,
        broken_since: r.broken_since,
    }
}

/// The config names the migration; the database knows it once it has been checked.
fn live_migration_view(
    m: &ConfiguredLiveMigration,
    org_name: &str,
    row: Option<LiveMigrationRow>,
    now: DateTime<Utc>,
) -> LiveMigrationView {
    let mut v = LiveMigrationView {
        id: m.id.clone(),
        name: m.name.clone(),
        org_id: m.org_id.clone(),
        org_name: org_name.to_owned(),
        group_id: m.group_id.clone(),
        stage: LiveMigrationStage::Unchecked,
        status: None,
        since: None,
        ready_for_cutover: false,
        ready_since: None,
        estimated_deadline: None,
        time_left_s: None,
        lag_s: None,
        lag_alert_s: m.lag_alert_s,
        last_checked_at: None,
        consecutive_failures: 0,
        last_error: None,
        migration_hosts: Vec::new(),
    };
    let Some(r) = row else { return v };
    v.stage = if r.consecutive_failures > 0 {
        LiveMigrationStage::Failing
    } else {
        match r.status.as_deref() {
            None => LiveMigrationStage::Unchecked,
            Some("COMPLETE") => LiveMigrationStage::Complete,
            Some("FAILED" | "EXPIRED") => LiveMigrationStage::Failed,
            Some(_) if r.ready_for_cutover => LiveMigrationStage::Ready,
            Some(_) => LiveMigrationStage::InProgress,
        }
    };
    v.time_left_s = r.left_s(now);
    v.status = r.status;
    v.since = r.since;
    v.ready_for_cutover = r.ready_for_cutover;
    v.ready_since = r.ready_since;
    v.estimated_deadline = r.estimated_deadline;
    v.lag_s = r.lag_s;
    v.last_checked_at = Some(r.last_checked_at);
    v.consecutive_failures = r.consecutive_failures;
    v.last_error = r.last_error;
    v.migration_hosts = r.migration_hosts;
    v
}

pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: Option<&str>, failures: i64, broken: bool) -> OrgRow {
        OrgRow {
            org_id: "a".into(),
            org_name: "a".into(),
            status: status.map(Into::into),
            since: None,
            last_checked_at: "2026-11-29T08:00:00.000Z".into(),
            consecutive_failures: failures,
            last_error: None,
            broken_since: broken.then(|| "2026-11-28T08:00:00.000Z".into()),
        }
    }

    #[test]
    fn what_needs_action_sorts_first() {
        let state = |r| org_view("a", "a", r).state;
        let mut states = vec![
            state(Some(row(Some("SYNCED"), 0, false))),
            state(None),
            state(Some(row(Some("NOT_SYNCED"), 0, false))),
            state(Some(row(Some("NOT_SYNCED"), 0, true))),
            state(Some(row(Some("SYNCED"), 2, false))),
            state(Some(row(None, 1, false))),
        ];
        assert_eq!(
            states,
            [
                OrgStanding::Synced,
                OrgStanding::Unchecked,
                OrgStanding::NotSynced,
                OrgStanding::Broken,
                OrgStanding::Failing,
                OrgStanding::Failing
            ]
        );
        for s in &states {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                s.as_str(),
                "the JSON and the CSS class agree"
            );
        }
        states.sort();
        assert_eq!(
            states,
            [
                OrgStanding::Failing,
                OrgStanding::Failing,
                OrgStanding::Broken,
                OrgStanding::NotSynced,
                OrgStanding::Unchecked,
                OrgStanding::Synced
            ]
        );
    }

    fn live_migration_row(
        status: Option<&str>,
        ready: bool,
        failures: i64,
        deadline: Option<&str>,
    ) -> LiveMigrationRow {
        LiveMigrationRow {
            migration: "m".into(),
            migration_id: "6f1d00000000000000000d01".into(),
            org_id: "a".into(),
            org_name: Some("a".into()),
            group_id: "g".into(),
            status: status.map(Into::into),
            since: None,
            ready_for_cutover: ready,
            ready_since: None,
            estimated_deadline: deadline.map(Into::into),
            lag_s: Some(700),
            last_checked_at: "2026-11-29T08:00:00.000Z".into(),
            consecutive_failures: failures,
            last_error: None,
            migration_hosts: Vec::new(),
        }
    }

    #[test]
    fn a_migrations_stage_and_time_left() {
        let m = ConfiguredLiveMigration {
            id: "6f1d00000000000000000d01".into(),
            name: "m".into(),
            org_id: "a".into(),
            group_id: "g".into(),
            lag_alert_s: Some(600),
        };
        let now = parse("2026-11-29T08:00:00Z").unwrap();
        let view = |r| live_migration_view(&m, "a", r, now);
        let stage = |r| view(r).stage;
        assert_eq!(stage(None), LiveMigrationStage::Unchecked);
        assert_eq!(
            stage(Some(live_migration_row(None, false, 1, None))),
            LiveMigrationStage::Failing
        );
        assert_eq!(
            stage(Some(live_migration_row(Some("WORKING"), true, 2, None))),
            LiveMigrationStage::Failing,
            "a failing check hides a readiness that may be stale"
        );
        assert_eq!(
            stage(Some(live_migration_row(Some("EXPIRED"), false, 0, None))),
            LiveMigrationStage::Failed
        );
        assert_eq!(
            stage(Some(live_migration_row(Some("FAILED"), false, 0, None))),
            LiveMigrationStage::Failed
        );
        assert_eq!(
            stage(Some(live_migration_row(Some("NEW"), false, 0, None))),
            LiveMigrationStage::InProgress
        );
        assert_eq!(
            stage(Some(live_migration_row(Some("COMPLETE"), false, 0, None))),
            LiveMigrationStage::Complete
        );
        let ready = view(Some(live_migration_row(
            Some("WORKING"),
            true,
            0,
            Some("2026-11-30T09:30:00.000Z"),
        )));
        assert_eq!(ready.stage, LiveMigrationStage::Ready);
        assert_eq!(ready.time_left_s, Some(25 * 3600 + 1800));
        assert!(ready.lag_high(), "700 s is above the 600 s lag_alert");
        for s in [
            LiveMigrationStage::Failing,
            LiveMigrationStage::Failed,
            LiveMigrationStage::Ready,
            LiveMigrationStage::InProgress,
            LiveMigrationStage::Unchecked,
            LiveMigrationStage::Complete,
        ] {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                s.as_str(),
                "the JSON and the CSS class agree"
            );
        }
    }
}
