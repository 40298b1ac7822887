//! Placeholders and the environment of steps: how values that come from a push (branch, tag,
//! commit) reach a pipeline, always as data.
//!
//! [`Vars::render`] fills `${branch}`-style placeholders in declarative fields (image tags, env
//! values, hook argv); [`Vars::env`] gives `commands` and `shell` the same values as `HOIST_*`
//! variables. Neither ever splices a value into shell text. [`sanitize_tag`] turns a rendered
//! tag into one Docker accepts.

use std::collections::BTreeMap;

use crate::config::is_var_key;

/// Docker allows 128 characters in a tag.
const MAX_TAG_CHARS: usize = 128;

/// The placeholders [`Vars::render`] knows, in the order error messages list them.
const PLACEHOLDERS: &[&str] = &[
    "commit",
    "commit_short",
    "branch",
    "tag",
    "ref",
    "host",
    "release",
    "app",
];

/// Why a template could not be rendered; the message names the template and what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A `${` without its `}`.
    #[error(
        "unclosed placeholder in {template:?}: close it with `}}`, or write `$${{` for a literal `${{`"
    )]
    Unclosed {
        /// The whole template, as written.
        template: String,
    },
    /// A `${name}` that is not one of the known placeholders.
    #[error(
        "unknown placeholder `${{{name}}}` in {template:?}; known: {} (write `$${{` for a literal `${{`)",
        known_placeholders()
    )]
    Unknown {
        /// What stood between `${` and `}`.
        name: String,
        /// The whole template, as written.
        template: String,
    },
    /// `${host.KEY}` or `${hosts.KEY}` where a target host has no such key in its `vars`.
    #[error(
        "host {host} has no `{key}` in its vars, which {template:?} uses; add {key} = \"…\" to \
         vars of [host.{host}] in hoist.toml"
    )]
    MissingHostKey {
        /// The first target host (in the step's order) without the key.
        host: String,
        /// The key.
        key: String,
        /// The whole template, as written.
        template: String,
    },
}

/// Per-host placeholders, after [`PLACEHOLDERS`] in error messages.
const HOST_PLACEHOLDERS: &[&str] = &[
    "host.address",
    "host.KEY",
    "hosts.name",
    "hosts.address",
    "hosts.KEY",
];

/// `${commit}, ${commit_short}, …`, for [`RenderError::Unknown`].
fn known_placeholders() -> String {
    PLACEHOLDERS
        .iter()
        .chain(HOST_PLACEHOLDERS)
        .map(|p| format!("${{{p}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a rendered tag cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    /// Nothing is left to tag with, typically `${tag}` on a branch push.
    #[error("the image tag is empty (a placeholder with no value on this push?)")]
    Empty,
}

/// One host as the per-host placeholders see it: `${host.address}`, `${host.KEY}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetHost {
    /// The host's name in the config (`[host.NAME]`).
    pub name: String,
    /// Its `address`.
    pub address: String,
    /// Its `vars`.
    pub vars: BTreeMap<String, String>,
}

/// The hosts of a deploy step, for `${host.*}` (this one) and `${hosts.*}` (all, joined with
/// commas in the step's host order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fleet {
    /// The host being rendered for; None where no one host is (`after_deploy`): `${host.*}`
    /// then renders as "", like `${host}`.
    pub this: Option<FleetHost>,
    /// Every host of the deploy step, in its order.
    pub all: Vec<FleetHost>,
}

