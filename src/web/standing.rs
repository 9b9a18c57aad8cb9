//! Where an org or a live migration stands, in the order the page sorts and lists by: what
//! needs action first. A pure decision from the stored row and the config's threshold, which
//! the views and the filters share.

use serde::Serialize;

use crate::store::OrgRow;

/// Where an org stands, in the order the page sorts by: what needs action comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrgStanding {
    /// As many checks in a row failed as `failures_before_alert` (the reason is in
    /// `last_error`): notifications said so.
    Failing,
    /// The last check failed, fewer times in a row than `failures_before_alert`: the next may
    /// pass, and no notification has said anything yet.
    Retrying,
    /// The link was SYNCED and left it.
    Broken,
    /// The link has a status other than SYNCED and never was SYNCED since it left it.
    NotSynced,
    /// No successful check yet.
    Unchecked,
    /// Someone muted the org for a while (`silenced_until`), whatever its state.
    Silenced,
    Synced,
}

impl OrgStanding {
    /// Every state, in the page's order.
    pub const ALL: [OrgStanding; 7] = [
        OrgStanding::Failing,
        OrgStanding::Retrying,
        OrgStanding::Broken,
        OrgStanding::NotSynced,
        OrgStanding::Unchecked,
        OrgStanding::Silenced,
        OrgStanding::Synced,
    ];

    /// Its name in the JSON, which is also its CSS class and its `state` filter.
    pub fn as_str(self) -> &'static str {
        match self {
            OrgStanding::Failing => "failing",
            OrgStanding::Retrying => "retrying",
            OrgStanding::Broken => "broken",
            OrgStanding::NotSynced => "not_synced",
            OrgStanding::Unchecked => "unchecked",
            OrgStanding::Silenced => "silenced",
            OrgStanding::Synced => "synced",
        }
    }

    /// What the badge says.
    pub fn label(self) -> &'static str {
        match self {
            OrgStanding::Failing => "check failing",
            OrgStanding::Retrying => "retrying",
            OrgStanding::Broken => "broken",
            OrgStanding::NotSynced => "not synced",
            OrgStanding::Unchecked => "not checked yet",
            OrgStanding::Silenced => "silenced",
            OrgStanding::Synced => "synced",
        }
    }

    /// Whether the page's default view lists it. An unchecked org is only counted: after a
    /// start every org is, and a check that fails makes it retrying.
    pub fn needs_attention(self) -> bool {
        // A silenced org is listed too: the team should see what it muted, and until when.
        self < OrgStanding::Unchecked || self == OrgStanding::Silenced
    }

    /// Where an org stands from its row, the threshold that notifications use, and whether it
    /// is silenced.
    pub fn of(row: Option<&OrgRow>, failures_before_alert: u32, silenced: bool) -> OrgStanding {
        if silenced {
            return OrgStanding::Silenced;
        }
        let Some(r) = row else { return OrgStanding::Unchecked };
        if r.consecutive_failures >= i64::from(failures_before_alert.max(1)) {
            OrgStanding::Failing
        } else if r.consecutive_failures > 0 {
            OrgStanding::Retrying
        } else {
            match r.status.as_deref() {
                None => OrgStanding::Unchecked,
                Some("SYNCED") => OrgStanding::Synced,
                Some(_) if r.broken_since.is_some() => OrgStanding::Broken,
                Some(_) => OrgStanding::NotSynced,
            }
        }
    }
}

/// Where a live migration stands, in the order the page sorts by: what needs action comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveMigrationStage {
    /// As many checks of the migration in a row failed as `failures_before_alert` (the reason
    /// is in `last_error`): notifications said so.
    Failing,
    /// Its last check failed, fewer times in a row than `failures_before_alert`.
    Retrying,
    /// Atlas says `FAILED` or `EXPIRED`: it must be started again.
    Failed,
    /// Ready for cutover: someone must cut over before the estimated deadline.
    Ready,
    /// Under way (`NEW`, `WORKING`, or another status Atlas uses), not ready for cutover.
    InProgress,
    /// No successful check yet.
    Unchecked,
    /// Someone muted the migration for a while (`silenced_until`).
    Silenced,
    /// `COMPLETE`.
    Complete,
}

impl LiveMigrationStage {
    /// Its name in the JSON, which is also its CSS class.
    pub fn as_str(self) -> &'static str {
        match self {
            LiveMigrationStage::Failing => "failing",
            LiveMigrationStage::Retrying => "retrying",
            LiveMigrationStage::Failed => "failed",
            LiveMigrationStage::Ready => "ready",
            LiveMigrationStage::InProgress => "in_progress",
            LiveMigrationStage::Unchecked => "unchecked",
            LiveMigrationStage::Silenced => "silenced",
            LiveMigrationStage::Complete => "complete",
        }
    }

    /// What the badge says.
    pub fn label(self) -> &'static str {
        match self {
            LiveMigrationStage::Failing => "check failing",
            LiveMigrationStage::Retrying => "retrying",
            LiveMigrationStage::Failed => "failed",
            LiveMigrationStage::Ready => "ready for cutover",
            LiveMigrationStage::InProgress => "in progress",
            LiveMigrationStage::Unchecked => "not checked yet",
            LiveMigrationStage::Silenced => "silenced",
            LiveMigrationStage::Complete => "complete",
        }
    }
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
        // failures_before_alert = 3, as notifications count.
        let state = |r: Option<OrgRow>| OrgStanding::of(r.as_ref(), 3, false);
        let mut states = vec![
            state(Some(row(Some("SYNCED"), 0, false))),
            state(None),
            state(Some(row(Some("NOT_SYNCED"), 0, false))),
            state(Some(row(Some("NOT_SYNCED"), 0, true))),
            state(Some(row(Some("SYNCED"), 3, false))),
            state(Some(row(None, 4, false))),
            state(Some(row(Some("SYNCED"), 1, false))),
            state(Some(row(None, 2, false))),
            OrgStanding::of(Some(&row(Some("NOT_SYNCED"), 5, true)), 3, true),
        ];
        assert_eq!(
            states,
            [
                OrgStanding::Synced,
                OrgStanding::Unchecked,
                OrgStanding::NotSynced,
                OrgStanding::Broken,
                OrgStanding::Failing,
                OrgStanding::Failing,
                OrgStanding::Retrying,
                OrgStanding::Retrying,
                OrgStanding::Silenced,
            ]
        );
        for s in OrgStanding::ALL {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                s.as_str(),
                "the JSON and the CSS class agree"
            );
        }
        states.sort();
        states.dedup();
        assert_eq!(states, OrgStanding::ALL, "ALL is in the page's order");
        let listed: Vec<OrgStanding> = OrgStanding::ALL.into_iter().filter(|s| s.needs_attention()).collect();
        assert_eq!(
            listed,
            [
                OrgStanding::Failing,
                OrgStanding::Retrying,
                OrgStanding::Broken,
                OrgStanding::NotSynced,
                OrgStanding::Silenced
            ]
        );
    }

    #[test]
    fn one_failed_check_is_retrying_until_the_alert_threshold() {
        for (failures, threshold, expected) in [
            (1, 3, OrgStanding::Retrying),
            (2, 3, OrgStanding::Retrying),
            (3, 3, OrgStanding::Failing),
            (1, 1, OrgStanding::Failing),
            (0, 3, OrgStanding::Synced),
        ] {
            assert_eq!(
                OrgStanding::of(Some(&row(Some("SYNCED"), failures, false)), threshold, false),
                expected,
                "{failures} failed checks, failures_before_alert = {threshold}"
            );
        }
    }
}
