//! The embedded store: one SQLite database in WAL mode under `data_dir`.
//!
//! All writes go through one writer thread. It takes every job waiting in its channel, runs
//! them in one transaction (each inside its own savepoint, so one failing job does not undo
//! the others), commits with `synchronous=FULL` (an fsync of the WAL), and only then answers
//! each job. So a caller that got `Ok` holds a durable write, and a hundred concurrent
//! deliveries cost a few fsyncs, not a hundred. Reads use a separate connection: WAL lets them
//! run beside the writer.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tokio::sync::{Notify, oneshot};

use crate::forge::{Forge, PushEvent, RefKind};

/// Declares an enum stored and shown as text: each variant with the exact string the database
/// column and the API JSON carry. One list serves `as_str`, parsing, serde and rusqlite, so the
/// strings cannot drift apart; text the list does not know is an error, never a default.
macro_rules! text_enum {
    ($(#[$meta:meta])* pub enum $name:ident ($what:literal) {
        $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            #[cfg(test)]
            pub(crate) const ALL: &[$name] = &[$(Self::$variant,)+];

            /// The text stored in the database and shown by the API.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::store::UnknownText;
            fn from_str(text: &str) -> Result<Self, $crate::store::UnknownText> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    _ => Err($crate::store::UnknownText { what: $what, text: text.to_string() }),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl rusqlite::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
            }
        }
    };
}

/// Text in the store that names no known state: a newer hoist wrote it, or the row was edited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the store holds {what} {text:?}, which this hoist does not know; was it written by a newer version?"
)]
pub struct UnknownText {
    /// Which kind of value: "deployment kind", "deployment status", "host state".
    pub what: &'static str,
    /// The text found.
    pub text: String,
}

pub(crate) use text_enum;

mod deployments;
mod drift;
mod outbox;
mod prune;
mod releases;
mod runs;
pub use deployments::*;
pub use drift::{Drift, DriftChange};
pub use outbox::{
    Attempt, Claimed, MAX_ANSWER, OutboxItem, OutboxKind, OutboxState, Reporting, notify_target,
};
pub use prune::Pruned;
pub use releases::*;
pub use runs::*;

/// Most jobs one transaction takes; bounds the latency a big burst adds to its first job.
const MAX_BATCH: usize = 512;

