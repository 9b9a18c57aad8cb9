//! Atlas live migrations through the simulator (real Digest, the versioned Accept header): every
//! event, the deadline arithmetic on a stepped wall clock, the views, a restart, the link-break
//! nudge of the running daemon, and the same journey on PostgreSQL.

use std::time::Duration;

use linkwatch::simulator::{Behavior, LiveMigrationBehavior};

use crate::helpers::*;

const HOUR: i64 = 3600;

/// [`one_live_migration`] with these extra `[atlas]` lines.
fn with_atlas(lines: &str) -> Setup {
    let (_, tables) = one_live_migration().unwrap();
    Setup {
        atlas: Some((lines.to_owned(), tables)),
        ..Setup::default()
    }
}

fn working(ready: bool, lag: i64) -> LiveMigrationBehavior {
    LiveMigrationBehavior::state("WORKING", ready, Some(lag))
}

/// Checks the migration once; the kinds of the events it caused.
async fn kinds_of(t: &TestApp, name: &str) -> Vec<String> {
    t.check_live_migration(name)
        .await
        .events
        .iter()
        .map(|e| e.kind().to_owned())
        .collect()
}

/// A spawned app with `[atlas]` whose org alpha has been checked (SYNCED), so messages name it.
async fn spawn_with_alpha(setup: Setup) -> TestApp {
    let t = spawn_app_with(setup).await;
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    t.check(ORG_A).await;
    t
}

#[tokio::test]
async fn the_path_to_cutover_is_told_with_estimated_deadlines() {
    let t = spawn_with_alpha(with_atlas("")).await;
    t.sim
        .set_live_migration(MIGRATION_A, LiveMigrationBehavior::state("NEW", false, None));
    assert_eq!(kinds_of(&t, "payments-rs0").await, ["migration_status_changed"]);
    t.sim.set_live_migration(MIGRATION_A, working(false, 900));
    assert_eq!(kinds_of(&t, "payments-rs0").await, ["migration_status_changed"]);
    t.sim.set_live_migration(MIGRATION_A, working(true, 20));
    assert_eq!(kinds_of(&t, "payments-rs0").await, ["ready_for_cutover"]);
    let ready_at = t.app.clock.now();

    // The wall clock moves on; each warning comes once, at 24 h, 6 h and 1 h left.
    let step = |h: i64| t.app.clock.step(chrono::Duration::seconds(h));
    step(95 * HOUR);
    assert!(kinds_of(&t, "payments-rs0").await.is_empty());
    step(HOUR + 60);
    assert_eq!(kinds_of(&t, "payments-rs0").await, ["cutover_deadline"]);
    assert!(kinds_of(&t, "payments-rs0").await.is_empty());
    step(18 * HOUR);
    assert_eq!(kinds_of(&t, "payments-rs0").await, ["cutover_deadline"]);
    step(5 * HOUR);
    assert_eq!(kinds_of(&t, "payments-rs0").await, ["cutover_deadline"]);
    t.sim
        .set_live_migration(MIGRATION_A, LiveMigrationBehavior::state("COMPLETE", false, None));
    assert_eq!(kinds_of(&t, "payments-rs0").await, ["migration_status_changed"]);

    // What people read: the console channel got every message, in order, with the caveat.
    t.dispatch().await;
    let lines = t.console_lines();
    let text = lines.join("\n");
    assert!(
        text.contains("payments-rs0 (org alpha): ready for cutover (lag 20s)"),
        "{text}"
    );
    let warnings: Vec<&String> = lines.iter().filter(|l| l.contains("left to cut over")).collect();
    assert_eq!(warnings.len(), 3, "{text}");
    for (warning, left) in warnings.iter().zip(["about 23h 5", "about 5h 5", "about 5"]) {
        assert!(warning.contains(left), "{warning}");
    }
    assert!(text.contains("live migration COMPLETE (was WORKING"), "{text}");
    let events = t.events(Some(ORG_A)).await;
    let ready = events.iter().find(|e| e.kind == "ready_for_cutover").unwrap();
    let message = linkwatch::message::render(ready, &Default::default());
    assert!(
        message.advice.as_deref().unwrap().contains("not visible to linkwatch"),
        "{message:?}"
    );
    let deadline: serde_json::Value = serde_json::from_str(&ready.payload).unwrap();
    let deadline = chrono::DateTime::parse_from_rfc3339(deadline["deadline"].as_str().unwrap()).unwrap();
    assert_eq!(
        deadline.timestamp(),
        (ready_at + chrono::Duration::hours(120)).timestamp()
    );

    // The views: one row per status change, the row's current state.
    let rows = t.app.store.live_migrations().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status.as_deref(), Some("COMPLETE"));
    assert_eq!(rows[0].org_name.as_deref(), Some("alpha"));
    assert_eq!(rows[0].estimated_deadline, None, "no window after COMPLETE");
    let changes = readme_rows(&t, "SELECT to_status FROM migration_changes ORDER BY changed_at").await;
    assert_eq!(changes, ["NEW", "WORKING", "COMPLETE"]);
}

