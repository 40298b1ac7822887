//! Commit statuses: the request each forge documents for marking a commit pending, green or
//! red. Pure functions: they build the method, URL, headers and JSON body; the outbox sends.
//!
//! The forges' pages (the tests check every field named here against them):
//! - GitHub, "Create a commit status":
//!   <https://docs.github.com/en/rest/commits/statuses#create-a-commit-status>
//!   `POST /repos/{owner}/{repo}/statuses/{sha}`, `{state, target_url, description, context}`,
//!   state `error | failure | pending | success`, `Authorization: Bearer TOKEN`.
//! - Gitea, `repoCreateStatus` (<https://gitea.com/api/swagger#/repository/repoCreateStatus>),
//!   and Forgejo, the same route and `CreateStatusOption`
//!   (<https://codeberg.org/api/swagger#/repository/repoCreateStatus>): under `/api/v1`,
//!   `POST /repos/{owner}/{repo}/statuses/{sha}`, `{state, target_url, description, context}`,
//!   state `pending | success | error | failure | warning`, `Authorization: token TOKEN` or
//!   `Bearer TOKEN` (hoist sends Bearer).
//! - GitLab, "Set the pipeline status of a commit":
//!   <https://docs.gitlab.com/api/commits/#set-the-pipeline-status-of-a-commit>
//!   `POST /projects/{id}/statuses/{sha}` with `id` the URL-encoded path of the project,
//!   `{state, name, target_url, description}`, state `pending | running | success | failed |
//!   canceled`, `PRIVATE-TOKEN: TOKEN`.
//! - Bitbucket Cloud, "Create a build status for a commit":
//!   <https://developer.atlassian.com/cloud/bitbucket/rest/api-group-commit-statuses/#api-repositories-workspace-repo-slug-commit-commit-statuses-build-post>
//!   `POST /repositories/{workspace}/{repo_slug}/commit/{commit}/statuses/build` under `/2.0`,
//!   `{key, state, url, name, description}`, state `INPROGRESS | SUCCESSFUL | FAILED | STOPPED`,
//!   `Authorization: Bearer TOKEN`.
//!
//! `api` (per repository) is the API base including its version prefix, as each forge's
//! documentation writes it: `https://api.github.com`, `https://HOST/api/v1`,
//! `https://HOST/api/v4`, `https://api.bitbucket.org/2.0`.

use serde_json::{Value, json};

use super::Forge;

/// What a run's status says, before a forge's own words for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitState {
    /// Queued or running.
    Pending,
    Success,
    /// The run failed or timed out: the commit is red.
    Failure,
    /// Cancelled by a person or a newer push.
    Cancelled,
    /// hoist could not finish the run (an agent restart during a deploy).
    Error,
}

/// One status to report on a commit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitStatus {
    /// `owner/name` (GitLab: the project's full path, which may hold subgroups).
    pub repo: String,
    /// The full commit id.
    pub commit: String,
    /// What the mark says; each forge has its own word for it ([`state_name`]).
    pub state: CommitState,
    /// Tells hoist's mark apart from other systems' on the forge: `hoist/<app>`.
    pub context: String,
    /// One line a person reads next to the mark.
    pub description: String,
    /// The run's page.
    pub target_url: String,
}

/// An HTTP request, ready to send. Its `Debug` shows header names only: one carries the token.
#[derive(Clone, PartialEq)]
pub struct Request {
    /// Always `POST` for a status; kept so the request reads whole.
    pub method: &'static str,
    /// `api` and the forge's route for the commit.
    pub url: String,
    /// Header names and values; one of them carries the token.
    pub headers: Vec<(&'static str, String)>,
    /// The JSON the forge's page documents.
    pub body: Value,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, &str)> = self.headers.iter().map(|(n, _)| (*n, "***")).collect();
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &headers)
            .field("body", &self.body)
            .finish()
    }
}

/// GitHub shows at most 140 characters of a description; the others take more, but a status
/// line is read at a glance.
pub const MAX_DESCRIPTION: usize = 140;

