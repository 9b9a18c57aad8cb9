//! The daemon: wires config, client, store, scheduler and dispatcher together around one
//! [`Checker`]; `run` is the loop, with reload (a new config, same database) and a bounded
//! shutdown; [`once`] is one pass of it for `linkwatch once`. Its tasks run in phases that stop
//! in order: a generation's checks, commits and sends (`generation.rs`, while this instance
//! leads), then the services every instance runs (`services.rs`: the HTTP endpoint, the
//! watchdog, the heartbeat, retention).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::channels::ConsoleSink;
use crate::check::{Checker, Wake};
use crate::client::{self, Client};
use crate::clock::Clock;
use crate::config::Config;
use crate::dispatch::{DeliverySettings, Dispatcher, Memories};
use crate::leader::{self, Leadership, Lease};
use crate::metrics::Metrics;
use crate::scheduler::Heartbeat;
use crate::store::{Store, WriterLock};
use crate::systemd;

/// The daemon wires the two: a check wakes the channels through the dispatcher, and neither
/// module knows the other.
impl Wake for Dispatcher {
    fn wake(&self, channels: &[String]) {
        Dispatcher::wake(self, channels);
    }
}

mod generation;
mod once;
mod phase;
mod reload;
mod services;

use generation::{End, Generation};
pub use once::{Delivered, OncePass, once};
use reload::rebuild;
use services::Services;

/// Everything built from one config, around one store, metrics and clock. A reload builds a new
/// `App` around the same store and metrics.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    /// The wall clock for what is recorded; injectable so tests can step it.
    pub clock: Clock,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// One check of an org, and the group commit: what the scheduler and `once` call.
    pub checker: Arc<Checker>,
    /// The Atlas client, when the config follows live migrations.
    pub atlas: Option<Client>,
    pub dispatcher: Arc<Dispatcher>,
}

impl App {
    /// Opens the config's database and builds everything else.
    pub async fn new(config: Config, console: ConsoleSink) -> anyhow::Result<App> {
        let store = Store::open(&config.database).await?;
        App::with_store(config, store, Arc::new(Metrics::default()), console, Clock::system())
    }

    /// Builds everything around `store`, `metrics` and `clock`, which outlive a reload.
    pub fn with_store(
        config: Config,
        store: Store,
        metrics: Arc<Metrics>,
        console: ConsoleSink,
        clock: Clock,
    ) -> anyhow::Result<App> {
        let delivery = DeliverySettings::with_clock(clock);
        App::with_delivery(config, store, metrics, console, delivery)
    }

    /// [`App::with_store`] whose dispatcher has these settings (a test's short retry delays);
    /// the app's clock is theirs.
    pub fn with_delivery(
        config: Config,
        store: Store,
        metrics: Arc<Metrics>,
        console: ConsoleSink,
        delivery: DeliverySettings,
    ) -> anyhow::Result<App> {
        App::following(config, store, metrics, console, delivery, Memories::default())
    }

    /// [`App::with_delivery`] whose channels go on from `memories` (the running app's, at a
    /// reload).
    fn following(
        config: Config,
        store: Store,
        metrics: Arc<Metrics>,
        console: ConsoleSink,
        delivery: DeliverySettings,
        memories: Memories,
    ) -> anyhow::Result<App> {
        let clock = delivery.clock.clone();
        let dispatcher = Arc::new(Dispatcher::with_memories(
            &config,
            &console,
            metrics.clone(),
            delivery,
            memories,
        )?);
        let checker = Checker::new(
            &config,
            store.clone(),
            metrics.clone(),
            clock.clone(),
            dispatcher.clone(),
        )?;
        let atlas = match &config.atlas {
            Some(a) => Some(
                Client::new(
                    client::ClientSettings::for_atlas(a, &config.cloud_manager, &config.poll),
                    &config.atlas_sessions(),
                )
                .context("cannot build the Atlas HTTP client")?,
            ),
            None => None,
        };
        Ok(App {
            config,
            clock,
            store,
            metrics,
            checker: Arc::new(checker),
            atlas,
            dispatcher,
        })
    }
}