/// The rows of a one-column query on the test's SQLite database.
async fn readme_rows(t: &TestApp, sql: &str) -> Vec<String> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", t.db_path.display()))
        .await
        .unwrap();
    let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows.into_iter().map(|(s,)| s).collect()
}

#[tokio::test]
async fn readiness_lost_lag_alerts_and_a_failed_migration_are_told() {
    // Every check must answer for the lag series below to be whole: a machine under load must not
    // turn one into a timeout (seen once in CI with the default 2 s).
    let t = spawn_with_alpha(Setup {
        timeout: "10s",
        ..with_atlas("")
    })
    .await;
    let mut all = Vec::new();
    for (ready, lag) in [
        (true, 30),
        (false, 700),
        (false, 700),
        (false, 700),
        (false, 500),
        (false, 400),
        (false, 300),
        (false, 200),
    ] {
        t.sim.set_live_migration(MIGRATION_A, working(ready, lag));
        all.extend(kinds_of(&t, "payments-rs0").await);
    }
    t.sim
        .set_live_migration(MIGRATION_A, LiveMigrationBehavior::state("FAILED", false, None));
    all.extend(kinds_of(&t, "payments-rs0").await);
    assert_eq!(
        all,
        [
            "migration_status_changed",
            "ready_for_cutover",
            "ready_for_cutover_lost",
            "lag_high",
            "lag_recovered",
            "migration_status_changed"
        ]
    );
    t.dispatch().await;
    let text = t.console_lines().join("\n");
    assert!(
        text.contains("URGENT: payments-rs0 (org alpha): live migration FAILED"),
        "{text}"
    );
    assert!(
        text.contains("replication lag is 11m 40s (above 10m for 3 checks)"),
        "{text}"
    );

    // The lag series is compact: a sample per bucket moved, not per check.
    let lags = t
        .app
        .store
        .live_migration_lag(MIGRATION_A, chrono::DateTime::UNIX_EPOCH)
        .await
        .unwrap();
    let values: Vec<Option<i64>> = lags.iter().map(|(_, l)| *l).collect();
    assert_eq!(
        values,
        [Some(30), Some(700), Some(500), Some(400), Some(300), Some(200), None]
    );
}

#[tokio::test]
async fn refusals_are_classified_failures_in_plain_words_and_recover() {
    let t = spawn_app_with(with_atlas("")).await;
    // No such migration in the simulator: Atlas's 404.
    for _ in 0..2 {
        assert!(kinds_of(&t, "payments-rs0").await.is_empty());
    }
    assert_eq!(kinds_of(&t, "payments-rs0").await, ["migration_check_failing"]);
    let row = &t.app.store.live_migrations().await.unwrap()[0];
    assert!(
        row.last_error.as_deref().unwrap().contains("check group_id and id"),
        "{row:?}"
    );
    t.sim.set_live_migration(
        MIGRATION_A,
        LiveMigrationBehavior::Error {
            http: 410,
            error_code: Some("VERSION_RETIRED".into()),
            detail: "This version is retired.".into(),
        },
    );
    let report = t.check_live_migration("payments-rs0").await;
    let failure = report.outcome.unwrap_err();
    assert!(
        failure.explain_atlas().contains("retired") && failure.explain_atlas().contains("api_version"),
        "{}",
        failure.explain_atlas()
    );
    t.sim.set_live_migration(MIGRATION_A, working(false, 40));
    assert_eq!(
        kinds_of(&t, "payments-rs0").await,
        ["migration_check_recovered", "migration_status_changed"]
    );
    assert!(
        t.sim.live_migration_requests() >= 5,
        "every check reached Atlas with its Accept header"
    );
}

#[tokio::test]
async fn a_restart_repeats_nothing() {
    let t = spawn_app_with(with_atlas("")).await;
    t.sim.set_live_migration(MIGRATION_A, working(true, 20));
    assert_eq!(
        kinds_of(&t, "payments-rs0").await,
        ["migration_status_changed", "ready_for_cutover"]
    );
    let t = t.restart().await;
    assert!(kinds_of(&t, "payments-rs0").await.is_empty());
    let ids: std::collections::HashSet<String> = t.events(None).await.into_iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 2);
}

