//! Faults (issue 14): whatever fails and whenever, every host ends on one verified release.
//! Each test sets up a fault's aftermath on the real lab (builder, registry, a host) and checks
//! the hosts with the docker CLI, independently of hoist.
//!
//! Names (the repository `acme/faults`, apps and containers `f14-*`) are this file's own, so
//! that other files' tests can run beside these.

mod common;

use std::path::Path;

use common::lab::{self, Clean, on_host};
use common::{
    Agent, GitRepo, api, api_post, git, git_out, push_github, push_github_ref, release, token_toml,
    wait_for,
};
use serde_json::Value;

const REPO: &str = "acme/faults";

/// An agent whose one repository is `repo`, with the lab's builder, registry and hosts.
fn agent(dir: &Path, repo: &GitRepo) -> Agent {
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[builder]\ndocker = {:?}\n\
         [runner]\npoll_interval = \"0s\"\n\
         [[repo]]\nname = {REPO:?}\nurl = {:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\nhosts = [\"h3\"]\ntrusted = true\n\
         [[registry]]\nhost = {:?}\ninsecure = true\n{}{}",
        dir.join("data"),
        lab::builder_url(),
        repo.bare,
        lab::REGISTRY,
        token_toml(),
        lab::hosts_toml()
    );
    Agent::launch(dir, &config)
}

/// `app` built from the commit and deployed to h3 on an engine-picked port.
fn pipeline(app: &str) -> String {
    pipeline_with(app, "")
}

/// `pipeline`, with `extra` lines in the deploy step (its `hooks:`).
fn pipeline_with(app: &str, extra: &str) -> String {
    format!(
        "app: {app}\nsteps:\n\
         \x20 - name: build\n    build:\n      context: .\n      \
         repository: {registry}/hoist-e2e/{app}\n      tags: [\"${{commit_short}}\"]\n\
         \x20 - name: ship\n    deploy:\n      image: build\n      hosts: [h3]\n      \
         container:\n        name: {app}\n        ports: [\"8080\"]\n      \
         health:\n        http: {{ port: 8080, path: /healthz }}\n        \
         interval: 200ms\n        healthy_for: 200ms\n        deadline: 20s\n      \
         rollout:\n        keep: 3\n{extra}",
        registry = lab::REGISTRY,
    )
}

/// busybox httpd serving `/www`, under a shell that exits 1 when httpd ends: killing httpd
/// from inside is a crash, which the engine's restart policy (`unless-stopped`) restarts.
const DOCKERFILE: &str = "FROM lab/busybox:1\nCOPY www /www\n\
CMD [\"sh\", \"-c\", \"httpd -f -p 8080 -h /www & wait $!; exit 1\"]\nSTOPSIGNAL SIGKILL\n";

/// Push a commit of release `version` and wait (at most 300 s) for its run's end.
async fn release_of(agent: &Agent, repo: &GitRepo, yml: &str, version: &str) -> Value {
    let files = [
        (".hoist.yml", yml),
        ("Dockerfile", DOCKERFILE),
        ("www/healthz", "ok\n"),
        ("www/version", version),
    ];
    let commit = repo.commit("main", version, &files);
    let answer = push_github(agent, REPO, "main", &commit, version).await;
    let id = answer["runs"][0].as_i64().expect("a run");
    wait_for(agent, &format!("/runs/{id}"), "ended", 300, |r| {
        !["queued", "running", "waiting"].contains(&r["status"].as_str().unwrap_or(""))
    })
    .await
}

