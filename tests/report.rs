//! Reporting back (issue 11, items 1-3): commit statuses on the five forges, notifications,
//! and the durable outbox that carries both. The real binary; the one fake is a forge's status
//! API (no forge runs here): a small axum server on 127.0.0.1:0 that records every request and
//! answers what the test tells it to. Runs use shell steps (no container, no host), except the
//! notification test, which needs a real deploy on the lab.
//!
//! What each forge documents, and what the fake checks (path, auth header, body):
//! - GitHub: <https://docs.github.com/en/rest/commits/statuses#create-a-commit-status>
//! - Gitea: <https://gitea.com/api/swagger#/repository/repoCreateStatus>
//! - Forgejo: <https://codeberg.org/api/swagger#/repository/repoCreateStatus>
//! - GitLab: <https://docs.gitlab.com/api/commits/#set-the-pipeline-status-of-a-commit>
//! - Bitbucket Cloud: <https://developer.atlassian.com/cloud/bitbucket/rest/api-group-commit-statuses/#api-repositories-workspace-repo-slug-commit-commit-statuses-build-post>

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use common::lab::{self, HOSTS, address, docker_lenient, free_port};
use common::{Agent, GitRepo, api, api_post, push_github, token_toml, wait_for, wait_until};
use serde_json::{Value, json};

/// One request the fake received.
#[derive(Debug, Clone)]
struct Seen {
    /// Every forge documents POST.
    method: String,
    /// The path, with its percent-encoding as sent (GitLab's `%2F`).
    path: String,
    /// Header names in lowercase.
    headers: BTreeMap<String, String>,
    /// The JSON sent (Null if it was not JSON).
    body: Value,
    /// What the fake answered.
    answered: u16,
}

/// The fake forge (or chat) API: records requests, answers the scripted codes first, then
/// `default` (201).
#[derive(Clone, Default)]
struct Fake {
    /// Every request, in order. A std Mutex: never held across an `.await`.
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Codes to answer first, one per request.
    script: Arc<Mutex<VecDeque<u16>>>,
    /// The answer once the script is used up (0: 201).
    default: Arc<Mutex<u16>>,
    /// `http://127.0.0.1:PORT`.
    url: String,
}

