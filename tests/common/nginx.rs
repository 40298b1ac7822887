//! A test's own nginx in front of an app: on the agent's machine (a free loopback port, its own
//! directory) or in a container on a lab host (`lab/nginx:1`, a published port the engine
//! picks). Either way its `include` takes `conf.d/*.conf`, where the file a hoist
//! `[balancer.NAME]` owns is `conf.d/hoist.conf`, and its access log lists each request's
//! upstream attempts, so that a test counts the requests nginx retried. [`Load`] is the bounded
//! load client that counts the requests that failed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::lab::{self, address, docker_lenient, free_port};

/// Where a test's nginx runs.
pub enum Place {
    /// On the agent's machine, with its files in `dir`.
    Agent { dir: PathBuf },
    /// In container `name` (from `lab/nginx:1`) on lab host `host`.
    Container { host: &'static str, name: String },
}

/// An nginx of the test's own that `include`s `conf.d/*.conf`, where hoist's file is
/// `conf.d/hoist.conf`; logs every request's upstream attempts.
pub struct Nginx {
    pub place: Place,
    /// Where clients (and hoist's `check`) reach it.
    pub url: String,
}

/// The `log_format` and `server` of a test's nginx, inside `http {}`.
fn site(listen: &str, upstream: &str, access_log: &str) -> String {
    format!(
        "log_format up '$status \"$upstream_addr\" \"$upstream_status\"';\naccess_log {access_log} up;\n\
         server {{\n    listen {listen};\n    location = /nginx-health {{ return 200 \"ok\\n\"; }}\n\
         location / {{\n      proxy_pass http://{upstream};\n      proxy_next_upstream error timeout http_502 http_503;\n\
         proxy_connect_timeout 1s;\n      proxy_read_timeout 5s;\n    }}\n}}\n"
    )
}

/// nginx refuses a proxy_pass to an upstream that does not exist: until hoist writes its
/// file, one server that is down.
fn placeholder(upstream: &str) -> String {
    format!("upstream {upstream} {{ server 127.0.0.1:9 down; }}\n")
}

/// Where hoist's file is in the container.
pub const CONTAINER_FILE: &str = "/etc/nginx/conf.d/hoist.conf";
pub const CONTAINER_LOG: &str = "/var/log/nginx/access.log";

impl Nginx {
    pub fn start(dir: &Path, upstream: &str) -> Nginx {
        let dir = dir.join("nginx");
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let port = free_port();
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 512; }}\n\
             http {{\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n\
             uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n  include {d}/conf.d/*.conf;\n{}}}\n",
            site(
                &format!("127.0.0.1:{port}"),
                upstream,
                &format!("{d}/access.log")
            )
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        std::fs::write(dir.join("conf.d/hoist.conf"), placeholder(upstream)).unwrap();
        let n = Nginx {
            place: Place::Agent { dir },
            url: format!("http://127.0.0.1:{port}"),
        };
        let out = std::process::Command::new("nginx")
            .args(["-c", &n.conf()])
            .output()
            .unwrap();
        assert!(out.status.success(), "nginx: {out:?}");
        n
    }

    /// nginx in container `name` on lab host `host`, its port 80 published on a port the
    /// engine picks. The test puts its server and the placeholder in before nginx starts
    /// (`docker cp`); from then on only hoist writes `conf.d/hoist.conf`.
    pub fn start_in_container(dir: &Path, host: &'static str, name: &str, upstream: &str) -> Nginx {
        let files = dir.join("nginx-files");
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(files.join("site.conf"), site("80", upstream, CONTAINER_LOG)).unwrap();
        std::fs::write(files.join("hoist.conf"), placeholder(upstream)).unwrap();
        lab::docker(host, &["create", "--name", name, "-p", "80", "lab/nginx:1"]);
        for f in ["site.conf", "hoist.conf"] {
            let from = files.join(f).display().to_string();
            lab::docker(
                host,
                &["cp", &from, &format!("{name}:/etc/nginx/conf.d/{f}")],
            );
        }
        lab::docker(host, &["start", name]);
        // "0.0.0.0:32768" (and the IPv6 line)
        let published = lab::docker(host, &["port", name, "80/tcp"]);
        let port = published
            .lines()
            .find_map(|l| l.strip_prefix("0.0.0.0:"))
            .unwrap_or_else(|| panic!("no published port for {name}: {published:?}"))
            .to_string();
        Nginx {
            place: Place::Container {
                host,
                name: name.to_string(),
            },
            url: format!("http://{}:{port}", address(host)),
        }
    }

    /// Its directory, for nginx on the agent's machine.
    pub fn dir(&self) -> &Path {
        match &self.place {
            Place::Agent { dir } => dir,
            Place::Container { name, .. } => {
                panic!("nginx {name} runs in a container: it has no directory on this machine")
            }
        }
    }

    /// The main config file, at its place.
    pub fn conf(&self) -> String {
        match &self.place {
            Place::Agent { dir } => dir.join("nginx.conf").display().to_string(),
            Place::Container { .. } => "/etc/nginx/nginx.conf".to_string(),
        }
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The file hoist owns, at its place.
    pub fn hoist_file(&self) -> PathBuf {
        match &self.place {
            Place::Agent { dir } => dir.join("conf.d/hoist.conf"),
            Place::Container { .. } => PathBuf::from(CONTAINER_FILE),
        }
    }

    /// The text of the file hoist owns, read where nginx reads it.
    pub fn hoist_text(&self) -> String {
        match &self.place {
            Place::Agent { .. } => std::fs::read_to_string(self.hoist_file()).unwrap(),
            Place::Container { host, name } => {
                lab::docker(host, &["exec", name, "cat", CONTAINER_FILE]) + "\n"
            }
        }
    }

    /// `[balancer.NAME]` for the agent's config.
    pub fn toml(&self, name: &str, reload: Option<Vec<String>>) -> String {
        let (test, default_reload, place) = match &self.place {
            Place::Agent { .. } => (
                vec![
                    "nginx".into(),
                    "-t".into(),
                    "-q".into(),
                    "-c".into(),
                    self.conf(),
                ],
                vec![
                    "nginx".to_string(),
                    "-s".into(),
                    "reload".into(),
                    "-c".into(),
                    self.conf(),
                ],
                String::new(),
            ),
            Place::Container { host, name } => (
                vec!["nginx".to_string(), "-t".into(), "-q".into()],
                vec!["nginx".to_string(), "-s".into(), "reload".into()],
                format!("host = {host:?}\ncontainer = {name:?}\n"),
            ),
        };
        let reload = reload.unwrap_or(default_reload);
        format!(
            "[balancer.{name}]\nkind = \"nginx\"\n{place}config = {:?}\ntest = {test:?}\nreload = {reload:?}\nurl = {:?}\n",
            self.hoist_file().display().to_string(),
            self.url()
        )
    }

    /// Requests nginx retried on another upstream (its access log lists two or more
    /// addresses), since the log was last truncated.
    pub fn retries(&self) -> Vec<String> {
        let log = match &self.place {
            Place::Agent { dir } => {
                std::fs::read_to_string(dir.join("access.log")).unwrap_or_default()
            }
            Place::Container { host, name } => {
                lab::docker(host, &["exec", name, "cat", CONTAINER_LOG])
            }
        };
        log.lines()
            .filter(|l| l.contains(", ") || l.contains(" : "))
            .map(str::to_string)
            .collect()
    }

    pub fn truncate_log(&self) {
        match &self.place {
            Place::Agent { dir } => {
                let _ = std::fs::write(dir.join("access.log"), "");
                let _ = std::process::Command::new("nginx")
                    .args(["-s", "reopen", "-c", &self.conf()])
                    .output();
            }
            // nginx appends (O_APPEND): a truncated file is written from its start.
            Place::Container { host, name } => {
                lab::docker(
                    host,
                    &["exec", name, "sh", "-c", &format!(": > {CONTAINER_LOG}")],
                );
            }
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        match &self.place {
            Place::Agent { .. } => {
                let _ = std::process::Command::new("nginx")
                    .args(["-s", "stop", "-c", &self.conf()])
                    .output();
            }
            Place::Container { host, name } => {
                docker_lenient(host, &["rm", "-f", name]);
            }
        }
    }
}

/// A bounded load client: GET `url`, each request on a fresh connection, one after another,
/// until stopped (at most `MAX` requests or 10 minutes). Counts failures.
pub struct Load {
    /// Set by `finish`: the loop ends after its current request.
    stop: Arc<AtomicBool>,
    /// The loop: the requests made and the failures seen.
    task: tokio::task::JoinHandle<(u64, Vec<String>)>,
    /// Requests answered 2xx so far, for `wait_some`.
    ok: Arc<AtomicU64>,
}

const MAX: u64 = 200_000;

impl Load {
    pub fn start(url: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let (s, o) = (stop.clone(), ok.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let end = Instant::now() + Duration::from_secs(600);
            let mut failures = Vec::new();
            let mut n = 0;
            while !s.load(Ordering::Relaxed) && n < MAX && Instant::now() < end {
                n += 1;
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(format!("{e}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (n, failures)
        });
        Load { stop, task, ok }
    }

    /// Stop; the requests made and the failures seen.
    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }

    /// Wait (at most 30 s) until some requests were answered.
    pub async fn wait_some(&self) {
        let ok = self.ok.clone();
        super::wait_until("the load client's first answers", 30, || {
            let ok = ok.clone();
            async move {
                let n = ok.load(Ordering::Relaxed);
                if n >= 5 {
                    Ok(())
                } else {
                    Err(format!("{n} answers"))
                }
            }
        })
        .await;
    }
}
