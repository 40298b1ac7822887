//! Build, push and verify against the lab's real build engine and registry (`scripts/lab up`).
//! These tests fail, never skip, when the lab is down.
//!
//! Every test pushes to a repository of its own (`hoist-test/<name>-<pid>-<n>`), so tests
//! running at the same time, here or in another checkout on the same lab, never share a tag.
//! Images built on the builder are removed afterwards (best effort, also when a test fails).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use common::lab::{self, BASE_IMAGE as BASE, BUILDER, REGISTRY};
use hoist::config::RegistryConfig;
use hoist::image::{self, BuildRequest};
use hoist::runner::LogMsg;
use hoist::runner::LogSink;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Nothing listens here: a registry that is down.
const DEAD_REGISTRY: &str = "10.203.0.1:5999";

/// The lab's build engine; fails the test saying what to do when it is down.
async fn builder() -> Docker {
    lab::engine(BUILDER).await
}

/// The lab registry's `[[registry]]` entry; fails the test saying what to do when it is down.
fn registry() -> RegistryConfig {
    lab::check_registry();
    RegistryConfig {
        host: REGISTRY.to_string(),
        insecure: true,
        username: None,
        password: None,
    }
}

/// `REGISTRY/hoist-test/<name>-<pid>-<n>`: a repository no other test uses.
fn unique_repo(registry: &str, name: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{registry}/hoist-test/{name}-{}-{}-{}",
        std::process::id(),
        nanos % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The docker CLI against the builder; fails the test with its output when it fails.
fn cli(args: &[&str]) -> String {
    lab::docker(BUILDER, args)
}

/// References to untag (and so remove, when nothing else names the image) when dropped,
/// also when the test panicked.
#[derive(Default)]
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for r in &self.0 {
            // By reference, never by ID: an alias of lab/busybox:1 must only lose its tag.
            lab::docker_lenient(BUILDER, &["rmi", r]);
        }
    }
}

/// A log sink and everything it received so far.
fn log() -> (LogSink, mpsc::UnboundedReceiver<LogMsg>) {
    LogSink::channel()
}

