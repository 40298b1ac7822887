//! End-to-end: a private registry. The lab's second registry (`lab::AUTH_REGISTRY`) wants the
//! lab user's password; the build engine pushes with it, oci-client verifies with it, and every
//! host's engine pulls with it, for rollouts and for reverts to a release a host no longer has.
//! A wrong password fails the deploy naming the registry, with no host changed, and the
//! password shows up in no log line, API answer or database row.
//!
//! Each test has an app, a container name and a host port of its own (never `web` or 8080,
//! which tests/deploy.rs and the demo use), so these tests run beside each other and beside
//! the other suites on the same lab.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::lab::{
    self, AUTH_REGISTRY, AUTH_REGISTRY_PASSWORD, AUTH_REGISTRY_USER, HOSTS, address, docker_lenient,
};
use common::{
    Agent, GitRepo, api, api_post, api_request, push_github, run_log, token_toml, wait_for,
};
use reqwest::Method;
use serde_json::{Value, json};

/// A wrong password for the lab user, for the tests of refusals.
const WRONG_PASSWORD: &str = "not-the-lab-password-7391";

/// One test's app on the lab: its names, its port, its directory.
struct App {
    /// The app, its container's name, and its repository's last component.
    name: &'static str,
    /// The host port the container publishes (its 8080, where health checks go).
    port: u16,
    dir: PathBuf,
    repo: GitRepo,
}

impl App {
    /// Clean hosts of the app's containers, and a repository holding the demo app with this
    /// app's pipeline. `before_host` is the pipeline's hook, when it has one.
    fn new(dir: &Path, name: &'static str, port: u16, before_host: Option<&Path>) -> App {
        let app = App {
            name,
            port,
            dir: dir.to_path_buf(),
            repo: GitRepo::new(dir),
        };
        app.clean_hosts();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo-app");
        let copied = Command::new("cp")
            .arg("-r")
            .arg(format!("{}/.", src.display()))
            .arg(&app.repo.work)
            .status()
            .unwrap();
        assert!(copied.success());
        std::fs::write(
            app.repo.work.join(".hoist.yml"),
            app.pipeline("", before_host),
        )
        .unwrap();
        app
    }

    fn repo_name(&self) -> String {
        format!("e2e/{}", self.name)
    }

    /// The registry repository the app's images go to.
    fn repository(&self) -> String {
        format!("{AUTH_REGISTRY}/hoist-e2e/{}", self.name)
    }

    /// Build, push to the private registry and verify, then roll out to every host one at a
    /// time. `extra_args` go into the build args (`, BROKEN_ON: h3`).
    fn pipeline(&self, extra_args: &str, before_host: Option<&Path>) -> String {
        let hooks = match before_host {
            Some(p) => format!("      hooks:\n        before_host: [{:?}]\n", p.display()),
            None => String::new(),
        };
        format!(
            "app: {name}\n\
             on:\n  branches: [main]\n\
             steps:\n\
             \x20 - name: image\n\
             \x20   build:\n\
             \x20     context: .\n\
             \x20     repository: {repository}\n\
             \x20     tags: [\"${{commit_short}}\"]\n\
             \x20     args: {{ VERSION: \"${{commit_short}}\"{extra_args} }}\n\
             \x20 - name: deploy\n\
             \x20   deploy:\n\
             \x20     image: image\n\
             \x20     hosts: [h1, h2, h3]\n\
             \x20     container:\n\
             \x20       name: {name}\n\
             \x20       ports: [\"{port}:8080\"]\n\
             \x20       env: {{ NODE_ID: \"${{host}}\" }}\n\
             \x20     health:\n\
             \x20       http: {{ port: 8080, path: /healthz }}\n\
             \x20       interval: 200ms\n\
             \x20       timeout: 1s\n\
             \x20       healthy_for: 1s\n\
             \x20       deadline: 6s\n\
             \x20     rollout:\n\
             \x20       max_parallel: 1\n\
             \x20       auto_rollback: true\n\
             \x20       bake: 1s\n\
             \x20       keep: 3\n\
             {hooks}",
            name = self.name,
            repository = self.repository(),
            port = self.port,
        )
    }

