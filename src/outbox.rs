//! The outbox sender: one task that delivers what the store's outbox owes (commit statuses
//! through `forge::status`, notifications as JSON POSTs), at least once, in its own time.
//!
//! Rows are written by the store with the change they report (`store::outbox`); this task
//! only claims due rows, sends them and records each answer. A run or a deployment never waits
//! for it: a forge that is down costs retries here, nothing elsewhere.
//!
//! Retries: a failed try is retried after `base × 2^(attempt-1)`, at most [`MAX_BACKOFF`];
//! `base` is 2 s, or `HOIST_OUTBOX_BACKOFF` (a duration like `100ms`, for tests and for
//! impatient operators). A row is given up after [`MAX_ATTEMPTS`] tries (about 40 minutes with
//! the default base), or at once when the receiver refuses it for good: any 4xx but 408 and
//! 429 (a wrong token, a repository that does not exist), or a target the config no longer
//! has. Tokens live in the config only; no row, log line or API answer holds one.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Event};
use crate::forge::status::{self, CommitStatus};
use crate::runner::Masker;
use crate::store::{Attempt, Claimed, MAX_ANSWER, OutboxKind, Reporting, Store, notify_target};

/// Tries before a row is given up.
pub const MAX_ATTEMPTS: i64 = 12;
/// The longest wait between two tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// The first wait, unless `HOIST_OUTBOX_BACKOFF` says otherwise.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(2);
/// How long one try may take, connect to last byte.
const TIMEOUT: Duration = Duration::from_secs(15);
/// Rows sent at once.
const BATCH: u32 = 16;
/// The longest sleep between two looks, in case a wake-up was lost.
const IDLE: Duration = Duration::from_secs(5);

/// The outbox policy the store follows for `config`.
pub fn reporting(config: &Config) -> Reporting {
    let masker = Masker::new(secrets(config));
    Reporting {
        public_url: config.public_url.clone(),
        statuses: config
            .repos
            .iter()
            .filter(|r| r.status_token.is_some())
            .map(|r| r.name.clone())
            .collect(),
        notify: config.notify.iter().map(|n| n.events.clone()).collect(),
        mask: Box::new(move |text| masker.mask_text(text)),
    }
}

/// Every value that must never be shown: `[secrets]`, tokens, webhook URLs.
fn secrets(config: &Config) -> Vec<String> {
    let mut all: Vec<String> = config
        .secrets
        .values()
        .map(|s| s.expose().to_string())
        .collect();
    for r in &config.repos {
        all.push(r.secret.expose().to_string());
        if let Some(t) = &r.status_token {
            all.push(t.expose().to_string());
        }
    }
    all.extend(config.notify.iter().map(|n| n.url.expose().to_string()));
    all
}

/// The base of the backoff: `HOIST_OUTBOX_BACKOFF` when set and valid, else 2 s.
pub fn base_backoff() -> Duration {
    match std::env::var("HOIST_OUTBOX_BACKOFF") {
        Ok(v) => match humantime::parse_duration(v.trim()) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                tracing::warn!(
                    "HOIST_OUTBOX_BACKOFF={v:?} is not a duration like \"2s\" or \"100ms\"; using {DEFAULT_BACKOFF:?}"
                );
                DEFAULT_BACKOFF
            }
        },
        Err(_) => DEFAULT_BACKOFF,
    }
}

/// The wait after try number `attempt` (from 1) failed.
pub fn backoff(base: Duration, attempt: i64) -> Duration {
    let exp = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(20);
    base.saturating_mul(1 << exp).min(MAX_BACKOFF)
}

