//! hoist reaches real Docker engines over its two remote transports, with no mocks:
//!
//! - `tcp://` with mutual TLS: a throwaway CA, server and client certificates made with the
//!   `openssl` CLI, and `socat` terminating TLS (client certificate required) in front of the
//!   lab engine h1's socket, which is what a TLS dockerd answers like.
//! - `ssh://`: a throwaway `sshd` on 127.0.0.1 whose sessions get
//!   `DOCKER_HOST=unix:///var/lib/hoist-lab/h2/docker.sock` (`SetEnv`), so that the
//!   `docker system dial-stdio` bollard runs there talks to the lab engine h2.
//!
//! The system `ssh` reads its configuration, keys and known_hosts from the home directory in
//! the password database, not from `$HOME`, so the agent under test gets a `PATH` whose first
//! `ssh` is a two-line wrapper running the real `/usr/bin/ssh -F <tempdir>/ssh_config`: the
//! key, known_hosts and host aliases stay in the test's temporary directory and `/root/.ssh`
//! is never read or written. (An operator puts the same lines in the agent user's
//! `~/.ssh/config`.)
//!
//! These tests fail, never skip, when the lab (`scripts/lab up`) is down or when `openssl`,
//! `socat`, `sshd` or `ssh` is missing; the message names the Debian package.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::CreateContainerOptionsBuilder;
use common::lab::{self, BASE_IMAGE as LAB_IMAGE, address, free_port, socket};
use common::{Agent, api_request, hoist, token_toml, wait_until_blocking};
use hoist::config::TlsConfig;
use hoist::deploy::host::APP_LABEL;
use reqwest::Method;
use serde_json::Value;

// ------------------------------------------------------------------ tools and processes

/// The path of program `name`; fails the test naming the Debian package when it is missing.
fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for dir in dirs {
        let p = dir.join(name);
        if std::fs::metadata(&p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
            return p;
        }
    }
    panic!(
        "`{name}` is not installed and these tests need it: install the Debian package \
         `{package}` (`apt-get install -y {package}`; scripts/lab installs it when it is in \
         its PACKAGES list)"
    );
}

/// Runs `cmd`; fails the test with its stderr unless it succeeds.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Parent pid of `pid`, from /proc/PID/stat (the field after the parenthesised name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(1)?.parse().ok()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every live descendant of `pid` (socat's and sshd's per-connection children).
fn descendants(pid: u32) -> Vec<u32> {
    let pids = all_pids();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            pids.iter()
                .copied()
                .filter(|&p| parent_of(p) == Some(parent)),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Processes whose command line contains `needle` (a path inside a test's own tempdir).
fn pids_with_arg(needle: &str) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| p != std::process::id())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

fn kill_pids(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-KILL")
        .args(pids.iter().map(|p| p.to_string()))
        .stderr(Stdio::null())
        .status();
}

/// A server this test started (socat, sshd): killed with its children when dropped.
struct Server {
    child: Child,
    what: &'static str,
    log: PathBuf,
}

impl Server {
    /// Starts `cmd` with stdout and stderr to `log`, and waits until 127.0.0.1:`port` accepts.
    fn start(what: &'static str, mut cmd: Command, log: PathBuf, port: u16) -> Server {
        let file = std::fs::File::create(&log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
        let mut server = Server { child, what, log };
        let listening = format!("{what} to listen on 127.0.0.1:{port}");
        wait_until_blocking(&listening, 10, || {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!(
                    "{what} exited ({status}) before listening on 127.0.0.1:{port}: {}",
                    server.log_text()
                );
            }
            Err(format!("{what} does not listen yet: {}", server.log_text()))
        });
        server
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Its per-connection children first: once the parent is gone they are init's.
        let children = descendants(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_pids(&children);
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ({}):\n{}",
                self.what,
                self.log.display(),
                self.log_text()
            );
        }
    }
}

// ------------------------------------------------------------------ lab engines

