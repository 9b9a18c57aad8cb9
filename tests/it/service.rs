//! Running as a service: reload on SIGHUP, a bounded SIGTERM, metrics, health, systemd notify.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkwatch::simulator::Behavior;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::*;
use crate::receiver::{Receiver, Reply};

const ORG_C: &str = "5f0c00000000000000000c03";

/// A `linkwatch run` process whose output lines are collected as they come.
struct Daemon {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_linkwatch"));
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let collect = |pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Daemon { child, stdout, stderr }
    }

    async fn wait_stdout(&self, what: &str) {
        wait_until(Duration::from_secs(20), &format!("stdout: {what}"), || async {
            self.stdout.lock().unwrap().iter().any(|l| l.contains(what))
        })
        .await;
    }

    async fn wait_stderr(&self, what: &str) -> String {
        wait_until(Duration::from_secs(20), &format!("stderr: {what}"), || async {
            self.stderr.lock().unwrap().iter().any(|l| l.contains(what))
        })
        .await;
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(what))
            .unwrap()
            .clone()
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    async fn stop(mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap()
    }
}

#[tokio::test]
async fn sighup_reloads_the_config_and_keeps_the_old_one_when_the_new_is_broken() {
    let t = spawn_app().await;
    t.sim.set(ORG_C, Behavior::status("SYNCED"));
    let daemon = Daemon::start(&t.config_path, &[]);
    daemon
        .wait_stdout("alpha: migration link is NOT_SYNCED (first check)")
        .await;

    let good = std::fs::read_to_string(&t.config_path).unwrap();
    let good = format!("{good}\n[[org]]\nid = \"{ORG_C}\"\nname = \"gamma\"\n");
    std::fs::write(&t.config_path, &good).unwrap();
    daemon.signal("-HUP");
    daemon
        .wait_stdout("gamma: migration link is SYNCED (first check)")
        .await;
    // The log says what the reload changed, not only how many of each there are.
    let line = daemon.wait_stderr("config reloaded").await;
    assert!(line.contains("config reloaded: orgs added: gamma ("), "{line}");

    std::fs::write(&t.config_path, good.replace("every = \"1s\"", "every = \"soon\"")).unwrap();
    daemon.signal("-HUP");
    let line = daemon.wait_stderr("reload rejected").await;
    assert!(
        line.contains("linkwatch.toml:") && line.contains("poll.every"),
        "{line}"
    );
    // The previous config (with gamma) goes on: gamma is still checked.
    let before = t.sim.requests_for(ORG_C);
    wait_until(Duration::from_secs(10), "gamma checked again", || async {
        t.sim.requests_for(ORG_C) >= before + 2
    })
    .await;
    assert!(daemon.stop().await.success());
    // State survived the reloads: one first_seen each, no repeats.
    std::fs::write(&t.config_path, &good).unwrap();
    let t = t.restart().await;
    for org in [ORG_A, ORG_B, ORG_C] {
        assert_eq!(t.event_kinds(org).await, ["first_seen"], "{org}");
    }
}

#[tokio::test]
async fn sigterm_during_a_slow_delivery_keeps_it_pending_for_the_next_start() {
    let rx = Receiver::start().await;
    rx.reply([Reply {
        delay: Duration::from_secs(30),
        ..Reply::status(200, "ok")
    }]);
    let t = spawn_app_with(Setup {
        top: "shutdown_timeout = \"1s\"".into(),
        channels: format!(
            "[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\ntimeout = \"60s\"\n",
            rx.url("/hook")
        ),
        ..Setup::default()
    })
    .await;
    let daemon = Daemon::start(&t.config_path, &[]);
    rx.wait_for_requests(1, Duration::from_secs(15)).await; // a delivery is in flight
    let started = tokio::time::Instant::now();
    assert!(daemon.stop().await.success());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutdown waited {:?}",
        started.elapsed()
    );

    let t = t.restart().await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", t.db_path.display()))
        .await
        .unwrap();
    let states: Vec<String> = sqlx::query_scalar("SELECT state FROM deliveries")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(
        !states.is_empty() && states.iter().all(|s| s == "pending" || s == "sent"),
        "{states:?}"
    );
    assert!(
        states.iter().any(|s| s == "pending"),
        "the interrupted delivery is pending: {states:?}"
    );
    // The next start delivers it.
    let daemon = Daemon::start(&t.config_path, &[]);
    wait_until(
        Duration::from_secs(20),
        "everything delivered after restart",
        || async {
            let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE state <> 'sent'")
                .fetch_one(&pool)
                .await
                .unwrap();
            pending == 0
        },
    )
    .await;
    assert!(daemon.stop().await.success());
    pool.close().await;
}

