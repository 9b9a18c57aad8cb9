//! The binary itself: exit codes, messages and output a user sees.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;

#[tokio::test]
async fn check_rejects_a_bad_config_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[cloud_manager]\npublic_key = \"p\"\nprivate_key = \"k\"\n\n[[org]]\nid = \"5F0C\"\nname = \"x\"\n",
    )
    .unwrap();
    let out = linkwatch()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{}:6:6: org[0].id: \"5F0C\" is not an org id", path.display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains("panicked"));

    let out = linkwatch()
        .arg("check")
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

/// The example as the package installs it, checked as the README's service steps do: from a
/// shell, where systemd's `${CREDENTIALS_DIRECTORY}` is not set, every secret of it is listed as
/// not read (exit 0, everything else validated); with `--credentials-dir` pointing at the files
/// `LoadCredential=` reads, every secret is read, and none is printed.
#[tokio::test]
async fn check_lists_the_example_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/linkwatch.example.toml");
    let check = |credentials: Option<&std::path::Path>| {
        let mut c = linkwatch();
        c.args(["check", "--config", example])
            .env_remove("CREDENTIALS_DIRECTORY");
        if let Some(dir) = credentials {
            c.arg("--credentials-dir").arg(dir);
        }
        c.output()
    };

    let out = check(None).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("payments") && stdout.contains("secrets not read here"),
        "{stdout}"
    );
    for key in [
        "cloud_manager.private_key_file",
        "webhook_url_file",
        "password_file",
        "secret_file",
        "atlas.private_key_file",
        "heartbeat.url_file",
    ] {
        assert!(stdout.contains(key), "{key} not listed as unread:\n{stdout}");
    }
    // Why and how, once; and no placeholder shown as if it were the monitor's address.
    assert_eq!(stdout.matches("--credentials-dir DIR").count(), 1, "{stdout}");
    assert!(
        stdout.contains("heartbeat: (its URL not read here) every 1m"),
        "{stdout}"
    );
    assert!(!stdout.contains("invalid"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    for (name, value) in [
        ("cm-key", "secret-from-file"),
        ("slack-url", "https://hooks.slack.com/services/T0/B0/SLACKSECRET"),
        ("smtp-password", "smtp-password"),
        ("webhook-secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ("atlas-key", "atlas-secret-from-file"),
        ("heartbeat-url", "https://hc-ping.com/HEARTBEATUUID"),
    ] {
        std::fs::write(dir.path().join(name), format!("{value}\n")).unwrap();
    }
    let out = check(Some(dir.path())).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("not read"), "{stdout}");
    assert!(stdout.contains("payments") && stdout.contains("every 30s"), "{stdout}");
    assert!(
        stdout.contains("payments-rs0") && stdout.contains("api key atlas-public"),
        "{stdout}"
    );
    assert!(
        stdout.contains("dba-mail") && stdout.contains("email") && stdout.contains("4h"),
        "{stdout}"
    );
    assert!(
        stdout.contains("morning") && stdout.contains("0 0 9 * * Mon-Fri (Europe/Berlin)"),
        "{stdout}"
    );
    assert!(stdout.contains("heartbeat: https://hc-ping.com/… every 1m"), "{stdout}");
    for secret in [
        "secret-from-file",
        "SLACKSECRET",
        "smtp-password",
        "MfKQ9r8",
        "atlas-secret",
        "HEARTBEATUUID",
    ] {
        assert!(!stdout.contains(secret), "{secret}");
    }
}

#[tokio::test]
async fn once_prints_a_table_and_history_reads_it_back() {
    let t = spawn_app().await;
    let out = linkwatch()
        .arg("once")
        .arg("--config")
        .arg(&t.config_path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("alpha") && l.contains("NOT_SYNCED") && l.contains("first_seen")),
        "{stdout}"
    );
    // The console channel delivered the events before `once` exited.
    assert!(
        stdout.contains("beta: migration link is SYNCED (first check)"),
        "{stdout}"
    );

    let out = linkwatch()
        .args(["history", "--json", "--since", "1h"])
        .arg("--config")
        .arg(&t.config_path)
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let changes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(changes.as_array().unwrap().len(), 2);

    let out = linkwatch()
        .args(["history", "--org", "beta", "--database"])
        .arg(&t.db_path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("beta") && !stdout.contains("alpha"), "{stdout}");
    // Each time written once, as messages and the page write it.
    let row = stdout.lines().find(|l| l.contains("beta")).unwrap();
    let when: Vec<&str> = row.split_whitespace().take(3).collect();
    assert!(when[0].len() == 10 && when[1].len() == 8 && when[2] == "UTC", "{row}");

    // A failing org makes `once` exit 2 so scripts can tell.
    t.sim.set(ORG_A, linkwatch::simulator::Behavior::error(503, "", "down"));
    let out = linkwatch()
        .arg("once")
        .arg("--config")
        .arg(&t.config_path)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The table stays narrow: the reason goes below it, not into every row's width.
    let row = stdout.lines().find(|l| l.starts_with("alpha")).unwrap();
    assert!(row.contains("FAILED (server_error)"), "{stdout}");
    let width = stdout
        .lines()
        .take_while(|l| !l.is_empty())
        .map(str::len)
        .max()
        .unwrap();
    assert!(width < 100, "a row {width} wide:\n{stdout}");
    assert!(
        stdout.contains("why:\n  alpha: Cloud Manager had a server error (HTTP 503)"),
        "{stdout}"
    );
}