/// Schema migrations, applied in order; `PRAGMA user_version` counts the applied ones.
const MIGRATIONS: &[&str] = &[
    // 1: deliveries, one row per accepted ref update.
    "CREATE TABLE deliveries (
        id            INTEGER PRIMARY KEY,
        forge         TEXT    NOT NULL,
        delivery_id   TEXT    NOT NULL,
        repo          TEXT    NOT NULL,
        git_ref       TEXT    NOT NULL,
        kind          TEXT    NOT NULL,
        name          TEXT    NOT NULL,
        before_sha    TEXT    NOT NULL,
        after_sha     TEXT    NOT NULL,
        created       INTEGER NOT NULL,
        forced        INTEGER NOT NULL,
        message       TEXT,
        author        TEXT,
        pusher        TEXT,
        received_at   INTEGER NOT NULL,
        status        TEXT    NOT NULL DEFAULT 'accepted',
        reason        TEXT
    );
    CREATE UNIQUE INDEX deliveries_by_delivery ON deliveries(forge, delivery_id, git_ref);
    CREATE UNIQUE INDEX deliveries_by_push ON deliveries(repo, git_ref, after_sha);",
    // 2: runs, their steps and logs, and the remote heads the poller has seen.
    "CREATE TABLE runs (
        id            INTEGER PRIMARY KEY,
        repo          TEXT    NOT NULL,
        git_ref       TEXT    NOT NULL,
        kind          TEXT    NOT NULL,
        name          TEXT    NOT NULL,
        commit_sha    TEXT    NOT NULL,
        delivery      INTEGER REFERENCES deliveries(id),
        trigger       TEXT    NOT NULL,
        status        TEXT    NOT NULL,
        reason        TEXT,
        attempts      INTEGER NOT NULL DEFAULT 0,
        app           TEXT,
        message       TEXT,
        author        TEXT,
        created_at    INTEGER NOT NULL,
        started_at    INTEGER,
        finished_at   INTEGER
    );
    CREATE INDEX runs_by_status ON runs(status, id);
    CREATE INDEX runs_by_branch ON runs(repo, git_ref, id);
    CREATE TABLE steps (
        run           INTEGER NOT NULL REFERENCES runs(id),
        idx           INTEGER NOT NULL,
        name          TEXT    NOT NULL,
        kind          TEXT    NOT NULL,
        status        TEXT    NOT NULL,
        exit_code     INTEGER,
        reason        TEXT,
        started_at    INTEGER,
        finished_at   INTEGER,
        PRIMARY KEY (run, idx)
    );
    CREATE TABLE logs (
        run           INTEGER NOT NULL REFERENCES runs(id),
        seq           INTEGER NOT NULL,
        step          INTEGER NOT NULL,
        data          BLOB    NOT NULL,
        PRIMARY KEY (run, seq)
    );
    CREATE TABLE heads (
        repo          TEXT    NOT NULL,
        git_ref       TEXT    NOT NULL,
        commit_sha    TEXT    NOT NULL,
        seen_at       INTEGER NOT NULL,
        PRIMARY KEY (repo, git_ref)
    );",
    // 3: releases: verified images of an app, numbered per app.
    "CREATE TABLE releases (
        id              INTEGER PRIMARY KEY,
        app             TEXT    NOT NULL,
        number          INTEGER NOT NULL,
        repo            TEXT    NOT NULL,
        commit_sha      TEXT    NOT NULL,
        run             INTEGER NOT NULL REFERENCES runs(id),
        step            TEXT    NOT NULL,
        repository      TEXT    NOT NULL,
        manifest_digest TEXT    NOT NULL,
        config_digest   TEXT    NOT NULL,
        tags            TEXT    NOT NULL,
        deploy          TEXT,
        created_at      INTEGER NOT NULL,
        UNIQUE (app, number)
    );",
    // 4: deployments and their journal; per-app leases; what each host runs.
    "CREATE TABLE deployments (
        id            INTEGER PRIMARY KEY,
        app           TEXT    NOT NULL,
        kind          TEXT    NOT NULL,
        from_release  INTEGER,
        to_release    INTEGER NOT NULL,
        run           INTEGER,
        requested_by  TEXT    NOT NULL,
        status        TEXT    NOT NULL,
        reason        TEXT,
        failing_host  TEXT,
        created_at    INTEGER NOT NULL,
        finished_at   INTEGER
    );
    CREATE INDEX deployments_by_app ON deployments(app, id);
    CREATE TABLE deployment_hosts (
        deployment    INTEGER NOT NULL REFERENCES deployments(id),
        host          TEXT    NOT NULL,
        batch         INTEGER NOT NULL,
        state         TEXT    NOT NULL,
        from_release  INTEGER,
        expected      TEXT,
        read_back     TEXT,
        health        TEXT,
        reason        TEXT,
        updated_at    INTEGER NOT NULL,
        PRIMARY KEY (deployment, host)
    );
    CREATE TABLE deployment_events (
        deployment    INTEGER NOT NULL REFERENCES deployments(id),
        seq           INTEGER NOT NULL,
        host          TEXT,
        step          TEXT    NOT NULL,
        detail        TEXT,
        at            INTEGER NOT NULL,
        PRIMARY KEY (deployment, seq)
    );
    CREATE TABLE leases (
        app           TEXT    PRIMARY KEY,
        deployment    INTEGER NOT NULL,
        token         INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL
    );
    CREATE TABLE app_hosts (
        app           TEXT    NOT NULL,
        host          TEXT    NOT NULL,
        release       INTEGER,
        digest        TEXT,
        deployment    INTEGER,
        verified_at   INTEGER NOT NULL,
        PRIMARY KEY (app, host)
    );",
    // 5: indexes the intake path needs: superseding looks up a branch's active runs, and a
    // duplicate delivery looks up its runs. Without them both scan every run ever made.
    "CREATE INDEX runs_active ON runs(repo, git_ref) WHERE status IN ('queued', 'running');
    CREATE INDEX runs_by_delivery ON runs(delivery);",
    // 6: indexes retention needs: a repository's runs and deliveries newest first, and
    // whether a release or a deployment names a run (such a run's row is never pruned).
    "CREATE INDEX runs_by_repo ON runs(repo, id);
    CREATE INDEX deliveries_by_repo ON deliveries(repo, id);
    CREATE INDEX releases_by_run ON releases(run);
    CREATE INDEX deployments_by_run ON deployments(run);",
    // 7: manual gates. Who approved a `when.manual` step and when; a run that waits for
    // approval is active like a queued or running one (superseding finds it by this index).
    "ALTER TABLE steps ADD COLUMN approved_by TEXT;
    ALTER TABLE steps ADD COLUMN approved_at INTEGER;
    DROP INDEX runs_active;
    CREATE INDEX runs_active ON runs(repo, git_ref) WHERE status IN ('queued', 'running', 'waiting');",
    // 8: the outbox: commit statuses and notifications owed, written with the change they
    // report (`outbox.rs`). `stream` orders the rows of one commit status; NULL: no order.
    "CREATE TABLE outbox (
        id            INTEGER PRIMARY KEY,
        kind          TEXT    NOT NULL,
        target        TEXT    NOT NULL,
        stream        TEXT,
        event         TEXT    NOT NULL,
        run           INTEGER,
        deployment    INTEGER,
        payload       TEXT    NOT NULL,
        state         TEXT    NOT NULL,
        attempts      INTEGER NOT NULL,
        next_try      INTEGER NOT NULL,
        created_at    INTEGER NOT NULL,
        last_try      INTEGER,
        last_code     INTEGER,
        last_answer   TEXT,
        finished_at   INTEGER
    );
    CREATE INDEX outbox_owed ON outbox(next_try) WHERE state = 'pending';
    CREATE INDEX outbox_by_stream ON outbox(stream, id) WHERE state = 'pending';
    CREATE INDEX outbox_by_run ON outbox(run);",
    // 9: drift: the hosts the drift watch found not running what hoist left there, and why
    // (`drift.rs`). A row exists only while the host drifts; the API, `/metrics` and a
    // restarted agent read it.
    "CREATE TABLE host_drift (
        app           TEXT    NOT NULL,
        host          TEXT    NOT NULL,
        release       INTEGER,
        reason        TEXT    NOT NULL,
        since         INTEGER NOT NULL,
        PRIMARY KEY (app, host)
    );",
    // 10: when each log chunk was stored, for the page's per-line times (0: stored before).
    "ALTER TABLE logs ADD COLUMN at INTEGER NOT NULL DEFAULT 0;",
];