fn sample(metrics: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[tokio::test]
async fn metrics_and_healthz() {
    let (t, port) = spawn_app_with_http().await;
    let daemon = t.run();
    wait_until(Duration::from_secs(10), "both orgs seen", || async {
        t.console_lines().len() == 2
    })
    .await;

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    assert!(
        sample(
            &scrape,
            "linkwatch_checks_total",
            &[("org_name", "alpha"), ("outcome", "ok")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(
            &scrape,
            "linkwatch_org_status",
            &[("org_name", "alpha"), ("status", "NOT_SYNCED")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "linkwatch_org_status",
            &[("org_name", "beta"), ("status", "SYNCED")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&scrape, "linkwatch_events_total", &[("kind", "first_seen")]),
        Some(2.0)
    );
    let checks: f64 = ["alpha", "beta"]
        .iter()
        .map(|o| sample(&scrape, "linkwatch_checks_total", &[("org_name", o), ("outcome", "ok")]).unwrap())
        .sum();
    let requests = sample(&scrape, "linkwatch_cloud_manager_requests_total", &[]).unwrap();
    // One challenge, then one request per check.
    assert!(
        requests >= checks && requests <= checks + 2.0,
        "{requests} requests for {checks} checks"
    );
    assert!(sample(&scrape, "linkwatch_check_duration_seconds_count", &[]).unwrap() >= 2.0);
    assert!(text.contains("linkwatch_outbox_oldest_pending_seconds"));

    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // A user holds a write transaction open in the sqlite3 shell: writes cannot proceed.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", t.db_path.display()))
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO meta (key, value) VALUES ('user', 'lock')")
        .execute(&mut *tx)
        .await
        .unwrap();
    // The last probe's result stands for a few seconds; the next one sees the lock.
    let unhealthy = |path: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let health = http.get(format!("{base}{path}")).send().await.unwrap();
            (health.status() == 503).then_some(health.text().await.unwrap())
        }
    };
    wait_until(Duration::from_secs(20), "/healthz says 503", || async {
        unhealthy("/healthz").await.is_some()
    })
    .await;
    // Open to all: the word only. The reason (a database error may quote anything) is in the
    // details, behind the login when one is set.
    assert_eq!(unhealthy("/healthz").await.as_deref(), Some("failing\n"));
    let reason = unhealthy("/healthz?verbose").await.expect("still locked");
    assert!(
        reason.starts_with("failing\nthe database does not take writes"),
        "{reason}"
    );
    tx.rollback().await.unwrap();
    wait_until(
        Duration::from_secs(20),
        "healthy again once the lock is gone",
        || async { http.get(format!("{base}/healthz")).send().await.unwrap().status() == 200 },
    )
    .await;
    pool.close().await;

    daemon.stop(Duration::from_secs(15)).await;
}

#[tokio::test]
async fn ready_and_stopping_reach_the_notify_socket() {
    let t = spawn_app().await;
    let socket_path = t.db_path.with_file_name("notify.sock");
    std::fs::create_dir_all(socket_path.parent().unwrap()).unwrap();
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let daemon = Daemon::start(&t.config_path, &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())]);
    let mut buf = vec![0u8; 4096];
    let mut received = String::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while !received.contains("READY=1") {
            let n = socket.recv(&mut buf).await.unwrap();
            received.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await
    .expect("READY=1 within 15s");
    // Readiness comes after the database is migrated: the file has its tables.
    assert!(t.db_path.exists());
    let stop = tokio::spawn(daemon.stop());
    tokio::time::timeout(Duration::from_secs(15), async {
        while !received.contains("STOPPING=1") {
            let n = socket.recv(&mut buf).await.unwrap();
            received.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await
    .expect("STOPPING=1 after SIGTERM");
    assert!(stop.await.unwrap().success());
}

/// A file system of its own, mounted for the test (needs root; CI runs as root).
pub struct Mount(std::path::PathBuf);

impl Mount {
    pub fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "linkwatch-test"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(dir.to_owned()))
    }
}

impl Mount {
    /// Fills the file system to the last byte; deleting the returned file frees it again.
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.write_all(&[0u8; 512]);
        let _ = f.sync_all();
        filler
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_health_probe_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = Mount::tmpfs(&dir.path().join("fs"), "2m") else {
        crate::skip::skip(
            "LINKWATCH_REQUIRE_TMPFS",
            "a tmpfs to fill",
            "cannot mount one here (not root?)",
        );
        return;
    };
    let t = spawn_app_with(Setup {
        database: Some(dir.path().join("fs/linkwatch.db")),
        ..Setup::default()
    })
    .await;
    t.check(ORG_A).await;
    assert!(t.app.store.probe_write().await.is_ok());
    // Fill the file system to the last byte.
    let filler = mount.fill();
    // Changes that need new pages cannot be written; checks fail cleanly, no panic.
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    let mut write_failed = false;
    for _ in 0..50 {
        let org = &t.app.config.orgs[0];
        if t.app.checker.check_org(org).await.is_err() {
            write_failed = true;
            break;
        }
    }
    assert!(write_failed, "a full disk never refused a write");
    let probe = t.app.store.probe_write().await;
    assert!(probe.is_err(), "the health probe still wrote on a full disk");
    // Space again: the next check records the change that could not be stored before.
    std::fs::remove_file(&filler).unwrap();
    let report = t.check(ORG_A).await;
    assert_eq!(report.outcome, Ok("SYNCED".into()));
    let kinds = t.event_kinds(ORG_A).await;
    assert_eq!(kinds, ["first_seen", "status_changed"], "nothing lost, nothing doubled");
}

/// Counts, in the database itself, the writes of the health probe (the `health_probe` row of
/// `meta`), with a trigger of the test's own.
async fn count_probes(db: &Path) -> sqlx::SqlitePool {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    for sql in [
        "CREATE TABLE test_probe_count (n INTEGER NOT NULL)",
        "INSERT INTO test_probe_count (n) VALUES (0)",
        "CREATE TRIGGER test_probe_insert AFTER INSERT ON meta WHEN NEW.key = 'health_probe'
         BEGIN UPDATE test_probe_count SET n = n + 1; END",
        "CREATE TRIGGER test_probe_update AFTER UPDATE ON meta WHEN NEW.key = 'health_probe'
         BEGIN UPDATE test_probe_count SET n = n + 1; END",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool
}

#[tokio::test]
async fn a_flood_of_healthz_requests_shares_a_few_probes_and_checks_go_on() {
    let (t, port) = spawn_app_with_http().await;
    let pool = count_probes(&t.db_path).await;
    let daemon = t.run();
    wait_until(Duration::from_secs(10), "both orgs seen", || async {
        t.console_lines().len() == 2
    })
    .await;

    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (http, url) = (http.clone(), url.clone());
        flood.spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) });
    }
    let answers = flood.join_all().await;
    assert!(
        answers.iter().all(|a| matches!(a, Ok(200))),
        "{:?}",
        answers.iter().filter(|a| !matches!(a, Ok(200))).collect::<Vec<_>>()
    );
    let probes: i64 = sqlx::query_scalar("SELECT n FROM test_probe_count")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(probes <= 2, "200 requests to /healthz wrote {probes} health probes");

    // Checks were recorded meanwhile, and go on.
    let (a, b) = (t.sim.requests_for(ORG_A), t.sim.requests_for(ORG_B));
    wait_until(Duration::from_secs(10), "both orgs checked again", || async {
        t.sim.requests_for(ORG_A) >= a + 2 && t.sim.requests_for(ORG_B) >= b + 2
    })
    .await;
    let current = t.app.store.current().await.unwrap();
    assert!(current.iter().all(|c| c.consecutive_failures == 0), "{current:?}");
    pool.close().await;
    daemon.stop(Duration::from_secs(15)).await;
}

