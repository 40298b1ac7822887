//! Apps and their releases (and, with the deploy engine, their hosts and deployments).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{ApiError, AppState, Authorized, Page};

pub async fn list_apps(_: Authorized, State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.store.apps().await.map_err(ApiError::internal)?)))
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
            format!("app {app} has no releases; a run whose pipeline has `app: {app}` and a build step makes one"),
        ));
    }
    Ok(Json(json!(releases)))
}
