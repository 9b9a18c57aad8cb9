//! What runs on every instance, leading or not, and outlives a reload: the HTTP endpoint, the
//! systemd watchdog, the external heartbeat and retention. The last phase to stop; its tasks
//! follow the current config through watch channels.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::App;
use super::phase::Phase;
use crate::config::{self, Config};
use crate::leader::Leadership;
use crate::scheduler::Heartbeat;
use crate::{monitoring, systemd, web};

pub(super) struct Services {
    phase: Phase,
    configured: watch::Sender<Arc<web::Configured>>,
    retention: watch::Sender<Duration>,
    heartbeat: watch::Sender<Option<config::HeartbeatConfig>>,
}

impl Services {
    /// Starts them for `app`; fails when `[http] listen` cannot be bound.
    pub(super) async fn start(app: &App, leadership: &Leadership, heartbeat: &Heartbeat) -> anyhow::Result<Services> {
        let (configured, configured_rx) = watch::channel(web::Configured::of(&app.config));
        let (retention, keep) = watch::channel(app.config.retention);
        let (beat, beat_rx) = watch::channel(app.config.heartbeat.clone());
        let shared = monitoring::Shared::new(
            app.store.clone(),
            app.metrics.clone(),
            heartbeat.clone(),
            configured_rx,
            leadership.role.clone(),
            app.clock.clone(),
        );
        let phase = Phase::default();
        if let Some(addr) = app.config.http_listen {
            let page = web::Page {
                store: app.store.clone(),
                clock: app.clock.clone(),
                metrics: app.metrics.clone(),
                configured: shared.orgs.clone(),
            };
            let login = app.config.http_auth.clone();
            phase.spawn(monitoring::serve(addr, shared.clone(), page, login, phase.token()).await?);
        }
        if let Some(watchdog) = systemd::watchdog(shared.clone(), phase.token()) {
            phase.spawn(watchdog);
        }
        phase.spawn(crate::heartbeat::run(shared, beat_rx, phase.token()));
        phase.spawn(crate::retention::run(
            app.store.clone(),
            keep,
            app.clock.clone(),
            phase.token(),
        ));
        Ok(Services {
            phase,
            configured,
            retention,
            heartbeat: beat,
        })
    }

    /// From now on, what `config` watches, keeps and pings.
    pub(super) fn follow(&self, config: &Config) {
        self.configured.send_replace(web::Configured::of(config));
        self.retention.send_replace(config.retention);
        self.heartbeat.send_replace(config.heartbeat.clone());
    }

    pub(super) async fn stop(self) {
        self.phase.stop();
        self.phase.wait().await;
    }
}
