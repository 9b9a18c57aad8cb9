//! linkwatch: watches Cloud Manager / Ops Manager -> Atlas migration links, keeps their history
//! in SQLite and notifies when a link's status changes. See ARCHITECTURE.md for the map.

pub mod config;
pub mod secret;
pub mod client;
pub mod detect;
pub mod store;