type JobResult = anyhow::Result<Box<dyn Any + Send>>;
type Work = Box<dyn FnOnce(&Connection) -> JobResult + Send>;

enum Message {
    Job(Work, oneshot::Sender<JobResult>),
    /// Finish what is queued before this, then stop.
    Shutdown,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// Jobs for the writer thread.
    writer: mpsc::Sender<Message>,
    /// The read connection. A std Mutex: it is only held inside `spawn_blocking`, never across an `.await`.
    reader: Arc<Mutex<Connection>>,
    /// The writer thread, joined on shutdown.
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Where the database lives, for messages.
    path: PathBuf,
    /// What the outbox owes for each change, set once at start from the config; unset (tests
    /// of the store alone, `hoist run`), nothing is owed.
    reporting: Arc<OnceLock<Arc<Reporting>>>,
    /// Woken after a write that may have added outbox rows, so the sender need not poll.
    outbox_wake: Arc<Notify>,
    /// Counted where runs, steps and deployments end (`finish_run`, `finish_step`,
    /// `finish_deployment`, `cancel_run`), whoever ends them.
    metrics: Arc<crate::metrics::Metrics>,
    /// Set when the writer thread died (a panic in a job): nothing can be written any more,
    /// so `/healthz` fails and the agent exits for its supervisor to restart it.
    failed: Arc<Failed>,
}

/// Why the writer died, and a wake-up for whoever must act on it.
#[derive(Default)]
struct Failed {
    why: OnceLock<String>,
    wake: Notify,
}

impl Failed {
    /// Record the writer's death by `panic` (the first one counts) and wake the waiters.
    fn set(&self, panic: &(dyn Any + Send)) -> String {
        let why = format!(
            "the store's writer failed ({}); nothing can be written until hoist restarts",
            crate::queue::panic_text(panic)
        );
        if self.why.set(why.clone()).is_ok() {
            tracing::error!("{why}");
        }
        self.wake.notify_waiters();
        why
    }
}

/// A delivery as stored.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Delivery {
    pub id: i64,
    pub forge: Forge,
    pub delivery_id: String,
    pub repo: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub kind: RefKind,
    pub name: String,
    pub before: String,
    pub commit: String,
    pub created: bool,
    pub forced: bool,
    pub message: Option<String>,
    pub author: Option<String>,
    pub pusher: Option<String>,
    /// RFC 3339, UTC.
    pub received_at: String,
    pub status: String,
    pub reason: Option<String>,
}

