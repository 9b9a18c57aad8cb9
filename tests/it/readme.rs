//! The README's SQL must run unchanged against a real database: on SQLite every `sql` block but
//! those whose first line is `-- PostgreSQL`, on PostgreSQL every one but those whose first line
//! is `-- SQLite` (a query that needs a dialect's date functions comes in both forms, one after
//! the other).

use chrono::{DateTime, Utc};
use linkwatch::simulator::Behavior;
use sqlx::Row;

use crate::helpers::*;
use crate::pg;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Both,
    Sqlite,
    Postgres,
}

/// Every `sql` block of the README, with the dialect its first line names.
fn all_sql_blocks() -> Vec<(Dialect, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim()) {
            (None, "```sql") => current = Some(String::new()),
            (Some(b), "```") => {
                let dialect = match b.lines().next().map(str::trim) {
                    Some("-- SQLite") => Dialect::Sqlite,
                    Some("-- PostgreSQL") => Dialect::Postgres,
                    _ => Dialect::Both,
                };
                blocks.push((dialect, b.clone()));
                current = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The blocks meant to run on `dialect`'s database.
fn sql_blocks(dialect: Dialect) -> Vec<String> {
    all_sql_blocks()
        .into_iter()
        .filter(|(d, _)| *d == Dialect::Both || *d == dialect)
        .map(|(_, sql)| sql)
        .collect()
}

/// A history every query finds something in: changes, a first SYNCED, failed checks, a live
/// migration ready for cutover.
async fn fill(t: &TestApp) {
    t.sim.set_live_migration(
        MIGRATION_A,
        linkwatch::simulator::LiveMigrationBehavior::state("WORKING", true, Some(20)),
    );
    t.check_live_migration("payments-rs0").await;
    t.check(ORG_A).await;
    t.check(ORG_B).await;
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    t.check(ORG_A).await;
    t.sim.set(ORG_A, Behavior::status("NOT_SYNCED"));
    t.check(ORG_A).await;
    t.sim
        .set(ORG_B, Behavior::error(403, "IP_ADDRESS_NOT_ON_ACCESS_LIST", "no"));
    t.check(ORG_B).await;
    // A report slot sent, for `report_runs`.
    let now = t.app.clock.now();
    let slot = linkwatch::report::Slot {
        zone: chrono_tz::Tz::UTC,
        name: "morning",
        at: now,
        late: false,
    };
    let report = linkwatch::report::jobs::build(&*t.app, slot).await.unwrap();
    t.app
        .store
        .enqueue_report(
            "morning",
            now,
            false,
            now,
            &serde_json::to_string(&report).unwrap(),
            &["console".into()],
        )
        .await
        .unwrap()
        .expect("a new slot");
}

#[tokio::test]
async fn the_readme_queries_run_on_a_real_database() {
    let t = spawn_app_with(Setup {
        atlas: one_live_migration(),
        ..Setup::default()
    })
    .await;
    fill(&t).await;

    let blocks = sql_blocks(Dialect::Sqlite);
    assert!(blocks.len() >= 3, "the README has {} sql blocks", blocks.len());
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", t.db_path.display()))
        .await
        .unwrap();
    let mut results = Vec::new();
    for sql in &blocks {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("README query failed: {e}\n{sql}"));
        assert!(
            !rows.is_empty(),
            "README query returned nothing on a database with history:\n{sql}"
        );
        results.push(rows);
    }
    // The time-to-sync query found alpha's first SYNCED.
    let time_to_sync = blocks
        .iter()
        .position(|b| b.contains("hours_to_sync"))
        .expect("the time-to-sync query");
    let alpha = results[time_to_sync]
        .iter()
        .find(|r| r.get::<String, _>("org_name") == "alpha")
        .expect("alpha in the time-to-sync query");
    assert!(alpha.get::<Option<String>, _>("first_synced").is_some());
    pool.close().await;

    // The same text in the sqlite3 shell, as a user would paste it.
    if let Ok(out) = std::process::Command::new("sqlite3").arg("-version").output()
        && out.status.success()
    {
        for sql in &blocks {
            // On standard input, as pasted: a block starting `-- SQLite` is no option there.
            let mut shell = std::process::Command::new("sqlite3")
                .arg(&t.db_path)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut shell.stdin.take().unwrap(), sql.as_bytes()).unwrap();
            let out = shell.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stderr.is_empty(),
                "sqlite3 shell: {stderr}\n{sql}"
            );
            assert!(!out.stdout.is_empty(), "sqlite3 shell printed nothing for\n{sql}");
        }
    } else {
        crate::skip::skip(
            "LINKWATCH_REQUIRE_SHELLS",
            "the sqlite3 shell",
            "the README's SQL was run through sqlx only; apt-get install sqlite3 to run it as pasted",
        );
    }
}

#[tokio::test]
async fn the_readme_queries_run_on_postgres_too() {
    let all = all_sql_blocks();
    let count = |d| all.iter().filter(|(x, _)| *x == d).count();
    assert!(count(Dialect::Postgres) > 0, "the README shows its PostgreSQL queries");
    assert_eq!(
        count(Dialect::Sqlite),
        count(Dialect::Postgres),
        "every `-- SQLite` query has its `-- PostgreSQL` form"
    );
    let Some(db) = pg::database().await else { return };
    let t = spawn_app_with(Setup {
        atlas: one_live_migration(),
        database_url: Some(db.url.clone()),
        ..Setup::default()
    })
    .await;
    pg::lead(&t.app.store).await;
    fill(&t).await;

    let blocks = sql_blocks(Dialect::Postgres);
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut results = Vec::new();
    for sql in &blocks {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("README query failed on PostgreSQL: {e}\n{sql}"));
        assert!(
            !rows.is_empty(),
            "README query returned nothing on a PostgreSQL database with history:\n{sql}"
        );
        results.push(rows);
    }
    let time_to_sync = blocks
        .iter()
        .position(|b| b.contains("hours_to_sync"))
        .expect("the time-to-sync query");
    let alpha = results[time_to_sync]
        .iter()
        .find(|r| r.get::<String, _>("org_name") == "alpha")
        .expect("alpha in the time-to-sync query");
    assert!(alpha.get::<Option<DateTime<Utc>>, _>("first_synced").is_some());
    // Ordered with the orgs that never synced last, as on SQLite.
    let first = results[time_to_sync][0].try_get_raw("hours_to_sync").unwrap();
    assert!(!sqlx::ValueRef::is_null(&first));
    pool.close().await;
    t.app.store.close().await;

    // The same text in psql, as a user would paste it.
    if let Ok(out) = std::process::Command::new("psql").arg("--version").output()
        && out.status.success()
    {
        for sql in &blocks {
            let out = std::process::Command::new("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &db.url, "-c", sql])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && stderr.is_empty(), "psql: {stderr}\n{sql}");
            assert!(!out.stdout.is_empty(), "psql printed nothing for\n{sql}");
        }
    } else {
        crate::skip::skip(
            "LINKWATCH_REQUIRE_SHELLS",
            "psql",
            "the README's SQL was run through sqlx only; apt-get install postgresql-client to run it as pasted",
        );
    }
}
