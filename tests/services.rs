//! A pipeline's `services:` (issue 15): containers beside the steps on the run's own network,
//! `ready` waits, their output in the run's log (masked), and nothing left on the builder
//! afterwards, also after kill -9 of the agent. The real binary against the lab's builder.
//!
//! Every agent has an id of its own (`data_dir/agent-id`) on everything it creates on the
//! builder: these tests look for leftovers by that label, so tests running at the same time
//! (here or in another checkout on the same lab) never see each other's containers.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::lab;
use common::{Agent, GitRepo, api, hoist, push_github, run_log, token_toml, wait_for};
use serde_json::Value;

const REPO: &str = "acme/services";
/// A secret the repository may use; the services below print it.
const SECRET_VALUE: &str = "s15-sekrit-db-pw";

fn agent(dir: &Path, repo: &GitRepo) -> Agent {
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n[builder]\ndocker = {:?}\n\n\
         [runner]\npoll_interval = \"0s\"\n\n\
         [[repo]]\nname = {REPO:?}\nurl = {:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\n\
         secrets = [\"DB_PASSWORD\"]\n\n[secrets]\nDB_PASSWORD = \"file:{}\"\n\n{}",
        dir.join("data"),
        lab::builder_url(),
        repo.bare,
        dir.join("db-password").display(),
        token_toml(),
    );
    std::fs::write(dir.join("db-password"), SECRET_VALUE).unwrap();
    Agent::launch(dir, &config)
}

/// The agent's id, as it labels what it creates on the builder.
fn agent_id(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("data").join("agent-id"))
        .expect("the agent keeps its id in data_dir/agent-id")
        .trim()
        .to_string()
}

/// Containers (all states) and networks on the builder carrying `label`.
fn on_builder(label: &str) -> (String, String) {
    let filter = format!("label={label}");
    let containers = lab::docker(lab::BUILDER, &["ps", "-aq", "--filter", &filter]);
    let networks = lab::docker(lab::BUILDER, &["network", "ls", "-q", "--filter", &filter]);
    (containers, networks)
}

fn assert_nothing_left(label: &str) {
    let (containers, networks) = on_builder(label);
    assert_eq!(containers, "", "containers labelled {label} are left");
    assert_eq!(networks, "", "networks labelled {label} are left");
}

async fn push(agent: &Agent, commit: &str) -> i64 {
    push_github(agent, REPO, "main", commit, "services").await["runs"][0]
        .as_i64()
        .unwrap()
}

async fn wait_end(agent: &Agent, id: i64) -> Value {
    wait_for(agent, &format!("/runs/{id}"), "finished", 120, |r| {
        !["queued", "running"].contains(&r["status"].as_str().unwrap_or(""))
    })
    .await
}

/// A service that listens only after 2 s, answering every connection with a line; the step
/// connects to it by name at once, so it fails unless `ready` held it back.
const REACH: &str = r#"app: s15-reach
services:
  - name: db
    image: lab/busybox:1
    command: ["sh", "-c", "echo db starts for $DB_USER; sleep 2; echo db listens; exec nc -ll -p 3306 -e echo hello-from-db"]
    env: { DB_USER: "user-${branch}" }
    ready: { tcp: 3306, deadline: 30s }
steps:
  - name: test
    image: lab/busybox:1
    commands:
      - nc db 3306 </dev/null > answer.txt
      - grep hello-from-db answer.txt
"#;

#[tokio::test]
async fn a_step_reaches_a_service_by_name_once_ready_and_its_output_is_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let agent = agent(dir.path(), &repo);
    let commit = repo.commit("main", "reach", &[(".hoist.yml", REACH)]);
    let started = Instant::now();
    let id = push(&agent, &commit).await;
    let run = wait_end(&agent, id).await;
    let log = run_log(&agent, id).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the step cannot have waited for the service"
    );
    // The service's own output, under its own heading, with its env filled in.
    for line in [
        "── service db (lab/busybox:1)",
        "db starts for user-main",
        "db listens",
    ] {
        assert!(log.contains(line), "{line:?} is not in the log:\n{log}");
    }
    // Through the API, service chunks sit below the steps' indices.
    let chunks = api(&agent, &format!("/runs/{id}/logs")).await;
    assert!(
        chunks
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["step"] == -1 && c["data"].as_str().unwrap().contains("db listens")),
        "{chunks:#}"
    );
    assert_nothing_left(&format!("hoist.agent={}", agent_id(dir.path())));
}