impl Fake {
    async fn start() -> Fake {
        let mut fake = Fake::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        fake.url = format!("http://{}", listener.local_addr().unwrap());
        let state = fake.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    let code = state.script.lock().unwrap().pop_front().unwrap_or_else(|| {
                        match *state.default.lock().unwrap() {
                            0 => 201,
                            c => c,
                        }
                    });
                    state.seen.lock().unwrap().push(Seen {
                        method: method.to_string(),
                        path: uri.path().to_string(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| {
                                (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                            })
                            .collect(),
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        answered: code,
                    });
                    let text = if code < 300 {
                        "{\"id\": 1}".to_string()
                    } else {
                        format!("{{\"message\": \"forge down for maintenance ({code})\"}}")
                    };
                    (StatusCode::from_u16(code).unwrap(), text)
                }
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    /// Answer `code` to everything from now on (after any script).
    fn answer(&self, code: u16) {
        *self.default.lock().unwrap() = code;
    }

    /// Requests whose path starts with `prefix`, in the order they came.
    fn seen(&self, prefix: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Wait (bounded) until `n` requests under `prefix` were answered 2xx; returns those.
    async fn delivered(&self, prefix: &str, n: usize, secs: u64) -> Vec<Seen> {
        wait_until(
            &format!("{n} delivered requests under {prefix}"),
            secs,
            || async {
                let ok: Vec<Seen> = self
                    .seen(prefix)
                    .into_iter()
                    .filter(|s| s.answered < 300)
                    .collect();
                if ok.len() >= n {
                    Ok(ok)
                } else {
                    Err(format!("{:#?}", self.seen(prefix)))
                }
            },
        )
        .await
    }
}

const APP: &str = "rpt-app";
const PASSING: &str = "app: rpt-app\nsteps:\n  - name: check\n    shell: [\"true\"]\n";
const FAILING: &str =
    "app: rpt-app\nsteps:\n  - name: check\n    shell: [\"echo failing on purpose; exit 3\"]\n";

/// One `[[repo]]` with statuses: name, forge, the fake's path for its API base.
struct StatusRepo {
    /// `owner/name`; its name part is the pipeline's app, so even a first run reports under it.
    name: &'static str,
    /// The forge, as `[[repo]] forge` names it.
    forge: &'static str,
    /// The fake's path prefix for this repo's `api` (with the forge's version prefix).
    api_path: &'static str,
    /// The environment variable its `status_token` comes from.
    token_env: &'static str,
}

const FIVE: [StatusRepo; 5] = [
    StatusRepo {
        name: "gh/rpt-app",
        forge: "github",
        api_path: "/github",
        token_env: "RPT_GH_TOKEN",
    },
    StatusRepo {
        name: "gt/rpt-app",
        forge: "gitea",
        api_path: "/gitea/api/v1",
        token_env: "RPT_GT_TOKEN",
    },
    StatusRepo {
        name: "fj/rpt-app",
        forge: "forgejo",
        api_path: "/forgejo/api/v1",
        token_env: "RPT_FJ_TOKEN",
    },
    StatusRepo {
        name: "gl/rpt-app",
        forge: "gitlab",
        api_path: "/gitlab/api/v4",
        token_env: "RPT_GL_TOKEN",
    },
    StatusRepo {
        name: "bb/rpt-app",
        forge: "bitbucket",
        api_path: "/bitbucket/2.0",
        token_env: "RPT_BB_TOKEN",
    },
];

fn token_of(r: &StatusRepo) -> String {
    format!("tok-{}-0123456789", r.forge)
}

/// An agent whose repositories `repos` all fetch from `git` and report to `fake`.
fn agent(dir: &Path, git: &GitRepo, fake: &Fake, repos: &[&StatusRepo], extra: &str) -> Agent {
    let mut config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\npublic_url = \"https://hoist.example.com/\"\n\
         [runner]\npoll_interval = \"0s\"\n{}{extra}",
        dir.join("data"),
        token_toml()
    );
    for r in repos {
        config.push_str(&format!(
            "[[repo]]\nname = {:?}\nurl = {:?}\nforge = {:?}\nsecret = \"env:E2E_HOOK_SECRET\"\ntrusted = true\n\
             status_token = \"env:{}\"\napi = \"{}{}\"\n",
            r.name, git.bare, r.forge, r.token_env, fake.url, r.api_path
        ));
    }
    let env: Vec<(&str, String)> = FIVE
        .iter()
        .map(|r| (r.token_env, token_of(r)))
        .chain([("HOIST_OUTBOX_BACKOFF", "100ms".to_string())])
        .collect();
    Agent::launch_with_env(dir, &config, &env)
}

/// Start a run of `repo` at `commit` by hand; its id.
async fn start_run(agent: &Agent, repo: &str, commit: &str) -> i64 {
    let r = api_post(
        agent,
        &format!("/repos/{repo}/runs"),
        Some(json!({"ref": "refs/heads/main", "commit": commit})),
    )
    .await;
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["run"].as_i64().unwrap()
}

async fn run_end(agent: &Agent, id: i64) -> Value {
    wait_for(agent, &format!("/runs/{id}"), "finished", 120, |r| {
        !["queued", "running"].contains(&r["status"].as_str().unwrap_or(""))
    })
    .await
}

/// The header a forge's documentation names for the token, and its value.
fn auth_of(r: &StatusRepo) -> (&'static str, String) {
    match r.forge {
        "gitlab" => ("private-token", token_of(r)),
        _ => ("authorization", format!("Bearer {}", token_of(r))),
    }
}

/// The path each forge's documentation gives for a status on `sha`, under the fake's prefix.
fn path_of(r: &StatusRepo, sha: &str) -> String {
    let (owner, name) = r.name.split_once('/').unwrap();
    match r.forge {
        "gitlab" => format!("{}/projects/{owner}%2F{name}/statuses/{sha}", r.api_path),
        "bitbucket" => format!(
            "{}/repositories/{owner}/{name}/commit/{sha}/statuses/build",
            r.api_path
        ),
        _ => format!("{}/repos/{owner}/{name}/statuses/{sha}", r.api_path),
    }
}

/// The state field and its value each forge's documentation gives for hoist's states.
fn state_of(forge: &str, state: &str) -> &'static str {
    match (forge, state) {
        ("gitlab", "pending") => "pending",
        ("gitlab", "success") => "success",
        ("gitlab", "failure") => "failed",
        ("bitbucket", "pending") => "INPROGRESS",
        ("bitbucket", "success") => "SUCCESSFUL",
        ("bitbucket", "failure") => "FAILED",
        (_, "pending") => "pending",
        (_, "success") => "success",
        (_, "failure") => "failure",
        _ => unreachable!(),
    }
}

