//! `spawn_app()`: a simulated Cloud Manager on port 0, a config file and database in a temporary
//! directory, and an `App` built from them exactly as `linkwatch run` builds it.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkwatch::channels::ConsoleSink;
use linkwatch::check::CheckReport;
use linkwatch::clock::Clock;
use linkwatch::config::Config;
use linkwatch::daemon::{self, App};
use linkwatch::dispatch;
use linkwatch::simulator::{self, Behavior, Simulator};
use linkwatch::store::{Store, StoredEvent};

pub const ORG_A: &str = "5f0c00000000000000000a01";
pub const ORG_B: &str = "5f0c00000000000000000b02";
pub const PUBLIC_KEY: &str = "test-public";
pub const PRIVATE_KEY: &str = "test-private-key-0123";
/// The Atlas API key `[atlas]` uses in tests (the simulator knows it).
pub const ATLAS_PUBLIC_KEY: &str = "atlas-public";
pub const ATLAS_PRIVATE_KEY: &str = "atlas-private-key-4567";
pub const GROUP: &str = "6f0c00000000000000000c01";
pub const MIGRATION_A: &str = "6f1d00000000000000000d01";

/// `[atlas]` (no extra lines) and one `[[migration]]` ("payments-rs0", [`MIGRATION_A`] of org
/// alpha, lag alerts above 10 minutes), for `Setup::atlas`.
pub fn one_live_migration() -> Option<(String, String)> {
    Some((
        String::new(),
        format!(
            "[[migration]]\nname = \"payments-rs0\"\norg = \"alpha\"\ngroup_id = \"{GROUP}\"\nid = \"{MIGRATION_A}\"\nlag_alert = \"10m\"\n"
        ),
    ))
}

pub struct Setup {
    /// `[cloud_manager]` credential lines.
    pub credential: String,
    /// Extra lines for `[poll]`.
    pub poll: String,
    pub timeout: &'static str,
    /// Top-level keys (before any table).
    pub top: String,
    /// Where the database goes; by default a temporary directory.
    pub database: Option<PathBuf>,
    /// A PostgreSQL URL instead of a file (see `pg::database`).
    pub database_url: Option<String>,
    /// Orgs beyond alpha and beta, with ids from [`extra_org`].
    pub extra_orgs: usize,
    /// `[[channel]]` and `[[route]]` tables; by default one console channel.
    pub channels: String,
    pub sim_options: simulator::Tuning,
    /// Dispatcher settings (retry policy, ...); the app's clock replaces theirs.
    pub delivery: Option<dispatch::DeliverySettings>,
    /// `[atlas]` (the simulator's Atlas and [`ATLAS_PUBLIC_KEY`]) with these extra lines, and
    /// after it these `[[migration]]` tables; `None`: no `[atlas]`.
    pub atlas: Option<(String, String)>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            credential: format!("public_key = \"{PUBLIC_KEY}\"\nprivate_key = \"{PRIVATE_KEY}\""),
            poll: String::new(),
            timeout: "2s",
            top: String::new(),
            database: None,
            database_url: None,
            extra_orgs: 0,
            channels: "[[channel]]\nname = \"console\"\nkind = \"console\"\n".into(),
            sim_options: simulator::Tuning::default(),
            delivery: None,
            atlas: None,
        }
    }
}

pub struct TestApp {
    pub sim: Simulator,
    pub app: Arc<App>,
    pub console: Arc<Mutex<Vec<String>>>,
    pub config_path: PathBuf,
    pub db_path: PathBuf,
    delivery: Option<dispatch::DeliverySettings>,
    // Held, never read: the directory is deleted when the TestApp is dropped.
    _dir: tempfile::TempDir,
}

/// A port that was free a moment ago: nothing listens there until a test binds it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The id of the n-th extra org.
pub fn extra_org(n: usize) -> String {
    format!("{:024x}", 0xe000 + n)
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Setup::default()).await
}

/// An email channel named "mail" to the SMTP server on `port` of 127.0.0.1, for `Setup::channels`.
pub fn mail_channel(port: u16, to: &[&str]) -> String {
    let to: Vec<String> = to.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[channel]]\nname = \"mail\"\nkind = \"email\"\nsmtp_url = \"smtp://127.0.0.1:{port}\"\n\
         from = \"linkwatch@example.com\"\nto = [{}]\n",
        to.join(", ")
    )
}

/// `[http] listen` on a free port of 127.0.0.1, for `Setup::top`.
pub fn http_listen(port: u16) -> String {
    format!("[http]\nlisten = \"127.0.0.1:{port}\"")
}

