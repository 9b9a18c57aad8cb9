//! Failover: two real `linkwatch run` processes on one fresh PostgreSQL database, against the
//! in-process simulator and webhook receiver. Instance `a` starts first and leads; `b` follows.
//! Each has its own `[http] listen` (to read `/healthz?verbose` and `/metrics`) and its own
//! `application_name` (to find its connections), and a lease of 3 s (renewed every second).
//!
//! Every write to the data tables is recorded by a trigger with the writer's `application_name`,
//! so that a test can say which instance wrote what, and when. Every committed event is then
//! reconciled against what the receiver accepted, by event id (`webhook-id`).
//!
//! The PostgreSQL restart test restarts the server under every other test: it runs only with
//! `LINKWATCH_TEST_PG_RESTART=1`, on its own (see [`a_postgres_restart_is_recovered`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use linkwatch::simulator::Behavior;
use sqlx::PgPool;
use tokio::process::{Child, Command};

use crate::helpers::*;
use crate::pg::{self, PgDb};
use crate::receiver::{Receiver, Reply};

const LEASE: Duration = Duration::from_secs(3);
/// "Within about two lease periods", with room for a loaded CI machine.
const TAKEOVER: Duration = Duration::from_secs(2 * 3 + 4);
/// Generous bounds for what involves checks and sends.
const SOON: Duration = Duration::from_secs(30);
/// A delivery claimed by a killed leader waits for its claim to expire: the channel's timeout
/// (5 s) plus the claim margin (30 s).
const CLAIM_EXPIRY: Duration = Duration::from_secs(90);

const TABLES: [&str; 6] = [
    "org_state",
    "transitions",
    "check_failures",
    "events",
    "outbox",
    "reminders",
];

struct Instance {
    name: &'static str,
    app_name: String,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pid: u32,
}

impl Instance {
    fn start(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_linkwatch"))
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .env("RUST_LOG", "info,linkwatch=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("linkwatch starts");
        self.pid = child.id().unwrap();
        self.child = Some(child);
    }

    /// SIGKILL, and reaped.
    async fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {}", self.pid);
    }

    fn assert_running(&mut self) {
        let status = self.child.as_mut().expect("started").try_wait().unwrap();
        assert!(
            status.is_none(),
            "instance {} exited: {status:?}\n{}",
            self.name,
            self.logs()
        );
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> Option<String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        let r = client
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .send()
            .await
            .ok()?;
        r.text().await.ok()
    }

    /// The second line of `/healthz?verbose`: "leading (epoch N)" or "following (...)".
    async fn role(&self) -> Option<String> {
        let text = self.get("/healthz?verbose").await?;
        text.lines().nth(1).map(str::to_owned)
    }

    async fn leads(&self) -> bool {
        self.role().await.is_some_and(|r| r.starts_with("leading"))
    }

    async fn follows(&self) -> bool {
        self.role().await.is_some_and(|r| r.starts_with("following"))
    }

    /// The sum of every sample of `name` in `/metrics` (0 when there is none).
    async fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").await.expect("/metrics answers");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

struct Pair {
    t: TestApp,
    rx: Receiver,
    pool: PgPool,
    a: Instance,
    b: Instance,
    // Dropped last: the database goes after the processes and pools.
    _db: PgDb,
}

impl Drop for Pair {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in [&self.a, &self.b] {
                eprintln!("===== instance {} ({}) =====\n{}", i.name, i.app_name, i.logs());
            }
        }
    }
}

fn webhook(url: &str) -> String {
    format!("[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{url}\"\ntimeout = \"5s\"\n")
}

/// Two instances on a fresh database, `a` leading and `b` following; `None` without PostgreSQL.
async fn pair() -> Option<Pair> {
    let db = pg::database().await?;
    let rx = Receiver::start().await;
    let (port_a, port_b) = (free_port(), free_port());
    let t = spawn_app_with(Setup {
        database_url: Some(db.url.clone()),
        channels: webhook(&rx.url("/hook")),
        top: format!(
            "leader_lease = \"{}s\"\nshutdown_timeout = \"2s\"\n{}",
            LEASE.as_secs(),
            http_listen(port_a)
        ),
        ..Setup::default()
    })
    .await;
    // The test's own App migrated the database; it checks nothing.
    t.app.store.close().await;
    let pool = PgPool::connect(&db.url).await.unwrap();
    audit(&pool).await;
    let text = std::fs::read_to_string(&t.config_path).unwrap();
    let dir = t.config_path.parent().unwrap().to_owned();
    let tag = format!("lwfo_{:08x}", rand::random::<u32>());
    let instance = |name: &'static str, port: u16| {
        let app_name = format!("{tag}_{name}");
        let config = dir.join(format!("linkwatch-{name}.toml"));
        let url = format!("{}?application_name={app_name}", db.url);
        let own = text
            .replace(&format!("\"{}\"", db.url), &format!("\"{url}\""))
            .replace(&format!("127.0.0.1:{port_a}"), &format!("127.0.0.1:{port}"));
        assert!(own.contains(&url));
        std::fs::write(&config, own).unwrap();
        Instance {
            name,
            app_name,
            port,
            config,
            log: dir.join(format!("linkwatch-{name}.log")),
            child: None,
            pid: 0,
        }
    };
    let mut p = Pair {
        a: instance("a", port_a),
        b: instance("b", port_b),
        t,
        rx,
        pool,
        _db: db,
    };
    p.a.start();
    wait_until(SOON, "a leads", || p.a.leads()).await;
    p.b.start();
    wait_until(SOON, "b follows", || p.b.follows()).await;
    // Both orgs first seen and delivered: what follows starts from a settled state.
    wait_until(SOON, "both orgs first seen", || async {
        p.committed().await.len() == 2
    })
    .await;
    p.exactly_once(SOON).await;
    Some(p)
}