/// Deliver what is owed until `shutdown`.
pub async fn deliver_forever(store: Store, config: Arc<Config>, shutdown: CancellationToken) {
    let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot build the HTTP client for statuses and notifications: {e}");
            return;
        }
    };
    let base = base_backoff();
    let wake = store.outbox_wakeup();
    match store.recover_outbox().await {
        Ok(n) if n > 0 => tracing::info!(
            rows = n,
            "outbox: owed rows from before the restart are due now"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("outbox: cannot make owed rows due: {e:#}"),
    }
    while !shutdown.is_cancelled() {
        let claimed = match store.claim_outbox(BATCH).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("outbox: cannot claim rows: {e:#}");
                Vec::new()
            }
        };
        if !claimed.is_empty() {
            let sends = claimed.into_iter().map(|row| {
                let (store, config, client) = (store.clone(), config.clone(), client.clone());
                async move {
                    let id = row.id;
                    let result = send(&client, &config, &row, base).await;
                    match &result {
                        Attempt::Delivered { .. } => {}
                        Attempt::Retry {
                            answer,
                            retry_in_ms,
                            ..
                        } => tracing::warn!(
                            outbox = id,
                            target = row.target,
                            event = row.event,
                            attempt = row.attempt,
                            "not delivered ({answer}); next try in {retry_in_ms} ms"
                        ),
                        Attempt::GiveUp { answer, .. } => tracing::error!(
                            outbox = id,
                            target = row.target,
                            event = row.event,
                            attempt = row.attempt,
                            "given up: {answer}"
                        ),
                    }
                    if let Err(e) = store.record_outbox(id, result).await {
                        tracing::warn!(outbox = id, "cannot record the try: {e:#}");
                    }
                }
            });
            // Sent together, recorded one by one; the next claim sees every answer.
            tokio::select! {
                _ = join_all(sends) => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        let wait = match store.next_outbox_due().await {
            Ok(Some(due)) => {
                let ms = due - crate::store::now_millis();
                Duration::from_millis(ms.max(0) as u64).min(IDLE)
            }
            _ => IDLE,
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One try of one row: build the request from the row and the config, send, judge the answer.
async fn send(client: &reqwest::Client, config: &Config, row: &Claimed, base: Duration) -> Attempt {
    let (request, token) = match build(config, row) {
        Ok(r) => r,
        Err(why) => {
            return Attempt::GiveUp {
                code: None,
                answer: why,
            };
        }
    };
    let hide = |text: &str| -> String {
        let text = match &token {
            Some(t) if !t.is_empty() => text.replace(t.as_str(), "***"),
            _ => text.to_string(),
        };
        // A notification's URL is its credential: never in an answer.
        if request.hidden_url {
            text.replace(&request.url, "[the notify url]")
        } else {
            text
        }
    };
    let mut builder = client
        .post(&request.url)
        .header("User-Agent", concat!("hoist/", env!("CARGO_PKG_VERSION")))
        .body(request.body.to_string());
    for (k, v) in &request.headers {
        builder = builder.header(*k, v);
    }
    let retry = |code: Option<u16>, answer: String| {
        if row.attempt >= MAX_ATTEMPTS {
            Attempt::GiveUp {
                code,
                answer: format!("{answer} (gave up after {} tries)", row.attempt),
            }
        } else {
            Attempt::Retry {
                code,
                answer,
                retry_in_ms: backoff(base, row.attempt).as_millis() as i64,
            }
        }
    };
    let response = match builder.send().await {
        Ok(r) => r,
        Err(e) => {
            let what = if e.is_timeout() {
                format!("no answer within {TIMEOUT:?}")
            } else if e.is_connect() {
                "cannot connect".to_string()
            } else {
                "the request failed".to_string()
            };
            // Without the URL: a webhook's URL is a secret.
            return retry(None, hide(&format!("{what}: {}", e.without_url())));
        }
    };
    let code = response.status().as_u16();
    let body = response.bytes().await.unwrap_or_default();
    let snippet = status::truncate(
        String::from_utf8_lossy(&body[..body.len().min(MAX_ANSWER * 4)]).trim(),
        MAX_ANSWER,
    );
    let answer = hide(&format!("{code}: {snippet}"));
    match code {
        200..=299 => Attempt::Delivered { code, answer },
        408 | 429 => retry(Some(code), answer),
        400..=499 => Attempt::GiveUp {
            code: Some(code),
            answer: format!("{answer} (refused for good: check the token and the repository)"),
        },
        _ => retry(Some(code), answer),
    }
}

/// What to send for a row.
struct Outgoing {
    /// Where to POST.
    url: String,
    /// The URL is a secret (a chat webhook), never shown.
    hidden_url: bool,
    /// Content type and, for statuses, the forge's token header.
    headers: Vec<(&'static str, String)>,
    /// The JSON to send.
    body: serde_json::Value,
}

/// The request for `row`, and the token it carries (to hide from answers); an error says
/// why the row can never be sent.
fn build(config: &Config, row: &Claimed) -> Result<(Outgoing, Option<String>), String> {
    match row.kind {
        OutboxKind::Status => {
            let repo = config
                .repo(&row.target)
                .ok_or_else(|| format!("repository {} is no longer in hoist.toml", row.target))?;
            let token = repo
                .status_token
                .as_ref()
                .ok_or_else(|| format!("repository {} has no status_token any more", row.target))?;
            let s: CommitStatus = serde_json::from_value(row.payload.clone())
                .map_err(|e| format!("the stored status cannot be read: {e}"))?;
            let r = status::request(repo.forge, &repo.api, token.expose(), &s);
            Ok((
                Outgoing {
                    url: r.url,
                    hidden_url: false,
                    headers: r.headers,
                    body: r.body,
                },
                Some(token.expose().to_string()),
            ))
        }
        OutboxKind::Notify => {
            let (i, n) = config
                .notify
                .iter()
                .enumerate()
                .find(|(i, _)| notify_target(*i) == row.target)
                .ok_or_else(|| format!("{} is no longer in hoist.toml", row.target))?;
            let subscribed = Event::from_name(&row.event).is_some_and(|e| n.events.contains(&e));
            if !subscribed {
                return Err(format!(
                    "{} no longer subscribes to {}",
                    notify_target(i),
                    row.event
                ));
            }
            Ok((
                Outgoing {
                    url: n.url.expose().to_string(),
                    hidden_url: true,
                    headers: vec![("Content-Type", "application/json".to_string())],
                    body: row.payload.clone(),
                },
                None,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let base = Duration::from_secs(2);
        assert_eq!(backoff(base, 1), Duration::from_secs(2));
        assert_eq!(backoff(base, 2), Duration::from_secs(4));
        assert_eq!(backoff(base, 5), Duration::from_secs(32));
        assert_eq!(backoff(base, 12), MAX_BACKOFF);
        assert_eq!(backoff(base, i64::MAX), MAX_BACKOFF);
    }
}