impl crate::report::jobs::Host for App {
    fn config(&self) -> &Config {
        &self.config
    }
    fn store(&self) -> &Store {
        &self.store
    }
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }
    fn wake(&self, channels: &[String]) {
        self.dispatcher.wake(channels);
    }
}

impl crate::live_migration::Host for App {
    fn config(&self) -> &Config {
        &self.config
    }
    fn store(&self) -> &Store {
        &self.store
    }
    fn atlas(&self) -> Option<&Client> {
        self.atlas.as_ref()
    }
    fn router(&self) -> &crate::router::Router {
        &self.checker.routes
    }
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }
    fn wake(&self, channels: &[String]) {
        self.dispatcher.wake(channels);
    }
}

/// How long `run` waits for the database's lock: a `linkwatch once` that holds it delivers for at
/// most its `shutdown_timeout`.
fn lock_patience(config: &Config) -> Duration {
    config.shutdown_timeout.saturating_add(Duration::from_secs(5))
}

/// How `run` is driven, beyond the config.
#[derive(Default)]
pub struct Options {
    /// Where the console channel writes.
    pub console: ConsoleSink,
    /// Each message asks for a reload (SIGHUP).
    pub reload: Option<mpsc::Receiver<()>>,
    /// Reads the config again for a reload.
    pub loader: Option<Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>>,
}

/// Runs the daemon until `shutdown` is cancelled: checks on schedule, delivers events.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(config, shutdown, Options::default()).await
}

/// [`run`] with a `App` the caller built (tests choose the console sink); no reload.
pub async fn run_app(app: Arc<App>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _lock = WriterLock::to_send(&app.config.database, "run", lock_patience(&app.config)).await?;
    lead_and_serve(app, shutdown, None, ConsoleSink::default()).await
}

pub async fn run_with(config: Config, shutdown: CancellationToken, mut options: Options) -> anyhow::Result<()> {
    // One daemon per SQLite file: the file lock, held until the daemon returns. (On PostgreSQL
    // several run; the lease decides which one leads.)
    let _lock = WriterLock::to_send(&config.database, "run", lock_patience(&config)).await?;
    let store = Store::open(&config.database).await?;
    let app = Arc::new(App::with_store(
        config,
        store,
        Arc::new(Metrics::default()),
        options.console.clone(),
        Clock::system(),
    )?);
    let reload = options.reload.take().zip(options.loader.take());
    lead_and_serve(app, shutdown, reload, options.console).await
}

/// Serves `app` while this instance leads: always on SQLite, while it holds the lease on
/// PostgreSQL. The lease is given up only after the last sends, so that the next leader does
/// not send what this one is still sending.
async fn lead_and_serve(
    app: Arc<App>,
    shutdown: CancellationToken,
    reload: Option<Reload>,
    console: ConsoleSink,
) -> anyhow::Result<()> {
    let store = app.store.clone();
    let lease = Lease::start(&store, app.config.leader_lease, &app.config.instance_name);
    let result = serve(app, shutdown, reload, console, &lease.leadership).await;
    lease.release().await;
    store.close().await;
    result
}

type Reload = (
    mpsc::Receiver<()>,
    Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>,
);

/// The phases in the order they stop: the generation's (checks, commits, sends), then the
/// services (the HTTP endpoint among them), which run on every instance.
async fn serve(
    app: Arc<App>,
    shutdown: CancellationToken,
    reload: Option<Reload>,
    console: ConsoleSink,
    leadership: &Leadership,
) -> anyhow::Result<()> {
    let heartbeat = Heartbeat::default();
    app.metrics.set_instance(&app.config.instance_name);
    let services = Services::start(&app, leadership, &heartbeat).await?;
    tracing::info!(
        orgs = app.config.orgs.len(),
        channels = app.config.channels.len(),
        database = %app.config.database,
        instance = %leadership.holder,
        "linkwatch running"
    );
    systemd::ready();
    let mut daemon = Daemon {
        app,
        heartbeat,
        role: leadership.role.clone(),
        reload,
        console,
        generation: None,
    };
    daemon.follow_role();
    daemon.until(shutdown, &services).await;
    services.stop().await;
    tracing::info!("linkwatch stopped");
    Ok(())
}