/// One status request checked against its forge's documentation.
fn check_status(r: &StatusRepo, seen: &Seen, sha: &str, state: &str, run: i64) {
    let what = format!("{} {state}: {seen:#?}", r.forge);
    assert_eq!(seen.method, "POST", "{what}");
    assert_eq!(seen.path, path_of(r, sha), "{what}");
    let (header, value) = auth_of(r);
    assert_eq!(seen.headers.get(header), Some(&value), "{what}");
    assert_eq!(
        seen.headers.get("content-type").map(String::as_str),
        Some("application/json"),
        "{what}"
    );
    let link = format!("https://hoist.example.com/#/runs/{run}");
    let context = format!("hoist/{APP}");
    let b = &seen.body;
    match r.forge {
        "gitlab" => {
            assert_eq!(b["state"], state_of(r.forge, state), "{what}");
            assert_eq!(b["name"], context.as_str(), "{what}");
            assert_eq!(b["target_url"], link.as_str(), "{what}");
        }
        "bitbucket" => {
            assert_eq!(b["state"], state_of(r.forge, state), "{what}");
            assert_eq!(b["key"], context.as_str(), "{what}");
            assert_eq!(b["url"], link.as_str(), "{what}");
            assert!(b["name"].is_string(), "{what}");
        }
        _ => {
            assert_eq!(b["state"], state_of(r.forge, state), "{what}");
            assert_eq!(b["context"], context.as_str(), "{what}");
            assert_eq!(b["target_url"], link.as_str(), "{what}");
        }
    }
    assert!(
        b["description"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("run {run}"))),
        "{what}"
    );
}

