//! Keeps the data dir bounded while the agent runs: prunes runs and deliveries past the
//! retention (`[runner] keep_runs`, `keep_runs_for`; see `store::prune`) a few seconds after
//! runs end and every few minutes anyway (age alone makes runs due), removes failed runs'
//! workspaces past `keep_workspaces` or that age, and consolidates every
//! mirror's packs once an hour (fetches also do it themselves past `checkout::MAX_PACKS`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkout::Workspaces;
use crate::queue::Queue;

/// Longest the janitor sleeps without a run ending.
const TICK: Duration = Duration::from_secs(600);
/// Shortest time between two prunes: a burst of runs ending costs one prune, not one each.
const GAP: Duration = Duration::from_secs(5);
/// How often every mirror is repacked when it holds more than one pack.
const REPACK_EVERY: Duration = Duration::from_secs(3600);

/// Prune at start, then after runs end (at most every GAP) and every TICK, until shutdown.
pub async fn keep_tidy(q: Arc<Queue>) {
    let mut repacked = Instant::now();
    loop {
        let started = Instant::now();
        match q.store.prune(q.config.runner.retention).await {
            Ok(p) if p.runs > 0 || p.deliveries > 0 || p.outbox > 0 => tracing::info!(
                runs = p.runs,
                deliveries = p.deliveries,
                outbox = p.outbox,
                ms = started.elapsed().as_millis() as u64,
                "pruned by retention"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot prune old runs: {e:#}"),
        }
        let workspaces = Workspaces::new(
            &q.config.data_dir.join("workspaces"),
            q.config.runner.keep_workspaces,
        );
        let keep_for = q.config.runner.retention.keep_for;
        match tokio::task::spawn_blocking(move || workspaces?.prune(keep_for)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("cannot prune old workspaces: {e:#}"),
            Err(e) => tracing::warn!("pruning workspaces panicked: {e}"),
        }
        if repacked.elapsed() >= REPACK_EVERY {
            repacked = Instant::now();
            for repo in &q.config.repos {
                if let Err(e) = q.mirrors.compact(repo).await {
                    tracing::warn!(repo = repo.name, "cannot compact the mirror: {e:#}");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(GAP) => {}
            _ = q.shutdown.cancelled() => return,
        }
        tokio::select! {
            _ = q.finished.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
            _ = q.shutdown.cancelled() => return,
        }
    }
}