/// Defect 1: a deployment that never got its verdict (its lease lost, or its journal write
/// failed) stayed `running`; a later restart "recovered" it and reverted the hosts to its old
/// release, over what later deployments had verified since. Now recovery records it failed
/// and leaves the hosts alone.
#[tokio::test]
async fn a_stale_deployment_never_rolls_back_what_a_later_one_verified() {
    const APP: &str = "f14-stale";
    let _clean = Clean::new(APP);
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let mut agent = agent(dir.path(), &repo);
    let yml = pipeline(APP);
    for version in ["one\n", "two\n", "three\n"] {
        let run = release_of(&agent, &repo, &yml, version).await;
        assert_eq!(run["status"], "success", "{version}: {run:#}");
    }
    let d3 = release(&agent, APP, 3).await["manifest_digest"]
        .as_str()
        .unwrap()
        .to_string();
    let deployments = api(&agent, &format!("/apps/{APP}/deployments")).await;
    let of = |n: i64| {
        deployments
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["to_release"] == n)
            .unwrap_or_else(|| panic!("no deployment to release {n}: {deployments:#}"))["id"]
            .as_i64()
            .unwrap()
    };
    let (stale, latest) = (of(2), of(3));

    // The aftermath of the fault: release 2's deployment is still `running` in the journal
    // (every host journaled verified on 2), and release 3's deployment verified since.
    agent.terminate();
    let db = rusqlite::Connection::open(dir.path().join("data/hoist.db")).unwrap();
    db.execute(
        "UPDATE deployments SET status = 'running', reason = NULL, finished_at = NULL WHERE id = ?1",
        [stale],
    )
    .unwrap();
    drop(db);

    let agent = agent_again(dir.path());
    let resolved = wait_for(
        &agent,
        &format!("/deployments/{stale}"),
        "resolved",
        60,
        |d| d["status"] != "running",
    )
    .await;
    assert_eq!(resolved["status"], "failed", "{resolved:#}");
    let reason = resolved["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("deployment {latest} acted on {APP} since")),
        "{reason}"
    );
    // The host still runs release 3, the one the later deployment verified.
    let on = on_host("h3", APP);
    assert!(
        on.running && on.digests.contains(&d3) && on.release == "3",
        "h3 should still run release 3 ({d3}): {on:?}"
    );
    let latest = api(&agent, &format!("/deployments/{latest}")).await;
    assert_eq!(latest["status"], "succeeded", "{latest:#}");
}

/// Defect 10: a container the engine restarted once (its process crashed, the restart policy
/// brought it back) was "unhealthy" in `/apps/{app}/hosts` for ever after, though it served.
#[tokio::test]
async fn a_container_restarted_by_its_engine_is_healthy_again_once_it_serves() {
    const APP: &str = "f14-restart";
    let _clean = Clean::new(APP);
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let agent = agent(dir.path(), &repo);
    let run = release_of(&agent, &repo, &pipeline(APP), "one\n").await;
    assert_eq!(run["status"], "success", "{run:#}");
    let hosts = api(&agent, &format!("/apps/{APP}/hosts")).await;
    assert_eq!(hosts[0]["health"], "healthy", "{hosts:#}");

    // The app crashes: its engine restarts it.
    lab::docker("h3", &["exec", APP, "sh", "-c", "kill $(pidof httpd)"]);
    common::wait_until_blocking("the engine to restart the container", 30, || {
        let state = lab::docker_lenient(
            "h3",
            &[
                "inspect",
                APP,
                "--format",
                "{{.RestartCount}} {{.State.Running}}",
            ],
        );
        match state.split_once(' ') {
            Some((n, "true")) if n != "0" => Ok(()),
            _ => Err(format!("restart count and running: {state:?}")),
        }
    });
    let hosts = wait_for(
        &agent,
        &format!("/apps/{APP}/hosts"),
        "healthy again",
        20,
        |h| h[0]["health"] == "healthy",
    )
    .await;
    assert_eq!(hosts[0]["container"], "running", "{hosts:#}");
}

/// Defect 3: a second rollback asked for while one ran got 409, but had first replaced the
/// running one's hooks checkout: its hook, working in the checkout, found it gone.
#[tokio::test]
async fn a_refused_rollback_leaves_the_running_ones_checkout_alone() {
    const APP: &str = "f14-hooks";
    let _clean = Clean::new(APP);
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let agent = agent(dir.path(), &repo);
    // The hook works in its checkout before and after a pause.
    let yml = pipeline_with(
        APP,
        "      hooks:\n        before_host: [\"sh\", \"-c\", \"cat .hoist.yml >/dev/null && sleep 3 && cat .hoist.yml >/dev/null\"]\n",
    );
    for version in ["one\n", "two\n"] {
        let run = release_of(&agent, &repo, &yml, version).await;
        assert_eq!(run["status"], "success", "{version}: {run:#}");
    }

    let first = api_post(
        &agent,
        &format!("/apps/{APP}/rollback"),
        Some(serde_json::json!({"to": 1})),
    )
    .await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let second = api_post(
        &agent,
        &format!("/apps/{APP}/rollback"),
        Some(serde_json::json!({"to": 1})),
    )
    .await;
    assert_eq!(
        second.status(),
        409,
        "the app's lease is held by the first rollback"
    );

    let id = first["deployment"].as_i64().unwrap();
    let d = wait_for(&agent, &format!("/deployments/{id}"), "ended", 60, |d| {
        d["status"] != "running"
    })
    .await;
    assert_eq!(d["status"], "succeeded", "{d:#}");
    let on = on_host("h3", APP);
    assert!(
        on.running && on.release == "1",
        "h3 should run release 1: {on:?}"
    );
    // Each plan's checkout is gone with its deployment or its refusal.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("data/hooks"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "hooks checkouts left behind: {left:?}");
}