#[tokio::test]
async fn statuses_on_the_five_forges_pending_then_the_outcome() {
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let git = GitRepo::new(dir.path());
    let good = git.commit("main", "good", &[(".hoist.yml", PASSING)]);
    let bad = git.commit("main", "bad", &[(".hoist.yml", FAILING)]);
    let agent = agent(
        dir.path(),
        &git,
        &fake,
        &FIVE.iter().collect::<Vec<_>>(),
        "",
    );

    // A passing run per forge: pending, then success, each as its forge documents.
    let mut runs = Vec::new();
    for r in &FIVE {
        runs.push(start_run(&agent, r.name, &good).await);
    }
    for run in &runs {
        assert_eq!(run_end(&agent, *run).await["status"], "success");
    }
    for (r, run) in FIVE.iter().zip(&runs) {
        let seen = fake.delivered(r.api_path, 2, 30).await;
        assert_eq!(seen.len(), 2, "{seen:#?}");
        check_status(r, &seen[0], &good, "pending", *run);
        check_status(r, &seen[1], &good, "success", *run);
    }

    // A failing run: pending, then failure.
    let gh = &FIVE[0];
    let run = start_run(&agent, gh.name, &bad).await;
    assert_eq!(run_end(&agent, run).await["status"], "failed");
    let seen: Vec<Seen> = fake
        .delivered(gh.api_path, 4, 30)
        .await
        .into_iter()
        .filter(|s| s.path.ends_with(&bad))
        .collect();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    check_status(gh, &seen[0], &bad, "pending", run);
    check_status(gh, &seen[1], &bad, "failure", run);
    assert!(
        seen[1].body["description"]
            .as_str()
            .unwrap()
            .contains("failed"),
        "{seen:#?}"
    );

    // The outbox shows what went out, with the forge's answer, and never a token.
    let outbox = api(&agent, "/outbox").await;
    let rows = outbox.as_array().unwrap();
    assert_eq!(rows.len(), 12, "{outbox:#}");
    assert!(
        rows.windows(2)
            .all(|w| w[0]["id"].as_i64() > w[1]["id"].as_i64())
    );
    for row in rows {
        assert_eq!(row["state"], "delivered", "{row:#}");
        assert_eq!(row["last_code"], 201, "{row:#}");
        assert_eq!(row["kind"], "status", "{row:#}");
    }
    let text = outbox.to_string();
    for r in &FIVE {
        assert!(
            !text.contains(&token_of(r)),
            "a token in the outbox: {text}"
        );
    }
    let page = api(&agent, &format!("/outbox?limit=2&before={}", rows[0]["id"])).await;
    assert_eq!(page.as_array().unwrap().len(), 2);
    assert_eq!(page[0]["id"], rows[1]["id"]);
    let r = common::api_request(&agent, reqwest::Method::GET, "/outbox?state=lost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn a_forge_answering_500_gets_the_status_after_retries() {
    let fake = Fake::start().await;
    fake.script.lock().unwrap().extend([500, 500, 500]);
    let dir = tempfile::tempdir().unwrap();
    let git = GitRepo::new(dir.path());
    let good = git.commit("main", "good", &[(".hoist.yml", PASSING)]);
    let gh = &FIVE[0];
    let agent = agent(dir.path(), &git, &fake, &[gh], "");
    // Through the webhook this time: a push's run owes its statuses like a manual one.
    let run = push_github(&agent, gh.name, "main", &good, "good").await["runs"][0]
        .as_i64()
        .unwrap();
    // The run does not wait for the forge.
    assert_eq!(run_end(&agent, run).await["status"], "success");

    let seen = fake.delivered(gh.api_path, 2, 60).await;
    let all = fake.seen(gh.api_path);
    let codes: Vec<u16> = all.iter().map(|s| s.answered).collect();
    assert_eq!(codes, [500, 500, 500, 201, 201], "{all:#?}");
    // Retried in order: the three refused tries and the delivery are all the pending status;
    // success went out only after it.
    for s in &all[..4] {
        check_status(gh, s, &good, "pending", run);
    }
    check_status(gh, &seen[1], &good, "success", run);

    let rows = wait_for(&agent, "/outbox", "both delivered", 30, |v| {
        v.as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|r| r["state"] == "delivered"))
    })
    .await;
    let pending = &rows[1];
    assert_eq!(pending["event"], "status.pending", "{rows:#}");
    assert_eq!(pending["attempts"], 4, "{rows:#}");
    assert_eq!(rows[0]["attempts"], 1, "{rows:#}");
}

