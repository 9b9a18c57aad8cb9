//! `linkwatch copy-history`: a history a real SQLite app made, moved into PostgreSQL and read
//! back through the PostgreSQL store; a second run copies nothing; the refusals.

use std::path::Path;

use linkwatch::config::Database;
use linkwatch::copy::copy_history;
use linkwatch::simulator::Behavior;
use linkwatch::store::{Store, StoredEvent, WriterLock};
use sqlx::Row as _;

use crate::helpers::*;
use crate::pg;

fn db(text: &str) -> Database {
    Database::parse(text, Path::new("")).unwrap()
}

/// A SQLite history with every table in use: first sights, a change, failed checks up to
/// `check_failing`, delivered events and one still pending, a live migration with its changes
/// and lag samples. The app's store is closed.
async fn sqlite_history() -> TestApp {
    let t = spawn_app_with(Setup {
        atlas: one_live_migration(),
        ..Setup::default()
    })
    .await;
    for (status, lag) in [("NEW", None), ("WORKING", Some(900)), ("WORKING", Some(30))] {
        t.sim.set_live_migration(
            MIGRATION_A,
            linkwatch::simulator::LiveMigrationBehavior::state(status, false, lag),
        );
        t.check_live_migration("payments-rs0").await;
    }
    // Atlas announced its version's retirement: said once, in either database.
    t.sim.set_atlas_version(
        "2023-01-01",
        linkwatch::simulator::AtlasVersion::Deprecated {
            deprecation: None,
            sunset: Some("Fri, 01 Jan 2027 00:00:00 GMT".into()),
        },
    );
    t.check_live_migration("payments-rs0").await;
    t.check(ORG_A).await;
    t.check(ORG_B).await;
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    t.check(ORG_A).await;
    t.sim
        .set(ORG_B, Behavior::error(403, "IP_ADDRESS_NOT_ON_ACCESS_LIST", "no"));
    for _ in 0..3 {
        t.check(ORG_B).await;
    }
    assert!(t.dispatch().await >= 4);
    t.sim.set(ORG_A, Behavior::status("NOT_SYNCED"));
    t.check(ORG_A).await;
    // A report slot, sent late (a boolean both databases must agree on), still pending.
    let slot = report_slot();
    let report = linkwatch::report::jobs::build(
        &*t.app,
        linkwatch::report::Slot {
            zone: chrono_tz::Tz::UTC,
            name: "morning",
            at: slot,
            late: true,
        },
    )
    .await
    .unwrap();
    let payload = serde_json::to_string(&report).unwrap();
    let now = t.app.clock.now();
    let channels = ["console".to_owned()];
    let enqueued = t
        .app
        .store
        .enqueue_report("morning", slot, true, now, &payload, &channels);
    assert!(enqueued.await.unwrap().is_some());
    t.app.store.close().await;
    t
}

fn report_slot() -> chrono::DateTime<chrono::Utc> {
    "2026-11-01T09:00:00Z".parse().unwrap()
}

/// The `deliveries` view as text, in event order, from either backend.
async fn deliveries_sqlite(path: &Path) -> Vec<Vec<Option<String>>> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let rows = sqlx::query(
        "SELECT event_id, kind, org_id, org_name, channel, state, CAST(attempts AS TEXT), last_error,
                created_at, sent_at, next_attempt_at
         FROM deliveries ORDER BY event_id, channel",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| (0..11).map(|i| r.get::<Option<String>, _>(i)).collect())
        .collect()
}

async fn deliveries_pg(url: &str) -> Vec<Vec<Option<String>>> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let rows = sqlx::query(
        "SELECT event_id, kind, org_id, org_name, channel, state, attempts::text, last_error,
                linkwatch_ts(created_at), linkwatch_ts(sent_at), linkwatch_ts(next_attempt_at)
         FROM deliveries ORDER BY event_id, channel",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| (0..11).map(|i| r.get::<Option<String>, _>(i)).collect())
        .collect()
}

/// Events compared by everything, the payload as JSON (jsonb orders keys its own way).
fn comparable(events: &[StoredEvent]) -> Vec<(String, String, Option<String>, String, String, serde_json::Value)> {
    events
        .iter()
        .map(|e| {
            (
                e.id.clone(),
                e.org_id.clone(),
                e.org_name.clone(),
                e.kind.clone(),
                e.created_at.clone(),
                serde_json::from_str(&e.payload).unwrap(),
            )
        })
        .collect()
}

