//! No panic from input: what Cloud Manager, a receiver or the config file says is bounded where
//! it is read, so that no later arithmetic on instants or dates can overflow.

use std::time::Duration;

use linkwatch::config::{Config, ConfigError};
use linkwatch::simulator::Behavior;

use crate::helpers::*;
use crate::receiver::{Receiver, Reply};

/// Far beyond any clock: 10^13 seconds is about 317,000 years.
const HUGE_RETRY_AFTER: &str = "10000000000000";

#[tokio::test]
async fn a_huge_retry_after_from_cloud_manager_is_clamped_and_checks_go_on() {
    let t = spawn_app_with(Setup {
        extra_orgs: 3,
        ..Setup::default()
    })
    .await;
    // Alpha and three more orgs are rate limited with an absurd Retry-After; beta is healthy.
    let limited: Vec<String> = std::iter::once(ORG_A.to_owned()).chain((0..3).map(extra_org)).collect();
    for org in &limited {
        t.sim.set(org, Behavior::error(429, "RATE_LIMITED", "slow down"));
        t.sim.add_header(org, "Retry-After", HUGE_RETRY_AFTER);
    }
    let daemon = t.run();
    wait_until(
        Duration::from_secs(10),
        "every rate-limited org answered once",
        || async { limited.iter().all(|o| t.sim.requests_for(o) >= 1) },
    )
    .await;
    let beta = t.sim.requests_for(ORG_B);
    wait_until(
        Duration::from_secs(10),
        "three more checks of beta after four huge Retry-Afters",
        || async { t.sim.requests_for(ORG_B) >= beta + 3 },
    )
    .await;
    assert!(!daemon.is_finished(), "the daemon is still running");
    // The clamped wait (an hour) is still honoured: no rate-limited org was asked again.
    for org in &limited {
        assert_eq!(t.sim.requests_for(org), 1, "org {org} was asked again");
    }
    daemon.stop(Duration::from_secs(10)).await;

    let store = linkwatch::store::Store::open(&linkwatch::config::Database::Sqlite(t.db_path.clone()))
        .await
        .unwrap();
    for org in &limited {
        let rows = store
            .failures(&linkwatch::config::OrgId::parse(org).unwrap())
            .await
            .unwrap();
        let classes: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(classes, ["rate_limited"], "org {org}");
    }
}

#[tokio::test]
async fn a_huge_retry_after_from_a_webhook_is_clamped_to_an_hour() {
    let rx = Receiver::start().await;
    let t = spawn_app_with(Setup {
        channels: format!(
            "[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            rx.url("/hook")
        ),
        ..Setup::default()
    })
    .await;
    rx.reply([Reply {
        retry_after: Some(HUGE_RETRY_AFTER.parse().unwrap()),
        ..Reply::status(429, "slow down")
    }]);
    t.check(ORG_A).await;
    t.dispatch().await;
    // The next attempt waits the clamped hour: nothing more is sent now.
    t.dispatch().await;
    assert_eq!(rx.received().len(), 1);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", t.db_path.display()))
        .await
        .unwrap();
    let (state, next): (String, String) =
        sqlx::query_as("SELECT state, next_attempt_at FROM deliveries WHERE channel = 'hook'")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(state, "pending");
    let next: chrono::DateTime<chrono::Utc> = next.parse().unwrap();
    let wait = next - chrono::Utc::now();
    assert!(
        wait > chrono::Duration::minutes(55) && wait <= chrono::Duration::minutes(61),
        "next attempt in {wait}"
    );
}

const BASE: &str = r#"shutdown_timeout = "10s"
retention = "30d"

[cloud_manager]
public_key = "pub"
private_key = "very-secret-key"
connect_timeout = "5s"

[poll]
every = "1m"
timeout = "15s"

[[org]]
id = "5f0c1234567890abcdef1234"
name = "payments"
every = "30s"

[[channel]]
name = "console"
kind = "console"
timeout = "12s"

[[route]]
channels = ["console"]
remind_every = "4h"
"#;

/// Each duration key in turn set to a value no clock can add: rejected by `check` with the file,
/// line and key, never accepted to overflow later.
#[tokio::test]
async fn huge_durations_in_the_config_are_rejected_with_their_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("linkwatch.toml");
    std::fs::write(&path, BASE).unwrap();
    Config::load(&path).expect("the base config is valid");
    let cases = [
        ("shutdown_timeout = \"10s\"", "shutdown_timeout"),
        ("retention = \"30d\"", "retention"),
        ("connect_timeout = \"5s\"", "cloud_manager.connect_timeout"),
        ("every = \"1m\"", "poll.every"),
        ("timeout = \"15s\"", "poll.timeout"),
        ("every = \"30s\"", "org[0].every"),
        ("timeout = \"12s\"", "channel[0].timeout"),
        ("remind_every = \"4h\"", "route[0].remind_every"),
    ];
    for (line_text, key) in cases {
        let (name, _) = line_text.split_once(" = ").unwrap();
        let text = BASE.replacen(line_text, &format!("{name} = \"9999999999999d\""), 1);
        let line = 1 + text[..text.find(&format!("{name} = \"9999999999999d\"")).unwrap()]
            .matches('\n')
            .count();
        std::fs::write(&path, &text).unwrap();
        match Config::load(&path) {
            Err(e @ ConfigError::Invalid { .. }) => {
                let message = e.to_string();
                let expected = format!("{}:{line}:", path.display());
                assert!(message.starts_with(&expected), "{key}: {message}");
                assert!(message.contains(&format!(": {key}: ")), "{key}: {message}");
                assert!(message.contains("at most"), "{key}: {message}");
            }
            Err(e) => panic!("{key}: unexpected error {e}"),
            Ok(_) => panic!("{key} = 9999999999999d was accepted"),
        }
    }

    // What a user runs: `linkwatch check` says where, and does not panic.
    let text = BASE.replacen("every = \"1m\"", "every = \"9999999999999d\"", 1);
    std::fs::write(&path, &text).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_linkwatch"))
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:10:9: poll.every: ", path.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