/// The public API base of each forge, used when a repository names no `api`.
pub fn default_api(forge: Forge) -> &'static str {
    match forge {
        Forge::Github => "https://api.github.com",
        Forge::Gitea => "https://gitea.com/api/v1",
        Forge::Forgejo => "https://codeberg.org/api/v1",
        Forge::Gitlab => "https://gitlab.com/api/v4",
        Forge::Bitbucket => "https://api.bitbucket.org/2.0",
    }
}

/// The forge's word for `state`.
pub fn state_name(forge: Forge, state: CommitState) -> &'static str {
    use CommitState::*;
    match forge {
        Forge::Github | Forge::Gitea | Forge::Forgejo => match state {
            Pending => "pending",
            Success => "success",
            Failure => "failure",
            Cancelled | Error => "error",
        },
        Forge::Gitlab => match state {
            Pending => "pending",
            Success => "success",
            Failure | Error => "failed",
            Cancelled => "canceled",
        },
        Forge::Bitbucket => match state {
            Pending => "INPROGRESS",
            Success => "SUCCESSFUL",
            Failure | Error => "FAILED",
            Cancelled => "STOPPED",
        },
    }
}

/// The request that sets `status` on `forge` at API base `api`, authenticated with `token`.
pub fn request(forge: Forge, api: &str, token: &str, status: &CommitStatus) -> Request {
    let api = api.trim_end_matches('/');
    let state = state_name(forge, status.state);
    let description = truncate(&status.description, MAX_DESCRIPTION);
    let sha = segment(&status.commit);
    let (owner, name) = status
        .repo
        .rsplit_once('/')
        .unwrap_or(("", status.repo.as_str()));
    let json = ("Content-Type", "application/json".to_string());
    let accept = ("Accept", "application/json".to_string());
    let bearer = ("Authorization", format!("Bearer {token}"));
    match forge {
        Forge::Github => Request {
            method: "POST",
            url: format!(
                "{api}/repos/{}/{}/statuses/{sha}",
                segment(owner),
                segment(name)
            ),
            headers: vec![
                bearer,
                ("Accept", "application/vnd.github+json".to_string()),
                ("X-GitHub-Api-Version", "2022-11-28".to_string()),
                json,
            ],
            body: json!({
                "state": state,
                "target_url": status.target_url,
                "description": description,
                "context": status.context,
            }),
        },
        Forge::Gitea | Forge::Forgejo => Request {
            method: "POST",
            url: format!(
                "{api}/repos/{}/{}/statuses/{sha}",
                segment(owner),
                segment(name)
            ),
            headers: vec![bearer, accept, json],
            body: json!({
                "state": state,
                "target_url": status.target_url,
                "description": description,
                "context": status.context,
            }),
        },
        Forge::Gitlab => Request {
            method: "POST",
            url: format!("{api}/projects/{}/statuses/{sha}", segment(&status.repo)),
            headers: vec![("PRIVATE-TOKEN", token.to_string()), accept, json],
            body: json!({
                "state": state,
                "name": status.context,
                "target_url": status.target_url,
                "description": description,
            }),
        },
        Forge::Bitbucket => Request {
            method: "POST",
            url: format!(
                "{api}/repositories/{}/{}/commit/{sha}/statuses/build",
                segment(owner),
                segment(name)
            ),
            headers: vec![bearer, accept, json],
            body: json!({
                "key": status.context,
                "state": state,
                "url": status.target_url,
                "name": status.context,
                "description": description,
            }),
        },
    }
}

