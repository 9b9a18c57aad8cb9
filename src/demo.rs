//! `linkwatch demo`: the real daemon (the same `daemon::run` as `linkwatch run`) against a
//! simulated Cloud Manager on 127.0.0.1 with real Digest auth, a few orgs whose links change on
//! a short timeline, and a fresh database that is kept afterwards for the SQL examples.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::simulator::{self, Behavior, LiveMigrationBehavior, Simulator};
use crate::store::Store;
use crate::table::print_history;

/// An org of the demo: id, name, and what it answers from which fraction of the run on.
type DemoOrg = (&'static str, &'static str, Vec<(f64, Behavior)>);

/// The demo's orgs and what happens to them, as fractions of the demo's duration.
fn timeline() -> Vec<DemoOrg> {
    let access_list = Behavior::error(
        403,
        "IP_ADDRESS_NOT_ON_ACCESS_LIST",
        "IP address 203.0.113.7 is not allowed to access this resource.",
    );
    let outage = Behavior::error(503, "UNEXPECTED_ERROR", "Unexpected error.");
    vec![
        (
            "5f0c00000000000000000001",
            "payments",
            vec![
                (0.0, Behavior::status("NOT_SYNCED")),
                (0.25, Behavior::status("SYNCED")),
                (0.8, Behavior::status("NOT_SYNCED")),
            ],
        ),
        (
            "5f0c00000000000000000002",
            "analytics",
            vec![
                (0.0, Behavior::status("NOT_SYNCED")),
                (0.45, Behavior::status("SYNCED")),
            ],
        ),
        (
            "5f0c00000000000000000003",
            "reporting",
            vec![
                (0.0, Behavior::status("SYNCED")),
                (0.15, outage),
                (0.5, Behavior::status("SYNCED")),
            ],
        ),
        ("5f0c00000000000000000004", "legacy-crm", vec![(0.0, access_list)]),
    ]
}

/// One org's script in words: "NOT_SYNCED, SYNCED at 2m 30s, NOT_SYNCED at 8m".
fn story(script: &[(f64, Behavior)], cycle: Duration) -> String {
    let said = |b: &Behavior| match b {
        Behavior::Status(s) => s.clone(),
        Behavior::Error { http, error_code, .. } => {
            format!("HTTP {http} {}", error_code.as_deref().unwrap_or_default())
                .trim_end()
                .to_owned()
        }
        Behavior::Raw { http, .. } => format!("HTTP {http} (not JSON)"),
        Behavior::Hang => "no answer".to_owned(),
    };
    let parts: Vec<String> = script
        .iter()
        .map(|(at, b)| match *at {
            0.0 => said(b),
            at => format!("{} at {}", said(b), humantime::format_duration(cycle.mul_f64(at))),
        })
        .collect();
    match parts.as_slice() {
        [only] => format!("always {only}"),
        _ => parts.join(", "),
    }
}

/// A config for the simulator at `base_url`, to paste into a file and run `linkwatch once` or
/// `linkwatch run` with.
fn snippet(base_url: &str, orgs: &[DemoOrg]) -> String {
    let mut out = format!(
        "# A config for this simulator: save it as sim.toml and run `linkwatch once --config sim.toml`.\n\
         database = \"sim.db\"\n\n[cloud_manager]\nbase_url = \"{base_url}\"\n\
         public_key = \"{SIMULATE_PUBLIC_KEY}\"\nprivate_key = \"{SIMULATE_PRIVATE_KEY}\"\n\n\
         [poll]\nevery = \"10s\"\n"
    );
    for (id, name, _) in orgs {
        out.push_str(&format!("\n[[org]]\nid = \"{id}\"\nname = \"{name}\"\n"));
    }
    out.push_str("\n[[channel]]\nname = \"console\"\nkind = \"console\"\n# (end of the config)");
    out
}

