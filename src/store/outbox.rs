//! The outbox: what hoist owes the outside world (commit statuses, notifications), as rows
//! written in the same transaction as the state change they report.
//!
//! A run queued or ended, a deployment's verdict: the store function that records the change
//! also calls [`run_changed`] or [`deployment_finished`], which read the row just written and
//! insert what [`Reporting`] (built from the config at start) says is owed. So a change is
//! never recorded without its report, nor a report written for a change that was rolled back.
//!
//! One task (`crate::outbox`) claims due rows (each claim counts an attempt and moves the next
//! try a lease ahead, so a crash mid-send means one more try after the restart: at least once),
//! sends them and records the answer: delivered, retried later with backoff, or given up. The
//! rows of one stream (the statuses of one commit under one context) go out in order: a later
//! row waits while an earlier one is still owed, so a forge never sees `success` then `pending`.

use std::collections::BTreeSet;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::{Value, json};

use super::{DeploymentStatus, Status, Store, now_millis, rfc3339};
use crate::config::Event;
use crate::forge::status::{CommitState, CommitStatus};

super::text_enum! {
    /// What an outbox row carries.
    pub enum OutboxKind ("outbox kind") {
        /// A commit status for the repository named by the row's target.
        Status = "status",
        /// A JSON POST to the `[[notify]]` whose number (from 1) is the row's target.
        Notify = "notify",
    }
}

super::text_enum! {
    /// Where an outbox row is.
    pub enum OutboxState ("outbox state") {
        /// Owed: waiting for its next try.
        Pending = "pending",
        /// The receiver answered 2xx.
        Delivered = "delivered",
        /// Not sent and never will be: the receiver refused it for good, or the attempts ran out.
        GaveUp = "gave_up",
    }
}

/// What the outbox owes, from the config: which repositories report statuses, which
/// notifications subscribe to what, where links point, and what must never be shown.
pub struct Reporting {
    /// `public_url`, the start of every link.
    pub public_url: String,
    /// Repositories with a `status_token`.
    pub statuses: BTreeSet<String>,
    /// Per `[[notify]]` in file order, its events.
    pub notify: Vec<Vec<Event>>,
    /// Hides every configured secret in text that goes into a row (a run's reason may quote
    /// a command's output).
    pub mask: Box<dyn Fn(&str) -> String + Send + Sync>,
}

impl OutboxState {
    /// Every state, in the order `/metrics` lists them.
    pub const EVERY: [OutboxState; 3] = [
        OutboxState::Pending,
        OutboxState::Delivered,
        OutboxState::GaveUp,
    ];
}

impl std::fmt::Debug for Reporting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporting")
            .field("public_url", &self.public_url)
            .field("statuses", &self.statuses)
            .field("notify", &self.notify)
            .finish_non_exhaustive()
    }
}

/// An outbox row as the API shows it. The payload holds no token: those are looked up in the
/// config when sending.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OutboxItem {
    /// The row's id, for `?before=`.
    pub id: i64,
    /// A commit status or a notification.
    pub kind: OutboxKind,
    /// The repository (statuses) or `notify #N`.
    pub target: String,
    /// `status.pending`, `status.success` …, or the notification's event.
    pub event: String,
    /// The run it reports on, if a run.
    pub run: Option<i64>,
    /// The deployment it reports on, if a deployment.
    pub deployment: Option<i64>,
    /// Owed, delivered or given up.
    pub state: OutboxState,
    /// Tries so far.
    pub attempts: i64,
    /// When the change it reports was recorded.
    pub created_at: String,
    /// When it is tried next, while pending.
    pub next_try: Option<String>,
    /// When it was last tried (claimed).
    pub last_try: Option<String>,
    /// The receiver's last HTTP status, if it answered at all.
    pub last_code: Option<i64>,
    /// The receiver's last answer (a bounded snippet of its body), or why it could not be reached.
    pub last_answer: Option<String>,
    /// When it was delivered or given up.
    pub finished_at: Option<String>,
    /// What is sent: the neutral status (the forge's request is built from it), or the
    /// notification's JSON body.
    pub payload: Value,
}