/// `text` cut to at most `max` characters, with `…` where it was cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// One URL path segment: every byte but the unreserved ones (RFC 3986) percent-encoded, so a
/// `/` in a GitLab path becomes `%2F` as its API asks.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: CommitState) -> CommitStatus {
        CommitStatus {
            repo: "acme/web".into(),
            commit: "a".repeat(40),
            state,
            context: "hoist/web".into(),
            description: "run 7 succeeded".into(),
            target_url: "https://hoist.example.com/#/runs/7".into(),
        }
    }

    fn header<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn github_posts_to_the_statuses_route_with_a_bearer_token() {
        let r = request(
            Forge::Github,
            "https://api.github.com/",
            "tok",
            &status(CommitState::Success),
        );
        assert_eq!(r.method, "POST");
        assert_eq!(
            r.url,
            format!(
                "https://api.github.com/repos/acme/web/statuses/{}",
                "a".repeat(40)
            )
        );
        assert_eq!(header(&r, "authorization"), Some("Bearer tok"));
        assert_eq!(
            r.body,
            json!({"state": "success", "target_url": "https://hoist.example.com/#/runs/7",
                   "description": "run 7 succeeded", "context": "hoist/web"})
        );
    }

    #[test]
    fn gitea_and_forgejo_share_githubs_shape_under_api_v1() {
        for forge in [Forge::Gitea, Forge::Forgejo] {
            let r = request(
                forge,
                "https://git.example.com/api/v1",
                "tok",
                &status(CommitState::Cancelled),
            );
            assert!(
                r.url
                    .starts_with("https://git.example.com/api/v1/repos/acme/web/statuses/")
            );
            assert_eq!(r.body["state"], "error");
            assert_eq!(r.body["context"], "hoist/web");
        }
    }

    #[test]
    fn gitlab_encodes_the_project_path_and_names_the_status() {
        let mut s = status(CommitState::Failure);
        s.repo = "group/sub/web".into();
        let r = request(Forge::Gitlab, "https://gitlab.com/api/v4", "tok", &s);
        assert_eq!(
            r.url,
            format!(
                "https://gitlab.com/api/v4/projects/group%2Fsub%2Fweb/statuses/{}",
                "a".repeat(40)
            )
        );
        assert_eq!(header(&r, "private-token"), Some("tok"));
        assert_eq!(header(&r, "authorization"), None);
        assert_eq!(r.body["state"], "failed");
        assert_eq!(r.body["name"], "hoist/web");
    }

    #[test]
    fn bitbucket_posts_a_build_status_keyed_by_the_context() {
        let r = request(
            Forge::Bitbucket,
            default_api(Forge::Bitbucket),
            "tok",
            &status(CommitState::Pending),
        );
        assert_eq!(
            r.url,
            format!(
                "https://api.bitbucket.org/2.0/repositories/acme/web/commit/{}/statuses/build",
                "a".repeat(40)
            )
        );
        assert_eq!(r.body["state"], "INPROGRESS");
        assert_eq!(r.body["key"], "hoist/web");
        assert_eq!(r.body["url"], "https://hoist.example.com/#/runs/7");
    }

    #[test]
    fn every_state_has_a_word_on_every_forge() {
        let documented: [(Forge, &[&str]); 5] = [
            (Forge::Github, &["error", "failure", "pending", "success"]),
            (Forge::Gitea, &["pending", "success", "error", "failure"]),
            (Forge::Forgejo, &["pending", "success", "error", "failure"]),
            (
                Forge::Gitlab,
                &["pending", "running", "success", "failed", "canceled"],
            ),
            (
                Forge::Bitbucket,
                &["INPROGRESS", "SUCCESSFUL", "FAILED", "STOPPED"],
            ),
        ];
        use CommitState::*;
        for (forge, words) in documented {
            for state in [Pending, Success, Failure, Cancelled, Error] {
                assert!(
                    words.contains(&state_name(forge, state)),
                    "{forge:?} {state:?}"
                );
            }
        }
    }

    #[test]
    fn long_descriptions_are_cut() {
        let mut s = status(CommitState::Failure);
        s.description = "x".repeat(500);
        let r = request(Forge::Github, "https://api.github.com", "t", &s);
        assert_eq!(
            r.body["description"].as_str().unwrap().chars().count(),
            MAX_DESCRIPTION
        );
    }
}
