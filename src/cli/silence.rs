//! `linkwatch silence add|list|end`: planned quiet, written to the database beside a running
//! daemon (whichever instance leads honours it at its next event). Needs the config for names
//! and the database, and no other secret.

use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use clap::Subcommand;

use crate::config::{Config, LiveMigration, Org};
use crate::store::{NewSilence, Silence, Store};
use crate::table::print_table;
use crate::text::{human_secs, shown_at};

#[derive(Debug, Subcommand)]
pub enum SilenceAction {
    /// Silence an org (with its live migrations) or one live migration: its events are recorded
    /// but not sent, and reminders pause. When it ends, one message says so if the status is
    /// not where it was when it began.
    Add {
        /// The org, by name or id.
        #[arg(long, required_unless_present = "migration")]
        org: Option<String>,
        /// Only this `[[migration]]` (by name), not the org's link.
        #[arg(long)]
        migration: Option<String>,
        /// How long: "2h", "90m", "1d".
        #[arg(long = "for", value_parser = super::parse_duration, conflicts_with = "until", required_unless_present = "until")]
        for_: Option<Duration>,
        /// Until then: "2026-12-05 18:00" (UTC), "2026-12-05 18:00 +01:00", or RFC 3339.
        #[arg(long, value_parser = parse_until)]
        until: Option<DateTime<Utc>>,
        /// Why, for whoever reads the list and the message at its end.
        #[arg(long)]
        reason: String,
        /// Who asks [default: $SUDO_USER or $USER, at this host].
        #[arg(long)]
        by: Option<String>,
    },
    /// The silences running, scheduled or not yet concluded (all with --all).
    List {
        #[arg(long)]
        all: bool,
    },
    /// End a silence now.
    End {
        /// Its id, as `silence add` and `silence list` show it.
        id: i64,
    },
}

fn parse_until(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    // With an offset, for a team that thinks in its own time: "2026-12-05 18:00 +01:00".
    for f in ["%Y-%m-%d %H:%M %:z", "%Y-%m-%d %H:%M%:z", "%Y-%m-%d %H:%M:%S %:z"] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    ["%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            format!("\"{s}\" is not a time (write e.g. \"2026-12-05 18:00\" for UTC, or \"2026-12-05 18:00 +01:00\")")
        })
}

pub async fn execute(config: &Config, action: &SilenceAction) -> anyhow::Result<ExitCode> {
    super::require_database(&config.database)?;
    let store = Store::open(&config.database).await?;
    let result = match action {
        SilenceAction::Add {
            org,
            migration,
            for_,
            until,
            reason,
            by,
        } => {
            add(
                config,
                &store,
                org.as_deref(),
                migration.as_deref(),
                *for_,
                *until,
                reason,
                by.clone(),
            )
            .await
        }
        SilenceAction::List { all } => list(config, &store, *all).await,
        SilenceAction::End { id } => end(config, &store, *id).await,
    };
    store.close().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn add(
    config: &Config,
    store: &Store,
    org: Option<&str>,
    migration: Option<&str>,
    for_: Option<Duration>,
    until: Option<DateTime<Utc>>,
    reason: &str,
    by: Option<String>,
) -> anyhow::Result<ExitCode> {
    let now = Utc::now();
    let (org, migration) = target(config, org, migration)?;
    let ends_at = match (for_, until) {
        (Some(d), _) if d.is_zero() => anyhow::bail!("--for must be longer than 0s"),
        (Some(d), _) => chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .ok_or_else(|| anyhow::anyhow!("--for is too long"))?,
        (None, Some(t)) if t <= now => anyhow::bail!("--until {} is in the past", shown_at(t)),
        (None, Some(t)) => t,
        (None, None) => anyhow::bail!("say how long: --for 2h or --until \"2026-12-05 18:00\""),
    };
    // Planned work, not a way to switch linkwatch off: a year at most (and times stay in the
    // range the database compares as text).
    if ends_at - now > chrono::Duration::days(366) {
        anyhow::bail!(
            "a silence lasts at most a year (366d); this one would end {}",
            shown_at(ends_at)
        );
    }
    if reason.trim().is_empty() {
        anyhow::bail!("--reason is empty: say why, for whoever reads the list and the message at its end");
    }
    let by = by.unwrap_or_else(who);
    let id = store
        .add_silence(&NewSilence {
            org_id: org.id.as_str(),
            migration: migration.map(|m| m.name.as_str()),
            migration_id: migration.map(|m| m.id.as_str()),
            starts_at: now,
            ends_at,
            created_by: &by,
            reason,
        })
        .await?;
    let s = store
        .silence(id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("silence {id} was written but cannot be read back"))?;
    println!(
        "silence {id}: {} until {} ({}), by {by}: {reason}",
        what(config, &s),
        shown_at(ends_at),
        human_secs((ends_at - now).num_seconds())
    );
    println!(
        "status now: {}. Its events are recorded and not sent until then; when it ends, one message says so if the status has moved. `linkwatch silence end {id}` ends it early.",
        s.status_at_start.as_deref().unwrap_or("not yet checked")
    );
    Ok(ExitCode::SUCCESS)
}

/// The org and (optionally) the migration named on the command line, from the config.
fn target<'c>(
    config: &'c Config,
    org: Option<&str>,
    migration: Option<&str>,
) -> anyhow::Result<(&'c Org, Option<&'c LiveMigration>)> {
    let migration = match migration {
        None => None,
        Some(name) => Some(config.migrations.iter().find(|m| m.name == name).ok_or_else(|| {
            let names: Vec<&str> = config.migrations.iter().map(|m| m.name.as_str()).collect();
            anyhow::anyhow!(
                "no [[migration]] named \"{name}\" in {} (migrations: {})",
                config.source.display(),
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            )
        })?),
    };
    let org = match (org, migration) {
        (Some(key), _) => config
            .orgs
            .iter()
            .find(|o| o.name == key || o.id.as_str() == key)
            .ok_or_else(|| {
                let names: Vec<&str> = config.orgs.iter().map(|o| o.name.as_str()).collect();
                anyhow::anyhow!(
                    "no org named or with the id \"{key}\" in {} (orgs: {})",
                    config.source.display(),
                    names.join(", ")
                )
            })?,
        (None, Some(m)) => config
            .orgs
            .iter()
            .find(|o| o.id == m.org)
            .ok_or_else(|| anyhow::anyhow!("the source org of migration \"{}\" is not in the config", m.name))?,
        (None, None) => anyhow::bail!("say what to silence: --org NAME|ID, or --migration NAME"),
    };
    if let Some(m) = migration
        && m.org != org.id
    {
        anyhow::bail!("migration \"{}\" moves org {}, not {}", m.name, m.org, org.name);
    }
    Ok((org, migration))
}