/// A claimed row, for the sender.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The row, to record the answer on.
    pub id: i64,
    /// Decides how the request is built.
    pub kind: OutboxKind,
    /// The repository or `notify #N`, looked up in the config for the token or URL.
    pub target: String,
    /// For logs, and to check that the notification still subscribes to it.
    pub event: String,
    /// This try's number, from 1.
    pub attempt: i64,
    /// What to send, as stored.
    pub payload: Value,
}

/// How one try ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// A 2xx: done.
    Delivered {
        /// The receiver's status code.
        code: u16,
        /// A snippet of its answer.
        answer: String,
    },
    /// Try again in `retry_in_ms`.
    Retry {
        /// The receiver's status code, None when it could not be reached.
        code: Option<u16>,
        /// A snippet of its answer, or why it could not be reached.
        answer: String,
        /// The backoff before the next try.
        retry_in_ms: i64,
    },
    /// Never to be sent: refused for good, out of tries, or no longer configured.
    GiveUp {
        /// The receiver's status code, None when it was not reached.
        code: Option<u16>,
        /// A snippet of its answer, or why hoist gave up.
        answer: String,
    },
}

/// How long a claim holds a row: a sender that died mid-send leaves it to the next start
/// (which makes every owed row due at once) or to the end of this lease.
const CLAIM_MS: i64 = 60_000;

/// The longest `last_answer` kept.
pub const MAX_ANSWER: usize = 512;

const COLUMNS: &str = "id, kind, target, event, run, deployment, state, attempts, created_at, next_try, last_try, last_code, last_answer, finished_at, payload";

fn item_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxItem> {
    let state: OutboxState = r.get(6)?;
    let payload: String = r.get(14)?;
    Ok(OutboxItem {
        id: r.get(0)?,
        kind: r.get(1)?,
        target: r.get(2)?,
        event: r.get(3)?,
        run: r.get(4)?,
        deployment: r.get(5)?,
        state,
        attempts: r.get(7)?,
        created_at: rfc3339(r.get(8)?),
        next_try: (state == OutboxState::Pending).then(|| rfc3339(r.get(9).unwrap_or(0))),
        last_try: r.get::<_, Option<i64>>(10)?.map(rfc3339),
        last_code: r.get(11)?,
        last_answer: r.get(12)?,
        finished_at: r.get::<_, Option<i64>>(13)?.map(rfc3339),
        payload: serde_json::from_str(&payload).unwrap_or(Value::String(payload)),
    })
}

#[allow(clippy::too_many_arguments)]
fn insert(
    c: &Connection,
    kind: OutboxKind,
    target: &str,
    stream: Option<&str>,
    event: &str,
    run: Option<i64>,
    deployment: Option<i64>,
    payload: &Value,
    now: i64,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO outbox (kind, target, stream, event, run, deployment, payload, state, attempts, next_try, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', 0, ?8, ?8)",
    )?
    .execute(params![
        kind,
        target,
        stream,
        event,
        run,
        deployment,
        payload.to_string(),
        now
    ])?;
    Ok(())
}

/// The name of the `[[notify]]` at `index` (from 0), as rows and the API name it.
pub fn notify_target(index: usize) -> String {
    format!("notify #{}", index + 1)
}