/// What the daemon runs with between two events: the current app, and its generation while this
/// instance leads.
struct Daemon {
    app: Arc<App>,
    heartbeat: Heartbeat,
    role: watch::Receiver<leader::Role>,
    reload: Option<Reload>,
    console: ConsoleSink,
    /// The generation and the epoch it runs under.
    generation: Option<(Generation, i64)>,
}

impl Daemon {
    /// Follows the role and reloads until `shutdown`, then ends the generation.
    async fn until(&mut self, shutdown: CancellationToken, services: &Services) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(loaded) = asked(&mut self.reload) => self.reload(loaded, services).await,
                Ok(()) = self.role.changed() => {
                    let epoch = self.role.borrow_and_update().epoch;
                    if self.generation.as_ref().map(|(_, e)| *e) != epoch {
                        if let Some((old, _)) = self.generation.take() {
                            // Deposed: another instance may be checking and sending already, so
                            // this one checks nothing more and starts no new send.
                            old.end(&self.app, End::Deposed).await;
                        }
                        self.follow_role();
                    }
                }
            }
        }
        systemd::stopping();
        tracing::info!(
            "stopping: waiting up to {:?} for running checks and sends",
            self.app.config.shutdown_timeout
        );
        if let Some((generation, epoch)) = self.generation.take() {
            // The fence falls a database round trip before the role follows, and a stop may
            // come in between (or win the race with the role's change): a leader that lost its
            // lease stops as a deposed one, without waiting for its checks or sending.
            let leads = self.app.store.may_send() && self.role.borrow().epoch == Some(epoch);
            let how = if leads { End::Shutdown } else { End::Deposed };
            generation.end(&self.app, how).await;
        }
    }

    /// Starts checking and sending when this instance leads, under its epoch.
    fn follow_role(&mut self) {
        let role = self.role.borrow_and_update().clone();
        self.app.metrics.set_role(role.epoch);
        self.generation = role.epoch.map(|epoch| {
            // What this process remembers of quiet orgs may be stale: another instance led
            // meanwhile.
            self.app.store.forget_quiet();
            (Generation::start(&self.app, self.heartbeat.clone()), epoch)
        });
    }

    /// Replaces the app and its generation by ones for the `loaded` config, if it is valid.
    async fn reload(&mut self, loaded: anyhow::Result<Config>, services: &Services) {
        let new = match rebuild(&self.app, loaded, self.console.clone()) {
            Ok(new) => new,
            Err(e) => {
                tracing::error!("reload rejected, still running the previous config: {e:#}");
                return;
            }
        };
        systemd::reloading();
        if let Some((generation, _)) = self.generation.take() {
            generation.end(&self.app, End::Reload).await;
        }
        let changed = reload::changes(&self.app.config, &new.config);
        tracing::info!(
            orgs = new.config.orgs.len(),
            channels = new.config.channels.len(),
            "config reloaded: {}",
            if changed.is_empty() {
                "nothing changed".to_owned()
            } else {
                changed.join("; ")
            }
        );
        services.follow(&new.config);
        self.app = Arc::new(new);
        systemd::ready();
        self.follow_role();
    }
}

/// The config read again at the next reload asked for; never without a way to ask.
async fn asked(reload: &mut Option<Reload>) -> Option<anyhow::Result<Config>> {
    match reload {
        Some((rx, loader)) => match rx.recv().await {
            Some(()) => Some(loader()),
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
