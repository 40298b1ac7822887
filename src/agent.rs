//! `hoist serve`: open the store, bind the server, run until SIGTERM, then shut down cleanly.
//!
//! Shutdown order matters: stop accepting connections, let in-flight requests finish (their
//! writes are already queued), then let the store writer commit what is queued and stop.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, Metrics};
use crate::config::Config;
use crate::store::Store;

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let store = Store::open(&config.data_dir)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another agent running there? (listen in hoist.toml)",
                config.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let state = AppState {
        config: Arc::new(config),
        store: store.clone(),
        metrics: Arc::new(Metrics::default()),
    };
    let app = api::router(state).layer(tower_http::trace::TraceLayer::new_for_http());

    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));

    // Tests and scripts read this line to learn the port when `listen` uses port 0.
    println!("hoist listening on http://{addr}");
    tracing::info!(%addr, db = %store.path().display(), "hoist agent started");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("the HTTP server failed")?;

    tokio::task::spawn_blocking(move || store.shutdown()).await?;
    tracing::info!("hoist agent stopped");
    Ok(())
}

/// Cancel `token` on SIGTERM or Ctrl-C.
async fn signal_shutdown(token: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
    token.cancel();
}