/// The run `run` was just queued or ended (in this transaction): write what that owes.
/// Running and waiting are no news: the status stays pending.
pub(super) fn run_changed(
    c: &Connection,
    rep: Option<&Reporting>,
    run: i64,
    now: i64,
) -> anyhow::Result<()> {
    let Some(rep) = rep else { return Ok(()) };
    if rep.statuses.is_empty() && rep.notify.is_empty() {
        // Nothing is ever owed: the intake path pays not even a read.
        return Ok(());
    }
    let row = c
        .prepare_cached(
            "SELECT repo, name, commit_sha, status, reason, app FROM runs WHERE id = ?1",
        )?
        .query_row([run], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Status>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })
        .optional()?;
    let Some((repo, branch, commit, status, reason, app)) = row else {
        return Ok(());
    };
    let reason = reason.map(|r| (rep.mask)(&r));
    let link = format!("{}/#/runs/{run}", rep.public_url);
    let short = &commit[..commit.len().min(7)];
    if rep.statuses.contains(&repo) {
        let state = match status {
            Status::Queued => Some(CommitState::Pending),
            Status::Running | Status::Waiting => None,
            Status::Success | Status::Skipped => Some(CommitState::Success),
            Status::Failed | Status::TimedOut => Some(CommitState::Failure),
            Status::Cancelled => Some(CommitState::Cancelled),
            Status::Interrupted => Some(CommitState::Error),
        };
        if let Some(state) = state {
            let description = match (status, &reason) {
                (Status::Queued, _) => format!("run {run} queued"),
                (Status::Success, _) => format!("run {run} succeeded"),
                (st, Some(why)) => format!("run {run} {}: {why}", st.as_str().replace('_', " ")),
                (st, None) => format!("run {run} {}", st.as_str().replace('_', " ")),
            };
            // The app is known once the pipeline was read. Before that (a queued run), the
            // repository's last known app stands in, else its name; a run that ends under
            // another app also ends every context it was reported under, so none stays pending.
            let mut contexts: Vec<String> = Vec::new();
            let known = match &app {
                Some(app) => app.clone(),
                None => last_app(c, &repo)?
                    .unwrap_or_else(|| repo.rsplit('/').next().unwrap_or(&repo).to_string()),
            };
            contexts.push(format!("hoist/{known}"));
            if state != CommitState::Pending {
                let mut earlier = c.prepare_cached(
                    "SELECT DISTINCT json_extract(payload, '$.context') FROM outbox
                     WHERE run = ?1 AND kind = 'status'",
                )?;
                for ctx in earlier.query_map([run], |r| r.get::<_, Option<String>>(0))? {
                    if let Some(ctx) = ctx?
                        && !contexts.contains(&ctx)
                    {
                        contexts.push(ctx);
                    }
                }
            }
            for context in contexts {
                let s = CommitStatus {
                    repo: repo.clone(),
                    commit: commit.clone(),
                    state,
                    context: context.clone(),
                    description: description.clone(),
                    target_url: link.clone(),
                };
                let stream = format!("status {repo} {commit} {context}");
                let event = format!(
                    "status.{}",
                    serde_json::to_value(state)?.as_str().unwrap_or("?")
                );
                insert(
                    c,
                    OutboxKind::Status,
                    &repo,
                    Some(&stream),
                    &event,
                    Some(run),
                    None,
                    &serde_json::to_value(&s)?,
                    now,
                )?;
            }
        }
    }
    let event = match status {
        Status::Success => Event::RunSucceeded,
        Status::Failed | Status::TimedOut | Status::Interrupted => Event::RunFailed,
        _ => return Ok(()),
    };
    let app_name = app.clone().unwrap_or_default();
    let who = if app_name.is_empty() {
        repo.clone()
    } else {
        format!("{repo} ({app_name})")
    };
    let text = match (event, &reason) {
        (Event::RunSucceeded, _) => {
            format!("✅ {who}: run {run} on {branch} @ {short} succeeded. {link}")
        }
        (_, Some(why)) => format!(
            "❌ {who}: run {run} on {branch} @ {short} {}: {why}. {link}",
            status.as_str().replace('_', " ")
        ),
        (_, None) => format!(
            "❌ {who}: run {run} on {branch} @ {short} {}. {link}",
            status.as_str().replace('_', " ")
        ),
    };
    let body = json!({
        "text": text,
        "event": event.as_str(),
        "app": app,
        "repo": repo,
        "run": run,
        "release": Value::Null,
        "commit": commit,
        "hosts": [],
        "reason": reason,
        "link": link,
    });
    notify(c, rep, event, &body, Some(run), None, now)
}

/// The newest app a run of `repo` was planned with.
fn last_app(c: &Connection, repo: &str) -> rusqlite::Result<Option<String>> {
    c.prepare_cached(
        "SELECT app FROM runs WHERE repo = ?1 AND app IS NOT NULL ORDER BY id DESC LIMIT 1",
    )?
    .query_row([repo], |r| r.get(0))
    .optional()
}

