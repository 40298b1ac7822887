//! Taking the wheel (issue 11, items 4, 5 and 7): an instant rollback (`--now`) of three
//! hosts, a rollback limited to some hosts (`--host`), aborting a deployment during a health
//! wait, cancelling a run during its deploy step, and aborting one that has ended; through
//! the real binary, the real build engine and registry, and the lab's three hosts. Hosts are
//! read back with the docker CLI, independently of hoist; times come from the journal.
//!
//! Names (the repository `acme/wheel`, apps and containers `w11-*`, published ports from
//! `free_port`) are this file's own, so that other files' tests can run beside these.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::lab::{self, Clean, HOSTS, OnHost, docker_lenient, on_host};
use common::nginx::{Load, Nginx};
use common::{
    Agent, GitRepo, api, api_post, hoist_client, push_github, release, token_toml, wait_for,
};
use serde_json::{Value, json};

const REPO: &str = "acme/wheel";

fn agent(dir: &Path, repo: &GitRepo) -> Agent {
    agent_with(dir, repo, "")
}

/// An agent whose one repository is `repo`, with the lab's builder, registry and hosts, and
/// `extra` config (a `[balancer.NAME]`).
fn agent_with(dir: &Path, repo: &GitRepo, extra: &str) -> Agent {
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[builder]\ndocker = {:?}\n\
         [runner]\npoll_interval = \"0s\"\n\
         [[repo]]\nname = {REPO:?}\nurl = {:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\nhosts = {HOSTS:?}\n\
         [[registry]]\nhost = {:?}\ninsecure = true\n{}{}{extra}",
        dir.join("data"),
        lab::builder_url(),
        repo.bare,
        lab::REGISTRY,
        token_toml(),
        lab::hosts_toml()
    );
    Agent::launch(dir, &config)
}

/// The app's image: busybox httpd serving `/www` (with `/healthz`), stopped cleanly by TERM.
/// A release whose image holds `/www/sick-on-h2` never gets healthy on host h2 (its
/// container is told its host in `WHERE`): it drops its `/healthz` there.
const DOCKERFILE: &str =
    "FROM lab/busybox:1\nCOPY www /www\nCOPY start.sh /start.sh\nCMD [\"sh\", \"/start.sh\"]\n";
const START: &str = "if [ \"$WHERE\" = h2 ] && [ -f /www/sick-on-h2 ]; then rm -f /www/healthz; fi\n\
httpd -f -p 8080 -h /www &\npid=$!\n\
trap 'kill \"$pid\"; exit 0' TERM INT\nwait \"$pid\"\n";

/// How the deploy step rolls out and checks health.
struct Rollout {
    max_parallel: u32,
    bake: &'static str,
    healthy_for: &'static str,
    deadline: &'static str,
}

/// The pipeline of `app`: the image's build and its deploy `ship` to the three hosts
/// (container `app`, published on `port`; None: an engine-picked port behind balancer `edge`,
/// so that a host switches with no gap).
fn pipeline(app: &str, port: Option<u16>, r: &Rollout) -> String {
    let (ports, balancer) = match port {
        Some(p) => (format!("{p}:8080"), String::new()),
        None => (
            "8080".to_string(),
            "      balancer: { name: edge, port: 8080, check: /healthz, drain: 500ms }\n"
                .to_string(),
        ),
    };
    format!(
        "app: {app}\nsteps:\n\
         \x20 - name: build\n    build:\n      context: .\n      \
         repository: {registry}/hoist-e2e/{app}\n      tags: [\"${{commit_short}}\"]\n\
         \x20 - name: ship\n    deploy:\n      image: build\n      \
         hosts: [h1, h2, h3]\n      container:\n        name: {app}\n        \
         ports: [\"{ports}\"]\n        env: {{ WHERE: \"${{host}}\" }}\n      health:\n        \
         http: {{ port: 8080, path: /healthz }}\n        \
         interval: 200ms\n        timeout: 1s\n        healthy_for: {healthy_for}\n        deadline: {deadline}\n      \
         rollout:\n        max_parallel: {max_parallel}\n        bake: {bake}\n        keep: 3\n{balancer}",
        registry = lab::REGISTRY,
        healthy_for = r.healthy_for,
        deadline = r.deadline,
        max_parallel = r.max_parallel,
        bake = r.bake,
    )
}

