//! Reads the outbox and sends what is due. One worker per channel, so a slow or dead channel
//! never delays the others; each worker wakes when new rows are written or a retry falls due,
//! and a worker that panics is started again. What goes next is decided in `select`, one send
//! and its outcome in `step`.
//!
//! What a channel remembers beyond the database (outcomes not yet written, retries scheduled on
//! the monotonic clock, which mail recipients already have which event) lives in [`Memories`],
//! keyed by channel name, which a reload's new dispatcher takes over from the old one: a reload
//! never makes this process send a delivered event again.

mod memories;
mod select;
mod step;

pub use memories::Memories;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use tokio::time::Instant;

use crate::channels::{Channel, ConsoleSink, SendError, Sent};
use crate::clock::Clock;
use crate::config::Config;
use crate::message::Message;
use crate::metrics::{Blocked, Metrics, Refused};
use crate::retry::RetryPolicy;
use crate::store::Store;
use step::{Ctx, Memory, Next};

/// The longest a worker sleeps without looking at the outbox (rows written by another process,
/// such as `linkwatch once`, ring no bell).
const IDLE: Duration = Duration::from_secs(60);
/// The longest pause before a worker that keeps panicking is started again.
const RESTART_MAX: Duration = Duration::from_secs(60);
/// How long a worker rests after it could not read the outbox.
const READ_RETRY: Duration = Duration::from_secs(5);

/// A channel with its name, the bell that wakes its worker, and what its worker remembers.
#[derive(Debug)]
pub struct Outlet {
    pub name: String,
    pub channel: Channel,
    /// The longest one send can take (a mail is one connection per recipient): how long a
    /// claim on its rows must keep other instances off them.
    pub send_takes: Duration,
    wake: Notify,
    /// Held for a whole step, so that two steps of one channel never run at once: the worker
    /// and `dispatch_all_due` at shutdown, or the old and the new worker across a reload (the
    /// new one waits for the send the old one is in). Shared through [`Memories`].
    memory: Arc<Mutex<Memory>>,
    /// Where whether the channel is blocked is said (see [`Memories::publish_blocked`]).
    memories: Memories,
    /// Where the links of its messages point.
    pub links: Arc<crate::message::Links>,
}

/// Added to a send's own bound before the dispatcher abandons it: the channel's bound (an SMTP
/// transaction's, a request's) ends it first and names the step that did not answer; this one is
/// the guarantee, whatever the transport does.
const SEND_GRACE: Duration = Duration::from_secs(1);

impl Outlet {
    /// Sends `messages` on this channel, abandoned at `deadline` if it has not ended by then: a
    /// send past its bound is a failed attempt (retried like any other), never a wait. Every
    /// caller (the dispatcher, `notify-test`, `report --channel`) sends through here.
    pub async fn send_by(&self, messages: &[Message], deadline: Instant) -> Result<Sent, SendError> {
        bounded(self.channel.send(messages), deadline, self.send_takes).await
    }

    /// The latest a send started now may end: its bound and a moment's grace.
    pub fn send_deadline(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.send_takes.saturating_add(SEND_GRACE))
            .unwrap_or(now)
    }

    /// Tells the metrics and `/healthz` whether this channel is blocked now.
    fn publish_blocked(&self, blocked: Option<Blocked>, metrics: &Metrics) {
        self.memories.publish_blocked(&self.name, blocked, metrics);
    }

    /// Tells the metrics, `/healthz` and the heartbeat whether this channel's latest delivery
    /// was refused for good.
    fn publish_refused(&self, refused: Option<Refused>, metrics: &Metrics) {
        self.memories.publish_refused(&self.name, refused, metrics);
    }
}

