//! The fault suite: outages, slow or dead receivers, a reader holding the database, a full
//! disk, and kill -9 in the middle of a load. Each test is bounded by its deadlines.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use linkwatch::simulator::Behavior;

use crate::helpers::*;
use crate::receiver::{Receiver, Reply};
use crate::smtp::SmtpServer;

async fn consecutive_failures(t: &TestApp, org: &str) -> i64 {
    let current = t.app.store.current().await.unwrap();
    current
        .iter()
        .find(|c| c.org_id == org)
        .map_or(0, |c| c.consecutive_failures)
}

#[tokio::test]
async fn an_outage_of_every_kind_is_one_failing_and_one_recovered() {
    let t = spawn_app_with(Setup {
        timeout: "500ms",
        ..Setup::default()
    })
    .await;
    let daemon = t.run();
    wait_until(Duration::from_secs(10), "alpha seen", || async {
        !t.event_kinds(ORG_A).await.is_empty()
    })
    .await;

    let garbage = Behavior::Raw {
        http: 200,
        content_type: "text/html".into(),
        body: "<html>proxy error</html>".into(),
    };
    for behavior in [
        Behavior::error(500, "UNEXPECTED_ERROR", "boom"),
        Behavior::Hang,
        garbage,
    ] {
        t.sim.set(ORG_A, behavior.clone());
        let before = consecutive_failures(&t, ORG_A).await;
        wait_until(
            Duration::from_secs(15),
            &format!("two more failures with {behavior:?}"),
            || async { consecutive_failures(&t, ORG_A).await >= before + 2 },
        )
        .await;
    }
    t.sim.set(ORG_A, Behavior::status("NOT_SYNCED"));
    wait_until(Duration::from_secs(15), "recovery", || async {
        t.event_kinds(ORG_A).await.contains(&"check_recovered".to_owned())
    })
    .await;
    let check_again = t.sim.requests_for(ORG_A) + 2;
    wait_until(Duration::from_secs(10), "two more good checks", || async {
        t.sim.requests_for(ORG_A) >= check_again
    })
    .await;
    assert_eq!(
        t.event_kinds(ORG_A).await,
        ["first_seen", "check_failing", "check_recovered"]
    );
    daemon.stop(Duration::from_secs(15)).await;
}

fn slack(url: &str) -> String {
    format!("[[channel]]\nname = \"ops\"\nkind = \"slack\"\nwebhook_url = \"{url}\"\n")
}

#[tokio::test]
async fn slack_down_then_back_gets_every_message_in_order_once() {
    let rx = Receiver::start().await;
    rx.reply((0..3).map(|_| Reply::status(503, "")));
    let t = spawn_app_with(Setup {
        channels: slack(&rx.url("/hook")),
        ..Setup::default()
    })
    .await;
    // Six changes while Slack is down, each a distinct message.
    let mut titles = vec!["alpha: migration link is NOT_SYNCED (first check)".to_owned()];
    t.check(ORG_A).await;
    t.dispatch().await; // the first attempt fails
    for n in 1..=5 {
        t.sim.set(ORG_A, Behavior::status(&format!("S{n}")));
        t.check(ORG_A).await;
        let from = if n == 1 {
            "NOT_SYNCED".to_owned()
        } else {
            format!("S{}", n - 1)
        };
        titles.push(format!("alpha: migration link is now S{n} (was {from} for"));
    }
    deliver_until(&t, "everything delivered", || async {
        t.app.store.next_due("ops").await.unwrap().is_none()
    })
    .await;
    let delivered: String = rx.accepted().iter().map(|r| r.body.clone()).collect();
    let mut last = 0;
    for title in &titles {
        // Posts, not matches: a message alone repeats its title in its `text`.
        let posts = rx.accepted().iter().filter(|r| r.body.contains(title.as_str())).count();
        assert_eq!(posts, 1, "{title} in {delivered}");
        let at = delivered.find(title.as_str()).unwrap();
        assert!(at >= last, "{title} out of order");
        last = at;
    }
    assert_eq!(rx.received().iter().filter(|r| r.status == 503).count(), 3);
}