/// Engine version and engine ID of a lab engine, over its unix socket.
async fn lab_identity(name: &str) -> (String, String) {
    let docker = lab::engine(name).await;
    let info = hoist::deploy::host::describe(&docker).await.unwrap();
    let id = docker.info().await.unwrap().id.unwrap();
    (info.version, id)
}

/// A created (never started) container labelled `hoist.app=<its name>` on a lab engine, so
/// that a host listing shows which engine it really came from. Removed when dropped.
struct Marker {
    engine: &'static str,
    name: String,
}

impl Marker {
    async fn create(engine: &'static str, test: &str) -> Marker {
        let name = format!("hoisttest-remote-{test}-{:08x}", rand::random::<u32>());
        let marker = Marker { engine, name };
        let body = ContainerCreateBody {
            image: Some(LAB_IMAGE.into()),
            cmd: Some(vec!["true".into()]),
            labels: Some(HashMap::from([(
                APP_LABEL.to_string(),
                marker.name.clone(),
            )])),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&marker.name)
            .build();
        lab::engine(engine)
            .await
            .create_container(Some(options), body)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot create a marker container from {LAB_IMAGE} on {engine}: {e} \
                     (`scripts/lab up` loads that image on every host)"
                )
            });
        marker
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        lab::docker_lenient(self.engine, &["rm", "-f", &self.name]);
    }
}

// ------------------------------------------------------------------ the agent

/// `GET /api/v1/hosts` of a running agent, as host name -> entry.
async fn hosts(agent: &Agent) -> HashMap<String, Value> {
    let resp = api_request(agent, Method::GET, "/hosts")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let list: Vec<Value> = resp.json().await.unwrap();
    list.into_iter()
        .map(|h| (h["host"].as_str().unwrap().to_string(), h))
        .collect()
}

fn container_names(entry: &Value) -> Vec<&str> {
    entry["engine"]["containers"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

/// Starts `hoist serve` with `hosts_toml` for its hosts and `env` added to its environment.
fn launch_agent(dir: &Path, hosts_toml: &str, env: &[(&str, String)]) -> Agent {
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n[runner]\npoll_interval = \"0s\"\n\n\
         {}\n{hosts_toml}",
        dir.join("data"),
        token_toml()
    );
    Agent::launch_with_env(dir, &config, env)
}

// ------------------------------------------------------------------ tcp + mutual TLS

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new(tool("openssl", "openssl"))
        .args(args)
        .current_dir(dir));
}

/// A self-signed CA (EC P-256, valid one day): `NAME.pem`, `NAME.key` in `dir`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "1",
            "-subj",
            &format!("/CN=hoist test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A certificate signed by CA `ca` with the extensions `ext`: `NAME.pem`, `NAME.key`.
fn make_leaf(dir: &Path, ca: &str, name: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN=hoist test {name}"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    let serial = format!("0x{:016x}", rand::random::<u64>() >> 1);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            &serial,
            "-days",
            "1",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// socat speaking HTTPS with required client certificates in front of lab engine h1.
struct TlsEndpoint {
    // Fields drop in order: socat (which prints its log on failure) before its directory.
    _socat: Server,
    url: String,
    dir: tempfile::TempDir,
}

impl TlsEndpoint {
    fn start() -> TlsEndpoint {
        let socat = tool("socat", "socat");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_ca(d, "ca");
        make_ca(d, "otherca");
        make_leaf(
            d,
            "ca",
            "server",
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
        );
        let client_ext = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                          extendedKeyUsage=clientAuth\n";
        make_leaf(d, "ca", "client", client_ext);
        make_leaf(d, "otherca", "otherclient", client_ext);

        // socat sets no TLS session id context, so OpenSSL aborts ("session id context
        // uninitialized", alert InternalError) when a client resumes a session on a listener
        // that verifies client certificates, which rustls does from the second connection
        // on. A TLS dockerd (Go) resumes fine; here resumption is turned off for socat alone.
        std::fs::write(
            d.join("openssl.cnf"),
            "openssl_conf = hoist_test\n[hoist_test]\nssl_conf = hoist_test_ssl\n\
             [hoist_test_ssl]\nsystem_default = hoist_test_tls\n\
             [hoist_test_tls]\nOptions = -SessionTicket\n",
        )
        .unwrap();
        let port = free_port();
        let mut cmd = Command::new(socat);
        cmd.env("OPENSSL_CONF", d.join("openssl.cnf")).arg("-d").arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},cafile={},verify=1",
            d.join("server.pem").display(),
            d.join("server.key").display(),
            d.join("ca.pem").display()
        ))
        .arg(format!(
            "UNIX-CONNECT:{}",
            socket("h1").trim_start_matches("unix://")
        ));
        let server = Server::start("socat", cmd, d.join("socat.log"), port);
        TlsEndpoint {
            url: format!("tcp://127.0.0.1:{port}"),
            _socat: server,
            dir,
        }
    }

    /// Trust CA `ca`, present certificate `cert`.
    fn tls(&self, ca: &str, cert: &str) -> TlsConfig {
        let d = self.dir.path();
        TlsConfig {
            ca: d.join(format!("{ca}.pem")),
            cert: d.join(format!("{cert}.pem")),
            key: d.join(format!("{cert}.key")),
        }
    }
}

