//! The runs API: list, show, cancel, start by hand, replay a delivery, and logs (JSON, or
//! Server-Sent Events that follow a running run until it ends).

use std::convert::Infallible;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::{ApiError, AppState, Authorized, Page};
use crate::checkout::is_commit_id;
use crate::config::RepoConfig;
use crate::forge::RefKind;
use crate::logs::LogEvent;
use crate::store::{Approve, Cancel, LogChunk, NewRun, Status, Trigger};

#[derive(Deserialize)]
pub struct RunFilter {
    repo: Option<String>,
    status: Option<Status>,
    limit: Option<u32>,
    before: Option<i64>,
}

pub async fn list_runs(
    _: Authorized,
    State(s): State<AppState>,
    query: Result<Query<RunFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(f) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{e}; status is one of queued, running, waiting, success, failed, cancelled, timed_out, interrupted, skipped"),
        )
    })?;
    let page = Page {
        limit: f.limit,
        before: f.before,
    };
    let runs = s
        .store
        .runs(f.repo, f.status, page.limit(), page.before)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!(runs)))
}

fn no_run(id: i64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no run {id}; GET /api/v1/runs lists them"),
    )
}

pub async fn get_run(
    _: Authorized,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    let (run, steps) = s
        .store
        .run(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| no_run(id))?;
    let mut v = json!(run);
    v["steps"] = json!(steps);
    Ok(Json(v))
}

pub async fn cancel_run(
    auth: Authorized,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    let reason = format!("cancelled by {}", auth.token);
    match s
        .store
        .cancel_run(id, reason.clone())
        .await
        .map_err(ApiError::not_stored)?
    {
        Cancel::NotFound => Err(no_run(id)),
        Cancel::Dequeued => Ok(Json(json!({ "run": id, "status": Status::Cancelled }))),
        Cancel::Running => {
            if s.queue.cancel_running(id, reason.clone()) {
                return Ok(Json(json!({ "run": id, "status": "cancelling" })));
            }
            // Its worker ended meanwhile: it began to wait for an approval, or finished.
            match s
                .store
                .cancel_run(id, reason)
                .await
                .map_err(ApiError::not_stored)?
            {
                Cancel::Dequeued => Ok(Json(json!({ "run": id, "status": Status::Cancelled }))),
                Cancel::Ended(st) => Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("run {id} already ended ({st}); nothing to cancel"),
                )),
                // Running on no worker of this agent: one that starts again sees the status.
                _ => Ok(Json(json!({ "run": id, "status": "cancelling" }))),
            }
        }
        Cancel::Ended(st) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("run {id} already ended ({st}); nothing to cancel"),
        )),
    }
}

/// `POST /api/v1/runs/{id}/steps/{name}/approve`: let a waiting `when.manual` step go; the
/// token's name is recorded as who approved it. A run that waits is queued again.
pub async fn approve_step(
    auth: Authorized,
    State(s): State<AppState>,
    Path((id, name)): Path<(i64, String)>,
) -> Result<Json<Value>, ApiError> {
    let answer = s
        .store
        .approve_step(id, name.clone(), auth.token.clone())
        .await
        .map_err(ApiError::not_stored)?;
    match answer {
        Approve::NotFound => Err(no_run(id)),
        Approve::NoStep => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("run {id} has no step {name:?}; GET /api/v1/runs/{id} lists its steps"),
        )),
        Approve::Already(by) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("step {name} of run {id} was approved already, by {by}"),
        )),
        Approve::NotWaiting(st) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "step {name} of run {id} does not wait for approval ({st}); only a `when.manual` \
                 step whose needs succeeded can be approved"
            ),
        )),
        Approve::Approved { requeued } => {
            tracing::info!(run = id, step = name, by = auth.token, "step approved");
            if requeued {
                s.queue.wake();
            }
            Ok(Json(json!({
                "run": id,
                "step": name,
                "approved_by": auth.token,
                "status": if requeued { Status::Queued } else { Status::Running },
            })))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    #[serde(rename = "ref")]
    git_ref: String,
    commit: Option<String>,
}

