//! The loop on paused time: when it pings, what, and how often it tries again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::*;
use crate::secret::Secret;

const EVERY: Duration = Duration::from_secs(60);

/// A heartbeat loop with a health the test sets and a monitor that records each request (its
/// time since the start, and what it said) and answers from a script (then `Ok`).
struct Harness {
    health: Arc<Mutex<Look>>,
    sent: Arc<Mutex<Vec<(Duration, Ping)>>>,
    answers: Arc<Mutex<VecDeque<Result<(), String>>>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn config() -> HeartbeatConfig {
    HeartbeatConfig {
        url: Secret::new("http://monitor.invalid/ping/uuid"),
        shown: "http://monitor.invalid".into(),
        fail_url: Secret::new("http://monitor.invalid/ping/uuid/fail"),
        fail_shown: "http://monitor.invalid".into(),
        every: EVERY,
        timeout: Duration::from_secs(10),
    }
}

impl Harness {
    fn start(health: Look) -> Harness {
        let start = Instant::now();
        let health = Arc::new(Mutex::new(health));
        let sent: Arc<Mutex<Vec<(Duration, Ping)>>> = Arc::default();
        let answers: Arc<Mutex<VecDeque<Result<(), String>>>> = Arc::default();
        let metrics = Arc::new(Metrics::default());
        let stop = CancellationToken::new();
        let (_tx, rx) = watch::channel(Some(config()));
        let task = tokio::spawn({
            let (health, sent, answers, metrics, stop) = (
                health.clone(),
                sent.clone(),
                answers.clone(),
                metrics.clone(),
                stop.clone(),
            );
            async move {
                let _tx = _tx;
                let look = || {
                    let h = health.lock().unwrap().clone();
                    async move { h }
                };
                let send = |_: HeartbeatConfig, p: Ping| {
                    sent.lock().unwrap().push((start.elapsed(), p));
                    let answer = answers.lock().unwrap().pop_front().unwrap_or(Ok(()));
                    async move { answer }
                };
                beat(look, send, &metrics, rx, stop).await;
            }
        });
        Harness {
            health,
            sent,
            answers,
            metrics,
            stop,
            task,
        }
    }

    fn set(&self, look: Look) {
        *self.health.lock().unwrap() = look;
    }

    async fn finish(self) -> Vec<(Duration, Ping)> {
        self.stop.cancel();
        let sent = self.sent.clone();
        self.task.await.unwrap();
        sent.lock().unwrap().clone()
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Lets paused time run on by `d` (every timer due meanwhile fires).
async fn pass(d: Duration) {
    tokio::time::sleep(d).await;
}

#[tokio::test(start_paused = true)]
async fn the_first_ping_comes_soon_after_start_then_one_each_every() {
    let h = Harness::start(Look::Health(Ok(())));
    pass(secs(125)).await;
    assert_eq!(
        h.finish().await,
        vec![
            (secs(1), Ping::Healthy),
            (secs(61), Ping::Healthy),
            (secs(121), Ping::Healthy)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn unhealthy_says_fail_with_the_reason_and_healthy_again_says_so() {
    let h = Harness::start(Look::Health(Ok(())));
    pass(secs(2)).await;
    h.set(Look::Health(Err("the database does not take writes: disk full".into())));
    pass(secs(60)).await;
    h.set(Look::Health(Ok(())));
    pass(secs(60)).await;
    let unhealthy = h.metrics.render(&Default::default());
    assert_eq!(
        h.finish().await,
        vec![
            (secs(1), Ping::Healthy),
            (
                secs(61),
                Ping::Fail("the database does not take writes: disk full".into())
            ),
            (secs(121), Ping::Healthy),
        ]
    );
    assert!(
        unhealthy.contains("linkwatch_heartbeat_unhealthy_total 1"),
        "{unhealthy}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_request_is_sent_once_more_before_the_next_interval() {
    let h = Harness::start(Look::Health(Ok(())));
    h.answers
        .lock()
        .unwrap()
        .extend([Err("HTTP 500".to_owned()), Err("HTTP 500".to_owned())]);
    pass(secs(65)).await;
    let failures = h.metrics.render(&Default::default());
    assert_eq!(
        h.finish().await,
        vec![
            (secs(1), Ping::Healthy),
            (secs(11), Ping::Healthy),
            (secs(61), Ping::Healthy)
        ],
        "once more 10 s later, not again, and the next interval where it was"
    );
    assert!(failures.contains("linkwatch_heartbeat_failures_total 2"), "{failures}");
}

#[tokio::test(start_paused = true)]
async fn a_start_is_not_reported_as_a_failure_unless_it_lasts_past_every() {
    // Healthy 5 s after start: the first ping then says so, and nothing said fail.
    let h = Harness::start(Look::Health(Err("the scheduler has not started".into())));
    pass(Duration::from_millis(5500)).await;
    h.set(Look::Health(Ok(())));
    pass(secs(1)).await;
    assert_eq!(h.finish().await, vec![(secs(6), Ping::Healthy)]);

    // Never healthy: the first ping says fail once `every` has passed.
    let h = Harness::start(Look::Health(Err("the scheduler has not started".into())));
    pass(secs(62)).await;
    assert_eq!(
        h.finish().await,
        vec![(secs(60), Ping::Fail("the scheduler has not started".into()))]
    );
}

#[tokio::test(start_paused = true)]
async fn a_follower_does_not_ping() {
    let h = Harness::start(Look::Follows);
    pass(secs(200)).await;
    assert_eq!(h.finish().await, vec![]);
}
