//! The benchmark harness: the real daemon (`linkwatch run`, a separate process so that its CPU
//! and memory are its own) against the simulated Cloud Manager, a webhook receiver, a Slack-like
//! receiver and an SMTP server, all on 127.0.0.1 in this process.
//!
//!   cargo bench --bench harness -- [--orgs 100,1000,10000,1000@10s] [--cycles 2] [--interval 60s]
//!                                  [--latency 100ms] [--failure-rate 0] [--peer-checks 200]
//!                                  [--skip-curl] [--skip-python] [--quick] [--perf DIR]
//!                                  [--daemon PATH]
//!
//! `--orgs` takes sizes, each with an optional interval of its own (`1000@10s`); the others use
//! `--interval`. The peers (one `curl --digest` per check, a Python `requests.Session` with
//! `HTTPDigestAuth` in a loop) run first, against the same simulator and latency. `--quick`
//! measures only the steady state (no change burst, no short-nonce run, no Slack drain), for
//! iterating on CPU. `--perf DIR` runs `perf record -g` on the daemon during the steady window.
//! `--daemon PATH` runs another build of `linkwatch` (a copy of the binary before a change).
//!
//! Prints one table (Markdown, for BENCHMARKS.md).

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use linkwatch::simulator::{self, Behavior, Simulator};

const PUBLIC: &str = "bench-public";
const PRIVATE: &str = "bench-private-key";

#[derive(Clone)]
struct Args {
    /// Sizes, each with its own interval when given as `N@10s`.
    orgs: Vec<(usize, Option<Duration>)>,
    cycles: u32,
    interval: Duration,
    latency: Duration,
    failure_rate: f64,
    curl: bool,
    python: bool,
    peer_checks: usize,
    quick: bool,
    perf: Option<PathBuf>,
    daemon: PathBuf,
    /// An admin URL of a PostgreSQL server: each size runs on a fresh database there.
    postgres: Option<String>,
}

fn size(spec: &str) -> (usize, Option<Duration>) {
    let (n, every) = match spec.trim().split_once('@') {
        Some((n, every)) => (n, Some(humantime::parse_duration(every).expect("--orgs 1000@10s"))),
        None => (spec.trim(), None),
    };
    (n.parse().expect("--orgs 100,1000@10s"), every)
}