fn drain(rx: &mut mpsc::UnboundedReceiver<LogMsg>) -> String {
    let mut text = Vec::new();
    while let Ok(chunk) = rx.try_recv() {
        text.extend(chunk.into_bytes());
    }
    String::from_utf8_lossy(&text).into_owned()
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

fn request(context: &Path, tags: &[&str]) -> BuildRequest {
    BuildRequest {
        checkout: context.to_path_buf(),
        context: context.to_path_buf(),
        dockerfile: "Dockerfile".to_string(),
        args: BTreeMap::new(),
        labels: BTreeMap::new(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
    }
}

/// A one-layer image whose content is `marker`, so that two markers give two images.
async fn build_marker(docker: &Docker, tag: &str, marker: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[(
            "Dockerfile",
            &format!("FROM {BASE}\nRUN echo {marker} > /marker\n"),
        )],
    );
    let (tx, _rx) = log();
    image::build(
        docker,
        &request(dir.path(), &[tag]),
        &tx,
        &CancellationToken::new(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn build_push_verify_honours_dockerignore_and_labels() {
    let docker = builder().await;
    let registry = registry();
    let repo = unique_repo(REGISTRY, "web");
    let (tag1, tag2) = (format!("{repo}:abc1234"), format!("{repo}:main"));
    let mut cleanup = Cleanup::default();
    cleanup.0.extend([tag1.clone(), tag2.clone()]);

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            (
                "Dockerfile",
                &format!(
                    "FROM {BASE}\nARG GREETING\nCOPY . /app/\nRUN echo \"$GREETING\" > /greeting\n"
                ),
            ),
            (
                ".dockerignore",
                "# the Dockerfile is listed, and must be sent anyway\nDockerfile\nsecret.txt\n*.log\n!important.log\ndocs/**/*.md\nnode_modules\n",
            ),
            ("app.txt", "app"),
            ("secret.txt", "do not ship"),
            ("debug.log", "noise"),
            ("important.log", "keep"),
            ("sub/secret.txt", "anchored patterns only match at the root"),
            ("docs/readme.txt", "kept"),
            ("docs/a/b/deep.md", "ignored through **"),
            ("node_modules/x/index.js", "ignored with its directory"),
        ],
    );
    let mut req = request(dir.path(), &[&tag1, &tag2]);
    req.args
        .insert("GREETING".into(), "hello from hoist".into());
    req.labels
        .insert("org.opencontainers.image.revision".into(), "abc1234".into());
    req.labels.insert("hoist.app".into(), "web".into());

    let (tx, mut rx) = log();
    let image_id = image::build(&docker, &req, &tx, &CancellationToken::new())
        .await
        .unwrap();
    let build_log = drain(&mut rx);
    // 6 files: the Dockerfile and .dockerignore (both listed in it), app.txt, important.log,
    // sub/secret.txt, docs/readme.txt; two LABEL steps are added by the engine for the labels.
    assert!(build_log.contains("6 files"), "{build_log}");
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    assert!(
        build_log.contains("Step 1/6 : FROM lab/busybox:1"),
        "{build_log}"
    );
    assert!(
        build_log.contains(&format!("Built image {image_id}")),
        "{build_log}"
    );

    // Both tags name the image; the ignored files are not in it; args and labels are.
    for tag in [&tag1, &tag2] {
        assert_eq!(cli(&["inspect", "--format", "{{.Id}}", tag]), image_id);
    }
    let listing = cli(&["run", "--rm", &tag1, "ls", "-R", "/app"]);
    for present in ["app.txt", "important.log", "sub", "readme.txt"] {
        assert!(
            listing.contains(present),
            "{present} missing from:\n{listing}"
        );
    }
    let top = cli(&["run", "--rm", &tag1, "ls", "-a", "/app"]);
    let top: Vec<&str> = top.lines().collect();
    for absent in ["secret.txt", "debug.log", "node_modules"] {
        assert!(!top.contains(&absent), "{absent} was sent: {top:?}");
    }
    assert!(!listing.contains("deep.md"), "{listing}");
    assert_eq!(cli(&["run", "--rm", &tag1, "ls", "/app/sub"]), "secret.txt");
    assert_eq!(
        cli(&["run", "--rm", &tag1, "cat", "/greeting"]),
        "hello from hoist"
    );
    let labels: serde_json::Value = serde_json::from_str(&cli(&[
        "inspect",
        "--format",
        "{{json .Config.Labels}}",
        &tag1,
    ]))
    .unwrap();
    assert_eq!(labels["org.opencontainers.image.revision"], "abc1234");
    assert_eq!(labels["hoist.app"], "web");

    // Push, then verify independently; skopeo gives a third opinion on the digest.
    let digest = image::push(&docker, &tag1, Some(&registry), &tx)
        .await
        .unwrap();
    let push_log = drain(&mut rx);
    assert!(
        push_log.contains(&format!("abc1234: digest: {digest}")),
        "{push_log}"
    );
    let verified = image::verify(&tag1, Some(&registry), &digest, &image_id)
        .await
        .unwrap();
    assert_eq!(verified.manifest_digest, digest);
    assert_eq!(verified.config_digest, image_id);
    assert!(verified.size > 0);

    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", &format!("docker://{tag1}")])
        .output()
        .expect("skopeo is needed (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspect: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspect["Digest"], digest.as_str());
    assert_eq!(
        image::digest_reference(&tag1, &digest).unwrap(),
        format!("{repo}@{digest}")
    );
}

#[tokio::test]
async fn a_tag_pushed_over_fails_verification_naming_both_digests() {
    let docker = builder().await;
    let registry = registry();
    let repo = unique_repo(REGISTRY, "tamper");
    let tag = format!("{repo}:1");
    let other = format!("{repo}-other:1");
    let mut cleanup = Cleanup::default();
    cleanup.0.extend([tag.clone(), other.clone()]);

    let (tx, _rx) = log();
    let id_a = build_marker(&docker, &tag, &format!("a-{repo}")).await;
    // A loses its tag to B below; remove it by ID then (it is ours alone).
    cleanup.0.push(id_a.clone());
    let digest_a = image::push(&docker, &tag, Some(&registry), &tx)
        .await
        .unwrap();
    image::verify(&tag, Some(&registry), &digest_a, &id_a)
        .await
        .unwrap();

    // Someone else pushes a different image B over the same tag, with the plain CLI.
    let id_b = build_marker(&docker, &other, &format!("b-{repo}")).await;
    assert_ne!(id_a, id_b);
    cli(&["tag", &other, &tag]);
    let pushed = cli(&["push", &tag]);
    let digest_b = pushed
        .lines()
        .find_map(|l| l.strip_prefix("1: digest: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest in: {pushed}"))
        .to_string();
    assert_ne!(digest_a, digest_b);

    let err = image::verify(&tag, Some(&registry), &digest_a, &id_a)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "the registry holds {digest_b} for {tag} but the engine pushed {digest_a}; nothing from this run deploys"
        )
    );

    // B's own digest with A's image ID: the manifest matches but names another config.
    let err = image::verify(&tag, Some(&registry), &digest_b, &id_a)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&id_a) && err.contains(&id_b), "{err}");
    assert!(err.ends_with("nothing from this run deploys"), "{err}");

    let verified = image::verify(&tag, Some(&registry), &digest_b, &id_b)
        .await
        .unwrap();
    assert_eq!(verified.manifest_digest, digest_b);
}

