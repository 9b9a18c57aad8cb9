//! linkwatch: watches Cloud Manager / Ops Manager -> Atlas migration links, keeps their history
//! in SQLite and notifies when a link's status changes. See ARCHITECTURE.md for the map.

pub mod config;
pub mod secret;
pub mod client;
pub mod detect;
pub mod store;
pub mod scheduler;
pub mod message;
pub mod channels;
pub mod retry;
pub mod daemon;
pub mod dispatch;
pub mod simulator;
pub mod cli;
pub mod demo;
