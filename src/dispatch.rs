//! Reads the outbox and sends what is due. One worker per channel, so a slow or dead channel
//! never delays the others; each worker wakes when new rows are written or a retry falls due.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::channels::{Channel, ConsoleSink, SendError};
use crate::clock::Clock;
use crate::config::Config;
use crate::message::{self, Message};
use crate::metrics::Metrics;
use crate::retry::RetryPolicy;
use crate::router::Router;
use crate::store::Store;

/// A channel with its name and the bell that wakes its worker.
#[derive(Debug)]
pub struct Outlet {
    pub name: String,
    pub channel: Channel,
    wake: Notify,
}

/// How the dispatcher behaves, beyond the config: injected so that tests can use short delays
/// and a clock they can step.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The longest a connection to a receiver may take to open.
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    /// The wall clock for what is recorded (sent_at, next_attempt_at).
    pub clock: Clock,
    /// The first and the longest pause between attempts to record an outcome the database
    /// refused (the send itself is never repeated).
    pub record_first_delay: Duration,
    pub record_max_delay: Duration,
    /// How long a channel worker that panicked rests before it starts again.
    pub restart_pause: Duration,
    /// The least time between two posts to one Slack webhook: Slack accepts about one message
    /// per second per webhook, and warns that apps which keep sending after a 429 may be
    /// disabled.
    pub slack_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            clock: Clock::system(),
            record_first_delay: Duration::from_millis(500),
            record_max_delay: Duration::from_secs(30),
            restart_pause: Duration::from_secs(1),
            slack_interval: Duration::from_secs(1),
        }
    }
}

impl Settings {
    /// The least time between two sends on `channel`.
    pub fn pace(&self, channel: &Channel) -> Duration {
        match channel {
            Channel::Slack(_) => self.slack_interval,
            _ => Duration::ZERO,
        }
    }

    /// The default settings around `clock` (the app's).
    pub fn with_clock(clock: Clock) -> Settings {
        Settings {
            clock,
            ..Settings::default()
        }
    }
}

#[derive(Debug)]
pub struct Dispatcher {
    outlets: Vec<Arc<Outlet>>,
    pub router: Router,
    settings: Settings,
    metrics: Arc<Metrics>,
}

impl Dispatcher {
    pub fn new(
        config: &Config,
        console: &ConsoleSink,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> anyhow::Result<Dispatcher> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("linkwatch/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.connect_timeout)
            .build()?;
        let mut outlets = Vec::new();
        for c in &config.channels {
            outlets.push(Arc::new(Outlet {
                name: c.name.clone(),
                channel: Channel::from_config(c, &http, console)?,
                wake: Notify::new(),
            }));
        }
        Ok(Dispatcher {
            outlets,
            router: Router::new(config),
            settings,
            metrics,
        })
    }

    pub fn outlet(&self, name: &str) -> Option<&Arc<Outlet>> {
        self.outlets.iter().find(|o| o.name == name)
    }

    /// Wakes the workers of these channels (after their outbox rows were committed).
    pub fn wake(&self, channels: &[String]) {
        for o in self.outlets.iter().filter(|o| channels.contains(&o.name)) {
            o.wake.notify_one();
        }
    }

    /// Sends what is due on every channel once; returns how many deliveries were attempted.
    pub async fn dispatch_all_due(&self, store: &Store) -> anyhow::Result<usize> {
        let mut n = 0;
        for o in &self.outlets {
            n += dispatch_due(store, o, &self.settings, &self.metrics).await?;
        }
        Ok(n)
    }

    /// Starts one worker per channel; they stop when `shutdown` is cancelled, after finishing
    /// the send they are in.
    pub fn spawn(&self, store: Store, shutdown: CancellationToken, tasks: &mut JoinSet<()>) {
        for o in &self.outlets {
            tasks.spawn(worker(
                store.clone(),
                o.clone(),
                self.settings.clone(),
                self.metrics.clone(),
                shutdown.clone(),
            ));
        }
    }
}

/// One step: sends the due deliveries of one channel as one batch and records the outcome.
pub async fn dispatch_due(
    store: &Store,
    outlet: &Outlet,
    settings: &Settings,
    metrics: &Metrics,
) -> anyhow::Result<usize> {
    let (policy, clock) = (&settings.retry, &settings.clock);
    let now = clock.now();
    let due = store
        .due_deliveries(&outlet.name, now, outlet.channel.max_batch())
        .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let messages: Vec<Message> = due.iter().map(|d| message::render(&d.event)).collect();
    let ids: Vec<i64> = due.iter().map(|d| d.outbox_id).collect();
    match outlet.channel.send(&messages).await {
        Ok(()) => {
            store.mark_sent(&ids, clock.now()).await?;
            metrics.delivery(&outlet.name, "sent", ids.len() as u64);
            tracing::debug!(channel = %outlet.name, deliveries = ids.len(), "delivered");
        }
        Err(SendError::Permanent(error)) => {
            tracing::error!(channel = %outlet.name, deliveries = ids.len(), %error, "delivery refused; not retrying");
            store.mark_attempt_failed(&ids, &error, None).await?;
            metrics.delivery(&outlet.name, "failed", ids.len() as u64);
        }
        Err(SendError::Transient { error, retry_after }) => {
            // The batch is retried together, on the schedule of its oldest row, so that order
            // is kept; rows past the maximum age are given up one by one.
            let head = &due[0];
            let attempts = u32::try_from(head.attempts + 1).unwrap_or(u32::MAX);
            let now = clock.now();
            let next = policy.next_attempt(attempts, now, now, retry_after);
            let (mut retry, mut expired) = (Vec::new(), Vec::new());
            for d in &due {
                let created = DateTime::parse_from_rfc3339(&d.event.created_at).map_or(now, |t| t.with_timezone(&Utc));
                let too_old =
                    next.is_none_or(|n| n > created + chrono::Duration::from_std(policy.max_age).unwrap_or_default());
                if too_old {
                    expired.push(d.outbox_id)
                } else {
                    retry.push(d.outbox_id)
                }
            }
            if !expired.is_empty() {
                let n = expired.len();
                tracing::error!(channel = %outlet.name, deliveries = n, %error, "delivery given up after the maximum age");
                store.mark_attempt_failed(&expired, &error, None).await?;
                metrics.delivery(&outlet.name, "failed", expired.len() as u64);
            }
            if !retry.is_empty() {
                tracing::warn!(channel = %outlet.name, deliveries = retry.len(), %error, "delivery failed; will retry");
                store.mark_attempt_failed(&retry, &error, next).await?;
                metrics.delivery(&outlet.name, "retry", retry.len() as u64);
            }
        }
    }
    Ok(ids.len())
}

async fn worker(
    store: Store,
    outlet: Arc<Outlet>,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        let wait = match dispatch_due(&store, &outlet, &settings, &metrics).await {
            // Pacing: what falls due meanwhile goes out together, as one digest, after the pause,
            // which a new event does not cut short.
            Ok(n) if n > 0 => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(settings.pace(&outlet.channel)) => {}
                }
                continue;
            }
            Ok(_) => match store.next_due(&outlet.name).await {
                Ok(Some(t)) => (t - settings.clock.now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(Duration::from_secs(60)),
                Ok(None) => Duration::from_secs(60),
                Err(e) => {
                    tracing::error!(channel = %outlet.name, error = %e, "cannot read the outbox");
                    Duration::from_secs(5)
                }
            },
            Err(e) => {
                tracing::error!(channel = %outlet.name, error = %format!("{e:#}"), "dispatch failed");
                Duration::from_secs(5)
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = outlet.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