/// Values a placeholder can take. Missing ones (e.g. `tag` on a branch push) render as "".
#[derive(Debug, Clone, Default)]
pub struct Vars {
    /// Full commit SHA.
    pub commit: String,
    /// Branch name, without `refs/heads/`; empty on a tag push.
    pub branch: String,
    /// Tag name, without `refs/tags/`; empty on a branch push.
    pub tag: String,
    /// The full ref (`refs/heads/main`).
    pub git_ref: String,
    /// The pipeline's `app`.
    pub app: String,
    /// The repository (`acme/web`).
    pub repo: String,
    /// The host being deployed to, during a deployment.
    pub host: Option<String>,
    /// The release being deployed, during a deployment.
    pub release: Option<u64>,
    /// The run's id, when running under the agent.
    pub run: Option<i64>,
    /// The deploy step's hosts, during a deployment; without it (validation, build steps)
    /// `${host.*}` and `${hosts.*}` render as "", like `${host}`.
    pub fleet: Option<Fleet>,
}

impl Vars {
    /// Fill `${commit}`, `${commit_short}` (first 7), `${branch}`, `${tag}`, `${ref}`,
    /// `${host}`, `${release}`, `${app}` in a declarative field. `$${` writes a literal `${`.
    /// An unknown or unclosed placeholder is an error naming it. Values are inserted as
    /// data: nothing is ever evaluated.
    pub fn render(&self, template: &str) -> Result<String, RenderError> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(dollar) = rest.find('$') {
            out.push_str(&rest[..dollar]);
            let after = &rest[dollar + 1..];
            if let Some(escaped) = after.strip_prefix("${") {
                out.push_str("${");
                rest = escaped;
            } else if let Some(inner) = after.strip_prefix('{') {
                let Some(end) = inner.find('}') else {
                    return Err(RenderError::Unclosed {
                        template: template.to_string(),
                    });
                };
                let name = &inner[..end];
                let value = match self.host_value(name, template)? {
                    Some(v) => v,
                    None => self.value(name).ok_or_else(|| RenderError::Unknown {
                        name: name.to_string(),
                        template: template.to_string(),
                    })?,
                };
                out.push_str(&value);
                rest = &inner[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// `host.address`, `host.name`, `host.KEY`, `hosts.name`, `hosts.address`, `hosts.KEY`;
    /// Ok(None) for any other name. A key some host lacks is an error naming the host.
    fn host_value(&self, name: &str, template: &str) -> Result<Option<String>, RenderError> {
        let (all, field) = if let Some(f) = name.strip_prefix("hosts.") {
            (true, f)
        } else if let Some(f) = name.strip_prefix("host.") {
            (false, f)
        } else {
            return Ok(None);
        };
        if !is_var_key(field) {
            return Ok(None);
        }
        let Some(fleet) = &self.fleet else {
            return Ok(Some(String::new()));
        };
        let one = |h: &FleetHost| -> Result<String, RenderError> {
            match field {
                "name" => Ok(h.name.clone()),
                "address" => Ok(h.address.clone()),
                key => h
                    .vars
                    .get(key)
                    .cloned()
                    .ok_or_else(|| RenderError::MissingHostKey {
                        host: h.name.clone(),
                        key: key.to_string(),
                        template: template.to_string(),
                    }),
            }
        };
        if all {
            let values = fleet.all.iter().map(one).collect::<Result<Vec<_>, _>>()?;
            Ok(Some(values.join(",")))
        } else {
            fleet
                .this
                .as_ref()
                .map_or(Ok(Some(String::new())), |h| one(h).map(Some))
        }
    }

    fn value(&self, name: &str) -> Option<String> {
        Some(match name {
            "commit" => self.commit.clone(),
            "commit_short" => self.commit.chars().take(7).collect(),
            "branch" => self.branch.clone(),
            "tag" => self.tag.clone(),
            "ref" => self.git_ref.clone(),
            "host" => self.host.clone().unwrap_or_default(),
            "release" => self.release.map(|r| r.to_string()).unwrap_or_default(),
            "app" => self.app.clone(),
            _ => return None,
        })
    }

    /// The environment every command and shell step gets: `HOIST_COMMIT`,
    /// `HOIST_COMMIT_SHORT`, `HOIST_BRANCH`, `HOIST_TAG`, `HOIST_REF`, `HOIST_REPO`, `HOIST_APP`,
    /// `HOIST_RUN`, `HOIST_HOST`, `HOIST_RELEASE` (the last three when set), `CI=true`. Passed as
    /// variables, so a branch named `$(rm -rf /)` stays a string.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("HOIST_COMMIT", self.commit.clone()),
            ("HOIST_COMMIT_SHORT", self.commit.chars().take(7).collect()),
            ("HOIST_BRANCH", self.branch.clone()),
            ("HOIST_TAG", self.tag.clone()),
            ("HOIST_REF", self.git_ref.clone()),
            ("HOIST_REPO", self.repo.clone()),
            ("HOIST_APP", self.app.clone()),
        ];
        if let Some(run) = self.run {
            env.push(("HOIST_RUN", run.to_string()));
        }
        if let Some(host) = &self.host {
            env.push(("HOIST_HOST", host.clone()));
        }
        if let Some(release) = self.release {
            env.push(("HOIST_RELEASE", release.to_string()));
        }
        env.push(("CI", "true".to_string()));
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// Make a rendered tag valid under Docker's grammar `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`,
/// predictably: every other character becomes `-`, a leading `.` or `-` becomes `_`, and the
/// result is cut at 128 characters ("feature/x" → "feature-x"). Empty (e.g. `${tag}` on a
/// branch push) is an error: there is nothing to tag with.
pub fn sanitize_tag(tag: &str) -> Result<String, TagError> {
    if tag.is_empty() {
        return Err(TagError::Empty);
    }
    let mut out: String = tag
        .chars()
        .take(MAX_TAG_CHARS)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if out.starts_with(['.', '-']) {
        out.replace_range(..1, "_");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testing::map;
    use std::collections::BTreeMap;

    fn vars() -> Vars {
        Vars {
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            branch: "feature/x".into(),
            tag: String::new(),
            git_ref: "refs/heads/feature/x".into(),
            app: "web".into(),
            repo: "acme/web".into(),
            host: Some("web1".into()),
            release: Some(42),
            run: Some(7),
            fleet: None,
        }
    }

    #[test]
    fn render_placeholders() {
        let v = vars();
        assert_eq!(
            v.render(
                "${commit} ${commit_short} ${branch} [${tag}] ${ref} ${host} ${release} ${app}"
            )
            .unwrap(),
            "0123456789abcdef0123456789abcdef01234567 0123456 feature/x [] refs/heads/feature/x web1 42 web"
        );
        assert_eq!(
            v.render("$${x} costs $5, ${app}$").unwrap(),
            "${x} costs $5, web$"
        );
        // Left to right: `$`, then the escape `$${`.
        assert_eq!(v.render("$$${app}").unwrap(), "$${app}");
        assert_eq!(Vars::default().render("${host}-${release}").unwrap(), "-");
        let err = v.render("${repo}").unwrap_err().to_string();
        assert!(err.contains("unknown placeholder `${repo}`"), "{err}");
        let err = v.render("a ${commit").unwrap_err().to_string();
        assert!(err.starts_with("unclosed placeholder"), "{err}");
        assert!(v.render("${}").is_err());
    }

    fn fleet_host(name: &str, n: u8, vars: &[(&str, &str)]) -> FleetHost {
        FleetHost {
            name: name.into(),
            address: format!("10.0.0.{n}"),
            vars: map(vars),
        }
    }

    #[test]
    fn per_host_placeholders() {
        let all = vec![
            fleet_host("web1", 1, &[("id", "a"), ("peer", "10.0.0.1:7000")]),
            fleet_host("web2", 2, &[("id", "b"), ("peer", "10.0.0.2:7000")]),
        ];
        let v = Vars {
            host: Some("web2".into()),
            fleet: Some(Fleet {
                this: Some(all[1].clone()),
                all: all.clone(),
            }),
            ..vars()
        };
        assert_eq!(
            v.render(
                "${host}|${host.address}|${host.id}|${hosts.name}|${hosts.address}|${hosts.peer}"
            )
            .unwrap(),
            "web2|10.0.0.2|b|web1,web2|10.0.0.1,10.0.0.2|10.0.0.1:7000,10.0.0.2:7000"
        );
        // Outside a deployment (validation) they render as "", like `${host}`.
        assert_eq!(
            vars().render("[${host.id}][${hosts.peer}]").unwrap(),
            "[][]"
        );
        // A key one host lacks names that host and the key.
        let mut lacking = v.clone();
        if let Some(f) = lacking.fleet.as_mut() {
            f.all[0].vars.remove("peer");
        }
        assert_eq!(
            lacking.render("--peers=${hosts.peer}").unwrap_err(),
            RenderError::MissingHostKey {
                host: "web1".into(),
                key: "peer".into(),
                template: "--peers=${hosts.peer}".into()
            }
        );
        let err = v.render("${host.zone}").unwrap_err().to_string();
        assert_eq!(
            err,
            "host web2 has no `zone` in its vars, which \"${host.zone}\" uses; add zone = \"…\" to vars of [host.web2] in hoist.toml"
        );
        let err = v.render("${host.}").unwrap_err().to_string();
        assert!(err.contains("unknown placeholder `${host.}`"), "{err}");
        assert!(err.contains("${hosts.KEY}"), "{err}");
    }

    #[test]
    fn a_hostile_branch_name_is_data() {
        let evil = "x;$(touch${IFS}/tmp/pwned)";
        let v = Vars {
            branch: evil.into(),
            ..vars()
        };
        assert_eq!(v.render("${branch}").unwrap(), evil);
        assert_eq!(
            v.render("pre-${branch}-post").unwrap(),
            format!("pre-{evil}-post")
        );
        let env = v.env();
        assert!(env.contains(&("HOIST_BRANCH".to_string(), evil.to_string())));
        assert_eq!(
            sanitize_tag(&v.render("${branch}").unwrap()).unwrap(),
            "x---touch--IFS--tmp-pwned-"
        );
    }

    #[test]
    fn sanitize_tags() {
        assert_eq!(sanitize_tag("feature/x").unwrap(), "feature-x");
        assert_eq!(sanitize_tag("v1.2.3").unwrap(), "v1.2.3");
        assert_eq!(sanitize_tag(".hidden").unwrap(), "_hidden");
        assert_eq!(sanitize_tag("-x").unwrap(), "_x");
        assert_eq!(sanitize_tag("/x").unwrap(), "_x");
        assert_eq!(sanitize_tag("é").unwrap(), "_");
        assert_eq!(sanitize_tag(&"a".repeat(300)).unwrap().len(), 128);
        assert_eq!(sanitize_tag(&"é".repeat(300)).unwrap().len(), 128);
        assert!(sanitize_tag("").is_err());
    }

    #[test]
    fn environment_of_steps() {
        let env: BTreeMap<String, String> = vars().env().into_iter().collect();
        let expect = map(&[
            ("HOIST_COMMIT", "0123456789abcdef0123456789abcdef01234567"),
            ("HOIST_COMMIT_SHORT", "0123456"),
            ("HOIST_BRANCH", "feature/x"),
            ("HOIST_TAG", ""),
            ("HOIST_REF", "refs/heads/feature/x"),
            ("HOIST_REPO", "acme/web"),
            ("HOIST_APP", "web"),
            ("HOIST_RUN", "7"),
            ("HOIST_HOST", "web1"),
            ("HOIST_RELEASE", "42"),
            ("CI", "true"),
        ]);
        assert_eq!(env, expect);
        let bare: Vec<String> = Vars::default().env().into_iter().map(|(k, _)| k).collect();
        assert!(
            !bare
                .iter()
                .any(|k| k == "HOIST_RUN" || k == "HOIST_HOST" || k == "HOIST_RELEASE")
        );
    }
}
