//! Time: a wall-clock step (NTP, a VM resumed from a snapshot, `date -s`) changes what is
//! recorded, never whether checks run or what `/healthz` says.

use std::time::Duration;

use linkwatch::simulator::Behavior;

use crate::helpers::*;

#[tokio::test]
async fn a_wall_clock_step_back_stops_no_check() {
    let (t, port) = spawn_app_with_http().await;
    let daemon = t.run();
    wait_until(Duration::from_secs(10), "both orgs checked twice", || async {
        t.sim.requests_for(ORG_A) >= 2 && t.sim.requests_for(ORG_B) >= 2
    })
    .await;
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let http = reqwest::Client::new();
    assert_eq!(http.get(&healthz).send().await.unwrap().status(), 200);

    // NTP steps the clock back by an hour.
    let before_step = t.app.clock.now();
    t.app.clock.step(chrono::Duration::hours(-1));
    let (a, b) = (t.sim.requests_for(ORG_A), t.sim.requests_for(ORG_B));
    // Both orgs are polled every second: checks go on as before.
    wait_until(
        Duration::from_secs(10),
        "three more checks of each org after the step",
        || async { t.sim.requests_for(ORG_A) >= a + 3 && t.sim.requests_for(ORG_B) >= b + 3 },
    )
    .await;
    assert_eq!(http.get(&healthz).send().await.unwrap().status(), 200);

    // What is recorded follows the wall clock, stepped.
    let current = t.app.store.current().await.unwrap();
    for org in &current {
        let checked: chrono::DateTime<chrono::Utc> = org.last_checked_at.parse().unwrap();
        assert!(
            checked < before_step - chrono::Duration::minutes(50),
            "{} last checked at {checked}, before the step it was {before_step}",
            org.org_name
        );
    }
    daemon.stop(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn retention_counts_its_days_on_the_wall_clock() {
    let t = spawn_app_with(Setup {
        top: "retention = \"1d\"".into(),
        ..Setup::default()
    })
    .await;
    t.sim
        .set(ORG_A, Behavior::error(500, "UNEXPECTED_ERROR", "down for a moment"));
    t.check(ORG_A).await;
    t.sim.set(ORG_A, Behavior::status("NOT_SYNCED"));
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", t.db_path.display()))
        .await
        .unwrap();
    let failures = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM check_failures")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(failures().await, 1);

    // Two days pass by the wall clock (a VM resumed from a snapshot, say): at start the daemon
    // prunes the failure, which is now older than the retention.
    t.app.clock.step(chrono::Duration::days(2));
    let daemon = t.run();
    wait_until(Duration::from_secs(10), "the old failure pruned", || async {
        failures().await == 0
    })
    .await;
    pool.close().await;
    daemon.stop(Duration::from_secs(10)).await;
}
