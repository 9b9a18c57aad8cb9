//! What receivers refuse, and how little of it fails: Slack's size limits, one bad event in a
//! digest, one refused mail recipient, a redirect to a login page, an error body that never ends.

use std::time::Duration;

use linkwatch::config::OrgId;
use linkwatch::detect::{Event, OrgState};
use linkwatch::store::CheckRecord;
use serde_json::Value;

use crate::delivery::{fast, posts_with};
use crate::helpers::*;
use crate::notify::{deliveries, slack};
use crate::receiver::{self, Receiver, Reply};
use crate::smtp::SmtpServer;

/// Why Slack would answer `400 invalid_blocks` to this body, if it would.
fn breaks_slack_limits(body: &str) -> Option<String> {
    let chars = |v: &Value| v.as_str().map_or(0, |s| s.chars().count());
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return Some("not JSON".into());
    };
    let text = chars(&v["text"]);
    if text == 0 || text > 4000 {
        return Some(format!("top-level text of {text} characters"));
    }
    let blocks = v["blocks"].as_array().cloned().unwrap_or_default();
    if blocks.len() > 50 {
        return Some(format!("{} blocks", blocks.len()));
    }
    for b in &blocks {
        let too_long = match b["type"].as_str() {
            Some("header") => chars(&b["text"]["text"]) > 150,
            Some("section") => {
                let fields = b["fields"].as_array().cloned().unwrap_or_default();
                chars(&b["text"]["text"]) > 3000 || fields.len() > 10 || fields.iter().any(|f| chars(&f["text"]) > 2000)
            }
            Some("context") => {
                let elements = b["elements"].as_array().cloned().unwrap_or_default();
                elements.len() > 10 || elements.iter().any(|e| chars(&e["text"]) > 3000)
            }
            _ => false,
        };
        if too_long {
            return Some(format!("a {} block over its limit", b["type"]));
        }
    }
    None
}

/// A receiver that refuses, as Slack does, what breaks Slack's limits.
async fn slack_like() -> Receiver {
    let rx = Receiver::start().await;
    rx.reply_when(
        |b| breaks_slack_limits(b).is_some(),
        Reply::status(400, "invalid_blocks"),
    );
    rx
}