#[tokio::test]
async fn run_stops_cleanly_on_sigterm() {
    let t = spawn_app().await;
    let mut child = linkwatch()
        .arg("run")
        .arg("--config")
        .arg(&t.config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let seen = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("first_seen") {
                return line;
            }
        }
        panic!("stdout closed before any event");
    })
    .await
    .expect("an event within 15s");
    assert!(seen.contains("migration link is"), "{seen}");

    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits within 15s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("linkwatch stopped"), "{stderr}");
    assert!(!stderr.contains(PRIVATE_KEY));
}

/// kill -9 after an event is committed but before it is delivered: the restarted daemon sends it.
#[tokio::test]
async fn a_crash_between_event_and_delivery_loses_nothing() {
    let rx = crate::receiver::Receiver::start().await;
    // The receiver is down at first, so the events stay pending in the outbox.
    rx.reply((0..3).map(|_| crate::receiver::Reply::status(503, "")));
    let t = spawn_app_with(Setup {
        channels: format!(
            "[[channel]]\nname = \"ops\"\nkind = \"slack\"\nwebhook_url = \"{}\"\n",
            rx.url("/hook")
        ),
        ..Setup::default()
    })
    .await;
    let spawn = || {
        linkwatch()
            .arg("run")
            .arg("--config")
            .arg(&t.config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = spawn();
    rx.wait_for_requests(1, Duration::from_secs(15)).await;
    first.kill().await.unwrap(); // SIGKILL: no clean shutdown, nothing flushed by us
    let pending = || async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", t.db_path.display()))
            .await
            .unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE state = 'pending'")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        n
    };
    assert!(pending().await > 0, "the crash left events pending");

    let mut second = spawn();
    wait_until(
        Duration::from_secs(30),
        "every pending delivery sent after restart",
        || async { pending().await == 0 },
    )
    .await;
    second.kill().await.unwrap();
    let delivered: String = rx.accepted().iter().map(|r| r.body.clone()).collect();
    assert!(
        delivered.contains("alpha: migration link is NOT_SYNCED (first check)"),
        "{delivered}"
    );
    assert!(
        delivered.contains("beta: migration link is SYNCED (first check)"),
        "{delivered}"
    );
}

#[tokio::test]
async fn simulate_serves_the_demo_orgs_to_a_real_daemon() {
    let port = free_port();
    let mut sim = linkwatch()
        .args(["simulate", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sim.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.contains(&format!("127.0.0.1:{port}")), "{first}");
    // The compose config, pointed at this simulator.
    let dir = tempfile::tempdir().unwrap();
    let compose = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/compose.toml"))
        .unwrap()
        .replace("http://simulator:8080", &format!("http://127.0.0.1:{port}"))
        .replace(
            "/var/lib/linkwatch/linkwatch.db",
            &dir.path().join("db").display().to_string(),
        )
        .replace("listen = \"0.0.0.0:9187\"", "listen = \"127.0.0.1:0\"");
    // Only the console channel: the compose file's Slack and SMTP hosts do not exist here.
    let compose = compose
        .split("\n[[channel]]\nname = \"slack\"")
        .next()
        .unwrap()
        .to_owned();
    let config = dir.path().join("compose.toml");
    std::fs::write(&config, compose).unwrap();
    let out = linkwatch()
        .arg("once")
        .arg("--config")
        .arg(&config)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // legacy-crm is refused by the access list: exit 2, with the reason in the table.
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("payments") && l.contains("NOT_SYNCED")),
        "{stdout}"
    );
    assert!(stdout.contains("access list"), "{stdout}");
    sim.kill().await.unwrap();
}