fn toml_tls(t: &TlsConfig) -> String {
    format!(
        "tls = {{ ca = {:?}, cert = {:?}, key = {:?} }}",
        t.ca, t.cert, t.key
    )
}

#[tokio::test]
async fn tls_engine_answers_with_a_client_certificate() {
    let (version, id) = lab_identity("h1").await;
    let ep = TlsEndpoint::start();

    let docker = hoist::engine::connect(&ep.url, Some(&ep.tls("ca", "client")))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let info = hoist::deploy::host::describe(&docker)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(info.version, version, "engine version over TLS");
    assert!(!info.api_version.is_empty());
    let remote_id = docker.info().await.unwrap().id.unwrap();
    assert_eq!(remote_id, id, "the TLS endpoint must be lab engine h1");
}

/// Connects with `tls` and returns the error, which must come quickly and name the URL.
async fn refused(url: &str, tls: &TlsConfig) -> String {
    let started = Instant::now();
    let err = match hoist::engine::connect(url, Some(tls)).await {
        Ok(_) => panic!("{url} answered with ca {:?}, cert {:?}", tls.ca, tls.cert),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refusal took {:?}: {err}",
        started.elapsed()
    );
    assert!(err.contains(url), "the error names the engine URL: {err}");
    err
}

#[tokio::test]
async fn tls_engine_refuses_a_missing_or_foreign_client_certificate() {
    let _ = lab::engine("h1").await;
    let ep = TlsEndpoint::start();

    // No client certificate at all: the files do not exist.
    let d = ep.dir.path();
    let none = TlsConfig {
        ca: d.join("ca.pem"),
        cert: d.join("nonexistent-cert.pem"),
        key: d.join("nonexistent-key.pem"),
    };
    let err = refused(&ep.url, &none).await;
    assert!(
        err.contains("nonexistent-cert.pem") || err.contains("CertificateRequired"),
        "the error says that no client certificate was sent: {err}"
    );

    // A client certificate the engine's CA did not sign.
    let err = refused(&ep.url, &ep.tls("ca", "otherclient")).await;
    assert!(
        err.contains("UnknownCA"),
        "the error says the engine refused the client certificate: {err}"
    );

    // The engine's certificate is not signed by the CA hoist trusts.
    let err = refused(&ep.url, &ep.tls("otherca", "otherclient")).await;
    assert!(
        err.contains("UnknownIssuer"),
        "the error says the engine's certificate is not signed by the configured CA: {err}"
    );
}