/// The default app with `/metrics` and `/healthz` served on the returned port.
pub async fn spawn_app_with_http() -> (TestApp, u16) {
    let port = free_port();
    let t = spawn_app_with(Setup {
        top: http_listen(port),
        ..Setup::default()
    })
    .await;
    (t, port)
}

pub async fn spawn_app_with(setup: Setup) -> TestApp {
    let sim = Simulator::start(([127, 0, 0, 1], 0).into(), setup.sim_options.clone())
        .await
        .expect("simulator starts");
    sim.add_api_key(PUBLIC_KEY, PRIVATE_KEY);
    sim.add_api_key(ATLAS_PUBLIC_KEY, ATLAS_PRIVATE_KEY);
    sim.set(ORG_A, Behavior::status("NOT_SYNCED"));
    sim.set(ORG_B, Behavior::status("SYNCED"));
    let dir = tempfile::tempdir().expect("temporary directory");
    let db_path = setup
        .database
        .clone()
        .unwrap_or_else(|| dir.path().join("state").join("linkwatch.db"));
    let config_path = dir.path().join("linkwatch.toml");
    let toml = format!(
        r#"database = "{db}"
{top}

[cloud_manager]
base_url = "{base}"
{credential}

[poll]
every = "1s"
timeout = "{timeout}"
{poll}

[[org]]
id = "{ORG_A}"
name = "alpha"

[[org]]
id = "{ORG_B}"
name = "beta"

{channels}
{atlas}
"#,
        db = setup
            .database_url
            .clone()
            .unwrap_or_else(|| db_path.display().to_string()),
        base = sim.base_url(),
        credential = setup.credential,
        poll = setup.poll,
        timeout = setup.timeout,
        channels = setup.channels,
        top = setup.top,
        atlas = setup.atlas.as_ref().map_or(String::new(), |(lines, migrations)| format!(
            "[atlas]\nbase_url = \"{}\"\npublic_key = \"{ATLAS_PUBLIC_KEY}\"\nprivate_key = \"{ATLAS_PRIVATE_KEY}\"\n{lines}\n\n{migrations}",
            sim.atlas_base_url()
        )),
    );
    std::fs::write(&config_path, toml).expect("config written");
    let extra: String = (0..setup.extra_orgs)
        .map(|n| format!("\n[[org]]\nid = \"{}\"\nname = \"org-{n}\"\n", extra_org(n)))
        .collect();
    if !extra.is_empty() {
        // Orgs go before the first [[channel]], to stay out of its table.
        let text = std::fs::read_to_string(&config_path).unwrap();
        let at = text.find("[[channel]]").unwrap_or(text.len());
        std::fs::write(&config_path, format!("{}{extra}\n{}", &text[..at], &text[at..])).unwrap();
    }
    let console = Arc::new(Mutex::new(Vec::new()));
    let app = build(&config_path, &console, setup.delivery.as_ref(), Clock::system()).await;
    TestApp {
        sim,
        app,
        console,
        config_path,
        db_path,
        delivery: setup.delivery,
        _dir: dir,
    }
}

/// The `App` that `linkwatch run` would build from `config_path`, on `clock`, with the delivery
/// settings a test injects (short retry delays) when it gives some.
async fn build(
    config_path: &std::path::Path,
    console: &Arc<Mutex<Vec<String>>>,
    delivery: Option<&dispatch::DeliverySettings>,
    clock: Clock,
) -> Arc<App> {
    let config = Config::load(config_path).unwrap_or_else(|e| panic!("test config invalid: {e}"));
    let sink = ConsoleSink::Memory(console.clone());
    let store = Store::open(&config.database).await.expect("database opens");
    let app = match delivery {
        Some(settings) => {
            let settings = dispatch::DeliverySettings {
                clock,
                ..settings.clone()
            };
            App::with_delivery(config, store, Default::default(), sink, settings)
        }
        None => App::with_store(config, store, Default::default(), sink, clock),
    };
    Arc::new(app.expect("app starts"))
}

/// The org with id `id` in `app`'s config.
pub fn org<'a>(app: &'a App, id: &str) -> &'a linkwatch::config::Org {
    app.config
        .orgs
        .iter()
        .find(|o| o.id.as_str() == id)
        .expect("org is configured")
}

impl TestApp {
    /// Checks org `id` once, as the scheduler would.
    pub async fn check(&self, id: &str) -> CheckReport {
        self.app
            .checker
            .check_org(org(&self.app, id))
            .await
            .expect("check recorded")
    }