/// How the dispatcher behaves, beyond the config: injected so that tests can use short delays
/// and a clock they can step.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
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
    /// How many pending rows of a channel one step reads to choose what goes next (besides the
    /// rows of orgs known to be waiting for a retry, which it skips once the hold is over).
    pub scan: i64,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            clock: Clock::system(),
            record_first_delay: Duration::from_millis(500),
            record_max_delay: Duration::from_secs(30),
            restart_pause: Duration::from_secs(1),
            slack_interval: Duration::from_secs(1),
            scan: 1000,
        }
    }
}

impl DeliverySettings {
    /// The least time between two sends on `channel`.
    pub fn pace(&self, channel: &Channel) -> Duration {
        match channel {
            Channel::Slack(_) => self.slack_interval,
            _ => Duration::ZERO,
        }
    }

    /// The default settings around `clock` (the app's).
    pub fn with_clock(clock: Clock) -> DeliverySettings {
        DeliverySettings {
            clock,
            ..DeliverySettings::default()
        }
    }
}

#[derive(Debug)]
pub struct Dispatcher {
    outlets: Vec<Arc<Outlet>>,
    settings: DeliverySettings,
    metrics: Arc<Metrics>,
    memories: Memories,
}

impl Dispatcher {
    /// A dispatcher that remembers nothing yet (a start, or `linkwatch once`).
    pub fn new(
        config: &Config,
        console: &ConsoleSink,
        metrics: Arc<Metrics>,
        settings: DeliverySettings,
    ) -> anyhow::Result<Dispatcher> {
        Dispatcher::with_memories(config, console, metrics, settings, Memories::default())
    }

    /// A dispatcher whose channels go on from what `memories` holds for their names (a reload
    /// passes the running dispatcher's [`memories`](Self::memories)).
    pub fn with_memories(
        config: &Config,
        console: &ConsoleSink,
        metrics: Arc<Metrics>,
        settings: DeliverySettings,
        memories: Memories,
    ) -> anyhow::Result<Dispatcher> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("linkwatch/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.connect_timeout)
            // A redirect is not a delivery: a POST redirected to a login page becomes a GET of
            // that page, which answers 200. Channels report a 3xx as an error instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let mut outlets = Vec::new();
        let links = Arc::new(crate::message::Links::of(config));
        for c in &config.channels {
            let kept = memories.of(&c.name);
            let mut channel = Channel::from_config(c, &http, console)?;
            channel.remember_in(&kept.recipients);
            let sends = match &c.kind {
                crate::config::ChannelKind::Email(e) => u32::try_from(e.to.len()).unwrap_or(u32::MAX).max(1),
                _ => 1,
            };
            outlets.push(Arc::new(Outlet {
                name: c.name.clone(),
                channel,
                send_takes: c.timeout.saturating_mul(sends),
                wake: Notify::new(),
                memory: kept.memory,
                memories: memories.clone(),
                links: links.clone(),
            }));
        }
        // A channel removed from the config is no longer reported blocked, even by a worker of
        // the previous config that is still running.
        memories.configure(config.channels.iter().map(|c| c.name.clone()).collect(), &metrics);
        Ok(Dispatcher {
            outlets,
            settings,
            metrics,
            memories,
        })
    }

    /// What the channels remember, for the dispatcher that replaces this one.
    pub fn memories(&self) -> Memories {
        self.memories.clone()
    }