#[tokio::test]
async fn agent_reports_a_tls_host_reachable() {
    let (version, _) = lab_identity("h1").await;
    let marker = Marker::create("h1", "tls").await;
    let ep = TlsEndpoint::start();
    let dir = tempfile::tempdir().unwrap();
    let agent = launch_agent(
        dir.path(),
        &format!(
            "[host.tlshost]\ndocker = \"{url}\"\naddress = \"127.0.0.1\"\n{good}\n\n\
             [host.tlsforeign]\ndocker = \"{url}\"\naddress = \"127.0.0.1\"\n{bad}\n",
            url = ep.url,
            good = toml_tls(&ep.tls("ca", "client")),
            bad = toml_tls(&ep.tls("ca", "otherclient")),
        ),
        &[],
    );

    let hosts = hosts(&agent).await;
    let good = &hosts["tlshost"];
    assert_eq!(good["reachable"], true, "{good}");
    assert_eq!(good["engine"]["version"], version.as_str(), "{good}");
    assert!(
        container_names(good).contains(&marker.name.as_str()),
        "tlshost lists what runs on lab engine h1 (marker {}): {good}",
        marker.name
    );

    let bad = &hosts["tlsforeign"];
    assert_eq!(bad["reachable"], false, "{bad}");
    let err = bad["error"].as_str().unwrap();
    assert!(err.contains(&ep.url), "{err}");
    assert!(
        err.contains("UnknownCA"),
        "the error says the engine refused the client certificate: {err}"
    );
}

// ------------------------------------------------------------------ ssh

/// A throwaway sshd on 127.0.0.1 whose sessions talk to lab engine h2, and a client side
/// (`bin/ssh` wrapper, `ssh_config`, keys, known_hosts) entirely inside `dir`.
struct SshEndpoint {
    dir: tempfile::TempDir,
    sshd: Option<Server>,
}

/// Host alias (in the test's ssh_config) for the throwaway sshd with the authorised key.
const SSH_ALIAS: &str = "hoist-test-h2";
/// The same sshd, offering a key it does not know.
const SSH_ALIAS_WRONG_KEY: &str = "hoist-test-h2-wrong-key";

impl SshEndpoint {
    fn start() -> SshEndpoint {
        let sshd = tool("sshd", "openssh-server");
        let ssh = tool("ssh", "openssh-client");
        let keygen = tool("ssh-keygen", "openssh-client");
        // sshd refuses to start without its privilege separation directory, which the
        // Debian package leaves to systemd's RuntimeDirectory (lost with /run at reboot).
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd for sshd");

        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for key in ["host_key", "id_ed25519", "wrong_key"] {
            run(Command::new(&keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                .arg(d.join(key)));
        }
        std::fs::copy(d.join("id_ed25519.pub"), d.join("authorized_keys")).unwrap();

        let port = free_port();
        let d_ = d.display();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {d_}/host_key\nPidFile {d_}/sshd.pid\n\
                 AuthorizedKeysFile {d_}/authorized_keys\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n\
                 SetEnv DOCKER_HOST={}\n",
                socket("h2")
            ),
        )
        .unwrap();
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        let host_pub: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {}\n", host_pub.join(" ")),
        )
        .unwrap();
        // `Host 127.0.0.1` serves ssh://root@127.0.0.1:PORT once hoist passes the port on.
        let common = format!(
            "  HostName 127.0.0.1\n  Port {port}\n  UserKnownHostsFile {d_}/known_hosts\n  \
             GlobalKnownHostsFile /dev/null\n  IdentitiesOnly yes\n  \
             ConnectTimeout 5\n  LogLevel ERROR\n"
        );
        std::fs::write(
            d.join("ssh_config"),
            format!(
                "Host {SSH_ALIAS} 127.0.0.1\n{common}  IdentityFile {d_}/id_ed25519\n\n\
                 Host {SSH_ALIAS_WRONG_KEY}\n{common}  IdentityFile {d_}/wrong_key\n"
            ),
        )
        .unwrap();
        std::fs::create_dir(d.join("bin")).unwrap();
        let wrapper = d.join("bin/ssh");
        let mut f = std::fs::File::create(&wrapper).unwrap();
        writeln!(
            f,
            "#!/bin/sh\nexec '{}' -F '{d_}/ssh_config' \"$@\"",
            ssh.display()
        )
        .unwrap();
        drop(f);
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

        let mut cmd = Command::new(sshd);
        cmd.args(["-D", "-e", "-f"]).arg(d.join("sshd_config"));
        let server = Server::start("sshd", cmd, d.join("sshd.log"), port);
        SshEndpoint {
            dir,
            sshd: Some(server),
        }
    }

    /// Environment for the agent: our `ssh` first on PATH, openssh's control sockets here.
    fn agent_env(&self) -> Vec<(&'static str, String)> {
        let d = self.dir.path();
        std::fs::create_dir_all(d.join("state")).unwrap();
        vec![
            (
                "PATH",
                format!(
                    "{}:{}",
                    d.join("bin").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            ),
            ("XDG_STATE_HOME", d.join("state").display().to_string()),
        ]
    }
}

