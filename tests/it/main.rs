//! The integration tests: one binary, real protocols on 127.0.0.1 (a simulated Cloud Manager that
//! verifies Digest for real), everything started by `cargo test` itself.

mod helpers;

mod atlas_api;
mod checks;
mod cli;
mod consistency;
mod copy;
mod daemon;
mod delivery;
mod digest;
mod docs;
mod edge;
mod failover;
mod faults;
mod first_hour;
mod heartbeat;
mod input;
mod instances;
mod layers;
mod live_migration;
mod notify;
mod oauth;
mod ops;
mod page;
mod page_live_migration;
mod pg;
mod readme;
mod receiver;
mod refusals;
mod reports;
mod service;
mod silence;
mod skip;
mod smtp;
mod time;
