//! The tasks of one config while this instance leads, in the phases they stop in: checks (the
//! scheduler, the live migrations' loop, the report jobs), commits (the group commit) and sends
//! (a worker per channel). A reload, the last stop and a lost lease all end a generation through
//! [`Generation::end`], which walks the phases in that order.

use std::sync::Arc;

use super::App;
use super::phase::Phase;
use crate::check;
use crate::clock;
use crate::scheduler::{self, Heartbeat};

/// Why a generation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// A new config replaces it: running checks and sends finish, the quiet checks are written,
    /// and a send still running at the deadline finishes in the background.
    Reload,
    /// The daemon stops: the same, then what the last checks produced is sent if there is time
    /// (anything still pending goes out after the next start).
    Shutdown,
    /// The lease was lost: another instance may be checking and sending already.
    Deposed,
}

/// One config's tasks, by phase.
pub(super) struct Generation {
    checks: Phase,
    commits: Phase,
    sends: Phase,
}

impl Generation {
    /// Starts checking and sending with `app`.
    pub(super) fn start(app: &Arc<App>, heartbeat: Heartbeat) -> Generation {
        let g = Generation {
            checks: Phase::default(),
            commits: Phase::default(),
            sends: Phase::default(),
        };
        for worker in app.dispatcher.workers(&app.store, &g.sends.token()) {
            g.sends.spawn(worker);
        }
        g.checks.spawn(scheduled_checks(app, heartbeat, &g.checks));
        g.commits
            .spawn(check::group_commit(app.checker.clone(), g.commits.token()));
        let nudge = app.checker.live_migration_nudge().notified();
        g.checks
            .spawn(crate::live_migration::run(app.clone(), nudge, g.checks.token()));
        // Only the leader says that a silence ended, and once.
        g.checks
            .spawn(crate::silence::run(app.checker.clone(), g.checks.token()));
        // Reports run only while leading, like checks, and with this config's [[report]]s.
        g.checks.spawn(crate::report::jobs::run(app.clone(), g.checks.token()));
        g
    }

    /// Ends the generation as `how` says, all within the config's `shutdown_timeout`.
    pub(super) async fn end(self, app: &App, how: End) {
        let deadline = clock::later(tokio::time::Instant::now(), app.config.shutdown_timeout);
        if how == End::Deposed {
            // Checks and writes are cut off at once (the database would refuse them anyway), and
            // no new send starts. A send already under way finishes (its rows are claimed for
            // longer than it can take, so no other instance sends them meanwhile) and its
            // outcome is written (outcomes are guarded by the claim, not the lease), so that
            // what a receiver accepted is not sent again by the next leader.
            self.checks.cut_off();
            self.commits.cut_off();
            self.sends.stop();
        }
        // Running checks finish within the scheduler's grace; the live migrations' loop stops at
        // once (a check cut off writes nothing: its transaction rolls back, and it is repeated
        // after the next start). Then the last checks' quiet notes are written.
        for phase in [&self.checks, &self.commits] {
            phase.stop();
            phase.wait().await;
        }
        // Workers finish the send they are in; none starts another.
        self.sends.stop();
        let finished = self.sends.wait_until(deadline).await;
        match (how, finished) {
            (End::Reload, true) => {}
            // The workers are gone, so this cannot send a row twice.
            (End::Shutdown, true) => app.dispatcher.final_delivery(&app.store, deadline).await,
            (End::Deposed, true) => app.dispatcher.report_unrecorded(),
            (End::Reload, false) => {
                // Cut off, the send could reach its receiver unrecorded, and go again from the
                // new generation. It finishes instead, holding its channel's memory (shared with
                // the new dispatcher), whose new worker waits for it.
                tracing::warn!(
                    "a send was still running at the reload deadline; it finishes in the background before its channel sends again"
                );
            }
            (End::Shutdown | End::Deposed, false) => {
                if how == End::Shutdown {
                    tracing::warn!(
                        "a send was still running at the shutdown deadline; it stays pending and is retried after the next start"
                    );
                }
                self.sends.cut_off();
                self.sends.wait().await;
                app.dispatcher.report_unrecorded();
            }
        }
    }
}

/// The scheduler of `app`'s orgs, with `heartbeat` and the `checks` phase's token.
fn scheduled_checks(app: &Arc<App>, heartbeat: Heartbeat, checks: &Phase) -> impl Future<Output = ()> + Send + use<> {
    let schedules = app
        .config
        .orgs
        .iter()
        .map(|o| (o.id.clone(), o.schedule.clone()))
        .collect();
    let check = {
        let checker = app.checker.clone();
        move |i: usize| {
            let checker = checker.clone();
            async move { checker.scheduled(i).await }
        }
    };
    let on_panic = {
        let checker = app.checker.clone();
        move |i: usize, message: &str| checker.panicked(i, message)
    };
    let settings = scheduler::SchedulerSettings {
        concurrency: app.config.poll.concurrency,
        grace: app.config.shutdown_timeout,
        heartbeat,
        clock: app.clock.clone(),
    };
    scheduler::run(schedules, settings, check, on_panic, checks.token())
}
