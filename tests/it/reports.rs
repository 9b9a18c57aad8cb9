//! Scheduled reports (`[[report]]`) as Slack, webhook and mail receivers get them; the cron job
//! firing once per slot on the real wall clock; a report in a time zone across a DST change; a
//! restart that does not send a slot again; a slot missed while down sent once, late (an hourly
//! report down for two hours); `linkwatch report --channel`.

use std::time::Duration;

use linkwatch::report::jobs::{self, Outcome};
use linkwatch::simulator::Behavior;

use crate::helpers::*;
use crate::receiver::{Received, Receiver};
use crate::smtp::SmtpServer;

fn hook(url: &str) -> String {
    format!("[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{url}\"\n")
}

fn report(name: &str, cron: &str, channels: &str) -> String {
    format!("\n[[report]]\nname = \"{name}\"\ncron = \"{cron}\"\nchannels = [{channels}]\n")
}

/// The reports a webhook receiver accepted, by report name.
fn reports(r: &Receiver, name: &str) -> Vec<serde_json::Value> {
    r.accepted()
        .iter()
        .map(Received::json)
        .filter(|b| b["type"] == "report" && b["report"]["name"] == name)
        .collect()
}

#[tokio::test]
async fn a_report_says_what_each_link_is_doing_on_slack_webhook_and_mail() {
    let slack = Receiver::start().await;
    let webhook = Receiver::start().await;
    let smtp = SmtpServer::start(false);
    let t = spawn_app_with(Setup {
        poll: "failures_before_alert = 2".into(),
        extra_orgs: 1,
        channels: format!(
            "[[channel]]\nname = \"ops\"\nkind = \"slack\"\nwebhook_url = \"{}\"\n\n{}\n{}\n{}",
            slack.url("/slack"),
            hook(&webhook.url("/hook")),
            mail_channel(smtp.addr.port(), &["oncall@example.com"]),
            report("daily", "*/1 * * * * *", "\"ops\", \"hook\", \"mail\""),
        ),
        ..Setup::default()
    })
    .await;
    let failing = extra_org(0);
    t.sim.set(
        &failing,
        Behavior::error(401, "", "You are not authorized for this resource."),
    );
    t.check(ORG_A).await; // NOT_SYNCED
    t.check(ORG_B).await; // SYNCED
    t.check(&failing).await;
    t.check(&failing).await;
    // Five hours later by the wall clock, alpha is still NOT_SYNCED.
    t.app.clock.step(chrono::Duration::hours(5));
    // The events of the checks are not what this test reads: send them first.
    deliver_until(&t, "the events sent", || async {
        t.app.store.gauges().await.unwrap().outbox_depth.is_empty()
    })
    .await;
    let before = (slack.accepted().len(), webhook.accepted().len(), smtp.mails().len());

    let outcome = jobs::run_due(&*t.app, &t.app.config.reports[0]).await.unwrap();
    assert!(matches!(outcome, Outcome::Enqueued { late: false, .. }), "{outcome:?}");
    deliver_until(&t, "the report on every channel", || async {
        slack.accepted().len() > before.0 && webhook.accepted().len() > before.1 && smtp.mails().len() > before.2
    })
    .await;

    let title = "linkwatch report: 1 of 3 links SYNCED, checks failing for 1";
    let post = slack.accepted().last().unwrap().json();
    assert_eq!(post["text"], title);
    let blocks = post["blocks"].to_string();
    assert!(blocks.contains("alpha: NOT_SYNCED for 5h"), "{blocks}");
    assert!(blocks.contains("org-0: no successful check yet"), "{blocks}");
    assert!(blocks.contains("org-0: 2 failed checks in a row: "), "{blocks}");
    assert!(blocks.contains("not authorized"), "{blocks}");
    assert!(post["blocks"].as_array().unwrap().len() <= 50);

    let received = webhook.accepted().last().unwrap().clone();
    let body = received.json();
    assert_eq!(body["type"], "report");
    assert_eq!(received.header("webhook-id"), body["id"].as_str().unwrap());
    assert!(body["id"].as_str().unwrap().starts_with("rpt_"));
    let r = &body["report"];
    assert_eq!((r["orgs"].as_u64(), r["synced"].as_u64()), (Some(3), Some(1)));
    assert_eq!(r["not_synced"][0]["org_name"], "alpha");
    assert_eq!(r["not_synced"][0]["status"], "NOT_SYNCED");
    let for_s = r["not_synced"][0]["for_s"].as_i64().unwrap();
    assert!((5 * 3600..5 * 3600 + 60).contains(&for_s), "{for_s}");
    assert_eq!(r["failing"][0]["org_name"], "org-0");
    assert_eq!(r["failing"][0]["failures"], 2);
    assert!(r["failing"][0]["reason"].as_str().unwrap().contains("not authorized"));
    assert_eq!(r["late"], false);

    // Unfolded: a long Subject header continues on the next line.
    let mail = smtp
        .mails()
        .last()
        .unwrap()
        .data
        .replace("\r\n ", " ")
        .replace("\n ", " ");
    assert!(mail.contains(&format!("Subject: [linkwatch] {title}")), "{mail}");
    assert!(mail.contains("alpha: NOT_SYNCED for 5h"), "{mail}");
    assert!(mail.contains("org-0: 2 failed checks in a row"), "{mail}");
    // Its HTML: a red band (checks are failing), then a short table per section.
    let raw = smtp.mails().last().unwrap().data.clone();
    let parsed = mailparse::parse_mail(raw.as_bytes()).unwrap();
    let html = parsed.subparts.iter().find(|p| p.ctype.mimetype == "text/html");
    let html = html.expect("an HTML part").get_body().unwrap();
    assert!(
        html.contains(&format!("background:#c62828;color:#fff;font-weight:600\">{title}<")),
        "{html}"
    );
    for header in ["<th", ">Org<", ">Status<", ">Failed in a row<", ">Why<"] {
        assert!(html.contains(header), "{header}: {html}");
    }
    assert!(
        html.contains(">alpha</td>") && html.contains(">NOT_SYNCED</td>") && html.contains(">5h</td>"),
        "{html}"
    );
    assert!(!html.contains("<ul>"), "tables, not lists: {html}");
}

