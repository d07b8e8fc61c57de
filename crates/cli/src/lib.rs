//! The `missive` command's library side: wiring the log, the read store, the projector and
//! the HTTP API together.
//!
//! [`server::start`] opens the configured log ([`server::LogBackend`]: embedded or Kafka) and
//! read store ([`server::StoreBackend`]: embedded or Scylla), starts the projector and/or the
//! HTTP API, and hands back a [`server::Running`] handle. `missive serve`, `api` and `project`
//! and the end-to-end tests all use it.
//!
//! # Layout
//! - [`server`]: configuration and start-up of the server, and the choice of log and store.
//! - [`secret`]: the JWT secret kept in the data directory.
//! - [`dlq`]: listing and retrying dead letters.
//! - [`events`]: the log's records as JSON lines (`missive events dump`/`tail`).
//! - [`replay`]: rebuilding, verifying and swapping read models (`missive replay`).
//! - [`loadtest`]: the load harness (`missive loadtest`).

pub mod dlq;
pub mod events;
pub mod loadtest;
pub mod replay;
pub mod secret;
pub mod server;
