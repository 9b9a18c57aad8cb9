//! The command line: argument definitions and one function per command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::channels::ConsoleSink;
use crate::check::CheckReport;
use crate::config::{self, Config, Database, LiveMigration, Org};
use crate::daemon::{self, Delivered};
use crate::dispatch::Dispatcher;
use crate::live_migration::LiveMigrationReport;
use crate::store::{self, Store};
use crate::table::{print_history, print_table};
use crate::{demo, message};

mod silence;

#[derive(Debug, Parser)]
#[command(
    name = "linkwatch",
    version,
    about = "Watches Cloud Manager -> Atlas migration links and tells you when they change"
)]
pub struct Cli {
    /// The configuration file [default: /etc/linkwatch/linkwatch.toml].
    #[arg(long, global = true, env = "LINKWATCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Use this database (a SQLite file, or a postgres:// URL) instead of the config's `database`.
    #[arg(long, global = true, env = "LINKWATCH_DATABASE", value_parser = parse_database)]
    pub database: Option<Database>,
    /// Where `${CREDENTIALS_DIRECTORY}` in `*_file` keys points when systemd did not set it:
    /// the folder `LoadCredential=` reads (e.g. /etc/linkwatch/credentials).
    #[arg(long, global = true, value_name = "DIR")]
    pub credentials_dir: Option<PathBuf>,
    /// More log detail (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors in the log.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGINT or SIGTERM.
    Run,
    /// Validate the configuration and show what would be watched.
    Check {
        /// Also ask Cloud Manager about every org (and Atlas about every live migration) once,
        /// with their keys, storing nothing: exit 1 when any is refused.
        #[arg(long)]
        online: bool,
    },
    /// Check every org once, record the results, send the events, print a table.
    Once,
    /// Show status changes from the database.
    History {
        /// Only this org (id or name).
        #[arg(long)]
        org: Option<String>,
        /// Only changes since then: a duration ("7d", "12h") or a date ("2026-11-01").
        #[arg(long)]
        since: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send a clearly marked test message through one channel and print the outcome.
    NotifyTest {
        /// The channel's name.
        #[arg(long)]
        channel: String,
    },
    /// Send a report of every link (as `[[report]]` sends on schedule) to one channel now.
    Report {
        /// The channel's name.
        #[arg(long)]
        channel: String,
    },
    /// Keep an org or a live migration quiet for planned work (add, list, end).
    Silence {
        #[command(subcommand)]
        action: silence::SilenceAction,
    },
    /// Serve the demo's simulated Cloud Manager on its own (for docker compose and trials).
    Simulate {
        /// Address and port to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Copy a SQLite history (states, changes, events, deliveries) into PostgreSQL. Safe to run
    /// again: what is there already is not copied twice. Stop every linkwatch first.
    CopyHistory {
        /// The SQLite file (a path or sqlite://PATH).
        #[arg(long, value_parser = parse_database)]
        from: Database,
        /// The PostgreSQL database (postgres://user@host:5432/database).
        #[arg(long, value_parser = parse_database)]
        to: Database,
    },
    /// Run the real daemon against a built-in simulated Cloud Manager and watch links change.
    Demo {
        /// How long to run.
        #[arg(long, default_value = "40s", value_parser = parse_duration)]
        duration: Duration,
        /// How often each org is checked.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        every: Duration,
    },
}

fn parse_database(s: &str) -> Result<Database, String> {
    Database::parse(s, Path::new(""))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. \"30s\")"))
}

