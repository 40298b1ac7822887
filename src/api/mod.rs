//! The HTTP surface: forge webhooks, the JSON API, `/healthz` and `/metrics`.
//!
//! Webhook handlers verify, store, answer; no other work happens inside a request.
//! Every error is JSON `{"error": "…"}` with a message a person can act on.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRef, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::forge::{self, Forge, ForgeError, Received};
pub use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::store::{Intake, Store};

mod apps;
mod runs;

/// Deliveries larger than this are refused with 413; GitHub caps its payloads at 25 MB too.
pub const MAX_BODY: usize = 25 * 1024 * 1024;

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The validated configuration, secrets resolved.
    pub config: Arc<Config>,
    /// The database: queue, journal, history.
    pub store: Store,
    /// What `/metrics` exports; the same the store counts into (`Store::metrics`).
    pub metrics: Arc<Metrics>,
    /// The run queue: wake it, cancel runs, follow logs.
    pub queue: Arc<Queue>,
}

impl FromRef<AppState> for Store {
    fn from_ref(s: &AppState) -> Store {
        s.store.clone()
    }
}

/// The one HTTP error type, in dropshot's shape: a status, the message the client reads, and
/// (for failures of ours) the message the log gets, which the client never sees.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// For the client: what went wrong and what to do.
    pub message: String,
    /// For the agent's log: the cause, with its chain. None for the client's own mistakes.
    pub internal: Option<String>,
}

impl ApiError {
    /// The client's mistake (or a state it can act on): the message says what to do.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            internal: None,
        }
    }

    /// A write that failed in the store: nothing was accepted, so the client may retry.
    pub fn not_stored(err: anyhow::Error) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "hoist could not store this request; nothing was accepted, retry shortly (the agent log says why)".into(),
            internal: Some(format!("{err:#}")),
        }
    }

    /// A read or other work of ours that failed: the cause goes to the log.
    pub fn internal(err: anyhow::Error) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "hoist could not answer this request; retry shortly (the agent log says why)"
                .into(),
            internal: Some(format!("{err:#}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(cause) = &self.internal {
            tracing::error!(status = %self.status, error = cause, "request failed");
        }
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/deliveries", get(list_deliveries))
        .route("/deliveries/{id}", get(get_delivery))
        .route("/deliveries/{id}/replay", post(runs::replay_delivery))
        .route("/runs", get(runs::list_runs))
        .route("/runs/{id}", get(runs::get_run))
        .route("/runs/{id}/cancel", post(runs::cancel_run))
        .route("/runs/{id}/steps/{name}/approve", post(runs::approve_step))
        .route("/runs/{id}/logs", get(runs::run_logs))
        .route("/repos/{owner}/{name}/runs", post(runs::start_run))
        .route("/apps", get(apps::list_apps))
        .route("/apps/{app}/releases", get(apps::list_releases))
        .route("/apps/{app}/rollback", post(apps::rollback))
        .route("/apps/{app}/hosts", get(apps::app_hosts))
        .route("/apps/{app}/deployments", get(apps::list_deployments))
        .route("/deployments/{id}", get(apps::get_deployment))
        .route("/deployments/{id}/abort", post(apps::abort_deployment))
        .route("/hosts", get(apps::hosts))
        .route("/outbox", get(list_outbox));
    Router::new()
        .route("/hooks/{forge}", post(receive_hook))
        .nest("/api/v1", api)
        .route("/", get(crate::web::page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route; webhooks go to /hooks/{github,gitea,forgejo,gitlab,bitbucket}, the API is under /api/v1",
    )
}

/// `GET /healthz`: 200 while the agent can do its work; 503 once its store can no longer
/// write (the agent is then exiting, for its supervisor to restart it).
async fn healthz(State(s): State<AppState>) -> Response {
    match s.store.failure() {
        None => Json(json!({ "status": "ok" })).into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "failing", "reason": why })),
        )
            .into_response(),
    }
}

/// `GET /metrics`: the event counters as they stand, with the levels (queue, outbox) read from
/// the store now.
async fn metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
    let m = &s.metrics;
    match s.store.queue_stats().await {
        Ok((depth, oldest)) => {
            m.queue_depth.set(depth);
            let age = oldest.map_or(0, |t| crate::store::now_millis() - t).max(0);
            m.queue_oldest_seconds.set(age as f64 / 1000.0);
        }
        Err(e) => tracing::warn!("metrics: cannot read the queue: {e:#}"),
    }
    // The outbox's rows by state: owed ones that keep growing mean a forge or a chat is down.
    match s.store.outbox_counts().await {
        Ok(counts) => {
            for (state, count) in counts {
                m.outbox_rows
                    .get_or_create(&crate::metrics::StateLabels {
                        state: state.to_string(),
                    })
                    .set(count);
            }
        }
        Err(e) => tracing::warn!("metrics: cannot count the outbox: {e:#}"),
    }
    // Hosts the drift watch found not running what hoist left there (every app's).
    match s.store.drifts(None).await {
        Ok(d) => {
            m.hosts_drifted.set(d.len() as i64);
        }
        Err(e) => tracing::warn!("metrics: cannot count the drifted hosts: {e:#}"),
    }
    let text = m.encode().map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

