//! hoist: from `git push` to the new version running, verified, on every host.
//!
//! # Layout
//! - [`cli`]: the `hoist` command line; thin, one function per command.
//! - [`client`], [`local`]: client commands talking to an agent; `hoist run` on a local checkout.
//! - [`config`]: `hoist.toml`, parsed strictly; secrets resolved at start.
//! - [`forge`]: webhook signature schemes and payloads of each forge, normalized into one push event.
//! - [`store`]: the embedded SQLite database: one writer thread with group commit, readers beside it.
//! - [`http`]: the HTTP server under the API: head and body deadlines, a connection cap.
//! - [`api`]: the HTTP surface: webhooks, the JSON API, health.
//! - [`web`]: the operator's page at `GET /`: one static HTML file that reads the JSON API.
//! - [`pipeline`]: `.hoist.yml`: the model, validation, triggers, placeholders.
//! - [`queue`]: the one way work comes in (`accept`, `enqueue`); hands queued runs to the work it is given ([`run::execute`]); cancellation.
//! - [`run`]: executes one run: fetch, match triggers, plan, checkout, steps, the release train.
//! - [`schedule`]: the step graph (file order, or `needs`) and the one scheduler that walks it.
//! - [`logs`]: a step's log pump into the store, and live-log channels for followers.
//! - [`redact`]: credentials taken out of URLs (password, token as user name, query values) wherever one is shown.
//! - [`checkout`]: git: per-repo mirrors and their locks, exact-commit fetch, workspaces, remote heads.
//! - [`runner`]: executes one step, in a container on the builder or as a shell process.
//! - [`services`]: a run's `services:` on the builder, on the run's own network, and their removal.
//! - [`engine`]: connections to Docker engines.
//! - [`image`]: build, push, and verify by digest with an independent registry client.
//! - [`deploy`]: rollouts and rollbacks across hosts: one journaled engine, host operations, health.
//! - [`outbox`]: delivers what the store's outbox owes: commit statuses on the forges, notifications.
//! - [`poll`]: finds pushes whose webhook never came, and enqueues them.
//! - [`agent`]: `hoist serve` wiring: state, server, workers, graceful shutdown.
//!
//! See ARCHITECTURE.md for the path of a push and the invariants.

pub mod agent;
pub mod api;
pub mod checkout;
pub mod cli;
pub mod client;
pub mod config;
pub mod deploy;
pub mod engine;
pub mod forge;
pub mod http;
pub mod image;
pub mod janitor;
pub mod local;
pub mod logs;
pub mod metrics;
pub mod outbox;
pub mod pipeline;
pub mod poll;
pub mod queue;
pub mod redact;
pub mod run;
pub mod runner;
pub mod schedule;
pub mod services;
pub mod store;
pub mod web;
