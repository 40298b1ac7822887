//! Health checks of a freshly started container: is it serving, and has it kept serving long
//! enough to count?
//!
//! Every check first inspects the container. A container whose process is gone fails at
//! once, with its exit code and the last lines of its log, instead of being probed until the
//! deadline: the classic is a process that does not stay in the foreground. Under the
//! `unless-stopped` restart policy Docker restarts such a container, and reports it
//! `Running: true` while it waits to restart it; a restart count above zero or the
//! `restarting` status therefore counts as exited too.
//!
//! Probes reach the container through the host's address from the config and the host port
//! the container's port is published on, the way its users will reach it.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::StartExecResults;
use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, ExecConfig, HealthStatusEnum,
};
use bollard::query_parameters::{EventsOptionsBuilder, LogsOptionsBuilder};
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::pipeline::{HealthCheck, HealthSpec, StatusRange};

/// Lines of the container's log quoted when it exited.
const LOG_TAIL_LINES: usize = 10;
/// Longest time spent collecting those lines or the exit code of a restarted container.
const DIAGNOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes of a health command's output kept for the reason.
const COMMAND_OUTPUT_LIMIT: usize = 2048;

/// How a container became healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthReport {
    /// Probes made, the failed ones included.
    pub checks: u32,
    /// From the first probe until the container had been healthy for `healthy_for`.
    pub took: Duration,
}

/// Why a container is not healthy: a reason a person can act on ("the container exited with
/// code 3 …", "cancelled"). It derefs to that text, so a caller reads it like the text it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unhealthy(String);

impl Unhealthy {
    /// A reason of the caller's own (one replica's, named).
    pub fn new(reason: String) -> Unhealthy {
        Unhealthy(reason)
    }
}