/// Defect 9: a git server that accepts the connection and never answers held the fetch, the
/// mirror's lock and `POST /repos/{owner}/{name}/runs` for good. Now libgit2's stall timeout
/// ends it with an error that names the remote.
#[tokio::test]
async fn a_git_server_that_never_answers_costs_one_timeout() {
    // A tarpit on loopback: accepts, reads, never writes; bounded to 60 s of life.
    let tarpit = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tarpit.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        tarpit.set_nonblocking(true).unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < until && held.len() < 64 {
            match tarpit.accept() {
                Ok((conn, _)) => held.push(conn),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[runner]\npoll_interval = \"0s\"\n\
         [[repo]]\nname = \"acme/tarpit\"\nurl = \"http://127.0.0.1:{port}/acme/tarpit.git\"\n\
         forge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\n{}",
        dir.path().join("data"),
        token_toml()
    );
    let agent = Agent::launch_with_env(dir.path(), &config, &[("HOIST_GIT_TIMEOUT", "2s".into())]);
    let began = std::time::Instant::now();
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        api_post(
            &agent,
            "/repos/acme/tarpit/runs",
            Some(serde_json::json!({"ref": "refs/heads/main"})),
        ),
    )
    .await
    .expect("POST /repos/acme/tarpit/runs answered within 30 s");
    let took = began.elapsed();
    assert_eq!(answer.status(), 502);
    let body = answer.text().await.unwrap();
    eprintln!("answered in {took:?}: {body}");
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    // The mirror's lock was given back: a second try answers the same way, as quickly.
    let again = api_post(
        &agent,
        "/repos/acme/tarpit/runs",
        Some(serde_json::json!({"ref": "refs/heads/main"})),
    )
    .await;
    assert_eq!(again.status(), 502);
}

/// Defect 8: a push of an annotated tag names the tag object (GitHub's and GitLab's `after`:
/// GitHub's changelog of 2021-10-01, "the push webhook payload provides a consistent
/// head_commit on tag creation", and the annotated-tag reports of buildbuddy#12752 and
/// open-build-service#13500), not a commit: the run failed. Now it is peeled to the commit.
#[tokio::test]
async fn an_annotated_tag_push_runs_the_commit_it_tags() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let agent = agent(dir.path(), &repo);
    let yml = "app: f14-tag\non: {tags: [\"v*\"]}\nsteps:\n  - name: hello\n    image: lab/busybox:1\n    \
               commands: [\"echo commit=$HOIST_COMMIT tag=$HOIST_TAG\"]\n";
    let commit = repo.commit("main", "tagged", &[(".hoist.yml", yml)]);
    git(
        &repo.work,
        &["tag", "-a", "v1.0.0", "-m", "release v1.0.0", &commit],
    );
    git(
        &repo.work,
        &[
            "push",
            "-q",
            repo.bare.to_str().unwrap(),
            "refs/tags/v1.0.0",
        ],
    );
    let tag_object = git_out(&repo.work, &["rev-parse", "refs/tags/v1.0.0"]);
    assert_ne!(
        tag_object, commit,
        "an annotated tag is an object of its own"
    );

    let answer = push_github_ref(&agent, REPO, "refs/tags/v1.0.0", &tag_object, "tagged").await;
    let id = answer["runs"][0].as_i64().expect("a run");
    let run = wait_for(&agent, &format!("/runs/{id}"), "ended", 120, |r| {
        !["queued", "running", "waiting"].contains(&r["status"].as_str().unwrap_or(""))
    })
    .await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(run["commit"], commit.as_str(), "{run:#}");
    let log = common::run_log(&agent, id).await;
    assert!(
        log.contains(&format!("commit={commit} tag=v1.0.0")),
        "{log}"
    );
}

/// The agent started again on the same data directory and config.
fn agent_again(dir: &Path) -> Agent {
    Agent::launch(dir, "")
}