/// A push event to store, with what the intake decided about it.
#[derive(Debug, Clone)]
pub struct Intake {
    pub event: PushEvent,
    /// Why this push starts no run (`[skip ci]`), or None to queue a run.
    pub skip: Option<String>,
    /// A newer push to a branch cancels its older queued or running runs.
    pub cancel_superseded: bool,
}

/// The outcome of storing one push event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The delivery's row id (the first one's, for a duplicate).
    pub id: i64,
    /// The event was already stored, by delivery id or by (repo, ref, commit).
    pub duplicate: bool,
    /// The runs this delivery queued (for a duplicate, the ones the first queued).
    pub runs: Vec<i64>,
    /// Running runs this push supersedes: their workers must cancel them.
    pub superseded_running: Vec<i64>,
}

impl Store {
    /// Open (creating if needed) `DIR/hoist.db` and apply migrations.
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data_dir {}", dir.display()))?;
        let path = dir.join("hoist.db");
        let writer = connect(&path)?;
        incremental_vacuum(&writer)
            .with_context(|| format!("cannot set up {} to shrink", path.display()))?;
        migrate(&writer).with_context(|| format!("cannot migrate {}", path.display()))?;
        let reader = connect(&path)?;
        let (tx, rx) = mpsc::channel();
        let failed = Arc::new(Failed::default());
        let thread = {
            let failed = failed.clone();
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || {
                    let run = std::panic::AssertUnwindSafe(|| write_loop(writer, rx, &failed));
                    if let Err(panic) = std::panic::catch_unwind(run) {
                        failed.set(&*panic);
                    }
                })
                .context("cannot start the store writer thread")?
        };
        Ok(Store {
            writer: tx,
            reader: Arc::new(Mutex::new(reader)),
            thread: Arc::new(Mutex::new(Some(thread))),
            path,
            reporting: Arc::new(OnceLock::new()),
            outbox_wake: Arc::new(Notify::new()),
            metrics: Arc::new(crate::metrics::Metrics::default()),
            failed,
        })
    }

    /// Why the store can no longer write (its writer died), or None while it can.
    pub fn failure(&self) -> Option<String> {
        self.failed.why.get().cloned()
    }

    /// Returns once the store can no longer write, with why.
    pub async fn failed(&self) -> String {
        loop {
            let woken = self.failed.wake.notified();
            if let Some(why) = self.failure() {
                return why;
            }
            woken.await;
        }
    }

    /// The agent's metrics, fed by this store's writes and read by `/metrics`.
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.metrics.clone()
    }

    /// Say what the outbox owes from now on; the first call wins (the agent calls it once,
    /// before anything is queued).
    pub fn set_reporting(&self, reporting: Reporting) {
        let _ = self.reporting.set(Arc::new(reporting));
    }

    /// The policy writes consult, if one was set.
    pub(crate) fn reporting(&self) -> Option<Arc<Reporting>> {
        self.reporting.get().cloned()
    }

    /// Wake the outbox sender: rows may be due.
    pub fn wake_outbox(&self) {
        self.outbox_wake.notify_one();
    }

    /// What the outbox sender waits on between rounds.
    pub fn outbox_wakeup(&self) -> Arc<Notify> {
        self.outbox_wake.clone()
    }

    /// Run `f` in the writer's next transaction; returns once it is committed and synced.
    pub async fn write<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> anyhow::Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let work: Work = Box::new(move |c| f(c).map(|v| Box::new(v) as Box<dyn Any + Send>));
        let gone = || match self.failure() {
            Some(why) => anyhow!("{why}"),
            None => anyhow!("the store is shutting down"),
        };
        self.writer
            .send(Message::Job(work, tx))
            .map_err(|_| gone())?;
        let out = rx.await.map_err(|_| gone())??;
        out.downcast::<T>()
            .map(|b| *b)
            .map_err(|_| anyhow!("store job returned an unexpected type"))
    }

    /// Run `f` on the read connection, off the async threads.
    pub async fn read<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> anyhow::Result<T> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .map_err(|_| anyhow!("store reader poisoned"))?;
            f(&conn)
        })
        .await?
    }

    /// Finish every write queued so far, then stop the writer. Later writes fail.
    pub fn shutdown(&self) {
        let _ = self.writer.send(Message::Shutdown);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// The database file, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Store push events durably, deduplicating on the delivery id and on (repo, ref, commit),
    /// and queue their runs in the same transaction.
    pub async fn accept(&self, events: Vec<Intake>) -> anyhow::Result<Vec<Accepted>> {
        let now = now_millis();
        let rep = self.reporting();
        let out = self
            .write(move |c| {
                events
                    .iter()
                    .map(|e| accept_one(c, e, rep.as_deref(), now))
                    .collect()
            })
            .await;
        self.wake_outbox();
        out
    }

    /// Deliveries, newest first: at most `limit`, with ids below `before` when given.
    pub async fn deliveries(
        &self,
        limit: u32,
        before: Option<i64>,
    ) -> anyhow::Result<Vec<Delivery>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id < ?1 ORDER BY id DESC LIMIT ?2"
            ))?;
            let rows = stmt.query_map(
                params![before.unwrap_or(i64::MAX), limit],
                delivery_from_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// One delivery by row id.
    pub async fn delivery(&self, id: i64) -> anyhow::Result<Option<Delivery>> {
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?1"),
                [id],
                delivery_from_row,
            )
            .optional()?)
        })
        .await
    }
}

