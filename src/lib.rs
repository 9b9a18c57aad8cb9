//! linkwatch: watches Cloud Manager / Ops Manager -> Atlas migration links, keeps their history
//! in SQLite and notifies when a link's status changes. See ARCHITECTURE.md for the map.

pub mod channels;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod detect;
pub mod dispatch;
pub mod http;
pub mod message;
pub mod metrics;
pub mod retry;
pub mod scheduler;
pub mod secret;
pub mod service;
pub mod simulator;
pub mod store;