#[tokio::test]
async fn smtp_refusing_connections_then_accepting_gets_the_mail() {
    // A port nobody listens on yet.
    let port = free_port();
    let t = spawn_app_with(Setup {
        channels: mail_channel(port, &["dba@example.com"]),
        ..Setup::default()
    })
    .await;
    t.check(ORG_B).await;
    t.dispatch().await;
    assert!(t.app.store.next_due("mail").await.unwrap().is_some(), "kept for retry");
    let smtp = SmtpServer::start_on(port);
    deliver_until(&t, "the mail after the server came up", || async {
        !smtp.mails().is_empty()
    })
    .await;
    assert!(smtp.mails()[0].data.contains("beta: migration link is SYNCED"));
}

#[tokio::test]
async fn a_reader_holding_a_transaction_does_not_stop_checks() {
    let t = spawn_app().await;
    t.check(ORG_A).await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", t.db_path.display()))
        .await
        .unwrap();
    let mut reader = pool.begin().await.unwrap();
    let seen: Vec<(String,)> = sqlx::query_as("SELECT org_id FROM current_status")
        .fetch_all(&mut *reader)
        .await
        .unwrap();
    assert_eq!(seen.len(), 1);
    for status in ["SYNCED", "NOT_SYNCED", "SYNCED"] {
        t.sim.set(ORG_A, Behavior::status(status));
        t.check(ORG_A).await;
    }
    // The reader's snapshot is unchanged; the writer went on.
    let still: Vec<(String,)> = sqlx::query_as("SELECT org_id FROM status_changes")
        .fetch_all(&mut *reader)
        .await
        .unwrap();
    assert_eq!(still.len(), 1);
    reader.commit().await.unwrap();
    assert_eq!(t.event_kinds(ORG_A).await.len(), 4);
    pool.close().await;
}

#[tokio::test]
async fn a_full_disk_makes_healthz_red_without_a_crash_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = crate::service::Mount::tmpfs(&dir.path().join("fs"), "2m") else {
        crate::skip::skip(
            "LINKWATCH_REQUIRE_TMPFS",
            "a tmpfs to fill",
            "cannot mount one here (not root?)",
        );
        return;
    };
    let port = free_port();
    let t = spawn_app_with(Setup {
        database: Some(dir.path().join("fs/linkwatch.db")),
        top: http_listen(port),
        ..Setup::default()
    })
    .await;
    let daemon = t.run();
    let health = || async {
        reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(10), "healthy", || async { health().await == 200 }).await;
    // alpha's first check (NOT_SYNCED) is recorded before the disk fills up.
    wait_until(Duration::from_secs(10), "alpha seen", || async {
        !t.event_kinds(ORG_A).await.is_empty()
    })
    .await;

    let filler = mount.fill();
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    wait_until(Duration::from_secs(10), "healthz 503", || async {
        health().await == 503
    })
    .await;
    assert!(!daemon.is_finished(), "the daemon keeps running on a full disk");

    std::fs::remove_file(&filler).unwrap();
    wait_until(Duration::from_secs(10), "healthy again", || async {
        health().await == 200
    })
    .await;
    wait_until(
        Duration::from_secs(10),
        "the change recorded once there was room",
        || async { t.event_kinds(ORG_A).await == ["first_seen", "status_changed"] },
    )
    .await;
    daemon.stop(Duration::from_secs(15)).await;
}