/// A trigger on every data table records who wrote (the connection's `application_name`) and when.
async fn audit(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE audit (at timestamptz NOT NULL DEFAULT clock_timestamp(), app text NOT NULL,
                             tbl text NOT NULL, op text NOT NULL);
         CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           INSERT INTO audit (app, tbl, op) VALUES (current_setting('application_name'), TG_TABLE_NAME, TG_OP);
           RETURN NULL;
         END $$;",
    )
    .execute(pool)
    .await
    .unwrap();
    for table in TABLES {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON {table}
             FOR EACH ROW EXECUTE FUNCTION audit()"
        )))
        .execute(pool)
        .await
        .unwrap();
    }
}

impl Pair {
    /// The database's clock.
    async fn db_now(&self) -> chrono::DateTime<chrono::Utc> {
        sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Who wrote to the data tables (by `application_name`), and how many rows, since `since`.
    async fn writers_since(&self, since: chrono::DateTime<chrono::Utc>) -> BTreeMap<String, i64> {
        sqlx::query_as::<_, (String, i64)>("SELECT app, count(*) FROM audit WHERE at > $1 GROUP BY app")
            .bind(since)
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .into_iter()
            .collect()
    }

    async fn committed(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT event_id FROM deliveries WHERE channel = 'hook' ORDER BY created_at")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    async fn unsent(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE state <> 'sent'")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// How many times the receiver accepted each event id; the body's id is the header's.
    fn accepted(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for r in self.rx.accepted() {
            let id = r.header("webhook-id");
            assert_eq!(r.json()["id"], id.as_str(), "the body's id is the webhook-id");
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }

    /// Waits until every committed event is marked sent and reached the receiver; returns the
    /// receiver's counts.
    async fn all_delivered(&self, within: Duration) -> BTreeMap<String, usize> {
        wait_until(within, "every committed event delivered and marked sent", || async {
            let committed = self.committed().await;
            let accepted = self.accepted();
            !committed.is_empty() && self.unsent().await == 0 && committed.iter().all(|id| accepted.contains_key(id))
        })
        .await;
        let committed: BTreeSet<String> = self.committed().await.into_iter().collect();
        let accepted = self.accepted();
        let got: BTreeSet<String> = accepted.keys().cloned().collect();
        assert_eq!(got, committed, "the receiver got exactly the committed events");
        accepted
    }

    /// Every committed event reached the receiver exactly once.
    async fn exactly_once(&self, within: Duration) {
        let accepted = self.all_delivered(within).await;
        let twice: Vec<_> = accepted.iter().filter(|(_, n)| **n != 1).collect();
        assert!(twice.is_empty(), "events delivered more than once: {twice:?}");
    }

    /// Alpha's link changes status; waits until the leader committed the change.
    async fn flip(&self, to: &str) {
        let before = self.committed().await.len();
        self.t.sim.set(ORG_A, Behavior::status(to));
        wait_until(SOON, &format!("alpha's change to {to} committed"), || async {
            self.committed().await.len() > before
        })
        .await;
    }

    /// Kills (SIGKILL) or stops the leader `a` before, and waits for `b` to lead: how long it took.
    async fn b_takes_over(&self, since: Instant) -> Duration {
        wait_until(TAKEOVER + Duration::from_secs(10), "b leads", || self.b.leads()).await;
        let took = since.elapsed();
        eprintln!("b took over after {took:?}");
        assert!(took <= TAKEOVER, "b took over after {took:?}, more than {TAKEOVER:?}");
        took
    }
}

/// Two daemons on one database: only the leader checks (the simulator's count grows with the
/// leader's own count; the follower's /metrics shows no check and no request), only it writes
/// (the audit trigger), and only it sends (each event id reaches the receiver once).
#[tokio::test]
async fn two_daemons_only_one_checks_and_sends() {
    let Some(mut p) = pair().await else { return };
    assert_eq!(p.a.metric("linkwatch_leader").await, 1.0);
    assert!(p.a.metric("linkwatch_leader_epoch").await >= 1.0);
    assert_eq!(p.b.metric("linkwatch_leader").await, 0.0);
    p.flip("SYNCED").await;
    p.flip("NOT_SYNCED").await;
    p.flip("SYNCED").await;
    p.exactly_once(SOON).await;
    wait_until(SOON, "a has checked a dozen times", || async {
        p.a.metric("linkwatch_checks_total").await >= 12.0
    })
    .await;

    assert_eq!(
        p.b.metric("linkwatch_checks_total").await,
        0.0,
        "the follower checks nothing"
    );
    assert_eq!(p.b.metric("linkwatch_cloud_manager_requests_total").await, 0.0);
    let before = p.t.sim.requests();
    let leader = p.a.metric("linkwatch_cloud_manager_requests_total").await;
    let after = p.t.sim.requests();
    // Requests of checks still under way are counted by the simulator first: two orgs, at most
    // two requests each (a Digest challenge and the answer).
    assert!(
        leader <= after as f64 && before as f64 <= leader + 4.0,
        "the simulator saw {before}..{after} requests, the leader made {leader}"
    );
    let writers = p.writers_since(chrono::DateTime::UNIX_EPOCH).await;
    assert_eq!(
        writers.keys().collect::<Vec<_>>(),
        [&p.a.app_name],
        "only the leader writes: {writers:?}"
    );
    p.a.assert_running();
    p.b.assert_running();
}

/// kill -9 of the leader while nothing is under way: the other takes over within the bound, goes
/// on checking and sends what it detects; every event once.
#[tokio::test]
async fn kill_9_between_checks() {
    let Some(mut p) = pair().await else { return };
    p.flip("SYNCED").await;
    p.exactly_once(SOON).await;
    let killed = Instant::now();
    p.a.kill().await;
    p.b_takes_over(killed).await;
    // b says why it leads: a's lease ran out (a died without giving it up).
    let logs = p.b.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("leading: this instance now checks and sends"))
        .unwrap_or_else(|| panic!("no takeover line:\n{logs}"));
    assert!(line.contains("ran out: it stopped renewing it"), "{line}");
    p.flip("NOT_SYNCED").await;
    p.exactly_once(SOON).await;
    let writers = p.writers_since(chrono::DateTime::UNIX_EPOCH).await;
    assert!(writers.contains_key(&p.b.app_name), "{writers:?}");
    p.b.assert_running();
}

/// kill -9 of the leader after it committed an event and before the receiver accepted it (the
/// receiver is down: 503): the new leader delivers it, once.
#[tokio::test]
async fn kill_9_between_commit_and_send() {
    let Some(mut p) = pair().await else { return };
    p.rx.reply_when(|_| true, Reply::status(503, "down"));
    p.flip("SYNCED").await;
    assert_eq!(p.unsent().await, 1, "committed, not delivered");
    let killed = Instant::now();
    p.a.kill().await;
    p.rx.clear_rules();
    p.b_takes_over(killed).await;
    // A send cut off by the kill leaves its claim to expire first.
    p.exactly_once(CLAIM_EXPIRY).await;
    let refused = p.rx.received().iter().filter(|r| r.status == 503).count();
    eprintln!("{refused} attempts refused while the receiver was down");
    p.b.assert_running();
}

/// kill -9 of the leader after the receiver got the request and before it answered (so before
/// the row is marked): the new leader waits for the claim to expire and sends it again, with the
/// same event id. That is the one duplicate allowed; every other event arrives once.
#[tokio::test]
async fn kill_9_between_send_and_mark() {
    let Some(mut p) = pair().await else { return };
    // The next delivery is held: the receiver has the body and answers only after a minute.
    p.rx.reply([Reply {
        delay: Duration::from_secs(60),
        ..Reply::status(200, "ok")
    }]);
    let seen = p.rx.received().len();
    p.flip("SYNCED").await;
    wait_until(SOON, "the receiver holds the change", || async {
        p.rx.received().len() > seen
    })
    .await;
    let held = p.rx.received()[seen].header("webhook-id");
    let killed = Instant::now();
    p.a.kill().await;
    p.b_takes_over(killed).await;
    wait_until(CLAIM_EXPIRY, "the held event sent again", || async {
        p.accepted().get(&held).copied() == Some(2)
    })
    .await;
    for (id, n) in &p.all_delivered(SOON).await {
        let expected = if *id == held { 2 } else { 1 };
        assert_eq!(*n, expected, "event {id} (held: {held})");
    }
    let again: Vec<_> =
        p.rx.accepted()
            .into_iter()
            .filter(|r| r.header("webhook-id") == held)
            .collect();
    assert_eq!(again[0].json()["id"], again[1].json()["id"]);
    assert_eq!(again[0].json()["type"], "status_changed");
    p.b.assert_running();
}

/// SIGSTOP the leader past its lease: the other takes over and sends what it detects. After
/// SIGCONT the old leader finds itself fenced: it writes nothing (the audit trigger), sends
/// nothing (no event twice), and says it follows.
#[tokio::test]
async fn a_stopped_leader_resumes_fenced_and_follows() {
    let Some(mut p) = pair().await else { return };
    p.flip("SYNCED").await;
    p.exactly_once(SOON).await;
    let a_epoch = p.a.metric("linkwatch_leader_epoch").await;
    let stopped = Instant::now();
    p.a.signal("-STOP");
    p.b_takes_over(stopped).await;
    assert!(p.b.metric("linkwatch_leader_epoch").await > a_epoch);
    p.flip("NOT_SYNCED").await;
    p.exactly_once(SOON).await;
    // Stopped for a few more lease periods: its checks are overdue when it wakes.
    wait_until(SOON, "a stopped for three lease periods", || async {
        stopped.elapsed() > 3 * LEASE
    })
    .await;

    let resumed = p.db_now().await;
    p.a.signal("-CONT");
    wait_until(SOON, "a follows", || p.a.follows()).await;
    assert_eq!(p.a.metric("linkwatch_leader").await, 0.0);
    // Time for anything the resumed process would still do, and one more change on b.
    p.flip("SYNCED").await;
    p.exactly_once(SOON).await;
    let writers = p.writers_since(resumed).await;
    assert!(
        !writers.contains_key(&p.a.app_name),
        "the resumed old leader wrote: {writers:?}"
    );
    assert!(writers.contains_key(&p.b.app_name), "{writers:?}");
    let logs = p.a.logs();
    assert!(logs.contains("leadership lost"), "{logs}");
    p.a.assert_running();
    p.b.assert_running();
}

async fn terminate(p: &Pair, app_name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                               WHERE application_name = $1) AS t",
    )
    .bind(app_name)
    .fetch_one(&p.pool)
    .await
    .unwrap()
}