/// Every file of a commit; `sick_on_h2` makes the release fail its health on h2.
fn files<'a>(pipeline: &'a str, version: &'a str, sick_on_h2: bool) -> Vec<(&'a str, &'a str)> {
    let mut f = vec![
        (".hoist.yml", pipeline),
        ("Dockerfile", DOCKERFILE),
        ("start.sh", START),
        ("www/healthz", "ok\n"),
        ("www/version", version),
    ];
    if sick_on_h2 {
        f.push(("www/sick-on-h2", "yes\n"));
    }
    f
}

/// The id of the run a push of `commit` queued.
async fn push(agent: &Agent, commit: &str, message: &str) -> i64 {
    let answer = push_github(agent, REPO, "main", commit, message).await;
    answer["runs"][0]
        .as_i64()
        .unwrap_or_else(|| panic!("the push queued no run: {answer:#}"))
}

/// Wait (at most 300 s) until run `id` ended.
async fn run_end(agent: &Agent, id: i64) -> Value {
    wait_for(agent, &format!("/runs/{id}"), "ended", 300, |r| {
        !["queued", "running", "waiting"].contains(&r["status"].as_str().unwrap_or(""))
    })
    .await
}

/// Wait (at most `secs`) until deployment `id` has its verdict.
async fn deployment_end(agent: &Agent, id: i64, secs: u64) -> Value {
    wait_for(agent, &format!("/deployments/{id}"), "ended", secs, |d| {
        d["status"] != "running"
    })
    .await
}

/// The digest of release `number` of `app`.
async fn digest(agent: &Agent, app: &str, number: i64) -> String {
    release(agent, app, number).await["manifest_digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Host `h` runs release `number` of `app` (its digest `digest`), read with the docker CLI.
fn assert_host_on(h: &str, app: &str, number: i64, digest: &str) -> OnHost {
    let s = on_host(h, app);
    assert!(
        s.running && s.digests.contains(digest) && s.release == number.to_string(),
        "{h} should run release {number} of {app} ({digest}): {s:?}"
    );
    s
}

/// A journal time (RFC 3339).
fn at(v: &Value) -> SystemTime {
    humantime::parse_rfc3339_weak(v.as_str().unwrap_or_else(|| panic!("not a time: {v}"))).unwrap()
}

/// How long a deployment took, from the journal: its start to its verdict.
fn took(d: &Value) -> Duration {
    at(&d["finished_at"])
        .duration_since(at(&d["created_at"]))
        .unwrap()
}

/// The journal events of deployment `d` for `host` (None: the deployment's own).
fn events<'a>(d: &'a Value, host: Option<&str>) -> Vec<&'a Value> {
    d["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["host"].as_str() == host)
        .collect()
}

/// The one event of `host` named `step`.
fn event<'a>(d: &'a Value, host: Option<&str>, step: &str) -> &'a Value {
    let all = events(d, host);
    all.into_iter()
        .find(|e| e["step"] == step)
        .unwrap_or_else(|| panic!("no {step} for {host:?} in the journal: {d:#}"))
}