/// kill -9 at random moments while 20 orgs flip statuses; then every committed event must have
/// reached the webhook receiver (at least once: duplicates are allowed after a crash).
#[tokio::test]
async fn kill_9_during_load_loses_no_committed_event() {
    let rx = Receiver::start().await;
    let t = spawn_app_with(Setup {
        extra_orgs: 18,
        channels: format!(
            "[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            rx.url("/hook")
        ),
        ..Setup::default()
    })
    .await;
    // Every org flips between two statuses every ~700 ms for the next minute.
    let ids: Vec<String> = [ORG_A.to_owned(), ORG_B.to_owned()]
        .into_iter()
        .chain((0..18).map(extra_org))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let script = (0..90)
            .map(|k| {
                let at = Duration::from_millis(700 * k + 37 * i as u64);
                (at, Behavior::status(if k % 2 == 0 { "NOT_SYNCED" } else { "SYNCED" }))
            })
            .collect();
        t.sim.script(id, script);
    }
    let seed: u64 = rand::random();
    eprintln!("kill -9 schedule seed: {seed}");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_linkwatch"))
            .arg("run")
            .arg("--config")
            .arg(&t.config_path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    for _ in 0..4 {
        let mut child = spawn();
        let millis = rand::Rng::random_range(&mut rng, 300..2000);
        tokio::time::sleep(Duration::from_millis(millis)).await;
        child.kill().await.unwrap(); // SIGKILL
    }
    // A last, clean run drains the outbox.
    let mut child = spawn();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", t.db_path.display()))
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "the outbox drained", || async {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE state <> 'sent'")
            .fetch_one(&pool)
            .await
            .unwrap();
        pending == 0
    })
    .await;
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;

    // Reconcile: each event has exactly its one delivery row, and it reached the receiver.
    let events: Vec<String> = sqlx::query_scalar("SELECT id FROM events")
        .fetch_all(&pool)
        .await
        .unwrap();
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT event_id, count(*) FROM deliveries GROUP BY event_id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let rows: HashMap<String, i64> = rows.into_iter().collect();
    assert!(events.len() > 20, "the load produced only {} events", events.len());
    let received: HashSet<String> = rx.accepted().iter().map(|r| r.header("webhook-id")).collect();
    for id in &events {
        assert_eq!(rows.get(id), Some(&1), "event {id} has no delivery row");
        assert!(
            received.contains(id),
            "event {id} was committed but never delivered (seed {seed})"
        );
    }
    let duplicates = rx.accepted().len() - received.len();
    eprintln!(
        "{} events, {} deliveries received, {duplicates} duplicates after crashes",
        events.len(),
        rx.accepted().len()
    );
    pool.close().await;
}

/// What the full-disk tests show as root, shown on every machine: a trigger refuses every write
/// of the check path the way a full disk does. A check that would change something is repeated
/// at its next slot until it can be recorded (once); a quiet one is kept in memory meanwhile.
#[tokio::test]
async fn a_check_whose_write_is_refused_is_repeated_and_a_quiet_one_kept_until_the_database_takes_it() {
    let t = spawn_app().await;
    let daemon = t.run();
    wait_until(Duration::from_secs(10), "both orgs seen", || async {
        !t.event_kinds(ORG_A).await.is_empty() && !t.event_kinds(ORG_B).await.is_empty()
    })
    .await;
    let last_checked = || async {
        let current = t.app.store.current().await.unwrap();
        let beta = current.iter().find(|c| c.org_id == ORG_B).unwrap();
        beta.last_checked_at.clone()
    };
    for table in ["org_state", "events"] {
        for op in ["INSERT", "UPDATE"] {
            crate::delivery::sql(
                &t,
                &format!(
                    "CREATE TRIGGER refuse_{op}_{table} BEFORE {op} ON {table}
                     BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END"
                ),
            )
            .await;
        }
    }
    let quiet_before = last_checked().await;
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    let asked = t.sim.requests_for(ORG_A);
    wait_until(Duration::from_secs(20), "alpha asked again at three slots", || async {
        t.sim.requests_for(ORG_A) >= asked + 3
    })
    .await;
    assert_eq!(
        t.event_kinds(ORG_A).await,
        ["first_seen"],
        "nothing recorded while refused"
    );
    assert_eq!(last_checked().await, quiet_before, "the quiet checks wait in memory");
    assert!(!daemon.is_finished(), "the daemon keeps running");

    for table in ["org_state", "events"] {
        for op in ["INSERT", "UPDATE"] {
            crate::delivery::sql(&t, &format!("DROP TRIGGER refuse_{op}_{table}")).await;
        }
    }
    wait_until(
        Duration::from_secs(20),
        "the change recorded once it could be",
        || async { t.event_kinds(ORG_A).await == ["first_seen", "status_changed"] },
    )
    .await;
    wait_until(Duration::from_secs(20), "the quiet checks written", || async {
        last_checked().await > quiet_before
    })
    .await;
    assert_eq!(
        t.event_kinds(ORG_A).await,
        ["first_seen", "status_changed"],
        "recorded once"
    );
    daemon.stop(Duration::from_secs(15)).await;
}
