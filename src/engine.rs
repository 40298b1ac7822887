//! Connecting to Docker engines: the build engine (steps and image builds) and every deploy host.
//!
//! One function, [`connect`], so that every engine URL in the config means the same thing
//! everywhere and an unreachable engine fails with the same actionable message.

use std::time::Duration;

use anyhow::{Context, bail};
use bollard::{API_DEFAULT_VERSION, Docker};

use crate::config::TlsConfig;

/// Read/write timeout of each request, in seconds. It bounds the time until a response's
/// headers arrive; streaming endpoints (logs, attach, wait) send their headers at once and
/// then stay open as long as the container runs, so long steps are not cut by it.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// How long the first contact (version negotiation and ping) may take: an engine that does
/// not answer a ping within this is reported as unreachable instead of hanging the caller.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// Connect to `unix://PATH`, `tcp://HOST:PORT` (with TLS when `tls` is given), or
/// `ssh://user@host` (through the system `ssh`, which runs `docker system dial-stdio` there).
///
/// Negotiates the API version (dockerd 20.10 speaks 1.41, older than bollard's default) and
/// pings the engine, so that a returned handle is known to work.
pub async fn connect(url: &str, tls: Option<&TlsConfig>) -> anyhow::Result<Docker> {
    let docker = open(url, tls)?;
    let reach = async {
        let docker = docker.negotiate_version().await?;
        docker.ping().await?;
        Ok::<_, bollard::errors::Error>(docker)
    };
    match tokio::time::timeout(CONNECT_DEADLINE, reach).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(e)) => bail!(
            "cannot reach the Docker engine at {url}: {}{}",
            error_chain(&e),
            hint(url)
        ),
        Err(_) => bail!(
            "cannot reach the Docker engine at {url}: no answer within {}s; is dockerd running?",
            CONNECT_DEADLINE.as_secs()
        ),
    }
}

/// Every cause of a bollard error: its top level alone says things like "client error (Connect)".
fn error_chain(e: &bollard::errors::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// What to check, by transport.
fn hint(url: &str) -> &'static str {
    if url.starts_with("ssh://") {
        "; check that `ssh` reaches the host as that user with a key (not a password) and that `docker` runs there"
    } else if url.starts_with("tcp://") {
        "; check the address, that dockerd listens there, and the tls files against its CA"
    } else {
        "; is dockerd running?"
    }
}

/// Builds the client for the URL's scheme without talking to the engine yet.
fn open(url: &str, tls: Option<&TlsConfig>) -> anyhow::Result<Docker> {
    let unreachable = |e: bollard::errors::Error| {
        anyhow::anyhow!(
            "cannot reach the Docker engine at {url}: {}{}",
            error_chain(&e),
            hint(url)
        )
    };
    if let Some(path) = url.strip_prefix("unix://") {
        if tls.is_some() {
            bail!("Docker engine {url}: tls is only used with tcp:// URLs");
        }
        if path.is_empty() {
            bail!(
                "Docker engine URL {url:?} names no socket path: use unix:///path/to/docker.sock"
            );
        }
        Docker::connect_with_unix(url, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
            .map_err(unreachable)
    } else if url.starts_with("tcp://") {
        match tls {
            Some(tls) => {
                // bollard reads the client certificate and key only during the handshake and
                // sends none when that fails; read them here so a wrong path is named.
                for (what, path) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
                    let pem = std::fs::read_to_string(path).with_context(|| {
                        format!(
                            "Docker engine {url}: cannot read the tls {what} file {}",
                            path.display()
                        )
                    })?;
                    if !pem.contains("-----BEGIN ") {
                        bail!(
                            "Docker engine {url}: the tls {what} file {} is not PEM",
                            path.display()
                        );
                    }
                }
                Docker::connect_with_ssl(
                    url,
                    &tls.key,
                    &tls.cert,
                    &tls.ca,
                    REQUEST_TIMEOUT_SECS,
                    API_DEFAULT_VERSION,
                )
                .with_context(|| {
                    format!(
                        "Docker engine {url}: cannot load the TLS files (ca {}, cert {}, key {})",
                        tls.ca.display(),
                        tls.cert.display(),
                        tls.key.display()
                    )
                })
            }
            None => Docker::connect_with_http(url, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
                .map_err(unreachable),
        }
    } else if url.starts_with("ssh://") {
        if tls.is_some() {
            bail!("Docker engine {url}: tls is only used with tcp:// URLs");
        }
        Docker::connect_with_ssh(url, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION, None)
            .map_err(unreachable)
    } else {
        bail!(
            "unsupported Docker engine URL {url:?}: use unix:///path/to/docker.sock, tcp://HOST:PORT or ssh://user@host"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_socket_names_the_url() {
        let err = connect("unix:///nonexistent/hoist-test.sock", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "cannot reach the Docker engine at unix:///nonexistent/hoist-test.sock: "
            ),
            "{err}"
        );
        assert!(err.ends_with("is dockerd running?"), "{err}");
    }

    #[tokio::test]
    async fn unknown_scheme_is_refused() {
        let err = connect("http2://x", None).await.unwrap_err().to_string();
        assert!(err.contains("unsupported Docker engine URL"), "{err}");
    }

    #[tokio::test]
    async fn closed_tcp_port_names_the_url() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let err = connect("tcp://127.0.0.1:1", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot reach the Docker engine at tcp://127.0.0.1:1: "),
            "{err}"
        );
    }
}