#[tokio::test]
async fn a_registry_that_is_down_is_retried_then_named() {
    let docker = builder().await;
    let reference = format!("{}:1", unique_repo(DEAD_REGISTRY, "x"));
    let _cleanup = Cleanup(vec![reference.clone()]);
    cli(&["tag", BASE, &reference]);

    let (tx, mut rx) = log();
    let started = Instant::now();
    let err = image::push(&docker, &reference, None, &tx)
        .await
        .unwrap_err()
        .to_string();
    let took = started.elapsed();
    assert!(
        err.starts_with(&format!(
            "the registry {DEAD_REGISTRY} is unavailable: 4 attempts over"
        )),
        "{err}"
    );
    assert!(err.contains("connection refused"), "{err}");
    // 0.5 + 1 + 2 s of backoff, and well under the bound.
    assert!(
        took >= Duration::from_millis(3500) && took < Duration::from_secs(15),
        "{took:?}"
    );
    let push_log = drain(&mut rx);
    assert_eq!(push_log.matches("retrying in").count(), 3, "{push_log}");

    // The independent check against the same dead registry: same policy, same naming.
    let dead = RegistryConfig {
        host: DEAD_REGISTRY.to_string(),
        insecure: true,
        username: None,
        password: None,
    };
    let started = Instant::now();
    let digest = format!("sha256:{}", "0".repeat(64));
    let err = image::verify(&reference, Some(&dead), &digest, &digest)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "the registry {DEAD_REGISTRY} is unavailable: 4 attempts over"
        )),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn a_tag_the_registry_does_not_have_is_named() {
    let registry = registry();
    let reference = format!("{}:nope", unique_repo(REGISTRY, "missing"));
    let digest = format!("sha256:{}", "0".repeat(64));
    let started = Instant::now();
    let err = image::verify(&reference, Some(&registry), &digest, &digest)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("the registry has no manifest for {reference}")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "not retried");
}

#[tokio::test]
async fn a_failing_instruction_fails_with_the_builders_message() {
    let docker = builder().await;
    let tag = format!("{}:1", unique_repo(REGISTRY, "fails"));
    let _cleanup = Cleanup(vec![tag.clone()]);
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[("Dockerfile", &format!("FROM {BASE}\nRUN exit 7\n"))],
    );
    let (tx, mut rx) = log();
    let err = image::build(
        &docker,
        &request(dir.path(), &[&tag]),
        &tx,
        &CancellationToken::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    let message = "The command '/bin/sh -c exit 7' returned a non-zero code: 7";
    assert_eq!(err, format!("the image build failed: {message}"));
    assert!(drain(&mut rx).contains(message));

    // A Dockerfile that is not there is named before anything is sent.
    let mut req = request(dir.path(), &[&tag]);
    req.dockerfile = "docker/Dockerfile.missing".into();
    let err = image::build(&docker, &req, &tx, &CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("the Dockerfile docker/Dockerfile.missing does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn a_cancelled_build_stops_promptly() {
    let docker = builder().await;
    let tag = format!("{}:1", unique_repo(REGISTRY, "cancel"));
    let _cleanup = Cleanup(vec![tag.clone()]);
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[(
            "Dockerfile",
            &format!("FROM {BASE}\nRUN echo $((6 * 7))-running && sleep 60\n"),
        )],
    );
    let (tx, mut rx) = log();
    let cancel = CancellationToken::new();
    let req = request(dir.path(), &[&tag]);
    let build = image::build(&docker, &req, &tx, &cancel);
    let watch = async {
        // Cancel once the long step is running (its output, not its echoed Dockerfile line,
        // says so), as a person pressing cancel would.
        let mut seen = String::new();
        while !seen.contains("42-running") {
            match rx.recv().await {
                Some(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk.into_bytes())),
                None => panic!("log closed before the step started: {seen}"),
            }
        }
        cancel.cancel();
    };
    let started = Instant::now();
    let (result, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(build, watch)
    })
    .await
    .expect("the build neither ran nor stopped within 30s");
    let err = result.unwrap_err().to_string();
    assert_eq!(err, "the image build was cancelled");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn https_to_a_plain_http_registry_is_named_not_retried() {
    let mut registry = registry();
    registry.insecure = false;
    let reference = format!("{}:1", unique_repo(REGISTRY, "scheme"));
    let digest = format!("sha256:{}", "0".repeat(64));
    let started = Instant::now();
    let err = image::verify(&reference, Some(&registry), &digest, &digest)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "the registry {REGISTRY} answers plain HTTP, not HTTPS: if that is intended (lab or loopback only), set insecure = true"
        )),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "not retried");
}
