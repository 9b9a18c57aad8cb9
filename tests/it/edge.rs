//! The edge where linkwatch meets the outside: every outside call bounded by its caller, every
//! outside text through one gate. Each case the way a user meets it: an SMTP server that accepts
//! and never speaks, a relay that refuses the login, a NUL byte in a receiver's or Cloud
//! Manager's answer on PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use linkwatch::simulator::Behavior;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::delivery::{Workers, fast, metric};
use crate::helpers::*;
use crate::notify::{deliveries, slack};
use crate::receiver::{Receiver, Reply};

/// A server that accepts connections and never writes a byte (a tarpit, a firewall that accepts
/// and drops, an implicit-TLS port spoken to in plain text): its port, and how many it accepted.
pub async fn silent_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (port, accepted)
}

/// An SMTP relay that greets, offers AUTH and refuses every login with 535.
async fn refusing_relay() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 relay.test ESMTP\r\n").await.unwrap();
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
                    let answer: &[u8] = match verb.as_str() {
                        "EHLO" => b"250-relay.test\r\n250 AUTH PLAIN LOGIN\r\n",
                        "AUTH" => b"535 5.7.8 Authentication \x1b[31mcredentials\x00 invalid\r\n",
                        "QUIT" => b"221 bye\r\n",
                        _ => b"530 5.7.0 Authentication required\r\n",
                    };
                    if write.write_all(answer).await.is_err() || verb == "QUIT" {
                        break;
                    }
                }
            });
        }
    });
    port
}

pub fn mail_to(port: u16, extra: &str) -> String {
    format!(
        "[[channel]]\nname = \"mail\"\nkind = \"email\"\nsmtp_url = \"smtp://127.0.0.1:{port}\"\n\
         from = \"linkwatch@example.com\"\nto = [\"ops@example.com\"]\ntimeout = \"1s\"\n{extra}"
    )
}

async fn notify_test(t: &TestApp, channel: &str) -> std::process::Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_linkwatch"))
        .args(["notify-test", "--channel", channel, "--config"])
        .arg(&t.config_path)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("notify-test ended (it waited on a server that never answers)")
        .unwrap()
}

#[tokio::test]
async fn a_silent_smtp_server_is_a_failed_attempt_and_the_other_channel_still_delivers() {
    let (port, accepted) = silent_server().await;
    let rx = Receiver::start().await;
    let t = spawn_app_with(Setup {
        channels: format!("{}{}", mail_to(port, ""), slack("ops", &rx.url("/hook"))),
        delivery: Some(fast()),
        ..Setup::default()
    })
    .await;
    let workers = Workers::start(&t);
    t.check(ORG_A).await;
    rx.wait_for_requests(1, Duration::from_secs(20)).await;
    // The mail's attempt ends as a failure that says what happened, is retried (a new
    // connection each time), and after the hold the channel says it is blocked.
    wait_until(Duration::from_secs(30), "the mail channel reported blocked", || async {
        metric(&t, r#"linkwatch_channel_blocked{channel="mail"}"#).await == 1.0
    })
    .await;
    let rows = deliveries(&t).await;
    let mail = rows.iter().find(|r| r.2 == "mail").unwrap();
    assert_eq!(mail.3, "pending");
    assert!(mail.4 >= 3, "attempts recorded: {mail:?}");
    let error = mail.5.clone().unwrap_or_default();
    assert!(
        error.contains("no answer from the SMTP server 127.0.0.1") && error.contains("while connecting"),
        "{error}"
    );
    assert!(accepted.load(Ordering::SeqCst) >= 3, "each attempt connects anew");
    assert_eq!(rows.iter().find(|r| r.2 == "ops").unwrap().3, "sent");
    workers.stop().await;
}

#[tokio::test]
async fn notify_test_against_a_silent_smtp_server_ends_within_the_timeout_and_says_why() {
    let (port, _) = silent_server().await;
    let t = spawn_app_with(Setup {
        channels: mail_to(port, ""),
        ..Setup::default()
    })
    .await;
    let out = notify_test(&t, "mail").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no answer from the SMTP server") && stderr.contains("smtps://"),
        "{stderr}"
    );
}

#[tokio::test]
async fn notify_test_names_a_refused_login() {
    let port = refusing_relay().await;
    let t = spawn_app_with(Setup {
        channels: mail_to(port, "username = \"linkwatch\"\npassword = \"wrong-password\"\n"),
        ..Setup::default()
    })
    .await;
    let out = notify_test(&t, "mail").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the relay refused the login (535)"), "{stderr}");
    assert!(!stderr.contains("wrong-password"), "{stderr}");
    assert!(
        !stderr.contains(['\u{1b}', '\0']),
        "the relay's control characters reached the terminal: {stderr:?}"
    );
}

