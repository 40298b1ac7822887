//! A pipeline's `services:`: containers on the builder beside a run's steps (a database, a
//! cache), on a Docker network of the run's own, each reachable from the steps by its name.
//!
//! [`start`] creates the network, pulls each service's image when it is missing, starts the
//! containers (each with its name as network alias), streams each one's output, masked, into
//! its own log, and waits for every `ready` port; [`Running::stop`] removes all of it.
//! The run's container steps join the network ([`Running::network`]).
//!
//! **Invariant:** every container and the network carry the run's labels (`hoist.agent`,
//! `hoist.run`, and `hoist.service` on containers), so that what a crash leaves is removed by
//! `runner::remove_leftovers` at the next start; a [`Running`] dropped without `stop` removes
//! everything in the background.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
    StartContainerOptions,
};
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::pipeline;
use crate::runner::{self, LogSink, Masker, Pull, SERVICE_LABEL};

/// Longest the pull of a service's image may take.
const PULL_DEADLINE: Duration = Duration::from_secs(600);
/// Pause between two readiness probes of a service.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// Longest one probe (an exec in the service's container) may take.
const PROBE_DEADLINE: Duration = Duration::from_secs(10);
/// How many of a service's last output lines a failure quotes.
const TAIL_LINES: usize = 10;
/// How many bytes of a service's output are kept for those lines.
const TAIL_BYTES: usize = 4096;
/// After a service's container is removed, how long its remaining output may take to arrive.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// One service to start, with what the run made of its spec.
pub struct Start {
    /// The pipeline's `services:` entry.
    pub spec: pipeline::Service,
    /// Its `env`, placeholders filled in.
    pub env: Vec<(String, String)>,
    /// Receives the service's masked output (and hoist's lines about it).
    pub log: LogSink,
}

/// What every service of one run shares.
pub struct Setup {
    /// The name of the run's network, unique on the builder (it names the agent and the run).
    pub network: String,
    /// Put on the network and on every container (`hoist.agent`, `hoist.run`).
    pub labels: HashMap<String, String>,
    /// Values masked in every service's output: every secret the run may use.
    pub secrets: Vec<String>,
    /// Cancelled when the run is: the start stops waiting and removes what it made.
    pub cancel: CancellationToken,
}

/// Why the services could not be started; what they made is removed already.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StartError {
    /// The run was cancelled while they started.
    #[error("cancelled while the services started")]
    Cancelled,
    /// A sentence naming the service and what to do.
    #[error("{0}")]
    Failed(String),
}

/// The run's network and its started services; removed by [`Running::stop`], or in the
/// background when dropped without it.
pub struct Running {
    docker: Docker,
    network: String,
    services: Vec<Started>,
    /// Set once removal began: a service's end is then no news worth a log line.
    stopping: Arc<AtomicBool>,
    /// Whether removal is still to be done (false after `stop`).
    armed: bool,
}

/// One started service.
struct Started {
    name: String,
    /// The container's id.
    id: String,
    /// Streams its output into its log; ends when the container is gone.
    logger: Option<JoinHandle<()>>,
    /// Its last output, masked, for failure reasons.
    tail: Arc<Mutex<Vec<u8>>>,
}

/// Starts `services` for one run, as described in the module header; returns once every
/// `ready` port accepts connections. On failure everything made so far is removed first.
pub async fn start(
    docker: &Docker,
    setup: Setup,
    services: Vec<Start>,
) -> Result<Running, StartError> {
    let mut running = Running {
        docker: docker.clone(),
        network: setup.network.clone(),
        services: Vec::new(),
        stopping: Arc::new(AtomicBool::new(false)),
        armed: true,
    };
    let result = start_all(&mut running, &setup, services).await;
    if let Err(e) = result {
        running.stop().await;
        return Err(e);
    }
    Ok(running)
}