async fn row_counts(url: &str) -> Vec<i64> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let mut counts = Vec::new();
    for table in [
        "org_state",
        "reminders",
        "transitions",
        "check_failures",
        "migration_state",
        "migration_transitions",
        "migration_lag",
        "events",
        "outbox",
        "report_runs",
        "api_deprecations",
    ] {
        let sql = format!("SELECT count(*) FROM {table}");
        counts.push(
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .unwrap(),
        );
    }
    pool.close().await;
    counts
}

#[tokio::test]
async fn a_sqlite_history_moves_to_postgres_once_and_carries_on_there() {
    let Some(pg) = pg::database().await else { return };
    let t = sqlite_history().await;
    let sqlite = Store::open(&db(&t.db_path.display().to_string())).await.unwrap();
    let history = sqlite.history(None, None).await.unwrap();
    let current = sqlite.current().await.unwrap();
    let events = sqlite.events(None).await.unwrap();
    let migrations = sqlite.live_migrations().await.unwrap();
    let lag = sqlite
        .live_migration_lag(MIGRATION_A, chrono::DateTime::UNIX_EPOCH)
        .await
        .unwrap();
    assert_eq!(lag.len(), 2);
    let failures = sqlite
        .failures(&linkwatch::config::OrgId::parse(ORG_B).unwrap())
        .await
        .unwrap();
    sqlite.close().await;
    let deliveries = deliveries_sqlite(&t.db_path).await;
    assert!(deliveries.iter().any(|d| d[5].as_deref() == Some("pending")));
    assert_eq!(failures.len(), 3);

    let copied = copy_history(&db(&t.db_path.display().to_string()), &db(&pg.url))
        .await
        .unwrap();
    assert!(copied.adopted_instance);
    assert_eq!(copied.written("events"), events.len() as u64);
    assert_eq!(copied.written("transitions"), history.len() as u64);
    assert_eq!(copied.written("check_failures"), 3);
    assert_eq!(copied.written("outbox"), deliveries.len() as u64);
    assert_eq!(copied.written("org_state"), 2);
    assert_eq!(copied.written("migration_state"), 1);
    assert_eq!(copied.written("migration_transitions"), 2);
    assert_eq!(copied.written("migration_lag"), 2);
    assert_eq!(copied.written("report_runs"), 1);
    assert_eq!(copied.written("api_deprecations"), 1);

    // Read back through the PostgreSQL store: the same history, states and event ids.
    let store = Store::open(&db(&pg.url)).await.unwrap();
    let pg_history: Vec<String> = store
        .history(None, None)
        .await
        .unwrap()
        .iter()
        .map(|c| serde_json::to_string(c).unwrap())
        .collect();
    let sqlite_history: Vec<String> = history.iter().map(|c| serde_json::to_string(c).unwrap()).collect();
    assert_eq!(pg_history, sqlite_history);
    let pg_current: Vec<String> = store
        .current()
        .await
        .unwrap()
        .iter()
        .map(|c| serde_json::to_string(c).unwrap())
        .collect();
    let sqlite_current: Vec<String> = current.iter().map(|c| serde_json::to_string(c).unwrap()).collect();
    assert_eq!(pg_current, sqlite_current);
    assert_eq!(comparable(&store.events(None).await.unwrap()), comparable(&events));
    let json = |rows: &[linkwatch::store::LiveMigrationRow]| -> Vec<String> {
        rows.iter().map(|r| serde_json::to_string(r).unwrap()).collect()
    };
    assert_eq!(json(&store.live_migrations().await.unwrap()), json(&migrations));
    assert_eq!(
        store
            .live_migration_lag(MIGRATION_A, chrono::DateTime::UNIX_EPOCH)
            .await
            .unwrap(),
        lag
    );
    assert_eq!(
        store
            .failures(&linkwatch::config::OrgId::parse(ORG_B).unwrap())
            .await
            .unwrap(),
        failures
    );
    // The report's slot is recorded there too: PostgreSQL will not send it again.
    assert_eq!(store.last_report_slot("morning").await.unwrap(), Some(report_slot()));
    store.close().await;
    assert_eq!(deliveries_pg(&pg.url).await, deliveries);
    // The identity too, so that events detected again on PostgreSQL get the ids they had.
    let identity = "SELECT value FROM meta WHERE key = 'instance'";
    let sqlite_pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", t.db_path.display()))
        .await
        .unwrap();
    let pg_pool = sqlx::PgPool::connect(&pg.url).await.unwrap();
    let (a, b): (String, String) = (
        sqlx::query_scalar(identity).fetch_one(&sqlite_pool).await.unwrap(),
        sqlx::query_scalar(identity).fetch_one(&pg_pool).await.unwrap(),
    );
    assert_eq!((a.as_str(), copied.instance.as_str()), (b.as_str(), b.as_str()));
    let late: bool = sqlx::query_scalar("SELECT late FROM report_runs")
        .fetch_one(&pg_pool)
        .await
        .unwrap();
    assert!(late, "the late slot stays late");
    sqlite_pool.close().await;
    pg_pool.close().await;

    // Again, through the binary, from a sqlite:// URL: nothing is copied twice.
    let counts = row_counts(&pg.url).await;
    let out = linkwatch()
        .args(["copy-history", "--from"])
        .arg(format!("sqlite://{}", t.db_path.display()))
        .args(["--to", &pg.url])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for table in [
        "org_state",
        "transitions",
        "check_failures",
        "migration_state",
        "migration_transitions",
        "migration_lag",
        "events",
        "outbox",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(table))
            .unwrap_or_else(|| panic!("{table} in\n{stdout}"));
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(columns[2], "0", "{table} copied again:\n{stdout}");
        assert_eq!(columns[1], columns[3], "{table}: everything skipped:\n{stdout}");
    }
    assert!(!stdout.contains("taken over"), "{stdout}");
    assert_eq!(row_counts(&pg.url).await, counts);

    // A PostgreSQL daemon carries on: it sends what was pending, and its next event of alpha
    // is numbered after the copied ones (a new id, not one a receiver has seen).
    let after = spawn_app_with(Setup {
        database_url: Some(pg.url.clone()),
        ..Setup::default()
    })
    .await;
    let epoch = pg::lead(&after.app.store).await;
    after.sim.set(ORG_A, Behavior::status("SYNCED"));
    after.check(ORG_A).await;
    let now = after.events(None).await;
    assert_eq!(now.len(), events.len() + 1);
    let new = now.last().unwrap();
    assert_eq!(new.kind, "status_changed");
    assert!(events.iter().all(|e| e.id != new.id), "{} reused", new.id);
    assert_eq!(
        after.dispatch().await,
        3,
        "the pending copied delivery, the pending report and the new one"
    );
    let lines = after.console_lines().join("\n");
    assert!(lines.contains("NOT_SYNCED"), "{lines}");
    assert!(
        lines.contains("linkwatch report: 1 of 2 links SYNCED, checks failing for 1 (late: for 2026-11-01 09:00 UTC)"),
        "{lines}"
    );

    // Retention deletes the sent rows; copying again must not bring back as pending the
    // delivery that was pending in the file and went out from PostgreSQL since.
    after
        .app
        .store
        .prune(chrono::Utc::now() + chrono::Duration::days(1))
        .await
        .unwrap();
    let pg_store = after.app.store.postgres().unwrap();
    pg_store.release_lease("test-leader", epoch).await.unwrap();
    after.app.store.close().await;
    copy_history(&db(&t.db_path.display().to_string()), &db(&pg.url))
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(&pg.url).await.unwrap();
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE state = 'pending'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 0, "a delivered event came back as pending");
    pool.close().await;
}