#[tokio::test]
async fn metrics_and_the_status_page_show_only_the_orgs_of_the_current_config() {
    let (t, port) = spawn_app_with_http().await;
    t.sim.set(ORG_C, Behavior::status("SYNCED"));
    let without_gamma = std::fs::read_to_string(&t.config_path).unwrap();
    let with_gamma = format!("{without_gamma}\n[[org]]\nid = \"{ORG_C}\"\nname = \"gamma\"\n");
    std::fs::write(&t.config_path, &with_gamma).unwrap();
    let daemon = Daemon::start(&t.config_path, &[]);
    // Each org's first check comes at its own offset within the interval: all three recorded.
    for first in [
        "gamma: migration link is SYNCED (first check)",
        "alpha: migration link is NOT_SYNCED (first check)",
        "beta: migration link is SYNCED (first check)",
    ] {
        daemon.wait_stdout(first).await;
    }
    let url = format!("http://127.0.0.1:{port}/metrics");
    let scrape = || async {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid Prometheus text")
    };
    let status =
        |scrape: &prometheus_parse::Scrape, org: &str| sample(scrape, "linkwatch_org_status", &[("org_name", org)]);
    let before = scrape().await;
    assert_eq!(status(&before, "gamma"), Some(1.0));
    let page_orgs = || async {
        let url = format!("http://127.0.0.1:{port}/api/v1/status");
        let v: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        let mut names: Vec<String> = v["orgs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(page_orgs().await, ["alpha", "beta", "gamma"]);

    // gamma leaves the config; its history stays in the database, its gauge goes.
    std::fs::write(&t.config_path, &without_gamma).unwrap();
    daemon.signal("-HUP");
    daemon.wait_stderr("config reloaded").await;
    let after = scrape().await;
    assert_eq!(status(&after, "gamma"), None, "a removed org still has a status gauge");
    assert_eq!(status(&after, "alpha"), Some(1.0));
    assert_eq!(status(&after, "beta"), Some(1.0));
    assert_eq!(
        page_orgs().await,
        ["alpha", "beta"],
        "the status page follows the reload too"
    );
    assert!(daemon.stop().await.success());
}

/// A reload starts the jobs of a new `[[report]]`, and stops those of one removed.
#[tokio::test]
async fn a_reload_starts_and_stops_report_jobs() {
    let rx = Receiver::start().await;
    let t = spawn_app_with(Setup {
        channels: format!(
            "[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            rx.url("/hook")
        ),
        ..Setup::default()
    })
    .await;
    let posts = |kind: &'static str| {
        let rx = rx.clone();
        move || rx.accepted().iter().filter(|r| r.json()["type"] == kind).count()
    };
    let (reports, changes, first) = (posts("report"), posts("status_changed"), posts("first_seen"));
    let plain = std::fs::read_to_string(&t.config_path).unwrap();
    let daemon = Daemon::start(&t.config_path, &[]);
    wait_until(Duration::from_secs(20), "both orgs seen", || async { first() >= 2 }).await;

    std::fs::write(
        &t.config_path,
        format!("{plain}\n[[report]]\nname = \"tick\"\ncron = \"*/1 * * * * *\"\nchannels = [\"hook\"]\n"),
    )
    .unwrap();
    daemon.signal("-HUP");
    wait_until(Duration::from_secs(20), "reports after the reload", || async {
        reports() >= 2
    })
    .await;

    std::fs::write(&t.config_path, &plain).unwrap();
    daemon.signal("-HUP");
    wait_until(Duration::from_secs(20), "the second reload", || async {
        daemon
            .stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("config reloaded"))
            .count()
            >= 2
    })
    .await;
    let sent = reports();
    // Four changes of alpha take at least three check intervals, in which a running job would
    // have queued three reports (sent before the changes: a channel keeps event order); one
    // already queued at the reload may still go out.
    for status in ["SYNCED", "NOT_SYNCED", "SYNCED", "NOT_SYNCED"] {
        let before = changes();
        t.sim.set(ORG_A, Behavior::status(status));
        wait_until(Duration::from_secs(20), "alpha's change delivered", || async {
            changes() > before
        })
        .await;
    }
    assert!(
        reports() <= sent + 1,
        "{} reports after the report was removed",
        reports() - sent
    );
    assert!(daemon.stop().await.success());
}