async fn start_all(
    running: &mut Running,
    setup: &Setup,
    services: Vec<Start>,
) -> Result<(), StartError> {
    create_network(&running.docker, setup).await?;
    let mut waits = Vec::new();
    for service in services {
        if setup.cancel.is_cancelled() {
            return Err(StartError::Cancelled);
        }
        let ready = service.spec.ready.clone();
        let name = service.spec.name.clone();
        let started = start_one(running, setup, service).await?;
        if let Some(ready) = ready {
            waits.push((name, started, ready));
        }
    }
    // Every service's deadline counts from its own start; they are awaited together, and the
    // first failure ends the wait for all.
    let waits = waits.into_iter().map(|(name, started_at, ready)| {
        let index = running
            .services
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_default();
        let service = &running.services[index];
        wait_ready(
            &running.docker,
            service,
            ready,
            started_at,
            &setup.cancel,
            setup.secrets.clone(),
        )
    });
    futures_util::future::try_join_all(waits).await?;
    Ok(())
}

/// Creates the run's network. One of the same name is a leftover of this run's earlier
/// attempt whose removal failed: it is removed, with its containers, and made anew.
async fn create_network(docker: &Docker, setup: &Setup) -> Result<(), StartError> {
    let request = || NetworkCreateRequest {
        name: setup.network.clone(),
        driver: Some("bridge".to_string()),
        labels: Some(setup.labels.clone()),
        ..Default::default()
    };
    match docker.create_network(request()).await {
        Ok(_) => return Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => {}
        Err(e) => {
            return Err(StartError::Failed(format!(
                "the builder could not create the run's network {}: {e}",
                setup.network
            )));
        }
    }
    remove_network(docker, &setup.network).await;
    docker.create_network(request()).await.map_err(|e| {
        StartError::Failed(format!(
            "the builder could not create the run's network {} (one of that name was there \
             and could not be removed): {e}",
            setup.network
        ))
    })?;
    Ok(())
}

