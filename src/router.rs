//! Which channels hear about an event, and which routes ask for reminders; from the config's
//! `[[route]]` tables. Decided when the event is written, so a delivery survives config changes.

use chrono::{DateTime, Utc};

use crate::config::{Config, EventKind, OrgId, Route};
use crate::detect::{Event, ReminderRule};

/// Decides which channels an event goes to, from the config's routes.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
    channels: Vec<String>,
}

impl Router {
    pub fn new(config: &Config) -> Router {
        Router {
            routes: config.routes.clone(),
            channels: config.channels.iter().map(|c| c.name.clone()).collect(),
        }
    }

    /// The channels `event` about `org` goes to: every channel when there is no route, else the
    /// union of the channels of the routes that select it. Reminders are not routed here: they
    /// go to the route that asked for them.
    pub fn route(&self, org: &OrgId, event: &Event) -> Vec<String> {
        if self.routes.is_empty() {
            return self.channels.clone();
        }
        let mut out: Vec<String> = Vec::new();
        for r in self.routes.iter().filter(|r| selects(r, org, event)) {
            for c in &r.channels {
                if !out.contains(c) {
                    out.push(c.clone());
                }
            }
        }
        out
    }

    pub fn has_reminders(&self) -> bool {
        self.routes.iter().any(|r| r.remind_every.is_some())
    }

    /// The routes with `remind_every` that concern `org`: (route key, rule, channels).
    pub fn reminder_rules(
        &self,
        org: &OrgId,
        sent: &[(String, DateTime<Utc>)],
    ) -> Vec<(String, ReminderRule, Vec<String>)> {
        let wants = |r: &Route, k: EventKind| {
            r.events
                .as_ref()
                .is_none_or(|e| e.contains(&k) || e.contains(&EventKind::Reminder))
        };
        self.routes
            .iter()
            .filter(|r| r.orgs.as_ref().is_none_or(|o| o.contains(org)))
            .filter_map(|r| {
                let every = r.remind_every?;
                let key = route_key(r);
                let last_sent = sent.iter().find(|(k, _)| *k == key).map(|(_, t)| *t);
                let rule = ReminderRule {
                    every,
                    about_link: wants(r, EventKind::StatusChanged),
                    about_failing: wants(r, EventKind::CheckFailing),
                    to: r.to.clone(),
                    last_sent,
                };
                Some((key, rule, r.channels.clone()))
            })
            .collect()
    }
}

/// A route's identity for its reminder clock: what it says, not where it stands in the file, so
/// reordering routes neither restarts nor fires reminders. Changing a route makes it a new one.
pub fn route_key(r: &Route) -> String {
    let list = |v: Option<Vec<String>>| v.map_or("*".to_owned(), |v| v.join(","));
    format!(
        "channels={}; events={}; to={}; orgs={}; every={}",
        r.channels.join(","),
        list(
            r.events
                .as_ref()
                .map(|e| e.iter().map(|k| k.as_str().to_owned()).collect())
        ),
        list(r.to.clone()),
        list(r.orgs.as_ref().map(|o| o.iter().map(|i| i.to_string()).collect())),
        r.remind_every
            .map_or("-".to_owned(), |d| humantime::format_duration(d).to_string()),
    )
}

fn selects(r: &Route, org: &OrgId, event: &Event) -> bool {
    let kind_ok = r
        .events
        .as_ref()
        .is_none_or(|kinds| kinds.iter().any(|k| k.as_str() == event.kind()));
    let org_ok = r.orgs.as_ref().is_none_or(|orgs| orgs.contains(org));
    let to_ok = match (&r.to, event.status()) {
        (None, _) => true,
        (Some(to), Some(status)) => to.iter().any(|s| s == status),
        (Some(_), None) => false,
    };
    kind_ok && org_ok && to_ok && !matches!(event, Event::Reminder { .. })
}