impl Cli {
    fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH))
    }

    fn load_config(&self) -> anyhow::Result<Config> {
        self.load_config_with(config::Secrets::Read)
    }

    /// The config, with its secrets read as `secrets` says.
    fn load_config_with(&self, secrets: config::Secrets) -> anyhow::Result<Config> {
        let options = config::LoadOptions {
            secrets,
            credentials_dir: self.credentials_dir.clone(),
        };
        let mut config = Config::load_with(&self.config_path(), &options)?;
        if let Some(db) = &self.database {
            config.database = db.clone();
        }
        Ok(config)
    }

    /// The default log filter for this command, before -v/-q and RUST_LOG. tokio-cron-scheduler
    /// logs its start-up at info ("Uninited", "Job creator created"), which says nothing to a
    /// user: only its warnings show unless asked for.
    pub fn log_filter(&self) -> &'static str {
        match (self.quiet, self.verbose, &self.command) {
            (true, _, _) => "error",
            (false, 0, Command::Demo { .. }) => "error",
            // PostgreSQL's notices ("relation _sqlx_migrations already exists, skipping" at
            // every start) are the server talking to itself.
            (false, 0, _) => "info,tokio_cron_scheduler=warn,sqlx::postgres::notice=warn",
            (false, 1, _) => "linkwatch=debug,tokio_cron_scheduler=warn,sqlx::postgres::notice=warn,info",
            _ => "linkwatch=trace,debug",
        }
    }
}