/// One row per `[[notify]]` subscribed to `event`.
fn notify(
    c: &Connection,
    rep: &Reporting,
    event: Event,
    body: &Value,
    run: Option<i64>,
    deployment: Option<i64>,
    now: i64,
) -> anyhow::Result<()> {
    for (i, events) in rep.notify.iter().enumerate() {
        if events.contains(&event) {
            insert(
                c,
                OutboxKind::Notify,
                &notify_target(i),
                None,
                event.as_str(),
                run,
                deployment,
                body,
                now,
            )?;
        }
    }
    Ok(())
}

/// Deployment `id` just got its verdict (in this transaction): write the notifications owed.
pub(super) fn deployment_finished(
    c: &Connection,
    rep: Option<&Reporting>,
    id: i64,
    now: i64,
) -> anyhow::Result<()> {
    let Some(rep) = rep else { return Ok(()) };
    if rep.notify.is_empty() {
        return Ok(());
    }
    let row = c
        .prepare_cached(
            "SELECT d.app, d.kind, d.status, d.reason, d.failing_host, d.to_release, d.from_release,
                    r.commit_sha, r.number
             FROM deployments d LEFT JOIN releases r ON r.id = d.to_release
             WHERE d.id = ?1",
        )?
        .query_row([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, DeploymentStatus>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, Option<i64>>(8)?,
            ))
        })
        .optional()?;
    let Some((app, kind, status, reason, failing_host, to, from, commit, number)) = row else {
        return Ok(());
    };
    let event = match status {
        DeploymentStatus::Succeeded => Event::DeploymentSucceeded,
        // An abort reverts every touched host and reads it back, like an automatic rollback;
        // its reason says who aborted.
        DeploymentStatus::RolledBack | DeploymentStatus::Aborted => Event::DeploymentRolledBack,
        DeploymentStatus::Failed => Event::DeploymentFailed,
        DeploymentStatus::Running => return Ok(()),
    };
    let release_of = |release: i64| -> rusqlite::Result<Option<i64>> {
        c.prepare_cached("SELECT number FROM releases WHERE id = ?1")?
            .query_row([release], |r| r.get(0))
            .optional()
    };
    let release = number.unwrap_or(to);
    let from_release = match from {
        Some(f) => release_of(f)?.or(Some(f)),
        None => None,
    };
    let hosts: Vec<String> = c
        .prepare_cached(
            "SELECT host FROM deployment_hosts WHERE deployment = ?1 ORDER BY batch, host",
        )?
        .query_map([id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let reason = reason.map(|r| (rep.mask)(&r));
    let link = format!("{}/#/deployments/{id}", rep.public_url);
    let commit = commit.unwrap_or_default();
    let short = &commit[..commit.len().min(7)];
    let what = format!("{kind} {id} of {app} to release {release} ({short})");
    let why = reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    let text = match event {
        Event::DeploymentSucceeded => {
            format!("✅ {what} succeeded on {}. {link}", hosts.join(", "))
        }
        Event::DeploymentRolledBack => format!(
            "↩️ {what} rolled back{}{why}. {link}",
            failing_host
                .as_deref()
                .map(|h| format!(" (failing host {h})"))
                .unwrap_or_default()
        ),
        _ => format!("🔥 {what} failed; hosts may not all run one release, look now{why}. {link}"),
    };
    let body = json!({
        "text": text,
        "event": event.as_str(),
        "app": app,
        "deployment": id,
        "kind": kind,
        "release": release,
        "from_release": from_release,
        "commit": commit,
        "hosts": hosts,
        "failing_host": failing_host,
        "reason": reason,
        "link": link,
    });
    notify(c, rep, event, &body, None, Some(id), now)
}

/// The drift watch found host `host` of `app` changed (in this transaction): drifting now
/// for `reason`, or (`reason` None) back on what hoist left there after drifting for
/// `before`. One `host.drifted` row per subscribed `[[notify]]`; a cleared drift is sent as
/// the same event with `reason` null and `cleared` true, so that the room that heard of the
/// drift hears of its end.
#[allow(clippy::too_many_arguments)]
pub(super) fn host_drifted(
    c: &Connection,
    rep: Option<&Reporting>,
    app: &str,
    host: &str,
    release: Option<i64>,
    reason: Option<&str>,
    before: Option<&str>,
    now: i64,
) -> anyhow::Result<()> {
    let Some(rep) = rep else { return Ok(()) };
    if !rep.notify.iter().any(|e| e.contains(&Event::HostDrifted)) {
        return Ok(());
    }
    let (digest, commit) = match release {
        Some(n) => c
            .prepare_cached(
                "SELECT manifest_digest, commit_sha FROM releases WHERE app = ?1 AND number = ?2",
            )?
            .query_row(params![app, n], |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, Option<String>>(1)?,
                ))
            })
            .optional()?
            .unwrap_or_default(),
        None => (None, None),
    };
    let reason = reason.map(|r| (rep.mask)(r));
    let link = format!("{}/#/apps/{app}", rep.public_url);
    let on = release.map_or_else(
        || "what hoist left there".to_string(),
        |n| format!("release {n}"),
    );
    let text = match (&reason, before) {
        (Some(why), _) => {
            format!("⚠️ {app} on {host} drifted from {on}: {why}. {link}")
        }
        (None, Some(was)) => {
            format!("✅ {app} on {host} runs {on} again (it had drifted: {was}). {link}")
        }
        (None, None) => format!("✅ {app} on {host} runs {on} again. {link}"),
    };
    let body = json!({
        "text": text,
        "event": Event::HostDrifted.as_str(),
        "app": app,
        "host": host,
        "hosts": [host],
        "release": release,
        "digest": digest,
        "commit": commit,
        "reason": reason,
        "cleared": reason.is_none(),
        "link": link,
    });
    notify(c, rep, Event::HostDrifted, &body, None, None, now)
}

