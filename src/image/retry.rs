//! Registry failures and retries, shared by push and verify: a failure is sorted into
//! refused credentials, an unavailable registry, or anything else, and only an unavailable
//! registry is tried again, a bounded number of times with backoff.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::{refusal, say};
use crate::config::RegistryConfig;
use crate::runner::LogSink;

/// How many times a registry that is down or answers 5xx is tried before giving up.
pub const ATTEMPTS: u32 = 4;
/// The wait after the first failed attempt; doubled after each further one (0.5 + 1 + 2 s),
/// so a registry that stays down is reported within a few seconds, while a registry that is
/// restarting (a second or two) is ridden out.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// How a registry operation failed, which decides whether to try again. Push sorts the
/// engine's messages into it (`Failure::classify`), verify oci-client's errors
/// (`Failure::from_oci`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(super) enum Failure {
    /// 401, denied, unauthorized: the credentials (or their absence) were refused.
    #[error("{0}")]
    Credentials(String),
    /// Could not connect, timed out, or 5xx: the registry is down or struggling.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (unknown image, unknown manifest, a digest that does not verify): final.
    #[error("{0}")]
    Other(String),
}

/// Runs `attempt` up to [`ATTEMPTS`] times while the registry is unavailable, waiting
/// [`FIRST_BACKOFF`], then twice as long each time. Retry notices go to `log` when given.
pub(super) async fn with_retries<T, F, Fut>(
    host: &str,
    registry: Option<&RegistryConfig>,
    log: Option<&LogSink>,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let started = Instant::now();
    let mut delay = FIRST_BACKOFF;
    for n in 1..=ATTEMPTS {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(Failure::Credentials(msg)) => bail!("{}", refusal(host, registry, &msg)),
            Err(Failure::Other(msg)) => bail!("{msg}"),
            Err(Failure::Unavailable(msg)) if n == ATTEMPTS => bail!(
                "the registry {host} is unavailable: {ATTEMPTS} attempts over {} failed; last error: {msg}",
                humantime::format_duration(Duration::from_millis(
                    started.elapsed().as_millis() as u64
                ))
            ),
            Err(Failure::Unavailable(msg)) => {
                let notice = format!(
                    "registry {host} unavailable (attempt {n} of {ATTEMPTS}): {msg}; retrying in {}",
                    humantime::format_duration(delay)
                );
                tracing::warn!("{notice}");
                if let Some(log) = log {
                    say(log, notice).await;
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    unreachable!("the last attempt returns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_stop_at_once_on_refused_credentials() {
        let mut calls = 0;
        let entry = RegistryConfig {
            host: "r.example".into(),
            insecure: false,
            username: Some(crate::config::Secret::new("ci")),
            password: Some(crate::config::Secret::new("hunter2-secret")),
        };
        let err = with_retries::<(), _, _>("r.example", Some(&entry), None, || {
            calls += 1;
            async { Err(Failure::Credentials("401".into())) }
        })
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(calls, 1);
        assert!(
            err.starts_with(
                "the registry r.example refused the credentials of its [[registry]] entry"
            ),
            "{err}"
        );
        assert!(!err.contains("hunter2-secret"), "{err}");
    }
}
