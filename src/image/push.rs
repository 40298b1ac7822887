//! Pushing a tag from the build engine to its registry, with the registry's credentials, and
//! reading back the manifest digest the engine reports for it. An unavailable registry is
//! retried ([`with_retries`]); the engine's messages are sorted into [`Failure`]s here, since
//! they are all the engine says about the registry.

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::PushImageOptionsBuilder;
use futures_util::StreamExt;

use super::retry::{Failure, with_retries};
use super::{
    engine_credentials, engine_message, is_sha256_digest, parse_reference, refused_credentials, say,
};
use crate::config::RegistryConfig;
use crate::runner::LogSink;

/// Pushes `reference` (`host/path:tag`) from the engine to its registry and returns the
/// manifest digest the engine reported.
///
/// The digest comes from the engine's status line `TAG: digest: sha256:… size: N`; if an
/// engine does not print it, from the image's `RepoDigests` for this repository (only when
/// that is unambiguous). Whether the registry really holds it is [`verify`](super::verify())'s business.
pub async fn push(
    docker: &Docker,
    reference: &str,
    registry: Option<&RegistryConfig>,
    log: &LogSink,
) -> anyhow::Result<String> {
    let (host, path, tag) = parse_reference(reference)?;
    let repo = format!("{host}/{path}");
    let credentials = engine_credentials(registry);
    let attempt = || push_once(docker, &repo, &tag, credentials.clone(), log);
    let digest = with_retries(&host, registry, Some(log), attempt).await?;
    say(log, format!("Pushed {reference}: {digest}")).await;
    Ok(digest)
}

/// One push: streams the engine's progress into `log` and returns the digest it reported.
async fn push_once(
    docker: &Docker,
    repo: &str,
    tag: &str,
    credentials: Option<DockerCredentials>,
    log: &LogSink,
) -> Result<String, Failure> {
    let options = PushImageOptionsBuilder::default().tag(tag).build();
    let mut stream = docker.push_image(repo, Some(options), credentials);
    let mut digest = None;
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(e) => return Err(push_failure(e, repo, log).await),
        };
        let Some(status) = info.status else { continue };
        if let Some(d) = digest_in_status(&status, tag) {
            digest = Some(d);
        }
        // PushImageInfo carries no layer id, so per-layer progress ticks ("Pushing" with
        // byte counts) would be noise without saying which layer: only state changes go in.
        if info
            .progress_detail
            .as_ref()
            .is_none_or(|p| p.current.is_none())
        {
            say(log, status).await;
        }
    }
    match digest {
        Some(d) => Ok(d),
        None => recorded_digest(docker, repo, tag).await,
    }
}

/// Sorts an error from the engine's push stream; the engine's own words go to `log` too.
async fn push_failure(e: DockerError, repo: &str, log: &LogSink) -> Failure {
    match e {
        DockerError::DockerStreamError { error } => {
            say(log, error.clone()).await;
            if error.contains("server gave HTTP response to HTTPS client") {
                // Retrying cannot help: the engine's own configuration decides the scheme.
                let host = repo.split('/').next().unwrap_or(repo);
                return Failure::Other(format!(
                    "{error}: the build engine treats {host} as an HTTPS registry; start its dockerd with --insecure-registry {host} (lab and loopback registries only)"
                ));
            }
            Failure::classify(error)
        }
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => {
            // The engine answered before pushing anything: unknown image (404), or its
            // own trouble. Only a registry error inside the message is worth retrying.
            if status_code == 404 {
                Failure::Other(message)
            } else {
                Failure::classify(message)
            }
        }
        e => Failure::Other(format!(
            "the build engine failed the push: {}",
            engine_message(&e)
        )),
    }
}

/// For engines that print no digest: what the engine recorded for this repository after the
/// push (its `RepoDigests`), only when that is unambiguous.
async fn recorded_digest(docker: &Docker, repo: &str, tag: &str) -> Result<String, Failure> {
    let reference = format!("{repo}:{tag}");
    let inspect = docker.inspect_image(&reference).await.map_err(|e| {
        Failure::Other(format!(
            "cannot inspect {reference} after the push: {}",
            engine_message(&e)
        ))
    })?;
    let prefix = format!("{repo}@");
    let found: Vec<String> = inspect
        .repo_digests
        .unwrap_or_default()
        .into_iter()
        .filter_map(|d| d.strip_prefix(&prefix).map(str::to_string))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(Failure::Other(format!(
            "the engine pushed {reference} but reported no digest for it"
        ))),
    }
}

/// The digest in the engine's final push status, `TAG: digest: sha256:… size: N`.
fn digest_in_status(status: &str, tag: &str) -> Option<String> {
    let rest = status.strip_prefix(tag)?.strip_prefix(": digest: ")?;
    let digest = rest.split_whitespace().next()?;
    is_sha256_digest(digest).then(|| digest.to_string())
}

impl Failure {
    /// Sorts an engine's error message, which is all the engine gives about the registry.
    fn classify(message: String) -> Failure {
        let m = message.to_ascii_lowercase();
        let unavailable = [
            "connection refused",
            "no route to host",
            "network is unreachable",
            "i/o timeout",
            "timeout exceeded",
            "tls handshake timeout",
            "connection reset",
            "eof",
            "unexpected http status: 5",
            "500 internal server error",
            "502 bad gateway",
            "503 service unavailable",
            "504 gateway timeout",
        ];
        if refused_credentials(&m) {
            Failure::Credentials(message)
        } else if unavailable.iter().any(|s| m.contains(s)) {
            Failure::Unavailable(message)
        } else {
            Failure::Other(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_status_carries_the_digest() {
        let d = format!("sha256:{}", "0f".repeat(32));
        assert_eq!(
            digest_in_status(&format!("abc1234: digest: {d} size: 527"), "abc1234"),
            Some(d.clone())
        );
        assert_eq!(
            digest_in_status(&format!("other: digest: {d} size: 527"), "abc1234"),
            None
        );
        assert_eq!(digest_in_status("Pushed", "abc1234"), None);
    }

    #[test]
    fn engine_errors_are_sorted() {
        let c = |m: &str| Failure::classify(m.to_string());
        assert!(matches!(
            c("unauthorized: authentication required"),
            Failure::Credentials(_)
        ));
        assert!(matches!(
            c("denied: requested access to the resource is denied"),
            Failure::Credentials(_)
        ));
        assert!(matches!(
            c(
                "Get \"https://10.203.0.1:5999/v2/\": dial tcp 10.203.0.1:5999: connect: connection refused"
            ),
            Failure::Unavailable(_)
        ));
        assert!(matches!(
            c("received unexpected HTTP status: 503 Service Unavailable"),
            Failure::Unavailable(_)
        ));
        assert!(matches!(
            c("An image does not exist locally with the tag: x"),
            Failure::Other(_)
        ));
    }
}