#[tokio::test]
async fn a_refused_status_is_given_up_and_shown_with_the_forges_answer() {
    let fake = Fake::start().await;
    fake.answer(401);
    let dir = tempfile::tempdir().unwrap();
    let git = GitRepo::new(dir.path());
    let good = git.commit("main", "good", &[(".hoist.yml", PASSING)]);
    let gh = &FIVE[0];
    let agent = agent(dir.path(), &git, &fake, &[gh], "");
    let run = start_run(&agent, gh.name, &good).await;
    assert_eq!(run_end(&agent, run).await["status"], "success");
    let rows = wait_for(&agent, "/outbox?state=gave_up", "both given up", 30, |v| {
        v.as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    for row in rows.as_array().unwrap() {
        assert_eq!(row["attempts"], 1, "{row:#}");
        assert_eq!(row["last_code"], 401, "{row:#}");
        let answer = row["last_answer"].as_str().unwrap();
        assert!(
            answer.contains("forge down for maintenance (401)"),
            "{answer}"
        );
        assert!(answer.contains("check the token"), "{answer}");
    }
    assert_eq!(fake.seen(gh.api_path).len(), 2);
    let metrics = reqwest::get(format!("{}/metrics", agent.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "hoist_outbox_rows{state=\"pending\"} 0",
        "hoist_outbox_rows{state=\"gave_up\"} 2",
    ] {
        assert!(metrics.contains(line), "{line:?} not in {metrics}");
    }
}

#[tokio::test]
async fn an_agent_killed_with_a_status_owed_delivers_it_once_after_restart() {
    let fake = Fake::start().await;
    fake.answer(500);
    let dir = tempfile::tempdir().unwrap();
    let git = GitRepo::new(dir.path());
    let good = git.commit("main", "good", &[(".hoist.yml", PASSING)]);
    let gh = &FIVE[0];
    let mut first = agent(dir.path(), &git, &fake, &[gh], "");
    let run = start_run(&first, gh.name, &good).await;
    assert_eq!(run_end(&first, run).await["status"], "success");
    // Both statuses are owed, the pending one tried and refused at least once.
    wait_for(
        &first,
        "/outbox?state=pending",
        "two owed, one tried",
        30,
        |v| {
            v.as_array().is_some_and(|a| {
                a.len() == 2
                    && a.iter()
                        .any(|r| r["event"] == "status.pending" && r["last_code"] == 500)
            })
        },
    )
    .await;
    first.kill9();

    fake.answer(201);
    let before = fake.seen(gh.api_path).len();
    let agent = agent(dir.path(), &git, &fake, &[gh], "");
    wait_for(&agent, "/outbox", "both delivered", 30, |v| {
        v.as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|r| r["state"] == "delivered"))
    })
    .await;
    let after: Vec<Seen> = fake.seen(gh.api_path).split_off(before);
    assert_eq!(after.len(), 2, "each owed status once: {after:#?}");
    check_status(gh, &after[0], &good, "pending", run);
    check_status(gh, &after[1], &good, "success", run);
    assert!(after.iter().all(|s| s.answered == 201));
}

// ---- notifications, on a real deploy ----

/// The test app: busybox httpd serving `/health`, except on the host `$BROKEN_ON` names.
const START_SH: &str = r#"#!/bin/sh
mkdir -p /www
echo "$V" > /www/version
[ "$BROKEN_ON" = "$NODE_ID" ] || echo ok > /www/health
httpd -f -p 8080 -h /www &
pid=$!
trap 'kill "$pid"; exit 0' TERM INT
wait "$pid"
"#;

const DOCKERFILE: &str =
    "FROM lab/busybox:1\nARG V=1\nENV V=$V\nCOPY start.sh /start.sh\nCMD [\"/start.sh\"]\n";

fn deploy_pipeline(app: &str, port: u16, broken_on: &str) -> String {
    format!(
        "app: {app}\nsteps:\n  - name: image\n    build:\n      repository: {}/hoist-report/{app}\n      args: {{ V: \"${{commit_short}}\" }}\n\
         \x20 - name: deploy\n    deploy:\n      image: image\n      hosts: {HOSTS:?}\n      container:\n        name: {app}\n        ports: [\"{port}:8080\"]\n\
         \x20       env: {{ NODE_ID: \"${{host}}\", BROKEN_ON: \"{broken_on}\" }}\n      health:\n        http: {{ port: 8080, path: /health }}\n\
         \x20       interval: 200ms\n        fail_after: 3\n        healthy_for: 400ms\n        deadline: 20s\n\
         \x20     rollout: {{ max_parallel: 1, bake: 0s, keep: 2, auto_rollback: true }}\n",
        lab::REGISTRY
    )
}

/// Removes the test's containers from every lab host, whatever happened.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for h in HOSTS {
            let ids = docker_lenient(h, &["ps", "-aq", "--filter", &format!("name={}", self.0)]);
            for id in ids.split_whitespace() {
                docker_lenient(h, &["rm", "-f", id]);
            }
        }
    }
}