#[tokio::test]
async fn copy_history_refuses_what_could_lose_or_mix_history() {
    // No source: said, and no empty file left behind.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.db");
    let out = linkwatch()
        .args(["copy-history", "--from"])
        .arg(&missing)
        .args(["--to", "postgres://linkwatch@127.0.0.1:1/linkwatch"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("there is no SQLite database at {}", missing.display())),
        "{stderr}"
    );
    assert!(!missing.exists());

    let Some(pg) = pg::database().await else { return };
    let t = sqlite_history().await;
    let from = db(&t.db_path.display().to_string());

    // A daemon still on the SQLite file.
    let lock = WriterLock::acquire(&t.db_path, "run").unwrap();
    let err = copy_history(&from, &db(&pg.url)).await.unwrap_err().to_string();
    assert!(
        err.contains("linkwatch run (pid") && err.contains("stop it first"),
        "{err}"
    );
    drop(lock);

    // An instance leads the target (its lease is live, though its process is gone).
    let store = Store::open(&db(&pg.url)).await.unwrap();
    pg::lead(&store).await;
    store.close().await;
    let err = copy_history(&from, &db(&pg.url)).await.unwrap_err().to_string();
    assert!(
        err.contains("\"test-leader\" leads") && err.contains("could race it"),
        "{err}"
    );

    // The target has a history of its own.
    let Some(pg) = pg::database().await else { return };
    let other = spawn_app_with(Setup {
        database_url: Some(pg.url.clone()),
        ..Setup::default()
    })
    .await;
    let epoch = pg::lead(&other.app.store).await;
    other.check(ORG_A).await;
    let pg_store = other.app.store.postgres().unwrap().clone();
    pg_store.release_lease("test-leader", epoch).await.unwrap();
    other.app.store.close().await;
    let err = copy_history(&from, &db(&pg.url)).await.unwrap_err().to_string();
    assert!(
        err.contains("already holds a different history") && err.contains("1 events"),
        "{err}"
    );
    // Nothing was written by the refused copies.
    assert_eq!(row_counts(&pg.url).await, [1, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0]);
}

