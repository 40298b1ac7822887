//! Stopping a deployment in flight: each deployment this agent is carrying holds a
//! cancellation token from the moment it takes its lease until its verdict is recorded.
//! Aborting cancels that token: a health wait in progress returns at once, the forward path
//! stops, and the engine reverts every touched host (verified by read-back, as after any
//! failure); the verdict is `aborted`, naming who asked.
//!
//! The tokens live in one table per process, keyed by the store's path and the deployment's
//! id, because a deployment is started from several places (a run's deploy step, the
//! rollback API, the release train) that share no other state; the key keeps two stores in
//! one process (tests) apart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};

use tokio_util::sync::CancellationToken;

use crate::store::{DeploymentStatus, Store};

/// A carried deployment: the path of its store, and its id.
type Key = (PathBuf, i64);

/// The deployments this process is carrying now. A std Mutex: held only for one map
/// operation, never across an `.await`.
static CARRIED: LazyLock<Mutex<HashMap<Key, Arc<Abort>>>> = LazyLock::new(Default::default);

/// One carried deployment's abort switch.
#[derive(Debug, Default)]
pub struct Abort {
    /// Cancelled by [`abort`]; the engine's waits select on it.
    token: CancellationToken,
    /// Who aborted (an API token's name, or "run N (the run was cancelled)"), for the
    /// verdict. A std Mutex: set or read at once, never held across an `.await`.
    by: Mutex<Option<String>>,
}

impl Abort {
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Who aborted the deployment; None while it was not aborted.
    pub fn by(&self) -> Option<String> {
        if !self.token.is_cancelled() {
            return None;
        }
        self.by.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Abort, naming who asked; the first name given stays.
    pub fn abort(&self, by: &str) {
        let mut who = self.by.lock().unwrap_or_else(|e| e.into_inner());
        if who.is_none() {
            *who = Some(by.to_string());
        }
        drop(who);
        self.token.cancel();
    }
}

/// A deployment's place in the table, taken with its lease; dropping it (when the engine is
/// done with the deployment, whatever the way out) gives the place back.
#[derive(Debug)]
pub struct Carried {
    /// Where the table holds it.
    key: Key,
    /// Its switch, shared with the table (where [`abort`] finds it).
    pub abort: Arc<Abort>,
}

impl Carried {
    pub fn new(store: &Store, deployment: i64) -> Carried {
        let key = (store.path().to_path_buf(), deployment);
        let abort = Arc::new(Abort::default());
        CARRIED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), abort.clone());
        Carried { key, abort }
    }
}

impl Drop for Carried {
    fn drop(&mut self) {
        let mut table = CARRIED.lock().unwrap_or_else(|e| e.into_inner());
        // Only our own entry: a recovery that reopened the same deployment has its own.
        if table
            .get(&self.key)
            .is_some_and(|a| Arc::ptr_eq(a, &self.abort))
        {
            table.remove(&self.key);
        }
    }
}

/// Why a deployment could not be aborted; the API answers 404 or 409 with the message.
#[derive(Debug, thiserror::Error)]
pub enum AbortError {
    #[error("no deployment {0}; `hoist deployments` lists them")]
    NotFound(i64),
    #[error(
        "deployment {id} has already ended ({status}); there is nothing to abort (`hoist rollback` moves the app back)"
    )]
    Finished { id: i64, status: DeploymentStatus },
    #[error(
        "deployment {0} is running but this agent is not carrying it (an interrupted deployment is resolved at the agent's next start); try again in a moment"
    )]
    NotCarried(i64),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// Abort deployment `id` of `store`, naming `by` as who asked. Returns once the engine has
/// been told; it reverts in the background and records the verdict.
pub async fn abort(store: &Store, id: i64, by: &str) -> Result<(), AbortError> {
    let (d, _, _) = store
        .deployment(id)
        .await?
        .ok_or(AbortError::NotFound(id))?;
    if d.status != DeploymentStatus::Running {
        return Err(AbortError::Finished {
            id,
            status: d.status,
        });
    }
    let key = (store.path().to_path_buf(), id);
    let carried = CARRIED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .cloned();
    let Some(carried) = carried else {
        // It may have ended between the two looks.
        return match store.deployment(id).await?.map(|(d, _, _)| d.status) {
            Some(status) if status != DeploymentStatus::Running => {
                Err(AbortError::Finished { id, status })
            }
            _ => Err(AbortError::NotCarried(id)),
        };
    };
    carried.abort(by);
    Ok(())
}
