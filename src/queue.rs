//! The run queue: the one way work comes in ([`Queue::accept`] for pushes, [`Queue::enqueue`]
//! for manual runs, replays and the poller), and the dispatcher that hands queued runs to the
//! work function it is given, at most `[runner] max_parallel` at once.
//!
//! The store is the queue; this module only decides when to look at it. It is woken when a
//! run is created or a run ends, and looks every few seconds anyway, so a missed wake-up costs
//! a little latency, never a run. It also holds what exists only while a run is running: its
//! cancellation token and its live-log channel, and the agent's shared handles a run needs
//! (mirrors, the build engine's connection).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::checkout::Mirrors;
use crate::config::Config;
use crate::logs::LiveLogs;
use crate::store::{Accepted, Created, Intake, NewRun, Run, Status, Store};

/// How often the dispatcher looks at the queue without being woken.
const IDLE_LOOK: Duration = Duration::from_secs(2);

/// A running run's handle: cancelling it stops the run at its next step boundary and kills
/// the step's container or process group.
struct Running {
    token: CancellationToken,
    /// Why it was cancelled, recorded as the run's reason.
    reason: Arc<Mutex<Option<String>>>,
}

pub struct Queue {
    /// The queue itself, and where runs record everything.
    pub store: Store,
    /// The agent's configuration.
    pub config: Arc<Config>,
    /// Git: every repository's mirror and its lock.
    pub mirrors: Mirrors,
    /// Live-log channels of running runs.
    pub logs: Arc<LiveLogs>,
    /// Wakes the dispatcher: a run was queued or a run ended.
    wake: Notify,
    /// Wakes the janitor: a run ended, so there may be something to prune.
    pub finished: Notify,
    /// Runs being executed now. A std Mutex: held only for map operations, never across `.await`.
    running: Mutex<HashMap<i64, Running>>,
    /// Set when the agent stops.
    pub shutdown: CancellationToken,
    /// Runs and deployment jobs (manual rollbacks), so that shutdown can wait for them.
    pub tasks: TaskTracker,
    /// The build engine's connection, made once: negotiating and pinging per run cost tens of
    /// milliseconds before every first step.
    builder: tokio::sync::Mutex<Option<bollard::Docker>>,
    /// This agent's id (`agent::agent_id`), on every container and network its runs create on
    /// the builder, so that its recovery removes its own leftovers and nothing of another's.
    pub agent_id: String,
}

impl Queue {
    pub fn new(
        store: Store,
        config: Arc<Config>,
        shutdown: CancellationToken,
        agent_id: String,
    ) -> Arc<Queue> {
        Arc::new(Queue {
            agent_id,
            mirrors: Mirrors::new(&config.data_dir),
            store,
            config,
            logs: Arc::default(),
            wake: Notify::new(),
            finished: Notify::new(),
            running: Mutex::new(HashMap::new()),
            shutdown,
            tasks: TaskTracker::new(),
            builder: tokio::sync::Mutex::new(None),
        })
    }

    /// Store a delivery's pushes (each with its run, in one transaction), then cancel the
    /// running runs they supersede and look at the queue.
    pub async fn accept(&self, intakes: Vec<Intake>) -> anyhow::Result<Vec<Accepted>> {
        let accepted = self.store.accept(intakes).await?;
        for a in &accepted {
            if let Some(&run) = a.runs.first() {
                self.supersede(&a.superseded_running, run);
            }
        }
        self.wake.notify_one();
        Ok(accepted)
    }

    /// Queue a run that no delivery brought (manual, replay, poll), cancel the running runs it
    /// supersedes, and look at the queue.
    pub async fn enqueue(&self, run: NewRun) -> anyhow::Result<Created> {
        let created = self.store.create_run(run).await?;
        self.supersede(&created.superseded_running, created.id);
        self.wake.notify_one();
        Ok(created)
    }

    /// Look at the queue now (a waiting run was approved and queued again).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Cancel a running run. Returns false when this agent is not running it.
    pub fn cancel_running(&self, run: i64, reason: String) -> bool {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        match running.get(&run) {
            Some(r) => {
                *r.reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                r.token.cancel();
                true
            }
            None => false,
        }
    }

    fn supersede(&self, running: &[i64], by: i64) {
        for old in running {
            self.cancel_running(*old, format!("superseded by run {by}"));
        }
    }

    /// Why a run was cancelled, if it was.
    pub fn cancel_reason(&self, run: i64) -> Option<String> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running
            .get(&run)
            .and_then(|r| r.reason.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// The build engine, connecting on first use. bollard opens a new connection per request on
    /// the same handle, so an engine restart needs no reconnect here.
    pub async fn builder(&self) -> anyhow::Result<bollard::Docker> {
        let mut slot = self.builder.lock().await;
        if let Some(d) = slot.as_ref() {
            return Ok(d.clone());
        }
        let d = crate::engine::connect(&self.config.builder.docker, None).await?;
        *slot = Some(d.clone());
        Ok(d)
    }

    fn running_count(&self) -> usize {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Claim queued runs while there is room, each into its own task running `work` (which
    /// returns the run's final status); until shutdown.
    pub async fn dispatch<W, F>(self: Arc<Self>, work: W)
    where
        W: Fn(Arc<Queue>, Run, CancellationToken) -> F,
        F: Future<Output = Status> + Send + 'static,
    {
        let max = self.config.runner.max_parallel as usize;
        loop {
            while self.running_count() < max && !self.shutdown.is_cancelled() {
                let run = match self.store.claim_run().await {
                    Ok(Some(run)) => run,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!("cannot claim a run: {e:#}");
                        break;
                    }
                };
                let token = self.shutdown.child_token();
                let id = run.id;
                self.running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        id,
                        Running {
                            token: token.clone(),
                            reason: Arc::default(),
                        },
                    );
                self.logs.open(id);
                let done = work(self.clone(), run, token);
                let q = self.clone();
                self.tasks.spawn(async move {
                    let status = done.await;
                    q.logs.close(id, status);
                    q.running
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    q.wake.notify_one();
                    q.finished.notify_one();
                });
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(IDLE_LOOK) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }
}
