//! A reload: a new [`App`] for a new config, around the running one's store, metrics, clock and
//! channel memories, or a refusal that keeps the running one.

use crate::channels::ConsoleSink;
use crate::config::Config;
use crate::dispatch::DeliverySettings;

use super::App;

/// A new `App` for `loaded`, around the running one's store, metrics, clock and what its
/// channels remember (outcomes not yet written, retry times, mail recipients' progress), so that
/// a reload never sends a delivered event again.
pub(super) fn rebuild(current: &App, loaded: anyhow::Result<Config>, console: ConsoleSink) -> anyhow::Result<App> {
    let mut config = loaded?;
    if config.database != current.config.database && config.database.same_place(&current.config.database) {
        tracing::warn!("the database password changed; new connections use it after the next restart");
    }
    if !config.database.same_place(&current.config.database) {
        anyhow::bail!(
            "the database moved from {} to {}; that needs a restart",
            current.config.database,
            config.database
        );
    }
    if config.instance_name != current.config.instance_name {
        tracing::warn!("instance_name changed; it takes effect at the next restart");
        // The lease, the logs and `/metrics` go on with the name they started with.
        config.instance_name = current.config.instance_name.clone();
    }
    if config.http_listen != current.config.http_listen || config.http_auth != current.config.http_auth {
        tracing::warn!("[http] changed; it takes effect at the next restart");
    }
    let gone: Vec<&str> = current
        .config
        .channels
        .iter()
        .filter(|c| !config.channels.iter().any(|n| n.name == c.name))
        .map(|c| c.name.as_str())
        .collect();
    if !gone.is_empty() {
        tracing::warn!(
            "channels removed: {}; their pending deliveries wait until a channel of that name returns",
            gone.join(", ")
        );
    }
    App::following(
        config,
        current.store.clone(),
        current.metrics.clone(),
        console,
        DeliverySettings::with_clock(current.clock.clone()),
        current.dispatcher.memories(),
    )
}

/// What a reload changes, in words for the log: orgs, schedules, channels, routes, live
/// migrations, reports, the heartbeat and `[poll]`. Long lists are cut: 10,000 orgs make no line.
pub(super) fn changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    org_changes(&mut out, old, new);
    channel_changes(&mut out, old, new);
    migration_changes(&mut out, old, new);
    report_changes(&mut out, old, new);
    heartbeat_and_poll_changes(&mut out, old, new);
    other_changes(&mut out, old, new);
    out
}

/// Orgs added, removed, renamed, rescheduled, rekeyed or moved to another instance.
fn org_changes(out: &mut Vec<String>, old: &Config, new: &Config) {
    // Orgs are told apart by id: a corrected id is an org removed and one added.
    let ids = |orgs: &[crate::config::Org]| orgs.iter().map(|o| o.id.to_string()).collect::<Vec<_>>();
    let (old_ids, new_ids) = (ids(&old.orgs), ids(&new.orgs));
    let name_of = |orgs: &[crate::config::Org], id: &String| {
        orgs.iter()
            .find(|o| o.id.as_str() == id)
            .map_or(id.clone(), |o| format!("{} ({id})", o.name))
    };
    let shown = |orgs: &[crate::config::Org], ids: Vec<String>| ids.iter().map(|i| name_of(orgs, i)).collect();
    list(out, "orgs added", shown(&new.orgs, added(&old_ids, &new_ids)));
    list(out, "orgs removed", shown(&old.orgs, added(&new_ids, &old_ids)));
    let renamed: Vec<String> = new
        .orgs
        .iter()
        .filter_map(|n| {
            let o = old.orgs.iter().find(|o| o.id == n.id)?;
            (o.name != n.name).then(|| format!("{} -> {}", o.name, n.name))
        })
        .collect();
    list(out, "orgs renamed", renamed);
    let rescheduled: Vec<String> = new
        .orgs
        .iter()
        .filter_map(|n| {
            let o = old.orgs.iter().find(|o| o.id == n.id)?;
            (o.schedule != n.schedule).then(|| format!("{} ({} -> {})", n.name, o.schedule, n.schedule))
        })
        .collect();
    list(out, "schedules changed", rescheduled);
    let rekeyed: Vec<String> = new
        .orgs
        .iter()
        .filter(|n| old.orgs.iter().any(|o| o.id == n.id && o.credential != n.credential))
        .map(|n| n.name.clone())
        .collect();
    list(out, "credentials changed", rekeyed);
    let moved: Vec<String> = new
        .orgs
        .iter()
        .filter_map(|n| {
            let o = old.orgs.iter().find(|o| o.id == n.id)?;
            (o.endpoint != n.endpoint).then(|| format!("{} ({} -> {})", n.name, o.endpoint.label(), n.endpoint.label()))
        })
        .collect();
    list(out, "instances changed", moved);
}