    /// The agent's config: the private registry's entry when `entry`, its login from the
    /// environment (`REG_USER`, `REG_PASSWORD`), and the three lab hosts.
    fn config(&self, entry: bool) -> String {
        let mut config = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[builder]\ndocker = {:?}\n[runner]\npoll_interval = \"0s\"\n\
             [[repo]]\nname = {:?}\nurl = {:?}\nforge = \"github\"\nsecret = \"env:E2E_HOOK_SECRET\"\nhosts = {HOSTS:?}\ntrusted = true\n{}",
            self.dir.join("data"),
            lab::builder_url(),
            self.repo_name(),
            self.repo.bare,
            token_toml()
        );
        if entry {
            config.push_str(&format!(
                "[[registry]]\nhost = {AUTH_REGISTRY:?}\ninsecure = true\nusername = \"env:REG_USER\"\npassword = \"env:REG_PASSWORD\"\n"
            ));
        }
        for h in HOSTS {
            config.push_str(&format!(
                "[host.{h}]\ndocker = {:?}\naddress = {:?}\n",
                lab::socket(h),
                address(h)
            ));
        }
        config
    }

    /// Start (or restart) the agent with the registry entry's password `password`, or with no
    /// `[[registry]]` entry at all when None; its log goes to DIR/agent.log.
    fn agent(&self, password: Option<&str>) -> Agent {
        std::fs::write(self.dir.join("hoist.toml"), self.config(password.is_some())).unwrap();
        let env = [
            ("REG_USER", AUTH_REGISTRY_USER.to_string()),
            ("REG_PASSWORD", password.unwrap_or_default().to_string()),
            ("RUST_LOG", "debug".to_string()),
        ];
        Agent::launch_logged(&self.dir, "", &env, &self.log())
    }

    fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// Push a commit as GitHub would and wait for its run to end; the run.
    async fn run(&self, agent: &Agent, message: &str, files: &[(&str, &str)]) -> Value {
        let commit = self.repo.commit("main", message, files);
        let answer = push_github(agent, &self.repo_name(), "main", &commit, message).await;
        let run = answer["runs"][0].as_i64().expect("a run");
        let end = wait_for(agent, &format!("/runs/{run}"), "finished", 240, |r| {
            !["queued", "running"].contains(&r["status"].as_str().unwrap_or(""))
        })
        .await;
        let mut end = end;
        end["log"] = run_log(agent, run).await.into();
        end
    }

    async fn last_deployment(&self, agent: &Agent) -> Value {
        let list = api(agent, &format!("/apps/{}/deployments", self.name)).await;
        let id = list[0]["id"].as_i64().expect("a deployment");
        api(agent, &format!("/deployments/{id}")).await
    }

    /// Remove every container of this app on the lab hosts.
    fn clean_hosts(&self) {
        for h in HOSTS {
            let label = format!("label=hoist.app={}", self.name);
            let ids = docker_lenient(h, &["ps", "-aq", "--filter", &label]);
            for id in ids.split_whitespace() {
                docker_lenient(h, &["rm", "-f", id]);
            }
        }
    }

    /// What host `h` runs as the app's container, read with the docker CLI: (container ID,
    /// running, the RepoDigests of its image).
    fn on_host(&self, h: &str) -> (String, bool, String) {
        let id = docker_lenient(h, &["inspect", self.name, "--format", "{{.Id}}"]);
        let running =
            docker_lenient(h, &["inspect", self.name, "--format", "{{.State.Running}}"]) == "true";
        let image = docker_lenient(h, &["inspect", self.name, "--format", "{{.Image}}"]);
        let digests = docker_lenient(
            h,
            &[
                "image",
                "inspect",
                &image,
                "--format",
                "{{json .RepoDigests}}",
            ],
        );
        (id, running, digests)
    }

    fn assert_hosts_on(&self, release: &Value) {
        let digest = release["manifest_digest"].as_str().unwrap();
        for h in HOSTS {
            let (_, running, digests) = self.on_host(h);
            assert!(
                running && digests.contains(digest),
                "{h} does not run {digest}: running {running}, {digests}"
            );
        }
    }

    /// Take release `release` off host `h` the way an operator's clean-up would: its kept
    /// container and its image.
    fn prune_from(&self, h: &str, release: &Value) {
        let kept = format!("{}-r{}", self.name, release["number"]);
        docker_lenient(h, &["rm", "-f", &kept]);
        let image = format!(
            "{}@{}",
            release["repository"].as_str().unwrap(),
            release["manifest_digest"].as_str().unwrap()
        );
        let id = docker_lenient(h, &["image", "inspect", "--format", "{{.Id}}", &image]);
        if !id.is_empty() {
            docker_lenient(h, &["rmi", "-f", &id]);
        }
        assert_eq!(
            docker_lenient(h, &["image", "inspect", "--format", "{{.Id}}", &image]),
            "",
            "{h} still has {image}"
        );
    }
}

