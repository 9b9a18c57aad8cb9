//! PostgreSQL: a database of its own per test, on the server `LINKWATCH_TEST_POSTGRES` names
//! (default `postgres://postgres@127.0.0.1:5432/test`). Without a server the tests say they were
//! skipped and pass, unless `LINKWATCH_REQUIRE_POSTGRES=1` (CI sets it: there they must run; `0` means
//! not required).

use std::time::Duration;

use linkwatch::simulator::Behavior;
use linkwatch::store::{Store, Term};
use sqlx::Connection as _;

use crate::helpers::*;

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A fresh database, dropped when this is dropped.
pub struct PgDb {
    pub url: String,
    admin: String,
    name: String,
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs outside async: a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                }
            });
        })
        .join();
    }
}

/// A new, empty database, or `None` (with a note on stderr) when no PostgreSQL server answers.
pub async fn database() -> Option<PgDb> {
    let admin = std::env::var("LINKWATCH_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_ADMIN_URL.into());
    let connect = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&admin));
    let mut conn = match connect.await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return skipped(&admin, &e.to_string()),
        Err(_) => return skipped(&admin, "no answer within 5s"),
    };
    let name = format!("linkwatch_test_{:016x}", rand::random::<u64>());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE (the test role needs CREATEDB)");
    let mut url = reqwest::Url::parse(&admin).expect("LINKWATCH_TEST_POSTGRES is a URL");
    url.set_path(&name);
    Some(PgDb {
        url: url.to_string(),
        admin,
        name,
    })
}

fn skipped(admin: &str, why: &str) -> Option<PgDb> {
    crate::skip::skip(
        "LINKWATCH_REQUIRE_POSTGRES",
        "PostgreSQL",
        &format!(
            "cannot connect to {admin} ({why}); set LINKWATCH_TEST_POSTGRES=postgres://user@host:port/db to run the PostgreSQL tests"
        ),
    );
    None
}

/// Makes `store`'s process the leader for a while, as the lease loop of `linkwatch run` would.
pub async fn lead(store: &Store) -> i64 {
    let pg = store.postgres().expect("a PostgreSQL store");
    let holder = "test-leader";
    let epoch = pg
        .acquire_lease(holder, Duration::from_secs(600))
        .await
        .unwrap()
        .expect("the lease is free");
    pg.fence().lead(Term {
        holder: holder.into(),
        epoch,
        valid_until: tokio::time::Instant::now() + Duration::from_secs(600),
    });
    epoch
}

/// The same journey as on SQLite: first sight, a change confirmed, a failure, views and history
/// read back in linkwatch's time format.
#[tokio::test]
async fn checks_events_and_views_on_postgres() {
    let Some(db) = database().await else { return };
    let t = spawn_app_with(Setup {
        database_url: Some(db.url.clone()),
        ..Setup::default()
    })
    .await;
    lead(&t.app.store).await;
    t.check(ORG_A).await;
    t.check(ORG_B).await;
    assert_eq!(t.event_kinds(ORG_A).await, ["first_seen"]);
    t.sim.set(ORG_A, linkwatch::simulator::Behavior::status("SYNCED"));
    for _ in 0..3 {
        t.check(ORG_A).await;
    }
    assert_eq!(t.event_kinds(ORG_A).await, ["first_seen", "status_changed"]);
    let history = t.app.store.history(Some("alpha"), None).await.unwrap();
    let changes: Vec<(Option<&str>, &str)> = history
        .iter()
        .map(|c| (c.from_status.as_deref(), c.to_status.as_str()))
        .collect();
    assert_eq!(changes, [(None, "NOT_SYNCED"), (Some("NOT_SYNCED"), "SYNCED")]);
    assert!(history[1].changed_at.ends_with('Z'), "{}", history[1].changed_at);
    let current = t.app.store.current().await.unwrap();
    assert_eq!(current.len(), 2);
    assert_eq!(current[0].org_name, "alpha");
    assert_eq!(current[0].status.as_deref(), Some("SYNCED"));

    // A quiet check goes through the group commit.
    let before = t.app.store.current().await.unwrap()[0].last_checked_at.clone();
    t.check(ORG_A).await;
    t.app.checker.flush_quiet().await.unwrap();
    let after = t.app.store.current().await.unwrap()[0].last_checked_at.clone();
    assert!(after > before, "{after} > {before}");

    // Delivered through the outbox (console channel).
    assert!(t.dispatch().await >= 3);
    assert!(t.console_lines().iter().any(|l| l.contains("SYNCED")));
    t.app.store.close().await;
}