    /// Checks the `[[migration]]` named `name` once, as the migration loop would.
    pub async fn check_live_migration(&self, name: &str) -> linkwatch::live_migration::LiveMigrationReport {
        let m = self
            .app
            .config
            .migrations
            .iter()
            .find(|m| m.name == name)
            .expect("migration is configured");
        linkwatch::live_migration::check_live_migration(&*self.app, m)
            .await
            .expect("migration check recorded")
    }

    /// Event kinds recorded for `id`, oldest first.
    pub async fn event_kinds(&self, id: &str) -> Vec<String> {
        self.events(Some(id)).await.into_iter().map(|e| e.kind).collect()
    }

    pub async fn events(&self, id: Option<&str>) -> Vec<StoredEvent> {
        let org = id.map(|i| linkwatch::config::OrgId::parse(i).unwrap());
        self.app.store.events(org.as_ref()).await.expect("events readable")
    }

    /// A new `App` on the same config (read again) and database, as after a restart of the
    /// process. The wall clock stays the test's, steps included.
    pub async fn restart(mut self) -> TestApp {
        self.app.store.close().await;
        let clock = self.app.clock.clone();
        self.app = build(&self.config_path, &self.console, self.delivery.as_ref(), clock).await;
        self
    }

    /// Starts the daemon loop on this app: scheduler, checks and channel workers.
    pub fn run(&self) -> Running {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(daemon::run_app(self.app.clone(), shutdown.clone()));
        Running { shutdown, task }
    }

    /// Silences org `org` (or only its live migration `migration`: (name, id)) for `hours` from
    /// the app's clock, by "alice", as `linkwatch silence add` would; the silence's id.
    pub async fn silence_for(&self, org: &str, migration: Option<(&str, &str)>, hours: i64, reason: &str) -> i64 {
        let now = self.app.clock.now();
        self.app
            .store
            .add_silence(&linkwatch::store::NewSilence {
                org_id: org,
                migration: migration.map(|(name, _)| name),
                migration_id: migration.map(|(_, id)| id),
                starts_at: now,
                ends_at: now + chrono::Duration::hours(hours),
                created_by: "alice",
                reason,
            })
            .await
            .expect("silence added")
    }

    /// Checks org `id` once through the client only, with the requests it took.
    pub async fn check_counted(&self, id: &str) -> (linkwatch::outcome::CheckOutcome, u64) {
        let org = linkwatch::config::OrgId::parse(id).unwrap();
        self.app
            .checker
            .client
            .check_counted(&org, &self.app.config.orgs[0].endpoint, &self.app.config.credentials[0])
            .await
    }

    /// Sends what is due on every channel once, as the channel workers would.
    pub async fn dispatch(&self) -> usize {
        self.app
            .dispatcher
            .dispatch_all_due(&self.app.store)
            .await
            .expect("outbox readable")
    }

    pub fn console_lines(&self) -> Vec<String> {
        self.console.lock().unwrap().clone()
    }
}

/// The daemon loop (`daemon::run_app`) of a test app, running in the background.
pub struct Running {
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops it as SIGTERM would, and waits at most `deadline` for a clean return.
    pub async fn stop(self, deadline: Duration) {
        self.shutdown.cancel();
        tokio::time::timeout(deadline, self.task)
            .await
            .expect("run() returns after shutdown")
            .expect("no panic")
            .expect("no error");
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Runs the channel workers (not the scheduler, so no check adds events) until `condition`.
pub async fn deliver_until<F, Fut>(t: &TestApp, what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut workers = tokio::task::JoinSet::new();
    t.app
        .dispatcher
        .spawn(t.app.store.clone(), shutdown.clone(), &mut workers);
    wait_until(Duration::from_secs(20), what, condition).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), workers.join_all())
        .await
        .unwrap();
}

/// Waits until `condition` holds, polling, or panics after `deadline` with `what`.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    loop {
        if condition().await {
            return;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The binary as a user runs it: no `RUST_LOG` or systemd `CREDENTIALS_DIRECTORY` of the test's
/// environment, killed if the test ends first.
pub fn linkwatch() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_linkwatch"));
    c.env_remove("RUST_LOG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .kill_on_drop(true);
    c
}

/// What the code under test logs on this thread (a current-thread runtime runs every task of
/// the test here), until the guard is dropped.
pub fn capture_logs() -> (
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    tracing::subscriber::DefaultGuard,
) {
    #[derive(Clone)]
    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Sink(logs.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || sink.clone())
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}
