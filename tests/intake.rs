//! End-to-end intake: the real binary, real HTTP, a real SQLite file, a real `kill -9`.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{
    Agent, SECRET, api, api_request, api_request_as, github_push, hoist, post, sha, signed_headers,
};
use hoist::forge::Forge;
use reqwest::Method;
use serde_json::Value;

async fn deliveries(agent: &Agent) -> Vec<Value> {
    let r = api_request(agent, Method::GET, "/deliveries?limit=1000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Vec<Value>>().await.unwrap()
}

/// The signed GitHub delivery `delivery` of a push of commit `sha(n)` to acme/web's main.
async fn push_main(
    client: &reqwest::Client,
    agent: &Agent,
    delivery: &str,
    n: u64,
) -> reqwest::Response {
    let body = github_push("acme/web", "refs/heads/main", &sha(n));
    let headers = signed_headers(Forge::Github, delivery, SECRET, &body);
    post(
        client,
        &format!("{}/hooks/github", agent.url),
        &headers,
        body,
    )
    .send()
    .await
    .unwrap()
}

/// A few hundred concurrent signed deliveries, `kill -9` in the middle, restart: every
/// delivery that got 202 is there exactly once, and every stored row is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_no_accepted_delivery() {
    const N: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path(), "");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("{}/hooks/github", agent.url);

    let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let a_third = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for i in 0..N {
        let (client, url, answered, a_third) = (
            client.clone(),
            url.clone(),
            answered.clone(),
            a_third.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let body = github_push("acme/web", "refs/heads/main", &sha(i + 1));
            let headers = signed_headers(Forge::Github, &format!("delivery-{i}"), SECRET, &body);
            // Spread the sends so that the kill lands in the middle of the stream.
            tokio::time::sleep(Duration::from_micros(i * 250)).await;
            let r = post(&client, &url, &headers, body).send().await;
            if answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == N / 3 {
                a_third.notify_one();
            }
            match r {
                Ok(r) => (i, Some(r.status().as_u16()), r.json::<Value>().await.ok()),
                Err(_) => (i, None, None),
            }
        }));
    }
    // Kill as soon as a third has been answered (bounded wait): the task whose answer makes
    // the third says so, which lands the kill closer to the middle than any poll would.
    let answered_in_time = tokio::time::timeout(Duration::from_secs(30), a_third.notified())
        .await
        .is_ok();
    assert!(answered_in_time, "deliveries were not answered within 30 s");
    agent.kill9();

    let mut accepted: HashMap<u64, i64> = HashMap::new();
    let mut not_accepted = Vec::new();
    for t in tasks {
        let (i, status, body) = t.await.unwrap();
        match status {
            Some(202) => {
                let id = body.unwrap()["delivery"]
                    .as_i64()
                    .expect("202 names the delivery");
                accepted.insert(i, id);
            }
            Some(s) => panic!("delivery {i} got {s} before the kill"),
            None => not_accepted.push(i),
        }
    }
    assert!(
        accepted.len() as u64 >= N / 3,
        "only {} accepted before the kill",
        accepted.len()
    );
    assert!(
        !not_accepted.is_empty(),
        "the kill came after every delivery was answered; the test proves nothing"
    );

    let mut agent = Agent::start(dir.path(), "");
    let rows = deliveries(&agent).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for row in &rows {
        // Whole rows only: every field present and consistent with what was sent.
        let delivery_id = row["delivery_id"].as_str().unwrap();
        let i: u64 = delivery_id
            .strip_prefix("delivery-")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(row["commit"], sha(i + 1), "row {row}");
        assert_eq!(row["repo"], "acme/web");
        assert_eq!(row["ref"], "refs/heads/main");
        assert_eq!(row["forge"], "github");
        assert_eq!(row["status"], "accepted");
        assert!(row["received_at"].as_str().unwrap().ends_with('Z'));
        *seen.entry(delivery_id.to_string()).or_default() += 1;
    }
    for (i, id) in &accepted {
        let key = format!("delivery-{i}");
        assert_eq!(
            seen.get(&key),
            Some(&1),
            "delivery {i} got 202 but is stored {:?} times",
            seen.get(&key)
        );
        assert!(
            rows.iter()
                .any(|r| r["id"] == *id && r["delivery_id"] == key.as_str())
        );
    }
    assert!(seen.values().all(|&n| n == 1));

    // The forge retries what got no answer: each is accepted (or recognised) once, nothing twice.
    for i in &not_accepted {
        let r = push_main(&client, &agent, &format!("delivery-{i}"), i + 1).await;
        assert_eq!(r.status(), 202);
    }
    let rows = deliveries(&agent).await;
    assert_eq!(
        rows.len() as u64,
        N,
        "after retries every delivery is stored exactly once"
    );
    assert_eq!(agent.terminate().code(), Some(0));
}

