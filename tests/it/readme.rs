//! The README's SQL must run unchanged against a real database.

use linkwatch::simulator::Behavior;
use sqlx::Row;

use crate::helpers::*;

fn sql_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim()) {
            (None, "```sql") => current = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(b.clone());
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

#[tokio::test]
async fn the_readme_queries_run_on_a_real_database() {
    let t = spawn_app().await;
    t.check(ORG_A).await;
    t.check(ORG_B).await;
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    t.check(ORG_A).await;
    t.sim.set(ORG_A, Behavior::status("NOT_SYNCED"));
    t.check(ORG_A).await;
    t.sim
        .set(ORG_B, Behavior::error(403, "IP_ADDRESS_NOT_ON_ACCESS_LIST", "no"));
    t.check(ORG_B).await;

    let blocks = sql_blocks();
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
            let out = std::process::Command::new("sqlite3")
                .arg(&t.db_path)
                .arg(sql)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stderr.is_empty(),
                "sqlite3 shell: {stderr}\n{sql}"
            );
            assert!(!out.stdout.is_empty(), "sqlite3 shell printed nothing for\n{sql}");
        }
    }
}
