//! The run queue: hands queued runs to workers, at most `[runner] max_parallel` at once.
//!
//! The store is the queue; this module only decides when to look at it. It is woken when a
//! run is created or a worker ends, and looks every few seconds anyway, so a missed wake-up
//! costs a little latency, never a run. It also holds what only exists while a run is
//! running: its cancellation token and the live-log subscribers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::store::{LogChunk, Store};

/// How often the dispatcher looks at the queue without being woken.
const IDLE_LOOK: Duration = Duration::from_secs(2);

/// Something a live-log subscriber receives.
#[derive(Debug, Clone)]
pub enum LogEvent {
    Chunk(LogChunk),
    /// The run ended with this status; no more chunks follow.
    End(String),
}

/// A running run's handle: cancelling it stops the worker at its next step boundary and kills
/// the step's container or process group.
struct Running {
    token: CancellationToken,
    /// Why it was cancelled, recorded as the run's reason.
    reason: Arc<Mutex<Option<String>>>,
}

pub struct Queue {
    /// The queue itself, and where workers record everything.
    pub store: Store,
    /// The agent's configuration.
    pub config: Arc<Config>,
    /// Wakes the dispatcher: a run was queued or a worker finished.
    wake: Notify,
    /// Runs being executed now. A std Mutex: held only for map operations, never across `.await`.
    running: Mutex<HashMap<i64, Running>>,
    /// Live-log channels of running runs.
    logs: Mutex<HashMap<i64, broadcast::Sender<LogEvent>>>,
    /// One lock per repository: git operations on one mirror never overlap.
    repo_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Set when the agent stops.
    pub shutdown: CancellationToken,
    /// Worker tasks, so that shutdown can wait for them to kill their steps.
    pub tasks: TaskTracker,
    /// The build engine's connection, made once: negotiating and pinging per run cost tens of
    /// milliseconds before every first step.
    builder: tokio::sync::Mutex<Option<bollard::Docker>>,
}

impl Queue {
    pub fn new(store: Store, config: Arc<Config>, shutdown: CancellationToken) -> Arc<Queue> {
        Arc::new(Queue {
            store,
            config,
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            logs: Mutex::new(HashMap::new()),
            repo_locks: Mutex::new(HashMap::new()),
            shutdown,
            tasks: TaskTracker::new(),
            builder: tokio::sync::Mutex::new(None),
        })
    }

    /// A run was queued: look at the queue now.
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

    /// A newer run of the same branch was queued: cancel the running runs it supersedes, and
    /// look at the queue.
    pub fn supersede(&self, running: &[i64], by: i64) {
        for old in running {
            self.cancel_running(*old, format!("superseded by run {by}"));
        }
        self.wake();
    }

    /// Why a run was cancelled, if it was.
    pub fn cancel_reason(&self, run: i64) -> Option<String> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running
            .get(&run)
            .and_then(|r| r.reason.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Follow a run's log live. None when the run is not running here (read the store instead).
    pub fn subscribe(&self, run: i64) -> Option<broadcast::Receiver<LogEvent>> {
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&run)
            .map(|s| s.subscribe())
    }

    /// Send an event to a run's live subscribers (none listening is fine).
    pub fn publish(&self, run: i64, event: LogEvent) {
        if let Some(s) = self
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&run)
        {
            let _ = s.send(event);
        }
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

    /// The lock for one repository's mirror.
    pub fn repo_lock(&self, repo: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.repo_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(repo.to_string())
            .or_default()
            .clone()
    }

    fn running_count(&self) -> usize {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Claim queued runs while there is room, each into its own worker task; until shutdown.
    pub async fn dispatch(self: Arc<Self>) {
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
                let (tx, _) = broadcast::channel(1024);
                self.logs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, tx);
                let q = self.clone();
                self.tasks.spawn(async move {
                    let status = crate::worker::execute(q.clone(), run, token).await;
                    q.publish(id, LogEvent::End(status));
                    q.logs.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    q.running
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    q.wake();
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
