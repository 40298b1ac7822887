//! `hoist serve`: open the store, bind the server, run until SIGTERM, then shut down cleanly.
//!
//! Shutdown order matters: stop accepting connections, let in-flight requests finish (their
//! writes are already queued), then let the store writer commit what is queued and stop.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::deploy::deployment::Deployer;
use crate::queue::Queue;
use crate::store::Store;

/// How long shutdown waits for workers to kill their steps.
const WORKER_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let store = Store::open(&config.data_dir)?;
    // Before anything can change: every change from here on writes what it owes.
    store.set_reporting(crate::outbox::reporting(&config));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another agent running there? (listen in hoist.toml)",
                config.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let config = Arc::new(config);
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));

    let agent_id = agent_id(&config.data_dir)?;
    recover(&store, &config, &agent_id).await?;
    let queue = Queue::new(store.clone(), config.clone(), shutdown.clone(), agent_id);
    // Deployments a crash left running are resolved before any run may deploy (they hold the
    // app's lease while they converge), but without delaying the server. Shutdown cuts it
    // off: what it left unresolved is still `running` in the journal, and the next start
    // resolves it again.
    // Listed before anything is served: a deployment this agent begins from now on is live,
    // never one to recover (its lease must not be taken over).
    let interrupted = store.running_deployments().await?;
    let recovery = {
        let deployer = Deployer::new(store.clone(), config.clone(), shutdown.clone());
        tokio::spawn(async move {
            let (tx, mut rx) = crate::runner::LogSink::channel();
            let logger = tokio::spawn(async move {
                while let Some(line) = rx.recv().await {
                    let line = line.into_bytes();
                    tracing::warn!("recovery: {}", String::from_utf8_lossy(&line).trim_end());
                }
            });
            if let Err(e) = deployer.recover(&tx, interrupted).await {
                tracing::error!("cannot resolve interrupted deployments: {e:#}");
            }
            drop(tx);
            let _ = logger.await;
        })
    };
    // A store that can no longer write ends the agent: serving on would accept deliveries
    // it cannot keep. The supervisor (systemd's Restart=) starts it again.
    let store_watch = {
        let (store, shutdown) = (store.clone(), shutdown.clone());
        tokio::spawn(async move {
            let why = store.failed().await;
            tracing::error!("{why}; the agent stops so that its supervisor restarts it");
            shutdown.cancel();
        })
    };
    let dispatcher = tokio::spawn(queue.clone().dispatch(crate::run::execute));
    let poller = tokio::spawn(crate::poll::poll_forever(queue.clone()));
    let janitor = tokio::spawn(crate::janitor::keep_tidy(queue.clone()));
    let watch = tokio::spawn(crate::deploy::drift::watch_forever(queue.clone()));
    let sender = tokio::spawn(crate::outbox::deliver_forever(
        store.clone(),
        config.clone(),
        shutdown.clone(),
    ));

    let state = AppState {
        config,
        store: store.clone(),
        metrics: store.metrics(),
        queue: queue.clone(),
    };
    let app = api::router(state).layer(tower_http::trace::TraceLayer::new_for_http());

    // Tests and scripts read this line to learn the port when `listen` uses port 0.
    println!("hoist listening on http://{addr}");
    tracing::info!(%addr, db = %store.path().display(), "hoist agent started");
    crate::http::serve(listener, app, shutdown.clone())
        .await
        .context("the HTTP server failed")?;

    // Runs see the shutdown, kill their steps and leave themselves to be re-queued;
    // deployment jobs stop acting and are resolved by the next start's recovery.
    shutdown.cancel();
    let _ = dispatcher.await;
    recovery.abort();
    store_watch.abort();
    let _ = poller.await;
    let _ = janitor.await;
    let _ = watch.await;
    let _ = sender.await;
    queue.tasks.close();
    if tokio::time::timeout(WORKER_GRACE, queue.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "some runs did not stop within {WORKER_GRACE:?}; they are re-queued at the next start"
        );
    }
    let failure = store.failure();
    tokio::task::spawn_blocking(move || store.shutdown()).await?;
    if let Some(why) = failure {
        // A non-zero exit, so that `Restart=on-failure` starts the agent again.
        anyhow::bail!("{why}");
    }
    tracing::info!("hoist agent stopped");
    Ok(())
}

