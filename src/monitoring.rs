//! The optional HTTP endpoint (`[http] listen`): `/metrics` for Prometheus and `/healthz` for
//! load balancers, systemd and people.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::scheduler::Heartbeat;
use crate::store::Store;

/// The scheduler wakes at least every 5 s; three missed wake-ups mean it is stuck.
const STALE_HEARTBEAT: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct Shared {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub heartbeat: Heartbeat,
}

/// Why the service is not healthy, or `Ok` when it is.
pub async fn health(shared: &Shared) -> Result<(), String> {
    match shared.heartbeat.age() {
        None => return Err("the scheduler has not started".into()),
        Some(age) if age > STALE_HEARTBEAT => {
            return Err(format!("the scheduler has not run for {}s", age.as_secs()));
        }
        Some(_) => {}
    }
    shared
        .store
        .probe_write()
        .await
        .map_err(|e| format!("the database does not take writes: {e}"))
}

/// Binds `addr` and serves until `shutdown`. Binding happens before this returns, so a busy port
/// is reported at start.
pub async fn serve(
    addr: SocketAddr,
    shared: Shared,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ([http] listen): {e}"))?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(shared);
    Ok(tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(e) = serve.await {
            tracing::error!("HTTP endpoint stopped: {e}");
        }
    }))
}

async fn metrics(State(shared): State<Shared>) -> Response {
    match shared.store.gauges().await {
        Ok(gauges) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            shared.metrics.render(&gauges),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the database: {e}\n"),
        )
            .into_response(),
    }
}

async fn healthz(State(shared): State<Shared>) -> Response {
    match health(&shared).await {
        Ok(()) => (StatusCode::OK, degraded(&shared).await).into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

/// "ok", or "degraded" with the channels whose deliveries keep failing. A blocked channel is not
/// a reason for 503: the watchdog and orchestrators would restart the daemon, which does not
/// fix a receiver and would pause every check; the process is healthy and says what is wrong.
async fn degraded(shared: &Shared) -> String {
    match shared.store.blocked_channels(chrono::Utc::now()).await {
        Ok(blocked) if !blocked.is_empty() => {
            let mut text = String::from("degraded\n");
            for b in blocked {
                text.push_str(&format!(
                    "channel \"{}\" blocked since {}: {} deliveries keep failing (other orgs' events pass); last error: {}\n",
                    b.channel,
                    crate::store::ts(b.since),
                    b.deliveries,
                    b.last_error.as_deref().unwrap_or("none recorded")
                ));
            }
            text
        }
        Ok(_) => "ok\n".into(),
        Err(e) => format!("ok (cannot read the outbox: {e})\n"),
    }
}
