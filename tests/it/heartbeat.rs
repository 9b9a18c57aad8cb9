//! `[heartbeat]`: pings reach a local receiver while linkwatch is healthy, stop while the
//! database refuses writes and resume after; a monitor answering 500 is counted and checks go on.

use std::time::Duration;

use linkwatch::simulator::Behavior;

use crate::helpers::*;
use crate::receiver::{Receiver, Reply};

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

#[tokio::test]
async fn pings_arrive_while_healthy_and_stop_while_the_database_refuses_writes() {
    let receiver = Receiver::start().await;
    let port = free_port();
    let t = spawn_app_with(Setup {
        top: heartbeat(&receiver, port),
        ..Setup::default()
    })
    .await;
    let daemon = t.run();
    wait_until(Duration::from_secs(15), "two pings", || async { pings(&receiver) >= 2 }).await;

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
    let skipped = || metric(port, "linkwatch_heartbeat_skipped_total");
    wait_until(Duration::from_secs(20), "a heartbeat skipped", || async {
        skipped().await >= 1.0
    })
    .await;
    let before = pings(&receiver);
    let first = skipped().await;
    wait_until(Duration::from_secs(20), "two more intervals unhealthy", || async {
        skipped().await >= first + 2.0
    })
    .await;
    assert_eq!(pings(&receiver), before, "pinged while the database refused writes");

    for sql in ["DROP TRIGGER test_refuse_insert", "DROP TRIGGER test_refuse_update"] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    wait_until(Duration::from_secs(20), "pings again once healthy", || async {
        pings(&receiver) > before
    })
    .await;
    pool.close().await;
    daemon.stop(Duration::from_secs(15)).await;
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
    let beat = linkwatch::config::Heartbeat {
        url: linkwatch::secret::Secret::new(format!("http://127.0.0.1:{closed}/ping/{UUID}")),
        shown: format!("http://127.0.0.1:{closed}"),
        every: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
    };
    let error = linkwatch::heartbeat::ping(&reqwest::Client::new(), &beat)
        .await
        .unwrap_err();
    assert!(error.starts_with("could not connect"), "{error}");
    assert!(!error.contains(UUID), "{error}");
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