/// Waits until the "tick" report has posted twice more: a running daemon has looked at every
/// report since.
async fn more_ticks(receiver: &Receiver) {
    let from = reports(receiver, "tick").len();
    wait_until(Duration::from_secs(20), "two more ticks", || async {
        reports(receiver, "tick").len() >= from + 2
    })
    .await;
}

#[tokio::test]
async fn a_cron_report_fires_on_the_wall_clock_once_per_slot() {
    let receiver = Receiver::start().await;
    let t = spawn_app_with(Setup {
        channels: format!(
            "{}{}",
            hook(&receiver.url("/hook")),
            report("every-second", "*/1 * * * * *", "\"hook\"")
        ),
        ..Setup::default()
    })
    .await;
    let daemon = t.run();
    wait_until(Duration::from_secs(20), "four reports", || async {
        reports(&receiver, "every-second").len() >= 4
    })
    .await;
    daemon.stop(Duration::from_secs(15)).await;

    let received = reports(&receiver, "every-second");
    let mut slots: Vec<&str> = received.iter().map(|b| b["report"]["slot"].as_str().unwrap()).collect();
    let n = slots.len();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), n, "a slot was sent twice: {slots:?}");
    // Every slot recorded was delivered, once.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", t.db_path.display()))
        .await
        .unwrap();
    let recorded: Vec<String> =
        sqlx::query_scalar("SELECT slot FROM report_runs WHERE report = 'every-second' ORDER BY slot")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(recorded, slots);
    pool.close().await;
}

/// tokio-cron-scheduler's bug #113 stops repeated jobs for good: with no ticks at all, the
/// guard alone sends every slot, once, though it looks ten times a slot.
#[tokio::test]
async fn without_cron_ticks_the_guard_sends_each_slot_once() {
    let receiver = Receiver::start().await;
    let t = spawn_app_with(Setup {
        channels: format!(
            "{}{}",
            hook(&receiver.url("/hook")),
            report("every-second", "*/1 * * * * *", "\"hook\"")
        ),
        ..Setup::default()
    })
    .await;
    let stop = tokio_util::sync::CancellationToken::new();
    let settings = jobs::ReportJobSettings {
        guard_every: Duration::from_millis(100),
        ticker: false,
    };
    let task = tokio::spawn(jobs::run_with(t.app.clone(), stop.clone(), settings));
    deliver_until(&t, "three reports", || async {
        reports(&receiver, "every-second").len() >= 3
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    let mut slots: Vec<String> = reports(&receiver, "every-second")
        .iter()
        .map(|b| b["report"]["slot"].as_str().unwrap().to_owned())
        .collect();
    let n = slots.len();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), n, "a slot was sent twice: {slots:?}");
}

