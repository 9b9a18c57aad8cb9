//! The daemon loop: scheduler, checks and delivery together, as `linkwatch run` runs them.

use std::time::Duration;

use linkwatch::simulator::Behavior;

use crate::helpers::*;

#[tokio::test]
async fn run_reports_a_status_change_within_an_interval_and_stops_cleanly() {
    let t = spawn_app().await;
    let daemon = t.run();

    wait_until(
        Duration::from_secs(10),
        "first_seen for both orgs on the console",
        || async { t.console_lines().iter().filter(|l| l.contains("first_seen")).count() == 2 },
    )
    .await;
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    wait_until(Duration::from_secs(10), "the SYNCED message", || async {
        t.console_lines()
            .iter()
            .any(|l| l.contains("alpha: migration link SYNCED (was NOT_SYNCED for"))
    })
    .await;

    daemon.stop(Duration::from_secs(10)).await;
    // Every event reached the console exactly once.
    let lines = t.console_lines();
    assert_eq!(
        lines.iter().filter(|l| l.contains("status_changed")).count(),
        1,
        "{lines:#?}"
    );
    assert_eq!(lines.len(), 3, "{lines:#?}");
}

#[tokio::test]
async fn a_hung_org_does_not_stall_the_others() {
    let t = spawn_app_with(Setup {
        timeout: "8s",
        ..Setup::default()
    })
    .await;
    t.sim.set(ORG_A, Behavior::Hang);
    let daemon = t.run();
    // beta is checked every second while alpha's request hangs.
    wait_until(Duration::from_secs(10), "three checks of beta", || async {
        t.sim.requests_for(ORG_B) >= 3
    })
    .await;
    assert_eq!(t.sim.requests_for(ORG_A), 1, "a hung check is never doubled");
    // Shutdown waits for alpha's check to time out; it is recorded as a failure, not lost.
    daemon.stop(Duration::from_secs(20)).await;
    // run() closed its store; read the file as a user would.
    let store = linkwatch::store::Store::open(&linkwatch::config::Database::Sqlite(t.db_path.clone()))
        .await
        .unwrap();
    let current = store.current().await.unwrap();
    let alpha = current.iter().find(|c| c.org_id == ORG_A).unwrap();
    assert!(
        alpha
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("did not answer in time"),
        "{alpha:?}"
    );
}

/// Every check runs as a task holding this future, 166 a second at 10,000 orgs a minute: its size
/// is memory (BENCHMARKS.md, "Session 11": an unboxed OAuth exchange made it 1,576 bytes in a
/// debug build, and the daemon 1 MB larger at 10,000 orgs; boxed, 1,056). The bound leaves room
/// for a compiler's changes, not for another large state awaited inline.
#[tokio::test]
async fn a_scheduled_checks_future_stays_small() {
    let t = spawn_app().await;
    let check = t.app.checker.scheduled(0);
    let size = std::mem::size_of_val(&check);
    assert!(
        size <= 1280,
        "a scheduled check's future is {size} bytes; box what made it grow"
    );
}