impl std::ops::Deref for Unhealthy {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<&str> for Unhealthy {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for Unhealthy {
    fn eq(&self, other: &String) -> bool {
        self.0 == *other
    }
}

/// Why one check failed.
enum Fail {
    /// Worth checking again: the service may still be starting.
    Retry(String),
    /// Checking again cannot help: the container exited, the port is not published, the
    /// image has no HEALTHCHECK.
    Fatal(String),
}

/// Check `container` until it has been continuously healthy for `spec.healthy_for`, one check
/// every `spec.interval`, each bounded by `spec.timeout`; give up at `spec.deadline`. The
/// error is a reason a person can act on. `address` is the host's address from the config.
pub async fn wait_healthy(
    docker: &Docker,
    container: &str,
    address: &str,
    spec: &HealthSpec,
    cancel: &CancellationToken,
) -> Result<HealthReport, Unhealthy> {
    let started = Instant::now();
    let deadline = started + spec.deadline;
    let mut checks = 0u32;
    let mut healthy_since: Option<Instant> = None;
    let mut last_failure: Option<String> = None;
    // Failing checks in a row after `start_period`, for `fail_after`.
    let mut failing = 0u32;
    loop {
        let at = Instant::now();
        checks += 1;
        let outcome = tokio::select! {
            // The containers it waits on were just started: any restart is a crash.
            o = check(docker, container, address, spec, Some(0)) => o,
            _ = cancel.cancelled() => return Err(Unhealthy("cancelled".to_string())),
        };
        match outcome {
            Ok(()) => {
                failing = 0;
                let since = *healthy_since.get_or_insert(at);
                if at.duration_since(since) >= spec.healthy_for {
                    return Ok(HealthReport {
                        checks,
                        took: started.elapsed(),
                    });
                }
            }
            Err(Fail::Fatal(reason)) => return Err(Unhealthy(reason)),
            Err(Fail::Retry(reason)) => {
                healthy_since = None;
                // Failures while the service may still be starting do not count.
                if at.duration_since(started) >= spec.start_period {
                    failing += 1;
                }
                if spec.fail_after > 0 && failing >= spec.fail_after {
                    return Err(Unhealthy(format!(
                        "{failing} failing check{} in a row (fail_after: {}): {reason}",
                        if failing == 1 { "" } else { "s" },
                        spec.fail_after
                    )));
                }
                last_failure = Some(reason);
            }
        }
        let now = Instant::now();
        if now >= deadline {
            let within = humantime::format_duration(spec.deadline);
            return Err(Unhealthy(match (healthy_since, last_failure) {
                (Some(since), last) => format!(
                    "not healthy within {within}: healthy for only {} of the {} required{}",
                    seconds(now.duration_since(since)),
                    humantime::format_duration(spec.healthy_for),
                    last.map(|l| format!(" (before that: {l})"))
                        .unwrap_or_default()
                ),
                (None, Some(last)) => format!("not healthy within {within}: {last}"),
                (None, None) => format!("not healthy within {within}"),
            }));
        }
        let next = (at + spec.interval).min(deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = cancel.cancelled() => return Err(Unhealthy("cancelled".to_string())),
        }
    }
}

/// One check now: the container runs and its probe passes, however often the engine
/// restarted it before (its restart policy brought it back: what counts is that it serves
/// now). Used by `/apps/{app}/hosts` and the drift watch.
pub async fn check_once(
    docker: &Docker,
    container: &str,
    address: &str,
    spec: &HealthSpec,
) -> Result<(), Unhealthy> {
    check(docker, container, address, spec, None)
        .await
        .map_err(Fail::into_unhealthy)
}

/// One check now, where a restart since the count `restarts` was read is a failure: the
/// bake, which reads each container's count when it begins ([`restart_count`]).
pub async fn check_since(
    docker: &Docker,
    container: &str,
    address: &str,
    spec: &HealthSpec,
    restarts: i64,
) -> Result<(), Unhealthy> {
    check(docker, container, address, spec, Some(restarts))
        .await
        .map_err(Fail::into_unhealthy)
}

/// How often the engine has restarted `container` (0 when it cannot tell).
pub async fn restart_count(docker: &Docker, container: &str) -> i64 {
    docker
        .inspect_container(container, None)
        .await
        .ok()
        .and_then(|i| i.restart_count)
        .unwrap_or(0)
}

impl Fail {
    fn into_unhealthy(self) -> Unhealthy {
        match self {
            Fail::Retry(r) | Fail::Fatal(r) => Unhealthy(r),
        }
    }
}

/// One check: the container is alive (restarted no more than `restarts` times, when given)
/// and its probe passes.
async fn check(
    docker: &Docker,
    container: &str,
    address: &str,
    spec: &HealthSpec,
    restarts: Option<i64>,
) -> Result<(), Fail> {
    let inspect = alive(docker, container, restarts).await?;
    match &spec.check {
        HealthCheck::Http {
            port,
            path,
            host: header,
            status,
        } => {
            let (host, host_port) = published(&inspect, *port, address)?;
            let probe = HttpProbe {
                path,
                header: header.as_deref(),
                status: *status,
            };
            http_probe(&host, host_port, &probe, spec.timeout).await
        }
        HealthCheck::Tcp(port) => {
            let (host, host_port) = published(&inspect, *port, address)?;
            tcp_probe(&host, host_port, spec.timeout).await
        }
        HealthCheck::Command(argv) => command_probe(docker, container, argv, spec.timeout).await,
        HealthCheck::Docker => docker_probe(&inspect),
    }
}

/// The container's inspection when its process runs and the engine restarted it no more than
/// `allowed` times (any number when None); otherwise a fatal reason with its exit code and the
/// last lines of its log.
async fn alive(
    docker: &Docker,
    container: &str,
    allowed: Option<i64>,
) -> Result<ContainerInspectResponse, Fail> {
    let inspect = match docker.inspect_container(container, None).await {
        Ok(i) => i,
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => {
            return Err(Fail::Fatal(format!(
                "the container {container} no longer exists"
            )));
        }
        // The engine itself failing to answer is worth another try.
        Err(e) => {
            return Err(Fail::Retry(format!(
                "the host's Docker engine cannot inspect container {container}: {e}"
            )));
        }
    };
    let state = inspect.state.clone().unwrap_or_default();
    let restarts = inspect.restart_count.unwrap_or(0);
    let status = state.status;
    let restarted = allowed.is_some_and(|n| restarts > n);
    if status == Some(ContainerStateStatusEnum::RUNNING) && !restarted {
        return Ok(inspect);
    }
    if status == Some(ContainerStateStatusEnum::PAUSED) {
        return Err(Fail::Fatal(format!("the container {container} is paused")));
    }
    if status == Some(ContainerStateStatusEnum::CREATED) {
        return Err(Fail::Fatal(format!(
            "the container {container} was created but never started"
        )));
    }
    let id = inspect.id.clone().unwrap_or_else(|| container.to_string());
    // While running again after a restart the engine has reset ExitCode to 0; the engine's
    // `die` event still has the code of the run that ended.
    let code = if status == Some(ContainerStateStatusEnum::RUNNING) {
        last_exit_code(docker, &id).await
    } else {
        state.exit_code
    };
    let ran = match (
        state.started_at.as_deref().and_then(timestamp),
        state.finished_at.as_deref().and_then(timestamp),
    ) {
        (Some(a), Some(b)) => b.duration_since(a).ok(),
        _ => None,
    };
    let mut reason = match code {
        Some(code) => format!("the container exited with code {code}"),
        None => "the container exited".to_string(),
    };
    if let Some(ran) = ran {
        reason.push_str(&format!(" after {}", seconds(ran)));
    }
    if state.oom_killed == Some(true) {
        reason.push_str(" (killed: out of memory)");
    } else if code == Some(0) || restarts > 0 || ran.is_some_and(|r| r < Duration::from_secs(10)) {
        reason.push_str(" (does its process stay in the foreground?)");
    }
    if restarts > 0 {
        reason.push_str(&format!(
            "; Docker restarted it {restarts} time{}",
            if restarts == 1 { "" } else { "s" }
        ));
    }
    if let Some(err) = state.error.filter(|e| !e.is_empty()) {
        reason.push_str(&format!("; the engine says: {err}"));
    }
    let log = log_tail(docker, &id).await;
    if log.is_empty() {
        reason.push_str("; its log is empty");
    } else {
        reason.push_str(&format!("; last lines of its log:\n{log}"));
    }
    Err(Fail::Fatal(reason))
}

/// The exit code in the container's last `die` event, from the engine's recent events.
async fn last_exit_code(docker: &Docker, id: &str) -> Option<i64> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    let filters = HashMap::from([
        ("container", vec![id.to_string()]),
        ("event", vec!["die".to_string()]),
    ]);
    let options = EventsOptionsBuilder::default()
        .since(&now.saturating_sub(24 * 3600).to_string())
        .until(&(now + 1).to_string())
        .filters(&filters)
        .build();
    let collect = async {
        let mut code = None;
        let mut events = docker.events(Some(options));
        while let Some(Ok(event)) = events.next().await {
            if let Some(c) = event
                .actor
                .and_then(|a| a.attributes)
                .and_then(|a| a.get("exitCode").and_then(|c| c.parse().ok()))
            {
                code = Some(c);
            }
        }
        code
    };
    tokio::time::timeout(DIAGNOSE_TIMEOUT, collect)
        .await
        .ok()
        .flatten()
}

/// The last lines of the container's log, stdout and stderr interleaved.
async fn log_tail(docker: &Docker, id: &str) -> String {
    let options = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail(&LOG_TAIL_LINES.to_string())
        .build();
    let collect = async {
        let mut text = Vec::new();
        let mut logs = docker.logs(id, Some(options));
        while let Some(Ok(chunk)) = logs.next().await {
            text.extend_from_slice(&chunk.into_bytes());
        }
        text
    };
    let text = tokio::time::timeout(DIAGNOSE_TIMEOUT, collect)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// Where the container's `port`/tcp is published: the binding's IP when it is a specific
/// one, else the host's `address`, and the host port.
fn published(
    inspect: &ContainerInspectResponse,
    port: u16,
    address: &str,
) -> Result<(String, u16), Fail> {
    let key = format!("{port}/tcp");
    let bindings = inspect
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref())
        .and_then(|p| p.get(&key))
        .cloned()
        .flatten()
        .unwrap_or_default();
    let binding = bindings
        .iter()
        .find(|b| b.host_port.as_deref().is_some_and(|p| !p.is_empty()))
        .ok_or_else(|| {
            Fail::Fatal(format!(
                "container port {key} is not published on the host, so the health check cannot \
                 reach it; add it to `container.ports`, like \"{port}:{port}\""
            ))
        })?;
    let host_port = binding
        .host_port
        .as_deref()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| {
            Fail::Fatal(format!(
                "container port {key} is published on a port the engine reports oddly: {binding:?}"
            ))
        })?;
    let host = match binding.host_ip.as_deref() {
        Some(ip) if !ip.is_empty() && ip != "0.0.0.0" && ip != "::" => ip.to_string(),
        _ => address.to_string(),
    };
    Ok((host, host_port))
}

