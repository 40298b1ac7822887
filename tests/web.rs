//! The operator's page at `GET /`, served by the real agent: self-contained HTML under a
//! Content-Security-Policy, and rendered by a real browser (Debian's headless Chromium).

mod common;

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

use common::{Agent, api_request, api_request_as, wait_until_blocking};
use reqwest::Method;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Every `src=` and `href=` attribute value in `html` (quoted with `"` or `'`).
fn attribute_values<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let lower = html.to_ascii_lowercase();
    let needle = format!("{name}=");
    let mut from = 0;
    while let Some(i) = lower[from..].find(&needle) {
        let start = from + i + needle.len();
        from = start;
        let rest = &html[start..];
        let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else {
            out.push(
                rest.split(|c: char| c.is_whitespace() || c == '>')
                    .next()
                    .unwrap_or(""),
            );
            continue;
        };
        let body = &rest[1..];
        out.push(&body[..body.find(q).unwrap_or(body.len())]);
    }
    out
}

/// How a Chromium run ended and what it printed.
struct Output {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// A browser this test started: killed when dropped, also when the test fails.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run Chromium headless with `args` then `url`; fail the test after 90 s.
fn chromium(profile: &Path, args: &[&str], url: &str) -> Output {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: this test renders the page in Debian's headless Chromium; \
         install it with `apt-get install -y chromium` (scripts/lab's PACKAGES should list chromium)"
    );
    // Output to files, not pipes: a chatty browser never blocks on a full pipe, and what it
    // said so far can be read while it runs.
    let (out_path, err_path) = (
        profile.with_extension("stdout"),
        profile.with_extension("stderr"),
    );
    let child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .env("HOME", profile)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .expect("start chromium");
    let mut browser = Browser(child);
    let what = format!("chromium {args:?} to finish");
    let status = wait_until_blocking(&what, 90, || {
        browser.0.try_wait().unwrap().ok_or_else(|| {
            format!(
                "stderr:\n{}",
                String::from_utf8_lossy(&std::fs::read(&err_path).unwrap_or_default())
            )
        })
    });
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read(&err_path).unwrap(),
    }
}

#[tokio::test]
async fn page_is_self_contained_and_renders_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), "");
    let client = reqwest::Client::new();

    // The page needs no token; it is static and carries no data.
    let r = client.get(format!("{}/", agent.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let content_type = header("content-type");
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let csp = header("content-security-policy");
    for directive in [
        "default-src 'self'",
        "script-src 'unsafe-inline'",
        "style-src 'unsafe-inline'",
        "form-action 'none'",
    ] {
        assert!(csp.contains(directive), "CSP lacks {directive:?}: {csp:?}");
    }
    let html = r.text().await.unwrap();
    assert!(html.contains("<title>hoist"), "no title: {html:.300}");

    // Self-contained: nothing loads from elsewhere, and no address of any other site appears.
    for name in ["src", "href", "action"] {
        for v in attribute_values(&html, name) {
            let v = v.trim().to_ascii_lowercase();
            assert!(
                !v.starts_with("http:") && !v.starts_with("https:") && !v.starts_with("//"),
                "{name}={v:?} points off the agent"
            );
        }
    }
    for scheme in ["http://", "https://"] {
        assert!(!html.contains(scheme), "the page names a {scheme} address");
    }
    assert!(
        !html.contains("<link") && !html.contains("<script src"),
        "external assets"
    );
    // The token is typed into a password field of a form that posts nowhere; the page never
    // reads a token from its URL (the hash names only the page: #/runs/ID, #/apps/APP …).
    assert!(html.contains("type=\"password\""));
    assert!(!html.contains("URLSearchParams") && !html.contains("location.search"));
    assert!(html.contains("sessionStorage.getItem(KEY)"));

    // Serving the page opens nothing else: the API still wants a token.
    let api = api_request_as(&agent, Method::GET, "/runs", None)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    let ok = api_request(&agent, Method::GET, "/runs")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    // A real browser, under the CSP: the inline script runs (it sets data-view on <body>) and
    // shows the token form, with the rest of the page hidden until a token is given.
    let url = format!("{}/", agent.url);
    let profile = dir.path().join("chromium-dom");
    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            chromium(
                &profile,
                &["--dump-dom", "--virtual-time-budget=3000"],
                &url,
            )
        }
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && dom.contains("data-view=\"login\""),
        "the page's script did not run in Chromium (blocked by the CSP?): {}\nDOM:\n{dom:.2000}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let login = dom.find("id=\"login\"").expect("no login section");
    let main = dom.find("id=\"main\"").expect("no main section");
    assert!(
        !dom[login..login + 40].contains("hidden") && dom[main..main + 40].contains("hidden"),
        "the token form should show and the data stay hidden: {dom:.2000}"
    );

    // And a screenshot of it: a PNG of the window's size with something drawn on it.
    let png = dir.path().join("page.png");
    let profile = dir.path().join("chromium-shot");
    let shot = format!("--screenshot={}", png.display());
    let out = tokio::task::spawn_blocking(move || {
        chromium(&profile, &[&shot, "--window-size=1280,900"], &url)
    })
    .await
    .unwrap();
    let bytes = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot at {} ({e}); chromium {}: {}",
            png.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is not a PNG"
    );
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1280, 900), "screenshot size");
    // A blank 1280x900 page compresses to about 5 KB, one line of text to 7 KB; the token
    // form with its header, box and text to well over 20 KB.
    assert!(
        bytes.len() > 15_000,
        "the screenshot is {} bytes: the page looks empty",
        bytes.len()
    );
    if let Ok(keep) = std::env::var("HOIST_WEB_SCREENSHOT") {
        std::fs::copy(&png, keep).unwrap();
    }
}