#[tokio::test]
async fn a_restart_does_not_resend_a_slot_and_a_slot_missed_while_down_comes_once_late() {
    let receiver = Receiver::start().await;
    let mut t = spawn_app_with(Setup {
        channels: format!(
            "{}{}{}",
            hook(&receiver.url("/hook")),
            report("daily", "0 0 9 * * *", "\"hook\""),
            // Proof of progress: once it has posted after a start, "daily" was looked at too.
            report("tick", "*/1 * * * * *", "\"hook\"")
        ),
        ..Setup::default()
    })
    .await;
    // It is 09:00:10 UTC by linkwatch's wall clock: the daily report is due.
    let now = chrono::Utc::now();
    let nine = now.date_naive().and_hms_opt(9, 0, 10).unwrap().and_utc();
    t.app.clock.step(nine - now);
    let daemon = t.run();
    wait_until(Duration::from_secs(20), "the daily report", || async {
        reports(&receiver, "daily").len() == 1
    })
    .await;
    more_ticks(&receiver).await;
    daemon.stop(Duration::from_secs(15)).await;

    // Restarted in the same minute: the 09:00 slot is recorded, so it is not sent again.
    t = t.restart().await;
    let daemon = t.run();
    more_ticks(&receiver).await;
    daemon.stop(Duration::from_secs(15)).await;
    assert_eq!(reports(&receiver, "daily").len(), 1, "the 09:00 report was sent again");

    // Down over the next day's 09:00, back at 12:00: that slot goes once, saying it is late.
    t.app.clock.step(chrono::Duration::hours(27));
    t = t.restart().await;
    let daemon = t.run();
    wait_until(Duration::from_secs(20), "the late report", || async {
        reports(&receiver, "daily").len() == 2
    })
    .await;
    more_ticks(&receiver).await;
    daemon.stop(Duration::from_secs(15)).await;
    let daily = reports(&receiver, "daily");
    assert_eq!(daily.len(), 2, "the late report was sent twice");
    let late = &daily[1];
    assert_eq!(late["report"]["late"], true);
    assert!(late["summary"].as_str().unwrap().contains("(late: for "), "{late}");
    assert!(late["report"]["slot"].as_str().unwrap().ends_with("T09:00:00.000Z"));
    assert_ne!(daily[0]["report"]["slot"], late["report"]["slot"]);
}

/// The wall clock set to `at` (linkwatch's own clock: the injected one).
fn set_clock(t: &TestApp, at: &str) {
    let at: chrono::DateTime<chrono::Utc> = at.parse().unwrap();
    t.app.clock.step(at - t.app.clock.now());
}

/// A 09:00 report in Europe/Berlin fires at 09:00 local on both sides of the change to summer
/// time (2026-03-29): 08:00 UTC the day before, 07:00 UTC the day after, once each, on time,
/// with its times named in that zone.
#[tokio::test]
async fn a_report_in_a_zone_fires_at_its_local_hour_across_a_dst_change() {
    let receiver = Receiver::start().await;
    let t = spawn_app_with(Setup {
        channels: format!(
            "{}{}timezone = \"Europe/Berlin\"\n{}",
            hook(&receiver.url("/hook")),
            report("morning", "0 0 9 * * *", "\"hook\""),
            report("tick", "*/1 * * * * *", "\"hook\"")
        ),
        ..Setup::default()
    })
    .await;
    set_clock(&t, "2026-03-28T07:59:55Z"); // 08:59:55 CET
    let daemon = t.run();
    wait_until(Duration::from_secs(30), "the 09:00 CET report", || async {
        reports(&receiver, "morning").len() == 1
    })
    .await;
    // The next morning, summer time: 09:00 CEST is 07:00 UTC.
    set_clock(&t, "2026-03-29T06:59:55Z");
    wait_until(Duration::from_secs(60), "the 09:00 CEST report", || async {
        reports(&receiver, "morning").len() == 2
    })
    .await;
    more_ticks(&receiver).await;
    daemon.stop(Duration::from_secs(15)).await;
    let morning = reports(&receiver, "morning");
    assert_eq!(morning.len(), 2, "{morning:?}");
    let slots: Vec<&str> = morning.iter().map(|m| m["report"]["slot"].as_str().unwrap()).collect();
    assert_eq!(slots, ["2026-03-28T08:00:00.000Z", "2026-03-29T07:00:00.000Z"]);
    for m in &morning {
        assert_eq!(m["report"]["late"], false, "{m}");
        assert_eq!(m["report"]["timezone"], "Europe/Berlin", "{m}");
        // At its slot (the zone's own timer), not at the guard's next look.
        let time = |k: &str| {
            m["report"][k]
                .as_str()
                .unwrap()
                .parse::<chrono::DateTime<chrono::Utc>>()
                .unwrap()
        };
        let after = time("generated_at") - time("slot");
        assert!(after < chrono::Duration::seconds(10), "{after} after its slot: {m}");
    }
    // The text channels name the zone's time.
    let summer: linkwatch::report::Report = serde_json::from_value(morning[1]["report"].clone()).unwrap();
    assert!(
        summer.text().contains("As of 2026-03-29 09:00 CEST."),
        "{}",
        summer.text()
    );
}