#[tokio::test]
async fn a_link_break_during_a_migration_is_urgent_and_told_at_once() {
    // Migrations are checked every 10 minutes here: only the daemon's nudge, when the link
    // leaves SYNCED, can check it within the test's patience.
    let t = spawn_app_with(with_atlas("every = \"10m\"")).await;
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    t.sim.set_live_migration(MIGRATION_A, working(false, 30));
    let running = t.run();
    wait_until(Duration::from_secs(20), "the first checks", || async {
        let kinds = t.event_kinds(ORG_A).await;
        kinds.contains(&"first_seen".to_owned()) && kinds.contains(&"migration_status_changed".to_owned())
    })
    .await;
    t.sim.set(ORG_A, Behavior::status("NOT_SYNCED"));
    wait_until(Duration::from_secs(20), "link_broken_during_migration", || async {
        t.event_kinds(ORG_A)
            .await
            .contains(&"link_broken_during_migration".to_owned())
    })
    .await;
    wait_until(Duration::from_secs(20), "the console message", || async {
        t.console_lines().iter().any(|l| {
            l.contains("URGENT: payments-rs0 (org alpha): the org's migration link is NOT_SYNCED while the live migration is WORKING")
        })
    })
    .await;
    let kinds = t.event_kinds(ORG_A).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "link_broken_during_migration").count(),
        1,
        "{kinds:?}"
    );
    running.stop(Duration::from_secs(15)).await;
}

#[tokio::test]
async fn the_journey_on_postgres() {
    let Some(db) = crate::pg::database().await else {
        return;
    };
    let t = spawn_app_with(Setup {
        database_url: Some(db.url.clone()),
        ..with_atlas("")
    })
    .await;
    crate::pg::lead(&t.app.store).await;
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    t.check(ORG_A).await;
    t.sim.set_live_migration(MIGRATION_A, working(true, 20));
    assert_eq!(
        kinds_of(&t, "payments-rs0").await,
        ["migration_status_changed", "ready_for_cutover"]
    );
    t.sim.set(ORG_A, Behavior::status("NOT_SYNCED"));
    t.check(ORG_A).await;
    t.sim.set_live_migration(MIGRATION_A, working(true, 700));
    assert_eq!(kinds_of(&t, "payments-rs0").await, ["link_broken_during_migration"]);
    t.app.clock.step(chrono::Duration::hours(119));
    assert_eq!(kinds_of(&t, "payments-rs0").await, ["cutover_deadline"]);
    let row = &t.app.store.live_migrations().await.unwrap()[0];
    assert_eq!(row.org_name.as_deref(), Some("alpha"));
    assert_eq!(row.lag_s, Some(700));
    assert!(row.ready_for_cutover);
    assert!(row.estimated_deadline.as_deref().unwrap().ends_with('Z'), "{row:?}");
    let lags = t
        .app
        .store
        .live_migration_lag(MIGRATION_A, chrono::DateTime::UNIX_EPOCH)
        .await
        .unwrap();
    assert_eq!(lags.iter().map(|(_, l)| *l).collect::<Vec<_>>(), [Some(20), Some(700)]);
}

#[tokio::test]
async fn once_and_check_show_the_migrations() {
    let t = spawn_app_with(with_atlas("")).await;
    t.sim.set_live_migration(MIGRATION_A, working(true, 75));
    let run = |command: &'static str| {
        let config = t.config_path.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_linkwatch"))
                .arg(command)
                .arg("--config")
                .arg(&config)
                .env_remove("RUST_LOG")
                .output()
                .await
                .unwrap();
            (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
        }
    };
    let (code, stdout) = run("check").await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("cutover window 5days"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("payments-rs0") && l.contains("alpha") && l.contains(MIGRATION_A)),
        "{stdout}"
    );
    let (code, stdout) = run("once").await;
    assert_eq!(code, Some(0), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("payments-rs0"))
        .unwrap_or_else(|| panic!("{stdout}"));
    for cell in [
        "WORKING",
        "true",
        "1m 15s",
        "migration_status_changed,ready_for_cutover",
    ] {
        assert!(row.contains(cell), "{cell} in {row}");
    }
}

