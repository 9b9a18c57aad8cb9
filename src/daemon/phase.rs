//! A phase of the daemon's tasks: started under one stop token, tracked, and ended together.

use std::future::Future;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Tasks that start and end together. Each task is handed the phase's [`token`](Phase::token):
/// cancelled, it finishes what it is doing and returns. [Cut off](Phase::cut_off), it is dropped
/// where it is, as an aborted task would be.
#[derive(Debug, Default)]
pub(super) struct Phase {
    stop: CancellationToken,
    cut: CancellationToken,
    tasks: TaskTracker,
}

impl Phase {
    /// What this phase's tasks stop on.
    pub(super) fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs `task` in this phase.
    pub(super) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let cut = self.cut.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                // A task cut off is not polled again, even if it could go on.
                biased;
                _ = cut.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Asks the tasks to finish.
    pub(super) fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
    }

    /// Drops the tasks where they are.
    pub(super) fn cut_off(&self) {
        self.cut.cancel();
        self.stop();
    }

    /// Until every task has returned (or was dropped).
    pub(super) async fn wait(&self) {
        self.tasks.wait().await;
    }

    /// [`wait`](Phase::wait) until `deadline`: false when some task still runs.
    pub(super) async fn wait_until(&self, deadline: Instant) -> bool {
        tokio::time::timeout_at(deadline, self.tasks.wait()).await.is_ok()
    }
}