/// An SMTP server that never greets held the channel's send, and with it the channel's memory,
/// so that even a reload with a corrected `smtp_url` waited behind it until a restart.
#[tokio::test]
async fn a_reload_with_a_corrected_smtp_url_delivers_what_a_silent_server_held() {
    let (silent, _) = crate::edge::silent_server().await;
    let t = spawn_app_with(Setup {
        channels: crate::edge::mail_to(silent, ""),
        ..Setup::default()
    })
    .await;
    let daemon = Daemon::start(&t.config_path, &[]);
    let line = daemon.wait_stderr("delivery failed; will retry").await;
    assert!(line.contains("no answer from the SMTP server"), "{line}");

    let smtp = crate::smtp::SmtpServer::start(false);
    let config = std::fs::read_to_string(&t.config_path).unwrap();
    let fixed = config.replace(&format!("127.0.0.1:{silent}"), &smtp.addr.to_string());
    assert_ne!(config, fixed);
    std::fs::write(&t.config_path, fixed).unwrap();
    daemon.signal("-HUP");
    daemon.wait_stderr("config reloaded").await;
    let mails = smtp.wait_for_mails(1, Duration::from_secs(30)).await;
    assert!(
        mails[0].data.contains("alpha") || mails[0].data.contains("beta"),
        "{:?}",
        mails[0].data
    );
    assert!(daemon.stop().await.success());
}

