//! Delivery under faults: a database that refuses to record (SQLite and PostgreSQL), a receiver
//! that refuses one event (or the events of 39 orgs) forever, a `Retry-After` within the hold and
//! past it, more waiting orgs than a step reads, a wall clock stepped back, a channel worker that
//! panics, `once` with several events, and retention of failed deliveries.

use std::time::Duration;

use linkwatch::dispatch::DeliverySettings;
use linkwatch::retry::RetryPolicy;
use linkwatch::simulator::Behavior;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::helpers::*;
use crate::notify::{deliveries, slack};
use crate::receiver::{Receiver, Reply};

/// Short delays, so that tests of retries run in seconds.
pub fn fast() -> DeliverySettings {
    DeliverySettings {
        retry: RetryPolicy {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            max_retry_after: Duration::from_secs(10),
            ..RetryPolicy::default()
        },
        record_first_delay: Duration::from_millis(50),
        record_max_delay: Duration::from_millis(200),
        restart_pause: Duration::from_millis(50),
        slack_interval: Duration::from_millis(50),
        ..DeliverySettings::default()
    }
}

/// A trigger that makes every update of the outbox fail the way a full disk does.
const REFUSE_WRITES: &str = "CREATE TRIGGER refuse BEFORE UPDATE ON outbox
     BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END";

