//! Shared helpers for the end-to-end tests: the lab (`lab`), a test's own nginx (`nginx`), the real `hoist` binary started
//! with a config of our own, the one way to call its API (`api_request` and what is built on
//! it) and its command line (`hoist`, `hoist_client`), bounded waits (`wait_until`,
//! `wait_for`), signed deliveries like a forge's, and git repositories to push from.
#![allow(dead_code)]

pub mod lab;
pub mod nginx;

/// The build engine's URL, checked; benches/runs.rs includes this module and uses the name.
#[allow(unused_imports)]
pub use lab::builder_url as builder;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hoist::forge::{self, Forge};
use reqwest::Method;

pub const SECRET: &str = "e2e-hook-secret";
pub const TOKEN: &str = "hoist_e2e_token";

/// The `[[token]]` table that lets `TOKEN` (named "e2e") in, for a test's own hoist.toml.
pub fn token_toml() -> String {
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(TOKEN.as_bytes()));
    format!("[[token]]\nname = \"e2e\"\nsha256 = \"{hash}\"\n")
}

/// A running agent, killed when dropped.
pub struct Agent {
    pub child: Child,
    pub url: String,
    pub dir: PathBuf,
}

impl Agent {
    /// Start `hoist serve` with the config text `config` (written to DIR/hoist.toml once).
    pub fn launch(dir: &Path, config: &str) -> Agent {
        Agent::launch_with_env(dir, config, &[])
    }

    /// `launch`, with `env` added to the agent's environment.
    pub fn launch_with_env(dir: &Path, config: &str, env: &[(&str, String)]) -> Agent {
        let path = dir.join("hoist.toml");
        if !path.exists() {
            std::fs::write(&path, config).unwrap();
        }
        Agent::spawn(dir, env, None)
    }

    /// `launch_with_env`, with the agent's stderr (its log) appended to `log` instead of the
    /// test's, for tests that read what the agent logged.
    pub fn launch_logged(dir: &Path, config: &str, env: &[(&str, String)], log: &Path) -> Agent {
        let path = dir.join("hoist.toml");
        if !path.exists() {
            std::fs::write(&path, config).unwrap();
        }
        Agent::spawn(dir, env, Some(log))
    }

    /// Start `hoist serve` on a free port with `dir` as data_dir. `extra` is appended to the config.
    pub fn start(dir: &Path, extra: &str) -> Agent {
        let config = dir.join("hoist.toml");
        if !config.exists() {
            let text = format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n[runner]\npoll_interval = \"0s\"\n\n\
                 [[repo]]\nname = \"acme/web\"\nurl = \"/nonexistent/acme/web.git\"\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\n\n\
                 [[repo]]\nname = \"acme/api\"\nurl = \"/nonexistent/acme/api.git\"\nforge = \"gitea\"\nsecret = \"env:E2E_HOOK_SECRET\"\n\n\
                 {}{extra}",
                dir.join("data"),
                token_toml()
            );
            std::fs::write(&config, text).unwrap();
        }
        Agent::spawn(dir, &[], None)
    }

    /// `hoist serve --config DIR/hoist.toml`, once it printed the address it listens on.
    fn spawn(dir: &Path, env: &[(&str, String)], log: Option<&Path>) -> Agent {
        let config = dir.join("hoist.toml");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hoist"));
        cmd.args(["serve", "--config"])
            .arg(&config)
            .env("E2E_HOOK_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(match log {
                Some(path) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .unwrap(),
                ),
                None => Stdio::inherit(),
            });
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start hoist");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("hoist listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("hoist did not print its listening address within 20 s (config {config:?})");
            }
        };
        Agent {
            child,
            url,
            dir: dir.to_path_buf(),
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status (waits at most 10 s).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as i32;
        // SAFETY-free: kill(2) through the shell's kill, to avoid a libc dependency.
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        wait_until_blocking("hoist to exit after SIGTERM", 10, || {
            self.child.try_wait().unwrap().ok_or("still running")
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GitHub push body for `repo` moving `git_ref` to `after`, built from a real recorded payload.
pub fn github_push(repo: &str, git_ref: &str, after: &str) -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/webhooks/github/go-scm-push.json"
    );
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["repository"]["full_name"] = repo.into();
    v["ref"] = git_ref.into();
    v["after"] = after.into();
    v["head_commit"]["id"] = after.into();
    serde_json::to_vec_pretty(&v).unwrap()
}

/// Headers a forge would send with `body`: event, delivery id, signature, content type.
pub fn signed_headers(
    forge: Forge,
    delivery: &str,
    secret: &str,
    body: &[u8],
) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = forge::push_headers(forge, delivery)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let (k, v) = forge::sign(forge, secret.as_bytes(), body);
    h.push((k.to_string(), v));
    h.push(("Content-Type".into(), "application/json".into()));
    h
}