fn accept_one(
    c: &Connection,
    intake: &Intake,
    rep: Option<&Reporting>,
    now: i64,
) -> anyhow::Result<Accepted> {
    let e = &intake.event;
    let existing: Option<i64> = c
        .prepare_cached(
            // MIN, not ORDER BY … LIMIT 1: the OR of two unique indexes would sort in a temp b-tree.
            "SELECT MIN(id) FROM deliveries
             WHERE (forge = ?1 AND delivery_id = ?2 AND git_ref = ?3)
                OR (repo = ?4 AND git_ref = ?3 AND after_sha = ?5)",
        )?
        .query_row(
            params![e.forge.as_str(), e.delivery_id, e.git_ref, e.repo, e.after],
            |r| r.get(0),
        )?;
    if let Some(id) = existing {
        return Ok(Accepted {
            id,
            duplicate: true,
            runs: runs::runs_of_delivery(c, id)?,
            superseded_running: Vec::new(),
        });
    }
    c.prepare_cached(
        "INSERT INTO deliveries (forge, delivery_id, repo, git_ref, kind, name, before_sha, after_sha,
                                 created, forced, message, author, pusher, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
            e.forge.as_str(),
            e.delivery_id,
            e.repo,
            e.git_ref,
            kind_str(e.kind),
            e.name,
            e.before,
            e.after,
            e.created,
            e.forced,
            e.message,
            e.author,
            e.pusher,
            now
        ])?;
    let id = c.last_insert_rowid();
    if let Some(why) = &intake.skip {
        c.prepare_cached("UPDATE deliveries SET status = 'skipped', reason = ?2 WHERE id = ?1")?
            .execute(params![id, why])?;
        return Ok(Accepted {
            id,
            duplicate: false,
            runs: Vec::new(),
            superseded_running: Vec::new(),
        });
    }
    let created = runs::create_run(
        c,
        &NewRun {
            repo: e.repo.clone(),
            git_ref: e.git_ref.clone(),
            kind: e.kind,
            name: e.name.clone(),
            commit: e.after.clone(),
            delivery: Some(id),
            trigger: Trigger::Push,
            message: e.message.clone(),
            author: e.author.clone(),
            cancel_superseded: intake.cancel_superseded,
        },
        rep,
        now,
    )?;
    Ok(Accepted {
        id,
        duplicate: false,
        runs: vec![created.id],
        superseded_running: created.superseded_running,
    })
}

const DELIVERY_COLUMNS: &str = "id, forge, delivery_id, repo, git_ref, kind, name, before_sha, after_sha, created, forced, message, author, pusher, received_at, status, reason";

fn delivery_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Delivery> {
    let forge: String = r.get(1)?;
    let kind: String = r.get(5)?;
    Ok(Delivery {
        id: r.get(0)?,
        forge: Forge::from_name(&forge).ok_or_else(|| bad_value(1, &forge))?,
        delivery_id: r.get(2)?,
        repo: r.get(3)?,
        git_ref: r.get(4)?,
        kind: match kind.as_str() {
            "branch" => RefKind::Branch,
            "tag" => RefKind::Tag,
            _ => return Err(bad_value(5, &kind)),
        },
        name: r.get(6)?,
        before: r.get(7)?,
        commit: r.get(8)?,
        created: r.get(9)?,
        forced: r.get(10)?,
        message: r.get(11)?,
        author: r.get(12)?,
        pusher: r.get(13)?,
        received_at: rfc3339(r.get(14)?),
        status: r.get(15)?,
        reason: r.get(16)?,
    })
}