/// `POST /hooks/{forge}`: verify, store durably, answer. Nothing else.
async fn receive_hook(
    State(s): State<AppState>,
    Path(route): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let began = std::time::Instant::now();
    let result = receive(&s, &route, &headers, body).await;
    if result.is_err() {
        s.metrics.deliveries_rejected.inc();
    }
    s.metrics
        .intake_seconds
        .observe(began.elapsed().as_secs_f64());
    result
}

async fn receive(
    s: &AppState,
    route: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(forge) = Forge::from_name(route) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no webhook route for {route:?}; use /hooks/github, /hooks/gitea, /hooks/forgejo, /hooks/gitlab or /hooks/bitbucket"
            ),
        ));
    };
    // The body is held from its first byte until it is verified and parsed; the budget bounds
    // how many bytes of deliveries are in memory at once, whatever the number of senders.
    let declared = declared_length(headers);
    let kib = declared
        .map_or(MAX_BODY, |n| n as usize)
        .div_ceil(1024)
        .max(1);
    let _budget = INTAKE_BUDGET
        .acquire_many(kib as u32)
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping"))?;
    let body = read_delivery(declared, body).await?;
    let config = s.config.clone();
    let headers_owned = headers.clone();
    let check = move || {
        let secret_for = |repo: &str| {
            config
                .repo(repo)
                .filter(|r| r.forge == forge)
                .map(|r| r.secret.expose().as_bytes().to_vec())
        };
        forge::receive(forge, &headers_owned, &body, secret_for)
    };
    // A large body takes milliseconds to scan, verify and parse: off the runtime's workers,
    // so that health checks, lease renewals and other requests are not held up meanwhile.
    let received = if declared.is_some_and(|n| n <= INLINE_CHECK_BYTES) {
        check()
    } else {
        tokio::task::spawn_blocking(check).await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("checking the delivery failed: {e}"),
            )
        })?
    }
    .map_err(|e| forge_refusal(&s.config, e))?;
    drop(_budget);
    match received {
        Received::Ignored { repo, what } => {
            s.metrics.deliveries_ignored.inc();
            tracing::info!(%forge, repo = repo.as_deref().unwrap_or("-"), what, "delivery ignored");
            Ok((StatusCode::OK, Json(json!({ "ignored": what, "runs": [] }))).into_response())
        }
        Received::Push(events) => accept_pushes(s, forge, events).await,
    }
}

/// How many KiB of delivery bodies may be in memory at once: one of the largest and 8 MiB
/// beside it, so that eight senders of 25 MB each cost about 33 MB, not 200 MB, while real
/// deliveries (kilobytes) keep flowing beside a large one.
const INTAKE_BUDGET_KIB: usize = (MAX_BODY + 8 * 1024 * 1024) / 1024;

/// The intake's byte budget in KiB, one permit per KiB of a delivery's declared length (the
/// largest size when it declares none): the bound on deliveries read and parsed at once.
static INTAKE_BUDGET: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(INTAKE_BUDGET_KIB);

/// Bodies up to this size are checked on the request's own task: a few microseconds, cheaper
/// than a trip to the blocking pool.
const INLINE_CHECK_BYTES: u64 = 256 * 1024;

/// The body length a request declares, if it declares one.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The delivery's body, refused with 413 past `MAX_BODY` (by its declared length when it has
/// one, before reading any of it).
async fn read_delivery(declared: Option<u64>, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the delivery is larger than {} MiB; hoist refuses it and stores nothing",
                MAX_BODY >> 20
            ),
        )
    };
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    // Into one buffer of the declared size: collecting frames and then joining them would
    // hold every large body twice.
    let mut buf = Vec::with_capacity(declared.map_or(64 * 1024, |n| n as usize));
    let mut body = body;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(axum::body::Bytes::from(buf))
}

