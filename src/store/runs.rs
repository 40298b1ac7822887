//! Runs, their steps and logs: the run queue lives in these tables.
//!
//! A run is created `queued` (with its delivery, in the same transaction), claimed by a worker
//! in a transaction that counts attempts, and ends in one terminal status. Superseding and
//! cancelling are decided here, in the writer, so two of them never race.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::outbox::run_changed;
use super::{Reporting, Store, now_millis, rfc3339};
use crate::forge::RefKind;

super::text_enum! {
    /// The state of a run or of one of its steps; stored and served as the quoted strings.
    pub enum Status ("run status") {
        Queued = "queued",
        Running = "running",
        /// A `when.manual` step (and its run) waits for a person's approval; such a run holds
        /// no runner slot.
        Waiting = "waiting",
        Success = "success",
        Failed = "failed",
        Cancelled = "cancelled",
        TimedOut = "timed_out",
        Interrupted = "interrupted",
        /// The commit has no pipeline, or the pipeline does not run for this ref.
        Skipped = "skipped",
    }
}

impl Status {
    /// A run or step in one of these states never changes again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Queued | Status::Running | Status::Waiting)
    }
}

super::text_enum! {
    /// Where a run came from.
    pub enum Trigger ("trigger") {
        Push = "push",
        Manual = "manual",
        Replay = "replay",
        Poll = "poll",
    }
}

super::text_enum! {
    /// What a step does: which executor runs it.
    pub enum StepKind ("step kind") {
        Container = "container",
        Shell = "shell",
        Build = "build",
        Deploy = "deploy",
    }
}

/// What a new run is for.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub repo: String,
    pub git_ref: String,
    pub kind: RefKind,
    pub name: String,
    pub commit: String,
    pub delivery: Option<i64>,
    pub trigger: Trigger,
    pub message: Option<String>,
    pub author: Option<String>,
    /// Cancel older queued or running runs of the same repo and branch.
    pub cancel_superseded: bool,
}

/// A run created, and the running runs it superseded (their workers must be told).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub id: i64,
    pub superseded_running: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Run {
    pub id: i64,
    pub repo: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub kind: RefKind,
    pub name: String,
    pub commit: String,
    pub delivery: Option<i64>,
    pub trigger: Trigger,
    pub status: Status,
    pub reason: Option<String>,
    pub attempts: i64,
    pub app: Option<String>,
    pub message: Option<String>,
    pub author: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Step {
    pub index: i64,
    pub name: String,
    pub kind: StepKind,
    pub status: Status,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Who let this `when.manual` step go (an API token's name), and when.
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
}

/// What `approve_step` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approve {
    /// Approved; `requeued`: the run was waiting and is queued again to go on.
    Approved {
        requeued: bool,
    },
    /// Someone approved it already.
    Already(String),
    /// The step is not waiting for approval: its status.
    NotWaiting(Status),
    NoStep,
    NotFound,
}

/// What `park_run` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Park {
    /// The run now waits for approval, holding no slot.
    Parked,
    /// These waiting steps were approved meanwhile: go on instead.
    Approved(Vec<i64>),
}

/// One chunk of a run's log, already masked.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogChunk {
    pub seq: i64,
    pub step: i64,
    #[serde(serialize_with = "lossy_utf8")]
    pub data: Vec<u8>,
    /// When it was stored (RFC 3339), shown beside its lines; None for chunks stored before
    /// hoist kept the time.
    pub at: Option<String>,
}

fn lossy_utf8<S: serde::Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(data))
}

/// What `cancel_run` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// It was queued and is now cancelled.
    Dequeued,
    /// It is running: its worker must stop it.
    Running,
    /// It had already ended with this status.
    Ended(Status),
    NotFound,
}

/// Runs that were running when the agent stopped, as found at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    pub requeued: Vec<i64>,
    pub interrupted: Vec<i64>,
}

/// How many times a run may be claimed: the first attempt and one re-queue after a crash.
pub const MAX_ATTEMPTS: i64 = 2;

