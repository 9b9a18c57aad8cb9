//! Checks, events and what is stored, through the simulator's real HTTP and Digest.

use linkwatch::outcome::FailureClass;
use linkwatch::simulator::Behavior;

use crate::helpers::*;

#[tokio::test]
async fn first_seen_then_a_change_and_no_repeat_after_restart() {
    let t = spawn_app().await;
    assert_eq!(t.check(ORG_A).await.outcome, Ok("NOT_SYNCED".into()));
    assert_eq!(t.check(ORG_A).await.events, vec![]);
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    let report = t.check(ORG_A).await;
    assert_eq!(report.events.len(), 1);
    assert_eq!(t.event_kinds(ORG_A).await, ["first_seen", "status_changed"]);

    // The same file after a restart: the stored state decides, so nothing repeats.
    let t = t.restart().await;
    t.check(ORG_A).await;
    t.check(ORG_A).await;
    assert_eq!(t.event_kinds(ORG_A).await, ["first_seen", "status_changed"]);
    // ... and nothing is missed: a change during the "downtime" is seen on the next check.
    t.sim.set(ORG_A, Behavior::status("NOT_SYNCED"));
    let t = t.restart().await;
    t.check(ORG_A).await;
    assert_eq!(
        t.event_kinds(ORG_A).await,
        ["first_seen", "status_changed", "status_changed"]
    );

    let history = t.app.store.history(Some("alpha"), None).await.unwrap();
    let steps: Vec<_> = history
        .iter()
        .map(|c| (c.from_status.as_deref(), c.to_status.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            (None, "NOT_SYNCED"),
            (Some("NOT_SYNCED"), "SYNCED"),
            (Some("SYNCED"), "NOT_SYNCED")
        ]
    );
    // The status change event carries from, to and how long `from` lasted.
    let events = t.events(Some(ORG_A)).await;
    let payload: serde_json::Value = serde_json::from_str(&events[1].payload).unwrap();
    assert_eq!(payload["from"], "NOT_SYNCED");
    assert_eq!(payload["to"], "SYNCED");
    assert!(payload["from_lasted_s"].is_i64());
}

#[tokio::test]
async fn unchanged_checks_update_a_row_and_add_none() {
    let t = spawn_app().await;
    for _ in 0..25 {
        t.check(ORG_B).await;
    }
    let count = |table: &'static str| {
        let path = t.db_path.clone();
        async move {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&pool)
                .await
                .unwrap();
            pool.close().await;
            n
        }
    };
    assert_eq!(count("org_state").await, 1);
    assert_eq!(count("transitions").await, 1);
    assert_eq!(count("events").await, 1);
    assert_eq!(count("check_failures").await, 0);
}

