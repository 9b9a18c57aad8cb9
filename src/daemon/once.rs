//! `linkwatch once`: one pass of the daemon's work, as the leader: every org checked, the quiet
//! checks written, the live migrations checked, and what is due delivered within
//! `shutdown_timeout`. The command line only prints what it returns.

use std::sync::Arc;
use std::time::Duration;

use crate::channels::ConsoleSink;
use crate::check::CheckReport;
use crate::config::{Config, LiveMigration, Org};
use crate::leader::{self, Lease};
use crate::live_migration::{self, LiveMigrationReport};
use crate::store::{LockError, WriterLock};

use super::App;

/// What a pass did, in the config's order.
#[derive(Debug)]
pub struct OncePass {
    pub checks: Vec<(Org, anyhow::Result<CheckReport>)>,
    pub live_migrations: Vec<(LiveMigration, anyhow::Result<LiveMigrationReport>)>,
    pub delivered: Delivered,
}

/// How the pass's deliveries went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// Everything due was sent (or failed for good, or waits for a retry).
    Due,
    /// `shutdown_timeout` passed first; the rest goes out with the next run.
    CutOff,
    /// Another process holds the SQLite file (named here); it delivers, or the next run does.
    HeldBy(String),
}

/// Opens `config`'s database and makes one pass as its leader. On PostgreSQL every write needs
/// the lease: the pass leads for its run, or refuses and says who leads.
pub async fn once(config: Config, console: ConsoleSink) -> anyhow::Result<OncePass> {
    let app = Arc::new(App::new(config, console).await?);
    let lease = Lease::start(&app.store, app.config.leader_lease, &app.config.instance_name);
    let role = leader::settled(lease.leadership.role.clone(), Duration::from_secs(15)).await;
    let result = if role.leads() {
        pass(&app).await
    } else {
        Err(anyhow::anyhow!(
            "{}; `linkwatch once` checks only as the leader. Use `linkwatch history`, or the leader's /healthz?verbose",
            role.describe()
        ))
    };
    lease.release().await;
    app.store.close().await;
    result
}

async fn pass(app: &Arc<App>) -> anyhow::Result<OncePass> {
    let checks = app.checker.check_all().await?;
    app.checker.flush_quiet().await?;
    // After the links, so that a link that broke is seen by its migrations' checks.
    let live_migrations = live_migration::check_all(&**app).await;
    let delivered = deliver(app).await?;
    Ok(OncePass {
        checks: app.config.orgs.iter().cloned().zip(checks).collect(),
        live_migrations: app.config.migrations.iter().cloned().zip(live_migrations).collect(),
        delivered,
    })
}

/// Sends what is due on every channel, if this process may.
async fn deliver(app: &App) -> anyhow::Result<Delivered> {
    // Checking beside a running daemon is safe (each check is one transaction that reads the
    // state it writes over), but sending is for one process at a time: two senders could send a
    // row twice. The lock is taken only now, so that a daemon starting meanwhile is not kept out.
    // (On PostgreSQL this process holds the lease already.)
    match WriterLock::to_send(&app.config.database, "once", Duration::ZERO).await {
        Ok(_sending) => {
            // Bounded like a daemon's last delivery, so that a slow receiver cannot keep a
            // daemon that starts meanwhile waiting for the lock.
            let deliver = app.dispatcher.dispatch_all_due(&app.store);
            match tokio::time::timeout(app.config.shutdown_timeout, deliver).await {
                Ok(delivered) => delivered.map(|_| Delivered::Due),
                Err(_) => Ok(Delivered::CutOff),
            }
        }
        Err(LockError::Held { holder, .. }) => Ok(Delivered::HeldBy(holder)),
        Err(e) => Err(e.into()),
    }
}