const NEVER: &str = r#"app: s15-never
services:
  - name: cache
    image: lab/busybox:1
    command: ["sh", "-c", "echo cache warming up forever; exec sleep 120"]
    ready: { tcp: 6379, deadline: 2s }
steps:
  - name: test
    image: lab/busybox:1
    commands: ["echo must not run"]
"#;

const EXITS: &str = r#"app: s15-exits
services:
  - name: broken
    image: lab/busybox:1
    command: ["sh", "-c", "echo bad config; exit 3"]
    ready: { tcp: 5432, deadline: 90s }
steps:
  - name: test
    image: lab/busybox:1
    commands: ["echo must not run"]
"#;

#[tokio::test]
async fn a_service_that_never_becomes_ready_or_exits_fails_the_run_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let agent = agent(dir.path(), &repo);
    let label = format!("hoist.agent={}", agent_id(dir.path()));

    let commit = repo.commit("main", "never", &[(".hoist.yml", NEVER)]);
    let id = push(&agent, &commit).await;
    let run = wait_end(&agent, id).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let reason = run["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("service cache did not accept connections on tcp port 6379 within 2s")
            && reason.contains("cache warming up forever"),
        "{reason}"
    );
    assert_eq!(run["steps"][0]["status"], "skipped", "{run:#}");
    assert!(!run_log(&agent, id).await.contains("must not run"));
    assert_nothing_left(&label);

    // One that exits fails the run at once, not at its deadline (90 s).
    let commit = repo.commit("main", "exits", &[(".hoist.yml", EXITS)]);
    let started = Instant::now();
    let id = push(&agent, &commit).await;
    let run = wait_end(&agent, id).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(run["status"], "failed", "{run:#}");
    let reason = run["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(
            "service broken exited with code 3 before it accepted connections on tcp port 5432"
        ) && reason.contains("bad config"),
        "{reason}"
    );
    assert_nothing_left(&label);
}

const LEAKY: &str = r#"app: s15-leaky
services:
  - name: db
    image: lab/busybox:1
    command: ["sh", "-c", "echo root password is s15-sekrit-db-pw; exec nc -ll -p 3306 -e echo hi"]
    ready: { tcp: 3306, deadline: 30s }
steps:
  - name: test
    image: lab/busybox:1
    commands: ["nc db 3306 </dev/null"]
"#;

#[tokio::test]
async fn a_secret_a_service_prints_is_masked_in_the_run_log() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let agent = agent(dir.path(), &repo);
    let commit = repo.commit("main", "leaky", &[(".hoist.yml", LEAKY)]);
    let id = push(&agent, &commit).await;
    let run = wait_end(&agent, id).await;
    let log = run_log(&agent, id).await;
    assert_eq!(run["status"], "success", "{run:#}\n{log}");
    assert!(log.contains("root password is ***"), "{log}");
    assert!(!log.contains(SECRET_VALUE), "{log}");
    assert_nothing_left(&format!("hoist.agent={}", agent_id(dir.path())));
}

const SLOW: &str = r#"app: s15-slow
services:
  - name: db
    image: lab/busybox:1
    command: ["nc", "-ll", "-p", "3306", "-e", "echo hi"]
    ready: { tcp: 3306, deadline: 30s }
steps:
  - name: test
    image: lab/busybox:1
    commands: ["nc db 3306 </dev/null", "sleep 3", "echo finished"]
"#;

