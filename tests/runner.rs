//! The step runner against the lab's real build engine (`scripts/lab up`), and shell steps on
//! this machine. These tests fail, never skip, when the lab is down.
//!
//! Every test labels its containers with a run id of its own, so tests running at the same
//! time (here or in another checkout on the same lab) never see each other's containers.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::ListContainersOptionsBuilder;
use common::lab::{self, BASE_IMAGE as IMAGE};
use common::wait_until;
use hoist::runner::LogMsg;
use hoist::runner::{
    self, AGENT_LABEL, LogSink, Outcome, RUN_LABEL, STEP_LABEL, StepContext, run_container,
    run_shell,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const DATABASE_URL: &str = "postgres://hoist:s3cr3t-pw@db.internal/app";

/// The lab's build engine (or `HOIST_TEST_BUILDER`'s); fails the test saying what to do when
/// it is down.
async fn builder() -> Docker {
    lab::engine(lab::BUILDER).await
}

/// A run id no other test, and no other test process, uses.
fn unique_run() -> i64 {
    static NEXT: AtomicI64 = AtomicI64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    i64::from(std::process::id()) * 1_000_000
        + i64::from(nanos % 1000) * 1000
        + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One step's context with a fresh workspace, and the receiving end of its log.
struct Step {
    run: i64,
    workspace: tempfile::TempDir,
    ctx: StepContext,
    log: mpsc::UnboundedReceiver<LogMsg>,
}

fn step(name: &str) -> Step {
    let run = unique_run();
    let workspace = tempfile::tempdir().unwrap();
    let (tx, log) = LogSink::channel();
    let ctx = StepContext {
        workspace: workspace.path().to_path_buf(),
        env: vec![
            ("HOIST_BRANCH".to_string(), "main".to_string()),
            ("HOIST_RUN".to_string(), run.to_string()),
        ],
        secrets: Vec::new(),
        timeout: Some(Duration::from_secs(30)),
        cancel: CancellationToken::new(),
        log: tx,
        labels: HashMap::from([
            (RUN_LABEL.to_string(), run.to_string()),
            (STEP_LABEL.to_string(), name.to_string()),
        ]),
        network: None,
    };
    Step {
        run,
        workspace,
        ctx,
        log,
    }
}

impl Step {
    fn env(&mut self, name: &str, value: &str) {
        self.ctx.env.retain(|(n, _)| n != name);
        self.ctx.env.push((name.to_string(), value.to_string()));
    }

    /// Everything logged so far.
    fn log_text(&mut self) -> String {
        let mut bytes = Vec::new();
        while let Ok(chunk) = self.log.try_recv() {
            bytes.extend(chunk.into_bytes());
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn cmds(commands: &[&str]) -> Vec<String> {
    commands.iter().map(|c| c.to_string()).collect()
}

/// The step's containers still on the engine.
async fn containers_of(docker: &Docker, run: i64) -> usize {
    let filters = HashMap::from([("label", vec![format!("{RUN_LABEL}={run}")])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    docker.list_containers(Some(options)).await.unwrap().len()
}

/// Fails the test if `fut` takes longer than `limit`.
async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// Reads the log until `needle` appears, then cancels the step; returns the log read.
async fn cancel_when_logged(
    log: &mut mpsc::UnboundedReceiver<LogMsg>,
    needle: &str,
    cancel: &CancellationToken,
) -> String {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains(needle) {
        match tokio::time::timeout_at(deadline, log.recv()).await {
            Ok(Some(chunk)) => seen.extend(chunk.into_bytes()),
            Ok(None) => panic!("the log closed before {needle:?} appeared"),
            Err(_) => panic!(
                "{needle:?} did not appear in the log within 20s; log: {}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    cancel.cancel();
    String::from_utf8_lossy(&seen).into_owned()
}

fn assert_contains(log: &str, needle: &str) {
    assert!(
        log.contains(needle),
        "expected {needle:?} in the log:\n{log}"
    );
}

fn assert_lacks(log: &str, needle: &str) {
    assert!(
        !log.contains(needle),
        "did not expect {needle:?} in the log:\n{log}"
    );
}

fn pwned_branch(marker: &Path) -> String {
    format!("x;$(touch${{IFS}}{})", marker.display())
}

// ---- container steps ----

#[tokio::test]
async fn container_step_passes_with_output_and_env() {
    let docker = builder().await;
    let mut s = step("pass");
    let outcome = within(
        Duration::from_secs(30),
        "the step",
        run_container(
            &docker,
            IMAGE,
            &cmds(&[
                "echo \"branch=$HOIST_BRANCH\"",
                "echo to-stderr >&2",
                "echo done",
            ]),
            &s.ctx,
        ),
    )
    .await;
    let log = s.log_text();
    assert_eq!(outcome, Outcome::Success, "log:\n{log}");
    assert_contains(&log, "+ echo \"branch=$HOIST_BRANCH\"\nbranch=main\n");
    assert_contains(&log, "+ echo to-stderr >&2\nto-stderr\n");
    assert_contains(&log, "+ echo done\ndone\n");
    assert_lacks(&log, "hoist:");
    assert_eq!(
        containers_of(&docker, s.run).await,
        0,
        "container left behind"
    );
}

#[tokio::test]
async fn container_step_sees_the_workspace_at_slash_workspace() {
    let docker = builder().await;
    let mut s = step("workspace");
    std::fs::write(
        s.workspace.path().join("checkout.txt"),
        "from the checkout\n",
    )
    .unwrap();
    let outcome = run_container(
        &docker,
        IMAGE,
        &cmds(&["pwd", "cat /workspace/checkout.txt", "echo built > out.txt"]),
        &s.ctx,
    )
    .await;
    let log = s.log_text();
    assert_eq!(outcome, Outcome::Success, "log:\n{log}");
    assert_contains(&log, "+ pwd\n/workspace\n");
    assert_contains(&log, "from the checkout\n");
    let written = std::fs::read_to_string(s.workspace.path().join("out.txt")).unwrap();
    assert_eq!(written, "built\n");
}

#[tokio::test]
async fn container_step_stops_at_the_first_failing_command() {
    let docker = builder().await;
    let mut s = step("fail");
    let outcome = run_container(
        &docker,
        IMAGE,
        &cmds(&["echo one", "exit 3", "echo three"]),
        &s.ctx,
    )
    .await;
    let log = s.log_text();
    assert_eq!(
        outcome,
        Outcome::Failed {
            exit_code: 3,
            reason: "command exited with 3".to_string()
        },
        "log:\n{log}"
    );
    assert_contains(&log, "+ echo one\none\n+ exit 3\n");
    assert_lacks(&log, "three");
    assert_contains(&log, "hoist: command exited with 3\n");
    assert_eq!(
        containers_of(&docker, s.run).await,
        0,
        "container left behind"
    );
}

#[tokio::test]
async fn container_step_is_killed_at_its_timeout() {
    let docker = builder().await;
    let mut s = step("timeout");
    s.ctx.timeout = Some(Duration::from_secs(1));
    let started = Instant::now();
    let outcome = within(
        Duration::from_secs(10),
        "the timed-out step",
        run_container(&docker, IMAGE, &cmds(&["echo started", "sleep 30"]), &s.ctx),
    )
    .await;
    let took = started.elapsed();
    let log = s.log_text();
    assert_eq!(
        outcome,
        Outcome::TimedOut {
            after: Duration::from_secs(1)
        },
        "log:\n{log}"
    );
    // 1s of timeout plus container start and removal; generous for a loaded machine.
    assert!(took < Duration::from_secs(5), "took {took:?}; log:\n{log}");
    assert_contains(&log, "started\n");
    assert_contains(&log, "timed out after 1s");
    assert_eq!(
        containers_of(&docker, s.run).await,
        0,
        "container left behind"
    );
}

#[tokio::test]
async fn container_step_is_killed_when_the_run_is_cancelled() {
    let docker = builder().await;
    let mut s = step("cancel");
    s.ctx.timeout = None;
    let cancel = s.ctx.cancel.clone();
    let commands = cmds(&["echo started", "sleep 30", "echo never"]);
    let started = Instant::now();
    let (outcome, mut log) = within(Duration::from_secs(30), "the cancelled step", async {
        tokio::join!(
            run_container(&docker, IMAGE, &commands, &s.ctx),
            cancel_when_logged(&mut s.log, "started\n", &cancel),
        )
    })
    .await;
    log.push_str(&s.log_text());
    assert_eq!(outcome, Outcome::Cancelled, "log:\n{log}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_lacks(&log, "never");
    assert_contains(&log, "hoist: cancelled\n");
    assert_eq!(
        containers_of(&docker, s.run).await,
        0,
        "container left behind"
    );
}

#[tokio::test]
async fn container_of_a_dropped_step_is_removed() {
    let docker = builder().await;
    let mut s = step("dropped");
    let commands = cmds(&["echo started", "sleep 30"]);
    let never_cancelled = CancellationToken::new();
    tokio::select! {
        outcome = run_container(&docker, IMAGE, &commands, &s.ctx) => {
            panic!("the step ended by itself: {outcome:?}")
        }
        _ = cancel_when_logged(&mut s.log, "started\n", &never_cancelled) => {}
    }
    // The step's future is gone; its container must follow without anyone waiting for it.
    let (docker, run) = (&docker, s.run);
    wait_until(
        "the dropped step's container to be removed",
        10,
        || async move {
            match containers_of(docker, run).await {
                0 => Ok(()),
                n => Err(format!("the dropped step's container is still there ({n})")),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn container_step_masks_secrets() {
    let docker = builder().await;
    let mut s = step("secrets");
    s.ctx.secrets = vec![("DATABASE_URL".to_string(), DATABASE_URL.to_string())];
    let outcome = run_container(
        &docker,
        IMAGE,
        &cmds(&[
            "echo \"$DATABASE_URL\"",
            "echo \"url=${DATABASE_URL}!\" >&2",
            "env | grep DATABASE_URL",
        ]),
        &s.ctx,
    )
    .await;
    let log = s.log_text();
    assert_eq!(outcome, Outcome::Success, "log:\n{log}");
    assert_contains(&log, "+ echo \"$DATABASE_URL\"\n***\n");
    assert_contains(&log, "+ echo \"url=${DATABASE_URL}!\" >&2\nurl=***!\n");
    assert_contains(&log, "DATABASE_URL=***\n");
    assert_lacks(&log, "s3cr3t");
}

#[tokio::test]
async fn container_step_treats_a_hostile_branch_name_as_data() {
    let docker = builder().await;
    let mut s = step("injection");
    let marker = format!("/tmp/pwned-{}", s.run);
    let branch = pwned_branch(Path::new(&marker));
    s.env("HOIST_BRANCH", &branch);
    // Fails the step (sh -e) if the branch name ran as a command.
    let check = format!("test ! -e {marker}");
    let outcome = run_container(
        &docker,
        IMAGE,
        &cmds(&["echo \"$HOIST_BRANCH\"", "echo $HOIST_BRANCH", &check]),
        &s.ctx,
    )
    .await;
    let log = s.log_text();
    assert_eq!(outcome, Outcome::Success, "log:\n{log}");
    assert_contains(&log, &format!("+ echo \"$HOIST_BRANCH\"\n{branch}\n"));
    assert!(!Path::new(&marker).exists());
    let workspace_files: Vec<_> = std::fs::read_dir(s.workspace.path()).unwrap().collect();
    assert!(
        workspace_files.is_empty(),
        "the step wrote {workspace_files:?}"
    );
}

#[tokio::test]
async fn container_step_fails_clearly_when_the_image_is_missing() {
    let docker = builder().await;
    let mut s = step("missing-image");
    // On the lab's own registry, so that the pull fails at once instead of going online.
    let image = format!("{}/hoist-test/absent-{}:1", lab::REGISTRY, s.run);
    let outcome = within(
        Duration::from_secs(30),
        "the step with a missing image",
        run_container(&docker, &image, &cmds(&["true"]), &s.ctx),
    )
    .await;
    let Outcome::Error { reason } = outcome else {
        panic!("expected an error, got {outcome:?}");
    };
    assert!(
        reason.starts_with(&format!(
            "image {image} is not on the build engine and could not be pulled: "
        )),
        "{reason}"
    );
    assert_contains(&s.log_text(), "hoist: image ");
    assert_eq!(containers_of(&docker, s.run).await, 0);
}

#[tokio::test]
async fn leftovers_are_removed_by_agent_and_run_and_never_another_agents() {
    let docker = builder().await;
    let run = unique_run();
    // Two agents, each with a run of the same id, as two agents' stores both have a run 1.
    let (mine, theirs) = (format!("test-mine-{run}"), format!("test-theirs-{run}"));
    let other_run = unique_run();
    for (agent, run) in [
        (&mine, run),
        (&mine, run),
        (&mine, other_run),
        (&theirs, run),
    ] {
        let body = ContainerCreateBody {
            image: Some(IMAGE.to_string()),
            cmd: Some(cmds(&["sleep", "30"])),
            labels: Some(HashMap::from([
                (AGENT_LABEL.to_string(), agent.clone()),
                (RUN_LABEL.to_string(), run.to_string()),
            ])),
            ..Default::default()
        };
        docker.create_container(None, body).await.unwrap();
    }
    let removed = runner::remove_leftovers(&docker, &mine, Some(run))
        .await
        .unwrap();
    assert_eq!(removed.containers, 2);
    assert_eq!(containers_of(&docker, other_run).await, 1, "another run's");
    assert_eq!(containers_of(&docker, run).await, 1, "the other agent's");
    // At start: everything of this agent, still nothing of the other's.
    let removed = runner::remove_leftovers(&docker, &mine, None)
        .await
        .unwrap();
    assert_eq!(removed.containers, 1);
    assert_eq!(containers_of(&docker, run).await, 1, "the other agent's");
    let removed = runner::remove_leftovers(&docker, &theirs, None)
        .await
        .unwrap();
    assert_eq!(removed.containers, 1);
    assert_eq!(containers_of(&docker, run).await, 0);
}

// ---- shell steps ----

#[tokio::test]
async fn shell_step_passes_in_the_workspace_with_a_clean_env() {
    let mut s = step("shell-pass");
    std::fs::write(
        s.workspace.path().join("checkout.txt"),
        "from the checkout\n",
    )
    .unwrap();
    let outcome = run_shell(
        &cmds(&[
            "echo \"branch=$HOIST_BRANCH\"",
            "cat checkout.txt",
            "echo to-stderr >&2",
            "env",
        ]),
        &s.ctx,
    )
    .await;
    let log = s.log_text();
    assert_eq!(outcome, Outcome::Success, "log:\n{log}");
    assert_contains(&log, "+ echo \"branch=$HOIST_BRANCH\"\nbranch=main\n");
    assert_contains(&log, "from the checkout\n");
    assert_contains(&log, "+ echo to-stderr >&2\nto-stderr\n");
    // Cargo runs this test with CARGO_* variables set: the step must not inherit them.
    assert_lacks(&log, "CARGO_");
}

#[tokio::test]
async fn shell_step_stops_at_the_first_failing_command() {
    let mut s = step("shell-fail");
    let outcome = run_shell(&cmds(&["echo one", "exit 3", "echo three"]), &s.ctx).await;
    let log = s.log_text();
    assert_eq!(
        outcome,
        Outcome::Failed {
            exit_code: 3,
            reason: "command exited with 3".to_string()
        },
        "log:\n{log}"
    );
    assert_contains(&log, "+ echo one\none\n+ exit 3\n");
    assert_lacks(&log, "three");
}

/// Whether the process is gone (or dead and waiting to be reaped by its new parent).
fn process_ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// The pid a step printed as `bg=PID`.
fn background_pid(log: &str) -> u32 {
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix("bg="))
        .unwrap_or_else(|| panic!("no bg= line in the log:\n{log}"));
    line.trim().parse().unwrap()
}

async fn assert_process_ends(pid: u32) {
    wait_until("the step's process to end", 5, || async move {
        if process_ended(pid) {
            Ok(())
        } else {
            Err(format!("process {pid} of the step still runs"))
        }
    })
    .await;
}

#[tokio::test]
async fn shell_step_is_killed_with_its_children_at_its_timeout() {
    let mut s = step("shell-timeout");
    s.ctx.timeout = Some(Duration::from_secs(1));
    let started = Instant::now();
    let outcome = within(
        Duration::from_secs(10),
        "the timed-out shell step",
        run_shell(
            &cmds(&["sleep 30 &", "echo bg=$!", "echo started", "sleep 31"]),
            &s.ctx,
        ),
    )
    .await;
    let took = started.elapsed();
    let log = s.log_text();
    assert_eq!(
        outcome,
        Outcome::TimedOut {
            after: Duration::from_secs(1)
        },
        "log:\n{log}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_contains(&log, "timed out after 1s");
    assert_process_ends(background_pid(&log)).await;
}

#[tokio::test]
async fn shell_step_is_killed_when_the_run_is_cancelled() {
    let mut s = step("shell-cancel");
    s.ctx.timeout = None;
    let cancel = s.ctx.cancel.clone();
    let commands = cmds(&[
        "sleep 30 &",
        "echo bg=$!",
        "echo started",
        "sleep 31",
        "echo never",
    ]);
    let (outcome, mut log) = within(Duration::from_secs(30), "the cancelled shell step", async {
        tokio::join!(
            run_shell(&commands, &s.ctx),
            cancel_when_logged(&mut s.log, "started\n", &cancel),
        )
    })
    .await;
    log.push_str(&s.log_text());
    assert_eq!(outcome, Outcome::Cancelled, "log:\n{log}");
    assert_lacks(&log, "never");
    assert_contains(&log, "hoist: cancelled\n");
    assert_process_ends(background_pid(&log)).await;
}

#[tokio::test]
async fn shell_step_masks_secrets() {
    let mut s = step("shell-secrets");
    s.ctx.secrets = vec![("DATABASE_URL".to_string(), DATABASE_URL.to_string())];
    let outcome = run_shell(
        &cmds(&["echo \"$DATABASE_URL\"", "env | grep DATABASE_URL"]),
        &s.ctx,
    )
    .await;
    let log = s.log_text();
    assert_eq!(outcome, Outcome::Success, "log:\n{log}");
    assert_contains(&log, "+ echo \"$DATABASE_URL\"\n***\n");
    assert_contains(&log, "DATABASE_URL=***\n");
    assert_lacks(&log, "s3cr3t");
}

#[tokio::test]
async fn shell_step_treats_a_hostile_branch_name_as_data() {
    let mut s = step("shell-injection");
    let marker = std::env::temp_dir().join(format!("pwned-{}", s.run));
    let branch = pwned_branch(&marker);
    s.env("HOIST_BRANCH", &branch);
    let outcome = run_shell(
        &cmds(&["echo \"$HOIST_BRANCH\"", "echo $HOIST_BRANCH"]),
        &s.ctx,
    )
    .await;
    let log = s.log_text();
    assert_eq!(outcome, Outcome::Success, "log:\n{log}");
    assert_contains(&log, &format!("+ echo \"$HOIST_BRANCH\"\n{branch}\n"));
    assert!(!marker.exists(), "the branch name ran as a command");
    let workspace_files: Vec<_> = std::fs::read_dir(s.workspace.path()).unwrap().collect();
    assert!(
        workspace_files.is_empty(),
        "the step wrote {workspace_files:?}"
    );
}
