//! Releases: verified images of an app, numbered 1, 2, 3 … per app, each carrying its chain of
//! custody (commit → config digest → manifest digest) and the deploy spec of the pipeline that
//! built it, so that a rollback restores the old container settings too.

use rusqlite::types::Type;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, now_millis, rfc3339};
use crate::pipeline::DeploySpec;

/// A release to record; the number is assigned by the store.
#[derive(Debug, Clone)]
pub struct NewRelease {
    pub app: String,
    pub repo: String,
    pub commit: String,
    pub run: i64,
    /// The build step that made the image.
    pub step: String,
    /// Registry repository, without tag: `10.203.0.1:5000/acme/web`.
    pub repository: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub tags: Vec<String>,
    /// The deploy step's spec, when the pipeline deploys this image; stored as its JSON.
    pub deploy: Option<DeploySpec>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Release {
    pub app: String,
    pub number: i64,
    pub repo: String,
    pub commit: String,
    pub run: i64,
    pub step: String,
    pub repository: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub tags: Vec<String>,
    /// The deploy spec the release was built to be deployed with: a rollback to it restores
    /// these container settings and health checks. None when its pipeline had no deploy step.
    pub deploy: Option<DeploySpec>,
    pub created_at: String,
}

impl Release {
    /// How hosts pull it: by digest, never by tag.
    pub fn image(&self) -> String {
        format!("{}@{}", self.repository, self.manifest_digest)
    }
}

/// An app and its newest release.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct App {
    pub app: String,
    pub releases: i64,
    pub latest: i64,
}

const RELEASE_COLUMNS: &str = "app, number, repo, commit_sha, run, step, repository, manifest_digest, config_digest, tags, deploy, created_at";

fn release_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Release> {
    let tags: String = r.get(9)?;
    let (app, number): (String, i64) = (r.get(0)?, r.get(1)?);
    let deploy = r
        .get::<_, Option<String>>(10)?
        .map(|text| {
            serde_json::from_str(&text).map_err(|e| {
                let why = format!(
                    "release {number} of {app}: its recorded deploy spec cannot be read: {e}"
                );
                rusqlite::Error::FromSqlConversionFailure(10, Type::Text, why.into())
            })
        })
        .transpose()?;
    Ok(Release {
        app,
        number,
        repo: r.get(2)?,
        commit: r.get(3)?,
        run: r.get(4)?,
        step: r.get(5)?,
        repository: r.get(6)?,
        manifest_digest: r.get(7)?,
        config_digest: r.get(8)?,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        deploy,
        created_at: rfc3339(r.get(11)?),
    })
}

impl Store {
    /// Record a verified image as the app's next release; returns it with its number.
    pub async fn create_release(&self, r: NewRelease) -> anyhow::Result<Release> {
        let now = now_millis();
        self.write(move |c| {
            let number: i64 = c.query_row(
                "SELECT COALESCE(MAX(number), 0) + 1 FROM releases WHERE app = ?1",
                [&r.app],
                |row| row.get(0),
            )?;
            c.execute(
                "INSERT INTO releases (app, number, repo, commit_sha, run, step, repository, manifest_digest,
                                       config_digest, tags, deploy, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    r.app,
                    number,
                    r.repo,
                    r.commit,
                    r.run,
                    r.step,
                    r.repository,
                    r.manifest_digest,
                    r.config_digest,
                    serde_json::to_string(&r.tags)?,
                    r.deploy.as_ref().map(serde_json::to_string).transpose()?,
                    now
                ],
            )?;
            Ok(c.query_row(
                &format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE app = ?1 AND number = ?2"),
                params![r.app, number],
                release_from_row,
            )?)
        })
        .await
    }

    /// An app's releases, newest first.
    pub async fn releases(
        &self,
        app: String,
        limit: u32,
        before: Option<i64>,
    ) -> anyhow::Result<Vec<Release>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {RELEASE_COLUMNS} FROM releases WHERE app = ?1 AND number < ?2 ORDER BY number DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![app, before.unwrap_or(i64::MAX), limit], release_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// The releases a run's build steps made, oldest first (a run resumed after an approval
    /// finds what it built before it waited).
    pub async fn releases_of_run(&self, run: i64) -> anyhow::Result<Vec<Release>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {RELEASE_COLUMNS} FROM releases WHERE run = ?1 ORDER BY created_at"
            ))?;
            let rows = stmt.query_map([run], release_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    pub async fn release(&self, app: String, number: i64) -> anyhow::Result<Option<Release>> {
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE app = ?1 AND number = ?2"),
                params![app, number],
                release_from_row,
            )
            .optional()?)
        })
        .await
    }

    /// Every app with releases, by name.
    pub async fn apps(&self) -> anyhow::Result<Vec<App>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT app, COUNT(*), MAX(number) FROM releases GROUP BY app ORDER BY app",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(App {
                    app: r.get(0)?,
                    releases: r.get(1)?,
                    latest: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A release row as `SELECT {RELEASE_COLUMNS}` gives it, with `deploy` as stored.
    fn row(deploy: Option<&str>) -> rusqlite::Result<Release> {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.query_row(
            "SELECT 'web', 3, 'acme/web', 'abc', 1, 'image', 'r/web', 'sha256:b', 'sha256:c', '[]', ?1, 0",
            [deploy],
            release_from_row,
        )
    }

    #[test]
    fn a_deploy_spec_reads_back_as_the_json_it_was_stored_as() {
        let stored = r#"{"container":{"args":[],"env":{"A":"${host}"},"name":"web","ports":["8080:8080"],"volumes":[]},"health":{"check":{"http":{"path":"/","port":8080}},"deadline":"1m","healthy_for":"5s","interval":"1s","timeout":"2s"},"hooks":{"after_deploy":null,"after_host":["undrain"],"before_host":null},"hosts":["h1","h2"],"image":"image","rollout":{"auto_rollback":true,"bake":"0s","keep":5,"max_parallel":1}}"#;
        let release = row(Some(stored)).unwrap();
        assert_eq!(release.deploy.as_ref().unwrap().hosts, ["h1", "h2"]);
        // A spec stored before keys were added reads back with their defaults; every key it
        // had is served as it was stored.
        let served = serde_json::to_value(&release).unwrap()["deploy"].clone();
        fn subset(a: &serde_json::Value, b: &serde_json::Value) -> bool {
            match (a, b) {
                (serde_json::Value::Object(a), serde_json::Value::Object(b)) => a
                    .iter()
                    .all(|(k, v)| b.get(k).is_some_and(|w| subset(v, w))),
                _ => a == b,
            }
        }
        let stored_value = serde_json::from_str::<serde_json::Value>(stored).unwrap();
        assert!(subset(&stored_value, &served), "{served}");
        assert_eq!(served["container"]["secrets"], serde_json::json!([]));
        assert_eq!(served["health"]["fail_after"], 0);
        assert_eq!(served["rollout"]["repair"], false);
        // And what is served now reads back as itself.
        let again: crate::pipeline::DeploySpec = serde_json::from_value(served.clone()).unwrap();
        assert_eq!(serde_json::to_value(&again).unwrap(), served);
        assert_eq!(row(None).map(|r| r.deploy), Ok(None));
    }

    #[test]
    fn an_unreadable_deploy_spec_names_its_release() {
        let err = row(Some("{\"image\": 1}")).unwrap_err();
        assert!(
            err.to_string()
                .contains("release 3 of web: its recorded deploy spec cannot be read"),
            "{err}"
        );
    }
}
