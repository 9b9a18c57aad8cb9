//! The alerting rules and the Grafana dashboard under `deploy/` use only series that linkwatch
//! exports: every `linkwatch_*` name in them (queries, annotations, the rules' unit-test
//! series) is one that a running app's `/metrics` declares. Their PromQL is parsed, and the
//! rules unit-tested, by `promtool` in CI (`.ci/run`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use linkwatch::simulator::{Behavior, LiveMigrationBehavior};

use crate::helpers::*;

/// The files under `deploy/` that name linkwatch's series.
const FILES: [&str; 3] = [
    "deploy/prometheus/linkwatch.rules.yml",
    "deploy/prometheus/linkwatch.rules.test.yml",
    "deploy/grafana/linkwatch.json",
];

fn read(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Every `linkwatch_...` name in `text` (a metric name's characters after the prefix).
fn linkwatch_names(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    text.match_indices("linkwatch_")
        .filter(|(at, _)| !text[..*at].ends_with(is_name))
        .map(|(at, _)| {
            let rest = &text[at..];
            rest[..rest.find(|c: char| !is_name(c)).unwrap_or(rest.len())].to_owned()
        })
        .collect()
}

/// The sample names that `/metrics` text declares: each family of a `# TYPE` line with the
/// suffixes its type gives its samples (a family with no sample right now still counts: the
/// lag of a migration, a channel blocked for some seconds).
fn exported_names(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let Some(declared) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = declared.split_whitespace();
        let (Some(family), Some(kind)) = (words.next(), words.next()) else {
            panic!("a # TYPE line without a family and a type: {line}");
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "summary" => &["", "_sum", "_count", "_created"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
    }
    names
}

/// The real `/metrics` text of an app with a live migration in its cutover window, as a
/// running daemon serves it; and, before it ran, the same app's metrics rendered the way
/// `/metrics` renders them while something is wrong: families with no series are not declared
/// at all, so those that exist only then (a pending delivery, a blocked channel, a caught panic,
/// a refused record) are made to exist by the calls the code makes when it happens.
async fn scrape() -> Vec<String> {
    let port = free_port();
    let t = spawn_app_with(Setup {
        top: http_listen(port),
        atlas: one_live_migration(),
        ..Setup::default()
    })
    .await;
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    t.check(ORG_A).await;
    t.sim
        .set_live_migration(MIGRATION_A, LiveMigrationBehavior::state("WORKING", true, Some(42)));
    // Atlas announces the retirement of the version asked for: `linkwatch_api_deprecated`.
    t.sim.set_atlas_version(
        "2023-01-01",
        linkwatch::simulator::AtlasVersion::Deprecated {
            deprecation: None,
            sunset: Some("Fri, 01 Jan 2027 00:00:00 GMT".into()),
        },
    );
    t.check_live_migration("payments-rs0").await;

    let metrics = &t.app.metrics;
    metrics.panicked("check", "alpha");
    metrics.record_failed("console");
    metrics.set_blocked(
        "console",
        Some(linkwatch::metrics::Blocked {
            since: chrono::Utc::now(),
            since_mono: tokio::time::Instant::now(),
            deliveries: 1,
            last_error: Some("refused".into()),
        }),
    );
    // The first check's event waits in the outbox: nothing has sent it yet.
    let troubled = metrics.render(&t.app.store.gauges().await.unwrap());

    let running = t.run();
    let base = format!("http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(20), "the endpoint", || async {
        reqwest::get(format!("{base}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    let served = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    running.stop(Duration::from_secs(15)).await;
    vec![served, troubled]
}

#[tokio::test]
async fn the_rules_and_the_dashboard_use_only_exported_series() {
    let exported: BTreeSet<String> = scrape().await.iter().flat_map(|m| exported_names(m)).collect();
    for name in [
        "linkwatch_checks_total",
        "linkwatch_migration_cutover_left_seconds",
        "linkwatch_channel_blocked",
        "linkwatch_outbox_pending",
    ] {
        assert!(exported.contains(name), "{name} missing from {exported:?}");
    }
    for path in FILES {
        let used = linkwatch_names(&read(path));
        assert!(!used.is_empty(), "{path} names no linkwatch series");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{path} uses series that /metrics does not export: {unknown:?}\nexported: {exported:?}"
        );
    }
}

#[test]
fn the_dashboard_is_json_with_a_query_in_every_target() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/linkwatch.json")).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| t["expr"].as_str().unwrap_or_default())
        .collect();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    assert!(queries.iter().all(|q| !q.trim().is_empty()), "{queries:?}");
    // Each query is for the selected job, so one Grafana shows several deployments apart.
    for q in &queries {
        assert!(
            q.contains("job=~\"$job\""),
            "a query that ignores the job variable: {q}"
        );
    }
}

#[test]
fn names_are_found_whole() {
    let names = linkwatch_names("sum(rate(linkwatch_checks_total{a=\"b\"}[5m])) / linkwatch_leader, my_linkwatch_x");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["linkwatch_checks_total", "linkwatch_leader"]
    );
}