/// The `deliveries` view of a PostgreSQL database, as (channel, state, attempts, last_error).
async fn pg_deliveries(url: &str) -> Vec<(String, String, i32, Option<String>)> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let rows = sqlx::query_as("SELECT channel, state, attempts, last_error FROM deliveries ORDER BY created_at")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows
}

#[tokio::test]
async fn on_postgres_a_nul_byte_in_a_receivers_answer_stalls_nothing() {
    let Some(db) = crate::pg::database().await else {
        return;
    };
    let rx = Receiver::start().await;
    // A proxy's gzip error page read as text: a NUL among the bytes.
    rx.reply([Reply::status(500, "upstream error \u{0}\u{1f}\u{8b} gzip")]);
    let t = spawn_app_with(Setup {
        database_url: Some(db.url.clone()),
        channels: slack("ops", &rx.url("/hook")),
        delivery: Some(fast()),
        ..Setup::default()
    })
    .await;
    crate::pg::lead(&t.app.store).await;
    let workers = Workers::start(&t);
    t.check(ORG_A).await;
    rx.wait_for_requests(2, Duration::from_secs(20)).await;
    t.check(ORG_B).await;
    wait_until(Duration::from_secs(20), "both events delivered", || async {
        let rows = pg_deliveries(&db.url).await;
        rows.len() == 2 && rows.iter().all(|r| r.1 == "sent")
    })
    .await;
    let rows = pg_deliveries(&db.url).await;
    assert_eq!(rows[0].2, 2, "the failed attempt was recorded: {rows:?}");
    assert_eq!(
        metric(&t, r#"linkwatch_delivery_record_failures_total{channel="ops"}"#).await,
        0.0
    );
    workers.stop().await;
}

#[tokio::test]
async fn on_postgres_a_nul_byte_in_cloud_managers_answer_is_recorded_as_a_failure() {
    let Some(db) = crate::pg::database().await else {
        return;
    };
    let t = spawn_app_with(Setup {
        database_url: Some(db.url.clone()),
        ..Setup::default()
    })
    .await;
    crate::pg::lead(&t.app.store).await;
    t.sim.set(
        ORG_A,
        Behavior::Raw {
            http: 502,
            content_type: "text/html".into(),
            body: "<html>bad gateway\u{0}\u{1b}[2J</html>".into(),
        },
    );
    for _ in 0..3 {
        t.check(ORG_A).await;
    }
    assert!(
        t.event_kinds(ORG_A).await.contains(&"check_failing".to_owned()),
        "{:?}",
        t.event_kinds(ORG_A).await
    );
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let details: Vec<(String,)> = sqlx::query_as("SELECT detail FROM failed_checks")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert_eq!(details.len(), 3);
    assert!(details.iter().all(|(d,)| d.contains("bad gateway[2J")), "{details:?}");
    let counted = metric(
        &t,
        &format!(r#"linkwatch_checks_total{{org_id="{ORG_A}",org_name="alpha",outcome="server_error"}}"#),
    )
    .await;
    assert_eq!(counted, 3.0);
}

#[tokio::test]
async fn a_nul_byte_in_a_status_string_is_not_stored() {
    let t = spawn_app().await;
    t.sim.set(
        ORG_A,
        Behavior::Raw {
            http: 200,
            content_type: "application/json".into(),
            body: r#"{"status":"SYN\u0000CED"}"#.into(),
        },
    );
    let report = t.check(ORG_A).await;
    assert_eq!(report.outcome, Ok("SYNCED".to_owned()));
}

#[tokio::test]
async fn a_check_whose_record_is_refused_is_still_counted() {
    let t = spawn_app().await;
    crate::delivery::sql(
        &t,
        "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END",
    )
    .await;
    let err = t.app.checker.check_org(org(&t.app, ORG_A)).await.unwrap_err();
    assert!(format!("{err:#}").contains("disk is full"), "{err:#}");
    let series = format!(r#"linkwatch_checks_total{{org_id="{ORG_A}",org_name="alpha",outcome="ok"}}"#);
    assert_eq!(
        metric(&t, &series).await,
        1.0,
        "the check happened, even if its record did not"
    );
}

#[tokio::test]
async fn a_receivers_control_characters_never_reach_the_terminal() {
    let rx = Receiver::start().await;
    rx.reply([Reply::status(500, "\u{1b}]0;pwned\u{7}\u{1b}[2J upstream \0 error")]);
    let t = spawn_app_with(Setup {
        channels: slack("ops", &rx.url("/hook")),
        ..Setup::default()
    })
    .await;
    let out = notify_test(&t, "ops").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("HTTP 500: ]0;pwned[2J upstream error"), "{stderr:?}");
    assert!(!stderr.contains(['\u{1b}', '\0', '\u{7}']), "{stderr:?}");
}

#[tokio::test]
async fn copy_history_carries_a_sqlite_history_that_holds_a_nul_into_postgres() {
    let Some(pg) = crate::pg::database().await else {
        return;
    };
    let t = spawn_app().await;
    t.sim.set(ORG_A, Behavior::error(500, "UNEXPECTED_ERROR", "x"));
    for _ in 0..3 {
        t.check(ORG_A).await;
    }
    // Written before the gate existed: a NUL and an escape code in stored texts.
    crate::delivery::sql(
        &t,
        "UPDATE check_failures SET detail = 'bad' || char(0) || 'gate' || char(27) || 'way'",
    )
    .await;
    crate::delivery::sql(&t, "UPDATE org_state SET last_error = 'x' || char(0) || 'y'").await;
    t.app.store.close().await;
    let from = linkwatch::config::Database::parse(&t.db_path.display().to_string(), std::path::Path::new("")).unwrap();
    let to = linkwatch::config::Database::parse(&pg.url, std::path::Path::new("")).unwrap();
    let copied = linkwatch::copy::copy_history(&from, &to).await.unwrap();
    assert_eq!(copied.written("check_failures"), 3, "{copied}");
    let pool = sqlx::PgPool::connect(&pg.url).await.unwrap();
    let details: Vec<(String,)> = sqlx::query_as("SELECT detail FROM failed_checks")
        .fetch_all(&pool)
        .await
        .unwrap();
    let last_error: Option<String> = sqlx::query_scalar("SELECT last_error FROM org_state WHERE org_id = $1")
        .bind(ORG_A)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert_eq!(details, vec![("badgateway".to_owned(),); 3]);
    assert_eq!(last_error.as_deref(), Some("xy"));
}

/// A dead receiver during a live run (it accepts and never answers, for longer than the test
/// lasts): while its first send is still outstanding, the other channel gets every event and
/// the checks go on at their interval.
#[tokio::test]
async fn a_dead_channel_delays_neither_the_other_channel_nor_the_checks() {
    let (dead, accepted) = silent_server().await;
    let rx = Receiver::start().await;
    let t = spawn_app_with(Setup {
        channels: format!(
            "[[channel]]\nname = \"dead\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{dead}/hook\"\ntimeout = \"5m\"\n{}",
            slack("ops", &rx.url("/hook"))
        ),
        top: "shutdown_timeout = \"1s\"".into(),
        ..Setup::default()
    })
    .await;
    let running = t.run();
    wait_until(Duration::from_secs(20), "the dead receiver holding a send", || async {
        accepted.load(Ordering::SeqCst) >= 1
    })
    .await;
    let asked = t.sim.requests_for(ORG_B);
    for status in ["SYNCED", "NOT_SYNCED", "SYNCED"] {
        t.sim.set(ORG_A, Behavior::status(status));
        let want = posts_about_alpha(&rx) + 1;
        wait_until(Duration::from_secs(20), "the change on the live channel", || async {
            posts_about_alpha(&rx) >= want
        })
        .await;
    }
    wait_until(Duration::from_secs(20), "beta checked at three more slots", || async {
        t.sim.requests_for(ORG_B) >= asked + 3
    })
    .await;
    // All of that while the dead channel's first send had not ended.
    let dead_rows: Vec<_> = deliveries(&t).await.into_iter().filter(|r| r.2 == "dead").collect();
    assert!(!dead_rows.is_empty());
    assert!(dead_rows.iter().all(|r| r.3 == "pending" && r.4 == 0), "{dead_rows:?}");
    // And the stop is bounded by shutdown_timeout, not by the send.
    running.stop(Duration::from_secs(15)).await;
}

fn posts_about_alpha(rx: &Receiver) -> usize {
    rx.accepted().iter().filter(|r| r.body.contains("alpha")).count()
}

#[tokio::test]
async fn notify_test_against_a_dead_receiver_names_where_and_why() {
    let port = free_port();
    let t = spawn_app_with(Setup {
        channels: slack("ops", &format!("http://127.0.0.1:{port}/services/T0/B0/SECRETPART")),
        ..Setup::default()
    })
    .await;
    let out = notify_test(&t, "ops").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("could not connect to 127.0.0.1:{port}: Connection refused")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("will retry") && !stderr.contains("client error"),
        "{stderr}"
    );
    assert!(!stderr.contains("SECRETPART"), "{stderr}");
}

/// The same for a mail relay that is not there: where, and why, once.
#[tokio::test]
async fn notify_test_against_a_dead_mail_relay_names_where_and_why() {
    let port = free_port();
    let t = spawn_app_with(Setup {
        channels: mail_channel(port, &["dba@example.com"]),
        ..Setup::default()
    })
    .await;
    let out = notify_test(&t, "mail").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(!stderr.contains("will retry"), "{stderr}");
}

/// A relay that accepts the mail and then never answers QUIT: the mail was delivered, and it is
/// not sent again (the goodbye waited outside the send's bound, so the dispatcher abandoned an
/// accepted mail and sent it again and again).
async fn relay_silent_after_the_mail() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 relay.test ESMTP\r\n").await.unwrap();
                let mut in_data = false;
                while let Ok(Some(line)) = lines.next_line().await {
                    if in_data {
                        if line == "." {
                            in_data = false;
                            count.fetch_add(1, Ordering::SeqCst);
                            write.write_all(b"250 2.0.0 queued\r\n").await.unwrap();
                        }
                        continue;
                    }
                    let verb = line.split([' ', ':']).next().unwrap_or("").to_ascii_uppercase();
                    let answer: &[u8] = match verb.as_str() {
                        "EHLO" => b"250 relay.test\r\n",
                        "DATA" => {
                            in_data = true;
                            b"354 go ahead\r\n"
                        }
                        // Never answered: the connection stays open and silent.
                        "QUIT" => continue,
                        _ => b"250 ok\r\n",
                    };
                    write.write_all(answer).await.unwrap();
                }
            });
        }
    });
    (port, accepted)
}