/// Channels added, removed or changed, and the routes.
fn channel_changes(out: &mut Vec<String>, old: &Config, new: &Config) {
    let channel_names = |c: &Config| c.channels.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    let (old_channels, new_channels) = (channel_names(old), channel_names(new));
    list(out, "channels added", added(&old_channels, &new_channels));
    list(out, "channels removed", added(&new_channels, &old_channels));
    let changed: Vec<String> = new
        .channels
        .iter()
        .filter(|n| {
            old.channels
                .iter()
                .any(|o| o.name == n.name && (o.kind != n.kind || o.timeout != n.timeout))
        })
        .map(|n| n.name.clone())
        .collect();
    list(out, "channels changed", changed);
    if old.routes != new.routes {
        out.push(format!("routes: {} -> {}", old.routes.len(), new.routes.len()));
    }
}

fn migration_changes(out: &mut Vec<String>, old: &Config, new: &Config) {
    let migration_names = |c: &Config| c.migrations.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
    let (old_m, new_m) = (migration_names(old), migration_names(new));
    list(out, "live migrations added", added(&old_m, &new_m));
    list(out, "live migrations removed", added(&new_m, &old_m));
    let changed: Vec<String> = new
        .migrations
        .iter()
        .filter(|n| old.migrations.iter().any(|o| o.name == n.name && o != *n))
        .map(|n| n.name.clone())
        .collect();
    list(out, "live migrations changed", changed);
}

fn report_changes(out: &mut Vec<String>, old: &Config, new: &Config) {
    let report_names = |c: &Config| c.reports.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
    let (old_r, new_r) = (report_names(old), report_names(new));
    list(out, "reports added", added(&old_r, &new_r));
    list(out, "reports removed", added(&new_r, &old_r));
    let changed: Vec<String> = new
        .reports
        .iter()
        .filter(|n| old.reports.iter().any(|o| o.name == n.name && o != *n))
        .map(|n| n.name.clone())
        .collect();
    list(out, "reports changed", changed);
}

fn heartbeat_and_poll_changes(out: &mut Vec<String>, old: &Config, new: &Config) {
    match (&old.heartbeat, &new.heartbeat) {
        (None, Some(_)) => out.push("heartbeat on".into()),
        (Some(_), None) => out.push("heartbeat off".into()),
        (Some(o), Some(n)) if o != n => out.push("heartbeat changed".into()),
        _ => {}
    }
    let (op, np) = (&old.poll, &new.poll);
    if op.schedule != np.schedule {
        out.push(format!("[poll] {} -> {}", op.schedule, np.schedule));
    }
    if (op.timeout, op.concurrency, op.failures_before_alert, op.confirm_checks)
        != (np.timeout, np.concurrency, np.failures_before_alert, np.confirm_checks)
    {
        out.push("[poll] limits changed".into());
    }
}

/// The sections the ones above do not cover, each named once when anything in it changed.
fn other_changes(out: &mut Vec<String>, old: &Config, new: &Config) {
    // The rest by section, so that no edit reads as "nothing changed".
    let atlas = |c: &Config| {
        c.atlas.as_ref().map(|a| {
            (
                a.base_url.clone(),
                a.token_url.clone(),
                a.credential.clone(),
                a.every,
                a.cutover_window,
                a.deadline_warnings.clone(),
            )
        })
    };
    let cloud_manager = |c: &Config| {
        let cm = &c.cloud_manager;
        (
            cm.base_url.clone(),
            cm.token_url.clone(),
            cm.connect_timeout,
            cm.max_body_bytes,
        )
    };
    let sections = [
        ("[cloud_manager]", cloud_manager(old) != cloud_manager(new)),
        ("[atlas]", atlas(old) != atlas(new)),
        ("[http] public_url", old.http_public_url != new.http_public_url),
        ("retention", old.retention != new.retention),
        ("shutdown_timeout", old.shutdown_timeout != new.shutdown_timeout),
        ("leader_lease", old.leader_lease != new.leader_lease),
    ];
    let other: Vec<String> = sections
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(what, _)| (*what).to_owned())
        .collect();
    list(out, "also changed", other);
}

