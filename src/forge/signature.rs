//! The signature schemes: how each forge proves a delivery comes from it, checked against the
//! repository's secret from hoist.toml.
//!
//! - GitHub and Bitbucket Cloud: HMAC-SHA256 of the request body, hex, after `sha256=`
//!   (`X-Hub-Signature-256`; Bitbucket reuses GitHub's legacy `X-Hub-Signature` name for it).
//! - Gitea and Forgejo: the same HMAC without the prefix, in their own header; on a form-encoded
//!   delivery it covers the JSON inside the form (the caller passes the signed bytes).
//! - GitLab: no HMAC; `X-Gitlab-Token` carries the secret itself.
//!
//! Every comparison runs in constant time, and no message carries the secret or the signature
//! hoist expected.

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::Forge;
use super::ForgeError::{self, Unauthorized};

type HmacSha256 = Hmac<Sha256>;

impl Forge {
    /// The header hoist checks on this route.
    pub(super) fn signature_header(self) -> &'static str {
        match self {
            Forge::Github => "X-Hub-Signature-256",
            Forge::Gitea => "X-Gitea-Signature",
            Forge::Forgejo => "X-Forgejo-Signature",
            Forge::Gitlab => "X-Gitlab-Token",
            // Same name as GitHub's legacy SHA-1 header, but Bitbucket Cloud puts SHA-256 in it.
            Forge::Bitbucket => "X-Hub-Signature",
        }
    }

    /// What comes before the hex digest in the signature header.
    fn signature_prefix(self) -> &'static str {
        match self {
            Forge::Github | Forge::Bitbucket => "sha256=",
            Forge::Gitea | Forge::Forgejo | Forge::Gitlab => "",
        }
    }

    /// Where the forge's settings page calls the secret, for messages that say what to fix.
    fn secret_hint(self) -> &'static str {
        match self {
            Forge::Github | Forge::Gitea | Forge::Forgejo => {
                "the webhook's Secret in the repository's Settings → Webhooks"
            }
            Forge::Gitlab => "the webhook's Secret token in the project's Settings → Webhooks",
            Forge::Bitbucket => {
                "the webhook's Secret in the repository's Repository settings → Webhooks"
            }
        }
    }
}

/// Compute the signature header a forge would send (used by tests, benchmarks and the demo to
/// sign deliveries). Returns (header name, header value). GitLab sends the secret itself.
pub fn sign(forge: Forge, secret: &[u8], body: &[u8]) -> (&'static str, String) {
    let value = match forge {
        Forge::Gitlab => String::from_utf8_lossy(secret).into_owned(),
        _ => format!(
            "{}{}",
            forge.signature_prefix(),
            hmac_sha256_hex(secret, body)
        ),
    };
    (forge.signature_header(), value)
}

/// Checks the route's own signature header against `secret`, the secret of `repo` for this
/// forge. `signed` is what the forge signed: the body, or the JSON inside a form.
pub(super) fn verify(
    forge: Forge,
    headers: &HeaderMap,
    signed: &[u8],
    secret: &[u8],
    repo: &str,
) -> Result<(), ForgeError> {
    let fix = format!(
        "{} must equal the secret of the [[repo]] entry {repo} in hoist.toml",
        forge.secret_hint()
    );
    // An empty secret would make every signature computable by anyone.
    if secret.is_empty() {
        return Err(Unauthorized(format!(
            "repository {repo} has an empty secret in hoist.toml, and hoist refuses unsigned \
             deliveries; set a secret there and the same in {}",
            forge.secret_hint()
        )));
    }
    let value = headers
        .get(forge.signature_header())
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if value.is_empty() {
        return Err(Unauthorized(missing_signature(forge, headers, &fix)));
    }
    if forge == Forge::Gitlab {
        verify_token(forge, value, secret, &fix)
    } else {
        verify_hmac(forge, value, signed, secret, repo, &fix)
    }
}

/// GitLab's plain token. Compared as bytes (a token may be non-ASCII) and in constant time, so
/// it can't be guessed byte by byte from response times.
fn verify_token(forge: Forge, token: &[u8], secret: &[u8], fix: &str) -> Result<(), ForgeError> {
    if bool::from(token.ct_eq(secret)) {
        Ok(())
    } else {
        let name = forge.signature_header();
        Err(Unauthorized(format!("{name} does not match: {fix}")))
    }
}