/// A forge's refusal as the answer the sender reads.
fn forge_refusal(config: &Config, e: ForgeError) -> ApiError {
    match e {
        ForgeError::Unauthorized(m) => ApiError::new(StatusCode::UNAUTHORIZED, m),
        ForgeError::Malformed(m) => ApiError::new(StatusCode::BAD_REQUEST, m),
        ForgeError::UnknownRepo(name) => match config.repo(&name) {
            Some(r) => ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "repository {name} is configured with forge = \"{}\"; point its webhook at /hooks/{} or change forge in hoist.toml",
                    r.forge, r.forge
                ),
            ),
            None => ApiError::new(
                StatusCode::NOT_FOUND,
                ForgeError::UnknownRepo(name).to_string(),
            ),
        },
    }
}

/// Verified pushes: store them with their runs, then answer 202 with what was queued.
async fn accept_pushes(
    s: &AppState,
    forge: Forge,
    events: Vec<forge::PushEvent>,
) -> Result<Response, ApiError> {
    let summary: Vec<(String, String, String)> = events
        .iter()
        .map(|e| (e.repo.clone(), e.git_ref.clone(), e.after.clone()))
        .collect();
    let intakes = events
        .into_iter()
        .map(|event| Intake {
            skip: event
                .message
                .as_deref()
                .filter(|m| crate::pipeline::skip_ci(m))
                .map(|_| "[skip ci] in the head commit message".to_string()),
            cancel_superseded: s
                .config
                .repo(&event.repo)
                .is_some_and(|r| r.cancel_superseded),
            event,
        })
        .collect();
    let accepted = s
        .queue
        .accept(intakes)
        .await
        .map_err(ApiError::not_stored)?;
    for (a, (repo, git_ref, commit)) in accepted.iter().zip(&summary) {
        let counter = if a.duplicate {
            &s.metrics.deliveries_duplicate
        } else {
            &s.metrics.deliveries_accepted
        };
        counter.inc();
        tracing::info!(%forge, delivery = a.id, duplicate = a.duplicate, repo, git_ref, commit, "delivery accepted");
    }
    let ids: Vec<i64> = accepted.iter().map(|a| a.id).collect();
    let runs: Vec<i64> = accepted.iter().flat_map(|a| a.runs.clone()).collect();
    let mut answer = json!({ "delivery": ids.first(), "runs": runs });
    if ids.len() > 1 {
        answer["deliveries"] = json!(ids);
    }
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// Proof that the request carried a configured API token.
pub struct Authorized {
    /// The token's name, for the log.
    pub token: String,
}

impl<S> FromRequestParts<S> for Authorized
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
        if state.config.tokens.is_empty() {
            return Err(unauthorized(
                "no API token is configured; run `hoist token create NAME` and add its sha256 under [[token]] in hoist.toml",
            ));
        }
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                unauthorized("send Authorization: Bearer TOKEN (a token from `hoist token create`)")
            })?;
        let hash: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        // Check every token, constant-time, so timing says nothing about which one was close.
        let mut found = None;
        for t in &state.config.tokens {
            if bool::from(t.sha256.ct_eq(&hash)) {
                found = Some(t.name.clone());
            }
        }
        found
            .map(|token| Authorized { token })
            .ok_or_else(|| unauthorized("the API token is not valid; check HOIST_TOKEN against the [[token]] entries in hoist.toml"))
    }
}

/// `?limit=N&before=ID`, as every list takes.
#[derive(Deserialize)]
pub struct Page {
    pub limit: Option<u32>,
    pub before: Option<i64>,
}

impl Page {
    pub fn limit(&self) -> u32 {
        self.limit.unwrap_or(50).clamp(1, 1000)
    }
}

async fn list_deliveries(
    _: Authorized,
    State(store): State<Store>,
    Query(page): Query<Page>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let list = store
        .deliveries(page.limit(), page.before)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!(list)))
}

/// `?limit&before` like every list, and `state` (pending, delivered, gave_up).
#[derive(Debug, Deserialize)]
pub struct OutboxQuery {
    pub limit: Option<u32>,
    pub before: Option<i64>,
    pub state: Option<String>,
}

/// What the outbox owes and what it sent: statuses and notifications, newest first, each with
/// the receiver's last answer.
async fn list_outbox(
    _: Authorized,
    State(store): State<Store>,
    Query(q): Query<OutboxQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(s.parse::<crate::store::OutboxState>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("state={s:?} is not one of pending, delivered, gave_up"),
            )
        })?),
    };
    let page = Page {
        limit: q.limit,
        before: q.before,
    };
    let list = store
        .outbox(page.limit(), page.before, state)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!(list)))
}

async fn get_delivery(
    _: Authorized,
    State(store): State<Store>,
    Path(id): Path<i64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    match store.delivery(id).await.map_err(ApiError::internal)? {
        Some(d) => Ok(Json(json!(d))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no delivery {id}; GET /api/v1/deliveries lists them"),
        )),
    }
}