/// A store that does not hold the lease writes nothing: the check fails as fenced and the
/// database is unchanged.
#[tokio::test]
async fn writes_without_the_lease_are_refused() {
    let Some(db) = database().await else { return };
    let t = spawn_app_with(Setup {
        database_url: Some(db.url.clone()),
        ..Setup::default()
    })
    .await;
    let err = t
        .app
        .checker
        .check_org(org(&t.app, ORG_A))
        .await
        .expect_err("a check without the lease is not recorded");
    assert!(
        err.chain().any(|e| e.to_string().contains("no longer leads")),
        "{err:#}"
    );
    assert!(t.app.store.current().await.unwrap().is_empty());
    t.app.store.close().await;
}

/// A leader frozen inside a transaction (SIGSTOP, a paused VM) holds the lease row `FOR SHARE`:
/// the server ends that idle transaction, so another instance takes the lease once it expires
/// instead of waiting for the frozen one to wake.
#[tokio::test]
async fn a_leader_frozen_inside_a_transaction_does_not_keep_the_lease() {
    let Some(db) = database().await else { return };
    let config = linkwatch::config::Database::parse(&db.url, std::path::Path::new("")).unwrap();
    let (a, b) = (Store::open(&config).await.unwrap(), Store::open(&config).await.unwrap());
    let (pa, pb) = (a.postgres().unwrap(), b.postgres().unwrap());
    let ttl = Duration::from_secs(3);
    let epoch = pa.acquire_lease("a", ttl).await.unwrap().expect("a leads");
    // What a fenced write does first, on a's own pool; then a freezes before it commits.
    let mut frozen = pa.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM leader_lease WHERE holder = 'a' AND epoch = $1 FOR SHARE")
        .bind(epoch)
        .fetch_one(&mut *frozen)
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "b takes the lease", || async {
        matches!(pb.acquire_lease("b", ttl).await, Ok(Some(_)))
    })
    .await;
    drop(frozen);
    a.close().await;
    b.close().await;
}

/// Someone holding a lock on a table the leader writes (an analyst's transaction in psql, a
/// migration) makes a check wait; the leader must still renew its lease meanwhile, not lose it
/// to its own waiting write.
#[tokio::test]
async fn a_write_waiting_on_a_lock_does_not_cost_the_leader_its_lease() {
    let Some(db) = database().await else { return };
    let t = spawn_app_with(Setup {
        database_url: Some(db.url.clone()),
        ..Setup::default()
    })
    .await;
    let pg = t.app.store.postgres().unwrap().clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let timing = linkwatch::leader::LeaseTiming {
        ttl: Duration::from_secs(3),
    };
    let (leadership, lease) = linkwatch::leader::spawn(pg.clone(), timing, stop.clone(), "pg-test");
    let mut role = leadership.role.clone();
    let epoch = role.wait_for(|r| r.leads()).await.unwrap().epoch;
    t.check(ORG_A).await;

    // An analyst's transaction holds alpha's row.
    let mut analyst = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut held = analyst.begin().await.unwrap();
    sqlx::query("SELECT * FROM org_state WHERE org_id = $1 FOR UPDATE")
        .bind(ORG_A)
        .fetch_one(&mut *held)
        .await
        .unwrap();
    t.sim.set(ORG_A, linkwatch::simulator::Behavior::status("SYNCED"));
    let app = t.app.clone();
    let waiting = tokio::spawn(async move { app.checker.check_org(org(&app, ORG_A)).await });

    // While the check waits, the lease is renewed (its expiry moves on, twice).
    let watcher = sqlx::PgPool::connect(&db.url).await.unwrap();
    let expiry = || async {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>("SELECT expires_at FROM leader_lease")
            .fetch_one(&watcher)
            .await
            .unwrap()
    };
    let first = expiry().await;
    let seen = std::sync::Mutex::new(vec![first]);
    wait_until(
        Duration::from_secs(8),
        "the lease renewed twice while a write waits",
        || async {
            let now = expiry().await;
            let mut seen = seen.lock().unwrap();
            if seen.last() != Some(&now) {
                seen.push(now);
            }
            seen.len() >= 3
        },
    )
    .await;
    assert!(!waiting.is_finished(), "the check did not wait for the lock");
    assert_eq!(
        role.borrow().epoch,
        epoch,
        "the leader lost its lease to its own waiting write"
    );

    held.rollback().await.unwrap();
    let report = waiting
        .await
        .unwrap()
        .expect("the check is recorded once the lock is gone");
    assert_eq!(report.events.len(), 1);
    stop.cancel();
    lease.await.unwrap();
    watcher.close().await;
    t.app.store.close().await;
}

