//! Live migrations on the status page, over real HTTP against a running daemon that checks them
//! through the simulated Atlas: what needs action on top, the time left to cut over, the lag
//! against `lag_alert`, the lag chart on the source org's page, the JSON, and the page as a
//! headless browser renders it.

use std::time::Duration;

use linkwatch::simulator::{Behavior, LiveMigrationBehavior};
use serde_json::Value;

use crate::helpers::*;
use crate::page::{browser, chromium, screenshots};
use crate::pg;

const MIGRATION_B: &str = "6f1d00000000000000000d02";
/// Atlas knows no migration with this id: its checks fail (404).
const MIGRATION_C: &str = "6f1d00000000000000000d03";
const MIGRATION_D: &str = "6f1d00000000000000000d04";

fn migration(name: &str, org: &str, id: &str) -> String {
    format!(
        "[[migration]]\nname = \"{name}\"\norg = \"{org}\"\ngroup_id = \"{GROUP}\"\nid = \"{id}\"\nlag_alert = \"10m\"\n\n"
    )
}

/// Four migrations, checked every second by the running daemon; the page on `port`.
fn setup(port: u16, database_url: Option<String>) -> Setup {
    let migrations = [
        migration("payments-rs0", "alpha", MIGRATION_A),
        migration("orders-rs1", "beta", MIGRATION_B),
        migration("ledger-rs2", "alpha", MIGRATION_C),
        migration("archive-rs3", "beta", MIGRATION_D),
    ]
    .concat();
    Setup {
        top: http_listen(port),
        database_url,
        atlas: Some(("every = \"1s\"".into(), migrations)),
        ..Setup::default()
    }
}

/// The app with history: payments-rs0's lag fell from 20 minutes (41 days ago) to 15 (40 days
/// ago, before the page's 30 days), to 5 and it became ready 100 h ago (so about 20 h are left of the estimated 120 h window); orders-rs1 lags 15 minutes, above
/// its `lag_alert`; archive-rs3 is complete; ledger-rs2 fails. Then the daemon runs until every
/// migration has been checked, and the page's address.
async fn running(database_url: Option<String>) -> (TestApp, Running, String) {
    let port = free_port();
    let on_postgres = database_url.is_some();
    let t = spawn_app_with(setup(port, database_url)).await;
    // On PostgreSQL the history is written as the leader, and the lease given back for the daemon.
    let lease = if on_postgres {
        Some(pg::lead(&t.app.store).await)
    } else {
        None
    };
    let clock = &t.app.clock;
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    t.sim.set(ORG_B, Behavior::status("SYNCED"));
    clock.step(chrono::Duration::days(-41));
    t.check(ORG_A).await;
    t.check(ORG_B).await;
    for (hours, ready, lag) in [
        (0, false, 1200),
        (24, false, 900),
        (40 * 24 - 105, false, 300),
        (5, true, 20),
    ] {
        clock.step(chrono::Duration::hours(hours));
        t.sim
            .set_live_migration(MIGRATION_A, LiveMigrationBehavior::state("WORKING", ready, Some(lag)));
        t.check_live_migration("payments-rs0").await;
    }
    clock.step(chrono::Duration::hours(100));
    t.sim
        .set_live_migration(MIGRATION_B, LiveMigrationBehavior::state("WORKING", false, Some(900)));
    t.sim
        .set_live_migration(MIGRATION_D, LiveMigrationBehavior::state("COMPLETE", false, None));
    if let Some(epoch) = lease {
        let pg = t.app.store.postgres().unwrap();
        pg.release_lease("test-leader", epoch).await.unwrap();
    }

    let daemon = t.run();
    let base = format!("http://127.0.0.1:{port}");
    let status_url = format!("{base}/api/v1/status");
    wait_until(Duration::from_secs(20), "every migration checked", || async {
        let Ok(r) = reqwest::get(&status_url).await else {
            return false;
        };
        let Ok(v) = r.json::<Value>().await else { return false };
        // ledger-rs2 retrying until its checks have failed failures_before_alert times.
        v["migrations"].as_array().is_some_and(|ms| {
            ms.len() == 4
                && ms
                    .iter()
                    .all(|m| m["last_checked_at"].is_string() && m["stage"] != "retrying")
        })
    })
    .await;
    (t, daemon, base)
}