fn args() -> Args {
    let mut a = Args {
        orgs: ["100", "1000", "10000", "1000@10s"].iter().map(|s| size(s)).collect(),
        cycles: 2,
        interval: Duration::from_secs(60),
        latency: Duration::from_millis(100),
        failure_rate: 0.0,
        curl: true,
        python: true,
        peer_checks: 200,
        quick: false,
        perf: None,
        daemon: PathBuf::from(env!("CARGO_BIN_EXE_linkwatch")),
        postgres: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--orgs" => a.orgs = value().split(',').map(size).collect(),
            "--cycles" => a.cycles = value().parse().expect("--cycles N"),
            "--interval" => a.interval = humantime::parse_duration(&value()).expect("--interval 60s"),
            "--latency" => a.latency = humantime::parse_duration(&value()).expect("--latency 100ms"),
            "--failure-rate" => a.failure_rate = value().parse().expect("--failure-rate 0.01"),
            "--skip-curl" => a.curl = false,
            "--skip-python" => a.python = false,
            "--skip-peers" => (a.curl, a.python) = (false, false),
            "--peer-checks" => a.peer_checks = value().parse().expect("--peer-checks 200"),
            "--quick" => a.quick = true,
            "--perf" => a.perf = Some(PathBuf::from(value())),
            "--daemon" => a.daemon = PathBuf::from(value()),
            "--postgres" => a.postgres = Some(value()),
            "--bench" => {} // cargo bench passes this
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn org_id(n: usize) -> String {
    format!("{:024x}", 0xb000_0000usize + n)
}

/// Records when each webhook event arrived, by event id, with the event's own timestamp.
#[derive(Default)]
struct Arrivals {
    /// (event timestamp, arrival)
    events: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>,
    slack_posts: usize,
    slack_events: usize,
}

async fn receiver(arrivals: Arc<Mutex<Arrivals>>) -> u16 {
    async fn webhook(State(a): State<Arc<Mutex<Arrivals>>>, body: Bytes) -> &'static str {
        let now = chrono::Utc::now();
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
            && let Some(ts) = v["timestamp"].as_str().and_then(|t| t.parse().ok())
        {
            a.lock().unwrap().events.push((ts, now));
        }
        "ok"
    }
    async fn slack(State(a): State<Arc<Mutex<Arrivals>>>, body: Bytes) -> &'static str {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let text = v["text"].as_str().unwrap_or_default();
        // "linkwatch: 100 events (...)" for a digest, anything else is one event.
        let n = text
            .strip_prefix("linkwatch: ")
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let mut a = a.lock().unwrap();
        a.slack_posts += 1;
        a.slack_events += n;
        "ok"
    }
    let app = Router::new()
        .route("/webhook", post(webhook))
        .route("/slack", post(slack))
        .with_state(arrivals);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// A real SMTP server that accepts everything (mailin-embedded, its own threads).
fn smtp_server() -> u16 {
    #[derive(Clone)]
    struct Accept;
    impl mailin_embedded::Handler for Accept {}
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut server = mailin_embedded::Server::new(Accept);
    server.with_tcp_listener(listener).with_num_threads(2);
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    port
}

/// utime + stime of a process, in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is [0], utime [11], stime [12]; 100 ticks a second.
    (ticks(11) + ticks(12)) * 10.0
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The database a size runs on: a SQLite file, or a fresh PostgreSQL database.
enum Db {
    Sqlite(PathBuf),
    Postgres { url: String, pool: sqlx::PgPool },
}

impl Db {
    async fn new(a: &Args, dir: &Path) -> Db {
        let Some(admin) = &a.postgres else {
            return Db::Sqlite(dir.join("bench.db"));
        };
        let name = format!("linkwatch_bench_{:08x}", rand::random::<u32>());
        let admin_pool = sqlx::PgPool::connect(admin).await.expect("--postgres: cannot connect");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin_pool)
            .await
            .unwrap();
        admin_pool.close().await;
        let mut url = reqwest::Url::parse(admin).unwrap();
        url.set_path(&name);
        let pool = sqlx::PgPool::connect(url.as_str()).await.unwrap();
        Db::Postgres {
            url: url.to_string(),
            pool,
        }
    }

    fn config_value(&self) -> String {
        match self {
            Db::Sqlite(path) => path.display().to_string(),
            Db::Postgres { url, .. } => url.clone(),
        }
    }

    async fn outbox_pending(&self) -> i64 {
        match self {
            Db::Sqlite(path) => outbox_pending(path).await,
            // Before the daemon's first migration there is no table yet.
            Db::Postgres { pool, .. } => sqlx::query_scalar("SELECT count(*) FROM outbox WHERE state = 'pending'")
                .fetch_one(pool)
                .await
                .unwrap_or(1),
        }
    }

    /// Drops a PostgreSQL database made for the run.
    async fn drop(self, a: &Args) {
        if let (Db::Postgres { url, pool }, Some(admin)) = (self, &a.postgres) {
            pool.close().await;
            let name = url.rsplit('/').next().unwrap_or_default().to_owned();
            if let Ok(admin) = sqlx::PgPool::connect(admin).await {
                let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
                admin.close().await;
            }
        }
    }

    async fn bytes(&self) -> i64 {
        match self {
            Db::Sqlite(path) => db_bytes(path).await,
            Db::Postgres { pool, .. } => sqlx::query_scalar("SELECT pg_database_size(current_database())")
                .fetch_one(pool)
                .await
                .unwrap(),
        }
    }
}

/// The PostgreSQL server processes that work for this run: the backends connected to its
/// database and the server's background processes (WAL writer, checkpointer, autovacuum...),
/// so that other databases' sessions on the same server are not counted.
async fn postgres_pids(db: &Db) -> Vec<u32> {
    let Db::Postgres { pool, .. } = db else {
        return Vec::new();
    };
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE (datname = current_database() AND pid <> pg_backend_pid()) OR backend_type <> 'client backend'",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    pids.into_iter().map(|p| p as u32).collect()
}

/// CPU (ms) the server spent for this run between `before` (pids with their CPU then) and now:
/// processes alive now, less what those that already ran had spent before. A process that ended
/// in between (an autovacuum worker) is missed, so this is a lower bound.
async fn postgres_cpu_since(db: &Db, before: &[(u32, f64)]) -> f64 {
    postgres_pids(db)
        .await
        .into_iter()
        .map(|pid| {
            let then = before.iter().find(|(p, _)| *p == pid).map_or(0.0, |(_, c)| *c);
            cpu_ms(pid) - then
        })
        .sum()
}