/// SIGTERM: stop accepting, finish writes, exit 0; what was accepted is there after a restart.
#[tokio::test]
async fn sigterm_finishes_writes_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path(), "");
    let client = reqwest::Client::new();
    for i in 0..20 {
        let r = push_main(&client, &agent, &format!("t-{i}"), 1000 + i).await;
        assert_eq!(r.status(), 202);
    }
    assert_eq!(agent.terminate().code(), Some(0));
    let agent = Agent::start(dir.path(), "");
    assert_eq!(deliveries(&agent).await.len(), 20);
}

/// What a forge and a person see for each kind of delivery.
#[tokio::test]
async fn http_contract() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let client = reqwest::Client::new();
    let hook = |forge: &str| format!("{}/hooks/{forge}", agent.url);

    // Accepted, then the same delivery id, then the same (repo, ref, commit): one row, one answer.
    let body = github_push("acme/web", "refs/heads/main", &sha(7));
    let h = signed_headers(Forge::Github, "d-1", SECRET, &body);
    let first = post(&client, &hook("github"), &h, body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    assert!(
        first["delivery"].is_i64() && first["runs"].is_array(),
        "{first}"
    );
    let again = post(&client, &hook("github"), &h, body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let h2 = signed_headers(Forge::Github, "d-2", SECRET, &body);
    let same_push = post(&client, &hook("github"), &h2, body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(same_push.json::<Value>().await.unwrap(), first);
    assert_eq!(deliveries(&agent).await.len(), 1);

    // Refusals store nothing and say what to do.
    let check_refused = |status: u16, r: reqwest::Response| async move {
        assert_eq!(r.status().as_u16(), status);
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().is_some_and(|e| e.len() > 20), "{v}");
    };
    let body8 = github_push("acme/web", "refs/heads/main", &sha(8));
    // Tampered but still well-formed: the ref changed in transit.
    let tampered = String::from_utf8(body8.clone())
        .unwrap()
        .replace("refs/heads/main", "refs/heads/evil")
        .into_bytes();
    let h8 = signed_headers(Forge::Github, "d-8", SECRET, &body8);
    check_refused(
        401,
        post(&client, &hook("github"), &h8, tampered)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let wrong = signed_headers(Forge::Github, "d-8", "not-the-secret", &body8);
    check_refused(
        401,
        post(&client, &hook("github"), &wrong, body8.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    let unsigned: Vec<_> = h8
        .iter()
        .filter(|(k, _)| !k.starts_with("X-Hub"))
        .cloned()
        .collect();
    check_refused(
        401,
        post(&client, &hook("github"), &unsigned, body8.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    check_refused(
        400,
        post(&client, &hook("github"), &h8, b"{not json".to_vec())
            .send()
            .await
            .unwrap(),
    )
    .await;
    let other = github_push("someone/else", "refs/heads/main", &sha(9));
    let ho = signed_headers(Forge::Github, "d-9", SECRET, &other);
    check_refused(
        404,
        post(&client, &hook("github"), &ho, other)
            .send()
            .await
            .unwrap(),
    )
    .await;
    // acme/web is a GitHub repo: its deliveries on the gitea route are refused, naming the right route.
    let hg = signed_headers(Forge::Gitea, "d-10", SECRET, &body8);
    let r = post(&client, &hook("gitea"), &hg, body8.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("/hooks/github"));
    check_refused(
        404,
        post(&client, &hook("svn"), &h8, body8.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    // Over 25 MiB: 413, whether the size is declared up front or only found while reading.
    let addr = agent.url.trim_start_matches("http://").to_string();
    let (declared, streamed) = tokio::task::spawn_blocking(move || {
        (
            oversized(&addr, &h8_raw(), true),
            oversized(&addr, &h8_raw(), false),
        )
    })
    .await
    .unwrap();
    for answer in [declared, streamed] {
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("larger than 25 MiB"), "{answer}");
    }
    assert_eq!(
        deliveries(&agent).await.len(),
        1,
        "refused deliveries stored nothing"
    );

    // A ping is answered 200 and starts nothing.
    let ping = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/webhooks/github/ping.json"
    ))
    .unwrap();
    let mut pv: Value = serde_json::from_slice(&ping).unwrap();
    pv["repository"]["full_name"] = "acme/web".into();
    let ping = serde_json::to_vec(&pv).unwrap();
    let mut hp = signed_headers(Forge::Github, "p-1", SECRET, &ping);
    hp.retain(|(k, _)| k != "X-GitHub-Event");
    hp.push(("X-GitHub-Event".into(), "ping".into()));
    let r = post(&client, &hook("github"), &hp, ping)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // GitHub's form encoding, signed over the form body.
    let json9 = github_push("acme/web", "refs/heads/main", &sha(10));
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", std::str::from_utf8(&json9).unwrap())
        .finish();
    let mut hf = signed_headers(Forge::Github, "f-1", SECRET, form.as_bytes());
    hf.retain(|(k, _)| k != "Content-Type");
    hf.push((
        "Content-Type".into(),
        "application/x-www-form-urlencoded".into(),
    ));
    let r = post(&client, &hook("github"), &hf, form.into_bytes())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // A Gitea repo on its own route.
    let gitea = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/webhooks/gitea/push-docs.json"
    ))
    .unwrap();
    let mut gv: Value = serde_json::from_slice(&gitea).unwrap();
    gv["repository"]["full_name"] = "acme/api".into();
    let gitea = serde_json::to_vec(&gv).unwrap();
    let hg = signed_headers(Forge::Gitea, "g-1", SECRET, &gitea);
    let r = post(&client, &hook("gitea"), &hg, gitea)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // The API needs a token; lists are newest first and paged.
    let r = api_request_as(&agent, Method::GET, "/deliveries", None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = api_request_as(&agent, Method::GET, "/deliveries", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let rows = deliveries(&agent).await;
    assert_eq!(rows.len(), 3);
    assert!(rows[0]["id"].as_i64() > rows[1]["id"].as_i64());
    assert_eq!(rows[0]["repo"], "acme/api");
    let page = api(
        &agent,
        &format!("/deliveries?limit=1&before={}", rows[0]["id"]),
    )
    .await;
    let page = page.as_array().unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["id"], rows[1]["id"]);
    let r = client
        .get(format!("{}/healthz", agent.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let metrics = client
        .get(format!("{}/metrics", agent.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hoist_deliveries_accepted_total 3"),
        "{metrics}"
    );
}

fn h8_raw() -> Vec<(String, String)> {
    let body = github_push("acme/web", "refs/heads/main", &sha(8));
    signed_headers(Forge::Github, "d-8", SECRET, &body)
}

/// Send a body of 25 MiB + 1 over a raw socket (with Content-Length, or chunked), ignoring
/// that the server may stop reading, and return the answer's text.
fn oversized(addr: &str, headers: &[(String, String)], declared: bool) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let size = 25 * 1024 * 1024 + 1;
    let mut head = format!("POST /hooks/github HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&if declared {
        format!("Content-Length: {size}\r\n\r\n")
    } else {
        "Transfer-Encoding: chunked\r\n\r\n".to_string()
    });
    s.write_all(head.as_bytes()).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..26 {
            let ok = if declared {
                w.write_all(&chunk)
            } else {
                w.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .and_then(|()| w.write_all(&chunk))
                    .and_then(|()| w.write_all(b"\r\n"))
            };
            if ok.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        // The JSON error body is the last thing the server sends.
        if answer.ends_with(b"}") {
            break;
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    String::from_utf8_lossy(&answer).into_owned()
}

/// A config error stops the agent with exit 2 and names the key and line.
#[test]
fn bad_config_exits_2_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hoist.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\n[[repo]]\nname = \"a/b\"\nurl = \"/x\"\nforge = \"github\"\nsecret = \"hunter2\"\n").unwrap();
    let out = hoist(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(out.code, Some(2));
    let err = &out.stderr;
    assert!(
        err.contains("hoist.toml:6:10: repo a/b secret: a literal secret is refused"),
        "{err}"
    );
    assert!(!err.contains("hunter2"));
}
