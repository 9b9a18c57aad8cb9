//! The status page and its JSON API, over real HTTP against a running daemon: what needs action
//! on top, channels with undelivered notifications, escaping, the login, 404 and 405, and the
//! page as a headless browser renders it.

use std::path::PathBuf;
use std::time::Duration;

use linkwatch::simulator::Behavior;
use serde_json::Value;

use crate::helpers::*;
use crate::pg;
use crate::receiver::{Receiver, Reply};

/// An org whose checks fail, named like a script.
const ORG_X: &str = "5f0c00000000000000000c03";
const SCRIPT_NAME: &str = "<script>alert(1)</script>";

/// The default orgs (alpha NOT_SYNCED, beta SYNCED), an org whose checks fail and whose name is
/// a script, a webhook channel to a port where nothing listens (its deliveries wait) and one to
/// a receiver that answers 404 (its deliveries fail for good). Keep the receiver alive.
async fn setup(top: String, database_url: Option<String>) -> (Setup, Receiver) {
    let dead = free_port();
    let gone = Receiver::start().await;
    gone.reply_when(|_| true, Reply::status(404, "no_service"));
    let setup = Setup {
        top,
        database_url,
        channels: format!(
            "[[org]]\nid = \"{ORG_X}\"\nname = \"{SCRIPT_NAME}\"\n\n\
             [[channel]]\nname = \"console\"\nkind = \"console\"\n\n\
             [[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{dead}/hook\"\n\n\
             [[channel]]\nname = \"gone\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            gone.url("/gone")
        ),
        ..Setup::default()
    };
    (setup, gone)
}