impl Drop for SshEndpoint {
    fn drop(&mut self) {
        // bollard's ssh transport leaves `ssh -M -f` masters (ControlPersist=yes) that outlive
        // a killed agent: end those of this test, found by their control path in our tempdir.
        self.sshd.take();
        kill_pids(&pids_with_arg(&self.dir.path().display().to_string()));
    }
}

#[tokio::test]
async fn agent_reaches_an_ssh_host_through_the_system_ssh() {
    let (version, _) = lab_identity("h2").await;
    let marker = Marker::create("h2", "ssh").await;
    let ep = SshEndpoint::start();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = launch_agent(
        dir.path(),
        &format!(
            "[host.sshhost]\ndocker = \"ssh://root@{SSH_ALIAS}\"\naddress = \"{h2}\"\n\n\
             [host.sshwrongkey]\ndocker = \"ssh://root@{SSH_ALIAS_WRONG_KEY}\"\naddress = \"{h2}\"\n",
            h2 = address("h2")
        ),
        &ep.agent_env(),
    );

    let started = Instant::now();
    let hosts = hosts(&agent).await;
    let elapsed = started.elapsed();
    agent.kill9();

    let good = &hosts["sshhost"];
    assert_eq!(good["reachable"], true, "{good}");
    assert_eq!(good["engine"]["version"], version.as_str(), "{good}");
    assert!(
        container_names(good).contains(&marker.name.as_str()),
        "sshhost lists what runs on lab engine h2 (marker {}): {good}",
        marker.name
    );

    let bad = &hosts["sshwrongkey"];
    assert_eq!(bad["reachable"], false, "{bad}");
    let err = bad["error"].as_str().unwrap();
    assert!(
        err.contains(&format!("ssh://root@{SSH_ALIAS_WRONG_KEY}")),
        "{err}"
    );
    assert!(
        err.contains("Permission denied (publickey)"),
        "the error says the key was refused: {err}"
    );
    assert!(
        elapsed < Duration::from_secs(15),
        "GET /api/v1/hosts took {elapsed:?}"
    );
}

#[test]
fn an_ssh_url_with_a_port_is_refused_with_what_to_write_instead() {
    // bollard gives ssh `user@host:port` without its scheme, so ssh would look up a host named
    // "host:port". The config says so at start instead of failing at the first deploy.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hoist.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\n[host.sshhost]\ndocker = \"ssh://root@127.0.0.1:2222\"\naddress = \"10.203.0.12\"\n",
    )
    .unwrap();
    let out = hoist(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(out.code, Some(2));
    let err = &out.stderr;
    assert!(
        err.contains("host.sshhost.docker") && err.contains("~/.ssh/config"),
        "{err}"
    );
}
