//! What hoist does to one host, against the lab's real engines (`scripts/lab up`): pull by
//! digest, start, health checks, keep, roll back, read back, prune. These tests fail, never
//! skip, when the lab is down.
//!
//! Each test builds its own images (content unique to the test, so that image IDs are never
//! shared between tests running at the same time), pushes them to the lab registry, and
//! uses container names and host ports of its own. A guard removes what the test made on the
//! hosts and the builder, even when the test fails.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::CreateContainerOptionsBuilder;
use common::lab::{self, BUILDER, REGISTRY, address, engine, free_port};
use hoist::deploy::health::{check_once, wait_healthy};
use hoist::deploy::host::{
    self, APP_LABEL, COMMIT_LABEL, DIGEST_LABEL, RELEASE_LABEL, Target, kept_name,
};
use hoist::pipeline::{ContainerSpec, HealthCheck, HealthSpec};
use tokio_util::sync::CancellationToken;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// What a test made; removed on drop, through the docker CLI so that it also works while
/// unwinding from a failed assertion.
struct Lab {
    /// Unique to this test: `hoisttest-<random>`; container names start with it.
    id: String,
    /// `REGISTRY/hoist-test/host-<random>`.
    repo: String,
    /// (host, image reference) pulled onto hosts.
    pulled: std::sync::Mutex<Vec<(String, String)>>,
    /// Tags built on the builder.
    built: std::sync::Mutex<Vec<String>>,
    /// Hosts the test put containers on.
    hosts: Vec<&'static str>,
}

impl Lab {
    fn new(test: &str, hosts: &[&'static str]) -> Lab {
        let r: u32 = rand::random();
        Lab {
            id: format!("hoisttest-{test}-{r:08x}"),
            repo: format!("{REGISTRY}/hoist-test/host-{test}-{r:08x}"),
            pulled: Default::default(),
            built: Default::default(),
            hosts: hosts.to_vec(),
        }
    }

    /// Build `FROM BASE_IMAGE` serving `/www` (healthz holds `version`) with `cmd`, push it
    /// as `REPO:version`, and return (image by digest, digest).
    async fn image(&self, version: &str, extra: &str, cmd: &str) -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("www")).unwrap();
        // The test id in the content keeps image IDs distinct between tests.
        std::fs::write(
            dir.path().join("www/healthz"),
            format!("{version} {}\n", self.id),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!(
                "FROM {}\nCOPY www /www\n{extra}\nCMD {cmd}\n",
                lab::BASE_IMAGE
            ),
        )
        .unwrap();
        let tag = format!("{}:{version}", self.repo);
        self.built.lock().unwrap().push(tag.clone());
        lab::docker(
            BUILDER,
            &["build", "-q", "-t", &tag, dir.path().to_str().unwrap()],
        );
        lab::docker(BUILDER, &["push", "-q", &tag]);
        let reference = lab::docker(
            BUILDER,
            &["inspect", "--format", "{{index .RepoDigests 0}}", &tag],
        );
        let (repo, digest) = reference.trim().split_once('@').unwrap();
        assert_eq!(repo, self.repo);
        (format!("{repo}@{digest}"), digest.to_string())
    }

    /// The standard web image: httpd on 8080 serving `/www`, stopping at once on SIGTERM.
    async fn web(&self, version: &str, extra: &str) -> (String, String) {
        // PID 1 gets no default signal handling: without the trap, `docker stop` would wait
        // out its whole timeout before killing httpd.
        let cmd = r#"["sh","-c","trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"]"#;
        self.image(version, extra, cmd).await
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.id)
    }

    async fn pull(&self, docker: &Docker, h: &str, image: &str, digest: &str) -> String {
        self.pulled
            .lock()
            .unwrap()
            .push((h.to_string(), image.to_string()));
        host::pull(docker, image, digest, None)
            .await
            .unwrap_or_else(|e| panic!("pull {image} on {h}: {e:#}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in &self.hosts {
            let filter = format!("name={}", self.id);
            let ids = lab::docker_lenient(h, &["ps", "-aq", "--filter", &filter]);
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids);
                lab::docker_lenient(h, &args);
            }
        }
        for (h, image) in self.pulled.lock().unwrap().iter() {
            lab::docker_lenient(h, &["rmi", image]);
        }
        for tag in self.built.lock().unwrap().iter() {
            lab::docker_lenient(BUILDER, &["rmi", tag]);
        }
    }
}

