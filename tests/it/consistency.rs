//! One writer and what a crash or power loss leaves: the same event is never recorded twice,
//! comes back under the same id, and reminders follow the link, not the config's layout.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use linkwatch::channels::ConsoleSink;
use linkwatch::config::Config;
use linkwatch::daemon::App;
use linkwatch::simulator::Behavior;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;
use crate::receiver::Receiver;

fn webhook(url: &str) -> String {
    format!("[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{url}\"\n")
}

async fn app_on(t: &TestApp) -> Arc<App> {
    let config = Config::load(&t.config_path).unwrap();
    Arc::new(App::new(config, ConsoleSink::Memory(Default::default())).await.unwrap())
}

/// Two writers on one database (a daemon and `linkwatch once`, say) check the same org at the
/// same moment, again and again: each change is recorded once.
#[tokio::test]
async fn two_writers_checking_one_org_record_each_change_once() {
    let t = spawn_app().await;
    let other = app_on(&t).await;
    let alpha = org(&t.app, ORG_A);
    t.check(ORG_A).await;
    let flips = 10;
    for n in 0..flips {
        t.sim.set(
            ORG_A,
            Behavior::status(if n % 2 == 0 { "SYNCED" } else { "NOT_SYNCED" }),
        );
        let (a, b) = tokio::join!(t.app.checker.check_org(alpha), other.checker.check_org(alpha));
        a.unwrap();
        b.unwrap();
    }
    let changes = t
        .event_kinds(ORG_A)
        .await
        .iter()
        .filter(|k| *k == "status_changed")
        .count();
    assert_eq!(changes, flips, "each of {flips} changes recorded once");
    let history = t.app.store.history(Some(ORG_A), None).await.unwrap();
    assert_eq!(history.len(), flips + 1, "first seen plus one row per change");
    other.store.close().await;
}

#[tokio::test]
async fn a_second_run_on_one_database_refuses_and_names_the_holder() {
    // A second run refuses at once when the holder is a run: it would wait an hour otherwise.
    let t = spawn_app_with(Setup {
        top: "shutdown_timeout = \"1h\"".into(),
        ..Setup::default()
    })
    .await;
    let linkwatch = || {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_linkwatch"));
        c.arg("--config")
            .arg(&t.config_path)
            .env_remove("RUST_LOG")
            .kill_on_drop(true);
        c
    };
    let mut first = linkwatch()
        .arg("run")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(first.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("first_seen") {
                return;
            }
        }
    })
    .await
    .expect("the first daemon records an event");

    let second = tokio::time::timeout(Duration::from_secs(15), linkwatch().arg("run").output())
        .await
        .expect("the second run gives up at once")
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    let pid = first.id().unwrap();
    assert!(
        stderr.contains("linkwatch run (pid")
            && stderr.contains(&format!("pid {pid}"))
            && stderr.contains("already using"),
        "{stderr}"
    );
    // `once` beside it checks and records, and leaves the sending to the daemon.
    let once = tokio::time::timeout(Duration::from_secs(15), linkwatch().arg("once").output())
        .await
        .expect("once finishes")
        .unwrap();
    let stderr = String::from_utf8_lossy(&once.stderr);
    assert!(once.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {pid}")) && stderr.contains("delivered by it"),
        "{stderr}"
    );
    first.kill().await.unwrap();
}

/// With `synchronous = NORMAL` a power loss can take back the last commits, after their events
/// were delivered. The next check finds the same change again: receivers must see the same id.
#[tokio::test]
async fn an_event_lost_to_a_power_cut_comes_back_with_the_same_id() {
    let rx = Receiver::start().await;
    let t = spawn_app_with(Setup {
        channels: webhook(&rx.url("/hook")),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    t.dispatch().await;
    // What the disk held before the power cut: everything up to here.
    let snapshot = t.db_path.with_file_name("before-power-cut.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", t.db_path.display()))
        .await
        .unwrap();
    sqlx::query("VACUUM INTO ?")
        .bind(snapshot.display().to_string())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    t.check(ORG_A).await;
    t.dispatch().await;
    let first = rx.accepted().last().unwrap().clone();
    assert_eq!(first.json()["type"], "status_changed");

    // The power cut: the last transaction never reached the disk.
    t.app.store.close().await;
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", t.db_path.display()));
    }
    std::fs::rename(&snapshot, &t.db_path).unwrap();
    let t = t.restart().await;
    t.check(ORG_A).await;
    t.dispatch().await;
    let again = rx.accepted().last().unwrap().clone();
    assert_eq!(again.json()["type"], "status_changed");
    assert_eq!(
        again.header("webhook-id"),
        first.header("webhook-id"),
        "the re-detected change must carry the id receivers already saw"
    );
}