/// `POST /api/v1/repos/{owner}/{name}/runs {"ref": "refs/heads/main", "commit": "…"}`. Without
/// a commit, the ref's current head on the remote is run.
pub async fn start_run(
    _: Authorized,
    State(s): State<AppState>,
    Path((owner, name)): Path<(String, String)>,
    body: Result<Json<StartRun>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{e}; send {{\"ref\": \"refs/heads/main\", \"commit\": \"<40 hex>\"}}"),
        )
    })?;
    let repo = format!("{owner}/{name}");
    let conf = s
        .config
        .repo(&repo)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("repository {repo} is not in hoist.toml"),
            )
        })?
        .clone();
    let (kind, short) = match (
        body.git_ref.strip_prefix("refs/heads/"),
        body.git_ref.strip_prefix("refs/tags/"),
    ) {
        (Some(b), _) if !b.is_empty() => (RefKind::Branch, b.to_string()),
        (_, Some(t)) if !t.is_empty() => (RefKind::Tag, t.to_string()),
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "ref {:?} must be a full ref: refs/heads/BRANCH or refs/tags/TAG",
                    body.git_ref
                ),
            ));
        }
    };
    let commit = match body.commit {
        Some(c) if is_commit_id(&c) => c.to_ascii_lowercase(),
        Some(c) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("commit {c:?} must be 40 hex digits"),
            ));
        }
        None => remote_head(&s, &conf, &body.git_ref).await?,
    };
    let created = s
        .queue
        .enqueue(NewRun {
            repo,
            git_ref: body.git_ref,
            kind,
            name: short,
            commit,
            delivery: None,
            trigger: Trigger::Manual,
            message: None,
            author: None,
            cancel_superseded: conf.cancel_superseded,
        })
        .await
        .map_err(ApiError::not_stored)?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "run": created.id }))).into_response())
}

/// The commit `git_ref` points at on the remote. Blocks the request for one `ls-remote`
/// (bounded by the git connect and read timeouts set in `cli::main`).
async fn remote_head(s: &AppState, repo: &RepoConfig, git_ref: &str) -> Result<String, ApiError> {
    let heads = s
        .queue
        .mirrors
        .heads(repo)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("{e:#}")))?;
    let repo = &repo.name;
    heads
        .into_iter()
        .find(|(r, _)| r == git_ref)
        .map(|(_, c)| c)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("{git_ref} does not exist in {repo}; give a commit or push the ref"),
            )
        })
}

/// `POST /api/v1/deliveries/{id}/replay`: run a stored delivery's push again.
pub async fn replay_delivery(
    _: Authorized,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let d = s
        .store
        .delivery(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no delivery {id}; GET /api/v1/deliveries lists them"),
            )
        })?;
    let conf = s.config.repo(&d.repo).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("repository {} is no longer in hoist.toml", d.repo),
        )
    })?;
    let created = s
        .queue
        .enqueue(NewRun {
            repo: d.repo.clone(),
            git_ref: d.git_ref.clone(),
            kind: d.kind,
            name: d.name.clone(),
            commit: d.commit.clone(),
            delivery: Some(d.id),
            trigger: Trigger::Replay,
            message: d.message.clone(),
            author: d.author.clone(),
            cancel_superseded: conf.cancel_superseded,
        })
        .await
        .map_err(ApiError::not_stored)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "delivery": id, "runs": [created.id] })),
    )
        .into_response())
}

/// Chunks read from the store at once, by the JSON answer and by SSE followers alike.
const LOG_PAGE: u32 = 64;

/// `?after=SEQ` (the chunks after that one; default 0, from the start) and `?limit=N`.
#[derive(Deserialize)]
pub struct LogQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