impl Store {
    /// Take up to `limit` due rows (each the oldest owed of its stream), count the attempt and
    /// hold them for a lease.
    pub async fn claim_outbox(&self, limit: u32) -> anyhow::Result<Vec<Claimed>> {
        let now = now_millis();
        self.write(move |c| {
            let rows: Vec<(i64, OutboxKind, String, String, i64, String)> = c
                .prepare_cached(
                    "SELECT id, kind, target, event, attempts, payload FROM outbox o
                     WHERE state = 'pending' AND next_try <= ?1
                       AND (stream IS NULL OR NOT EXISTS (
                            SELECT 1 FROM outbox e WHERE e.stream = o.stream AND e.state = 'pending' AND e.id < o.id))
                     ORDER BY id LIMIT ?2",
                )?
                .query_map(params![now, limit], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                })?
                .collect::<Result<_, _>>()?;
            let mut claim = c.prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, last_try = ?2, next_try = ?3 WHERE id = ?1",
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for (id, kind, target, event, attempts, payload) in rows {
                claim.execute(params![id, now, now + CLAIM_MS])?;
                out.push(Claimed {
                    id,
                    kind,
                    target,
                    event,
                    attempt: attempts + 1,
                    payload: serde_json::from_str(&payload)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Record how the try of row `id` ended.
    pub async fn record_outbox(&self, id: i64, attempt: Attempt) -> anyhow::Result<()> {
        let now = now_millis();
        self.write(move |c| {
            let cut = |s: &str| crate::forge::status::truncate(s, MAX_ANSWER);
            match attempt {
                Attempt::Delivered { code, answer } => c.execute(
                    "UPDATE outbox SET state = 'delivered', last_code = ?2, last_answer = ?3, finished_at = ?4 WHERE id = ?1",
                    params![id, code, cut(&answer), now],
                )?,
                Attempt::Retry { code, answer, retry_in_ms } => c.execute(
                    "UPDATE outbox SET last_code = ?2, last_answer = ?3, next_try = ?4 WHERE id = ?1",
                    params![id, code, cut(&answer), now + retry_in_ms],
                )?,
                Attempt::GiveUp { code, answer } => c.execute(
                    "UPDATE outbox SET state = 'gave_up', last_code = ?2, last_answer = ?3, finished_at = ?4 WHERE id = ?1",
                    params![id, code, cut(&answer), now],
                )?,
            };
            Ok(())
        })
        .await
    }

    /// At start: every owed row is due now (a claim a crash left behind, a backoff that ran
    /// while the agent was down).
    pub async fn recover_outbox(&self) -> anyhow::Result<u64> {
        let now = now_millis();
        let n = self
            .write(move |c| {
                Ok(c.execute(
                    "UPDATE outbox SET next_try = ?1 WHERE state = 'pending' AND next_try > ?1",
                    [now],
                )? as u64)
            })
            .await?;
        self.wake_outbox();
        Ok(n)
    }

    /// When the next owed row is due (milliseconds since the epoch), if any is owed.
    pub async fn next_outbox_due(&self) -> anyhow::Result<Option<i64>> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT MIN(next_try) FROM outbox WHERE state = 'pending'")?
                    .query_row([], |r| r.get(0))?,
            )
        })
        .await
    }

    /// How many rows are in each state.
    pub async fn outbox_counts(&self) -> anyhow::Result<Vec<(OutboxState, i64)>> {
        self.read(|c| {
            let mut counts: Vec<(OutboxState, i64)> =
                OutboxState::EVERY.iter().map(|&s| (s, 0)).collect();
            let mut stmt = c.prepare_cached("SELECT state, COUNT(*) FROM outbox GROUP BY state")?;
            for row in stmt.query_map([], |r| {
                Ok((r.get::<_, OutboxState>(0)?, r.get::<_, i64>(1)?))
            })? {
                let (state, n) = row?;
                if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == state) {
                    slot.1 = n;
                }
            }
            Ok(counts)
        })
        .await
    }