fn reminder_route(rx: &Receiver) -> String {
    format!(
        "[[channel]]\nname = \"ops\"\nkind = \"slack\"\nwebhook_url = \"{}\"\n\n\
         [[route]]\nchannels = [\"ops\"]\nevents = [\"status_changed\"]\nremind_every = \"1h\"\n",
        rx.url("/ops")
    )
}

async fn reminders(t: &TestApp) -> Vec<serde_json::Value> {
    t.events(Some(ORG_B))
        .await
        .into_iter()
        .filter(|e| e.kind == "reminder")
        .map(|e| serde_json::from_str(&e.payload).unwrap())
        .collect()
}

/// A link that left SYNCED is broken until it is SYNCED again, whatever it passes through.
#[tokio::test]
async fn reminders_for_a_broken_link_go_on_across_statuses_until_synced() {
    let rx = Receiver::start().await;
    let t = spawn_app_with(Setup {
        channels: reminder_route(&rx),
        ..Setup::default()
    })
    .await;
    let hours = |h| t.app.clock.step(chrono::Duration::hours(h));
    t.check(ORG_B).await; // SYNCED
    t.sim.set(ORG_B, Behavior::status("NOT_SYNCED"));
    t.check(ORG_B).await;
    let broke_at = t.app.store.history(Some(ORG_B), None).await.unwrap()[1]
        .changed_at
        .clone();
    hours(2);
    t.check(ORG_B).await;
    assert_eq!(reminders(&t).await.len(), 1);

    // Another status that is not SYNCED either: still broken, since the same moment.
    t.sim.set(ORG_B, Behavior::status("PENDING_RESYNC"));
    t.check(ORG_B).await;
    hours(2);
    t.check(ORG_B).await;
    let all = reminders(&t).await;
    assert_eq!(all.len(), 2, "{all:?}");
    let since: chrono::DateTime<chrono::Utc> = serde_json::from_value(all[1]["since"].clone()).unwrap();
    assert_eq!(
        linkwatch::store::ts(since),
        broke_at,
        "the episode started when it left SYNCED"
    );
    assert!(all[1]["elapsed_s"].as_i64().unwrap() >= 4 * 3600);

    t.sim.set(ORG_B, Behavior::status("SYNCED"));
    t.check(ORG_B).await;
    hours(2);
    t.check(ORG_B).await;
    assert_eq!(reminders(&t).await.len(), 2, "no reminder once SYNCED again");
}

/// Reordering `[[route]]` tables in the file does not restart (or fire) a route's reminders.
#[tokio::test]
async fn reordering_routes_keeps_each_reminder_clock() {
    let rx = Receiver::start().await;
    let other_route = "[[route]]\nchannels = [\"ops\"]\nevents = [\"check_failing\"]\n";
    let t = spawn_app_with(Setup {
        channels: format!("{}\n{other_route}", reminder_route(&rx)),
        ..Setup::default()
    })
    .await;
    let clock = t.app.clock.clone();
    t.check(ORG_B).await;
    t.sim.set(ORG_B, Behavior::status("NOT_SYNCED"));
    t.check(ORG_B).await;
    clock.step(chrono::Duration::minutes(90));
    t.check(ORG_B).await;
    assert_eq!(reminders(&t).await.len(), 1);

    // The same routes, the other way round; then a restart, 40 minutes later.
    let text = std::fs::read_to_string(&t.config_path).unwrap();
    let (before, routes) = text.split_at(text.find("[[route]]").unwrap());
    let mut tables: Vec<&str> = routes.split_inclusive("\n\n").collect();
    tables.reverse();
    std::fs::write(&t.config_path, format!("{before}{}\n", tables.concat())).unwrap();
    let t = t.restart().await;
    clock.step(chrono::Duration::minutes(40));
    t.check(ORG_B).await;
    assert_eq!(reminders(&t).await.len(), 1, "the last reminder was 40 minutes ago");
    clock.step(chrono::Duration::minutes(30));
    t.check(ORG_B).await;
    assert_eq!(reminders(&t).await.len(), 2, "an hour after the last one");
}

async fn last_checked(t: &TestApp, org: &str) -> (String, i64) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", t.db_path.display()))
        .await
        .unwrap();
    let row = sqlx::query_as("SELECT last_checked_at, checks FROM org_state WHERE org_id = ?")
        .bind(org)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    row
}

