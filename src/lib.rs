//! linkwatch: watches Cloud Manager / Ops Manager -> Atlas migration links and Atlas live
//! migrations, keeps their history in SQLite or PostgreSQL, and notifies Slack, email and
//! webhooks when something changes. See ARCHITECTURE.md for the map.

pub mod channels;
pub mod check;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod copy;
pub mod cron;
pub mod daemon;
pub mod demo;
pub mod detect;
pub mod dispatch;
pub mod heartbeat;
pub mod leader;
pub mod live_migration;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod monitoring;
pub mod outcome;
pub mod outside;
pub mod probe;
pub mod report;
pub mod retention;
pub mod retry;
pub mod router;
pub mod scheduler;
pub mod secret;
pub mod silence;
pub mod simulator;
pub mod store;
pub mod systemd;
pub mod table;
pub mod text;
pub mod web;