#[tokio::test]
async fn a_relay_silent_after_accepting_the_mail_gets_it_once() {
    let (port, accepted) = relay_silent_after_the_mail().await;
    let rx = Receiver::start().await;
    let t = spawn_app_with(Setup {
        channels: format!("{}{}", mail_to(port, ""), slack("ops", &rx.url("/hook"))),
        delivery: Some(fast()),
        ..Setup::default()
    })
    .await;
    let workers = Workers::start(&t);
    t.check(ORG_A).await;
    wait_until(Duration::from_secs(20), "the mail recorded as sent", || async {
        deliveries(&t).await.iter().any(|r| r.2 == "mail" && r.3 == "sent")
    })
    .await;
    // A second event: the channel goes on, and the first mail is not among what it sends.
    t.check(ORG_B).await;
    wait_until(Duration::from_secs(20), "the second mail recorded as sent", || async {
        deliveries(&t)
            .await
            .iter()
            .filter(|r| r.2 == "mail" && r.3 == "sent")
            .count()
            == 2
    })
    .await;
    workers.stop().await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "one mail per event");
}

/// The dispatcher's own bound, whatever the channel's: a send through `Outlet::send_by` is
/// abandoned at the deadline it is given, as a failed attempt.
#[tokio::test]
async fn a_send_is_abandoned_at_the_deadline_its_caller_sets() {
    let (port, _) = silent_server().await;
    let t = spawn_app_with(Setup {
        channels: format!(
            "[[channel]]\nname = \"slow\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\ntimeout = \"5m\"\n"
        ),
        ..Setup::default()
    })
    .await;
    let outlet = t.app.dispatcher.outlet("slow").unwrap();
    let message = linkwatch::text::Message {
        title: "test".into(),
        advice: None,
        org_name: "alpha".into(),
        org_id: ORG_A.into(),
        kind: "test".into(),
        event_id: "evt_test".into(),
        at: "2026-12-04T00:00:00.000Z".into(),
        data: serde_json::Value::Null,
        links: Vec::new(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    let sent = tokio::time::timeout(
        Duration::from_secs(30),
        outlet.send_by(std::slice::from_ref(&message), deadline),
    )
    .await
    .expect("abandoned at its deadline, not at the channel's 5m");
    match sent {
        Err(linkwatch::channels::SendError::Transient { error, .. }) => {
            assert!(error.contains("the send was abandoned"), "{error}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn report_to_a_silent_smtp_server_ends_within_the_timeout_and_says_why() {
    let (port, _) = silent_server().await;
    let t = spawn_app_with(Setup {
        channels: mail_to(port, ""),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_linkwatch"))
        .args(["report", "--channel", "mail", "--config"])
        .arg(&t.config_path)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("report --channel ended")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no answer from the SMTP server"), "{stderr}");
}