async fn outbox_pending(path: &Path) -> i64 {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", path.display()))
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE state = 'pending'")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

async fn db_bytes(path: &Path) -> i64 {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", path.display()))
        .await
        .unwrap();
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(&pool).await.unwrap();
    let size: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(&pool).await.unwrap();
    pool.close().await;
    pages * size
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Row {
    orgs: usize,
    interval: Duration,
    checks_per_s: f64,
    missed: usize,
    requests_per_check: f64,
    requests_per_check_short_nonce: f64,
    cpu_ms_per_check: f64,
    /// The PostgreSQL server's CPU per check (NaN on SQLite).
    db_cpu_ms_per_check: f64,
    cpu_pct: f64,
    peak_rss_mb: f64,
    bytes_per_org_day: f64,
    bytes_per_change: f64,
    latency: (f64, f64, f64),
}

async fn run_size(a: &Args, orgs: usize, nonce_lifetime: Duration, measure_changes: bool) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(
        ([127, 0, 0, 1], 0).into(),
        simulator::Tuning {
            latency: a.latency,
            nonce_lifetime,
            failure_rate: a.failure_rate,
            ..simulator::Tuning::default()
        },
    )
    .await
    .unwrap();
    sim.add_api_key(PUBLIC, PRIVATE);
    let ids: Vec<String> = (0..orgs).map(org_id).collect();
    for id in &ids {
        sim.set(id, Behavior::status("SYNCED"));
    }
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    let port = receiver(arrivals.clone()).await;
    let smtp = smtp_server();
    // Enough concurrency for orgs x latency / interval, with room to spare.
    let concurrency = ((orgs as f64 * a.latency.as_secs_f64() / a.interval.as_secs_f64()) * 4.0)
        .ceil()
        .max(8.0) as usize;
    let db = Db::new(a, dir.path()).await;
    let mut toml = format!(
        "database = \"{}\"\n[cloud_manager]\nbase_url = \"{}\"\npublic_key = \"{PUBLIC}\"\nprivate_key = \"{PRIVATE}\"\n\
         [poll]\nevery = \"{}\"\ntimeout = \"10s\"\nconcurrency = {concurrency}\n\
         [[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/webhook\"\n\
         [[channel]]\nname = \"mail\"\nkind = \"email\"\nsmtp_url = \"smtp://127.0.0.1:{smtp}\"\nfrom = \"lw@example.com\"\nto = [\"dba@example.com\"]\n\
         [[route]]\nchannels = [\"hook\"]\n[[route]]\nchannels = [\"mail\"]\nevents = [\"status_changed\"]\n",
        db.config_value(),
        sim.base_url(),
        humantime::format_duration(a.interval)
    );
    for (n, id) in ids.iter().enumerate() {
        toml.push_str(&format!("[[org]]\nid = \"{id}\"\nname = \"org-{n}\"\n"));
    }
    let config = dir.path().join("bench.toml");
    std::fs::write(&config, toml).unwrap();

    let mut child = tokio::process::Command::new(&a.daemon)
        .args(["run", "-q", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();

    // Cycle 1 sees every org for the first time and cycle 2 is the first quiet one (its rows
    // grow by a byte as `checks` leaves the values SQLite stores in zero bytes, which splits
    // pages once). Steady state is measured from the end of cycle 2, once the first_seen
    // deliveries are out (marking them sent writes too).
    tokio::time::sleep(a.interval * 2 + Duration::from_secs(2)).await;
    while db.outbox_pending().await > 0 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (req0, checks0, cpu0, bytes0, t0) = (
        sim.requests(),
        sim.counters().authorized.load(std::sync::atomic::Ordering::SeqCst),
        cpu_ms(pid),
        db.bytes().await,
        Instant::now(),
    );
    let pg_cpu0: Vec<(u32, f64)> = postgres_pids(&db).await.into_iter().map(|p| (p, cpu_ms(p))).collect();
    let per_org0: Vec<u64> = ids.iter().map(|id| sim.requests_for(id)).collect();
    let perf = a.perf.as_ref().map(|dir| {
        let out = dir.join(format!("perf-{orgs}-{}.data", humantime::format_duration(a.interval)));
        eprintln!("perf record -g on the daemon into {}", out.display());
        std::process::Command::new("perf")
            .args(["record", "-g", "-F", "999", "-q", "-p", &pid.to_string(), "-o"])
            .arg(out)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("perf")
    });
    tokio::time::sleep(a.interval * a.cycles).await;
    if let Some(perf) = perf {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &perf.id().to_string()])
            .status();
        let _ = perf.wait_with_output();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let checks = sim.counters().authorized.load(std::sync::atomic::Ordering::SeqCst) - checks0;
    let requests = sim.requests() - req0;
    let cpu = cpu_ms(pid) - cpu0;
    let pg_cpu = postgres_cpu_since(&db, &pg_cpu0).await;
    let bytes1 = db.bytes().await;
    // A check may start up to the scheduler's coalescing window (at most 250 ms) after its slot, so an org
    // whose slot sits at the window's edge can have its last check land just past it. Counting
    // a second later still shows any org that really missed a slot (it would have one check
    // fewer than there were cycles), without counting those edge cases as misses.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let missed = ids
        .iter()
        .zip(&per_org0)
        .filter(|(id, before)| sim.requests_for(id) - **before < u64::from(a.cycles))
        .count();

    // Every link breaks at once: one change per org, spread over the next cycle by the offsets.
    let mut bytes_per_change = f64::NAN;
    let mut latency = (f64::NAN, f64::NAN, f64::NAN);
    if measure_changes {
        arrivals.lock().unwrap().events.clear();
        for id in &ids {
            sim.set(id, Behavior::status("NOT_SYNCED"));
        }
        tokio::time::sleep(a.interval + Duration::from_secs(5)).await;
        bytes_per_change = (db.bytes().await - bytes1) as f64 / orgs as f64;
        let mut lat: Vec<f64> = arrivals
            .lock()
            .unwrap()
            .events
            .iter()
            .map(|(ts, at)| (*at - *ts).num_microseconds().unwrap_or(0) as f64 / 1000.0)
            .collect();
        lat.sort_by(f64::total_cmp);
        latency = (
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN),
        );
    }
    let rss = peak_rss_mb(pid);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    sim.stop().await;
    let db_cpu_ms_per_check = match db {
        Db::Sqlite(_) => f64::NAN,
        Db::Postgres { .. } => pg_cpu / checks.max(1) as f64,
    };
    db.drop(a).await;
    let days = elapsed / 86_400.0;
    Row {
        orgs,
        interval: a.interval,
        checks_per_s: checks as f64 / elapsed,
        missed,
        requests_per_check: requests as f64 / checks.max(1) as f64,
        requests_per_check_short_nonce: f64::NAN,
        cpu_ms_per_check: cpu / checks.max(1) as f64,
        db_cpu_ms_per_check,
        cpu_pct: cpu / (elapsed * 1000.0) * 100.0,
        peak_rss_mb: rss,
        bytes_per_org_day: (bytes1 - bytes0) as f64 / orgs as f64 / days,
        bytes_per_change,
        latency,
    }
}

/// 1,000 deliveries pending for one Slack webhook: how long until all are out, in how many posts.
async fn drain_slack() -> (f64, usize) {
    let dir = tempfile::tempdir().unwrap();
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    let port = receiver(arrivals.clone()).await;
    let toml = format!(
        "database = \"{}\"\n[[channel]]\nname = \"ops\"\nkind = \"slack\"\nwebhook_url = \"http://127.0.0.1:{port}/slack\"\n",
        dir.path().join("drain.db").display()
    );
    let config = linkwatch::config::Config::parse(&toml, &dir.path().join("drain.toml")).unwrap();
    let app = linkwatch::daemon::App::new(config, Default::default()).await.unwrap();
    for n in 0..1000 {
        let id = linkwatch::config::OrgId::parse(&org_id(n)).unwrap();
        let state = linkwatch::detect::OrgState {
            status: Some("SYNCED".into()),
            ..Default::default()
        };
        let event = linkwatch::detect::Event::FirstSeen {
            status: "SYNCED".into(),
        };
        app.store
            .record_check(&linkwatch::store::CheckRecord {
                org_id: &id,
                org_name: &format!("org-{n}"),
                at: chrono::Utc::now(),
                outcome: &Ok("SYNCED".into()),
                state: &state,
                events: &[(event, vec!["ops".into()])],
                reminded: &[],
            })
            .await
            .unwrap();
    }
    let start = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut workers = tokio::task::JoinSet::new();
    app.dispatcher.spawn(app.store.clone(), stop.clone(), &mut workers);
    while arrivals.lock().unwrap().slack_events < 1000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = start.elapsed().as_secs_f64();
    stop.cancel();
    while workers.join_next().await.is_some() {}
    let posts = arrivals.lock().unwrap().slack_posts;
    (took, posts)
}

/// What a peer (another way to do the same checks) cost per check.
#[derive(Clone, Copy)]
struct Peer {
    requests: f64,
    cpu_ms: f64,
    wall_ms: f64,
}

/// A simulator with one org, for the peers: same Digest, same latency as the daemon's runs.
async fn peer_simulator(latency: Duration) -> (Simulator, String) {
    let sim = Simulator::start(
        ([127, 0, 0, 1], 0).into(),
        simulator::Tuning {
            latency,
            ..simulator::Tuning::default()
        },
    )
    .await
    .unwrap();
    sim.add_api_key(PUBLIC, PRIVATE);
    let id = org_id(0);
    sim.set(&id, Behavior::status("SYNCED"));
    let url = format!("{}/orgs/{id}/liveExport/migrationLink/status", sim.base_url());
    (sim, url)
}

/// The plain approach: one `curl --digest` process per check. Its CPU is the children's
/// (`cutime + cstime` of this process, which waits for each curl), process start included:
/// that is what the approach costs.
async fn curl_baseline(checks: usize, latency: Duration) -> Option<Peer> {
    if std::process::Command::new("curl").arg("--version").output().is_err() {
        return None;
    }
    let (sim, url) = peer_simulator(latency).await;
    let before = children_cpu_ms();
    let start = Instant::now();
    for _ in 0..checks {
        let out = tokio::process::Command::new("curl")
            .args([
                "--silent",
                "--digest",
                "--user",
                &format!("{PUBLIC}:{PRIVATE}"),
                "--header",
                "Accept: application/json",
            ])
            .arg(&url)
            .output()
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("SYNCED"), "curl failed");
    }
    let wall = start.elapsed().as_secs_f64() / checks as f64 * 1000.0;
    let cpu = (children_cpu_ms() - before) / checks as f64;
    let requests = sim.requests() as f64 / checks as f64;
    sim.stop().await;
    Some(Peer {
        requests,
        cpu_ms: cpu,
        wall_ms: wall,
    })
}