/// The names of `new` that `old` lacks.
fn added(old: &[String], new: &[String]) -> Vec<String> {
    let old: std::collections::HashSet<&String> = old.iter().collect();
    new.iter().filter(|n| !old.contains(n)).cloned().collect()
}

/// `what: a, b, c` (at most 10 names, then how many more) when `names` is not empty.
fn list(out: &mut Vec<String>, what: &str, names: Vec<String>) {
    const SHOWN: usize = 10;
    if names.is_empty() {
        return;
    }
    let mut line = format!("{what}: {}", names[..names.len().min(SHOWN)].join(", "));
    if names.len() > SHOWN {
        line.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    out.push(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("linkwatch.toml")).unwrap()
    }

    #[test]
    fn a_reload_says_what_it_changes() {
        let base = "[cloud_manager]\npublic_key = \"pub\"\nprivate_key = \"key\"\n\n\
                    [[org]]\nid = \"5f0c1234567890abcdef1234\"\nname = \"payments\"\n\n\
                    [[org]]\nid = \"5f0c1234567890abcdef1235\"\nname = \"billing\"\n";
        let old = parse(&format!("{base}\n[[channel]]\nname = \"ops\"\nkind = \"console\"\n"));
        let new = parse(&format!(
            "{}\n[[org]]\nid = \"5f0c1234567890abcdef1236\"\nname = \"search\"\n\n\
             [[channel]]\nname = \"ops\"\nkind = \"console\"\ntimeout = \"20s\"\n\
             [[channel]]\nname = \"team\"\nkind = \"console\"\n",
            base.replace("name = \"billing\"\n", "name = \"billing\"\nevery = \"5m\"\n")
        ));
        assert_eq!(
            changes(&old, &new),
            vec![
                "orgs added: search (5f0c1234567890abcdef1236)",
                "schedules changed: billing (every 1m -> every 5m)",
                "channels added: team",
                "channels changed: ops",
            ]
        );
        assert!(changes(&new, &new).is_empty());
        let many = (0..25)
            .map(|i| format!("[[org]]\nid = \"5f0c1234567890abcdef{i:04}\"\nname = \"org-{i}\"\n"))
            .collect::<String>();
        let grown = parse(&format!("{base}\n{many}"));
        let line = &changes(&parse(base), &grown)[0];
        assert!(
            line.starts_with("orgs added: org-0 (") && line.ends_with(" and 15 more"),
            "{line}"
        );
        // A corrected id is an org removed and one added; a rename says so.
        let fixed = parse(
            &base
                .replace("5f0c1234567890abcdef1235", "5f0c1234567890abcdef1239")
                .replace("payments", "pay"),
        );
        assert_eq!(
            changes(&parse(base), &fixed),
            vec![
                "orgs added: billing (5f0c1234567890abcdef1239)",
                "orgs removed: billing (5f0c1234567890abcdef1235)",
                "orgs renamed: payments -> pay",
            ]
        );
    }

    #[tokio::test]
    async fn a_reload_keeps_the_wall_clock_of_the_running_app() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "database = \"{}\"\n[cloud_manager]\npublic_key = \"pub\"\nprivate_key = \"key\"\n\n\
             [[org]]\nid = \"5f0c1234567890abcdef1234\"\nname = \"payments\"\n",
            dir.path().join("linkwatch.db").display()
        );
        let config = || Config::parse(&text, std::path::Path::new("linkwatch.toml")).map_err(Into::into);
        let app = App::new(config().unwrap(), ConsoleSink::default()).await.unwrap();
        app.clock.step(chrono::Duration::hours(-1));
        let reloaded = rebuild(&app, config(), ConsoleSink::default()).unwrap();
        let behind = chrono::Utc::now() - reloaded.clock.now();
        assert!(behind > chrono::Duration::minutes(59), "{behind}");
        app.store.close().await;
    }
}
