//! The `missive` command's library side: wiring the embedded stack together.
//!
//! [`server::start`] opens the log and the read store in a data directory, starts the
//! projector and the HTTP API, and hands back a [`server::Running`] handle. `missive serve`
//! and the end-to-end tests both use it.
//!
//! # Layout
//! - [`server`]: configuration and start-up of the embedded server.
//! - [`secret`]: the JWT secret kept in the data directory.
//! - [`dlq`]: listing and retrying dead letters.

pub mod dlq;
pub mod secret;
pub mod server;
