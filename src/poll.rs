//! Missed pushes: every `[runner] poll_interval`, list each repository's branch and tag heads
//! and queue a run for every head that hoist never saw (by webhook, run or earlier poll) and
//! whose pipeline runs for that ref. A webhook that never arrived no longer means a build
//! that never ran.
//!
//! The first look at a repository hoist never heard of (no webhook, run or poll yet) only
//! records its heads: what was pushed before hoist knew the repository is not built
//! retroactively.

use std::sync::Arc;

use crate::forge::RefKind;
use crate::queue::Queue;
use crate::store::{NewRun, trigger};
use crate::worker;

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
        for repo in q.config.repos.clone() {
            if let Err(e) = poll_repo(&q, &repo.name).await {
                tracing::warn!(repo = repo.name, "cannot poll the repository: {e:#}");
            }
        }
    }
}

/// One look at one repository; returns the runs it queued.
pub async fn poll_repo(q: &Arc<Queue>, repo: &str) -> anyhow::Result<Vec<i64>> {
    let conf = q
        .config
        .repo(repo)
        .ok_or_else(|| anyhow::anyhow!("repository {repo} is not in hoist.toml"))?
        .clone();
    let heads = {
        let lock = q.repo_lock(repo);
        let _guard = lock.lock().await;
        let path = worker::mirror_path(&q.config.data_dir, repo);
        let url = conf.url.clone();
        tokio::task::spawn_blocking(move || crate::checkout::Mirror::open(&path, &url)?.ls_remote())
            .await??
    };
    let heads: Vec<(String, String)> = heads
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
        // Queue only what the commit's pipeline runs for, so that polling adds no noise.
        let (_, text) = worker::fetch_pipeline(q, repo, git_ref, commit).await?;
        let runs = text
            .and_then(|t| crate::pipeline::parse(&t).ok())
            .is_some_and(|p| p.on.matches(kind, &name));
        if runs {
            let created = q
                .store
                .create_run(NewRun {
                    repo: repo.to_string(),
                    git_ref: git_ref.clone(),
                    kind,
                    name,
                    commit: commit.clone(),
                    delivery: None,
                    trigger: trigger::POLL,
                    message: None,
                    author: None,
                    cancel_superseded: conf.cancel_superseded,
                })
                .await?;
            q.supersede(&created.superseded_running, created.id);
            tracing::info!(
                repo,
                git_ref,
                commit,
                run = created.id,
                "missed push found by polling; run queued"
            );
            queued.push(created.id);
        }
    }
    q.store.record_heads(repo.to_string(), heads).await?;
    if !queued.is_empty() {
        q.wake();
    }
    Ok(queued)
}