/// Pulls, creates, attaches to and starts one service; when it started.
async fn start_one(
    running: &mut Running,
    setup: &Setup,
    service: Start,
) -> Result<Instant, StartError> {
    let docker = running.docker.clone();
    let spec = &service.spec;
    let name = &spec.name;
    service
        .log
        .note(format!("── service {name} ({})", spec.image));
    runner::pull_if_missing(
        &docker,
        &spec.image,
        &setup.cancel,
        Some(Instant::now() + PULL_DEADLINE),
    )
    .await
    .map_err(|e| match e {
        Pull::Cancelled => StartError::Cancelled,
        Pull::TimedOut => StartError::Failed(format!(
            "service {name}: the pull of image {} took longer than {}",
            spec.image,
            humantime::format_duration(PULL_DEADLINE)
        )),
        Pull::Failed(why) => StartError::Failed(format!("service {name}: {why}")),
    })?;

    let mut labels = setup.labels.clone();
    labels.insert(SERVICE_LABEL.to_string(), name.clone());
    let body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.command.clone(),
        env: Some(
            service
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        ),
        labels: Some(labels),
        tty: Some(false),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(false),
        host_config: Some(HostConfig {
            network_mode: Some(setup.network.clone()),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                setup.network.clone(),
                EndpointSettings {
                    aliases: Some(vec![name.clone()]),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    };
    // Named after the network (agent and run) and the service, for a person reading `docker ps`.
    let options = CreateContainerOptionsBuilder::default()
        .name(&format!("{}-{name}", setup.network))
        .build();
    let id = docker
        .create_container(Some(options), body)
        .await
        .map_err(|e| {
            StartError::Failed(format!(
                "service {name}: could not create its container from {}: {e}",
                spec.image
            ))
        })?
        .id;
    let tail = Arc::new(Mutex::new(Vec::new()));
    running.services.push(Started {
        name: name.clone(),
        id: id.clone(),
        logger: None,
        tail: tail.clone(),
    });
    // Attached before the start, so that not a byte of its output is missed.
    let attach = AttachContainerOptionsBuilder::default()
        .stream(true)
        .stdout(true)
        .stderr(true)
        .build();
    let output = docker
        .attach_container(&id, Some(attach))
        .await
        .map_err(|e| {
            StartError::Failed(format!(
                "service {name}: could not attach to its output: {e}"
            ))
        })?
        .output;
    let logger = tokio::spawn(stream_output(
        docker.clone(),
        id.clone(),
        name.clone(),
        output,
        Masker::new(setup.secrets.iter().cloned()),
        service.log,
        tail,
        running.stopping.clone(),
    ));
    if let Some(last) = running.services.last_mut() {
        last.logger = Some(logger);
    }
    docker
        .start_container(&id, None::<StartContainerOptions>)
        .await
        .map_err(|e| StartError::Failed(format!("service {name}: could not start: {e}")))?;
    Ok(Instant::now())
}

/// Copies a service's output, masked, into its log (and its tail) until the container is
/// gone; says so when it ended before the run was done with it.
#[allow(clippy::too_many_arguments)]
async fn stream_output(
    docker: Docker,
    id: String,
    name: String,
    mut output: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
    >,
    mut masker: Masker,
    log: LogSink,
    tail: Arc<Mutex<Vec<u8>>>,
    stopping: Arc<AtomicBool>,
) {
    // Waits while the log's sink is full: the engine's stream is then read no faster than
    // the log is stored.
    let send = |bytes: Vec<u8>| {
        if !bytes.is_empty() {
            let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
            t.extend_from_slice(&bytes);
            let over = t.len().saturating_sub(TAIL_BYTES);
            t.drain(..over);
        }
        log.send(bytes)
    };
    while let Some(chunk) = output.next().await {
        match chunk {
            Ok(chunk) => {
                send(masker.push(&chunk.into_bytes())).await;
            }
            Err(e) => {
                tracing::debug!(service = name, error = %e, "service output stream broke");
                break;
            }
        }
    }
    send(masker.finish()).await;
    if stopping.load(Ordering::SeqCst) {
        return;
    }
    let code = docker
        .inspect_container(&id, None)
        .await
        .ok()
        .and_then(|c| c.state?.exit_code);
    let line = match code {
        Some(code) => format!("── service {name} exited with code {code}"),
        None => format!("── service {name} ended"),
    };
    log.note(line);
}

/// Waits until `service` accepts connections on `ready.tcp`: fails at once when it exits,
/// and past the deadline.
async fn wait_ready(
    docker: &Docker,
    service: &Started,
    ready: pipeline::Ready,
    started_at: Instant,
    cancel: &CancellationToken,
    secrets: Vec<String>,
) -> Result<(), StartError> {
    let name = &service.name;
    let port = ready.tcp;
    let deadline = started_at + ready.deadline;
    let masker = Masker::new(secrets);
    let last_lines = || {
        let tail = service.tail.lock().unwrap_or_else(|e| e.into_inner());
        let lines = last_lines(&String::from_utf8_lossy(&tail), TAIL_LINES);
        if lines.is_empty() {
            "; it printed nothing".to_string()
        } else {
            // Masked as it was stored; masked again in case a value was cut at the tail's start.
            format!("; its last lines:\n{}", masker.mask_text(&lines))
        }
    };
    loop {
        if cancel.is_cancelled() {
            return Err(StartError::Cancelled);
        }
        match docker.inspect_container(&service.id, None).await {
            Ok(c) => {
                let state = c.state.unwrap_or_default();
                if state.running != Some(true) {
                    return Err(StartError::Failed(format!(
                        "service {name} exited with code {} before it accepted connections on \
                         tcp port {port}{}",
                        state.exit_code.unwrap_or_default(),
                        last_lines()
                    )));
                }
            }
            Err(e) => {
                return Err(StartError::Failed(format!(
                    "service {name}: its container could not be inspected: {e}"
                )));
            }
        }
        match probe(docker, &service.id, port).await {
            Probe::Ready => return Ok(()),
            Probe::NotYet => {}
            Probe::CannotRun(why) => {
                return Err(StartError::Failed(format!(
                    "service {name}: cannot check `ready` (tcp {port}): {why}"
                )));
            }
        }
        if Instant::now() >= deadline {
            return Err(StartError::Failed(format!(
                "service {name} did not accept connections on tcp port {port} within {}{}",
                humantime::format_duration(ready.deadline),
                last_lines()
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = cancel.cancelled() => return Err(StartError::Cancelled),
        }
    }
}

/// The last `n` non-empty lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What one readiness probe found.
#[derive(Debug, PartialEq)]
enum Probe {
    Ready,
    NotYet,
    /// The probe itself cannot run in this container; waiting longer will not change that.
    CannotRun(String),
}

/// Exit status of the probe script when the port has a listening socket.
const PROBE_READY: i64 = 0;
/// Exit status of the probe script when it has not (yet).
const PROBE_NOT_YET: i64 = 1;

/// The probe: a POSIX `sh` script, run by `exec` in the service's own container, that looks
/// for a socket listening on `port` in `/proc/net/tcp` and `/proc/net/tcp6` with nothing but
/// `sh` builtins.
///
/// Why this way: the builder may be a remote engine (tcp, ssh), and even in the lab the
/// agent cannot route to addresses inside the builder's network namespace, so the probe has
/// to run on the engine's side. An exec shares the service's network namespace, so it sees
/// the service's own sockets without any image of ours (none can be pulled here, and the
/// builder may not have one). Tools differ between images (busybox `nc` has no `-z`, Debian
/// images have no `nc`, bash's `/dev/tcp` needs bash), while `sh` and `/proc` are in nearly
/// every image; a socket in LISTEN state is one the kernel completes connections to. An image
/// without `sh` (distroless, scratch) cannot be probed: the run fails saying so.
fn probe_script(port: u16) -> String {
    format!(
        "for f in /proc/net/tcp /proc/net/tcp6; do\n\
         [ -r \"$f\" ] || continue\n\
         while read -r _ local _ st _; do\n\
         case \"$local\" in *:{port:04X}) [ \"$st\" = 0A ] && exit {PROBE_READY} ;; esac\n\
         done < \"$f\"\n\
         done\n\
         exit {PROBE_NOT_YET}\n"
    )
}

/// Runs [`probe_script`] in the container `id`.
async fn probe(docker: &Docker, id: &str, port: u16) -> Probe {
    let config = CreateExecOptions {
        cmd: Some(vec!["sh".to_string(), "-c".to_string(), probe_script(port)]),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let run = async {
        let exec = docker.create_exec(id, config).await?;
        let mut output = Vec::new();
        if let StartExecResults::Attached { output: mut o, .. } =
            docker.start_exec(&exec.id, None).await?
        {
            while let Some(chunk) = o.next().await {
                output.extend_from_slice(&chunk?.into_bytes());
                output.truncate(1024);
            }
        }
        let inspect = docker.inspect_exec(&exec.id).await?;
        Ok::<_, bollard::errors::Error>((inspect.exit_code, output))
    };
    match tokio::time::timeout(PROBE_DEADLINE, run).await {
        Ok(Ok((Some(PROBE_READY), _))) => Probe::Ready,
        Ok(Ok((Some(PROBE_NOT_YET), _))) => Probe::NotYet,
        // The runtime's codes for "not executable" and "not found": no `sh` in the image.
        Ok(Ok((Some(code @ (126 | 127)), output))) => Probe::CannotRun(format!(
            "the probe runs `sh` in the service's container, and that failed (exit {code}: \
             {}); use an image with a shell, or drop `ready` and wait in the first step",
            String::from_utf8_lossy(&output).trim()
        )),
        Ok(Ok((code, output))) => Probe::CannotRun(format!(
            "the probe ended with {code:?}: {}",
            String::from_utf8_lossy(&output).trim()
        )),
        // The container stopped between the inspection and the exec: the next look says so.
        Ok(Err(e)) => {
            tracing::debug!(container = id, error = %e, "service probe could not run");
            Probe::NotYet
        }
        Err(_) => Probe::NotYet,
    }
}

impl Running {
    /// The run's network, for the container steps to join.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// Removes every service's container and then the network, and waits for the services'
    /// output to end (so that their logs are complete when this returns).
    pub async fn stop(mut self) {
        self.armed = false;
        self.stopping.store(true, Ordering::SeqCst);
        let ids: Vec<String> = self.services.iter().map(|s| s.id.clone()).collect();
        remove_all(&self.docker, &ids, &self.network).await;
        for service in &mut self.services {
            if let Some(mut logger) = service.logger.take()
                && tokio::time::timeout(DRAIN_DEADLINE, &mut logger)
                    .await
                    .is_err()
            {
                // Its log sink goes with it, so that the run's log can be closed.
                logger.abort();
                tracing::warn!(
                    service = service.name,
                    "service output did not end after its container was removed"
                );
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.stopping.store(true, Ordering::SeqCst);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let docker = self.docker.clone();
            let ids: Vec<String> = self.services.iter().map(|s| s.id.clone()).collect();
            let network = self.network.clone();
            runtime.spawn(async move { remove_all(&docker, &ids, &network).await });
        }
    }
}

/// Removes the containers `ids`, then the network with whatever else is still attached.
async fn remove_all(docker: &Docker, ids: &[String], network: &str) {
    for id in ids {
        match runner::force_remove(docker, id).await {
            Ok(()) => {}
            Err(e) if runner::is_not_found(&e) => {}
            Err(e) => tracing::warn!(container = id, error = %e,
                "could not remove a service container; the agent's next start removes it"),
        }
    }
    remove_network(docker, network).await;
}

/// Removes the network `name`, first removing containers still attached to it (a step
/// container whose removal is still under way). Every container on it is the run's own: only
/// the run's steps and services join it.
async fn remove_network(docker: &Docker, name: &str) {
    let filters = HashMap::from([("network", vec![name])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    if let Ok(attached) = docker.list_containers(Some(options)).await {
        for id in attached.into_iter().filter_map(|c| c.id) {
            if let Err(e) = runner::force_remove(docker, &id).await
                && !runner::is_not_found(&e)
            {
                tracing::warn!(container = id, error = %e, "could not remove a container on the run's network");
            }
        }
    }
    match docker.remove_network(name).await {
        Ok(()) => {}
        Err(e) if runner::is_not_found(&e) => {}
        Err(e) => tracing::warn!(network = name, error = %e,
            "could not remove the run's network; the agent's next start removes it"),
    }
}

/// The name of a run's network (and the prefix of its service containers' names): unique on
/// a builder shared by several agents, and a valid Docker name.
pub fn network_name(agent: &str, run: &str) -> String {
    format!("hoist-{agent}-run-{run}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_looks_for_the_port_in_hex() {
        let script = probe_script(3306);
        assert!(script.contains("*:0CEA)"), "{script}");
        assert!(probe_script(80).contains("*:0050)"));
        assert!(probe_script(65535).contains("*:FFFF)"));
    }

    #[test]
    fn the_probe_finds_a_listening_socket_and_ignores_others() {
        // The script run by this machine's sh against files shaped like /proc/net/tcp.
        let dir = tempfile::tempdir().unwrap();
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        let listening = "   0: 00000000:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 29330 1\n";
        let connected = "   1: 0100007F:0CEA 0100007F:8D6B 01 00000000:00000000 00:00000000 00000000     0        0 29331 1\n";
        let other = "   2: 0B00007F:A9FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 28942 1\n";
        let run = |content: &str| {
            let file = dir.path().join("tcp");
            std::fs::write(&file, content).unwrap();
            let script = probe_script(3306).replace(
                "/proc/net/tcp /proc/net/tcp6",
                &format!("{} /nonexistent/tcp6", file.display()),
            );
            std::process::Command::new("sh")
                .args(["-c", &script])
                .status()
                .unwrap()
                .code()
        };
        assert_eq!(
            run(&format!("{header}{other}{listening}")),
            Some(PROBE_READY as i32)
        );
        assert_eq!(
            run(&format!("{header}{other}{connected}")),
            Some(PROBE_NOT_YET as i32)
        );
        assert_eq!(run(header), Some(PROBE_NOT_YET as i32));
    }

    #[test]
    fn last_lines_skips_blank_lines_and_keeps_the_end() {
        assert_eq!(last_lines("a\n\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("", 3), "");
        assert_eq!(last_lines("only", 3), "only");
    }

    #[test]
    fn network_names_name_agent_and_run() {
        assert_eq!(
            network_name("0123abcd", "42"),
            "hoist-0123abcd-run-42".to_string()
        );
    }
}
