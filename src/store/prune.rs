//! Retention: finished runs beyond `[runner] keep_runs` per repository, or older than
//! `keep_runs_for`, lose their logs, and their rows go too unless a release or a deployment
//! names them (a release's run stays, so the chain of custody still starts at a commit).
//! Deliveries no run names go by the same rule, and so do delivered or given-up outbox rows
//! (those of pruned runs, older ones, and beyond four per kept run). Releases, deployments and their journals are
//! never pruned. Freed pages go back to the file system (`auto_vacuum = INCREMENTAL`).

use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, now_millis};
use crate::config::Retention;

/// Most runs (and deliveries) one write job prunes, so that a first prune of a big backlog
/// never holds the writer for long: the job repeats until less than this is left.
const BATCH: i64 = 500;

/// Finished outbox rows kept per kept run (`keep_runs`), whatever their repository.
const OUTBOX_ROWS_PER_RUN: i64 = 4;

/// What one prune removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Runs whose logs were removed (their rows too, unless a release or deployment names them).
    pub runs: u64,
    /// Delivery rows removed.
    pub deliveries: u64,
    /// Outbox rows removed (delivered or given up).
    pub outbox: u64,
}

impl Store {
    /// Prune every repository's runs and deliveries by `retention`, in batches, then give the
    /// freed pages back.
    pub async fn prune(&self, retention: Retention) -> anyhow::Result<Pruned> {
        let mut total = Pruned::default();
        loop {
            let cutoff = retention
                .keep_for
                .map_or(i64::MIN, |d| now_millis() - d.as_millis() as i64);
            let keep = i64::from(retention.keep_runs);
            let batch = self
                .write(move |c| {
                    let mut p = Pruned::default();
                    let repos: Vec<String> = c
                        .prepare_cached(
                            "SELECT repo FROM runs GROUP BY repo
                             UNION SELECT repo FROM deliveries GROUP BY repo",
                        )?
                        .query_map([], |r| r.get(0))?
                        .collect::<Result<_, _>>()?;
                    for repo in repos {
                        p.runs += prune_runs(c, &repo, keep, cutoff)?;
                        p.deliveries += prune_deliveries(c, &repo, keep, cutoff)?;
                    }
                    // A run owes a few rows (a status when queued and when ended, a
                    // notification or two): keep that many per kept run.
                    p.outbox += super::outbox::prune_outbox(c, keep * OUTBOX_ROWS_PER_RUN, cutoff)?;
                    if p != Pruned::default() {
                        // Frees one page per step: step it to the end.
                        let mut vacuum = c.prepare_cached("PRAGMA incremental_vacuum")?;
                        let mut rows = vacuum.query([])?;
                        while rows.next()?.is_some() {}
                    }
                    Ok(p)
                })
                .await?;
            total.runs += batch.runs;
            total.deliveries += batch.deliveries;
            total.outbox += batch.outbox;
            if batch.runs < BATCH as u64 && batch.deliveries < BATCH as u64 {
                return Ok(total);
            }
        }
    }
}

