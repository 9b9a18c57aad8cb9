//! systemd integration: `Type=notify` readiness, stop and reload notices, and the watchdog.
//! Every call is a no-op outside systemd (no `NOTIFY_SOCKET`).

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::monitoring::{self, Shared};

fn notify(state: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

pub fn ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("watching")]);
}

pub fn reloading() {
    notify(&[NotifyState::Reloading]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// With `WatchdogSec=`, pings systemd at half the interval while the service is healthy (the
/// scheduler runs and the database takes writes), so that a stuck daemon is restarted.
/// `None` when the service has no watchdog.
pub fn watchdog(shared: Shared, shutdown: CancellationToken) -> Option<impl Future<Output = ()> + Send + 'static> {
    std::env::var_os("NOTIFY_SOCKET")?;
    let interval = sd_notify::watchdog_enabled()? / 2;
    Some(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match monitoring::health(&shared).await {
                Ok(()) => notify(&[NotifyState::Watchdog]),
                Err(reason) => tracing::warn!("not pinging the systemd watchdog: {reason}"),
            }
        }
    })
}