/// A leader deposed in the middle of a send (another instance took the lease) starts no new
/// send, but lets the one under way finish and records it: the receiver has it, and the next
/// leader must not send it again.
#[tokio::test]
async fn a_leader_deposed_during_a_send_records_what_the_receiver_accepted() {
    let Some(db) = database().await else { return };
    let receiver = crate::receiver::Receiver::start().await;
    receiver.reply_when(
        |_| true,
        crate::receiver::Reply {
            delay: Duration::from_secs(3),
            ..crate::receiver::Reply::status(200, "ok")
        },
    );
    let t = spawn_app_with(Setup {
        database_url: Some(db.url.clone()),
        top: "leader_lease = \"3s\"".into(),
        channels: format!(
            "[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n[[route]]\nchannels = [\"hook\"]\n",
            receiver.url("/hook")
        ),
        ..Setup::default()
    })
    .await;
    let running = t.run();
    receiver.wait_for_requests(1, Duration::from_secs(20)).await;

    // Another instance takes the lease while the receiver holds the first delivery.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE leader_lease SET holder = 'other', epoch = epoch + 1, expires_at = now() + interval '1 hour'")
        .execute(&pool)
        .await
        .unwrap();
    let sent = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE state = 'sent'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    wait_until(
        Duration::from_secs(20),
        "the delivery under way recorded as sent",
        || async { sent().await >= 1 },
    )
    .await;
    // Whatever the deposed instance would still do, it has done once it stopped: only the send
    // under way at the deposition reached the receiver (beta's first sight, if recorded before,
    // waits for the next leader).
    running.stop(Duration::from_secs(20)).await;
    assert_eq!(receiver.received().len(), 1, "a send started after deposition");
    assert_eq!(sent().await, 1);
    pool.close().await;
}

