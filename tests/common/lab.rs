//! The test lab that `scripts/lab up` runs on this machine: where its engines, hosts, registry
//! and nginx are (the facts `scripts/lab env` exports), connecting to them, and the docker CLI
//! against them. A test that needs the lab fails, saying what to do, when it is down; it never
//! skips.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use bollard::Docker;

/// Where the lab keeps its state (`LAB_DIR`).
pub const DIR: &str = "/var/lib/hoist-lab";
/// The namespace of the build engine (`LAB_BUILDER` is its socket).
pub const BUILDER: &str = "hb";
/// The hosts most tests deploy to. The lab has one more, h4 (see `ALL_HOSTS`).
pub const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
/// The hosts `scripts/lab up` makes by default (`LAB_HOSTS`): `HOSTS` and h4, the host a deploy
/// step gains in the balancer's scale-out test.
pub const ALL_HOSTS: [&str; 4] = ["h1", "h2", "h3", "h4"];
/// The registry, plain HTTP (`LAB_REGISTRY`).
pub const REGISTRY: &str = "10.203.0.1:5000";
/// The private registry, plain HTTP with htpasswd auth (`LAB_AUTH_REGISTRY`).
pub const AUTH_REGISTRY: &str = "10.203.0.1:5001";
/// Its lab user (`LAB_AUTH_REGISTRY_USER`).
pub const AUTH_REGISTRY_USER: &str = "hoist-lab";
/// Its lab password (`LAB_AUTH_REGISTRY_PASSWORD`).
pub const AUTH_REGISTRY_PASSWORD: &str = "lab-registry-pw-5001";
/// nginx, in front of every host's `APP_PORT` (`LAB_NGINX`).
pub const NGINX: &str = "http://127.0.0.1:8088";
/// The port nginx sends to on every host (`LAB_APP_PORT`).
pub const APP_PORT: u16 = 8080;
/// On the builder and on every host (`LAB_BASE_IMAGE`).
pub const BASE_IMAGE: &str = "lab/busybox:1";

/// What every failure that means "the lab is not there" ends with.
pub const DOWN: &str = "lab is down: run scripts/lab up (scripts/lab status says which part)";

/// The unix socket of lab engine `engine` ("hb", "h1", …): `LAB_HOST_<engine>_DOCKER`.
pub fn socket(engine: &str) -> String {
    format!("unix://{DIR}/{engine}/docker.sock")
}

/// The URL tests reach `engine` at: its socket, except that `HOIST_TEST_BUILDER`, when set,
/// points the builder elsewhere (an engine that has `BASE_IMAGE`).
pub fn engine_url(engine: &str) -> String {
    match std::env::var("HOIST_TEST_BUILDER") {
        Ok(url) if engine == BUILDER => url,
        _ => socket(engine),
    }
}

/// The bridge address of lab engine `engine`: 10.203.0.10 for the builder, 10.203.0.1N for hN.
pub fn address(engine: &str) -> String {
    if engine == BUILDER {
        "10.203.0.10".to_string()
    } else {
        format!("10.203.0.1{}", &engine[1..])
    }
}

/// The pid file of lab engine `engine`'s dockerd (`LAB_HOST_<engine>_PIDFILE`).
pub fn pidfile(engine: &str) -> PathBuf {
    PathBuf::from(format!("{DIR}/{engine}/docker.pid"))
}

/// A connection to lab engine `engine`; fails the test saying what to do when it is down.
pub async fn engine(engine: &str) -> Docker {
    let url = engine_url(engine);
    match hoist::engine::connect(&url, None).await {
        Ok(docker) => docker,
        Err(e) => panic!("{e:#}\nthe engine {engine} does not answer at {url}: {DOWN}"),
    }
}

/// The build engine's URL for a config or `hoist run --docker`, once the docker CLI got an
/// answer from it; fails the test saying what to do when it is down.
pub fn builder_url() -> String {
    let url = engine_url(BUILDER);
    let answers = Command::new("docker")
        .args(["-H", &url, "version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        answers,
        "the lab's build engine does not answer at {url}: {DOWN}"
    );
    url
}

/// Fails the test saying what to do unless the registry accepts connections.
pub fn check_registry() {
    let addr = REGISTRY.parse().unwrap();
    if let Err(e) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        panic!("the registry {REGISTRY} does not answer ({e}): {DOWN}");
    }
}