/// Quiet checks (nothing new) are noted in memory and written together by the group commit.
#[tokio::test]
async fn quiet_checks_are_written_together_by_the_group_commit() {
    let t = spawn_app().await;
    t.check(ORG_B).await; // first_seen: written at once
    let (first, checks) = last_checked(&t, ORG_B).await;
    assert_eq!(checks, 1);
    t.app.clock.step(chrono::Duration::seconds(5));
    t.check(ORG_B).await;
    t.check(ORG_B).await;
    assert_eq!(
        last_checked(&t, ORG_B).await,
        (first.clone(), 1),
        "noted, not yet written"
    );
    t.app.checker.flush_quiet().await.unwrap();
    let (after, checks) = last_checked(&t, ORG_B).await;
    assert_eq!(checks, 3, "both quiet checks counted");
    assert!(after > first, "{after} after {first}");
}

/// A group commit larger than one statement (SQLite writes 64 rows per statement): every quiet
/// check is counted, and an org changed by another writer in the middle of the batch still has
/// its change recorded.
#[tokio::test]
async fn a_group_commit_of_many_orgs_writes_them_all() {
    let t = spawn_app_with(Setup {
        extra_orgs: 150,
        ..Setup::default()
    })
    .await;
    let other = app_on(&t).await;
    let ids: Vec<String> = (0..150).map(extra_org).collect();
    for id in &ids {
        t.sim.set(id, Behavior::status("SYNCED"));
        t.check(id).await; // first_seen: written at once
    }
    t.app.clock.step(chrono::Duration::seconds(5));
    let changed = &ids[100];
    t.sim.set(changed, Behavior::status("NOT_SYNCED"));
    other.checker.check_org(org(&other, changed)).await.unwrap();
    t.sim.set(changed, Behavior::status("SYNCED"));
    for id in &ids {
        t.check(id).await; // quiet to this process: noted
    }
    t.app.checker.flush_quiet().await.unwrap();
    for id in ids.iter().filter(|id| *id != changed) {
        assert_eq!(last_checked(&t, id).await.1, 2, "org {id}: both checks counted");
    }
    assert_eq!(
        t.event_kinds(changed).await,
        ["first_seen", "status_changed", "status_changed"],
        "the change back to SYNCED under the batch is recorded"
    );
    other.store.close().await;
}

/// Another writer changes an org's state while this process has a quiet check of it noted: the
/// flush finds the state changed and applies the check through the full path. Nothing is missed.
#[tokio::test]
async fn a_change_under_a_noted_quiet_check_is_applied_at_the_group_commit() {
    let t = spawn_app().await;
    let other = app_on(&t).await;
    let beta = org(&other, ORG_B);
    t.check(ORG_B).await; // SYNCED, first_seen; this process now knows beta is quiet
    t.sim.set(ORG_B, Behavior::status("NOT_SYNCED"));
    other.checker.check_org(beta).await.unwrap(); // the other writer: SYNCED -> NOT_SYNCED
    t.sim.set(ORG_B, Behavior::status("SYNCED"));
    t.check(ORG_B).await; // SYNCED again: looks quiet to this process, noted
    t.app.checker.flush_quiet().await.unwrap();
    assert_eq!(
        t.event_kinds(ORG_B).await,
        ["first_seen", "status_changed", "status_changed"],
        "the change back to SYNCED is recorded"
    );
    let history = t.app.store.history(Some(ORG_B), None).await.unwrap();
    assert_eq!(history.last().unwrap().to_status, "SYNCED");
    other.store.close().await;
}

/// A quiet note taken before another writer recorded a newer change must not be applied after
/// it: that would record a change back to the older status ("fell back to NOT_SYNCED") that never
/// happened.
#[tokio::test]
async fn a_stale_quiet_note_does_not_undo_a_newer_change() {
    let t = spawn_app().await;
    let other = app_on(&t).await;
    let alpha = org(&other, ORG_A);
    t.check(ORG_A).await; // NOT_SYNCED, first_seen
    t.check(ORG_A).await; // quiet: noted in memory only
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    other.checker.check_org(alpha).await.unwrap(); // `linkwatch once` sees the link sync
    t.app.checker.flush_quiet().await.unwrap();
    assert_eq!(t.event_kinds(ORG_A).await, ["first_seen", "status_changed"]);
    let current = t.app.store.current().await.unwrap();
    let alpha_now = current.iter().find(|c| c.org_id == ORG_A).unwrap();
    assert_eq!(alpha_now.status.as_deref(), Some("SYNCED"));
    other.store.close().await;
}

/// Telling a stale check from a new one must not stop recording after the wall clock stepped
/// back: the next check is older than the last one recorded, by the whole step.
#[tokio::test]
async fn after_a_wall_clock_step_back_changes_are_still_recorded() {
    let t = spawn_app().await;
    t.check(ORG_B).await; // SYNCED
    t.app.clock.step(chrono::Duration::hours(-1));
    t.sim.set(ORG_B, Behavior::status("NOT_SYNCED"));
    t.check(ORG_B).await;
    assert_eq!(t.event_kinds(ORG_B).await, ["first_seen", "status_changed"]);
}