async fn list(config: &Config, store: &Store, all: bool) -> anyhow::Result<ExitCode> {
    let now = Utc::now();
    let silences = store.silences(now, all).await?;
    if silences.is_empty() {
        println!(
            "no silences{}",
            if all {
                ""
            } else {
                " running or waiting to conclude (--all lists every one)"
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = silences
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                s.state(now).to_owned(),
                what(config, s),
                shown_at(s.starts_at),
                shown_at(s.until()),
                s.created_by.clone(),
                s.reason.clone(),
            ]
        })
        .collect();
    print_table(&["ID", "STATE", "SILENCED", "FROM", "UNTIL", "BY", "REASON"], &rows);
    Ok(ExitCode::SUCCESS)
}

async fn end(config: &Config, store: &Store, id: i64) -> anyhow::Result<ExitCode> {
    let now = Utc::now();
    let Some(s) = store.silence(id).await? else {
        anyhow::bail!(
            "no silence {id} in {} (`linkwatch silence list --all` lists them)",
            config.database
        );
    };
    if !store.end_silence(id, now).await? {
        println!(
            "silence {id} ({}) was already over at {}",
            what(config, &s),
            shown_at(s.until())
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "silence {id} ({}) ended; the daemon that leads sends one message if the status is not where it was at its start",
        what(config, &s)
    );
    Ok(ExitCode::SUCCESS)
}

/// "alpha" or "mig-1 (org alpha)", by the config's names where it still has them.
fn what(config: &Config, s: &Silence) -> String {
    let org = config
        .orgs
        .iter()
        .find(|o| o.id.as_str() == s.org_id)
        .map_or(s.org_id.as_str(), |o| o.name.as_str());
    match &s.migration {
        Some(m) => format!("{m} (org {org})"),
        None => org.to_owned(),
    }
}

/// Who runs the command: the user behind sudo, or the user, at this host.
fn who() -> String {
    let user = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{user}@{}", crate::config::host_name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_reads_utc_or_an_offset() {
        let utc = parse_until("2026-12-05 18:00").unwrap();
        assert_eq!(utc.to_rfc3339(), "2026-12-05T18:00:00+00:00");
        assert_eq!(parse_until("2026-12-05 19:00 +01:00").unwrap(), utc);
        assert_eq!(parse_until("2026-12-05T19:00:00+01:00").unwrap(), utc);
        assert!(parse_until("tomorrow").unwrap_err().contains("+01:00"));
    }
}
