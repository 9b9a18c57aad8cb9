//! Notifications through real protocols: a Slack-like receiver, a real SMTP server, a webhook
//! receiver that checks signatures on its own.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use linkwatch::simulator::Behavior;
use sha2::Sha256;

use crate::helpers::*;
use crate::receiver::{Receiver, Reply};
use crate::smtp::SmtpServer;

pub fn slack(name: &str, url: &str) -> String {
    format!("[[channel]]\nname = \"{name}\"\nkind = \"slack\"\nwebhook_url = \"{url}\"\n")
}

/// The `deliveries` view, as (kind, org_name, channel, state, attempts, last_error).
pub async fn deliveries(t: &TestApp) -> Vec<(String, String, String, String, i64, Option<String>)> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", t.db_path.display()))
        .await
        .unwrap();
    let rows = sqlx::query_as(
        "SELECT kind, org_name, channel, state, attempts, last_error FROM deliveries ORDER BY created_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows
}

#[tokio::test]
async fn slack_gets_block_kit_with_a_text_that_says_what_to_do() {
    let rx = Receiver::start().await;
    let t = spawn_app_with(Setup {
        channels: slack("ops", &rx.url("/services/T000/B000/XXXX")),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    t.check(ORG_A).await;
    t.dispatch().await;
    // Both events were due at once: one digest, not two posts.
    let got = rx.received();
    assert_eq!(got.len(), 1);
    let body = got[0].json();
    assert_eq!(body["text"], "linkwatch: 2 events (1 first_seen, 1 status_changed)");
    let all = body.to_string();
    assert!(
        all.contains("alpha: migration link SYNCED (was NOT_SYNCED for"),
        "{all}"
    );

    // One event alone is a full message: title, org, status, advice.
    t.sim.set(ORG_A, Behavior::status("NOT_SYNCED"));
    t.check(ORG_A).await;
    t.dispatch().await;
    let body = rx.received()[1].json();
    let text = body["text"].as_str().unwrap();
    assert!(
        text.starts_with("alpha: migration link fell back to NOT_SYNCED after"),
        "{text}"
    );
    let blocks = body["blocks"].to_string();
    assert!(
        blocks.contains(ORG_A) && blocks.contains("SYNCED → *NOT_SYNCED*"),
        "{blocks}"
    );
    assert!(blocks.contains("link to the Atlas org broke"), "{blocks}");
    let d = deliveries(&t).await;
    assert!(d.iter().all(|r| r.3 == "sent" && r.4 == 1), "{d:?}");
}

#[tokio::test]
async fn slack_429_waits_for_retry_after_then_delivers() {
    let rx = Receiver::start().await;
    rx.reply([Reply {
        retry_after: Some(3),
        ..Reply::status(429, r#"{"ok":false,"error":"rate_limited","retry_after":3}"#)
    }]);
    let t = spawn_app_with(Setup {
        channels: slack("ops", &rx.url("/hook")),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    deliver_until(&t, "the retried delivery", || async { rx.accepted().len() == 1 }).await;
    let got = rx.received();
    assert_eq!(got.len(), 2, "one 429, one success");
    let spacing = got[1].at - got[0].at;
    assert!(
        spacing >= Duration::from_secs(3),
        "retried after {spacing:?}, before Retry-After"
    );
    assert_eq!(got[0].body, got[1].body, "the same message is retried");
    let d = deliveries(&t).await;
    assert_eq!((d[0].3.as_str(), d[0].4), ("sent", 2));
}

#[tokio::test]
async fn slack_5xx_retries_with_growing_backoff() {
    let rx = Receiver::start().await;
    rx.reply([Reply::status(500, "rollup_error"), Reply::status(503, "")]);
    let t = spawn_app_with(Setup {
        channels: slack("ops", &rx.url("/hook")),
        ..Setup::default()
    })
    .await;
    t.check(ORG_B).await;
    deliver_until(&t, "delivery after two server errors", || async {
        rx.accepted().len() == 1
    })
    .await;
    let got = rx.received();
    assert_eq!(got.len(), 3);
    // Backoff with jitter: at least half of 2 s, then at least half of 4 s.
    assert!(got[1].at - got[0].at >= Duration::from_millis(1000));
    assert!(got[2].at - got[1].at >= Duration::from_millis(2000));
}

#[tokio::test]
async fn slack_channel_not_found_stops_at_once() {
    let rx = Receiver::start().await;
    rx.reply([Reply::status(404, "channel_not_found")]);
    let t = spawn_app_with(Setup {
        channels: slack("ops", &rx.url("/hook")),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    t.dispatch().await;
    // Due again "now": a failed row is never picked up again.
    assert_eq!(t.dispatch().await, 0);
    assert_eq!(rx.received().len(), 1);
    let d = deliveries(&t).await;
    assert_eq!((d[0].3.as_str(), d[0].4), ("failed", 1));
    assert!(d[0].5.as_deref().unwrap().contains("channel_not_found"), "{d:?}");
}

#[tokio::test]
async fn fifty_events_due_at_once_make_one_digest() {
    let rx = Receiver::start().await;
    let t = spawn_app_with(Setup {
        channels: slack("ops", &rx.url("/hook")),
        ..Setup::default()
    })
    .await;
    // 50 orgs seen for the first time, written through the store's real path.
    for n in 0..50 {
        let id = linkwatch::config::OrgId::parse(&format!("{n:024x}")).unwrap();
        let event = linkwatch::detect::Event::FirstSeen {
            status: "NOT_SYNCED".into(),
        };
        let state = linkwatch::detect::OrgState {
            status: Some("NOT_SYNCED".into()),
            ..Default::default()
        };
        t.app
            .store
            .record_check(&linkwatch::store::CheckRecord {
                org_id: &id,
                org_name: &format!("org-{n}"),
                at: chrono::Utc::now(),
                outcome: &Ok("NOT_SYNCED".into()),
                state: &state,
                events: &[(event, vec!["ops".into()])],
                reminded: &[],
            })
            .await
            .unwrap();
    }
    t.dispatch().await;
    let got = rx.received();
    assert_eq!(got.len(), 1, "50 events became {} posts", got.len());
    let body = got[0].json();
    assert_eq!(body["text"], "linkwatch: 50 events (50 first_seen)");
    let all = body.to_string();
    assert!((0..50).all(|n| all.contains(&format!("org-{n}: migration link is NOT_SYNCED"))));
    assert!(body["blocks"].as_array().unwrap().len() <= 50);
    assert!(deliveries(&t).await.iter().all(|d| d.3 == "sent"));
}

fn email(name: &str, smtp: &SmtpServer, tls: bool) -> String {
    let (url, ca) = match (&smtp.ca_file, tls) {
        (Some(ca), true) => (
            format!("smtp://127.0.0.1:{}?tls=required", smtp.addr.port()),
            format!("ca_file = \"{}\"\n", ca.display()),
        ),
        _ => (format!("smtp://127.0.0.1:{}", smtp.addr.port()), String::new()),
    };
    format!(
        "[[channel]]\nname = \"{name}\"\nkind = \"email\"\nsmtp_url = \"{url}\"\n{ca}\
         from = \"linkwatch <linkwatch@example.com>\"\nto = [\"dba@example.com\", \"oncall@example.com\"]\n"
    )
}

#[tokio::test]
async fn email_arrives_with_subject_recipients_and_both_parts() {
    let smtp = SmtpServer::start(false);
    let t = spawn_app_with(Setup {
        channels: email("dba-mail", &smtp, false),
        ..Setup::default()
    })
    .await;
    t.check(ORG_B).await;
    t.dispatch().await;
    // One SMTP transaction per recipient (so that one refused address stops no other), of the
    // same message, which names every recipient.
    let mails = smtp.wait_for_mails(2, Duration::from_secs(10)).await;
    let to: Vec<&str> = mails.iter().flat_map(|m| m.to.iter().map(String::as_str)).collect();
    assert_eq!(to, ["dba@example.com", "oncall@example.com"]);
    assert_eq!(mails[0].data, mails[1].data);
    let mail = &mails[0];
    assert_eq!(mail.from, "linkwatch@example.com");
    assert!(
        mail.data.contains("To: dba@example.com, oncall@example.com"),
        "{}",
        mail.data
    );
    assert!(
        mail.data
            .contains("Subject: [linkwatch] beta: migration link is SYNCED (first check)"),
        "{}",
        mail.data
    );
    assert!(mail.data.contains("multipart/alternative"));
    assert!(mail.data.contains("Content-Type: text/plain"));
    assert!(mail.data.contains("Content-Type: text/html"));
    assert!(mail.data.contains("ready for live migration"));
}

#[tokio::test]
async fn email_over_starttls_with_a_private_ca() {
    let smtp = SmtpServer::start(true);
    let t = spawn_app_with(Setup {
        channels: email("dba-mail", &smtp, true),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    t.dispatch().await;
    let mails = smtp.wait_for_mails(1, Duration::from_secs(10)).await;
    assert!(mails[0].data.contains("alpha: migration link is NOT_SYNCED"));
    let d = deliveries(&t).await;
    assert_eq!(d[0].3, "sent", "{d:?}");
}

#[tokio::test]
async fn starttls_without_the_ca_is_refused_and_kept_for_retry() {
    let smtp = SmtpServer::start(true);
    let channel = email("dba-mail", &smtp, true);
    let channel: String = channel
        .lines()
        .filter(|l| !l.starts_with("ca_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    let t = spawn_app_with(Setup {
        channels: channel,
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    t.dispatch().await;
    assert!(smtp.mails().is_empty());
    let d = deliveries(&t).await;
    assert_eq!((d[0].3.as_str(), d[0].4), ("pending", 1), "{d:?}");
}

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The receiver's own check, written from the Standard Webhooks spec, not from linkwatch's code.
fn verify(id: &str, timestamp: &str, body: &str, signature_header: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(WEBHOOK_SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    signature_header
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

#[test]
fn the_receivers_check_passes_the_spec_test_vector() {
    assert!(verify(
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        r#"{"test": 2432232314}"#,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    ));
}

#[tokio::test]
async fn webhooks_are_signed_versioned_and_keep_their_id_across_retries() {
    let rx = Receiver::start().await;
    rx.reply([Reply::status(500, "busy")]);
    let t = spawn_app_with(Setup {
        channels: format!(
            "[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{WEBHOOK_SECRET}\"\n",
            rx.url("/linkwatch")
        ),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    deliver_until(&t, "the webhook after one retry", || async { rx.accepted().len() == 1 }).await;
    let got = rx.received();
    assert_eq!(got.len(), 2);
    for r in &got {
        assert!(
            verify(
                &r.header("webhook-id"),
                &r.header("webhook-timestamp"),
                &r.body,
                &r.header("webhook-signature")
            ),
            "signature does not verify: {r:?}"
        );
    }
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    let body = got[1].json();
    assert_eq!(body["version"], 1);
    assert_eq!(body["type"], "first_seen");
    assert_eq!(body["id"], got[1].header("webhook-id"));
    assert_eq!(body["org"]["id"], ORG_A);
    assert_eq!(body["data"]["status"], "NOT_SYNCED");
    // A tampered body fails the receiver's check.
    assert!(!verify(
        &got[1].header("webhook-id"),
        &got[1].header("webhook-timestamp"),
        "{}",
        &got[1].header("webhook-signature")
    ));
}

#[tokio::test]
async fn routes_send_each_event_where_it_belongs() {
    let ops = Receiver::start().await;
    let all = Receiver::start().await;
    let channels = format!(
        "{}{}\
         [[route]]\nchannels = [\"ops\"]\nevents = [\"status_changed\"]\nto = [\"SYNCED\"]\norgs = [\"alpha\"]\n\
         [[route]]\nchannels = [\"all\"]\n",
        slack("ops", &ops.url("/ops")),
        slack("all", &all.url("/all"))
    );
    let t = spawn_app_with(Setup {
        channels,
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    t.check(ORG_B).await;
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    t.sim.set(ORG_B, Behavior::status("NOT_SYNCED"));
    t.check(ORG_A).await;
    t.check(ORG_B).await;
    t.dispatch().await;
    let d = deliveries(&t).await;
    let ops_rows: Vec<_> = d
        .iter()
        .filter(|r| r.2 == "ops")
        .map(|r| (r.0.as_str(), r.1.as_str()))
        .collect();
    assert_eq!(ops_rows, [("status_changed", "alpha")]);
    assert_eq!(d.iter().filter(|r| r.2 == "all").count(), 4);
    assert_eq!(ops.received().len(), 1);
    assert!(
        ops.received()[0].json()["text"]
            .as_str()
            .unwrap()
            .contains("alpha: migration link SYNCED")
    );
}

#[tokio::test]
async fn reminders_repeat_while_a_link_stays_broken() {
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
    assert!(!t.event_kinds(ORG_B).await.contains(&"reminder".to_owned()));
    // Two hours pass (on the app's wall clock, which the test steps instead of waiting).
    t.app.clock.step(chrono::Duration::hours(2));
    t.check(ORG_B).await;
    t.check(ORG_B).await; // the clock restarted: no second reminder
    assert_eq!(
        t.event_kinds(ORG_B).await.iter().filter(|k| *k == "reminder").count(),
        1
    );
    t.dispatch().await;
    let text = rx.received().last().unwrap().body.clone();
    assert!(
        text.contains("beta: reminder: migration link still NOT_SYNCED after 2h"),
        "{text}"
    );
}

#[tokio::test]
async fn notify_test_reports_success_and_the_receivers_refusal() {
    let rx = Receiver::start().await;
    let smtp = SmtpServer::start(false);
    let t = spawn_app_with(Setup {
        channels: format!("{}{}", slack("ops", &rx.url("/hook")), email("mail", &smtp, false)),
        ..Setup::default()
    })
    .await;
    let run = |channel: &'static str| {
        let config = t.config_path.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_linkwatch"))
                .args(["notify-test", "--channel", channel, "--config"])
                .arg(config)
                .output()
                .await
                .unwrap()
        }
    };
    let out = run("ops").await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        rx.received()[0].json()["text"]
            .as_str()
            .unwrap()
            .contains("linkwatch test message")
    );
    let out = run("mail").await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        smtp.wait_for_mails(1, Duration::from_secs(5)).await[0]
            .data
            .contains("linkwatch test message")
    );

    rx.reply([Reply::status(404, "no_service")]);
    let out = run("ops").await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HTTP 404: no_service"), "{stderr}");
    assert!(
        !stderr.contains(&rx.url("/hook")),
        "the webhook URL is a secret: {stderr}"
    );
}

#[tokio::test]
async fn a_retry_keeps_the_channel_in_event_order() {
    let rx = Receiver::start().await;
    rx.reply([Reply::status(500, "")]);
    let t = spawn_app_with(Setup {
        channels: slack("ops", &rx.url("/hook")),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    t.dispatch().await; // fails: alpha waits for its retry
    t.check(ORG_B).await;
    // beta is newer than alpha: it must not overtake it while alpha waits.
    assert_eq!(t.dispatch().await, 0);
    deliver_until(&t, "both events delivered", || async { rx.accepted().len() == 1 }).await;
    let body = rx.accepted()[0].body.clone();
    let (a, b) = (body.find("alpha:").unwrap(), body.find("beta:").unwrap());
    assert!(a < b, "{body}");
    assert!(deliveries(&t).await.iter().all(|d| d.3 == "sent"));
}

#[tokio::test]
async fn slack_is_paced_to_about_one_message_a_second() {
    let rx = Receiver::start().await;
    let t = spawn_app_with(Setup {
        channels: slack("ops", &rx.url("/hook")),
        ..Setup::default()
    })
    .await;
    deliver_until(&t, "three paced posts", || async {
        // Each check adds one event right after the previous post: the worker must still pause.
        let n = rx.received().len();
        match n {
            0 if t.event_kinds(ORG_A).await.is_empty() => {
                t.check(ORG_A).await;
            }
            1 if t.event_kinds(ORG_B).await.is_empty() => {
                t.check(ORG_B).await;
            }
            2 if t.event_kinds(ORG_A).await.len() == 1 => {
                t.sim.set(ORG_A, Behavior::status("SYNCED"));
                t.check(ORG_A).await;
            }
            _ => {}
        }
        rx.received().len() == 3
    })
    .await;
    let got = rx.received();
    for pair in got.windows(2) {
        assert!(
            pair[1].at - pair[0].at >= Duration::from_secs(1),
            "{:?}",
            pair[1].at - pair[0].at
        );
    }
}

#[tokio::test]
async fn the_slack_url_never_reaches_the_database_or_errors() {
    // Nothing listens here: every attempt fails, and its error is stored.
    let port = free_port();
    let secret_path = "services/T0SECRET/B0SECRET/XXSECRETXX";
    let t = spawn_app_with(Setup {
        channels: slack("ops", &format!("http://127.0.0.1:{port}/{secret_path}")),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    t.dispatch().await;
    let d = deliveries(&t).await;
    let error = d[0].5.clone().unwrap();
    assert!(error.contains("could not connect"), "{error}");
    // Search the whole database file (and its WAL) for the secret part of the URL.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", t.db_path.display()))
        .await
        .unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let mut bytes = std::fs::read(&t.db_path).unwrap();
    bytes.extend(std::fs::read(t.db_path.with_extension("db-wal")).unwrap_or_default());
    assert!(
        !bytes.windows(b"SECRET".len()).any(|w| w == b"SECRET"),
        "the webhook URL leaked into the database"
    );
}

/// What `[http] public_url` (behind a proxy, under a sub-path) and the Cloud Manager origin give
/// a message: the way to the org, and one time format.
fn with_public_page(channels: String) -> Setup {
    Setup {
        top: format!(
            "{}\npublic_url = \"https://ops.example.com/linkwatch\"",
            http_listen(free_port())
        ),
        channels,
        ..Setup::default()
    }
}

fn is_shown_time(s: &str) -> bool {
    // 2026-12-04 22:34:58 UTC
    let b = s.as_bytes();
    s.len() == 23
        && s.ends_with(" UTC")
        && b[4] == b'-'
        && b[10] == b' '
        && b[13] == b':'
        && s[..19].chars().filter(char::is_ascii_digit).count() == 14
}

#[tokio::test]
async fn slack_links_to_the_org_in_cloud_manager_and_on_the_page() {
    let rx = Receiver::start().await;
    let t = spawn_app_with(with_public_page(slack("ops", &rx.url("/services/T000/B000/XXXX")))).await;
    t.check(ORG_A).await;
    t.dispatch().await;
    let blocks = rx.received()[0].json()["blocks"].to_string();
    let origin = t.sim.base_url();
    let origin = &origin[..origin.find("/api/").expect("the simulator's API path")];
    assert!(
        blocks.contains(&format!("<{origin}/v2#/org/{ORG_A}/projects|Cloud Manager org>")),
        "{blocks}"
    );
    assert!(
        blocks.contains(&format!("<https://ops.example.com/linkwatch/org/{ORG_A}|status page>")),
        "{blocks}"
    );
    let when = blocks
        .split("*When*\\n")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a When field");
    assert!(is_shown_time(when), "{when}");
}

#[tokio::test]
async fn email_has_the_status_colour_a_short_table_and_the_links() {
    let smtp = SmtpServer::start(false);
    let t = spawn_app_with(with_public_page(email("dba-mail", &smtp, false))).await;
    t.check(ORG_B).await;
    t.dispatch().await;
    let mails = smtp.wait_for_mails(1, Duration::from_secs(10)).await;
    let parsed = mailparse::parse_mail(mails[0].data.as_bytes()).unwrap();
    let part = |mime: &str| {
        parsed
            .subparts
            .iter()
            .find(|p| p.ctype.mimetype == mime)
            .unwrap_or_else(|| panic!("no {mime} part"))
            .get_body()
            .unwrap()
    };
    let (text, html) = (part("text/plain"), part("text/html"));
    // beta is SYNCED: the page's green band, then the table's rows.
    assert!(html.contains("background:#2e7d32"), "{html}");
    for row in [">Org<", ">When<", ">What to do<", ">Open<"] {
        assert!(html.contains(row), "{row} missing: {html}");
    }
    assert!(
        html.contains(&format!(
            "<a href=\"https://ops.example.com/linkwatch/org/{ORG_B}\">status page</a>"
        )),
        "{html}"
    );
    assert!(
        text.contains(&format!("status page: https://ops.example.com/linkwatch/org/{ORG_B}")),
        "{text}"
    );
    let time = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("time: "))
        .expect("a time line");
    assert!(is_shown_time(time), "{time}");

    // The link falling back from SYNCED: orange; then checks failing: red, as on the page.
    let html_of = |data: &str| {
        let parsed = mailparse::parse_mail(data.as_bytes()).unwrap();
        let html = parsed.subparts.iter().find(|p| p.ctype.mimetype == "text/html");
        html.expect("an HTML part").get_body().unwrap()
    };
    let sent = smtp.mails().len();
    t.sim.set(ORG_B, Behavior::status("NOT_SYNCED"));
    t.check(ORG_B).await;
    t.dispatch().await;
    let mails = smtp.wait_for_mails(sent + 1, Duration::from_secs(10)).await;
    let html = html_of(&mails.last().unwrap().data);
    assert!(
        html.contains("background:#ef6c00") && html.contains("NOT_SYNCED"),
        "{html}"
    );
    t.sim.set(ORG_B, Behavior::error(500, "", "the server fell over"));
    for _ in 0..3 {
        t.check(ORG_B).await;
    }
    t.dispatch().await;
    let mails = smtp.wait_for_mails(sent + 2, Duration::from_secs(10)).await;
    let html = html_of(&mails.last().unwrap().data);
    assert!(
        html.contains("background:#c62828") && !html.contains("background:#2e7d32"),
        "{html}"
    );
}