/// A live migration of the demo: name, id, and what Atlas answers from which fraction of the
/// run on. Both push from "payments".
type DemoLiveMigration = (&'static str, &'static str, Vec<(f64, LiveMigrationBehavior)>);

/// payments-rs0 goes the whole way (lag falling, ready for cutover, a deadline warning,
/// COMPLETE); payments-rs1 is still syncing when the payments link falls back to NOT_SYNCED.
fn live_migrations() -> Vec<DemoLiveMigration> {
    let working = |ready, lag| LiveMigrationBehavior::state("WORKING", ready, Some(lag));
    vec![
        (
            "payments-rs0",
            "6f1d00000000000000000001",
            vec![
                (0.0, LiveMigrationBehavior::state("NEW", false, None)),
                (0.3, working(false, 900)),
                (0.38, working(false, 400)),
                (0.44, working(false, 60)),
                (0.5, working(true, 12)),
                (0.72, LiveMigrationBehavior::state("COMPLETE", false, None)),
            ],
        ),
        (
            "payments-rs1",
            "6f1d00000000000000000002",
            vec![
                (0.0, LiveMigrationBehavior::state("NEW", false, None)),
                (0.4, working(false, 300)),
                (0.55, working(false, 120)),
            ],
        ),
    ]
}

/// The demo's Atlas project.
const DEMO_GROUP: &str = "6f0c00000000000000000001";

/// The API key the simulator accepts when run on its own (`linkwatch simulate`). It guards
/// nothing real: the simulator serves made-up orgs.
pub const SIMULATE_PUBLIC_KEY: &str = "sim-public-key";
pub const SIMULATE_PRIVATE_KEY: &str = "sim-private-key";

/// `linkwatch simulate`: the demo's orgs, on a loop of ten minutes, until `shutdown`.
pub async fn simulate(listen: std::net::SocketAddr, shutdown: CancellationToken) -> anyhow::Result<()> {
    let sim = Simulator::start(listen, simulator::Tuning::default())
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    sim.add_api_key(SIMULATE_PUBLIC_KEY, SIMULATE_PRIVATE_KEY);
    let cycle = Duration::from_secs(600);
    let orgs = timeline();
    let script_from = |start: Duration| {
        for (id, _, script) in &orgs {
            sim.script(
                id,
                script
                    .iter()
                    .map(|(f, b)| (start + cycle.mul_f64(*f), b.clone()))
                    .collect(),
            );
        }
    };
    script_from(Duration::ZERO);
    println!(
        "simulated Cloud Manager at {} (HTTP Digest, realm \"{}\")",
        sim.base_url(),
        simulator::REALM
    );
    println!("  API key: public_key = \"{SIMULATE_PUBLIC_KEY}\", private_key = \"{SIMULATE_PRIVATE_KEY}\"");
    // What happens when, so that a trial knows what to wait for.
    println!(
        "  what each org answers (the story repeats every {}):",
        humantime::format_duration(cycle)
    );
    for (id, name, script) in &orgs {
        println!("    {name:<11} {id}  {}", story(script, cycle));
    }
    println!("\n{}", snippet(&sim.base_url(), &orgs));
    let mut round = 1u32;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(cycle) => {
                script_from(cycle * round);
                round += 1;
            }
        }
    }
    sim.stop().await;
    Ok(())
}

pub async fn run(
    duration: Duration,
    every: Duration,
    extra: Option<&Path>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let sim = Simulator::start(([127, 0, 0, 1], 0).into(), simulator::Tuning::default())
        .await
        .context("cannot start the simulated Cloud Manager")?;
    let private_key = format!("{:032x}", rand::random::<u128>());
    sim.add_api_key(PUBLIC_KEY, &private_key);
    let orgs = timeline();
    let migrations = live_migrations();
    play(&sim, &orgs, &migrations, duration);
    // Demo time is compressed: Atlas's 120-hour cutover window becomes a fraction of the run,
    // so that a deadline warning comes before the migration completes.
    let window = duration.mul_f64(0.3).max(Duration::from_secs(3));

    let dir = std::env::temp_dir().join(format!("linkwatch-demo-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S")));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let db = dir.join("linkwatch.db");
    let demo = Demo {
        sim: &sim,
        private_key: &private_key,
        orgs: &orgs,
        migrations: &migrations,
        duration,
        every,
        window,
        db: &db,
        page: page_address(),
    };
    let config = demo.config(&dir.join("demo.toml"), extra)?;
    demo.introduce();
    let result = run_daemon(config, duration, &shutdown).await;
    sim.stop().await;
    result?;

    summary(&db).await
}

