//! An nginx of a test's own in front of the lab hosts, and a bounded load client through it.
//! The nginx runs on the agent's machine (a free loopback port, its own directory) and
//! `include`s the file a `[balancer.NAME]` of the agent owns; its access log lists every
//! upstream attempt, so that a request nginx had to retry on another server is seen.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::lab::free_port;

pub struct Nginx {
    /// Its config, the file hoist owns (`conf.d/hoist.conf`), its pid and logs.
    dir: PathBuf,
    /// Where it listens on loopback.
    port: u16,
}

impl Nginx {
    /// Start an nginx in `dir/nginx` that proxies `/` to `upstream` (whose servers the
    /// balancer file lists).
    pub fn start(dir: &Path, upstream: &str) -> Nginx {
        let dir = dir.join("nginx");
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let port = free_port();
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 512; }}\n\
             http {{\n  log_format up '$status \"$upstream_addr\" \"$upstream_status\"';\n  access_log {d}/access.log up;\n\
             client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n\
             uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n  include {d}/conf.d/*.conf;\n\
             server {{\n    listen 127.0.0.1:{port};\n\
             location / {{\n      proxy_pass http://{upstream};\n      proxy_next_upstream error timeout http_502 http_503;\n\
             proxy_connect_timeout 1s;\n      proxy_read_timeout 5s;\n    }}\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        // nginx refuses a proxy_pass to an upstream that does not exist: until hoist writes
        // its file, one server that is down.
        std::fs::write(
            dir.join("conf.d/hoist.conf"),
            format!("upstream {upstream} {{ server 127.0.0.1:9 down; }}\n"),
        )
        .unwrap();
        let n = Nginx { dir, port };
        let out = std::process::Command::new("nginx")
            .args(["-c", &n.conf()])
            .output()
            .unwrap();
        assert!(out.status.success(), "nginx: {out:?}");
        n
    }

    fn conf(&self) -> String {
        self.dir.join("nginx.conf").display().to_string()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `[balancer.NAME]` for the agent's config: hoist owns `conf.d/hoist.conf`.
    pub fn toml(&self, name: &str) -> String {
        format!(
            "[balancer.{name}]\nkind = \"nginx\"\nconfig = {:?}\ntest = [\"nginx\", \"-t\", \"-q\", \"-c\", {:?}]\nreload = [\"nginx\", \"-s\", \"reload\", \"-c\", {:?}]\nurl = {:?}\n",
            self.dir.join("conf.d/hoist.conf").display().to_string(),
            self.conf(),
            self.conf(),
            self.url()
        )
    }

    /// Requests nginx retried on another upstream (its access log lists two or more
    /// addresses).
    pub fn retries(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(", ") || l.contains(" : "))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nginx")
            .args(["-s", "stop", "-c", &self.conf()])
            .output();
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