/// One client for every HTTP probe: no proxy (a probe must reach the host directly, whatever
/// HTTP_PROXY says), no redirects followed (a 3xx answer is the service answering), and no
/// idle connections kept: a kept connection could outlive the container it reached.
fn http_client() -> Result<&'static reqwest::Client, Fail> {
    static CLIENT: OnceLock<Result<reqwest::Client, reqwest::Error>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(0)
                .build()
        })
        .as_ref()
        .map_err(|e| {
            Fail::Fatal(format!(
                "cannot set up the HTTP client for health checks: {e}"
            ))
        })
}

/// What an HTTP probe asks and accepts.
struct HttpProbe<'a> {
    /// Request path.
    path: &'a str,
    /// The `Host` header, when not the address.
    header: Option<&'a str>,
    /// Statuses that count as healthy.
    status: StatusRange,
}

async fn http_probe(
    host: &str,
    port: u16,
    probe: &HttpProbe<'_>,
    timeout: Duration,
) -> Result<(), Fail> {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let path = probe.path;
    let slash = if path.starts_with('/') { "" } else { "/" };
    let url = format!("http://{host}:{port}{slash}{path}");
    let client = http_client()?;
    let mut request = client.get(&url).timeout(timeout);
    if let Some(header) = probe.header {
        request = request.header(reqwest::header::HOST, header);
    }
    match request.send().await {
        Ok(resp) if probe.status.contains(resp.status().as_u16()) => Ok(()),
        Ok(resp) => Err(Fail::Retry(format!(
            "GET {url}{} answered {} (healthy: {})",
            probe
                .header
                .map(|h| format!(" (Host: {h})"))
                .unwrap_or_default(),
            resp.status(),
            probe.status
        ))),
        Err(e) if e.is_timeout() => Err(Fail::Retry(format!(
            "GET {url}: no answer within {}",
            humantime::format_duration(timeout)
        ))),
        Err(e) => Err(Fail::Retry(format!("GET {url}: {}", cause(&e)))),
    }
}