/// Sets up logging on standard error; standard output is for command output and the console
/// channel.
pub fn init_tracing(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli.log_filter()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether log lines carry colour: only to a terminal, and not when `NO_COLOR` is set to
/// anything (no-color.org). A file, a pipe or the journal gets plain text.
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// A message on the returned channel for every SIGHUP (`systemctl reload`).
pub fn reload_on_sighup() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload needs a restart");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received, reloading the config");
            // A reload already queued covers this one too.
            let _ = tx.try_send(());
        }
    });
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// Cancels the returned token on SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received, stopping");
        t.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Run => {
            run(&cli).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate { listen } => {
            demo::simulate(*listen, shutdown_on_signals()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { online: false } => check(&cli.load_config_with(config::Secrets::NoteUnreadable)?),
        Command::Check { online: true } => {
            let config = cli.load_config()?;
            check(&config)?;
            check_online(&config).await
        }
        Command::NotifyTest { channel } => notify_test(&cli.load_config()?, channel).await,
        Command::Report { channel } => report_now(&cli.load_config()?, channel).await,
        Command::Once => once(cli.load_config()?).await,
        Command::History { org, since, json } => {
            // Reading the history needs the database and no other secret.
            let (db, configured) = match (&cli.database, &cli.config) {
                // Only a database: its orgs are all there is to know.
                (Some(db), None) => (db.clone(), Vec::new()),
                _ => {
                    let config = cli.load_config_with(config::Secrets::DatabaseOnly)?;
                    let orgs = config.orgs.iter().map(|o| (o.name.clone(), o.id.to_string())).collect();
                    (config.database, orgs)
                }
            };
            history(&db, &configured, org.as_deref(), since.as_deref(), *json).await
        }
        Command::Silence { action } => {
            // Names come from the config; the database is the one secret it needs.
            silence::execute(&cli.load_config_with(config::Secrets::DatabaseOnly)?, action).await
        }
        Command::CopyHistory { from, to } => {
            let copied = crate::copy::copy_history(from, to).await?;
            println!("copied {from} into {to}");
            print!("{copied}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { duration, every } => {
            demo::run(*duration, *every, cli.config.as_deref(), shutdown_on_signals()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `linkwatch run`: the daemon until SIGINT or SIGTERM, reading the config again on SIGHUP.
async fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = cli.load_config()?;
    let (path, database) = (cli.config_path(), cli.database.clone());
    let load = config::LoadOptions {
        credentials_dir: cli.credentials_dir.clone(),
        ..Default::default()
    };
    let options = daemon::Options {
        reload: Some(reload_on_sighup()),
        loader: Some(Box::new(move || {
            let mut config = Config::load_with(&path, &load)?;
            if let Some(db) = &database {
                config.database = db.clone();
            }
            Ok(config)
        })),
        ..daemon::Options::default()
    };
    daemon::run_with(config, shutdown_on_signals(), options).await
}

/// `linkwatch check`: builds what `run` would build first, without the database (opening it
/// would create it), and shows what the config watches.
fn check(config: &Config) -> anyhow::Result<ExitCode> {
    // Building the channels reads CA files and parses SMTP URLs: what `run` would do first.
    Dispatcher::new(config, &ConsoleSink::Stdout, Default::default(), Default::default())?;
    println!("{}: valid", config.source.display());
    println!("database:      {}", config.database);
    println!("cloud manager: {}", config.cloud_manager.base_url);
    println!(
        "poll:          timeout {}, concurrency {}, check_failing after {} failures, confirm after {} checks",
        humantime::format_duration(config.poll.timeout),
        config.poll.concurrency,
        config.poll.failures_before_alert,
        config.poll.confirm_checks
    );
    print_orgs(config);
    print_channels(config);
    print_routes(config);
    print_atlas(config);
    print_reports(config);
    if let Some(h) = &config.heartbeat {
        // Only the origin: the rest of the URL is the monitor's credential.
        let url = if config::UNREAD.starts_with(h.shown.as_str()) {
            "(its URL not read here)".to_owned()
        } else {
            format!("{}/…", h.shown)
        };
        println!("\nheartbeat: {url} every {}", humantime::format_duration(h.every));
    }
    if config.orgs.is_empty() {
        println!("\nnote: no [[org]] is configured; `linkwatch run` would have nothing to watch");
    }
    if !config.unread_secrets.is_empty() {
        println!("\nsecrets not read here (the rest of the file is valid):");
        for s in &config.unread_secrets {
            println!("  {s}");
        }
        println!("{}", config::UNREAD_WHY);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_orgs(config: &Config) {
    println!("\norgs ({}):", config.orgs.len());
    let rows: Vec<Vec<String>> = config
        .orgs
        .iter()
        .map(|o| {
            vec![
                o.name.clone(),
                o.id.to_string(),
                o.schedule.to_string(),
                o.endpoint.label().to_owned(),
                o.credential.label(),
            ]
        })
        .collect();
    print_table(&["NAME", "ID", "SCHEDULE", "INSTANCE", "CREDENTIAL"], &rows);
}

fn print_channels(config: &Config) {
    println!("\nchannels ({}):", config.channels.len());
    let rows: Vec<Vec<String>> = config
        .channels
        .iter()
        .map(|c| vec![c.name.clone(), c.kind.as_str().to_owned()])
        .collect();
    print_table(&["NAME", "KIND"], &rows);
}

fn print_routes(config: &Config) {
    if config.routes.is_empty() {
        println!("\nroutes: none; every event goes to every channel");
        return;
    }
    println!("\nroutes ({}):", config.routes.len());
    let rows: Vec<Vec<String>> = config
        .routes
        .iter()
        .map(|r| {
            let list = |v: Option<Vec<String>>| v.map_or("any".to_owned(), |v| v.join(","));
            vec![
                r.channels.join(","),
                list(
                    r.events
                        .as_ref()
                        .map(|e| e.iter().map(|k| k.as_str().to_owned()).collect()),
                ),
                list(r.to.clone()),
                list(r.orgs.as_ref().map(|o| o.iter().map(|i| i.to_string()).collect())),
                r.remind_every
                    .map_or("-".to_owned(), |d| humantime::format_duration(d).to_string()),
            ]
        })
        .collect();
    print_table(&["CHANNELS", "EVENTS", "TO", "ORGS", "REMIND"], &rows);
}

/// `[atlas]` and the live migrations it follows, if any.
fn print_atlas(config: &Config) {
    let Some(atlas) = &config.atlas else {
        return;
    };
    println!(
        "\natlas: {} every {}, {}; cutover window {} (warnings at {} left)",
        atlas.base_url,
        humantime::format_duration(atlas.every),
        atlas
            .credential
            .as_ref()
            .map_or_else(|| "no default key".to_owned(), |c| c.label()),
        humantime::format_duration(atlas.cutover_window),
        atlas
            .deadline_warnings
            .iter()
            .map(|w| humantime::format_duration(*w).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("migrations ({}):", config.migrations.len());
    let rows: Vec<Vec<String>> = config
        .migrations
        .iter()
        .map(|m| {
            let org = config
                .orgs
                .iter()
                .find(|o| o.id == m.org)
                .map_or("?", |o| o.name.as_str());
            vec![
                m.name.clone(),
                org.to_owned(),
                m.group_id.clone(),
                m.id.clone(),
                m.lag_alert
                    .map_or("-".to_owned(), |d| humantime::format_duration(d).to_string()),
                m.endpoint.label().to_owned(),
                m.credential.label(),
            ]
        })
        .collect();
    print_table(
        &["NAME", "ORG", "GROUP", "ID", "LAG ALERT", "INSTANCE", "CREDENTIAL"],
        &rows,
    );
}

fn print_reports(config: &Config) {
    if config.reports.is_empty() {
        return;
    }
    println!("\nreports ({}):", config.reports.len());
    let rows: Vec<Vec<String>> = config
        .reports
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                format!("{} ({})", r.cron.as_str(), r.cron.zone_name()),
                r.channels.join(","),
            ]
        })
        .collect();
    print_table(&["NAME", "CRON", "CHANNELS"], &rows);
}

async fn notify_test(config: &Config, name: &str) -> anyhow::Result<ExitCode> {
    let dispatcher = Dispatcher::new(config, &ConsoleSink::Stdout, Default::default(), Default::default())?;
    let Some(outlet) = dispatcher.outlet(name) else {
        let known: Vec<&str> = config.channels.iter().map(|c| c.name.as_str()).collect();
        anyhow::bail!("no channel is named \"{name}\" (channels: {})", known.join(", "));
    };
    let host = config::host_name();
    let now = chrono::Utc::now();
    let message = message::Message {
        title: format!("linkwatch test message: channel \"{name}\" works (sent from {host})"),
        advice: Some("This is a test sent by `linkwatch notify-test`; nothing happened to any link.".into()),
        org_name: "linkwatch".into(),
        org_id: "-".into(),
        kind: "test".into(),
        event_id: format!("evt_test_{:016x}", rand::random::<u64>()),
        at: store::ts(now),
        data: serde_json::json!({"test": true}),
        links: Vec::new(),
    };
    match outlet
        .send_by(std::slice::from_ref(&message), outlet.send_deadline())
        .await
    {
        Ok(note) => {
            println!("sent a test message to {name} ({})", outlet.channel.kind());
            if let Some(note) = note {
                println!("  but: {note}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("linkwatch: {name}: the test message was not delivered: {}", e.reason());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Sends a report made from the database now to the channel `name`, straight away (like
/// `notify-test`: no outbox, no retry, no slot recorded); exit code 1 when it was not delivered.
async fn report_now(config: &Config, name: &str) -> anyhow::Result<ExitCode> {
    let dispatcher = Dispatcher::new(config, &ConsoleSink::Stdout, Default::default(), Default::default())?;
    let Some(outlet) = dispatcher.outlet(name) else {
        let known: Vec<&str> = config.channels.iter().map(|c| c.name.as_str()).collect();
        anyhow::bail!("no channel is named \"{name}\" (channels: {})", known.join(", "));
    };
    let now = chrono::Utc::now();
    let report = current_report(config, now).await?;
    let stored = store::StoredEvent {
        id: format!("rpt_now_{:016x}", rand::random::<u64>()),
        org_id: "report:now".into(),
        org_name: None,
        kind: crate::report::KIND.into(),
        created_at: store::ts(now),
        payload: serde_json::to_string(&report)?,
    };
    let message = report.message(&stored);
    match outlet
        .send_by(std::slice::from_ref(&message), outlet.send_deadline())
        .await
    {
        Ok(note) => {
            println!(
                "sent the report to {name} ({}): {}",
                outlet.channel.kind(),
                report.title()
            );
            if let Some(note) = note {
                println!("  but: {note}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("linkwatch: {name}: the report was not delivered: {}", e.reason());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// A report of every link as the database has it now.
async fn current_report(config: &Config, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<crate::report::Report> {
    // A report of a database that is not there would tell the channel that nothing is SYNCED
    // (and opening it would create it).
    require_database(&config.database)?;
    let store = store::Store::open(&config.database).await?;
    let rows = store.current().await;
    let migrations = store.live_migrations().await;
    store.close().await;
    let slot = crate::report::Slot {
        zone: chrono_tz::Tz::UTC,
        name: "linkwatch report",
        at: now,
        late: false,
    };
    let failures = config.poll.failures_before_alert;
    Ok(
        crate::report::Report::build(slot, &config.orgs, &rows?, failures, now).with_live_migrations(
            &config.migrations,
            &config.orgs,
            &migrations?,
            failures,
            now,
        ),
    )
}

/// `check --online`: every org and live migration asked once; exit 1 when any was refused.
async fn check_online(config: &Config) -> anyhow::Result<ExitCode> {
    let answers = crate::probe::ask_all(config).await?;
    println!("\nasked online ({}):", answers.len());
    let rows: Vec<Vec<String>> = answers
        .iter()
        .map(|a| {
            vec![
                a.what.to_owned(),
                a.name.clone(),
                a.credential.clone(),
                match &a.outcome {
                    Ok(status) => status.clone(),
                    Err(f) => format!("FAILED ({})", f.class.as_str()),
                },
            ]
        })
        .collect();
    print_table(&["", "NAME", "CREDENTIAL", "ANSWER"], &rows);
    let why: Vec<String> = answers
        .iter()
        .filter_map(|a| a.explain().map(|e| format!("  {}: {e}", a.name)))
        .collect();
    if !why.is_empty() {
        println!("why:");
        for line in why {
            println!("{line}");
        }
    }
    let notes: Vec<String> = answers
        .iter()
        .flat_map(|a| a.notes.iter().map(move |n| format!("  {}: {n}", a.name)))
        .collect();
    if !notes.is_empty() {
        println!("notes:");
        for line in notes {
            println!("{line}");
        }
    }
    let refused = answers.iter().filter(|a| a.refused()).count();
    if refused > 0 {
        eprintln!("linkwatch: {refused} of {} refused or did not answer", answers.len());
        return Ok(ExitCode::FAILURE);
    }
    println!("every key and id works");
    Ok(ExitCode::SUCCESS)
}

/// Exit code 0 when every org answered, 2 when some check failed (for scripts).
async fn once(config: Config) -> anyhow::Result<ExitCode> {
    let pass = daemon::once(config, ConsoleSink::Stdout).await?;
    match &pass.delivered {
        Delivered::Due => {}
        Delivered::CutOff => eprintln!(
            "linkwatch: not everything was delivered within shutdown_timeout; the rest goes out with the next run"
        ),
        Delivered::HeldBy(holder) => {
            eprintln!("linkwatch: {holder} holds the database; the events are delivered by it, or by the next run")
        }
    }
    // The reasons go below each table: one long reason padded every row to its width.
    let mut reasons = Vec::new();
    let orgs_failed = print_checks(pass.checks, &mut reasons)?;
    let migrations_failed = print_live_migrations(pass.live_migrations, &mut reasons)?;
    Ok(if orgs_failed || migrations_failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// The table of `once`'s checks, and below it why some failed; true when some did.
fn print_checks(checks: Vec<(Org, anyhow::Result<CheckReport>)>, reasons: &mut Vec<String>) -> anyhow::Result<bool> {
    let mut any_failed = false;
    let mut rows = Vec::new();
    for (org, result) in checks {
        let report = result?;
        let outcome = match &report.outcome {
            Ok(status) => status.clone(),
            Err(f) => {
                any_failed = true;
                reasons.push(format!("  {}: {}", org.name, f.explain()));
                format!("FAILED ({})", f.class.as_str())
            }
        };
        let events: Vec<&str> = report.events.iter().map(|e| e.kind()).collect();
        rows.push(vec![
            org.name.clone(),
            org.id.to_string(),
            outcome,
            events_cell(&events),
        ]);
    }
    print_table(&["ORG", "ID", "STATUS", "EVENTS"], &rows);
    print_reasons(reasons);
    Ok(any_failed)
}

/// The table of `once`'s live migrations (none without `[[migration]]`), and below it why some
/// checks failed; true when some did.
fn print_live_migrations(
    checks: Vec<(LiveMigration, anyhow::Result<LiveMigrationReport>)>,
    reasons: &mut Vec<String>,
) -> anyhow::Result<bool> {
    if checks.is_empty() {
        return Ok(false);
    }
    let mut any_failed = false;
    let mut rows = Vec::new();
    for (m, result) in checks {
        let report = result?;
        let (status, ready, lag) = match &report.outcome {
            Ok(r) => (
                r.status.clone(),
                r.ready_for_cutover.map_or("-".to_owned(), |r| r.to_string()),
                r.lag_s.map_or("-".to_owned(), crate::message::human_secs),
            ),
            Err(f) => {
                any_failed = true;
                reasons.push(format!("  {}: {}", m.name, f.explain_atlas()));
                (format!("FAILED ({})", f.class.as_str()), "-".into(), "-".into())
            }
        };
        let events: Vec<&str> = report.events.iter().map(|e| e.kind()).collect();
        rows.push(vec![m.name.clone(), status, ready, lag, events_cell(&events)]);
    }
    println!();
    print_table(&["MIGRATION", "STATUS", "READY", "LAG", "EVENTS"], &rows);
    print_reasons(reasons);
    Ok(any_failed)
}

/// The events of one check, for a table's cell.
fn events_cell(events: &[&str]) -> String {
    if events.is_empty() {
        "-".into()
    } else {
        events.join(",")
    }
}

/// A SQLite database that is not there is a mistake for a command that only reads it.
fn require_database(db: &Database) -> anyhow::Result<()> {
    if let Some(path) = db.missing_file() {
        anyhow::bail!("no database at {} (has linkwatch run yet?)", path.display());
    }
    Ok(())
}

/// `configured`: the config's orgs (name, id), when a config was read: an org in it that has
/// not been checked yet is known, not a typo.
async fn history(
    db: &Database,
    configured: &[(String, String)],
    org: Option<&str>,
    since: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    require_database(db)?;
    let since = since
        .map(|s| store::since_from(s, chrono::Utc::now()))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let store = Store::open(db).await?;
    let changes = store.history(org, since).await?;
    let recorded = if changes.is_empty() && org.is_some() {
        store.current().await?
    } else {
        Vec::new()
    };
    store.close().await;
    if changes.is_empty()
        && let Some(org) = org
    {
        let in_database = recorded.iter().any(|c| c.org_name == org || c.org_id == org);
        let in_config = configured.iter().any(|(name, id)| name == org || id == org);
        if !in_database && !in_config {
            // A typo must not read as "nothing happened", in a table or in JSON.
            let mut names: Vec<&str> = recorded.iter().map(|c| c.org_name.as_str()).collect();
            names.extend(configured.iter().map(|(name, _)| name.as_str()));
            names.sort_unstable();
            names.dedup();
            eprintln!(
                "linkwatch: no org named or with the id \"{org}\" in {db}{} (orgs: {})",
                if configured.is_empty() { "" } else { " or the config" },
                if names.is_empty() {
                    "none yet".to_owned()
                } else {
                    names.join(", ")
                }
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&changes)?);
        return Ok(ExitCode::SUCCESS);
    }
    if changes.is_empty() {
        println!(
            "no status changes recorded{}",
            org.map(|o| format!(" for {o}")).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    print_history(&changes);
    Ok(ExitCode::SUCCESS)
}

/// The reasons of the failures in the table above, one per line, then forgotten.
fn print_reasons(reasons: &mut Vec<String>) {
    if !reasons.is_empty() {
        println!("\nwhy:\n{}", reasons.join("\n"));
        reasons.clear();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_only_to_a_terminal_and_never_with_no_color() {
        assert!(super::colour(true, None));
        assert!(!super::colour(false, None), "a file, a pipe, the journal");
        assert!(!super::colour(true, Some("1".into())));
        assert!(super::colour(true, Some("".into())), "an empty NO_COLOR is not set");
    }
}
