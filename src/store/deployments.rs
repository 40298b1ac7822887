//! Deployments: the journal of moving an app's hosts from release A to release B, the per-app
//! lease that lets only one deployment act at a time, and what each host was last verified
//! to run.
//!
//! Kinds, statuses and host states are enums ([`DeploymentKind`], [`DeploymentStatus`],
//! [`HostState`]) stored as the same text the API shows; the journal's step names are free text.
//!
//! The lease carries a fencing token. Every journal write names the token it holds and fails
//! when the lease has moved on, so a stale holder (a paused or partitioned agent) cannot act.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{Store, now_millis, rfc3339};

super::text_enum! {
    /// Which way a deployment moves an app: both run through the same engine.
    pub enum DeploymentKind ("deployment kind") {
        /// To a new release, from a run's deploy step.
        Rollout = "rollout",
        /// Back to an earlier release, asked for by a person.
        Rollback = "rollback",
        /// Back to the current release on a drifted host, started by the drift watch
        /// (`rollout.repair`).
        Repair = "repair",
    }
}

super::text_enum! {
    /// Where a deployment is.
    pub enum DeploymentStatus ("deployment status") {
        /// Acting, or interrupted and awaiting recovery at the next start.
        Running = "running",
        /// Every host runs B, verified by read-back.
        Succeeded = "succeeded",
        /// Something failed and every touched host was verified back on A.
        RolledBack = "rolled_back",
        /// A person (or the cancelled run) stopped it, and every touched host was verified
        /// back on A; the reason names who.
        Aborted = "aborted",
        /// Something failed and the hosts could not all be verified on one release: a person must look.
        Failed = "failed",
    }
}

super::text_enum! {
    /// Where one host of a deployment is, as its journal row says. Each forward state is
    /// written when the step it names is done (`Switching` before the host is touched).
    pub enum HostState ("host state") {
        /// Not acted on yet.
        Pending = "pending",
        /// B's image is on the host, verified by digest; nothing that serves was touched.
        Pulled = "pulled",
        /// About to stop A and start B: from here on the host may no longer serve A.
        Switching = "switching",
        /// B's container was started.
        Started = "started",
        /// B passed its health check.
        Healthy = "healthy",
        /// B was read back running its digest.
        Verified = "verified",
        /// Being put back on A.
        Reverting = "reverting",
        /// Verified back on A (or, when it ran nothing before, running nothing).
        Reverted = "reverted",
        /// The revert failed; a person must look.
        Failed = "failed",
    }
}

impl HostState {
    /// The host may have stopped serving A: a revert owes it the undos of its switch. A
    /// pending or merely pulled host serves A untouched; a reverted one is back on it.
    pub fn touched(self) -> bool {
        match self {
            Self::Pending | Self::Pulled | Self::Reverted => false,
            Self::Switching
            | Self::Started
            | Self::Healthy
            | Self::Verified
            | Self::Reverting
            | Self::Failed => true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub app: String,
    pub kind: DeploymentKind,
    pub from_release: Option<i64>,
    pub to_release: i64,
    pub run: Option<i64>,
    pub requested_by: String,
    /// Host names in batch order: (host, batch number).
    pub hosts: Vec<(String, i64)>,
}

/// The lease is held by another deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub deployment: i64,
    pub expires_in_ms: i64,
}

/// A deployment's right to act: the app and the fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub app: String,
    pub deployment: i64,
    pub token: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Deployment {
    pub id: i64,
    pub app: String,
    pub kind: DeploymentKind,
    pub from_release: Option<i64>,
    pub to_release: i64,
    pub run: Option<i64>,
    pub requested_by: String,
    pub status: DeploymentStatus,
    pub reason: Option<String>,
    pub failing_host: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeploymentHost {
    pub host: String,
    pub batch: i64,
    pub state: HostState,
    /// What the host ran before this deployment touched it (the undo target).
    pub from_release: Option<i64>,
    pub expected: Option<String>,
    pub read_back: Option<String>,
    pub health: Option<String>,
    pub reason: Option<String>,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeploymentEvent {
    pub seq: i64,
    pub host: Option<String>,
    pub step: String,
    pub detail: Option<String>,
    pub at: String,
}

/// What a host was last verified to run for an app.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AppHost {
    pub host: String,
    pub release: Option<i64>,
    pub digest: Option<String>,
    pub deployment: Option<i64>,
    pub verified_at: String,
}

/// A change to one host's journal row; None fields are left as they are.
#[derive(Debug, Clone, Default)]
pub struct HostUpdate {
    pub state: Option<HostState>,
    pub from_release: Option<Option<i64>>,
    pub expected: Option<String>,
    pub read_back: Option<String>,
    pub health: Option<String>,
    pub reason: Option<String>,
}

fn check_lease(c: &Connection, lease: &Lease) -> anyhow::Result<()> {
    let token: Option<i64> = c
        .prepare_cached("SELECT token FROM leases WHERE app = ?1 AND deployment = ?2")?
        .query_row(params![lease.app, lease.deployment], |r| r.get(0))
        .optional()?;
    if token != Some(lease.token) {
        anyhow::bail!(
            "deployment {} lost its lease on app {} (another deployment or agent took over); it stops acting",
            lease.deployment,
            lease.app
        );
    }
    Ok(())
}

fn event(
    c: &Connection,
    deployment: i64,
    host: Option<&str>,
    step: &str,
    detail: Option<&str>,
    now: i64,
) -> anyhow::Result<()> {
    c.prepare_cached(
        "INSERT INTO deployment_events (deployment, seq, host, step, detail, at)
         VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM deployment_events WHERE deployment = ?1), ?2, ?3, ?4, ?5)",
    )?
    .execute(params![deployment, host, step, detail, now])?;
    Ok(())
}