#[tokio::test]
async fn kill_9_mid_run_leaves_nothing_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let commit = repo.commit("main", "slow", &[(".hoist.yml", SLOW)]);
    let mut first = agent(dir.path(), &repo);
    let label = format!("hoist.agent={}", agent_id(dir.path()));
    let id = push(&first, &commit).await;
    wait_for(
        &first,
        &format!("/runs/{id}"),
        "running its step",
        60,
        |r| r["steps"][0]["status"] == "running",
    )
    .await;
    let (before, network) = on_builder(&label);
    assert_eq!(
        before.lines().count(),
        2,
        "the service and the step container: {before}"
    );
    assert_eq!(network.lines().count(), 1, "the run's network: {network}");
    first.kill9();

    let second = agent(dir.path(), &repo);
    let run = wait_end(&second, id).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(run["attempts"], 2);
    // The killed agent's containers and network were removed by the restart (the second
    // attempt made its own, of the same names), and the second attempt's after it ended.
    for id in before.lines().chain(network.lines()) {
        let seen = lab::docker_lenient(lab::BUILDER, &["inspect", "--format", "{{.Id}}", id]);
        assert_eq!(seen, "", "{id} of the killed agent is still there");
    }
    assert_nothing_left(&label);
}

#[tokio::test]
async fn hoist_run_starts_services_and_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    repo.commit("main", "local", &[(".hoist.yml", REACH)]);
    let out = hoist(&[
        "run",
        "--docker",
        &lab::builder_url(),
        repo.work.to_str().unwrap(),
    ]);
    let text = &out.stdout;
    assert_eq!(out.code, Some(0), "{text}\n{}", out.stderr);
    assert!(
        text.contains("db | db listens") && text.contains("── all steps passed"),
        "{text}"
    );
    let network = text
        .lines()
        .find_map(|l| l.strip_prefix("── services started on network "))
        .unwrap_or_else(|| panic!("no network named in:\n{text}"));
    let owner = network
        .strip_prefix("hoist-")
        .and_then(|n| n.strip_suffix("-run-local"))
        .unwrap_or_else(|| panic!("unexpected network name {network}"));
    assert_nothing_left(&format!("hoist.agent={owner}"));
}

const HANGS: &str = r#"app: s15-hangs
services:
  - name: db
    image: lab/busybox:1
    command: ["nc", "-ll", "-p", "3306", "-e", "echo hi"]
    ready: { tcp: 3306, deadline: 30s }
steps:
  - name: test
    image: lab/busybox:1
    commands: ["sleep 60"]
    timeout: 2s
"#;

#[tokio::test]
async fn a_step_timeout_and_a_cancel_leave_nothing_either() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let agent = agent(dir.path(), &repo);
    let label = format!("hoist.agent={}", agent_id(dir.path()));

    let commit = repo.commit("main", "times out", &[(".hoist.yml", HANGS)]);
    let id = push(&agent, &commit).await;
    let run = wait_end(&agent, id).await;
    assert_eq!(run["steps"][0]["status"], "timed_out", "{run:#}");
    assert_nothing_left(&label);

    let without_timeout = HANGS.replace("    timeout: 2s\n", "");
    let commit = repo.commit("main", "cancelled", &[(".hoist.yml", &without_timeout)]);
    let id = push(&agent, &commit).await;
    wait_for(
        &agent,
        &format!("/runs/{id}"),
        "running its step",
        60,
        |r| r["steps"][0]["status"] == "running",
    )
    .await;
    let answer = common::api_post(&agent, &format!("/runs/{id}/cancel"), None).await;
    assert!(answer.status().is_success(), "{}", answer.status());
    let run = wait_end(&agent, id).await;
    assert_eq!(run["status"], "cancelled", "{run:#}");
    assert_nothing_left(&label);
}

const STEADY: &str = r#"app: s15-steady
steps:
  - name: test
    image: lab/busybox:1
    commands: ["sleep 6", "echo steady finished"]
"#;