pub(super) fn create_run(
    c: &Connection,
    r: &NewRun,
    rep: Option<&Reporting>,
    now: i64,
) -> anyhow::Result<Created> {
    let mut superseded_running = Vec::new();
    if r.cancel_superseded && r.kind == RefKind::Branch {
        let mut older = c.prepare_cached(
            "SELECT id, status FROM runs WHERE repo = ?1 AND git_ref = ?2 AND status IN ('queued', 'running', 'waiting')",
        )?;
        let older: Vec<(i64, Status)> = older
            .query_map(params![r.repo, r.git_ref], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        for (id, st) in older {
            if matches!(st, Status::Queued | Status::Waiting) {
                c.prepare_cached(
                    "UPDATE runs SET status = 'cancelled', reason = ?2, finished_at = ?3 WHERE id = ?1",
                )?
                .execute(params![id, format!("superseded by a newer push ({})", short(&r.commit)), now])?;
                end_waiting_steps(c, id, now)?;
                run_changed(c, rep, id, now)?;
            } else {
                superseded_running.push(id);
            }
        }
    }
    c.prepare_cached(
        "INSERT INTO runs (repo, git_ref, kind, name, commit_sha, delivery, trigger, status, message, author, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8, ?9, ?10)",
    )?
    .execute(params![
        r.repo,
        r.git_ref,
        super::kind_str(r.kind),
        r.name,
        r.commit,
        r.delivery,
        r.trigger,
        r.message,
        r.author,
        now
    ])?;
    let id = c.last_insert_rowid();
    run_changed(c, rep, id, now)?;
    Ok(Created {
        id,
        superseded_running,
    })
}

/// The steps of a run that ended while it waited: the waiting ones are cancelled, the ones
/// that never started skipped.
fn end_waiting_steps(c: &Connection, run: i64, now: i64) -> rusqlite::Result<()> {
    c.prepare_cached(
        "UPDATE steps SET status = CASE status WHEN 'waiting' THEN 'cancelled' ELSE 'skipped' END,
                finished_at = ?2
         WHERE run = ?1 AND status IN ('queued', 'waiting')",
    )?
    .execute(params![run, now])?;
    Ok(())
}

pub(super) fn runs_of_delivery(c: &Connection, delivery: i64) -> anyhow::Result<Vec<i64>> {
    let mut stmt = c.prepare_cached(
        "SELECT id FROM runs WHERE delivery = ?1 AND trigger = 'push' ORDER BY id",
    )?;
    let ids = stmt
        .query_map([delivery], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(7)]
}

const RUN_COLUMNS: &str = "id, repo, git_ref, kind, name, commit_sha, delivery, trigger, status, reason, attempts, app, message, author, created_at, started_at, finished_at";

fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Run> {
    let kind: String = r.get(3)?;
    Ok(Run {
        id: r.get(0)?,
        repo: r.get(1)?,
        git_ref: r.get(2)?,
        kind: if kind == "tag" {
            RefKind::Tag
        } else {
            RefKind::Branch
        },
        name: r.get(4)?,
        commit: r.get(5)?,
        delivery: r.get(6)?,
        trigger: r.get(7)?,
        status: r.get(8)?,
        reason: r.get(9)?,
        attempts: r.get(10)?,
        app: r.get(11)?,
        message: r.get(12)?,
        author: r.get(13)?,
        created_at: rfc3339(r.get(14)?),
        started_at: r.get::<_, Option<i64>>(15)?.map(rfc3339),
        finished_at: r.get::<_, Option<i64>>(16)?.map(rfc3339),
    })
}

fn step_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Step> {
    Ok(Step {
        index: r.get(0)?,
        name: r.get(1)?,
        kind: r.get(2)?,
        status: r.get(3)?,
        exit_code: r.get(4)?,
        reason: r.get(5)?,
        started_at: r.get::<_, Option<i64>>(6)?.map(rfc3339),
        finished_at: r.get::<_, Option<i64>>(7)?.map(rfc3339),
        approved_by: r.get(8)?,
        approved_at: r.get::<_, Option<i64>>(9)?.map(rfc3339),
    })
}

impl Store {
    /// Create a queued run (manual, replay, poll); pushes create theirs in `accept`.
    pub async fn create_run(&self, run: NewRun) -> anyhow::Result<Created> {
        let now = now_millis();
        let rep = self.reporting();
        let out = self
            .write(move |c| create_run(c, &run, rep.as_deref(), now))
            .await;
        self.wake_outbox();
        out
    }

    /// Create the run of a push the poller found, unless hoist has heard of that commit on
    /// that ref by now (its webhook, or a run): checked in the transaction that would create
    /// it, so a webhook accepted while the poller looked still makes only one run.
    pub async fn create_missed_run(&self, run: NewRun) -> anyhow::Result<Option<Created>> {
        let now = now_millis();
        let rep = self.reporting();
        let out = self
            .write(move |c| {
                let seen: bool = c.query_row(
                    "SELECT EXISTS (SELECT 1 FROM deliveries WHERE repo = ?1 AND git_ref = ?2 AND after_sha = ?3)
                         OR EXISTS (SELECT 1 FROM runs WHERE repo = ?1 AND git_ref = ?2 AND commit_sha = ?3)",
                    params![run.repo, run.git_ref, run.commit],
                    |r| r.get(0),
                )?;
                if seen {
                    return Ok(None);
                }
                create_run(c, &run, rep.as_deref(), now).map(Some)
            })
            .await;
        self.wake_outbox();
        out
    }

    /// The run's push named an annotated tag object: record the commit it tags instead.
    pub async fn set_run_commit(&self, run: i64, commit: String) -> anyhow::Result<()> {
        self.write(move |c| {
            c.execute(
                "UPDATE runs SET commit_sha = ?2 WHERE id = ?1",
                params![run, commit],
            )?;
            Ok(())
        })
        .await
    }

    /// Take the oldest queued run, mark it running and count the attempt.
    pub async fn claim_run(&self) -> anyhow::Result<Option<Run>> {
        let now = now_millis();
        self.write(move |c| {
            let id: Option<i64> = c
                .prepare_cached("SELECT id FROM runs WHERE status = 'queued' ORDER BY id LIMIT 1")?
                .query_row([], |r| r.get(0))
                .optional()?;
            let Some(id) = id else { return Ok(None) };
            c.prepare_cached(
                "UPDATE runs SET status = 'running', attempts = attempts + 1, started_at = ?2, reason = NULL WHERE id = ?1",
            )?
            .execute(params![id, now])?;
            Ok(c.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"))?
                .query_row([id], run_from_row)
                .optional()?)
        })
        .await
    }

    /// Record the pipeline a run follows: its app and its steps, all queued.
    pub async fn plan_run(
        &self,
        run: i64,
        app: String,
        steps: Vec<(String, StepKind)>,
    ) -> anyhow::Result<()> {
        self.write(move |c| {
            c.execute("UPDATE runs SET app = ?2 WHERE id = ?1", params![run, app])?;
            c.execute("DELETE FROM steps WHERE run = ?1", [run])?;
            for (i, (name, kind)) in steps.iter().enumerate() {
                c.execute(
                    "INSERT INTO steps (run, idx, name, kind, status) VALUES (?1, ?2, ?3, ?4, 'queued')",
                    params![run, i as i64, name, kind],
                )?;
            }
            Ok(())
        })
        .await
    }

    pub async fn start_step(&self, run: i64, index: i64) -> anyhow::Result<()> {
        let now = now_millis();
        self.write(move |c| {
            c.execute(
                "UPDATE steps SET status = 'running', started_at = ?3 WHERE run = ?1 AND idx = ?2",
                params![run, index, now],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn finish_step(
        &self,
        run: i64,
        index: i64,
        st: Status,
        exit_code: Option<i64>,
        reason: Option<String>,
    ) -> anyhow::Result<()> {
        let now = now_millis();
        let took = self
            .write(move |c| {
                // Only a step's first end is counted: its start (or now) tells how long it took.
                let before: Option<(Status, Option<i64>)> = c
                    .query_row(
                        "SELECT status, started_at FROM steps WHERE run = ?1 AND idx = ?2",
                        params![run, index],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                c.execute(
                    "UPDATE steps SET status = ?3, exit_code = ?4, reason = ?5,
                        started_at = COALESCE(started_at, ?6), finished_at = ?6
                 WHERE run = ?1 AND idx = ?2",
                    params![run, index, st, exit_code, reason, now],
                )?;
                Ok(before
                    .filter(|(old, _)| !old.is_terminal())
                    .map(|(_, started)| now - started.unwrap_or(now)))
            })
            .await?;
        if let Some(millis) = took {
            self.metrics.step_finished(st.as_str(), millis);
        }
        Ok(())
    }

    /// End a run (and any of its steps still queued or running) with `st`.
    pub async fn finish_run(
        &self,
        run: i64,
        st: Status,
        reason: Option<String>,
    ) -> anyhow::Result<()> {
        let now = now_millis();
        let rep = self.reporting();
        let out = self
            .write(move |c| {
                // Only a run's first end is counted, timed from its start (or its creation
                // when it never started).
                let before: Option<(Status, i64)> = c
                    .query_row(
                        "SELECT status, COALESCE(started_at, created_at) FROM runs WHERE id = ?1",
                        [run],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let took = before
                    .filter(|(old, _)| !old.is_terminal())
                    .map(|(_, started)| now - started);
                c.execute(
                    "UPDATE runs SET status = ?2, reason = ?3, finished_at = ?4 WHERE id = ?1",
                    params![run, st, reason, now],
                )?;
                run_changed(c, rep.as_deref(), run, now)?;
                let leftover = if st == Status::Success {
                    Status::Skipped
                } else {
                    st
                };
                c.execute(
                "UPDATE steps SET status = CASE status WHEN 'running' THEN ?2 ELSE 'skipped' END,
                        finished_at = ?3
                 WHERE run = ?1 AND status IN ('queued', 'running', 'waiting')",
                params![run, leftover, now],
            )?;
                Ok(took)
            })
            .await;
        self.wake_outbox();
        if let Ok(Some(millis)) = out {
            self.metrics.run_finished(st.as_str(), millis);
        }
        out.map(|_| ())
    }

    /// How many runs are queued, and when the oldest of them was created (ms since the epoch).
    pub async fn queue_stats(&self) -> anyhow::Result<(i64, Option<i64>)> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*), MIN(created_at) FROM runs WHERE status = 'queued'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
        .await
    }

    /// Cancel a run: a queued one at once, a running one by its worker.
    pub async fn cancel_run(&self, run: i64, reason: String) -> anyhow::Result<Cancel> {
        let now = now_millis();
        let rep = self.reporting();
        let out = self.write(move |c| {
            let row: Option<(Status, i64)> = c
                .query_row(
                    "SELECT status, COALESCE(started_at, created_at) FROM runs WHERE id = ?1",
                    [run],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let st = row.map(|(st, _)| st);
            let took = row.map_or(0, |(_, started)| now - started);
            let cancel = match st {
                None => Cancel::NotFound,
                Some(Status::Queued) => {
                    c.execute(
                        "UPDATE runs SET status = 'cancelled', reason = ?2, finished_at = ?3 WHERE id = ?1",
                        params![run, reason, now],
                    )?;
                    run_changed(c, rep.as_deref(), run, now)?;
                    Cancel::Dequeued
                }
                Some(Status::Waiting) => {
                    c.execute(
                        "UPDATE runs SET status = 'cancelled', reason = ?2, finished_at = ?3 WHERE id = ?1",
                        params![run, reason, now],
                    )?;
                    end_waiting_steps(c, run, now)?;
                    run_changed(c, rep.as_deref(), run, now)?;
                    Cancel::Dequeued
                }
                Some(Status::Running) => Cancel::Running,
                Some(other) => Cancel::Ended(other),
            };
            Ok((cancel, took))
        })
        .await;
        self.wake_outbox();
        // A running run is counted when its worker ends it (`finish_run`).
        out.map(|(cancel, took)| {
            if matches!(cancel, Cancel::Dequeued) {
                self.metrics.run_finished(Status::Cancelled.as_str(), took);
            }
            cancel
        })
    }

    /// A `when.manual` step is ready and waits for approval (the run may still run others).
    pub async fn gate_step(&self, run: i64, index: i64) -> anyhow::Result<()> {
        self.write(move |c| {
            c.execute(
                "UPDATE steps SET status = 'waiting', reason = 'waiting for approval' WHERE run = ?1 AND idx = ?2",
                params![run, index],
            )?;
            Ok(())
        })
        .await
    }

    /// Nothing of the run can go on before an approval: it waits (and its worker ends,
    /// freeing its slot), unless one of its waiting steps was approved meanwhile. One
    /// transaction, so an approval never falls between the look and the park.
    pub async fn park_run(&self, run: i64, reason: String) -> anyhow::Result<Park> {
        self.write(move |c| {
            let approved: Vec<i64> = c
                .prepare_cached(
                    "SELECT idx FROM steps WHERE run = ?1 AND status = 'waiting' AND approved_by IS NOT NULL ORDER BY idx",
                )?
                .query_map([run], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            if !approved.is_empty() {
                return Ok(Park::Approved(approved));
            }
            c.execute(
                "UPDATE runs SET status = 'waiting', reason = ?2 WHERE id = ?1 AND status = 'running'",
                params![run, reason],
            )?;
            Ok(Park::Parked)
        })
        .await
    }

    /// The apps this run's deploy steps rolled out, in order: (app, from, to). A run resumed
    /// after an approval hands them to the release train of an `atomic` pipeline.
    pub async fn rollouts_of_run(
        &self,
        run: i64,
    ) -> anyhow::Result<Vec<(String, Option<i64>, i64)>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT app, from_release, to_release FROM deployments
                 WHERE run = ?1 AND kind = 'rollout' AND status = 'succeeded' ORDER BY id",
            )?;
            let rows = stmt.query_map([run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Let a waiting `when.manual` step go, recording who and when; a run that waits is queued
    /// again (its attempts counted afresh: the approval starts a new part of it).
    pub async fn approve_step(
        &self,
        run: i64,
        step: String,
        by: String,
    ) -> anyhow::Result<Approve> {
        let now = now_millis();
        self.write(move |c| {
            let st: Option<Status> = c
                .query_row("SELECT status FROM runs WHERE id = ?1", [run], |r| r.get(0))
                .optional()?;
            let Some(run_status) = st else {
                return Ok(Approve::NotFound);
            };
            let found: Option<(Status, Option<String>)> = c
                .query_row(
                    "SELECT status, approved_by FROM steps WHERE run = ?1 AND name = ?2",
                    params![run, step],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((step_status, approved_by)) = found else {
                return Ok(Approve::NoStep);
            };
            if let Some(by) = approved_by {
                return Ok(Approve::Already(by));
            }
            if step_status != Status::Waiting || run_status.is_terminal() {
                return Ok(Approve::NotWaiting(if run_status.is_terminal() {
                    run_status
                } else {
                    step_status
                }));
            }
            c.execute(
                "UPDATE steps SET approved_by = ?3, approved_at = ?4 WHERE run = ?1 AND name = ?2",
                params![run, step, by, now],
            )?;
            let requeued = run_status == Status::Waiting;
            if requeued {
                c.execute(
                    "UPDATE runs SET status = 'queued', attempts = 0, reason = NULL WHERE id = ?1",
                    [run],
                )?;
            }
            Ok(Approve::Approved { requeued })
        })
        .await
    }

    /// At start: runs left `running` by a crash are re-queued once if none of their deploy
    /// steps had started, else marked interrupted. A deploy is never re-run blindly.
    pub async fn recover_runs(&self) -> anyhow::Result<Recovered> {
        let now = now_millis();
        let rep = self.reporting();
        let out = self.write(move |c| {
            let mut out = Recovered::default();
            let running: Vec<(i64, i64, bool)> = c
                .prepare(
                    "SELECT r.id, r.attempts,
                            EXISTS (SELECT 1 FROM steps s WHERE s.run = r.id AND s.kind = 'deploy' AND s.status NOT IN ('queued', 'skipped'))
                     FROM runs r WHERE r.status = 'running'",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            for (id, attempts, deployed) in running {
                if !deployed && attempts < MAX_ATTEMPTS {
                    c.execute(
                        "UPDATE runs SET status = 'queued', reason = 'interrupted by an agent restart; re-queued' WHERE id = ?1",
                        [id],
                    )?;
                    c.execute(
                        "UPDATE steps SET status = 'queued', exit_code = NULL, reason = NULL, started_at = NULL, finished_at = NULL WHERE run = ?1",
                        [id],
                    )?;
                    out.requeued.push(id);
                } else {
                    let why = if deployed {
                        "interrupted by an agent restart during a deploy step; not re-run (start a new run or roll back)"
                    } else {
                        "interrupted by an agent restart again; not re-queued a second time"
                    };
                    c.execute(
                        "UPDATE runs SET status = 'interrupted', reason = ?2, finished_at = ?3 WHERE id = ?1",
                        params![id, why, now],
                    )?;
                    c.execute(
                        "UPDATE steps SET status = 'interrupted', finished_at = ?2 WHERE run = ?1 AND status = 'running'",
                        params![id, now],
                    )?;
                    run_changed(c, rep.as_deref(), id, now)?;
                    out.interrupted.push(id);
                }
            }
            Ok(out)
        })
        .await;
        self.wake_outbox();
        out
    }

    /// Append log chunks (run, step, bytes); returns each chunk with its sequence number.
    pub async fn append_logs(
        &self,
        chunks: Vec<(i64, i64, Vec<u8>)>,
    ) -> anyhow::Result<Vec<(i64, LogChunk)>> {
        let now = now_millis();
        self.write(move |c| {
            let mut out = Vec::with_capacity(chunks.len());
            for (run, step, data) in chunks {
                let seq: i64 = c
                    .prepare_cached("SELECT COALESCE(MAX(seq), 0) + 1 FROM logs WHERE run = ?1")?
                    .query_row([run], |r| r.get(0))?;
                c.prepare_cached(
                    "INSERT INTO logs (run, seq, step, data, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![run, seq, step, data, now])?;
                out.push((
                    run,
                    LogChunk {
                        seq,
                        step,
                        data,
                        at: Some(rfc3339(now)),
                    },
                ));
            }
            Ok(out)
        })
        .await
    }

    /// A run's log chunks after `after_seq`, in order, at most `limit` of them: callers page
    /// with the last `seq` they got, so that no one reads a whole log into memory at once.
    pub async fn logs(
        &self,
        run: i64,
        after_seq: i64,
        limit: u32,
    ) -> anyhow::Result<Vec<LogChunk>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, step, data, at FROM logs WHERE run = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![run, after_seq, limit], |r| {
                let at: i64 = r.get(3)?;
                Ok(LogChunk {
                    seq: r.get(0)?,
                    step: r.get(1)?,
                    data: r.get(2)?,
                    at: (at > 0).then(|| rfc3339(at)),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Runs, newest first, optionally of one repo and/or in one status.
    pub async fn runs(
        &self,
        repo: Option<String>,
        st: Option<Status>,
        limit: u32,
        before: Option<i64>,
    ) -> anyhow::Result<Vec<Run>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs
                 WHERE id < ?1 AND (?2 IS NULL OR repo = ?2) AND (?3 IS NULL OR status = ?3)
                 ORDER BY id DESC LIMIT ?4"
            ))?;
            let rows = stmt.query_map(
                params![before.unwrap_or(i64::MAX), repo, st, limit],
                run_from_row,
            )?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// One run and its steps.
    pub async fn run(&self, id: i64) -> anyhow::Result<Option<(Run, Vec<Step>)>> {
        self.read(move |c| {
            let Some(run) = c
                .query_row(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"), [id], run_from_row)
                .optional()?
            else {
                return Ok(None);
            };
            let mut stmt = c.prepare_cached(
                "SELECT idx, name, kind, status, exit_code, reason, started_at, finished_at, approved_by, approved_at FROM steps WHERE run = ?1 ORDER BY idx",
            )?;
            let steps = stmt.query_map([id], step_from_row)?.collect::<Result<_, _>>()?;
            Ok(Some((run, steps)))
        })
        .await
    }

    /// Mark what became of a delivery ("no pipeline", "skipped", "run N").
    pub async fn set_delivery_status(
        &self,
        delivery: i64,
        st: String,
        reason: Option<String>,
    ) -> anyhow::Result<()> {
        self.write(move |c| {
            c.execute(
                "UPDATE deliveries SET status = ?2, reason = ?3 WHERE id = ?1",
                params![delivery, st, reason],
            )?;
            Ok(())
        })
        .await
    }

    /// Has hoist seen this commit on this ref, by webhook, run or an earlier poll?
    pub async fn head_seen(
        &self,
        repo: String,
        git_ref: String,
        commit: String,
    ) -> anyhow::Result<bool> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT EXISTS (SELECT 1 FROM deliveries WHERE repo = ?1 AND git_ref = ?2 AND after_sha = ?3)
                     OR EXISTS (SELECT 1 FROM runs WHERE repo = ?1 AND git_ref = ?2 AND commit_sha = ?3)
                     OR EXISTS (SELECT 1 FROM heads WHERE repo = ?1 AND git_ref = ?2 AND commit_sha = ?3)",
                params![repo, git_ref, commit],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Whether hoist knows this repo yet: a webhook, a run or an earlier poll. The poller's
    /// first look at an unknown repo only records its heads.
    pub async fn repo_known(&self, repo: String) -> anyhow::Result<bool> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT EXISTS (SELECT 1 FROM heads WHERE repo = ?1)
                     OR EXISTS (SELECT 1 FROM deliveries WHERE repo = ?1)
                     OR EXISTS (SELECT 1 FROM runs WHERE repo = ?1)",
                [repo],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Remember the remote's heads as seen.
    pub async fn record_heads(
        &self,
        repo: String,
        heads: Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        let now = now_millis();
        self.write(move |c| {
            for (git_ref, commit) in heads {
                c.prepare_cached(
                    "INSERT INTO heads (repo, git_ref, commit_sha, seen_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (repo, git_ref) DO UPDATE SET commit_sha = excluded.commit_sha, seen_at = excluded.seen_at",
                )?
                .execute(params![repo, git_ref, commit, now])?;
            }
            Ok(())
        })
        .await
    }
}