pub fn post(
    client: &reqwest::Client,
    url: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    let mut r = client.post(url).body(body);
    for (k, v) in headers {
        r = r.header(k, v);
    }
    r
}

/// A 40-hex commit id made from a number.
pub fn sha(n: u64) -> String {
    format!("{n:040x}")
}

/// A bare repository under `dir` with a work tree beside it, for pushing commits.
pub struct GitRepo {
    pub bare: PathBuf,
    pub work: PathBuf,
}

impl GitRepo {
    pub fn new(dir: &Path) -> GitRepo {
        let bare = dir.join("remote.git");
        let work = dir.join("work");
        git(
            dir,
            &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
        );
        git(dir, &["init", "-q", "-b", "main", work.to_str().unwrap()]);
        // No background `git gc --auto`: after a few thousand commits (a soak) it runs detached
        // and holds HEAD.lock while the next commit's checkout wants it (seen at run 1800 of a
        // soak); a push runs one in the bare repository too.
        git(&work, &["config", "gc.auto", "0"]);
        git(&bare, &["config", "gc.auto", "0"]);
        git(&bare, &["config", "receive.autogc", "false"]);
        GitRepo { bare, work }
    }

    /// Write files (path, content) and commit them on `branch`; push; return the commit id.
    pub fn commit(&self, branch: &str, message: &str, files: &[(&str, &str)]) -> String {
        let current = git_out(&self.work, &["rev-parse", "--abbrev-ref", "HEAD"]);
        if current != branch {
            let exists = Command::new("git")
                .args([
                    "rev-parse",
                    "--verify",
                    "-q",
                    &format!("refs/heads/{branch}"),
                ])
                .current_dir(&self.work)
                .output()
                .unwrap()
                .status
                .success();
            let flag = if exists { "" } else { "-b" };
            let mut args = vec!["checkout", "-q"];
            if !flag.is_empty() {
                args.push(flag);
            }
            args.push(branch);
            git(&self.work, &args);
        }
        for (path, content) in files {
            let p = self.work.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &[
                "-c",
                "user.name=Test",
                "-c",
                "user.email=t@example.com",
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                message,
            ],
        );
        git(
            &self.work,
            &[
                "push",
                "-q",
                "-f",
                self.bare.to_str().unwrap(),
                &format!("HEAD:refs/heads/{branch}"),
            ],
        );
        git_out(&self.work, &["rev-parse", "HEAD"])
    }
}

impl GitRepo {
    /// Tag `commit` as `name` (a lightweight tag) and push the tag.
    pub fn tag(&self, name: &str, commit: &str) {
        git(&self.work, &["tag", "-f", name, commit]);
        git(
            &self.work,
            &[
                "push",
                "-q",
                "-f",
                self.bare.to_str().unwrap(),
                &format!("refs/tags/{name}:refs/tags/{name}"),
            ],
        );
    }
}