/// Org `n` seen for the first time with `status`, through the store's real path, routed to "ops".
async fn first_seen(t: &TestApp, n: usize, name: &str, status: &str) {
    let id = OrgId::parse(&format!("{n:024x}")).unwrap();
    let state = OrgState {
        status: Some(status.into()),
        ..Default::default()
    };
    let event = Event::FirstSeen { status: status.into() };
    t.app
        .store
        .record_check(&CheckRecord {
            org_id: &id,
            org_name: name,
            at: t.app.clock.now(),
            outcome: &Ok(status.into()),
            state: &state,
            events: &[(event, vec!["ops".into()])],
            reminded: &[],
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_long_digest_is_split_into_posts_slack_accepts() {
    let rx = slack_like().await;
    let t = spawn_app_with(Setup {
        channels: slack("ops", &rx.url("/hook")),
        delivery: Some(fast()),
        ..Setup::default()
    })
    .await;
    // Statuses are any string Cloud Manager sends; long ones make long lines.
    let long = format!("LONG{}", "x".repeat(1400));
    for n in 0..120 {
        first_seen(&t, n, &format!("org-{n}"), &long).await;
    }
    t.dispatch().await;
    let refused: Vec<_> = rx.received().into_iter().filter(|r| r.status != 200).collect();
    assert!(
        refused.is_empty(),
        "Slack would refuse: {:?}",
        breaks_slack_limits(&refused[0].body)
    );
    assert!(rx.accepted().len() > 1, "120 long lines cannot fit one message");
    for n in 0..120 {
        assert_eq!(
            posts_with(&rx, &format!("org-{n}: migration link is LONG")),
            1,
            "org-{n} is not in exactly one post"
        );
    }
    assert!(deliveries(&t).await.iter().all(|d| d.3 == "sent"));
}

#[tokio::test]
async fn a_long_status_is_shortened_not_refused() {
    let rx = slack_like().await;
    let t = spawn_app_with(Setup {
        channels: slack("ops", &rx.url("/hook")),
        ..Setup::default()
    })
    .await;
    first_seen(&t, 1, "org-1", &format!("HUGE{}", "&y".repeat(4000))).await;
    t.dispatch().await;
    let got = rx.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].status,
        200,
        "Slack would refuse: {:?}",
        breaks_slack_limits(&got[0].body)
    );
    assert!(got[0].body.contains("org-1: migration link is HUGE"));
    assert!(got[0].body.contains('…'), "shortened text ends with an ellipsis");
    assert_eq!(deliveries(&t).await[0].3, "sent");
}

#[tokio::test]
async fn one_refused_event_does_not_sink_its_digest() {
    let rx = Receiver::start().await;
    rx.reply_when(|b| b.contains("BADMARK"), Reply::status(400, "invalid_blocks"));
    let t = spawn_app_with(Setup {
        channels: slack("ops", &rx.url("/hook")),
        delivery: Some(fast()),
        ..Setup::default()
    })
    .await;
    for n in 0..12 {
        let name = if n == 7 {
            "org-7-BADMARK".to_owned()
        } else {
            format!("org-{n}")
        };
        first_seen(&t, n, &name, "NOT_SYNCED").await;
    }
    t.dispatch().await;
    let d = deliveries(&t).await;
    for row in &d {
        if row.1 == "org-7-BADMARK" {
            assert_eq!(row.3, "failed", "{row:?}");
            assert!(row.5.as_deref().unwrap_or("").contains("invalid_blocks"), "{row:?}");
        } else {
            assert_eq!(row.3, "sent", "{row:?}");
        }
    }
    for n in (0..12).filter(|n| *n != 7) {
        assert_eq!(posts_with(&rx, &format!("org-{n}: migration link")), 1, "org-{n}");
    }
}

#[tokio::test]
async fn one_refused_recipient_does_not_stop_the_others() {
    let smtp = SmtpServer::start(false);
    smtp.refuse("gone@example.com");
    let t = spawn_app_with(Setup {
        channels: mail_channel(
            smtp.addr.port(),
            &["dba@example.com", "gone@example.com", "oncall@example.com"],
        ),
        ..Setup::default()
    })
    .await;
    t.check(ORG_B).await;
    t.dispatch().await;
    let mails = smtp.wait_for_mails(2, Duration::from_secs(10)).await;
    let mut to: Vec<String> = mails.iter().flat_map(|m| m.to.clone()).collect();
    to.sort();
    assert_eq!(to, ["dba@example.com", "oncall@example.com"]);
    // One message, the same for everyone: its Message-ID comes from the event id.
    let event_id = t.events(Some(ORG_B)).await[0].id.clone();
    let message_id = |data: &str| {
        data.lines()
            .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
            .map(str::to_owned)
    };
    let first = message_id(&mails[0].data).expect("a Message-ID");
    assert!(first.contains(&event_id), "{first}");
    assert_eq!(Some(first), message_id(&mails[1].data));
    let d = deliveries(&t).await;
    assert_eq!(d[0].3, "sent", "{d:?}");
    assert!(d[0].5.as_deref().unwrap_or("").contains("gone@example.com"), "{d:?}");
}

#[tokio::test]
async fn a_recipient_deferred_for_now_gets_the_mail_later_and_only_they() {
    let smtp = SmtpServer::start(false);
    smtp.defer("busy@example.com", true);
    let t = spawn_app_with(Setup {
        channels: mail_channel(
            smtp.addr.port(),
            &["dba@example.com", "busy@example.com", "oncall@example.com"],
        ),
        delivery: Some(fast()),
        ..Setup::default()
    })
    .await;
    t.check(ORG_B).await;
    t.dispatch().await;
    smtp.wait_for_mails(2, Duration::from_secs(10)).await;
    let d = deliveries(&t).await;
    assert_eq!(d[0].3, "pending", "{d:?}");
    assert!(d[0].5.as_deref().unwrap_or("").contains("busy@example.com"), "{d:?}");
    smtp.defer("busy@example.com", false);
    deliver_until(&t, "the retry", || async { deliveries(&t).await[0].3 == "sent" }).await;
    let mut to: Vec<String> = smtp.mails().iter().flat_map(|m| m.to.clone()).collect();
    to.sort();
    assert_eq!(
        to,
        ["busy@example.com", "dba@example.com", "oncall@example.com"],
        "each once"
    );
}

#[tokio::test]
async fn a_greylisted_recipient_does_not_make_the_others_get_a_repeat() {
    let smtp = SmtpServer::start(false);
    smtp.defer("busy@example.com", true);
    let t = spawn_app_with(Setup {
        channels: mail_channel(smtp.addr.port(), &["dba@example.com", "busy@example.com"]),
        delivery: Some(fast()),
        ..Setup::default()
    })
    .await;
    t.check(ORG_B).await;
    t.dispatch().await;
    smtp.wait_for_mails(1, Duration::from_secs(10)).await;
    // A new event arrives before the retry of the deferred one: the retry carries both.
    t.check(ORG_A).await;
    smtp.defer("busy@example.com", false);
    deliver_until(&t, "both sent", || async {
        let d = deliveries(&t).await;
        d.len() == 2 && d.iter().all(|r| r.3 == "sent")
    })
    .await;
    let got = |rcpt: &str, text: &str| {
        smtp.mails()
            .iter()
            .filter(|m| m.to.iter().any(|a| a == rcpt) && m.data.contains(text))
            .count()
    };
    for rcpt in ["dba@example.com", "busy@example.com"] {
        for org in ["beta:", "alpha:"] {
            assert_eq!(got(rcpt, org), 1, "{rcpt} got {org} {} times", got(rcpt, org));
        }
    }
}

#[tokio::test]
async fn a_redirect_is_not_a_delivery() {
    let rx = Receiver::start().await;
    let login = rx.url("/login");
    rx.reply([Reply::redirect(
        302,
        &format!("{login}?next=%2Fhook&session=SECRETSESSION"),
    )]);
    let t = spawn_app_with(Setup {
        channels: format!(
            "[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            rx.url("/hook")
        ),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    t.dispatch().await;
    let d = deliveries(&t).await;
    assert_ne!(d[0].3, "sent", "{d:?}");
    let error = d[0].5.clone().unwrap_or_default();
    assert!(error.contains("302") && error.contains(&login), "{error}");
    assert!(!error.contains("SECRETSESSION"), "{error}");
    assert!(
        rx.received().iter().all(|r| r.path == "/hook"),
        "the redirect was followed"
    );
}

#[tokio::test]
async fn an_error_body_that_never_ends_is_read_in_part() {
    let addr = receiver::endless_body(400, "invalid_payload: field `data` is wrong").await;
    let t = spawn_app_with(Setup {
        channels: format!(
            "[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://{addr}/hook\"\ntimeout = \"2s\"\n"
        ),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    t.dispatch().await;
    let d = deliveries(&t).await;
    assert_eq!(d[0].3, "failed", "{d:?}");
    let error = d[0].5.clone().unwrap_or_default();
    assert!(
        error.contains("HTTP 400: invalid_payload: field `data` is wrong"),
        "{error}"
    );
    assert!(
        error.chars().count() <= 400,
        "{} characters stored",
        error.chars().count()
    );
}

#[tokio::test]
async fn a_reload_remembers_which_recipients_have_the_mail() {
    use linkwatch::channels::ConsoleSink;
    use linkwatch::dispatch::Dispatcher;
    let smtp = SmtpServer::start(false);
    smtp.defer("busy@example.com", true);
    let t = spawn_app_with(Setup {
        channels: mail_channel(smtp.addr.port(), &["dba@example.com", "busy@example.com"]),
        delivery: Some(fast()),
        ..Setup::default()
    })
    .await;
    t.check(ORG_B).await;
    t.dispatch().await;
    smtp.wait_for_mails(1, Duration::from_secs(10)).await;
    // What a reload builds: a new dispatcher that takes over the running one's memories.
    let reloaded = Dispatcher::with_memories(
        &t.app.config,
        &ConsoleSink::default(),
        t.app.metrics.clone(),
        fast(),
        t.app.dispatcher.memories(),
    )
    .unwrap();
    smtp.defer("busy@example.com", false);
    wait_until(Duration::from_secs(20), "the retry", || async {
        reloaded.dispatch_all_due(&t.app.store).await.unwrap();
        deliveries(&t).await[0].3 == "sent"
    })
    .await;
    let mut to: Vec<String> = smtp.mails().iter().flat_map(|m| m.to.clone()).collect();
    to.sort();
    assert_eq!(to, ["busy@example.com", "dba@example.com"], "each once");
}

#[tokio::test]
async fn halving_a_mail_every_recipient_refused_sends_no_one_an_event_twice() {
    let smtp = SmtpServer::start(false);
    smtp.defer("busy@example.com", true);
    let t = spawn_app_with(Setup {
        channels: mail_channel(smtp.addr.port(), &["dba@example.com", "busy@example.com"]),
        delivery: Some(fast()),
        ..Setup::default()
    })
    .await;
    t.check(ORG_B).await;
    t.dispatch().await;
    // dba@ has beta's event; busy@ was deferred.
    smtp.wait_for_mails(1, Duration::from_secs(10)).await;
    t.check(ORG_A).await;
    // busy@'s mailbox is gone now, and dba@'s server refuses the next mail (alpha's, as a
    // content filter would): the retry, carrying beta and alpha, is refused by every recipient,
    // though dba@ accepted beta before.
    smtp.defer("busy@example.com", false);
    smtp.refuse("busy@example.com");
    smtp.refuse_next("dba@example.com");
    deliver_until(&t, "both ended", || async {
        let d = deliveries(&t).await;
        d.len() == 2 && d.iter().all(|r| r.3 != "pending")
    })
    .await;
    let got = |rcpt: &str, text: &str| {
        smtp.mails()
            .iter()
            .filter(|m| m.to.iter().any(|a| a == rcpt) && m.data.contains(text))
            .count()
    };
    assert_eq!(got("dba@example.com", "beta:"), 1, "dba@ got beta's event again");
    assert_eq!(got("dba@example.com", "alpha:"), 0);
    // beta reached a recipient; alpha reached none.
    let d = deliveries(&t).await;
    let state = |org: &str| d.iter().find(|r| r.1 == org).map(|r| r.3.clone()).unwrap_or_default();
    assert_eq!(
        (state("beta").as_str(), state("alpha").as_str()),
        ("sent", "failed"),
        "{d:?}"
    );
}

#[tokio::test]
async fn a_mail_given_up_leaves_no_recipient_progress_behind() {
    let smtp = SmtpServer::start(false);
    smtp.defer("busy@example.com", true);
    // Given up at the first failure: dba@ has the event, busy@ never will.
    let mut settings = fast();
    settings.retry.max_age = Duration::from_millis(1);
    let t = spawn_app_with(Setup {
        channels: mail_channel(smtp.addr.port(), &["dba@example.com", "busy@example.com"]),
        delivery: Some(settings),
        ..Setup::default()
    })
    .await;
    t.check(ORG_B).await;
    t.dispatch().await;
    assert_eq!(smtp.mails().len(), 1, "dba@ has it");
    assert_eq!(deliveries(&t).await[0].3, "failed");
    assert_eq!(
        t.app.dispatcher.mail_progress("mail"),
        0,
        "who has the mail of an event that ended is still kept"
    );
}