/// The "ha" profile's config runs for real: `once` on PostgreSQL takes the lease, checks the
/// demo orgs and records them.
#[tokio::test]
async fn the_compose_ha_config_runs_on_postgres() {
    let Some(db) = crate::pg::database().await else { return };
    let port = free_port();
    let mut sim = linkwatch()
        .args(["simulate", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sim.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ha = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/compose-ha.toml"))
        .unwrap()
        .replace("http://simulator:8080", &format!("http://127.0.0.1:{port}"))
        .replace("postgres://linkwatch@postgres:5432/linkwatch", &db.url)
        .replace("listen = \"0.0.0.0:9187\"", "listen = \"127.0.0.1:0\"");
    let ha = ha.split("\n[[channel]]\nname = \"slack\"").next().unwrap().to_owned();
    let config = dir.path().join("compose-ha.toml");
    std::fs::write(&config, ha).unwrap();
    let out = linkwatch()
        .arg("once")
        .arg("--config")
        .arg(&config)
        // The test server trusts local connections; the password is only passed along.
        .env("LINKWATCH_DATABASE_PASSWORD", "unused")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("payments") && l.contains("NOT_SYNCED")),
        "{stdout}"
    );
    let store =
        linkwatch::store::Store::open(&linkwatch::config::Database::parse(&db.url, std::path::Path::new("")).unwrap())
            .await
            .unwrap();
    assert_eq!(store.current().await.unwrap().len(), 4);
    store.close().await;
    sim.kill().await.unwrap();
}

/// `linkwatch demo` shows the whole path in its run: the links, a live migration to COMPLETE
/// through readiness and a (compressed) deadline warning, and a link break while another
/// migration works.
#[tokio::test]
async fn the_demo_shows_the_migration_path() {
    let home = tempfile::tempdir().unwrap();
    let out = linkwatch()
        // The default 40 s: the deadline warning has a few seconds between readiness and COMPLETE.
        .args(["demo", "--every", "1s"])
        .env("TMPDIR", home.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "demo time is compressed",
        "payments: migration link SYNCED",
        "payments-rs0 (org payments): live migration is WORKING",
        "payments-rs0 (org payments): ready for cutover",
        "payments-rs0 (org payments): about",
        "payments-rs0 (org payments): live migration COMPLETE",
        "URGENT: payments-rs1 (org payments): the org's migration link is NOT_SYNCED",
        "payments-rs0   COMPLETE",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
}

#[tokio::test]
async fn a_missing_config_file_says_why_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere.toml");
    let out = linkwatch()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot read config file {}", path.display())),
        "{stderr}"
    );
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
}

