//! What the page shows, read from the store in one place: the HTML and the JSON are both made
//! from these structs. One struct per section: orgs, live migrations, channels.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::filter::{Filter, PAGE_ROWS, Shown};
use super::lag::LagChart;
use super::standing::{LiveMigrationStage, OrgStanding};
use super::timeline::Timeline;
use super::{Configured, ConfiguredLiveMigration, Page};
use crate::config::OrgId;
use crate::store::{self, LiveMigrationRow, OrgRow, SyncedTime};

/// How far back an org's page looks.
pub const WINDOW_DAYS: i64 = 30;

/// The most failed checks an org's page lists.
pub const FAILURES_SHOWN: i64 = 50;

/// `GET /` and `GET /api/v1/status`.
#[derive(Debug, Serialize)]
pub struct StatusView {
    pub generated_at: String,
    /// The instance that served it (`instance_name`).
    pub instance: String,
    /// How many configured orgs are in each state, whatever the filters.
    pub summary: BTreeMap<OrgStanding, usize>,
    /// Which orgs `orgs` lists: `attention`, `all`, or a state.
    pub shown: &'static str,
    /// How many orgs pass the filters; `orgs` holds page `page` of them.
    pub matched: usize,
    pub page: usize,
    /// Orgs per page; `None` when `orgs` holds every match (the JSON API without `page`).
    pub page_rows: Option<usize>,
    /// The Cloud Manager instances orgs are checked at, for the `instance` filter.
    pub instances: Vec<String>,
    /// The orgs that pass the filters, what needs action first (see [`OrgStanding`]), then by
    /// name: without filters, every configured org on the API and those that need attention on
    /// the page.
    pub orgs: Vec<OrgView>,
    /// The configured live migrations (on the page's default view only those that need action),
    /// what needs action first (see [`LiveMigrationStage`]), then the least time left to cut
    /// over, then by name.
    pub migrations: Vec<LiveMigrationView>,
    /// The configured live migrations not listed in `migrations`.
    pub migrations_not_shown: usize,
    /// The channels with deliveries waiting or given up, by name.
    pub channels: Vec<ChannelView>,
    /// The silences holding events back now (`linkwatch silence add`), oldest first.
    pub silences: Vec<SilenceView>,
}

/// A silence holding events back: recorded, not sent.
#[derive(Debug, Clone, Serialize)]
pub struct SilenceView {
    pub id: i64,
    pub org_id: String,
    pub org_name: String,
    /// The `[[migration]]` it silences; `None`: the org's link and its migrations.
    pub migration: Option<String>,
    pub since: String,
    pub until: String,
    pub by: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrgView {
    pub id: String,
    pub name: String,
    pub state: OrgStanding,
    /// The Cloud Manager it is checked at (its API's base URL, without any login in it).
    pub instance: String,
    /// The org in the Cloud Manager console.
    pub console_url: Option<String>,
    /// Until when a silence holds its events (`linkwatch silence`); `None` when none does.
    pub silenced_until: Option<String>,
    /// How much of the last 24 hours, 7 days and 30 days the link was SYNCED, of the time its
    /// status was known; read for the orgs listed only.
    pub synced_share: Option<SyncedShare>,
    /// The confirmed link status (`SYNCED`, `NOT_SYNCED` or whatever Cloud Manager says).
    pub status: Option<String>,
    pub since: Option<String>,
    pub last_checked_at: Option<String>,
    pub consecutive_failures: i64,
    pub last_error: Option<String>,
    /// When the link left SYNCED, while it has not come back.
    pub broken_since: Option<String>,
}

/// How much of a window a link was SYNCED: a share from 0 to 1 of the time its status was
/// known in the window, `None` when it was not known at all.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SyncedShare {
    #[serde(rename = "24h")]
    pub day: Option<f64>,
    #[serde(rename = "7d")]
    pub week: Option<f64>,
    #[serde(rename = "30d")]
    pub month: Option<f64>,
}