/// `pg_terminate_backend` on the leader's connections, twice: the daemons recover (a logged
/// fault, no crash), checks and deliveries go on, one instance leads, no event twice.
#[tokio::test]
async fn terminated_connections_of_the_leader_are_recovered() {
    let Some(mut p) = pair().await else { return };
    p.flip("SYNCED").await;
    p.exactly_once(SOON).await;
    for to in ["NOT_SYNCED", "SYNCED"] {
        let killed = terminate(&p, &p.a.app_name).await;
        assert!(killed > 0, "a has connections to terminate");
        let checks = p.a.metric("linkwatch_checks_total").await + p.b.metric("linkwatch_checks_total").await;
        p.flip(to).await;
        p.exactly_once(SOON).await;
        wait_until(SOON, "checks go on", || async {
            p.a.metric("linkwatch_checks_total").await + p.b.metric("linkwatch_checks_total").await > checks + 4.0
        })
        .await;
    }
    let (a, b) = (p.a.leads().await, p.b.leads().await);
    assert!(a != b, "exactly one leads (a: {a}, b: {b})");
    p.a.assert_running();
    p.b.assert_running();
}

/// A PostgreSQL restart under both instances: both survive, one leads, changes are detected and
/// delivered once.
///
/// Restarting the server breaks every other PostgreSQL test running at the same moment, so this
/// runs only with `LINKWATCH_TEST_PG_RESTART=1`, on its own, after the main `cargo test`:
/// `LINKWATCH_TEST_PG_RESTART=1 cargo test --test it failover::a_postgres_restart_is_recovered`.
/// It needs `pg_ctlcluster` and the right to use it (root or postgres).
#[tokio::test]
async fn a_postgres_restart_is_recovered() {
    if std::env::var_os("LINKWATCH_TEST_PG_RESTART").is_none() {
        eprintln!("SKIPPED (PostgreSQL restart): set LINKWATCH_TEST_PG_RESTART=1 to run it, alone");
        return;
    }
    let Some(mut p) = pair().await else { return };
    p.flip("SYNCED").await;
    p.exactly_once(SOON).await;
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql (pg_ctlcluster)")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
        .expect("a cluster version");
    let restarted = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .unwrap();
    assert!(restarted.success());
    // The test's own pool found its connections dropped; it reconnects.
    p.flip("NOT_SYNCED").await;
    p.exactly_once(SOON).await;
    wait_until(SOON, "exactly one instance leads", || async {
        p.a.leads().await != p.b.leads().await
    })
    .await;
    p.a.assert_running();
    p.b.assert_running();
}