/// The demo's Cloud Manager and Atlas key: its public half (the private half is random).
const PUBLIC_KEY: &str = "demo-public-key";

/// Starts each org's and each live migration's script on the simulator, its fractions of the
/// run turned into times.
fn play(sim: &Simulator, orgs: &[DemoOrg], migrations: &[DemoLiveMigration], duration: Duration) {
    for (id, _, script) in orgs {
        sim.script(
            id,
            script.iter().map(|(f, b)| (duration.mul_f64(*f), b.clone())).collect(),
        );
    }
    for (_, id, script) in migrations {
        sim.script_live_migration(
            id,
            script.iter().map(|(f, b)| (duration.mul_f64(*f), b.clone())).collect(),
        );
    }
}

/// One run of the demo: the simulator and its key, what it plays, how long and how often, and
/// where the database and the status page are.
struct Demo<'a> {
    sim: &'a Simulator,
    private_key: &'a str,
    orgs: &'a [DemoOrg],
    migrations: &'a [DemoLiveMigration],
    duration: Duration,
    every: Duration,
    /// The compressed cutover window.
    window: Duration,
    db: &'a Path,
    page: std::net::SocketAddr,
}

impl Demo<'_> {
    /// The demo's config (written at `path`, for messages), with the channels and routes of
    /// `extra` added.
    fn config(&self, path: &Path, extra: Option<&Path>) -> anyhow::Result<Config> {
        let mut config = Config::parse(&self.toml(), path).context("the demo's own config is invalid")?;
        if let Some(extra) = extra {
            let extra = Config::load(extra)?;
            config.channels.extend(extra.channels);
            if !extra.routes.is_empty() {
                // Routes restrict where events go; the demo's console keeps seeing everything.
                config.routes.extend(extra.routes);
                config.routes.push(crate::config::Route {
                    channels: vec!["console".into()],
                    events: None,
                    to: None,
                    orgs: None,
                    remind_every: None,
                });
            }
        }
        Ok(config)
    }

    /// The config file of the demo: the simulator as Cloud Manager and Atlas, each org and
    /// live migration, and a console channel.
    fn toml(&self) -> String {
        let warning = self.window.mul_f64(2.0 / 3.0);
        let mut toml = format!(
            r#"database = "{db}"

[http]
listen = "{page}"

[cloud_manager]
base_url = "{base}"
public_key = "{PUBLIC_KEY}"
private_key = "{private_key}"

[poll]
every = "{every}"
timeout = "5s"
failures_before_alert = 2

[atlas]
base_url = "{atlas}"
public_key = "{PUBLIC_KEY}"
private_key = "{private_key}"
every = "{every}"
cutover_window = "{window}"
deadline_warnings = ["{warning}"]

[[channel]]
name = "console"
kind = "console"
"#,
            db = self.db.display(),
            page = self.page,
            base = self.sim.base_url(),
            private_key = self.private_key,
            atlas = self.sim.atlas_base_url(),
            every = humantime::format_duration(self.every),
            window = humantime::format_duration(self.window),
            warning = humantime::format_duration(warning),
        );
        for (id, name, _) in self.orgs {
            toml.push_str(&format!("\n[[org]]\nid = \"{id}\"\nname = \"{name}\"\n"));
        }
        for (name, id, _) in self.migrations {
            toml.push_str(&format!(
                "\n[[migration]]\nname = \"{name}\"\norg = \"payments\"\ngroup_id = \"{DEMO_GROUP}\"\nid = \"{id}\"\n"
            ));
        }
        toml
    }

    /// What the demo watches and where to look, before its events.
    fn introduce(&self) {
        let page = self.page;
        println!("linkwatch demo");
        println!(
            "  simulated Cloud Manager: {} (HTTP Digest, realm \"{}\")",
            self.sim.base_url(),
            simulator::REALM
        );
        println!(
            "  watching {} orgs every {} for {}; database {}",
            self.orgs.len(),
            humantime::format_duration(self.every),
            humantime::format_duration(self.duration),
            self.db.display()
        );
        println!(
            "  and {} Atlas live migrations of payments ({}); demo time is compressed: the cutover \
             window is {} instead of 120 h",
            self.migrations.len(),
            self.sim.atlas_base_url(),
            humantime::format_duration(self.window)
        );
        println!("  status page: http://{page}/ (JSON: http://{page}/api/v1/status) while the demo runs");
        println!("  events as they happen (Ctrl-C stops early):\n");
    }
}