/// A reload that removes a channel keeps its pending deliveries: nothing is sent to it while it
/// is gone, and they go out once a channel of that name returns.
#[tokio::test]
async fn a_reload_that_removes_a_channel_keeps_its_deliveries_until_it_returns() {
    let rx = Receiver::start().await;
    rx.reply_when(|_| true, Reply::status(500, "down for now"));
    let ops = crate::notify::slack("ops", &rx.url("/hook"));
    let console = "[[channel]]\nname = \"console\"\nkind = \"console\"\n";
    let t = spawn_app_with(Setup {
        channels: format!("{console}{ops}"),
        ..Setup::default()
    })
    .await;
    let with_ops = std::fs::read_to_string(&t.config_path).unwrap();
    let daemon = Daemon::start(&t.config_path, &[]);
    daemon
        .wait_stdout("alpha: migration link is NOT_SYNCED (first check)")
        .await;
    daemon.wait_stdout("beta: migration link is SYNCED (first check)").await;
    rx.wait_for_requests(1, Duration::from_secs(20)).await;

    std::fs::write(&t.config_path, with_ops.replace(&ops, "")).unwrap();
    daemon.signal("-HUP");
    daemon.wait_stderr("config reloaded").await;
    rx.clear_rules();
    let posts = rx.received().len();
    // The daemon goes on without it: a new change reaches the console.
    t.sim.set(ORG_A, Behavior::status("SYNCED"));
    daemon.wait_stdout("alpha: migration link SYNCED (was NOT_SYNCED").await;
    let pending = || async {
        crate::notify::deliveries(&t)
            .await
            .into_iter()
            .filter(|r| r.2 == "ops" && r.3 == "pending")
            .count()
    };
    assert_eq!(pending().await, 2, "both first sights still wait for ops");
    assert_eq!(rx.received().len(), posts, "a removed channel was sent to");

    std::fs::write(&t.config_path, &with_ops).unwrap();
    daemon.signal("-HUP");
    wait_until(Duration::from_secs(30), "ops back, its deliveries sent", || async {
        pending().await == 0
    })
    .await;
    let bodies: String = rx.accepted().iter().map(|r| r.body.clone()).collect();
    assert!(bodies.contains("alpha") && bodies.contains("beta"), "{bodies}");
    assert!(daemon.stop().await.success());
}

/// Logs written to a pipe (a file, the journal) carry no colour codes, and an event is logged as
/// the line a person reads, with its fields beside it, not as raw JSON.
#[tokio::test]
async fn logs_to_a_pipe_are_plain_and_events_read_as_sentences() {
    let t = spawn_app().await;
    let daemon = Daemon::start(&t.config_path, &[]);
    let line = daemon
        .wait_stderr("alpha: migration link is NOT_SYNCED (first check)")
        .await;
    assert!(
        line.contains("event=\"first_seen\"") || line.contains("event=first_seen"),
        "{line}"
    );
    assert!(!line.contains("{\"kind\""), "{line}");
    let all = daemon.stderr.lock().unwrap().join("\n");
    assert!(
        !all.contains('\u{1b}'),
        "escape codes in a log written to a pipe:\n{all}"
    );
    assert!(daemon.stop().await.success());
}

/// `instance_name` names the instance in its logs, in `/metrics`, on the page and in the JSON.
#[tokio::test]
async fn an_instance_is_called_by_its_name_in_logs_metrics_and_the_page() {
    let port = free_port();
    let t = spawn_app_with(Setup {
        top: format!("instance_name = \"watcher-east\"\n{}", http_listen(port)),
        ..Setup::default()
    })
    .await;
    let daemon = Daemon::start(&t.config_path, &[]);
    let running = daemon.wait_stderr("linkwatch running").await;
    assert!(running.contains("instance=watcher-east:"), "{running}");
    daemon
        .wait_stdout("alpha: migration link is NOT_SYNCED (first check)")
        .await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("linkwatch_instance_info{name=\"watcher-east\"} 1"),
        "{metrics}"
    );
    let json: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/api/v1/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["instance"], "watcher-east");
    let page = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Served by watcher-east."), "{page}");
    assert!(daemon.stop().await.success());
}