/// Runs one statement on the app's database through a connection of the test's own.
pub async fn sql(t: &TestApp, statement: &str) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", t.db_path.display()))
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// The value of one series in the app's `/metrics` text, 0 when absent.
pub async fn metric(t: &TestApp, series: &str) -> f64 {
    let gauges = t.app.store.gauges().await.unwrap();
    let text = t.app.metrics.render(&gauges);
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The channel workers of a test app, running until `stop`.
pub struct Workers {
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl Workers {
    pub fn start(t: &TestApp) -> Workers {
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        t.app
            .dispatcher
            .spawn(t.app.store.clone(), shutdown.clone(), &mut tasks);
        Workers { shutdown, tasks }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.tasks.join_all())
            .await
            .expect("workers stop");
    }
}

fn bodies(rx: &Receiver) -> String {
    rx.accepted().iter().map(|r| r.body.clone()).collect()
}

/// How many accepted posts mention `text`.
pub fn posts_with(rx: &Receiver, text: &str) -> usize {
    rx.accepted().iter().filter(|r| r.body.contains(text)).count()
}

const RECORD_FAILURES: &str = r#"linkwatch_delivery_record_failures_total{channel="ops"}"#;

/// The same refusal on PostgreSQL, where a claim is an update of the outbox too: only the writes
/// of an outcome (each counts an attempt) are refused, so that the claim of a new row passes and
/// only the dispatcher's own rule keeps that row from being sent while an outcome is unrecorded.
const REFUSE_WRITES_PG: &str = "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full'; END $$;
     CREATE TRIGGER refuse BEFORE UPDATE ON outbox FOR EACH ROW
     WHEN (NEW.attempts IS DISTINCT FROM OLD.attempts) EXECUTE FUNCTION refuse()";

/// Runs `statements` on a PostgreSQL database through a connection of the test's own.
async fn pg_sql(url: &str, statements: &str) {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(statements.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap();
}

/// The state of every outbox row, in event order, on the app's database (SQLite, or PostgreSQL
/// at `pg`).
async fn outbox_states(t: &TestApp, pg: Option<&str>) -> Vec<String> {
    const STATES: &str = "SELECT state FROM outbox ORDER BY event_seq";
    match pg {
        None => deliveries(t).await.into_iter().map(|d| d.3).collect(),
        Some(url) => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let states = sqlx::query_scalar(STATES).fetch_all(&pool).await.unwrap();
            pool.close().await;
            states
        }
    }
}

/// A Slack channel delivers alpha's first event while the database refuses to record it (on
/// SQLite, or on PostgreSQL at `pg`): it is not posted again, beta's new event waits, and once
/// the database takes writes again both are recorded, each posted once.
async fn a_delivery_is_sent_once_while_unrecorded(pg: Option<&str>) {
    let rx = Receiver::start().await;
    let t = spawn_app_with(Setup {
        database_url: pg.map(str::to_owned),
        channels: slack("ops", &rx.url("/hook")),
        delivery: Some(fast()),
        ..Setup::default()
    })
    .await;
    if pg.is_some() {
        crate::pg::lead(&t.app.store).await;
    }
    t.check(ORG_A).await;
    // What the refusal says, for the channel's reason below.
    let full = match pg {
        None => {
            sql(&t, REFUSE_WRITES).await;
            "disk is full"
        }
        Some(url) => {
            pg_sql(url, REFUSE_WRITES_PG).await;
            "No space left on device"
        }
    };
    let workers = Workers::start(&t);
    wait_until(Duration::from_secs(20), "the post, then refused records", || async {
        rx.received().len() > 1 || metric(&t, RECORD_FAILURES).await >= 3.0
    })
    .await;
    assert_eq!(rx.received().len(), 1, "the accepted post was sent again");

    // A new event waits while nothing can be recorded: sending it would only add to what a
    // crash would repeat.
    t.check(ORG_B).await;
    let before = metric(&t, RECORD_FAILURES).await;
    wait_until(Duration::from_secs(20), "more refused records", || async {
        rx.received().len() > 1 || metric(&t, RECORD_FAILURES).await >= before + 3.0
    })
    .await;
    assert_eq!(
        rx.received().len(),
        1,
        "a new event was sent while nothing could be recorded"
    );
    assert_eq!(outbox_states(&t, pg).await, ["pending", "pending"]);
    // Not a silent stall: the channel says it is blocked, and why.
    assert_eq!(metric(&t, r#"linkwatch_channel_blocked{channel="ops"}"#).await, 1.0);
    let blocked = t.app.metrics.blocked();
    let why = blocked
        .iter()
        .find(|(c, _)| c == "ops")
        .and_then(|(_, b)| b.last_error.clone());
    let why = why.unwrap_or_default();
    assert!(why.contains("cannot record") && why.contains(full), "{why}");

    match pg {
        None => sql(&t, "DROP TRIGGER refuse").await,
        Some(url) => pg_sql(url, "DROP TRIGGER refuse ON outbox").await,
    }
    wait_until(Duration::from_secs(20), "both rows recorded as sent", || async {
        outbox_states(&t, pg).await == ["sent", "sent"]
    })
    .await;
    workers.stop().await;
    assert_eq!(posts_with(&rx, "alpha: migration link is NOT_SYNCED (first check)"), 1);
    assert_eq!(posts_with(&rx, "beta: migration link is SYNCED (first check)"), 1);
    assert_eq!(rx.received().len(), 2, "one post per event");
    assert_eq!(metric(&t, r#"linkwatch_channel_blocked{channel="ops"}"#).await, 0.0);
    t.app.store.close().await;
}

#[tokio::test]
async fn a_delivery_is_sent_once_while_the_database_refuses_to_record_it() {
    a_delivery_is_sent_once_while_unrecorded(None).await;
}

#[tokio::test]
async fn on_postgres_a_delivery_is_sent_once_while_the_database_refuses_to_record_it() {
    let Some(db) = crate::pg::database().await else { return };
    a_delivery_is_sent_once_while_unrecorded(Some(&db.url)).await;
}

#[tokio::test]
async fn a_failed_attempt_that_cannot_be_recorded_still_waits_for_retry_after() {
    let rx = Receiver::start().await;
    rx.reply([Reply {
        retry_after: Some(7),
        ..Reply::status(429, "rate_limited")
    }]);
    let t = spawn_app_with(Setup {
        channels: slack("ops", &rx.url("/hook")),
        delivery: Some(fast()),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    sql(&t, REFUSE_WRITES).await;
    let workers = Workers::start(&t);
    wait_until(Duration::from_secs(20), "the 429, then refused records", || async {
        rx.received().len() > 1 || metric(&t, RECORD_FAILURES).await >= 2.0
    })
    .await;
    sql(&t, "DROP TRIGGER refuse").await;
    wait_until(Duration::from_secs(20), "the retry accepted", || async {
        rx.accepted().len() == 1
    })
    .await;
    workers.stop().await;
    let got = rx.received();
    assert_eq!(got.len(), 2, "one 429, one success");
    let spacing = got[1].at - got[0].at;
    assert!(
        spacing >= Duration::from_secs(7),
        "retried after {spacing:?}, before Retry-After"
    );
    let d = deliveries(&t).await;
    assert_eq!((d[0].3.as_str(), d[0].4), ("sent", 2), "{d:?}");
}

#[tokio::test]
async fn a_receiver_refusing_one_event_stalls_nothing_else() {
    let rx = Receiver::start().await;
    let poison = "alpha: migration link is NOT_SYNCED (first check)";
    rx.reply_when(move |b| b.contains(poison), Reply::status(500, "rollup_error"));
    let port = free_port();
    let t = spawn_app_with(Setup {
        top: http_listen(port),
        channels: slack("ops", &rx.url("/hook")),
        delivery: Some(fast()),
        ..Setup::default()
    })
    .await;
    let daemon = t.run();
    let arrived = |text: &'static str| {
        let rx = rx.clone();
        move || {
            let rx = rx.clone();
            async move { bodies(&rx).contains(text) }
        }
    };
    wait_until(
        Duration::from_secs(30),
        "beta's first event",
        arrived("beta: migration link is SYNCED (first check)"),
    )
    .await;
    t.sim.set(ORG_B, Behavior::status("NOT_SYNCED"));
    wait_until(
        Duration::from_secs(30),
        "beta's change",
        arrived("beta: migration link fell back to NOT_SYNCED"),
    )
    .await;
    // alpha changes too; its change must wait behind alpha's refused event, and beta's next
    // change must still pass both.
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    wait_until(Duration::from_secs(10), "alpha's change recorded", || async {
        t.event_kinds(ORG_A).await.len() == 2
    })
    .await;
    t.sim.set(ORG_B, Behavior::status("SYNCED"));
    wait_until(
        Duration::from_secs(30),
        "beta's second change",
        arrived("beta: migration link SYNCED (was NOT_SYNCED"),
    )
    .await;
    assert!(
        !bodies(&rx).contains("alpha:"),
        "an alpha event overtook alpha's refused one"
    );

    let base = format!("http://127.0.0.1:{port}");
    let scrape = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        scrape.contains("linkwatch_channel_blocked{channel=\"ops\"} 1"),
        "{scrape}"
    );
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200, "a blocked channel is degraded, not down");
    assert_eq!(health.text().await.unwrap(), "degraded\n");
    let text = reqwest::get(format!("{base}/healthz?verbose"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.starts_with("degraded\n") && text.contains("channel \"ops\"") && text.contains("HTTP 500"),
        "{text}"
    );

    // The receiver is fixed: alpha's events follow, in their order.
    rx.clear_rules();
    wait_until(
        Duration::from_secs(30),
        "alpha's change",
        arrived("alpha: migration link SYNCED (was NOT_SYNCED"),
    )
    .await;
    let all = bodies(&rx);
    let first = all.find(poison).expect("alpha's first event delivered");
    let change = all.find("alpha: migration link SYNCED (was NOT_SYNCED").unwrap();
    assert!(first < change, "{all}");
    wait_until(Duration::from_secs(10), "the channel unblocked", || async {
        metric(&t, "linkwatch_channel_blocked{channel=\"ops\"}").await == 0.0
    })
    .await;
    daemon.stop(Duration::from_secs(15)).await;
}

#[tokio::test]
async fn a_wall_clock_stepped_back_an_hour_does_not_stop_a_retry() {
    let rx = Receiver::start().await;
    rx.reply([Reply::status(503, ""), Reply::status(503, "")]);
    let t = spawn_app_with(Setup {
        channels: slack("ops", &rx.url("/hook")),
        delivery: Some(fast()),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    t.dispatch().await; // 503: a retry is scheduled
    t.app.clock.step(chrono::Duration::hours(-1));
    let workers = Workers::start(&t);
    wait_until(Duration::from_secs(10), "the retry after the step", || async {
        rx.received().len() == 2
    })
    .await;
    workers.stop().await;

    // After a restart the in-process schedule is gone, and the clock goes back one more hour:
    // the retry time written before is now an hour ahead of the clock, longer than any wait
    // the policy makes, so it counts as due. (The new app's clock starts unstepped.)
    let t = t.restart().await;
    t.app.clock.step(chrono::Duration::hours(-2));
    let workers = Workers::start(&t);
    wait_until(Duration::from_secs(10), "the retry after a restart", || async {
        rx.accepted().len() == 1
    })
    .await;
    workers.stop().await;
    assert_eq!(rx.received().len(), 3);
}

#[tokio::test]
async fn a_channel_worker_that_panics_is_restarted() {
    let rx = Receiver::start().await;
    let t = spawn_app_with(Setup {
        channels: format!(
            "[[channel]]\nname = \"console\"\nkind = \"console\"\n{}",
            slack("ops", &rx.url("/hook"))
        ),
        delivery: Some(fast()),
        ..Setup::default()
    })
    .await;
    // A poisoned console buffer makes the console channel panic on its next send.
    let buffer = t.console.clone();
    let _ = std::thread::spawn(move || {
        let _held = buffer.lock().unwrap();
        panic!("poisoning the console buffer (on purpose)");
    })
    .join();
    let workers = Workers::start(&t);
    t.check(ORG_A).await;
    let panics = r#"linkwatch_task_panics_total{task="channel",name="console"}"#;
    wait_until(Duration::from_secs(10), "the console worker panicked", || async {
        metric(&t, panics).await >= 1.0
    })
    .await;
    wait_until(Duration::from_secs(10), "slack delivered all the same", || async {
        rx.accepted().len() == 1
    })
    .await;
    t.console.clear_poison();
    wait_until(Duration::from_secs(10), "the console line once restarted", || async {
        t.console_lines().len() == 1
    })
    .await;
    workers.stop().await;
    assert!(t.console_lines()[0].contains("alpha: migration link is NOT_SYNCED"));
}

#[tokio::test]
async fn once_delivers_every_event_not_one_batch() {
    let rx = Receiver::start().await;
    let t = spawn_app_with(Setup {
        extra_orgs: 1,
        channels: format!(
            "[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            rx.url("/hook")
        ),
        ..Setup::default()
    })
    .await;
    t.sim.set(&extra_org(0), Behavior::status("NOT_SYNCED"));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_linkwatch"))
        .args(["once", "--config"])
        .arg(&t.config_path)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rx.accepted().len(), 3, "three orgs seen, three events");
    let d = deliveries(&t).await;
    assert!(d.len() == 3 && d.iter().all(|r| r.3 == "sent"), "{d:?}");
}

#[tokio::test]
async fn shutdown_delivers_everything_due() {
    let rx = Receiver::start().await;
    rx.reply((0..3).map(|_| Reply {
        delay: Duration::from_millis(300),
        ..Reply::status(200, "ok")
    }));
    let t = spawn_app_with(Setup {
        extra_orgs: 1,
        channels: format!(
            "[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            rx.url("/hook")
        ),
        ..Setup::default()
    })
    .await;
    t.sim.set(&extra_org(0), Behavior::status("NOT_SYNCED"));
    for org in [ORG_A, ORG_B, &extra_org(0)] {
        t.check(org).await;
    }
    let daemon = t.run();
    // SIGTERM while the first of three webhooks is on its way.
    rx.wait_for_requests(1, Duration::from_secs(10)).await;
    daemon.stop(Duration::from_secs(15)).await;
    assert_eq!(rx.accepted().len(), 3, "what was due went out before the exit");
    let d = deliveries(&t).await;
    assert!(d.iter().all(|r| r.3 == "sent"), "{d:?}");
}

#[tokio::test]
async fn retention_prunes_failed_deliveries_too() {
    let rx = Receiver::start().await;
    rx.reply([Reply::status(404, "no_service")]);
    let t = spawn_app_with(Setup {
        channels: slack("ops", &rx.url("/hook")),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    t.dispatch().await;
    assert_eq!(deliveries(&t).await[0].3, "failed");
    sql(
        &t,
        "UPDATE outbox SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-40 days')",
    )
    .await;
    let before = chrono::Utc::now() - chrono::Duration::days(30);
    t.app.store.prune(before).await.unwrap();
    assert!(
        deliveries(&t).await.is_empty(),
        "a failed delivery outlived the retention"
    );
}

/// Asks the daemon behind `tx` to reload, and returns once a whole reload has run: the channel
/// holds one request, so the third send returns only after the daemon took the second, which it
/// does once the first reload has started its new generation.
async fn reload_done(tx: &tokio::sync::mpsc::Sender<()>) {
    for _ in 0..3 {
        tx.send(()).await.unwrap();
    }
}

/// A reloadable daemon whose Slack channel delivered alpha's first event (`alpha`, its text) while
/// the database refuses to record it.
async fn delivered_but_unrecorded(
    rx: &Receiver,
    alpha: &str,
) -> (
    TestApp,
    tokio::sync::mpsc::Sender<()>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let t = spawn_app_with(Setup {
        channels: slack("ops", &rx.url("/hook")),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    sql(&t, REFUSE_WRITES).await;
    let (tx, shutdown, run) = run_reloadable(&t);
    wait_until(Duration::from_secs(20), "alpha posted", || async {
        posts_with(rx, alpha) >= 1
    })
    .await;
    (t, tx, shutdown, run)
}

/// `linkwatch run` on the test app's config, with a reload channel (SIGHUP).
fn run_reloadable(
    t: &TestApp,
) -> (
    tokio::sync::mpsc::Sender<()>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    use linkwatch::config::Config;
    use linkwatch::daemon::{self, Options};
    let config = Config::load(&t.config_path).unwrap();
    let (tx, reload) = tokio::sync::mpsc::channel(1);
    let path = t.config_path.clone();
    let shutdown = CancellationToken::new();
    let options = Options {
        reload: Some(reload),
        loader: Some(Box::new(move || Ok(Config::load(&path)?))),
        ..Options::default()
    };
    let run = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { daemon::run_with(config, shutdown, options).await.unwrap() }
    });
    (tx, shutdown, run)
}

#[tokio::test]
async fn a_reload_does_not_resend_a_delivered_but_unrecorded_event() {
    let rx = Receiver::start().await;
    let alpha = "alpha: migration link is NOT_SYNCED (first check)";
    let (t, tx, shutdown, run) = delivered_but_unrecorded(&rx, alpha).await;
    // The post was accepted but cannot be recorded; the new generation must remember it.
    reload_done(&tx).await;
    sql(&t, "DROP TRIGGER refuse").await;
    wait_until(Duration::from_secs(40), "alpha's delivery recorded", || async {
        deliveries(&t).await.iter().any(|d| d.3 == "sent" && d.1 == "alpha")
    })
    .await;
    shutdown.cancel();
    run.await.unwrap();
    assert_eq!(
        posts_with(&rx, alpha),
        1,
        "the delivered event was posted again after a reload"
    );
}

#[tokio::test]
async fn a_send_still_running_at_the_reload_deadline_is_not_sent_again() {
    let rx = Receiver::start().await;
    let alpha = "alpha: migration link is NOT_SYNCED (first check)";
    rx.reply_when(
        move |b| b.contains(alpha),
        Reply {
            delay: Duration::from_secs(3),
            ..Reply::status(200, "ok")
        },
    );
    let t = spawn_app_with(Setup {
        top: "shutdown_timeout = \"1s\"".into(),
        channels: slack("ops", &rx.url("/hook")),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    let (tx, shutdown, run) = run_reloadable(&t);
    wait_until(Duration::from_secs(20), "alpha's post on its way", || async {
        posts_with(&rx, alpha) >= 1
    })
    .await;
    // The receiver answers after 3 s; the reload waits 1 s for the send.
    reload_done(&tx).await;
    wait_until(Duration::from_secs(40), "alpha's delivery recorded", || async {
        deliveries(&t).await.iter().any(|d| d.3 == "sent" && d.1 == "alpha")
    })
    .await;
    shutdown.cancel();
    run.await.unwrap();
    assert_eq!(posts_with(&rx, alpha), 1, "a send cut off by the reload was sent again");
}

#[tokio::test]
async fn a_retry_after_on_a_row_past_the_hold_delays_only_that_row() {
    let rx = Receiver::start().await;
    // Past the hold after three failed attempts (quick ones, without Retry-After): alpha now
    // goes alone.
    let (t, workers) = alpha_past_the_hold(&rx, Reply::status(500, "rollup_error"), |_| {}).await;
    // Alpha's next post is answered 503 with Retry-After, and then everything is accepted. The
    // answer is queued before the rule is cleared, so that no post of alpha meets neither.
    rx.reply([Reply {
        retry_after: Some(RETRY_AFTER.as_secs()),
        ..Reply::status(503, "overloaded")
    }]);
    rx.clear_rules();
    wait_until(Duration::from_secs(20), "the 503", || async {
        posts_with_status(&rx, "alpha:", 503) == 1
    })
    .await;
    t.check(ORG_B).await;
    wait_until(Duration::from_secs(20), "beta's event and alpha's retry", || async {
        posts_with(&rx, "beta: migration link is SYNCED (first check)") == 1 && posts_with(&rx, "alpha:") == 1
    })
    .await;
    workers.stop().await;
    let got = rx.received();
    let answered = got.iter().position(|r| r.status == 503).unwrap();
    let retried = got[answered + 1..]
        .iter()
        .find(|r| r.body.contains("alpha:"))
        .expect("alpha posted again");
    let beta = got.iter().find(|r| r.body.contains("beta:")).unwrap();
    let (answered, retried, beta) = (got[answered].at, retried.at, beta.at);
    // Alpha's row waited for its Retry-After, though its backoff is 20 ms ...
    assert!(
        retried - answered >= RETRY_AFTER,
        "alpha posted again {:?} after a 503 with Retry-After: {}",
        retried - answered,
        RETRY_AFTER.as_secs()
    );
    // ... and beta's event went meanwhile: the channel was not paused.
    assert!(
        beta < answered + RETRY_AFTER,
        "beta's event waited {:?} after alpha's 503, for alpha's Retry-After",
        beta - answered
    );
    assert_eq!(rx.accepted().len(), 2, "one accepted post per event");
}

/// The `Retry-After` a receiver asks for in the tests of a channel's pause: short, for a short
/// test, but far longer than the retries' backoff (20 to 400 ms), so that only honouring it
/// explains a wait this long.
const RETRY_AFTER: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_503_with_retry_after_within_the_hold_pauses_the_whole_channel() {
    let rx = Receiver::start().await;
    // Alpha's first event is refused twice, then answered 503 with Retry-After on its third
    // attempt: the last of the channel's hold, so without the pause the hold would be spent
    // by that answer, and beta's event would go at once. (Earlier in the hold, alpha's
    // waiting row holds back beta's anyway.)
    rx.reply([
        Reply::status(500, "rollup_error"),
        Reply::status(500, "rollup_error"),
        Reply {
            retry_after: Some(RETRY_AFTER.as_secs()),
            ..Reply::status(503, "overloaded")
        },
    ]);
    let t = spawn_app_with(Setup {
        channels: slack("ops", &rx.url("/hook")),
        delivery: Some(fast()),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    let workers = Workers::start(&t);
    wait_until(Duration::from_secs(20), "the 503", || async {
        posts_with_status(&rx, "alpha:", 503) == 1
    })
    .await;
    // Beta's event, written while the channel is paused.
    t.check(ORG_B).await;
    wait_until(Duration::from_secs(20), "both events delivered", || async {
        rx.accepted().len() == 2
    })
    .await;
    workers.stop().await;
    let got = rx.received();
    let answered = got.iter().find(|r| r.status == 503).unwrap().at;
    let beta = got
        .iter()
        .find(|r| r.body.contains("beta: migration link is SYNCED (first check)"))
        .expect("beta's event posted");
    assert!(
        beta.at - answered >= RETRY_AFTER,
        "beta's event was posted {:?} after a 503 with Retry-After: {}",
        beta.at - answered,
        RETRY_AFTER.as_secs()
    );
    assert_eq!(posts_with(&rx, "alpha: migration link is NOT_SYNCED (first check)"), 1);
    assert_eq!(posts_with(&rx, "beta: migration link is SYNCED (first check)"), 1);
    assert_eq!(got.len(), 5, "three refusals and two accepted posts: {got:?}");
}

/// A Slack channel whose receiver answers every post about alpha with `refusal`, with quick
/// retries (20 ms, then `tune`), its workers running until alpha's event is past the hold
/// (refused four times: it now goes alone).
async fn alpha_past_the_hold(
    rx: &Receiver,
    refusal: Reply,
    tune: impl FnOnce(&mut DeliverySettings),
) -> (TestApp, Workers) {
    let status = refusal.status;
    rx.reply_when(|b| b.contains("alpha:"), refusal);
    let mut settings = fast();
    settings.retry.first_delay = Duration::from_millis(20);
    settings.retry.max_delay = Duration::from_millis(20);
    tune(&mut settings);
    let t = spawn_app_with(Setup {
        channels: slack("ops", &rx.url("/hook")),
        delivery: Some(settings),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    let workers = Workers::start(&t);
    wait_until(Duration::from_secs(20), "alpha refused four times", || async {
        posts_with_status(rx, "alpha:", status) >= 4
    })
    .await;
    (t, workers)
}

/// How many requests mentioning `text` were answered `status`.
fn posts_with_status(rx: &Receiver, text: &str, status: u16) -> usize {
    rx.received()
        .iter()
        .filter(|r| r.status == status && r.body.contains(text))
        .count()
}

#[tokio::test]
async fn blocked_follows_the_dispatchers_hold_not_the_age_of_the_row() {
    let rx = Receiver::start().await;
    rx.reply_when(|b| b.contains("alpha:"), Reply::status(500, "rollup_error"));
    let mut settings = fast();
    settings.retry.first_delay = Duration::from_secs(1);
    settings.retry.max_delay = Duration::from_secs(1);
    let t = spawn_app_with(Setup {
        channels: slack("ops", &rx.url("/hook")),
        delivery: Some(settings),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    t.dispatch().await;
    // Failed once, by a receiver that has been down for a while: the row is old, but its hold
    // has just begun, and the whole channel waits for it (nothing passes it, so it blocks no one).
    sql(
        &t,
        "UPDATE outbox SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-10 minutes')",
    )
    .await;
    let blocked = r#"linkwatch_channel_blocked{channel="ops"}"#;
    assert_eq!(deliveries(&t).await[0].4, 1, "one attempt so far");
    assert_eq!(metric(&t, blocked).await, 0.0, "within the hold, not blocked");
    // Past the hold (three failed attempts), it is.
    deliver_until(&t, "three failed attempts", || async { deliveries(&t).await[0].4 >= 3 }).await;
    t.dispatch().await;
    assert_eq!(metric(&t, blocked).await, 1.0, "past the hold, blocked");
}

#[tokio::test]
async fn a_slow_channel_does_not_use_up_the_final_delivery_of_the_others() {
    let rx = Receiver::start().await;
    rx.reply((0..2).map(|_| Reply {
        delay: Duration::from_secs(30),
        ..Reply::status(200, "ok")
    }));
    // The slow channel comes first.
    let t = spawn_app_with(Setup {
        channels: format!(
            "[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n\
             [[channel]]\nname = \"console\"\nkind = \"console\"\n",
            rx.url("/hook")
        ),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    t.check(ORG_B).await;
    // As at shutdown: everything due, within a deadline the slow receiver outlasts.
    let flush = t.app.dispatcher.dispatch_all_due(&t.app.store);
    assert!(tokio::time::timeout(Duration::from_secs(3), flush).await.is_err());
    assert_eq!(t.console_lines().len(), 2, "{:?}", t.console_lines());
}

#[tokio::test]
async fn a_429_on_a_row_past_the_hold_still_pauses_the_channel() {
    let rx = Receiver::start().await;
    // Past the hold after three failed attempts: alpha now goes alone.
    let (t, workers) = alpha_past_the_hold(&rx, Reply::status(500, "rollup_error"), |_| {}).await;
    // Slack rate-limits the webhook: its next post is answered 429 with Retry-After, and then
    // everything is accepted. (Queued before the rule is cleared, so that no post of alpha meets
    // neither.)
    rx.reply([Reply {
        retry_after: Some(2),
        ..Reply::status(429, "rate_limited")
    }]);
    rx.clear_rules();
    wait_until(Duration::from_secs(20), "the 429", || async {
        rx.received().iter().any(|r| r.status == 429)
    })
    .await;
    t.check(ORG_B).await;
    wait_until(Duration::from_secs(20), "beta's event", || async {
        bodies(&rx).contains("beta: migration link is SYNCED (first check)")
    })
    .await;
    workers.stop().await;
    let got = rx.received();
    let limited = got.iter().position(|r| r.status == 429).unwrap();
    let next = &got[limited + 1];
    let spacing = next.at - got[limited].at;
    assert!(
        spacing >= Duration::from_secs(2),
        "posted again {spacing:?} after a 429 with Retry-After: 2"
    );
}

#[tokio::test]
async fn a_channel_removed_by_a_reload_is_no_longer_blocked() {
    use linkwatch::channels::ConsoleSink;
    use linkwatch::config::Config;
    use linkwatch::dispatch::Dispatcher;
    let rx = Receiver::start().await;
    rx.reply_when(|b| b.contains("alpha:"), Reply::status(500, "rollup_error"));
    let mut settings = fast();
    settings.retry.first_delay = Duration::from_millis(20);
    settings.retry.max_delay = Duration::from_millis(20);
    let t = spawn_app_with(Setup {
        channels: slack("ops", &rx.url("/hook")),
        delivery: Some(settings.clone()),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    let blocked = r#"linkwatch_channel_blocked{channel="ops"}"#;
    let workers = Workers::start(&t);
    wait_until(Duration::from_secs(20), "ops blocked", || async {
        metric(&t, blocked).await == 1.0
    })
    .await;
    // A reload without "ops", in the daemon's order: the new dispatcher is built while the old
    // generation's workers still run, then they are stopped.
    let config = std::fs::read_to_string(&t.config_path).unwrap();
    let at = config.find("[[channel]]").unwrap();
    let without = format!("{}[[channel]]\nname = \"console\"\nkind = \"console\"\n", &config[..at]);
    let path = t.config_path.with_file_name("reloaded.toml");
    std::fs::write(&path, without).unwrap();
    let reloaded = Dispatcher::with_memories(
        &Config::load(&path).unwrap(),
        &ConsoleSink::default(),
        t.app.metrics.clone(),
        settings,
        t.app.dispatcher.memories(),
    )
    .unwrap();
    // The old worker goes on trying alpha until its generation stops.
    let before = rx.received().len();
    wait_until(Duration::from_secs(20), "the old worker tried again", || async {
        rx.received().len() > before + 1
    })
    .await;
    workers.stop().await;
    assert_eq!(metric(&t, blocked).await, 0.0, "a removed channel is still blocked");
    assert!(t.app.metrics.blocked().is_empty(), "/healthz still names it");
    drop(reloaded);
}

#[tokio::test]
async fn a_removed_channels_unrecorded_delivery_is_named_at_shutdown() {
    let (logs, _guard) = capture_logs();
    let rx = Receiver::start().await;
    let alpha = "alpha: migration link is NOT_SYNCED (first check)";
    let (t, tx, shutdown, run) = delivered_but_unrecorded(&rx, alpha).await;
    // Delivered, but not recorded; then "ops" is removed by a reload, and the daemon stops.
    let config = std::fs::read_to_string(&t.config_path).unwrap();
    let at = config.find("[[channel]]").unwrap();
    std::fs::write(
        &t.config_path,
        format!("{}[[channel]]\nname = \"console\"\nkind = \"console\"\n", &config[..at]),
    )
    .unwrap();
    reload_done(&tx).await;
    shutdown.cancel();
    run.await.unwrap();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", t.db_path.display()))
        .await
        .unwrap();
    let (event,): (String,) = sqlx::query_as("SELECT id FROM events ORDER BY seq LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logs.lines()
            .any(|l| l.contains("never recorded") && l.contains("ops") && l.contains(&event)),
        "alpha's delivery ({event}) is not named at shutdown:\n{logs}"
    );
}

/// A webhook channel named "hook" to `url`, for `Setup::channels`.
fn hook(url: &str) -> String {
    format!("[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{url}\"\n")
}

/// The `n` orgs a receiver refuses in the tests of the channel's hold: alpha and the first
/// `n - 1` extra orgs (beta is the one it accepts). Their events are written, alpha's first.
async fn refused_orgs(t: &TestApp, n: usize) -> Vec<String> {
    let orgs: Vec<String> = std::iter::once(ORG_A.to_owned())
        .chain((0..n - 1).map(extra_org))
        .collect();
    for org in &orgs {
        t.sim.set(org, Behavior::status("NOT_SYNCED"));
        t.check(org).await;
    }
    orgs
}

/// How many posts were refused with 500 before the first accepted post that mentions `text`.
fn refused_before(requests: &[crate::receiver::Received], text: &str) -> usize {
    requests
        .iter()
        .take_while(|r| !(r.status < 300 && r.body.contains(text)))
        .filter(|r| r.status == 500)
        .count()
}

const HOOK_BLOCKED: &str = r#"linkwatch_channel_blocked{channel="hook"}"#;

#[tokio::test]
async fn a_receiver_refusing_39_orgs_holds_a_40th_for_one_hold_only() {
    use linkwatch::retry::HOLD_ATTEMPTS;
    let rx = Receiver::start().await;
    // A bug on the receiver's side: it answers 500 to the events of every org but beta.
    rx.reply_when(|b| !b.contains(ORG_B), Reply::status(500, "rollup_error"));
    let t = spawn_app_with(Setup {
        extra_orgs: 38,
        channels: hook(&rx.url("/hook")),
        delivery: Some(fast()),
        ..Setup::default()
    })
    .await;
    let refused = refused_orgs(&t, 39).await;
    // beta's event comes last, behind the 39 refused ones.
    t.check(ORG_B).await;
    let workers = Workers::start(&t);
    wait_until(Duration::from_secs(60), "beta's event", || async {
        posts_with(&rx, ORG_B) == 1
    })
    .await;
    // The channel held the others back for one hold (its first refused event tried three
    // times); after that each refused org held back only itself: its event was tried once, and
    // beta's went.
    let hold = usize::try_from(HOLD_ATTEMPTS).unwrap();
    let most = hold + (refused.len() - 1);
    let before = refused_before(&rx.received(), ORG_B);
    assert!(
        before <= most,
        "beta's event waited behind {before} refused posts, more than one hold ({hold} attempts of the first refused org) and one try of each other one ({most} in all)"
    );

    // The 39 are still retried, and the channel says it is blocked. Each post is read once:
    // rescanning thousands of posts every 25 ms on the runtime the workers share starved them.
    let tally = std::cell::RefCell::new((0, vec![0; refused.len()]));
    wait_until(Duration::from_secs(30), "every refused org retried", || async {
        let mut tally = tally.borrow_mut();
        let new = rx.received_from(tally.0);
        tally.0 += new.len();
        for r in &new {
            if let Some(i) = refused.iter().position(|o| r.body.contains(o.as_str())) {
                tally.1[i] += 1;
            }
        }
        tally.1.iter().all(|&n| n >= 2)
    })
    .await;
    assert_eq!(metric(&t, HOOK_BLOCKED).await, 1.0);

    // A second event of every org: beta's goes at once (after at most the send under way), not
    // behind the retries of the others.
    for org in &refused {
        t.sim.set(org, Behavior::status("SYNCED"));
        t.check(org).await;
    }
    t.sim.set(ORG_B, Behavior::status("NOT_SYNCED"));
    t.check(ORG_B).await;
    assert_eq!(t.event_kinds(ORG_B).await, ["first_seen", "status_changed"]);
    let from = rx.received().len();
    wait_until(Duration::from_secs(20), "beta's change", || async {
        posts_with(&rx, ORG_B) == 2
    })
    .await;
    let between = refused_before(&rx.received()[from..], ORG_B);
    assert!(between <= 1, "beta's change waited behind {between} refused posts");

    // The receiver is fixed: every event arrives once, each org's in order, and the channel is
    // no longer blocked.
    rx.clear_rules();
    wait_until(Duration::from_secs(30), "every event delivered", || async {
        rx.accepted().len() >= 2 * (refused.len() + 1)
    })
    .await;
    wait_until(Duration::from_secs(10), "the channel unblocked", || async {
        metric(&t, HOOK_BLOCKED).await == 0.0
    })
    .await;
    workers.stop().await;
    let accepted = rx.accepted();
    assert_eq!(accepted.len(), 2 * (refused.len() + 1), "an event was sent twice");
    for org in refused.iter().map(String::as_str).chain([ORG_B]) {
        let kinds: Vec<String> = accepted
            .iter()
            .filter(|r| r.body.contains(org))
            .map(|r| r.json()["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kinds, ["first_seen", "status_changed"], "org {org}");
    }
}

/// More orgs waiting for their retry than one step of the channel reads (`scan` 4, 6 orgs),
/// and then a fresh event of another org: it is found and sent, and so is the next one after a
/// restart, when this process knows nothing yet of the orgs that wait.
async fn a_fresh_event_is_found_behind_more_waiting_orgs_than_a_step_reads(database_url: Option<String>) {
    let rx = Receiver::start().await;
    rx.reply_when(|b| !b.contains(ORG_B), Reply::status(500, "rollup_error"));
    let mut settings = fast();
    settings.scan = 4;
    // Stored retry times up to an hour ahead count (see below).
    settings.retry.max_retry_after = Duration::from_secs(3600);
    let t = spawn_app_with(Setup {
        extra_orgs: 5,
        database_url: database_url.clone(),
        channels: hook(&rx.url("/hook")),
        delivery: Some(settings),
        ..Setup::default()
    })
    .await;
    if database_url.is_some() {
        crate::pg::lead(&t.app.store).await;
    }
    let refused = refused_orgs(&t, 6).await;
    let workers = Workers::start(&t);
    wait_until(Duration::from_secs(20), "the channel blocked", || async {
        metric(&t, HOOK_BLOCKED).await == 1.0
    })
    .await;
    t.check(ORG_B).await;
    wait_until(Duration::from_secs(20), "beta's event", || async {
        posts_with(&rx, ORG_B) == 1
    })
    .await;
    // Every refused org was tried (none is forgotten beyond the scan).
    wait_until(Duration::from_secs(20), "every refused org tried", || async {
        let got = rx.received();
        refused.iter().all(|o| got.iter().any(|r| r.body.contains(o.as_str())))
    })
    .await;
    workers.stop().await;

    // A restart, with every refused org's retry half an hour ahead and a new event of beta:
    // the first read finds only waiting orgs, and the next one, at once, finds beta's.
    t.sim.set(ORG_B, Behavior::status("NOT_SYNCED"));
    t.check(ORG_B).await;
    let later = "UPDATE outbox SET next_attempt_at = {in_30_minutes} WHERE attempts > 0 AND state = 'pending'";
    match &database_url {
        None => {
            sql(
                &t,
                &later.replace(
                    "{in_30_minutes}",
                    "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+30 minutes')",
                ),
            )
            .await
        }
        Some(url) => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(
                later.replace("{in_30_minutes}", "now() + interval '30 minutes'"),
            ))
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
    }
    let t = t.restart().await;
    if database_url.is_some() {
        crate::pg::lead(&t.app.store).await;
    }
    let workers = Workers::start(&t);
    wait_until(Duration::from_secs(20), "beta's change after the restart", || async {
        posts_with(&rx, ORG_B) == 2
    })
    .await;
    workers.stop().await;
    assert_eq!(rx.accepted().len(), 2, "only beta's events were accepted");

    // Again, but every refused org's retry is due already: they are more than one read, and
    // each goes alone, yet beta's new event does not wait behind them.
    t.sim.set(ORG_B, Behavior::status("SYNCED"));
    t.check(ORG_B).await;
    let earlier = "UPDATE outbox SET next_attempt_at = {a_minute_ago} WHERE attempts > 0 AND state = 'pending'";
    match &database_url {
        None => {
            sql(
                &t,
                &earlier.replace("{a_minute_ago}", "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 minute')"),
            )
            .await
        }
        Some(url) => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(
                earlier.replace("{a_minute_ago}", "now() - interval '1 minute'"),
            ))
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
    }
    let t = t.restart().await;
    if database_url.is_some() {
        crate::pg::lead(&t.app.store).await;
    }
    let before = rx.received().len();
    let workers = Workers::start(&t);
    wait_until(
        Duration::from_secs(20),
        "beta's change after the second restart",
        || async { posts_with(&rx, ORG_B) == 3 },
    )
    .await;
    workers.stop().await;
    let got = rx.received();
    let ahead = got[before..].iter().take_while(|r| !r.body.contains(ORG_B)).count();
    assert!(ahead <= 1, "beta's event waited behind {ahead} refused posts");
}

#[tokio::test]
async fn a_fresh_event_is_found_behind_more_waiting_orgs_than_a_step_reads_sqlite() {
    a_fresh_event_is_found_behind_more_waiting_orgs_than_a_step_reads(None).await;
}

#[tokio::test]
async fn a_fresh_event_is_found_behind_more_waiting_orgs_than_a_step_reads_postgres() {
    let Some(db) = crate::pg::database().await else { return };
    a_fresh_event_is_found_behind_more_waiting_orgs_than_a_step_reads(Some(db.url.clone())).await;
}