/// The lock file of the SQLite source cannot be opened (here it is a directory, which no user,
/// root included, can open as a file; a read-only directory or a file of another user does the
/// same to a non-root user): copy-history cannot tell whether a daemon uses the file, so it
/// refuses, naming the lock file and why, and writes nothing.
#[tokio::test]
async fn copy_history_refuses_when_it_cannot_tell_whether_a_daemon_runs() {
    let Some(pg) = pg::database().await else { return };
    let t = sqlite_history().await;
    let lock = std::path::PathBuf::from(format!("{}.lock", t.db_path.display()));
    std::fs::create_dir(&lock).unwrap();
    let out = linkwatch()
        .args(["copy-history", "--from"])
        .arg(&t.db_path)
        .args(["--to", &pg.url])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stderr}{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let expected = format!(
        "cannot tell whether a daemon uses {}: cannot open the lock file {}: Is a directory",
        t.db_path.display(),
        lock.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("copy-history refuses"), "{stderr}");
    // Nothing reached the target: it was not even migrated.
    let pool = sqlx::PgPool::connect(&pg.url).await.unwrap();
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(tables, 0, "the refused copy touched the target");
    pool.close().await;

    // Once the lock file can be opened, the same copy goes through.
    std::fs::remove_dir(&lock).unwrap();
    copy_history(&db(&t.db_path.display().to_string()), &db(&pg.url))
        .await
        .expect("the copy, once the lock can be taken");
}

/// A follower is found by the lease, not by its connections' `application_name`: an instance
/// named otherwise that asked for the lease while another led is still there when the leader
/// has stopped (it would take the lease right after the copy, with the database identity it
/// read before), so copy-history refuses and names it; once it has stopped too, the copy goes.
#[tokio::test]
async fn copy_history_finds_a_follower_whatever_its_application_name() {
    let Some(pg) = pg::database().await else { return };
    let t = sqlite_history().await;
    let from = db(&t.db_path.display().to_string());
    let named = |name: &str| db(&format!("{}?application_name={name}", pg.url));

    let a = Store::open(&named("payments-watcher-a")).await.unwrap();
    let ttl = std::time::Duration::from_secs(600);
    let pa = a.postgres().unwrap();
    let epoch = pa.acquire_lease("host-a:1:0001", ttl).await.unwrap().expect("a leads");
    // b runs the lease loop of `linkwatch run`, and follows.
    let b = Store::open(&named("payments-watcher-b")).await.unwrap();
    let stop_b = tokio_util::sync::CancellationToken::new();
    let (leadership, b_task) = linkwatch::leader::spawn(
        b.postgres().unwrap().clone(),
        linkwatch::leader::LeaseTiming { ttl },
        stop_b.clone(),
        "watcher-b",
    );
    let role = linkwatch::leader::settled(leadership.role, std::time::Duration::from_secs(15)).await;
    assert!(!role.leads() && role.leader.is_some(), "b follows: {role:?}");

    // While a leads, the lease says so.
    let err = copy_history(&from, &db(&pg.url)).await.unwrap_err().to_string();
    assert!(err.contains("\"host-a:1:0001\" leads"), "{err}");

    // a stops cleanly; b has not taken the lease yet (it asks every 200 s here).
    pa.release_lease("host-a:1:0001", epoch).await.unwrap();
    a.close().await;
    let err = copy_history(&from, &db(&pg.url)).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("\"{}\"", leadership.holder)) && err.contains("Stop every instance on this database"),
        "{err}"
    );
    assert_eq!(row_counts(&pg.url).await, [0; 11], "the refused copy wrote");

    // b stops cleanly too: nothing runs, and the copy goes through.
    stop_b.cancel();
    b_task.await.unwrap();
    b.close().await;
    let copied = copy_history(&from, &db(&pg.url))
        .await
        .expect("the copy once b has stopped");
    assert!(copied.written("events") > 0);
}