const DEPLOYMENT_COLUMNS: &str = "id, app, kind, from_release, to_release, run, requested_by, status, reason, failing_host, created_at, finished_at";

fn deployment_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Deployment> {
    Ok(Deployment {
        id: r.get(0)?,
        app: r.get(1)?,
        kind: r.get(2)?,
        from_release: r.get(3)?,
        to_release: r.get(4)?,
        run: r.get(5)?,
        requested_by: r.get(6)?,
        status: r.get(7)?,
        reason: r.get(8)?,
        failing_host: r.get(9)?,
        created_at: rfc3339(r.get(10)?),
        finished_at: r.get::<_, Option<i64>>(11)?.map(rfc3339),
    })
}

impl Store {
    /// Take the app's lease and record a new deployment with its hosts, in one transaction.
    /// `Ok(Err(Held))` when another deployment holds an unexpired lease.
    pub async fn begin_deployment(
        &self,
        d: NewDeployment,
        ttl_ms: i64,
    ) -> anyhow::Result<Result<Lease, Held>> {
        let now = now_millis();
        self.write(move |c| {
            let held: Option<(i64, i64, i64)> = c
                .query_row("SELECT deployment, token, expires_at FROM leases WHERE app = ?1", [&d.app], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            if let Some((deployment, _, expires)) = held
                && expires > now
            {
                return Ok(Err(Held {
                    deployment,
                    expires_in_ms: expires - now,
                }));
            }
            c.execute(
                "INSERT INTO deployments (app, kind, from_release, to_release, run, requested_by, status, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![d.app, d.kind, d.from_release, d.to_release, d.run, d.requested_by, DeploymentStatus::Running, now],
            )?;
            let id = c.last_insert_rowid();
            for (host, batch) in &d.hosts {
                c.execute(
                    "INSERT INTO deployment_hosts (deployment, host, batch, state, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, host, batch, HostState::Pending, now],
                )?;
            }
            let token = held.map_or(1, |(_, t, _)| t + 1);
            c.execute(
                "INSERT INTO leases (app, deployment, token, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (app) DO UPDATE SET deployment = excluded.deployment, token = excluded.token, expires_at = excluded.expires_at",
                params![d.app, id, token, now + ttl_ms],
            )?;
            event(c, id, None, "begin", Some(&format!("{} to release {}", d.kind, d.to_release)), now)?;
            Ok(Ok(Lease {
                app: d.app.clone(),
                deployment: id,
                token,
            }))
        })
        .await
    }

    /// Take over the lease of an interrupted deployment (at start-up recovery), with a new token.
    pub async fn take_over_lease(
        &self,
        app: String,
        deployment: i64,
        ttl_ms: i64,
    ) -> anyhow::Result<Lease> {
        let now = now_millis();
        self.write(move |c| {
            let token: i64 = c
                .query_row("SELECT token FROM leases WHERE app = ?1", [&app], |r| r.get(0))
                .optional()?
                .unwrap_or(0)
                + 1;
            c.execute(
                "INSERT INTO leases (app, deployment, token, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (app) DO UPDATE SET deployment = excluded.deployment, token = excluded.token, expires_at = excluded.expires_at",
                params![app, deployment, token, now + ttl_ms],
            )?;
            event(c, deployment, None, "recover", Some("the agent restarted; resolving the journal"), now)?;
            Ok(Lease { app, deployment, token })
        })
        .await
    }

    /// The deployment holding the app's lease now (unexpired), if any.
    pub async fn lease_holder(&self, app: String) -> anyhow::Result<Option<i64>> {
        let now = now_millis();
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT deployment FROM leases WHERE app = ?1 AND expires_at > ?2",
            )?
            .query_row(params![app, now], |r| r.get(0))
            .optional()?)
        })
        .await
    }

    /// Extend the lease; fails when it was lost.
    pub async fn renew_lease(&self, lease: Lease, ttl_ms: i64) -> anyhow::Result<()> {
        let now = now_millis();
        self.write(move |c| {
            check_lease(c, &lease)?;
            c.execute(
                "UPDATE leases SET expires_at = ?2 WHERE app = ?1",
                params![lease.app, now + ttl_ms],
            )?;
            Ok(())
        })
        .await
    }

    /// Journal a step of one host (fenced by the lease).
    pub async fn host_step(
        &self,
        lease: Lease,
        host: String,
        step: String,
        detail: Option<String>,
        u: HostUpdate,
    ) -> anyhow::Result<()> {
        let now = now_millis();
        self.write(move |c| {
            check_lease(c, &lease)?;
            let d = lease.deployment;
            if let Some(st) = u.state {
                c.execute("UPDATE deployment_hosts SET state = ?3, updated_at = ?4 WHERE deployment = ?1 AND host = ?2", params![d, host, st, now])?;
            }
            if let Some(from) = u.from_release {
                c.execute("UPDATE deployment_hosts SET from_release = ?3 WHERE deployment = ?1 AND host = ?2", params![d, host, from])?;
            }
            for (col, v) in [("expected", &u.expected), ("read_back", &u.read_back), ("health", &u.health), ("reason", &u.reason)] {
                if let Some(v) = v {
                    c.execute(
                        &format!("UPDATE deployment_hosts SET {col} = ?3, updated_at = ?4 WHERE deployment = ?1 AND host = ?2"),
                        params![d, host, v, now],
                    )?;
                }
            }
            event(c, d, Some(&host), &step, detail.as_deref(), now)?;
            Ok(())
        })
        .await
    }

    /// Journal a deployment-wide step (fenced by the lease).
    pub async fn deployment_event(
        &self,
        lease: Lease,
        step: String,
        detail: Option<String>,
    ) -> anyhow::Result<()> {
        let now = now_millis();
        self.write(move |c| {
            check_lease(c, &lease)?;
            event(c, lease.deployment, None, &step, detail.as_deref(), now)
        })
        .await
    }

    /// Record that `host` was verified running `release` (digest read back) for the app.
    pub async fn set_app_host(
        &self,
        lease: Lease,
        host: String,
        release: Option<i64>,
        digest: Option<String>,
    ) -> anyhow::Result<()> {
        let now = now_millis();
        self.write(move |c| {
            check_lease(c, &lease)?;
            c.execute(
                "INSERT INTO app_hosts (app, host, release, digest, deployment, verified_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (app, host) DO UPDATE SET release = excluded.release, digest = excluded.digest,
                     deployment = excluded.deployment, verified_at = excluded.verified_at",
                params![lease.app, host, release, digest, lease.deployment, now],
            )?;
            Ok(())
        })
        .await
    }

    /// End the deployment with its verdict and give the lease back.
    pub async fn finish_deployment(
        &self,
        lease: Lease,
        status: DeploymentStatus,
        reason: Option<String>,
        failing_host: Option<String>,
    ) -> anyhow::Result<()> {
        let now = now_millis();
        let rep = self.reporting();
        let out = self.write(move |c| {
            check_lease(c, &lease)?;
            c.execute(
                "UPDATE deployments SET status = ?2, reason = ?3, failing_host = ?4, finished_at = ?5 WHERE id = ?1",
                params![lease.deployment, status, reason, failing_host, now],
            )?;
            super::outbox::deployment_finished(c, rep.as_deref(), lease.deployment, now)?;
            event(c, lease.deployment, None, "end", Some(&format!("{status}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())), now)?;
            c.execute("DELETE FROM leases WHERE app = ?1 AND token = ?2", params![lease.app, lease.token])?;
            Ok(())
        })
        .await;
        self.wake_outbox();
        out
    }

    pub async fn deployment(
        &self,
        id: i64,
    ) -> anyhow::Result<Option<(Deployment, Vec<DeploymentHost>, Vec<DeploymentEvent>)>> {
        self.read(move |c| {
            let Some(d) = c
                .query_row(&format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = ?1"), [id], deployment_from_row)
                .optional()?
            else {
                return Ok(None);
            };
            let hosts = c
                .prepare_cached(
                    "SELECT host, batch, state, from_release, expected, read_back, health, reason, updated_at
                     FROM deployment_hosts WHERE deployment = ?1 ORDER BY batch, host",
                )?
                .query_map([id], |r| {
                    Ok(DeploymentHost {
                        host: r.get(0)?,
                        batch: r.get(1)?,
                        state: r.get(2)?,
                        from_release: r.get(3)?,
                        expected: r.get(4)?,
                        read_back: r.get(5)?,
                        health: r.get(6)?,
                        reason: r.get(7)?,
                        updated_at: rfc3339(r.get(8)?),
                    })
                })?
                .collect::<Result<_, _>>()?;
            let events = c
                .prepare_cached("SELECT seq, host, step, detail, at FROM deployment_events WHERE deployment = ?1 ORDER BY seq")?
                .query_map([id], |r| {
                    Ok(DeploymentEvent {
                        seq: r.get(0)?,
                        host: r.get(1)?,
                        step: r.get(2)?,
                        detail: r.get(3)?,
                        at: rfc3339(r.get(4)?),
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(Some((d, hosts, events)))
        })
        .await
    }

    /// An app's deployments, newest first.
    pub async fn deployments(&self, app: String, limit: u32) -> anyhow::Result<Vec<Deployment>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE app = ?1 ORDER BY id DESC LIMIT ?2"
            ))?;
            Ok(stmt.query_map(params![app, limit], deployment_from_row)?.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Deployments left running by a crash.
    pub async fn running_deployments(&self) -> anyhow::Result<Vec<Deployment>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE status = ?1 ORDER BY id"
            ))?;
            Ok(stmt
                .query_map([DeploymentStatus::Running], deployment_from_row)?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    /// What each host was last verified to run for the app.
    pub async fn app_hosts(&self, app: String) -> anyhow::Result<Vec<AppHost>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT host, release, digest, deployment, verified_at FROM app_hosts WHERE app = ?1 ORDER BY host",
            )?;
            let rows = stmt.query_map([app], |r| {
                Ok(AppHost {
                    host: r.get(0)?,
                    release: r.get(1)?,
                    digest: r.get(2)?,
                    deployment: r.get(3)?,
                    verified_at: rfc3339(r.get(4)?),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Releases that succeeded deployments moved the app to, newest deployment first
    /// (deduplicated): the candidates for a rollback, and what retention must keep.
    pub async fn good_releases(&self, app: String) -> anyhow::Result<Vec<i64>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT to_release FROM deployments WHERE app = ?1 AND status = ?2 ORDER BY id DESC",
            )?;
            let all: Vec<i64> = stmt.query_map(params![app, DeploymentStatus::Succeeded], |r| r.get(0))?.collect::<Result<_, _>>()?;
            let mut seen = Vec::new();
            for r in all {
                if !seen.contains(&r) {
                    seen.push(r);
                }
            }
            Ok(seen)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::UnknownText;

    #[test]
    fn states_keep_their_text() {
        use crate::store::tests::round_trips;
        round_trips(DeploymentKind::ALL);
        round_trips(DeploymentStatus::ALL);
        round_trips(HostState::ALL);
        assert_eq!(DeploymentStatus::RolledBack.as_str(), "rolled_back");
        assert_eq!(
            "paused".parse::<HostState>(),
            Err(UnknownText {
                what: "host state",
                text: "paused".into()
            })
        );
    }

    #[tokio::test]
    async fn unknown_text_in_the_store_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let new = NewDeployment {
            app: "web".into(),
            kind: DeploymentKind::Rollback,
            from_release: Some(2),
            to_release: 1,
            run: None,
            requested_by: "test".into(),
            hosts: vec![("h1".into(), 1)],
        };
        let lease = store.begin_deployment(new, 30_000).await.unwrap().unwrap();
        let (d, hosts, _) = store.deployment(lease.deployment).await.unwrap().unwrap();
        assert_eq!(
            (d.kind, d.status, hosts[0].state),
            (
                DeploymentKind::Rollback,
                DeploymentStatus::Running,
                HostState::Pending
            )
        );
        store
            .write(|c| {
                c.execute("UPDATE deployment_hosts SET state = 'paused'", [])?;
                Ok(())
            })
            .await
            .unwrap();
        let err = store.deployment(lease.deployment).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("host state \"paused\""),
            "{err:#}"
        );
    }
}