/// `GET /api/v1/runs/{id}/logs`: the stored chunks as JSON, or with `Accept: text/event-stream`
/// an SSE stream (`event: log`, `id: SEQ`, data the chunk as JSON) that follows the run live and
/// ends with `event: end` carrying the run's status. Both start after chunk `?after=SEQ` (or,
/// for SSE, `Last-Event-ID`). JSON with `?limit=N` (at most 1000) is one page; without it, every
/// chunk after `after`, streamed a page of the store at a time.
pub async fn run_logs(
    _: Authorized,
    State(s): State<AppState>,
    Path(id): Path<i64>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{e}; after is the seq of the last chunk you have (0: from the start), limit a count (at most 1000)"),
        )
    })?;
    if s.store.run(id).await.map_err(ApiError::internal)?.is_none() {
        return Err(no_run(id));
    }
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let after = q.after.unwrap_or(0);
    if !wants_sse {
        if let Some(limit) = q.limit {
            let page = Page {
                limit: Some(limit),
                before: None,
            };
            let chunks = s
                .store
                .logs(id, after, page.limit())
                .await
                .map_err(ApiError::internal)?;
            return Ok(Json(json!(chunks)).into_response());
        }
        return Ok(whole_log(s, id, after));
    }
    let last_event: i64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(follow(s, id, after.max(last_event), tx));
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let stream = futures_util::StreamExt::map(stream, Ok::<Event, Infallible>);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Every chunk of run `id` after `after` as one JSON array, read from the store and sent a
/// page at a time: memory holds one page, whatever the log's length.
fn whole_log(s: AppState, id: i64, mut after: i64) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut first = true;
        let _ = tx.send(Ok("[".into())).await;
        loop {
            let page = match s.store.logs(id, after, LOG_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(run = id, "cannot read the run's log: {e:#}");
                    // A broken body: the client sees an incomplete answer, not a short log.
                    let _ = tx
                        .send(Err(std::io::Error::other("cannot read the log")))
                        .await;
                    return;
                }
            };
            let Some(last) = page.last() else { break };
            after = last.seq;
            let mut text = String::new();
            for c in &page {
                if !first {
                    text.push(',');
                }
                first = false;
                text.push_str(&serde_json::to_string(c).unwrap_or_default());
            }
            if tx.send(Ok(text.into())).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok("]".into())).await;
    });
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn log_event(c: &LogChunk) -> Event {
    Event::default()
        .event("log")
        .id(c.seq.to_string())
        .data(serde_json::to_string(c).unwrap_or_default())
}

/// Feed one SSE client: stored chunks first, then live ones, then the end.
async fn follow(s: AppState, run: i64, mut last: i64, tx: tokio::sync::mpsc::Sender<Event>) {
    // Subscribe before reading the store, so nothing falls between the two.
    let mut live = s.queue.logs.subscribe(run);
    loop {
        // The store first, a page at a time, until it has nothing after `last`.
        loop {
            let stored = match s.store.logs(run, last, LOG_PAGE).await {
                Ok(c) => c,
                Err(_) => return,
            };
            for c in &stored {
                if tx.send(log_event(c)).await.is_err() {
                    return;
                }
                last = c.seq;
            }
            if stored.len() < LOG_PAGE as usize {
                break;
            }
        }
        let Some(rx) = live.as_mut() else {
            // Not running here: it ended (or has not started); send the end once it has ended.
            match s.store.run(run).await {
                Ok(Some((r, _))) if r.status.is_terminal() => {
                    let _ = tx
                        .send(
                            Event::default()
                                .event("end")
                                .data(json!({ "status": r.status }).to_string()),
                        )
                        .await;
                    return;
                }
                Ok(Some(_)) => {
                    // Queued: wait for it to start.
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    live = s.queue.logs.subscribe(run);
                    continue;
                }
                _ => return,
            }
        };
        loop {
            match rx.recv().await {
                Ok(LogEvent::Chunk(c)) if c.seq > last => {
                    last = c.seq;
                    if tx.send(log_event(&c)).await.is_err() {
                        return;
                    }
                }
                Ok(LogEvent::Chunk(_)) => {}
                Ok(LogEvent::End(_)) | Err(RecvError::Closed) => {
                    // Read what may have been stored after the last chunk, then the status.
                    live = None;
                    break;
                }
                Err(RecvError::Lagged(_)) => break, // re-read from the store
            }
        }
        if live.is_none() {
            // Wait until the worker has recorded the end, then drain and finish.
            for _ in 0..100 {
                if let Ok(Some((r, _))) = s.store.run(run).await
                    && r.status.is_terminal()
                {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