/// An HMAC-SHA256 signature header `value` (prefix and 64 hex digits) over `signed`.
fn verify_hmac(
    forge: Forge,
    value: &[u8],
    signed: &[u8],
    secret: &[u8],
    repo: &str,
    fix: &str,
) -> Result<(), ForgeError> {
    let name = forge.signature_header();
    let prefix = forge.signature_prefix();
    if forge == Forge::Bitbucket && value.starts_with(b"sha1=") {
        return Err(Unauthorized(format!(
            "{name} carries a SHA-1 signature, but Bitbucket Cloud signs with sha256=...; hoist \
             accepts only SHA-256 (if this is a GitHub webhook, point it at /hooks/github)"
        )));
    }
    let tag = value
        .strip_prefix(prefix.as_bytes())
        .filter(|hex| hex.len() == 64)
        .and_then(|hex| hex::decode(hex).ok())
        .ok_or_else(|| Unauthorized(format!("{name} should be `{prefix}<64 hex digits>`")))?;
    let mut mac = HmacSha256::new_from_slice(secret)
        .map_err(|_| Unauthorized(format!("the secret of {repo} can't key HMAC-SHA256")))?;
    mac.update(signed);
    // verify_slice compares in constant time.
    mac.verify_slice(&tag).map_err(|_| {
        Unauthorized(format!(
            "{name} does not match the body: {fix} (and nothing between the forge and hoist may \
             rewrite the body)"
        ))
    })
}

/// The 401 message for a missing signature, naming the other forge's header when it is there:
/// that usually means the webhook points at the wrong route.
fn missing_signature(forge: Forge, headers: &HeaderMap, fix: &str) -> String {
    let name = forge.signature_header();
    let has = |h: &str| headers.get(h).is_some_and(|v| !v.is_empty());
    match forge {
        Forge::Github if has("X-Hub-Signature") => format!(
            "only the legacy SHA-1 X-Hub-Signature header was sent; hoist accepts only \
             {name} (HMAC-SHA256): set a secret on the webhook (GitHub sends SHA-256 whenever a \
             secret is set; a GitHub Enterprise Server too old to send it needs an upgrade); \
             {fix}"
        ),
        // Checked first: a Gitea delivery also carries X-Hub-Signature-256.
        Forge::Forgejo if has("X-Gitea-Signature") => format!(
            "missing {name}: this delivery has X-Gitea-Signature but not {name}, so it comes \
             from Gitea (or a Forgejo too old to send X-Forgejo-*); point the webhook at \
             /hooks/gitea and set forge = \"gitea\" for this repository in hoist.toml"
        ),
        Forge::Gitea | Forge::Forgejo if has("X-Hub-Signature-256") => format!(
            "missing {name}: /hooks/{forge} checks only {forge}'s own signature header, not the \
             X-Hub-Signature-256 this delivery carries (if it comes from GitHub, point it at \
             /hooks/github); {fix}"
        ),
        Forge::Gitlab => format!("missing {name} header: {fix}"),
        _ => format!(
            "missing {name} header: the forge sends it only when the webhook has a secret; {fix}"
        ),
    }
}

