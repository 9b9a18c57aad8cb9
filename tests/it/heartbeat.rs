//! `[heartbeat]`: pings reach a local receiver while linkwatch is healthy; while the database
//! refuses writes or a channel cannot deliver, the fail URL hears why, and pings resume after;
//! the first comes soon after start; a failed one is sent once more; a monitor answering 500 is
//! counted and checks go on.

use std::time::Duration;

use linkwatch::simulator::Behavior;

use crate::helpers::*;
use crate::receiver::{Received, Receiver, Reply};

/// The uuid in the ping URL is the credential.
const UUID: &str = "0d3c57a1-5a7e-4b7e-9d6e-credential";

fn heartbeat(receiver: &Receiver, http_port: u16) -> String {
    format!(
        "{}\n\n[heartbeat]\nurl = \"{}\"\nevery = \"1s\"\n",
        http_listen(http_port),
        receiver.url(&format!("/ping/{UUID}"))
    )
}

fn pings(receiver: &Receiver) -> usize {
    receiver
        .received()
        .iter()
        .filter(|r| r.method == "GET" && r.path == format!("/ping/{UUID}"))
        .count()
}

/// A metric's value from `/metrics`.
async fn metric(port: u16, name: &str) -> f64 {
    // Before the endpoint listens, nothing is counted yet.
    let Ok(answer) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return 0.0;
    };
    let text = answer.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Requests to the fail URL (`{url}/fail`), in order.
fn fails(receiver: &Receiver) -> Vec<Received> {
    receiver
        .received()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == format!("/ping/{UUID}/fail"))
        .collect()
}

/// Success pings after the last fail.
fn pings_after_fail(receiver: &Receiver) -> usize {
    let all = receiver.received();
    let last_fail = all.iter().rposition(|r| r.path.ends_with("/fail")).unwrap_or(0);
    all[last_fail..]
        .iter()
        .filter(|r| r.method == "GET" && r.path == format!("/ping/{UUID}"))
        .count()
}