fn bad_value(column: usize, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        format!("unexpected value {value:?}").into(),
    )
}

pub(crate) fn kind_str(k: RefKind) -> &'static str {
    match k {
        RefKind::Branch => "branch",
        RefKind::Tag => "tag",
    }
}

fn connect(path: &Path) -> anyhow::Result<Connection> {
    let c = Connection::open(path)
        .with_context(|| format!("cannot open the database {}", path.display()))?;
    // WAL: readers never block the writer. FULL: a commit is fsynced before it returns, so an
    // acknowledged delivery survives a crash or power loss. busy_timeout: the reader may meet
    // a checkpoint. journal_size_limit: after a checkpoint the WAL file shrinks back to
    // 16 MiB at most, instead of keeping the size of the biggest transaction ever.
    // cache_size: each connection's page cache is bounded at 1 MiB (SQLite's default is 2 MB,
    // which two connections fill only as the database grows: RSS that creeps up for hours).
    // The pages hot paths touch (queued runs, the tail of recent logs, indexes) fit.
    c.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;
         PRAGMA journal_size_limit = 16777216;
         PRAGMA cache_size = -1024;",
    )
    .with_context(|| format!("cannot configure the database {}", path.display()))?;
    Ok(c)
}

/// Pages that pruning frees go back to the file system (`PRAGMA incremental_vacuum` after each
/// prune) instead of staying in the file for ever. A database made before this setting is
/// rewritten once (`VACUUM`), which costs a moment proportional to its size, at start.
fn incremental_vacuum(c: &Connection) -> anyhow::Result<()> {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if mode != INCREMENTAL {
        c.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")?;
    }
    Ok(())
}

fn migrate(c: &Connection) -> anyhow::Result<()> {
    let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        anyhow::bail!(
            "the database has schema version {version}, newer than this hoist knows ({}); run the newer hoist",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = c.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// The writer thread: batch whatever is waiting into one transaction, commit, then answer.
fn write_loop(conn: Connection, rx: mpsc::Receiver<Message>, failed: &Failed) {
    let mut stopping = false;
    while !stopping {
        let Ok(first) = rx.recv() else { return };
        let mut batch = Vec::new();
        match first {
            Message::Job(w, tx) => batch.push((w, tx)),
            Message::Shutdown => return,
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Message::Job(w, tx)) => batch.push((w, tx)),
                Ok(Message::Shutdown) => {
                    stopping = true;
                    break;
                }
                Err(_) => break,
            }
        }
        run_batch(&conn, batch, failed);
    }
}

fn run_batch(conn: &Connection, batch: Vec<(Work, oneshot::Sender<JobResult>)>, failed: &Failed) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let msg = format!("cannot begin a transaction: {e}");
        for (_, tx) in batch {
            let _ = tx.send(Err(anyhow!(msg.clone())));
        }
        return;
    }
    let mut results: Vec<(JobResult, oneshot::Sender<JobResult>)> = Vec::with_capacity(batch.len());
    let mut batch = batch.into_iter();
    // Fail every job of the batch (answered, this one and those not run yet) with `why`.
    let fail_all = |results: Vec<(JobResult, oneshot::Sender<JobResult>)>,
                    tx: oneshot::Sender<JobResult>,
                    rest: std::vec::IntoIter<(Work, oneshot::Sender<JobResult>)>,
                    why: &str| {
        let done = results.into_iter().map(|(_, tx)| tx);
        for tx in done.chain([tx]).chain(rest.map(|(_, tx)| tx)) {
            let _ = tx.send(Err(anyhow!(why.to_string())));
        }
    };
    while let Some((work, tx)) = batch.next() {
        // A savepoint per job: a failing job is undone alone and the batch goes on.
        let sql = |s: &str| {
            conn.prepare_cached(s)
                .and_then(|mut st| st.execute([]))
                .map(drop)
        };
        if let Err(e) = sql("SAVEPOINT job") {
            results.push((Err(e.into()), tx));
            continue;
        }
        // A panicking job is a bug in hoist: the writer cannot know what it left half done,
        // so it rolls back, fails the batch and stops; the agent then exits.
        let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(conn))) {
            Ok(r) => r,
            Err(panic) => {
                let why = failed.set(&*panic);
                let _ = conn.execute_batch("ROLLBACK");
                fail_all(results, tx, batch, &why);
                std::panic::resume_unwind(panic);
            }
        };
        // SQLite rolled the whole transaction back by itself (disk full, I/O error): every
        // job of the batch lost its work, and the rest must not run outside a transaction,
        // where each statement would commit alone. All of them fail; none is half applied.
        if conn.is_autocommit() {
            let why = match &result {
                Err(e) => format!("the database rolled the transaction back: {e:#}"),
                Ok(_) => "the database rolled the transaction back".to_string(),
            };
            tracing::error!("{why}");
            fail_all(results, tx, batch, &why);
            return;
        }
        let result = match result {
            Err(e) => sql("ROLLBACK TO job")
                .and_then(|()| sql("RELEASE job"))
                .map_err(anyhow::Error::from)
                .and(Err(e)),
            ok => sql("RELEASE job").map_err(anyhow::Error::from).and(ok),
        };
        results.push((result, tx));
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => {
            for (r, tx) in results {
                let _ = tx.send(r);
            }
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            let msg = format!("cannot commit to the database: {e}");
            tracing::error!("{msg}");
            for (_, tx) in results {
                let _ = tx.send(Err(anyhow!(msg.clone())));
            }
        }
    }
}

pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Milliseconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(millis: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(millis.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every variant's text parses back to it, and serde writes the same text.
    pub(crate) fn round_trips<T>(all: &[T])
    where
        T: Copy + PartialEq + std::fmt::Debug + std::fmt::Display + serde::Serialize,
        T: std::str::FromStr<Err = UnknownText>,
    {
        for &v in all {
            assert_eq!(v.to_string().parse::<T>(), Ok(v));
            assert_eq!(serde_json::to_value(v).unwrap(), v.to_string());
        }
    }

    #[test]
    fn run_states_keep_their_text() {
        round_trips(Status::ALL);
        round_trips(Trigger::ALL);
        round_trips(StepKind::ALL);
        assert_eq!(Status::TimedOut.as_str(), "timed_out");
        assert!(Status::Skipped.is_terminal() && !Status::Queued.is_terminal());
    }

    fn event(delivery: &str, after: char) -> Intake {
        Intake {
            skip: None,
            cancel_superseded: true,
            event: raw_event(delivery, after),
        }
    }

    fn raw_event(delivery: &str, after: char) -> PushEvent {
        PushEvent {
            forge: Forge::Github,
            delivery_id: delivery.into(),
            repo: "acme/web".into(),
            git_ref: "refs/heads/main".into(),
            kind: RefKind::Branch,
            name: "main".into(),
            before: "0".repeat(40),
            after: after.to_string().repeat(40),
            created: false,
            deleted: false,
            forced: false,
            message: Some("fix".into()),
            author: Some("a".into()),
            pusher: None,
        }
    }

    #[tokio::test]
    async fn accepts_and_deduplicates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.accept(vec![event("d1", 'a')]).await.unwrap();
        assert_eq!(
            (a[0].id, a[0].duplicate, a[0].runs.clone()),
            (1, false, vec![1])
        );
        // Same delivery id, other commit: the first answer again.
        let b = store.accept(vec![event("d1", 'b')]).await.unwrap();
        assert_eq!(
            (b[0].id, b[0].duplicate, b[0].runs.clone()),
            (1, true, vec![1])
        );
        // Other delivery id, same (repo, ref, commit): also a duplicate.
        let c = store.accept(vec![event("d2", 'a')]).await.unwrap();
        assert_eq!(
            (c[0].id, c[0].duplicate, c[0].runs.clone()),
            (1, true, vec![1])
        );
        // A newer push to the branch supersedes the queued run.
        let d = store.accept(vec![event("d3", 'c')]).await.unwrap();
        assert_eq!(
            (d[0].id, d[0].duplicate, d[0].runs.clone()),
            (2, false, vec![2])
        );
        let (first, _) = store.run(1).await.unwrap().unwrap();
        assert_eq!(first.status, Status::Cancelled);
        assert!(first.reason.unwrap().starts_with("superseded"));
        let list = store.deliveries(50, None).await.unwrap();
        assert_eq!(list.iter().map(|d| d.id).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(list[1].commit, "a".repeat(40));
        assert_eq!(store.deliveries(50, Some(2)).await.unwrap().len(), 1);
        store.shutdown();
        assert!(store.accept(vec![event("d4", 'd')]).await.is_err());
        // Reopening finds everything.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.deliveries(50, None).await.unwrap().len(), 2);
    }

    /// The run the poller would queue for commit `after` (one character repeated) on main.
    fn polled(after: char) -> NewRun {
        NewRun {
            repo: "acme/web".into(),
            git_ref: "refs/heads/main".into(),
            kind: RefKind::Branch,
            name: "main".into(),
            commit: after.to_string().repeat(40),
            delivery: None,
            trigger: Trigger::Poll,
            message: None,
            author: None,
            cancel_superseded: true,
        }
    }

    #[tokio::test]
    async fn the_poller_makes_no_second_run_of_a_push_its_webhook_brought() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let b = store.accept(vec![event("d2", 'b')]).await.unwrap();
        assert_eq!(store.create_missed_run(polled('b')).await.unwrap(), None);
        assert_eq!(
            store.runs(None, None, 50, None).await.unwrap().len(),
            1,
            "{b:?}"
        );
        // A commit nothing was heard of gets its run.
        assert!(
            store
                .create_missed_run(polled('c'))
                .await
                .unwrap()
                .is_some()
        );
    }

    /// One batch of three jobs, the second of which ends the transaction the way SQLite does
    /// by itself on a full disk or an I/O error. Answers in job order.
    fn batch_with_a_rollback(store: &Store) -> Vec<oneshot::Receiver<JobResult>> {
        let insert = |n: i64| -> Work {
            Box::new(move |c: &Connection| {
                c.execute("INSERT INTO heads (repo, git_ref, commit_sha, seen_at) VALUES ('r', ?1, 'c', 0)", [n.to_string()])?;
                Ok(Box::new(()) as Box<dyn Any + Send>)
            })
        };
        let rollback: Work = Box::new(|c: &Connection| {
            c.execute_batch("ROLLBACK")?;
            Err(anyhow!("database or disk is full"))
        });
        // Queued together so that the writer takes them as one batch.
        let (conn, rx) = mpsc::channel();
        let mut answers = Vec::new();
        for w in [insert(1), rollback, insert(3)] {
            let (tx, answer) = oneshot::channel();
            conn.send((w, tx)).unwrap();
            answers.push(answer);
        }
        drop(conn);
        let jobs: Vec<_> = rx.into_iter().collect();
        let writer = connect(store.path()).unwrap();
        run_batch(&writer, jobs, &Failed::default());
        answers
    }

    #[tokio::test]
    async fn a_transaction_the_database_rolled_back_fails_every_job_and_applies_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for answer in batch_with_a_rollback(&store) {
            let err = answer.await.unwrap().expect_err("every job fails");
            assert!(
                format!("{err:#}").contains("rolled the transaction back"),
                "{err:#}"
            );
        }
        let rows: i64 = store
            .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM heads", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(rows, 0, "no job's write may survive");
    }

    #[tokio::test]
    async fn a_panic_in_the_writer_is_reported_and_fails_every_later_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.failure(), None);
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { store.failed().await }
        });
        let err = store
            .write(|_| -> anyhow::Result<()> { panic!("a bug in a store job") })
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("a bug in a store job"),
            "{err:#}"
        );
        let why = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(why.contains("the store's writer failed"), "{why}");
        let later = store.write(|_| Ok(())).await.unwrap_err();
        assert!(
            format!("{later:#}").contains("a bug in a store job"),
            "{later:#}"
        );
    }

    #[tokio::test]
    async fn concurrent_writes_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut e = event(&format!("d{i}"), 'a');
                e.event.after = format!("{i:040x}");
                s.accept(vec![e]).await.unwrap()
            }));
        }
        for t in tasks {
            assert!(!t.await.unwrap()[0].duplicate);
        }
        assert_eq!(store.deliveries(1000, None).await.unwrap().len(), 200);
    }

    #[tokio::test]
    async fn a_failing_job_does_not_undo_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bad = store.write(|c| {
            c.execute("INSERT INTO nowhere VALUES (1)", [])?;
            Ok(())
        });
        let good = store.accept(vec![event("d1", 'a')]);
        let (bad, good) = tokio::join!(bad, good);
        assert!(bad.is_err());
        assert!(good.is_ok());
        assert_eq!(store.deliveries(10, None).await.unwrap().len(), 1);
    }
}