async fn get_json(url: &str) -> Value {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

async fn get_text(url: &str) -> String {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.text().await.unwrap()
}

/// (name, stage) of each migration, in the order the API gives them.
fn stages(status: &Value) -> Vec<(String, String)> {
    status["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["stage"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

async fn migrations_on_the_page(database_url: Option<String>) {
    let (t, daemon, base) = running(database_url).await;
    let status_url = format!("{base}/api/v1/status");
    let v = get_json(&status_url).await;
    assert_eq!(
        stages(&v),
        pairs(&[
            ("ledger-rs2", "failing"),
            ("payments-rs0", "ready"),
            ("orders-rs1", "in_progress"),
            ("archive-rs3", "complete"),
        ]),
        "{v:#}"
    );
    let ledger = &v["migrations"][0];
    assert_eq!(ledger["id"], MIGRATION_C);
    assert!(ledger["last_error"].as_str().unwrap().contains("404"), "{ledger}");
    let payments = &v["migrations"][1];
    assert_eq!(payments["org_id"], ORG_A);
    assert_eq!(payments["org_name"], "alpha");
    assert_eq!(payments["status"], "WORKING");
    assert_eq!(payments["ready_for_cutover"], true);
    assert_eq!(payments["lag_s"], 20);
    assert_eq!(payments["lag_alert_s"], 600);
    assert!(
        payments["estimated_deadline"].as_str().unwrap().ends_with('Z'),
        "{payments}"
    );
    // Ready 100 h ago, a 120 h window: about 20 h left, less the seconds the test has taken.
    let left = payments["time_left_s"].as_i64().unwrap();
    assert!((19 * 3600..=20 * 3600).contains(&left), "{payments}");
    let orders = &v["migrations"][2];
    assert_eq!(orders["lag_s"], 900);
    assert_eq!(orders["time_left_s"], Value::Null);

    // What a person sees: a section of live migrations, the badges, the lag above its alert,
    // the time left, and the way to each migration's chart. By default the complete one is only
    // counted; `?state=all` lists it too.
    let default = get_text(&format!("{base}/")).await;
    assert!(
        !default.contains("archive-rs3") && default.contains("1 more in progress, complete or not checked yet"),
        "{default}"
    );
    let page = get_text(&format!("{base}/?state=all")).await;
    let section = page
        .split("<h2>Live migrations</h2>")
        .nth(1)
        .expect("a section of live migrations");
    for text in [
        "class=\"badge failing\">check failing<",
        "class=\"badge ready\">ready for cutover<",
        "class=\"badge in_progress\">in progress<",
        "class=\"badge complete\">complete<",
        "15m 0s (above 10m 0s)",
        "about 19h 5",
        &format!("href=\"org/{ORG_A}#migration-{MIGRATION_A}\""),
    ] {
        assert!(section.contains(text), "{text} missing:\n{section}");
    }
    let order: Vec<usize> = ["ledger-rs2", "payments-rs0", "orders-rs1", "archive-rs3"]
        .iter()
        .map(|n| section.find(n).unwrap())
        .collect();
    assert!(order.is_sorted(), "not in the order of the API: {order:?}");

    // The source org's page charts the lag: three samples (15 min, 5 min, 20 s) as three steps
    // of one line, under the dashed lag_alert.
    let alpha = get_text(&format!("{base}/org/alpha")).await;
    let payments_part = alpha
        .split(&format!("id=\"migration-{MIGRATION_A}\""))
        .nth(1)
        .expect("payments-rs0 on alpha's page")
        .split("</section>")
        .next()
        .unwrap();
    assert!(payments_part.contains("<svg class=\"lag\""), "{payments_part}");
    assert_eq!(
        payments_part.matches("class=\"lag-step\"").count(),
        3,
        "{payments_part}"
    );
    assert!(payments_part.contains("class=\"lag-alert\""), "{payments_part}");
    assert!(payments_part.contains("lag 15m 0s: "), "{payments_part}");
    assert!(payments_part.contains("Time left to cut over"), "{payments_part}");
    assert!(
        alpha.contains(&format!("id=\"migration-{MIGRATION_C}\"")),
        "ledger-rs2 too"
    );
    assert!(!alpha.contains("orders-rs1"), "beta's migration is not on alpha's page");
    let beta = get_text(&format!("{base}/org/beta")).await;
    assert!(beta.contains("orders-rs1") && beta.contains("archive-rs3"), "{beta}");

    // The same as JSON, by name or by id: the changes and the lag series.
    let m = get_json(&format!("{base}/api/v1/migrations/payments-rs0")).await;
    assert_eq!(m["migration"]["stage"], "ready");
    let lags: Vec<&Value> = m["lag"].as_array().unwrap().iter().map(|s| &s["lag_s"]).collect();
    assert_eq!(lags, [900, 300, 20], "the 30 days and the sample before them: {m:#}");
    let first = chrono::DateTime::parse_from_rfc3339(m["lag"][0]["at"].as_str().unwrap()).unwrap();
    assert!(t.app.clock.now() - first.to_utc() > chrono::Duration::days(39), "{m:#}");
    assert_eq!(m["changes"].as_array().unwrap().len(), 1, "{m:#}");
    assert_eq!(m["changes"][0]["to"], "WORKING");
    let by_id = get_json(&format!("{base}/api/v1/migrations/{MIGRATION_A}")).await;
    assert_eq!(by_id["migration"]["name"], "payments-rs0");
    let unknown = reqwest::get(format!("{base}/api/v1/migrations/nothing")).await.unwrap();
    assert_eq!(unknown.status(), 404);
    let error: Value = unknown.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("nothing"), "{error}");

    // orders-rs1 fails in Atlas: it moves up, above the one that is only waiting for cutover.
    t.sim
        .set_live_migration(MIGRATION_B, LiveMigrationBehavior::state("FAILED", false, None));
    wait_until(Duration::from_secs(20), "orders-rs1 failed", || async {
        get_json(&status_url).await["migrations"][1]["name"] == "orders-rs1"
    })
    .await;
    assert_eq!(
        stages(&get_json(&status_url).await),
        pairs(&[
            ("ledger-rs2", "failing"),
            ("orders-rs1", "failed"),
            ("payments-rs0", "ready"),
            ("archive-rs3", "complete"),
        ])
    );
    daemon.stop(Duration::from_secs(15)).await;
}

#[tokio::test]
async fn migrations_on_the_page_on_sqlite() {
    migrations_on_the_page(None).await;
}

#[tokio::test]
async fn migrations_on_the_page_on_postgres() {
    let Some(db) = pg::database().await else { return };
    migrations_on_the_page(Some(db.url.clone())).await;
}

#[tokio::test]
async fn a_browser_renders_the_migrations_and_the_lag_chart() {
    let Some(browser) = browser() else { return };
    let (_t, daemon, base) = running(None).await;

    let dom = chromium(&browser, &["--dump-dom".into()], &format!("{base}/")).await;
    for text in [
        "payments-rs0",
        "orders-rs1",
        "class=\"badge ready\">ready for cutover<",
        "class=\"badge failing\">check failing<",
    ] {
        assert!(dom.contains(text), "{text} missing from the rendered page:\n{dom}");
    }
    let org = chromium(&browser, &["--dump-dom".into()], &format!("{base}/org/alpha")).await;
    assert!(org.contains("<svg class=\"lag\""), "no lag chart:\n{org}");
    assert!(org.contains("<path class=\"lag\" d=\"M"), "no lag line:\n{org}");

    screenshots(
        &browser,
        &base,
        &[
            ("/", "status-page-migrations.png"),
            ("/org/alpha", "org-page-migrations.png"),
        ],
        1400,
    )
    .await;
    daemon.stop(Duration::from_secs(15)).await;
}

/// A migration named like markup shows as text on the page, its org's page and in the JSON.
#[tokio::test]
async fn a_migration_named_like_markup_shows_as_text() {
    let port = free_port();
    let t = spawn_app_with(Setup {
        top: http_listen(port),
        atlas: Some((
            String::new(),
            migration("<script>alert(1)</script>", "alpha", MIGRATION_A),
        )),
        ..Setup::default()
    })
    .await;
    t.sim
        .set_live_migration(MIGRATION_A, LiveMigrationBehavior::state("WORKING", true, Some(20)));
    t.check(ORG_A).await;
    t.check_live_migration("<script>alert(1)</script>").await;
    let running = t.run();
    let base = format!("http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(20), "the page", || async {
        reqwest::get(format!("{base}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    let page = reqwest::get(format!("{base}/")).await.unwrap().text().await.unwrap();
    let org_page = reqwest::get(format!("{base}/org/alpha"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for html in [&page, &org_page] {
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
        assert!(!html.contains("<script>alert(1)"), "{html}");
    }
    let json: Value = reqwest::get(format!("{base}/api/v1/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["migrations"][0]["name"], "<script>alert(1)</script>");
    running.stop(Duration::from_secs(15)).await;
}
