//! The balancer reconciler: an nginx whose file hoist owns, kept in step with what runs.
//!
//! One function computes the file from what hoist verified running ([`desired`]: the release
//! the store records on each host, and the engine's running containers of that release with
//! their published ports); one writes it atomically, tests and reloads ([`apply`]); the rollout,
//! the revert, recovery at start and rollbacks all call [`reconcile`], never anything else.
//!
//! Because the store records a host's new release only after it was proved (healthy, read
//! back), a host being switched keeps its old containers in the file until the new ones are
//! proved; the next reconcile swaps them in one reload.
//!
//! A failing `test` (or a write that fails) puts the previous file back and is an error, which
//! fails the host like an unhealthy container. The file is not reloaded when unchanged, except
//! at start (`force`): the agent may have died between writing the file and reloading nginx.
//!
//! Invariant: only this module writes a balancer's file, and only under that balancer's lock,
//! so that two deployments (of two apps sharing a balancer) never interleave their writes.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::StartExecResults;
use bollard::models::ExecConfig;
use futures_util::StreamExt;

use super::host;
use crate::config::{BalancerConfig, BalancerPlace, Config};
use crate::store::Store;

/// How long `test` and `reload` may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the balancer's `check` may take to answer 2xx after a reload.
const CHECK_PATIENCE: Duration = Duration::from_secs(5);

/// One lock per balancer name for the whole process: every `Deployer` (API, runs, recovery)
/// shares it, because they all write the same files.
static LOCKS: LazyLock<Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Default::default);

fn lock_of(name: &str) -> Arc<tokio::sync::Mutex<()>> {
    // A std Mutex: nothing awaits under it; it only hands out the per-balancer lock.
    let mut locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    locks.entry(name.to_string()).or_default().clone()
}

/// One `server` line: a container hoist verified running.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Server {
    pub host: String,
    pub container: String,
    pub release: i64,
    pub address: String,
    pub port: u16,
}

/// What a reconcile did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The file already said this; nothing was written or reloaded.
    Unchanged,
    /// Written, tested and reloaded (`servers` lines in all).
    Reloaded { servers: usize },
}

/// Compute the file of balancer `name`, write it if it changed, test, reload. With `force`,
/// test and reload even when the file is unchanged (at start).
pub async fn reconcile(
    store: &Store,
    config: &Config,
    name: &str,
    force: bool,
) -> anyhow::Result<Outcome> {
    let conf = config.balancers.get(name).with_context(|| {
        format!("balancer {name} is not configured; add [balancer.{name}] to hoist.toml")
    })?;
    let lock = lock_of(name);
    let _held = lock.lock().await;
    let upstreams = desired(store, config, name).await?;
    if upstreams.is_empty() {
        // No app uses the balancer (yet): its file is left as it is, whoever wrote it.
        return Ok(Outcome::Unchanged);
    }
    let text = render(name, &upstreams);
    let place = Place::open(config, conf).await?;
    let previous = place.read(&conf.config).await?;
    if previous.as_deref() == Some(text.as_str()) && !force {
        return Ok(Outcome::Unchanged);
    }
    let servers = upstreams.values().map(Vec::len).sum();
    if previous.as_deref() != Some(text.as_str()) {
        place
            .write(&conf.config, &text)
            .await
            .with_context(|| format!("balancer {name}: cannot write {}", conf.config.display()))?;
    }
    if let Err(e) = place.run(&conf.test).await {
        let restored = place.restore(&conf.config, previous.as_deref()).await;
        let tail = match restored {
            Ok(()) => "the previous file is back in place".to_string(),
            Err(r) => format!("and putting the previous file back failed too: {r:#}"),
        };
        bail!(
            "balancer {name}: `{}` refused the new file ({e:#}); {tail}; nginx was not reloaded",
            conf.test.join(" ")
        );
    }
    if let Err(e) = place.run(&conf.reload).await {
        let _ = place.restore(&conf.config, previous.as_deref()).await;
        bail!(
            "balancer {name}: `{}` failed ({e:#}); the previous file is back in place",
            conf.reload.join(" ")
        );
    }
    Ok(Outcome::Reloaded { servers })
}

