//! Opening a database: a SQLite file (created with its directory, WAL, migrated) or a
//! PostgreSQL database (reached once so that a refusal is named, pooled, migrated).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::SqlitePool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::Postgres;
use crate::config::PgTarget;

/// Opens (creating file and parent directory if missing) and migrates the database.
pub(super) async fn sqlite(path: &Path) -> anyhow::Result<SqlitePool> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        // WAL: people reading with the sqlite3 shell never block the daemon, nor it them.
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot open database {}", path.display()))?;
    sqlx::migrate!("migrations/sqlite")
        .run(&pool)
        .await
        .with_context(|| format!("cannot migrate database {}", path.display()))?;
    Ok(pool)
}

/// How to reach `target`: its URL and its password (kept out of the URL).
pub fn connect_options(target: &PgTarget) -> anyhow::Result<PgConnectOptions> {
    let options: PgConnectOptions = target
        .url()
        .as_str()
        .parse()
        .with_context(|| format!("cannot read the PostgreSQL URL {}", target.url()))?;
    Ok(match &target.password {
        Some(password) => options.password(password.expose()),
        None => options,
    })
}

/// How long the first connection may take before the server is reported unreachable.
const FIRST_CONNECT: Duration = Duration::from_secs(10);

/// One connection first, so that a server that is not there, or refuses, is named with its host
/// and port and its own words once (the pool would wait its whole acquire timeout in silence,
/// then say only "pool timed out", and repeats a server's message with its source line).
async fn reach(target: &PgTarget, options: &sqlx::postgres::PgConnectOptions) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let url = target.url();
    let place = format!(
        "PostgreSQL at {}:{}",
        url.host_str().unwrap_or("localhost"),
        url.port().unwrap_or(5432)
    );
    match tokio::time::timeout(FIRST_CONNECT, sqlx::PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(sqlx::Error::Database(e))) => {
            anyhow::bail!("{place} refused: {}", crate::outside::text(e.message(), 500))
        }
        Ok(Err(sqlx::Error::Io(e))) => anyhow::bail!("cannot connect to {place}: {e}"),
        Ok(Err(e)) => anyhow::bail!(
            "cannot connect to {place}: {}",
            crate::outside::text(&e.to_string(), 500)
        ),
        Err(_) => anyhow::bail!(
            "cannot connect to {place}: no answer within {}",
            humantime::format_duration(FIRST_CONNECT)
        ),
    }
}

/// Connects and migrates. The connections carry `application_name` (the URL's, or
/// `linkwatch`) so that operators and tests find them in `pg_stat_activity`, and a
/// statement timeout so that a stuck server cannot hold a check for ever.
pub(super) async fn postgres(target: &PgTarget) -> anyhow::Result<Postgres> {
    let mut options = connect_options(target)?;
    if !target.url().query_pairs().any(|(k, _)| k == "application_name") {
        options = options.application_name("linkwatch");
    }
    // idle_in_transaction_session_timeout: a leader paused inside a transaction (SIGSTOP, a
    // frozen VM) holds the lease row FOR SHARE; the server ends its session, so that the
    // lease can be taken over instead of waiting for it to wake.
    options = options.options([
        ("statement_timeout", "15s"),
        ("lock_timeout", "10s"),
        ("idle_in_transaction_session_timeout", "5s"),
    ]);
    reach(target, &options).await?;
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(10))
        // A connection the server dropped (restart, pg_terminate_backend) is found here, not
        // by the check that would use it.
        .test_before_acquire(true)
        .connect_with(options.clone())
        .await
        .with_context(|| format!("cannot connect to {}", target.url()))?;
    let lease = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(true)
        .connect_lazy_with(options);
    // sqlx holds an advisory lock while migrating: two instances starting together migrate once.
    sqlx::migrate!("migrations/postgres")
        .run(&pool)
        .await
        .with_context(|| format!("cannot migrate database {}", target.url()))?;
    Ok(Postgres {
        pool,
        lease,
        fence: Default::default(),
    })
}
