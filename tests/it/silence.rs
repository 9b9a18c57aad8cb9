//! Silences beside a running daemon, on SQLite and on PostgreSQL: `linkwatch silence add`
//! from a shell holds the org's events back (recorded, shown as silenced, sent to no one), the
//! page, the JSON and `/metrics` show it, and its end says once where the link went, or
//! nothing when it is back where it was.

use std::time::Duration;

use linkwatch::simulator::Behavior;

use crate::helpers::*;
use crate::notify::slack;
use crate::receiver::Receiver;

/// `linkwatch silence ...` with the test app's config, beside its running daemon.
async fn silence(t: &TestApp, args: &[&str]) -> String {
    let out = linkwatch()
        .arg("--config")
        .arg(&t.config_path)
        .arg("silence")
        .args(args)
        .output()
        .await
        .expect("linkwatch runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "silence {args:?} failed: {stdout}{stderr}");
    stdout
}

/// The `deliveries` view's (kind, org_name, state) rows of `org`, on either database.
async fn deliveries_of(database: &str, org: &str) -> Vec<(String, String, String)> {
    let sql = "SELECT kind, org_name, state FROM deliveries WHERE org_id = $1 ORDER BY created_at";
    if database.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(database).await.unwrap();
        let rows = sqlx::query_as(sql).bind(org).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    } else {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{database}"))
            .await
            .unwrap();
        let rows = sqlx::query_as(sql).bind(org).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    }
}