#[tokio::test]
async fn confirm_checks_waits_for_identical_answers() {
    let t = spawn_app_with(Setup {
        poll: "confirm_checks = 3".into(),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    assert!(t.check(ORG_A).await.events.is_empty());
    assert!(t.check(ORG_A).await.events.is_empty());
    assert_eq!(t.check(ORG_A).await.events[0].kind(), "status_changed");
    assert_eq!(t.event_kinds(ORG_A).await, ["first_seen", "status_changed"]);
}

#[tokio::test]
async fn failing_after_n_failures_then_recovered_once() {
    let t = spawn_app().await;
    t.check(ORG_B).await;
    t.sim
        .set(ORG_B, Behavior::error(500, "UNEXPECTED_ERROR", "Unexpected error."));
    for _ in 0..5 {
        t.check(ORG_B).await;
    }
    t.sim.set(ORG_B, Behavior::status("SYNCED"));
    t.check(ORG_B).await;
    t.check(ORG_B).await;
    assert_eq!(
        t.event_kinds(ORG_B).await,
        ["first_seen", "check_failing", "check_recovered"]
    );
    let current = t.app.store.current().await.unwrap();
    let beta = current.iter().find(|c| c.org_id == ORG_B).unwrap();
    assert_eq!(beta.status.as_deref(), Some("SYNCED"));
    assert_eq!(beta.consecutive_failures, 0);
    assert_eq!(beta.last_error, None);
}

/// One row per failure class: the simulator's answer, and what linkwatch must make of it.
#[tokio::test]
async fn every_failure_class_is_stored_and_reported_without_losing_the_status() {
    let huge = "x".repeat(200_000);
    // (what the simulator answers, class, stored http code, stored errorCode, words in last_error)
    type Case = (Behavior, FailureClass, Option<i64>, Option<&'static str>, &'static str);
    let cases: Vec<Case> = vec![
        (
            Behavior::error(
                403,
                "IP_ADDRESS_NOT_ON_ACCESS_LIST",
                "IP address 10.1.2.3 is not allowed.",
            ),
            FailureClass::Forbidden,
            Some(403),
            Some("IP_ADDRESS_NOT_ON_ACCESS_LIST"),
            "access list",
        ),
        (
            Behavior::error(401, "NOT_ORG_OWNER", "The API key lacks the Organization Owner role."),
            FailureClass::Unauthorized,
            Some(401),
            Some("NOT_ORG_OWNER"),
            "Organization Owner",
        ),
        (
            Behavior::error(404, "ORG_NOT_FOUND", "No organization with ID exists."),
            FailureClass::NotFound,
            Some(404),
            Some("ORG_NOT_FOUND"),
            "the organization does not exist",
        ),
        (
            Behavior::error(404, "RESOURCE_NOT_FOUND", "Cannot find resource."),
            FailureClass::NoLink,
            Some(404),
            Some("RESOURCE_NOT_FOUND"),
            "no migration link",
        ),
        (
            Behavior::error(
                429,
                "RATE_LIMITED",
                "Resource is limited to 100 requests every 1 minutes.",
            ),
            FailureClass::RateLimited,
            Some(429),
            Some("RATE_LIMITED"),
            "too many requests",
        ),
        (
            Behavior::error(503, "UNEXPECTED_ERROR", "Unexpected error."),
            FailureClass::ServerError,
            Some(503),
            Some("UNEXPECTED_ERROR"),
            "unexpected error",
        ),
        (
            Behavior::error(402, "ACCOUNT_SUSPENDED", "Unpaid invoice."),
            FailureClass::Http,
            Some(402),
            Some("ACCOUNT_SUSPENDED"),
            "the organization is suspended: it has an invoice unpaid for more than 30 days; pay the invoice",
        ),
        // The refusals in Cloud Manager's own words: the parameters quoted where they matter, a
        // 403 that is no access list not called one, an unknown code quoted as it was sent.
        (
            Behavior::refusal(
                403,
                "ORG_REQUIRES_ACCESS_LIST",
                "This organization requires access through an access list of ip ranges.",
                &["203.0.113.7"],
            ),
            FailureClass::Forbidden,
            Some(403),
            Some("ORG_REQUIRES_ACCESS_LIST"),
            "this host's address 203.0.113.7 is not on it; add this host's address to the key's API access list",
        ),
        (
            Behavior::error(
                403,
                "FEATURE_UNSUPPORTED",
                "Feature not supported by current account level.",
            ),
            FailureClass::Forbidden,
            Some(403),
            Some("FEATURE_UNSUPPORTED"),
            "the feature is not supported for this organization",
        ),
        (
            Behavior::error(403, "ACCESS_FORBIDDEN", "Access to this resource is forbidden."),
            FailureClass::Forbidden,
            Some(403),
            Some("ACCESS_FORBIDDEN"),
            "refused the request with an error code linkwatch does not know (HTTP 403 ACCESS_FORBIDDEN): Access to this resource is forbidden.",
        ),
        (
            Behavior::Raw {
                http: 200,
                content_type: "text/html".into(),
                body: "<html><body>Maintenance</body></html>".into(),
            },
            FailureClass::Malformed,
            Some(200),
            None,
            "Maintenance",
        ),
        (
            Behavior::Raw {
                http: 200,
                content_type: "application/json".into(),
                body: String::new(),
            },
            FailureClass::Malformed,
            Some(200),
            None,
            "empty body",
        ),
        (
            Behavior::Raw {
                http: 200,
                content_type: "application/json".into(),
                body: huge,
            },
            FailureClass::Malformed,
            Some(200),
            None,
            "larger than 65536 bytes",
        ),
        (
            Behavior::Hang,
            FailureClass::Timeout,
            None,
            None,
            "did not answer in time",
        ),
    ];
    for (behavior, class, http, error_code, words) in cases {
        let t = spawn_app_with(Setup {
            timeout: "500ms",
            ..Setup::default()
        })
        .await;
        t.check(ORG_A).await;
        t.sim.set(ORG_A, behavior.clone());
        for i in 1..=3 {
            let report = t.check(ORG_A).await;
            let failure = report.outcome.clone().expect_err("a failed check");
            assert_eq!(failure.class, class, "{behavior:?}");
            assert_eq!(
                report.events.is_empty(),
                i < 3,
                "{behavior:?}: check_failing on the third failure only"
            );
        }
        let rows = t
            .app
            .store
            .failures(&linkwatch::config::OrgId::parse(ORG_A).unwrap())
            .await
            .unwrap();
        assert_eq!(rows.len(), 3, "{behavior:?}");
        let (stored_class, stored_http, stored_code, _) = &rows[0];
        assert_eq!(stored_class, class.as_str());
        assert_eq!(*stored_http, http, "{behavior:?}");
        assert_eq!(stored_code.as_deref(), error_code, "{behavior:?}");
        assert_eq!(t.event_kinds(ORG_A).await, ["first_seen", "check_failing"]);
        // Nothing already stored is lost: the confirmed status stays, the reason is readable.
        let current = t.app.store.current().await.unwrap();
        let alpha = current.iter().find(|c| c.org_id == ORG_A).unwrap();
        assert_eq!(alpha.status.as_deref(), Some("NOT_SYNCED"));
        assert_eq!(alpha.consecutive_failures, 3);
        let last_error = alpha.last_error.clone().unwrap();
        assert!(last_error.contains(words), "{behavior:?}: {last_error}");
        if matches!(error_code, Some("FEATURE_UNSUPPORTED" | "ACCESS_FORBIDDEN")) {
            assert!(
                !last_error.contains("access list"),
                "not guessed from the 403: {last_error}"
            );
        }
        t.sim.stop().await;
    }
}

#[tokio::test]
async fn rate_limits_carry_retry_after() {
    let t = spawn_app().await;
    t.sim.set(ORG_A, Behavior::error(429, "RATE_LIMITED", "slow down"));
    t.sim.add_header(ORG_A, "Retry-After", "42");
    let failure = t.check(ORG_A).await.outcome.unwrap_err();
    assert_eq!(failure.retry_after, Some(std::time::Duration::from_secs(42)));
}

#[tokio::test]
async fn connection_refused_is_a_connection_failure() {
    // A port that was free a moment ago: nothing listens there.
    let port = free_port();
    let t = spawn_app().await;
    let text = std::fs::read_to_string(&t.config_path)
        .unwrap()
        .replace(&t.sim.base_url(), &format!("http://127.0.0.1:{port}/api/public/v1.0"));
    std::fs::write(&t.config_path, text).unwrap();
    let t = t.restart().await;
    let failure = t.check(ORG_A).await.outcome.unwrap_err();
    assert_eq!(failure.class, FailureClass::Connection, "{failure:?}");
    assert!(failure.explain().contains("could not connect"));
}

#[tokio::test]
async fn unknown_statuses_are_recorded_and_reported() {
    let t = spawn_app().await;
    t.check(ORG_B).await;
    t.sim.set(ORG_B, Behavior::status("PAUSED_BY_ATLAS"));
    let report = t.check(ORG_B).await;
    assert_eq!(report.outcome, Ok("PAUSED_BY_ATLAS".into()));
    assert_eq!(t.event_kinds(ORG_B).await, ["first_seen", "status_changed"]);
}

#[tokio::test]
async fn the_envelope_form_is_understood() {
    let t = spawn_app().await;
    t.sim.set(
        ORG_A,
        Behavior::Raw {
            http: 200,
            content_type: "application/json".into(),
            body: r#"{"status":200,"content":{"status":"SYNCED"}}"#.into(),
        },
    );
    assert_eq!(t.check(ORG_A).await.outcome, Ok("SYNCED".into()));
}

#[tokio::test]
async fn retention_prunes_failures_and_sent_deliveries_but_keeps_history() {
    let t = spawn_app().await;
    t.check(ORG_A).await;
    t.sim.set(ORG_A, Behavior::error(503, "", "down"));
    t.check(ORG_A).await;
    t.dispatch().await;
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    let pruned = t.app.store.prune(later).await.unwrap();
    assert_eq!((pruned.failures, pruned.deliveries, pruned.reports), (1, 1, 0));
    let a = linkwatch::config::OrgId::parse(ORG_A).unwrap();
    assert!(t.app.store.failures(&a).await.unwrap().is_empty());
    assert_eq!(
        t.app.store.history(None, None).await.unwrap().len(),
        1,
        "status changes are kept"
    );
    assert_eq!(t.event_kinds(ORG_A).await, ["first_seen"], "events are kept");
    // Pending deliveries are never pruned.
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    t.check(ORG_A).await;
    assert_eq!(
        t.app.store.prune(later + chrono::Duration::seconds(5)).await.unwrap(),
        linkwatch::store::Pruned::default()
    );
}

#[tokio::test]
async fn retention_lets_go_of_what_is_older_than_it_by_the_wall_clock_and_a_retention_past_the_calendar_keeps_all() {
    use linkwatch::retention::run_once;
    use linkwatch::store::Pruned;
    let t = spawn_app().await;
    t.sim.set(ORG_A, Behavior::error(503, "", "down"));
    t.check(ORG_A).await;
    let (now, day) = (t.app.clock.now(), std::time::Duration::from_secs(24 * 3600));
    assert_eq!(
        run_once(&t.app.store, day, now).await.unwrap(),
        Pruned::default(),
        "a day old at most: kept"
    );
    let two_days_on = now + chrono::Duration::days(2);
    assert_eq!(
        run_once(&t.app.store, std::time::Duration::MAX, two_days_on)
            .await
            .unwrap(),
        Pruned::default(),
        "a retention that reaches before the calendar starts keeps everything"
    );
    assert_eq!(run_once(&t.app.store, day, two_days_on).await.unwrap().failures, 1);
}

#[tokio::test]
async fn a_megabyte_of_error_detail_is_stored_and_reported_short() {
    let mut setup = Setup::default();
    // Room for the whole body, so that only the cap on failure details keeps it out.
    setup.credential += "\nmax_body_bytes = 4194304";
    let t = spawn_app_with(setup).await;
    t.check(ORG_A).await;
    // A megabyte of two-byte characters: any cut must fall on a character boundary.
    let detail = "é".repeat(500_000);
    t.sim.set(ORG_A, Behavior::error(500, "UNEXPECTED_ERROR", &detail));
    for _ in 0..3 {
        let failure = t.check(ORG_A).await.outcome.unwrap_err();
        assert_eq!(failure.class, FailureClass::ServerError);
    }
    let rows = t
        .app
        .store
        .failures(&linkwatch::config::OrgId::parse(ORG_A).unwrap())
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    for (_, _, _, stored) in &rows {
        assert!(
            stored.chars().count() <= 300,
            "stored detail: {} chars",
            stored.chars().count()
        );
        assert!(stored.starts_with("éé") && stored.ends_with('…'), "{stored}");
    }
    let events = t.events(Some(ORG_A)).await;
    let failing = events
        .iter()
        .find(|e| e.kind == "check_failing")
        .expect("check_failing");
    assert!(
        failing.payload.len() < 2_000,
        "payload: {} bytes",
        failing.payload.len()
    );
    let current = t.app.store.current().await.unwrap();
    let alpha = current.iter().find(|c| c.org_id == ORG_A).unwrap();
    assert!(alpha.last_error.as_deref().unwrap_or_default().len() < 2_000);
}
