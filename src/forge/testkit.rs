//! The deliveries the forge tests send: built header by header as each forge builds them,
//! signed with [`SECRET`], run through [`receive`] and rendered to one string, so a case reads
//! as "this delivery → this answer". Every module's tests under `forge` share it.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

use super::signature::hmac_sha256_hex;
use super::{Forge, ForgeError, Received, push_headers, receive, sign};

pub(super) const SECRET: &[u8] = b"s3cret-for-tests";

/// A delivery as it reaches the route, plus what hoist.toml says about its repository.
pub(super) struct Delivery {
    pub(super) forge: Forge,
    headers: Vec<(String, Vec<u8>)>,
    pub(super) body: Vec<u8>,
    /// The repository's secret in hoist.toml; None when the repository is not configured.
    pub(super) configured: Option<Vec<u8>>,
}

impl Delivery {
    /// A delivery signed with [`SECRET`] over `signed`, carrying every header the forge
    /// sends (SOURCES.md), including the other forges' duplicates that must not count.
    pub(super) fn new(forge: Forge, event: &str, body: &[u8]) -> Delivery {
        let id = format!("{forge}-delivery-1");
        let mut d = Delivery {
            forge,
            headers: Vec::new(),
            body: body.to_vec(),
            configured: Some(SECRET.to_vec()),
        };
        d = d.set("Content-Type", "application/json");
        for (name, value) in push_headers(forge, &id) {
            d = d.set(name, &value);
        }
        d = d.set(forge.event_header(), event);
        let (sig_name, sig) = sign(forge, SECRET, body);
        d = d.set(sig_name, &sig);
        let sha1 = format!("sha1={}", hmac_sha1_hex(SECRET, body));
        let sha256 = format!("sha256={}", hmac_sha256_hex(SECRET, body));
        match forge {
            Forge::Github => {
                d = d
                    .set("X-Hub-Signature", &sha1)
                    .set("X-GitHub-Hook-ID", "292430182")
                    .set("X-GitHub-Hook-Installation-Target-Type", "repository")
                    .set("User-Agent", "GitHub-Hookshot/044aadd");
            }
            Forge::Gitea | Forge::Forgejo => {
                let hex = hmac_sha256_hex(SECRET, body);
                for prefix in ["X-Gitea", "X-Gogs", "X-GitHub", "X-Forgejo"] {
                    if prefix == "X-Forgejo" && forge == Forge::Gitea {
                        continue;
                    }
                    d = d
                        .set(&format!("{prefix}-Event"), event)
                        .set(&format!("{prefix}-Event-Type"), event)
                        .set(&format!("{prefix}-Delivery"), &id);
                }
                d = d
                    .set("X-Gitea-Signature", &hex)
                    .set("X-Gogs-Signature", &hex)
                    .set("X-Hub-Signature", &sha1)
                    .set("X-Hub-Signature-256", &sha256);
                if forge == Forge::Forgejo {
                    d = d.set("X-Forgejo-Signature", &hex);
                }
            }
            Forge::Gitlab => {
                d = d
                    .set("Idempotency-Key", &format!("{id}-idem"))
                    .set("X-Gitlab-Instance", "https://gitlab.example.com")
                    .set("X-Gitlab-Webhook-UUID", "hook-uuid-not-a-delivery")
                    .set("User-Agent", "GitLab/17.5.0");
            }
            Forge::Bitbucket => {
                d = d
                    .set("X-Hook-UUID", "hook-uuid-not-a-delivery")
                    .set("X-Attempt-Number", "1");
            }
        }
        d
    }

    /// Just the headers hoist reads, for tests that run thousands of deliveries.
    pub(super) fn minimal(forge: Forge, event: &str, body: &[u8]) -> Delivery {
        let (sig_name, sig) = sign(forge, SECRET, body);
        let mut d = Delivery {
            forge,
            headers: Vec::new(),
            body: body.to_vec(),
            configured: Some(SECRET.to_vec()),
        }
        .set(sig_name, &sig);
        for (name, value) in push_headers(forge, "id") {
            d = d.set(name, &value);
        }
        d.set(forge.event_header(), event)
    }