/// A deposed leader cuts its running checks off at once rather than waiting for them: a check
/// hanging on Cloud Manager (for as long as `poll.timeout`, which the stop would wait for) keeps
/// it neither from following nor from leading again when the lease comes back.
#[tokio::test]
async fn a_deposed_leader_cuts_off_a_hanging_check_and_leads_again_when_the_lease_comes_back() {
    let Some(db) = database().await else { return };
    let t = spawn_app_with(Setup {
        database_url: Some(db.url.clone()),
        timeout: "1h",
        top: "leader_lease = \"3s\"\nshutdown_timeout = \"1h\"".into(),
        ..Setup::default()
    })
    .await;
    t.sim.set(ORG_A, Behavior::Hang);
    let running = t.run();
    wait_until(Duration::from_secs(20), "alpha's check hanging", || async {
        t.sim.requests_for(ORG_A) >= 1
    })
    .await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let take = "UPDATE leader_lease SET holder = 'other', epoch = epoch + 1, expires_at = now() + interval '1 hour'";
    sqlx::query(take).execute(&pool).await.unwrap();
    wait_until(Duration::from_secs(20), "the leader deposed", || async {
        !t.app.store.may_send()
    })
    .await;

    // The other instance lets the lease run out: this one takes it back and checks again.
    sqlx::query("UPDATE leader_lease SET expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    let before = t.sim.requests_for(ORG_B);
    wait_until(
        Duration::from_secs(20),
        "beta checked again under the new lease",
        || async { t.sim.requests_for(ORG_B) >= before + 2 },
    )
    .await;
    // Deposed again, with alpha hanging again: the stop has no generation left to wait for.
    sqlx::query(take).execute(&pool).await.unwrap();
    wait_until(Duration::from_secs(20), "the leader deposed again", || async {
        !t.app.store.may_send()
    })
    .await;
    running.stop(Duration::from_secs(20)).await;
    pool.close().await;
}

/// A leader that has lost its lease asks Cloud Manager nothing more, and says so at info level,
/// not as an error: a failover must not fill the journal with an ERROR line per org.
#[tokio::test]
async fn a_check_after_the_lease_is_lost_is_not_an_error_in_the_log() {
    let Some(db) = database().await else { return };
    let (logs, _guard) = capture_logs();
    let t = spawn_app_with(Setup {
        database_url: Some(db.url.clone()),
        ..Setup::default()
    })
    .await;
    t.app.store.postgres().expect("on PostgreSQL").fence().depose();
    t.app.checker.scheduled(0).await;
    assert_eq!(t.sim.requests_for(ORG_A), 0, "a deposed leader asks nothing");
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let line = logs
        .lines()
        .find(|l| l.contains("no longer leads"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(line.contains(" INFO ") && line.contains("org=alpha"), "{line}");
    assert!(!logs.contains("ERROR"), "{logs}");
}

/// A stop that comes just after this instance lost the lease, before the daemon has followed
/// (the fence falls first, the role a database round trip later), is a deposed leader's stop:
/// it does not wait `shutdown_timeout` for a check hanging on Cloud Manager, nor send.
#[tokio::test]
async fn a_stop_right_after_the_lease_is_lost_does_not_wait_for_a_hanging_check() {
    let Some(db) = database().await else { return };
    let t = spawn_app_with(Setup {
        database_url: Some(db.url.clone()),
        timeout: "1h",
        top: "leader_lease = \"3s\"\nshutdown_timeout = \"1h\"".into(),
        ..Setup::default()
    })
    .await;
    t.sim.set(ORG_A, Behavior::Hang);
    let running = t.run();
    wait_until(Duration::from_secs(20), "alpha's check hanging", || async {
        t.sim.requests_for(ORG_A) >= 1
    })
    .await;
    t.app.store.postgres().expect("on PostgreSQL").fence().depose();
    running.stop(Duration::from_secs(20)).await;
}

/// The database-side fence, on its own: this instance still believes it leads (its own clock
/// says the term is good for minutes), but the database has moved on: another holder took the
/// lease. Its claim of a pending delivery and its write of a check must both be refused by the
/// lock on the lease row at commit, and nothing sent.
#[tokio::test]
async fn a_leader_that_still_believes_it_leads_is_refused_by_the_database() {
    let Some(db) = database().await else { return };
    let rx = crate::receiver::Receiver::start().await;
    let t = spawn_app_with(Setup {
        database_url: Some(db.url.clone()),
        channels: crate::notify::slack("ops", &rx.url("/hook")),
        ..Setup::default()
    })
    .await;
    let epoch = lead(&t.app.store).await;
    t.check(ORG_A).await;

    // Another instance takes the lease over, as after a partition: this one is not told.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let moved = sqlx::query(
        "UPDATE leader_lease SET holder = 'other', epoch = epoch + 1, expires_at = now() + interval '10 minutes'
         WHERE epoch = $1",
    )
    .bind(epoch)
    .execute(&pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(moved, 1);
    assert!(t.app.store.may_send(), "by its own clock it still leads");

    // The pending delivery: its claim is refused, so it is not sent.
    let sent = t.app.dispatcher.dispatch_all_due(&t.app.store).await;
    assert!(
        sent.as_ref()
            .is_err_and(|e| e.chain().any(|c| c.to_string().contains("no longer leads"))),
        "{sent:?}"
    );
    assert!(!t.app.store.may_send(), "the refusal deposes it locally too");
    assert_eq!(rx.received().len(), 0, "a deposed leader sent");

    // Believing it leads once more (a stale renewal, say), its check is refused too.
    let term = Term {
        holder: "test-leader".into(),
        epoch,
        valid_until: tokio::time::Instant::now() + Duration::from_secs(600),
    };
    t.app.store.postgres().unwrap().fence().lead(term);
    t.sim.set(ORG_B, linkwatch::simulator::Behavior::status("NOT_SYNCED"));
    let err = t
        .app
        .checker
        .check_org(org(&t.app, ORG_B))
        .await
        .expect_err("the database refuses the deposed leader's write");
    assert!(
        err.chain().any(|e| e.to_string().contains("no longer leads")),
        "{err:#}"
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 1, "only alpha's first sight, from before the takeover");
    assert_eq!(rx.received().len(), 0);
    pool.close().await;
    t.app.store.close().await;
}

/// The database-side fence with the channel workers running: a delivery the receiver asked to
/// retry later falls due after another instance took the lease over, while this instance's own
/// clock still says it leads. The worker's claim is refused, so the retry is not sent, and the
/// refused claim leaves nothing behind: the next leader sends the row at once, and once.
#[tokio::test]
async fn a_retry_due_after_a_takeover_is_left_to_the_next_leader() {
    use crate::delivery::{Workers, fast};
    use crate::receiver::{Receiver, Reply};
    // Long enough for the takeover below to land before the retry falls due.
    const RETRY_AFTER: Duration = Duration::from_secs(4);
    let Some(db) = database().await else { return };
    let rx = Receiver::start().await;
    rx.reply([Reply {
        retry_after: Some(RETRY_AFTER.as_secs()),
        ..Reply::status(503, "overloaded")
    }]);
    let t = spawn_app_with(Setup {
        database_url: Some(db.url.clone()),
        channels: crate::notify::slack("ops", &rx.url("/hook")),
        delivery: Some(fast()),
        ..Setup::default()
    })
    .await;
    let epoch = lead(&t.app.store).await;
    t.check(ORG_A).await;
    let workers = Workers::start(&t);
    rx.wait_for_requests(1, Duration::from_secs(20)).await;

    // Another instance takes the lease over, as after a partition: this one is not told.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query(
        "UPDATE leader_lease SET holder = 'other', epoch = epoch + 1, expires_at = now() + interval '10 minutes'
         WHERE epoch = $1",
    )
    .bind(epoch)
    .execute(&pool)
    .await
    .unwrap();
    assert!(
        std::time::Instant::now() < rx.received()[0].at + RETRY_AFTER,
        "the takeover came after the retry was due: nothing was tested"
    );
    assert!(t.app.store.may_send(), "by its own clock it still leads");
    wait_until(
        Duration::from_secs(20),
        "the retry's claim refused (or the retry sent)",
        || async { !t.app.store.may_send() || rx.received().len() > 1 },
    )
    .await;
    workers.stop().await;
    assert_eq!(rx.received().len(), 1, "a deposed leader sent the retry");

    // The other instance gives the lease up, and a new process takes it: the retry goes, once.
    sqlx::query("UPDATE leader_lease SET expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    let t = t.restart().await;
    lead(&t.app.store).await;
    let workers = Workers::start(&t);
    wait_until(Duration::from_secs(20), "the retry sent by the next leader", || async {
        !rx.accepted().is_empty()
    })
    .await;
    workers.stop().await;
    assert_eq!(rx.received().len(), 2, "one refused post and one accepted");
    let (state, attempts): (String, i32) = sqlx::query_as("SELECT state, attempts FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((state.as_str(), attempts), ("sent", 2));
    pool.close().await;
    t.app.store.close().await;
}

/// Every PostgreSQL command used to log sqlx's notice that its own table already exists.
#[tokio::test]
async fn a_postgres_command_does_not_log_the_servers_notices() {
    let Some(db) = database().await else { return };
    let t = spawn_app_with(Setup {
        database_url: Some(db.url.clone()),
        ..Setup::default()
    })
    .await;
    t.app.store.close().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_linkwatch"))
        .args(["history", "--config"])
        .arg(&t.config_path)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("_sqlx_migrations"), "{stderr}");
}

/// A database that is not there, or a server that is not there, is said once, with where.
#[tokio::test]
async fn an_unreachable_database_is_named_with_host_port_and_the_servers_words_once() {
    let t = spawn_app().await;
    let history = |url: String| {
        let text = std::fs::read_to_string(&t.config_path).unwrap();
        let path = t.config_path.with_file_name("pg.toml");
        let db = t.db_path.display().to_string();
        std::fs::write(
            &path,
            text.replace(&format!("database = \"{db}\""), &format!("database = \"{url}\"")),
        )
        .unwrap();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_linkwatch"))
                .args(["history", "--config"])
                .arg(&path)
                .env_remove("RUST_LOG")
                .output();
            let out = tokio::time::timeout(Duration::from_secs(30), out)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(out.status.code(), Some(1));
            String::from_utf8_lossy(&out.stderr).into_owned()
        }
    };
    let port = free_port();
    let stderr = history(format!("postgres://postgres@127.0.0.1:{port}/test")).await;
    assert!(
        stderr.contains(&format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{port}: Connection refused"
        )),
        "{stderr}"
    );
    if database().await.is_none() {
        return;
    }
    let stderr = history("postgres://postgres@127.0.0.1:5432/linkwatch_no_such_db".into()).await;
    assert!(
        stderr.contains("PostgreSQL at 127.0.0.1:5432 refused: database \"linkwatch_no_such_db\" does not exist"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("does not exist").count(), 1, "{stderr}");
    assert!(!stderr.contains("at line"), "{stderr}");
}

/// A TCP proxy in front of the test server that passes everything through until `silent` is
/// set, then swallows what either side sends: a server that accepted the connection and never
/// answers again (a hung host, a half-open connection behind a firewall).
async fn silenceable_proxy(url: &str) -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let mut url = reqwest::Url::parse(url).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    url.set_port(Some(listener.local_addr().unwrap().port())).unwrap();
    let silent = Arc::new(AtomicBool::new(false));
    let flag = silent.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            for (mut from, mut to) in [(client_read, server_write), (server_read, client_write)]
                .map(|(r, w)| (Box::new(r) as Box<dyn tokio::io::AsyncRead + Unpin + Send>, w))
            {
                let silent = flag.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = from.read(&mut buf).await {
                        if !silent.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
    });
    (url.to_string(), silent)
}

/// A database that accepted the connection and then never answers does not stall a loop: each
/// store call, a read and a fenced write alike, fails at the store's deadline with
/// `StoreError::Timeout`.
#[tokio::test]
async fn a_database_that_stops_answering_fails_each_store_call_at_its_deadline() {
    use linkwatch::store::StoreError;
    let Some(db) = database().await else { return };
    let (url, silent) = silenceable_proxy(&db.url).await;
    let database = linkwatch::config::Database::parse(&url, std::path::Path::new("")).unwrap();
    let deadline = Duration::from_millis(500);
    let store = Store::open(&database).await.unwrap().with_deadline(deadline);
    lead(&store).await;
    assert!(
        store.current().await.unwrap().is_empty(),
        "the proxy passes answers through"
    );

    silent.store(true, std::sync::atomic::Ordering::SeqCst);
    let org = linkwatch::config::OrgId::parse(ORG_A).unwrap();
    let started = tokio::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(10), store.current()).await;
    let write = tokio::time::timeout(
        Duration::from_secs(10),
        store.record_if_quiet(&org, "alpha", "SYNCED", chrono::Utc::now()),
    )
    .await;
    let took = started.elapsed();
    assert!(
        matches!(read, Ok(Err(StoreError::Timeout(d))) if d == deadline),
        "a read past the deadline: {read:?}"
    );
    assert!(
        matches!(write, Ok(Err(StoreError::Timeout(d))) if d == deadline),
        "a write past the deadline: {write:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "two calls took {took:?} for a deadline of {deadline:?}"
    );
}