impl From<&SyncedTime> for SyncedShare {
    fn from(t: &SyncedTime) -> SyncedShare {
        let share = |synced: f64, known: f64| (known > 0.0).then(|| (synced / known).clamp(0.0, 1.0));
        SyncedShare {
            day: share(t.synced_0, t.known_0),
            week: share(t.synced_1, t.known_1),
            month: share(t.synced_2, t.known_2),
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
    /// Its Atlas project in the Atlas console, where the migration is shown.
    pub atlas_url: Option<String>,
    /// Until when a silence holds its events (`linkwatch silence`); `None` when none does.
    pub silenced_until: Option<String>,
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

    /// Whether the page's default view lists it: it failed, waits for a cutover before its
    /// deadline, or lags behind its `lag_alert`.
    pub fn needs_attention(&self) -> bool {
        self.stage <= LiveMigrationStage::Ready || (self.lag_high() && self.stage != LiveMigrationStage::Silenced)
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

impl FailureView {
    /// The same failure (class, HTTP status, error code and detail), whenever it happened.
    pub fn same_as(&self, other: &FailureView) -> bool {
        (&self.class, self.http_status, &self.error_code, &self.detail)
            == (&other.class, other.http_status, &other.error_code, &other.detail)
    }
}

/// `GET /org/{id or name}`.
#[derive(Debug)]
pub struct OrgDetail {
    pub generated_at: String,
    pub org: OrgView,
    pub changes: Vec<ChangeView>,
    pub failures: Vec<FailureView>,
    /// More failed checks in the window than `failures` holds.
    pub failures_beyond: bool,
    /// The next older failed check, not shown, is the same failure as the oldest shown: that
    /// run goes back further than it counts.
    pub oldest_run_goes_on: bool,
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

/// The silences holding events back now, read once per answer: until when an org (or a live
/// migration) is silenced is asked here.
#[derive(Debug, Default)]
struct Held(Vec<crate::store::Silence>);

impl Held {
    async fn read(page: &Page, now: DateTime<Utc>) -> anyhow::Result<Held> {
        Ok(Held(page.store.active_silences(now).await?))
    }

    /// Until when the org's link is silenced (a silence of one of its migrations does not count).
    fn org(&self, id: &str) -> Option<String> {
        self.latest(|s| s.org_id == id && s.migration.is_none())
    }

    /// Until when a migration is silenced: by name, or with its whole source org.
    fn migration(&self, org_id: &str, name: &str) -> Option<String> {
        self.latest(|s| s.org_id == org_id && s.migration.as_deref().is_none_or(|m| m == name))
    }

    fn latest(&self, covers: impl Fn(&crate::store::Silence) -> bool) -> Option<String> {
        self.0
            .iter()
            .filter(|s| covers(s))
            .map(|s| s.until())
            .max()
            .map(store::ts)
    }
}

/// Reads each section: every org's state for the summary, the orgs `filter` picks (`shown`
/// when it names no state; one page of them when `paged` or it names a page), the live
/// migrations and the channels.
pub async fn status(page: &Page, filter: &Filter, shown: Shown, paged: bool) -> anyhow::Result<StatusView> {
    let configured = page.configured.borrow().clone();
    let now = page.clock.now();
    let shown = filter.state.unwrap_or(shown);
    let page_no = filter.page.unwrap_or(1);
    let page_rows = (paged || filter.page.is_some()).then_some(PAGE_ROWS);
    let held = Held::read(page, now).await?;
    let mut migrations = live_migrations(page, &configured, &held, now, |_| true).await?;
    migrations.sort_by(|a, b| {
        // The least time left first; none left to count comes last.
        let left = |m: &LiveMigrationView| (m.time_left_s.is_none(), m.time_left_s);
        (a.stage, left(a), !a.lag_high(), &a.name).cmp(&(b.stage, left(b), !b.lag_high(), &b.name))
    });
    let configured_migrations = migrations.len();
    if shown == Shown::Attention {
        migrations.retain(LiveMigrationView::needs_attention);
    }
    let listing = orgs(
        page,
        &configured,
        &held,
        filter,
        shown,
        page_rows.map(|n| (page_no, n)),
        now,
    )
    .await?;
    Ok(StatusView {
        generated_at: store::ts(now),
        instance: configured.instance.clone(),
        summary: listing.summary,
        shown: shown.as_str(),
        matched: listing.matched,
        page: page_no,
        page_rows,
        instances: configured.instances(),
        orgs: listing.orgs,
        migrations_not_shown: configured_migrations - migrations.len(),
        migrations,
        channels: channels(page, &configured).await?,
        silences: silences(page, &configured, now).await?,
    })
}

/// The silences holding back events of configured orgs at `now`.
async fn silences(page: &Page, configured: &Configured, now: DateTime<Utc>) -> anyhow::Result<Vec<SilenceView>> {
    Ok(page
        .store
        .active_silences(now)
        .await?
        .into_iter()
        .filter_map(|s| {
            let (_, name) = configured.find(&s.org_id)?;
            Some(SilenceView {
                id: s.id,
                org_id: s.org_id.clone(),
                org_name: name.to_owned(),
                migration: s.migration.clone(),
                since: store::ts(s.starts_at),
                until: store::ts(s.until()),
                by: s.created_by,
                reason: s.reason,
            })
        })
        .collect())
}

/// The configured live migrations that `keep` selects, in the config's order.
async fn live_migrations(
    page: &Page,
    configured: &Configured,
    held: &Held,
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
            let atlas_url = configured.links.atlas_project(&m.name);
            let failures_before_alert = configured.failures_before_alert;
            let silenced_until = held.migration(&m.org_id, &m.name);
            live_migration_view(
                m,
                org_name,
                rows.remove(&m.id),
                now,
                atlas_url,
                failures_before_alert,
                silenced_until,
            )
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
    let held = Held::read(page, now).await?;
    let view = live_migrations(page, &configured, &held, now, |c| c.id == m.id)
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

/// The orgs of a view: every org counted by state, and those that pass the filters.
struct Listing {
    summary: BTreeMap<OrgStanding, usize>,
    matched: usize,
    orgs: Vec<OrgView>,
}

/// Every configured org is classified and counted; only the orgs listed (`page`: its number
/// and rows) become views and have their SYNCED time read, so 10,000 healthy orgs cost a
/// count each.
#[allow(clippy::too_many_arguments)]
async fn orgs(
    page: &Page,
    configured: &Configured,
    held: &Held,
    filter: &Filter,
    shown: Shown,
    paging: Option<(usize, usize)>,
    now: DateTime<Utc>,
) -> anyhow::Result<Listing> {
    let mut rows: HashMap<String, OrgRow> = page
        .store
        .org_rows()
        .await?
        .into_iter()
        .map(|r| (r.org_id.clone(), r))
        .collect();
    let mut summary: BTreeMap<OrgStanding, usize> = OrgStanding::ALL.iter().map(|&s| (s, 0)).collect();
    let mut matched = Vec::new();
    for org in configured.orgs.iter() {
        let id = org.id.as_str();
        let state = OrgStanding::of(rows.get(id), configured.failures_before_alert, held.org(id).is_some());
        *summary.entry(state).or_default() += 1;
        if shown.matches(state) && filter.picks(&org.name, id, configured.instance_of(org)) {
            matched.push((state, org));
        }
    }
    matched.sort_unstable_by(|(sa, a), (sb, b)| (sa, &a.name, a.id.as_str()).cmp(&(sb, &b.name, b.id.as_str())));
    let count = matched.len();
    if let Some((number, rows_per_page)) = paging {
        let skip = number.saturating_sub(1).saturating_mul(rows_per_page);
        matched = matched.into_iter().skip(skip).take(rows_per_page).collect();
    }
    let mut views: Vec<OrgView> = matched
        .iter()
        .map(|(_, o)| {
            let silenced_until = held.org(o.id.as_str());
            org_view(
                configured,
                o.id.as_str(),
                &o.name,
                rows.remove(o.id.as_str()),
                silenced_until,
            )
        })
        .collect();
    drop(rows);
    synced_shares(page, &mut views, now).await?;
    Ok(Listing {
        summary,
        matched: count,
        orgs: views,
    })
}

/// How much of the last day, week and month each of `views` was SYNCED.
async fn synced_shares(page: &Page, views: &mut [OrgView], now: DateTime<Utc>) -> anyhow::Result<()> {
    if views.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = views.iter().map(|v| v.id.clone()).collect();
    let starts = [Duration::days(1), Duration::days(7), Duration::days(WINDOW_DAYS)].map(|d| now - d);
    let times: HashMap<String, SyncedTime> = page
        .store
        .synced_time(&ids, now, starts)
        .await?
        .into_iter()
        .map(|t| (t.org_id.clone(), t))
        .collect();
    for v in views {
        v.synced_share = times.get(&v.id).map(SyncedShare::from);
    }
    Ok(())
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
    let configured = page.configured.borrow().clone();
    let now = page.clock.now();
    let from = now - Duration::days(WINDOW_DAYS);
    let row = page.store.org_rows().await?.into_iter().find(|r| r.org_id == id);
    let changes = read_changes(page, id).await?;
    let org_id = OrgId::parse(id).map_err(|e| anyhow::anyhow!("org id {id}: {e}"))?;
    // One more than shown, to tell "exactly 50" from "50 of more".
    let mut failures: Vec<FailureView> = page
        .store
        .failed_checks(&org_id, from, FAILURES_SHOWN + 1)
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
    let beyond = failures.get(FAILURES_SHOWN as usize).cloned();
    failures.truncate(FAILURES_SHOWN as usize);
    let failures_beyond = beyond.is_some();
    let oldest_run_goes_on = beyond.zip(failures.last()).is_some_and(|(b, last)| b.same_as(last));
    let timeline = Timeline::new(
        from,
        now,
        changes.iter().filter_map(|c| Some((parse(&c.at)?, c.to.clone()))),
        failures.iter().filter_map(|f| parse(&f.checked_at)),
    );
    let mut migration_details = Vec::new();
    let held = Held::read(page, now).await?;
    for m in live_migrations(page, &configured, &held, now, |m| m.org_id == id).await? {
        let (changes, lag) = live_migration_history(page, &m.id, from).await?;
        migration_details.push(LiveMigrationDetail {
            chart: LagChart::new(from, now, &lag, m.lag_alert_s),
            migration: m,
            changes,
        });
    }
    migration_details.sort_by(|a, b| a.migration.name.cmp(&b.migration.name));
    let mut org = [org_view(&configured, id, name, row, held.org(id))];
    synced_shares(page, &mut org, now).await?;
    let [org] = org;
    Ok(OrgDetail {
        generated_at: store::ts(now),
        org,
        changes,
        failures,
        failures_beyond,
        oldest_run_goes_on,
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
fn org_view(
    configured: &Configured,
    id: &str,
    name: &str,
    row: Option<OrgRow>,
    silenced_until: Option<String>,
) -> OrgView {
    let state = OrgStanding::of(row.as_ref(), configured.failures_before_alert, silenced_until.is_some());
    let instance = configured
        .org_by_id(id)
        .map_or("", |o| configured.instance_of(o))
        .to_owned();
    let console_url = configured.links.cloud_manager_org(id);
    let Some(r) = row else {
        return OrgView {
            id: id.to_owned(),
            name: name.to_owned(),
            state,
            instance,
            console_url,
            silenced_until,
            synced_share: None,
            status: None,
            since: None,
            last_checked_at: None,
            consecutive_failures: 0,
            last_error: None,
            broken_since: None,
        };
    };
    OrgView {
        id: id.to_owned(),
        // The config's name is the current one; the database keeps the name of the last check.
        name: name.to_owned(),
        state,
        instance,
        console_url,
        silenced_until,
        synced_share: None,
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
    atlas_url: Option<String>,
    failures_before_alert: u32,
    silenced_until: Option<String>,
) -> LiveMigrationView {
    let mut v = LiveMigrationView {
        id: m.id.clone(),
        name: m.name.clone(),
        org_id: m.org_id.clone(),
        org_name: org_name.to_owned(),
        group_id: m.group_id.clone(),
        stage: LiveMigrationStage::Unchecked,
        atlas_url,
        silenced_until,
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
    if v.silenced_until.is_some() {
        v.stage = LiveMigrationStage::Silenced;
    }
    let Some(r) = row else { return v };
    // The threshold its notifications use, as for orgs: one failed check is not yet failing.
    v.stage = if v.silenced_until.is_some() {
        LiveMigrationStage::Silenced
    } else if r.consecutive_failures >= i64::from(failures_before_alert.max(1)) {
        LiveMigrationStage::Failing
    } else if r.consecutive_failures > 0 {
        LiveMigrationStage::Retrying
    } else {
        match r.status.as_deref() {
            None => LiveMigrationStage::Unchecked,
            Some("COMPLETE") => LiveMigrationStage::Complete,
            Some(s) if crate::detect::live_migration::ended_badly(s) => LiveMigrationStage::Failed,
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
        // failures_before_alert = 2.
        let view = |r| live_migration_view(&m, "a", r, now, None, 2, None);
        let stage = |r| view(r).stage;
        assert_eq!(stage(None), LiveMigrationStage::Unchecked);
        assert_eq!(
            stage(Some(live_migration_row(None, false, 1, None))),
            LiveMigrationStage::Retrying
        );
        assert_eq!(
            stage(Some(live_migration_row(None, false, 2, None))),
            LiveMigrationStage::Failing
        );
        assert_eq!(
            stage(Some(live_migration_row(Some("WORKING"), true, 1, None))),
            LiveMigrationStage::Retrying,
            "a failed check hides a readiness that may be stale"
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
            LiveMigrationStage::Retrying,
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
