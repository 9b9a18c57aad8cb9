//! What the page shows, read from the store in one place: the HTML and the JSON are both made
//! from these structs. One struct per section, so that a section (Atlas migrations, say) can be
//! added beside `orgs` and `channels` without touching the others.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::timeline::Timeline;
use super::{Configured, Page};
use crate::config::OrgId;
use crate::store::{self, OrgRow};

/// How far back an org's page looks.
pub const WINDOW_DAYS: i64 = 30;

/// The most failed checks an org's page lists.
const FAILURES_SHOWN: i64 = 50;

/// `GET /` and `GET /api/v1/status`.
#[derive(Debug, Serialize)]
pub struct StatusView {
    pub generated_at: String,
    /// Every configured org, what needs action first (see [`OrgState`]), then by name.
    pub orgs: Vec<OrgView>,
    /// The channels with deliveries waiting or given up, by name.
    pub channels: Vec<ChannelView>,
}

/// Where an org stands, in the order the page sorts by: what needs action comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrgState {
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

impl OrgState {
    /// Its name in the JSON, which is also its CSS class.
    pub fn as_str(self) -> &'static str {
        match self {
            OrgState::Failing => "failing",
            OrgState::Broken => "broken",
            OrgState::NotSynced => "not_synced",
            OrgState::Unchecked => "unchecked",
            OrgState::Synced => "synced",
        }
    }

    /// What the badge says.
    pub fn label(self) -> &'static str {
        match self {
            OrgState::Failing => "check failing",
            OrgState::Broken => "broken",
            OrgState::NotSynced => "not synced",
            OrgState::Unchecked => "not checked yet",
            OrgState::Synced => "synced",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OrgView {
    pub id: String,
    pub name: String,
    pub state: OrgState,
    /// The confirmed link status (`SYNCED`, `NOT_SYNCED` or whatever Cloud Manager says).
    pub status: Option<String>,
    pub since: Option<String>,
    pub last_checked_at: Option<String>,
    pub consecutive_failures: i64,
    pub last_error: Option<String>,
    /// When the link left SYNCED, while it has not come back.
    pub broken_since: Option<String>,
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
}

/// Reads each section; a new section (Atlas migrations) is one more field and one more reader.
pub async fn status(page: &Page) -> anyhow::Result<StatusView> {
    let configured = page.configured.borrow().clone();
    Ok(StatusView {
        generated_at: store::ts(page.clock.now()),
        orgs: orgs(page, &configured).await?,
        channels: channels(page, &configured).await?,
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
        .orgs
        .iter()
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
    Ok(OrgDetail {
        generated_at: store::ts(now),
        org: org_view(id, name, row),
        changes,
        failures,
        timeline,
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
            state: OrgState::Unchecked,
            status: None,
            since: None,
            last_checked_at: None,
            consecutive_failures: 0,
            last_error: None,
            broken_since: None,
        };
    };
    let state = if r.consecutive_failures > 0 {
        OrgState::Failing
    } else {
        match r.status.as_deref() {
            None => OrgState::Unchecked,
            Some("SYNCED") => OrgState::Synced,
            Some(_) if r.broken_since.is_some() => OrgState::Broken,
            Some(_) => OrgState::NotSynced,
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
                OrgState::Synced,
                OrgState::Unchecked,
                OrgState::NotSynced,
                OrgState::Broken,
                OrgState::Failing,
                OrgState::Failing
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
                OrgState::Failing,
                OrgState::Failing,
                OrgState::Broken,
                OrgState::NotSynced,
                OrgState::Unchecked,
                OrgState::Synced
            ]
        );
    }
}