#[tokio::test]
async fn the_database_refusing_writes_says_fail_with_the_reason_then_pings_resume() {
    let receiver = Receiver::start().await;
    let port = free_port();
    let t = spawn_app_with(Setup {
        top: heartbeat(&receiver, port),
        ..Setup::default()
    })
    .await;
    let daemon = t.run();
    wait_until(Duration::from_secs(15), "a ping", || async { pings(&receiver) >= 1 }).await;
    assert!(fails(&receiver).is_empty(), "{:?}", receiver.received());

    // The database refuses the health probe's write (as a full disk or a lock would).
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", t.db_path.display()))
        .await
        .unwrap();
    for sql in [
        "CREATE TRIGGER test_refuse_insert BEFORE INSERT ON meta WHEN NEW.key = 'health_probe'
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
        "CREATE TRIGGER test_refuse_update BEFORE UPDATE ON meta WHEN NEW.key = 'health_probe'
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    wait_until(Duration::from_secs(20), "a fail with the reason", || async {
        !fails(&receiver).is_empty()
    })
    .await;
    let fail = &fails(&receiver)[0];
    assert!(
        fail.body.starts_with("the database does not take writes") && fail.body.contains("refused by the test"),
        "{}",
        fail.body
    );
    assert!(fail.header("content-type").starts_with("text/plain"), "{fail:?}");
    assert!(metric(port, "linkwatch_heartbeat_unhealthy_total").await >= 1.0);

    for sql in ["DROP TRIGGER test_refuse_insert", "DROP TRIGGER test_refuse_update"] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    wait_until(Duration::from_secs(20), "success pings again once healthy", || async {
        pings_after_fail(&receiver) >= 2
    })
    .await;
    pool.close().await;
    daemon.stop(Duration::from_secs(15)).await;
}

/// A revoked Slack webhook: every check goes on and `/healthz` stays 200, but nobody is told
/// anything, and the monitor hears it. The next delivery that goes through ends it.
#[tokio::test]
async fn a_revoked_slack_webhook_says_fail_until_a_delivery_goes_through() {
    let receiver = Receiver::start().await;
    let slack = Receiver::start().await;
    slack.reply_when(|_| true, Reply::status(404, "no_service"));
    let port = free_port();
    let t = spawn_app_with(Setup {
        top: heartbeat(&receiver, port),
        channels: format!(
            "[[channel]]\nname = \"ops\"\nkind = \"slack\"\nwebhook_url = \"{}\"\n",
            slack.url("/services/T0/B0/revoked")
        ),
        ..Setup::default()
    })
    .await;
    let daemon = t.run();
    wait_until(Duration::from_secs(20), "a fail naming the channel", || async {
        fails(&receiver).iter().any(|f| f.body.contains("channel \"ops\""))
    })
    .await;
    let fail = fails(&receiver)
        .into_iter()
        .find(|f| f.body.contains("channel \"ops\""))
        .unwrap();
    assert!(
        fail.body.contains("refused for good") && fail.body.contains("no_service"),
        "{}",
        fail.body
    );
    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.unwrap();
    assert_eq!(health.text().await.unwrap(), "degraded\n", "the same rule as /healthz");

    // The webhook is replaced on Slack's side; the next event goes through.
    slack.clear_rules();
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    wait_until(Duration::from_secs(20), "success pings after the delivery", || async {
        pings_after_fail(&receiver) >= 2
    })
    .await;
    assert!(!slack.accepted().is_empty());
    daemon.stop(Duration::from_secs(15)).await;
}

/// The monitor hears from linkwatch soon after it starts, not one `every` later.
#[tokio::test]
async fn the_first_ping_comes_soon_after_start() {
    let receiver = Receiver::start().await;
    let port = free_port();
    let t = spawn_app_with(Setup {
        top: heartbeat(&receiver, port).replace("every = \"1s\"", "every = \"1h\""),
        ..Setup::default()
    })
    .await;
    let daemon = t.run();
    wait_until(
        Duration::from_secs(15),
        "the first ping, long before an hour",
        || async { pings(&receiver) >= 1 },
    )
    .await;
    daemon.stop(Duration::from_secs(15)).await;
}

/// A monitor that fails one request gets the same one again, soon, not an interval later.
#[tokio::test]
async fn a_failed_ping_is_sent_once_more_before_the_next_interval() {
    let receiver = Receiver::start().await;
    receiver.reply_when(|_| true, Reply::status(500, "down"));
    let port = free_port();
    let t = spawn_app_with(Setup {
        top: heartbeat(&receiver, port).replace("every = \"1s\"", "every = \"1h\""),
        ..Setup::default()
    })
    .await;
    let daemon = t.run();
    // every = 1h: the second request can only be the retry (after 10 s).
    wait_until(Duration::from_secs(30), "the ping and its retry", || async {
        pings(&receiver) >= 2
    })
    .await;
    wait_until(Duration::from_secs(5), "both failures counted", || async {
        metric(port, "linkwatch_heartbeat_failures_total").await >= 2.0
    })
    .await;
    daemon.stop(Duration::from_secs(15)).await;
    assert_eq!(pings(&receiver), 2, "retried once, not more");
}

#[tokio::test]
async fn a_monitor_answering_500_is_counted_and_checks_go_on() {
    let receiver = Receiver::start().await;
    receiver.reply_when(|_| true, Reply::status(500, "down"));
    let port = free_port();
    let t = spawn_app_with(Setup {
        top: heartbeat(&receiver, port),
        ..Setup::default()
    })
    .await;
    let daemon = t.run();
    wait_until(Duration::from_secs(15), "two failed heartbeats counted", || async {
        metric(port, "linkwatch_heartbeat_failures_total").await >= 2.0
    })
    .await;
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    wait_until(Duration::from_secs(15), "alpha's change recorded", || async {
        t.event_kinds(ORG_A).await.contains(&"status_changed".to_owned())
    })
    .await;
    daemon.stop(Duration::from_secs(15)).await;
}

#[tokio::test]
async fn a_failed_ping_never_shows_the_url() {
    let closed = free_port();
    let beat = linkwatch::config::HeartbeatConfig {
        url: linkwatch::secret::Secret::new(format!("http://127.0.0.1:{closed}/ping/{UUID}")),
        shown: format!("http://127.0.0.1:{closed}"),
        fail_url: linkwatch::secret::Secret::new(format!("http://127.0.0.1:{closed}/ping/{UUID}/fail")),
        fail_shown: format!("http://127.0.0.1:{closed}"),
        every: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
    };
    for ping in [
        linkwatch::heartbeat::Ping::Healthy,
        linkwatch::heartbeat::Ping::Fail("a reason".into()),
    ] {
        let error = linkwatch::heartbeat::ping(&reqwest::Client::new(), &beat, &ping)
            .await
            .unwrap_err();
        assert!(error.starts_with("could not connect"), "{error}");
        assert!(!error.contains(UUID), "{error}");
    }
    assert!(!format!("{beat:?}").contains(UUID));
}

/// Config management that reloads more often than `every` must not keep the ping from coming.
#[tokio::test]
async fn reloads_more_often_than_every_do_not_put_the_ping_off() {
    let receiver = Receiver::start().await;
    let port = free_port();
    let t = spawn_app_with(Setup {
        top: heartbeat(&receiver, port).replace("every = \"1s\"", "every = \"2s\""),
        ..Setup::default()
    })
    .await;
    t.app.store.close().await;
    let config = linkwatch::config::Config::load(&t.config_path).unwrap();
    let path = t.config_path.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let options = linkwatch::daemon::Options {
        console: linkwatch::channels::ConsoleSink::Memory(Default::default()),
        reload: Some(rx),
        loader: Some(Box::new(move || Ok(linkwatch::config::Config::load(&path)?))),
    };
    let daemon = tokio::spawn(linkwatch::daemon::run_with(config, shutdown.clone(), options));
    let reloads = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(700));
        loop {
            tick.tick().await;
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    wait_until(Duration::from_secs(20), "two pings despite the reloads", || async {
        pings(&receiver) >= 2
    })
    .await;
    reloads.abort();
    shutdown.cancel();
    daemon.await.unwrap().unwrap();
}