/// The same checks from a Python loop: one `requests.Session` with `HTTPDigestAuth` (which
/// reuses the nonce, counting nc up), the way a platform team would script it.
const PYTHON_LOOP: &str = r#"
import sys
import requests
from requests.auth import HTTPDigestAuth

url, user, key, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
session = requests.Session()
session.auth = HTTPDigestAuth(user, key)
session.headers["Accept"] = "application/json"

def check():
    r = session.get(url, timeout=10)
    r.raise_for_status()
    return r.json()["status"]

check()  # the first challenge, and the imports' first use
print("ready", flush=True)
sys.stdin.readline()
for _ in range(n):
    if check() != "SYNCED":
        sys.exit("unexpected status")
print("done", flush=True)
sys.stdin.readline()
"#;

/// Runs [`PYTHON_LOOP`] for `checks` checks. Its CPU is read from `/proc/PID/stat` between the
/// "ready" and "done" lines, the same way as the daemon's: the steady loop, not the interpreter's
/// start. `Err` says why it was skipped.
async fn python_peer(checks: usize, latency: Duration) -> Result<Peer, String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let probe = std::process::Command::new("python3")
        .args(["-c", "import requests"])
        .output()
        .map_err(|e| format!("python3 not found ({e})"))?;
    if !probe.status.success() {
        return Err("python3 has no `requests` module (pip install requests)".into());
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("loop.py");
    std::fs::write(&script, PYTHON_LOOP).unwrap();
    let (sim, url) = peer_simulator(latency).await;
    let mut child = tokio::process::Command::new("python3")
        .arg(&script)
        .args([&url, PUBLIC, PRIVATE, &checks.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start python3: {e}"))?;
    let pid = child.id().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let expect = async |lines: &mut tokio::io::Lines<_>, what: &str| match lines.next_line().await {
        Ok(Some(line)) if line == what => Ok(()),
        other => Err(format!("the Python loop said {other:?}, not {what}")),
    };
    expect(&mut lines, "ready").await?;
    let (cpu0, req0, start) = (cpu_ms(pid), sim.requests(), Instant::now());
    stdin.write_all(b"go\n").await.unwrap();
    expect(&mut lines, "done").await?;
    let (cpu, requests, wall) = (cpu_ms(pid) - cpu0, sim.requests() - req0, start.elapsed());
    stdin.write_all(b"end\n").await.unwrap();
    let _ = child.wait().await;
    sim.stop().await;
    Ok(Peer {
        requests: requests as f64 / checks as f64,
        cpu_ms: cpu / checks as f64,
        wall_ms: wall.as_secs_f64() * 1000.0 / checks as f64,
    })
}

/// CPU of waited-for children (cutime + cstime), in milliseconds.
fn children_cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(13) + ticks(14)) * 10.0
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

#[tokio::main]
async fn main() {
    let a = args();
    println!(
        "linkwatch benchmark: {} | default interval {} | latency {} | failure rate {} | {} steady cycles\n",
        machine(),
        humantime::format_duration(a.interval),
        humantime::format_duration(a.latency),
        a.failure_rate,
        a.cycles
    );
    // The peers first, against their own simulator with the same latency.
    let mut curl = None;
    let mut python = None;
    if a.curl {
        eprintln!("curl peer ({} checks) ...", a.peer_checks);
        curl = curl_baseline(a.peer_checks, a.latency).await;
        match curl {
            Some(p) => println!(
                "Peer: one `curl --digest` process per check ({} checks): {:.2} requests/check, {:.2} ms CPU/check, {:.1} ms wall/check.",
                a.peer_checks, p.requests, p.cpu_ms, p.wall_ms
            ),
            None => println!("Peer: curl skipped (curl not found)."),
        }
    }
    if a.python {
        eprintln!("Python peer ({} checks) ...", a.peer_checks);
        match python_peer(a.peer_checks, a.latency).await {
            Ok(p) => {
                println!(
                    "Peer: Python `requests.Session` + `HTTPDigestAuth` loop ({} checks): {:.2} requests/check, {:.3} ms CPU/check, {:.1} ms wall/check.",
                    a.peer_checks, p.requests, p.cpu_ms, p.wall_ms
                );
                python = Some(p);
            }
            Err(why) => println!("Peer: Python skipped: {why}."),
        }
    }
    println!();
    let mut rows = Vec::new();
    for &(orgs, every) in &a.orgs {
        let sized = Args {
            interval: every.unwrap_or(a.interval),
            ..a.clone()
        };
        let every = humantime::format_duration(sized.interval);
        eprintln!("running {orgs} orgs every {every} ...");
        let mut row = run_size(&sized, orgs, Duration::from_secs(60), !a.quick).await;
        if !a.quick {
            eprintln!("running {orgs} orgs every {every} with a 5 s nonce lifetime ...");
            let short = run_size(
                &Args {
                    cycles: 1,
                    perf: None,
                    ..sized.clone()
                },
                orgs,
                Duration::from_secs(5),
                false,
            )
            .await;
            row.requests_per_check_short_nonce = short.requests_per_check;
        }
        rows.push(row);
    }
    let ratio = |peer: Option<Peer>, r: &Row| match peer {
        Some(p) => format!("{:.0}x", p.cpu_ms / r.cpu_ms_per_check),
        None => "-".to_owned(),
    };
    println!(
        "| orgs | interval | checks/s | missed | req/check | req/check (5 s nonce) | CPU ms/check | PostgreSQL CPU ms/check | vs Python | vs curl | CPU % of a core | peak RSS MB | DB bytes/org/day (steady) | DB bytes/change | event→receiver p50 / p99 / max ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {:.2} | {:.1} | {:.0} | {:.0} | {:.1} / {:.1} / {:.1} |",
            r.orgs,
            humantime::format_duration(r.interval),
            r.checks_per_s,
            r.missed,
            r.requests_per_check,
            r.requests_per_check_short_nonce,
            r.cpu_ms_per_check,
            r.db_cpu_ms_per_check,
            ratio(python, r),
            ratio(curl, r),
            r.cpu_pct,
            r.peak_rss_mb,
            r.bytes_per_org_day,
            r.bytes_per_change,
            r.latency.0,
            r.latency.1,
            r.latency.2
        );
    }
    println!("\n\"vs Python\" and \"vs curl\": how many times more CPU per check the peer spends than linkwatch.");
    if !a.quick {
        eprintln!("draining 1,000 Slack deliveries ...");
        let (took, posts) = drain_slack().await;
        println!(
            "\nOutbox drain, 1,000 pending deliveries to one Slack webhook: {took:.1} s in {posts} posts (digests, about one post a second)."
        );
    }
}