/// A TCP connection to the published port is accepted and not closed at once. Docker's
/// userland proxy accepts for a published port even when nothing listens in the container,
/// and then closes the connection as soon as it cannot reach the container.
async fn tcp_probe(host: &str, port: u16, timeout: Duration) -> Result<(), Fail> {
    let target = format!("{host}:{port}");
    let shown = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        target.clone()
    };
    let connect = tokio::net::TcpStream::connect((host, port));
    let mut stream = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Fail::Retry(format!("TCP {shown}: {}", io_reason(&e)))),
        Err(_) => {
            return Err(Fail::Retry(format!(
                "TCP {shown}: no answer within {}",
                humantime::format_duration(timeout)
            )));
        }
    };
    let mut byte = [0u8; 1];
    let linger = (timeout / 4).min(Duration::from_millis(200));
    match tokio::time::timeout(linger, stream.read(&mut byte)).await {
        Ok(Ok(0)) => Err(Fail::Retry(format!(
            "TCP {shown}: accepted, then closed at once (nothing listens in the container?)"
        ))),
        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionReset => Err(Fail::Retry(format!(
            "TCP {shown}: accepted, then reset (nothing listens in the container?)"
        ))),
        _ => Ok(()),
    }
}

/// Run `argv` inside the container; exit status 0 is healthy.
async fn command_probe(
    docker: &Docker,
    container: &str,
    argv: &[String],
    timeout: Duration,
) -> Result<(), Fail> {
    let shown = argv.join(" ");
    let config = ExecConfig {
        cmd: Some(argv.to_vec()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let run = async {
        let exec = docker.create_exec(container, config).await?;
        let mut output = Vec::new();
        if let StartExecResults::Attached {
            output: mut out, ..
        } = docker.start_exec(&exec.id, None).await?
        {
            while let Some(chunk) = out.next().await {
                let bytes = match chunk? {
                    LogOutput::StdOut { message } | LogOutput::StdErr { message } => message,
                    _ => continue,
                };
                output.extend_from_slice(&bytes);
                if output.len() > COMMAND_OUTPUT_LIMIT {
                    output.drain(..output.len() - COMMAND_OUTPUT_LIMIT);
                }
            }
        }
        let inspect = docker.inspect_exec(&exec.id).await?;
        Ok::<_, DockerError>((inspect.exit_code, output))
    };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => Err(Fail::Retry(format!(
            "`{shown}` did not finish within {}",
            humantime::format_duration(timeout)
        ))),
        Ok(Err(e)) => Err(Fail::Retry(format!(
            "`{shown}` could not be run in the container: {e}"
        ))),
        Ok(Ok((Some(0), _))) => Ok(()),
        Ok(Ok((code, output))) => {
            let text = String::from_utf8_lossy(&output);
            let last = text.trim_end().lines().last().unwrap_or("").trim();
            let code = code.map_or_else(|| "an unknown status".to_string(), |c| c.to_string());
            Err(Fail::Retry(if last.is_empty() {
                format!("`{shown}` exited with {code}")
            } else {
                format!("`{shown}` exited with {code}: {last}")
            }))
        }
    }
}

/// The image's own HEALTHCHECK, as the engine ran it.
fn docker_probe(inspect: &ContainerInspectResponse) -> Result<(), Fail> {
    let health = inspect.state.as_ref().and_then(|s| s.health.as_ref());
    let status = health.and_then(|h| h.status);
    match status {
        Some(HealthStatusEnum::HEALTHY) => Ok(()),
        Some(HealthStatusEnum::STARTING) => Err(Fail::Retry(
            "the image's HEALTHCHECK has not passed yet (starting)".to_string(),
        )),
        Some(HealthStatusEnum::UNHEALTHY) => {
            let last = health
                .and_then(|h| h.log.as_ref())
                .and_then(|l| l.last())
                .and_then(|r| r.output.as_deref())
                .map(|o| o.trim().to_string())
                .filter(|o| !o.is_empty());
            Err(Fail::Retry(match last {
                Some(o) => format!("the image's HEALTHCHECK reports unhealthy: {o}"),
                None => "the image's HEALTHCHECK reports unhealthy".to_string(),
            }))
        }
        _ => Err(Fail::Fatal(
            "the image has no HEALTHCHECK, so `health: {docker: true}` cannot pass; add a \
             HEALTHCHECK to its Dockerfile, or check with http, tcp or command instead"
                .to_string(),
        )),
    }
}

/// The innermost cause of an HTTP error, in words: "connection refused" rather than
/// "error sending request for url (…)".
fn cause(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        if let Some(io) = next.downcast_ref::<std::io::Error>() {
            return io_reason(io);
        }
        source = next;
    }
    source.to_string()
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".to_string(),
        ErrorKind::ConnectionReset => "connection reset".to_string(),
        ErrorKind::ConnectionAborted => "connection aborted".to_string(),
        ErrorKind::HostUnreachable => "host unreachable".to_string(),
        ErrorKind::NetworkUnreachable => "network unreachable".to_string(),
        ErrorKind::TimedOut => "timed out".to_string(),
        _ => e.to_string(),
    }
}

/// Docker's RFC 3339 timestamps, nanoseconds included.
fn timestamp(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text)
        .ok()
        .filter(|t| *t > UNIX_EPOCH)
}

/// A duration in seconds with one decimal: "0.4s".
fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_timestamps_parse() {
        let a = timestamp("2024-05-01T12:00:00.123456789Z").unwrap();
        let b = timestamp("2024-05-01T12:00:00.523456789Z").unwrap();
        assert_eq!(seconds(b.duration_since(a).unwrap()), "0.4s");
        // A container that never ran reports the zero time.
        assert_eq!(timestamp("0001-01-01T00:00:00Z"), None);
    }
}