/// skopeo, a second opinion: the registry's digest of `reference` with the lab's login, and
/// whether an anonymous client is refused it.
fn skopeo_digest(reference: &str) -> (String, bool) {
    let inspect = |creds: Option<String>| {
        let mut cmd = Command::new("skopeo");
        cmd.args(["inspect", "--tls-verify=false"]);
        if let Some(c) = creds {
            cmd.args(["--creds", &c]);
        }
        cmd.arg(format!("docker://{reference}")).output().unwrap()
    };
    let with = inspect(Some(format!(
        "{AUTH_REGISTRY_USER}:{AUTH_REGISTRY_PASSWORD}"
    )));
    assert!(
        with.status.success(),
        "skopeo with the lab's login: {}",
        String::from_utf8_lossy(&with.stderr)
    );
    let v: Value = serde_json::from_slice(&with.stdout).unwrap();
    let anonymous = inspect(None);
    (
        v["Digest"].as_str().unwrap().to_string(),
        !anonymous.status.success(),
    )
}

/// The first release of `app`, rolled out to every host from the private registry.
async fn first_release(app: &App, agent: &Agent) -> Value {
    let run = app.run(agent, "v1", &[]).await;
    assert_eq!(run["status"], "success", "{run:#}");
    let rel1 = api(agent, &format!("/apps/{}/releases", app.name)).await[0].clone();
    assert_eq!(rel1["number"], 1, "{rel1:#}");
    assert_eq!(rel1["repository"], app.repository());
    app.assert_hosts_on(&rel1);
    rel1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_registry_serves_rollouts_and_a_rollback_to_a_pruned_release() {
    lab::check_auth_registry().await;
    let dir = tempfile::tempdir().unwrap();
    // Before h3 switches (once: the revert runs before_host too), release 1 disappears from
    // h1: its revert must pull it again.
    let prune = dir.path().join("prune-h1");
    let app = App::new(dir.path(), "regroll", 17481, Some(&prune));
    std::fs::write(
        &prune,
        "#!/bin/sh\n[ -x \"$0.now\" ] && [ \"$HOIST_HOST\" = h3 ] && exec \"$0.now\"\nexit 0\n",
    )
    .unwrap();
    chmod_x(&prune);
    let agent = app.agent(Some(AUTH_REGISTRY_PASSWORD));

    // Build, push, verify and a three-host rollout, all from the private registry.
    let rel1 = first_release(&app, &agent).await;
    let commit = rel1["commit"].as_str().unwrap();
    let (digest, refused) = skopeo_digest(&format!("{}:{}", app.repository(), &commit[..7]));
    assert_eq!(digest, rel1["manifest_digest"].as_str().unwrap());
    assert!(
        refused,
        "the registry let an anonymous client read the release"
    );
    let d = app.last_deployment(&agent).await;
    assert_eq!(d["status"], "succeeded", "{d:#}");
    for h in HOSTS {
        let node = reqwest::get(format!("http://{}:{}/node", address(h), app.port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(node.trim(), h);
    }
    let (h1_before, _, _) = app.on_host("h1");

    // Release 2 fails on h3; before h3 switched, h1 lost release 1 (kept container and image).
    // The automatic rollback puts release 1 back on h1 by pulling it, with the credentials.
    let image = format!(
        "{}@{}",
        app.repository(),
        rel1["manifest_digest"].as_str().unwrap()
    );
    let script = format!(
        "#!/bin/sh\nrm -f \"$0\"\ndocker -H {sock} rm -f {name}-r1 >/dev/null\n\
         id=$(docker -H {sock} image inspect --format '{{{{.Id}}}}' {image})\n\
         docker -H {sock} rmi -f \"$id\" >/dev/null\n",
        sock = lab::socket("h1"),
        name = app.name,
    );
    let now = dir.path().join("prune-h1.now");
    std::fs::write(&now, script).unwrap();
    chmod_x(&now);
    std::fs::write(
        app.repo.work.join(".hoist.yml"),
        app.pipeline(", BROKEN_ON: h3", Some(&prune)),
    )
    .unwrap();
    let run = app.run(&agent, "v2 broken on h3", &[]).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    println!(
        "{}",
        run["log"]
            .as_str()
            .unwrap_or_default()
            .split("── step deploy (deploy)")
            .last()
            .unwrap_or_default()
    );
    let d = app.last_deployment(&agent).await;
    assert_eq!(d["status"], "rolled_back", "{d:#}");
    assert_eq!(d["failing_host"], "h3", "{d:#}");
    assert!(!now.exists(), "the hook that prunes h1 never ran");
    app.assert_hosts_on(&rel1);
    let (h1_after, _, _) = app.on_host("h1");
    assert_ne!(
        h1_before, h1_after,
        "h1 serves its old container: release 1 was not pulled afresh"
    );
    assert_ne!(
        docker_lenient("h1", &["image", "inspect", "--format", "{{.Id}}", &image]),
        "",
        "h1 does not have release 1's image again"
    );
    app.clean_hosts();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_the_deploy_naming_the_registry_and_changes_no_host() {
    lab::check_auth_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let app = App::new(dir.path(), "regwrong", 17482, None);
    let mut agent = app.agent(Some(AUTH_REGISTRY_PASSWORD));
    let rel1 = first_release(&app, &agent).await;
    let run = app.run(&agent, "v2", &[("www/index.html", "v2")]).await;
    assert_eq!(run["status"], "success", "{run:#}");
    let rel2 = api(&agent, &format!("/apps/{}/releases", app.name)).await[0].clone();
    app.assert_hosts_on(&rel2);
    // Release 1 is gone from every host: going back to it needs the registry.
    for h in HOSTS {
        app.prune_from(h, &rel1);
    }
    let before: Vec<_> = HOSTS.iter().map(|h| app.on_host(h)).collect();

    // The registry entry has the wrong password: the deployment fails on the first host at
    // once, naming the registry and the entry; every host still runs release 2, untouched.
    agent.terminate();
    let mut agent = app.agent(Some(WRONG_PASSWORD));
    let d = rollback_to_1(&app, &agent).await;
    let reason = d["reason"].as_str().unwrap_or_default();
    println!("wrong password: deployment {}: {reason}", d["status"]);
    assert!(
        reason.contains(&format!(
            "the registry {AUTH_REGISTRY} refused the credentials of its [[registry]] entry (host = \"{AUTH_REGISTRY}\")"
        )),
        "{d:#}"
    );
    assert!(
        reason.contains("pull failed before anything on the host was stopped"),
        "{d:#}"
    );
    assert_eq!(d["failing_host"], "h1", "{d:#}");
    assert!(!format!("{d}").contains(WRONG_PASSWORD), "{d:#}");
    let after: Vec<_> = HOSTS.iter().map(|h| app.on_host(h)).collect();
    assert_eq!(before, after, "a host changed");
    app.assert_hosts_on(&rel2);

    // No entry at all: the reason says to add one.
    agent.terminate();
    let agent = app.agent(None);
    let d = rollback_to_1(&app, &agent).await;
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "add a [[registry]] entry with host = \"{AUTH_REGISTRY}\", username and password"
        )),
        "{d:#}"
    );
    let after: Vec<_> = HOSTS.iter().map(|h| app.on_host(h)).collect();
    assert_eq!(before, after, "a host changed");
    app.clean_hosts();
}

/// `POST /apps/APP/rollback {"to": 1}` and the deployment once it ended, which must not have
/// succeeded.
async fn rollback_to_1(app: &App, agent: &Agent) -> Value {
    let answer = api_post(
        agent,
        &format!("/apps/{}/rollback", app.name),
        Some(json!({ "to": 1 })),
    )
    .await;
    let status = answer.status();
    let body: Value = answer.json().await.unwrap();
    assert_eq!(status, 202, "{body:#}");
    let id = body["deployment"].as_i64().expect("a deployment id");
    let d = wait_for(agent, &format!("/deployments/{id}"), "ended", 120, |d| {
        d["status"] != "running"
    })
    .await;
    assert_ne!(d["status"], "succeeded", "{d:#}");
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_appears_in_no_log_line_api_answer_or_database_row() {
    lab::check_auth_registry().await;
    let dir = tempfile::tempdir().unwrap();
    let app = App::new(dir.path(), "regleak", 17483, None);
    let mut agent = app.agent(Some(AUTH_REGISTRY_PASSWORD));
    first_release(&app, &agent).await;
    let mut answers = answers(&app, &agent).await;

    // And with a wrong password, whose refusal is reported in the run and the log.
    agent.terminate();
    let agent = app.agent(Some(WRONG_PASSWORD));
    let run = app.run(&agent, "v2", &[("www/index.html", "v2")]).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert!(
        format!("{run}").contains(&format!(
            "the registry {AUTH_REGISTRY} refused the credentials"
        )),
        "{run:#}"
    );
    answers.push_str(&self::answers(&app, &agent).await);
    drop(agent);

    let basic = base64_of(&format!("{AUTH_REGISTRY_USER}:{AUTH_REGISTRY_PASSWORD}"));
    let log = std::fs::read_to_string(app.log()).unwrap();
    assert!(
        log.lines().count() > 10,
        "the agent logged almost nothing:\n{log}"
    );
    let mut db = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("data")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            db.extend(std::fs::read(&path).unwrap());
        }
    }
    assert!(!db.is_empty(), "no database files under data/");
    let db = String::from_utf8_lossy(&db);
    for secret in [AUTH_REGISTRY_PASSWORD, WRONG_PASSWORD, basic.as_str()] {
        for line in log.lines() {
            assert!(
                !line.contains(secret),
                "the agent logged a credential: {line}"
            );
        }
        assert!(
            !answers.contains(secret),
            "an API answer holds a credential: {answers}"
        );
        assert!(!db.contains(secret), "the database holds a credential");
    }
    app.clean_hosts();
}