    /// For how many events `channel` keeps which mail recipient has them (none once their rows
    /// ended).
    pub fn mail_progress(&self, channel: &str) -> usize {
        self.memories.mail_progress(channel)
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

    /// Sends everything due on every channel, step after step until nothing is due (a webhook
    /// sends one event per step); returns how many deliveries were attempted. Used by
    /// `linkwatch once`; at shutdown, [`final_delivery`](Self::final_delivery) bounds it with a
    /// deadline. The channels go at once, each in a task of its own, so that a slow one does not
    /// use up the deadline of the others; dropping the future stops them all.
    pub async fn dispatch_all_due(&self, store: &Store) -> anyhow::Result<usize> {
        let mut channels = self.spawn_all_due(store);
        join_all_due(&mut channels).await
    }

    /// At shutdown, once the workers stopped: [`dispatch_all_due`](Self::dispatch_all_due) until
    /// `deadline`, and then names every delivered event whose outcome was never written (the next
    /// start sends it again): of a channel cut off at the deadline, or removed by a reload.
    pub async fn final_delivery(&self, store: &Store, deadline: tokio::time::Instant) {
        let mut channels = self.spawn_all_due(store);
        match tokio::time::timeout_at(deadline, join_all_due(&mut channels)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("final delivery: {e:#}"),
            Err(_) => {
                tracing::warn!("shutdown deadline reached; undelivered events stay pending for the next start");
                // Stopped where they are, so that their memories are free to be read.
                channels.shutdown().await;
            }
        }
        self.report_unrecorded();
    }

    /// One task per channel, sending what is due until nothing is.
    fn spawn_all_due(&self, store: &Store) -> JoinSet<anyhow::Result<usize>> {
        let mut channels = JoinSet::new();
        for o in &self.outlets {
            let (store, outlet) = (store.clone(), o.clone());
            let (settings, metrics) = (self.settings.clone(), self.metrics.clone());
            channels.spawn(async move {
                let cx = Ctx {
                    store: &store,
                    outlet: &outlet,
                    settings: &settings,
                    metrics: &metrics,
                };
                let never = CancellationToken::new();
                let mut n = 0;
                loop {
                    match step::step(&cx, &never).await {
                        Ok(Next::Sent(k)) if k > 0 => n += k,
                        Ok(Next::Sent(_) | Next::Idle(_)) => return Ok(n),
                        Ok(Next::Unrecorded(_)) => {
                            step::finish(&cx).await;
                            return Ok(n);
                        }
                        Err(e) => return Err(e.context(format!("channel {}", outlet.name))),
                    }
                }
            });
        }
        channels
    }

    /// At exit, after the workers were stopped: names the delivered events whose outcome was
    /// never written (the next start sends them again), on every channel this process had,
    /// configured or removed by a reload. A memory still in use is skipped. Each is named once.
    pub fn report_unrecorded(&self) {
        for (name, memory) in self.memories.all() {
            if let Ok(mut memory) = memory.try_lock() {
                step::report_unrecorded(&name, &mut memory);
            }
        }
    }

    /// Starts one worker per channel; they stop when `shutdown` is cancelled, after finishing
    /// the send they are in.
    pub fn spawn(&self, store: Store, shutdown: CancellationToken, tasks: &mut JoinSet<()>) {
        for worker in self.workers(&store, &shutdown) {
            tasks.spawn(worker);
        }
    }

    /// One worker per channel, for the caller to run; they stop when `shutdown` is cancelled,
    /// after finishing the send they are in.
    pub fn workers(
        &self,
        store: &Store,
        shutdown: &CancellationToken,
    ) -> Vec<impl Future<Output = ()> + Send + 'static + use<>> {
        self.outlets
            .iter()
            .map(|o| {
                supervise(
                    store.clone(),
                    o.clone(),
                    self.settings.clone(),
                    self.metrics.clone(),
                    shutdown.clone(),
                )
            })
            .collect()
    }
}

/// `send`, abandoned at `deadline`: then a failed attempt that says how long it was given.
async fn bounded(
    send: impl Future<Output = Result<Sent, SendError>>,
    deadline: Instant,
    bound: Duration,
) -> Result<Sent, SendError> {
    match tokio::time::timeout_at(deadline, send).await {
        Ok(sent) => sent,
        Err(_) => Err(SendError::Transient {
            error: format!(
                "no answer within {}; the send was abandoned",
                humantime::format_duration(bound)
            ),
            retry_after: None,
            rate_limited: false,
        }),
    }
}

