//! `linkwatch demo`: the real daemon (the same `daemon::run` as `linkwatch run`) against a
//! simulated Cloud Manager on 127.0.0.1 with real Digest auth, a few orgs whose links change on
//! a short timeline, and a fresh database that is kept afterwards for the SQL examples.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::simulator::{self, Behavior, Simulator};
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
                (0.65, Behavior::status("NOT_SYNCED")),
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

/// The API key the simulator accepts when run on its own (`linkwatch simulate`). It guards
/// nothing real: the simulator serves made-up orgs.
pub const SIMULATE_PUBLIC_KEY: &str = "sim-public-key";
pub const SIMULATE_PRIVATE_KEY: &str = "sim-private-key";

/// `linkwatch simulate`: the demo's orgs, on a loop of ten minutes, until `shutdown`.
pub async fn simulate(listen: std::net::SocketAddr, shutdown: CancellationToken) -> anyhow::Result<()> {
    let sim = Simulator::start(listen, simulator::Options::default())
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
    for (id, name, _) in &orgs {
        println!("  org {id}  {name}");
    }
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
    let sim = Simulator::start(([127, 0, 0, 1], 0).into(), simulator::Options::default())
        .await
        .context("cannot start the simulated Cloud Manager")?;
    let public_key = "demo-public-key";
    let private_key = format!("{:032x}", rand::random::<u128>());
    sim.add_api_key(public_key, &private_key);
    let orgs = timeline();
    for (id, _, script) in &orgs {
        sim.script(
            id,
            script.iter().map(|(f, b)| (duration.mul_f64(*f), b.clone())).collect(),
        );
    }

    let dir = std::env::temp_dir().join(format!("linkwatch-demo-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S")));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let db = dir.join("linkwatch.db");
    let page = page_address();
    let mut toml = format!(
        r#"database = "{db}"

[http]
listen = "{page}"

[cloud_manager]
base_url = "{base}"
public_key = "{public_key}"
private_key = "{private_key}"

[poll]
every = "{every}"
timeout = "5s"
failures_before_alert = 2

[[channel]]
name = "console"
kind = "console"
"#,
        db = db.display(),
        base = sim.base_url(),
        every = humantime::format_duration(every),
    );
    for (id, name, _) in &orgs {
        toml.push_str(&format!("\n[[org]]\nid = \"{id}\"\nname = \"{name}\"\n"));
    }
    let config_path = dir.join("demo.toml");
    let mut config = Config::parse(&toml, &config_path).context("the demo's own config is invalid")?;
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

    println!("linkwatch demo");
    println!(
        "  simulated Cloud Manager: {} (HTTP Digest, realm \"{}\")",
        sim.base_url(),
        simulator::REALM
    );
    println!(
        "  watching {} orgs every {} for {}; database {}",
        orgs.len(),
        humantime::format_duration(every),
        humantime::format_duration(duration),
        db.display()
    );
    println!("  status page: http://{page}/ (JSON: http://{page}/api/v1/status) while the demo runs");
    println!("  events as they happen (Ctrl-C stops early):\n");

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
    sim.stop().await;
    result?;

    summary(&db).await
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
    store.close().await;
    println!("\nstatus history (linkwatch history --database {}):\n", db.display());
    print_history(&changes);
    println!(
        r#"
The database is yours to query (it is kept until you delete it):

  sqlite3 -header -column {db} 'SELECT * FROM current_status'
  sqlite3 -header -column {db} 'SELECT * FROM status_changes ORDER BY changed_at'
  sqlite3 -header -column {db} 'SELECT kind, org_id, created_at FROM events'

More worked queries: README.md, "Query the history with SQL"."#,
        db = db.display()
    );
    Ok(())
}