#[tokio::test]
async fn an_instant_rollback_starts_every_host_at_once_and_hosts_limit_a_rollback() {
    const APP: &str = "w11-now";
    let _clean = Clean::new(APP);
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let agent = agent(dir.path(), &repo);
    // Batches of one and a bake: today's rollback replays these; `--now` skips them.
    let rollout = Rollout {
        max_parallel: 1,
        bake: "2s",
        healthy_for: "1s",
        deadline: "20s",
    };
    let yml = pipeline(APP, Some(lab::free_port()), &rollout);

    // Releases 1 and 2, each rolled out: every host keeps release 1 stopped as APP-r1.
    for (n, version) in [(1, "one\n"), (2, "two\n")] {
        let c = repo.commit("main", version, &files(&yml, version, false));
        let run = run_end(&agent, push(&agent, &c, version).await).await;
        assert_eq!(run["status"], "success", "release {n}: {run:#}");
    }
    let (d1, d2) = (digest(&agent, APP, 1).await, digest(&agent, APP, 2).await);
    for h in HOSTS {
        assert_host_on(h, APP, 2, &d2);
    }

    // Today's rollback to 1 (batches of one, health, bake), through the CLI.
    let out = hoist_client(&agent, &["rollback", APP, "--to", "1"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let batched_id = api(&agent, &format!("/apps/{APP}/deployments")).await[0]["id"]
        .as_i64()
        .unwrap();
    let batched = api(&agent, &format!("/deployments/{batched_id}")).await;
    assert_eq!(batched["status"], "succeeded", "{batched:#}");
    for h in HOSTS {
        assert_host_on(h, APP, 1, &d1);
    }

    // Release 2's kept container on h3 is pruned by hand: `--now` pulls it by digest there.
    assert_eq!(on_host(h3(), &format!("{APP}-r2")).release, "2");
    docker_lenient(h3(), &["rm", "-f", &format!("{APP}-r2")]);

    // `--now` back to 2: every host at once, from its kept container.
    let out = hoist_client(&agent, &["rollback", APP, "--to", "2", "--now"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    // The CLI printed each host's progress as it happened, and the verdict.
    for h in HOSTS {
        for step in ["switching", "started", "healthy", "verified"] {
            assert!(
                out.stdout
                    .lines()
                    .any(|l| l.starts_with(h) && l.contains(step)),
                "no {step} line for {h} in:\n{}",
                out.stdout
            );
        }
    }
    assert!(out.stdout.contains(": succeeded"), "{}", out.stdout);
    let now_id = api(&agent, &format!("/apps/{APP}/deployments")).await[0]["id"]
        .as_i64()
        .unwrap();
    let now = api(&agent, &format!("/deployments/{now_id}")).await;
    assert_eq!(now["status"], "succeeded", "{now:#}");
    for h in HOSTS {
        assert_host_on(h, APP, 2, &d2);
        let row = now["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["host"] == h)
            .unwrap();
        // One batch, and every host read back on the target's digest.
        assert_eq!(row["batch"], 1, "{now:#}");
        assert_eq!(row["state"], "verified", "{now:#}");
        assert_eq!(row["read_back"], json!(d2), "{now:#}");
        let started = event(&now, Some(h), "started")["detail"]
            .as_str()
            .unwrap()
            .to_string();
        let from = if h == h3() {
            "(afresh: no kept container)"
        } else {
            "(its kept container)"
        };
        assert!(started.contains(from), "{h}: {started}");
    }
    assert!(
        events(&now, None).iter().all(|e| e["step"] != "bake"),
        "no bake: {now:#}"
    );
    // Its time is about one health pass (healthy_for 1s), far below the batched rollback's
    // three passes and its bake; both from the journal.
    let (t_now, t_batched) = (took(&now), took(&batched));
    eprintln!("rollback: batched {t_batched:?}, --now {t_now:?}");
    assert!(
        t_now * 2 < t_batched,
        "--now took {t_now:?}, the batched rollback {t_batched:?}"
    );
    assert!(
        t_now < Duration::from_secs(5),
        "--now took {t_now:?} for one 1 s health pass"
    );

    // `--host` limits a rollback: h1 and h3 go back to 1, h2 keeps its release 2 container.
    let h2_before = assert_host_on("h2", APP, 2, &d2);
    let out = hoist_client(
        &agent,
        &["rollback", APP, "--to", "1", "--host", "h1", "--host", "h3"],
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_host_on("h1", APP, 1, &d1);
    assert_host_on("h3", APP, 1, &d1);
    let h2_after = assert_host_on("h2", APP, 2, &d2);
    assert_eq!(h2_before.id, h2_after.id, "h2 was not to be touched");
    let limited = api(&agent, &format!("/apps/{APP}/deployments")).await[0].clone();
    let limited = api(&agent, &format!("/deployments/{}", limited["id"])).await;
    let journaled: Vec<&str> = limited["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(journaled, ["h1", "h3"], "{limited:#}");

    // A host the app does not have: 400, naming the app's hosts; nothing starts.
    let r = api_post(
        &agent,
        &format!("/apps/{APP}/rollback"),
        Some(json!({ "to": 2, "hosts": ["h1", "h9"] })),
    )
    .await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("h9") && msg.contains("h1, h2, h3"),
        "the message names the unknown host and the app's hosts: {msg}"
    );
    assert_eq!(
        api(&agent, &format!("/apps/{APP}/deployments")).await[0]["id"],
        limited["id"]
    );

    // `hoist deployments APP` lists all five (two rollouts, three rollbacks), newest first,
    // in aligned columns.
    let out = hoist_client(&agent, &["deployments", APP]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{}", out.stdout);
    let header = lines[0];
    // Left-aligned columns start where their header does; the right-aligned last one
    // (DURATION) ends every line at the same width.
    for l in &lines[1..] {
        assert_eq!(l.len(), header.len(), "ragged:\n{}", out.stdout);
    }
    for col in ["APP", "KIND", "FROM -> TO", "STATUS", "STARTED"] {
        let at = header
            .find(col)
            .unwrap_or_else(|| panic!("no {col}: {header}"));
        for l in &lines[1..] {
            let before = l.as_bytes()[at - 1];
            assert!(
                before == b' ' && l.as_bytes()[at] != b' ',
                "column {col} does not line up:\n{}",
                out.stdout
            );
        }
    }
    let status_col = header.find("STATUS").unwrap();
    for l in &lines[1..] {
        assert_eq!(
            &l[status_col..status_col + 9],
            "succeeded",
            "{}",
            out.stdout
        );
    }
    assert!(
        lines[2].contains(&format!(" {now_id}  {APP}  rollback  1 -> 2")),
        "{}",
        out.stdout
    );

    // `hoist deployment ID`: per host its timeline and its chain of custody.
    let out = hoist_client(&agent, &["deployment", &now_id.to_string()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for h in HOSTS {
        assert!(
            out.stdout.contains(&format!("\n{h} (batch 1): verified")),
            "{}",
            out.stdout
        );
    }
    assert!(
        out.stdout
            .contains(&format!("read back {d2}: the same image")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("healthy"), "{}", out.stdout);
}

fn h3() -> &'static str {
    HOSTS[2]
}

/// A release of `app` that never gets healthy on h2, rolled out host by host with a long
/// health deadline; returns (agent's run id, deployment id) once h2's health wait runs.
async fn stuck_on_h2(agent: &Agent, repo: &GitRepo, yml: &str, app: &str) -> (i64, i64) {
    let c = repo.commit("main", "sick", &files(yml, "sick\n", true));
    let run = push(agent, &c, "sick").await;
    let d = wait_for(
        agent,
        &format!("/apps/{app}/deployments"),
        "a deployment of release 2 whose h2 waits for health",
        180,
        |list| list[0]["to_release"] == 2 && list[0]["status"] == "running",
    )
    .await[0]["id"]
        .as_i64()
        .unwrap();
    wait_for(
        agent,
        &format!("/deployments/{d}"),
        "h2 started (its health wait running)",
        60,
        |d| {
            d["hosts"].as_array().is_some_and(|hs| {
                hs.iter()
                    .any(|h| h["host"] == "h2" && h["state"] == "started")
            })
        },
    )
    .await;
    (run, d)
}

/// After an abort: h1 and h2 were touched and are back on release 1 (read back), h3 was
/// never touched (same container); the revert was quick. `asked` is when the abort was asked;
/// `drain` the balancer's (a revert waits it out before B leaves), zero without one.
async fn assert_reverted(
    agent: &Agent,
    app: &str,
    d: &Value,
    before: &[OnHost],
    asked: SystemTime,
    drain: Duration,
) {
    let d1 = digest(agent, app, 1).await;
    for h in ["h1", "h2"] {
        assert_host_on(h, app, 1, &d1);
        let row = d["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["host"] == h)
            .unwrap();
        assert_eq!(row["state"], "reverted", "{d:#}");
        assert_eq!(row["read_back"], json!(d1), "{d:#}");
    }
    let h3 = assert_host_on("h3", app, 1, &d1);
    assert_eq!(h3.id, before[2].id, "h3 was never touched");
    // From the journal: the forward path stopped within one health interval (200 ms) of the
    // ask (plus the request's own way), and each host was reverted within its revert's own
    // health time (healthy_for 400 ms and its checks) plus the balancer's drain and the
    // container actions (2 s: stop, rename, start, remove on a loaded machine).
    let stopped = at(&event(d, None, "aborted")["at"]);
    let waited = stopped.duration_since(asked).unwrap_or_default();
    eprintln!("{app}: the forward path stopped {waited:?} after the abort was asked");
    assert!(
        waited < Duration::from_millis(200 + 800),
        "the health wait went on for {waited:?} after the abort"
    );
    for h in ["h1", "h2"] {
        let reverted = event(d, Some(h), "reverted");
        let detail = reverted["detail"].as_str().unwrap();
        let health: Duration = detail
            .split("healthy in ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|t| humantime::parse_duration(t).ok())
            .unwrap_or_else(|| panic!("the revert's health time is journaled: {detail}"));
        let took = at(&reverted["at"]).duration_since(stopped).unwrap();
        eprintln!("{app}: {h} reverted {took:?} after that; its health took {health:?}");
        assert!(
            took < health + drain + Duration::from_millis(200 + 2000),
            "{h} reverted {took:?} after the abort; its health took {health:?}"
        );
    }
}

#[tokio::test]
async fn an_abort_during_a_health_wait_reverts_every_touched_host_at_once() {
    const APP: &str = "w11-abort";
    let _clean = Clean::new(APP);
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let agent = agent(dir.path(), &repo);
    let rollout = Rollout {
        max_parallel: 1,
        bake: "0s",
        healthy_for: "400ms",
        deadline: "120s",
    };
    let yml = pipeline(APP, Some(lab::free_port()), &rollout);
    let c = repo.commit("main", "one", &files(&yml, "one\n", false));
    let run = run_end(&agent, push(&agent, &c, "one").await).await;
    assert_eq!(run["status"], "success", "{run:#}");
    let before: Vec<OnHost> = HOSTS.iter().map(|h| on_host(h, APP)).collect();

    // Unknown: 404.
    let r = api_post(&agent, "/deployments/999999/abort", None).await;
    assert_eq!(r.status(), 404);

    let (run, id) = stuck_on_h2(&agent, &repo, &yml, APP).await;
    let asked = SystemTime::now();
    let out = hoist_client(&agent, &["abort", &id.to_string()]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("aborted by e2e"), "{}", out.stderr);
    let d = deployment_end(&agent, id, 60).await;
    assert_eq!(d["status"], "aborted", "{d:#}");
    assert_eq!(d["reason"], "aborted by e2e", "{d:#}");
    assert_reverted(&agent, APP, &d, &before, asked, Duration::ZERO).await;
    // The run whose deploy step it was failed, saying so.
    let run = run_end(&agent, run).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert!(
        run["reason"].as_str().unwrap_or("").contains("aborted"),
        "{run:#}"
    );

    // Aborting it again: 409, saying it has ended.
    let r = api_post(&agent, &format!("/deployments/{id}/abort"), None).await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["error"],
        format!(
            "deployment {id} has already ended (aborted); there is nothing to abort (`hoist rollback` moves the app back)"
        )
    );
    let out = hoist_client(&agent, &["abort", &id.to_string()]);
    assert_eq!(out.code, Some(2), "{}", out.stdout);
    assert!(out.stderr.contains("already ended"), "{}", out.stderr);
}

#[tokio::test]
async fn cancelling_a_run_during_its_deploy_step_aborts_the_deployment() {
    const APP: &str = "w11-cancel";
    let _clean = Clean::new(APP);
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let agent = agent(dir.path(), &repo);
    let rollout = Rollout {
        max_parallel: 1,
        bake: "0s",
        healthy_for: "400ms",
        deadline: "120s",
    };
    let yml = pipeline(APP, Some(lab::free_port()), &rollout);
    let c = repo.commit("main", "one", &files(&yml, "one\n", false));
    let run = run_end(&agent, push(&agent, &c, "one").await).await;
    assert_eq!(run["status"], "success", "{run:#}");
    let before: Vec<OnHost> = HOSTS.iter().map(|h| on_host(h, APP)).collect();

    let (run, id) = stuck_on_h2(&agent, &repo, &yml, APP).await;
    let asked = SystemTime::now();
    let r = api_post(&agent, &format!("/runs/{run}/cancel"), None).await;
    assert!(r.status().is_success(), "{}", r.status());
    let d = deployment_end(&agent, id, 60).await;
    assert_eq!(d["status"], "aborted", "{d:#}");
    assert_eq!(
        d["reason"],
        format!("aborted by run {run} (the run was cancelled)"),
        "{d:#}"
    );
    assert_reverted(&agent, APP, &d, &before, asked, Duration::ZERO).await;
    let run = run_end(&agent, run).await;
    assert_eq!(run["status"], "cancelled", "{run:#}");
}

#[tokio::test]
async fn an_abort_behind_nginx_fails_no_request() {
    const APP: &str = "w11-edge";
    let _clean = Clean::new(APP);
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::new(dir.path());
    let nginx = Nginx::start(dir.path(), APP);
    let agent = agent_with(dir.path(), &repo, &nginx.toml("edge", None));
    let rollout = Rollout {
        max_parallel: 1,
        bake: "0s",
        healthy_for: "400ms",
        deadline: "120s",
    };
    let yml = pipeline(APP, None, &rollout);
    let c = repo.commit("main", "one", &files(&yml, "one\n", false));
    let run = run_end(&agent, push(&agent, &c, "one").await).await;
    assert_eq!(run["status"], "success", "{run:#}");
    let before: Vec<OnHost> = HOSTS.iter().map(|h| on_host(h, APP)).collect();

    // Load through nginx from before release 2 starts until the abort's verdict.
    let load = Load::start(format!("{}/version", nginx.url()));
    load.wait_some().await;
    let (_, id) = stuck_on_h2(&agent, &repo, &yml, APP).await;
    let asked = SystemTime::now();
    let r = api_post(&agent, &format!("/deployments/{id}/abort"), None).await;
    assert_eq!(r.status(), 202);
    let d = deployment_end(&agent, id, 60).await;
    let (requests, failures) = load.finish().await;
    assert_eq!(d["status"], "aborted", "{d:#}");
    assert_eq!(d["reason"], "aborted by e2e", "{d:#}");
    assert_reverted(&agent, APP, &d, &before, asked, Duration::from_millis(500)).await;
    eprintln!(
        "{APP}: {requests} requests through nginx, {} failed, {} retried by nginx",
        failures.len(),
        nginx.retries().len()
    );
    assert!(requests > 20, "the load client made {requests} requests");
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        nginx.retries().is_empty(),
        "nginx retried: {:?}",
        nginx.retries()
    );
}
