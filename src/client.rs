//! Client commands: talk to a running agent over its API (`--server`, `--token`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::Value;

/// How client commands reach a running agent.
#[derive(clap::Args)]
pub struct Client {
    /// The agent's URL.
    #[arg(long, env = "HOIST_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// An API token (from `hoist token create`).
    #[arg(long, env = "HOIST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl Client {
    fn get(&self, path: &str) -> anyhow::Result<reqwest::RequestBuilder> {
        self.request(reqwest::Method::GET, path)
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        let token = self
            .token
            .as_deref()
            .context("no API token: pass --token or set HOIST_TOKEN (create one with `hoist token create NAME`)")?;
        Ok(reqwest::Client::new()
            .request(
                method,
                format!("{}{path}", self.server.trim_end_matches('/')),
            )
            .bearer_auth(token))
    }
}

/// Send, and turn an error answer into its `{"error": …}` message.
async fn send(req: reqwest::RequestBuilder, server: &str) -> anyhow::Result<reqwest::Response> {
    let r = req.send().await.with_context(|| {
        format!(
            "cannot reach the hoist agent at {server}; is it running? (--server / HOIST_SERVER)"
        )
    })?;
    if r.status().is_success() {
        return Ok(r);
    }
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    bail!(
        "{status}: {}",
        body["error"].as_str().unwrap_or("no message")
    )
}

