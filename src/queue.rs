//! The run queue: the one way work comes in ([`Queue::accept`] for pushes, [`Queue::enqueue`]
//! for manual runs, replays and the poller), and the dispatcher that hands queued runs to the
//! work function it is given, at most `[runner] max_parallel` at once.
//!
//! The store is the queue; this module only decides when to look at it. It is woken when a
//! run is created or a run ends, and looks every few seconds anyway, so a missed wake-up costs
//! a little latency, never a run. It also holds what exists only while a run is running: its
//! cancellation token and its live-log channel, and the agent's shared handles a run needs
//! (mirrors, the build engine's connection).

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
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

    /// [`Queue::enqueue`] for a push the poller found: None when its webhook (or a run of the
    /// same commit on the same ref) came first, so a push runs once.
    pub async fn enqueue_missed(&self, run: NewRun) -> anyhow::Result<Option<Created>> {
        let Some(created) = self.store.create_missed_run(run).await? else {
            return Ok(None);
        };
        self.supersede(&created.superseded_running, created.id);
        self.wake.notify_one();
        Ok(Some(created))
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

    /// Record a run whose task panicked as failed, saying so; returns its final status.
    async fn panicked(&self, run: i64, what: String) -> Status {
        let reason = format!(
            "hoist failed inside this run ({what}); this is a bug in hoist, please report it with \
             the agent's log"
        );
        tracing::error!(run, "run panicked: {reason}");
        if let Err(e) = self
            .store
            .finish_run(run, Status::Failed, Some(reason))
            .await
        {
            tracing::error!(run, "cannot record the end of the run: {e:#}");
        }
        Status::Failed
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
                    // A panic inside the run must not skip what follows: its slot would stay
                    // taken and its row `running` until the agent restarts.
                    let status = match AssertUnwindSafe(done).catch_unwind().await {
                        Ok(status) => status,
                        Err(panic) => q.panicked(id, panic_text(&*panic).to_string()).await,
                    };
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

/// What a panic said: its message when it has one.
pub fn panic_text(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::RefKind;
    use crate::store::Trigger;

    fn manual(commit: char) -> NewRun {
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

    /// No input can make a run panic any more (durations are bounded at validation), so the
    /// work function here panics on purpose: the dispatcher must still free the one slot, end
    /// the run `failed` with a reason, and run the next one.
    #[tokio::test]
    async fn a_panicking_run_gives_back_its_slot() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[runner]\nmax_parallel = 1\n",
            dir.path()
        );
        let config = Config::parse("hoist.toml", &text, &crate::config::System).unwrap();
        let shutdown = CancellationToken::new();
        let q = Queue::new(
            store.clone(),
            Arc::new(config),
            shutdown.clone(),
            "t".into(),
        );
        let first = q.enqueue(manual('a')).await.unwrap().id;
        let second = q.enqueue(manual('b')).await.unwrap().id;
        let dispatcher = tokio::spawn(q.clone().dispatch(move |_q, run: Run, _token| async move {
            if run.id == first {
                panic!("boom in run {}", run.id);
            }
            Status::Success
        }));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (a, _) = store.run(first).await.unwrap().unwrap();
            let (b, _) = store.run(second).await.unwrap().unwrap();
            // The second run only starts once the first gave its only slot back.
            if a.status == Status::Failed && b.status != Status::Queued && q.running_count() == 0 {
                let reason = a.reason.unwrap_or_default();
                assert!(reason.contains("boom in run"), "{reason}");
                assert!(reason.contains("bug in hoist"), "{reason}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "first {:?} second {:?} running {}",
                a.status,
                b.status,
                q.running_count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        dispatcher.await.unwrap();
    }
}
