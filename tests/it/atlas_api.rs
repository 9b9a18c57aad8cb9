//! Issue 22 as a user meets it, through the simulator over real HTTP and Digest: a refusal in
//! Cloud Manager's own words, a live migration answer with an ill-typed field that still says
//! FAILED, and Atlas announcing the retirement of the version linkwatch asks for.

use linkwatch::simulator::{AtlasVersion, Behavior, LiveMigrationBehavior};

use crate::helpers::*;
use crate::receiver::Receiver;

const SUNSET: &str = "Fri, 01 Jan 2027 00:00:00 GMT";

fn webhook(url: &str) -> String {
    format!("[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{url}\"\n")
}

/// A webhook channel to `rx`, `[atlas]` and one migration of org alpha.
fn setup(rx: &Receiver) -> Setup {
    Setup {
        channels: webhook(&rx.url("/hook")),
        atlas: one_live_migration(),
        ..Setup::default()
    }
}

/// How many `api_deprecated` events the database holds.
async fn deprecations(t: &TestApp) -> usize {
    t.events(None)
        .await
        .iter()
        .filter(|e| e.kind == "api_deprecated")
        .count()
}

/// Every event the receiver accepted, as (type, summary, org name).
fn received(rx: &Receiver) -> Vec<(String, String, String)> {
    rx.accepted()
        .iter()
        .map(|r| {
            let j = r.json();
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (s(&j["type"]), s(&j["summary"]), s(&j["org"]["name"]))
        })
        .collect()
}