fn container(name: &str, ports: &[String], env: &[(&str, &str)]) -> ContainerSpec {
    ContainerSpec {
        name: name.to_string(),
        ports: ports.to_vec(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        args: Vec::new(),
        volumes: Vec::new(),
        ..ContainerSpec::default()
    }
}

fn target<'a>(
    release: i64,
    image: &'a (String, String),
    container: &'a ContainerSpec,
) -> Target<'a> {
    Target {
        app: "hoisttest",
        release,
        commit: COMMIT,
        image: &image.0,
        digest: &image.1,
        container,
        secrets: &[],
    }
}

fn health(check: HealthCheck, healthy_for_ms: u64, deadline_ms: u64) -> HealthSpec {
    HealthSpec {
        check,
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
        healthy_for: Duration::from_millis(healthy_for_ms),
        deadline: Duration::from_millis(deadline_ms),
        start_period: Duration::ZERO,
        fail_after: 0,
    }
}

fn http(path: &str) -> HealthCheck {
    HealthCheck::Http {
        port: 8080,
        path: path.to_string(),
        host: None,
        status: Default::default(),
    }
}

async fn healthy(docker: &Docker, name: &str, addr: &str, spec: &HealthSpec) {
    if let Err(reason) = wait_healthy(docker, name, addr, spec, &CancellationToken::new()).await {
        panic!("{name} did not become healthy: {reason}");
    }
}

async fn page(url: &str) -> String {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap()
}