    /// Outbox rows, newest first: at most `limit`, ids below `before`, only `state` if given.
    pub async fn outbox(
        &self,
        limit: u32,
        before: Option<i64>,
        state: Option<OutboxState>,
    ) -> anyhow::Result<Vec<OutboxItem>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM outbox WHERE id < ?1 AND (?2 IS NULL OR state = ?2)
                 ORDER BY id DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(
                params![before.unwrap_or(i64::MAX), state, limit],
                item_from_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

/// Retention of delivered and given-up rows: those of runs that are gone, those older than
/// `cutoff`, and all but the newest `keep`. Owed rows stay whatever their age: they end by
/// delivery or by giving up.
pub(super) fn prune_outbox(c: &Connection, keep: i64, cutoff: i64) -> anyhow::Result<u64> {
    let boundary: i64 = c
        .prepare_cached(
            "SELECT id FROM outbox WHERE state != 'pending' ORDER BY id DESC LIMIT 1 OFFSET ?1",
        )?
        .query_row([keep], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let n = c
        .prepare_cached(
            "DELETE FROM outbox WHERE state != 'pending'
               AND (id <= ?1 OR created_at < ?2
                    OR (run IS NOT NULL AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.id = outbox.run)))",
        )?
        .execute(params![boundary, cutoff])?;
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::RefKind;
    use crate::store::{NewRun, Trigger};

    fn reporting() -> Reporting {
        Reporting {
            public_url: "https://hoist.example.com".into(),
            statuses: BTreeSet::from(["acme/web".to_string()]),
            notify: vec![vec![Event::RunFailed], vec![Event::RunSucceeded]],
            mask: Box::new(|t| t.replace("hunter2", "***")),
        }
    }

    fn new_run(commit: char) -> NewRun {
        NewRun {
            repo: "acme/web".into(),
            git_ref: "refs/heads/main".into(),
            kind: RefKind::Branch,
            name: "main".into(),
            commit: commit.to_string().repeat(40),
            delivery: None,
            trigger: Trigger::Manual,
            message: None,
            author: None,
            cancel_superseded: false,
        }
    }

    #[test]
    fn kinds_and_states_keep_their_text() {
        crate::store::tests::round_trips(OutboxKind::ALL);
        crate::store::tests::round_trips(OutboxState::ALL);
        assert_eq!(OutboxState::GaveUp.as_str(), "gave_up");
    }

    #[tokio::test]
    async fn a_run_owes_pending_then_its_outcome_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.set_reporting(reporting());
        let id = store.create_run(new_run('a')).await.unwrap().id;
        let run = store.claim_run().await.unwrap().unwrap();
        assert_eq!(run.id, id);
        store.plan_run(id, "web".into(), vec![]).await.unwrap();
        store
            .finish_run(
                id,
                Status::Failed,
                Some("step test: password hunter2 refused".into()),
            )
            .await
            .unwrap();
        let rows = store.outbox(50, None, None).await.unwrap();
        let events: Vec<(&str, &str)> = rows
            .iter()
            .rev()
            .map(|r| (r.target.as_str(), r.event.as_str()))
            .collect();
        assert_eq!(
            events,
            [
                ("acme/web", "status.pending"),
                ("acme/web", "status.failure"),
                ("notify #1", "run.failed"),
            ]
        );
        // The queued run's context came from the repository's name, the same as its app here.
        assert_eq!(rows[2].payload["context"], "hoist/web");
        assert_eq!(
            rows[1].payload["description"],
            "run 1 failed: step test: password *** refused"
        );
        assert_eq!(
            rows[0].payload["link"],
            "https://hoist.example.com/#/runs/1"
        );
        assert!(!rows[0].payload.to_string().contains("hunter2"));

        // The failure waits while the pending status of the same commit is owed.
        let first = store.claim_outbox(10).await.unwrap();
        let ids: Vec<i64> = first.iter().map(|c| c.id).collect();
        assert_eq!(ids, [rows[2].id, rows[0].id]);
        store
            .record_outbox(
                rows[2].id,
                Attempt::Retry {
                    code: Some(500),
                    answer: "500: down".into(),
                    retry_in_ms: 0,
                },
            )
            .await
            .unwrap();
        store
            .record_outbox(
                rows[0].id,
                Attempt::Delivered {
                    code: 200,
                    answer: "ok".into(),
                },
            )
            .await
            .unwrap();
        let again = store.claim_outbox(10).await.unwrap();
        assert_eq!(
            again.iter().map(|c| (c.id, c.attempt)).collect::<Vec<_>>(),
            [(rows[2].id, 2)]
        );
        store
            .record_outbox(
                rows[2].id,
                Attempt::Delivered {
                    code: 201,
                    answer: "{}".into(),
                },
            )
            .await
            .unwrap();
        let last = store.claim_outbox(10).await.unwrap();
        assert_eq!(last.iter().map(|c| c.id).collect::<Vec<_>>(), [rows[1].id]);
        // A claim holds the row: not claimed twice, unless a restart makes it due again.
        assert!(store.claim_outbox(10).await.unwrap().is_empty());
        store.recover_outbox().await.unwrap();
        assert_eq!(store.claim_outbox(10).await.unwrap().len(), 1);
        let shown = store
            .outbox(50, None, Some(OutboxState::Delivered))
            .await
            .unwrap();
        assert_eq!(shown.len(), 2);
        assert_eq!(shown[1].last_code, Some(201));
        assert_eq!(shown[1].attempts, 2);
    }

    #[tokio::test]
    async fn a_run_cancelled_while_queued_ends_its_status_and_nothing_is_owed_without_a_policy() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // No policy yet: nothing owed.
        store.create_run(new_run('a')).await.unwrap();
        assert!(store.outbox(50, None, None).await.unwrap().is_empty());
        store.set_reporting(reporting());
        let id = store.create_run(new_run('b')).await.unwrap().id;
        store
            .cancel_run(id, "cancelled by ops".into())
            .await
            .unwrap();
        let rows = store.outbox(50, None, None).await.unwrap();
        assert_eq!(
            rows.iter().map(|r| r.event.as_str()).collect::<Vec<_>>(),
            ["status.cancelled", "status.pending"]
        );
        assert_eq!(rows[0].payload["state"], "cancelled");
    }
}