/// Up to BATCH of `repo`'s finished runs past the retention: logs removed, rows removed
/// unless protected. Protected rows whose logs are gone are not counted again.
fn prune_runs(c: &Connection, repo: &str, keep: i64, cutoff: i64) -> anyhow::Result<u64> {
    // The newest run beyond the `keep` newest finished ones: it and every older one go.
    let boundary: i64 = c
        .prepare_cached(
            "SELECT id FROM runs WHERE repo = ?1 AND status NOT IN ('queued', 'running', 'waiting')
             ORDER BY id DESC LIMIT 1 OFFSET ?2",
        )?
        .query_row(params![repo, keep], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let doomed: Vec<(i64, bool)> = c
        .prepare_cached(
            "SELECT id, EXISTS (SELECT 1 FROM releases WHERE run = runs.id)
                     OR EXISTS (SELECT 1 FROM deployments WHERE run = runs.id) AS protected
             FROM runs
             WHERE repo = ?1 AND status NOT IN ('queued', 'running', 'waiting')
               AND (id <= ?2 OR created_at < ?3)
               AND (NOT protected OR EXISTS (SELECT 1 FROM logs WHERE run = runs.id))
             ORDER BY id LIMIT ?4",
        )?
        .query_map(params![repo, boundary, cutoff, BATCH], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut logs = c.prepare_cached("DELETE FROM logs WHERE run = ?1")?;
    let mut steps = c.prepare_cached("DELETE FROM steps WHERE run = ?1")?;
    let mut runs = c.prepare_cached("DELETE FROM runs WHERE id = ?1")?;
    for &(id, protected) in &doomed {
        logs.execute([id])?;
        if !protected {
            steps.execute([id])?;
            runs.execute([id])?;
        }
    }
    Ok(doomed.len() as u64)
}

/// Up to BATCH of `repo`'s deliveries past the retention that no run names any more.
fn prune_deliveries(c: &Connection, repo: &str, keep: i64, cutoff: i64) -> anyhow::Result<u64> {
    let boundary: i64 = c
        .prepare_cached(
            "SELECT id FROM deliveries WHERE repo = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2",
        )?
        .query_row(params![repo, keep], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let n = c
        .prepare_cached(
            "DELETE FROM deliveries WHERE id IN (
                SELECT id FROM deliveries
                WHERE repo = ?1 AND (id <= ?2 OR received_at < ?3)
                  AND NOT EXISTS (SELECT 1 FROM runs WHERE delivery = deliveries.id)
                ORDER BY id LIMIT ?4)",
        )?
        .execute(params![repo, boundary, cutoff, BATCH])?;
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::forge::{Forge, PushEvent, RefKind};
    use crate::store::{Intake, NewRelease, Status, StepKind};

    fn push(i: u32) -> Intake {
        Intake {
            skip: None,
            cancel_superseded: false,
            event: PushEvent {
                forge: Forge::Github,
                delivery_id: format!("d{i}"),
                repo: "acme/web".into(),
                git_ref: "refs/heads/main".into(),
                kind: RefKind::Branch,
                name: "main".into(),
                before: "0".repeat(40),
                after: format!("{i:040x}"),
                created: false,
                deleted: false,
                forced: false,
                message: None,
                author: None,
                pusher: None,
            },
        }
    }

    /// `n` finished runs with a 64 KiB log each, then one still queued; returns the store.
    async fn store_with_runs(dir: &std::path::Path, n: u32) -> Store {
        let store = Store::open(dir).unwrap();
        for i in 1..=n {
            store.accept(vec![push(i)]).await.unwrap();
            let run = store.claim_run().await.unwrap().unwrap();
            store
                .plan_run(
                    run.id,
                    "web".into(),
                    vec![("t".into(), StepKind::Container)],
                )
                .await
                .unwrap();
            store
                .append_logs(vec![(run.id, 0, vec![b'x'; 64 * 1024])])
                .await
                .unwrap();
            store
                .finish_run(run.id, Status::Success, None)
                .await
                .unwrap();
        }
        store.accept(vec![push(n + 1)]).await.unwrap();
        store
    }

    async fn count(store: &Store, sql: &'static str) -> i64 {
        store
            .read(move |c| Ok(c.query_row(sql, [], |r| r.get(0))?))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn keeps_the_newest_runs_and_every_release_s_run_and_shrinks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_runs(dir.path(), 30).await;
        store
            .create_release(NewRelease {
                app: "web".into(),
                repo: "acme/web".into(),
                commit: format!("{:040x}", 3),
                run: 3,
                step: "image".into(),
                repository: "127.0.0.1:5000/acme/web".into(),
                manifest_digest: format!("sha256:{}", "a".repeat(64)),
                config_digest: format!("sha256:{}", "b".repeat(64)),
                tags: vec![],
                deploy: None,
            })
            .await
            .unwrap();
        let pages = count(&store, "SELECT page_count FROM pragma_page_count()").await;

        let keep = Retention {
            keep_runs: 10,
            keep_for: None,
        };
        let pruned = store.prune(keep).await.unwrap();
        assert_eq!(
            pruned,
            Pruned {
                runs: 20,
                deliveries: 19,
                outbox: 0
            }
        );
        assert_eq!(count(&store, "SELECT COUNT(*) FROM runs").await, 10 + 1 + 1);
        assert_eq!(
            count(&store, "SELECT MIN(id) FROM runs WHERE id <> 3").await,
            21
        );
        let (run3, steps) = store.run(3).await.unwrap().expect("a release's run stays");
        assert_eq!((run3.status, steps.len()), (Status::Success, 1));
        assert!(
            store.logs(3, 0, 1000).await.unwrap().is_empty(),
            "its log goes"
        );
        assert_eq!(store.logs(21, 0, 1000).await.unwrap().len(), 1);
        assert_eq!(count(&store, "SELECT COUNT(*) FROM deliveries").await, 12);
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM runs WHERE status = 'queued'").await,
            1
        );
        let after = count(&store, "SELECT page_count FROM pragma_page_count()").await;
        assert!(
            after < pages / 2,
            "20 of 30 logs gone: {pages} pages → {after}"
        );
        assert_eq!(
            count(&store, "SELECT freelist_count FROM pragma_freelist_count()").await,
            0
        );

        assert_eq!(
            store.prune(keep).await.unwrap(),
            Pruned::default(),
            "idempotent"
        );

        // By age: every finished run is older than a millisecond, but not the queued one.
        std::thread::sleep(Duration::from_millis(5));
        let pruned = store
            .prune(Retention {
                keep_runs: 1000,
                keep_for: Some(Duration::from_millis(1)),
            })
            .await
            .unwrap();
        assert_eq!(pruned.runs, 10);
        assert_eq!(count(&store, "SELECT COUNT(*) FROM runs").await, 2);
        store.shutdown();
    }

    #[tokio::test]
    async fn a_first_prune_of_a_backlog_goes_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_runs(dir.path(), BATCH as u32 + 20).await;
        let pruned = store
            .prune(Retention {
                keep_runs: 5,
                keep_for: None,
            })
            .await
            .unwrap();
        assert_eq!(pruned.runs, BATCH as u64 + 15);
        assert_eq!(count(&store, "SELECT COUNT(*) FROM runs").await, 6);
        store.shutdown();
    }
}