pub fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn git_out(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `METHOD /api/v1{path}` on `agent` with `token` (`None`: no `Authorization` at all), bounded
/// by 60 s so that a hung agent fails the test instead of hanging it. Every API call of the
/// tests is built here; add a body or headers, then send.
pub fn api_request_as(
    agent: &Agent,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> reqwest::RequestBuilder {
    let request = reqwest::Client::new()
        .request(method, format!("{}/api/v1{path}", agent.url))
        .timeout(Duration::from_secs(60));
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// `METHOD /api/v1{path}` with the test token.
pub fn api_request(agent: &Agent, method: Method, path: &str) -> reqwest::RequestBuilder {
    api_request_as(agent, method, path, Some(TOKEN))
}

/// GET an API path (after `/api/v1`) with the test token; the JSON answer.
pub async fn api(agent: &Agent, path: &str) -> serde_json::Value {
    api_request(agent, Method::GET, path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// POST to an API path with the test token, `body` as JSON when given; the answer, whose
/// status and body the caller checks.
pub async fn api_post(
    agent: &Agent,
    path: &str,
    body: Option<serde_json::Value>,
) -> reqwest::Response {
    let request = api_request(agent, Method::POST, path);
    match body {
        Some(body) => request.json(&body),
        None => request,
    }
    .send()
    .await
    .unwrap()
}

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(50);

/// Call `check` until it returns `Ok`, for at most `secs`; its value. Past the deadline the
/// test fails naming `what` and the last `Err` (what was seen instead).
pub async fn wait_until<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    secs: u64,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let seen = match check().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        assert!(
            Instant::now() < deadline,
            "waited {secs} s for {what}, in vain: {seen}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `wait_until` for code that is not async (it sleeps the calling thread between looks).
pub fn wait_until_blocking<T, E: std::fmt::Display>(
    what: &str,
    secs: u64,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let seen = match check() {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        assert!(
            Instant::now() < deadline,
            "waited {secs} s for {what}, in vain: {seen}"
        );
        std::thread::sleep(POLL);
    }
}

/// Poll an API path (bounded by `secs`) until `done` holds for its answer; returns it.
pub async fn wait_for(
    agent: &Agent,
    path: &str,
    what: &str,
    secs: u64,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let what = format!("{path} to become {what}");
    let done = &done;
    wait_until(&what, secs, || async move {
        let v = api(agent, path).await;
        if done(&v) {
            Ok(v)
        } else {
            Err(format!("{v:#}"))
        }
    })
    .await
}

/// A run's whole stored log as text.
pub async fn run_log(agent: &Agent, run: i64) -> String {
    let chunks = api(agent, &format!("/runs/{run}/logs")).await;
    chunks
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["data"].as_str().unwrap())
        .collect()
}

/// Send the signed GitHub push a forge would send for `commit` on `branch` of `repo`;
/// asserts 202 and returns the answer (`{"delivery": …, "runs": […]}`).
pub async fn push_github(
    agent: &Agent,
    repo: &str,
    branch: &str,
    commit: &str,
    message: &str,
) -> serde_json::Value {
    push_github_ref(
        agent,
        repo,
        &format!("refs/heads/{branch}"),
        commit,
        message,
    )
    .await
}

/// `push_github` for any full ref (`refs/heads/…` or `refs/tags/…`); the delivery id is made
/// from the ref and the commit, so that a tag pushed on a commit a branch also has is a
/// delivery of its own.
pub async fn push_github_ref(
    agent: &Agent,
    repo: &str,
    git_ref: &str,
    commit: &str,
    message: &str,
) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_slice(&github_push(repo, git_ref, commit)).unwrap();
    v["head_commit"]["message"] = message.into();
    let body = serde_json::to_vec(&v).unwrap();
    let delivery = match git_ref.strip_prefix("refs/heads/") {
        Some(_) => format!("d-{commit}"),
        None => format!("d-{commit}-{}", git_ref.replace('/', "-")),
    };
    let headers = signed_headers(Forge::Github, &delivery, SECRET, &body);
    let url = format!("{}/hooks/github", agent.url);
    let r = post(&reqwest::Client::new(), &url, &headers, body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json().await.unwrap()
}

/// How a `hoist` command ended and what it printed.
pub struct Cli {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run the built `hoist` binary with `args` until it ends. It blocks the calling thread; an
/// agent it talks to is another process, so an async test loses nothing by that.
pub fn hoist(args: &[&str]) -> Cli {
    let out = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(args)
        .output()
        .expect("run hoist");
    Cli {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `hoist ARGS --server URL --token TOKEN`: a client command against `agent`.
pub fn hoist_client(agent: &Agent, args: &[&str]) -> Cli {
    let mut all = args.to_vec();
    all.extend(["--server", &agent.url, "--token", TOKEN]);
    hoist(&all)
}

/// The step named `name` of a run, as the API shows it; fails the test showing the run.
pub fn step<'a>(run: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    run["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("a run has steps: {run:#}"))
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {run:#}"))
}

/// Release `number` of `app`, as the API shows it.
pub async fn release(agent: &Agent, app: &str, number: i64) -> serde_json::Value {
    let all = api(agent, &format!("/apps/{app}/releases")).await;
    all.as_array()
        .unwrap_or_else(|| panic!("{app} has no releases: {all:#}"))
        .iter()
        .find(|r| r["number"] == number)
        .unwrap_or_else(|| panic!("{app} has no release {number}: {all:#}"))
        .clone()
}