/// Waits for the channels of [`Dispatcher::spawn_all_due`]: how many deliveries they attempted,
/// or the first error.
async fn join_all_due(channels: &mut JoinSet<anyhow::Result<usize>>) -> anyhow::Result<usize> {
    let (mut n, mut first_error) = (0, None);
    while let Some(done) = channels.join_next().await {
        match done {
            Ok(Ok(k)) => n += k,
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert_with(|| anyhow::anyhow!("a channel's delivery stopped: {e}"));
            }
        }
    }
    first_error.map_or(Ok(n), Err)
}

/// Runs a channel's worker, and starts it again after a pause when it panics: a panic in one
/// send must not silence the channel for the life of the process. The pause doubles while the
/// worker keeps panicking soon after each start (up to [`RESTART_MAX`]), so that a panic on
/// every send does not fill the journal.
async fn supervise(
    store: Store,
    outlet: Arc<Outlet>,
    settings: DeliverySettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut pause = settings.restart_pause;
    loop {
        let started = tokio::time::Instant::now();
        // Aborted with this task (at the shutdown deadline), not left running.
        let run = AbortOnDropHandle::new(tokio::spawn(worker(
            store.clone(),
            outlet.clone(),
            settings.clone(),
            metrics.clone(),
            shutdown.clone(),
        )));
        match run.await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                let panic = e.into_panic();
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                if started.elapsed() > RESTART_MAX {
                    pause = settings.restart_pause;
                }
                tracing::error!(channel = %outlet.name, "the channel's worker panicked ({what}); starting it again in {pause:?}");
                metrics.panicked("channel", &outlet.name);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = pause.saturating_mul(2).min(RESTART_MAX.max(settings.restart_pause));
            }
            Err(_) => return,
        }
    }
}

async fn worker(
    store: Store,
    outlet: Arc<Outlet>,
    settings: DeliverySettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let cx = Ctx {
        store: &store,
        outlet: &outlet,
        settings: &settings,
        metrics: &metrics,
    };
    while !shutdown.is_cancelled() {
        let next = match step::step(&cx, &shutdown).await {
            Ok(next) => next,
            Err(e) if crate::store::is_fenced(&e) => {
                tracing::info!(channel = %outlet.name, "not sending: {e:#}");
                Next::Idle(tokio::time::Instant::now().checked_add(READ_RETRY))
            }
            Err(e) => {
                crate::log_store_failure!(&e, channel = %outlet.name, "cannot read the outbox: {e:#}");
                Next::Idle(tokio::time::Instant::now().checked_add(READ_RETRY))
            }
        };
        let now = tokio::time::Instant::now();
        let idle_until = now.checked_add(IDLE).unwrap_or(now);
        match next {
            // Pacing: what falls due meanwhile goes out together, as one digest, after the
            // pause, which a new event does not cut short.
            Next::Sent(n) if n > 0 => {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(settings.pace(&outlet.channel)) => {}
                }
            }
            Next::Sent(_) => {}
            Next::Idle(at) => {
                let at = at.map_or(idle_until, |a| a.min(idle_until));
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = outlet.wake.notified() => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            // New rows wait too: nothing is sent while an outcome is unrecorded.
            Next::Unrecorded(at) => {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
        }
    }
    // One more try to write what was decided. What still cannot be written stays in the
    // channel's memory: a reload's new worker goes on from it, and at exit the shutdown names it.
    step::flush(&cx).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_send_that_never_ends_is_abandoned_at_its_deadline_as_a_failed_attempt() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let never = std::future::pending();
        let sent = tokio::time::timeout(
            Duration::from_secs(3600),
            bounded(never, deadline, Duration::from_secs(9)),
        )
        .await
        .expect("the send was abandoned at its deadline");
        assert!(Instant::now() >= deadline);
        match sent {
            Err(SendError::Transient { error, .. }) => {
                assert_eq!(error, "no answer within 9s; the send was abandoned");
            }
            other => panic!("{other:?}"),
        }
    }
}