/// Where the agent keeps its id, in `data_dir`.
const AGENT_ID_FILE: &str = "agent-id";

/// This agent's id: made once (random, 16 hex digits) and kept in `data_dir/agent-id`, so
/// that it stays the same across restarts; it is the value of the `hoist.agent` label on
/// everything the agent creates on the builder. A copied data_dir keeps the id: delete the
/// file in the copy to give it one of its own.
pub fn agent_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(AGENT_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if !is_agent_id(id) {
                bail!(
                    "{} holds {id:?}, not an agent id (lowercase letters, digits, `-`, 1 to 64); \
                     delete the file and hoist makes a new one",
                    path.display()
                );
            }
            return Ok(id.to_string());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let id = format!("{:016x}", rand::random::<u64>());
    // Written beside and renamed into place: a crash never leaves half an id.
    let tmp = data_dir.join(format!("{AGENT_ID_FILE}.tmp"));
    std::fs::write(&tmp, format!("{id}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("cannot write the agent id to {}", path.display()))?;
    Ok(id)
}

/// What an agent id may be: safe inside a label value and a Docker network name.
fn is_agent_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Runs left running by a crash: re-queue or mark interrupted, and remove from the builder
/// every container and network this agent left there (step and service containers, run
/// networks; best effort: the builder may be down; the runs are recorded anyway). Nothing of
/// this agent runs yet, and another agent's (another `hoist.agent` label) is never touched.
async fn recover(store: &Store, config: &Config, agent: &str) -> anyhow::Result<()> {
    // What interrupted runs and rollbacks left on disk: nothing uses it before we serve.
    let workspaces = crate::checkout::Workspaces::new(
        &config.data_dir.join("workspaces"),
        config.runner.keep_workspaces,
    )?;
    match workspaces.remove_interrupted() {
        Ok(0) => {}
        Ok(n) => tracing::info!(workspaces = n, "removed the interrupted runs' workspaces"),
        Err(e) => tracing::warn!("cannot remove the interrupted runs' workspaces: {e:#}"),
    }
    let hooks = config.data_dir.join(crate::deploy::HOOKS_DIR);
    if let Err(e) = std::fs::remove_dir_all(&hooks)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(
            "cannot remove the rollbacks' hooks checkouts {}: {e}",
            hooks.display()
        );
    }
    let found = store.recover_runs().await?;
    if found.requeued.is_empty() && found.interrupted.is_empty() {
        return Ok(());
    }
    tracing::warn!(requeued = ?found.requeued, interrupted = ?found.interrupted, "runs interrupted by the last stop");
    match crate::engine::connect(&config.builder.docker, None).await {
        Ok(docker) => match crate::runner::remove_leftovers(&docker, agent, None).await {
            Ok(removed) => tracing::info!(
                containers = removed.containers,
                networks = removed.networks,
                "removed what the interrupted runs left on the builder"
            ),
            Err(e) => tracing::warn!("cannot remove the interrupted runs' leftovers: {e:#}"),
        },
        Err(e) => {
            tracing::warn!("cannot reach the builder to remove orphaned containers: {e:#}")
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = agent_id(dir.path()).unwrap();
        assert!(is_agent_id(&first), "{first}");
        assert_eq!(first.len(), 16);
        assert_eq!(agent_id(dir.path()).unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(agent_id(other.path()).unwrap(), first);
    }

    #[test]
    fn a_damaged_agent_id_file_is_refused_saying_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(AGENT_ID_FILE), "Not An Id!\n").unwrap();
        let e = agent_id(dir.path()).unwrap_err().to_string();
        assert!(e.contains("delete the file"), "{e}");
    }
}