/// Every balancer the store's apps use now, reconciled (recovery at start: forced).
pub async fn reconcile_all(
    store: &Store,
    config: &Config,
) -> Vec<(String, anyhow::Result<Outcome>)> {
    let mut out = Vec::new();
    for name in config.balancers.keys() {
        out.push((name.clone(), reconcile(store, config, name, true).await));
    }
    out
}

/// `GET url + path` through balancer `name`; Ok for a 2xx.
pub async fn check(config: &Config, name: &str, path: &str) -> anyhow::Result<()> {
    let conf = config
        .balancers
        .get(name)
        .with_context(|| format!("balancer {name} is not configured"))?;
    let Some(url) = &conf.url else {
        bail!("balancer {name} has no `url` in hoist.toml, so `check` cannot be asked through it");
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let full = format!("{url}{path}");
    // `nginx -s reload` only signals the master, which starts new workers after the command
    // returned: until then the old ones answer with the old file. So the check is asked again
    // for a little while; only a balancer that never answers 2xx in that time fails the host.
    let until = tokio::time::Instant::now() + CHECK_PATIENCE;
    loop {
        let seen = match client.get(&full).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => format!("failed: {e}"),
        };
        if tokio::time::Instant::now() >= until {
            bail!("balancer {name}: GET {full} {seen} (wanted 2xx) for {CHECK_PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The upstreams of balancer `name`: for each app whose release on a host uses it, that
/// release's running containers on that host, at the host's address and the engine-read port.
pub async fn desired(
    store: &Store,
    config: &Config,
    name: &str,
) -> anyhow::Result<BTreeMap<String, Vec<Server>>> {
    let mut upstreams: BTreeMap<String, Vec<Server>> = BTreeMap::new();
    let mut engines: HashMap<String, Docker> = HashMap::new();
    for app in store.apps().await? {
        for row in store.app_hosts(app.app.clone()).await? {
            let Some(r) = row.release else { continue };
            let Some(release) = store.release(app.app.clone(), r).await? else {
                continue;
            };
            let Some(spec) = release.deploy else { continue };
            let Some(b) = spec.balancer.as_ref().filter(|b| b.name == name) else {
                continue;
            };
            let upstream = b.upstream.clone().unwrap_or_else(|| app.app.clone());
            let servers = upstreams.entry(upstream).or_default();
            let Some(hconf) = config.hosts.get(&row.host) else {
                continue;
            };
            if !engines.contains_key(&row.host) {
                let docker = crate::engine::connect(&hconf.docker, hconf.tls.as_ref())
                    .await
                    .with_context(|| format!("host {}", row.host))?;
                engines.insert(row.host.clone(), docker);
            }
            let docker = &engines[&row.host];
            let members = host::members(docker, &spec.container.name)
                .await
                .with_context(|| format!("host {}", row.host))?;
            for m in members {
                if m.app.as_deref() != Some(app.app.as_str()) || m.release != Some(r) || !m.running
                {
                    continue;
                }
                if let Some(port) = host::host_port(docker, &m.name, b.port).await? {
                    servers.push(Server {
                        host: row.host.clone(),
                        container: m.name,
                        release: r,
                        address: hconf.address.clone(),
                        port,
                    });
                }
            }
        }
    }
    for servers in upstreams.values_mut() {
        servers.sort();
    }
    Ok(upstreams)
}

/// The file: one `upstream` block per app (or `upstream` name), servers in a stable order. An
/// upstream with no running container gets one `down` server, since nginx refuses an empty
/// block and a `proxy_pass` to an upstream that is missing.
pub fn render(name: &str, upstreams: &BTreeMap<String, Vec<Server>>) -> String {
    let mut s = format!(
        "# Written by hoist for [balancer.{name}]: the containers hoist verified running.\n\
         # hoist rewrites this file after every switch; edits here are lost.\n"
    );
    for (upstream, servers) in upstreams {
        s.push_str(&format!("upstream {upstream} {{\n"));
        if servers.is_empty() {
            s.push_str("    server 127.0.0.1:9 down; # nothing of the app runs\n");
        }
        for v in servers {
            s.push_str(&format!(
                "    server {}:{}; # {} {} release {}\n",
                v.address, v.port, v.host, v.container, v.release
            ));
        }
        s.push_str("}\n");
    }
    s
}

/// Where a balancer's file lives and its commands run.
enum Place {
    Agent,
    Container { docker: Docker, container: String },
}

impl Place {
    async fn open(config: &Config, conf: &BalancerConfig) -> anyhow::Result<Place> {
        Ok(match &conf.place {
            BalancerPlace::Agent => Place::Agent,
            BalancerPlace::Container { host, container } => {
                let h = config
                    .hosts
                    .get(host)
                    .with_context(|| format!("host {host} is not configured"))?;
                let docker = crate::engine::connect(&h.docker, h.tls.as_ref())
                    .await
                    .with_context(|| format!("host {host} (the balancer's)"))?;
                Place::Container {
                    docker,
                    container: container.clone(),
                }
            }
        })
    }

    /// The file's text; None when it does not exist.
    async fn read(&self, path: &Path) -> anyhow::Result<Option<String>> {
        match self {
            Place::Agent => match tokio::fs::read_to_string(path).await {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => {
                    Err(anyhow!(e)).with_context(|| format!("cannot read {}", path.display()))
                }
            },
            Place::Container { docker, container } => {
                let p = path.display().to_string();
                let argv = ["sh", "-c", "[ ! -e \"$1\" ] || cat \"$1\"", "sh", &p];
                let (code, out) = exec(docker, container, &argv).await?;
                if code != Some(0) {
                    bail!("cannot read {p} in container {container}: {}", tail(&out));
                }
                let text = String::from_utf8_lossy(&out).into_owned();
                let (code, _) = exec(docker, container, &["test", "-e", &p]).await?;
                Ok((code == Some(0)).then_some(text))
            }
        }
    }

    /// Replace the file with `text` atomically: a temporary file beside it, renamed over it.
    async fn write(&self, path: &Path, text: &str) -> anyhow::Result<()> {
        let dir = path
            .parent()
            .with_context(|| format!("{} has no directory", path.display()))?;
        let file = path
            .file_name()
            .with_context(|| format!("{} has no file name", path.display()))?
            .to_string_lossy()
            .into_owned();
        // Not `*.conf`: an `include conf.d/*.conf` must never see the half-written file.
        let tmp_name = format!(".{file}.hoist-tmp");
        match self {
            Place::Agent => {
                let (path, tmp, text) = (
                    path.to_path_buf(),
                    dir.join(&tmp_name),
                    text.as_bytes().to_vec(),
                );
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    let mut f = std::fs::File::create(&tmp)?;
                    f.write_all(&text)?;
                    f.sync_all()?;
                    std::fs::rename(&tmp, &path)?;
                    if let Some(d) = path.parent() {
                        std::fs::File::open(d)?.sync_all()?;
                    }
                    Ok(())
                })
                .await??;
                Ok(())
            }
            Place::Container { docker, container } => {
                let mut tar = tar::Builder::new(Vec::new());
                let mut header = tar::Header::new_gnu();
                header.set_size(text.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                tar.append_data(&mut header, &tmp_name, text.as_bytes())?;
                let bytes = tar.into_inner()?;
                let options = bollard::query_parameters::UploadToContainerOptionsBuilder::default()
                    .path(&dir.display().to_string())
                    .build();
                docker
                    .upload_to_container(container, Some(options), bollard::body_full(bytes.into()))
                    .await
                    .with_context(|| {
                        format!("the engine could not put the file into container {container}")
                    })?;
                let tmp = dir.join(&tmp_name).display().to_string();
                let p = path.display().to_string();
                let (code, out) = exec(docker, container, &["mv", "-f", &tmp, &p]).await?;
                if code != Some(0) {
                    bail!(
                        "mv {tmp} {p} in container {container} failed: {}",
                        tail(&out)
                    );
                }
                Ok(())
            }
        }
    }

    /// Put `previous` back (None: the file did not exist, so it is removed).
    async fn restore(&self, path: &Path, previous: Option<&str>) -> anyhow::Result<()> {
        match previous {
            Some(text) => self.write(path, text).await,
            None => match self {
                Place::Agent => match tokio::fs::remove_file(path).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(anyhow!(e)),
                    _ => Ok(()),
                },
                Place::Container { docker, container } => {
                    let p = path.display().to_string();
                    exec(docker, container, &["rm", "-f", &p]).await?;
                    Ok(())
                }
            },
        }
    }

    /// Run `argv` (directly, never through a shell); an error carries its exit and last line.
    async fn run(&self, argv: &[String]) -> anyhow::Result<()> {
        match self {
            Place::Agent => {
                let mut cmd = tokio::process::Command::new(&argv[0]);
                cmd.args(&argv[1..])
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true);
                let out = tokio::time::timeout(COMMAND_TIMEOUT, cmd.output())
                    .await
                    .map_err(|_| anyhow!("did not finish within {COMMAND_TIMEOUT:?}"))?
                    .with_context(|| format!("cannot run {}", argv[0]))?;
                if !out.status.success() {
                    let mut all = out.stderr;
                    all.extend_from_slice(&out.stdout);
                    bail!("{}: {}", out.status, tail(&all));
                }
                Ok(())
            }
            Place::Container { docker, container } => {
                let args: Vec<&str> = argv.iter().map(String::as_str).collect();
                let (code, out) = exec(docker, container, &args).await?;
                if code != Some(0) {
                    bail!(
                        "exit status {} in container {container}: {}",
                        code.map_or("unknown".into(), |c| c.to_string()),
                        tail(&out)
                    );
                }
                Ok(())
            }
        }
    }
}

/// The last non-empty line of a command's output.
fn tail(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    text.trim_end()
        .lines()
        .last()
        .unwrap_or("(no output)")
        .trim()
        .to_string()
}

/// Run `argv` in `container`; its exit code and output.
async fn exec(
    docker: &Docker,
    container: &str,
    argv: &[&str],
) -> anyhow::Result<(Option<i64>, Vec<u8>)> {
    let run = async {
        let config = ExecConfig {
            cmd: Some(argv.iter().map(|s| s.to_string()).collect()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let e = docker.create_exec(container, config).await?;
        let mut output = Vec::new();
        if let StartExecResults::Attached { output: mut o, .. } =
            docker.start_exec(&e.id, None).await?
        {
            while let Some(chunk) = o.next().await {
                match chunk? {
                    LogOutput::StdOut { message } | LogOutput::StdErr { message } => {
                        output.extend_from_slice(&message)
                    }
                    _ => {}
                }
            }
        }
        let inspect = docker.inspect_exec(&e.id).await?;
        Ok::<_, bollard::errors::Error>((inspect.exit_code, output))
    };
    tokio::time::timeout(COMMAND_TIMEOUT, run)
        .await
        .map_err(|_| {
            anyhow!(
                "`{}` in container {container} did not finish",
                argv.join(" ")
            )
        })?
        .with_context(|| format!("cannot exec `{}` in container {container}", argv.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_lists_each_upstreams_servers_and_never_an_empty_block() {
        let mut u = BTreeMap::new();
        u.insert(
            "web".to_string(),
            vec![Server {
                host: "h1".into(),
                container: "web-1".into(),
                release: 3,
                address: "10.203.0.11".into(),
                port: 49153,
            }],
        );
        u.insert("api".to_string(), vec![]);
        let text = render("edge", &u);
        assert!(
            text.contains("upstream api {\n    server 127.0.0.1:9 down;"),
            "{text}"
        );
        assert!(
            text.contains("upstream web {\n    server 10.203.0.11:49153; # h1 web-1 release 3\n}"),
            "{text}"
        );
    }
}