/// The whole life of a release on one host: pull by digest, start, healthy, read back;
/// keep it, start the next, read back; roll back to the kept one, read back again.
#[tokio::test]
async fn roll_forward_and_back_on_one_host() {
    let lab = Lab::new("fwdback", &["h1"]);
    let h1 = engine("h1").await;
    let addr = address("h1");
    let v1 = lab.web("v1", "").await;
    let v2 = lab
        .web(
            "v2",
            "HEALTHCHECK --interval=1s --timeout=1s CMD wget -q -O /dev/null http://127.0.0.1:8080/healthz || exit 1",
        )
        .await;
    let port = free_port();
    let name = lab.name("web");
    let spec = container(&name, &[format!("{port}:8080")], &[]);

    // Pull by digest, verified; a second pull finds it present and agrees.
    let id1 = lab.pull(&h1, "h1", &v1.0, &v1.1).await;
    assert!(id1.starts_with("sha256:"), "{id1}");
    assert_eq!(host::pull(&h1, &v1.0, &v1.1, None).await.unwrap(), id1);
    let id2 = lab.pull(&h1, "h1", &v2.0, &v2.1).await;
    assert_ne!(id1, id2);

    // Nothing runs as the name yet; keeping nothing is a no-op.
    assert_eq!(host::current(&h1, &name).await.unwrap(), None);
    assert_eq!(
        host::keep_current(&h1, &name, "hoisttest", false)
            .await
            .unwrap(),
        None
    );

    // Release 1.
    let cid1 = host::start(&h1, &target(1, &v1, &spec)).await.unwrap();
    let http_spec = health(http("/healthz"), 400, 20_000);
    healthy(&h1, &name, &addr, &http_spec).await;
    assert!(
        page(&format!("http://{addr}:{port}/healthz"))
            .await
            .starts_with("v1 ")
    );
    let rb = host::read_back(&h1, &name, &lab.repo).await.unwrap();
    assert_eq!(rb.digest.as_deref(), Some(v1.1.as_str()));
    assert!(rb.running);
    assert_eq!(rb.container_id, cid1);
    assert_eq!(rb.image_id, id1);
    let cur = host::current(&h1, &name).await.unwrap().unwrap();
    assert_eq!(
        (
            cur.id.as_str(),
            cur.running,
            cur.release,
            cur.digest.as_deref()
        ),
        (cid1.as_str(), true, Some(1), Some(v1.1.as_str()))
    );
    assert_eq!(cur.exit_code, None);
    // Docker would resolve an ID prefix to this container; hoist only takes exact names.
    assert_eq!(host::current(&h1, &cid1[..12]).await.unwrap(), None);

    // A second container of the same name is refused, and the first is left alone.
    let err = host::start(&h1, &target(2, &v2, &spec)).await.unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err:#}");
    assert_eq!(host::current(&h1, &name).await.unwrap().unwrap().id, cid1);

    // Keep release 1 (stopped, renamed), start release 2.
    let kept = host::keep_current(&h1, &name, "hoisttest", false)
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some(kept_name(&name, 1).as_str()));
    assert_eq!(host::current(&h1, &name).await.unwrap(), None);
    let k = host::current(&h1, &kept_name(&name, 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (k.id.as_str(), k.running, k.release),
        (cid1.as_str(), false, Some(1))
    );
    let cid2 = host::start(&h1, &target(2, &v2, &spec)).await.unwrap();
    healthy(&h1, &name, &addr, &http_spec).await;
    // The image's own HEALTHCHECK (v2 has one).
    healthy(&h1, &name, &addr, &health(HealthCheck::Docker, 0, 20_000)).await;
    assert!(
        page(&format!("http://{addr}:{port}/healthz"))
            .await
            .starts_with("v2 ")
    );
    let rb = host::read_back(&h1, &name, &lab.repo).await.unwrap();
    assert_eq!(rb.digest.as_deref(), Some(v2.1.as_str()));
    assert_eq!(
        (rb.running, rb.container_id.as_str()),
        (true, cid2.as_str())
    );

    // Labels name app, release, commit and digest; `hoist hosts` sees both containers.
    let labels = h1
        .inspect_container(&name, None)
        .await
        .unwrap()
        .config
        .unwrap()
        .labels
        .unwrap();
    assert_eq!(labels[APP_LABEL], "hoisttest");
    assert_eq!(labels[RELEASE_LABEL], "2");
    assert_eq!(labels[COMMIT_LABEL], COMMIT);
    assert_eq!(labels[DIGEST_LABEL], v2.1);
    let info = host::describe(&h1).await.unwrap();
    assert!(info.version.starts_with("20.10"), "{info:?}");
    let mine: Vec<_> = info
        .containers
        .iter()
        .filter(|c| c.name.starts_with(&lab.id))
        .map(|c| (c.name.as_str(), c.release, c.state.as_str()))
        .collect();
    assert_eq!(
        mine,
        [
            (name.as_str(), Some(2), "running"),
            (kept_name(&name, 1).as_str(), Some(1), "exited")
        ]
    );

    // Roll back: remove the new one, restore the kept one, read back release 1 running.
    host::remove(&h1, &name, "hoisttest").await.unwrap();
    host::remove(&h1, &name, "hoisttest").await.unwrap(); // already gone: still fine
    assert!(
        host::restore_kept(&h1, &name, "hoisttest", 1)
            .await
            .unwrap()
    );
    let rb = host::read_back(&h1, &name, &lab.repo).await.unwrap();
    assert_eq!(rb.digest.as_deref(), Some(v1.1.as_str()));
    assert!(rb.running);
    assert_eq!(rb.container_id, cid1);
    healthy(&h1, &name, &addr, &http_spec).await;
    assert!(
        page(&format!("http://{addr}:{port}/healthz"))
            .await
            .starts_with("v1 ")
    );
    // Nothing left to restore.
    assert!(
        !host::restore_kept(&h1, &name, "hoisttest", 1)
            .await
            .unwrap()
    );
    assert!(
        !host::restore_kept(&h1, &name, "hoisttest", 7)
            .await
            .unwrap()
    );
}