/// Every optional field of Atlas's answer may be missing or of another type: a `FAILED`
/// migration with a garbled lag and readiness is still FAILED, at once, and its first message
/// names the source org as the config does although the org's link was never checked.
#[tokio::test]
async fn a_failed_migration_with_ill_typed_fields_is_reported_failed() {
    let rx = Receiver::start().await;
    let port = free_port();
    let t = spawn_app_with(Setup {
        top: http_listen(port),
        ..setup(&rx)
    })
    .await;
    t.sim.set_live_migration(
        MIGRATION_A,
        LiveMigrationBehavior::Body(serde_json::json!({
            "_id": MIGRATION_A,
            "status": "FAILED",
            "readyForCutover": "yes",
            "lagTimeSeconds": "soon",
            "migrationHosts": ["mh-1.example.net"],
        })),
    );
    let report = t.check_live_migration("payments-rs0").await;
    let reading = report.outcome.expect("a reading, not a failure");
    assert_eq!(reading.status, "FAILED");
    assert_eq!((reading.ready_for_cutover, reading.lag_s), (None, None));
    let kinds: Vec<&str> = report.events.iter().map(|e| e.kind()).collect();
    assert_eq!(kinds, ["migration_status_changed"]);

    // What the page reads: FAILED, no failing check, the host.
    let row = &t.app.store.live_migrations().await.unwrap()[0];
    assert_eq!(row.status.as_deref(), Some("FAILED"));
    assert_eq!((row.consecutive_failures, row.last_error.as_deref()), (0, None));
    assert_eq!(row.migration_hosts, ["mh-1.example.net"]);

    // What reaches the receiver: URGENT, by the org's configured name, never its id twice.
    t.dispatch().await;
    let got = received(&rx);
    assert_eq!(got.len(), 1, "{got:?}");
    let (kind, summary, org) = &got[0];
    assert_eq!(kind, "migration_status_changed");
    assert_eq!(org, "alpha");
    assert_eq!(
        summary,
        "URGENT: payments-rs0 (org alpha): live migration FAILED (first check) on migration host mh-1.example.net"
    );
    assert!(!summary.contains(ORG_A), "{summary}");

    // The status page and its JSON, as a person opens them.
    let running = t.run();
    let base = format!("http://127.0.0.1:{port}");
    wait_until(std::time::Duration::from_secs(20), "the status page", || async {
        reqwest::get(format!("{base}/"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    let front = reqwest::get(format!("{base}/")).await.unwrap().text().await.unwrap();
    assert!(front.contains("via mh-1.example.net"), "{front}");
    let org = reqwest::get(format!("{base}/org/alpha"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(org.contains("migration hosts mh-1.example.net"), "{org}");
    let status: serde_json::Value = reqwest::get(format!("{base}/api/v1/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let m = &status["migrations"][0];
    assert_eq!(
        (m["status"].as_str(), m["migration_hosts"][0].as_str()),
        (Some("FAILED"), Some("mh-1.example.net")),
        "{m}"
    );
    running.stop(std::time::Duration::from_secs(15)).await;
}

/// `Deprecation` and `Sunset` on Atlas's answers: one `api_deprecated` that says which version
/// and when it goes, not again on the next check nor after a restart, and a gauge for alerts.
/// Once the version is removed, the 410 says which key to change.
#[tokio::test]
async fn a_deprecated_atlas_version_is_announced_once_per_version() {
    let rx = Receiver::start().await;
    let t = spawn_app_with(setup(&rx)).await;
    t.sim
        .set_live_migration(MIGRATION_A, LiveMigrationBehavior::state("WORKING", false, Some(40)));
    assert!(t.check_live_migration("payments-rs0").await.outcome.is_ok());
    // alpha is silenced for planned work: that holds alpha's events, not an API's notice,
    // which is said once and would otherwise be lost.
    t.silence_for(ORG_A, None, 1, "cutover").await;
    t.sim.set_atlas_version(
        "2023-01-01",
        AtlasVersion::Deprecated {
            deprecation: Some("@1767225600".into()),
            sunset: Some(SUNSET.into()),
        },
    );
    for _ in 0..3 {
        let report = t.check_live_migration("payments-rs0").await;
        assert_eq!(report.outcome.unwrap().status, "WORKING", "the answer still counts");
    }
    assert_eq!(deprecations(&t).await, 1);
    t.dispatch().await;
    let got: Vec<_> = received(&rx)
        .into_iter()
        .filter(|(k, _, _)| k == "api_deprecated")
        .collect();
    assert_eq!(
        got,
        [(
            "api_deprecated".to_owned(),
            "Atlas API version 2023-01-01 (live migrations) is deprecated since 2026-01-01; sunset 2027-01-01"
                .to_owned(),
            "alpha".to_owned()
        )]
    );
    let advice = rx.accepted().last().unwrap().json()["advice"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        advice.contains("[atlas] api_version") && advice.contains("2027-01-01 00:00 UTC"),
        "{advice}"
    );

    let metrics = t.app.metrics.render(&t.app.store.gauges().await.unwrap());
    assert!(
        metrics.contains(r#"linkwatch_api_deprecated{api="atlas",version="2023-01-01",sunset="2027-01-01"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"linkwatch_api_sunset_timestamp_seconds{api="atlas",version="2023-01-01"} 1798761600"#),
        "{metrics}"
    );

    // A restart knows it was said.
    let t = t.restart().await;
    assert!(t.check_live_migration("payments-rs0").await.outcome.is_ok());
    assert_eq!(deprecations(&t).await, 1, "not again after a restart");

    // At the sunset Atlas answers 410: the failure names the key to change.
    t.sim.set_atlas_version("2023-01-01", AtlasVersion::Removed);
    let failure = t.check_live_migration("payments-rs0").await.outcome.unwrap_err();
    let text = failure.explain_atlas();
    assert!(
        text.contains("retired") && text.contains("[atlas] api_version") && text.contains("HTTP 410"),
        "{text}"
    );
}

/// `check --online` shows each as a person reads it: the refusal with the address to add, and
/// for the migration its status with a note on the deprecation and the field taken as unknown.
#[tokio::test]
async fn check_online_quotes_the_refusal_and_notes_the_deprecation() {
    let t = spawn_app_with(Setup {
        atlas: one_live_migration(),
        ..Setup::default()
    })
    .await;
    t.sim.set(
        ORG_A,
        Behavior::refusal(
            403,
            "ORG_REQUIRES_ACCESS_LIST",
            "This organization requires access through an access list of ip ranges.",
            &["203.0.113.7"],
        ),
    );
    t.sim.set(ORG_B, Behavior::error(403, "ACCESS_FORBIDDEN", "Forbidden."));
    t.sim.set_live_migration(
        MIGRATION_A,
        LiveMigrationBehavior::Body(serde_json::json!({"status": "WORKING", "lagTimeSeconds": "soon"})),
    );
    t.sim.set_atlas_version(
        "2023-01-01",
        AtlasVersion::Deprecated {
            deprecation: None,
            sunset: Some(SUNSET.into()),
        },
    );
    let out = linkwatch()
        .args(["check", "--online", "--config"])
        .arg(&t.config_path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for line in [
        "  alpha: Cloud Manager refused the request: the organization requires every API request to come from an address on the key's access list, and this host's address 203.0.113.7 is not on it;",
        "  beta: Cloud Manager refused the request with an error code linkwatch does not know (HTTP 403 ACCESS_FORBIDDEN): Forbidden.",
        "  payments-rs0: Atlas API version 2023-01-01 (live migrations) is deprecated; sunset 2027-01-01",
        "  payments-rs0: taken as unknown: `lagTimeSeconds` is not a number of seconds: \"soon\"",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "no line {line:?} in\n{stdout}"
        );
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("migration") && l.contains("WORKING")),
        "{stdout}"
    );
}