/// Two agents on one builder both number their runs from 1: the restart of one must not
/// remove the other's running step (it did, when recovery went by `hoist.run` alone).
#[tokio::test]
async fn an_agents_restart_leaves_another_agents_run_alone() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (repo_a, repo_b) = (GitRepo::new(dir_a.path()), GitRepo::new(dir_b.path()));
    let a = agent(dir_a.path(), &repo_a);
    let mut b = agent(dir_b.path(), &repo_b);
    assert_ne!(agent_id(dir_a.path()), agent_id(dir_b.path()));
    let commit_a = repo_a.commit("main", "steady", &[(".hoist.yml", STEADY)]);
    let commit_b = repo_b.commit("main", "slow", &[(".hoist.yml", SLOW)]);
    let id_a = push(&a, &commit_a).await;
    let id_b = push(&b, &commit_b).await;
    assert_eq!(id_a, id_b, "both agents' first run");
    for (agent, id) in [(&a, id_a), (&b, id_b)] {
        wait_for(agent, &format!("/runs/{id}"), "running its step", 60, |r| {
            r["steps"][0]["status"] == "running"
        })
        .await;
    }
    b.kill9();
    // Its recovery runs before it listens: done once it answers.
    let b = agent(dir_b.path(), &repo_b);
    let run_a = wait_end(&a, id_a).await;
    assert_eq!(run_a["status"], "success", "{run_a:#}");
    assert!(run_log(&a, id_a).await.contains("steady finished"));
    let run_b = wait_end(&b, id_b).await;
    assert_eq!(run_b["status"], "success", "{run_b:#}");
    assert_nothing_left(&format!("hoist.agent={}", agent_id(dir_a.path())));
    assert_nothing_left(&format!("hoist.agent={}", agent_id(dir_b.path())));
}

/// An image without `sh`: its `ready` cannot be probed, and the run says so at once.
#[tokio::test]
async fn a_service_whose_image_has_no_shell_fails_ready_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let context = dir.path().join("no-sh");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        "FROM lab/busybox:1 AS b\nFROM scratch\nCOPY --from=b /bin/busybox /bin/busybox\n",
    )
    .unwrap();
    let image = "hoist-test/s15-no-sh:1";
    lab::docker(
        lab::BUILDER,
        &["build", "-q", "-t", image, context.to_str().unwrap()],
    );
    let yml = format!(
        "app: s15-no-sh\nservices:\n  - name: bare\n    image: {image}\n    \
         command: [\"/bin/busybox\", \"nc\", \"-ll\", \"-p\", \"3306\", \"-e\", \"/bin/busybox\", \"echo\", \"hi\"]\n    \
         ready: {{ tcp: 3306, deadline: 90s }}\n\
         steps:\n  - name: test\n    image: lab/busybox:1\n    commands: [\"echo must not run\"]\n"
    );
    let repo = GitRepo::new(dir.path());
    let agent = agent(dir.path(), &repo);
    let commit = repo.commit("main", "no sh", &[(".hoist.yml", &yml)]);
    let started = Instant::now();
    let id = push(&agent, &commit).await;
    let run = wait_end(&agent, id).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it waited for the deadline"
    );
    assert_eq!(run["status"], "failed", "{run:#}");
    let reason = run["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("service bare: cannot check `ready` (tcp 3306)")
            && reason.contains("use an image with a shell"),
        "{reason}"
    );
    assert_nothing_left(&format!("hoist.agent={}", agent_id(dir.path())));
}

/// Ctrl-C during `hoist run`'s step: the step is killed, and the services and the network are
/// removed before it exits.
#[test]
fn hoist_run_removes_its_services_on_ctrl_c() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let yml = SLOW.replace("\"sleep 3\"", "\"sleep 60\"");
    repo.commit("main", "local", &[(".hoist.yml", &yml)]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(["run", "--docker", &lab::builder_url()])
        .arg(&repo.work)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let owner = format!("hoist.agent=local-{}", child.id());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Bounded by the service's ready deadline (30 s): hoist ends the run by itself past it.
    let step_started = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.starts_with("+ sleep 60"));
    assert!(step_started, "the step never started");
    // Read on, so that hoist's output never meets a closed pipe.
    let reader = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let (containers, networks) = on_builder(&owner);
    assert_eq!(containers.lines().count(), 2, "the service and the step");
    assert_eq!(networks.lines().count(), 1);
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = common::wait_until_blocking("hoist run to exit after Ctrl-C", 30, || {
        child.try_wait().unwrap().ok_or("still running")
    });
    assert_eq!(status.code(), Some(1));
    let rest = reader.join().unwrap().join("\n");
    assert!(rest.contains("cancelled"), "{rest}");
    assert_nothing_left(&owner);
}