/// An hourly report down for two hours sends the latest hour once, late, though the hour before
/// it was missed too.
#[tokio::test]
async fn an_hourly_report_down_for_two_hours_sends_one_late_report() {
    let receiver = Receiver::start().await;
    let mut t = spawn_app_with(Setup {
        channels: format!(
            "{}{}{}",
            hook(&receiver.url("/hook")),
            report("hourly", "0 0 * * * *", "\"hook\""),
            report("tick", "*/1 * * * * *", "\"hook\"")
        ),
        ..Setup::default()
    })
    .await;
    set_clock(&t, "2026-11-30T10:00:10Z");
    let daemon = t.run();
    wait_until(Duration::from_secs(20), "the 10:00 report", || async {
        reports(&receiver, "hourly").len() == 1
    })
    .await;
    more_ticks(&receiver).await;
    daemon.stop(Duration::from_secs(15)).await;

    // Down over 11:00 and 12:00, back at 12:30: one report, for 12:00, late.
    t.app.clock.step(chrono::Duration::minutes(150));
    t = t.restart().await;
    let daemon = t.run();
    wait_until(Duration::from_secs(20), "the 12:00 report", || async {
        reports(&receiver, "hourly").len() == 2
    })
    .await;
    more_ticks(&receiver).await;
    daemon.stop(Duration::from_secs(15)).await;
    let hourly = reports(&receiver, "hourly");
    assert_eq!(hourly.len(), 2, "{hourly:?}");
    let sent: Vec<(&str, bool)> = hourly
        .iter()
        .map(|h| {
            (
                h["report"]["slot"].as_str().unwrap(),
                h["report"]["late"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sent,
        [("2026-11-30T10:00:00.000Z", false), ("2026-11-30T12:00:00.000Z", true)]
    );
}

#[tokio::test]
async fn linkwatch_report_sends_one_now() {
    let receiver = Receiver::start().await;
    let t = spawn_app_with(Setup {
        channels: hook(&receiver.url("/hook")),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    t.check(ORG_B).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_linkwatch"))
        .args(["report", "--channel", "hook", "--config"])
        .arg(&t.config_path)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("sent the report to hook (webhook): linkwatch report: 1 of 2 links SYNCED"),
        "{stdout}"
    );
    let body = receiver.accepted().last().unwrap().json();
    assert_eq!(body["report"]["not_synced"][0]["org_name"], "alpha");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_linkwatch"))
        .args(["report", "--channel", "nope", "--config"])
        .arg(&t.config_path)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no channel is named \"nope\" (channels: hook)"));

    // A mistyped database path: an error, no report of "nothing SYNCED", no new database.
    let sent = receiver.accepted().len();
    let missing = t.db_path.with_file_name("typo.db");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_linkwatch"))
        .args(["report", "--channel", "hook", "--config"])
        .arg(&t.config_path)
        .arg("--database")
        .arg(&missing)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no database at"),
        "{out:?}"
    );
    assert!(!missing.exists());
    assert_eq!(receiver.accepted().len(), sent);
}

/// On PostgreSQL: a slot is recorded once, a late one after a day down too, and only the leader
/// enqueues (a write without the lease is refused).
#[tokio::test]
async fn on_postgres_a_slot_is_enqueued_once_and_only_by_the_leader() {
    let Some(db) = crate::pg::database().await else { return };
    let receiver = Receiver::start().await;
    let t = spawn_app_with(Setup {
        database_url: Some(db.url.clone()),
        channels: format!(
            "{}{}",
            hook(&receiver.url("/hook")),
            report("daily", "0 0 9 * * *", "\"hook\"")
        ),
        ..Setup::default()
    })
    .await;
    let now = chrono::Utc::now();
    let nine = now.date_naive().and_hms_opt(9, 0, 10).unwrap().and_utc();
    t.app.clock.step(nine - now);
    let daily = &t.app.config.reports[0];

    let err = jobs::run_due(&*t.app, daily).await.expect_err("no lease, no report");
    assert!(
        err.chain().any(|e| e.to_string().contains("no longer leads")),
        "{err:#}"
    );

    crate::pg::lead(&t.app.store).await;
    let first = jobs::run_due(&*t.app, daily).await.unwrap();
    let Outcome::Enqueued { slot, late: false, .. } = first else {
        panic!("{first:?}")
    };
    assert_eq!(
        jobs::run_due(&*t.app, daily).await.unwrap(),
        Outcome::AlreadySent { slot }
    );

    t.app.clock.step(chrono::Duration::hours(27));
    let late = jobs::run_due(&*t.app, daily).await.unwrap();
    assert!(matches!(late, Outcome::Enqueued { late: true, .. }), "{late:?}");
    assert_eq!(jobs::run_due(&*t.app, daily).await.unwrap(), Outcome::NotDue);

    deliver_until(&t, "two reports", || async { reports(&receiver, "daily").len() == 2 }).await;
    let sent = reports(&receiver, "daily");
    assert_eq!(
        (sent[0]["report"]["late"].as_bool(), sent[1]["report"]["late"].as_bool()),
        (Some(false), Some(true))
    );
    t.app.store.close().await;
}

/// A report lists the live migrations: the one ready for cutover with its estimated time left,
/// and says that the deadline is an estimate.
#[tokio::test]
async fn a_report_says_which_migrations_are_ready_for_cutover_and_how_long_is_left() {
    let slack = Receiver::start().await;
    let webhook = Receiver::start().await;
    let t = spawn_app_with(Setup {
        atlas: one_live_migration(),
        channels: format!(
            "[[channel]]\nname = \"ops\"\nkind = \"slack\"\nwebhook_url = \"{}\"\n\n{}\n{}",
            slack.url("/slack"),
            hook(&webhook.url("/hook")),
            report("daily", "*/1 * * * * *", "\"ops\", \"hook\""),
        ),
        ..Setup::default()
    })
    .await;
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    t.check(ORG_A).await;
    t.check(ORG_B).await;
    t.sim.set_live_migration(
        MIGRATION_A,
        linkwatch::simulator::LiveMigrationBehavior::state("WORKING", true, Some(12)),
    );
    t.check_live_migration("payments-rs0").await;
    t.app.clock.step(chrono::Duration::hours(2));
    deliver_until(&t, "the events sent", || async {
        t.app.store.gauges().await.unwrap().outbox_depth.is_empty()
    })
    .await;
    let before = (slack.accepted().len(), webhook.accepted().len());
    jobs::run_due(&*t.app, &t.app.config.reports[0]).await.unwrap();
    deliver_until(&t, "the report on both channels", || async {
        slack.accepted().len() > before.0 && webhook.accepted().len() > before.1
    })
    .await;

    let post = slack.accepted().last().unwrap().json();
    assert_eq!(
        post["text"],
        "linkwatch report: 2 of 2 links SYNCED, 1 migration(s) ready for cutover"
    );
    let blocks = post["blocks"].to_string();
    assert!(
        blocks.contains("payments-rs0 (alpha): WORKING, READY for cutover, about 4d 21h left (estimated deadline"),
        "{blocks}"
    );
    assert!(blocks.contains("lag 12s"), "{blocks}");
    assert!(blocks.contains("not visible to linkwatch"), "{blocks}");

    let r = &webhook.accepted().last().unwrap().json()["report"];
    let m = &r["migrations"][0];
    assert_eq!(
        (m["name"].as_str(), m["ready_for_cutover"].as_bool()),
        (Some("payments-rs0"), Some(true))
    );
    let left = m["left_s"].as_i64().unwrap();
    assert!((118 * 3600 - 60..=118 * 3600).contains(&left), "{left}");
    assert!(m["estimated_deadline"].as_str().unwrap().ends_with('Z'));

    // Once it is COMPLETE, it leaves the report.
    t.sim.set_live_migration(
        MIGRATION_A,
        linkwatch::simulator::LiveMigrationBehavior::state("COMPLETE", false, None),
    );
    t.check_live_migration("payments-rs0").await;
    let rows = t.app.store.live_migrations().await.unwrap();
    let current = t.app.store.current().await.unwrap();
    let slot = linkwatch::report::Slot {
        zone: chrono_tz::Tz::UTC,
        name: "daily",
        at: t.app.clock.now(),
        late: false,
    };
    let config = &t.app.config;
    let again = linkwatch::report::Report::build(slot, &config.orgs, &current, 3, t.app.clock.now())
        .with_live_migrations(&config.migrations, &config.orgs, &rows, 3, t.app.clock.now());
    assert!(again.migrations.is_empty(), "{again:?}");
}

/// Retention lets a delivered report's event go (each holds a whole report, so a frequent
/// report would otherwise grow the history for ever), keeps one still being delivered, and
/// never lets a slot be sent again.
#[tokio::test]
async fn retention_prunes_delivered_reports_and_their_slots_are_not_sent_again() {
    prunes_delivered_reports(None).await;
}

#[tokio::test]
async fn on_postgres_retention_prunes_delivered_reports_too() {
    let Some(db) = crate::pg::database().await else { return };
    prunes_delivered_reports(Some(db.url.clone())).await;
}

async fn prunes_delivered_reports(database_url: Option<String>) {
    let on_postgres = database_url.is_some();
    let receiver = Receiver::start().await;
    let t = spawn_app_with(Setup {
        database_url,
        channels: format!(
            "{}{}",
            hook(&receiver.url("/hook")),
            report("daily", "0 0 9 * * *", "\"hook\"")
        ),
        ..Setup::default()
    })
    .await;
    if on_postgres {
        crate::pg::lead(&t.app.store).await;
    }
    let report_events = || async { t.events(None).await.into_iter().filter(|e| e.kind == "report").count() };
    let now = chrono::Utc::now();
    let nine = now.date_naive().and_hms_opt(9, 0, 10).unwrap().and_utc();
    t.app.clock.step(nine - now);
    let daily = &t.app.config.reports[0];
    let first = jobs::run_due(&*t.app, daily).await.unwrap();
    assert!(matches!(first, Outcome::Enqueued { .. }), "{first:?}");
    deliver_until(&t, "the first report", || async {
        reports(&receiver, "daily").len() == 1
    })
    .await;
    // The next day's slot is enqueued and not delivered yet.
    t.app.clock.step(chrono::Duration::hours(24));
    let Outcome::Enqueued { slot, .. } = jobs::run_due(&*t.app, daily).await.unwrap() else {
        panic!("the next day's slot is due")
    };
    assert_eq!(report_events().await, 2);
    // Younger than the retention: kept.
    let earlier = t.app.clock.now() - chrono::Duration::days(2);
    assert_eq!(t.app.store.prune(earlier).await.unwrap().reports, 0);
    assert_eq!(report_events().await, 2);

    let later = t.app.clock.now() + chrono::Duration::days(1);
    let pruned = t.app.store.prune(later).await.unwrap();
    assert_eq!((pruned.deliveries, pruned.reports), (1, 1), "{pruned:?}");
    assert_eq!(report_events().await, 1, "the report still to deliver is kept");
    assert_eq!(
        jobs::run_due(&*t.app, daily).await.unwrap(),
        Outcome::AlreadySent { slot },
        "the slot is still recorded"
    );

    deliver_until(&t, "the second report", || async {
        reports(&receiver, "daily").len() == 2
    })
    .await;
    assert_eq!(t.app.store.prune(later).await.unwrap().reports, 1);
    assert_eq!(report_events().await, 0);
    // Nothing comes back: no slot is sent again, though its event is gone.
    assert_eq!(
        jobs::run_due(&*t.app, daily).await.unwrap(),
        Outcome::AlreadySent { slot }
    );
    t.dispatch().await;
    assert_eq!(reports(&receiver, "daily").len(), 2);
    t.app.store.close().await;
}
