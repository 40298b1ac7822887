//! Missed pushes: every `[runner] poll_interval`, list each repository's branch and tag heads
//! and queue a run for every head that hoist never saw (by webhook, run or earlier poll), as
//! if its webhook had come. A webhook that never arrived no longer means a build that never ran.
//!
//! The poller only records heads and enqueues: whether the commit's pipeline runs for the ref
//! is decided by the run, as for a webhook's push (`run::execute`), so a missed push and a
//! delivered one end the same way.
//!
//! The first look at a repository hoist never heard of (no webhook, run or poll yet) only
//! records its heads: what was pushed before hoist knew the repository is not built
//! retroactively.

use std::sync::Arc;

use anyhow::Context;

use crate::forge::RefKind;
use crate::queue::Queue;
use crate::store::{NewRun, Trigger};

/// Poll until shutdown.
pub async fn poll_forever(q: Arc<Queue>) {
    let every = q.config.runner.poll_interval;
    if every.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = q.shutdown.cancelled() => return,
        }
        for repo in &q.config.repos {
            if let Err(e) = poll_repo(&q, &repo.name).await {
                tracing::warn!(repo = repo.name, "cannot poll the repository: {e:#}");
            }
        }
    }
}

/// One look at one repository; returns the runs it queued.
pub async fn poll_repo(q: &Queue, repo: &str) -> anyhow::Result<Vec<i64>> {
    let conf = q
        .config
        .repo(repo)
        .with_context(|| format!("repository {repo} is not in hoist.toml"))?;
    let heads: Vec<(String, String)> = q
        .mirrors
        .heads(conf)
        .await?
        .into_iter()
        .filter(|(r, _)| r.starts_with("refs/heads/") || r.starts_with("refs/tags/"))
        .collect();
    if !q.store.repo_known(repo.to_string()).await? {
        tracing::info!(
            repo,
            heads = heads.len(),
            "first look at the repository: its heads are recorded, not built"
        );
        q.store.record_heads(repo.to_string(), heads).await?;
        return Ok(Vec::new());
    }
    let mut queued = Vec::new();
    for (git_ref, commit) in &heads {
        if q.store
            .head_seen(repo.to_string(), git_ref.clone(), commit.clone())
            .await?
        {
            continue;
        }
        let (kind, name) = match git_ref.strip_prefix("refs/heads/") {
            Some(b) => (RefKind::Branch, b.to_string()),
            None => (
                RefKind::Tag,
                git_ref.trim_start_matches("refs/tags/").to_string(),
            ),
        };
        let Some(created) = q
            .enqueue_missed(NewRun {
                repo: repo.to_string(),
                git_ref: git_ref.clone(),
                kind,
                name,
                commit: commit.clone(),
                delivery: None,
                trigger: Trigger::Poll,
                message: None,
                author: None,
                cancel_superseded: conf.cancel_superseded,
            })
            .await?
        else {
            continue;
        };
        tracing::info!(
            repo,
            git_ref,
            commit,
            run = created.id,
            "missed push found by polling; run queued"
        );
        queued.push(created.id);
    }
    q.store.record_heads(repo.to_string(), heads).await?;
    Ok(queued)
}