/// Fails the test saying what to do unless the private registry refuses an anonymous client
/// (401) and lets the lab's user in, and every lab engine trusts it over plain HTTP (an older
/// `scripts/lab up` started them without `--insecure-registry` for it).
pub async fn check_auth_registry() {
    for e in std::iter::once(BUILDER).chain(HOSTS) {
        let url = engine_url(e);
        let config = docker_command(&url, &["info", "--format", "{{json .RegistryConfig}}"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        assert!(
            config.contains(&format!("\"{AUTH_REGISTRY}\"")),
            "the engine {e} at {url} does not list {AUTH_REGISTRY} as an insecure registry ({config}): {DOWN}"
        );
    }
    let url = format!("http://{AUTH_REGISTRY}/v2/");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let anonymous = client.get(&url).send().await;
    let ok = client
        .get(&url)
        .basic_auth(AUTH_REGISTRY_USER, Some(AUTH_REGISTRY_PASSWORD))
        .send()
        .await;
    match (anonymous, ok) {
        (Ok(a), Ok(o)) if a.status() == 401 && o.status().is_success() => {}
        (a, o) => panic!(
            "the private registry {AUTH_REGISTRY} should answer 401 without and 200 with the lab's credentials; \
             it answered {:?} and {:?}: {DOWN}",
            a.map(|r| r.status()),
            o.map(|r| r.status())
        ),
    }
}

/// The docker CLI against lab engine `engine`; its trimmed stdout. Fails the test with its
/// output when it fails.
pub fn docker(engine: &str, args: &[&str]) -> String {
    let url = engine_url(engine);
    let out =
        docker_command(&url, args).expect("the docker CLI is needed (apt-get install docker.io)");
    assert!(
        out.status.success(),
        "docker -H {url} {}: {}\n{}\n(is the lab up? `scripts/lab status`)",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The docker CLI against lab engine `engine`, whatever its exit status; its trimmed stdout.
/// For clean-ups, which also run while a failed test unwinds, and for read-backs that an
/// assertion judges afterwards. Never panics: a panic while unwinding would abort the tests.
pub fn docker_lenient(engine: &str, args: &[&str]) -> String {
    docker_command(&engine_url(engine), args)
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Removes every container of an app (serving and kept: by its `hoist.app` label) from every
/// lab host when made and when dropped, also when the test fails.
pub struct Clean(pub String);

impl Clean {
    pub fn new(app: impl Into<String>) -> Clean {
        let c = Clean(app.into());
        c.now();
        c
    }

    pub fn now(&self) {
        let label = format!("label=hoist.app={}", self.0);
        for h in ALL_HOSTS {
            let ids = docker_lenient(h, &["ps", "-aq", "--filter", &label]);
            for id in ids.split_whitespace() {
                docker_lenient(h, &["rm", "-f", id]);
            }
        }
    }
}

impl Drop for Clean {
    fn drop(&mut self) {
        self.now();
    }
}

fn docker_command(url: &str, args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new("docker")
        .args(["-H", url])
        .args(args)
        // `docker build -q` prints the image ID only with the classic builder.
        .env("DOCKER_BUILDKIT", "0")
        .output()
}

/// A port in 18000..18999 that no other test of this process was given, and that nothing
/// listens on at 127.0.0.1 right now: for ports published on the lab hosts (where only tests
/// of this process publish, so the first matters) and for servers on loopback (the second).
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = std::process::id().wrapping_mul(37) % 1000;
    for _ in 0..1000 {
        // A step of 7 visits all 1000 ports before it comes back to one.
        let n = u32::from(NEXT.fetch_add(1, Ordering::Relaxed));
        let port = 18000 + ((base + n * 7) % 1000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 18000..18999 on 127.0.0.1");
}

/// Fails the test saying what to do unless lab host `engine` answers. A lab brought up with
/// fewer hosts (an older `scripts/lab up` made 3) gains the missing ones by `scripts/lab up`.
pub fn check_host(engine: &str) {
    let url = engine_url(engine);
    let answers = docker_command(&url, &["version", "--format", "{{.Server.Version}}"])
        .is_ok_and(|o| o.status.success());
    assert!(
        answers,
        "lab host {engine} does not answer at {url}: run scripts/lab up (it makes {} hosts by default)",
        ALL_HOSTS.len()
    );
}

/// `scripts/lab up`: brings back what a test took down (a killed dockerd).
///
/// It runs with stdin, stdout and stderr only. The daemons it starts outlive the test, and the
/// test inherited the lab lock's descriptor from `flock /tmp/hoist-lab.lock cargo test`: a
/// dockerd started with that descriptor open would hold the lab lock for ever.
pub fn up() -> ExitStatus {
    let close_inherited = r#"for fd in /proc/$$/fd/*; do fd=${fd##*/}; if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null; fi; done; exec "$0" up"#;
    Command::new("bash")
        .args(["-c", close_inherited])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lab"))
        .status()
        .unwrap()
}

/// The `[host.hN]` tables of the lab's hosts, for a test's own hoist.toml.
pub fn hosts_toml() -> String {
    HOSTS
        .iter()
        .map(|h| {
            format!(
                "[host.{h}]\ndocker = {:?}\naddress = {:?}\n",
                socket(h),
                address(h)
            )
        })
        .collect()
}

/// What a lab host runs as one container, read with the docker CLI, independently of hoist.
/// Every field is empty (and `running` false) when there is no such container.
#[derive(Debug, Clone, PartialEq)]
pub struct OnHost {
    /// The container's ID: a new one means the container was replaced.
    pub id: String,
    /// Whether it runs.
    pub running: bool,
    /// The repo digests of its image (JSON), which hold the release's manifest digest.
    pub digests: String,
    /// Its `hoist.release` label: the release hoist says it runs.
    pub release: String,
}

/// Read container `name` on lab host `h` with the docker CLI.
pub fn on_host(h: &str, name: &str) -> OnHost {
    let inspect = |format: &str| docker_lenient(h, &["inspect", name, "--format", format]);
    let image = inspect("{{.Image}}");
    OnHost {
        id: inspect("{{.Id}}"),
        running: inspect("{{.State.Running}}") == "true",
        digests: if image.is_empty() {
            String::new()
        } else {
            docker_lenient(
                h,
                &[
                    "image",
                    "inspect",
                    &image,
                    "--format",
                    "{{json .RepoDigests}}",
                ],
            )
        },
        release: inspect("{{index .Config.Labels \"hoist.release\"}}"),
    }
}