/// Only a digest reference whose arrival can be proven is pulled.
#[tokio::test]
async fn pull_is_by_digest_and_verified() {
    let lab = Lab::new("pull", &["h2"]);
    let h2 = engine("h2").await;
    let v1 = lab.web("v1", "").await;

    let err = host::pull(&h2, &format!("{}:v1", lab.repo), &v1.1, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not pinned by digest"), "{err:#}");

    let other = format!("sha256:{}", "0".repeat(64));
    let err = host::pull(&h2, &v1.0, &other, None).await.unwrap_err();
    assert!(err.to_string().contains("does not carry"), "{err:#}");

    // A digest the registry does not have: the error names the image.
    let missing = format!("{}@{other}", lab.repo);
    let err = host::pull(&h2, &missing, &other, None).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("could not pull") && msg.contains(&missing),
        "{msg}"
    );

    let id = lab.pull(&h2, "h2", &v1.0, &v1.1).await;
    let image = h2.inspect_image(&id).await.unwrap();
    assert!(image.repo_digests.unwrap().contains(&v1.0));
}

/// A process that does not stay in the foreground fails at once, with its exit code and log,
/// not at the deadline.
#[tokio::test]
async fn exit_at_once_fails_fast_with_code_and_log() {
    let lab = Lab::new("exits", &["h2"]);
    let h2 = engine("h2").await;
    let bad = lab
        .image(
            "bad",
            "",
            r#"["sh","-c","echo boot failed: no config >&2; exit 3"]"#,
        )
        .await;
    lab.pull(&h2, "h2", &bad.0, &bad.1).await;
    let name = lab.name("web");
    let spec = container(&name, &[format!("{}:8080", free_port())], &[]);
    host::start(&h2, &target(1, &bad, &spec)).await.unwrap();

    let t0 = Instant::now();
    let deadline = 30_000;
    let reason = wait_healthy(
        &h2,
        &name,
        &address("h2"),
        &health(http("/healthz"), 0, deadline),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(8), "took {took:?}: {reason}");
    assert!(
        reason.contains("the container exited with code 3"),
        "{reason}"
    );
    assert!(reason.contains("boot failed: no config"), "{reason}");
    assert!(reason.contains("foreground"), "{reason}");

    // Under unless-stopped the engine keeps restarting it; one check still says why.
    let reason = check_once(&h2, &name, &address("h2"), &health(http("/"), 0, 1000))
        .await
        .unwrap_err();
    assert!(reason.contains("exited with code 3"), "{reason}");
}

/// An HTTP check that never passes fails at the deadline, saying what the server answered.
#[tokio::test]
async fn http_404_fails_at_the_deadline_with_the_status() {
    let lab = Lab::new("h404", &["h2"]);
    let h2 = engine("h2").await;
    let v1 = lab.web("v1", "").await;
    lab.pull(&h2, "h2", &v1.0, &v1.1).await;
    let name = lab.name("web");
    let port = free_port();
    let spec = container(&name, &[format!("{port}:8080")], &[]);
    host::start(&h2, &target(1, &v1, &spec)).await.unwrap();

    let t0 = Instant::now();
    let reason = wait_healthy(
        &h2,
        &name,
        &address("h2"),
        &health(http("/nope"), 0, 2000),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    assert_eq!(
        reason,
        format!(
            "not healthy within 2s: GET http://{}:{port}/nope answered 404 Not Found (healthy: 200-399)",
            address("h2")
        )
    );

    // Cancelling stops the wait at once.
    let cancel = CancellationToken::new();
    cancel.cancel();
    let reason = wait_healthy(
        &h2,
        &name,
        &address("h2"),
        &health(http("/nope"), 0, 60_000),
        &cancel,
    )
    .await
    .unwrap_err();
    assert_eq!(reason, "cancelled");
}

/// TCP and command checks, the per-host environment, and checks that cannot pass.
#[tokio::test]
async fn tcp_command_and_env() {
    let lab = Lab::new("probes", &["h2"]);
    let h2 = engine("h2").await;
    let addr = address("h2");
    let v1 = lab.web("v1", "").await;
    lab.pull(&h2, "h2", &v1.0, &v1.1).await;
    let name = lab.name("web");
    let node = format!("h2-{}", lab.id);
    // 8081 is published but nothing listens there.
    let spec = container(
        &name,
        &[
            format!("{}:8080", free_port()),
            format!("{addr}:{}:8081", free_port()),
        ],
        &[("NODE_ID", &node)],
    );
    host::start(&h2, &target(1, &v1, &spec)).await.unwrap();

    healthy(
        &h2,
        &name,
        &addr,
        &health(HealthCheck::Tcp(8080), 400, 20_000),
    )
    .await;
    let env_is = |value: &str| {
        HealthCheck::Command(vec![
            "sh".into(),
            "-c".into(),
            format!("echo NODE_ID=$NODE_ID; test \"$NODE_ID\" = {value}"),
        ])
    };
    healthy(&h2, &name, &addr, &health(env_is(&node), 400, 20_000)).await;
    let reason = check_once(&h2, &name, &addr, &health(env_is("other"), 0, 1000))
        .await
        .unwrap_err();
    assert!(
        reason.ends_with(&format!("exited with 1: NODE_ID={node}")),
        "{reason}"
    );

    let t0 = Instant::now();
    let reason = wait_healthy(
        &h2,
        &name,
        &addr,
        &health(HealthCheck::Tcp(8081), 0, 1000),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        reason.starts_with(&format!("not healthy within 1s: TCP {addr}:")),
        "{reason}"
    );
    assert!(t0.elapsed() < Duration::from_secs(4));

    // Checks that can never pass fail at once rather than at the deadline.
    let t0 = Instant::now();
    let reason = wait_healthy(
        &h2,
        &name,
        &addr,
        &health(HealthCheck::Tcp(9999), 0, 30_000),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(reason.contains("9999/tcp is not published"), "{reason}");
    let reason = wait_healthy(
        &h2,
        &name,
        &addr,
        &health(HealthCheck::Docker, 0, 30_000),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(reason.contains("no HEALTHCHECK"), "{reason}");
    assert!(t0.elapsed() < Duration::from_secs(3));
}

/// Retention keeps exactly the asked releases, never the serving container, never an image a
/// container still uses, and never a container whose name only looks kept.
#[tokio::test]
async fn prune_keeps_only_what_is_asked() {
    let lab = Lab::new("prune", &["h2"]);
    let h2 = engine("h2").await;
    let v1 = lab.web("v1", "").await;
    let v2 = lab.web("v2", "").await;
    let v3 = lab.web("v3", "").await;
    let ids: HashMap<&str, String> = HashMap::from([
        ("v1", lab.pull(&h2, "h2", &v1.0, &v1.1).await),
        ("v2", lab.pull(&h2, "h2", &v2.0, &v2.1).await),
        ("v3", lab.pull(&h2, "h2", &v3.0, &v3.1).await),
    ]);
    let name = lab.name("web");
    let spec = container(&name, &[], &[]);
    // Releases 1 (v1), 2 (v2), 3 (v3) kept; 4 serves v1 again.
    for (release, image) in [(1, &v1), (2, &v2), (3, &v3)] {
        host::start(&h2, &target(release, image, &spec))
            .await
            .unwrap();
        assert_eq!(
            host::keep_current(&h2, &name, "hoisttest", false)
                .await
                .unwrap(),
            Some(kept_name(&name, release))
        );
    }
    host::start(&h2, &target(4, &v1, &spec)).await.unwrap();
    // Looks kept, but its label disagrees with its name: not hoist's to prune.
    let decoy = kept_name(&name, 9);
    let body = ContainerCreateBody {
        image: Some(v2.0.clone()),
        labels: Some(HashMap::from([(
            RELEASE_LABEL.to_string(),
            "8".to_string(),
        )])),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default()
        .name(&decoy)
        .build();
    h2.create_container(Some(options), body).await.unwrap();

    let removed = host::prune(&h2, &name, "hoisttest", &BTreeSet::from([2]))
        .await
        .unwrap();
    // Release 1's image serves as release 4, so only release 3's image goes.
    assert_eq!(
        removed,
        [kept_name(&name, 1), kept_name(&name, 3), v3.0.clone()]
    );
    for (n, present) in [
        (name.clone(), true),
        (kept_name(&name, 1), false),
        (kept_name(&name, 2), true),
        (kept_name(&name, 3), false),
        (decoy.clone(), true),
    ] {
        assert_eq!(
            host::current(&h2, &n).await.unwrap().is_some(),
            present,
            "{n}"
        );
    }
    assert!(h2.inspect_image(&ids["v1"]).await.is_ok());
    assert!(h2.inspect_image(&ids["v2"]).await.is_ok());
    assert!(h2.inspect_image(&ids["v3"]).await.is_err());
    // The serving container is still proven by its digest.
    let rb = host::read_back(&h2, &name, &lab.repo).await.unwrap();
    assert_eq!(rb.digest.as_deref(), Some(v1.1.as_str()));

    // Keeping over an older container of the same kept name replaces it.
    let kept2 = h2
        .inspect_container(&kept_name(&name, 2), None)
        .await
        .unwrap()
        .id
        .unwrap();
    // Release 4 is kept as NAME-r4; release 2 starts again and is kept over the old NAME-r2.
    host::keep_current(&h2, &name, "hoisttest", false)
        .await
        .unwrap();
    host::start(&h2, &target(2, &v2, &spec)).await.unwrap();
    assert_eq!(
        host::keep_current(&h2, &name, "hoisttest", false)
            .await
            .unwrap(),
        Some(kept_name(&name, 2))
    );
    let now2 = h2
        .inspect_container(&kept_name(&name, 2), None)
        .await
        .unwrap()
        .id
        .unwrap();
    assert_ne!(kept2, now2);

    let removed = host::prune(&h2, &name, "hoisttest", &BTreeSet::new())
        .await
        .unwrap();
    assert!(removed.contains(&kept_name(&name, 2)), "{removed:?}");
    assert!(removed.contains(&kept_name(&name, 4)), "{removed:?}");
    // v2 stays: the decoy still uses it.
    assert!(
        removed.contains(&v1.0) && !removed.contains(&v2.0),
        "{removed:?}"
    );
    assert!(host::current(&h2, &decoy).await.unwrap().is_some());
}

/// Every host action checks `hoist.app`: another app's container of the same name, serving or
/// kept, is never stopped, renamed, removed, restored or pruned; the check before a
/// deployment names its owner.
#[tokio::test]
async fn another_apps_container_is_refused_by_every_action() {
    let lab = Lab::new("owner", &["h1"]);
    let h1 = engine("h1").await;
    let v1 = lab.web("v1", "").await;
    lab.pull(&h1, "h1", &v1.0, &v1.1).await;
    let name = lab.name("web");
    let spec = container(&name, &[], &[]);
    let theirs = |release| Target {
        app: "hoisttest-other",
        ..target(release, &v1, &spec)
    };
    host::start(&h1, &theirs(1)).await.unwrap();
    host::keep_current(&h1, &name, "hoisttest-other", false)
        .await
        .unwrap();
    host::start(&h1, &theirs(2)).await.unwrap();
    let before = (
        host::current(&h1, &name).await.unwrap(),
        host::current(&h1, &kept_name(&name, 1)).await.unwrap(),
    );
    assert!(before.0.as_ref().is_some_and(|c| c.running));

    let owner = |e: anyhow::Error| {
        let e = format!("{e:#}");
        assert!(e.contains("belongs to app hoisttest-other"), "{e}");
    };
    owner(
        host::check_owner(&h1, &name, "hoisttest")
            .await
            .unwrap_err(),
    );
    owner(
        host::keep_current(&h1, &name, "hoisttest", false)
            .await
            .unwrap_err(),
    );
    owner(host::remove(&h1, &name, "hoisttest").await.unwrap_err());
    owner(
        host::restore_kept(&h1, &name, "hoisttest", 1)
            .await
            .unwrap_err(),
    );
    let pruned = host::prune(&h1, &name, "hoisttest", &BTreeSet::new())
        .await
        .unwrap();
    assert!(pruned.is_empty(), "{pruned:?}");
    let after = (
        host::current(&h1, &name).await.unwrap(),
        host::current(&h1, &kept_name(&name, 1)).await.unwrap(),
    );
    assert_eq!(after, before);
    // Its own app passes the check.
    host::check_owner(&h1, &name, "hoisttest-other")
        .await
        .unwrap();
}