async fn get_json(url: &str) -> Value {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

fn names(status: &Value) -> Vec<String> {
    status["orgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Runs the daemon until the page shows the three orgs checked, then checks the JSON API, on
/// whichever database `database_url` names (SQLite when `None`).
async fn the_json_api_shows_what_needs_action_first(database_url: Option<String>) {
    let port = free_port();
    let (setup, _gone) = setup(http_listen(port), database_url).await;
    let t = spawn_app_with(setup).await;
    t.sim.set(ORG_X, Behavior::error(500, "", "the server fell over"));
    let daemon = t.run();
    let base = format!("http://127.0.0.1:{port}");

    let status_url = format!("{base}/api/v1/status");
    wait_until(
        Duration::from_secs(20),
        "every org checked, the hook waiting and gone refusing",
        || async {
            let Ok(r) = reqwest::get(&status_url).await else {
                return false;
            };
            let Ok(v) = r.json::<Value>().await else { return false };
            let states: Vec<&str> = v["orgs"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|o| o["state"].as_str())
                .collect();
            states == ["failing", "not_synced", "synced"]
                && v["channels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["name"] == "hook" && c["last_error"].is_string())
                // Both first_seen events refused for good.
                && v["channels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["name"] == "gone" && c["failed"].as_i64() >= Some(2))
                // "failing" comes with its event (at failures_before_alert): delivered too.
                && !v["channels"].as_array().unwrap().iter().any(|c| c["name"] == "console")
        },
    )
    .await;
    let v = get_json(&status_url).await;
    assert_eq!(names(&v), [SCRIPT_NAME, "alpha", "beta"]);
    let failing = &v["orgs"][0];
    assert_eq!(failing["id"], ORG_X);
    assert!(failing["consecutive_failures"].as_i64().unwrap() >= 1);
    assert!(failing["last_error"].as_str().unwrap().contains("500"), "{failing}");
    let alpha = &v["orgs"][1];
    assert_eq!(alpha["status"], "NOT_SYNCED");
    assert!(alpha["since"].as_str().unwrap().ends_with('Z'), "{alpha}");
    assert!(alpha["last_checked_at"].as_str().unwrap().ends_with('Z'), "{alpha}");
    assert_eq!(alpha["last_error"], Value::Null);
    let hook = v["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "hook")
        .expect("the hook channel waits");
    assert!(hook["pending"].as_i64().unwrap() >= 2, "{hook}");
    assert_eq!(hook["failed"], 0, "{hook}");
    assert!(hook["oldest_pending_at"].as_str().unwrap().ends_with('Z'), "{hook}");
    assert_eq!(hook["configured"], true);
    let gone = v["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "gone")
        .unwrap();
    // A later event (check_failing) may still be on its way.
    assert!(gone["failed"].as_i64().unwrap() >= 2, "{gone}");
    assert!(gone["last_error"].as_str().unwrap().contains("404"), "{gone}");
    assert!(
        !v["channels"].as_array().unwrap().iter().any(|c| c["name"] == "console"),
        "the console delivered everything: {v}"
    );

    // beta leaves SYNCED: a broken link, above alpha that never synced.
    t.sim.set(ORG_B, Behavior::status("NOT_SYNCED"));
    wait_until(Duration::from_secs(20), "beta broken", || async {
        get_json(&status_url).await["orgs"][1]["state"] == "broken"
    })
    .await;
    let v = get_json(&status_url).await;
    assert_eq!(names(&v), [SCRIPT_NAME, "beta", "alpha"]);
    assert!(v["orgs"][1]["broken_since"].is_string());

    let changes = get_json(&format!("{base}/api/v1/orgs/beta/changes")).await;
    assert_eq!(changes["org_id"], ORG_B);
    let changes = changes["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(
        (&changes[0]["from"], &changes[0]["to"]),
        (&Value::Null, &Value::from("SYNCED"))
    );
    assert_eq!(
        (&changes[1]["from"], &changes[1]["to"]),
        (&Value::from("SYNCED"), &Value::from("NOT_SYNCED"))
    );
    assert!(changes[1]["at"].as_str().unwrap().ends_with('Z'));
    assert!(changes[1]["previous_lasted_s"].is_i64());
    let by_id = get_json(&format!("{base}/api/v1/orgs/{ORG_B}/changes")).await;
    assert_eq!(by_id["changes"].as_array().unwrap().len(), 2);

    // The org pages read the changes and the failed checks, newest first.
    wait_until(
        Duration::from_secs(20),
        "two failed checks of the failing org",
        || async { get_json(&status_url).await["orgs"][0]["consecutive_failures"].as_i64() >= Some(2) },
    )
    .await;
    let beta = reqwest::get(format!("{base}/org/beta"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        beta.contains("class=\"span synced\"") && beta.contains("class=\"span not-synced\""),
        "{beta}"
    );
    let failing = reqwest::get(format!("{base}/org/{ORG_X}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rows = failing
        .split("<table class=\"failures\">")
        .nth(1)
        .expect("a table of failed checks");
    // The same failure in a row is one row: how many, from the oldest to the newest.
    assert_eq!(rows.matches("the server fell over").count(), 1, "{rows}");
    let count: usize = rows
        .split("<td>× ")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .and_then(|n| n.parse().ok())
        .expect("how many checks failed so");
    assert!(count >= 2, "{rows}");
    let span = rows.split("<tr><td>").nth(1).unwrap().split('<').next().unwrap();
    let (oldest, newest) = span.split_once(" to ").expect("a span of times");
    // Checks a second apart can show the same second.
    assert!(oldest <= newest, "oldest first in the span: {span}");

    daemon.stop(Duration::from_secs(15)).await;
}

#[tokio::test]
async fn the_json_api_on_sqlite() {
    the_json_api_shows_what_needs_action_first(None).await;
}

#[tokio::test]
async fn the_json_api_on_postgres() {
    let Some(db) = pg::database().await else { return };
    the_json_api_shows_what_needs_action_first(Some(db.url.clone())).await;
}

/// The app with the page on a free port, running until all three orgs have been checked.
async fn running_page(top_extra: &str) -> (TestApp, Running, String, Receiver) {
    let (t, base, gone) = page_app(top_extra).await;
    let daemon = run_page(&t).await;
    (t, daemon, base, gone)
}

/// The app of [`running_page`], not running yet, and the page's address.
async fn page_app(top_extra: &str) -> (TestApp, String, Receiver) {
    let port = free_port();
    let (setup, gone) = setup(format!("{}\n{top_extra}", http_listen(port)), None).await;
    let t = spawn_app_with(setup).await;
    t.sim.set(ORG_X, Behavior::error(500, "", "the server fell over"));
    (t, format!("http://127.0.0.1:{port}"), gone)
}

/// Runs the daemon of `t` until all three orgs have been checked.
async fn run_page(t: &TestApp) -> Running {
    let daemon = t.run();
    let db = t.app.store.clone();
    wait_until(Duration::from_secs(20), "every org checked", || async {
        db.org_rows().await.map(|r| r.len() == 3).unwrap_or(false)
    })
    .await;
    daemon
}

/// Beta's last 25 days, on the app's wall clock: NOT_SYNCED, two failed checks 20 days ago,
/// SYNCED 12 days ago; the clock is back at now when it returns.
async fn beta_history(t: &TestApp) {
    let clock = &t.app.clock;
    clock.step(chrono::Duration::days(-25));
    t.sim.set(ORG_B, Behavior::status("NOT_SYNCED"));
    t.check(ORG_B).await;
    clock.step(chrono::Duration::days(5));
    t.sim.set(ORG_B, Behavior::error(503, "", "maintenance"));
    t.check(ORG_B).await;
    clock.step(chrono::Duration::hours(6));
    t.check(ORG_B).await;
    clock.step(chrono::Duration::days(8) - chrono::Duration::hours(6));
    t.sim.set(ORG_B, Behavior::status("SYNCED"));
    t.check(ORG_B).await;
    clock.step(chrono::Duration::days(12));
}

#[tokio::test]
async fn an_org_named_like_a_script_shows_as_text() {
    let (_t, daemon, base, _gone) = running_page("").await;
    for url in [format!("{base}/"), format!("{base}/org/{ORG_X}")] {
        let response = reqwest::get(&url).await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{url}"
        );
        let body = response.text().await.unwrap();
        assert!(body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{url}:\n{body}");
        assert!(
            !body.contains(SCRIPT_NAME),
            "{url} carries the script as markup:\n{body}"
        );
        assert!(!body.contains("<script"), "{url}:\n{body}");
    }
    daemon.stop(Duration::from_secs(15)).await;
}

#[tokio::test]
async fn the_org_page_draws_the_timeline_and_lists_changes_and_failures() {
    let (t, daemon, base, _gone) = running_page("").await;
    let page = reqwest::get(format!("{base}/org/alpha")).await.unwrap();
    assert_eq!(page.status(), 200);
    let body = page.text().await.unwrap();
    assert!(body.contains("<svg class=\"timeline\""), "{body}");
    assert!(body.contains("class=\"span not-synced\""), "{body}");
    assert!(body.contains("(first seen)"), "{body}");
    assert!(body.contains("http-equiv=\"refresh\""), "{body}");

    let failing = reqwest::get(format!("{base}/org/{ORG_X}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(failing.contains("the server fell over"), "{failing}");
    assert!(failing.contains("<line class=\"failure\""), "{failing}");
    drop(t);
    daemon.stop(Duration::from_secs(15)).await;
}

#[tokio::test]
async fn unknown_orgs_are_404_and_the_page_is_read_only() {
    let (_t, daemon, base, _gone) = running_page("").await;
    let http = reqwest::Client::new();
    let page = http.get(format!("{base}/org/nobody")).send().await.unwrap();
    assert_eq!(page.status(), 404);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("No org with the id or name &quot;nobody&quot; is configured")
    );
    let api = http
        .get(format!("{base}/api/v1/orgs/nobody/changes"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 404);
    let error: Value = api.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("nobody"));
    assert_eq!(
        http.get(format!("{base}/no/such/page")).send().await.unwrap().status(),
        404
    );

    for url in ["/", "/api/v1/status", "/org/alpha", "/metrics"] {
        let post = http.post(format!("{base}{url}")).send().await.unwrap();
        assert_eq!(post.status(), 405, "POST {url}");
        let delete = http.delete(format!("{base}{url}")).send().await.unwrap();
        assert_eq!(delete.status(), 405, "DELETE {url}");
    }
    daemon.stop(Duration::from_secs(15)).await;
}

#[tokio::test]
async fn a_login_guards_the_page_the_api_metrics_and_healthz_details_but_not_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("page-password");
    std::fs::write(&password, "correct horse\n").unwrap();
    let (_t, daemon, base, _gone) = running_page(&format!(
        "username = \"ops\"\npassword_file = \"{}\"",
        password.display()
    ))
    .await;
    let http = reqwest::Client::new();
    for url in [
        "/",
        "/org/alpha",
        "/api/v1/status",
        "/api/v1/orgs/alpha/changes",
        "/metrics",
        "/healthz?verbose",
    ] {
        let url = format!("{base}{url}");
        let none = http.get(&url).send().await.unwrap();
        assert_eq!(none.status(), 401, "{url} without a login");
        assert_eq!(
            none.headers()["www-authenticate"].to_str().unwrap(),
            "Basic realm=\"linkwatch\", charset=\"UTF-8\""
        );
        let wrong = http
            .get(&url)
            .basic_auth("ops", Some("correct hors"))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{url} with a wrong password");
        let other = http
            .get(&url)
            .basic_auth("admin", Some("correct horse"))
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 401, "{url} with a wrong user");
        let right = http
            .get(&url)
            .basic_auth("ops", Some("correct horse"))
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), 200, "{url} with the login");
    }
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "/healthz needs no login");
    // One word: "degraded" once the "gone" channel's delivery has been refused for good.
    let word = health.text().await.unwrap();
    assert!(word == "ok\n" || word == "degraded\n", "{word}");
    daemon.stop(Duration::from_secs(15)).await;
}

/// Debian's chromium, or `None` (with a note) when this machine has none and CI did not ask
/// for it (`LINKWATCH_REQUIRE_BROWSER=1`).
pub fn browser() -> Option<PathBuf> {
    let found = [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    if found.is_none() {
        crate::skip::skip(
            "LINKWATCH_REQUIRE_BROWSER",
            "a browser",
            "no chromium at /usr/bin/chromium; apt-get install chromium to run this test",
        );
    }
    found
}

/// Runs the headless browser on `url` with `args`, in a profile of its own, and returns stdout.
/// Screenshots of `pages` (path, file name) under `target/screenshots/`, `height` pixels tall,
/// each checked to be a PNG and its path printed (CI lists them).
pub async fn screenshots(browser: &std::path::Path, base: &str, pages: &[(&str, &str)], height: u32) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    for (page, file) in pages {
        let path = dir.join(file);
        let _ = std::fs::remove_file(&path);
        chromium(
            browser,
            &[
                format!("--screenshot={}", path.display()),
                format!("--window-size=1280,{height}"),
                "--hide-scrollbars".into(),
            ],
            &format!("{base}{page}"),
        )
        .await;
        let png = std::fs::read(&path).expect("the screenshot was written");
        assert!(png.starts_with(b"\x89PNG"), "{} is not a PNG", path.display());
        println!("screenshot of {page}: {}", path.display());
    }
}

/// Fails when the page broke its own Content-Security-Policy: the browser then drops what was
/// blocked (the styles, say) and renders the rest, so the DOM alone would not show it; the
/// console does (`--enable-logging=stderr`).
pub async fn chromium(browser: &std::path::Path, args: &[String], url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(browser)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            .args(["--enable-logging=stderr", "--v=0"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finishes within 60 s")
    .expect("chromium starts");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {stderr}");
    let blocked: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Content Security Policy"))
        .collect();
    assert!(
        blocked.is_empty(),
        "{url} breaks its Content-Security-Policy:\n{}",
        blocked.join("\n")
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_browser_renders_the_status_page() {
    let Some(browser) = browser() else { return };
    let (t, base, _gone) = page_app("").await;
    beta_history(&t).await;
    let daemon = run_page(&t).await;

    // What a person sees after rendering: the DOM as the browser built it. The default view
    // lists what needs attention, the org whose checks fail (retrying until its third failure)
    // first, and counts synced beta without listing it.
    let dom = chromium(&browser, &["--dump-dom".into()], &format!("{base}/")).await;
    let rows = org_rows(&dom);
    assert_eq!(rows.len(), 2, "{dom}");
    assert!(
        rows[0].contains("&lt;script&gt;alert(1)&lt;/script&gt;")
            && (rows[0].contains("class=\"badge failing\">check failing<")
                || rows[0].contains("class=\"badge retrying\">retrying<")),
        "{}",
        rows[0]
    );
    assert!(
        rows[1].contains("alpha") && rows[1].contains("class=\"badge not_synced\">not synced<"),
        "{}",
        rows[1]
    );
    assert_eq!(counted(&dom, "synced"), 1, "beta is counted");
    assert!(!dom.contains(">beta<"), "a synced org is not listed:\n{dom}");
    assert!(dom.contains("<form class=\"filters\" method=\"get\">"), "{dom}");
    // The form's answer, as the browser submits it: beta, NOT_SYNCED 13 of the 25 days known.
    let synced = chromium(
        &browser,
        &["--dump-dom".into()],
        &format!("{base}/?state=synced&name=&instance="),
    )
    .await;
    let rows = org_rows(&synced);
    assert_eq!(rows.len(), 1, "{synced}");
    assert!(
        rows[0].contains(">beta<") && rows[0].contains(">synced<"),
        "{}",
        rows[0]
    );
    assert!(
        rows[0].contains("<span>100%</span> · <span>100%</span> · <span class=\"low\">4")
            && (rows[0].contains("48.0%") || rows[0].contains("47.9%")),
        "SYNCED the last day and week, 12 of the 25 days known: {}",
        rows[0]
    );

    // Beta's 30 days: not known, NOT_SYNCED for 13 days with two failed checks, SYNCED since.
    let org = chromium(&browser, &["--dump-dom".into()], &format!("{base}/org/beta")).await;
    assert!(org.contains("<svg class=\"timeline\""), "no chart:\n{org}");
    let spans: Vec<&str> = org
        .split("<rect class=\"span ")
        .skip(1)
        .map(|r| r.split('"').next().unwrap())
        .collect();
    assert_eq!(spans, ["unknown", "not-synced", "synced"], "{org}");
    assert_eq!(org.matches("<line class=\"failure\"").count(), 2, "{org}");
    assert!(org.contains("maintenance"), "the failed checks are listed:\n{org}");

    screenshots(
        &browser,
        &base,
        &[
            ("/", "status-page.png"),
            ("/?state=all", "status-page-all.png"),
            ("/org/beta", "org-page.png"),
        ],
        900,
    )
    .await;
    daemon.stop(Duration::from_secs(15)).await;
}

#[tokio::test]
async fn the_demo_prints_the_page_address_and_serves_it_while_it_runs() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut demo = tokio::process::Command::new(env!("CARGO_BIN_EXE_linkwatch"))
        .args(["demo", "--duration", "60s", "--every", "1s"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let address = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.trim().strip_prefix("status page: ") {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("the demo ended without printing the page's address");
    })
    .await
    .expect("the demo prints the page's address");
    assert!(address.starts_with("http://127.0.0.1:"), "{address}");
    // Keep reading stdout, so the demo never blocks on a full pipe.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    wait_until(
        Duration::from_secs(20),
        "the demo's page shows its orgs and live migrations",
        || async {
            let Ok(r) = reqwest::get(&address).await else {
                return false;
            };
            r.status() == 200
                && r.text()
                    .await
                    .is_ok_and(|body| body.contains("payments") && body.contains("<h2>Live migrations</h2>"))
        },
    )
    .await;
    demo.kill().await.unwrap();
    drain.abort();
}

/// A `[http]` login (user `ops`, password `correct horse`) for [`running_page`], its password
/// in a file of `dir`.
fn login_lines(dir: &std::path::Path) -> String {
    let password = dir.join("page-password");
    std::fs::write(&password, "correct horse\n").unwrap();
    format!("username = \"ops\"\npassword_file = \"{}\"", password.display())
}

/// `/healthz` is open (load balancers and systemd ask it without a login), so it says ok,
/// degraded or failing and nothing more: a blocked channel's last error (a receiver's body,
/// which may quote anything: here a marker and a mail address) and the leader's host:pid stay
/// behind the login, on the status page and in `/healthz?verbose`.
#[tokio::test]
async fn healthz_without_the_login_says_only_ok_degraded_or_failing() {
    let Some(pg) = pg::database().await else { return };
    const MARKER: &str = "MARKER-4f1c ops-oncall@example.com";
    let rx = Receiver::start().await;
    let poison = "alpha: migration link is NOT_SYNCED (first check)";
    rx.reply_when(move |b| b.contains(poison), Reply::status(500, MARKER));
    let dir = tempfile::tempdir().unwrap();
    let top = |port: u16| format!("{}\n{}", http_listen(port), login_lines(dir.path()));
    let http = reqwest::Client::new();
    let get = |url: String, login: bool| {
        let r = http.get(url);
        let r = if login {
            r.basic_auth("ops", Some("correct horse"))
        } else {
            r
        };
        async move {
            match r.send().await {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                // Not listening yet.
                Err(_) => (0, String::new()),
            }
        }
    };

    // The leader: its channel "ops" blocked by a receiver that refuses alpha's event.
    let leader_port = free_port();
    let leader = spawn_app_with(Setup {
        top: top(leader_port),
        database_url: Some(pg.url.clone()),
        channels: crate::notify::slack("ops", &rx.url("/hook")),
        delivery: Some(crate::delivery::fast()),
        ..Setup::default()
    })
    .await;
    let leading = leader.run();
    let lbase = format!("http://127.0.0.1:{leader_port}");
    wait_until(Duration::from_secs(30), "the channel reported blocked", || async {
        get(format!("{lbase}/metrics"), true)
            .await
            .1
            .contains("linkwatch_channel_blocked{channel=\"ops\"} 1")
    })
    .await;
    // A follower on the same database, which names the leader.
    let follower_port = free_port();
    let follower = spawn_app_with(Setup {
        top: top(follower_port),
        database_url: Some(pg.url.clone()),
        ..Setup::default()
    })
    .await;
    let following = follower.run();
    let fbase = format!("http://127.0.0.1:{follower_port}");
    let holder = format!(":{}:", std::process::id());
    wait_until(Duration::from_secs(30), "the follower names the leader", || async {
        let (code, text) = get(format!("{fbase}/healthz?verbose"), true).await;
        code == 200 && text.contains("following (") && text.contains(&holder)
    })
    .await;

    // Without the login: the word only.
    assert_eq!(get(format!("{lbase}/healthz"), false).await, (200, "degraded\n".into()));
    assert_eq!(get(format!("{fbase}/healthz"), false).await, (200, "ok\n".into()));
    // The details ask for the login.
    assert_eq!(get(format!("{lbase}/healthz?verbose"), false).await.0, 401);
    // With it: the channel, since when, the reason, and who leads.
    let (code, verbose) = get(format!("{lbase}/healthz?verbose"), true).await;
    assert_eq!(code, 200);
    assert!(
        verbose.starts_with("degraded\nleading (epoch ")
            && verbose.contains("channel \"ops\" blocked since ")
            && verbose.contains(MARKER),
        "{verbose}"
    );
    let (code, page) = get(format!("{lbase}/"), true).await;
    assert_eq!(code, 200);
    assert!(page.contains("blocked since") && page.contains(MARKER), "{page}");
    // Its times written as everywhere else on the page ("2026-12-04 22:34:58 UTC").
    let since = page
        .split("blocked since ")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap();
    assert!(
        since.len() == 23 && since.ends_with(" UTC") && &since[10..11] == " ",
        "{since}"
    );

    following.stop(Duration::from_secs(15)).await;
    leading.stop(Duration::from_secs(15)).await;
}

/// The hardening headers on every answer: the page, an org page, the JSON API, `/metrics`,
/// `/healthz`, a 404, a 401 and a 405. The Content-Security-Policy allows nothing but the
/// page's one style block, by its hash: the page has no style attributes, scripts or images.
#[tokio::test]
async fn every_answer_carries_the_hardening_headers() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let (_t, daemon, base, _gone) = running_page(&login_lines(dir.path())).await;
    let http = reqwest::Client::new();
    let cases: [(&str, &str, bool, u16); 10] = [
        ("GET", "/", true, 200),
        ("GET", "/org/beta", true, 200),
        ("GET", "/api/v1/status", true, 200),
        ("GET", "/metrics", true, 200),
        ("GET", "/healthz", false, 200),
        ("GET", "/no/such/page", true, 404),
        ("GET", "/org/nobody", true, 404),
        ("GET", "/?state=green", true, 400),
        ("GET", "/api/v1/status", false, 401),
        ("POST", "/", true, 405),
    ];
    for (method, path, login, status) in cases {
        let request = http.request(method.parse().unwrap(), format!("{base}{path}"));
        let request = if login {
            request.basic_auth("ops", Some("correct horse"))
        } else {
            request
        };
        let r = request.send().await.unwrap();
        let what = format!("{method} {path}");
        assert_eq!(r.status().as_u16(), status, "{what}");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_else(|| panic!("{what}: no {name}"))
        };
        assert_eq!(header("x-content-type-options"), "nosniff", "{what}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{what}");
        assert_eq!(header("x-frame-options"), "DENY", "{what}");
        assert_eq!(header("cache-control"), "no-store", "{what}");
        let csp = header("content-security-policy");
        let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
        assert_eq!(directives[0], "default-src 'none'", "{what}: {csp}");
        assert!(directives.contains(&"frame-ancestors 'none'"), "{what}: {csp}");
        assert!(
            directives.contains(&"form-action 'self'"),
            "{what}: the filters' form submits to the page only: {csp}"
        );
        assert!(!csp.contains("unsafe"), "{what}: {csp}");
        let html = r
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("text/html"));
        let body = r.text().await.unwrap();
        if html {
            // The one style block is allowed by its hash; nothing else on the page needs more.
            let style = body
                .split_once("<style>")
                .and_then(|(_, rest)| rest.split_once("</style>"))
                .map(|(style, _)| style)
                .unwrap_or_else(|| panic!("{what}: no style block"));
            let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(style.as_bytes()));
            assert!(
                directives.contains(&format!("style-src 'sha256-{hash}'").as_str()),
                "{what}: {csp}"
            );
            for needs_more in [" style=", "<script", "<img", "<iframe", "<link"] {
                assert!(
                    !body.contains(needs_more),
                    "{what} has {needs_more}, which the CSP blocks"
                );
            }
        }
    }
    daemon.stop(Duration::from_secs(15)).await;
}

/// A wrong login is logged as a warning with the remote address and the user name given, never
/// the password; a request without a login (a browser's first) is not. Wrong logins in a burst
/// make one line (the rate limit's count of the lines left out is unit-tested in `web::auth`).
#[tokio::test]
async fn a_wrong_login_is_logged_once_with_its_address_and_user_but_not_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let t = spawn_app_with(Setup {
        top: format!("{}\n{}", http_listen(port), login_lines(dir.path())),
        ..Setup::default()
    })
    .await;
    let log = dir.path().join("daemon.log");
    let mut daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_linkwatch"))
        .arg("run")
        .arg("--config")
        .arg(&t.config_path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_until(Duration::from_secs(20), "the endpoint", || async {
        http.get(format!("{base}/healthz")).send().await.is_ok()
    })
    .await;
    let started = std::time::Instant::now();
    assert_eq!(http.get(format!("{base}/")).send().await.unwrap().status(), 401);
    for (user, password) in [
        ("mallory", "hunter2-first"),
        ("mallory", "hunter2-second"),
        ("ops", "hunter2-third"),
    ] {
        let r = http
            .get(format!("{base}/api/v1/status"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let burst = started.elapsed();
    let right = http.get(format!("{base}/")).basic_auth("ops", Some("correct horse"));
    assert_eq!(right.send().await.unwrap().status(), 200);
    wait_until(Duration::from_secs(10), "the wrong login logged", || async {
        std::fs::read_to_string(&log).unwrap_or_default().contains("mallory")
    })
    .await;
    let pid = daemon.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::timeout(Duration::from_secs(20), daemon.wait())
        .await
        .expect("the daemon stops on SIGTERM")
        .unwrap();

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("login")).collect();
    let refused: Vec<&&str> = lines.iter().filter(|l| l.contains("WARN")).collect();
    if burst < Duration::from_secs(10) {
        assert_eq!(refused.len(), 1, "one line for the burst:\n{text}");
    }
    let line = refused[0];
    assert!(
        line.contains("127.0.0.1:") && line.contains("\"mallory\""),
        "the address and the user name given: {line}"
    );
    assert!(!text.contains("hunter2"), "a password reached the log:\n{text}");
}

/// Two identical failures in a row are one row that says how many, and every time on the org's
/// page is written one way.
#[tokio::test]
async fn the_org_page_groups_identical_failures_and_writes_each_time_one_way() {
    let (t, base, _gone) = page_app("").await;
    beta_history(&t).await;
    let daemon = run_page(&t).await;
    let body = reqwest::get(format!("{base}/org/beta"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failures = &body[body.find("table class=\"failures\"").expect("a failures table")..];
    let failures = &failures[..failures.find("</table>").unwrap()];
    assert_eq!(failures.matches("maintenance").count(), 1, "{failures}");
    assert!(failures.contains("<td>× 2</td>"), "{failures}");
    assert!(failures.contains(" UTC to "), "the run's span: {failures}");
    let changes = &body[body.find("table class=\"changes\"").expect("a changes table")..];
    let changes = &changes[..changes.find("</table>").unwrap()];
    for table in [failures, changes] {
        assert!(!table.contains("Z</td>") && !table.contains("Z to "), "{table}");
        assert!(table.contains(" UTC</td>"), "{table}");
    }
    drop(t);
    daemon.stop(Duration::from_secs(15)).await;
}

/// More identical failures than the page lists: the oldest run it shows says that it goes
/// further back, and the page says where all of them are, instead of a count that stops at 50.
/// When the next older failure is another one, the run shown is whole, and says so.
#[tokio::test]
async fn a_run_of_failures_longer_than_the_page_lists_says_so() {
    let t = spawn_app().await;
    let page = serve_page(&t).await;
    let failures = || async {
        let body = get_text(&format!("{}org/beta", page.base)).await.1;
        let table = &body[body.find("table class=\"failures\"").expect("a failures table")..];
        let table = table[..table.find("</table>").unwrap()].to_owned();
        (table, body.contains("The latest 50 failed checks"))
    };
    let check = |behavior: Behavior| {
        t.sim.set(ORG_B, behavior);
        t.app.clock.step(chrono::Duration::minutes(1));
        t.check(ORG_B)
    };
    check(Behavior::error(500, "", "the server fell over")).await;
    for _ in 0..50 {
        check(Behavior::error(503, "", "maintenance")).await;
    }
    // 51 failures: the 50 shown are one run, and the one before it was another failure.
    let (table, capped) = failures().await;
    assert!(table.contains("<td>× 50</td>") && !table.contains("or more"), "{table}");
    assert!(!table.contains("fell over") && capped, "{table}");
    check(Behavior::error(503, "", "maintenance")).await;
    // 52: the run goes on past the 50 shown.
    let (table, capped) = failures().await;
    assert!(
        table.contains("<td>× 50 or more</td>") && table.contains("from before "),
        "{table}"
    );
    assert!(capped);
}

/// The page's routes (as `linkwatch run` serves them) on a port of their own, without the
/// daemon: the test decides every check. Stops when dropped.
struct PageServer {
    base: String,
    task: tokio::task::JoinHandle<()>,
    _configured: tokio::sync::watch::Sender<std::sync::Arc<linkwatch::web::Configured>>,
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A reverse proxy that serves `upstream` (an address ending in `/`) under `/{prefix}/`, as
/// nginx's `location /{prefix}/ { proxy_pass http://upstream/; }` does: the prefix is taken
/// off the path, everything outside it is a 404 of the proxy's own.
async fn proxy(upstream: String, prefix: &'static str) -> PageServer {
    use axum::response::IntoResponse;
    let forward = move |uri: axum::http::Uri| {
        let upstream = upstream.clone();
        async move {
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let Some(rest) = path.strip_prefix(&format!("/{prefix}/")) else {
                return (axum::http::StatusCode::NOT_FOUND, "not behind the proxy").into_response();
            };
            let r = reqwest::get(format!("{upstream}{rest}")).await.unwrap();
            let status = axum::http::StatusCode::from_u16(r.status().as_u16()).unwrap();
            (status, r.text().await.unwrap()).into_response()
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/{prefix}/", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(forward);
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (_configured, _) = tokio::sync::watch::channel(Default::default());
    PageServer {
        base,
        task,
        _configured,
    }
}

async fn serve_page(t: &TestApp) -> PageServer {
    use linkwatch::web;
    let (tx, rx) = tokio::sync::watch::channel(web::Configured::of(&t.app.config));
    let page = web::Page {
        store: t.app.store.clone(),
        clock: t.app.clock.clone(),
        metrics: t.app.metrics.clone(),
        configured: rx,
    };
    let app = web::routes(page)
        .fallback(web::not_found)
        .layer(axum::middleware::map_response(web::harden));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    PageServer {
        base,
        task,
        _configured: tx,
    }
}

async fn get_text(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The org rows of a page, each as its HTML.
fn org_rows(body: &str) -> Vec<&str> {
    body.split("<tr class=\"org\">")
        .skip(1)
        .map(|r| &r[..r.find("</tr>").unwrap()])
        .collect()
}

/// How many orgs the summary counts in `state`.
fn counted(body: &str, state: &str) -> usize {
    let at = body
        .find(&format!("<span class=\"badge {state}\">"))
        .unwrap_or_else(|| panic!("no {state} in the summary"));
    body[at..]
        .split("<span class=\"n\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// Every `href` and form `action` of a page, as written (entities undone).
fn links(body: &str) -> Vec<String> {
    body.split(" href=\"")
        .skip(1)
        .chain(body.split(" action=\"").skip(1))
        .map(|r| r[..r.find('"').unwrap()].replace("&amp;", "&"))
        .collect()
}

/// Thousands of orgs: one in 20 not synced (and alpha), three failing, two retrying, the rest
/// synced. The default view is under 200 KB: it counts every state, lists the first hundred of
/// the orgs that need attention, failing first, with a link to the rest, and names no healthy
/// org; the filters reach any of them.
#[tokio::test]
async fn the_default_view_of_thousands_of_orgs_leads_with_what_needs_attention() {
    // LINKWATCH_PAGE_ORGS=10000 measures ten thousand (BENCHMARKS.md); the page lists the same
    // hundred rows at either count, and 3,000 checks take a fifth of the time.
    let extra: usize = std::env::var("LINKWATCH_PAGE_ORGS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3_000);
    let t = spawn_app_with(Setup {
        extra_orgs: extra,
        poll: "concurrency = 32".into(),
        ..Setup::default()
    })
    .await;
    let failing = [1, 2, 3];
    let retrying = [4, 5];
    for n in 0..extra {
        let behavior = if n % 20 == 0 {
            Behavior::status("NOT_SYNCED")
        } else if failing.contains(&n) || retrying.contains(&n) {
            Behavior::error(500, "", "the server fell over")
        } else {
            Behavior::status("SYNCED")
        };
        t.sim.set(&extra_org(n), behavior);
    }
    let started = std::time::Instant::now();
    let results = t.app.checker.check_all().await.unwrap();
    assert!(results.iter().all(|r| r.is_ok()), "every check recorded");
    for n in failing {
        t.check(&extra_org(n)).await;
        t.check(&extra_org(n)).await;
    }
    println!("{} orgs checked in {:?}", extra + 2, started.elapsed());
    let server = serve_page(&t).await;

    let mut times = Vec::new();
    let (mut status, mut body) = (0, String::new());
    for _ in 0..5 {
        let started = std::time::Instant::now();
        (status, body) = get_text(&server.base).await;
        times.push(started.elapsed());
    }
    let took = *times.iter().min().unwrap();
    assert_eq!(status, 200);
    println!(
        "the default view of {} orgs: {} bytes in {times:?}",
        extra + 2,
        body.len()
    );
    assert!(body.len() < 200_000, "{} bytes", body.len());
    assert!(took < Duration::from_secs(5), "{took:?}");

    let not_synced = extra.div_ceil(20) + 1;
    assert_eq!(counted(&body, "failing"), 3);
    assert_eq!(counted(&body, "retrying"), 2);
    assert_eq!(counted(&body, "not_synced"), not_synced);
    assert_eq!(counted(&body, "synced"), extra + 2 - not_synced - 5);
    assert_eq!(counted(&body, "unchecked"), 0);

    let rows = org_rows(&body);
    assert_eq!(rows.len(), 100, "a page of the orgs that need attention");
    assert!(rows[..3].iter().all(|r| r.contains("check failing")), "failing first");
    assert!(rows[3..5].iter().all(|r| r.contains(">retrying<")), "then retrying");
    assert!(rows[5..].iter().all(|r| r.contains(">not synced<")), "{}", rows[5]);
    assert!(!rows.iter().any(|r| r.contains(">synced<")), "no healthy org is listed");
    assert!(!body.contains("org-2345"), "a healthy org is counted, not listed");
    let rest = 3 + 2 + not_synced - 100;
    assert!(body.contains(&format!("And {rest} more")), "the cap says how many more");
    let next = links(&body)
        .into_iter()
        .find(|l| l.contains("page=2"))
        .expect("a link to the rest");
    assert_eq!(next, "?state=attention&page=2");
    let (_, page2) = get_text(&format!("{}{next}", server.base)).await;
    assert_eq!(org_rows(&page2).len(), rest.min(100));

    // A healthy org, by a part of its name in another case.
    let (_, found) = get_text(&format!("{}?state=all&name=ORG-2345", server.base)).await;
    let rows = org_rows(&found);
    assert_eq!(rows.len(), 1, "{found}");
    assert!(
        rows[0].contains("org-2345") && rows[0].contains(">synced<"),
        "{}",
        rows[0]
    );
    // By its id, and in the JSON too.
    let (_, by_id) = get_text(&format!("{}?state=synced&name={}", server.base, extra_org(2345))).await;
    assert_eq!(org_rows(&by_id).len(), 1);
    let json = get_json(&format!("{}api/v1/status?name=org-2345", server.base)).await;
    assert_eq!(json["orgs"].as_array().unwrap().len(), 1, "{json}");
    assert_eq!(json["summary"]["synced"], extra + 2 - not_synced - 5);
    // The JSON without filters lists every org, as it did before filters.
    let all = get_json(&format!("{}api/v1/status", server.base)).await;
    assert_eq!(all["orgs"].as_array().unwrap().len(), extra + 2);

    // As a browser renders it, within its Content-Security-Policy.
    let Some(browser) = browser() else { return };
    let dom = chromium(&browser, &["--dump-dom".into()], &server.base).await;
    let rows = org_rows(&dom);
    assert_eq!(rows.len(), 100);
    assert!(rows[0].contains("check failing"), "{}", rows[0]);
    assert_eq!(counted(&dom, "synced"), extra + 2 - not_synced - 5);
    screenshots(
        &browser,
        server.base.trim_end_matches('/'),
        &[("/", "status-page-thousands.png")],
        1400,
    )
    .await;
}

/// One failed check is "retrying", as long as fewer checks in a row failed than
/// `failures_before_alert` (3): no notification has said anything yet. The third makes it
/// "failing". Listed either way, with how long its link was SYNCED lately.
#[tokio::test]
async fn one_failed_check_shows_retrying_and_the_alert_threshold_failing() {
    let t = spawn_app().await;
    t.check(ORG_A).await;
    t.check(ORG_B).await;
    t.sim.set(ORG_B, Behavior::error(503, "", "maintenance"));
    t.check(ORG_B).await;
    let server = serve_page(&t).await;
    let (_, body) = get_text(&server.base).await;
    let rows = org_rows(&body);
    assert_eq!(rows.len(), 2, "{body}");
    assert!(
        rows[0].contains("beta") && rows[0].contains("class=\"badge retrying\">retrying<"),
        "{}",
        rows[0]
    );
    assert!(!rows.iter().any(|r| r.contains("failing")), "{body}");
    assert!(
        rows[0].contains("100%"),
        "SYNCED all the time it was known: {}",
        rows[0]
    );
    assert!(rows[1].contains("alpha") && rows[1].contains("0.0%"), "{}", rows[1]);
    let json = get_json(&format!("{}api/v1/status?state=retrying", server.base)).await;
    assert_eq!(json["orgs"][0]["name"], "beta");

    t.check(ORG_B).await;
    t.check(ORG_B).await;
    let (_, body) = get_text(&server.base).await;
    let rows = org_rows(&body);
    assert!(
        rows[0].contains("beta") && rows[0].contains("class=\"badge failing\">check failing<"),
        "{}",
        rows[0]
    );
    assert_eq!(counted(&body, "retrying"), 0);
}

/// A filter the page does not know is a 400 that says why, on the page and the API alike.
#[tokio::test]
async fn unknown_filters_are_refused_with_a_reason() {
    let t = spawn_app().await;
    let server = serve_page(&t).await;
    for (query, reason) in [
        ("state=green", "state &quot;green&quot; is not one the page knows"),
        ("page=0", "page &quot;0&quot; is not a number from 1"),
        ("colour=red", "&quot;colour&quot; is not a filter the page knows"),
        ("instance=https://cm.example.com/", "No org is checked at instance"),
    ] {
        let (status, body) = get_text(&format!("{}?{query}", server.base)).await;
        assert_eq!(status, 400, "{query}");
        assert!(body.contains(reason), "{query}: {body}");
        let r = reqwest::get(format!("{}api/v1/status?{query}", server.base))
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let error: Value = r.json().await.unwrap();
        assert!(error["error"].is_string(), "{error}");
    }
    // The one instance the orgs share is known, and an empty form filters nothing.
    let instance = t.app.config.cloud_manager.base_url.to_string();
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("state", "all")
        .append_pair("name", "")
        .append_pair("instance", &instance)
        .finish();
    let (status, body) = get_text(&format!("{}?{query}", server.base)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(org_rows(&body).len(), 2);
    // A page past the last is no error: it says how many match and leads back.
    let (status, body) = get_text(&format!("{}?state=all&page=9", server.base)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("No orgs on page 9: 2 match, on <a href=\"?state=all\">the first page</a>"),
        "{body}"
    );
}

/// Behind a reverse proxy that serves the page under `/linkwatch/`, every link of the status
/// page, an org's page and a 404 leads to an answer under `/linkwatch/` (a link from the root
/// would leave it), and the org's page links to it in the Cloud Manager console.
#[tokio::test]
async fn every_link_works_under_a_sub_path() {
    let t = spawn_app().await;
    t.check(ORG_A).await;
    t.sim.set(ORG_B, Behavior::error(503, "", "maintenance"));
    t.check(ORG_B).await;
    let server = serve_page(&t).await;
    let proxy = proxy(server.base.clone(), "linkwatch").await;
    let root = url::Url::parse(&proxy.base).unwrap();
    let mut followed = 0;
    for page in ["", "org/alpha", "org/beta", "no/such/page"] {
        let page_url = root.join(page).unwrap();
        let (_, body) = get_text(page_url.as_str()).await;
        let links = links(&body);
        assert!(!links.is_empty(), "{page}: {body}");
        for link in links {
            let target = page_url.join(&link).unwrap();
            if target.origin() != root.origin() {
                assert!(
                    link.contains("/v2#/org/"),
                    "{page}: only the console is elsewhere: {link}"
                );
                continue;
            }
            assert!(
                target.path().starts_with("/linkwatch/"),
                "{page}: {link} leaves the sub-path for {target}"
            );
            let (status, _) = get_text(target.as_str()).await;
            assert_eq!(status, 200, "{page}: {link} ({target})");
            followed += 1;
        }
    }
    assert!(followed >= 8, "{followed} links followed");
    let (_, org) = get_text(root.join("org/alpha").unwrap().as_str()).await;
    let console = format!(
        "{}v2#/org/{ORG_A}/projects",
        t.sim.base_url().trim_end_matches("api/public/v1.0")
    );
    assert!(org.contains(&format!("href=\"{console}\"")), "{console} in {org}");
}