/// On PostgreSQL a migration's check takes its turn on the org's row, as the link's checks do,
/// so the org's events are numbered in the order they commit (deliveries go out in that order).
#[tokio::test]
async fn a_migration_check_waits_for_a_link_check_of_its_org_on_postgres() {
    use sqlx::Connection as _;
    let Some(db) = crate::pg::database().await else {
        return;
    };
    let t = spawn_app_with(Setup {
        database_url: Some(db.url.clone()),
        ..with_atlas("")
    })
    .await;
    crate::pg::lead(&t.app.store).await;
    t.check(ORG_A).await;
    t.sim.set_live_migration(MIGRATION_A, working(true, 20));
    // Another writer (a link check of alpha) holds alpha's row.
    let mut other = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM org_state WHERE org_id = $1 FOR UPDATE")
        .bind(ORG_A)
        .execute(&mut *tx)
        .await
        .unwrap();
    let app = t.app.clone();
    let check = tokio::spawn(async move {
        let m = &app.config.migrations[0];
        linkwatch::live_migration::check_live_migration(&*app, m).await.unwrap()
    });
    let watcher = sqlx::PgPool::connect(&db.url).await.unwrap();
    wait_until(
        Duration::from_secs(20),
        "the migration check to wait for alpha's row",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%org_state%'",
            )
            .fetch_one(&watcher)
            .await
            .unwrap();
            waiting == 1
        },
    )
    .await;
    assert!(!check.is_finished());
    tx.commit().await.unwrap();
    let report = check.await.unwrap();
    assert_eq!(
        report.events.iter().map(|e| e.kind()).collect::<Vec<_>>(),
        ["migration_status_changed", "ready_for_cutover"]
    );
    watcher.close().await;
}

/// `linkwatch once` beside the daemon: an answer that waited behind a newer one is dropped, so
/// an older reading never undoes a newer one (no COMPLETE -> WORKING -> COMPLETE).
#[tokio::test]
async fn an_older_answer_recorded_late_is_dropped() {
    let t = spawn_with_alpha(with_atlas("")).await;
    t.sim
        .set_live_migration(MIGRATION_A, LiveMigrationBehavior::state("COMPLETE", false, None));
    assert_eq!(kinds_of(&t, "payments-rs0").await, ["migration_status_changed"]);
    let m = &t.app.config.migrations[0];
    let outcome = Ok(linkwatch::client::LiveMigrationReading {
        ready_for_cutover: Some(true),
        lag_s: Some(20),
        ..linkwatch::client::LiveMigrationReading::of_status("WORKING")
    });
    let check = linkwatch::store::LiveMigrationCheck {
        migration: m,
        at: t.app.clock.now() - chrono::Duration::seconds(40),
        outcome: &outcome,
        answered: tokio::time::Instant::now() - Duration::from_secs(45),
    };
    let applied = t
        .app
        .store
        .apply_live_migration(&check, |_, _| linkwatch::store::LiveMigrationDecision::default())
        .await
        .unwrap();
    assert!(applied.is_none(), "the older answer was recorded: {applied:?}");
    assert_eq!(
        t.app.store.live_migrations().await.unwrap()[0].status.as_deref(),
        Some("COMPLETE")
    );
}

#[tokio::test]
async fn an_expired_migration_is_urgent_and_ends_its_window() {
    let t = spawn_with_alpha(with_atlas("")).await;
    t.sim.set_live_migration(MIGRATION_A, working(true, 20));
    assert_eq!(
        kinds_of(&t, "payments-rs0").await,
        ["migration_status_changed", "ready_for_cutover"]
    );
    assert!(
        t.app.store.live_migrations().await.unwrap()[0]
            .estimated_deadline
            .is_some()
    );
    t.app.clock.step(chrono::Duration::hours(121));
    t.sim
        .set_live_migration(MIGRATION_A, LiveMigrationBehavior::state("EXPIRED", false, None));
    assert_eq!(kinds_of(&t, "payments-rs0").await, ["migration_status_changed"]);
    assert_eq!(t.app.store.live_migrations().await.unwrap()[0].estimated_deadline, None);
    t.dispatch().await;
    let text = t.console_lines().join("\n");
    assert!(
        text.contains("URGENT: payments-rs0 (org alpha): live migration EXPIRED (was WORKING for 5d 1h)"),
        "{text}"
    );
}

/// `/metrics` carries each configured migration's status, readiness, lag and estimated time
/// left, for alerting where Atlas disables its own host alerts.
#[tokio::test]
async fn metrics_show_the_migrations() {
    let port = free_port();
    let t = spawn_with_alpha(Setup {
        top: http_listen(port),
        ..with_atlas("")
    })
    .await;
    t.sim.set_live_migration(MIGRATION_A, working(true, 42));
    t.check_live_migration("payments-rs0").await;
    t.app.clock.step(chrono::Duration::hours(20));
    let running = t.run();
    let base = format!("http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(20), "the endpoint", || async {
        reqwest::get(format!("{base}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    running.stop(Duration::from_secs(15)).await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("migration") == Some("payments-rs0"))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(value("linkwatch_migration_status"), Some(1.0), "{text}");
    assert_eq!(value("linkwatch_migration_ready_for_cutover"), Some(1.0));
    assert_eq!(value("linkwatch_migration_lag_seconds"), Some(42.0));
    let left = value("linkwatch_migration_cutover_left_seconds").unwrap();
    assert!((99.0 * 3600.0..=100.0 * 3600.0).contains(&left), "{left}");
}