async fn a_silence_holds_events_and_its_end_says_once_where_the_link_went(database_url: Option<String>) {
    let rx = Receiver::start().await;
    let port = free_port();
    let t = spawn_app_with(Setup {
        database_url: database_url.clone(),
        channels: slack("ops", &rx.url("/hook")),
        top: http_listen(port),
        ..Setup::default()
    })
    .await;
    let database = database_url.unwrap_or_else(|| t.db_path.display().to_string());
    let running = t.run();
    // alpha starts NOT_SYNCED, beta SYNCED: both first_seen messages arrive.
    rx.wait_for_requests(2, Duration::from_secs(20)).await;

    let added = silence(
        &t,
        &[
            "add",
            "--org",
            "beta",
            "--for",
            "2h",
            "--reason",
            "planned cutover",
            "--by",
            "alice",
        ],
    )
    .await;
    assert!(added.starts_with("silence 1: beta until "), "{added}");
    assert!(added.contains("by alice: planned cutover"), "{added}");
    assert!(added.contains("status now: SYNCED."), "{added}");
    let added = silence(
        &t,
        &[
            "add",
            "--org",
            ORG_A,
            "--for",
            "2h",
            "--reason",
            "maintenance",
            "--by",
            "bob",
        ],
    )
    .await;
    assert!(added.starts_with("silence 2: alpha until "), "{added}");
    assert!(added.contains("status now: NOT_SYNCED."), "{added}");
    let listed = silence(&t, &["list"]).await;
    assert!(
        listed.contains("active") && listed.contains("planned cutover") && listed.contains("maintenance"),
        "{listed}"
    );

    // The page, the JSON and /metrics show both.
    let base = format!("http://127.0.0.1:{port}");
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("linkwatch_silences_active 2"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "linkwatch_silence_ends_timestamp_seconds{{silence=\"1\",org_id=\"{ORG_B}\",org_name=\"beta\",migration=\"\"}}"
        )),
        "{metrics}"
    );
    let status: serde_json::Value = reqwest::get(format!("{base}/api/v1/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let silences = status["silences"].as_array().expect("silences in the JSON");
    assert_eq!(silences.len(), 2, "{status}");
    assert_eq!(silences[0]["org_name"], "beta");
    assert_eq!(silences[0]["by"], "alice");
    assert_eq!(silences[0]["reason"], "planned cutover");
    let beta = status["orgs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "beta")
        .expect("beta in the JSON");
    assert_eq!(beta["state"], "silenced", "{beta}");
    assert!(beta["silenced_until"].is_string(), "{beta}");
    let page = reqwest::get(format!("{base}/")).await.unwrap().text().await.unwrap();
    assert!(page.contains("Silenced") && page.contains("planned cutover"), "{page}");

    let before = rx.accepted().len();
    // beta falls back while silenced: recorded, held, sent to no one.
    t.sim.set(ORG_B, Behavior::status("NOT_SYNCED"));
    wait_until(Duration::from_secs(20), "beta's change recorded", || async {
        t.event_kinds(ORG_B).await.contains(&"status_changed".to_owned())
    })
    .await;
    let held = deliveries_of(&database, ORG_B).await;
    assert!(
        held.contains(&("status_changed".into(), "beta".into(), "silenced".into())),
        "{held:?}"
    );
    assert!(
        !held.iter().any(|(k, _, s)| k == "status_changed" && s != "silenced"),
        "{held:?}"
    );
    // alpha moves and comes back where it was.
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    wait_until(Duration::from_secs(20), "alpha SYNCED recorded", || async {
        t.event_kinds(ORG_A)
            .await
            .iter()
            .filter(|k| *k == "status_changed")
            .count()
            == 1
    })
    .await;
    t.sim.set(ORG_A, Behavior::status("NOT_SYNCED"));
    wait_until(Duration::from_secs(20), "alpha back to NOT_SYNCED recorded", || async {
        t.event_kinds(ORG_A)
            .await
            .iter()
            .filter(|k| *k == "status_changed")
            .count()
            == 2
    })
    .await;

    let ended = silence(&t, &["end", "1"]).await;
    assert!(ended.contains("silence 1 (beta) ended"), "{ended}");
    silence(&t, &["end", "2"]).await;
    wait_until(Duration::from_secs(20), "both silences concluded", || async {
        let one = t.app.store.silence(1).await.unwrap().unwrap();
        let two = t.app.store.silence(2).await.unwrap().unwrap();
        one.concluded_at.is_some() && two.concluded_at.is_some()
    })
    .await;
    // Whatever the ends wrote has gone out before the posts are counted.
    wait_until(Duration::from_secs(20), "nothing pending", || async {
        let mut rows = deliveries_of(&database, ORG_A).await;
        rows.extend(deliveries_of(&database, ORG_B).await);
        !rows.iter().any(|(_, _, state)| state == "pending")
    })
    .await;
    let said: Vec<String> = rx.accepted()[before..].iter().map(|r| r.body.clone()).collect();
    // One message: beta's end (it moved); none for alpha (back where it was), none for the
    // changes held while silenced.
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(
        said[0].contains("beta: silence 1 ended: now NOT_SYNCED, was SYNCED when it began"),
        "{}",
        said[0]
    );
    assert!(said[0].contains("In between: SYNCED → NOT_SYNCED at "), "{}", said[0]);
    assert!(said[0].contains("planned cutover"), "{}", said[0]);
    assert!(said[0].contains("1 event(s) were recorded and not sent"), "{}", said[0]);

    let listed = silence(&t, &["list"]).await;
    assert!(listed.starts_with("no silences"), "{listed}");
    let all = silence(&t, &["list", "--all"]).await;
    assert_eq!(all.matches("ended").count(), 2, "{all}");
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("linkwatch_silences_active 0"), "{metrics}");
    running.stop(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn a_silence_holds_events_and_its_end_says_once_where_the_link_went_on_sqlite() {
    a_silence_holds_events_and_its_end_says_once_where_the_link_went(None).await;
}

#[tokio::test]
async fn a_silence_holds_events_and_its_end_says_once_where_the_link_went_on_postgres() {
    let Some(db) = crate::pg::database().await else { return };
    a_silence_holds_events_and_its_end_says_once_where_the_link_went(Some(db.url.clone())).await;
}

/// Mistakes are named before anything is written.
#[tokio::test]
async fn silence_add_names_what_it_cannot_silence() {
    let t = spawn_app().await;
    t.check(ORG_A).await; // the database exists
    for (args, says) in [
        (
            &["add", "--org", "gamma", "--for", "1h", "--reason", "x"][..],
            "no org named or with the id \"gamma\"",
        ),
        (
            &[
                "add",
                "--org",
                "alpha",
                "--migration",
                "nope",
                "--for",
                "1h",
                "--reason",
                "x",
            ][..],
            "no [[migration]] named \"nope\"",
        ),
        (
            &["add", "--org", "alpha", "--until", "2020-01-01 00:00", "--reason", "x"][..],
            "is in the past",
        ),
        (
            &["add", "--org", "alpha", "--for", "1h", "--reason", " "][..],
            "--reason is empty",
        ),
        (&["end", "7"][..], "no silence 7"),
    ] {
        let out = linkwatch()
            .arg("--config")
            .arg(&t.config_path)
            .arg("silence")
            .args(args)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert!(t.app.store.silences(chrono::Utc::now(), true).await.unwrap().is_empty());
}

/// Reminders pause while a silence holds (none is recorded, so none waits to go out at its
/// end) and come back with the next check after it.
#[tokio::test]
async fn reminders_pause_while_silenced_and_resume_after() {
    let rx = Receiver::start().await;
    let channels = format!(
        "{}[[route]]\nchannels = [\"ops\"]\nevents = [\"status_changed\"]\nremind_every = \"1h\"\n",
        slack("ops", &rx.url("/ops"))
    );
    let t = spawn_app_with(Setup {
        channels,
        ..Setup::default()
    })
    .await;
    t.check(ORG_B).await; // SYNCED
    t.sim.set(ORG_B, Behavior::status("NOT_SYNCED"));
    t.check(ORG_B).await;
    let id = t.silence_for(ORG_B, None, 3, "planned work").await;
    t.app.clock.step(chrono::Duration::hours(2));
    t.check(ORG_B).await;
    let reminders = || async { t.event_kinds(ORG_B).await.iter().filter(|k| *k == "reminder").count() };
    assert_eq!(reminders().await, 0, "a reminder while silenced");
    assert!(t.app.store.end_silence(id, t.app.clock.now()).await.unwrap());
    t.check(ORG_B).await;
    assert_eq!(reminders().await, 1, "no reminder after the silence");
}

/// `--migration` silences that live migration only: its events are held, the org's link
/// events are not; its end speaks of the migration.
#[tokio::test]
async fn a_migration_silence_holds_only_that_migrations_events() {
    use linkwatch::simulator::LiveMigrationBehavior;
    let t = spawn_app_with(Setup {
        atlas: one_live_migration(),
        ..Setup::default()
    })
    .await;
    t.sim
        .set_live_migration(MIGRATION_A, LiveMigrationBehavior::state("WORKING", false, Some(5)));
    t.check(ORG_A).await;
    t.check_live_migration("payments-rs0").await;
    t.silence_for(ORG_A, Some(("payments-rs0", MIGRATION_A)), 1, "cutover rehearsal")
        .await;
    t.sim
        .set_live_migration(MIGRATION_A, LiveMigrationBehavior::state("FAILED", false, None));
    t.check_live_migration("payments-rs0").await;
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    t.check(ORG_A).await;
    let rows = deliveries_of(&t.db_path.display().to_string(), ORG_A).await;
    let state = |kind: &str| {
        rows.iter()
            .filter(|(k, _, _)| k == kind)
            .map(|(_, _, s)| s.clone())
            .next_back()
            .unwrap_or_default()
    };
    assert_eq!(state("migration_status_changed"), "silenced", "{rows:?}");
    assert_ne!(state("status_changed"), "silenced", "{rows:?}");

    t.app.clock.step(chrono::Duration::hours(2));
    assert_eq!(linkwatch::silence::conclude_due(&t.app.checker).await.unwrap(), 1);
    let events = t.events(Some(ORG_A)).await;
    let ended = events
        .iter()
        .find(|e| e.kind == "silence_ended")
        .expect("silence_ended");
    let message = linkwatch::message::summary(
        "alpha",
        &serde_json::from_str::<linkwatch::detect::Event>(&ended.payload).unwrap(),
    );
    assert!(
        message.starts_with("payments-rs0 (org alpha): silence 1 ended: now FAILED, was WORKING"),
        "{message}"
    );
}
