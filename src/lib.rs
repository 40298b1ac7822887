//! hoist: from `git push` to the new version running, verified, on every host.
//!
//! # Layout
//! - [`cli`]: the `hoist` command line; thin, one function per command.
//! - [`config`]: `hoist.toml`, parsed strictly; secrets resolved at start.
//! - [`forge`]: webhook signature schemes and payloads of each forge, normalized into one push event.
//! - [`store`]: the embedded SQLite database: one writer thread with group commit, readers beside it.
//! - [`api`]: the HTTP surface: webhooks, the JSON API, health.
//! - [`agent`]: `hoist serve` wiring: state, server, graceful shutdown.
//!
//! See ARCHITECTURE.md for the path of a push and the invariants.

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod forge;
pub mod store;