/// Every API answer about the app, its runs, logs, releases, deployments and hosts, as text.
async fn answers(app: &App, agent: &Agent) -> String {
    let mut paths = vec![
        "/runs".to_string(),
        "/apps".to_string(),
        "/hosts".to_string(),
        "/deliveries".to_string(),
        format!("/apps/{}/releases", app.name),
        format!("/apps/{}/deployments", app.name),
        format!("/apps/{}/hosts", app.name),
    ];
    for r in api(agent, "/runs").await.as_array().unwrap() {
        paths.push(format!("/runs/{}", r["id"]));
        paths.push(format!("/runs/{}/logs", r["id"]));
    }
    let deployments = api(agent, &format!("/apps/{}/deployments", app.name)).await;
    for d in deployments.as_array().unwrap() {
        paths.push(format!("/deployments/{}", d["id"]));
    }
    let mut text = String::new();
    for p in paths {
        let answer = api_request(agent, Method::GET, &p).send().await.unwrap();
        assert!(answer.status().is_success(), "GET {p}: {}", answer.status());
        text.push_str(&answer.text().await.unwrap());
    }
    let metrics = reqwest::get(format!("{}/metrics", agent.url))
        .await
        .unwrap();
    text.push_str(&metrics.text().await.unwrap());
    text
}

fn chmod_x(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Standard base64 (the form of an HTTP Basic `Authorization` header).
fn base64_of(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
