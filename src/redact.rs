//! Credentials in URLs, taken out before a URL is shown anywhere: logs, API error reasons,
//! `Debug` of the config, image labels.
//!
//! A repository URL may carry a credential in three places: the password of
//! `https://user:PASSWORD@host/…`, the user name itself when a forge token is used that way
//! (`https://TOKEN@host/…`, as GitHub and GitLab document for tokens), and query values
//! (`?private_token=…`). [`url`] removes all three; [`url_secrets`] lists them, for scrubbing
//! text that may quote a URL or parts of it (libgit2's error messages do).
//!
//! **Invariant:** this is the one place that knows where a URL hides credentials; every
//! caller that shows a configured URL goes through [`url`].

/// What replaces a credential.
const MASK: &str = "***";

/// The parts of `url` around its user info and query.
struct Parts<'a> {
    /// `scheme://`, or empty for a URL without one (a path, `git@host:repo`).
    scheme: &'a str,
    /// Between `scheme://` and `@`, when there is an `@` in the authority.
    userinfo: Option<&'a str>,
    /// Host, port and path, up to the query.
    rest: &'a str,
    /// After `?`, up to `#`.
    query: Option<&'a str>,
    /// From `#` on (kept as it is).
    fragment: &'a str,
}

fn split(url: &str) -> Parts<'_> {
    let (scheme, after) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let (before_fragment, fragment) = match after.find('#') {
        Some(i) => after.split_at(i),
        None => (after, ""),
    };
    let (main, query) = match before_fragment.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (before_fragment, None),
    };
    // Only a URL with a scheme has user info: `git@host:repo` names an ssh user, not a secret.
    let authority_end = main.find('/').unwrap_or(main.len());
    let (userinfo, rest) = match main[..authority_end].rfind('@') {
        Some(at) if !scheme.is_empty() => (Some(&main[..at]), &main[at + 1..]),
        _ => (None, main),
    };
    Parts {
        scheme,
        userinfo,
        rest,
        query,
        fragment,
    }
}

/// Whether a user name alone can be a credential: over ssh it is an account (`git`, `deploy`)
/// and keys authenticate; over http(s) and git, a lone user name is how tokens are passed.
fn user_may_be_token(scheme: &str) -> bool {
    !scheme.to_ascii_lowercase().contains("ssh")
}

/// `url` fit for logs, errors and labels: a password, a token given as the user name, and
/// every query value become `***`. `https://bot:s3cret@host/a.git` → `https://bot:***@host/a.git`,
/// `https://TOKEN@host/a.git` → `https://***@host/a.git`, `ssh://git@host/a.git` unchanged.
pub fn url(url: &str) -> String {
    let p = split(url);
    let mut out = String::with_capacity(url.len());
    out.push_str(p.scheme);
    if let Some(info) = p.userinfo {
        match info.split_once(':') {
            Some((user, _)) => {
                out.push_str(user);
                out.push(':');
                out.push_str(MASK);
            }
            None if user_may_be_token(p.scheme) && !info.is_empty() => out.push_str(MASK),
            None => out.push_str(info),
        }
        out.push('@');
    }
    out.push_str(p.rest);
    if let Some(query) = p.query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) => format!("{key}={MASK}"),
                None if pair.is_empty() => String::new(),
                None => MASK.to_string(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out.push_str(p.fragment);
    out
}

/// The credentials [`url`] hides, non-empty, longest first (so that replacing them one after
/// the other in a text never leaves the tail of a longer one).
pub fn url_secrets(url: &str) -> Vec<String> {
    let p = split(url);
    let mut found: Vec<String> = Vec::new();
    if let Some(info) = p.userinfo {
        match info.split_once(':') {
            Some((_, password)) => found.push(password.to_string()),
            None if user_may_be_token(p.scheme) => found.push(info.to_string()),
            None => {}
        }
    }
    if let Some(query) = p.query {
        for pair in query.split('&') {
            found.push(pair.split_once('=').map_or(pair, |(_, v)| v).to_string());
        }
    }
    found.retain(|s| !s.is_empty());
    found.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    found.dedup();
    found
}

/// `text` with every credential of `url` replaced by `***`: for messages (libgit2's) that may
/// quote the URL, whole or in parts.
pub fn scrub(text: &str, url: &str) -> String {
    let mut out = text.to_string();
    for secret in url_secrets(url) {
        out = out.replace(&secret, MASK);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_credential_is_hidden() {
        for (given, shown) in [
            (
                "https://bot:s3cret@git.example.com/app.git",
                "https://bot:***@git.example.com/app.git",
            ),
            (
                "https://ghp_TOKEN123@github.com/acme/web.git",
                "https://***@github.com/acme/web.git",
            ),
            (
                "https://x-access-token:ghs_abc@github.com/a/b.git",
                "https://x-access-token:***@github.com/a/b.git",
            ),
            (
                "https://gitlab.example.com/a/b.git?private_token=glpat-xyz&ref=main",
                "https://gitlab.example.com/a/b.git?private_token=***&ref=***",
            ),
            (
                "http://tok@10.0.0.1:3000/a/b.git?bare#frag",
                "http://***@10.0.0.1:3000/a/b.git?***#frag",
            ),
            ("ssh://git@host/app.git", "ssh://git@host/app.git"),
            ("ssh://git:pw@host/app.git", "ssh://git:***@host/app.git"),
            ("git@host:app.git", "git@host:app.git"),
            ("/srv/git/app.git", "/srv/git/app.git"),
            ("file:///srv/git/app.git", "file:///srv/git/app.git"),
            // An `@` in the path is not user info.
            ("https://host/a/b@c.git", "https://host/a/b@c.git"),
        ] {
            assert_eq!(url(given), shown, "{given}");
        }
    }

    #[test]
    fn scrub_takes_every_credential_out_of_a_text() {
        let u = "https://ghp_TOKEN123@github.com/a/b.git?access_token=qq-secret";
        assert_eq!(
            scrub(
                "auth for ghp_TOKEN123 failed at …?access_token=qq-secret",
                u
            ),
            "auth for *** failed at …?access_token=***"
        );
        assert_eq!(url_secrets("ssh://git@host/a.git"), Vec::<String>::new());
        assert_eq!(
            url_secrets("https://u:longer-pw@h/x?k=pw"),
            vec!["longer-pw".to_string(), "pw".to_string()]
        );
    }
}