    pub(super) fn fixture(forge: Forge, file: &str, event: &str) -> Delivery {
        Delivery::new(forge, event, &fixture(file))
    }

    pub(super) fn set(mut self, name: &str, value: &str) -> Delivery {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers
            .push((name.to_string(), value.as_bytes().to_vec()));
        self
    }

    pub(super) fn set_bytes(mut self, name: &str, value: &[u8]) -> Delivery {
        self = self.remove(name);
        self.headers.push((name.to_string(), value.to_vec()));
        self
    }

    pub(super) fn remove(mut self, name: &str) -> Delivery {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// Replaces the body and keeps the headers (and so the old signature).
    pub(super) fn body(mut self, body: &[u8]) -> Delivery {
        self.body = body.to_vec();
        self
    }

    pub(super) fn configured(mut self, secret: Option<&[u8]>) -> Delivery {
        self.configured = secret.map(<[u8]>::to_vec);
        self
    }

    pub(super) fn receive(&self) -> Result<Received, ForgeError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("test header name");
            let value = HeaderValue::from_bytes(value).expect("test header value");
            headers.append(name, value);
        }
        receive(self.forge, &headers, &self.body, |_repo| {
            self.configured.clone()
        })
    }
}

pub(super) fn fixture(file: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/webhooks/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

pub(super) fn hmac_sha1_hex(key: &[u8], data: &[u8]) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

/// One line per pushed ref, `ignored <repo>: <what>`, or `<status> <message>`.
pub(super) fn render(result: &Result<Received, ForgeError>) -> String {
    match result {
        Ok(Received::Push(events)) => events
            .iter()
            .map(|e| {
                let first_line = |s: &Option<String>| {
                    s.as_deref()
                        .map(|s| s.lines().next().unwrap_or("").to_string())
                };
                format!(
                    "{} {} {:?}:{} {}..{} created={} deleted={} forced={} msg={:?} \
                     author={:?} pusher={:?}",
                    e.repo,
                    e.git_ref,
                    e.kind,
                    e.name,
                    e.before,
                    e.after,
                    e.created,
                    e.deleted,
                    e.forced,
                    first_line(&e.message),
                    e.author,
                    e.pusher
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Ok(Received::Ignored { repo, what }) => format!("ignored {repo:?}: {what}"),
        Err(e @ ForgeError::Unauthorized(_)) => format!("401 {e}"),
        Err(e @ ForgeError::Malformed(_)) => format!("400 {e}"),
        Err(e @ ForgeError::UnknownRepo(_)) => format!("404 {e}"),
    }
}

/// Runs `d` and compares the rendering with `expect`: exactly for answers, and for errors
/// by status plus a part of the message (`"401 X-Gitea-Signature"`), so messages can be
/// reworded without touching every case. Errors must never reveal the secret or signature.
#[track_caller]
pub(super) fn check(d: Delivery, expect: &str) {
    let result = d.receive();
    let actual = render(&result);
    if let Err(e) = &result {
        let msg = e.to_string();
        let configured = d.configured.as_deref().filter(|s| !s.is_empty());
        for secret in [Some(SECRET), configured].into_iter().flatten() {
            let secret = String::from_utf8_lossy(secret);
            assert!(!msg.contains(&*secret), "error reveals the secret: {msg}");
        }
        assert!(
            !msg.contains(&hmac_sha256_hex(SECRET, &d.body)),
            "reveals the signature: {msg}"
        );
    }
    match expect.split_once(' ') {
        Some((status @ ("400" | "401" | "404"), part)) => assert!(
            actual.starts_with(status) && actual.contains(part),
            "\nexpected: {expect}\n  actual: {actual}"
        ),
        _ => assert_eq!(actual, expect, "\nexpected: {expect}\n  actual: {actual}"),
    }
}

/// Every fixture file, with the event header its real delivery carries and the answer.
pub(super) const FIXTURES: &[(Forge, &str, &str, &str)] = &[
    (
        Forge::Github,
        "github/go-scm-push.json",
        "push",
        "Codertocat/Hello-World refs/heads/master Branch:master a10867b14bb761a232cd80139fbd4c0d33264240..199eddf46df50de8d02e99bf1c5fdb4101338224 created=false deleted=false forced=false msg=Some(\"Update README\") author=Some(\"Codertocat\") pusher=Some(\"Codertocat\")",
    ),
    (
        Forge::Github,
        "github/go-scm-push-branch-delete.json",
        "push",
        "ignored Some(\"bradrydzewski/drone-test-go\"): branch deletion",
    ),
    (
        Forge::Github,
        "github/go-scm-push-tag-create.json",
        "push",
        "bradrydzewski/drone-test-go refs/tags/v0.0.1 Tag:v0.0.1 0000000000000000000000000000000000000000..d2b75aa7797ec26b088fa2dd527e9d2c052fcedd created=true deleted=false forced=false msg=Some(\"Update .drone.yml\") author=Some(\"Brad Rydzewski\") pusher=Some(\"bradrydzewski\")",
    ),
    (
        Forge::Github,
        "github/ping.json",
        "ping",
        "ignored Some(\"Octocoders/Hello-World\"): ping",
    ),
    (
        Forge::Github,
        "github/push-branch-create.json",
        "push",
        "Codertocat/Hello-World refs/heads/master Branch:master 0000000000000000000000000000000000000000..6113728f27ae82c7b1a177c8d03f9e96e0adf246 created=true deleted=false forced=false msg=Some(\"Initial commit\") author=Some(\"Codertocat\") pusher=Some(\"Codertocat\")",
    ),
    (
        Forge::Github,
        "github/push-branch-create-no-username-committer.json",
        "push",
        "Codertocat/Hello-World refs/heads/master Branch:master 0000000000000000000000000000000000000000..6113728f27ae82c7b1a177c8d03f9e96e0adf246 created=true deleted=false forced=false msg=Some(\"Initial commit\") author=Some(\"Codertocat\") pusher=Some(\"Codertocat\")",
    ),
    (
        Forge::Github,
        "github/push-branch-update-legacy-docs.json",
        "push",
        "baxterthehacker/public-repo refs/heads/changes Branch:changes 9049f1265b7d61be4a8904a9a27120d2064dab3b..0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c created=false deleted=false forced=false msg=Some(\"Update README.md\") author=Some(\"baxterthehacker\") pusher=Some(\"baxterthehacker\")",
    ),
    // commits is empty but head_commit is set: the message still comes through.
    (
        Forge::Github,
        "github/push-tag-create-ghes.json",
        "push",
        "Codertocat/Hello-World refs/tags/simple-tag Tag:simple-tag 0000000000000000000000000000000000000000..6113728f27ae82c7b1a177c8d03f9e96e0adf246 created=true deleted=false forced=false msg=Some(\"Adding a .gitignore file\") author=Some(\"Codertocat\") pusher=Some(\"Codertocat\")",
    ),
    (
        Forge::Github,
        "github/push-tag-delete.json",
        "push",
        "ignored Some(\"Codertocat/Hello-World\"): tag deletion",
    ),
    (
        Forge::Gitlab,
        "gitlab/go-scm-push.json",
        "Push Hook",
        "gitlab-org/hello-world refs/heads/master Branch:master 9217710ce8c7e1eae7a5d1c45f6e43e1c769f866..2adc9465c4edfc33834e173fe89436a7cb899a1d created=false deleted=false forced=false msg=Some(\"added readme\") author=Some(\"Sid Sijbrandij\") pusher=Some(\"sytses\")",
    ),
    (
        Forge::Gitlab,
        "gitlab/go-scm-branch-delete.json",
        "Push Hook",
        "ignored Some(\"gitlab-org/hello-world\"): branch deletion",
    ),
    (
        Forge::Gitlab,
        "gitlab/go-scm-tag-push-create.json",
        "Tag Push Hook",
        "gitlab-org/hello-world refs/tags/v1.0.0 Tag:v1.0.0 0000000000000000000000000000000000000000..2adc9465c4edfc33834e173fe89436a7cb899a1d created=true deleted=false forced=false msg=Some(\"added readme\") author=Some(\"Sid Sijbrandij\") pusher=Some(\"sytses\")",
    ),
    (
        Forge::Gitlab,
        "gitlab/go-scm-tag-push-delete.json",
        "Tag Push Hook",
        "ignored Some(\"gitlab-org/hello-world\"): tag deletion",
    ),
    // Two of four commits listed; the head is the second one, not the first.
    (
        Forge::Gitlab,
        "gitlab/push-docs.json",
        "Push Hook",
        "mike/diaspora refs/heads/master Branch:master 95790bf891e76fee5e1747ab589903a6a1f80f22..da1560886d4f094c3e6c9ef40349f7d38b5d27d7 created=false deleted=false forced=false msg=Some(\"fixed readme\") author=Some(\"GitLab dev user\") pusher=Some(\"jsmith\")",
    ),
    // No commits listed, and user_username is null: the pusher falls back to user_name.
    (
        Forge::Gitlab,
        "gitlab/tag-push-docs.json",
        "Tag Push Hook",
        "jsmith/example refs/tags/v1.0.0 Tag:v1.0.0 0000000000000000000000000000000000000000..82b3d5ae55f7080f1e6022629cdb57bfae7cccc7 created=true deleted=false forced=false msg=None author=None pusher=Some(\"John Smith\")",
    ),
    (
        Forge::Gitea,
        "gitea/go-scm-push.json",
        "push",
        "gogits/hello-world refs/heads/master Branch:master 9836a96a253cce25d17988fcf41b8c4205cf779f..4522cbcefc20728a5b72b3a86af35e608622c514 created=false deleted=false forced=false msg=Some(\"Updated readme\") author=Some(\"Unknwon\") pusher=Some(\"unknwon\")",
    ),
    // Carries the deprecated body field "secret"; it plays no part in verification.
    (
        Forge::Gitea,
        "gitea/push-docs.json",
        "push",
        "gitea/webhooks refs/heads/develop Branch:develop 28e1879d029cb852e4844d9c718537df08844e03..bffeb74224043ba2feb48d137756c8a9331c449a created=false deleted=false forced=false msg=Some(\"Webhooks Yay!\") author=Some(\"Gitea\") pusher=Some(\"gitea\")",
    ),
    (
        Forge::Gitea,
        "gitea/go-scm-create-tag.json",
        "create",
        "ignored Some(\"gogits/hello-world\"): tag creation",
    ),
    (
        Forge::Gitea,
        "gitea/go-scm-delete-branch.json",
        "delete",
        "ignored Some(\"gogits/hello-world\"): branch deletion",
    ),
    (
        Forge::Forgejo,
        "forgejo/push-docs.json",
        "push",
        "forgejo/webhooks refs/heads/develop Branch:develop 28e1879d029cb852e4844d9c718537df08844e03..bffeb74224043ba2feb48d137756c8a9331c449a created=false deleted=false forced=false msg=Some(\"Webhooks Yay!\") author=Some(\"Forgejo\") pusher=Some(\"forgejo\")",
    ),
    (
        Forge::Bitbucket,
        "bitbucket/go-scm-push.json",
        "repo:push",
        "brydzewski/foo refs/heads/master Branch:master 40e7580cf11311d84a6e5e97e2cbba6df1675750..141977fedf5cf35aa290ac87d4b5177ac4cd9de1 created=false deleted=false forced=false msg=Some(\"Update README\") author=Some(\"Brad Rydzewski\") pusher=Some(\"brydzewski\")",
    ),
    (
        Forge::Bitbucket,
        "bitbucket/go-scm-push-branch-delete.json",
        "repo:push",
        "ignored Some(\"brydzewski/foo\"): branch deletion",
    ),
    // A tag whose name contains a slash.
    (
        Forge::Bitbucket,
        "bitbucket/go-scm-push-tag-create.json",
        "repo:push",
        "brydzewski/foo refs/tags/feature/x Tag:feature/x 0000000000000000000000000000000000000000..141977fedf5cf35aa290ac87d4b5177ac4cd9de1 created=true deleted=false forced=false msg=Some(\"Update README\") author=Some(\"Brad Rydzewski\") pusher=Some(\"brydzewski\")",
    ),
];

/// The answer [`FIXTURES`] expects for a file.
pub(super) fn expected(file: &str) -> &'static str {
    FIXTURES
        .iter()
        .find(|case| case.1 == file)
        .map_or("(no case for this file)", |case| case.3)
}
