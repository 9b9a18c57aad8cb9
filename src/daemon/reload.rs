//! A reload: a new [`App`] for a new config, around the running one's store, metrics, clock and
//! channel memories, or a refusal that keeps the running one.

use crate::channels::ConsoleSink;
use crate::config::Config;
use crate::dispatch::DeliverySettings;

use super::App;

/// A new `App` for `loaded`, around the running one's store, metrics, clock and what its
/// channels remember (outcomes not yet written, retry times, mail recipients' progress), so that
/// a reload never sends a delivered event again.
pub(super) fn rebuild(current: &App, loaded: anyhow::Result<Config>, console: ConsoleSink) -> anyhow::Result<App> {
    let config = loaded?;
    if config.database != current.config.database && config.database.same_place(&current.config.database) {
        tracing::warn!("the database password changed; new connections use it after the next restart");
    }
    if !config.database.same_place(&current.config.database) {
        anyhow::bail!(
            "the database moved from {} to {}; that needs a restart",
            current.config.database,
            config.database
        );
    }
    if config.http_listen != current.config.http_listen || config.http_auth != current.config.http_auth {
        tracing::warn!("[http] changed; it takes effect at the next restart");
    }
    let gone: Vec<&str> = current
        .config
        .channels
        .iter()
        .filter(|c| !config.channels.iter().any(|n| n.name == c.name))
        .map(|c| c.name.as_str())
        .collect();
    if !gone.is_empty() {
        tracing::warn!(
            "channels removed: {}; their pending deliveries wait until a channel of that name returns",
            gone.join(", ")
        );
    }
    App::following(
        config,
        current.store.clone(),
        current.metrics.clone(),
        console,
        DeliverySettings::with_clock(current.clock.clone()),
        current.dispatcher.memories(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reload_keeps_the_wall_clock_of_the_running_app() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "database = \"{}\"\n[cloud_manager]\npublic_key = \"pub\"\nprivate_key = \"key\"\n\n\
             [[org]]\nid = \"5f0c1234567890abcdef1234\"\nname = \"payments\"\n",
            dir.path().join("linkwatch.db").display()
        );
        let config = || Config::parse(&text, std::path::Path::new("linkwatch.toml")).map_err(Into::into);
        let app = App::new(config().unwrap(), ConsoleSink::default()).await.unwrap();
        app.clock.step(chrono::Duration::hours(-1));
        let reloaded = rebuild(&app, config(), ConsoleSink::default()).unwrap();
        let behind = chrono::Utc::now() - reloaded.clock.now();
        assert!(behind > chrono::Duration::minutes(59), "{behind}");
        app.store.close().await;
    }
}