/// The lowercase hex HMAC-SHA256 that GitHub, Gitea, Forgejo and Bitbucket sign with.
pub(super) fn hmac_sha256_hex(key: &[u8], data: &[u8]) -> String {
    // HMAC takes keys of any length, so this never fails; an empty string never verifies.
    match HmacSha256::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    //! The published test vectors, and every way a delivery is refused before its payload is
    //! read: bad, missing or foreign signatures, unknown repositories, empty secrets.

    use super::super::testkit::{Delivery, SECRET, check, expected, fixture, hmac_sha1_hex};
    use super::*;

    const SIGNATURE_HEADERS: [&str; 6] = [
        "X-Hub-Signature-256",
        "X-Hub-Signature",
        "X-Gitea-Signature",
        "X-Gogs-Signature",
        "X-Forgejo-Signature",
        "X-Gitlab-Token",
    ];

    #[test]
    fn github_docs_vector() {
        let (secret, body) = (b"It's a Secret to Everybody", b"Hello, World!");
        let hex = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(hmac_sha256_hex(secret, body), hex);
        assert_eq!(
            sign(Forge::Github, secret, body),
            ("X-Hub-Signature-256", format!("sha256={hex}"))
        );
    }

    #[test]
    fn go_scm_vector() {
        let body = fixture("github/go-scm-push.json");
        assert_eq!(body.len(), 8556);
        let sig = "sha256=e3bfe744d4e2e29ed990bde8acfb8255ca51ef65f99657767989fb6349f32957";
        assert_eq!(sign(Forge::Github, b"topsecret", &body).1, sig);
        // Also pins the SHA-1 helper the realistic deliveries use for the legacy header.
        assert_eq!(
            hmac_sha1_hex(b"topsecret", &body),
            "cf93f9ba3c8d3a789e61f91e1e5c6a360d036e98"
        );
        let d = Delivery::new(Forge::Github, "push", &body)
            .configured(Some(b"topsecret"))
            .set("X-Hub-Signature-256", sig);
        check(d, expected("github/go-scm-push.json"));
    }

    #[test]
    fn refusals() {
        let gh = || Delivery::fixture(Forge::Github, "github/go-scm-push.json", "push");
        let gitea = || Delivery::fixture(Forge::Gitea, "gitea/go-scm-push.json", "push");
        let forgejo = || Delivery::fixture(Forge::Forgejo, "forgejo/push-docs.json", "push");
        let gitlab = || Delivery::fixture(Forge::Gitlab, "gitlab/go-scm-push.json", "Push Hook");
        let bb = || Delivery::fixture(Forge::Bitbucket, "bitbucket/go-scm-push.json", "repo:push");
        let all = [gh, gitea, forgejo, gitlab, bb];

        // One byte changed (the commit message) after signing; GitLab signs no body.
        for d in [gh(), gitea(), forgejo(), bb()] {
            let mut body = d.body.clone();
            // Inside a string, so the body stays valid JSON and reaches the signature check.
            let at = body
                .windows(4)
                .position(|w| w.eq_ignore_ascii_case(b"read") || w == b"Yay!")
                .expect("a word to change");
            body[at] ^= 0x20;
            let name = d.forge.signature_header();
            check(
                d.body(&body),
                &format!("401 {name} does not match the body"),
            );
        }
        for d in all.map(|d| d()) {
            let name = d.forge.signature_header();
            check(
                d.configured(Some(b"another secret")),
                &format!("401 {name} does not match"),
            );
        }
        for d in all.map(|d| d()) {
            let name = d.forge.signature_header();
            let mut d = d;
            for header in SIGNATURE_HEADERS {
                d = d.remove(header);
            }
            check(d, &format!("401 missing {name}"));
        }
        for d in all.map(|d| d()) {
            check(d.configured(None), "404 is not configured in hoist.toml");
        }
        for d in all.map(|d| d()) {
            check(d.configured(Some(b"")), "401 has an empty");
        }
        check(
            gh().configured(None),
            "404 repository Codertocat/Hello-World is not configured in hoist.toml; add a \
             [[repo]] entry with name = \"Codertocat/Hello-World\"",
        );

        // Header clashes: only the route's own scheme counts.
        check(
            gh().remove("X-Hub-Signature-256"),
            "401 only the legacy SHA-1 X-Hub-Signature",
        );
        check(
            gitea()
                .remove("X-Gitea-Signature")
                .remove("X-Gogs-Signature"),
            "401 not the X-Hub-Signature-256 this delivery carries",
        );
        check(
            forgejo().remove("X-Forgejo-Signature"),
            "401 has X-Gitea-Signature but not X-Forgejo-Signature",
        );
        let body = fixture("bitbucket/go-scm-push.json");
        let sha1 = format!("sha1={}", hmac_sha1_hex(SECRET, &body));
        check(
            bb().set("X-Hub-Signature", &sha1),
            "401 carries a SHA-1 signature",
        );
        // A correct GitHub-style signature in the wrong header does not help Gitea either.
        let hex = hmac_sha256_hex(SECRET, &fixture("gitea/go-scm-push.json"));
        check(
            gitea().set("X-Gitea-Signature", &format!("sha256={hex}")),
            "401 should be `<64 hex",
        );
        check(
            gh().set("X-Hub-Signature-256", "sha256=xyz"),
            "401 should be `sha256=<64 hex",
        );
        check(
            gh().set("X-Hub-Signature-256", &hex),
            "401 should be `sha256=<64 hex",
        );
        // Gitea sends empty signature headers when the hook has no secret.
        check(
            gitea()
                .set("X-Gitea-Signature", "")
                .set("X-Hub-Signature-256", "sha256="),
            "401 missing X-Gitea-Signature",
        );
        // GitLab's token is compared as bytes, so a non-ASCII secret works.
        let token = "sécret".as_bytes();
        let d = gitlab()
            .configured(Some(token))
            .set_bytes("X-Gitlab-Token", token);
        check(d, expected("gitlab/go-scm-push.json"));
        check(
            gitlab().set("X-Gitlab-Token", "s3cret-for-test"),
            "401 X-Gitlab-Token does not match",
        );
    }
}