pub async fn runs(
    c: Client,
    repo: Option<String>,
    status: Option<String>,
    limit: u32,
) -> anyhow::Result<ExitCode> {
    let mut req = c
        .get("/api/v1/runs")?
        .query(&[("limit", limit.to_string())]);
    if let Some(r) = repo {
        req = req.query(&[("repo", r)]);
    }
    if let Some(s) = status {
        req = req.query(&[("status", s)]);
    }
    let runs: Vec<Value> = send(req, &c.server).await?.json().await?;
    let mut table = Table::new(&["RUN", "STATUS", "REPO", "REF", "COMMIT", "REASON"]);
    table.right(&[0]);
    for r in runs {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        table.row(vec![
            r["id"].to_string(),
            s("status"),
            s("repo"),
            s("ref"),
            s("commit").chars().take(8).collect::<String>(),
            s("reason").lines().next().unwrap_or("").to_string(),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

/// Print a run's log; with `follow`, stream it (SSE) until the run ends. Exit 1 unless it succeeded.
pub async fn logs(c: Client, run: i64, follow: bool) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/runs/{run}/logs");
    let mut out = std::io::stdout();
    let mut lines = StepLines {
        names: step_names(&c, run).await.unwrap_or_default(),
        ..StepLines::default()
    };
    if !follow {
        let mut chunks: Vec<Value> = send(c.get(&path)?, &c.server).await?.json().await?;
        // Each step's log in one piece, in step order (steps of a graph may have run at once).
        chunks.sort_by_key(|ch| ch["step"].as_i64().unwrap_or(0));
        for ch in chunks {
            let step = ch["step"].as_i64().unwrap_or(0);
            lines.push(step, ch["data"].as_str().unwrap_or(""), &mut out)?;
        }
        lines.finish(&mut out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let resp = send(
        c.get(&path)?.header("Accept", "text/event-stream"),
        &c.server,
    )
    .await?;
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let (mut event, mut data) = (String::new(), String::new());
    while let Some(bytes) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&bytes?));
        while let Some(nl) = buf.find('\n') {
            let line: String = buf.drain(..=nl).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            } else if line.is_empty() && !data.is_empty() {
                let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                data.clear();
                match event.as_str() {
                    "log" => {
                        let step = v["step"].as_i64().unwrap_or(0);
                        if !lines.names.contains_key(&step)
                            && let Ok(names) = step_names(&c, run).await
                        {
                            lines.names = names;
                        }
                        lines.push(step, v["data"].as_str().unwrap_or(""), &mut out)?;
                        out.flush()?;
                    }
                    "end" => {
                        lines.finish(&mut out)?;
                        let status = v["status"].as_str().unwrap_or("unknown");
                        eprintln!("run {run} ended: {status}");
                        return Ok(if status == "success" {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::from(1)
                        });
                    }
                    _ => {}
                }
            }
        }
    }
    lines.finish(&mut out)?;
    bail!("the agent closed the log stream before run {run} ended")
}

/// The names of a run's steps by index.
async fn step_names(
    c: &Client,
    run: i64,
) -> anyhow::Result<std::collections::HashMap<i64, String>> {
    let r: Value = send(c.get(&format!("/api/v1/runs/{run}"))?, &c.server)
        .await?
        .json()
        .await?;
    Ok(r["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["index"].as_i64()?, s["name"].as_str()?.to_string())))
        .collect())
}

/// A run's log as `hoist logs` prints it: whole lines, each step's kept apart, so that steps
/// running at once (a graph's) never cut into each other's lines; where the output moves to
/// another step in the middle of its log, a `── [NAME]` line says whose lines follow.
#[derive(Default)]
struct StepLines {
    /// Step names by index, for the `── [NAME]` lines.
    names: std::collections::HashMap<i64, String>,
    /// Each step's output since its last newline.
    partial: std::collections::BTreeMap<i64, String>,
    /// The step whose line was printed last.
    last: Option<i64>,
}

impl StepLines {
    fn push(&mut self, step: i64, data: &str, out: &mut impl Write) -> std::io::Result<()> {
        let mut pending = self.partial.remove(&step).unwrap_or_default();
        pending.push_str(data);
        while let Some(nl) = pending.find('\n') {
            let line: String = pending.drain(..=nl).collect();
            self.print(step, &line, out)?;
        }
        if !pending.is_empty() {
            self.partial.insert(step, pending);
        }
        Ok(())
    }

    /// Print what is left of every step's last line.
    fn finish(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        for (step, rest) in std::mem::take(&mut self.partial) {
            self.print(step, &format!("{rest}\n"), out)?;
        }
        Ok(())
    }

    fn print(&mut self, step: i64, line: &str, out: &mut impl Write) -> std::io::Result<()> {
        // A service's log (a negative index) names it in its first line; the run's steps
        // do not list services.
        if let Some(rest) = line.strip_prefix("── service ")
            && let Some(name) = rest.split_whitespace().next()
        {
            self.names.insert(step, format!("service {name}"));
        }
        // A step's own header line (`── step NAME (kind)`) says whose lines follow already.
        if self.last.is_some_and(|l| l != step)
            && !line.starts_with("── step ")
            && !line.starts_with("── service ")
        {
            let name = self
                .names
                .get(&step)
                .cloned()
                .unwrap_or_else(|| format!("step {step}"));
            writeln!(out, "── [{name}]")?;
        }
        self.last = Some(step);
        out.write_all(line.as_bytes())
    }
}

pub async fn releases(c: Client, app: String) -> anyhow::Result<ExitCode> {
    let releases: Vec<Value> = send(c.get(&format!("/api/v1/apps/{app}/releases"))?, &c.server)
        .await?
        .json()
        .await?;
    let mut table = Table::new(&["RELEASE", "COMMIT", "RUN", "IMAGE", "CREATED"]);
    table.right(&[0, 2]);
    for r in releases {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        table.row(vec![
            r["number"].to_string(),
            s("commit").chars().take(8).collect::<String>(),
            r["run"].to_string(),
            format!("{}@{}", s("repository"), s("manifest_digest")),
            s("created_at"),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

/// `hoist approve RUN STEP`: let a waiting `when.manual` step go.
pub async fn approve(c: Client, run: i64, step: String) -> anyhow::Result<ExitCode> {
    let answer: Value = send(
        c.request(
            reqwest::Method::POST,
            &format!("/api/v1/runs/{run}/steps/{step}/approve"),
        )?,
        &c.server,
    )
    .await?
    .json()
    .await?;
    println!(
        "run {run}: step {step} approved by {}; the run goes on",
        answer["approved_by"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}

/// Start a rollback and follow it to its verdict, printing each host's steps as they are
/// journaled; exit 0 only when every host was verified on the target.
pub async fn rollback(
    c: Client,
    app: String,
    to: Option<i64>,
    now: bool,
    hosts: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let mut body = serde_json::json!({ "now": now });
    if let Some(n) = to {
        body["to"] = n.into();
    }
    if !hosts.is_empty() {
        body["hosts"] = hosts.into();
    }
    let started: Value = send(
        c.request(
            reqwest::Method::POST,
            &format!("/api/v1/apps/{app}/rollback"),
        )?
        .json(&body),
        &c.server,
    )
    .await?
    .json()
    .await?;
    let id = started["deployment"]
        .as_i64()
        .context("the agent did not name the deployment")?;
    eprintln!("deployment {id} started");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1800);
    let mut shown = 0;
    let d = loop {
        let d: Value = send(c.get(&format!("/api/v1/deployments/{id}"))?, &c.server)
            .await?
            .json()
            .await?;
        let width = d["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h["host"].as_str())
            .map(str::len)
            .max()
            .unwrap_or(4)
            .max("deployment".len());
        // Each journaled step once, as it appears.
        for e in d["events"].as_array().into_iter().flatten().skip(shown) {
            shown += 1;
            let step = e["step"].as_str().unwrap_or("");
            if step == "end" {
                continue;
            }
            println!(
                "{:<width$}  {:<12}  {}",
                e["host"].as_str().unwrap_or("deployment"),
                step,
                e["detail"].as_str().unwrap_or("")
            );
        }
        if d["status"] != "running" {
            break d;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "deployment {id} is still running after 30 minutes; follow it with `hoist deployment {id}`"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    let mut table = Table::new(&["HOST", "STATE", "EXPECTED", "READ BACK"]);
    for h in d["hosts"].as_array().into_iter().flatten() {
        table.row(vec![
            text(h, "host"),
            text(h, "state"),
            h["expected"].as_str().unwrap_or("-").to_string(),
            h["read_back"].as_str().unwrap_or("-").to_string(),
        ]);
    }
    table.print();
    let status = d["status"].as_str().unwrap_or("unknown");
    println!(
        "deployment {id} to release {}: {status}{}",
        d["to_release"],
        d["reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    Ok(if status == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `hoist deployments [APP]`: one app's deployments, or every app's, newest first.
pub async fn deployments(c: Client, app: Option<String>) -> anyhow::Result<ExitCode> {
    let apps: Vec<String> = match app {
        Some(a) => vec![a],
        None => {
            let all: Vec<Value> = send(c.get("/api/v1/apps")?, &c.server)
                .await?
                .json()
                .await?;
            all.iter()
                .filter_map(|a| a["app"].as_str())
                .map(str::to_string)
                .collect()
        }
    };
    let mut list: Vec<Value> = Vec::new();
    for a in &apps {
        let some: Vec<Value> = send(c.get(&format!("/api/v1/apps/{a}/deployments"))?, &c.server)
            .await?
            .json()
            .await?;
        list.extend(some);
    }
    list.sort_by_key(|d| std::cmp::Reverse(d["id"].as_i64().unwrap_or(0)));
    let mut table = Table::new(&[
        "ID",
        "APP",
        "KIND",
        "FROM -> TO",
        "STATUS",
        "STARTED",
        "DURATION",
    ]);
    table.right(&[0, 6]);
    for d in &list {
        let from = d["from_release"]
            .as_i64()
            .map_or("none".to_string(), |r| r.to_string());
        table.row(vec![
            d["id"].to_string(),
            text(d, "app"),
            text(d, "kind"),
            format!("{from} -> {}", d["to_release"]),
            text(d, "status"),
            text(d, "created_at"),
            match (at(&d["created_at"]), at(&d["finished_at"])) {
                (Some(a), Some(b)) => since(a, b),
                _ => "running".to_string(),
            },
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

/// `hoist deployment ID`: the verdict, then per host its timeline (each journaled step with
/// the time it took since the host's step before) and its chain of custody.
pub async fn deployment(c: Client, id: i64) -> anyhow::Result<ExitCode> {
    let d: Value = send(c.get(&format!("/api/v1/deployments/{id}"))?, &c.server)
        .await?
        .json()
        .await?;
    let from = d["from_release"]
        .as_i64()
        .map_or("none".to_string(), |r| r.to_string());
    println!(
        "deployment {id}: {} of {} from release {from} to {}, asked by {}",
        text(&d, "kind"),
        text(&d, "app"),
        d["to_release"],
        text(&d, "requested_by")
    );
    println!(
        "status {}{}{}",
        text(&d, "status"),
        d["failing_host"]
            .as_str()
            .map(|h| format!(" (failing host {h})"))
            .unwrap_or_default(),
        d["reason"]
            .as_str()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    let start = at(&d["created_at"]);
    let events: Vec<&Value> = d["events"].as_array().into_iter().flatten().collect();
    let timeline = |host: Option<&str>| {
        let mut table = Table::new(&["AT", "STEP", "TOOK", "DETAIL"]);
        table.right(&[0, 2]);
        let mut last = start;
        for e in events.iter().filter(|e| e["host"].as_str() == host) {
            let t = at(&e["at"]);
            table.row(vec![
                match (start, t) {
                    (Some(a), Some(b)) => format!("+{}", since(a, b)),
                    _ => "?".into(),
                },
                text(e, "step"),
                match (last, t) {
                    (Some(a), Some(b)) => since(a, b),
                    _ => "?".into(),
                },
                text(e, "detail"),
            ]);
            last = t.or(last);
        }
        table
    };
    for h in d["hosts"].as_array().into_iter().flatten() {
        let name = text(h, "host");
        println!(
            "\n{name} (batch {}): {}{}",
            h["batch"],
            text(h, "state"),
            h["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        timeline(Some(&name)).print_indented("  ");
        let expected = h["expected"].as_str().unwrap_or("-");
        let back = h["read_back"].as_str().unwrap_or("-");
        let verdict = match (h["expected"].as_str(), h["read_back"].as_str()) {
            (Some(e), Some(b)) if e == b => "the same image",
            (_, Some(_)) => "the previous release's image (reverted)",
            _ => "nothing read back",
        };
        println!("  custody: expected {expected}");
        println!("           read back {back}: {verdict}");
    }
    println!("\ndeployment");
    timeline(None).print_indented("  ");
    let status = text(&d, "status");
    Ok(if status == "succeeded" || status == "running" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `hoist abort DEPLOYMENT`: tell the agent to stop it and revert; follow it to its verdict.
pub async fn abort(c: Client, id: i64) -> anyhow::Result<ExitCode> {
    let answer: Value = send(
        c.request(
            reqwest::Method::POST,
            &format!("/api/v1/deployments/{id}/abort"),
        )?,
        &c.server,
    )
    .await?
    .json()
    .await?;
    eprintln!(
        "deployment {id}: aborted by {}; reverting every touched host",
        answer["aborted_by"].as_str().unwrap_or("?")
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let d: Value = send(c.get(&format!("/api/v1/deployments/{id}"))?, &c.server)
            .await?
            .json()
            .await?;
        if d["status"] != "running" {
            let status = text(&d, "status");
            println!(
                "deployment {id}: {status}{}",
                d["reason"]
                    .as_str()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            );
            return Ok(if status == "aborted" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "deployment {id} is still reverting after 10 minutes; follow it with `hoist deployment {id}`"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// A string field of an API object, "" when absent.
fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or("").to_string()
}

/// An API timestamp (RFC 3339).
fn at(v: &Value) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339_weak(v.as_str()?).ok()
}

/// The time from `a` to `b`, to the millisecond: "1.234s", "56ms".
fn since(a: std::time::SystemTime, b: std::time::SystemTime) -> String {
    let d = b.duration_since(a).unwrap_or_default();
    if d.as_secs() >= 1 {
        format!("{:.3}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A table printed with aligned columns, whatever the widths of its cells: each column as
/// wide as its widest cell (header included), two spaces apart; the last one is not padded.
struct Table {
    /// The header, then the rows, as cells.
    rows: Vec<Vec<String>>,
    /// Columns aligned to the right (numbers).
    right: Vec<usize>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
            right: Vec::new(),
        }
    }

    fn right(&mut self, columns: &[usize]) {
        self.right = columns.to_vec();
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn lines(&self) -> Vec<String> {
        let n = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..n)
            .map(|i| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        self.rows
            .iter()
            .map(|r| {
                let cells: Vec<String> = r
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let w = widths[i];
                        if self.right.contains(&i) {
                            format!("{c:>w$}")
                        } else if i + 1 == r.len() {
                            c.clone()
                        } else {
                            format!("{c:<w$}")
                        }
                    })
                    .collect();
                cells.join("  ").trim_end().to_string()
            })
            .collect()
    }

    fn print(&self) {
        self.print_indented("");
    }

    fn print_indented(&self, indent: &str) {
        for l in self.lines() {
            println!("{indent}{l}");
        }
    }
}

pub async fn hosts(c: Client, app: Option<String>) -> anyhow::Result<ExitCode> {
    match app {
        Some(app) => {
            let rows: Vec<Value> = send(c.get(&format!("/api/v1/apps/{app}/hosts"))?, &c.server)
                .await?
                .json()
                .await?;
            let mut table =
                Table::new(&["HOST", "RELEASE", "CONTAINER", "DIGEST", "HEALTH", "DRIFT"]);
            table.right(&[1]);
            for r in rows {
                let expected = r["digest_expected"].as_str().unwrap_or("");
                let back = r["digest_read_back"].as_str().unwrap_or("");
                let digest = if !expected.is_empty() && expected == back {
                    "verified"
                } else {
                    "MISMATCH"
                };
                table.row(vec![
                    text(&r, "host"),
                    r["release"].to_string(),
                    r["container"].as_str().unwrap_or("-").to_string(),
                    digest.to_string(),
                    text(&r, "health"),
                    r["drift"].as_str().unwrap_or("-").to_string(),
                ]);
            }
            table.print();
        }
        None => {
            let rows: Vec<Value> = send(c.get("/api/v1/hosts")?, &c.server)
                .await?
                .json()
                .await?;
            let mut table = Table::new(&["HOST", "ADDRESS", "STATE", "ENGINE"]);
            for r in rows {
                let state = if r["reachable"] == true {
                    "reachable"
                } else {
                    "UNREACHABLE"
                };
                table.row(vec![
                    text(&r, "host"),
                    text(&r, "address"),
                    state.to_string(),
                    r.get("engine")
                        .or(r.get("error"))
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                ]);
            }
            table.print();
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::{StepLines, Table};

    #[test]
    fn table_columns_line_up_whatever_the_widths() {
        let mut t = Table::new(&["ID", "APP", "STATUS"]);
        t.right(&[0]);
        t.row(vec!["7".into(), "a-very-long-app-name".into(), "ok".into()]);
        t.row(vec!["1234".into(), "w".into(), "rolled_back".into()]);
        assert_eq!(
            t.lines(),
            [
                "  ID  APP                   STATUS",
                "   7  a-very-long-app-name  ok",
                "1234  w                     rolled_back",
            ]
        );
    }

    #[test]
    fn lines_of_steps_that_ran_at_once_stay_whole_and_say_whose_they_are() {
        let mut lines = StepLines {
            names: [(0, "a".to_string()), (1, "b".to_string())].into(),
            ..StepLines::default()
        };
        let mut out = Vec::new();
        for (step, data) in [
            (0, "── step a (container)\nhal"),
            (1, "── step b (container)\nb1\n"),
            (0, "f a\n"),
            (1, "b2"),
        ] {
            lines.push(step, data, &mut out).unwrap();
        }
        lines.finish(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "── step a (container)\n── step b (container)\nb1\n── [a]\nhalf a\n── [b]\nb2\n"
        );
    }

    #[test]
    fn a_services_lines_are_named_after_its_heading() {
        let mut lines = StepLines {
            names: [(0, "test".to_string())].into(),
            ..StepLines::default()
        };
        let mut out = Vec::new();
        for (step, data) in [
            (-1, "── service db (lab/busybox:1)\ndb starts\n"),
            (0, "── step test (container)\n"),
            (-1, "db answers\n"),
        ] {
            lines.push(step, data, &mut out).unwrap();
        }
        lines.finish(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "── service db (lab/busybox:1)\ndb starts\n── step test (container)\n── [service db]\ndb answers\n"
        );
    }
}
