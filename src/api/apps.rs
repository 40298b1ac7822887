//! Apps and their releases (and, with the deploy engine, their hosts and deployments).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{ApiError, AppState, Authorized, Page};
use crate::deploy::deployment::{AbortError, Deployer, StartError};

pub async fn list_apps(_: Authorized, State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(
        s.store.apps().await.map_err(ApiError::internal)?
    )))
}

pub async fn list_releases(
    _: Authorized,
    State(s): State<AppState>,
    Path(app): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let releases = s
        .store
        .releases(app.clone(), page.limit(), page.before)
        .await
        .map_err(ApiError::internal)?;
    if releases.is_empty() && page.before.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "app {app} has no releases; a run whose pipeline has `app: {app}` and a build step makes one"
            ),
        ));
    }
    Ok(Json(json!(releases)))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    to: Option<i64>,
    /// Every host at once from its kept container: no batches, no bake.
    #[serde(default)]
    now: bool,
    /// Only these hosts (e.g. leaving out one that is down); absent: all of the release's.
    hosts: Option<Vec<String>>,
}

/// `POST /api/v1/apps/{app}/rollback` `{"to": RELEASE, "now": false, "hosts": [...]}` (each
/// optional): a deployment back to an earlier release with the settings it was deployed
/// with; `now` starts every host at once, `hosts` limits it (an unknown name: 400 listing
/// the app's hosts). 202 `{"deployment": ID}` once the
/// lease is held and every host answered; the rest is a job the agent tracks (shutdown waits
/// for it; a restart's recovery resolves it from the journal).
///
/// The request blocks for the plan (store reads and a checkout of the release's hooks from the
/// local mirror) and for `Deployer::start` (one connect and one container read per host,
/// bounded by the engine's connect timeout), so that a busy app (409) or an unreachable host
/// (502) is answered, with nothing changed, rather than discovered later.
pub async fn rollback(
    auth: Authorized,
    State(s): State<AppState>,
    Path(app): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "{e}; send {{\"to\": RELEASE, \"now\": BOOL, \"hosts\": [HOST, …]}} (each optional) or no body"
                ),
            )
        })?
    };
    let deployer = Deployer::new(s.store.clone(), s.config.clone(), s.queue.shutdown.clone());
    let mut plan =
        crate::deploy::rollback_plan(&deployer, &s.queue.mirrors, &app, req.to, &auth.token)
            .await
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, format!("{e:#}")))?;
    plan.now = req.now;
    if let Some(hosts) = &req.hosts {
        plan.only_hosts(hosts)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e:#}")))?;
    }
    let started = deployer.start(plan).await.map_err(|e| match e {
        StartError::Busy { .. } | StartError::Refused(_) => {
            ApiError::new(StatusCode::CONFLICT, e.to_string())
        }
        other => ApiError::new(StatusCode::BAD_GATEWAY, other.to_string()),
    })?;
    let id = started.id();
    s.queue
        .tasks
        .spawn(crate::deploy::run_logged(deployer, started));
    Ok((StatusCode::ACCEPTED, Json(json!({ "deployment": id }))))
}

/// `POST /api/v1/deployments/{id}/abort`: 202 once the deployment was told to stop; it
/// reverts every touched host in the background (follow it with `GET /deployments/{id}`).
/// 404 for an unknown deployment, 409 for one that has already ended.
pub async fn abort_deployment(
    auth: Authorized,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    crate::deploy::deployment::abort(&s.store, id, &auth.token)
        .await
        .map_err(|e| match e {
            AbortError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            AbortError::Finished { .. } | AbortError::NotCarried(_) => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            AbortError::Other(e) => ApiError::internal(e),
        })?;
    tracing::warn!(deployment = id, by = %auth.token, "deployment aborted");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "deployment": id, "aborted_by": auth.token })),
    ))
}

pub async fn get_deployment(
    _: Authorized,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    let (d, hosts, events) = s
        .store
        .deployment(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no deployment {id}")))?;
    let mut v = json!(d);
    v["hosts"] = json!(hosts);
    v["events"] = json!(events);
    Ok(Json(v))
}

/// `GET /api/v1/apps/{app}/hosts`: per host, the release it should run, the digest expected,
/// the digest read back now, the container's state and one health check now.
pub async fn app_hosts(
    _: Authorized,
    State(s): State<AppState>,
    Path(app): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(
        crate::deploy::app_hosts_now(&s.store, &s.config, &app)
            .await
            .map_err(ApiError::internal)?
    )))
}

/// `GET /api/v1/hosts`: every configured host: reachable, engine version, what runs there.
pub async fn hosts(_: Authorized, State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(crate::deploy::describe_hosts(&s.config).await)))
}

pub async fn list_deployments(
    _: Authorized,
    State(s): State<AppState>,
    Path(app): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(
        s.store
            .deployments(app, page.limit())
            .await
            .map_err(ApiError::internal)?
    )))
}