/// A `run` waiting for the lock says for whom, while a `once` holds it, and starts once it is
/// free.
#[tokio::test]
async fn a_run_waits_for_a_once_and_says_so() {
    let t = spawn_app_with(Setup {
        top: "shutdown_timeout = \"1h\"".into(),
        ..Setup::default()
    })
    .await;
    let once = linkwatch::store::WriterLock::acquire(&t.db_path, "once").unwrap();
    let mut run = linkwatch()
        .arg("run")
        .arg("--config")
        .arg(&t.config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(run.stderr.take().unwrap()).lines();
    let mut next = async || lines.next_line().await.unwrap().unwrap_or_default();
    let waiting = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let line = next().await;
            if line.contains("waiting up to") {
                return line;
            }
        }
    })
    .await
    .expect("it says that it waits");
    assert!(waiting.contains("linkwatch once (pid"), "{waiting}");
    drop(once);
    tokio::time::timeout(Duration::from_secs(20), async {
        while !next().await.contains("linkwatch running") {}
    })
    .await
    .expect("it starts once the lock is free");
    run.kill().await.unwrap();
}

#[tokio::test]
async fn history_of_an_org_nobody_knows_says_so() {
    let t = spawn_app().await;
    t.check(ORG_A).await;
    t.app.store.close().await;
    let history = |org: &'static str, json: bool| {
        let mut c = linkwatch();
        c.args(["history", "--org", org, "--config"]).arg(&t.config_path);
        if json {
            c.arg("--json");
        }
        c.output()
    };
    for json in [false, true] {
        let out = history("alhpa", json).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "json {json}: {stderr}");
        assert!(
            stderr.contains("no org named or with the id \"alhpa\"") && stderr.contains("(orgs: alpha, beta)"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "json {json}: nothing on standard output");
    }
    // Known orgs: alpha, checked once; beta, in the config and never checked, has nothing yet,
    // which is not an error.
    let out = history("alpha", false).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = history("beta", false).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("no status changes recorded for beta"), "{stdout}");

    // Without a config, the database alone says which orgs there are; with both, both do.
    let out = linkwatch()
        .args(["history", "--org", "beta", "--database"])
        .arg(&t.db_path)
        .env_remove("LINKWATCH_CONFIG")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("(orgs: alpha)"), "{stderr}");
    let out = linkwatch()
        .args(["history", "--org", "beta", "--database"])
        .arg(&t.db_path)
        .arg("--config")
        .arg(&t.config_path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("no status changes recorded for beta"), "{stdout}");
}

/// `simulate` says what each org will answer, and prints a config that works as pasted.
#[tokio::test]
async fn simulate_prints_its_story_and_a_config_that_works_as_pasted() {
    let port = free_port();
    let mut sim = linkwatch()
        .args(["simulate", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sim.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let end = line.contains("(end of the config)");
            printed.push(line);
            if end {
                break;
            }
        }
    })
    .await
    .expect("simulate prints a config");
    let text = printed.join("\n");
    assert!(
        text.contains("legacy-crm") && text.contains("always HTTP 403 IP_ADDRESS_NOT_ON_ACCESS_LIST"),
        "{text}"
    );
    assert!(text.contains("SYNCED at 2m 30s"), "{text}");
    let config: String = printed
        .iter()
        .skip_while(|l| !l.starts_with("# A config"))
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sim.toml"), config).unwrap();
    let out = linkwatch()
        .args(["once", "--config", "sim.toml"])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // legacy-crm is refused by design: exit 2, and the others answered.
    assert_eq!(
        out.status.code(),
        Some(2),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("payments") && stdout.contains("NOT_SYNCED"), "{stdout}");
    assert!(stdout.contains("FAILED (forbidden)"), "{stdout}");
    sim.kill().await.unwrap();
}