#[tokio::test]
async fn a_rolled_back_deployment_is_announced_with_the_failing_host_and_reason() {
    let chat = Fake::start().await;
    let app = format!("rpt-{:08x}", rand::random::<u32>());
    let _cleanup = Cleanup(app.clone());
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let git = GitRepo::new(dir.path());
    std::fs::write(git.work.join("Dockerfile"), DOCKERFILE).unwrap();
    let start = git.work.join("start.sh");
    std::fs::write(&start, START_SH).unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&start)
        .status()
        .unwrap();
    let c1 = git.commit(
        "main",
        "v1",
        &[(".hoist.yml", &deploy_pipeline(&app, port, "none"))],
    );
    let repo = format!("acme/{app}");
    let hook = format!("{}/chat/T000/B000/rpt-webhook-secret-path", chat.url);
    let mut config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\npublic_url = \"https://hoist.example.com\"\n\
         [builder]\ndocker = {:?}\n[runner]\npoll_interval = \"0s\"\n\
         [[registry]]\nhost = {:?}\ninsecure = true\n{}\
         [[repo]]\nname = {repo:?}\nurl = {:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\nhosts = {HOSTS:?}\n\
         [[notify]]\nurl = \"env:RPT_CHAT_URL\"\nevents = [\"deployment.rolled_back\", \"run.failed\"]\n",
        dir.path().join("data"),
        lab::builder_url(),
        lab::REGISTRY,
        token_toml(),
        git.bare,
    );
    for h in HOSTS {
        config.push_str(&format!(
            "[host.{h}]\ndocker = {:?}\naddress = {:?}\n",
            lab::socket(h),
            address(h)
        ));
    }
    let agent = Agent::launch_with_env(
        dir.path(),
        &config,
        &[
            ("RPT_CHAT_URL", hook.clone()),
            ("HOIST_OUTBOX_BACKOFF", "100ms".to_string()),
        ],
    );

    let r1 = push_github(&agent, &repo, "main", &c1, "v1").await["runs"][0]
        .as_i64()
        .unwrap();
    let run = wait_for(&agent, &format!("/runs/{r1}"), "finished", 240, |r| {
        !["queued", "running"].contains(&r["status"].as_str().unwrap_or(""))
    })
    .await;
    assert_eq!(run["status"], "success", "{run:#}");

    // Release 2 fails its health on h2: the deployment rolls back, and the chat hears of it.
    let c2 = git.commit(
        "main",
        "v2 broken on h2",
        &[(".hoist.yml", &deploy_pipeline(&app, port, "h2"))],
    );
    let r2 = push_github(&agent, &repo, "main", &c2, "v2").await["runs"][0]
        .as_i64()
        .unwrap();
    let run = wait_for(&agent, &format!("/runs/{r2}"), "finished", 240, |r| {
        !["queued", "running"].contains(&r["status"].as_str().unwrap_or(""))
    })
    .await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let deployments = api(&agent, &format!("/apps/{app}/deployments")).await;
    let d = &deployments[0];
    assert_eq!(d["status"], "rolled_back", "{d:#}");

    let seen = chat.delivered("/chat/", 2, 30).await;
    let events: Vec<&str> = seen
        .iter()
        .map(|s| s.body["event"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"deployment.rolled_back"), "{seen:#?}");
    assert!(events.contains(&"run.failed"), "{seen:#?}");
    let rolled = seen
        .iter()
        .find(|s| s.body["event"] == "deployment.rolled_back")
        .unwrap();
    assert_eq!(rolled.path, "/chat/T000/B000/rpt-webhook-secret-path");
    assert_eq!(
        rolled.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    let b = &rolled.body;
    assert_eq!(b["app"], app.as_str(), "{b:#}");
    assert_eq!(b["release"], 2, "{b:#}");
    assert_eq!(b["commit"], c2.as_str(), "{b:#}");
    assert_eq!(b["failing_host"], "h2", "{b:#}");
    assert_eq!(b["deployment"], d["id"], "{b:#}");
    assert_eq!(b["reason"], d["reason"], "{b:#}");
    assert!(b["reason"].as_str().is_some_and(|r| !r.is_empty()), "{b:#}");
    assert_eq!(
        b["link"],
        format!("https://hoist.example.com/#/deployments/{}", d["id"])
    );
    let hosts: Vec<&str> = b["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    assert_eq!(hosts, HOSTS, "{b:#}");
    // The line a person reads in the chat room says what, where and why.
    let text = b["text"].as_str().unwrap();
    for needle in [app.as_str(), "release 2", "rolled back", "h2", &c2[..7]] {
        assert!(text.contains(needle), "{needle:?} not in {text:?}");
    }
    assert!(text.contains(d["reason"].as_str().unwrap()), "{text}");
    // Only the subscribed events: the first release's success went nowhere.
    assert!(chat.seen("/chat/").iter().all(|s| {
        ["deployment.rolled_back", "run.failed"].contains(&s.body["event"].as_str().unwrap_or(""))
    }),);
    // The webhook URL is a secret: not in the outbox API.
    let outbox = api(&agent, "/outbox").await.to_string();
    assert!(!outbox.contains("rpt-webhook-secret-path"), "{outbox}");
}