/// The daemon on the demo's config until `duration` has passed or `shutdown` comes.
async fn run_daemon(config: Config, duration: Duration, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let stop = shutdown.child_token();
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(duration) => stop.cancel(),
                _ = stop.cancelled() => {}
            }
        })
    };
    let result = crate::daemon::run(config, stop.clone()).await;
    stop.cancel();
    let _ = timer.await;
    result
}

/// The demo's status page: 127.0.0.1:9187 (the port the README and the example use), or a
/// free port when something else has it. The port is released before the daemon binds it; if
/// another program takes it in between, the daemon says so and stops.
fn page_address() -> std::net::SocketAddr {
    let preferred = std::net::SocketAddr::from(([127, 0, 0, 1], DEMO_PAGE_PORT));
    std::net::TcpListener::bind(preferred)
        .or_else(|_| std::net::TcpListener::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))))
        .and_then(|l| l.local_addr())
        .unwrap_or(preferred)
}

/// Where the demo serves the status page when the port is free.
const DEMO_PAGE_PORT: u16 = 9187;

async fn summary(db: &Path) -> anyhow::Result<()> {
    let store = Store::open(&crate::config::Database::Sqlite(db.to_path_buf())).await?;
    let changes = store.history(None, None).await?;
    let migrations = store.live_migrations().await?;
    let mut lags = Vec::new();
    for m in &migrations {
        let series = store
            .live_migration_lag(&m.migration_id, chrono::DateTime::UNIX_EPOCH)
            .await?;
        lags.push(
            series
                .iter()
                .map(|(_, lag)| lag.map_or("-".to_owned(), crate::message::human_secs))
                .collect::<Vec<_>>()
                .join(" -> "),
        );
    }
    store.close().await;
    println!("\nstatus history (linkwatch history --database {}):\n", db.display());
    print_history(&changes);
    println!("\nlive migrations (the migration_status view; lag as sampled):\n");
    for (m, lag) in migrations.iter().zip(&lags) {
        println!(
            "  {:<14} {:<10} ready for cutover: {:<5} lag: {}",
            m.migration,
            m.status.as_deref().unwrap_or("-"),
            m.ready_for_cutover,
            lag
        );
    }
    println!(
        r#"
The database is yours to query (it is kept until you delete it):

  sqlite3 -header -column {db} 'SELECT * FROM current_status'
  sqlite3 -header -column {db} 'SELECT * FROM status_changes ORDER BY changed_at'
  sqlite3 -header -column {db} 'SELECT kind, org_id, created_at FROM events'
  sqlite3 -header -column {db} 'SELECT * FROM migration_changes ORDER BY changed_at'

More worked queries: README.md, "Query the history with SQL"."#,
        db = db.display()
    );
    Ok(())
}
